"""Grid stage: warp the SAR (calibrated, in dB) and the EO image onto the region grid, once each.

The output grid (``pipeline.grid``) is processed in blocks. For each block the source window it
needs is computed (block bounds -> source CRS -> source pixels, padded for the kernel), only that
window is read, SAR DN is calibrated to *linear power*, reprojected with GDAL (NaN = nodata so
invalid pixels never leak into the kernel) and converted to dB. Blocks are tasks of the execution
layer (``pipeline.execute``: local threads or dask.distributed workers) and are written in a fixed
order, so the output bytes are deterministic and memory is bounded by (2 x tasks x block)
whatever the scene size.

Resampling: SAR is interpolated/averaged in linear power (a mean of dB values is a geometric
mean, biased low by ~2.5 dB on single-look speckle); bilinear near 1:1, box 'average' when the
grid pixel covers several source pixels. EO: bilinear per band, valid mask from the source's
mask (alpha / nodata / internal mask) carried through the same warp as NaN.
"""

from __future__ import annotations

import logging
import math
import shutil
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import rasterio
from affine import Affine
from rasterio.crs import CRS
from rasterio.enums import Resampling
from rasterio.warp import reproject, transform_bounds
from rasterio.windows import Window

from pipeline.atomic import atomic_path, write_json
from pipeline.calibrate import (
    CalibrateParams,
    Calibration,
    CalibrationError,
    calibration_for,
    dn_to_linear,
    linear_to_db,
)
from pipeline.documents import read_json
from pipeline.execute import Executor, local
from pipeline.grid import Grid, aoi_mask, grid_for_bbox, metres_per_degree
from pipeline.layout import GridFiles, RegistrationFiles, SourceFiles
from pipeline.params import param
from pipeline.progress import Progress
from pipeline.quicklook import side_by_side
from pipeline.rasters import reading
from pipeline.provenance import sar_attribution

log = logging.getLogger("sareo.warp")

# GDAL's block cache while a grid GeoTIFF is written, in bytes (rasterio's unit for GDAL_CACHEMAX):
# too small to hold a tile, so every tile is flushed as it is written, in the stage's fixed
# row-major order. A cache that held dirty tiles would evict them in an order that depends on
# the reader threads' timing, and tiles would land at different file offsets (different bytes).
WRITER_CACHE_BYTES = 256

_KERNEL_RADIUS = {"nearest": 1, "bilinear": 1, "average": 1, "cubic": 2, "cubic_spline": 2, "lanczos": 3}


@dataclass(frozen=True)
class GridParams:
    """How SAR and EO are warped onto the region grid (bounded memory at any scene size)."""

    section: ClassVar[str] = "grid"
    block_size: int = param(2048, "output block edge (px) warped as one task; a multiple of tile_size")
    tile_size: int = param(512, "GeoTIFF tile edge of the outputs")
    max_source_px: int = param(8_000_000, "source pixels per block read; blocks shrink when downsampling strongly")
    sar_resampling: str = param("auto", "auto (bilinear below average_above x downsampling, else average) "
                                        "or a rasterio Resampling name; always in linear power")
    average_above: float = param(2.0, "auto: 'average' when a grid pixel spans >= this many source pixels")
    eo_resampling: str = param("bilinear", "rasterio Resampling name for the EO")
    pad_px: int = param(2, "extra source pixels around each window, beyond the kernel radius")
    strip_px: int = param(256, "GDAL warps rows of at most this many px (bounds its row linearisation error)")
    compress: str = param("zstd", "GeoTIFF compression of the outputs")
    gdal_cache_mb: int = param(256, "GDAL block cache (MiB) of dask workers reading source windows; the stage's own "
                               "process keeps GDAL's cache minimal, so output tiles reach the file in write order "
                               "(deterministic bytes) and memory stays bounded")
    quicklook_max_size: int = param(1024, "longest side of quicklook.png")

    def __post_init__(self) -> None:
        for key in ("block_size", "tile_size", "max_source_px", "strip_px", "gdal_cache_mb",
                    "quicklook_max_size"):
            if getattr(self, key) < 1:
                raise ValueError(f"{key}: must be >= 1, got {getattr(self, key)}")
        if self.pad_px < 0:
            raise ValueError(f"pad_px: must be >= 0, got {self.pad_px}")
        if self.block_size % self.tile_size:
            raise ValueError(f"block_size: {self.block_size} must be a multiple of tile_size ({self.tile_size})")
        for key in ("sar_resampling", "eo_resampling"):
            name = getattr(self, key)
            if name not in Resampling.__members__ and not (key == "sar_resampling" and name == "auto"):
                raise ValueError(f"{key}: {name!r} is not a rasterio resampling method")


