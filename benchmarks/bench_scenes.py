"""Scale benchmark of a many-scene region: N overlapping SIZE x SIZE scenes through every region stage.

Builds, in a throw-away project folder (its own regions/, params.yaml and data/), ten UInt16 UTM
GeoTIFF scenes at 0.5 m (tiled 512, zstd, Capella GEO metadata, written window by window), each
shifted and with its valid swath rotated so the scenes overlap only partly; one uint8 RGB EO
GeoTIFF (0.6 m, UTM) covering their union; a tiny OSM XML file. Scenes and EO show one
synthetic ground (street lattice, buildings, fields, a lake), so registration has real structure
to match. For each N of --scenes, a region of the first N scenes (AOI = their union) runs
``sareo --root PROJECT STAGE NAME`` for fetch, register, grid, labels and patches, each as a child
process; the wall time and the peak RSS of the whole process tree (psutil, polled every 0.1 s)
are recorded per stage. Registration runs at ``coregister.working_gsd_m: 2.0``.

With ``--workers 1,2`` each N is built once per worker count on a dask.distributed
LocalCluster of that many worker processes (one thread each, started by this script; the
stages get ``sareo --scheduler ADDRESS``), the workers' memory counted with the stage's; the
summary gives the time ratio between the counts and whether every output file is byte-identical.

    python benchmarks/bench_scenes.py [--size 10000] [--scenes 1,10] [--workers 1,2] [--keep DIR]
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import json
import math
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import yaml

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

LON0, LAT0 = 14.25, 40.85  # scene centre: UTM 33N, the zone of the Capella GEO fixture
RES = 0.5  # SAR pixel spacing (m)
EO_RES = 0.6  # EO pixel spacing (m), NAIP-like
SCALE = 9.657046131856903e-05  # the real GEO fixture's scale_factor (scene k uses SCALE * (1 + 0.1 k))
LOOKS = 4.0
MAX_SCENES = 10
OFFSET = 0.2  # scene centres sit this share of a scene's side around the first one
WINDOW = (512, 2048)  # rows x cols written at once (whole 512-px tiles)
STAGES = ("fetch", "register", "grid", "labels", "patches")
META = ROOT / "tests/data/capella/CAPELLA_C14_SP_GEO_HH_20240709040329_20240709040358_extended.json"
FORMAT = "bench_scenes/1"  # bump when the generated inputs change


@functools.lru_cache(maxsize=None)
def utm():
    from pipeline.grid import utm_crs

    return utm_crs(LON0, LAT0)


@functools.lru_cache(maxsize=None)
def centre() -> tuple[float, float]:
    """The first scene's centre in UTM metres (the lake and the OSM features sit around it)."""
    from pyproj import Transformer

    return Transformer.from_crs("EPSG:4326", utm(), always_xy=True).transform(LON0, LAT0)


def scene_layout(size: int) -> list[dict[str, float]]:
    """Scene k: its centre (UTM m) and the rotation of its valid swath (degrees)."""
    x0, y0 = centre()
    side = size * RES
    out = []
    for k in range(MAX_SCENES):
        r = 0.0 if k == 0 else OFFSET * side
        th = 2 * math.pi * (k - 1) / (MAX_SCENES - 1)
        out.append({"cx": round(x0 + r * math.cos(th)), "cy": round(y0 + r * math.sin(th)),
                    "angle": (-1) ** k * (4.0 + 1.5 * k)})
    return out


def scene_transform(size: int, sc: dict[str, float]):
    from affine import Affine

    half = size * RES / 2
    return Affine(RES, 0, sc["cx"] - half, 0, -RES, sc["cy"] + half)


def _hash(ix: np.ndarray, iy: np.ndarray, salt: int) -> np.ndarray:
    """A uniform [0, 1) value per integer cell, the same wherever it is evaluated (SAR and EO agree)."""
    h = (ix.astype(np.int64) * 374761393 + iy.astype(np.int64) * 668265263 + salt * 982451653) & 0xFFFFFFFF
    h = ((h ^ (h >> 13)) * 1274126177) & 0xFFFFFFFF
    return ((h ^ (h >> 16)) & 0xFFFFFF).astype(np.float32) / np.float32(2**24)


