"""End to end: a reduced offline demo through every stage, as `sareo run` (what DVC runs) does it.

Checks the contracts *between* stages that module tests cannot see: the registration's sign and
map units are applied by the gridding (SAR and EO agree on the final grid), labels sit on the
same grid, patch stores are leak-free and loadable (numpy, xarray, torch DataLoader workers),
and the published index matches the stores.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import numpy as np
import pytest
import rasterio

from pipeline.cli import main
from pipeline.coregister import estimate_shift
from pipeline.grid import Grid
from pipeline.loader import PatchDataset
from pipeline.store import read_meta, store_attrs

ROOT = Path(__file__).resolve().parent.parent
from conftest import BBOXES  # noqa: E402 - the reduced demo regions; the `built` project fixture is in conftest.py


def scenes_of(built: Path, name: str) -> list[str]:
    """The scenes of a demo region, as fetch recorded them (Helsinki has several, of two providers)."""
    prov = json.loads((built / "data" / "regions" / name / "source" / "provenance.json").read_text())
    return [s["scene"] for s in prov["scenes"]]


def test_every_stage_wrote_its_outputs(built: Path) -> None:
    for name in BBOXES:
        rdir = built / "data" / "regions" / name
        scenes = scenes_of(built, name)
        assert len(scenes) == (4 if name == "helsinki" else 1), scenes  # the demo: 3 Capella + 1 Umbra in Helsinki
        for rel in ("source/eo.tif", "source/provenance.json", "registration/registration.json",
                    "registration/overlay.png", "grid/grid.json", "grid/eo.tif", "grid/quicklook.png",
                    "labels/labels.tif", "labels/zones.tif", "labels/labels.json", "labels/labels.png",
                    *(f"{rel}" for sc in scenes for rel in (
                        f"source/scenes/{sc}/sar.tif", f"source/scenes/{sc}/eo.tif", f"source/scenes/{sc}/provenance.json",
                        f"registration/scenes/{sc}/registration.json", f"registration/scenes/{sc}/overlay.png",
                        f"grid/scenes/{sc}/sar_db.tif", f"grid/scenes/{sc}/quicklook.png"))):
            assert (rdir / rel).is_file(), rel
        assert (built / "data" / "patches" / f"{name}.zarr" / "zarr.json").is_file()
    for rel in ("data/dataset/index.parquet", "data/dataset/stats.json", "stac/dataset/collection.json"):
        assert (built / rel).is_file(), rel
    # nothing half-written anywhere: no temporaries left behind by the atomic writers
    assert not [p for p in built.rglob("*") if ".tmp" in p.name]


def test_outputs_do_not_depend_on_checkout_path(built: Path) -> None:
    """Same inputs, same bytes in every clone: no output may embed the project's absolute path."""
    needle = str(built).encode()
    leaks = [
        str(p.relative_to(built))
        for top in ("data", "stac")
        for p in (built / top).rglob("*")
        if p.is_file() and p.suffix in (".json", ".tif", ".png", ".parquet", "") and needle in p.read_bytes()
    ]
    assert leaks == []


def test_registration_recovers_injected_offset(built: Path) -> None:
    truth = json.loads((built / "data" / "demo" / "truth.json").read_text())["scenes"]
    applied = 0
    for name in BBOXES:
        for sc in scenes_of(built, name):  # each scene has its own injected offset, registered on its own
            reg = json.loads((built / "data" / "regions" / name / "registration" / "scenes" / sc /
                              "registration.json").read_text())
            if reg["flagged"]:  # a scene covering little of the reduced AOI may be unsure: never applied then
                assert not reg["applied"] and reg["correction"] == [1.0, 0.0, 0.0, 0.0, 1.0, 0.0]
                continue
            off = truth[sc]["sar_offset_m"]
            err = np.hypot(reg["shift_m"]["east"] + off["east"], reg["shift_m"]["north"] + off["north"])
            assert reg["applied"] and err < 0.5, f"{name}/{sc}: registration error {err:.2f} m (> 1 px at 0.5 m)"
            applied += 1
    assert applied >= 2


