"""Atomic outputs: everything the pipeline writes appears whole or not at all.

Writers produce into a temporary and rename it into place, so an interrupted run never
leaves a half-written file that a later stage, DVC or a loader would trust.

A temporary lives inside a hidden *container* directory next to the destination,
``.NAME.XXXXXXXX.sareo-tmp/NAME``: the writer sees the real file name (drivers that pick a
format from the extension still work), while nothing that globs the destination's folder
(``data/patches/*.zarr``) can match it, and ``.dvcignore`` keeps DVC from hashing it. The
container holds an ``flock``-ed lock file for as long as its writer lives; a container whose
lock is free was left by a killed run and is removed by the next write of the same
destination (:func:`clean_stale`). A directory that already exists is replaced with one
``renameat2(RENAME_EXCHANGE)`` where the OS offers it, so a reader never finds the path
missing and never sees a mix of the old and the new tree.
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import fcntl
import json
import logging
import os
import shutil
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

log = logging.getLogger("sareo.atomic")

TMP_SUFFIX = ".sareo-tmp"  # the suffix of every temporary container (see .dvcignore)
_LOCK = ".lock"
_ORPHAN_AGE_S = 60.0  # a container without a lock file (killed within microseconds of mkdtemp) after this age
_RENAME_EXCHANGE = 2
_AT_FDCWD = -100


def _containers(dest: Path) -> list[Path]:
    """The temporary containers of ``dest`` (live or stale) in its folder."""
    try:
        return sorted(p for p in dest.parent.glob(f".{dest.name}.*{TMP_SUFFIX}") if p.is_dir())
    except FileNotFoundError:
        return []


def _legacy(dest: Path) -> list[Path]:
    """Temporaries of earlier versions (``.NAME.XXXX.tmp.zarr``, ``.NAME.old-PID``): they carry no
    lock, so only old ones count as stale."""
    sfx = "".join(dest.suffixes)
    try:
        found = [*dest.parent.glob(f".{dest.name}.*.tmp{sfx}"), *dest.parent.glob(f".{dest.name}.old-*")]
    except FileNotFoundError:
        return []
    now = time.time()
    return sorted(p for p in found if now - p.lstat().st_mtime > _ORPHAN_AGE_S)


def _is_stale(container: Path) -> bool:
    """True when no live writer holds the container's lock (its writer was killed)."""
    try:
        fd = os.open(container / _LOCK, os.O_RDWR)
    except FileNotFoundError:
        try:
            return time.time() - container.stat().st_mtime > _ORPHAN_AGE_S
        except FileNotFoundError:
            return False
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return False
    finally:
        os.close(fd)  # closing drops the lock we may have taken; rmtree follows at once
    return True


def clean_stale(dest: str | os.PathLike[str]) -> list[Path]:
    """Remove temporaries of ``dest`` left by killed runs; returns what was removed.

    Called by every :func:`atomic_path`, so a stage cleans up after itself on its next run.
    Temporaries of a writer that is still running are left alone.
    """
    dest = Path(dest)
    removed = [c for c in _containers(dest) if _is_stale(c)] + _legacy(dest)
    for c in removed:
        if c.is_dir() and not c.is_symlink():
            shutil.rmtree(c, ignore_errors=True)
        else:
            c.unlink(missing_ok=True)
        log.warning("removed %s, a temporary left by an interrupted run", c)
    return removed


def _exchange(a: Path, b: Path) -> bool:
    """Swap two paths in one step (Linux renameat2); False where the OS or file system cannot."""
    try:
        fn = ctypes.CDLL(None, use_errno=True).renameat2
    except (AttributeError, OSError):
        return False
    fn.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p, ctypes.c_uint]
    if fn(_AT_FDCWD, os.fsencode(a), _AT_FDCWD, os.fsencode(b), _RENAME_EXCHANGE) == 0:
        return True
    err = ctypes.get_errno()
    if err in (errno.EINVAL, errno.ENOSYS, errno.ENOTSUP, errno.EXDEV):
        return False
    raise OSError(err, os.strerror(err), str(a))


def _install(tmp: Path, dest: Path, container: Path) -> None:
    """Put ``tmp`` at ``dest``; an existing directory ends up inside ``container`` (removed after)."""
    if dest.is_dir() and not dest.is_symlink():
        if not _exchange(tmp, dest):
            # no atomic exchange: move the old tree into the container, then the new one in place.
            # A kill between the two renames leaves dest missing (never half-written) and the old
            # tree in a stale container that the next run removes.
            os.replace(dest, container / "old")
            os.replace(tmp, dest)
    else:
        os.replace(tmp, dest)


@contextlib.contextmanager
def atomic_path(dest: str | os.PathLike[str]) -> Iterator[Path]:
    """Yield a temporary path for ``dest``; put it at ``dest`` only on success.

    Works for files and directories (e.g. a Zarr store): the caller creates whatever it
    likes at the yielded path, which has ``dest``'s own name. On error, or if the process is
    killed, ``dest`` is untouched; the temporary is removed now or by the next run.
    """
    dest = Path(dest)
    dest.parent.mkdir(parents=True, exist_ok=True)
    clean_stale(dest)
    container = Path(tempfile.mkdtemp(prefix=f".{dest.name}.", suffix=TMP_SUFFIX, dir=dest.parent))
    # lock first, then name it: a container's .lock is never seen unlocked while its writer lives
    lock = os.open(container / f"{_LOCK}.new", os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(lock, fcntl.LOCK_EX)
        os.replace(container / f"{_LOCK}.new", container / _LOCK)
        tmp = container / dest.name
        yield tmp
        if not (tmp.exists() or tmp.is_symlink()):
            raise FileNotFoundError(f"{dest}: writer produced nothing at {tmp}")
        _install(tmp, dest, container)
    finally:
        shutil.rmtree(container, ignore_errors=True)
        os.close(lock)


def remove_tree(path: str | os.PathLike[str]) -> None:
    """Remove a file or directory so that it disappears at once (renamed into a temporary first)."""
    path = Path(path)
    if not (path.exists() or path.is_symlink()):
        return
    container = Path(tempfile.mkdtemp(prefix=f".{path.name}.", suffix=TMP_SUFFIX, dir=path.parent))
    os.replace(path, container / path.name)
    shutil.rmtree(container, ignore_errors=True)


def write_bytes(dest: str | os.PathLike[str], data: bytes) -> Path:
    """Write ``data`` to ``dest`` atomically."""
    with atomic_path(dest) as tmp:
        tmp.write_bytes(data)
    return Path(dest)


def write_text(dest: str | os.PathLike[str], text: str) -> Path:
    """Write UTF-8 ``text`` to ``dest`` atomically."""
    return write_bytes(dest, text.encode("utf-8"))


def dumps_json(obj: Any) -> str:
    """Deterministic JSON (sorted keys, fixed indent) so equal inputs give equal bytes."""
    return json.dumps(obj, indent=2, sort_keys=True, ensure_ascii=False, allow_nan=False) + "\n"


def write_json(dest: str | os.PathLike[str], obj: Any) -> Path:
    """Write ``obj`` as deterministic JSON, atomically."""
    return write_text(dest, dumps_json(obj))