def ground(x: np.ndarray, y: np.ndarray) -> dict[str, np.ndarray]:
    """The synthetic ground at UTM (x, y): class masks and a per-object value in [0, 1)."""
    urban = (np.sin(x / 900.0) * np.cos(y / 700.0) + 0.3 * np.sin((x + y) / 350.0)) > 0.0
    road = (np.mod(x, 120.0) < 8.0) | (np.mod(y, 120.0) < 8.0)
    cx, cy = np.floor(x / 30.0), np.floor(y / 30.0)
    hb = _hash(cx, cy, 1)
    fx, fy = x - cx * 30.0, y - cy * 30.0
    lo, hi = 3.0 + 6.0 * hb, 27.0 - 5.0 * _hash(cx, cy, 2)
    building = urban & ~road & (hb > 0.3) & (fx > lo) & (fx < hi) & (fy > lo) & (fy < hi)
    parcel = _hash(np.floor(x / 150.0), np.floor(y / 110.0), 3)
    x0, y0 = centre()
    lake = np.hypot(x - (x0 - 900.0), y - (y0 + 700.0)) < 350.0 + 60.0 * np.sin(np.arctan2(y - y0, x - x0) * 3)
    return {"urban": urban, "road": road & ~lake, "building": building & ~lake, "lake": lake, "hb": hb,
            "parcel": parcel}


def sar_mean(g: dict[str, np.ndarray]) -> np.ndarray:
    """Mean sigma0 (linear) of the ground: bright buildings, dark roads and water, textured fields."""
    p = np.where(g["urban"], 0.05, 0.015 + 0.05 * g["parcel"]).astype(np.float32)
    p = np.where(g["building"], 0.3 + 1.5 * g["hb"], p)
    p = np.where(g["road"], 0.004, p)
    return np.where(g["lake"], 0.0006, p).astype(np.float32)


def eo_rgb(g: dict[str, np.ndarray]) -> np.ndarray:
    """RGB (uint8, 3 x H x W) of the same ground: roofs, asphalt, fields, water."""
    par = g["parcel"]
    r = np.where(g["urban"], 150.0, 70.0 + 80.0 * par)
    gr = np.where(g["urban"], 145.0, 110.0 + 50.0 * par)
    b = np.where(g["urban"], 135.0, 50.0 + 30.0 * par)
    roof = g["building"]
    r, gr, b = (np.where(roof, 120.0 + 100.0 * g["hb"], r), np.where(roof, 70.0 + 60.0 * g["hb"], gr),
                np.where(roof, 60.0 + 50.0 * g["hb"], b))
    for arr, v in ((r, 75.0), (gr, 75.0), (b, 80.0)):
        arr[g["road"]] = v
    for arr, v in ((r, 25.0), (gr, 45.0), (b, 70.0)):
        arr[g["lake"]] = v
    return np.clip(np.stack([r, gr, b]), 0, 255).astype(np.uint8)


def _windows(height: int, width: int):
    from rasterio.windows import Window

    for r0 in range(0, height, WINDOW[0]):
        for c0 in range(0, width, WINDOW[1]):
            yield Window(c0, r0, min(WINDOW[1], width - c0), min(WINDOW[0], height - r0))


def _coords(transform, win) -> tuple[np.ndarray, np.ndarray]:
    cols = np.arange(win.col_off, win.col_off + win.width, dtype=np.float64) + 0.5
    rows = np.arange(win.row_off, win.row_off + win.height, dtype=np.float64) + 0.5
    x = transform.c + transform.a * cols
    y = transform.f + transform.e * rows
    return np.meshgrid(x, y)