def test_gridded_sar_and_eo_agree_after_correction(built: Path) -> None:
    """The correction went into the SAR geotransform with the right sign: no offset left on the grid."""
    for name in BBOXES:
        gdir = built / "data" / "regions" / name / "grid"
        grid = Grid.from_json((gdir / "grid.json").read_text())
        first = scenes_of(built, name)[0]  # the scene covering most of the AOI in both demo regions
        with rasterio.open(gdir / "scenes" / first / "sar_db.tif") as s, \
                rasterio.open(gdir / "eo.tif") as e:
            assert (s.height, s.width) == (e.height, e.width) == grid.shape
            assert s.transform.almost_equals(grid.transform) and e.transform.almost_equals(grid.transform)
            sar = s.read(1)
            eo = e.read().astype(np.float32)
        gray = eo[:3].mean(axis=0)
        reg = estimate_shift(sar, gray, np.isfinite(sar), eo[3] > 0, gsd_m=grid.gsd_m)
        assert not reg.flagged
        assert np.hypot(reg.dx, reg.dy) < 0.5, f"{name}: {reg.dx:.2f}, {reg.dy:.2f} px left after correction"


def test_labels_on_grid_and_patch_labels_follow_their_scene(built: Path) -> None:
    """labels.tif covers the whole (bbox) AOI; in a patch, no label where its scene has no SAR or EO."""
    for name in BBOXES:
        rdir = built / "data" / "regions" / name
        sars = {}
        with rasterio.open(rdir / "labels" / "labels.tif") as lab:
            labels = lab.read(1)
            for sc in scenes_of(built, name):
                with rasterio.open(rdir / "grid" / "scenes" / sc / "sar_db.tif") as s:
                    assert lab.transform == s.transform and lab.shape == s.shape
                    sars[sc] = s.read(1)
        assert (labels < 25).all()
        ds = PatchDataset([built / "data" / "patches" / f"{name}.zarr"])
        meta = read_meta(built / "data" / "patches" / f"{name}.zarr", ["row", "col", "scene"])
        for i in range(len(ds)):
            item = ds[i]
            r, c, sar = int(meta["row"][i]), int(meta["col"][i]), sars[meta["scene"][i]]
            want = np.where(np.isfinite(sar[r:r + 256, c:c + 256]), labels[r:r + 256, c:c + 256], 255)
            nodata = ~np.isfinite(item["sar"][0])
            assert (item["label"][nodata] == 255).all()
            assert np.array_equal(item["label"][~nodata], want[~nodata]), (name, i)


def test_patch_stores_are_leak_free_and_load(built: Path) -> None:
    stores = sorted((built / "data" / "patches").glob("*.zarr"))
    total = 0
    for store in stores:
        attrs = store_attrs(store)
        assert attrs["splits"]["audit"]["passed"] and attrs["splits"]["method"] == "lattice"
        text = json.dumps(attrs)
        assert "Capella" in text and "OpenStreetMap" in text
        meta = read_meta(store)
        assert set(meta["split"]) <= {"train", "val", "test"} and len(meta) > 8
        total += len(meta)
    ds = PatchDataset(stores, split="train")
    item = ds[0]
    assert item["sar"].shape == (1, 256, 256) and item["sar"].dtype == np.float32
    assert item["eo"].shape == (3, 256, 256) and item["eo"].dtype == np.uint8
    label = item["label"]  # class ids < 25, or 255 where its SAR or EO has no data (each valid on >= min_valid 0.9)
    assert label.shape == (256, 256) and ((label < 25) | (label == 255)).all() and (label < 25).mean() >= 0.8
    import geopandas as gpd

    index = gpd.read_parquet(built / "data" / "dataset" / "index.parquet")
    assert len(index) == total and index.crs.to_epsg() == 4326


def test_xarray_gives_named_dimensions(built: Path) -> None:
    xr = pytest.importorskip("xarray")
    ds = xr.open_zarr(built / "data" / "patches" / "uppland.zarr", consolidated=False)
    assert ds["sar"].dims == ("patch", "sar_band", "y", "x") and ds["label"].dims == ("patch", "y", "x")


def test_torch_dataloader_with_worker_processes(built: Path) -> None:
    torch = pytest.importorskip("torch")
    stores = sorted((built / "data" / "patches").glob("*.zarr"))
    ds = PatchDataset(stores, as_torch=True)
    len(ds), ds[0]  # opened in the parent before the workers fork: each worker must reopen
    loader = torch.utils.data.DataLoader(ds, batch_size=4, num_workers=2, shuffle=True,
                                         generator=torch.Generator().manual_seed(0))
    n = 0
    for batch in loader:
        assert batch["sar"].shape[1:] == (1, 256, 256) and batch["eo"].dtype == torch.uint8
        n += batch["sar"].shape[0]
    assert n == len(ds)


