"""The demo's scene physics: a land-cover class map -> SAR sigma0 and EO RGB.

Pure functions on numpy arrays (no I/O), so the physics can be tested on a hand-made class map
and the demo stage only wires them to real OSM. The models are deliberately simple but have the
properties the rest of the pipeline must cope with:

- SAR: a mean sigma0 per class (dB table below, X-band HH at ~35-40 deg incidence; VV differs
  by :data:`VV_MINUS_HH_DB`), a mild low-frequency texture, bright double-bounce edges on the
  sensor-facing side of buildings and radar shadow behind them, then gamma-distributed
  multiplicative speckle (``looks`` looks) and amplitude quantisation
  ``DN = round(sqrt(sigma0) / scale_factor)``, the inverse of Capella's
  ``sigma0 = (scale_factor * DN)**2`` (UInt16; Umbra's uint8 display products saturate at 255).
- EO: a colour per class with class-specific texture (noise at two scales, furrows on
  cropland, tone per roof), sun shadows behind buildings and a slight optical blur.

Class ids are those of ``pipeline/legend.yaml``. Random numbers come only from the
``numpy.random.Generator`` passed in, so a seed fixes every pixel. The co-registration test
pairs (``sar_like``, the urban scene renderer) are test code: ``tests/simulators.py``.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

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

# VV minus HH (dB) at X band where the two differ: small-roughness (Bragg-like) surfaces such as
# water, wet ground and smooth pavement return more in VV; a dihedral (double bounce) returns less.
VV_MINUS_HH_DB: dict[int, float] = {22: 5.0, 21: 2.0, 12: 1.0, 13: 1.0, 7: 1.0, 8: 1.0, 9: 1.0, 17: 1.0, 16: 0.5}
VV_EDGE_LOSS_DB = 5.0  # double bounce: VV this much below HH
POLARIZATIONS = ("HH", "VV")

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
    polarization: str = "HH"
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
    if geometry.polarization not in POLARIZATIONS:
        raise SimulationError(f"polarization {geometry.polarization!r}: expected one of {', '.join(POLARIZATIONS)}")
    vv = geometry.polarization == "VV"
    db = _lut(SIGMA0_DB, -11.0)[c]
    if vv:
        db += _lut(VV_MINUS_HH_DB, 0.0)[c]
    tex = _lut(SAR_TEXTURE_DB, SAR_TEXTURE_DEFAULT_DB)[c]
    db += tex * smooth_noise(rng, c.shape, geometry.texture_m / geometry.pixel_m)
    step = toward_sensor(geometry.range_azimuth_deg)
    edge, shadow = edges_and_shadow(c == BUILDING, step, geometry.edge_m / geometry.pixel_m, geometry.shadow_px)
    db[edge] = SIGMA0_DB[BUILDING] + geometry.edge_gain_db - (VV_EDGE_LOSS_DB if vv else 0.0)
    db[shadow] = geometry.shadow_db
    return SarScene(np.power(np.float32(10.0), db / np.float32(10.0)).astype(np.float32), edge, shadow)


def speckle(sigma0: np.ndarray, looks: float, rng: np.random.Generator) -> np.ndarray:
    """Multiplicative fully-developed speckle: intensity x Gamma(L, 1/L) (mean 1, var 1/L)."""
    if not looks > 0:
        raise SimulationError(f"looks: {looks!r} must be positive")
    g = rng.gamma(looks, 1.0 / looks, size=sigma0.shape).astype(np.float32)
    return (np.asarray(sigma0, np.float32) * g).astype(np.float32)


def sigma0_to_dn(
    sigma0: np.ndarray, scale_factor: float, valid: np.ndarray | None = None, dtype: str = "uint16"
) -> np.ndarray:
    """Amplitude DN = round(sqrt(sigma0) / scale_factor), 1..max of ``dtype`` inside, 0 (nodata) outside.

    uint16: Capella GEO/GEC; uint8: a display product (Umbra GEC), bright targets saturate.
    """
    if not (scale_factor > 0 and math.isfinite(scale_factor)):
        raise SimulationError(f"scale_factor: {scale_factor!r} must be a positive finite number")
    if dtype not in ("uint16", "uint8"):
        raise SimulationError(f"dtype {dtype!r}: expected uint16 or uint8")
    amp = np.sqrt(np.asarray(sigma0, np.float64)) / scale_factor
    dn = np.clip(np.rint(amp), 1, np.iinfo(dtype).max).astype(dtype)
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
