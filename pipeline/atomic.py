"""Atomic outputs: everything the pipeline writes appears whole or not at all.

Writers produce into a temporary sibling and rename it into place, so an interrupted run
never leaves a half-written file that a later stage, DVC or a loader would trust.

The temporary of ``NAME`` is ``.NAME.XXXXXXXX.sareo-tmp`` beside it: hidden, and ending in
neither ``NAME``'s suffix nor anything a loader globs for (``data/patches/*.zarr`` cannot
match it), and ``.dvcignore`` keeps DVC from hashing it. Being a sibling, relative paths
resolve from it as from ``NAME``. Its writer holds an ``flock`` on ``.NAME.XXXXXXXX.sareo-tmp.lock``
for as long as it lives; a temporary whose lock is free was left by a killed run, and the next
write of the same destination removes it (:func:`clean_stale`). A directory that already
exists is replaced with one ``renameat2(RENAME_EXCHANGE)`` where the OS offers it, so a reader
never finds the path missing and never sees a mix of the old and the new tree.
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import fcntl
import json
import logging
import os
import secrets
import shutil
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

log = logging.getLogger("sareo.atomic")

TMP_SUFFIX = ".sareo-tmp"  # every temporary; with .lock (its writer's lock) and .old (a replaced tree)
_NEW = ".sareo-new"  # a lock file in the microseconds before it is locked and named
_ORPHAN_AGE_S = 60.0  # pieces without a lock file count as stale after this age
_RENAME_EXCHANGE = 2
_AT_FDCWD = -100


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    else:
        path.unlink(missing_ok=True)


def _lock_is_free(lock: Path) -> bool:
    try:
        fd = os.open(lock, os.O_RDWR)
    except FileNotFoundError:
        return False
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return False
    finally:
        os.close(fd)
    return True


def _stale(dest: Path) -> list[Path]:
    """Temporaries of ``dest``'s folder-mates named like ``dest``'s, whose writer is gone."""
    parent, name, now = dest.parent, dest.name, time.time()
    if not parent.is_dir():
        return []
    found: list[Path] = []
    for lock in parent.glob(f".{name}.*{TMP_SUFFIX}.lock"):
        if _lock_is_free(lock):
            stem = lock.with_name(lock.name.removesuffix(".lock"))
            found += [p for p in (stem, stem.with_name(stem.name + ".old")) if p.exists() or p.is_symlink()]
            found.append(lock)  # last: a kill while removing leaves the lock, so the next run finishes the job
    pieces = [*parent.glob(f".{name}.*{TMP_SUFFIX}"), *parent.glob(f".{name}.*{TMP_SUFFIX}.old"),
              *parent.glob(f".{name}.*{_NEW}"),
              # earlier versions' temporaries (.NAME.XXXX.tmp.zarr, .NAME.old-PID): no lock, so by age
              *parent.glob(f".{name}.*.tmp{''.join(dest.suffixes)}"), *parent.glob(f".{name}.old-*")]
    for p in pieces:
        stem = p.name.removesuffix(".old")
        if p in found or (p.parent / f"{stem}.lock").exists():
            continue
        with contextlib.suppress(FileNotFoundError):
            if now - p.lstat().st_mtime > _ORPHAN_AGE_S:
                found.insert(0, p)
    return found


def clean_stale(dest: str | os.PathLike[str]) -> list[Path]:
    """Remove temporaries of ``dest`` left by killed runs; returns what was removed.

    Called by every :func:`atomic_path`, so a stage cleans up after itself on its next run.
    Temporaries of a writer that is still running are left alone.
    """
    removed = _stale(Path(dest))
    for p in removed:
        _remove(p)
        if not p.name.endswith(".lock"):
            log.warning("removed %s, a temporary left by an interrupted run", p)
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


def _install(tmp: Path, dest: Path) -> None:
    """Put ``tmp`` at ``dest``; an existing directory ends up at ``tmp`` (or ``tmp.old``), removed after."""
    if dest.is_dir() and not dest.is_symlink():
        if not _exchange(tmp, dest):
            # no atomic exchange: move the old tree aside, then the new one in place. A kill between
            # the two renames leaves dest missing (never half-written) and the old tree stale.
            os.replace(dest, tmp.with_name(tmp.name + ".old"))
            os.replace(tmp, dest)
    else:
        os.replace(tmp, dest)


@contextlib.contextmanager
def atomic_path(dest: str | os.PathLike[str]) -> Iterator[Path]:
    """Yield a temporary sibling path for ``dest``; put it at ``dest`` only on success.

    Works for files and directories (e.g. a Zarr store): the caller creates whatever it
    likes at the yielded path (whose name keeps no suffix of ``dest``: writers must name
    their format, not infer it). On error, or if the process is killed, ``dest`` is
    untouched; the temporary is removed now, or by the next write of ``dest``.
    """
    dest = Path(dest)
    dest.parent.mkdir(parents=True, exist_ok=True)
    clean_stale(dest)
    # lock first, then name it: a *.sareo-tmp.lock is never seen unlocked while its writer lives
    fd, new = tempfile.mkstemp(prefix=f".{dest.name}.", suffix=_NEW, dir=dest.parent)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        tmp = Path(new.removesuffix(_NEW) + TMP_SUFFIX)
        lock = tmp.with_name(tmp.name + ".lock")
        os.replace(new, lock)
        try:
            yield tmp
            if not (tmp.exists() or tmp.is_symlink()):
                raise FileNotFoundError(f"{dest}: writer produced nothing at {tmp}")
            _install(tmp, dest)
        finally:
            _remove(tmp)
            _remove(tmp.with_name(tmp.name + ".old"))
            lock.unlink(missing_ok=True)
    finally:
        Path(new).unlink(missing_ok=True)
        os.close(fd)


def remove_tree(path: str | os.PathLike[str]) -> None:
    """Remove a file or directory so that it disappears at once (renamed to a temporary first)."""
    path = Path(path)
    if not (path.exists() or path.is_symlink()):
        return
    gone = path.with_name(f".{path.name}.{secrets.token_hex(4)}{TMP_SUFFIX}.old")
    os.rename(path, gone)
    _remove(gone)


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
