"""Read OpenStreetMap features for a region: local extracts (.osm, .osm.bz2, .osm.pbf) or Overpass.

Every source ends up in the same shape (``OsmFeatures``): one row per OSM way/relation in
EPSG:4326 with ``osm_id``, ``kind`` ("area" or "line") and one string column per tag key the
legend reads, so classification never cares where the data came from.

Files go through GDAL's OSM driver (pyogrio): it reads PBF and XML alike and assembles
multipolygons without crashing on clipped extracts; ``.bz2`` is streamed to a temporary file
first (GDAL's OSM driver needs a seekable file). Overpass is queried through osmnx's downloader
(with its response cache) and its JSON answer is written out as OSM XML (``overpass_xml``), so it
goes through the same GDAL reader as any extract and can be kept, hashed and re-read offline
(the fetch stage stores it in ``source/``). Broken geometries from clipped extracts are repaired
(shapely ``make_valid``) or, when nothing usable is left, skipped; both are counted, never fatal.
"""

from __future__ import annotations

import bz2
import contextlib
import logging
import math
import shutil
import tempfile
import warnings
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import geopandas as gpd
import numpy as np
import pandas as pd
import shapely

from pipeline.params import param
from pipeline.provenance import OSM, Source, local_source

log = logging.getLogger("sareo.osm")



@dataclass(frozen=True)
class OsmParams:
    """How OSM is read: the margin around the grid and the Overpass server (fetch and labels share it)."""

    section: ClassVar[str] = "osm"
    read_margin_m: float = param(60.0, "read OSM this far beyond the grid so wide roads just outside still burn in")
    overpass_url: str = param("https://overpass-api.de/api", "Overpass API endpoint (osm.overpass: true)")
    overpass_timeout: float = param(180.0, "seconds before an Overpass query is abandoned")
    overpass_rate_limit: bool = param(True, "wait for a free Overpass slot before querying")
    cache_dir: str = param(".cache/osmnx", "osmnx response cache directory (Overpass answers)")

    def __post_init__(self) -> None:
        if self.read_margin_m < 0:
            raise ValueError(f"read_margin_m: must be >= 0, got {self.read_margin_m}")
        if self.overpass_timeout <= 0:
            raise ValueError(f"overpass_timeout: must be > 0, got {self.overpass_timeout}")

OSM_SUFFIXES = (".osm", ".osm.bz2", ".osm.pbf", ".pbf", ".xml")
_GDAL_LAYERS = (("multipolygons", "area"), ("lines", "line"))


class OsmError(ValueError):
    """An OSM source that cannot be read; the message names the source and what was expected."""


@dataclass
class OsmFeatures:
    """OSM ways/relations in EPSG:4326 with the tag columns the legend needs, plus repair counts."""

    gdf: gpd.GeoDataFrame
    source: str
    repaired: int = 0
    skipped: int = 0
    # The window asked for (west, south, east, north); None = the whole file. Every way crossing it
    # was read, so coastlines are complete inside it (pipeline.labels.coast closes them there)...
    bbox: tuple[float, float, float, float] | None = None
    # ...unless the file holds less: the bounds an extract declares (PBF header / XML <bounds>).
    extent: tuple[float, float, float, float] | None = None

    def __len__(self) -> int:
        return len(self.gdf)

    def report(self) -> dict[str, Any]:
        return {"source": self.source, "features": len(self.gdf), "repaired": self.repaired, "skipped": self.skipped}


def read_window(bounds: tuple[float, float, float, float], margin_m: float) -> tuple[float, float, float, float]:
    """(west, south, east, north) of ``bounds`` grown by ``margin_m``: the OSM a grid needs.

    One function for the fetch stage (what Overpass is asked for) and the labels stage (what is
    read), so both agree to the last bit.
    """
    w, s, e, n = (float(v) for v in bounds)
    dlat = float(margin_m) / 111_000.0
    dlon = dlat / max(math.cos(math.radians((s + n) / 2)), 0.01)
    return (w - dlon, s - dlat, e + dlon, n + dlat)


