"""Splits: 7:1:2 by patch count, no footprint shared across splits (checked by brute force), determinism."""

from __future__ import annotations

import numpy as np
import pytest

from pipeline.params import ParamsError, parse_section
from pipeline.splits import SplitError, SplitsParams, audit, drop_overlaps, split_patches

SIZE, STRIDE = 256, 128


def sp(**kw) -> SplitsParams:
    """A splits section as params.yaml would give it (checked like the real file)."""
    return parse_section(SplitsParams, kw, "params.yaml")


def lattice(n_rows: int, n_cols: int, seed: int = 0, holes: float = 0.15) -> tuple[np.ndarray, np.ndarray]:
    """Patch origins of a region with an irregular footprint: a disc-shaped scene with random nodata holes."""
    rr, cc = np.meshgrid(np.arange(n_rows), np.arange(n_cols), indexing="ij")
    inside = (rr - n_rows / 2) ** 2 / (n_rows / 2) ** 2 + (cc - n_cols / 2) ** 2 / (n_cols / 2) ** 2 < 1.0
    inside &= np.random.default_rng(seed).random(inside.shape) > holes
    return rr[inside] * STRIDE, cc[inside] * STRIDE


def brute_pairs(rows, cols, split, size=SIZE, buffer_px=0) -> int:
    """Cross-split pairs whose footprints share a pixel (or are closer than buffer_px): O(n^2) reference."""
    k = split >= 0
    r, c, s = rows[k], cols[k], split[k]
    reach = size + buffer_px
    near = (np.abs(r[:, None] - r[None, :]) < reach) & (np.abs(c[:, None] - c[None, :]) < reach)
    return int(np.triu(near & (s[:, None] != s[None, :]), 1).sum())


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_blocks_hit_ratios_and_pass_audit(seed):
    rows, cols = lattice(90, 110, seed)
    res = split_patches(rows, cols, SIZE, STRIDE, sp(**{"seed": seed}))
    rep = res.report
    kept = res.split[res.kept]
    shares = np.bincount(kept, minlength=3) / len(kept)
    assert np.abs(shares - [0.7, 0.1, 0.2]).max() <= 0.03 and rep["within_tolerance"]
    assert rep["counts"] == {"train": int((res.split == 0).sum()), "val": int((res.split == 1).sum()),
                             "test": int((res.split == 2).sum())}  # fmt: skip
    assert rep["dropped_by_buffer"] == int((res.split == -1).sum()) > 0
    assert rep["audit"]["passed"] and rep["audit"]["checked"] == len(kept)
    assert brute_pairs(rows, cols, res.split) == 0


def test_deterministic_per_seed():
    rows, cols = lattice(60, 60, 3)
    a = split_patches(rows, cols, SIZE, STRIDE, sp(**{"seed": 7}))
    b = split_patches(rows, cols, SIZE, STRIDE, sp(**{"seed": 7}))
    c = split_patches(rows, cols, SIZE, STRIDE, sp(**{"seed": 8}))
    np.testing.assert_array_equal(a.split, b.split)
    assert a.report == b.report
    assert (a.split != c.split).any()


def test_audit_matches_brute_force_and_catches_leaks():
    rows, cols = lattice(30, 30, 4)
    rnd = split_patches(rows, cols, SIZE, STRIDE, sp(**{"method": "random", "seed": 1}))
    assert rnd.report["leaky"] and not rnd.report["audit"]["passed"]
    assert rnd.report["audit"]["pairs"] == brute_pairs(rows, cols, rnd.split) > 100
    assert rnd.report["dropped_by_buffer"] == 0
    counts = rnd.report["counts"]
    assert (counts["train"], counts["val"]) == (round(len(rows) * 0.7), round(len(rows) * 0.1))
    # break a good split on purpose: move one kept test patch's neighbour into train
    good = split_patches(rows, cols, SIZE, STRIDE, sp(**{"seed": 2, "tolerance": 0.2}))
    bad = good.split.copy()
    t = np.flatnonzero(bad == 2)[0]
    nb = np.flatnonzero((np.abs(rows - rows[t]) <= STRIDE) & (np.abs(cols - cols[t]) <= STRIDE) & (bad >= 0))
    bad[nb[nb != t][0]] = 0
    res = audit(rows, cols, bad, SIZE)
    assert not res["passed"] and res["pairs"] == brute_pairs(rows, cols, bad) >= 1
    assert any(t in pair for pair in res["examples"]) or res["patches_involved"] >= 2


