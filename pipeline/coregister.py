"""Register stage: estimate how far the SAR is off the EO (the reference) and correct its georeferencing.

Misaligned SAR/EO pairs silently teach translation models to hallucinate, and the source data
routinely disagree by metres. We estimate the offset automatically, per region, with a measured
confidence, and hand the grid stage an affine ``correction`` in the SAR CRS that it composes with
the SAR geotransform, so the SAR is still resampled exactly once.

Method (see docs/coregistration.md): structure, not intensity. CFOG-like descriptors on both
images (``pipeline.descriptors``), a coarse global estimate by masked FFT-NCC on a downsampled
pair, then local estimates in tiles spread over the scene within a small radius around it, each
with a confidence, from ground-level SAR features and from every SAR feature (the bright
scatterers are masked only when the two disagree: layover); a robust fit (translation; affine
only where the scene supports it) and a global confidence. A low confidence keeps the original
georeferencing and flags the region.

Convention: ``(dx, dy)`` is the shift of SAR *content* relative to the EO in working-grid
pixels: a feature at EO pixel (x, y) shows in the SAR at (x + dx, y + dy).
"""

from __future__ import annotations

import dataclasses
import functools
import logging
import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar, Literal

import numpy as np
from scipy import ndimage

from pipeline import descriptors as dsc
from pipeline.atomic import atomic_path, write_json
from pipeline.documents import read_json
from pipeline.execute import Executor, gdal_cache, local
from pipeline.geometry import AcquisitionGeometry, GeometryError, geometry_from
from pipeline.grid import grid_for_bbox, metres_per_degree
from pipeline.layout import RegistrationFiles, SourceFiles
from pipeline.params import param
from pipeline.progress import Progress
from pipeline.provenance import attribution_lines
from pipeline.rasters import reading

log = logging.getLogger("sareo.coregister")

IDENTITY = (1.0, 0.0, 0.0, 0.0, 1.0, 0.0)

@dataclass(frozen=True)
class CoregisterParams:
    """How the SAR-to-EO offset is estimated, and when an estimate is trusted."""

    section: ClassVar[str] = "coregister"
    enabled: bool = param(True, "false: keep the SAR georeferencing as published")
    working_gsd_m: float | None = param(None, "estimation grid spacing; null = the region's gsd_m (never finer)")
    tile_size: int = param(256, "fine-level tile edge, working pixels")
    max_tiles: int = param(36, "bound on fine tiles read per region (spread over the scene)")
    search_radius_m: float = param(40.0, "largest offset searched for (>= 30 m of misregistration is found)")
    min_search_px: int = param(32, "search at least this many pixels (coarse GSD: 40 m is only 8 px at 5 m)")
    min_tile_px: int = param(64, "smallest fine tile; small scenes use smaller tiles down to this")
    coarse_radius_px: int = param(16, "search radius at the coarse level; sets the coarse downsampling")
    max_coarse_px: int = param(1024, "longest side of the coarse image (bounds memory for big scenes)")
    fine_radius_px: int = param(16, "minimum fine search radius around the coarse estimate")
    confidence_threshold: float = param(0.5, "below: keep the original georeferencing and flag the region")
    min_tiles: int = param(3, "fewer agreeing tiles than this: flagged")
    inlier_tol_px: float = param(1.5, "a tile agrees with the fit within this distance")
    max_residual_px: float = param(1.5, "inlier RMS residual above this: flagged")
    model: Literal["translation", "affine", "auto"] = param(
        "auto", "translation | affine | auto (affine only with enough well-spread tiles that explain clearly better)")
    affine_min_tiles: int = param(8, "inliers needed before an affine model is considered")
    n_orient: int = param(9, "orientation bins of the CFOG descriptor")
    descriptor_sigma: float = param(1.5, "Gaussian aggregation of the descriptor, pixels")
    sar_half_window: int = param(3, "half-window of the SAR ratio-of-means gradient at full resolution")
    sar_bright_mask_db: float | None = param(
        8.0, "fine level: ignore SAR this many dB over the local median (layover, double bounce); null = off")
    sar_bright_pfa: float | None = param(
        1e-4, "fine level: also ignore bright scatterers found by CFAR at this false-alarm rate (null = off)")
    cfar_max_share: float = param(0.6, "skip the CFAR mask in a window where it would cover more than this share")
    sar_mask_grow_px: int = param(3, "grow that mask (px) so its border makes no gradient")
    use_geometry: bool = param(True, "use the acquisition geometry (look direction) when the metadata gives it")
    claimed_accuracy_px: float = param(1.0, "independent estimates disagreeing by more than this: flagged")
    layover_leak: float = param(
        1.0, "range uncertainty from layover: this times the bright-minus-ground difference along range")
    family_agree_sigmas: float = param(
        2.0, "every-feature and ground estimates within this many standard errors on both axes: no layover "
        "seen, bright scatterers kept")
    family_systematic_px: float = param(
        0.08, "systematic part of the family difference's standard error, in quadrature: masking the bright "
        "scatterers moves a scene's estimate by this much (RMS) without any layover")
    gdal_cache_mb: int = param(256, "GDAL block cache bound while the stage reads (its default is 5 % of RAM)")
    eo_sigma: float = param(1.0, "Gaussian smoothing of the EO before its gradient, pixels")
    overlay_px: int = param(512, "side of the before/after overlay.png panels (full resolution; a fixed cost per scene)")
    workers: int | None = param(None, "threads for tile matching; null = one per core")
    record_timing: bool = param(False, "wall-clock seconds in registration.json (true makes the output differ per run)")

    def __post_init__(self) -> None:
        if not self.search_radius_m > 0:
            raise ValueError(f"search_radius_m: must be > 0, got {self.search_radius_m}")
        if self.tile_size < 32:
            raise ValueError(f"tile_size: must be >= 32, got {self.tile_size}")
        if self.working_gsd_m is not None and self.working_gsd_m <= 0:
            raise ValueError(f"working_gsd_m: must be > 0 or null, got {self.working_gsd_m}")
        for key in ("max_tiles", "coarse_radius_px", "max_coarse_px", "fine_radius_px", "min_tiles", "n_orient",
                    "sar_half_window", "overlay_px", "gdal_cache_mb"):
            if getattr(self, key) < 1:
                raise ValueError(f"{key}: must be >= 1, got {getattr(self, key)}")
        if not self.family_agree_sigmas > 0:
            raise ValueError(f"family_agree_sigmas: must be > 0, got {self.family_agree_sigmas}")
        if not self.family_systematic_px >= 0:
            raise ValueError(f"family_systematic_px: must be >= 0, got {self.family_systematic_px}")
        if self.workers is not None and self.workers < 1:
            raise ValueError(f"workers: must be >= 1 or null, got {self.workers}")


class RegistrationError(ValueError):
    """Inputs that cannot be registered (missing file, no overlap, bad params)."""


# ----------------------------------------------------------------------------- results


@dataclass(frozen=True)
class TiePoint:
    """A local estimate: EO pixel (x, y) of the tile centre, SAR content shift (dx, dy) there."""

    x: float
    y: float
    dx: float
    dy: float
    confidence: float
    score: float
    inlier: bool = False
    dx_all: float | None = None  # the same tile matched with every SAR feature (bright scatterers kept)
    dy_all: float | None = None
    family: str = "ground"  # "ground": bright scatterers masked; "all": kept (no layover seen); "bright": fallback,
    # only strong layover masked

    def to_dict(self, ndigits: int = 3) -> dict[str, Any]:
        return {
            "x": round(self.x, ndigits),
            "y": round(self.y, ndigits),
            "dx": round(self.dx, ndigits),
            "dy": round(self.dy, ndigits),
            "confidence": round(self.confidence, ndigits),
            "ncc": round(self.score, ndigits),
            "inlier": self.inlier,
            "family": self.family,
            **({"dx_all": round(self.dx_all, ndigits), "dy_all": round(self.dy_all, ndigits)}
               if self.dx_all is not None and self.dy_all is not None else {}),
        }

    def with_inlier(self, inlier: bool) -> "TiePoint":
        return dataclasses.replace(self, inlier=inlier)


