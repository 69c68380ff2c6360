"""Every App Mesh operation, through boto3, with the shapes App Mesh returns."""

import datetime
import uuid

from conftest import ACCOUNT, arn

HTTP_LISTENER = [{"portMapping": {"port": 8080, "protocol": "http"}}]


def vn_spec(hostname, backends=()):
    spec = {"listeners": HTTP_LISTENER, "serviceDiscovery": {"dns": {"hostname": hostname}}}
    if backends:
        spec["backends"] = [{"virtualService": {"virtualServiceName": b}} for b in backends]
    return spec


def weighted(node):
    return {"httpRoute": {"match": {"prefix": "/"},
                          "action": {"weightedTargets": [{"virtualNode": node, "weight": 1}]}}}


def check_metadata(data, path, version):
    md = data["metadata"]
    assert md["arn"] == arn(path)
    assert md["version"] == version
    assert md["meshOwner"] == ACCOUNT and md["resourceOwner"] == ACCOUNT
    assert isinstance(md["createdAt"], datetime.datetime)
    assert md["lastUpdatedAt"] >= md["createdAt"]
    assert len(md["uid"]) > 0


def test_every_operation_round_trips(appmesh):
    called = set()
    appmesh.meta.events.register(
        "before-call", lambda model, **_: called.add(model.name)
    )
    m = f"life-{uuid.uuid4().hex[:8]}"

    mesh = appmesh.create_mesh(meshName=m, tags=[{"key": "team", "value": "core"}])["mesh"]
    check_metadata(mesh, f"mesh/{m}", 1)
    assert mesh["status"]["status"] == "ACTIVE"
    assert mesh["spec"]["egressFilter"]["type"] == "DROP_ALL"
    assert appmesh.describe_mesh(meshName=m)["mesh"]["meshName"] == m
    mesh = appmesh.update_mesh(meshName=m, spec={"egressFilter": {"type": "ALLOW_ALL"}})["mesh"]
    check_metadata(mesh, f"mesh/{m}", 2)
    assert mesh["spec"]["egressFilter"]["type"] == "ALLOW_ALL"
    assert m in [x["meshName"] for x in appmesh.list_meshes()["meshes"]]

    for name in ("vn-a", "vn-b"):
        vn = appmesh.create_virtual_node(
            meshName=m, virtualNodeName=name, spec=vn_spec(f"{name}.local", ["backend.local"])
        )["virtualNode"]
        check_metadata(vn, f"mesh/{m}/virtualNode/{name}", 1)
        assert vn["spec"]["backends"][0]["virtualService"]["virtualServiceName"] == "backend.local"
    vn = appmesh.describe_virtual_node(meshName=m, virtualNodeName="vn-a")["virtualNode"]
    assert vn["spec"]["listeners"] == HTTP_LISTENER
    vn = appmesh.update_virtual_node(meshName=m, virtualNodeName="vn-a", spec=vn_spec("a2.local"))
    check_metadata(vn["virtualNode"], f"mesh/{m}/virtualNode/vn-a", 2)
    refs = appmesh.list_virtual_nodes(meshName=m)["virtualNodes"]
    assert [r["virtualNodeName"] for r in refs] == ["vn-a", "vn-b"]
    assert refs[0]["arn"] == arn(f"mesh/{m}/virtualNode/vn-a") and refs[0]["version"] == 2

    vr = appmesh.create_virtual_router(
        meshName=m, virtualRouterName="vr", spec={"listeners": HTTP_LISTENER}
    )["virtualRouter"]
    check_metadata(vr, f"mesh/{m}/virtualRouter/vr", 1)
    appmesh.describe_virtual_router(meshName=m, virtualRouterName="vr")
    appmesh.update_virtual_router(
        meshName=m, virtualRouterName="vr",
        spec={"listeners": [{"portMapping": {"port": 9090, "protocol": "http2"}}]},
    )
    assert appmesh.list_virtual_routers(meshName=m)["virtualRouters"][0]["version"] == 2

    route = appmesh.create_route(
        meshName=m, virtualRouterName="vr", routeName="all", spec=weighted("vn-a")
    )["route"]
    check_metadata(route, f"mesh/{m}/virtualRouter/vr/route/all", 1)
    assert route["virtualRouterName"] == "vr"
    appmesh.describe_route(meshName=m, virtualRouterName="vr", routeName="all")
    route = appmesh.update_route(
        meshName=m, virtualRouterName="vr", routeName="all", spec=weighted("vn-b")
    )["route"]
    assert route["spec"]["httpRoute"]["action"]["weightedTargets"][0]["virtualNode"] == "vn-b"
    assert appmesh.list_routes(meshName=m, virtualRouterName="vr")["routes"][0]["routeName"] == "all"

    vs = appmesh.create_virtual_service(
        meshName=m, virtualServiceName="svc.local",
        spec={"provider": {"virtualRouter": {"virtualRouterName": "vr"}}},
    )["virtualService"]
    check_metadata(vs, f"mesh/{m}/virtualService/svc.local", 1)
    appmesh.describe_virtual_service(meshName=m, virtualServiceName="svc.local")
    appmesh.update_virtual_service(
        meshName=m, virtualServiceName="svc.local",
        spec={"provider": {"virtualNode": {"virtualNodeName": "vn-a"}}},
    )
    assert appmesh.list_virtual_services(meshName=m)["virtualServices"][0]["version"] == 2

    vg = appmesh.create_virtual_gateway(
        meshName=m, virtualGatewayName="gw", spec={"listeners": HTTP_LISTENER}
    )["virtualGateway"]
    check_metadata(vg, f"mesh/{m}/virtualGateway/gw", 1)
    appmesh.describe_virtual_gateway(meshName=m, virtualGatewayName="gw")
    appmesh.update_virtual_gateway(
        meshName=m, virtualGatewayName="gw",
        spec={"listeners": [{"portMapping": {"port": 8443, "protocol": "http"}}]},
    )
    assert appmesh.list_virtual_gateways(meshName=m)["virtualGateways"][0]["virtualGatewayName"] == "gw"

    gr_spec = {"httpRoute": {"match": {"prefix": "/"},
                             "action": {"target": {"virtualService": {"virtualServiceName": "svc.local"}}}}}
    gr = appmesh.create_gateway_route(
        meshName=m, virtualGatewayName="gw", gatewayRouteName="in", spec=gr_spec
    )["gatewayRoute"]
    check_metadata(gr, f"mesh/{m}/virtualGateway/gw/gatewayRoute/in", 1)
    appmesh.describe_gateway_route(meshName=m, virtualGatewayName="gw", gatewayRouteName="in")
    gr_spec["httpRoute"]["match"]["prefix"] = "/v2"
    gr = appmesh.update_gateway_route(
        meshName=m, virtualGatewayName="gw", gatewayRouteName="in", spec=gr_spec
    )["gatewayRoute"]
    assert gr["metadata"]["version"] == 2
    assert appmesh.list_gateway_routes(meshName=m, virtualGatewayName="gw")["gatewayRoutes"][0][
        "gatewayRouteName"] == "in"

    vn_arn = arn(f"mesh/{m}/virtualNode/vn-a")
    appmesh.tag_resource(resourceArn=vn_arn, tags=[{"key": "a", "value": "1"}, {"key": "b", "value": "2"}])
    appmesh.tag_resource(resourceArn=vn_arn, tags=[{"key": "a", "value": "3"}])
    tags = appmesh.list_tags_for_resource(resourceArn=vn_arn)["tags"]
    assert sorted((t["key"], t["value"]) for t in tags) == [("a", "3"), ("b", "2")]
    appmesh.untag_resource(resourceArn=vn_arn, tagKeys=["a"])
    assert appmesh.list_tags_for_resource(resourceArn=vn_arn)["tags"] == [{"key": "b", "value": "2"}]
    assert appmesh.list_tags_for_resource(resourceArn=arn(f"mesh/{m}"))["tags"] == [
        {"key": "team", "value": "core"}]

    deleted = [
        appmesh.delete_gateway_route(meshName=m, virtualGatewayName="gw", gatewayRouteName="in")["gatewayRoute"],
        appmesh.delete_virtual_gateway(meshName=m, virtualGatewayName="gw")["virtualGateway"],
        appmesh.delete_virtual_service(meshName=m, virtualServiceName="svc.local")["virtualService"],
        appmesh.delete_route(meshName=m, virtualRouterName="vr", routeName="all")["route"],
        appmesh.delete_virtual_router(meshName=m, virtualRouterName="vr")["virtualRouter"],
        appmesh.delete_virtual_node(meshName=m, virtualNodeName="vn-a")["virtualNode"],
        appmesh.delete_virtual_node(meshName=m, virtualNodeName="vn-b")["virtualNode"],
        appmesh.delete_mesh(meshName=m)["mesh"],
    ]
    assert all(d["status"]["status"] == "DELETED" for d in deleted)
    assert m not in [x["meshName"] for x in appmesh.list_meshes()["meshes"]]

    assert called == set(appmesh.meta.service_model.operation_names)
