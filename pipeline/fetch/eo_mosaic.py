"""Mosaic a scene's chosen EO items into one uint8 RGB GeoTIFF with a mask, in one CRS, block by block.

Why here and not in the grid stage: the grid stage takes one EO image per scene and resamples it
onto the region grid once. So the mosaic keeps pixels as they are wherever it can:

- **Exact paste** (no resampling): an item on the mosaic's pixel grid (same CRS, same pixel size,
  origin an integer number of pixels away, as NAIP quarter-quads in one UTM zone or Sentinel-2
  tiles in one zone are) is copied pixel for pixel. Its pixels are resampled once in all: by the
  grid stage.
- **Resampled once here** (bilinear): an item in another CRS or pixel size (or off the grid by a
  fraction of a pixel) is warped onto the mosaic grid, which is the grid of the first (best-ranked)
  item. Honestly: those pixels are then resampled a second time by the grid stage, onto the region
  grid. Provenance marks each such item ``"resampled": true``; where every item shares a grid none is.

Items are pasted in rank order and never overwrite: where they overlap, the better-ranked item
wins. Pixels no item covers are masked. The extent is the target (scene footprint x AOI) in the
mosaic CRS, grown by ``pad_px`` pixels for the grid stage's resampling kernel, clipped to the items.
Memory: one block of ``block`` x ``block`` pixels per item at a time, never a whole image.
"""

from __future__ import annotations

import math
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from pipeline.atomic import atomic_path
from pipeline.fetch.geotiff import RGB_PROFILE, percentile_scale, rgb_bands
from pipeline.fetch.stacio import FetchError

GRID_TOLERANCE = 1e-6  # in pixels: origins this close to an integer pixel offset are on the same grid


@dataclass(frozen=True)
class MosaicInput:
    """One chosen item's downloaded GeoTIFF and the bands to take (1 band: grey RGB)."""

    path: Path
    item_id: str
    bands: tuple[int, ...] | None = None


def _same_grid(a: Any, b: Any) -> bool:
    """True if transform ``b`` is ``a`` shifted by whole pixels (same CRS assumed, north-up both)."""
    if not (math.isclose(a.a, b.a, rel_tol=1e-9) and math.isclose(a.e, b.e, rel_tol=1e-9)
            and a.b == b.b == 0 and a.d == b.d == 0):
        return False
    dx, dy = (b.c - a.c) / a.a, (b.f - a.f) / a.e
    return abs(dx - round(dx)) < GRID_TOLERANCE and abs(dy - round(dy)) < GRID_TOLERANCE


