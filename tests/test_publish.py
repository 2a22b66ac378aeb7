"""Tests for pipeline.publish (index, stats, stac, stage): GeoParquet index, statistics, plots and the STAC collection.

The patch stores are written with the project's own writer (pipeline.store), on real region
grids (pipeline.grid) with the project's real legend. Image arrays are
small and are corrupted before publishing, to prove publish reads metadata only.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import zarr

from pipeline.grid import grid_for_bbox
from pipeline.layout import DatasetFiles, RegionLayout
from pipeline.legend import load_legend
from pipeline.params import ParamsError, parse_section
from pipeline.publish.index import PublishError, legend_classes, read_store_meta
from pipeline.publish.browser import sample_patches
from pipeline.publish.params import PublishParams
from pipeline.publish.stac import check_stac
from pipeline.publish.stage import publish
from pipeline.publish.stats import geodesic_area_km2
from pipeline.store import create_store, write_meta, write_store

P, STRIDE = 32, 16  # patch size and stride in pixels (small, so image arrays stay tiny)
N_CLASSES = 25


def write_test_store(
    path: Path,
    region: str,
    bbox: tuple[float, float, float, float],
    gsd_m: float,
    *,
    seed: int,
    urban: str,
    sar_datetime: str,
    eo_datetime: str,
    provider: str = "capella",
    drop: set[tuple[int, int]] = frozenset(),
    extra_attrs: dict | None = None,
    images: bool = True,
) -> dict:
    """A patch store written by pipeline.store with patches on a stride grid; returns the per-patch arrays.

    ``images=False`` declares sar/eo/label without writing a chunk (for large metadata-only benchmarks).
    """
    grid = grid_for_bbox(bbox, gsd_m)
    rng = np.random.default_rng(seed)
    nr, nc = (grid.height - P) // STRIDE + 1, (grid.width - P) // STRIDE + 1
    # leak-free like a real store: train left of the middle, val / test right of it (top / bottom); a patch
    # straddling a split boundary is dropped, so no two patches of different splits share a pixel
    half_c, half_r = grid.width // 2 // STRIDE * STRIDE, grid.height // 2 // STRIDE * STRIDE  # on the stride lattice

    def split_of(i: int, j: int) -> str | None:
        c0, r0 = j * STRIDE, i * STRIDE
        if c0 + P <= half_c:
            return "train"
        if c0 < half_c:
            return None
        return "val" if r0 + P <= half_r else ("test" if r0 >= half_r else None)

    cells = [(i, j) for i in range(nr) for j in range(nc) if (i, j) not in drop and split_of(i, j)]
    n = len(cells)
    rows = np.array([i * STRIDE for i, _ in cells], np.int32)
    cols = np.array([j * STRIDE for _, j in cells], np.int32)
    lon_min, lat_max = grid.pixel_to_lonlat(cols.astype(float), rows.astype(float))
    lon_max, lat_min = grid.pixel_to_lonlat(cols + float(P), rows + float(P))
    lon, lat = grid.pixel_to_lonlat(cols + P / 2, rows + P / 2)
    if images:
        labels = rng.integers(0, N_CLASSES, size=(n, P, P)).astype(np.uint8)
        labels[:, : P // 4, : P // 4] = 255  # a nodata corner
        labels[rng.random(n) < 0.3, P // 2 :, :] = 1  # buildings dominate some patches
        hist = np.stack([np.bincount(lab[lab != 255], minlength=N_CLASSES) for lab in labels]).astype(np.int32)
    else:
        labels = None
        hist = rng.multinomial(P * P, rng.dirichlet(np.ones(N_CLASSES)), size=n).astype(np.int32)
    split = np.array([split_of(i, j) for i, j in cells], dtype=object).astype(str)
    sar_t = np.datetime64(sar_datetime.rstrip("Z"), "s")
    eo_times = [np.datetime64(eo_datetime, "s") + np.timedelta64(int(k), "D") for k in rng.integers(0, 40, n)]
    gap = np.array([(sar_t - t) / np.timedelta64(1, "D") for t in eo_times], np.float32)
    arrays = {
        "id": np.array([f"{region}_r{r:05d}_c{c:05d}" for r, c in zip(rows, cols)], dtype=str),
        "row": rows,
        "col": cols,
        "lon_min": np.asarray(lon_min, np.float64),
        "lat_min": np.asarray(lat_min, np.float64),
        "lon_max": np.asarray(lon_max, np.float64),
        "lat_max": np.asarray(lat_max, np.float64),
        "lon": np.asarray(lon, np.float64),
        "lat": np.asarray(lat, np.float64),
        "gsd_m": np.full(n, gsd_m, np.float32),
        "sar_datetime": np.array([sar_datetime] * n, dtype=str),
        "eo_datetime": np.array([str(t) + "Z" for t in eo_times], dtype=str),
        "gap_days": gap,
        "sar_item": np.array([f"CAPELLA_C14_SP_GEO_HH_{region}"] * n, dtype=str),
        "calibrated": np.ones(n, bool),
        "split": split,
        "residential_share": rng.random(n).astype(np.float32),
        "nonres_share": rng.random(n).astype(np.float32) * 0.1,
        "valid_share": (hist.sum(1) / (P * P)).astype(np.float32),
        "reg_local_error_m": rng.random(n).astype(np.float32) * 0.3,
        "reg_tie_distance_m": rng.random(n).astype(np.float32) * 100,
        "class_hist": hist,
    }
    counts = {s: int((split == s).sum()) for s in ("train", "val", "test")}
    attrs = {
        "region": region,
        "urban_rural": {"class": urban, "residential_share": 0.3 if urban == "urban" else 0.01, "nonres_share": 0.02},
        "grid": grid.to_dict(),
        "legend": load_legend().to_dict(),
        "splits": {"method": "blocks", "seed": 0, "counts": counts, "dropped_by_buffer": 0, "audit": {"ok": True}},
        "scenes": [{"id": f"CAPELLA_C14_SP_GEO_HH_{region}", "item_id": f"CAPELLA_{region}", "provider": provider,
                    "product": "GEO", "polarization": "HH", "datetime": sar_datetime, "calibrated": True}],
        "provenance": {
            "scenes": [{"item_id": f"CAPELLA_{region}", "provider": provider, "datetime": sar_datetime,
                        "licence": "CC-BY-4.0", "attribution": "(c) Capella Space Corp"}],
            "eo": {"source": "tiles", "kind": "xyz", "datetime": eo_datetime, "licence": "CC-BY-4.0",
                   "attribution": "Test EO provider"},
        },
        "licences": {"sar": "CC-BY-4.0", "labels": "ODbL-1.0"},
        "attribution": ["(c) Capella Space Corp", "(c) OpenStreetMap contributors, ODbL 1.0"],
        "software": {"name": "sareo", "version": "0.1.0"},
        "params": {},
        **(extra_attrs or {}),
    }
    scene = f"CAPELLA_C14_SP_GEO_HH_{region}"
    meta = {**arrays, "urban_rural": np.full(n, urban, dtype=object), "scene": np.full(n, scene, dtype=object),
            "provider": np.full(n, provider, dtype=object), "polarization": np.full(n, "HH", dtype=object),
            "cell": np.array([f"{region}_r{r}_c{c}" for r, c in zip(rows, cols)], dtype=object),
            "registration_flagged": np.zeros(n, bool)}
    if images:
        sar = rng.normal(-10, 3, (n, 1, P, P)).astype(np.float32)
        eo = rng.integers(0, 255, (n, 3, P, P)).astype(np.uint8)
        write_store(path, sar, eo, labels, meta, attrs, shard_patches=16)
    else:  # the real writer's streaming API; no image chunk is ever written
        write_meta(create_store(path, n, size=P, attrs=attrs), meta)
    return arrays


def corrupt_image_arrays(store: Path, keep_shards: set[int] = frozenset()) -> int:
    """Overwrite every shard of sar/eo/label but ``keep_shards``: any read of them would now fail to decode.

    Returns how many shard files were corrupted.
    """
    n = 0
    for name in ("sar", "eo", "label"):
        chunks = [p for p in (store / name).rglob("*") if p.is_file() and p.name != "zarr.json"]
        assert chunks
        for p in chunks:
            if int(p.relative_to(store / name).parts[1]) not in keep_shards:  # c/<shard>/...
                p.write_bytes(b"not a chunk")
                n += 1
    return n


@pytest.fixture(scope="module")
def project(tmp_path_factory) -> dict:
    """Two regions laid out as in the project (data/patches/NAME.zarr, data/regions/NAME/), published once."""
    root = tmp_path_factory.mktemp("proj")
    stores, arrays, registrations, labels = [], {}, {}, {}
    params = PublishParams(id="sareo-test", version="1.2.3", browser_samples=3)
    specs = [
        # Paris-like urban region, full coverage; Charleston-like rural one with a hole in the middle.
        ("paris", (2.3300, 48.8500, 2.3420, 48.8580), 5.0, 1, "urban", "2024-07-09T04:03:29Z", "2022-05-01", set()),
        ("charleston-rural", (-80.0500, 32.7000, -80.0380, 32.7080), 5.0, 2, "rural", "2023-11-20T15:00:00.5Z",
         "2019-03-10", {(r, c) for r in (2, 3, 4) for c in (2, 3, 4)}),
    ]  # fmt: skip
    for name, bbox, gsd, seed, urban, sar_dt, eo_dt, drop in specs:
        region = RegionLayout(root / "data", name)
        arrays[name] = write_test_store(
            region.store, name, bbox, gsd, seed=seed, urban=urban, sar_datetime=sar_dt, eo_datetime=eo_dt, drop=drop
        )
        region.labels.dir.mkdir(parents=True)
        region.labels.png.write_bytes(b"\x89PNG fake")
        # only the shards holding index.html's sample patches stay readable: publish reads nothing else
        sample = sample_patches(arrays[name]["split"], params.browser_samples, ("train", "val", "test"))
        assert corrupt_image_arrays(region.store, {int(i) // 16 for i in sample}) > 0
        stores.append(region.store)
        registrations[name] = region.registration  # charleston-rural's record file does not exist
        labels[name] = region.labels
    registrations["paris"].dir.mkdir()
    registrations["paris"].record.write_text(
        json.dumps({"applied": True, "flagged": False, "confidence": 0.9, "model": "translation",
                    "shift_m": {"east": -1.5, "north": 2.0}, "tie_points": [[1, 2]]})  # fmt: skip
    )
    out_dir, stac_dir = root / "data" / "dataset", root / "stac" / "dataset"
    stats = publish(stores, registrations, DatasetFiles(out_dir), stac_dir, params, labels=labels)
    return {"root": root, "stores": stores, "arrays": arrays, "specs": specs, "out": out_dir, "stac": stac_dir,
            "stats": stats, "registrations": registrations, "labels": labels, "params": params}  # fmt: skip


def test_index_opens_in_geopandas_with_crs_and_footprints(project) -> None:
    import geopandas as gpd
    import shapely

    gdf = gpd.read_parquet(project["out"] / "index.parquet")
    assert gdf.crs.to_epsg() == 4326
    arrays = project["arrays"]
    assert len(gdf) == sum(len(a["id"]) for a in arrays.values())
    assert list(gdf["region"].unique()) == sorted(arrays)  # sorted by region, then patch
    for region, a in arrays.items():
        sub = gdf[gdf["region"] == region]
        assert list(sub["patch"]) == list(range(len(a["id"])))
        assert list(sub["id"]) == list(a["id"])
        b = sub.geometry.bounds
        for col, key in (("minx", "lon_min"), ("miny", "lat_min"), ("maxx", "lon_max"), ("maxy", "lat_max")):
            np.testing.assert_array_equal(b[col].to_numpy(), a[key])
        assert sub.geometry.is_valid.all() and (sub.geometry.geom_type == "Polygon").all()
        assert shapely.contains_xy(sub.geometry.values, a["lon"], a["lat"]).all()
        np.testing.assert_array_equal(sub[[c for c in gdf.columns if c.startswith("px_")]].to_numpy(), a["class_hist"])
        dom = a["class_hist"].argmax(1)
        np.testing.assert_array_equal(sub["dominant_class"].to_numpy(), dom)
        assert set(sub["split"]) <= {"train", "val", "test"}
        assert (sub["urban_rural"] == ("urban" if region == "paris" else "rural")).all()
        np.testing.assert_allclose(sub["gap_days"].to_numpy(), a["gap_days"])
        # the store column leads back to the store, relative to the index file
        stores = {(project["out"] / s).resolve() for s in sub["store"]}
        assert stores == {p.resolve() for p in project["stores"] if region in str(p)}
    assert str(gdf["sar_datetime"].dt.tz) == "UTC"
    assert gdf.loc[gdf["region"] == "paris", "sar_datetime"].iloc[0].isoformat() == "2024-07-09T04:03:29+00:00"
    assert "px_building" in gdf.columns and "px_background" in gdf.columns


def test_index_has_geoparquet_metadata_for_gdal_and_qgis(project) -> None:
    """GDAL's Parquet driver (what QGIS uses) reads the 'geo' key: version, WKB encoding, CRS, bbox."""
    import pyarrow.parquet as pq
    from pyproj import CRS

    meta = pq.read_schema(project["out"] / "index.parquet").metadata
    geo = json.loads(meta[b"geo"])
    assert geo["primary_column"] == "geometry" and geo["version"].startswith("1.")
    col = geo["columns"]["geometry"]
    assert col["encoding"] == "WKB" and col["geometry_types"] == ["Polygon"]
    assert CRS.from_json_dict(col["crs"]).to_epsg() == 4326
    lon_min = min(a["lon_min"].min() for a in project["arrays"].values())
    lat_max = max(a["lat_max"].max() for a in project["arrays"].values())
    assert col["bbox"][0] == lon_min and col["bbox"][3] == lat_max


