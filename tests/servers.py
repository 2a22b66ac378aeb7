"""Loopback servers for tests: a moto S3 server and an HTTP file server, both on 127.0.0.1 only.

Use the context managers directly, or import the pytest fixtures into a test module::

    from servers import http_dir, s3_server  # noqa: F401  (tests/ is on sys.path under pytest)

``s3_server`` yields an :class:`S3Server`; ``publish(directory, bucket)`` uploads a folder with
dummy credentials and public-read ACLs (ACLs, not a bucket policy: moto answers anonymous HEAD
with 403 under a policy, which trips GDAL), so the pipeline can read it anonymously.
"""

from __future__ import annotations

import contextlib
import functools
import http.server
import logging
import socket
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest


@contextlib.contextmanager
def refused_port() -> Iterator[int]:
    """A loopback port that refuses connections at once, for as long as the block runs.

    The socket stays bound but never listens, so no server started meanwhile (another test,
    another process) can take the port: probing a free port and closing it would race with them.
    """
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        yield int(s.getsockname()[1])


@pytest.fixture
def dead_port() -> Iterator[int]:
    """A loopback port that refuses connections for the whole test (see ``refused_port``)."""
    with refused_port() as port:
        yield port


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class _Handler(http.server.SimpleHTTPRequestHandler):
    """Serves a directory; paths in ``truncate`` get an honest Content-Length but half the body.

    ``latency_s`` is slept before each answer (a remote bucket's round trip); ``requests``, if a
    list, gets every requested path (to count what a client really read).
    """

    truncate: frozenset[str] = frozenset()
    latency_s: float = 0.0
    requests: list[str] | None = None

    def log_message(self, format: str, *args: object) -> None:
        pass

    def do_GET(self) -> None:
        if self.requests is not None:
            self.requests.append(self.path)  # list.append is atomic: safe across handler threads
        if self.latency_s:
            time.sleep(self.latency_s)
        if self.path.split("?", 1)[0].lstrip("/") in self.truncate:
            body = Path(self.translate_path(self.path)).read_bytes()
            self.send_response(200)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body[: len(body) // 2])
            self.wfile.flush()
            self.close_connection = True
            return
        super().do_GET()


class _Server(http.server.ThreadingHTTPServer):
    request_queue_size = 128  # the default 5 drops concurrent connects (1 s SYN retry) under a parallel client


@contextlib.contextmanager
def serve_directory(directory: str | Path, truncate: tuple[str, ...] = (), latency_s: float = 0.0,
                    requests: list[str] | None = None) -> Iterator[str]:
    """Serve ``directory`` over HTTP on 127.0.0.1; yields the base URL (no trailing slash)."""
    handler = type("H", (_Handler,), {"truncate": frozenset(truncate), "latency_s": float(latency_s),
                                      "requests": requests})
    server = _Server(("127.0.0.1", 0), functools.partial(handler, directory=str(directory)))
    server.daemon_threads = True
    with running(server) as url:
        yield url


@contextlib.contextmanager
def running(server: http.server.HTTPServer, scheme: str = "http") -> Iterator[str]:
    """Serve ``server`` (bound to 127.0.0.1) on a daemon thread; yields its base URL; shuts it down after."""
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"{scheme}://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()


@dataclass
class S3Server:
    endpoint: str

    def client(self):  # -> boto3 S3 client with dummy credentials (writer side only)
        import boto3

        return boto3.client(
            "s3",
            endpoint_url=self.endpoint,
            region_name="us-west-2",
            aws_access_key_id="testing",
            aws_secret_access_key="testing",
        )

    def publish(self, directory: str | Path, bucket: str, prefix: str = "", commit: bool = False) -> str:
        """Upload every file under ``directory`` as public-read; returns 's3://bucket/prefix'.

        ``commit``: then write the prefix's sareo manifest (``pipeline.storage``), as a pipeline
        write does, so an ``s3://`` reader accepts it as a patch store."""
        c = self.client()
        existing = {b["Name"] for b in c.list_buckets().get("Buckets", [])}
        if bucket not in existing:
            c.create_bucket(Bucket=bucket, CreateBucketConfiguration={"LocationConstraint": "us-west-2"})
        root = Path(directory)
        for p in sorted(root.rglob("*")):
            if p.is_file():
                key = f"{prefix.strip('/')}/{p.relative_to(root).as_posix()}".lstrip("/")
                c.put_object(Bucket=bucket, Key=key, Body=p.read_bytes(), ACL="public-read")
        if commit:
            from pipeline.atomic import dumps_json
            from pipeline.storage import MANIFEST, manifest

            base = f"{prefix.strip('/')}/".lstrip("/")
            listing = {o["Key"][len(base):]: (int(o["Size"]), str(o["ETag"]))
                       for page in c.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=base)
                       for o in page.get("Contents", [])}
            c.put_object(Bucket=bucket, Key=f"{base}{MANIFEST}", Body=dumps_json(manifest(listing)).encode(),
                         ACL="public-read")
        return f"s3://{bucket}/{prefix.strip('/')}".rstrip("/")


