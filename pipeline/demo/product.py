"""A simulated Capella GEO product: item id fields, ``*_extended.json``, the HH/VV COG, previews, footprint.

The structure, field names and static constants follow a real Capella Open Data product
(CC BY 4.0); geometry, calibration and times are the simulated scene's. Fixed compression
and no clock, so the bytes depend only on the inputs.
"""

from __future__ import annotations

import datetime as dt
import io
import json
import math
from pathlib import Path
from typing import Any

import numpy as np
import rasterio
import rasterio.shutil
from affine import Affine
from PIL import Image
from pyproj import CRS, Transformer
from rasterio.io import MemoryFile
from shapely.geometry import Polygon

from pipeline.demo.params import DemoError
from pipeline.demo.physics import footprint_corners


def parse_item_id(item_id: str) -> dict[str, Any]:
    """Fields of a Capella id ``CAPELLA_C{NN}_{mode}_{product}_{pol}_{start}_{end}``."""
    parts = item_id.split("_")
    if len(parts) != 7 or parts[0] != "CAPELLA" or not parts[1].startswith("C"):
        raise DemoError(
            f"item id {item_id!r}: expected CAPELLA_C{{NN}}_{{SP|SM|SS}}_{{product}}_{{pol}}_{{start}}_{{end}}"
        )
    try:
        start, end = (dt.datetime.strptime(p, "%Y%m%d%H%M%S").replace(tzinfo=dt.timezone.utc) for p in parts[5:7])
    except ValueError:
        raise DemoError(f"item id {item_id!r}: start/end must be YYYYmmddHHMMSS") from None
    return {
        "platform": f"capella-{int(parts[1][1:])}",
        "mode": parts[2],
        "product": parts[3],
        "polarization": parts[4],
        "start": start,
        "end": end,
    }


