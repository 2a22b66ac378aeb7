"""Patches stage on a small simulated region: pixel-exact cutting, filtering, order, metadata, atomicity."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest
import rasterio

from pipeline.grid import grid_for_bbox
from pipeline.layout import GridFiles, LabelFiles, RegistrationFiles, SourceFiles
from pipeline.loader import PatchDataset
from pipeline.params import ParamsError, parse_section
from pipeline.patches import PatchError, PatchesParams, gap_days, patch_origins, patch_region, urban_class
from pipeline.splits import SplitsParams, audit
from pipeline.store import IMAGE_ARRAYS, META_ARRAYS, read_class_hist, read_meta, store_attrs, store_stats

PATCHES = {"size": 64, "stride": 32, "min_valid": 0.9, "shard_patches": 16}
SPLITS = SplitsParams(block_m=120.0, patch_m=0.0, seed=1, tolerance=0.2)  # blocks of ~2 patches (64 m at 1 m)


def run(name: str, region_dir: Path, store: Path, **patches) -> dict:
    """The patches stage on a region directory laid out like data/regions/NAME (params as params.yaml gives them)."""
    return patch_region(name, SourceFiles(region_dir / "source"), RegistrationFiles(region_dir / "registration"),
                        GridFiles(region_dir / "grid"), LabelFiles(region_dir / "labels"), store,
                        parse_section(PatchesParams, {**PATCHES, **patches}, "params.yaml"), SPLITS)


def _write(path: Path, data: np.ndarray, grid, dtype: str, nodata=None, tags=None) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    data = data if data.ndim == 3 else data[None]
    profile = dict(driver="GTiff", width=grid.width, height=grid.height, count=data.shape[0], dtype=dtype,
                   crs="EPSG:4326", transform=grid.transform, tiled=True, blockxsize=256, blockysize=256,
                   compress="deflate", nodata=nodata)  # fmt: skip
    with rasterio.open(path, "w", **profile) as dst:
        dst.write(data.astype(dtype))
        if tags:
            dst.update_tags(**tags)


ITEM = "CAPELLA_C13_SP_GEO_HH_20240101000000_20240101000010"
SCENE = "S1"


def make_region_dir(root: Path, bbox=(24.930, 60.160, 24.9395, 60.1650), gsd_m: float = 1.0, seed: int = 0,
                    nodata_corner: bool = True, provider: str = "capella",
                    scenes: tuple[str, ...] = (SCENE,)) -> Path:  # fmt: skip
    """A region directory as the fetch, grid and labels stages write it, with structured random content.

    The first scene's SAR has a NaN triangle (top-left), the others their triangle in another corner
    (so scenes overlap only partly); EO has an invalid strip (right). labels.tif covers the AOI.
    """
    grid = grid_for_bbox(bbox, gsd_m)
    rng = np.random.default_rng(seed)
    h, w = grid.shape
    yy, xx = np.mgrid[0:h, 0:w]
    sar = (-15 + 5 * np.sin(xx / 23.0) + 3 * np.cos(yy / 17.0) + rng.normal(0, 2, (h, w))).astype("float32")
    if nodata_corner:
        sar[xx + yy < min(h, w) // 2] = np.nan
    eo = np.stack([(xx * 3 + yy) % 256, (yy * 5) % 256, rng.integers(0, 256, (h, w))]).astype("uint8")
    mask = np.full((h, w), 255, np.uint8)
    mask[:, w - w // 6 :] = 0
    eo[:, mask == 0] = 0
    labels = ((xx // 37 + yy // 29 * 3) % 25).astype("uint8")
    zones = ((xx // 50 + yy // 70) % 4).astype("uint8")  # 3 = sea: not land
    records = []
    for k, scene in enumerate(scenes):
        scene_sar = sar if k == 0 else np.where(xx[:, ::-1] + yy[::-1] * k < min(h, w), np.nan, sar + k).astype("float32")
        _write(root / "grid" / "scenes" / scene / "sar_db.tif", scene_sar, grid, "float32", nodata=float("nan"),
               tags={"calibrated": "true"})
        (root / "source" / "scenes" / scene).mkdir(parents=True, exist_ok=True)
        (root / "source" / "scenes" / scene / "sar.tif").write_bytes(b"fetched scene")  # read_scenes checks it is there
        records.append({"scene": scene, "item_id": ITEM if k == 0 else f"ITEM_{scene}",
                        "datetime": f"{2024 + k}-01-01T00:00:05Z", "provider": provider, "product": "GEO",
                        "polarization": "HH" if k == 0 else "VV", "sha256": "0" * 64})
    _write(root / "grid" / "eo.tif", np.concatenate([eo, mask[None]]), grid, "uint8")
    _write(root / "labels" / "labels.tif", labels, grid, "uint8", nodata=255)
    _write(root / "labels" / "zones.tif", zones, grid, "uint8")
    (root / "grid" / "grid.json").write_text(grid.to_json())
    (root / "labels" / "labels.json").write_text(json.dumps({"urban_rural": {"class": "urban", "residential_share": 0.3}}))
    prov = {"scenes": records,
            "eo": {"source": "test tiles", "datetime": "2023-12-02", "attribution": "Test EO provider"}}
    (root / "source" / "provenance.json").write_text(json.dumps(prov))
    return root


def read_full(region_dir: Path, scene: str = SCENE) -> dict[str, np.ndarray]:
    """One scene's layers as the patches should see them: labels 255 where that scene has no SAR or EO."""
    with rasterio.open(region_dir / "grid" / "scenes" / scene / "sar_db.tif") as s, \
            rasterio.open(region_dir / "grid" / "eo.tif") as e:
        sar, eo = s.read(1), e.read()
    with rasterio.open(region_dir / "labels" / "labels.tif") as lab, rasterio.open(region_dir / "labels" / "zones.tif") as z:
        label = lab.read(1)
        label[~np.isfinite(sar) | (eo[3] == 0)] = 255
        return {"sar": sar, "eo": eo, "label": label, "zones": z.read(1)}


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    root = tmp_path_factory.mktemp("region")
    region_dir = make_region_dir(root / "r")
    store = root / "patches.zarr"
    report = run("testregion", region_dir, store)
    return region_dir, store, report


