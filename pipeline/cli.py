"""The `sareo` command: one sub-command per registered stage (what DVC runs), plus helpers.

Sub-commands come from :data:`pipeline.stages.STAGES`. Every stage reads the typed parameters
of params.yaml and, for region stages, a region file under regions/, and writes under data/.
Errors the user can fix (bad region file, bad parameter, unreachable catalog, bad metadata...)
print one clear line and exit with status 2 instead of a traceback.
"""

from __future__ import annotations

import argparse
import logging
import sys
import time
from pathlib import Path

from pipeline import __version__
from pipeline.atomic import remove_tree, write_text
from pipeline.coregister import CoregisterParams
from pipeline.dvcfiles import build_regions, index_sets, render_dvc_yaml, render_index
from pipeline.execute import close_all
from pipeline.layout import INDEX_FILE, ProjectLayout
from pipeline.locks import stage_lock
from pipeline.params import load_params, section_docs
from pipeline.regions import Region, RegionError, load_region, overlaps
from pipeline.stages import BY_NAME, PARAM_SECTIONS, REGION_STAGES, STAGES, Context, Stage

log = logging.getLogger("sareo.cli")


def region_of(layout: ProjectLayout, name: str) -> Region:
    """The validated region ``name``; an unknown name lists the known ones."""
    path = layout.region_file(name)
    if not path.exists():
        known = sorted(p.stem for p in (*layout.regions_dir.glob("*.yaml"), *layout.regions_dir.glob("*/*.yaml")))
        raise RegionError(f"{path}: no such region file (known regions: {', '.join(known) or 'none'})")
    return load_region(path, root=layout.root)


def run_stage(stage: Stage, ctx: Context, name: str | None = None, wait: bool = True) -> None:
    """Run one stage (for one region, when it is a region stage), timed in the log.

    Holds the stage's lock for the region while it runs: a second run of the same stage and
    region waits for the first (saying so), or with ``wait=False`` refuses at once.
    """
    what = f"{stage.name} {name}" if name else stage.name
    region = region_of(ctx.layout, str(name)) if stage.per_region else None
    with stage_lock(ctx.layout.lock(stage.name, name if stage.per_region else None), what, wait):
        t0 = time.perf_counter()
        log.info("%s: start", what)
        with _outputs(stage, ctx.layout, name):
            if region is not None:
                stage.run(ctx, region)
            else:
                stage.run(ctx)
        log.info("%s: done in %.1f s", what, time.perf_counter() - t0)


def _outputs(stage: Stage, layout: ProjectLayout, name: str | None):
    """Local data: nothing to do. ``--data s3://``: the stage's inputs pulled to scratch, its outputs
    pushed and committed after (the patch store is written to S3 directly); see pipeline.storage."""
    import contextlib

    from pipeline.storage import StorageError, remote_stage

    if layout.remote is None:
        return contextlib.nullcontext()
    if not stage.per_region:
        raise StorageError(f"sareo {stage.name}: runs on local data only (it writes {', '.join(str(p) for p in stage.writes(layout))}); "
                           "run it without --data s3://...")
    r = layout.region(str(name))
    return remote_stage(layout, stage.reads(r), stage.writes(r), direct=[r.store])


def claim_data(ctx: Context, overwrite: bool) -> None:
    """Under ``--data s3://``: make sure the prefix is this dataset's (pipeline.storage.claim)."""
    if ctx.layout.remote is not None:
        from pipeline.publish.params import PublishParams
        from pipeline.storage import claim

        claim(ctx.layout.remote, ctx.params[PublishParams].id, overwrite)


def sync(layout: ProjectLayout, sets: tuple[str, ...] | None = None) -> list[str]:
    """Validate every region and write what DVC reads: regions.index.yaml and dvc.yaml (only if changed).

    ``sets``: the named region sets to build (regions/SET/*.yaml); None keeps those of the index.
    Then remove the outputs of regions that are no longer in the build (see :func:`prune_removed`).
    """
    index, names, slots = render_index(layout, sets)
    dvc_yaml = render_dvc_yaml(slots=slots)
    for target, text in ((layout.index_file, index), (layout.root / "dvc.yaml", dvc_yaml)):
        if not target.exists() or target.read_text(encoding="utf-8") != text:
            write_text(target, text)
    prune_removed(layout, names)
    return names


def prune_removed(layout: ProjectLayout, names: list[str]) -> list[Path]:
    """Remove the store and stage directories of every region not in ``names`` (its file was deleted).

    A removed region's store would otherwise stay in data/patches/, where `glob("*.zarr")`, the
    loader and publish's DVC dependency all take it. They are derived data: DVC's cache keeps a
    copy (restore the region file, `sareo sync`, `dvc repro` checks them out again).
    """
    stale = layout.stale_outputs(names)
    for path in stale:
        remove_tree(path)
        log.warning("removed %s: region %s is not in the build any more (no region file, or its set was dropped)", path, path.name.removesuffix(".zarr"))
    return stale


