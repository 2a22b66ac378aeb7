"""Patches stage benchmark: old code (another checkout) vs this one, same region, same run.

Synthesises, in a throw-away project, everything the patches stage reads for one SIZE x SIZE
region at 0.5 m (grid.json; a float32 dB SAR on the grid with a rotated swath, NaN outside; a
4-band EO with its valid mask; labels.tif and zones.tif with class blocks; the source/ records),
written window by window (tiled 512, zstd/deflate, as the grid and labels stages write them).
Then runs ``sareo patches bench`` as a child process once per variant:

- ``old``: the code at ``--old`` (e.g. ``git worktree add --detach /tmp/oldmain main``);
- ``new``: this checkout, default params (``compute.local: threads``);
- ``new-processes``: this checkout with ``compute.local: processes`` (a LocalCluster);

and prints, per variant, wall time, patches/s, cores busy (CPU seconds of the whole process tree,
workers included, / wall) and the peak RSS of the whole process tree (psutil, polled every
0.1 s), the ratios to ``old``, and whether each store is byte-identical to the first one.

    python benchmarks/bench_patches.py --old /tmp/oldmain [--size 24000] [--variants old,new,new-processes]
"""

from __future__ import annotations

import argparse
import hashlib
import json
import math
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import yaml

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

LON0, LAT0 = 17.6, 59.9
GSD = 0.5
ROWS = 512  # rows written at once


def bbox_for(size: int) -> list[float]:
    """A bbox whose 0.5 m grid is about size x size px."""
    from pipeline.grid import metres_per_degree

    mx, my = metres_per_degree(LAT0)
    half_w, half_h = size * GSD / 2 / mx, size * GSD / 2 / my
    return [LON0 - half_w, LAT0 - half_h, LON0 + half_w, LAT0 + half_h]