def test_buffer_keeps_a_gap_between_splits():
    rows, cols = lattice(40, 40, 5)
    for buffer_px in (0, 64, 200):
        res = split_patches(rows, cols, SIZE, STRIDE, sp(**{"buffer_px": buffer_px, "tolerance": 0.2}))
        assert res.report["audit"]["passed"] and res.report["audit"]["buffer_px"] == buffer_px
        assert brute_pairs(rows, cols, res.split, buffer_px=buffer_px) == 0
    no_buf = split_patches(rows, cols, SIZE, STRIDE, sp(**{"buffer_px": 0})).report["dropped_by_buffer"]
    assert res.report["dropped_by_buffer"] > no_buf


def test_drop_rule_keeps_core_patches_and_drops_only_conflicts():
    rows, cols = lattice(40, 40, 6, holes=0.3)
    rng = np.random.default_rng(0)
    block = 4 * STRIDE
    bid = (rows // block) * 1000 + cols // block
    ub, inv = np.unique(bid, return_inverse=True)
    assigned = rng.integers(0, 3, len(ub)).astype(np.int8)[inv]
    out = drop_overlaps(rows, cols, assigned, SIZE, block)
    kept = out >= 0
    assert (out[kept] == assigned[kept]).all()
    core = (rows % block + SIZE <= block) & (cols % block + SIZE <= block)
    assert kept[core].all()  # patches inside their block never go
    for p in np.flatnonzero(~kept):  # every dropped patch really overlapped another split's patch
        near = (np.abs(rows - rows[p]) < SIZE) & (np.abs(cols - cols[p]) < SIZE)
        assert (assigned[near] != assigned[p]).any()
    assert brute_pairs(rows, cols, out) == 0


def test_edge_cases_and_bad_params():
    empty = split_patches(np.zeros(0, int), np.zeros(0, int), SIZE, STRIDE)
    assert empty.report["counts"] == {"train": 0, "val": 0, "test": 0} and empty.report["audit"]["passed"]
    one = split_patches(np.array([0]), np.array([0]), SIZE, STRIDE)
    assert one.report["counts"]["train"] == 1 and not one.report["within_tolerance"]
    with pytest.raises(ParamsError, match="splits.method"):
        split_patches(np.array([0]), np.array([0]), SIZE, STRIDE, sp(**{"method": "kfold"}))
    with pytest.raises(ParamsError, match="splits.ratios"):
        split_patches(np.array([0]), np.array([0]), SIZE, STRIDE, sp(**{"ratios": [0.5, 0.5, 0.5]}))
    with pytest.raises(SplitError, match="rows/cols"):
        split_patches(np.array([0, 1]), np.array([0]), SIZE, STRIDE)


def test_block_size_shrinks_only_until_ratios_are_met():
    """Small regions get smaller blocks (to hit 7:1:2); large ones keep the largest blocks."""
    from pipeline.patches import patch_origins

    small_r, small_c = patch_origins(2007, 2015, 256, 128)  # the ~1 km rural demo region at 0.5 m
    only8 = split_patches(small_r, small_c, 256, 128, sp(**{"min_block_patches": 8})).report
    assert not only8["within_tolerance"]  # 4 blocks of 1024 px cannot make 7:1:2
    rep = split_patches(small_r, small_c, 256, 128).report
    assert rep["within_tolerance"] and rep["audit"]["passed"]
    assert rep["block_patches"] < 8 and rep["block_sizes_tried"][0] == {
        "block_patches": 8, "max_share_error": only8["max_share_error"]}
    assert [t["block_patches"] for t in rep["block_sizes_tried"]] == list(range(8, rep["block_patches"] - 1, -1))
    big_r, big_c = patch_origins(12_000, 12_000, 256, 128)
    big = split_patches(big_r, big_c, 256, 128).report
    assert big["within_tolerance"] and big["block_patches"] == 8 and len(big["block_sizes_tried"]) == 1
    with pytest.raises(ParamsError, match="splits.min_block_patches: 9; expected an integer from 1 to block_patches"):
        split_patches(small_r, small_c, 256, 128, sp(**{"min_block_patches": 9}))
