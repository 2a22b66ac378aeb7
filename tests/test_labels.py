"""Labels: legend, classification, rasterisation (alignment, priority, windows) and the stage output.

The fixture check recomputes the label map through a different code path: tags parsed from
GDAL's hstore text (Helsinki) or read by osmnx (West Oakland), matching written here from the
legend's raw YAML, polygon membership by shapely.contains_xy on pixel centres and line
membership by true distance in metres from each pixel centre (no buffering, no rasterio).
The open sea is recomputed as a raster flood fill: coastline pixels are walls, connected
regions of the rest are water when the pixels just right of the coastline fall in them
(no polygonize, no line merging, no snapping).
"""

from __future__ import annotations

import json
import re
import warnings
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pyproj
import pytest
import rasterio
import shapely
import yaml
import geopandas as gpd
from affine import Affine
from shapely.geometry import LineString, Polygon, box

from pipeline.grid import grid_for_bbox, utm_crs
from pipeline.labels.classify import classify, parse_width, sea_features
from pipeline.labels.params import LabelsParams
from pipeline.labels.rasterize import rasterize_classes
from pipeline.labels.stage import LabelsError, label_region, render_png
from pipeline.layout import GridFiles, LabelFiles, SourceFiles
from pipeline.legend import LegendError, load_legend, parse_legend
from pipeline.osm import OsmParams, read_osm
from test_osm import overpass_server  # noqa: F401 - the loopback Overpass server fixture

HELSINKI_BBOX = (24.935, 60.164, 24.953, 60.179)
OAKLAND_BBOX = (-122.30258, 37.80615, -122.29825, 37.80914)




def _gdf(rows: list[dict], kinds: list[str]) -> gpd.GeoDataFrame:
    geoms = [r.pop("geometry") for r in rows]
    keys = sorted({k for r in rows for k in r})
    data = {k: [r.get(k) for r in rows] for k in keys}
    return gpd.GeoDataFrame({"osm_id": [f"w{i}" for i in range(len(rows))], "kind": kinds, **data},
                            geometry=geoms, crs="EPSG:4326")


# --------------------------------------------------------------------------- legend


def test_legend_has_25_classes_with_roles_and_colours():
    legend = load_legend()
    assert [c.id for c in legend.classes] == list(range(25))
    assert legend.ids_with_role("residential") == [2]
    assert legend.ids_with_role("nonresidential") == [3, 4, 5]
    assert legend.by_id(1).priority > max(c.priority for c in legend.classes if c.id != 1)  # buildings last
    assert legend.palette().shape == (256, 3)
    assert len({c.colour for c in legend.classes}) == 25


def test_legend_errors_name_the_class_and_field(tmp_path):
    raw = yaml.safe_load(Path(load_legend().path).read_text())
    raw["classes"][3]["role"] = "urbanish"
    with pytest.raises(LegendError, match=r"classes\[3\] \(commercial_retail\): role 'urbanish'"):
        parse_legend(raw, "x.yaml")
    raw = yaml.safe_load(Path(load_legend().path).read_text())
    del raw["classes"][9]["rules"][0]["width_m"]
    with pytest.raises(LegendError, match="local_road.*no width_m"):
        parse_legend(raw, "x.yaml")
    with pytest.raises(LegendError, match="no such legend file"):
        load_legend(tmp_path / "missing.yaml")


# --------------------------------------------------------------------------- classify


