"""Progress: a bar on a terminal, one log line per step when the output is captured (DVC, CI)."""

from __future__ import annotations

import io
import logging
import time

import pytest

from pipeline.progress import Progress, bar_enabled, human_bytes, track


class _Tty(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_captured_output_gets_no_bar_and_one_summary_line(caplog: pytest.LogCaptureFixture, monkeypatch) -> None:
    monkeypatch.delenv("SAREO_PROGRESS", raising=False)
    stream = io.StringIO()  # not a terminal
    caplog.set_level(logging.INFO, logger="sareo.progress")
    with Progress("download sar.tif", 3 * 1024 * 1024, "B", stream=stream) as p:
        for _ in range(3):
            p.update(1024 * 1024)
    assert stream.getvalue() == ""
    lines = [r.getMessage() for r in caplog.records]
    assert len(lines) == 1 and lines[0].startswith("download sar.tif: 3.0 MiB in ") and lines[0].endswith("iB/s)")


def test_a_terminal_gets_a_tqdm_bar_with_bytes_and_rate(monkeypatch) -> None:
    monkeypatch.delenv("SAREO_PROGRESS", raising=False)
    stream = _Tty()
    with Progress("download sar.tif", 2048, "B", stream=stream) as p:
        p.update(1024)
        time.sleep(0.15)  # tqdm redraws at most every 0.1 s
        p.update(1024)
    out = stream.getvalue()
    assert "download sar.tif" in out and "2.00k/2.00k" in out and "kB/s" in out


def test_environment_overrides_the_terminal_check(monkeypatch) -> None:
    monkeypatch.setenv("SAREO_PROGRESS", "never")
    assert not bar_enabled(_Tty())
    monkeypatch.setenv("SAREO_PROGRESS", "always")
    assert bar_enabled(io.StringIO())


def test_track_counts_items_and_names_unfinished_totals(caplog: pytest.LogCaptureFixture, monkeypatch) -> None:
    monkeypatch.delenv("SAREO_PROGRESS", raising=False)
    caplog.set_level(logging.INFO, logger="sareo.progress")
    assert list(track(range(5), "blocks", unit="blocks", stream=io.StringIO())) == [0, 1, 2, 3, 4]
    with Progress("tiles", 10, "tiles", stream=io.StringIO()) as p:
        p.update(4)  # interrupted early: the line says how far it got
    msgs = [r.getMessage() for r in caplog.records]
    assert msgs[0].startswith("blocks: 5 blocks in ") and msgs[1].startswith("tiles: 4/10 tiles in ")
    assert human_bytes(1536) == "1.5 KiB" and human_bytes(12) == "12 B"


def test_warp_blocks_log_one_line_per_layer(caplog: pytest.LogCaptureFixture, monkeypatch) -> None:
    from pipeline.grid import grid_for_bbox
    from pipeline.execute import local
    from pipeline.warp import run_blocks

    monkeypatch.delenv("SAREO_PROGRESS", raising=False)
    grid = grid_for_bbox((24.94, 60.166, 24.945, 60.168), 2.0)
    written = []
    caplog.set_level(logging.INFO, logger="sareo.warp")
    run_blocks(grid, 64, lambda w: w.width * w.height, lambda w, r: written.append(r), local(2), label="sar")
    assert sum(written) == grid.width * grid.height
    msgs = [r.getMessage() for r in caplog.records if r.name == "sareo.warp"]
    assert len(msgs) == 1 and msgs[0].startswith(f"sar: {len(written)} blocks in ")
