"""MLCommons Croissant JSON-LD for the dataset, with GeoCroissant 1.0's geospatial properties.

Record sets: ``patches`` (one record per row of index.parquet: the per-patch metadata, split as
a field referencing the ``splits`` record set, Croissant's convention for ML splits),
``splits``, ``classes`` (the legend), and ``arrays``: the sar, eo and label arrays of each patch
in the Zarr stores, joined to ``patches`` by id. Croissant has no reader for Zarr, so ``arrays``
describes the tensors (shape, type, bands) and says how to read them; the ``patches`` records
load with ``mlcroissant`` itself. CRS, resolution, bands and the tiling scheme use the geocr
vocabulary (http://mlcommons.org/croissant/geo/).
"""

from __future__ import annotations

from typing import Any

from pipeline.publish.index import LegendClass, StoreMeta
from pipeline.publish.params import PublishParams
from pipeline.publish.scenes import Scene

CONTEXT: dict[str, Any] = {
    "@language": "en",
    "@vocab": "https://schema.org/",
    "citeAs": "cr:citeAs",
    "column": "cr:column",
    "conformsTo": "dct:conformsTo",
    "containedIn": "cr:containedIn",
    "cr": "http://mlcommons.org/croissant/",
    "data": {"@id": "cr:data", "@type": "@json"},
    "dataType": {"@id": "cr:dataType", "@type": "@vocab"},
    "dct": "http://purl.org/dc/terms/",
    "equivalentProperty": "cr:equivalentProperty",
    "examples": {"@id": "cr:examples", "@type": "@json"},
    "extract": "cr:extract",
    "field": "cr:field",
    "fileObject": "cr:fileObject",
    "fileProperty": "cr:fileProperty",
    "fileSet": "cr:fileSet",
    "format": "cr:format",
    "geocr": "http://mlcommons.org/croissant/geo/",
    "includes": "cr:includes",
    "isArray": "cr:isArray",
    "arrayShape": "cr:arrayShape",
    "isLiveDataset": "cr:isLiveDataset",
    "jsonPath": "cr:jsonPath",
    "key": "cr:key",
    "md5": "cr:md5",
    "parentField": "cr:parentField",
    "path": "cr:path",
    "rai": "http://mlcommons.org/croissant/RAI/",
    "recordSet": "cr:recordSet",
    "references": "cr:references",
    "regex": "cr:regex",
    "repeated": "cr:repeated",
    "replace": "cr:replace",
    "samplingRate": "cr:samplingRate",
    "sc": "https://schema.org/",
    "separator": "cr:separator",
    "source": "cr:source",
    "subField": "cr:subField",
    "transform": "cr:transform",
}
CONFORMS_TO = ["http://mlcommons.org/croissant/1.1", "http://mlcommons.org/croissant/geo/1.0"]
INDEX_ID = "index.parquet"
STORES_ID = "patch-stores"

# index column -> (Croissant data type, description)
INDEX_FIELDS: dict[str, tuple[str, str]] = {
    "id": ("sc:Text", "patch id, unique in the dataset: REGION_rROW_cCOL"),
    "region": ("sc:Text", "region name (one Zarr store per region)"),
    "split": ("sc:Text", "train, val or test (spatially blocked per region, with a buffer)"),
    "store": ("sc:Text", "path of the region's Zarr store, relative to this file's folder"),
    "patch": ("sc:Integer", "index of the patch in its store (first dimension of sar, eo, label)"),
    "row": ("sc:Integer", "top-left pixel row on the region grid"),
    "col": ("sc:Integer", "top-left pixel column on the region grid"),
    "lon": ("sc:Float", "centre longitude (EPSG:4326)"),
    "lat": ("sc:Float", "centre latitude (EPSG:4326)"),
    "lon_min": ("sc:Float", "footprint west edge"),
    "lat_min": ("sc:Float", "footprint south edge"),
    "lon_max": ("sc:Float", "footprint east edge"),
    "lat_max": ("sc:Float", "footprint north edge"),
    "gsd_m": ("sc:Float", "ground sampling distance of the grid, metres"),
    "sar_datetime": ("sc:Date", "SAR acquisition time (UTC)"),
    "eo_datetime": ("sc:Date", "optical image date (UTC)"),
    "gap_days": ("sc:Float", "SAR minus EO time, days"),
    "sar_item": ("sc:Text", "the SAR scene: its STAC item id"),
    "calibrated": ("sc:Boolean", "SAR is calibrated sigma0 (else relative dB)"),
    "urban_rural": ("sc:Text", "urban or rural: the region's class from OSM landuse"),
    "residential_share": ("sc:Float", "share of the patch in residential landuse"),
    "nonres_share": ("sc:Float", "share in non-residential built-up landuse"),
    "valid_share": ("sc:Float", "share of pixels with SAR, EO and label data"),
    "valid_px": ("sc:Integer", "labelled pixels"),
    "dominant_class": ("sc:Integer", "most frequent class id (-1: no labelled pixel)"),
    "dominant_class_name": ("sc:Text", "its name"),
}


