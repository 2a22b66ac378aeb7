"""The fetch stage: one SAR product, one EO image and the OSM input per region, gathered once, with provenance.

SAR comes from static STAC catalogs (Capella, Umbra: walked link by link with pystac, since
pystac-client cannot search them) or from a STAC API (pystac-client), or from a local GeoTIFF.
Items are filtered by AOI, date, product, polarisation and mode, ranked deterministically
(best AOI coverage, then newest, then id) and the best ONE is used. Its data asset is chosen
by what the asset *is* (suffix, media type, title, roles), because Umbra's asset keys vary.

Everything remote goes through :class:`pipeline.stacio.Transport` (retries, timeouts,
anonymous S3) into a content cache (``cache_dir``, sanitised names, atomic renames, sha256 and
size checks), and is hardlinked from there into ``out_dir``, which appears atomically.
The region's OSM (an extract, or an Overpass answer saved as OSM XML) lands there too, so
every external input of a region sits in ``source/`` with a checksum and later stages are offline.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import logging
import os
import re
import shutil
import time
from collections import Counter
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pystac

from pipeline import osm as osmio
from pipeline import tiles as xyz
from pipeline.atomic import atomic_path, write_bytes, write_json
from pipeline.grid import grid_for_bbox
from pipeline.provenance import local_source, parse_datetime, sar_source, sha256_file
from pipeline.regions import NOT_GEOCODED, Region
from pipeline.stacio import (
    CatalogReader,
    Expansion,
    FetchError,
    NotFound,
    Transport,
    Unsafe,
    WalkStats,
    href_dir,
    is_remote,
    is_within,
    join_href,
    load_json,
    local_path,
    scheme,
    walk_tree,
)

log = logging.getLogger("sareo.fetch")

DEFAULTS: dict[str, Any] = {
    "retries": 3,  # extra attempts after the first, per request
    "backoff_s": 0.5,  # first retry delay; doubles each time
    "timeout_s": 30.0,  # connect/read timeout per request
    "cache_dir": ".cache/sareo",  # used when fetch_region gets cache_dir=None
    "s3_endpoint": None,  # e.g. http://127.0.0.1:5000 (else $SAREO_S3_ENDPOINT / $AWS_ENDPOINT_URL / AWS)
    "s3_region": "us-west-2",
    "tile_zoom_factor": 1.0,  # zoom: smallest with ground resolution <= gsd_m * factor
    "max_zoom": 22,
    "tile_size": 256,
    "workers": 4,  # concurrent tile downloads
    "max_candidates": 10,  # ranked SAR candidates recorded in provenance.json
    "max_api_items": 500,  # items asked from a STAC API search (static catalogs are walked fully)
    "walk_workers": 16,  # concurrent catalog/item JSON reads while walking a static catalog
    "catalog_cache_ttl_h": 24.0,  # walk cache of remote static catalogs, reused across regions; 0 = off
    "walk_hierarchy": "auto",  # auto | all | datetime | product-type | ...: which parallel hierarchy to walk
}

CAPELLA_ID = re.compile(
    r"^CAPELLA_(?P<platform>C\d{2})_(?P<mode>SP|SM|SS)_(?P<product>SLC|GEO|GEC|SICD|SIDD|CPHD)_"
    r"(?P<pol>HH|VV|HV|VH)_(?P<start>\d{14})_(?P<end>\d{14})$"
)
MODES = {"spotlight": "SP", "stripmap": "SM", "sliding_spotlight": "SS", "sliding spotlight": "SS"}
SELECTION_RULE = "best AOI coverage, then newest datetime, then item id"
WALK_FORMAT = "sareo-walk/1"


# --------------------------------------------------------------------------- item facts (pure)


def parse_capella_id(item_id: str) -> dict[str, str] | None:
    """The fields of a Capella item id, or None if ``item_id`` is not one."""
    m = CAPELLA_ID.match(item_id)
    return m.groupdict() if m else None


@dataclass(frozen=True)
class ItemFacts:
    """What filtering and ranking need to know about an item, however its provider spells it."""

    id: str
    provider: str
    product: str
    polarizations: tuple[str, ...]
    mode: str
    start: dt.datetime | None
    end: dt.datetime | None
    datetime: str


def item_facts(item: pystac.Item | dict[str, Any]) -> ItemFacts:
    """Provider, product, polarisations, mode and time of an item (Capella: from its id first).

    Takes a pystac Item or its dict: the walk keeps dicts and builds an Item only for the winner.
    """
    item_id, props = (item.id, item.properties) if isinstance(item, pystac.Item) else (
        str(item.get("id")), item.get("properties") or {})
    cap = parse_capella_id(item_id)
    if cap:
        provider = "capella"
    elif props.get("constellation", "").lower() == "umbra" or any(k.startswith("umbra:") for k in props):
        provider = "umbra"
    else:
        provider = str(props.get("constellation") or "unknown").lower()
    product = (cap["product"] if cap else str(props.get("sar:product_type", ""))).upper()
    pols = (cap["pol"],) if cap else tuple(str(p).upper() for p in props.get("sar:polarizations", []))
    mode = cap["mode"] if cap else MODES.get(str(props.get("sar:instrument_mode", "")).lower(), "")
    when = props.get("datetime") or props.get("start_datetime")
    start = parse_datetime(props.get("start_datetime") or when)
    end = parse_datetime(props.get("end_datetime") or when)
    return ItemFacts(item_id, provider, product, pols, mode, start, end, str(when or ""))


def capella_id_facts(item_id: str) -> ItemFacts | None:
    """Facts from a Capella id alone (times to the second, as the id has them): used to prune
    item links before reading the item. None if ``item_id`` is not a Capella id."""
    cap = parse_capella_id(item_id)
    if not cap:
        return None
    start, end = (dt.datetime.strptime(cap[k], "%Y%m%d%H%M%S").replace(tzinfo=dt.timezone.utc)
                  for k in ("start", "end"))
    return ItemFacts(item_id, "capella", cap["product"], (cap["pol"],), cap["mode"], start, end, start.isoformat())


def date_range(value: str | None) -> tuple[dt.datetime | None, dt.datetime | None]:
    """'START/END' (dates, '..' or empty for open ends) as UTC datetimes; END is inclusive."""
    if not value:
        return None, None
    a, _, b = value.partition("/")
    lo = parse_datetime(a[:10] + "T00:00:00Z") if a and a != ".." else None
    hi = parse_datetime(b[:10] + "T00:00:00Z") + dt.timedelta(days=1) if b and b != ".." else None
    return lo, hi


def footprint(item: pystac.Item | dict[str, Any]):  # -> shapely geometry
    import shapely
    from shapely.geometry import box, shape

    geometry, bbox, item_id = ((item.geometry, item.bbox, item.id) if isinstance(item, pystac.Item)
                               else (item.get("geometry"), item.get("bbox"), item.get("id")))
    if geometry:
        return shapely.force_2d(shape(geometry))  # drop Umbra's heights
    if bbox:
        return box(*bbox[:2], *bbox[-2:]) if len(bbox) == 4 else box(*bbox[:2], *bbox[3:5])
    raise FetchError(f"{item_id}: item has neither geometry nor bbox")


def coverage(aoi, item: pystac.Item | dict[str, Any]) -> float:
    """Share of the AOI area inside the item footprint (lon/lat areas: only used for ranking)."""
    return float(aoi.intersection(footprint(item)).area / aoi.area) if aoi.area > 0 else 0.0


def reject_reason(facts: ItemFacts, cov: float, sar: dict[str, Any], explicit_product: bool) -> str | None:
    """Why an item does not match the region's sar section, or None if it does."""
    if cov <= 0:
        return "outside AOI"
    return facts_reason(facts, sar, explicit_product)


