"""Reading the project's JSON and YAML documents with errors that name the file.

Regions, params and the legend are YAML; every stage hands the next one JSON (provenance,
registration, labels, grid). Each caller passes its own error class, so the CLI reports the
file at fault in one line.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import yaml


def read_yaml(path: str | Path, kind: str, error: type[Exception] = ValueError) -> Any:
    """The parsed content of ``path``; a missing file or bad YAML raises ``error`` naming the file.

    ``kind`` says what the file is for the message ("region file", "legend file", ...).
    """
    path = Path(path)
    try:
        return yaml.safe_load(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise error(f"{path}: no such {kind}") from None
    except yaml.YAMLError as exc:
        raise error(f"{path}: not valid YAML ({exc})") from None


def read_json(path: str | Path, error: type[Exception] = ValueError, required: bool = True,
              missing: str = "missing") -> dict[str, Any] | None:
    """A JSON object from ``path``; None when it is absent and not ``required``.

    A missing required file, bad JSON or a non-object raises ``error`` naming the file;
    ``missing`` is the message for the first (e.g. what to run to make the file).
    """
    path = Path(path)
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        if required:
            raise error(f"{path}: {missing}") from None
        return None
    except ValueError as exc:
        raise error(f"{path}: not valid JSON ({exc})") from None
    if not isinstance(data, dict):
        raise error(f"{path}: expected a JSON object, got {type(data).__name__}")
    return data
