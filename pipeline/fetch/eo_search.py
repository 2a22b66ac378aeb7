"""EO per scene from a STAC search: find the items (STAC API or static catalog), choose them by the rule
of :mod:`pipeline.fetch.eo_select`, download them into the cache and mosaic them into ``eo.tif``.

A STAC API (its landing page conforms to item-search) is searched with pystac-client for the
target's bbox, ``collections`` and the date window around the scene; a static catalog is walked
(pruned by its extents, with the walk cache) and filtered here. Either way the same pure rule
chooses, so an API that ignores a parameter still gives the documented choice.
"""

from __future__ import annotations

import datetime as dt
import logging
from pathlib import Path
from typing import Any

import pystac

from pipeline.fetch.cache import Cache
from pipeline.fetch.eo_mosaic import MosaicInput, mosaic_items
from pipeline.fetch.eo_select import EoSelection, EoSelectionError, EoSpec, eo_asset_key, scene_target, select_eo
from pipeline.fetch.items import expected_checksum
from pipeline.fetch.params import FetchParams
from pipeline.fetch.pc_sign import signed_cache
from pipeline.fetch.sar import _is_api as is_search_api
from pipeline.fetch.stacio import FetchError, check_href, href_dir, load_json
from pipeline.fetch.walk import WalkFilter, walk_catalog
from pipeline.provenance import sha256_file
from pipeline.regions import Region

log = logging.getLogger("sareo.fetch")


def search_api(spec: EoSpec, landing: dict[str, Any], bbox: tuple[float, ...], when: dt.datetime | None,
               p: FetchParams) -> list[tuple[str, dict[str, Any]]]:
    """(item href, item dict) of a STAC API search: bbox, collections, and +- window_days around ``when``
    (no date filter when ``when`` is None: used to explain an empty window)."""
    from pystac_client import Client
    from pystac_client.exceptions import APIError
    from pystac_client.stac_api_io import StacApiIO

    window = dt.timedelta(days=spec.window_days)
    method = next((ln.get("method", "POST") for ln in landing.get("links", []) if ln.get("rel") == "search"), "POST")
    try:
        client = Client.open(spec.search, stac_io=StacApiIO(timeout=p.timeout_s, max_retries=p.retries),
                             timeout=p.timeout_s)
        search = client.search(bbox=list(bbox), collections=list(spec.collections) or None,
                               datetime=[when - window, when + window] if when is not None else None,
                               max_items=p.max_api_items, method=method)
        return [(it.get_self_href() or spec.search, it.to_dict(include_self_link=False, transform_hrefs=False))
                for it in search.items()]
    except APIError as exc:
        raise FetchError(f"eo.search {spec.search}: the STAC API refused the search ({exc})") from None


def find_eo(spec: EoSpec, scene_footprint: Any, when: dt.datetime, aoi: Any, scene_id: str, cache: Cache,
            p: FetchParams) -> EoSelection:
    """The selection for one scene; an :class:`EoSelectionError` naming the filters if nothing passes."""
    target = scene_target(scene_footprint, aoi, scene_id)
    bbox = tuple(target.bounds)
    memo = cache.walk_memo(spec.search, p.catalog_cache_ttl_h)
    first = None if spec.search in memo[0] else load_json(spec.search, cache.transport)
    if first is not None and is_search_api(first):
        items = search_api(spec, first, bbox, when, p)
        try:
            return select_eo(items, scene_footprint, when, aoi, spec, scene_id)
        except EoSelectionError:
            # the API applied the window itself: search once more without it, so the error can say
            # how many items the window removed and how far the nearest one is
            wider = search_api(spec, first, bbox, None, p)
            if len(wider) == len(items):
                raise
            return select_eo(wider, scene_footprint, when, aoi, spec, scene_id)
    walk = walk_catalog(spec.search, cache, p, WalkFilter(bbox=bbox, by_facts=False), first, memo=memo)
    try:
        return select_eo(((h, d) for h, d in walk), scene_footprint, when, aoi, spec, scene_id)
    finally:
        walk.close()


def fetch_scene_eo(spec: EoSpec, scene_footprint: Any, when: dt.datetime, aoi: Any, scene_id: str, cache: Cache,
                   p: FetchParams, dest: Path) -> dict[str, Any]:
    """Choose, download and mosaic the EO of one scene into ``dest``; return its provenance 'eo' record.

    The record lists each chosen item (id, datetime, cloud cover, coverage, gain, asset href, sha256),
    the counts behind the choice, the mosaic grid and whether an item was resampled into it.
    """
    sel = find_eo(spec, scene_footprint, when, aoi, scene_id, cache, p)
    store = signed_cache(cache, spec.sign)
    root_dir = href_dir(spec.search)
    inputs: list[MosaicInput] = []
    records = []
    for choice in sel.chosen:
        c = choice.candidate
        assets = c.doc.get("assets") or {}
        key = eo_asset_key(assets, spec.asset, f"EO item {c.id} ({c.href})")
        asset = pystac.Asset.from_dict(dict(assets[key]))
        href = check_href(asset.href, c.href, root_dir)
        sha, size = expected_checksum(asset)
        path, digest, n = store.get(href, sha, size)
        inputs.append(MosaicInput(path, c.id, spec.bands))
        records.append({**choice.record(), "asset": key, "href": href, "sha256": digest, "bytes": n})
    mosaic = mosaic_items(inputs, sel.target, dest)
    for rec, m in zip(records, mosaic.pop("items"), strict=True):
        rec.update(resampled=m["resampled"], pixels=m["pixels"])
    gaps = [r["days_from_scene"] for r in records]
    log.info("EO %s: %d item(s), %.1f%% of the target covered", scene_id, len(records), 100 * sel.covered)
    return {"kind": "search", "source": spec.search, "collections": list(spec.collections),
            "window_days": spec.window_days, "max_cloud": spec.max_cloud, "max_gsd_m": spec.max_gsd_m,
            "scene": scene_id, "scene_datetime": when.isoformat(),
            "datetime": records[0]["datetime"], "gap_days": min(gaps), "max_gap_days": max(gaps),
            **{k: v for k, v in sel.record().items() if k != "items"}, "items": records, "mosaic": mosaic,
            "sha256": sha256_file(dest)}


def fetch_region_scene_eo(region: Region, scene_footprint: Any, when: dt.datetime, scene_id: str, cache: Cache,
                          p: FetchParams, dest: Path) -> dict[str, Any]:
    """:func:`fetch_scene_eo` for a region whose ``eo`` section is a search; the record carries its attribution."""
    if not region.eo.get("search"):
        raise FetchError(f"{region.path}: eo: not an eo.search source")
    spec = EoSpec.from_section(region.eo, region.resolve(region.eo["search"]))
    rec = fetch_scene_eo(spec, scene_footprint, when, region.aoi, scene_id, cache, p, dest)
    if region.attribution:
        rec["attribution"] = region.attribution
    return rec