def facts_reason(facts: ItemFacts, sar: dict[str, Any], explicit_product: bool) -> str | None:
    """:func:`reject_reason` without the AOI test: all an item link's Capella id can tell."""
    lo, hi = date_range(sar.get("datetime"))
    if lo and facts.end and facts.end < lo or hi and facts.start and facts.start >= hi:
        return "datetime"
    if facts.product not in accepted_products(sar, explicit_product, facts.provider):
        return "not geocoded" if facts.product in NOT_GEOCODED else "product"
    if sar.get("polarization") and sar["polarization"] not in facts.polarizations:
        return "polarization"
    if sar.get("mode") and facts.mode and sar["mode"] != facts.mode:
        return "mode"
    if sar.get("provider") and sar["provider"] != facts.provider:
        return "provider"
    return None


def accepted_products(sar: dict[str, Any], explicit_product: bool, provider: str | None) -> set[str]:
    """``sar.product`` (default GEO); an Umbra item (or an unknown provider's sub-catalog) with the
    product left unset also passes as GEC, Umbra's only geocoded product."""
    want = str(sar.get("product", "GEO")).upper()
    return {want} if explicit_product or provider not in ("umbra", None) else {want, "GEC"}


def rank_key(facts: ItemFacts, cov: float) -> tuple[float, float, str]:
    """Sort key: best coverage, then newest, then id (deterministic whatever the walk order)."""
    ts = facts.start.timestamp() if facts.start else float("-inf")
    return (-round(cov, 9), -ts, facts.id)


# --------------------------------------------------------------------------- assets (pure)


def _suffix(href: str) -> str:
    return Path(href.split("?", 1)[0].rstrip("/")).suffix.lower()


def classify_asset(key: str, asset: pystac.Asset) -> str:
    """geotiff | metadata | preview | thumbnail | sicd | sidd | cphd | other - by what it is, not its key."""
    suffix = _suffix(asset.href)
    mtype = (asset.media_type or "").lower()
    roles = {r.lower() for r in (asset.roles or [])}
    words = " ".join([key, asset.title or "", asset.description or "", Path(asset.href).name]).upper()
    if "thumbnail" in roles or key.lower() == "thumbnail":
        return "thumbnail"
    if suffix == ".cphd" or re.search(r"\bCPHD\b", words) and "tiff" not in mtype:
        return "cphd"
    if suffix in (".nitf", ".ntf") or "nitf" in mtype:
        return "sidd" if "SIDD" in words else "sicd"
    if suffix in (".tif", ".tiff") or "image/tiff" in mtype:
        return "preview" if {"overview", "visual"} & roles and "data" not in roles else "geotiff"
    if suffix == ".json" or "json" in mtype:
        return "metadata" if "metadata" in roles or key.lower() == "metadata" or "METADATA" in words else "other"
    if suffix in (".png", ".jpg", ".jpeg", ".webp") or mtype.startswith("image/"):
        return "preview"
    return "other"


def select_data_asset(item: pystac.Item, polarization: str | None) -> tuple[str, pystac.Asset]:
    """The GeoTIFF data asset: for ``polarization`` if several, preferring key == pol and role data."""
    kinds = {k: classify_asset(k, a) for k, a in item.assets.items()}
    tiffs = [k for k, kind in kinds.items() if kind == "geotiff"]
    if not tiffs:
        complex_ = sorted({kinds[k].upper() for k in kinds if kinds[k] in ("sicd", "sidd", "cphd")})
        detail = f"only {', '.join(complex_)} (complex / not geocoded)" if complex_ else f"assets {sorted(kinds)}"
        raise FetchError(f"{item.id}: no GeoTIFF data asset; the item offers {detail}")
    pol = (polarization or "").upper()

    def score(k: str) -> tuple[int, int, int, str]:
        a = item.assets[k]
        text = " ".join([k, a.title or "", Path(a.href).name]).upper()
        return (
            0 if pol and k.upper() == pol else 1,
            0 if pol and re.search(rf"(^|[^A-Z]){pol}([^A-Z]|$)", text) else 1,
            0 if "data" in (a.roles or []) else 1,
            k,
        )

    best = min(tiffs, key=score)
    return best, item.assets[best]


