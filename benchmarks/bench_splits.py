"""Splits by ground: patches lost to block edges vs block_m, 7:1:2 per region, the AOIs as planned.

Run from the repository root: ``python benchmarks/bench_splits.py`` (``--quick`` for fewer regions).
Every figure is computed from the grid alone (pipeline.grid.grid_for_bbox + patch origins at
256/128 px), as the patches stage would plan it before any data: every planned patch is a
candidate (no nodata). The SAR2Earth boxes are illustrative AOIs, not the region files.

0. Three rules giving blocks splits from their coordinates (the lattice's rank-1 rule, groups of
   2 x 5 blocks with 7/1/2 each, independent draws): area shares in random windows of 40 blocks.
1. Share of candidate patches lost to block boundaries (patches whose footprint meets blocks of
   two splits) and the resulting shares, vs block_m, at 0.3 / 0.5 / 0.6 m GSD, on 12 x 12 km
   regions at 10, 45 and 60 degrees.
2. 7:1:2 within 3 points by patch count, for random regions of N blocks (area / block_m^2) at
   10, 45, 60 degrees and 0.3 / 0.5 / 0.6 m: share of regions within tolerance, worst error.
3. The 10 SAR2Earth AOIs and the two demo regions at 0.5 m: planned patches per split, shares,
   max share error and the share lost, for the lattice and, side by side, the old per-region
   ``blocks`` method (same grid, same candidates).
"""

from __future__ import annotations

import argparse
import logging
import math
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from pipeline.documents import read_yaml  # noqa: E402
from pipeline.grid import grid_for_bbox  # noqa: E402
from pipeline.patches import patch_origins  # noqa: E402
from pipeline.splits import EARTH_M_PER_DEG, SplitsParams, split_footprints, split_patches  # noqa: E402

SIZE, STRIDE = 256, 128
RATIOS = np.array([0.7, 0.1, 0.2])
AOIS = {  # illustrative AOIs around the SAR2Earth places (lon/lat boxes), not the region files
    "chicago": (-87.70, 41.84, -87.60, 41.92),
    "san_francisco": (-122.45, 37.74, -122.38, 37.80),
    "charleston_urban": (-79.97, 32.76, -79.92, 32.81),
    "charleston_rural": (-80.10, 32.80, -80.03, 32.86),
    "savannah": (-81.12, 32.04, -81.06, 32.09),
    "paris": (2.28, 48.83, 2.40, 48.89),
    "bengbu": (117.33, 32.90, 117.42, 32.96),
    "weifang": (119.08, 36.68, 119.18, 36.74),
    "sittwe_urban": (92.88, 20.12, 92.92, 20.17),
    "sittwe_rural": (92.80, 20.20, 92.86, 20.26),
}


def planned(bbox, gsd):
    """Grid, patch origins and their lon/lat footprint boxes, as the patches stage would cut them."""
    g = grid_for_bbox(bbox, gsd)
    rows, cols = patch_origins(g.height, g.width, SIZE, STRIDE)
    t = g.transform
    boxes = (t.c + cols * t.a, t.f + (rows + SIZE) * t.e, t.c + (cols + SIZE) * t.a, t.f + rows * t.e)
    return g, rows, cols, boxes


def area_m2(bbox) -> float:
    w, s, e, n = bbox
    return (e - w) * EARTH_M_PER_DEG * math.cos(math.radians((s + n) / 2)) * (n - s) * EARTH_M_PER_DEG


def box_of(lon, lat, w_m, h_m):
    return (lon, lat, lon + w_m / (EARTH_M_PER_DEG * math.cos(math.radians(lat))), lat + h_m / EARTH_M_PER_DEG)


