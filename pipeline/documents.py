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


class _StrictLoader(yaml.SafeLoader):
    """YAML's safe loader, refusing a key given twice in one mapping (plain YAML keeps the last)."""

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
        seen: dict[Any, yaml.Node] = {}
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=True)
            if key in seen:
                line = seen[key].start_mark.line + 1
                raise yaml.constructor.ConstructorError(
                    None, None, f"duplicate key {key!r} (first given on line {line})", key_node.start_mark)
            seen[key] = key_node
        return super().construct_mapping(node, deep=deep)


def read_yaml(path: str | Path, kind: str, error: type[Exception] = ValueError) -> Any:
    """The parsed content of ``path``; a missing file, bad YAML, a duplicate key or bytes that are
    not UTF-8 raise ``error`` naming the file.

    ``kind`` says what the file is for the message ("region file", "legend file", ...).
    """
    path = Path(path)
    try:
        return yaml.load(path.read_text(encoding="utf-8"), Loader=_StrictLoader)  # noqa: S506 - a SafeLoader
    except FileNotFoundError:
        raise error(f"{path}: no such {kind}") from None
    except UnicodeDecodeError as exc:
        raise error(f"{path}: not UTF-8 text (byte {exc.start}: {exc.object[exc.start:exc.start + 1]!r}); "
                    f"save the {kind} as UTF-8") from None
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
