"""The offline demo: Capella-layout catalog, calibrated simulated SAR, XYZ EO tiles, truth, determinism.

A reduced-size demo (two ~280 m regions) is built twice; the checks read the outputs the way
the pipeline does (pystac, rasterio, the calibration module) and compare them with class maps
burnt independently from the same OSM on the true grids.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import re
from pathlib import Path

import numpy as np
import pystac
import pytest
import rasterio
from affine import Affine
from PIL import Image

from pipeline import tiles
from pipeline.calibrate import capella_calibration, dn_to_linear
from pipeline.demo import physics
from pipeline.demo.params import PROCEDURAL, REGIONS, DemoError, DemoParams, DemoRegion
from pipeline.demo.product import parse_item_id
from pipeline.demo.rural import osm_xml, procedural_rural
from pipeline.demo.stage import build_demo, utm_grid
from pipeline.labels.classify import classify
from pipeline.labels.rasterize import rasterize_classes
from pipeline.osm import read_osm
from pipeline.params import ParamsError, parse_section
from pipeline.regions import load_region

ROOT = Path(__file__).resolve().parent.parent
SMALL_SECTION = {
    "margin_m": 20.0,
    "regions": {
        "helsinki": {"bbox": [24.940, 60.168, 24.945, 60.1705]},
        "uppland": {"bbox": [17.590, 59.907, 17.595, 59.9095]},
    },
}
SMALL = parse_section(DemoParams, SMALL_SECTION)
ID_RE = re.compile(r"^CAPELLA_C\d{2}_(SP|SM|SS)_(GEO|GEC)_(HH|VV)_(\d{14})_(\d{14})$")


@pytest.fixture(scope="module")
def builds(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    a = build_demo(tmp_path_factory.mktemp("a") / "demo", SMALL)
    b = build_demo(tmp_path_factory.mktemp("b") / "demo", SMALL)
    return a, b


@pytest.fixture(scope="module")
def out(builds: tuple[Path, Path]) -> Path:
    return builds[0]


@pytest.fixture(scope="module")
def cfg() -> DemoParams:
    return SMALL


def _items(out: Path) -> dict[str, pystac.Item]:
    cat = pystac.Catalog.from_file(str(out / "capella" / "catalog.json"))
    by_dt = cat.get_child("capella-open-data-by-datetime")
    assert by_dt is not None
    return {i.id: i for i in by_dt.get_items(recursive=True)}


def _true_classes(name: str, r: DemoRegion, out: Path, crs, transform, shape) -> np.ndarray:
    """Class map burnt from the region's OSM on a given grid, independently of the demo stage."""
    src = out / "osm" / f"{name}.osm" if r.osm == PROCEDURAL else ROOT / "pipeline" / "demo_data" / r.osm
    w, s, e, n = r.bbox
    feats = classify(read_osm(src, (w - 0.003, s - 0.002, e + 0.003, n + 0.002)))
    return rasterize_classes(feats, crs, transform, shape)


# --------------------------------------------------------------------------- catalog


def test_catalog_walks_like_capella(out: Path, cfg: DemoParams) -> None:
    items = _items(out)
    assert set(items) == {r.item_id for r in cfg.regions.values()}
    for r in cfg.regions.values():
        item = items[r.item_id]
        m = ID_RE.match(item.id)
        assert m, item.id
        info = parse_item_id(item.id)
        s = info["start"]
        mm, dd = (f"{s.month:02d}", f"{s.day:02d}") if r.padded_dates else (str(s.month), str(s.day))
        rel = Path(item.get_self_href()).relative_to(out / "capella").as_posix()
        assert rel == (
            f"capella-open-data-by-datetime/capella-open-data-{s.year}/capella-open-data-{s.year}-{mm}/"
            f"capella-open-data-{s.year}-{mm}-{dd}/{item.id}/{item.id}.json"
        )
        p = item.properties
        assert p["sar:product_type"] == "GEO" and p["sar:polarizations"] == ["HH"]
        assert p["platform"] == info["platform"] and p["constellation"] == "capella"
        assert p["start_datetime"].startswith(s.strftime("%Y-%m-%dT%H:%M:%S"))
        assert p["license"] == "CC-BY-4.0" and p["providers"]
        assert set(item.assets) == {"HH", "metadata", "preview", "thumbnail"}
        assert item.assets["HH"].media_type == "image/tiff; application=geotiff; profile=cloud-optimized"
        assert item.assets["HH"].roles == ["data"] and item.assets["metadata"].roles == ["metadata"]
        raw = json.loads(Path(item.get_self_href()).read_text())
        for key, a in raw["assets"].items():
            assert a["href"].startswith("./"), (key, a["href"])
            assert (Path(item.get_self_href()).parent / a["href"]).is_file()
        assert raw["assets"]["metadata"]["href"].endswith("_extended.json")
        # lon/lat footprint near the AOI
        w, s_, e, n = r.bbox
        bx = item.bbox
        assert bx[0] < (w + e) / 2 < bx[2] and bx[1] < (s_ + n) / 2 < bx[3]
    # both month/day spellings occur (walk links, never build URLs)
    assert (out / "capella/capella-open-data-by-datetime/capella-open-data-2024/capella-open-data-2024-7").is_dir()
    assert (out / "capella/capella-open-data-by-datetime/capella-open-data-2025/capella-open-data-2025-05").is_dir()


