"""The offline demo: Capella- and Umbra-layout catalogs, simulated SAR, XYZ EO tiles, truth, determinism.

A reduced-size demo (two ~280 m regions; Helsinki with four overlapping scenes: Capella HH twice,
Capella VV, Umbra GEC VV) is built twice; the checks read the outputs the way the pipeline does
(pystac, its own catalog walk and item readers, rasterio, the calibration module) and compare them
with class maps burnt independently from the same OSM on the true grids.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import hashlib
import json
import itertools
import math
import re
import urllib.parse
import uuid
from pathlib import Path

import numpy as np
import pystac
import pytest
import rasterio
import yaml
from affine import Affine
from PIL import Image

from pipeline import tiles
from pipeline.calibrate import calibration_for, capella_calibration, dn_to_db, dn_to_linear
from pipeline.demo import physics
from pipeline.demo.params import HELSINKI_HH, PROCEDURAL, REGIONS, DemoError, DemoParams, DemoRegion, DemoScene
from pipeline.demo.product import parse_item_id
from pipeline.demo.rural import osm_xml, procedural_rural
from pipeline.demo.stage import build_demo, scene_facts, scene_grid, utm_grid
from pipeline.fetch.cache import Cache
from pipeline.fetch.items import (
    ItemFacts,
    classify_asset,
    coverage,
    facts_reason,
    footprint,
    item_facts,
    select_data_asset,
    select_metadata_asset,
)
from pipeline.fetch.params import FetchParams
from pipeline.fetch.sar import fetch_sar
from pipeline.fetch.stacio import FetchError, Transport
from pipeline.fetch.walk import WalkFilter, walk_catalog
from pipeline.labels.classify import classify
from pipeline.layout import SourceFiles
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
CAPELLA_SCENES = [(n, s) for n, r in SMALL.regions.items() for s in r.scenes if s.provider == "capella"]
UMBRA_SCENES = [(n, s) for n, r in SMALL.regions.items() for s in r.scenes if s.provider == "umbra"]
NEW_SCENE = {"item_id": "CAPELLA_C02_SM_GEO_VV_20220101000000_20220101000010", "offset_m": {"east": 1, "north": 2},
             "scale_factor": 1e-4, "range_azimuth_deg": 80, "orbit_state": "descending", "incidence_deg": 30,
             "footprint_rotation_deg": 5}  # every required key of a scene, nothing else


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



def _truth(out: Path) -> dict:
    return json.loads((out / "truth.json").read_text())


def _doc(out: Path, item_id: str) -> dict:
    """The raw item JSON of a scene, found through truth.json (test-side bookkeeping only)."""
    return json.loads((out / _truth(out)["scenes"][item_id]["item"]).read_text())


def _walk(href: Path, tmp: Path, **sar) -> list[tuple[str, dict]]:
    """(item href, item dict) as the fetch stage walks a static catalog, pruning with its own filter."""
    p = dataclasses.replace(FetchParams(), walk_workers=4, catalog_cache_ttl_h=0)
    filt = WalkFilter(dict(sar), "product" in sar)
    return list(walk_catalog(str(href), Cache(tmp / "cache", Transport()), p, filt))


# --------------------------------------------------------------------------- catalogs


def test_capella_catalog_walks_like_capella(out: Path, cfg: DemoParams) -> None:
    items = _items(out)
    assert set(items) == {s.item_id for _, s in CAPELLA_SCENES}
    for _, sc in CAPELLA_SCENES:
        item = items[sc.item_id]
        m = ID_RE.match(item.id)
        assert m, item.id
        info = parse_item_id(item.id)
        s = info["start"]
        mm, dd = (f"{s.month:02d}", f"{s.day:02d}") if sc.padded_dates else (str(s.month), str(s.day))
        rel = Path(item.get_self_href()).relative_to(out / "capella").as_posix()
        assert rel == (
            f"capella-open-data-by-datetime/capella-open-data-{s.year}/capella-open-data-{s.year}-{mm}/"
            f"capella-open-data-{s.year}-{mm}-{dd}/{item.id}/{item.id}.json"
        )
        p = item.properties
        pol = info["polarization"]
        assert p["sar:product_type"] == "GEO" and p["sar:polarizations"] == [pol]
        assert p["platform"] == info["platform"] and p["constellation"] == "capella"
        assert p["start_datetime"].startswith(s.strftime("%Y-%m-%dT%H:%M:%S"))
        assert p["license"] == "CC-BY-4.0" and p["providers"]
        assert set(item.assets) == {pol, "metadata", "preview", "thumbnail"}  # the data asset keyed by polarisation
        assert item.assets[pol].media_type == "image/tiff; application=geotiff; profile=cloud-optimized"
        assert item.assets[pol].roles == ["data"] and item.assets["metadata"].roles == ["metadata"]
        raw = json.loads(Path(item.get_self_href()).read_text())
        for key, a in raw["assets"].items():
            assert a["href"].startswith("./"), (key, a["href"])
            assert (Path(item.get_self_href()).parent / a["href"]).is_file()
        assert raw["assets"]["metadata"]["href"].endswith("_extended.json")
    # both month/day spellings occur (walk links, never build URLs)
    assert (out / "capella/capella-open-data-by-datetime/capella-open-data-2024/capella-open-data-2024-7").is_dir()
    assert (out / "capella/capella-open-data-by-datetime/capella-open-data-2025/capella-open-data-2025-05").is_dir()


def test_second_path_by_product_type_reaches_same_items(out: Path) -> None:
    cat = pystac.Catalog.from_file(str(out / "capella" / "catalog.json"))
    geo = cat.get_child("capella-open-data-by-product-type").get_child("capella-open-data-geo")
    via_type = {i.id: Path(i.get_self_href()).resolve() for i in geo.get_items()}
    via_dt = {k: Path(i.get_self_href()).resolve() for k, i in _items(out).items()}
    assert via_type == via_dt


def test_pipeline_walk_and_item_readers_find_every_capella_scene(out: Path, tmp_path: Path) -> None:
    """The fetch stage's own walk, filters and item readers: ids, polarisations, modes, dates, data assets."""
    found = _walk(out / "capella" / "catalog.json", tmp_path, product="GEO")
    assert sorted(d["id"] for _, d in found) == sorted(s.item_id for _, s in CAPELLA_SCENES)
    for href, doc in found:
        facts = item_facts(doc)
        sc = next(s for _, s in CAPELLA_SCENES if s.item_id == facts.id)
        want = scene_facts(sc)
        assert (facts.provider, facts.product, facts.polarizations, facts.mode) == (
            "capella", "GEO", (want["polarization"],), want["mode"])
        assert facts.start == want["start"] and facts.end == want["end"]
        item = pystac.Item.from_dict(doc, href=href)
        key, asset = select_data_asset(item, None)
        assert key == want["polarization"] and classify_asset(key, asset) == "geotiff"
        assert select_metadata_asset(item, "capella")[0] == "metadata"
    # the VV scene alone: the walk prunes the HH item links from their Capella ids, unread
    vv = _walk(out / "capella" / "catalog.json", tmp_path, product="GEO", polarization="VV")
    assert [d["id"] for _, d in vv] == [s.item_id for _, s in CAPELLA_SCENES if "_VV_" in s.item_id]


