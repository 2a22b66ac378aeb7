"""The fetch stage: one SAR product and one EO image per region, downloaded once, with provenance.

SAR comes from static STAC catalogs (Capella, Umbra: walked link by link with pystac, since
pystac-client cannot search them) or from a STAC API (pystac-client), or from a local GeoTIFF.
Items are filtered by AOI, date, product, polarisation and mode, ranked deterministically
(best AOI coverage, then newest, then id) and the best ONE is used. Its data asset is chosen
by what the asset *is* (suffix, media type, title, roles), because Umbra's asset keys vary.

Everything remote goes through :class:`pipeline.stacio.Transport` (retries, timeouts,
anonymous S3) into a content cache (``cache_dir``, sanitised names, atomic renames, sha256 and
size checks), and is hardlinked from there into ``out_dir``, which appears atomically.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import logging
import os
import re
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pystac

from pipeline import tiles as xyz
from pipeline.atomic import atomic_path, write_json
from pipeline.provenance import local_source, parse_datetime, sar_source, sha256_file
from pipeline.regions import NOT_GEOCODED, Region
from pipeline.stacio import (
    FetchError,
    NotFound,
    SareoStacIO,
    Transport,
    Unsafe,
    href_dir,
    is_remote,
    is_within,
    join_href,
    local_path,
    scheme,
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
}

CAPELLA_ID = re.compile(
    r"^CAPELLA_(?P<platform>C\d{2})_(?P<mode>SP|SM|SS)_(?P<product>SLC|GEO|GEC|SICD|SIDD|CPHD)_"
    r"(?P<pol>HH|VV|HV|VH)_(?P<start>\d{14})_(?P<end>\d{14})$"
)
MODES = {"spotlight": "SP", "stripmap": "SM", "sliding_spotlight": "SS", "sliding spotlight": "SS"}
SELECTION_RULE = "best AOI coverage, then newest datetime, then item id"


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


def item_facts(item: pystac.Item) -> ItemFacts:
    """Provider, product, polarisations, mode and time of an item (Capella: from its id first)."""
    props = item.properties
    cap = parse_capella_id(item.id)
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
    return ItemFacts(item.id, provider, product, pols, mode, start, end, str(when or ""))


def date_range(value: str | None) -> tuple[dt.datetime | None, dt.datetime | None]:
    """'START/END' (dates, '..' or empty for open ends) as UTC datetimes; END is inclusive."""
    if not value:
        return None, None
    a, _, b = value.partition("/")
    lo = parse_datetime(a[:10] + "T00:00:00Z") if a and a != ".." else None
    hi = parse_datetime(b[:10] + "T00:00:00Z") + dt.timedelta(days=1) if b and b != ".." else None
    return lo, hi


def footprint(item: pystac.Item):  # -> shapely geometry
    from shapely.geometry import box, shape
    from shapely.ops import transform

    if item.geometry:
        return transform(lambda x, y, z=None: (x, y), shape(item.geometry))  # drop Umbra's heights
    if item.bbox:
        return box(*item.bbox[:2], *item.bbox[-2:]) if len(item.bbox) == 4 else box(*item.bbox[:2], *item.bbox[3:5])
    raise FetchError(f"{item.id}: item has neither geometry nor bbox")


def coverage(aoi, item: pystac.Item) -> float:
    """Share of the AOI area inside the item footprint (lon/lat areas: only used for ranking)."""
    return float(aoi.intersection(footprint(item)).area / aoi.area) if aoi.area > 0 else 0.0


def reject_reason(facts: ItemFacts, cov: float, sar: dict[str, Any], explicit_product: bool) -> str | None:
    """Why an item does not match the region's sar section, or None if it does."""
    if cov <= 0:
        return "outside AOI"
    lo, hi = date_range(sar.get("datetime"))
    if lo and facts.end and facts.end < lo or hi and facts.start and facts.start >= hi:
        return "datetime"
    want = str(sar.get("product", "GEO")).upper()
    ok_products = {want} if explicit_product or facts.provider != "umbra" else {"GEO", "GEC"}
    if facts.product not in ok_products:
        return "not geocoded" if facts.product in NOT_GEOCODED else "product"
    if sar.get("polarization") and sar["polarization"] not in facts.polarizations:
        return "polarization"
    if sar.get("mode") and facts.mode and sar["mode"] != facts.mode:
        return "mode"
    if sar.get("provider") and sar["provider"] != facts.provider:
        return "provider"
    return None


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
    item: pystac.Item
    href: str
    facts: ItemFacts
    coverage: float


@dataclass
class WalkResult:
    candidates: list[Candidate] = field(default_factory=list)
    rejected: dict[str, list[str]] = field(default_factory=dict)
    read: int = 0


def _load_json(href: str, transport: Transport) -> dict[str, Any]:
    text = SareoStacIO(transport).read_text(href)
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        raise FetchError(f"{href}: not JSON ({exc})") from None
    if not isinstance(data, dict):
        raise FetchError(f"{href}: expected a STAC object, got {type(data).__name__}")
    return data


def _is_api(doc: dict[str, Any]) -> bool:
    return any("item-search" in c for c in doc.get("conformsTo", [])) and any(
        ln.get("rel") == "search" for ln in doc.get("links", [])
    )