def source_name(href: str | Path) -> str:
    """The name of an OSM file inside ``source/``: ``osm`` plus the file's OSM suffix (``osm.osm.pbf``).

    The suffix is kept because GDAL picks PBF or XML (and ``.bz2`` streaming) from it.
    """
    name = str(href).split("?", 1)[0]
    matches = [s for s in OSM_SUFFIXES if name.endswith(s)]
    if not matches:
        raise OsmError(f"{href}: expected an OSM extract ending in {', '.join(OSM_SUFFIXES)}")
    return "osm" + max(matches, key=len)


def _default_keys() -> list[str]:
    from pipeline.legend import load_legend

    return load_legend().keys()


def repair_geometries(geoms: gpd.GeoSeries, kind: pd.Series) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Make geometries usable: returns (geometries, repaired mask, skipped mask).

    Null/empty geometries are skipped. Invalid ones go through ``make_valid``; areas keep
    only their polygonal parts, lines their linear parts; if nothing remains they are skipped.
    """
    g = np.asarray(geoms.values, dtype=object)
    missing = shapely.is_missing(g) | shapely.is_empty(np.where(shapely.is_missing(g), None, g))
    bad = ~missing & ~shapely.is_valid(g)
    out = g.copy()
    repaired = np.zeros(len(g), bool)
    skipped = missing.copy()
    for i in np.flatnonzero(bad):
        fixed = shapely.make_valid(g[i])
        want = ("Polygon", "MultiPolygon") if kind.iloc[i] == "area" else ("LineString", "MultiLineString")
        parts = [p for p in getattr(fixed, "geoms", [fixed]) if p.geom_type in want and not p.is_empty]
        if parts:
            out[i] = shapely.union_all(parts) if len(parts) > 1 else parts[0]
            repaired[i] = True
        else:
            skipped[i] = True
    return out, repaired, skipped


def _tag_columns(df: pd.DataFrame, keys: list[str]) -> dict[str, pd.Series]:
    """One string column per key: from GDAL's own column if it has one, else from other_tags."""
    other = df["other_tags"] if "other_tags" in df else pd.Series([None] * len(df), index=df.index)
    other = other.map(lambda d: d if isinstance(d, dict) else {})
    cols = {}
    for k in keys:
        from_other = other.map(lambda d, k=k: d.get(k))
        if k in df.columns and k != "other_tags":
            cols[k] = df[k].where(df[k].notna(), from_other).astype(object)
        else:
            cols[k] = from_other.astype(object)
    return cols


def _finish(
    parts: list[gpd.GeoDataFrame], keys: list[str], source: str, bbox: tuple[float, float, float, float] | None = None
) -> OsmFeatures:
    """Concatenate rows, repair geometries and count what was repaired or skipped."""
    cols = ["osm_id", "kind", *keys, "geometry"]
    bbox = tuple(float(v) for v in bbox) if bbox is not None else None
    if not parts or all(len(p) == 0 for p in parts):
        return OsmFeatures(gpd.GeoDataFrame({c: [] for c in cols[:-1]}, geometry=[], crs="EPSG:4326"), source,
                           bbox=bbox)
    gdf = pd.concat([p for p in parts if len(p)], ignore_index=True)
    geoms, repaired, skipped = repair_geometries(gdf.geometry, gdf["kind"])
    gdf = gpd.GeoDataFrame(gdf.drop(columns="geometry"), geometry=geoms, crs="EPSG:4326")
    gdf = gdf[~skipped].reset_index(drop=True)[cols]
    # Deterministic order: by id, whatever the reader's internal order was.
    gdf = gdf.sort_values(["kind", "osm_id"], kind="stable").reset_index(drop=True)
    out = OsmFeatures(gdf, source, repaired=int(repaired.sum()), skipped=int(skipped.sum()), bbox=bbox)
    log.info("%s: %d features (%d repaired, %d skipped)", source, len(gdf), out.repaired, out.skipped)
    return out


@contextlib.contextmanager
def _seekable_osm(path: Path) -> Iterator[Path]:
    """GDAL's OSM driver needs a plain .osm/.pbf file: stream .bz2 into a temporary one."""
    if path.suffix != ".bz2":
        yield path
        return
    with tempfile.TemporaryDirectory(prefix="sareo-osm-") as tmp:
        plain = Path(tmp) / path.with_suffix("").name
        if plain.suffix not in (".osm", ".pbf"):
            plain = plain.with_suffix(".osm")
        try:
            with bz2.open(path, "rb") as src, open(plain, "wb") as dst:
                shutil.copyfileobj(src, dst, 1 << 20)
        except OSError as exc:
            raise OsmError(f"{path}: not a readable bzip2 file ({exc})") from None
        yield plain


