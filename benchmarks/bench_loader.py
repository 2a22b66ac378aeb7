"""Loader benchmark: random-access patches/s on one core, sharded Zarr fast path vs rasterio windows.

Builds a realistic simulated region (grid GeoTIFFs laid out as the grid and labels stages write
them: 512 px tiles, zstd/deflate), runs the patches stage on it (default params: 256 px patches,
stride 128, shards of 256), then reads the same patches in the same random order with
  1. pipeline.loader.PatchDataset (fast path: cached shard index + os.pread + zstd),
  2. zarr-python 3 on the same store (reference),
  3. rasterio windows on the gridded GeoTIFFs (what peer libraries such as TorchGeo do),
pinned to one CPU core with one thread everywhere, and prints patches/s and the ratio.

    python benchmarks/bench_loader.py [--size-px 7168] [--reads 3000] [--workdir DIR]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("GDAL_NUM_THREADS", "1")
os.environ.setdefault("OMP_NUM_THREADS", "1")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np  # noqa: E402
import rasterio  # noqa: E402
from rasterio.windows import Window  # noqa: E402

from pipeline.grid import grid_for_bbox  # noqa: E402
from pipeline.layout import GridFiles, LabelFiles, SourceFiles  # noqa: E402
from pipeline.patches import PatchesParams, patch_region  # noqa: E402
from pipeline.store import read_meta, store_attrs, store_stats  # noqa: E402


def build_region(root: Path, size_px: int, seed: int = 0) -> Path:
    """A square region of about size_px x size_px at 0.5 m, written window by window (never whole)."""
    gsd = 0.5
    lat0, lon0 = 32.78, -79.94  # Charleston-like latitude
    dlat = size_px * gsd / 111_000
    dlon = dlat / np.cos(np.radians(lat0))
    grid = grid_for_bbox((lon0, lat0, lon0 + dlon, lat0 + dlat), gsd)
    h, w = grid.shape
    common = dict(driver="GTiff", width=w, height=h, crs="EPSG:4326", transform=grid.transform, tiled=True,
                  blockxsize=512, blockysize=512)  # fmt: skip
    (root / "grid").mkdir(parents=True)
    (root / "labels").mkdir()
    (root / "source").mkdir()
    rng = np.random.default_rng(seed)
    with (
        rasterio.open(root / "grid/sar_db.tif", "w", count=1, dtype="float32", nodata=float("nan"), compress="zstd",
                      predictor=3, **common) as sar_ds,
        rasterio.open(root / "grid/eo.tif", "w", count=4, dtype="uint8", compress="zstd", predictor=2,
                      photometric="RGB", alpha="YES", **common) as eo_ds,
        rasterio.open(root / "labels/labels.tif", "w", count=1, dtype="uint8", nodata=255, compress="deflate",
                      **common) as lab_ds,
        rasterio.open(root / "labels/zones.tif", "w", count=1, dtype="uint8", compress="deflate", **common) as z_ds,
    ):  # fmt: skip
        sar_ds.update_tags(calibrated="true")
        step = 512
        for r0 in range(0, h, step):
            hh = min(step, h - r0)
            yy, xx = np.mgrid[r0 : r0 + hh, 0:w]
            blocks = ((yy // 97) * 7 + (xx // 131) * 3) % 25  # land-cover parcels
            speckle = 10 * np.log10(rng.gamma(4.0, 0.25, (hh, w)))  # 4-look speckle in dB
            sar = (-18 + 0.6 * blocks + speckle).astype("float32")
            edge = xx + (h - yy) < w // 5  # a nodata corner, as at a scene edge
            sar[edge] = np.nan
            base = (blocks * 9 + 40).astype(np.int16)
            eo = np.stack([base + rng.integers(-12, 13, (hh, w)) + k * 15 for k in range(3)]).clip(0, 255)
            mask = np.where(edge, 0, 255).astype(np.uint8)
            labels = np.where(edge, 255, blocks).astype(np.uint8)
            win = Window(0, r0, w, hh)
            sar_ds.write(sar, 1, window=win)
            eo_ds.write(np.concatenate([eo.astype(np.uint8), mask[None]]), window=win)
            lab_ds.write(labels, 1, window=win)
            z_ds.write((blocks % 3).astype(np.uint8), 1, window=win)
    (root / "grid/grid.json").write_text(grid.to_json())
    (root / "labels/labels.json").write_text(json.dumps({"urban_rural": {"class": "urban"}}))
    prov = {"sar": {"item_id": "SIMULATED", "datetime": "2024-01-01T00:00:00Z", "provider": "capella"},
            "eo": {"source": "simulated", "datetime": "2023-06-01"}}  # fmt: skip
    (root / "source/provenance.json").write_text(json.dumps(prov))
    return root


def bench(fn, order, passes: int = 3) -> float:
    """Patches per second of ``fn(i)`` over ``order``: median of ``passes`` passes (the machine is shared)."""
    for i in order[:20]:
        fn(int(i))
    rates = []
    for _ in range(passes):
        t = time.perf_counter()
        for i in order:
            fn(int(i))
        rates.append(len(order) / (time.perf_counter() - t))
    return float(np.median(rates))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--size-px", type=int, default=7168, help="region edge in pixels (7168 -> ~2800 positions)")
    ap.add_argument("--reads", type=int, default=3000, help="random reads per method")
    ap.add_argument("--level", default="3", help="zstd level: an int or sar,eo,label ints, e.g. -1,3,3")
    ap.add_argument("--workdir", type=Path, default=None, help="keep files here (default: a temp dir, removed)")
    args = ap.parse_args()

    work = args.workdir or Path(tempfile.mkdtemp(prefix="sareo-bench-"))
    try:
        region = work / "region"
        if not (region / "grid" / "grid.json").exists():
            t = time.perf_counter()
            build_region(region, args.size_px)
            print(f"simulated region: {time.perf_counter() - t:.1f} s")
        levels = [int(v) for v in args.level.split(",")]
        level = levels[0] if len(levels) == 1 else dict(zip(("sar", "eo", "label"), levels))
        store = work / "patches.zarr"
        t = time.perf_counter()
        report = patch_region("bench", SourceFiles(region / "source"), None, GridFiles(region / "grid"),
                              LabelFiles(region / "labels"), store, PatchesParams(compression_level=level))
        build_s = time.perf_counter() - t
        meta = read_meta(store, ["row", "col", "split"])
        n = len(meta)
        stats = store_stats(store)
        mb = stats["bytes"] / 1e6
        print(f"patches stage: {n} patches in {build_s:.1f} s ({n / build_s:.0f} patches/s, 2 cores available)")
        print(f"  counts {report['counts']}, dropped_by_buffer {report['dropped_by_buffer']}, "
              f"candidates {report['candidates']}, audit passed {report['audit']['passed']}")  # fmt: skip
        print(f"  zstd level {level}; store: {mb:.0f} MB in {stats['files']} files ({mb * 1e6 / max(n, 1) / 1024:.0f} KiB/patch)")
        assert store_attrs(store)["splits"]["audit"]["passed"]

        # one core, one thread, from here on
        os.sched_setaffinity(0, {min(os.sched_getaffinity(0))})
        import zarr

        zarr.config.set({"threading.max_workers": 1})
        rng = np.random.default_rng(0)
        order = rng.choice(n, size=min(args.reads, n), replace=False)
        rows, cols = meta["row"].to_numpy(), meta["col"].to_numpy()

        from pipeline.loader import PatchDataset

        ds = PatchDataset(store)
        fast = bench(lambda i: ds[i], order)

        group = zarr.open_group(str(store), mode="r")
        za = [group["sar"], group["eo"], group["label"]]
        zpy = bench(lambda i: [a[i] for a in za], order[: min(len(order), 1000)])

        src = [rasterio.open(region / "grid/sar_db.tif"), rasterio.open(region / "grid/eo.tif"),
               rasterio.open(region / "labels/labels.tif")]  # fmt: skip

        def windows(i: int):
            win = Window(int(cols[i]), int(rows[i]), 256, 256)
            return src[0].read(1, window=win), src[1].read((1, 2, 3), window=win), src[2].read(1, window=win)

        with rasterio.Env(GDAL_NUM_THREADS=1, GDAL_CACHEMAX=64):
            tif_small = bench(windows, order)  # a real region (~5 GB decoded) never fits the block cache
        with rasterio.Env(GDAL_NUM_THREADS=1):
            tif = bench(windows, order)  # this small region fits GDAL's default cache: best case
            # same pixels either way
            for i in order[:50]:
                s, e, lab = windows(int(i))
                item = ds[int(i)]
                assert np.array_equal(item["sar"][0], s, equal_nan=True) and np.array_equal(item["eo"], e)
                assert np.array_equal(item["label"], lab)
        print(f"random reads, 1 core, sar+eo+label per patch ({len(order)} reads):")
        print(f"  sareo loader (fast path)      {fast:8.0f} patches/s")
        print(f"  zarr-python 3 on the store    {zpy:8.0f} patches/s")
        print(f"  rasterio windows, 64 MB cache {tif_small:8.0f} patches/s")
        print(f"  rasterio windows, whole region in GDAL cache {tif:8.0f} patches/s")
        print(f"  ratio loader / rasterio (64 MB cache)  {fast / tif_small:8.2f} x")
        print(f"  ratio loader / rasterio (all cached)   {fast / tif:8.2f} x")
        print(f"  ratio loader / zarr-python    {fast / zpy:8.2f} x")
    finally:
        if args.workdir is None:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
