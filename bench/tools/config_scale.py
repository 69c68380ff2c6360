#!/usr/bin/env python3
"""Config at scale, end to end: a proxy takes a RouteConfiguration of N
routes over 1,000 EDS clusters from an ADS server, then a series of updates
that each change one route. Measured per proxy (trellis-proxy and stock Envoy
alike, one worker each, same ADS server, same config):

- the proxy's own time from an update's arrival to its swap: trellis's
  `xDS update applied ... duration_us` log line (microseconds), Envoy's
  `http.<prefix>.rds.<name>.update_duration` histogram (whole milliseconds
  per update, read once at the end as sum / count);
- push -> ACK as the ADS server sees it (serialising the response, the
  transfer, decoding, applying, the ACK), the same method for both;
- RSS after the config is loaded and after the updates.

Runs on the ADS server of the interop tests (tests/python/xds/ads_server.py,
PyPI `xds-protos` + `grpcio`). Prints one JSON object per (proxy, size) on
stdout (and exits 1 if any failed); `bench/run --scenarios config`
renders them. See bench/README.md.
"""
import argparse
import http.client
import http.server
import json
import os
import re
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, "..", "..", "tests", "python", "xds"))
import ads_server as A  # noqa: E402

from envoy.config.route.v3 import route_components_pb2 as rc_pb  # noqa: E402
from envoy.config.route.v3 import route_pb2  # noqa: E402
from envoy.type.matcher.v3 import string_pb2  # noqa: E402

ROUTES_PER_HOST = 10
LISTENER = "egress"
ROUTE_CONFIG = "egress-routes"


