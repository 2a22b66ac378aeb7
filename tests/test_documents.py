"""The shared JSON/YAML readers: every failure names the file and uses the caller's error class."""

from __future__ import annotations

from pathlib import Path

import pytest

from pipeline.documents import read_json, read_yaml


class StageError(ValueError):
    pass


def test_read_json(tmp_path: Path) -> None:
    p = tmp_path / "provenance.json"
    with pytest.raises(StageError, match=r"provenance.json: missing; run the fetch stage"):
        read_json(p, StageError, missing="missing; run the fetch stage")
    assert read_json(p, StageError, required=False) is None
    p.write_text('{"sar": {"item_id": "x"}}')
    assert read_json(p, StageError) == {"sar": {"item_id": "x"}}
    p.write_text('{"sar": ')
    with pytest.raises(StageError, match=r"provenance.json: not valid JSON"):
        read_json(p, StageError, required=False)  # present but broken is an error even when optional
    p.write_text("[1, 2]")
    with pytest.raises(StageError, match=r"provenance.json: expected a JSON object, got list"):
        read_json(p, StageError)


def test_read_yaml(tmp_path: Path) -> None:
    p = tmp_path / "legend.yaml"
    with pytest.raises(StageError, match=r"legend.yaml: no such legend file"):
        read_yaml(p, "legend file", StageError)
    p.write_text("a: [1\n")
    with pytest.raises(StageError, match=r"legend.yaml: not valid YAML"):
        read_yaml(p, "legend file", StageError)
    p.write_text("a: 1\n")
    assert read_yaml(p, "legend file", StageError) == {"a": 1}
