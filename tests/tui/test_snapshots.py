"""Snapshots of every screen and dialog of the cockpit, each at 80x24 (a laptop over SSH) and 160x50.

Everything on them is fixed: the clock (42 min into the incident), the run id's random part, the operator, the
time zone, and the state directory (a relative path, so that the journal's path is the same on every machine).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
from pathlib import Path
from typing import Any

import pytest

from runbook import session
from runbook.clock import FrozenClock
from runbook.events import StepStatus
from runbook.journal import read_journal
from runbook.loader import load_runbook
from runbook.session import RunOptions
from runbook.tui.app import RunbookApp
from runbook.tui.journal_screen import JournalScreen
from runbook.tui.modals import TextModal
from runbook.tui.start_screens import ParamsScreen, ResumeOfferScreen
from runbook.tui.summary_screen import SummaryScreen
from tests.conftest import ROOT
from tests.tui.conftest import FROZEN_AT, INCIDENT, relative_state_dir, until, waiting_on

SIZES = pytest.mark.parametrize("size", [(80, 24), (160, 50)], ids=["80x24", "160x50"])

RUNBOOK = """
    version: 1
    name: AssetFlow PostgreSQL DR
    targets: {rto: 2h, rpo: 5m}
    params:
      db_name: {default: assetflow_prod}
    steps:
      - id: tell
        title: Tell stakeholders
        description: Nobody should learn about the outage from their users.
        manual: [Post in the incident channel, Page the service owner]
        expect_duration: 5m
      - id: fetch
        title: Fetch the newest backup
        description: Its time is the **recovery point**.
        run: echo fetched
        expect_duration: 10m
      - id: restore
        title: Restore into the new database
        description: Parallel restore, stopping at the first error.
        argv: [echo, pg_restore, --dbname, "{{ db_name }}", --jobs=4, --exit-on-error]
        danger: true
        confirm: {typed: "{{ db_name }}"}
        expect_duration: 30m
      - id: verify
        title: Verify
        run: echo verified
        expect_duration: 3m
"""

# The PITR step and the verify step, skipped: their outputs (the recovery point, the rows lost) are given by hand
# when the next step's command names them, as the engine asks. The step after waits: its panel keeps the
# recovery point pinned and the verify step's facts in sight. (Only shell steps run here: their durations,
# on the step list, are 0 s on any machine; the checks of a real action are in test_facts.py.)
FACTS_RUNBOOK = """
    version: 1
    name: AssetFlow PostgreSQL DR
    targets: {rto: 2h, rpo: 5m}
    steps:
      - id: pitr
        title: Point-in-time recovery into a new data directory
        action: pitr
        with: {config: repository.yaml, target_time: "2026-11-25T02:59:00+00:00", pgdata: /var/lib/postgresql/15/pitr}
      - id: verify
        title: Check the recovered database
        action: verify-database
        with: {db: assetflow_prod, disaster_counts: counts.json}
      - id: recovery-point
        title: Tell the team the recovery point
        run: "echo AssetFlow PITR: recovered to {{ steps.pitr.recovery_point }}, {{ steps.verify.rows_lost }} rows lost"
        confirm: none
      - id: isolate
        title: Show the maintenance page
        description: Writes that reach a half-recovered database are lost or, worse, mixed into it.
        run: echo "maintenance page on"
        expect_duration: 2m
