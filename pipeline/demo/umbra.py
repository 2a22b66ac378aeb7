"""A simulated Umbra GEC product and its static catalog, in the layout of Umbra Open Data.

Umbra's open bucket (``s3://umbra-open-data-catalog``) has a static STAC tree nested by date,
``stac/YYYY/YYYY-MM/YYYY-MM-DD/<id>/<id>.json`` (item ids are UUIDs), and the data elsewhere,
under ``sar-data/tasks/<task>/<task uuid>/<collect>/``, where the task folder is a site name
with spaces and commas (``Tanna Island, Vanuatu``): hrefs must be percent-encoded. The 2023
vintage keys the GeoTIFF asset ``GEC``; later ones use the file name, so readers classify
assets by what they are. The GEC GeoTIFF is a *display* product: uint8 amplitude, DN 0 outside
the footprint without a nodata tag, a geotransform rotated with the collect, and no calibration
constant anywhere (not in the file, not in the item): relative backscatter only.

Item fields follow a real Umbra item (tests/data/umbra/*.stac.v2.json, CC BY 4.0 Umbra Lab,
Inc.); geometry, times and angles are the simulated scene's, and the providers say SIMULATED.
Only the GEC asset is written (the complex SICD/CPHD products are not simulated).
"""

from __future__ import annotations

import datetime as dt
import math
import urllib.parse
from pathlib import Path
from typing import Any

import pystac
from shapely.geometry import Polygon

from pipeline.demo.catalog import EXT, providers, simulated_item
from pipeline.demo.params import DemoError
from pipeline.demo.product import iso_time
from pipeline.provenance import SOURCES

UMBRA = SOURCES["umbra"]
COLLECT_SECONDS = 4.0  # a spotlight dwell of a few seconds; start is one second after the collect name
GEC_KEY = "GEC"  # the asset key of the 2023 vintage (later items key assets by file name)
GEC_MEDIA = "image/tiff; application=geotiff; profile=cloud-optimized"
ORBIT_HEADING = {"ascending": 350.0, "descending": 190.0}  # near-polar orbit at ~60 N
ALTITUDE_KM, EARTH_KM = 525.0, 6371.0


def parse_collect(collect: str, polarization: str) -> dict[str, Any]:
    """Fields of an Umbra collect name ``YYYY-MM-DD-HH-MM-SS_UMBRA-NN`` (the same keys as a Capella id's)."""
    stamp, _, sat = collect.partition("_")
    try:
        t0 = dt.datetime.strptime(stamp, "%Y-%m-%d-%H-%M-%S").replace(tzinfo=dt.timezone.utc)
        n = int(sat.removeprefix("UMBRA-"))
    except ValueError:
        raise DemoError(f"collect {collect!r}: expected YYYY-MM-DD-HH-MM-SS_UMBRA-NN") from None
    start = t0 + dt.timedelta(seconds=1)
    return {
        "platform": f"Umbra-{n:02d}",
        "mode": "SP",
        "product": "GEC",
        "polarization": polarization,
        "start": start,
        "end": start + dt.timedelta(seconds=COLLECT_SECONDS),
    }


def observation_direction(range_azimuth_deg: float, orbit_state: str) -> str:
    """'left' or 'right': which side of the ground track the ground-range direction points to."""
    return "left" if (range_azimuth_deg - ORBIT_HEADING[orbit_state]) % 360 > 180 else "right"


def data_folder(task: str, task_id: str, collect: str) -> str:
    """``sar-data/tasks/<task>/<task uuid>/<collect>``: the unencoded path of a collect's files."""
    return f"sar-data/tasks/{task}/{task_id}/{collect}"


def quote_href(path: str) -> str:
    """Percent-encode a relative href as Umbra's URLs are (spaces as %20; commas and '/' kept)."""
    return urllib.parse.quote(path, safe="/,")


