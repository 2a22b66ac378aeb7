"""EO per scene from a STAC search: the selection rule, the loopback STAC API (pystac-client), a static
catalog, the mosaic (exact paste vs resampled once), the errors, and the Planetary Computer signer."""

from __future__ import annotations

import datetime as dt
import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import rasterio
from pyproj import Transformer
from rasterio.transform import from_origin
from shapely.geometry import box, mapping

from pipeline.fetch.cache import Cache
from pipeline.fetch.eo_search import fetch_region_scene_eo, fetch_scene_eo, find_eo
from pipeline.fetch.eo_select import EoSelectionError, EoSpec, select_eo
from pipeline.fetch.params import FetchParams
from pipeline.fetch.pc_sign import PlanetaryComputerSigner, SignedTransport, blob_parts, signed_cache, with_token
from pipeline.fetch.stacio import Transport
from pipeline.provenance import sha256_file
from pipeline.regions import Region, RegionError, validate
from servers import serve_directory
from stac_api import serve_stac_api

FAST = FetchParams(retries=0, backoff_s=0.0, timeout_s=10.0, catalog_cache_ttl_h=0, walk_workers=1)
UTM = "EPSG:32616"  # Chicago's zone
X0, Y0 = 447_000.0, 4_637_000.0  # north-west corner of the test area (metres)
PX = 0.6  # NAIP's pixel size
SCENE_TIME = dt.datetime(2023, 7, 1, 12, tzinfo=dt.UTC)
to_ll = Transformer.from_crs(UTM, "EPSG:4326", always_xy=True)


def ll_box(x0: float, y0: float, x1: float, y1: float):
    """A lon/lat polygon of the UTM rectangle (x0, y0)-(x1, y1) (corners transformed; small areas)."""
    (w, e), (s, n) = zip(*(to_ll.transform(x, y) for x, y in ((x0, y0), (x1, y1))), strict=True)
    return box(min(w, e), min(s, n), max(w, e), max(s, n))


def write_tif(path: Path, crs: str, transform: Any, width: int, height: int, seed: int, count: int = 4,
              dtype: str = "uint8") -> None:
    """A deterministic pattern: band 1 from global columns, band 2 from global rows, band 3 the seed."""
    cols = np.round((transform.c - X0) / PX).astype(int) + np.arange(width)[None, :]
    rows = np.round((Y0 - transform.f) / PX).astype(int) + np.arange(height)[:, None]
    data = np.zeros((count, height, width), dtype)
    data[0] = (cols % 251).astype(dtype)
    data[1] = (rows % 241).astype(dtype)
    data[2] = seed
    if count > 3:
        data[3] = 200
    with rasterio.open(path, "w", driver="GTiff", width=width, height=height, count=count, dtype=dtype, crs=crs,
                       transform=transform, photometric="RGB", alpha="NO") as dst:  # as NAIP: band 4 is NIR
        dst.write(data)


def eo_item(files: Path, item_id: str, x0: float, y0: float, w_px: int, h_px: int, when: str,
            cloud: float | None = None, collection: str = "naip", seed: int = 1, crs: str = UTM,
            base: str = "{base}/files") -> dict[str, Any]:
    """A NAIP-like item with a 4-band uint8 GeoTIFF asset; its footprint is the raster's."""
    if crs == UTM:
        t = from_origin(x0, y0, PX, PX)
        write_tif(files / f"{item_id}.tif", crs, t, w_px, h_px, seed)
        geom = ll_box(x0, y0 - h_px * PX, x0 + w_px * PX, y0)
    else:  # Web Mercator, ~the same ground
        to_m = Transformer.from_crs(UTM, crs, always_xy=True)
        mx0, my0 = to_m.transform(x0, y0)
        mx1, my1 = to_m.transform(x0 + w_px * PX, y0 - h_px * PX)
        res = (mx1 - mx0) / w_px
        t = from_origin(mx0, my0, res, res)
        write_tif(files / f"{item_id}.tif", crs, t, w_px, int(round((my0 - my1) / res)), seed)
        geom = ll_box(x0, y0 - h_px * PX, x0 + w_px * PX, y0)
    props: dict[str, Any] = {"datetime": when, "gsd": PX}
    if cloud is not None:
        props["eo:cloud_cover"] = cloud
    return {"type": "Feature", "stac_version": "1.0.0", "id": item_id, "collection": collection,
            "geometry": mapping(geom), "bbox": list(geom.bounds), "properties": props, "links": [],
            "assets": {"image": {"href": f"{base}/{item_id}.tif", "type": "image/tiff; application=geotiff",
                                 "roles": ["data"]},
                       "thumbnail": {"href": f"{base}/{item_id}.png", "type": "image/png", "roles": ["thumbnail"]}}}


