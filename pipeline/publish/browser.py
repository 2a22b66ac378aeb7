"""data/dataset/index.html: a page to look at the dataset from disk, with no server and no network.

Everything is inside the one file: the patch footprints (all of them), per-region statistics,
the regions' optical quick looks as the map background (no basemap can be fetched offline),
and SAR / EO / label thumbnails of a bounded sample of patches (``browser_samples`` per region,
spread over the splits) as PNG data URIs. The page is plain JavaScript on a canvas (template:
``browser.html``): a map library would bring tiles the page cannot load.

Only the sampled patches' image chunks are read, through ``pipeline.store``.
"""

from __future__ import annotations

import base64
import io
import json
from collections.abc import Mapping
from importlib import resources
from typing import Any

import numpy as np
from PIL import Image

from pipeline.grid import Grid
from pipeline.layout import GridFiles
from pipeline.publish.index import LegendClass, StoreMeta
from pipeline.publish.scenes import Scene
from pipeline.publish.stats import SPLIT_COLOURS

DATA_MARK = "/*SAREO_DATA*/null"
CLASS_MIN_SHARE = 0.05  # the class filter matches patches with at least this share of a class
SAR_DB_RANGE = (-25.0, 5.0)  # fixed stretch for calibrated SAR (as the quick looks)


def sample_patches(split: np.ndarray, k: int, splits: tuple[str, ...]) -> np.ndarray:
    """Up to ``k`` patch indices spread evenly over each split (each present split gets at least one).

    Deterministic: the same store gives the same sample.
    """
    split = np.asarray(split, dtype=object)
    present = [s for s in splits if (split == s).any()][: max(k, 0)]
    if not present:
        return np.zeros(0, np.int64)
    n = sum(int((split == s).sum()) for s in present)
    quota = {s: max(1, int(round(k * (split == s).sum() / n))) for s in present}
    while sum(quota.values()) > k:
        quota[max(quota, key=lambda s: quota[s])] -= 1
    out: list[int] = []
    for s in present:
        idx = np.flatnonzero(split == s)
        q = min(quota[s], len(idx))
        out.extend(idx[np.linspace(0, len(idx) - 1, q).round().astype(int)].tolist())
    return np.array(sorted(set(out)), np.int64)


def _png_uri(rgb: np.ndarray) -> str:
    buf = io.BytesIO()
    Image.fromarray(rgb, "RGBA" if rgb.shape[-1] == 4 else "RGB").save(buf, format="PNG", optimize=True)
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode("ascii")


def _jpeg_uri(rgb: np.ndarray, quality: int = 80) -> str:
    buf = io.BytesIO()
    Image.fromarray(rgb, "RGB").save(buf, format="JPEG", quality=quality, optimize=True)
    return "data:image/jpeg;base64," + base64.b64encode(buf.getvalue()).decode("ascii")


def _decimate(a: np.ndarray, size: int) -> np.ndarray:
    step = max(1, int(np.ceil(a.shape[0] / size)))
    return a[::step, ::step]


def sar_thumb(db: np.ndarray, calibrated: bool, size: int) -> np.ndarray:
    """dB patch -> grey RGB (calibrated: fixed -25..5 dB, as the quick looks; else its 2-98 %), no data dark blue."""
    from pipeline.quicklook import db_to_rgb

    return db_to_rgb(_decimate(np.asarray(db, np.float32), size), SAR_DB_RANGE if calibrated else None)[0]


def label_thumb(label: np.ndarray, classes: list[LegendClass], size: int) -> np.ndarray:
    """Class ids -> legend colours; 255 (no data) black."""
    lut = np.zeros((256, 3), np.uint8)
    for c in classes:
        lut[c.id] = [int(c.color[i : i + 2], 16) for i in (1, 3, 5)]
    return lut[_decimate(np.asarray(label), size)]


def _thumbnails(meta: StoreMeta, idx: np.ndarray, classes: list[LegendClass], size: int) -> dict[str, dict[str, str]]:
    """SAR, EO and label PNGs of the patches ``idx`` (only their chunks are read)."""
    from pipeline.store import open_store

    if not len(idx):
        return {}
    group = open_store(meta.path)
    out = {}
    for i in idx.tolist():
        sar = group["sar"][i]
        eo = group["eo"][i]
        label = group["label"][i]
        calibrated = bool(meta.arrays["calibrated"][i])
        eo_rgb = np.ascontiguousarray(_decimate(np.moveaxis(eo, 0, -1), size))
        out[str(meta.arrays["id"][i])] = {"sar": _png_uri(sar_thumb(sar[0], calibrated, size)),
                                          "eo": _png_uri(eo_rgb.astype(np.uint8)),
                                          "label": _png_uri(label_thumb(label, classes, size))}  # fmt: skip
    return out


