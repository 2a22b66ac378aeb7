"""The static-catalog walk: a parallel, deterministic depth-first walk and its pruning policy.

A static catalog is a tree of small JSON documents; over S3/HTTPS each costs a round trip, so a
sequential walk of Capella's thousands of items takes minutes. :func:`walk_tree` reads documents
with a bounded thread pool but *yields* them in the order of a sequential depth-first walk, so
results, counts and errors do not depend on which request finished first. What to follow is a
pure policy (:class:`WalkFilter`, from what links and extents tell); parsed documents are kept
in a memo that :func:`walk_catalog` persists in the walk cache.
"""

from __future__ import annotations

import datetime as dt
import logging
import re
import threading
from collections import Counter
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

from pipeline.fetch.cache import Cache
from pipeline.fetch.items import accepted_products, capella_id_facts, date_range, facts_reason, parse_capella_id
from pipeline.fetch.params import FetchParams
from pipeline.fetch.stacio import Transport, check_href, href_dir, load_json
from pipeline.provenance import parse_datetime
from pipeline.regions import Region

log = logging.getLogger("sareo.fetch")


# --------------------------------------------------------------------------- the walk (policy-free)


def parse_node(doc: dict[str, Any], href: str, resolve: Callable[[str, str], str]) -> dict[str, Any]:
    """What the walk keeps of a STAC document: items without their links, catalogs as their
    child/item links (hrefs resolved and checked by ``resolve(raw, base)``) plus id/title/extent."""
    if doc.get("type") == "Feature":
        return {k: v for k, v in doc.items() if k != "links"}
    links = []
    for ln in doc.get("links", []):
        if isinstance(ln, dict) and ln.get("rel") in ("child", "item") and ln.get("href"):
            link = {"rel": ln["rel"], "href": resolve(str(ln["href"]), href)}
            if ln.get("title"):
                link["title"] = str(ln["title"])
            links.append(link)
    node: dict[str, Any] = {"type": doc.get("type", "Catalog"), "id": doc.get("id"), "links": links}
    for key in ("title", "extent"):
        if doc.get(key) is not None:
            node[key] = doc[key]
    return node


class CatalogReader:
    """Parsed catalog documents by href: from ``memo`` if there, else read through the transport.

    Thread-safe; ``fetched`` counts documents actually read (for logs and benchmarks, never for
    outputs: a cached walk reads nothing but must write the same provenance).
    """

    def __init__(self, transport: Transport, resolve: Callable[[str, str], str],
                 memo: dict[str, dict[str, Any]] | None = None) -> None:
        self.transport = transport
        self.resolve = resolve
        self.memo: dict[str, dict[str, Any]] = dict(memo or {})
        self.fetched = 0
        self._lock = threading.Lock()

    def cached(self, href: str) -> dict[str, Any] | None:
        return self.memo.get(href)

    def seed(self, href: str, doc: dict[str, Any]) -> dict[str, Any]:
        """Add an already read document (the root, read to tell a STAC API from a static catalog)."""
        node = parse_node(doc, href, self.resolve)
        with self._lock:
            self.memo[href] = node
        return node

    def get(self, href: str) -> dict[str, Any]:
        node = self.memo.get(href)
        if node is not None:
            return node
        doc = load_json(href, self.transport)
        with self._lock:
            self.fetched += 1
        return self.seed(href, doc)


@dataclass(frozen=True)
class Expansion:
    """Which links of a catalog to follow, in walk order, as (href, id hint); and why others were not."""

    kept: tuple[tuple[str, str | None], ...] = ()
    pruned: tuple[tuple[str, int], ...] = ()


@dataclass
class WalkStats:
    """Documents the walk used (from the network or the memo) and links it did not follow, by reason."""

    catalogs: int = 0
    items: int = 0
    pruned: Counter = field(default_factory=Counter)


class _Prefetch:
    """Reads documents ahead of the depth-first replay with a bounded thread pool.

    A finished read schedules its kept children at once (breadth-first fan-out), so the pool
    stays busy; the replay only waits for the next document in depth-first order. With one
    worker nothing is read ahead: the replay reads each document itself.
    """

    def __init__(self, reader: CatalogReader, expand: Callable[[str, dict[str, Any]], Expansion], workers: int):
        self.reader, self.expand = reader, expand
        self.pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="walk") if workers > 1 else None
        self.futures: dict[str, Future] = {}
        self.expanded: dict[str, Expansion] = {}
        self.hints: set[str] = set()
        self.lock = threading.Lock()
        self.stopped = False

    def _expansion(self, href: str, node: dict[str, Any]) -> Expansion:
        exp = self.expanded.get(href)
        if exp is None:
            exp = Expansion() if node.get("type") == "Feature" else self.expand(href, node)
            self.expanded[href] = exp
        return exp

    def want(self, href: str, hint: str | None = None, force: bool = False) -> None:
        """Schedule ``href``; documents already in the memo are expanded here, their children scheduled.

        An item whose id hint was scheduled under another href is not read ahead (the replay will
        most likely skip it as a duplicate); ``force`` (the replay needs it now) reads it anyway.
        """
        if self.pool is None:
            return
        todo = [(href, hint)]
        while todo:
            h, hn = todo.pop()
            node = self.reader.cached(h)
            with self.lock:
                if h in self.futures or self.stopped or (hn in self.hints and not force):
                    continue
                if hn is not None:
                    self.hints.add(hn)
                fut: Future = Future()
                if node is None:
                    fut = self.pool.submit(self._read, h)
                self.futures[h] = fut
            if node is not None:
                try:
                    exp = self._expansion(h, node)
                except Exception as exc:  # noqa: BLE001 - raised again when the replay gets here
                    fut.set_exception(exc)
                    continue
                fut.set_result(node)
                todo.extend(reversed(exp.kept))
            force = False

    def _read(self, href: str) -> dict[str, Any]:
        node = self.reader.get(href)
        exp = self._expansion(href, node)
        for child, hint in exp.kept:
            self.want(child, hint)
        return node

    def get(self, href: str) -> tuple[dict[str, Any], Expansion]:
        if self.pool is None:
            node = self.reader.get(href)
        else:
            self.want(href, force=True)
            node = self.futures[href].result()
        return node, self._expansion(href, node)

    def close(self) -> None:
        if self.pool is not None:
            with self.lock:
                self.stopped = True
            self.pool.shutdown(wait=True, cancel_futures=True)