def test_umbra_catalog_in_umbra_layout_found_by_the_pipeline(out: Path, tmp_path: Path) -> None:
    root = out / "umbra" / "stac" / "catalog.json"
    found = _walk(root, tmp_path, provider="umbra", product="GEC")
    assert [d["id"] for _, d in found] == [s.item_id for _, s in UMBRA_SCENES] and len(found) >= 1
    for href, doc in found:
        sc = next(s for _, s in UMBRA_SCENES if s.item_id == doc["id"])
        assert str(uuid.UUID(doc["id"])) == doc["id"]  # Umbra item ids are UUIDs
        t0 = scene_facts(sc)["start"]
        rel = Path(href).relative_to(out / "umbra").as_posix()
        assert rel == f"stac/{t0:%Y}/{t0:%Y-%m}/{t0:%Y-%m-%d}/{doc['id']}/{doc['id']}.json"
        facts = item_facts(doc)
        assert (facts.provider, facts.product, facts.polarizations, facts.mode) == ("umbra", "GEC", ("VV",), "SP")
        assert facts.start == t0
        p = doc["properties"]
        assert p["constellation"] == "umbra" and p["platform"] == sc.collect.split("_")[1].title()
        assert p["license"] == "CC-BY-4.0" and any("Umbra" in v["name"] for v in p["providers"])
        for key in ("sar:instrument_mode", "sar:observation_direction", "sat:orbit_state", "view:incidence_angle",
                    "view:azimuth", "umbra:collect_id", "umbra:task_id"):
            assert key in p, key
        assert not [k for k in p if k.startswith("proj:") or "scale" in k or "calib" in k]  # Umbra has none
        assert all(len(c) == 3 for c in doc["geometry"]["coordinates"][0])  # footprints with heights, as Umbra's
        # the data asset: keyed GEC as in the 2023 vintage, found by what it is
        item = pystac.Item.from_dict(doc, href=href)
        key, asset = select_data_asset(item, "VV")
        assert key == "GEC" and classify_asset(key, asset) == "geotiff"
        assert select_metadata_asset(item, "umbra") is None
        # the href leaves stac/ for sar-data/tasks/<task>/, percent-encoded (spaces) as Umbra's URLs are
        raw = doc["assets"]["GEC"]["href"]
        assert " " not in raw and "%20" in raw and "," in sc.task and "," in raw
        target = (Path(href).parent / urllib.parse.unquote(raw)).resolve()
        assert target.is_file() and target.name == f"{sc.collect}_GEC.tif"
        assert target.relative_to((out / "umbra").resolve()).parts[:3] == ("sar-data", "tasks", sc.task)


