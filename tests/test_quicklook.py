"""Quick looks carry a dB colour bar (the stretch used) and a ground scale bar of a round length."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import rasterio
from PIL import Image

from pipeline.grid import grid_for_bbox, metres_per_degree
from pipeline.quicklook import nice_length, sar_preview, side_by_side


def _layers(tmp: Path, calibrated: bool) -> tuple[Path, Path, float]:
    grid = grid_for_bbox((24.94, 60.166, 24.946, 60.169), 1.0)
    h, w = grid.height, grid.width
    db = np.tile(np.linspace(-30, 10, w, dtype=np.float32), (h, 1))
    prof = dict(driver="GTiff", width=w, height=h, crs=grid.crs, transform=grid.transform)
    with rasterio.open(tmp / "sar_db.tif", "w", count=1, dtype="float32", **prof) as ds:
        ds.write(db, 1)
        ds.update_tags(calibrated="true" if calibrated else "false")
    with rasterio.open(tmp / "eo.tif", "w", count=4, dtype="uint8", **prof) as ds:
        ds.write(np.full((4, h, w), 255, np.uint8))
    return tmp / "sar_db.tif", tmp / "eo.tif", abs(grid.transform.a) * metres_per_degree(60.1675)[0]


@pytest.mark.parametrize("calibrated", [True, False])
def test_colour_bar_and_scale_bar(tmp_path: Path, calibrated: bool) -> None:
    sar, eo, m_px = _layers(tmp_path, calibrated)
    png = side_by_side(sar, eo, tmp_path / "q.png", max_size=200, title="t")
    prev = sar_preview(sar, 200, (-25.0, 5.0))
    assert prev.calibrated is calibrated
    if calibrated:
        assert (prev.lo, prev.hi) == (-25.0, 5.0)
    else:  # relative: its own 2-98 % percentiles of the -30..10 ramp
        assert prev.lo == pytest.approx(-29.2, abs=0.3) and prev.hi == pytest.approx(9.2, abs=0.3)
    im = np.asarray(Image.open(png).convert("RGB")).astype(int)
    strip = im[-40:]
    ramp_row = strip[8, 5:40, 0]  # inside the colour bar: grey rising left to right
    assert np.all(np.diff(ramp_row) >= 0) and ramp_row[-1] > ramp_row[0]
    assert np.all(strip[8, 5:40, 0] == strip[8, 5:40, 1])  # grey
    # scale bar: the one solid black run right of the colour bar, a round length in metres
    black = np.all(strip[8] == 0, axis=1)
    runs = np.flatnonzero(np.diff(np.r_[0, black.astype(int), 0]))
    starts, ends = runs[::2], runs[1::2]
    bar = max(zip(starts, ends), key=lambda r: r[1] - r[0])
    assert bar[0] > 40
    length_m = (bar[1] - bar[0] - 1) * prev.metres_per_px
    with rasterio.open(sar) as ds:
        decimation = ds.width / prev.rgb.shape[1]
    assert decimation > 1 and prev.metres_per_px == pytest.approx(m_px * decimation, rel=1e-6)
    assert length_m == pytest.approx(nice_length(length_m * 1.02), rel=0.03)


def test_nice_length() -> None:
    assert [nice_length(x) for x in (0.7, 7, 19, 260, 4999)] == [0.5, 5, 10, 200, 2000]
