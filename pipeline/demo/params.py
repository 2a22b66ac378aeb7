"""The ``demo`` section of params.yaml: scene settings and the demo regions.

A leaf module (no demo imports) so every demo module can share :class:`DemoError`.
``regions`` is merged by name: a region of params.yaml gives only the keys it changes, the
rest come from the built-in region of the same name (:data:`REGIONS`); a new region gives all.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any, ClassVar, Literal

from pipeline.params import param

PROCEDURAL = "procedural"  # DemoRegion.osm: generate a rural OSM file instead of reading one


class DemoError(ValueError):
    """Demo parameters that cannot be built; the message names the region and the field."""


class _Unset:
    """A region key params.yaml did not give: taken from the built-in region of that name."""

    def __repr__(self) -> str:
        return "<unset>"


UNSET: Any = _Unset()


@dataclass(frozen=True)
class Offset:
    """A map offset in metres."""

    east: float
    north: float


@dataclass(frozen=True)
class DemoRegion:
    """One demo region: its OSM, AOI and the simulated Capella collect over it.

    Keys left :data:`UNSET` are filled from the built-in region of the same name
    (:class:`DemoParams` does that); a built region has every key.
    """

    osm: str = param(UNSET, f"OSM file in pipeline/demo_data/ (or an absolute path), or {PROCEDURAL!r}")
    bbox: tuple[float, float, float, float] = param(UNSET, "AOI (west, south, east, north), degrees")
    item_id: str = param(UNSET, "Capella item id CAPELLA_C{NN}_{mode}_GEO_HH_{start}_{end}: platform and times")
    padded_dates: bool = param(UNSET, "catalog folder names 2025-05-14 (true, newer vintages) or 2024-7-9 (false)")
    offset_m: Offset = param(UNSET, "geolocation error injected into the SAR product (the co-registration truth)")
    scale_factor: float = param(UNSET, "DN scale: sigma0 = (scale_factor * DN)^2")
    range_azimuth_deg: float = param(UNSET, "ground-range direction (away from the sensor), clockwise from north")
    orbit_state: Literal["ascending", "descending"] = param(UNSET, "pass direction")
    incidence_deg: float = param(UNSET, "incidence angle at the scene centre")
    footprint_rotation_deg: float = param(UNSET, "rotation of the product footprint in the UTM grid (not near 45)")
    building_height_m: float = param(UNSET, "building height for layover, radar and sun shadows")
    timezone: str = param(UNSET, "collect.local_timezone of the extended metadata")

    def __post_init__(self) -> None:
        if self.bbox is not UNSET:
            w, s, e, n = self.bbox
            if not (e > w and n > s):
                raise ValueError(f"bbox: {list(self.bbox)} is empty; expected [west, south, east, north]")
        if self.scale_factor is not UNSET and not self.scale_factor > 0:
            raise ValueError(f"scale_factor: must be > 0, got {self.scale_factor}")
        if self.incidence_deg is not UNSET and not 0 < self.incidence_deg < 90:
            raise ValueError(f"incidence_deg: must be in (0, 90), got {self.incidence_deg}")

    def missing(self) -> list[str]:
        return [f.name for f in dataclasses.fields(self) if getattr(self, f.name) is UNSET]

    def over(self, base: DemoRegion | None) -> DemoRegion:
        """This region's given keys over ``base`` (the built-in region of the same name, if any)."""
        if base is None:
            return self
        return dataclasses.replace(base, **{f.name: getattr(self, f.name) for f in dataclasses.fields(self)
                                            if getattr(self, f.name) is not UNSET})


REGIONS: dict[str, DemoRegion] = {
    "helsinki": DemoRegion(
        osm="Helsinki.osm.pbf",
        bbox=(24.937, 60.166, 24.951, 60.177),
        item_id="CAPELLA_C14_SP_GEO_HH_20240709040329_20240709040358",
        padded_dates=False,  # 2024-7-9 folder names, as in older Capella vintages
        offset_m=Offset(east=3.7, north=-2.4),
        scale_factor=1.5e-4,
        range_azimuth_deg=260.0,  # ascending pass, left-looking -> looks west
        orbit_state="ascending",
        incidence_deg=38.2,
        footprint_rotation_deg=6.0,
        building_height_m=15.0,
        timezone="Europe/Helsinki",
    ),
    "uppland": DemoRegion(
        osm=PROCEDURAL,
        bbox=(17.585, 59.905, 17.603, 59.914),
        item_id="CAPELLA_C13_SP_GEO_HH_20250514171208_20250514171231",
        padded_dates=True,  # 2025-05-14 folder names, as in newer vintages
        offset_m=Offset(east=-2.9, north=4.1),
        scale_factor=1.2e-4,
        range_azimuth_deg=100.0,  # descending pass, left-looking -> looks east
        orbit_state="descending",
        incidence_deg=33.5,
        footprint_rotation_deg=-8.0,
        building_height_m=7.0,
        timezone="Europe/Stockholm",
    ),
}


@dataclass(frozen=True)
class DemoParams:
    """How the offline demo regions are simulated."""

    section: ClassVar[str] = "demo"
    seed: int = param(20240709, "seeds every random generator: same params, byte-identical demo")
    sar_pixel_m: float = param(0.5, "simulated Capella GEO pixel spacing (UTM metres)")
    eo_gsd_m: float = param(0.3, "EO tiles: the smallest zoom at least this fine at the region's latitude")
    margin_m: float = param(40.0, "the SAR grid reaches this far beyond the AOI (the footprint corners eat some)")
    looks: float = param(4.0, "speckle: gamma-distributed intensity with this many looks")
    max_pixels: int = param(40_000_000, "largest SAR or EO grid of a region (the demo keeps a scene in memory)")
    workers: int = param(2, "rasterisation threads")
    only: tuple[str, ...] | None = param(None, "names of the regions to build; null = all")
    regions: dict[str, DemoRegion] = param(REGIONS, "demo regions by name, each merged key by key over the "
                                                    "built-in region of that name")

    def __post_init__(self) -> None:
        for name in ("sar_pixel_m", "eo_gsd_m", "looks"):
            if not getattr(self, name) > 0:  # 'not >' also refuses NaN
                raise ValueError(f"{name}: must be > 0, got {getattr(self, name)}")
        if not self.margin_m >= 0:
            raise ValueError(f"margin_m: must be >= 0, got {self.margin_m}")
        for name in ("max_pixels", "workers"):
            if not getattr(self, name) >= 1:
                raise ValueError(f"{name}: must be >= 1, got {getattr(self, name)}")
        merged: dict[str, DemoRegion] = {}
        for name in sorted({*REGIONS, *self.regions}):
            given, base = self.regions.get(name), REGIONS.get(name)
            r = given.over(base) if given is not None else base
            if r.missing():
                raise DemoError(f"regions.{name}: missing {', '.join(r.missing())}")
            merged[name] = r
        object.__setattr__(self, "regions", merged)
        unknown = sorted(set(self.only or ()) - set(merged))
        if unknown:
            raise DemoError(f"only: unknown region(s) {', '.join(unknown)}; known: {', '.join(merged)}")

    @property
    def selected(self) -> dict[str, DemoRegion]:
        """The regions to build (``only``, else all), by name in sorted order."""
        return {k: r for k, r in self.regions.items() if self.only is None or k in self.only}
