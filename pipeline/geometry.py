"""SAR acquisition geometry as data: where the sensor is, seen from the scene.

Registration needs it because elevated structure is displaced in SAR along ground range: a point
h metres up shows h / tan(incidence) toward the sensor (layover), its radar shadow falls
h * tan(incidence) away from it, and a wall's double bounce stays at its foot. Ground-level
structure has no layover on flat ground. So the direction toward the sensor on the ground (the
"ground-range direction") says along which axis a bias from bright elevated scatterers can hide,
and which side of a bright object is suspect.

Sources, read by pure functions (no I/O here):
- Capella extended metadata (``*_extended.json``): ``collect.radar.pointing`` (left/right),
  ``collect.image.center_pixel`` (incidence, look and squint angles, target_position in ECEF,
  center_time) and ``collect.state.state_vectors`` (ECEF). The direction toward the sensor is the
  line of sight from the target to the platform at the centre time, in the local east-north-up
  frame; the heading is the platform velocity there.
- A STAC item (Umbra and others): ``view:incidence_angle``, ``view:off_nadir``, ``view:azimuth``,
  ``sar:observation_direction``, ``sat:orbit_state``. ``view:azimuth`` is taken as the azimuth
  of the sensor seen from the scene centre, as Umbra writes it (on the fixture, left-looking,
  descending, squinted 42 deg: 328 deg, which only this reading fits).
"""

from __future__ import annotations

import math
import re
from dataclasses import asdict, dataclass
from datetime import datetime
from typing import Any, Literal

import numpy as np

WGS84_A = 6378137.0
WGS84_E2 = 6.69437999014e-3


class GeometryError(ValueError):
    """Metadata whose geometry fields are present but unusable; the message names the field."""


@dataclass(frozen=True)
class AcquisitionGeometry:
    """How the SAR saw the scene (angles in degrees; azimuths clockwise from north).

    ``sensor_azimuth_deg``: ground direction from the scene toward the sensor (the ground-range
    direction, toward the sensor); layover moves elevated points this way. ``heading_deg``: the
    platform's ground track. ``source``: which fields gave it.
    """

    provider: str
    look_side: Literal["left", "right"] | None = None
    incidence_deg: float | None = None
    look_angle_deg: float | None = None
    squint_deg: float | None = None
    sensor_azimuth_deg: float | None = None
    heading_deg: float | None = None
    orbit_state: str | None = None
    source: str = ""

    @property
    def known(self) -> bool:
        """The ground-range direction and incidence are both known (what registration uses)."""
        return self.sensor_azimuth_deg is not None and self.incidence_deg is not None

    def toward_sensor(self) -> tuple[float, float] | None:
        """Unit step (x right, y down) toward the sensor on a north-up grid, or None."""
        if self.sensor_azimuth_deg is None:
            return None
        a = math.radians(self.sensor_azimuth_deg)
        return math.sin(a), -math.cos(a)

    def layover_m(self, height_m: float) -> float | None:
        """Ground-range displacement of a point ``height_m`` up, toward the sensor."""
        if self.incidence_deg is None:
            return None
        return height_m / math.tan(math.radians(self.incidence_deg))

    def shadow_m(self, height_m: float) -> float | None:
        """Length of the radar shadow behind a wall of ``height_m``, away from the sensor."""
        if self.incidence_deg is None:
            return None
        return height_m * math.tan(math.radians(self.incidence_deg))

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        return {k: (round(v, 6) if isinstance(v, float) else v) for k, v in d.items()}


UNKNOWN = AcquisitionGeometry(provider="unknown", source="no geometry in the metadata")


# ----------------------------------------------------------------------------- helpers


def _num(d: dict[str, Any], key: str, where: str, lo: float, hi: float) -> float | None:
    v = d.get(key)
    if v is None:
        return None
    if not isinstance(v, (int, float)) or isinstance(v, bool) or not math.isfinite(v) or not lo <= v <= hi:
        raise GeometryError(f"{where}.{key}: expected a number in [{lo}, {hi}], got {v!r}")
    return float(v)


def _side(v: Any, where: str) -> Any:
    if v is not None and v not in ("left", "right"):
        raise GeometryError(f"{where}: expected 'left' or 'right', got {v!r}")
    return v


def _time(v: Any, where: str) -> float:
    """Seconds since the epoch of an ISO 8601 timestamp (nanosecond digits and Z allowed)."""
    if not isinstance(v, str):
        raise GeometryError(f"{where}: expected an ISO 8601 time, got {v!r}")
    s = v.strip().replace("Z", "+00:00")
    frac = ""
    if "." in s:
        head, rest = s.split(".", 1)
        digits = re.match(r"\d*", rest).group(0)
        tz = rest[len(digits):]
        s, frac = head + tz, digits
    try:
        t = datetime.fromisoformat(s).timestamp()
    except ValueError:
        raise GeometryError(f"{where}: expected an ISO 8601 time, got {v!r}") from None
    return t + (float("0." + frac) if frac else 0.0)


