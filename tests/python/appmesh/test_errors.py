"""App Mesh's errors, raised by botocore as their modelled exception classes,
and rejected requests leaving the state untouched."""

import uuid

import pytest
from conftest import arn

LISTENER = [{"portMapping": {"port": 80, "protocol": "http"}}]


def route(node):
    return {"tcpRoute": {"action": {"weightedTargets": [{"virtualNode": node, "weight": 1}]}}}


def test_missing_resources_are_not_found(appmesh, mesh):
    with pytest.raises(appmesh.exceptions.NotFoundException):
        appmesh.describe_mesh(meshName="no-such-mesh")
    with pytest.raises(appmesh.exceptions.NotFoundException):
        appmesh.describe_virtual_node(meshName=mesh, virtualNodeName="ghost")
    with pytest.raises(appmesh.exceptions.NotFoundException):
        appmesh.create_virtual_node(meshName="no-such-mesh", virtualNodeName="a", spec={})
    with pytest.raises(appmesh.exceptions.NotFoundException):
        appmesh.create_route(meshName=mesh, virtualRouterName="no-router", routeName="r", spec=route("a"))
    with pytest.raises(appmesh.exceptions.NotFoundException):
        appmesh.list_routes(meshName=mesh, virtualRouterName="no-router")
    with pytest.raises(appmesh.exceptions.NotFoundException):
        appmesh.delete_virtual_service(meshName=mesh, virtualServiceName="ghost")
    with pytest.raises(appmesh.exceptions.NotFoundException):
        appmesh.list_tags_for_resource(resourceArn=arn(f"mesh/{mesh}/virtualNode/ghost"))


def test_references_must_exist(appmesh, mesh):
    appmesh.create_virtual_router(meshName=mesh, virtualRouterName="r", spec={"listeners": LISTENER})
    with pytest.raises(appmesh.exceptions.NotFoundException) as e:
        appmesh.create_route(meshName=mesh, virtualRouterName="r", routeName="x", spec=route("ghost"))
    assert "weightedTargets[0].virtualNode" in str(e.value)
    with pytest.raises(appmesh.exceptions.NotFoundException):
        appmesh.create_virtual_service(
            meshName=mesh, virtualServiceName="s",
            spec={"provider": {"virtualNode": {"virtualNodeName": "ghost"}}})
    appmesh.create_virtual_gateway(meshName=mesh, virtualGatewayName="g", spec={"listeners": LISTENER})
    with pytest.raises(appmesh.exceptions.NotFoundException):
        appmesh.create_gateway_route(
            meshName=mesh, virtualGatewayName="g", gatewayRouteName="x",
            spec={"httpRoute": {"match": {"prefix": "/"},
                                "action": {"target": {"virtualService": {"virtualServiceName": "ghost"}}}}})
    assert appmesh.list_routes(meshName=mesh, virtualRouterName="r")["routes"] == []
    assert appmesh.list_virtual_services(meshName=mesh)["virtualServices"] == []


def test_names_are_unique_per_mesh(appmesh, mesh):
    appmesh.create_virtual_node(meshName=mesh, virtualNodeName="a", spec={})
    with pytest.raises(appmesh.exceptions.ConflictException):
        appmesh.create_virtual_node(meshName=mesh, virtualNodeName="a", spec={})
    with pytest.raises(appmesh.exceptions.ConflictException):
        appmesh.create_mesh(meshName=mesh)
    other = f"other-{uuid.uuid4().hex[:6]}"
    appmesh.create_mesh(meshName=other)
    appmesh.create_virtual_node(meshName=other, virtualNodeName="a", spec={})


def test_resources_in_use_cannot_be_deleted(appmesh, mesh):
    appmesh.create_virtual_node(meshName=mesh, virtualNodeName="a", spec={})
    appmesh.create_virtual_router(meshName=mesh, virtualRouterName="r", spec={"listeners": LISTENER})
    appmesh.create_route(meshName=mesh, virtualRouterName="r", routeName="x", spec=route("a"))
    appmesh.create_virtual_service(
        meshName=mesh, virtualServiceName="s", spec={"provider": {"virtualRouter": {"virtualRouterName": "r"}}})
    for call in (
        lambda: appmesh.delete_mesh(meshName=mesh),
        lambda: appmesh.delete_virtual_node(meshName=mesh, virtualNodeName="a"),
        lambda: appmesh.delete_virtual_router(meshName=mesh, virtualRouterName="r"),
    ):
        with pytest.raises(appmesh.exceptions.ResourceInUseException):
            call()
    assert appmesh.describe_virtual_node(meshName=mesh, virtualNodeName="a")["virtualNode"]["status"][
        "status"] == "ACTIVE"


