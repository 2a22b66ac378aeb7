"""The SAR2Earth regions (regions/sar2earth/): each validates, follows the documented AOI rule, uses
Capella GEO HH and an openly licensed EO source with its attribution, and stays out of the default build."""

from __future__ import annotations

from itertools import combinations
from pathlib import Path

import pytest
from pyproj import Geod
from shapely.geometry import box

from pipeline.fetch.eo_select import EoSpec
from pipeline.regions import load_region, load_regions, region_files

ROOT = Path(__file__).resolve().parent.parent
SET = ROOT / "regions" / "sar2earth"
PAPER_KM2 = 1444.91  # SAR2Earth's total area over its 10 regions
GEOD = Geod(ellps="WGS84")
# the centres of docs/sar2earth.md (lat, lon) and the EO route of each region
CENTRES = {
    "chicago": (41.8781, -87.6298, "naip"), "san-francisco": (37.7749, -122.4194, "naip"),
    "charleston-urban": (32.7765, -79.9311, "naip"), "charleston-rural": (32.6600, -80.1700, "naip"),
    "savannah": (32.0809, -81.0912, "naip"), "paris": (48.8566, 2.3522, "ign"),
    "bengbu": (32.9167, 117.3833, "sentinel-2-l2a"), "weifang": (36.7069, 119.1617, "sentinel-2-l2a"),
    "sittwe-urban": (20.1436, 92.8977, "sentinel-2-l2a"), "sittwe-rural": (20.2800, 92.8800, "sentinel-2-l2a"),
}
EO_ATTRIBUTION = {"naip": "National Agriculture Imagery Program (NAIP), public domain",
                  "ign": "IGN, BD ORTHO", "sentinel-2-l2a": "contains modified Copernicus Sentinel data"}


def km2(bbox: tuple[float, float, float, float]) -> float:
    area, _ = GEOD.geometry_area_perimeter(box(*bbox))
    return abs(area) / 1e6


def square_bbox(lat: float, lon: float, area_km2: float) -> tuple[float, ...]:
    """The AOI rule: north-south extent sqrt(area) km (geodesic, centred on lat), east-west extent
    (symmetric about lon) making the WGS84 area ``area_km2``, corners rounded to 1e-5 degrees."""
    half = area_km2 ** 0.5 * 500
    _, north, _ = GEOD.fwd(lon, lat, 0, half)
    _, south, _ = GEOD.fwd(lon, lat, 180, half)
    lo, hi = 0.0, 1.0
    for _ in range(60):
        d = (lo + hi) / 2
        lo, hi = (d, hi) if km2((lon - d, south, lon + d, north)) < area_km2 else (lo, d)
    return tuple(round(v, 5) for v in (lon - d, south, lon + d, north))


@pytest.fixture(scope="module")
def regions():
    return {p.stem: load_region(p, root=ROOT) for p in sorted(SET.glob("*.yaml"))}


def test_every_region_is_there_and_validates(regions) -> None:
    assert set(regions) == set(CENTRES)
    for name, r in regions.items():
        assert r.name == name and r.root == ROOT


def test_aoi_rule(regions) -> None:
    """Each AOI is the documented box; together they total the paper's 1,444.91 km2; none overlap."""
    for name, r in regions.items():
        lat, lon, _ = CENTRES[name]
        assert r.bbox == pytest.approx(square_bbox(lat, lon, PAPER_KM2 / 10), abs=1e-9), name
        assert km2(r.bbox) == pytest.approx(PAPER_KM2 / 10, rel=2e-4), name
    assert sum(km2(r.bbox) for r in regions.values()) == pytest.approx(PAPER_KM2, rel=1e-4)
    for a, b in combinations(regions.values(), 2):
        assert not box(*a.bbox).intersects(box(*b.bbox)), (a.name, b.name)


def test_sources_and_attribution(regions) -> None:
    """Capella GEO HH from the open catalog; EO by the documented route, each with its attribution."""
    for name, r in regions.items():
        (sar,) = r.sar
        assert sar["stac"] == "s3://capella-open-data/stac/catalog.json"
        assert (sar["product"], sar["polarization"], sar["provider"]) == ("GEO", "HH", "capella")
        assert r.osm == {"overpass": True}
        route = CENTRES[name][2]
        if route == "ign":
            assert r.eo["tiles"].startswith("https://data.geopf.fr/wmts?") and "ORTHOIMAGERY.ORTHOPHOTOS" in r.eo["tiles"]
            assert r.eo["zoom"] == 18 and r.eo["datetime"]
        else:
            spec = EoSpec.from_section(r.eo, r.resolve(r.eo["search"]))
            assert spec.search == "https://planetarycomputer.microsoft.com/api/stac/v1"
            assert spec.collections == (route,) and spec.sign == "planetary-computer"
            assert spec.max_gsd_m == 0.6 if route == "naip" else spec.max_cloud == 5
        for text in ("(c) Capella Space Corp", "CC BY 4.0", "(c) OpenStreetMap contributors, ODbL 1.0",
                     EO_ATTRIBUTION[route]):
            assert text in r.attribution, (name, text)


def test_not_in_the_default_build() -> None:
    """regions/*.yaml is the default build; the named set lives one folder down and is not picked up."""
    assert all(p.parent == ROOT / "regions" for p in region_files(ROOT / "regions"))
    assert not {r.name for r in load_regions(ROOT / "regions")} & set(CENTRES)