def data_source(source: str | Path) -> Source:
    """Whom to credit for an OSM-format source: OpenStreetMap, unless an OSM XML file says otherwise.

    OSM XML carries its notice on the root element (the OSM API writes ``copyright="OpenStreetMap
    and contributors"`` and a ``license`` URL). A file whose ``copyright`` does not name OpenStreetMap
    (the demo's procedural scenes) is credited as it says, so its labels never claim OSM data.
    PBF, Overpass and unreadable headers are OpenStreetMap.
    """
    import xml.etree.ElementTree as ET

    path = Path(source)
    if str(source) == "overpass" or not str(path).endswith((".osm", ".osm.bz2", ".xml")) or not path.is_file():
        return OSM
    try:
        with (bz2.open(path, "rb") if path.suffix == ".bz2" else open(path, "rb")) as f:
            _, root = next(ET.iterparse(f, events=("start",)))
    except (OSError, ET.ParseError, StopIteration, EOFError):
        return OSM
    notice = str(root.attrib.get("copyright") or "").strip()
    if root.tag != "osm" or not notice or "openstreetmap" in notice.lower():
        return OSM
    return local_source(notice, root.attrib.get("license"))


def _varint(buf: bytes, i: int) -> tuple[int, int]:
    out = shift = 0
    while True:
        b = buf[i]
        i += 1
        out |= (b & 0x7F) << shift
        shift += 7
        if not b & 0x80:
            return out, i


def _proto_fields(buf: bytes) -> Iterator[tuple[int, int | bytes]]:
    """(field number, value) of a protobuf message: varints as int, length-delimited as bytes."""
    i = 0
    while i < len(buf):
        key, i = _varint(buf, i)
        wire = key & 7
        if wire == 0:
            v, i = _varint(buf, i)
        elif wire == 2:
            n, i = _varint(buf, i)
            v, i = buf[i : i + n], i + n
        elif wire in (1, 5):
            v, i = buf[i : i + (8 if wire == 1 else 4)], i + (8 if wire == 1 else 4)
        else:
            raise ValueError(f"protobuf wire type {wire}")
        yield key >> 3, v


def _pbf_bounds(path: Path) -> tuple[float, float, float, float] | None:
    """HeaderBlock.bbox of an OSM PBF file (nanodegrees, zigzag varints), None if absent."""
    import struct
    import zlib

    with open(path, "rb") as f:
        (n,) = struct.unpack(">I", f.read(4))
        header = dict(_proto_fields(f.read(n)))
        if header.get(1) != b"OSMHeader":
            return None
        blob = dict(_proto_fields(f.read(int(header[3]))))
    data = zlib.decompress(blob[3]) if 3 in blob else blob.get(1)
    for num, value in _proto_fields(data or b""):
        if num == 1:  # HeaderBBox: left, right, top, bottom
            box = {k: ((v >> 1) ^ -(v & 1)) / 1e9 for k, v in _proto_fields(value)}
            return box[1], box[4], box[2], box[3]
    return None


def _xml_bounds(path: Path) -> tuple[float, float, float, float] | None:
    """The <bounds> element OSM XML files (API, osmium, JOSM) carry before their data, None if absent."""
    import xml.etree.ElementTree as ET

    with (bz2.open(path, "rb") if path.suffix == ".bz2" else open(path, "rb")) as f:
        for _, el in ET.iterparse(f, events=("start",)):
            if el.tag == "bounds":
                a = el.attrib
                return float(a["minlon"]), float(a["minlat"]), float(a["maxlon"]), float(a["maxlat"])
            if el.tag in ("node", "way", "relation"):
                return None
    return None


def declared_bounds(path: str | Path) -> tuple[float, float, float, float] | None:
    """(west, south, east, north) an extract says it covers, or None (absent or unreadable).

    Clipped extracts cut coastlines at these bounds; the coast module closes them there.
    """
    path = Path(path)
    try:
        box = _pbf_bounds(path) if path.suffix == ".pbf" else _xml_bounds(path)
    except Exception:  # noqa: BLE001 - a missing or odd header only means "unknown"
        return None
    if box is None or not (box[2] > box[0] and box[3] > box[1]):
        return None
    return box