def test_exclusions_whitelist_and_widths():
    lon0, lat0 = 24.94, 60.17
    line = LineString([(lon0, lat0), (lon0 + 0.002, lat0)])  # ~111 m east-west
    rows = [
        {"highway": "residential", "geometry": line},                       # default 6 m
        {"highway": "residential", "width": "9 m", "geometry": line},       # width tag
        {"highway": "residential", "lanes": "3", "geometry": line},         # 3 x 3.5 m
        {"highway": "primary", "tunnel": "yes", "geometry": line},           # tunnel: dropped
        {"highway": "primary", "layer": "-1", "geometry": line},             # underground: dropped
        {"landuse": "steps", "geometry": box(lon0, lat0, lon0 + 0.001, lat0 + 0.001)},  # junk: dropped
        {"landuse": "residential", "geometry": box(lon0, lat0, lon0 + 0.001, lat0 + 0.001)},
        {"power": "substation", "geometry": box(lon0, lat0, lon0 + 0.001, lat0 + 0.001).exterior},  # closed way
    ]
    out = classify(_gdf(rows, ["line"] * 5 + ["area", "area", "line"]))
    assert sorted(out["class_id"].tolist()) == [2, 4, 9, 9, 9]
    roads = out[out["class_id"] == 9].sort_values("width_m")
    assert roads["width_m"].tolist() == [6.0, 9.0, 10.5]
    utm = roads.to_crs(utm_crs(lon0, lat0))
    length = roads["length_m"].to_numpy()
    # Round-capped buffer area = L*w + pi*(w/2)^2 (quad_segs=4 polygonises the caps slightly small).
    expect = length * roads["width_m"] + np.pi * (roads["width_m"] / 2) ** 2
    np.testing.assert_allclose(utm.area, expect, rtol=0.01)
    assert out["priority"].is_monotonic_increasing


@pytest.mark.parametrize(
    "text,metres", [("5", 5.0), ("3,5 m", 3.5), ("10 ft", 3.048), ("wide", np.nan), (None, np.nan)]
)
def test_parse_width(text, metres):
    np.testing.assert_allclose(parse_width(text), metres)


# --------------------------------------------------------------------------- rasterise


def test_alignment_with_region_grid_and_priority():
    """A polygon whose edges sit on pixel edges burns exactly those pixels; higher priority on top."""
    grid = grid_for_bbox((24.94, 60.17, 24.942, 60.171), 1.0)
    t = grid.transform

    def px_box(c0, r0, c1, r1):
        (x0, y0), (x1, y1) = t @ (c0, r0), t @ (c1, r1)
        return box(min(x0, x1), min(y0, y1), max(x0, x1), max(y0, y1))

    classified = gpd.GeoDataFrame(
        {"class_id": np.array([1, 14], np.uint8), "priority": [100, 40]},
        geometry=[px_box(10, 20, 15, 23), px_box(5, 5, 40, 30)], crs="EPSG:4326")
    valid = np.ones(grid.shape, bool)
    valid[:, :3] = False
    for block in (7, 2048):  # windows must not shift anything
        arr = rasterize_classes(classified, grid.crs, grid.transform, grid.shape, valid=valid, block=block, workers=2)
        expect = np.zeros(grid.shape, np.uint8)
        expect[5:30, 5:40] = 14
        expect[20:23, 10:15] = 1
        expect[:, :3] = 255
        np.testing.assert_array_equal(arr, expect)


def test_rasterise_on_utm_grid_matches_projected_geometry():
    """Any target CRS: burn a lon/lat polygon onto a 1 m UTM grid; pixels match its projected outline."""
    poly = box(24.9400, 60.1700, 24.9410, 60.1705)
    crs = utm_crs(24.94, 60.17)
    proj = gpd.GeoSeries([poly], crs="EPSG:4326").to_crs(crs).iloc[0]
    x0, y0, x1, y1 = proj.bounds
    transform = Affine(1.0, 0, np.floor(x0) - 10, 0, -1.0, np.ceil(y1) + 10)
    shape = (int(np.ceil(y1 - y0)) + 20, int(np.ceil(x1 - x0)) + 20)
    classified = gpd.GeoDataFrame({"class_id": np.array([19], np.uint8), "priority": [22]}, geometry=[poly],
                                  crs="EPSG:4326")
    arr = rasterize_classes(classified, crs, transform, shape, block=16, workers=2)
    rows, cols = np.mgrid[0 : shape[0], 0 : shape[1]]
    xs, ys = transform @ (cols + 0.5, rows + 0.5)
    inside = shapely.contains_xy(proj, xs, ys)
    assert (arr == 19).sum() == pytest.approx(proj.area, rel=0.01)
    assert np.mean((arr == 19) == inside) > 0.999


