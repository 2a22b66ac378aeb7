"""The publish stage: patch stores in, the dataset index, statistics, plots and STAC collection out.

Outputs are byte-identical for the same inputs: stores are sorted by region, JSON keys are
sorted, every datetime comes from the data (never "now"), and both output directories are
written into a temporary sibling and renamed into place whole.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from pipeline.atomic import atomic_path, dumps_json
from pipeline.provenance import sha256_file
from pipeline.layout import DatasetFiles, GridFiles, LabelFiles, RegistrationFiles, SourceFiles
from pipeline.publish.browser import page_data, render_page
from pipeline.publish.card import citation, credits, dataset_card
from pipeline.publish.croissant import croissant_document
from pipeline.publish.index import PublishError, patch_table, read_store_meta, relpath, store_legend
from pipeline.publish.params import PublishParams
from pipeline.publish.scenes import region_scenes
from pipeline.publish.stac import RegionFiles, build_collection, check_stac, stac_documents
from pipeline.publish.stats import dataset_stats, region_footprints, write_plots
from pipeline.splits import SPLITS, audit_footprints

log = logging.getLogger("sareo.publish")


def dataset_audit(metas: list[Any], gdf: Any) -> dict[str, Any]:
    """The whole dataset's leak audit, across regions and scenes: no two patches of different splits
    may share ground. Fails the stage on a leak unless a store used the (reported leaky) random split."""
    code = {name: i for i, name in enumerate(SPLITS)}
    split = gdf["split"].map(code).fillna(-1).astype(int).to_numpy()
    res = audit_footprints(gdf["lon_min"].to_numpy(), gdf["lat_min"].to_numpy(), gdf["lon_max"].to_numpy(),
                           gdf["lat_max"].to_numpy(), split)
    methods = sorted({str((m.attrs.get("splits") or {}).get("method", "unknown")) for m in metas})
    leaky = [m.region for m in metas if (m.attrs.get("splits") or {}).get("method") == "random"]
    out = {**res, "methods": methods, "leaky_regions": leaky, "regions": len(metas), "patches": int(len(gdf))}
    if not res["passed"] and not leaky:
        raise PublishError(f"publish: dataset audit failed: {res['pairs']} pair(s) of patches of different splits "
                           f"share ground across the stores (e.g. {res.get('examples')}); use the lattice split "
                           "(splits.method: lattice) for overlapping regions")
    log.info("dataset audit: %s, %d overlapping pairs checked, %d cross-split pairs%s",
             "passed" if res["passed"] else "LEAKY (random split)", res["overlapping_pairs"], res["pairs"],
             f" (random split in {leaky})" if leaky else "")
    return out


def publish(
    stores: Sequence[Path],
    registrations: Mapping[str, RegistrationFiles],
    out: DatasetFiles,
    stac_dir: Path,
    p: PublishParams,
    *,
    grids: Mapping[str, GridFiles] | None = None,
    labels: Mapping[str, LabelFiles] | None = None,
    sources: Mapping[str, SourceFiles] | None = None,
) -> dict[str, Any]:
    """Write ``out`` (index, stats, plots) and ``stac_dir`` (collection.json, one item per region).

    ``registrations``, ``grids`` and ``labels`` map a region name to the files its item links
    to; a region without an entry, or whose file does not exist, simply lacks that asset.
    ``sources`` maps a region to its source files, whose ``sar_metadata.json`` (the product's own
    metadata) gives the STAC sar/sat/view fields of a single-scene store.
    Both directories are replaced whole and atomically. Returns the statistics written.
    """
    stac_dir = Path(stac_dir)
    if not stores:
        raise PublishError("publish: no patch stores given")
    metas = sorted((read_store_meta(s) for s in stores), key=lambda m: m.region)
    for m in metas:
        if m.n == 0:
            log.warning("%s: store has no patches; region %s is left out of the dataset", m.path, m.region)
    metas = [m for m in metas if m.n > 0]
    if not metas:
        raise PublishError(f"publish: none of the {len(stores)} stores holds a patch")
    names = [m.region for m in metas]
    dup = sorted({r for r in names if names.count(r) > 1})
    if dup:
        raise PublishError(f"publish: region(s) {dup} appear in more than one store: {[str(m.path) for m in metas]}")
    n_classes = {m.arrays["class_hist"].shape[1] for m in metas}
    if len(n_classes) != 1:
        raise PublishError(f"publish: stores disagree on the number of classes in class_hist: {sorted(n_classes)}")
    classes = store_legend(metas, n_classes.pop())
    gdf = patch_table(metas, classes, out.index.parent, p.splits)
    log.info("indexed %d patches from %d stores", len(gdf), len(metas))
    footprints = region_footprints(gdf)
    stats = dataset_stats(gdf, classes, footprints, p)
    stats["audit"] = dataset_audit(metas, gdf)
    regions = {
        name: RegionFiles(registrations.get(name), (grids or {}).get(name), (labels or {}).get(name))
        for name in names
    }
    scenes = {m.region: region_scenes(m, p.splits, (sources or {}).get(m.region), registrations.get(m.region))
              for m in metas}
    # Everything that can fail on bad data runs before the first output is replaced.
    collection = build_collection(metas, gdf, stats, footprints, classes, p, out, stac_dir, regions, scenes)
    docs = stac_documents(collection, stac_dir)

    splits = [s for s in p.splits if stats["totals"]["patches_by_split"].get(s)]
    times = [t for col in ("sar_datetime", "eo_datetime") for t in gdf[col].dropna()]
    year = str(max(times).year) if times else "unknown"  # from the data, never "now"
    browser = render_page(page_data(gdf, stats, classes, metas, scenes, p.splits, p.title, grids, p.browser_samples,
                                    p.browser_thumb_px, p.browser_background_px))  # fmt: skip
    card = dataset_card(stats, classes, metas, scenes, p, splits, year)

    with atomic_path(out.dir) as tmp:
        tmp.mkdir()
        t = out.at(tmp)
        gdf.to_parquet(t.index, index=False, compression="zstd")
        t.splits.mkdir()
        for s in splits:
            gdf[gdf["split"] == s].to_parquet(t.splits / f"{s}.parquet", index=False, compression="zstd")
        t.stats.write_text(dumps_json(stats), encoding="utf-8")
        write_plots(stats, t.plots, p.plot_dpi, p.splits)
        stores_glob = relpath(metas[0].path.parent, out.dir) + "/*.zarr/**"
        doc = croissant_document(gdf, stats, classes, metas, scenes, p, sha256_file(t.index), stores_glob,
                                 citation(p, year, credits(metas)))  # fmt: skip
        t.croissant.write_text(dumps_json(doc), encoding="utf-8")
        t.card.write_text(card, encoding="utf-8")
        t.browser.write_text(browser, encoding="utf-8")
    log.info("wrote %s", out.dir)
    with atomic_path(stac_dir) as tmp:
        for rel, doc in docs.items():
            (tmp / rel).parent.mkdir(parents=True, exist_ok=True)
            (tmp / rel).write_text(dumps_json(doc), encoding="utf-8")
        # tmp is a sibling of stac_dir, so relative hrefs resolve the same from both.
        problems = check_stac(tmp / "collection.json")
        if problems:
            raise PublishError("STAC links do not resolve:\n  " + "\n  ".join(problems))
    log.info("wrote %s (%d items)", stac_dir, len(docs) - 1)
    return stats
