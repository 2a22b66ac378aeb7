"""Train/val/test splits of overlapping patches without spatial leakage, and the audits that prove it.

With 256 px patches at stride 128 every interior patch overlaps 8 neighbours, so a plain random
split puts training pixels inside almost every test patch. The ``lattice`` method splits the
*ground*: a lattice of blocks fixed in metres on the globe (independent of any region, scene or
pixel grid) is assigned to splits from the blocks' own coordinates and the seed, and a patch takes
the split of the blocks its footprint covers when they all agree (else it is dropped). Patches of
different splits therefore never share ground, across regions and scenes. ``audit_footprints``
checks that independently on the lon/lat boxes. ``random`` reproduces the paper's leaky split.
``blocks`` (blocks on one region's pixel grid, ``split_patches``/``audit``) is the previous
per-region method, kept as an option (it leaks across overlapping regions).

Everything here is pure: arrays in, arrays and plain dicts out; no I/O.
"""

from __future__ import annotations

import functools
import hashlib
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
    """How patches are assigned to train/val/test (lattice: leak-free across regions; random: LEAKS)."""

    section: ClassVar[str] = "splits"
    method: Literal["lattice", "blocks", "random"] = param(
        "lattice", "lattice (ground blocks fixed on the globe: leak-free across regions and scenes) | "
        "blocks (per-region pixel blocks, being retired) | random (the paper's split: LEAKS)")
    seed: int = param(0, "seed of the block assignment (or of the random split)")
    block_m: float = param(1000.0, "lattice: block edge on the ground, metres (bands of block_m, columns of "
                                   "block_m at the centre latitude of the band's zone of 64 bands)")
    buffer_m: float = param(0.0, "lattice: ground around each patch (metres) that must be of its own split; "
                                 "patches of different splits are then >= 2 x buffer_m apart")
    patch_m: float = param(128.0, "lattice: typical patch footprint edge (m, 256 px x 0.5 m) the block pattern "
                                  "is corrected for (minority splits lose more patches at block edges); 0 = none")
    max_trim: float = param(0.1, "lattice: largest share of a region's kept patches thinned out of the splits "
                                 "in surplus to bring the shares within tolerance (0 = never thin)")
    block_patches: int = param(8, "blocks: largest block width in patch strides (8 x 128 px = 1024 px)")
    min_block_patches: int = param(2, "blocks: smaller blocks are tried, largest first, only until the ratios "
                                      "are met")
    ratios: tuple[float, float, float] = param((0.7, 0.1, 0.2), "train, val, test shares by patch count")
    tolerance: float = param(0.03, "allowed |share - ratio| per split, after buffer drops")
    buffer_px: int = param(0, "blocks: extra gap between footprints of different splits (0 = no shared pixel)")
    tries: int = param(100, "blocks: seeded block shuffles tried; the one closest to the ratios wins")

    def __post_init__(self) -> None:
        if min(self.ratios) < 0 or not math.isclose(sum(self.ratios), 1.0, abs_tol=1e-6):
            raise ValueError(f"ratios: {list(self.ratios)!r}; expected three non-negative numbers summing to 1")
        if not (math.isfinite(self.block_m) and self.block_m >= 10):
            raise ValueError(f"block_m: {self.block_m!r}; expected a number of metres >= 10")
        if not (math.isfinite(self.buffer_m) and 0 <= self.buffer_m < self.block_m / 2):
            raise ValueError(f"buffer_m: {self.buffer_m!r}; expected metres >= 0 and below block_m / 2")
        if not (math.isfinite(self.patch_m) and 0 <= self.patch_m + 2 * self.buffer_m < self.block_m / 2):
            raise ValueError(f"patch_m: {self.patch_m!r}; expected metres >= 0 with patch_m + 2 x buffer_m "
                             "below block_m / 2")
        if not 0 <= self.max_trim <= 1:
            raise ValueError(f"max_trim: {self.max_trim!r}; expected a share in [0, 1]")
        if not 0 <= self.tolerance < 1:
            raise ValueError(f"tolerance: {self.tolerance!r}; expected a share in [0, 1)")
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
    report.update(_summary(split, ratios, p))
    report.update({"buffer_px": int(p.buffer_px), "audit": audit(rows, cols, split, size, int(p.buffer_px))})
    return SplitResult(split.astype(np.int8), report)


