"""Training loader: patches from one or many region stores (local, s3:// or https://) as numpy
arrays or torch tensors.

``PatchDataset`` is a plain map-style dataset (``__len__``/``__getitem__``, plus torch's batched
``__getitems__``), so it works with a torch ``DataLoader`` without importing torch here. Stores
are opened lazily in each process (the pid is recorded and everything is reopened after a
fork), because file handles and HTTP clients opened before a DataLoader forks its workers
must not be shared.

Fast path: zarr-python spends ~1 ms of overhead per call while decoding a patch takes ~0.2 ms.
``ShardReader`` reads each shard's index once (Zarr v3 sharding: ``n`` little-endian uint64
(offset, nbytes) pairs plus a crc32c, at the end of the shard), then fetches a chunk with one
``os.pread`` (or one ranged GET), checks its crc32c and decompresses it with zstd straight into
the caller's buffer. It checks the array's own metadata and falls back to zarr-python for any
layout it does not know. Damage (a failed checksum, a missing or truncated shard, an unwritten
chunk) is a StoreError naming store, array and patch, never fill values.
"""

from __future__ import annotations

import hashlib
import json
import logging
import mmap
import os
import sys
import threading
import weakref
from collections import OrderedDict
from collections.abc import Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import google_crc32c
import numpy as np
import zstandard

from pipeline.remote import Remote, RemoteError, is_url, open_remote
from pipeline.store import IMAGE_ARRAYS, StoreError, open_store

log = logging.getLogger("sareo.loader")

MAX_OPEN_FILES = 128  # shard files kept open per process (LRU)
REMOTE_THREADS = 16  # concurrent ranged GETs per process for a batch from a remote store

EMPTY = 2**64 - 1  # index entry of a chunk that was never written


def crc32c(data) -> int:
    """CRC-32C (Castagnoli) as Zarr's crc32c codec writes it: google-crc32c's C implementation
    (zarr's own dependency), ~10 GB/s, so every chunk is verified at a few % of its decode time."""
    return google_crc32c.value(data if isinstance(data, bytes) else np.frombuffer(data, np.uint8))


class UnsupportedLayout(ValueError):
    """An array layout the fast path does not handle (the loader then uses zarr-python)."""


class ChunkLayout:
    """What the fast path needs from one array's ``zarr.json``: sharding_indexed, one chunk = one
    patch, inner codecs bytes[+zstd][+crc32c], index codecs bytes[+crc32c]. Else UnsupportedLayout."""

    def __init__(self, meta: dict[str, Any], where: str):
        codecs = meta.get("codecs") or []
        if len(codecs) != 1 or codecs[0].get("name") != "sharding_indexed":
            raise UnsupportedLayout(f"{where}: not a sharded array ({[c.get('name') for c in codecs]})")
        cfg = codecs[0]["configuration"]
        self.shape = tuple(meta["shape"])
        self.shard_shape = tuple(meta["chunk_grid"]["configuration"]["chunk_shape"])
        self.chunk_shape = tuple(cfg["chunk_shape"])
        if self.chunk_shape[0] != 1 or self.chunk_shape[1:] != self.shape[1:] or self.shard_shape[1:] != self.shape[1:]:
            raise UnsupportedLayout(f"{where}: chunk {self.chunk_shape} / shard {self.shard_shape} not one patch each")
        self.per_shard = int(self.shard_shape[0])
        self.dtype = np.dtype(meta["data_type"])
        inner = [c["name"] for c in cfg["codecs"]]
        if inner not in (["bytes"], ["bytes", "zstd"], ["bytes", "crc32c"], ["bytes", "zstd", "crc32c"]):
            raise UnsupportedLayout(f"{where}: inner codecs {inner}; fast path knows bytes[+zstd][+crc32c]")
        self.zstd, self.crc = "zstd" in inner, "crc32c" in inner
        endian = (cfg["codecs"][0].get("configuration") or {}).get("endian", "little")
        if self.dtype.itemsize > 1:
            self.dtype = self.dtype.newbyteorder("<" if endian == "little" else ">")
        index_codecs = [c["name"] for c in cfg.get("index_codecs", [])]
        if index_codecs not in (["bytes"], ["bytes", "crc32c"]):
            raise UnsupportedLayout(f"{where}: index codecs {index_codecs}")
        if ((cfg["index_codecs"][0].get("configuration") or {}).get("endian", "little")) != "little":
            raise UnsupportedLayout(f"{where}: big-endian shard index")
        self.index_crc = "crc32c" in index_codecs
        self.index_bytes = self.per_shard * 16 + (4 if self.index_crc else 0)
        self.index_at_end = cfg.get("index_location", "end") == "end"
        enc = meta.get("chunk_key_encoding") or {"name": "default"}
        sep = (enc.get("configuration") or {}).get("separator", "/" if enc.get("name") == "default" else ".")
        self.key_prefix = "c" + sep if enc.get("name") == "default" else ""
        self.sep = sep
        self.tail = sep.join("0" for _ in self.shape[1:])
        fill = meta.get("fill_value")
        self.fill = np.array(np.nan if fill in ("NaN", None) else fill, dtype=self.dtype)
        self.nbytes = int(np.prod(self.chunk_shape)) * self.dtype.itemsize

    def shard_key(self, shard: int) -> str:
        """Key of shard file ``shard`` relative to the array."""
        return f"{self.key_prefix}{shard}{self.sep}{self.tail}"

    def chunk_ok(self, raw) -> bool:
        """True when ``raw`` (one stored chunk) passes its crc32c (always True without one)."""
        return not self.crc or (len(raw) >= 4 and crc32c(np.frombuffer(raw, np.uint8, len(raw) - 4)) == int.from_bytes(raw[-4:], "little"))