def test_model_constraints_are_enforced_by_the_server(lax, mesh):
    cases = [
        {"listeners": [{"portMapping": {"port": 70000, "protocol": "http"}}]},
        {"listeners": [{"portMapping": {"port": 80, "protocol": "udp"}}]},
        {"listeners": [{"portMapping": {"port": 80}}]},
        {"serviceDiscovery": {"dns": {"hostname": "a"}, "awsCloudMap": {"namespaceName": "n", "serviceName": "s"}}},
        {"serviceDiscovery": {"awsCloudMap": {"namespaceName": "n"}}},
        {"serviceDiscovery": {"awsCloudMap": {"namespaceName": "n", "serviceName": "s",
                                              "attributes": [{"key": "k"}]}}},
        {"serviceDiscovery": {"awsCloudMap": {"namespaceName": "n", "serviceName": "s",
                                              "ipPreference": "IPv5_ONLY"}}},
        {"listeners": [{"portMapping": {"port": 80, "protocol": "http"},
                        "tls": {"mode": "STRICT", "certificate": {"acm": {"certificateArn": "arn:x"}}}}]},
    ]
    for i, spec in enumerate(cases):
        with pytest.raises(lax.exceptions.BadRequestException):
            lax.create_virtual_node(meshName=mesh, virtualNodeName=f"bad-{i}", spec=spec)
    with pytest.raises(lax.exceptions.BadRequestException):
        lax.create_virtual_node(meshName=mesh, virtualNodeName="x" * 256, spec={})
    with pytest.raises(lax.exceptions.BadRequestException):
        lax.create_virtual_node(meshName=mesh, virtualNodeName="no-spec")
    with pytest.raises(lax.exceptions.BadRequestException):
        lax.create_virtual_router(meshName=mesh, virtualRouterName="r", spec={
            "listeners": [{"portMapping": {"port": 80, "protocol": "tcp"}}]}, tags=[{"key": ""}])
    assert lax.list_virtual_nodes(meshName=mesh)["virtualNodes"] == []
    assert lax.list_virtual_routers(meshName=mesh)["virtualRouters"] == []


def test_cloud_map_service_discovery_is_accepted(appmesh, mesh):
    """Served from trellis's instance registry (register-instance --namespace/--service)."""
    discovery = {"awsCloudMap": {"namespaceName": "apps.local", "serviceName": "color",
                                 "attributes": [{"key": "ECS_TASK_DEFINITION_FAMILY", "value": "color"}],
                                 "ipPreference": "IPv4_PREFERRED"}}
    created = appmesh.create_virtual_node(meshName=mesh, virtualNodeName="color", spec={
        "listeners": LISTENER, "serviceDiscovery": discovery})
    assert created["virtualNode"]["spec"]["serviceDiscovery"] == discovery
    described = appmesh.describe_virtual_node(meshName=mesh, virtualNodeName="color")
    assert described["virtualNode"]["spec"]["serviceDiscovery"] == discovery
    updated = appmesh.update_virtual_node(meshName=mesh, virtualNodeName="color", spec={
        "listeners": LISTENER, "serviceDiscovery": {"awsCloudMap": {"namespaceName": "n", "serviceName": "s"}}})
    assert updated["virtualNode"]["metadata"]["version"] == 2


def test_a_route_speaks_exactly_one_protocol(lax, mesh):
    lax.create_virtual_node(meshName=mesh, virtualNodeName="a", spec={})
    lax.create_virtual_router(meshName=mesh, virtualRouterName="r", spec={"listeners": LISTENER})
    both = {**route("a"), "httpRoute": {"match": {"prefix": "/"},
                                        "action": {"weightedTargets": [{"virtualNode": "a", "weight": 1}]}}}
    with pytest.raises(lax.exceptions.BadRequestException):
        lax.create_route(meshName=mesh, virtualRouterName="r", routeName="x", spec=both)
    with pytest.raises(lax.exceptions.BadRequestException):
        lax.create_route(meshName=mesh, virtualRouterName="r", routeName="x", spec={})


