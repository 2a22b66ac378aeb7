"""Typed parameters: every params.yaml section is a frozen, documented dataclass.

Each stage module declares its own section next to the code it configures (so DVC re-runs
only that stage when a default changes), with the helper :func:`param` giving every field
its default and a one-line doc. This module holds the one loader: it builds the dataclasses
from params.yaml, checks types, and turns an unknown or misspelt key into one line naming the
file and the key (``params.yaml: patches.strid: unknown key; did you mean 'stride'?``).

Sections are plain values: no stage reads another stage's section through a dict.
"""

from __future__ import annotations

import dataclasses
import difflib
import types
import typing
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any, ClassVar, Literal, Protocol, TypeVar

from pipeline.documents import read_yaml


class ParamsError(ValueError):
    """A parameter file or section that cannot be used; the message names the file and the key."""


class Section(Protocol):
    """What a parameter section is: a frozen dataclass with its params.yaml key."""

    section: ClassVar[str]
    __dataclass_fields__: ClassVar[dict[str, Any]]


S = TypeVar("S")


def param(default: Any, doc: str) -> Any:
    """A dataclass field with ``default`` and a one-line ``doc`` (shown by ``sareo params``).

    Mutable defaults (dicts, lists) are copied per instance.
    """
    if isinstance(default, (dict, list, set)):
        return dataclasses.field(default_factory=lambda d=default: _copy(d), metadata={"doc": doc})
    return dataclasses.field(default=default, metadata={"doc": doc})


