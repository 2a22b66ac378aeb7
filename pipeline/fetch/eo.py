"""EO fetching: the region's optical image into ``source/`` as uint8 RGB with a mask, native CRS.

From XYZ/TMS tiles (mosaicked whole, never resampled: the grid stage resamples once), a STAC
item or catalog (the best-covering item's visual/data GeoTIFF), or a GeoTIFF file.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pystac

from pipeline import tiles as xyz
from pipeline.fetch.cache import Cache, link_or_copy
from pipeline.fetch.eo_select import eo_asset_key
from pipeline.fetch.geotiff import check_geotiff, to_uint8_rgb, whole_geotiff
from pipeline.fetch.items import Candidate, coverage, item_facts, rank_key
from pipeline.fetch.params import FetchParams
from pipeline.fetch.sar import catalog_root
from pipeline.fetch.stacio import FetchError, NotFound, check_href, is_remote, load_json, local_path
from pipeline.fetch.walk import WalkFilter, walk_catalog
from pipeline.provenance import sha256_file
from pipeline.regions import Region


def fetch_eo(region: Region, cache: Cache, p: FetchParams, dest: Path) -> dict[str, Any]:
    """Write the EO image to ``dest`` (uint8 RGB + mask, native CRS); return the provenance 'eo' record."""
    eo = region.eo
    rec: dict[str, Any] = {"datetime": eo.get("datetime")}
    if eo.get("tiles"):
        template = region.resolve(eo["tiles"])
        lat = (region.bbox[1] + region.bbox[3]) / 2
        zoom = eo.get("zoom")
        if zoom is None:
            zoom = xyz.zoom_for_gsd(lat, region.gsd_m, p.tile_zoom_factor, p.max_zoom, p.tile_size)
        summary = xyz.mosaic(template, region.bbox, int(zoom), dest, lambda h: _read_tile(cache, h, p.tile_size),
                             p.tile_size, p.workers)
        rec.update({"source": template, "kind": "tiles", "zoom": int(zoom), "tiles": summary})
    else:
        if eo.get("stac"):
            href, item_rec = _eo_from_stac(region, cache, p)
            rec.update(item_rec)
            rec["datetime"] = eo.get("datetime") or item_rec["item_datetime"]
        else:
            href = region.resolve(eo["file"])
            rec.update({"source": href, "kind": "file"})
        path, digest, n = cache.get(href, check=whole_geotiff(href))
        info = check_geotiff(path, href, region.aoi)
        rec.update({"source_sha256": digest, "source_bytes": n})
        if info["dtype"] == "uint8" and info["count"] == 3 and eo.get("bands") in (None, [1, 2, 3]):
            link_or_copy(path, dest)
        else:
            to_uint8_rgb(path, dest, eo.get("bands"), href)
    rec["sha256"] = sha256_file(dest)
    if region.attribution:
        rec.setdefault("attribution", region.attribution)
    return rec


def _read_tile(cache: Cache, href: str, tile_size: int) -> bytes | None:
    """A tile's bytes (cached when remote, only once they decode), None when it does not exist."""
    try:
        if is_remote(href):
            path, _, _ = cache.get(href, check=lambda path, d, n: xyz.decode_tile(path.read_bytes(), tile_size, href))
            return path.read_bytes()
        p = local_path(href)
        return p.read_bytes() if p.is_file() else None
    except NotFound:
        return None


def _eo_from_stac(region: Region, cache: Cache, p: FetchParams) -> tuple[str, dict[str, Any]]:
    """The EO asset of a STAC item (``eo.asset`` or the visual/data GeoTIFF)."""
    eo = region.eo
    href = region.resolve(eo["stac"])
    doc = load_json(href, cache.transport)
    if doc.get("type") != "Feature":
        items = [Candidate(d, h, item_facts(d), coverage(region.aoi, d))
                 for h, d in walk_catalog(href, cache, p, WalkFilter(bbox=tuple(region.bbox), by_facts=False), doc,
                                          root_dir=catalog_root(region, region.eo, "eo", href))]
        items = [c for c in items if c.coverage > 0]
        if not items:
            raise FetchError(f"{href}: no EO item intersects the AOI {region.bbox} of region {region.name}")
        items.sort(key=lambda c: rank_key(c.facts, c.coverage))
        item, ihref = items[0].item, items[0].href
    else:
        item, ihref = pystac.Item.from_dict(doc, href=href, preserve_dict=False), href
    key = eo_asset_key(item.assets, eo.get("asset"), ihref)
    asset_href = check_href(item.assets[key].href, ihref, catalog_root(region, region.eo, "eo", href))
    return asset_href, {"source": asset_href, "kind": "stac", "item_id": item.id, "item_href": ihref, "asset": key,
                        "item_datetime": item.properties.get("datetime")}

