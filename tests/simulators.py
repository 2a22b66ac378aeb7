"""Simulated SAR/EO pairs with a KNOWN offset, for the co-registration tests and benchmark.

Test code, not pipeline code (the demo's scene physics is ``pipeline.demo.physics``): tests
import it as ``from simulators import ...`` (tests/ is on sys.path under pytest); benchmarks put
tests/ on sys.path first. ``sar_like`` makes an optical image SAR-like without moving an edge;
``write_synthetic_source`` writes such a pair as a fetched source/ folder; ``urban_scene`` /
``render_urban`` render a city with layover, radar shadow, one-sided double bounce and building
lean, so the truth is the offset of ground-level content.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import rasterio
from affine import Affine
from rasterio.warp import calculate_default_transform, reproject, transform_bounds
from scipy import ndimage


def sar_like(image: np.ndarray, rng: np.random.Generator, looks: int = 2, structural: bool = True) -> np.ndarray:
    """A SAR-like intensity (linear) from an optical image, for pairs with a known offset.

    Non-monotonic intensity mapping (contrast reversal for part of the range), strong point
    scatterers, bright lines with no optical counterpart, a few patches of changed content,
    sometimes a blur, and multiplicative gamma speckle of ``looks``. Nothing here moves an edge
    (no layover or shadow): the true offset of the pair stays exactly the one applied.
    NaN in ``image`` (outside the data) stays NaN.
    """
    nodata = ~np.isfinite(image)
    x = np.nan_to_num(image.astype(np.float64), nan=float(np.nanmedian(image)))
    lo, hi = np.percentile(x, [1, 99])
    x = np.clip((x - lo) / max(hi - lo, 1e-9), 0, 1)
    t, g = rng.uniform(0.2, 0.6), rng.uniform(0.6, 1.6)
    r = 0.05 + np.abs(x - t) ** g
    if structural:
        h, w = x.shape
        pts = rng.random(x.shape) < 0.001  # strong point scatterers
        r += 20.0 * ndimage.binary_dilation(pts, iterations=1)
        for _ in range(12):  # bright lines with no optical counterpart (fences, power lines)
            y0, x0 = rng.integers(0, h), rng.integers(0, w)
            ang, length = rng.uniform(0, np.pi), rng.integers(h // 10, h // 3)
            tt = np.linspace(0, length, 2 * length)
            yy = np.clip((y0 + tt * np.sin(ang)).astype(int), 0, h - 1)
            xx = np.clip((x0 + tt * np.cos(ang)).astype(int), 0, w - 1)
            r[yy, xx] += 3.0
        for _ in range(4):  # changed content between acquisitions (cleared or new)
            sh, sw = rng.integers(h // 15, h // 6), rng.integers(w // 15, w // 6)
            y0, x0 = rng.integers(0, h - sh), rng.integers(0, w - sw)
            r[y0 : y0 + sh, x0 : x0 + sw] = rng.uniform(0.1, 3.0)
        r = np.where(rng.random() < 0.5, r, ndimage.gaussian_filter(r, 0.7))  # different resolution
    out = r * rng.gamma(looks, 1.0 / looks, size=r.shape)
    out[nodata] = np.nan
    return out


def write_synthetic_source(
    eo: np.ndarray, transform: Any, crs: Any, offset_m: tuple[float, float], dest: str | Path,
    rng: np.random.Generator, looks: int = 2, related: bool = True, nodata_cols: int = 0,
) -> tuple[float, float, float, float]:
    """Write ``dest``/sar.tif and eo.tif, a fetched-source pair with a KNOWN map offset (tests, benchmarks).

    ``eo`` is an optical image on ``transform``/``crs`` (projected, metres). The SAR (uint16
    amplitude from :func:`sar_like`, nodata 0, the first ``nodata_cols`` columns empty as at a
    scene edge) shows a feature at P at P + ``offset_m``; with ``related=False`` it shows another
    scene (the image transposed). The EO goes to EPSG:3857 RGB with an internal mask, as the
    fetch stage's tiles do. Returns the lon/lat bbox just inside the pair, for the region AOI.
    """
    dest = Path(dest)
    dest.mkdir(parents=True, exist_ok=True)
    h, w = eo.shape
    scene = eo if related else eo.T[::-1].copy()
    amp = np.sqrt(sar_like(scene, rng, looks))
    amp = np.clip(amp / np.percentile(amp, 99) * 3000, 1, 65535).astype("uint16")
    amp[:, :nodata_cols] = 0
    with rasterio.open(dest / "sar.tif", "w", driver="GTiff", width=w, height=h, count=1, dtype="uint16", crs=crs,
                       transform=Affine.translation(*offset_m) @ transform, nodata=0) as dst:
        dst.write(amp, 1)
    bounds = (transform.c, transform.f + transform.e * h, transform.c + transform.a * w, transform.f)
    t3857, w2, h2 = calculate_default_transform(crs, "EPSG:3857", w, h, *bounds)
    grey = np.zeros((h2, w2), "uint8")
    reproject(np.clip(eo / 8, 1, 255).astype("uint8"), grey, src_transform=transform, src_crs=crs,
              dst_transform=t3857, dst_crs="EPSG:3857", src_nodata=0, dst_nodata=0)
    with rasterio.Env(GDAL_TIFF_INTERNAL_MASK=True):
        with rasterio.open(dest / "eo.tif", "w", driver="GTiff", width=w2, height=h2, count=3, dtype="uint8",
                           crs="EPSG:3857", transform=t3857) as dst:
            dst.write(np.stack([grey] * 3))
            dst.write_mask(np.where(grey > 0, 255, 0).astype("uint8"))
    w4, s4, e4, n4 = transform_bounds(crs, "EPSG:4326", *bounds)
    pad = 0.0002
    return (w4 + pad, s4 + pad, e4 - pad, n4 - pad)


# ----------------------------------------------------------------------------- realistic urban geometry
#
# ``sar_like`` moves no edge. Real sub-metre SAR/EO pairs differ GEOMETRICALLY: elevated
# structure is laid over toward the SAR sensor, radar shadow falls behind buildings, the
# wall-ground corner facing the sensor makes a one-sided double-bounce line, and the optical
# image leans buildings away from its own (off-nadir) sensor and casts sun shadows. The scene
# below is made of analytic primitives (streets, parcels, rectangular buildings of known
# height), rendered separately for each sensor, so the TRUE offset is exact: it is the offset of
# GROUND-LEVEL content (what terrain geocoding gets wrong and a registration must correct).
# Layover and lean of elevated structure are not misregistration and are not part of the truth.

# (EO grey level, SAR sigma0 dB) per ground type: asphalt, grass, bare soil, concrete, trees, water
_GROUND = np.array([(70, -20.0), (115, -12.0), (150, -14.0), (175, -16.0), (55, -7.0), (40, -25.0)])


@dataclass(frozen=True)
class UrbanScene:
    """Ground plan and buildings, in pixel coordinates (x = column, y = row, pixel centres at integers)."""

    n: int
    pixel_m: float
    xs: np.ndarray  # street centre lines x = const
    ys: np.ndarray  # street centre lines y = const
    street_half_px: float
    parcels: np.ndarray  # (len(ys)+1, len(xs)+1, 2): ground type of the two halves of each block
    split: np.ndarray  # (len(ys)+1, len(xs)+1): where a block splits into its two parcels (0..1 along x)
    buildings: np.ndarray  # (k, 5): x0, y0, x1, y1, height_m


def urban_scene(rng: np.random.Generator, n: int = 768, pixel_m: float = 0.5, heights_m: tuple[float, float] = (5, 60),
                density: float = 0.5) -> UrbanScene:
    """A random city block plan: irregular street grid, parcels of different ground types (the
    ground-level edges a registration should lock onto) and rectangular buildings of heights
    drawn uniformly in ``heights_m``, covering about ``density`` of each block's building lots."""
    def lines() -> np.ndarray:
        pos, out = rng.uniform(-40, 20), []
        while pos < n + 40:
            out.append(pos)
            pos += rng.uniform(70, 180)
        return np.array(out)

    xs, ys = lines(), lines()
    half = float(rng.uniform(4, 8))
    nb = (len(ys) + 1, len(xs) + 1)
    parcels = rng.integers(0, len(_GROUND) - 1, (*nb, 2))
    parcels[rng.random(nb) < 0.05, 0] = len(_GROUND) - 1  # a few ponds
    split = rng.uniform(0.25, 0.75, nb)
    bx = np.r_[-1e4, xs, 1e4]
    by = np.r_[-1e4, ys, 1e4]
    bld = []
    for i in range(1, len(by) - 2):
        for j in range(1, len(bx) - 2):
            x0, x1, y0, y1 = bx[j] + half + 3, bx[j + 1] - half - 3, by[i] + half + 3, by[i + 1] - half - 3
            if x1 - x0 < 20 or y1 - y0 < 20 or rng.random() > density + 0.3:
                continue
            for _ in range(int(rng.integers(1, 4))):
                w, h = rng.uniform(16, max(17, (x1 - x0) * density)), rng.uniform(16, max(17, (y1 - y0) * density))
                w, h = min(w, x1 - x0), min(h, y1 - y0)
                cx, cy = rng.uniform(x0, x1 - w), rng.uniform(y0, y1 - h)
                bld.append((cx, cy, cx + w, cy + h, rng.uniform(*heights_m)))
    return UrbanScene(n, pixel_m, xs, ys, half, parcels, split, np.array(bld).reshape(-1, 5))


