"""XYZ tile math against pyproj, and the streaming mosaic on real PNG tiles written here."""

from __future__ import annotations

import io
import math

import numpy as np
import pytest
import rasterio
from PIL import Image
from pyproj import Transformer

from pipeline import tiles

TO_3857 = Transformer.from_crs("EPSG:4326", "EPSG:3857", always_xy=True)


@pytest.mark.parametrize("lat,gsd", [(0.0, 1.0), (60.17, 0.5), (-33.9, 0.3), (45.0, 10.0)])
def test_zoom_is_smallest_reaching_gsd(lat: float, gsd: float) -> None:
    z = tiles.zoom_for_gsd(lat, gsd)
    assert tiles.ground_resolution(lat, z) <= gsd < tiles.ground_resolution(lat, z - 1)


def test_zoom_capped_and_factor() -> None:
    assert tiles.zoom_for_gsd(0.0, 1e-6, max_zoom=19) == 19
    z1, z2 = tiles.zoom_for_gsd(50.0, 1.0), tiles.zoom_for_gsd(50.0, 1.0, factor=0.5)
    assert z2 == z1 + 1


@pytest.mark.parametrize("lon,lat,z", [(24.945, 60.17, 17), (-122.27, 37.8, 15), (151.2, -33.86, 12), (0.0, 0.0, 3)])
def test_tile_coordinates_match_pyproj(lon: float, lat: float, z: int) -> None:
    fx, fy = tiles.lonlat_to_tile(lon, lat, z)
    mx, my = TO_3857.transform(lon, lat)
    size = 2 * tiles.ORIGIN / 2**z
    assert fx == pytest.approx((mx + tiles.ORIGIN) / size, abs=1e-6)
    assert fy == pytest.approx((tiles.ORIGIN - my) / size, abs=1e-6)
    x, y = math.floor(fx), math.floor(fy)
    minx, miny, maxx, maxy = tiles.tile_bounds(x, y, z)
    assert minx <= mx < maxx and miny < my <= maxy


def test_tile_range_edges() -> None:
    # a bbox whose edges sit exactly on tile edges does not pull in neighbours
    assert tiles.tile_range((-180.0, 0.0, 0.0, tiles.MAX_LAT), 1) == (0, 0, 0, 0)
    assert tiles.tile_range((-180.0, -tiles.MAX_LAT, 180.0, tiles.MAX_LAT), 2) == (0, 0, 3, 3)
    bbox = (24.94, 60.168, 24.95, 60.172)
    x0, y0, x1, y1 = tiles.tile_range(bbox, 17)
    # every corner of the bbox lies in a tile of the range, and the range is no larger than needed
    (w, n), (e, s) = TO_3857.transform(bbox[0], bbox[3]), TO_3857.transform(bbox[2], bbox[1])
    assert tiles.tile_bounds(x0, y0, 17)[0] <= w < tiles.tile_bounds(x0, y0, 17)[2]
    assert tiles.tile_bounds(x0, y0, 17)[1] < n <= tiles.tile_bounds(x0, y0, 17)[3]
    assert tiles.tile_bounds(x1, y1, 17)[0] < e <= tiles.tile_bounds(x1, y1, 17)[2]
    assert tiles.tile_bounds(x1, y1, 17)[1] <= s < tiles.tile_bounds(x1, y1, 17)[3]


