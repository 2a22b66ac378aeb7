"""The STAC collection: one item per region store, with links to the index, statistics and plots.

Hrefs are relative, so the catalog moves together with the data; :func:`check_stac` reads it
back offline and lists every local link that does not resolve.
"""

from __future__ import annotations

import datetime as dt
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from pipeline.documents import read_json
from pipeline.layout import DatasetFiles, GridFiles, LabelFiles, RegistrationFiles
from pipeline.provenance import OSM, sar_source
from pipeline.publish.index import LegendClass, PublishError, StoreMeta, relpath
from pipeline.publish.params import PublishParams
from pipeline.publish.scenes import Scene, common_fields, extensions_for
from pipeline.publish.stats import PLOTS, rounded

ZARR_MEDIA_TYPE = "application/vnd+zarr"
PARQUET_MEDIA_TYPE = "application/vnd.apache.parquet"
LABEL_EXTENSION = "https://stac-extensions.github.io/label/v1.0.1/schema.json"
ML_AOI_EXTENSION = "https://stac-extensions.github.io/ml-aoi/v0.2.0/schema.json"
ML_AOI_SPLIT = {"train": "train", "val": "validate", "test": "test"}  # ml-aoi's names for our splits


@dataclass(frozen=True)
class RegionFiles:
    """A region's stage outputs its item links to (and reads the registration from); any may be absent."""

    registration: RegistrationFiles | None = None
    grid: GridFiles | None = None
    labels: LabelFiles | None = None

    def assets(self) -> dict[str, tuple[Path, str, list[str], str]]:
        """Asset key -> (file, media type, roles, title) of every file this region may have."""
        out: dict[str, tuple[Path, str, list[str], str]] = {}
        if self.labels is not None:
            out["labels_quicklook"] = (self.labels.png, "image/png", ["overview"], "label map with legend")
            out["labels_summary"] = (self.labels.report, "application/json", ["metadata"], "class shares, urban/rural")
        if self.grid is not None:
            out["quicklook"] = (self.grid.quicklook, "image/png", ["overview"], "SAR and EO side by side")
        if self.registration is not None:
            out["registration"] = (self.registration.record, "application/json", ["metadata"], "registration")
            out["registration_overlay"] = (self.registration.overlay, "image/png", ["overview"], "before/after overlay")
        return out


def _scenes(meta: StoreMeta) -> list[dict[str, Any]]:
    """The SAR scenes a store was cut from (its ``scenes`` attribute; older stores: provenance.sar)."""
    scenes = meta.attrs.get("scenes")
    if isinstance(scenes, list):
        return [s for s in scenes if isinstance(s, dict)]
    sar = (meta.attrs.get("provenance") or {}).get("sar")
    return [sar] if isinstance(sar, dict) else []


def _providers(metas: list[StoreMeta]):
    import pystac

    sar = sorted({str(sc.get("provider", "")).lower() for m in metas for sc in _scenes(m)})
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


