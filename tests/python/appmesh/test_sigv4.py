"""Signature Version 4: only requests signed with a key pair from the
credentials file get through; refusals are 403 client errors and change
nothing."""

import datetime
import json
import urllib.error
import urllib.request
import uuid
from unittest import mock

import botocore.auth
import pytest
from botocore.exceptions import ClientError


def error_code(excinfo):
    return excinfo.value.response["Error"]["Code"], excinfo.value.response["ResponseMetadata"]["HTTPStatusCode"]


def test_wrong_secret_is_an_invalid_signature(server, appmesh):
    bad = server.client(secret_key="not-the-secret")
    name = f"denied-{uuid.uuid4().hex[:6]}"
    with pytest.raises(ClientError) as e:
        bad.create_mesh(meshName=name)
    assert error_code(e) == ("InvalidSignatureException", 403)
    with pytest.raises(appmesh.exceptions.NotFoundException):
        appmesh.describe_mesh(meshName=name)


def test_unknown_key_is_unrecognized(server):
    with pytest.raises(ClientError) as e:
        server.client(access_key="AKIAUNKNOWN000000000").list_meshes()
    assert error_code(e) == ("UnrecognizedClientException", 403)


def test_unsigned_raw_http_is_forbidden(server, appmesh):
    name = f"raw-{uuid.uuid4().hex[:6]}"
    req = urllib.request.Request(
        f"{server.endpoint}/v20190125/meshes", method="PUT",
        data=json.dumps({"meshName": name}).encode(), headers={"Content-Type": "application/json"})
    with pytest.raises(urllib.error.HTTPError) as e:
        urllib.request.urlopen(req)
    assert e.value.code == 403
    assert e.value.headers["x-amzn-ErrorType"] == "ForbiddenException"
    assert "message" in json.loads(e.value.read())
    with pytest.raises(appmesh.exceptions.NotFoundException):
        appmesh.describe_mesh(meshName=name)


@pytest.mark.parametrize("skew", [datetime.timedelta(minutes=-10), datetime.timedelta(minutes=10)])
def test_skewed_clocks_are_refused(server, skew):
    skewed = datetime.datetime.now(datetime.timezone.utc).replace(tzinfo=None) + skew
    client = server.client()
    with mock.patch.object(botocore.auth, "get_current_datetime", return_value=skewed):
        with pytest.raises(ClientError) as e:
            client.list_meshes()
    code, status = error_code(e)
    assert (code, status) == ("InvalidSignatureException", 403)
    assert "expired" in e.value.response["Error"]["Message"].lower()


def test_small_skew_is_tolerated(server):
    skewed = datetime.datetime.now(datetime.timezone.utc).replace(tzinfo=None) - datetime.timedelta(minutes=3)
    with mock.patch.object(botocore.auth, "get_current_datetime", return_value=skewed):
        server.client().list_meshes()


def test_boto3_unsigned_client_is_forbidden(server, appmesh):
    """boto3's own UNSIGNED mode (no Authorization header at all) gets the
    modelled ForbiddenException and changes nothing."""
    import boto3
    from botocore import UNSIGNED
    from botocore.config import Config

    unsigned = boto3.client("appmesh", endpoint_url=server.endpoint, region_name="us-west-2",
                            config=Config(signature_version=UNSIGNED,
                                          retries={"max_attempts": 1, "mode": "standard"}))
    name = f"unsigned-{uuid.uuid4().hex[:6]}"
    with pytest.raises(unsigned.exceptions.ForbiddenException) as e:
        unsigned.create_mesh(meshName=name)
    assert e.value.response["ResponseMetadata"]["HTTPStatusCode"] == 403
    with pytest.raises(appmesh.exceptions.NotFoundException):
        appmesh.describe_mesh(meshName=name)


def test_a_session_token_is_signed_but_not_checked(server):
    """trellis has no STS: the X-Amz-Security-Token boto3 sends with
    temporary credentials is one more signed header (control/README.md)."""
    import boto3
    from conftest import ACCESS_KEY, SECRET_KEY

    with_token = boto3.client("appmesh", endpoint_url=server.endpoint, region_name="us-west-2",
                              aws_access_key_id=ACCESS_KEY, aws_secret_access_key=SECRET_KEY,
                              aws_session_token="any-session-token")
    with_token.list_meshes()
    wrong = boto3.client("appmesh", endpoint_url=server.endpoint, region_name="us-west-2",
                         aws_access_key_id=ACCESS_KEY, aws_secret_access_key="not-the-secret",
                         aws_session_token="any-session-token")
    with pytest.raises(ClientError) as e:
        wrong.list_meshes()
    assert error_code(e) == ("InvalidSignatureException", 403)