"""

# The sample runbook's longest checklist item, and the step that recovers to a point in time.
LONG_ITEM = ("Nothing writes to the database: application servers, workers and scheduled jobs are stopped, or "
             "the server refuses their connections (pg_hba.conf reject, or ALTER DATABASE ... WITH "
             "ALLOW_CONNECTIONS false)")
CHECKLIST_RUNBOOK = f"""
    version: 1
    name: AssetFlow PostgreSQL DR
    targets: {{rto: 2h, rpo: 5m}}
    steps:
      - id: isolate-check
        title: Make sure nothing writes any more
        description: |
          The command above only asked for the maintenance page; this checklist is what isolation means. The
          step is done when every item is ticked; when one cannot be true, skip the step with the reason.
        manual:
          - The maintenance page is shown to users (open the application's public address from outside and see it)
          - "{LONG_ITEM}"
          - "Who was told, and when, is written in the incident channel: the support desk, the service owner, the users' contacts"
        expect_duration: 3m
      - id: provision-pitr
        title: Check the new data directory's disk
        run: "true"
"""

# The summary of a PITR drill: the recovery point (given by hand: the PITR step was skipped) lies 18 minutes
# before the data was lost, against a 5-minute RPO.
SUMMARY_RUNBOOK = """
    version: 1
    name: AssetFlow PostgreSQL DR
    targets: {rto: 2h, rpo: 5m}
    steps:
      - id: pitr
        title: Point-in-time recovery into a new data directory
        action: pitr
        with: {config: repository.yaml, target_time: "2026-11-25T02:59:00+00:00", pgdata: /var/lib/postgresql/15/pitr}
      - id: verify
        title: Check the recovered database
        action: verify-database
        with: {db: assetflow_prod, disaster_counts: counts.json}
      - id: recovery-point
        title: Tell the team the recovery point
        run: "echo recovered to {{ steps.pitr.recovery_point }}, {{ steps.verify.rows_lost }} rows lost"
        confirm: none
        rto_end: true
"""
RECOVERY_POINT = "2026-11-25T02:41:07.512306+00:00"


@pytest.fixture(autouse=True)
def same_everywhere(monkeypatch: pytest.MonkeyPatch, utc: None) -> None:
    """The run id's random part, the operator and (utc) the time zone, fixed: the snapshots hold them."""
    monkeypatch.setattr(session, "new_run_id", lambda clock, scenario: f"{clock.now():%Y%m%dT%H%M%SZ}-{scenario}-5eed")
    monkeypatch.setattr(session, "operator", lambda: {"user": "oncall", "host": "db-recovery-1", "pid": 4242})


@pytest.fixture
def state_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    return relative_state_dir(tmp_path, monkeypatch)


def _start_app(state_dir: Path, mode: str, **given: str) -> RunbookApp:
    """The start form of the sample runbook (scenario 2), as `runbook run --mode MODE` shows it."""
    path = ROOT / "runbook.yaml"
    opts = RunOptions(runbook_path=path, scenario="pitr", mode=mode, incident_start=INCIDENT)
    # a repository config that does not exist: no `runbook status` verdict line (it would ask this machine)
    return RunbookApp(clock=FrozenClock(FROZEN_AT), state_dir=state_dir, runbook=load_runbook(path), opts=opts,
                      given={"repository": "repository.yaml", **given})


def _stop_step(engine: Any, step: str) -> None:
    """A step left running by a snapshot: its whole session (supervisor and command) is stopped."""
    started = [e for e in read_journal(engine.ctx.rdir / "journal.jsonl").events
               if e["type"] == "step-started" and e.get("step") == step]
    for e in started:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(e["pgid"], signal.SIGKILL)
        with contextlib.suppress(ProcessLookupError):
            os.kill(e["supervisor_pid"], signal.SIGKILL)


# ---- the start ------------------------------------------------------------------------------------------


@SIZES
def test_start_form_drill(snap_compare: Any, state_dir: Path, size: tuple[int, int]) -> None:
    app = _start_app(state_dir, "drill")

    async def before(pilot: Any) -> None:
        await until(pilot, lambda: isinstance(app.screen, ParamsScreen))

    assert snap_compare(app, terminal_size=size, run_before=before)


@SIZES
def test_start_form_live(snap_compare: Any, state_dir: Path, size: tuple[int, int]) -> None:
    app = _start_app(state_dir, "live")

    async def before(pilot: Any) -> None:
        await until(pilot, lambda: isinstance(app.screen, ParamsScreen))

    assert snap_compare(app, terminal_size=size, run_before=before)


@SIZES
def test_start_live_asks_for_its_target(snap_compare: Any, state_dir: Path, size: tuple[int, int]) -> None:
    app = _start_app(state_dir, "live", target_time="2026-11-25T02:59:00+00:00")

    async def before(pilot: Any) -> None:
        await until(pilot, lambda: isinstance(app.screen, ParamsScreen))
        await pilot.press("ctrl+s")
        await until(pilot, lambda: isinstance(app.screen, TextModal))

    assert snap_compare(app, terminal_size=size, run_before=before)


@SIZES
def test_resume_offer(snap_compare: Any, make_app: Any, state_dir: Path, size: tuple[int, int]) -> None:
    _, engine = make_app(RUNBOOK, frozen=True, scenario="restore-latest")

    async def leave_it_waiting() -> None:
        async for e in engine.events():
            if type(e).__name__ == "Waiting":
                await engine.detach("the operator's laptop went to sleep")
            if type(e).__name__ == "RunFinished":
                return

    asyncio.run(leave_it_waiting())
    path = Path("rb.yaml")  # make_app's runbook, in the directory the test runs in
    app = RunbookApp(clock=FrozenClock(FROZEN_AT), state_dir=state_dir, runbook=load_runbook(path),
                     opts=RunOptions(runbook_path=path))

    async def before(pilot: Any) -> None:
        await until(pilot, lambda: isinstance(app.screen, ResumeOfferScreen))

    assert snap_compare(app, terminal_size=size, run_before=before)


# ---- the run screen -------------------------------------------------------------------------------------


@SIZES
def test_awaiting_a_checklist_item(snap_compare: Any, make_app: Any, size: tuple[int, int]) -> None:
    app, _ = make_app(RUNBOOK, frozen=True)

    async def before(pilot: Any) -> None:
        await until(pilot, waiting_on(app, "tell", "ack"))

    assert snap_compare(app, terminal_size=size, run_before=before)


@SIZES
def test_awaiting_a_long_checklist_item(snap_compare: Any, make_app: Any, size: tuple[int, int]) -> None:
    """The item to tick now is read whole, however long; the others are shortened when room is short."""
    app, _ = make_app(CHECKLIST_RUNBOOK, frozen=True)

    async def before(pilot: Any) -> None:
        await until(pilot, waiting_on(app, "isolate-check", "ack"))
        await pilot.press("r")
        await until(pilot, lambda: app.screen.waiting is not None and app.screen.waiting.item_index == 1)

    assert snap_compare(app, terminal_size=size, run_before=before)


@SIZES
def test_awaiting_a_step_keeps_the_recovery_point_and_outputs_in_sight(snap_compare: Any, make_app: Any,
                                                                     size: tuple[int, int]) -> None:
    app, engine = make_app(FACTS_RUNBOOK, frozen=True, mode="drill")

    async def before(pilot: Any) -> None:
        await _skip_and_give(app, engine, pilot)
        await until(pilot, waiting_on(app, "isolate", "confirm"))
        await pilot.pause(0.2)

    assert snap_compare(app, terminal_size=size, run_before=before)
    assert engine.state.steps["verify"].outputs == {"rows_lost": "1342"}


async def _skip_and_give(app: RunbookApp, engine: Any, pilot: Any) -> None:
    """Skip the PITR and verify steps, then give their recovery point and rows lost when the engine asks."""
    await until(pilot, waiting_on(app, "pitr", "confirm"))
    await engine.skip("pitr", "recovered by hand with pg_ctl; the recovery log names the point")
    await until(pilot, waiting_on(app, "verify", "confirm"))
    await engine.skip("verify", "counted by hand")
    for key, value in (("recovery_point", RECOVERY_POINT), ("rows_lost", "1342")):
        await until(pilot, lambda key=key: waiting_on(app, "recovery-point", "value")()  # type: ignore[misc]
                    and app.screen.waiting.value_key.endswith(key))
        await engine.provide_value("recovery-point", value)


@SIZES
def test_running_step(snap_compare: Any, make_app: Any, size: tuple[int, int]) -> None:
    app, engine = make_app("""
        version: 1
        name: AssetFlow PostgreSQL DR
        targets: {rto: 2h}
        steps:
          - id: restore
            title: Restore into a new database
            description: A parallel `pg_restore` that stops at the first error.
            run: "echo 'pg_restore: processing item 3105 TABLE DATA loans'; exec sleep 60"
            confirm: none
            expect_duration: 30m
          - {id: verify, title: Verify the recovered database, run: "true"}
    """, frozen=True)

    async def before(pilot: Any) -> None:
        await until(pilot, lambda: app.screen.running == "restore")
        await until(pilot, lambda: "processing item" in "\n".join(app.screen._lines))
        # all of the running hint (it kept the height of the hint before it on a loaded machine: RunScreen._show)
        await until(pilot, lambda: app.screen.query_one("#hint").size.height == app.screen._rows["hint"], timeout=5)
        await pilot.pause(0.3)

    try:
        assert snap_compare(app, terminal_size=size, run_before=before)
    finally:
        _stop_step(engine, "restore")


@SIZES
def test_failed_step(snap_compare: Any, make_app: Any, size: tuple[int, int]) -> None:
    app, engine = make_app("""
        version: 1
        name: AssetFlow PostgreSQL DR
        steps:
          - {id: check, title: Check the target server, run: "echo 'pg_isready: no response' >&2; exit 2", confirm: none}
          - {id: next, title: Restore, run: "true"}
    """, frozen=True)

    async def before(pilot: Any) -> None:
        await until(pilot, waiting_on(app, "check", "failed"))
        await pilot.pause(0.3)

    assert snap_compare(app, terminal_size=size, run_before=before)
    assert engine.state.steps["check"].status == StepStatus.failed


async def _to_the_typed_step(app: RunbookApp, engine: Any, pilot: Any) -> None:
    await until(pilot, waiting_on(app, "tell"))
    await pilot.press("r", "r")
    await until(pilot, waiting_on(app, "fetch"))
    await engine.skip("fetch", "fetched by hand from the off-site copy")
    await until(pilot, waiting_on(app, "restore", "confirm"))


@SIZES
def test_awaiting_a_dangerous_typed_step(snap_compare: Any, make_app: Any, size: tuple[int, int]) -> None:
    app, engine = make_app(RUNBOOK, frozen=True, approver_policy="none")  # its subject: the typed confirmation

    async def before(pilot: Any) -> None:
        await _to_the_typed_step(app, engine, pilot)

    assert snap_compare(app, terminal_size=size, run_before=before)


@SIZES
def test_typed_confirmation_dialog(snap_compare: Any, make_app: Any, size: tuple[int, int]) -> None:
    """Both buttons (Cancel, OK), the command and what to type: all whole at 80x24."""
    app, engine = make_app(RUNBOOK, frozen=True, approver_policy="none")  # its subject: the typed confirmation

    async def before(pilot: Any) -> None:
        await _to_the_typed_step(app, engine, pilot)
        await pilot.press("r")
        await until(pilot, lambda: isinstance(app.screen, TextModal))

    assert snap_compare(app, terminal_size=size, run_before=before)


@SIZES
def test_rehearsal(snap_compare: Any, make_app: Any, size: tuple[int, int]) -> None:
    app, _ = make_app(RUNBOOK, frozen=True, mode="rehearsal")

    async def before(pilot: Any) -> None:
        await until(pilot, waiting_on(app, "tell"))
        await pilot.press("r", "r")
        await until(pilot, waiting_on(app, "fetch", "mark"))

    assert snap_compare(app, terminal_size=size, run_before=before)


@SIZES
def test_the_sample_runbook_titles(snap_compare: Any, make_app: Any, size: tuple[int, int]) -> None:
    """The shipped runbook's step list: titles abbreviated in the middle at 80 columns, whole at 160."""
    app, _ = make_app((ROOT / "runbook.yaml").read_text(), frozen=True, mode="rehearsal", scenario="pitr",
                      sets={"target_time": "2026-11-25T02:59:00+00:00"})

    async def before(pilot: Any) -> None:
        await until(pilot, waiting_on(app, "communicate", "ack"))

    assert snap_compare(app, terminal_size=size, run_before=before)


# The sample runbook's PITR step with its arguments as a drill fills them: its command is a dozen lines at 80 columns.
PITR_TYPED_RUNBOOK = """
    version: 1
    name: AssetFlow PostgreSQL DR
    targets: {rto: 2h, rpo: 5m}
    steps:
      - id: pitr
        title: Point-in-time recovery into a new data directory
        description: PITR starts from a physical base backup, never from a logical dump.
        action: pitr
        with:
          config: /var/tmp/runbook-sandbox-oncall/sandbox/repository.yaml
          target_kind: time
          target_time: "2026-11-25T02:59:58.785158+00:00"
          pgdata: /var/tmp/runbook-sandbox-oncall/sandbox/pgdata-pitr
          port: "5432"
          socket_dir: /var/tmp/runbook-sandbox-oncall/sandbox/run
          source: any
          cluster: "7716359441529717282"
          runbook_exe: /opt/runbook/venv/bin/runbook
          allow_unsigned: "false"
        confirm: {typed: /var/tmp/runbook-sandbox-oncall/sandbox/pgdata-pitr}
        danger: true
"""


@SIZES
def test_typed_confirmation_dialog_of_a_long_action(snap_compare: Any, make_app: Any, size: tuple[int, int]) -> None:
    """The PITR step's dialog: its arguments scroll in their box; what to type, the input and both buttons show."""
    app, _ = make_app(PITR_TYPED_RUNBOOK, frozen=True, mode="drill")

    async def before(pilot: Any) -> None:
        await until(pilot, waiting_on(app, "pitr", "confirm"))
        await pilot.press("r")
        await until(pilot, lambda: isinstance(app.screen, TextModal))
        await pilot.pause(0.2)
        dialog = app.screen.query_one(".modal").content_region
        for widget in app.screen.query("#text, .modal-body, Button"):
            assert dialog.contains_region(widget.region), f"{widget} is cut: {widget.region} not in {dialog}"

    assert snap_compare(app, terminal_size=size, run_before=before)


# ---- overlays -------------------------------------------------------------------------------------------


@SIZES
def test_help_overlay(snap_compare: Any, make_app: Any, size: tuple[int, int]) -> None:
    app, _ = make_app(RUNBOOK, frozen=True)

    async def before(pilot: Any) -> None:
        await until(pilot, waiting_on(app, "tell", "ack"))
        await pilot.press("question_mark")
        await until(pilot, lambda: type(app.screen).__name__ == "HelpScreen")

    assert snap_compare(app, terminal_size=size, run_before=before)


@SIZES
def test_journal_overlay(snap_compare: Any, make_app: Any, size: tuple[int, int]) -> None:
    app, engine = make_app(RUNBOOK, frozen=True, approver_policy="none")  # its subject: the overlay, not the two-person rule

    async def before(pilot: Any) -> None:
        await _to_the_typed_step(app, engine, pilot)
        await pilot.press("j")
        await until(pilot, lambda: isinstance(app.screen, JournalScreen))
        await pilot.press("up")  # the skip: its reason, whole, under the table
        await until(pilot, lambda: "off-site copy" in str(app.screen.query_one("#journal-detail").render()))

    assert snap_compare(app, terminal_size=size, run_before=before)


# ---- the end ---------------------------------------------------------------------------------------------


@SIZES
def test_summary_with_a_recovery_point_and_a_missed_rpo(snap_compare: Any, make_app: Any,
                                                         size: tuple[int, int]) -> None:
    app, engine = make_app(SUMMARY_RUNBOOK, frozen=True, mode="drill")

    async def before(pilot: Any) -> None:
        await _skip_and_give(app, engine, pilot)
        await until(pilot, lambda: isinstance(app.screen, SummaryScreen))

    assert snap_compare(app, terminal_size=size, run_before=before)
    assert engine.state.steps["pitr"].outputs == {"recovery_point": RECOVERY_POINT}
    assert engine.state.steps["verify"].outputs == {"rows_lost": "1342"}
