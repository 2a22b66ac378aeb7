"""The one declared list of stages: what each runs, reads, writes and which parameters it takes.

The CLI's sub-commands, ``sareo run`` and ``dvc.yaml`` (rendered by :mod:`pipeline.dvc_yaml`)
all come from :data:`STAGES`, so a stage cannot be added, renamed or rewired in one place only.
Each entry's ``run`` is a thin adapter: it builds the stage's typed inputs from the project
layout and the validated parameters, then calls the stage's entry function.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pipeline.calibrate import CalibrateParams
from pipeline.coregister import CoregisterParams, register_region
from pipeline.demo.params import DemoParams
from pipeline.demo.stage import build_demo
from pipeline.execute import ComputeParams, Executor, executor_for
from pipeline.fetch.params import FetchParams
from pipeline.fetch.stage import fetch_region
from pipeline.labels.params import LabelsParams
from pipeline.labels.stage import label_region
from pipeline.layout import ProjectLayout, RegionLayout
from pipeline.osm import OsmParams
from pipeline.params import Params
from pipeline.patches import PatchesParams, patch_region
from pipeline.publish.params import PublishParams
from pipeline.publish.stage import publish
from pipeline.regions import Region
from pipeline.splits import SplitsParams
from pipeline.warp import GridParams, grid_region

log = logging.getLogger("sareo.stages")

# Local files a region file names: DVC must see them as inputs of the region's fetch stage
# (regions.index.yaml lists them per region; see pipeline.dvcfiles.local_inputs). The SAR slots
# repeat per local SAR source of a region (sar, sar_metadata, then sar_2, sar_metadata_2, ...).
INPUT_SLOTS: dict[str, tuple[str, str]] = {
    "sar": ("sar", "file"), "sar_metadata": ("sar", "metadata"), "eo": ("eo", "file"), "osm": ("osm", "file"),
}


@dataclass(frozen=True)
class Context:
    """What every stage run gets: where things are and the validated parameters."""

    layout: ProjectLayout
    params: Params
    regions: Sequence[str] = ()  # the regions of the build (publish); region stages get theirs as an argument
    scheduler: str | None = None  # `sareo --scheduler ADDRESS` (overrides compute.scheduler)

    @property
    def executor(self) -> Executor:
        """Where the stage's heavy work runs (pipeline.execute); never changes its outputs."""
        return executor_for(self.params[ComputeParams], self.scheduler)


@dataclass(frozen=True)
class ParamUse:
    """A params.yaml section a stage reads, or only some keys of it (DVC re-runs on exactly those)."""

    section: type[Any]
    keys: tuple[str, ...] = ()

    def dvc(self) -> list[str]:
        name = self.section.section
        return [f"{name}.{k}" for k in self.keys] or [name]


@dataclass(frozen=True)
class Stage:
    """One pipeline stage: its command, code, data inputs and outputs, and parameters."""

    name: str
    help: str
    module: str  # the module holding the entry function; DVC depends on it and everything it imports
    run: Callable[..., Any]  # (Context, Region) for region stages, (Context,) for project stages
    params: tuple[ParamUse, ...]
    reads: Callable[[Any], list[Path]]  # data inputs, from a RegionLayout (region stages) or ProjectLayout
    writes: Callable[[Any], list[Path]]
    per_region: bool = True
    extra_deps: tuple[str, ...] = ()  # further DVC dependencies (templates over regions.index.yaml)
    local_inputs: bool = False  # depends on every input slot of regions.index.yaml (the region's local files)


# ------------------------------------------------------------------------------------------ adapters


def _demo(ctx: Context) -> Path:
    return build_demo(ctx.layout.demo, ctx.params[DemoParams])


def _fetch(ctx: Context, region: Region) -> Path:
    fetch = ctx.params[FetchParams]
    return fetch_region(region, ctx.layout.region(region.name).source, ctx.layout.cache(fetch.cache_dir), fetch,
                        ctx.params[OsmParams])


def _register(ctx: Context, region: Region) -> Any:
    r = ctx.layout.region(region.name)
    return register_region(region, r.source, r.registration, ctx.params[CoregisterParams], executor=ctx.executor)


def _grid(ctx: Context, region: Region) -> Any:
    r = ctx.layout.region(region.name)
    return grid_region(region, r.source, r.registration, r.grid, ctx.params[GridParams], ctx.params[CalibrateParams],
                       executor=ctx.executor)


