"""Quick looks: gridded SAR and EO side by side in one small PNG, for a human glance at alignment.

Reads are decimated by GDAL (``out_shape``), so a 24,000 px grid never sits in memory whole.
Calibrated SAR is stretched over a fixed dB range (comparable across regions); relative
(uncalibrated) SAR over its own 2-98 % percentiles. The title carries the data attribution.
"""

from __future__ import annotations

import logging
import math
import textwrap
from pathlib import Path
import numpy as np
import rasterio
from PIL import Image, ImageDraw, ImageFont
from rasterio.enums import Resampling

from pipeline.atomic import atomic_path

log = logging.getLogger("sareo.quicklook")

NODATA_RGB = (40, 40, 90)  # dark blue: distinct from dark backscatter


def _out_shape(height: int, width: int, max_size: int) -> tuple[int, int]:
    scale = max(height / max_size, width / max_size, 1.0)
    return max(1, math.ceil(height / scale)), max(1, math.ceil(width / scale))


def stretch_db(db: np.ndarray, lo: float, hi: float) -> np.ndarray:
    """dB -> uint8 grey over [lo, hi]; NaN -> 0 (the caller paints no-data separately)."""
    x = (np.nan_to_num(db, nan=lo) - lo) / (hi - lo)
    return (np.clip(x, 0, 1) * 255).round().astype(np.uint8)


def read_sar_preview(path: str | Path, max_size: int, db_range: tuple[float, float] | None = None) -> np.ndarray:
    """Decimated SAR as an RGB uint8 array (h, w, 3), no-data painted dark blue."""
    with rasterio.open(path) as ds:
        shape = _out_shape(ds.height, ds.width, max_size)
        db = ds.read(1, out_shape=shape, resampling=Resampling.average).astype(np.float32)
        calibrated = ds.tags().get("calibrated", "false") == "true"
    ok = np.isfinite(db)
    if calibrated and db_range is not None:
        lo, hi = db_range
    elif ok.any():
        lo, hi = (float(v) for v in np.percentile(db[ok], [2, 98]))
        hi = hi if hi > lo else lo + 1.0
    else:
        lo, hi = 0.0, 1.0
    grey = stretch_db(db, lo, hi)
    rgb = np.repeat(grey[:, :, None], 3, axis=2)
    rgb[~ok] = NODATA_RGB
    return rgb


def read_eo_preview(path: str | Path, max_size: int) -> np.ndarray:
    """Decimated EO RGB (h, w, 3); pixels outside the valid mask (band 4) painted dark blue."""
    with rasterio.open(path) as ds:
        shape = _out_shape(ds.height, ds.width, max_size)
        rgb = ds.read([1, 2, 3], out_shape=(3, *shape), resampling=Resampling.average)
        mask = ds.read(4, out_shape=shape, resampling=Resampling.nearest) if ds.count >= 4 else None
    img = np.moveaxis(rgb, 0, -1).copy()
    if mask is not None:
        img[mask == 0] = NODATA_RGB
    return img


def side_by_side(sar_db_path: str | Path, eo_path: str | Path, out_png: str | Path, max_size: int = 1024,
                 title: str = "", db_range: tuple[float, float] | None = (-25.0, 5.0), gap_px: int = 8) -> Path:
    """Write a PNG: SAR (left) and EO (right), each at most ``max_size`` px, under a title line."""
    sar = read_sar_preview(sar_db_path, max_size, db_range)
    eo = read_eo_preview(eo_path, max_size)
    h = max(sar.shape[0], eo.shape[0])
    width = sar.shape[1] + gap_px + eo.shape[1]
    font = ImageFont.load_default()
    chars = max(20, width // 7)
    lines = textwrap.wrap(title, chars) if title else []
    line_h = 14
    top = line_h * len(lines) + (8 if lines else 0)
    canvas = Image.new("RGB", (width, h + top), (255, 255, 255))
    canvas.paste(Image.fromarray(sar, "RGB"), (0, top))
    canvas.paste(Image.fromarray(eo, "RGB"), (sar.shape[1] + gap_px, top))
    draw = ImageDraw.Draw(canvas)
    for i, line in enumerate(lines):
        draw.text((4, 4 + i * line_h), line, fill=(0, 0, 0), font=font)
    with atomic_path(out_png) as tmp:
        canvas.save(tmp, format="PNG", optimize=False)
    log.info("quicklook: %s (%dx%d)", out_png, canvas.width, canvas.height)
    return Path(out_png)
