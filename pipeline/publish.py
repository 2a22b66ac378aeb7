"""Publish the dataset: a GeoParquet patch index, dataset statistics with plots, and a STAC collection.

Everything is derived from the patch stores' *metadata* (per-patch 1-D arrays and root
attributes); the big sar/eo/label arrays are never read, so publishing 100k patches takes
seconds. Outputs are byte-identical for the same stores: rows are sorted by region and patch,
JSON keys are sorted, every datetime comes from the data (never "now"), and both output
directories are written into a temporary sibling and renamed into place whole.
"""

from __future__ import annotations

import datetime as dt
import io
import logging
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from pipeline.atomic import atomic_path, dumps_json
from pipeline.provenance import OSM, SOURCES, licence_link, sar_source
from pipeline.splits import SPLITS

log = logging.getLogger("sareo.publish")

DEFAULTS: dict[str, Any] = {
    "id": "sareo",
    "title": "sareo: co-registered SAR/EO patches with OpenStreetMap land-cover labels",
    "description": (
        "256x256 patches of SAR backscatter (sigma0 dB) and optical RGB on a common EPSG:4326 grid, "
        "automatically co-registered, with 25-class land-cover labels rasterised from OpenStreetMap. "
        "Spatially blocked train/val/test splits per region."
    ),
    "version": "0.1.0",
    # STAC 1.0 keyword for mixed licences (1.1 prefers "other"); the links below name them.
    "license": "other",  # STAC 1.1: several licences, given as license links
    "license_links": [
        licence_link(SOURCES["capella"], "SAR imagery (Capella, Umbra)"),
        licence_link(OSM, "labels from OpenStreetMap"),
    ],
    "keywords": ["SAR", "optical", "land cover", "OpenStreetMap", "co-registration", "machine learning"],
    "splits": list(SPLITS),
    # Left edges of the time-gap histogram in days; the last bin is open-ended.
    "gap_bins_days": [0, 30, 91, 182, 365, 730, 1095, 1461, 1826],
    "plot_dpi": 100,
}

# Per-patch 1-D arrays of the patch store (docs/DESIGN.md "Patch store"); all are required.
PATCH_FIELDS: tuple[str, ...] = (
    "id", "row", "col", "lon_min", "lat_min", "lon_max", "lat_max", "lon", "lat", "gsd_m",
    "sar_datetime", "eo_datetime", "gap_days", "sar_item", "calibrated", "split",
    "residential_share", "nonres_share", "valid_share",
)  # fmt: skip
OPTIONAL_FIELDS: tuple[str, ...] = ("urban_rural",)  # per patch since pipeline.store; else the root attribute
STR_FIELDS = {"id", "sar_datetime", "eo_datetime", "sar_item", "split", "urban_rural"}
URBAN_RURAL = ("urban", "rural", "unknown")  # "unknown": labels.json had no decision

SPLIT_COLOURS = {"train": "#4C72B0", "val": "#DD8452", "test": "#55A868"}
ZARR_MEDIA_TYPE = "application/vnd+zarr"
PARQUET_MEDIA_TYPE = "application/vnd.apache.parquet"
LABEL_EXTENSION = "https://stac-extensions.github.io/label/v1.0.1/schema.json"
PLOTS = ("patches_per_region.png", "class_distribution.png", "gap_histogram.png")


class PublishError(ValueError):
    """A store or parameter that cannot be published; the message names the store and the field."""


@dataclass(frozen=True)
class LegendClass:
    """One land-cover class: ``slug`` is a column-safe name, ``color`` is ``#RRGGBB``."""

    id: int
    name: str
    slug: str
    color: str


@dataclass(frozen=True)
class StoreMeta:
    """The metadata of one patch store: root attributes plus the per-patch 1-D arrays."""

    path: Path
    region: str
    attrs: dict[str, Any]
    arrays: dict[str, np.ndarray]

    @property
    def n(self) -> int:
        return int(self.arrays["id"].shape[0])


# ----------------------------------------------------------------------------- reading


def read_store_meta(path: str | os.PathLike[str]) -> StoreMeta:
    """Read root attributes and per-patch arrays through ``pipeline.store``, never the image arrays."""
    from pipeline import store as pstore

    path = Path(path)
    try:
        attrs = pstore.store_attrs(path)
        df = pstore.read_meta(path)
        hist = pstore.read_class_hist(path)
    except pstore.StoreError as exc:
        raise PublishError(f"{path}: not a readable patch store ({exc})") from exc
    missing = [f for f in PATCH_FIELDS if f not in df.columns]
    if missing:
        raise PublishError(f"{path}: patch store lacks per-patch array(s) {', '.join(missing)} (docs/DESIGN.md)")
    arrays: dict[str, np.ndarray] = {"class_hist": np.asarray(hist)}
    for name in (*PATCH_FIELDS, *OPTIONAL_FIELDS):
        if name in df.columns:
            data = df[name].to_numpy()
            arrays[name] = np.array([str(v) for v in data.tolist()], dtype=object) if name in STR_FIELDS else data
    region = attrs.get("region")
    if not isinstance(region, str) or not region:
        raise PublishError(f"{path}: root attribute 'region' must be a non-empty string, got {region!r}")
    meta = StoreMeta(path, region, attrs, arrays)
    _check_shapes(meta)
    log.info("read %s: region %s, %d patches", path, region, meta.n)
    return meta


