"""Per-patch registration quality from the registration's nearest tie points.

A region's registration is one model, but how well it holds varies over the scene: a patch
far from every agreeing tile, or among tiles that disagree with the fit, is less sure. For each
patch centre we report the distance to the nearest inlier tie point and the local misfit (RMS of
the fit residuals of the ``k`` nearest inliers), both in metres, so a user can filter patches.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from pipeline.grid import metres_per_degree


def tie_point_quality(record: dict[str, Any] | None, lon: np.ndarray, lat: np.ndarray, k: int = 3
                      ) -> tuple[np.ndarray, np.ndarray]:
    """(local error m, distance to the nearest inlier tie point m) per point; NaN where the
    registration was not applied or has no inlier tie points."""
    lon, lat = np.asarray(lon, float), np.asarray(lat, float)
    nan = np.full(lon.shape, np.nan, np.float32)
    if not record or not record.get("applied"):
        return nan, nan.copy()
    tps = [t for t in record.get("tie_points") or [] if t.get("inlier") and "lon" in t and "lat" in t]
    est = record.get("estimate") or {}
    m = est.get("matrix_px")
    gsd = (record.get("working_grid") or {}).get("gsd_m")
    if not tps or not m or not gsd:
        return nan, nan.copy()
    a, b, c, d, e, f = (float(v) for v in m)
    x = np.array([t["x"] for t in tps], float)
    y = np.array([t["y"] for t in tps], float)
    res = np.hypot(np.array([t["dx"] for t in tps]) - (a * x + b * y + c - x),
                   np.array([t["dy"] for t in tps]) - (d * x + e * y + f - y)) * float(gsd)
    tlon = np.array([t["lon"] for t in tps], float)
    tlat = np.array([t["lat"] for t in tps], float)
    mx, my = metres_per_degree(float(np.mean(tlat)))
    dist = np.hypot((lon[:, None] - tlon[None]) * mx, (lat[:, None] - tlat[None]) * my)
    order = np.argsort(dist, axis=1)[:, : max(1, min(k, len(tps)))]
    local = np.sqrt((res[order] ** 2).mean(axis=1))
    return local.astype(np.float32), dist.min(axis=1).astype(np.float32)