def _copy(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _copy(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_copy(v) for v in value]
    return value


def _type_name(tp: Any) -> str:
    origin = typing.get_origin(tp)
    if origin is Literal:
        return " | ".join(repr(a) for a in typing.get_args(tp))
    if origin in (typing.Union, types.UnionType):
        return " or ".join(_type_name(a) for a in typing.get_args(tp))
    if tp is type(None):
        return "null"
    if dataclasses.is_dataclass(tp):
        return "a mapping"
    if origin is not None:
        return {list: "a list", tuple: "a list", dict: "a mapping"}.get(origin, str(tp))
    return getattr(tp, "__name__", str(tp))


class _Mismatch(Exception):
    pass


def _coerce(value: Any, tp: Any, where: str) -> Any:
    """``value`` checked against the annotation ``tp`` (ints accepted as floats, lists as tuples)."""
    if tp is Any:
        return value
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if origin in (typing.Union, types.UnionType):
        for a in args:
            try:
                return _coerce(value, a, where)
            except _Mismatch:
                continue
        raise _Mismatch(where, value, tp)
    if origin is Literal:
        if value in args:
            return value
        raise _Mismatch(where, value, tp)
    if tp is type(None):
        if value is None:
            return None
        raise _Mismatch(where, value, tp)
    if tp is bool:
        if isinstance(value, bool):
            return value
        raise _Mismatch(where, value, tp)
    if tp is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        raise _Mismatch(where, value, tp)
    if tp is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        raise _Mismatch(where, value, tp)
    if tp is str:
        if isinstance(value, str):
            return value
        raise _Mismatch(where, value, tp)
    if dataclasses.is_dataclass(tp):
        if isinstance(value, tp):
            return value
        if isinstance(value, Mapping):
            return _build(tp, value, where)
        raise _Mismatch(where, value, tp)
    if origin in (list, tuple):
        if not isinstance(value, (list, tuple)):
            raise _Mismatch(where, value, tp)
        if origin is tuple and args and args[-1] is not Ellipsis:
            if len(value) != len(args):
                raise _Mismatch(where, value, tp)
            return tuple(_coerce(v, a, f"{where}[{i}]") for i, (v, a) in enumerate(zip(value, args)))
        item = args[0] if args else Any
        out = [_coerce(v, item, f"{where}[{i}]") for i, v in enumerate(value)]
        return tuple(out) if origin is tuple else out
    if origin is dict:
        if not isinstance(value, Mapping):
            raise _Mismatch(where, value, tp)
        kt, vt = args if args else (Any, Any)
        return {_coerce(k, kt, where): _coerce(v, vt, f"{where}.{k}") for k, v in value.items()}
    raise TypeError(f"{where}: unsupported parameter annotation {tp!r}")


def _refuse_unknown(data: Mapping[str, Any], known: list[str], prefix: str, what: str) -> None:
    """One line for the first key of ``data`` not in ``known``, with the closest known one."""
    unknown = [k for k in data if k not in known]
    if unknown:
        key = str(unknown[0])
        close = difflib.get_close_matches(key, known, n=1)
        hint = f"did you mean {close[0]!r}?" if close else f"known {what}s: {', '.join(known)}"
        raise ParamsError(f"{prefix}{key}: unknown {what}; {hint}")


def _build(cls: type[S], data: Mapping[str, Any], where: str) -> S:
    """An instance of the dataclass ``cls`` from ``data``; ``where`` prefixes every message."""
    fields = {f.name: f for f in dataclasses.fields(cls) if f.init}  # type: ignore[arg-type]
    hints = typing.get_type_hints(cls)
    _refuse_unknown(data, list(fields), f"{where}.", "key")
    kwargs: dict[str, Any] = {}
    for name, value in data.items():
        try:
            kwargs[name] = _coerce(value, hints[name], f"{where}.{name}")
        except _Mismatch as exc:
            at, got, tp = exc.args
            raise ParamsError(f"{at}: expected {_type_name(tp)}, got {got!r}") from None
    try:
        return cls(**kwargs)
    except (ValueError, TypeError) as exc:
        # __post_init__ checks say "field: what is wrong": name the key like the type errors do
        msg = str(exc)
        head = msg.split(":", 1)[0]
        raise ParamsError(f"{where}.{msg}" if head in fields else f"{where}: {msg}") from None


def parse_section(cls: type[S], data: Mapping[str, Any] | None, where: str = "params") -> S:
    """The section ``cls`` from the mapping ``data`` (None or empty: all defaults)."""
    section = getattr(cls, "section")
    if data is None:
        data = {}
    if not isinstance(data, Mapping):
        raise ParamsError(f"{where}: {section}: expected a mapping of keys, got {type(data).__name__}")
    return _build(cls, data, f"{where}: {section}")


def section_docs(cls: type[Any]) -> list[tuple[str, Any, str]]:
    """(key, default, doc) of every field of a section, in declaration order."""
    out = []
    for f in dataclasses.fields(cls):
        default = f.default if f.default is not dataclasses.MISSING else (
            f.default_factory() if f.default_factory is not dataclasses.MISSING else None)  # type: ignore[misc]
        out.append((f.name, default, f.metadata.get("doc", "")))
    return out


class Params:
    """The validated sections of one parameter file, looked up by their dataclass."""

    def __init__(self, sections: Mapping[type[Any], Any], path: Path | None = None) -> None:
        self._sections = dict(sections)
        self.path = path

    def __getitem__(self, cls: type[S]) -> S:
        try:
            return self._sections[cls]
        except KeyError:
            return cls()

    def with_section(self, value: Any) -> Params:
        """A copy with one section replaced (tests and programmatic use)."""
        return Params({**self._sections, type(value): value}, self.path)

    @classmethod
    def of(cls, *values: Any) -> Params:
        """Params holding exactly ``values`` (every other section at its defaults)."""
        return cls({type(v): v for v in values})


def parse_params(data: Any, classes: Iterable[type[Any]], where: str = "params") -> Params:
    """Validate a whole parameter mapping against the known sections (an unknown section is an error)."""
    by_name = {getattr(c, "section"): c for c in classes}
    if data is None:
        data = {}
    if not isinstance(data, Mapping):
        raise ParamsError(f"{where}: expected a mapping of parameter sections, got {type(data).__name__}")
    _refuse_unknown(data, list(by_name), f"{where}: ", "section")
    return Params({c: parse_section(c, data.get(name), where) for name, c in by_name.items()},
                  Path(where) if where != "params" else None)


def load_params(path: str | Path, classes: Iterable[type[Any]]) -> Params:
    """params.yaml, every section typed and checked; a missing file means all defaults."""
    p = Path(path)
    if not p.exists():
        return parse_params({}, classes, str(p))
    return parse_params(read_yaml(p, "parameter file", ParamsError), classes, str(p))