def make_project(top: Path, size: int) -> Path:
    """The project folder: regions/bench.yaml, params files, and data/ as fetch/grid/labels leave it."""
    import rasterio

    from pipeline.grid import grid_for_bbox
    from pipeline.layout import ProjectLayout

    bbox = bbox_for(size)
    grid = grid_for_bbox(bbox, GSD)
    (top / "regions").mkdir(parents=True)
    region = yaml.safe_load((ROOT / "regions" / "uppland.yaml").read_text())
    region.update(name="bench", aoi={"bbox": bbox})
    (top / "regions" / "bench.yaml").write_text(yaml.safe_dump(region))
    params = {"patches": {"size": 256, "stride": 128}, "splits": {"block_m": 1000.0}}
    (top / "params.yaml").write_text(yaml.safe_dump(params))
    r = ProjectLayout.at(top).region("bench")
    scene = "s1"
    sc = r.source.scene(scene)
    sc.dir.mkdir(parents=True)
    sc.sar.write_bytes(b"not read by the patches stage")
    (sc.provenance).write_text("{}")
    rec = {"scene": scene, "item_id": "BENCH_SAR", "provider": "capella", "product": "GEO", "polarization": "HH",
           "datetime": "2025-05-14T17:12:08Z", "licence": "CC-BY-4.0", "attribution": "bench"}
    r.source.provenance.write_text(json.dumps({"region": "bench", "scenes": [rec],
                                               "eo": {"datetime": "2022-08-03", "attribution": "bench"},
                                               "osm": {"kind": "file", "licence": "ODbL-1.0", "attribution": "bench"}}))
    r.grid.dir.mkdir(parents=True)
    r.grid.grid.write_text(json.dumps(grid.to_dict()))
    r.labels.dir.mkdir(parents=True)
    r.labels.report.write_text(json.dumps({"urban_rural": {"class": "rural"}}))
    base = {"driver": "GTiff", "width": grid.width, "height": grid.height, "crs": grid.crs,
            "transform": grid.transform, "tiled": True, "blockxsize": 512, "blockysize": 512}
    sg = r.grid.scene(scene)
    sg.dir.mkdir(parents=True)
    rng = np.random.default_rng(0)
    h, w = grid.height, grid.width
    cy, cx, th = h / 2, w / 2, math.radians(8)
    with rasterio.open(sg.sar_db, "w", **base, count=1, dtype="float32", nodata=float("nan"), compress="zstd",
                       predictor=3) as sar, \
         rasterio.open(r.grid.eo, "w", **base, count=4, dtype="uint8", compress="zstd", predictor=2,
                       photometric="RGB", alpha="YES") as eo, \
         rasterio.open(r.labels.labels, "w", **base, count=1, dtype="uint8", nodata=255, compress="deflate") as lab, \
         rasterio.open(r.labels.zones, "w", **base, count=1, dtype="uint8", compress="deflate") as zon:
        sar.update_tags(calibrated="true")
        xx = np.arange(w)
        for r0 in range(0, h, ROWS):
            n = min(ROWS, h - r0)
            yy = np.arange(r0, r0 + n)[:, None]
            # a swath rotated by 8 degrees covering ~85 % of the width: the corners have no data
            u = (xx[None, :] - cx) * math.cos(th) + (yy - cy) * math.sin(th)
            inside = np.abs(u) < 0.45 * w
            ground = ((xx[None, :] // 300 + yy // 300) % 7).astype(np.uint8)  # ~150 m fields
            db = (-12 + 2.0 * ground + 10 * np.log10(rng.gamma(4.0, 0.25, (n, w)))).astype(np.float32)
            db[~inside] = np.nan
            win = rasterio.windows.Window(0, r0, w, n)
            sar.write(db, 1, window=win)
            rgb = np.stack([(40 * ground + rng.integers(0, 30, (n, w))).astype(np.uint8) for _ in range(3)])
            eo.write(rgb, [1, 2, 3], window=win)
            eo.write(np.full((n, w), 255, np.uint8), 4, window=win)
            lab.write(ground + 1, 1, window=win)
            zon.write((ground % 4).astype(np.uint8), 1, window=win)
    return top


def run(variant: str, project: Path, old: Path | None) -> dict[str, float]:
    """One ``sareo patches bench`` child: wall time, CPU of the tree, peak tree RSS."""
    import psutil

    code = old if variant == "old" else ROOT
    params = project / f"params-{variant}.yaml"
    p = yaml.safe_load((project / "params.yaml").read_text())
    if variant == "new-processes":
        p["compute"] = {"local": "processes", "threads": 2}
    params.write_text(yaml.safe_dump(p))
    store = project / "data" / "patches" / "bench.zarr"
    shutil.rmtree(store, ignore_errors=True)
    env = {**os.environ, "PYTHONPATH": str(code), "SAREO_PROGRESS": "never"}
    cmd = [sys.executable, "-m", "pipeline.cli", "--root", str(project), "--params", str(params), "-q",
           "patches", "bench"]
    t0 = time.perf_counter()
    proc = psutil.Popen(cmd, env=env, cwd=project)
    peak, cpu = 0, {}
    while proc.poll() is None:
        try:
            tree = [proc, *proc.children(recursive=True)]
        except psutil.NoSuchProcess:
            break
        rss = 0
        for q in tree:
            try:
                rss += q.memory_info().rss
                t = q.cpu_times()
                cpu[q.pid] = t.user + t.system + t.children_user + t.children_system
            except psutil.NoSuchProcess:
                pass
        peak = max(peak, rss)
        time.sleep(0.1)
    wall = time.perf_counter() - t0
    if proc.returncode:
        raise SystemExit(f"{variant}: sareo patches exited with {proc.returncode}")
    n = json.loads((store / "zarr.json").read_text())["attributes"]["splits"]["patches"]
    digest = hashlib.sha256()
    for f in sorted(store.rglob("*")):
        if f.is_file():
            digest.update(str(f.relative_to(store)).encode() + f.read_bytes())
    return {"wall_s": wall, "patches": n, "patches_s": n / wall, "cores": sum(cpu.values()) / wall,
            "peak_mb": peak / 2**20, "sha256": digest.hexdigest()}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--size", type=int, default=24000, help="grid edge (px at 0.5 m)")
    ap.add_argument("--old", type=Path, help="checkout of the code to compare against (variant 'old')")
    ap.add_argument("--variants", default="old,new,new-processes")
    ap.add_argument("--keep", type=Path, help="build (or reuse) the project here instead of a temporary folder")
    a = ap.parse_args()
    variants = a.variants.split(",")
    if "old" in variants and not a.old:
        ap.error("--old DIR is needed for the 'old' variant")
    top = a.keep or Path(tempfile.mkdtemp(prefix="bench_patches."))
    try:
        if not (top / "regions" / "bench.yaml").exists():
            t0 = time.perf_counter()
            make_project(top, a.size)
            print(f"inputs: {a.size} x {a.size} px region built in {time.perf_counter() - t0:.0f} s ({top})")
        res = {v: run(v, top, a.old) for v in variants}
        first = res[variants[0]]
        print(f"\npatches stage, {a.size} x {a.size} px, 1 scene, {os.cpu_count()} cores "
              f"(cores busy = CPU s of the process tree / wall):")
        print(f"{'variant':<15}{'wall s':>8}{'patches':>9}{'patches/s':>11}{'cores busy':>12}{'peak RSS MB':>13}"
              f"{'x old p/s':>11}  same bytes")
        base = res.get("old", first)
        for v, r in res.items():
            print(f"{v:<15}{r['wall_s']:>8.1f}{r['patches']:>9}{r['patches_s']:>11.1f}{r['cores']:>12.2f}"
                  f"{r['peak_mb']:>13.0f}{r['patches_s'] / base['patches_s']:>11.2f}  "
                  f"{'yes' if r['sha256'] == first['sha256'] else 'NO'}")
    finally:
        if not a.keep:
            shutil.rmtree(top, ignore_errors=True)


if __name__ == "__main__":
    main()
