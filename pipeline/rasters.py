"""Raster reads whose errors name the file: GDAL's own say "Read failed. See previous exception"."""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator


class RasterReadError(ValueError):
    """A raster that opens but cannot be read (truncated, corrupt); the message names the file."""


@contextlib.contextmanager
def reading(path: str | os.PathLike[str], what: str = "") -> Iterator[None]:
    """Turn rasterio/GDAL read errors inside the block into one error naming ``path`` (and ``what``)."""
    from rasterio._err import CPLE_BaseError
    from rasterio.errors import RasterioError

    try:
        yield
    except (RasterioError, CPLE_BaseError) as exc:
        cause = exc.__cause__ or exc.__context__
        detail = f"{exc}: {cause}" if cause is not None and str(cause) not in str(exc) else str(exc)
        where = f" ({what})" if what else ""
        raise RasterReadError(f"{path}: cannot be read{where}: {detail}; the file is truncated or corrupt, "
                              "fetch the region again") from exc