class WarpError(ValueError):
    """An input the grid stage cannot use; the message names the file and what was expected."""


def grid_of(region: Any) -> Grid:
    """The region's grid (the only way any stage gets it)."""
    return grid_for_bbox(region.bbox, region.gsd_m)


# ----------------------------------------------------------------------------- sources


@dataclass(frozen=True)
class Source:
    """A georeferenced raster on disk, with the transform the warp must use (registration applied)."""

    path: Path
    crs: CRS
    transform: Affine
    width: int
    height: int
    count: int
    dtype: str

    @property
    def pixel_size_m(self) -> float:
        """Ground size of one source pixel (sqrt of the pixel area), in metres."""
        t = self.transform
        size = math.sqrt(abs(t.a * t.e - t.b * t.d))
        if self.crs.is_geographic:
            lon, lat = t @ (self.width / 2, self.height / 2)
            mx, my = metres_per_degree(lat)
            return size * math.sqrt(mx * my)
        return size * float(self.crs.linear_units_factor[1])


@dataclass(frozen=True)
class SarSource(Source):
    """A SAR product plus its calibration."""

    cal: Calibration | None = None


def open_source(path: str | Path, correction: Affine | None = None) -> Source:
    """Describe a GeoTIFF; refuse files without a CRS or geotransform (they cannot be gridded)."""
    path = Path(path)
    if not path.exists():
        raise WarpError(f"{path}: no such file")
    try:
        ds = rasterio.open(path)
    except rasterio.errors.RasterioIOError as exc:
        raise WarpError(f"{path}: not a readable raster ({exc})") from None
    with ds:
        if ds.crs is None:
            raise WarpError(f"{path}: has no CRS; a georeferenced GeoTIFF (e.g. UTM) is required")
        if ds.transform == Affine.identity() and not ds.gcps[0]:
            raise WarpError(f"{path}: has no geotransform; a georeferenced GeoTIFF is required")
        transform = ds.transform if correction is None else correction @ ds.transform
        return Source(path, ds.crs, transform, ds.width, ds.height, ds.count, ds.dtypes[0])


def load_correction(registration: RegistrationFiles | None, sar_crs: CRS | None = None) -> Affine | None:
    """The registration correction to compose with the SAR transform, or None (identity)."""
    reg = None if registration is None else read_json(registration.record, WarpError, required=False)
    if reg is None:
        return None
    where = str(registration.record)
    if not reg.get("applied"):
        return None
    corr = reg.get("correction")
    if not (isinstance(corr, list) and len(corr) >= 6 and all(isinstance(v, (int, float)) for v in corr[:6])):
        raise WarpError(f"{where}: correction: expected 6 numbers [a, b, c, d, e, f], got {corr!r}")
    if sar_crs is not None and reg.get("sar_crs"):
        try:
            same = CRS.from_user_input(reg["sar_crs"]) == sar_crs
        except rasterio.errors.CRSError:
            raise WarpError(f"{where}: sar_crs: {reg['sar_crs']!r} is not a CRS") from None
        if not same:
            raise WarpError(f"{where}: sar_crs: {reg['sar_crs']!r} differs from the SAR file's CRS {sar_crs}")
    return Affine(*[float(v) for v in corr[:6]])