class LocalShards:
    """Shard bytes of a local array: ``os.pread`` on files kept open in a per-process LRU.

    With a ``pin`` every file is opened relative to the store directory the dataset opened, so a
    rebuild swapped in meanwhile is never mixed in, and a shard the swap removed is an error.
    """

    def __init__(self, array_dir: Path, layout: ChunkLayout, max_open_files: int = MAX_OPEN_FILES,
                 pin: _Pin | None = None):
        self.dir, self.layout, self.max_open, self.pin = array_dir, layout, max_open_files, pin
        self._fds: OrderedDict[int, int] = OrderedDict()

    def where(self, shard: int) -> str:
        return str(self.dir / self.layout.shard_key(shard))

    def _fd(self, shard: int) -> int | None:
        fd = self._fds.get(shard)
        if fd is not None:
            self._fds.move_to_end(shard)
            return fd
        try:
            if self.pin is None:
                fd = os.open(self.where(shard), os.O_RDONLY)
            else:
                fd = os.open(f"{self.dir.name}/{self.layout.shard_key(shard)}", os.O_RDONLY, dir_fd=self.pin.fd)
        except FileNotFoundError:
            if self.pin is not None:
                self.pin.check()  # gone because a rebuild replaced the store: an error, never fill values
            return None
        self._fds[shard] = fd
        if len(self._fds) > self.max_open:
            os.close(self._fds.popitem(last=False)[1])
        return fd

    def index(self, shard: int) -> tuple[bytes, int] | None:
        """(raw index bytes, shard size), or None when the shard file does not exist."""
        fd = self._fd(shard)
        if fd is None:
            return None
        n = self.layout.index_bytes
        size = os.fstat(fd).st_size
        return os.pread(fd, n, max(size - n, 0) if self.layout.index_at_end else 0), size

    def chunks(self, spans: Sequence[tuple[int, int, int]]) -> list[bytes]:
        """Stored bytes of chunks given as (shard, offset, nbytes)."""
        out = []
        for shard, off, n in spans:
            fd = self._fd(shard)
            if fd is None:
                raise FileNotFoundError(self.where(shard))
            out.append(os.pread(fd, n, off))
        return out

    def close(self) -> None:
        for fd in self._fds.values():
            os.close(fd)
        self._fds.clear()


class SpanError(RemoteError):
    """A remote read that failed, with the position of its chunk in the request."""

    def __init__(self, pos: int, message: str):
        super().__init__(message)
        self.pos = pos


class RemoteShards:
    """Shard bytes of a remote array: one ranged GET of each shard's index (its ETag kept), then
    one ranged GET per chunk (``If-Match`` that ETag), concurrent within a batch. With
    ``cache_dir`` each chunk's stored bytes land in a sparse local copy of its shard, named by
    the shard's URL and ETag, and are reused while they pass their crc32c (a partly written
    or stale cache entry fails it and is fetched again; the index is always fetched, so a
    replaced remote shard never meets an old cache)."""

    def __init__(self, remote: Remote, array: str, layout: ChunkLayout, cache_dir: str | os.PathLike[str] | None):
        self.remote, self.array, self.layout = remote, array, layout
        self.cache_dir = Path(cache_dir) if cache_dir is not None else None
        if self.cache_dir is not None and not layout.crc:
            log.warning("%s/%s: chunks carry no crc32c, local cache off (it could not be verified)", remote.url, array)
            self.cache_dir = None
        self._etag: dict[int, str | None] = {}
        self._cache_fd: dict[int, int] = {}
        self._pool: ThreadPoolExecutor | None = None

    def key(self, shard: int) -> str:
        return f"{self.array}/{self.layout.shard_key(shard)}"

    def where(self, shard: int) -> str:
        return self.remote.where(self.key(shard))

    def index(self, shard: int) -> tuple[bytes, int] | None:
        if not self.layout.index_at_end:
            raise UnsupportedLayout(f"{self.where(shard)}: remote reads need the shard index at the end")
        t = self.remote.tail(self.key(shard), self.layout.index_bytes)
        if t is None:
            return None
        self._etag[shard] = t.etag
        if self.cache_dir is not None:
            self._open_cache(shard, t.size, t.etag)
        return t.data, t.size

    def _open_cache(self, shard: int, size: int, etag: str | None) -> None:
        if etag is None:
            return  # nothing identifies this version of the shard: do not cache it
        name = hashlib.sha256(f"{self.where(shard)}\n{etag}\n{size}".encode()).hexdigest()[:32]
        self.cache_dir.mkdir(parents=True, exist_ok=True)  # type: ignore[union-attr]
        fd = os.open(self.cache_dir / f"{name}.shard", os.O_RDWR | os.O_CREAT, 0o644)  # type: ignore[operator]
        if os.fstat(fd).st_size < size:
            os.ftruncate(fd, size)  # sparse: unfetched chunks read as zeros and fail their crc32c
        old = self._cache_fd.pop(shard, None)
        if old is not None:
            os.close(old)
        self._cache_fd[shard] = fd

    def _one(self, shard: int, off: int, n: int) -> bytes:
        fd = self._cache_fd.get(shard)
        if fd is not None:
            raw = os.pread(fd, n, off)
            if len(raw) == n and self.layout.chunk_ok(raw):
                return raw
        raw = self.remote.range(self.key(shard), off, n, self._etag.get(shard))
        if fd is not None and len(raw) == n and self.layout.chunk_ok(raw):
            os.pwrite(fd, raw, off)
        return raw

    def chunks(self, spans: Sequence[tuple[int, int, int]]) -> list[bytes]:
        """Stored bytes of chunks given as (shard, offset, nbytes): all GETs of a batch at once."""
        def one(pos: int) -> bytes:
            try:
                return self._one(*spans[pos])
            except RemoteError as exc:
                raise SpanError(pos, str(exc)) from None

        if len(spans) == 1:
            return [one(0)]
        if self._pool is None:
            self._pool = ThreadPoolExecutor(REMOTE_THREADS, thread_name_prefix="sareo-get")
        return list(self._pool.map(one, range(len(spans))))

    def close(self) -> None:
        for fd in self._cache_fd.values():
            os.close(fd)
        self._cache_fd.clear()
        self._etag.clear()
        if self._pool is not None:
            self._pool.shutdown(wait=False)
            self._pool = None


