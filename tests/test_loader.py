"""Training loader: fast path equals zarr-python, selection, fork/pickle safety, no torch at import."""

from __future__ import annotations

import multiprocessing as mp
import pickle
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from pipeline.loader import PatchDataset, ShardReader, UnsupportedLayout
from pipeline.store import META_ARRAYS, N_CLASSES, write_store

SIZE = 32


def _meta(n: int, region: str, splits: list[str]) -> dict:
    meta = {}
    for name, dtype in META_ARRAYS.items():
        meta[name] = np.array([f"{region}_{i}" for i in range(n)], object) if dtype == "str" else np.zeros(n, dtype)
    meta["split"] = np.array(splits, object)
    meta["class_hist"] = np.zeros((n, N_CLASSES), np.int32)
    return meta


def make_store(path: Path, n: int, region: str, urban: str, seed: int, shard: int = 8) -> dict[str, np.ndarray]:
    """A store with random images (NaN holes in SAR, some all-fill patches) and mixed splits."""
    rng = np.random.default_rng(seed)
    sar = rng.normal(-12, 4, (n, 1, SIZE, SIZE)).astype("float32")
    sar[:, :, :3, :5] = np.nan
    sar[1] = np.nan  # a chunk equal to the fill value
    eo = rng.integers(0, 256, (n, 3, SIZE, SIZE), dtype=np.uint8)
    eo[2] = 0
    label = rng.integers(0, 25, (n, SIZE, SIZE), dtype=np.uint8)
    label[3] = 255
    splits = [("train", "val", "test")[i % 3] for i in range(n)]
    attrs = {"region": region, "urban_rural": {"class": urban}}
    write_store(path, sar, eo, label, _meta(n, region, splits), attrs, shard_patches=shard)
    return {"sar": sar, "eo": eo, "label": label, "split": np.array(splits)}


@pytest.fixture(scope="module")
def stores(tmp_path_factory):
    root = tmp_path_factory.mktemp("stores")
    a = make_store(root / "a.zarr", 29, "alpha", "urban", 1)  # 29 = 3 full shards + a partial one
    b = make_store(root / "b.zarr", 12, "beta", "rural", 2, shard=5)
    return {"a": (root / "a.zarr", a), "b": (root / "b.zarr", b)}


def test_fast_path_equals_zarr_python(stores):
    import zarr

    for path, truth in stores.values():
        group = zarr.open_group(str(path), mode="r")
        for name in ("sar", "eo", "label"):
            reader = ShardReader(path / name)
            ref = group[name][:]
            np.testing.assert_array_equal(ref, truth[name])  # the store holds what was written
            for i in range(ref.shape[0]):
                np.testing.assert_array_equal(reader.read(i), ref[i])
            with pytest.raises(IndexError):
                reader.read(ref.shape[0])
            reader.close()


def test_fast_path_reads_holes_as_fill_value(tmp_path):
    """Chunks zarr never wrote (write_empty_chunks off) come back as the fill value."""
    import zarr
    from zarr.codecs import ZstdCodec

    arr = zarr.create_array(str(tmp_path / "x"), shape=(10, 4, 4), chunks=(1, 4, 4), shards=(4, 4, 4), dtype="float32",
                            fill_value=np.nan, compressors=ZstdCodec(level=1), zarr_format=3)  # fmt: skip
    data = np.full((10, 4, 4), np.nan, np.float32)
    data[5] = 1.5
    arr[:] = data
    reader = ShardReader(tmp_path / "x")
    for i in range(10):
        np.testing.assert_array_equal(reader.read(i), data[i])


def test_unsupported_layout_falls_back_to_zarr(tmp_path, stores):
    import zarr

    path, truth = stores["b"]
    # an unsharded copy of the label array: the fast reader refuses, the dataset still reads it
    plain = tmp_path / "plain.zarr"
    import shutil

    shutil.copytree(path, plain)
    shutil.rmtree(plain / "label")
    g = zarr.open_group(str(plain), mode="r+")
    g.create_array("label", shape=truth["label"].shape, chunks=(1, SIZE, SIZE), dtype="uint8", fill_value=255,
                   dimension_names=("patch", "y", "x"))  # fmt: skip
    g["label"][:] = truth["label"]
    with pytest.raises(UnsupportedLayout):
        ShardReader(plain / "label")
    ds = PatchDataset(plain)
    for i in range(len(ds)):
        np.testing.assert_array_equal(ds[i]["label"], truth["label"][i])
        np.testing.assert_array_equal(ds[i]["sar"], truth["sar"][i])