def _in_sweep(x: np.ndarray, y: np.ndarray, r: np.ndarray, v: tuple[float, float]) -> np.ndarray:
    """Points inside rectangle r = (x0, y0, x1, y1) swept along v (the Minkowski sum R + [0,1] v)."""
    lo, hi = np.zeros(x.shape), np.ones(x.shape)
    for p, a, b, d in ((x, r[0], r[2], v[0]), (y, r[1], r[3], v[1])):
        if abs(d) < 1e-9:
            inside = (p >= a) & (p <= b)
            hi = np.where(inside, hi, -1.0)
        else:
            t1, t2 = (p - b) / d, (p - a) / d
            lo, hi = np.maximum(lo, np.minimum(t1, t2)), np.minimum(hi, np.maximum(t1, t2))
    return lo <= hi


def _unit(azimuth_deg: float) -> tuple[float, float]:
    """(x, y) image step of a ground direction given clockwise from north (north up)."""
    a = math.radians(azimuth_deg)
    return math.sin(a), -math.cos(a)


@dataclass(frozen=True)
class UrbanViews:
    """SAR and EO viewing geometry. Azimuths are clockwise from north, of the direction FROM the
    scene TO the sensor (or the sun)."""

    sar_look_azimuth_deg: float = 80.0
    incidence_deg: float = 35.0
    eo_azimuth_deg: float = 200.0
    eo_off_nadir_deg: float = 15.0
    sun_azimuth_deg: float = 160.0
    sun_elevation_deg: float = 45.0

    def sar_layover_px(self, h_m: float, pixel_m: float) -> tuple[float, float]:
        """Ground-range displacement of a point h_m up: h / tan(incidence), toward the sensor."""
        u, L = _unit(self.sar_look_azimuth_deg), h_m / math.tan(math.radians(self.incidence_deg)) / pixel_m
        return u[0] * L, u[1] * L

    def sar_shadow_px(self, h_m: float, pixel_m: float) -> tuple[float, float]:
        """Radar shadow behind a wall of h_m: h * tan(incidence) on the ground, away from the sensor."""
        u, L = _unit(self.sar_look_azimuth_deg), h_m * math.tan(math.radians(self.incidence_deg)) / pixel_m
        return -u[0] * L, -u[1] * L


