"""Starts one trellis-control per test session on a free port, with its own
data dir and a credentials file written by the test, and hands out boto3
App Mesh clients pointed at it."""

import os
import pathlib
import signal
import socket
import subprocess
import time
import uuid

import boto3
import pytest
from botocore.config import Config

ROOT = pathlib.Path(__file__).resolve().parents[3]
ACCESS_KEY = "AKIATRELLISTEST00001"
SECRET_KEY = "trellis-test-secret-key-0000000000000000"
REGION = "us-west-2"
ACCOUNT = "000000000000"


def binary():
    path = os.environ.get("TRELLIS_CONTROL_BIN", "target/debug/trellis-control")
    path = pathlib.Path(path)
    return path if path.is_absolute() else ROOT / path


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Server:
    def __init__(self, tmp):
        self.data_dir = tmp / "data"
        self.credentials = tmp / "credentials"
        self.credentials.write_text(
            f"[default]\naws_access_key_id = {ACCESS_KEY}\naws_secret_access_key = {SECRET_KEY}\n"
        )
        self.port = free_port()
        self.endpoint = f"http://127.0.0.1:{self.port}"
        self.log = open(tmp / "server.log", "w")
        self.proc = subprocess.Popen(
            [
                str(binary()), "serve",
                "--data-dir", str(self.data_dir),
                "--api-addr", f"127.0.0.1:{self.port}",
                "--xds-addr", f"127.0.0.1:{free_port()}",
                "--credentials", str(self.credentials),
            ],
            stdout=subprocess.DEVNULL,
            stderr=self.log,
        )
        deadline = time.time() + 20
        while time.time() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"trellis-control exited with {self.proc.returncode}")
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=0.2).close()
                return
            except OSError:
                time.sleep(0.05)
        raise RuntimeError("trellis-control did not start listening")

    def client(self, access_key=ACCESS_KEY, secret_key=SECRET_KEY, validate=True):
        return boto3.client(
            "appmesh",
            endpoint_url=self.endpoint,
            region_name=REGION,
            aws_access_key_id=access_key,
            aws_secret_access_key=secret_key,
            config=Config(retries={"max_attempts": 1, "mode": "standard"},
                          parameter_validation=validate),
        )

    def stop(self):
        self.proc.send_signal(signal.SIGTERM)
        code = self.proc.wait(timeout=20)
        self.log.close()
        return code


@pytest.fixture(scope="session")
def server(tmp_path_factory):
    srv = Server(tmp_path_factory.mktemp("trellis"))
    yield srv
    assert srv.stop() == 0, "trellis-control exits 0 on SIGTERM"


@pytest.fixture
def appmesh(server):
    return server.client()


@pytest.fixture
def lax(server):
    """A client that skips botocore's own parameter checks, so the server's
    validation is what answers."""
    return server.client(validate=False)


@pytest.fixture
def mesh(appmesh):
    name = f"mesh-{uuid.uuid4().hex[:8]}"
    appmesh.create_mesh(meshName=name)
    return name


def arn(path):
    return f"arn:aws:appmesh:{REGION}:{ACCOUNT}:{path}"
