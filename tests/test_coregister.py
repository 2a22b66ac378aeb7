"""Co-registration: known offsets are recovered, unrelated pairs are flagged, corrections are right in map units."""

from __future__ import annotations

import dataclasses
import json
import math
import re
from pathlib import Path

import numpy as np
import pytest
import rasterio
from affine import Affine
from PIL import Image
from pyproj import Transformer
from scipy import ndimage
from simulators import UrbanScene, UrbanViews, render_urban, sar_like, urban_scene, write_synthetic_source

from pipeline import coregister as cr
from pipeline import descriptors as dsc
from pipeline.grid import grid_for_bbox
from pipeline.layout import RegistrationFiles, SourceFiles
from pipeline.params import ParamsError, parse_section
from pipeline.regions import Region

FAST = cr.CoregisterParams(tile_size=128, max_tiles=9, search_radius_m=30.0)


def structured_scene(rng: np.random.Generator, n: int = 384) -> np.ndarray:
    """Label-like scene: roads and rectangular buildings on background, as grey levels."""
    img = np.full((n, n), 0.4)
    for _ in range(6):  # roads
        w = int(rng.integers(4, 9))
        if rng.random() < 0.5:
            y = int(rng.integers(0, n - w))
            img[y : y + w, :] = 0.15
        else:
            x = int(rng.integers(0, n - w))
            img[:, x : x + w] = 0.15
    for _ in range(60):  # buildings
        h, w = rng.integers(8, 40, 2)
        y, x = rng.integers(0, n - h), rng.integers(0, n - w)
        img[y : y + h, x : x + w] = rng.uniform(0.5, 1.0)
    return img