def test_stats_add_up(project) -> None:
    stats = json.loads((project["out"] / "stats.json").read_text())
    assert stats == project["stats"]
    arrays = project["arrays"]
    n = sum(len(a["id"]) for a in arrays.values())
    tot = stats["totals"]
    assert tot["patches"] == n == tot["patches_by_split"]["total"]
    assert sum(tot["patches_by_split"][s] for s in ("train", "val", "test")) == n
    for region, a in arrays.items():
        r = stats["patches"]["by_region"][region]
        assert r["patches"] == {s: int((a["split"] == s).sum()) for s in ("train", "val", "test")} | {
            "total": len(a["id"])
        }
    ur = stats["patches"]["by_urban_rural"]
    assert ur["urban"]["total"] == len(arrays["paris"]["id"]) and ur["rural"]["total"] == len(
        arrays["charleston-rural"]["id"]
    )
    for s in ("train", "val", "test", "total"):
        assert ur["urban"][s] + ur["rural"][s] == tot["patches_by_split"][s]
    dist = stats["classes"]["distribution"]
    all_hist = sum(a["class_hist"].sum(0) for a in arrays.values())
    assert dist["all"]["pixels"] == all_hist.tolist()
    assert np.sum([dist[s]["pixels"] for s in ("train", "val", "test")], axis=0).tolist() == all_hist.tolist()
    assert math.isclose(sum(dist["all"]["share"]), 1.0, abs_tol=1e-6)
    assert [c["name"] for c in stats["classes"]["legend"]] == load_legend().names
    gaps = np.concatenate([a["gap_days"] for a in arrays.values()]).astype(float)
    g = stats["gap_days"]
    assert (g["min"], g["max"]) == (round(gaps.min(), 3), round(gaps.max(), 3))
    assert g["median"] == round(float(np.median(gaps)), 3)
    assert sum(b["count"] for b in g["histogram"]) + g["below_first_bin"] == g["count"] == n
    assert tot["area_km2"] == pytest.approx(sum(r["area_km2"] for r in stats["patches"]["by_region"].values()))


