"""Time to label the Helsinki fixture extract at 0.5 m (target: a few seconds on 2 cores).

Run: python benchmarks/bench_labels.py [gsd_m]
Prints the time of each step (read, classify, rasterise) and of the whole stage
(label_region on a synthetic all-valid grid_dir, GeoTIFF/PNG writing included).
"""

from __future__ import annotations

import sys
import tempfile
import time
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import rasterio
from shapely.geometry import box

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from pipeline.grid import grid_for_bbox  # noqa: E402
from pipeline.atomic import write_json  # noqa: E402
from pipeline.fetch.cache import Cache  # noqa: E402
from pipeline.fetch.osm import fetch_osm  # noqa: E402
from pipeline.fetch.stacio import Transport  # noqa: E402
from pipeline.labels.classify import classify  # noqa: E402
from pipeline.labels.params import LabelsParams  # noqa: E402
from pipeline.labels.rasterize import rasterize_classes  # noqa: E402
from pipeline.labels.stage import label_region  # noqa: E402
from pipeline.legend import load_legend  # noqa: E402
from pipeline.layout import GridFiles, LabelFiles, SourceFiles  # noqa: E402
from pipeline.osm import OsmParams, read_osm  # noqa: E402

PBF = ROOT / "tests" / "data" / "osm" / "Helsinki.osm.pbf"
BBOX = (24.935, 60.164, 24.953, 60.179)


def main(gsd: float = 0.5) -> None:
    legend = load_legend()
    grid = grid_for_bbox(BBOX, gsd)
    print(f"Helsinki extract, grid {grid.width}x{grid.height} = {grid.width * grid.height / 1e6:.1f} Mpx at {gsd} m")
    t0 = time.perf_counter()
    feats = read_osm(PBF, None, legend.keys())
    t1 = time.perf_counter()
    classified = classify(feats, legend)
    t2 = time.perf_counter()
    for workers in (1, 2):
        t = time.perf_counter()
        arr = rasterize_classes(classified, grid.crs, grid.transform, grid.shape, workers=workers)
        print(f"  rasterise ({workers} thread(s)):   {time.perf_counter() - t:6.2f} s")
    print(f"  read_osm:                  {t1 - t0:6.2f} s  ({len(feats)} features, {feats.repaired} repaired, {feats.skipped} skipped)")
    print(f"  classify (+buffer lines):  {t2 - t1:6.2f} s  ({len(classified)} polygons)")
    print(f"  class 0 share {np.mean(arr == 0):.3f}, building share {np.mean(arr == 1):.3f}")

    with tempfile.TemporaryDirectory() as tmp:
        gdir = Path(tmp) / "grid"
        gdir.mkdir()
        (gdir / "grid.json").write_text(grid.to_json())
        prof = {"driver": "GTiff", "width": grid.width, "height": grid.height, "crs": grid.crs,
                "transform": grid.transform, "tiled": True, "blockxsize": 512, "blockysize": 512}
        with rasterio.open(gdir / "sar_db.tif", "w", count=1, dtype="float32", **prof) as dst:
            dst.write(np.zeros(grid.shape, np.float32), 1)
        with rasterio.open(gdir / "eo.tif", "w", count=4, dtype="uint8", **prof) as dst:
            dst.write(np.full((4, *grid.shape), 255, np.uint8))
        region = SimpleNamespace(name="helsinki", aoi=box(*BBOX), path=Path("bench.yaml"),
                                 osm={"file": str(PBF)}, resolve=lambda h: h)
        # the labels stage reads the OSM the fetch stage gathered into source/ (not timed: a hardlink)
        src = Path(tmp) / "source"
        src.mkdir()
        rec = fetch_osm(region, Cache(Path(tmp) / "cache", Transport()), OsmParams(), SourceFiles(src))
        write_json(src / "provenance.json", {"osm": rec})
        t = time.perf_counter()
        label_region(region, SourceFiles(src), GridFiles(gdir), LabelFiles(Path(tmp) / "labels"), LabelsParams(),
                     OsmParams())
        print(f"  label_region (whole stage, 2 threads): {time.perf_counter() - t:6.2f} s")


if __name__ == "__main__":
    main(float(sys.argv[1]) if len(sys.argv) > 1 else 0.5)
