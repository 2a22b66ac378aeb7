"""Scene simulation: the offline demo's class map -> SAR sigma0 and EO RGB, and test pairs.

Pure functions on numpy arrays (no I/O, except ``write_synthetic_source``, which writes a
co-registration test pair as a fetched source/ folder), so the physics can be tested on a
hand-made class map and the demo stage only wires them to real OSM. The co-registration tests
and benchmark take their pairs with a known offset from here too (``sar_like``: an optical
image made SAR-like; ``urban_scene``/``render_urban``: layover, radar shadow, one-sided double
bounce, building lean). The models are deliberately simple but
have the properties the rest of the pipeline must cope with:

- SAR: a mean sigma0 per class (dB table below, X-band HH at ~35-40 deg incidence), a mild
  low-frequency texture, bright double-bounce edges on the sensor-facing side of buildings and
  radar shadow behind them, then gamma-distributed multiplicative speckle (``looks`` looks)
  and UInt16 amplitude quantisation ``DN = round(sqrt(sigma0) / scale_factor)``, the inverse
  of Capella's ``sigma0 = (scale_factor * DN)**2``.
- EO: a colour per class with class-specific texture (noise at two scales, furrows on
  cropland, tone per roof), sun shadows behind buildings and a slight optical blur.

Class ids follow BRIEF.md section 3 (``pipeline/legend.yaml``). Random numbers come only from
the ``numpy.random.Generator`` passed in, so a seed fixes every pixel.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from scipy import ndimage

N_CLASSES = 25
BUILDING = 1

# Mean sigma0 (dB) per class id, X-band HH, moderate incidence. Rough literature values:
# calm water is near the noise floor, paved surfaces are specular and dark, vegetation volume
# scattering sits around -8..-13 dB, roofs and built-up clutter are bright.
SIGMA0_DB: dict[int, float] = {
    0: -11.0,  # background / unmapped (mixed clutter)
    1: 0.0,  # building roof
    2: -9.0,  # residential zone (yards, hedges, cars)
    3: -7.0,  # commercial / retail
    4: -6.0,  # industrial
    5: -8.0,  # institutional
    6: -13.0,  # construction / brownfield
    7: -17.0,  # motorway / trunk
    8: -18.0,  # main road
    9: -17.0,  # local road
    10: -15.0,  # path / track
    11: -9.0,  # railway (ballast and rails)
    12: -19.0,  # parking / paved
    13: -21.0,  # airport paved
    14: -11.0,  # park / urban green
    15: -14.0,  # sports pitch
    16: -12.0,  # grass / meadow
    17: -13.0,  # cropland
    18: -9.0,  # orchard / vineyard
    19: -8.0,  # forest
    20: -10.0,  # scrub / heath
    21: -15.0,  # wetland
    22: -25.0,  # water
    23: -19.0,  # beach / sand
    24: -12.0,  # bare rock / quarry
}

# Standard deviation (dB) of the smooth per-pixel texture inside a class.
SAR_TEXTURE_DB: dict[int, float] = {1: 2.0, 4: 1.5, 3: 1.5, 17: 1.0, 18: 1.5, 19: 1.5, 20: 1.2, 22: 0.3}
SAR_TEXTURE_DEFAULT_DB = 0.7

# EO base colour (RGB) and texture strength (std of DN) per class: an aerial-photo look.
EO_COLOUR: dict[int, tuple[int, int, int]] = {
    0: (118, 116, 106),
    1: (128, 124, 120),
    2: (132, 132, 116),
    3: (150, 146, 140),
    4: (152, 148, 138),
    5: (138, 136, 122),
    6: (168, 152, 124),
    7: (92, 92, 96),
    8: (88, 88, 92),
    9: (104, 104, 104),
    10: (164, 154, 136),
    11: (108, 98, 88),
    12: (118, 118, 116),
    13: (128, 128, 126),
    14: (84, 120, 60),
    15: (88, 142, 70),
    16: (116, 142, 76),
    17: (156, 148, 98),
    18: (90, 116, 62),
    19: (46, 74, 40),
    20: (96, 106, 66),
    21: (84, 96, 72),
    22: (38, 58, 74),
    23: (212, 200, 170),
    24: (150, 146, 140),
}
EO_TEXTURE: dict[int, float] = {19: 22.0, 20: 16.0, 18: 16.0, 14: 12.0, 16: 10.0, 17: 8.0, 2: 14.0, 0: 12.0, 22: 3.0}
EO_TEXTURE_DEFAULT = 6.0
ROOF_TONES = np.array(
    [(96, 94, 92), (128, 124, 120), (150, 86, 70), (176, 172, 166), (70, 72, 78), (120, 108, 96)], np.float32
)


class SimulationError(ValueError):
    """A class map or parameter the simulation cannot use."""


def _check_classes(classes: np.ndarray) -> np.ndarray:
    a = np.asarray(classes)
    if a.ndim != 2 or a.dtype != np.uint8:
        raise SimulationError(f"class map: expected a 2-D uint8 array, got {a.ndim}-D {a.dtype}")
    if a.size and int(a.max()) >= N_CLASSES:
        raise SimulationError(f"class map: class id {int(a.max())} is outside 0..{N_CLASSES - 1}")
    return a


def _lut(table: dict[int, float], default: float) -> np.ndarray:
    lut = np.full(N_CLASSES, default, np.float32)
    for k, v in table.items():
        lut[k] = v
    return lut


def toward_sensor(range_azimuth_deg: float) -> tuple[float, float]:
    """Unit (drow, dcol) step toward the sensor in a north-up image.

    ``range_azimuth_deg`` is the ground-range direction (away from the sensor), clockwise
    from north; Capella looks left, so an ascending pass (heading ~350 deg) has ~260 deg.
    """
    phi = math.radians(range_azimuth_deg)
    return (math.cos(phi), -math.sin(phi))


def _read_offset(mask: np.ndarray, dr: int, dc: int) -> np.ndarray:
    """out[r, c] = mask[r + dr, c + dc], False outside the array."""
    h, w = mask.shape
    out = np.zeros_like(mask)
    if abs(dr) >= h or abs(dc) >= w:
        return out
    out[max(0, -dr) : h - max(0, dr), max(0, -dc) : w - max(0, dc)] = mask[
        max(0, dr) : h - max(0, -dr), max(0, dc) : w - max(0, -dc)
    ]
    return out


def any_along(mask: np.ndarray, step: tuple[float, float], length_px: float) -> np.ndarray:
    """True where ``mask`` holds at any of the pixels 1..length_px steps along ``step``."""
    out = np.zeros_like(mask, dtype=bool)
    seen: set[tuple[int, int]] = set()
    for s in range(1, max(1, round(length_px)) + 1):
        off = (round(s * step[0]), round(s * step[1]))
        if off in seen or off == (0, 0):
            continue
        seen.add(off)
        out |= _read_offset(mask, *off)
    return out


def edges_and_shadow(
    building: np.ndarray, step: tuple[float, float], edge_px: float, shadow_px: float
) -> tuple[np.ndarray, np.ndarray]:
    """Building pixels facing ``step`` (within edge_px of the outline) and ground behind them.

    With ``step`` pointing at the sensor, the first is the double-bounce / layover edge and the
    second the radar shadow; pointing at the sun, the second is the sun shadow.
    """
    b = np.asarray(building, bool)
    edge = b & any_along(~b, step, edge_px)
    shadow = ~b & any_along(b, step, shadow_px)
    return edge, shadow


def smooth_noise(rng: np.random.Generator, shape: tuple[int, int], sigma_px: float) -> np.ndarray:
    """Zero-mean, unit-std, spatially correlated float32 noise (Gaussian-filtered white noise)."""
    n = rng.standard_normal(shape, dtype=np.float32)
    if sigma_px > 0:
        n = ndimage.gaussian_filter(n, sigma_px, mode="reflect")
    std = float(n.std()) or 1.0
    n /= np.float32(std)
    return n


@dataclass(frozen=True)
class SarGeometry:
    """Viewing geometry and building model of the simulated collect."""

    pixel_m: float = 0.5
    range_azimuth_deg: float = 260.0
    incidence_deg: float = 38.0
    building_height_m: float = 12.0
    edge_m: float = 1.0
    edge_gain_db: float = 12.0
    shadow_db: float = -24.0
    texture_m: float = 2.0

    @property
    def shadow_px(self) -> float:
        """Ground length of the radar shadow behind a building: h * tan(incidence)."""
        return self.building_height_m * math.tan(math.radians(self.incidence_deg)) / self.pixel_m


@dataclass(frozen=True)
class SarScene:
    """Noise-free mean sigma0 (linear power) and where the building effects were applied."""

    sigma0: np.ndarray  # float32 linear
    edge: np.ndarray  # bool: double-bounce edges
    shadow: np.ndarray  # bool: radar shadow


def mean_sigma0(classes: np.ndarray, geometry: SarGeometry, rng: np.random.Generator) -> SarScene:
    """The expected sigma0 of every pixel (before speckle): class mean, texture, edges, shadow."""
    c = _check_classes(classes)
    db = _lut(SIGMA0_DB, -11.0)[c]
    tex = _lut(SAR_TEXTURE_DB, SAR_TEXTURE_DEFAULT_DB)[c]
    db += tex * smooth_noise(rng, c.shape, geometry.texture_m / geometry.pixel_m)
    step = toward_sensor(geometry.range_azimuth_deg)
    edge, shadow = edges_and_shadow(c == BUILDING, step, geometry.edge_m / geometry.pixel_m, geometry.shadow_px)
    db[edge] = SIGMA0_DB[BUILDING] + geometry.edge_gain_db
    db[shadow] = geometry.shadow_db
    return SarScene(np.power(np.float32(10.0), db / np.float32(10.0)).astype(np.float32), edge, shadow)


def speckle(sigma0: np.ndarray, looks: float, rng: np.random.Generator) -> np.ndarray:
    """Multiplicative fully-developed speckle: intensity x Gamma(L, 1/L) (mean 1, var 1/L)."""
    if not looks > 0:
        raise SimulationError(f"looks: {looks!r} must be positive")
    g = rng.gamma(looks, 1.0 / looks, size=sigma0.shape).astype(np.float32)
    return (np.asarray(sigma0, np.float32) * g).astype(np.float32)


def sigma0_to_dn(sigma0: np.ndarray, scale_factor: float, valid: np.ndarray | None = None) -> np.ndarray:
    """UInt16 amplitude DN = round(sqrt(sigma0) / scale_factor), 1..65535 inside, 0 (nodata) outside."""
    if not (scale_factor > 0 and math.isfinite(scale_factor)):
        raise SimulationError(f"scale_factor: {scale_factor!r} must be a positive finite number")
    amp = np.sqrt(np.asarray(sigma0, np.float64)) / scale_factor
    dn = np.clip(np.rint(amp), 1, 65535).astype(np.uint16)
    if valid is not None:
        dn[~np.asarray(valid, bool)] = 0
    return dn


def _rotated_rect(shape: tuple[int, int], rotation_deg: float, inset_px: float) -> tuple[float, float]:
    """Width and height of the largest rectangle rotated by ``rotation_deg`` inside the inset array."""
    h, w = shape
    t = math.radians(abs(rotation_deg) % 90)
    cos_t, sin_t = math.cos(t), math.sin(t)
    big_w, big_h = w - 2 * inset_px, h - 2 * inset_px
    det = cos_t * cos_t - sin_t * sin_t
    if abs(det) < 1e-6:
        raise SimulationError(f"footprint rotation {rotation_deg} deg: must not be close to 45 deg")
    # Solve rw*cos + rh*sin = W, rw*sin + rh*cos = H for the rotated rectangle touching all sides.
    rw = (big_w * cos_t - big_h * sin_t) / det
    rh = (big_h * cos_t - big_w * sin_t) / det
    if rw <= 0 or rh <= 0:
        raise SimulationError(f"footprint rotation {rotation_deg} deg is too large for a {w}x{h} scene")
    return rw, rh


def footprint_corners(shape: tuple[int, int], rotation_deg: float, inset_px: float = 0.0) -> list[tuple[float, float]]:
    """(col, row) pixel coordinates of the rotated footprint's corners, closed ring order."""
    h, w = shape
    rw, rh = _rotated_rect(shape, rotation_deg, inset_px)
    a = math.radians(rotation_deg)
    out = []
    for u, v in ((-rw / 2, -rh / 2), (rw / 2, -rh / 2), (rw / 2, rh / 2), (-rw / 2, rh / 2), (-rw / 2, -rh / 2)):
        out.append((w / 2 + u * math.cos(a) - v * math.sin(a), h / 2 + u * math.sin(a) + v * math.cos(a)))
    return out


