"""Outputs on object storage: ``sareo --data s3://BUCKET/PREFIX`` and how a write is committed there.

S3 has no rename, so the local protocol (temporary sibling, then one rename; :mod:`pipeline.atomic`)
becomes a **manifest written last**. Every output unit (a stage directory such as
``regions/NAME/grid``, or a patch store ``patches/NAME.zarr``) is a prefix; a write of it

1. deletes the unit's manifest ``sareo-manifest.json`` (from here on readers refuse it),
2. puts ``sareo-writing.json`` (so a unit emptied by an interrupted write is "uncommitted", not "absent"),
3. deletes every other object under the prefix (no stale key of the previous build survives),
4. writes the objects (stage files uploaded; store shards PUT whole, one writer each),
5. lists the prefix and writes the manifest (every key with its size, ETag and, for uploaded
   files, crc32c), then deletes ``sareo-writing.json``.

A reader (the next stage, ``sareo info``, ``PatchDataset("s3://...")``) lists the prefix and
compares it with the manifest: no manifest, a missing, resized, replaced or unlisted object is
refused, naming the unit and the key. So an interrupted write (exception or kill, at any point)
leaves nothing a reader accepts, and a re-run replaces the unit in one step from a reader's point
of view: it sees the old unit, then none, then the new one, never a mix (a reader that opened the
old store before the rebuild is caught by the loader's ETag pin on every shard it reads).

Stages keep working on local files: before a stage runs its input units are downloaded into a
scratch data directory (each object verified against the manifest: size and crc32c), the stage
writes its directory there as usual, and the directory is uploaded and committed; the scratch copy
is removed after the stage (disk: one stage's inputs and outputs; memory: boto3's 8 MB transfer
parts). The patch store is written straight to S3 through zarr (:func:`open_output_store`), so
shard writers on other machines need no shared disk.

The data prefix is claimed by a marker object ``sareo-data.json`` naming the dataset (publish's
``id``): a non-empty prefix without it, or with another dataset's, is refused unless ``--overwrite``.

Everything goes through boto3 (already the loader's S3 layer; fork-safe; honours ``AWS_ENDPOINT_URL``,
``AWS_PROFILE`` and ``~/.aws/config`` including a profile's ``endpoint_url``).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import shutil
import tempfile
import threading
from collections.abc import Iterable, Iterator, Mapping
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from pipeline import __version__
from pipeline.atomic import atomic_path, dumps_json
from pipeline.remote import RemoteError, S3Remote, s3_error

log = logging.getLogger("sareo.storage")

MANIFEST = "sareo-manifest.json"
WRITING = "sareo-writing.json"
MARKER = "sareo-data.json"
MANIFEST_FORMAT = "sareo-manifest/1"
MARKER_FORMAT = "sareo-data/1"
_BLOCK = 8 << 20  # bytes per read when hashing or copying: bounds memory for any file size


class StorageError(RemoteError):
    """An output location on object storage that cannot be used: uncommitted, mismatching, foreign."""


def is_s3(location: object) -> bool:
    return isinstance(location, str) and urlsplit(location).scheme == "s3"


def file_crc32c(path: str | os.PathLike[str]) -> str:
    """crc32c of a file as 8 hex digits, read in blocks."""
    import google_crc32c

    c = google_crc32c.Checksum()
    with open(path, "rb") as f:
        while block := f.read(_BLOCK):
            c.update(block)
    return c.hexdigest().decode()


class S3Prefix:
    """Objects below one ``s3://bucket/prefix``: put, upload, download, list, delete (boto3)."""

    def __init__(self, url: str):
        self.remote = S3Remote(url)
        self.url, self.bucket, self.prefix = self.remote.url, self.remote.bucket, self.remote.prefix
        self.crc32c: dict[str, str] = {}  # crc32c of the files uploaded through this object (for the manifest)

    def child(self, rel: str) -> S3Prefix:
        return S3Prefix(f"{self.url}/{rel.strip('/')}")

    def key(self, rel: str) -> str:
        return f"{self.prefix}/{rel}" if self.prefix else rel

    @contextlib.contextmanager
    def _request(self, rel: str, action: str) -> Iterator[None]:
        from botocore.exceptions import BotoCoreError, ClientError

        try:
            yield
        except (ClientError, BotoCoreError) as exc:
            raise s3_error(exc, self.remote.where(rel) if rel else self.url, self.bucket, action) from None

    def get(self, rel: str) -> bytes | None:
        return self.remote.get(rel)

    def put(self, rel: str, data: bytes) -> str:
        """One PUT of ``data``; returns its ETag."""
        with self._request(rel, "write"):
            return str(self.remote.client().put_object(Bucket=self.bucket, Key=self.key(rel), Body=data)["ETag"])

    def upload(self, rel: str, path: Path) -> None:
        """Upload a file (multipart above 8 MB, streamed); its crc32c is kept for the manifest."""
        self.crc32c[rel] = file_crc32c(path)
        with self._request(rel, "write"):
            self.remote.client().upload_file(str(path), self.bucket, self.key(rel))

    def download(self, rel: str, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        with self._request(rel, "read"):
            self.remote.client().download_file(self.bucket, self.key(rel), str(path))

    def list(self) -> dict[str, tuple[int, str]]:
        """Every object below the prefix: relative key -> (size, ETag)."""
        base = f"{self.prefix}/" if self.prefix else ""
        out: dict[str, tuple[int, str]] = {}
        with self._request("", "listing"):
            for page in self.remote.client().get_paginator("list_objects_v2").paginate(Bucket=self.bucket,
                                                                                       Prefix=base):
                for o in page.get("Contents", []):
                    out[o["Key"][len(base):]] = (int(o["Size"]), str(o["ETag"]))
        return out

    def delete(self, rels: Iterable[str]) -> None:
        keys = [{"Key": self.key(r)} for r in rels]
        for i in range(0, len(keys), 1000):
            with self._request(keys[i]["Key"], "delete"):
                r = self.remote.client().delete_objects(Bucket=self.bucket, Delete={"Objects": keys[i:i + 1000]})
            if r.get("Errors"):
                e = r["Errors"][0]
                raise StorageError(f"s3://{self.bucket}/{e.get('Key')}: S3 refused the delete ({e.get('Code')}: "
                                   f"{e.get('Message')}); the bucket policy or the credentials do not allow it")


# ------------------------------------------------------------------------------ manifests


def manifest(objects: Mapping[str, tuple[int, str]], crc32c: Mapping[str, str] | None = None) -> dict[str, Any]:
    """The manifest of a unit from its listing (key -> (size, ETag)) and the crc32c its writer knows."""
    crc = crc32c or {}
    entries = {k: {"size": s, "etag": e, **({"crc32c": crc[k]} if k in crc else {})}
               for k, (s, e) in sorted(objects.items()) if k not in (MANIFEST, WRITING)}
    return {"format": MANIFEST_FORMAT, "objects": entries, "count": len(entries),
            "bytes": sum(v["size"] for v in entries.values()), "software": {"name": "sareo", "version": __version__}}


def commit(out: S3Prefix) -> dict[str, Any]:
    """Write the unit's manifest (the last object written), then drop its in-progress marker."""
    m = manifest(out.list(), out.crc32c)
    out.put(MANIFEST, dumps_json(m).encode())
    out.delete([WRITING])
    log.info("%s: committed %d objects (%d bytes)", out.url, m["count"], m["bytes"])
    return m


def verify(url: str) -> dict[str, Any] | None:
    """The manifest of a committed unit, checked against a listing; None if nothing is there at all.

    Raises StorageError naming the unit (and the object) for an uncommitted or mismatching one.
    """
    out = S3Prefix(url)
    listing = out.list()
    if not listing:
        return None
    raw = out.get(MANIFEST)
    if raw is None:
        state = "a write is running or was interrupted" if WRITING in listing else "written without a commit"
        raise StorageError(f"{url}: not committed (no {MANIFEST}; {state}); rebuild it")
    try:
        m = json.loads(raw)
        objects = m["objects"]
    except (ValueError, KeyError, TypeError) as exc:
        raise StorageError(f"{url}/{MANIFEST}: not a sareo manifest ({exc})") from None
    listing.pop(MANIFEST, None)
    if WRITING in listing:
        raise StorageError(f"{url}: being rewritten ({WRITING} present beside an old manifest); rebuild it")
    for key, rec in objects.items():
        got = listing.get(key)
        if got is None:
            raise StorageError(f"{url}/{key}: listed in {MANIFEST} but missing; the unit is damaged, rebuild it")
        if got != (rec["size"], rec["etag"]):
            raise StorageError(f"{url}/{key}: {got[0]} bytes, ETag {got[1]}; its manifest says {rec['size']} bytes, "
                               f"ETag {rec['etag']} (replaced after the commit); rebuild it")
    extra = sorted(set(listing) - set(objects))
    if extra:
        raise StorageError(f"{url}/{extra[0]}: not in {MANIFEST} ({len(extra)} such object(s), written after "
                           f"the commit); rebuild it")
    return m


@contextlib.contextmanager
def writing(url: str) -> Iterator[S3Prefix]:
    """Replace the unit at ``url``: uncommit and clear it, yield it for writing, commit on success.

    On an exception the unit stays uncommitted (readers refuse it) and the next write clears it.
    """
    out = S3Prefix(url)
    out.delete([MANIFEST])  # first: from here on no reader accepts the unit
    out.put(WRITING, dumps_json({"software": "sareo", "pid": os.getpid()}).encode())
    out.delete([k for k in out.list() if k != WRITING])
    yield out
    commit(out)


# ------------------------------------------------------------------------------ stage directories


def push_dir(local: Path, url: str) -> dict[str, Any]:
    """Upload a stage directory and commit it."""
    with writing(url) as out:
        for p in sorted(local.rglob("*")):
            if p.is_file():
                out.upload(p.relative_to(local).as_posix(), p)
    return verify(url) or {}


def pull_dir(url: str, local: Path) -> bool:
    """Download a committed stage directory to ``local`` (atomically), each object checked against
    the manifest; False when nothing is at ``url`` (the stage never ran)."""
    m = verify(url)
    if m is None:
        return False
    out = S3Prefix(url)
    with atomic_path(local) as tmp:
        tmp.mkdir()
        for key, rec in m["objects"].items():
            dest = tmp / key
            out.download(key, dest)
            size = dest.stat().st_size
            if size != rec["size"]:
                raise StorageError(f"{url}/{key}: downloaded {size} bytes; its manifest says {rec['size']}")
            if "crc32c" in rec and file_crc32c(dest) != rec["crc32c"]:
                raise StorageError(f"{url}/{key}: crc32c {file_crc32c(dest)} of the downloaded bytes; its manifest "
                                   f"says {rec['crc32c']} (corrupted in transit or at rest)")
    return True


@contextlib.contextmanager
def remote_stage(layout: Any, reads: list[Path], writes: list[Path], direct: Iterable[Path] = ()) -> Iterator[None]:
    """Run a stage against a scratch copy: pull ``reads``, yield, push ``writes`` (except the
    ``direct`` ones, written straight to S3), then remove the scratch copies.

    Paths are the layout's local (scratch) paths; ``layout.url_of`` gives each one's URL.
    """
    direct = set(direct)
    try:
        for p in reads:
            if not pull_dir(layout.url_of(p), p):
                log.info("%s: absent (its stage has not run)", layout.url_of(p))
        yield
        for p in writes:
            if p not in direct:
                push_dir(p, layout.url_of(p))
    finally:
        for p in (*reads, *writes):
            if p not in direct:
                shutil.rmtree(p, ignore_errors=True)


def scratch_dir(url: str) -> Path:
    """The local working directory of ``--data URL`` (stage inputs and outputs in transit, locks)."""
    base = Path(os.environ.get("SAREO_SCRATCH") or tempfile.gettempdir())
    return base / f"sareo-{hashlib.sha1(url.rstrip('/').encode()).hexdigest()[:12]}"


# ------------------------------------------------------------------------------ the data prefix


def claim(url: str, dataset: str, overwrite: bool = False) -> None:
    """Make ``url`` this dataset's data prefix, refusing another dataset's (unless ``overwrite``).

    "Ours" = a marker object ``sareo-data.json`` with the same dataset id (publish's ``id``). A
    non-empty prefix without a marker, or with another id, is refused; ``overwrite`` deletes
    everything below it first. The marker is written on every run, so a bucket that refuses
    writes fails here, before any work, and a bucket that does not exist fails on the first request.
    """
    root = S3Prefix(url)
    raw = root.get(MARKER)
    theirs = None
    if raw is not None:
        try:
            theirs = json.loads(raw).get("dataset")
        except (ValueError, AttributeError):
            theirs = "(unreadable marker)"
    foreign = (raw is None and bool(root.list())) or (raw is not None and theirs != dataset)
    if foreign:
        what = (f"holds dataset {theirs!r} (its {MARKER}), not this project's {dataset!r}" if raw is not None
                else f"is not empty and holds no {MARKER}: not a sareo data prefix")
        if not overwrite:
            raise StorageError(f"{url}: {what}; choose another prefix, or pass --overwrite to delete it and "
                               f"build here")
        log.warning("%s: %s; --overwrite: deleting it", url, what)
        root.delete(root.list())
    root.put(MARKER, dumps_json({"format": MARKER_FORMAT, "dataset": dataset, "software": "sareo"}).encode())


# ------------------------------------------------------------------------------ the patch store on S3


@contextlib.contextmanager
def open_output_store(location: str | os.PathLike[str]) -> Iterator[Any]:
    """Where to create a patch store: a local temporary path (renamed into place on success), or
    for ``s3://`` a writable zarr store over the prefix, committed on success (:func:`writing`)."""
    if is_s3(location):
        with writing(str(location)) as out:
            yield s3_zarr_store(out)
    else:
        with atomic_path(location) as tmp:
            yield tmp


def output_location(target: Any) -> str:
    """Where a target that :func:`open_output_store` yielded lives, for :func:`reopen_output_store`
    in another process: the S3 prefix of its store, or the local temporary path."""
    return target.out.url if isinstance(getattr(target, "out", None), S3Prefix) else str(target)


def reopen_output_store(location: str):  # -> zarr.Group
    """The store :func:`open_output_store` is creating, opened again for writing shards, in any
    process (a task on a dask worker): the local temporary path, or the ``s3://`` prefix."""
    import zarr

    from pipeline.store import open_store

    if is_s3(location):
        return zarr.open_group(store=s3_zarr_store(S3Prefix(location)), mode="r+", zarr_format=3)
    return open_store(location, mode="r+")


def s3_zarr_store(out: S3Prefix):  # -> zarr.abc.store.Store
    """A writable zarr store over ``out`` that never reads a chunk back: shards are PUT whole.

    zarr's sharding codec loads the existing shard before every write (to merge a partial one);
    here that read is refused, except for the shards :func:`pipeline.store.write_shards` declares
    whole (:meth:`whole`), for which it answers "absent" without a request. A partial shard write
    therefore fails loudly instead of merging with, or racing, another writer's shard.
    """
    from pipeline.remote import _zarr_store_class

    base = _zarr_store_class()

    class _Writable(base):  # type: ignore[misc, valid-type]
        supports_writes = True
        supports_deletes = True
        supports_listing = True

        def __init__(self, prefix: S3Prefix):
            super().__init__(prefix.remote)
            self._read_only = False
            self.out = prefix
            self._whole: set[str] = set()
            self._lock = threading.Lock()

        def __repr__(self) -> str:
            return f"s3_zarr_store({self.out.url!r})"

        @contextlib.contextmanager
        def whole(self, keys: Iterable[str]) -> Iterator[None]:
            keys = set(keys)
            with self._lock:
                self._whole |= keys
            try:
                yield
            finally:
                with self._lock:
                    self._whole -= keys

        async def get(self, key: str, prototype: Any = None, byte_range: Any = None):
            if not key.endswith("zarr.json"):
                if key in self._whole:
                    return None
                from pipeline.store import StoreError

                raise StoreError(f"{self.out.url}/{key}: read-modify-write of a chunk refused; write whole shards "
                                 f"(pipeline.store.write_shards)")
            return await super().get(key, prototype, byte_range)

        async def set(self, key: str, value: Any) -> None:
            import asyncio

            await asyncio.to_thread(self.out.put, key, value.to_bytes())

        async def delete(self, key: str) -> None:
            import asyncio

            await asyncio.to_thread(self.out.delete, [key])

        async def _keys(self, prefix: str = "") -> list[str]:
            import asyncio

            return [k for k in await asyncio.to_thread(self.out.list) if k.startswith(prefix)
                    and k not in (WRITING, MANIFEST)]

        async def list(self):  # type: ignore[override]
            for k in await self._keys():
                yield k

        async def list_prefix(self, prefix: str):  # type: ignore[override]
            for k in await self._keys(prefix):
                yield k

        async def list_dir(self, prefix: str):  # type: ignore[override]
            base = f"{prefix.rstrip('/')}/" if prefix else ""
            for k in sorted({k[len(base):].split("/", 1)[0] for k in await self._keys(base)}):
                yield k

    return _Writable(out)
