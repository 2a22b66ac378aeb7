"""SAR fetching: the region's one SAR product (and Capella's metadata) into ``source/``.

From a static catalog (walked), a STAC API (pystac-client: static catalogs cannot be searched)
or a GeoTIFF named by the region file. Items are filtered and ranked by :mod:`pipeline.fetch.items`
and the best ONE is used.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pipeline.fetch.cache import Cache, link_or_copy
from pipeline.fetch.geotiff import check_geotiff
from pipeline.fetch.items import (
    SELECTION_RULE,
    Candidate,
    coverage,
    expected_checksum,
    item_facts,
    rank_key,
    reject_reason,
    select_data_asset,
    select_metadata_asset,
)
from pipeline.fetch.params import FetchParams
from pipeline.fetch.stacio import FetchError, check_href, href_dir, load_json
from pipeline.fetch.walk import WalkFilter, WalkStats, walk_catalog
from pipeline.layout import SourceFiles
from pipeline.provenance import local_source, sar_source
from pipeline.regions import NOT_GEOCODED, Region

log = logging.getLogger("sareo.fetch")


@dataclass
class WalkResult:
    """The matching items of a catalog, ranked, and what was read, rejected and pruned to find them."""

    candidates: list[Candidate] = field(default_factory=list)
    rejected: dict[str, list[str]] = field(default_factory=dict)
    read: int = 0
    catalogs: int = 0
    pruned: dict[str, int] = field(default_factory=dict)


def _is_api(doc: dict[str, Any]) -> bool:
    return any("item-search" in c for c in doc.get("conformsTo", [])) and any(
        ln.get("rel") == "search" for ln in doc.get("links", [])
    )


def search_api(
    href: str, landing: dict[str, Any], region: Region, p: FetchParams
) -> list[tuple[dict[str, Any], str]]:
    """Items from a STAC API (pystac-client) for the region's bbox, datetime and ids."""
    from pystac_client import Client
    from pystac_client.stac_api_io import StacApiIO

    sar = region.sar
    io = StacApiIO(timeout=p.timeout_s, max_retries=p.retries)
    client = Client.open(href, stac_io=io, timeout=p.timeout_s)
    search = client.search(
        bbox=list(region.bbox),
        datetime=sar.get("datetime"),
        ids=sar.get("ids"),
        max_items=p.max_api_items,
        method=next((ln.get("method", "POST") for ln in landing["links"] if ln.get("rel") == "search"), "POST"),
    )
    return [(it.to_dict(include_self_link=False, transform_hrefs=False), it.get_self_href() or href)
            for it in search.items()]


def find_sar_items(region: Region, cache: Cache, p: FetchParams) -> tuple[WalkResult, str]:
    """All matching items of the region's catalog, ranked; raises naming the reasons if none match."""
    sar = region.sar
    href = region.resolve(sar["stac"])
    filt = WalkFilter.for_region(region, p)
    want = set(filt.want_ids or ()) or None
    explicit_product = filt.explicit_product
    aoi = region.aoi
    stats = WalkStats()
    memo = cache.walk_memo(href, p.catalog_cache_ttl_h)
    first = None if href in memo[0] else load_json(href, cache.transport)  # a cached root is no API
    if first is not None and _is_api(first):
        pairs: Iterable[tuple[str, dict[str, Any]]] = [(h, d) for d, h in search_api(href, first, region, p)]
    else:
        pairs = walk_catalog(href, cache, p, filt, first, stats, memo)
    res = WalkResult()
    try:
        for ih, doc in pairs:
            res.read += 1
            facts = item_facts(doc)
            if want and facts.id not in want:
                continue
            if facts.product in NOT_GEOCODED and (want or ih == href):
                raise FetchError(
                    f"{facts.id}: product {facts.product} is not geocoded (complex / slant range); "
                    "the pipeline needs a GEO or GEC GeoTIFF"
                )
            cov = coverage(aoi, doc)
            why = reject_reason(facts, cov, sar, explicit_product)
            if why:
                res.rejected.setdefault(why, []).append(facts.id)
            else:
                res.candidates.append(Candidate(doc, ih, facts, cov))
    finally:  # stop the walk's readers now, not when the generator is collected
        getattr(pairs, "close", lambda: None)()
    res.catalogs, res.pruned = stats.catalogs, dict(sorted(stats.pruned.items()))
    if want and (missing := want - {c.facts.id for c in res.candidates}
                 - {i for v in res.rejected.values() for i in v}):
        raise FetchError(f"{href}: sar.ids not found in the catalog: {sorted(missing)}")
    if not res.candidates:
        counts = ", ".join(f"{k}: {len(v)}" for k, v in sorted(res.rejected.items())) or "none"
        pruned = ", ".join(f"{k}: {v}" for k, v in res.pruned.items())
        if res.rejected and set(res.rejected) == {"outside AOI"}:
            raise FetchError(
                f"{href}: no item intersects the AOI {region.bbox} of region {region.name} ({res.read} items read)"
            )
        raise FetchError(
            f"{href}: no item matches region {region.name} (AOI {region.bbox}, product {sar.get('product')}, "
            f"polarization {sar.get('polarization', 'any')}, datetime {sar.get('datetime', 'any')}); "
            f"{res.read} items read, rejected by {counts}" + (f"; links pruned unread: {pruned}" if pruned else "")
        )
    res.candidates.sort(key=lambda c: rank_key(c.facts, c.coverage))
    return res, href