def read_osm_file(path: str | Path, bbox: tuple[float, float, float, float] | None, keys: list[str]) -> OsmFeatures:
    """Ways and relations of a local extract through GDAL's OSM driver, filtered to ``bbox``."""
    import pyogrio

    path = Path(path)
    if not path.is_file():
        raise OsmError(f"{path}: no such OSM file")
    if not str(path).endswith(OSM_SUFFIXES):
        raise OsmError(f"{path}: expected an OSM extract ending in {', '.join(OSM_SUFFIXES)}")
    parts = []
    with _seekable_osm(path) as plain, warnings.catch_warnings():
        # GDAL warns for every clipped ring; the repaired/skipped counts report them instead.
        warnings.simplefilter("ignore", RuntimeWarning)
        for layer, kind in _GDAL_LAYERS:
            try:
                df = pyogrio.read_dataframe(
                    plain, layer=layer, bbox=bbox, on_invalid="ignore", TAGS_FORMAT="JSON", use_arrow=False
                )
            except Exception as exc:  # noqa: BLE001 - pyogrio/GDAL raise several error types
                raise OsmError(f"{path}: GDAL's OSM driver cannot read layer {layer!r} ({exc})") from None
            if "osm_way_id" in df:  # multipolygons: closed ways carry osm_way_id, relations osm_id
                way = df["osm_way_id"].notna()
                osm_id = np.where(way, "w" + df["osm_way_id"].astype(str), "r" + df["osm_id"].astype(str))
            else:
                osm_id = "w" + df["osm_id"].astype(str)
            tags = _tag_columns(df, keys)
            parts.append(
                gpd.GeoDataFrame(
                    {"osm_id": osm_id, "kind": kind, **tags}, geometry=df.geometry.values, crs="EPSG:4326"
                )
            )
    out = _finish(parts, keys, str(path), bbox)
    out.extent = declared_bounds(path)
    return out


@contextlib.contextmanager
def _osmnx_settings(p: OsmParams) -> Iterator[Any]:
    """Point osmnx at the configured Overpass server and cache, restoring its global settings after."""
    import osmnx as ox

    names = ("overpass_url", "requests_timeout", "overpass_rate_limit", "cache_folder", "use_cache", "log_console")
    saved = {n: getattr(ox.settings, n) for n in names}
    try:
        ox.settings.overpass_url = p.overpass_url.rstrip("/")
        ox.settings.requests_timeout = float(p.overpass_timeout)
        ox.settings.overpass_rate_limit = p.overpass_rate_limit
        ox.settings.cache_folder = p.cache_dir
        ox.settings.use_cache = True
        ox.settings.log_console = False
        yield ox
    finally:
        for n, v in saved.items():
            setattr(ox.settings, n, v)


def overpass_tags() -> dict[str, bool]:
    """The Overpass filter: every main key of the legend's rules (any value), sorted."""
    from pipeline.legend import load_legend

    return {k: True for k in sorted({r.key for c in load_legend().classes for r in c.rules})}


def download_overpass(bbox: tuple[float, float, float, float], p: OsmParams | None = None) -> list[dict[str, Any]]:
    """Overpass's JSON answers for every legend key in ``bbox`` (osmnx downloader and response cache).

    osmnx splits a large area into several queries; each answer is returned as received. An
    answer with a ``remark`` (Overpass reports a timeout as HTTP 200 with partial data and a
    remark; osmnx does not cache it) is refused: a partial answer must never look complete.
    """
    p = p or OsmParams()
    source = f"overpass:{p.overpass_url}"
    w, s, e, n = (float(v) for v in bbox)
    if not (e > w and n > s):
        raise OsmError(f"{source}: bbox {bbox} is empty; expected (west, south, east, north)")
    from osmnx import _overpass, utils_geo  # the downloader behind ox.features_from_bbox, without the GeoDataFrame

    with _osmnx_settings(p):
        try:
            polygon = utils_geo.bbox_to_poly((w, s, e, n))
            answers = list(_overpass._download_overpass_features(polygon, overpass_tags()))
        except Exception as exc:  # noqa: BLE001 - requests/osmnx raise many error types
            raise OsmError(f"{source}: Overpass query for bbox {bbox} failed ({type(exc).__name__}: {exc})") from None
    for a in answers:
        if a.get("remark"):  # Overpass only remarks on failures (timeouts, memory): the data is incomplete
            raise OsmError(f"{source}: Overpass answered for bbox {bbox} with a remark (incomplete data): "
                           f"{a['remark']}")
    return answers


