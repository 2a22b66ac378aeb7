"""Burn classified polygons onto any pixel grid, block by block, in priority order.

The polygons are lon/lat (``pipeline.labels.classify``); each block takes only the shapes its
window touches (a spatial index), so no whole scene is ever needed in memory and blocks run as
tasks of the execution layer (``pipeline.execute``: threads, or dask.distributed workers that get
the indexed shapes once). The labels stage and the demo's scenes both burn through here.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, Any

import geopandas as gpd
import numpy as np
import pyproj
import shapely
from affine import Affine
from rasterio.features import rasterize
from rasterio.windows import Window

if TYPE_CHECKING:
    from pipeline.execute import Executor


def iter_windows(shape: tuple[int, int], block: int) -> Iterator[Window]:
    """Row-major blocks covering ``shape`` (rows, cols)."""
    h, w = shape
    for r in range(0, h, block):
        for c in range(0, w, block):
            yield Window(c, r, min(block, w - c), min(block, h - r))


class _Burner:
    """Shapes in a target CRS with a spatial index, burnt in their given order into any window."""

    def __init__(self, geoms: np.ndarray, values: np.ndarray, crs: Any, transform: Affine) -> None:
        series = gpd.GeoSeries(geoms, crs="EPSG:4326")
        if not pyproj.CRS(crs).equals(pyproj.CRS("EPSG:4326")):
            series = series.to_crs(crs)
        self.geoms = np.asarray(series.values, dtype=object)
        self.values = np.asarray(values)
        self.tree = shapely.STRtree(self.geoms)
        self.transform = transform

    def burn(self, win: Window, fill: int = 0) -> np.ndarray:
        h, w = int(win.height), int(win.width)
        wt = self.transform @ Affine.translation(win.col_off, win.row_off)
        xs, ys = zip(*(wt @ (c, r) for c, r in ((0, 0), (w, h))))
        box = shapely.box(min(xs), min(ys), max(xs), max(ys))
        idx = np.sort(self.tree.query(box, predicate="intersects"))  # sorted = burn order kept
        if len(idx) == 0:
            return np.full((h, w), fill, np.uint8)
        shapes = zip(self.geoms[idx], self.values[idx].tolist())
        return rasterize(shapes, out_shape=(h, w), transform=wt, fill=fill, dtype="uint8")


ValidFn = Callable[[Window], np.ndarray]


def _burn_block(task: tuple[_Burner, Any, int], win: Window) -> tuple[Window, np.ndarray]:
    """One block's task: burn the shapes, then mark invalid pixels ``nodata``."""
    burner, valid, nodata = task
    arr = burner.burn(win)
    if valid is not None:
        v = valid(win) if callable(valid) else valid[win.toslices()]
        arr[~np.asarray(v, bool)] = nodata
    return win, arr


def iter_label_blocks(
    classified: gpd.GeoDataFrame,
    crs: Any,
    transform: Affine,
    shape: tuple[int, int],
    valid: np.ndarray | ValidFn | None = None,
    block: int = 2048,
    workers: int = 1,
    nodata: int = 255,
    executor: Executor | None = None,
    what: str = "labels",
) -> Iterator[tuple[Window, np.ndarray]]:
    """Yield (window, uint8 labels) per block, in row-major order.

    Blocks are tasks of ``executor`` (default: ``workers`` local threads); at most 2 x (tasks at
    once) blocks are held, whatever the grid size.
    """
    from pipeline.execute import local

    order = np.lexsort((classified["class_id"].to_numpy(), classified["priority"].to_numpy()))
    burner = _Burner(np.asarray(classified.geometry.values, dtype=object)[order],
                     classified["class_id"].to_numpy(np.uint8)[order], crs, transform)
    wins = list(iter_windows(shape, block))
    ex = executor or local(workers)
    yield from ex.map(_burn_block, wins, what, lambda w: f"block row {w.row_off} col {w.col_off}",
                      shared=(burner, valid, nodata), memory_mb=block * block * 3 / 2**20)


def rasterize_classes(
    classified: gpd.GeoDataFrame,
    crs: Any,
    transform: Affine,
    shape: tuple[int, int],
    valid: np.ndarray | ValidFn | None = None,
    block: int = 2048,
    workers: int = 1,
) -> np.ndarray:
    """Burn classified polygons (EPSG:4326) onto any grid; class 0 where nothing, 255 where not valid.

    Higher priority is burnt later (on top). A pixel takes a class when its centre is inside
    the polygon (GDAL's default rule), on ``crs``/``transform``/``shape`` (rows, cols).
    """
    out = np.empty(shape, np.uint8)
    for win, arr in iter_label_blocks(classified, crs, transform, shape, valid, block, workers):
        out[win.toslices()] = arr
    return out
