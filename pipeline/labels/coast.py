"""Open sea from OpenStreetMap coastlines (pure geometry, no I/O).

OSM has no sea polygons: the sea is implied by ``natural=coastline`` ways, which run with the
land on their LEFT and the water on their RIGHT (so an island's ring runs counter-clockwise).
osmcoastline assembles the whole planet's rings; an extract only holds pieces, so here the
clip rectangle is split by the coastline (polygonize of rectangle boundary + coastline) and each
face is water or land by the side of the coastline it lies on: every coastline edge on a face's
boundary votes, by comparing its direction with the face's counter-clockwise boundary.

Anything inconsistent (a coastline that ends inside the rectangle, faces with contradicting
votes from mixed directions) gives NO sea and a reason: a wrong sea floods land, a missing sea
only leaves background. Ends within ``snap`` of the rectangle's border (an extract cut just
inside its own edge) are extended straight to the border first.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import shapely
import shapely.errors
from shapely.geometry import LineString, MultiLineString, Polygon
from shapely.geometry.base import BaseGeometry

from pipeline.grid import metres_per_degree
from pipeline.labels.params import LabelsParams

MIXED_TOLERANCE = 0.01  # a face may have at most this share of its coastline voting the other way
_EPS = 1e-4  # planar units (metres in sea_lonlat): "on the line" for noded edges


@dataclass(frozen=True)
class SeaResult:
    """Sea polygons (empty if none) and how they were made; ``status``: ok | no_coastline | skipped."""

    geometry: BaseGeometry
    status: str
    reason: str = ""
    bounds: tuple[float, float, float, float] | None = None  # the clip rectangle used
    coastline_parts: int = 0  # coastline lines after merging consecutive ways
    faces: int = 0
    water_faces: int = 0
    snapped_ends: int = 0
    at: tuple[float, float] | None = None  # where the coastline failed (input units), for the report
    attempts: tuple[str, ...] = field(default=())

    @property
    def ok(self) -> bool:
        return self.status == "ok"

    def report(self) -> dict[str, Any]:
        return {
            "status": self.status,
            "reason": self.reason,
            "clip_bounds": [round(v, 7) for v in self.bounds] if self.bounds else None,
            "coastline_parts": self.coastline_parts,
            "faces": self.faces,
            "water_faces": self.water_faces,
            "snapped_ends": self.snapped_ends,
            "at": [round(v, 7) for v in self.at] if self.at else None,
            "attempts": list(self.attempts),
        }


def coastline_lines(geoms: Iterable[BaseGeometry | None]) -> list[LineString]:
    """Directed lines from coastline geometries: lines as they are, polygons as their rings.

    GDAL's OSM driver turns a closed coastline way (a small island) into a polygon; it keeps
    the way's node order, so the ring keeps the coastline direction.
    """
    out: list[LineString] = []
    for g in geoms:
        if g is None or g.is_empty:
            continue
        for part in getattr(g, "geoms", [g]):
            if isinstance(part, LineString):
                out.append(part)
            elif isinstance(part, Polygon):
                out.extend(LineString(r.coords) for r in (part.exterior, *part.interiors))
    return [ln for ln in out if ln.length > 0]


def _fail(reason: str, bounds: tuple[float, float, float, float], parts: int, snapped: int = 0,
          at: tuple[float, float] | None = None) -> SeaResult:
    return SeaResult(Polygon(), "skipped", reason, bounds, parts, snapped_ends=snapped, at=at)


def _connector(p: tuple[float, float], bounds: tuple[float, float, float, float], reach: float) -> LineString:
    """Straight segment from ``p`` perpendicular through the nearest side of the rectangle, beyond it."""
    x, y = p
    w, s, e, n = bounds
    d = {"w": x - w, "e": e - x, "s": y - s, "n": n - y}
    side = min(d, key=d.get)
    q = {"w": (w - reach, y), "e": (e + reach, y), "s": (x, s - reach), "n": (x, n + reach)}[side]
    return LineString([p, q])


def sea_planar(
    lines: Sequence[LineString],
    bounds: tuple[float, float, float, float],
    snap: float = LabelsParams.coast_snap_m,
    mixed_tolerance: float = MIXED_TOLERANCE,
) -> SeaResult:
    """Sea inside the rectangle ``bounds`` (w, s, e, n) from directed coastline lines, in planar units."""
    w, s, e, n = bounds
    box = shapely.box(w, s, e, n)
    lines = [ln for ln in lines if ln.length > 0 and ln.intersects(box)]
    if not lines:
        return SeaResult(Polygon(), "no_coastline", "no coastline crosses the clip rectangle", bounds)
    merged = shapely.line_merge(MultiLineString(lines), directed=True)
    parts = [g for g in getattr(merged, "geoms", [merged]) if not g.is_empty]

    # Ends: coincident ends (ways meeting head to head) are joined, not dangling; directions are
    # judged by the votes below. A lone end inside the rectangle is a gap in the coastline.
    ends = [(tuple(p.coords[-1]), True) for p in parts if not p.is_closed]
    ends += [(tuple(p.coords[0]), False) for p in parts if not p.is_closed]
    pts = np.array([xy for xy, _ in ends]).reshape(-1, 2)
    directed = list(parts)
    snapped = 0
    for i, (xy, is_end) in enumerate(ends):
        x, y = xy
        inside = w + _EPS < x < e - _EPS and s + _EPS < y < n - _EPS
        if not inside or (np.hypot(*(pts - pts[i]).T) < _EPS).sum() > 1:
            continue
        gap = min(x - w, e - x, y - s, n - y)
        if gap > snap:
            return _fail(f"incomplete coastline: it ends {gap:.0f} m inside the clip rectangle", bounds,
                         len(parts), snapped, (x, y))
        c = _connector(xy, bounds, snap + 1.0)
        directed.append(c if is_end else LineString(c.coords[::-1]))
        snapped += 1

    clipped = shapely.clip_by_rect(MultiLineString(directed), w, s, e, n)
    noded = shapely.unary_union([box.exterior, clipped])
    polys, cuts, dangles, invalid = shapely.polygonize_full([noded])
    loose = sum(g.length for g in (cuts, dangles, invalid))
    if loose > _EPS:
        return _fail(f"coastline does not close inside the clip rectangle ({loose:.1f} m of loose lines)",
                     bounds, len(parts), snapped)
    faces = shapely.orient_polygons(np.asarray(list(polys.geoms), dtype=object), exterior_cw=False)
    if len(faces) == 0:
        return _fail("polygonize gave no faces", bounds, len(parts), snapped)

    # Directed coastline segments, indexed for the nearest-segment lookup.
    seg = []
    for ln in directed:
        xy = np.asarray(ln.coords)[:, :2]
        seg.append(np.hstack([xy[:-1], xy[1:]]))
    seg = np.vstack(seg)
    tree = shapely.STRtree(shapely.linestrings(seg.reshape(-1, 2, 2)))

    # Face boundary segments: interior on the left (exterior counter-clockwise, holes clockwise).
    rings, ring_face = shapely.get_rings(faces, return_index=True)
    xy, ring_of = shapely.get_coordinates(rings, return_index=True)
    same = ring_of[:-1] == ring_of[1:]
    a, b = xy[:-1][same], xy[1:][same]
    face_of = ring_face[ring_of[:-1][same]]
    mid = (a + b) / 2
    idx, dist = tree.query_nearest(shapely.points(mid), return_distance=True, all_matches=False)
    on_coast = np.zeros(len(mid), bool)
    near = np.full(len(mid), -1)
    on_coast[idx[0]] = dist < _EPS
    near[idx[0]] = idx[1]
    d_face = b - a
    d_coast = seg[near, 2:] - seg[near, :2]
    agree = np.einsum("ij,ij->i", d_face, d_coast) > 0  # face on the coastline's left: land
    length = np.hypot(*d_face.T) * on_coast
    land = np.bincount(face_of, weights=length * agree, minlength=len(faces))
    water = np.bincount(face_of, weights=length * ~agree, minlength=len(faces))
    mixed = np.minimum(land, water) > mixed_tolerance * (land + water)
    if mixed.any():
        p = shapely.point_on_surface(faces[np.flatnonzero(mixed)[0]])
        return _fail(f"coastline directions are inconsistent: {int(mixed.sum())} face(s) lie on both sides of it",
                     bounds, len(parts), snapped, (p.x, p.y))
    is_water = water > land  # faces without coastline on their boundary (0 votes) stay land
    sea = shapely.union_all(faces[is_water]) if is_water.any() else Polygon()
    return SeaResult(sea, "ok", "", bounds, len(parts), len(faces), int(is_water.sum()), snapped)


def sea_lonlat(
    lines: Sequence[LineString],
    bounds_list: Sequence[tuple[float, float, float, float]],
    snap_m: float = LabelsParams.coast_snap_m,
    mixed_tolerance: float = MIXED_TOLERANCE,
) -> SeaResult:
    """Sea polygons in lon/lat: tries each clip rectangle (lon/lat bounds) in turn, first success wins.

    Works in a local equirectangular frame in metres (an affine map: sides and crossings are
    unchanged, tolerances are in metres). Give the read window first and the data's own extent
    after it: a complete coastline closes in the window; a clipped extract's only near its edge.
    """
    attempts: list[str] = []
    result: SeaResult | None = None
    for bounds in bounds_list:
        w, s, e, n = bounds
        if not (e > w and n > s):
            continue
        mx, my = metres_per_degree((s + n) / 2)
        fwd = lambda xy, w=w, s=s, mx=mx, my=my: (xy - (w, s)) * (mx, my)  # noqa: E731
        inv = lambda xy, w=w, s=s, mx=mx, my=my: xy / (mx, my) + (w, s)  # noqa: E731
        planar = [shapely.transform(ln, fwd) for ln in lines]
        try:
            r = sea_planar(planar, (0.0, 0.0, (e - w) * mx, (n - s) * my), snap_m, mixed_tolerance)
        except shapely.errors.GEOSException as exc:  # degenerate input geometry: no sea rather than no labels
            r = _fail(f"geometry error ({exc})", bounds, len(lines))
        at = tuple(float(v) for v in inv(np.array([r.at]))[0]) if r.at else None
        attempts.append(f"{r.status}: {r.reason}" if r.reason else r.status)
        result = SeaResult(shapely.transform(r.geometry, inv), r.status, r.reason, tuple(bounds), r.coastline_parts,
                           r.faces, r.water_faces, r.snapped_ends, at, tuple(attempts))
        if r.status != "skipped":
            return result
    if result is None:
        return SeaResult(Polygon(), "no_coastline", "no clip rectangle", None)
    return result
