"""The mesh driven through boto3, as App Mesh users drive it: resources made
with the `appmesh` client, two sidecars bootstrapped by `trellis-control
bootstrap` (trellis-proxy, and stock Envoy too when ENVOY_BIN names it), two
apps; traffic client -> sidecar A (egress)
-> sidecar B (ingress) -> app blue, or -> app red (registered by hand);
`update_route` moves the split within two seconds, and the signed
`GET /trellis/v1/proxies` shows both proxies ACKing everything."""

import http.server
import json
import os
import pathlib
import signal
import socket
import subprocess
import tempfile
import threading
import time
import urllib.request

import boto3
import botocore.auth
import botocore.awsrequest
import botocore.credentials
import pytest
from botocore.config import Config

ROOT = pathlib.Path(__file__).resolve().parents[3]
ACCESS_KEY = "AKIATRELLISMESH00001"
SECRET_KEY = "trellis-mesh-secret-key-000000000000000"
REGION = "us-west-2"


def binary(name):
    var = name.upper().replace("-", "_") + "_BIN"
    path = pathlib.Path(os.environ.get(var, f"target/debug/{name}"))
    return path if path.is_absolute() else ROOT / path


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def sidecar_binaries():
    """(name, binary) of each proxy to run as sidecars: trellis-proxy, and
    stock Envoy when ENVOY_BIN names it (scripts/test sets it)."""
    out = [("trellis-proxy", str(binary("trellis-proxy")))]
    if os.environ.get("ENVOY_BIN"):
        out.append(("envoy", os.environ["ENVOY_BIN"]))
    return out


def wait_for(what, check, timeout=10.0):
    deadline = time.time() + timeout
    while time.time() < deadline:
        value = check()
        if value:
            return value
        time.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what}")


