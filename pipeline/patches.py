"""Patches stage: cut the region's grid rasters into a sharded Zarr v3 patch store with leak-free splits.

Two streaming passes over row bands, never the whole grid in memory:
1. validity: SAR-finite and EO-valid pixel counts per patch (summed-area tables at the
   gcd(size, stride) resolution), so nodata and edge patches are dropped on purpose;
2. cutting: each row of patches is read with one rasterio window per layer and appended to the
   store in shard-sized segments (write-behind on one thread, so reading and encoding overlap).
Between the passes ``pipeline.splits`` assigns splits; patches are stored ordered by split,
then row, then col, so each split is one contiguous slice.
"""

from __future__ import annotations

import dataclasses
import logging
import math
import os
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import numpy as np

from pipeline import __version__
from pipeline.atomic import atomic_path
from pipeline.documents import read_json
from pipeline.grid import Grid
from pipeline.layout import GridFiles, LabelFiles, RegistrationFiles, SourceFiles
from pipeline.params import param
from pipeline.provenance import attribution_lines, licences, parse_datetime, sha256_file
from pipeline.splits import SPLITS, SplitsParams, split_patches
from pipeline.store import N_CLASSES, PATCH_ORDER, create_store, write_meta, write_patches

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


def _open_layers(gridded: GridFiles, labels: LabelFiles, grid: Grid) -> dict[str, Any]:
    """Open the grid rasters and check they sit on the region grid."""
    import rasterio

    files = {"sar": gridded.sar_db, "eo": gridded.eo, "label": labels.labels, "zones": labels.zones}
    out = {}
    for name, f in files.items():
        if not f.is_file():
            if name == "zones":
                log.warning("%s: missing; residential/nonres shares will be NaN", f)
                continue
            raise PatchError(f"{f}: missing (expected per docs/DESIGN.md)")
        ds = rasterio.open(f)
        out[name] = ds
        if (ds.height, ds.width) != grid.shape:
            raise PatchError(f"{f}: {ds.width}x{ds.height} px; expected the grid's {grid.width}x{grid.height}")
        if not ds.transform.almost_equals(grid.transform):
            raise PatchError(f"{f}: transform {tuple(ds.transform)[:6]} is not the grid's {tuple(grid.transform)[:6]}")
    if out["eo"].count < 3:
        raise PatchError(f"{files['eo']}: {out['eo'].count} band(s); expected RGB + band 4 valid mask")
    return out


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


# ---------------------------------------------------------------- pass 2: cutting


