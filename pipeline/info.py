"""``sareo info PATH``: what a patch store or a published dataset holds, in a few terminal lines.

A store (``data/patches/NAME.zarr``): region, grid, scenes, patches per split, classes, size.
A dataset folder (``data/dataset``, or its ``stats.json``): regions, scenes, patches per split,
classes, size on disk. Only metadata is read (root attributes, per-patch arrays, stats.json,
index.parquet's scene column), so it answers in about a second for any size.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
import numpy as np

from pipeline.progress import human_bytes
from pipeline.splits import SPLITS

TOP_CLASSES = 8


class InfoError(ValueError):
    """A path that is neither a patch store nor a dataset folder."""


def _dir_bytes(path: Path) -> tuple[int, int]:
    files = [Path(d) / f for d, _, fs in os.walk(path) for f in fs]
    return len(files), int(sum(f.stat().st_size for f in files))


def _classes_lines(names: list[str], pixels: np.ndarray) -> list[str]:
    total = int(pixels.sum())
    if total == 0:
        return ["  classes: no labelled pixel"]
    order = np.argsort(-pixels, kind="stable")[:TOP_CLASSES]
    parts = [f"{names[i]} {100 * pixels[i] / total:.1f}%" for i in order if pixels[i] > 0]
    return [f"  classes (top {len(parts)} of {int((pixels > 0).sum())} present): " + ", ".join(parts)]


def _r(v: float | None) -> str:
    return "?" if v is None else f"{v:.2f}"


def _splits_line(counts: dict[str, int]) -> str:
    total = sum(counts.values())
    return f"{total} patches (" + ", ".join(f"{s} {n}" for s, n in counts.items()) + ")"


def store_info(path: str | Path) -> list[str]:
    """Summary lines of one patch store."""
    from pipeline.store import read_class_hist, read_meta, store_attrs

    attrs = store_attrs(path)
    meta = read_meta(path, ["split", "sar_item", "calibrated", *(["scene"] if "scenes" in attrs else [])])
    grid = attrs.get("grid") or {}
    counts = {s: int((meta["split"] == s).sum()) for s in SPLITS}
    lines = [f"{path}: patch store of region {attrs.get('region')!r} ({(attrs.get('urban_rural') or {}).get('class', '?')})",
             f"  {_splits_line(counts)}; calibrated: {int(meta['calibrated'].sum())}/{len(meta)}",
             f"  grid: {grid.get('width')}x{grid.get('height')} px at {grid.get('gsd_m')} m, {grid.get('crs')}"]  # fmt: skip
    scenes = {str(sc.get("id")): sc for sc in attrs.get("scenes") or [] if isinstance(sc, dict)}
    column = "scene" if scenes else "sar_item"
    sar = (attrs.get("provenance") or {}).get("sar") or {}
    for sid, n in sorted(meta[column].value_counts().items()):
        sc = scenes.get(sid) or (sar if sid == sar.get("item_id") else {})
        extra = f", {sc.get('provider')} {sc.get('product')} {sc.get('polarization')} {sc.get('datetime', '')}" if sc else ""
        lines.append(f"  scene {sid or '(local file)'}: {n} patches{extra}")
    reg = (attrs.get("provenance") or {}).get("registration") or {}
    if reg:
        shift = reg.get("shift_m") or {}
        lines.append(f"  registration: applied={reg.get('applied')} flagged={reg.get('flagged')} "
                     f"confidence={reg.get('confidence')} shift E/N m={_r(shift.get('east'))}/{_r(shift.get('north'))}")
    legend = attrs.get("legend") or {}
    names = [c.get("name", str(i)) for i, c in enumerate(legend.get("classes", []))] if isinstance(legend, dict) else []
    hist = read_class_hist(path).sum(axis=0)
    names += [f"class {i}" for i in range(len(names), len(hist))]
    lines += _classes_lines(names, hist)
    files, size = _store_bytes(path)
    lines.append(f"  size: {human_bytes(size)} in {files} files" if files else "  size: unknown (a web copy)")
    return lines


def _store_bytes(path: str | Path) -> tuple[int, int]:
    """Files and bytes of a store: walked locally, from its manifest on S3 (committed: checked)."""
    from pipeline.remote import is_url
    from pipeline.storage import is_s3, verify

    if is_s3(path):
        m = verify(str(path)) or {}
        return int(m.get("count", 0)), int(m.get("bytes", 0))
    return (0, 0) if is_url(path) else _dir_bytes(Path(path))


def dataset_info(folder: Path) -> list[str]:
    """Summary lines of a published dataset folder (stats.json, index.parquet, the stores it names)."""
    stats = json.loads((folder / "stats.json").read_text(encoding="utf-8"))
    t = stats["totals"]
    order = [*SPLITS, *sorted(set(t["patches_by_split"]) - {*SPLITS, "total"})]
    splits = {k: t["patches_by_split"][k] for k in order if k in t["patches_by_split"]}
    lines = [f"{folder}: dataset {stats['dataset']['id']} {stats['dataset']['version']}",
             f"  {_splits_line(splits)} from {t['regions']} regions, {t['area_km2']} km2"]  # fmt: skip
    scenes: dict[str, list[str]] = {}
    stores: list[Path] = []
    if (folder / "index.parquet").is_file():
        import pandas as pd

        idx = pd.read_parquet(folder / "index.parquet", columns=["region", "sar_item", "store"])
        scenes = {str(r): sorted(set(g["sar_item"])) for r, g in idx.groupby("region")}
        stores = [folder / s for s in sorted(set(idx["store"]))]
    n_scenes = sum(len(v) for v in scenes.values())
    lines.append(f"  scenes: {n_scenes}" if scenes else "  scenes: unknown (no index.parquet)")
    for region, r in stats["patches"]["by_region"].items():
        p = r["patches"]
        lines.append(f"  {region:<20} {r['urban_rural']:<6} " + " ".join(f"{s} {p.get(s, 0):>6}" for s in splits)
                     + f"  {r['area_km2']} km2  scenes: {', '.join(scenes.get(region, [])) or '?'}")
    legend = stats["classes"]["legend"]
    lines += _classes_lines([c["name"] for c in legend], np.asarray(stats["classes"]["distribution"]["all"]["pixels"]))
    files, size = _dir_bytes(folder)
    store_size = sum(_dir_bytes(s)[1] for s in stores if s.is_dir())
    lines.append(f"  size: {human_bytes(size)} in {files} files here, {human_bytes(store_size)} in {len(stores)} stores")
    present = [n for n in ("README.md", "croissant.json", "index.html") if (folder / n).is_file()]
    lines.append(f"  documents: {', '.join(present) or 'none'}")
    return lines


def info(path: str | os.PathLike[str]) -> str:
    """The summary of ``path`` (a store, a dataset folder or its stats.json; a store may be an
    ``s3://`` or ``https://`` URL) as text."""
    from pipeline.remote import is_url

    if is_url(path):
        return "\n".join(store_info(str(path).rstrip("/")))
    p = Path(path)
    if p.name == "stats.json" and p.is_file():
        p = p.parent
    if (p / "zarr.json").is_file():
        try:
            return "\n".join(store_info(p))
        except Exception as exc:  # a Zarr group that is not a patch store
            raise InfoError(f"{p}: not a readable patch store ({exc})") from exc
    if (p / "stats.json").is_file():
        return "\n".join(dataset_info(p))
    raise InfoError(f"{p}: not a patch store (no zarr.json) nor a published dataset folder (no stats.json)")
