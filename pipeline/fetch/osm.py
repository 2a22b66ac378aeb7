"""OSM gathering: the region's OSM input (an extract, or an Overpass answer as OSM XML) into ``source/``.

Fetched once here, so the labels stage is offline and reads exactly what provenance.json hashes.
"""

from __future__ import annotations

import dataclasses
import logging
from typing import Any

from pipeline.atomic import write_bytes
from pipeline.fetch.cache import Cache, link_or_copy
from pipeline.fetch.stacio import FetchError, NotFound
from pipeline.grid import grid_for_bbox
from pipeline.layout import SourceFiles
from pipeline.osm import (
    OsmError,
    OsmParams,
    data_source,
    download_overpass,
    overpass_tags,
    overpass_xml,
    read_window,
    source_name,
)
from pipeline.provenance import sha256_file
from pipeline.regions import Region

log = logging.getLogger("sareo.fetch")

OVERPASS_NAME = "osm.osm"  # an Overpass answer is saved as OSM XML


def fetch_osm(region: Region, cache: Cache, p: OsmParams, out: SourceFiles) -> dict[str, Any]:
    """Put the region's OSM input into ``out`` (``osm.<suffixes>``); return the provenance 'osm' record.

    ``osm.file``: hardlinked (copied across file systems; cached first when it is a URL).
    ``osm.overpass``: the legend's keys over the grid plus ``osm.read_margin_m`` (exactly
    the window the labels stage reads), saved as OSM XML ``osm.osm``. ``source`` is what the
    region file says (a project-relative path, or "overpass"), never a resolved absolute path.
    """
    spec = region.osm or {}
    if spec.get("file"):
        href = region.resolve(spec["file"])
        try:
            name = source_name(spec["file"])
        except OsmError as exc:
            raise FetchError(f"{region.path}: osm.file: {exc}") from None
        try:
            path, _, _ = cache.get(href)
        except NotFound:
            raise FetchError(f"{region.path}: osm.file {spec['file']!r}: no such file ({href})") from None
        link_or_copy(path, out.osm(name))
        rec: dict[str, Any] = {"kind": "file", "source": str(spec["file"])}
    elif spec.get("overpass"):
        p = dataclasses.replace(p, cache_dir=str(region.root / p.cache_dir))  # relative to the project root
        bbox = read_window(grid_for_bbox(region.bbox, region.gsd_m).bounds, p.read_margin_m)
        answers = download_overpass(bbox, p)
        name = OVERPASS_NAME
        write_bytes(out.osm(name), overpass_xml(answers, bbox))
        base = sorted({str((a.get("osm3s") or {}).get("timestamp_osm_base") or "") for a in answers} - {""})
        rec = {"kind": "overpass", "source": "overpass", "url": p.overpass_url,
               "bbox": list(bbox), "keys": sorted(overpass_tags()),
               "requests": len(answers), "osm_base": base[-1] if base else None}
    else:
        raise FetchError(f"{region.path}: osm: give file or overpass: true")
    dest = out.osm(name)
    credit = data_source(dest)
    rec.update({"file": name, "sha256": sha256_file(dest), "bytes": dest.stat().st_size,
                "licence": credit.licence, "attribution": credit.attribution})
    log.info("OSM %s: %s -> %s (%d bytes)", region.name, rec["source"], name, rec["bytes"])
    return rec