def _background(grid_files: GridFiles | None, max_px: int) -> str | None:
    """The region's optical image on the grid, decimated, as a JPEG data URI (None when absent)."""
    if grid_files is None or not grid_files.eo.is_file():
        return None
    from pipeline.quicklook import read_eo_preview

    return _jpeg_uri(read_eo_preview(grid_files.eo, max_px))


def page_data(
    gdf,
    stats: dict[str, Any],
    classes: list[LegendClass],
    metas: list[StoreMeta],
    scenes: Mapping[str, list[Scene]],
    splits: tuple[str, ...],
    title: str,
    grids: Mapping[str, GridFiles] | None,
    samples_per_region: int,
    thumb_px: int,
    background_px: int,
) -> dict[str, Any]:
    """Everything the page shows, as one JSON-ready dict."""
    hist_cols = [f"px_{c.slug}" for c in classes]
    regions = []
    thumbs: dict[str, dict[str, str]] = {}
    for m in metas:
        g = Grid.from_dict(m.attrs["grid"])
        w, s, e, n = g.bounds
        thumbs.update(_thumbnails(m, sample_patches(m.arrays["split"], samples_per_region, splits), classes, thumb_px))
        r = stats["patches"]["by_region"][m.region]
        regions.append({
            "name": m.region, "bounds": [w, s, e, n], "background": _background((grids or {}).get(m.region), background_px),
            "urban_rural": r["urban_rural"], "patches": r["patches"], "area_km2": r["area_km2"], "gsd_m": g.gsd_m,
            "scenes": [sc.summary() for sc in scenes.get(m.region, [])],
            "attribution": m.attrs.get("attribution") or [],
        })  # fmt: skip
    hist = gdf[hist_cols].to_numpy(dtype=np.int64)
    totals = np.maximum(hist.sum(axis=1, keepdims=True), 1)
    shares = hist / totals
    cols = ["id", "region", "split", "sar_item", "lon_min", "lat_min", "lon_max", "lat_max", "dominant_class",
            "store", "patch", "sar_datetime", "eo_datetime", "gap_days", "urban_rural", "valid_share", "calibrated"]
    rows = []
    for k, rec in enumerate(gdf[cols].itertuples(index=False)):
        top = np.flatnonzero(shares[k] >= CLASS_MIN_SHARE)
        top = top[np.argsort(-shares[k][top], kind="stable")]
        rows.append([
            rec.id, rec.region, rec.split, rec.sar_item, *(round(float(v), 7) for v in rec[4:8]),
            int(rec.dominant_class), rec.store, int(rec.patch),
            rec.sar_datetime.isoformat() if rec.sar_datetime is not None and str(rec.sar_datetime) != "NaT" else None,
            rec.eo_datetime.isoformat() if rec.eo_datetime is not None and str(rec.eo_datetime) != "NaT" else None,
            None if not np.isfinite(rec.gap_days) else round(float(rec.gap_days), 2), rec.urban_rural,
            round(float(rec.valid_share), 4), bool(rec.calibrated),
            [[int(c), round(float(shares[k][c]), 4)] for c in top],
        ])  # fmt: skip
    return {
        "title": title,
        "totals": stats["totals"],
        "splits": list(splits),
        "split_colours": {s: SPLIT_COLOURS.get(s, "#888888") for s in splits},
        "classes": [{"id": c.id, "name": c.name, "color": c.color} for c in classes],
        "class_min_share": CLASS_MIN_SHARE,
        "regions": regions,
        "columns": [*cols, "classes"],
        "patches": rows,
        "thumbs": thumbs,
        "samples_per_region": samples_per_region,
    }


def render_page(data: dict[str, Any]) -> str:
    """The HTML page with ``data`` embedded (``</`` escaped so no string can close the script)."""
    template = resources.files("pipeline.publish").joinpath("browser.html").read_text(encoding="utf-8")
    if DATA_MARK not in template:
        raise RuntimeError("pipeline/publish/browser.html lacks the data marker " + DATA_MARK)
    blob = json.dumps(data, sort_keys=True, separators=(",", ":"), allow_nan=False).replace("</", "<\\/")
    return template.replace(DATA_MARK, blob)