def _projected_area_km2(geom) -> float:
    """Area in a local Lambert azimuthal equal-area projection: an independent check of the geodesic area."""
    import shapely
    from pyproj import CRS, Transformer

    c = geom.centroid
    laea = CRS.from_proj4(f"+proj=laea +lat_0={c.y} +lon_0={c.x} +ellps=WGS84")
    t = Transformer.from_crs("EPSG:4326", laea, always_xy=True)
    return shapely.transform(geom, lambda xy: np.column_stack(t.transform(xy[:, 0], xy[:, 1]))).area / 1e6


def test_area_is_geodesic_area_of_the_union_with_holes(project) -> None:
    import shapely

    for region, a in project["arrays"].items():
        boxes = shapely.box(a["lon_min"], a["lat_min"], a["lon_max"], a["lat_max"])
        union = shapely.union_all(boxes)
        got = project["stats"]["patches"]["by_region"][region]["area_km2"]
        assert got == pytest.approx(_projected_area_km2(union), rel=1e-5)
        outer = shapely.box(a["lon_min"].min(), a["lat_min"].min(), a["lon_max"].max(), a["lat_max"].max())
        if region == "charleston-rural":  # the dropped patches leave a 2x2-stride hole
            hole = _projected_area_km2(outer) - got
            cell = _projected_area_km2(boxes[0]) / 4  # one stride cell = a quarter of a patch
            assert hole == pytest.approx(4 * cell, rel=1e-3)
        else:
            assert got == pytest.approx(_projected_area_km2(outer), rel=1e-5)
    # a clockwise polygon with a counter-clockwise hole still gives shell minus hole
    hole = [(0.25, 0.25), (0.75, 0.25), (0.75, 0.75), (0.25, 0.75)]
    shell = shapely.Polygon([(0, 0), (0, 1), (1, 1), (1, 0)], holes=[hole])
    assert geodesic_area_km2(shell) == pytest.approx(_projected_area_km2(shell), rel=1e-4)


