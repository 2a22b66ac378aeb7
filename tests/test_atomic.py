"""Outputs appear whole or not at all."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from pipeline.atomic import atomic_path, dumps_json, write_json


def test_file_appears_only_on_success(tmp_path: Path) -> None:
    dest = tmp_path / "out" / "a.json"
    with pytest.raises(RuntimeError):
        with atomic_path(dest) as tmp:
            tmp.write_text("half")
            raise RuntimeError("crash mid-write")
    assert not dest.exists()
    assert list((tmp_path / "out").iterdir()) == []  # no temporary left behind
    write_json(dest, {"b": 1, "a": [1.5]})
    assert json.loads(dest.read_text()) == {"a": [1.5], "b": 1}


def test_directory_replaced_whole(tmp_path: Path) -> None:
    dest = tmp_path / "store.zarr"
    dest.mkdir()
    (dest / "old").write_text("old")
    with pytest.raises(ValueError):
        with atomic_path(dest) as tmp:
            tmp.mkdir()
            (tmp / "new").write_text("new")
            raise ValueError("stop")
    assert sorted(p.name for p in dest.iterdir()) == ["old"]
    with atomic_path(dest) as tmp:
        tmp.mkdir()
        (tmp / "new").write_text("new")
    assert sorted(p.name for p in dest.iterdir()) == ["new"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["store.zarr"]


def test_writer_that_writes_nothing_fails(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="writer produced nothing"):
        with atomic_path(tmp_path / "x.tif"):
            pass


def test_json_is_deterministic_and_refuses_nan() -> None:
    assert dumps_json({"b": 1, "a": 2}) == dumps_json({"a": 2, "b": 1})
    with pytest.raises(ValueError):
        dumps_json({"x": float("nan")})


# -- temporaries of killed runs ---------------------------------------------------------------

import os  # noqa: E402
import signal  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402
import textwrap  # noqa: E402

from pipeline.atomic import TMP_SUFFIX, clean_stale  # noqa: E402

_WRITER = textwrap.dedent("""
    import os, signal, sys, time
    from pathlib import Path
    from pipeline.atomic import atomic_path
    dest = Path(sys.argv[1])
    with atomic_path(dest) as tmp:
        tmp.mkdir()
        (tmp / "zarr.json").write_text("{}")
        print("ready", flush=True)
        if sys.argv[2] == "kill":
            os.kill(os.getpid(), signal.SIGKILL)
        time.sleep(30)
""")


def _writer(dest: Path, mode: str) -> subprocess.Popen[str]:
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parent.parent)}
    proc = subprocess.Popen([sys.executable, "-c", _WRITER, str(dest), mode], stdout=subprocess.PIPE, text=True,
                            env=env)
    assert proc.stdout is not None and proc.stdout.readline().strip() == "ready"
    return proc


def test_killed_writer_leaves_nothing_a_glob_or_dvc_takes_and_next_run_cleans(tmp_path: Path) -> None:
    dest = tmp_path / "patches" / "r.zarr"
    proc = _writer(dest, "kill")
    assert proc.wait(10) == -signal.SIGKILL
    left = sorted(p.name for p in (tmp_path / "patches").iterdir())
    assert len(left) == 2 and left[0].endswith(TMP_SUFFIX) and left[1] == left[0] + ".lock"  # store, lock
    # what the README's loader snippet and a recursive search for stores would take
    assert sorted((tmp_path / "patches").glob("*.zarr")) == []
    assert not dest.exists()
    # the next write of the same destination removes it (its writer is dead: the lock is free)
    with atomic_path(dest) as tmp:
        tmp.mkdir()
        (tmp / "zarr.json").write_text("{}")
    assert sorted(p.name for p in (tmp_path / "patches").iterdir()) == ["r.zarr"]


def test_running_writer_keeps_its_temporary(tmp_path: Path) -> None:
    dest = tmp_path / "r.zarr"
    proc = _writer(dest, "sleep")
    try:
        assert clean_stale(dest) == []
        assert len([p for p in tmp_path.iterdir() if p.name.endswith(TMP_SUFFIX)]) == 1
    finally:
        proc.kill()
        proc.wait(10)
    assert len(clean_stale(dest)) == 2  # the temporary and its lock
    assert list(tmp_path.iterdir()) == []


def test_existing_directory_is_exchanged_never_missing(tmp_path: Path) -> None:
    dest = tmp_path / "s.zarr"
    dest.mkdir()
    (dest / "v").write_text("1")
    fd = os.open(dest, os.O_RDONLY)  # a reader that opened the old tree keeps it whole
    try:
        with atomic_path(dest) as tmp:
            tmp.mkdir()
            (tmp / "v").write_text("2")
        assert (dest / "v").read_text() == "2"
        assert os.fstat(fd).st_nlink == 0  # the old tree is gone from the name space
    finally:
        os.close(fd)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["s.zarr"]
