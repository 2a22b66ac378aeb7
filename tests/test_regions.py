"""Region files: every bad input fails with the file, the field and what was expected."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from pipeline.cli import main, sync
from pipeline.layout import ProjectLayout
from pipeline.regions import RegionError, load_region, load_regions

GOOD = {
    "name": "paris",
    "aoi": {"bbox": [2.30, 48.85, 2.32, 48.86]},
    "gsd_m": 0.5,
    "sar": {"stac": "s3://capella-open-data/stac/catalog.json", "product": "GEO", "polarization": "HH"},
    "eo": {"tiles": "https://tiles.example/{z}/{x}/{y}.png", "datetime": "2023-05-01"},
    "osm": {"overpass": True},
}


def write(tmp_path: Path, data: object, name: str = "paris") -> Path:
    (tmp_path / "regions").mkdir(exist_ok=True)
    p = tmp_path / "regions" / f"{name}.yaml"
    p.write_text(yaml.safe_dump(data), encoding="utf-8")
    return p


def variant(**changes: object) -> dict:
    d = yaml.safe_load(yaml.safe_dump(GOOD))
    for dotted, value in changes.items():
        keys = dotted.split("__")
        node = d
        for k in keys[:-1]:
            node = node[k]
        if value is None:
            node.pop(keys[-1])
        else:
            node[keys[-1]] = value
    return d


def test_good_region_loads_and_resolves_paths(tmp_path: Path) -> None:
    (tmp_path / "osm").mkdir()
    (tmp_path / "osm/paris.osm.pbf").write_bytes(b"")
    r = load_region(write(tmp_path, variant(osm={"file": "osm/paris.osm.pbf"})))
    assert r.name == "paris" and r.bbox == (2.30, 48.85, 2.32, 48.86) and r.sar[0]["product"] == "GEO"
    assert r.resolve("osm/paris.osm.pbf") == str(tmp_path / "osm/paris.osm.pbf")
    assert r.resolve("s3://b/k.json") == "s3://b/k.json"
    assert r.aoi.bounds == r.bbox


@pytest.mark.parametrize(
    ("data", "expected"),
    [
        (variant(sar__product="SLC"), "regions/paris.yaml: sar.product: 'SLC' is not geocoded; use GEO or GEC"),
        (variant(sar__product="CPHD"), "sar.product: 'CPHD' is not geocoded"),
        (variant(sar__product="XYZ"), "sar.product: 'XYZ' is not a known product"),
        (variant(colour="red"), "(top level): unknown field(s) colour"),
        (variant(sar__pol="HH"), "sar: unknown field(s) pol"),
        (variant(gsd_m=None), "'gsd_m' is required but missing"),
        (variant(gsd_m=-1), "gsd_m: -1 metres is outside 0.05..100.0"),
        (variant(gsd_m=0), "gsd_m: 0 metres is outside 0.05..100.0"),
        (variant(gsd_m=1e-6), "gsd_m: 1e-06 metres is outside 0.05..100.0"),
        (variant(aoi={"bbox": [179.9, 10, -179.9, 11]}), "aoi.bbox: west 179.9 > east -179.9; AOIs crossing the antimeridian"),
        (variant(aoi={"bbox": [2.3, 48.9, 2.4, 48.8]}), "aoi.bbox: south 48.9 > north 48.8"),
        (variant(aoi={"bbox": [2.3, 48.8, 2.3, 48.9]}), "aoi.bbox: [2.3, 48.8, 2.3, 48.9] has zero area (west == east)"),
        (variant(aoi={"bbox": [2.3, 48.8, 2.4, 48.8]}), "aoi.bbox: [2.3, 48.8, 2.4, 48.8] has zero area (south == north)"),
        (variant(aoi={"bbox": [-170, -80, 170, 80]}), "aoi, gsd_m: bbox (-170, -80, 170, 80) at 0.5 m makes a"),
        (variant(aoi={"bbox": [10, 50, 12, 50.02]}),
         "aoi, gsd_m: the region grid would be 286725 x 4450 px at 0.5 m; at most 200000 px a side"),
        (variant(aoi={"bbox": [10, 87, 11, 88]}), "aoi, gsd_m: bbox (10, 87, 11, 88): latitude 87.50 is too close"),
        (variant(osm={"file": "osm/missing.osm.pbf"}), "osm.file: 'osm/missing.osm.pbf': no such file"),
        (variant(sar={"file": "scene.tif"}), "sar.file: 'scene.tif': no such file"),
        (variant(eo={"file": "eo.tif", "datetime": "2023-01-01"}), "eo.file: 'eo.tif': no such file"),
        (variant(sar__stac="stac/catalog.json"), "sar.stac: 'stac/catalog.json': no such file"),
        (variant(aoi={"bbox": [200, 48.8, 201, 48.9]}), "aoi.bbox: [200, 48.8, 201, 48.9] is not [west, south, east, north]"),
        (variant(aoi={"bbox": [1, 2, 3]}), "aoi.bbox: [1, 2, 3] is too short"),
        (variant(aoi={}), "aoi: give exactly one of bbox"),
        (variant(eo__datetime=None), "eo.datetime: required for tiles and files"),
        (variant(eo__datetime="2023-13-45"), "eo.datetime: '2023-13-45' is not a calendar date"),
        (variant(eo__tiles="https://t/{z}/{x}.png"), "eo.tiles: 'https://t/{z}/{x}.png' must contain {z}, {x} and one of {y} (XYZ) or {-y} (TMS)"),
        (variant(eo__tiles="https://t/{z}/{x}/{y}/{-y}.png"), "must contain {z}, {x} and one of {y} (XYZ) or {-y} (TMS)"),
        (variant(sar__file="scene.tif"), "sar: give exactly one source of stac, file"),
        (variant(osm={}), "osm: give one of file, overpass"),
        (variant(sar__datetime="2024-01-01"), "sar.datetime: '2024-01-01' is not of the form"),
        (variant(name="Paris"), "name: 'Paris' must be lower-case"),
        (variant(name="lyon"), "name: 'lyon' must match the file name 'paris'"),
        ([1, 2], "expected a mapping of fields, got list"),
    ],
)
def test_bad_region_names_file_field_and_expectation(tmp_path: Path, data: object, expected: str) -> None:
    path = write(tmp_path, data)
    with pytest.raises(RegionError) as exc:
        load_region(path)
    assert expected in str(exc.value).replace(str(tmp_path) + "/", "")
    assert str(exc.value).startswith(str(path))


def test_geojson_aoi(tmp_path: Path) -> None:
    poly = {"type": "Polygon", "coordinates": [[[2.3, 48.85], [2.32, 48.85], [2.31, 48.86], [2.3, 48.85]]]}
    r = load_region(write(tmp_path, variant(aoi={"geojson": poly})))
    assert r.bbox == (2.3, 48.85, 2.32, 48.86) and r.aoi.area < (0.02 * 0.01)
    bad = {"type": "Polygon", "coordinates": [[[0, 0], [1, 1], [1, 0], [0, 1], [0, 0]]]}
    with pytest.raises(RegionError, match="aoi.geojson: expected a valid, non-empty Polygon"):
        load_region(write(tmp_path, variant(aoi={"geojson": bad})))


def test_file_level_problems_name_the_file(tmp_path: Path) -> None:
    (tmp_path / "regions").mkdir()
    p = tmp_path / "regions" / "paris.yaml"
    text = yaml.safe_dump(GOOD)
    p.write_text(text + "gsd_m: 1.0\n")  # a second gsd_m: plain YAML keeps the last one silently
    with pytest.raises(RegionError, match=r"paris.yaml: not valid YAML \(duplicate key 'gsd_m' \(first given on line"):
        load_region(p)
    p.write_bytes(text.encode() + "notes: Z\u00fcrich\n".encode("latin-1"))
    with pytest.raises(RegionError, match=r"paris.yaml: not UTF-8 text \(byte \d+: b'\\xfc'\)"):
        load_region(p)


def test_demo_region_may_name_what_the_demo_stage_makes(root: Path, tmp_path: Path) -> None:
    """Demo regions name files under data/demo/ that exist only after `sareo demo`; anything else must exist."""
    (tmp_path / "regions").mkdir()
    for name in ("helsinki", "uppland"):
        (tmp_path / "regions" / f"{name}.yaml").write_text((root / "regions" / f"{name}.yaml").read_text())
    (tmp_path / "pipeline" / "demo_data").mkdir(parents=True)
    with pytest.raises(RegionError, match=r"helsinki.yaml: osm.file: 'pipeline/demo_data/Helsinki.osm.pbf': no such"):
        load_regions(tmp_path / "regions")
    (tmp_path / "pipeline" / "demo_data" / "Helsinki.osm.pbf").write_bytes(b"")
    assert [r.name for r in load_regions(tmp_path / "regions")] == ["helsinki", "uppland"]


def test_missing_file_and_bad_yaml(tmp_path: Path) -> None:
    with pytest.raises(RegionError, match="no such region file"):
        load_region(tmp_path / "regions" / "nowhere.yaml")
    (tmp_path / "regions").mkdir()
    p = tmp_path / "regions" / "x.yaml"
    p.write_text("name: [unclosed\n")
    with pytest.raises(RegionError, match="x.yaml: not valid YAML"):
        load_region(p)


def test_sync_writes_index_and_cli_reports_errors(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    elsewhere = tmp_path / "elsewhere" / "eo.tif"  # a local file outside the project
    elsewhere.parent.mkdir()
    elsewhere.write_bytes(b"")
    tmp_path = tmp_path / "project"
    (tmp_path / "osm").mkdir(parents=True)
    (tmp_path / "osm" / "lyon.osm.pbf").write_bytes(b"")
    write(tmp_path, GOOD)
    write(tmp_path, variant(name="lyon", osm={"file": "osm/lyon.osm.pbf"}, eo={"file": str(elsewhere),
                                                                          "datetime": "2020-01-01"}), name="lyon")
    assert sync(ProjectLayout.at(tmp_path)) == ["lyon", "paris"]
    index = yaml.safe_load((tmp_path / "regions.index.yaml").read_text())["regions"]
    # local files become DVC inputs of the region's fetch stage; remote ones fall back to the region file
    assert index["lyon"] == {"osm": "osm/lyon.osm.pbf", "eo": str(elsewhere), "sar": "regions/lyon.yaml",
                             "sar_metadata": "regions/lyon.yaml", "demo": "regions/lyon.yaml",
                             "file": "regions/lyon.yaml"}
    assert set(index["paris"].values()) == {"regions/paris.yaml"}
    write(tmp_path, variant(sar__product="SLC"), name="paris")
    assert main(["--root", str(tmp_path), "validate"]) == 2
    err = capsys.readouterr().err
    assert "paris.yaml: sar.product: 'SLC' is not geocoded; use GEO or GEC" in err
    assert "Traceback" not in err


def test_named_sets_are_opt_in_and_kept(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """regions/SET/*.yaml join the build only with `sareo sync --set SET`; later syncs keep the set."""
    write(tmp_path, GOOD)
    (tmp_path / "regions" / "extra").mkdir()
    (tmp_path / "regions" / "extra" / "lyon.yaml").write_text(yaml.safe_dump(variant(name="lyon")))
    assert main(["--root", str(tmp_path), "sync"]) == 0
    assert list(yaml.safe_load((tmp_path / "regions.index.yaml").read_text())["regions"]) == ["paris"]
    assert main(["--root", str(tmp_path), "sync", "--set", "extra"]) == 0
    out = capsys.readouterr().out
    assert "(sets: extra)" in out and "note: regions lyon and paris overlap" in out  # same bbox: allowed
    index = yaml.safe_load((tmp_path / "regions.index.yaml").read_text())
    assert index["sets"] == ["extra"] and index["regions"]["lyon"]["file"] == "regions/extra/lyon.yaml"
    assert main(["--root", str(tmp_path), "sync"]) == 0  # keeps the set
    assert "lyon" in yaml.safe_load((tmp_path / "regions.index.yaml").read_text())["regions"]
    assert main(["--root", str(tmp_path), "sync", "--no-sets"]) == 0
    assert "lyon" not in yaml.safe_load((tmp_path / "regions.index.yaml").read_text())["regions"]
    assert main(["--root", str(tmp_path), "sync", "--set", "nowhere"]) == 2
    assert "nowhere: no such region set (known sets: extra)" in capsys.readouterr().err


def test_repository_regions_valid_and_index_in_sync(root: Path) -> None:
    """The committed regions all validate and regions.index.yaml lists exactly them."""
    from pipeline.dvcfiles import input_index

    regions = load_regions(root / "regions")
    index = yaml.safe_load((root / "regions.index.yaml").read_text())["regions"]
    assert index == input_index(regions, root), "run `sareo sync`"


def test_cli_separates_user_errors_from_bugs() -> None:
    from pipeline.cli import is_user_error
    from pipeline.fetch.stacio import FetchError

    assert is_user_error(FetchError("https://x/catalog.json: unreachable after 3 tries"))  # a RuntimeError
    assert is_user_error(RegionError("regions/x.yaml: gsd_m: ...")) and is_user_error(FileNotFoundError("x"))
    assert not is_user_error(KeyError("bug")) and not is_user_error(TypeError("bug"))


def test_bad_params_file_is_one_clear_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    write(tmp_path, GOOD)
    (tmp_path / "params.yaml").write_text("grid: [unclosed\n")
    assert main(["--root", str(tmp_path), "validate"]) == 2
    err = capsys.readouterr().err
    assert "params.yaml: not valid YAML" in err and "Traceback" not in err


def test_misspelt_param_is_one_line_naming_file_and_key(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """The issue's example: `patches: {strid: 128}` fails before any work, naming params.yaml and the key."""
    write(tmp_path, GOOD)
    (tmp_path / "params.yaml").write_text("patches: {strid: 128}\n")
    assert main(["--root", str(tmp_path), "validate"]) == 2
    err = capsys.readouterr().err.strip()
    assert err == f"sareo: error: {tmp_path / 'params.yaml'}: patches.strid: unknown key; did you mean 'stride'?"
    for text, expect in (("pachtes: {}\n", "pachtes: unknown section; did you mean 'patches'?"),
                         ("patches: {stride: fast}\n", "patches.stride: expected int, got 'fast'"),
                         ("splits: {ratios: [0.5, 0.5, 0.5]}\n", "splits.ratios: [0.5, 0.5, 0.5]; expected three"),
                         ("coregister: {model: homography}\n", "coregister.model: expected 'translation'")):
        (tmp_path / "params.yaml").write_text(text)
        assert main(["--root", str(tmp_path), "validate"]) == 2
        assert expect in capsys.readouterr().err, text


def test_repository_params_are_all_known_and_documented(root: Path) -> None:
    """params.yaml parses against the typed sections, and every key of every section has a doc line."""
    from pipeline.params import load_params, section_docs
    from pipeline.stages import PARAM_SECTIONS

    params = load_params(root / "params.yaml", PARAM_SECTIONS)
    data = yaml.safe_load((root / "params.yaml").read_text())
    assert set(data) == {c.section for c in PARAM_SECTIONS}
    for cls in PARAM_SECTIONS:
        assert params[cls] is not None
        missing = [k for k, _, doc in section_docs(cls) if not doc]
        assert not missing, f"{cls.section}: undocumented keys {missing}"


def test_every_local_sar_file_is_a_dvc_dependency(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A region with several local SAR files gets a slot per file; other regions are padded."""
    import subprocess

    from dvc.repo import Repo

    write(tmp_path, GOOD)
    (tmp_path / "inputs").mkdir()
    files = []
    for k in (1, 2):
        for suffix in (".tif", ".json"):
            (tmp_path / "inputs" / f"s{k}{suffix}").write_bytes(b"scene")
        files.append({"file": f"inputs/s{k}.tif", "metadata": f"inputs/s{k}.json", "provider": "capella"})
    write(tmp_path, variant(name="lyon", sar=files), "lyon")
    assert main(["--root", str(tmp_path), "sync"]) == 0
    index = yaml.safe_load((tmp_path / "regions.index.yaml").read_text())["regions"]
    assert index["lyon"]["sar"] == "inputs/s1.tif" and index["lyon"]["sar_2"] == "inputs/s2.tif"
    assert index["lyon"]["sar_metadata_2"] == "inputs/s2.json"
    assert index["paris"]["sar_2"] == index["paris"]["file"] == "regions/paris.yaml"  # padded
    # DVC itself resolves the dvc.yaml sync wrote: lyon's fetch depends on both of its scenes
    subprocess.run(["dvc", "init", "--no-scm", "-q"], cwd=tmp_path, check=True)
    monkeypatch.chdir(tmp_path)
    with Repo(str(tmp_path)) as repo:
        deps = {Path(d.def_path).as_posix() for d in repo.stage.collect("fetch@lyon")[0].deps}
    assert {"inputs/s1.tif", "inputs/s2.tif", "inputs/s1.json", "inputs/s2.json", "regions/lyon.yaml"} <= deps