def _names(layout: ProjectLayout) -> list[str]:
    return [r.name for r in build_regions(layout)]


def _cmd_validate(args: argparse.Namespace, ctx: Context) -> None:
    files = [Path(f) for f in args.files] or sorted(ctx.layout.regions_dir.glob("*.yaml"))
    for f in files:
        r = load_region(f, root=ctx.layout.root)
        print(f"{f}: ok ({r.name}, bbox {r.bbox}, {r.gsd_m} m)")


def _cmd_sync(args: argparse.Namespace, ctx: Context) -> None:
    sets = None
    if args.set or args.no_sets:
        sets = () if args.no_sets else tuple(sorted({*index_sets(ctx.layout), *args.set}))
    names = sync(ctx.layout, sets)
    chosen = index_sets(ctx.layout)
    print(f"{INDEX_FILE}: {len(names)} regions: {', '.join(names)}"
          + (f" (sets: {', '.join(chosen)})" if chosen else "") + f"; dvc.yaml: {len(STAGES)} stages")
    for a, b, share in overlaps(build_regions(ctx.layout)):
        print(f"note: regions {a} and {b} overlap ({100 * share:.0f} % of {a}): allowed, and leak-free "
              "(splits follow the ground); their patches of the same ground share a split")


def _cmd_params(args: argparse.Namespace, ctx: Context) -> None:
    """Every parameter with its default and what it does (the reference for params.yaml)."""
    for cls in PARAM_SECTIONS:
        users = [s.name for s in STAGES if any(u.section is cls for u in s.params)] or ["all; no DVC dependency"]
        print(f"{cls.section}:  # {(cls.__doc__ or '').strip().splitlines()[0]} (stages: {', '.join(users)})")
        current = ctx.params[cls]
        for key, default, doc in section_docs(cls):
            value = getattr(current, key)
            mark = "" if value == default else f"  (here: {value!r})"
            print(f"  {key}: {default!r}  # {doc}{mark}")


def _cmd_plan(args: argparse.Namespace, ctx: Context) -> None:
    """What a region would use and give, before any download."""
    import json

    from pipeline.fetch.params import FetchParams
    from pipeline.patches import PatchesParams
    from pipeline.plan import format_plan, plan_region
    from pipeline.splits import SplitsParams

    fetch = ctx.params[FetchParams]
    plan = plan_region(region_of(ctx.layout, args.region), ctx.layout.cache(fetch.cache_dir), fetch,
                       ctx.params[PatchesParams], ctx.params[SplitsParams])
    print(json.dumps(plan, indent=2) if args.json else format_plan(plan))


def _cmd_info(args: argparse.Namespace, ctx: Context) -> None:
    from pipeline.info import info

    print(info(args.path))


def _cmd_stage(args: argparse.Namespace, ctx: Context) -> None:
    stage = BY_NAME[args.stage]
    claim_data(ctx, args.overwrite)
    if stage.per_region:
        run_stage(stage, ctx, args.region, wait=not args.no_wait)
    else:
        run_stage(stage, Context(ctx.layout, ctx.params, _names(ctx.layout), ctx.scheduler), wait=not args.no_wait)


