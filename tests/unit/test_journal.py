"""The journal: hash chain, fsync'd appends, torn last line cut, edits detected with their line number."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from pathlib import Path

import pytest

from runbook.clock import FrozenClock
from runbook.errors import JournalError
from runbook.journal import Journal, read_journal
from runbook.redact import Redactor


def _journal(path: Path, n: int = 5) -> None:
    j = Journal(path, FrozenClock(datetime(2026, 11, 25, 3, 0, tzinfo=UTC)))
    for i in range(n):
        j.append("note", text=f"event {i}")
    j.close()


def test_chain_reads_back(tmp_path: Path) -> None:
    p = tmp_path / "journal.jsonl"
    _journal(p)
    read = read_journal(p)
    assert [e["seq"] for e in read.events] == [1, 2, 3, 4, 5]
    assert read.events[1]["prev"] == read.events[0]["hash"]
    assert not read.warnings


def test_torn_last_line_is_cut_with_a_warning_and_appending_goes_on(tmp_path: Path) -> None:
    p = tmp_path / "journal.jsonl"
    _journal(p, 3)
    with open(p, "ab") as f:
        f.write(b'{"seq": 4, "ts": "2026-11-25T03:00')  # the runner died mid-write
    read = read_journal(p)
    assert len(read.events) == 3 and read.torn
    assert "line 4" in read.warnings[0] or ":4:" in read.warnings[0]
    j = Journal(p, FrozenClock(datetime(2026, 11, 25, 4, 0, tzinfo=UTC)))
    assert j.warnings
    j.append("note", text="after the crash")
    j.close()
    again = read_journal(p)
    assert [e["seq"] for e in again.events] == [1, 2, 3, 4]
    assert again.events[-1]["text"] == "after the crash"
    assert not again.warnings


def test_line_edited_in_the_middle_is_reported_with_its_number(tmp_path: Path) -> None:
    p = tmp_path / "journal.jsonl"
    _journal(p)
    lines = p.read_text().splitlines()
    ev = json.loads(lines[2])
    ev["text"] = "nothing happened here"
    lines[2] = json.dumps(ev)
    p.write_text("\n".join(lines) + "\n")
    with pytest.raises(JournalError) as err:
        read_journal(p)
    assert f"{p}:3:" in str(err.value)
    assert "changed" in str(err.value)


def test_removed_line_is_reported(tmp_path: Path) -> None:
    p = tmp_path / "journal.jsonl"
    _journal(p)
    lines = p.read_text().splitlines()
    del lines[1]
    p.write_text("\n".join(lines) + "\n")
    with pytest.raises(JournalError) as err:
        read_journal(p)
    assert f"{p}:2:" in str(err.value)


def test_garbage_in_the_middle_is_reported(tmp_path: Path) -> None:
    p = tmp_path / "journal.jsonl"
    _journal(p)
    lines = p.read_text().splitlines()
    lines[1] = lines[1][:20]
    p.write_text("\n".join(lines) + "\n")
    with pytest.raises(JournalError) as err:
        read_journal(p)
    assert f"{p}:2:" in str(err.value)


def test_secrets_are_redacted_before_writing(tmp_path: Path) -> None:
    p = tmp_path / "journal.jsonl"
    j = Journal(p, FrozenClock(datetime(2026, 11, 25, 3, 0, tzinfo=UTC)), Redactor(["s3cr3t-Pa55"]))
    j.append("note", text="the password is s3cr3t-Pa55", nested={"k": ["x s3cr3t-Pa55 y"]})
    j.close()
    raw = p.read_text()
    assert "s3cr3t-Pa55" not in raw
    assert read_journal(p).events[0]["text"].startswith("the password is ")