def open_sar(source: SourceFiles, registration: RegistrationFiles | None = None, region: Any = None,
             cal: CalibrateParams | None = None) -> SarSource:
    """The SAR of a fetched region: sar.tif + calibration (sar_metadata.json, provenance.json) + correction."""
    path = source.sar
    raw = open_source(path)
    correction = load_correction(registration, raw.crs)
    src = open_source(path, correction)
    if src.count != 1:
        raise WarpError(f"{path}: has {src.count} bands; expected one band of detected amplitude")
    if src.dtype not in ("uint8", "uint16"):
        raise WarpError(f"{path}: data type {src.dtype}; expected UInt16 (Capella GEO/GEC) or uint8 (Umbra GEC)")
    sar_prov = _provenance(source).get("sar") or {}
    provider = _sar_provider(sar_prov, region)
    product = sar_prov.get("product") or "GEO"
    meta_path = source.sar_metadata
    metadata = read_json(meta_path, CalibrationError, required=False)
    calibration = calibration_for(metadata, provider, product, str(meta_path), cal)
    return SarSource(src.path, src.crs, src.transform, src.width, src.height, src.count, src.dtype, calibration)


# ----------------------------------------------------------------------------- pure helpers


def choose_sar_resampling(src_px_m: float, dst_px_m: float, p: GridParams | None = None) -> Resampling:
    """Bilinear near 1:1 (GDAL widens the kernel when downsampling), box average when much coarser."""
    p = p or GridParams()
    name = p.sar_resampling
    if name == "auto":
        name = "average" if dst_px_m / src_px_m >= p.average_above else "bilinear"
    return Resampling[name]


def _pixel_window(src_crs: Any, src_transform: Affine, src_shape: tuple[int, int], dst_transform: Affine,
                  dst_shape: tuple[int, int], dst_crs: Any, resampling: Resampling, pad_px: int) -> Window | None:
    h, w = dst_shape
    west, north = dst_transform @ (0, 0)
    east, south = dst_transform @ (w, h)
    l, b, r, t = transform_bounds(dst_crs, src_crs, min(west, east), min(south, north), max(west, east),
                                  max(south, north), densify_pts=21)
    inv = ~src_transform
    corners = [inv @ (x, y) for x in (l, r) for y in (b, t)]
    cols = [c for c, _ in corners]
    rows = [r_ for _, r_ in corners]
    # Source pixels per destination pixel: the kernel widens by this when downsampling.
    ratio = max((max(cols) - min(cols)) / max(w, 1), (max(rows) - min(rows)) / max(h, 1), 1.0)
    pad = math.ceil(_KERNEL_RADIUS.get(resampling.name, 3) * ratio) + pad_px
    c0 = max(math.floor(min(cols)) - pad, 0)
    r0 = max(math.floor(min(rows)) - pad, 0)
    c1 = min(math.ceil(max(cols)) + pad, src_shape[1])
    r1 = min(math.ceil(max(rows)) + pad, src_shape[0])
    if c1 <= c0 or r1 <= r0:
        return None
    return Window(c0, r0, c1 - c0, r1 - r0)


def source_window(src: Source, dst_transform: Affine, dst_shape: tuple[int, int], dst_crs: Any = "EPSG:4326",
                  resampling: Resampling = Resampling.bilinear, pad_px: int = 2) -> Window | None:
    """The source pixel window a destination block needs (kernel-padded, clipped), or None if disjoint."""
    return _pixel_window(src.crs, src.transform, (src.height, src.width), dst_transform, dst_shape, dst_crs,
                         resampling, pad_px)


