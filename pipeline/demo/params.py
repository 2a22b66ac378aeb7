"""The ``demo`` section of params.yaml: scene settings, the demo regions and their SAR scenes.

A leaf module (no demo imports) so every demo module can share :class:`DemoError`.
``regions`` is merged by name: a region of params.yaml gives only the keys it changes, the
rest come from the built-in region of the same name (:data:`REGIONS`); a new region gives all.
A region's ``scenes`` is merged by item id: a params.yaml region that lists ``scenes`` builds
exactly those, in that order; each entry names its ``item_id`` and gives only the keys it
changes from the built-in scene of that id; a scene with a new id gives every required key.
"""

from __future__ import annotations

import dataclasses
import re
from dataclasses import dataclass
from typing import Any, ClassVar, Literal

from pipeline.params import param

PROCEDURAL = "procedural"  # DemoRegion.osm: generate a rural OSM file instead of reading one
UMBRA_COLLECT = re.compile(r"^\d{4}-\d{2}-\d{2}-\d{2}-\d{2}-\d{2}_UMBRA-\d{2}$")


class DemoError(ValueError):
    """Demo parameters that cannot be built; the message names the region and the field."""


class _Unset:
    """A key params.yaml did not give: taken from the built-in region or scene of that name."""

    def __repr__(self) -> str:
        return "<unset>"


UNSET: Any = _Unset()


@dataclass(frozen=True)
class Offset:
    """A map offset in metres."""

    east: float
    north: float


def _given(obj: Any) -> dict[str, Any]:
    return {f.name: getattr(obj, f.name) for f in dataclasses.fields(obj) if getattr(obj, f.name) is not UNSET}


def _optional(default: Any, doc: str) -> Any:
    """A scene key that may be left out: UNSET until :meth:`DemoScene.complete` puts ``default`` in.

    (A plain default would count as given and override the built-in scene's value when merging.)
    """
    return dataclasses.field(default=UNSET, metadata={"doc": f"{doc} (default {default!r})", "default": default})


@dataclass(frozen=True)
class DemoScene:
    """One simulated SAR acquisition over a demo region: its product, date, geometry and error.

    Capella scenes are GEO products (UInt16, calibrated through ``scale_factor``) in the
    Capella-layout catalog; Umbra scenes are GEC display products (uint8, no calibration
    constant, geotransform rotated with the collect) in the Umbra-layout catalog. The scene's
    date, platform, mode and polarisation come from its Capella id or its Umbra collect name.
    Every key is UNSET until merged over the built-in scene of the same id; the optional ones
    then get their documented default (:meth:`complete`).
    """

    item_id: str = param(UNSET, "Capella: CAPELLA_C{NN}_{SP|SM|SS}_GEO_{HH|VV}_{start}_{end} (platform, mode, "
                                "polarisation, times); Umbra: the STAC item id (a UUID)")
    offset_m: Offset = param(UNSET, "geolocation error injected into the product (the co-registration truth)")
    scale_factor: float = param(UNSET, "DN scale, sigma0 = (scale_factor * DN)^2; Capella publishes it, Umbra's "
                                       "uint8 display scale is not published (uncalibrated)")
    range_azimuth_deg: float = param(UNSET, "ground-range direction (away from the sensor), clockwise from north")
    orbit_state: Literal["ascending", "descending"] = param(UNSET, "pass direction")
    incidence_deg: float = param(UNSET, "incidence angle at the scene centre")
    footprint_rotation_deg: float = param(UNSET, "Capella: rotation of the footprint in the north-up UTM grid (not "
                                                 "near 45); Umbra: rotation of the image grid itself (geotransform)")
    provider: Literal["capella", "umbra"] = _optional("capella", "product and catalog layout to mimic")
    shift: tuple[float, float] = _optional((0.0, 0.0), "scene centre minus the region's SAR grid (AOI + margin_m) "
                                                       "centre, as shares of that grid's width and height (east, "
                                                       "north)")
    size: float = _optional(1.0, "scene grid width and height as shares of the region's SAR grid; with shift, < 1 "
                                 "makes a scene cover part of the AOI")
    pixel_m: float | None = _optional(None, "pixel spacing; null = demo.sar_pixel_m")
    padded_dates: bool = _optional(True, "Capella catalog folder names 2025-05-14 (true, newer vintages) or "
                                         "2024-7-9 (false, older)")
    collect: str = _optional("", "Umbra: the collect name YYYY-MM-DD-HH-MM-SS_UMBRA-NN (start time, satellite; "
                                 "names the asset files)")
    polarization: str = _optional("", "Umbra: HH or VV (a Capella id carries its own)")
    task: str = _optional("", "Umbra: the task (site) folder under sar-data/tasks/, spaces and commas as in Umbra's")

    def __post_init__(self) -> None:
        if self.scale_factor is not UNSET and not self.scale_factor > 0:
            raise ValueError(f"scale_factor: must be > 0, got {self.scale_factor}")
        if self.incidence_deg is not UNSET and not 0 < self.incidence_deg < 90:
            raise ValueError(f"incidence_deg: must be in (0, 90), got {self.incidence_deg}")
        if self.size is not UNSET and not 0 < self.size <= 1.5:
            raise ValueError(f"size: must be in (0, 1.5], got {self.size}")
        if self.shift is not UNSET and not all(abs(v) < 1 for v in self.shift):
            raise ValueError(f"shift: {list(self.shift)}; shares of the region grid, each in (-1, 1)")
        if self.pixel_m not in (UNSET, None) and not self.pixel_m > 0:
            raise ValueError(f"pixel_m: must be > 0, got {self.pixel_m}")

    def missing(self) -> list[str]:
        """Required keys still UNSET (optional ones are not required)."""
        return [f.name for f in dataclasses.fields(self)
                if getattr(self, f.name) is UNSET and "default" not in f.metadata]

    def over(self, base: DemoScene | None) -> DemoScene:
        """This scene's given keys over ``base`` (the built-in scene of the same id, if any)."""
        return self if base is None else dataclasses.replace(base, **_given(self))

    def complete(self) -> DemoScene:
        """The optional keys still UNSET set to their defaults, then the provider's keys checked."""
        s = dataclasses.replace(self, **{f.name: f.metadata["default"] for f in dataclasses.fields(self)
                                         if getattr(self, f.name) is UNSET and "default" in f.metadata})
        if s.provider == "umbra":
            if not UMBRA_COLLECT.match(s.collect):
                raise DemoError(f"collect: {s.collect!r}; an Umbra scene needs YYYY-MM-DD-HH-MM-SS_UMBRA-NN")
            if s.polarization not in ("HH", "VV"):
                raise DemoError(f"polarization: {s.polarization!r}; an Umbra scene needs HH or VV")
            if not s.task.strip() or "/" in s.task:
                raise DemoError(f"task: {s.task!r}; an Umbra scene needs a task folder name without '/'")
        elif s.collect or s.task or s.polarization:
            raise DemoError("collect, polarization, task are Umbra keys; a Capella scene's item_id carries them")
        return s


