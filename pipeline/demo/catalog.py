"""The demo's static STAC catalog, in the layout of Capella Open Data (s3://capella-open-data/stac/).

By-datetime year/month/day sub-catalogs (zero-padded or not, as in different vintages), a second
by-product-type path to the same items, Capella item ids and assets HH / metadata / preview /
thumbnail with relative hrefs (the data asset keyed by its polarisation, HH or VV): the fetch stage
must walk it exactly like the real bucket.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pystac
import shapely
from affine import Affine
from shapely.geometry import Polygon

from pipeline.demo.product import iso_time
from pipeline.provenance import SOURCES

CAPELLA = SOURCES["capella"]
EXT = "https://stac-extensions.github.io/{}/schema.json"


def providers(source: Any, layout: str) -> list[dict[str, Any]]:
    """STAC providers of a simulated item: the demo produced it; ``source`` licensed the ``layout`` it copies."""
    return [
        {
            "name": "sareo demo (simulated from OpenStreetMap)",
            "roles": ["producer", "processor"],
            "url": "https://www.openstreetmap.org/copyright",
        },
        {"name": source.name, "roles": ["licensor"], "url": source.url, "description": layout},
    ]


def simulated_item(p: dict[str, Any], geometry: dict[str, Any], props: dict[str, Any],
                   extensions: list[str]) -> pystac.Item:
    """A pystac Item of a simulated product: footprint bbox, mid-collect datetime, the given properties."""
    info = p["info"]
    mid = info["start"] + (info["end"] - info["start"]) / 2
    item = pystac.Item(
        id=p["item_id"],
        geometry=geometry,
        bbox=[round(v, 7) for v in p["footprint"].bounds],
        datetime=mid,
        properties=props,
        stac_extensions=extensions,
    )
    item.properties["datetime"] = iso_time(mid)
    return item


def _item(p: dict[str, Any]) -> pystac.Item:
    info = p["info"]
    t: Affine = p["transform"]
    h, w = p["shape"]
    fp: Polygon = p["footprint"]
    img = p["ext"]["collect"]["image"]
    props = {
        "datetime": None,
        "start_datetime": iso_time(info["start"]),
        "end_datetime": iso_time(info["end"]),
        "platform": info["platform"],
        "constellation": "capella",
        "instruments": ["capella-sar"],
        "mission": "capella",
        "sar:instrument_mode": p["ext"]["collect"]["mode"],
        "sar:frequency_band": "X",
        "sar:center_frequency": 9.65,
        "sar:polarizations": [info["polarization"]],
        "sar:product_type": info["product"],
        "sar:resolution_range": img["ground_range_resolution"],
        "sar:resolution_azimuth": img["ground_azimuth_resolution"],
        "sar:pixel_spacing_range": img["pixel_spacing_column"],
        "sar:pixel_spacing_azimuth": img["pixel_spacing_row"],
        "sar:looks_range": img["range_looks"],
        "sar:looks_azimuth": img["azimuth_looks"],
        "sar:looks_equivalent_number": img["enl"],
        "sar:observation_direction": "left",
        "sat:orbit_state": p["orbit_state"],
        "view:incidence_angle": p["incidence_deg"],
        "view:look_angle": img["center_pixel"]["look_angle"],
        "view:azimuth": (p["range_azimuth_deg"] + 180.0) % 360.0,
        "proj:epsg": p["crs"].to_epsg(),
        "proj:shape": [h, w],
        "proj:transform": [t.a, t.b, t.c, t.d, t.e, t.f],
        "capella:collect_id": p["ext"]["collect"]["collect_id"],
        "capella:image_formation_algorithm": img["algorithm"],
        "license": CAPELLA.licence,
        "providers": providers(CAPELLA, "product layout and metadata structure of Capella Open Data (CC BY 4.0)"),
        "title": f"{p['item_id']} (SIMULATED)",
        "description": f"Simulated Capella-style GEO product over demo region {p['name']}; not Capella data.",
    }
    extensions = [EXT.format(e) for e in ("sar/v1.0.0", "sat/v1.0.0", "view/v1.0.0", "projection/v1.1.0")]
    return simulated_item(p, shapely.geometry.mapping(fp), props, extensions)


POLARIZATION = "{pol}"  # the data asset's key is the product's polarisation, as in Capella's catalog
_ASSETS = (
    (
        POLARIZATION,
        ".tif",
        "image/tiff; application=geotiff; profile=cloud-optimized",
        ["data"],
        "{pol} amplitude (UInt16, sigma0 = (scale_factor * DN)^2)",
    ),
    ("metadata", "_extended.json", "application/json", ["metadata"], "Extended metadata"),
    ("preview", "_preview.png", "image/png", ["overview"], "Preview"),
    ("thumbnail", "_thumb.png", "image/png", ["thumbnail"], "Thumbnail"),
)


def write_catalog(dest: Path, products: list[dict[str, Any]]) -> Path:
    """A self-contained static STAC catalog in Capella's layout; assets are moved next to each item."""
    root = pystac.Catalog(
        id="capella-open-data",
        title="Capella Space Open Data (SIMULATED sareo demo)",
        description="Offline demo catalog in the layout of s3://capella-open-data/stac/: simulated products, "
        "not Capella data. Sub-catalogs by datetime and by product type.",
    )
    by_dt = pystac.Catalog(
        id="capella-open-data-by-datetime",
        title="Capella Open Data by datetime",
        description="Capella Open Data by datetime",
    )
    root.add_child(by_dt)
    folders: dict[str, pystac.Catalog] = {}

    def sub(parent: pystac.Catalog, cid: str, title: str) -> pystac.Catalog:
        if cid not in folders:
            folders[cid] = pystac.Catalog(id=cid, title=title, description=title)
            parent.add_child(folders[cid])
        return folders[cid]

    items: list[tuple[pystac.Item, dict[str, Any]]] = []
    for p in sorted(products, key=lambda q: (q["info"]["start"], q["item_id"])):
        s = p["info"]["start"]
        m, d = (f"{s.month:02d}", f"{s.day:02d}") if p["padded"] else (str(s.month), str(s.day))
        y_cat = sub(by_dt, f"capella-open-data-{s.year}", f"Capella Open Data {s.year}")
        m_cat = sub(y_cat, f"capella-open-data-{s.year}-{m}", f"Capella Open Data {s.year}-{m}")
        d_cat = sub(m_cat, f"capella-open-data-{s.year}-{m}-{d}", f"Capella Open Data {s.year}-{m}-{d}")
        item = _item(p)
        d_cat.add_item(item)
        items.append((item, p))
    root.normalize_hrefs(str(dest))
    for item, p in items:
        item_dir = Path(item.get_self_href()).parent
        item_dir.mkdir(parents=True, exist_ok=True)
        pol = p["info"]["polarization"]
        for key, suffix, media, roles, title in _ASSETS:
            f = p["stage"] / f"{p['item_id']}{suffix}"
            target = item_dir / f.name
            f.replace(target)
            item.add_asset(key.format(pol=pol), pystac.Asset(href=str(target), media_type=media, roles=roles,
                                                             title=title.format(pol=pol)))
            if key == POLARIZATION:
                p["data_path"] = target
        p["item_path"] = Path(item.get_self_href())
    # A second path to the same items, as in the real bucket: by product type.
    by_pt = pystac.Catalog(
        id="capella-open-data-by-product-type",
        title="Capella Open Data by product type",
        description="Capella Open Data by product type",
    )
    geo = pystac.Catalog(id="capella-open-data-geo", title="Capella Open Data GEO", description="GEO products")
    root.add_link(pystac.Link(pystac.RelType.CHILD, by_pt, media_type=pystac.MediaType.JSON, title=by_pt.title))
    by_pt.set_root(root)
    by_pt.set_parent(root)
    by_pt.set_self_href(str(dest / by_pt.id / "catalog.json"))
    by_pt.add_link(pystac.Link(pystac.RelType.CHILD, geo, media_type=pystac.MediaType.JSON, title=geo.title))
    geo.set_root(root)
    geo.set_parent(by_pt)
    geo.set_self_href(str(dest / by_pt.id / geo.id / "catalog.json"))
    for item, _ in items:
        geo.add_link(
            pystac.Link(pystac.RelType.ITEM, item.get_self_href(), media_type=pystac.MediaType.GEOJSON, title=item.id)
        )
    root.make_all_asset_hrefs_relative()
    root.save(pystac.CatalogType.SELF_CONTAINED)
    for c in (by_pt, geo):
        d = c.to_dict(include_self_link=False, transform_hrefs=True)
        Path(c.get_self_href()).write_text(json.dumps(d, indent=2) + "\n", encoding="utf-8")
    return dest / "catalog.json"