def _ground(scene: UrbanScene, x: np.ndarray, y: np.ndarray, col: int, noise: np.ndarray, amp: float) -> np.ndarray:
    """Ground-level value (column ``col`` of _GROUND) at points (x, y): parcels, streets, texture."""
    i, j = np.searchsorted(scene.ys, y), np.searchsorted(scene.xs, x)
    bx = np.r_[-1e4, scene.xs, 1e4]
    frac = (x - bx[j]) / np.maximum(bx[j + 1] - bx[j], 1e-9)
    half = (frac > scene.split[i, j]).astype(int)
    g = _GROUND[scene.parcels[i, j, half], col].astype(np.float64)
    dist = np.full(x.shape, np.inf)
    for lines, p in ((scene.xs, x), (scene.ys, y)):
        for v in lines:
            dist = np.minimum(dist, np.abs(p - v))
    g = np.where(dist < scene.street_half_px, _GROUND[0, col], g)
    kerb = (dist >= scene.street_half_px) & (dist < scene.street_half_px + 2)  # pavement strip
    g = np.where(kerb, _GROUND[3, col], g)
    tex = ndimage.map_coordinates(noise, [y, x], order=1, mode="reflect")
    return g + amp * tex


URBAN_EFFECTS = frozenset({"layover", "radar_shadow", "double_bounce", "eo_lean", "sun_shadow"})