def _registration(meta: StoreMeta, files: RegistrationFiles | None) -> dict[str, Any] | None:
    """A compact registration result from the store (attribute), else from the region's record file."""
    reg = meta.attrs.get("registration") or (meta.attrs.get("provenance") or {}).get("registration")
    if not reg and files is not None and files.record.is_file():
        reg = read_json(files.record, PublishError)
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
    p: PublishParams,
    out: DatasetFiles,
    stac_dir: Path,
    regions: Mapping[str, RegionFiles],
    scenes: Mapping[str, list[Scene]] | None = None,
):
    """The STAC collection (label + classification extensions) with one item per region store.

    Each region item carries the SAR product's sar/sat/view fields (those all its scenes share)
    and the processing fields; each (region, split) gets an ``ml-aoi`` item covering that
    split's patches, and a region with several scenes one item per scene.

    Hrefs are made relative to the final locations of ``stac_dir`` and ``out``, so the
    catalog is self-contained and can be moved together with the data. ``regions`` names the
    files each region's item links to; a region without an entry links its store only.
    """
    import pystac
    import shapely
    from pystac.extensions.classification import Classification, ClassificationExtension

    stac_dir = Path(stac_dir)
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
            "gsd": rounded(float(sub["gsd_m"].iloc[0]), 4) if len(sub) else None,
            "sareo:patches": stats["patches"]["by_region"][region]["patches"],
            "sareo:area_km2": stats["patches"]["by_region"][region]["area_km2"],
            "sareo:urban_rural": m.attrs.get("urban_rural"),
            "sareo:calibrated": bool(sub["calibrated"].all()) if len(sub) else None,
            "sareo:splits": {k: v for k, v in (m.attrs.get("splits") or {}).items() if k != "counts"},
            "sareo:scenes": [{k: sc.get(k) for k in ("id", "item_id", "provider", "product", "polarization",
                                                     "datetime", "calibrated")} for sc in _scenes(m)],
        }
        for kind in ("sar", "eo"):
            r = _dt_range(sub[f"{kind}_datetime"])
            props[f"sareo:{kind}_datetime"] = [_iso(r[0]), _iso(r[1])] if r else None
        files = regions.get(region, RegionFiles())
        reg = _registration(m, files.registration)
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
        item.add_asset("patches", pystac.Asset(relpath(m.path, item_dir), title=f"{region} patch store (Zarr v3)",
                                               media_type=ZARR_MEDIA_TYPE, roles=["data", "labels"]))  # fmt: skip
        for key, (target, media, roles, title) in files.assets().items():
            if target.is_file():
                asset = pystac.Asset(relpath(target, item_dir), title=title, media_type=media, roles=roles)
                item.add_asset(key, asset)
        hist = sub[[f"px_{c.slug}" for c in classes]].to_numpy(dtype=np.int64).sum(axis=0)
        item.properties.update(label_fields)
        item.properties["label:overviews"] = [
            {"property_key": None, "counts": [{"name": c.slug, "count": int(h)} for c, h in zip(classes, hist)]}
        ]
        region_scenes = list((scenes or {}).get(region, []))
        sar_fields = {**common_fields(region_scenes), **_processing(region_scenes, m)}
        item.properties.update(sar_fields)
        if region_scenes:
            item.properties["sareo:scenes"] = [{"id": sc.id, "patches": sc.patches} for sc in region_scenes]
        item.stac_extensions = sorted({LABEL_EXTENSION, ClassificationExtension.get_schema_uri(),
                                       *extensions_for(sar_fields)})  # fmt: skip
        ClassificationExtension.ext(item.assets["patches"], add_if_missing=True).classes = cls_objs
        items.append(item)
        items.extend(_sub_items(item, sub, p.splits, region_scenes, m))

    rng = _dt_range(gdf["sar_datetime"], gdf["eo_datetime"])
    if rng is None:
        raise PublishError("no patch in any store has a SAR or EO datetime; the collection needs a time extent")
    region_bboxes = [list(i.bbox) for i in items if i.id in by_region]
    overall = [min(b[0] for b in region_bboxes), min(b[1] for b in region_bboxes),
               max(b[2] for b in region_bboxes), max(b[3] for b in region_bboxes)]  # fmt: skip
    collection = pystac.Collection(
        id=p.id,
        title=p.title,
        description=p.description,
        extent=pystac.Extent(pystac.SpatialExtent([overall, *region_bboxes]), pystac.TemporalExtent([list(rng)])),
        license=p.license,
        keywords=list(p.keywords),
        providers=_providers(metas),
        summaries=pystac.Summaries({
            "sareo:split": [s for s in p.splits if stats["totals"]["patches_by_split"][s] > 0],
            "sareo:urban_rural": sorted(set(gdf["urban_rural"])),
            "sareo:region": sorted(by_region),
            "gsd": sorted({rounded(g, 4) for g in gdf["gsd_m"].astype(float)}),
            "label:type": ["raster"],
            "label:classes": label_fields["label:classes"],
            "label:tasks": ["segmentation", "classification"],
            "classification:classes": [c.to_dict() for c in cls_objs],
        }, maxcount=10**6),  # fmt: skip
        extra_fields={
            "version": p.version,
            "sareo:patches": stats["totals"]["patches_by_split"],
            "sareo:area_km2": stats["totals"]["area_km2"],
            "sareo:attribution": _attributions(metas),
        },
    )
    collection.stac_extensions = sorted({LABEL_EXTENSION, ClassificationExtension.get_schema_uri()})
    for link in p.license_links:
        collection.add_link(pystac.Link("license", link.href, media_type="text/html", title=link.title))
    index_href = relpath(out.index, stac_dir)
    collection.add_link(pystac.Link("alternate", index_href, media_type=PARQUET_MEDIA_TYPE,
                                    title="GeoParquet index: one row per patch"))  # fmt: skip
    collection.add_asset("index", pystac.Asset(index_href, title="GeoParquet index: one row per patch",
                                               media_type=PARQUET_MEDIA_TYPE, roles=["metadata"]))  # fmt: skip
    collection.add_asset("stats", pystac.Asset(relpath(out.stats, stac_dir), title="dataset statistics",
                                               media_type="application/json", roles=["metadata"]))  # fmt: skip
    for name in PLOTS:
        collection.add_asset(f"plot_{Path(name).stem}", pystac.Asset(
            relpath(out.plots / name, stac_dir), title=Path(name).stem.replace("_", " "),
            media_type="image/png", roles=["overview"]))  # fmt: skip
    for item in items:
        collection.add_item(item)
    collection.normalize_hrefs(os.path.abspath(stac_dir), skip_unresolved=False)
    collection.catalog_type = pystac.CatalogType.SELF_CONTAINED
    return collection


