"""The dataset card: data/dataset/README.md, a Hugging Face style card written from the data.

YAML front matter (licence, task categories, size category, one split config per split file) and
what a reader needs to judge the data before downloading it: regions and scenes, classes with
their shares, the split method and audit, co-registration and calibration per scene, how it was
built, known limits, licences and attribution, and how to cite it. Every figure comes from the
statistics, store attributes and scene records; nothing here reads imagery.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import yaml

from pipeline.publish.index import LegendClass, StoreMeta
from pipeline.publish.params import PublishParams
from pipeline.publish.scenes import Scene

SPLIT_FILES = "splits/{split}.parquet"  # per-split copies of the index rows (Hugging Face configs)
KNOWN_LIMITS = (
    "Labels come from OpenStreetMap: where OSM is incomplete or out of date, pixels are labelled "
    "background (class 0) or wrong; the class shares show what OSM maps, not what is on the ground.",
    "SAR and optical images are taken at different dates (see the time gap statistics); changes between "
    "them (construction, season, water level) are in the data.",
    "Co-registration is automatic; a region whose confidence is low keeps the SAR georeferencing as "
    "published and is flagged in the co-registration table. Accuracy was measured on simulated and semi-real pairs, not surveyed "
    "ground truth.",
    "Umbra GEC products carry no calibration constant: their SAR is relative dB, not sigma0 "
    "(per-patch `calibrated` flag).",
    "Splits are spatial blocks within each region, with a buffer: they are independent in space but "
    "share the region's scene, date and sensor. Hold out whole regions for out-of-distribution tests.",
)


def size_category(n: int) -> str:
    """Hugging Face's size_categories value for ``n`` records."""
    for bound, name in ((1_000, "n<1K"), (10_000, "1K<n<10K"), (100_000, "10K<n<100K"), (1_000_000, "100K<n<1M"),
                        (10_000_000, "1M<n<10M")):  # fmt: skip
        if n < bound:
            return name
    return "10M<n<100M"


def _fmt(v: Any, nd: int = 2) -> str:
    if v is None or v == "":
        return "–"
    if isinstance(v, bool):
        return "yes" if v else "no"
    if isinstance(v, float):
        return f"{v:.{nd}f}"
    if isinstance(v, (list, tuple)):
        return ", ".join(str(x) for x in v) or "–"
    return str(v)