def _summary(split: np.ndarray, ratios: np.ndarray, p: SplitsParams) -> dict[str, Any]:
    """Seed, ratios, counts, shares and the share error of a split (a warning when out of tolerance)."""
    counts = {name: int((split == i).sum()) for i, name in enumerate(SPLITS)}
    kept = max(sum(counts.values()), 1)
    shares = {name: round(counts[name] / kept, 6) for name in SPLITS}
    err = share_error(split, ratios)
    within = bool(err <= float(p.tolerance) + 1e-12)
    if not within:
        log.warning("split shares %s miss ratios %s by %.3f (> %.3f)", shares, list(ratios), err, p.tolerance)
    return {
        "seed": int(p.seed),
        "ratios": [float(r) for r in ratios],
        "tolerance": float(p.tolerance),
        "candidates": int(len(split)),
        "counts": counts,
        "shares": shares,
        "max_share_error": round(float(err), 6),
        "within_tolerance": within,
        "dropped_by_buffer": int((split == DROPPED).sum()),
    }


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


# ------------------------------------------------------------------------------------------------
# lattice: splits by ground, the same for every region, scene and pixel grid

EARTH_M_PER_DEG = math.pi * 6_371_008.8 / 180  # metres per degree on the mean Earth sphere (IUGG R1)
_EDGE = 1e-9  # a box within 1e-9 block of a block edge counts as crossing it: float noise can only drop
# Lattice codes: block (band b, column c) is split pattern[(c + step x b + phase(seed, zone)) mod N]:
# every run of N blocks along a band holds exactly the pattern's counts, and N consecutive bands
# of a zone shift the pattern through all N phases, so any window of blocks is within about one
# block of the shares per split (benchmarks/bench_splits.py, part 0). Bands are grouped in zones of
# ZONE_BANDS that share one column width, so columns line up across the bands of a zone and the
# pattern holds in two dimensions; a zone's phase is drawn from the seed and the zone's index.
ZONE_BANDS = 64
_GOLDEN_STEP = 1 / ((1 + math.sqrt(5)) / 2) ** 2  # step ~ N / phi^2: the most even 2-D lattice of the residues
_MAX_PERIOD = 40  # longest pattern tried to meet the ratios for unusual ratios / footprints
_MAX_PAIRS = 50_000_000  # (patch, block) pairs: a bound on memory for footprints far wider than blocks


def _round_sig(x: np.ndarray) -> np.ndarray:
    """Round to 12 significant digits, so a last-bit difference of cos() between platforms cannot move an edge."""
    return np.array([float(f"{v:.12g}") for v in np.asarray(x, float).ravel()]).reshape(np.shape(x))


def band_height_deg(block_m: float) -> float:
    """Latitude height of every lattice band: ``block_m`` at a fixed EARTH_M_PER_DEG metres per degree."""
    return float(_round_sig(np.array(block_m / EARTH_M_PER_DEG)))


def column_width_deg(bands: np.ndarray, block_m: float) -> np.ndarray:
    """Longitude width of the columns of each band: ``block_m`` at the centre latitude of the band's zone (<= 360).

    The ZONE_BANDS bands of a zone share one width, so their columns line up (within 1.4 % of
    ``block_m`` at 70 degrees: the blocks of a zone's outer bands are that much off square).
    """
    dlat = band_height_deg(block_m)
    zone = np.floor_divide(np.asarray(bands, np.int64), ZONE_BANDS)
    centre = np.clip((zone * ZONE_BANDS + ZONE_BANDS / 2) * dlat, -89.999, 89.999)
    return np.minimum(_round_sig(block_m / (EARTH_M_PER_DEG * np.cos(np.radians(centre)))), 360.0)


def grow_boxes(lon_min, lat_min, lon_max, lat_max, buffer_m: float) -> tuple[np.ndarray, ...]:
    """Boxes grown by ``buffer_m`` metres on every side (longitude at the box's latitude furthest from the equator)."""
    boxes = tuple(np.asarray(a, np.float64) for a in (lon_min, lat_min, lon_max, lat_max))
    if buffer_m <= 0:
        return boxes
    x0, y0, x1, y1 = boxes
    dlat = buffer_m / EARTH_M_PER_DEG
    far = np.minimum(np.maximum(np.abs(y0), np.abs(y1)) + dlat, 89.999)
    dlon = buffer_m / (EARTH_M_PER_DEG * np.cos(np.radians(far)))
    return (np.maximum(x0 - dlon, -180.0), np.maximum(y0 - dlat, -90.0), np.minimum(x1 + dlon, 180.0),
            np.minimum(y1 + dlat, 90.0))


