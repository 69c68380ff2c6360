"""A test ADS server on the PyPI packages `xds-protos` and `grpcio`.

It is a second, independent implementation of what `tests/src/xds_server.rs`
does, so that trellis-proxy is checked against a control plane written
with other tools than its own (other protobuf runtime, other gRPC stack),
and against stock Envoy on the same stream of updates.

The test drives it: `set()`/`remove()` then `push()`. Each proxy (told
apart by its node id) may get its own variant of a resource, so two proxies
on one machine can listen on different ports while taking the same updates.
Every request is recorded so a test can assert ACKs and NACKs exactly.
"""

import itertools
import queue
import threading
from concurrent import futures

import grpc
from google.protobuf import any_pb2, json_format

# Importing these registers their types, which json_format needs for "@type".
from envoy.config.cluster.v3 import cluster_pb2  # noqa: F401
from envoy.config.endpoint.v3 import endpoint_pb2  # noqa: F401
from envoy.config.listener.v3 import listener_pb2  # noqa: F401
from envoy.config.route.v3 import route_pb2  # noqa: F401
from envoy.extensions.filters.http.router.v3 import router_pb2  # noqa: F401
from envoy.extensions.filters.network.http_connection_manager.v3 import (  # noqa: F401
    http_connection_manager_pb2,
)
from envoy.service.discovery.v3 import ads_pb2_grpc, discovery_pb2

LISTENER = "type.googleapis.com/envoy.config.listener.v3.Listener"
ROUTE = "type.googleapis.com/envoy.config.route.v3.RouteConfiguration"
CLUSTER = "type.googleapis.com/envoy.config.cluster.v3.Cluster"
ENDPOINTS = "type.googleapis.com/envoy.config.endpoint.v3.ClusterLoadAssignment"
WILDCARD = {LISTENER, CLUSTER}
ORDER = [CLUSTER, ENDPOINTS, LISTENER, ROUTE]

MESSAGES = {
    LISTENER: listener_pb2.Listener,
    ROUTE: route_pb2.RouteConfiguration,
    CLUSTER: cluster_pb2.Cluster,
    ENDPOINTS: endpoint_pb2.ClusterLoadAssignment,
}


def pack(type_url, resource):
    """A resource given as a dict (the YAML shape) or a message, as an Any."""
    if isinstance(resource, dict):
        resource = json_format.ParseDict(resource, MESSAGES[type_url]())
    a = any_pb2.Any()
    a.Pack(resource)
    return a


class _Stream:
    def __init__(self, sid, delta):
        self.id = sid
        self.delta = delta
        self.node = None
        self.out = queue.Queue()
        # type_url -> {"wildcard", "names", "started", "known"}
        self.subs = {}