def _table(header: list[str], rows: list[list[Any]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(_fmt(c) if not isinstance(c, str) else (c or "–") for c in r) + " |" for r in rows]
    return "\n".join(lines)


def citation(p: PublishParams, year: str, credits: list[str]) -> str:
    """BibTeX entry for the dataset (also Croissant's citeAs); ``credits``: the data's attribution lines."""
    key = p.id.replace("-", "_").replace(".", "_")
    note = "; ".join(["Built with sareo", *credits])
    return (f"@misc{{{key}_{p.version.replace('.', '_')},\n  title = {{{p.title}}},\n  author = {{sareo developers}},\n"
            f"  year = {{{year}}},\n  version = {{{p.version}}},\n  note = {{{note}}}\n}}")  # fmt: skip


def credits(metas: list[StoreMeta]) -> list[str]:
    """Every attribution line the stores carry, de-duplicated and sorted."""
    return sorted({str(a) for m in metas for a in (m.attrs.get("attribution") or [])})


def front_matter(stats: dict[str, Any], p: PublishParams, splits: list[str]) -> dict[str, Any]:
    """The card's YAML header (Hugging Face dataset card metadata)."""
    return {
        "pretty_name": p.title,
        "license": "other",
        "license_name": "cc-by-4.0-and-odbl-1.0",
        "license_link": p.license_links[0].href if p.license_links else None,
        "license_details": "; ".join(f"{lnk.title or lnk.href} ({lnk.href})" for lnk in p.license_links),
        "task_categories": ["image-segmentation", "image-classification", "image-to-image"],
        "task_ids": ["semantic-segmentation"],
        "size_categories": [size_category(int(stats["totals"]["patches"]))],
        "tags": sorted({*(k.lower().replace(" ", "-") for k in p.keywords), "sar", "remote-sensing", "geospatial",
                        "croissant"}),  # fmt: skip
        "configs": [{"config_name": "default", "default": True,
                     "data_files": [{"split": s, "path": SPLIT_FILES.format(split=s)} for s in splits]}],
    }  # fmt: skip


def dataset_card(
    stats: dict[str, Any],
    classes: list[LegendClass],
    metas: list[StoreMeta],
    scenes: Mapping[str, list[Scene]],
    p: PublishParams,
    splits: list[str],
    year: str,
) -> str:
    """The whole card as Markdown text (deterministic for the same inputs)."""
    t = stats["totals"]
    by_split = t["patches_by_split"]
    all_scenes = [sc for r in sorted(scenes) for sc in scenes[r]]
    gsds = sorted({float((m.attrs.get("grid") or {}).get("gsd_m") or 0) for m in metas})
    size = (metas[0].attrs.get("params") or {}).get("patches", {}).get("size", 256)
    head = yaml.safe_dump(front_matter(stats, p, splits), sort_keys=False, allow_unicode=True, width=1000)
    out = [f"---\n{head}---", f"# {p.title}", "", p.description, ""]
    out.append(
        f"**{t['patches']} patches** of {size}x{size} px ({', '.join(f'{s} {by_split.get(s, 0)}' for s in splits)}) "
        f"from **{t['regions']} region(s)** and **{len(all_scenes)} SAR scene(s)**, covering {t['area_km2']:g} km2 "
        f"at {', '.join(f'{g:g}' for g in gsds)} m per pixel. Version {p.version}. Each patch holds `sar` "
        f"(sigma0 dB, float32), `eo` (RGB uint8) and `label` ({len(classes)} classes, 255 = no data) on one "
        "EPSG:4326 grid, pixel-aligned."
    )
    out += ["", "Files: `index.parquet` (GeoParquet, one row per patch), `splits/*.parquet` (the same rows per "
            "split), `stats.json`, `croissant.json` (MLCommons Croissant + GeoCroissant), `index.html` (open in a "
            "browser: footprints, samples), `plots/`; the stores are `../patches/NAME.zarr`; the STAC catalog is "
            "`stac/dataset/collection.json`.", ""]  # fmt: skip

    out += ["## Regions", ""]
    rows = []
    for m in metas:
        r = stats["patches"]["by_region"][m.region]
        rows.append([m.region, r["urban_rural"], *[r["patches"].get(s, 0) for s in splits], r["patches"]["total"],
                     r["area_km2"], float((m.attrs.get("grid") or {}).get("gsd_m") or 0), len(scenes.get(m.region, []))])
    out += [_table(["region", "urban/rural", *splits, "total", "area km2", "GSD m", "scenes"], rows), ""]
    simulated = [m.region for m in metas if any("simulated" in str(a).lower() for a in m.attrs.get("attribution") or [])]
    if simulated:
        out += [f"**Simulated data:** the SAR and EO of {', '.join(simulated)} are simulated (the offline demo), "
                "not real imagery; see the attribution below.", ""]

    out += ["## Scenes", ""]
    rows = [[sc.region, sc.label, sc.provider, sc.product, (sc.datetime or "")[:19],
             sc.fields.get("sar:frequency_band"), sc.fields.get("sar:polarizations"),
             sc.fields.get("sar:instrument_mode"), sc.fields.get("sar:observation_direction"),
             sc.fields.get("view:incidence_angle"), sc.fields.get("sat:orbit_state"), sc.patches.get("total")]
            for sc in all_scenes]  # fmt: skip
    out += [_table(["region", "scene (STAC item)", "provider", "product", "acquired (UTC)", "band", "polarisation",
                    "mode", "look", "incidence deg", "orbit", "patches"], rows), ""]  # fmt: skip

    out += ["## Classes", "", "Share of labelled pixels (summed over patches: pixels that overlapping patches "
            "share count once per patch, as a training loader sees them).", ""]
    dist = stats["classes"]["distribution"]
    rows = [[c.id, c.name, *[f"{100 * dist[k]['share'][c.id]:.2f} %" for k in ("all", *splits)]]
            for c in classes if dist["all"]["pixels"][c.id] > 0]
    absent = [c.name for c in classes if dist["all"]["pixels"][c.id] == 0]
    out += [_table(["id", "class", "all", *splits], rows), ""]
    if absent:
        out += [f"Classes of the legend with no pixel here: {', '.join(absent)}.", ""]

    out += ["## Splits", ""]
    rows = []
    for m in metas:
        sp = m.attrs.get("splits") or {}
        audit = sp.get("audit") or {}
        passed = audit.get("passed", audit.get("ok"))
        rows.append([m.region, sp.get("method"), sp.get("seed"), sp.get("block_px"), sp.get("buffer_px"),
                     sp.get("dropped_by_buffer"), "passed" if passed else ("failed" if passed is False else "–"),
                     audit.get("pairs"), audit.get("checked")])  # fmt: skip
    out += ["Spatial blocks of patches are assigned to splits per region (ratios below); patches within "
            "`buffer_px` of another split are dropped, and the audit checks every pair of patches across splits "
            "for shared pixels.", "",
            _table(["region", "method", "seed", "block px", "buffer px", "dropped by buffer", "leak audit",
                    "overlapping pairs", "patches checked"], rows), ""]  # fmt: skip

    out += ["## Co-registration", "", "The SAR is shifted (or warped by an affine) onto the optical image before "
            "both are resampled once onto the grid. Shift in metres (east, north) applied to the SAR.", ""]
    rows = []
    for sc in all_scenes:
        reg = sc.registration or {}
        shift = reg.get("shift_m") or {}
        res = reg.get("residuals_px") or {}
        rows.append([sc.region, sc.label, reg.get("applied"), reg.get("flagged"), reg.get("confidence"),
                     reg.get("model"), shift.get("east"), shift.get("north"),
                     res.get("rms", res.get("median"))])  # fmt: skip
    out += [_table(["region", "scene", "applied", "flagged", "confidence", "model", "east m", "north m",
                    "residual px"], rows), ""]  # fmt: skip

    out += ["## Calibration", ""]
    rows = [[sc.region, sc.label, sc.calibration.get("calibrated"), sc.calibration.get("radiometry"),
             sc.calibration.get("source_radiometry"), sc.calibration.get("incidence_deg"),
             sc.calibration.get("calibration_source")] for sc in all_scenes]  # fmt: skip
    out += ["`sar` is 10*log10 of the calibrated backscatter (sigma0) where `calibrated` is true, else relative dB.",
            "", _table(["region", "scene", "calibrated", "radiometry", "source radiometry", "incidence deg",
                        "calibration from"], rows), ""]  # fmt: skip

    out += ["## Loading", "", "```python", "import geopandas as gpd, zarr",
            "index = gpd.read_parquet('index.parquet')            # or splits/train.parquet",
            "row = index.iloc[0]",
            "store = zarr.open_group(row.store, mode='r')         # path relative to this folder",
            "sar, eo, label = (store[k][row.patch] for k in ('sar', 'eo', 'label'))",
            "```", "", "For training, `pipeline.loader.PatchDataset` reads the stores directly (docs/loader.md).", ""]

    sw = (metas[0].attrs.get("software") or {}) if metas else {}
    params = {m.region: m.attrs.get("params") for m in metas}
    same = all(v == next(iter(params.values())) for v in params.values())
    out += ["## How it was built", "",
            f"Software: {sw.get('name', 'sareo')} {sw.get('version', 'unknown')}. Command: `dvc repro` (or "
            "`sareo run`) in a clone of the repository with the region files under `regions/`; every stage's "
            "inputs, outputs and parameters are in `dvc.yaml`, `dvc.lock` and `params.yaml`.", "",
            "Patch and split parameters" + (" (all regions):" if same else " per region:"), "", "```yaml",
            yaml.safe_dump(next(iter(params.values())) if same else params, sort_keys=True).rstrip(), "```",
            "", "Publish parameters: `id` " + p.id + ", `version` " + p.version + ".", ""]  # fmt: skip

    out += ["## Known limits", ""] + [f"- {x}" for x in KNOWN_LIMITS] + [""]

    out += ["## Licences and attribution", ""]
    out += [f"- {lnk.title or lnk.href}: {lnk.href}" for lnk in p.license_links]
    lines = credits(metas)
    out += ["", "Credit every use with:", ""] + [f"- {c}" for c in lines] + [""]

    out += ["## Citation", "", "```bibtex", citation(p, year, lines), "```", ""]
    return "\n".join(out)