class App:
    """An HTTP app that answers every GET with its name."""

    def __init__(self, name):
        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self):
                body = name.encode()
                self.send_response(200)
                self.send_header("content-length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args):
                pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.port = self.server.server_address[1]
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def stop(self):
        self.server.shutdown()


@pytest.fixture
def mesh():
    tmp = pathlib.Path(tempfile.mkdtemp())
    creds = tmp / "credentials"
    creds.write_text(
        f"[default]\naws_access_key_id = {ACCESS_KEY}\naws_secret_access_key = {SECRET_KEY}\n"
    )
    api, xds = free_port(), free_port()
    procs = []
    log = open(tmp / "control.log", "w")
    procs.append(subprocess.Popen(
        [str(binary("trellis-control")), "serve", "--data-dir", str(tmp / "data"),
         "--api-addr", f"127.0.0.1:{api}", "--xds-addr", f"127.0.0.1:{xds}",
         "--credentials", str(creds)],
        stdout=subprocess.DEVNULL, stderr=log))
    wait_for("the API", lambda: _connects(api))
    client = boto3.client(
        "appmesh", endpoint_url=f"http://127.0.0.1:{api}", region_name=REGION,
        aws_access_key_id=ACCESS_KEY, aws_secret_access_key=SECRET_KEY,
        config=Config(retries={"max_attempts": 1, "mode": "standard"}))
    apps = []
    ctx = {"tmp": tmp, "api": api, "xds": xds, "client": client, "procs": procs,
           "apps": apps, "creds": creds}
    try:
        yield ctx
    finally:
        for p in reversed(procs):
            p.send_signal(signal.SIGTERM)
        for p in procs:
            try:
                p.wait(timeout=10)
            except subprocess.TimeoutExpired:
                p.kill()
        for a in apps:
            a.stop()
        log.close()


def _connects(port):
    try:
        socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
        return True
    except OSError:
        return False


def signed(api, method, path, body=b""):
    """A SigV4-signed call of a /trellis/v1/ endpoint, as botocore signs."""
    url = f"http://127.0.0.1:{api}{path}"
    req = botocore.awsrequest.AWSRequest(method=method, url=url, data=body,
                                         headers={"content-type": "application/json"})
    botocore.auth.SigV4Auth(
        botocore.credentials.Credentials(ACCESS_KEY, SECRET_KEY), "appmesh", REGION
    ).add_auth(req)
    prepared = req.prepare()
    r = urllib.request.Request(url, data=body or None, method=method,
                               headers=dict(prepared.headers))
    with urllib.request.urlopen(r, timeout=5) as resp:
        return json.loads(resp.read() or b"{}")


def sidecar(ctx, node, proxy):
    ingress, egress = free_port(), free_port()
    yaml = subprocess.run(
        [str(binary("trellis-control")), "bootstrap", "--mesh", "m", "--virtual-node", node,
         "--xds-addr", f"127.0.0.1:{ctx['xds']}", "--admin-port", "0",
         "--listener-address", "127.0.0.1",
         # The CA bundle for TLS to xDS comes from the API.
         "--api-addr", f"127.0.0.1:{ctx['api']}", "--credentials", str(ctx["creds"]),
         "--ingress-port", str(ingress), "--egress-port", str(egress)],
        check=True, capture_output=True, text=True).stdout
    assert "UpstreamTlsContext" in yaml, "the sidecar reaches xDS over TLS"
    path = ctx["tmp"] / f"{node}.yaml"
    path.write_text(yaml)
    admin_path = ctx["tmp"] / f"{node}.admin"
    name, bin_path = proxy
    # Two Envoys on one host need hot restart off (or base ids of their own).
    extra = ["--disable-hot-restart"] if name == "envoy" else []
    log = open(ctx["tmp"] / f"{node}.log", "w")
    ctx["procs"].append(subprocess.Popen(
        [bin_path, "-c", str(path), "--admin-address-path", str(admin_path),
         "--concurrency", "1", "--log-level", "warning", *extra],
        stdout=subprocess.DEVNULL, stderr=log))
    log.close()
    admin = wait_for(f"{node}'s admin address",
                     lambda: admin_path.exists() and admin_path.read_text().strip())

    def ready():
        try:
            with urllib.request.urlopen(f"http://{admin}/ready", timeout=1) as r:
                return r.status == 200
        except OSError:
            return False

    wait_for(f"{node} to be ready", ready, timeout=20)
    return ingress, egress


def color(egress):
    req = urllib.request.Request(f"http://127.0.0.1:{egress}/", headers={"host": "color"})
    try:
        with urllib.request.urlopen(req, timeout=2) as r:
            return r.read().decode()
    except OSError:
        return None


def weights(blue_port, red_port, blue, red):
    return {"httpRoute": {"match": {"prefix": "/"}, "action": {"weightedTargets": [
        {"virtualNode": "blue", "weight": blue, "port": blue_port},
        {"virtualNode": "red", "weight": red, "port": red_port}]}}}


@pytest.mark.parametrize("proxy", sidecar_binaries(), ids=lambda p: p[0])
def test_boto3_mesh_routes_and_shifts_weights(mesh, proxy):
    c = mesh["client"]
    blue, red = App("blue"), App("red")
    mesh["apps"].extend([blue, red])

    c.create_mesh(meshName="m", spec={"egressFilter": {"type": "DROP_ALL"}})
    listener = lambda port: [{"portMapping": {"port": port, "protocol": "http"}}]
    c.create_virtual_node(meshName="m", virtualNodeName="blue",
                          spec={"listeners": listener(blue.port)})
    c.create_virtual_node(meshName="m", virtualNodeName="red",
                          spec={"listeners": listener(red.port)})
    c.create_virtual_node(meshName="m", virtualNodeName="client", spec={
        "backends": [{"virtualService": {"virtualServiceName": "color"}}]})
    c.create_virtual_router(meshName="m", virtualRouterName="color-router",
                            spec={"listeners": listener(80)})
    c.create_route(meshName="m", virtualRouterName="color-router", routeName="split",
                   spec=weights(blue.port, red.port, 100, 0))
    c.create_virtual_service(meshName="m", virtualServiceName="color", spec={
        "provider": {"virtualRouter": {"virtualRouterName": "color-router"}}})
    signed(mesh["api"], "POST", "/trellis/v1/instances", json.dumps({
        "meshName": "m", "virtualNodeName": "red", "address": "127.0.0.1",
        "port": red.port}).encode())

    sidecar(mesh, "blue", proxy)
    _, egress = sidecar(mesh, "client", proxy)

    wait_for("blue through both sidecars", lambda: color(egress) == "blue")

    c.update_route(meshName="m", virtualRouterName="color-router", routeName="split",
                   spec=weights(blue.port, red.port, 0, 100))
    written = time.time()
    wait_for("traffic to move to red",
             lambda: all(color(egress) == "red" for _ in range(5)), timeout=5)
    assert time.time() - written < 2.0

    def synced():
        proxies = signed(mesh["api"], "GET", "/trellis/v1/proxies")
        ok = len(proxies) == 2 and all(
            p["types"] and all(t["nack"] is None and t["sent"] == t["acked"]
                               for t in p["types"].values())
            for p in proxies)
        return proxies if ok else None

    proxies = wait_for("every update ACKed", synced, timeout=5)
    assert sorted(p["node_id"] for p in proxies) == [
        "mesh/m/virtualNode/blue", "mesh/m/virtualNode/client"]
