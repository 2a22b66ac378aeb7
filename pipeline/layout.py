"""Where every file lives: the one place that spells the paths between stages.

A stage receives the file sets it reads and the one it writes (e.g. :class:`GridFiles`),
never a region directory to look around in. Each file set is rooted at a directory and can be
re-rooted at a temporary one (:meth:`at`), which is how stages write their outputs atomically.
``dvc.yaml`` is generated from the same objects (see :mod:`pipeline.stages`), so a path cannot
differ between the code and the build.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

F = TypeVar("F", bound="_Files")

INDEX_FILE = "regions.index.yaml"


@dataclass(frozen=True)
class _Files:
    """A stage's directory; subclasses name the files in it."""

    dir: Path

    def at(self: F, directory: Path) -> F:
        """The same file set rooted at ``directory`` (a temporary stage directory, say)."""
        return dataclasses.replace(self, dir=Path(directory))

    def scene(self: F, scene_id: str) -> F:
        """The same file set for one SAR scene of the region: ``DIR/scenes/SCENE_ID/``."""
        return dataclasses.replace(self, dir=self.dir / "scenes" / scene_id)


@dataclass(frozen=True)
class SourceFiles(_Files):
    """What fetch writes: the region's inputs as downloaded, with their provenance.

    The region's directory holds the OSM input, the region EO and ``provenance.json`` (OSM, EO and
    the scene list); each SAR scene has its own complete set under ``scene(ID)``: sar.tif,
    sar_metadata.json, eo.tif (its EO: the region's, hardlinked, or its own) and provenance.json.
    """

    @property
    def sar(self) -> Path:
        return self.dir / "sar.tif"

    @property
    def sar_metadata(self) -> Path:
        return self.dir / "sar_metadata.json"

    @property
    def eo(self) -> Path:
        return self.dir / "eo.tif"

    @property
    def provenance(self) -> Path:
        return self.dir / "provenance.json"

    def osm(self, name: str) -> Path:
        """The gathered OSM input ``name`` (``osm.osm``, ``osm.osm.pbf``...; provenance records which)."""
        return self.dir / name


@dataclass(frozen=True)
class RegistrationFiles(_Files):
    """What register writes: per scene (``scene(ID)``) the correction and a picture of it; for the
    region a summary record of all scenes and the first scene's overlay."""

    @property
    def record(self) -> Path:
        return self.dir / "registration.json"

    @property
    def overlay(self) -> Path:
        return self.dir / "overlay.png"


@dataclass(frozen=True)
class GridFiles(_Files):
    """What grid writes: the region grid and the region EO warped onto it; per scene (``scene(ID)``)
    its SAR in dB on the same grid (and its own EO when it has one), with a quick look."""

    @property
    def grid(self) -> Path:
        return self.dir / "grid.json"

    @property
    def sar_db(self) -> Path:
        return self.dir / "sar_db.tif"

    @property
    def eo(self) -> Path:
        return self.dir / "eo.tif"

    @property
    def quicklook(self) -> Path:
        return self.dir / "quicklook.png"


@dataclass(frozen=True)
class LabelFiles(_Files):
    """What labels writes: the class raster, the urban zones and the report."""

    @property
    def labels(self) -> Path:
        return self.dir / "labels.tif"

    @property
    def zones(self) -> Path:
        return self.dir / "zones.tif"

    @property
    def report(self) -> Path:
        return self.dir / "labels.json"

    @property
    def png(self) -> Path:
        return self.dir / "labels.png"


@dataclass(frozen=True)
class DatasetFiles(_Files):
    """What publish writes beside the stores."""

    @property
    def index(self) -> Path:
        return self.dir / "index.parquet"

    @property
    def stats(self) -> Path:
        return self.dir / "stats.json"

    @property
    def plots(self) -> Path:
        return self.dir / "plots"

    @property
    def splits(self) -> Path:
        """Per-split copies of the index rows (splits/train.parquet...), the card's split configs."""
        return self.dir / "splits"

    @property
    def card(self) -> Path:
        return self.dir / "README.md"

    @property
    def croissant(self) -> Path:
        return self.dir / "croissant.json"

    @property
    def browser(self) -> Path:
        return self.dir / "index.html"


