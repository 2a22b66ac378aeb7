"""Training loader: fast path equals zarr-python, selection, fork/pickle safety, no torch at import."""

from __future__ import annotations

import gc
import json
import multiprocessing as mp
import os
import pickle
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from pipeline.loader import PatchDataset, ShardReader, UnsupportedLayout
from pipeline.store import META_ARRAYS, N_CLASSES, StoreError, write_store
from servers import s3_server  # noqa: F401  (pytest fixture; tests/ is on sys.path under pytest)

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
    """Generic arrays: chunks zarr never wrote (write_empty_chunks off) are the fill value when asked;
    by default (the patch store writes every chunk) they are an error naming array and patch."""
    import zarr
    from zarr.codecs import ZstdCodec

    arr = zarr.create_array(str(tmp_path / "x"), shape=(10, 4, 4), chunks=(1, 4, 4), shards=(4, 4, 4), dtype="float32",
                            fill_value=np.nan, compressors=ZstdCodec(level=1), zarr_format=3)  # fmt: skip
    data = np.full((10, 4, 4), np.nan, np.float32)
    data[5] = 1.5
    arr[:] = data
    reader = ShardReader(tmp_path / "x", missing="fill")
    for i in range(10):
        np.testing.assert_array_equal(reader.read(i), data[i])
    strict = ShardReader(tmp_path / "x")
    np.testing.assert_array_equal(strict.read(5), data[5])
    with pytest.raises(StoreError, match=r"array 'x', patch 4: chunk missing from shard"):
        strict.read(4)
    with pytest.raises(StoreError, match=r"array 'x', patch 9: shard file .*x/c/2/0/0 is missing"):
        strict.read(9)


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
    parent_fds = dict(ds._readers[0]["sar"].source._fds)
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
    assert ds._readers[0]["sar"].source._fds == parent_fds
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

    assert crc32c(b"123456789") == 0xE3069283  # the CRC-32C check value
    path, truth = stores["a"]
    copy = tmp_path / "a.zarr"
    shutil.copytree(path, copy)
    np.testing.assert_array_equal(PatchDataset(copy)[0]["label"], truth["label"][0])  # the intact copy reads
    shard = copy / "label" / "c" / "0" / "0" / "0"
    data = bytearray(shard.read_bytes())
    data[-20] ^= 0x01  # inside the index (it sits at the end, before its 4-byte checksum)
    shard.write_bytes(bytes(data))
    with pytest.raises(StoreError, match=r"a.zarr: array 'label', patch 0: shard 0 .*: index is truncated or fails its "
                                         r"crc32c check"):
        PatchDataset(copy)[0]


# --- integrity: a real store written by the patches stage, then damaged -------------------------------------


@pytest.fixture(scope="module")
def stage_store(tmp_path_factory):
    """A store written by the patches stage itself (not write_store), on the test_patches region."""
    from test_patches import make_region_dir, run

    root = tmp_path_factory.mktemp("stage")
    store = root / "patches.zarr"
    run("testregion", make_region_dir(root / "r"), store)
    return store


def _damaged(stage_store: Path, tmp_path: Path) -> Path:
    import shutil

    copy = tmp_path / "damaged.zarr"
    shutil.copytree(stage_store, copy)
    return copy


def _chunk_span(array_dir: Path, shard: int, j: int, per_shard: int) -> tuple[Path, int, int]:
    """(shard file, offset, nbytes) of chunk j in the shard, from its index (at the end, + crc32c)."""
    path = array_dir / "c" / str(shard) / "/".join("0" for _ in range(len(json.loads(
        (array_dir / "zarr.json").read_text())["shape"]) - 1))  # fmt: skip
    raw = path.read_bytes()[-(per_shard * 16 + 4) : -4]
    off, n = np.frombuffer(raw, "<u8").reshape(per_shard, 2)[j]
    return path, int(off), int(n)