def test_stac_collection_reads_back_and_links_resolve(project) -> None:
    import pystac

    stac_dir = project["stac"]
    assert check_stac(stac_dir / "collection.json") == []
    col = pystac.Collection.from_file(str(stac_dir / "collection.json"))
    every = {i.id: i for i in col.get_items(recursive=True)}
    items = {k: i for k, i in every.items() if "sareo:region" not in i.properties}  # region items
    assert sorted(items) == sorted(project["arrays"])
    assert sorted(set(every) - set(items)) == sorted(f"{r}_{s}" for r in project["arrays"] for s in ("train", "val", "test"))
    assert col.id == "sareo-test" and col.extra_fields["version"] == "1.2.3"
    assert col.license == "other"
    hrefs = {l.href for l in col.links if l.rel == "license"}
    assert hrefs == {"https://creativecommons.org/licenses/by/4.0/", "https://opendatacommons.org/licenses/odbl/1-0/"}
    names = [p.name for p in col.providers]
    assert "Capella Space" in names and "OpenStreetMap contributors" in names and "Test EO provider" in names
    legend = load_legend()
    classes = col.summaries.get_list("classification:classes")
    assert [c["title"] for c in classes] == legend.names
    assert [c["color_hint"] for c in classes] == [c.colour.lstrip("#").upper() for c in legend.classes]
    assert col.summaries.get_list("label:type") == ["raster"]
    assert col.summaries.get_list("sareo:split") == ["train", "val", "test"]
    assert (stac_dir / col.assets["index"].href).resolve() == (project["out"] / "index.parquet").resolve()
    # temporal extent: earliest and latest SAR/EO datetime in the data
    start, end = col.extent.temporal.intervals[0]
    assert start.isoformat() == "2019-03-10T00:00:00+00:00"
    assert end.isoformat() == "2024-07-09T04:03:29+00:00"
    for region, item in items.items():
        a = project["arrays"][region]
        assert item.properties["sareo:patches"] == project["stats"]["patches"]["by_region"][region]["patches"]
        assert item.properties["label:type"] == "raster"
        assert item.properties["label:classes"][0]["classes"] == list(range(N_CLASSES))
        counts = {c["name"]: c["count"] for c in item.properties["label:overviews"][0]["counts"]}
        assert counts["building"] == int(a["class_hist"][:, 1].sum())
        patches = item.assets["patches"]
        assert patches.media_type == "application/vnd+zarr" and "data" in patches.roles
        assert Path(patches.get_absolute_href()).resolve() in [p.resolve() for p in project["stores"]]
        assert region in patches.href
        quick = item.assets["labels_quicklook"]
        assert Path(quick.get_absolute_href()).resolve() == project["root"] / f"data/regions/{region}/labels/labels.png"
        b = item.bbox
        assert b == pytest.approx([a["lon_min"].min(), a["lat_min"].min(), a["lon_max"].max(), a["lat_max"].max()])
        assert item.properties["sareo:urban_rural"]["class"] == ("urban" if region == "paris" else "rural")
        assert item.properties["start_datetime"] <= item.properties["end_datetime"]
    reg = items["paris"].properties["sareo:registration"]
    assert reg["applied"] is True and reg["shift_m"] == {"east": -1.5, "north": 2.0} and "tie_points" not in reg
    assert "sareo:registration" not in items["charleston-rural"].properties
    assert "registration" in items["paris"].assets
    # the hole shows in the item geometry of the rural region
    assert items["charleston-rural"].geometry["type"] == "Polygon"
    assert len(items["charleston-rural"].geometry["coordinates"]) == 2


