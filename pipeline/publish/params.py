"""The ``publish`` section of params.yaml: what the collection is called and how statistics are binned."""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import ClassVar

from pipeline.params import param
from pipeline.provenance import OSM, SOURCES, licence_link
from pipeline.splits import SPLITS


@dataclass(frozen=True)
class LicenseLink:
    """One ``rel=license`` link of the collection."""

    href: str  # the licence's URL
    title: str | None = param(None, "'<SPDX id>: <what it covers>'")


@dataclass(frozen=True)
class PublishParams:
    """The STAC collection's identity and licences, the split names and the statistics' bins."""

    section: ClassVar[str] = "publish"
    id: str = param("sareo", "STAC collection id (letters, digits, '-', '_' or '.')")
    title: str = param("sareo: co-registered SAR/EO patches with OpenStreetMap land-cover labels",
                       "STAC collection title")  # fmt: skip
    description: str = param(
        "256x256 patches of SAR backscatter (sigma0 dB) and optical RGB on a common EPSG:4326 grid, "
        "automatically co-registered, with 25-class land-cover labels rasterised from OpenStreetMap. "
        "Train/val/test splits by ground (a lattice of blocks fixed on the globe), audited across the whole dataset.",
        "STAC collection description",
    )
    version: str = param("0.1.0", "dataset version (collection 'version', stats.json)")
    license: str = param("other", "STAC licence keyword; 'other' (STAC 1.1) for several, named by license_links")
    license_links: tuple[LicenseLink, ...] = param(
        (
            LicenseLink(**licence_link(SOURCES["capella"], "SAR imagery (Capella, Umbra)")),
            LicenseLink(**licence_link(OSM, "labels from OpenStreetMap")),
        ),
        "rel=license links of the collection: {href, title}",
    )
    keywords: tuple[str, ...] = param(
        ("SAR", "optical", "land cover", "OpenStreetMap", "co-registration", "machine learning"),
        "STAC collection keywords",
    )
    splits: tuple[str, ...] = param(SPLITS, "allowed split values, in this order")
    gap_bins_days: tuple[float, ...] = param(
        (0.0, 30.0, 91.0, 182.0, 365.0, 730.0, 1095.0, 1461.0, 1826.0),
        "left edges of the SAR/EO time-gap histogram in days; the last bin is open-ended",
    )
    plot_dpi: int = param(100, "resolution of the PNG plots")
    browser_samples: int = param(24, "patches per region whose SAR/EO/label images index.html embeds (0 = none)")
    browser_thumb_px: int = param(128, "edge of those embedded images, pixels (patches are decimated to it)")
    browser_background_px: int = param(720, "longest edge of each region's optical background in index.html")

    def __post_init__(self) -> None:
        if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9_.-]*", self.id):
            raise ValueError(f"id: {self.id!r} must be letters, digits, '-', '_' or '.'")
        if not self.splits:
            raise ValueError("splits: must name at least one split")
        edges = list(self.gap_bins_days)
        if not edges or edges != sorted(edges) or len(set(edges)) != len(edges):
            raise ValueError(f"gap_bins_days: {edges} must be a non-empty, strictly increasing list")
        if self.plot_dpi <= 0:
            raise ValueError(f"plot_dpi: must be > 0, got {self.plot_dpi}")
        if self.browser_samples < 0:
            raise ValueError(f"browser_samples: must be >= 0, got {self.browser_samples}")
        if self.browser_thumb_px < 8 or self.browser_background_px < 8:
            raise ValueError("browser_thumb_px and browser_background_px: must be >= 8 pixels")
