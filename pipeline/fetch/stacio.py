"""Transport: read bytes from local paths, file://, http(s):// and anonymous s3:// with retries.

Capella and Umbra publish *static* STAC catalogs in public S3 buckets. pystac reads local
files and plain URLs only, so :class:`SareoStacIO` plugs :class:`Transport` into pystac.
One transport does everything remote for the fetch stage (catalog JSON, assets, tiles), so
retries, timeouts, the S3 endpoint override and the error messages are the same everywhere.
Walking a catalog is :mod:`pipeline.fetch.walk`'s job; this module only moves bytes.

Href arithmetic (:func:`join_href`, :func:`is_within`, :func:`check_href`) is done here rather than with
``pystac.utils.make_absolute_href``, which silently clamps ``../`` at the bucket or file-system
root: a catalog that points outside its own root must be *refused*, not quietly re-rooted.
"""

from __future__ import annotations

import hashlib
import http.client
import json
import logging
import os
import re
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any, TypeVar

import pystac
from pystac.stac_io import DefaultStacIO

from pipeline.fetch.params import FetchParams
from pipeline.progress import Progress

log = logging.getLogger("sareo.stacio")

URL_RE = re.compile(r"^[a-zA-Z][a-zA-Z0-9+.-]*://")
T = TypeVar("T")


class FetchError(RuntimeError):
    """Anything the fetch stage cannot use; the message names the href or item and why."""


class NotFound(FetchError):
    """The resource does not exist (HTTP 404, S3 NoSuchKey, missing file): retrying will not help."""


class Unsafe(FetchError):
    """An href that escapes its catalog root or the cache directory."""


class Invalid(FetchError):
    """Bytes that arrived whole (their length confirmed) but fail their checks: retrying will not help."""


Check = Callable[[Path, str, int], None]  # (path, sha256, bytes) -> None; raises on bad content


# --------------------------------------------------------------------------- href arithmetic


def scheme(href: str) -> str:
    """'s3', 'http', 'https', 'file' or '' (a plain local path)."""
    m = URL_RE.match(href)
    return href[: m.end() - 3].lower() if m else ""


def is_remote(href: str) -> bool:
    return scheme(href) in ("s3", "http", "https")


def local_path(href: str) -> Path:
    """The file-system path of a local path or file:// href (STAC hrefs are URI references:
    percent-encoded, as Umbra's folders with spaces and commas are, so they are decoded)."""
    if scheme(href) == "file":
        return Path(urllib.request.url2pathname(urllib.parse.urlparse(href).path))
    return Path(urllib.parse.unquote(href))


def s3_key(href: str) -> tuple[str, str]:
    """(bucket, key) of an s3:// href; the key percent-decoded (an href is a URI, a key is not)."""
    u = urllib.parse.urlsplit(href)
    return u.netloc, urllib.parse.unquote(u.path.lstrip("/"))


def _normalise(path: str, href: str) -> str:
    """Collapse '.' and '..' in a '/'-separated path; raise instead of clamping at the root."""
    out: list[str] = []
    parts = path.split("/")
    for i, seg in enumerate(parts):
        if seg == "..":
            if len(out) <= 1:  # out[0] is the empty segment before the leading '/'
                raise Unsafe(f"{href}: climbs above the root of its file system, bucket or host")
            out.pop()
        elif seg == "." or (seg == "" and 0 < i < len(parts) - 1):
            continue
        else:
            out.append(seg)
    return "/".join(out) or "/"


def _split(href: str) -> tuple[str, str, str]:
    """(prefix, path, query) where prefix is 'scheme://netloc' ('' for local paths)."""
    if URL_RE.match(href):
        u = urllib.parse.urlsplit(href)
        query = f"?{u.query}" if u.query else ""
        return f"{u.scheme}://{u.netloc}", u.path or "/", query
    p = os.path.abspath(href) if not href.startswith("/") else href
    return "", p.replace(os.sep, "/"), ""


def join_href(base: str, href: str) -> str:
    """Resolve ``href`` (absolute or relative) against the document ``base`` it appears in."""
    if URL_RE.match(href) or (not URL_RE.match(base) and os.path.isabs(href)):
        prefix, path, query = _split(href)
        return prefix + _normalise(path, href) + query
    prefix, path, _ = _split(base)
    if href.startswith("/"):  # host- or bucket-absolute, as in URLs
        rel, _, query = href.partition("?")
        return prefix + _normalise(rel, href) + (f"?{query}" if query else "")
    rel, _, query = href.partition("?")
    directory = path.rsplit("/", 1)[0]
    joined = _normalise(f"{directory}/{rel}", href)
    return prefix + joined + (f"?{query}" if query else "")