def assignment_rules(n_windows=300, n_blocks=40, seed=7):
    """Area shares in random windows of n_blocks for three ways to give blocks splits from their coordinates."""
    import hashlib

    from pipeline.splits import lattice_codes

    def h(*key) -> int:
        return int.from_bytes(hashlib.sha256("/".join(map(str, key)).encode()).digest()[:8], "big")

    def groups(b, c, s):  # groups of 2 bands x 5 columns, 7/1/2 each by a hashed permutation
        out = np.empty(b.shape, np.int64)
        labels = np.repeat(np.arange(3), [7, 1, 2])
        for i, (bb, cc) in enumerate(zip(b.ravel().tolist(), c.ravel().tolist())):
            gb, gc = bb // 2, cc // 5
            order = sorted(range(10), key=lambda k: h(s, gb, gc, k))
            out.flat[i] = labels[order.index((bb - 2 * gb) * 5 + cc - 5 * gc)]
        return out

    def independent(b, c, s):
        u = np.array([h(s, bb, cc) / 2**64 for bb, cc in zip(b.ravel().tolist(), c.ravel().tolist())])
        return np.searchsorted(np.cumsum(RATIOS)[:-1], u, side="right").reshape(b.shape)

    rules = {"lattice (R2 rank-1)": lambda b, c, s: lattice_codes(b, c, s, tuple(RATIOS)),
             "groups of 2 x 5": groups, "independent": independent}
    rng = np.random.default_rng(seed)
    wins = []
    for _ in range(n_windows):
        w = math.sqrt(n_blocks * rng.uniform(1, 2.5))
        h_ = n_blocks / w
        wins.append((*rng.uniform(-5000, 5000, 2), *((w, h_) if rng.random() < 0.5 else (h_, w)),
                     int(rng.integers(10**6))))
    print(f"\n0. block assignment rules: area shares in {n_windows} random windows of {n_blocks} blocks "
          "(8 x 8 samples per block)")
    for name, rule in rules.items():
        errs = []
        for x0, y0, w, h_, s in wins:
            c = np.floor(x0 + (np.arange(int(w * 8)) + 0.5) / 8).astype(np.int64)
            b = np.floor(y0 + (np.arange(int(h_ * 8)) + 0.5) / 8).astype(np.int64)
            ub, bi = np.unique(b, return_inverse=True)
            uc, ci = np.unique(c, return_inverse=True)
            bb, cc = np.meshgrid(ub, uc, indexing="ij")
            codes = rule(bb, cc, s)[bi[:, None], ci[None, :]]
            errs.append(np.abs(np.bincount(codes.ravel(), minlength=3) / codes.size - RATIOS).max())
        e = np.array(errs)
        print(f"  {name:20}: beyond 3 points {np.mean(e > 0.03) * 100:5.1f} % of windows, median error "
              f"{np.median(e) * 100:.1f}, max {e.max() * 100:.1f} points")


def lost_vs_block_m(block_ms, gsds, lats, side_m=12_000.0):
    print(f"\n1. share of candidate patches lost to block boundaries vs block_m ({side_m / 1000:.0f} x "
          f"{side_m / 1000:.0f} km regions at {lats} deg, mean over latitudes; shares before thinning, noisy where a "
          "region holds few blocks: 36 at 2000 m)")
    print(f"{'block_m':>8} " + " ".join(f"{f'{g} m: lost   shares':>31}" for g in gsds))
    for bm in block_ms:
        cells = []
        for gsd in gsds:
            lost, shares = [], []
            for lat in lats:
                *_, boxes = planned(box_of(13.37 + lat / 7, lat + 0.013, side_m, side_m), gsd)
                rep = split_footprints(*boxes, SplitsParams(block_m=bm, max_trim=0.0)).report
                lost.append(rep["dropped_by_buffer"] / rep["candidates"])
                shares.append([rep["shares"][k] for k in ("train", "val", "test")])
            sh = np.mean(shares, axis=0)
            cells.append(f"{np.mean(lost) * 100:5.1f} %  {sh[0]:.3f}/{sh[1]:.3f}/{sh[2]:.3f}")
        print(f"{bm:8.0f} " + " ".join(f"{c:>31}" for c in cells))


def ratios_vs_blocks(block_m, n_blocks, gsds, lats, per_cell, seed=2026):
    print(f"\n2. 7:1:2 within 3 points by patch count, random regions of N blocks (block_m {block_m:.0f}, aspect "
          f"1-2.5, {per_cell} per latitude x GSD, random seed per region)")
    rng = np.random.default_rng(seed)
    for n in n_blocks:
        err0, err, lost, trim = [], [], [], []
        by_gsd = {g: [] for g in gsds}
        for lat in lats:
            for gsd in gsds:
                for _ in range(per_cell):
                    area = n * block_m**2
                    w = math.sqrt(area * rng.uniform(1, 2.5))
                    h = area / w
                    if rng.random() < 0.5:
                        w, h = h, w
                    bbox = box_of(rng.uniform(-170, 170), lat + rng.uniform(-1, 1), w, h)
                    *_, boxes = planned(bbox, gsd)
                    rep = split_footprints(*boxes, SplitsParams(block_m=block_m, seed=int(rng.integers(10**6)))).report
                    assert rep["audit"]["passed"]
                    err0.append(rep["max_share_error_before_trim"])
                    err.append(rep["max_share_error"])
                    by_gsd[gsd].append(rep["max_share_error_before_trim"])
                    lost.append(rep["dropped_by_buffer"] / rep["candidates"])
                    trim.append(rep["dropped_to_balance"] / rep["candidates"])
        e0, e, tr = np.array(err0), np.array(err), np.array(trim)
        per = ", ".join(f"{g} m {np.mean(np.array(v) <= 0.03) * 100:.0f} %" for g, v in by_gsd.items())
        print(f"  N = {n:4d} ({len(e)} regions): within 3 points before thinning {np.mean(e0 <= 0.03) * 100:5.1f} % "
              f"({per}), error median {np.median(e0) * 100:.1f} / p90 {np.quantile(e0, 0.9) * 100:.1f} / max "
              f"{e0.max() * 100:.1f} points; after thinning {np.mean(e <= 0.03) * 100:5.1f} % (max {e.max() * 100:.1f}), "
              f"thinned {tr.mean() * 100:.2f} % mean / {tr.max() * 100:.1f} % max of candidates; "
              f"lost to block edges {np.mean(lost) * 100:.1f} %")