def check_boxes(lon_min, lat_min, lon_max, lat_max) -> tuple[np.ndarray, ...]:
    """The four arrays as float64, or SplitError naming the array and the first bad patch."""
    names = ("lon_min", "lat_min", "lon_max", "lat_max")
    arrs = tuple(np.asarray(a, np.float64) for a in (lon_min, lat_min, lon_max, lat_max))
    if any(a.ndim != 1 for a in arrs) or len({a.shape for a in arrs}) != 1:
        raise SplitError(f"lon_min/lat_min/lon_max/lat_max: shapes {[a.shape for a in arrs]}; "
                         "expected four 1-D arrays of equal length")
    for name, a, lim in zip(names, arrs, (180, 90, 180, 90)):
        bad = np.flatnonzero(~np.isfinite(a) | (np.abs(a) > lim))
        if len(bad):
            raise SplitError(f"{name}[{bad[0]}] = {float(a[bad[0]])!r}; expected a finite value in [-{lim}, {lim}]")
    for lo, hi, a, b in ((0, 2, arrs[0], arrs[2]), (1, 3, arrs[1], arrs[3])):
        bad = np.flatnonzero(a >= b)
        if len(bad):
            raise SplitError(f"patch {bad[0]}: {names[lo]} {float(a[bad[0]])!r} >= {names[hi]} {float(b[bad[0]])!r}; "
                             "expected a box of positive area")
    return arrs


def footprint_blocks(lon_min, lat_min, lon_max, lat_max, block_m: float) -> tuple[np.ndarray, ...]:
    """(patch index, band, column) of every lattice block each box meets with positive area.

    Band ``b`` spans latitudes [b, b+1) x band_height_deg; its column ``c`` spans longitudes
    [c, c+1) x column_width_deg(b). Blocks tile the globe, so a box lies in the union of its blocks.
    """
    x0, y0, x1, y1 = (np.asarray(a, np.float64) for a in (lon_min, lat_min, lon_max, lat_max))
    dlat = band_height_deg(block_m)
    b0 = np.floor(y0 / dlat - _EDGE).astype(np.int64)
    b1 = np.ceil(y1 / dlat + _EDGE).astype(np.int64) - 1
    owner, band, col = [], [], []
    total = 0
    for k in range(int((b1 - b0).max(initial=-1)) + 1):
        rows = np.flatnonzero(b0 + k <= b1)
        bb = b0[rows] + k
        ub, inv = np.unique(bb, return_inverse=True)
        w = column_width_deg(ub, block_m)[inv]
        c0 = np.floor(x0[rows] / w - _EDGE).astype(np.int64)
        c1 = np.ceil(x1[rows] / w + _EDGE).astype(np.int64) - 1
        total += int((c1 - c0 + 1).sum())
        if total > _MAX_PAIRS:
            raise SplitError(f"footprints meet more than {_MAX_PAIRS} lattice blocks in all: block_m {block_m} "
                             "is far smaller than the patches")
        for j in range(int((c1 - c0).max(initial=-1)) + 1):
            m = c0 + j <= c1
            owner.append(rows[m])
            band.append(bb[m])
            col.append(c0[m] + j)
    if not owner:
        return tuple(np.zeros(0, np.int64) for _ in range(3))
    return np.concatenate(owner), np.concatenate(band), np.concatenate(col)


def pattern_step(n: int) -> int:
    """The column shift between consecutive bands for a pattern of period ``n``: coprime with n, nearest n / phi^2."""
    if n <= 2:
        return 1
    base = n * _GOLDEN_STEP
    return min((k for k in range(1, n) if math.gcd(k, n) == 1), key=lambda k: (abs(k - base), k))


def spread(counts: tuple[int, ...]) -> tuple[int, ...]:
    """A period of ``sum(counts)`` positions holding split i ``counts[i]`` times, each split as evenly spaced as it can be.

    Each position goes to the split furthest behind its even share so far (ties: the lower index).
    """
    n = sum(counts)
    have = [0] * len(counts)
    out = []
    for j in range(n):
        lag = [c * (j + 1) / n - h for c, h in zip(counts, have)]
        i = max(range(len(counts)), key=lambda s: (lag[s], -s))
        have[i] += 1
        out.append(i)
    return tuple(out)


