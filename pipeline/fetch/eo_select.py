"""EO per scene, pure: which EO items of a STAC search a SAR scene gets, by one documented rule.

Nothing here reads the network or a raster: :mod:`pipeline.fetch.eo_search` finds the items and
downloads the chosen ones, :mod:`pipeline.fetch.eo_mosaic` pastes them into one image.

The rule (``SELECTION_RULE``, recorded in provenance):

1. Target: the scene footprint intersected with the region's AOI (lon/lat). Areas and shares are
   measured in a Lambert azimuthal equal-area projection centred on the target, so a share of
   the target is a share of ground, not of square degrees.
2. Candidates: items whose footprint intersects the target, whose time (``datetime``, or the
   ``start_datetime``/``end_datetime`` interval) is within ``window_days`` of the scene datetime,
   in ``collections`` (if given), with ``eo:cloud_cover <= max_cloud`` (if given) and
   ``gsd <= max_gsd_m`` (if given). An item without ``eo:cloud_cover`` (aerial imagery such as
   NAIP has none) or without ``gsd`` passes that filter, and is recorded as such.
3. Rank: date distance in whole days (0 when the scene falls inside the item's interval), then
   cloud cover (unknown after known), then coverage of the target (descending), then item id.
4. Choose greedily in rank order: an item is taken if it adds more than ``MIN_GAIN`` of the target
   not yet covered by the items taken before; stop once the uncovered share is <= ``COVER_TOLERANCE``
   or the ranking is exhausted. Where taken items overlap, the better-ranked one wins (the mosaic
   pastes in rank order and never overwrites).
"""

from __future__ import annotations

import datetime as dt
import math
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from pipeline.fetch.items import footprint, href_suffix
from pipeline.fetch.stacio import FetchError
from pipeline.provenance import parse_datetime

SELECTION_RULE = (
    "target = scene footprint x AOI; candidates intersect the target, lie within window_days of the scene, "
    "in collections, eo:cloud_cover <= max_cloud and gsd <= max_gsd_m (items without the property pass); "
    "rank by whole days from the scene, then cloud cover (unknown last), then target coverage (desc), then id; "
    "take items in rank order while each adds coverage, until the target is covered"
)
MIN_GAIN = 1e-6  # share of the target an item must add to be taken (below: float noise of polygon ops)
COVER_TOLERANCE = 1e-6  # uncovered share at which the target counts as covered
DAY = 86400.0


class EoSelectionError(FetchError):
    """No EO item for a scene; the message names the search, the scene and the filter that removed how many."""


@dataclass(frozen=True)
class EoSpec:
    """The ``eo`` section of a region when ``eo.search`` is used (validated by pipeline.regions)."""

    search: str
    window_days: float
    collections: tuple[str, ...] = ()
    max_cloud: float | None = None
    max_gsd_m: float | None = None
    asset: str | None = None
    bands: tuple[int, ...] | None = None
    sign: str | None = None

    @classmethod
    def from_section(cls, eo: dict[str, Any], search_href: str | None = None) -> EoSpec:
        """From a validated ``eo`` mapping; ``search_href``: ``eo.search`` resolved by the region."""
        return cls(
            search=search_href or eo["search"], window_days=float(eo["window_days"]),
            collections=tuple(eo.get("collections") or ()),
            max_cloud=None if eo.get("max_cloud") is None else float(eo["max_cloud"]),
            max_gsd_m=None if eo.get("max_gsd_m") is None else float(eo["max_gsd_m"]),
            asset=eo.get("asset"), bands=tuple(eo["bands"]) if eo.get("bands") else None, sign=eo.get("sign"),
        )


@dataclass(frozen=True)
class EoCandidate:
    """An EO item that passed the filters, with what ranking needs."""

    id: str
    href: str  # the item's own href (self link or the search URL)
    doc: dict[str, Any] = field(repr=False, compare=False)
    datetime: str
    days: int  # whole days between the scene and the item (0: the scene lies in the item's interval)
    cloud_cover: float | None
    gsd: float | None
    coverage: float  # share of the target inside the item's footprint
    geometry: Any = field(repr=False, compare=False)  # footprint ∩ target, in the equal-area projection

    def rank_key(self) -> tuple[int, int, float, float, str]:
        cloud = (0, self.cloud_cover) if self.cloud_cover is not None else (1, 0.0)
        return (self.days, *cloud, -round(self.coverage, 9), self.id)