def warp_array(src: np.ndarray, src_transform: Affine, src_crs: Any, dst_transform: Affine,
               dst_shape: tuple[int, int], dst_crs: Any = "EPSG:4326",
               resampling: Resampling = Resampling.bilinear, scale: float | None = None,
               strip_px: int = 256, pad_px: int = 2) -> np.ndarray:
    """Reproject a float32 array (NaN = no data; 2-D or bands-first 3-D) onto a destination block.

    Two GDAL defaults are pinned so the result is position-exact and independent of blocking:
    GDAL interpolates transformed coordinates linearly along each destination row (error up to
    0.125 px; 0.07 px along a 2048 px row at 60 N); rows are therefore warped in strips of
    ``strip_px`` columns, which keeps that error near 0.001 px (256 px). And the kernel widening
    for downsampling (XSCALE/YSCALE) is fixed to
    ``scale`` (destination px per source px, <= 1) instead of GDAL's per-chunk estimate.
    """
    bands = src.shape[0] if src.ndim == 3 else None
    h, w = dst_shape
    out = np.full((bands, h, w) if bands else (h, w), np.nan, dtype=np.float32)
    extra = {} if scale is None else {"XSCALE": f"{min(scale, 1.0):.6f}", "YSCALE": f"{min(scale, 1.0):.6f}"}
    src_hw = src.shape[-2:]
    for c0 in range(0, w, strip_px):
        cw = min(strip_px, w - c0)
        st = dst_transform @ Affine.translation(c0, 0)
        win = _pixel_window(src_crs, src_transform, src_hw, st, (h, cw), dst_crs, resampling, pad_px)
        if win is None:
            continue
        sub = src[..., win.row_off : win.row_off + win.height, win.col_off : win.col_off + win.width]
        if not np.isfinite(sub).any():
            continue
        part = np.full((bands, h, cw) if bands else (h, cw), np.nan, dtype=np.float32)
        reproject(np.ascontiguousarray(sub), part,
                  src_transform=src_transform @ Affine.translation(win.col_off, win.row_off),
                  src_crs=src_crs, src_nodata=np.nan, dst_transform=st, dst_crs=dst_crs, dst_nodata=np.nan,
                  resampling=resampling, num_threads=1, **extra)
        out[..., c0 : c0 + cw] = part
    return out


def _window_transform(src: Source, win: Window) -> Affine:
    return src.transform @ Affine.translation(win.col_off, win.row_off)


def _scale(src: Source, dst_transform: Affine, dst_crs: Any) -> float:
    """Destination pixels per source pixel (ground sizes), for GDAL's kernel widening."""
    grid_like = Source(src.path, CRS.from_user_input(dst_crs), dst_transform, 1, 1, 1, "float32")
    return src.pixel_size_m / grid_like.pixel_size_m


def warp_sar_block(sar: SarSource, dst_transform: Affine, dst_shape: tuple[int, int],
                   resampling: Resampling = Resampling.bilinear, dst_crs: Any = "EPSG:4326",
                   db: bool = True, pad_px: int = 2, strip_px: int = 256) -> np.ndarray:
    """SAR on one destination block: read the needed window, calibrate, warp in linear power.

    Returns float32 (h, w): sigma0 dB (or linear power with ``db=False``), NaN = no data.
    """
    if sar.cal is None:
        raise WarpError(f"{sar.path}: no calibration attached; use open_sar()")
    win = source_window(sar, dst_transform, dst_shape, dst_crs, resampling, pad_px)
    if win is None:
        return np.full(dst_shape, np.nan, dtype=np.float32)
    with rasterio.open(sar.path) as ds, reading(sar.path, f"window {win}"):
        dn = ds.read(1, window=win)
    power = dn_to_linear(dn, sar.cal)
    del dn
    out = warp_array(power, _window_transform(sar, win), sar.crs, dst_transform, dst_shape, dst_crs, resampling,
                     _scale(sar, dst_transform, dst_crs), strip_px, pad_px)
    return linear_to_db(out) if db else out


def read_sar_block(source: SourceFiles, grid: Grid, window: Window, registration: RegistrationFiles | None = None,
                   p: GridParams | None = None, cal: CalibrateParams | None = None, db: bool = True) -> np.ndarray:
    """Convenience: calibrated SAR of ``source`` on a window of ``grid`` (for co-registration, patches)."""
    p = p or GridParams()
    sar = open_sar(source, registration, cal=cal)
    res = choose_sar_resampling(sar.pixel_size_m, grid.gsd_m, p)
    w = Window(*(int(v) for v in (window.col_off, window.row_off, window.width, window.height)))
    return warp_sar_block(sar, grid.window_transform(w.row_off, w.col_off), (w.height, w.width), res, grid.crs,
                          db, p.pad_px, p.strip_px)