def _check_shapes(meta: StoreMeta) -> None:
    n = meta.n
    for name, arr in meta.arrays.items():
        want = 2 if name == "class_hist" else 1
        if arr.ndim != want or arr.shape[0] != n:
            want_shape = f"({n}, classes)" if want == 2 else f"({n},)"
            raise PublishError(f"{meta.path}: array '{name}' has shape {arr.shape}, expected {want_shape}")
    ids = meta.arrays["id"]
    if len(set(ids.tolist())) != n:
        raise PublishError(f"{meta.path}: array 'id' has duplicate patch ids")


# ----------------------------------------------------------------------------- legend


def _hex_colour(value: Any, where: str) -> str:
    if isinstance(value, str) and re.fullmatch(r"#?[0-9A-Fa-f]{6}", value.strip()):
        return "#" + value.strip().lstrip("#").upper()
    if isinstance(value, (list, tuple)) and len(value) in (3, 4) and all(isinstance(v, (int, float)) for v in value):
        scale = 255 if all(0 <= v <= 1 for v in value[:3]) and any(isinstance(v, float) for v in value) else 1
        return "#" + "".join(f"{int(round(v * scale)):02X}" for v in value[:3])
    raise PublishError(f"{where}: colour {value!r} must be '#RRGGBB' or [r, g, b]")


def _slug(name: str) -> str:
    return re.sub(r"_+", "_", re.sub(r"[^0-9a-z]+", "_", name.lower())).strip("_") or "class"


def legend_classes(legend: Any, n_classes: int, where: str = "legend") -> list[LegendClass]:
    """Normalise a legend (list of {id, name, color} or a mapping id -> entry) to ``n_classes`` classes.

    Accepts the common shapes a YAML legend takes, so the store's own ``legend`` attribute
    (what the labels were made with) can be used as it is. Ids missing from the legend get a
    generic name and grey, with a warning: the class histogram still has a column for them.
    """
    entries: list[tuple[int, Any]] = []
    if isinstance(legend, dict) and "classes" in legend:
        legend = legend["classes"]
    if isinstance(legend, dict):
        for key, val in legend.items():
            try:
                entries.append((int(key), val))
            except (TypeError, ValueError):
                raise PublishError(f"{where}: key {key!r} is not a class id") from None
    elif isinstance(legend, list):
        for i, val in enumerate(legend):
            cid = val.get("id", val.get("value", i)) if isinstance(val, dict) else i
            entries.append((int(cid), val))
    else:
        raise PublishError(f"{where}: expected a list of classes or a mapping id -> class, got {type(legend).__name__}")
    by_id: dict[int, LegendClass] = {}
    for cid, val in entries:
        if isinstance(val, str):
            name, colour = val, "#808080"
        elif isinstance(val, dict):
            name = val.get("name") or val.get("title") or f"class {cid}"
            raw = val.get("color", val.get("colour", val.get("rgb")))
            colour = _hex_colour(raw, f"{where}: class {cid}") if raw is not None else "#808080"
        else:
            raise PublishError(f"{where}: class {cid}: expected a name or a mapping, got {val!r}")
        by_id[cid] = LegendClass(cid, str(name), _slug(str(name)), colour)
    out = []
    for cid in range(n_classes):
        if cid not in by_id:
            log.warning("%s: class %d missing from the legend; naming it class_%02d", where, cid, cid)
            by_id[cid] = LegendClass(cid, f"class {cid}", f"class_{cid:02d}", "#808080")
        out.append(by_id[cid])
    slugs = [c.slug for c in out]
    for cid, s in enumerate(slugs):
        if slugs.count(s) > 1:
            out[cid] = LegendClass(cid, out[cid].name, f"{s}_{cid:02d}", out[cid].color)
    return out


def _store_legend(metas: list[StoreMeta], n_classes: int) -> list[LegendClass]:
    """The legend the stores were labelled with; all stores must agree."""
    found = [(m, m.attrs.get("legend")) for m in metas if m.attrs.get("legend") is not None]
    if not found:
        from pipeline.legend import load_legend  # only when the stores carry no legend

        log.warning("no store has a 'legend' attribute; using pipeline/legend.yaml")
        return legend_classes(load_legend().to_dict(), n_classes, "pipeline/legend.yaml")
    ref_meta, ref = found[0]
    for m, leg in found[1:]:
        if dumps_json(leg) != dumps_json(ref):
            raise PublishError(
                f"{m.path}: attribute 'legend' differs from {ref_meta.path}'s; stores must share one legend"
            )
    return legend_classes(ref, n_classes, f"{ref_meta.path}: attribute 'legend'")