@dataclass(frozen=True)
class DemoRegion:
    """One demo region: its OSM, AOI, EO look and the simulated SAR scenes over it.

    Keys left :data:`UNSET` are filled from the built-in region of the same name
    (:class:`DemoParams` does that); a built region has every key.
    """

    osm: str = param(UNSET, f"OSM file in pipeline/demo_data/ (or an absolute path), or {PROCEDURAL!r}")
    bbox: tuple[float, float, float, float] = param(UNSET, "AOI (west, south, east, north), degrees")
    building_height_m: float = param(UNSET, "building height for layover, radar and sun shadows")
    timezone: str = param(UNSET, "collect.local_timezone of the Capella extended metadata")
    scenes: tuple[DemoScene, ...] = param(UNSET, "the SAR scenes, in order (the first is the region's entry of "
                                                 "truth.json); merged by item_id over the built-in scenes")

    def __post_init__(self) -> None:
        if self.bbox is not UNSET:
            w, s, e, n = self.bbox
            if not (e > w and n > s):
                raise ValueError(f"bbox: {list(self.bbox)} is empty; expected [west, south, east, north]")
        if self.scenes is not UNSET:
            if not self.scenes:
                raise ValueError("scenes: a region needs at least one scene")
            ids = [s.item_id for s in self.scenes]
            if UNSET in ids:
                raise ValueError("scenes: every scene needs its item_id")
            dup = sorted({i for i in ids if ids.count(i) > 1})
            if dup:
                raise ValueError(f"scenes: item_id {', '.join(dup)} given twice")

    def missing(self) -> list[str]:
        out = [f.name for f in dataclasses.fields(self) if getattr(self, f.name) is UNSET]
        if self.scenes is not UNSET:
            out += [f"scenes[{i}] ({s.item_id}) keys {', '.join(s.missing())}" for i, s in enumerate(self.scenes)
                    if s.missing()]
        return out

    def over(self, base: DemoRegion | None) -> DemoRegion:
        """This region's given keys over ``base`` (the built-in region of the same name, if any)."""
        if base is None:
            return self
        given = _given(self)
        if "scenes" in given and base.scenes is not UNSET:
            known = {s.item_id: s for s in base.scenes}
            given["scenes"] = tuple(s.over(known.get(s.item_id)) for s in self.scenes)
        return dataclasses.replace(base, **given)


