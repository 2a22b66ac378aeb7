"""`sareo plan`: a SAR2Earth region planned against a Capella-layout static catalog served on loopback."""

from __future__ import annotations

import datetime as dt
import json
from pathlib import Path

import yaml

from pipeline.cli import main
from servers import http_dir  # noqa: F401 - pytest fixture
from test_fetch import _bench

ROOT = Path(__file__).resolve().parent.parent


def _project(tmp_path: Path, stac: str) -> Path:
    """A project holding the real regions/sar2earth/paris.yaml, its catalog pointed at ``stac``."""
    region = yaml.safe_load((ROOT / "regions" / "sar2earth" / "paris.yaml").read_text())
    region["sar"]["stac"] = stac
    (tmp_path / "proj" / "regions" / "sar2earth").mkdir(parents=True)
    (tmp_path / "proj" / "regions" / "sar2earth" / "paris.yaml").write_text(yaml.safe_dump(region))
    return tmp_path / "proj"


def test_plan_sar2earth_region_on_loopback_catalog(tmp_path: Path, http_dir, capsys) -> None:  # noqa: F811
    b = _bench()
    t = dt.datetime(2023, 5, 1, 10, tzinfo=dt.timezone.utc)
    items = [
        b.SynthItem("C13", "SP", "GEO", "HH", t, 2.33, 48.85, half_deg=0.02),                     # in the AOI
        b.SynthItem("C14", "SP", "GEO", "HH", t + dt.timedelta(days=200), 2.36, 48.86, 0.02),  # overlaps the first
        b.SynthItem("C14", "SP", "GEO", "VV", t + dt.timedelta(days=30), 2.35, 48.86, 0.02),   # not HH
        b.SynthItem("C13", "SP", "SLC", "HH", t + dt.timedelta(days=60), 2.35, 48.86, 0.02),   # not geocoded
        b.SynthItem("C15", "SP", "GEO", "HH", t, -87.6, 41.9, 0.02),                             # Chicago
    ]
    b.build_catalog(tmp_path / "cat", items)
    url = http_dir(tmp_path / "cat") + "/catalog.json"
    proj = _project(tmp_path, url)
    assert main(["--root", str(proj), "sync", "--set", "sar2earth"]) == 0
    capsys.readouterr()
    assert main(["--root", str(proj), "plan", "paris", "--json"]) == 0
    plan = json.loads(capsys.readouterr().out)
    ids = [s["id"] for s in plan["scenes"]]
    assert ids == [items[0].id, items[1].id]  # HH GEO intersecting the AOI, oldest first
    assert all(s["polarization"] == "HH" and s["provider"] == "capella" for s in plan["scenes"])
    assert all(s["patches"] > 100 for s in plan["scenes"])
    cells = plan["cells_per_split"]
    assert cells["train"] > cells["test"] > cells["val"] > 0
    assert sum(cells.values()) + plan["cells_dropped_at_block_edges"] == plan["cells_with_data"]
    assert plan["patches_expected"] <= sum(s["patches"] for s in plan["scenes"])
    assert plan["store_bytes_uncompressed"] == plan["patches_expected"] * 256 * 256 * 8
    assert "tiles" in plan["eo"] and not (proj / "data").exists()  # a dry run: nothing fetched
    assert main(["--root", str(proj), "plan", "paris"]) == 0
    text = capsys.readouterr().out
    assert "region paris:" in text and items[0].id in text and "expected patches" in text
