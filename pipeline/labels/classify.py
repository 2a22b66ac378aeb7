"""OSM features -> classified polygons: the legend's tag rules, buffered lines and the open sea.

``classify`` matches OSM rows (``pipeline.osm.OsmFeatures`` or any GeoDataFrame in lon/lat) to
legend classes and returns polygons in EPSG:4326 with class id and burn priority. Lines are
buffered in metres in the local UTM zone and brought back to lon/lat; the open sea is closed
from natural=coastline by ``pipeline.labels.coast`` (``sea_features``). No I/O: the labels
stage and the demo both render from this one definition of a class.
"""

from __future__ import annotations

import logging
import math
import re
from typing import Any

import geopandas as gpd
import numpy as np
import pandas as pd
import pyproj
import shapely

from pipeline.grid import utm_crs
from pipeline.labels.coast import SeaResult, coastline_lines, sea_lonlat
from pipeline.labels.params import LabelsParams
from pipeline.legend import Legend, load_legend
from pipeline.osm import OsmFeatures

log = logging.getLogger("sareo.labels")

OUT_COLUMNS = ["osm_id", "class_id", "priority", "role", "density", "key", "kind", "width_m", "length_m", "geometry"]
_NUM_RE = re.compile(r"^\s*([0-9]+(?:[.,][0-9]+)?)\s*(m|meters?|metres?|ft|feet|')?\s*$", re.I)


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


def empty_classified() -> gpd.GeoDataFrame:
    """No features, with ``classify``'s columns."""
    return gpd.GeoDataFrame({c: [] for c in OUT_COLUMNS[:-1]}, geometry=[], crs="EPSG:4326")


def classify(
    features: OsmFeatures | gpd.GeoDataFrame, legend: Legend | None = None, p: LabelsParams | None = None
) -> gpd.GeoDataFrame:
    """Match OSM rows to legend classes; returns polygons (EPSG:4326) sorted in burn order.

    Columns: geometry, class_id, priority, plus osm_id, role, density, key (tag key of the
    matching rule), kind ("area", "line" or "sea"), width_m and length_m (lines, metres, before
    buffering). A row matching several classes appears once per class; burning in priority
    order makes the highest priority win, as intended. Lines are buffered by width/2 (round
    caps) in the local UTM zone and transformed back, so widths are true metres anywhere.
    Open sea (kind "sea") comes from ``sea_features`` unless ``p.sea`` is false.
    """
    legend = legend or load_legend()
    p = p or LabelsParams()
    land = classify_tags(features, legend)
    if not p.sea:
        return land
    sea, _ = sea_features(features, legend, p)
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
    features: OsmFeatures | gpd.GeoDataFrame, legend: Legend | None = None, p: LabelsParams | None = None
) -> tuple[gpd.GeoDataFrame, SeaResult]:
    """Open sea polygons (rows like ``classify``'s, kind "sea") from the natural=coastline ways.

    Closed in the rectangles of ``sea_clip_boxes``, first success wins. No sea if the legend
    has no ``sea`` entry, if there is no coastline, or if it is inconsistent (see the result).
    """
    legend = legend or load_legend()
    p = p or LabelsParams()
    gdf = _frame(features)
    if legend.sea is None or len(gdf) == 0 or "natural" not in gdf:
        why = "the legend has no sea entry" if legend.sea is None else "no natural tags"
        return empty_classified(), SeaResult(shapely.Polygon(), "no_coastline", why)
    coast = gdf[_str_col(gdf, "natural").eq("coastline").to_numpy()]
    lines = coastline_lines(coast.geometry.values)
    if not lines:
        return empty_classified(), SeaResult(shapely.Polygon(), "no_coastline", "no natural=coastline in the OSM data")
    result = sea_lonlat(lines, sea_clip_boxes(features), p.coast_snap_m)
    if result.status == "skipped":
        log.warning("sea skipped (%d coastline ways): %s at %s", len(coast), result.reason, result.at)
    else:
        log.info("sea: %s, %d water face(s) of %d", result.status, result.water_faces, result.faces)
    parts = [g for g in getattr(result.geometry, "geoms", [result.geometry]) if not g.is_empty]
    if not parts:
        return empty_classified(), result
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
    empty = empty_classified()
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