def test_fetch_stage_takes_the_umbra_gec(out: Path, tmp_path: Path) -> None:
    """What dvc repro needs of the Umbra scene: the fetch stage downloads its GEC, flagged uncalibrated."""
    (name, sc), = UMBRA_SCENES
    doc = {"name": "umbra-demo", "aoi": {"bbox": list(SMALL.regions[name].bbox)}, "gsd_m": 0.5,
           "sar": {"stac": str(out / "umbra" / "stac" / "catalog.json"), "catalog_root": str(out / "umbra"),
                   "provider": "umbra", "product": "GEC"},
           "eo": {"tiles": "t/{z}/{x}/{y}.png", "datetime": "2023-05-21"}, "osm": {"file": "x.osm"}}
    (tmp_path / "regions").mkdir()
    (tmp_path / "regions" / "umbra-demo.yaml").write_text(yaml.safe_dump(doc))
    region = load_region(tmp_path / "regions" / "umbra-demo.yaml", root=tmp_path, check_files=False)
    (tmp_path / "src").mkdir()
    out_files = SourceFiles(tmp_path / "src")
    (rec,) = fetch_sar(region, Cache(tmp_path / "cache", Transport()), FetchParams(), out_files)
    files = out_files.scene(rec["scene"])
    assert rec["item_id"] == sc.item_id and rec["provider"] == "umbra" and rec["calibrated"] is False
    assert files.sar.read_bytes() == (out / _truth(out)["scenes"][sc.item_id]["data"]).read_bytes()


def test_no_absolute_paths_or_clock_in_json(out: Path) -> None:
    for f in out.rglob("*.json"):
        text = f.read_text()
        assert str(out.parent) not in text and ".tmp" not in text, f


# --------------------------------------------------------------------------- scenes: overlap, dates


def test_helsinki_has_overlapping_scenes_of_different_dates_sensors_and_polarisations(out: Path) -> None:
    """Issue 9: at least three scenes of different dates, one VV, one Umbra GEC; each covers only part of
    the AOI (but the first), and every pair shares ground while each has ground of its own."""
    r = SMALL.regions["helsinki"]
    docs = {s.item_id: _doc(out, s.item_id) for s in r.scenes}
    facts = {k: item_facts(d) for k, d in docs.items()}
    assert len(docs) >= 3 and len({f.start.date() for f in facts.values()}) == len(docs)
    assert any(f.polarizations == ("VV",) for f in facts.values())
    assert any((f.provider, f.product) == ("umbra", "GEC") for f in facts.values())
    days = sorted(f.start for f in facts.values())
    assert (days[-1] - days[0]).days > 365  # spread over years: different SAR/EO gaps
    w, s, e, n = r.bbox
    from shapely.geometry import box

    aoi = box(w, s, e, n)
    cov = {k: coverage(aoi, d) for k, d in docs.items()}
    assert cov[r.scenes[0].item_id] > 0.9
    for sc in r.scenes[1:]:
        assert 0.15 < cov[sc.item_id] < 0.85, (sc.item_id, cov[sc.item_id])
    fps = {k: footprint(d) for k, d in docs.items()}
    for a, b in itertools.combinations(fps, 2):
        inter = fps[a].intersection(fps[b]).area
        assert inter / min(fps[a].area, fps[b].area) > 0.05, (a, b)  # they overlap
        assert inter / fps[a].area < 0.95 and inter / fps[b].area < 0.95, (a, b)  # neither contains the other