@dataclass
class Registration:
    """The estimated misregistration on the working grid.

    ``matrix`` (a, b, c, d, e, f) maps an EO pixel (x, y) to where its content shows in the SAR:
    x' = a x + b y + c, y' = d x + e y + f (translation: (1, 0, dx, 0, 1, dy)).
    """

    dx: float
    dy: float
    model: str
    matrix: tuple[float, float, float, float, float, float]
    confidence: float
    flagged: bool
    reason: str
    tie_points: list[TiePoint] = field(default_factory=list)
    residuals_px: dict[str, float] = field(default_factory=dict)
    coarse: dict[str, Any] = field(default_factory=dict)
    uncertainty: dict[str, Any] = field(default_factory=dict)
    checks: dict[str, Any] = field(default_factory=dict)
    frame: dict[str, Any] = field(default_factory=dict)

    def sar_position(self, x: np.ndarray | float, y: np.ndarray | float) -> tuple[Any, Any]:
        """Where content at EO pixel (x, y) shows in the SAR, by the fitted model."""
        a, b, c, d, e, f = self.matrix
        return a * x + b * y + c, d * x + e * y + f


# ----------------------------------------------------------------------------- core

# read(row0, col0, height, width, factor, what) -> (sar_db, sar_valid, eo_gray, eo_valid), a window
# of the working frame at 1/factor resolution: pixel (i, j) covers working pixels
# [row0 + i*factor, row0 + (i+1)*factor) x [col0 + j*factor, ...). Outside the data: invalid.
# ``what``: "both", "sar" or "eo"; the image not asked for comes back as None (not read).
Reader = Callable[..., tuple[Any, Any, Any, Any]]
Which = Literal["both", "sar", "eo"]


def _sar_masks(sar_db: np.ndarray, sar_valid: np.ndarray, p: CoregisterParams, factor: int,
               families: tuple[str, ...] = ("all", "bright", "ground")) -> dict[str, np.ndarray]:
    """The SAR pixels each feature family counts (fine level only; the coarse level keeps
    everything: masked there, a dense city loses the global estimate the fine search needs).

    ``all``: every valid pixel; ``bright``: minus the 7x7-mean-over-median mask (strong
    layover areas, the previous method); ``ground``: also minus CFAR bright point and line
    scatterers (thin facade and double-bounce lines that a 7x7 mean dilutes), unless they
    would cover more than ``cfar_max_share`` of the window (CFAR assumes sparse targets).
    Only the masks of ``families`` are computed (the CFAR is the costly one)."""
    out = {"all": sar_valid}
    if factor != 1 or not sar_valid.any() or families == ("all",):
        return {"all": sar_valid, "bright": sar_valid, "ground": sar_valid}
    mid = sar_valid
    if p.sar_bright_mask_db is not None:
        mid = sar_valid & ~dsc.bright_mask(sar_db, sar_valid, float(p.sar_bright_mask_db),
                                           grow=int(p.sar_mask_grow_px))
    out["bright"] = mid
    ground = mid
    if p.sar_bright_pfa is not None and mid.any() and "ground" in families:
        hit = dsc.bright_scatterers(sar_db, mid, float(p.sar_bright_pfa))
        if p.sar_mask_grow_px > 0:
            hit = ndimage.binary_dilation(hit, iterations=int(p.sar_mask_grow_px))
        if hit.sum() <= p.cfar_max_share * max(int(mid.sum()), 1):
            ground = mid & ~hit
    out["ground"] = ground
    return out


def _sar_descriptor(sar_db: np.ndarray, valid: np.ndarray, p: CoregisterParams, factor: int) -> np.ndarray:
    """CFOG of the SAR ratio gradient over ``valid``; the gradient window shrinks as looks are averaged."""
    half = max(1, int(round(p.sar_half_window / factor)))
    gx, gy = dsc.sar_gradients(sar_db, valid, half=half)
    return dsc.cfog(gx, gy, p.n_orient, p.descriptor_sigma)


def _eo_descriptor(eo: np.ndarray, eo_valid: np.ndarray, p: CoregisterParams) -> np.ndarray:
    gx, gy = dsc.optical_gradients(eo, eo_valid, sigma=p.eo_sigma)
    return dsc.cfog(gx, gy, p.n_orient, p.descriptor_sigma)


def _tile_confidence(peak: dsc.Peak) -> float:
    """Trust in one match, in [0, 1]: the product of two ramps, on the peak's significance
    against a surrogate null surface (chance peaks: ~1, measured up to 2.3 on unrelated pairs;
    true matches from 2.0 on the demo, 2.6 on the Atlanta chip) and on its distinctiveness from
    the best other local maximum (guards against repetitive structure). A peak on the search
    border is worth nothing (the truth may lie beyond)."""
    if peak.on_edge or not math.isfinite(peak.score):
        return 0.0
    s_part = float(np.clip((peak.significance - 1.8) / 1.5, 0.0, 1.0))
    d_part = float(np.clip((peak.distinct - 0.15) / 0.25, 0.0, 1.0))
    return s_part * d_part


M = 8  # descriptor margin: filters near a window border see padding


@dataclass(frozen=True)
class _Windows:
    """One tile's SAR search window (template + 2 * radius, plus the margin) and EO template
    window (plus the margin) at 1/factor: read once, matched for every feature family."""

    sar: np.ndarray
    sv: np.ndarray
    eo: np.ndarray
    ev: np.ndarray
    factor: int
    radius: int


def _windows(read: Reader, row0: int, col0: int, h: int, w: int, factor: int, radius: int,
             guess: tuple[int, int], eo_window: tuple[np.ndarray, np.ndarray] | None = None) -> _Windows | None:
    """The windows of the tile at (row0, col0) with the SAR displaced by ``guess`` (``eo_window``:
    the EO one, already read); None when either holds too little valid data."""
    gx, gy = guess
    H, W = h + 2 * M + 2 * radius, w + 2 * M + 2 * radius
    sar, sv, _, _ = read(row0 + (gy - radius - M) * factor, col0 + (gx - radius - M) * factor, H, W, factor, "sar")
    if eo_window is None:
        _, _, eo, ev = read(row0 - M * factor, col0 - M * factor, h + 2 * M, w + 2 * M, factor, "eo")
    else:
        eo, ev = eo_window
    if ev[M:-M, M:-M].mean() < 0.3 or sv.mean() < 0.3:
        return None
    return _Windows(sar.astype(np.float32), sv, eo.astype(np.float32), ev, factor, radius)