# ----------------------------------------------------------------------------- index


def _urban_rural(meta: StoreMeta) -> np.ndarray:
    """Per-patch urban/rural class: the store's per-patch array, else the root attribute."""
    if "urban_rural" in meta.arrays:
        values = meta.arrays["urban_rural"]
        where = "array 'urban_rural'"
    else:
        ur = meta.attrs.get("urban_rural")
        values = np.full(meta.n, str(ur.get("class") if isinstance(ur, dict) else ur), dtype=object)
        where = "attribute 'urban_rural'"
    bad = sorted(set(values.tolist()) - set(URBAN_RURAL))
    if bad:
        raise PublishError(f"{meta.path}: {where} has class(es) {bad}; expected one of {list(URBAN_RURAL)}")
    if "unknown" in values.tolist():
        log.warning("%s: urban/rural class is 'unknown' (labels.json had no decision)", meta.path)
    return values


def _datetimes(values: np.ndarray, where: str):  # -> pandas.Series of datetime64[UTC]
    import pandas as pd

    s = pd.Series(values, dtype=object).replace({"": None})
    try:
        return pd.to_datetime(s, utc=True, format="ISO8601")
    except (ValueError, TypeError) as exc:
        raise PublishError(f"{where}: expected ISO 8601 datetimes ({exc})") from exc


def _relpath(target: Path, start: Path) -> str:
    """POSIX relative path; abspath (not resolve) keeps the logical layout if data/ is a symlink."""
    return Path(os.path.relpath(os.path.abspath(target), os.path.abspath(start))).as_posix()


def patch_table(metas: list[StoreMeta], classes: list[LegendClass], out_dir: Path, splits: list[str]):
    """One row per patch with its footprint polygon (EPSG:4326) and metadata, as a GeoDataFrame."""
    import geopandas as gpd
    import pandas as pd
    import shapely

    frames = []
    for m in metas:
        a = m.arrays
        bad = sorted(set(a["split"].tolist()) - set(splits))
        if bad:
            raise PublishError(f"{m.path}: array 'split' has value(s) {bad}; expected one of {splits}")
        hist = np.asarray(a["class_hist"], dtype=np.int64)
        if hist.shape[1] != len(classes):
            raise PublishError(f"{m.path}: class_hist has {hist.shape[1]} classes, other stores {len(classes)}")
        if (hist < 0).any():
            raise PublishError(f"{m.path}: class_hist has negative counts")
        bounds = [np.asarray(a[k], dtype=np.float64) for k in ("lon_min", "lat_min", "lon_max", "lat_max")]
        if not (np.all(bounds[0] < bounds[2]) and np.all(bounds[1] < bounds[3])):
            raise PublishError(f"{m.path}: lon_min/lat_min must be below lon_max/lat_max for every patch")
        valid_px = hist.sum(axis=1)
        dominant = np.where(valid_px > 0, hist.argmax(axis=1), -1)
        cols: dict[str, Any] = {
            "region": m.region,
            "store": _relpath(m.path, out_dir),
            "patch": np.arange(m.n, dtype=np.int32),
            "id": a["id"],
            "split": a["split"],
            "row": a["row"].astype(np.int32),
            "col": a["col"].astype(np.int32),
            "lon": a["lon"].astype(np.float64),
            "lat": a["lat"].astype(np.float64),
            "lon_min": bounds[0],
            "lat_min": bounds[1],
            "lon_max": bounds[2],
            "lat_max": bounds[3],
            "gsd_m": a["gsd_m"].astype(np.float32),
            "sar_datetime": _datetimes(a["sar_datetime"], f"{m.path}: array 'sar_datetime'").to_numpy(),
            "eo_datetime": _datetimes(a["eo_datetime"], f"{m.path}: array 'eo_datetime'").to_numpy(),
            "gap_days": a["gap_days"].astype(np.float32),
            "sar_item": a["sar_item"],
            "calibrated": a["calibrated"].astype(bool),
            "urban_rural": _urban_rural(m),
            "residential_share": a["residential_share"].astype(np.float32),
            "nonres_share": a["nonres_share"].astype(np.float32),
            "valid_share": a["valid_share"].astype(np.float32),
            "valid_px": valid_px,
            "dominant_class": dominant.astype(np.int16),
            "dominant_class_name": [classes[d].name if d >= 0 else "" for d in dominant],
        }
        for c in classes:
            cols[f"px_{c.slug}"] = hist[:, c.id]
        frames.append(pd.DataFrame(cols, index=None))
    df = pd.concat(frames, ignore_index=True) if frames else pd.DataFrame()
    for col in ("sar_datetime", "eo_datetime"):
        df[col] = pd.to_datetime(df[col], utc=True).astype("datetime64[ms, UTC]")
    geometry = shapely.box(df["lon_min"], df["lat_min"], df["lon_max"], df["lat_max"])
    return gpd.GeoDataFrame(df, geometry=geometry, crs="EPSG:4326")