def test_cli_stage_error_is_one_clear_line(built: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    shutil.copytree(built / "regions", tmp_path / "regions")
    assert main(["--root", str(tmp_path), "grid", "helsinki"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("sareo: error:") and "Traceback" not in err
    assert main(["--root", str(tmp_path), "fetch", "nowhere"]) == 2
    assert "regions/nowhere.yaml: no such region file (known regions: helsinki, uppland)" in capsys.readouterr().err


def _tree(d: Path) -> dict[str, bytes]:
    return {p.relative_to(d).as_posix(): p.read_bytes() for p in sorted(d.rglob("*")) if p.is_file()}


KILL_TRIES = int(os.environ.get("SAREO_KILL_TRIES", "3"))  # bounded: one `sareo patches` process (~3 s) each


def test_patches_killed_at_random_points_leaves_nothing_taken_and_rebuilds_same_bytes(
        built: Path, tmp_path: Path) -> None:
    """SIGKILL `sareo patches helsinki` while it writes (issue 12: the temporary store used to glob as
    *.zarr, so the loader took 520 patches instead of 361): after every kill, data/patches holds the old
    store whole or nothing, no leftover is a *.zarr or anything DVC hashes, and the next run gives the
    clean build's bytes."""
    import random
    import signal
    import subprocess
    import sys
    import time

    work = tmp_path / "project"
    shutil.copytree(built, work, symlinks=True)
    patches = work / "data" / "patches"
    clean = _tree(built / "data" / "patches" / "helsinki.zarr")
    n_clean = len(PatchDataset([built / "data" / "patches" / "helsinki.zarr"]))
    cmd = [sys.executable, "-m", "pipeline.cli", "--root", str(work), "-q", "patches", "helsinki"]
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    rng = random.Random(12)
    outcomes, leftovers = [], set()
    for attempt in range(KILL_TRIES):
        had_store = attempt % 2 == 1  # alternate: a first build, and a rebuild over the complete store
        shutil.rmtree(patches / "helsinki.zarr", ignore_errors=True)
        if had_store:
            shutil.copytree(built / "data" / "patches" / "helsinki.zarr", patches / "helsinki.zarr")
        before = set(patches.glob(".helsinki.zarr.*"))
        proc = subprocess.Popen(cmd, env=env, stderr=subprocess.DEVNULL)
        t0 = time.monotonic()
        while proc.poll() is None and not set(patches.glob(".helsinki.zarr.*")) - before:
            time.sleep(0.005)  # the write has begun once a new temporary exists
        time.sleep(rng.uniform(0.0, 0.6))
        proc.send_signal(signal.SIGKILL)
        rc = proc.wait(30)
        # what the README's loader snippet takes (the other region's store is not being written)
        stores = [p for p in sorted(patches.glob("*.zarr")) if p.name != "uppland.zarr"]
        leftovers |= {p.name for p in patches.iterdir() if p.name.startswith(".")}
        assert [p.name for p in stores] in ([], ["helsinki.zarr"])
        if stores:
            assert _tree(stores[0]) == clean, "a store that globs must be whole"
            assert len(PatchDataset(stores)) == n_clean
        assert had_store <= bool(stores), "a killed rebuild must keep the previous complete store"
        outcomes.append(f"{'rebuild' if had_store else 'build'} killed {time.monotonic() - t0:.2f} s in "
                        f"(rc {rc}): {'complete store' if stores else 'no store'}, "
                        f"{len(leftovers)} hidden leftovers so far")
    # DVC hashes data/patches for publish: every leftover must be one .dvcignore excludes
    out = subprocess.run(["dvc", "check-ignore", *(f"data/patches/{n}" for n in sorted(leftovers))], cwd=ROOT,
                         capture_output=True, text=True)
    assert sorted(Path(x).name for x in out.stdout.split()) == sorted(leftovers), out.stdout + out.stderr
    # the next run removes the stale temporaries and gives the clean bytes
    assert subprocess.run(cmd, env=env).returncode == 0
    assert sorted(p.name for p in patches.iterdir()) == ["helsinki.zarr", "uppland.zarr"]
    assert _tree(patches / "helsinki.zarr") == clean
    print("\nkill test:", *outcomes, sep="\n  ")
