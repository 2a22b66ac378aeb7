"""Read-only access to patch stores on object storage (``s3://``) and web servers (``https://``).

Two small backends with one interface: whole objects, byte ranges and an object's tail, each
with the object's ETag so a reader that fetched a shard index notices a shard replaced under
it (ranged reads send ``If-Match``). S3 goes through boto3 (already a dependency; endpoint,
region and credentials come from the standard AWS settings: ``AWS_ENDPOINT_URL``,
``AWS_PROFILE``, ``~/.aws/config``; no credentials = unsigned requests for public buckets),
HTTP(S) through urllib3 (botocore's own HTTP layer). Both are plain Python and so fork-safe:
each process makes its own client on first use (obstore, faster per request, hangs in a child
forked after its runtime started, which is exactly what a torch DataLoader does).

``zarr_store`` wraps a backend as a read-only zarr-python store, so metadata arrays (and
any array layout the loader's fast path does not know) decode with zarr itself.
"""

from __future__ import annotations

import os
import threading
from collections.abc import AsyncIterator, Iterable
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote, urlsplit

SCHEMES = ("s3", "http", "https")


class RemoteError(OSError):
    """A remote store that cannot be read: unreachable, refused, missing bucket, changed object."""


def is_url(location: object) -> bool:
    """True for ``s3://``, ``http://`` and ``https://`` locations (strings only; Paths are local)."""
    return isinstance(location, str) and urlsplit(location).scheme in SCHEMES


@dataclass(frozen=True)
class Tail:
    """The last bytes of an object, its total size and its version tag (ETag or Last-Modified)."""

    data: bytes
    size: int
    etag: str | None


class Remote:
    """One remote store root (a URL prefix); keys are '/'-separated paths below it."""

    url: str

    def __init__(self, url: str):
        self.url = url.rstrip("/")
        self._pid: int | None = None
        self._client: Any = None
        self._lock = threading.Lock()

    def where(self, key: str) -> str:
        return f"{self.url}/{key}"

    def client(self) -> Any:
        """This process's client (made after a fork, never inherited)."""
        if self._pid != os.getpid():
            with self._lock:
                if self._pid != os.getpid():
                    self._client, self._pid = self._make_client(), os.getpid()
        return self._client

    def __getstate__(self) -> dict[str, Any]:
        return {"url": self.url}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__init__(state["url"])  # type: ignore[misc]

    def _make_client(self) -> Any:
        raise NotImplementedError

    def get(self, key: str) -> bytes | None:
        """The whole object, or None when it does not exist."""
        raise NotImplementedError

    def tail(self, key: str, n: int) -> Tail | None:
        """The last ``n`` bytes (one ranged GET), or None when the object does not exist."""
        raise NotImplementedError

    def range(self, key: str, start: int, length: int, etag: str | None = None) -> bytes:
        """``length`` bytes from ``start``; with ``etag``, refuse an object that changed since."""
        raise NotImplementedError


class S3Remote(Remote):
    """``s3://bucket/prefix`` through boto3."""

    def __init__(self, url: str):
        super().__init__(url)
        parts = urlsplit(self.url)
        self.bucket, self.prefix = parts.netloc, parts.path.strip("/")
        if not self.bucket:
            raise RemoteError(f"{url}: no bucket in the S3 URL; expected s3://BUCKET/PREFIX")

    def _make_client(self) -> Any:
        import boto3
        from botocore import UNSIGNED
        from botocore.config import Config

        session = boto3.Session()  # AWS_PROFILE, AWS_ENDPOINT_URL, ~/.aws/config, credentials chain
        signed = session.get_credentials() is not None
        config = Config(max_pool_connections=32, **({} if signed else {"signature_version": UNSIGNED}))
        return session.client("s3", config=config)

    def _key(self, key: str) -> str:
        return f"{self.prefix}/{key}" if self.prefix else key

    def _call(self, key: str, **kw: Any) -> dict[str, Any] | None:
        from botocore.exceptions import BotoCoreError, ClientError

        try:
            return self.client().get_object(Bucket=self.bucket, Key=self._key(key), **kw)
        except ClientError as exc:
            code = str(exc.response.get("Error", {}).get("Code", ""))
            status = exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode")
            if code in ("NoSuchKey", "404") or (status == 404 and code != "NoSuchBucket"):
                return None
            if code in ("PreconditionFailed", "412"):
                raise RemoteError(f"{self.where(key)}: the object changed while being read (ETag no longer "
                                  f"matches); reopen the dataset") from None  # fmt: skip
            raise s3_error(exc, self.where(key), self.bucket, "read") from None
        except BotoCoreError as exc:
            raise s3_error(exc, self.where(key), self.bucket, "read") from None

    def get(self, key: str) -> bytes | None:
        r = self._call(key)
        return None if r is None else r["Body"].read()

    def tail(self, key: str, n: int) -> Tail | None:
        r = self._call(key, Range=f"bytes=-{n}")
        if r is None:
            return None
        return Tail(r["Body"].read(), _total_size(r.get("ContentRange"), self.where(key)), r.get("ETag"))

    def range(self, key: str, start: int, length: int, etag: str | None = None) -> bytes:
        kw = {"IfMatch": etag} if etag else {}
        r = self._call(key, Range=f"bytes={start}-{start + length - 1}", **kw)
        if r is None:
            raise RemoteError(f"{self.where(key)}: object disappeared while being read")
        return r["Body"].read()


