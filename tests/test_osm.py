"""OSM reading: local extracts through GDAL (repairs counted, never a crash) and Overpass through osmnx
against a loopback server that answers as Overpass does."""

from __future__ import annotations

import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs

import numpy as np
import pytest
from servers import dead_port  # noqa: F401 - pytest fixture

from pipeline.labels.classify import classify
from pipeline.osm import (
    OsmError,
    OsmParams,
    data_source,
    declared_bounds,
    overpass_xml,
    read_osm,
    read_window,
    source_name,
)

BBOX = (24.9400, 60.1700, 24.9420, 60.1710)


def _elements() -> list[dict]:
    nodes = {1: (24.9401, 60.1701), 2: (24.9405, 60.1701), 3: (24.9405, 60.1704), 4: (24.9401, 60.1704),
             5: (24.9400, 60.1706), 6: (24.9419, 60.1706), 10: (24.9406, 60.1701), 11: (24.9418, 60.1701),
             12: (24.9418, 60.1709), 13: (24.9406, 60.1709)}
    els = [{"type": "node", "id": i, "lat": lat, "lon": lon} for i, (lon, lat) in nodes.items()]
    els += [
        {"type": "way", "id": 100, "nodes": [1, 2, 3, 4, 1], "tags": {"building": "yes"}},
        {"type": "way", "id": 101, "nodes": [5, 6], "tags": {"highway": "primary", "lanes": "4"}},
        {"type": "way", "id": 102, "nodes": [10, 11, 12, 13, 10]},
        {"type": "relation", "id": 200, "tags": {"type": "multipolygon", "landuse": "residential"},
         "members": [{"type": "way", "ref": 102, "role": "outer"}]},
    ]
    return els


class _Overpass(BaseHTTPRequestHandler):
    queries: list[str] = []

    def log_message(self, *args):  # keep pytest output clean
        pass

    def do_GET(self):  # osmnx's rate-limit check: /api/status
        body = (b"Connected as: 1\nCurrent time: 2024-01-01T00:00:00Z\nAnnounced endpoint: none\n"
                b"Rate limit: 2\n2 slots available now.\nCurrently running queries:\n")
        self.send_response(200)
        self.send_header("Content-Type", "text/plain")
        self.end_headers()
        self.wfile.write(body)

    remark: str | None = None  # set to answer as Overpass does when a query times out

    def do_POST(self):
        length = int(self.headers.get("Content-Length", 0))
        query = parse_qs(self.rfile.read(length).decode())["data"][0]
        type(self).queries.append(query)
        answer = {"version": 0.6, "generator": "loopback", "elements": _elements()}
        if type(self).remark:
            answer["remark"] = type(self).remark
        body = json.dumps(answer).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.end_headers()
        self.wfile.write(body)


@pytest.fixture()
def overpass_server():
    _Overpass.queries = []
    _Overpass.remark = None
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Overpass)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}/api"
    server.shutdown()
    server.server_close()


def test_overpass_through_osmnx_with_cache(overpass_server, tmp_path):
    p = OsmParams(overpass_url=overpass_server, overpass_timeout=5, cache_dir=str(tmp_path / "cache"))
    feats = read_osm("overpass", BBOX, p=p)
    assert len(_Overpass.queries) == 1 and "landuse" in _Overpass.queries[0] and "highway" in _Overpass.queries[0]
    by_id = feats.gdf.set_index("osm_id")
    assert by_id.loc["w100", "building"] == "yes" and by_id.loc["w100", "kind"] == "area"
    assert by_id.loc["w101", "kind"] == "line" and by_id.loc["w101", "lanes"] == "4"
    assert by_id.loc["r200", "landuse"] == "residential" and by_id.loc["r200", "kind"] == "area"
    classes = classify(feats).groupby("class_id")["width_m"].max()
    assert classes.loc[8] == 14.0 and set(classes.index) == {1, 2, 8}
    again = read_osm("overpass", BBOX, p=p)  # answered from the osmnx cache
    assert len(_Overpass.queries) == 1 and len(again) == len(feats)


