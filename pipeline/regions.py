"""Region files: one YAML per place under regions/, validated before any work is done.

A bad file fails fast with the file, the field and what was expected, e.g.
``regions/paris.yaml: sar.product: 'SLC' is not geocoded; use GEO or GEC``.
Relative paths inside a region file are resolved against the project root (the folder
that holds regions/), so a region reads the same from any working directory.
"""

from __future__ import annotations

import datetime as dt
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import jsonschema

from pipeline.documents import read_yaml
from pipeline.grid import GridError, grid_for_bbox

NOT_GEOCODED = {"SLC", "SICD", "CPHD", "SIDD"}
MAX_GRID_SIDE_PX = 200_000  # 100 km at 0.5 m: several Capella scenes; one region must stay one place
MIN_GSD_M, MAX_GSD_M = 0.05, 100.0  # finer than any open SAR product by 5x; coarser is not a patch dataset
NAME_RE = r"^[a-z0-9][a-z0-9_-]{0,63}$"

_DATE_RANGE = {"type": "string", "pattern": r"^(\d{4}-\d{2}-\d{2}|\.\.)?/(\d{4}-\d{2}-\d{2}|\.\.)?$"}
_DATE = {"type": "string", "pattern": r"^\d{4}-\d{2}-\d{2}([T ][0-9:.]+Z?)?$"}

# eo.search: EO per scene from a STAC API search or a static catalog (pipeline.fetch.eo_select has the rule)
EO_SEARCH_PROPERTIES: dict[str, Any] = {
    "search": {"type": "string", "minLength": 1},
    "collections": {"type": "array", "items": {"type": "string", "minLength": 1}, "minItems": 1, "uniqueItems": True},
    "window_days": {"type": "number", "exclusiveMinimum": 0, "maximum": 36600},
    "max_cloud": {"type": "number", "minimum": 0, "maximum": 100},
    "max_gsd_m": {"type": "number", "exclusiveMinimum": 0},
    "sign": {"type": "string", "enum": ["planetary-computer"]},
}
EO_SOURCES = ("tiles", "stac", "file", "search")
EO_SEARCH_ONLY = ("collections", "window_days", "max_cloud", "max_gsd_m", "sign")

SCHEMA: dict[str, Any] = {
    "type": "object",
    "additionalProperties": False,
    "required": ["name", "aoi", "gsd_m", "sar", "eo", "osm"],
    "properties": {
        "name": {"type": "string", "pattern": NAME_RE},
        "aoi": {
            "type": "object",
            "additionalProperties": False,
            "minProperties": 1,
            "maxProperties": 1,
            "properties": {
                "bbox": {"type": "array", "items": {"type": "number"}, "minItems": 4, "maxItems": 4},
                "geojson": {"type": "object", "required": ["type", "coordinates"]},
            },
        },
        "gsd_m": {"type": "number", "minimum": MIN_GSD_M, "maximum": MAX_GSD_M},
        # one source mapping, or a list of them (several catalogs / providers); see SAR_SOURCE
        "sar": {"type": ["object", "array"], "minItems": 1},
        "eo": {
            "type": "object",
            "additionalProperties": False,
            "properties": {
                "tiles": {"type": "string", "minLength": 1},
                "zoom": {"type": "integer", "minimum": 0, "maximum": 24},
                "stac": {"type": "string", "minLength": 1},
                "asset": {"type": "string"},
                "file": {"type": "string", "minLength": 1},
                "datetime": _DATE,
                "bands": {"type": "array", "items": {"type": "integer", "minimum": 1}, "minItems": 1, "maxItems": 3},
                **EO_SEARCH_PROPERTIES,
                "catalog_root": {"type": "string", "minLength": 1},
            },
        },
        "osm": {
            "type": "object",
            "additionalProperties": False,
            "minProperties": 1,
            "properties": {
                "file": {"type": "string", "minLength": 1},
                "overpass": {"type": "boolean"},
            },
        },
        "notes": {"type": "string"},
        "attribution": {"type": "string"},
        "demo": {"type": "boolean"},
    },
}


