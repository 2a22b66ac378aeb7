"""Progress of long loops: a tqdm bar on a terminal, one log line per step otherwise.

DVC and CI capture the output: a redrawn bar would fill their logs with carriage returns, so
when stderr is not a terminal the bar is off and the step logs one INFO line when it ends
(``warp sar: 12 blocks in 3.4 s``; bytes get a size and a rate). ``SAREO_PROGRESS=always`` or
``never`` overrides the terminal check.
"""

from __future__ import annotations

import logging
import os
import sys
import threading
import time
from collections.abc import Iterable, Iterator
from typing import IO, Any, TypeVar

T = TypeVar("T")

log = logging.getLogger("sareo.progress")
ENV = "SAREO_PROGRESS"


def bar_enabled(stream: IO[str] | None = None) -> bool:
    """Draw a bar? ``SAREO_PROGRESS`` (always/never) first, else: is ``stream`` (stderr) a terminal."""
    mode = os.environ.get(ENV, "auto").strip().lower()
    if mode in ("always", "1", "true", "yes"):
        return True
    if mode in ("never", "0", "false", "no"):
        return False
    stream = stream if stream is not None else sys.stderr
    try:
        return bool(stream.isatty())
    except (AttributeError, ValueError):  # closed or not a file
        return False


def human_bytes(n: float) -> str:
    """1536 -> '1.5 KiB'."""
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(n) < 1024 or unit == "TiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} TiB"  # pragma: no cover - loop returns


class Progress:
    """A counter of ``total`` steps of ``unit`` (``"B"`` for bytes) named ``desc``; a context manager.

    ``update(n)`` advances it. On a terminal it draws a tqdm bar on ``stream`` (stderr);
    otherwise it draws nothing and logs one summary line on close.
    """

    def __init__(self, desc: str, total: float | None = None, unit: str = "it", *, stream: IO[str] | None = None,
                 logger: logging.Logger | None = None, enabled: bool | None = None) -> None:
        self.desc, self.total, self.unit = desc, total, unit
        self.n = 0.0
        self.log = logger or log
        self.t0 = time.perf_counter()
        self._bar = None
        self._lock = threading.Lock()  # loops may update from worker threads
        if enabled if enabled is not None else bar_enabled(stream):
            from tqdm import tqdm

            self._bar = tqdm(total=total, desc=desc, unit=unit, unit_scale=unit == "B", unit_divisor=1024,
                             file=stream if stream is not None else sys.stderr, leave=False, dynamic_ncols=True)

    def update(self, n: float = 1) -> None:
        with self._lock:
            self.n += n
            if self._bar is not None:
                self._bar.update(n)

    def summary(self) -> str:
        """'desc: 12 blocks in 3.4 s' or 'desc: 1.5 MiB in 0.2 s (7.5 MiB/s)'."""
        dt = time.perf_counter() - self.t0
        if self.unit == "B":
            rate = f" ({human_bytes(self.n / dt)}/s)" if dt > 0 else ""
            return f"{self.desc}: {human_bytes(self.n)} in {dt:.1f} s{rate}"
        of = f"/{self.total:g}" if self.total is not None and self.total != self.n else ""
        return f"{self.desc}: {self.n:g}{of} {self.unit} in {dt:.1f} s"

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()
            self._bar = None
        self.log.info("%s", self.summary())

    def __enter__(self) -> Progress:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()


def track(items: Iterable[T], desc: str, total: int | None = None, unit: str = "it", **kw: Any) -> Iterator[T]:
    """Iterate ``items`` with a :class:`Progress` (one step per item)."""
    if total is None and hasattr(items, "__len__"):
        total = len(items)  # type: ignore[arg-type]
    with Progress(desc, total, unit, **kw) as p:
        for item in items:
            yield item
            p.update(1)