def render_urban(scene: UrbanScene, views: UrbanViews, offset_px: tuple[float, float], rng: np.random.Generator,
                 looks: float = 2.0, supersample: int = 2, effects: frozenset[str] = URBAN_EFFECTS
                 ) -> tuple[np.ndarray, np.ndarray]:
    """(SAR dB, EO grey) of ``scene`` on the same n x n grid; the SAR's GROUND-LEVEL content is
    moved by ``offset_px`` (dx, dy): ground at EO (x, y) shows in the SAR at (x + dx, y + dy),
    roofs in addition by their layover. Nothing else is offset. ``effects`` (a subset of
    URBAN_EFFECTS) switches the geometric effects on, to measure what each one does."""
    n, k, pm = scene.n, supersample, scene.pixel_m
    c = (np.arange(n * k) + 0.5) / k - 0.5
    X, Y = np.meshgrid(c, c)
    dx, dy = offset_px
    eo_noise, sar_noise = (ndimage.gaussian_filter(rng.standard_normal((n, n)), s) for s in (1.5, 2.0))
    eo_noise /= eo_noise.std()
    sar_noise /= sar_noise.std()
    nb = len(scene.buildings)
    rtone, wtone = rng.uniform(60, 220, nb), rng.uniform(40, 160, nb)
    rsig = 10 ** (rng.uniform(-10, -3, nb) / 10)
    wsig = 10 ** (rng.uniform(-8, -2, nb) / 10)

    def crop(r: np.ndarray, *moves: tuple[float, float]) -> tuple[slice, slice]:
        """Sample-grid window holding rectangle r and r moved by each of ``moves`` (+ margin)."""
        xs = [r[0], r[2]] + [r[0] + m[0] for m in moves] + [r[2] + m[0] for m in moves]
        ys = [r[1], r[3]] + [r[1] + m[1] for m in moves] + [r[3] + m[1] for m in moves]
        def index(v: float, up: bool) -> int:
            return int(np.clip((math.ceil if up else math.floor)((v + (2 if up else -2) + 0.5) * k), 0, n * k))

        return slice(index(min(ys), False), index(max(ys), True)), slice(index(min(xs), False), index(max(xs), True))

    # --- EO: ground, sun shadows, then buildings leaning away from the EO sensor (taller last)
    eo = _ground(scene, X, Y, 0, eo_noise, 8.0)
    sun, ev = _unit(views.sun_azimuth_deg), _unit(views.eo_azimuth_deg)
    shade = np.zeros(X.shape, bool)
    for b in scene.buildings:
        L = b[4] / math.tan(math.radians(views.sun_elevation_deg)) / pm * ("sun_shadow" in effects)
        v = (-sun[0] * L, -sun[1] * L)
        sl = crop(b, v)
        shade[sl] |= _in_sweep(X[sl], Y[sl], b[:4], v)
    eo = np.where(shade, 0.4 * eo, eo)
    for q in np.argsort(scene.buildings[:, 4]):
        b = scene.buildings[q]
        L = b[4] * math.tan(math.radians(views.eo_off_nadir_deg)) / pm * ("eo_lean" in effects)
        lean = (-ev[0] * L, -ev[1] * L)
        sl = crop(b, lean)
        x, y = X[sl], Y[sl]
        eo[sl] = np.where(_in_sweep(x, y, b[:4], lean), wtone[q], eo[sl])
        eo[sl] = np.where(_in_sweep(x - lean[0], y - lean[1], b[:4], (0.0, 0.0)), rtone[q], eo[sl])
    # --- SAR: ground (hidden under footprints and in radar shadow) plus laid-over walls and
    # roofs plus double bounce at the sensor-facing wall feet; all at ground offset + layover
    Xg, Yg = X - dx, Y - dy
    sar_g = 10 ** (_ground(scene, Xg, Yg, 1, sar_noise, 1.0) / 10)
    u = _unit(views.sar_look_azimuth_deg)
    hidden = np.zeros(X.shape, bool)
    over = np.zeros(X.shape)
    for q, b in enumerate(scene.buildings):
        r = b[:4]
        lay = views.sar_layover_px(b[4] * ("layover" in effects), pm)
        shw = views.sar_shadow_px(b[4] * ("radar_shadow" in effects), pm)
        sl = crop(r + np.r_[dx, dy, dx, dy], lay, shw)
        x, y = Xg[sl], Yg[sl]
        foot = _in_sweep(x, y, r, (0.0, 0.0))
        hidden[sl] |= _in_sweep(x, y, r, shw)
        over[sl] += wsig[q] * (_in_sweep(x, y, r, lay) & ~foot)
        over[sl] += rsig[q] * _in_sweep(x - lay[0], y - lay[1], r, (0.0, 0.0))
        # double bounce: a 1 px line on each sensor-facing wall foot, brightest when facing the sensor
        if "double_bounce" not in effects:
            continue
        if abs(u[0]) > 1e-3:
            xw = r[2] if u[0] > 0 else r[0]
            over[sl] += 30.0 * u[0] ** 2 * _in_sweep(x, y, np.array([xw - 0.5, r[1], xw + 0.5, r[3]]), (0.0, 0.0))
        if abs(u[1]) > 1e-3:
            yw = r[3] if u[1] > 0 else r[1]
            over[sl] += 30.0 * u[1] ** 2 * _in_sweep(x, y, np.array([r[0], yw - 0.5, r[2], yw + 0.5]), (0.0, 0.0))
    sar = np.where(hidden, 10 ** -2.8, sar_g) + over
    blk = (n, k, n, k)
    eo_px, sar_px = eo.reshape(blk).mean((1, 3)), sar.reshape(blk).mean((1, 3))
    sar_px = sar_px * rng.gamma(looks, 1.0 / looks, sar_px.shape)
    eo_px = eo_px + rng.normal(0, 2.0, eo_px.shape)
    return 10 * np.log10(np.maximum(sar_px, 1e-6)), eo_px


