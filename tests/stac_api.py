"""A tiny STAC API on 127.0.0.1 for tests: item search with paging, served from items held in memory.

Endpoints: ``/`` (landing page, conformsTo core + item-search + collections), ``/conformance``,
``/collections``, ``/collections/NAME``, ``/collections/NAME/items/ID``, ``/search`` (GET query
string or POST JSON: ``bbox``, ``datetime`` (instant or ``START/END``, ``..`` open), ``collections``,
``ids``, ``limit``, ``token``), and ``/files/...`` (a directory: the assets). Pages hold at most
``page_size`` items; the ``next`` link is a GET href with ``token`` or, for POST, a body to merge
(as STAC API servers such as stac-fastapi do). ``{base}`` in an asset href becomes the server URL.
Every request is recorded as (method, path, body) in ``requests``.
"""

from __future__ import annotations

import contextlib
import copy
import http.server
import json
import threading
import urllib.parse
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pipeline.provenance import parse_datetime

CONFORMS = ["https://api.stacspec.org/v1.0.0/core", "https://api.stacspec.org/v1.0.0/item-search",
            "https://api.stacspec.org/v1.0.0/collections", "http://www.opengis.net/spec/ogcapi-features-1/1.0/conf/core"]


@dataclass
class StacApi:
    url: str
    items: list[dict[str, Any]]
    requests: list[tuple[str, str, dict[str, Any] | None]] = field(default_factory=list)

    def searches(self) -> list[tuple[str, str, dict[str, Any] | None]]:
        return [r for r in self.requests if r[1].startswith("/search")]


def _interval(value: str | None):
    if not value:
        return None, None
    a, sep, b = value.partition("/")
    if not sep:
        t = parse_datetime(a)
        return t, t
    return (parse_datetime(a) if a not in ("", "..") else None), (parse_datetime(b) if b not in ("", "..") else None)


def _matches(item: dict[str, Any], q: dict[str, Any]) -> bool:
    if q.get("collections") and item.get("collection") not in q["collections"]:
        return False
    if q.get("ids") and item["id"] not in q["ids"]:
        return False
    if q.get("bbox"):
        w, s, e, n = (float(v) for v in q["bbox"])
        iw, is_, ie, in_ = item["bbox"]
        if ie < w or iw > e or in_ < s or is_ > n:
            return False
    lo, hi = _interval(q.get("datetime"))
    p = item["properties"]
    start = parse_datetime(p.get("start_datetime") or p.get("datetime"))
    end = parse_datetime(p.get("end_datetime") or p.get("datetime"))
    return not (lo and end < lo or hi and start > hi)


def _query_from_get(qs: str) -> dict[str, Any]:
    raw = dict(urllib.parse.parse_qsl(qs))
    q: dict[str, Any] = {}
    for k in ("bbox", "collections", "ids"):
        if raw.get(k):
            q[k] = raw[k].split(",")
    for k in ("datetime", "token"):
        if raw.get(k):
            q[k] = raw[k]
    if raw.get("limit"):
        q["limit"] = int(raw["limit"])
    return q