def footprint_mask(
    shape: tuple[int, int], rotation_deg: float, inset_px: float = 0.0, wobble_px: float = 0.0
) -> np.ndarray:
    """A rectangle rotated by ``rotation_deg`` that fits inside the array, edges wobbling inwards a little.

    Real GEO scenes are strips along the orbit, not axis-aligned in UTM; their corners leave
    nodata wedges that every later stage must handle. The mask lies inside ``footprint_corners``.
    """
    h, w = shape
    rw, rh = _rotated_rect(shape, rotation_deg, inset_px)
    rows, cols = np.mgrid[0:h, 0:w].astype(np.float32)
    y, x = rows + 0.5 - h / 2, cols + 0.5 - w / 2
    a = math.radians(rotation_deg)
    u = x * math.cos(a) + y * math.sin(a)
    v = -x * math.sin(a) + y * math.cos(a)
    wob_u = wobble_px * (np.sin(v / 37.0) + 0.5 * np.sin(v / 11.0 + 1.3))
    wob_v = wobble_px * (np.sin(u / 41.0 + 0.7) + 0.5 * np.sin(u / 13.0))
    return (np.abs(u) < rw / 2 - 1.5 * wobble_px + wob_u) & (np.abs(v) < rh / 2 - 1.5 * wobble_px + wob_v)