def test_every_chunk_of_a_stage_store_is_checksummed(stage_store):
    """The codec chain of every array ends in crc32c (after zstd), shard indexes carry one too,
    and fill-valued patches are stored (no holes), so a missing chunk can only mean damage."""
    for name in ("sar", "eo", "label", "id", "split", "class_hist"):
        meta = json.loads((stage_store / name / "zarr.json").read_text())
        codecs = meta["codecs"]
        if codecs[0]["name"] == "sharding_indexed":
            inner = codecs[0]["configuration"]
            assert [c["name"] for c in inner["codecs"]] == ["bytes", "zstd", "crc32c"], name
            assert [c["name"] for c in inner["index_codecs"]] == ["bytes", "crc32c"], name
        else:
            assert [c["name"] for c in codecs][-2:] == ["zstd", "crc32c"], name
    n = PatchDataset(stage_store, layers=()).__len__()
    for name in ("sar", "eo", "label"):
        reader = ShardReader(stage_store / name)
        for i in range(n):
            reader.read(i)  # strict: raises on any unwritten chunk


def test_store_keeps_fill_valued_patches(tmp_path):
    """write_store (and the stage's writer, same function) stores a patch equal to the fill value."""
    path = tmp_path / "s.zarr"
    truth = make_store(path, 6, "r", "urban", 0, shard=4)  # patch 1 all-NaN SAR, 2 all-0 EO, 3 all-255 label
    for name, i in (("sar", 1), ("eo", 2), ("label", 3)):
        reader = ShardReader(path / name)
        idx = reader._shard_index(0, i)[0]
        assert (idx[:, 0] != 2**64 - 1).all(), name
        np.testing.assert_array_equal(reader.read(i), truth[name][i])


def test_flipped_bytes_in_a_chunk_are_an_error_everywhere(stage_store, tmp_path):
    """64 flipped bytes inside one SAR chunk: sareo's loader, zarr-python and xarray all refuse that
    patch (before: one patch of +-3e38 values); the loader names store, array and patch."""
    import xarray as xr
    import zarr

    copy = _damaged(stage_store, tmp_path)
    per_shard = json.loads((copy / "sar" / "zarr.json").read_text())["chunk_grid"]["configuration"]["chunk_shape"][0]
    path, off, n = _chunk_span(copy / "sar", 0, 2, per_shard)
    data = bytearray(path.read_bytes())
    for k in range(64):
        data[off + n // 3 + k] ^= 0xFF
    path.write_bytes(bytes(data))
    ds = PatchDataset(copy)
    with pytest.raises(StoreError, match=rf"damaged.zarr: array 'sar', patch 2: chunk fails its crc32c check"):
        ds[2]
    with pytest.raises(StoreError, match=r"array 'sar', patch 2: chunk fails its crc32c"):
        ds.read_batch([0, 1, 2, 3])
    with pytest.raises(StoreError, match=r"damaged.zarr: array 'sar', patch 2: cannot decode .*checksum"):
        PatchDataset(copy, fast=False)[2]
    ref = PatchDataset(stage_store)
    for i in (0, 1, 3):  # the other patches of that shard still read, unchanged
        np.testing.assert_array_equal(ds[i]["sar"], ref[i]["sar"])
    with pytest.raises(ValueError, match="checksum"):
        zarr.open_group(str(copy), mode="r")["sar"][2]
    with pytest.raises(ValueError, match="checksum"):
        xr.open_zarr(copy, consolidated=False)["sar"][2].values


def test_corrupted_label_shard_names_the_store(stage_store, tmp_path):
    """Garbage over a label chunk (before: a bare ZstdError naming nothing)."""
    copy = _damaged(stage_store, tmp_path)
    per_shard = json.loads((copy / "label" / "zarr.json").read_text())["chunk_grid"]["configuration"]["chunk_shape"][0]
    path, off, n = _chunk_span(copy / "label", 0, 0, per_shard)
    data = bytearray(path.read_bytes())
    data[off : off + 8] = b"\x00" * 8  # destroys the zstd frame header
    path.write_bytes(bytes(data))
    with pytest.raises(StoreError, match=r"damaged.zarr: array 'label', patch 0: chunk fails its crc32c check"):
        PatchDataset(copy, layers=("label",))[0]
    with pytest.raises(StoreError, match=r"damaged.zarr: array 'label', patch 0: cannot decode"):
        PatchDataset(copy, layers=("label",), fast=False)[0]


def test_deleted_or_truncated_shard_is_an_error_not_fill_values(stage_store, tmp_path):
    """A deleted shard (before: all-NaN patches) and a truncated one are errors naming store, array, patch."""
    copy = _damaged(stage_store, tmp_path)
    per_shard = json.loads((copy / "sar" / "zarr.json").read_text())["chunk_grid"]["configuration"]["chunk_shape"][0]
    n = len(PatchDataset(copy, layers=()))
    assert n > per_shard  # at least two shards
    (copy / "sar" / "c" / "1" / "0" / "0" / "0").unlink()
    ds = PatchDataset(copy)
    ds[0]  # shard 0 is intact
    with pytest.raises(StoreError, match=rf"damaged.zarr: array 'sar', patch {per_shard}: shard file .*sar/c/1/0/0/0 "
                                         r"is missing"):  # fmt: skip
        ds[per_shard]
    eo = copy / "eo" / "c" / "0" / "0" / "0" / "0"
    eo.write_bytes(eo.read_bytes()[:-1000])
    with pytest.raises(StoreError, match=rf"damaged.zarr: array 'eo', patch {per_shard - 1}: shard .*eo/c/0/0/0/0 is "
                                         r"truncated"):  # fmt: skip
        ds[per_shard - 1]  # this process read the index before the cut: the chunk read comes up short
    with pytest.raises(StoreError, match=r"damaged.zarr: array 'eo', patch 0: shard 0 .*index is truncated or fails"):
        PatchDataset(copy)[0]  # a fresh reader finds no valid index at the new end


def test_corrupted_metadata_chunk_names_store_and_array(stage_store, tmp_path):
    copy = _damaged(stage_store, tmp_path)
    chunk = copy / "split" / "c" / "0"
    data = bytearray(chunk.read_bytes())
    data[len(data) // 2] ^= 0x10
    chunk.write_bytes(bytes(data))
    with pytest.raises(StoreError, match=r"damaged.zarr: array 'split': cannot decode .*checksum"):
        PatchDataset(copy)


# --- remote stores: s3:// on a loopback moto server, https:// from a loopback server with Range support ------


def _aws_env(monkeypatch, tmp_path: Path, endpoint: str | None, signed: bool = True) -> None:
    """Only the settings a test gives: no developer ~/.aws, no instance metadata lookups."""
    for var in ("AWS_PROFILE", "AWS_ENDPOINT_URL", "AWS_ENDPOINT_URL_S3", "AWS_ACCESS_KEY_ID",
                "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN"):  # fmt: skip
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "no-aws-config"))
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "no-aws-credentials"))
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")
    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-west-2")
    if endpoint:
        monkeypatch.setenv("AWS_ENDPOINT_URL", endpoint)
    if signed:
        monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
        monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")