SCENE = ll_box(X0 + 12, Y0 - 108, X0 + 228, Y0 - 12)  # inside the two half items below
AOI = ll_box(X0 - 60, Y0 - 180, X0 + 300, Y0 + 60)


def halves(files: Path, **kw: Any) -> list[dict[str, Any]]:
    """West and east items that each cover about half of SCENE (20 px overlap), a day apart."""
    return [eo_item(files, "west", X0, Y0, 200, 200, "2023-06-20T16:00:00Z", seed=10, **kw),
            eo_item(files, "east", X0 + 108, Y0, 220, 200, "2023-06-19T16:00:00Z", seed=20, **kw)]


def spec(url: str, **kw: Any) -> EoSpec:
    return EoSpec.from_section({"search": url, "window_days": 30, "collections": ["naip"], **kw})


# --------------------------------------------------------------------------- the rule (pure)


def test_rule_window_rank_and_missing_cloud(tmp_path: Path) -> None:
    """Inside the window the nearest date wins even over a lower cloud cover; an item without
    eo:cloud_cover passes max_cloud and is counted; out-of-window and other collections are removed."""
    whole = dict(x0=X0, y0=Y0, w_px=400, h_px=200)
    items = [eo_item(tmp_path, "near", when="2023-07-03T10:00:00Z", cloud=8, **whole),
             eo_item(tmp_path, "clear", when="2023-07-10T10:00:00Z", cloud=0, **whole),
             eo_item(tmp_path, "nocloud", when="2023-06-29T10:00:00Z", **whole),
             eo_item(tmp_path, "old", when="2021-07-01T10:00:00Z", cloud=0, **whole),
             eo_item(tmp_path, "s2", when="2023-07-01T10:00:00Z", cloud=0, collection="sentinel-2-l2a", **whole)]
    sel = select_eo([("x", d) for d in items], SCENE, SCENE_TIME, AOI, spec("api", max_cloud=10), "S1")
    # near: 1.9 days -> 1; nocloud: 2.1 days -> 2; clear: 8.9 days -> 8. One item covers: one is taken.
    assert [c.candidate.id for c in sel.chosen] == ["near"]
    assert sel.removed == {"window_days": 1, "collections": 1} and sel.passed_without == {"eo:cloud_cover": 1}
    assert sel.candidates == 3 and sel.covered == pytest.approx(1.0)
    # the same day: cloud cover decides, unknown cloud cover last
    same = [eo_item(tmp_path, f"d{i}", when="2023-07-01T15:00:00Z", cloud=c, **whole)
            for i, c in enumerate([5.0, None, 1.0])]
    sel = select_eo([("x", d) for d in same], SCENE, SCENE_TIME, AOI, spec("api"), "S1")
    assert [c.candidate.id for c in sel.chosen] == ["d2"]