def pattern_shares(pattern: tuple[int, ...], step: int, lam: float) -> np.ndarray:
    """Share of kept patches per split on an endless lattice of ``pattern``, for square patches of ``lam`` block edges.

    A block keeps the patches whose origin lies in it and whose footprint meets only blocks of its
    split: all of them if (1-lam)^2 of the origins, those crossing into the block on its right
    (residue r+1) or above (r+step) if that block is of its split, the corner ones if the three are.
    """
    p = np.asarray(pattern)
    n = len(p)
    r = np.arange(n)
    right, top, diag = p[(r + 1) % n] == p, p[(r + step) % n] == p, p[(r + step + 1) % n] == p
    keep = (1 - lam) ** 2 + lam * (1 - lam) * (right.astype(float) + top) + lam**2 * (right & top & diag)
    out = np.bincount(p, weights=keep, minlength=len(SPLITS))
    return out / out.sum()


def _apportion(q: np.ndarray, n: int) -> tuple[int, ...] | None:
    """Integer counts summing to n closest to q x n (largest remainders), at least 1 where q > 0; None if impossible."""
    pos = q > 0
    if pos.sum() > n:
        return None
    base = np.where(pos, np.maximum(np.floor(q * n), 1), 0).astype(np.int64)
    while base.sum() > n:  # the minimum of 1 overshot: take from the largest
        base[int(np.argmax(base))] -= 1
    rem = q * n - base
    for i in np.argsort(-rem, kind="stable")[: n - int(base.sum())]:
        base[i] += 1
    return tuple(int(v) for v in base)


@functools.lru_cache(maxsize=64)
def lattice_pattern(ratios: tuple[float, ...], lam: float) -> tuple[tuple[int, ...], int]:
    """(pattern, step) of the shortest period whose *patch* shares at footprint ``lam`` are within half a point of ``ratios``.

    Blocks of the minority splits border foreign blocks more often and lose more patches at
    their edges, so the block counts are corrected for the losses of the pattern itself
    (pattern_shares, a fixed point). 7:1:2 at 128 m patches on 1 km blocks: 6/1/2 of 9 blocks.
    Periods up to _MAX_PERIOD are tried; the closest wins if none is within half a point.
    """
    r = np.asarray(ratios, np.float64)
    best: tuple[float, tuple[int, ...], int] | None = None
    for n in range(2, _MAX_PERIOD + 1):
        step, q = pattern_step(n), r.copy()
        seen = set()
        for _ in range(20):
            counts = _apportion(q, n)
            if counts is None or counts in seen:
                break
            seen.add(counts)
            pat = spread(counts)
            got = pattern_shares(pat, step, lam)
            err = float(np.abs(got - r).max())
            if best is None or err < best[0] - 1e-12:
                best = (err, pat, step)
            q = q * np.where(got > 0, r / np.maximum(got, 1e-12), 1.0)
            q = q / q.sum()
        if best is not None and best[0] <= 0.005:
            break
    if best is None:
        raise SplitError(f"ratios {list(ratios)}: no pattern of up to {_MAX_PERIOD} blocks holds every split")
    return best[1], best[2]


def zone_phase(zone: np.ndarray, seed: int, n: int) -> np.ndarray:
    """Phase of the pattern in each zone, from the zone's index and the seed only (sha256, so exact everywhere)."""
    zone = np.asarray(zone, np.int64)
    uz, inv = np.unique(zone, return_inverse=True)
    ph = [int.from_bytes(hashlib.sha256(f"sareo.splits.lattice:{int(seed)}:{z}".encode()).digest()[:8], "big") % n
          for z in uz.tolist()]
    return np.asarray(ph, np.int64)[inv].reshape(zone.shape)


def lattice_codes(band: np.ndarray, col: np.ndarray, seed: int, pattern: tuple[int, ...], step: int) -> np.ndarray:
    """Split index of each lattice block, from its (band, column), the seed and the pattern only."""
    band = np.asarray(band, np.int64)
    col = np.asarray(col, np.int64)
    n = len(pattern)
    phase = zone_phase(np.floor_divide(band, ZONE_BANDS), seed, n)
    return np.asarray(pattern, np.int8)[np.mod(col + step * np.mod(band, n) + phase, n)]


