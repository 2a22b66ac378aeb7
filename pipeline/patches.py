"""Patches stage: cut the region's grid rasters into a sharded Zarr v3 patch store with leak-free splits.

Two streaming passes over row bands, never the whole grid in memory:
1. validity: SAR-finite and EO-valid pixel counts per patch (summed-area tables at the
   gcd(size, stride) resolution), so nodata and edge patches are dropped on purpose;
2. cutting: one task per shard (``pipeline.execute``: local threads or dask.distributed workers)
   reads its own windows (one per run of overlapping patches and layer), encodes and writes its
   whole shard, and returns its patches' class histograms and shares; the store's metadata is
   written last, from those results in shard order, so the bytes do not depend on the workers.
Between the passes ``pipeline.splits`` assigns splits; patches are stored ordered by split,
then row, then col, so each split is one contiguous slice.
"""

from __future__ import annotations

import dataclasses
import logging
import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar, Literal

import numpy as np

from pipeline import __version__
from pipeline.documents import read_json
from pipeline.execute import Executor, gdal_cache, local
from pipeline.grid import Grid
from pipeline.layout import GridFiles, LabelFiles, RegistrationFiles, SourceFiles
from pipeline.params import param
from pipeline.progress import Progress
from pipeline.provenance import attribution_lines, licences, parse_datetime, sha256_file
from pipeline.scenes import Scene, SceneError, read_scenes
from pipeline.splits import SPLITS, SplitsParams, split_footprints, split_patches
from pipeline.storage import open_output_store, output_location, reopen_output_store
from pipeline.store import LABEL_NODATA, N_CLASSES, PATCH_ORDER, create_store, write_meta, write_shards
from pipeline.tiequality import tie_point_quality

log = logging.getLogger("sareo.patches")

@dataclass(frozen=True)
class PatchesParams:
    """How patches are cut and stored."""

    section: ClassVar[str] = "patches"
    size: int = param(256, "patch edge, grid pixels")
    stride: int = param(128, "step between patch origins, grid pixels")
    min_valid: float = param(0.9, "drop patches with less valid SAR or EO than this share (each separately)")
    shard_patches: int = param(256, "patches per shard file (chunk = one patch)")
    compression_level: int | dict[str, int] = param(3, "zstd level; an int or per layer {sar: .., eo: .., label: ..}")
    band_pixels: int = param(16_000_000, "pixels per layer read at once in the validity pass (bounds memory)")
    gdal_cache_mb: int = param(256, "GDAL block cache bound while reading the grid rasters (its default is 5 % of RAM)")
    flagged_registration: Literal["keep", "drop"] = param(
        "keep", "patches of a scene whose registration is flagged: keep (marked registration_flagged) or drop")

    def __post_init__(self) -> None:
        for key in ("size", "stride", "shard_patches", "band_pixels"):
            if getattr(self, key) < 1:
                raise ValueError(f"{key}: {getattr(self, key)!r}; expected a positive integer")
        if not 0 <= self.min_valid <= 1:
            raise ValueError(f"min_valid: {self.min_valid!r}; expected a share in [0, 1]")
        lvl = self.compression_level
        if isinstance(lvl, dict):
            if set(lvl) - {"sar", "eo", "label"}:
                raise ValueError(f"compression_level: {lvl!r}; keys must be sar, eo, label")
            object.__setattr__(self, "compression_level", dict(sorted(lvl.items())))  # canonical order


MISSING = "missing (expected per docs/DESIGN.md)"


class PatchError(ValueError):
    """A region directory the patches stage cannot use; the message names the file and field."""


# ---------------------------------------------------------------- pure helpers


def patch_origins(height: int, width: int, size: int, stride: int) -> tuple[np.ndarray, np.ndarray]:
    """Top-left (rows, cols) of every whole patch on a height x width grid, row-major.

    The last partial stride at the right and bottom edge is not covered (no padded patches).
    """
    nr = (height - size) // stride + 1 if height >= size else 0
    nc = (width - size) // stride + 1 if width >= size else 0
    rr, cc = np.meshgrid(np.arange(nr) * stride, np.arange(nc) * stride, indexing="ij")
    return rr.ravel().astype(np.int64), cc.ravel().astype(np.int64)


