"""Game day `other-major-version` (scenario pitr): the replacement server's binaries report PostgreSQL 16 (a
simulation, steps.sandbox.faults.other_major_version). Handled: the operator reads the refusal, points pg_bindir at
PostgreSQL 15 and finishes. Not handled: the check is skipped, and the pitr step refuses all the same: nothing is
ever restored by the wrong major version."""

from __future__ import annotations

from runbook.errors import Exit
from steps.pg.tools import PG_BIN
from steps.sandbox.faults import registry
from steps.sandbox.faults._pitr_common import first
from tests.support.gameday_pitr import (
    PitrGame,
    assert_changed_and_retried,
    game_fixture,  # noqa: F401 - the game day
)
from tests.support.operator import assert_no_leak, assert_not_handled, assert_skipped, fault_words, points
from tests.support.pitr_cluster import server_runbook_fixture  # noqa: F401 - the server venv

FAULT = registry()["other-major-version"]


def test_handled_the_binaries_are_corrected_and_the_recovery_finishes(game: PitrGame) -> None:
    first_play = game.demo(FAULT.name, answers={"provision-pitr": [{"set": {"pg_bindir": PG_BIN}}]})
    assert first_play.code == Exit.LEFT_OPEN, first_play.output[-4000:]
    out = first_play.stdout
    assert "major version mismatch" in out and "PostgreSQL 16.4" in out and "PostgreSQL 15." in out
    assert not first_play.of_type("step-started", "pitr")  # refused before anything was restored
    assert not game.sb.pitr_datadir.exists()
    second = game.op.resume(first_play.run_id, sets=first_play.sets_asked(),
                            answers={"provision-pitr": ["retry"], "pitr": ["confirm"]})
    assert second.code == 0, second.output[-5000:]
    assert second.status() == "completed"
    assert_changed_and_retried(first_play, second, FAULT, "pg_bindir")
    assert int(game.sb.server.psql("select count(*) from maintenance_records", db="assetflow_prod")) > 0
    assert_no_leak([first_play, second], fault_words(FAULT))
    trainer = game.op.reveal(first_play.run_id, game.sb.base)
    assert f"FAULT {FAULT.name}" in trainer and "replacement-server" in trainer


def test_not_handled_the_check_is_skipped_and_pitr_refuses_the_same(game: PitrGame) -> None:
    play = game.demo(FAULT.name, answers={"provision-pitr": [{"skip": "the versions look fine to me"}]})
    assert play.code == Exit.RUN_FAILED, play.output[-4000:]
    events = play.events()
    refused = first(events, "step-finished", step="pitr", statuses=("failed",))
    assert refused is not None and "major version mismatch" in refused["detail"] + play.stdout
    assert not (game.sb.pitr_datadir / "PG_VERSION").exists()  # nothing restored
    d = assert_not_handled(play, FAULT)
    # acted on the failed check, wrongly (a skip): not handled, and the pitr step refused all the same
    assert_skipped(play, d, "provision-pitr", "the versions look fine to me")
    assert not d.restored and d.status == "failed"
    assert points(d) == {"detect": 20, "recover": 30, "data": 20, "mistakes": 0} and d.score == 30