def test_client_tokens_make_retries_idempotent(appmesh, mesh):
    token = uuid.uuid4().hex
    first = appmesh.create_virtual_node(meshName=mesh, virtualNodeName="a", spec={}, clientToken=token)
    again = appmesh.create_virtual_node(meshName=mesh, virtualNodeName="a", spec={}, clientToken=token)
    assert first["virtualNode"]["metadata"]["uid"] == again["virtualNode"]["metadata"]["uid"]
    with pytest.raises(appmesh.exceptions.ConflictException):
        appmesh.create_virtual_node(meshName=mesh, virtualNodeName="b", spec={}, clientToken=token)
    update = uuid.uuid4().hex
    spec = {"listeners": LISTENER}
    v1 = appmesh.update_virtual_node(meshName=mesh, virtualNodeName="a", spec=spec, clientToken=update)
    v2 = appmesh.update_virtual_node(meshName=mesh, virtualNodeName="a", spec=spec, clientToken=update)
    assert v1["virtualNode"]["metadata"]["version"] == v2["virtualNode"]["metadata"]["version"] == 2


def test_too_many_tags(appmesh, mesh):
    mesh_arn = arn(f"mesh/{mesh}")
    appmesh.tag_resource(resourceArn=mesh_arn, tags=[{"key": f"k{i}", "value": "v"} for i in range(30)])
    with pytest.raises(appmesh.exceptions.TooManyTagsException):
        appmesh.tag_resource(resourceArn=mesh_arn, tags=[{"key": f"x{i}", "value": "v"} for i in range(30)])
    assert len(appmesh.list_tags_for_resource(resourceArn=mesh_arn)["tags"]) == 30


def test_bad_arns_are_bad_requests(appmesh):
    with pytest.raises(appmesh.exceptions.BadRequestException):
        appmesh.list_tags_for_resource(resourceArn="arn:aws:s3:::bucket")


def test_meshes_of_other_accounts_do_not_exist_here(appmesh, mesh):
    with pytest.raises(appmesh.exceptions.NotFoundException):
        appmesh.list_virtual_nodes(meshName=mesh, meshOwner="111122223333")
    appmesh.list_virtual_nodes(meshName=mesh, meshOwner="000000000000")


def http_route(match, **extra):
    return {"httpRoute": {"match": match,
                          "action": {"weightedTargets": [{"virtualNode": "a", "weight": 1}]}, **extra}}


def grpc_route(match, **extra):
    return {"grpcRoute": {"match": match,
                          "action": {"weightedTargets": [{"virtualNode": "a", "weight": 1}]}, **extra}}


TIMEOUT = {"unit": "ms", "value": 250}