def box_counts(sat: np.ndarray, rows: np.ndarray, cols: np.ndarray, size: int, cell: int) -> np.ndarray:
    """Counts inside each size x size box from a summed-area table with strips of ``cell`` rows.

    ``sat[k, c]`` = count in strips [0, k) and columns [0, c) (shape n_strips+1, width+1).
    """
    k0, k1 = rows // cell, (rows + size) // cell
    return sat[k1, cols + size] - sat[k0, cols + size] - sat[k1, cols] + sat[k0, cols]


def gap_days(sar_time: Any, eo_time: Any) -> float:
    """|EO - SAR| in days, NaN when either time is unknown or unreadable."""
    a, b = parse_datetime(sar_time, strict=False), parse_datetime(eo_time, strict=False)
    return abs((b - a).total_seconds()) / 86400.0 if a and b else float("nan")


def urban_class(labels_json: dict[str, Any]) -> str:
    """The region's urban/rural class from labels.json, read defensively ('unknown' if absent)."""
    for key in ("urban_rural", "urban"):
        v = labels_json.get(key)
        if isinstance(v, dict):
            for k in ("class", "label", "decision"):
                if isinstance(v.get(k), str):
                    return v[k]
        elif isinstance(v, str):
            return v
    return str(labels_json.get("class", "unknown")) if isinstance(labels_json.get("class"), str) else "unknown"


# ---------------------------------------------------------------- inputs


def _truthy(value: Any) -> bool:
    return str(value).strip().lower() in ("1", "true", "yes", "y")


def _open_raster(path: Path, grid: Grid, bands: int = 1):
    """Open a grid raster and check it sits on the region grid."""
    import rasterio

    if not path.is_file():
        raise PatchError(f"{path}: missing (expected per docs/DESIGN.md)")
    ds = rasterio.open(path)
    if (ds.height, ds.width) != grid.shape:
        ds.close()
        raise PatchError(f"{path}: {ds.width}x{ds.height} px; expected the grid's {grid.width}x{grid.height}")
    if not ds.transform.almost_equals(grid.transform):
        ds.close()
        raise PatchError(f"{path}: transform {tuple(ds.transform)[:6]} is not the grid's {tuple(grid.transform)[:6]}")
    if ds.count < bands:
        ds.close()
        raise PatchError(f"{path}: {ds.count} band(s); expected RGB + band 4 valid mask")
    return ds


def _open_labels(labels: LabelFiles, grid: Grid) -> dict[str, Any]:
    """The region's label and zone rasters (zones optional: shares are then NaN)."""
    out = {"label": _open_raster(labels.labels, grid)}
    if labels.zones.is_file():
        out["zones"] = _open_raster(labels.zones, grid)
    else:
        log.warning("%s: missing; residential/nonres shares will be NaN", labels.zones)
    return out


def _open_scene(gridded: GridFiles, scene_id: str, grid: Grid) -> dict[str, Any]:
    """One scene's SAR on the grid and its EO (its own, else the region's)."""
    sg = gridded.scene(scene_id)
    return {"sar": _open_raster(sg.sar_db, grid), "eo": _open_raster(sg.eo if sg.eo.is_file() else gridded.eo, grid, 4)}


def _eo_valid(ds, window) -> np.ndarray:
    """EO valid mask: band 4 (DESIGN), else GDAL's dataset mask."""
    if ds.count >= 4:
        return ds.read(4, window=window) > 0
    return ds.dataset_mask(window=window) > 0


# ---------------------------------------------------------------- pass 1: validity