def walk_catalog(
    href: str, transport: Transport, root_dir: str, want_ids: set[str] | None = None, first: dict | None = None
):
    """Yield (item, item_href) depth-first in link order; stops early once all ``want_ids`` are found."""
    stack, seen, found = [href], set(), set()
    while stack:
        h = stack.pop()
        if h in seen:
            continue
        seen.add(h)
        doc = first if first is not None and h == href else _load_json(h, transport)
        if doc.get("type") == "Feature":
            item = pystac.Item.from_dict(doc, href=h, migrate=True, preserve_dict=False)
            yield item, h
            found.add(item.id)
            if want_ids and want_ids <= found:
                return
            continue
        links = [ln for ln in doc.get("links", []) if ln.get("rel") in ("child", "item") and ln.get("href")]
        if want_ids:  # look at items whose file name is a wanted id first
            links.sort(key=lambda ln: not any(i in ln["href"] for i in want_ids))
        stack.extend(check_href(ln["href"], h, root_dir) for ln in reversed(links))


def search_api(
    href: str, landing: dict[str, Any], region: Region, cfg: dict[str, Any]
) -> list[tuple[pystac.Item, str]]:
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
    return [(it, it.get_self_href() or href) for it in search.items()]


def find_sar_items(region: Region, transport: Transport, cfg: dict[str, Any]) -> tuple[WalkResult, str]:
    """All matching items of the region's catalog, ranked; raises naming the reasons if none match."""
    sar = region.sar
    href = region.resolve(sar["stac"])
    root_dir = href_dir(href)
    want = set(sar.get("ids") or []) or None
    explicit_product = "product" in region.raw.get("sar", {})
    aoi = region.aoi
    first = _load_json(href, transport)
    if _is_api(first):
        pairs = search_api(href, first, region, cfg)
    else:
        pairs = walk_catalog(href, transport, root_dir, want, first)
    res = WalkResult()
    for item, ih in pairs:
        res.read += 1
        if want and item.id not in want:
            continue
        facts = item_facts(item)
        if facts.product in NOT_GEOCODED and (want or first.get("type") == "Feature"):
            raise FetchError(
                f"{item.id}: product {facts.product} is not geocoded (complex / slant range); "
                "the pipeline needs a GEO or GEC GeoTIFF"
            )
        cov = coverage(aoi, item)
        why = reject_reason(facts, cov, sar, explicit_product)
        if why:
            res.rejected.setdefault(why, []).append(item.id)
        else:
            res.candidates.append(Candidate(item, ih, facts, cov))
    if want and (missing := want - {c.item.id for c in res.candidates} - {i for v in res.rejected.values() for i in v}):
        raise FetchError(f"{href}: sar.ids not found in the catalog: {sorted(missing)}")
    if not res.candidates:
        counts = ", ".join(f"{k}: {len(v)}" for k, v in sorted(res.rejected.items())) or "none"
        if res.rejected and set(res.rejected) == {"outside AOI"}:
            raise FetchError(
                f"{href}: no item intersects the AOI {region.bbox} of region {region.name} ({res.read} items read)"
            )
        raise FetchError(
            f"{href}: no item matches region {region.name} (AOI {region.bbox}, product {sar.get('product')}, "
            f"polarization {sar.get('polarization', 'any')}, datetime {sar.get('datetime', 'any')}); "
            f"{res.read} items read, rejected by {counts}"
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
            if meta.get("href") == href and meta.get("bytes") == n and sha256 in (None, meta.get("sha256")):
                if size in (None, n):
                    log.info("cache hit: %s", href)
                    return dest, meta["sha256"], n
        dest.parent.mkdir(parents=True, exist_ok=True)
        log.info("downloading %s", href)
        with atomic_path(dest, suffix="") as tmp:
            digest, n = self.transport.download(href, tmp)
            _verify(href, digest, n, sha256, size)
        write_json(side, {"href": href, "sha256": digest, "bytes": n})
        return dest, digest, n


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

    found, catalog = find_sar_items(region, cache.transport, cfg)
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
            href, item_rec = _eo_from_stac(region, cache)
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


def _eo_from_stac(region: Region, cache: Cache) -> tuple[str, dict[str, Any]]:
    """The EO asset of a STAC item (``eo.asset`` or the visual/data GeoTIFF)."""
    eo = region.eo
    href = region.resolve(eo["stac"])
    doc = _load_json(href, cache.transport)
    if doc.get("type") != "Feature":
        root = href_dir(href)
        items = [(it, h) for it, h in walk_catalog(href, cache.transport, root) if coverage(region.aoi, it) > 0]
        if not items:
            raise FetchError(f"{href}: no EO item intersects the AOI {region.bbox} of region {region.name}")
        items.sort(key=lambda p: rank_key(item_facts(p[0]), coverage(region.aoi, p[0])))
        item, ihref = items[0]
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


# --------------------------------------------------------------------------- stage entry point


def settings(params: dict[str, Any] | None) -> dict[str, Any]:
    """DEFAULTS with the params.yaml 'fetch' section merged over them."""
    return {**DEFAULTS, **((params or {}).get("fetch") or {})}


def fetch_region(region: Region, out_dir: str | Path, cache_dir: str | Path | None, params: dict[str, Any]) -> Path:
    """Write out_dir/{sar.tif, sar_metadata.json?, eo.tif, provenance.json}; all or nothing."""
    cfg = settings(params)
    transport = Transport.from_params(cfg)
    cache_root = Path(cache_dir) if cache_dir else region.root / cfg["cache_dir"]  # default: in the project
    cache = Cache(cache_root.absolute(), transport)
    out_dir = Path(out_dir)
    with atomic_path(out_dir) as tmp:
        tmp.mkdir()
        sar_rec = fetch_sar(region, cache, cfg, tmp)
        eo_rec = fetch_eo(region, cache, cfg, tmp / "eo.tif")
        prov = {"region": region.name, "sar": _portable_rec(sar_rec, region), "eo": _portable_rec(eo_rec, region)}
        write_json(tmp / "provenance.json", prov)
    log.info("fetch %s: wrote %s", region.name, out_dir)
    return out_dir