def write_scene(path: Path, size: int, k: int, sc: dict[str, float]) -> None:
    """Scene k: DN = sqrt(sigma0) / scale_k with 4-look speckle, DN 0 outside its rotated swath."""
    import rasterio

    t = scene_transform(size, sc)
    scale = SCALE * (1 + 0.1 * k)
    a = math.radians(sc["angle"])
    half = 0.99 * size * RES / (math.cos(abs(a)) + math.sin(abs(a))) / 2  # the rotated square fits the raster
    prof = {"driver": "GTiff", "width": size, "height": size, "count": 1, "dtype": "uint16", "crs": utm(),
            "transform": t, "nodata": 0, "tiled": True, "blockxsize": 512, "blockysize": 512, "compress": "zstd",
            "BIGTIFF": "IF_SAFER"}
    with rasterio.Env(GDAL_CACHEMAX=64), rasterio.open(path, "w", **prof) as ds:
        for win in _windows(size, size):
            x, y = _coords(t, win)
            u = (x - sc["cx"]) * math.cos(a) + (y - sc["cy"]) * math.sin(a)
            v = -(x - sc["cx"]) * math.sin(a) + (y - sc["cy"]) * math.cos(a)
            inside = (np.abs(u) < half) & (np.abs(v) < half)
            rng = np.random.default_rng([20261121, k, int(win.row_off), int(win.col_off)])
            power = sar_mean(ground(x, y)) * rng.gamma(LOOKS, 1.0 / LOOKS, x.shape).astype(np.float32)
            dn = np.clip(np.rint(np.sqrt(power) / scale), 1, 65535).astype(np.uint16)
            dn[~inside] = 0
            ds.write(dn, 1, window=win)


def write_metadata(path: Path, size: int, k: int, sc: dict[str, float]) -> None:
    """The Capella GEO fixture's metadata with this scene's scale factor, size, geotransform and date."""
    m = json.loads(META.read_text())
    img = m["collect"]["image"]
    t = scene_transform(size, sc)
    img["scale_factor"] = SCALE * (1 + 0.1 * k)
    img["rows"] = img["columns"] = size
    img["pixel_spacing_row"] = img["pixel_spacing_column"] = RES
    img["image_geometry"]["geotransform"] = [t.c, t.a, t.b, t.f, t.d, t.e]
    img["image_geometry"]["coordinate_system"]["wkt"] = utm().to_wkt("WKT1_GDAL")
    day = f"2024-{1 + k:02d}-09T04:03:29.000000Z"
    m["collect"]["start_timestamp"] = day
    m["collect"]["stop_timestamp"] = day.replace("04:03:29", "04:03:58")
    path.write_text(json.dumps(m))


def union_bounds(size: int, n: int) -> tuple[float, float, float, float]:
    """The lon/lat bbox of the first n scenes' rasters."""
    from rasterio.warp import transform_bounds

    boxes = []
    for sc in scene_layout(size)[:n]:
        t = scene_transform(size, sc)
        boxes.append(transform_bounds(utm(), "EPSG:4326", t.c, t.f - size * RES, t.c + size * RES, t.f,
                                      densify_pts=21))
    return (min(b[0] for b in boxes), min(b[1] for b in boxes), max(b[2] for b in boxes), max(b[3] for b in boxes))


def union_share(size: int, n: int) -> float:
    """Area of the union of the first n valid swaths over one scene's raster area."""
    from shapely import affinity
    from shapely.geometry import box
    from shapely.ops import unary_union

    polys = []
    for sc in scene_layout(size)[:n]:
        a = math.radians(sc["angle"])
        half = 0.99 * size * RES / (math.cos(abs(a)) + math.sin(abs(a))) / 2
        sq = box(sc["cx"] - half, sc["cy"] - half, sc["cx"] + half, sc["cy"] + half)
        polys.append(affinity.rotate(sq, sc["angle"], origin=(sc["cx"], sc["cy"])))
    return unary_union(polys).area / (size * RES) ** 2


