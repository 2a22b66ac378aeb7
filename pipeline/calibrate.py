"""SAR calibration: product DN -> sigma0 (linear power) -> dB, from the product's own metadata.

Capella GEO/GEC pixels are UInt16 amplitude; the extended JSON holds the constant:
``sigma0 = (scale_factor * DN)**2``, so ``sigma0_dB = 20*log10(scale_factor*DN)`` (the paper's
``10*log10(S*D**2)`` with ``S = scale_factor**2``; a stray square root here is a classic bug).
DN 0 is nodata and becomes NaN, never -inf. Umbra GEC GeoTIFFs are display products with no
constant: they give *relative* dB (``20*log10(DN)``) and are flagged ``calibrated=False``.
Arrays are converted with pure functions so the grid stage can apply them per block.
"""

from __future__ import annotations

import logging
import math
import os
from dataclasses import dataclass
from typing import Any, ClassVar

import numpy as np

from pipeline.params import param

log = logging.getLogger("sareo.calibrate")



@dataclass(frozen=True)
class CalibrateParams:
    """How DN become sigma0."""

    section: ClassVar[str] = "calibrate"
    # beta0/gamma0 -> sigma0 uses the scene-centre incidence angle only: an approximation a user may refuse
    convert_radiometry: bool = param(True, "beta0/gamma0 GEO/GEC -> sigma0 with the scene-centre incidence; "
                                           "false = refuse anything but sigma_nought")

GEOCODED = ("GEO", "GEC")
NOT_GEOCODED = ("SLC", "SICD", "SIDD", "CPHD")
KNOWN_RADIOMETRY = ("sigma_nought", "beta_nought", "gamma_nought")


class CalibrationError(ValueError):
    """Metadata that cannot give a trustworthy calibration; the message names the file and field."""


@dataclass(frozen=True)
class Calibration:
    """How to turn one product's DN into sigma0 power.

    ``power = (scale_factor * DN)**2 * radiometric_factor``; ``calibrated`` is False for relative
    (display) products, whose dB values are only comparable within one scene.
    """

    scale_factor: float
    radiometry: str  # radiometry of the DN as delivered ("sigma_nought", ..., "relative")
    incidence_deg: float | None
    calibrated: bool
    product_type: str
    source: str  # human-readable: where the numbers came from
    radiometric_factor: float = 1.0  # sigma0 / (scale*DN)^2, e.g. sin(incidence) for beta0 -> sigma0

    @property
    def output_radiometry(self) -> str:
        return "sigma_nought" if self.calibrated else "relative"

    def to_tags(self) -> dict[str, str]:
        """GeoTIFF metadata tags (strings, deterministic) describing this calibration."""
        return {
            "calibrated": "true" if self.calibrated else "false",
            "radiometry": self.output_radiometry,
            "source_radiometry": self.radiometry,
            "scale_factor": repr(self.scale_factor),
            "radiometric_factor": repr(self.radiometric_factor),
            "incidence_deg": "" if self.incidence_deg is None else repr(self.incidence_deg),
            "product_type": self.product_type,
            "calibration_source": self.source,
            "units": "dB",
        }


def _get(d: Any, path: str, where: str) -> Any:
    cur = d
    for key in path.split("."):
        if not isinstance(cur, dict) or key not in cur:
            raise CalibrationError(f"{where}: {path}: missing (expected in a Capella extended metadata JSON)")
        cur = cur[key]
    return cur


def _positive(value: Any, field: str, where: str) -> float:
    try:
        v = float(value)
    except (TypeError, ValueError):
        raise CalibrationError(f"{where}: {field}: {value!r} is not a number") from None
    if not (math.isfinite(v) and v > 0):
        raise CalibrationError(f"{where}: {field}: {value!r} must be a positive finite number")
    return v


def uncalibrated(product_type: str, source: str) -> Calibration:
    """Relative dB = 20*log10(DN): for products that ship no calibration constant (Umbra GEC)."""
    return Calibration(1.0, "relative", None, False, product_type, source)