def _qv(value: float, unit: str) -> dict[str, Any]:
    return {"@type": "QuantitativeValue", "value": value, "unitText": unit}


def _field(rs: str, name: str, dtype: str, desc: str, source: dict[str, Any] | None = None, **kw: Any) -> dict[str, Any]:
    out = {"@type": "cr:Field", "@id": f"{rs}/{name}", "name": name, "description": desc, "dataType": dtype}
    if source is not None:
        out["source"] = source
    out.update(kw)
    return out


def _column(col: str) -> dict[str, Any]:
    return {"fileObject": {"@id": INDEX_ID}, "extract": {"column": col}}


def croissant_document(
    gdf,
    stats: dict[str, Any],
    classes: list[LegendClass],
    metas: list[StoreMeta],
    scenes: dict[str, list[Scene]],
    p: PublishParams,
    index_sha256: str,
    stores_glob: str,
    citation: str,
) -> dict[str, Any]:
    """The Croissant document (a JSON-ready dict) for the index ``gdf`` and the stores of ``metas``.

    ``index_sha256`` is the hash of index.parquet as written; ``stores_glob`` the stores' path
    pattern relative to the document's folder.
    """
    size = int(metas[0].attrs.get("params", {}).get("patches", {}).get("size") or 256) if metas else 256
    gsds = sorted({round(float(g), 4) for g in gdf["gsd_m"]})
    b = [float(gdf["lon_min"].min()), float(gdf["lat_min"].min()), float(gdf["lon_max"].max()),
         float(gdf["lat_max"].max())]  # fmt: skip
    times = [t for col in ("sar_datetime", "eo_datetime") for t in gdf[col].dropna()]
    temporal = f"{min(times).date().isoformat()}/{max(times).date().isoformat()}" if times else None
    splits = [s for s in p.splits if stats["totals"]["patches_by_split"].get(s)]
    all_scenes = [sc for r in sorted(scenes) for sc in scenes[r]]
    pols = sorted({x for sc in all_scenes for x in sc.fields.get("sar:polarizations") or []}) or ["unknown"]
    bands = sorted({str(sc.fields.get("sar:frequency_band")) for sc in all_scenes if sc.fields.get("sar:frequency_band")})
    patches_cfg = (metas[0].attrs.get("params") or {}).get("patches", {}) if metas else {}
    stride = patches_cfg.get("stride")
    tiling = (f"{size}x{size} px patches on a per-region EPSG:4326 grid at the region's GSD ({', '.join(f'{g:g}' for g in gsds)} m), "
              f"cut every {stride or '?'} px (overlapping when the stride is below the size); patches with too little valid "
              "SAR or EO are skipped. Splits are spatial blocks of patches per region with a buffer so no pixel is "
              "shared across splits.")  # fmt: skip

    patch_fields = [_field("patches", c, t, d, _column(c)) for c, (t, d) in INDEX_FIELDS.items() if c in gdf.columns]
    for f in patch_fields:
        if f["name"] == "split":
            f["references"] = {"field": {"@id": "splits/name"}}
        if f["name"] == "dominant_class":
            f["references"] = {"field": {"@id": "classes/id"}}
    for c in classes:
        col = f"px_{c.slug}"
        if col in gdf.columns:
            patch_fields.append(_field("patches", col, "sc:Integer", f"pixels of class {c.id} ({c.name})", _column(col)))

    store_src = {"fileSet": {"@id": STORES_ID}, "extract": {"fileProperty": "content"}}
    sar_band = {"@type": "geocr:BandConfiguration", "geocr:totalBands": 1,
                "geocr:bandNameList": [f"sigma0_{'_'.join(pols)}_dB"]}  # fmt: skip
    eo_band = {"@type": "geocr:BandConfiguration", "geocr:totalBands": 3, "geocr:bandNameList": ["red", "green", "blue"]}
    arrays = [
        _field("arrays", "id", "sc:Text", "patch id (joins patches/id)", None,
               references={"field": {"@id": "patches/id"}}),
        _field("arrays", "sar", "sc:Float", f"SAR backscatter, float32 dB ({', '.join(bands) or 'unknown'}-band, "
               f"{'/'.join(pols)}); NaN = no data. zarr: store['sar'][patch] -> (1, {size}, {size})", store_src,
               isArray=True, arrayShape=f"1,{size},{size}", **{"geocr:bandConfiguration": sar_band}),
        _field("arrays", "eo", "sc:Integer", f"optical RGB, uint8. zarr: store['eo'][patch] -> (3, {size}, {size})",
               store_src, isArray=True, arrayShape=f"3,{size},{size}", **{"geocr:bandConfiguration": eo_band}),
        _field("arrays", "label", "sc:Integer", f"land-cover class id per pixel, uint8 (classes/id), 255 = no data. "
               f"zarr: store['label'][patch] -> ({size}, {size})", store_src, isArray=True,
               arrayShape=f"{size},{size}", **{"geocr:bandConfiguration": {
                   "@type": "geocr:BandConfiguration", "geocr:totalBands": 1, "geocr:bandNameList": ["class_id"]}}),
    ]  # fmt: skip
    licences = sorted({lnk.href for lnk in p.license_links})
    sar_names = sorted({sc.provider for sc in all_scenes})
    return {
        "@context": CONTEXT,
        "@type": "sc:Dataset",
        "name": p.id,
        "description": p.description,
        "conformsTo": CONFORMS_TO,
        "version": p.version,
        "license": licences,
        "citeAs": citation,
        "keywords": list(p.keywords),
        "creator": {"@type": "sc:Organization", "name": "sareo developers"},
        "url": "https://github.com/sareo/sareo",
        "datePublished": max(times).date().isoformat() if times else None,
        "spatialCoverage": {"@type": "Place", "geo": {"@type": "GeoShape", "box": f"{b[1]} {b[0]} {b[3]} {b[2]}"}},
        **({"temporalCoverage": temporal} if temporal else {}),
        "geocr:coordinateReferenceSystem": "EPSG:4326",
        "geocr:spatialResolution": _qv(gsds[0], "m") if len(gsds) == 1 else f"{gsds[0]:g}-{gsds[-1]:g} m (per region)",
        "geocr:bandConfiguration": {"@type": "geocr:BandConfiguration", "geocr:totalBands": 4,
                                    "geocr:bandNameList": [sar_band["geocr:bandNameList"][0], "red", "green", "blue"]},
        "geocr:samplingStrategy": tiling,
        "geocr:spatialBias": (f"{len(metas)} region(s): {', '.join(m.region for m in metas)}; SAR from "
                              f"{', '.join(sar_names) or 'unknown'}; OSM label completeness varies by place"),
        "distribution": [
            {"@type": "cr:FileObject", "@id": INDEX_ID, "name": INDEX_ID, "contentUrl": INDEX_ID,
             "encodingFormat": "application/x-parquet", "sha256": index_sha256,
             "description": "GeoParquet index: one row per patch (footprint geometry in EPSG:4326 WKB)"},
            {"@type": "cr:FileSet", "@id": STORES_ID, "name": STORES_ID, "encodingFormat": "application/vnd+zarr",
             "includes": stores_glob, "description": "one Zarr v3 store per region: arrays sar, eo, label "
             "(chunk = one patch) and the per-patch metadata; open with zarr.open_group(path)"},
        ],  # fmt: skip
        "recordSet": [
            {"@type": "cr:RecordSet", "@id": "splits", "name": "splits", "dataType": "cr:Split",
             "description": "the ML splits", "key": {"@id": "splits/name"},
             "field": [_field("splits", "name", "sc:Text", "split name")],
             "data": [{"splits/name": s} for s in splits]},
            {"@type": "cr:RecordSet", "@id": "classes", "name": "classes", "key": {"@id": "classes/id"},
             "description": "land-cover classes of the label arrays (OpenStreetMap tags, pipeline/legend.yaml)",
             "field": [_field("classes", "id", "sc:Integer", "class id"), _field("classes", "name", "sc:Text", "name"),
                       _field("classes", "color", "sc:Text", "display colour #RRGGBB")],
             "data": [{"classes/id": c.id, "classes/name": c.name, "classes/color": c.color} for c in classes]},
            {"@type": "cr:RecordSet", "@id": "patches", "name": "patches", "key": {"@id": "patches/id"},
             "description": "per-patch metadata from index.parquet; the images are in the arrays record set",
             "geocr:spatialResolution": _qv(gsds[0], "m") if len(gsds) == 1 else f"{gsds[0]:g}-{gsds[-1]:g} m",
             "field": patch_fields},
            {"@type": "cr:RecordSet", "@id": "arrays", "name": "arrays", "key": {"@id": "arrays/id"},
             "description": "the sar, eo and label arrays of each patch: zarr.open_group(<patches.store>)[NAME]"
             "[<patches.patch>] (Croissant has no Zarr reader yet; see the dataset card)", "field": arrays},
        ],  # fmt: skip
    }