class _SegmentWriter:
    """Collect patches of one split into shard-aligned segments; write each when complete.

    A shard holding the end of one split and the start of the next is written in two partial
    writes (zarr merges them); all others are written whole, once. Writes run in order on one
    background thread, overlapping the next band's reads; at most one write is pending.
    """

    def __init__(self, group, starts: list[int], n: int, shard: int, size: int):
        self.group, self.n, self.shard, self.size = group, n, shard, size
        self.ends = [*starts[1:], n]
        self.starts = starts
        self.buf: dict[int, dict[str, Any]] = {}
        self.pool = ThreadPoolExecutor(max_workers=1)
        self.pending: Future | None = None

    def _segment(self, s: int, i: int) -> tuple[int, int]:
        a = max(self.starts[s], (i // self.shard) * self.shard)
        b = min(self.ends[s], (i // self.shard + 1) * self.shard)
        return a, b

    def put(self, s: int, i: int, sar: np.ndarray, eo: np.ndarray, label: np.ndarray) -> None:
        seg = self.buf.get(s)
        if seg is None:
            a, b = self._segment(s, i)
            n, k = b - a, self.size
            seg = self.buf[s] = {
                "a": a,
                "b": b,
                "sar": np.empty((n, 1, k, k), np.float32),
                "eo": np.empty((n, 3, k, k), np.uint8),
                "label": np.empty((n, k, k), np.uint8),
            }
        j = i - seg["a"]
        seg["sar"][j, 0], seg["eo"][j], seg["label"][j] = sar, eo, label
        if i == seg["b"] - 1:
            self._flush(self.buf.pop(s))

    def _flush(self, seg: dict[str, Any]) -> None:
        if self.pending is not None:
            self.pending.result()
        self.pending = self.pool.submit(self._write, seg)

    def _write(self, seg: dict[str, Any]) -> None:
        write_patches(self.group, seg["a"], {name: seg[name] for name in ("sar", "eo", "label")})

    def close(self) -> None:
        if self.pending is not None:
            self.pending.result()
        self.pool.shutdown()
        if self.buf:
            raise RuntimeError(f"internal: unfinished segments {list(self.buf)}")


def cut_patches(
    layers: dict[str, Any], rows: np.ndarray, cols: np.ndarray, codes: np.ndarray, index: np.ndarray, writer, size: int
) -> dict[str, np.ndarray]:
    """Read one window per patch row and layer, cut its patches, hand them to ``writer``.

    Returns class_hist, residential_share and nonres_share in store order (``index`` maps
    each input patch to its store position).
    """
    from rasterio.windows import Window

    n = len(rows)
    hist = np.zeros((n, N_CLASSES), np.int32)
    res = np.full(n, np.nan, np.float32)
    nonres = np.full(n, np.nan, np.float32)
    urows = np.unique(rows)
    npx = float(size * size)
    for step, r in enumerate(urows):
        sel = np.flatnonzero(rows == r)
        sel = sel[np.argsort(cols[sel], kind="stable")]
        c0, c1 = int(cols[sel].min()), int(cols[sel].max()) + size
        win = Window(c0, int(r), c1 - c0, size)
        sar = layers["sar"].read(1, window=win)
        eo = layers["eo"].read((1, 2, 3), window=win)
        lab = layers["label"].read(1, window=win)
        zones = layers["zones"].read(1, window=win) if "zones" in layers else None
        for p in sel:
            x = int(cols[p]) - c0
            i = int(index[p])
            lp = lab[:, x : x + size]
            writer.put(int(codes[p]), i, sar[:, x : x + size], eo[:, :, x : x + size], lp)
            hist[i] = np.bincount(lp.ravel(), minlength=256)[:N_CLASSES]
            if zones is not None:  # shares of the patch's land, as the region's are (labels.zone_layer)
                z = np.bincount(zones[:, x : x + size].ravel(), minlength=4)
                land = npx - z[3]
                res[i], nonres[i] = (z[1] / land, z[2] / land) if land > 0 else (0.0, 0.0)
        if step % 20 == 0 or step == len(urows) - 1:
            log.info("cut: patch row %d/%d", step + 1, len(urows))
    return {"class_hist": hist, "residential_share": res, "nonres_share": nonres}


# ---------------------------------------------------------------- stage


def patch_region(region: Any, source: SourceFiles, registration: RegistrationFiles | None, gridded: GridFiles,
                 labels: LabelFiles, out_store: str | os.PathLike[str], p: PatchesParams | None = None,
                 sp: SplitsParams | None = None) -> dict[str, Any]:
    """Build ``out_store`` (the region's patches.zarr) from the gridded images and the labels.

    Returns the splits report. Raises PatchError for unusable inputs and if the audit finds a
    leak under the ``blocks`` method.
    """
    p = p or PatchesParams()
    sp = sp or SplitsParams()
    name = getattr(region, "name", None) or str(region)
    size, stride = p.size, p.stride

    grid_json = gridded.grid
    try:
        grid = Grid.from_dict(read_json(grid_json, PatchError, missing=MISSING) or {})
    except (KeyError, TypeError, ValueError) as exc:
        raise PatchError(f"{grid_json}: not a grid (Grid.to_dict()): {exc}") from exc
    provenance = read_json(source.provenance, PatchError, missing=MISSING) or {}
    labels_json = read_json(labels.report, PatchError, required=False) or {}
    record = None if registration is None else read_json(registration.record, PatchError, required=False)
    inputs = [gridded.grid, labels.report, source.provenance] + ([registration.record] if registration else [])

    layers = _open_layers(gridded, labels, grid)
    try:
        # pass 1: which patches have enough valid data
        cell = math.gcd(size, stride)
        rows, cols = patch_origins(grid.height, grid.width, size, stride)
        tables = valid_tables(layers, grid.height, grid.width, cell, p.band_pixels)
        npx = float(size * size)
        sar_share = box_counts(tables["sar"], rows, cols, size, cell) / npx
        eo_share = box_counts(tables["eo"], rows, cols, size, cell) / npx
        both_share = box_counts(tables["both"], rows, cols, size, cell) / npx
        del tables
        ok = (sar_share >= p.min_valid) & (eo_share >= p.min_valid)
        rows, cols, both_share = rows[ok], cols[ok], both_share[ok]
        log.info("%s: %d of %d patch positions pass min_valid %.2f", name, int(ok.sum()), len(ok), p.min_valid)

        # splits, then store order: split, row, col
        result = split_patches(rows, cols, size, stride, sp)
        if sp.method != "random" and not result.report["audit"]["passed"]:
            raise PatchError(f"{name}: split audit failed: {result.report['audit']}")
        keep = result.kept
        rows, cols, codes, both_share = rows[keep], cols[keep], result.split[keep], both_share[keep]
        order = np.lexsort((cols, rows, codes))
        index = np.empty(len(order), np.int64)
        index[order] = np.arange(len(order))
        n = len(order)
        starts = [int((codes < s).sum()) for s in range(3)]

        attrs = _attrs(name, grid, labels_json, provenance, record, inputs, result.report, p, sp,
                       dict(sorted(layers["sar"].tags().items())))  # fmt: skip
        with atomic_path(out_store) as tmp:
            group = create_store(tmp, n, size=size, shard_patches=p.shard_patches, level=p.compression_level,
                                 attrs=attrs)  # fmt: skip
            writer = _SegmentWriter(group, starts, n, p.shard_patches, size)
            try:
                derived = cut_patches(layers, rows, cols, codes, index, writer, size)
            finally:
                writer.close()
            meta = _meta(name, grid, rows[order], cols[order], codes[order], both_share[order], size,
                         provenance, labels_json, layers["sar"])  # fmt: skip
            meta.update(derived)
            write_meta(group, meta)
    finally:
        for ds in layers.values():
            ds.close()
    log.info("%s: wrote %d patches to %s (%s)", name, n, out_store, result.report["counts"])
    return result.report


def _meta(
    name: str,
    grid: Grid,
    rows: np.ndarray,
    cols: np.ndarray,
    codes: np.ndarray,
    valid_share: np.ndarray,
    size: int,
    provenance: dict[str, Any],
    labels_json: dict[str, Any],
    sar_ds,
) -> dict[str, Any]:
    """Per-patch metadata in store order (footprints from the grid's affine transform)."""
    t = grid.transform
    lon0, lon1 = t.c + t.a * cols, t.c + t.a * (cols + size)
    lat0, lat1 = t.f + t.e * (rows + size), t.f + t.e * rows
    sar, eo = provenance.get("sar") or {}, provenance.get("eo") or {}
    n = len(rows)
    tags = sar_ds.tags()
    calibrated = _truthy(tags.get("calibrated", tags.get("CALIBRATED", "false")))
    return {
        "id": np.array([f"{name}_r{r}_c{c}" for r, c in zip(rows.tolist(), cols.tolist())], dtype=object),
        "row": rows.astype(np.int32),
        "col": cols.astype(np.int32),
        "lon_min": lon0,
        "lat_min": lat0,
        "lon_max": lon1,
        "lat_max": lat1,
        "lon": (lon0 + lon1) / 2,
        "lat": (lat0 + lat1) / 2,
        "gsd_m": np.full(n, grid.gsd_m, np.float32),
        "sar_datetime": np.full(n, str(sar.get("datetime") or ""), dtype=object),
        "eo_datetime": np.full(n, str(eo.get("datetime") or ""), dtype=object),
        "gap_days": np.full(n, gap_days(sar.get("datetime"), eo.get("datetime")), np.float32),
        "sar_item": np.full(n, str(sar.get("item_id") or ""), dtype=object),
        "calibrated": np.full(n, calibrated, bool),
        "split": np.array(SPLITS, dtype=object)[codes.astype(np.int64)] if n else np.zeros(0, dtype=object),
        "urban_rural": np.full(n, urban_class(labels_json), dtype=object),
        "valid_share": valid_share.astype(np.float32),
    }


def _attrs(
    name: str,
    grid: Grid,
    labels_json: dict[str, Any],
    provenance: dict[str, Any],
    registration: dict[str, Any] | None,
    inputs: list[Path],
    splits_report: dict[str, Any],
    p: PatchesParams,
    sp: SplitsParams,
    sar_tags: dict[str, str],
) -> dict[str, Any]:
    """Root attributes: everything needed to cite, reproduce and interpret the store."""
    ur = labels_json.get("urban_rural")
    urban = dict(ur) if isinstance(ur, dict) else {}
    urban["class"] = urban_class(labels_json)
    reg = None
    if registration is not None:
        reg = {k: registration.get(k) for k in ("applied", "flagged", "confidence", "model", "shift_m", "correction")}
    # keyed by stage directory and file name ("grid/grid.json"): no absolute paths in the store
    hashes = {f"{f.parent.name}/{f.name}": sha256_file(f) for f in inputs if f.is_file()}
    return {
        "region": name,
        "urban_rural": urban,
        "grid": grid.to_dict(),
        "legend": _legend(labels_json),
        "splits": splits_report,
        "provenance": {"sar": provenance.get("sar"), "eo": provenance.get("eo"), "registration": reg,
                       "sar_grid_tags": sar_tags, "inputs_sha256": hashes},  # fmt: skip
        "licences": licences(provenance, labels_json),
        "attribution": attribution_lines(provenance, labels_json),
        "software": {"name": "sareo", "version": __version__},
        "params": {"patches": dataclasses.asdict(p), "splits": dataclasses.asdict(sp)},
        "patch_order": PATCH_ORDER,
        "layers": {
            "sar": "sigma0 in dB (float32), NaN = no data; calibrated per patch flag",
            "eo": "RGB uint8",
            "label": "class id uint8 (legend), 255 = no data",
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
