"""Many scenes, EO per scene, end to end: two SAR scenes of different dates from a static Capella-layout
catalog and ``eo.search`` on the loopback STAC API, through fetch -> register -> grid -> labels -> patches.

Checks what no stage test sees alone: each scene gets its own EO items (nearest in time, cloud filter
applied, two halves mosaicked where one does not cover), that EO (not the other scene's, not a region
EO) is what reaches each scene's grid and patches, and the patches' eo_datetime / gap_days and the
credits follow it.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import rasterio
import yaml
from rasterio.transform import from_origin
from rasterio.windows import Window
from test_eo_search import UTM, X0, Y0, eo_item, ll_box, to_ll

from pipeline.coregister import CoregisterParams, register_region
from pipeline.fetch.params import FetchParams
from pipeline.fetch.stage import fetch_region
from pipeline.labels.params import LabelsParams
from pipeline.labels.stage import label_region
from pipeline.layout import RegionLayout
from pipeline.osm import OsmParams
from pipeline.patches import PatchesParams, patch_region
from pipeline.provenance import parse_datetime, sha256_file
from pipeline.regions import load_region
from pipeline.splits import SplitsParams
from pipeline.store import open_store, read_meta, store_attrs
from pipeline.warp import GridParams, grid_region
from stac_api import serve_stac_api

FAST = FetchParams(retries=0, backoff_s=0.0, timeout_s=10.0, catalog_cache_ttl_h=0, walk_workers=1)
# the two SAR scenes: A (March) covers the whole AOI, B (September) its eastern ~60 %
SCENE_A = "CAPELLA_C13_SP_GEO_HH_20230301120000_20230301120010"
SCENE_B = "CAPELLA_C14_SP_GEO_HH_20230901120000_20230901120010"
SAR = {SCENE_A: (X0, 400, 1), SCENE_B: (X0 + 160, 240, 2)}  # west edge (m), width (m), seed; 280 m high, at Y0
AOI = ll_box(X0 + 40, Y0 - 232, X0 + 360, Y0 - 40)  # 320 x 192 m
ATTRIBUTION = "SAR: (c) Capella Space Corp, CC BY 4.0. EO: loopback NAIP-like test items, public domain."
# EO items: (id, west edge (m), width (m), datetime, eo:cloud_cover, seed); all 280 m high at Y0, 0.6 m pixels
EO_ITEMS = [
    ("a-cloudy", X0, 400, "2023-03-02T16:00:00Z", 60.0, 32),  # nearest to A, but max_cloud 20 removes it
    ("a-clear", X0, 400, "2023-02-20T16:00:00Z", 5.0, 31),  # A's choice: 8.8 days, covers A alone
    ("a-later", X0, 400, "2023-03-15T16:00:00Z", 0.0, 33),  # a candidate for A, 14 days: not needed
    ("b-west", X0 + 100, 180, "2023-09-05T16:00:00Z", 2.0, 41),  # B: 4 days, covers its west part
    ("b-east", X0 + 250, 150, "2023-09-07T16:00:00Z", 4.0, 42),  # B: 6 days, adds the rest
    ("b-whole", X0, 400, "2023-09-14T16:00:00Z", None, 43),  # B: no cloud cover (passes), 13 days: not needed
]
EXPECTED_EO = {SCENE_A: ["a-clear"], SCENE_B: ["b-west", "b-east"]}
SEEDS = {e[0]: e[5] for e in EO_ITEMS}
SIZE = 64


def sar_item(root: Path, item_id: str, west: float, width_m: int, seed: int) -> None:
    """A Capella-layout GEO item: a UInt16 UTM GeoTIFF at 1 m (nodata 0), its extended metadata, its JSON."""
    d = root / "capella-open-data-by-datetime" / "capella-open-data-2023" / item_id
    d.mkdir(parents=True)
    data = np.random.default_rng(seed).integers(100, 4000, (1, 280, width_m), dtype="uint16")
    with rasterio.open(d / f"{item_id}.tif", "w", driver="GTiff", width=width_m, height=280, count=1, dtype="uint16",
                       nodata=0, crs=UTM, transform=from_origin(west, Y0, 1.0, 1.0)) as dst:
        dst.write(data)
    (d / f"{item_id}_extended.json").write_text(json.dumps(
        {"product_type": "GEO", "collect": {"image": {"scale_factor": 1e-4, "radiometry": "sigma_nought"}}}))
    fp = ll_box(west, Y0 - 280, west + width_m, Y0)
    stamp = item_id.split("_")[5]
    when = f"{stamp[:4]}-{stamp[4:6]}-{stamp[6:8]}T{stamp[8:10]}:{stamp[10:12]}:{stamp[12:14]}Z"
    (d / f"{item_id}.json").write_text(json.dumps({
        "type": "Feature", "stac_version": "1.0.0", "id": item_id,
        "geometry": {"type": "Polygon", "coordinates": [list(map(list, fp.exterior.coords))]}, "bbox": list(fp.bounds),
        "properties": {"datetime": when, "sar:product_type": "GEO", "sar:polarizations": ["HH"],
                       "sar:instrument_mode": "spotlight", "constellation": "capella"},
        "links": [{"rel": "root", "href": "../../../catalog.json"}, {"rel": "parent", "href": "../catalog.json"}],
        "assets": {"HH": {"href": f"./{item_id}.tif", "type": "image/tiff; application=geotiff", "roles": ["data"]},
                   "metadata": {"href": f"./{item_id}_extended.json", "type": "application/json",
                                "roles": ["metadata"]}}}))


def sar_catalog(root: Path) -> None:
    """root catalog -> by-datetime -> 2023 -> the two items (relative hrefs), as Capella lays it out."""
    for item_id, (west, width, seed) in SAR.items():
        sar_item(root, item_id, west, width, seed)

    def catalog(path: Path, cid: str, links: list[dict[str, str]]) -> None:
        path.write_text(json.dumps({"type": "Catalog", "stac_version": "1.0.0", "id": cid, "description": cid,
                                    "links": links}))

    by_dt = root / "capella-open-data-by-datetime"
    catalog(by_dt / "capella-open-data-2023" / "catalog.json", "capella-open-data-2023",
            [{"rel": "item", "href": f"./{i}/{i}.json", "type": "application/json"} for i in sorted(SAR)])
    catalog(by_dt / "catalog.json", "by-datetime", [{"rel": "child", "href": "./capella-open-data-2023/catalog.json"}])
    catalog(root / "catalog.json", "capella-open-data",
            [{"rel": "child", "href": "./capella-open-data-by-datetime/catalog.json"}])


def osm_xml(path: Path) -> None:
    """A tiny OSM extract inside the AOI: a building, a park and a road (lon/lat from UTM metres)."""
    pts = {1: (100, 60), 2: (160, 60), 3: (160, 120), 4: (100, 120), 5: (220, 80), 6: (320, 80), 7: (320, 200),
           8: (220, 200), 9: (40, 150), 10: (360, 150)}
    nodes = {k: to_ll.transform(X0 + x, Y0 - y) for k, (x, y) in pts.items()}
    xml = ['<?xml version="1.0"?>', '<osm version="0.6" copyright="OpenStreetMap and contributors">']
    xml += [f'<node id="{k}" lat="{lat:.8f}" lon="{lon:.8f}"/>' for k, (lon, lat) in nodes.items()]
    xml += ['<way id="20"><nd ref="1"/><nd ref="2"/><nd ref="3"/><nd ref="4"/><nd ref="1"/>'
            '<tag k="building" v="yes"/></way>',
            '<way id="21"><nd ref="5"/><nd ref="6"/><nd ref="7"/><nd ref="8"/><nd ref="5"/>'
            '<tag k="leisure" v="park"/></way>',
            '<way id="22"><nd ref="9"/><nd ref="10"/><tag k="highway" v="residential"/></way>', "</osm>"]
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(xml) + "\n")


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """The whole region built once: project root, layout, the STAC API's search log, the splits report."""
    root = tmp_path_factory.mktemp("scenes")
    sar_catalog(root / "capella")
    osm_xml(root / "osm" / "area.osm")
    files = root / "eo_files"
    files.mkdir()
    items = [eo_item(files, i, w, Y0, round(width / 0.6), round(280 / 0.6), when, cloud=cloud, seed=seed)
             for i, w, width, when, cloud, seed in EO_ITEMS]
    with serve_stac_api(items, files) as api:
        (root / "regions").mkdir()
        doc = {"name": "twoscenes", "aoi": {"bbox": list(AOI.bounds)}, "gsd_m": 1.0,
               "sar": {"stac": "capella/catalog.json", "product": "GEO", "polarization": "HH"},
               "eo": {"search": api.url, "collections": ["naip"], "window_days": 30, "max_cloud": 20},
               "osm": {"file": "osm/area.osm"}, "attribution": ATTRIBUTION}
        (root / "regions" / "twoscenes.yaml").write_text(yaml.safe_dump(doc))
        region = load_region(root / "regions" / "twoscenes.yaml", root=root)
        lay = RegionLayout(root / "data", "twoscenes")
        fetch_region(region, lay.source, root / ".cache", FAST, OsmParams())
        searches = api.searches()
        url = api.url
    register_region(region, lay.source, lay.registration, CoregisterParams(enabled=False))
    grid_region(region, lay.source, lay.registration, lay.grid, GridParams(block_size=512, tile_size=256))
    label_region(region, lay.source, lay.grid, lay.labels, LabelsParams(block_size=512, tile_size=256, png_max_px=400),
                 OsmParams())
    report = patch_region(region, lay.source, lay.registration, lay.grid, lay.labels, lay.store,
                          PatchesParams(size=SIZE, stride=SIZE // 2, shard_patches=16),
                          SplitsParams(block_patches=2, min_block_patches=1, block_m=200.0, patch_m=64.0))
    return {"root": root, "lay": lay, "searches": searches, "url": url, "report": report, "files": files}


def scene_prov(lay: RegionLayout, scene: str) -> dict[str, Any]:
    return json.loads(lay.source.scene(scene).provenance.read_text())


def test_each_scene_gets_its_own_eo_items(built: dict[str, Any]) -> None:
    """Nearest in time within the window, max_cloud applied (an item without cloud cover passes),
    two halves taken where one does not cover; one search per scene, around its own date."""
    lay = built["lay"]
    region_prov = json.loads(lay.source.provenance.read_text())
    assert [s["scene"] for s in region_prov["scenes"]] == [SCENE_A, SCENE_B]  # oldest first
    assert region_prov["eo"]["per_scene"] is True and not lay.source.eo.exists()  # no region EO
    dates = [q[1] if q[0] == "GET" else q[2]["datetime"] for q in built["searches"]]
    assert len(dates) == 2 and "2023-01-30" in dates[0] and "2023-08-02" in dates[1], dates
    a, b = (scene_prov(lay, s)["eo"] for s in (SCENE_A, SCENE_B))
    for sid, rec in ((SCENE_A, a), (SCENE_B, b)):
        assert [i["item_id"] for i in rec["items"]] == EXPECTED_EO[sid]
        assert rec["scene"] == sid and rec["covered"] == pytest.approx(1.0, abs=1e-6)
        assert rec["sha256"] == sha256_file(lay.source.scene(sid).eo)
    assert a["removed"] == {"max_cloud": 1} and a["candidates"] == 2 and a["passed_without"] == {}
    assert b["removed"] == {} and b["candidates"] == 3 and b["passed_without"] == {"eo:cloud_cover": 1}
    assert (a["datetime"], a["gap_days"]) == ("2023-02-20T16:00:00Z", 8)
    assert (b["datetime"], b["gap_days"], b["max_gap_days"]) == ("2023-09-05T16:00:00Z", 4, 6)
    assert [i["cloud_cover"] for i in b["items"]] == [2.0, 4.0]
    # the scenes' EO images are different files (not one region EO hardlinked into both)
    assert sha256_file(lay.source.scene(SCENE_A).eo) != sha256_file(lay.source.scene(SCENE_B).eo)


def test_eo_items_stac_and_attribution_reach_the_scene_provenance(built: dict[str, Any]) -> None:
    lay, url, files = built["lay"], built["url"], built["files"]
    for sid in (SCENE_A, SCENE_B):
        prov = scene_prov(lay, sid)
        eo = prov["eo"]
        assert prov["sar"]["item_id"] == sid and prov["scene"] == sid
        assert eo["source"] == url and eo["collections"] == ["naip"] and eo["max_cloud"] == 20
        assert eo["attribution"] == ATTRIBUTION
        assert eo["scene_datetime"] == parse_datetime(prov["sar"]["datetime"]).isoformat()
        for i in eo["items"]:
            assert i["item_href"] == f"{url}collections/naip/items/{i['item_id']}"  # the STAC item itself
            assert i["href"] == f"{url}files/{i['item_id']}.tif" and i["asset"] == "image"
            assert i["sha256"] == sha256_file(files / f"{i['item_id']}.tif")
    # what the grid stage wrote carries the same credit
    for sid in (SCENE_A, SCENE_B):
        with rasterio.open(lay.grid.scene(sid).eo) as ds:
            assert ds.tags()["attribution"] == ATTRIBUTION


def test_grid_has_an_eo_per_scene_and_no_region_eo(built: dict[str, Any]) -> None:
    """grid/scenes/ID/eo.tif for both scenes, from that scene's items only (band 3 is the item's seed)."""
    lay = built["lay"]
    assert not lay.grid.eo.exists()
    grid = json.loads(lay.grid.grid.read_text())
    for sid in (SCENE_A, SCENE_B):
        g = lay.grid.scene(sid)
        assert g.sar_db.is_file() and g.eo.is_file() and g.quicklook.is_file()
    with rasterio.open(lay.grid.scene(SCENE_A).eo) as ds:
        assert (ds.height, ds.width) == (grid["height"], grid["width"]) and ds.count == 4
        seed, mask = ds.read(3), ds.read(4) > 0
        assert mask.mean() > 0.99 and set(np.unique(seed[mask])) == {SEEDS["a-clear"]}
    with rasterio.open(lay.grid.scene(SCENE_B).eo) as ds:
        seed, mask = ds.read(3), ds.read(4) > 0
        lon_w, _ = to_ll.transform(X0 + 200, Y0 - 140)  # inside b-west
        lon_e, _ = to_ll.transform(X0 + 330, Y0 - 140)  # east of b-west: b-east only
        cw, ce = (round((lon - ds.transform.c) / ds.transform.a) for lon in (lon_w, lon_e))
        assert (seed[mask[:, cw], cw] == SEEDS["b-west"]).all() and (seed[mask[:, ce], ce] == SEEDS["b-east"]).all()
        assert mask[:, cw].mean() > 0.95 and mask[:, ce].mean() > 0.95
        assert not mask[:, :10].any()  # west of scene B's footprint: no EO for B


def test_patches_follow_each_scenes_own_eo(built: dict[str, Any]) -> None:
    """Every patch's EO is its own scene's gridded EO; eo_datetime and gap_days are that scene's EO's."""
    lay, report = built["lay"], built["report"]
    meta = read_meta(lay.store)
    assert set(meta["scene"]) == {SCENE_A, SCENE_B}
    assert report["per_scene"][SCENE_A]["train"] + report["per_scene"][SCENE_B]["train"] > 0
    eo_dt = {sid: scene_prov(lay, sid)["eo"]["datetime"] for sid in (SCENE_A, SCENE_B)}
    sar_dt = {sid: parse_datetime(scene_prov(lay, sid)["sar"]["datetime"]) for sid in (SCENE_A, SCENE_B)}
    eo = open_store(lay.store)["eo"]
    grids = {sid: rasterio.open(lay.grid.scene(sid).eo) for sid in (SCENE_A, SCENE_B)}
    try:
        for i, row in meta.iterrows():
            sid = row["scene"]
            assert row["eo_datetime"] == eo_dt[sid], (i, sid)
            want_gap = abs((parse_datetime(eo_dt[sid]) - sar_dt[sid]).total_seconds()) / 86400
            assert row["gap_days"] == pytest.approx(want_gap, abs=1e-4), (i, sid)
            ref = grids[sid].read((1, 2, 3), window=Window(int(row["col"]), int(row["row"]), SIZE, SIZE))
            assert np.array_equal(eo[i], ref), (i, sid)
    finally:
        for ds in grids.values():
            ds.close()
    gaps = meta.groupby("scene")["gap_days"].first()
    assert gaps[SCENE_A] == pytest.approx(8.83, abs=0.01) and gaps[SCENE_B] == pytest.approx(4.17, abs=0.01)
    # the same ground seen by both scenes: one cell id, one split
    both = meta.groupby("cell")["scene"].nunique()
    assert (both == 2).sum() > 0
    assert (meta.groupby("cell")["split"].nunique() == 1).all()


def test_store_credits_the_eo_of_the_scenes(built: dict[str, Any]) -> None:
    """The patch store's attribution names the EO (here from the region file: its EO credit)."""
    attrs = store_attrs(built["lay"].store)
    eo_lines = [line for line in attrs["attribution"] if line.startswith("EO:")]
    assert eo_lines and ATTRIBUTION in eo_lines[0], attrs["attribution"]
