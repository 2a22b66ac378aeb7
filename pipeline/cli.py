"""The `sareo` command: one sub-command per pipeline stage (what DVC runs), plus helpers.

Every stage reads params.yaml and a region file under regions/, and writes under data/.
Errors the user can fix (bad region file, unreachable catalog, bad metadata...) print one
clear line and exit with status 2 instead of a traceback.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import sys
import time
from pathlib import Path
from typing import Any

import yaml

from . import __version__
from .atomic import write_text
from .documents import read_yaml
from .regions import Region, RegionError, load_region, load_regions

log = logging.getLogger("sareo.cli")

INDEX_FILE = "regions.index.yaml"

# stage name -> (module, function, region-level?)
STAGES: dict[str, tuple[str, str]] = {
    "fetch": ("pipeline.fetch", "fetch_region"),
    "register": ("pipeline.coregister", "register_region"),
    "grid": ("pipeline.warp", "grid_region"),
    "labels": ("pipeline.labels", "label_region"),
    "patches": ("pipeline.patches", "patch_region"),
}


def load_params(path: str | Path) -> dict[str, Any]:
    """params.yaml as a dict (empty when the file does not exist: every module has defaults)."""
    p = Path(path)
    if not p.exists():
        return {}
    data = read_yaml(p, "parameter file", RegionError) or {}
    if not isinstance(data, dict):
        raise RegionError(f"{p}: expected a mapping of parameter sections")
    return data


class Layout:
    """Where each stage reads and writes, relative to the project root (see docs/DESIGN.md)."""

    def __init__(self, root: Path, data: Path | None = None) -> None:
        self.root = root
        self.data = data if data is not None else root / "data"

    def region_file(self, name: str) -> Path:
        return self.root / "regions" / f"{name}.yaml"

    def region_dir(self, name: str) -> Path:
        return self.data / "regions" / name

    def store(self, name: str) -> Path:
        return self.data / "patches" / f"{name}.zarr"


def _region(layout: Layout, name: str) -> Region:
    path = layout.region_file(name)
    if not path.exists():
        known = sorted(p.stem for p in (layout.root / "regions").glob("*.yaml"))
        raise RegionError(f"{path}: no such region file (known regions: {', '.join(known) or 'none'})")
    return load_region(path, root=layout.root)


def run_stage(stage: str, name: str, layout: Layout, params: dict[str, Any]) -> None:
    """Run one region-level stage for one region."""
    region = _region(layout, name)
    rdir = layout.region_dir(name)
    module = importlib.import_module(STAGES[stage][0])
    fn = getattr(module, STAGES[stage][1])
    t0 = time.perf_counter()
    log.info("%s %s: start", stage, name)
    if stage == "fetch":
        cache = Path(params.get("fetch", {}).get("cache_dir", ".cache/sareo"))
        fn(region, rdir / "source", cache if cache.is_absolute() else layout.root / cache, params)
    elif stage == "register":
        fn(region, rdir / "source", rdir / "registration", params)
    elif stage == "grid":
        reg = rdir / "registration" / "registration.json"
        fn(region, rdir / "source", reg if reg.exists() else None, rdir / "grid", params)
    elif stage == "labels":
        fn(region, rdir / "grid", rdir / "labels", params)
    elif stage == "patches":
        fn(region, rdir, layout.store(name), params)
    log.info("%s %s: done in %.1f s", stage, name, time.perf_counter() - t0)


# Local files a region file names: DVC must see them as inputs of the region's fetch stage.
INPUT_SLOTS = {"sar": ("sar", "file"), "sar_metadata": ("sar", "metadata"), "eo": ("eo", "file"), "osm": ("osm", "file")}


def local_inputs(region: Region, root: Path) -> dict[str, str]:
    """Each input slot's local file (project-relative when inside the project), else the region file.

    DVC's foreach cannot take a list of dependencies per item, so every region has the same slots;
    a slot without a local file points at the region file, which the stage depends on anyway.
    Remote sources (URLs) are not tracked: they are cached, and `dvc repro -f fetch@NAME` refetches.
    """
    own = region.path.resolve().relative_to(root.resolve()).as_posix()
    slots = {"demo": "data/demo" if region.demo else own}  # only demo regions read the demo stage's output
    for slot, (section, key) in INPUT_SLOTS.items():
        href = getattr(region, section).get(key)
        if not href or "://" in str(href):
            slots[slot] = own
            continue
        path = Path(region.resolve(str(href))).resolve()
        try:
            slots[slot] = path.relative_to(root.resolve()).as_posix()
        except ValueError:
            slots[slot] = str(path)
    return slots


def sync_index(root: Path) -> list[str]:
    """Validate every region file and write what DVC's foreach stages iterate over: names and local inputs."""
    regions = load_regions(root / "regions")
    index = {r.name: local_inputs(r, root) for r in regions}
    text = (
        "# Generated by `sareo sync` from regions/*.yaml: the regions DVC builds and the local files\n"
        "# each one reads (DVC dependencies of its fetch stage). Do not edit by hand.\n"
        + yaml.safe_dump({"regions": index}, sort_keys=True)
    )
    target = root / INDEX_FILE
    if not target.exists() or target.read_text(encoding="utf-8") != text:
        write_text(target, text)
    return list(index)