def write_eo(path: Path, size: int) -> None:
    """uint8 RGB over the union of all scenes plus 200 m, UTM, tiled 512, zstd, by windows."""
    import rasterio
    from affine import Affine
    from rasterio.warp import transform_bounds

    w, s, e, n = transform_bounds("EPSG:4326", utm(), *union_bounds(size, MAX_SCENES), densify_pts=21)
    w, s, e, n = math.floor(w - 200), math.floor(s - 200), math.ceil(e + 200), math.ceil(n + 200)
    width, height = math.ceil((e - w) / EO_RES), math.ceil((n - s) / EO_RES)
    t = Affine(EO_RES, 0, w, 0, -EO_RES, n)
    prof = {"driver": "GTiff", "width": width, "height": height, "count": 3, "dtype": "uint8", "crs": utm(),
            "transform": t, "tiled": True, "blockxsize": 512, "blockysize": 512, "compress": "zstd",
            "photometric": "RGB", "interleave": "pixel", "BIGTIFF": "IF_SAFER"}
    with rasterio.Env(GDAL_CACHEMAX=64), rasterio.open(path, "w", **prof) as ds:
        for win in _windows(height, width):
            x, y = _coords(t, win)
            rgb = eo_rgb(ground(x, y))
            rng = np.random.default_rng([7, int(win.row_off), int(win.col_off)])
            noise = rng.integers(-6, 7, rgb.shape, dtype=np.int16)
            ds.write(np.clip(rgb.astype(np.int16) + noise, 0, 255).astype(np.uint8), window=win)


def write_osm(path: Path, size: int) -> None:
    """A tiny OSM XML: residential and farmland areas, a park, the lake, a few buildings, primary roads."""
    from pyproj import Transformer

    w, s, e, n = union_bounds(size, MAX_SCENES)
    inv = Transformer.from_crs(utm(), "EPSG:4326", always_xy=True)
    x0, y0 = centre()
    nodes: list[tuple[float, float]] = []
    ways: list[tuple[list[int], dict[str, str]]] = []

    def way(lonlat: list[tuple[float, float]], tags: dict[str, str], closed: bool) -> None:
        ids = []
        for p in lonlat:
            nodes.append(p)
            ids.append(len(nodes))
        ways.append((ids + ([ids[0]] if closed else []), tags))

    def rect_m(xa: float, ya: float, xb: float, yb: float) -> list[tuple[float, float]]:
        return [inv.transform(px, py) for px, py in ((xa, ya), (xb, ya), (xb, yb), (xa, yb))]

    mx, my = (e - w) / 2, (n - s) / 2
    way([(w, s + my), (w + mx, s + my), (w + mx, n), (w, n)], {"landuse": "residential"}, True)
    way([(w + mx, s), (e, s), (e, s + my), (w + mx, s + my)], {"landuse": "farmland"}, True)
    way(rect_m(x0 + 300, y0 - 600, x0 + 900, y0 - 200), {"leisure": "park"}, True)
    ring = [inv.transform(x0 - 900 + 360 * math.cos(t), y0 + 700 + 360 * math.sin(t))
            for t in np.linspace(0, 2 * math.pi, 24, endpoint=False)]
    way(ring, {"natural": "water"}, True)
    for i in range(6):
        bx, by = x0 - 1500 + 240 * i, y0 + 1203
        way(rect_m(bx, by, bx + 18, by + 14), {"building": "yes"}, True)
    for j in range(-3, 4):
        yy = y0 + 1200 * j + 4
        way([inv.transform(x, yy) for x in np.linspace(x0 - 4500, x0 + 4500, 10)], {"highway": "primary"}, False)
        xx = x0 + 1200 * j + 4
        way([inv.transform(xx, y) for y in np.linspace(y0 - 4500, y0 + 4500, 10)], {"highway": "residential"}, False)
    lines = ['<?xml version="1.0" encoding="UTF-8"?>',
             '<osm version="0.6" generator="sareo bench_scenes" copyright="sareo bench_scenes: synthetic features">',
             f'  <bounds minlat="{s:.7f}" minlon="{w:.7f}" maxlat="{n:.7f}" maxlon="{e:.7f}"/>']
    lines += [f'  <node id="{i}" version="1" lat="{lat:.7f}" lon="{lon:.7f}"/>'
              for i, (lon, lat) in enumerate(nodes, 1)]
    for j, (ids, tags) in enumerate(ways, 1):
        lines.append(f'  <way id="{j}" version="1">')
        lines += [f'    <nd ref="{i}"/>' for i in ids]
        lines += [f'    <tag k="{k}" v="{v}"/>' for k, v in tags.items()]
        lines.append("  </way>")
    lines.append("</osm>")
    path.write_text("\n".join(lines) + "\n")