def ecef_to_lonlat(x: float, y: float, z: float) -> tuple[float, float]:
    """Geodetic longitude and latitude (degrees, WGS84) of an ECEF point (Bowring, one step
    is ample for a local frame)."""
    lon = math.atan2(y, x)
    p = math.hypot(x, y)
    b = WGS84_A * math.sqrt(1 - WGS84_E2)
    ep2 = (WGS84_A**2 - b**2) / b**2
    th = math.atan2(z * WGS84_A, p * b)
    lat = math.atan2(z + ep2 * b * math.sin(th) ** 3, p - WGS84_E2 * WGS84_A * math.cos(th) ** 3)
    return math.degrees(lon), math.degrees(lat)


def enu_basis(lon_deg: float, lat_deg: float) -> np.ndarray:
    """Rows: east, north, up unit vectors in ECEF at (lon, lat)."""
    lo, la = math.radians(lon_deg), math.radians(lat_deg)
    return np.array([
        [-math.sin(lo), math.cos(lo), 0.0],
        [-math.sin(la) * math.cos(lo), -math.sin(la) * math.sin(lo), math.cos(la)],
        [math.cos(la) * math.cos(lo), math.cos(la) * math.sin(lo), math.sin(la)],
    ])


def _azimuth(v_enu: np.ndarray) -> float:
    return math.degrees(math.atan2(v_enu[0], v_enu[1])) % 360.0


def los_geometry(target_ecef: np.ndarray, sensor_ecef: np.ndarray, velocity_ecef: np.ndarray
                 ) -> tuple[float, float, float, str]:
    """(azimuth toward the sensor, incidence, heading, look side) from the target and the
    platform's position and velocity in ECEF."""
    lon, lat = ecef_to_lonlat(*target_ecef)
    R = enu_basis(lon, lat)
    los = R @ (sensor_ecef - target_ecef)
    vel = R @ velocity_ecef
    incidence = math.degrees(math.atan2(math.hypot(los[0], los[1]), los[2]))
    # the platform is to the LEFT of the look direction (from sensor to target) when it looks right
    look = -los[:2]
    cross = vel[0] * look[1] - vel[1] * look[0]  # z of velocity x look (east-north plane)
    side = "right" if cross < 0 else "left"
    return _azimuth(los), incidence, _azimuth(vel), side


def _state_at(vectors: list[Any], t: float, where: str) -> tuple[np.ndarray, np.ndarray]:
    """Platform position and velocity at ``t`` by cubic Hermite interpolation between the two
    state vectors around it (positions and velocities are both given)."""
    rows = []
    for i, sv in enumerate(vectors):
        w = f"{where}[{i}]"
        if not isinstance(sv, dict):
            raise GeometryError(f"{w}: expected an object with time, position, velocity")
        try:
            p = np.asarray(sv["position"], float)
            v = np.asarray(sv["velocity"], float)
        except (KeyError, TypeError, ValueError):
            raise GeometryError(f"{w}: expected position and velocity as 3 numbers each") from None
        if p.shape != (3,) or v.shape != (3,):
            raise GeometryError(f"{w}: expected position and velocity as 3 numbers each")
        rows.append((_time(sv.get("time"), f"{w}.time"), p, v))
    rows.sort(key=lambda r: r[0])
    if len(rows) < 2 or not rows[0][0] <= t <= rows[-1][0]:
        raise GeometryError(f"{where}: the centre time is not inside the state vectors' time span")
    k = max(1, min(len(rows) - 1, int(np.searchsorted([r[0] for r in rows], t))))
    (t0, p0, v0), (t1, p1, v1) = rows[k - 1], rows[k]
    h = t1 - t0
    s = (t - t0) / h
    h00, h10, h01, h11 = 2 * s**3 - 3 * s**2 + 1, s**3 - 2 * s**2 + s, -2 * s**3 + 3 * s**2, s**3 - s**2
    pos = h00 * p0 + h10 * h * v0 + h01 * p1 + h11 * h * v1
    d00, d10, d01, d11 = 6 * s**2 - 6 * s, 3 * s**2 - 4 * s + 1, -6 * s**2 + 6 * s, 3 * s**2 - 2 * s
    vel = (d00 * p0 + d01 * p1) / h + d10 * v0 + d11 * v1
    return pos, vel