class _Pin:
    """The store directory a dataset opened, held open: (device, inode) and a directory descriptor.

    Renaming a rebuilt store into place (pipeline.atomic) gives the path a new inode; files opened
    relative to the held descriptor still come from the store the index was read from, and a file
    the rebuild's cleanup removed is reported as a replacement, not read as fill values.
    """

    def __init__(self, path: Path, generation: tuple[int, int]):
        self.path, self.generation = path, generation
        self.fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
        if _generation_of(os.fstat(self.fd)) != generation:
            os.close(self.fd)
            raise _replaced(path)

    def check(self) -> None:
        try:
            now = _generation_of(os.stat(self.path))
        except FileNotFoundError:
            now = None
        if now != self.generation:
            raise _replaced(self.path)

    def close(self) -> None:
        os.close(self.fd)


def _generation_of(st: os.stat_result) -> tuple[int, int]:
    return (st.st_dev, st.st_ino)


def _replaced(path: Path) -> StoreError:
    return StoreError(f"{path}: replaced by a rebuild since this dataset was opened; open a new PatchDataset")


def _pinned(path: Path, read: Any, tries: int = 5) -> tuple[tuple[int, int], Any]:
    """``read()`` of the store at ``path`` and the generation it came from (retried if a swap hit it)."""
    for _ in range(tries):
        try:
            before = _generation_of(os.stat(path))
            value = read()
            if _generation_of(os.stat(path)) == before:
                return before, value
        except FileNotFoundError:
            pass
    raise StoreError(f"{path}: replaced {tries} times while its index was read; try again when the rebuild is done")


