"""Read soak: processes read random patches from one store while a rebuild replaces it (atomic swap).

Each rebuild writes version v: every pixel of patch j is ``v * 1000 + j`` and its id is ``vV-J``, so
a reader can tell, for every patch it reads, whether the pixels come from the same build as the
index it opened. No reader may ever see a mix of old and new: each read is consistent, or the
dataset says it was replaced (a clear error; the reader opens it again). Bounded to a few seconds.
"""

from __future__ import annotations

import multiprocessing as mp
import random
import time
from pathlib import Path

import numpy as np

from pipeline.loader import PatchDataset
from pipeline.store import META_ARRAYS, N_CLASSES, StoreError, write_store

N, SIZE, SHARD = 48, 16, 4  # 12 shard files: readers keep opening new ones as they go
SECONDS = 3.0
READERS = 3


def build(path: Path, v: int) -> None:
    j = np.arange(N, dtype="float32")[:, None, None, None]
    sar = np.broadcast_to(v * 1000 + j, (N, 1, SIZE, SIZE)).astype("float32")
    eo = np.full((N, 3, SIZE, SIZE), v % 256, np.uint8)
    label = np.full((N, SIZE, SIZE), v % 250, np.uint8)
    meta = {k: (np.array([f"v{v}-{i}" for i in range(N)], object) if d == "str" else np.zeros(N, d))
            for k, d in META_ARRAYS.items()}
    meta["split"] = np.array(["train"] * N, object)
    meta["class_hist"] = np.zeros((N, N_CLASSES), np.int32)
    write_store(path, sar, eo, label, meta, {"region": "soak", "version": v}, shard_patches=SHARD)


def rebuild(path: str, deadline: float, out) -> None:
    v = 1
    while time.time() < deadline:
        v += 1
        build(Path(path), v)
        time.sleep(0.05)
    out.put(("writer", v - 1))


def read(path: str, deadline: float, seed: int, out) -> None:
    rng = random.Random(seed)
    ok = mixed = replaced = 0
    versions: set[int] = set()
    problems: list[str] = []
    while time.time() < deadline:
        try:
            ds = PatchDataset(path, layers=("sar", "eo", "label"))
            for _ in range(rng.randint(5, 40)):
                i = rng.randrange(len(ds))
                item = ds[i]
                v, j = (int(x) for x in str(item["id"])[1:].split("-"))
                versions.add(v)
                good = (np.all(item["sar"] == v * 1000 + j) and np.all(item["eo"] == v % 256)
                        and np.all(item["label"] == v % 250))
                if good:
                    ok += 1
                else:
                    mixed += 1
                    problems.append(f"patch {item['id']}: sar {float(np.nanmax(item['sar']))}")
            ds.close()
        except StoreError as exc:  # "replaced by a rebuild": clear, and the next open sees the new build
            replaced += 1
            if "replaced" not in str(exc) or "soak.zarr" not in str(exc):
                problems.append(f"unclear error: {exc}")
    out.put(("reader", ok, mixed, replaced, len(versions), problems[:3]))


def test_readers_never_see_a_mix_while_the_store_is_rebuilt(tmp_path: Path) -> None:
    path = tmp_path / "soak.zarr"
    build(path, 1)
    ctx = mp.get_context("fork")
    out = ctx.Queue()
    deadline = time.time() + SECONDS
    procs = [ctx.Process(target=rebuild, args=(str(path), deadline, out))]
    procs += [ctx.Process(target=read, args=(str(path), deadline, seed, out)) for seed in range(READERS)]
    for p in procs:
        p.start()
    results = [out.get(timeout=60) for _ in procs]
    for p in procs:
        p.join(10)
    rebuilds = next(r[1] for r in results if r[0] == "writer")
    readers = [r[1:] for r in results if r[0] == "reader"]
    reads = sum(r[0] for r in readers)
    mixed = sum(r[1] for r in readers)
    replaced = sum(r[2] for r in readers)
    print(f"\nread soak: {rebuilds} rebuilds, {READERS} readers, {reads} consistent reads, {replaced} "
          f"'replaced' errors, {mixed} mixed; versions seen per reader {[r[3] for r in readers]}")
    assert [r[4] for r in readers] == [[]] * READERS
    assert mixed == 0
    assert rebuilds >= 2 and reads > 100 and all(r[3] > 1 for r in readers)  # the swaps really hit the readers