GEOMETRY_FIELDS = ("view:incidence_angle", "view:off_nadir", "view:azimuth", "sar:observation_direction",
                   "sat:orbit_state", "constellation", "umbra:squint_angle_degrees_off_broadside")


def fetch_sar(region: Region, cache: Cache, p: FetchParams, out: SourceFiles) -> dict[str, Any]:
    """Put ``out.sar`` (and ``out.sar_metadata``) in place; return the provenance 'sar' record."""
    sar = region.sar
    if sar.get("file"):
        href = region.resolve(sar["file"])
        path, digest, n = cache.get(href)
        check_geotiff(path, href, region.aoi)
        link_or_copy(path, out.sar)
        provider = sar.get("provider", "unknown")
        rec: dict[str, Any] = {"item_id": None, "href": href, "datetime": sar.get("datetime"), "sha256": digest,
                               "bytes": n, "catalog": None, "provider": provider, "product": sar.get("product"),
                               "polarization": sar.get("polarization"), **_licence(provider, region)}
        if sar.get("metadata"):
            mhref = region.resolve(sar["metadata"])
            mpath, mdigest, _ = cache.get(mhref)
            _check_json(mpath, mhref)
            link_or_copy(mpath, out.sar_metadata)
            rec["metadata"] = {"href": mhref, "sha256": mdigest}
        return rec

    found, catalog = find_sar_items(region, cache, p)
    best = found.candidates[0]
    item, facts = best.item, best.facts
    root_dir = href_dir(catalog)
    key, asset = select_data_asset(item, sar.get("polarization"))
    href = check_href(asset.href, best.href, root_dir)
    sha, size = expected_checksum(asset)
    path, digest, n = cache.get(href, sha, size)
    check_geotiff(path, f"{item.id} asset {key!r} ({href})", region.aoi)
    link_or_copy(path, out.sar)
    ranked = [{"item_id": c.facts.id, "coverage": round(c.coverage, 6), "datetime": c.facts.datetime}
              for c in found.candidates[: p.max_candidates]]
    rec = {
        "item_id": item.id, "item_href": best.href, "asset": key, "href": href, "datetime": facts.datetime,
        "start_datetime": facts.start.isoformat() if facts.start else None,
        "end_datetime": facts.end.isoformat() if facts.end else None,
        "sha256": digest, "bytes": n, "catalog": catalog, "provider": facts.provider, "product": facts.product,
        "polarization": sar.get("polarization") or (facts.polarizations[0] if facts.polarizations else None),
        "mode": facts.mode, "coverage": round(best.coverage, 6), "selection": SELECTION_RULE,
        "candidates": ranked, "candidates_total": len(found.candidates), "items_read": found.read,
        "catalogs_read": found.catalogs, "pruned": found.pruned,
        "rejected": {k: len(v) for k, v in sorted(found.rejected.items())},
        "calibrated": facts.provider == "capella",
        **_licence(facts.provider, region),
    }
    view = {k: v for k, v in sorted(item.properties.items()) if k in GEOMETRY_FIELDS}
    if view:  # the acquisition geometry registration uses (pipeline.geometry), when no metadata file gives it
        rec["view"] = view
    if facts.provider == "umbra":
        rec["note"] = (
            "Umbra GEC is a display product without a calibration constant: relative, uncalibrated backscatter"
        )
    meta = select_metadata_asset(item, facts.provider)
    if meta:
        mhref = check_href(meta[1].href, best.href, root_dir)
        msha, msize = expected_checksum(meta[1])
        mpath, mdigest, _ = cache.get(mhref, msha, msize)
        _check_json(mpath, mhref)
        link_or_copy(mpath, out.sar_metadata)
        rec["metadata"] = {"asset": meta[0], "href": mhref, "sha256": mdigest}
    log.info("SAR %s: %s (%d bytes) of %d candidate(s)", region.name, item.id, n, len(found.candidates))
    return rec


def _check_json(path: Path, href: str) -> None:
    """Refuse metadata that is not JSON before it lands in source/."""
    try:
        json.loads(path.read_text(encoding="utf-8"))
    except (ValueError, UnicodeDecodeError) as exc:
        raise FetchError(f"{href}: metadata is not JSON ({exc})") from None


def _licence(provider: str, region: Region) -> dict[str, str]:
    """A known provider's licence and attribution (pipeline.provenance); else the region file's attribution."""
    src = sar_source(provider) or local_source(region.attribution)
    return {"licence": src.licence, "attribution": src.attribution}

