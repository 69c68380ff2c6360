"""`limit`/`nextToken` pagination, as the aws CLI and boto3 paginators use it."""

import pytest
from conftest import arn


def test_paginators_walk_every_page(appmesh, mesh):
    names = [f"vn-{i:02d}" for i in range(7)]
    for n in names:
        appmesh.create_virtual_node(meshName=mesh, virtualNodeName=n, spec={})
    pages = list(appmesh.get_paginator("list_virtual_nodes").paginate(
        meshName=mesh, PaginationConfig={"PageSize": 3}))
    assert [len(p["virtualNodes"]) for p in pages] == [3, 3, 1]
    assert [v["virtualNodeName"] for p in pages for v in p["virtualNodes"]] == names
    assert "nextToken" not in pages[-1]
    every = appmesh.get_paginator("list_meshes").paginate(PaginationConfig={"PageSize": 1}).build_full_result()
    assert mesh in [m["meshName"] for m in every["meshes"]]


def test_tag_pages(appmesh, mesh):
    mesh_arn = arn(f"mesh/{mesh}")
    appmesh.tag_resource(resourceArn=mesh_arn, tags=[{"key": f"k{i}", "value": str(i)} for i in range(5)])
    pages = list(appmesh.get_paginator("list_tags_for_resource").paginate(
        resourceArn=mesh_arn, PaginationConfig={"PageSize": 2}))
    assert [len(p["tags"]) for p in pages] == [2, 2, 1]


def test_bad_limits_and_tokens_are_rejected(lax, mesh):
    for limit in (0, 101):
        with pytest.raises(lax.exceptions.BadRequestException):
            lax.list_virtual_nodes(meshName=mesh, limit=limit)
    with pytest.raises(lax.exceptions.BadRequestException):
        lax.list_virtual_nodes(meshName=mesh, nextToken="not-a-token")


def test_cli_style_max_items_and_starting_token(appmesh, mesh):
    """What `aws appmesh list-virtual-nodes --max-items 2 --starting-token T` does."""
    for i in range(5):
        appmesh.create_virtual_node(meshName=mesh, virtualNodeName=f"n{i}", spec={})
    paginator = appmesh.get_paginator("list_virtual_nodes")
    first = paginator.paginate(meshName=mesh, PaginationConfig={"MaxItems": 2, "PageSize": 1}).build_full_result()
    assert [v["virtualNodeName"] for v in first["virtualNodes"]] == ["n0", "n1"]
    rest = paginator.paginate(
        meshName=mesh, PaginationConfig={"StartingToken": first["NextToken"], "PageSize": 2}
    ).build_full_result()
    assert [v["virtualNodeName"] for v in rest["virtualNodes"]] == ["n2", "n3", "n4"]