def _cmd_run(args: argparse.Namespace, ctx: Context) -> None:
    """Every stage for the given (default: all) regions, without DVC: handy for a quick try."""
    names = args.regions or _names(ctx.layout)
    wait = not args.no_wait
    claim_data(ctx, args.overwrite)
    if any(region_of(ctx.layout, n).demo for n in names) and not ctx.layout.demo.exists():
        run_stage(BY_NAME["demo"], ctx, wait=wait)
    for name in names:
        for stage in REGION_STAGES:
            if stage.name == "register" and not ctx.params[CoregisterParams].enabled:
                continue
            run_stage(stage, ctx, name, wait=wait)
    if ctx.layout.remote is not None:
        log.warning("publish: not run (it reads and writes local data); the stores are under %s/patches",
                    ctx.layout.remote)
        return
    run_stage(BY_NAME["publish"], Context(ctx.layout, ctx.params, _names(ctx.layout), ctx.scheduler), wait=wait)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="sareo",
        description="Build co-registered SAR/EO patch datasets with OpenStreetMap labels. "
        "`dvc repro` runs the stages below in order; each can also be run alone.",
    )
    p.add_argument("--version", action="version", version=f"sareo {__version__}")
    p.add_argument("--root", default=".", help="project root holding regions/ and params.yaml (default: .)")
    p.add_argument("--params", default=None, help="parameter file (default: ROOT/params.yaml)")
    p.add_argument("--data", default=None,
                   help="data directory (default: ROOT/data), or s3://BUCKET/PREFIX for outputs on object storage "
                   "(endpoint and credentials from AWS_ENDPOINT_URL, AWS_PROFILE, ~/.aws; docs/storage.md)")
    p.add_argument("--overwrite", action="store_true",
                   help="with --data s3://: build into a prefix that holds something else (deletes it first)")
    p.add_argument("-v", "--verbose", action="count", default=0, help="more log output (-vv for debug)")
    p.add_argument("-q", "--quiet", action="store_true", help="only warnings and errors")
    p.add_argument("--scheduler", default=None, metavar="ADDRESS",
                   help="run the heavy work (warp and label blocks, patch shards, scenes) on this dask.distributed "
                   "scheduler, e.g. tcp://HOST:8786 (overrides compute.scheduler; default: local threads; "
                   "docs/compute.md)")
    p.add_argument("--no-wait", action="store_true",
                   help="refuse to run a stage that another sareo run is running for the same region "
                   "(default: say so and wait for it)")
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")
    s = sub.add_parser("validate", help="check region files against the schema")
    s.add_argument("files", nargs="*", help="region files (default: regions/*.yaml)")
    s.set_defaults(func=_cmd_validate)
    s = sub.add_parser("sync", help=f"validate all regions; regenerate {INDEX_FILE} and dvc.yaml")
    s.add_argument("--set", action="append", default=[], metavar="NAME",
                   help="also build the named region set regions/NAME/*.yaml (e.g. sar2earth; kept in the index)")
    s.add_argument("--no-sets", action="store_true", help="build regions/*.yaml only (drop the named sets)")
    s.set_defaults(func=_cmd_sync)
    s = sub.add_parser("plan", help="dry run: the scenes, EO and expected patches of a region, before any download")
    s.add_argument("region", help="region name (regions/NAME.yaml)")
    s.add_argument("--json", action="store_true", help="print the plan as JSON")
    s.set_defaults(func=_cmd_plan)
    s = sub.add_parser("params", help="list every parameter with its default and meaning")
    s.set_defaults(func=_cmd_params)
    s = sub.add_parser("info", help="summarise a patch store or the published dataset (regions, scenes, splits, "
                       "classes, size)")
    s.add_argument("path", help="a store (data/patches/NAME.zarr) or the dataset folder (data/dataset)")
    s.set_defaults(func=_cmd_info)
    for stage in STAGES:
        s = sub.add_parser(stage.name, help=stage.help + (" (one region)" if stage.per_region else ""))
        if stage.per_region:
            s.add_argument("region", help="region name (regions/NAME.yaml)")
        s.set_defaults(func=_cmd_stage, stage=stage.name)
    s = sub.add_parser("run", help="run every stage without DVC (default: all regions)")
    s.add_argument("regions", nargs="*")
    s.set_defaults(func=_cmd_run)
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    level = logging.WARNING if args.quiet else (logging.DEBUG if args.verbose > 1 else logging.INFO)
    logging.basicConfig(level=level, format="%(asctime)s %(name)s %(levelname)s %(message)s", datefmt="%H:%M:%S")
    try:
        layout = _layout(args.root, args.data)
        params = load_params(args.params or layout.params_file, PARAM_SECTIONS)
        args.func(args, Context(layout, params, scheduler=args.scheduler))
    except Exception as exc:
        if args.verbose > 1 or not is_user_error(exc):
            raise
        print(f"sareo: error: {exc}", file=sys.stderr)
        return 2
    finally:
        close_all()
    return 0


def _layout(root: str, data: str | None) -> ProjectLayout:
    """The project layout; ``--data s3://...`` keeps a local scratch copy for stages in transit."""
    from pipeline.remote import is_url
    from pipeline.storage import StorageError, is_s3, scratch_dir

    if is_s3(data):
        return ProjectLayout.at(Path(root).resolve(), scratch_dir(str(data)) / "data", remote=str(data))
    if is_url(data):
        raise StorageError(f"--data {data}: only local directories and s3://BUCKET/PREFIX can receive outputs")
    return ProjectLayout.at(Path(root).resolve(), Path(data).resolve() if data else None)


def is_user_error(exc: BaseException) -> bool:
    """Errors the user can act on (bad input, unreachable source): one line, not a traceback.

    Every error class the pipeline defines names the file, field or href at fault; so do the
    ValueError/OSError families that rasterio, pyproj and the standard library raise on bad
    files. Anything else is a bug and keeps its traceback.
    """
    return isinstance(exc, (ValueError, OSError)) or type(exc).__module__.split(".")[0] == "pipeline"


if __name__ == "__main__":
    sys.exit(main())
