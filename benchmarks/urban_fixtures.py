"""Urban/rural verdicts for the real OSM fixture extracts, with every share behind them.

    python benchmarks/urban_fixtures.py

Reads tests/data/osm (Helsinki PBF, West Oakland XML) through the pipeline's own reader,
legend, sea and urban rule, with the AOI = the extract's declared bounds.
"""

from __future__ import annotations

import json
from pathlib import Path

from shapely.geometry import box

from pipeline.labels.classify import classify_tags, sea_features
from pipeline.labels.urban import urban_rural
from pipeline.osm import declared_bounds, read_osm

FIXTURES = Path(__file__).resolve().parent.parent / "tests" / "data" / "osm"
KEYS = ("class", "basis", "residential_share", "nonres_share", "landuse_coverage", "fallback_used",
        "building_share", "road_density_km_per_km2", "sea_share", "land_area_km2")

for name in ("Helsinki.osm.pbf", "West-Oakland.osm.bz2"):
    path = FIXTURES / name
    bounds = declared_bounds(path)
    feats = read_osm(path, bounds)
    sea, _ = sea_features(feats)
    verdict = urban_rural(classify_tags(feats), box(*bounds), sea=sea)
    print(name, json.dumps({k: verdict.get(k) for k in KEYS}, indent=1))
