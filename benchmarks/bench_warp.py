"""Scale benchmark of the grid stage: a synthetic 20,000 x 20,000 UInt16 UTM scene through calibrate + grid.

Prints Mpx/s and peak RSS of the pipeline path (pipeline.warp.write_sar_grid: windowed reads,
calibration to linear power, strip-wise GDAL warp, dB, tiled zstd GeoTIFF) next to the floor:
a plain ``rasterio.warp.reproject`` of the same file band-to-band (GDAL chunks it itself,
no calibration, no dB, same output format). Each run is a child process; peak RSS is its
VmHWM (peak resident set). Nine bright targets at known lon/lat measure the pixel-alignment error of both.

    python benchmarks/bench_warp.py [--size 20000] [--threads 2] [--workdir /tmp/sareo-bench-warp]
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

CRS = "EPSG:32635"
LON0, LAT0 = 24.94, 60.17  # scene centre (Helsinki)
RES = 0.5
GSD = 0.5
SCALE = 9.657046131856903e-05  # the real GEO fixture's scale_factor
SIGMA_PX = 2.0


def scene_transform(size: int):
    from affine import Affine
    from pyproj import Transformer

    x, y = Transformer.from_crs("EPSG:4326", CRS, always_xy=True).transform(LON0, LAT0)
    return Affine(RES, 0, round(x - size * RES / 2), 0, -RES, round(y + size * RES / 2))


def targets(size: int) -> list[tuple[float, float]]:
    """3 x 3 targets (lon, lat), off the pixel lattice, spread over the scene."""
    from pyproj import Transformer

    t = scene_transform(size)
    inv = Transformer.from_crs(CRS, "EPSG:4326", always_xy=True)
    out = []
    for fr in (0.2, 0.5, 0.8):
        for fc in (0.2, 0.5, 0.8):
            x, y = t @ (fc * size + 0.37, fr * size + 0.61)
            out.append(inv.transform(x, y))
    return out


def write_scene(path: Path, size: int, block: int = 1024) -> None:
    """UInt16 amplitude with speckle, DN 0 border, targets on quiet patches; written in windows."""
    import rasterio
    from pyproj import Transformer
    from rasterio.windows import Window

    t = scene_transform(size)
    fwd = Transformer.from_crs("EPSG:4326", CRS, always_xy=True)
    centres = [~t @ fwd.transform(lon, lat) for lon, lat in targets(size)]
    prof = {"driver": "GTiff", "width": size, "height": size, "count": 1, "dtype": "uint16", "crs": CRS,
            "transform": t, "nodata": 0, "tiled": True, "blockxsize": 512, "blockysize": 512, "BIGTIFF": "YES"}
    rng = np.random.default_rng(42)
    with rasterio.open(path, "w", **prof) as ds:
        for r0 in range(0, size, block):
            h = min(block, size - r0)
            rows, cols = np.mgrid[r0 : r0 + h, 0:size].astype(np.float32) + 0.5
            mean = 0.01 * (1 + 0.5 * np.sin(cols / 300.0) * np.cos(rows / 450.0))
            power = mean * rng.exponential(1.0, (h, size)).astype(np.float32)
            for c0, rr in centres:
                if r0 - 30 < rr < r0 + h + 30:
                    quiet = (np.abs(cols - c0) < 25) & (np.abs(rows - rr) < 25)
                    blob = 0.01 + 2.0 * np.exp(-((cols - c0) ** 2 + (rows - rr) ** 2) / (2 * SIGMA_PX**2))
                    power = np.where(quiet, blob, power)
            dn = np.clip(np.rint(np.sqrt(power) / SCALE), 1, 65535).astype(np.uint16)
            dn[:, :200] = 0  # nodata margin as in real products
            ds.write(dn, 1, window=Window(0, r0, size, h))


def region_grid(size: int):
    from rasterio.warp import transform_bounds

    from pipeline.grid import grid_for_bbox

    t = scene_transform(size)
    w, s, e, n = transform_bounds(CRS, "EPSG:4326", t.c, t.f - size * RES, t.c + size * RES, t.f)
    dx, dy = (e - w) * 0.01, (n - s) * 0.01
    return grid_for_bbox((w + dx, s + dy, e - dx, n - dy), GSD)


def child(kind: str, workdir: Path, threads: int) -> None:
    import rasterio
    from rasterio.enums import Resampling
    from rasterio.warp import reproject

    from pipeline.warp import open_sar, write_sar_grid

    size = int(json.loads((workdir / "scene.json").read_text())["size"])
    grid = region_grid(size)
    ru0 = resource.getrusage(resource.RUSAGE_SELF)
    cpu0 = ru0.ru_utime + ru0.ru_stime
    t0 = time.perf_counter()
    if kind == "pipeline":
        sar = open_sar(workdir / "source")
        write_sar_grid(sar, grid, workdir / "pipeline.tif", {"grid": {"threads": threads}})
    else:
        prof = {"driver": "GTiff", "width": grid.width, "height": grid.height, "count": 1, "dtype": "float32",
                "crs": grid.crs, "transform": grid.transform, "nodata": float("nan"), "tiled": True,
                "blockxsize": 512, "blockysize": 512, "compress": "zstd", "predictor": 3, "BIGTIFF": "IF_SAFER"}
        with rasterio.Env(GDAL_CACHEMAX=256), rasterio.open(workdir / "source" / "sar.tif") as src, \
                rasterio.open(workdir / "floor.tif", "w", **prof) as dst:
            reproject(rasterio.band(src, 1), rasterio.band(dst, 1), src_nodata=0, dst_nodata=float("nan"),
                      resampling=Resampling.bilinear, num_threads=threads, warp_mem_limit=256)
    wall = time.perf_counter() - t0
    ru = resource.getrusage(resource.RUSAGE_SELF)
    rss_mb = peak_rss_mb()
    cpu = ru.ru_utime + ru.ru_stime - cpu0
    print(json.dumps({"kind": kind, "wall_s": wall, "cpu_s": cpu, "peak_rss_mb": rss_mb, "px": grid.width * grid.height,
                      "shape": [grid.height, grid.width]}))


def peak_rss_mb() -> float:
    """This process's peak RSS (VmHWM). Not ru_maxrss: Linux carries the parent's peak across fork+exec."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def alignment(path: Path, size: int) -> float:
    """Max distance (px) between each target's centroid on the grid and grid.lonlat_to_pixel."""
    import rasterio
    from rasterio.windows import Window

    grid = region_grid(size)
    errs = []
    with rasterio.open(path) as ds:
        for lon, lat in targets(size):
            ec, er = grid.lonlat_to_pixel(lon, lat)
            c0, r0 = int(ec) - 12, int(er) - 12
            a = ds.read(1, window=Window(c0, r0, 25, 25)).astype(np.float64)
            p = a if "floor" in path.name else 10 ** (a / 10)
            if "floor" in path.name:
                p = (SCALE * p) ** 2  # floor warped DN (amplitude) bilinearly; compare positions only
            w = np.clip(np.nan_to_num(p - np.nanmedian(p)), 0, None)
            rr, cc = np.mgrid[r0 : r0 + 25, c0 : c0 + 25] + 0.5
            errs.append(float(np.hypot((w * cc).sum() / w.sum() - ec, (w * rr).sum() / w.sum() - er)))
    return max(errs)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--size", type=int, default=20000)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--workdir", type=Path, default=Path("/tmp/sareo-bench-warp"))
    ap.add_argument("--child", choices=["pipeline", "floor"])
    args = ap.parse_args()
    if args.child:
        child(args.child, args.workdir, args.threads)
        return
    wd = args.workdir
    src = wd / "source"
    src.mkdir(parents=True, exist_ok=True)
    meta = ROOT / "tests/data/capella/CAPELLA_C14_SP_GEO_HH_20240709040329_20240709040358_extended.json"
    info = json.loads((wd / "scene.json").read_text()) if (wd / "scene.json").exists() else {}
    if info.get("size") != args.size or not (src / "sar.tif").exists():
        t0 = time.perf_counter()
        write_scene(src / "sar.tif", args.size)
        (wd / "scene.json").write_text(json.dumps({"size": args.size}))
        print(f"wrote {args.size}x{args.size} UInt16 scene in {time.perf_counter() - t0:.1f} s")
    m = json.loads(meta.read_text()) if meta.exists() else {
        "product_type": "GEO", "collect": {"image": {"radiometry": "sigma_nought", "center_pixel": {}}}}
    m["collect"]["image"]["scale_factor"] = SCALE
    (src / "sar_metadata.json").write_text(json.dumps(m))
    (src / "provenance.json").write_text(json.dumps({"sar": {"provider": "capella", "product": "GEO"}}))
    res = {}
    for kind in ("floor", "pipeline"):
        out = subprocess.run([sys.executable, __file__, "--child", kind, "--workdir", str(wd),
                              "--threads", str(args.threads)], check=True, capture_output=True, text=True)
        r = json.loads(out.stdout.strip().splitlines()[-1])
        r["mpx_s"] = r["px"] / 1e6 / r["wall_s"]
        r["mpx_cpu_s"] = r["px"] / 1e6 / r["cpu_s"]
        r["align_max_px"] = alignment(wd / f"{kind}.tif", args.size)
        res[kind] = r
        print(f"{kind:9s}: grid {r['shape'][1]}x{r['shape'][0]} = {r['px'] / 1e6:.0f} Mpx in {r['wall_s']:.1f} s "
              f"= {r['mpx_s']:.1f} Mpx/s (wall; {r['mpx_cpu_s']:.1f} Mpx per CPU-s), "
              f"peak RSS {r['peak_rss_mb']:.0f} MB, "
              f"max alignment error {r['align_max_px']:.4f} px (9 targets)")
    ratio = res["pipeline"]["mpx_s"] / res["floor"]["mpx_s"]
    cratio = res["pipeline"]["mpx_cpu_s"] / res["floor"]["mpx_cpu_s"]
    print(f"pipeline / floor throughput: {ratio:.2f} (wall), {cratio:.2f} (per CPU-second), {args.threads} threads")
    print(f"peak RSS under 2 GB: {res['pipeline']['peak_rss_mb'] < 2048}")


if __name__ == "__main__":
    main()
