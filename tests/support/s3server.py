"""S3 for tests: moto's standalone server over HTTP on 127.0.0.1, and a proxy that injects faults.

`s3_server` (session) starts one ThreadedMotoServer on a free port and stops it at the end; `s3_bucket`
makes a fresh bucket per test. `s3_tls_server` (session) is a second listener of the same moto (the same buckets)
over HTTPS with a self-signed certificate made for the run, for pgBackRest, whose S3 client speaks TLS only
(`start_tls_s3` starts one; the benchmarks use it too). `FaultProxy` forwards every request to an upstream S3 endpoint except those
its rule rejects (answered 500), or answers 500 to everything without an upstream. Test modules import
these fixtures: `from tests.support.s3server import s3_server, s3_bucket  # noqa: F401`.
"""

from __future__ import annotations

import contextlib
import http.client
import itertools
import json
import logging
import os
import shutil
import subprocess
import tempfile
import threading
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

ACCESS_KEY = "testing-access-key"
SECRET_KEY = "testing-secret-key"
REGION = "us-east-1"


@dataclass
class S3Endpoint:
    url: str
    port: int

    def client(self, **kwargs: Any) -> Any:
        import boto3

        return boto3.client("s3", endpoint_url=self.url, region_name=REGION, aws_access_key_id=ACCESS_KEY,
                            aws_secret_access_key=SECRET_KEY, **kwargs)

    def set_auth(self, enforced: bool) -> None:
        """moto checks credentials against its IAM only when told to (process-wide in moto)."""
        count = "0" if enforced else "inf"
        req = urllib.request.Request(f"{self.url}/moto-api/reset-auth", data=count.encode(), method="POST",
                                     headers={"Content-Type": "text/plain"})
        with urllib.request.urlopen(req, timeout=10) as resp:
            json.loads(resp.read())


def credentials_env() -> dict[str, str]:
    return {"AWS_ACCESS_KEY_ID": ACCESS_KEY, "AWS_SECRET_ACCESS_KEY": SECRET_KEY, "AWS_DEFAULT_REGION": REGION,
            "AWS_EC2_METADATA_DISABLED": "true", "AWS_CONFIG_FILE": "/dev/null",
            "AWS_SHARED_CREDENTIALS_FILE": "/dev/null"}


@pytest.fixture(scope="session")
def s3_server() -> Iterator[S3Endpoint]:
    from moto.server import ThreadedMotoServer

    logging.getLogger("werkzeug").setLevel(logging.ERROR)
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    try:
        host, port = server.get_host_and_port()
        yield S3Endpoint(url=f"http://{host}:{port}", port=port)
    finally:
        server.stop()


def start_tls_s3(base: Path) -> tuple[Any, str, Path]:
    """A second listener of the same moto (the same buckets: moto's state is per process) over HTTPS, with a
    self-signed certificate for localhost and 127.0.0.1 made here (base/tls/s3.crt, readable by everyone: the
    server's user verifies with it): pgBackRest's S3 client speaks TLS only. Returns the server (stop() it), its
    URL and the certificate. pgBackRest checks the DNS name only: reach it as localhost, with the certificate as
    repo1-storage-ca-file (or repo1-storage-verify-tls=n; docs/pgbackrest.md)."""
    from moto.moto_server.threaded_moto_server import ThreadedMotoServer
    from moto.moto_server.werkzeug_app import (
        DomainDispatcherApplication,
        MotoRequestHandler,
        create_backend_app,
    )
    from werkzeug.serving import make_server

    cert, key = base / "tls" / "s3.crt", base / "tls" / "s3.key"
    cert.parent.mkdir(parents=True)
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", str(key), "-out",
                    str(cert), "-days", "2", "-subj", "/CN=localhost", "-addext",
                    "subjectAltName=DNS:localhost,IP:127.0.0.1"], check=True, capture_output=True)
    os.chmod(cert.parent, 0o755)
    os.chmod(cert, 0o644)

    class TlsMotoServer(ThreadedMotoServer):
        def _server_entry(self) -> None:
            app = DomainDispatcherApplication(create_backend_app)
            server = make_server(self._ip_address, self._port, app, True, request_handler=MotoRequestHandler,
                                 ssl_context=(str(cert), str(key)))
            plain_shutdown = server.shutdown_request

            def shutdown_request(request: Any) -> None:  # TLS's close_notify first: pgBackRest insists on it
                with contextlib.suppress(OSError, ValueError):
                    request.unwrap()
                plain_shutdown(request)

            server.shutdown_request = shutdown_request  # type: ignore[method-assign]
            self._server = server
            self._server_ready_event.set()
            self._server.serve_forever()

    server = TlsMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    return server, f"https://{host}:{port}", cert