def select_metadata_asset(item: pystac.Item, provider: str) -> tuple[str, pystac.Asset] | None:
    """Capella's ``*_extended.json`` (key ``metadata``). Other providers' JSON has another format: skipped."""
    if provider != "capella":
        return None
    for k in sorted(item.assets):
        a = item.assets[k]
        if classify_asset(k, a) == "metadata" and (k == "metadata" or a.href.endswith("_extended.json")):
            return k, a
    return None


def expected_checksum(asset: pystac.Asset) -> tuple[str | None, int | None]:
    """(sha256 hex, size) from the STAC file extension, if the catalog provides them."""
    mh = asset.extra_fields.get("file:checksum")
    sha = None
    if isinstance(mh, str):
        if mh.lower().startswith("1220") and len(mh) == 68:
            sha = mh[4:].lower()
        else:
            log.warning("%s: file:checksum %r is not sha2-256 multihash; not verified", asset.href, mh)
    size = asset.extra_fields.get("file:size")
    return sha, int(size) if isinstance(size, int) else None


def check_href(raw: str, base: str, root_dir: str) -> str:
    """Resolve ``raw`` against ``base``.

    Refuses relative hrefs that leave ``root_dir`` and local files named by remote catalogs.
    """
    resolved = join_href(base, raw)
    relative = scheme(raw) == "" and (not raw.startswith("/") or is_remote(base))  # '/x' is relative in a URL
    if relative and not is_within(resolved, root_dir):
        raise Unsafe(f"{raw!r} in {base}: resolves to {resolved}, outside the catalog root {root_dir}")
    if is_remote(base) and not is_remote(resolved):
        raise Unsafe(f"{raw!r} in {base}: a remote catalog may not point at local file {resolved}")
    return resolved


# --------------------------------------------------------------------------- catalog walk


@dataclass
class Candidate:
    doc: dict[str, Any]  # the item's JSON without its links (what the walk and its cache keep)
    href: str
    facts: ItemFacts
    coverage: float

    @property
    def item(self) -> pystac.Item:
        """The pystac Item, built on demand: only the winner needs one."""
        return pystac.Item.from_dict(json.loads(json.dumps(self.doc)), href=self.href, migrate=True,
                                     preserve_dict=False)


@dataclass
class WalkResult:
    candidates: list[Candidate] = field(default_factory=list)
    rejected: dict[str, list[str]] = field(default_factory=dict)
    read: int = 0
    catalogs: int = 0
    pruned: dict[str, int] = field(default_factory=dict)


def _is_api(doc: dict[str, Any]) -> bool:
    return any("item-search" in c for c in doc.get("conformsTo", [])) and any(
        ln.get("rel") == "search" for ln in doc.get("links", [])
    )


# -- pruning: what the catalog tells without reading items (pure) ---------------------------

HIERARCHY = re.compile(r"-by-(?P<kind>[a-z0-9-]+)$", re.IGNORECASE)
# a sub-catalog named for a date: 'capella-open-data-2024-7-9', '2023-01', 'Capella Open Data 2025-05-14'
DATE_NAME = re.compile(r"(?:^|[^0-9])(?P<y>(?:19|20)\d\d)(?:[-_](?P<m>\d{1,2}))?(?:[-_](?P<d>\d{1,2}))?$")
PRODUCT_NAME = re.compile(r"(?:^|[-_ ])(?P<p>slc|geo|gec|sicd|sidd|cphd)$", re.IGNORECASE)
HIERARCHY_PREFERENCE = {True: ("datetime", "product-type", "instrument-mode"),
                        False: ("product-type", "datetime", "instrument-mode")}
DATE_MARGIN = dt.timedelta(days=1)  # sub-catalog dates may be local or start-of-collect: stay conservative


def link_name(href: str) -> str:
    """The name a link gives its target: the folder of '.../NAME/catalog.json', else the file stem."""
    parts = href.split("?", 1)[0].rstrip("/").split("/")
    stem = parts[-1].rsplit(".", 1)[0] if "." in parts[-1] else parts[-1]
    if stem in ("catalog", "collection") and len(parts) > 1:
        return parts[-2]
    return stem


def name_date_span(name: str) -> tuple[dt.datetime, dt.datetime] | None:
    """[start, end) of the year, month or day a sub-catalog name ends with; None if it names none."""
    m = DATE_NAME.search(name.strip())
    if not m:
        return None
    y, mo, d = int(m["y"]), int(m["m"] or 0), int(m["d"] or 0)
    try:
        if not mo:
            return dt.datetime(y, 1, 1, tzinfo=dt.timezone.utc), dt.datetime(y + 1, 1, 1, tzinfo=dt.timezone.utc)
        if not d:
            start = dt.datetime(y, mo, 1, tzinfo=dt.timezone.utc)
            return start, (start + dt.timedelta(days=32)).replace(day=1)
        start = dt.datetime(y, mo, d, tzinfo=dt.timezone.utc)
        return start, start + dt.timedelta(days=1)
    except ValueError:  # month 13, 31 February: not a date after all
        return None