def test_second_path_by_product_type_reaches_same_items(out: Path) -> None:
    cat = pystac.Catalog.from_file(str(out / "capella" / "catalog.json"))
    geo = cat.get_child("capella-open-data-by-product-type").get_child("capella-open-data-geo")
    via_type = {i.id: Path(i.get_self_href()).resolve() for i in geo.get_items()}
    via_dt = {k: Path(i.get_self_href()).resolve() for k, i in _items(out).items()}
    assert via_type == via_dt


def test_no_absolute_paths_or_clock_in_json(out: Path) -> None:
    for f in out.rglob("*.json"):
        text = f.read_text()
        assert str(out.parent) not in text and ".tmp" not in text, f


# --------------------------------------------------------------------------- SAR product


def test_extended_json_has_the_real_structure(out: Path, fixtures: Path) -> None:
    real = json.loads(next((fixtures / "capella").glob("*_GEO_*_extended.json")).read_text())

    def paths(d: dict, prefix: str = "") -> set[str]:
        acc = set()
        for k, v in d.items():
            acc.add(prefix + k)
            if isinstance(v, dict):
                acc |= paths(v, prefix + k + ".")
        return acc

    real_paths = paths(real)
    for item in _items(out).values():
        ext = json.loads(Path(item.get_self_href()).with_name(f"{item.id}_extended.json").read_text())
        ours = paths(ext)
        assert ours <= real_paths, sorted(ours - real_paths)
        for must in (
            "collect.image.scale_factor",
            "collect.image.radiometry",
            "collect.image.center_pixel.incidence_angle",
            "collect.image.image_geometry.geotransform",
            "collect.image.image_geometry.coordinate_system.wkt",
        ):
            assert must in ours
        img = ext["collect"]["image"]
        with rasterio.open(Path(item.get_self_href()).with_name(f"{item.id}.tif")) as src:
            assert list(src.transform.to_gdal()) == pytest.approx(img["image_geometry"]["geotransform"])
            assert (src.height, src.width) == (img["rows"], img["columns"])
            assert rasterio.crs.CRS.from_wkt(img["image_geometry"]["coordinate_system"]["wkt"]) == src.crs
        assert img["radiometry"] == "sigma_nought"