class AdsServer:
    def __init__(self):
        self._lock = threading.RLock()
        # type_url -> name -> {"default": Any, node_id: Any, ...}
        self._resources = {t: {} for t in ORDER}
        # type_url -> name -> version stamped at the push that changed it
        self._res_versions = {t: {} for t in ORDER}
        self._versions = {t: "" for t in ORDER}
        self._dirty = set()
        self._pushes = 0
        self._nonces = itertools.count(1)
        self._sids = itertools.count(1)
        self._streams = {}
        self.requests = []
        self.sent = []
        self._server = None
        self.port = None

    # --- lifecycle ---

    def start(self, port=0):
        self._server = grpc.server(futures.ThreadPoolExecutor(max_workers=16))
        ads_pb2_grpc.add_AggregatedDiscoveryServiceServicer_to_server(_Servicer(self), self._server)
        self.port = self._server.add_insecure_port(f"127.0.0.1:{port}")
        self._server.start()
        return self.port

    def stop(self):
        with self._lock:
            for s in self._streams.values():
                s.out.put(None)
            self._streams.clear()
        if self._server is not None:
            self._server.stop(grace=None)
            self._server = None

    # --- the test's side ---

    def set(self, type_url, name, resource, node=None):
        """Sets `name` for every proxy, or only for the one named `node`."""
        a = pack(type_url, resource)
        with self._lock:
            entry = self._resources[type_url].setdefault(name, {})
            key = node or "default"
            if entry.get(key) == a:
                return
            entry[key] = a
            self._res_versions[type_url][name] = None
            self._dirty.add(type_url)

    def remove(self, type_url, name):
        with self._lock:
            if self._resources[type_url].pop(name, None) is not None:
                self._res_versions[type_url].pop(name, None)
                self._dirty.add(type_url)

    def push(self):
        """Stamps the changes with a new version and sends them; returns it."""
        with self._lock:
            self._pushes += 1
            version = f"v{self._pushes}"
            for t in ORDER:
                if t not in self._dirty:
                    continue
                self._versions[t] = version
                for name, v in self._res_versions[t].items():
                    if v is None:
                        self._res_versions[t][name] = version
            dirty = [t for t in ORDER if t in self._dirty]
            self._dirty.clear()
            for t in dirty:
                for s in list(self._streams.values()):
                    if t in s.subs:
                        self._respond(s, t)
            return version

    def answers(self, type_url, version):
        """node id -> the request answering `version` of `type_url`."""
        with self._lock:
            nonces = {x["nonce"]: x["node"] for x in self.sent
                      if x["type_url"] == type_url and x["version"] == version}
            out = {}
            for r in self.requests:
                if r["type_url"] == type_url and r["nonce"] in nonces:
                    out.setdefault(nonces[r["nonce"]], r)
            return out

    # --- protocol ---

    def _resource_for(self, type_url, name, node):
        entry = self._resources[type_url].get(name)
        if not entry or self._res_versions[type_url].get(name) is None:
            return None
        return entry.get(node, entry.get("default"))

    def _respond(self, s, t):
        sub = s.subs[t]
        names = sorted(self._resources[t])
        if not sub["wildcard"]:
            names = [n for n in names if n in sub["names"]]
        nonce = f"n{next(self._nonces)}"
        if not s.delta:
            resources, sent_names = [], []
            for n in names:
                a = self._resource_for(t, n, s.node)
                if a is not None:
                    resources.append(a)
                    sent_names.append(n)
            resp = discovery_pb2.DiscoveryResponse(
                version_info=self._versions[t], resources=resources, type_url=t, nonce=nonce)
            removed = []
        else:
            resources, sent_names, known = [], [], dict(sub["known"])
            for n in names:
                a = self._resource_for(t, n, s.node)
                v = self._res_versions[t].get(n)
                if a is None or known.get(n) == v:
                    continue
                known[n] = v
                sent_names.append(n)
                resources.append(discovery_pb2.Resource(name=n, version=v, resource=a))
            removed = [n for n in sub["known"] if self._resource_for(t, n, s.node) is None]
            for n in removed:
                known.pop(n, None)
            if not resources and not removed:
                return
            sub["known"] = known
            resp = discovery_pb2.DeltaDiscoveryResponse(
                system_version_info=self._versions[t], resources=resources, type_url=t,
                removed_resources=removed, nonce=nonce)
        s.out.put(resp)
        self.sent.append({"stream": s.id, "node": s.node, "type_url": t,
                          "version": self._versions[t], "nonce": nonce,
                          "names": sent_names, "removed": removed})

    def _on_request(self, s, r):
        if r.node.id:
            s.node = r.node.id
        t = r.type_url
        err = (r.error_detail.code, r.error_detail.message) if r.HasField("error_detail") else None
        rec = {"stream": s.id, "node": s.node, "delta": s.delta, "type_url": t,
               "nonce": r.response_nonce, "error": err}
        with self._lock:
            if not s.delta:
                rec.update(version_info=r.version_info, names=list(r.resource_names))
                self.requests.append(rec)
                names = set(r.resource_names) - {"*"}
                wildcard = "*" in r.resource_names or (not r.resource_names and t in WILDCARD)
                sub = s.subs.setdefault(t, {"started": False, "names": set(), "wildcard": False,
                                            "known": {}})
                current = self._versions.get(t, "")
                if not sub["started"]:
                    respond = current != "" and r.version_info != current
                else:
                    respond = names != sub["names"] or wildcard != sub["wildcard"]
                sub.update(started=True, names=names, wildcard=wildcard)
                if respond and current:
                    self._respond(s, t)
            else:
                rec.update(version_info="", names=list(r.resource_names_subscribe),
                           unsubscribe=list(r.resource_names_unsubscribe),
                           initial_resource_versions=dict(r.initial_resource_versions))
                self.requests.append(rec)
                first = t not in s.subs
                sub = s.subs.setdefault(t, {"started": True, "names": set(), "wildcard": False,
                                            "known": {}})
                if first:
                    sub["wildcard"] = not r.resource_names_subscribe and t in WILDCARD
                    sub["known"] = dict(r.initial_resource_versions)
                for n in r.resource_names_subscribe:
                    if n == "*":
                        sub["wildcard"] = True
                    else:
                        sub["names"].add(n)
                for n in r.resource_names_unsubscribe:
                    if n == "*":
                        sub["wildcard"] = False
                    else:
                        sub["names"].discard(n)
                        sub["known"].pop(n, None)
                if t in self._versions:
                    self._respond(s, t)

    def _serve(self, request_iterator, context, delta):
        with self._lock:
            s = _Stream(next(self._sids), delta)
            self._streams[s.id] = s

        def read():
            try:
                for r in request_iterator:
                    self._on_request(s, r)
            except grpc.RpcError:
                pass
            finally:
                s.out.put(None)

        threading.Thread(target=read, daemon=True).start()
        try:
            while True:
                resp = s.out.get()
                if resp is None or not context.is_active():
                    return
                yield resp
        finally:
            with self._lock:
                self._streams.pop(s.id, None)