@dataclass
class TlsEndpoint:
    """The HTTPS listener: `url` (https://127.0.0.1:PORT), `port`, and `cert`, its self-signed certificate."""

    url: str
    port: int
    cert: Path


@pytest.fixture(scope="session")
def s3_tls_server(s3_server: S3Endpoint) -> Iterator[TlsEndpoint]:
    base = Path(tempfile.mkdtemp(prefix="runbook-s3-tls-"))
    os.chmod(base, 0o755)
    logging.getLogger("werkzeug").setLevel(logging.ERROR)
    server, url, cert = start_tls_s3(base)
    try:
        yield TlsEndpoint(url=url, port=int(url.rsplit(":", 1)[1]), cert=cert)
    finally:
        server.stop()
        shutil.rmtree(base, ignore_errors=True)


_buckets = itertools.count(1)


@pytest.fixture
def s3_bucket(s3_server: S3Endpoint, monkeypatch: pytest.MonkeyPatch) -> str:
    for k, v in credentials_env().items():
        monkeypatch.setenv(k, v)
    name = f"backups-{next(_buckets)}"
    s3_server.client().create_bucket(Bucket=name)
    return name


class FaultProxy:
    """An HTTP server on 127.0.0.1 that forwards to `upstream` (host, port), or fails.

    `fail(method, path)` True: the request is answered `500 InternalError` (an S3 error document) and
    never reaches the upstream. Without an upstream every request fails. `drop_headers` are removed from
    forwarded requests (a store that ignores conditional writes: `If-None-Match`). `seen` records
    (method, path, status). `hold(method, path)` may return an Event: the request waits for it before it is
    forwarded (to order two clients' requests: a race made to happen).
    """

    def __init__(self, upstream: tuple[str, int] | None, fail: Callable[[str, str], bool] = lambda m, p: True,
                 drop_headers: tuple[str, ...] = (),
                 hold: Callable[[str, str], threading.Event | None] = lambda m, p: None) -> None:
        self.upstream = upstream
        self.fail = fail
        self.hold = hold
        self.drop = {"expect", "connection", *(h.lower() for h in drop_headers)}
        self.seen: list[tuple[str, str, int]] = []
        proxy = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, format: str, *args: Any) -> None:
                pass

            def _handle(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(length) if length else b""
                if proxy.upstream is None or proxy.fail(self.command, self.path):
                    doc = (b'<?xml version="1.0" encoding="UTF-8"?><Error><Code>InternalError</Code>'
                           b"<Message>injected fault</Message></Error>")
                    proxy.seen.append((self.command, self.path, 500))
                    self.send_response(500)
                    self.send_header("Content-Type", "application/xml")
                    self.send_header("Content-Length", str(len(doc)))
                    self.end_headers()
                    if self.command != "HEAD":
                        self.wfile.write(doc)
                    return
                gate = proxy.hold(self.command, self.path)
                if gate is not None:
                    gate.wait(60)
                conn = http.client.HTTPConnection(*proxy.upstream, timeout=30)
                headers = {k: v for k, v in self.headers.items() if k.lower() not in proxy.drop}
                conn.request(self.command, self.path, body=body, headers=headers)
                resp = conn.getresponse()
                data = resp.read()
                proxy.seen.append((self.command, self.path, resp.status))
                self.send_response(resp.status)
                for k, v in resp.getheaders():
                    if k.lower() not in ("transfer-encoding", "connection", "content-length", "server", "date"):
                        self.send_header(k, v)
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                if self.command != "HEAD":
                    self.wfile.write(data)
                conn.close()

            do_GET = do_PUT = do_POST = do_DELETE = do_HEAD = _handle

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.port = self.server.server_address[1]
        self.url = f"http://127.0.0.1:{self.port}"
        self._thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def __enter__(self) -> FaultProxy:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.shutdown()
        self.server.server_close()
        self._thread.join(timeout=10)
