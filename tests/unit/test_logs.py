"""The command logging convention (runbook.logs): each run its own label on the console, timestamped lines
with level and pid in the log file, and nothing left attached once the run is over."""

from __future__ import annotations

import io
import logging
import os
import re
from pathlib import Path

import pytest

from runbook.logs import command_logging

FILE_LINE = re.compile(r"^\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3} (DEBUG|INFO|WARNING|ERROR) \[(\d+)\] (.*)$")


def _attached() -> list[logging.Handler]:
    return list(logging.getLogger("runbook").handlers)


def test_two_runs_in_one_process_each_say_their_own_label(tmp_path: Path) -> None:
    before = _attached()
    first, second = io.StringIO(), io.StringIO()
    with command_logging("backup", tmp_path / "backup.log", stream=first):
        logging.getLogger("runbook.backup").info("dumped %s", "alpha")
        logging.getLogger("runbook.prune").info("deleting old")
        logging.getLogger("runbook.backup").debug("only in the file")
    assert _attached() == before
    with command_logging("basebackup", tmp_path / "basebackup.log", stream=second):
        logging.getLogger("runbook.basebackup").warning("waiting for the archive")
        logging.getLogger("runbook.prune").info("deleting wal")
    assert _attached() == before
    assert first.getvalue() == "backup: dumped alpha\nbackup: deleting old\n"
    assert second.getvalue() == "basebackup: waiting for the archive\nbasebackup: deleting wal\n"
    logging.getLogger("runbook.backup").info("after the run: goes nowhere we set up")
    assert "after the run" not in first.getvalue() + second.getvalue()
    assert "after the run" not in (tmp_path / "backup.log").read_text()


def test_the_log_file_has_timestamp_level_and_pid(tmp_path: Path) -> None:
    log_file = tmp_path / "deep" / "dir" / "backup.log"  # the directory is created
    with command_logging("backup", log_file, console=False):
        logging.getLogger("runbook.backup").info("first")
        logging.getLogger("runbook.backup").debug("second")
        logging.getLogger("runbook.prune").error("third")
    with command_logging("backup", log_file, console=False):  # a second run appends
        logging.getLogger("runbook.backup").info("fourth")
    lines = log_file.read_text().splitlines()
    parsed = [FILE_LINE.match(ln) for ln in lines]
    assert all(parsed), lines
    assert [(m.group(1), m.group(3)) for m in parsed if m] == [
        ("INFO", "first"), ("DEBUG", "second"), ("ERROR", "third"), ("INFO", "fourth")]
    assert {m.group(2) for m in parsed if m} == {str(os.getpid())}


def test_console_off_and_the_logger_given_back(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    logger = logging.getLogger("runbook")
    level, propagate, before = logger.level, logger.propagate, _attached()
    logs = command_logging("basebackup", tmp_path / "b.log", console=False)
    assert logger.level == logging.DEBUG and logger.propagate is False
    logging.getLogger("runbook.basebackup").info("quiet")
    logs.close()
    logs.close()  # idempotent
    assert capsys.readouterr().err == ""
    assert (logger.level, logger.propagate) == (level, propagate) and _attached() == before


def test_console_goes_to_stderr_by_default(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    with command_logging("backup", tmp_path / "b.log"):
        logging.getLogger("runbook.backup").info("hello")
    assert capsys.readouterr().err == "backup: hello\n"


def test_an_unwritable_log_file_attaches_nothing(tmp_path: Path) -> None:
    (tmp_path / "file").write_text("")
    before = _attached()
    with pytest.raises(OSError):
        command_logging("backup", tmp_path / "file" / "backup.log")
    assert _attached() == before
