"""Reading the project's YAML files (regions, params, legend) with errors that name the file."""

from __future__ import annotations

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
