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
        "sar": {
            "type": "object",
            "additionalProperties": False,
            "properties": {
                "stac": {"type": "string", "minLength": 1},
                "ids": {"type": "array", "items": {"type": "string"}, "minItems": 1},
                "product": {"type": "string"},
                "polarization": {"type": "string", "enum": ["HH", "VV", "HV", "VH"]},
                "mode": {"type": "string", "enum": ["SP", "SM", "SS"]},
                "datetime": _DATE_RANGE,
                "max_items": {"type": "integer", "minimum": 1},
                "file": {"type": "string", "minLength": 1},
                "metadata": {"type": "string", "minLength": 1},
                "provider": {"type": "string", "enum": ["capella", "umbra"]},
                "catalog_root": {"type": "string", "minLength": 1},
            },
        },
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


class RegionError(ValueError):
    """A region file that cannot be used; the message names the file and the field."""


@dataclass(frozen=True)
class Region:
    """A validated region. ``root`` is the project root that relative paths resolve against."""

    name: str
    bbox: tuple[float, float, float, float]
    gsd_m: float
    sar: dict[str, Any]
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


def _field_path(err: jsonschema.ValidationError) -> str:
    parts = [str(p) if not isinstance(p, int) else f"[{p}]" for p in err.absolute_path]
    return ".".join(parts).replace(".[", "[") or "(top level)"


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
    given = [k for k in keys if data[section].get(k) not in (None, False)]
    if len(given) != 1:
        raise RegionError(f"{where}: {section}: give exactly one source of {', '.join(keys)} (got {given or 'none'})")
    return given[0]


def _check_dates(value: str, where: str) -> None:
    for part in value.split("/"):
        if part and part != "..":
            try:
                dt.date.fromisoformat(part[:10])
            except ValueError:
                raise RegionError(f"{where}: {part!r} is not a calendar date") from None


def validate(data: Any, where: str) -> None:
    """Raise RegionError naming ``where`` and the field for the first problem found."""
    if not isinstance(data, dict):
        raise RegionError(f"{where}: expected a mapping of fields, got {type(data).__name__}")
    errors = sorted(jsonschema.Draft202012Validator(SCHEMA).iter_errors(data), key=lambda e: list(e.absolute_path))
    if errors:
        e = errors[0]
        raise RegionError(f"{where}: {_field_path(e)}: {_explain(e)}")
    sar_src = _one_of(data, "sar", ("stac", "file"), where)
    _one_of(data, "eo", ("tiles", "stac", "file"), where)
    _one_of(data, "osm", ("file", "overpass"), where)
    product = str(data["sar"].get("product", "GEO")).upper()
    if product in NOT_GEOCODED:
        raise RegionError(f"{where}: sar.product: {product!r} is not geocoded; use GEO or GEC")
    if product not in ("GEO", "GEC"):
        raise RegionError(f"{where}: sar.product: {product!r} is not a known product; use GEO or GEC")
    for section in ("sar", "eo"):
        if "catalog_root" in data[section] and "stac" not in data[section]:
            raise RegionError(f"{where}: {section}.catalog_root: only meaningful with {section}.stac")
    if sar_src == "file" and "ids" in data["sar"]:
        raise RegionError(f"{where}: sar.ids: only meaningful with sar.stac, not with sar.file")
    if "datetime" in data["sar"]:
        _check_dates(data["sar"]["datetime"], f"{where}: sar.datetime")
    if "datetime" in data["eo"]:
        _check_dates(data["eo"]["datetime"], f"{where}: eo.datetime")
    if ("tiles" in data["eo"] or "file" in data["eo"]) and "datetime" not in data["eo"]:
        raise RegionError(
            f"{where}: eo.datetime: required for tiles and files (they carry no acquisition date; "
            "the SAR/EO time gap is part of every patch's metadata)"
        )
    tiles = data["eo"].get("tiles")
    if tiles and not ("{z}" in tiles and "{x}" in tiles and ("{y}" in tiles) != ("{-y}" in tiles)):
        raise RegionError(
            f"{where}: eo.tiles: {tiles!r} must contain {{z}}, {{x}} and one of {{y}} (XYZ) or {{-y}} (TMS)"
        )
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
    for section, key in LOCAL_INPUTS:
        href = getattr(region, section).get(key)
        if not href or re.match(r"^[a-z][a-z0-9+.-]*://", str(href)):
            continue
        path = Path(region.resolve(str(href)))
        if region.demo and path.absolute().is_relative_to((region.root / DEMO_OUTPUT).absolute()):
            continue  # made by the demo stage; fetch checks it
        if not path.is_file():
            raise RegionError(f"{region.path}: {section}.{key}: {href!r}: no such file ({path})")


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
    sar = {"product": "GEO", **data["sar"]}
    sar["product"] = str(sar["product"]).upper()
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


def region_files(regions_dir: str | Path) -> list[Path]:
    """All region files, sorted by name (the order every stage and the index use)."""
    return sorted(Path(regions_dir).glob("*.yaml"))


def load_regions(regions_dir: str | Path) -> list[Region]:
    """Load and validate every region; names must be unique."""
    regions = [load_region(p) for p in region_files(regions_dir)]
    seen: dict[str, Path] = {}
    for r in regions:
        if r.name in seen:
            raise RegionError(f"{r.path}: name: {r.name!r} is already used by {seen[r.name]}")
        seen[r.name] = r.path
    return regions
