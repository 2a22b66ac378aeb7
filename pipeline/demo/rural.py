"""The demo's procedural rural OSM: fields, a river, a forest, farmsteads and a village, as OSM XML.

Deterministic for a seed. The XML root's ``copyright`` notice says it is not OpenStreetMap
data, so ``pipeline.osm.data_source`` credits labels made from it with that notice, not OSM.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any
from xml.sax.saxutils import quoteattr

import numpy as np
import shapely
from shapely.geometry import LineString, Polygon, box
from shapely.ops import unary_union

from pipeline.grid import metres_per_degree

PROCEDURAL_NOTICE = "sareo demo: procedural, no OSM data"


def _poly_xy(
    rng: np.random.Generator, cx: float, cy: float, rx: float, ry: float, n: int = 14, jitter: float = 0.15
) -> Polygon:
    a = np.linspace(0, 2 * math.pi, n, endpoint=False)
    r = 1 + jitter * rng.uniform(-1, 1, n)
    return Polygon(np.c_[cx + rx * r * np.cos(a), cy + ry * r * np.sin(a)])


def _house(cx: float, cy: float, w: float, h: float, angle_deg: float) -> Polygon:
    a = math.radians(angle_deg)
    pts = [(-w / 2, -h / 2), (w / 2, -h / 2), (w / 2, h / 2), (-w / 2, h / 2)]
    return Polygon([(cx + x * math.cos(a) - y * math.sin(a), cy + x * math.sin(a) + y * math.cos(a)) for x, y in pts])


def procedural_rural(extent_m: tuple[float, float], seed: int) -> list[tuple[Any, dict[str, str]]]:
    """Rural features in local metres (x east, y north from the SW corner) with OSM tags.

    Fields in parcels separated by tracks, a meandering river with a wetland, a forest with
    a clearing (a multipolygon), a secondary road, farmsteads, and a small village with
    houses on residential streets. Deterministic for a seed.
    """
    rng = np.random.default_rng([int(seed), 0x0F5A])
    w, h = extent_m
    feats: list[tuple[Any, dict[str, str]]] = []
    ys = np.linspace(-20, h + 20, 80)
    river_x = (
        0.34 * w
        + 0.06 * w * np.sin(2 * math.pi * ys / (0.7 * h) + rng.uniform(0, 6))
        + 0.02 * w * np.sin(2 * math.pi * ys / (0.23 * h))
    )
    river = LineString(np.c_[river_x, ys])
    feats.append((river, {"waterway": "river", "name": "Sävjaån", "width": "14"}))
    road_y = 0.55 * h
    xs = np.linspace(-20, w + 20, 40)
    road = LineString(np.c_[xs, road_y + 0.04 * h * np.sin(2 * math.pi * xs / w + 0.4)])
    feats.append((road, {"highway": "secondary", "ref": "272", "name": "Uppsalavägen"}))
    forest_outer = Polygon(
        [(-20, -20), (0.24 * w, -20), (0.28 * w, 0.3 * h), (0.22 * w, 0.75 * h), (0.26 * w, h + 20), (-20, h + 20)]
    )
    clearing = _poly_xy(rng, 0.11 * w, 0.62 * h, 0.06 * w, 0.05 * h)
    feats.append(((forest_outer, clearing), {"type": "multipolygon", "landuse": "forest"}))
    feats.append((clearing, {"landuse": "meadow"}))
    wet = river.buffer(28).intersection(box(0, 0.05 * h, w, 0.3 * h)).difference(river.buffer(7))
    feats.append((wet, {"natural": "wetland", "wetland": "marsh"}))
    village = Polygon([(0.66 * w, 0.6 * h), (0.95 * w, 0.6 * h), (0.97 * w, 0.9 * h), (0.7 * w, 0.93 * h)])
    feats.append((village, {"landuse": "residential", "name": "Lilla Ekeby"}))
    streets = [
        LineString([(0.68 * w, 0.72 * h), (0.96 * w, 0.74 * h)]),
        LineString([(0.8 * w, road_y), (0.82 * w, 0.92 * h)]),
    ]
    for s in streets:
        feats.append((s, {"highway": "residential"}))
    taken = [river.buffer(14), wet, forest_outer.buffer(4), village.buffer(5), road.buffer(8)]
    houses = []
    for s in streets:
        for d in np.arange(18, s.length - 10, 24):
            p = s.interpolate(d)
            for side in (-1, 1):
                hx, hy = p.x + side * 3, p.y + side * 16
                hp = _house(hx, hy, rng.uniform(9, 13), rng.uniform(8, 11), rng.uniform(-8, 8))
                if (
                    village.contains(hp)
                    and not any(hp.intersects(o) for o in houses)
                    and not hp.intersects(unary_union(streets).buffer(4))
                ):
                    houses.append(hp)
    for hp in houses:
        feats.append((hp, {"building": "house"}))
    church = _house(0.9 * w, 0.84 * h, 14, 26, 5)
    if not any(church.intersects(o) for o in houses):
        feats.append((church, {"building": "church", "amenity": "place_of_worship"}))
    farms = [(0.5 * w, 0.3 * h), (0.55 * w, 0.82 * h), (0.86 * w, 0.2 * h)]
    for fx, fy in farms:
        yard = _poly_xy(rng, fx, fy, 45, 38, jitter=0.08)
        feats.append((yard, {"landuse": "farmyard"}))
        feats.append((_house(fx - 12, fy + 10, 30, 14, rng.uniform(-10, 10)), {"building": "barn"}))
        feats.append((_house(fx + 16, fy - 12, 11, 9, rng.uniform(-10, 10)), {"building": "farm"}))
        feats.append((LineString([(fx, fy), (fx + 5, road_y)]), {"highway": "service", "service": "driveway"}))
        taken.append(yard.buffer(4))
    pond = _poly_xy(rng, 0.62 * w, 0.42 * h, 22, 14)
    feats.append((pond, {"natural": "water", "water": "pond"}))
    taken.append(pond.buffer(3))
    blocked = unary_union(taken)
    # Parcels: a jittered grid east of the river; tracks along the parcel edges.
    px = np.linspace(0.16 * w, w + 20, 7)
    py = np.linspace(-20, h + 20, 7)
    for i in range(len(px) - 1):
        for j in range(len(py) - 1):
            cell = box(px[i] + 3, py[j] + 3, px[i + 1] - 3, py[j + 1] - 3).difference(blocked)
            if cell.area < 800:
                continue
            tag = rng.choice(["farmland", "farmland", "farmland", "meadow"])
            for part in getattr(cell, "geoms", [cell]):
                if part.area >= 800:
                    feats.append(
                        (part.simplify(0.5), {"landuse": str(tag), "crop": "cereal" if tag == "farmland" else "grass"})
                    )
    for i in range(1, len(px) - 1):
        track = LineString([(px[i], -20), (px[i], h + 20)]).difference(blocked)
        for part in getattr(track, "geoms", [track]):
            if part.length > 30:
                feats.append((part, {"highway": "track", "tracktype": "grade2"}))
    scrub = _poly_xy(rng, 0.42 * w, 0.05 * h, 40, 25).difference(river.buffer(10))
    feats.append((scrub, {"natural": "scrub"}))
    return feats


def osm_xml(
    features: list[tuple[Any, dict[str, str]]], to_lonlat: Any, bounds: tuple[float, float, float, float]
) -> str:
    """Serialise (geometry, tags) in local metres to OSM XML 0.6 (closed ways, multipolygon relations)."""
    nodes: list[str] = []
    ways: list[str] = []
    rels: list[str] = []
    nid = wid = rid = 0

    def way(coords: list[tuple[float, float]], tags: dict[str, str] | None) -> int:
        nonlocal nid, wid
        refs = []
        for x, y in coords:
            nid += 1
            lon, lat = to_lonlat(x, y)
            nodes.append(f'  <node id="{nid}" version="1" lat="{lat:.7f}" lon="{lon:.7f}"/>')
            refs.append(nid)
        if len(coords) > 2 and coords[0] == coords[-1]:
            refs[-1] = refs[0]
            nodes.pop()
            nid -= 1
        wid += 1
        body = [f'    <nd ref="{r}"/>' for r in refs] + [
            f"    <tag k={quoteattr(k)} v={quoteattr(v)}/>" for k, v in (tags or {}).items()
        ]
        ways.append(f'  <way id="{wid}" version="1">\n' + "\n".join(body) + "\n  </way>")
        return wid

    def ring(p: Polygon) -> list[tuple[float, float]]:
        return [(round(x, 2), round(y, 2)) for x, y in shapely.geometry.polygon.orient(p, 1.0).exterior.coords]

    for geom, tags in features:
        if isinstance(geom, tuple):  # (outer, inner) multipolygon relation
            outer, inner = geom
            o, i = way(ring(outer), None), way(ring(inner), None)
            rid += 1
            members = [
                f'    <member type="way" ref="{o}" role="outer"/>',
                f'    <member type="way" ref="{i}" role="inner"/>',
            ]
            body = members + [f"    <tag k={quoteattr(k)} v={quoteattr(v)}/>" for k, v in tags.items()]
            rels.append(f'  <relation id="{rid}" version="1">\n' + "\n".join(body) + "\n  </relation>")
            continue
        for part in getattr(geom, "geoms", [geom]):
            if part.is_empty:
                continue
            if part.geom_type == "Polygon":
                way(ring(part), tags)
            elif part.geom_type == "LineString":
                way([(round(x, 2), round(y, 2)) for x, y in part.coords], tags)
    w, s, e, n = bounds
    head = [
        "<?xml version='1.0' encoding='UTF-8'?>",
        '<osm version="0.6" generator="sareo demo (procedural rural scene; not real OpenStreetMap data)" '
        f"copyright={quoteattr(PROCEDURAL_NOTICE)}>",
        f'  <bounds minlat="{s:.7f}" minlon="{w:.7f}" maxlat="{n:.7f}" maxlon="{e:.7f}"/>',
    ]
    return "\n".join(head + nodes + ways + rels + ["</osm>"]) + "\n"


def write_procedural_osm(path: Path, bbox: tuple[float, float, float, float], margin_m: float, seed: int) -> Path:
    """Generate the rural scene over ``bbox`` + margin and write it as OSM XML."""
    west, south, east, north = bbox
    mx, my = metres_per_degree((south + north) / 2)
    w_m, h_m = (east - west) * mx, (north - south) * my
    pad = margin_m + 60.0
    feats = procedural_rural((w_m + 2 * pad, h_m + 2 * pad), seed)

    def to_lonlat(x: float, y: float) -> tuple[float, float]:
        return west + (x - pad) / mx, south + (y - pad) / my

    lo = to_lonlat(0, 0)
    hi = to_lonlat(w_m + 2 * pad, h_m + 2 * pad)
    text = osm_xml(feats, to_lonlat, (lo[0], lo[1], hi[0], hi[1]))
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text, encoding="utf-8")
    return path