def test_check_stac_reports_broken_links(project, tmp_path) -> None:
    import shutil

    copy = tmp_path / "stac" / "dataset"
    shutil.copytree(project["stac"], copy)
    problems = check_stac(copy / "collection.json")  # assets now point to a non-existent ../../data
    assert problems and any("patches" in p for p in problems) and any("index" in p for p in problems)


def test_plots_use_the_legend_colours(project) -> None:
    from PIL import Image

    plots = project["out"] / "plots"
    assert sorted(p.name for p in plots.iterdir()) == ["class_distribution.png", "gap_histogram.png",
                                                        "patches_per_region.png"]  # fmt: skip
    img = np.asarray(Image.open(plots / "class_distribution.png").convert("RGB")).reshape(-1, 3)
    colours = {tuple(int(c.colour[i : i + 2], 16) for i in (1, 3, 5)) for c in load_legend().classes}
    found = {tuple(p) for p in np.unique(img, axis=0)} & colours
    assert (200, 85, 61) in found  # building, the most frequent class here
    assert len(found) >= 10


def _tree_bytes(*dirs: Path) -> dict[str, bytes]:
    return {f"{d.name}/{p.relative_to(d)}": p.read_bytes() for d in dirs for p in sorted(d.rglob("*")) if p.is_file()}