@contextlib.contextmanager
def moto_s3() -> Iterator[S3Server]:
    """A moto S3 server in a thread on 127.0.0.1."""
    from moto.server import ThreadedMotoServer

    logging.getLogger("werkzeug").setLevel(logging.WARNING)  # one INFO line per request otherwise
    port = free_port()
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    try:
        yield S3Server(f"http://127.0.0.1:{port}")
    finally:
        server.stop()


@pytest.fixture(scope="session")
def s3_server() -> Iterator[S3Server]:
    with moto_s3() as s:
        yield s


@pytest.fixture
def http_dir() -> Iterator[Callable[..., str]]:
    """A factory: ``http_dir(path, truncate=(), latency_s=0, requests=None)`` serves ``path``; returns its URL."""
    with contextlib.ExitStack() as stack:
        yield lambda directory, truncate=(), latency_s=0.0, requests=None: stack.enter_context(
            serve_directory(directory, tuple(truncate), latency_s, requests))


# --------------------------------------------------------------------------- fault injection

SLOWDOWN = (b'<?xml version="1.0" encoding="UTF-8"?>\n<Error><Code>SlowDown</Code>'
            b'<Message>Please reduce your request rate.</Message></Error>')
FAULTS = ("500", "503", "slowdown", "reset", "cut", "cut-nolength", "latency")


@dataclass
class Fault:
    """``kind`` for the next ``times`` requests whose path contains ``match``."""

    kind: str
    match: str
    times: int
    latency_s: float = 0.0


class FaultProxy:
    """A loopback HTTP proxy in front of ``upstream`` (an HTTP file server or the moto S3 server).

    It answers GET/HEAD from the upstream's bytes itself, with Range support (``ranges``) and
    Content-Length (``lengths``) as a real server would, and injects a bounded number of faults:
    500, 503, S3 SlowDown, a connection reset before the answer, a body cut short with or
    without Content-Length, or latency. ``served`` lists (path, fault or "ok") per request.
    """

    def __init__(self, upstream: str, ranges: bool = True, lengths: bool = True) -> None:
        self.upstream, self.ranges, self.lengths = upstream.rstrip("/"), ranges, lengths
        self.faults: list[Fault] = []
        self.served: list[tuple[str, str]] = []
        self._lock = threading.Lock()

    def inject(self, kind: str, match: str, times: int, latency_s: float = 0.0) -> None:
        assert kind in FAULTS, kind
        with self._lock:
            self.faults.append(Fault(kind, match, times, latency_s))

    def clear(self) -> None:
        with self._lock:
            self.faults.clear()
            self.served.clear()

    def injected(self) -> int:
        return sum(1 for _, k in self.served if k != "ok")

    def _take(self, path: str) -> Fault | None:
        with self._lock:
            for f in self.faults:
                if f.times > 0 and f.match in path:
                    f.times -= 1
                    self.served.append((path, f.kind))
                    return f
            self.served.append((path, "ok"))
            return None