def log(msg):
    print(f"[config-scale {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def free_port():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    p = s.getsockname()[1]
    s.close()
    return p


class TimedAds(A.AdsServer):
    """The interop ADS server, noting when each request (ACK/NACK) arrived."""

    def __init__(self):
        super().__init__()
        self.arrived = {}

    def _on_request(self, s, r):
        t = time.monotonic()
        super()._on_request(s, r)
        if r.response_nonce:
            self.arrived[r.response_nonce] = (t, r.HasField("error_detail"), r.version_info)


def cluster_name(n, clusters):
    return f"cluster-{n % clusters}"


def route(i, j, clusters, shift=0):
    """Route j of virtual host i, in the shape of the Rust micro-benchmark
    (proxy/benches/routing.rs): prefix, two weighted clusters, timeout,
    retry policy; every fifth route also matches a header. `shift` moves
    its first cluster, to play the one changed route of an update."""
    r = rc_pb.Route()
    r.match.prefix = f"/svc{i}/api{j}"
    if j % 5 == 4:
        h = r.match.headers.add()
        h.name = "x-canary"
        h.string_match.CopyFrom(string_pb2.StringMatcher(exact="true"))
    a = r.route
    w = a.weighted_clusters.clusters.add()
    w.name = cluster_name(i * 7 + j + shift, clusters)
    w.weight.value = 90
    w = a.weighted_clusters.clusters.add()
    w.name = cluster_name(i * 7 + j + 1, clusters)
    w.weight.value = 10
    a.timeout.seconds = 15
    a.retry_policy.retry_on = "5xx,gateway-error,reset"
    a.retry_policy.num_retries.value = 2
    a.retry_policy.per_try_timeout.seconds = 5
    return r


def route_config(routes, clusters):
    rc = route_pb2.RouteConfiguration(name=ROUTE_CONFIG)
    for i in range(max(1, routes // ROUTES_PER_HOST)):
        vh = rc.virtual_hosts.add()
        vh.name = f"svc{i}.mesh.local:8080"
        vh.domains.extend([f"svc{i}.mesh.local", f"svc{i}.mesh.local:8080"])
        vh.routes.extend(route(i, j, clusters) for j in range(min(routes, ROUTES_PER_HOST)))
    return rc


class Upstream:
    """Answers every request with 200, for the sanity requests."""

    def __init__(self):
        class H(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def do_GET(self):
                self.send_response(200)
                self.send_header("content-length", "2")
                self.end_headers()
                self.wfile.write(b"ok")

            def log_message(self, *_):
                pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), H)
        self.port = self.server.server_address[1]
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def stop(self):
        self.server.shutdown()


def rss_kb(pid):
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    return None


def get(port, host, path, timeout=5):
    c = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    try:
        c.request("GET", path, headers={"Host": host})
        r = c.getresponse()
        r.read()
        return r.status
    finally:
        c.close()


def wait_answer(ads, version, deadline_s):
    """(arrival time, rejected) of the proxy's answer to `version` of routes."""
    deadline = time.monotonic() + deadline_s
    while time.monotonic() < deadline:
        with ads._lock:
            nonces = [x["nonce"] for x in ads.sent if x["type_url"] == A.ROUTE and x["version"] == version]
            for n in nonces:
                if n in ads.arrived:
                    t, rejected, _ = ads.arrived[n]
                    return t, rejected
        time.sleep(0.0005)
    raise RuntimeError(f"no answer to routes {version} within {deadline_s}s")


def trellis_durations(log_path):
    """version -> duration_us of each applied RouteConfiguration update."""
    out = {}
    with open(log_path, errors="replace") as f:
        for line in f:
            if not line.startswith("{"):
                continue
            try:
                j = json.loads(line)
            except ValueError:
                continue
            fields = j.get("fields", {})
            if fields.get("message") == "xDS update applied" and fields.get("type_url") == A.ROUTE:
                out[str(fields.get("version"))] = int(fields["duration_us"])
    return out


def envoy_rds_histogram(admin_port):
    """(sum ms, count) of Envoy's rds update_duration for our route config."""
    text = urllib.request.urlopen(f"http://127.0.0.1:{admin_port}/stats/prometheus", timeout=10).read().decode()
    total = count = None
    for line in text.splitlines():
        if f'envoy_rds_route_config="{ROUTE_CONFIG}"' not in line:
            continue
        m = re.match(r"envoy_http_rds_update_duration_(sum|count)\{.*\} ([0-9.e+]+)", line)
        if m:
            if m.group(1) == "sum":
                total = float(m.group(2))
            else:
                count = float(m.group(2))
    return total, count


def run_one(args, kind, routes, upstream):
    ads = TimedAds()
    ads_port = ads.start()
    admin, port = free_port(), free_port()
    work = tempfile.mkdtemp(prefix=f"config-scale-{kind}-")
    proc = None
    try:
        t0 = time.monotonic()
        for n in range(args.clusters):
            name = cluster_name(n, args.clusters)
            ads.set(A.CLUSTER, name, A.eds_cluster(name))
            ads.set(A.ENDPOINTS, name, A.load_assignment(name, [("127.0.0.1", upstream.port)]))
        ads.set(A.LISTENER, LISTENER, A.http_listener(LISTENER, port, ROUTE_CONFIG))
        rc = route_config(routes, args.clusters)
        ads.set(A.ROUTE, ROUTE_CONFIG, rc)
        first = ads.push()
        size = rc.ByteSize()
        log(f"{kind}: {routes} routes ({size // 1024} KiB), {args.clusters} clusters; built in {time.monotonic() - t0:.1f}s")

        boot = os.path.join(work, "bootstrap.yaml")
        with open(boot, "w") as f:
            f.write(A.bootstrap(f"config-scale-{kind}", ads_port, admin, False))
        logf = os.path.join(work, "proxy.log")
        if kind == "trellis":
            cmd = [args.trellis_bin, "-c", boot, "--concurrency", "1", "--log-format", "json", "-l", "info"]
        else:
            cmd = [args.envoy_bin, "-c", boot, "--concurrency", "1", "-l", "warn",
                   "--disable-hot-restart"]
        if args.cpu is not None:
            cmd = ["taskset", "-c", str(args.cpu)] + cmd
        started = time.monotonic()
        with open(logf, "wb") as out:
            proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
        t_first, rejected = wait_answer(ads, first, args.timeout)
        if rejected:
            raise RuntimeError(f"{kind} rejected the initial routes")
        initial_s = t_first - started
        # Listener warm-up and the first request through it.
        deadline = time.monotonic() + args.timeout
        while True:
            try:
                status = get(port, "svc0.mesh.local", "/svc0/api0/x")
                if status == 200:
                    break
            except OSError:
                status = None
            if time.monotonic() > deadline:
                raise RuntimeError(f"{kind}: no 200 through the listener (last status {status})")
            time.sleep(0.05)
        # Envoy shows histograms as of its last stats flush (every 5 s).
        time.sleep(1.0 if kind == "trellis" else 5.5)
        rss_loaded = rss_kb(proc.pid)
        before = envoy_rds_histogram(admin) if kind == "envoy" else None

        hosts = max(1, routes // ROUTES_PER_HOST)
        per_host = min(routes, ROUTES_PER_HOST)
        round_trips, versions = [], []
        for u in range(args.updates):
            i, j = (hosts // 2 + u) % hosts, (u * 3) % per_host
            rc.virtual_hosts[i].routes[j].CopyFrom(route(i, j, args.clusters, shift=u + 2))
            ads.set(A.ROUTE, ROUTE_CONFIG, rc)
            t0 = time.monotonic()
            version = ads.push()
            t1, rejected = wait_answer(ads, version, args.timeout)
            if rejected:
                raise RuntimeError(f"{kind} rejected update {version}")
            round_trips.append((t1 - t0) * 1e3)
            versions.append(version)
            time.sleep(args.gap)
        status = get(port, f"svc{i}.mesh.local", f"/svc{i}/api{j}/x", timeout=10)
        rss_after = rss_kb(proc.pid)

        res = {"proxy": kind, "routes": routes, "clusters": args.clusters, "rc_kib": size / 1024,
               "updates": len(versions), "initial_s": initial_s, "rss_loaded_kb": rss_loaded,
               "rss_after_kb": rss_after, "push_ack_ms": round_trips, "last_status": status}
        if kind == "trellis":
            d = trellis_durations(logf)
            res["initial_apply_ms"] = d.get(first, 0) / 1e3 if first in d else None
            res["update_ms"] = [d[v] / 1e3 for v in versions if v in d]
        else:
            time.sleep(5.5)
            total, count = envoy_rds_histogram(admin)
            if None in before or total is None or count <= before[1]:
                raise RuntimeError(f"envoy: no rds update_duration histogram: {before} {total} {count}")
            res["initial_apply_ms"] = before[0] / before[1] if before[1] else None
            res["update_ms_mean"] = (total - before[0]) / (count - before[1])
            res["update_count"] = count - before[1]
        return res
    finally:
        if proc is not None and proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(5)
        ads.stop()


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--trellis-bin")
    ap.add_argument("--envoy-bin")
    ap.add_argument("--routes", default="10,1000,10000", help="comma-separated sizes [10,1000,10000]")
    ap.add_argument("--clusters", type=int, default=1000)
    ap.add_argument("--updates", type=int, default=20, help="one-route updates per size [20]")
    ap.add_argument("--gap", type=float, default=0.05, help="seconds between updates [0.05]")
    ap.add_argument("--timeout", type=float, default=60.0)
    ap.add_argument("--cpu", type=int, default=None, help="pin the proxy to this CPU (taskset)")
    args = ap.parse_args()
    kinds = [k for k, b in (("trellis", args.trellis_bin), ("envoy", args.envoy_bin)) if b]
    if not kinds:
        sys.exit("give --trellis-bin and/or --envoy-bin")
    upstream = Upstream()
    failed = 0
    try:
        for routes in [int(x) for x in args.routes.split(",") if x]:
            for kind in kinds:
                try:
                    res = run_one(args, kind, routes, upstream)
                except Exception as e:  # noqa: BLE001
                    res = {"proxy": kind, "routes": routes, "failed": str(e)}
                    failed += 1
                log(json.dumps({k: v for k, v in res.items() if k not in ("push_ack_ms", "update_ms")}))
                print(json.dumps(res), flush=True)
    finally:
        upstream.stop()
    sys.exit(1 if failed else 0)


if __name__ == "__main__":
    main()
