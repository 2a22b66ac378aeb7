"""The labels stage: the fetched OSM -> labels.tif, zones.tif, labels.json and labels.png on the region grid.

The OSM is read only from the region's ``source/`` (put there, hashed and recorded by the fetch
stage; see ``osm_input``), never from the region file or the network, so the stage is offline,
deterministic and fully known to DVC. Classification, burning, the sea and the urban/rural rule
live in ``pipeline.labels.classify`` / ``rasterize`` / ``coast`` / ``urban``.
"""

from __future__ import annotations

import io
import logging
import math
from pathlib import Path
from typing import TYPE_CHECKING, Any

import geopandas as gpd
import numpy as np
import rasterio
import shapely

from pipeline.atomic import atomic_path, write_json
from pipeline.documents import read_json
from pipeline.execute import Executor, local
from pipeline.grid import Grid, aoi_mask, grid_for_bbox
from pipeline.labels.classify import classify_tags, empty_classified, sea_features, with_sea
from pipeline.labels.coast import SeaResult
from pipeline.labels.params import LabelsParams
from pipeline.labels.rasterize import iter_label_blocks
from pipeline.progress import Progress
from pipeline.labels.urban import equal_area_crs, urban_rural, zone_frames
from pipeline.layout import GridFiles, LabelFiles, SourceFiles
from pipeline.legend import Legend, load_legend
from pipeline.osm import OsmParams, data_source, read_osm, read_window
from pipeline.provenance import OSM, sha256_file

if TYPE_CHECKING:
    from pipeline.regions import Region

log = logging.getLogger("sareo.labels")

ZONE_VALUES = "0 neither, 1 residential, 2 non-residential built-up, 3 sea"


class LabelsError(ValueError):
    """Inputs of the labels stage that cannot be used; the message names the file and the problem."""


def class_shares(hist: np.ndarray, legend: Legend) -> dict[str, Any]:
    """Pixel share per class over valid pixels, from a 256-bin histogram."""
    n_valid = int(hist[: legend.nodata].sum())
    return {
        "valid_pixels": n_valid,
        "nodata_pixels": int(hist[legend.nodata]),
        "classes": [
            {"id": c.id, "name": c.name, "pixels": int(hist[c.id]),
             "share": round(float(hist[c.id]) / n_valid, 6) if n_valid else 0.0}
            for c in legend.classes
        ],
    }


def render_png(
    labels_tif: Path, legend: Legend, max_px: int = LabelsParams.png_max_px, title: str = "",
    attribution: str = OSM.attribution,
) -> bytes:
    """Colour map of a labels GeoTIFF (decimated read, nearest) with a legend panel and the data credit, as PNG."""
    from PIL import Image, ImageDraw, ImageFont

    with rasterio.open(labels_tif) as src:
        scale = max(src.width, src.height) / max_px
        if scale <= 1:
            h, w = src.height, src.width
        else:
            h, w = max(1, round(src.height / scale)), max(1, round(src.width / scale))
        arr = src.read(1, out_shape=(h, w), resampling=rasterio.enums.Resampling.nearest)
    rgb = legend.palette()[arr]
    font = ImageFont.load_default()
    row_h, panel_w = 16, 230
    panel_h = row_h * (len(legend) + 3) + 8  # title, classes, no data, credit line
    canvas = Image.new("RGB", (w + panel_w, max(h, panel_h)), (255, 255, 255))
    canvas.paste(Image.fromarray(rgb, "RGB"), (0, 0))
    draw = ImageDraw.Draw(canvas)
    x0 = w + 10
    draw.text((x0, 4), title or "OSM land cover", fill=(0, 0, 0), font=font)
    entries = [(c.id, c.name, c.rgb) for c in legend.classes] + [(legend.nodata, "no data", (128, 128, 128))]
    for i, (cid, name, col) in enumerate(entries):
        y = 4 + row_h * (i + 1)
        draw.rectangle([x0, y, x0 + 12, y + 11], fill=col, outline=(0, 0, 0))
        draw.text((x0 + 18, y), f"{cid:>3} {name}", fill=(0, 0, 0), font=font)
    draw.text((x0, 4 + row_h * (len(entries) + 1)), attribution, fill=(60, 60, 60), font=font)
    buf = io.BytesIO()
    canvas.save(buf, format="PNG", optimize=False)
    return buf.getvalue()


