"""Shared test fixtures: paths to the real sample files in tests/data (licences: tests/data/NOTICE.md),
and `built`, the reduced offline demo project every end-to-end test reads."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import yaml

from pipeline.cli import main

ROOT = Path(__file__).resolve().parent.parent
FIXTURES = ROOT / "tests" / "data"


@pytest.fixture(scope="session")
def root() -> Path:
    return ROOT


@pytest.fixture(scope="session")
def fixtures() -> Path:
    if not FIXTURES.is_dir():
        pytest.fail(f"test data not found at {FIXTURES}")
    return FIXTURES


# about 560 x 500 m per region: big enough for several split blocks, small enough for seconds
BBOXES = {"helsinki": [24.939, 60.1665, 24.949, 60.171], "uppland": [17.588, 59.906, 17.598, 59.9105]}


@pytest.fixture(scope="session")
def built(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A reduced offline demo built by `sareo run` (every stage, as DVC runs them), once per session."""
    root = tmp_path_factory.mktemp("project")
    (root / "pipeline").mkdir()
    os.symlink(ROOT / "pipeline" / "demo_data", root / "pipeline" / "demo_data")
    (root / "regions").mkdir()
    for name, bbox in BBOXES.items():
        region = yaml.safe_load((ROOT / "regions" / f"{name}.yaml").read_text())
        region["aoi"]["bbox"] = bbox
        (root / "regions" / f"{name}.yaml").write_text(yaml.safe_dump(region))
    params = yaml.safe_load((ROOT / "params.yaml").read_text())
    for name, bbox in BBOXES.items():
        params["demo"]["regions"][name]["bbox"] = bbox
    # ~0.5 km2 regions: small ground blocks so that each region holds all three splits
    params["splits"]["block_m"] = 290.0  # measured: with these bboxes (and seed 0) every region gets all three splits
    params["fetch"]["cache_dir"] = str(root / ".cache")
    params["osm"]["cache_dir"] = str(root / ".cache" / "osmnx")
    (root / "params.yaml").write_text(yaml.safe_dump(params))
    assert main(["--root", str(root), "-q", "run"]) == 0
    return root
