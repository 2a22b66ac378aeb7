"""The region grid: one EPSG:4326 pixel grid per region, the frame every layer is aligned to.

Pixels are square *on the ground*: the longitude step is wider than the latitude step by
1/cos(latitude) (exactly: by the ratio of the meridional and prime-vertical radii of WGS84 at
the grid's reference latitude). The grid origin is snapped to whole multiples of the pixel
size, and the reference latitude is derived only from the AOI, so the same region always
gets the same grid, bit for bit.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from typing import Any

import numpy as np
import pyproj
from affine import Affine

WGS84_A = 6378137.0
WGS84_F = 1 / 298.257223563
WGS84_E2 = WGS84_F * (2 - WGS84_F)


class GridError(ValueError):
    """An AOI or GSD that no grid can be made from."""


def metres_per_degree(lat: float) -> tuple[float, float]:
    """Ground metres per degree of longitude and of latitude at ``lat`` on the WGS84 ellipsoid."""
    phi = math.radians(lat)
    w = math.sqrt(1 - WGS84_E2 * math.sin(phi) ** 2)
    prime_vertical = WGS84_A / w
    meridional = WGS84_A * (1 - WGS84_E2) / w**3
    return (math.pi / 180) * prime_vertical * math.cos(phi), (math.pi / 180) * meridional


def utm_crs(lon: float, lat: float) -> pyproj.CRS:
    """The WGS84 UTM zone CRS containing (lon, lat): where lengths and buffers in metres are accurate."""
    zone = min(int((lon + 180) // 6) + 1, 60)
    return pyproj.CRS.from_epsg((32600 if lat >= 0 else 32700) + zone)


def _round_sig(x: float, digits: int = 12) -> float:
    """Round to significant digits so platform-level float noise cannot change the grid."""
    return float(f"{x:.{digits}g}")


@dataclass(frozen=True)
class Grid:
    """A north-up EPSG:4326 raster grid: ``transform`` maps (col, row) to (lon, lat)."""

    transform: Affine
    width: int
    height: int
    gsd_m: float
    crs: str = "EPSG:4326"

    @property
    def shape(self) -> tuple[int, int]:
        return (self.height, self.width)

    @property
    def res(self) -> tuple[float, float]:
        """(x step, y step) in degrees, both positive."""
        return (self.transform.a, -self.transform.e)

    @property
    def bounds(self) -> tuple[float, float, float, float]:
        """(west, south, east, north) in degrees."""
        west, north = self.transform.c, self.transform.f
        return (west, north + self.transform.e * self.height, west + self.transform.a * self.width, north)

    def lonlat_to_pixel(self, lon: float, lat: float) -> tuple[float, float]:
        """Fractional (col, row) of a point; pixel centres sit at integer + 0.5."""
        col, row = ~self.transform @ (lon, lat)
        return col, row

    def pixel_to_lonlat(self, col: float, row: float) -> tuple[float, float]:
        """(lon, lat) of a fractional pixel position (use +0.5 for centres)."""
        return self.transform @ (col, row)

    def window_transform(self, row_off: int, col_off: int) -> Affine:
        """Transform of a sub-window whose top-left pixel is (row_off, col_off)."""
        return self.transform @ Affine.translation(col_off, row_off)

    def to_dict(self) -> dict[str, Any]:
        t = self.transform
        return {
            "crs": self.crs,
            "transform": [t.a, t.b, t.c, t.d, t.e, t.f],
            "width": self.width,
            "height": self.height,
            "gsd_m": self.gsd_m,
            "bounds": list(self.bounds),
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Grid:
        return cls(Affine(*d["transform"][:6]), int(d["width"]), int(d["height"]), float(d["gsd_m"]), d["crs"])

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2, sort_keys=True) + "\n"

    @classmethod
    def from_json(cls, text: str) -> Grid:
        return cls.from_dict(json.loads(text))


def grid_for_bbox(bbox: tuple[float, float, float, float], gsd_m: float) -> Grid:
    """The snapped EPSG:4326 grid covering ``bbox`` (west, south, east, north) at ``gsd_m``.

    The reference latitude is the bbox centre; pixel steps are rounded to 12 significant
    digits; the origin is floored/ceiled to whole steps, so the grid always covers the bbox.
    """
    west, south, east, north = (float(v) for v in bbox)
    if not (gsd_m > 0 and math.isfinite(gsd_m)):
        raise GridError(f"gsd_m: {gsd_m!r} must be a positive number of metres")
    if not (-180 <= west <= 180 and -180 <= east <= 180 and -90 <= south <= 90 and -90 <= north <= 90):
        raise GridError(f"bbox {bbox}: coordinates must be lon in [-180, 180], lat in [-90, 90]")
    if west >= east:
        raise GridError(
            f"bbox {bbox}: west >= east; an AOI crossing the antimeridian is not supported, split it in two regions"
        )
    if south >= north:
        raise GridError(f"bbox {bbox}: south must be less than north")
    lat0 = (south + north) / 2
    if abs(lat0) > 85:
        raise GridError(f"bbox {bbox}: latitude {lat0:.2f} is too close to a pole for a lon/lat grid")
    mx, my = metres_per_degree(lat0)
    xres, yres = _round_sig(gsd_m / mx), _round_sig(gsd_m / my)
    c0, r0 = math.floor(west / xres), math.ceil(north / yres)
    c1, r1 = math.ceil(east / xres), math.floor(south / yres)
    width, height = c1 - c0, r0 - r1
    if width * height > 2_000_000_000:
        raise GridError(f"bbox {bbox} at {gsd_m} m makes a {width}x{height} grid; that is too large for one region")
    return Grid(Affine(xres, 0.0, c0 * xres, 0.0, -yres, r0 * yres), width, height, float(gsd_m))


def aoi_mask(aoi: Any, grid: Grid, window: Any) -> np.ndarray | None:
    """True where a block's pixel centres fall inside a polygon AOI (lon/lat); None for no polygon.

    A region given as a GeoJSON polygon gets the polygon's bbox as its grid; pixels outside the
    polygon become no data here, so labels (255) and patches (dropped) follow the polygon too.
    """
    if aoi is None:
        return None
    from rasterio.features import geometry_mask

    return geometry_mask([aoi], out_shape=(int(window.height), int(window.width)),
                         transform=grid.window_transform(window.row_off, window.col_off), invert=True)
