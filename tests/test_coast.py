"""Open sea from natural=coastline: synthetic coastlines in every direction, islands, broken coastlines,
and the real Helsinki extract (the sea of Kaisaniemenlahti).

The synthetic checks compare against areas worked out by hand (a straight coast halves the box,
an island ring is a hole of known area), never against the code's own output.
"""

from __future__ import annotations

import geopandas as gpd
import pytest
import shapely
from shapely.geometry import LineString, Point, Polygon, box

from pipeline.grid import grid_for_bbox, metres_per_degree
from pipeline.labels.classify import classify, sea_features
from pipeline.labels.coast import coastline_lines, sea_lonlat, sea_planar
from pipeline.labels.params import LabelsParams
from pipeline.labels.rasterize import rasterize_classes
from pipeline.legend import LegendError, load_legend, parse_legend
from pipeline.osm import OsmFeatures, read_osm

BOX = (0.0, 0.0, 100.0, 100.0)
HELSINKI_BBOX = (24.935, 60.164, 24.953, 60.179)
SEA_POINT = (24.9480, 60.1765)  # Kaisaniemenlahti, between its south (60.1761) and north (60.1770) shores
LAND_POINT = (24.9410, 60.1710)  # Helsinki central station


def _ring(x0: float, y0: float, x1: float, y1: float, ccw: bool = True) -> LineString:
    pts = [(x0, y0), (x1, y0), (x1, y1), (x0, y1), (x0, y0)]
    return LineString(pts if ccw else pts[::-1])


# --------------------------------------------------------------------------- planar geometry


@pytest.mark.parametrize("reverse", [False, True])
def test_straight_coast_water_on_the_right(reverse):
    coast = LineString([(-10, 40), (110, 40)])  # heading east: water to the south (right)
    r = sea_planar([LineString(coast.coords[::-1]) if reverse else coast], BOX)
    assert r.ok and (r.faces, r.water_faces) == (2, 1)
    expect = box(0, 40, 100, 100) if reverse else box(0, 0, 100, 40)
    assert r.geometry.symmetric_difference(expect).area < 1e-6
    assert r.geometry.contains(Point(50, 80 if reverse else 10))


def test_coast_made_of_several_ways_and_a_bend():
    ways = [LineString([(-5, 70), (30, 70)]), LineString([(30, 70), (60, 20)]), LineString([(60, 20), (60, -5)])]
    r = sea_planar(ways, BOX)  # water right of the heading: south-west of the bend
    expect = Polygon([(0, 0), (0, 70), (30, 70), (60, 20), (60, 0)])
    assert r.ok and r.geometry.symmetric_difference(expect).area < 1e-6


def test_island_ring_counter_clockwise_is_land_inside_water():
    sea_south = LineString([(-10, 50), (110, 50)])  # water south of y=50, an island in it
    r = sea_planar([sea_south, _ring(20, 10, 40, 30)], BOX)
    assert r.ok and r.geometry.area == pytest.approx(100 * 50 - 20 * 20)
    assert not r.geometry.contains(Point(30, 20)) and r.geometry.contains(Point(10, 10))
    # an island alone in the box: everything but the island is sea
    r = sea_planar([_ring(20, 10, 40, 30)], BOX)
    assert r.ok and r.geometry.area == pytest.approx(100 * 100 - 20 * 20)
    # clockwise ring: water inside (an enclosed sea), land around it
    r = sea_planar([_ring(20, 10, 40, 30, ccw=False)], BOX)
    assert r.ok and r.geometry.area == pytest.approx(20 * 20) and r.geometry.contains(Point(30, 20))


def test_closed_coastline_polygon_keeps_its_direction():
    """GDAL's OSM driver makes a polygon of a closed coastline way; its ring keeps the way's order."""
    island = Polygon(_ring(20, 10, 40, 30).coords)
    lines = coastline_lines([island, None, LineString()])
    assert len(lines) == 1 and shapely.is_ccw(lines[0])
    assert sea_planar(lines, BOX).geometry.area == pytest.approx(100 * 100 - 20 * 20)


def test_coastline_ending_inside_is_skipped_not_flooded():
    r = sea_planar([LineString([(-10, 50), (60, 50)])], BOX, snap=10.0)
    assert r.status == "skipped" and "ends 40 m inside" in r.reason and r.at == (60.0, 50.0)
    assert r.geometry.is_empty
    # within the snap distance of the border (an extract cut just inside its edge): extended to it
    r = sea_planar([LineString([(-10, 50), (95, 50)])], BOX, snap=10.0)
    assert r.ok and r.snapped_ends == 1 and r.geometry.area == pytest.approx(100 * 50)


def test_mixed_directions_are_skipped():
    head_to_head = [LineString([(-10, 50), (50, 50)]), LineString([(110, 50), (50, 50)])]
    r = sea_planar(head_to_head, BOX)
    assert r.status == "skipped" and "inconsistent" in r.reason and r.geometry.is_empty


def test_no_coastline_in_the_box_is_land():
    r = sea_planar([LineString([(200, 0), (200, 100)])], BOX)
    assert r.status == "no_coastline" and r.geometry.is_empty