def _png(rgb: tuple[int, int, int], size: int = 256, alpha_left: int = 255) -> bytes:
    a = np.zeros((size, size, 4), np.uint8)
    a[..., :3] = rgb
    a[..., 3] = 255
    a[:, : size // 4, 3] = alpha_left
    buf = io.BytesIO()
    Image.fromarray(a, "RGBA").save(buf, "PNG")
    return buf.getvalue()


def test_mosaic_places_each_tile_and_masks_missing(tmp_path) -> None:
    bbox, z = (24.93, 60.165, 24.96, 60.175), 16
    x0, y0, x1, y1 = tiles.tile_range(bbox, z)
    assert (x1 - x0 + 1) * (y1 - y0 + 1) >= 4
    missing = (x1, y0)
    store = {}
    for x in range(x0, x1 + 1):
        for y in range(y0, y1 + 1):
            if (x, y) != missing:
                store[f"t/{z}/{x}/{y}.png"] = _png((x % 256, y % 256, 7), alpha_left=0 if (x, y) == (x0, y1) else 255)
    out = tmp_path / "eo.tif"
    summary = tiles.mosaic("t/{z}/{x}/{y}.png", bbox, z, out, store.get, workers=2)
    assert summary["missing"] == 1 and summary["count"] == len(store) + 1
    with rasterio.open(out) as src:
        assert src.crs.to_epsg() == 3857 and src.count == 3 and src.dtypes[0] == "uint8"
        assert src.block_shapes[0] == (256, 256)
        # georeferencing: the top-left corner is the corner of tile (x0, y0)
        minx, _, _, maxy = tiles.tile_bounds(x0, y0, z)
        assert src.transform.c == pytest.approx(minx) and src.transform.f == pytest.approx(maxy)
        data, mask = src.read(), src.dataset_mask()
    for x in range(x0, x1 + 1):
        for y in range(y0, y1 + 1):
            sl = (slice((y - y0) * 256, (y - y0 + 1) * 256), slice((x - x0) * 256, (x - x0 + 1) * 256))
            if (x, y) == missing:
                assert (mask[sl] == 0).all() and (data[(slice(None), *sl)] == 0).all()
                continue
            assert (data[0][sl] == x % 256).all() and (data[1][sl] == y % 256).all() and (data[2][sl] == 7).all()
            transparent = (x, y) == (x0, y1)
            assert (mask[sl][:, :64] == (0 if transparent else 255)).all() and (mask[sl][:, 64:] == 255).all()


def test_mosaic_point_lands_on_right_pixel(tmp_path) -> None:
    """A pixel marked at a known lon/lat inside a tile is found at that lon/lat in the mosaic."""
    lon, lat, z = 24.9451, 60.1702, 17
    fx, fy = tiles.lonlat_to_tile(lon, lat, z)
    x, y = math.floor(fx), math.floor(fy)
    px, py = int((fx - x) * 256), int((fy - y) * 256)
    a = np.zeros((256, 256, 3), np.uint8)
    a[py, px] = 255
    buf = io.BytesIO()
    Image.fromarray(a, "RGB").save(buf, "PNG")
    out = tmp_path / "m.tif"
    tiles.mosaic("{z}/{x}/{y}", (lon - 0.002, lat - 0.001, lon + 0.002, lat + 0.001), z, out,
                 lambda h: buf.getvalue() if h == f"{z}/{x}/{y}" else None)
    with rasterio.open(out) as src:
        mx, my = TO_3857.transform(lon, lat)
        r, c = src.index(mx, my)
        assert src.read(1)[r, c] == 255 and src.read(1).sum() == 255


def test_mosaic_errors(tmp_path) -> None:
    out = tmp_path / "x.tif"
    with pytest.raises(tiles.TileError, match="none of the"):
        tiles.mosaic("a/{z}/{x}/{y}.png", (24.94, 60.16, 24.95, 60.17), 15, out, lambda h: None)
    assert not out.exists()
    with pytest.raises(tiles.TileError, match="expected 256x256"):
        tiles.mosaic("a/{z}/{x}/{y}.png", (24.94, 60.16, 24.95, 60.17), 15, out, lambda h: _png((1, 2, 3), 128))
    with pytest.raises(tiles.TileError, match="not a decodable image"):
        tiles.mosaic("a/{z}/{x}/{y}.png", (24.94, 60.16, 24.95, 60.17), 15, out, lambda h: b"<html>")
    with pytest.raises(tiles.TileError, match="lower eo.zoom"):
        tiles.mosaic("a/{z}/{x}/{y}.png", (0.0, 0.0, 10.0, 10.0), 16, out, lambda h: None)


def test_tms_template_gives_the_same_mosaic(tmp_path) -> None:
    """TMS servers number rows from the south ({-y} = 2^z - 1 - y): same tiles, same mosaic."""
    bbox, z = (24.93, 60.165, 24.96, 60.175), 16
    x0, y0, x1, y1 = tiles.tile_range(bbox, z)
    xyz, tms = {}, {}
    for x in range(x0, x1 + 1):
        for y in range(y0, y1 + 1):
            png = _png((x % 256, y % 256, 9))
            xyz[f"t/{z}/{x}/{y}.png"] = png
            tms[f"t/{z}/{x}/{2**z - 1 - y}.png"] = png
    assert set(xyz) != set(tms)  # the two layouts really name the tiles differently
    tiles.mosaic("t/{z}/{x}/{y}.png", bbox, z, tmp_path / "xyz.tif", xyz.get)
    tiles.mosaic("t/{z}/{x}/{-y}.png", bbox, z, tmp_path / "tms.tif", tms.get)
    with rasterio.open(tmp_path / "xyz.tif") as a, rasterio.open(tmp_path / "tms.tif") as b:
        assert a.transform == b.transform
        np.testing.assert_array_equal(a.read(), b.read())
    assert tiles.tile_href("a/{z}/{x}/{-y}.png", 3, 1, 0) == "a/3/1/7.png"