class _Handler(http.server.SimpleHTTPRequestHandler):
    api: StacApi
    page_size: int = 10
    methods: tuple[str, ...] = ("GET", "POST")

    def log_message(self, format: str, *args: object) -> None:
        pass

    @property
    def base(self) -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}"

    def _json(self, obj: Any, status: int = 200) -> None:
        body = json.dumps(obj).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def _item(self, item: dict[str, Any]) -> dict[str, Any]:
        it = copy.deepcopy(item)
        for a in it["assets"].values():
            a["href"] = a["href"].replace("{base}", self.base)
        it["links"] = [{"rel": "self", "href": f"{self.base}/collections/{it.get('collection')}/items/{it['id']}"},
                       {"rel": "root", "href": f"{self.base}/"}]
        return it

    def _search(self, q: dict[str, Any], method: str) -> None:
        hits = [it for it in self.api.items if _matches(it, q)]
        limit = min(int(q.get("limit") or 10), self.page_size)
        start = int(q.get("token") or 0)
        page = hits[start:start + limit]
        links = []
        if start + limit < len(hits):
            if method == "GET":
                params = {k: ",".join(v) if isinstance(v, list) else v for k, v in q.items() if k != "token"}
                params["token"] = str(start + limit)
                links.append({"rel": "next", "type": "application/geo+json", "method": "GET",
                              "href": f"{self.base}/search?{urllib.parse.urlencode(params)}"})
            else:
                links.append({"rel": "next", "type": "application/geo+json", "method": "POST",
                              "href": f"{self.base}/search", "body": {"token": str(start + limit)}, "merge": True})
        self._json({"type": "FeatureCollection", "features": [self._item(it) for it in page], "links": links,
                    "numberMatched": len(hits), "numberReturned": len(page)})

    def do_GET(self) -> None:
        path, _, qs = self.path.partition("?")
        self.api.requests.append(("GET", self.path, None))
        cols = sorted({it.get("collection") for it in self.api.items if it.get("collection")})
        if path in ("", "/"):
            links = [{"rel": "self", "href": f"{self.base}/"}, {"rel": "root", "href": f"{self.base}/"},
                     {"rel": "conformance", "href": f"{self.base}/conformance"},
                     {"rel": "data", "href": f"{self.base}/collections"}]
            links += [{"rel": "search", "href": f"{self.base}/search", "method": m, "type": "application/geo+json"}
                      for m in self.methods]
            return self._json({"type": "Catalog", "stac_version": "1.0.0", "id": "test-api",
                               "description": "loopback STAC API", "conformsTo": CONFORMS, "links": links})
        if path == "/conformance":
            return self._json({"conformsTo": CONFORMS})
        if path == "/collections":
            return self._json({"collections": [self._collection(c) for c in cols], "links": []})
        parts = path.strip("/").split("/")
        if parts[0] == "collections" and len(parts) == 2 and parts[1] in cols:
            return self._json(self._collection(parts[1]))
        if parts[0] == "collections" and len(parts) == 4 and parts[2] == "items":
            for it in self.api.items:
                if it.get("collection") == parts[1] and it["id"] == parts[3]:
                    return self._json(self._item(it))
            return self._json({"code": "NotFound", "description": f"no item {parts[3]}"}, 404)
        if path == "/search":
            if "GET" not in self.methods:
                return self._json({"code": "MethodNotAllowed"}, 405)
            return self._search(_query_from_get(qs), "GET")
        if path.startswith("/files/"):
            self.path = "/" + path.removeprefix("/files/")
            return super().do_GET()
        return self._json({"code": "NotFound", "description": path}, 404)

    def do_POST(self) -> None:
        n = int(self.headers.get("Content-Length") or 0)
        body = json.loads(self.rfile.read(n) or b"{}")
        self.api.requests.append(("POST", self.path, body))
        if self.path.split("?")[0] != "/search" or "POST" not in self.methods:
            return self._json({"code": "NotFound"}, 404)
        q = dict(body)
        if isinstance(q.get("bbox"), list):
            q["bbox"] = [float(v) for v in q["bbox"]]
        return self._search(q, "POST")

    def _collection(self, name: str) -> dict[str, Any]:
        return {"type": "Collection", "stac_version": "1.0.0", "id": name, "description": name, "license": "CC-BY-4.0",
                "extent": {"spatial": {"bbox": [[-180, -90, 180, 90]]}, "temporal": {"interval": [[None, None]]}},
                "links": [{"rel": "self", "href": f"{self.base}/collections/{name}"}]}


@contextlib.contextmanager
def serve_stac_api(items: list[dict[str, Any]], files: str | Path, page_size: int = 10,
                   methods: tuple[str, ...] = ("GET", "POST")) -> Iterator[StacApi]:
    """Serve ``items`` as a STAC API (assets from ``files`` under /files/) on 127.0.0.1."""
    api = StacApi("", items)
    handler = type("H", (_Handler,), {"api": api, "page_size": int(page_size), "methods": tuple(methods)})
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0),
                                             lambda *a: handler(*a, directory=str(files)))
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, daemon=True).start()
    api.url = f"http://127.0.0.1:{server.server_address[1]}/"
    try:
        yield api
    finally:
        server.shutdown()
        server.server_close()