def test_app_mesh_rules_beyond_the_model_are_enforced(appmesh, mesh):
    """Inputs App Mesh refused although the model allows them: each is a
    BadRequestException naming the field, and nothing is written."""
    appmesh.create_virtual_node(meshName=mesh, virtualNodeName="a", spec={})
    appmesh.create_virtual_router(meshName=mesh, virtualRouterName="r", spec={"listeners": LISTENER})
    cases = [
        (grpc_route({"methodName": "Get"}),
         "spec.grpcRoute.match.methodName: needs serviceName"),
        (http_route({"prefix": "/"}, retryPolicy={
            "maxRetries": 2, "perRetryTimeout": TIMEOUT, "httpRetryEvents": ["server-error", "5xx"]}),
         "spec.httpRoute.retryPolicy.httpRetryEvents[1]: '5xx' is not one of"),
        (http_route({"prefix": "/"}, retryPolicy={"maxRetries": 2, "perRetryTimeout": TIMEOUT}),
         "spec.httpRoute.retryPolicy: at least one of [httpRetryEvents, tcpRetryEvents] must be set"),
        (grpc_route({"serviceName": "s"}, retryPolicy={"maxRetries": 2, "perRetryTimeout": TIMEOUT}),
         "spec.grpcRoute.retryPolicy: at least one of [grpcRetryEvents, httpRetryEvents, tcpRetryEvents]"),
        (http_route({"prefix": "/"}, timeout={"perRequest": {"value": 5}}),
         "spec.httpRoute.timeout.perRequest.unit: a duration needs its unit"),
        (http_route({"prefix": "/a", "path": {"exact": "/b"}}),
         "spec.httpRoute.match: set prefix or path, not both"),
        (http_route({"path": {"exact": "/a", "regex": "/b.*"}}),
         "spec.httpRoute.match.path: exactly one of [exact, regex] must be set, found 2"),
        (http_route({"prefix": "api"}),
         "spec.httpRoute.match.prefix: 'api' must start with /"),
    ]
    for i, (spec, message) in enumerate(cases):
        with pytest.raises(appmesh.exceptions.BadRequestException) as e:
            appmesh.create_route(meshName=mesh, virtualRouterName="r", routeName=f"bad-{i}", spec=spec)
        assert message in str(e.value), (message, str(e.value))
    assert appmesh.list_routes(meshName=mesh, virtualRouterName="r")["routes"] == []

    good = http_route({"prefix": "/"})
    appmesh.create_route(meshName=mesh, virtualRouterName="r", routeName="good", spec=good)
    with pytest.raises(appmesh.exceptions.BadRequestException) as e:
        appmesh.update_route(meshName=mesh, virtualRouterName="r", routeName="good",
                             spec=http_route({"prefix": "/"}, timeout={"idle": {"unit": "s"}}))
    assert "spec.httpRoute.timeout.idle.value: a duration needs its value" in str(e.value)
    described = appmesh.describe_route(meshName=mesh, virtualRouterName="r", routeName="good")["route"]
    assert described["spec"] == good and described["metadata"]["version"] == 1

    check = {"protocol": "http", "port": 8081, "healthyThreshold": 2, "unhealthyThreshold": 2,
             "intervalMillis": 5000, "timeoutMillis": 2000}
    with pytest.raises(appmesh.exceptions.BadRequestException) as e:
        appmesh.create_virtual_node(meshName=mesh, virtualNodeName="hc", spec={
            "listeners": [{"portMapping": {"port": 8080, "protocol": "http"}, "healthCheck": check}]})
    assert "spec.listeners[0].healthCheck.port: 8081 is not the listener's port 8080" in str(e.value)
    with pytest.raises(appmesh.exceptions.BadRequestException) as e:
        appmesh.create_virtual_node(meshName=mesh, virtualNodeName="pool", spec={
            "listeners": [{"portMapping": {"port": 8080, "protocol": "http"},
                           "connectionPool": {"http2": {"maxRequests": 10}}}]})
    assert "spec.listeners[0].connectionPool.http2: the listener speaks http" in str(e.value)
    assert [n["virtualNodeName"] for n in appmesh.list_virtual_nodes(meshName=mesh)["virtualNodes"]] == ["a"]


def test_routes_name_their_listener_when_there_are_several(appmesh, mesh):
    """App Mesh: "Route must define a port match criteria if the Virtual
    Router has multiple listeners" (gateway routes likewise)."""
    appmesh.create_virtual_node(meshName=mesh, virtualNodeName="a", spec={})
    two = [{"portMapping": {"port": 80, "protocol": "http"}},
           {"portMapping": {"port": 81, "protocol": "http"}}]
    appmesh.create_virtual_router(meshName=mesh, virtualRouterName="r", spec={"listeners": two})
    with pytest.raises(appmesh.exceptions.BadRequestException) as e:
        appmesh.create_route(meshName=mesh, virtualRouterName="r", routeName="x",
                             spec=http_route({"prefix": "/"}))
    assert "spec.httpRoute.match.port: required" in str(e.value)
    with pytest.raises(appmesh.exceptions.BadRequestException) as e:
        appmesh.create_route(meshName=mesh, virtualRouterName="r", routeName="x",
                             spec=http_route({"prefix": "/", "port": 82}))
    assert "spec.httpRoute.match.port: 82 is not a listener port" in str(e.value)
    appmesh.create_route(meshName=mesh, virtualRouterName="r", routeName="x",
                         spec=http_route({"prefix": "/", "port": 81}))
    appmesh.create_virtual_service(meshName=mesh, virtualServiceName="s",
                                   spec={"provider": {"virtualNode": {"virtualNodeName": "a"}}})
    appmesh.create_virtual_gateway(meshName=mesh, virtualGatewayName="g", spec={"listeners": two})
    with pytest.raises(appmesh.exceptions.BadRequestException) as e:
        appmesh.create_gateway_route(
            meshName=mesh, virtualGatewayName="g", gatewayRouteName="x",
            spec={"httpRoute": {"match": {"prefix": "/"},
                                "action": {"target": {"virtualService": {"virtualServiceName": "s"}}}}})
    assert "spec.httpRoute.match.port: required, since VirtualGateway g" in str(e.value)
    assert appmesh.list_gateway_routes(meshName=mesh, virtualGatewayName="g")["gatewayRoutes"] == []