# One SAR source: a catalog (static or API) with filters, or a local file. Every matching scene is used.
SAR_SOURCE: dict[str, Any] = {
    "type": "object",
    "additionalProperties": False,
    "properties": {
        "stac": {"type": "string", "minLength": 1},
        "ids": {"type": "array", "items": {"type": "string"}, "minItems": 1},
        "product": {"type": "string"},
        "polarization": {"type": "string", "enum": ["HH", "VV", "HV", "VH", "any"]},
        "mode": {"type": "string", "enum": ["SP", "SM", "SS"]},
        "datetime": _DATE_RANGE,
        "min_coverage": {"type": "number", "exclusiveMinimum": 0, "maximum": 1},
        "max_items": {"type": "integer", "minimum": 1},
        "file": {"type": "string", "minLength": 1},
        "metadata": {"type": "string", "minLength": 1},
        "provider": {"type": "string", "enum": ["capella", "umbra"]},
        "catalog_root": {"type": "string", "minLength": 1},
    },
}


class RegionError(ValueError):
    """A region file that cannot be used; the message names the file and the field."""


@dataclass(frozen=True)
class Region:
    """A validated region. ``root`` is the project root that relative paths resolve against."""

    name: str
    bbox: tuple[float, float, float, float]
    gsd_m: float
    sar: tuple[dict[str, Any], ...]  # the SAR sources, each with its product filled in (default GEO)
    eo: dict[str, Any]
    osm: dict[str, Any]
    path: Path
    root: Path
    aoi_geojson: dict[str, Any] | None = None
    notes: str = ""
    attribution: str = ""
    demo: bool = False
    raw: dict[str, Any] = field(default_factory=dict, repr=False, compare=False)

    def resolve(self, href: str) -> str:
        """A local path relative to the project root, or a URL (s3://, https://, file://) unchanged."""
        if re.match(r"^[a-z][a-z0-9+.-]*://", href):
            return href
        p = Path(href)
        return str(p if p.is_absolute() else (self.root / p))

    @property
    def aoi(self):  # -> shapely geometry
        """The AOI as a shapely geometry in lon/lat (the bbox when no polygon is given)."""
        from shapely.geometry import box, shape

        return shape(self.aoi_geojson) if self.aoi_geojson else box(*self.bbox)


def _field_path(err: jsonschema.ValidationError, prefix: str = "") -> str:
    parts = [str(p) if not isinstance(p, int) else f"[{p}]" for p in err.absolute_path]
    path = ".".join(parts).replace(".[", "[")
    return (f"{prefix}.{path}" if path else prefix) if prefix else (path or "(top level)")


def _explain(err: jsonschema.ValidationError) -> str:
    if err.validator == "additionalProperties":
        extra = sorted(set(err.instance) - set(err.schema.get("properties", {})))
        allowed = ", ".join(sorted(err.schema.get("properties", {})))
        return f"unknown field(s) {', '.join(extra)}; allowed: {allowed}"
    if err.validator == "required":
        return err.message.replace("is a required property", "is required but missing")
    if err.validator == "pattern" and err.absolute_path and err.absolute_path[-1] == "name":
        return f"{err.instance!r} must be lower-case letters, digits, '-' or '_'"
    if err.validator in ("minimum", "maximum") and list(err.absolute_path) == ["gsd_m"]:
        return f"{err.instance!r} metres is outside {MIN_GSD_M}..{MAX_GSD_M}"
    if err.validator == "pattern":
        return f"{err.instance!r} is not of the form YYYY-MM-DD (ranges: START/END, '..' for open)"
    if err.validator in ("minProperties", "maxProperties") and err.absolute_path:
        if err.absolute_path[-1] == "aoi":
            return "give exactly one of bbox [west, south, east, north] or geojson (a Polygon)"
        return f"give one of {', '.join(sorted(err.schema.get('properties', {})))}"
    return err.message