def test_selection_by_split_region_and_urban(stores):
    pa, ta = stores["a"]
    pb, tb = stores["b"]
    both = PatchDataset([pa, pb])
    assert len(both) == 29 + 12
    train = PatchDataset([pa, pb], split="train")
    assert len(train) == (ta["split"] == "train").sum() + (tb["split"] == "train").sum()
    assert {train[i]["split"] for i in range(len(train))} == {"train"}
    rural = PatchDataset([pa, pb], urban="rural", split=["val", "test"], layers=("label",), meta=("row",))
    assert len(rural) == (tb["split"] != "train").sum()
    item = rural[0]
    assert set(item) == {"label", "id", "region", "split", "row"} and item["region"] == "beta"
    assert len(PatchDataset([pa, pb], regions=["alpha"])) == 29
    assert len(PatchDataset([pa, pb], urban=True)) == 29
    # items are the right patches, in store order
    sel = np.flatnonzero(ta["split"] == "val")
    val = PatchDataset(pa, split="val")
    for k, i in enumerate(sel):
        np.testing.assert_array_equal(val[k]["eo"], ta["eo"][i])
        assert val[k]["id"] == f"alpha_{i}"
    assert val[-1]["id"] == f"alpha_{sel[-1]}"
    with pytest.raises(IndexError):
        val[len(val)]
    with pytest.raises(ValueError, match="layers"):
        PatchDataset(pa, layers=("dem",))


def _child_reads(ds: PatchDataset, idx: list[int], q) -> None:
    q.put([(ds[i]["id"], float(np.nansum(ds[i]["sar"])), int(ds[i]["label"].sum())) for i in idx])


def test_fork_and_pickle_safety(stores):
    path, truth = stores["a"]
    ds = PatchDataset(path)
    ds[0]  # open readers in the parent before forking, as a careless user would
    parent_fds = dict(ds._readers[0]["sar"]._fds)
    ctx = mp.get_context("fork")
    q = ctx.Queue()
    procs = [ctx.Process(target=_child_reads, args=(ds, list(range(w, 29, 2)), q)) for w in range(2)]
    for p in procs:
        p.start()
    got = [q.get(timeout=30) for _ in procs]
    for p in procs:
        p.join(timeout=30)
        assert p.exitcode == 0
    flat = sorted(x for g in got for x in g)
    want = sorted((f"alpha_{i}", float(np.nansum(truth["sar"][i])), int(truth["label"][i].sum())) for i in range(29))
    assert [x[0] for x in flat] == [x[0] for x in want]
    np.testing.assert_allclose([x[1] for x in flat], [x[1] for x in want], rtol=1e-6)
    assert [x[2] for x in flat] == [x[2] for x in want]
    # the parent's handles are untouched and still work
    assert ds._readers[0]["sar"]._fds == parent_fds
    np.testing.assert_array_equal(ds[5]["eo"], truth["eo"][5])
    clone = pickle.loads(pickle.dumps(ds))
    assert clone._readers == [] and clone[7]["id"] == "alpha_7"


def test_module_import_does_not_need_torch():
    code = "import sys, pipeline.loader; assert 'torch' not in sys.modules; print('ok')"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=Path(__file__).parents[1])
    assert out.returncode == 0 and out.stdout.strip() == "ok", out.stderr


def test_as_torch(stores):
    torch = pytest.importorskip("torch")
    path, truth = stores["a"]
    item = PatchDataset(path, as_torch=True)[4]
    assert isinstance(item["sar"], torch.Tensor) and item["eo"].dtype == torch.uint8
    np.testing.assert_array_equal(item["label"].numpy(), truth["label"][4])


def test_items_are_writable_arrays_of_their_own(stores):
    """Users normalise patches in place: arrays must be writable and not share memory between reads."""
    path, truth = stores["a"]
    ds = PatchDataset(path)
    a, b = ds[3], ds[3]
    for name in ("sar", "eo", "label"):
        assert a[name].flags.writeable and not np.shares_memory(a[name], b[name])
    a["sar"][np.isnan(a["sar"])] = -30.0
    a["label"][:] = 0
    np.testing.assert_array_equal(ds[3]["label"], truth["label"][3])  # the store is untouched


def test_corrupt_shard_index_is_refused(stores, tmp_path):
    """A flipped bit in a shard's index fails its crc32c instead of reading a wrong chunk."""
    import shutil

    from pipeline.loader import crc32c
    from pipeline.store import StoreError

    assert crc32c(b"123456789") == 0xE3069283  # the CRC-32C check value
    path, truth = stores["a"]
    copy = tmp_path / "a.zarr"
    shutil.copytree(path, copy)
    np.testing.assert_array_equal(PatchDataset(copy)[0]["label"], truth["label"][0])  # the intact copy reads
    shard = copy / "label" / "c" / "0" / "0" / "0"
    data = bytearray(shard.read_bytes())
    data[-20] ^= 0x01  # inside the index (it sits at the end, before its 4-byte checksum)
    shard.write_bytes(bytes(data))
    with pytest.raises(StoreError, match=r"shard 0: index is truncated or fails its crc32c check"):
        PatchDataset(copy)[0]