@pytest.mark.parametrize("name", ["helsinki", "uppland"])
def test_cog_dn_decode_to_class_sigma0(out: Path, cfg: DemoParams, name: str) -> None:
    r = cfg.regions[name]
    item = _items(out)[r.item_id]
    tif = Path(item.get_self_href()).with_name(f"{item.id}.tif")
    ext = json.loads(tif.with_name(f"{item.id}_extended.json").read_text())
    cal = capella_calibration(ext, str(tif))
    with rasterio.open(tif) as src:
        assert src.dtypes[0] == "uint16" and src.nodata == 0
        raw = json.loads(Path(item.get_self_href()).read_text())["properties"]
        assert src.crs.to_epsg() == raw["proj:epsg"] and 32601 <= src.crs.to_epsg() <= 32660
        assert list(src.transform)[:6] == raw["proj:transform"]
        assert src.res == (0.5, 0.5)
        assert src.tags(ns="IMAGE_STRUCTURE").get("LAYOUT") == "COG"
        assert src.block_shapes[0] == (512, 512) and src.overviews(1)
        dn = src.read(1)
        product_tf, crs, shape = src.transform, src.crs, (src.height, src.width)
    # nodata outside a rotated footprint: the first valid column changes down the scene
    valid = dn > 0
    assert 0.6 < valid.mean() < 0.98
    first = [int(np.argmax(row)) for row in valid[50:-50:100] if row.any()]
    assert len(set(first)) > 2
    # the true grid is the product grid minus the injected offset
    off = r.offset_m
    true_tf = Affine.translation(-off.east, -off.north) @ product_tf
    c_crs, c_tf, c_shape = utm_grid(r.bbox, cfg.sar_pixel_m, cfg.margin_m)
    assert c_shape == shape and c_crs == crs
    assert np.allclose(tuple(true_tf)[:6], tuple(c_tf)[:6], atol=1e-6)
    classes = _true_classes(name, r, out, crs, true_tf, shape)
    db = 10 * np.log10(dn_to_linear(dn, cal))
    # per class, far from buildings (edges, shadows): median dB = table value + speckle's log bias
    b = classes == physics.BUILDING
    near_b = physics.any_along(b, (0, 1), 40) | physics.any_along(b, (0, -1), 40) | b
    bias = -0.37  # median of Gamma(4, 1/4) in dB
    checked = 0
    for k in np.unique(classes):
        sel = (classes == k) & valid & ~near_b
        sel[:, 1:] &= classes[:, :-1] == k  # not on a class border
        sel[:, :-1] &= classes[:, 1:] == k
        if sel.sum() < 3000:
            continue
        med = float(np.median(db[sel]))
        assert med == pytest.approx(physics.SIGMA0_DB[int(k)] + bias, abs=1.0), (name, int(k), med)
        lin = dn_to_linear(dn, cal)[sel]
        cv = float(lin.std() / lin.mean())
        assert 0.45 < cv < 1.0, (name, int(k), cv)  # multiplicative speckle (1/sqrt(4)) plus texture
        checked += 1
    assert checked >= 2
    if name == "helsinki":  # sensor to the east (range azimuth 260 deg): bright east walls, shadow west
        east_edge = b & ~np.roll(b, -1, axis=1) & valid
        roof = (
            b & np.roll(b, -3, axis=1) & np.roll(b, 3, axis=1) & np.roll(b, -3, axis=0) & np.roll(b, 3, axis=0) & valid
        )
        shadow = ~b & np.roll(b, -5, axis=1) & valid & ~np.roll(b, 5, axis=1)
        assert np.median(db[east_edge]) > np.median(db[roof]) + 6
        assert np.median(db[shadow]) < -20


def test_truth_records_offsets_and_nothing_reads_it(out: Path, cfg: DemoParams) -> None:
    truth = json.loads((out / "truth.json").read_text())
    assert "never reads" in truth["note"]
    items = _items(out)
    for name, r in cfg.regions.items():
        t = truth["regions"][name]
        assert t["sar_offset_m"] == {"east": r.offset_m.east, "north": r.offset_m.north}
        assert 1.0 < math.hypot(*t["sar_offset_m"].values()) < 10.0
        raw = json.loads(Path(items[r.item_id].get_self_href()).read_text())["properties"]
        assert t["sar_crs"] == f"EPSG:{raw['proj:epsg']}"
    offsets = {tuple(t["sar_offset_m"].values()) for t in truth["regions"].values()}
    assert len(offsets) == len(truth["regions"])  # different per region
    readers = [
        p.name for p in (ROOT / "pipeline").rglob("*.py")
        if "demo" not in p.relative_to(ROOT / "pipeline").parts and "truth.json" in p.read_text()
    ]
    assert readers == []


# --------------------------------------------------------------------------- EO tiles


def _mosaic(out: Path, name: str, zoom: int, rng: tuple[int, int, int, int]) -> np.ndarray:
    x0, y0, x1, y1 = rng
    m = np.zeros(((y1 - y0 + 1) * 256, (x1 - x0 + 1) * 256, 3), np.uint8)
    for ty in range(y0, y1 + 1):
        for tx in range(x0, x1 + 1):
            with Image.open(out / "tiles" / name / str(zoom) / str(tx) / f"{ty}.png") as im:
                assert im.size == (256, 256) and im.mode == "RGB"
                m[(ty - y0) * 256 : (ty - y0 + 1) * 256, (tx - x0) * 256 : (tx - x0 + 1) * 256] = np.asarray(im)
    return m