def make_inputs(project: Path, size: int, n_max: int) -> None:
    """scenes/k*.tif (+ metadata), scenes/eo.tif and scenes/osm.osm; reused when already made for this size."""
    d = project / "scenes"
    d.mkdir(parents=True, exist_ok=True)
    stamp = d / "inputs.json"
    have = json.loads(stamp.read_text()) if stamp.exists() else {}
    if have.get("format") != FORMAT or have.get("size") != size:
        have = {"format": FORMAT, "size": size, "scenes": 0}
        for f in d.iterdir():
            f.unlink()
    t0 = time.perf_counter()
    for k, sc in enumerate(scene_layout(size)[:n_max]):
        if k < have["scenes"]:
            continue
        write_scene(d / f"k{k}.tif", size, k, sc)
        write_metadata(d / f"k{k}_extended.json", size, k, sc)
        have["scenes"] = k + 1
        stamp.write_text(json.dumps(have))
        print(f"  wrote scene k{k} ({size}x{size}, {(d / f'k{k}.tif').stat().st_size / 1e6:.0f} MB) "
              f"at {time.perf_counter() - t0:.0f} s", flush=True)
    if not have.get("eo"):
        write_eo(d / "eo.tif", size)
        write_osm(d / "osm.osm", size)
        have["eo"] = True
        stamp.write_text(json.dumps(have))
        print(f"  wrote EO ({(d / 'eo.tif').stat().st_size / 1e6:.0f} MB) and OSM at {time.perf_counter() - t0:.0f} s",
              flush=True)