def test_sea_lonlat_tries_the_next_rectangle():
    """A coastline cut 30 m inside the data's edge fails in the read window and closes in the data extent."""
    mx, my = metres_per_degree(60.0)
    coast = LineString([(9.99, 60.005), (10.01 - 30 / mx, 60.005)])  # heading east, ends 30 m before 10.01 E
    window, extent = (10.0 - 0.001, 60.0, 10.02, 60.01), (10.0 - 0.001, 60.0, 10.01, 60.01)
    r = sea_lonlat([coast], [window, extent], snap_m=50.0)
    assert r.ok and r.bounds == extent and r.attempts[0].startswith("skipped") and r.snapped_ends == 1
    assert r.geometry.contains(Point(10.005, 60.002)) and not r.geometry.contains(Point(10.005, 60.008))
    assert r.at is None
    r = sea_lonlat([coast], [window], snap_m=50.0)
    assert r.status == "skipped" and r.at == pytest.approx((10.01 - 30 / mx, 60.005), abs=1e-6)


# --------------------------------------------------------------------------- through classify


def _features(rows: list[tuple[dict, object]], bbox) -> OsmFeatures:
    kinds = ["area" if g.geom_type.endswith("Polygon") else "line" for _, g in rows]
    gdf = gpd.GeoDataFrame({"osm_id": [f"w{i}" for i in range(len(rows))], "kind": kinds,
                            "natural": [t.get("natural") for t, _ in rows],
                            "building": [t.get("building") for t, _ in rows],
                            "landuse": [t.get("landuse") for t, _ in rows]},
                           geometry=[g for _, g in rows], crs="EPSG:4326")
    return OsmFeatures(gdf, "test", bbox=bbox)


def test_sea_burns_below_mapped_surfaces_above_zones():
    bbox = (24.0, 60.0, 24.002, 60.001)
    coast = LineString([(23.99, 60.0005), (24.01, 60.0005)])  # heading east: sea in the south half
    pier_house = box(24.0009, 60.0001, 24.0011, 60.0002)  # a building on a pier, in the sea
    port = box(24.0, 60.0, 24.002, 60.001)  # landuse=port drawn across the harbour water
    feats = _features([({"natural": "coastline"}, coast), ({"building": "yes"}, pier_house),
                       ({"landuse": "port"}, port)], bbox)
    classified = classify(feats)
    assert (classified["kind"] == "sea").sum() == 1
    grid = grid_for_bbox(bbox, 2.0)
    arr = rasterize_classes(classified, grid.crs, grid.transform, grid.shape)
    t = grid.transform

    def at(lon: float, lat: float) -> int:
        return int(arr[int((lat - t.f) / t.e), int((lon - t.c) / t.a)])

    assert at(24.0005, 60.0002) == 22  # sea over the port zone
    assert at(24.0010, 60.00015) == 1  # the building stays on top
    assert at(24.0005, 60.0008) == 4  # land: the port zone
    assert classify(feats, p=LabelsParams(sea=False))["kind"].ne("sea").all()


def test_legend_sea_entry_is_validated():
    raw = dict(load_legend().raw)
    assert load_legend().sea.class_id == 22 and "natural" in load_legend().keys()
    with pytest.raises(LegendError, match="sea: class 99 is not a class id"):
        parse_legend({**raw, "sea": {"class": 99, "priority": 18}}, "x.yaml")
    with pytest.raises(LegendError, match="sea: expected"):
        parse_legend({**raw, "sea": {"class": 22}}, "x.yaml")
    legend = parse_legend({k: v for k, v in raw.items() if k != "sea"}, "x.yaml")
    sea, result = sea_features(_features([({"natural": "coastline"}, LineString([(0, 0), (1, 1)]))], None), legend)
    assert len(sea) == 0 and result.status == "no_coastline"


# --------------------------------------------------------------------------- real extract


def test_helsinki_sea_from_the_real_extract(fixtures):
    feats = read_osm(fixtures / "osm" / "Helsinki.osm.pbf", HELSINKI_BBOX)
    assert (feats.gdf["natural"] == "coastline").sum() >= 2  # read from the lines layer's other_tags
    sea, result = sea_features(feats)
    assert result.ok and result.bounds == HELSINKI_BBOX  # the coastline crosses the read window: no snapping
    union = shapely.union_all(sea.geometry.values)
    assert union.contains(Point(SEA_POINT)) and not union.contains(Point(LAND_POINT))
    # the whole file (no window): the coastline stops a few metres inside the extract's edge
    whole, r2 = sea_features(read_osm(fixtures / "osm" / "Helsinki.osm.pbf", None))
    assert r2.ok and r2.snapped_ends > 0 and shapely.union_all(whole.geometry.values).contains(Point(SEA_POINT))
    # a very small snap distance cannot close it: skipped, said why, no sea at all
    tight = LabelsParams(coast_snap_m=0.5)
    none, r3 = sea_features(read_osm(fixtures / "osm" / "Helsinki.osm.pbf", None), p=tight)
    assert r3.status == "skipped" and "ends" in r3.reason and len(none) == 0
