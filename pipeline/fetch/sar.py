"""SAR fetching: every scene of the region (and Capella's metadata) into ``source/scenes/ID/``.

From one or several sources: static catalogs (walked), STAC APIs (pystac-client: static
catalogs cannot be searched) or GeoTIFFs named by the region file. Items are filtered and
ranked by :mod:`pipeline.fetch.items`; every item that passes is a scene (``max_items`` caps a
source). Capella and Umbra may be mixed in one region.
"""

from __future__ import annotations

import hashlib
import json
import logging
import re
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pipeline.fetch.cache import Cache, link_or_copy
from pipeline.fetch.geotiff import check_geotiff, whole_geotiff
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
from pipeline.fetch.stacio import Check, FetchError, check_href, load_json, trust_root
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


@dataclass(frozen=True)
class SarSource:
    """One entry of the region's ``sar`` list, and how messages name it (``sar`` or ``sar[i]``)."""

    spec: dict[str, Any]
    where: str
    explicit_product: bool


def region_sources(region: Region) -> list[SarSource]:
    """The region's SAR sources, in file order."""
    raw = region.raw.get("sar")
    raws = raw if isinstance(raw, list) else [raw or {}]
    single = not isinstance(raw, list)
    return [SarSource(dict(spec), "sar" if single else f"sar[{i}]", "product" in (raws[i] if i < len(raws) else {}))
            for i, spec in enumerate(region.sar)]


def search_api(
    href: str, landing: dict[str, Any], region: Region, src: SarSource, p: FetchParams
) -> list[tuple[dict[str, Any], str]]:
    """Items from a STAC API (pystac-client) for the region's bbox and the source's datetime and ids."""
    from pystac_client import Client
    from pystac_client.stac_api_io import StacApiIO

    sar = src.spec
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


def find_sar_items(region: Region, src: SarSource, cache: Cache, p: FetchParams) -> tuple[WalkResult, str]:
    """All items of one source's catalog that match the region, ranked (possibly none: see ``rejected``)."""
    sar = src.spec
    href = region.resolve(sar["stac"])
    filt = WalkFilter.for_source(region, sar, src.explicit_product, p)
    want = set(filt.want_ids or ()) or None
    aoi = region.aoi
    stats = WalkStats()
    memo = cache.walk_memo(href, p.catalog_cache_ttl_h)
    first = None if href in memo[0] else load_json(href, cache.transport)  # a cached root is no API
    if first is not None and _is_api(first):
        pairs: Iterable[tuple[str, dict[str, Any]]] = [(h, d) for d, h in search_api(href, first, region, src, p)]
    else:
        pairs = walk_catalog(href, cache, p, filt, first, stats, memo, catalog_root(region, sar, src.where, href))
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
            why = reject_reason(facts, cov, sar, src.explicit_product)
            if why:
                res.rejected.setdefault(why, []).append(facts.id)
            else:
                res.candidates.append(Candidate(doc, ih, facts, cov))
    finally:  # stop the walk's readers now, not when the generator is collected
        getattr(pairs, "close", lambda: None)()
    res.catalogs, res.pruned = stats.catalogs, dict(sorted(stats.pruned.items()))
    if want and (missing := want - {c.facts.id for c in res.candidates}
                 - {i for v in res.rejected.values() for i in v}):
        raise FetchError(f"{href}: {src.where}.ids not found in the catalog: {sorted(missing)}")
    res.candidates.sort(key=lambda c: rank_key(c.facts, c.coverage))
    if sar.get("max_items"):
        capped = res.candidates[int(sar["max_items"]):]
        if capped:
            res.rejected["max_items"] = [c.facts.id for c in capped]
        res.candidates = res.candidates[: int(sar["max_items"])]
    return res, href