class HTTPRemote(Remote):
    """``https://host/path`` (or ``http://`` on loopback) through urllib3, with retries on 5xx."""

    def _make_client(self) -> Any:
        import urllib3

        retry = urllib3.Retry(total=5, backoff_factor=0.2, status_forcelist=(429, 500, 502, 503, 504),
                              allowed_methods=("GET",))  # fmt: skip
        return urllib3.PoolManager(num_pools=8, maxsize=32, retries=retry, timeout=urllib3.Timeout(30))

    def _request(self, key: str, headers: dict[str, str]):
        import urllib3

        url = self.where(quote(key))
        try:
            return self.client().request("GET", url, headers=headers, preload_content=True)
        except urllib3.exceptions.HTTPError as exc:
            raise RemoteError(f"{url}: cannot read ({exc})") from None

    def _check(self, key: str, r, ranged: bool) -> bool:
        if r.status == 404:
            return False
        if r.status == 412:
            raise RemoteError(f"{self.where(key)}: the object changed while being read; reopen the dataset")
        if ranged and r.status == 200:
            raise RemoteError(f"{self.where(key)}: the server ignores Range requests (answered 200, not 206); "
                              "serve the store from a server that supports byte ranges")  # fmt: skip
        if r.status not in (200, 206):
            raise RemoteError(f"{self.where(key)}: HTTP {r.status} {r.reason}")
        return True

    @staticmethod
    def _tag(r) -> str | None:
        return r.headers.get("ETag") or r.headers.get("Last-Modified")

    def get(self, key: str) -> bytes | None:
        r = self._request(key, {})
        return r.data if self._check(key, r, ranged=False) else None

    def tail(self, key: str, n: int) -> Tail | None:
        r = self._request(key, {"Range": f"bytes=-{n}"})
        if not self._check(key, r, ranged=True):
            return None
        return Tail(r.data, _total_size(r.headers.get("Content-Range"), self.where(key)), self._tag(r))

    def range(self, key: str, start: int, length: int, etag: str | None = None) -> bytes:
        headers = {"Range": f"bytes={start}-{start + length - 1}"}
        if etag and not etag.startswith(("W/",)) and '"' in etag:
            headers["If-Match"] = etag
        r = self._request(key, headers)
        if not self._check(key, r, ranged=True):
            raise RemoteError(f"{self.where(key)}: object disappeared while being read")
        if etag and self._tag(r) != etag:
            raise RemoteError(f"{self.where(key)}: the object changed while being read; reopen the dataset")
        return r.data