def umbra_item(p: dict[str, Any], height_m: float = 18.0) -> pystac.Item:
    """A STAC item with the fields of a real Umbra item (no proj: or calibration fields: Umbra has none)."""
    info = p["info"]
    fp: Polygon = p["footprint"]
    inc = float(p["incidence_deg"])
    look = math.degrees(math.asin(math.sin(math.radians(inc)) * EARTH_KM / (EARTH_KM + ALTITUDE_KM)))
    slant_km = EARTH_KM * math.sin(math.radians(inc - look)) / math.sin(math.radians(look))
    squint = abs((p["range_azimuth_deg"] - ORBIT_HEADING[p["orbit_state"]]) % 360 - 270.0)
    created = iso_time(info["end"] + dt.timedelta(days=3))
    pixel = float(p["pixel_m"])
    props = {
        "constellation": "umbra",
        "created": created,
        "datetime": None,  # the mid-collect time, set by simulated_item
        "updated": created,
        "start_datetime": iso_time(info["start"]),
        "end_datetime": iso_time(info["end"]),
        "platform": info["platform"],
        "license": UMBRA.licence,
        "providers": providers(UMBRA, "item layout and field names of Umbra Open Data (CC BY 4.0)"),
        "sar:center_frequency": 9.6,
        "sar:frequency_band": "X",
        "sar:instrument_mode": "SPOTLIGHT",
        "sar:looks_azimuth": float(p["looks"]),
        "sar:looks_range": 1,
        "sar:observation_direction": observation_direction(p["range_azimuth_deg"], p["orbit_state"]),
        "sar:polarizations": [info["polarization"]],
        "sar:product_type": "GEC",
        "sar:resolution_azimuth": round(1.6 * pixel, 6),
        "sar:resolution_range": round(1.6 * pixel, 6),
        "sat:orbit_state": p["orbit_state"],
        "title": f"{p['task']} (SIMULATED)",
        "description": f"Simulated Umbra-style GEC over demo region {p['name']}; not Umbra data.",
        "umbra:collect_id": p["collect_id"],
        "umbra:task_id": p["task_id"],
        "umbra:grazing_angle_degrees": round(90.0 - inc, 6),
        "umbra:slant_range_meters": round(slant_km * 1000.0, 3),
        "umbra:squint_angle_degrees_off_broadside": round(squint, 6),
        "view:azimuth": (p["range_azimuth_deg"] + 180.0) % 360.0,
        "view:incidence_angle": inc,
    }
    ring = [[x, y, height_m] for x, y in fp.exterior.coords]  # Umbra's footprints carry heights
    extensions = [EXT.format(e) for e in ("view/v1.0.0", "sar/v1.0.0", "sat/v1.0.0")]
    extensions.append("https://umbra-space.github.io/umbra-stac-extension/json-schema/schema.json")
    return simulated_item(p, {"type": "Polygon", "coordinates": [ring]}, props, extensions)


def write_umbra_catalog(dest: Path, products: list[dict[str, Any]]) -> Path:
    """``dest/stac/``: a static catalog nested by date; GEC files moved to ``dest/sar-data/tasks/...``.

    Asset hrefs are relative to the item and percent-encoded, so they climb out of ``stac/`` into
    ``sar-data/`` as Umbra's point from the catalog prefix to the data prefix of one bucket.
    """
    stac = dest / "stac"
    root = pystac.Catalog(
        id="umbra-open-data-catalog",
        title="Umbra Open Data (SIMULATED sareo demo)",
        description="Offline demo catalog in the layout of s3://umbra-open-data-catalog/stac/: simulated GEC "
        "products, not Umbra data. Nested by year, month and day.",
    )
    folders: dict[str, pystac.Catalog] = {}

    def sub(parent: pystac.Catalog, cid: str) -> pystac.Catalog:
        if cid not in folders:
            folders[cid] = pystac.Catalog(id=cid, title=cid, description=f"Umbra Open Data {cid}")
            parent.add_child(folders[cid])
        return folders[cid]

    items: list[tuple[pystac.Item, dict[str, Any]]] = []
    for p in sorted(products, key=lambda q: (q["info"]["start"], q["item_id"])):
        s = p["info"]["start"]
        day = sub(sub(sub(root, f"{s:%Y}"), f"{s:%Y-%m}"), f"{s:%Y-%m-%d}")
        item = umbra_item(p)
        day.add_item(item)
        items.append((item, p))
    root.normalize_hrefs(str(stac))
    for item, p in items:
        folder = dest / data_folder(p["task"], p["task_id"], p["collect"])
        folder.mkdir(parents=True, exist_ok=True)
        gec = folder / f"{p['collect']}_GEC.tif"
        (p["stage"] / gec.name).replace(gec)
        p["data_path"], p["item_path"] = gec, Path(item.get_self_href())
        rel = Path(gec).relative_to(dest).as_posix()
        depth = len(Path(item.get_self_href()).relative_to(dest).parts) - 1  # stac/Y/M/D/ID -> 5 levels up
        item.add_asset(
            GEC_KEY,
            pystac.Asset(
                href=quote_href("../" * depth + rel),
                media_type=GEC_MEDIA,
                roles=["data"],
                title="GEC",
                description="Geocoded Ellipsoid Corrected GeoTIFF: uint8 display amplitude, no calibration constant",
            ),
        )
    root.save(pystac.CatalogType.SELF_CONTAINED)
    return stac / "catalog.json"
