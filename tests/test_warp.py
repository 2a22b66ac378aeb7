"""Grid stage: pixel alignment (< 0.1 px), no seams between blocks, deterministic bytes, bad input."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import numpy as np
import pytest
import rasterio
from affine import Affine
from pyproj import Transformer
from rasterio.enums import Resampling
from scipy.ndimage import map_coordinates
from rasterio.windows import Window

from pipeline.calibrate import calibration_for, dn_to_linear, linear_to_db
from pipeline.grid import Grid, grid_for_bbox
from pipeline.layout import GridFiles, RegistrationFiles, SourceFiles
from sources import SCENE, as_region_source
from pipeline.regions import Region
from pipeline.warp import (
    WarpError,
    grid_of,
    GridParams,
    grid_region,
    open_sar,
    open_source,
    read_sar_block,
    source_window,
    warp_sar_block,
    write_sar_grid,
)

LON, LAT = 24.9412345, 60.1701234  # the bright target (central Helsinki)
GEO_META = "capella/CAPELLA_C14_SP_GEO_HH_20240709040329_20240709040358_extended.json"
SMALL = GridParams(block_size=256, tile_size=256)


def _gauss(cols: np.ndarray, rows: np.ndarray, c0: float, r0: float, sigma: float) -> np.ndarray:
    return np.exp(-((cols - c0) ** 2 + (rows - r0) ** 2) / (2 * sigma**2))


def _target_pixel(crs: str, transform: Affine) -> tuple[float, float]:
    x, y = Transformer.from_crs("EPSG:4326", crs, always_xy=True).transform(LON, LAT)
    return ~transform @ (x, y)


def write_sar(path: Path, scale: float, crs: str = "EPSG:32635", size: int = 640, res: float = 0.5,
              rotation_deg: float = 0.0, seed: int = 0, speckle: bool = False, zero_strip: bool = True) -> Affine:
    """A UInt16 amplitude GeoTIFF with one bright Gaussian target (in power) exactly at (LON, LAT)."""
    x, y = Transformer.from_crs("EPSG:4326", crs, always_xy=True).transform(LON, LAT)
    # Put the target near the centre, off the pixel lattice on purpose.
    t = (Affine.translation(x, y) @ Affine.rotation(rotation_deg) @ Affine.scale(res, -res)
         @ Affine.translation(-size / 2 - 0.37, -size / 2 + 0.21))
    c0, r0 = ~t @ (x, y)
    rows, cols = np.mgrid[0:size, 0:size] + 0.5
    power = 0.01 + 2.0 * _gauss(cols, rows, c0, r0, 2.0)
    if speckle:
        power = power * np.random.default_rng(seed).exponential(1.0, power.shape)
    dn = np.clip(np.rint(np.sqrt(power) / scale), 1, 65535).astype(np.uint16)
    if zero_strip:
        dn[:, :100] = 0  # nodata edge, as real GEO products have
    prof = {"driver": "GTiff", "width": size, "height": size, "count": 1, "dtype": "uint16", "crs": crs,
            "transform": t, "nodata": 0, "tiled": True, "blockxsize": 256, "blockysize": 256}
    with rasterio.open(path, "w", **prof) as ds:
        ds.write(dn, 1)
    return t


def write_eo(path: Path, crs: str = "EPSG:3857", size: int = 700, res: float = 1.0) -> Affine:
    """uint8 RGB in Web Mercator (1 m mercator = 0.5 m ground at 60 N) with a bright blob at (LON, LAT)
    and an internal mask that flags the right-hand strip invalid."""
    x, y = Transformer.from_crs("EPSG:4326", crs, always_xy=True).transform(LON, LAT)
    t = Affine.translation(x - (size / 2 + 0.29) * res, y + (size / 2 - 0.44) * res) @ Affine.scale(res, -res)
    c0, r0 = ~t @ (x, y)
    rows, cols = np.mgrid[0:size, 0:size] + 0.5
    img = 20 + 200 * _gauss(cols, rows, c0, r0, 4.0)
    rgb = np.stack([img, img * 0.8, img * 0.6]).round().astype(np.uint8)
    mask = np.full((size, size), 255, np.uint8)
    mask[:, -120:] = 0
    rgb[:, mask == 0] = 0
    prof = {"driver": "GTiff", "width": size, "height": size, "count": 3, "dtype": "uint8", "crs": crs,
            "transform": t, "tiled": True, "blockxsize": 256, "blockysize": 256, "photometric": "RGB"}
    with rasterio.Env(GDAL_TIFF_INTERNAL_MASK=True), rasterio.open(path, "w", **prof) as ds:
        ds.write(rgb)
        ds.write_mask(mask)
    return t


def make_source(tmp: Path, fixtures: Path, **sar_kw) -> Path:
    src = tmp / "source"
    src.mkdir(parents=True)
    shutil.copy(fixtures / GEO_META, src / "sar_metadata.json")
    scale = json.loads((src / "sar_metadata.json").read_text())["collect"]["image"]["scale_factor"]
    write_sar(src / "sar.tif", scale, **sar_kw)
    write_eo(src / "eo.tif")
    (src / "provenance.json").write_text(json.dumps(
        {"sar": {"provider": "capella", "product": "GEO", "attribution": "(c) Capella Space Corp, CC BY 4.0"},
         "eo": {"attribution": "synthetic test image"}}))
    return src


def region(root: Path, half_deg: float = 0.0012, gsd: float = 0.5) -> Region:
    bbox = (LON - 2 * half_deg, LAT - half_deg, LON + 2 * half_deg, LAT + half_deg)
    return Region("helsinki-test", bbox, gsd, {"provider": "capella", "product": "GEO"}, {}, {},
                  root / "regions" / "helsinki-test.yaml", root)


def peak_centroid(img: np.ndarray, half: int = 7) -> tuple[float, float]:
    """Sub-pixel (col, row) of the brightest blob, pixel centres at +0.5 (the Grid convention)."""
    r, c = np.unravel_index(np.nanargmax(img), img.shape)
    win = img[r - half : r + half + 1, c - half : c + half + 1].astype(np.float64)
    bg = np.nanmedian(img)
    w = np.clip(np.nan_to_num(win - bg), 0, None)
    rr, cc = np.mgrid[r - half : r + half + 1, c - half : c + half + 1] + 0.5
    return float((w * cc).sum() / w.sum()), float((w * rr).sum() / w.sum())


@pytest.fixture(scope="module")
def gridded(tmp_path_factory, fixtures):
    tmp = tmp_path_factory.mktemp("grid")
    src = make_source(tmp, fixtures)
    as_region_source(src)
    reg = region(tmp)
    grid_region(reg, SourceFiles(src), None, GridFiles(tmp / "grid"), SMALL)
    return tmp, src, reg


def test_sar_target_lands_on_its_pixel(gridded):
    tmp, _, reg = gridded
    grid = Grid.from_json((tmp / "grid" / "grid.json").read_text())
    assert grid == grid_of(reg)
    with rasterio.open(tmp / "grid" / "scenes" / SCENE / "sar_db.tif") as ds:
        assert ds.transform == grid.transform and ds.shape == grid.shape
        assert ds.tags()["calibrated"] == "true"
        db = ds.read(1)
    col, row = peak_centroid(10 ** (db / 10))
    ec, er = grid.lonlat_to_pixel(LON, LAT)
    err = float(np.hypot(col - ec, row - er))
    print(f"SAR alignment error {err:.4f} px")
    assert err < 0.1
    assert not np.isneginf(db).any()
    assert np.isnan(db).any() and np.isfinite(db).mean() > 0.5  # the DN 0 strip is NaN


def test_eo_target_lands_on_its_pixel_and_mask_is_carried(gridded):
    tmp, _, reg = gridded
    grid = grid_of(reg)
    with rasterio.open(tmp / "grid" / "eo.tif") as ds:
        rgb = ds.read([1, 2, 3]).astype(np.float32)
        valid = ds.read(4)
        assert ds.count == 4
    assert set(np.unique(valid)) == {0, 255}
    red = np.where(valid == 255, rgb[0], np.nan)
    col, row = peak_centroid(red, half=12)
    ec, er = grid.lonlat_to_pixel(LON, LAT)
    err = float(np.hypot(col - ec, row - er))
    print(f"EO alignment error {err:.4f} px")
    assert err < 0.1
    # The masked strip (east edge of the source) is invalid on the grid, and no black fringe
    # leaks into valid pixels next to it: valid pixels keep the background level (20).
    east_cols = np.where((valid == 255).any(axis=0))[0].max()
    assert east_cols < grid.width - 1
    edge = rgb[0][:, east_cols][valid[:, east_cols] == 255]
    assert edge.min() >= 19


def exact_bilinear(power: np.ndarray, src_transform: Affine, src_crs: str, grid: Grid) -> np.ndarray:
    """Reference: every grid pixel centre projected exactly (pyproj), then bilinear in the source."""
    rows, cols = np.mgrid[0 : grid.height, 0 : grid.width] + 0.5
    lon, lat = grid.transform @ (cols, rows)
    x, y = Transformer.from_crs("EPSG:4326", src_crs, always_xy=True).transform(lon, lat)
    c, r = ~src_transform @ (x, y)
    return map_coordinates(power.astype(np.float64), [r - 0.5, c - 0.5], order=1, mode="nearest")


def test_block_warp_has_no_seams(tmp_path, fixtures):
    """Speckled scene warped in 128 px blocks == an exact one-shot bilinear reference, and == 512 px blocks."""
    src = make_source(tmp_path, fixtures, speckle=True, zero_strip=False)
    grid = grid_of(region(tmp_path))
    sar = open_sar(SourceFiles(src))
    out = {}
    for block in (128, 512):
        cfg = GridParams(block_size=block, tile_size=128, strip_px=64)
        write_sar_grid(sar, grid, tmp_path / f"b{block}.tif", cfg)
        with rasterio.open(tmp_path / f"b{block}.tif") as ds:
            out[block] = ds.read(1)
    assert np.isfinite(out[128]).all()  # the scene covers the grid: no holes at block edges
    assert np.array_equal(np.isnan(out[128]), np.isnan(out[512]))
    # same strips (64 px) in both: only the block tiling differs, and it must not change values
    assert np.nanmax(np.abs(out[128] - out[512])) < 1e-3  # dB
    with rasterio.open(src / "sar.tif") as ds:
        power = dn_to_linear(ds.read(1), sar.cal)
    ref = exact_bilinear(power, sar.transform, "EPSG:32635", grid)
    rel = np.abs(10 ** (out[128] / 10) - ref) / power.mean()
    seam = np.zeros(grid.shape, bool)
    seam[::128, :] = seam[:, ::128] = seam[127::128, :] = seam[:, 127::128] = True
    assert np.sqrt(np.mean(rel**2)) < 0.005 and rel.max() < 0.1
    assert rel[seam].max() < 0.1 and np.sqrt(np.mean(rel[seam] ** 2)) < 0.005


def test_output_is_byte_identical_across_runs(gridded, tmp_path):
    tmp, src, reg = gridded
    grid_region(reg, SourceFiles(src), None, GridFiles(tmp_path / "again"), SMALL)
    for name in ("grid.json", f"scenes/{SCENE}/sar_db.tif", "eo.tif", "quicklook.png", f"scenes/{SCENE}/quicklook.png"):
        assert (tmp / "grid" / name).read_bytes() == (tmp_path / "again" / name).read_bytes(), name


def test_quicklook_is_two_panels(gridded):
    tmp, _, reg = gridded
    from PIL import Image

    im = Image.open(tmp / "grid" / "quicklook.png")
    grid = grid_of(reg)
    assert im.width == 2 * grid.width + 8  # SAR | gap | EO at full size (the grid is below max_size)
    assert im.height > grid.height  # plus the title/attribution line
    from pipeline.quicklook import side_by_side

    small = side_by_side(tmp / "grid" / "scenes" / SCENE / "sar_db.tif", tmp / "grid" / "eo.tif", tmp / "small.png", max_size=100)
    assert Image.open(small).width == 100 + 8 + 100  # decimated reads, aspect kept


def test_registration_correction_moves_the_sar(tmp_path, fixtures):
    """A translation correction of (+3 m E, -2 m N) moves the target by exactly that on the ground."""
    src = make_source(tmp_path, fixtures)
    reg = region(tmp_path)
    grid = grid_of(reg)
    regjson = tmp_path / "registration.json"
    regjson.write_text(json.dumps({"applied": True, "sar_crs": "EPSG:32635",
                                   "correction": [1, 0, 3.0, 0, 1, -2.0]}))
    db = read_sar_block(SourceFiles(src), grid, Window(0, 0, grid.width, grid.height), RegistrationFiles(regjson.parent))
    col, row = peak_centroid(10 ** (db / 10))
    to_utm = Transformer.from_crs("EPSG:4326", "EPSG:32635", always_xy=True)
    x, y = to_utm.transform(LON, LAT)
    lon2, lat2 = to_utm.transform(x + 3.0, y - 2.0, direction="INVERSE")
    ec, er = grid.lonlat_to_pixel(lon2, lat2)
    assert np.hypot(col - ec, row - er) < 0.1
    # not applied => identity
    regjson.write_text(json.dumps({"applied": False, "correction": [1, 0, 3.0, 0, 1, -2.0]}))
    db0 = read_sar_block(SourceFiles(src), grid, Window(0, 0, grid.width, grid.height), RegistrationFiles(regjson.parent))
    col0, row0 = peak_centroid(10 ** (db0 / 10))
    assert np.hypot(col0 - col, row0 - row) > 5  # 3.6 m = 7 px at 0.5 m


def test_rotated_source_aligns(tmp_path, fixtures):
    """Umbra-style rotated geotransforms: the source window and the warp still put the target right."""
    src = make_source(tmp_path, fixtures, rotation_deg=-76.0, zero_strip=False)
    reg = region(tmp_path, half_deg=0.0008)
    grid = grid_of(reg)
    sar = open_sar(SourceFiles(src))
    db = warp_sar_block(sar, grid.transform, grid.shape)
    col, row = peak_centroid(10 ** (db / 10))
    ec, er = grid.lonlat_to_pixel(LON, LAT)
    assert np.hypot(col - ec, row - er) < 0.1


def test_linear_power_averaging_is_unbiased(tmp_path, fixtures):
    """Speckle: averaging in linear power keeps the mean sigma0; averaging dB would be ~2.5 dB low."""
    src = make_source(tmp_path, fixtures, speckle=True, zero_strip=False)
    reg = region(tmp_path, gsd=2.0)  # 4x coarser than the source: 'average' is chosen
    grid = grid_of(reg)
    sar = open_sar(SourceFiles(src))
    db = warp_sar_block(sar, grid.transform, grid.shape, Resampling.average)
    x0, y0 = grid.lonlat_to_pixel(LON, LAT)
    far = np.hypot(*np.meshgrid(np.arange(grid.width) + 0.5 - x0, np.arange(grid.height) + 0.5 - y0)) > 10
    background = db[far & np.isfinite(db)]
    truth = 10 * np.log10(0.01)
    assert abs(10 * np.log10(np.mean(10 ** (background / 10))) - truth) < 0.3
    assert abs(np.median(background) - truth) < 1.0  # 4x4 looks: median close to the mean
    with rasterio.open(src / "sar.tif") as ds:
        dn_db = linear_to_db(dn_to_linear(ds.read(1), sar.cal))
    assert np.nanmean(dn_db) - truth < -2.0  # what a dB-domain average would have given


def test_source_window_is_bounded(tmp_path, fixtures):
    src = make_source(tmp_path, fixtures)
    sar = open_sar(SourceFiles(src))
    grid = grid_of(region(tmp_path))
    win = source_window(sar, grid.window_transform(0, 0), (32, 32))
    assert win is not None and win.width < 60 and win.height < 60
    far = Affine.translation(10, 0) @ grid.transform  # 10 degrees east: disjoint
    assert source_window(sar, far, (32, 32)) is None


def test_geotiff_without_crs_is_refused(tmp_path):
    p = tmp_path / "nocrs.tif"
    with rasterio.open(p, "w", driver="GTiff", width=8, height=8, count=1, dtype="uint16",
                       transform=Affine(0.5, 0, 500000, 0, -0.5, 6670000)) as ds:
        ds.write(np.ones((1, 8, 8), np.uint16))
    with pytest.raises(WarpError, match=r"nocrs\.tif: has no CRS"):
        open_source(p)


def test_bad_registration_is_refused(tmp_path, fixtures):
    src = make_source(tmp_path, fixtures)
    regjson = tmp_path / "registration.json"
    regjson.write_text(json.dumps({"applied": True, "correction": [1, 0, "x"]}))
    with pytest.raises(WarpError, match="correction: expected 6 numbers"):
        open_sar(SourceFiles(src), RegistrationFiles(regjson.parent))
    regjson.write_text(json.dumps({"applied": True, "sar_crs": "EPSG:32634", "correction": [1, 0, 0, 0, 1, 0]}))
    with pytest.raises(WarpError, match="sar_crs"):
        open_sar(SourceFiles(src), RegistrationFiles(regjson.parent))


def test_umbra_is_relative_db(tmp_path, fixtures):
    """The real Umbra GEC chip (rotated transform, uint8) grids as relative dB flagged uncalibrated."""
    src = tmp_path / "source"
    src.mkdir()
    shutil.copy(fixtures / "umbra" / "umbra_mount_yasur.tiff", src / "sar.tif")
    (src / "provenance.json").write_text(json.dumps({"sar": {"provider": "umbra", "product": "GEC"}}))
    sar = open_sar(SourceFiles(src))
    assert sar.cal is not None and not sar.cal.calibrated
    assert sar.cal == calibration_for(None, "umbra", "GEC")
    with rasterio.open(src / "sar.tif") as ds:
        x, y = ds.transform @ (ds.width / 2, ds.height / 2)
        lon, lat = Transformer.from_crs(ds.crs, "EPSG:4326", always_xy=True).transform(x, y)
        dn = ds.read(1)
    grid = grid_for_bbox((lon - 0.002, lat - 0.002, lon + 0.002, lat + 0.002), 0.6)
    db = warp_sar_block(sar, grid.transform, grid.shape)
    ok = np.isfinite(db)
    # DN 0 is no data (log of 0): 24 % of this display chip is 0, so about that much is NaN
    assert abs((1 - ok.mean()) - (dn == 0).mean()) < 0.1
    assert db[ok].max() <= 20 * np.log10(float(dn.max())) + 1e-3 and db[ok].min() >= 0.0


def test_failed_stage_leaves_previous_grid_untouched(gridded, tmp_path, monkeypatch):
    """A crash after the SAR is written (here: in the quick look) must not leave a half grid/."""
    import pipeline.warp

    _, src, reg = gridded
    dest = tmp_path / "grid"
    grid_region(reg, SourceFiles(src), None, GridFiles(dest), SMALL)
    before = {p.relative_to(dest): p.read_bytes() for p in dest.rglob("*") if p.is_file()}

    def boom(*args, **kwargs):
        raise RuntimeError("disk full while writing the quick look")

    monkeypatch.setattr(pipeline.warp, "side_by_side", boom)
    with pytest.raises(RuntimeError, match="disk full"):
        grid_region(reg, SourceFiles(src), None, GridFiles(dest), SMALL)
    assert {p.relative_to(dest): p.read_bytes() for p in dest.rglob("*") if p.is_file()} == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["grid"]  # no temporary left behind
    with pytest.raises(RuntimeError):
        grid_region(reg, SourceFiles(src), None, GridFiles(tmp_path / "fresh"), SMALL)
    assert not (tmp_path / "fresh").exists()


def test_polygon_aoi_masks_outside_pixels(gridded, tmp_path):
    """A GeoJSON polygon AOI: its bbox is the grid, pixels outside the polygon are no data."""
    import dataclasses

    from shapely.geometry import Polygon, mapping

    _, src, reg = gridded
    w, s, e, n = reg.bbox
    tri = Polygon([(w, s), (e, s), (w, n)])  # lower-left half of the bbox
    preg = dataclasses.replace(reg, aoi_geojson=mapping(tri))
    grid = grid_region(preg, SourceFiles(src), None, GridFiles(tmp_path / "grid"), SMALL)
    with rasterio.open(tmp_path / "grid" / "scenes" / SCENE / "sar_db.tif") as s_ds, rasterio.open(tmp_path / "grid" / "eo.tif") as e_ds:
        sar, eo_ok = s_ds.read(1), e_ds.read(4) > 0
    with rasterio.open(Path(gridded[0]) / "grid" / "scenes" / SCENE / "sar_db.tif") as full:  # the bbox run of the same source
        full_sar = full.read(1)
    rows, cols = np.mgrid[0:grid.height, 0:grid.width]
    lon, lat = grid.transform @ (cols + 0.5, rows + 0.5)
    inside = (lon - w) / (e - w) + (lat - s) / (n - s) < 1  # below the hypotenuse
    assert not np.isfinite(sar[~inside]).any() and not eo_ok[~inside].any()
    # inside the polygon nothing changed: same values as the bbox run
    keep = inside & np.isfinite(full_sar)
    np.testing.assert_array_equal(sar[keep], full_sar[keep])
    assert eo_ok[inside].mean() > 0.9


def test_scenes_of_different_gsd_each_land_on_the_region_grid(tmp_path, fixtures):
    """Two scenes (0.5 m and 0.3 m, one rotated): each is resampled once onto the one region grid,
    its target on its pixel; a scene's registration correction moves only that scene."""
    src = make_source(tmp_path, fixtures)
    as_region_source(src, "A")
    b = src / "scenes" / "B"
    b.mkdir(parents=True)
    shutil.copy(src / "sar_metadata.json", b / "sar_metadata.json")
    scale = json.loads((b / "sar_metadata.json").read_text())["collect"]["image"]["scale_factor"]
    write_sar(b / "sar.tif", scale, res=0.3, size=1000, rotation_deg=20.0)
    os.link(src / "eo.tif", b / "eo.tif")
    (b / "provenance.json").write_text((src / "scenes" / "A" / "provenance.json").read_text())
    prov = json.loads((src / "provenance.json").read_text())
    prov["scenes"].append({**prov["scenes"][0], "scene": "B"})
    (src / "provenance.json").write_text(json.dumps(prov))
    reg_dir = tmp_path / "registration"
    (reg_dir / "scenes" / "B").mkdir(parents=True)
    (reg_dir / "scenes" / "B" / "registration.json").write_text(json.dumps(
        {"applied": True, "sar_crs": "EPSG:32635", "correction": [1, 0, 2.0, 0, 1, 0]}))  # B 2 m east
    reg = region(tmp_path)
    grid = grid_region(reg, SourceFiles(src), RegistrationFiles(reg_dir), GridFiles(tmp_path / "grid"), SMALL)
    ec, er = grid.lonlat_to_pixel(LON, LAT)
    for scene, shift_px in (("A", 0.0), ("B", 2.0 / grid.gsd_m)):
        with rasterio.open(tmp_path / "grid" / "scenes" / scene / "sar_db.tif") as ds:
            assert ds.transform == grid.transform and ds.shape == grid.shape and ds.tags()["scene"] == scene
            col, row = peak_centroid(10 ** (ds.read(1) / 10))
        assert np.hypot(col - (ec + shift_px), row - er) < 0.15, (scene, col - ec, row - er)
    assert (tmp_path / "grid" / "eo.tif").is_file() and not (tmp_path / "grid" / "scenes" / "B" / "eo.tif").exists()