def _processing(scenes: list[Scene], meta: StoreMeta) -> dict[str, Any]:
    """processing: fields of the derived product: what sareo did, with which software."""
    software: dict[str, str] = {}
    for sc in scenes:
        software.update(sc.fields.get("processing:software") or {})
    sw = meta.attrs.get("software") or {}
    software[str(sw.get("name") or "sareo")] = str(sw.get("version") or "unknown")
    cal = sorted({str(sc.calibration.get("radiometry") or "relative") for sc in scenes}) or ["unknown"]
    lineage = (f"SAR ({', '.join(cal)}) in dB and optical RGB resampled once onto a common EPSG:4326 grid after "
               "automatic SAR-to-optical co-registration; labels rasterised from OpenStreetMap on the same grid; "
               "cut into patches with spatially blocked splits")  # fmt: skip
    return {"processing:lineage": lineage, "processing:software": dict(sorted(software.items()))}


def _sub_items(region_item, sub, splits: tuple[str, ...], scenes: list[Scene], meta: StoreMeta) -> list[Any]:
    """One ml-aoi item per split of the region and, for several scenes, one item per scene."""
    import pystac
    import shapely

    out = []
    groups: list[tuple[str, Any, dict[str, Any]]] = []
    for s in splits:
        part = sub[sub["split"] == s]
        if len(part):
            groups.append((f"{region_item.id}_{s}", part, {"ml-aoi:split": ML_AOI_SPLIT.get(s, s), "sareo:split": s}))
    if len(scenes) > 1:
        for sc in scenes:
            part = sub[sub["sar_item"] == sc.id]
            if len(part):
                groups.append((f"{region_item.id}_{sc.id}", part, {**sc.fields, "sareo:scene": sc.id,
                                                                    "sareo:registration": sc.registration}))
    for item_id, part, extra in groups:
        fp = shapely.union_all(part.geometry.values)
        props = {k: v for k, v in region_item.properties.items()
                 if not k.startswith(("sareo:patches", "sareo:area_km2", "sareo:scenes", "label:overviews"))}
        rng = _dt_range(part["sar_datetime"], part["eo_datetime"])
        if rng is not None:
            props["start_datetime"], props["end_datetime"] = _iso(rng[0]), _iso(rng[1])
        props.update({k: v for k, v in extra.items() if v is not None})
        props["sareo:patches"] = int(len(part))
        props["sareo:region"] = region_item.id
        item = pystac.Item(id=item_id, geometry=shapely.geometry.mapping(fp), bbox=[float(v) for v in fp.bounds],
                           datetime=None, properties=props)  # fmt: skip
        item.add_asset("patches", region_item.assets["patches"].clone())
        item.add_link(pystac.Link("derived_from", region_item, media_type="application/json",
                                  title=f"region {region_item.id}"))  # fmt: skip
        exts = set(region_item.stac_extensions) | set(extensions_for(props))
        if "ml-aoi:split" in props:
            exts.add(ML_AOI_EXTENSION)
        item.stac_extensions = sorted(exts)
        out.append(item)
    return out


def stac_documents(collection, stac_dir: Path) -> dict[str, dict[str, Any]]:
    """Relative path under ``stac_dir`` -> JSON dict of every STAC object, without self links."""
    stac_dir = Path(os.path.abspath(stac_dir))
    docs = {"collection.json": collection.to_dict(include_self_link=False, transform_hrefs=True)}
    for item in collection.get_items(recursive=True):
        rel = relpath(Path(item.get_self_href()), stac_dir)
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