def lattice_split(lon_min, lat_min, lon_max, lat_max, p: SplitsParams) -> tuple[np.ndarray, dict[str, Any]]:
    """Each box (grown by buffer_m) gets the split of all the blocks it meets, or DROPPED when they differ."""
    n = len(np.asarray(lon_min))
    pattern, step = lattice_pattern(tuple(float(r) for r in p.ratios), (p.patch_m + 2 * p.buffer_m) / p.block_m)
    grown = grow_boxes(lon_min, lat_min, lon_max, lat_max, p.buffer_m)
    owner, band, col = footprint_blocks(*grown, p.block_m)
    # one int64 key per block (|band| < 2^22 and |col| < 2^31 for any block_m >= 10 m)
    _, first, inv = np.unique(band * (1 << 32) + col, return_index=True, return_inverse=True)
    codes = lattice_codes(band[first], col[first], p.seed, pattern, step)[inv]
    lo = np.full(n, 127, np.int8)
    hi = np.full(n, -1, np.int8)
    np.minimum.at(lo, owner, codes)
    np.maximum.at(hi, owner, codes)
    split = np.where(lo == hi, lo, DROPPED).astype(np.int8)
    counts = np.bincount(np.asarray(pattern), minlength=len(SPLITS))
    extra = {"block_m": float(p.block_m), "patch_m": float(p.patch_m), "buffer_m": float(p.buffer_m),
             "zone_bands": ZONE_BANDS, "pattern": "".join("TVt"[i] for i in pattern), "pattern_step": int(step),
             "block_shares": [round(float(v), 6) for v in counts / counts.sum()], "blocks": int(len(first))}
    return split, extra


def ground_rank(x: np.ndarray, y: np.ndarray, seed: int) -> np.ndarray:
    """A pseudo-random rank of each position from its coordinates (to ~1 cm) and the seed: input order does not matter."""
    with np.errstate(over="ignore"):
        h = (np.round(np.asarray(x) * 1e7).astype(np.int64).view(np.uint64) * np.uint64(0x9E3779B97F4A7C15)
             ^ np.round(np.asarray(y) * 1e7).astype(np.int64).view(np.uint64))
        h = h + np.uint64(int.from_bytes(hashlib.sha256(f"sareo.splits.trim:{int(seed)}".encode()).digest()[:8], "big"))
        for shift, mult in ((30, 0xBF58476D1CE4E5B9), (27, 0x94D049BB133111EB)):  # splitmix64 finaliser
            h = (h ^ (h >> np.uint64(shift))) * np.uint64(mult)
        return h ^ (h >> np.uint64(31))


def trim_counts(counts: np.ndarray, ratios: np.ndarray, tolerance: float) -> np.ndarray | None:
    """Largest per-split counts <= ``counts`` whose shares are all within ``tolerance`` of ``ratios`` (None: none exist)."""
    counts = np.asarray(counts, np.int64)
    total = int(counts.sum())
    if total == 0:
        return counts
    tol = max(tolerance - 1e-9, 0.0)
    t = np.arange(total, 0, -1, dtype=np.int64)[:, None]  # candidate totals, largest first
    lo = np.ceil(np.maximum(ratios - tol, 0) * t - 1e-9).astype(np.int64)
    hi = np.minimum(counts, np.floor((ratios + tol) * t + 1e-9).astype(np.int64))
    ok = (lo <= hi).all(axis=1) & (lo.sum(axis=1) <= t[:, 0]) & (hi.sum(axis=1) >= t[:, 0])
    if not ok.any():
        return None
    i = int(np.argmax(ok))
    total_new, lo, hi = int(t[i, 0]), lo[i], hi[i]
    new = np.clip(np.round(ratios * total_new).astype(np.int64), lo, hi)
    while new.sum() != total_new:  # move single patches towards the ratios, within the bounds
        gap = new - ratios * total_new
        if new.sum() > total_new:
            k = int(np.argmax(np.where(new > lo, gap, -np.inf)))
            new[k] -= 1
        else:
            k = int(np.argmin(np.where(new < hi, gap, np.inf)))
            new[k] += 1
    return new


def trim_to_tolerance(split: np.ndarray, ratios: np.ndarray, tolerance: float, max_trim: float,
                      rank: np.ndarray) -> tuple[np.ndarray, int]:
    """Thin the splits in surplus (lowest ``rank`` first) until every share is within tolerance.

    Dropping a patch never creates a leak, so this per-region step keeps the ground rule intact;
    it is skipped when it would drop more than ``max_trim`` of the kept patches.
    """
    counts = np.bincount(split[split >= 0], minlength=len(ratios))
    if share_error(split, ratios) <= tolerance or max_trim <= 0:
        return split, 0
    new = trim_counts(counts, ratios, tolerance)
    if new is None or counts.sum() - new.sum() > max_trim * counts.sum():
        return split, 0
    out = split.copy()
    for k in np.flatnonzero(new < counts):
        members = np.flatnonzero(split == k)
        order = np.lexsort((members, rank[members]))
        out[members[order[: counts[k] - new[k]]]] = DROPPED
    return out, int(counts.sum() - new.sum())


