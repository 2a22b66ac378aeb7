"""One run at a time per stage and region: a lock file under ``data/.locks/``, held for the run.

Two ``sareo`` runs of the same stage and region would both write the same outputs; that
works only while both write the same bytes, and it doubles the downloads. The lock is an
``flock`` (released by the kernel if the holder dies, so a killed run never leaves it taken).
The second run says who holds it and waits, or refuses at once when asked not to wait.
"""

from __future__ import annotations

import contextlib
import fcntl
import logging
import os
import time
from collections.abc import Iterator
from pathlib import Path

log = logging.getLogger("sareo.locks")


class StageBusy(RuntimeError):
    """Another run holds the lock of this stage and region (and we were asked not to wait)."""


def _holder(fd: int) -> str:
    with contextlib.suppress(OSError, ValueError):
        text = os.pread(fd, 200, 0).decode("utf-8", "replace").strip()
        if text:
            return text
    return "unknown pid"


@contextlib.contextmanager
def stage_lock(path: str | os.PathLike[str], what: str, wait: bool = True) -> Iterator[None]:
    """Hold the lock file ``path`` for the block; ``what`` ("grid helsinki") is for the messages."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = _holder(fd)
            if not wait:
                raise StageBusy(f"{what}: another sareo run ({holder}) is running it (lock {path}); "
                                "refusing to run it twice at once") from None
            log.warning("%s: waiting for another sareo run (%s) to finish (lock %s)", what, holder, path)
            t0 = time.perf_counter()
            fcntl.flock(fd, fcntl.LOCK_EX)
            log.warning("%s: lock acquired after %.1f s; running", what, time.perf_counter() - t0)
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"pid {os.getpid()}\n".encode(), 0)
        yield
    finally:
        os.close(fd)  # releases the lock; the file stays (removing it would race with a waiting run)