def test_rule_greedy_cover_and_no_useless_items(tmp_path: Path) -> None:
    """Two halves are both taken (in rank order); an item inside what is covered already is skipped."""
    items = halves(tmp_path) + [eo_item(tmp_path, "inner", X0 + 20, Y0 - 20, 50, 50, "2023-06-30T00:00:00Z")]
    sel = select_eo([("x", d) for d in items], SCENE, SCENE_TIME, AOI, spec("api"), "S1")
    assert [c.candidate.id for c in sel.chosen] == ["inner", "west", "east"]
    gains = [c.gain for c in sel.chosen]
    assert sum(gains) == pytest.approx(1.0, abs=1e-6) and sel.covered == pytest.approx(1.0)
    # west first (rank), then east adds only what west lacks
    assert sel.chosen[1].candidate.coverage == pytest.approx(gains[0] + gains[1], rel=1e-6)
    # inner is ranked first (nearest date) but a later better cover does not remove it; with inner
    # last in rank it adds nothing and is skipped
    late = [dict(items[2], properties={"datetime": "2023-06-01T00:00:00Z", "gsd": PX})]
    sel = select_eo([("x", d) for d in items[:2] + late], SCENE, SCENE_TIME, AOI, spec("api"), "S1")
    assert [c.candidate.id for c in sel.chosen] == ["west", "east"]


def test_rule_gsd_filter_and_intervals(tmp_path: Path) -> None:
    """max_gsd_m removes coarse items (items without gsd pass, counted); an item whose interval contains
    the scene is 0 days away and beats an instant 1 day away."""
    whole = dict(x0=X0, y0=Y0, w_px=400, h_px=200)
    coarse = eo_item(tmp_path, "coarse", when="2023-07-01T12:00:00Z", **whole)
    coarse["properties"]["gsd"] = 1.0
    nogsd = eo_item(tmp_path, "nogsd", when="2023-07-02T13:00:00Z", **whole)
    del nogsd["properties"]["gsd"]
    span = eo_item(tmp_path, "span", when="2023-06-15T00:00:00Z", **whole)
    span["properties"].update(datetime=None, start_datetime="2023-06-01T00:00:00Z",
                              end_datetime="2023-07-31T00:00:00Z")
    sel = select_eo([("x", d) for d in (coarse, nogsd, span)], SCENE, SCENE_TIME, AOI, spec("api", max_gsd_m=0.6),
                    "S1")
    assert sel.removed == {"max_gsd_m": 1} and sel.passed_without == {"gsd": 1}
    assert [(c.candidate.id, c.candidate.days) for c in sel.chosen] == [("span", 0)]
    assert sel.chosen[0].candidate.datetime == "2023-06-01T00:00:00+00:00"


def test_rule_errors_name_the_filter(tmp_path: Path) -> None:
    items = [eo_item(tmp_path, f"c{i}", X0, Y0, 400, 200, "2023-07-02T00:00:00Z", cloud=40 + i) for i in range(3)]
    with pytest.raises(EoSelectionError, match=r"no EO item for scene S1 .*3 item\(s\) found, max_cloud 10 removed 3"):
        select_eo([("x", d) for d in items], SCENE, SCENE_TIME, AOI, spec("api", max_cloud=10), "S1")
    far = ll_box(X0 + 5000, Y0 - 5000, X0 + 5100, Y0 - 4900)
    with pytest.raises(EoSelectionError, match="scene S2: its footprint .* misses the AOI"):
        select_eo([("x", d) for d in items], far, SCENE_TIME, AOI, spec("api"), "S2")


# --------------------------------------------------------------------------- through the loopback STAC API


