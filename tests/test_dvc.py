"""dvc.yaml stays true to the code: it is exactly what the stage registry renders.

Every module a stage imports (lazily too) is one of its dependencies, so editing, say,
pipeline/provenance.py re-runs the stages whose outputs it changes and `dvc repro` never keeps
stale data; and a stage cannot be added to the CLI without reaching dvc.yaml.
"""

from __future__ import annotations

from pathlib import Path

import yaml

from pipeline import dvcfiles
from pipeline.cli import build_parser
from pipeline.stages import INPUT_SLOTS, STAGES

ROOT = Path(__file__).resolve().parent.parent


def test_committed_dvc_yaml_is_the_rendered_registry() -> None:
    assert (ROOT / "dvc.yaml").read_text(encoding="utf-8") == dvcfiles.render_dvc_yaml(), (
        "dvc.yaml is stale: run `sareo sync` and commit it")


def test_cli_offers_exactly_the_registered_stages() -> None:
    sub = next(a for a in build_parser()._actions if a.dest == "command")
    assert [s.name for s in STAGES] == [c for c in sub.choices if c in {s.name for s in STAGES}]
    assert {"validate", "sync", "params", "plan", "info", "run"} | {s.name for s in STAGES} == set(sub.choices)


def test_import_closure_follows_lazy_relative_and_package_imports(tmp_path: Path) -> None:
    pkg = tmp_path / "pipeline"
    (pkg / "sub").mkdir(parents=True)
    (pkg / "__init__.py").write_text("")
    (pkg / "sub" / "__init__.py").write_text("")
    (pkg / "a.py").write_text("def f():\n    from pipeline.sub import b\n")  # lazy, names a module
    (pkg / "sub" / "b.py").write_text("from .c import x\nimport pipeline.d\n")  # relative + plain import
    (pkg / "sub" / "c.py").write_text("x = 1\n")
    (pkg / "d.py").write_text("")
    (pkg / "unused.py").write_text("")
    got = {p.relative_to(tmp_path).as_posix() for p in dvcfiles.import_closure("pipeline.a", tmp_path)}
    assert got == {"pipeline/__init__.py", "pipeline/a.py", "pipeline/sub/__init__.py", "pipeline/sub/b.py",
                   "pipeline/sub/c.py", "pipeline/d.py"}


def test_every_packaged_resource_is_some_module_s_dependency() -> None:
    """A data file under pipeline/ that no module claims would change outputs without re-running anything."""
    claimed = {r for rs in dvcfiles.RESOURCES.values() for r in rs}
    data = {p.relative_to(ROOT).as_posix() for p in (ROOT / "pipeline").rglob("*")
            if p.is_file() and p.suffix != ".py" and "__pycache__" not in p.parts}
    unclaimed = sorted(d for d in data if not any(d == c or d.startswith(c + "/") for c in claimed))
    assert not unclaimed, f"add these to pipeline/dvcfiles.py RESOURCES: {unclaimed}"
    assert all((ROOT / m).is_file() for m in dvcfiles.RESOURCES), "RESOURCES names a module that does not exist"


def test_region_stages_depend_on_their_region_file_and_local_inputs() -> None:
    stages = yaml.safe_load((ROOT / "dvc.yaml").read_text())["stages"]
    for s in STAGES:
        if s.per_region:
            assert "${item.file}" in stages[s.name]["do"]["deps"], s.name
    fetch = stages["fetch"]["do"]["deps"]
    assert all(f"${{item.{slot}}}" in fetch for slot in (*INPUT_SLOTS, "demo"))
    # every slot of the index is a dependency, and every region has every slot (DVC's foreach)
    index = yaml.safe_load((ROOT / "regions.index.yaml").read_text())["regions"]
    slots = {tuple(sorted(e)) for e in index.values()}
    assert len(slots) == 1
    assert {f"${{item.{s}}}" for s in slots.pop() if s != "file"} <= set(fetch)
    # publish re-runs when the region list changes (a removed region must leave the dataset)
    assert "regions.index.yaml" in stages["publish"]["deps"]


def test_demo_does_not_run_label_stage_code() -> None:
    """Editing the labels stage (urban rule, zones, PNG) must not re-run the demo and then every region.

    The demo renders its scene from the land-cover classes (classify, rasterize, coast: the one
    definition of a class), so those it does depend on; nothing of the stage around them.
    """
    demo = yaml.safe_load((ROOT / "dvc.yaml").read_text())["stages"]["demo"]["deps"]
    for f in ("pipeline/labels/stage.py", "pipeline/labels/urban.py", "pipeline/fetch/stage.py",
              "pipeline/coregister.py", "pipeline/warp.py", "pipeline/patches.py", "pipeline/publish/stage.py"):
        assert f not in demo, f