# --------------------------------------------------------------------------- SAR products


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
        pol = parse_item_id(item.id)["polarization"]
        assert ext["collect"]["radar"]["transmit_polarization"] + ext["collect"]["radar"]["receive_polarization"] == pol


def _class_table_db(pol: str) -> dict[int, float]:
    return {k: v + (physics.VV_MINUS_HH_DB.get(k, 0.0) if pol == "VV" else 0.0) for k, v in physics.SIGMA0_DB.items()}


def _check_class_medians(db: np.ndarray, classes: np.ndarray, valid: np.ndarray, table: dict[int, float],
                         offset: float, what: str, min_px: int = 3000, cv: bool = True) -> int:
    """Per class, far from buildings and class borders: median dB == table + offset + speckle's log bias."""
    b = classes == physics.BUILDING
    near_b = physics.any_along(b, (0, 1), 40) | physics.any_along(b, (0, -1), 40) | b
    bias = -0.37  # median of Gamma(4, 1/4) in dB
    checked = 0
    for k in np.unique(classes):
        sel = (classes == k) & valid & ~near_b
        sel[:, 1:] &= classes[:, :-1] == k  # not on a class border
        sel[:, :-1] &= classes[:, 1:] == k
        if sel.sum() < min_px:
            continue
        med = float(np.median(db[sel]))
        assert med == pytest.approx(table[int(k)] + offset + bias, abs=1.0), (what, int(k), med)
        if cv:
            lin = np.power(10.0, db[sel] / 10.0)
            c = float(lin.std() / lin.mean())
            assert 0.45 < c < 1.0, (what, int(k), c)  # multiplicative speckle (1/sqrt(4)) plus texture
        checked += 1
    return checked