@pytest.mark.parametrize("name", ["helsinki", "uppland"])
def test_tiles_at_right_zoom_and_place(out: Path, cfg: DemoParams, name: str) -> None:
    r = cfg.regions[name]
    bbox = tuple(r.bbox)
    zoom = tiles.zoom_for_gsd((bbox[1] + bbox[3]) / 2, 0.3)
    assert zoom == 18 and 0.25 < tiles.ground_resolution((bbox[1] + bbox[3]) / 2, zoom) <= 0.3
    rng = tiles.tile_range(bbox, zoom)
    on_disk = {(int(p.parent.name), int(p.stem)) for p in (out / "tiles" / name).rglob("*.png")}
    assert {p.parent.parent.name for p in (out / "tiles" / name).rglob("*.png")} == {str(zoom)}
    assert on_disk == {(x, y) for x in range(rng[0], rng[2] + 1) for y in range(rng[1], rng[3] + 1)}
    rgb = _mosaic(out, name, zoom, rng)
    minx, _, _, maxy = tiles.tile_bounds(rng[0], rng[1], zoom)
    res = (tiles.tile_bounds(rng[0], rng[1], zoom)[2] - minx) / 256
    tf = Affine(res, 0, minx, 0, -res, maxy)
    classes = _true_classes(name, r, out, "EPSG:3857", tf, rgb.shape[:2])
    from scipy import ndimage

    b = classes == physics.BUILDING
    look = physics.EoLook()
    sun = math.radians(look.sun_azimuth_deg)
    sunlit = ~physics.any_along(b, (-math.cos(sun), math.sin(sun)), 70)  # 15 m walls cast <= 60 px shadows
    checked = 0
    for k in np.unique(classes):
        if k == physics.BUILDING:
            continue
        core = ndimage.binary_erosion(classes == k, iterations=4) & sunlit
        if core.sum() < 4000:
            continue
        med = np.median(rgb[core].astype(float), axis=0)
        assert np.abs(med - np.array(physics.EO_COLOUR[int(k)])).max() < 25, (name, int(k), med)
        checked += 1
    assert checked >= 2
    if name == "uppland":  # a known feature: the river and pond sit exactly where OSM puts them
        water = classes == 22
        assert water.sum() > 2000
        looks_wet = np.abs(rgb.astype(float) - physics.EO_COLOUR[22]).max(axis=2) < 22
        looks_wet = ndimage.binary_opening(looks_wet, iterations=2)

        def iou(a: np.ndarray, b: np.ndarray) -> float:
            return float((a & b).sum() / (a | b).sum())

        assert iou(looks_wet, water) > 0.7
        assert iou(looks_wet, np.roll(water, 6, axis=1)) < iou(looks_wet, water) - 0.1


def test_eo_and_sar_dates_differ_in_region_files(cfg: DemoParams) -> None:
    for name, r in REGIONS.items():
        reg = load_region(ROOT / "regions" / f"{name}.yaml")
        sar_day = parse_item_id(r.item_id)["start"].date()
        (sar,) = reg.sar
        if "ids" in sar:  # selected by id, or by filters that admit the demo item's date
            assert reg.demo and sar["ids"] == [r.item_id]
        else:
            start, end = sar["datetime"].split("/")
            assert reg.demo and start <= sar_day.isoformat() <= end
        assert tuple(reg.bbox) == r.bbox
        assert reg.eo["tiles"] == f"data/demo/tiles/{name}/{{z}}/{{x}}/{{y}}.png"
        assert reg.eo["zoom"] == tiles.zoom_for_gsd((reg.bbox[1] + reg.bbox[3]) / 2, DemoParams().eo_gsd_m)
        gap = abs((sar_day - __import__("datetime").date.fromisoformat(reg.eo["datetime"])).days)
        assert gap > 30
        assert reg.resolve(reg.osm["file"]).endswith(
            "Helsinki.osm.pbf" if r.osm != PROCEDURAL else f"data/demo/osm/{name}.osm"
        )