def osm_input(source: SourceFiles) -> tuple[Path, dict[str, Any]]:
    """The OSM file the fetch stage put into ``source`` and its provenance record.

    Found through provenance.json's ``osm`` record (never the region file), and checked against
    the sha256 recorded there: labels are made from exactly the bytes that were fetched.
    """
    prov_path = source.provenance
    prov = read_json(prov_path, LabelsError, missing="missing; run the fetch stage first (it gathers the OSM input)")
    rec = prov.get("osm")
    if not isinstance(rec, dict) or not rec.get("file") or not rec.get("sha256"):
        raise LabelsError(f"{prov_path}: no 'osm' record with file and sha256; re-run the fetch stage "
                          "(it now gathers the OSM input into source/)")
    name = str(rec["file"])
    if Path(name).name != name or not name.startswith("osm."):
        raise LabelsError(f"{prov_path}: osm.file {name!r} is not a file name inside source/")
    path = source.osm(name)
    if not path.is_file():
        raise LabelsError(f"{path}: missing; provenance.json names it as the OSM input. Re-run the fetch stage")
    digest = sha256_file(path)
    if digest != rec["sha256"]:
        raise LabelsError(f"{path}: sha256 {digest} differs from {rec['sha256']} recorded in {prov_path}; "
                          "the file changed after fetch. Re-run the fetch stage")
    return path, rec


def _check_window(window: tuple[float, ...], rec: dict[str, Any], path: Path) -> None:
    """An Overpass answer holds only what was asked for: the read window must lie inside the query bbox."""
    if rec.get("kind") != "overpass" or not rec.get("bbox"):
        return
    w, s, e, n = rec["bbox"]
    eps = 1e-9
    if window[0] < w - eps or window[1] < s - eps or window[2] > e + eps or window[3] > n + eps:
        raise LabelsError(f"{path}: the read window {tuple(round(v, 7) for v in window)} is not inside the Overpass "
                          f"query bbox {tuple(rec['bbox'])} it was fetched for (osm.read_margin_m or the grid "
                          "changed?); re-run the fetch stage")


def zone_layer(land: gpd.GeoDataFrame, sea: gpd.GeoDataFrame) -> gpd.GeoDataFrame:
    """The polygons zones.tif burns: residential 1, non-residential 2 (wins over 1), sea 3 (wins over both).

    The same geometry ``urban.urban_rural`` measures (R minus N, N, both on land), so a patch's
    shares computed from zones.tif agree with the region's.
    """
    res, nonres = zone_frames(land)
    parts = [(res, 1), (nonres, 2), (sea, 3)]
    return gpd.GeoDataFrame(
        {"class_id": np.concatenate([np.full(len(f), v, np.uint8) for f, v in parts]),
         "priority": np.concatenate([np.full(len(f), v, np.int32) for f, v in parts])},
        geometry=np.concatenate([np.asarray(f.geometry.values, dtype=object) for f, _ in parts]),
        crs="EPSG:4326",
    )


