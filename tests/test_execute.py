"""The execution layer on a real dask.distributed LocalCluster (2 worker processes, loopback only).

Same bytes as the local run, an unreachable scheduler named after a bounded wait, a worker killed
mid-stage (the engine re-runs its task: same bytes), a task failing for good naming region and block.
"""

from __future__ import annotations

import os
import shutil
import sys
import time
from pathlib import Path

import pytest
from servers import dead_port  # noqa: F401  (fixture)

from pipeline.cli import main
from pipeline.execute import ComputeError, ComputeParams, Executor, TaskError

distributed = pytest.importorskip("distributed")
import cloudpickle  # noqa: E402

cloudpickle.register_pickle_by_value(sys.modules[__name__])  # workers cannot import this test module

STAGES = ("register", "grid", "labels", "patches")


@pytest.fixture(scope="module")
def cluster():
    with distributed.LocalCluster(n_workers=2, threads_per_worker=1, processes=True, dashboard_address=None,
                                  host="127.0.0.1") as c:
        yield c


def _files(top: Path) -> dict[str, bytes]:
    return {str(p.relative_to(top)): p.read_bytes() for p in sorted(top.rglob("*")) if p.is_file()}


def _outputs(data: Path, region: str) -> dict[str, bytes]:
    out = {}
    for sub in ("registration", "grid", "labels"):
        out.update({f"{sub}/{k}": v for k, v in _files(data / "regions" / region / sub).items()})
    out.update({f"store/{k}": v for k, v in _files(data / "patches" / f"{region}.zarr").items()})
    return out


def _copy_sources(built: Path, dest: Path, region: str) -> Path:
    """A data folder holding only the region's fetched sources (the stages under test rebuild the rest)."""
    shutil.copytree(built / "data" / "regions" / region / "source", dest / "regions" / region / "source",
                    symlinks=True)
    return dest


class _KillOnce(distributed.WorkerPlugin):
    """A worker plugin: the first patch-shard task to start kills its worker process (once per marker file)."""

    def __init__(self, marker: str) -> None:
        self.marker = marker

    def transition(self, key, start, finish, **kw) -> None:
        if finish == "executing" and "patches-" in str(key) and not os.path.exists(self.marker):
            Path(self.marker).write_text(str(os.getpid()))
            os._exit(1)


def test_two_worker_processes_give_the_local_bytes(built: Path, cluster, tmp_path: Path) -> None:
    """Every heavy stage on 2 worker processes: byte-identical outputs to the local (threads) build."""
    region = "uppland"  # one scene: the test stays short
    data = _copy_sources(built, tmp_path / "data", region)
    for stage in STAGES:
        assert main(["--root", str(built), "--data", str(data), "-q", "--scheduler", cluster.scheduler_address,
                     stage, region]) == 0
    local, remote = _outputs(built / "data", region), _outputs(data, region)
    assert sorted(remote) == sorted(local)
    assert [k for k in local if local[k] != remote[k]] == []


def test_a_worker_killed_mid_stage_gives_the_same_bytes(built: Path, cluster, tmp_path: Path) -> None:
    """A worker dies while cutting a shard: the scheduler re-runs the task elsewhere, the store is the same."""
    region = "helsinki"  # four scenes, many shards
    data = _copy_sources(built, tmp_path / "data", region)
    for sub in ("registration", "grid", "labels"):  # the stages before patches, as built locally
        shutil.copytree(built / "data" / "regions" / region / sub, data / "regions" / region / sub)
    marker = tmp_path / "killed"
    client = distributed.Client(cluster, set_as_default=False)
    try:
        client.register_plugin(_KillOnce(str(marker)), name="kill-once")
        assert main(["--root", str(built), "--data", str(data), "-q", "--scheduler", cluster.scheduler_address,
                     "patches", region]) == 0
        client.unregister_worker_plugin("kill-once")
    finally:
        client.close()
    assert marker.exists()  # a worker really died mid-stage
    store = f"patches/{region}.zarr"
    assert _files(data / store) == _files(built / "data" / store)
    client = distributed.Client(cluster, set_as_default=False)
    try:
        client.wait_for_workers(2, timeout=30)  # the nanny restarted it, for the next test
    finally:
        client.close()


def test_an_unreachable_scheduler_is_named_after_a_bounded_wait(dead_port: int) -> None:
    address = f"tcp://127.0.0.1:{dead_port}"
    ex = Executor(ComputeParams(connect_timeout_s=1.0), address)
    t0 = time.perf_counter()
    with pytest.raises(ComputeError, match=rf"compute.scheduler {address}: no dask scheduler answered within 1 s"):
        list(ex.map(abs, [1, 2], "grid x: sar"))
    assert time.perf_counter() - t0 < 8
    with pytest.raises(ComputeError, match=r"--scheduler 'localhost': expected a dask scheduler address"):
        Executor(ComputeParams(), "localhost")


def test_a_task_failing_for_good_names_region_and_block(tmp_path: Path, fixtures: Path, cluster) -> None:
    """A source truncated after fetch: on the cluster the grid stage fails naming region, scene and block."""
    from sources import as_region_source
    from test_warp import SMALL, make_source, region

    from pipeline.layout import GridFiles, SourceFiles
    from pipeline.warp import grid_region

    src = make_source(tmp_path, fixtures, size=640)
    sar = src / "sar.tif"
    sar.write_bytes(sar.read_bytes()[: sar.stat().st_size // 4])
    as_region_source(src)
    reg = region(tmp_path)
    ex = Executor(ComputeParams(retries=1), cluster.scheduler_address)
    try:
        with pytest.raises(TaskError, match=rf"grid {reg.name}: scene scene-1 sar: block row \d+ col \d+: failed for "
                           r"good on dask scheduler .* \(1 retries\): RasterReadError: .*sar.tif: cannot be read"):
            grid_region(reg, SourceFiles(src), None, GridFiles(tmp_path / "grid"), SMALL, executor=ex)
    finally:
        ex.close()
    assert not (tmp_path / "grid").exists()


def test_gdal_cache_is_in_mib() -> None:
    """rasterio takes GDAL_CACHEMAX in bytes: `gdal_cache(37)` must give GDAL a 37 MiB cache, not 37 bytes."""
    import ctypes
    import glob
    import os

    import rasterio

    from pipeline.execute import gdal_cache

    libs = glob.glob(os.path.join(os.path.dirname(rasterio.__file__) + ".libs", "libgdal*"))
    if not libs:
        pytest.skip("rasterio without a bundled libgdal (a system GDAL build)")
    gdal = ctypes.CDLL(libs[0])
    gdal.GDALGetCacheMax64.restype = ctypes.c_int64
    with gdal_cache(37):
        assert gdal.GDALGetCacheMax64() == 37 * 2**20
    with rasterio.Env(GDAL_CACHEMAX=37):  # the trap this guards against
        assert gdal.GDALGetCacheMax64() == 37
