"""XYZ (slippy-map) tiles: tile math in EPSG:3857 and a streaming mosaic into a GeoTIFF.

The mosaic keeps whole tiles on their native Web-Mercator grid (no resampling here: the grid
stage resamples every layer exactly once). It is written tile by tile into a tiled GeoTIFF
whose blocks are the tiles, so memory holds a few tiles, never the whole AOI. Missing tiles
(HTTP 404, missing file) become masked pixels; any other failure stops the mosaic.
"""

from __future__ import annotations

import io
import logging
import math
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np

from pipeline.atomic import atomic_path
from pipeline.progress import Progress

log = logging.getLogger("sareo.tiles")

EARTH_RADIUS = 6378137.0  # the sphere of EPSG:3857
ORIGIN = math.pi * EARTH_RADIUS  # 20037508.342789244
MAX_LAT = math.degrees(math.atan(math.sinh(math.pi)))  # 85.0511...
MAX_TILES = 250_000  # ~16 gigapixels: beyond that a region is surely mis-specified


class TileError(ValueError):
    """A template, zoom or tile that cannot be mosaicked; the message names it."""


def ground_resolution(lat: float, zoom: int, tile_size: int = 256) -> float:
    """Ground metres per pixel of zoom ``zoom`` at latitude ``lat``."""
    return 2 * ORIGIN * math.cos(math.radians(lat)) / (tile_size * 2**zoom)


def zoom_for_gsd(lat: float, gsd_m: float, factor: float = 1.0, max_zoom: int = 22, tile_size: int = 256) -> int:
    """The smallest zoom whose ground resolution at ``lat`` is <= ``gsd_m * factor``.

    Smallest, because each extra zoom level quadruples the tiles; capped at ``max_zoom``.
    """
    target = gsd_m * factor
    if not target > 0:
        raise TileError(f"gsd_m * factor = {target!r}: must be positive")
    for z in range(max_zoom + 1):
        if ground_resolution(lat, z, tile_size) <= target:
            return z
    log.warning("no zoom <= %d reaches %.3f m at latitude %.3f; using %d", max_zoom, target, lat, max_zoom)
    return max_zoom


def lonlat_to_tile(lon: float, lat: float, zoom: int) -> tuple[float, float]:
    """Fractional tile coordinates (x, y) of a point; y grows southwards."""
    lat = max(-MAX_LAT, min(MAX_LAT, lat))
    n = 2**zoom
    x = (lon + 180.0) / 360.0 * n
    y = (1.0 - math.asinh(math.tan(math.radians(lat))) / math.pi) / 2.0 * n
    return x, y


def tile_range(bbox: tuple[float, float, float, float], zoom: int) -> tuple[int, int, int, int]:
    """Inclusive (x0, y0, x1, y1) of the tiles that cover ``bbox`` (west, south, east, north)."""
    west, south, east, north = bbox
    n = 2**zoom
    fx0, fy0 = lonlat_to_tile(west, north, zoom)
    fx1, fy1 = lonlat_to_tile(east, south, zoom)
    x0, y0 = max(0, math.floor(fx0)), max(0, math.floor(fy0))
    # a bbox edge exactly on a tile edge does not pull in the next tile
    x1, y1 = min(n - 1, math.ceil(fx1) - 1), min(n - 1, math.ceil(fy1) - 1)
    return x0, y0, max(x0, x1), max(y0, y1)


def tile_bounds(x: int, y: int, zoom: int) -> tuple[float, float, float, float]:
    """(minx, miny, maxx, maxy) of a tile in EPSG:3857 metres."""
    size = 2 * ORIGIN / 2**zoom
    minx = -ORIGIN + x * size
    maxy = ORIGIN - y * size
    return minx, maxy - size, minx + size, maxy


def tile_href(template: str, zoom: int, x: int, y: int) -> str:
    """Fill {z}/{x}/{y} (XYZ, rows from the north) or {-y} (TMS, rows from the south) of a template.

    ``y`` is always the XYZ row; other braces are left alone.
    """
    return (template.replace("{z}", str(zoom)).replace("{x}", str(x)).replace("{-y}", str(2**zoom - 1 - y))
            .replace("{y}", str(y)))