# ----------------------------------------------------------------------------- statistics


def geodesic_area_km2(geom) -> float:
    """Area on the WGS84 ellipsoid of a lon/lat (Multi)Polygon.

    pyproj sums signed ring areas, so rings are oriented first (shells CCW, holes CW):
    otherwise a hole would be added instead of subtracted.
    """
    import shapely
    from pyproj import Geod

    if geom.is_empty:
        return 0.0
    oriented = shapely.orient_polygons(geom, exterior_cw=False)
    area, _ = Geod(ellps="WGS84").geometry_area_perimeter(oriented)
    return abs(area) / 1e6


def region_footprints(gdf) -> dict[str, Any]:
    """Union of patch footprints per region (the area the region's patches actually cover)."""
    import shapely

    out = {}
    for region, sub in gdf.groupby("region", sort=True):
        out[str(region)] = shapely.union_all(sub.geometry.values)
    return out


def _r(x: float, nd: int = 6) -> float:
    return float(round(float(x), nd))


def _hist(values: np.ndarray, edges: list[float]) -> list[dict[str, Any]]:
    bins = []
    for i, lo in enumerate(edges):
        hi = edges[i + 1] if i + 1 < len(edges) else None
        sel = values >= lo if hi is None else (values >= lo) & (values < hi)
        bins.append({"from": lo, "to": hi, "count": int(sel.sum())})
    return bins


def _counts_by_split(series, splits: list[str]) -> dict[str, int]:
    counts = {s: int((series == s).sum()) for s in splits}
    counts["total"] = int(len(series))
    return counts


def dataset_stats(
    gdf, classes: list[LegendClass], footprints: dict[str, Any], cfg: dict[str, Any]
) -> dict[str, Any]:
    """Patches per region x split x urban/rural, class pixel distribution, time gaps, area covered."""
    import shapely

    splits = list(cfg["splits"])
    px_cols = [f"px_{c.slug}" for c in classes]
    by_region = {}
    for region, sub in gdf.groupby("region", sort=True):
        by_region[str(region)] = {
            "urban_rural": "/".join(sorted(set(sub["urban_rural"]))),
            "patches": _counts_by_split(sub["split"], splits),
            "area_km2": _r(geodesic_area_km2(footprints[str(region)]), 4),
        }
    present = [u for u in URBAN_RURAL if u != "unknown" or (gdf["urban_rural"] == u).any()]
    by_ur = {ur: _counts_by_split(gdf.loc[gdf["urban_rural"] == ur, "split"], splits) for ur in present}

    def dist(sub) -> dict[str, Any]:
        px = sub[px_cols].to_numpy(dtype=np.int64).sum(axis=0) if len(sub) else np.zeros(len(classes), np.int64)
        total = int(px.sum())
        share = [_r(p / total, 8) if total else 0.0 for p in px]
        return {"pixels": [int(p) for p in px], "share": share, "total": total}

    class_dist = {"all": dist(gdf)} | {s: dist(gdf[gdf["split"] == s]) for s in splits}
    gaps = gdf["gap_days"].to_numpy(dtype=np.float64)
    known = gaps[np.isfinite(gaps)]
    edges = [float(e) for e in cfg["gap_bins_days"]]
    if edges != sorted(edges) or len(set(edges)) != len(edges):
        raise PublishError(f"params publish.gap_bins_days: {edges} must be strictly increasing")
    gap = {
        "count": int(known.size),
        "unknown": int(gaps.size - known.size),
        "min": _r(known.min(), 3) if known.size else None,
        "median": _r(np.median(known), 3) if known.size else None,
        "mean": _r(known.mean(), 3) if known.size else None,
        "max": _r(known.max(), 3) if known.size else None,
        "below_first_bin": int((known < edges[0]).sum()),
        "histogram": _hist(known, edges),
    }
    total_fp = shapely.union_all(list(footprints.values())) if footprints else shapely.Polygon()
    return {
        "dataset": {"id": cfg["id"], "version": str(cfg["version"])},
        "totals": {
            "patches": int(len(gdf)),
            "regions": len(by_region),
            "area_km2": _r(geodesic_area_km2(total_fp), 4),
            "patches_by_split": _counts_by_split(gdf["split"], splits),
            "labelled_pixels": class_dist["all"]["total"],
            "calibrated_patches": int(gdf["calibrated"].sum()),
        },
        "patches": {"by_region": by_region, "by_urban_rural": by_ur},
        "classes": {
            "legend": [{"id": c.id, "name": c.name, "slug": c.slug, "color": c.color} for c in classes],
            "distribution": class_dist,
            "note": "pixel counts summed over patches: overlapping patches count shared pixels more than once",
        },
        "gap_days": gap,
    }


