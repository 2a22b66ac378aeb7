"""The ``labels`` section of params.yaml.

A leaf module (no labels imports) so classify, coast, urban and the stage all take
:class:`LabelsParams` without importing one another. How OSM is read (margin, Overpass)
is the ``osm`` section, :class:`pipeline.osm.OsmParams`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from pipeline.params import param


@dataclass(frozen=True)
class LabelsParams:
    """How OSM features become labels.tif, zones.tif and the urban/rural verdict."""

    section: ClassVar[str] = "labels"
    legend: str | None = param(None, "legend file; null = pipeline/legend.yaml")
    block_size: int = param(2048, "rasterise in blocks of this many pixels per side (best a multiple of tile_size)")
    tile_size: int = param(512, "GeoTIFF tile side of labels.tif and zones.tif")
    png_max_px: int = param(1600, "longest side of labels.png's map panel")
    residential_share: float = param(0.25, "urban if residential landuse covers at least this share of the land ...")
    nonres_share: float = param(0.05, "... or non-residential built-up landuse at least this share")
    coverage_threshold: float = param(0.5, "below this landuse coverage a 'rural' verdict falls back to:")
    fallback_building_share: float = param(0.10, "fallback: urban if building footprints cover this share, or")
    fallback_road_density_km_per_km2: float = param(10.0, "fallback: drivable roads of at least this km per km2")
    sea: bool = param(True, "close natural=coastline ways into sea polygons (needs a sea entry in the legend)")
    coast_snap_m: float = param(50.0, "coastline ends this close to the clip border are extended to it "
                                      "(extracts cut just inside their edge)")

    def __post_init__(self) -> None:
        for name in ("block_size", "tile_size", "png_max_px"):
            if not getattr(self, name) >= 1:
                raise ValueError(f"{name}: must be >= 1, got {getattr(self, name)}")
        if self.tile_size % 16:
            raise ValueError(f"tile_size: GeoTIFF tiles must be a multiple of 16, got {self.tile_size}")
        for name in ("residential_share", "nonres_share", "coverage_threshold", "fallback_building_share"):
            if not 0 <= getattr(self, name) <= 1:
                raise ValueError(f"{name}: a share must be in [0, 1], got {getattr(self, name)}")
        for name in ("fallback_road_density_km_per_km2", "coast_snap_m"):
            if not getattr(self, name) >= 0:  # 'not >=' also refuses NaN
                raise ValueError(f"{name}: must be >= 0, got {getattr(self, name)}")