def s3_error(exc: Exception, where: str, bucket: str, action: str) -> RemoteError:
    """One clear line for a failed S3 request: a missing bucket and a refusal named as such."""
    from botocore.exceptions import ClientError

    if not isinstance(exc, ClientError):
        return RemoteError(f"{where}: cannot reach S3 ({exc})")
    err = exc.response.get("Error", {})
    code = str(err.get("Code", "")) or str(exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode"))
    if code == "NoSuchBucket":
        return RemoteError(f"{where}: bucket {bucket!r} does not exist (NoSuchBucket); create it or fix --data")
    if code in ("AccessDenied", "403", "Forbidden", "AllAccessDisabled", "InvalidAccessKeyId", "SignatureDoesNotMatch"):
        hint = "; the bucket policy or the credentials do not allow writes" if action != "read" else ""
        return RemoteError(f"{where}: S3 refused the {action} ({code}: {err.get('Message', '')}){hint}")
    return RemoteError(f"{where}: S3 refused the {action} ({code}: {err.get('Message', '')})")


def _total_size(content_range: str | None, where: str) -> int:
    """Object size from a ``Content-Range: bytes a-b/SIZE`` header."""
    try:
        return int(str(content_range).rsplit("/", 1)[1])
    except (IndexError, ValueError):
        raise RemoteError(f"{where}: ranged GET without a usable Content-Range ({content_range!r})") from None


def open_remote(url: str) -> Remote:
    """The backend for ``url`` (s3://, https:// or http://)."""
    scheme = urlsplit(url).scheme
    if scheme == "s3":
        return S3Remote(url)
    if scheme in ("http", "https"):
        return HTTPRemote(url)
    raise RemoteError(f"{url}: unsupported scheme {scheme!r}; expected one of {SCHEMES}")


def zarr_store(remote: Remote):  # -> zarr.abc.store.Store
    """A read-only zarr-python store over ``remote`` (the class is built on first use, so importing
    this module does not import zarr)."""
    return _zarr_store_class()(remote)


_STORE_CLASS: type | None = None


def _zarr_store_class() -> type:
    global _STORE_CLASS
    if _STORE_CLASS is not None:
        return _STORE_CLASS
    from zarr.abc.store import OffsetByteRequest, RangeByteRequest, Store, SuffixByteRequest

    class _Store(Store):
        supports_writes = False
        supports_deletes = False
        supports_partial_writes = False
        supports_listing = False

        def __init__(self, remote: Remote):
            super().__init__(read_only=True)
            self.remote = remote

        def __eq__(self, other: object) -> bool:
            return isinstance(other, _Store) and other.remote.url == self.remote.url

        def __repr__(self) -> str:
            return f"zarr_store({self.remote.url!r})"

        def _get(self, key: str, byte_range: Any) -> bytes | None:
            if byte_range is None:
                return self.remote.get(key)
            if isinstance(byte_range, SuffixByteRequest):
                t = self.remote.tail(key, byte_range.suffix)
                return None if t is None else t.data
            if isinstance(byte_range, RangeByteRequest):
                return self.remote.range(key, byte_range.start, byte_range.end - byte_range.start)
            if isinstance(byte_range, OffsetByteRequest):
                data = self.remote.get(key)
                return None if data is None else data[byte_range.offset :]
            raise TypeError(f"unknown byte range {byte_range!r}")

        async def get(self, key: str, prototype: Any = None, byte_range: Any = None):
            import asyncio

            from zarr.core.buffer import default_buffer_prototype

            data = await asyncio.to_thread(self._get, key, byte_range)
            return None if data is None else (prototype or default_buffer_prototype()).buffer.from_bytes(data)

        async def get_partial_values(self, prototype: Any, key_ranges: Iterable[tuple[str, Any]]):
            import asyncio

            return list(await asyncio.gather(*(self.get(k, prototype, r) for k, r in key_ranges)))

        async def exists(self, key: str) -> bool:
            return (await self.get(key)) is not None

        async def set(self, key: str, value: Any) -> None:
            raise PermissionError(f"{self.remote.url}: read-only store")

        async def delete(self, key: str) -> None:
            raise PermissionError(f"{self.remote.url}: read-only store")

        def _no_listing(self) -> AsyncIterator[str]:
            raise NotImplementedError(f"{self.remote.url}: listing is not supported; open arrays by name")

        def list(self) -> AsyncIterator[str]:
            return self._no_listing()

        def list_prefix(self, prefix: str) -> AsyncIterator[str]:
            return self._no_listing()

        def list_dir(self, prefix: str) -> AsyncIterator[str]:
            return self._no_listing()

    _STORE_CLASS = _Store
    return _Store