# ----------------------------------------------------------------------------- plots


def _savefig(fig, path: Path, dpi: int) -> None:
    """PNG without the matplotlib version/date metadata, so bytes depend only on the data."""
    import matplotlib.pyplot as plt

    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=dpi, metadata={"Software": None})
    plt.close(fig)
    path.write_bytes(buf.getvalue())


def write_plots(stats: dict[str, Any], plots_dir: Path, dpi: int, splits: list[str]) -> list[Path]:
    """Patches per region and split, class distribution in the legend's colours, time-gap histogram."""
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    plots_dir.mkdir(parents=True, exist_ok=True)
    regions = stats["patches"]["by_region"]
    names = list(regions)
    fig, ax = plt.subplots(figsize=(max(6.0, 0.9 * len(names) + 2), 4.5))
    bottom = np.zeros(len(names))
    for s in splits:
        vals = np.array([regions[r]["patches"][s] for r in names], dtype=float)
        ax.bar(names, vals, bottom=bottom, label=s, color=SPLIT_COLOURS.get(s, None))
        bottom += vals
    ax.set_xticks(range(len(names)), [f"{r}\n({regions[r]['urban_rural']})" for r in names], fontsize=8)
    ax.set_ylabel("patches")
    ax.set_title("Patches per region and split")
    ax.legend(loc="upper left", bbox_to_anchor=(1.0, 1.0))
    fig.tight_layout()
    _savefig(fig, plots_dir / PLOTS[0], dpi)

    legend = stats["classes"]["legend"]
    dist = stats["classes"]["distribution"]
    fig, ax = plt.subplots(figsize=(8, 0.3 * len(legend) + 1.5))
    y = np.arange(len(legend))
    ax.barh(y, [100 * v for v in dist["all"]["share"]], color=[c["color"] for c in legend], edgecolor="black", lw=0.4)
    markers = {"train": "o", "val": "s", "test": "^"}
    for s in splits:
        ax.scatter([100 * v for v in dist[s]["share"]], y, s=12, marker=markers.get(s, "x"), color="black", label=s)
    ax.set_yticks(y, [f"{c['id']:2d} {c['name']}" for c in legend], fontsize=8)
    ax.invert_yaxis()
    ax.set_xlabel("share of labelled pixels (%)")
    ax.set_title("Class distribution (bars: all patches; markers: per split)")
    ax.legend(fontsize=8, loc="lower right")
    fig.tight_layout()
    _savefig(fig, plots_dir / PLOTS[1], dpi)

    bins = stats["gap_days"]["histogram"]
    fig, ax = plt.subplots(figsize=(7, 4))
    labels = [f"{b['from']:g}-{b['to']:g}" if b["to"] is not None else f">={b['from']:g}" for b in bins]
    ax.bar(range(len(bins)), [b["count"] for b in bins], color="#4C72B0")
    ax.set_xticks(range(len(bins)), labels, rotation=30, fontsize=8)
    ax.set_xlabel("SAR/EO time gap (days)")
    ax.set_ylabel("patches")
    ax.set_title(f"Time gap between SAR and EO (unknown: {stats['gap_days']['unknown']})")
    fig.tight_layout()
    _savefig(fig, plots_dir / PLOTS[2], dpi)
    return [plots_dir / p for p in PLOTS]


# ----------------------------------------------------------------------------- STAC


def _providers(metas: list[StoreMeta]):
    import pystac

    sar = sorted({str((m.attrs.get("provenance") or {}).get("sar", {}).get("provider", "")).lower() for m in metas})
    out = []
    for key in sar:
        src = sar_source(key)
        if src:
            out.append(pystac.Provider(src.name, roles=["licensor", "producer"], url=src.url,
                                       description=f"SAR imagery, {src.licence}"))  # fmt: skip
        elif key:
            out.append(pystac.Provider(key, roles=["licensor", "producer"], description="SAR imagery"))
    # OSM is credited when a store's labels come from it (not e.g. the demo's procedural features)
    if any((m.attrs.get("licences") or {}).get("labels", OSM.licence) == OSM.licence for m in metas):
        desc = f"Land-cover labels rasterised from OpenStreetMap, {OSM.licence}"
        out.append(pystac.Provider(OSM.name, roles=["licensor", "producer"], url=OSM.url, description=desc))
    eo = set()
    for m in metas:
        e = (m.attrs.get("provenance") or {}).get("eo", {}) or {}
        name = e.get("attribution") or e.get("source")
        if name:
            eo.add((str(name), str(e.get("licence") or "")))
    for name, lic in sorted(eo):
        desc = "Optical (EO) imagery" + (f", {lic}" if lic else "")
        out.append(pystac.Provider(name, roles=["licensor", "producer"], description=desc))
    out.append(pystac.Provider("sareo", roles=["processor"], description="co-registration, gridding, labels, patches"))
    return out