def _assert_same(remote: PatchDataset, local: PatchDataset) -> None:
    assert len(remote) == len(local) and list(remote.patch_ids()) == list(local.patch_ids())
    for i in range(len(local)):
        a, b = remote[i], local[i]
        assert a.keys() == b.keys() and (a["id"], a["split"], a["region"]) == (b["id"], b["split"], b["region"])
        for name in local.layers:
            np.testing.assert_array_equal(a[name], b[name])
    order = np.random.default_rng(0).permutation(len(local))[:11]
    ba, bb = remote.read_batch(order), local.read_batch(order)
    for name in local.layers:
        np.testing.assert_array_equal(ba[name], bb[name])
    assert ba["id"] == bb["id"]


def test_s3_store_gives_the_local_arrays(s3_server, stores, tmp_path, monkeypatch):
    """Endpoint from AWS_ENDPOINT_URL, signed with the environment's credentials; then unsigned
    (no credentials: a public bucket); then the endpoint from a named profile."""
    path, _ = stores["b"]
    url = s3_server.publish(path, "loader-b", "patches/b.zarr", commit=True)
    _aws_env(monkeypatch, tmp_path, s3_server.endpoint)
    _assert_same(PatchDataset(url, split=["val", "test"]), PatchDataset(path, split=["val", "test"]))
    _aws_env(monkeypatch, tmp_path, s3_server.endpoint, signed=False)
    _assert_same(PatchDataset(url, layers=("label",), meta=("row",)), PatchDataset(path, layers=("label",), meta=("row",)))
    _aws_env(monkeypatch, tmp_path, None)
    (tmp_path / "no-aws-config").write_text(f"[profile lab]\nendpoint_url = {s3_server.endpoint}\n"
                                            "region = us-west-2\naws_access_key_id = testing\n"
                                            "aws_secret_access_key = testing\n")  # fmt: skip
    monkeypatch.setenv("AWS_PROFILE", "lab")
    _assert_same(PatchDataset(url, layers=("sar",)), PatchDataset(path, layers=("sar",)))


