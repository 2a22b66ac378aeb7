"""The land-cover legend: 25 OSM-derived classes, read from the data file ``pipeline/legend.yaml``.

The legend is data, not code, so a change of tags, colours or burn order is a reviewed diff of
one YAML file, and the same file travels into every dataset's metadata.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from pipeline.documents import read_yaml
from pipeline.provenance import OSM

LEGEND_PATH = Path(__file__).with_name("legend.yaml")
ROLES = ("residential", "nonresidential", "neither")
GEOMETRIES = ("area", "line", "any")
DENSITY = ("building", "road")


class LegendError(ValueError):
    """A legend file that cannot be used; the message names the file and the class/field."""


@dataclass(frozen=True)
class Rule:
    """One tag filter: ``key`` with a whitelisted value (``values=None`` means any value)."""

    key: str
    values: frozenset[str] | None
    geometry: str = "area"
    except_: frozenset[str] = frozenset()
    unless: tuple[tuple[str, frozenset[str]], ...] = ()
    width_m: tuple[tuple[str, float], ...] = ()  # (value or "*", metres)

    def default_width(self, value: str) -> float | None:
        """Default buffer width for a line with tag value ``value`` (None if the rule has none)."""
        widths = dict(self.width_m)
        return widths.get(value, widths.get("*"))


@dataclass(frozen=True)
class LegendClass:
    id: int
    name: str
    colour: str
    priority: int
    role: str = "neither"
    density: str | None = None
    rules: tuple[Rule, ...] = ()

    @property
    def rgb(self) -> tuple[int, int, int]:
        c = self.colour.lstrip("#")
        return (int(c[0:2], 16), int(c[2:4], 16), int(c[4:6], 16))


@dataclass(frozen=True)
class SeaSpec:
    """How the open sea (built from natural=coastline ways, not a tag rule) is burnt."""

    class_id: int
    priority: int


@dataclass(frozen=True)
class Legend:
    classes: tuple[LegendClass, ...]
    exclude: tuple[tuple[str, frozenset[str]], ...]
    lane_width_m: float = 3.5
    min_width_m: float = 0.5
    max_width_m: float = 100.0
    nodata: int = 255
    attribution: str = OSM.attribution
    version: int = 1
    sea: SeaSpec | None = None
    path: str = ""
    raw: dict[str, Any] = field(default_factory=dict, repr=False, compare=False)

    def __len__(self) -> int:
        return len(self.classes)

    def by_id(self, class_id: int) -> LegendClass:
        for c in self.classes:
            if c.id == class_id:
                return c
        raise KeyError(f"legend {self.path}: no class with id {class_id}")

    @property
    def names(self) -> list[str]:
        return [c.name for c in self.classes]

    def keys(self) -> list[str]:
        """Every OSM tag key the legend reads (rules, vetoes, exclusions, line widths, layer)."""
        keys = {k for k, _ in self.exclude} | {"layer", "width", "lanes", "area"}
        if self.sea is not None:
            keys.add("natural")  # natural=coastline
        for c in self.classes:
            for r in c.rules:
                keys.add(r.key)
                keys.update(k for k, _ in r.unless)
        return sorted(keys)

    def ids_with_role(self, role: str) -> list[int]:
        return [c.id for c in self.classes if c.role == role]

    def ids_with_density(self, density: str) -> list[int]:
        return [c.id for c in self.classes if c.density == density]

    def palette(self) -> np.ndarray:
        """(256, 3) uint8 colour table indexed by class id; nodata is mid grey."""
        pal = np.zeros((256, 3), np.uint8)
        pal[self.nodata] = (128, 128, 128)
        for c in self.classes:
            pal[c.id] = c.rgb
        return pal

    def to_dict(self) -> dict[str, Any]:
        """Compact JSON-able summary for dataset metadata (id, name, colour, priority, role)."""
        return {
            "version": self.version,
            "nodata": self.nodata,
            "attribution": self.attribution,
            "classes": [
                {"id": c.id, "name": c.name, "colour": c.colour, "priority": c.priority, "role": c.role}
                for c in self.classes
            ],
            "sea": {"class": self.sea.class_id, "priority": self.sea.priority, "from": "natural=coastline"}
            if self.sea else None,
        }


def _str_set(v: Any) -> frozenset[str]:
    if v is None:
        return frozenset()
    if isinstance(v, (str, int, float, bool)):
        v = [v]
    return frozenset(("yes" if x is True else "no" if x is False else str(x)) for x in v)


def _parse_rule(d: Any, where: str) -> Rule:
    if not isinstance(d, dict) or "key" not in d or "values" not in d:
        raise LegendError(f"{where}: a rule needs 'key' and 'values' (a list or \"*\"), got {d!r}")
    geometry = d.get("geometry", "area")
    if geometry not in GEOMETRIES:
        raise LegendError(f"{where}: geometry {geometry!r} must be one of {', '.join(GEOMETRIES)}")
    values = None if d["values"] == "*" else _str_set(d["values"])
    w = d.get("width_m", {})
    widths = {"*": w} if isinstance(w, (int, float)) else dict(w or {})
    for k, m in widths.items():
        if not isinstance(m, (int, float)) or m <= 0:
            raise LegendError(f"{where}: width_m[{k!r}] = {m!r} must be a positive number of metres")
    if geometry != "area" and not widths:
        raise LegendError(f"{where}: rule on {d['key']!r} buffers lines but gives no width_m")
    unless = tuple(sorted((str(k), _str_set(v)) for k, v in (d.get("unless") or {}).items()))
    return Rule(
        key=str(d["key"]),
        values=values,
        geometry=geometry,
        except_=_str_set(d.get("except")),
        unless=unless,
        width_m=tuple(sorted((str(k), float(m)) for k, m in widths.items())),
    )


def parse_legend(data: Any, where: str = "legend") -> Legend:
    """Validate a legend mapping (as read from YAML) and build a Legend."""
    if not isinstance(data, dict) or not isinstance(data.get("classes"), list):
        raise LegendError(f"{where}: expected a mapping with a 'classes' list")
    classes = []
    for i, c in enumerate(data["classes"]):
        w = f"{where}: classes[{i}]"
        for k in ("id", "name", "colour", "priority"):
            if k not in c:
                raise LegendError(f"{w}: field {k!r} is required")
        if not (isinstance(c["id"], int) and 0 <= c["id"] < 255):
            raise LegendError(f"{w}: id {c['id']!r} must be an integer in 0..254 (255 is nodata)")
        colour = str(c["colour"])
        if not (len(colour) == 7 and colour.startswith("#")):
            raise LegendError(f"{w} ({c['name']}): colour {colour!r} must be #rrggbb")
        role = c.get("role", "neither")
        if role not in ROLES:
            raise LegendError(f"{w} ({c['name']}): role {role!r} must be one of {', '.join(ROLES)}")
        density = c.get("density")
        if density is not None and density not in DENSITY:
            raise LegendError(f"{w} ({c['name']}): density {density!r} must be one of {', '.join(DENSITY)}")
        rules = tuple(_parse_rule(r, f"{w} ({c['name']}).rules[{j}]") for j, r in enumerate(c.get("rules") or []))
        classes.append(LegendClass(int(c["id"]), str(c["name"]), colour, int(c["priority"]), role, density, rules))
    ids = [c.id for c in classes]
    if len(set(ids)) != len(ids):
        raise LegendError(f"{where}: class ids must be unique, got {ids}")
    sea = data.get("sea")
    if sea is not None:
        if not (isinstance(sea, dict) and isinstance(sea.get("class"), int) and isinstance(sea.get("priority"), int)):
            raise LegendError(f"{where}: sea: expected {{class: <class id>, priority: <integer>}}, got {sea!r}")
        if sea["class"] not in ids:
            raise LegendError(f"{where}: sea: class {sea['class']} is not a class id of the legend")
        sea = SeaSpec(int(sea["class"]), int(sea["priority"]))
    lines = data.get("lines") or {}
    return Legend(
        classes=tuple(classes),
        exclude=tuple(sorted((str(k), _str_set(v)) for k, v in (data.get("exclude") or {}).items())),
        lane_width_m=float(lines.get("lane_width_m", 3.5)),
        min_width_m=float(lines.get("min_width_m", 0.5)),
        max_width_m=float(lines.get("max_width_m", 100.0)),
        nodata=int(data.get("nodata", 255)),
        attribution=str(data.get("attribution", OSM.attribution)),
        version=int(data.get("version", 1)),
        sea=sea,
        path=where,
        raw=data,
    )


def load_legend(path: str | Path | None = None) -> Legend:
    """Read and validate a legend file (default: the project's ``pipeline/legend.yaml``)."""
    path = Path(path) if path is not None else LEGEND_PATH
    return parse_legend(read_yaml(path, "legend file", LegendError), str(path))
