"""Snapshots of the run screen in each state, at 80x24, with the clock frozen (42 min into the incident)."""

from __future__ import annotations

from typing import Any

from runbook.events import StepStatus
from tests.tui.conftest import until, waiting_on

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


def test_awaiting_a_checklist_item(snap_compare: Any, make_app: Any) -> None:
    app, _ = make_app(RUNBOOK, frozen=True)

    async def before(pilot: Any) -> None:
        await until(pilot, waiting_on(app, "tell", "ack"))

    assert snap_compare(app, terminal_size=(80, 24), run_before=before)


def test_awaiting_a_dangerous_typed_step(snap_compare: Any, make_app: Any) -> None:
    app, engine = make_app(RUNBOOK, frozen=True)

    async def before(pilot: Any) -> None:
        await until(pilot, waiting_on(app, "tell"))
        await pilot.press("r", "r")
        await until(pilot, waiting_on(app, "fetch"))
        await engine.skip("fetch", "fetched by hand from the off-site copy")
        await until(pilot, waiting_on(app, "restore", "confirm"))

    assert snap_compare(app, terminal_size=(80, 24), run_before=before)


def test_failed_step(snap_compare: Any, make_app: Any) -> None:
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

    assert snap_compare(app, terminal_size=(80, 24), run_before=before)
    assert engine.state.steps["check"].status == StepStatus.failed


def test_rehearsal(snap_compare: Any, make_app: Any) -> None:
    app, _ = make_app(RUNBOOK, frozen=True, mode="rehearsal")

    async def before(pilot: Any) -> None:
        await until(pilot, waiting_on(app, "tell"))
        await pilot.press("r", "r")
        await until(pilot, waiting_on(app, "fetch", "mark"))

    assert snap_compare(app, terminal_size=(80, 24), run_before=before)


def test_wide_terminal(snap_compare: Any, make_app: Any) -> None:
    app, _ = make_app(RUNBOOK, frozen=True, mode="drill")

    async def before(pilot: Any) -> None:
        await until(pilot, waiting_on(app, "tell"))

    assert snap_compare(app, terminal_size=(160, 50), run_before=before)