def test_api_search_mosaics_two_halves_exactly(tmp_path: Path) -> None:
    """pystac-client searches the loopback API; the two halves share a UTM grid, so the mosaic is an
    exact paste: every pixel equals its source's pixel at the same coordinates, west winning the overlap."""
    files = tmp_path / "files"
    files.mkdir()
    items = halves(files)
    with serve_stac_api(items, files) as api:
        rec = fetch_scene_eo(spec(api.url), SCENE, SCENE_TIME, AOI, "S1", Cache(tmp_path / "c", Transport()),
                             FAST, tmp_path / "eo.tif")
        searches = api.searches()
    q = searches[0]
    assert "collections=naip" in q[1] and "bbox=" in q[1] and "datetime=2023-06-01" in q[1], q
    assert [i["item_id"] for i in rec["items"]] == ["west", "east"]
    assert rec["covered"] == pytest.approx(1.0) and rec["gap_days"] == 10 and rec["max_gap_days"] == 11
    for i in rec["items"]:
        assert i["sha256"] == sha256_file(files / f"{i['item_id']}.tif") and i["resampled"] is False
        assert i["href"].endswith(f"/files/{i['item_id']}.tif") and i["asset"] == "image"
    assert rec["sha256"] == sha256_file(tmp_path / "eo.tif")
    with rasterio.open(tmp_path / "eo.tif") as m, rasterio.open(files / "west.tif") as w, \
            rasterio.open(files / "east.tif") as e:
        assert m.crs.to_string() == UTM and m.count == 3 and m.dtypes[0] == "uint8"
        assert (m.transform.a, m.transform.e) == (PX, -PX)
        data, mask = m.read(), m.dataset_mask()
        assert mask.all()  # the padded target lies inside the two items
        for src, seed in ((w, 10), (e, 20)):
            col0 = round((src.transform.c - m.transform.c) / PX)
            row0 = round((m.transform.f - src.transform.f) / PX)
            # where the source is the one pasted (west everywhere it exists, east beyond west)
            a = max(col0, 0) if seed == 10 else max(col0, round((w.transform.c + w.width * PX - m.transform.c) / PX))
            b = min(col0 + src.width, m.width)
            r0, r1 = max(row0, 0), min(row0 + src.height, m.height)
            assert b > a and r1 > r0
            ref = src.read([1, 2, 3], window=((r0 - row0, r1 - row0), (a - col0, b - col0)))
            assert np.array_equal(data[:, r0:r1, a:b], ref)
            assert (data[2, r0:r1, a:b] == seed).all()
    # the same inputs give the same bytes
    with serve_stac_api(items, files) as api:
        again = fetch_scene_eo(spec(api.url), SCENE, SCENE_TIME, AOI, "S1", Cache(tmp_path / "c2", Transport()),
                               FAST, tmp_path / "eo2.tif")
    assert again["sha256"] == rec["sha256"]


def test_region_entry_point(tmp_path: Path) -> None:
    """From a Region: the eo section becomes the spec, the AOI bounds the target, attribution is recorded."""
    files = tmp_path / "files"
    files.mkdir()
    with serve_stac_api(halves(files), files) as api:
        region = Region(name="r", bbox=tuple(AOI.bounds), gsd_m=0.5, sar={}, path=tmp_path / "regions/r.yaml",
                        eo={"search": api.url, "collections": ["naip"], "window_days": 30}, osm={}, root=tmp_path,
                        attribution="EO: test items, public domain")
        rec = fetch_region_scene_eo(region, SCENE, SCENE_TIME, "S1", Cache(tmp_path / "c", Transport()), FAST,
                                    tmp_path / "eo.tif")
    assert rec["attribution"] == "EO: test items, public domain" and len(rec["items"]) == 2
    assert rec["target_bounds"] == pytest.approx(SCENE.intersection(AOI).bounds)


def test_api_mosaic_other_crs_is_resampled_once(tmp_path: Path) -> None:
    """An east item in Web Mercator is warped once onto the west item's UTM grid and marked so."""
    files = tmp_path / "files"
    files.mkdir()
    items = [halves(files)[0], eo_item(files, "east", X0 + 108, Y0, 220, 200, "2023-06-19T16:00:00Z", seed=20,
                                       crs="EPSG:3857")]
    with serve_stac_api(items, files) as api:
        rec = fetch_scene_eo(spec(api.url), SCENE, SCENE_TIME, AOI, "S1", Cache(tmp_path / "c", Transport()),
                             FAST, tmp_path / "eo.tif")
    assert [(i["item_id"], i["resampled"]) for i in rec["items"]] == [("west", False), ("east", True)]
    assert rec["mosaic"]["crs"] == UTM
    with rasterio.open(tmp_path / "eo.tif") as m:
        data, mask = m.read(), m.dataset_mask()
        east_only = slice(m.width - 40, m.width - 10)
        assert (mask[10:-10, east_only] == 255).all() and (data[2, 10:-10, east_only] == 20).all()
        # west pixels are untouched copies
        with rasterio.open(files / "west.tif") as w:
            col0 = round((w.transform.c - m.transform.c) / PX)
            row0 = round((m.transform.f - w.transform.f) / PX)
            ref = w.read([1, 2, 3], window=((max(0, -row0), 100), (max(0, -col0), 150)))
            got = data[:, max(row0, 0):max(row0, 0) + ref.shape[1], max(col0, 0):max(col0, 0) + ref.shape[2]]
            assert np.array_equal(got, ref)


