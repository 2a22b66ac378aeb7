"""Calibration from the real Capella extended metadata; refusal of what cannot be calibrated."""

from __future__ import annotations

import copy
import json
import math

import numpy as np
import pytest

from pipeline.calibrate import (
    CalibrateParams,
    CalibrationError,
    calibration_for,
    capella_calibration,
    dn_to_db,
    dn_to_linear,
    linear_to_db,
)

GEO = "capella/CAPELLA_C14_SP_GEO_HH_20240709040329_20240709040358_extended.json"
SLC = "capella/CAPELLA_C13_SP_SLC_HH_20241126045307_20241126045346_extended.json"


@pytest.fixture(scope="module")
def geo_meta(fixtures) -> dict:
    return json.loads((fixtures / GEO).read_text())


def test_real_geo_metadata(geo_meta):
    cal = calibration_for(geo_meta, "capella", "GEO")
    image = geo_meta["collect"]["image"]
    assert cal.calibrated and cal.product_type == "GEO"
    assert cal.scale_factor == image["scale_factor"]
    assert cal.radiometry == image["radiometry"] == "sigma_nought"
    assert cal.incidence_deg == image["center_pixel"]["incidence_angle"]
    assert cal.radiometric_factor == 1.0
    assert cal.to_tags()["calibrated"] == "true"


def test_sigma0_is_20log10_of_scaled_amplitude(geo_meta):
    """sigma0 = (s*DN)^2: 20*log10(s*DN) dB, not 10*log10(s*DN) (the stray square root)."""
    cal = calibration_for(geo_meta, "capella", "GEO")
    s = geo_meta["collect"]["image"]["scale_factor"]
    dn = np.array([[0, 1, 100, 1000, 65535]], dtype=np.uint16)
    db = dn_to_db(dn, cal)
    expected = [20 * math.log10(s * v) for v in (1, 100, 1000, 65535)]
    assert np.isnan(db[0, 0]) and not np.isinf(db).any()
    np.testing.assert_allclose(db[0, 1:], expected, atol=1e-4)
    power = dn_to_linear(dn, cal)
    assert power.dtype == np.float32 and np.isnan(power[0, 0])
    np.testing.assert_allclose(power[0, 1:], [(s * v) ** 2 for v in (1, 100, 1000, 65535)], rtol=1e-6)


def test_linear_to_db_never_gives_minus_inf():
    db = linear_to_db(np.array([0.0, -1.0, np.nan, 1.0, 0.01], dtype=np.float32))
    assert np.isnan(db[:3]).all()
    np.testing.assert_allclose(db[3:], [0.0, -20.0], atol=1e-5)


def test_umbra_is_relative_and_flagged():
    cal = calibration_for(None, "umbra", "GEC")
    assert not cal.calibrated and cal.to_tags()["calibrated"] == "false"
    np.testing.assert_allclose(dn_to_db(np.array([10, 255], np.uint8), cal), [20.0, 20 * math.log10(255)], atol=1e-4)
    assert np.isnan(dn_to_db(np.array([0], np.uint8), cal)[0])


def test_slc_is_refused_naming_file_and_field(fixtures):
    meta = json.loads((fixtures / SLC).read_text())
    with pytest.raises(CalibrationError, match=r"slc\.json: product_type: 'SLC' is not geocoded.*beta_nought"):
        capella_calibration(meta, "slc.json")
    with pytest.raises(CalibrationError, match="not geocoded"):
        calibration_for(meta, "capella", "SLC")


def test_missing_scale_factor(geo_meta):
    meta = copy.deepcopy(geo_meta)
    del meta["collect"]["image"]["scale_factor"]
    with pytest.raises(CalibrationError, match=r"m\.json: collect\.image\.scale_factor: missing"):
        calibration_for(meta, "capella", "GEO", "m.json")
    meta["collect"]["image"]["scale_factor"] = -1.0
    with pytest.raises(CalibrationError, match="must be a positive finite number"):
        calibration_for(meta, "capella", "GEO", "m.json")


def test_radiometry_that_cannot_be_converted(geo_meta):
    meta = copy.deepcopy(geo_meta)
    meta["collect"]["image"]["radiometry"] = "digital_number"
    with pytest.raises(CalibrationError, match=r"collect\.image\.radiometry: 'digital_number' cannot be converted"):
        calibration_for(meta, "capella", "GEO")
    meta["collect"]["image"]["radiometry"] = "beta_nought"
    del meta["collect"]["image"]["center_pixel"]["incidence_angle"]
    with pytest.raises(CalibrationError, match="without collect.image.center_pixel.incidence_angle"):
        calibration_for(meta, "capella", "GEO")


def test_beta_nought_converts_with_incidence(geo_meta):
    meta = copy.deepcopy(geo_meta)
    meta["collect"]["image"]["radiometry"] = "beta_nought"
    cal = calibration_for(meta, "capella", "GEO")
    inc = geo_meta["collect"]["image"]["center_pixel"]["incidence_angle"]
    assert cal.calibrated and cal.radiometric_factor == pytest.approx(math.sin(math.radians(inc)))
    s = cal.scale_factor
    assert dn_to_db(np.array([1000], np.uint16), cal)[0] == pytest.approx(
        20 * math.log10(s * 1000) + 10 * math.log10(math.sin(math.radians(inc))), abs=1e-4)
    with pytest.raises(CalibrationError, match="convert_radiometry is false"):
        calibration_for(meta, "capella", "GEO", p=CalibrateParams(convert_radiometry=False))


def test_product_mismatch_and_unknown_provider(geo_meta):
    with pytest.raises(CalibrationError, match="metadata says 'GEO' but provenance says 'GEC'"):
        calibration_for(geo_meta, "capella", "GEC")
    with pytest.raises(CalibrationError, match="provider 'iceye' is not known"):
        calibration_for(geo_meta, "iceye", "GEO")


def test_capella_without_metadata_is_uncalibrated():
    cal = calibration_for(None, "capella", "GEO")
    assert not cal.calibrated and cal.scale_factor == 1.0


def test_calibration_record_does_not_depend_on_checkout_path(fixtures):
    """The record goes into GeoTIFF tags and store attributes: it must be the same in every clone."""
    import json

    from pipeline.calibrate import calibration_for

    path = fixtures / "capella" / "CAPELLA_C14_SP_GEO_HH_20240709040329_20240709040358_extended.json"
    meta = json.loads(path.read_text())
    a = calibration_for(meta, "capella", "GEO", "/one/clone/source/sar_metadata.json")
    b = calibration_for(meta, "capella", "GEO", "/another/clone/source/sar_metadata.json")
    assert a == b and a.source.startswith("sar_metadata.json: collect.image.scale_factor=")