def overpass_xml(answers: Iterable[dict[str, Any]], bbox: tuple[float, float, float, float]) -> bytes:
    """Overpass JSON answers as one OSM XML document (deterministic bytes).

    Elements are merged across answers (osmnx's sub-queries overlap), sorted nodes, ways,
    relations by id, tags by key; coordinates at OSM's 7 decimals. ``<bounds>`` is the query
    bbox (every way crossing it is complete, so ``declared_bounds`` tells the coast module where
    the data is known to be whole), and the root carries the OpenStreetMap notice and licence.
    """
    from xml.sax.saxutils import quoteattr

    order = {"node": 0, "way": 1, "relation": 2}
    elements: dict[tuple[int, int], dict[str, Any]] = {}
    for answer in answers:
        for el in answer.get("elements") or []:
            if el.get("type") in order:
                elements.setdefault((order[el["type"]], int(el["id"])), el)
    w, s, e, n = (float(v) for v in bbox)
    lines = ['<?xml version="1.0" encoding="UTF-8"?>',
             (f'<osm version="0.6" generator="sareo (Overpass API via osmnx)" '
              f'copyright="OpenStreetMap and contributors" license={quoteattr(OSM.licence_url)}>'),
             f' <bounds minlat="{s:.7f}" minlon="{w:.7f}" maxlat="{n:.7f}" maxlon="{e:.7f}"/>']
    for (kind, oid), el in sorted(elements.items()):
        if kind == 0 and ("lat" not in el or "lon" not in el):
            continue  # a node without coordinates cannot be placed
        head = (f' <node id="{oid}" lat="{float(el["lat"]):.7f}" lon="{float(el["lon"]):.7f}"' if kind == 0
                else f' <{("way", "relation")[kind - 1]} id="{oid}"')
        body = [f'  <nd ref="{int(r)}"/>' for r in el.get("nodes") or []] if kind == 1 else []
        if kind == 2:
            body = [f'  <member type={quoteattr(str(m["type"]))} ref="{int(m["ref"])}" role={quoteattr(str(m.get("role") or ""))}/>'
                    for m in el.get("members") or []]
        tags = el.get("tags") or {}
        body += [f"  <tag k={quoteattr(str(k))} v={quoteattr(str(tags[k]))}/>" for k in sorted(tags)]
        if body:
            tag = ("node", "way", "relation")[kind]
            lines += [head + ">", *body, f" </{tag}>"]
        else:
            lines.append(head + "/>")
    lines.append("</osm>")
    return ("\n".join(lines) + "\n").encode("utf-8")


def read_overpass(
    bbox: tuple[float, float, float, float], keys: list[str], p: OsmParams | None = None
) -> OsmFeatures:
    """Query Overpass (cached) and read the answer as an OSM XML extract: the same reader as files."""
    p = p or OsmParams()
    xml = overpass_xml(download_overpass(bbox, p), bbox)
    with tempfile.TemporaryDirectory(prefix="sareo-overpass-") as tmp:
        path = Path(tmp) / "overpass.osm"
        path.write_bytes(xml)
        out = read_osm_file(path, bbox, keys)
    out.source = f"overpass:{p.overpass_url}"
    return out


def read_osm(
    source: str | Path,
    bbox: tuple[float, float, float, float] | None,
    keys: list[str] | None = None,
    p: OsmParams | None = None,
) -> OsmFeatures:
    """OSM features for ``bbox`` (west, south, east, north) from a local extract or ``"overpass"``.

    ``keys`` are the tag keys to keep as columns (default: every key of the default legend).
    The pipeline reads the copy the fetch stage put into ``source/`` (``pipeline.labels.stage.osm_input``);
    a direct path or ``"overpass"`` serves tests, the demo and interactive use.
    """
    keys = list(keys) if keys is not None else _default_keys()
    if str(source) == "overpass":
        if bbox is None:
            raise OsmError("overpass: a bbox (west, south, east, north) is required")
        return read_overpass(bbox, keys, p)
    return read_osm_file(source, bbox, keys)