# ----------------------------------------------------------------------------- layover on a real image
#
# ``sar_like`` keeps every edge where it is. In real sub-metre SAR the BRIGHT scatterers (facades,
# double bounce, roof edges, poles) are elevated or sit on walls: layover moves them toward the
# sensor by h / tan(incidence), so they disagree with the ground-level structure by a few pixels
# along range. ``layover_sar`` makes that from a real optical image: its strongest edges (in a
# city: building outlines) and local bright spots become bright scatterers, displaced toward the
# sensor by ``disp_px`` (one value for all, or one per object, as from buildings of different
# heights), added to a SAR-like rendering of the ground, then speckled.


def bright_objects(eo: np.ndarray, share: float = 0.08, block: int = 48) -> tuple[np.ndarray, int]:
    """Labelled bright-scatterer objects of an optical image: the ``share`` of pixels with the
    strongest edges, as connected pieces, split on a ``block`` px lattice so one piece stands for
    one building (a whole street grid of edges would otherwise be one object). 0 = none."""
    x = np.nan_to_num(eo.astype(np.float64), nan=float(np.nanmedian(eo)))
    g = ndimage.gaussian_gradient_magnitude(x, 1.0)
    mask = g > np.percentile(g, 100 * (1 - share))
    lab, n = ndimage.label(mask)
    h, w = eo.shape
    cell = (np.arange(h)[:, None] // block) * ((w + block - 1) // block) + np.arange(w)[None, :] // block
    key = np.where(mask, lab.astype(np.int64) * (cell.max() + 1) + cell, 0)
    uniq, inv = np.unique(key, return_inverse=True)
    return inv.reshape(h, w).astype(np.int32), len(uniq) - 1


def layover_sar(eo: np.ndarray, rng: np.random.Generator, offset_px: tuple[float, float], toward_sensor: tuple[float, float],
                disp_px: float | tuple[float, float], looks: int = 2, gain_db: tuple[float, float] = (3.0, 12.0)
                ) -> np.ndarray:
    """SAR-like linear intensity of ``eo`` whose GROUND-LEVEL content is moved by ``offset_px``
    (dx, dy) and whose bright scatterers are moved in addition by their layover: ``disp_px``
    pixels along ``toward_sensor`` (a unit (x, y) step), one number for every object or a
    (lo, hi) range drawn per object (uniform, as heights are). Each object is ``gain_db`` dB
    (drawn per object) above the median ground. The truth is ``offset_px``."""
    lab, n = bright_objects(eo)
    moved = ndimage.shift(eo.astype(np.float64), (offset_px[1], offset_px[0]), order=3, mode="constant", cval=np.nan)
    ground = sar_like(moved, rng, looks=10**6)  # structure without speckle; speckle comes last
    nodata = ~np.isfinite(ground)
    base = float(np.nanmedian(ground))
    gain = np.r_[0.0, base * 10 ** (rng.uniform(*gain_db, n) / 10)]
    d = (np.full(n, float(disp_px)) if np.isscalar(disp_px) else rng.uniform(*disp_px, n))
    d = np.r_[0.0, d]
    bins = np.round(d * 4) / 4  # shift objects in groups of equal displacement (0.25 px)
    bright = np.zeros(eo.shape)
    for b in np.unique(bins[1:]):
        sel = np.isin(lab, np.flatnonzero(bins == b)) & (lab > 0)
        layer = np.where(sel, gain[lab], 0.0)
        sx, sy = offset_px[0] + b * toward_sensor[0], offset_px[1] + b * toward_sensor[1]
        bright += ndimage.shift(layer, (sy, sx), order=1, mode="constant", cval=0.0)
    out = (np.nan_to_num(ground, nan=0.0) + bright) * rng.gamma(looks, 1.0 / looks, size=eo.shape)
    out[nodata] = np.nan
    return out