def warp_eo_block(eo: Source, dst_transform: Affine, dst_shape: tuple[int, int],
                  resampling: Resampling = Resampling.bilinear, dst_crs: Any = "EPSG:4326",
                  pad_px: int = 2, strip_px: int = 256) -> tuple[np.ndarray, np.ndarray]:
    """EO on one destination block: (uint8 RGB (3, h, w), bool valid (h, w)).

    Invalid source pixels (mask 0) become NaN before the warp, so GDAL excludes them from the
    kernel and no black fringe bleeds into valid pixels; a pixel is valid if all bands got a value.
    """
    h, w = dst_shape
    rgb = np.zeros((3, h, w), dtype=np.uint8)
    win = source_window(eo, dst_transform, dst_shape, dst_crs, resampling, pad_px)
    if win is None:
        return rgb, np.zeros((h, w), dtype=bool)
    bands = [1, 2, 3] if eo.count >= 3 else [1, 1, 1]
    with rasterio.open(eo.path) as ds, reading(eo.path, f"window {win}"):
        data = ds.read(bands, window=win).astype(np.float32)
        mask = ds.dataset_mask(window=win)  # alpha, nodata or internal mask, whichever the file has
    data[:, mask == 0] = np.nan
    del mask
    out = warp_array(data, _window_transform(eo, win), eo.crs, dst_transform, dst_shape, dst_crs, resampling,
                     _scale(eo, dst_transform, dst_crs), strip_px, pad_px)
    del data
    valid = np.isfinite(out).all(axis=0)
    np.clip(np.rint(out), 0, 255, out=out)
    rgb[:, valid] = out[:, valid].astype(np.uint8)
    return rgb, valid


# ----------------------------------------------------------------------------- block runner


def block_size_for(src_px_m: float, dst_px_m: float, p: GridParams | None = None) -> int:
    """Output block edge so one block's source window stays under ``max_source_px`` (bounded memory)."""
    p = p or GridParams()
    tile = p.tile_size
    ratio = max(dst_px_m / src_px_m, 1.0)
    edge = math.sqrt(float(p.max_source_px)) / ratio
    return int(max(tile, min(p.block_size, math.floor(edge / tile) * tile)))


def blocks(grid: Grid, block: int) -> Iterator[Window]:
    """Output windows in row-major order (the write order, hence deterministic bytes)."""
    for r in range(0, grid.height, block):
        for c in range(0, grid.width, block):
            yield Window(c, r, min(block, grid.width - c), min(block, grid.height - r))


def run_blocks(grid: Grid, block: int, compute: Callable[[Window], Any], write: Callable[[Window, Any], None],
               executor: Executor | None = None, label: str = "blocks", gdal_cache_mb: int | None = None,
               memory_mb: float | None = None) -> None:
    """Compute blocks as tasks of ``executor`` and write each result in row-major order (deterministic bytes).

    Writing block i overlaps computing the next ones; at most 2 x (tasks at once) results are held.
    """
    wins = list(blocks(grid, block))
    ex = executor or local()
    with Progress(label, len(wins), "blocks", logger=log) as bar:
        results = ex.map(compute, wins, label, lambda w: f"block row {w.row_off} col {w.col_off}",
                         gdal_cache_mb=gdal_cache_mb, memory_mb=memory_mb)
        for w, r in zip(wins, results):
            write(w, r)
            bar.update()


def block_memory_mb(block: int, p: GridParams, bands: int) -> float:
    """A warp task's peak (MiB): its source window (float32 per band, plus the DN or mask read) and the
    float32 output block, twice for GDAL's working copy; GDAL's cache comes on top, once per process."""
    return (p.max_source_px * (4 * bands + 2) + 2 * block * block * 4 * bands) / 2**20


def _profile(grid: Grid, p: GridParams, **kw: Any) -> dict[str, Any]:
    tile = p.tile_size
    prof = {
        "driver": "GTiff", "width": grid.width, "height": grid.height, "crs": grid.crs,
        "transform": grid.transform, "tiled": True, "blockxsize": tile, "blockysize": tile,
        "compress": p.compress, "BIGTIFF": "IF_SAFER",
    }
    prof.update(kw)
    return prof


