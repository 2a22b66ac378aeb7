"""GeoTIFF checks and conversion: a downloaded raster must be usable before it lands in ``source/``."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from pipeline.fetch.stacio import Check, FetchError


def read_whole(path: Path, what: str, max_px: int = 4_000_000) -> None:
    """Decode every block of every band (and the internal mask) of ``path``, a band of rows at a time.

    Headers alone prove nothing: a GeoTIFF cut short still opens, and its missing blocks would
    only fail later, in another stage, with a message naming no file. Memory stays at one band
    of ``max_px`` pixels per band (GDAL's block cache is kept small too).
    """
    import rasterio
    from rasterio._err import CPLE_BaseError
    from rasterio.enums import MaskFlags
    from rasterio.errors import RasterioError
    from rasterio.windows import Window

    try:
        with rasterio.Env(GDAL_CACHEMAX=64 * 2**20), rasterio.open(path) as src:
            block_h = src.block_shapes[0][0] if src.block_shapes else 1
            rows = max(block_h, (max_px // max(1, src.width)) // block_h * block_h)
            masked = MaskFlags.per_dataset in src.mask_flag_enums[0]
            for r in range(0, src.height, rows):
                win = Window(0, r, src.width, min(rows, src.height - r))
                try:
                    src.read(window=win)
                    if masked:
                        src.read_masks(1, window=win)
                except (RasterioError, CPLE_BaseError) as exc:
                    cause = exc.__cause__ or exc.__context__ or exc
                    raise FetchError(f"{what}: truncated or corrupt GeoTIFF: rows {r}..{r + win.height - 1} "
                                     f"cannot be read ({cause})") from None
    except RasterioError as exc:
        raise FetchError(f"{what}: not a readable GeoTIFF ({exc})") from None


def whole_geotiff(what: str) -> Check:
    """A download-cache check (:meth:`Cache.get`): the GeoTIFF decodes whole, else nothing is kept."""
    return lambda path, digest, n: read_whole(path, what)


def check_geotiff(path: Path, what: str, aoi=None) -> dict[str, Any]:
    """Open ``path``; require a CRS (and overlap with ``aoi`` if given). Returns a small summary."""
    import rasterio
    from rasterio.errors import RasterioIOError
    from rasterio.warp import transform_bounds
    from shapely.geometry import box

    try:
        with rasterio.open(path) as src:
            if src.crs is None:
                raise FetchError(f"{what}: GeoTIFF has no CRS; cannot place it on the map")
            if src.transform.is_identity:
                raise FetchError(f"{what}: GeoTIFF has no geotransform")
            bounds = transform_bounds(src.crs, "EPSG:4326", *src.bounds)
            info = {"crs": src.crs.to_string(), "width": src.width, "height": src.height, "count": src.count,
                    "dtype": src.dtypes[0], "bounds_lonlat": [round(b, 9) for b in bounds]}
    except RasterioIOError as exc:
        raise FetchError(f"{what}: not a readable GeoTIFF ({exc})") from None
    if aoi is not None and not box(*bounds).intersects(aoi):
        raise FetchError(f"{what}: image bounds {info['bounds_lonlat']} do not intersect the AOI {aoi.bounds}")
    return info


RGB_PROFILE = {"driver": "GTiff", "count": 3, "dtype": "uint8", "tiled": True, "blockxsize": 256, "blockysize": 256,
               "compress": "deflate", "predictor": 2, "photometric": "RGB"}


def rgb_bands(count: int, bands: list[int] | tuple[int, ...] | None, what: str) -> list[int]:
    """The three bands to read as RGB: ``eo.bands`` (1 band -> grey RGB), else 1-3, else 1 three times."""
    sel = list(bands or ([1, 2, 3] if count >= 3 else [1]))
    if max(sel) > count:
        raise FetchError(f"{what}: eo.bands {sel} but the image has {count} band(s)")
    if len(sel) not in (1, 3):
        raise FetchError(f"{what}: eo.bands must name 1 or 3 bands, got {sel}")
    return (sel * 3)[:3] if len(sel) == 1 else sel


def percentile_scale(sources: list[tuple[Any, list[int]]], what: str, side: int = 1024) -> tuple[float, float]:
    """(lo, hi): the 2nd and 98th percentiles of decimated reads (about ``side`` px a side) of every
    (open dataset, bands) pair, pooled, so several images share one stretch (no seams in a mosaic)."""
    vals = []
    for src, sel in sources:
        f = max(1, max(src.width, src.height) // side)
        shape = (len(sel), max(1, src.height // f), max(1, src.width // f))
        vals.append(src.read(sel, out_shape=shape, masked=True).astype("float64").compressed())
    pooled = np.concatenate(vals) if vals else np.empty(0)
    if pooled.size == 0:
        raise FetchError(f"{what}: image holds no valid pixels")
    lo, hi = np.percentile(pooled, [2, 98])
    return float(lo), float(hi) if hi > lo else float(lo) + 1.0


def to_uint8_rgb(src_path: Path, dest: Path, bands: list[int] | None, what: str, block: int = 1024) -> None:
    """Write ``src_path`` as 3-band uint8 with an internal mask, block by block, in its own CRS.

    Non-uint8 data is stretched linearly between the 2nd and 98th percentiles of a decimated
    read (deterministic); one band is repeated into grey RGB.
    """
    import rasterio
    from rasterio.windows import Window

    with rasterio.open(src_path) as src:
        rgb = rgb_bands(src.count, bands, what)
        scale = percentile_scale([(src, rgb)], what) if src.dtypes[0] != "uint8" else None
        profile = {**RGB_PROFILE, "width": src.width, "height": src.height, "crs": src.crs, "transform": src.transform}
        with rasterio.Env(GDAL_TIFF_INTERNAL_MASK=True), rasterio.open(dest, "w", **profile) as dst:
            for r in range(0, src.height, block):
                for c in range(0, src.width, block):
                    win = Window(c, r, min(block, src.width - c), min(block, src.height - r))
                    data = src.read(rgb, window=win)
                    if scale is not None:
                        lo, hi = scale
                        data = np.clip((data.astype("float32") - lo) * (255.0 / (hi - lo)), 0, 255)
                        data = data.round().astype("uint8")
                    mask = src.dataset_mask(window=win)
                    dst.write(data, window=win)
                    dst.write_mask(mask, window=win)


def raster_footprint(path: Path) -> Any:
    """The lon/lat box of a georeferenced raster (densified edges), as a shapely polygon."""
    import rasterio
    from rasterio.warp import transform_bounds
    from shapely.geometry import box

    with rasterio.open(path) as ds:
        return box(*transform_bounds(ds.crs, "EPSG:4326", *ds.bounds, densify_pts=21))