HELSINKI_HH = "CAPELLA_C14_SP_GEO_HH_20240709040329_20240709040358"
REGIONS: dict[str, DemoRegion] = {
    "helsinki": DemoRegion(
        osm="Helsinki.osm.pbf",
        bbox=(24.937, 60.166, 24.951, 60.177),
        building_height_m=15.0,
        timezone="Europe/Helsinki",
        scenes=(
            DemoScene(  # the original demo scene: covers the whole AOI
                item_id=HELSINKI_HH,
                padded_dates=False,  # 2024-7-9 folder names, as in older Capella vintages
                offset_m=Offset(east=3.7, north=-2.4),
                scale_factor=1.5e-4,
                range_azimuth_deg=260.0,  # ascending pass, left-looking -> looks west
                orbit_state="ascending",
                incidence_deg=38.2,
                footprint_rotation_deg=6.0,
            ),
            DemoScene(  # a later HH pass from the other side, over the north-east of the AOI
                item_id="CAPELLA_C15_SP_GEO_HH_20250814162207_20250814162233",
                offset_m=Offset(east=-1.9, north=3.3),
                scale_factor=1.8e-4,
                range_azimuth_deg=98.0,  # descending, left-looking -> looks east
                orbit_state="descending",
                incidence_deg=44.5,
                footprint_rotation_deg=-11.0,
                shift=(0.17, 0.25),
                size=0.7,
            ),
            DemoScene(  # a VV sliding spotlight of an older vintage, over the south-west
                item_id="CAPELLA_C11_SS_GEO_VV_20230630071455_20230630071522",
                padded_dates=False,
                offset_m=Offset(east=2.2, north=1.7),
                scale_factor=1.1e-4,
                range_azimuth_deg=256.0,
                orbit_state="ascending",
                incidence_deg=31.0,
                footprint_rotation_deg=14.0,
                shift=(-0.17, -0.225),
                size=0.75,
            ),
            DemoScene(  # an Umbra GEC (uint8 display product, VV), grid rotated with the collect
                item_id="5f1d2b3e-8c4a-4f6e-9b0d-7a2c1e4f6d80",
                provider="umbra",
                collect="2023-01-19-09-58-41_UMBRA-05",
                polarization="VV",
                task="Helsinki South Harbour, Finland",
                offset_m=Offset(east=-3.1, north=-1.2),
                scale_factor=6.25e-3,  # 0 dB -> DN 160; bright double bounce saturates at 255
                range_azimuth_deg=75.0,
                orbit_state="descending",
                incidence_deg=41.0,
                footprint_rotation_deg=25.0,
                shift=(0.09, -0.2),
                size=0.65,
                pixel_m=0.6,
            ),
        ),
    ),
    "uppland": DemoRegion(
        osm=PROCEDURAL,
        bbox=(17.585, 59.905, 17.603, 59.914),
        building_height_m=7.0,
        timezone="Europe/Stockholm",
        scenes=(
            DemoScene(
                item_id="CAPELLA_C13_SP_GEO_HH_20250514171208_20250514171231",
                padded_dates=True,  # 2025-05-14 folder names, as in newer vintages
                offset_m=Offset(east=-2.9, north=4.1),
                scale_factor=1.2e-4,
                range_azimuth_deg=100.0,  # descending pass, left-looking -> looks east
                orbit_state="descending",
                incidence_deg=33.5,
                footprint_rotation_deg=-8.0,
            ),
        ),
    ),
}


@dataclass(frozen=True)
class DemoParams:
    """How the offline demo regions are simulated."""

    section: ClassVar[str] = "demo"
    seed: int = param(20240709, "seeds every random generator: same params, byte-identical demo")
    sar_pixel_m: float = param(0.5, "simulated Capella GEO pixel spacing (UTM metres); a scene may set its own")
    eo_gsd_m: float = param(0.3, "EO tiles: the smallest zoom at least this fine at the region's latitude")
    margin_m: float = param(40.0, "the SAR grid reaches this far beyond the AOI (the footprint corners eat some)")
    looks: float = param(4.0, "speckle: gamma-distributed intensity with this many looks")
    max_pixels: int = param(40_000_000, "largest SAR or EO grid of a scene (the demo keeps a scene in memory)")
    workers: int = param(2, "rasterisation threads")
    only: tuple[str, ...] | None = param(None, "names of the regions to build; null = all")
    regions: dict[str, DemoRegion] = param(REGIONS, "demo regions by name, each merged key by key over the "
                                                    "built-in region of that name (scenes by item_id)")

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
            scenes = []
            for i, sc in enumerate(r.scenes):
                try:
                    scenes.append(sc.complete())
                except DemoError as exc:
                    raise DemoError(f"regions.{name}.scenes[{i}] ({sc.item_id}).{exc}") from None
            merged[name] = dataclasses.replace(r, scenes=tuple(scenes))
        object.__setattr__(self, "regions", merged)
        unknown = sorted(set(self.only or ()) - set(merged))
        if unknown:
            raise DemoError(f"only: unknown region(s) {', '.join(unknown)}; known: {', '.join(merged)}")
        ids = [s.item_id for r in merged.values() for s in r.scenes]
        dup = sorted({i for i in ids if ids.count(i) > 1})
        if dup:
            raise DemoError(f"regions: item_id {', '.join(dup)} is used by more than one region")

    @property
    def selected(self) -> dict[str, DemoRegion]:
        """The regions to build (``only``, else all), by name in sorted order."""
        return {k: r for k, r in self.regions.items() if self.only is None or k in self.only}
