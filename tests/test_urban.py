"""Urban/rural rule on vector polygons in an equal-area CRS, with the sparse-mapping fallback."""

from __future__ import annotations

import geopandas as gpd
import numpy as np
import pytest
from shapely.geometry import LineString, box

from pipeline.labels.classify import classify
from pipeline.labels.params import LabelsParams
from pipeline.labels.urban import urban_rural

# A ~1 km x 1 km AOI near Helsinki (the equal-area CRS makes shares independent of latitude).
W, S = 24.90, 60.20
DX, DY = 0.018, 0.009  # ~1000 m x ~1000 m
AOI = box(W, S, W + DX, S + DY)


def strip(f0: float, f1: float):
    """A full-height strip covering fraction f0..f1 of the AOI's width."""
    return box(W + f0 * DX, S, W + f1 * DX, S + DY)


def features(rows: list[tuple[dict, object]]) -> gpd.GeoDataFrame:
    keys = sorted({k for t, _ in rows for k in t})
    kinds = ["line" if g.geom_type == "LineString" else "area" for _, g in rows]
    return classify(gpd.GeoDataFrame({"osm_id": [f"w{i}" for i in range(len(rows))], "kind": kinds,
                                      **{k: [t.get(k) for t, _ in rows] for k in keys}},
                                     geometry=[g for _, g in rows], crs="EPSG:4326"))


def test_residential_share_decides():
    r = urban_rural(features([({"landuse": "residential"}, strip(0, 0.30))]), AOI)
    assert r["class"] == "urban" and r["residential_share"] == pytest.approx(0.30, abs=0.002)
    r = urban_rural(features([({"landuse": "residential"}, strip(0, 0.20)), ({"natural": "wood"}, strip(0.2, 1))]), AOI)
    assert r["class"] == "rural" and not r["fallback_used"] and r["landuse_coverage"] == pytest.approx(1.0, abs=0.002)


def test_nonresidential_share_and_overlap_counts_once():
    rows = [({"landuse": "residential"}, strip(0, 0.20)), ({"landuse": "industrial"}, strip(0.15, 0.21)),
            ({"landuse": "farmland"}, strip(0.21, 1))]
    r = urban_rural(features(rows), AOI)
    assert r["nonres_share"] == pytest.approx(0.06, abs=0.002)
    assert r["residential_share"] == pytest.approx(0.15, abs=0.002)  # the overlap counts as N only
    assert r["class"] == "urban"
    # thresholds come from params
    r = urban_rural(features(rows), AOI, LabelsParams(nonres_share=0.10))
    assert r["class"] == "rural"


def test_clipped_to_aoi():
    big = box(W - 1, S - 1, W + 0.1 * DX, S + 1)  # extends far outside the AOI
    r = urban_rural(features([({"landuse": "residential"}, big)]), AOI)
    assert r["residential_share"] == pytest.approx(0.10, abs=0.002)


def test_sparse_landuse_falls_back_to_road_density_and_buildings():
    # A street grid every 100 m (20 km of street in 1 km2) and no landuse at all: a city.
    streets = [({"highway": "residential"}, LineString([(W + i * DX / 10, S), (W + i * DX / 10, S + DY)]))
               for i in range(1, 11)]
    streets += [({"highway": "residential"}, LineString([(W, S + i * DY / 10), (W + DX, S + i * DY / 10)]))
                for i in range(1, 11)]
    r = urban_rural(features(streets), AOI)
    assert r["fallback_used"] and r["landuse_coverage"] == 0
    assert r["road_density_km_per_km2"] == pytest.approx(19.8, rel=0.05)
    assert r["class"] == "urban"
    # Buildings alone (12 % footprint) also make it urban.
    blocks = [({"building": "yes"}, box(W + i * DX / 10, S, W + (i + 0.12) * DX / 10, S + DY)) for i in range(10)]
    r = urban_rural(features(blocks), AOI)
    assert r["building_share"] == pytest.approx(0.12, abs=0.003) and r["class"] == "urban"
    # Two country roads and a farmhouse: rural.
    rural = streets[:2] + [({"building": "yes"}, box(W, S, W + DX / 50, S + DY / 50))]
    r = urban_rural(features(rural), AOI)
    assert r["fallback_used"] and r["class"] == "rural" and r["road_density_km_per_km2"] < 3


def test_fixtures_urban_rural(fixtures):
    from pipeline.osm import read_osm

    hel = urban_rural(classify(read_osm(fixtures / "osm" / "Helsinki.osm.pbf", None)),
                      box(24.935, 60.164, 24.953, 60.179))
    assert hel["class"] == "urban" and not hel["fallback_used"] and hel["nonres_share"] > 0.05
    oak = urban_rural(classify(read_osm(fixtures / "osm" / "West-Oakland.osm.bz2", None)),
                      box(-122.30258, 37.80615, -122.29825, 37.80914))
    # Landuse says rural (R 17 %, N 1.6 %) but only a quarter of the AOI is mapped: the fallback decides.
    assert oak["residential_share"] < 0.25 and oak["nonres_share"] < 0.05
    assert oak["fallback_used"] and oak["class"] == "urban"
    assert np.isfinite(oak["road_density_km_per_km2"])


def test_shares_are_of_land_not_sea():
    """Half the AOI is sea: 15 % of the AOI residential is 30 % of its land, so the city is urban."""
    land = features([({"landuse": "residential"}, strip(0, 0.15)), ({"natural": "wood"}, strip(0.15, 0.5))])
    sea = gpd.GeoDataFrame({"class_id": [22]}, geometry=[strip(0.5, 1.2)], crs="EPSG:4326")
    whole = urban_rural(land, AOI)
    assert whole["class"] == "rural" and whole["residential_share"] == pytest.approx(0.15, abs=0.002)
    r = urban_rural(land, AOI, sea=sea)
    assert r["class"] == "urban" and r["residential_share"] == pytest.approx(0.30, abs=0.004)
    assert r["sea_share"] == pytest.approx(0.5, abs=0.002) and r["land_area_km2"] == pytest.approx(
        r["aoi_area_km2"] / 2, rel=0.01)
    all_sea = urban_rural(land, AOI, sea=gpd.GeoDataFrame(geometry=[AOI.buffer(0.01)], crs="EPSG:4326"))
    assert all_sea["class"] == "rural" and all_sea["basis"].startswith("no land")
