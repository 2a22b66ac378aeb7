"""The dry run: what a region would use and give, before anything is downloaded.

Walks (or searches) the region's SAR catalogs exactly as the fetch stage does (catalog JSON
only), and from the chosen scenes' footprints and the region grid alone predicts the patches
per scene and per split (the lattice split is a function of the ground, so it is known before
any pixel is read) and the store size. Nothing is written but the walk cache.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import numpy as np

from pipeline.fetch.cache import Cache
from pipeline.fetch.items import expected_checksum, footprint, select_data_asset
from pipeline.fetch.params import FetchParams
from pipeline.fetch.sar import region_sources, select_scenes
from pipeline.fetch.stacio import Transport
from pipeline.grid import grid_for_bbox
from pipeline.patches import PatchesParams, patch_origins
from pipeline.regions import Region
from pipeline.splits import SPLITS, SplitsParams, split_footprints

# bytes of one patch in the store before compression: SAR float32 + EO 3 x uint8 + label uint8
PATCH_BYTES = 4 + 3 + 1


@dataclasses.dataclass
class ScenePlan:
    """One scene as planned: what it is and how many patches it would give."""

    id: str
    datetime: str
    provider: str
    product: str
    polarization: str
    mode: str
    coverage: float
    bytes: int | None
    patches: int
    source: str


def _inside(fp: Any, lon0: np.ndarray, lat0: np.ndarray, lon1: np.ndarray, lat1: np.ndarray) -> np.ndarray:
    """Which patch boxes lie wholly inside the (scene footprint ∩ AOI) polygon."""
    import shapely

    shapely.prepare(fp)
    return np.asarray(shapely.contains(fp, shapely.box(lon0, lat0, lon1, lat1)), bool)


def plan_region(region: Region, cache_dir: Path, fetch: FetchParams, patches: PatchesParams,
                splits: SplitsParams) -> dict[str, Any]:
    """The plan of one region: its scenes, the EO choice, patches per scene and split, store size."""
    cache = Cache(Path(cache_dir).absolute(), Transport.from_params(fetch))
    grid = grid_for_bbox(region.bbox, region.gsd_m)
    size, stride = patches.size, patches.stride
    rows, cols = patch_origins(grid.height, grid.width, size, stride)
    t = grid.transform
    lon0, lon1 = t.c + t.a * cols, t.c + t.a * (cols + size)
    lat1, lat0 = t.f + t.e * rows, t.f + t.e * (rows + size)
    scenes: list[ScenePlan] = []
    covered = np.zeros(len(rows), bool)
    total = 0
    for sc in select_scenes(region, cache, fetch):
        item, facts = sc.candidate.item, sc.candidate.facts
        pol = sc.source.spec.get("polarization")
        key, asset = select_data_asset(item, None if pol in (None, "any") else pol)
        _, nbytes = expected_checksum(asset)
        ok = _inside(footprint(sc.candidate.doc).intersection(region.aoi), lon0, lat0, lon1, lat1)
        covered |= ok
        total += int(ok.sum())
        scenes.append(ScenePlan(sc.id, str(facts.datetime), facts.provider or "unknown", facts.product or "",
                                (pol if pol not in (None, "any") else None) or ",".join(facts.polarizations),
                                facts.mode or "", round(sc.candidate.coverage, 4), nbytes, int(ok.sum()),
                                sc.source.where))
    files = [s for s in region_sources(region) if s.spec.get("file")]
    cells = np.flatnonzero(covered)
    res = split_footprints(lon0[cells], lat0[cells], lon1[cells], lat1[cells], splits)
    kept = res.split >= 0
    share = {name: int((res.split == i).sum()) for i, name in enumerate(SPLITS)}
    per_patch = size * size * PATCH_BYTES
    # every scene's patches of a kept cell are kept (one split per ground cell)
    keep_share = float(kept.mean()) if len(cells) else 0.0
    expected = int(round(total * keep_share))
    return {
        "region": region.name,
        "grid": {"width": grid.width, "height": grid.height, "gsd_m": grid.gsd_m},
        "scenes": [dataclasses.asdict(s) for s in scenes],
        "file_scenes": [s.spec["file"] for s in files],
        "eo": _eo_choice(region),
        "candidate_positions": int(len(rows)),
        "cells_with_data": int(len(cells)),
        "cells_per_split": share,
        "cells_dropped_at_block_edges": int((~kept).sum()),
        "patches_expected": expected,
        "store_bytes_uncompressed": expected * per_patch,
        "note": "patches assume every pixel inside a scene footprint is valid (min_valid can only lower them); "
                "files named by sar.file are not planned (their footprint is known only after download)",
    }


def _eo_choice(region: Region) -> str:
    eo = region.eo
    if eo.get("search"):
        return (f"per scene: STAC search {eo['search']} collections {eo.get('collections', 'any')} within "
                f"{eo['window_days']} days, cloud <= {eo.get('max_cloud', 'any')}; nearest in time first, "
                "mosaicked until the scene's footprint in the AOI is covered")
    kind = next(k for k in ("tiles", "stac", "file") if eo.get(k))
    return f"one for the region: {kind} {eo[kind]} (dated {eo.get('datetime', 'by its item')})"


def format_plan(plan: dict[str, Any]) -> str:
    """The plan as the terminal shows it."""
    def mb(n: int | None) -> str:
        return "?" if n is None else f"{n / 1e6:,.1f} MB"

    lines = [f"region {plan['region']}: grid {plan['grid']['width']} x {plan['grid']['height']} px at "
             f"{plan['grid']['gsd_m']} m, {len(plan['scenes'])} scene(s)"]
    lines.append(f"  {'scene':58s} {'date':20s} {'pol':5s} {'mode':4s} {'AOI':>6s} {'bytes':>10s} {'patches':>7s}")
    for s in plan["scenes"]:
        lines.append(f"  {s['id'][:58]:58s} {s['datetime'][:19]:20s} {s['polarization'][:5]:5s} {s['mode'][:4]:4s} "
                     f"{100 * s['coverage']:5.1f}% {mb(s['bytes']):>10s} {s['patches']:7d}")
    for f in plan["file_scenes"]:
        lines.append(f"  file {f}: footprint known after download")
    lines.append(f"  SAR to download: {mb(sum(s['bytes'] or 0 for s in plan['scenes']))}"
                 + (" (some sizes unknown)" if any(s["bytes"] is None for s in plan["scenes"]) else ""))
    lines.append(f"  EO: {plan['eo']}")
    c = plan["cells_per_split"]
    lines.append(f"  ground cells with data: {plan['cells_with_data']} of {plan['candidate_positions']} positions; "
                 f"per split train {c['train']}, val {c['val']}, test {c['test']}; "
                 f"{plan['cells_dropped_at_block_edges']} dropped at split-block edges")
    lines.append(f"  expected patches: {plan['patches_expected']} (all scenes); store about "
                 f"{mb(plan['store_bytes_uncompressed'])} uncompressed")
    lines.append(f"  note: {plan['note']}")
    return "\n".join(lines)