def _attributions(metas: list[StoreMeta]) -> list[str]:
    """All attribution strings the stores carry, flattened and de-duplicated."""
    found: set[str] = set()

    def walk(x: Any) -> None:
        if isinstance(x, str):
            if x.strip():
                found.add(x.strip())
        elif isinstance(x, dict):
            for v in x.values():
                walk(v)
        elif isinstance(x, (list, tuple)):
            for v in x:
                walk(v)

    for m in metas:
        walk(m.attrs.get("attribution"))
        walk(m.attrs.get("licences"))
    return sorted(found)


def region_dir(meta: StoreMeta) -> Path | None:
    """The region's stage folder (grid/, labels/, registration/), if there is one.

    Layout (docs/DESIGN.md): stores at data/patches/NAME.zarr, stage folders at data/regions/NAME/.
    """
    cand = meta.path.parent.parent / "regions" / meta.region
    return cand if any((cand / sub).is_dir() for sub in ("labels", "grid", "registration")) else None


def _registration(meta: StoreMeta) -> dict[str, Any] | None:
    """A compact registration result from the store (attribute) or the region's registration.json."""
    import json

    reg = meta.attrs.get("registration") or (meta.attrs.get("provenance") or {}).get("registration")
    rdir = region_dir(meta)
    path = rdir / "registration" / "registration.json" if rdir else None
    if not reg and path is not None and path.is_file():
        reg = json.loads(path.read_text())
    if not isinstance(reg, dict):
        return None
    keys = ("applied", "flagged", "confidence", "model", "shift_m", "residuals_px")
    return {k: reg[k] for k in keys if k in reg}


def _dt_range(*series) -> tuple[dt.datetime, dt.datetime] | None:
    import pandas as pd

    vals = pd.concat([s.dropna() for s in series])
    if vals.empty:
        return None
    return vals.min().to_pydatetime(), vals.max().to_pydatetime()


def _iso(d: dt.datetime) -> str:
    import pystac.utils

    return pystac.utils.datetime_to_str(d)