class ShardReader:
    """Reads single chunks (patches) of a sharded Zarr v3 array, local or remote.

    Every chunk's crc32c is checked before it is decompressed and each shard index's crc32c
    once per shard; the decompressed length must be exact. Damage raises StoreError naming the
    store, the array and the patch: flipped bytes, a truncated shard, a missing shard file or
    an unwritten chunk (the patch store writes every chunk, so ``missing="error"``; pass
    ``missing="fill"`` for generic Zarr arrays whose holes mean the fill value).
    """

    def __init__(
        self,
        array: str | os.PathLike[str],
        max_open_files: int = MAX_OPEN_FILES,
        *,
        remote: Remote | None = None,
        cache_dir: str | os.PathLike[str] | None = None,
        missing: str = "error",
        pin: _Pin | None = None,
    ):
        if missing not in ("error", "fill"):
            raise ValueError(f"missing={missing!r}; expected 'error' or 'fill'")
        self.missing = missing
        if remote is None:
            self.dir = Path(array)
            self.store, self.name = str(self.dir.parent), self.dir.name
            meta = json.loads((self.dir / "zarr.json").read_text())
            self.layout = ChunkLayout(meta, str(self.dir))
            self.source: LocalShards | RemoteShards = LocalShards(self.dir, self.layout, max_open_files, pin)
        else:
            self.store, self.name = remote.url, str(array)
            raw = remote.get(f"{self.name}/zarr.json")
            if raw is None:
                raise StoreError(f"{remote.url}: no array {self.name!r} (no {self.name}/zarr.json)")
            self.layout = ChunkLayout(json.loads(raw), remote.where(self.name))
            self.source = RemoteShards(remote, self.name, self.layout, cache_dir)
        self.shape, self.dtype = self.layout.shape, self.layout.dtype
        self._index: dict[int, np.ndarray | None] = {}
        self._local = threading.local()

    def _fail(self, i: int, what: str) -> StoreError:
        return StoreError(f"{self.store}: array {self.name!r}, patch {i}: {what}")

    def _shard_index(self, shard: int, i: int) -> tuple[np.ndarray | None, int]:
        """(index entries, or None for a missing shard file; the shard's payload size)."""
        if shard in self._index:
            return self._index[shard]  # type: ignore[return-value]
        lay = self.layout
        got = self.source.index(shard)
        if got is None:
            entry: tuple[np.ndarray | None, int] = (None, 0)
        else:
            raw, size = got
            body = raw[: lay.per_shard * 16]
            if len(raw) != lay.index_bytes or size < lay.index_bytes or (
                    lay.index_crc and crc32c(body) != int.from_bytes(raw[-4:], "little")):  # fmt: skip
                raise self._fail(i, f"shard {shard} ({self.source.where(shard)}): index is truncated or fails its "
                                    "crc32c check")  # fmt: skip
            idx = np.frombuffer(body, dtype="<u8").reshape(lay.per_shard, 2)
            payload = (0, size - lay.index_bytes) if lay.index_at_end else (lay.index_bytes, size)
            used = idx[:, 0] != EMPTY
            ends = idx[used, 0] + idx[used, 1]
            if used.any() and (idx[used, 0].min() < payload[0] or ends.max() > payload[1]):
                raise self._fail(i, f"shard {shard} ({self.source.where(shard)}): index points outside the "
                                    f"{size}-byte shard file (truncated?)")  # fmt: skip
            entry = (idx, size)
        self._index[shard] = entry  # type: ignore[assignment]
        return entry

    def _decompressor(self):
        d = getattr(self._local, "d", None)
        if d is None:
            d = self._local.d = zstandard.ZstdDecompressor()
        return d

    def _decode(self, i: int, raw, out: np.ndarray) -> None:
        lay = self.layout
        if not lay.chunk_ok(raw):
            raise self._fail(i, "chunk fails its crc32c check: the stored bytes are corrupted")
        body = memoryview(raw)[:-4] if lay.crc else memoryview(raw)
        view = memoryview(out).cast("B")
        if lay.zstd:
            got, extra = 0, b""
            try:
                with self._decompressor().stream_reader(body) as reader:
                    while got < lay.nbytes and (n := reader.readinto(view[got:])):
                        got += n
                    extra = reader.read(1)
            except zstandard.ZstdError as exc:
                raise self._fail(i, f"chunk does not decompress ({exc})") from None
        else:
            got, extra = min(len(body), lay.nbytes), body[lay.nbytes : lay.nbytes + 1]
            view[:got] = body[:got]
        if got != lay.nbytes or extra:
            raise self._fail(i, f"chunk decodes to {'more than ' if extra else ''}{got} bytes, expected {lay.nbytes}")

    def read(self, i: int) -> np.ndarray:
        """Chunk ``i`` (one patch) as a new writable array of shape ``shape[1:]``."""
        out = np.empty((1, *self.shape[1:]), dtype=self.dtype)
        self.read_into([i], out)
        return out[0]

    def read_into(self, indices: Sequence[int], out: np.ndarray) -> None:
        """Decode chunks ``indices`` straight into ``out[k]`` (no per-patch allocation or copy); all
        chunks are requested in one call (from a remote store: concurrent ranged GETs)."""
        lay = self.layout
        by_shard: dict[int, list[tuple[int, int]]] = {}
        for k, i in enumerate(indices):
            i = int(i)
            if not 0 <= i < self.shape[0]:
                raise IndexError(f"{self.store}: array {self.name!r}: patch {i} out of range 0..{self.shape[0] - 1}")
            by_shard.setdefault(i // lay.per_shard, []).append((k, i))
        todo, spans = [], []
        for shard, items in by_shard.items():
            idx, _ = self._shard_index(shard, items[0][1])
            for k, i in items:
                if idx is None:
                    if self.missing == "fill":
                        out[k] = lay.fill
                        continue
                    raise self._fail(i, f"shard file {self.source.where(shard)} is missing (deleted or never written)")
                offset, nbytes = (int(v) for v in idx[i % lay.per_shard])
                if offset == EMPTY and nbytes == EMPTY:
                    if self.missing == "fill":
                        out[k] = lay.fill
                        continue
                    raise self._fail(i, f"chunk missing from shard {self.source.where(shard)} (index entry empty)")
                todo.append((k, i))
                spans.append((shard, offset, nbytes))
        if not spans:
            return
        try:
            raws = self.source.chunks(spans)
        except FileNotFoundError as exc:
            raise self._fail(todo[0][1], f"shard file {exc} vanished while reading") from None
        except SpanError as exc:
            raise self._fail(todo[exc.pos][1], str(exc)) from None
        for (k, i), raw, (shard, _, nbytes) in zip(todo, raws, spans):
            if len(raw) != nbytes:
                raise self._fail(i, f"shard {self.source.where(shard)} is truncated: got {len(raw)} of "
                                    f"{nbytes} chunk bytes")  # fmt: skip
            self._decode(i, raw, out[k])

    def close(self) -> None:
        self.source.close()
        self._index.clear()


class _ZarrReader:
    """zarr-python reads of one array: the reference path and the fallback (its crc32c codec
    still refuses corrupted chunks; the error is re-raised naming store, array and patch)."""

    def __init__(self, array, store: str, name: str):
        self.array, self.store, self.name = array, store, name
        self.shape, self.dtype = tuple(array.shape), np.dtype(array.dtype)

    def read_into(self, indices: Sequence[int], out: np.ndarray) -> None:
        for k, i in enumerate(indices):
            try:
                out[k] = self.array[int(i)]
            except IndexError:
                raise
            except Exception as exc:  # zarr/numcodecs raise ValueError, RuntimeError, ZstdError...
                raise StoreError(f"{self.store}: array {self.name!r}, patch {int(i)}: cannot decode "
                                 f"({type(exc).__name__}: {exc})") from None  # fmt: skip

    def read(self, i: int) -> np.ndarray:
        out = np.empty((1, *self.shape[1:]), self.dtype)
        self.read_into([i], out)
        return out[0]

    def close(self) -> None:
        pass


def _names(v: str | Iterable[str] | None) -> set[str] | None:
    return None if v is None else {v} if isinstance(v, str) else set(v)


def _in_torch_worker() -> bool:
    torch = sys.modules.get("torch")
    return torch is not None and torch.utils.data.get_worker_info() is not None


SHARED_SLOTS = 8  # reusable shared-memory batch buffers per DataLoader worker (docs/loader.md)
_HEADER = mmap.PAGESIZE  # a slot's first page: uint64 counters [shipped (worker), released (main)]
_RELEASE_LOCK = threading.Lock()


class _Slot:
    """One reusable shared batch buffer of a DataLoader worker: an anonymous memfd (nothing in
    /dev/shm; freed by the kernel when the last process unmaps it), mapped once, so its pages are
    faulted in once and not at every batch. A header page holds two counters, each written by one
    side only: batches shipped (worker) and batches released (main). Free when they are equal and
    the worker itself holds no view of it."""

    def __init__(self, nbytes: int):
        self.capacity = -(-nbytes // mmap.PAGESIZE) * mmap.PAGESIZE
        self.size = _HEADER + self.capacity
        self.fd = os.memfd_create("sareo-batch", os.MFD_CLOEXEC)
        try:
            os.ftruncate(self.fd, self.size)
            self.mm = mmap.mmap(self.fd, self.size)
        except BaseException:
            os.close(self.fd)
            raise
        self.counters = np.frombuffer(self.mm, "<u8", 2)
        self.local: weakref.ref | None = None  # the worker-side array while the worker fills or holds it

    def free(self) -> bool:
        return (self.local is None or self.local() is None) and int(self.counters[0]) == int(self.counters[1])

    def close(self) -> None:
        del self.counters
        self.mm.close()
        os.close(self.fd)


class _SlotPool:
    """This process's slots (at most SHARED_SLOTS); reset after a fork."""

    def __init__(self) -> None:
        self.pid = os.getpid()
        self.slots: list[_Slot] = []
        self.cannot_grow = False  # a slot could not be made: do not retry (and log) at every batch

    def take(self, nbytes: int) -> _Slot | None:
        """A free slot of at least ``nbytes``, a new one while the pool is not full, else None."""
        spare = None
        for slot in self.slots:
            if slot.free():
                if slot.capacity >= nbytes:
                    return slot
                spare = slot
        if len(self.slots) >= SHARED_SLOTS or self.cannot_grow:
            if spare is None or self.cannot_grow:
                return None  # every slot still held downstream: the caller allocates a fresh block
            self.slots.remove(spare)  # batches grew: replace a free slot that is too small
            spare.close()
        try:
            self.slots.append(_Slot(nbytes))
        except OSError as exc:  # out of descriptors or memory: torch's own shared memory still works
            log.warning("no shared batch slot (%s); batches that find no free slot use fresh shared memory", exc)
            self.cannot_grow = True
            return None
        return self.slots[-1]


_pool: _SlotPool | None = None


def _slot_pool() -> _SlotPool | None:
    global _pool
    if not hasattr(os, "memfd_create"):
        return None  # not Linux: torch's own shared memory, one fresh block per batch
    if _pool is None or _pool.pid != os.getpid():
        _pool = _SlotPool()
    return _pool


class SharedBatch(dict):
    """A batch decoded inside a DataLoader worker into one of its reusable slots. Pickled (by the
    worker's result queue), each layer still in the slot travels as (memfd, offset, shape): the
    receiving process maps the same pages and gets a plain dict of tensors, and releases the slot
    when the last tensor (or view of one) is freed. Values replaced after the read are pickled
    as usual."""

    def __init__(self, data: dict[str, Any], slot: _Slot, layout: dict[str, tuple[int, int, str, tuple[int, ...]]]):
        super().__init__(data)
        self._slot, self._layout = slot, layout
        self._views = {k: data[k] for k in layout}

    def __reduce__(self):
        from multiprocessing.reduction import DupFd

        shipped = {k: spec for k, spec in self._layout.items() if k in self and self[k] is self._views[k]}
        if not shipped:
            return (dict, (dict(self),))
        rest = {k: v for k, v in self.items() if k not in shipped}
        self._slot.counters[0] += 1  # busy until the receiver releases it
        return (_rebuild_shared, (DupFd(self._slot.fd), self._slot.size, shipped, rest, list(self)))


def _rebuild_shared(df, size: int, layout: dict[str, tuple[int, int, str, tuple[int, ...]]], rest: dict[str, Any],
                    keys: list[str]) -> dict[str, Any]:  # fmt: skip
    """The receiving side of SharedBatch: one mapping, tensors over it, the slot released with it."""
    import torch

    fd = df.detach()
    try:
        mm = mmap.mmap(fd, size)
    finally:
        os.close(fd)
    base = np.frombuffer(mm, np.uint8, size - _HEADER, _HEADER)
    layers = {k: torch.from_numpy(base[at : at + n].view(dt).reshape(shape))
              for k, (at, n, dt, shape) in layout.items()}  # fmt: skip
    weakref.finalize(base, _release, mm).atexit = False  # every tensor and view holds ``base``
    return {k: layers[k] if k in layers else rest[k] for k in keys}


def _release(mm: mmap.mmap) -> None:
    with _RELEASE_LOCK:
        released = np.frombuffer(mm, "<u8", 1, 8)
        released[0] += 1  # one aligned 8-byte store: the worker never reads half of it


def _buffers(specs: dict[str, tuple[tuple[int, ...], np.dtype]], as_torch: bool) -> dict[str, Any]:
    """Batch buffers, one per layer: numpy, or torch tensors. Inside a DataLoader worker all layers
    are views of one reusable shared slot (a SharedBatch): fresh shared memory costs a page
    fault per 4 KiB at every batch, about as much as decoding it (docs/loader.md)."""
    if not as_torch:
        return {k: np.empty(shape, dtype) for k, (shape, dtype) in specs.items()}
    import torch

    def tdtype(dtype: np.dtype):
        return torch.from_numpy(np.empty(0, dtype.newbyteorder("="))).dtype

    if not _in_torch_worker():
        return {k: torch.empty(shape, dtype=tdtype(dtype)) for k, (shape, dtype) in specs.items()}
    sizes = {k: int(np.prod(shape)) * dtype.itemsize for k, (shape, dtype) in specs.items()}
    layout, at = {}, 0
    for k, (shape, dtype) in specs.items():
        layout[k] = (at, sizes[k], dtype.newbyteorder("=").str, tuple(shape))
        at += sizes[k] + -sizes[k] % 64  # keep every layer 64-byte aligned
    pool = _slot_pool()
    slot = pool.take(at) if pool is not None else None
    if slot is None:  # torch's shared memory: a fresh block, freed by torch
        block = torch.empty(0, dtype=torch.uint8).set_(torch.UntypedStorage._new_shared(max(at, 1)))
        return {k: block[o : o + n].view(tdtype(np.dtype(dt))).view(shape) for k, (o, n, dt, shape) in layout.items()}
    base = np.frombuffer(slot.mm, np.uint8, slot.capacity, _HEADER)
    slot.local = weakref.ref(base)
    data = {k: torch.from_numpy(base[o : o + n].view(dt).reshape(shape)) for k, (o, n, dt, shape) in layout.items()}
    return SharedBatch(data, slot, layout)


def _as_numpy(buf) -> np.ndarray:
    return buf if isinstance(buf, np.ndarray) else buf.numpy()


class Batch(Sequence):
    """What ``__getitems__`` returns: the sequence of samples torch's contract asks for (each a dict
    of views into the batch buffers, made only when asked for, so torch's default collate still
    works), plus ``.data``, the batch already stacked, which ``collate`` hands over without a copy."""

    def __init__(self, data: dict[str, Any]):
        self.data = data

    def __len__(self) -> int:
        return len(self.data["id"])

    def __getitem__(self, b):
        if isinstance(b, slice):
            return [self[k] for k in range(*b.indices(len(self)))]
        if not -len(self) <= b < len(self):
            raise IndexError(f"sample {b} out of range for a batch of {len(self)}")
        return {key: value[b] for key, value in self.data.items()}


def collate(batch: Any) -> Any:
    """DataLoader ``collate_fn`` for PatchDataset: a ``Batch`` is already stacked (no copy; from a
    worker, a SharedBatch that crosses to the main process as its slot), anything else goes to
    torch's default collate."""
    if isinstance(batch, Batch):
        return batch.data
    from torch.utils.data import default_collate

    return default_collate(batch)


class PatchDataset:
    """Patches of one or many region stores, filtered by split, region and urban/rural class.

    ``stores`` are local paths or ``s3://`` / ``https://`` URLs (see ``pipeline.remote``; remote
    chunk bytes can be kept in ``cache_dir``). ``ds[i]`` is a dict with the requested
    ``layers`` (``sar`` (1,H,W) float32 dB with NaN, ``eo`` (3,H,W) uint8, ``label`` (H,W) uint8
    with 255 = no data) plus ``id``, ``region``, ``split`` and any extra per-patch ``meta``
    fields. ``ds.read_batch(indices)`` gives the same stacked along a first axis, decoded
    straight into one buffer per layer; ``ds.loader(...)`` is a DataLoader that uses it. With
    ``as_torch`` the arrays are torch tensors (torch is imported only then). Picklable; safe
    under DataLoader workers.
    """

    def __init__(
        self,
        stores: str | os.PathLike[str] | Sequence[str | os.PathLike[str]],
        split: str | Iterable[str] | None = None,
        regions: str | Iterable[str] | None = None,
        urban: str | bool | None = None,
        layers: Sequence[str] = ("sar", "eo", "label"),
        as_torch: bool = False,
        meta: Sequence[str] = (),
        fast: bool = True,
        cache_dir: str | os.PathLike[str] | None = None,
    ):
        paths = [stores] if isinstance(stores, (str, os.PathLike)) else list(stores)
        self.stores: list[str | Path] = [str(p).rstrip("/") if is_url(p) else Path(p) for p in paths]
        unknown = [x for x in layers if x not in IMAGE_ARRAYS]
        if unknown:
            raise ValueError(f"layers: unknown {unknown}; choose from {list(IMAGE_ARRAYS)}")
        self.layers, self.as_torch, self.fast, self.meta_fields = tuple(layers), as_torch, fast, tuple(meta)
        self.cache_dir = None if cache_dir is None else Path(cache_dir)
        want_split, want_region = _names(split), _names(regions)
        want_urban = {True: "urban", False: "rural"}.get(urban, urban) if isinstance(urban, bool) else urban
        if want_urban not in (None, "urban", "rural"):
            raise ValueError(f"urban: {urban!r}; expected 'urban', 'rural', True, False or None")
        store_ids, local, self._meta = [], [], []
        self.regions: list[str] = []
        self._generations: list[tuple[int, int] | None] = []
        for k, path in enumerate(self.stores):
            if isinstance(path, Path):  # local: remember which build of the store the index came from
                generation, group = _pinned(path, lambda p=path: self._read_group(p))
            else:
                generation, group = None, open_store(path)
            self._generations.append(generation)
            attrs = dict(group.attrs)
            region = str(attrs.get("region", Path(str(path)).stem))
            ur = attrs.get("urban_rural")
            ur_class = ur.get("class") if isinstance(ur, dict) else ur
            self.regions.append(region)
            fields = {name: self._read_field(group, path, name) for name in ("id", "split", *self.meta_fields)}
            self._meta.append(fields)
            n = len(fields["id"])
            for name in self.layers:
                if group[name].shape[0] != n:
                    raise StoreError(f"{path}: {n} ids but {group[name].shape[0]} patches in array {name!r}")
            keep = np.ones(n, bool)
            if want_region is not None and region not in want_region:
                keep[:] = False
            if want_urban is not None and ur_class != want_urban:
                keep[:] = False
            if want_split is not None:
                keep &= np.isin(fields["split"], list(want_split))
            sel = np.flatnonzero(keep)
            store_ids.append(np.full(len(sel), k, np.int32))
            local.append(sel.astype(np.int64))
        self._store = np.concatenate(store_ids) if store_ids else np.zeros(0, np.int32)
        self._local = np.concatenate(local) if local else np.zeros(0, np.int64)
        self._pid: int | None = None
        self._readers: list[dict[str, Any]] = []

    def _read_group(self, path: Path):
        """The store's group with the fields the dataset keeps read (inside one generation)."""
        group = open_store(path)
        for name in ("id", "split", *self.meta_fields):
            self._read_field(group, path, name)
        return group

    @staticmethod
    def _read_field(group, path: str | Path, name: str) -> np.ndarray:
        try:
            values = group[name][:]
        except KeyError:
            raise StoreError(f"{path}: no metadata array {name!r}") from None
        except Exception as exc:  # a corrupted metadata chunk fails zarr's crc32c codec
            raise StoreError(f"{path}: array {name!r}: cannot decode ({type(exc).__name__}: {exc})") from None
        if values.dtype.kind in "biuf":
            return np.asarray(values)
        return np.asarray([str(v) for v in values.tolist()], dtype=object)

    def __len__(self) -> int:
        return len(self._local)

    def _open(self) -> list[dict[str, Any]]:
        """Readers for this process, (re)opened after a fork so no file handle is shared."""
        if self._pid != os.getpid():
            if self._pid is not None:
                for readers in self._readers:
                    for r in readers.values():
                        r.close()
            self._readers = [self._make_readers(p, g) for p, g in zip(self.stores, self._generations, strict=True)]
            self._pid = os.getpid()
        return self._readers

    def _make_readers(self, path: str | Path, generation: tuple[int, int] | None = None) -> dict[str, Any]:
        out: dict[str, Any] = {}
        group = None
        remote = open_remote(path) if isinstance(path, str) else None
        pin = _Pin(path, generation) if generation is not None and isinstance(path, Path) else None
        if pin is not None:
            out["_pin"] = pin
        for name in self.layers:
            if self.fast:
                try:
                    if remote is not None:
                        out[name] = ShardReader(name, remote=remote, cache_dir=self.cache_dir)
                    else:
                        out[name] = ShardReader(path / name, MAX_OPEN_FILES, pin=pin)
                    continue
                except UnsupportedLayout as exc:
                    log.warning("fast path off for %s/%s: %s", path, name, exc)
            group = group if group is not None else open_store(path)
            out[name] = _ZarrReader(group[name], str(path), name)
        return out

    def _locate(self, indices: Sequence[int]) -> tuple[np.ndarray, np.ndarray]:
        idx = np.asarray(indices, dtype=np.int64).reshape(-1)
        bad = (idx < -len(self)) | (idx >= len(self))
        if bad.any():
            raise IndexError(f"index {int(idx[bad][0])} out of range for {len(self)} patches")
        idx = idx % max(len(self), 1)
        return self._store[idx], self._local[idx]

    def read_batch(self, indices: Sequence[int]) -> dict[str, Any]:
        """Patches ``indices`` stacked: each layer (B, ...) decoded straight into one buffer
        (shared memory inside a DataLoader worker), plus lists ``id``, ``region``, ``split`` and
        one array per ``meta`` field."""
        ks, js = self._locate(indices)
        readers = self._open()
        first = readers[int(ks[0])] if len(ks) else None
        specs = {name: ((len(ks), *(first[name].shape[1:] if first else ())),
                        first[name].dtype if first else np.dtype(IMAGE_ARRAYS[name][0])) for name in self.layers}  # fmt: skip
        out: dict[str, Any] = _buffers(specs, self.as_torch)
        for name in self.layers:
            shape = specs[name][0]
            arr = _as_numpy(out[name])
            for k in np.unique(ks).tolist():
                rows = np.flatnonzero(ks == k)
                reader = readers[k][name]
                if reader.shape[1:] != shape[1:]:
                    raise StoreError(f"{self.stores[k]}: array {name!r} has patches of {reader.shape[1:]}, "
                                     f"another store in the batch {shape[1:]}; batch stores of one patch size")  # fmt: skip
                if len(rows) == len(ks):
                    reader.read_into(js, arr)
                else:
                    part = np.empty((len(rows), *shape[1:]), arr.dtype)
                    reader.read_into(js[rows], part)
                    arr[rows] = part
        out["id"] = [self._meta[k]["id"][j] for k, j in zip(ks.tolist(), js.tolist())]
        out["region"] = [self.regions[k] for k in ks.tolist()]
        out["split"] = [self._meta[k]["split"][j] for k, j in zip(ks.tolist(), js.tolist())]
        for name in self.meta_fields:
            out[name] = np.asarray([self._meta[k][name][j] for k, j in zip(ks.tolist(), js.tolist())])
        return out

    def __getitems__(self, indices: Sequence[int]) -> Batch:
        """torch's batched-fetch hook (map-style datasets): one ``read_batch`` for the whole batch."""
        return Batch(self.read_batch(indices))

    def __getitem__(self, i: int) -> dict[str, Any]:
        if isinstance(i, (list, tuple, np.ndarray)):
            return self.read_batch(i)  # DataLoader(batch_size=None, sampler=BatchSampler(...)) passes lists
        if not -len(self) <= i < len(self):
            raise IndexError(f"index {i} out of range for {len(self)} patches")
        i = int(i) % len(self)
        k, j = int(self._store[i]), int(self._local[i])
        readers = self._open()[k]
        item: dict[str, Any] = {name: readers[name].read(j) for name in self.layers}  # new writable arrays
        item["id"] = self._meta[k]["id"][j]
        item["region"] = self.regions[k]
        item["split"] = self._meta[k]["split"][j]
        for name in self.meta_fields:
            item[name] = self._meta[k][name][j]
        if self.as_torch:
            import torch

            for name in self.layers:
                item[name] = torch.from_numpy(item[name])
        return item

    def loader(self, batch_size: int = 16, shuffle: bool = False, num_workers: int = 2, **kwargs: Any):
        """A ``torch.utils.data.DataLoader`` with the recommended settings (docs/loader.md): batched
        reads with ``collate``, persistent workers, 4 batches prefetched per worker."""
        from torch.utils.data import DataLoader

        if num_workers > 0:
            kwargs.setdefault("persistent_workers", True)
            kwargs.setdefault("prefetch_factor", 4)
        return DataLoader(self, batch_size=batch_size, shuffle=shuffle, num_workers=num_workers, collate_fn=collate,
                          **kwargs)  # fmt: skip

    def patch_ids(self) -> np.ndarray:
        """ids of the selected patches, in dataset order."""
        return np.array([self._meta[k]["id"][j] for k, j in zip(self._store.tolist(), self._local.tolist())], object)

    def __getstate__(self) -> dict[str, Any]:
        state = self.__dict__.copy()
        state["_pid"], state["_readers"] = None, []  # reopened by whoever unpickles
        return state

    def close(self) -> None:
        """Close this process's open shard files (they are reopened on the next read)."""
        if self._pid == os.getpid():
            for readers in self._readers:
                for r in readers.values():
                    r.close()
        self._pid, self._readers = None, []