def split_footprints(lon_min, lat_min, lon_max, lat_max, p: SplitsParams | None = None) -> SplitResult:
    """Assign patches, given as lon/lat footprint boxes (four equal 1-D arrays), to splits by their ground.

    ``lattice``: the same ground gets the same split whatever region, scene or grid it comes from.
    ``random``: the paper's split by patch (leaky). The report holds method, leaky, seed, counts,
    shares, max_share_error, within_tolerance, dropped_by_buffer and the footprint audit.
    """
    p = p or SplitsParams()
    boxes = check_boxes(lon_min, lat_min, lon_max, lat_max)
    ratios = np.asarray(p.ratios, np.float64)
    if p.method == "blocks":
        raise SplitError("splits.method: 'blocks' splits one region's pixel grid (split_patches); footprints "
                         "are split by 'lattice' or 'random'")
    if p.method == "random":
        split = random_split(len(boxes[0]), ratios, int(p.seed))
        report: dict[str, Any] = {"method": "random", "leaky": True, "buffer_m": float(p.buffer_m)}
    else:
        split, extra = lattice_split(*boxes, p)
        before = share_error(split, ratios)
        split, trimmed = trim_to_tolerance(split, ratios, p.tolerance, p.max_trim,
                                           ground_rank(boxes[0] + boxes[2], boxes[1] + boxes[3], p.seed))
        extra.update({"max_share_error_before_trim": round(before, 6), "dropped_to_balance": trimmed})
        report = {"method": "lattice", "leaky": False, **extra}
    report.update(_summary(split, ratios, p))
    report["dropped_by_buffer"] -= int(report.get("dropped_to_balance", 0))  # edge drops only
    report["audit"] = audit_footprints(*boxes, split, p.buffer_m)
    return SplitResult(split.astype(np.int8), report)


def audit_footprints(lon_min, lat_min, lon_max, lat_max, split, buffer_m: float = 0.0,
                     chunk: int = 50_000) -> dict[str, Any]:
    """Count pairs of kept patches of different splits whose boxes (grown by ``buffer_m``) overlap with positive area.

    Independent of how the split was made and of any grid: an STR-tree over the boxes finds the
    candidate pairs (queried in chunks, so memory stays bounded), then exact overlap widths on
    the coordinates decide; boxes that only touch along an edge share no ground. Returns
    ``{"passed", "pairs", "patches_involved", "buffer_m", "checked", "overlapping_pairs", "examples"}``
    (overlapping_pairs: pairs that overlap at all, whatever their splits; examples: up to 5 pairs).
    """
    import shapely

    boxes = check_boxes(lon_min, lat_min, lon_max, lat_max)
    split = np.asarray(split)
    if split.shape != boxes[0].shape:
        raise SplitError(f"split: shape {split.shape}; expected {boxes[0].shape} like the boxes")
    idx = np.flatnonzero(split >= 0)
    x0, y0, x1, y1 = (a[idx] for a in grow_boxes(*(b for b in boxes), buffer_m))
    s = split[idx]
    geoms = shapely.box(x0, y0, x1, y1)
    tree = shapely.STRtree(geoms)
    pairs = overlapping = 0
    involved: set[int] = set()
    examples: list[list[int]] = []
    for start in range(0, len(idx), chunk):
        q = np.arange(start, min(start + chunk, len(idx)))
        a, b = tree.query(geoms[q])  # envelopes that meet; for boxes, boxes that meet
        a = q[a]
        m = b > a
        a, b = a[m], b[m]
        m = (np.minimum(x1[a], x1[b]) > np.maximum(x0[a], x0[b])) & (np.minimum(y1[a], y1[b]) > np.maximum(y0[a], y0[b]))
        a, b = a[m], b[m]
        overlapping += len(a)
        hit = s[a] != s[b]
        if hit.any():
            pairs += int(hit.sum())
            involved.update(idx[a[hit]].tolist())
            involved.update(idx[b[hit]].tolist())
            examples.extend([int(idx[i]), int(idx[j])] for i, j in zip(a[hit][: 5 - len(examples)],
                                                                       b[hit][: 5 - len(examples)]))
    return {
        "passed": pairs == 0,
        "pairs": pairs,
        "patches_involved": len(involved),
        "buffer_m": float(buffer_m),
        "checked": int(len(idx)),
        "overlapping_pairs": int(overlapping),
        "examples": examples[:5],
    }