def build_collection(
    metas: list[StoreMeta],
    gdf,
    stats: dict[str, Any],
    footprints: dict[str, Any],
    classes: list[LegendClass],
    cfg: dict[str, Any],
    out_dir: Path,
    stac_dir: Path,
):
    """The STAC collection (label + classification extensions) with one item per region store.

    Hrefs are made relative to the final locations of ``stac_dir`` and ``out_dir``, so the
    catalog is self-contained and can be moved together with the data.
    """
    import pystac
    import shapely
    from pystac.extensions.classification import Classification, ClassificationExtension

    splits = list(cfg["splits"])
    stac_dir, out_dir = Path(stac_dir), Path(out_dir)
    cls_objs = [Classification.create(value=c.id, name=c.slug, title=c.name, color_hint=c.color.lstrip("#"))
                for c in classes]  # fmt: skip
    # Label extension fields written directly: pystac's helper class is deprecated (warns on import).
    label_fields = {
        "label:description": f"{len(classes)}-class land cover rasterised from OpenStreetMap (255 = no data)",
        "label:type": "raster",
        "label:properties": None,
        "label:classes": [{"name": None, "classes": [c.id for c in classes]}],
        "label:tasks": ["segmentation", "classification"],
        "label:methods": ["automated"],
    }
    items = []
    by_region = {m.region: m for m in metas}
    for region in sorted(by_region):
        m = by_region[region]
        sub = gdf[gdf["region"] == region]
        fp = footprints[region]
        rng = _dt_range(sub["sar_datetime"], sub["eo_datetime"])
        if rng is None:
            raise PublishError(f"{m.path}: no patch has a SAR or EO datetime; a STAC item needs a time range")
        props: dict[str, Any] = {
            "start_datetime": _iso(rng[0]),
            "end_datetime": _iso(rng[1]),
            "gsd": _r(float(sub["gsd_m"].iloc[0]), 4) if len(sub) else None,
            "sareo:patches": stats["patches"]["by_region"][region]["patches"],
            "sareo:area_km2": stats["patches"]["by_region"][region]["area_km2"],
            "sareo:urban_rural": m.attrs.get("urban_rural"),
            "sareo:calibrated": bool(sub["calibrated"].all()) if len(sub) else None,
            "sareo:splits": {k: v for k, v in (m.attrs.get("splits") or {}).items() if k != "counts"},
        }
        for kind in ("sar", "eo"):
            r = _dt_range(sub[f"{kind}_datetime"])
            props[f"sareo:{kind}_datetime"] = [_iso(r[0]), _iso(r[1])] if r else None
        reg = _registration(m)
        if reg is not None:
            props["sareo:registration"] = reg
        if m.attrs.get("software"):
            props["sareo:software"] = m.attrs["software"]
        item = pystac.Item(
            id=region,
            geometry=shapely.geometry.mapping(fp),
            bbox=[float(v) for v in fp.bounds],
            datetime=None,
            properties=props,
        )
        item_dir = stac_dir / region
        item.add_asset("patches", pystac.Asset(_relpath(m.path, item_dir), title=f"{region} patch store (Zarr v3)",
                                               media_type=ZARR_MEDIA_TYPE, roles=["data", "labels"]))  # fmt: skip
        extras = {
            "labels_quicklook": ("labels/labels.png", "image/png", ["overview"], "label map with legend"),
            "labels_summary": ("labels/labels.json", "application/json", ["metadata"], "class shares, urban/rural"),
            "quicklook": ("grid/quicklook.png", "image/png", ["overview"], "SAR and EO side by side"),
            "registration": ("registration/registration.json", "application/json", ["metadata"], "registration"),
            "registration_overlay": ("registration/overlay.png", "image/png", ["overview"], "before/after overlay"),
        }
        rdir = region_dir(m)
        for key, (rel, media, roles, title) in extras.items():
            target = rdir / rel if rdir else None
            if target is not None and target.is_file():
                asset = pystac.Asset(_relpath(target, item_dir), title=title, media_type=media, roles=roles)
                item.add_asset(key, asset)
        hist = sub[[f"px_{c.slug}" for c in classes]].to_numpy(dtype=np.int64).sum(axis=0)
        item.properties.update(label_fields)
        item.properties["label:overviews"] = [
            {"property_key": None, "counts": [{"name": c.slug, "count": int(h)} for c, h in zip(classes, hist)]}
        ]
        item.stac_extensions = sorted({LABEL_EXTENSION, ClassificationExtension.get_schema_uri()})
        ClassificationExtension.ext(item.assets["patches"], add_if_missing=True).classes = cls_objs
        items.append(item)

    rng = _dt_range(gdf["sar_datetime"], gdf["eo_datetime"])
    if rng is None:
        raise PublishError("no patch in any store has a SAR or EO datetime; the collection needs a time extent")
    region_bboxes = [list(items[i].bbox) for i in range(len(items))]
    overall = [min(b[0] for b in region_bboxes), min(b[1] for b in region_bboxes),
               max(b[2] for b in region_bboxes), max(b[3] for b in region_bboxes)]  # fmt: skip
    collection = pystac.Collection(
        id=cfg["id"],
        title=cfg["title"],
        description=cfg["description"],
        extent=pystac.Extent(pystac.SpatialExtent([overall, *region_bboxes]), pystac.TemporalExtent([list(rng)])),
        license=cfg["license"],
        keywords=list(cfg["keywords"]),
        providers=_providers(metas),
        summaries=pystac.Summaries({
            "sareo:split": [s for s in splits if stats["totals"]["patches_by_split"][s] > 0],
            "sareo:urban_rural": sorted(set(gdf["urban_rural"])),
            "sareo:region": sorted(by_region),
            "gsd": sorted({_r(g, 4) for g in gdf["gsd_m"].astype(float)}),
            "label:type": ["raster"],
            "label:classes": label_fields["label:classes"],
            "label:tasks": ["segmentation", "classification"],
            "classification:classes": [c.to_dict() for c in cls_objs],
        }, maxcount=10**6),  # fmt: skip
        extra_fields={
            "version": str(cfg["version"]),
            "sareo:patches": stats["totals"]["patches_by_split"],
            "sareo:area_km2": stats["totals"]["area_km2"],
            "sareo:attribution": _attributions(metas),
        },
    )
    collection.stac_extensions = sorted({LABEL_EXTENSION, ClassificationExtension.get_schema_uri()})
    for link in cfg["license_links"]:
        collection.add_link(pystac.Link("license", link["href"], media_type="text/html", title=link.get("title")))
    index_href = _relpath(out_dir / "index.parquet", stac_dir)
    collection.add_link(pystac.Link("alternate", index_href, media_type=PARQUET_MEDIA_TYPE,
                                    title="GeoParquet index: one row per patch"))  # fmt: skip
    collection.add_asset("index", pystac.Asset(index_href, title="GeoParquet index: one row per patch",
                                               media_type=PARQUET_MEDIA_TYPE, roles=["metadata"]))  # fmt: skip
    collection.add_asset("stats", pystac.Asset(_relpath(out_dir / "stats.json", stac_dir), title="dataset statistics",
                                               media_type="application/json", roles=["metadata"]))  # fmt: skip
    for name in PLOTS:
        collection.add_asset(f"plot_{Path(name).stem}", pystac.Asset(
            _relpath(out_dir / "plots" / name, stac_dir), title=Path(name).stem.replace("_", " "),
            media_type="image/png", roles=["overview"]))  # fmt: skip
    for item in items:
        collection.add_item(item)
    collection.normalize_hrefs(os.path.abspath(stac_dir), skip_unresolved=False)
    collection.catalog_type = pystac.CatalogType.SELF_CONTAINED
    return collection