def extent_outside(extent: Any, lo: dt.datetime | None, hi: dt.datetime | None, bbox: tuple | None) -> str | None:
    """'datetime' / 'extent' when a collection's declared extent misses the region, else None."""
    if not isinstance(extent, dict):
        return None
    try:
        (a, b), *_ = extent.get("temporal", {}).get("interval") or [[None, None]]
        start, end = parse_datetime(a, strict=False), parse_datetime(b, strict=False)
        if lo and end and end + DATE_MARGIN <= lo or hi and start and start - DATE_MARGIN >= hi:
            return "datetime"
        box_, *_ = extent.get("spatial", {}).get("bbox") or [None]
        if bbox and box_ and len(box_) in (4, 6):
            w, s, e, n = (box_[0], box_[1], box_[-2], box_[-1]) if len(box_) == 4 else (*box_[:2], *box_[3:5])
            if w <= e and (e < bbox[0] or w > bbox[2] or n < bbox[1] or s > bbox[3]):
                return "extent"
    except (TypeError, ValueError):
        return None
    return None


@dataclass(frozen=True)
class WalkFilter:
    """What a region wants, as far as links and sub-catalog extents can tell (pure pruning policy)."""

    sar: dict[str, Any] = field(default_factory=dict)
    explicit_product: bool = False
    want_ids: frozenset[str] | None = None
    bbox: tuple[float, float, float, float] | None = None
    hierarchy: str = "auto"  # auto | all | a hierarchy name such as 'datetime' or 'product-type'
    by_facts: bool = True  # prune item links by their Capella id (False for EO catalogs)

    @classmethod
    def for_region(cls, region: Region, cfg: dict[str, Any]) -> WalkFilter:
        sar = region.sar
        return cls(dict(sar), "product" in region.raw.get("sar", {}),
                   frozenset(sar["ids"]) if sar.get("ids") else None, tuple(region.bbox),
                   str(cfg.get("walk_hierarchy", "auto")))

    @property
    def dates(self) -> tuple[dt.datetime | None, dt.datetime | None]:
        return date_range(self.sar.get("datetime"))

    def link_reason(self, link: dict[str, Any]) -> tuple[str | None, str | None]:
        """(why not to follow ``link``, or None; the item id it names, if any)."""
        names = [link_name(link["href"])] + ([link["title"]] if link.get("title") else [])
        if link["rel"] == "item":
            hint = next((n for n in names if parse_capella_id(n)), None)
            if hint is None:
                return None, None
            if self.want_ids:
                return (None if hint in self.want_ids else "ids"), hint
            if not self.by_facts:
                return None, hint
            facts = capella_id_facts(hint)
            return (facts_reason(facts, self.sar, self.explicit_product) if facts else None), hint
        lo, hi = self.dates
        if not self.by_facts:
            return None, None
        if self.want_ids is None and (lo or hi):
            span = next((sp for n in names if (sp := name_date_span(n))), None)
            if span and (lo and span[1] + DATE_MARGIN <= lo or hi and span[0] - DATE_MARGIN >= hi):
                return "datetime", None
        product = next((m["p"].upper() for n in names if (m := PRODUCT_NAME.search(n.strip()))), None)
        if self.want_ids is None and product and product not in accepted_products(self.sar, self.explicit_product,
                                                                                  None):
            return "product", None
        return None, None

    def choose_hierarchy(self, links: list[dict[str, Any]]) -> set[str]:
        """Hrefs of the parallel hierarchies not to walk, when a catalog offers several.

        Capella's root has the same items under by-datetime, by-product-type, by-instrument-mode,
        by-use-case and by-capital; the first three are complete. Walk one: by-datetime when the
        region has a date range (its day catalogs prune), else by-product-type (its product
        catalogs prune), else by-datetime, else by-instrument-mode; if none of these is offered,
        walk them all. ``walk_hierarchy: all`` walks every one (dedupe still reads each item once).
        """
        kinds = {ln["href"]: m["kind"].lower() for ln in links if ln["rel"] == "child"
                 and (m := HIERARCHY.search(link_name(ln["href"])))}
        if len(kinds) < 2 or self.hierarchy == "all":
            return set()
        lo, hi = self.dates
        order = ((self.hierarchy.removeprefix("by-"),) if self.hierarchy != "auto" else ()) + \
            HIERARCHY_PREFERENCE[bool(lo or hi)]
        chosen = next((k for k in order if k in kinds.values()), None)
        return set() if chosen is None else {h for h, k in kinds.items() if k != chosen}

    def expand(self, href: str, node: dict[str, Any]) -> Expansion:
        """Links of catalog ``node`` to follow (walk order) and counts of those pruned, by reason."""
        links = node.get("links", [])
        pruned: Counter = Counter()
        lo, hi = self.dates
        if self.want_ids is None and (why := extent_outside(node.get("extent"), lo, hi, self.bbox)):
            return Expansion((), ((why, len(links)),))
        skip = self.choose_hierarchy(links)
        kept: list[tuple[str, str | None]] = []
        for ln in links:
            why, hint = ("hierarchy", None) if ln["href"] in skip else self.link_reason(ln)
            if why:
                pruned[why] += 1
            else:
                kept.append((ln["href"], hint))
        if self.want_ids:  # look at links naming a wanted id first: the walk stops once all are found
            kept.sort(key=lambda k: not any(i in k[0] for i in self.want_ids))
        return Expansion(tuple(kept), tuple(sorted(pruned.items())))


