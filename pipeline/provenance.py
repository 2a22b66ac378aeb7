"""Where data came from, under which licence, and how to credit it: one registry for every stage.

Licences travel with the data (CC BY 4.0 for Capella and Umbra, ODbL 1.0 for OpenStreetMap), so
each stage writes attribution into its outputs. The names, URLs, SPDX ids and attribution lines
live here, once, so provenance.json, GeoTIFF tags, labels.json, the patch stores and the STAC
collection all say the same thing. Also here: the two small primitives every provenance record
needs, a streaming file hash and one ISO 8601 datetime parser.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import os
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from typing import Any

UNKNOWN = "unknown"  # the licence of a source this registry does not know


@dataclass(frozen=True)
class Source:
    """A data source: who it is, its licence (an SPDX id) and the line that credits it."""

    key: str
    name: str
    url: str
    licence: str
    licence_url: str
    attribution: str

    def to_dict(self) -> dict[str, str]:
        return asdict(self)


CC_BY_4 = ("CC-BY-4.0", "https://creativecommons.org/licenses/by/4.0/")
ODBL_1 = ("ODbL-1.0", "https://opendatacommons.org/licenses/odbl/1-0/")

SOURCES: dict[str, Source] = {
    "capella": Source("capella", "Capella Space", "https://www.capellaspace.com/", *CC_BY_4,
                      "(c) Capella Space Corp, CC BY 4.0"),  # fmt: skip
    "umbra": Source("umbra", "Umbra Lab, Inc.", "https://umbra.space/", *CC_BY_4, "(c) Umbra Lab, Inc., CC BY 4.0"),
    "osm": Source("osm", "OpenStreetMap contributors", "https://www.openstreetmap.org/copyright", *ODBL_1,
                  "(c) OpenStreetMap contributors, ODbL 1.0"),  # fmt: skip
}
SAR_PROVIDERS = ("capella", "umbra")
OSM = SOURCES["osm"]


def sar_source(provider: str | None) -> Source | None:
    """The registry entry of a SAR provider ('capella', 'umbra'; any case), None if it is not one."""
    key = str(provider or "").strip().lower()
    return SOURCES[key] if key in SAR_PROVIDERS else None


def local_source(attribution: str = "", licence: str | None = None) -> Source:
    """A source the registry does not know (a local file): credited as its owner says, licence as given."""
    return Source("local", attribution, "", licence or UNKNOWN, "", attribution)


def licence_link(source: Source, what: str) -> dict[str, str]:
    """A STAC licence link for ``source``: its licence URL, titled '<SPDX id>: <what>'."""
    return {"href": source.licence_url, "title": f"{source.licence}: {what}"}


def sar_attribution(sar: Mapping[str, Any], provider: str | None = None, default: str = "see provenance") -> str:
    """A provenance 'sar' record's own attribution, else its (or ``provider``'s) registry line, else ``default``."""
    src = sar_source(provider or sar.get("provider"))
    return str(sar.get("attribution") or (src.attribution if src else default))


def _sar_records(provenance: Mapping[str, Any]) -> list[Mapping[str, Any]]:
    """The SAR records of a provenance document: a region's scene list, or one scene's ``sar``."""
    scenes = provenance.get("scenes")
    return list(scenes) if isinstance(scenes, list) and scenes else [provenance.get("sar") or {}]


def attribution_lines(
    provenance: Mapping[str, Any], labels: Mapping[str, Any] | None = None, *, with_labels: bool = True
) -> list[str]:
    """'SAR: ...', 'EO: ...' (if known) and 'Labels: ...' lines from provenance.json (and labels.json).

    Labels are credited as labels.json says (its source may not be OpenStreetMap), else to OSM.
    """
    eo = provenance.get("eo") or {}
    lines = [f"SAR: {'; '.join(dict.fromkeys(sar_attribution(s) for s in _sar_records(provenance)))}"]
    eo_attr = eo.get("attribution") or eo.get("source")
    if eo_attr:
        lines.append(f"EO: {eo_attr}")
    if with_labels:
        lines.append(f"Labels: {(labels or {}).get('attribution') or OSM.attribution}")
    return lines


def licences(provenance: Mapping[str, Any], labels: Mapping[str, Any] | None = None) -> dict[str, str]:
    """SPDX licence ids of the SAR, EO and label data (``'unknown'`` where nobody said)."""
    eo = provenance.get("eo") or {}
    sar = []
    for rec in _sar_records(provenance):
        src = sar_source(rec.get("provider"))
        sar.append(str(rec.get("licence") or (src.licence if src else UNKNOWN)))
    return {
        "sar": ", ".join(dict.fromkeys(sar)) or UNKNOWN,
        "eo": str(eo.get("licence") or UNKNOWN),
        "labels": str((labels or {}).get("licence") or OSM.licence),
    }


def sha256_file(path: str | os.PathLike[str], chunk: int = 1 << 20) -> str:
    """Hex SHA-256 of a file, read in ``chunk``-byte pieces: a whole SAR scene never sits in memory."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def parse_datetime(value: Any, strict: bool = True) -> dt.datetime | None:
    """An ISO 8601 date or datetime (a 'Z' or an offset, 'T' or a space) as an aware UTC datetime.

    Naive values are taken as UTC (STAC and the region files mean UTC); ``None`` and '' give None.
    A value that does not parse raises ValueError naming it, or gives None when ``strict`` is False.
    """
    if value is None or value == "":
        return None
    if isinstance(value, dt.datetime):
        t = value
    elif isinstance(value, dt.date):
        t = dt.datetime(value.year, value.month, value.day)
    else:
        text = str(value).strip().replace(" ", "T")
        if text[-1:] in ("Z", "z"):
            text = text[:-1] + "+00:00"
        try:
            t = dt.datetime.fromisoformat(text)
        except ValueError:
            if strict:
                raise ValueError(f"{value!r}: not an ISO 8601 date or datetime") from None
            return None
    return t.replace(tzinfo=dt.UTC) if t.tzinfo is None else t.astimezone(dt.UTC)