@dataclass(frozen=True)
class RegionLayout:
    """Every stage directory of one region (``data/regions/NAME/...``) and its patch store."""

    data: Path
    name: str
    remote: str | None = None  # the s3:// data prefix under `--data s3://` (data is then a scratch copy)

    @property
    def dir(self) -> Path:
        return self.data / "regions" / self.name

    @property
    def source(self) -> SourceFiles:
        return SourceFiles(self.dir / "source")

    @property
    def registration(self) -> RegistrationFiles:
        return RegistrationFiles(self.dir / "registration")

    @property
    def grid(self) -> GridFiles:
        return GridFiles(self.dir / "grid")

    @property
    def labels(self) -> LabelFiles:
        return LabelFiles(self.dir / "labels")

    @property
    def store(self) -> Path:
        return self.data / "patches" / f"{self.name}.zarr"

    @property
    def store_out(self) -> str | Path:
        """Where the patches stage writes the store: its local path, or its URL under ``--data s3://``
        (written there directly, shard by shard)."""
        return self.store if self.remote is None else f"{self.remote}/patches/{self.name}.zarr"


@dataclass(frozen=True)
class ProjectLayout:
    """The project: region files, parameters, the data directory and the published dataset."""

    root: Path
    data: Path
    remote: str | None = None  # `--data s3://BUCKET/PREFIX`: the outputs' home; `data` is then a local scratch copy

    @classmethod
    def at(cls, root: str | Path, data: str | Path | None = None, remote: str | None = None) -> ProjectLayout:
        r = Path(root)
        return cls(r, Path(data) if data is not None else r / "data", remote.rstrip("/") if remote else None)

    def url_of(self, path: Path) -> str:
        """The URL under the remote data prefix of a (scratch) path under ``data``."""
        if self.remote is None:
            raise ValueError(f"{path}: no remote data prefix (--data s3://...) in this layout")
        return f"{self.remote}/{Path(path).relative_to(self.data).as_posix()}"

    @property
    def regions_dir(self) -> Path:
        return self.root / "regions"

    def region_file(self, name: str) -> Path:
        """regions/NAME.yaml, else the one regions/SET/NAME.yaml of a named set (the file may not exist)."""
        own = self.regions_dir / f"{name}.yaml"
        if own.exists():
            return own
        in_sets = sorted(self.regions_dir.glob(f"*/{name}.yaml"))
        return in_sets[0] if len(in_sets) == 1 else own

    @property
    def params_file(self) -> Path:
        return self.root / "params.yaml"

    @property
    def index_file(self) -> Path:
        return self.root / INDEX_FILE

    def region(self, name: str) -> RegionLayout:
        return RegionLayout(self.data, name, self.remote)

    @property
    def patches_dir(self) -> Path:
        return self.data / "patches"

    @property
    def demo(self) -> Path:
        return self.data / "demo"

    @property
    def dataset(self) -> DatasetFiles:
        return DatasetFiles(self.data / "dataset")

    @property
    def stac(self) -> Path:
        return self.root / "stac" / "dataset"

    def stale_outputs(self, names: list[str] | tuple[str, ...]) -> list[Path]:
        """Stores and region directories under data/ of regions not in ``names`` (temporaries excluded)."""
        keep = set(names)
        stores = [p for p in sorted(self.patches_dir.glob("*.zarr")) if p.stem not in keep]
        regions = self.data / "regions"
        dirs = [p for p in sorted(regions.iterdir()) if p.is_dir() and not p.name.startswith(".")
                and p.name not in keep] if regions.is_dir() else []
        return stores + dirs

    def lock(self, stage: str, region: str | None = None) -> Path:
        """The lock file of one stage run (``data/.locks/STAGE@REGION.lock``): outside every DVC output."""
        return self.data / ".locks" / (f"{stage}@{region}.lock" if region else f"{stage}.lock")

    def cache(self, cache_dir: str | Path) -> Path:
        """A cache directory from params: relative paths are relative to the project root."""
        p = Path(cache_dir)
        return p if p.is_absolute() else self.root / p