def walk_catalog(
    href: str, cache: Cache, cfg: dict[str, Any], filt: WalkFilter | None = None,
    first: dict[str, Any] | None = None, stats: WalkStats | None = None,
    memo: tuple[dict[str, dict[str, Any]], float] | None = None,
) -> Iterator[tuple[str, dict[str, Any]]]:
    """Yield (item href, item dict) of a static catalog in depth-first link order, pruned by ``filt``.

    Documents are read by ``walk_workers`` threads; remote catalogs are memoised in the walk
    cache (``catalog_cache_ttl_h``), so a second region on the same catalog reads no JSON.
    ``memo``: the walk cache as :meth:`Cache.walk_memo` returned it, if the caller has it already.
    """
    filt = filt or WalkFilter()
    root_dir = href_dir(href)
    known_docs, created = memo if memo is not None else cache.walk_memo(href, cfg)
    reader = CatalogReader(cache.transport, lambda raw, base: check_href(raw, base, root_dir), known_docs)
    known = len(reader.memo)
    if first is not None and reader.cached(href) is None:
        reader.seed(href, first)
    try:
        yield from walk_tree(href, reader, filt.expand, int(cfg["walk_workers"]), set(filt.want_ids or ()) or None,
                             stats)
    finally:
        log.info("walk %s: %d document(s) read, %d from the walk cache", href, reader.fetched, known)
        if len(reader.memo) > known:
            cache.save_walk_memo(href, cfg, reader.memo, created)


def search_api(
    href: str, landing: dict[str, Any], region: Region, cfg: dict[str, Any]
) -> list[tuple[dict[str, Any], str]]:
    """Items from a STAC API (pystac-client) for the region's bbox, datetime and ids."""
    from pystac_client import Client
    from pystac_client.stac_api_io import StacApiIO

    sar = region.sar
    io = StacApiIO(timeout=cfg["timeout_s"], max_retries=int(cfg["retries"]))
    client = Client.open(href, stac_io=io, timeout=cfg["timeout_s"])
    search = client.search(
        bbox=list(region.bbox),
        datetime=sar.get("datetime"),
        ids=sar.get("ids"),
        max_items=int(cfg["max_api_items"]),
        method=next((ln.get("method", "POST") for ln in landing["links"] if ln.get("rel") == "search"), "POST"),
    )
    return [(it.to_dict(include_self_link=False, transform_hrefs=False), it.get_self_href() or href)
            for it in search.items()]


def find_sar_items(region: Region, cache: Cache, cfg: dict[str, Any]) -> tuple[WalkResult, str]:
    """All matching items of the region's catalog, ranked; raises naming the reasons if none match."""
    sar = region.sar
    href = region.resolve(sar["stac"])
    filt = WalkFilter.for_region(region, cfg)
    want = set(filt.want_ids or ()) or None
    explicit_product = filt.explicit_product
    aoi = region.aoi
    stats = WalkStats()
    memo = cache.walk_memo(href, cfg)
    first = None if href in memo[0] else load_json(href, cache.transport)  # a cached root is no API
    if first is not None and _is_api(first):
        pairs: Iterable[tuple[str, dict[str, Any]]] = [(h, d) for d, h in search_api(href, first, region, cfg)]
    else:
        pairs = walk_catalog(href, cache, cfg, filt, first, stats, memo)
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


# --------------------------------------------------------------------------- cache


def safe_name(href: str, max_len: int = 80) -> str:
    """A cache file name for ``href``: a hash of the full href plus a sanitised base name.

    Only [A-Za-z0-9._-], no leading dot: nothing in an href can make a path leave the cache.
    """
    base = re.sub(r"[^A-Za-z0-9._-]+", "_", href.split("?", 1)[0].rstrip("/").rsplit("/", 1)[-1]).lstrip("._")
    digest = hashlib.sha256(href.encode("utf-8")).hexdigest()[:16]
    return f"{digest}_{base[:max_len] or 'object'}"


@dataclass(frozen=True)
class Cache:
    """Downloads by href into ``root/objects``; each object has a ``.json`` sidecar (href, sha256, bytes)."""

    root: Path
    transport: Transport

    def path_for(self, href: str) -> Path:
        objects = (self.root / "objects").resolve()
        p = (objects / safe_name(href)).resolve()
        if p.parent != objects:
            raise Unsafe(f"{href}: cache name {p} escapes {objects}")
        return p

    def get(self, href: str, sha256: str | None = None, size: int | None = None) -> tuple[Path, str, int]:
        """(local path, sha256, bytes) of ``href``; local files are used in place, remote ones cached.

        Expected ``sha256``/``size`` (from the catalog) are checked; on mismatch nothing is kept.
        """
        if not is_remote(href):
            p = local_path(href)
            if not p.is_file():
                raise NotFound(f"{href}: no such file")
            digest, n = sha256_file(p), p.stat().st_size
            _verify(href, digest, n, sha256, size)
            return p, digest, n
        dest = self.path_for(href)
        side = dest.with_name(dest.name + ".json")
        if dest.is_file() and side.is_file():
            meta = json.loads(side.read_text())
            n = dest.stat().st_size
            if (meta.get("href") == href and meta.get("bytes") == n and sha256 in (None, meta.get("sha256"))
                    and size in (None, n)):
                log.info("cache hit: %s", href)
                return dest, meta["sha256"], n
        dest.parent.mkdir(parents=True, exist_ok=True)
        log.info("downloading %s", href)
        with atomic_path(dest, suffix="") as tmp:
            digest, n = self.transport.download(href, tmp)
            _verify(href, digest, n, sha256, size)
        write_json(side, {"href": href, "sha256": digest, "bytes": n})
        return dest, digest, n

    # -- walk cache: the parsed documents of a remote static catalog, reused across regions -------

    def walk_path(self, root: str) -> Path:
        """``root/walks/<hash>_<name>.json``, keyed by the catalog root href (and S3 endpoint)."""
        key = f"{root}|{self.transport.s3_endpoint or ''}" if scheme(root) == "s3" else root
        walks = (self.root / "walks").resolve()
        p = (walks / f"{safe_name(key)}.json").resolve()
        if p.parent != walks:
            raise Unsafe(f"{root}: walk cache name {p} escapes {walks}")
        return p

    def walk_memo(self, root: str, cfg: dict[str, Any]) -> tuple[dict[str, dict[str, Any]], float]:
        """(documents by href, creation time) of ``root``'s walk cache; empty when absent, older than
        ``catalog_cache_ttl_h``, unreadable, or not applicable (ttl 0; local catalogs are cheap to
        read and may be regenerated, e.g. by the demo stage, so they are never cached)."""
        now = time.time()
        ttl_h = float(cfg.get("catalog_cache_ttl_h", 0) or 0)
        if ttl_h <= 0 or not is_remote(root):
            return {}, now
        path = self.walk_path(root)
        try:
            data = json.loads(path.read_bytes())
        except FileNotFoundError:
            return {}, now
        except (OSError, ValueError) as exc:
            log.warning("%s: walk cache %s unreadable (%s); walking again", root, path, exc)
            return {}, now
        created = float(data.get("created", 0))
        if data.get("format") != WALK_FORMAT or data.get("root") != root or not 0 <= now - created < ttl_h * 3600:
            return {}, now
        log.info("walk cache hit: %s (%d documents, %.1f h old)", root, len(data["nodes"]), (now - created) / 3600)
        return dict(data["nodes"]), created

    def save_walk_memo(self, root: str, cfg: dict[str, Any], nodes: dict[str, dict[str, Any]], created: float) -> None:
        """Write the walk cache atomically; it keeps the time of its oldest documents (``created``)."""
        if float(cfg.get("catalog_cache_ttl_h", 0) or 0) <= 0 or not is_remote(root):
            return
        path = self.walk_path(root)
        path.parent.mkdir(parents=True, exist_ok=True)
        doc = {"format": WALK_FORMAT, "root": root, "created": created, "nodes": nodes}
        write_bytes(path, json.dumps(doc, separators=(",", ":")).encode("utf-8"))


