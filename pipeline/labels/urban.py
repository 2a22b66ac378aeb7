"""Urban/rural decision for a region, measured on vector OSM polygons in an equal-area CRS.

The rule (SAR2Earth): urban if residential landuse covers >= 25 % of the region or
non-residential built-up landuse (commercial, retail, industrial, institutional) >= 5 %.
It is measured on the dissolved landuse polygons clipped to the AOI, not on the burnt label
map, where buildings and roads overwrite zones and bias the shares low. Where R and N overlap
(a school inside a residential area) the overlap counts as N, exactly as zones.tif burns it.

Shares are of the region's LAND: the AOI minus the sea made from OSM coastlines. A harbour city
whose AOI is half sea is judged on its land, as a person would; the sea share is reported.

Where landuse mapping is sparse (common in the US) the rule calls obvious cities rural, so we
also measure how much of the AOI any landuse/natural/leisure polygon covers. When that
coverage is below ``coverage_threshold`` and the landuse rule says rural, a fallback decides
from what *is* mapped nearly everywhere: building footprint share and road density.
"""

from __future__ import annotations

import logging
from typing import Any

import geopandas as gpd
import numpy as np
import pyproj
import shapely
from shapely.geometry.base import BaseGeometry

from pipeline.labels.params import LabelsParams

log = logging.getLogger("sareo.urban")

COVER_KEYS = ("landuse", "natural", "leisure")
# The LabelsParams fields of the rule, reported in labels.json's urban_rural.thresholds (sorted).
THRESHOLDS = ("coverage_threshold", "fallback_building_share", "fallback_road_density_km_per_km2", "nonres_share",
              "residential_share")


def thresholds(p: LabelsParams) -> dict[str, float]:
    """The rule's thresholds as labels.json reports them."""
    return {k: getattr(p, k) for k in sorted(THRESHOLDS)}


def equal_area_crs(aoi: BaseGeometry) -> pyproj.CRS:
    """A Lambert azimuthal equal-area CRS centred on the AOI: true areas, small shape error locally."""
    c = aoi.centroid
    return pyproj.CRS.from_proj4(f"+proj=laea +lat_0={c.y:.6f} +lon_0={c.x:.6f} +datum=WGS84 +units=m +no_defs")


def _union(geoms: Any) -> BaseGeometry:
    geoms = [g for g in np.asarray(geoms, dtype=object) if g is not None and not g.is_empty]
    return shapely.union_all(geoms) if geoms else shapely.Polygon()


def zone_frames(classified: gpd.GeoDataFrame) -> tuple[gpd.GeoDataFrame, gpd.GeoDataFrame]:
    """(residential, non-residential) area features: the polygons zones.tif burns as 1 and 2."""
    areas = classified[classified["kind"] == "area"]
    return areas[areas["role"] == "residential"], areas[areas["role"] == "nonresidential"]


def urban_rural(
    classified: gpd.GeoDataFrame, aoi: BaseGeometry, p: LabelsParams | None = None,
    sea: gpd.GeoDataFrame | None = None,
) -> dict[str, Any]:
    """Decide urban/rural for ``aoi`` (lon/lat polygon) from classified OSM features (EPSG:4326).

    ``classified`` needs columns geometry, kind, role, key, density, length_m (as
    ``pipeline.labels.classify.classify`` returns); ``sea`` holds sea polygons (``sea_features``),
    which are taken out of the area every share is measured against. Returns the decision with
    every share behind it.
    """
    p = p or LabelsParams()
    for col in ("kind", "role", "key", "density", "length_m"):
        if col not in classified:
            raise ValueError(f"urban_rural: classified features lack column {col!r} "
                             "(use pipeline.labels.classify.classify)")
    crs = equal_area_crs(aoi)
    aoi_ea = gpd.GeoSeries([aoi], crs="EPSG:4326").to_crs(crs).iloc[0]
    if aoi_ea.area <= 0:
        raise ValueError(f"urban_rural: AOI {aoi.wkt[:80]} has no area")
    total_area = aoi_ea.area
    if sea is not None and len(sea):
        sea_ea = _union(sea.to_crs(crs).geometry.values).intersection(aoi_ea)
        aoi_ea = aoi_ea.difference(sea_ea)  # shares are of the land
    aoi_area = aoi_ea.area
    sea_share = 1.0 - aoi_area / total_area
    if aoi_area <= 1e-6 * total_area:
        return {"class": "rural", "basis": "no land in the AOI (all sea)", "sea_share": round(float(sea_share), 6),
                "land_area_km2": 0.0, "aoi_area_km2": round(float(total_area / 1e6), 6),
                "residential_share": 0.0, "nonres_share": 0.0, "landuse_coverage": 0.0, "fallback_used": False,
                "building_share": 0.0, "road_density_km_per_km2": 0.0,
                "thresholds": thresholds(p), "crs": crs.srs}
    gdf = classified.to_crs(crs) if classified.crs is not None else classified.set_crs("EPSG:4326").to_crs(crs)
    gdf = gdf[gdf.geometry.intersects(aoi_ea)]
    areas = gdf[gdf["kind"] == "area"]

    def share(sel: gpd.GeoDataFrame) -> tuple[float, BaseGeometry]:
        u = _union(sel.geometry.values).intersection(aoi_ea)
        return u.area / aoi_area, u

    _, res = share(areas[areas["role"] == "residential"])
    nonres_share, nonres = share(areas[areas["role"] == "nonresidential"])
    residential_share = res.difference(nonres).area / aoi_area
    coverage, _ = share(areas[areas["key"].isin(COVER_KEYS)])
    building_share, _ = share(gdf[gdf["density"] == "building"])
    roads = gdf[(gdf["density"] == "road") & (gdf["kind"] == "line")]
    if len(roads):
        # Lines are already buffered: scale each line's length by the share of its buffer inside the AOI.
        inside = roads.geometry.intersection(aoi_ea).area / roads.geometry.area.where(roads.geometry.area > 0, 1.0)
        road_km = float((roads["length_m"].astype(float) * inside).sum()) / 1000.0
    else:
        road_km = 0.0
    road_density = road_km / (aoi_area / 1e6)

    by_landuse = residential_share >= p.residential_share or nonres_share >= p.nonres_share
    fallback_used = coverage < p.coverage_threshold and not by_landuse
    if fallback_used:
        urban = (
            building_share >= p.fallback_building_share
            or road_density >= p.fallback_road_density_km_per_km2
        )
        basis = "fallback: building share / road density (landuse coverage too low)"
    else:
        urban = by_landuse
        basis = "landuse shares"
    result = {
        "class": "urban" if urban else "rural",
        "basis": basis,
        "residential_share": round(float(residential_share), 6),
        "nonres_share": round(float(nonres_share), 6),
        "landuse_coverage": round(float(coverage), 6),
        "fallback_used": bool(fallback_used),
        "building_share": round(float(building_share), 6),
        "road_density_km_per_km2": round(float(road_density), 4),
        "aoi_area_km2": round(float(total_area / 1e6), 6),
        "land_area_km2": round(float(aoi_area / 1e6), 6),
        "sea_share": round(float(sea_share), 6),
        "shares_of": "land (AOI minus sea)",
        "thresholds": thresholds(p),
        "crs": crs.srs,
    }
    log.info(
        "urban/rural: %s (R %.3f, N %.3f, coverage %.3f, buildings %.3f, roads %.1f km/km2, %s)",
        result["class"], residential_share, nonres_share, coverage, building_share, road_density, basis,
    )
    return result