def _one_of(data: dict[str, Any], section: str, keys: tuple[str, ...], where: str) -> str:
    given = [k for k in keys if data.get(k) not in (None, False)]
    if len(given) != 1:
        raise RegionError(f"{where}: {section}: give exactly one source of {', '.join(keys)} (got {given or 'none'})")
    return given[0]


def sar_sources(data: dict[str, Any]) -> list[dict[str, Any]]:
    """The region's SAR sources as a list (a single mapping is a list of one)."""
    sar = data["sar"]
    return [sar] if isinstance(sar, dict) else list(sar)


def _source_where(data: dict[str, Any], i: int) -> str:
    """How a message names SAR source ``i``: ``sar`` for a single mapping, ``sar[i]`` in a list."""
    return "sar" if isinstance(data["sar"], dict) else f"sar[{i}]"


def _validate_sar(data: dict[str, Any], where: str) -> None:
    for i, src in enumerate(sar_sources(data)):
        at = _source_where(data, i)
        if not isinstance(src, dict):
            raise RegionError(f"{where}: {at}: expected a mapping (stac: ... or file: ...), got {type(src).__name__}")
        errors = sorted(jsonschema.Draft202012Validator(SAR_SOURCE).iter_errors(src), key=lambda e: list(e.absolute_path))
        if errors:
            raise RegionError(f"{where}: {_field_path(errors[0], at)}: {_explain(errors[0])}")
        kind = _one_of(src, at, ("stac", "file"), where)
        product = str(src.get("product", "GEO")).upper()
        if product in NOT_GEOCODED:
            raise RegionError(f"{where}: {at}.product: {product!r} is not geocoded; use GEO or GEC")
        if product not in ("GEO", "GEC"):
            raise RegionError(f"{where}: {at}.product: {product!r} is not a known product; use GEO or GEC")
        if kind == "file":
            for key in ("ids", "min_coverage", "max_items", "mode", "catalog_root"):
                if key in src:
                    raise RegionError(f"{where}: {at}.{key}: only meaningful with {at}.stac, not with {at}.file")
        elif "metadata" in src:
            raise RegionError(f"{where}: {at}.metadata: only meaningful with {at}.file")
        if "datetime" in src:
            _check_dates(src["datetime"], f"{where}: {at}.datetime")


def _check_dates(value: str, where: str) -> None:
    for part in value.split("/"):
        if part and part != "..":
            try:
                dt.date.fromisoformat(part[:10])
            except ValueError:
                raise RegionError(f"{where}: {part!r} is not a calendar date") from None


def validate_eo(data: dict[str, Any], where: str) -> None:
    """The eo section's checks beyond the schema (which has already passed)."""
    eo = data["eo"]
    kind = _one_of(eo, "eo", EO_SOURCES, where)
    if kind == "search":
        if "window_days" not in eo:
            raise RegionError(f"{where}: eo.window_days: required with eo.search (EO items are taken within "
                              "+- this many days of each SAR scene)")
        if "datetime" in eo:
            raise RegionError(f"{where}: eo.datetime: not used with eo.search (each EO item carries its own date; "
                              "eo.window_days sets how far from each scene)")
        if "zoom" in eo:
            raise RegionError(f"{where}: eo.zoom: only meaningful with eo.tiles")
    else:
        extra = [k for k in EO_SEARCH_ONLY if k in eo]
        if extra:
            raise RegionError(f"{where}: eo.{extra[0]}: only meaningful with eo.search, not with eo.{kind}")
    if "datetime" in eo:
        _check_dates(eo["datetime"], f"{where}: eo.datetime")
    if kind in ("tiles", "file") and "datetime" not in eo:
        raise RegionError(
            f"{where}: eo.datetime: required for tiles and files (they carry no acquisition date; "
            "the SAR/EO time gap is part of every patch's metadata)"
        )
    tiles = eo.get("tiles")
    if tiles and not ("{z}" in tiles and "{x}" in tiles and ("{y}" in tiles) != ("{-y}" in tiles)):
        raise RegionError(
            f"{where}: eo.tiles: {tiles!r} must contain {{z}}, {{x}} and one of {{y}} (XYZ) or {{-y}} (TMS)"
        )