def _verify(href: str, digest: str, n: int, sha256: str | None, size: int | None) -> None:
    if size is not None and n != size:
        raise FetchError(f"{href}: size mismatch: got {n} bytes, the catalog says {size} (truncated?)")
    if sha256 is not None and digest != sha256:
        raise FetchError(f"{href}: checksum mismatch: sha256 {digest}, the catalog says {sha256}")


def link_or_copy(src: Path, dest: Path) -> None:
    """Hardlink (no copy of big files); copy across file systems."""
    try:
        os.link(src, dest)
    except OSError:
        shutil.copy2(src, dest)


# --------------------------------------------------------------------------- raster checks


def check_geotiff(path: Path, what: str, aoi=None) -> dict[str, Any]:
    """Open ``path``; require a CRS (and overlap with ``aoi`` if given). Returns a small summary."""
    import rasterio
    from rasterio.errors import RasterioIOError
    from rasterio.warp import transform_bounds
    from shapely.geometry import box

    try:
        with rasterio.open(path) as src:
            if src.crs is None:
                raise FetchError(f"{what}: GeoTIFF has no CRS; cannot place it on the map")
            if src.transform.is_identity:
                raise FetchError(f"{what}: GeoTIFF has no geotransform")
            bounds = transform_bounds(src.crs, "EPSG:4326", *src.bounds)
            info = {"crs": src.crs.to_string(), "width": src.width, "height": src.height, "count": src.count,
                    "dtype": src.dtypes[0], "bounds_lonlat": [round(b, 9) for b in bounds]}
    except RasterioIOError as exc:
        raise FetchError(f"{what}: not a readable GeoTIFF ({exc})") from None
    if aoi is not None and not box(*bounds).intersects(aoi):
        raise FetchError(f"{what}: image bounds {info['bounds_lonlat']} do not intersect the AOI {aoi.bounds}")
    return info


