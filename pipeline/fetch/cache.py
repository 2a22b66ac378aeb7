"""The download cache: remote objects by href, checked and renamed into place, and the walk
cache of remote static catalogs; objects reach ``source/`` by hardlink, not copy."""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pipeline.atomic import atomic_path, write_bytes, write_json
from pipeline.fetch.stacio import (
    Check,
    FetchError,
    Invalid,
    NotFound,
    Transport,
    Unsafe,
    is_remote,
    local_path,
    scheme,
)
from pipeline.provenance import sha256_file

log = logging.getLogger("sareo.fetch")

WALK_FORMAT = "sareo-walk/1"


def safe_name(href: str, max_len: int = 80) -> str:
    """A cache file name for ``href``: a hash of the full href plus a sanitised base name.

    Only [A-Za-z0-9._-], no leading dot: nothing in an href can make a path leave the cache.
    """
    base = re.sub(r"[^A-Za-z0-9._-]+", "_", href.split("?", 1)[0].rstrip("/").rsplit("/", 1)[-1]).lstrip("._")
    digest = hashlib.sha256(href.encode("utf-8")).hexdigest()[:16]
    return f"{digest}_{base[:max_len] or 'object'}"


@dataclass(frozen=True)
class Cache:
    """Downloads by href into ``root/objects``; each object has a ``.json`` sidecar (href, sha256, bytes)."""

    root: Path
    transport: Transport

    def path_for(self, href: str) -> Path:
        objects = (self.root / "objects").resolve()
        p = (objects / safe_name(href)).resolve()
        if p.parent != objects:
            raise Unsafe(f"{href}: cache name {p} escapes {objects}")
        return p

    def get(self, href: str, sha256: str | None = None, size: int | None = None,
            check: Check | None = None) -> tuple[Path, str, int]:
        """(local path, sha256, bytes) of ``href``; local files are used in place, remote ones cached.

        Expected ``sha256``/``size`` (from the catalog) and ``check(path, sha256, bytes)`` (the
        content check of the caller: a GeoTIFF read whole, a tile decoded) run before anything is
        kept, on every download attempt. A cached object is used only if its bytes still hash to
        the sha256 recorded when it was downloaded; one that does not (corrupted in place, cut by
        a crash) is reported, dropped and fetched again. So the digest returned (which provenance
        records) is always that of the bytes on disk.
        """

        def verified(path: Path, digest: str, n: int) -> None:
            _verify(href, digest, n, sha256, size)
            if check is not None:
                check(path, digest, n)

        if not is_remote(href):
            p = local_path(href)
            if not p.is_file():
                raise NotFound(f"{href}: no such file")
            digest, n = sha256_file(p), p.stat().st_size
            try:
                verified(p, digest, n)
            except (NotFound, Unsafe, FetchError):
                raise
            except Exception as exc:  # noqa: BLE001 - content checks raise what their parsers raise
                raise Invalid(f"{href}: {exc}") from exc
            return p, digest, n
        dest = self.path_for(href)
        side = dest.with_name(dest.name + ".json")
        hit = self._reuse(href, dest, side, sha256, size)
        if hit is not None:
            return hit
        dest.parent.mkdir(parents=True, exist_ok=True)
        log.info("downloading %s", href)
        with atomic_path(dest) as tmp:
            digest, n = self.transport.download(href, tmp, check=verified)
        write_json(side, {"href": href, "sha256": digest, "bytes": n})
        return dest, digest, n

    def _reuse(self, href: str, dest: Path, side: Path, sha256: str | None,
               size: int | None) -> tuple[Path, str, int] | None:
        """The cached object of ``href`` if its bytes match its record (and the catalog), else None."""
        if not (dest.is_file() and side.is_file()):
            return None
        try:
            meta = json.loads(side.read_text(encoding="utf-8"))
            recorded, want_n = str(meta["sha256"]), int(meta["bytes"])
            same_href = meta.get("href") == href
        except (OSError, ValueError, KeyError, TypeError) as exc:
            log.warning("cache: %s: unreadable record %s (%s); fetching again", href, side, exc)
            return None
        if not same_href or sha256 not in (None, recorded) or size not in (None, want_n):
            return None  # another object, or the catalog changed: fetch what it says now
        n = dest.stat().st_size
        digest = sha256_file(dest) if n == want_n else None
        if digest != recorded:
            log.warning("cache: %s: cached copy %s is corrupt (%s); fetching again", href, dest,
                        f"{n} bytes, recorded {want_n}" if digest is None else f"sha256 {digest}, recorded {recorded}")
            side.unlink(missing_ok=True)
            dest.unlink(missing_ok=True)
            return None
        log.info("cache hit: %s", href)
        return dest, digest, n

    # -- walk cache: the parsed documents of a remote static catalog, reused across regions -------

    def walk_path(self, root: str) -> Path:
        """``root/walks/<hash>_<name>.json``, keyed by the catalog root href (and S3 endpoint)."""
        key = f"{root}|{self.transport.s3_endpoint or ''}" if scheme(root) == "s3" else root
        walks = (self.root / "walks").resolve()
        p = (walks / f"{safe_name(key)}.json").resolve()
        if p.parent != walks:
            raise Unsafe(f"{root}: walk cache name {p} escapes {walks}")
        return p

    def walk_memo(self, root: str, ttl_h: float) -> tuple[dict[str, dict[str, Any]], float]:
        """(documents by href, creation time) of ``root``'s walk cache; empty when absent, older than
        ``ttl_h`` hours, unreadable, or not applicable (ttl 0; local catalogs are cheap to read and
        may be regenerated, e.g. by the demo stage, so they are never cached)."""
        now = time.time()
        if ttl_h <= 0 or not is_remote(root):
            return {}, now
        path = self.walk_path(root)
        try:
            data = json.loads(path.read_bytes())
        except FileNotFoundError:
            return {}, now
        except (OSError, ValueError) as exc:
            log.warning("%s: walk cache %s unreadable (%s); walking again", root, path, exc)
            return {}, now
        created = float(data.get("created", 0))
        if data.get("format") != WALK_FORMAT or data.get("root") != root or not 0 <= now - created < ttl_h * 3600:
            return {}, now
        log.info("walk cache hit: %s (%d documents, %.1f h old)", root, len(data["nodes"]), (now - created) / 3600)
        return dict(data["nodes"]), created

    def save_walk_memo(self, root: str, ttl_h: float, nodes: dict[str, dict[str, Any]], created: float) -> None:
        """Write the walk cache atomically; it keeps the time of its oldest documents (``created``)."""
        if ttl_h <= 0 or not is_remote(root):
            return
        path = self.walk_path(root)
        path.parent.mkdir(parents=True, exist_ok=True)
        doc = {"format": WALK_FORMAT, "root": root, "created": created, "nodes": nodes}
        write_bytes(path, json.dumps(doc, separators=(",", ":")).encode("utf-8"))


def _verify(href: str, digest: str, n: int, sha256: str | None, size: int | None) -> None:
    if size is not None and n != size:
        raise FetchError(f"{href}: size mismatch: got {n} bytes, the catalog says {size} (truncated?)")
    if sha256 is not None and digest != sha256:
        raise FetchError(f"{href}: checksum mismatch: sha256 {digest}, the catalog says {sha256}")


def link_or_copy(src: Path, dest: Path) -> None:
    """Hardlink (no copy of big files); copy across file systems."""
    try:
        os.link(src, dest)
    except OSError:
        shutil.copy2(src, dest)