@pytest.mark.parametrize("name,item_id", [(n, s.item_id) for n, s in CAPELLA_SCENES])
def test_cog_dn_decode_to_class_sigma0(out: Path, cfg: DemoParams, name: str, item_id: str) -> None:
    r = cfg.regions[name]
    sc = next(s for s in r.scenes if s.item_id == item_id)
    pol = scene_facts(sc)["polarization"]
    item = _items(out)[item_id]
    tif = Path(item.get_self_href()).with_name(f"{item.id}.tif")
    ext = json.loads(tif.with_name(f"{item.id}_extended.json").read_text())
    cal = capella_calibration(ext, str(tif))
    assert cal.calibrated and cal.scale_factor == sc.scale_factor
    with rasterio.open(tif) as src:
        assert src.dtypes[0] == "uint16" and src.nodata == 0 and src.descriptions == (pol,)
        raw = json.loads(Path(item.get_self_href()).read_text())["properties"]
        assert src.crs.to_epsg() == raw["proj:epsg"] and 32601 <= src.crs.to_epsg() <= 32660
        assert list(src.transform)[:6] == raw["proj:transform"]
        assert src.res == (0.5, 0.5)
        assert src.tags(ns="IMAGE_STRUCTURE").get("LAYOUT") == "COG"
        assert src.block_shapes[0] == (512, 512) and (src.overviews(1) or max(src.shape) <= 512)
        dn = src.read(1)
        product_tf, crs, shape = src.transform, src.crs, (src.height, src.width)
    # nodata outside a rotated footprint: the first valid column changes down the scene
    valid = dn > 0
    assert 0.6 < valid.mean() < 0.98
    first = [int(np.argmax(row)) for row in valid[50:-50:100] if row.any()]
    assert len(set(first)) > 2
    # the true grid is the product grid minus the injected offset
    off = sc.offset_m
    true_tf = Affine.translation(-off.east, -off.north) @ product_tf
    c_crs, c_tf, c_shape = scene_grid(r.bbox, sc, cfg)
    assert c_shape == shape and c_crs == crs
    assert np.allclose(tuple(true_tf)[:6], tuple(c_tf)[:6], atol=1e-6)
    if sc.size == 1 and sc.shift == (0.0, 0.0):
        assert (c_tf, c_shape) == utm_grid(r.bbox, cfg.sar_pixel_m, cfg.margin_m)[1:]  # the region's grid
    classes = _true_classes(name, r, out, crs, true_tf, shape)
    db = 10 * np.log10(dn_to_linear(dn, cal))
    assert _check_class_medians(db, classes, valid, _class_table_db(pol), 0.0, item_id, min_px=2000) >= 2
    if item_id == HELSINKI_HH:  # sensor to the east (range azimuth 260 deg): bright east walls, shadow west
        b = classes == physics.BUILDING
        east_edge = b & ~np.roll(b, -1, axis=1) & valid
        roof = (
            b & np.roll(b, -3, axis=1) & np.roll(b, 3, axis=1) & np.roll(b, -3, axis=0) & np.roll(b, 3, axis=0) & valid
        )
        shadow = ~b & np.roll(b, -5, axis=1) & valid & ~np.roll(b, 5, axis=1)
        assert np.median(db[east_edge]) > np.median(db[roof]) + 6
        assert np.median(db[shadow]) < -20


def _classes_on_rotated_grid(name: str, r: DemoRegion, out: Path, crs, transform: Affine, shape) -> np.ndarray:
    """Class map at the pixel centres of a rotated grid: burnt north-up at 0.1 m, looked up per centre."""
    h, w = shape
    xs, ys = zip(*(transform @ (c, q) for c, q in ((0, 0), (w, 0), (w, h), (0, h))))
    res = 0.1
    up = Affine(res, 0, min(xs) - 1, 0, -res, max(ys) + 1)
    up_shape = (math.ceil((max(ys) - min(ys) + 2) / res), math.ceil((max(xs) - min(xs) + 2) / res))
    fine = _true_classes(name, r, out, crs, up, up_shape)
    rows, cols = np.mgrid[0:h, 0:w]
    x, y = transform @ (cols + 0.5, rows + 0.5)
    col, row = ~up @ (x, y)
    return fine[row.astype(int), col.astype(int)]