def _read_grid(grid: GridFiles) -> Grid:
    try:
        return Grid.from_json(grid.grid.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise LabelsError(f"{grid.grid}: missing; run the grid stage first") from None
    except (KeyError, ValueError, TypeError) as exc:
        raise LabelsError(f"{grid.grid}: not a grid file ({exc})") from None


def label_region(
    region: Region, source: SourceFiles, grid: GridFiles, out: LabelFiles, p: LabelsParams, osm: OsmParams,
    executor: Executor | None = None,
) -> Path:
    """The labels stage: the OSM in ``source`` -> labels.tif, zones.tif, labels.json, labels.png (atomic).

    The OSM is the file the fetch stage recorded in ``source``'s provenance (see ``osm_input``),
    read over the grid plus ``osm.read_margin_m`` (the window fetch asked Overpass for).
    """
    g = _read_grid(grid)
    expected = grid_for_bbox(region.bbox, region.gsd_m)
    if g != expected:
        raise LabelsError(f"{grid.grid}: {g.width}x{g.height} at {tuple(g.transform)[:6]} is not the grid of region "
                          f"{region.name} ({expected.width}x{expected.height} at {tuple(expected.transform)[:6]}); "
                          "re-run the grid stage")
    legend = load_legend(p.legend)
    osm_path, osm_rec = osm_input(source)
    credit = data_source(osm_path)  # OpenStreetMap, unless the file says it is not OSM data
    window = read_window(g.bounds, osm.read_margin_m)
    _check_window(window, osm_rec, osm_path)
    feats = read_osm(osm_path, window, legend.keys())  # a file: of ``osm`` only the margin is read
    land = classify_tags(feats, legend)
    sea, sea_result = sea_features(feats, legend, p) if p.sea else (empty_classified(), None)
    classified = with_sea(land, sea)
    urban = urban_rural(land, region.aoi, p, sea=sea)
    zones = zone_layer(land, sea)
    block, tile = p.block_size, p.tile_size
    executor = executor or local()
    profile = {"driver": "GTiff", "dtype": "uint8", "count": 1, "width": g.width, "height": g.height,
               "crs": g.crs, "transform": g.transform, "tiled": True, "blockxsize": tile, "blockysize": tile,
               "compress": "deflate", "predictor": 1, "interleave": "band"}
    hist = np.zeros(256, np.int64)
    polygon = region.aoi if getattr(region, "aoi_geojson", None) else None  # a bbox AOI is the grid itself
    # Labels describe the ground of the whole AOI: the same for every scene. Each patch then marks
    # no data (255) where its own scene's SAR or EO has none (the patches stage).
    with atomic_path(out.dir) as tmp:
        tmp.mkdir(parents=True)
        t = out.at(tmp)
        with rasterio.open(t.labels, "w", nodata=legend.nodata, **profile) as dst:
            dst.update_tags(legend="pipeline/legend.yaml", attribution=credit.attribution)
            n_blocks = math.ceil(g.height / block) * math.ceil(g.width / block)
            with Progress(f"labels {region.name}", n_blocks, "blocks", logger=log) as bar:
                for win, arr in iter_label_blocks(classified, g.crs, g.transform, g.shape, None, block,
                                                  executor=executor, what=f"labels {region.name}: labels.tif"):
                    inside = aoi_mask(polygon, g, win)
                    if inside is not None:
                        arr[~inside] = legend.nodata
                    hist += np.bincount(arr.ravel(), minlength=256)
                    dst.write(arr, 1, window=win)
                    bar.update()
        with rasterio.open(t.zones, "w", **profile) as dst:
            dst.update_tags(values=ZONE_VALUES, attribution=credit.attribution)
            for win, arr in iter_label_blocks(zones, g.crs, g.transform, g.shape, None, block, executor=executor,
                                              what=f"labels {region.name}: zones.tif"):
                dst.write(arr, 1, window=win)
        report = {
            "region": region.name,
            "grid": g.to_dict(),
            "legend": legend.to_dict(),
            "shares": class_shares(hist, legend),
            "urban_rural": urban,
            "osm": {**feats.report(), "source": osm_rec.get("source"), "kind": osm_rec.get("kind"),
                    "file": osm_rec["file"], "sha256": osm_rec["sha256"],
                    "classified_features": int(len(land))},
            "sea": sea_report(sea_result, sea, g.bounds),
            "attribution": credit.attribution,
            "licence": credit.licence,
        }
        write_json(t.report, report)
        t.png.write_bytes(render_png(t.labels, legend, p.png_max_px, region.name, credit.attribution))
    log.info("labels: %s -> %s (%s)", region.name, out.dir, urban["class"])
    return out.dir


def sea_report(result: SeaResult | None, sea: gpd.GeoDataFrame, bounds: tuple[float, ...]) -> dict[str, Any]:
    """labels.json's ``sea``: how the coastline went and the sea polygons' area and share of the grid.

    The share is the vector sea inside the grid rectangle (equal-area CRS), before piers,
    bridges and other mapped features are burnt on top of it.
    """
    if result is None:
        return {"status": "disabled", "area_km2": 0.0, "grid_share": 0.0}
    box = shapely.box(*bounds)
    crs = equal_area_crs(box)
    box_ea = gpd.GeoSeries([box], crs="EPSG:4326").to_crs(crs).iloc[0]
    area = 0.0
    if len(sea):
        area = float(sea.to_crs(crs).geometry.intersection(box_ea).area.sum())
    return {**result.report(), "area_km2": round(area / 1e6, 6), "grid_share": round(area / box_ea.area, 6)}