def write_sar_grid(sar: SarSource, grid: Grid, dest: str | Path, p: GridParams | None = None,
                   tags: dict[str, str] | None = None, aoi: Any = None, executor: Executor | None = None,
                   what: str = "sar") -> dict[str, Any]:
    """Warp the whole SAR onto ``grid`` block by block into a float32 dB GeoTIFF (atomic). Returns stats.

    ``aoi``: a lon/lat polygon; pixels outside it are no data (NaN).
    """
    p = p or GridParams()
    resampling = choose_sar_resampling(sar.pixel_size_m, grid.gsd_m, p)
    block = block_size_for(sar.pixel_size_m, grid.gsd_m, p)
    prof = _profile(grid, p, count=1, dtype="float32", nodata=float("nan"), predictor=3)
    valid = [0]

    def compute(w: Window) -> np.ndarray:
        arr = warp_sar_block(sar, grid.window_transform(w.row_off, w.col_off), (w.height, w.width),
                             resampling, grid.crs, True, p.pad_px, p.strip_px)
        inside = aoi_mask(aoi, grid, w)
        if inside is not None:
            arr[~inside] = np.nan
        return arr

    with rasterio.Env(GDAL_CACHEMAX=WRITER_CACHE_BYTES), atomic_path(dest) as tmp:
        with rasterio.open(tmp, "w", **prof) as dst:
            dst.update_tags(**(tags or {}), **sar.cal.to_tags(), resampling=f"{resampling.name} in linear power")
            dst.set_band_description(1, "sigma0_dB" if sar.cal.calibrated else "relative_dB")

            def write(w: Window, arr: np.ndarray) -> None:
                valid[0] += int(np.isfinite(arr).sum())
                dst.write(arr, 1, window=w)

            run_blocks(grid, block, compute, write, executor, what, p.gdal_cache_mb,
                       block_memory_mb(block, p, 1))
    share = valid[0] / (grid.width * grid.height)
    log.info("sar: %s, %s resampling, %.1f %% valid", dest, resampling.name, 100 * share)
    return {"resampling": resampling.name, "block": block, "valid_share": share}


def write_eo_grid(eo: Source, grid: Grid, dest: str | Path, p: GridParams | None = None,
                  tags: dict[str, str] | None = None, aoi: Any = None, executor: Executor | None = None,
                  what: str = "eo") -> dict[str, Any]:
    """Warp the EO image onto ``grid`` into uint8 RGB + band 4 valid mask (255/0), atomically.

    ``aoi``: a lon/lat polygon; pixels outside it are no data (0, mask 0).
    """
    p = p or GridParams()
    resampling = Resampling[p.eo_resampling]
    block = block_size_for(eo.pixel_size_m, grid.gsd_m, p)
    prof = _profile(grid, p, count=4, dtype="uint8", photometric="RGB", alpha="YES", predictor=2)
    valid = [0]

    def compute(w: Window) -> tuple[np.ndarray, np.ndarray]:
        rgb, ok = warp_eo_block(eo, grid.window_transform(w.row_off, w.col_off), (w.height, w.width), resampling,
                                grid.crs, p.pad_px, p.strip_px)
        inside = aoi_mask(aoi, grid, w)
        if inside is not None:
            ok &= inside
            rgb[:, ~ok] = 0
        return rgb, ok

    with rasterio.Env(GDAL_CACHEMAX=WRITER_CACHE_BYTES), atomic_path(dest) as tmp:
        with rasterio.open(tmp, "w", **prof) as dst:
            dst.update_tags(**(tags or {}), resampling=resampling.name, band4="valid mask: 255 valid, 0 no data")

            def write(w: Window, res: tuple[np.ndarray, np.ndarray]) -> None:
                rgb, ok = res
                valid[0] += int(ok.sum())
                dst.write(rgb, [1, 2, 3], window=w)
                dst.write(ok.astype(np.uint8) * 255, 4, window=w)

            run_blocks(grid, block, compute, write, executor, what, p.gdal_cache_mb,
                       block_memory_mb(block, p, 3))
    share = valid[0] / (grid.width * grid.height)
    log.info("eo: %s, %s resampling, %.1f %% valid", dest, resampling.name, 100 * share)
    return {"resampling": resampling.name, "block": block, "valid_share": share}


# ----------------------------------------------------------------------------- stage


def _provenance(source: SourceFiles) -> dict[str, Any]:
    return read_json(source.provenance, WarpError, required=False) or {}