@pytest.mark.parametrize("name,item_id", [(n, s.item_id) for n, s in UMBRA_SCENES])
def test_umbra_gec_is_uint8_display_product_without_calibration(out: Path, cfg: DemoParams, name: str,
                                                                 item_id: str) -> None:
    r = cfg.regions[name]
    sc = next(s for s in r.scenes if s.item_id == item_id)
    doc = _doc(out, item_id)
    tif = out / _truth(out)["scenes"][item_id]["data"]
    with rasterio.open(tif) as src:
        assert src.dtypes[0] == "uint8" and src.nodata is None and src.count == 1  # no nodata tag, as Umbra's
        assert src.scales == (1.0,) and src.offsets == (0.0,) and src.descriptions == (None,)
        tags = {**src.tags(), **src.tags(1)}
        assert set(tags) <= {"AREA_OR_POINT", "TIFFTAG_SOFTWARE"}, tags  # no calibration constant anywhere
        assert not any(w in json.dumps(tags).lower() for w in ("scale", "calib", "sigma"))
        assert src.tags(ns="IMAGE_STRUCTURE").get("LAYOUT") == "COG"
        tf = src.transform
        assert abs(tf.b) > 0.1 and abs(tf.d) > 0.1  # rotated geotransform, as Umbra's GEC
        assert math.hypot(tf.a, tf.d) == pytest.approx(sc.pixel_m or cfg.sar_pixel_m)
        dn = src.read(1)
        crs, shape = src.crs, (src.height, src.width)
    # the item footprint is the image's valid rectangle through its geotransform
    fp = footprint(doc)
    h, w = shape
    from pyproj import Transformer

    to_ll = Transformer.from_crs(crs, "EPSG:4326", always_xy=True)
    centre = to_ll.transform(*(tf @ (w / 2, h / 2)))
    from shapely.geometry import Point

    assert fp.contains(Point(centre))
    corner = to_ll.transform(*(tf @ (0, 0)))
    assert fp.exterior.distance(Point(corner)) < 1e-4  # within ~10 m of the image corner
    # the pipeline reads it as relative, uncalibrated backscatter
    cal = calibration_for(None, "umbra", "GEC")
    assert cal.calibrated is False
    valid = dn > 0
    assert 0.5 < valid.mean() < 1.0 and (dn == 255).mean() < 0.05  # a little nodata; saturation only at bright edges
    # relative dB = 20 log10(DN) follows the VV class table up to one unknown constant (the display scale)
    true_tf = Affine.translation(-sc.offset_m.east, -sc.offset_m.north) @ tf
    assert (crs, shape) == (scene_grid(r.bbox, sc, cfg)[0], scene_grid(r.bbox, sc, cfg)[2])
    assert np.allclose(tuple(true_tf)[:6], tuple(scene_grid(r.bbox, sc, cfg)[1])[:6], atol=1e-6)
    classes = _classes_on_rotated_grid(name, r, out, crs, true_tf, shape)
    db = dn_to_db(dn, cal)
    constant = -20 * math.log10(sc.scale_factor)
    unsaturated = valid & (dn < 250) & (dn > 4)
    assert _check_class_medians(db, classes, unsaturated, _class_table_db("VV"), constant, item_id, min_px=800,
                                cv=False) >= 2


def test_truth_records_every_scene_and_nothing_reads_it(out: Path, cfg: DemoParams) -> None:
    truth = _truth(out)
    assert "never reads" in truth["note"]
    all_scenes = {s.item_id: (n, s) for n, r in cfg.regions.items() for s in r.scenes}
    assert set(truth["scenes"]) == set(all_scenes)
    for item_id, (name, sc) in all_scenes.items():
        t = truth["scenes"][item_id]
        facts = item_facts(_doc(out, item_id))
        assert t["region"] == name and t["provider"] == sc.provider == facts.provider
        assert t["polarization"] == facts.polarizations[0] and t["product"] == facts.product
        assert t["datetime"][:19] == facts.start.strftime("%Y-%m-%dT%H:%M:%S")
        assert t["sar_offset_m"] == {"east": sc.offset_m.east, "north": sc.offset_m.north}
        assert 1.0 < math.hypot(*t["sar_offset_m"].values()) < 10.0
        assert t["calibrated"] is (sc.provider == "capella")
        assert (out / t["data"]).is_file() and (out / t["item"]).is_file()
        with rasterio.open(out / t["data"]) as src:
            assert t["sar_crs"] == src.crs.to_string()
    offsets = [tuple(t["sar_offset_m"].values()) for t in truth["scenes"].values()]
    assert len(set(offsets)) == len(offsets)  # different per scene
    # the region entries keep the one-scene shape: the first scene, plus the list of all
    for name, r in cfg.regions.items():
        t = truth["regions"][name]
        first = r.scenes[0]
        assert t["item_id"] == first.item_id and t["scenes"] == [s.item_id for s in r.scenes]
        assert t["sar_offset_m"] == truth["scenes"][first.item_id]["sar_offset_m"]
        assert t["sar_crs"] == truth["scenes"][first.item_id]["sar_crs"]
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