@pytest.mark.parametrize("methods", [("GET",), ("POST",)])
def test_api_pagination(tmp_path: Path, methods: tuple[str, ...]) -> None:
    """Seven items on pages of two: pystac-client follows the next links (GET token / POST merge body)."""
    files = tmp_path / "files"
    files.mkdir()
    items = [eo_item(files, f"i{k}", X0, Y0, 400, 200, f"2023-07-{k + 2:02d}T10:00:00Z", cloud=float(k))
             for k in range(7)]
    with serve_stac_api(items, files, page_size=2, methods=methods) as api:
        sel = find_eo(spec(api.url), SCENE, SCENE_TIME, AOI, "S1", Cache(tmp_path / "c", Transport()), FAST)
        searches = api.searches()
    assert sel.found == 7 and sel.candidates == 7 and [c.candidate.id for c in sel.chosen] == ["i0"]
    assert len(searches) == 4 and {s[0] for s in searches} == set(methods)
    if methods == ("POST",):
        assert [s[2].get("token") for s in searches] == [None, "2", "4", "6"]
        assert all(s[2]["collections"] == ["naip"] for s in searches)  # merged, not replaced


def test_api_no_item_says_which_filter(tmp_path: Path) -> None:
    """Nothing within the window: a second search without dates says how many the window removed."""
    files = tmp_path / "files"
    files.mkdir()
    items = [eo_item(files, f"y{y}", X0, Y0, 400, 200, f"{y}-07-01T10:00:00Z") for y in (2019, 2021)]
    items.append(eo_item(files, "cloudy", X0, Y0, 400, 200, "2023-07-02T10:00:00Z", cloud=80))
    with serve_stac_api(items, files) as api:
        with pytest.raises(EoSelectionError) as err:
            find_eo(spec(api.url, max_cloud=20), SCENE, SCENE_TIME, AOI, "S1", Cache(tmp_path / "c", Transport()),
                    FAST)
    msg = str(err.value)
    assert f"eo.search {api.url}: no EO item for scene S1" in msg
    assert "3 item(s) found" in msg and "max_cloud 20 removed 1" in msg
    assert "window_days 30 (within 30 days of 2023-07-01) removed 2" in msg and "730 days away" in msg


def test_static_catalog_gives_the_same_choice(tmp_path: Path) -> None:
    """A static catalog (walked, filtered here) chooses what the API chooses."""
    files = tmp_path / "cat"
    files.mkdir()
    items = halves(files, base=".") + [eo_item(files, "old", X0, Y0, 400, 200, "2020-01-01T00:00:00Z", base=".")]
    links = [{"rel": "root", "href": "./catalog.json"}]
    for it in items:
        (files / f"{it['id']}.json").write_text(json.dumps(it))
        links.append({"rel": "item", "href": f"./{it['id']}.json"})
    (files / "catalog.json").write_text(json.dumps({"type": "Catalog", "stac_version": "1.0.0", "id": "eo",
                                                    "description": "eo", "links": links}))
    with serve_directory(files) as url:
        rec = fetch_scene_eo(spec(f"{url}/catalog.json"), SCENE, SCENE_TIME, AOI, "S1",
                             Cache(tmp_path / "c", Transport()), FAST, tmp_path / "eo.tif")
    assert [i["item_id"] for i in rec["items"]] == ["west", "east"] and rec["removed"] == {"window_days": 1}
    assert rec["items"][0]["href"] == f"{url}/west.tif"


# --------------------------------------------------------------------------- Planetary Computer signing


