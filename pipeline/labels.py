"""Land-cover labels: classify OSM features with the legend and burn them onto a pixel grid.

Three small steps, each usable alone:
``classify`` (OSM rows -> polygons with class id and burn priority; lines buffered in metres
in a local UTM CRS, then brought back to lon/lat; open sea closed from natural=coastline by
``pipeline.coast``, see ``sea_features``), ``rasterize_classes`` / ``iter_label_blocks``
(burn in priority order onto ANY grid, block by block, so no whole scene is ever needed in
memory), and the stage entry point ``label_region`` that writes labels.tif, zones.tif,
labels.json and labels.png for a region grid. The stage reads its OSM only from the region's
``source/`` (put there, hashed and recorded by the fetch stage), never from the region file or
the network, so it is offline, deterministic and fully known to DVC.
"""

from __future__ import annotations

import io
import json
import logging
import math
import re
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import geopandas as gpd
import numpy as np
import pandas as pd
import pyproj
import rasterio
import shapely
from affine import Affine
from rasterio.features import rasterize
from rasterio.windows import Window

from pipeline.atomic import atomic_path, write_json
from pipeline.coast import DEFAULTS as COAST_DEFAULTS
from pipeline.coast import SeaResult, coastline_lines, sea_lonlat
from pipeline.documents import read_json
from pipeline.grid import Grid
from pipeline.legend import Legend, load_legend
from pipeline.osm import DEFAULTS as OSM_DEFAULTS
from pipeline.osm import OsmFeatures, data_source, read_osm, read_window
from pipeline.provenance import OSM, sha256_file
from pipeline.urban import equal_area_crs, urban_rural, zone_frames

log = logging.getLogger("sareo.labels")

DEFAULTS: dict[str, Any] = {
    "legend": None,  # path of a legend file; None = pipeline/legend.yaml
    "block_size": 2048,  # pixels per rasterisation block side (a multiple of tile_size)
    "tile_size": 512,  # GeoTIFF tile side
    "workers": 2,  # threads rasterising blocks in parallel
    "read_margin_m": OSM_DEFAULTS["read_margin_m"],  # OSM read beyond the grid so wide roads just outside burn in
    "png_max_px": 1600,  # longest side of labels.png's map panel
    "sea": True,  # close natural=coastline into sea polygons (needs a `sea` entry in the legend)
    "coast_snap_m": COAST_DEFAULTS["snap_m"],  # extend coastline ends this close to the clip border (clipped extracts)
}

OUT_COLUMNS = ["osm_id", "class_id", "priority", "role", "density", "key", "kind", "width_m", "length_m", "geometry"]
_NUM_RE = re.compile(r"^\s*([0-9]+(?:[.,][0-9]+)?)\s*(m|meters?|metres?|ft|feet|')?\s*$", re.I)


class LabelsError(ValueError):
    """Inputs of the labels stage that cannot be used; the message names the file and the problem."""


def _params(params: dict[str, Any] | None) -> dict[str, Any]:
    return {**DEFAULTS, **((params or {}).get("labels", {}) or {})}