def fmt(rep) -> str:
    c = rep["counts"]
    sh = rep["shares"]
    lost = rep["dropped_by_buffer"] / max(rep["candidates"], 1)
    thin = rep.get("dropped_to_balance", 0) / max(rep["candidates"], 1)
    return (f"{c['train']:6d} {c['val']:5d} {c['test']:5d}  {sh['train']:.3f}/{sh['val']:.3f}/{sh['test']:.3f} "
            f"{rep['max_share_error'] * 100:5.1f} {lost * 100:5.1f}% {thin * 100:4.1f}%")


def regions_table(regions, gsd_of, block_m):
    print(f"\n3. planned patches per split (block_m {block_m:.0f}; blocks: the per-region method at its defaults)")
    head = "train   val  test  shares             err  lost  thin"
    print(f"{'region':18} {'km2':>6} {'blocks':>6} {'cand':>6} | lattice {head} | blocks  {head}")
    fails = 0
    for name, bbox in regions.items():
        g, rows, cols, boxes = planned(bbox, gsd_of(name))
        t0 = time.perf_counter()
        lat = split_footprints(*boxes, SplitsParams(block_m=block_m)).report
        t_lat = time.perf_counter() - t0
        old = split_patches(rows, cols, SIZE, STRIDE, SplitsParams(method="blocks")).report
        assert lat["audit"]["passed"] and old["audit"]["passed"]
        fails += not lat["within_tolerance"]
        n_blocks = area_m2(bbox) / block_m**2
        print(f"{name:18} {area_m2(bbox) / 1e6:6.1f} {n_blocks:6.1f} {lat['candidates']:6d} | "
              f"lattice {fmt(lat)} | blocks  {fmt(old)}   ({t_lat:.2f} s)")
    return fails


def aois_vs_block_m(block_ms, gsd=0.5):
    print(f"\n4. the 10 AOIs at {gsd} m vs block_m: AOIs within 3 points (before thinning), share lost to block "
          "edges and thinned (all candidates of the 10)")
    for bm in block_ms:
        within = within0 = 0
        cand = lost = thin = 0
        for bbox in AOIS.values():
            *_, boxes = planned(bbox, gsd)
            rep = split_footprints(*boxes, SplitsParams(block_m=bm)).report
            within += rep["within_tolerance"]
            within0 += rep["max_share_error_before_trim"] <= rep["tolerance"]
            cand += rep["candidates"]
            lost += rep["dropped_by_buffer"]
            thin += rep["dropped_to_balance"]
        print(f"  block_m {bm:6.0f}: {within:2d} of 10 within 3 points ({within0:2d} before thinning), lost to edges "
              f"{lost / cand * 100:4.1f} %, thinned {thin / cand * 100:4.1f} %")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="fewer random regions")
    ap.add_argument("--block-m", type=float, default=SplitsParams().block_m)
    args = ap.parse_args()
    logging.getLogger("sareo.splits").setLevel(logging.ERROR)  # regions out of tolerance are counted below
    t0 = time.perf_counter()
    assignment_rules()
    lost_vs_block_m([500, 750, 1000, 1500, 2000], [0.3, 0.5, 0.6], [10, 45, 60])
    ratios_vs_blocks(args.block_m, [40, 80, 160], [0.3, 0.5, 0.6], [10, 45, 60], 3 if args.quick else 8)
    fails = regions_table(AOIS, lambda n: 0.5, args.block_m)
    aois_vs_block_m([500, 750, 1000, 1250, 1500])
    demo = {}
    gsd = {}
    for name in ("helsinki", "uppland"):
        doc = read_yaml(ROOT / "regions" / f"{name}.yaml", "region file", ValueError)
        demo[name] = tuple(doc["aoi"]["bbox"])
        gsd[name] = float(doc["gsd_m"])
    fails_demo = regions_table(demo, gsd.__getitem__, args.block_m)
    print(f"\nSAR2Earth AOIs outside 3 points: {fails} of {len(AOIS)}; demo regions: {fails_demo} of 2. "
          f"Total {time.perf_counter() - t0:.0f} s.")


if __name__ == "__main__":
    main()