def to_uint8_rgb(src_path: Path, dest: Path, bands: list[int] | None, what: str, block: int = 1024) -> None:
    """Write ``src_path`` as 3-band uint8 with an internal mask, block by block, in its own CRS.

    Non-uint8 data is stretched linearly between the 2nd and 98th percentiles of a decimated
    read (deterministic); one band is repeated into grey RGB.
    """
    import rasterio
    from rasterio.windows import Window

    with rasterio.open(src_path) as src:
        sel = bands or ([1, 2, 3] if src.count >= 3 else [1])
        if max(sel) > src.count:
            raise FetchError(f"{what}: eo.bands {sel} but the image has {src.count} band(s)")
        rgb = (sel * 3)[:3] if len(sel) == 1 else sel
        if len(rgb) != 3:
            raise FetchError(f"{what}: eo.bands must name 1 or 3 bands, got {sel}")
        scale = None
        if src.dtypes[0] != "uint8":
            f = max(1, max(src.width, src.height) // 1024)
            shape = (len(sel), max(1, src.height // f), max(1, src.width // f))
            sample = src.read(sel, out_shape=shape, masked=True).astype("float64")
            vals = sample.compressed()
            if vals.size == 0:
                raise FetchError(f"{what}: image holds no valid pixels")
            lo, hi = np.percentile(vals, [2, 98])
            scale = (float(lo), float(hi) if hi > lo else float(lo) + 1.0)
        profile = {"driver": "GTiff", "width": src.width, "height": src.height, "count": 3, "dtype": "uint8",
                   "crs": src.crs, "transform": src.transform, "tiled": True, "blockxsize": 256,
                   "blockysize": 256, "compress": "deflate", "predictor": 2, "photometric": "RGB"}
        with rasterio.Env(GDAL_TIFF_INTERNAL_MASK=True), rasterio.open(dest, "w", **profile) as dst:
            for r in range(0, src.height, block):
                for c in range(0, src.width, block):
                    win = Window(c, r, min(block, src.width - c), min(block, src.height - r))
                    data = src.read(rgb, window=win)
                    if scale is not None:
                        lo, hi = scale
                        data = np.clip((data.astype("float32") - lo) * (255.0 / (hi - lo)), 0, 255)
                        data = data.round().astype("uint8")
                    mask = src.dataset_mask(window=win)
                    dst.write(data, window=win)
                    dst.write_mask(mask, window=win)


# --------------------------------------------------------------------------- SAR


def fetch_sar(region: Region, cache: Cache, cfg: dict[str, Any], out: Path) -> dict[str, Any]:
    """Put sar.tif (and sar_metadata.json) into ``out``; return the provenance 'sar' record."""
    sar = region.sar
    if sar.get("file"):
        href = region.resolve(sar["file"])
        path, digest, n = cache.get(href)
        check_geotiff(path, href, region.aoi)
        link_or_copy(path, out / "sar.tif")
        provider = sar.get("provider", "unknown")
        rec: dict[str, Any] = {"item_id": None, "href": href, "datetime": sar.get("datetime"), "sha256": digest,
                               "bytes": n, "catalog": None, "provider": provider, "product": sar.get("product"),
                               "polarization": sar.get("polarization"), **_licence(provider, region)}
        if sar.get("metadata"):
            mhref = region.resolve(sar["metadata"])
            mpath, mdigest, _ = cache.get(mhref)
            _check_json(mpath, mhref)
            link_or_copy(mpath, out / "sar_metadata.json")
            rec["metadata"] = {"href": mhref, "sha256": mdigest}
        return rec

    found, catalog = find_sar_items(region, cache, cfg)
    best = found.candidates[0]
    item, facts = best.item, best.facts
    root_dir = href_dir(catalog)
    key, asset = select_data_asset(item, sar.get("polarization"))
    href = check_href(asset.href, best.href, root_dir)
    sha, size = expected_checksum(asset)
    path, digest, n = cache.get(href, sha, size)
    check_geotiff(path, f"{item.id} asset {key!r} ({href})", region.aoi)
    link_or_copy(path, out / "sar.tif")
    ranked = [{"item_id": c.facts.id, "coverage": round(c.coverage, 6), "datetime": c.facts.datetime}
              for c in found.candidates[: int(cfg["max_candidates"])]]
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
        link_or_copy(mpath, out / "sar_metadata.json")
        rec["metadata"] = {"asset": meta[0], "href": mhref, "sha256": mdigest}
    log.info("SAR %s: %s (%d bytes) of %d candidate(s)", region.name, item.id, n, len(found.candidates))
    return rec


def portable(href: str | None, region: Region) -> str | None:
    """A local href inside the project as a project-relative path, so provenance is the same in every clone."""
    if href is None or is_remote(href):
        return href
    p = local_path(href)
    try:
        return p.absolute().relative_to(region.root.absolute()).as_posix()
    except ValueError:
        return href


def _portable_rec(rec: dict[str, Any], region: Region) -> dict[str, Any]:
    out = {k: portable(v, region) if k in ("href", "item_href", "catalog", "source") else v for k, v in rec.items()}
    if isinstance(rec.get("metadata"), dict):
        out["metadata"] = _portable_rec(rec["metadata"], region)
    return out


def _check_json(path: Path, href: str) -> None:
    try:
        json.loads(path.read_text(encoding="utf-8"))
    except (ValueError, UnicodeDecodeError) as exc:
        raise FetchError(f"{href}: metadata is not JSON ({exc})") from None


def _licence(provider: str, region: Region) -> dict[str, str]:
    """A known provider's licence and attribution (pipeline.provenance); else the region file's attribution."""
    src = sar_source(provider) or local_source(region.attribution)
    return {"licence": src.licence, "attribution": src.attribution}


# --------------------------------------------------------------------------- EO


def fetch_eo(region: Region, cache: Cache, cfg: dict[str, Any], dest: Path) -> dict[str, Any]:
    """Write the EO image to ``dest`` (uint8 RGB + mask, native CRS); return the provenance 'eo' record."""
    eo = region.eo
    rec: dict[str, Any] = {"datetime": eo.get("datetime")}
    if eo.get("tiles"):
        template = region.resolve(eo["tiles"])
        lat = (region.bbox[1] + region.bbox[3]) / 2
        zoom = eo.get("zoom")
        if zoom is None:
            zoom = xyz.zoom_for_gsd(lat, region.gsd_m, cfg["tile_zoom_factor"], cfg["max_zoom"], cfg["tile_size"])
        summary = xyz.mosaic(template, region.bbox, int(zoom), dest, lambda h: _read_tile(cache, h),
                             cfg["tile_size"], cfg["workers"])
        rec.update({"source": template, "kind": "tiles", "zoom": int(zoom), "tiles": summary})
    else:
        if eo.get("stac"):
            href, item_rec = _eo_from_stac(region, cache, cfg)
            rec.update(item_rec)
            rec["datetime"] = eo.get("datetime") or item_rec["item_datetime"]
        else:
            href = region.resolve(eo["file"])
            rec.update({"source": href, "kind": "file"})
        path, digest, n = cache.get(href)
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


def _read_tile(cache: Cache, href: str) -> bytes | None:
    """A tile's bytes (cached when remote), None when it does not exist."""
    try:
        if is_remote(href):
            path, _, _ = cache.get(href)
            return path.read_bytes()
        p = local_path(href)
        return p.read_bytes() if p.is_file() else None
    except NotFound:
        return None


def _eo_from_stac(region: Region, cache: Cache, cfg: dict[str, Any]) -> tuple[str, dict[str, Any]]:
    """The EO asset of a STAC item (``eo.asset`` or the visual/data GeoTIFF)."""
    eo = region.eo
    href = region.resolve(eo["stac"])
    doc = load_json(href, cache.transport)
    if doc.get("type") != "Feature":
        items = [Candidate(d, h, item_facts(d), coverage(region.aoi, d))
                 for h, d in walk_catalog(href, cache, cfg, WalkFilter(bbox=tuple(region.bbox), by_facts=False), doc)]
        items = [c for c in items if c.coverage > 0]
        if not items:
            raise FetchError(f"{href}: no EO item intersects the AOI {region.bbox} of region {region.name}")
        items.sort(key=lambda c: rank_key(c.facts, c.coverage))
        item, ihref = items[0].item, items[0].href
    else:
        item, ihref = pystac.Item.from_dict(doc, href=href, preserve_dict=False), href
    if eo.get("asset"):
        if eo["asset"] not in item.assets:
            raise FetchError(f"{ihref}: eo.asset {eo['asset']!r} not among the item's assets {sorted(item.assets)}")
        key = eo["asset"]
    else:
        tiffs = [
            k for k, a in item.assets.items() if _suffix(a.href) in (".tif", ".tiff") or "tiff" in (a.media_type or "")
        ]
        if not tiffs:
            raise FetchError(f"{ihref}: no GeoTIFF asset; set eo.asset to one of {sorted(item.assets)}")
        key = min(tiffs, key=lambda k: (k != "visual", "visual" not in (item.assets[k].roles or []), k))
    asset_href = check_href(item.assets[key].href, ihref, href_dir(href))
    return asset_href, {"source": asset_href, "kind": "stac", "item_id": item.id, "item_href": ihref, "asset": key,
                        "item_datetime": item.properties.get("datetime")}


# --------------------------------------------------------------------------- OSM


def fetch_osm(region: Region, cache: Cache, params: dict[str, Any] | None, out: Path) -> dict[str, Any]:
    """Put the region's OSM input into ``out`` (``osm.<suffixes>``); return the provenance 'osm' record.

    ``osm.file``: hardlinked (copied across file systems; cached first when it is a URL).
    ``osm.overpass``: the legend's keys over the grid plus ``labels.read_margin_m`` (exactly
    the window the labels stage reads), saved as OSM XML ``osm.osm``. ``source`` is what the
    region file says (a project-relative path, or "overpass"), never a resolved absolute path.
    """
    spec = region.osm or {}
    if spec.get("file"):
        href = region.resolve(spec["file"])
        try:
            name = osmio.source_name(spec["file"])
        except osmio.OsmError as exc:
            raise FetchError(f"{region.path}: osm.file: {exc}") from None
        try:
            path, _, _ = cache.get(href)
        except NotFound:
            raise FetchError(f"{region.path}: osm.file {spec['file']!r}: no such file ({href})") from None
        link_or_copy(path, out / name)
        rec: dict[str, Any] = {"kind": "file", "source": str(spec["file"])}
    elif spec.get("overpass"):
        cfg = osmio.settings(params)
        cfg["cache_dir"] = str(region.root / cfg["cache_dir"])  # relative to the project, like fetch's cache
        bbox = osmio.read_window(grid_for_bbox(region.bbox, region.gsd_m).bounds, cfg["read_margin_m"])
        answers = osmio.download_overpass(bbox, {"labels": cfg})
        name = "osm.osm"
        write_bytes(out / name, osmio.overpass_xml(answers, bbox))
        base = sorted({str((a.get("osm3s") or {}).get("timestamp_osm_base") or "") for a in answers} - {""})
        rec = {"kind": "overpass", "source": "overpass", "url": str(cfg["overpass_url"]),
               "bbox": list(bbox), "keys": sorted(osmio.overpass_tags()),
               "requests": len(answers), "osm_base": base[-1] if base else None}
    else:
        raise FetchError(f"{region.path}: osm: give file or overpass: true")
    credit = osmio.data_source(out / name)
    rec.update({"file": name, "sha256": sha256_file(out / name), "bytes": (out / name).stat().st_size,
                "licence": credit.licence, "attribution": credit.attribution})
    log.info("OSM %s: %s -> %s (%d bytes)", region.name, rec["source"], name, rec["bytes"])
    return rec


# --------------------------------------------------------------------------- stage entry point


def settings(params: dict[str, Any] | None) -> dict[str, Any]:
    """DEFAULTS with the params.yaml 'fetch' section merged over them."""
    return {**DEFAULTS, **((params or {}).get("fetch") or {})}


def fetch_region(region: Region, out_dir: str | Path, cache_dir: str | Path | None, params: dict[str, Any]) -> Path:
    """Write out_dir/{sar.tif, sar_metadata.json?, eo.tif, osm.*, provenance.json}; all or nothing."""
    cfg = settings(params)
    transport = Transport.from_params(cfg)
    cache_root = Path(cache_dir) if cache_dir else region.root / cfg["cache_dir"]  # default: in the project
    cache = Cache(cache_root.absolute(), transport)
    out_dir = Path(out_dir)
    with atomic_path(out_dir) as tmp:
        tmp.mkdir()
        sar_rec = fetch_sar(region, cache, cfg, tmp)
        eo_rec = fetch_eo(region, cache, cfg, tmp / "eo.tif")
        osm_rec = fetch_osm(region, cache, params, tmp)
        prov = {"region": region.name, "sar": _portable_rec(sar_rec, region), "eo": _portable_rec(eo_rec, region),
                "osm": osm_rec}
        write_json(tmp / "provenance.json", prov)
    log.info("fetch %s: wrote %s", region.name, out_dir)
    return out_dir