def _labels(ctx: Context, region: Region) -> Path:
    r = ctx.layout.region(region.name)
    return label_region(region, r.source, r.grid, r.labels, ctx.params[LabelsParams], ctx.params[OsmParams],
                        executor=ctx.executor)


def _patches(ctx: Context, region: Region) -> Any:
    r = ctx.layout.region(region.name)
    return patch_region(region, r.source, r.registration, r.grid, r.labels, r.store_out, ctx.params[PatchesParams],
                        ctx.params[SplitsParams], executor=ctx.executor)


def _publish(ctx: Context) -> Any:
    lay = ctx.layout
    for stray in lay.stale_outputs(ctx.regions):
        if stray.parent == lay.patches_dir:
            log.warning("%s: not published: no region file regions/%s.yaml (`sareo sync` removes it)", stray,
                        stray.stem)
    stores = [lay.region(n).store for n in ctx.regions if lay.region(n).store.exists()]
    regions = {n: lay.region(n) for n in ctx.regions}
    return publish(stores, {n: r.registration for n, r in regions.items()}, lay.dataset, lay.stac,
                   ctx.params[PublishParams], grids={n: r.grid for n, r in regions.items()},
                   labels={n: r.labels for n, r in regions.items()},
                   sources={n: r.source for n, r in regions.items()})


def _region_dirs(*names: str) -> Callable[[RegionLayout], list[Path]]:
    def paths(r: RegionLayout) -> list[Path]:
        return [getattr(r, n).dir if n != "store" else r.store for n in names]

    return paths


STAGES: tuple[Stage, ...] = (
    Stage("demo", "generate the offline demo sources (catalog, tiles, OSM)", "pipeline.demo.stage", _demo,
          (ParamUse(DemoParams),), lambda p: [], lambda p: [p.demo], per_region=False),
    Stage("fetch", "download a region's SAR, EO and OSM into source/", "pipeline.fetch.stage", _fetch,
          (ParamUse(FetchParams), ParamUse(OsmParams, ("read_margin_m", "overpass_url", "overpass_timeout"))),
          lambda r: [], _region_dirs("source"),
          extra_deps=("${item.demo}",), local_inputs=True),
    Stage("register", "co-register the SAR to the EO (registration/)", "pipeline.coregister", _register,
          (ParamUse(CoregisterParams),), _region_dirs("source"), _region_dirs("registration")),
    Stage("grid", "calibrate and warp SAR and EO onto the region grid (grid/)", "pipeline.warp", _grid,
          (ParamUse(GridParams), ParamUse(CalibrateParams)), _region_dirs("source", "registration"),
          _region_dirs("grid")),
    Stage("labels", "rasterise the OSM land-cover classes, decide urban/rural (labels/)", "pipeline.labels.stage",
          _labels, (ParamUse(LabelsParams), ParamUse(OsmParams, ("read_margin_m",))), _region_dirs("source", "grid"),
          _region_dirs("labels")),
    Stage("patches", "cut patches, split them, write the region's Zarr store", "pipeline.patches", _patches,
          (ParamUse(PatchesParams), ParamUse(SplitsParams)),
          _region_dirs("source", "registration", "grid", "labels"), _region_dirs("store")),
    # publish also reads each region's registration.json, source/sar_metadata.json and grid/eo.tif (the
    # browser's background) and links its quick looks; every one of those is an input of the region's
    # store, so a change there reaches publish through data/patches
    Stage("publish", "write the dataset index, STAC collection and statistics", "pipeline.publish.stage", _publish,
          (ParamUse(PublishParams),), lambda p: [p.patches_dir, p.index_file],
          lambda p: [p.dataset.dir, p.stac], per_region=False),
)

BY_NAME: dict[str, Stage] = {s.name: s for s in STAGES}
REGION_STAGES: tuple[Stage, ...] = tuple(s for s in STAGES if s.per_region)

# Every params.yaml section, in file order: the loader refuses any other. `compute` is read by every
# heavy stage but is no DVC dependency of any: where the work runs never changes the outputs.
PARAM_SECTIONS: tuple[type[Any], ...] = (*dict.fromkeys(u.section for s in STAGES for u in s.params), ComputeParams)