def test_overpass_unreachable_fails_fast_with_clear_error(tmp_path, dead_port):
    port = dead_port  # bound, never listening: connection refused at once, and no one else can take it
    p = OsmParams(overpass_url=f"http://127.0.0.1:{port}/api", overpass_timeout=2, overpass_rate_limit=False,
                  cache_dir=str(tmp_path))
    with pytest.raises(OsmError, match="overpass:.*failed"):
        read_osm("overpass", BBOX, p=p)


def test_clipped_extract_is_repaired_or_skipped_and_counted(fixtures):
    feats = read_osm(fixtures / "osm" / "Helsinki.osm.pbf", None)
    assert feats.repaired > 0 and feats.skipped > 0  # the extract is clipped: some rings are broken
    assert feats.gdf.geometry.is_valid.all() and not feats.gdf.geometry.is_empty.any()
    assert feats.gdf.crs.to_epsg() == 4326


def test_bz2_xml_and_bbox_filter(fixtures):
    path = fixtures / "osm" / "West-Oakland.osm.bz2"
    full = read_osm(path, None)
    part = read_osm(path, (-122.3026, 37.8062, -122.3005, 37.8075))
    assert 0 < len(part) < len(full)
    assert (full.gdf["landuse"] == "residential").sum() == 1


def test_bad_sources_are_named(tmp_path):
    with pytest.raises(OsmError, match="no such OSM file"):
        read_osm(tmp_path / "nope.osm.pbf", None)
    bad = tmp_path / "x.osm.bz2"
    bad.write_bytes(b"not bzip2")
    with pytest.raises(OsmError, match="x.osm.bz2: not a readable bzip2"):
        read_osm(bad, None)
    txt = tmp_path / "x.txt"
    txt.write_text("hi")
    with pytest.raises(OsmError, match="expected an OSM extract"):
        read_osm(txt, None)


def test_data_source_credits_osm_unless_the_file_says_otherwise(fixtures, tmp_path):
    import bz2

    from pipeline.provenance import OSM

    assert data_source("overpass") is OSM
    assert data_source(fixtures / "osm" / "Helsinki.osm.pbf") is OSM
    assert data_source(fixtures / "osm" / "West-Oakland.osm.bz2") is OSM  # XML header without a notice
    api = tmp_path / "api.osm"  # as the OSM API writes it
    api.write_text('<?xml version="1.0"?>\n<osm version="0.6" copyright="OpenStreetMap and contributors" '
                   'license="http://opendatacommons.org/licenses/odbl/1-0/">\n</osm>\n')
    assert data_source(api) is OSM
    own = tmp_path / "own.osm.bz2"
    own.write_bytes(bz2.compress(b'<osm version="0.6" copyright="(c) Survey team" license="CC0-1.0">'
                                 b'<node id="1" lat="0" lon="0"/></osm>'))
    src = data_source(own)
    assert (src.attribution, src.licence) == ("(c) Survey team", "CC0-1.0")
    # the demo's procedural scenes say they are not OSM data, and get no OSM credit
    from pipeline.demo.rural import PROCEDURAL_NOTICE, write_procedural_osm

    procedural = write_procedural_osm(tmp_path / "rural.osm", (17.585, 59.905, 17.588, 59.907), 10.0, 1)
    src = data_source(procedural)
    assert src is not OSM and src.attribution == PROCEDURAL_NOTICE and src.licence == "unknown"
    assert len(read_osm(procedural, None)) > 0  # the notice does not disturb GDAL's OSM driver