def validate(data: Any, where: str) -> None:
    """Raise RegionError naming ``where`` and the field for the first problem found."""
    if not isinstance(data, dict):
        raise RegionError(f"{where}: expected a mapping of fields, got {type(data).__name__}")
    errors = sorted(jsonschema.Draft202012Validator(SCHEMA).iter_errors(data), key=lambda e: list(e.absolute_path))
    if errors:
        e = errors[0]
        raise RegionError(f"{where}: {_field_path(e)}: {_explain(e)}")
    _validate_sar(data, where)
    validate_eo(data, where)
    _one_of(data["osm"], "osm", ("file", "overpass"), where)
    if "catalog_root" in data["eo"] and not (data["eo"].get("stac") or data["eo"].get("search")):
        raise RegionError(f"{where}: eo.catalog_root: only meaningful with eo.stac or eo.search")
    if "bbox" in data["aoi"]:
        w, s, e, n = data["aoi"]["bbox"]
        if not (-180 <= w <= 180 and -180 <= e <= 180 and -90 <= s <= 90 and -90 <= n <= 90):
            raise RegionError(f"{where}: aoi.bbox: {data['aoi']['bbox']} is not [west, south, east, north] in degrees")
        if w == e or s == n:
            raise RegionError(f"{where}: aoi.bbox: {data['aoi']['bbox']} has zero area "
                              f"({'west == east' if w == e else 'south == north'}); give [west, south, east, north]")
        if w > e:
            raise RegionError(
                f"{where}: aoi.bbox: west {w} > east {e}; AOIs crossing the antimeridian are not supported "
                "(split the place into two regions)"
            )
        if s > n:
            raise RegionError(f"{where}: aoi.bbox: south {s} > north {n}; give [west, south, east, north]")
    else:
        from shapely.geometry import shape

        try:
            geom = shape(data["aoi"]["geojson"])
        except Exception as exc:  # noqa: BLE001 - shapely raises several types for bad GeoJSON
            raise RegionError(f"{where}: aoi.geojson: not a valid GeoJSON geometry ({exc})") from None
        if geom.geom_type not in ("Polygon", "MultiPolygon") or geom.is_empty or not geom.is_valid:
            raise RegionError(f"{where}: aoi.geojson: expected a valid, non-empty Polygon or MultiPolygon")
        w, s, e, n = geom.bounds
        if e - w > 180:
            raise RegionError(f"{where}: aoi.geojson: spans {e - w:.1f} degrees of longitude (antimeridian?)")
    try:
        grid = grid_for_bbox((w, s, e, n), float(data["gsd_m"]))
    except GridError as exc:
        raise RegionError(f"{where}: aoi, gsd_m: {exc}") from None
    if max(grid.width, grid.height) > MAX_GRID_SIDE_PX:
        raise RegionError(
            f"{where}: aoi, gsd_m: the region grid would be {grid.width} x {grid.height} px at {data['gsd_m']} m; "
            f"at most {MAX_GRID_SIDE_PX} px a side (split the place into several regions, or raise gsd_m)")
    if Path(where).stem != data["name"] and where.endswith((".yaml", ".yml")):
        raise RegionError(f"{where}: name: {data['name']!r} must match the file name {Path(where).stem!r}")


LOCAL_INPUTS = (("sar", "file"), ("sar", "metadata"), ("sar", "stac"), ("eo", "file"), ("eo", "stac"),
                ("osm", "file"))
DEMO_OUTPUT = Path("data") / "demo"  # what the demo stage writes: demo regions may name it before it exists


