"""dvc.yaml stays true to the code: every module a stage imports is one of its dependencies.

Otherwise editing, say, pipeline/provenance.py would not re-run the stages whose outputs it
changes, and `dvc repro` would silently keep stale data.
"""

from __future__ import annotations

import ast
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parent.parent
STAGE_MODULE = {"demo": "demo", "fetch": "fetch", "register": "coregister", "grid": "warp",
                "labels": "labels", "patches": "patches", "publish": "publish"}


def import_closure(module: str) -> set[str]:
    """Modules of the pipeline package that ``module`` imports, directly or not (lazy imports too)."""
    known = {p.stem for p in (ROOT / "pipeline").glob("*.py")}
    seen: set[str] = set()
    todo = [module]
    while todo:
        m = todo.pop()
        if m in seen:
            continue
        seen.add(m)
        for node in ast.walk(ast.parse((ROOT / "pipeline" / f"{m}.py").read_text(encoding="utf-8"))):
            names: list[str] = []
            if isinstance(node, ast.ImportFrom) and node.module:
                parts = node.module.split(".")
                if node.level == 1:
                    names = [parts[0]]
                elif parts[0] == "pipeline":
                    names = parts[1:2] or [a.name for a in node.names]
            elif isinstance(node, ast.Import):
                names = [a.name.split(".")[1] for a in node.names if a.name.startswith("pipeline.")]
            todo += [n for n in names if n in known]
    return seen - {"__init__"}


def test_every_stage_depends_on_the_code_it_runs() -> None:
    stages = yaml.safe_load((ROOT / "dvc.yaml").read_text())["stages"]
    for stage, module in STAGE_MODULE.items():
        spec = stages[stage].get("do", stages[stage])
        deps = set(spec["deps"])
        missing = sorted(f"pipeline/{m}.py" for m in import_closure(module) if f"pipeline/{m}.py" not in deps)
        assert not missing, f"dvc.yaml stage {stage!r} runs {missing} but does not depend on them"


def test_region_stages_depend_on_their_region_file() -> None:
    stages = yaml.safe_load((ROOT / "dvc.yaml").read_text())["stages"]
    for stage in ("fetch", "register", "grid", "labels", "patches"):
        assert "regions/${key}.yaml" in stages[stage]["do"]["deps"], stage
    fetch = stages["fetch"]["do"]["deps"]
    assert all(f"${{item.{slot}}}" in fetch for slot in ("sar", "sar_metadata", "eo", "osm", "demo"))
