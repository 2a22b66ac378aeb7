"""Outputs on object storage (`sareo --data s3://...`), against a moto S3 server on 127.0.0.1:
a region built there gives the local build's arrays through PatchDataset; the commit protocol
(manifest written last) refuses interrupted, damaged and foreign outputs, naming them."""

from __future__ import annotations

import hashlib
import json

import numpy as np
import pytest
import yaml
from servers import s3_server  # noqa: F401  (pytest fixture)

from pipeline.cli import main
from pipeline.info import info
from pipeline.loader import PatchDataset
from pipeline.storage import MANIFEST, MARKER, S3Prefix, StorageError, claim, open_output_store, verify
from pipeline.store import (IMAGE_ARRAYS, ShardAssembler, StoreError, create_store, store_attrs, write_meta,
                            write_patches, write_shards)

REGION = "uppland"  # one scene: the shortest stage chain of the reduced demo
CHAIN = ("fetch", "register", "grid", "labels", "patches")


def _env(monkeypatch, tmp_path, endpoint: str) -> None:
    monkeypatch.setenv("AWS_ENDPOINT_URL", endpoint)
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-west-2")
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "no-aws-config"))
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "no-aws-credentials"))
    monkeypatch.delenv("AWS_PROFILE", raising=False)
    monkeypatch.setenv("SAREO_SCRATCH", str(tmp_path / "scratch"))


def _bucket(s3, name: str) -> str:
    c = s3.client()
    if name not in {b["Name"] for b in c.list_buckets().get("Buckets", [])}:
        c.create_bucket(Bucket=name, CreateBucketConfiguration={"LocationConstraint": "us-west-2"})
    return name


def _sareo(root, url, *args) -> int:
    return main(["--root", str(root), "--data", url, "-q", *args])


@pytest.fixture
def aws(s3_server, monkeypatch, tmp_path):  # noqa: F811
    _env(monkeypatch, tmp_path, s3_server.endpoint)
    return s3_server


@pytest.fixture(scope="module")
def s3_build(s3_server, built, tmp_path_factory):  # noqa: F811
    """The reduced demo's uppland chain built with --data s3://outputs/build (once for the module)."""
    with pytest.MonkeyPatch.context() as mp:
        _env(mp, tmp_path_factory.mktemp("aws"), s3_server.endpoint)
        url = f"s3://{_bucket(s3_server, 'outputs')}/build"
        for stage in CHAIN:
            assert _sareo(built, url, stage, REGION) == 0, stage
    return url


def _same(a: PatchDataset, b: PatchDataset) -> None:
    assert len(a) == len(b) > 0
    ba, bb = a.read_batch(range(len(a))), b.read_batch(range(len(b)))
    assert ba["id"] == bb["id"]
    for name in IMAGE_ARRAYS:
        np.testing.assert_array_equal(ba[name], bb[name])


def test_region_built_on_s3_reads_back_as_the_local_build(aws, s3_build, built):
    store = f"{s3_build}/patches/{REGION}.zarr"
    local = built / "data" / "patches" / f"{REGION}.zarr"
    _same(PatchDataset(store), PatchDataset(local))
    assert store_attrs(store) == store_attrs(local)  # provenance too: same input bytes after the round trip
    for unit in ("source", "registration", "grid", "labels"):
        m = verify(f"{s3_build}/regions/{REGION}/{unit}")
        assert m and m["count"] > 0 and all("crc32c" in r for r in m["objects"].values()), unit
    # every object of the S3 store is the local store's file, byte for byte (single-PUT ETag = MD5)
    files = {p.relative_to(local).as_posix(): hashlib.md5(p.read_bytes()).hexdigest()
             for p in local.rglob("*") if p.is_file()}
    assert {k: r["etag"].strip('"') for k, r in verify(store)["objects"].items()} == files
    assert f"{REGION}" in info(store) and "size:" in info(store)
    marker = json.loads(S3Prefix(s3_build).get(MARKER))
    assert marker["dataset"] == yaml.safe_load((built / "params.yaml").read_text())["publish"]["id"]