def href_dir(href: str) -> str:
    """The 'directory' of a document href, with a trailing '/' (a catalog's root prefix)."""
    prefix, path, _ = _split(href)
    return prefix + _normalise(path, href).rsplit("/", 1)[0] + "/"


def _canonical(href: str) -> str:
    """file:// and plain paths compare as paths; URLs as strings."""
    return local_path(href).as_posix() if scheme(href) in ("file", "") else href


def is_within(href: str, root_dir: str) -> bool:
    """True if the resolved ``href`` lies under ``root_dir`` (as made by :func:`href_dir`)."""
    return _canonical(href).startswith(_canonical(root_dir).rstrip("/") + "/")


def check_href(raw: str, base: str, root_dir: str) -> str:
    """Resolve ``raw`` against ``base``.

    Refuses relative hrefs that leave ``root_dir``, local files outside it (absolute paths and
    file:// too: a catalog must not make the pipeline read any file it likes) and local files
    named by remote catalogs. Absolute URLs may point at other hosts or buckets.
    """
    resolved = join_href(base, raw)
    if is_remote(base) and not is_remote(resolved):
        raise Unsafe(f"{raw!r} in {base}: a remote catalog may not point at local file {resolved}")
    relative = scheme(raw) == "" and (not raw.startswith("/") or is_remote(base))  # '/x' is relative in a URL
    if (relative or not is_remote(resolved)) and not is_within(resolved, root_dir):
        raise Unsafe(f"{raw!r} in {base}: resolves to {resolved}, outside the catalog root {root_dir}"
                     " (a mirror whose data lies beside the catalog folder: set sar.catalog_root / eo.catalog_root)")
    return resolved


def trust_root(catalog: str, root: str | None, where: str) -> str:
    """The folder every href of ``catalog`` must stay under: ``root`` (a region's ``catalog_root``,
    e.g. the mirror or bucket root) or else the catalog file's own folder. ``root`` must hold it."""
    if root is None:
        return href_dir(catalog)
    prefix, path, _ = _split(root)
    root_dir = prefix + _normalise(path, root).rstrip("/") + "/"
    if scheme(root_dir) != scheme(catalog) and {scheme(root_dir), scheme(catalog)} - {"", "file"}:
        raise Unsafe(f"{where}: {root!r} and the catalog {catalog} are not on the same kind of store")
    if not is_within(catalog, root_dir):
        raise Unsafe(f"{where}: {root!r} does not contain the catalog {catalog}")
    return root_dir


# --------------------------------------------------------------------------- transport