def _peaks(win: _Windows, families: tuple[str, ...], p: CoregisterParams, min_overlap: float = 0.5
           ) -> dict[str, dsc.Peak | None]:
    """Match the EO template of ``win`` inside its SAR window with each SAR feature family (see
    _sar_masks); each peak's shift is relative to the window's guess, in pixels at its level, and
    comes with its surrogate null. The template's spectra are computed once for all of them."""
    m, factor, radius = M, win.factor, win.radius
    masks = _sar_masks(win.sar, win.sv, p, factor, families)
    tmask = win.ev[m:-m, m:-m]
    ed = _eo_descriptor(win.eo, win.ev, p)[:, m:-m, m:-m]
    shape = dsc.fft_shape(tmask.shape, radius)
    t_spec = dsc.spectra(ed, tmask, shape)
    out: dict[str, dsc.Peak | None] = {}
    for name in families:
        v = masks[name]
        if v[m:-m, m:-m].mean() < 0.3:
            out[name] = None
            continue
        sd, vv = _sar_descriptor(win.sar, v, p, factor)[:, m:-m, m:-m], v[m:-m, m:-m]
        s_spec = dsc.spectra(sd, vv, shape)
        surface = dsc.ncc_from_spectra(t_spec, s_spec, radius, min_overlap)
        null = dsc.ncc_from_spectra(t_spec, s_spec, radius, min_overlap, flipped=True)
        out[name] = dsc.find_peak(surface, null=null)
    return out


