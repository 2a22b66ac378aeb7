"""Train/val/test splits of overlapping patches without spatial leakage, and the audit that proves it.

With 256 px patches at stride 128 every interior patch overlaps 8 neighbours, so a plain random
split puts training pixels inside almost every test patch. The ``blocks`` method assigns square
spatial blocks (``block_patches`` strides wide) to splits with a seeded greedy procedure, then drops
patches whose footprint would overlap a patch of another split. ``audit`` checks the result
independently, pair by pair, on the footprints. ``random`` reproduces the paper's leaky split.

Everything here is pure: arrays in, arrays and plain dicts out; no I/O.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from functools import reduce
from typing import Any, ClassVar, Literal

import numpy as np

from pipeline.params import param

log = logging.getLogger("sareo.splits")
_GOOD_ENOUGH = 0.005  # stop trying shuffles once every share is within half a point

SPLITS: tuple[str, ...] = ("train", "val", "test")
DROPPED = -1

@dataclass(frozen=True)
class SplitsParams:
    """How patches are assigned to train/val/test (blocks: leak-free; random: the paper's, leaky)."""

    section: ClassVar[str] = "splits"
    method: Literal["blocks", "random"] = param("blocks", "blocks (leak-free) | random (the paper's split: LEAKS)")
    seed: int = param(0, "seed of the block shuffle (or of the random split)")
    block_patches: int = param(8, "largest block width in patch strides (8 x 128 px = 1024 px)")
    min_block_patches: int = param(2, "smaller blocks are tried, largest first, only until the ratios are met")
    ratios: tuple[float, float, float] = param((0.7, 0.1, 0.2), "train, val, test shares by patch count")
    tolerance: float = param(0.03, "allowed |share - ratio| per split, after buffer drops")
    buffer_px: int = param(0, "extra gap between footprints of different splits (0 = no shared pixel)")
    tries: int = param(100, "seeded block shuffles tried; the one closest to the ratios wins")

    def __post_init__(self) -> None:
        if min(self.ratios) < 0 or not math.isclose(sum(self.ratios), 1.0, abs_tol=1e-6):
            raise ValueError(f"ratios: {list(self.ratios)!r}; expected three non-negative numbers summing to 1")
        if self.block_patches < 1:
            raise ValueError(f"block_patches: {self.block_patches!r}; expected an integer >= 1")
        if not 1 <= self.min_block_patches <= self.block_patches:
            raise ValueError(f"min_block_patches: {self.min_block_patches!r}; expected an integer from 1 to "
                             "block_patches")
        if self.buffer_px < 0:
            raise ValueError(f"buffer_px: {self.buffer_px!r}; expected an integer >= 0")
        if self.tries < 1:
            raise ValueError(f"tries: {self.tries!r}; expected an integer >= 1")


class SplitError(ValueError):
    """Split parameters or patch positions that cannot be used."""


@dataclass(frozen=True)
class SplitResult:
    """``split[i]`` is 0/1/2 (index into SPLITS) or -1 when patch i was dropped by the buffer rule."""

    split: np.ndarray
    report: dict[str, Any]

    @property
    def kept(self) -> np.ndarray:
        return self.split >= 0


def split_patches(
    rows: np.ndarray, cols: np.ndarray, size: int, stride: int, p: SplitsParams | None = None
) -> SplitResult:
    """Assign patches (top-left ``rows``/``cols`` on the grid, square ``size``) to splits.

    The report holds method, seed, counts, shares, dropped_by_buffer and the audit result.
    Deterministic for the same inputs and seed.
    """
    p = p or SplitsParams()
    rows = np.asarray(rows, dtype=np.int64)
    cols = np.asarray(cols, dtype=np.int64)
    if rows.shape != cols.shape or rows.ndim != 1:
        raise SplitError(f"rows/cols: shapes {rows.shape} and {cols.shape}; expected two equal 1-D arrays")
    if size < 1 or stride < 1:
        raise SplitError(f"size {size} / stride {stride}: expected positive integers")
    ratios = np.asarray(p.ratios)
    seed = int(p.seed)
    if p.method == "random":
        split = random_split(len(rows), ratios, seed)
        report: dict[str, Any] = {"method": "random", "leaky": True}
    else:
        # Largest blocks first: they lose the fewest patches to the no-overlap rule and keep
        # spatially correlated neighbours together; shrink only while the ratios are missed.
        best = None
        tried = []
        for bp in range(int(p.block_patches), int(p.min_block_patches) - 1, -1):
            cand, extra = block_split(rows, cols, size, stride, ratios, seed, bp, int(p.buffer_px), int(p.tries))
            cand_err = share_error(cand, ratios)
            tried.append({"block_patches": bp, "max_share_error": round(cand_err, 6)})
            if best is None or cand_err < best[2] - 1e-12:
                best = (cand, {**extra, "block_patches": bp}, cand_err)
            if cand_err <= float(p.tolerance) + 1e-12:
                break
        split, extra, _ = best
        report = {"method": "blocks", "leaky": False, **extra, "block_sizes_tried": tried}
    counts = {name: int((split == i).sum()) for i, name in enumerate(SPLITS)}
    kept = max(sum(counts.values()), 1)
    shares = {name: round(counts[name] / kept, 6) for name in SPLITS}
    err = share_error(split, ratios)
    audit_res = audit(rows, cols, split, size, int(p.buffer_px))
    report.update(
        {
            "seed": seed,
            "ratios": [float(r) for r in ratios],
            "tolerance": float(p.tolerance),
            "candidates": int(len(rows)),
            "counts": counts,
            "shares": shares,
            "max_share_error": round(float(err), 6),
            "within_tolerance": bool(err <= float(p.tolerance) + 1e-12),
            "dropped_by_buffer": int((split == DROPPED).sum()),
            "buffer_px": int(p.buffer_px),
            "audit": audit_res,
        }
    )
    if not report["within_tolerance"]:
        log.warning("split shares %s miss ratios %s by %.3f (> %.3f)", shares, list(ratios), err, p.tolerance)
    return SplitResult(split.astype(np.int8), report)


def share_error(split: np.ndarray, ratios: np.ndarray) -> float:
    """Largest |share - ratio| over the splits, counting kept patches only (0 when none are kept)."""
    counts = np.array([(split == i).sum() for i in range(len(SPLITS))], dtype=float)
    kept = counts.sum()
    return float(np.abs(counts / kept - ratios).max()) if kept else 0.0


def random_split(n: int, ratios: np.ndarray, seed: int) -> np.ndarray:
    """The paper's plain random split by patch: exact counts, but overlapping patches leak across splits."""
    rng = np.random.default_rng(seed)
    n_train = int(round(n * ratios[0]))
    n_val = int(round(n * ratios[1]))
    codes = np.full(n, 2, dtype=np.int8)
    codes[:n_train] = 0
    codes[n_train : n_train + n_val] = 1
    return codes[rng.permutation(n)]


def block_split(
    rows: np.ndarray,
    cols: np.ndarray,
    size: int,
    stride: int,
    ratios: np.ndarray,
    seed: int,
    block_patches: int,
    buffer_px: int,
    tries: int,
) -> tuple[np.ndarray, dict[str, Any]]:
    """Seeded block assignment + buffer drop; of ``tries`` shuffles keep the one closest to ``ratios``.

    Closeness is measured after the buffer drop, by patch count, so the reported shares are
    the ones the dataset really has.
    """
    block_px = block_patches * stride
    n = len(rows)
    if n == 0:
        return np.zeros(0, dtype=np.int8), {"block_px": block_px, "blocks": 0, "try": 0}
    brow, bcol = rows // block_px, cols // block_px
    nbc = int(bcol.max()) + 1
    block_id = brow * nbc + bcol
    uniq, inverse, counts = np.unique(block_id, return_inverse=True, return_counts=True)
    rng = np.random.default_rng(seed)
    best: tuple[float, int, np.ndarray] | None = None
    target = ratios.astype(float).copy()
    for t in range(tries):
        order = rng.permutation(len(uniq))
        block_split_codes = _greedy_assign(counts, order, target)
        split = drop_overlaps(rows, cols, block_split_codes[inverse], size, block_px, buffer_px)
        kept = split[split >= 0]
        if len(kept) == 0:
            err = math.inf
        else:
            shares = np.bincount(kept, minlength=3) / len(kept)
            err = float(np.abs(shares - ratios).max())
            # Buffer drops hit the minority splits harder (their blocks border foreign blocks more
            # often): steer the next shuffle's targets against the bias seen in this one.
            fix = np.where((shares > 0) & (ratios > 0), ratios / np.maximum(shares, 1e-9), 1.0)
            target = np.clip(target * fix, 0.5 * ratios, 2.0 * ratios)
            target = target / target.sum()
        if best is None or err < best[0] - 1e-12:
            best = (err, t, split)
        if err <= _GOOD_ENOUGH:
            break
    assert best is not None
    return best[2], {"block_px": int(block_px), "blocks": int(len(uniq)), "try": int(best[1])}


def _greedy_assign(counts: np.ndarray, order: np.ndarray, ratios: np.ndarray) -> np.ndarray:
    """Give each block, in ``order``, to the split furthest below its target patch count."""
    codes = np.empty(len(counts), dtype=np.int8)
    have = np.zeros(3)
    total = 0.0
    for b in order:
        total += counts[b]
        s = int(np.argmax(ratios * total - have))
        codes[b] = s
        have[s] += counts[b]
    return codes


def drop_overlaps(
    rows: np.ndarray,
    cols: np.ndarray,
    split: np.ndarray,
    size: int,
    block_px: int,
    buffer_px: int = 0,
) -> np.ndarray:
    """Drop patches that would overlap (or come within ``buffer_px`` of) a patch of another split.

    A *core* patch lies (with half the buffer around it) inside its own block; core patches of
    different splits can never meet because blocks are disjoint, so they are always kept. An
    *edge* patch reaches into a neighbouring block; it is dropped if its box meets the box of
    any candidate patch of another split. Two kept patches of different splits therefore never
    overlap. Vectorised on a raster of cells (the gcd of all offsets and sizes), via summed-area
    tables: 100k patches take milliseconds.
    """
    e = (buffer_px + 1) // 2  # each box grows by e on every side: boxes disjoint => gap >= 2e >= buffer
    g = reduce(math.gcd, [int(size), int(block_px), *np.unique(rows).tolist(), *np.unique(cols).tolist()])
    # Boxes in cells of g px; growing them outwards to whole cells only makes the rule stricter.
    r0, c0 = np.floor_divide(rows - e, g), np.floor_divide(cols - e, g)
    r1, c1 = -np.floor_divide(-(rows + size + e), g), -np.floor_divide(-(cols + size + e), g)
    off_r, off_c = -int(r0.min()), -int(c0.min())
    r0, r1, c0, c1 = r0 + off_r, r1 + off_r, c0 + off_c, c1 + off_c
    H, W = int(r1.max()), int(c1.max())
    if H * W > 400_000_000:
        raise SplitError(f"cell raster {H}x{W} too large: patch offsets share no useful common divisor (cell {g} px)")
    # Own-block bounds in cells, to classify core vs edge patches.
    brow, bcol = rows // block_px, cols // block_px
    blk_r0, blk_c0 = (brow * block_px) // g + off_r, (bcol * block_px) // g + off_c
    blk_r1, blk_c1 = blk_r0 + block_px // g, blk_c0 + block_px // g
    core = (r0 >= blk_r0) & (c0 >= blk_c0) & (r1 <= blk_r1) & (c1 <= blk_c1)

    occ = np.zeros((3, H + 1, W + 1), dtype=np.int32)
    for s in range(3):
        m = split == s
        np.add.at(occ[s], (r0[m], c0[m]), 1)
        np.add.at(occ[s], (r0[m], c1[m]), -1)
        np.add.at(occ[s], (r1[m], c0[m]), -1)
        np.add.at(occ[s], (r1[m], c1[m]), 1)
    cover = occ.cumsum(axis=1).cumsum(axis=2)[:, :H, :W] > 0  # cell covered by some box of split s
    sat = np.zeros((3, H + 1, W + 1), dtype=np.int64)
    sat[:, 1:, 1:] = cover.cumsum(axis=1).cumsum(axis=2)
    box = sat[:, r1, c1] - sat[:, r0, c1] - sat[:, r1, c0] + sat[:, r0, c0]  # (3, n) covered cells per split
    foreign = box.sum(axis=0) - box[split, np.arange(len(split))]
    out = split.astype(np.int8).copy()
    out[(~core) & (foreign > 0)] = DROPPED
    return out


def audit(rows: np.ndarray, cols: np.ndarray, split: np.ndarray, size: int, buffer_px: int = 0) -> dict[str, Any]:
    """Prove no footprint of one split meets a footprint of another (closer than ``buffer_px``).

    Independent of how the split was made: a sweep over the patch boxes in pixel space (the grid
    is affine, so pixel overlap is footprint overlap). Footprints are half-open pixel boxes
    [row, row+size) x [col, col+size); boxes that only touch along an edge share no pixel.
    Returns ``{"passed", "pairs", "patches_involved", "examples"}`` (examples: up to 5 pairs).
    """
    rows = np.asarray(rows, dtype=np.int64)
    cols = np.asarray(cols, dtype=np.int64)
    split = np.asarray(split)
    keep = split >= 0
    idx = np.flatnonzero(keep)
    r, c, s = rows[keep], cols[keep], split[keep]
    reach = size + buffer_px  # two boxes conflict when |dr| < reach and |dc| < reach
    order = np.lexsort((c, r))
    r, c, s, idx = r[order], c[order], s[order], idx[order]
    pairs = 0
    involved: set[int] = set()
    examples: list[list[int]] = []
    # For each patch, compare against later patches whose row is within reach: a window sweep
    # vectorised per lag, so the cost is O(n * patches per reach window).
    n = len(r)
    lag = 1
    while lag < n:
        a, b = np.arange(0, n - lag), np.arange(lag, n)
        near_rows = (r[b] - r[a]) < reach
        if not near_rows.any():
            break
        a, b = a[near_rows], b[near_rows]
        hit = (np.abs(c[b] - c[a]) < reach) & (s[a] != s[b])
        if hit.any():
            pairs += int(hit.sum())
            involved.update(idx[a[hit]].tolist())
            involved.update(idx[b[hit]].tolist())
            for i, j in zip(a[hit][:5], b[hit][:5]):
                if len(examples) < 5:
                    examples.append([int(idx[i]), int(idx[j])])
        lag += 1
    return {
        "passed": pairs == 0,
        "pairs": pairs,
        "patches_involved": len(involved),
        "buffer_px": int(buffer_px),
        "checked": int(n),
        "examples": examples,
    }
