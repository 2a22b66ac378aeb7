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
