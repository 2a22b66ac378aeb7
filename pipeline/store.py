"""The patch store: one Zarr v3 group per region, its schema, and small readers for it.

Shared by the patches stage (writes), the training loader and the publish stage (read).
Each image chunk is one patch and shards hold ``shard_patches`` patches, so a region is a
few hundred files and a random read decodes exactly one patch. Every chunk (image and
metadata) ends in a crc32c of its compressed bytes (codec chain ``bytes, zstd, crc32c``; shard
indexes carry their own crc32c), so flipped bytes fail loudly in sareo's loader, in zarr-python
and in xarray instead of decoding to wrong values. Every array carries
``dimension_names`` so ``xarray.open_zarr`` gives named dimensions. SAR and EO get their own
band dimension (``sar_band``, ``eo_band``): xarray needs one size per dimension name.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from pipeline.atomic import atomic_path, dumps_json

N_CLASSES = 25
LABEL_NODATA = 255  # label value of pixels without a label (or without data in the patch's scene)
PATCH_ORDER = "split (train, val, test), then scene (oldest first), then row, then col"

# name: (dtype, dimension names after "patch", fill value)
IMAGE_ARRAYS: dict[str, tuple[str, tuple[str, ...], Any]] = {
    "sar": ("float32", ("sar_band", "y", "x"), float("nan")),
    "eo": ("uint8", ("eo_band", "y", "x"), 0),
    "label": ("uint8", ("y", "x"), 255),
}
BANDS = {"sar": 1, "eo": 3}

# Per-patch metadata: name -> numpy dtype ("str" = zarr v3 string).
META_ARRAYS: dict[str, str] = {
    "id": "str",
    "row": "int32",
    "col": "int32",
    "lon_min": "float64",
    "lat_min": "float64",
    "lon_max": "float64",
    "lat_max": "float64",
    "lon": "float64",
    "lat": "float64",
    "gsd_m": "float32",
    "sar_datetime": "str",
    "eo_datetime": "str",
    "gap_days": "float32",
    "sar_item": "str",
    "calibrated": "bool",
    "split": "str",
    "urban_rural": "str",
    "residential_share": "float32",
    "nonres_share": "float32",
    "valid_share": "float32",
    # the scene a patch was cut from; `cell` is the same for every scene's patch of the same ground
    "scene": "str",
    "provider": "str",
    "polarization": "str",
    "cell": "str",
    "registration_flagged": "bool",
    "reg_local_error_m": "float32",  # misfit of the registration at the nearest tie points (NaN: not applied)
    "reg_tie_distance_m": "float32",  # distance to the nearest agreeing tie point
}
HIST_ARRAY = "class_hist"  # (patch, class) int32: pixel count per class id 0..24


class StoreError(ValueError):
    """A patch store or store input that does not follow the schema."""


def chunk_compressors(level: int) -> tuple:
    """Bytes-to-bytes codecs of every array: zstd, then a crc32c of the compressed chunk.

    The checksum comes last so a reader verifies it before decompressing: corrupted bytes are
    reported as such, never as a zstd error or as decoded garbage (``pipeline.loader`` relies
    on this order).
    """
    from zarr.codecs import Crc32cCodec, ZstdCodec

    return (ZstdCodec(level=int(level)), Crc32cCodec())


def create_store(
    path: Any,
    n: int,
    size: int = 256,
    shard_patches: int = 256,
    level: int | Mapping[str, int] = 3,
    attrs: Mapping[str, Any] | None = None,
):  # -> zarr.Group
    """Create an empty store at ``path`` (which must not exist yet) with all arrays of ``n`` patches.

    ``path`` is a local path or a zarr store object (``pipeline.storage.open_output_store`` yields
    either).
    Chunk = one patch, shard = ``shard_patches`` patches, zstd at ``level`` (one int, or per
    image array {"sar", "eo", "label"}; metadata arrays use the ``eo`` level) then crc32c
    (``chunk_compressors``). Every chunk is written even when it equals the fill value, so a
    missing chunk or shard is damage, which the loader reports, never a hole to fill.
    """
    import zarr

    if n < 0 or size < 1 or shard_patches < 1:
        raise StoreError(f"create_store: n={n}, size={size}, shard_patches={shard_patches}; expected n>=0, others>=1")
    levels = dict.fromkeys(IMAGE_ARRAYS, level) if isinstance(level, int) else {**dict.fromkeys(IMAGE_ARRAYS, 3), **level}
    unknown = sorted(set(levels) - set(IMAGE_ARRAYS))
    if unknown:
        raise StoreError(f"compression level for unknown array(s) {unknown}; expected {list(IMAGE_ARRAYS)}")
    target = str(path) if isinstance(path, (str, os.PathLike)) else path
    group = zarr.open_group(store=target, mode="w-", zarr_format=3)
    if attrs:
        group.attrs.update(canonical(attrs))
    for name, (dtype, dims, fill) in IMAGE_ARRAYS.items():
        band = (BANDS[name],) if name in BANDS else ()
        chunk = (1, *band, size, size)
        group.create_array(
            name,
            shape=(n, *band, size, size),
            chunks=chunk,
            shards=(shard_patches, *band, size, size),
            dtype=dtype,
            fill_value=fill,
            compressors=chunk_compressors(levels[name]),
            dimension_names=("patch", *dims),
            config={"write_empty_chunks": True},
        )
    meta_chunk = (max(n, 1),)
    for name, dtype in META_ARRAYS.items():
        group.create_array(
            name,
            shape=(n,),
            chunks=meta_chunk,
            dtype=str if dtype == "str" else dtype,
            fill_value="" if dtype == "str" else (float("nan") if dtype.startswith("float") else 0),
            compressors=chunk_compressors(levels["eo"]),
            dimension_names=("patch",),
        )
    group.create_array(
        HIST_ARRAY,
        shape=(n, N_CLASSES),
        chunks=(max(n, 1), N_CLASSES),
        dtype="int32",
        fill_value=0,
        compressors=chunk_compressors(levels["eo"]),
        dimension_names=("patch", "class"),
    )
    return group


def write_patches(group, start: int, layers: Mapping[str, np.ndarray]) -> None:
    """Write image rows ``start:start+len`` of each array in ``layers`` (names of IMAGE_ARRAYS).

    zarr keeps ``write_empty_chunks`` per opened array, not in the metadata, so every write goes
    through here: a patch equal to the fill value is stored too, and a missing chunk is damage.
    """
    for name, values in layers.items():
        if name not in IMAGE_ARRAYS:
            raise StoreError(f"write_patches: {name!r} is not an image array; expected {list(IMAGE_ARRAYS)}")
        group[name].with_config({"write_empty_chunks": True})[start : start + len(values)] = values


def write_shards(group, start: int, layers: Mapping[str, np.ndarray]) -> None:
    """Write image rows ``start:start+len`` that are whole shards (the last one may end at the
    array's end), so each shard is encoded once and stored in one write (one PUT on S3), never
    merged with a shard already stored. Any other range is refused."""
    import contextlib

    keys = []
    for name, values in layers.items():
        arr = group[name]
        shard, n, end = arr.shards[0], arr.shape[0], start + len(values)
        if start % shard or (end % shard and end != n) or end > n:
            raise StoreError(f"write_shards: {name} rows {start}:{end} are not whole shards of {shard} "
                             f"(array of {n}); buffer whole shards (ShardAssembler)")
        rest = (0,) * (arr.ndim - 1)
        keys += [f"{arr.path}/{arr.metadata.encode_chunk_key((s, *rest))}" for s in range(start // shard,
                                                                                          -(-end // shard))]
    whole = getattr(group.store, "whole", None)
    with whole(keys) if whole else contextlib.nullcontext():
        write_patches(group, start, layers)


class ShardAssembler:
    """Collect row segments of the image layers until a shard is complete, then hand it over whole.

    A shard that straddles two splits gets its rows from two segments written at different times
    (one split's end, the next one's start); the first waits here (its own rows only) for the rest.
    """

    def __init__(self, n: int, shard: int):
        self.n, self.shard = n, shard
        self.parts: dict[int, list[tuple[int, dict[str, np.ndarray]]]] = {}

    def add(self, start: int, layers: Mapping[str, np.ndarray]) -> tuple[int, dict[str, np.ndarray]] | None:
        """Add rows ``start:start+len`` (inside one shard); the whole shard ``(start, layers)`` once complete."""
        k = start // self.shard
        length = len(next(iter(layers.values())))
        if (start + length - 1) // self.shard != k:
            raise StoreError(f"ShardAssembler: rows {start}:{start + length} span shards; add one shard's rows at a time")
        parts = self.parts.setdefault(k, [])
        parts.append((start, dict(layers)))
        a, b = k * self.shard, min(self.n, (k + 1) * self.shard)
        if sum(len(next(iter(p.values()))) for _, p in parts) < b - a:
            return None
        del self.parts[k]
        parts.sort(key=lambda x: x[0])
        if len(parts) == 1:
            return a, parts[0][1]
        return a, {name: np.concatenate([p[name] for _, p in parts]) for name in parts[0][1]}

    def pending(self) -> list[int]:
        """Shards still waiting for rows (empty once every row was added)."""
        return sorted(self.parts)


def write_meta(group, meta: Mapping[str, Any]) -> None:
    """Write per-patch metadata arrays (all of META_ARRAYS and ``class_hist``) into ``group``."""
    n = group["sar"].shape[0]
    missing = [k for k in (*META_ARRAYS, HIST_ARRAY) if k not in meta]
    if missing:
        raise StoreError(f"write_meta: missing metadata field(s) {missing}")
    unknown = sorted(set(meta) - set(META_ARRAYS) - {HIST_ARRAY})
    if unknown:
        raise StoreError(f"write_meta: unknown metadata field(s) {unknown}; schema: {list(META_ARRAYS)}")
    import zarr

    for name, dtype in META_ARRAYS.items():
        values = np.asarray(meta[name], dtype=object if dtype == "str" else dtype)
        if values.shape != (n,):
            raise StoreError(f"write_meta: {name} has shape {values.shape}; expected ({n},)")
        if n:
            # every array gets its chunk, even all-default ones: a missing chunk is then damage, not a default
            with zarr.config.set({"array.write_empty_chunks": True}):
                group[name][:] = values.astype(str) if dtype == "str" else values
    hist = np.asarray(meta[HIST_ARRAY], dtype="int32")
    if hist.shape != (n, N_CLASSES):
        raise StoreError(f"write_meta: {HIST_ARRAY} has shape {hist.shape}; expected ({n}, {N_CLASSES})")
    if n:
        group[HIST_ARRAY][:] = hist


def write_store(
    path: str | os.PathLike[str],
    sar: np.ndarray,
    eo: np.ndarray,
    label: np.ndarray,
    meta: Mapping[str, Any],
    attrs: Mapping[str, Any] | None = None,
    shard_patches: int = 256,
    level: int | Mapping[str, int] = 3,
) -> Path:
    """Write a whole (small, in-memory) store atomically; the patches stage streams instead."""
    sar, eo, label = np.asarray(sar), np.asarray(eo), np.asarray(label)
    n, size = label.shape[0], label.shape[-1]
    if sar.shape != (n, 1, size, size) or eo.shape != (n, 3, size, size) or label.shape != (n, size, size):
        raise StoreError(f"write_store: shapes sar {sar.shape}, eo {eo.shape}, label {label.shape} do not agree")
    with atomic_path(path) as tmp:
        group = create_store(tmp, n, size=size, shard_patches=shard_patches, level=level, attrs=attrs)
        if n:
            write_patches(group, 0, {"sar": sar.astype("float32"), "eo": eo.astype("uint8"),
                                     "label": label.astype("uint8")})  # fmt: skip
        write_meta(group, meta)
    return Path(path)


def canonical(obj: Any) -> Any:
    """Attributes as sorted-key JSON values, so the same inputs give the same zarr.json bytes.

    numpy scalars become Python numbers and non-finite floats become null (JSON has no NaN).
    """

    def clean(v: Any) -> Any:
        if isinstance(v, Mapping):
            return {str(k): clean(x) for k, x in v.items()}
        if isinstance(v, (list, tuple, np.ndarray)):
            return [clean(x) for x in (v.tolist() if isinstance(v, np.ndarray) else v)]
        if isinstance(v, np.generic):
            v = v.item()
        if isinstance(v, float) and not np.isfinite(v):
            return None
        return v

    return json.loads(dumps_json(clean(obj)))


def open_store(path: str | os.PathLike[str], mode: str = "r"):  # -> zarr.Group
    """Open a patch store (read-only by default; ``s3://`` and ``https://`` URLs read-only, see
    ``pipeline.remote``); fail clearly when it is not one."""
    import zarr

    from pipeline.remote import is_url, open_remote, zarr_store

    if is_url(path):
        if mode != "r":
            raise StoreError(f"{path}: remote stores open read-only (mode={mode!r})")
        _check_committed(str(path))
        store = zarr_store(open_remote(str(path)))
        if store.remote.get("zarr.json") is None:
            raise StoreError(f"{path}: not a Zarr v3 store (no zarr.json)")
        group = zarr.open_group(store=store, mode="r", zarr_format=3)
    else:
        p = Path(path)
        if not (p / "zarr.json").is_file():
            raise StoreError(f"{p}: not a Zarr v3 store (no zarr.json)")
        group = zarr.open_group(str(p), mode=mode, zarr_format=3)
    missing = [k for k in (*IMAGE_ARRAYS, "split") if not _has_array(group, k)]
    if missing:
        raise StoreError(f"{path}: not a patch store, missing array(s) {missing}")
    return group


def _check_committed(url: str) -> None:
    """An ``s3://`` store must be committed (``pipeline.storage``); https copies are static."""
    if url.startswith("s3://"):
        from pipeline.storage import verify

        if verify(url) is None:
            raise StoreError(f"{url}: no such store (nothing under that prefix)")


def _has_array(group, name: str) -> bool:
    try:
        group[name]
    except KeyError:
        return False
    return True


def store_attrs(path: str | os.PathLike[str]) -> dict[str, Any]:
    """Root attributes (region, urban_rural, grid, legend, splits, provenance, licences, ...)."""
    from pipeline.remote import is_url, open_remote

    where = f"{path}/zarr.json" if is_url(path) else Path(path) / "zarr.json"
    if is_url(path):
        _check_committed(str(path))
    try:
        text = open_remote(str(path)).get("zarr.json") if is_url(path) else Path(where).read_text()
        if text is None:
            raise OSError("no such object")
        return dict(json.loads(text)["attributes"])
    except (OSError, KeyError, json.JSONDecodeError) as exc:
        raise StoreError(f"{where}: cannot read store attributes ({exc})") from exc


def _as_str(values: np.ndarray) -> np.ndarray:
    return np.asarray([str(v) for v in values.tolist()], dtype=object)


def read_meta(path: str | os.PathLike[str], columns: list[str] | None = None):  # -> pandas.DataFrame
    """Per-patch metadata as a DataFrame (one row per patch, in store order; ``patch`` = index)."""
    import pandas as pd

    group = open_store(path)
    cols = list(columns) if columns is not None else [k for k in META_ARRAYS if k in group]
    data: dict[str, Any] = {}
    for name in cols:
        if name not in group:
            raise StoreError(f"{path}: no metadata array {name!r}")
        values = group[name][:]
        data[name] = _as_str(values) if META_ARRAYS.get(name) == "str" else np.asarray(values)
    df = pd.DataFrame(data)
    df.index.name = "patch"
    return df


def read_class_hist(path: str | os.PathLike[str]) -> np.ndarray:
    """(patch, 25) int32 pixel counts per class."""
    return np.asarray(open_store(path)[HIST_ARRAY][:])


def store_stats(path: str | os.PathLike[str]) -> dict[str, int]:
    """Size on disk and file count of a store (the 'few large files' figure)."""
    files = [Path(d) / f for d, _, fs in os.walk(path) for f in fs]
    return {"files": len(files), "bytes": int(sum(f.stat().st_size for f in files))}
