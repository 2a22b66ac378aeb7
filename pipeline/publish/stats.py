"""Dataset statistics (patches per region, split and urban/rural; class pixels; time gaps; area) and their plots.

Floats are rounded and PNGs carry no software/date metadata, so the bytes depend only on the data.
"""

from __future__ import annotations

import io
from pathlib import Path
from typing import Any

import numpy as np

from pipeline.publish.index import URBAN_RURAL, LegendClass
from pipeline.publish.params import PublishParams

SPLIT_COLOURS = {"train": "#4C72B0", "val": "#DD8452", "test": "#55A868"}
PLOTS = ("patches_per_region.png", "class_distribution.png", "gap_histogram.png")  # under DatasetFiles.plots


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


def rounded(x: float, nd: int = 6) -> float:
    """A plain float rounded to ``nd`` digits: the statistics' JSON stays short and stable."""
    return float(round(float(x), nd))


def _hist(values: np.ndarray, edges: list[float]) -> list[dict[str, Any]]:
    bins = []
    for i, lo in enumerate(edges):
        hi = edges[i + 1] if i + 1 < len(edges) else None
        sel = values >= lo if hi is None else (values >= lo) & (values < hi)
        bins.append({"from": lo, "to": hi, "count": int(sel.sum())})
    return bins


def _counts_by_split(series, splits: tuple[str, ...]) -> dict[str, int]:
    counts = {s: int((series == s).sum()) for s in splits}
    counts["total"] = int(len(series))
    return counts


def dataset_stats(gdf, classes: list[LegendClass], footprints: dict[str, Any], p: PublishParams) -> dict[str, Any]:
    """Patches per region x split x urban/rural, class pixel distribution, time gaps, area covered."""
    import shapely

    splits = p.splits
    px_cols = [f"px_{c.slug}" for c in classes]
    by_region = {}
    for region, sub in gdf.groupby("region", sort=True):
        by_region[str(region)] = {
            "urban_rural": "/".join(sorted(set(sub["urban_rural"]))),
            "patches": _counts_by_split(sub["split"], splits),
            "area_km2": rounded(geodesic_area_km2(footprints[str(region)]), 4),
        }
    present = [u for u in URBAN_RURAL if u != "unknown" or (gdf["urban_rural"] == u).any()]
    by_ur = {ur: _counts_by_split(gdf.loc[gdf["urban_rural"] == ur, "split"], splits) for ur in present}

    def dist(sub) -> dict[str, Any]:
        px = sub[px_cols].to_numpy(dtype=np.int64).sum(axis=0) if len(sub) else np.zeros(len(classes), np.int64)
        total = int(px.sum())
        share = [rounded(p / total, 8) if total else 0.0 for p in px]
        return {"pixels": [int(p) for p in px], "share": share, "total": total}

    class_dist = {"all": dist(gdf)} | {s: dist(gdf[gdf["split"] == s]) for s in splits}
    gaps = gdf["gap_days"].to_numpy(dtype=np.float64)
    known = gaps[np.isfinite(gaps)]
    edges = [float(e) for e in p.gap_bins_days]  # increasing: PublishParams checks
    gap = {
        "count": int(known.size),
        "unknown": int(gaps.size - known.size),
        "min": rounded(known.min(), 3) if known.size else None,
        "median": rounded(np.median(known), 3) if known.size else None,
        "mean": rounded(known.mean(), 3) if known.size else None,
        "max": rounded(known.max(), 3) if known.size else None,
        "below_first_bin": int((known < edges[0]).sum()),
        "histogram": _hist(known, edges),
    }
    total_fp = shapely.union_all(list(footprints.values())) if footprints else shapely.Polygon()
    return {
        "dataset": {"id": p.id, "version": p.version},
        "totals": {
            "patches": int(len(gdf)),
            "regions": len(by_region),
            "area_km2": rounded(geodesic_area_km2(total_fp), 4),
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


def write_plots(stats: dict[str, Any], plots_dir: Path, dpi: int, splits: tuple[str, ...]) -> list[Path]:
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