def test_s3_damage_and_bad_locations_are_named(s3_server, stage_store, tmp_path, monkeypatch):
    from pipeline.remote import RemoteError

    _aws_env(monkeypatch, tmp_path, s3_server.endpoint)
    copy = _damaged(stage_store, tmp_path)
    per_shard = json.loads((copy / "sar" / "zarr.json").read_text())["chunk_grid"]["configuration"]["chunk_shape"][0]
    spath, off, n = _chunk_span(copy / "sar", 0, 1, per_shard)
    data = bytearray(spath.read_bytes())
    data[off + n // 2] ^= 0x01  # one flipped bit
    spath.write_bytes(bytes(data))
    (copy / "label" / "c" / "1" / "0" / "0").unlink()
    url = s3_server.publish(copy, "loader-damaged", "d.zarr", commit=True)
    ds = PatchDataset(url)
    ds[0]
    with pytest.raises(StoreError, match=r"s3://loader-damaged/d.zarr: array 'sar', patch 1: chunk fails its crc32c"):
        ds[1]
    with pytest.raises(StoreError, match=rf"s3://loader-damaged/d.zarr: array 'label', patch {per_shard}: shard file "
                                         r"s3://loader-damaged/d.zarr/label/c/1/0/0 is missing"):  # fmt: skip
        ds[per_shard]
    with pytest.raises(StoreError, match=r"s3://loader-damaged/nothing.zarr: no such store"):
        PatchDataset("s3://loader-damaged/nothing.zarr")
    with pytest.raises(RemoteError, match=r"s3://no-such-bucket-here/x.zarr: bucket 'no-such-bucket-here' does not exist"):
        PatchDataset("s3://no-such-bucket-here/x.zarr")


def test_https_store_reads_each_index_once_and_one_range_per_chunk(stores, tmp_path):
    from range_server import serve_ranges

    path, _ = stores["a"]  # 29 patches in shards of 8: 4 shards per layer
    requests: list = []
    with serve_ranges(path.parent, requests) as base:
        url = f"{base}/{path.name}"
        local = PatchDataset(path)
        remote = PatchDataset(url)
        requests.clear()
        for _ in range(2):
            for i in range(len(remote)):
                remote[i]
        index = [r for r in requests if r[1] and r[1].startswith("bytes=-")]
        chunks = [r for r in requests if r[1] and not r[1].startswith("bytes=-")]
        assert len(index) == 3 * 4 and len({r[0] for r in index}) == 12  # once per shard and layer
        assert len(chunks) == 2 * 3 * 29
        assert sorted(r[0] for r in requests if r[1] is None) == [f"/a.zarr/{a}/zarr.json" for a in ("eo", "label", "sar")]
        _assert_same(remote, local)

        # a local cache: the second dataset (another process, another run) fetches only the indexes
        cache = tmp_path / "cache"
        first = PatchDataset(url, cache_dir=cache)
        _assert_same(first, local)
        requests.clear()
        again = PatchDataset(url, cache_dir=cache)
        _assert_same(again, local)
        assert all(r[1] is None or r[1].startswith("bytes=-") for r in requests), requests  # no chunk GET
        # a damaged cache entry fails its crc32c and is fetched again, not returned
        shard_file = sorted(cache.glob("*.shard"))[0]
        blob = bytearray(shard_file.read_bytes())
        blob[100:164] = b"\xff" * 64
        shard_file.write_bytes(bytes(blob))
        requests.clear()
        fresh = PatchDataset(url, cache_dir=cache)
        _assert_same(fresh, local)
        assert 1 <= sum(1 for r in requests if r[1] and not r[1].startswith("bytes=-")) <= 3

        # a shard replaced on the server after its index was read: refused, not mixed
        shard = path.parent / path.name / "eo" / "c" / "0" / "0" / "0" / "0"
        original = shard.read_bytes()
        reader = PatchDataset(url, layers=("eo",))
        reader[0]
        try:
            shard.write_bytes(original)
            os.utime(shard, ns=(1, 1))  # same bytes, new version (ETag)
            with pytest.raises(StoreError, match=r"array 'eo', patch 1: .*changed while being read"):
                reader[1]
        finally:
            shard.write_bytes(original)


def test_dataloader_workers_read_remote_stores(stores):
    """Fork-started DataLoader workers make their own HTTP clients; batches equal the local ones."""
    torch = pytest.importorskip("torch")
    from range_server import serve_ranges

    path, _ = stores["a"]
    with serve_ranges(path.parent) as base:
        remote = PatchDataset(f"{base}/{path.name}", as_torch=True)
        remote[0]  # a client made in the parent before the fork
        batches = list(remote.loader(batch_size=5, num_workers=2, persistent_workers=False))
    local = PatchDataset(path).read_batch(range(len(remote)))
    for name in ("sar", "eo", "label"):
        np.testing.assert_array_equal(torch.cat([b[name] for b in batches]).numpy(), local[name])
    assert [i for b in batches for i in b["id"]] == local["id"]


# --- batched reads and the DataLoader -----------------------------------------------------------------------


def test_read_batch_equals_items_across_stores(stores):
    pa, _ = stores["a"]
    pb, _ = stores["b"]
    ds = PatchDataset([pa, pb], meta=("row",))
    order = [40, 0, 28, 29, 3, -1, 17, 17]
    batch = ds.read_batch(order)
    for k, i in enumerate(order):
        item = ds[i]
        for name in ("sar", "eo", "label"):
            np.testing.assert_array_equal(batch[name][k], item[name])
        assert (batch["id"][k], batch["region"][k], batch["split"][k], batch["row"][k]) == (
            item["id"], item["region"], item["split"], item["row"])  # fmt: skip
    assert batch["sar"].shape == (8, 1, SIZE, SIZE) and batch["eo"].dtype == np.uint8
    with pytest.raises(IndexError):
        ds.read_batch([0, len(ds)])


def test_dataloader_batches_equal_items_with_both_collates(stores):
    """ds.loader (collate that takes the batch as is) and torch's default collate over the samples
    give the same batches as ds[i], from 2 workers; with ds.loader a batch arrives as one mapping
    of a worker's slot, not as tensors torch copied."""
    torch = pytest.importorskip("torch")
    from torch.utils.data import DataLoader

    path, truth = stores["a"]
    ds = PatchDataset(path, as_torch=True, meta=("row",))
    fast = list(ds.loader(batch_size=6, num_workers=2, persistent_workers=False))
    plain = list(DataLoader(ds, batch_size=6, num_workers=2))  # torch's default collate over the samples
    assert [len(b["id"]) for b in fast] == [6, 6, 6, 6, 5]
    for k, (a, b) in enumerate(zip(fast, plain)):
        assert type(a) is dict and list(a) == ["sar", "eo", "label", "id", "region", "split", "row"]
        assert a["id"] == b["id"] and a["split"] == b["split"]
        for name in ("sar", "eo", "label", "row"):
            np.testing.assert_array_equal(np.asarray(a[name]), np.asarray(b[name]))
        for j in range(len(a["id"])):
            item = ds[6 * k + j]
            for name in ("sar", "eo", "label"):
                np.testing.assert_array_equal(a[name][j].numpy(), item[name].numpy())
        mapped = {_mapping_of(a[name]) for name in ("sar", "eo", "label")}
        assert len(mapped) == 1 and "memfd:sareo-batch" in mapped.pop()
    np.testing.assert_array_equal(torch.cat([b["eo"] for b in fast]).numpy(), truth["eo"])


def _mapping_of(tensor) -> str:
    """The /proc/self/maps line of the mapping holding ``tensor``'s memory."""
    ptr = tensor.data_ptr()
    for line in Path("/proc/self/maps").read_text().splitlines():
        lo, hi = (int(v, 16) for v in line.split()[0].split("-"))
        if lo <= ptr < hi:
            return line
    raise AssertionError(f"no mapping holds {ptr:#x}")


def _slot_mappings() -> set[str]:
    return {line.split()[0] for line in Path("/proc/self/maps").read_text().splitlines() if "sareo-batch" in line}


def test_held_batches_and_views_are_never_overwritten(stores, monkeypatch):
    """Workers reuse a few shared slots: a slot is refilled only once every tensor and view of its
    batch is gone. Holding more batches (or just a view of each) than there are slots, every one
    still equals ds[i]; batches dropped as they come reuse the slots."""
    torch = pytest.importorskip("torch")
    import pipeline.loader as loader_module

    monkeypatch.setattr(loader_module, "SHARED_SLOTS", 2)  # workers fork with it
    path, _ = stores["a"]
    ds = PatchDataset(path, as_torch=True)
    want = PatchDataset(path).read_batch(range(len(ds)))
    loader = ds.loader(batch_size=2, num_workers=2, prefetch_factor=2)
    held = list(loader)  # 15 batches, at most 2 slots per worker
    views = [b["sar"][:, 0, 5] for b in loader]  # a view of each batch; the dicts are dropped
    for name in ("sar", "eo", "label"):
        np.testing.assert_array_equal(torch.cat([b[name] for b in held]).numpy(), want[name])
    np.testing.assert_array_equal(torch.cat(views).numpy(), want["sar"][:, 0, 5])
    del held, views
    monkeypatch.setattr(loader_module, "SHARED_SLOTS", 3)  # 1 batch prefetched + 1 held + 1 being read
    loader = ds.loader(batch_size=2, num_workers=2, prefetch_factor=1)
    inodes, n = set(), 0
    for _ in range(3):
        for b in loader:
            where = _mapping_of(b["label"])
            assert "memfd:sareo-batch" in where, where  # not a fresh block: the slots were free again
            inodes.add(where.split()[4])
            np.testing.assert_array_equal(b["label"].numpy(), want["label"][2 * (n % 15) : 2 * (n % 15) + 2])
            n += 1
            del b
    assert n == 45 and len(inodes) <= 2 * 3  # 45 batches through at most 3 slots per worker


def test_loader_leaves_no_shared_memory_behind(stores):
    """After a loader is done and its batches are dropped: nothing new in /dev/shm, no slot still
    mapped in this process, no descriptor left open (each of these grows on a leak)."""
    pytest.importorskip("torch")
    path, truth = stores["a"]
    ds = PatchDataset(path, as_torch=True)
    shm_before, fds_before = set(os.listdir("/dev/shm")), set(os.listdir("/proc/self/fd"))
    for workers in (1, 2):
        for persistent in (False, True):
            loader = ds.loader(batch_size=4, num_workers=workers, persistent_workers=persistent)
            for _ in range(2):
                got = [b["label"].sum().item() for b in loader]
                assert got == [int(truth["label"][k : k + 4].sum()) for k in range(0, 29, 4)]
            assert _slot_mappings() == set()  # every batch dropped: every slot unmapped here
            del loader
    gc.collect()
    assert _shm_leaks(shm_before) == set()
    assert _slot_mappings() == set()
    assert set(os.listdir("/proc/self/fd")) - fds_before == set()


def _shm_leaks(before: set[str]) -> set[str]:
    """Entries of /dev/shm made since ``before``, except those of other live processes (the
    machine is shared: torch_PID_... of another job is not ours)."""

    def foreign(name: str) -> bool:
        m = re.match(r"torch_(\d+)_", name)
        return m is not None and int(m[1]) != os.getpid() and Path(f"/proc/{m[1]}").exists()

    return {n for n in set(os.listdir("/dev/shm")) - before if not foreign(n)}


def test_no_slot_falls_back_to_torch_shared_memory(stores, monkeypatch):
    """Workers that cannot make a slot (out of descriptors or memory) still deliver the batches."""
    torch = pytest.importorskip("torch")

    def refuse(*args):
        raise OSError(24, "Too many open files")

    monkeypatch.setattr(os, "memfd_create", refuse)  # workers fork with it
    path, truth = stores["a"]
    batches = list(PatchDataset(path, as_torch=True).loader(batch_size=4, num_workers=2, persistent_workers=False))
    for name in ("sar", "eo", "label"):
        np.testing.assert_array_equal(torch.cat([b[name] for b in batches]).numpy(), truth[name])
    assert all("memfd:sareo-batch" not in _mapping_of(b["sar"]) for b in batches)
