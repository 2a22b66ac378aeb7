"""The ``fetch`` section of params.yaml: transport, cache, catalog walk and EO tiles.

A leaf module (no fetch imports) so every fetch module can take :class:`FetchParams`.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import ClassVar

from pipeline.params import param

HIERARCHY_NAME = re.compile(r"[a-z0-9-]+")


@dataclass(frozen=True)
class FetchParams:
    """How the fetch stage reaches, caches and walks remote data."""

    section: ClassVar[str] = "fetch"
    retries: int = param(3, "extra attempts after the first, per request")
    backoff_s: float = param(0.5, "first retry delay in seconds; doubles each time")
    timeout_s: float = param(30.0, "connect/read timeout per request, seconds")
    cache_dir: str = param(".cache/sareo", "download cache, relative to the project root (resolved by the caller)")
    s3_endpoint: str | None = param(None, "S3 endpoint, e.g. http://127.0.0.1:5000; null: $SAREO_S3_ENDPOINT, "
                                          "else $AWS_ENDPOINT_URL, else AWS")
    s3_region: str = param("us-west-2", "S3 region of the buckets")
    tile_zoom_factor: float = param(1.0, "EO tiles: smallest zoom whose ground resolution <= gsd_m * factor")
    max_zoom: int = param(22, "EO tiles: highest zoom ever used")
    tile_size: int = param(256, "EO tiles: pixels per tile side")
    workers: int = param(4, "concurrent tile downloads")
    max_candidates: int = param(10, "ranked SAR candidates recorded in provenance.json")
    max_api_items: int = param(500, "items asked from a STAC API search (static catalogs are walked fully)")
    walk_workers: int = param(16, "concurrent JSON reads while walking a static catalog (1 = sequential)")
    catalog_cache_ttl_h: float = param(24.0, "walk cache of remote static catalogs, reused across regions; 0 = off")
    walk_hierarchy: str = param("auto", "which parallel hierarchy to walk: auto | all | a kind such as "
                                        "datetime or product-type (the catalog decides which exist)")

    def __post_init__(self) -> None:
        at_least = {"retries": 0, "backoff_s": 0, "max_zoom": 0, "max_candidates": 0, "catalog_cache_ttl_h": 0,
                    "tile_size": 1, "workers": 1, "max_api_items": 1, "walk_workers": 1}
        for name, low in at_least.items():
            if not getattr(self, name) >= low:  # 'not >=' also refuses NaN
                raise ValueError(f"{name}: must be >= {low}, got {getattr(self, name)}")
        for name in ("timeout_s", "tile_zoom_factor"):
            if not getattr(self, name) > 0:
                raise ValueError(f"{name}: must be > 0, got {getattr(self, name)}")
        for name in ("cache_dir", "s3_region"):
            if not getattr(self, name):
                raise ValueError(f"{name}: must not be empty")
        if not HIERARCHY_NAME.fullmatch(self.walk_hierarchy):
            raise ValueError(f"walk_hierarchy: expected auto, all or a lower-case hierarchy kind such as "
                             f"'datetime', got {self.walk_hierarchy!r}")