def test_declared_bounds_of_extracts(fixtures, tmp_path):
    """Where an extract says its data stops (PBF header bbox, XML <bounds>): clipped coastlines stop there."""
    pbf = fixtures / "osm" / "Helsinki.osm.pbf"
    hb = declared_bounds(pbf)
    assert hb == pytest.approx((24.935, 60.164, 24.953, 60.179), abs=5e-4)  # the fixtures README's extent
    feats = read_osm(pbf, BBOX)
    assert feats.extent == hb and feats.bbox == BBOX
    w, s, e, n = feats.gdf.total_bounds  # ways crossing the edge were cut at it
    assert w >= hb[0] - 1e-6 and e <= hb[2] + 1e-6
    oak = declared_bounds(fixtures / "osm" / "West-Oakland.osm.bz2")  # <bounds> inside a .bz2
    assert oak == pytest.approx((-122.30258, 37.80615, -122.29825, 37.80914))
    bare = tmp_path / "bare.osm"
    bare.write_text('<osm version="0.6"><node id="1" lat="0" lon="0"/></osm>')
    junk = tmp_path / "junk.osm.pbf"
    junk.write_bytes(b"\x00\x00\x00\x05hello")
    assert declared_bounds(bare) is None and declared_bounds(junk) is None and read_osm(bare, None).extent is None


def test_overpass_answer_as_osm_xml_is_deterministic_and_complete(tmp_path):
    """Answers merged (osmnx sub-queries overlap), sorted, escaped; GDAL reads the same features as before."""
    els = _elements()
    next(e for e in els if e["id"] == 100)["tags"]["name"] = 'Caf\u00e9 "<&>"'  # quoting, non-ASCII survive
    one = overpass_xml([{"elements": els}], BBOX)
    # the same elements split over two overlapping answers, in another order: the same bytes
    two = overpass_xml([{"elements": els[7:][::-1]}, {"elements": els[:10]}], BBOX)
    assert one == two
    text = one.decode()
    assert text.index('<node id="13"') < text.index('<way id="100"') < text.index('<relation id="200"')
    assert 'copyright="OpenStreetMap and contributors"' in text and 'lat="60.1701000"' in text
    path = tmp_path / "a.osm"
    path.write_bytes(one)
    feats = read_osm(path, None)
    by_id = feats.gdf.set_index("osm_id")
    assert sorted(by_id.index) == ["r200", "w100", "w101"]
    assert by_id.loc["r200", "kind"] == "area" and by_id.loc["w101", "lanes"] == "4"
    assert declared_bounds(path) == pytest.approx(BBOX, abs=1e-7) and data_source(path).key == "osm"
    import xml.etree.ElementTree as ET

    way = ET.fromstring(one).find("way[@id='100']")
    assert {t.get("k"): t.get("v") for t in way.iter("tag")}["name"] == 'Caf\u00e9 "<&>"'


def test_overpass_error_remark_is_refused(overpass_server, tmp_path):
    """Overpass reports a timeout as HTTP 200 with partial data and a remark: never taken as complete."""
    _Overpass.remark = "runtime error: Query timed out in \"query\" at line 1 after 181 seconds."
    p = OsmParams(overpass_url=overpass_server, overpass_timeout=5, cache_dir=str(tmp_path))
    with pytest.raises(OsmError, match=r"answered for bbox .* with a remark \(incomplete data\): runtime error: Query timed out"):
        read_osm("overpass", BBOX, p=p)
    _Overpass.remark = None  # the incomplete answer was not cached: the next query asks again
    assert len(read_osm("overpass", BBOX, p=p)) == 3 and len(_Overpass.queries) == 2


def test_source_name_and_read_window():
    assert source_name("pipeline/demo_data/Helsinki.osm.pbf") == "osm.osm.pbf"
    assert source_name("x/West-Oakland.osm.bz2") == "osm.osm.bz2"
    assert source_name("a.osm") == "osm.osm" and source_name("https://h/b.pbf?x=1") == "osm.pbf"
    with pytest.raises(OsmError, match="notes.txt: expected an OSM extract"):
        source_name("notes.txt")
    w, s, _, n = read_window((24.0, 60.0, 24.1, 60.1), 111.0)
    assert (s, n) == pytest.approx((60.0 - 0.001, 60.1 + 0.001))
    # a degree of longitude is cos(lat) times a degree of latitude: the margin is the same in metres
    assert 24.0 - w == pytest.approx(0.001 / np.cos(np.radians(60.05)))
    assert read_window((0.0, 0.0, 1.0, 1.0), 0.0) == (0.0, 0.0, 1.0, 1.0)
