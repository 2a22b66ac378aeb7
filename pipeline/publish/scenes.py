"""The SAR scenes behind each region store, and what their product metadata says in STAC's words.

A scene is one SAR product (its STAC item id is the per-patch ``sar_item``). Today a store holds
one scene, described by its ``provenance`` attribute; a store may instead carry a ``scenes``
list (one entry per scene, each with the same keys as ``provenance``: ``sar``, ``registration``,
``sar_grid_tags`` and optionally the product ``metadata`` itself). Everything here reads only
those records (and the region's ``source/sar_metadata.json`` when it is given), never imagery.

:func:`product_fields` turns a product's metadata into STAC ``sar:``, ``sat:``, ``view:`` and
``processing:`` fields: a Capella ``*_extended.json``, or any STAC item (Umbra's, Capella's),
whose extension fields are taken as they are. Nothing is guessed beyond one fact: Capella and
Umbra both fly X-band radars.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from pipeline.documents import read_json
from pipeline.layout import RegistrationFiles, SourceFiles
from pipeline.provenance import sar_source
from pipeline.publish.index import PublishError, StoreMeta

log = logging.getLogger("sareo.publish")

SAR_EXTENSION = "https://stac-extensions.github.io/sar/v1.0.0/schema.json"
SAT_EXTENSION = "https://stac-extensions.github.io/sat/v1.0.0/schema.json"
VIEW_EXTENSION = "https://stac-extensions.github.io/view/v1.0.0/schema.json"
PROCESSING_EXTENSION = "https://stac-extensions.github.io/processing/v1.2.0/schema.json"
EXTENSIONS = {"sar": SAR_EXTENSION, "sat": SAT_EXTENSION, "view": VIEW_EXTENSION, "processing": PROCESSING_EXTENSION}
PROVIDER_BAND = {"capella": "X", "umbra": "X"}  # both constellations carry X-band radars only
# IEEE radar bands (GHz): the STAC sar extension's frequency_band names
BANDS_GHZ = (("P", 0.25, 0.5), ("L", 1.0, 2.0), ("S", 2.0, 4.0), ("C", 4.0, 8.0), ("X", 8.0, 12.0),
             ("Ku", 12.0, 18.0), ("K", 18.0, 27.0), ("Ka", 27.0, 40.0))  # fmt: skip


@dataclass(frozen=True)
class Scene:
    """One SAR product in a region: where it came from, what it is, how it was registered."""

    id: str  # the SAR item id (the per-patch ``sar_item``); "" when the product had none
    region: str
    provider: str
    product: str | None
    datetime: str | None
    licence: str | None
    attribution: str | None
    fields: dict[str, Any]  # STAC extension fields (sar:, sat:, view:, processing:, platform, constellation)
    calibration: dict[str, Any]  # the SAR grid's calibration tags (calibrated, radiometry, incidence_deg...)
    registration: dict[str, Any] | None
    patches: dict[str, int] = field(default_factory=dict)  # per split, plus "total"

    @property
    def label(self) -> str:
        return self.id or f"{self.region} (local SAR file)"

    def summary(self) -> dict[str, Any]:
        """A JSON-ready record for the card, the browser and ``sareo info``."""
        f = self.fields
        return {
            "id": self.id, "region": self.region, "provider": self.provider, "product": self.product,
            "datetime": self.datetime, "licence": self.licence, "attribution": self.attribution,
            "polarizations": f.get("sar:polarizations"), "frequency_band": f.get("sar:frequency_band"),
            "instrument_mode": f.get("sar:instrument_mode"), "observation_direction": f.get("sar:observation_direction"),
            "incidence_angle": f.get("view:incidence_angle"), "orbit_state": f.get("sat:orbit_state"),
            "platform": f.get("platform"), "calibrated": _truthy(self.calibration.get("calibrated")),
            "radiometry": self.calibration.get("radiometry"), "calibration_source": self.calibration.get("calibration_source"),
            "registration": self.registration, "patches": self.patches,
        }  # fmt: skip


def _truthy(v: Any) -> bool | None:
    if v is None or v == "":
        return None
    return v if isinstance(v, bool) else str(v).strip().lower() in ("true", "1", "yes")


def frequency_band(ghz: float) -> str | None:
    """IEEE letter band of a centre frequency in GHz (9.65 -> 'X')."""
    for name, lo, hi in BANDS_GHZ:
        if lo <= ghz < hi:
            return name
    return None


def _num(v: Any) -> float | None:
    try:
        x = float(v)
    except (TypeError, ValueError):
        return None
    return x if np.isfinite(x) else None


def _capella_fields(meta: Mapping[str, Any]) -> dict[str, Any]:
    """STAC fields from a Capella ``*_extended.json`` (collect.radar, collect.image, collect.state)."""
    collect = meta.get("collect") or {}
    radar, image = collect.get("radar") or {}, collect.get("image") or {}
    centre = image.get("center_pixel") or {}
    out: dict[str, Any] = {}
    freq = _num(radar.get("center_frequency"))
    if freq:
        out["sar:center_frequency"] = round(freq / 1e9, 6)
        band = frequency_band(freq / 1e9)
        if band:
            out["sar:frequency_band"] = band
    tx, rx = radar.get("transmit_polarization"), radar.get("receive_polarization")
    if tx and rx:
        out["sar:polarizations"] = [f"{tx}{rx}".upper()]
    if collect.get("mode"):
        out["sar:instrument_mode"] = str(collect["mode"])
    if radar.get("pointing"):
        out["sar:observation_direction"] = str(radar["pointing"]).lower()
    if meta.get("product_type"):
        out["sar:product_type"] = str(meta["product_type"])
    for key, src in (("sar:resolution_range", "ground_range_resolution"), ("sar:resolution_azimuth", "azimuth_resolution"),
                     ("sar:pixel_spacing_range", "pixel_spacing_column"), ("sar:pixel_spacing_azimuth", "pixel_spacing_row"),
                     ("sar:looks_range", "range_looks"), ("sar:looks_azimuth", "azimuth_looks"),
                     ("sar:looks_equivalent_number", "enl")):  # fmt: skip
        v = _num(image.get(src))
        if v is not None:
            out[key] = round(v, 6)
    state = collect.get("state") or {}
    if state.get("direction"):
        out["sat:orbit_state"] = str(state["direction"]).lower()
    inc, look = _num(centre.get("incidence_angle")), _num(centre.get("look_angle"))
    if inc is not None:
        out["view:incidence_angle"] = round(inc, 6)
    if look is not None:
        out["view:off_nadir"] = round(look, 6)
    if collect.get("platform"):
        out["platform"] = str(collect["platform"])
        out["constellation"] = "capella"
    if meta.get("software_version"):
        out["processing:software"] = {"Capella processor": str(meta["software_version"])}
    if meta.get("processing_time"):
        out["processing:datetime"] = str(meta["processing_time"])
    return out


def _stac_fields(item: Mapping[str, Any]) -> dict[str, Any]:
    """The extension fields a STAC item of the product already carries (Umbra, Capella items)."""
    props = item.get("properties") or {}
    keep = ("sar:", "sat:", "view:", "processing:")
    out = {k: v for k, v in props.items() if k.startswith(keep)}
    for k in ("platform", "constellation"):
        if props.get(k):
            out[k] = props[k]
    return out


def product_fields(metadata: Mapping[str, Any] | None, sar: Mapping[str, Any] | None = None,
                   grid_tags: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """STAC sar/sat/view/processing fields of one product, from what is known about it.

    ``metadata``: the product's own metadata (Capella extended JSON or a STAC item); ``sar``: the
    provenance 'sar' record (provider, product, polarization, mode, and ``view``: the STAC item's
    sar:/sat:/view: fields that fetch copied); ``grid_tags``: the SAR grid's
    calibration tags (``incidence_deg``). Earlier sources win; unknown fields are left out.
    """
    sar = sar or {}
    out: dict[str, Any] = {}
    if isinstance(metadata, Mapping):
        out = _stac_fields(metadata) if "properties" in metadata else _capella_fields(metadata)
    provider = str(sar.get("provider") or "").lower()
    for k, v in _stac_fields({"properties": sar.get("view") or {}}).items():  # the item's own fields, as fetched
        out.setdefault(k, v)
    if "sar:frequency_band" not in out and provider in PROVIDER_BAND:
        out["sar:frequency_band"] = PROVIDER_BAND[provider]
    if "sar:polarizations" not in out and sar.get("polarization"):
        out["sar:polarizations"] = [str(sar["polarization"]).upper()]
    if "sar:product_type" not in out and sar.get("product"):
        out["sar:product_type"] = str(sar["product"])
    if "sar:instrument_mode" not in out and sar.get("mode"):
        out["sar:instrument_mode"] = str(sar["mode"])
    inc = _num((grid_tags or {}).get("incidence_deg"))
    if "view:incidence_angle" not in out and inc is not None:
        out["view:incidence_angle"] = round(inc, 6)
    if "constellation" not in out and sar_source(provider):
        out["constellation"] = provider
    return out


def _scene_records(meta: StoreMeta) -> list[dict[str, Any]]:
    """The store's per-scene records: its ``scenes`` list, else one from ``provenance``."""
    scenes = meta.attrs.get("scenes")
    if scenes is not None:
        if not isinstance(scenes, list) or not all(isinstance(s, dict) for s in scenes):
            raise PublishError(f"{meta.path}: attribute 'scenes' must be a list of objects, got {type(scenes).__name__}")
        return scenes
    prov = meta.attrs.get("provenance") or {}
    return [{"sar": prov.get("sar") or {}, "registration": prov.get("registration"),
             "sar_grid_tags": prov.get("sar_grid_tags") or {}}]  # fmt: skip