# --------------------------------------------------------------------------- independent check on real extracts

_HSTORE = re.compile(r'"((?:[^"\\]|\\.)*)"=>"((?:[^"\\]|\\.)*)"')


def _independent_sea(features: list[tuple[dict, object, bool]], grid) -> np.ndarray:
    """Sea mask by flood fill: coastline pixels are walls; a region is sea when the points 6 m to the
    right of the coastline (OSM: water on the right) fall in it more than those 6 m to the left."""
    from scipy import ndimage

    h, w = grid.shape
    t = grid.transform
    coasts = []
    for tags, geom, is_poly in features:
        if tags.get("natural") == "coastline":
            parts = getattr(geom, "geoms", [geom])
            coasts += [np.asarray(p.exterior.coords if is_poly else p.coords) for p in parts]
    wall = np.zeros((h, w), bool)
    step = min(abs(t.a), abs(t.e)) / 4
    for xy in coasts:
        dense = shapely.get_coordinates(shapely.segmentize(LineString(xy), step))
        c = np.floor((dense[:, 0] - t.c) / t.a).astype(int)
        r = np.floor((dense[:, 1] - t.f) / t.e).astype(int)
        ok = (r >= 0) & (r < h) & (c >= 0) & (c < w)
        wall[r[ok], c[ok]] = True
    regions, n = ndimage.label(~wall)
    crs = utm_crs(t.c + w * t.a / 2, t.f + h * t.e / 2)
    fwd = pyproj.Transformer.from_crs("EPSG:4326", crs, always_xy=True)
    votes = np.zeros(n + 1)
    for xy in coasts:
        ux, uy = fwd.transform(xy[:, 0], xy[:, 1])
        dx, dy = np.diff(ux), np.diff(uy)
        length = np.hypot(dx, dy)
        keep = length > 0
        mx, my = (ux[:-1] + ux[1:]) / 2, (uy[:-1] + uy[1:]) / 2
        for sign in (1, -1):  # right of the direction (dy, -dx): water
            px, py = mx + sign * 6.0 * dy / np.maximum(length, 1e-9), my - sign * 6.0 * dx / np.maximum(length, 1e-9)
            lon, lat = fwd.transform(px, py, direction="INVERSE")
            c = np.floor((lon - t.c) / t.a).astype(int)
            r = np.floor((lat - t.f) / t.e).astype(int)
            ok = keep & (r >= 0) & (r < h) & (c >= 0) & (c < w)
            np.add.at(votes, regions[r[ok], c[ok]], sign * length[ok])
    water = votes > 0
    water[0] = False  # label 0 = the walls
    # Wall pixels take the region of the nearest non-wall pixel.
    _, (ri, ci) = ndimage.distance_transform_edt(wall, return_indices=True)
    return water[regions[ri, ci]]