def test_interrupted_writes_leave_nothing_a_reader_accepts(aws, s3_build, built, monkeypatch, capsys):
    store = f"{s3_build}/patches/{REGION}.zarr"
    put = S3Prefix.put
    calls = {"n": 0}

    def failing_put(self, rel, data):
        if "/c/" in rel:  # a shard: fail after the first one went up
            calls["n"] += 1
            if calls["n"] > 1:
                raise OSError(f"{self.url}/{rel}: injected network failure")
        return put(self, rel, data)

    monkeypatch.setattr(S3Prefix, "put", failing_put)
    assert _sareo(built, s3_build, "patches", REGION) == 2  # a rebuild over the committed store, interrupted
    assert calls["n"] > 1
    for read in (PatchDataset, info, store_attrs):
        with pytest.raises(StorageError, match=rf"{store}: not committed \(no {MANIFEST}; a write is running or was "
                                             r"interrupted\)"):
            read(store)

    upload = S3Prefix.upload
    monkeypatch.setattr(S3Prefix, "put", put)
    monkeypatch.setattr(S3Prefix, "upload", lambda self, rel, path: (_ for _ in ()).throw(OSError("injected"))
                        if rel == "labels.tif" else upload(self, rel, path))
    assert _sareo(built, s3_build, "labels", REGION) == 2  # a stage directory interrupted mid-upload
    with pytest.raises(StorageError, match=rf"{s3_build}/regions/{REGION}/labels: not committed"):
        verify(f"{s3_build}/regions/{REGION}/labels")
    monkeypatch.setattr(S3Prefix, "upload", upload)
    capsys.readouterr()
    assert _sareo(built, s3_build, "patches", REGION) == 2  # the next stage refuses its input, naming it
    assert f"{s3_build}/regions/{REGION}/labels: not committed" in capsys.readouterr().err

    assert _sareo(built, s3_build, "labels", REGION) == 0 and _sareo(built, s3_build, "patches", REGION) == 0
    _same(PatchDataset(store), PatchDataset(built / "data" / "patches" / f"{REGION}.zarr"))


def _small_store(url: str, n: int = 5, shard: int = 2):
    rng = np.random.default_rng(1)
    layers = {"sar": rng.random((n, 1, 8, 8), dtype=np.float32), "eo": rng.integers(0, 255, (n, 3, 8, 8), np.uint8),
              "label": rng.integers(0, 25, (n, 8, 8), np.uint8)}
    return layers, (lambda target: create_store(target, n, size=8, shard_patches=shard))


def test_shards_are_written_whole_and_damage_is_named(aws):
    url = f"s3://{_bucket(aws, 'units')}/small.zarr"
    layers, create = _small_store(url)
    with pytest.raises(StoreError, match=r"small.zarr/sar/c/0/0/0/0: read-modify-write of a chunk refused"):
        with open_output_store(url) as target:
            write_patches(create(target), 0, {k: v[:1] for k, v in layers.items()})  # half a shard
    with pytest.raises(StorageError, match="not committed"):
        verify(url)
    with pytest.raises(StoreError, match=r"rows 1:3 are not whole shards of 2"):
        with open_output_store(url) as target:
            write_shards(create(target), 1, {k: v[1:3] for k, v in layers.items()})
    with open_output_store(url) as target:
        group = create(target)
        asm = ShardAssembler(5, 2)
        for a, b in ((0, 1), (2, 4), (4, 5), (1, 2)):  # shard 0 in two segments, the second one last
            whole = asm.add(a, {k: v[a:b] for k, v in layers.items()})
            if whole:
                write_shards(group, *whole)
        assert not asm.pending()
        from pipeline.store import META_ARRAYS, HIST_ARRAY
        write_meta(group, {**{k: np.zeros(5, "object" if d == "str" else d) for k, d in META_ARRAYS.items()},
                           "split": np.array(["train"] * 5, object), HIST_ARRAY: np.zeros((5, 25), np.int32)})
    m = verify(url)
    assert m["count"] == len(S3Prefix(url).list()) - 1
    got = PatchDataset(url).read_batch(range(5))
    for k, v in layers.items():
        np.testing.assert_array_equal(got[k], v)

    out = S3Prefix(url)
    out.put("stray", b"x")
    with pytest.raises(StorageError, match=r"small.zarr/stray: not in sareo-manifest.json"):
        verify(url)
    out.delete(["stray"])
    out.put("sar/c/1/0/0/0", b"replaced")
    with pytest.raises(StorageError, match=r"small.zarr/sar/c/1/0/0/0: 8 bytes, ETag .*replaced after the commit"):
        PatchDataset(url)
    out.delete(["sar/c/1/0/0/0"])
    with pytest.raises(StorageError, match=r"small.zarr/sar/c/1/0/0/0: listed in sareo-manifest.json but missing"):
        verify(url)