def stac_documents(collection, stac_dir: Path) -> dict[str, dict[str, Any]]:
    """Relative path under ``stac_dir`` -> JSON dict of every STAC object, without self links."""
    stac_dir = Path(os.path.abspath(stac_dir))
    docs = {"collection.json": collection.to_dict(include_self_link=False, transform_hrefs=True)}
    for item in collection.get_items(recursive=True):
        rel = _relpath(Path(item.get_self_href()), stac_dir)
        docs[rel] = item.to_dict(include_self_link=False, transform_hrefs=True)
    return docs


def check_stac(collection_json: str | os.PathLike[str]) -> list[str]:
    """Read a STAC collection back with pystac and list every local link or asset that does not resolve.

    Offline stand-in for ``validate_all`` (which fetches JSON schemas over the network).
    """
    import pystac

    problems: list[str] = []
    collection = pystac.Collection.from_file(str(collection_json))
    objs = [collection, *collection.get_items(recursive=True)]
    for obj in objs:
        for link in obj.links:
            href = link.get_absolute_href() or link.href
            if re.match(r"^[a-z][a-z0-9+.-]*://", href) and not href.startswith("file://"):
                continue
            if not Path(href.removeprefix("file://")).exists():
                problems.append(f"{obj.id}: link rel={link.rel} -> {link.href} does not exist")
        for key, asset in obj.assets.items():
            href = asset.get_absolute_href() or asset.href
            if not re.match(r"^[a-z][a-z0-9+.-]*://", href) and not Path(href).exists():
                problems.append(f"{obj.id}: asset {key} -> {asset.href} does not exist")
    return problems


# ----------------------------------------------------------------------------- entry point


def _config(params: dict[str, Any] | None) -> dict[str, Any]:
    cfg = {**DEFAULTS, **((params or {}).get("publish") or {})}
    unknown = sorted(set(cfg) - set(DEFAULTS))
    if unknown:
        allowed = ", ".join(sorted(DEFAULTS))
        raise PublishError(f"params publish: unknown key(s) {', '.join(unknown)}; allowed: {allowed}")
    if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9_.-]*", str(cfg["id"])):
        raise PublishError(f"params publish.id: {cfg['id']!r} must be letters, digits, '-', '_' or '.'")
    if not cfg["splits"]:
        raise PublishError("params publish.splits: must name at least one split")
    return cfg


def publish(
    stores: list[Path], out_dir: Path, stac_dir: Path, params: dict[str, Any] | None = None
) -> dict[str, Any]:
    """Write ``out_dir`` (index.parquet, stats.json, plots/) and ``stac_dir`` (collection.json, items).

    Both directories are replaced whole and atomically. Returns the statistics written.
    """
    cfg = _config(params)
    out_dir, stac_dir = Path(out_dir), Path(stac_dir)
    if not stores:
        raise PublishError("publish: no patch stores given")
    metas = sorted((read_store_meta(p) for p in stores), key=lambda m: m.region)
    for m in metas:
        if m.n == 0:
            log.warning("%s: store has no patches; region %s is left out of the dataset", m.path, m.region)
    metas = [m for m in metas if m.n > 0]
    if not metas:
        raise PublishError(f"publish: none of the {len(stores)} stores holds a patch")
    regions = [m.region for m in metas]
    dup = sorted({r for r in regions if regions.count(r) > 1})
    if dup:
        raise PublishError(f"publish: region(s) {dup} appear in more than one store: {[str(m.path) for m in metas]}")
    n_classes = {m.arrays["class_hist"].shape[1] for m in metas}
    if len(n_classes) != 1:
        raise PublishError(f"publish: stores disagree on the number of classes in class_hist: {sorted(n_classes)}")
    classes = _store_legend(metas, n_classes.pop())
    gdf = patch_table(metas, classes, out_dir, list(cfg["splits"]))
    log.info("indexed %d patches from %d stores", len(gdf), len(metas))
    footprints = region_footprints(gdf)
    stats = dataset_stats(gdf, classes, footprints, cfg)
    # Everything that can fail on bad data runs before the first output is replaced.
    collection = build_collection(metas, gdf, stats, footprints, classes, cfg, out_dir, stac_dir)
    docs = stac_documents(collection, stac_dir)

    with atomic_path(out_dir) as tmp:
        tmp.mkdir()
        gdf.to_parquet(tmp / "index.parquet", index=False, compression="zstd")
        (tmp / "stats.json").write_text(dumps_json(stats), encoding="utf-8")
        write_plots(stats, tmp / "plots", int(cfg["plot_dpi"]), list(cfg["splits"]))
    log.info("wrote %s", out_dir)
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