# --------------------------------------------------------------------------- determinism, errors, units


def test_two_builds_are_byte_identical(builds: tuple[Path, Path]) -> None:
    def digest(root: Path) -> dict[str, str]:
        return {
            p.relative_to(root).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*"))
            if p.is_file()
        }

    a, b = (digest(x) for x in builds)
    assert a == b and len(a) > 40


def test_procedural_osm_depends_on_seed_only() -> None:
    def feats(seed: int) -> str:
        return osm_xml(procedural_rural((900, 800), seed), lambda x, y: (x / 1e5, y / 1e5), (0, 0, 1, 1))

    assert feats(1) == feats(1) and feats(1) != feats(2)
    text = feats(1)
    for tag in (
        'k="waterway" v="river"',
        'k="landuse" v="forest"',
        'k="building" v="house"',
        'k="highway" v="track"',
        'k="landuse" v="residential"',
        'k="landuse" v="farmland"',
        'k="type" v="multipolygon"',
    ):
        assert tag in text


def test_bad_params_fail_clearly(tmp_path: Path) -> None:
    with pytest.raises(DemoError, match="max_pixels"):
        build_demo(tmp_path / "d", dataclasses.replace(SMALL, max_pixels=1000, only=("uppland",)))
    assert not (tmp_path / "d").exists()
    with pytest.raises(DemoError, match="item id 'CAPELLA_X'"):
        parse_item_id("CAPELLA_X")
    with pytest.raises(ParamsError, match=r"demo.only: unknown region\(s\) atlantis"):
        parse_section(DemoParams, {"only": ["atlantis"]})
    with pytest.raises(ParamsError, match="regions.atlantis: missing osm, item_id"):
        parse_section(DemoParams, {"regions": {"atlantis": {"bbox": [0, 0, 1, 1]}}})
    # a region of params.yaml gives only what it changes: the rest is the built-in region's
    moved = parse_section(DemoParams, {"regions": {"uppland": {"offset_m": {"east": 1.0, "north": 2.0}}}})
    assert moved.regions["uppland"].offset_m.east == 1.0 and moved.regions["uppland"].bbox == REGIONS["uppland"].bbox
    assert moved.regions["helsinki"] == REGIONS["helsinki"]


def test_speckle_and_quantisation_roundtrip() -> None:
    rng = np.random.default_rng(0)
    s = np.full((400, 400), 0.05, np.float32)
    sp = physics.speckle(s, 4, rng)
    assert sp.mean() == pytest.approx(0.05, rel=0.02) and (sp / 0.05).var() == pytest.approx(0.25, rel=0.05)
    dn = physics.sigma0_to_dn(sp, 1.5e-4)
    ext = {"product_type": "GEO", "collect": {"image": {"scale_factor": 1.5e-4, "radiometry": "sigma_nought"}}}
    back = dn_to_linear(dn, capella_calibration(ext))
    assert np.median(np.abs(back / sp - 1)) < 2e-3


def test_building_edges_face_the_sensor() -> None:
    c = np.full((120, 120), 16, np.uint8)
    c[40:80, 40:80] = physics.BUILDING
    for az, edge_col, shadow_side in ((260.0, 79, "west"), (80.0, 40, "east")):
        scene = physics.mean_sigma0(c, physics.SarGeometry(range_azimuth_deg=az), np.random.default_rng(0))
        assert scene.edge[60, edge_col] and not scene.edge[60, 119 - edge_col]
        cols = np.nonzero(scene.shadow[60])[0]
        assert (cols < 40).all() if shadow_side == "west" else (cols >= 80).all()
        assert 10 * np.log10(scene.sigma0[60, edge_col]) > 8


def test_footprint_is_inside_its_corners() -> None:
    m = physics.footprint_mask((300, 200), 7.0, 2.0, 3.0)
    from shapely.geometry import Point, Polygon

    poly = Polygon(physics.footprint_corners((300, 200), 7.0, 2.0))
    rows, cols = np.nonzero(m)
    for r, c in zip(rows[::97], cols[::97]):
        assert poly.buffer(0.75).contains(Point(c + 0.5, r + 0.5))
    assert 0.7 < m.sum() / poly.area <= 1.0
