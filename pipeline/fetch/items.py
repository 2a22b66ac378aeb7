"""Item selection, pure: what an item is (provider, product, polarisation, mode, time), whether
it matches the region, how candidates rank, and which of its assets is the data.

Nothing here reads the network: the walk (:mod:`pipeline.fetch.walk`) prunes with the same
rules from link names, and the SAR/EO fetchers apply them to the items read.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pystac

from pipeline.fetch.stacio import FetchError
from pipeline.provenance import parse_datetime
from pipeline.regions import NOT_GEOCODED

log = logging.getLogger("sareo.fetch")

CAPELLA_ID = re.compile(
    r"^CAPELLA_(?P<platform>C\d{2})_(?P<mode>SP|SM|SS)_(?P<product>SLC|GEO|GEC|SICD|SIDD|CPHD)_"
    r"(?P<pol>HH|VV|HV|VH)_(?P<start>\d{14})_(?P<end>\d{14})$"
)
MODES = {"spotlight": "SP", "stripmap": "SM", "sliding_spotlight": "SS", "sliding spotlight": "SS"}
# Every item passing a source's filters is a scene of the region; a source's `max_items` keeps the first
# ones in this order, and scenes are stored oldest first (then by id).
SELECTION_RULE = ("every item intersecting the AOI that passes the filters (and covers at least min_coverage of it); "
                  "max_items keeps the best AOI coverage, then newest, then by item id")


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
    if cov < float(sar.get("min_coverage", 0.0)):
        return "min_coverage"
    return facts_reason(facts, sar, explicit_product)


def facts_reason(facts: ItemFacts, sar: dict[str, Any], explicit_product: bool) -> str | None:
    """:func:`reject_reason` without the AOI test: all an item link's Capella id can tell."""
    lo, hi = date_range(sar.get("datetime"))
    if lo and facts.end and facts.end < lo or hi and facts.start and facts.start >= hi:
        return "datetime"
    if facts.product not in accepted_products(sar, explicit_product, facts.provider):
        return "not geocoded" if facts.product in NOT_GEOCODED else "product"
    if sar.get("polarization") not in (None, "any") and sar["polarization"] not in facts.polarizations:
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


def href_suffix(href: str) -> str:
    """The lower-case file suffix of ``href``, ignoring a query."""
    return Path(href.split("?", 1)[0].rstrip("/")).suffix.lower()


def classify_asset(key: str, asset: pystac.Asset) -> str:
    """geotiff | metadata | preview | thumbnail | sicd | sidd | cphd | other - by what it is, not its key."""
    suffix = href_suffix(asset.href)
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


# --------------------------------------------------------------------------- candidates


@dataclass
class Candidate:
    """An item that passed the filters, with what ranking needs."""

    doc: dict[str, Any]  # the item's JSON without its links (what the walk and its cache keep)
    href: str
    facts: ItemFacts
    coverage: float

    @property
    def item(self) -> pystac.Item:
        """The pystac Item, built on demand: only the winner needs one."""
        return pystac.Item.from_dict(json.loads(json.dumps(self.doc)), href=self.href, migrate=True,
                                     preserve_dict=False)
