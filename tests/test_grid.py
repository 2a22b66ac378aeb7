"""The region grid: square ground pixels, snapped, deterministic, covering the AOI."""

from __future__ import annotations

import math

import pytest
from pyproj import Geod

from pipeline.grid import Grid, GridError, grid_for_bbox, metres_per_degree

GEOD = Geod(ellps="WGS84")


@pytest.mark.parametrize("lat", [0.0, 32.1, 48.86, 60.17, -33.9])
def test_pixels_are_square_on_the_ground(lat: float) -> None:
    g = grid_for_bbox((10.0, lat - 0.005, 10.01, lat + 0.005), 0.5)
    lon0, lat0 = g.pixel_to_lonlat(g.width // 2, g.height // 2)
    lon1, lat1 = g.pixel_to_lonlat(g.width // 2 + 1000, g.height // 2)
    lon2, lat2 = g.pixel_to_lonlat(g.width // 2, g.height // 2 + 1000)
    dx = GEOD.inv(lon0, lat0, lon1, lat1)[2] / 1000
    dy = GEOD.inv(lon0, lat0, lon2, lat2)[2] / 1000
    assert dx == pytest.approx(0.5, rel=2e-4) and dy == pytest.approx(0.5, rel=2e-4)


def test_metres_per_degree_matches_geodesic() -> None:
    mx, my = metres_per_degree(45.0)
    assert mx == pytest.approx(GEOD.inv(0, 45, 0.001, 45)[2] / 0.001, rel=1e-6)
    assert my == pytest.approx(GEOD.inv(0, 44.9995, 0, 45.0005)[2] / 0.001, rel=1e-6)


def test_grid_covers_bbox_and_is_snapped() -> None:
    bbox = (24.935, 60.164, 24.953, 60.179)
    g = grid_for_bbox(bbox, 0.5)
    w, s, e, n = g.bounds
    assert w <= bbox[0] and s <= bbox[1] and e >= bbox[2] and n >= bbox[3]
    xres, yres = g.res
    assert w - bbox[0] > -xres and n - bbox[3] < yres  # at most one pixel of margin
    assert (w / xres) == pytest.approx(round(w / xres), abs=1e-6)
    assert (n / yres) == pytest.approx(round(n / yres), abs=1e-6)
    # a sub-bbox of the same region at the same centre latitude lands on the same lattice
    g2 = grid_for_bbox((24.94, 60.165, 24.95, 60.178), 0.5)
    assert g2.res == g.res
    col, row = g.lonlat_to_pixel(*g2.pixel_to_lonlat(0, 0))
    assert col == pytest.approx(round(col), abs=1e-6) and row == pytest.approx(round(row), abs=1e-6)


def test_same_region_same_grid_and_json_roundtrip() -> None:
    a = grid_for_bbox((-122.3, 37.8, -122.29, 37.81), 0.3)
    b = grid_for_bbox((-122.3, 37.8, -122.29, 37.81), 0.3)
    assert a == b and a.to_json() == b.to_json()
    assert Grid.from_json(a.to_json()) == a


def test_pixel_centre_convention() -> None:
    g = grid_for_bbox((0.0, 0.0, 0.01, 0.01), 1.0)
    lon, lat = g.pixel_to_lonlat(10.5, 20.5)
    col, row = g.lonlat_to_pixel(lon, lat)
    assert (math.floor(col), math.floor(row)) == (10, 20)


@pytest.mark.parametrize(
    ("bbox", "gsd", "match"),
    [
        ((0, 0, 1, 1), 0, "gsd_m: 0 must be a positive"),
        ((0, 0, 1, 1), -2, "gsd_m: -2 must be a positive"),
        ((0, 0, 1, 1), float("nan"), "gsd_m: nan must be a positive"),
        ((179, 0, -179, 1), 1, "antimeridian is not supported"),
        ((0, 1, 1, 0), 1, "south must be less than north"),
        ((0, 86, 1, 89), 1, "too close to a pole"),
        ((0, 0, 10, 10), 0.01, "too large for one region"),
    ],
)
def test_bad_grids_are_refused(bbox: tuple, gsd: float, match: str) -> None:
    with pytest.raises(GridError, match=match):
        grid_for_bbox(bbox, gsd)
