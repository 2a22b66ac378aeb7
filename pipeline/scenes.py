"""The SAR scenes of a region, as the fetch stage recorded them (one place reads the scene list)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from pipeline.documents import read_json
from pipeline.layout import SourceFiles


class SceneError(ValueError):
    """A source directory whose scene list cannot be used; the message names the file."""


@dataclass(frozen=True)
class Scene:
    """One SAR acquisition of a region: its id (folder name), what it is, and its fetched files."""

    id: str
    item_id: str | None
    provider: str
    product: str
    polarization: str
    datetime: str
    files: SourceFiles
    record: dict[str, Any]
    eo: dict[str, Any]  # the scene's EO record (the region's EO, or its own from a search)


def read_scenes(source: SourceFiles) -> list[Scene]:
    """The region's scenes in stored order (oldest first), from ``source/provenance.json``."""
    prov = read_json(source.provenance, SceneError, missing="missing; run the fetch stage first") or {}
    recs = prov.get("scenes")
    if not isinstance(recs, list) or not recs:
        raise SceneError(f"{source.provenance}: scenes: expected a non-empty list of SAR scenes (fetch stage output)")
    out = []
    for i, r in enumerate(recs):
        if not isinstance(r, dict) or not r.get("scene"):
            raise SceneError(f"{source.provenance}: scenes[{i}]: expected a record with a 'scene' id")
        files = source.scene(str(r["scene"]))
        if not files.sar.is_file():
            raise SceneError(f"{files.sar}: missing; scene {r['scene']} is listed in {source.provenance}")
        own = read_json(files.provenance, SceneError, required=False) or {}
        out.append(Scene(str(r["scene"]), r.get("item_id"), str(r.get("provider") or "unknown"),
                         str(r.get("product") or ""), str(r.get("polarization") or ""),
                         str(r.get("datetime") or ""), files, r, own.get("eo") or prov.get("eo") or {}))
    return out