@dataclass(frozen=True)
class EoChoice:
    """A chosen item: its share of the target and what it added to the items chosen before it."""

    candidate: EoCandidate
    gain: float

    def record(self) -> dict[str, Any]:
        c = self.candidate
        return {"item_id": c.id, "item_href": c.href, "datetime": c.datetime, "days_from_scene": c.days,
                "cloud_cover": c.cloud_cover, "gsd": c.gsd, "coverage": round(c.coverage, 6),
                "gain": round(self.gain, 6)}


@dataclass(frozen=True)
class EoSelection:
    """What :func:`select_eo` found: the chosen items in paste order, and the counts behind them."""

    target: Any  # lon/lat geometry: scene footprint ∩ AOI
    chosen: tuple[EoChoice, ...]
    covered: float  # share of the target covered by the chosen items
    found: int  # items the search returned
    removed: dict[str, int]  # by filter
    passed_without: dict[str, int]  # candidates that passed a filter because they lack its property
    candidates: int

    def record(self) -> dict[str, Any]:
        return {"selection": SELECTION_RULE, "covered": round(self.covered, 6), "items_found": self.found,
                "candidates": self.candidates, "removed": dict(sorted(self.removed.items())),
                "passed_without": dict(sorted(self.passed_without.items())),
                "target_bounds": [round(v, 9) for v in self.target.bounds],
                "items": [c.record() for c in self.chosen]}


# --------------------------------------------------------------------------- geometry (pure)


def equal_area(geom: Any):  # -> callable: lon/lat geometry -> metres geometry
    """A lon/lat -> metres transform of geometries (Lambert azimuthal equal area centred on ``geom``)."""
    import numpy as np
    import shapely
    from pyproj import Transformer

    c = geom.centroid
    proj = f"+proj=laea +lat_0={c.y:.9f} +lon_0={c.x:.9f} +datum=WGS84 +units=m +no_defs"
    t = Transformer.from_crs("EPSG:4326", proj, always_xy=True)
    return lambda g: shapely.transform(g, lambda xy: np.column_stack(t.transform(xy[:, 0], xy[:, 1])))


def scene_target(scene_footprint: Any, aoi: Any, scene_id: str) -> Any:
    """Scene footprint ∩ AOI (lon/lat); an error naming the scene if they do not overlap."""
    target = scene_footprint.intersection(aoi)
    if target.is_empty or target.area <= 0:
        raise EoSelectionError(
            f"scene {scene_id}: its footprint {tuple(round(v, 6) for v in scene_footprint.bounds)} misses the AOI "
            f"{tuple(round(v, 6) for v in aoi.bounds)}: no EO target")
    return target


# --------------------------------------------------------------------------- item properties (pure)


def item_interval(doc: dict[str, Any]) -> tuple[dt.datetime, dt.datetime] | None:
    """[start, end] of an item: ``start/end_datetime`` if given, else ``datetime`` for both; None if none."""
    p = doc.get("properties") or {}
    try:
        start = parse_datetime(p.get("start_datetime") or p.get("datetime"))
        end = parse_datetime(p.get("end_datetime") or p.get("datetime"))
    except ValueError as exc:
        raise FetchError(f"EO item {doc.get('id')}: {exc}") from None
    if start is None or end is None:
        return None
    return (start, end) if start <= end else (end, start)


def days_from(when: dt.datetime, interval: tuple[dt.datetime, dt.datetime]) -> float:
    """Days from ``when`` to the interval (0 inside it)."""
    start, end = interval
    if when < start:
        return (start - when).total_seconds() / DAY
    if when > end:
        return (when - end).total_seconds() / DAY
    return 0.0


def _number(doc: dict[str, Any], key: str) -> float | None:
    v = (doc.get("properties") or {}).get(key)
    if v is None:
        return None
    try:
        f = float(v)
    except (TypeError, ValueError):
        raise FetchError(f"EO item {doc.get('id')}: {key} {v!r} is not a number") from None
    return f if math.isfinite(f) else None


def _window_text(spec: EoSpec, when: dt.datetime) -> str:
    return f"window_days {spec.window_days:g} (within {spec.window_days:g} days of {when.date().isoformat()})"


# --------------------------------------------------------------------------- the rule (pure)