def walk_tree(
    root: str,
    reader: CatalogReader,
    expand: Callable[[str, dict[str, Any]], Expansion],
    workers: int = 16,
    want_ids: set[str] | None = None,
    stats: WalkStats | None = None,
) -> Iterator[tuple[str, dict[str, Any]]]:
    """Yield (item href, item node) in sequential depth-first link order, reading ahead in parallel.

    Each href is visited once (dedupe by resolved href), each item id yielded once (first in
    walk order wins; a link whose id hint was already yielded is not even read). With
    ``want_ids`` the walk stops once all were yielded. Counts and errors come from this
    deterministic replay, so they are the same for any ``workers`` and any completion order;
    an unreadable document fails the walk only if the replay reaches it.
    """
    stats = stats if stats is not None else WalkStats()
    pre = _Prefetch(reader, expand, int(workers))
    stack: list[tuple[str, str | None]] = [(root, None)]
    seen: set[str] = set()
    yielded: set[str] = set()
    try:
        while stack:
            href, hint = stack.pop()
            if href in seen or (hint is not None and hint in yielded):
                stats.pruned["duplicate"] += 1
                continue
            seen.add(href)
            node, exp = pre.get(href)
            if node.get("type") == "Feature":
                stats.items += 1
                if stats.items % 500 == 0:
                    log.info("walk %s: %d catalogs, %d items so far", root, stats.catalogs, stats.items)
                item_id = str(node.get("id"))
                if item_id in yielded:
                    stats.pruned["duplicate"] += 1
                    continue
                yielded.add(item_id)
                yield href, node
                if want_ids and want_ids <= yielded:
                    return
                continue
            stats.catalogs += 1
            for reason, n in exp.pruned:
                stats.pruned[reason] += n
            for child, hint in exp.kept:
                pre.want(child, hint)
            stack.extend(reversed(exp.kept))
    finally:
        pre.close()


# --------------------------------------------------------------------------- pruning: what the catalog tells (pure)

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
    def for_source(cls, region: Region, sar: dict[str, Any], explicit_product: bool, p: FetchParams) -> WalkFilter:
        """The pruning policy of one SAR source of the region."""
        return cls(dict(sar), explicit_product, frozenset(sar["ids"]) if sar.get("ids") else None,
                   tuple(region.bbox), p.walk_hierarchy)

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


# --------------------------------------------------------------------------- a catalog's walk, with the walk cache


def walk_catalog(
    href: str, cache: Cache, p: FetchParams, filt: WalkFilter | None = None,
    first: dict[str, Any] | None = None, stats: WalkStats | None = None,
    memo: tuple[dict[str, dict[str, Any]], float] | None = None, root_dir: str | None = None,
) -> Iterator[tuple[str, dict[str, Any]]]:
    """Yield (item href, item dict) of a static catalog in depth-first link order, pruned by ``filt``.

    Documents are read by ``walk_workers`` threads; remote catalogs are memoised in the walk
    cache (``catalog_cache_ttl_h``), so a second region on the same catalog reads no JSON.
    ``memo``: the walk cache as :meth:`Cache.walk_memo` returned it, if the caller has it already.
    ``root_dir``: the trust root no href may leave (default: the catalog's folder; see ``trust_root``).
    """
    filt = filt or WalkFilter()
    root_dir = root_dir or href_dir(href)
    known_docs, created = memo if memo is not None else cache.walk_memo(href, p.catalog_cache_ttl_h)
    reader = CatalogReader(cache.transport, lambda raw, base: check_href(raw, base, root_dir), known_docs)
    known = len(reader.memo)
    if first is not None and reader.cached(href) is None:
        reader.seed(href, first)
    try:
        yield from walk_tree(href, reader, filt.expand, p.walk_workers, set(filt.want_ids or ()) or None,
                             stats)
    finally:
        log.info("walk %s: %d document(s) read, %d from the walk cache", href, reader.fetched, known)
        if len(reader.memo) > known:
            cache.save_walk_memo(href, p.catalog_cache_ttl_h, reader.memo, created)