@dataclass(frozen=True)
class EoLook:
    """Illumination and optics of the simulated aerial/satellite image."""

    pixel_m: float = 0.3
    sun_azimuth_deg: float = 200.0
    sun_elevation_deg: float = 40.0
    building_height_m: float = 12.0
    shadow_factor: float = 0.55
    blur_px: float = 0.7
    furrow_period_m: float = 3.0


def eo_rgb(classes: np.ndarray, look: EoLook, rng: np.random.Generator) -> np.ndarray:
    """(H, W, 3) uint8 RGB rendering of a class map, with per-class texture and sun shadows."""
    c = _check_classes(classes)
    h, w = c.shape
    colour = np.zeros((N_CLASSES, 3), np.float32)
    for k in range(N_CLASSES):
        colour[k] = EO_COLOUR.get(k, EO_COLOUR[0])
    rgb = colour[c]  # (h, w, 3) float32
    # One tone per roof: label connected buildings and draw a palette entry per component.
    roofs, n_roofs = ndimage.label(c == BUILDING)
    if n_roofs:
        tones = ROOF_TONES[rng.integers(0, len(ROOF_TONES), size=n_roofs + 1)]
        rgb[roofs > 0] = tones[roofs[roofs > 0]]
    amp = _lut(EO_TEXTURE, EO_TEXTURE_DEFAULT)[c]
    fine = smooth_noise(rng, (h, w), 1.0 / look.pixel_m * 0.4)
    coarse = smooth_noise(rng, (h, w), 6.0 / look.pixel_m)
    tex = amp * (0.7 * fine + 0.5 * coarse)
    # Furrows on cropland: a stripe pattern at a fixed bearing.
    crop = c == 17
    if crop.any():
        rows, cols = np.nonzero(crop)
        phase = (rows * 0.5 + cols * 0.866) * (look.pixel_m * 2 * math.pi / look.furrow_period_m)
        tex[rows, cols] += 10.0 * np.sin(phase).astype(np.float32)
    rgb += tex[..., None]
    sun = math.radians(look.sun_azimuth_deg)
    to_sun = (-math.cos(sun), math.sin(sun))  # (drow, dcol) toward the sun
    shadow_px = look.building_height_m / math.tan(math.radians(look.sun_elevation_deg)) / look.pixel_m
    _, shadow = edges_and_shadow(c == BUILDING, to_sun, 1, shadow_px)
    rgb[shadow] *= np.float32(look.shadow_factor)
    if look.blur_px > 0:
        for b in range(3):
            rgb[..., b] = ndimage.gaussian_filter(rgb[..., b], look.blur_px, mode="nearest")
    return np.clip(np.rint(rgb), 0, 255).astype(np.uint8)


# ----------------------------------------------------------------------------- co-registration test pairs
# Pairs with a known offset for the co-registration tests and benchmark (pipeline.coregister).


def sar_like(image: np.ndarray, rng: np.random.Generator, looks: int = 2, structural: bool = True) -> np.ndarray:
    """A SAR-like intensity (linear) from an optical image, for pairs with a known offset.

    Non-monotonic intensity mapping (contrast reversal for part of the range), strong point
    scatterers, bright lines with no optical counterpart, a few patches of changed content,
    sometimes a blur, and multiplicative gamma speckle of ``looks``. Nothing here moves an edge
    (no layover or shadow): the true offset of the pair stays exactly the one applied.
    NaN in ``image`` (outside the data) stays NaN.
    """
    from scipy import ndimage

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
    import rasterio
    from affine import Affine
    from rasterio.warp import calculate_default_transform, reproject, transform_bounds

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
    from scipy import ndimage

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
    from scipy import ndimage

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