# ----------------------------------------------------------------------------- readers


def capella_geometry(meta: dict[str, Any], where: str = "sar_metadata.json") -> AcquisitionGeometry:
    """Geometry from Capella extended metadata (GEO, GEC or SLC)."""
    collect = meta.get("collect")
    if not isinstance(collect, dict):
        raise GeometryError(f"{where}: collect: expected an object (Capella extended metadata)")
    radar = collect.get("radar") or {}
    image = collect.get("image") or {}
    cp = image.get("center_pixel") or {}
    w = f"{where}: collect.image.center_pixel"
    inc = _num(cp, "incidence_angle", w, 0, 90)
    look = _num(cp, "look_angle", w, 0, 90)
    squint = _num(cp, "squint_angle", w, -180, 180)
    side = _side(radar.get("pointing"), f"{where}: collect.radar.pointing")
    state = collect.get("state") or {}
    orbit = state.get("direction") if isinstance(state.get("direction"), str) else None
    az = heading = None
    src = "collect.radar.pointing, collect.image.center_pixel"
    vectors, target = state.get("state_vectors"), cp.get("target_position")
    if vectors and target is not None and cp.get("center_time"):
        coord = (state.get("coordinate_system") or {}).get("type", "ecef")
        if coord != "ecef":
            raise GeometryError(f"{where}: collect.state.coordinate_system.type: expected 'ecef', got {coord!r}")
        try:
            tgt = np.asarray(target, float)
        except (TypeError, ValueError):
            tgt = np.zeros(0)
        if tgt.shape != (3,):
            raise GeometryError(f"{w}.target_position: expected 3 ECEF numbers, got {target!r}")
        pos, vel = _state_at(vectors, _time(cp["center_time"], f"{w}.center_time"), f"{where}: collect.state.state_vectors")
        az, inc_los, heading, side_los = los_geometry(tgt, pos, vel)
        if side is not None and side != side_los:
            raise GeometryError(f"{where}: collect.radar.pointing is {side!r} but the state vectors put the "
                                f"platform on the {side_los} side; the metadata is inconsistent")
        if inc is not None and abs(inc - inc_los) > 2.0:
            raise GeometryError(f"{w}.incidence_angle {inc:.2f} deg differs from the line of sight "
                                f"({inc_los:.2f} deg) by over 2 deg; the metadata is inconsistent")
        side = side or side_los
        inc = inc if inc is not None else inc_los
        src += ", collect.state.state_vectors (line of sight at center_time)"
    return AcquisitionGeometry("capella", side, inc, look, squint, az, heading, orbit, src)


def stac_geometry(item: dict[str, Any], where: str = "STAC item") -> AcquisitionGeometry:
    """Geometry from a STAC item's ``view:``/``sar:``/``sat:`` properties (Umbra's sidecar)."""
    props = item.get("properties", item)
    if not isinstance(props, dict):
        raise GeometryError(f"{where}: properties: expected an object")
    w = f"{where}: properties"
    inc = _num(props, "view:incidence_angle", w, 0, 90)
    off = _num(props, "view:off_nadir", w, 0, 90)
    az = _num(props, "view:azimuth", w, -360, 360)
    side = _side(props.get("sar:observation_direction"), f"{w}.sar:observation_direction")
    squint = _num(props, "umbra:squint_angle_degrees_off_broadside", w, -180, 180)
    orbit = props.get("sat:orbit_state") if isinstance(props.get("sat:orbit_state"), str) else None
    provider = str(props.get("constellation") or "stac")
    keys = [k for k in ("view:incidence_angle", "view:off_nadir", "view:azimuth", "sar:observation_direction",
                        "sat:orbit_state") if k in props]
    return AcquisitionGeometry(provider, side, inc, off, squint, None if az is None else az % 360.0, None, orbit,
                               ", ".join(keys) or "no view:/sar: fields")


def geometry_from(metadata: dict[str, Any] | None, provenance_sar: dict[str, Any] | None = None,
                  where: str = "sar_metadata.json") -> AcquisitionGeometry:
    """The geometry of a fetched SAR: from its metadata file (Capella extended JSON or a STAC
    item), else from the ``view`` fields the fetch stage copied into provenance; UNKNOWN if none."""
    if metadata:
        if "collect" in metadata:
            return capella_geometry(metadata, where)
        if "properties" in metadata or any(str(k).startswith(("view:", "sar:")) for k in metadata):
            return stac_geometry(metadata, where)
    view = (provenance_sar or {}).get("view")
    if isinstance(view, dict) and view:
        return stac_geometry(view, "provenance.json: sar.view")
    return UNKNOWN
