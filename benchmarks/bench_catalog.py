"""Static-catalog walk benchmark: sequential vs parallel, with and without a date filter, cached.

Generates a synthetic catalog in Capella Open Data's layout (root -> by-datetime -> year ->
month -> day -> items, plus a by-product-type hierarchy linking the same item files, and a
by-use-case subset), serves it over the loopback HTTP server of tests/servers.py with an
artificial latency per request (a remote bucket's round trip), and times
``pipeline.fetch.sar.find_sar_items`` (the catalog part of the fetch stage, on the region's one
source) for:

  1. walk_workers=1 (sequential), no date filter
  2. walk_workers=16 (parallel), no date filter
  3. sequential, one-month date filter
  4. parallel, one-month date filter
  5. a second region (other AOI, same filters as 2) with the walk cache: no catalog JSON read
  6. reference: every hierarchy walked sequentially (walk_hierarchy=all), as the walk was before
     pruning (item-link pruning still applies), unless --no-reference

    python benchmarks/bench_catalog.py [--items 3000] [--latency-ms 30] [--workers 16] [--no-reference]

``build_catalog`` / ``synthetic_items`` are reused by tests/test_fetch.py for small catalogs.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import random
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


@dataclass(frozen=True)
class SynthItem:
    """One synthetic Capella collect: id facts, start time and a footprint centre."""

    platform: str
    mode: str  # SP | SM | SS
    product: str  # GEO | GEC | SLC | ...
    pol: str  # HH | VV
    start: dt.datetime
    lon: float
    lat: float
    half_deg: float = 0.02

    @property
    def id(self) -> str:
        end = self.start + dt.timedelta(seconds=25)
        return (f"CAPELLA_{self.platform}_{self.mode}_{self.product}_{self.pol}_"
                f"{self.start:%Y%m%d%H%M%S}_{end:%Y%m%d%H%M%S}")

    @property
    def day_path(self) -> str:
        """by-datetime folders, month and day unpadded as in some Capella vintages (never built by fetch)."""
        y, m, d = self.start.year, self.start.month, self.start.day
        return (f"capella-open-data-by-datetime/capella-open-data-{y}/capella-open-data-{y}-{m}/"
                f"capella-open-data-{y}-{m}-{d}")

    @property
    def item_path(self) -> str:
        return f"{self.day_path}/{self.id}/{self.id}.json"


def _catalog(cat_id: str, title: str, links: list[dict], depth: int) -> dict:
    up = "../" * depth
    return {"type": "Catalog", "stac_version": "1.0.0", "id": cat_id, "description": title, "title": title,
            "links": [{"rel": "root", "href": f"{up}catalog.json", "type": "application/json"}] + links}


def _item_doc(it: SynthItem, depth: int) -> dict:
    w, s, e, n = it.lon - it.half_deg, it.lat - it.half_deg, it.lon + it.half_deg, it.lat + it.half_deg
    end = it.start + dt.timedelta(seconds=25)
    iso = "%Y-%m-%dT%H:%M:%SZ"
    mid = it.start + dt.timedelta(seconds=12)
    return {
        "type": "Feature", "stac_version": "1.0.0", "id": it.id,
        "stac_extensions": ["https://stac-extensions.github.io/sar/v1.0.0/schema.json"],
        "geometry": {"type": "Polygon", "coordinates": [[[w, s], [e, s], [e, n], [w, n], [w, s]]]},
        "bbox": [w, s, e, n],
        "properties": {
            "datetime": mid.strftime(iso), "start_datetime": it.start.strftime(iso), "end_datetime": end.strftime(iso),
            "platform": f"capella-{it.platform[1:]}", "constellation": "capella", "instruments": ["capella-radar"],
            "sar:product_type": it.product, "sar:polarizations": [it.pol], "sar:frequency_band": "X",
            "sar:instrument_mode": {"SP": "spotlight", "SM": "stripmap", "SS": "sliding_spotlight"}[it.mode],
            "sar:center_frequency": 9.65, "sar:observation_direction": "right", "sar:looks_range": 1,
            "sar:looks_azimuth": 1, "sar:resolution_range": 0.5, "sar:resolution_azimuth": 0.5,
            "view:incidence_angle": 35.0, "view:look_angle": 31.0, "proj:epsg": 32635,
        },
        "links": [{"rel": "root", "href": "../" * depth + "catalog.json"},
                  {"rel": "parent", "href": "../catalog.json"}],
        "assets": {
            it.pol: {"href": f"./{it.id}.tif", "type": "image/tiff; application=geotiff", "roles": ["data"]},
            "metadata": {"href": f"./{it.id}_extended.json", "type": "application/json", "roles": ["metadata"]},
            "preview": {"href": f"./{it.id}_preview.png", "type": "image/png", "roles": ["overview"]},
            "thumbnail": {"href": f"./{it.id}_thumb.png", "type": "image/png", "roles": ["thumbnail"]},
        },
    }


def build_catalog(root: Path, items: list[SynthItem], use_case: list[str] | None = None,
                  use_case_copies: list[str] | None = None) -> Path:
    """Write a Capella-layout static catalog under ``root``; returns the root catalog path.

    by-datetime holds the item files (links without titles, as Capella's day catalogs);
    by-product-type links the same files with the id as title; by-use-case ('urban') links the
    ids in ``use_case`` and, for ids in ``use_case_copies``, a separate copy of the item file.
    """
    root.mkdir(parents=True, exist_ok=True)
    by_day: dict[str, list[SynthItem]] = {}
    for it in items:
        path = root / it.item_path
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(_item_doc(it, 6)))
        by_day.setdefault(it.day_path, []).append(it)
    months: dict[str, set[str]] = {}
    for day, its in sorted(by_day.items()):
        name = day.rsplit("/", 1)[1]
        links = [{"rel": "item", "href": f"./{i.id}/{i.id}.json", "type": "application/geo+json"}
                 for i in sorted(its, key=lambda i: i.id)]
        (root / day / "catalog.json").write_text(json.dumps(_catalog(name, name.replace("-", " "), links, 4)))
        months.setdefault(day.rsplit("/", 1)[0], set()).add(name)
    years: dict[str, set[str]] = {}
    for month, days in sorted(months.items()):
        links = [{"rel": "child", "href": f"./{d}/catalog.json"} for d in sorted(days)]
        name = month.rsplit("/", 1)[1]
        (root / month / "catalog.json").write_text(json.dumps(_catalog(name, name, links, 3)))
        years.setdefault(month.rsplit("/", 1)[0], set()).add(name)
    for year, ms in sorted(years.items()):
        links = [{"rel": "child", "href": f"./{m}/catalog.json"} for m in sorted(ms)]
        name = year.rsplit("/", 1)[1]
        (root / year / "catalog.json").write_text(json.dumps(_catalog(name, name, links, 2)))
    dt_dir = root / "capella-open-data-by-datetime"
    dt_dir.joinpath("catalog.json").write_text(json.dumps(_catalog(
        "capella-open-data-by-datetime", "Capella Open Data by datetime",
        [{"rel": "child", "href": f"./{y.rsplit('/', 1)[1]}/catalog.json"} for y in sorted(years)], 1)))
    # by product type: the same item files, titled
    pt_dir = root / "capella-open-data-by-product-type"
    products = sorted({i.product for i in items})
    for p in products:
        links = [{"rel": "item", "href": f"../../{i.item_path}", "title": i.id, "type": "application/geo+json"}
                 for i in sorted(items, key=lambda i: i.id) if i.product == p]
        (pt_dir / f"capella-open-data-{p.lower()}").mkdir(parents=True, exist_ok=True)
        (pt_dir / f"capella-open-data-{p.lower()}" / "catalog.json").write_text(
            json.dumps(_catalog(f"capella-open-data-{p.lower()}", f"Capella Open Data {p}", links, 2)))
    pt_dir.joinpath("catalog.json").write_text(json.dumps(_catalog(
        "capella-open-data-by-product-type", "Capella Open Data by product type",
        [{"rel": "child", "href": f"./capella-open-data-{p.lower()}/catalog.json"} for p in products], 1)))
    children = ["capella-open-data-by-datetime", "capella-open-data-by-product-type"]
    if use_case or use_case_copies:
        uc_dir = root / "capella-open-data-by-use-case" / "capella-open-data-urban"
        uc_dir.mkdir(parents=True, exist_ok=True)
        by_id = {i.id: i for i in items}
        links = [{"rel": "item", "href": f"../../{by_id[i].item_path}", "title": i} for i in use_case or []]
        for i in use_case_copies or []:
            (uc_dir / i).mkdir(exist_ok=True)
            (uc_dir / i / f"{i}.json").write_text(json.dumps(_item_doc(by_id[i], 3)))
            links.append({"rel": "item", "href": f"./{i}/{i}.json", "title": i})
        uc_dir.joinpath("catalog.json").write_text(json.dumps(_catalog("capella-open-data-urban", "urban", links, 2)))
        uc_dir.parent.joinpath("catalog.json").write_text(json.dumps(_catalog(
            "capella-open-data-by-use-case", "Capella Open Data by use case",
            [{"rel": "child", "href": "./capella-open-data-urban/catalog.json"}], 1)))
        children.append("capella-open-data-by-use-case")
    root.joinpath("catalog.json").write_text(json.dumps({
        "type": "Catalog", "stac_version": "1.0.0", "id": "capella-open-data", "description": "synthetic",
        "links": [{"rel": "child", "href": f"./{c}/catalog.json", "title": c} for c in children]}))
    return root / "catalog.json"


def synthetic_items(n: int, seed: int = 0, years: tuple[int, ...] = (2021, 2022, 2023, 2024),
                    hot: tuple[float, float] = (24.945, 60.17), hot_share: float = 0.01) -> list[SynthItem]:
    """``n`` collects spread over ``years`` and the globe; ``hot_share`` of them cover ``hot``."""
    rng = random.Random(seed)
    out: list[SynthItem] = []
    t0 = dt.datetime(min(years), 1, 1, tzinfo=dt.timezone.utc)
    span_s = int((dt.datetime(max(years) + 1, 1, 1, tzinfo=dt.timezone.utc) - t0).total_seconds())
    for k in range(n):
        start = t0 + dt.timedelta(seconds=rng.randrange(span_s))
        if k == 0:  # at least one match for a region at ``hot``
            out.append(SynthItem("C14", "SP", "GEO", "HH", start, hot[0], hot[1]))
            continue
        if rng.random() < hot_share:
            lon, lat = hot[0] + rng.uniform(-0.005, 0.005), hot[1] + rng.uniform(-0.005, 0.005)
        else:
            lon, lat = rng.uniform(-170, 170), rng.uniform(-60, 70)
        out.append(SynthItem(f"C{rng.randint(2, 15):02d}", rng.choice(["SP", "SP", "SM", "SS"]),
                             rng.choice(["GEO", "GEO", "GEC", "SLC"]), rng.choice(["HH", "HH", "VV"]), start, lon, lat))
    return out


# --------------------------------------------------------------------------- benchmark


def _region(tmp: Path, name: str, stac: str, centre: tuple[float, float], **sar):
    import yaml

    from pipeline.regions import load_region

    (tmp / "regions").mkdir(exist_ok=True)
    lon, lat = centre
    doc = {"name": name, "aoi": {"bbox": [lon - 0.001, lat - 0.0005, lon + 0.001, lat + 0.0005]}, "gsd_m": 1.0,
           "sar": {"stac": stac, "product": "GEO", "polarization": "HH", **sar},
           "eo": {"tiles": "tiles/{z}/{x}/{y}.png", "datetime": "2024-06-01"}, "osm": {"overpass": True}}
    (tmp / "regions" / f"{name}.yaml").write_text(yaml.safe_dump(doc))
    return load_region(tmp / "regions" / f"{name}.yaml", root=tmp)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--items", type=int, default=3000)
    ap.add_argument("--latency-ms", type=float, default=30.0)
    ap.add_argument("--workers", type=int, default=16)
    ap.add_argument("--no-reference", action="store_true", help="skip the slow all-hierarchies sequential walk")
    args = ap.parse_args()
    sys.path[:0] = [str(ROOT), str(ROOT / "tests")]
    from servers import serve_directory

    from pipeline.fetch.cache import Cache
    from pipeline.fetch.params import FetchParams
    from pipeline.fetch.sar import find_sar_items, region_sources
    from pipeline.fetch.stacio import Transport

    items = synthetic_items(args.items)
    hot2 = next(i for i in items if i.product == "GEO" and i.pol == "HH" and abs(i.lat - 60.17) > 1)
    with tempfile.TemporaryDirectory(prefix="bench_catalog_") as tmpd:
        tmp = Path(tmpd)
        build_catalog(tmp / "capella", items, use_case=[i.id for i in items[: len(items) // 10]])
        n_docs = sum(1 for _ in (tmp / "capella").rglob("*.json"))
        print(f"catalog: {args.items} items, {n_docs} JSON documents; latency {args.latency_ms:.0f} ms per request; "
              f"{args.workers} workers for the parallel walks")
        print(f"the walk before this change read every document in turn: >= {n_docs} x {args.latency_ms:.0f} ms "
              f"= {n_docs * args.latency_ms / 1000:.0f} s")
        requests: list[str] = []
        with serve_directory(tmp, latency_s=args.latency_ms / 1000, requests=requests) as base:
            stac = f"{base}/capella/catalog.json"
            t = items[0].start  # the month of a collect covering the AOI
            last = (t.replace(day=28) + dt.timedelta(days=4)).replace(day=1) - dt.timedelta(days=1)
            month = f"{t:%Y-%m}-01/{last:%Y-%m-%d}"
            runs = [
                ("sequential, no date filter", 1, {}, (24.945, 60.17), 0, "auto"),
                ("parallel, no date filter", args.workers, {}, (24.945, 60.17), 0, "auto"),
                ("sequential, date filter (1 month)", 1, {"datetime": month}, (24.945, 60.17), 0, "auto"),
                ("parallel, date filter (1 month)", args.workers, {"datetime": month}, (24.945, 60.17), 0, "auto"),
                ("parallel, cold walk cache", args.workers, {}, (24.945, 60.17), 24, "auto"),
                ("parallel, 2nd region, walk cache", args.workers, {}, (hot2.lon, hot2.lat), 24, "auto"),
            ]
            if not args.no_reference:
                runs.append(("reference: sequential, all hierarchies", 1, {}, (24.945, 60.17), 0, "all"))
            print(f"{'run':42s} {'wall s':>8s} {'requests':>9s} {'catalogs':>9s} {'items':>6s} "
                  f"{'pruned':>7s} {'scenes':>7s} {'items/s':>9s} {'cat.items/s':>12s}")
            results = {}
            for name, workers, sar, centre, ttl, hier in runs:
                region = _region(tmp, "bench", stac, centre, **sar)
                p = FetchParams(retries=1, backoff_s=0.05, walk_workers=workers, catalog_cache_ttl_h=ttl,
                                walk_hierarchy=hier)
                cache = Cache(tmp / "cache", Transport.from_params(p))
                requests.clear()
                t = time.perf_counter()
                found, _ = find_sar_items(region, region_sources(region)[0], cache, p)
                wall = time.perf_counter() - t
                pruned = sum(found.pruned.values())
                results[name] = ([c.facts.id for c in found.candidates], found.read, found.catalogs, found.pruned)
                print(f"{name:42s} {wall:8.2f} {len(requests):9d} {found.catalogs:9d} {found.read:6d} {pruned:7d} "
                      f"{len(found.candidates):7d} {found.read / wall:9.0f} {args.items / wall:12.0f}")
            same = results["sequential, no date filter"] == results["parallel, no date filter"] and \
                results["sequential, date filter (1 month)"] == results["parallel, date filter (1 month)"]
            print(f"parallel results identical to sequential: {same}")
            print("scenes: matching items (every one is a scene of the region); items/s: items read per second; "
                  "cat.items/s: catalog size / wall time (what a region 'costs')")


if __name__ == "__main__":
    main()