@dataclass(frozen=True)
class Transport:
    """How to reach remote data: retries with exponential backoff, timeouts, S3 endpoint.

    ``s3_endpoint`` (e.g. ``http://127.0.0.1:5000``) overrides AWS for tests and mirrors;
    S3 access is always anonymous (botocore UNSIGNED): the open-data buckets need no keys
    and a pipeline that silently used someone's credentials would not be reproducible.
    """

    # the defaults are FetchParams' (a dataclass field's class attribute is its default)
    retries: int = FetchParams.retries
    backoff_s: float = FetchParams.backoff_s
    timeout_s: float = FetchParams.timeout_s
    s3_endpoint: str | None = None
    s3_region: str = FetchParams.s3_region

    @classmethod
    def from_params(cls, p: FetchParams) -> Transport:
        """The transport of ``p``; without ``s3_endpoint``, $SAREO_S3_ENDPOINT, else $AWS_ENDPOINT_URL."""
        env = os.environ
        endpoint = p.s3_endpoint or env.get("SAREO_S3_ENDPOINT") or env.get("AWS_ENDPOINT_URL")
        return cls(retries=p.retries, backoff_s=p.backoff_s, timeout_s=p.timeout_s, s3_endpoint=endpoint or None,
                   s3_region=p.s3_region)

    # -- retry loop ---------------------------------------------------------------------

    def retry(self, what: str, fn: Callable[[], T]) -> T:
        """Call ``fn`` up to ``retries + 1`` times; NotFound and Unsafe are not retried."""
        last: BaseException | None = None
        attempts = max(1, self.retries + 1)
        for attempt in range(attempts):
            try:
                return fn()
            except (NotFound, Unsafe, Invalid):
                raise
            except Exception as exc:  # noqa: BLE001 - network stacks raise many types
                last = exc
                if attempt + 1 < attempts:
                    delay = self.backoff_s * (2**attempt)
                    log.warning(
                        "%s: attempt %d/%d failed (%s); retrying in %.2fs", what, attempt + 1, attempts, exc, delay
                    )
                    time.sleep(delay)
        raise FetchError(f"{what}: failed after {attempts} attempt(s): {last}") from last

    # -- streams ------------------------------------------------------------------------

    def _s3(self):  # -> botocore client
        return _s3_client(self.s3_endpoint, self.s3_region, self.timeout_s)

    @contextmanager
    def _open_once(self, href: str) -> Iterator[tuple[IO[bytes], int | None]]:
        """One attempt at opening ``href``: yields (stream, size or None)."""
        s = scheme(href)
        if s in ("", "file"):
            p = local_path(href)
            if not p.is_file():
                raise NotFound(f"{href}: no such file")
            with open(p, "rb") as f:
                yield f, p.stat().st_size
        elif s == "s3":
            bucket, key = s3_key(href)
            client = self._s3()
            try:
                obj = client.get_object(Bucket=bucket, Key=key)
            except client.exceptions.NoSuchKey:
                raise NotFound(f"{href}: no such object") from None
            except Exception as exc:
                code = getattr(exc, "response", {}).get("Error", {}).get("Code", "")
                if code in ("NoSuchKey", "404", "NoSuchBucket"):
                    raise NotFound(f"{href}: no such object ({code})") from None
                if code in ("AccessDenied", "403"):
                    raise NotFound(f"{href}: access denied (the object is not public?)") from None
                raise
            body = obj["Body"]
            try:
                yield body, int(obj.get("ContentLength")) if obj.get("ContentLength") is not None else None
            finally:
                body.close()
        elif s in ("http", "https"):
            req = urllib.request.Request(quote_url(href), headers={"User-Agent": "sareo"})
            try:
                resp = urllib.request.urlopen(req, timeout=self.timeout_s)
            except urllib.error.HTTPError as exc:
                if exc.code in (403, 404, 410):
                    raise NotFound(f"{href}: HTTP {exc.code}") from None
                raise
            with resp:
                length = resp.headers.get("Content-Length")
                yield resp, int(length) if length is not None else None
        else:
            raise FetchError(f"{href}: unsupported scheme {s!r}; use a path, file://, http(s):// or s3://")

    def _confirm_length(self, href: str, n: int) -> bool:
        """After a body that came without Content-Length: is ``n`` really its end?

        A server that closes the connection early makes a close-delimited body look complete,
        so ask for the bytes after ``n`` (``Range: bytes=n-``): 416 or an empty 206 confirms the
        end, more bytes mean the first body was cut (an error, retried). Servers that ignore
        Range answer 200: the length stays unconfirmed and the content checks must decide.
        """
        if scheme(href) == "s3":  # S3 always sends a length; an answer without one is checked by HEAD
            bucket, key = s3_key(href)
            total = int(self._s3().head_object(Bucket=bucket, Key=key)["ContentLength"])
            if total != n:
                raise FetchError(f"{href}: truncated: got {n} of {total} bytes")
            return True
        if scheme(href) not in ("http", "https"):
            return False
        req = urllib.request.Request(quote_url(href), headers={"User-Agent": "sareo", "Range": f"bytes={n}-"})
        try:
            with urllib.request.urlopen(req, timeout=self.timeout_s) as resp:
                if resp.status != 206:
                    return False
                total = (resp.headers.get("Content-Range") or "").rpartition("/")[2]
                more = resp.read(1)
        except urllib.error.HTTPError as exc:
            if exc.code == 416:
                total = (exc.headers.get("Content-Range") or "").rpartition("/")[2]
                if total.isdigit() and int(total) != n:
                    raise FetchError(f"{href}: truncated: got {n} of {total} bytes") from None
                return True
            raise
        if (total.isdigit() and int(total) != n) or more:
            raise FetchError(f"{href}: truncated: the body ended after {n} bytes, the server has "
                             f"{total if total.isdigit() else 'more'}")
        return True

    def _checked(self, href: str, path: Path, digest: str, n: int, confirmed: bool, check: Check | None) -> None:
        """Run ``check``; a failure on bytes of confirmed length is final, else it may be a cut (retried)."""
        if check is None:
            return
        try:
            check(path, digest, n)
        except (NotFound, Unsafe, Invalid):
            raise
        except Exception as exc:  # noqa: BLE001 - checks raise what their parsers raise
            if confirmed:
                raise Invalid(str(exc) if str(exc).startswith(href) else f"{href}: {exc}") from exc
            raise

    def read_bytes(self, href: str, check: Callable[[bytes], None] | None = None) -> bytes:
        """The whole resource (catalog JSON, a tile); checks its length and ``check(data)``."""

        def once() -> bytes:
            with self._open_once(href) as (f, size):
                try:
                    data = f.read()
                except http.client.IncompleteRead as exc:
                    raise FetchError(f"{href}: truncated: got {len(exc.partial)} of {size} bytes") from None
            if size is not None and len(data) != size:
                raise FetchError(f"{href}: truncated: got {len(data)} of {size} bytes")
            confirmed = size is not None or scheme(href) in ("", "file") or self._confirm_length(href, len(data))
            if check is not None:
                self._checked(href, Path(), "", len(data), confirmed, lambda *_: check(data))
            return data

        return self.retry(href, once)

    def download(self, href: str, dest: Path, chunk: int = 1 << 20, check: Check | None = None) -> tuple[str, int]:
        """Stream ``href`` into ``dest`` (which the caller renames into place); (sha256, bytes).

        A short read is an error (and is retried): a truncated GeoTIFF often still opens. A body
        without Content-Length has its end confirmed by a Range request where the server allows;
        ``check(dest, sha256, bytes)`` runs on every attempt, so a cut it detects is retried too.
        """

        def once() -> tuple[str, int]:
            h = hashlib.sha256()
            n = 0
            with (self._open_once(href) as (f, size), open(dest, "wb") as out,
                  Progress(f"download {href.rsplit('/', 1)[-1]}", size, "B", logger=log) as bar):
                try:
                    while block := f.read(chunk):
                        h.update(block)
                        out.write(block)
                        n += len(block)
                        bar.update(len(block))
                except http.client.IncompleteRead as exc:
                    got = n + len(exc.partial)
                    raise FetchError(f"{href}: truncated download: got {got} of {size} bytes") from None
            if size is not None and n != size:
                raise FetchError(f"{href}: truncated download: got {n} of {size} bytes")
            confirmed = size is not None or self._confirm_length(href, n)
            digest = h.hexdigest()
            self._checked(href, dest, digest, n, confirmed, check)
            return digest, n

        return self.retry(href, once)