def region_scenes(meta: StoreMeta, splits: tuple[str, ...], source: SourceFiles | None = None,
                  registration: RegistrationFiles | None = None) -> list[Scene]:
    """The scenes of one store, with their patch counts (from ``sar_item``) and STAC fields.

    A store without embedded metadata reads each scene's ``source/scenes/ID/sar_metadata.json``
    (a single-scene store of the old layout: ``source.sar_metadata``) when it exists,
    and its registration residuals from ``registration.record``. Every ``sar_item`` value must
    name one of the scenes.
    """
    records = _scene_records(meta)
    by_scene = "scene" in meta.arrays  # stores of the multi-scene layout name each patch's scene
    items = meta.arrays["scene"] if by_scene else meta.arrays["sar_item"]
    grid_tags = (meta.attrs.get("provenance") or {}).get("sar_grid_tags") or {}
    split = meta.arrays["split"]
    out: list[Scene] = []
    for rec in records:
        sar = rec.get("sar") if isinstance(rec.get("sar"), dict) else rec
        sid = str((rec.get("id") if by_scene else None) or sar.get("item_id") or sar.get("id") or "")
        if by_scene and source is not None and source.scene(sid).provenance.is_file():
            # the scene's fetch record (mode, the item's sar:/view: fields) under what the store kept
            fetched = read_json(source.scene(sid).provenance, PublishError).get("sar") or {}
            sar = {**fetched, **sar} if isinstance(fetched, dict) else sar
        metadata = rec.get("metadata")
        if metadata is None and source is not None:  # the scene's own product metadata, as fetched
            found = [f for f in (source.scene(sid).sar_metadata if by_scene else None,
                                 source.sar_metadata if len(records) == 1 else None) if f is not None and f.is_file()]
            if found:
                metadata = read_json(found[0], PublishError)
        tags = rec.get("sar_grid_tags") or rec.get("calibration") or (grid_tags.get(sid) if by_scene else None) or {}
        mask = items == sid if len(records) > 1 or by_scene else np.ones(meta.n, bool)
        counts = {s: int(((split == s) & mask).sum()) for s in splits}
        counts["total"] = int(mask.sum())
        reg = rec.get("registration")
        own = registration.scene(sid).record if registration is not None and by_scene else None
        if own is not None and own.is_file():  # the scene's own record (residuals included)
            reg = {**(reg or {}), **read_json(own, PublishError)}
        elif not by_scene and len(records) == 1 and registration is not None and registration.record.is_file():
            reg = {**(reg or {}), **read_json(registration.record, PublishError)}
        out.append(Scene(
            id=sid, region=meta.region, provider=str(sar.get("provider") or "unknown"), product=sar.get("product"),
            datetime=sar.get("datetime"), licence=sar.get("licence"), attribution=sar.get("attribution"),
            fields=product_fields(metadata, sar, tags), calibration=dict(tags),
            registration={k: reg[k] for k in ("applied", "flagged", "confidence", "model", "shift_m", "residuals_px")
                          if k in reg} if isinstance(reg, dict) else None,
            patches=counts,
        ))  # fmt: skip
    if len(records) > 1 or by_scene:
        unknown = sorted(set(items.tolist()) - {s.id for s in out})
        if unknown:
            raise PublishError(f"{meta.path}: array '{'scene' if by_scene else 'sar_item'}' names scene(s) {unknown} "
                               "missing from attribute 'scenes'")
    return out


def common_fields(scenes: list[Scene]) -> dict[str, Any]:
    """The fields every scene agrees on (polarizations: the union), for a region-level item."""
    if not scenes:
        return {}
    keys = set.intersection(*(set(s.fields) for s in scenes))
    out = {k: scenes[0].fields[k] for k in sorted(keys) if all(s.fields[k] == scenes[0].fields[k] for s in scenes)}
    pols = sorted({p for s in scenes for p in s.fields.get("sar:polarizations") or []})
    if pols:
        out["sar:polarizations"] = pols
    return out


def extensions_for(fields: Mapping[str, Any]) -> list[str]:
    """Schema URIs of the extensions whose fields appear in ``fields``."""
    return sorted({uri for prefix, uri in EXTENSIONS.items() if any(k.startswith(prefix + ":") for k in fields)})