def _sar_provider(sar_prov: dict[str, Any], region: Any) -> str:
    """The SAR provider as fetched (the scene's provenance.json), else Capella."""
    return sar_prov.get("provider") or "capella"


def grid_region(region: Any, source: SourceFiles, registration: RegistrationFiles | None, out: GridFiles,
                p: GridParams | None = None, cal: CalibrateParams | None = None,
                executor: Executor | None = None) -> Grid:
    """Stage entry point: grid.json and the region EO on the grid; each scene's SAR (dB) on the same grid.

    Every image is warped once: each scene's SAR (with its own registration correction, when
    applied) into ``scenes/ID/sar_db.tif``; the region's EO into ``eo.tif``; a scene with an EO of
    its own (a different file) gets ``scenes/ID/eo.tif``. The whole grid/ appears at once.
    ``registration`` None (or a scene's record absent or not applied) keeps that SAR as published.
    Blocks are tasks of ``executor`` (default: local threads).
    """
    from pipeline.scenes import read_scenes

    p = p or GridParams()
    grid = grid_of(region)
    scenes = read_scenes(source)
    region_eo = open_source(source.eo) if source.eo.is_file() else None  # none when each scene has its own
    region_prov = _provenance(source)
    region_eo_sha = (region_prov.get("eo") or {}).get("sha256") if region_eo else None
    polygon = region.aoi if getattr(region, "aoi_geojson", None) else None  # a bbox AOI is the grid itself
    log.info("grid %s: %dx%d px at %g m, %d scene(s)", region.name, grid.width, grid.height, grid.gsd_m, len(scenes))
    with atomic_path(out.dir) as tmp:  # the whole grid/ appears at once, or not at all
        tmp.mkdir()
        t = out.at(tmp)
        write_json(t.grid, grid.to_dict())
        eo_attr = (_write_eo(region_eo, region_prov, region, grid, t.eo, p, polygon, executor, f"grid {region.name}: eo")
                   if region_eo else "")
        for k, sc in enumerate(scenes):
            st = t.scene(sc.id)
            st.dir.mkdir(parents=True)
            prov = _provenance(sc.files)
            reg = registration.scene(sc.id) if registration is not None else None
            sar = open_sar(sc.files, reg, region, cal)
            sar_prov = prov.get("sar") or {}
            sar_attr = sar_attribution(sar_prov, _sar_provider(sar_prov, region), default="CC BY 4.0")
            write_sar_grid(sar, grid, st.sar_db, p,
                           {"region": region.name, "scene": sc.id, "attribution": sar_attr, "registration_applied":
                            "true" if load_correction(reg) is not None else "false"}, aoi=polygon,
                           executor=executor, what=f"grid {region.name}: scene {sc.id} sar")
            eo_path, attr = t.eo, eo_attr
            if region_eo is None or (prov.get("eo") or {}).get("sha256") != region_eo_sha:  # an EO of its own
                eo_path = st.eo
                attr = _write_eo(open_source(sc.files.eo), prov, region, grid, eo_path, p, polygon, executor,
                                 f"grid {region.name}: scene {sc.id} eo")
            credits = "; ".join(a for a in (sar_attr, attr) if a)
            side_by_side(st.sar_db, eo_path, st.quicklook, max_size=p.quicklook_max_size,
                         title=f"{region.name} {sc.id}  SAR | EO   {credits}")
            if k == 0:
                shutil.copyfile(st.quicklook, t.quicklook)
    return grid


def _write_eo(eo: Source, prov: dict[str, Any], region: Any, grid: Grid, dest: Path, p: GridParams,
              polygon: Any, executor: Executor | None = None, what: str = "eo") -> str:
    """Warp one EO image onto the grid; returns its attribution."""
    if eo.dtype != "uint8":
        raise WarpError(f"{eo.path}: data type {eo.dtype}; expected uint8 RGB")
    attr = (prov.get("eo") or {}).get("attribution") or region.attribution or ""
    write_eo_grid(eo, grid, dest, p, {"region": region.name, "attribution": attr}, aoi=polygon, executor=executor,
                  what=what)
    return attr
