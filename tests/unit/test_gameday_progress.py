"""Progress over time (`runbook runs --game-days`): each person's game days by fault with their score, from the
ledger and the runs' journals; faults nobody has practised; 90 days without a game day flagged."""

from __future__ import annotations

import json
from datetime import timedelta
from pathlib import Path

import pytest

from runbook.clock import FrozenClock, parse_iso
from runbook.gameday import progress
from runbook.journal import Journal
from runbook.state import list_runs
from steps.sandbox.faults import listing
from steps.sandbox.faults.record import GameDay, append_ledger
from tests.conftest import run_cli
from tests.support.journals import T0, JournalBuilder, at
from tests.unit.test_gameday_debrief import FAULTS, drill


def write_run(state_dir: Path, run_id: str, b: JournalBuilder) -> None:
    """The builder's events as a real, hash-chained journal under the state directory."""
    clock = FrozenClock(T0)
    j = Journal(state_dir / "runs" / run_id / "journal.jsonl", clock)
    for e in b.events:
        clock._now = parse_iso(e["ts"])
        data = {k: v for k, v in e.items() if k not in ("seq", "ts", "type")}
        if e["type"] == "run-started":
            data["run_id"] = run_id
        j.append(e["type"], **data)
    j.close()


def played(game_id: str, operator: str, faults: list[str], run_id: str | None, created_min: float) -> GameDay:
    return GameDay(game_id=game_id, seed=3, scenario="restore-latest", faults=faults, operator=operator,
                   created_at=at(created_min), run_id=run_id, baseline={"rpo_s": 60.0, "rto_s": 120.0})


def with_game(b: JournalBuilder, game_id: str) -> JournalBuilder:
    for e in b.events:
        if e["type"] == "game-day":
            e["game_id"] = game_id
    return b


@pytest.fixture
def ledger_dir(tmp_path: Path) -> Path:
    sdir = tmp_path / "state"
    write_run(sdir, "run-a1", with_game(drill(), "gd-20261125T025500Z-0a01"))  # score 92 (test_gameday_debrief)
    write_run(sdir, "run-a2", with_game(drill(react=7.5), "gd-20261125T025600Z-0a02"))  # detect -14, recover -11, data -4: 71
    write_run(sdir, "run-b1", with_game(drill(end=""), "gd-20260801T030000Z-0b01"))  # still open
    write_run(sdir, "run-b0", with_game(drill(retry_fails=True), "gd-20260727T030000Z-0b00"))  # aborted: 10
    append_ledger(sdir, played("gd-20261125T025500Z-0a01", "alice", ["bad-backup"], None, -5))
    append_ledger(sdir, played("gd-20261125T025500Z-0a01", "alice", ["bad-backup"], "run-a1", -5))  # newest wins
    append_ledger(sdir, played("gd-20261125T025600Z-0a02", "alice", ["bad-backup", "silent"], "run-a2", -4))
    append_ledger(sdir, played("gd-20260727T030000Z-0b00", "bob", ["bad-backup"], "run-b0", -120 * 24 * 60))
    append_ledger(sdir, played("gd-20260801T030000Z-0b01", "bob", ["silent"], "run-b1", -116 * 24 * 60))
    append_ledger(sdir, played("gd-20261124T030000Z-0c01", "carol", ["silent"], "run-gone", -24 * 60))
    with open(sdir / "gamedays.jsonl", "a") as f:
        f.write("{not json\n")
    return sdir


def test_each_person_by_fault_with_score_and_staleness(ledger_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from runbook.gameday import game_days
    from steps.sandbox import faults as fx

    fx.registry()
    monkeypatch.setattr(fx, "FAULTS", {**FAULTS})
    now = T0 + timedelta(hours=2)
    prog = progress(game_days(ledger_dir), list_runs(ledger_dir), ["bad-backup", "silent", "never-played"],
                    ledger_dir, now)
    alice, bob, carol = prog.people
    assert [(p.game_id, p.status, p.score) for p in alice.played] == [
        ("gd-20261125T025500Z-0a01", "completed", 92), ("gd-20261125T025600Z-0a02", "completed", 71)]
    assert list(alice.by_fault()) == ["bad-backup", "silent"] and not alice.stale and alice.age_days is not None
    assert [(p.status, p.score) for p in bob.played] == [("aborted", 10), ("open", None)]
    assert bob.stale and bob.last_at == parse_iso(at(-120 * 24 * 60))  # the open one is not a game day played
    assert carol.played[0].status == "journal missing" and carol.stale and carol.last_at is None
    assert prog.unpractised == ["never-played"]


def test_runs_game_days_on_the_command_line(ledger_dir: Path) -> None:
    r = run_cli("runs", "--game-days", "--state-dir", str(ledger_dir))
    assert r.returncode == 0, r.stderr
    lines = r.stdout.splitlines()
    assert any(ln.startswith("alice: 2 game days, last game day 2026-11-25") for ln in lines)
    assert any(ln.startswith("bob: 2 game days, last game day 2026-07-28") and "STALE: none in 90 days" in ln
               for ln in lines)
    assert any(ln.startswith("carol: 1 game day, no game day finished") and "STALE" in ln for ln in lines)
    assert "  bad-backup                   2026-11-25 02:55 92    run-a1" in lines
    assert "  silent                       2026-11-24 03:00 —     run-gone (journal missing)" in lines
    registered = [f.name for f in listing(None)]
    if registered:
        assert f"Faults nobody has practised: {', '.join(sorted(registered))}" in r.stdout
    doc = json.loads(run_cli("runs", "--game-days", "--json", "--state-dir", str(ledger_dir)).stdout)
    assert [p["operator"] for p in doc["people"]] == ["alice", "bob", "carol"]
    assert doc["people"][0]["game_days"][0]["score"] == 92 and doc["people"][1]["stale"] is True
    assert doc["people"][2]["game_days"][0]["status"] == "journal missing"
    assert doc["unpractised"] == sorted(registered) and doc["stale_after_days"] == 90


def test_no_ledger_says_how_to_play(tmp_path: Path) -> None:
    r = run_cli("runs", "--game-days", "--state-dir", str(tmp_path))
    assert r.returncode == 0 and "no game days in" in r.stdout and "runbook demo --fault random" in r.stdout




def test_the_report_has_the_debrief_only_once_the_game_day_ended(ledger_dir: Path) -> None:
    for fmt in ("md", "html"):
        ended = run_cli("report", "run-a1", "--format", fmt, "--state-dir", str(ledger_dir))
        assert ended.returncode == 0, ended.stderr
        assert "Game day debrief" in ended.stdout and "bad-backup" in ended.stdout and "92/100" in ended.stdout
        still_open = run_cli("report", "run-b1", "--format", fmt, "--state-dir", str(ledger_dir))
        assert still_open.returncode == 0, still_open.stderr
        assert "Game day debrief" not in still_open.stdout and "/100" not in still_open.stdout
    write_run(ledger_dir, "run-x", with_game(drill(), "gd-20261125T025900Z-0x01"))  # in no ledger
    r = run_cli("report", "run-x", "--state-dir", str(ledger_dir))
    assert r.returncode == 0 and "Game day debrief" not in r.stdout
    assert "warning: no game day debrief: run run-x is game day gd-20261125T025900Z-0x01, whose record is not in" \
        in r.stderr and "Traceback" not in r.stderr