class _ProxyHandler(http.server.BaseHTTPRequestHandler):
    proxy: FaultProxy

    def log_message(self, format: str, *args: object) -> None:
        pass

    def finish(self) -> None:
        with contextlib.suppress(OSError):
            super().finish()

    def _reset(self) -> None:
        """Close with RST (SO_LINGER 0): the client sees 'connection reset by peer'."""
        import struct

        self.connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        self.close_connection = True
        with contextlib.suppress(OSError):
            self.wfile.flush()
        self.connection.close()

    def _upstream(self) -> tuple[int, bytes, dict[str, str]]:
        import urllib.error
        import urllib.request

        req = urllib.request.Request(self.proxy.upstream + self.path, method="GET")
        try:
            with urllib.request.urlopen(req, timeout=30) as resp:
                return resp.status, resp.read(), dict(resp.headers)
        except urllib.error.HTTPError as exc:
            return exc.code, exc.read(), dict(exc.headers)

    def _answer(self, head: bool) -> None:
        fault = self.proxy._take(self.path)
        kind = fault.kind if fault else "ok"
        if kind == "latency":
            time.sleep(fault.latency_s if fault else 0.0)
        if kind == "reset":
            self._reset()
            return
        if kind in ("500", "503", "slowdown"):
            body = SLOWDOWN if kind == "slowdown" else f"injected {kind}".encode()
            self.send_response(503 if kind == "slowdown" else int(kind))
            self.send_header("Content-Type", "application/xml" if kind == "slowdown" else "text/plain")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)
            return
        status, body, headers = self._upstream()
        keep = {k: v for k, v in headers.items() if k.lower() in ("content-type", "etag", "last-modified")}
        rng = self.headers.get("Range")
        if status == 200 and rng and self.proxy.ranges and kind in ("ok", "latency"):
            start_s, _, end_s = rng.removeprefix("bytes=").partition("-")
            start = int(start_s)
            if start >= len(body):
                self.send_response(416)
                self.send_header("Content-Range", f"bytes */{len(body)}")
                self.send_header("Content-Length", "0")
                self.end_headers()
                return
            end = min(int(end_s), len(body) - 1) if end_s else len(body) - 1
            status, keep["Content-Range"], body = 206, f"bytes {start}-{end}/{len(body)}", body[start:end + 1]
        self.send_response(status)
        for k, v in keep.items():
            self.send_header(k, v)
        if self.proxy.ranges:
            self.send_header("Accept-Ranges", "bytes")
        if kind == "cut" or (self.proxy.lengths and kind != "cut-nolength"):
            self.send_header("Content-Length", str(len(body)))
        self.send_header("Connection", "close")
        self.close_connection = True
        self.end_headers()
        if head:
            return
        if kind in ("cut", "cut-nolength"):
            self.wfile.write(body[: len(body) // 2])
            self._reset() if kind == "cut" else self.wfile.flush()
            return
        self.wfile.write(body)

    def do_GET(self) -> None:
        self._answer(head=False)

    def do_HEAD(self) -> None:
        self._answer(head=True)


@contextlib.contextmanager
def fault_proxy(upstream: str, ranges: bool = True, lengths: bool = True) -> Iterator[tuple[str, FaultProxy]]:
    """Serve a :class:`FaultProxy` for ``upstream`` on 127.0.0.1; yields (its URL, the proxy)."""
    proxy = FaultProxy(upstream, ranges, lengths)
    handler = type("P", (_ProxyHandler,), {"proxy": proxy})
    server = _Server(("127.0.0.1", 0), handler)
    server.daemon_threads = True
    server.handle_error = lambda request, client_address: None  # injected resets are not errors
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}", proxy
    finally:
        server.shutdown()
        server.server_close()
