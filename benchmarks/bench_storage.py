"""Outputs on object storage: build time of a benchmark region with local vs loopback-S3 output, same run.

Builds the simulated region of bench_loader.py (grid and label GeoTIFFs as the grid and labels
stages write them), then, alternating so both see the same machine load:
  1. the patches stage writing its store to a local directory (temporary + rename);
  2. the same stage writing the store to S3 (``s3://bench/data/patches/r.zarr``: zarr over
     boto3, every shard one PUT, manifest last) on a moto server in its own process;
  3. what ``--data s3://`` adds around a stage for its directories: uploading and committing the
     grid, labels and source directories (push), and the next stage's verified download (pull).
Checks the S3 store gives the local store's bytes (every object's ETag = the local file's MD5).

    python benchmarks/bench_storage.py [--size-px 4096] [--repeats 2] [--workdir DIR]
"""

from __future__ import annotations

import argparse
import hashlib
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("GDAL_NUM_THREADS", "1")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench_loader import build_region, moto_process  # noqa: E402

from pipeline.layout import GridFiles, LabelFiles, SourceFiles  # noqa: E402
from pipeline.patches import PatchesParams, patch_region  # noqa: E402
from pipeline.storage import pull_dir, push_dir, verify  # noqa: E402
from pipeline.store import store_stats  # noqa: E402


def patches(region: Path, out) -> float:
    t = time.perf_counter()
    patch_region("bench", SourceFiles(region / "source"), None, GridFiles(region / "grid"),
                 LabelFiles(region / "labels"), out, PatchesParams())
    return time.perf_counter() - t


def dir_bytes(path: Path) -> int:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--size-px", type=int, default=4096, help="region edge in grid pixels (0.5 m)")
    ap.add_argument("--repeats", type=int, default=2, help="alternating local/S3 runs of the patches stage")
    ap.add_argument("--workdir", default=None)
    args = ap.parse_args()
    work = Path(args.workdir or tempfile.mkdtemp(prefix="sareo-bench-storage-"))
    region = build_region(work / "region", args.size_px)
    local = work / "patches" / "r.zarr"
    with moto_process() as s3:
        s3.client().create_bucket(Bucket="bench", CreateBucketConfiguration={"LocationConstraint": "us-west-2"})
        url = "s3://bench/data/patches/r.zarr"
        times: dict[str, list[float]] = {"local": [], "s3": []}
        for _ in range(args.repeats):
            times["local"].append(patches(region, local))
            times["s3"].append(patches(region, url))
        files = {p.relative_to(local).as_posix(): hashlib.md5(p.read_bytes()).hexdigest()
                 for p in local.rglob("*") if p.is_file()}
        m = verify(url)
        same = {k: r["etag"].strip('"') for k, r in m["objects"].items()} == files
        push, pull, moved = 0.0, 0.0, 0
        for unit in ("source", "grid", "labels"):
            t = time.perf_counter()
            push_dir(region / unit, f"s3://bench/data/regions/r/{unit}")
            push += time.perf_counter() - t
            t = time.perf_counter()
            pull_dir(f"s3://bench/data/regions/r/{unit}", work / "pulled" / unit)
            pull += time.perf_counter() - t
            moved += dir_bytes(region / unit)
    lo, hi = min(times["local"]), min(times["s3"])
    st = store_stats(local)
    mb = moved / 1e6
    print(f"region {args.size_px} x {args.size_px} px, store {st['bytes'] / 1e6:.0f} MB in {st['files']} files, "
          f"{m['count']} objects on S3; best of {args.repeats} alternating runs")
    print(f"  patches stage, store on local disk        {lo:7.2f} s")
    print(f"  patches stage, store on loopback S3       {hi:7.2f} s  {hi / lo:5.2f} x local")
    print(f"  S3 store byte-identical to the local one  {same}")
    print(f"  stage directories ({mb:.0f} MB): push + commit {push:6.2f} s ({mb / push:5.0f} MB/s), "
          f"verified pull {pull:6.2f} s ({mb / pull:5.0f} MB/s)")
    print(f"  patches under --data s3:// (pull its inputs + stage)  {hi + pull:7.2f} s  "
          f"{(hi + pull) / lo:5.2f} x local")
    if not args.workdir:
        shutil.rmtree(work, ignore_errors=True)
    if not same:
        sys.exit("the S3 store differs from the local one")


if __name__ == "__main__":
    main()
