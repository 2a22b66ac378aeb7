"""Reproduce the two re-encoded rasters in tests/data from the original sample files.

    python tests/data/make_crops.py ORIGINALS_DIR

ORIGINALS_DIR holds the originals in the same layout (umbra/umbra_mount_yasur.tiff,
eo/atlanta_pan_0p5m.tif); see NOTICE.md for where they come from. Not run by the tests. Every
other file in tests/data is a byte-for-byte copy of its original.

- umbra/umbra_mount_yasur.tiff: the centre 960x960 pixels (rows and columns 520-1479) of the
  2000x2000 original, georeferencing adjusted to the window (same rotated affine, same pixel size,
  same CRS), uint8 values unchanged, DEFLATE-compressed. The centre pixel stays the same point, so
  the +-0.002 deg box that tests/test_warp.py::test_umbra_is_relative_db grids around it needs
  source pixels 544-1455 x 558-1441 of the original (pipeline.warp.source_window, 2 px pad),
  which lie inside the crop with a margin of at least 24 px: the gridded result is the same (same no-data
  mask; values equal to float32 rounding, at most 8e-6 dB apart).
- eo/atlanta_pan_0p5m.tif: the full 900x900 uint16 chip, re-encoded with DEFLATE (lossless):
  size, georeferencing, nodata and every pixel value are unchanged.
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import rasterio
from rasterio.windows import Window

HERE = Path(__file__).resolve().parent
UMBRA_CROP = 960  # even, so the crop's centre is the original's centre
LOSSLESS = {"compress": "deflate", "predictor": 2, "zlevel": 9}


def rewrite(src_path: Path, dst_path: Path, window: Window | None = None) -> None:
    with rasterio.open(src_path) as src:
        profile = src.profile
        data = src.read(window=window)
        if window is not None:
            profile.update(width=int(window.width), height=int(window.height),
                           transform=src.window_transform(window))
        tags = src.tags()
    profile.update(LOSSLESS)
    dst_path.parent.mkdir(parents=True, exist_ok=True)
    with rasterio.open(dst_path, "w", **profile) as dst:
        dst.write(data)
        dst.update_tags(**tags)
    with rasterio.open(dst_path) as check:  # lossless: the values read back are the values written
        assert np.array_equal(check.read(), data), dst_path


def main(originals: Path) -> None:
    off = (2000 - UMBRA_CROP) // 2
    rewrite(originals / "umbra" / "umbra_mount_yasur.tiff", HERE / "umbra" / "umbra_mount_yasur.tiff",
            Window(off, off, UMBRA_CROP, UMBRA_CROP))
    rewrite(originals / "eo" / "atlanta_pan_0p5m.tif", HERE / "eo" / "atlanta_pan_0p5m.tif")


if __name__ == "__main__":
    if len(sys.argv) != 2:
        sys.exit(__doc__)
    main(Path(sys.argv[1]))