def test_output_bytes_are_identical_on_two_runs(project) -> None:
    first = _tree_bytes(project["out"], project["stac"])
    publish(project["stores"][::-1], project["registrations"], DatasetFiles(project["out"]), project["stac"],
            project["params"], labels=project["labels"])  # fmt: skip
    second = _tree_bytes(project["out"], project["stac"])
    assert first.keys() == second.keys() and len(first) >= 6
    for k in first:
        assert first[k] == second[k], k
    leftovers = [p.name for p in project["out"].parent.iterdir() if p.name.startswith(".")]
    assert leftovers == []


def test_bad_inputs_name_the_store_and_field(project, tmp_path) -> None:
    store = tmp_path / "bad" / "patches.zarr"
    write_test_store(store, "bad", (10.0, 50.0, 10.004, 50.003), 5.0, seed=3, urban="urban",
                     sar_datetime="2024-01-01T00:00:00Z", eo_datetime="2023-01-01")  # fmt: skip
    g = zarr.open_group(str(store), mode="r+")
    del g["valid_share"]
    with pytest.raises(PublishError, match=r"patches.zarr.*valid_share"):
        read_store_meta(store)
    out = DatasetFiles(tmp_path / "o")
    with pytest.raises(PublishError, match="more than one store"):
        publish([project["stores"][0]] * 2, {}, out, tmp_path / "s", PublishParams())
    store2 = tmp_path / "bad2" / "patches.zarr"
    write_test_store(store2, "bad2", (10.0, 50.0, 10.004, 50.003), 5.0, seed=3, urban="suburban",
                     sar_datetime="2024-01-01T00:00:00Z", eo_datetime="2023-01-01")  # fmt: skip
    with pytest.raises(PublishError, match=r"bad2/patches.zarr: array 'urban_rural' has class\(es\) \['suburban'\]"):
        publish([store2], {}, out, tmp_path / "s", PublishParams())
    assert not (tmp_path / "o").exists() and not (tmp_path / "s").exists()


