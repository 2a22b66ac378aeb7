"""The fetch stage on a tiny Capella-layout static catalog, read locally, over loopback HTTP and
from a loopback moto S3 server; asset classification on the real Umbra STAC item; every matching
scene of a region (several catalogs and providers) laid out under ``source/scenes/ID/``."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import os
import re
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import pystac
import pytest
import rasterio
import yaml
from PIL import Image
from pyproj import Transformer
from rasterio.transform import from_origin
from servers import dead_port, http_dir, refused_port, s3_server  # noqa: F401 - pytest fixtures
from test_osm import _Overpass, overpass_server  # noqa: F401 - the loopback Overpass server

from pipeline import tiles
from pipeline.fetch import cache as fetch_cache
from pipeline.fetch.cache import Cache
from pipeline.fetch.eo import fetch_eo
from pipeline.fetch.items import (
    ItemFacts,
    classify_asset,
    date_range,
    item_facts,
    parse_capella_id,
    rank_key,
    reject_reason,
    select_data_asset,
    select_metadata_asset,
)
from pipeline.fetch.params import FetchParams
from pipeline.fetch.sar import find_sar_items, region_sources, scene_dir_name, select_scenes
from pipeline.fetch.stacio import FetchError, Transport, Unsafe, check_href, join_href
from pipeline.fetch.stage import fetch_region
from pipeline.fetch.walk import WalkFilter, extent_outside, link_name, name_date_span
from pipeline.layout import SourceFiles
from pipeline.osm import OsmParams
from pipeline.provenance import parse_datetime
from pipeline.regions import RegionError, load_region
from pipeline.scenes import read_scenes

LON, LAT = 24.945, 60.17
AOI = [LON - 0.001, LAT - 0.0005, LON + 0.001, LAT + 0.0005]
EPSG = 32635
FAST = FetchParams(retries=1, backoff_s=0.01, timeout_s=5, workers=2)
WINNER = "CAPELLA_C14_SP_GEO_HH_20240709040329_20240709040358"  # the newest GEO HH item covering the AOI
OLDER = "CAPELLA_C13_SP_GEO_HH_20230101120000_20230101120010"  # an older GEO HH item covering it too
VV = "CAPELLA_C13_SP_GEO_VV_20240901000000_20240901000010"  # GEO VV, covering it
UMBRA = "83ae479c-ad36-4878-8b59-f67f78642489"  # the real Umbra item of tests/data/umbra


def sha(p: Path) -> str:
    return hashlib.sha256(Path(p).read_bytes()).hexdigest()


def run_fetch(region, out: Path, cache: Path, p: FetchParams = FAST, osm: OsmParams = OsmParams()) -> Path:
    """The fetch stage into the source/ directory ``out``."""
    return fetch_region(region, SourceFiles(out), cache, p, osm)


def provenance(out: Path) -> dict[str, Any]:
    return json.loads((out / "provenance.json").read_text())


def scene_ids(out: Path) -> list[str]:
    """The scene ids of a fetched source/ in stored order (from its provenance), checked against its folders."""
    ids = [s["scene"] for s in provenance(out)["scenes"]]
    assert sorted(p.name for p in (out / "scenes").iterdir()) == sorted(ids)
    return ids


def scene_rec(out: Path, scene: str) -> dict[str, Any]:
    """One scene's record in source/provenance.json (the same as in the scene's own provenance.json)."""
    rec = next(s for s in provenance(out)["scenes"] if s["scene"] == scene)
    own = json.loads((out / "scenes" / scene / "provenance.json").read_text())
    assert own == {"region": "testregion", "scene": scene, "sar": rec, "eo": provenance(out)["eo"]}
    return rec


def demo_item_dir(demo: Path, item_id: str) -> Path:
    """Where the demo catalog holds a Capella item (by-datetime, its year)."""
    year = parse_capella_id(item_id)["start"][:4]
    return demo / "capella/capella-open-data-by-datetime" / f"capella-open-data-{year}" / item_id


def _square(centre: tuple[float, float]) -> tuple[float, float, list[list[float]]]:
    """The UTM centre of ``centre`` (lon, lat) and the lon/lat ring of the 400 m square around it."""
    to_utm = Transformer.from_crs("EPSG:4326", f"EPSG:{EPSG}", always_xy=True)
    x, y = to_utm.transform(*centre)
    back = Transformer.from_crs(f"EPSG:{EPSG}", "EPSG:4326", always_xy=True)
    corners = [(x - 200, y + 200), (x + 200, y + 200), (x + 200, y - 200), (x - 200, y - 200), (x - 200, y + 200)]
    return x, y, [list(back.transform(*c)) for c in corners]


def _geotiff(path: Path, centre: tuple[float, float], seed: int, crs: int | None = EPSG,
             dtype: str = "uint16") -> list[list[float]]:
    """A 80x80 GeoTIFF (UInt16, or UInt8 as Umbra's GEC) at 5 m around ``centre`` (lon, lat), nodata 0;
    returns its lon/lat ring."""
    x, y, ring = _square(centre)
    transform = from_origin(x - 200, y + 200, 5, 5)
    data = np.random.default_rng(seed).integers(1, 4000 if dtype == "uint16" else 255, (1, 80, 80), dtype=dtype)
    data[:, :5, :5] = 0
    profile = {"driver": "GTiff", "width": 80, "height": 80, "count": 1, "dtype": dtype, "nodata": 0,
               "transform": transform}
    if crs:
        profile["crs"] = f"EPSG:{crs}"
    with rasterio.open(path, "w", **profile) as dst:
        dst.write(data)
    return ring


def _item(root: Path, sub: str, item_id: str, centre: tuple[float, float], seed: int) -> dict[str, Any]:
    d = root / sub / item_id
    d.mkdir(parents=True)
    ring = _geotiff(d / f"{item_id}.tif", centre, seed)
    cap = parse_capella_id(item_id)
    assert cap
    (d / f"{item_id}_extended.json").write_text(json.dumps(
        {"product_type": cap["product"], "collect": {"image": {"scale_factor": 1e-4 * (seed + 1),
                                                               "radiometry": "sigma_nought"}}}))
    Image.new("RGB", (8, 8), (seed, seed, seed)).save(d / f"{item_id}_preview.png")
    start = cap["start"]
    when = f"{start[:4]}-{start[4:6]}-{start[6:8]}T{start[8:10]}:{start[10:12]}:{start[12:14]}Z"
    lons, lats = [p[0] for p in ring], [p[1] for p in ring]
    item = {
        "type": "Feature", "stac_version": "1.0.0", "id": item_id,
        "geometry": {"type": "Polygon", "coordinates": [ring]},
        "bbox": [min(lons), min(lats), max(lons), max(lats)],
        "properties": {"datetime": when, "sar:product_type": cap["product"], "sar:polarizations": [cap["pol"]],
                       "sar:instrument_mode": "spotlight", "constellation": "capella"},
        "links": [{"rel": "root", "href": "../../catalog.json"}, {"rel": "parent", "href": "../catalog.json"}],
        "assets": {
            cap["pol"]: {"href": f"./{item_id}.tif", "type": "image/tiff; application=geotiff", "roles": ["data"]},
            "metadata": {"href": f"./{item_id}_extended.json", "type": "application/json", "roles": ["metadata"]},
            "preview": {"href": f"./{item_id}_preview.png", "type": "image/png", "roles": ["overview"]},
            "thumbnail": {"href": f"./{item_id}_preview.png", "type": "image/png", "roles": ["thumbnail"]},
        },
    }
    (d / f"{item_id}.json").write_text(json.dumps(item))
    return item


def build_catalog(root: Path) -> dict[str, str]:
    """Capella layout: root catalog -> by-datetime -> year catalogs -> items, relative hrefs."""
    items = {
        WINNER: ("2024", (LON, LAT), 1),  # newest GEO HH covering the AOI: the expected pick
        "CAPELLA_C13_SP_GEO_HH_20230101120000_20230101120010": ("2023", (LON, LAT), 2),  # older
        "CAPELLA_C13_SP_SLC_HH_20240801000000_20240801000010": ("2024", (LON, LAT), 3),  # not geocoded
        "CAPELLA_C13_SP_GEO_VV_20240901000000_20240901000010": ("2024", (LON, LAT), 4),  # other polarisation
        "CAPELLA_C13_SM_GEO_HH_20241001000000_20241001000010": ("2024", (LON + 1.0, LAT), 5),  # elsewhere
    }
    by_dt = root / "capella-open-data-by-datetime"
    years: dict[str, list[str]] = {}
    for item_id, (year, centre, seed) in items.items():
        sub = f"capella-open-data-by-datetime/capella-open-data-{year}"
        _item(root, sub, item_id, centre, seed)
        years.setdefault(year, []).append(item_id)
    for year, ids in years.items():
        (by_dt / f"capella-open-data-{year}" / "catalog.json").write_text(json.dumps({
            "type": "Catalog", "stac_version": "1.0.0", "id": f"capella-open-data-{year}", "description": year,
            "links": [{"rel": "root", "href": "../../catalog.json"}]
            + [{"rel": "item", "href": f"./{i}/{i}.json", "type": "application/json"} for i in sorted(ids)],
        }))
    by_dt.joinpath("catalog.json").write_text(json.dumps({
        "type": "Catalog", "stac_version": "1.0.0", "id": "by-datetime", "description": "by datetime",
        "links": [{"rel": "root", "href": "../catalog.json"}]
        + [{"rel": "child", "href": f"./capella-open-data-{y}/catalog.json"} for y in sorted(years)],
    }))
    root.joinpath("catalog.json").write_text(json.dumps({
        "type": "Catalog", "stac_version": "1.0.0", "id": "capella-open-data", "description": "demo",
        "links": [{"rel": "child", "href": "./capella-open-data-by-datetime/catalog.json"}],
    }))
    return {"winner_dir": f"capella-open-data-by-datetime/capella-open-data-2024/{WINNER}"}


def build_tiles(root: Path, bbox: list[float], zoom: int, skip: tuple[int, int] | None = None) -> int:
    x0, y0, x1, y1 = tiles.tile_range(tuple(bbox), zoom)
    n = 0
    for x in range(x0, x1 + 1):
        for y in range(y0, y1 + 1):
            if (x, y) == skip:
                continue
            d = root / str(zoom) / str(x)
            d.mkdir(parents=True, exist_ok=True)
            Image.new("RGB", (256, 256), (x % 256, y % 256, 50)).save(d / f"{y}.png")
            n += 1
    return n


@pytest.fixture(scope="module")
def demo(tmp_path_factory) -> Path:
    """A served-able directory: capella/ (catalog) and tiles/ (XYZ PNG)."""
    root = tmp_path_factory.mktemp("demo")
    build_catalog(root / "capella")
    zoom = tiles.zoom_for_gsd(LAT, 1.0)
    build_tiles(root / "tiles", AOI, zoom)
    return root


def write_osm(path: Path) -> Path:
    """A tiny OSM XML extract around the AOI (one building, one road), as the OSM API writes it."""
    nodes = {1: (LON - 0.0004, LAT - 0.0002), 2: (LON, LAT - 0.0002), 3: (LON, LAT + 0.0002),
             4: (LON - 0.0004, LAT + 0.0002), 5: (LON - 0.001, LAT + 0.0003), 6: (LON + 0.001, LAT + 0.0003)}
    xml = ['<?xml version="1.0"?>', '<osm version="0.6" copyright="OpenStreetMap and contributors">']
    xml += [f'<node id="{i}" lat="{lat}" lon="{lon}"/>' for i, (lon, lat) in nodes.items()]
    xml += [('<way id="10"><nd ref="1"/><nd ref="2"/><nd ref="3"/><nd ref="4"/><nd ref="1"/>'
             '<tag k="building" v="yes"/></way>'),
            '<way id="11"><nd ref="5"/><nd ref="6"/><tag k="highway" v="residential"/></way>', "</osm>"]
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(xml) + "\n")
    return path


def make_region(tmp: Path, sar: dict[str, Any] | list[dict[str, Any]], eo: dict[str, Any] | None = None,
                bbox: list[float] | None = None, gsd: float = 1.0, osm: dict[str, Any] | None = None,
                check_files: bool = True):
    (tmp / "regions").mkdir(exist_ok=True)
    if osm is None:
        osm = {"file": "osm/area.osm"}
        if not (tmp / "osm" / "area.osm").exists():
            write_osm(tmp / "osm" / "area.osm")
    doc = {"name": "testregion", "aoi": {"bbox": bbox or AOI}, "gsd_m": gsd, "sar": sar,
           "eo": eo or {"tiles": "tiles/{z}/{x}/{y}.png", "datetime": "2024-06-01"}, "osm": osm}
    path = tmp / "regions" / "testregion.yaml"
    path.write_text(yaml.safe_dump(doc))
    return load_region(path, root=tmp, check_files=check_files)


def _local_region(tmp_path: Path, demo: Path, osm: dict[str, Any] | None = None, **sar: Any):
    for name in ("capella", "tiles"):
        if not (tmp_path / name).exists():
            os.symlink(demo / name, tmp_path / name)
    return make_region(tmp_path, {"stac": "capella/catalog.json", "polarization": "HH", **sar}, osm=osm)


# --------------------------------------------------------------------------- pure parts


def test_umbra_sample_assets_classified(fixtures: Path) -> None:
    item = pystac.Item.from_file(str(fixtures / "umbra/2024-10-26-18-07-08_UMBRA-05.stac.v2.json"))
    kinds = {k: classify_asset(k, a) for k, a in item.assets.items()}
    assert kinds["2024-10-26-18-07-08_UMBRA-05_MM.tif"] == "geotiff"
    assert kinds["2024-10-26-18-07-08_UMBRA-05_SICD_MM.nitf"] == "sicd"
    assert kinds["2024-10-26-18-07-08_UMBRA-05_SIDD_MM.nitf"] == "sidd"
    assert kinds["2024-10-26-18-07-08_UMBRA-05_MM.cphd"] == "cphd"
    assert kinds["2024-10-26-18-07-08_UMBRA-05_MM.json"] == "metadata"
    key, _ = select_data_asset(item, "HH")
    assert key == "2024-10-26-18-07-08_UMBRA-05_MM.tif"
    facts = item_facts(item)
    assert (facts.provider, facts.product, facts.polarizations, facts.mode) == ("umbra", "GEC", ("HH",), "SP")
    assert select_metadata_asset(item, "umbra") is None  # not Capella's format
    # an older vintage keys the same file 'GEC': still found, by what it is
    renamed = item.clone()
    renamed.assets = {("GEC" if k.endswith("_MM.tif") else k): a for k, a in item.assets.items()}
    assert select_data_asset(renamed, "HH")[0] == "GEC"


def test_complex_only_item_refused(fixtures: Path) -> None:
    item = pystac.Item.from_file(str(fixtures / "umbra/2024-10-26-18-07-08_UMBRA-05.stac.v2.json"))
    item.assets = {k: a for k, a in item.assets.items() if not k.endswith(".tif")}
    with pytest.raises(FetchError, match=r"83ae479c.*no GeoTIFF data asset.*CPHD, SICD, SIDD"):
        select_data_asset(item, "HH")


def test_capella_id_and_ranking() -> None:
    cap = parse_capella_id(WINNER)
    assert cap == {"platform": "C14", "mode": "SP", "product": "GEO", "pol": "HH",
                   "start": "20240709040329", "end": "20240709040358"}
    assert parse_capella_id("CAPELLA_C14_SP_GEO_HH_2024") is None
    def mk(i: str, when: str) -> ItemFacts:
        return ItemFacts(i, "capella", "GEO", ("HH",), "SP", parse_datetime(when), None, when)

    old, new = mk("b", "2020-01-01T00:00:00Z"), mk("c", "2024-01-01T00:00:00Z")
    tie = mk("a", "2024-01-01T00:00:00Z")
    ranked = sorted([(old, 1.0), (new, 1.0), (tie, 1.0), (new, 0.5)], key=lambda p: rank_key(*p))
    assert [(f.id, c) for f, c in ranked] == [("a", 1.0), ("c", 1.0), ("b", 1.0), ("c", 0.5)]


def test_date_range_and_reasons() -> None:
    lo, hi = date_range("2024-07-01/2024-07-09")
    f = ItemFacts("x", "capella", "GEO", ("HH",), "SP", parse_datetime("2024-07-09T23:59:00Z"),
                        parse_datetime("2024-07-09T23:59:30Z"), "")
    assert lo <= f.start < hi  # END date is inclusive
    sar = {"product": "GEO", "polarization": "HH", "datetime": "2024-07-10/.."}
    assert reject_reason(f, 1.0, sar, True) == "datetime"
    assert reject_reason(f, 0.0, {}, True) == "outside AOI"
    assert reject_reason(f, 1.0, {"product": "GEO", "polarization": "VV"}, True) == "polarization"
    assert reject_reason(f, 1.0, {"product": "GEO", "mode": "SM"}, True) == "mode"
    slc = ItemFacts("y", "capella", "SLC", ("HH",), "SP", None, None, "")
    assert reject_reason(slc, 1.0, {"product": "GEO"}, True) == "not geocoded"
    umbra_gec = ItemFacts("z", "umbra", "GEC", ("HH",), "SP", None, None, "")
    assert reject_reason(umbra_gec, 1.0, {"product": "GEO"}, False) is None  # default product
    assert reject_reason(umbra_gec, 1.0, {"product": "GEO"}, True) == "product"


def test_href_escape_refused() -> None:
    assert check_href("./a/b.tif", "s3://bkt/stac/x/item.json", "s3://bkt/stac/") == "s3://bkt/stac/x/a/b.tif"
    with pytest.raises(Unsafe, match="outside the catalog root"):
        check_href("../../other/b.tif", "s3://bkt/stac/x/item.json", "s3://bkt/stac/")
    with pytest.raises(Unsafe, match="outside the catalog root"):
        check_href("/secret.tif", "https://h/stac/x/item.json", "https://h/stac/")
    with pytest.raises(Unsafe, match="climbs above the root"):
        join_href("s3://bkt/item.json", "../../../etc/passwd")
    with pytest.raises(Unsafe, match="may not point at local file"):
        check_href("file:///etc/passwd", "https://h/stac/item.json", "https://h/stac/")
    with pytest.raises(Unsafe, match="outside the catalog root"):
        check_href("../../x.tif", "/data/cat/sub/item.json", "/data/cat/")
    # absolute URLs are the catalog's explicit choice (Capella's assets live in another prefix)
    absolute = "https://data.example/a.tif"
    assert check_href(absolute, "s3://b/stac/i.json", "s3://b/stac/") == absolute


@pytest.mark.parametrize("href", ["s3://b/../../etc/passwd", "https://h/a/..", "http://h/x/.hidden", "file:///a/b/c/",
                                  "https://h/a%2F..%2F..%2Fx", "s3://b/" + "x" * 500, "https://h/\u00e9t\u00e9 ,a.tif"])
def test_cache_names_stay_inside(tmp_path: Path, href: str) -> None:
    cache = Cache(tmp_path / "c", Transport())
    p = cache.path_for(href)
    assert p.parent == (tmp_path / "c" / "objects").resolve()
    assert not p.name.startswith(".") and len(p.name) <= 100
    assert all(ch.isalnum() or ch in "._-" for ch in p.name)


# --------------------------------------------------------------------------- the stage, local


def test_fetch_local_catalog(tmp_path: Path, demo: Path) -> None:
    region = _local_region(tmp_path, demo)
    out = run_fetch(region, tmp_path / "out" / "source", tmp_path / "cache")
    assert sorted(p.name for p in out.iterdir()) == ["eo.tif", "osm.osm", "provenance.json", "scenes"]
    assert os.path.samefile(out / "osm.osm", tmp_path / "osm" / "area.osm")
    prov = provenance(out)
    assert sorted(prov) == ["eo", "osm", "region", "scenes"] and prov["region"] == "testregion"
    # WINNER and the older GEO HH item both cover the AOI: both are scenes, oldest first
    assert scene_ids(out) == [OLDER, WINNER]
    for s in prov["scenes"]:
        sid, sdir = s["scene"], out / "scenes" / s["scene"]
        idir = demo_item_dir(demo, sid)
        assert sorted(p.name for p in sdir.iterdir()) == ["eo.tif", "provenance.json", "sar.tif", "sar_metadata.json"]
        assert os.path.samefile(sdir / "sar.tif", idir / f"{sid}.tif")  # hardlinked, not copied
        assert os.path.samefile(sdir / "eo.tif", out / "eo.tif")  # the region's EO, linked into each scene
        assert (sdir / "sar_metadata.json").read_bytes() == (idir / f"{sid}_extended.json").read_bytes()
        assert scene_rec(out, sid) == s  # the scene's own provenance.json holds the same record and the EO's
        assert s["item_id"] == sid and s["sha256"] == sha(idir / f"{sid}.tif") and s["source"] == "sar"
        assert s["bytes"] == (idir / f"{sid}.tif").stat().st_size
        assert s["provider"] == "capella" and s["product"] == "GEO" and s["polarization"] == "HH"
        assert s["licence"] == "CC-BY-4.0" and "Capella" in s["attribution"] and s["calibrated"] is True
        assert s["metadata"]["sha256"] == sha(idir / f"{sid}_extended.json")
        # the source's ranking: both cover the AOI fully, the newest first
        assert [c["item_id"] for c in s["candidates"]] == [WINNER, OLDER] and s["candidates_total"] == 2
        # the SLC and the VV item are pruned from their link's Capella id, unread; the far one is read
        assert s["rejected"] == {"outside AOI": 1} and s["pruned"] == {"not geocoded": 1, "polarization": 1}
        assert s["items_read"] == 3 and s["catalogs_read"] == 4 and s["coverage"] == 1.0
        # local paths are recorded relative to the project root, so every clone writes the same bytes
        assert s["catalog"] == "capella/catalog.json" and s["href"] == f"{idir.relative_to(demo)}/{sid}.tif"
    assert prov["scenes"][0]["datetime"] == "2023-01-01T12:00:00Z"
    assert prov["scenes"][1]["datetime"] == "2024-07-09T04:03:29Z"
    # what the later stages read: the same scenes, in the same order, with their files
    scenes = read_scenes(SourceFiles(out))
    assert [(sc.id, sc.item_id, sc.polarization) for sc in scenes] == [(OLDER, OLDER, "HH"), (WINNER, WINNER, "HH")]
    assert all(sc.files.sar == out / "scenes" / sc.id / "sar.tif" for sc in scenes)
    e = prov["eo"]
    assert e["kind"] == "tiles" and e["zoom"] == tiles.zoom_for_gsd(LAT, 1.0) and e["tiles"]["missing"] == 0
    assert e["sha256"] == sha(out / "eo.tif") and e["datetime"] == "2024-06-01"
    with rasterio.open(out / "eo.tif") as eo:
        assert eo.crs.to_epsg() == 3857 and eo.count == 3 and eo.dtypes == ("uint8",) * 3
        assert (eo.dataset_mask() == 255).all()
    # same inputs, same bytes; nothing else written beside out/
    again = run_fetch(region, tmp_path / "again" / "source", tmp_path / "cache")
    for name in ["provenance.json", "eo.tif"] + [f"scenes/{i}/{f}" for i in (OLDER, WINNER)
                                                  for f in ("provenance.json", "sar.tif", "sar_metadata.json")]:
        assert (again / name).read_bytes() == (out / name).read_bytes(), name
    assert [p.name for p in (tmp_path / "out").iterdir()] == ["source"]


def test_filters_datetime_ids_and_slc(tmp_path: Path, demo: Path) -> None:
    region = _local_region(tmp_path, demo, datetime="2022-01-01/2023-12-31")
    out = run_fetch(region, tmp_path / "a", tmp_path / "cache")
    assert scene_ids(out) == [OLDER]  # WINNER is outside the dates
    # the 2024 year catalog starts within the one-day margin of the range's end, so it is read; its four
    # item links are pruned by the dates in their Capella ids: only the 2023 item is read
    assert (scene_rec(out, OLDER)["pruned"], scene_rec(out, OLDER)["items_read"]) == ({"datetime": 4}, 1)
    region = _local_region(tmp_path, demo, ids=[OLDER])
    out = run_fetch(region, tmp_path / "b", tmp_path / "cache")
    assert scene_ids(out) == [OLDER]
    region = _local_region(tmp_path, demo, ids=["CAPELLA_C13_SP_SLC_HH_20240801000000_20240801000010"])
    with pytest.raises(FetchError, match=r"SLC_HH_2024.*product SLC is not geocoded"):
        run_fetch(region, tmp_path / "c", tmp_path / "cache")
    assert not (tmp_path / "c").exists()
    region = _local_region(tmp_path, demo, ids=["CAPELLA_C99_SP_GEO_HH_20240801000000_20240801000010"])
    with pytest.raises(FetchError, match="sar.ids not found"):
        run_fetch(region, tmp_path / "d", tmp_path / "cache")
    region = _local_region(tmp_path, demo, datetime="2025-01-02/..")
    # both year catalogs end (with the one-day margin) before the range: pruned by their names, no item read
    with pytest.raises(FetchError, match=r"region testregion: no SAR scene matches; sar .*capella/catalog.json: "
                                         r"no item matches \(product GEO, polarization HH, datetime 2025-01-02/\.\., "
                                         r"min_coverage > 0\); 0 items read, rejected by none; "
                                         r"links pruned unread: datetime: 2$"):
        run_fetch(region, tmp_path / "e", tmp_path / "cache")
    assert not (tmp_path / "e").exists()


def test_aoi_without_items(tmp_path: Path, demo: Path) -> None:
    for name in ("capella", "tiles"):
        os.symlink(demo / name, tmp_path / name)
    region = make_region(tmp_path, {"stac": "capella/catalog.json"}, bbox=[10.0, 10.0, 10.01, 10.01])
    with pytest.raises(FetchError, match=r"capella/catalog.json: no item intersects the AOI \(10.0, 10.0"):
        run_fetch(region, tmp_path / "out", tmp_path / "cache")
    assert not (tmp_path / "out").exists()


def test_unreachable_catalog(tmp_path: Path) -> None:
    with refused_port() as port:
        href = f"http://127.0.0.1:{port}/stac/catalog.json"
        region = make_region(tmp_path, {"stac": href})
        with pytest.raises(FetchError, match=rf"{href}: failed after 2 attempt\(s\)"):
            run_fetch(region, tmp_path / "out", tmp_path / "cache")
    assert not (tmp_path / "out").exists()


def test_truncated_download(tmp_path: Path, demo: Path, http_dir) -> None:  # noqa: F811
    tif = f"capella/capella-open-data-by-datetime/capella-open-data-2024/{WINNER}/{WINNER}.tif"
    base = http_dir(demo, truncate=[tif])
    os.symlink(demo / "tiles", tmp_path / "tiles")
    region = make_region(tmp_path, {"stac": f"{base}/capella/catalog.json", "polarization": "HH"})
    with pytest.raises(FetchError, match=r"truncated download: got \d+ of \d+ bytes"):
        run_fetch(region, tmp_path / "out", tmp_path / "cache")
    assert not (tmp_path / "out").exists()
    leftovers = [p.name for p in (tmp_path / "cache").rglob("*") if p.is_file()]
    assert not any(WINNER in n for n in leftovers), leftovers


def _copy_catalog(demo: Path, dest: Path) -> Path:
    shutil.copytree(demo / "capella", dest / "capella")
    os.symlink(demo / "tiles", dest / "tiles")
    return dest / "capella/capella-open-data-by-datetime/capella-open-data-2024" / WINNER / f"{WINNER}.json"


def test_checksum_mismatch(tmp_path: Path, demo: Path, s3_server) -> None:  # noqa: F811
    item_path = _copy_catalog(demo, tmp_path)
    item = json.loads(item_path.read_text())
    good = sha(item_path.with_suffix(".tif"))
    item["assets"]["HH"]["file:checksum"] = "1220" + "0" * 64
    item_path.write_text(json.dumps(item))
    url = s3_server.publish(tmp_path / "capella", "badsum")
    # the catalog is republished between the two runs: no walk cache, or the second run sees the old item
    params = dataclasses.replace(FAST, s3_endpoint=s3_server.endpoint, catalog_cache_ttl_h=0)
    region = make_region(tmp_path, {"stac": f"{url}/catalog.json", "polarization": "HH"})
    with pytest.raises(FetchError, match=rf"{WINNER}.tif: checksum mismatch: sha256 {good}"):
        run_fetch(region, tmp_path / "out", tmp_path / "cache", params)
    assert not (tmp_path / "out").exists()
    assert not any(WINNER in p.name for p in (tmp_path / "cache").rglob("*"))
    # the right checksum passes
    item["assets"]["HH"]["file:checksum"] = "1220" + good
    item_path.write_text(json.dumps(item))
    s3_server.publish(tmp_path / "capella", "badsum")
    out = run_fetch(region, tmp_path / "out", tmp_path / "cache", params)
    assert scene_ids(out) == [OLDER, WINNER]
    assert sha(out / "scenes" / WINNER / "sar.tif") == good == scene_rec(out, WINNER)["sha256"]


def test_asset_escaping_root_refused(tmp_path: Path, demo: Path) -> None:
    item_path = _copy_catalog(demo, tmp_path)
    outside = tmp_path / "outside.tif"
    shutil.copy(item_path.with_suffix(".tif"), outside)  # a valid file: only the check can stop it
    item = json.loads(item_path.read_text())
    item["assets"]["HH"]["href"] = "../../../../outside.tif"
    item_path.write_text(json.dumps(item))
    region = make_region(tmp_path, {"stac": "capella/catalog.json", "polarization": "HH"})
    with pytest.raises(Unsafe, match=r"'../../../../outside.tif' in .*outside the catalog root"):
        run_fetch(region, tmp_path / "out", tmp_path / "cache")
    assert not (tmp_path / "out").exists()


def test_geotiff_without_crs(tmp_path: Path) -> None:
    _geotiff(tmp_path / "nocrs.tif", (LON, LAT), 1, crs=None)
    build_tiles(tmp_path / "tiles", AOI, tiles.zoom_for_gsd(LAT, 1.0))
    region = make_region(tmp_path, {"file": "nocrs.tif"})
    with pytest.raises(FetchError, match=r"nocrs.tif: GeoTIFF has no CRS"):
        run_fetch(region, tmp_path / "out", tmp_path / "cache")
    assert not (tmp_path / "out").exists()


def test_local_sar_file_with_metadata(tmp_path: Path, fixtures: Path) -> None:
    _geotiff(tmp_path / "scene.tif", (LON, LAT), 7)
    shutil.copy(fixtures / f"capella/{WINNER}_extended.json", tmp_path / "meta.json")
    zoom = tiles.zoom_for_gsd(LAT, 1.0)
    x0, y0, _, _ = tiles.tile_range(tuple(AOI), zoom)
    build_tiles(tmp_path / "tiles", AOI, zoom, skip=(x0, y0))
    region = make_region(tmp_path, {"file": "scene.tif", "metadata": "meta.json", "provider": "capella"})
    out = run_fetch(region, tmp_path / "out", tmp_path / "cache")
    assert scene_ids(out) == ["file-scene"]  # a local file is one scene, named after the file's stem
    sdir = out / "scenes" / "file-scene"
    assert sorted(p.name for p in sdir.iterdir()) == ["eo.tif", "provenance.json", "sar.tif", "sar_metadata.json"]
    assert os.path.samefile(sdir / "sar.tif", tmp_path / "scene.tif")
    assert os.path.samefile(sdir / "eo.tif", out / "eo.tif")
    assert json.loads((sdir / "sar_metadata.json").read_text())["collect"]["image"]["scale_factor"] > 0
    prov, rec = provenance(out), scene_rec(out, "file-scene")
    assert rec["sha256"] == sha(tmp_path / "scene.tif") and prov["eo"]["tiles"]["missing"] == 1
    assert rec["item_id"] is None and rec["href"] == "scene.tif" and rec["provider"] == "capella"
    assert rec["metadata"] == {"href": "meta.json", "sha256": sha(tmp_path / "meta.json")}
    with rasterio.open(out / "eo.tif") as eo:
        mask = eo.dataset_mask()
    assert (mask[:256, :256] == 0).all() and (mask == 255).sum() == mask.size - 256 * 256


# --------------------------------------------------------------------------- remote: S3 and HTTP


def test_fetch_from_s3_and_http(tmp_path: Path, demo: Path, s3_server, http_dir, monkeypatch) -> None:  # noqa: F811
    url = s3_server.publish(demo, "open-data", prefix="demo")
    base = http_dir(demo)
    params = dataclasses.replace(FAST, s3_endpoint=s3_server.endpoint)
    region = make_region(tmp_path, {"stac": f"{url}/capella/catalog.json", "polarization": "HH"},
                         eo={"tiles": base + "/tiles/{z}/{x}/{y}.png", "datetime": "2024-06-01"})
    out = run_fetch(region, tmp_path / "s3" / "source", tmp_path / "cache", params)
    prov = provenance(out)
    assert scene_ids(out) == [OLDER, WINNER]
    for sid in (OLDER, WINNER):
        wdir, rec, tif = demo_item_dir(demo, sid), scene_rec(out, sid), out / "scenes" / sid / "sar.tif"
        assert rec["href"] == f"{url}/capella/{wdir.relative_to(demo / 'capella').as_posix()}/{sid}.tif"
        assert rec["catalog"] == f"{url}/capella/catalog.json"
        assert sha(tif) == sha(wdir / f"{sid}.tif") == rec["sha256"]
        cached = Cache(tmp_path / "cache", Transport()).path_for(rec["href"])
        assert os.path.samefile(tif, cached) and cached.stat().st_nlink >= 2
    assert prov["eo"]["tiles"]["count"] >= 1 and prov["eo"]["tiles"]["missing"] == 0

    # the same catalog over https-like loopback HTTP gives the same bytes
    region_http = make_region(tmp_path, {"stac": f"{base}/capella/catalog.json", "polarization": "HH"},
                              eo={"tiles": base + "/tiles/{z}/{x}/{y}.png", "datetime": "2024-06-01"})
    out_http = run_fetch(region_http, tmp_path / "http" / "source", tmp_path / "cache")
    assert scene_ids(out_http) == [OLDER, WINNER]
    for sid in (OLDER, WINNER):
        assert sha(out_http / "scenes" / sid / "sar.tif") == scene_rec(out, sid)["sha256"]
        assert (out_http / "scenes" / sid / "sar_metadata.json").read_bytes() == \
            (out / "scenes" / sid / "sar_metadata.json").read_bytes()
    assert (out_http / "eo.tif").read_bytes() == (out / "eo.tif").read_bytes()

    # a second S3 run is served from the cache: no asset download at all
    def no_download(*a: Any, **k: Any) -> None:
        raise AssertionError("downloaded although cached")

    monkeypatch.setattr(Transport, "download", no_download)
    again = run_fetch(region, tmp_path / "s3b" / "source", tmp_path / "cache", params)
    assert (again / "provenance.json").read_bytes() == (out / "provenance.json").read_bytes()
    for sid in (OLDER, WINNER):
        assert (again / "scenes" / sid / "provenance.json").read_bytes() == \
            (out / "scenes" / sid / "provenance.json").read_bytes()


def test_s3_needs_public_objects(tmp_path: Path, demo: Path, s3_server) -> None:  # noqa: F811
    """Anonymous reads really are anonymous: a private object is refused, not read with keys."""
    c = s3_server.client()
    c.create_bucket(Bucket="private", CreateBucketConfiguration={"LocationConstraint": "us-west-2"})
    c.put_object(Bucket="private", Key="catalog.json", Body=b"{}")
    t = Transport(retries=0, s3_endpoint=s3_server.endpoint)
    with pytest.raises(FetchError, match="s3://private/catalog.json: access denied"):
        t.read_bytes("s3://private/catalog.json")


# --------------------------------------------------------------------------- EO from files and STAC


def test_eo_file_converted_to_uint8_rgb(tmp_path: Path, fixtures: Path) -> None:
    src = fixtures / "eo/atlanta_pan_0p5m.tif"
    with rasterio.open(src) as s:
        from rasterio.warp import transform_bounds

        w, so, e, n = transform_bounds(s.crs, "EPSG:4326", *s.bounds)
        crs, transform, shape = s.crs, s.transform, s.shape
        pan = s.read(1)
    region = make_region(tmp_path, {"file": "x.tif"}, eo={"file": str(src), "datetime": "2016-01-01"},
                         bbox=[w, so, e, n], gsd=0.5, check_files=False)
    dest = tmp_path / "eo.tif"
    rec = fetch_eo(region, Cache(tmp_path / "c", Transport()), FAST, dest)
    assert rec["kind"] == "file" and rec["source_sha256"] == sha(src)
    with rasterio.open(dest) as d:
        assert d.count == 3 and d.dtypes == ("uint8",) * 3 and d.crs == crs and d.transform == transform
        rgb = d.read()
    assert rgb.shape[1:] == shape and (rgb[0] == rgb[1]).all() and (rgb[1] == rgb[2]).all()
    # monotone stretch: brighter panchromatic pixels are never darker in the output
    order = np.argsort(pan.ravel(), kind="stable")
    assert (np.diff(rgb[0].ravel()[order].astype(int)) >= 0).all()
    assert rgb.min() == 0 and rgb.max() == 255


def test_eo_from_stac_item(tmp_path: Path) -> None:
    to_utm = Transformer.from_crs("EPSG:4326", f"EPSG:{EPSG}", always_xy=True)
    x, y = to_utm.transform(LON, LAT)
    (tmp_path / "eo").mkdir()
    with rasterio.open(tmp_path / "eo/visual.tif", "w", driver="GTiff", width=64, height=64, count=3, dtype="uint8",
                       crs=f"EPSG:{EPSG}", transform=from_origin(x - 160, y + 160, 5, 5)) as dst:
        dst.write(np.full((3, 64, 64), 9, np.uint8))
    item = {"type": "Feature", "stac_version": "1.0.0", "id": "eo-1",
            "geometry": {"type": "Polygon", "coordinates": [[[LON - 0.01, LAT - 0.01], [LON + 0.01, LAT - 0.01],
                                                             [LON + 0.01, LAT + 0.01], [LON - 0.01, LAT - 0.01]]]},
            "bbox": [LON - 0.01, LAT - 0.01, LON + 0.01, LAT + 0.01],
            "properties": {"datetime": "2023-05-05T10:00:00Z"}, "links": [],
            "assets": {"thumbnail": {"href": "./thumb.png", "roles": ["thumbnail"]},
                       "visual": {"href": "./visual.tif", "type": "image/tiff; application=geotiff",
                                  "roles": ["visual"]}}}
    (tmp_path / "eo/item.json").write_text(json.dumps(item))
    region = make_region(tmp_path, {"file": "x.tif"}, eo={"stac": "eo/item.json"}, check_files=False)
    dest = tmp_path / "out.tif"
    rec = fetch_eo(region, Cache(tmp_path / "c", Transport()), FAST, dest)
    assert rec["kind"] == "stac" and rec["asset"] == "visual" and rec["item_id"] == "eo-1"
    assert rec["datetime"] == "2023-05-05T10:00:00Z"
    assert os.path.samefile(dest, tmp_path / "eo/visual.tif")
    item["assets"]["visual"]["href"] = "../../visual.tif"
    (tmp_path / "eo/item.json").write_text(json.dumps(item))
    with pytest.raises(Unsafe):
        fetch_eo(region, Cache(tmp_path / "c", Transport()), FAST, tmp_path / "o2.tif")
    region_bad = make_region(tmp_path, {"file": "x.tif"}, eo={"stac": "eo/item.json", "asset": "nir"},
                             check_files=False)
    with pytest.raises(FetchError, match="eo.asset 'nir' not among"):
        fetch_eo(region_bad, Cache(tmp_path / "c", Transport()), FAST, tmp_path / "o3.tif")


# --------------------------------------------------------------------------- Umbra, STAC API


def test_umbra_item_end_to_end(tmp_path: Path, fixtures: Path) -> None:
    """The real Umbra item, its GEC asset pointed at a local uint8 GeoTIFF: default product accepts GEC."""
    item = json.loads((fixtures / "umbra/2024-10-26-18-07-08_UMBRA-05.stac.v2.json").read_text())
    lon, lat = -121.745, 46.797
    to_utm = Transformer.from_crs("EPSG:4326", "EPSG:32610", always_xy=True)
    x, y = to_utm.transform(lon, lat)
    (tmp_path / "umbra").mkdir()
    with rasterio.open(tmp_path / "umbra/gec.tif", "w", driver="GTiff", width=50, height=50, count=1, dtype="uint8",
                       crs="EPSG:32610", transform=from_origin(x - 100, y + 100, 4, 4)) as dst:
        dst.write(np.full((1, 50, 50), 80, np.uint8))
    item["assets"]["2024-10-26-18-07-08_UMBRA-05_MM.tif"]["href"] = "./gec.tif"
    (tmp_path / "umbra/item.json").write_text(json.dumps(item))
    bbox = [lon - 0.0005, lat - 0.0003, lon + 0.0005, lat + 0.0003]
    build_tiles(tmp_path / "tiles", bbox, tiles.zoom_for_gsd(lat, 1.0))
    region = make_region(tmp_path, {"stac": "umbra/item.json", "provider": "umbra"}, bbox=bbox)
    out = run_fetch(region, tmp_path / "out", tmp_path / "cache")
    assert scene_ids(out) == [UMBRA] == [scene_dir_name(item["id"])]  # the folder is the item id
    sdir = out / "scenes" / UMBRA
    assert sorted(p.name for p in sdir.iterdir()) == ["eo.tif", "provenance.json", "sar.tif"]  # no Capella metadata
    s = scene_rec(out, UMBRA)
    assert s["item_id"] == item["id"] and s["product"] == "GEC" and s["asset"].endswith("_MM.tif")
    assert s["calibrated"] is False and "uncalibrated" in s["note"] and "Umbra" in s["attribution"]
    assert s["provider"] == "umbra" and s["datetime"] == "2024-10-26T18:07:09.800001Z"
    assert os.path.samefile(sdir / "sar.tif", tmp_path / "umbra/gec.tif")


def test_stac_api_uses_pystac_client(tmp_path: Path, demo: Path) -> None:
    """A catalog that conforms to item-search is searched (pystac-client), not walked."""
    import http.server
    import threading

    wdir = demo / "capella/capella-open-data-by-datetime/capella-open-data-2024" / WINNER
    item = json.loads((wdir / f"{WINNER}.json").read_text())
    seen: list[str] = []

    class Api(http.server.SimpleHTTPRequestHandler):
        def log_message(self, *a: Any) -> None:
            pass

        def _json(self, obj: Any) -> None:
            body = json.dumps(obj).encode()
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def do_GET(self) -> None:
            seen.append(self.path)
            base = f"http://127.0.0.1:{self.server.server_address[1]}"
            if self.path in ("/", ""):
                return self._json({"type": "Catalog", "stac_version": "1.0.0", "id": "api", "description": "api",
                                   "conformsTo": ["https://api.stacspec.org/v1.0.0/core",
                                                  "https://api.stacspec.org/v1.0.0/item-search"],
                                   "links": [{"rel": "self", "href": f"{base}/"},
                                             {"rel": "root", "href": f"{base}/"},
                                             {"rel": "search", "href": f"{base}/search", "method": "GET",
                                              "type": "application/geo+json"}]})
            if self.path.startswith("/search"):
                it = copy_item(item, f"{base}/files")
                return self._json({"type": "FeatureCollection", "features": [it], "links": []})
            self.path = self.path.removeprefix("/files")
            return super().do_GET()

        do_POST = do_GET

    def copy_item(d: dict[str, Any], prefix: str) -> dict[str, Any]:
        d = json.loads(json.dumps(d))
        for a in d["assets"].values():
            a["href"] = f"{prefix}/{a['href'].removeprefix('./')}"
        d["links"] = []
        return d

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), lambda *a: Api(*a, directory=str(wdir)))
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        base = f"http://127.0.0.1:{server.server_address[1]}"
        build_tiles(tmp_path / "tiles", AOI, tiles.zoom_for_gsd(LAT, 1.0))
        region = make_region(tmp_path, {"stac": f"{base}/", "polarization": "HH", "datetime": "2024-01-01/.."})
        out = run_fetch(region, tmp_path / "out", tmp_path / "cache")
    finally:
        server.shutdown()
        server.server_close()
    assert any(p.startswith("/search") and "bbox=" in p for p in seen), seen
    assert scene_ids(out) == [WINNER]  # the API answered one item
    s = scene_rec(out, WINNER)
    assert s["item_id"] == WINNER
    assert s["sha256"] == sha(wdir / f"{WINNER}.tif") == sha(out / "scenes" / WINNER / "sar.tif")


# --------------------------------------------------------------------------- every matching scene, several sources


def _umbra_at(fixtures: Path, dest: Path, centre: tuple[float, float] = (LON, LAT),
              image_centre: tuple[float, float] | None = None, footprint: list[list[float]] | None = None,
              item_id: str | None = None, seed: int = 11) -> dict[str, Any]:
    """The real Umbra item moved to ``centre``: its GEC asset a local uint8 GeoTIFF at ``image_centre``
    (default ``centre``), its footprint that image's 400 m square at ``centre`` (or ``footprint``), with
    heights as Umbra writes them. Written to ``dest/item.json``."""
    item = json.loads((fixtures / "umbra/2024-10-26-18-07-08_UMBRA-05.stac.v2.json").read_text())
    dest.mkdir(parents=True, exist_ok=True)
    _geotiff(dest / "gec.tif", image_centre or centre, seed, dtype="uint8")
    ring = footprint or _square(centre)[2]
    item["geometry"] = {"type": "Polygon", "coordinates": [[[lon, lat, 1590.12] for lon, lat in ring]]}
    lons, lats = [q[0] for q in ring], [q[1] for q in ring]
    item["bbox"] = [min(lons), min(lats), max(lons), max(lats)]
    item["assets"]["2024-10-26-18-07-08_UMBRA-05_MM.tif"]["href"] = "./gec.tif"
    if item_id:
        item["id"] = item_id
    (dest / "item.json").write_text(json.dumps(item))
    return item


def _coverage_catalog(root: Path) -> dict[str, str]:
    """A Capella-layout catalog (benchmarks/bench_catalog.py) of GEO HH collects 0.002 deg wide, each
    shifted east so that it covers a known share of the AOI (lon/lat areas, as ranking measures)."""
    b = _bench()

    def item(platform: str, when: str, share: float):
        return b.SynthItem(platform, "SP", "GEO", "HH", _t(when), LON + 0.002 * (1 - share), LAT, half_deg=0.001)

    items = {
        "full_old": item("C13", "2023-01-01T10:00:00Z", 1.0),
        "full_new": item("C13", "2024-03-01T10:00:00Z", 1.0),
        "half": item("C13", "2024-06-01T10:00:00Z", 0.5),
        "quarter_a": item("C13", "2023-06-01T10:00:00Z", 0.25),
        "quarter_b": item("C14", "2023-06-01T10:00:00Z", 0.25),  # same time as quarter_a: ordered by id
        "tenth": item("C13", "2024-09-01T10:00:00Z", 0.1),
    }
    b.build_catalog(root / "capella", list(items.values()))
    return {k: v.id for k, v in items.items()}


def test_every_matching_scene_polarization_any_vs_hh(tmp_path: Path, demo: Path) -> None:
    """Every item passing the filters is a scene; polarization any (or unset) takes the VV item too."""
    hh = _local_region(tmp_path, demo)
    cache = Cache(tmp_path / "cache", Transport.from_params(FAST))
    found, _ = find_sar_items(hh, region_sources(hh)[0], cache, FAST)
    assert [c.facts.id for c in found.candidates] == [WINNER, OLDER]  # ranked: equal coverage, newest first
    assert [sc.id for sc in select_scenes(hh, cache, FAST)] == [OLDER, WINNER]  # stored: oldest first
    region = make_region(tmp_path, {"stac": "capella/catalog.json", "polarization": "any"})
    out = run_fetch(region, tmp_path / "any" / "source", tmp_path / "cache")
    assert scene_ids(out) == [OLDER, WINNER, VV]
    assert [s["polarization"] for s in provenance(out)["scenes"]] == ["HH", "HH", "VV"]
    for sid in (OLDER, WINNER, VV):
        assert os.path.samefile(out / "scenes" / sid / "sar.tif", demo_item_dir(demo, sid) / f"{sid}.tif")
        assert os.path.samefile(out / "scenes" / sid / "eo.tif", out / "eo.tif")
    v = scene_rec(out, VV)
    assert [c["item_id"] for c in v["candidates"]] == [VV, WINNER, OLDER] and v["candidates_total"] == 3
    assert v["pruned"] == {"not geocoded": 1} and v["rejected"] == {"outside AOI": 1}  # VV no longer pruned
    assert [sc.polarization for sc in read_scenes(SourceFiles(out))] == ["HH", "HH", "VV"]
    unset = make_region(tmp_path, {"stac": "capella/catalog.json"})
    assert [sc.id for sc in select_scenes(unset, cache, FAST)] == [OLDER, WINNER, VV]  # the default is any
    vv = make_region(tmp_path, {"stac": "capella/catalog.json", "polarization": "VV"})
    assert [sc.id for sc in select_scenes(vv, cache, FAST)] == [VV]


def test_scenes_from_two_providers_and_a_file(tmp_path: Path, demo: Path, fixtures: Path) -> None:
    """A list of sources: the Capella-layout catalog, an Umbra item and a local file, in one region."""
    _local_region(tmp_path, demo)  # links the demo catalog and tiles
    _umbra_at(fixtures, tmp_path / "umbra")
    _geotiff(tmp_path / "own.tif", (LON, LAT), 9)
    region = make_region(tmp_path, [{"stac": "capella/catalog.json", "polarization": "HH"},
                                    {"stac": "umbra/item.json"},  # product unset: Umbra's GEC passes
                                    {"file": "own.tif", "provider": "capella"}])
    out = run_fetch(region, tmp_path / "out" / "source", tmp_path / "cache")
    # catalog scenes oldest first (2023, 2024-07, 2024-10 for Umbra), then the file
    assert scene_ids(out) == [OLDER, WINNER, UMBRA, "file-own"]
    recs = [scene_rec(out, sid) for sid in scene_ids(out)]
    assert [(r["source"], r["provider"], r["product"], r.get("calibrated")) for r in recs] == [
        ("sar[0]", "capella", "GEO", True), ("sar[0]", "capella", "GEO", True), ("sar[1]", "umbra", "GEC", False),
        ("sar[2]", "capella", "GEO", None)]
    assert all(r["licence"] == "CC-BY-4.0" for r in recs)
    assert ["Capella" in r["attribution"] for r in recs] == [True, True, False, True]
    assert "Umbra" in recs[2]["attribution"] and "uncalibrated" in recs[2]["note"]
    assert recs[2]["catalog"] == "umbra/item.json" and recs[2]["coverage"] == 1.0  # Umbra's 3D footprint
    assert sorted(p.name for p in (out / "scenes" / UMBRA).iterdir()) == ["eo.tif", "provenance.json", "sar.tif"]
    assert (out / "scenes" / OLDER / "sar_metadata.json").is_file()  # Capella's metadata, Umbra has none
    assert os.path.samefile(out / "scenes" / UMBRA / "sar.tif", tmp_path / "umbra/gec.tif")
    assert os.path.samefile(out / "scenes" / "file-own" / "sar.tif", tmp_path / "own.tif")
    assert all(os.path.samefile(out / "scenes" / sid / "eo.tif", out / "eo.tif") for sid in scene_ids(out))
    scenes = read_scenes(SourceFiles(out))
    assert [(sc.provider, sc.product) for sc in scenes] == [("capella", "GEO"), ("capella", "GEO"),
                                                            ("umbra", "GEC"), ("capella", "GEO")]
    with rasterio.open(scenes[2].files.sar) as umbra:
        assert umbra.dtypes == ("uint8",)
    # the same sources in another order: the same scenes in the same order
    region = make_region(tmp_path, [{"stac": "umbra/item.json"}, {"stac": "capella/catalog.json", "polarization": "HH"},
                                    {"file": "own.tif", "provider": "capella"}])
    again = run_fetch(region, tmp_path / "again" / "source", tmp_path / "cache")
    assert scene_ids(again) == scene_ids(out)
    assert [sha(again / "scenes" / i / "sar.tif") for i in scene_ids(out)] == [r["sha256"] for r in recs]


def test_item_in_two_sources_used_once(tmp_path: Path, demo: Path, caplog) -> None:
    """The root catalog and its 2024 sub-catalog both list WINNER: one scene, credited to the first source."""
    _local_region(tmp_path, demo)
    year = "capella/capella-open-data-by-datetime/capella-open-data-2024/catalog.json"
    region = make_region(tmp_path, [{"stac": "capella/catalog.json", "polarization": "HH"},
                                    {"stac": year, "polarization": "any"}])
    with caplog.at_level(logging.INFO, logger="sareo.fetch"):
        out = run_fetch(region, tmp_path / "out" / "source", tmp_path / "cache")
    assert scene_ids(out) == [OLDER, WINNER, VV]
    assert [s["source"] for s in provenance(out)["scenes"]] == ["sar[0]", "sar[0]", "sar[1]"]
    assert scene_rec(out, WINNER)["catalog"] == "capella/catalog.json" and scene_rec(out, VV)["catalog"] == year
    # the second source saw WINNER too (its ranking says so) but did not make a second scene of it
    assert [c["item_id"] for c in scene_rec(out, VV)["candidates"]] == [VV, WINNER]
    assert f"{WINNER} is also in" in caplog.text and "used once" in caplog.text


def test_min_coverage_and_max_items(tmp_path: Path, demo: Path) -> None:
    """min_coverage rejects by AOI share; max_items keeps coverage desc, then newest, then id; both counted."""
    ids = _coverage_catalog(tmp_path)
    stac = "capella/catalog.json"
    res = _find(tmp_path, stac, 4)
    order = ["full_new", "full_old", "half", "quarter_a", "quarter_b", "tenth"]  # the cap order
    assert [c.facts.id for c in res.candidates] == [ids[k] for k in order]
    assert [round(c.coverage, 6) for c in res.candidates] == [1.0, 1.0, 0.5, 0.25, 0.25, 0.1]
    assert res.rejected == {}
    region = make_region(tmp_path, {"stac": stac, "polarization": "HH"})
    cache = Cache(tmp_path / "cache", Transport.from_params(FAST))
    # stored oldest first, the two collects of the same second by id
    assert [sc.id for sc in select_scenes(region, cache, FAST)] == [
        ids[k] for k in ("full_old", "quarter_a", "quarter_b", "full_new", "half", "tenth")]
    res = _find(tmp_path, stac, 4, min_coverage=0.3)
    assert [c.facts.id for c in res.candidates] == [ids["full_new"], ids["full_old"], ids["half"]]
    assert {k: sorted(v) for k, v in res.rejected.items()} == {
        "min_coverage": sorted(ids[k] for k in ("quarter_a", "quarter_b", "tenth"))}
    res = _find(tmp_path, stac, 4, max_items=4)
    assert [c.facts.id for c in res.candidates] == [ids[k] for k in order[:4]]
    assert res.rejected == {"max_items": [ids["quarter_b"], ids["tenth"]]}  # quarter_b loses the tie by id
    res = _find(tmp_path, stac, 4, min_coverage=0.2, max_items=2)
    assert res.rejected == {"min_coverage": [ids["tenth"]], "max_items": [ids[k] for k in ("half", "quarter_a",
                                                                                          "quarter_b")]}
    region = make_region(tmp_path, {"stac": stac, "polarization": "HH", "min_coverage": 0.2, "max_items": 2})
    assert [sc.id for sc in select_scenes(region, cache, FAST)] == [ids["full_old"], ids["full_new"]]
    # through the stage, on the demo catalog: the cap keeps the newest of two full covers, and says so
    shutil.rmtree(tmp_path / "capella")
    region = _local_region(tmp_path, demo, max_items=1)
    out = run_fetch(region, tmp_path / "out" / "source", tmp_path / "cache")
    assert scene_ids(out) == [WINNER]
    rec = scene_rec(out, WINNER)
    assert rec["rejected"] == {"max_items": 1, "outside AOI": 1} and rec["candidates_total"] == 1
    assert "max_items keeps the best AOI coverage, then newest, then by item id" in rec["selection"]


def test_no_scene_matches_names_filters_per_source(tmp_path: Path, fixtures: Path) -> None:
    """Each source's line says which filter removed how many items (read and rejected, or pruned unread)."""
    _coverage_catalog(tmp_path)
    _umbra_at(fixtures, tmp_path / "umbra")
    region = make_region(tmp_path, [
        {"stac": "capella/catalog.json", "polarization": "HH", "min_coverage": 0.6, "datetime": "2024-04-01/.."},
        {"stac": "umbra/item.json", "polarization": "VV"}])  # Umbra's id tells nothing: read, then rejected
    with pytest.raises(FetchError) as err:
        run_fetch(region, tmp_path / "out", tmp_path / "cache")
    msg = str(err.value)
    root = region.resolve("capella/catalog.json")
    first, second = msg.split("; sar[1] ")
    assert first.startswith(f"region testregion: no SAR scene matches; sar[0] {root}: no item matches "
                            "(product GEO, polarization HH, datetime 2024-04-01/.., min_coverage 0.6); ")
    # half (June) and tenth (September) are read and cover too little; the older ones are pruned by date
    assert re.search(r"; 2 items read, rejected by min_coverage: 2; links pruned unread: datetime: \d+, "
                     r"hierarchy: 1$", first), first
    assert second == (f"{region.resolve('umbra/item.json')}: no item matches (product GEO, polarization VV, "
                      "datetime any, min_coverage > 0); 1 items read, rejected by polarization: 1")
    assert not (tmp_path / "out").exists()


def test_scene_footprint_missing_aoi_not_taken(tmp_path: Path, demo: Path, fixtures: Path, caplog) -> None:
    """An item whose bbox overlaps the AOI but whose footprint does not is no scene; an image that misses
    the AOI under a footprint that claims it is refused, naming the item."""
    _local_region(tmp_path, demo)
    # a diamond: its bbox [LON, LAT, LON + 0.008, LAT + 0.004] overlaps the AOI's north-east quarter, but its
    # south-west edge crosses the AOI's east side (LON + 0.001) at LAT + 0.0015, 0.001 deg above the AOI
    diamond = [[LON, LAT + 0.002], [LON + 0.004, LAT], [LON + 0.008, LAT + 0.002], [LON + 0.004, LAT + 0.004],
               [LON, LAT + 0.002]]
    _umbra_at(fixtures, tmp_path / "umbra", footprint=diamond)
    capella = {"stac": "capella/catalog.json", "polarization": "HH"}
    region = make_region(tmp_path, [capella, {"stac": "umbra/item.json"}])
    with caplog.at_level(logging.WARNING, logger="sareo.fetch"):
        out = run_fetch(region, tmp_path / "out" / "source", tmp_path / "cache")
    assert scene_ids(out) == [OLDER, WINNER]
    assert re.search(r"sar\[1\] \S*umbra/item.json: no item intersects the AOI \(24\.944", caplog.text), caplog.text
    # alone, the same source is an error naming it
    region = make_region(tmp_path, {"stac": "umbra/item.json"})
    with pytest.raises(FetchError, match=r"region testregion: no SAR scene matches; sar \S*umbra/item.json: "
                                         r"no item intersects the AOI \(24\.944.* \(1 items read\)$"):
        run_fetch(region, tmp_path / "alone", tmp_path / "cache")
    # the footprint claims the AOI, the image lies 5 km east: refused naming the item, nothing written
    _umbra_at(fixtures, tmp_path / "umbra2", image_centre=(LON + 0.09, LAT))
    region = make_region(tmp_path, [capella, {"stac": "umbra2/item.json"}])
    with pytest.raises(FetchError, match=rf"{UMBRA} asset '2024-10-26-18-07-08_UMBRA-05_MM.tif' .*"
                                         r"do not intersect the AOI"):
        run_fetch(region, tmp_path / "bad" / "source", tmp_path / "cache")
    assert not (tmp_path / "alone").exists() and list((tmp_path / "bad").iterdir()) == []


def test_scene_ids_sharing_a_folder_name(tmp_path: Path, fixtures: Path) -> None:
    """Item ids are folder names once sanitised: 'paradise/1' and 'paradise:1' must not share one."""
    build_tiles(tmp_path / "tiles", AOI, tiles.zoom_for_gsd(LAT, 1.0))
    _umbra_at(fixtures, tmp_path / "a", item_id="paradise/1", seed=1)
    _umbra_at(fixtures, tmp_path / "b", item_id="paradise:1", seed=2)
    assert scene_dir_name("paradise/1") != scene_dir_name("paradise:1")  # sanitised alike, hashed apart
    region = make_region(tmp_path, [{"stac": "a/item.json"}, {"stac": "b/item.json"}])
    try:
        out = run_fetch(region, tmp_path / "out" / "source", tmp_path / "cache")
    except FetchError as exc:  # refusing, naming both items, is a fix too
        assert "paradise/1" in str(exc) and "paradise:1" in str(exc)
        assert not (tmp_path / "out" / "source").exists()
        return
    ids = scene_ids(out)
    assert len(set(ids)) == 2, ids
    for rec in provenance(out)["scenes"]:
        assert sha(out / "scenes" / rec["scene"] / "sar.tif") == rec["sha256"], rec["item_id"]


def test_file_scene_polarization_any_is_unknown(tmp_path: Path) -> None:
    """'any' is a filter, not a polarisation: a file scene given it has an unknown polarisation."""
    _geotiff(tmp_path / "scene.tif", (LON, LAT), 7)
    build_tiles(tmp_path / "tiles", AOI, tiles.zoom_for_gsd(LAT, 1.0))
    region = make_region(tmp_path, {"file": "scene.tif", "polarization": "any"})
    out = run_fetch(region, tmp_path / "out", tmp_path / "cache")
    assert scene_rec(out, "file-scene")["polarization"] in (None, "")


# --------------------------------------------------------------------------- fast static-catalog walk


def _bench():
    """benchmarks/bench_catalog.py: the synthetic Capella-layout catalog builder (shared with the benchmark)."""
    import importlib.util
    import sys

    if "bench_catalog" not in sys.modules:
        path = Path(__file__).parents[1] / "benchmarks/bench_catalog.py"
        spec = importlib.util.spec_from_file_location("bench_catalog", path)
        mod = importlib.util.module_from_spec(spec)
        sys.modules["bench_catalog"] = mod  # dataclasses look their module up
        spec.loader.exec_module(mod)
    return sys.modules["bench_catalog"]


def _t(s: str):
    return parse_datetime(s)


def _handmade(root: Path):
    """Six collects whose pruning can be worked out by hand (see the tests)."""
    b = _bench()
    far = (LON + 1.0, LAT)
    items = {
        "A": b.SynthItem("C13", "SP", "GEO", "HH", _t("2023-03-10T10:00:00Z"), LON, LAT),
        "B": b.SynthItem("C14", "SP", "GEO", "HH", _t("2024-05-02T10:00:00Z"), LON, LAT),
        "C": b.SynthItem("C14", "SP", "GEO", "VV", _t("2024-05-02T11:00:00Z"), LON, LAT),
        "D": b.SynthItem("C13", "SP", "SLC", "HH", _t("2024-05-20T10:00:00Z"), LON, LAT),
        "E": b.SynthItem("C13", "SP", "GEC", "HH", _t("2024-06-20T10:00:00Z"), LON, LAT),
        "F": b.SynthItem("C15", "SM", "GEO", "HH", _t("2024-05-15T10:00:00Z"), *far),
    }
    b.build_catalog(root / "capella", list(items.values()), use_case=[items["A"].id],
                    use_case_copies=[items["B"].id])
    return {k: v.id for k, v in items.items()}, items


def _find(tmp: Path, stac: str, workers: int, ttl: float = 0, hierarchy: str = "auto", bbox=None, **sar: Any):
    region = make_region(tmp, {"stac": stac, "product": "GEO", "polarization": "HH", **sar}, bbox=bbox)
    p = dataclasses.replace(FAST, walk_workers=workers, catalog_cache_ttl_h=ttl, walk_hierarchy=hierarchy)
    res, _ = find_sar_items(region, region_sources(region)[0], Cache(tmp / "cache", Transport.from_params(p)), p)
    return res


def _summary(res) -> tuple:
    return ([(c.facts.id, c.href, round(c.coverage, 9)) for c in res.candidates],
            {k: sorted(v) for k, v in res.rejected.items()}, res.read, res.catalogs, res.pruned)


def test_link_names_dates_and_products() -> None:
    span = name_date_span
    assert span("capella-open-data-2024-7-9") == (_t("2024-07-09"), _t("2024-07-10"))
    assert span("capella-open-data-2024-07") == (_t("2024-07-01"), _t("2024-08-01"))
    assert span("capella-open-data-2024-12") == (_t("2024-12-01"), _t("2025-01-01"))
    assert span("Capella Open Data 2025-05-14") == (_t("2025-05-14"), _t("2025-05-15"))
    assert span("2023") == (_t("2023-01-01"), _t("2024-01-01"))
    for name in ("capella-open-data-by-datetime", "capella-open-data-2024-13", "capella-open-data-2023-2-30",
                 "urban-12345", "CAPELLA_C14_SP_GEO_HH_20240709040329_20240709040358"):
        assert span(name) is None, name
    assert link_name("s3://b/stac/x/capella-open-data-2024/catalog.json") == "capella-open-data-2024"
    assert link_name(f"https://h/a/{WINNER}/{WINNER}.json") == WINNER
    filt = WalkFilter({"product": "GEO", "polarization": "HH", "datetime": "2024-07-01/2024-07-31"}, True)
    link = {"rel": "child", "href": "s3://b/c/capella-open-data-2024-6-30/catalog.json"}
    assert filt.link_reason(link) == (None, None)  # one day of margin: a collect may straddle midnight
    assert filt.link_reason({**link, "href": "s3://b/c/capella-open-data-2024-6-29/catalog.json"})[0] == "datetime"
    assert filt.link_reason({"rel": "child", "href": "s3://b/c/x/catalog.json", "title": "2024-8-2"})[0] == "datetime"
    assert filt.link_reason({"rel": "child", "href": "s3://b/capella-open-data-slc/catalog.json"})[0] == "product"
    item = {"rel": "item", "href": f"s3://b/{WINNER}/{WINNER}.json"}
    assert filt.link_reason(item) == (None, WINNER)
    vv = WINNER.replace("_HH_", "_VV_")
    assert filt.link_reason({"rel": "item", "href": "s3://b/x.json", "title": vv}) == ("polarization", vv)
    assert filt.link_reason({"rel": "item", "href": "s3://b/x.json"}) == (None, None)  # nothing to tell: read it
    wanted = WalkFilter({"product": "GEO"}, True, frozenset([vv]))
    assert wanted.link_reason({"rel": "item", "href": "s3://b/x.json", "title": vv}) == (None, vv)  # never pruned
    assert wanted.link_reason(item) == ("ids", WINNER)
    ext = {"temporal": {"interval": [["2020-01-01T00:00:00Z", "2020-12-31T00:00:00Z"]]},
           "spatial": {"bbox": [[0.0, 0.0, 1.0, 1.0]]}}
    lo, hi = date_range("2024-01-01/..")
    assert extent_outside(ext, lo, hi, None) == "datetime"
    assert extent_outside(ext, None, None, (5.0, 5.0, 6.0, 6.0)) == "extent"
    assert extent_outside(ext, None, None, (0.5, 0.5, 6.0, 6.0)) is None


def test_pruning_counts_with_dates(tmp_path: Path, http_dir) -> None:  # noqa: F811
    """Worked out by hand: root offers by-datetime, by-product-type and by-use-case; May 2024."""
    ids, _ = _handmade(tmp_path)
    requests: list[str] = []
    base = http_dir(tmp_path, requests=requests)
    for workers in (1, 8):
        requests.clear()
        res = _find(tmp_path, f"{base}/capella/catalog.json", workers, datetime="2024-05-01/2024-05-31")
        assert [c.facts.id for c in res.candidates] == [ids["B"]]
        assert res.rejected == {"outside AOI": [ids["F"]]}  # read: its id says nothing about its place
        # root, by-datetime, 2024, 2024-5, its days 2, 15, 20, and 2024-6 (kept by the one-day margin)
        assert res.catalogs == 8 and res.read == 2
        # the two other hierarchies; year 2023 and day 2024-6-20; C (VV) and D (SLC) from their file names
        assert res.pruned == {"datetime": 2, "hierarchy": 2, "not geocoded": 1, "polarization": 1}
        assert sorted(requests) == sorted(set(requests)) and len(requests) == 10, requests  # nothing else read
        assert not any("2023" in r or "6-20" in r or "by-product-type" in r for r in requests)


def test_pruning_by_product_type_without_dates(tmp_path: Path, http_dir) -> None:  # noqa: F811
    ids, _ = _handmade(tmp_path)
    base = http_dir(tmp_path)
    res = _find(tmp_path, f"{base}/capella/catalog.json", 4)
    assert [c.facts.id for c in res.candidates] == [ids["B"], ids["A"]]  # newest first
    # by-product-type is walked: its gec and slc catalogs are pruned, then C by its title
    assert res.catalogs == 3 and res.read == 3
    assert res.pruned == {"hierarchy": 2, "polarization": 1, "product": 2}
    # the item hrefs are the by-datetime files the product catalogs link to
    assert all("capella-open-data-by-datetime" in c.href for c in res.candidates)


def test_dedupe_across_hierarchies(tmp_path: Path, http_dir) -> None:  # noqa: F811
    """walk_hierarchy: all walks every tree; each item file is read once, each id yielded once."""
    ids, _ = _handmade(tmp_path)
    requests: list[str] = []
    base = http_dir(tmp_path, requests=requests)
    res = _find(tmp_path, f"{base}/capella/catalog.json", 1, hierarchy="all")
    assert sorted(requests) == sorted(set(requests))  # no document read twice
    got = [c.facts.id for c in res.candidates]
    assert got == [ids["B"], ids["A"]] and len(set(got)) == len(got)
    # B's first occurrence in depth-first link order is its by-datetime file, not the use-case copy
    assert "by-datetime" in res.candidates[0].href
    assert not any("by-use-case/capella-open-data-urban/CAPELLA" in r for r in requests)  # copy pruned by its title
    # duplicates: A, B, F again under by-product-type; A and the copy of B under by-use-case
    assert res.pruned["duplicate"] == 5 and res.read == 3
    # read ahead in parallel, the copy may be fetched, but the replay still skips it: same result
    requests.clear()
    assert _summary(_find(tmp_path, f"{base}/capella/catalog.json", 8, hierarchy="all")) == _summary(res)
    assert sorted(requests) == sorted(set(requests))
    assert res.candidates[0].item.id == ids["B"]  # the winner's pystac Item is built from the walk's dict


def test_parallel_walk_equals_sequential(tmp_path: Path, http_dir) -> None:  # noqa: F811
    """Random completion order (latency jitter from 16 threads) changes nothing: same result, same counts."""
    b = _bench()
    b.build_catalog(tmp_path / "capella", b.synthetic_items(150, seed=3, years=(2023, 2024), hot_share=0.1),
                    use_case=[])
    base = http_dir(tmp_path, latency_s=0.002)
    stac = f"{base}/capella/catalog.json"
    for sar in ({}, {"datetime": "2024-02-01/2024-09-30"}, {"mode": "SP"}):
        runs = [_summary(_find(tmp_path, stac, w, hierarchy=h, **sar)) for w in (1, 16) for h in ("auto", "all")]
        assert runs[0] == runs[2] and runs[1] == runs[3], sar
        assert [c[0] for c in runs[0][0]] == [c[0] for c in runs[1][0]], sar  # hierarchy choice loses nothing


def test_parallel_walk_with_ids_stops_deterministically(tmp_path: Path, http_dir) -> None:  # noqa: F811
    ids, _ = _handmade(tmp_path)
    base = http_dir(tmp_path, latency_s=0.002)
    runs = [_summary(_find(tmp_path, f"{base}/capella/catalog.json", w, ids=[ids["A"]])) for w in (1, 8, 1, 8)]
    assert runs[0][0][0][0] == ids["A"] and all(r == runs[0] for r in runs)


def test_fetch_provenance_same_bytes_parallel_and_sequential(
    tmp_path: Path, demo: Path, http_dir  # noqa: F811
) -> None:
    base = http_dir(demo, latency_s=0.002)
    region = make_region(tmp_path, {"stac": f"{base}/capella/catalog.json", "polarization": "HH"},
                         eo={"tiles": base + "/tiles/{z}/{x}/{y}.png", "datetime": "2024-06-01"})
    outs = []
    for workers in (1, 16):
        params = dataclasses.replace(FAST, walk_workers=workers, catalog_cache_ttl_h=0)
        outs.append(run_fetch(region, tmp_path / f"w{workers}" / "source", tmp_path / f"c{workers}", params))
    assert (outs[0] / "provenance.json").read_bytes() == (outs[1] / "provenance.json").read_bytes()
    assert scene_ids(outs[0]) == scene_ids(outs[1]) == [OLDER, WINNER]
    for sid in (OLDER, WINNER):
        assert (outs[0] / "scenes" / sid / "provenance.json").read_bytes() == \
            (outs[1] / "scenes" / sid / "provenance.json").read_bytes()
        s = scene_rec(outs[0], sid)
        assert s["item_id"] == sid and s["catalogs_read"] == 4
        assert s["pruned"] == {"not geocoded": 1, "polarization": 1}


def test_unreachable_subcatalog_named(tmp_path: Path, http_dir, dead_port) -> None:  # noqa: F811
    """A sub-catalog that cannot be read after the retries fails the walk, naming it, with any workers."""
    _handmade(tmp_path)
    dead = f"http://127.0.0.1:{dead_port}/stac/capella-open-data-2024-5-15/catalog.json"
    month = (tmp_path / "capella/capella-open-data-by-datetime/capella-open-data-2024/capella-open-data-2024-5"
             / "catalog.json")
    doc = json.loads(month.read_text())
    doc["links"].append({"rel": "child", "href": dead})
    month.write_text(json.dumps(doc))
    base = http_dir(tmp_path)
    for workers in (1, 8):
        with pytest.raises(FetchError, match=rf"{dead}: failed after 2 attempt\(s\)"):
            _find(tmp_path, f"{base}/capella/catalog.json", workers, datetime="2024-05-01/2024-05-31")
    (tmp_path / "capella/capella-open-data-by-datetime/capella-open-data-2024/capella-open-data-2024-5"
     / "capella-open-data-2024-5-2/catalog.json").unlink()
    doc["links"].pop()
    month.write_text(json.dumps(doc))
    with pytest.raises(FetchError, match=r"capella-open-data-2024-5-2/catalog.json: HTTP 404"):
        _find(tmp_path, f"{base}/capella/catalog.json", 8, datetime="2024-05-01/2024-05-31")


def test_walk_cache_serves_second_region(tmp_path: Path, http_dir, monkeypatch) -> None:  # noqa: F811
    ids, items = _handmade(tmp_path)
    requests: list[str] = []
    base = http_dir(tmp_path, requests=requests)
    stac = f"{base}/capella/catalog.json"
    first = _find(tmp_path, stac, 8, ttl=24)
    assert len(requests) == 6 and [c.facts.id for c in first.candidates] == [ids["B"], ids["A"]]
    walks = list((tmp_path / "cache" / "walks").iterdir())
    assert len(walks) == 1 and json.loads(walks[0].read_text())["root"] == stac
    # another region (F's place) on the same catalog: no catalog JSON read at all, same counts
    f = items["F"]
    requests.clear()
    second = _find(tmp_path, stac, 8, ttl=24, bbox=[f.lon - 0.001, f.lat - 0.0005, f.lon + 0.001, f.lat + 0.0005])
    assert requests == [] and [c.facts.id for c in second.candidates] == [ids["F"]]
    assert (second.read, second.catalogs, second.pruned) == (first.read, first.catalogs, first.pruned)
    # the cached walk gives the same answer as a fresh one
    fresh = _find(tmp_path, stac, 8, ttl=0, bbox=[f.lon - 0.001, f.lat - 0.0005, f.lon + 0.001, f.lat + 0.0005])
    assert _summary(fresh) == _summary(second)
    # a date range walks by-datetime: not cached yet, so it is read (and added to the cache)
    requests.clear()
    _find(tmp_path, stac, 8, ttl=24, datetime="2024-05-01/2024-05-31")
    assert len(requests) == 7  # the by-datetime catalogs; root and items B, F are cached already
    requests.clear()
    _find(tmp_path, stac, 8, ttl=24, datetime="2024-05-01/2024-05-31")
    assert requests == []
    # older than the ttl: walked again
    real = fetch_cache.time.time
    monkeypatch.setattr(fetch_cache.time, "time", lambda: real() + 25 * 3600)
    requests.clear()
    _find(tmp_path, stac, 8, ttl=24)
    assert len(requests) == 6


# --------------------------------------------------------------------------- OSM into source/


def test_fetch_puts_osm_file_into_source(tmp_path: Path, demo: Path, fixtures: Path) -> None:
    """osm.file: hardlinked into source/ as osm.<suffixes>, hashed and credited in provenance.json."""
    (tmp_path / "osm").mkdir()
    for name in ("Helsinki.osm.pbf", "West-Oakland.osm.bz2"):
        shutil.copy(fixtures / "osm" / name, tmp_path / "osm" / name)
    region = _local_region(tmp_path, demo, osm={"file": "osm/Helsinki.osm.pbf"})
    out = run_fetch(region, tmp_path / "pbf" / "source", tmp_path / "cache")
    assert os.path.samefile(out / "osm.osm.pbf", tmp_path / "osm" / "Helsinki.osm.pbf")  # linked, not copied
    rec = json.loads((out / "provenance.json").read_text())["osm"]
    assert rec == {"kind": "file", "source": "osm/Helsinki.osm.pbf", "file": "osm.osm.pbf",
                   "sha256": sha(fixtures / "osm" / "Helsinki.osm.pbf"),
                   "bytes": (fixtures / "osm" / "Helsinki.osm.pbf").stat().st_size,
                   "licence": "ODbL-1.0", "attribution": "(c) OpenStreetMap contributors, ODbL 1.0"}
    assert str(tmp_path) not in (out / "provenance.json").read_text()  # the path as the region file writes it
    region = _local_region(tmp_path, demo, osm={"file": "osm/West-Oakland.osm.bz2"})
    out = run_fetch(region, tmp_path / "bz2" / "source", tmp_path / "cache")
    rec = json.loads((out / "provenance.json").read_text())["osm"]
    assert (rec["file"], rec["source"]) == ("osm.osm.bz2", "osm/West-Oakland.osm.bz2")
    assert (out / "osm.osm.bz2").read_bytes() == (fixtures / "osm" / "West-Oakland.osm.bz2").read_bytes()
    assert rec["sha256"] == sha(out / "osm.osm.bz2")
    # a file that is not there, or not an OSM extract, fails the stage naming the field; nothing is written
    # (a missing one is refused when the region file is read, before any download; issue 12)
    with pytest.raises(RegionError, match=r"testregion.yaml: osm.file: 'osm/missing.osm.pbf': no such file"):
        _local_region(tmp_path, demo, osm={"file": "osm/missing.osm.pbf"})
    (tmp_path / "osm" / "notes.txt").write_text("x")
    region = _local_region(tmp_path, demo, osm={"file": "osm/notes.txt"})
    with pytest.raises(FetchError, match=r"osm.file: osm/notes.txt: expected an OSM extract"):
        run_fetch(region, tmp_path / "txt", tmp_path / "cache")
    assert not (tmp_path / "missing").exists() and not (tmp_path / "txt").exists()


def test_fetch_saves_overpass_answer_as_osm_xml(
    tmp_path: Path, demo: Path, overpass_server: str  # noqa: F811
) -> None:
    """osm.overpass: the AOI's grid + read margin asked once (osmnx cache), saved as source/osm.osm."""
    from pipeline.grid import grid_for_bbox
    from pipeline.osm import declared_bounds, read_osm, read_window

    region = _local_region(tmp_path, demo, osm={"overpass": True})
    osm = OsmParams(overpass_url=overpass_server, overpass_timeout=5, read_margin_m=80.0, cache_dir="cache/osmnx")
    out = run_fetch(region, tmp_path / "a" / "source", tmp_path / "cache", FAST, osm)
    assert len(_Overpass.queries) == 1 and (tmp_path / "cache" / "osmnx").is_dir()  # relative to the project
    rec = json.loads((out / "provenance.json").read_text())["osm"]
    bbox = read_window(grid_for_bbox(AOI, 1.0).bounds, 80.0)
    assert rec["kind"] == "overpass" and rec["source"] == "overpass" and rec["url"] == overpass_server
    assert rec["bbox"] == list(bbox) and rec["file"] == "osm.osm" and rec["requests"] == 1
    assert rec["sha256"] == sha(out / "osm.osm") and rec["bytes"] == (out / "osm.osm").stat().st_size
    assert rec["licence"] == "ODbL-1.0" and "OpenStreetMap" in rec["attribution"]
    assert "landuse" in rec["keys"] and "building" in rec["keys"]
    # the query asked for exactly that window (osmnx writes the polygon as 'lat lon' pairs, 6 decimals)
    assert f"{bbox[1]:.6f} {bbox[0]:.6f}" in _Overpass.queries[0] and f"{bbox[3]:.6f} {bbox[2]:.6f}" in _Overpass.queries[0]
    # the saved answer reads like any extract, offline; its <bounds> are the query window
    feats = read_osm(out / "osm.osm", None)
    by_id = feats.gdf.set_index("osm_id")
    assert by_id.loc["w100", "building"] == "yes" and by_id.loc["r200", "landuse"] == "residential"
    assert by_id.loc["w101", "kind"] == "line" and declared_bounds(out / "osm.osm") == pytest.approx(bbox, abs=1e-7)
    # again: answered from the osmnx cache, same bytes
    again = run_fetch(region, tmp_path / "b" / "source", tmp_path / "cache", FAST, osm)
    assert len(_Overpass.queries) == 1
    assert (again / "provenance.json").read_bytes() == (out / "provenance.json").read_bytes()
    assert (again / "osm.osm").read_bytes() == (out / "osm.osm").read_bytes()


def test_labels_read_the_fetched_osm_not_the_region_file(tmp_path: Path, demo: Path, fixtures: Path) -> None:
    """After fetch, the region file's osm path no longer matters: labels use source/'s copy, checked by sha256."""
    from test_labels import make_grid_dir

    from pipeline.labels.params import LabelsParams
    from pipeline.labels.stage import LabelsError, label_region
    from pipeline.layout import GridFiles, LabelFiles

    shutil.copy(fixtures / "osm" / "Helsinki.osm.pbf", tmp_path / "helsinki.osm.pbf")
    region = _local_region(tmp_path, demo, osm={"file": "helsinki.osm.pbf"})
    rdir = tmp_path / "data" / "regions" / "testregion"
    source, grid = SourceFiles(rdir / "source"), GridFiles(rdir / "grid")
    run_fetch(region, source.dir, tmp_path / "cache")
    make_grid_dir(grid.dir, AOI, 1.0)
    params = LabelsParams(block_size=256, tile_size=256)
    first = label_region(region, source, grid, LabelFiles(rdir / "labels"), params, OsmParams())
    report = json.loads((first / "labels.json").read_text())
    assert report["osm"]["source"] == "helsinki.osm.pbf" and report["osm"]["file"] == "osm.osm.pbf"
    assert report["osm"]["sha256"] == sha(fixtures / "osm" / "Helsinki.osm.pbf") and report["osm"]["features"] > 50
    # the region file now names another extract, and the original file is gone
    write_osm(tmp_path / "osm" / "area.osm")
    region = _local_region(tmp_path, demo, osm={"file": "osm/area.osm"})
    (tmp_path / "helsinki.osm.pbf").unlink()
    second = label_region(load_region(region.path, root=tmp_path), source, grid, LabelFiles(rdir / "labels2"), params,
                          OsmParams())
    for name in ("labels.tif", "zones.tif", "labels.json", "labels.png"):
        assert (second / name).read_bytes() == (first / name).read_bytes(), name
    # a source/ file changed after fetch is refused, naming it
    source.osm("osm.osm.pbf").unlink()
    shutil.copy(tmp_path / "osm" / "area.osm", source.osm("osm.osm.pbf"))
    with pytest.raises(LabelsError, match=r"osm.osm.pbf: sha256 .* differs .*Re-run the fetch stage"):
        label_region(region, source, grid, LabelFiles(rdir / "labels3"), params, OsmParams())
    assert not (rdir / "labels3").exists()


def test_mirror_trust_root_named_by_the_region(tmp_path: Path, demo: Path, s3_server) -> None:  # noqa: F811
    """A bucket mirror keeps the data beside the catalog folder (mirror/stac/... and mirror/data/...): the
    region names the mirror root as its trust root; what leaves that root is still refused (issue 12)."""
    item_path = _copy_catalog(demo, tmp_path / "mirror" / "stac")
    data = tmp_path / "mirror" / "data" / "2024" / f"{WINNER}.tif"
    data.parent.mkdir(parents=True)
    shutil.move(item_path.with_suffix(".tif"), data)
    item = json.loads(item_path.read_text())
    item["assets"]["HH"]["href"] = f"../../../../../data/2024/{WINNER}.tif"  # item dir -> mirror/
    item_path.write_text(json.dumps(item))
    os.symlink(demo / "tiles", tmp_path / "tiles")
    sar = {"stac": "mirror/stac/capella/catalog.json", "polarization": "HH"}
    with pytest.raises(Unsafe, match=r"outside the catalog root .*mirror/stac/capella/.*set sar.catalog_root"):
        run_fetch(make_region(tmp_path, sar), tmp_path / "out", tmp_path / "cache")
    out = run_fetch(make_region(tmp_path, {**sar, "catalog_root": "mirror"}), tmp_path / "out", tmp_path / "cache")
    assert sha(out / "scenes" / WINNER / "sar.tif") == sha(data)
    # the same mirror in a bucket: the root is a prefix of it
    url = s3_server.publish(tmp_path / "mirror", "mirror-bucket", prefix="m")
    params = dataclasses.replace(FAST, s3_endpoint=s3_server.endpoint)
    remote = {"stac": f"{url}/stac/capella/catalog.json", "polarization": "HH", "catalog_root": url}
    out = run_fetch(make_region(tmp_path, remote), tmp_path / "s3out", tmp_path / "cache", params)
    assert sha(out / "scenes" / WINNER / "sar.tif") == sha(data)
    # escaping the named root is refused, and a root that does not hold the catalog is refused
    item["assets"]["HH"]["href"] = f"../../../../../../outside/{WINNER}.tif"
    item_path.write_text(json.dumps(item))
    with pytest.raises(Unsafe, match=r"outside the catalog root .*/mirror/"):
        run_fetch(make_region(tmp_path, {**sar, "catalog_root": "mirror"}), tmp_path / "o2", tmp_path / "cache")
    with pytest.raises(Unsafe, match=r"sar.catalog_root: '.*/elsewhere' does not contain the catalog"):
        run_fetch(make_region(tmp_path, {**sar, "catalog_root": "elsewhere"}), tmp_path / "o3", tmp_path / "cache")


@pytest.mark.parametrize("form", ["path", "file-url"])
def test_absolute_local_href_outside_the_root_refused(tmp_path: Path, demo: Path, form: str) -> None:
    item_path = _copy_catalog(demo, tmp_path)
    outside = tmp_path.parent / f"{tmp_path.name}-elsewhere.tif"
    shutil.copy(item_path.with_suffix(".tif"), outside)  # any readable GeoTIFF on the machine
    item = json.loads(item_path.read_text())
    item["assets"]["HH"]["href"] = str(outside) if form == "path" else outside.as_uri()
    item_path.write_text(json.dumps(item))
    region = make_region(tmp_path, {"stac": "capella/catalog.json", "polarization": "HH"})
    with pytest.raises(Unsafe, match=r"elsewhere.tif.*outside the catalog root"):
        run_fetch(region, tmp_path / "out", tmp_path / "cache")
    assert not (tmp_path / "out").exists()