def _independent_map(
    features: list[tuple[dict, object, bool]], grid, raw_legend: dict, sea: np.ndarray | None = None
) -> np.ndarray:
    """Label map from (tags, geometry, is_polygon) without buffering or rasterio: pixel-centre tests."""
    h, w = grid.shape
    t = grid.transform
    lon = t.c + (np.arange(w) + 0.5) * t.a
    lat = t.f + (np.arange(h) + 0.5) * t.e
    lon2, lat2 = np.meshgrid(lon, lat)
    crs = utm_crs(float(lon.mean()), float(lat.mean()))
    to_utm = pyproj.Transformer.from_crs("EPSG:4326", crs, always_xy=True)
    ux, uy = to_utm.transform(lon2, lat2)
    excl = {k: {str(v) for v in vs} for k, vs in raw_legend["exclude"].items()}
    items = []
    for cls in raw_legend["classes"]:
        for rule in cls["rules"]:
            vals = None if rule["values"] == "*" else {str(v) for v in rule["values"]}
            widths = rule.get("width_m", {})
            for tags, geom, is_poly in features:
                v = tags.get(rule["key"])
                if v is None or (vals is not None and v not in vals) or v in set(map(str, rule.get("except", []))):
                    continue
                if any(tags.get(k) in set(vs) for k, vs in (rule.get("unless") or {}).items()):
                    continue
                if any(tags.get(k) in vs for k, vs in excl.items()):
                    continue
                try:
                    if float(tags.get("layer", "0")) < 0:
                        continue
                except ValueError:
                    pass
                closed = (not is_poly and geom.geom_type == "LineString" and geom.is_closed
                          and len(geom.coords) >= 4 and tags.get("area") != "no")
                if rule.get("geometry", "area") == "area" and (is_poly or closed):
                    g = geom if is_poly else Polygon(geom.coords).buffer(0)
                    items.append((cls["priority"], cls["id"], "poly", g, 0.0))
                elif rule.get("geometry") == "any" and is_poly:
                    items.append((cls["priority"], cls["id"], "poly", geom, 0.0))
                elif rule.get("geometry") in ("line", "any") and not is_poly:
                    m = re.match(r"^\s*([0-9.]+)\s*m?\s*$", tags.get("width") or "")
                    lanes = re.findall(r"[0-9]+", tags.get("lanes") or "")
                    if m and float(m.group(1)) > 0:
                        width = float(m.group(1))
                    elif lanes:
                        width = 3.5 * max(int(x) for x in lanes)
                    else:
                        width = widths.get(v, widths.get("*")) if isinstance(widths, dict) else widths
                    items.append((cls["priority"], cls["id"], "line", geom, min(max(width, 0.5), 100.0)))
    if sea is not None and raw_legend.get("sea"):
        items.append((raw_legend["sea"]["priority"], raw_legend["sea"]["class"], "mask", sea, 0.0))
    items.sort(key=lambda it: (it[0], it[1]))
    out = np.zeros((h, w), np.uint8)
    for _, cid, kind, geom, width in items:
        if kind == "mask":
            out[geom] = cid
            continue
        if kind == "poly":
            x0, y0, x1, y1 = geom.bounds
        else:
            x0, y0, x1, y1 = geom.buffer(width / 80000.0 * 2).bounds  # generous degree pad, >= width
        c0, c1 = np.searchsorted(lon, [x0, x1])
        r0, r1 = np.searchsorted(-lat, [-y1, -y0])
        if c1 <= c0 or r1 <= r0:
            continue
        sl = np.s_[r0:r1, c0:c1]
        if kind == "poly":
            mask = shapely.contains_xy(geom, lon2[sl], lat2[sl])
        else:
            g = shapely.transform(geom, lambda xy: np.column_stack(to_utm.transform(xy[:, 0], xy[:, 1])))
            mask = shapely.distance(g, shapely.points(ux[sl], uy[sl])) <= width / 2
        out[sl][mask] = cid
    return out


def _shares(arr: np.ndarray) -> np.ndarray:
    return np.bincount(arr.ravel(), minlength=256)[:25] / arr.size


def _pipeline_shares(path: Path, bbox, gsd: float) -> np.ndarray:
    grid = grid_for_bbox(bbox, gsd)
    classified = classify(read_osm(path, None))
    return _shares(rasterize_classes(classified, grid.crs, grid.transform, grid.shape, workers=2)), grid


def test_helsinki_shares_agree_with_independent_gdal_hstore_path(fixtures):
    import pyogrio

    path = fixtures / "osm" / "Helsinki.osm.pbf"
    ours, grid = _pipeline_shares(path, HELSINKI_BBOX, 2.0)
    feats = []
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for layer, is_poly in (("multipolygons", True), ("lines", False)):
            df = pyogrio.read_dataframe(path, layer=layer, on_invalid="ignore")  # hstore text, not JSON
            skip = {"osm_id", "osm_way_id", "other_tags", "geometry", "z_order"}
            for rec in df.itertuples(index=False):
                geom = rec.geometry
                if geom is None or geom.is_empty:
                    continue
                if not geom.is_valid:
                    geom = geom.buffer(0) if is_poly else geom
                    if geom.is_empty:
                        continue
                tags = {k: str(v) for k, v in rec._asdict().items() if k not in skip and isinstance(v, str)}
                tags.update(dict(_HSTORE.findall(rec.other_tags if isinstance(rec.other_tags, str) else "")))
                feats.append((tags, geom, is_poly))
    raw = yaml.safe_load(Path(load_legend().path).read_text())
    theirs = _shares(_independent_map(feats, grid, raw, _independent_sea(feats, grid)))
    diff = np.abs(ours - theirs)
    assert diff.max() < 0.01, {i: (round(ours[i], 4), round(theirs[i], 4)) for i in np.flatnonzero(diff > 0.005)}
    assert ours[1] > 0.2 and ours[0] < 0.5  # sanity: central Helsinki is a third buildings
    assert ours[22] > 0.04  # the sea of Kaisaniemenlahti (the bay in the north-east), not background