def test_region_files_select_every_demo_scene_and_eo_dates_differ() -> None:
    """Each demo scene passes one of its region file's sar sources (the fetch stage's own filter), on the
    catalog its provider's layout is written to; every scene has its own SAR/EO gap."""
    catalogs = {"capella": "data/demo/capella/catalog.json", "umbra": "data/demo/umbra/stac/catalog.json"}
    for name, r in DemoParams().regions.items():
        reg = load_region(ROOT / "regions" / f"{name}.yaml")
        raw = reg.raw["sar"]
        sources = raw if isinstance(raw, list) else [raw]
        for sc in r.scenes:
            f = scene_facts(sc)
            facts = ItemFacts(sc.item_id, sc.provider, f["product"], (f["polarization"],), f["mode"], f["start"],
                              f["end"], f["start"].isoformat())
            admitted = [src for src in sources if src.get("stac") == catalogs[sc.provider]
                        and sc.item_id in src.get("ids", [sc.item_id])
                        and facts_reason(facts, {k: v for k, v in src.items() if (k, v) != ("polarization", "any")},
                                         "product" in src) is None]
            assert admitted, (name, sc.item_id, sources)
        assert reg.demo and tuple(reg.bbox) == r.bbox
        assert reg.eo["tiles"] == f"data/demo/tiles/{name}/{{z}}/{{x}}/{{y}}.png"
        assert reg.eo["zoom"] == tiles.zoom_for_gsd((reg.bbox[1] + reg.bbox[3]) / 2, DemoParams().eo_gsd_m)
        eo_day = dt.date.fromisoformat(reg.eo["datetime"])
        gaps = [abs((scene_facts(s)["start"].date() - eo_day).days) for s in r.scenes]
        assert min(gaps) > 30 and len(set(gaps)) == len(gaps)  # every scene its own SAR/EO gap
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
    with pytest.raises(ParamsError, match="regions.atlantis: missing osm, building_height_m, timezone, scenes"):
        parse_section(DemoParams, {"regions": {"atlantis": {"bbox": [0, 0, 1, 1]}}})
    new_scene = {"item_id": "CAPELLA_C02_SP_GEO_HH_20220101000000_20220101000010", "scale_factor": 1e-4}
    with pytest.raises(ParamsError, match=r"regions.uppland: missing scenes\[0\] \(CAPELLA_C02\S+\) keys offset_m, "
                                          "range_azimuth_deg, orbit_state, incidence_deg, footprint_rotation_deg$"):
        parse_section(DemoParams, {"regions": {"uppland": {"scenes": [new_scene]}}})
    with pytest.raises(ParamsError, match="scenes: item_id CAPELLA_C13\\S+ given twice"):
        parse_section(DemoParams, {"regions": {"uppland": {"scenes": [{"item_id": REGIONS["uppland"].scenes[0]
                                                                       .item_id}] * 2}}})
    with pytest.raises(ParamsError, match="scenes: every scene needs its item_id"):
        parse_section(DemoParams, {"regions": {"uppland": {"scenes": [{"size": 0.5}]}}})
    with pytest.raises(ParamsError, match=r"scenes\[0\].size: must be in \(0, 1.5\]"):
        parse_section(DemoParams, {"regions": {"uppland": {"scenes": [{"item_id": "x", "size": 2.0}]}}})
    umbra_id = UMBRA_SCENES[0][1].item_id
    with pytest.raises(ParamsError, match=rf"regions.helsinki.scenes\[0\] \({umbra_id}\).collect: 'nope'"):
        parse_section(DemoParams, {"regions": {"helsinki": {"scenes": [{"item_id": umbra_id, "collect": "nope"}]}}})
    with pytest.raises(ParamsError, match="collect, polarization, task are Umbra keys"):
        parse_section(DemoParams, {"regions": {"uppland": {"scenes": [
            {"item_id": REGIONS["uppland"].scenes[0].item_id, "polarization": "VV"}]}}})
    with pytest.raises(ParamsError, match="used by more than one region"):
        parse_section(DemoParams, {"regions": {"uppland": {"scenes": [{**NEW_SCENE, "item_id": HELSINKI_HH}]}}})
    slc = dataclasses.replace(REGIONS["uppland"].scenes[0], item_id="CAPELLA_C13_SP_SLC_HH_20250514171208_20250514171231")
    with pytest.raises(DemoError, match="scene CAPELLA_C13_SP_SLC\\S+: item_id .* GEO products in HH or VV"):
        build_demo(tmp_path / "e", dataclasses.replace(SMALL, only=("uppland",), regions={
            **SMALL.regions, "uppland": dataclasses.replace(SMALL.regions["uppland"], scenes=(slc.complete(),))}))
    assert not (tmp_path / "e").exists()