def select_eo(
    items: Iterable[tuple[str, dict[str, Any]]], scene_footprint: Any, when: dt.datetime, aoi: Any,
    spec: EoSpec, scene_id: str,
) -> EoSelection:
    """Apply the rule of this module to ``(item href, item dict)`` pairs; raise if nothing is chosen."""
    target = scene_target(scene_footprint, aoi, scene_id)
    to_m = equal_area(target)
    target_m = to_m(target)
    area = target_m.area
    removed: Counter = Counter()
    passed_without: Counter = Counter()
    cands: list[EoCandidate] = []
    nearest: float | None = None
    found = 0
    seen: set[str] = set()
    for href, doc in items:
        item_id = str(doc.get("id"))
        if item_id in seen:  # a search may repeat an item across pages; the first one counts
            continue
        seen.add(item_id)
        found += 1
        if spec.collections and doc.get("collection") not in spec.collections:
            removed["collections"] += 1
            continue
        fp = footprint(doc)
        if not fp.intersects(target):
            removed["footprint"] += 1
            continue
        inter = to_m(fp.intersection(target))
        if inter.area <= 0:
            removed["footprint"] += 1
            continue
        interval = item_interval(doc)
        if interval is None:
            removed["no datetime"] += 1
            continue
        days = days_from(when, interval)
        if days > spec.window_days:
            removed["window_days"] += 1
            nearest = days if nearest is None else min(nearest, days)
            continue
        values = {}
        for prop, limit_name, limit in (("eo:cloud_cover", "max_cloud", spec.max_cloud),
                                        ("gsd", "max_gsd_m", spec.max_gsd_m)):
            values[prop] = v = _number(doc, prop)
            if limit is not None and v is None:
                passed_without[prop] += 1
            elif limit is not None and v > limit:
                removed[limit_name] += 1
                break
        else:
            cloud, gsd = values["eo:cloud_cover"], values["gsd"]
            cands.append(EoCandidate(item_id, href, doc, (doc.get("properties") or {}).get("datetime")
                                     or interval[0].isoformat(), int(days), cloud, gsd, float(inter.area / area),
                                     inter))
    if not cands:
        raise EoSelectionError(_nothing(spec, scene_id, when, target, found, removed, nearest))
    cands.sort(key=EoCandidate.rank_key)
    chosen: list[EoChoice] = []
    union = None
    for c in cands:
        new = c.geometry if union is None else c.geometry.difference(union)
        gain = new.area / area
        if gain <= MIN_GAIN:
            continue
        chosen.append(EoChoice(c, float(gain)))
        union = c.geometry if union is None else union.union(c.geometry)
        if 1 - union.area / area <= COVER_TOLERANCE:
            break
    covered = min(1.0, float(union.area / area)) if union is not None else 0.0
    return EoSelection(target, tuple(chosen), covered, found, dict(removed), dict(passed_without), len(cands))


def _nothing(spec: EoSpec, scene_id: str, when: dt.datetime, target: Any, found: int, removed: Counter,
             nearest: float | None) -> str:
    names = {"collections": f"collections {list(spec.collections)}", "footprint": "footprint (misses scene x AOI)",
             "window_days": _window_text(spec, when), "max_cloud": f"max_cloud {spec.max_cloud:g}"
             if spec.max_cloud is not None else "max_cloud", "max_gsd_m": f"max_gsd_m {spec.max_gsd_m:g}"
             if spec.max_gsd_m is not None else "max_gsd_m", "no datetime": "no datetime"}
    why = "; ".join(f"{names.get(k, k)} removed {n}" for k, n in sorted(removed.items())) or "nothing to filter"
    near = f"; the nearest item outside the window is {nearest:.0f} days away" if nearest is not None else ""
    return (f"eo.search {spec.search}: no EO item for scene {scene_id} (target bounds "
            f"{tuple(round(v, 6) for v in target.bounds)}, {when.isoformat()}): {found} item(s) found, {why}{near}")


# --------------------------------------------------------------------------- assets (pure)


def eo_asset_key(assets: dict[str, Any], wanted: str | None, where: str) -> str:
    """The EO asset of an item: ``wanted`` (eo.asset), else the GeoTIFF keyed or roled ``visual``,
    else one with role ``data``, else the first GeoTIFF by key. ``assets``: pystac Assets or dicts."""
    def get(a: Any, k: str) -> Any:
        return a.get(k) if isinstance(a, dict) else getattr(a, {"type": "media_type"}.get(k, k), None)

    if wanted:
        if wanted not in assets:
            raise FetchError(f"{where}: eo.asset {wanted!r} not among the item's assets {sorted(assets)}")
        return wanted
    tiffs = [k for k, a in assets.items()
             if href_suffix(str(get(a, "href"))) in (".tif", ".tiff") or "tiff" in (get(a, "type") or "")]
    if not tiffs:
        raise FetchError(f"{where}: no GeoTIFF asset; set eo.asset to one of {sorted(assets)}")

    def score(k: str) -> tuple[bool, bool, bool, str]:
        roles = get(assets[k], "roles") or []
        return (k != "visual", "visual" not in roles, "data" not in roles, k)

    return min(tiffs, key=score)