def quote_url(href: str) -> str:
    """Percent-encode spaces and other unsafe characters (Umbra folder names have them), keep '%XX'."""
    u = urllib.parse.urlsplit(href)
    path = urllib.parse.quote(u.path, safe="/%:@!$&'()*+,;=-._~")
    return urllib.parse.urlunsplit((u.scheme, u.netloc, path, u.query, u.fragment))


_S3_CLIENTS: dict[tuple[str | None, str, float], Any] = {}
_S3_LOCK = threading.Lock()


def _s3_client(endpoint: str | None, region: str, timeout: float):
    """An anonymous boto3 S3 client (cached: creating one costs ~50 ms)."""
    key = (endpoint, region, timeout)
    with _S3_LOCK:  # the walk's threads may ask at once; boto3 session creation is not thread-safe
        if key not in _S3_CLIENTS:
            _S3_CLIENTS[key] = _new_s3_client(endpoint, region, timeout)
    return _S3_CLIENTS[key]


def _new_s3_client(endpoint: str | None, region: str, timeout: float):
    import boto3
    from botocore import UNSIGNED
    from botocore.config import Config

    cfg = Config(
        signature_version=UNSIGNED,
        connect_timeout=timeout,
        read_timeout=timeout,
        retries={"max_attempts": 1},  # our own retry loop counts attempts
        s3={"addressing_style": "path"} if endpoint else {},
        max_pool_connections=64,  # the catalog walk's threads share one client (default pool: 10)
    )
    return boto3.session.Session().client("s3", region_name=region, endpoint_url=endpoint, config=cfg)


class SareoStacIO(DefaultStacIO):
    """pystac reader for paths, file://, http(s):// and anonymous s3://, through a Transport."""

    def __init__(self, transport: Transport | None = None) -> None:
        super().__init__()
        self.transport = transport or Transport()

    def read_text(self, source: Any, *args: Any, **kwargs: Any) -> str:
        href = pystac.utils.make_posix_style(source) if not isinstance(source, str) else source
        return self.transport.read_bytes(href).decode("utf-8")

    def write_text(self, dest: Any, txt: str, *args: Any, **kwargs: Any) -> None:
        raise FetchError(f"{dest}: the fetch stage never writes catalogs")


def load_json(href: str, transport: Transport) -> dict[str, Any]:
    """A STAC JSON object; errors name the href."""
    def parse(raw: bytes) -> Any:
        try:
            return json.loads(raw.decode("utf-8", errors="replace"))
        except json.JSONDecodeError as exc:
            raise FetchError(f"{href}: not JSON ({exc})") from None

    data = parse(transport.read_bytes(href, check=parse))  # a cut body fails to parse: retried
    if not isinstance(data, dict):
        raise FetchError(f"{href}: expected a STAC object, got {type(data).__name__}")
    return data