def _no_match(region: Region, src: SarSource, href: str, res: WalkResult) -> str:
    """Why a source gave no scene: which filter removed how many items."""
    sar = src.spec
    counts = ", ".join(f"{k}: {len(v)}" for k, v in sorted(res.rejected.items())) or "none"
    pruned = ", ".join(f"{k}: {v}" for k, v in res.pruned.items())
    if res.rejected and set(res.rejected) == {"outside AOI"}:
        return f"{src.where} {href}: no item intersects the AOI {region.bbox} ({res.read} items read)"
    return (f"{src.where} {href}: no item matches (product {sar.get('product')}, polarization "
            f"{sar.get('polarization', 'any')}, datetime {sar.get('datetime', 'any')}, min_coverage "
            f"{sar.get('min_coverage', '> 0')}); {res.read} items read, rejected by {counts}"
            + (f"; links pruned unread: {pruned}" if pruned else ""))


GEOMETRY_FIELDS = ("view:incidence_angle", "view:off_nadir", "view:azimuth", "sar:observation_direction",
                   "sat:orbit_state", "constellation", "umbra:squint_angle_degrees_off_broadside")


@dataclass
class Scene:
    """A chosen SAR item: where it came from and why."""

    source: SarSource
    candidate: Candidate
    catalog: str
    found: WalkResult

    @property
    def id(self) -> str:
        return self.candidate.facts.id


def scene_order(facts: Any) -> tuple[float, str]:
    """Scenes are stored oldest first, then by id: a stable order whatever the catalogs' order."""
    return (facts.start.timestamp() if facts.start else float("-inf"), facts.id)


def select_scenes(region: Region, cache: Cache, p: FetchParams) -> list[Scene]:
    """Every scene of every catalog source of the region; an item listed by two sources is used once.

    Raises naming, per source, which filter removed how many items when no source gives a scene.
    """
    scenes: dict[str, Scene] = {}
    reasons = []
    for src in region_sources(region):
        if src.spec.get("file"):
            continue
        found, href = find_sar_items(region, src, cache, p)
        if not found.candidates:
            reasons.append(_no_match(region, src, href, found))
        for c in found.candidates:
            if c.facts.id in scenes:
                log.info("%s: %s is also in %s; used once", region.name, c.facts.id, scenes[c.facts.id].catalog)
                continue
            scenes[c.facts.id] = Scene(src, c, href, found)
    if not scenes and reasons and not any(s.spec.get("file") for s in region_sources(region)):
        raise FetchError(f"region {region.name}: no SAR scene matches; " + "; ".join(reasons))
    for r in reasons:
        log.warning("%s: %s", region.name, r)
    return sorted(scenes.values(), key=lambda sc: scene_order(sc.candidate.facts))


SCENE_ID = re.compile(r"[^A-Za-z0-9._-]+")


def scene_dir_name(scene_id: str) -> str:
    """A scene's folder name: its id, or (when it has other characters than letters, digits, '.', '_'
    and '-') the id with those replaced plus a short hash of the id, so two ids never share a folder."""
    name = SCENE_ID.sub("_", scene_id).strip("._") or "scene"
    if name == scene_id:
        return name
    return f"{name}-{hashlib.sha256(scene_id.encode('utf-8')).hexdigest()[:8]}"


def _file_scene(region: Region, src: SarSource, cache: Cache, out: SourceFiles) -> dict[str, Any]:
    """A local (or remote) GeoTIFF named by the region file: one scene."""
    sar = src.spec
    href = region.resolve(sar["file"])
    path, digest, n = cache.get(href, check=whole_geotiff(href))
    check_geotiff(path, href, region.aoi)
    link_or_copy(path, out.sar)
    provider = sar.get("provider", "unknown")
    rec: dict[str, Any] = {"item_id": None, "href": href, "datetime": sar.get("datetime"), "sha256": digest,
                           "bytes": n, "catalog": None, "provider": provider, "product": sar.get("product"),
                           "polarization": None if sar.get("polarization") == "any" else sar.get("polarization"),
                           "source": src.where,
                           **_licence(provider, region)}
    if sar.get("metadata"):
        mhref = region.resolve(sar["metadata"])
        mpath, mdigest, _ = cache.get(mhref, check=_json_check(mhref))
        link_or_copy(mpath, out.sar_metadata)
        rec["metadata"] = {"href": mhref, "sha256": mdigest}
    return rec


