"""Acquisition geometry from real Capella and Umbra metadata: look side, incidence, ground-range direction."""

from __future__ import annotations

import copy
import json
import math
from pathlib import Path

import pytest

from pipeline.geometry import AcquisitionGeometry, GeometryError, capella_geometry, geometry_from, stac_geometry

GEO = "capella/CAPELLA_C14_SP_GEO_HH_20240709040329_20240709040358_extended.json"
SLC = "capella/CAPELLA_C13_SP_SLC_HH_20241126045307_20241126045346_extended.json"
UMBRA = "umbra/2024-10-26-18-07-08_UMBRA-05.stac.v2.json"


def load(fixtures: Path, name: str) -> dict:
    return json.loads((fixtures / name).read_text())


@pytest.mark.parametrize("name", [GEO, SLC])
def test_capella_line_of_sight_agrees_with_pointing_and_incidence(fixtures: Path, name: str) -> None:
    meta = load(fixtures, name)
    g = geometry_from(meta)
    cp = meta["collect"]["image"]["center_pixel"]
    assert g.provider == "capella" and g.known
    assert g.look_side == meta["collect"]["radar"]["pointing"]
    assert g.incidence_deg == pytest.approx(cp["incidence_angle"])
    assert g.look_angle_deg == pytest.approx(cp["look_angle"])
    assert g.orbit_state == "ascending"
    # broadside (squint ~0): the sensor is 90 deg off the ground track, on the side it looks from
    side = 90 if g.look_side == "left" else -90
    assert (g.sensor_azimuth_deg - (g.heading_deg + side) + 180) % 360 - 180 == pytest.approx(0, abs=1.0)
    # an ascending track at mid latitude heads north-east
    assert 0 < g.heading_deg < 90


def test_capella_geo_fixture_values(fixtures: Path) -> None:
    g = geometry_from(load(fixtures, GEO))  # left-looking, ascending, over Sicily
    assert g.look_side == "left" and g.sensor_azimuth_deg == pytest.approx(144.7, abs=0.5)
    ux, uy = g.toward_sensor()
    assert ux > 0 and uy > 0  # south-east: right and down on a north-up grid
    assert g.layover_m(10.0) == pytest.approx(10.0 / math.tan(math.radians(38.2315)), rel=1e-3)
    assert g.shadow_m(10.0) == pytest.approx(10.0 * math.tan(math.radians(38.2315)), rel=1e-3)


def test_capella_inconsistent_metadata_is_refused(fixtures: Path) -> None:
    meta = load(fixtures, GEO)
    bad = copy.deepcopy(meta)
    bad["collect"]["radar"]["pointing"] = "right"
    with pytest.raises(GeometryError, match="pointing is 'right' but the state vectors"):
        capella_geometry(bad, "x.json")
    bad = copy.deepcopy(meta)
    bad["collect"]["image"]["center_pixel"]["incidence_angle"] = 60.0
    with pytest.raises(GeometryError, match="incidence_angle 60.00 deg differs"):
        capella_geometry(bad, "x.json")
    bad = copy.deepcopy(meta)
    bad["collect"]["image"]["center_pixel"]["incidence_angle"] = "steep"
    with pytest.raises(GeometryError, match=r"x.json: collect.image.center_pixel.incidence_angle: expected a number"):
        capella_geometry(bad, "x.json")
    bad = copy.deepcopy(meta)
    bad["collect"]["image"]["center_pixel"]["center_time"] = "2030-01-01T00:00:00Z"
    with pytest.raises(GeometryError, match="not inside the state vectors"):
        capella_geometry(bad, "x.json")
    # without state vectors: look side and incidence, no direction
    bare = copy.deepcopy(meta)
    del bare["collect"]["state"]["state_vectors"]
    g = capella_geometry(bare)
    assert g.look_side == "left" and g.sensor_azimuth_deg is None and not g.known


def test_umbra_stac_geometry(fixtures: Path) -> None:
    g = geometry_from(load(fixtures, UMBRA))
    assert (g.provider, g.look_side, g.orbit_state) == ("umbra", "left", "descending")
    assert g.incidence_deg == pytest.approx(38.159, abs=1e-3)
    assert g.sensor_azimuth_deg == pytest.approx(327.857, abs=1e-3)
    # descending (heading ~190-200 deg), looking left: the sensor is west of the scene, squinted
    # 42 deg: 283 +- 42 deg; view:azimuth fits 325, i.e. it is the direction toward the sensor
    assert abs((g.sensor_azimuth_deg - 325) % 360) < 10 or abs((g.sensor_azimuth_deg - 325) % 360) > 350
    with pytest.raises(GeometryError, match="sar:observation_direction: expected 'left' or 'right'"):
        stac_geometry({"properties": {"sar:observation_direction": "up"}}, "item.json")


def test_geometry_from_provenance_and_unknown() -> None:
    g = geometry_from(None, {"view": {"view:incidence_angle": 35.0, "view:azimuth": 90.0}})
    assert g.known and g.toward_sensor() == pytest.approx((1.0, 0.0))
    u = geometry_from(None, None)
    assert not u.known and u.toward_sensor() is None and u.layover_m(10) is None
    assert AcquisitionGeometry("x").to_dict()["provider"] == "x"