def _spread_tiles(
    mask: np.ndarray, factor: int, tile: int, max_tiles: int, shape: tuple[int, int]
) -> list[tuple[int, int]]:
    """Top-left corners (row, col, working px) of up to ``max_tiles`` tiles over the valid
    overlap (``mask`` at 1/factor), on a regular lattice so they spread across the scene."""
    H, W = shape
    rows = max(1, H // tile)
    cols = max(1, W // tile)
    cand = []
    for i in range(rows):
        for j in range(cols):
            r0 = int(round(i * (H - tile) / max(rows - 1, 1))) if rows > 1 else max(0, (H - tile) // 2)
            c0 = int(round(j * (W - tile) / max(cols - 1, 1))) if cols > 1 else max(0, (W - tile) // 2)
            sub = mask[r0 // factor : (r0 + tile) // factor + 1, c0 // factor : (c0 + tile) // factor + 1]
            if sub.size and sub.mean() >= 0.6:
                cand.append((r0, c0))
    if len(cand) > max_tiles:
        idx = np.round(np.linspace(0, len(cand) - 1, max_tiles)).astype(int)
        cand = [cand[k] for k in idx]
    return cand


def _fit(
    tps: list[TiePoint], p: CoregisterParams, shape: tuple[int, int]
) -> tuple[list[TiePoint], str, tuple[float, ...], dict[str, float], float, str]:
    """Robust fit: best-supported translation hypothesis (RANSAC over tiles, weighted by
    confidence), refined on its inliers; affine only with enough well-spread inliers that it
    explains clearly better. Returns (tie points with inlier flags, model, matrix, residuals,
    confidence, reason-if-low)."""
    tol = float(p.inlier_tol_px)
    usable = [t for t in tps if t.confidence > 0]
    if not usable:
        return tps, "none", (1.0, 0.0, 0.0, 0.0, 1.0, 0.0), {}, 0.0, "no tile produced a usable match"
    d = np.array([[t.dx, t.dy] for t in usable])
    w = np.array([t.confidence for t in usable])
    xy = np.array([[t.x, t.y] for t in usable])
    support = [(w * (np.hypot(*(d - d[i]).T) < tol)).sum() for i in range(len(d))]
    best = d[int(np.argmax(support))]
    for _ in range(3):
        inl = np.hypot(*(d - best).T) < tol
        best = (d[inl] * w[inl, None]).sum(0) / w[inl].sum()
    inl = np.hypot(*(d - best).T) < tol
    res_t = d[inl] - best
    model, matrix, res = "translation", (1.0, 0.0, float(best[0]), 0.0, 1.0, float(best[1])), res_t
    rms_t = float(np.sqrt((res_t**2).sum(1).mean()))
    spread_ok = inl.sum() >= p.affine_min_tiles and all(
        np.ptp(xy[inl, k]) >= 0.4 * shape[1 - k] for k in (0, 1)
    )
    if p.model in ("affine", "auto") and spread_ok:
        A = np.c_[xy[inl], np.ones(inl.sum())] * np.sqrt(w[inl, None])
        coef, *_ = np.linalg.lstsq(A, d[inl] * np.sqrt(w[inl, None]), rcond=None)
        pred = np.c_[xy[inl], np.ones(inl.sum())] @ coef
        res_a = d[inl] - pred
        rms_a = float(np.sqrt((res_a**2).sum(1).mean()))
        if p.model == "affine" or (rms_t > 0.5 and rms_a < 0.7 * rms_t):
            (ax, ay), (bx, by), (cx, cy) = coef
            model, res = "affine", res_a
            matrix = (1.0 + float(ax), float(bx), float(cx), float(ay), 1.0 + float(by), float(cy))
    out, k = [], 0
    for t in tps:
        if t.confidence > 0:
            out.append(t.with_inlier(bool(inl[k])))
            k += 1
        else:
            out.append(t)
    norms = np.hypot(*res.T)
    residuals = {
        "rms": float(np.sqrt((norms**2).mean())),
        "median": float(np.median(norms)),
        "max": float(norms.max()),
        "n_inliers": int(inl.sum()),
        "n_tiles": len(tps),
    }
    # global confidence: confidence-weighted share of agreeing tiles, times how far the number of
    # agreeing tiles and their own confidence go towards what a trustworthy fit needs
    share = float(w[inl].sum() / max(w.sum(), dsc.EPS))
    enough = min(1.0, inl.sum() / max(2 * p.min_tiles, 1))
    conf = share * enough * float(np.clip(w[inl].mean() / 0.5, 0, 1))
    reason = ""
    if inl.sum() < p.min_tiles:
        reason = f"only {int(inl.sum())} agreeing tile(s); need {p.min_tiles}"
    elif residuals["rms"] > p.max_residual_px:
        reason = f"residual RMS {residuals['rms']:.2f} px > {p.max_residual_px} px"
    elif conf < p.confidence_threshold:
        reason = f"confidence {conf:.2f} < threshold {p.confidence_threshold}"
    return out, model, matrix, residuals, conf, reason


def frame_plan(shape: tuple[int, int], gsd_m: float, p: CoregisterParams) -> dict[str, Any]:
    """Search radius and tiling for a scene of ``shape`` px at ``gsd_m``, and why a scene
    cannot be registered (``reason``, else empty).

    The radius is ``search_radius_m`` but at least ``min_search_px`` (at 5 m, 40 m is 8 px: a
    peak near the border counts nothing) and at most a quarter of the scene (the template keeps
    half of it). Tiles shrink for small scenes, down to ``min_tile_px``, so that the lattice
    holds at least ``2 * min_tiles`` of them (tile agreement needs tiles to agree)."""
    H, W = shape
    want = max(int(math.ceil(float(p.search_radius_m) / gsd_m)), int(p.min_search_px))
    cap = min(H, W) // 4
    radius = max(1, min(want, cap))
    side = int(math.ceil(math.sqrt(2 * p.min_tiles)))
    tile = int(min(p.tile_size, max(p.min_tile_px, min(H, W) // side), H - 2, W - 2))
    reason = ""
    if min(H, W) < max(p.min_tile_px, 4 * 8) + 2:
        reason = (f"scene {W}x{H} px at {gsd_m:g} m is smaller than one {p.min_tile_px} px matching tile; "
                  "too small to register")
    elif radius < want:
        reason = ""  # searched what fits; the note says so and an offset beyond is flagged by the edge test
    return {"radius_px": int(radius), "radius_wanted_px": int(want), "tile_px": tile, "reason": reason,
            "note": (f"search radius cut to {radius} px (a quarter of the {min(H, W)} px scene side) from "
                     f"{want} px" if radius < want else "")}


def _axes(geometry: AcquisitionGeometry | None, p: CoregisterParams) -> tuple[np.ndarray, np.ndarray, str]:
    """Unit vectors (x, y) of the two axes errors are reported on: ground range toward the
    sensor and azimuth when the geometry is known, else image x and y."""
    u = geometry.toward_sensor() if (geometry is not None and p.use_geometry) else None
    if u is None:
        return np.array([1.0, 0.0]), np.array([0.0, 1.0]), "xy"
    r = np.array(u)
    return r, np.array([-r[1], r[0]]), "range_azimuth"


def p_within(radius: float, s1: float, s2: float) -> float:
    """P(|e| <= radius) for a 2-D Gaussian error with standard deviations s1, s2 (numerical)."""
    s1, s2 = max(s1, 1e-6), max(s2, 1e-6)
    t = np.linspace(-radius, radius, 81)
    X, Y = np.meshgrid(t, t)
    dens = np.exp(-0.5 * ((X / s1) ** 2 + (Y / s2) ** 2)) / (2 * np.pi * s1 * s2)
    step = t[1] - t[0]
    return float(min(1.0, (dens * (X**2 + Y**2 <= radius**2)).sum() * step * step))


def _scatter_sigma(d: np.ndarray, w: np.ndarray, e: np.ndarray, axes: tuple[np.ndarray, np.ndarray]) -> list[float]:
    """Statistical standard error of a confidence-weighted mean of tile estimates ``d`` (n, 2)
    around ``e`` along each axis: weighted scatter over sqrt(effective n), floor 0.05 px (sub-pixel
    peak interpolation)."""
    n_eff = w.sum() ** 2 / max((w**2).sum(), 1e-12)
    return [max(0.05, float(np.sqrt((w * ((d - e) @ ax) ** 2).sum() / w.sum()) / math.sqrt(max(n_eff, 1.0))))
            for ax in axes]


def _wmean(d: np.ndarray, w: np.ndarray) -> np.ndarray:
    return (d * w[:, None]).sum(0) / w.sum()


def family_test(ground: list[TiePoint], every: list[TiePoint], geometry: AcquisitionGeometry | None,
                p: CoregisterParams) -> dict[str, Any]:
    """Do the bright scatterers move the estimate? Layover displaces elevated scatterers toward
    the sensor and nothing on flat ground, so an estimate from every SAR feature (``every``)
    differs from the ground-level one (``ground``) only where there is layover to see. The test
    is paired: on each tile that is an inlier in both, the difference (every - ground) of the
    same tile, then their weighted mean and ITS standard error (the scatter of the per-tile
    differences over sqrt(effective n), 0.05 px floor) along each axis. The two estimates of a
    tile share its EO template and most of its SAR, so their errors are correlated; the
    standard errors of the two family means in quadrature miss that correlation and the
    tile-to-tile spread of what masking changes. The paired differences barely scatter, yet on
    scenes without layover their mean is not zero: masking moves the whole scene's estimate by a
    systematic amount (RMS 0.05 px across, 0.08 px along y on the plain in-memory benchmark set),
    added in quadrature as ``family_systematic_px``. ``layover_seen``: the mean difference
    exceeds ``family_agree_sigmas`` of that sigma on an axis, or the test could not be made (too
    few common tiles): keep the mask. Otherwise the bright scatterers are right (no layover: a
    scene without tall structure, or a flat one) and masking them only throws away true
    features."""
    ax_r, ax_a, axes = _axes(geometry, p)
    names = ("range", "azimuth") if axes == "range_azimuth" else ("x", "y")
    both = [(g, a) for g, a in zip(ground, every) if g.inlier and a.inlier]
    out: dict[str, Any] = {"axes": axes, "common_tiles": len(both), "layover_seen": True}
    if len(both) < max(2, p.min_tiles):
        out["why"] = f"only {len(both)} tile(s) agree in both families"
        return out
    dd = np.array([[a.dx - g.dx, a.dy - g.dy] for g, a in both])
    wg = np.array([g.confidence for g, _ in both])
    wa = np.array([a.confidence for _, a in both])
    # a tile's difference is as uncertain as its two estimates together: harmonic weight
    w = np.where(wg + wa > 0, wg * wa / np.maximum(wg + wa, 1e-12), 0.0)
    if not w.sum() > 0:
        out["why"] = "no common tile has a usable confidence in both families"
        return out
    md = _wmean(dd, w)
    diff = [float(md @ ax) for ax in (ax_r, ax_a)]
    sigma = [math.hypot(s, p.family_systematic_px) for s in _scatter_sigma(dd, w, md, (ax_r, ax_a))]
    out.update(
        difference_px={names[0]: round(diff[0], 4), names[1]: round(diff[1], 4)},
        sigma_px={names[0]: round(sigma[0], 4), names[1]: round(sigma[1], 4)},
        layover_seen=bool(any(abs(d) > p.family_agree_sigmas * s for d, s in zip(diff, sigma))),
    )
    return out


def _assess(tps: list[TiePoint], est: tuple[float, float], geometry: AcquisitionGeometry | None,
            p: CoregisterParams, bias_xy: np.ndarray | None) -> tuple[dict[str, Any], dict[str, Any], str]:
    """Independent estimates, uncertainty along two axes and why to distrust the fit.

    - Scene halves: the inlier tiles split at the median position along range (or x), each
      half fitted on its own; the halves disagreeing by more than ``claimed_accuracy_px`` means
      the scene does not support one answer at that accuracy.
    - Feature families: ``bias_xy`` is the mean of (every SAR feature minus the ground-level
      features) over the ground family's inlier tiles. Layover moves those toward the sensor
      only, so along azimuth both families must agree; along range their difference measures
      how much layover there is to leak through the mask (``layover_leak`` of it is added to the
      range uncertainty).
    - Statistical: the confidence-weighted scatter of the inlier tiles per axis, over the
      square root of their number, with a 0.05 px floor for sub-pixel peak interpolation.
    """
    ax_r, ax_a, axes = _axes(geometry, p)
    names = ("range", "azimuth") if axes == "range_azimuth" else ("x", "y")
    inl = [t for t in tps if t.inlier]
    checks: dict[str, Any] = {"axes": axes}
    if not inl:
        return {"axes": axes}, checks, ""
    d = np.array([[t.dx, t.dy] for t in inl])
    w = np.array([t.confidence for t in inl])
    xy = np.array([[t.x, t.y] for t in inl])
    sig = _scatter_sigma(d, w, np.asarray(est, float), (ax_r, ax_a))
    reason = ""
    # halves
    half_diff = np.zeros(2)
    pos = xy @ ax_r
    lo = pos <= np.median(pos)
    if lo.sum() >= 2 and (~lo).sum() >= 2:
        dv = _wmean(d[lo], w[lo]) - _wmean(d[~lo], w[~lo])
        half_diff = np.array([dv @ ax_r, dv @ ax_a])
        checks["halves_px"] = {names[0]: round(float(half_diff[0]), 3), names[1]: round(float(half_diff[1]), 3)}
        if float(np.hypot(*half_diff)) > p.claimed_accuracy_px:
            reason = (f"the two halves of the scene disagree by {float(np.hypot(*half_diff)):.2f} px "
                      f"(> {p.claimed_accuracy_px} px claimed)")
    else:
        checks["halves_px"] = None
    # feature families
    bias = np.zeros(2)
    if bias_xy is not None:
        bias = np.array([bias_xy @ ax_r, bias_xy @ ax_a])
        checks["bright_minus_ground_px"] = {names[0]: round(float(bias[0]), 3), names[1]: round(float(bias[1]), 3)}
        if axes == "range_azimuth" and abs(bias[1]) > p.claimed_accuracy_px and not reason:
            reason = (f"ground and bright-scatterer estimates disagree by {abs(bias[1]):.2f} px along azimuth, "
                      "where layover cannot displace them")
    lay = p.layover_leak * (abs(bias[0]) if axes == "range_azimuth" else float(np.hypot(*bias)))
    s_r = math.sqrt(sig[0] ** 2 + (half_diff[0] / 2) ** 2 + lay**2)
    s_a = math.sqrt(sig[1] ** 2 + (half_diff[1] / 2) ** 2 + (0.0 if axes == "range_azimuth" else lay**2))
    unc = {
        "axes": axes,
        f"sigma_{names[0]}_px": round(s_r, 4),
        f"sigma_{names[1]}_px": round(s_a, 4),
        "p_within_1px": round(p_within(1.0, s_r, s_a), 4),
        "n_inliers": len(inl),
    }
    if axes == "range_azimuth":
        unc["range_axis_xy"] = [round(float(v), 6) for v in ax_r]
    return unc, checks, reason


def _tie_points(corners: list[tuple[int, int]], results: list[Any], family: str, tile: int,
                guess: tuple[int, int]) -> list[TiePoint]:
    """Tie points of one feature family (``dx_all``/``dy_all``: the same tile with every feature)."""
    tps = []
    for (r0, c0), res in zip(corners, results):
        if res is None or res[1].get(family) is None:
            continue
        pk, pa = res[1][family], res[1].get("all")
        tps.append(TiePoint(
            c0 + tile / 2, r0 + tile / 2, guess[0] + pk.dx, guess[1] + pk.dy, _tile_confidence(pk), pk.score,
            dx_all=None if pa is None else guess[0] + pa.dx, dy_all=None if pa is None else guess[1] + pa.dy,
            family=family))
    return tps


def estimate(read: Reader, shape: tuple[int, int], gsd_m: float, p: CoregisterParams | None = None,
             geometry: AcquisitionGeometry | None = None) -> Registration:
    """Coarse-to-fine estimate of the SAR content shift on a working frame of ``shape`` (H, W)
    pixels of ``gsd_m`` metres, reading only what it needs through ``read``. ``geometry`` (the
    SAR's look direction) sets the axes of the uncertainty and of the family test."""
    p = p or CoregisterParams()
    H, W = shape
    plan = frame_plan(shape, gsd_m, p)
    if plan["reason"]:
        return Registration(0.0, 0.0, "none", IDENTITY, 0.0, True, plan["reason"], frame=plan)
    radius = plan["radius_px"]
    factor = max(1, math.ceil(radius / p.coarse_radius_px), math.ceil(max(H, W) / p.max_coarse_px))
    rc = int(math.ceil(radius / factor)) + 1
    ch, cw = H // factor, W // factor
    # --- coarse: the whole frame at 1/factor, EO template (minus the search border) inside SAR
    coarse: dict[str, Any] = {"factor": factor, "radius_px": rc}
    guess = (0, 0)
    fine_radius = radius
    sv_coarse = None
    # the EO of the whole frame at 1/factor with the descriptor margin, read once: the coarse
    # template is its middle and the tiles are laid out on its valid part
    _, _, eo_c, ev_c = read(-M * factor, -M * factor, ch + 2 * M, cw + 2 * M, factor, "eo")
    if ch > 2 * rc + 16 and cw > 2 * rc + 16:
        win = _windows(read, rc * factor, rc * factor, ch - 2 * rc, cw - 2 * rc, factor, rc, (0, 0),
                       (eo_c[rc : ch + 2 * M - rc, rc : cw + 2 * M - rc], ev_c[rc : ch + 2 * M - rc, rc : cw + 2 * M - rc]))
        if win is not None:
            sv_coarse = win.sv[M:-M, M:-M]  # the SAR window is the whole frame plus the margin
            pk = _peaks(win, ("all",), p, min_overlap=0.3)["all"]
            if pk is not None:
                conf = _tile_confidence(pk)
                coarse.update(dx=pk.dx * factor, dy=pk.dy * factor, ncc=pk.score, confidence=conf)
                if conf >= 0.3:
                    guess = (int(round(pk.dx * factor)), int(round(pk.dy * factor)))
                    fine_radius = min(radius, max(int(p.fine_radius_px), 2 * factor))
    log.info("coarse x%d: %s; fine radius %d px around %s", factor, coarse, fine_radius, guess)
    # --- fine: tiles spread over the valid overlap
    ev = ev_c[M : M + ch, M : M + cw]
    sv = sv_coarse if sv_coarse is not None and sv_coarse.shape == ev.shape else read(0, 0, ch, cw, factor, "sar")[1]
    tile = plan["tile_px"]
    corners = _spread_tiles(sv & ev, factor, tile, int(p.max_tiles), shape)
    log.info("matching %d tiles of %d px", len(corners), tile)
    import dask

    def run(label: str, fn: Callable[[int, int, Any], Any], prev: list[Any]) -> list[Any]:
        with Progress(f"registration tiles ({label})", len(corners), "tiles", logger=log) as bar:
            def one(k: int) -> Any:
                r0, c0 = corners[k]
                res = fn(r0, c0, prev[k])
                bar.update()
                return res

            return list(dask.compute(*[dask.delayed(one)(k) for k in range(len(corners))], scheduler="threads",
                                     num_workers=p.workers))

    def first(r0: int, c0: int, _: Any) -> Any:
        w = _windows(read, r0, c0, tile, tile, 1, fine_radius, guess)
        return None if w is None else (w, _peaks(w, ("ground", "all"), p))

    results = run("ground, all", first, [None] * len(corners))
    ground = _tie_points(corners, results, "ground", tile, guess)
    confident = sum(t.confidence > 0 for t in ground)
    family, test, bias_xy = "ground", None, None
    if ground and confident < 0.5 * len(ground) and p.sar_bright_pfa is not None:
        # the ground-level features alone do not carry this scene (dense city, layover over most
        # of the ground): one family per scene, never mixed (their biases differ), so match again
        # (same windows) with only the strong layover areas masked, and say so
        family = "bright"
        results = run("bright", lambda r0, c0, prev: None if prev is None else
                      (prev[0], {**prev[1], "bright": _peaks(prev[0], ("bright",), p)["bright"]}), results)
        tps = _fit(_tie_points(corners, results, family, tile, guess), p, shape)
    else:
        tps = _fit(ground, p, shape)
        every = _fit(_tie_points(corners, results, "all", tile, guess), p, shape)
        test = family_test(tps[0], every[0], geometry, p)
        fam = [(t.dx_all - t.dx, t.dy_all - t.dy, t.confidence) for t in tps[0] if t.inlier and t.dx_all is not None]
        if len(fam) >= 2:
            f = np.array(fam)
            bias_xy = _wmean(f[:, :2], f[:, 2])
        if not test["layover_seen"] and not every[5]:
            family, tps = "all", every
    del results  # the tile windows
    tps, model, matrix, residuals, conf, reason = tps
    if not tps:
        reason = (f"no {tile} px tile of the {W}x{H} px scene had enough valid SAR and EO overlap"
                  if not corners else reason)
    cx, cy = W / 2, H / 2
    a, b, c, d, e, f = matrix
    dx, dy = a * cx + b * cy + c - cx, d * cx + e * cy + f - cy
    unc, checks, why = _assess(tps, (dx, dy), geometry, p, bias_xy)
    checks["family"] = family
    if test is not None:
        checks["family_test"] = test
    reason = reason or why
    if "p_within_1px" in unc:
        conf = conf * unc["p_within_1px"]
        if not reason and conf < p.confidence_threshold:
            reason = f"confidence {conf:.2f} < threshold {p.confidence_threshold} (P(error <= 1 px) {unc['p_within_1px']:.2f})"
    return Registration(
        dx=float(dx), dy=float(dy), model=model, matrix=tuple(float(v) for v in matrix), confidence=float(conf),
        flagged=bool(reason), reason=reason, tie_points=tps, residuals_px=residuals, coarse=coarse,
        uncertainty=unc, checks=checks, frame=plan,
    )


def array_reader(sar_db: np.ndarray, eo_gray: np.ndarray, sar_valid: np.ndarray, eo_valid: np.ndarray) -> Reader:
    """A Reader over two in-memory images on the same frame (SAR averaged in linear power)."""
    sar_lin = np.power(10.0, np.nan_to_num(sar_db, nan=0.0) / 10.0)
    sar_valid = sar_valid & np.isfinite(sar_db)
    H, W = sar_db.shape

    def read(row0: int, col0: int, h: int, w: int, factor: int, what: Which = "both"):
        hh, ww = h * factor, w * factor
        out: list[Any] = []
        for img, valid, name in ((sar_lin, sar_valid, "sar"), (eo_gray, eo_valid, "eo")):
            if what not in ("both", name):
                out += [None, None]
                continue
            a = np.zeros((hh, ww))
            v = np.zeros((hh, ww), dtype=bool)
            r0, c0 = max(row0, 0), max(col0, 0)
            r1, c1 = min(row0 + hh, H), min(col0 + ww, W)
            if r1 > r0 and c1 > c0:
                a[r0 - row0 : r1 - row0, c0 - col0 : c1 - col0] = img[r0:r1, c0:c1]
                v[r0 - row0 : r1 - row0, c0 - col0 : c1 - col0] = valid[r0:r1, c0:c1]
            a, v = dsc.downsample(a, v, factor)
            out += [a, v]
        s, sv, e, ev = out
        return (None if s is None else 10 * np.log10(np.maximum(s, 1e-12))), sv, e, ev

    return read


def estimate_shift(
    sar_db: np.ndarray, eo_gray: np.ndarray, sar_valid: np.ndarray | None = None, eo_valid: np.ndarray | None = None,
    p: CoregisterParams | None = None, gsd_m: float = 1.0, geometry: AcquisitionGeometry | None = None,
) -> Registration:
    """Shift of the SAR content relative to the EO for two images on the same pixel grid.

    ``sar_db``: SAR in dB (or any log-intensity; NaN = no data); ``eo_gray``: optical grey
    levels; ``gsd_m`` converts ``search_radius_m`` into pixels.
    """
    if sar_db.shape != eo_gray.shape:
        raise RegistrationError(f"SAR {sar_db.shape} and EO {eo_gray.shape} must be on the same grid")
    sv = np.isfinite(sar_db) if sar_valid is None else sar_valid.astype(bool) & np.isfinite(sar_db)
    ev = np.isfinite(eo_gray) if eo_valid is None else eo_valid.astype(bool)
    return estimate(array_reader(sar_db, np.nan_to_num(eo_gray), sv, ev), sar_db.shape, gsd_m, p, geometry)


# ----------------------------------------------------------------------------- raster I/O


class OpenSources:
    """Datasets opened once per thread and path (a rasterio dataset must not be shared between
    threads; opening one per window read cost as much as a small warp), closed together."""

    def __init__(self) -> None:
        import threading

        self._local = threading.local()
        self._lock = threading.Lock()
        self._open: list[Any] = []

    def get(self, path: str | Path) -> Any:
        import rasterio

        cache = self._local.__dict__.setdefault("datasets", {})
        key = str(path)
        if key not in cache:
            with reading(path, "open"):
                cache[key] = rasterio.open(path)
            with self._lock:
                self._open.append(cache[key])
        return cache[key]

    def close(self) -> None:
        with self._lock:
            for ds in self._open:
                ds.close()
            self._open.clear()


def warp_window(
    path: str | Path, dst_crs: str, dst_transform: Any, width: int, height: int, bands: list[int],
    resampling: str = "bilinear", src_transform: Any = None, band_mean: bool = False,
    sources: OpenSources | None = None,
) -> np.ndarray:
    """Bands of ``path`` resampled onto a small target window, NaN where there is no data.

    Reads only the source window under the target (decimated when the target is coarser, so a
    coarse view of a 24k x 24k scene stays small) and honours every kind of source mask
    (nodata, alpha, internal mask: GDAL's dataset mask), which WarpedVRT alone does not.
    ``src_transform`` overrides the source georeferencing (used to show a correction);
    ``band_mean``: one band, the mean of ``bands`` (averaged before the warp: a third of the work
    for RGB).
    """
    import rasterio
    from rasterio.enums import Resampling
    from rasterio.transform import array_bounds
    from rasterio.warp import reproject, transform_bounds
    from rasterio.windows import Window, from_bounds
    from rasterio.windows import transform as win_transform

    out = np.full((len(bands), height, width), np.nan, dtype=np.float32)
    import contextlib

    with (contextlib.nullcontext(sources.get(path)) if sources is not None else rasterio.open(path)) as src:
        s_t = src_transform if src_transform is not None else src.transform
        l, b, r, t = array_bounds(height, width, dst_transform)
        west, south, east, north = transform_bounds(dst_crs, src.crs, l, b, r, t, densify_pts=21)
        win = from_bounds(west, south, east, north, transform=s_t)
        c0, r0 = math.floor(win.col_off) - 2, math.floor(win.row_off) - 2
        c1, r1 = math.ceil(win.col_off + win.width) + 2, math.ceil(win.row_off + win.height) + 2
        c0, r0, c1, r1 = max(c0, 0), max(r0, 0), min(c1, src.width), min(r1, src.height)
        if c1 - c0 < 2 or r1 - r0 < 2:
            return out
        win = Window(c0, r0, c1 - c0, r1 - r0)
        dec = max(1, int(min(win.width / width, win.height / height)))
        shape = (max(1, win.height // dec), max(1, win.width // dec))
        with reading(path, f"window {win}"):
            data = src.read(bands, window=win, out_shape=(len(bands),) + shape, out_dtype="float32",
                            resampling=Resampling.average if dec > 1 else Resampling.nearest)
            mask = src.dataset_mask(window=win, out_shape=shape)
        if band_mean and len(bands) > 1:  # linear, so the same as warping each band and averaging
            data = data.mean(axis=0, keepdims=True)
            out = out[:1]
        data[:, mask == 0] = np.nan
        st = win_transform(win, s_t) @ type(s_t).scale(win.width / shape[1], win.height / shape[0])
        reproject(
            data, out, src_transform=st, src_crs=src.crs, src_nodata=np.nan, dst_transform=dst_transform,
            dst_crs=dst_crs, dst_nodata=np.nan, resampling=Resampling[resampling],
        )
    return out


def file_reader(sar_path: str | Path, eo_path: str | Path, grid: Any, sar_transform: Any = None,
                sources: OpenSources | None = None) -> Reader:
    """A Reader over the source files on ``grid`` (a pipeline.grid.Grid). SAR amplitude DN
    becomes 20*log10(DN) (uncalibrated dB: the match is on structure); EO RGB becomes grey."""
    import rasterio
    from affine import Affine

    with rasterio.open(eo_path) as eo_src:
        eo_bands = [1, 2, 3] if eo_src.count >= 3 else [1]

    def read(row0: int, col0: int, h: int, w: int, factor: int, what: Which = "both"):
        t = grid.transform @ Affine.translation(col0, row0) @ Affine.scale(factor)
        rs = "average" if factor > 1 else "bilinear"
        db = sv = eo = ev = None
        if what in ("both", "sar"):
            sar = warp_window(sar_path, grid.crs, t, w, h, [1], rs, sar_transform, sources=sources)[0]
            sv = np.isfinite(sar) & (sar > 0)
            with np.errstate(divide="ignore", invalid="ignore"):
                db = np.where(sv, 20 * np.log10(np.where(sv, sar, 1.0)), np.nan)
        if what in ("both", "eo"):
            e = warp_window(eo_path, grid.crs, t, w, h, eo_bands, rs, band_mean=True, sources=sources)[0]
            ev = np.isfinite(e)
            eo = np.nan_to_num(e)
        return db, sv, eo, ev

    return read


# ----------------------------------------------------------------------------- georeferencing


def map_correction(reg: Registration, grid: Any, sar_crs: Any) -> tuple[tuple[float, ...], dict[str, float]]:
    """The affine (in SAR map coordinates) that moves where the SAR shows things to where they
    are, and the shift it makes at the frame centre in metres east/north.

    True and apparent positions of a 5x5 lattice of grid pixels are carried through pyproj into
    the SAR CRS (no degree-to-metre shortcut, meridian convergence included); the translation is
    the one at the centre, the affine a least-squares fit over the lattice.
    """
    from pyproj import CRS, Transformer

    crs = CRS.from_user_input(sar_crs)
    tr = Transformer.from_crs(CRS.from_user_input(grid.crs), crs, always_xy=True)
    gx, gy = np.meshgrid(np.linspace(0, grid.width, 5), np.linspace(0, grid.height, 5))
    gx, gy = gx.ravel(), gy.ravel()
    qx, qy = reg.sar_position(gx, gy)
    t = grid.transform

    def to_sar(x: np.ndarray, y: np.ndarray) -> np.ndarray:
        lon, lat = t.a * x + t.b * y + t.c, t.d * x + t.e * y + t.f
        return np.array(tr.transform(lon, lat)).T

    P, Q = to_sar(gx, gy), to_sar(np.asarray(qx), np.asarray(qy))
    centre = 12  # the middle of the 5x5 lattice
    if reg.model == "affine":
        A = np.c_[Q, np.ones(len(Q))]
        coef, *_ = np.linalg.lstsq(A - [Q[centre, 0], Q[centre, 1], 0], P, rcond=None)
        (a, d), (b, e), (c0, f0) = coef
        # refit was centred on Q[centre] for conditioning; move the offset back to the origin
        c = c0 - a * Q[centre, 0] - b * Q[centre, 1]
        f = f0 - d * Q[centre, 0] - e * Q[centre, 1]
        corr = (float(a), float(b), float(c), float(d), float(e), float(f))
    else:
        dxm, dym = P[centre] - Q[centre]
        corr = (1.0, 0.0, float(dxm), 0.0, 1.0, float(dym))
    a, b, c, d, e, f = corr
    qcx, qcy = Q[centre]
    east, north = a * qcx + b * qcy + c - qcx, d * qcx + e * qcy + f - qcy
    if crs.is_geographic:  # shift_m stays in metres even for a lon/lat SAR product
        mx, my = metres_per_degree(float(qcy))
        east, north = east * mx, north * my
    return corr, {"east": float(east), "north": float(north)}


# ----------------------------------------------------------------------------- overlay


def _stretch(img: np.ndarray, valid: np.ndarray) -> np.ndarray:
    """Grey levels 0..255 between the 2nd and 98th percentile of the valid pixels."""
    if not valid.any():
        return np.zeros(img.shape, dtype=np.uint8)
    lo, hi = np.percentile(img[valid][::4], [2, 98])  # a quarter of the pixels is plenty for a stretch
    out = np.clip((img - lo) / max(hi - lo, 1e-9) * 255, 0, 255)
    return np.where(valid, out, 0).astype(np.uint8)


def checkerboard(
    eo: np.ndarray, eo_valid: np.ndarray, sar_db: np.ndarray, sar_valid: np.ndarray, n: int = 8
) -> np.ndarray:
    """Alternate EO and SAR squares (n per side): a misalignment shows as broken lines at the
    square borders. SAR is lightly smoothed so speckle does not hide the structure."""
    from scipy import ndimage

    fill = float(np.nanmedian(sar_db[sar_valid][::4])) if sar_valid.any() else 0.0
    s = ndimage.gaussian_filter(np.where(sar_valid, sar_db, fill), 1.0)
    a, b = _stretch(eo, eo_valid), _stretch(s, sar_valid)
    h, w = eo.shape
    blk = max(1, min(h, w) // n)
    yy, xx = np.ogrid[0:h, 0:w]
    return np.where(((yy // blk + xx // blk) % 2) == 0, a, b)


def _render_overlay(before: np.ndarray, after: np.ndarray, title_after: str, dest: Path) -> None:
    from PIL import Image, ImageDraw

    h, w = before.shape
    canvas = Image.new("L", (2 * w + 10, h + 24), 255)
    canvas.paste(Image.fromarray(before), (0, 24))
    canvas.paste(Image.fromarray(after), (w + 10, 24))
    draw = ImageDraw.Draw(canvas)
    draw.text((4, 6), "before (EO / SAR checkerboard)", fill=0)
    draw.text((w + 14, 6), title_after, fill=0)
    with atomic_path(dest) as tmp:
        canvas.save(tmp, format="PNG", optimize=False, compress_level=3)  # grey levels: one channel


# ----------------------------------------------------------------------------- stage


def _attribution(source: SourceFiles) -> str:
    """Licence notices of the SAR and EO inputs, from the fetch stage's provenance.json."""
    prov = source.provenance
    try:
        d = read_json(prov, required=False) or {}
    except ValueError:
        log.warning("%s: not a JSON object; attribution from the provider registry only", prov)
        d = {}
    return "; ".join(attribution_lines(d, with_labels=False))


def read_geometry(source: SourceFiles) -> AcquisitionGeometry:
    """The SAR's acquisition geometry from source/sar_metadata.json (Capella extended JSON or a
    STAC item) or the view fields in provenance.json; unknown when neither has it."""
    meta = read_json(source.sar_metadata, RegistrationError, required=False)
    prov = read_json(source.provenance, RegistrationError, required=False) or {}
    try:
        return geometry_from(meta, prov.get("sar") if isinstance(prov.get("sar"), dict) else None,
                             str(source.sar_metadata))
    except GeometryError as exc:
        raise RegistrationError(str(exc)) from None


def _rounded(d: Any) -> Any:
    if isinstance(d, dict):
        return {k: _rounded(v) for k, v in d.items()}
    if isinstance(d, float):
        return round(d, 4)
    return d


def _identity_record(sar_crs: str, reason: str) -> dict[str, Any]:
    return {
        "applied": False,
        "flagged": False,
        "confidence": 0.0,
        "model": "none",
        "reason": reason,
        "sar_crs": sar_crs,
        "correction": list(IDENTITY),
        "shift_m": {"east": 0.0, "north": 0.0},
        "tie_points": [],
        "residuals_px": {},
    }


def register_region(
    region: Any, source: SourceFiles, out: RegistrationFiles, p: CoregisterParams | None = None,
    executor: Executor | None = None,
) -> dict[str, Any]:
    """Register every scene of the region on its own; write ``out`` atomically.

    Each scene gets ``scenes/ID/registration.json`` and ``overlay.png``; the region's
    ``registration.json`` summarises them (per scene: applied, flagged, confidence, shift) and its
    ``overlay.png`` is the first scene's. Returns the summary.
    """
    import shutil

    from pipeline.scenes import read_scenes

    p = p or CoregisterParams()
    scenes = read_scenes(source)
    with atomic_path(out.dir) as tmp:
        tmp.mkdir()
        t = out.at(tmp)
        # one task per scene (pipeline.execute), results in scene order
        ex = executor or local()
        done = ex.map(functools.partial(_register_one, region, t, p), scenes, f"register {region.name}",
                      lambda sc: f"scene {sc.id}", local_threads=1)  # locally one at a time: a scene has its own threads
        records = {sc.id: rec for sc, rec in zip(scenes, done)}
        summary = {
            "region": region.name,
            "scenes": {k: {f: r.get(f) for f in ("applied", "flagged", "confidence", "model", "reason", "shift_m",
                                                  "correction")} for k, r in records.items()},
            "applied": sum(bool(r["applied"]) for r in records.values()),
            "flagged": sum(bool(r["flagged"]) for r in records.values()),
            "attribution": records[scenes[0].id]["attribution"],
        }
        shutil.copyfile(t.scene(scenes[0].id).overlay, t.overlay)
        write_json(t.record, summary)
    return summary


def _register_one(region: Any, out: RegistrationFiles, p: CoregisterParams, sc: Any) -> dict[str, Any]:
    """One scene's task: register it into ``out``'s scene directory."""
    log.info("%s: registering scene %s", region.name, sc.id)
    return register_scene(region, sc.files, out.scene(sc.id), p)


def register_scene(
    region: Any, source: SourceFiles, out: RegistrationFiles, p: CoregisterParams | None = None
) -> dict[str, Any]:
    """Estimate the SAR offset of one scene and write its registration.json and overlay.png into ``out.dir``.

    Reads the scene's SAR and EO in windows on the region grid (or a coarser one,
    ``working_gsd_m``), GDAL's block cache bounded by ``gdal_cache_mb`` (its default, 5 % of
    RAM, grows with every window read); returns the record written to registration.json. The
    caller makes the directory appear atomically (the region's registration/ as a whole).
    """
    import contextlib

    p = p or CoregisterParams()
    with gdal_cache(p.gdal_cache_mb), contextlib.closing(OpenSources()) as sources:
        return _register_scene(region, source, out, p, sources)


def _register_scene(region: Any, source: SourceFiles, out: RegistrationFiles, p: CoregisterParams,
                    sources: OpenSources) -> dict[str, Any]:
    import rasterio

    t_start = time.perf_counter()
    sar_path, eo_path = source.sar, source.eo
    for f in (sar_path, eo_path):
        if not f.is_file():
            raise RegistrationError(f"{f}: missing; the register stage needs source/sar.tif and source/eo.tif")
    with rasterio.open(sar_path) as s:
        if s.crs is None:
            raise RegistrationError(f"{sar_path}: has no CRS; expected a geocoded SAR product (GEO/GEC)")
        sar_crs, sar_transform = s.crs.to_string(), s.transform
    with rasterio.open(eo_path) as e:
        if e.crs is None:
            raise RegistrationError(f"{eo_path}: has no CRS; expected a georeferenced EO image")
    geometry = read_geometry(source)
    gsd = float(region.gsd_m) if p.working_gsd_m is None else max(float(p.working_gsd_m), float(region.gsd_m))
    grid = grid_for_bbox(region.bbox, gsd)

    if not p.enabled:
        record = _identity_record(sar_crs, "registration disabled by params (coregister.enabled: false)")
        reg = None
    else:
        log.info("%s: estimating on a %dx%d grid at %.2f m", region.name, grid.width, grid.height, gsd)
        reg = estimate(file_reader(sar_path, eo_path, grid, sources=sources), grid.shape, gsd, p, geometry)
        est_corr, est_shift = map_correction(reg, grid, sar_crs)
        applied = not reg.flagged
        lonlat = [grid.pixel_to_lonlat(tp.x, tp.y) for tp in reg.tie_points]
        record = {
            "applied": applied,
            "flagged": reg.flagged,
            "confidence": round(reg.confidence, 4),
            "model": reg.model if applied else "none",
            "reason": reg.reason or "confident estimate applied",
            "sar_crs": sar_crs,
            "correction": list(est_corr) if applied else list(IDENTITY),
            "shift_m": est_shift if applied else {"east": 0.0, "north": 0.0},
            "estimate": {
                "model": reg.model,
                "correction": list(est_corr),
                "shift_m": est_shift,
                "shift_px": {"dx": reg.dx, "dy": reg.dy},
                "matrix_px": list(reg.matrix),
                "coarse": {k: (float(v) if isinstance(v, (float, np.floating)) else v) for k, v in reg.coarse.items()},
            },
            "tie_points": [
                {**tp.to_dict(), "lon": round(lo, 8), "lat": round(la, 8)}
                for tp, (lo, la) in zip(reg.tie_points, lonlat)
            ],
            "residuals_px": {k: (round(v, 4) if isinstance(v, float) else v) for k, v in reg.residuals_px.items()},
            "uncertainty_px": reg.uncertainty,
            "uncertainty_m": {k: (round(v * gsd, 4) if k.startswith("sigma_") else v)
                              for k, v in reg.uncertainty.items() if k.startswith("sigma_")},
            "checks": _rounded(reg.checks),
            "frame": reg.frame,
        }
    record.update(
        {
            "region": region.name,
            "geometry": geometry.to_dict(),
            "attribution": _attribution(source),
            "working_grid": {"crs": grid.crs, "gsd_m": gsd, "width": grid.width, "height": grid.height},
            "conventions": "shift_px: SAR content relative to EO in working-grid pixels (x right, y down); "
            "correction: Affine(*correction) * sar.transform gives the corrected SAR geotransform",
            "params": dict(sorted(dataclasses.asdict(p).items())),
        }
    )
    # overlay: a window around the most confident tile (or the frame centre), before and after
    side = int(min(p.overlay_px, grid.width, grid.height))
    best = max((tp for tp in (reg.tie_points if reg else []) if tp.inlier), key=lambda t: t.confidence, default=None)
    cx, cy = (best.x, best.y) if best else (grid.width / 2, grid.height / 2)
    r0 = int(np.clip(cy - side / 2, 0, grid.height - side))
    c0 = int(np.clip(cx - side / 2, 0, grid.width - side))
    before = file_reader(sar_path, eo_path, grid, sources=sources)(r0, c0, side, side, 1)
    if record["applied"]:
        from affine import Affine

        new_t = Affine(*record["correction"]) @ sar_transform
        moved = file_reader(sar_path, eo_path, grid, new_t, sources)(r0, c0, side, side, 1, "sar")
        after = (moved[0], moved[1], before[2], before[3])  # the EO does not move
        sm = record["shift_m"]
        title = f"after: {record['model']}, shift {sm['east']:+.2f} m E {sm['north']:+.2f} m N"
    else:
        after = before
        title = f"after: NOT applied ({'flagged' if record['flagged'] else 'disabled'})"
    out.dir.mkdir(parents=True, exist_ok=True)
    panel = checkerboard(before[2], before[3], before[0], before[1])
    _render_overlay(panel, panel if after is before else checkerboard(after[2], after[3], after[0], after[1]),
                    title, out.overlay)
    if p.record_timing:
        secs = time.perf_counter() - t_start
        mpx = grid.width * grid.height / 1e6
        record["timing"] = {
            "seconds": round(secs, 2),
            "megapixels": round(mpx, 3),
            "seconds_per_megapixel": round(secs / max(mpx, 1e-9), 3),
        }
    write_json(out.record, record)
    log.info("%s: applied=%s flagged=%s confidence=%.2f shift_m=%s (%s)", region.name, record["applied"],
             record["flagged"], record["confidence"], record["shift_m"], record["reason"])
    return record
