"""Quick looks: gridded SAR and EO side by side in one small PNG, for a human glance at alignment.

Reads are decimated by GDAL (``out_shape``), so a 24,000 px grid never sits in memory whole.
Calibrated SAR is stretched over a fixed dB range (comparable across regions); relative
(uncalibrated) SAR over its own 2-98 % percentiles. The title carries the data attribution; a
strip under the panels shows the dB colour bar (the stretch used) and a ground scale bar.
"""

from __future__ import annotations

import logging
import math
import textwrap
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import rasterio
from PIL import Image, ImageDraw, ImageFont
from rasterio.enums import Resampling

from pipeline.atomic import atomic_path
from pipeline.grid import metres_per_degree

log = logging.getLogger("sareo.quicklook")

NODATA_RGB = (40, 40, 90)  # dark blue: distinct from dark backscatter


def _out_shape(height: int, width: int, max_size: int) -> tuple[int, int]:
    scale = max(height / max_size, width / max_size, 1.0)
    return max(1, math.ceil(height / scale)), max(1, math.ceil(width / scale))


def stretch_db(db: np.ndarray, lo: float, hi: float) -> np.ndarray:
    """dB -> uint8 grey over [lo, hi]; NaN -> 0 (the caller paints no-data separately)."""
    x = (np.nan_to_num(db, nan=lo) - lo) / (hi - lo)
    return (np.clip(x, 0, 1) * 255).round().astype(np.uint8)


@dataclass(frozen=True)
class SarPreview:
    """A decimated SAR picture and what its grey levels and pixels mean."""

    rgb: np.ndarray  # (h, w, 3) uint8, no-data dark blue
    lo: float  # dB at black
    hi: float  # dB at white
    calibrated: bool  # sigma0 over a fixed range, else relative over the 2-98 % percentiles
    metres_per_px: float | None  # ground size of one preview pixel (x), None when unknown


def sar_preview(path: str | Path, max_size: int, db_range: tuple[float, float] | None = None) -> SarPreview:
    """Decimated SAR with its stretch and ground pixel size (for the colour and scale bars)."""
    with rasterio.open(path) as ds:
        shape = _out_shape(ds.height, ds.width, max_size)
        db = ds.read(1, out_shape=shape, resampling=Resampling.average).astype(np.float32)
        calibrated = ds.tags().get("calibrated", "false") == "true"
        metres = _metres_per_px(ds, ds.width / shape[1])
    rgb, lo, hi = db_to_rgb(db, db_range if calibrated else None)
    return SarPreview(rgb, lo, hi, calibrated and db_range is not None, metres)


def db_to_rgb(db: np.ndarray, db_range: tuple[float, float] | None) -> tuple[np.ndarray, float, float]:
    """dB -> grey RGB over ``db_range`` (calibrated SAR), else over its own 2-98 % percentiles; NaN dark blue."""
    ok = np.isfinite(db)
    if db_range is not None:
        lo, hi = db_range
    elif ok.any():
        lo, hi = (float(v) for v in np.percentile(db[ok], [2, 98]))
        hi = hi if hi > lo else lo + 1.0
    else:
        lo, hi = 0.0, 1.0
    rgb = np.repeat(stretch_db(db, lo, hi)[:, :, None], 3, axis=2)
    rgb[~ok] = NODATA_RGB
    return rgb, float(lo), float(hi)


def read_sar_preview(path: str | Path, max_size: int, db_range: tuple[float, float] | None = None) -> np.ndarray:
    """Decimated SAR as an RGB uint8 array (h, w, 3), no-data painted dark blue."""
    return sar_preview(path, max_size, db_range).rgb


def _metres_per_px(ds, decimation: float) -> float | None:
    """Ground metres of one decimated pixel along x (lon/lat grids: at the image's centre latitude)."""
    if ds.crs is None:
        return None
    a = abs(ds.transform.a) * decimation
    if ds.crs.is_geographic:
        lat = ds.transform.f + ds.transform.e * ds.height / 2
        return a * metres_per_degree(lat)[0]
    return a * (ds.crs.linear_units_factor[1] if ds.crs.linear_units_factor else 1.0)


def nice_length(max_m: float) -> float:
    """The largest 1, 2 or 5 x 10^k metres not above ``max_m`` (scale bar length)."""
    if max_m <= 0:
        return 0.0
    k = 10 ** math.floor(math.log10(max_m))
    return max(m * k for m in (1, 2, 5) if m * k <= max_m)


def _metres_text(m: float) -> str:
    return f"{m / 1000:g} km" if m >= 1000 else f"{m:g} m"


def draw_bars(draw: ImageDraw.ImageDraw, x: int, y: int, width: int, sar: SarPreview, font) -> None:
    """A grey dB colour bar (with its range and what it means) and a ground scale bar, left to right."""
    bar_w = max(32, min(256, width // 2 - 16))
    ramp = np.linspace(0, 255, bar_w).round().astype(np.uint8)
    for i, g in enumerate(ramp.tolist()):
        draw.line([(x + i, y), (x + i, y + 9)], fill=(g, g, g))
    draw.rectangle([x, y, x + bar_w - 1, y + 9], outline=(0, 0, 0))
    unit = "sigma0 dB" if sar.calibrated else "relative dB (2-98 %)"
    draw.text((x, y + 12), f"{sar.lo:g}", fill=(0, 0, 0), font=font)
    hi = f"{sar.hi:.3g}"
    draw.text((x + bar_w - 6 * len(hi), y + 12), hi, fill=(0, 0, 0), font=font)
    draw.text((x, y + 24), unit, fill=(0, 0, 0), font=font)
    if sar.metres_per_px:
        sx = x + bar_w + 24
        room = max(0, width - (sx - x) - 8)
        length = nice_length(room * sar.metres_per_px * 0.8)
        px = int(round(length / sar.metres_per_px)) if length else 0
        if px >= 8:
            draw.rectangle([sx, y + 2, sx + px, y + 7], fill=(0, 0, 0))
            draw.text((sx, y + 12), _metres_text(length), fill=(0, 0, 0), font=font)


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
    preview = sar_preview(sar_db_path, max_size, db_range)
    sar = preview.rgb
    eo = read_eo_preview(eo_path, max_size)
    h = max(sar.shape[0], eo.shape[0])
    width = sar.shape[1] + gap_px + eo.shape[1]
    font = ImageFont.load_default()
    chars = max(20, width // 7)
    lines = textwrap.wrap(title, chars) if title else []
    line_h = 14
    top = line_h * len(lines) + (8 if lines else 0)
    bars_h = 40  # colour bar + scale bar strip under the panels
    canvas = Image.new("RGB", (width, h + top + bars_h), (255, 255, 255))
    canvas.paste(Image.fromarray(sar, "RGB"), (0, top))
    canvas.paste(Image.fromarray(eo, "RGB"), (sar.shape[1] + gap_px, top))
    draw = ImageDraw.Draw(canvas)
    for i, line in enumerate(lines):
        draw.text((4, 4 + i * line_h), line, fill=(0, 0, 0), font=font)
    draw_bars(draw, 4, h + top + 4, width - 8, preview, font)
    with atomic_path(out_png) as tmp:
        canvas.save(tmp, format="PNG", optimize=False)
    log.info("quicklook: %s (%dx%d)", out_png, canvas.width, canvas.height)
    return Path(out_png)