def capella_calibration(metadata: dict[str, Any], where: str = "sar_metadata.json",
                        p: CalibrateParams | None = None) -> Calibration:
    """Calibration of a Capella GEO/GEC product from its extended JSON; refuse what is not geocoded."""
    p = p or CalibrateParams()
    if not isinstance(metadata, dict):
        raise CalibrationError(f"{where}: expected a JSON object, got {type(metadata).__name__}")
    product = str(metadata.get("product_type", "")).upper()
    if product in NOT_GEOCODED:
        raise CalibrationError(
            f"{where}: product_type: {product!r} is not geocoded (slant-range "
            f"{_radiometry_or(metadata)}); use a GEO or GEC product"
        )
    if product and product not in GEOCODED:
        raise CalibrationError(f"{where}: product_type: {product!r} is not a known product; expected GEO or GEC")
    image = _get(metadata, "collect.image", where)
    if "scale_factor" not in image:
        raise CalibrationError(
            f"{where}: collect.image.scale_factor: missing; cannot convert DN to sigma0 without the product's constant"
        )
    scale = _positive(image["scale_factor"], "collect.image.scale_factor", where)
    radiometry = image.get("radiometry")
    if radiometry is None:
        raise CalibrationError(f"{where}: collect.image.radiometry: missing; expected one of {KNOWN_RADIOMETRY}")
    radiometry = str(radiometry)
    dtype = str(image.get("data_type", "UInt16"))
    if dtype.lower().startswith("c"):
        raise CalibrationError(f"{where}: collect.image.data_type: {dtype!r} is complex; expected UInt16 amplitude")
    inc = (image.get("center_pixel") or {}).get("incidence_angle")
    incidence = None if inc is None else _positive(inc, "collect.image.center_pixel.incidence_angle", where)
    if incidence is not None and incidence >= 90:
        raise CalibrationError(f"{where}: collect.image.center_pixel.incidence_angle: {inc!r} must be below 90 degrees")
    factor = 1.0
    # the file's name, not its path: outputs must not depend on where the project is checked out
    how = f"{os.path.basename(where)}: collect.image.scale_factor={scale!r}, radiometry={radiometry}"
    if radiometry == "sigma_nought":
        pass
    elif radiometry in ("beta_nought", "gamma_nought"):
        if not p.convert_radiometry:
            raise CalibrationError(
                f"{where}: collect.image.radiometry: {radiometry!r} and calibrate.convert_radiometry is false; "
                "only sigma_nought is accepted"
            )
        if incidence is None:
            raise CalibrationError(
                f"{where}: collect.image.radiometry: {radiometry!r} cannot be converted to sigma_nought without "
                "collect.image.center_pixel.incidence_angle"
            )
        theta = math.radians(incidence)
        factor = math.sin(theta) if radiometry == "beta_nought" else math.cos(theta)
        how += f", converted to sigma_nought with centre incidence {incidence:.3f} deg"
        log.warning("%s: %s converted to sigma0 with the scene-centre incidence angle only", where, radiometry)
    else:
        raise CalibrationError(
            f"{where}: collect.image.radiometry: {radiometry!r} cannot be converted; expected one of {KNOWN_RADIOMETRY}"
        )
    return Calibration(scale, radiometry, incidence, True, product or "GEO", how, factor)


def _radiometry_or(metadata: dict[str, Any]) -> str:
    try:
        return str(metadata["collect"]["image"]["radiometry"])
    except (KeyError, TypeError):
        return "data"


def calibration_for(metadata: dict[str, Any] | None, provider: str, product: str,
                    where: str = "sar_metadata.json", p: CalibrateParams | None = None) -> Calibration:
    """The calibration of a SAR product, or an explicitly uncalibrated one.

    Capella GEO/GEC with metadata -> calibrated sigma0. Umbra GEC, or a Capella file whose
    metadata is absent (a local GeoTIFF) -> relative dB, ``calibrated=False``. Non-geocoded
    products and metadata that is present but unusable raise CalibrationError.
    """
    provider = (provider or "").lower()
    product = (product or "").upper()
    if product in NOT_GEOCODED:
        raise CalibrationError(f"{where}: product {product!r} is not geocoded (slant range); use GEO or GEC")
    if provider == "umbra":
        return uncalibrated(product or "GEC", "Umbra GEC display product: no calibration constant, relative dB")
    if provider != "capella":
        raise CalibrationError(f"{where}: provider {provider!r} is not known; expected 'capella' or 'umbra'")
    if metadata is None:
        log.warning("%s: no Capella metadata; SAR is relative dB (calibrated=false)", where)
        return uncalibrated(product or "GEO", "no product metadata: relative dB")
    cal = capella_calibration(metadata, where, p)
    if product and cal.product_type != product:
        raise CalibrationError(
            f"{where}: product_type: metadata says {cal.product_type!r} but provenance says {product!r}"
        )
    return cal


def dn_to_linear(dn: np.ndarray, cal: Calibration) -> np.ndarray:
    """float32 sigma0 power (relative power when uncalibrated); NaN where DN == 0 (nodata)."""
    a = np.asarray(dn)
    out = a.astype(np.float32)
    np.multiply(out, np.float32(cal.scale_factor), out=out)
    np.square(out, out=out)
    if cal.radiometric_factor != 1.0:
        np.multiply(out, np.float32(cal.radiometric_factor), out=out)
    out[a == 0] = np.nan
    return out


def linear_to_db(power: np.ndarray) -> np.ndarray:
    """float32 10*log10(power); NaN where power is NaN or <= 0 (never -inf)."""
    p = np.asarray(power, dtype=np.float32)
    out = np.full(p.shape, np.nan, dtype=np.float32)
    ok = p > 0  # False for NaN too
    np.log10(p, out=out, where=ok)
    np.multiply(out, np.float32(10.0), out=out, where=ok)
    return out


def dn_to_db(dn: np.ndarray, cal: Calibration) -> np.ndarray:
    """sigma0 dB straight from DN (no resampling in between)."""
    return linear_to_db(dn_to_linear(dn, cal))