class _Servicer(ads_pb2_grpc.AggregatedDiscoveryServiceServicer):
    def __init__(self, server):
        self._s = server

    def StreamAggregatedResources(self, request_iterator, context):
        yield from self._s._serve(request_iterator, context, delta=False)

    def DeltaAggregatedResources(self, request_iterator, context):
        yield from self._s._serve(request_iterator, context, delta=True)


# --- resource builders, in the YAML shape ---

ADS = {"ads": {}, "resource_api_version": "V3"}


def http_listener(name, port, route_config):
    return {
        "name": name,
        "address": {"socket_address": {"address": "127.0.0.1", "port_value": port}},
        "filter_chains": [{"filters": [{
            "name": "envoy.filters.network.http_connection_manager",
            "typed_config": {
                "@type": "type.googleapis.com/envoy.extensions.filters.network."
                         "http_connection_manager.v3.HttpConnectionManager",
                "stat_prefix": name,
                "rds": {"config_source": ADS, "route_config_name": route_config},
                "http_filters": [{
                    "name": "envoy.filters.http.router",
                    "typed_config": {"@type": "type.googleapis.com/"
                                              "envoy.extensions.filters.http.router.v3.Router"},
                }],
            },
        }]}],
    }


def route_config(name, routes, tag):
    """`routes`: [(prefix, [(cluster, weight), ...])]; responses carry x-route-tag."""
    out = []
    for prefix, clusters in routes:
        if len(clusters) == 1:
            action = {"cluster": clusters[0][0]}
        else:
            action = {"weighted_clusters": {"clusters": [
                {"name": c, "weight": w} for c, w in clusters]}}
        out.append({"match": {"prefix": prefix}, "route": action})
    return {
        "name": name,
        "virtual_hosts": [{"name": "all", "domains": ["*"], "routes": out}],
        "response_headers_to_add": [{
            "header": {"key": "x-route-tag", "value": tag},
            "append_action": "OVERWRITE_IF_EXISTS_OR_ADD",
        }],
    }


def load_assignment(name, hosts):
    """`hosts`: [(address, port)]."""
    return {"cluster_name": name, "endpoints": [{"lb_endpoints": [
        {"endpoint": {"address": {"socket_address": {"address": h, "port_value": p}}}}
        for h, p in hosts]}]}


def eds_cluster(name):
    return {"name": name, "type": "EDS", "connect_timeout": "1s",
            "eds_cluster_config": {"eds_config": ADS, "service_name": name}}


def static_cluster(name, hosts):
    return {"name": name, "type": "STATIC", "connect_timeout": "1s",
            "load_assignment": load_assignment(name, hosts)}


def bootstrap(node_id, ads_port, admin_port, delta):
    """The same bootstrap as the Rust tests' `ads_bootstrap`, as YAML."""
    api_type = "DELTA_GRPC" if delta else "GRPC"
    return f"""node:
  id: {node_id}
  cluster: interop
admin:
  address:
    socket_address: {{ address: 127.0.0.1, port_value: {admin_port} }}
dynamic_resources:
  ads_config:
    api_type: {api_type}
    transport_api_version: V3
    grpc_services:
    - envoy_grpc: {{ cluster_name: xds }}
  lds_config:
    ads: {{}}
    resource_api_version: V3
  cds_config:
    ads: {{}}
    resource_api_version: V3
static_resources:
  clusters:
  - name: xds
    type: STATIC
    connect_timeout: 1s
    typed_extension_protocol_options:
      envoy.extensions.upstreams.http.v3.HttpProtocolOptions:
        "@type": type.googleapis.com/envoy.extensions.upstreams.http.v3.HttpProtocolOptions
        explicit_http_config:
          http2_protocol_options: {{}}
    load_assignment:
      cluster_name: xds
      endpoints:
      - lb_endpoints:
        - endpoint:
            address:
              socket_address: {{ address: 127.0.0.1, port_value: {ads_port} }}
"""