def test_params_are_checked_and_name_the_key() -> None:
    assert parse_section(PublishParams, None) == PublishParams()
    p = parse_section(PublishParams, {"splits": ["train", "test"], "gap_bins_days": [0, 7],
                                      "license_links": [{"href": "https://x.org/l", "title": "L"}]})  # fmt: skip
    assert p.splits == ("train", "test") and p.gap_bins_days == (0.0, 7.0) and p.license_links[0].title == "L"
    with pytest.raises(ParamsError, match=r"publish\.licence: unknown key; did you mean 'license'"):
        parse_section(PublishParams, {"licence": "x"})
    with pytest.raises(ParamsError, match=r"publish\.id: 'a b' must be letters"):
        parse_section(PublishParams, {"id": "a b"})
    with pytest.raises(ValueError, match="^splits: must name at least one split"):
        PublishParams(splits=())
    with pytest.raises(ValueError, match="^gap_bins_days: .* strictly increasing"):
        PublishParams(gap_bins_days=(0.0, 30.0, 30.0))


def test_store_without_patches_is_left_out(project, tmp_path) -> None:
    empty = tmp_path / "data" / "regions" / "empty" / "patches.zarr"
    write_test_store(empty, "empty", (10.0, 50.0, 10.004, 50.003), 5.0, seed=4, urban="rural",
                     sar_datetime="2024-01-01T00:00:00Z", eo_datetime="2023-01-01",
                     drop={(i, j) for i in range(99) for j in range(99)}, images=False)  # fmt: skip
    assert read_store_meta(empty).n == 0
    with pytest.raises(PublishError, match="none of the 1 stores holds a patch"):
        publish([empty], {}, DatasetFiles(tmp_path / "o"), tmp_path / "s", PublishParams())
    stats = publish([empty, project["stores"][0]], {}, DatasetFiles(tmp_path / "data" / "dataset"),
                    tmp_path / "stac" / "dataset", project["params"])  # fmt: skip
    assert list(stats["patches"]["by_region"]) == ["paris"]


def test_legend_shapes() -> None:
    real = legend_classes(load_legend().to_dict(), N_CLASSES)
    assert [c.name for c in real] == load_legend().names and real[1].color == "#C8553D"
    as_map = legend_classes({"0": {"name": "Background / unmapped", "color": [0, 0, 0]}, 1: "building"}, 3)
    assert [c.slug for c in as_map] == ["background_unmapped", "building", "class_02"]
    with pytest.raises(PublishError, match="colour"):
        legend_classes([{"id": 0, "name": "x", "colour": "red"}], 1)