def _cmd_validate(args: argparse.Namespace, layout: Layout, params: dict[str, Any]) -> None:
    files = [Path(f) for f in args.files] or sorted((layout.root / "regions").glob("*.yaml"))
    for f in files:
        r = load_region(f, root=layout.root)
        print(f"{f}: ok ({r.name}, bbox {r.bbox}, {r.gsd_m} m)")


def _cmd_sync(args: argparse.Namespace, layout: Layout, params: dict[str, Any]) -> None:
    names = sync_index(layout.root)
    print(f"{INDEX_FILE}: {len(names)} regions: {', '.join(names)}")


def _cmd_demo(args: argparse.Namespace, layout: Layout, params: dict[str, Any]) -> None:
    from .demo import build_demo

    build_demo(Path(args.out) if args.out else layout.data / "demo", params)


def _cmd_publish(args: argparse.Namespace, layout: Layout, params: dict[str, Any]) -> None:
    from .publish import publish

    names = [r.name for r in load_regions(layout.root / "regions")]
    stores = [layout.store(n) for n in names if layout.store(n).exists()]
    missing = [n for n in names if not layout.store(n).exists()]
    if missing:
        log.warning("publish: no patch store yet for %s (run their stages first)", ", ".join(missing))
    publish(stores, layout.data / "dataset", layout.root / "stac" / "dataset", params)


def _cmd_run(args: argparse.Namespace, layout: Layout, params: dict[str, Any]) -> None:
    """Every stage for the given (default: all) regions, without DVC: handy for a quick try."""
    names = args.regions or [r.name for r in load_regions(layout.root / "regions")]
    if any(_region(layout, n).demo for n in names) and not (layout.data / "demo").exists():
        _cmd_demo(argparse.Namespace(out=None), layout, params)
    for name in names:
        for stage in STAGES:
            if stage == "register" and not params.get("coregister", {}).get("enabled", True):
                continue
            run_stage(stage, name, layout, params)
    _cmd_publish(args, layout, params)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="sareo",
        description="Build co-registered SAR/EO patch datasets with OpenStreetMap labels. "
        "`dvc repro` runs the stages below in order; each can also be run alone.",
    )
    p.add_argument("--version", action="version", version=f"sareo {__version__}")
    p.add_argument("--root", default=".", help="project root holding regions/ and params.yaml (default: .)")
    p.add_argument("--params", default=None, help="parameter file (default: ROOT/params.yaml)")
    p.add_argument("--data", default=None, help="data directory (default: ROOT/data)")
    p.add_argument("-v", "--verbose", action="count", default=0, help="more log output (-vv for debug)")
    p.add_argument("-q", "--quiet", action="store_true", help="only warnings and errors")
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")
    s = sub.add_parser("validate", help="check region files against the schema")
    s.add_argument("files", nargs="*", help="region files (default: regions/*.yaml)")
    s.set_defaults(func=_cmd_validate)
    s = sub.add_parser("sync", help=f"validate all regions and regenerate {INDEX_FILE} for DVC")
    s.set_defaults(func=_cmd_sync)
    s = sub.add_parser("demo", help="generate the offline demo sources (catalog, tiles, OSM)")
    s.add_argument("--out", default=None, help="output folder (default: DATA/demo)")
    s.set_defaults(func=_cmd_demo)
    for stage in STAGES:
        s = sub.add_parser(stage, help=f"run the {stage} stage for one region")
        s.add_argument("region", help="region name (regions/NAME.yaml)")
        s.set_defaults(func=lambda a, lay, par, _st=stage: run_stage(_st, a.region, lay, par))
    s = sub.add_parser("publish", help="write the dataset index, STAC collection and statistics")
    s.set_defaults(func=_cmd_publish)
    s = sub.add_parser("run", help="run every stage without DVC (default: all regions)")
    s.add_argument("regions", nargs="*")
    s.set_defaults(func=_cmd_run)
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    level = logging.WARNING if args.quiet else (logging.DEBUG if args.verbose > 1 else logging.INFO)
    logging.basicConfig(level=level, format="%(asctime)s %(name)s %(levelname)s %(message)s", datefmt="%H:%M:%S")
    root = Path(args.root).resolve()
    layout = Layout(root, Path(args.data).resolve() if args.data else None)
    try:
        params = load_params(args.params or root / "params.yaml")
        args.func(args, layout, params)
    except Exception as exc:
        if args.verbose > 1 or not is_user_error(exc):
            raise
        print(f"sareo: error: {exc}", file=sys.stderr)
        return 2
    return 0


def is_user_error(exc: BaseException) -> bool:
    """Errors the user can act on (bad input, unreachable source): one line, not a traceback.

    Every error class the pipeline defines names the file, field or href at fault; so do the
    ValueError/OSError families that rasterio, pyproj and the standard library raise on bad
    files. Anything else is a bug and keeps its traceback.
    """
    return isinstance(exc, (ValueError, OSError)) or type(exc).__module__.split(".")[0] == __package__


if __name__ == "__main__":
    sys.exit(main())