def test_west_oakland_shares_agree_with_independent_osmnx_path(fixtures):
    import osmnx as ox

    path = fixtures / "osm" / "West-Oakland.osm.bz2"
    ours, grid = _pipeline_shares(path, OAKLAND_BBOX, 1.0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        gdf = ox.features_from_xml(path)
    gdf = gdf[gdf.index.get_level_values("element") != "node"]
    feats = []
    for (_, _), rec in gdf.iterrows():
        tags = {k: str(v) for k, v in rec.items() if k != "geometry" and isinstance(v, str)}
        geom = rec.geometry
        feats.append((tags, geom, geom.geom_type in ("Polygon", "MultiPolygon")))
    theirs = _shares(_independent_map(feats, grid, yaml.safe_load(Path(load_legend().path).read_text())))
    diff = np.abs(ours - theirs)
    assert diff.max() < 0.01, {i: (round(ours[i], 4), round(theirs[i], 4)) for i in np.flatnonzero(diff > 0.005)}
    assert ours[2] > 0.1  # the one residential polygon


# --------------------------------------------------------------------------- stage


def make_grid_dir(path: Path, bbox, gsd: float) -> object:
    """A tiny synthetic grid stage output: SAR NaN in the left 10 columns, EO invalid in the top 8 rows."""
    grid = grid_for_bbox(bbox, gsd)
    path.mkdir(parents=True, exist_ok=True)
    (path / "grid.json").write_text(grid.to_json())
    prof = {"driver": "GTiff", "width": grid.width, "height": grid.height, "crs": grid.crs, "transform": grid.transform}
    sar = np.full(grid.shape, -10.0, np.float32)
    sar[:, :10] = np.nan
    with rasterio.open(path / "sar_db.tif", "w", count=1, dtype="float32", **prof) as dst:
        dst.write(sar, 1)
    eo = np.full((4, *grid.shape), 100, np.uint8)
    eo[3] = 255
    eo[3, :8, :] = 0
    with rasterio.open(path / "eo.tif", "w", count=4, dtype="uint8", **prof) as dst:
        dst.write(eo)
    return grid


def put_source(source_dir: Path, region: SimpleNamespace, osm: OsmParams | None = None) -> dict:
    """What the fetch stage leaves for labels: source/osm.<suffixes> and provenance.json's osm record."""
    from pipeline.atomic import write_json
    from pipeline.fetch.cache import Cache
    from pipeline.fetch.osm import fetch_osm
    from pipeline.fetch.stacio import Transport
    from pipeline.layout import SourceFiles

    source_dir.mkdir(parents=True, exist_ok=True)
    cache = Cache(source_dir.parent / "cache", Transport())
    rec = fetch_osm(region, cache, osm or OsmParams(), SourceFiles(source_dir))
    write_json(source_dir / "provenance.json", {"osm": rec})
    return rec


SMALL_BLOCKS = LabelsParams(block_size=256, tile_size=256)


def run_labels(tmp: Path, region: SimpleNamespace, p: LabelsParams = SMALL_BLOCKS, osm: OsmParams = OsmParams(),
               out: str = "labels") -> Path:
    """label_region on the tmp/source and tmp/grid that put_source and make_grid_dir write."""
    return label_region(region, SourceFiles(tmp / "source"), GridFiles(tmp / "grid"), LabelFiles(tmp / out), p, osm)


def _region(fixtures: Path, bbox) -> SimpleNamespace:
    return SimpleNamespace(
        name="west-oakland", bbox=bbox, gsd_m=1.0, aoi=box(*bbox), path=Path("regions/west-oakland.yaml"),
        osm={"file": "West-Oakland.osm.bz2"}, resolve=lambda href: str(fixtures / "osm" / href))


def test_label_region_outputs(tmp_path, fixtures):
    grid = make_grid_dir(tmp_path / "grid", OAKLAND_BBOX, 1.0)
    region = _region(fixtures, OAKLAND_BBOX)
    put_source(tmp_path / "source", region)
    out = run_labels(tmp_path, region)
    assert sorted(p.name for p in out.iterdir()) == ["labels.json", "labels.png", "labels.tif", "zones.tif"]
    with rasterio.open(out / "labels.tif") as src:
        lab = src.read(1)
        assert src.transform.almost_equals(grid.transform) and src.nodata == 255 and src.profile["tiled"]
    with rasterio.open(out / "zones.tif") as src:
        zones = src.read(1)
    # a bbox AOI: every pixel is labelled (each patch masks where its own scene has no data)
    assert (lab != 255).all()
    assert set(np.unique(zones)) <= {0, 1, 2} and (zones == 1).any()
    report = json.loads((out / "labels.json").read_text())
    valid = lab != 255
    assert report["shares"]["valid_pixels"] == int(valid.sum())
    for c in report["shares"]["classes"]:
        assert c["pixels"] == int((lab == c["id"]).sum())
    ur = report["urban_rural"]
    assert ur["class"] == "urban" and ur["fallback_used"] and ur["landuse_coverage"] < 0.5
    assert report["sea"]["status"] == "no_coastline" and report["sea"]["grid_share"] == 0.0  # inland
    assert "OpenStreetMap contributors" in report["attribution"] and report["osm"]["source"] == "West-Oakland.osm.bz2"
    # zones.tif share of residential equals the vector share within a pixel-edge tolerance
    assert np.mean(zones == 1) == pytest.approx(ur["residential_share"], abs=0.01)
    # same inputs -> same bytes
    out2 = run_labels(tmp_path, region, out="labels2")
    for name in ("labels.tif", "zones.tif", "labels.json", "labels.png"):
        assert (out / name).read_bytes() == (out2 / name).read_bytes(), name


def test_label_region_helsinki_sea_is_water(tmp_path, fixtures):
    """The harbour bay north-east of the station: water in labels.tif and reported in labels.json."""
    bbox = (24.939, 60.169, 24.951, 60.178)
    grid = make_grid_dir(tmp_path / "grid", bbox, 2.0)
    region = SimpleNamespace(name="helsinki", bbox=bbox, gsd_m=2.0, aoi=box(*bbox), path=Path("regions/h.yaml"),
                             osm={"file": "Helsinki.osm.pbf"}, resolve=lambda href: str(fixtures / "osm" / href))
    put_source(tmp_path / "source", region)
    out = run_labels(tmp_path, region)
    with rasterio.open(out / "labels.tif") as src:
        lab = src.read(1)
    report = json.loads((out / "labels.json").read_text())
    sea = report["sea"]
    assert sea["status"] == "ok" and sea["water_faces"] >= 1 and sea["area_km2"] > 0

    def at(lon: float, lat: float) -> int:
        r, c = rasterio.transform.rowcol(grid.transform, lon, lat)
        return int(lab[r, c])

    assert at(24.9480, 60.1765) == 22  # Kaisaniemenlahti
    assert at(24.9410, 60.1710) not in (0, 22, 255)  # the central station block: land, mapped
    water = (lab == 22).sum() / (lab != 255).sum()
    assert 0.05 < sea["grid_share"] < water + 0.01  # the sea is most of class 22 here, bridges on top of it
    share22 = next(c["share"] for c in report["shares"]["classes"] if c["id"] == 22)
    assert share22 == pytest.approx(water, abs=1e-6)


def test_label_region_broken_coastline_is_reported_not_flooded(tmp_path):
    """A coastline that stops in the middle of the region: no sea, labels.json says why."""
    bbox = (24.940, 60.170, 24.944, 60.172)
    make_grid_dir(tmp_path / "grid", bbox, 2.0)
    nodes = {1: (24.930, 60.171), 2: (24.942, 60.171), 3: (24.9405, 60.1705), 4: (24.9415, 60.1705),
             5: (24.9415, 60.1712), 6: (24.9405, 60.1712)}
    xml = ['<?xml version="1.0"?>', '<osm version="0.6" copyright="OpenStreetMap and contributors">']
    xml += [f'<node id="{i}" lat="{lat}" lon="{lon}"/>' for i, (lon, lat) in nodes.items()]
    xml += ['<way id="10"><nd ref="1"/><nd ref="2"/><tag k="natural" v="coastline"/></way>',
            '<way id="11"><nd ref="3"/><nd ref="4"/><nd ref="5"/><nd ref="6"/><nd ref="3"/>'
            '<tag k="building" v="yes"/></way>', "</osm>"]
    (tmp_path / "coast.osm").write_text("\n".join(xml))
    region = SimpleNamespace(name="broken", bbox=bbox, gsd_m=2.0, aoi=box(*bbox), path=tmp_path / "b.yaml",
                             osm={"file": "coast.osm"}, resolve=lambda href: str(tmp_path / href))
    put_source(tmp_path / "source", region)
    out = run_labels(tmp_path, region)
    sea = json.loads((out / "labels.json").read_text())["sea"]
    assert sea["status"] == "skipped" and "ends" in sea["reason"] and sea["grid_share"] == 0.0
    assert sea["at"] == pytest.approx([24.942, 60.171], abs=1e-6)
    with rasterio.open(out / "labels.tif") as src:
        lab = src.read(1)
    assert not (lab == 22).any() and (lab == 1).any()
    # The same coastline in an extract that declares it stops 5 m east of the end: cut by the
    # extract, not broken. It closes along the declared edge (sea south of it, right of east).
    xml.insert(2, '<bounds minlon="24.930" minlat="60.1700" maxlon="24.94209" maxlat="60.1720"/>')
    (tmp_path / "cut.osm").write_text("\n".join(xml))
    sea, result = sea_features(read_osm(tmp_path / "cut.osm", (24.939, 60.169, 24.945, 60.173)))
    assert result.ok and result.bounds == (24.939, 60.17, 24.94209, 60.172) and result.snapped_ends == 1
    union = shapely.union_all(sea.geometry.values)
    assert union.contains(shapely.Point(24.941, 60.1705)) and not union.contains(shapely.Point(24.941, 60.1715))


def test_label_region_rejects_grid_mismatch(tmp_path, fixtures):
    make_grid_dir(tmp_path / "grid", OAKLAND_BBOX, 1.0)
    other = grid_for_bbox(OAKLAND_BBOX, 2.0)
    (tmp_path / "grid" / "grid.json").write_text(other.to_json())
    put_source(tmp_path / "source", _region(fixtures, OAKLAND_BBOX))
    with pytest.raises(LabelsError, match=r"grid.json: .* is not the grid of region .*re-run the grid stage"):
        run_labels(tmp_path, _region(fixtures, OAKLAND_BBOX), LabelsParams())
    assert not (tmp_path / "labels").exists()


def test_label_region_needs_the_fetched_osm(tmp_path, fixtures):
    """No source/ osm record (a source/ from before fetch gathered OSM), or its file missing: a clear error."""
    make_grid_dir(tmp_path / "grid", OAKLAND_BBOX, 1.0)
    region = _region(fixtures, OAKLAND_BBOX)
    with pytest.raises(LabelsError, match=r"source/provenance.json: missing; run the fetch stage"):
        run_labels(tmp_path, region, LabelsParams())
    (tmp_path / "source").mkdir()
    (tmp_path / "source" / "provenance.json").write_text(json.dumps({"sar": {}, "eo": {}}))
    with pytest.raises(LabelsError, match=r"provenance.json: no 'osm' record.*re-run the fetch stage"):
        run_labels(tmp_path, region, LabelsParams())
    rec = put_source(tmp_path / "source", region)
    (tmp_path / "source" / rec["file"]).unlink()
    with pytest.raises(LabelsError, match=r"source/osm.osm.bz2: missing; provenance.json names it"):
        run_labels(tmp_path, region, LabelsParams())
    assert not (tmp_path / "labels").exists()


def test_label_region_from_fetched_overpass_answer(tmp_path, overpass_server):  # noqa: F811
    """An Overpass region: labels come from source/osm.osm offline; a read window beyond what was asked is refused."""
    from test_osm import BBOX, _Overpass

    make_grid_dir(tmp_path / "grid", BBOX, 1.0)
    region = SimpleNamespace(name="op", bbox=BBOX, gsd_m=1.0, aoi=box(*BBOX), path=tmp_path / "op.yaml",
                             osm={"overpass": True}, root=tmp_path)
    rec = put_source(tmp_path / "source", region, OsmParams(overpass_url=overpass_server, overpass_timeout=5,
                                                            cache_dir="osmnx"))
    assert rec["kind"] == "overpass" and len(_Overpass.queries) == 1
    # offline from here: the server is not asked again, whatever the osm params say about it
    out = run_labels(tmp_path, region, osm=OsmParams(overpass_url="http://127.0.0.1:9/api"))
    report = json.loads((out / "labels.json").read_text())
    assert len(_Overpass.queries) == 1
    assert report["osm"]["kind"] == "overpass" and report["osm"]["source"] == "overpass"
    assert report["osm"]["sha256"] == rec["sha256"] and report["osm"]["features"] == 3
    assert report["attribution"] == "(c) OpenStreetMap contributors, ODbL 1.0"
    with rasterio.open(out / "labels.tif") as src:
        lab = src.read(1)
    grid = grid_for_bbox(BBOX, 1.0)
    r, c = rasterio.transform.rowcol(grid.transform, 24.9403, 60.17025)  # inside building way 100
    assert lab[r, c] == 1 and (lab == 2).any()  # the building, the residential multipolygon
    wider = OsmParams(read_margin_m=200.0)  # wider than the window fetched with the default 60 m
    with pytest.raises(LabelsError, match=r"read window .* not inside the Overpass query bbox.*re-run the fetch"):
        run_labels(tmp_path, region, osm=wider, out="labels2")


def test_procedural_osm_file_is_not_credited_to_openstreetmap(tmp_path):
    """The demo's procedural rural file says it is not OSM data: labels.json, tags and PNG credit it as it says."""
    from pipeline.demo.rural import PROCEDURAL_NOTICE, write_procedural_osm

    bbox = (17.585, 59.905, 17.589, 59.907)
    make_grid_dir(tmp_path / "grid", bbox, 2.0)
    osm = write_procedural_osm(tmp_path / "rural.osm", bbox, 20.0, 7)
    region = SimpleNamespace(name="rural", bbox=bbox, gsd_m=2.0, aoi=box(*bbox), path=tmp_path / "rural.yaml",
                             osm={"file": "rural.osm"}, resolve=lambda href: str(tmp_path / href))
    put_source(tmp_path / "source", region)
    out = run_labels(tmp_path, region)
    report = json.loads((out / "labels.json").read_text())
    assert report["attribution"] == PROCEDURAL_NOTICE and report["licence"] == "unknown"
    assert "OpenStreetMap" not in report["attribution"] and osm.is_file()
    with rasterio.open(out / "labels.tif") as a, rasterio.open(out / "zones.tif") as z:
        assert a.tags()["attribution"] == z.tags()["attribution"] == PROCEDURAL_NOTICE
    legend = load_legend()
    png = (out / "labels.png").read_bytes()
    assert png == render_png(out / "labels.tif", legend, 1600, "rural", PROCEDURAL_NOTICE)
    assert png != render_png(out / "labels.tif", legend, 1600, "rural")  # default: the OSM credit