def iso_time(t: dt.datetime) -> str:
    """UTC time as Capella writes it (microseconds, Z)."""
    return t.astimezone(dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def capella_extended(
    item_id: str,
    crs: CRS,
    transform: Affine,
    shape: tuple[int, int],
    scale_factor: float,
    incidence_deg: float,
    looks: float,
    centre_lonlat: tuple[float, float],
    orbit_state: str,
    timezone: str,
    collect_id: str,
) -> dict[str, Any]:
    """An ``*_extended.json`` with the structure and field names of a real Capella GEO product.

    Structure and the static constants (windows, radar frequency, product version) follow a real
    product (CAPELLA_C14_SP_GEO_HH_20240709040329_20240709040358, CC BY 4.0 Capella Space);
    geometry, calibration and times are the simulated scene's.
    """
    info = parse_item_id(item_id)
    h, w = shape
    px = abs(transform.a)
    centre_t = info["start"] + (info["end"] - info["start"]) / 2
    ecef = Transformer.from_crs("EPSG:4326", "EPSG:4978", always_xy=True).transform(*centre_lonlat, 0.0)
    look = math.degrees(math.asin(math.sin(math.radians(incidence_deg)) * 6371.0 / (6371.0 + 525.0)))
    return {
        "software_version": "sareo-demo",
        "software_revision": "simulated",
        "processing_time": iso_time(info["end"] + dt.timedelta(hours=5)),
        "processing_deployment": "simulation",
        "copyright": "Simulated product for the sareo demo; layout after Capella Space Open Data (CC BY 4.0).",
        "license": "https://creativecommons.org/licenses/by/4.0/",
        "product_version": "1.10",
        "product_type": info["product"],
        "collect": {
            "start_timestamp": iso_time(info["start"]),
            "stop_timestamp": iso_time(info["end"]),
            "local_timezone": timezone,
            "platform": info["platform"],
            "mode": {"SP": "spotlight", "SM": "stripmap", "SS": "sliding_spotlight"}[info["mode"]],
            "collect_id": collect_id,
            "image": {
                "data_type": "UInt16",
                "length": h * px,
                "width": w * px,
                "rows": h,
                "columns": w,
                "pixel_spacing_row": px,
                "pixel_spacing_column": px,
                "algorithm": "backprojection",
                "scale_factor": scale_factor,
                "range_window": {
                    "name": "avci-nacaroglu",
                    "parameters": {"alpha": 1.25},
                    "broadening_factor": 1.2691431801237485,
                },
                "processed_range_bandwidth": 500000000.0,
                "azimuth_window": {
                    "name": "taylor",
                    "parameters": {"nbar": 3, "sidelobelevel": -30.0},
                    "broadening_factor": 1.1163957951988408,
                },
                "image_geometry": {
                    "type": "geotransform",
                    "geotransform": [transform.c, transform.a, transform.b, transform.f, transform.d, transform.e],
                    "coordinate_system": {"type": "wkt", "wkt": crs.to_wkt("WKT1_GDAL")},
                },
                "center_pixel": {
                    "look_angle": round(look, 6),
                    "incidence_angle": incidence_deg,
                    "squint_angle": 0.0,
                    "target_position": [round(v, 6) for v in ecef],
                    "center_time": iso_time(centre_t),
                },
                "range_resolution": 0.38,
                "ground_range_resolution": round(0.38 / math.sin(math.radians(incidence_deg)), 6),
                "azimuth_resolution": 0.5,
                "ground_azimuth_resolution": 0.5,
                "azimuth_looks": float(looks),
                "range_looks": 1.0,
                "enl": float(looks),
                "multilooking_algorithm": "subaperture_combine",
                "azimuth_beam_pattern_corrected": True,
                "elevation_beam_pattern_corrected": True,
                "radiometry": "sigma_nought",
                "calibration": "full",
                "nesz_peak": -20.0,
            },
            "radar": {
                "center_frequency": 9649999872.0,
                "pointing": "left",
                "transmit_polarization": info["polarization"][0],
                "receive_polarization": info["polarization"][1],
            },
            "state": {"coordinate_system": {"type": "ecef"}, "direction": orbit_state},
        },
    }


def write_cog(
    path: Path, dn: np.ndarray, crs: CRS, transform: Affine, tags: dict[str, str], band: str | None = None,
    nodata: int | None = 0,
) -> None:
    """Single-band COG (dtype of ``dn``), DEFLATE + predictor, 512 px blocks, averaged overviews; fixed bytes.

    Capella GEO: UInt16, nodata 0, band named for its polarisation. Umbra GEC: uint8 and neither
    a nodata tag nor a band name (DN 0 outside the footprint all the same), as Umbra's files.
    """
    h, w = dn.shape
    with MemoryFile() as mem:
        with mem.open(
            driver="GTiff",
            width=w,
            height=h,
            count=1,
            dtype=dn.dtype.name,
            crs=crs,
            transform=transform,
            nodata=nodata,
            tiled=True,
            blockxsize=512,
            blockysize=512,
        ) as ds:
            ds.write(dn, 1)
            if band:
                ds.set_band_description(1, band)
            ds.update_tags(**tags)
        with mem.open() as src:
            rasterio.shutil.copy(
                src,
                str(path),
                driver="COG",
                COMPRESS="DEFLATE",
                PREDICTOR="2",
                LEVEL="6",
                BLOCKSIZE="512",
                OVERVIEW_RESAMPLING="AVERAGE",
                BIGTIFF="NO",
            )


def capella_tags(description: dict[str, Any]) -> dict[str, str]:
    """TIFF tags of a Capella GEO COG: a JSON description (collect id, product type, scale factor)."""
    return {
        "TIFFTAG_IMAGEDESCRIPTION": json.dumps(description, sort_keys=True, separators=(",", ":")),
        "TIFFTAG_SOFTWARE": "sareo demo (simulated Capella GEO)",
    }


def png_bytes(arr: np.ndarray) -> bytes:
    """An 8-bit grey or RGB array as PNG (fixed compression level: fixed bytes)."""
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, format="PNG", compress_level=6)
    return buf.getvalue()


def quicklook(dn: np.ndarray, scale_factor: float, max_px: int) -> np.ndarray:
    """8-bit grey sigma0 (-25..+5 dB) block-averaged to at most ``max_px``; nodata stays black."""
    k = max(1, math.ceil(max(dn.shape) / max_px))
    h, w = (dn.shape[0] // k) * k, (dn.shape[1] // k) * k
    p = (dn[:h, :w].astype(np.float64) * scale_factor) ** 2
    valid = dn[:h, :w] > 0
    s = p.reshape(h // k, k, w // k, k).sum(axis=(1, 3))
    n = valid.reshape(h // k, k, w // k, k).sum(axis=(1, 3))
    with np.errstate(divide="ignore", invalid="ignore"):
        db = 10 * np.log10(np.where(n > 0, s / np.maximum(n, 1), np.nan))
    g = np.clip((db + 25.0) / 30.0 * 254 + 1, 1, 255)
    return np.where(n > 0, np.nan_to_num(g), 0).astype(np.uint8)


def footprint_lonlat(
    shape: tuple[int, int], rotation_deg: float, inset_px: float, transform: Affine, crs: CRS
) -> Polygon:
    """The product footprint (rotated rectangle) in lon/lat, as georeferenced by ``transform``."""
    corners = footprint_corners(shape, rotation_deg, inset_px)
    to_ll = Transformer.from_crs(crs, "EPSG:4326", always_xy=True)
    pts = [to_ll.transform(*(transform @ (c, r))) for c, r in corners]
    return Polygon([(round(x, 7), round(y, 7)) for x, y in pts])