def check_local_inputs(region: Region) -> None:
    """Every local file the region names exists, before any stage runs (a missing ``osm.file`` used
    to fail only after the SAR and all tiles were downloaded). URLs are checked when fetched."""
    named = [(f"sar[{i}]" if len(region.sar) > 1 else "sar", spec) for i, spec in enumerate(region.sar)]
    named += [("eo", region.eo), ("osm", region.osm)]
    for at, spec in named:
        for section, key in LOCAL_INPUTS:
            if not at.startswith(section):
                continue
            href = spec.get(key)
            if not href or re.match(r"^[a-z][a-z0-9+.-]*://", str(href)):
                continue
            path = Path(region.resolve(str(href)))
            if region.demo and path.absolute().is_relative_to((region.root / DEMO_OUTPUT).absolute()):
                continue  # made by the demo stage; fetch checks it
            if not path.is_file():
                raise RegionError(f"{region.path}: {at}.{key}: {href!r}: no such file ({path})")


def load_region(path: str | Path, root: str | Path | None = None, check_files: bool = True) -> Region:
    """Read and validate one region file (and, with ``check_files``, that its local inputs exist)."""
    path = Path(path)
    where = str(path)
    data = read_yaml(path, "region file", RegionError)
    validate(data, where)
    if "bbox" in data["aoi"]:
        bbox = tuple(float(v) for v in data["aoi"]["bbox"])
        geojson = None
    else:
        from shapely.geometry import shape

        geojson = data["aoi"]["geojson"]
        bbox = tuple(float(v) for v in shape(geojson).bounds)
    sar = tuple({**src, "product": str(src.get("product", "GEO")).upper()} for src in sar_sources(data))
    region = Region(
        name=data["name"],
        bbox=bbox,  # type: ignore[arg-type]
        gsd_m=float(data["gsd_m"]),
        sar=sar,
        eo=dict(data["eo"]),
        osm=dict(data["osm"]),
        path=path,
        root=Path(root) if root is not None else path.resolve().parent.parent,
        aoi_geojson=geojson,
        notes=data.get("notes", ""),
        attribution=data.get("attribution", ""),
        demo=bool(data.get("demo", False)),
        raw=data,
    )
    if check_files:
        check_local_inputs(region)
    return region


def region_files(regions_dir: str | Path, sets: tuple[str, ...] = ()) -> list[Path]:
    """The region files of the build, sorted by name: regions/*.yaml plus those of each named set
    (regions/SET/*.yaml: e.g. the SAR2Earth regions, which need the network and so are opt-in)."""
    root = Path(regions_dir)
    files = list(root.glob("*.yaml"))
    for name in sets:
        folder = root / name
        if not folder.is_dir() or not re.fullmatch(NAME_RE, name):
            known = sorted(p.name for p in root.iterdir() if p.is_dir())
            raise RegionError(f"{folder}: no such region set (known sets: {', '.join(known) or 'none'})")
        files += folder.glob("*.yaml")
    return sorted(files, key=lambda p: (p.stem, str(p)))


def load_regions(regions_dir: str | Path, sets: tuple[str, ...] = ()) -> list[Region]:
    """Load and validate every region of the build; names must be unique (a set may not shadow a region)."""
    root = Path(regions_dir)
    regions = [load_region(p, root=root.parent) for p in region_files(root, sets)]
    seen: dict[str, Path] = {}
    for r in regions:
        if r.name in seen:
            raise RegionError(f"{r.path}: name: {r.name!r} is already used by {seen[r.name]}")
        seen[r.name] = r.path
    return regions


def overlaps(regions: list[Region]) -> list[tuple[str, str, float]]:
    """Pairs of regions whose AOIs overlap: (a, b, share of a's AOI inside b), by name."""
    out = []
    for i, a in enumerate(regions):
        for b in regions[i + 1:]:
            inter = a.aoi.intersection(b.aoi)
            if not inter.is_empty and inter.area > 0:
                out.append((a.name, b.name, float(inter.area / a.aoi.area)))
    return out