def _catalog_scene(region: Region, sc: Scene, cache: Cache, p: FetchParams, out: SourceFiles) -> dict[str, Any]:
    """Download one chosen item's data (and metadata) asset into a scene folder; its provenance record."""
    sar, best, found, catalog = sc.source.spec, sc.candidate, sc.found, sc.catalog
    item, facts = best.item, best.facts
    root_dir = catalog_root(region, sar, sc.source.where, catalog)
    pol = sar.get("polarization")
    key, asset = select_data_asset(item, None if pol == "any" else pol)
    href = check_href(asset.href, best.href, root_dir)
    sha, size = expected_checksum(asset)
    what = f"{item.id} asset {key!r} ({href})"
    path, digest, n = cache.get(href, sha, size, check=whole_geotiff(what))
    check_geotiff(path, what, region.aoi)
    link_or_copy(path, out.sar)
    ranked = [{"item_id": c.facts.id, "coverage": round(c.coverage, 6), "datetime": c.facts.datetime}
              for c in found.candidates[: p.max_candidates]]
    rec = {
        "item_id": item.id, "item_href": best.href, "asset": key, "href": href, "datetime": facts.datetime,
        "start_datetime": facts.start.isoformat() if facts.start else None,
        "end_datetime": facts.end.isoformat() if facts.end else None,
        "sha256": digest, "bytes": n, "catalog": catalog, "source": sc.source.where,
        "provider": facts.provider, "product": facts.product,
        "polarization": (pol if pol not in (None, "any") else None)
        or (facts.polarizations[0] if facts.polarizations else None),
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
        mpath, mdigest, _ = cache.get(mhref, msha, msize, check=_json_check(mhref))
        link_or_copy(mpath, out.sar_metadata)
        rec["metadata"] = {"asset": meta[0], "href": mhref, "sha256": mdigest}
    return rec


def fetch_sar(region: Region, cache: Cache, p: FetchParams, out: SourceFiles) -> list[dict[str, Any]]:
    """Every scene of the region into ``out.scene(ID)``; their provenance records (each with its ``scene`` id).

    Catalog scenes come oldest first; file sources follow in file order.
    """
    recs = []
    chosen = select_scenes(region, cache, p)
    for sc in chosen:
        name = scene_dir_name(sc.id)
        if any(r["scene"] == name for r in recs):  # unreachable with the hash suffix; refuse rather than overwrite
            raise FetchError(f"region {region.name}: scenes {sc.id!r} and another item share the folder name {name!r}")
        files = out.scene(name)
        files.dir.mkdir(parents=True, exist_ok=True)
        recs.append({"scene": name, **_catalog_scene(region, sc, cache, p, files)})
    for src in region_sources(region):
        if src.spec.get("file"):
            name = scene_dir_name("file-" + Path(str(src.spec["file"])).name.split(".")[0])
            if any(r["scene"] == name for r in recs):
                raise FetchError(f"region {region.name}: {src.where}.file: two SAR files give the scene name {name!r}")
            files = out.scene(name)
            files.dir.mkdir(parents=True, exist_ok=True)
            recs.append({"scene": name, **_file_scene(region, src, cache, files)})
    for r in recs:
        log.info("SAR %s: scene %s (%s %s %s, %d bytes)", region.name, r["scene"], r.get("provider"),
                 r.get("polarization"), r.get("datetime"), r["bytes"])
    return recs


def _json_check(href: str) -> Check:
    """A download-cache check: metadata that is not JSON (or was cut) never lands in the cache or source/."""

    def check(path: Path, digest: str, n: int) -> None:
        try:
            json.loads(path.read_text(encoding="utf-8"))
        except (ValueError, UnicodeDecodeError) as exc:
            raise FetchError(f"{href}: metadata is not JSON ({exc})") from None

    return check


def catalog_root(region: Region, spec: dict[str, Any], where: str, catalog: str) -> str:
    """The trust root of a catalog source ``spec`` (its ``catalog_root``, else the catalog's folder)."""
    root = spec.get("catalog_root")
    return trust_root(catalog, region.resolve(root) if root else None, f"{region.path}: {where}.catalog_root")


def _licence(provider: str, region: Region) -> dict[str, str]:
    """A known provider's licence and attribution (pipeline.provenance); else the region file's attribution."""
    src = sar_source(provider) or local_source(region.attribution)
    return {"licence": src.licence, "attribution": src.attribution}

