"""A real server for the service tests: the tiny signed bundle (no torch), the service started in
this process on 127.0.0.1:0 and a Unix socket, and a small HTTP client (http.client over TCP or
AF_UNIX, keep-alive). The bundle and ``rec`` come from tests/conftest.py."""

from __future__ import annotations

import http.client
import json
import os
import shutil
import socket
import tempfile
from pathlib import Path
from typing import Any

import pytest

from shelfrank.device.service.endpoints import Service
from shelfrank.device.service.serve import start
from shelfrank.testing import publish_records


@pytest.fixture(scope="session")
def published(sync_bundle, tmp_path_factory):
    """The update bundle and a publish folder holding catalog version 2 (every item plus NEW-1)."""
    out = tmp_path_factory.mktemp("serve-sync") / "cdn"
    publish_records(sync_bundle["bundle"], out, [*sync_bundle["records"], sync_bundle["new_item"]], sync_bundle["key"])
    return dict(bundle=sync_bundle["bundle"], pub=sync_bundle["pub"], dir=out)


@pytest.fixture()
def sock_dir():
    """A short folder for Unix sockets (a socket path must fit in 108 bytes; tmp_path may not)."""
    d = tempfile.mkdtemp(prefix="sr-", dir="/tmp")
    yield Path(d)
    shutil.rmtree(d, ignore_errors=True)


@pytest.fixture()
def served(rec, sock_dir):
    """(service, servers): the service on 127.0.0.1:<free port> and on a Unix socket."""
    service = Service(rec, board=None)
    servers = start(service, host="127.0.0.1", port=0, unix=sock_dir / "s.sock")
    yield service, servers
    servers.close()


class UnixHTTPConnection(http.client.HTTPConnection):
    def __init__(self, path: str, timeout: float = 30.0) -> None:
        super().__init__("localhost", timeout=timeout)
        self.unix_path = path

    def connect(self) -> None:
        s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        s.settimeout(self.timeout)
        s.connect(self.unix_path)
        self.sock = s


class Client:
    """One keep-alive connection; ``call`` returns (status, parsed JSON or None, headers)."""

    def __init__(self, tcp: tuple[str, int] | None = None, unix: str | None = None) -> None:
        self.conn = UnixHTTPConnection(unix) if unix else http.client.HTTPConnection(*tcp, timeout=30)

    def call(
        self,
        method: str,
        path: str,
        body: Any = None,
        *,
        raw: bytes | None = None,
        headers: dict[str, str] | None = None,
    ) -> tuple[int, Any, http.client.HTTPMessage]:
        hdrs = dict(headers or {})
        data = raw  # sent as it is, with only the headers given
        if body is not None:
            data = json.dumps(body).encode()
            hdrs.setdefault("Content-Type", "application/json")
        self.conn.request(method, path, body=data, headers=hdrs)
        r = self.conn.getresponse()
        payload = r.read()
        doc = json.loads(payload) if payload and method != "HEAD" else None
        return r.status, doc, r.headers

    def post(self, path: str, body: Any) -> tuple[int, Any]:
        status, doc, _ = self.call("POST", path, body)
        return status, doc

    def close(self) -> None:
        self.conn.close()


@pytest.fixture(params=["tcp", "unix"])
def client(request, served):
    _, servers = served
    c = Client(tcp=servers.tcp_address) if request.param == "tcp" else Client(unix=servers.unix_path)
    yield c
    c.close()


@pytest.fixture()
def tcp_client(served):
    c = Client(tcp=served[1].tcp_address)
    yield c
    c.close()


def cli_env() -> dict[str, str]:
    """The environment for a ``python -m shelfrank.cli`` child (unbuffered: its address line comes at once)."""
    return {**os.environ, "PYTHONUNBUFFERED": "1"}