def decode_tile(data: bytes, tile_size: int, where: str) -> tuple[np.ndarray, np.ndarray]:
    """(rgb (3, h, w) uint8, mask (h, w) uint8 255 = valid) of a PNG/JPEG/WebP tile."""
    from PIL import Image

    try:
        with Image.open(io.BytesIO(data)) as im:
            im.load()
            rgba = np.asarray(im.convert("RGBA"))
    except Exception as exc:  # noqa: BLE001 - Pillow raises several types for bad images
        raise TileError(f"{where}: not a decodable image tile ({exc})") from None
    if rgba.shape[:2] != (tile_size, tile_size):
        raise TileError(f"{where}: tile is {rgba.shape[1]}x{rgba.shape[0]}, expected {tile_size}x{tile_size}")
    mask = np.where(rgba[..., 3] > 0, 255, 0).astype(np.uint8)
    return np.ascontiguousarray(np.moveaxis(rgba[..., :3], -1, 0)), mask


def _chunks(seq: list[Any], n: int) -> Iterator[list[Any]]:
    for i in range(0, len(seq), n):
        yield seq[i : i + n]


def mosaic(
    template: str,
    bbox: tuple[float, float, float, float],
    zoom: int,
    dest: str | Path,
    read_tile: Callable[[str], bytes | None],
    tile_size: int = 256,
    workers: int = 4,
) -> dict[str, Any]:
    """Write the tiles covering ``bbox`` at ``zoom`` into ``dest`` (3-band uint8 EPSG:3857 GeoTIFF).

    ``read_tile(href)`` returns the tile's bytes or None when the tile does not exist.
    Pixels of missing or transparent tiles are 0 and masked out (internal GDAL mask).
    Returns a summary (zoom, tile range, counts, bounds, size) for the provenance.
    """
    import rasterio
    from rasterio.transform import from_bounds
    from rasterio.windows import Window

    x0, y0, x1, y1 = tile_range(bbox, zoom)
    nx, ny = x1 - x0 + 1, y1 - y0 + 1
    if nx * ny > MAX_TILES:
        raise TileError(f"{template}: {nx}x{ny} tiles at zoom {zoom} is more than {MAX_TILES}; lower eo.zoom")
    minx, _, _, maxy = tile_bounds(x0, y0, zoom)
    _, miny, maxx, _ = tile_bounds(x1, y1, zoom)
    width, height = nx * tile_size, ny * tile_size
    profile = {
        "driver": "GTiff",
        "width": width,
        "height": height,
        "count": 3,
        "dtype": "uint8",
        "crs": "EPSG:3857",
        "transform": from_bounds(minx, miny, maxx, maxy, width, height),
        "tiled": True,
        "blockxsize": tile_size,
        "blockysize": tile_size,
        "compress": "deflate",
        "predictor": 2,
        "photometric": "RGB",
        "interleave": "pixel",
    }
    coords = [(x, y) for y in range(y0, y1 + 1) for x in range(x0, x1 + 1)]

    def load(xy: tuple[int, int]) -> tuple[np.ndarray, np.ndarray] | None:
        href = tile_href(template, zoom, *xy)
        data = read_tile(href)
        return None if data is None else decode_tile(data, tile_size, href)

    missing = 0
    done = 0
    empty_rgb = np.zeros((3, tile_size, tile_size), np.uint8)
    empty_mask = np.zeros((tile_size, tile_size), np.uint8)
    with (
        atomic_path(dest) as tmp,
        rasterio.Env(GDAL_TIFF_INTERNAL_MASK=True),
        ThreadPoolExecutor(max_workers=max(1, workers)) as pool,
        Progress(f"tiles z{zoom}", len(coords), "tiles", logger=log) as bar,
    ):
        with rasterio.open(tmp, "w", **profile) as dst:
            for batch in _chunks(coords, max(1, workers) * 4):
                for (x, y), tile in zip(batch, pool.map(load, batch), strict=True):
                    rgb, mask = tile if tile is not None else (empty_rgb, empty_mask)
                    missing += tile is None
                    win = Window((x - x0) * tile_size, (y - y0) * tile_size, tile_size, tile_size)
                    dst.write(rgb, window=win)
                    dst.write_mask(mask, window=win)
                done += len(batch)
                bar.update(len(batch))
                log.debug("tiles: %d/%d written (%d missing)", done, len(coords), missing)
        if missing == len(coords):
            raise TileError(f"{template}: none of the {len(coords)} tiles at zoom {zoom} covering {bbox} exists")
    return {
        "zoom": zoom,
        "tile_size": tile_size,
        "range": [x0, y0, x1, y1],
        "count": len(coords),
        "missing": missing,
        "bounds_3857": [minx, miny, maxx, maxy],
        "width": width,
        "height": height,
    }
