"""The fetch stage: every SAR scene, the EO image and the OSM input of a region, gathered once, with provenance.

Everything remote goes through one :class:`~pipeline.fetch.stacio.Transport` (retries, timeouts,
anonymous S3) into the download cache, and is hardlinked from there into ``source/``, which
appears atomically. Every external input of a region then sits in ``source/`` with a checksum,
so the later stages are offline.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from pipeline.atomic import atomic_path, write_json
from pipeline.fetch.cache import Cache, link_or_copy
from pipeline.fetch.eo import fetch_eo
from pipeline.fetch.eo_search import fetch_region_scene_eo
from pipeline.fetch.geotiff import raster_footprint
from pipeline.fetch.osm import fetch_osm
from pipeline.fetch.params import FetchParams
from pipeline.fetch.sar import fetch_sar
from pipeline.fetch.stacio import FetchError, Transport, is_remote, local_path
from pipeline.layout import SourceFiles
from pipeline.osm import OsmParams
from pipeline.provenance import parse_datetime
from pipeline.regions import Region

log = logging.getLogger("sareo.fetch")


def fetch_region(region: Region, out: SourceFiles, cache: Path, p: FetchParams, osm: OsmParams) -> Path:
    """Write ``out``: every SAR scene under ``scenes/ID/``, the EO, osm.* and provenance; all or nothing.

    ``cache`` is the download cache directory, already resolved by the caller. Each scene folder
    is a complete source set (its SAR, metadata, EO and provenance), so register and grid run
    on one scene exactly as on a single-scene region.
    """
    store = Cache(Path(cache).absolute(), Transport.from_params(p))
    with atomic_path(out.dir) as tmp:
        tmp.mkdir()
        t = out.at(tmp)
        scenes = [_portable_rec(r, region) for r in fetch_sar(region, store, p, t)]
        if region.eo.get("search"):  # each scene gets the EO items nearest to it in time
            eo_rec = {"kind": "search", "per_scene": True, "source": portable(region.eo["search"], region),
                      "attribution": region.attribution or f"EO items found at {region.eo['search']}"}
            for rec in scenes:
                files = t.scene(rec["scene"])
                when = parse_datetime(rec.get("datetime"), strict=False)
                if when is None:
                    raise FetchError(f"region {region.name}: scene {rec['scene']}: no datetime; eo.search needs one "
                                     "to choose EO items near it in time")
                scene_eo = _portable_rec(fetch_region_scene_eo(region, raster_footprint(files.sar), when,
                                                               rec["scene"], store, p, files.eo), region)
                write_json(files.provenance, {"region": region.name, "scene": rec["scene"], "sar": rec,
                                              "eo": scene_eo})
        else:  # one EO for the region, hardlinked into every scene
            eo_rec = _portable_rec(fetch_eo(region, store, p, t.eo), region)
            for rec in scenes:
                files = t.scene(rec["scene"])
                link_or_copy(t.eo, files.eo)
                write_json(files.provenance, {"region": region.name, "scene": rec["scene"], "sar": rec, "eo": eo_rec})
        osm_rec = fetch_osm(region, store, osm, t)
        write_json(t.provenance, {"region": region.name, "scenes": scenes, "eo": eo_rec, "osm": osm_rec})
    log.info("fetch %s: wrote %s (%d scene(s))", region.name, out.dir, len(scenes))
    return out.dir


def portable(href: str | None, region: Region) -> str | None:
    """A local href inside the project as a project-relative path, so provenance is the same in every clone."""
    if href is None or is_remote(href):
        return href
    p = local_path(href)
    try:
        return p.absolute().relative_to(region.root.absolute()).as_posix()
    except ValueError:
        return href


def _portable_rec(rec: dict[str, Any], region: Region) -> dict[str, Any]:
    """``rec`` with its local hrefs (also in its metadata record) made portable."""
    out = {k: portable(v, region) if k in ("href", "item_href", "catalog", "source") else v for k, v in rec.items()}
    if isinstance(rec.get("metadata"), dict):
        out["metadata"] = _portable_rec(rec["metadata"], region)
    return out
