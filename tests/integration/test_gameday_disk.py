"""Game day `disk-too-small` (scenario pitr, as root): the new data directory is put on a tmpfs a quarter of the
cluster's size. The space check names it before anything is restored; handled, the operator points pgdata at a file
system with room and finishes; not handled, the check is skipped and pitr refuses the same. `demo --down` unmounts
the small file system."""

from __future__ import annotations

import os

import pytest

from runbook.errors import Exit
from steps.sandbox.build import DB, mounts_under
from steps.sandbox.faults import registry
from steps.sandbox.faults._pitr_common import at, first
from steps.sandbox.faults.record import for_run
from tests.conftest import run_cli
from tests.support.gameday_pitr import (
    PitrGame,
    assert_changed_and_retried,
    game_fixture,  # noqa: F401 - the game day
    left_open,
)
from tests.support.operator import assert_no_leak, assert_not_handled, assert_skipped, fault_words, points
from tests.support.pitr_cluster import server_runbook_fixture  # noqa: F401 - the server venv

FAULT = registry()["disk-too-small"]
pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="disk-too-small mounts a tmpfs: root only")


def test_handled_the_recovery_is_pointed_at_a_file_system_with_room(game: PitrGame) -> None:
    elsewhere = game.sb.base / "pgdata-roomy"
    play = game.demo(FAULT.name, answers={"provision-pitr": [{"set": {"pgdata": str(elsewhere)}}]})
    assert left_open(play), play.output[-5000:]
    gd = for_run(game.sb.base, play.run_id)
    assert gd is not None
    facts = gd.injected[0]["facts"]
    assert [str(p) for p in mounts_under(game.sb.base)] == [facts["mount"]]
    events = play.events()
    short = first(events, "step-check", step="provision-pitr", name="free space for the recovery", statuses=("failed",))
    assert short is not None and "MB free" in short["hint"] and "needed" in short["hint"]
    assert "not enough space for the recovery" in play.stdout
    assert not first(events, "step-started", step="pitr") and not os.listdir(facts["mount"])  # nothing restored
    again = game.op.resume(play.run_id, sets=play.sets_asked(), answers={"provision-pitr": ["retry"],
                                                                          "pitr": ["confirm"]})
    assert again.code == 0, again.output[-5000:]
    assert again.status() == "completed" and (elsewhere / "PG_VERSION").exists()
    assert int(game.sb.server.psql("select count(*) from maintenance_records", db=DB)) > 0
    assert assert_changed_and_retried(play, again, FAULT, "pgdata") == at(short)
    assert_no_leak([play, again], fault_words(FAULT))
    down = run_cli("demo", "--down", "--dir", str(game.sb.base), "--state-dir", str(game.state), timeout=120)
    assert down.returncode == 0, down.stdout + down.stderr
    assert not game.sb.base.exists() and not mounts_under(game.sb.base.parent)


def test_not_handled_the_check_is_skipped_and_pitr_refuses_the_same(game: PitrGame) -> None:
    play = game.demo(FAULT.name, answers={"provision-pitr": [{"skip": "disks are always big enough"}]})
    assert play.code == Exit.RUN_FAILED, play.output[-5000:]
    events = play.events()
    refused = first(events, "step-check", step="pitr", name="free space for the recovery", statuses=("failed",))
    assert refused is not None
    gd = for_run(game.sb.base, play.run_id)
    assert gd is not None and not os.listdir(gd.injected[0]["facts"]["mount"])  # nothing restored
    d = assert_not_handled(play, FAULT)
    # acted on the failed check, wrongly (a skip): not handled, and the pitr step refused all the same
    assert_skipped(play, d, "provision-pitr", "disks are always big enough")
    assert not d.restored and d.status == "failed"
    assert points(d) == {"detect": 20, "recover": 30, "data": 20, "mistakes": 0} and d.score == 30
