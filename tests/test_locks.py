"""One run per stage and region: a second one waits (saying so) or refuses with --no-wait."""

from __future__ import annotations

import logging
import threading
import time
from pathlib import Path

import pytest
from test_regions import GOOD, write

from pipeline.cli import main
from pipeline.layout import ProjectLayout
from pipeline.locks import StageBusy, stage_lock


def test_second_cli_run_of_a_stage_refuses_naming_the_holder(tmp_path: Path,
                                                              capsys: pytest.CaptureFixture[str]) -> None:
    write(tmp_path, GOOD)
    lock = ProjectLayout.at(tmp_path).lock("grid", "paris")
    with stage_lock(lock, "grid paris"):  # a run in progress (the lock is per open file, so this conflicts)
        assert main(["--root", str(tmp_path), "--no-wait", "grid", "paris"]) == 2
    err = capsys.readouterr().err
    assert f"grid paris: another sareo run (pid " in err and "refusing to run it twice at once" in err
    # another region, or another stage of the same region, is not blocked: it fails on its own merits
    with stage_lock(lock, "grid paris"):
        assert main(["--root", str(tmp_path), "--no-wait", "labels", "paris"]) == 2
        assert "another sareo run" not in capsys.readouterr().err


def test_second_run_waits_and_says_so(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    lock = tmp_path / ".locks" / "fetch@x.lock"
    order: list[str] = []

    def second() -> None:
        with stage_lock(lock, "fetch x"):
            order.append("second")

    with stage_lock(lock, "fetch x"), caplog.at_level(logging.WARNING, logger="sareo.locks"):
        t = threading.Thread(target=second)
        t.start()
        time.sleep(0.3)
        assert order == [] and "fetch x: waiting for another sareo run (pid" in caplog.text
        order.append("first")
    t.join(5)
    assert order == ["first", "second"] and "lock acquired after" in caplog.text
    with pytest.raises(StageBusy), stage_lock(lock, "fetch x"), stage_lock(lock, "fetch x", wait=False):
        pass
