"""Test helper: turn a hand-made single-scene source folder into the fetch stage's region layout.

Tests that write ``sar.tif``, ``sar_metadata.json``, ``eo.tif`` and a scene-style
``provenance.json`` ({"sar": ..., "eo": ...}) into one folder call :func:`as_region_source` to
get what fetch writes for a region: ``scenes/SCENE/`` with those files, and a region
``provenance.json`` listing the scene.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

SCENE = "scene-1"


def as_region_source(src: Path, scene: str = SCENE) -> Path:
    """Lay ``src`` out as a one-scene region source (files hardlinked); returns the scene folder."""
    src = Path(src)
    prov = json.loads((src / "provenance.json").read_text()) if (src / "provenance.json").is_file() else {}
    sdir = src / "scenes" / scene
    sdir.mkdir(parents=True, exist_ok=True)
    for name in ("sar.tif", "sar_metadata.json", "eo.tif"):
        if (src / name).is_file() and not (sdir / name).exists():
            os.link(src / name, sdir / name)
    sar = {"scene": scene, **(prov.get("sar") or {})}
    (sdir / "provenance.json").write_text(json.dumps({**prov, "scene": scene, "sar": sar}))
    region = {k: v for k, v in prov.items() if k != "sar"}
    (src / "provenance.json").write_text(json.dumps({**region, "scenes": [sar]}))
    return sdir