def test_params_merge_regions_and_scenes_over_the_built_in_ones() -> None:
    defaults = DemoParams()
    # a region of params.yaml gives only what it changes: the rest is the built-in region's
    moved = parse_section(DemoParams, {"regions": {"uppland": {"building_height_m": 9.0}}})
    assert moved.regions["uppland"].building_height_m == 9.0 and moved.regions["uppland"].bbox == REGIONS["uppland"].bbox
    assert moved.regions["helsinki"] == defaults.regions["helsinki"]
    # scenes merge by item_id: the listed ones are built, in that order, each over its built-in scene
    umbra_id = UMBRA_SCENES[0][1].item_id
    two = parse_section(DemoParams, {"regions": {"helsinki": {"scenes": [
        {"item_id": umbra_id, "offset_m": {"east": 1.0, "north": 1.5}}, {"item_id": HELSINKI_HH}]}}})
    got = two.regions["helsinki"].scenes
    assert [s.item_id for s in got] == [umbra_id, HELSINKI_HH]
    base = {s.item_id: s for s in defaults.regions["helsinki"].scenes}
    assert got[0] == dataclasses.replace(base[umbra_id], offset_m=got[0].offset_m) and got[0].offset_m.east == 1.0
    assert got[1] == base[HELSINKI_HH]
    # optional keys get their documented defaults; the built-in scenes are complete
    added = parse_section(DemoParams, {"regions": {"uppland": {"scenes": [NEW_SCENE]}}}).regions["uppland"].scenes[0]
    assert (added.provider, added.shift, added.size, added.pixel_m, added.padded_dates) == (
        "capella", (0.0, 0.0), 1.0, None, True)
    for f in dataclasses.fields(DemoScene):
        assert f.metadata["doc"], f.name
    assert parse_section(DemoParams, yaml.safe_load((ROOT / "params.yaml").read_text())["demo"]) == defaults


def test_speckle_and_quantisation_roundtrip() -> None:
    rng = np.random.default_rng(0)
    s = np.full((400, 400), 0.05, np.float32)
    sp = physics.speckle(s, 4, rng)
    assert sp.mean() == pytest.approx(0.05, rel=0.02) and (sp / 0.05).var() == pytest.approx(0.25, rel=0.05)
    dn = physics.sigma0_to_dn(sp, 1.5e-4)
    ext = {"product_type": "GEO", "collect": {"image": {"scale_factor": 1.5e-4, "radiometry": "sigma_nought"}}}
    back = dn_to_linear(dn, capella_calibration(ext))
    assert np.median(np.abs(back / sp - 1)) < 2e-3
    # a uint8 display product: same law, clipped to 1..255 (bright targets saturate), 0 outside
    valid = np.ones(sp.shape, bool)
    valid[:10] = False
    d8 = physics.sigma0_to_dn(np.array([[1e-6, 1e-3, 1.0, 50.0]] * 2, np.float32), 6.25e-3, None, "uint8")
    assert d8.dtype == np.uint8 and d8[0].tolist() == [1, 5, 160, 255]
    assert (physics.sigma0_to_dn(sp, 6.25e-3, valid, "uint8")[:10] == 0).all()


def test_vv_differs_from_hh_where_x_band_does() -> None:
    c = np.full((120, 120), 16, np.uint8)
    c[:, :30] = 22  # water
    c[40:80, 60:100] = physics.BUILDING
    hh, vv = (physics.mean_sigma0(c, physics.SarGeometry(range_azimuth_deg=260.0, polarization=pol),
                                  np.random.default_rng(0)) for pol in ("HH", "VV"))
    ratio_db = 10 * np.log10(vv.sigma0 / hh.sigma0)  # the same texture draws: only the tables differ
    assert np.allclose(ratio_db[:, :20], physics.VV_MINUS_HH_DB[22], atol=1e-4)  # water brighter in VV
    assert np.allclose(ratio_db[vv.edge], -physics.VV_EDGE_LOSS_DB, atol=1e-4)  # weaker double bounce
    assert (hh.edge == vv.edge).all() and (hh.shadow == vv.shadow).all()
    with pytest.raises(physics.SimulationError, match="polarization 'HV'"):
        physics.mean_sigma0(c, physics.SarGeometry(polarization="HV"), np.random.default_rng(0))


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
