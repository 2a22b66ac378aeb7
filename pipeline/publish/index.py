"""Reading the patch stores' metadata, their legend, and the GeoParquet patch index made from them.

Only the per-patch 1-D arrays and root attributes are read (through ``pipeline.store``); the
big sar/eo/label arrays never are, so indexing 100k patches takes seconds. Rows are sorted by
region and patch, so the same stores give the same index bytes.
"""

from __future__ import annotations

import logging
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from pipeline.atomic import dumps_json

log = logging.getLogger("sareo.publish")

# Per-patch 1-D arrays of the patch store (docs/DESIGN.md "Patch store"); all are required.
PATCH_FIELDS: tuple[str, ...] = (
    "id", "row", "col", "lon_min", "lat_min", "lon_max", "lat_max", "lon", "lat", "gsd_m",
    "sar_datetime", "eo_datetime", "gap_days", "sar_item", "calibrated", "split",
    "residential_share", "nonres_share", "valid_share",
)  # fmt: skip
# per patch since later store versions (urban_rural: else the root attribute; scene fields: multi-scene regions;
# reg_*: registration quality at the nearest tie points)
OPTIONAL_FIELDS: tuple[str, ...] = ("urban_rural", "scene", "provider", "polarization", "cell", "registration_flagged",
                                    "reg_local_error_m", "reg_tie_distance_m")
STR_FIELDS = {"id", "sar_datetime", "eo_datetime", "sar_item", "split", "urban_rural", "scene", "provider",
              "polarization", "cell"}
URBAN_RURAL = ("urban", "rural", "unknown")  # "unknown": labels.json had no decision


class PublishError(ValueError):
    """A store that cannot be published; the message names the store (or file) and the field."""


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


def store_legend(metas: list[StoreMeta], n_classes: int) -> list[LegendClass]:
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


def relpath(target: Path, start: Path) -> str:
    """POSIX relative path; abspath (not resolve) keeps the logical layout if data/ is a symlink."""
    return Path(os.path.relpath(os.path.abspath(target), os.path.abspath(start))).as_posix()


def patch_table(metas: list[StoreMeta], classes: list[LegendClass], index_dir: Path, splits: tuple[str, ...]):
    """One row per patch with its footprint polygon (EPSG:4326) and metadata, as a GeoDataFrame.

    The ``store`` column is relative to ``index_dir`` (the index file's folder), so it resolves from there.
    """
    import geopandas as gpd
    import pandas as pd
    import shapely

    frames = []
    for m in metas:
        a = m.arrays
        bad = sorted(set(a["split"].tolist()) - set(splits))
        if bad:
            raise PublishError(f"{m.path}: array 'split' has value(s) {bad}; expected one of {list(splits)}")
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
            "store": relpath(m.path, index_dir),
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
            **{k: (a[k] if k in a else np.full(m.n, default, dtype=object if isinstance(default, str) else bool))
               for k, default in (("scene", ""), ("provider", ""), ("polarization", ""), ("cell", ""),
                                  ("registration_flagged", False))},
            "dominant_class": dominant.astype(np.int16),
            "dominant_class_name": [classes[d].name if d >= 0 else "" for d in dominant],
        }
        for q in ("reg_local_error_m", "reg_tie_distance_m"):  # older stores lack them: NaN
            cols[q] = a[q].astype(np.float32) if q in a else np.full(m.n, np.nan, np.float32)
        for c in classes:
            cols[f"px_{c.slug}"] = hist[:, c.id]
        frames.append(pd.DataFrame(cols, index=None))
    df = pd.concat(frames, ignore_index=True) if frames else pd.DataFrame()
    for col in ("sar_datetime", "eo_datetime"):
        df[col] = pd.to_datetime(df[col], utc=True).astype("datetime64[ms, UTC]")
    geometry = shapely.box(df["lon_min"], df["lat_min"], df["lon_max"], df["lat_max"])
    return gpd.GeoDataFrame(df, geometry=geometry, crs="EPSG:4326")