def write_project(project: Path, size: int, ns: list[int]) -> None:
    """params.yaml (the repo's, minus the demo section, registration at 2 m, 1 km split blocks) and regions."""
    params = yaml.safe_load((ROOT / "params.yaml").read_text())
    params.pop("demo", None)
    params["coregister"]["working_gsd_m"] = 2.0
    params["splits"]["block_m"] = 1000.0  # the default for real-size regions (the repo's 300 m suits the demo)
    (project / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    (project / "regions").mkdir(exist_ok=True)
    for n in ns:
        region = {
            "name": f"scenes{n}",
            "aoi": {"bbox": [round(v, 7) for v in union_bounds(size, n)]},
            "gsd_m": RES,
            "sar": [{"file": f"scenes/k{k}.tif", "metadata": f"scenes/k{k}_extended.json", "provider": "capella",
                     "product": "GEO"} for k in range(n)],
            "eo": {"file": "scenes/eo.tif", "datetime": "2024-06-01"},
            "osm": {"file": "scenes/osm.osm"},
            "attribution": "Synthetic scenes, EO and OSM-format features made by benchmarks/bench_scenes.py; "
                           "metadata layout of Capella Space Open Data (CC BY 4.0).",
        }
        (project / "regions" / f"scenes{n}.yaml").write_text(yaml.safe_dump(region, sort_keys=False))


def tree_memory(proc) -> tuple[int, int]:
    """(summed RSS, largest VmHWM) in bytes over a process and all its descendants.

    The sum counts shared pages in each process (an upper bound); VmHWM is each process's own
    peak since its exec, so it also catches a spike between two polls.
    """
    import psutil

    try:
        procs = [proc, *proc.children(recursive=True)]
    except psutil.Error:
        return 0, 0
    total = hwm = 0
    for p in procs:
        try:
            total += p.memory_info().rss
            for line in Path(f"/proc/{p.pid}/status").read_text().splitlines():
                if line.startswith("VmHWM:"):
                    hwm = max(hwm, int(line.split()[1]) * 1024)
        except (psutil.Error, OSError):
            pass
    return total, hwm


def run_stage(project: Path, stage: str, name: str, log: Path, scheduler: str | None = None,
              workers: list[Any] = ()) -> dict[str, Any]:
    """``sareo --root PROJECT [--scheduler ADDRESS] STAGE NAME`` as a child: wall time, peak RSS of its
    process tree plus the cluster's ``workers`` (psutil processes; polled every 0.1 s), the largest
    single-process VmHWM seen."""
    import psutil

    sareo = shutil.which("sareo", path=str(Path(sys.executable).parent)) or "sareo"
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    with open(log, "w") as out:
        t0 = time.perf_counter()
        sched = ["--scheduler", scheduler] if scheduler else []
        proc = subprocess.Popen([sareo, "--root", str(project), *sched, stage, name], stdout=out,
                                stderr=subprocess.STDOUT, env=env, cwd=project)  # not the caller's folder: it would shadow PYTHONPATH
        ps = psutil.Process(proc.pid)
        peak = hwm = 0
        while proc.poll() is None:
            parts = [tree_memory(q) for q in (ps, *workers)]
            peak, hwm = max(peak, sum(t for t, _ in parts)), max(hwm, *(h for _, h in parts))
            time.sleep(0.1)
        wall = time.perf_counter() - t0
    res = {"stage": stage, "wall_s": wall, "peak_mb": peak / 2**20, "hwm_mb": hwm / 2**20, "rc": proc.returncode}
    if proc.returncode != 0:
        res["error"] = [ln for ln in log.read_text(errors="replace").splitlines() if ln.strip()][-3:]
    return res


def output_digest(project: Path, name: str) -> dict[str, str]:
    """sha256 of every output file of the region (stage directories and store), by relative path."""
    import hashlib

    from pipeline.layout import ProjectLayout

    lay = ProjectLayout.at(project).region(name)
    out = {}
    for base in (lay.dir, lay.store):
        for f in sorted(base.rglob("*")) if base.exists() else ():
            if f.is_file() and "logs" not in f.parts:
                out[f.relative_to(project).as_posix()] = hashlib.sha256(f.read_bytes()).hexdigest()
    return out


@contextlib.contextmanager
def local_cluster(n: int):
    """A LocalCluster of ``n`` worker processes with one thread each; yields (address, worker processes)."""
    import psutil
    from distributed import Client, LocalCluster

    with LocalCluster(n_workers=n, threads_per_worker=1, processes=True, dashboard_address=None,
                      memory_limit=0) as cluster, Client(cluster) as client:  # fmt: skip
        pids = [int(v) for v in client.run(os.getpid).values()]
        yield cluster.scheduler_address, [psutil.Process(pid) for pid in pids]


def clear_outputs(project: Path, name: str) -> None:
    from pipeline.layout import ProjectLayout

    lay = ProjectLayout.at(project).region(name)
    for p in (lay.dir, lay.store):
        if p.exists():
            shutil.rmtree(p)


def region_figures(project: Path, name: str) -> dict[str, Any]:
    """Grid size, registration per scene and patches per scene, from the stage outputs."""
    from pipeline.layout import ProjectLayout

    lay = ProjectLayout.at(project).region(name)
    out: dict[str, Any] = {}
    if lay.grid.grid.exists():
        g = json.loads(lay.grid.grid.read_text())
        out["grid"] = (int(g["width"]), int(g["height"]))
    if lay.registration.record.exists():
        out["registration"] = json.loads(lay.registration.record.read_text()).get("scenes") or {}
    zattrs = lay.store / "zarr.json"
    if zattrs.exists():
        splits = json.loads(zattrs.read_text()).get("attributes", {}).get("splits", {})
        out["per_scene"] = splits.get("per_scene") or {}
        out["patches"] = splits.get("patches")
        out["counts"] = splits.get("counts")
    if lay.store.exists():
        out["store_mb"] = sum(f.stat().st_size for f in lay.store.rglob("*") if f.is_file()) / 1e6
    return out


def self_hwm_mb() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def print_table(n: int, rows: list[dict[str, Any]], fig: dict[str, Any]) -> None:
    print(f"\nN = {n} scene(s): grid {fig.get('grid', ('?', '?'))[0]} x {fig.get('grid', ('?', '?'))[1]} px"
          + (f" = {fig['grid'][0] * fig['grid'][1] / 1e6:.0f} Mpx" if "grid" in fig else ""), flush=True)
    print(f"  {'stage':9s} | {'wall s':>8s} | {'peak RSS MB':>11s} | {'proc HWM MB':>11s}")
    for r in rows:
        tail = "" if r["rc"] == 0 else f"  FAILED (exit {r['rc']}): {' / '.join(r.get('error', []))}"
        print(f"  {r['stage']:9s} | {r['wall_s']:8.1f} | {r['peak_mb']:11.0f} | {r['hwm_mb']:11.0f}{tail}")
    print(f"  {'total':9s} | {sum(r['wall_s'] for r in rows):8.1f} | {max(r['peak_mb'] for r in rows):11.0f} | "
          f"{max(r['hwm_mb'] for r in rows):11.0f}")
    reg = fig.get("registration") or {}
    if reg:
        print(f"  registration flagged for {sum(bool(r.get('flagged')) for r in reg.values())} of {len(reg)} scene(s)")
    for sid, rec in reg.items():
        sh = rec.get("shift_m") or {}
        print(f"  register {sid}: confidence {rec.get('confidence')}, flagged {rec.get('flagged')}, "
              f"shift E {sh.get('east')} N {sh.get('north')} m")
    for sid, counts in (fig.get("per_scene") or {}).items():
        print(f"  patches {sid}: {sum(counts.values())} ({', '.join(f'{k} {v}' for k, v in counts.items())})")
    if "patches" in fig:
        print(f"  patches total: {fig['patches']} ({fig.get('store_mb', 0):.0f} MB store)")


def print_summary(results: dict[int, tuple[list[dict[str, Any]], dict[str, Any]]], ns: list[int]) -> None:
    """Wall time and peak RSS per stage for every N, the time ratio of the largest N to the smallest, the 2 GB check."""
    print("\nsummary (wall s per stage; peak RSS = whole process tree, polled every 0.1 s)")
    print("  " + " | ".join([f"{'N':>3s}"] + [f"{s:>17s}" for s in STAGES] + [f"{'total':>8s}", "max peak MB"]))
    for n, (rows, _) in results.items():
        by = {r["stage"]: r for r in rows}
        cells = [f"{by[s]['wall_s']:6.1f} ({by[s]['peak_mb']:5.0f} MB)" if s in by else f"{'-':>17s}"
                 for s in STAGES]
        print("  " + " | ".join([f"{n:3d}"] + cells + [f"{sum(r['wall_s'] for r in rows):8.1f}",
                                                      f"{max(r['peak_mb'] for r in rows):.0f}"]))
    lo, hi = ns[0], ns[-1]
    if hi != lo and all(r["rc"] == 0 for n in (lo, hi) for r in results[n][0]):
        tl = sum(r["wall_s"] for r in results[lo][0])
        th = sum(r["wall_s"] for r in results[hi][0])
        per = ", ".join(f"{s} {results[hi][0][i]['wall_s'] / results[lo][0][i]['wall_s']:.1f}x"
                        for i, s in enumerate(STAGES))
        print(f"time {hi} vs {lo} scene(s): {th / tl:.2f}x total ({per}); "
              f"per scene {th / hi:.1f} s vs {tl / lo:.1f} s")
    peak = max(r["peak_mb"] for rows, _ in results.values() for r in rows)
    failed = [(n, r["stage"]) for n, (rows, _) in results.items() for r in rows if r["rc"] != 0]
    over = [(n, r["stage"]) for n, (rows, _) in results.items() for r in rows if r["peak_mb"] >= 2048]
    print(f"peak RSS under 2 GB in every stage: {not over}" + (f" (over: {over})" if over else "")
          + f"; max {peak:.0f} MB; failed stages: {failed or 'none'}; this script's own peak {self_hwm_mb():.0f} MB")


def print_workers(n: int, by_workers: dict[int, tuple[list[dict[str, Any]], dict[str, str]]]) -> None:
    """Wall time per stage for each worker count, the ratio to the first count, and the byte check."""
    ws = list(by_workers)
    base_rows, base_digest = by_workers[ws[0]]
    print(f"\nN = {n}: dask LocalCluster workers (1 thread each), wall s per stage, and ratio to {ws[0]} worker(s)")
    for w in ws:
        rows, digest = by_workers[w]
        total = sum(r["wall_s"] for r in rows)
        base = sum(r["wall_s"] for r in base_rows)
        same = digest == base_digest
        diff = sorted(k for k in set(digest) | set(base_digest) if digest.get(k) != base_digest.get(k))
        print(f"  workers {w}: " + ", ".join(f"{r['stage']} {r['wall_s']:.1f}" for r in rows)
              + f"; total {total:.1f} s ({base / total:.2f}x the speed of {ws[0]}); peak {max(r['peak_mb'] for r in rows):.0f} MB; "
              + f"outputs byte-identical to {ws[0]} worker(s): {same}" + ("" if same else f" (differ: {diff[:5]})"))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--size", type=int, default=10000, help="scene side in pixels (0.5 m)")
    ap.add_argument("--scenes", default="1,10", help="comma-separated scene counts to run, each <= 10")
    ap.add_argument("--keep", type=Path, default=None,
                    help="project folder to build in and keep (inputs there are reused); default: a temp folder")
    ap.add_argument("--workers", default="", help="comma-separated dask worker counts, e.g. 1,2 (default: local threads)")
    args = ap.parse_args()
    ns = sorted({int(v) for v in args.scenes.split(",") if v.strip()})
    if not ns or ns[0] < 1 or ns[-1] > MAX_SCENES:
        ap.error(f"--scenes: counts between 1 and {MAX_SCENES}, got {args.scenes!r}")
    project = args.keep.resolve() if args.keep else Path(tempfile.mkdtemp(prefix="sareo-bench-scenes-"))
    project.mkdir(parents=True, exist_ok=True)
    head = subprocess.run(["git", "-C", str(ROOT), "rev-parse", "--short", "HEAD"], capture_output=True, text=True)
    print(f"code: {ROOT}" + (f" at {head.stdout.strip()}" if head.returncode == 0 else ""))
    print(f"project {project}: scenes {args.size} x {args.size} px at {RES} m (UInt16, tiled 512, zstd), "
          f"EO {EO_RES} m RGB; runs N = {', '.join(map(str, ns))}", flush=True)
    print(f"register runs at coregister.working_gsd_m: 2.0 (set in the project's params.yaml) to keep it bounded; "
          f"splits.block_m: 1000", flush=True)
    t0 = time.perf_counter()
    make_inputs(project, args.size, ns[-1])
    write_project(project, args.size, ns)
    one = union_share(args.size, 1)
    print(f"inputs ready in {time.perf_counter() - t0:.0f} s; union of the N valid swaths in units of one swath "
          "(of one scene's raster): " + ", ".join(f"N={n}: {union_share(args.size, n) / one:.2f} "
                                                  f"({union_share(args.size, n):.2f})" for n in ns), flush=True)
    results: dict[int, tuple[list[dict[str, Any]], dict[str, Any]]] = {}
    (project / "logs").mkdir(exist_ok=True)
    counts = [int(v) for v in args.workers.split(",") if v.strip()] if args.workers else [0]
    try:
        for n in ns:
            name = f"scenes{n}"
            by_workers: dict[int, tuple[list[dict[str, Any]], dict[str, str]]] = {}
            for w in counts:
                clear_outputs(project, name)
                with local_cluster(w) if w else contextlib.nullcontext((None, [])) as (address, procs):
                    label = f"N={n}" + (f" workers={w}" if w else "")
                    rows = []
                    for stage in STAGES:
                        r = run_stage(project, stage, name, project / "logs" / f"{name}_{w}_{stage}.log", address, procs)
                        rows.append(r)
                        print(f"  {label} {stage}: {r['wall_s']:.1f} s, peak {r['peak_mb']:.0f} MB"
                              + ("" if r["rc"] == 0 else f", FAILED: {r.get('error')}"), flush=True)
                        if r["rc"] != 0:
                            break
                results[n] = (rows, region_figures(project, name))
                print_table(n, *results[n])
                by_workers[w] = (rows, output_digest(project, name))
            if len(counts) > 1:
                print_workers(n, by_workers)
        print_summary(results, ns)
    finally:
        if not args.keep:
            shutil.rmtree(project, ignore_errors=True)


if __name__ == "__main__":
    main()