def mosaic_items(inputs: list[MosaicInput], target_lonlat: Any, dest: Path, pad_px: int = 8,
                 block: int = 1024) -> dict[str, Any]:
    """Write the mosaic of ``inputs`` (rank order) over ``target_lonlat`` to ``dest`` atomically.

    Returns the mosaic record: crs, transform, size, and per item whether it was resampled and
    how many output pixels it filled.
    """
    import rasterio
    from rasterio.enums import ColorInterp, Resampling
    from rasterio.transform import Affine
    from rasterio.vrt import WarpedVRT
    from rasterio.warp import transform_bounds
    from rasterio.windows import Window

    if not inputs:
        raise FetchError(f"{dest}: no EO item to mosaic")
    with ExitStack() as stack:
        srcs = []
        for inp in inputs:
            try:
                src = stack.enter_context(rasterio.open(inp.path))
            except rasterio.errors.RasterioIOError as exc:
                raise FetchError(f"{inp.item_id} ({inp.path}): not a readable GeoTIFF ({exc})") from None
            if src.crs is None or src.transform.is_identity:
                raise FetchError(f"{inp.item_id} ({inp.path}): GeoTIFF has no CRS or geotransform")
            srcs.append(src)
        first = srcs[0]
        crs, base = first.crs, first.transform
        if base.b != 0 or base.d != 0 or base.e >= 0:
            raise FetchError(f"{inputs[0].item_id}: rotated or south-up GeoTIFF; cannot be the mosaic grid")
        on_grid = [s.crs == crs and _same_grid(base, s.transform) for s in srcs]
        # extent: the target in the mosaic CRS, padded, snapped outward to the grid, clipped to the items
        w, s, e, n = transform_bounds("EPSG:4326", crs, *target_lonlat.bounds, densify_pts=21)
        iw, is_, ie, in_ = None, None, None, None
        for src in srcs:
            b = src.bounds if src.crs == crs else transform_bounds(src.crs, crs, *src.bounds, densify_pts=21)
            iw, is_ = (b[0], b[1]) if iw is None else (min(iw, b[0]), min(is_, b[1]))
            ie, in_ = (b[2], b[3]) if ie is None else (max(ie, b[2]), max(in_, b[3]))
        px, py = base.a, -base.e
        col0 = math.floor((max(w, iw) - base.c) / px) - pad_px
        col1 = math.ceil((min(e, ie) - base.c) / px) + pad_px
        row0 = math.floor((base.f - min(n, in_)) / py) - pad_px
        row1 = math.ceil((base.f - max(s, is_)) / py) + pad_px
        # padding never reaches past the items: nothing there to paste
        col0 = max(col0, math.floor((iw - base.c) / px))
        col1 = min(col1, math.ceil((ie - base.c) / px))
        row0 = max(row0, math.floor((base.f - in_) / py))
        row1 = min(row1, math.ceil((base.f - is_) / py))
        width, height = col1 - col0, row1 - row0
        if width <= 0 or height <= 0:
            raise FetchError(f"{dest}: the chosen EO items do not overlap the target {target_lonlat.bounds}")
        out_t = base @ Affine.translation(col0, row0)
        readers = []
        for src, inp, ok in zip(srcs, inputs, on_grid, strict=True):
            sel = rgb_bands(src.count, inp.bands, inp.item_id)
            if ok:
                # the item's pixel (0, 0) in mosaic pixels: an integer offset
                off_c = round((src.transform.c - out_t.c) / px)
                off_r = round((out_t.f - src.transform.f) / py)
                readers.append((src, sel, off_c, off_r))
            else:
                # an alpha band of the item is warped as its mask; else GDAL adds one for the outside
                has_alpha = ColorInterp.alpha in src.colorinterp
                vrt = stack.enter_context(WarpedVRT(src, crs=crs, transform=out_t, width=width, height=height,
                                                    resampling=Resampling.bilinear, add_alpha=not has_alpha))
                readers.append((vrt, sel, 0, 0))
        scale = None
        if any(src.dtypes[0] != "uint8" for src in srcs):
            scale = percentile_scale(
                [(src, rgb_bands(src.count, inp.bands, inp.item_id)) for src, inp in zip(srcs, inputs, strict=True)],
                f"{dest} (EO items {', '.join(i.item_id for i in inputs)})")
        filled = [0] * len(inputs)
        profile = {**RGB_PROFILE, "width": width, "height": height, "crs": crs, "transform": out_t}
        with atomic_path(dest) as tmp, rasterio.Env(GDAL_TIFF_INTERNAL_MASK=True), \
                rasterio.open(tmp, "w", **profile) as dst:
            for r in range(0, height, block):
                for c in range(0, width, block):
                    bh, bw = min(block, height - r), min(block, width - c)
                    out = np.zeros((3, bh, bw), np.uint8)
                    have = np.zeros((bh, bw), bool)
                    for i, (rd, sel, oc, orow) in enumerate(readers):
                        # the block in the reader's pixels, clipped to the reader
                        c0, r0 = c - oc, r - orow
                        a0, b0 = max(c0, 0), max(r0, 0)
                        a1, b1 = min(c0 + bw, rd.width), min(r0 + bh, rd.height)
                        if a1 <= a0 or b1 <= b0:
                            continue
                        win = Window(a0, b0, a1 - a0, b1 - b0)
                        m = rd.dataset_mask(window=win) > 0
                        ys, xs = slice(b0 - r0, b1 - r0), slice(a0 - c0, a1 - c0)
                        take = m & ~have[ys, xs]
                        if not take.any():
                            continue
                        data = rd.read(sel, window=win)
                        if scale is not None:
                            lo, hi = scale
                            data = np.clip((data.astype("float32") - lo) * (255.0 / (hi - lo)), 0, 255)
                            data = data.round().astype("uint8")
                        else:
                            data = data.astype("uint8", copy=False)
                        out[:, ys, xs][:, take] = data[:, take]
                        have[ys, xs] |= take
                        filled[i] += int(take.sum())
                    dst.write(out, window=Window(c, r, bw, bh))
                    dst.write_mask((have * 255).astype(np.uint8), window=Window(c, r, bw, bh))
    if not any(filled):
        raise FetchError(f"{dest}: the chosen EO items hold no valid pixel over the target")
    return {"crs": crs.to_string(), "transform": list(out_t)[:6], "width": width, "height": height,
            "resampling": "bilinear (items not on the first item's grid only)",
            "items": [{"item_id": inp.item_id, "resampled": not ok, "pixels": n}
                      for inp, ok, n in zip(inputs, on_grid, filled, strict=True)]}