def valid_tables(layers: dict[str, Any], height: int, width: int, cell: int, band_pixels: int) -> dict[str, np.ndarray]:
    """Summed-area tables (strips of ``cell`` rows) of SAR-valid, EO-valid and both-valid pixels."""
    from rasterio.windows import Window

    n_strips = height // cell
    rows_per_read = max(cell, (band_pixels // max(width, 1)) // cell * cell)
    tables = {k: np.zeros((n_strips + 1, width + 1), dtype=np.int64) for k in ("sar", "eo", "both")}
    for r0 in range(0, n_strips * cell, rows_per_read):
        h = min(rows_per_read, n_strips * cell - r0)
        win = Window(0, r0, width, h)
        sar_ok = np.isfinite(layers["sar"].read(1, window=win))
        eo_ok = _eo_valid(layers["eo"], win)
        k0 = r0 // cell
        for key, m in (("sar", sar_ok), ("eo", eo_ok), ("both", sar_ok & eo_ok)):
            strip = m.reshape(h // cell, cell, width).sum(axis=1, dtype=np.int64)
            tables[key][k0 + 1 : k0 + 1 + h // cell, 1:] = strip.cumsum(axis=1)
        log.info("validity: rows %d-%d of %d", r0, r0 + h, height)
    for t in tables.values():
        np.cumsum(t, axis=0, out=t)
    return tables


# ---------------------------------------------------------------- pass 2: cutting, one task per shard


@dataclass(frozen=True)
class ShardSources:
    """The grid rasters every shard task reads (paths: a task opens its own handles, in any process)."""

    scenes: tuple[tuple[str, str], ...]  # per scene index: (sar_db.tif, its EO on the grid)
    label: str
    zones: str | None
    size: int


@dataclass(frozen=True)
class Shard:
    """One shard of the store: patches ``start .. start + len(rows)`` in store order, and where they come from."""

    store: str
    start: int
    scene: np.ndarray  # index into ShardSources.scenes, per patch
    rows: np.ndarray
    cols: np.ndarray


def shard_runs(scene: np.ndarray, rows: np.ndarray, cols: np.ndarray, size: int) -> list[tuple[int, int]]:
    """Runs ``[a, b)`` of consecutive patches read through one window: same scene and row, columns
    increasing and overlapping (a new split starts a new run, even on the same row)."""
    runs, a = [], 0
    for j in range(1, len(rows) + 1):
        if (j == len(rows) or scene[j] != scene[a] or rows[j] != rows[a]
                or not 0 < cols[j] - cols[j - 1] <= size):
            runs.append((a, j))
            a = j
    return runs


def cut_shard(src: ShardSources, shard: Shard) -> dict[str, np.ndarray]:
    """A shard's task: read its windows, cut its patches, write the whole shard; return its derived metadata.

    Each shard is written by exactly this one task, whole (never read-modify-write), so tasks
    are independent and a retried task writes the same bytes. Memory: the shard's arrays
    (``n x size^2 x 8`` bytes) plus one run's window per layer (``size x run width x 10`` bytes).
    """
    import contextlib

    import rasterio
    from rasterio.windows import Window

    from pipeline.rasters import reading

    n, k = len(shard.rows), src.size
    sar = np.empty((n, 1, k, k), np.float32)
    eo = np.empty((n, 3, k, k), np.uint8)
    lab = np.empty((n, k, k), np.uint8)
    hist = np.zeros((n, N_CLASSES), np.int32)
    res, nonres = np.full(n, np.nan, np.float32), np.full(n, np.nan, np.float32)
    npx = float(k * k)
    with contextlib.ExitStack() as stack:
        handles: dict[str, Any] = {}

        def opened(path: str) -> Any:
            if path not in handles:
                handles[path] = stack.enter_context(rasterio.open(path))
            return handles[path]

        for a, b in shard_runs(shard.scene, shard.rows, shard.cols, k):
            sar_path, eo_path = src.scenes[int(shard.scene[a])]
            c0, c1 = int(shard.cols[a]), int(shard.cols[b - 1]) + k
            win = Window(c0, int(shard.rows[a]), c1 - c0, k)
            where = f"window {win}"
            with reading(sar_path, where):
                s = opened(sar_path).read(1, window=win)
            eds = opened(eo_path)
            with reading(eo_path, where):
                if eds.count >= 4:  # band 4 = valid mask (DESIGN), read with the colours
                    e4 = eds.read((1, 2, 3, 4), window=win)
                    e, ok = e4[:3], e4[3] > 0
                else:
                    e, ok = eds.read((1, 2, 3), window=win), _eo_valid(eds, win)
            with reading(src.label, where):
                lb = opened(src.label).read(1, window=win)
            # the labels cover the AOI; a patch has no label where its own scene's SAR or EO has no data
            lb[~(np.isfinite(s) & ok)] = LABEL_NODATA
            zones = None
            if src.zones is not None:
                with reading(src.zones, where):
                    zones = opened(src.zones).read(1, window=win)
            for j in range(a, b):
                x = int(shard.cols[j]) - c0
                sar[j, 0], eo[j], lab[j] = s[:, x : x + k], e[:, :, x : x + k], lb[:, x : x + k]
                hist[j] = np.bincount(lab[j].ravel(), minlength=256)[:N_CLASSES]
                if zones is not None:  # shares of the patch's land, as the region's are (labels.zone_layer)
                    z = np.bincount(zones[:, x : x + k].ravel(), minlength=4)
                    land = npx - z[3]
                    res[j], nonres[j] = (z[1] / land, z[2] / land) if land > 0 else (0.0, 0.0)
    write_shards(reopen_output_store(shard.store), shard.start, {"sar": sar, "eo": eo, "label": lab})
    return {"class_hist": hist, "residential_share": res, "nonres_share": nonres}


def shard_memory_mb(shard_patches: int, size: int, width: int) -> float:
    """A shard task's peak (MiB): its arrays and their encoded copy, plus one full-width window per layer."""
    return (2 * shard_patches * size * size * 8 + size * width * 14) / 2**20


# ---------------------------------------------------------------- stage


def patch_region(region: Any, source: SourceFiles, registration: RegistrationFiles | None, gridded: GridFiles,
                 labels: LabelFiles, out_store: str | os.PathLike[str], p: PatchesParams | None = None,
                 sp: SplitsParams | None = None, executor: Executor | None = None) -> dict[str, Any]:
    """Build ``out_store`` (the region's patches.zarr); GDAL's block cache bounded (``gdal_cache_mb``).

    Shards are tasks of ``executor`` (default: local threads); each worker process bounds its own
    GDAL cache to ``gdal_cache_mb`` too.
    """
    p = p or PatchesParams()
    with gdal_cache(p.gdal_cache_mb):  # its default (5 % of RAM) grows with every scene opened
        return _patch_region(region, source, registration, gridded, labels, out_store, p, sp, executor or local())


def _patch_region(region: Any, source: SourceFiles, registration: RegistrationFiles | None, gridded: GridFiles,
                  labels: LabelFiles, out_store: str | os.PathLike[str], p: PatchesParams,
                  sp: SplitsParams | None, executor: Executor) -> dict[str, Any]:
    """Build ``out_store`` (the region's patches.zarr): every scene's patches on the region grid.

    Patches are cut per scene where that scene has enough valid SAR and EO; the split is drawn
    once over the ground cells of all scenes, so the same ground has the same split in every
    scene. Returns the splits report. Raises PatchError for unusable inputs and if the audit
    finds a leak under the ``blocks`` method.
    """
    sp = sp or SplitsParams()
    name = getattr(region, "name", None) or str(region)
    size, stride = p.size, p.stride

    grid_json = gridded.grid
    try:
        grid = Grid.from_dict(read_json(grid_json, PatchError, missing=MISSING) or {})
    except (KeyError, TypeError, ValueError) as exc:
        raise PatchError(f"{grid_json}: not a grid (Grid.to_dict()): {exc}") from exc
    try:
        scenes = read_scenes(source)
    except SceneError as exc:
        raise PatchError(str(exc)) from None
    provenance = read_json(source.provenance, PatchError, missing=MISSING) or {}
    labels_json = read_json(labels.report, PatchError, required=False) or {}
    summary = None if registration is None else read_json(registration.record, PatchError, required=False)
    records = {sc.id: (None if registration is None else
                       read_json(registration.scene(sc.id).record, PatchError, required=False)) for sc in scenes}
    inputs = [gridded.grid, labels.report, source.provenance] + ([registration.record] if registration else [])

    label_layers = _open_labels(labels, grid)
    opened: list[dict[str, Any]] = []
    try:
        # pass 1, per scene: which patch positions have enough valid data there
        cell = math.gcd(size, stride)
        rows0, cols0 = patch_origins(grid.height, grid.width, size, stride)
        npx = float(size * size)
        per_scene = []
        skipped: dict[str, str] = {}
        for sc in scenes:
            flagged = bool((records[sc.id] or {}).get("flagged"))
            if flagged and p.flagged_registration == "drop":
                skipped[sc.id] = "registration flagged (patches.flagged_registration: drop)"
                log.warning("%s: scene %s dropped: its registration is flagged", name, sc.id)
                continue
            layers = _open_scene(gridded, sc.id, grid)
            opened.append(layers)
            tables = valid_tables(layers, grid.height, grid.width, cell, p.band_pixels)
            sar_share = box_counts(tables["sar"], rows0, cols0, size, cell) / npx
            eo_share = box_counts(tables["eo"], rows0, cols0, size, cell) / npx
            both_share = box_counts(tables["both"], rows0, cols0, size, cell) / npx
            del tables
            ok = (sar_share >= p.min_valid) & (eo_share >= p.min_valid)
            log.info("%s: scene %s: %d of %d patch positions pass min_valid %.2f", name, sc.id, int(ok.sum()),
                     len(ok), p.min_valid)
            per_scene.append((sc, layers, rows0[ok], cols0[ok], both_share[ok], flagged))

        # splits: once over the union of ground cells, so a cell has one split in every scene
        if per_scene:
            cells = np.unique(np.concatenate([np.stack([r, c], 1) for _, _, r, c, _, _ in per_scene]), axis=0)
        else:
            cells = np.zeros((0, 2), np.int64)
        if sp.method == "blocks":  # per-region pixel blocks (retiring: not leak-free across regions)
            result = split_patches(cells[:, 0], cells[:, 1], size, stride, sp)
        else:  # by ground: the same ground gets the same split in every region and scene
            t = grid.transform
            result = split_footprints(t.c + t.a * cells[:, 1], t.f + t.e * (cells[:, 0] + size),
                                      t.c + t.a * (cells[:, 1] + size), t.f + t.e * cells[:, 0], sp)
        if sp.method != "random" and not result.report["audit"]["passed"]:
            raise PatchError(f"{name}: split audit failed: {result.report['audit']}")
        cell_code = {(int(r), int(c)): int(s) for (r, c), s in zip(cells.tolist(), result.split.tolist())}

        chosen = []  # (scene index, rows, cols, codes, valid share)
        for k, (sc, layers, rows, cols, both, flagged) in enumerate(per_scene):
            codes = np.array([cell_code[(int(r), int(c))] for r, c in zip(rows, cols)], np.int64)
            keep = codes >= 0
            chosen.append((k, rows[keep], cols[keep], codes[keep], both[keep]))
        scene_of = np.concatenate([np.full(len(c[1]), c[0], np.int64) for c in chosen]) if chosen else np.zeros(0, int)
        rows = np.concatenate([c[1] for c in chosen]) if chosen else np.zeros(0, np.int64)
        cols = np.concatenate([c[2] for c in chosen]) if chosen else np.zeros(0, np.int64)
        codes = np.concatenate([c[3] for c in chosen]) if chosen else np.zeros(0, np.int64)
        both_share = np.concatenate([c[4] for c in chosen]) if chosen else np.zeros(0, np.float32)
        # store order: split, scene, row, col
        order = np.lexsort((cols, rows, scene_of, codes))
        n = len(order)
        report = {**result.report, "cells": int(len(cells)), "patches": n,
                  "counts_are": "ground cells (every scene's patches of a cell share its split)",
                  "patch_counts": {s: int((codes == i).sum()) for i, s in enumerate(SPLITS)},
                  "per_scene": {per_scene[k][0].id: {s: int(((scene_of == k) & (codes == i)).sum())
                                                    for i, s in enumerate(SPLITS)} for k in range(len(per_scene))},
                  "scenes_skipped": skipped}

        scene_info = [_scene_info(sc, records[sc.id], p.flagged_registration) for sc in scenes]
        attrs = _attrs(name, grid, labels_json, provenance, summary, scene_info, inputs, report, p, sp,
                       {sc.id: dict(sorted(layers["sar"].tags().items())) for sc, layers, *_ in per_scene})
        with open_output_store(out_store) as target:
            group = create_store(target, n, size=size, shard_patches=p.shard_patches, level=p.compression_level,
                                 attrs=attrs)  # fmt: skip
            derived = {"class_hist": np.zeros((n, N_CLASSES), np.int32),
                       "residential_share": np.full(n, np.nan, np.float32),
                       "nonres_share": np.full(n, np.nan, np.float32)}
            sources = ShardSources(tuple((str(layers["sar"].name), str(layers["eo"].name)) for _, layers, *_r in per_scene),
                                   str(label_layers["label"].name),
                                   str(label_layers["zones"].name) if "zones" in label_layers else None, size)
            s_of, r_of, c_of = scene_of[order], rows[order], cols[order]
            ref = output_location(target)
            shards = [Shard(ref, a, s_of[a : a + p.shard_patches], r_of[a : a + p.shard_patches],
                            c_of[a : a + p.shard_patches]) for a in range(0, n, p.shard_patches)]
            with Progress("patches: shards", len(shards), "shards", logger=log) as bar:
                done = executor.map(cut_shard, shards, f"patches {name}",
                                    lambda sh: f"shard {sh.start // p.shard_patches} (patches {sh.start}-"
                                               f"{sh.start + len(sh.rows) - 1})",
                                    shared=sources, gdal_cache_mb=p.gdal_cache_mb,
                                    memory_mb=shard_memory_mb(p.shard_patches, size, grid.width))
                for sh, part in zip(shards, done):
                    for key, values in part.items():
                        derived[key][sh.start : sh.start + len(values)] = values
                    bar.update()
            meta = _meta(name, grid, rows[order], cols[order], codes[order], both_share[order], size,
                         [per_scene[k][0] for k in scene_of[order]] if n else [],
                         [per_scene[k][5] for k in scene_of[order]] if n else [], labels_json,
                         [per_scene[k][1]["sar"] for k in scene_of[order]] if n else [])
            meta["reg_local_error_m"], meta["reg_tie_distance_m"] = _tie_quality(meta, scene_of[order], per_scene,
                                                                                 records)
            meta.update(derived)
            write_meta(group, meta)
    finally:
        for ds in label_layers.values():
            ds.close()
        for layers in opened:
            for ds in layers.values():
                ds.close()
    log.info("%s: wrote %d patches of %d scene(s) to %s (%s)", name, n, len(per_scene), out_store, report["counts"])
    return report


def _tie_quality(meta: dict[str, Any], scene_of: np.ndarray, per_scene: list[Any],
                 records: dict[str, dict[str, Any] | None]) -> tuple[np.ndarray, np.ndarray]:
    """Per-patch registration quality from the nearest tie points of the patch's own scene."""
    n = len(scene_of)
    err, dist = np.full(n, np.nan, np.float32), np.full(n, np.nan, np.float32)
    for k, (sc, *_rest) in enumerate(per_scene):
        sel = scene_of == k
        if sel.any():
            err[sel], dist[sel] = tie_point_quality(records[sc.id], meta["lon"][sel], meta["lat"][sel])
    return err, dist


def _scene_info(sc: Scene, record: dict[str, Any] | None, policy: str) -> dict[str, Any]:
    """A scene as the store's attributes describe it: what it is and how its registration went."""
    reg = None
    if record is not None:
        reg = {k: record.get(k) for k in ("applied", "flagged", "confidence", "model", "shift_m", "correction",
                                          "uncertainty_m", "geometry")}
    eo = {k: sc.eo.get(k) for k in ("kind", "source", "datetime", "gap_days", "sha256") if k in sc.eo}
    if sc.eo.get("items"):  # a per-scene search: which EO items this scene's patches show
        eo["items"] = [{k: it.get(k) for k in ("id", "datetime", "href", "sha256")} for it in sc.eo["items"]]
    return {"id": sc.id, "item_id": sc.item_id, "provider": sc.provider, "product": sc.product,
            "polarization": sc.polarization, "datetime": sc.datetime, "calibrated": bool(sc.record.get("calibrated")),
            "registration": reg, "flagged_registration_policy": policy, "eo": eo}


def _meta(
    name: str,
    grid: Grid,
    rows: np.ndarray,
    cols: np.ndarray,
    codes: np.ndarray,
    valid_share: np.ndarray,
    size: int,
    scenes: list[Scene],
    flagged: list[bool],
    labels_json: dict[str, Any],
    sar_ds: list[Any],
) -> dict[str, Any]:
    """Per-patch metadata in store order (footprints from the grid's affine transform)."""
    t = grid.transform
    lon0, lon1 = t.c + t.a * cols, t.c + t.a * (cols + size)
    lat0, lat1 = t.f + t.e * (rows + size), t.f + t.e * rows
    n = len(rows)
    calibrated = {}
    for sc, ds in zip(scenes, sar_ds):
        if sc.id not in calibrated:
            tags = ds.tags()
            calibrated[sc.id] = _truthy(tags.get("calibrated", tags.get("CALIBRATED", "false")))
    cells = [f"{name}_r{r}_c{c}" for r, c in zip(rows.tolist(), cols.tolist())]

    def col(values: list[Any], dtype: Any) -> np.ndarray:
        return np.array(values, dtype=dtype) if n else np.zeros(0, dtype=dtype)

    return {
        "id": col([f"{name}_{sc.id}_r{r}_c{c}" for sc, r, c in zip(scenes, rows.tolist(), cols.tolist())], object),
        "row": rows.astype(np.int32),
        "col": cols.astype(np.int32),
        "lon_min": lon0,
        "lat_min": lat0,
        "lon_max": lon1,
        "lat_max": lat1,
        "lon": (lon0 + lon1) / 2,
        "lat": (lat0 + lat1) / 2,
        "gsd_m": np.full(n, grid.gsd_m, np.float32),
        "sar_datetime": col([sc.datetime for sc in scenes], object),
        "eo_datetime": col([str(sc.eo.get("datetime") or "") for sc in scenes], object),
        "gap_days": col([gap_days(sc.datetime, sc.eo.get("datetime")) for sc in scenes], np.float32),
        "sar_item": col([str(sc.item_id or "") for sc in scenes], object),
        "calibrated": col([calibrated[sc.id] for sc in scenes], bool),
        "split": np.array(SPLITS, dtype=object)[codes.astype(np.int64)] if n else np.zeros(0, dtype=object),
        "urban_rural": np.full(n, urban_class(labels_json), dtype=object),
        "valid_share": valid_share.astype(np.float32),
        "scene": col([sc.id for sc in scenes], object),
        "provider": col([sc.provider for sc in scenes], object),
        "polarization": col([sc.polarization for sc in scenes], object),
        "cell": col(cells, object),
        "registration_flagged": col(flagged, bool),
    }


def _attrs(
    name: str,
    grid: Grid,
    labels_json: dict[str, Any],
    provenance: dict[str, Any],
    registration: dict[str, Any] | None,
    scenes: list[dict[str, Any]],
    inputs: list[Path],
    splits_report: dict[str, Any],
    p: PatchesParams,
    sp: SplitsParams,
    sar_tags: dict[str, dict[str, str]],
) -> dict[str, Any]:
    """Root attributes: everything needed to cite, reproduce and interpret the store."""
    ur = labels_json.get("urban_rural")
    urban = dict(ur) if isinstance(ur, dict) else {}
    urban["class"] = urban_class(labels_json)
    reg = None
    if registration is not None:
        reg = {k: registration.get(k) for k in ("applied", "flagged", "scenes")}
    # keyed by stage directory and file name ("grid/grid.json"): no absolute paths in the store
    hashes = {f"{f.parent.name}/{f.name}": sha256_file(f) for f in inputs if f.is_file()}
    return {
        "region": name,
        "urban_rural": urban,
        "grid": grid.to_dict(),
        "legend": _legend(labels_json),
        "splits": splits_report,
        "scenes": scenes,
        "provenance": {"scenes": provenance.get("scenes") or [], "eo": provenance.get("eo"), "registration": reg,
                       "sar_grid_tags": sar_tags, "inputs_sha256": hashes},  # fmt: skip
        "licences": licences(provenance, labels_json),
        "attribution": attribution_lines(provenance, labels_json),
        "software": {"name": "sareo", "version": __version__},
        "params": {"patches": dataclasses.asdict(p), "splits": dataclasses.asdict(sp)},
        "patch_order": PATCH_ORDER,
        "layers": {
            "sar": "sigma0 in dB (float32), NaN = no data; calibrated per patch flag",
            "eo": "RGB uint8",
            "label": "class id uint8 (legend), 255 = no data (none mapped, or no SAR/EO in the patch's scene)",
        },
    }


def _legend(labels_json: dict[str, Any]) -> Any:
    """The class legend: labels.json's own (compact) copy, else pipeline/legend.yaml's summary."""
    if labels_json.get("legend"):
        return labels_json["legend"]
    from pipeline.legend import LegendError, load_legend

    try:
        return load_legend().to_dict()
    except LegendError as exc:  # a store without a legend still works; say so
        log.warning("no legend in labels.json and pipeline/legend.yaml unusable (%s)", exc)
        return None