def test_bad_buckets_and_foreign_prefixes_are_refused(aws, built, capsys):
    assert _sareo(built, "s3://no-such-bucket-x/data", "fetch", REGION) == 2
    assert "bucket 'no-such-bucket-x' does not exist" in capsys.readouterr().err

    c = aws.client()
    _bucket(aws, "readonly")
    c.put_bucket_policy(Bucket="readonly", Policy=json.dumps({"Version": "2012-10-17", "Statement": [
        {"Effect": "Deny", "Principal": "*", "Action": "s3:PutObject", "Resource": "arn:aws:s3:::readonly/*"}]}))
    assert _sareo(built, "s3://readonly/data", "fetch", REGION) == 2
    err = capsys.readouterr().err
    assert f"s3://readonly/data/{MARKER}: S3 refused the write" in err and "do not allow writes" in err

    _bucket(aws, "shared")
    c.put_object(Bucket="shared", Key="theirs/file.bin", Body=b"x")
    assert _sareo(built, "s3://shared/theirs", "fetch", REGION) == 2
    assert f"s3://shared/theirs: is not empty and holds no {MARKER}: not a sareo data prefix" in capsys.readouterr().err
    c.put_object(Bucket="shared", Key=f"other/{MARKER}", Body=json.dumps({"dataset": "their-set"}).encode())
    c.put_object(Bucket="shared", Key="other/regions/x/grid/grid.json", Body=b"{}")
    with pytest.raises(StorageError, match=r"s3://shared/other: holds dataset 'their-set' .*not this project's 'sareo'"
                                           r"; choose another prefix, or pass --overwrite"):
        claim("s3://shared/other", "sareo")
    claim("s3://shared/other", "sareo", overwrite=True)
    assert list(S3Prefix("s3://shared/other").list()) == [MARKER]
    claim("s3://shared/other", "sareo")  # ours now: accepted without --overwrite

    assert main(["--root", str(built), "--data", "https://example.org/d", "-q", "fetch", REGION]) == 2
    assert "only local directories and s3://BUCKET/PREFIX can receive outputs" in capsys.readouterr().err


def test_patch_shards_written_to_s3_by_cluster_workers(aws, s3_build, built):
    """--scheduler with --data s3://: each dask worker process PUTs its whole shards; the store is the local one."""
    import distributed

    local = built / "data" / "patches" / f"{REGION}.zarr"
    files = {p.relative_to(local).as_posix(): hashlib.md5(p.read_bytes()).hexdigest()
             for p in local.rglob("*") if p.is_file()}
    # workers started now inherit this process's AWS settings (the loopback endpoint, test credentials)
    with distributed.LocalCluster(n_workers=2, threads_per_worker=1, processes=True, dashboard_address=None,
                                  host="127.0.0.1") as cluster:
        assert main(["--root", str(built), "--data", s3_build, "--scheduler", cluster.scheduler_address, "-q",
                     "patches", REGION]) == 0
    store = f"{s3_build}/patches/{REGION}.zarr"
    assert {k: r["etag"].strip('"') for k, r in verify(store)["objects"].items()} == files
    _same(PatchDataset(store), PatchDataset(local))