def test_dataset_audit_fails_on_cross_store_leak(tmp_path) -> None:
    """Two regions over the same ground whose splits disagree there: publish refuses (nothing written)."""
    bbox = (2.3300, 48.8500, 2.3420, 48.8580)
    a, b = tmp_path / "data" / "patches" / "a.zarr", tmp_path / "data" / "patches" / "b.zarr"
    kw = {"urban": "urban", "sar_datetime": "2024-07-09T04:03:29Z", "eo_datetime": "2022-05-01"}
    write_test_store(a, "a", bbox, 5.0, seed=1, **kw)
    arrays = write_test_store(b, "b", bbox, 5.0, seed=1, **kw)
    assert len(arrays["id"]) > 0
    import zarr

    g = zarr.open_group(str(b), mode="r+")
    g["split"][:] = np.where(g["split"][:] == "train", "test", "train")  # same ground, other split
    out, stac = DatasetFiles(tmp_path / "data" / "dataset"), tmp_path / "stac" / "dataset"
    with pytest.raises(PublishError, match=r"dataset audit failed: \d+ pair\(s\) of patches of different splits"):
        publish([a, b], {}, out, stac, PublishParams())
    assert not out.dir.exists() and not stac.exists()
    publish([a], {}, out, stac, PublishParams())
    audit = json.loads(out.stats.read_text())["audit"]
    assert audit["passed"] and audit["pairs"] == 0 and audit["patches"] == len(arrays["id"])


def test_removed_region_is_unpublished_and_its_outputs_pruned(tmp_path: Path,
                                                              caplog: pytest.LogCaptureFixture) -> None:
    """Delete a region file, `sareo sync`, publish: the dataset, the STAC collection and data/patches hold
    only the current regions (issue 12: the removed one stayed published and globbed)."""
    import geopandas as gpd
    import yaml
    from test_regions import GOOD

    from pipeline.cli import main

    (tmp_path / "regions").mkdir()
    specs = {"paris": (2.3300, 48.8500, 2.3420, 48.8580), "lyon": (4.8300, 45.7500, 4.8420, 45.7580)}
    for seed, (name, bbox) in enumerate(specs.items()):
        region = dict(GOOD, name=name, aoi={"bbox": list(bbox)})
        (tmp_path / "regions" / f"{name}.yaml").write_text(yaml.safe_dump(region))
        lay = RegionLayout(tmp_path / "data", name)
        write_test_store(lay.store, name, bbox, 5.0, seed=seed + 1, urban="urban",
                         sar_datetime="2024-07-09T04:03:29Z", eo_datetime="2022-05-01")
        lay.labels.dir.mkdir(parents=True)
    assert main(["--root", str(tmp_path), "-q", "sync"]) == 0
    assert main(["--root", str(tmp_path), "-q", "publish"]) == 0
    index = tmp_path / "data" / "dataset" / "index.parquet"
    assert set(gpd.read_parquet(index)["region"]) == {"paris", "lyon"}

    (tmp_path / "regions" / "lyon.yaml").unlink()
    with caplog.at_level("WARNING"):
        assert main(["--root", str(tmp_path), "-q", "sync"]) == 0
    assert "region lyon is not in the build any more" in caplog.text
    assert sorted(p.name for p in (tmp_path / "data" / "patches").iterdir()) == ["paris.zarr"]
    assert sorted(p.name for p in (tmp_path / "data" / "regions").iterdir()) == ["paris"]
    # a store that appears with no region file (copied in by hand) is warned about, never published
    write_test_store(tmp_path / "data" / "patches" / "stray.zarr", "stray", specs["lyon"], 5.0, seed=3,
                     urban="rural", sar_datetime="2024-07-09T04:03:29Z", eo_datetime="2022-05-01")
    caplog.clear()
    with caplog.at_level("WARNING"):
        assert main(["--root", str(tmp_path), "-q", "publish"]) == 0
    assert "stray.zarr: not published: no region file regions/stray.yaml" in caplog.text
    assert set(gpd.read_parquet(index)["region"]) == {"paris"}
    collection = json.loads((tmp_path / "stac" / "dataset" / "collection.json").read_text())
    items = [ln["href"] for ln in collection["links"] if ln["rel"] == "item"]
    assert items and all(h.startswith("./paris") for h in items), items  # the region's item and its split items
