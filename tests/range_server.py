"""A loopback static file server with what object stores and CDNs give: single byte ranges
(``bytes=a-b``, ``bytes=a-``, ``bytes=-n`` -> 206 + Content-Range), a strong ETag and If-Match (412).

``serve_ranges(directory, requests=list)`` yields the base URL; every GET is appended to
``requests`` as (path, Range header or None), so a test can count what a client really read.
"""

from __future__ import annotations

import contextlib
import email.utils
import functools
import http.server
import os
import re
import ssl
import time
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import unquote, urlsplit

from servers import running  # tests/ is on sys.path (pytest, benchmarks)

_RANGE = re.compile(r"bytes=(\d*)-(\d*)$")


class _RangeHandler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive, as real servers
    disable_nagle_algorithm = True  # else headers and body in two sends meet delayed ACKs (40 ms a request)
    root: Path
    requests: list | None = None
    latency_s: float = 0.0

    def log_message(self, format: str, *args: object) -> None:
        pass

    def _send(self, status: int, body: bytes = b"", headers: dict[str, str] | None = None) -> None:
        self.send_response(status)
        for k, v in (headers or {}).items():
            self.send_header(k, v)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    def do_HEAD(self) -> None:
        self.do_GET()

    def do_GET(self) -> None:
        rng = self.headers.get("Range")
        if self.latency_s:
            time.sleep(self.latency_s)  # a remote bucket's round trip
        if self.requests is not None and self.command == "GET":
            self.requests.append((self.path, rng))
        rel = unquote(urlsplit(self.path).path).lstrip("/")
        path = (self.root / rel).resolve()
        if self.root not in path.parents or not path.is_file():
            return self._send(404, b"not found")
        st = path.stat()
        etag = f'"{st.st_size:x}-{st.st_mtime_ns:x}"'
        common = {"ETag": etag, "Last-Modified": email.utils.formatdate(st.st_mtime, usegmt=True),
                  "Accept-Ranges": "bytes"}  # fmt: skip
        if self.headers.get("If-Match") not in (None, "*", etag):
            return self._send(412, b"precondition failed", common)
        size = st.st_size
        if rng is None:
            return self._send(200, path.read_bytes(), common)
        m = _RANGE.match(rng.strip())
        if not m or (m[1] == "" and m[2] == ""):
            return self._send(416, b"bad range", {**common, "Content-Range": f"bytes */{size}"})
        if m[1] == "":
            start, end = max(size - int(m[2]), 0), size - 1
        else:
            start, end = int(m[1]), min(int(m[2]) if m[2] else size - 1, size - 1)
        if start >= size or start > end:
            return self._send(416, b"bad range", {**common, "Content-Range": f"bytes */{size}"})
        with open(path, "rb") as f:
            body = os.pread(f.fileno(), end - start + 1, start)
        self._send(206, body, {**common, "Content-Range": f"bytes {start}-{end}/{size}"})


class _Server(http.server.ThreadingHTTPServer):
    request_queue_size = 128
    daemon_threads = True


@contextlib.contextmanager
def serve_ranges(directory: str | Path, requests: list | None = None, tls: ssl.SSLContext | None = None,
                 latency_s: float = 0.0) -> Iterator[str]:
    """Serve ``directory`` with Range support on 127.0.0.1 (HTTPS with the ``tls`` server context,
    ``latency_s`` slept before each answer); yields the base URL (no trailing slash)."""
    handler = type("H", (_RangeHandler,), {"root": Path(directory).resolve(), "requests": requests,
                                           "latency_s": float(latency_s)})
    server = _Server(("127.0.0.1", 0), functools.partial(handler))
    if tls is not None:
        server.socket = tls.wrap_socket(server.socket, server_side=True)
    with running(server, "https" if tls else "http") as url:
        yield url