def eo_render(scene: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    return ndimage.gaussian_filter(scene, 0.8) * 200 + rng.normal(0, 3, scene.shape)


def sar_render(scene: np.ndarray, rng: np.random.Generator, shift: tuple[float, float], looks: int = 2) -> np.ndarray:
    """SAR-like dB image of ``scene`` with its content moved by ``shift`` (dx, dy): bright
    edges (double bounce), dark roads, contrast unrelated to the optical one, speckle."""
    moved = ndimage.shift(scene, (shift[1], shift[0]), order=1, mode="nearest")
    edges = np.hypot(ndimage.sobel(moved, 0), ndimage.sobel(moved, 1))
    inten = 0.2 + (1.2 - moved) ** 2 + 3.0 * edges  # bright edges, reversed contrast
    inten = inten * rng.gamma(looks, 1.0 / looks, inten.shape)
    return 10 * np.log10(inten)


def test_masked_ncc_recovers_integer_shift_and_subpixel_peak() -> None:
    rng = np.random.default_rng(1)
    search = ndimage.gaussian_filter(rng.random((3, 100, 100)), (0, 2, 2))
    r, dx, dy = 10, 4, -7
    template = search[:, r + dy : r + dy + 80, r + dx : r + dx + 80]
    surf = dsc.masked_ncc(template, np.ones((80, 80), bool), search, np.ones((100, 100), bool), r, 0.5)
    pk = dsc.find_peak(surf)
    assert (round(pk.dx), round(pk.dy)) == (dx, dy)
    assert pk.score == pytest.approx(1.0, abs=1e-6)
    # a parabola sampled around a peak at +0.3 is located there
    yy, xx = np.mgrid[-5:6, -5:6]
    pk2 = dsc.find_peak(-((xx - 0.3) ** 2) - (yy + 0.2) ** 2)
    assert pk2.dx == pytest.approx(0.3, abs=1e-6) and pk2.dy == pytest.approx(-0.2, abs=1e-6)


def test_known_offset_recovered_on_synthetic_scene() -> None:
    rng = np.random.default_rng(7)
    scene = structured_scene(rng)
    shift = (6.4, -3.7)
    sar = sar_render(scene, rng, shift)
    valid = np.ones(scene.shape, bool)
    reg = cr.estimate_shift(sar, eo_render(scene, rng), valid, valid, FAST, gsd_m=0.5)
    assert not reg.flagged, reg.reason
    assert math.hypot(reg.dx - shift[0], reg.dy - shift[1]) < 1.0
    assert reg.residuals_px["n_inliers"] >= 3
    assert all(tp.inlier for tp in reg.tie_points if tp.confidence > 0.5)


@pytest.fixture(scope="module")
def atlanta(fixtures: Path) -> tuple[np.ndarray, rasterio.Affine, object]:
    with rasterio.open(fixtures / "eo" / "atlanta_pan_0p5m.tif") as src:
        return src.read(1).astype(np.float64), src.transform, src.crs


def test_known_offset_recovered_on_real_chip(atlanta) -> None:
    eo = atlanta[0][:640, :640]
    rng = np.random.default_rng(3)
    shift = (-17.3, 11.6)
    moved = ndimage.shift(eo, (shift[1], shift[0]), order=3, mode="constant", cval=np.nan)
    sar = sar_like(moved, rng, looks=1)
    reg = cr.estimate_shift(10 * np.log10(sar), eo, np.isfinite(sar), eo > 0, FAST, gsd_m=0.5)
    assert not reg.flagged, reg.reason
    assert math.hypot(reg.dx - shift[0], reg.dy - shift[1]) < 1.0


@pytest.mark.parametrize("kind", ["other-scene", "transposed"])
def test_unrelated_pair_is_flagged_not_corrected(atlanta, kind: str) -> None:
    eo = atlanta[0][:640, :640]
    rng = np.random.default_rng(11)
    other = structured_scene(rng, 640) * 1000 if kind == "other-scene" else eo.T[::-1].copy()
    sar = sar_like(other, rng, looks=2)
    reg = cr.estimate_shift(10 * np.log10(sar), eo, np.isfinite(sar), eo > 0, FAST, gsd_m=0.5)
    assert reg.flagged
    assert reg.confidence < cr.CoregisterParams().confidence_threshold


def test_offset_beyond_search_radius_is_flagged(atlanta) -> None:
    # 40 px true offset, 10 m = 20 px search radius: any estimate would be wrong, so it must be flagged
    eo = atlanta[0][:640, :640]
    moved = ndimage.shift(eo, (28.0, -28.5), order=3, mode="constant", cval=np.nan)
    sar = sar_like(moved, np.random.default_rng(2), looks=2)
    params = dataclasses.replace(FAST, search_radius_m=10.0, min_search_px=1)
    reg = cr.estimate_shift(10 * np.log10(sar), eo, np.isfinite(sar), eo > 0, params, gsd_m=0.5)
    assert reg.flagged
    # the pixel floor of the search (min_search_px, default 32) reaches it: found, not flagged
    reg = cr.estimate_shift(10 * np.log10(sar), eo, np.isfinite(sar), eo > 0,
                            dataclasses.replace(params, min_search_px=32), gsd_m=0.5)
    assert not reg.flagged and math.hypot(reg.dx + 28.5, reg.dy - 28.0) < 1.0, reg.reason


# ----------------------------------------------------------------------------- stage on files


def make_source(atlanta, tmp: Path, offset_m: tuple[float, float], related: bool = True, size: int = 600) -> Region:
    """A region whose SAR (UTM, uint16, nodata 0) shows everything at P + offset_m, and whose EO
    (EPSG:3857 RGB with an internal mask) is the real chip."""
    eo, transform, crs = atlanta
    bbox = write_synthetic_source(eo[:size, :size], transform, crs, offset_m, tmp / "source",
                                 np.random.default_rng(5), looks=2, related=related, nodata_cols=20)
    return Region(name="atl", bbox=bbox, gsd_m=0.5, sar={}, eo={}, osm={}, path=tmp / "atl.yaml", root=tmp)


def test_register_region_recovers_map_offset(atlanta, tmp_path: Path) -> None:
    offset = (7.3, -4.6)  # the SAR shows things 7.3 m east and 4.6 m south of where they are
    region = make_source(atlanta, tmp_path, offset)
    params = dataclasses.replace(FAST, record_timing=False)
    rec = cr.register_scene(region, SourceFiles(tmp_path / "source"), RegistrationFiles(tmp_path / "registration"),
                             params)
    assert rec["applied"] and not rec["flagged"], rec["reason"]
    assert rec["model"] == "translation"
    assert rec["sar_crs"] == "EPSG:32616"
    # DESIGN "Demo ground truth": a perfect registration returns shift_m == -offset
    err_m = math.hypot(rec["shift_m"]["east"] + offset[0], rec["shift_m"]["north"] + offset[1])
    assert err_m < 0.5 * 0.5  # half a pixel at 0.5 m
    corr = Affine(*rec["correction"])
    assert (corr.c, corr.f) == (rec["shift_m"]["east"], rec["shift_m"]["north"])
    with rasterio.open(tmp_path / "source" / "sar.tif") as src:
        fixed = corr @ src.transform
    # the corrected SAR geotransform puts the SAR back on the true one (within half a pixel)
    assert math.hypot(fixed.c - atlanta[1].c, fixed.f - atlanta[1].f) < 0.25
    on_disk = json.loads((tmp_path / "registration" / "registration.json").read_text())
    assert on_disk == json.loads(json.dumps(rec))
    assert all({"x", "y", "dx", "dy", "confidence"} <= set(tp) for tp in on_disk["tie_points"])
    assert {"rms", "median", "max", "n_inliers"} <= set(on_disk["residuals_px"])
    with Image.open(tmp_path / "registration" / "overlay.png") as png:  # a real picture, two panels
        assert png.format == "PNG" and png.width > 2 * png.height - 50
    # same inputs and params, same bytes
    first = (tmp_path / "registration" / "registration.json").read_bytes()
    cr.register_scene(region, SourceFiles(tmp_path / "source"), RegistrationFiles(tmp_path / "registration"), params)
    assert (tmp_path / "registration" / "registration.json").read_bytes() == first


def test_register_region_unrelated_keeps_georeferencing(atlanta, tmp_path: Path) -> None:
    region = make_source(atlanta, tmp_path, (5.0, 5.0), related=False, size=512)
    rec = cr.register_scene(region, SourceFiles(tmp_path / "source"), RegistrationFiles(tmp_path / "out"),
                             dataclasses.replace(FAST, record_timing=True))
    assert rec["flagged"] and not rec["applied"]
    assert rec["correction"] == [1.0, 0.0, 0.0, 0.0, 1.0, 0.0]
    assert rec["shift_m"] == {"east": 0.0, "north": 0.0}
    assert (tmp_path / "out" / "overlay.png").is_file()
    assert rec["timing"]["seconds"] > 0


def test_disabled_writes_identity(atlanta, tmp_path: Path) -> None:
    region = make_source(atlanta, tmp_path, (3.0, 0.0), size=256)
    rec = cr.register_scene(region, SourceFiles(tmp_path / "source"), RegistrationFiles(tmp_path / "out"),
                             cr.CoregisterParams(enabled=False))
    assert not rec["applied"] and rec["model"] == "none"
    assert "disabled" in rec["reason"]
    assert rec["correction"] == [1.0, 0.0, 0.0, 0.0, 1.0, 0.0]


def test_map_correction_uses_projection_not_degree_scaling() -> None:
    # 2.5 deg off the UTM zone's central meridian (grid convergence ~1.4 deg): a shift due east on the
    # lon/lat grid is not due east in UTM; the correction must carry that rotation.
    grid = grid_for_bbox((-84.50, 33.60, -84.49, 33.61), 0.5)
    reg = cr.Registration(dx=20.0, dy=0.0, model="translation", matrix=(1, 0, 20.0, 0, 1, 0.0), confidence=1.0,
                          flagged=False, reason="")
    corr, shift = cr.map_correction(reg, grid, "EPSG:32616")
    tr = Transformer.from_crs("EPSG:4326", "EPSG:32616", always_xy=True)
    cx, cy = grid.width / 2, grid.height / 2
    p = tr.transform(*grid.pixel_to_lonlat(cx, cy))
    q = tr.transform(*grid.pixel_to_lonlat(cx + 20, cy))
    assert shift["east"] == pytest.approx(p[0] - q[0], abs=1e-6)
    assert shift["north"] == pytest.approx(p[1] - q[1], abs=1e-6)
    convergence = math.radians(2.5) * math.sin(math.radians(33.605))  # ~ d_lon * sin(lat)
    assert shift["north"] == pytest.approx(-10.0 * math.sin(convergence), abs=0.02)  # ~0.24 m, not 0
    assert math.hypot(shift["east"], shift["north"]) == pytest.approx(10.0, rel=2e-3)  # 20 px of 0.5 m


def test_fit_prefers_translation_and_uses_affine_only_when_supported() -> None:
    rng = np.random.default_rng(0)
    xy = [(x, y) for x in np.linspace(200, 3800, 4) for y in np.linspace(200, 3800, 4)]
    params = cr.CoregisterParams()

    def tps(fn):
        return [cr.TiePoint(x, y, *fn(x, y), confidence=1.0, score=0.5) for x, y in xy]

    noise = rng.normal(0, 0.2, (len(xy), 2))
    shift = tps(lambda x, y: (3.0 + noise[xy.index((x, y))][0], -2.0 + noise[xy.index((x, y))][1]))
    _, model, m, res, conf, reason = cr._fit(shift, params, (4000, 4000))
    assert model == "translation" and not reason and conf > 0.9
    assert (m[2], m[5]) == pytest.approx((3.0, -2.0), abs=0.2)
    # 1e-3 scale + 0.5 mrad rotation: up to ~4 px of misfit for a translation over 4000 px
    aff = tps(lambda x, y: (1e-3 * x - 5e-4 * y + 1.0, 5e-4 * x + 1e-3 * y - 1.0))
    out, model, m, res, conf, reason = cr._fit(aff, dataclasses.replace(params, inlier_tol_px=5.0), (4000, 4000))
    assert model == "affine" and res["rms"] < 0.01
    assert m == pytest.approx((1.001, -5e-4, 1.0, 5e-4, 1.001, -1.0), abs=1e-6)
    # and the map-unit correction of that affine maps apparent SAR positions back onto the truth
    grid = grid_for_bbox((-84.50, 33.60, -84.46, 33.64), 1.0)
    reg = cr.Registration(0, 0, "affine", m, 1.0, False, "")
    corr, _ = cr.map_correction(reg, grid, "EPSG:32616")
    tr = Transformer.from_crs("EPSG:4326", "EPSG:32616", always_xy=True)
    for x, y in [(100.0, 200.0), (3000.0, 1500.0)]:
        true = tr.transform(*grid.pixel_to_lonlat(x, y))
        app = tr.transform(*grid.pixel_to_lonlat(*reg.sar_position(x, y)))
        fixed = Affine(*corr) @ app
        assert math.hypot(fixed[0] - true[0], fixed[1] - true[1]) < 0.05


def test_bad_inputs_raise_clear_errors(tmp_path: Path) -> None:
    region = Region(name="x", bbox=(0, 0, 0.01, 0.01), gsd_m=1.0, sar={}, eo={}, osm={}, path=tmp_path, root=tmp_path)
    with pytest.raises(cr.RegistrationError, match="sar.tif: missing"):
        cr.register_scene(region, SourceFiles(tmp_path), RegistrationFiles(tmp_path / "out"))
    with pytest.raises(ParamsError, match=r"params.yaml: coregister.tile_sise: unknown key; did you mean 'tile_size'\?"):
        parse_section(cr.CoregisterParams, {"tile_sise": 100}, "params.yaml")
    with pytest.raises(ParamsError, match=re.escape("coregister.model: expected 'translation' | 'affine' | 'auto', got 'homography'")):
        parse_section(cr.CoregisterParams, {"model": "homography"}, "params.yaml")
    with pytest.raises(ParamsError, match="coregister.tile_size: must be >= 32"):
        parse_section(cr.CoregisterParams, {"tile_size": 8}, "params.yaml")


# ----------------------------------------------------------------------------- realistic urban geometry


def test_urban_render_puts_layover_and_shadow_where_geometry_says() -> None:
    # one 10 m building, SAR looking from the east at 45 deg: the roof shows h / tan(45) = 10 m
    # = 20 px east of its footprint, the radar shadow runs h * tan(45) = 20 px west of it
    scene = UrbanScene(n=200, pixel_m=0.5, xs=np.array([]), ys=np.array([]), street_half_px=0.0,
                      parcels=np.full((1, 1, 2), 1), split=np.full((1, 1), 0.5),
                      buildings=np.array([[80.0, 80.0, 110.0, 120.0, 10.0]]))
    views = UrbanViews(sar_look_azimuth_deg=90.0, incidence_deg=45.0, eo_off_nadir_deg=0.0,
                      sun_elevation_deg=89.9)
    sar, eo = render_urban(scene, views, (3.0, 0.0), np.random.default_rng(0), looks=1000,
                          effects=frozenset({"layover", "radar_shadow"}))
    row = sar[100]
    ground = float(np.median(row[:40]))
    roof = np.flatnonzero(row > ground + 3)  # roof + wall laid over onto the ground
    dark = np.flatnonzero(row < ground - 10)  # footprint + radar shadow
    assert roof.max() == pytest.approx(110 + 20 + 3, abs=1)  # far roof edge + layover + ground offset
    assert dark.min() == pytest.approx(80 - 20 + 3, abs=1)  # shadow end = h * tan(incidence) behind
    # the EO (nadir, sun overhead) shows the roof on its footprint: the reference is not offset
    eo_roof = np.flatnonzero(np.abs(eo[100] - np.median(eo[100, :40])) > 20)
    assert (eo_roof.min(), eo_roof.max()) == pytest.approx((80, 110), abs=1)


def test_bright_mask_removes_layover_not_dark_ground() -> None:
    # uniform -15 dB ground with a +10 dB layover block and a -28 dB shadow block, 4 looks
    rng = np.random.default_rng(0)
    inten = np.full((120, 120), 10**-1.5)
    inten[20:50, 20:60] = 10.0
    inten[70:100, 20:60] = 10**-2.8
    db = 10 * np.log10(inten * rng.gamma(4, 0.25, inten.shape))
    valid = np.ones(db.shape, bool)
    valid[:, 110:] = False
    m = dsc.bright_mask(db, valid, 8.0, grow=3)
    assert m[20:50, 20:60].all()  # the bright block, all of it
    assert m[18, 30] and not m[10, 30]  # grown by ~3 px, not more
    assert not m[70:100, 20:60].any()  # shadow / water kept
    assert not m[:, 110:].any()  # never marks no-data
    assert m[55:, 65:110].mean() < 0.01  # speckle alone is not masked


def test_realistic_urban_pairs_hit_ground_truth_or_are_flagged() -> None:
    """Layover, radar shadow, one-sided double bounce, EO lean and sun shadows: each estimate is
    within 1 px of the GROUND-LEVEL offset, or the pair is flagged (never a silent bias); and
    not everything is flagged (the test would prove nothing)."""
    accepted = 0
    for seed in (4, 6):
        rng = np.random.default_rng(seed)
        scene = urban_scene(rng, 512, 0.5, (5.0, 40.0), 0.5)
        views = UrbanViews(sar_look_azimuth_deg=float(rng.uniform(0, 360)), incidence_deg=35.0,
                          eo_azimuth_deg=float(rng.uniform(0, 360)), eo_off_nadir_deg=15.0,
                          sun_azimuth_deg=float(rng.uniform(0, 360)), sun_elevation_deg=45.0)
        off = (float(rng.uniform(-15, 15)), float(rng.uniform(-15, 15)))
        sar, eo = render_urban(scene, views, off, rng, looks=2)
        reg = cr.estimate_shift(sar, eo, p=FAST, gsd_m=0.5)
        err = math.hypot(reg.dx - off[0], reg.dy - off[1])
        assert reg.flagged or err < 1.0, f"seed {seed}: unflagged error {err:.2f} px"
        accepted += not reg.flagged
    assert accepted >= 1


# ----------------------------------------------------------------------------- geometry, layover, uncertainty


def test_layover_of_bright_scatterers_does_not_bias_the_estimate(atlanta) -> None:
    """Bright scatterers of the real chip displaced 3 px toward the sensor (layover) over ground
    structure at the true offset: the previous method followed them (bias along range); the
    masked estimate stays within 0.5 px, and the feature-family check measures the layover
    along range, not along azimuth."""
    from simulators import layover_sar

    from pipeline.geometry import AcquisitionGeometry

    eo = atlanta[0][:512, :512]
    g = AcquisitionGeometry("simulated", "right", 35.0, None, 0.0, 60.0, None, None, "test")
    off = (7.3, -5.6)
    sar = layover_sar(eo, np.random.default_rng(3), off, g.toward_sensor(), 3.0, looks=2)
    db = 10 * np.log10(sar)
    params = cr.CoregisterParams(search_radius_m=30.0)
    reg = cr.estimate_shift(db, eo, np.isfinite(db), eo > 0, params, gsd_m=0.5, geometry=g)
    assert not reg.flagged, reg.reason
    assert math.hypot(reg.dx - off[0], reg.dy - off[1]) < 0.5
    fam = reg.checks["bright_minus_ground_px"]
    assert fam["range"] > 0.3 and abs(fam["azimuth"]) < fam["range"] / 2  # layover: toward the sensor
    assert reg.checks["family_test"]["layover_seen"] and reg.checks["family"] == "ground"
    u = reg.uncertainty
    assert u["axes"] == "range_azimuth" and u["sigma_range_px"] > u["sigma_azimuth_px"] > 0
    assert 0 < u["p_within_1px"] <= 1 and reg.confidence <= u["p_within_1px"]
    old = cr.estimate_shift(db, eo, np.isfinite(db), eo > 0, dataclasses.replace(params, sar_bright_pfa=None),
                            gsd_m=0.5, geometry=g)
    ux, uy = g.toward_sensor()
    along_old = (old.dx - off[0]) * ux + (old.dy - off[1]) * uy
    along_new = (reg.dx - off[0]) * ux + (reg.dy - off[1]) * uy
    assert along_old > along_new  # the bias toward the sensor shrinks


def test_frame_plan_adapts_to_small_and_coarse_scenes() -> None:
    p = cr.CoregisterParams()
    big = cr.frame_plan((4000, 4000), 0.5, p)
    assert (big["radius_px"], big["tile_px"], big["reason"]) == (80, 256, "")
    coarse = cr.frame_plan((2000, 2000), 5.0, p)  # 40 m is 8 px at 5 m: searched 32 px
    assert coarse["radius_px"] == 32
    small = cr.frame_plan((225, 225), 2.0, p)  # tiles shrink so >= 2 * min_tiles fit
    assert small["tile_px"] == 75 and small["radius_px"] == 32 and not small["reason"]
    tiny = cr.frame_plan((300, 120), 0.5, p)
    assert tiny["radius_px"] == 30 and "cut to 30 px" in tiny["note"]
    none = cr.frame_plan((50, 50), 0.5, p)
    assert "smaller than one 64 px matching tile" in none["reason"]
    rng = np.random.default_rng(0)
    reg = cr.estimate_shift(rng.normal(size=(50, 50)), rng.normal(size=(50, 50)), p=p, gsd_m=0.5)
    assert reg.flagged and "too small to register" in reg.reason


def test_small_scene_gets_an_answer(atlanta) -> None:
    # a 300 px scene (less than two default tiles per side) used to be flagged whatever its error
    eo = atlanta[0][100:400, 100:400]
    moved = ndimage.shift(eo, (4.2, -6.7), order=3, mode="constant", cval=np.nan)
    sar = sar_like(moved, np.random.default_rng(4), looks=2)
    reg = cr.estimate_shift(10 * np.log10(sar), eo, np.isfinite(sar), eo > 0, gsd_m=0.5)
    assert not reg.flagged, reg.reason
    assert math.hypot(reg.dx + 6.7, reg.dy - 4.2) < 1.0
    assert reg.frame["tile_px"] == 100 and reg.residuals_px["n_inliers"] >= 3


def test_register_region_records_geometry_and_uncertainty(atlanta, fixtures: Path, tmp_path: Path) -> None:
    import shutil

    region = make_source(atlanta, tmp_path, (4.0, -3.0), size=512)
    shutil.copy(fixtures / "capella" / "CAPELLA_C14_SP_GEO_HH_20240709040329_20240709040358_extended.json",
                tmp_path / "source" / "sar_metadata.json")
    rec = cr.register_scene(region, SourceFiles(tmp_path / "source"), RegistrationFiles(tmp_path / "reg"), FAST)
    assert rec["geometry"]["look_side"] == "left" and rec["geometry"]["sensor_azimuth_deg"] == pytest.approx(144.7, abs=0.5)
    assert rec["uncertainty_px"]["axes"] == "range_azimuth"
    assert rec["uncertainty_m"]["sigma_range_px"] == pytest.approx(rec["uncertainty_px"]["sigma_range_px"] * 0.5, abs=1e-3)
    assert {"halves_px", "bright_minus_ground_px", "family"} <= set(rec["checks"])
    assert rec["frame"]["tile_px"] == 128
    # per-patch quality from the nearest tie points
    from pipeline.tiequality import tie_point_quality

    tp = [t for t in rec["tie_points"] if t["inlier"]][0]
    err, dist = tie_point_quality(rec, np.array([tp["lon"], tp["lon"] + 0.01]), np.array([tp["lat"], tp["lat"]]))
    assert dist[0] == pytest.approx(0.0, abs=1e-3) and dist[1] > 600  # 0.01 deg of longitude at 33.6 N is ~927 m; the scene ~256 m
    assert 0 <= err[0] < 0.5
    nan = tie_point_quality({**rec, "applied": False}, np.array([0.0]), np.array([0.0]))
    assert np.isnan(nan[0]).all() and np.isnan(nan[1]).all()
    # bad geometry in the metadata names the file
    meta = json.loads((tmp_path / "source" / "sar_metadata.json").read_text())
    meta["collect"]["radar"]["pointing"] = "up"
    (tmp_path / "source" / "sar_metadata.json").write_text(json.dumps(meta))
    with pytest.raises(cr.RegistrationError, match=r"sar_metadata.json: collect.radar.pointing: expected 'left' or 'right'"):
        cr.register_scene(region, SourceFiles(tmp_path / "source"), RegistrationFiles(tmp_path / "reg2"), FAST)


# ----------------------------------------------------------------------------- cost-saving paths and the family test


def test_spectra_null_equals_the_flipped_window_and_is_single_precision_safe() -> None:
    # the surrogate null from the shared spectra (convolution, no FFT of the turned window) is the
    # plain masked NCC against the window turned 180 degrees
    rng = np.random.default_rng(5)
    t = ndimage.gaussian_filter(rng.random((9, 60, 50)), (0, 1.5, 1.5)) + 5.0  # large mean, small spread
    s = ndimage.gaussian_filter(rng.random((9, 80, 70)), (0, 1.5, 1.5)) + 5.0
    tm, sm = rng.random((60, 50)) > 0.2, rng.random((80, 70)) > 0.3
    shape = dsc.fft_shape(tm.shape, 10)
    ts, ss = dsc.spectra(t, tm, shape), dsc.spectra(s, sm, shape)
    null = dsc.ncc_from_spectra(ts, ss, 10, 0.5, flipped=True)
    ref = dsc.masked_ncc(t, tm, s[:, ::-1, ::-1].copy(), sm[::-1, ::-1].copy(), 10, 0.5)
    assert (np.isfinite(null) == np.isfinite(ref)).all() and np.isfinite(ref).sum() > 300
    assert np.nanmax(np.abs(np.where(np.isfinite(ref), null - ref, 0.0))) < 1e-4
    # against a double-precision NCC computed directly at a few shifts
    surf = dsc.ncc_from_spectra(ts, ss, 10, 0.5)
    for dy, dx in ((0, 0), (-7, 3), (10, -10)):
        win = s[:, 10 + dy : 10 + dy + 60, 10 + dx : 10 + dx + 50]
        both = tm & sm[10 + dy : 10 + dy + 60, 10 + dx : 10 + dx + 50]
        a, b = t[:, both].ravel(), win[:, both].ravel()
        assert surf[10 + dy, 10 + dx] == pytest.approx(np.corrcoef(a, b)[0, 1], abs=1e-4)


def test_point_features_kept_without_layover(atlanta) -> None:
    """On a scene without layover (the chip made SAR-like: bright points and texture sit where
    the ground structure is), every-feature and ground estimates agree, so the bright scatterers
    are kept (family "all") and the offset comes back to < 0.1 px. With the test made to see
    layover everywhere, the ground family (bright scatterers masked) is used instead."""
    eo = atlanta[0][:640, :640]
    shift = (12.37, -8.81)
    moved = ndimage.shift(eo, (shift[1], shift[0]), order=3, mode="constant", cval=np.nan)
    sar = sar_like(moved, np.random.default_rng(23), looks=3)
    db = 10 * np.log10(sar)
    p = cr.CoregisterParams(tile_size=128, workers=1)
    reg = cr.estimate_shift(db, eo, np.isfinite(sar), eo > 0, p, gsd_m=0.5)
    assert not reg.flagged, reg.reason
    test = reg.checks["family_test"]
    assert reg.checks["family"] == "all" and not test["layover_seen"], test
    assert all(t.family == "all" for t in reg.tie_points)
    err = math.hypot(reg.dx - shift[0], reg.dy - shift[1])
    assert err < 0.1
    masked = cr.estimate_shift(db, eo, np.isfinite(sar), eo > 0, dataclasses.replace(p, family_agree_sigmas=1e-9),
                               gsd_m=0.5)
    assert masked.checks["family"] == "ground" and masked.checks["family_test"]["layover_seen"]
    assert all(t.family == "ground" for t in masked.tie_points)


def test_family_test_sees_layover_along_range() -> None:
    from pipeline.geometry import AcquisitionGeometry

    g = AcquisitionGeometry("simulated", "right", 35.0, None, 0.0, 90.0, None, None, "test")  # sensor to the east
    p = cr.CoregisterParams()

    def tps(dx: float, jitter: float, seed: int) -> list:
        rng = np.random.default_rng(seed)
        return [cr.TiePoint(100.0 * i, 50.0 * (i % 3), 5 + dx + rng.normal(0, jitter), -3 + rng.normal(0, jitter),
                            0.9, 0.5, inlier=True) for i in range(9)]

    ground = tps(0.0, 0.1, 1)
    seen = cr.family_test(ground, tps(0.6, 0.1, 2), g, p)  # bright ones 0.6 px toward the sensor (+x)
    assert seen["layover_seen"] and seen["axes"] == "range_azimuth"
    assert seen["difference_px"]["range"] == pytest.approx(0.6, abs=0.15)
    assert abs(seen["difference_px"]["azimuth"]) < 0.15
    same = cr.family_test(ground, tps(0.0, 0.1, 3), g, p)
    assert not same["layover_seen"]
    few = cr.family_test(ground[:2], tps(0.0, 0.1, 3)[:2], g, p)  # too few tiles to tell: keep the mask
    assert few["layover_seen"] and "only 2" in few["why"]


def test_family_test_is_paired_per_tile() -> None:
    """The two families of a tile share its template and most of its SAR: their errors are
    correlated, so the test is on the per-tile differences, not on the two means."""
    p = cr.CoregisterParams()
    rng = np.random.default_rng(5)
    tile_err = rng.normal(0, 0.5, (12, 2))  # shared by both families of a tile

    def tps(d: np.ndarray) -> list:
        return [cr.TiePoint(100.0 * i, 40.0 * (i % 4), 5 + d[i, 0], -3 + d[i, 1], 0.8, 0.5, inlier=True)
                for i in range(len(d))]

    ground = tps(tile_err)
    # a consistent 0.3 px shift of every tile (layover) under 0.5 px tile noise: the means' standard
    # errors in quadrature (~0.2 px) would hide it; the paired differences do not
    shifted = tile_err + np.array([0.3, 0.0]) + rng.normal(0, 0.02, (12, 2))
    seen = cr.family_test(ground, tps(shifted), None, p)
    assert seen["layover_seen"], seen
    assert seen["difference_px"]["x"] == pytest.approx(0.3, abs=0.03)
    # the differences barely scatter: the 0.05 px statistical floor and the systematic term
    assert seen["sigma_px"]["x"] == pytest.approx(math.hypot(0.05, p.family_systematic_px), abs=1e-4)
    # per-tile differences that scatter 0.4 px around a small mean: no consistent shift
    jitter = rng.normal(0, 0.4, (12, 2))
    noisy = tile_err + np.array([0.1, 0.0]) + jitter - jitter.mean(0)
    not_seen = cr.family_test(ground, tps(noisy), None, p)
    assert not not_seen["layover_seen"], not_seen
    assert not_seen["difference_px"]["x"] == pytest.approx(0.1, abs=1e-3) and not_seen["sigma_px"]["x"] > 0.08
    # a tile that is an outlier in either family does not count
    out = [t.with_inlier(i % 2 == 0) for i, t in enumerate(tps(shifted))]
    assert cr.family_test(ground, out, None, p)["common_tiles"] == 6
    # a consistent 0.15 px difference is within what masking alone moves a scene (no layover seen),
    # unless the systematic term is dropped
    mask_bias = tile_err + np.array([0.0, 0.15]) + rng.normal(0, 0.02, (12, 2))
    assert not cr.family_test(ground, tps(mask_bias), None, p)["layover_seen"]
    assert cr.family_test(ground, tps(mask_bias), None, dataclasses.replace(p, family_systematic_px=0.0))["layover_seen"]


def test_register_scene_bounds_the_gdal_cache(atlanta, tmp_path: Path, monkeypatch) -> None:
    from rasterio.env import get_gdal_config

    region = make_source(atlanta, tmp_path, (2.0, 1.0), size=300)
    seen = []
    real = cr.warp_window

    def spy(*a, **k):
        seen.append(int(get_gdal_config("GDAL_CACHEMAX")))
        return real(*a, **k)

    monkeypatch.setattr(cr, "warp_window", spy)
    before = get_gdal_config("GDAL_CACHEMAX")
    params = dataclasses.replace(FAST, gdal_cache_mb=37, workers=2)
    cr.register_scene(region, SourceFiles(tmp_path / "source"), RegistrationFiles(tmp_path / "reg"), params)
    assert seen and set(seen) == {37 * 2**20}  # MiB, as bytes (rasterio's unit); every window read, worker threads too
    assert get_gdal_config("GDAL_CACHEMAX") == before
    with pytest.raises(ValueError, match="gdal_cache_mb"):
        cr.CoregisterParams(gdal_cache_mb=0)