def test_planetary_computer_signer(tmp_path: Path) -> None:
    """Tokens come from the token endpoint, one per (account, container), reused; other hrefs pass unsigned;
    a signed cache keeps unsigned keys while the request carries the token."""
    assert blob_parts("https://naipeuwest.blob.core.windows.net/naip/v002/il/x.tif") == ("naipeuwest", "naip")
    assert blob_parts("http://127.0.0.1:9/naip/x.tif") is None and blob_parts("s3://b/k") is None
    assert with_token("https://a/b?x=1", "st=1&sig=2") == "https://a/b?x=1&st=1&sig=2"
    (tmp_path / "tok/naipeuwest").mkdir(parents=True)
    (tmp_path / "tok/naipeuwest/naip").write_text(json.dumps({"msft:expiry": "2999-01-01T00:00:00Z",
                                                               "token": "st=2024&sig=abc"}))
    seen: list[str] = []
    with serve_directory(tmp_path / "tok", requests=seen) as url:
        signer = PlanetaryComputerSigner(Transport(retries=0), token_url=url)
        href = "https://naipeuwest.blob.core.windows.net/naip/v002/il/2021/x.tif"
        assert signer(href) == href + "?st=2024&sig=abc"
        assert signer(href.replace("x.tif", "y.tif")).endswith("y.tif?st=2024&sig=abc")
        assert signer("https://example.org/z.tif") == "https://example.org/z.tif"
    assert seen == ["/naipeuwest/naip"]  # one token request for both blobs
    (tmp_path / "files").mkdir()
    (tmp_path / "files/a.tif").write_bytes(b"0123456789")
    got: list[str] = []
    with serve_directory(tmp_path / "files", requests=got) as url:
        cache = Cache(tmp_path / "c", SignedTransport(retries=0, signer=lambda h: h + "?sig=1"))
        path, digest, n = cache.get(f"{url}/a.tif")
    assert got == ["/a.tif?sig=1"] and n == 10 and "sig" not in path.name
    assert json.loads(path.with_name(path.name + ".json").read_text())["href"] == f"{url}/a.tif"
    plain = Cache(tmp_path / "c", Transport(retries=0))
    assert signed_cache(plain, None) is plain
    assert isinstance(signed_cache(plain, "planetary-computer").transport, SignedTransport)


# --------------------------------------------------------------------------- region schema for eo.search


BASE = {"name": "x", "aoi": {"bbox": [-87.7, 41.8, -87.6, 41.9]}, "gsd_m": 0.5,
        "sar": {"stac": "s3://capella-open-data/stac/catalog.json"}, "osm": {"overpass": True}}


@pytest.mark.parametrize("eo, error", [
    ({"search": "https://x/api", "collections": ["naip"]}, "eo.window_days: required with eo.search"),
    ({"search": "https://x/api", "window_days": 30, "datetime": "2023-01-01"}, "eo.datetime: not used with eo.search"),
    ({"search": "https://x/api", "window_days": 30, "zoom": 18}, "eo.zoom: only meaningful with eo.tiles"),
    ({"tiles": "t/{z}/{x}/{y}.png", "datetime": "2023-01-01", "max_cloud": 5},
     "eo.max_cloud: only meaningful with eo.search, not with eo.tiles"),
    ({"search": "https://x/api", "window_days": 30, "tiles": "t/{z}/{x}/{y}.png"}, "give exactly one source"),
    ({"search": "https://x/api", "window_days": 0}, "eo.window_days: 0 is less than or equal to the minimum"),
    ({"search": "https://x/api", "window_days": 30, "max_cloud": 120}, "eo.max_cloud: 120 is greater than"),
    ({"search": "https://x/api", "window_days": 30, "sign": "aws"}, "eo.sign: 'aws' is not one of"),
    ({"search": "https://x/api", "window_days": 30, "collections": []}, "eo.collections"),
])
def test_region_eo_search_schema(eo: dict[str, Any], error: str) -> None:
    with pytest.raises(RegionError, match=error.replace("(", r"\(")):
        validate({**BASE, "eo": eo}, "regions/x.yaml")


def test_region_eo_search_valid() -> None:
    validate({**BASE, "eo": {"search": "https://x/api", "collections": ["naip"], "window_days": 730,
                             "max_cloud": 10, "max_gsd_m": 0.6, "asset": "image", "bands": [1, 2, 3],
                             "sign": "planetary-computer"}}, "regions/x.yaml")