def utm_crs(lon: float, lat: float) -> pyproj.CRS:
    """The WGS84 UTM zone CRS containing (lon, lat): where buffering in metres is accurate."""
    zone = min(int((lon + 180) // 6) + 1, 60)
    return pyproj.CRS.from_epsg((32600 if lat >= 0 else 32700) + zone)


def parse_width(value: Any) -> float:
    """Metres from an OSM ``width`` tag ("5", "5 m", "3,5", "12 ft"); NaN when unusable."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return math.nan
    m = _NUM_RE.match(str(value))
    if not m:
        return math.nan
    w = float(m.group(1).replace(",", "."))
    unit = (m.group(2) or "m").lower()
    return w * 0.3048 if unit in ("ft", "feet", "'") else w


def parse_lanes(value: Any) -> float:
    """Number of lanes from an OSM ``lanes`` tag ("2", "2;3" -> 3); NaN when unusable."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return math.nan
    nums = [float(x) for x in re.findall(r"[0-9]+(?:\.[0-9]+)?", str(value))]
    return max(nums) if nums else math.nan


def _str_col(gdf: pd.DataFrame, key: str) -> pd.Series:
    if key not in gdf:
        return pd.Series([None] * len(gdf), index=gdf.index, dtype=object)
    col = gdf[key]
    return col.where(col.notna(), None).astype(object)


def _excluded(gdf: pd.DataFrame, legend: Legend) -> np.ndarray:
    """Rows the sensor cannot see: tunnels, covered, underground, negative layer."""
    out = np.zeros(len(gdf), bool)
    for key, values in legend.exclude:
        out |= _str_col(gdf, key).isin(values).to_numpy()
    layer = pd.to_numeric(_str_col(gdf, "layer"), errors="coerce")
    out |= (layer < 0).to_numpy()
    return out


def _as_areas(gdf: gpd.GeoDataFrame) -> np.ndarray:
    """Polygon geometry per row: areas as they are, closed ways (ring of >= 4 points) as polygons.

    GDAL's OSM driver only makes polygons of closed ways for a fixed list of keys, so e.g. a
    closed ``power=substation`` or ``area:highway`` way arrives as a line; area rules accept it.
    """
    geoms = np.asarray(gdf.geometry.values, dtype=object)
    out = np.full(len(gdf), None, dtype=object)
    is_area = (gdf["kind"] == "area").to_numpy()
    out[is_area] = geoms[is_area]
    lines = (~is_area) & np.isin(shapely.get_type_id(geoms), [1, 2])
    closed = lines & shapely.is_closed(geoms) & (shapely.get_num_coordinates(geoms) >= 4)
    closed &= ~_str_col(gdf, "area").isin(["no"]).to_numpy()
    if closed.any():
        rings = shapely.linearrings(shapely.get_coordinates(geoms[closed]), indices=_ring_index(geoms[closed]))
        polys = shapely.polygons(rings)
        polys = shapely.make_valid(polys)
        out[closed] = polys
    return out


def _ring_index(geoms: np.ndarray) -> np.ndarray:
    counts = shapely.get_num_coordinates(geoms)
    return np.repeat(np.arange(len(geoms)), counts)


def _frame(features: OsmFeatures | gpd.GeoDataFrame) -> gpd.GeoDataFrame:
    """The rows in EPSG:4326."""
    gdf = features.gdf if isinstance(features, OsmFeatures) else features
    if gdf.crs is not None and not pyproj.CRS(gdf.crs).equals(pyproj.CRS("EPSG:4326")):
        gdf = gdf.to_crs("EPSG:4326")
    return gdf


def sea_clip_boxes(features: OsmFeatures | gpd.GeoDataFrame) -> list[tuple[float, float, float, float]]:
    """Rectangles to close the coastline in, in order of preference.

    The read window first: every way crossing it was read, so a real coastline closes there.
    Then that window cut to the bounds the extract declares, where a clipped extract's
    coastline stops. Without a window (whole file): the declared bounds, else the data's extent.
    """
    bbox = features.bbox if isinstance(features, OsmFeatures) else None
    extent = features.extent if isinstance(features, OsmFeatures) else None
    if bbox is None:
        gdf = _frame(features)
        box = extent or (tuple(float(v) for v in gdf.total_bounds) if len(gdf) else None)
        return [box] if box else []
    boxes = [tuple(float(v) for v in bbox)]
    if extent is not None:
        cut = (max(bbox[0], extent[0]), max(bbox[1], extent[1]), min(bbox[2], extent[2]), min(bbox[3], extent[3]))
        if cut != boxes[0] and cut[2] > cut[0] and cut[3] > cut[1]:
            boxes.append(cut)
    return boxes


def _empty() -> gpd.GeoDataFrame:
    return gpd.GeoDataFrame({c: [] for c in OUT_COLUMNS[:-1]}, geometry=[], crs="EPSG:4326")


def classify(
    features: OsmFeatures | gpd.GeoDataFrame, legend: Legend | None = None, params: dict[str, Any] | None = None
) -> gpd.GeoDataFrame:
    """Match OSM rows to legend classes; returns polygons (EPSG:4326) sorted in burn order.

    Columns: geometry, class_id, priority, plus osm_id, role, density, key (tag key of the
    matching rule), kind ("area", "line" or "sea"), width_m and length_m (lines, metres, before
    buffering). A row matching several classes appears once per class; burning in priority
    order makes the highest priority win, as intended. Lines are buffered by width/2 (round
    caps) in the local UTM zone and transformed back, so widths are true metres anywhere.
    Open sea (kind "sea") comes from ``sea_features`` unless ``labels.sea`` is false.
    """
    legend = legend or load_legend()
    land = classify_tags(features, legend)
    if not _params(params)["sea"]:
        return land
    sea, _ = sea_features(features, legend, params)
    return with_sea(land, sea)


def with_sea(land: gpd.GeoDataFrame, sea: gpd.GeoDataFrame) -> gpd.GeoDataFrame:
    """Classified tag features plus sea rows, in burn order."""
    if len(sea) == 0:
        return land
    out = gpd.GeoDataFrame(pd.concat([land, sea], ignore_index=True), geometry="geometry", crs="EPSG:4326")
    out = out.sort_values(["priority", "class_id", "osm_id"], kind="stable").reset_index(drop=True)
    out["class_id"] = out["class_id"].astype(np.uint8)
    out["priority"] = out["priority"].astype(np.int32)
    return out[OUT_COLUMNS]


def sea_features(
    features: OsmFeatures | gpd.GeoDataFrame, legend: Legend | None = None, params: dict[str, Any] | None = None
) -> tuple[gpd.GeoDataFrame, SeaResult]:
    """Open sea polygons (rows like ``classify``'s, kind "sea") from the natural=coastline ways.

    Closed in the rectangles of ``sea_clip_boxes``, first success wins. No sea if the legend
    has no ``sea`` entry, if there is no coastline, or if it is inconsistent (see the result).
    """
    legend = legend or load_legend()
    p = _params(params)
    gdf = _frame(features)
    if legend.sea is None or len(gdf) == 0 or "natural" not in gdf:
        why = "the legend has no sea entry" if legend.sea is None else "no natural tags"
        return _empty(), SeaResult(shapely.Polygon(), "no_coastline", why)
    coast = gdf[_str_col(gdf, "natural").eq("coastline").to_numpy()]
    lines = coastline_lines(coast.geometry.values)
    if not lines:
        return _empty(), SeaResult(shapely.Polygon(), "no_coastline", "no natural=coastline in the OSM data")
    result = sea_lonlat(lines, sea_clip_boxes(features), float(p["coast_snap_m"]))
    if result.status == "skipped":
        log.warning("sea skipped (%d coastline ways): %s at %s", len(coast), result.reason, result.at)
    else:
        log.info("sea: %s, %d water face(s) of %d", result.status, result.water_faces, result.faces)
    parts = [g for g in getattr(result.geometry, "geoms", [result.geometry]) if not g.is_empty]
    if not parts:
        return _empty(), result
    n = len(parts)
    rows = gpd.GeoDataFrame(
        {"osm_id": [f"coastline:{i}" for i in range(n)], "class_id": np.full(n, legend.sea.class_id, np.uint8),
         "priority": np.full(n, legend.sea.priority, np.int32), "role": "neither", "density": None,
         "key": "natural", "kind": "sea", "width_m": np.nan, "length_m": np.nan},
        geometry=parts, crs="EPSG:4326")
    return rows[OUT_COLUMNS], result


def classify_tags(features: OsmFeatures | gpd.GeoDataFrame, legend: Legend | None = None) -> gpd.GeoDataFrame:
    """``classify`` without the sea: the legend's tag rules only."""
    legend = legend or load_legend()
    gdf = _frame(features)
    empty = _empty()
    if len(gdf) == 0:
        return empty
    gdf = gdf.reset_index(drop=True)
    if "kind" not in gdf:
        gtype = gdf.geometry.geom_type
        gdf["kind"] = np.where(gtype.isin(["Polygon", "MultiPolygon"]), "area", "line")
    if "osm_id" not in gdf:
        gdf["osm_id"] = [f"f{i}" for i in range(len(gdf))]
    keep = ~_excluded(gdf, legend)
    area_geom = _as_areas(gdf)
    type_id = shapely.get_type_id(np.asarray(gdf.geometry.values))
    is_line = (gdf["kind"] == "line").to_numpy() & np.isin(type_id, [1, 2, 5])
    width_tag = _str_col(gdf, "width").map(parse_width).to_numpy(float)
    lanes = _str_col(gdf, "lanes").map(parse_lanes).to_numpy(float)

    area_parts, line_parts = [], []
    for cls in legend.classes:
        for rule in cls.rules:
            val = _str_col(gdf, rule.key)
            m = val.notna().to_numpy() & keep
            if rule.values is not None:
                m &= val.isin(rule.values).to_numpy()
            m &= ~val.isin(rule.except_).to_numpy()
            for k, vetoed in rule.unless:
                m &= ~_str_col(gdf, k).isin(vetoed).to_numpy()
            if not m.any():
                continue
            base = {"class_id": cls.id, "priority": cls.priority, "role": cls.role, "density": cls.density,
                    "key": rule.key}
            if rule.geometry == "area":
                sel = m & (area_geom != None)  # noqa: E711 - elementwise on an object array
            elif rule.geometry == "any":
                sel = m & (gdf["kind"] == "area").to_numpy()
            else:
                sel = np.zeros(len(gdf), bool)
            if sel.any():
                area_parts.append(pd.DataFrame({**base, "osm_id": gdf["osm_id"].to_numpy()[sel], "kind": "area",
                                                "width_m": np.nan, "length_m": np.nan, "geometry": area_geom[sel]}))
            lsel = m & is_line if rule.geometry in ("line", "any") else np.zeros(len(gdf), bool)
            if lsel.any():
                default = val[lsel].map(lambda v, r=rule: r.default_width(v)).to_numpy(float)
                wt, ln = width_tag[lsel], lanes[lsel]
                w = np.where(np.isfinite(wt) & (wt > 0), wt,
                             np.where(np.isfinite(ln) & (ln > 0), ln * legend.lane_width_m, default))
                w = np.clip(w, legend.min_width_m, legend.max_width_m)
                line_parts.append(pd.DataFrame({**base, "osm_id": gdf["osm_id"].to_numpy()[lsel], "kind": "line",
                                                "width_m": w, "length_m": np.nan,
                                                "geometry": np.asarray(gdf.geometry.values, dtype=object)[lsel]}))
    parts = list(area_parts)
    if line_parts:
        lines = pd.concat(line_parts, ignore_index=True)
        parts.append(buffer_lines(lines))
    if not parts:
        return empty
    out = gpd.GeoDataFrame(pd.concat(parts, ignore_index=True), geometry="geometry", crs="EPSG:4326")
    out = out[~out.geometry.isna() & ~out.geometry.is_empty]
    out = out.sort_values(["priority", "class_id", "osm_id"], kind="stable").reset_index(drop=True)
    out["class_id"] = out["class_id"].astype(np.uint8)
    out["priority"] = out["priority"].astype(np.int32)
    return out[OUT_COLUMNS]


def buffer_lines(lines: pd.DataFrame) -> pd.DataFrame:
    """Buffer lon/lat lines by ``width_m``/2 in the local UTM zone; sets ``length_m``; back to EPSG:4326."""
    geoms = gpd.GeoSeries(lines["geometry"].to_numpy(), crs="EPSG:4326")
    x0, y0, x1, y1 = geoms.total_bounds
    crs = utm_crs((x0 + x1) / 2, (y0 + y1) / 2)
    proj = geoms.to_crs(crs)
    lengths = proj.length.to_numpy()
    buffered = shapely.buffer(np.asarray(proj.values), lines["width_m"].to_numpy(float) / 2.0, quad_segs=4)
    back = gpd.GeoSeries(buffered, crs=crs).to_crs("EPSG:4326")
    out = lines.copy()
    out["geometry"] = np.asarray(back.values, dtype=object)
    out["length_m"] = lengths
    return out


# ----------------------------------------------------------------------------------------------
# Rasterisation


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


def iter_label_blocks(
    classified: gpd.GeoDataFrame,
    crs: Any,
    transform: Affine,
    shape: tuple[int, int],
    valid: np.ndarray | ValidFn | None = None,
    block: int = 2048,
    workers: int = 1,
    nodata: int = 255,
) -> Iterator[tuple[Window, np.ndarray]]:
    """Yield (window, uint8 labels) per block, in row-major order; blocks run in ``workers`` threads."""
    order = np.lexsort((classified["class_id"].to_numpy(), classified["priority"].to_numpy()))
    burner = _Burner(np.asarray(classified.geometry.values, dtype=object)[order],
                     classified["class_id"].to_numpy(np.uint8)[order], crs, transform)

    def one(win: Window) -> tuple[Window, np.ndarray]:
        arr = burner.burn(win)
        if valid is not None:
            v = valid(win) if callable(valid) else valid[win.toslices()]
            arr[~np.asarray(v, bool)] = nodata
        return win, arr

    wins = list(iter_windows(shape, block))
    if workers <= 1 or len(wins) == 1:
        yield from map(one, wins)
        return
    with ThreadPoolExecutor(max_workers=workers) as pool:
        # Bounded look-ahead keeps memory at ~2*workers blocks whatever the grid size.
        pending = []
        for win in wins:
            pending.append(pool.submit(one, win))
            if len(pending) >= 2 * workers:
                yield pending.pop(0).result()
        for f in pending:
            yield f.result()


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


def class_shares(hist: np.ndarray, legend: Legend) -> dict[str, Any]:
    """Pixel share per class over valid pixels, from a 256-bin histogram."""
    n_valid = int(hist[: legend.nodata].sum())
    return {
        "valid_pixels": n_valid,
        "nodata_pixels": int(hist[legend.nodata]),
        "classes": [
            {"id": c.id, "name": c.name, "pixels": int(hist[c.id]),
             "share": round(float(hist[c.id]) / n_valid, 6) if n_valid else 0.0}
            for c in legend.classes
        ],
    }


# ----------------------------------------------------------------------------------------------
# Picture


def render_png(
    labels_tif: Path, legend: Legend, max_px: int = 1600, title: str = "", attribution: str = OSM.attribution
) -> bytes:
    """Colour map of a labels GeoTIFF (decimated read, nearest) with a legend panel and the data credit, as PNG."""
    from PIL import Image, ImageDraw, ImageFont

    with rasterio.open(labels_tif) as src:
        scale = max(src.width, src.height) / max_px
        if scale <= 1:
            h, w = src.height, src.width
        else:
            h, w = max(1, round(src.height / scale)), max(1, round(src.width / scale))
        arr = src.read(1, out_shape=(h, w), resampling=rasterio.enums.Resampling.nearest)
    rgb = legend.palette()[arr]
    font = ImageFont.load_default()
    row_h, panel_w = 16, 230
    panel_h = row_h * (len(legend) + 3) + 8  # title, classes, no data, credit line
    canvas = Image.new("RGB", (w + panel_w, max(h, panel_h)), (255, 255, 255))
    canvas.paste(Image.fromarray(rgb, "RGB"), (0, 0))
    draw = ImageDraw.Draw(canvas)
    x0 = w + 10
    draw.text((x0, 4), title or "OSM land cover", fill=(0, 0, 0), font=font)
    entries = [(c.id, c.name, c.rgb) for c in legend.classes] + [(legend.nodata, "no data", (128, 128, 128))]
    for i, (cid, name, col) in enumerate(entries):
        y = 4 + row_h * (i + 1)
        draw.rectangle([x0, y, x0 + 12, y + 11], fill=col, outline=(0, 0, 0))
        draw.text((x0 + 18, y), f"{cid:>3} {name}", fill=(0, 0, 0), font=font)
    draw.text((x0, 4 + row_h * (len(entries) + 1)), attribution, fill=(60, 60, 60), font=font)
    buf = io.BytesIO()
    canvas.save(buf, format="PNG", optimize=False)
    return buf.getvalue()


# ----------------------------------------------------------------------------------------------
# Stage entry point


def _open_valid(grid_dir: Path, grid: Grid) -> tuple[Any, Any]:
    """Open sar_db.tif and eo.tif and check they sit on the grid."""
    handles = []
    for name in ("sar_db.tif", "eo.tif"):
        path = grid_dir / name
        if not path.is_file():
            raise LabelsError(f"{path}: missing; the labels stage needs it for the valid-data footprint")
        src = rasterio.open(path)
        if (src.height, src.width) != grid.shape or not src.transform.almost_equals(grid.transform):
            src.close()
            raise LabelsError(f"{path}: {src.width}x{src.height} at {tuple(src.transform)[:6]} is not on the grid of "
                              f"{grid_dir / 'grid.json'} ({grid.width}x{grid.height} at {tuple(grid.transform)[:6]})")
        if name == "eo.tif" and src.count < 4:
            src.close()
            raise LabelsError(f"{path}: has {src.count} bands; expected 4 (band 4 = valid mask)")
        handles.append(src)
    return handles[0], handles[1]


def osm_input(source_dir: str | Path) -> tuple[Path, dict[str, Any]]:
    """The OSM file the fetch stage put into ``source_dir`` and its provenance record.

    Found through provenance.json's ``osm`` record (never the region file), and checked against
    the sha256 recorded there: labels are made from exactly the bytes that were fetched.
    """
    source_dir = Path(source_dir)
    prov_path = source_dir / "provenance.json"
    prov = read_json(prov_path, LabelsError, missing="missing; run the fetch stage first (it gathers the OSM input)")
    rec = prov.get("osm")
    if not isinstance(rec, dict) or not rec.get("file") or not rec.get("sha256"):
        raise LabelsError(f"{prov_path}: no 'osm' record with file and sha256; re-run the fetch stage "
                          "(it now gathers the OSM input into source/)")
    name = str(rec["file"])
    if Path(name).name != name or not name.startswith("osm."):
        raise LabelsError(f"{prov_path}: osm.file {name!r} is not a file name inside source/")
    path = source_dir / name
    if not path.is_file():
        raise LabelsError(f"{path}: missing; provenance.json names it as the OSM input. Re-run the fetch stage")
    digest = sha256_file(path)
    if digest != rec["sha256"]:
        raise LabelsError(f"{path}: sha256 {digest} differs from {rec['sha256']} recorded in {prov_path}; "
                          "the file changed after fetch. Re-run the fetch stage")
    return path, rec


def _check_window(window: tuple[float, ...], rec: dict[str, Any], path: Path) -> None:
    """An Overpass answer holds only what was asked for: the read window must lie inside the query bbox."""
    if rec.get("kind") != "overpass" or not rec.get("bbox"):
        return
    w, s, e, n = rec["bbox"]
    eps = 1e-9
    if window[0] < w - eps or window[1] < s - eps or window[2] > e + eps or window[3] > n + eps:
        raise LabelsError(f"{path}: the read window {tuple(round(v, 7) for v in window)} is not inside the Overpass "
                          f"query bbox {tuple(rec['bbox'])} it was fetched for (labels.read_margin_m or the grid "
                          "changed?); re-run the fetch stage")


ZONE_VALUES = "0 neither, 1 residential, 2 non-residential built-up, 3 sea"


def zone_layer(land: gpd.GeoDataFrame, sea: gpd.GeoDataFrame) -> gpd.GeoDataFrame:
    """The polygons zones.tif burns: residential 1, non-residential 2 (wins over 1), sea 3 (wins over both).

    The same geometry ``urban.urban_rural`` measures (R minus N, N, both on land), so a patch's
    shares computed from zones.tif agree with the region's.
    """
    res, nonres = zone_frames(land)
    parts = [(res, 1), (nonres, 2), (sea, 3)]
    return gpd.GeoDataFrame(
        {"class_id": np.concatenate([np.full(len(f), v, np.uint8) for f, v in parts]),
         "priority": np.concatenate([np.full(len(f), v, np.int32) for f, v in parts])},
        geometry=np.concatenate([np.asarray(f.geometry.values, dtype=object) for f, _ in parts]),
        crs="EPSG:4326",
    )


def label_region(region: Any, grid_dir: str | Path, out_dir: str | Path, params: dict[str, Any]) -> Path:
    """The labels stage: OSM -> labels.tif, zones.tif, labels.json, labels.png in ``out_dir`` (atomic).

    The OSM comes from the region's ``source/``, the sibling of ``grid_dir``
    (``data/regions/NAME/{source,grid}``): see ``osm_input``.
    """
    p = _params(params)
    grid_dir, out_dir = Path(grid_dir), Path(out_dir)
    grid_json = grid_dir / "grid.json"
    try:
        grid = Grid.from_json(grid_json.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise LabelsError(f"{grid_json}: missing; run the grid stage first") from None
    except (KeyError, ValueError, TypeError) as exc:
        raise LabelsError(f"{grid_json}: not a grid file ({exc})") from None
    legend = load_legend(p["legend"])
    osm_path, osm_rec = osm_input(grid_dir.parent / "source")
    credit = data_source(osm_path)  # OpenStreetMap, unless the file says it is not OSM data
    window = read_window(grid.bounds, p["read_margin_m"])
    _check_window(window, osm_rec, osm_path)
    feats = read_osm(osm_path, window, legend.keys(), params)
    land = classify_tags(feats, legend)
    sea, sea_result = sea_features(feats, legend, params) if p["sea"] else (_empty(), None)
    classified = with_sea(land, sea)
    urban = urban_rural(land, region.aoi, params, sea=sea)
    zones = zone_layer(land, sea)
    block = int(p["block_size"])
    tile = int(p["tile_size"])
    profile = {"driver": "GTiff", "dtype": "uint8", "count": 1, "width": grid.width, "height": grid.height,
               "crs": grid.crs, "transform": grid.transform, "tiled": True, "blockxsize": tile, "blockysize": tile,
               "compress": "deflate", "predictor": 1, "interleave": "band"}
    hist = np.zeros(256, np.int64)
    sar, eo = _open_valid(grid_dir, grid)
    try:
        def valid(win: Window) -> np.ndarray:
            # rasterio dataset reads are not thread-safe: this runs in the consumer thread.
            return np.isfinite(sar.read(1, window=win)) & (eo.read(4, window=win) == 255)

        with atomic_path(out_dir) as tmp:
            tmp.mkdir(parents=True)
            with rasterio.open(tmp / "labels.tif", "w", nodata=legend.nodata, **profile) as dst:
                dst.update_tags(legend="pipeline/legend.yaml", attribution=credit.attribution)
                n_blocks = math.ceil(grid.height / block) * math.ceil(grid.width / block)
                for i, (win, arr) in enumerate(iter_label_blocks(classified, grid.crs, grid.transform, grid.shape,
                                                                 None, block, int(p["workers"]))):
                    arr[~valid(win)] = legend.nodata
                    hist += np.bincount(arr.ravel(), minlength=256)
                    dst.write(arr, 1, window=win)
                    log.info("labels: block %d/%d", i + 1, n_blocks)
            with rasterio.open(tmp / "zones.tif", "w", **profile) as dst:
                dst.update_tags(values=ZONE_VALUES,
                                attribution=credit.attribution)
                for win, arr in iter_label_blocks(zones, grid.crs, grid.transform, grid.shape, None, block,
                                                  int(p["workers"])):
                    dst.write(arr, 1, window=win)
            report = {
                "region": region.name,
                "grid": grid.to_dict(),
                "legend": legend.to_dict(),
                "shares": class_shares(hist, legend),
                "urban_rural": urban,
                "osm": {**feats.report(), "source": osm_rec.get("source"), "kind": osm_rec.get("kind"),
                        "file": osm_rec["file"], "sha256": osm_rec["sha256"],
                        "classified_features": int(len(land))},
                "sea": sea_report(sea_result, sea, grid.bounds),
                "attribution": credit.attribution,
                "licence": credit.licence,
            }
            write_json(tmp / "labels.json", report)
            png = render_png(tmp / "labels.tif", legend, int(p["png_max_px"]), region.name, credit.attribution)
            (tmp / "labels.png").write_bytes(png)
    finally:
        sar.close()
        eo.close()
    log.info("labels: %s -> %s (%s)", region.name, out_dir, urban["class"])
    return out_dir


def sea_report(result: SeaResult | None, sea: gpd.GeoDataFrame, bounds: tuple[float, ...]) -> dict[str, Any]:
    """labels.json's ``sea``: how the coastline went and the sea polygons' area and share of the grid.

    The share is the vector sea inside the grid rectangle (equal-area CRS), before piers,
    bridges and other mapped features are burnt on top of it.
    """
    if result is None:
        return {"status": "disabled", "area_km2": 0.0, "grid_share": 0.0}
    box = shapely.box(*bounds)
    crs = equal_area_crs(box)
    box_ea = gpd.GeoSeries([box], crs="EPSG:4326").to_crs(crs).iloc[0]
    area = 0.0
    if len(sea):
        area = float(sea.to_crs(crs).geometry.intersection(box_ea).area.sum())
    return {**result.report(), "area_km2": round(area / 1e6, 6), "grid_share": round(area / box_ea.area, 6)}


def labels_json(out_dir: str | Path) -> dict[str, Any]:
    """Read a labels.json written by ``label_region``."""
    return json.loads((Path(out_dir) / "labels.json").read_text(encoding="utf-8"))
