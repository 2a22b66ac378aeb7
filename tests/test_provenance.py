"""The provenance registry: chunked hashing, datetime parsing and attribution lines from provenance.json."""

from __future__ import annotations

import datetime as dt
import hashlib
from pathlib import Path

import numpy as np
import pytest

from pipeline import provenance as pv

UTC = dt.timezone.utc


@pytest.mark.parametrize("chunk", [1, 7, 4096, 1 << 20])
def test_sha256_file_in_chunks_equals_hashlib_on_the_bytes(tmp_path: Path, chunk: int) -> None:
    data = np.random.default_rng(3).integers(0, 256, 10_007, dtype=np.uint8).tobytes()  # not a chunk multiple
    f = tmp_path / "blob.bin"
    f.write_bytes(data)
    assert pv.sha256_file(f, chunk=chunk) == hashlib.sha256(data).hexdigest()


def test_sha256_file_of_a_real_fixture_and_an_empty_file(fixtures: Path, tmp_path: Path) -> None:
    osm = fixtures / "osm" / "West-Oakland.osm.bz2"
    assert pv.sha256_file(osm, chunk=1000) == hashlib.sha256(osm.read_bytes()).hexdigest()
    (tmp_path / "empty").write_bytes(b"")
    assert pv.sha256_file(tmp_path / "empty") == hashlib.sha256(b"").hexdigest()


@pytest.mark.parametrize(
    "text, expected",
    [
        ("2024-07-09T04:03:29Z", dt.datetime(2024, 7, 9, 4, 3, 29, tzinfo=UTC)),
        ("2024-07-09T04:03:29.123456z", dt.datetime(2024, 7, 9, 4, 3, 29, 123456, tzinfo=UTC)),
        ("2024-07-09T04:03:29", dt.datetime(2024, 7, 9, 4, 3, 29, tzinfo=UTC)),  # naive = UTC
        ("2024-07-09 06:03:29+02:00", dt.datetime(2024, 7, 9, 4, 3, 29, tzinfo=UTC)),  # space, offset -> UTC
        ("2023-12-31", dt.datetime(2023, 12, 31, tzinfo=UTC)),  # a date is its midnight UTC
        ("  2023-12-31  ", dt.datetime(2023, 12, 31, tzinfo=UTC)),
    ],
)
def test_parse_datetime_gives_aware_utc(text: str, expected: dt.datetime) -> None:
    t = pv.parse_datetime(text)
    assert t == expected and t.utcoffset() == dt.timedelta(0)


def test_parse_datetime_objects_absent_and_bad_values() -> None:
    assert pv.parse_datetime(dt.date(2024, 1, 2)) == dt.datetime(2024, 1, 2, tzinfo=UTC)
    assert pv.parse_datetime(dt.datetime(2024, 1, 2, 3)) == dt.datetime(2024, 1, 2, 3, tzinfo=UTC)
    plus2 = dt.timezone(dt.timedelta(hours=2))
    assert pv.parse_datetime(dt.datetime(2024, 1, 2, 3, tzinfo=plus2)).hour == 1
    assert pv.parse_datetime(None) is None and pv.parse_datetime("") is None
    with pytest.raises(ValueError, match="'July 9th'"):
        pv.parse_datetime("July 9th")
    assert pv.parse_datetime("July 9th", strict=False) is None


def test_registry_sources() -> None:
    assert pv.sar_source("Capella").licence == "CC-BY-4.0" and pv.sar_source("umbra").name == "Umbra Lab, Inc."
    assert pv.sar_source("osm") is None and pv.sar_source(None) is None and pv.sar_source("iceye") is None
    assert pv.OSM.licence == "ODbL-1.0" and pv.OSM.licence_url.startswith("https://opendatacommons.org/")
    for src in pv.SOURCES.values():
        assert src.url.startswith("https://") and src.licence_url.startswith("https://") and src.name
        assert src.licence.rsplit("-", 1)[0].replace("-", " ") in src.attribution  # 'CC BY', 'ODbL' 
    local = pv.local_source("(c) My Lab")
    assert (local.attribution, local.licence) == ("(c) My Lab", "unknown")
    assert pv.licence_link(pv.OSM, "labels") == {"href": pv.OSM.licence_url, "title": "ODbL-1.0: labels"}


def test_attribution_lines_for_capella_umbra_and_a_local_file() -> None:
    eo = {"source": "https://tiles.example/{z}/{x}/{y}.png", "attribution": "Imagery (c) Example"}
    # capella as fetch writes it, but without its own attribution: the registry supplies it
    capella = {"sar": {"provider": "capella", "item_id": "CAPELLA_X"}, "eo": eo}
    assert pv.attribution_lines(capella) == ["SAR: (c) Capella Space Corp, CC BY 4.0", "EO: Imagery (c) Example",
                                             "Labels: (c) OpenStreetMap contributors, ODbL 1.0"]
    assert pv.licences(capella) == {"sar": "CC-BY-4.0", "eo": "unknown", "labels": "ODbL-1.0"}
    umbra = {"sar": {"provider": "umbra"}, "eo": {"source": "eo.tif"}}
    assert pv.attribution_lines(umbra, with_labels=False) == ["SAR: (c) Umbra Lab, Inc., CC BY 4.0", "EO: eo.tif"]
    # a local file of an unknown provider: its own attribution and licence, nothing invented
    local = {"sar": {"provider": "unknown", "attribution": "(c) My Lab", "licence": "CC0-1.0"}, "eo": {}}
    labels = {"attribution": "procedural, no OSM data", "licence": "unknown"}
    assert pv.attribution_lines(local, labels) == ["SAR: (c) My Lab", "Labels: procedural, no OSM data"]
    assert pv.licences(local, labels) == {"sar": "CC0-1.0", "eo": "unknown", "labels": "unknown"}
    assert pv.attribution_lines({}) == ["SAR: see provenance", "Labels: (c) OpenStreetMap contributors, ODbL 1.0"]
    assert pv.sar_attribution({}, "umbra") == pv.SOURCES["umbra"].attribution
    assert pv.sar_attribution({"provider": "x"}, default="CC BY 4.0") == "CC BY 4.0"


def test_fetch_records_use_the_registry() -> None:
    """fetch's provenance 'sar' licence fields come from the registry, or the region file for local data."""
    from types import SimpleNamespace

    from pipeline.fetch import sar

    region = SimpleNamespace(attribution="(c) Region owner")
    capella = pv.SOURCES["capella"]
    assert sar._licence("capella", region) == {"licence": "CC-BY-4.0", "attribution": capella.attribution}
    assert sar._licence("mine", region) == {"licence": "unknown", "attribution": "(c) Region owner"}
    assert sar._licence("mine", SimpleNamespace(attribution="")) == {"licence": "unknown", "attribution": ""}