def test_patches_are_pixel_exact_windows_of_the_grid(built):
    import zarr

    region_dir, store, _ = built
    full = read_full(region_dir)
    meta = read_meta(store)
    g = zarr.open_group(str(store), mode="r")
    sar, eo, label = g["sar"][:], g["eo"][:], g["label"][:]
    assert len(meta) > 20
    for i, (r, c) in enumerate(zip(meta["row"], meta["col"])):
        win = (slice(r, r + 64), slice(c, c + 64))
        np.testing.assert_array_equal(sar[i, 0], full["sar"][win])
        np.testing.assert_array_equal(eo[i], full["eo"][(slice(0, 3), *win)])
        np.testing.assert_array_equal(label[i], full["label"][win])


def test_filter_order_and_metadata(built):
    region_dir, store, report = built
    full = read_full(region_dir)
    meta = read_meta(store)
    rows, cols = patch_origins(*full["sar"].shape, 64, 32)
    sar_ok = np.array([np.isfinite(full["sar"][r : r + 64, c : c + 64]).mean() for r, c in zip(rows, cols)])
    eo_ok = np.array([(full["eo"][3, r : r + 64, c : c + 64] > 0).mean() for r, c in zip(rows, cols)])
    passing = {(int(r), int(c)) for r, c, a, b in zip(rows, cols, sar_ok, eo_ok) if a >= 0.9 and b >= 0.9}
    stored = set(zip(meta["row"].tolist(), meta["col"].tolist()))
    assert stored <= passing and len(passing) > len(stored) - 1  # filtered; only buffer drops missing
    assert len(passing) - len(stored) == report["dropped_by_buffer"] + report.get("dropped_to_balance", 0)
    assert (sar_ok < 0.9).any() and (eo_ok < 0.9).any()  # the fixture really has nodata to drop
    # store order: split (train, val, test), then row, then col
    code = meta["split"].map({"train": 0, "val": 1, "test": 2}).to_numpy()
    key = list(zip(code, meta["row"], meta["col"]))
    assert key == sorted(key)
    assert {k: int(v) for k, v in meta["split"].value_counts().items()} == {k: v for k, v in report["counts"].items() if v}
    # footprints follow the grid transform
    grid_t = json.loads((region_dir / "grid" / "grid.json").read_text())["transform"]
    a, _, c0, _, e, f0 = grid_t
    np.testing.assert_allclose(meta["lon_min"], c0 + a * meta["col"])
    np.testing.assert_allclose(meta["lat_max"], f0 + e * meta["row"])
    np.testing.assert_allclose(meta["lat_min"], f0 + e * (meta["row"] + 64))
    np.testing.assert_allclose(meta["lon"], c0 + a * (meta["col"] + 32))
    assert (meta["gap_days"] == np.float32(30.0 + 5 / 86400)).all()
    assert meta["calibrated"].all() and (meta["urban_rural"] == "urban").all()
    assert (meta["sar_item"] == ITEM).all() and (meta["scene"] == SCENE).all()
    assert (meta["cell"] == "testregion_r" + meta["row"].astype(str) + "_c" + meta["col"].astype(str)).all()
    assert meta["id"].is_unique
    # per-patch statistics
    hist = read_class_hist(store)
    for i in range(0, len(meta), 7):
        r, c = meta["row"][i], meta["col"][i]
        lab = full["label"][r : r + 64, c : c + 64]
        np.testing.assert_array_equal(hist[i], np.bincount(lab[lab < 25], minlength=25))
        z = full["zones"][r : r + 64, c : c + 64]
        land = max((z != 3).sum(), 1)  # shares are of the patch's land, as the region's are
        assert meta["residential_share"][i] == pytest.approx((z == 1).sum() / land)
        assert meta["nonres_share"][i] == pytest.approx((z == 2).sum() / land)
        ok = np.isfinite(full["sar"][r : r + 64, c : c + 64]) & (full["eo"][3, r : r + 64, c : c + 64] > 0)
        assert meta["valid_share"][i] == pytest.approx(ok.mean())


def test_store_audit_attrs_and_layout(built):
    _, store, report = built
    meta = read_meta(store)
    code = meta["split"].map({"train": 0, "val": 1, "test": 2}).to_numpy()
    assert audit(meta["row"].to_numpy(), meta["col"].to_numpy(), code, 64)["passed"]
    attrs = store_attrs(store)
    assert attrs["region"] == "testregion"
    assert attrs["splits"]["audit"]["passed"] and attrs["splits"]["method"] == "lattice"
    assert attrs["splits"]["counts"] == report["counts"]
    assert "SAR: (c) Capella Space Corp, CC BY 4.0" in attrs["attribution"]
    assert "Labels: (c) OpenStreetMap contributors, ODbL 1.0" in attrs["attribution"]
    assert "EO: Test EO provider" in attrs["attribution"]
    assert attrs["urban_rural"]["class"] == "urban" and attrs["grid"]["crs"] == "EPSG:4326"
    assert attrs["params"]["patches"]["size"] == 64 and "grid/grid.json" in attrs["provenance"]["inputs_sha256"]
    # few files: one shard per 16 patches per image array, one chunk per metadata array, plus zarr.json files
    n = len(meta)
    shards = -(-n // 16)
    n_arrays = len(IMAGE_ARRAYS) + len(META_ARRAYS) + 1
    assert store_stats(store)["files"] == 3 * shards + (n_arrays - 3) + n_arrays + 1


def test_xarray_gives_named_dimensions(built):
    import xarray as xr

    _, store, _ = built
    ds = xr.open_zarr(store, consolidated=False)
    assert ds["sar"].dims == ("patch", "sar_band", "y", "x")
    assert ds["eo"].dims == ("patch", "eo_band", "y", "x")
    assert ds["label"].dims == ("patch", "y", "x")
    assert ds["class_hist"].dims == ("patch", "class")
    assert ds["split"].dims == ("patch",)
    assert str(ds["split"].values[0]) == "train"


def test_same_inputs_same_bytes(built, tmp_path):
    region_dir, store, _ = built
    again = tmp_path / "again.zarr"
    run("testregion", region_dir, again)
    files = sorted(p.relative_to(store) for p in store.rglob("*") if p.is_file())
    assert files == sorted(p.relative_to(again) for p in again.rglob("*") if p.is_file())
    for f in files:
        assert (store / f).read_bytes() == (again / f).read_bytes(), f


def test_bad_inputs_fail_clearly_and_write_nothing(tmp_path):
    region_dir = make_region_dir(tmp_path / "r", bbox=(24.93, 60.16, 24.9345, 60.1625))
    out = tmp_path / "p.zarr"
    os.remove(region_dir / "labels" / "labels.tif")
    with pytest.raises(PatchError, match="labels.tif: missing"):
        run("x", region_dir, out)
    assert not out.exists() and not list(tmp_path.glob(".p.zarr*"))
    # a raster not on the region grid
    other = make_region_dir(tmp_path / "o", bbox=(24.93, 60.16, 24.9360, 60.1625))
    (region_dir / "labels" / "labels.tif").write_bytes((other / "labels" / "labels.tif").read_bytes())
    with pytest.raises(PatchError, match=r"labels\.tif: \d+x\d+ px; expected the grid's"):
        run("x", region_dir, out)
    with pytest.raises(ParamsError, match="params.yaml: patches.compression_level"):
        run("x", region_dir, out, compression_level={"dem": 1})
    with pytest.raises(ParamsError, match="params.yaml: patches.min_valid"):
        run("x", region_dir, out, min_valid=2)
    assert not out.exists()


def test_no_valid_patch_gives_an_empty_store(tmp_path):
    region_dir = make_region_dir(tmp_path / "r", bbox=(24.93, 60.16, 24.9345, 60.1625))
    report = run("x", region_dir, tmp_path / "p.zarr", min_valid=1.0, size=400)
    assert report["counts"] == {"train": 0, "val": 0, "test": 0}
    assert len(read_meta(tmp_path / "p.zarr")) == 0


def test_time_gap_and_urban_class_helpers():
    assert gap_days("2024-01-01T00:00:00Z", "2023-12-31") == pytest.approx(1.0)
    assert np.isnan(gap_days("2024-01-01", None))
    assert urban_class({"urban_rural": {"class": "rural"}}) == "rural"
    assert urban_class({"urban": "urban"}) == "urban"
    assert urban_class({}) == "unknown"


def test_several_scenes_share_ground_cells_and_splits(tmp_path):
    """Two overlapping scenes: each is cut where it has data, the same ground has the same split in both,
    and each patch's label is no data exactly where its own scene has none."""
    region_dir = make_region_dir(tmp_path / "r", scenes=("S1", "S2"))
    store = tmp_path / "p.zarr"
    report = run("multi", region_dir, store)
    meta = read_meta(store)
    assert set(meta["scene"]) == {"S1", "S2"} and set(meta["polarization"]) == {"HH", "VV"}
    assert report["per_scene"]["S1"] and report["per_scene"]["S2"]
    assert sum(sum(v.values()) for v in report["per_scene"].values()) == len(meta) == report["patches"]
    # the scenes' nodata corners differ: some cells only in one scene, many in both (a time series)
    cells = meta.groupby("cell")["scene"].nunique()
    assert (cells == 2).sum() > 5 and (cells == 1).sum() > 0
    assert (meta.groupby("cell")["split"].nunique() == 1).all(), "one ground cell, one split"
    code = meta["split"].map({"train": 0, "val": 1, "test": 2}).to_numpy()
    assert audit(meta["row"].to_numpy(), meta["col"].to_numpy(), code, 64)["passed"]
    # store order: split, scene, row, col; ids unique across scenes
    sc = meta["scene"].map({"S1": 0, "S2": 1}).to_numpy()
    key = list(zip(code, sc, meta["row"], meta["col"]))
    assert key == sorted(key) and meta["id"].is_unique
    ds = PatchDataset([store])
    for scene in ("S1", "S2"):
        full = read_full(region_dir, scene)
        for i in np.flatnonzero(meta["scene"].to_numpy() == scene)[::5]:
            r, c = int(meta["row"][i]), int(meta["col"][i])
            item = ds[int(i)]
            np.testing.assert_array_equal(item["sar"][0], full["sar"][r:r + 64, c:c + 64])
            np.testing.assert_array_equal(item["label"], full["label"][r:r + 64, c:c + 64])
    assert [s["id"] for s in store_attrs(store)["scenes"]] == ["S1", "S2"]


def test_flagged_registration_keeps_or_drops_the_scene(tmp_path):
    region_dir = make_region_dir(tmp_path / "r", scenes=("S1", "S2"))
    rec = region_dir / "registration" / "scenes" / "S2" / "registration.json"
    rec.parent.mkdir(parents=True)
    rec.write_text(json.dumps({"applied": False, "flagged": True, "confidence": 0.1}))
    kept = run("multi", region_dir, tmp_path / "keep.zarr")
    meta = read_meta(tmp_path / "keep.zarr")
    assert meta.loc[meta["scene"] == "S2", "registration_flagged"].all()
    assert not meta.loc[meta["scene"] == "S1", "registration_flagged"].any()
    dropped = run("multi", region_dir, tmp_path / "drop.zarr", flagged_registration="drop")
    assert set(read_meta(tmp_path / "drop.zarr")["scene"]) == {"S1"}
    assert "S2" in dropped["scenes_skipped"] and sum(kept["per_scene"]["S1"].values()) > 0
