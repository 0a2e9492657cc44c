"""The incident room in the driver's cockpit: a step waiting for another operator's approval, and the cockpit of
a driver whose run was taken over (read-only, with a banner). Pilot tests; requests are real files in the run's
`requests/`, owned by the user they claim to come from (root makes them so, as the tests run as root)."""

from __future__ import annotations

import io
import json
import os
import pwd
from datetime import timedelta
from pathlib import Path

import pytest
from rich.console import Console
from textual.widgets import Static

from runbook.events import StepStatus
from runbook.requests import PENDING, write_request
from runbook.tui.handover_screen import TakenOverScreen
from runbook.tui.modals import TypedConfirmModal
from runbook.tui.widgets import header
from tests.tui.conftest import journal, types, until, waiting_on

DANGER = """
    version: 1
    name: t
    steps:
      - id: hello
        run: echo hello
        confirm: none
      - id: drop
        title: Drop the old database
        argv: [echo, dropping, old_db]
        danger: true
"""

needs_root = pytest.mark.skipif(os.geteuid() != 0, reason="a request of another user is made with chown (root)")


def _request_as(user: str, rdir: Path, kind: str, body: dict) -> Path:
    """A request of another user, as that user's session would drop it: whole and already theirs when it appears
    in the run's requests/ (written beside the state directory, given to the user, then renamed in). Written in
    place and given away afterwards, the driver could read it first, as its own user's."""
    staging = rdir.parent.parent.parent / f"staging-{kind}"
    (staging / "requests").mkdir(parents=True, exist_ok=True)
    made = write_request(staging, kind, body)
    pw = pwd.getpwnam(user)
    os.chown(made, pw.pw_uid, pw.pw_gid)
    final = rdir / "requests" / made.name
    os.rename(made, final)
    return final


def header_text(engine) -> str:  # type: ignore[no-untyped-def]
    """The cockpit's header as plain text at 80 columns (the same function draws it)."""
    out = Console(width=80, record=True, file=io.StringIO())
    out.print(header(engine, 80))
    return out.export_text()


def hint(app) -> str:  # type: ignore[no-untyped-def]
    return str(app.screen.query_one("#hint", Static).render())


@needs_root
async def test_danger_step_in_live_mode_waits_for_another_operator(make_app) -> None:
    app, engine = make_app(DANGER)
    rdir = engine.ctx.rdir
    async with app.run_test(size=(80, 24)) as pilot:
        await until(pilot, waiting_on(app, "drop", "approval"))
        assert "Waiting for approval by another operator" in hint(app)
        assert f"runbook approve {engine.run_id} drop" in hint(app)
        pending = json.loads((rdir / PENDING).read_text())
        assert pending["command"] == "echo dropping old_db" and pending["step"] == "drop"
        await pilot.press("r")  # no key of the driver's passes this wait
        await pilot.pause(0.3)
        assert not [e for e in journal(engine) if e["type"] == "step-confirmed" and e.get("step") == "drop"]
        assert engine.state.steps["drop"].status != StepStatus.running
        # an approval from the driver's own user: refused, named
        own = write_request(rdir, "approve", {"run_id": engine.run_id, "step": "drop", "hash": pending["hash"],
                                              "nonce": pending["nonce"]})
        await until(pilot, lambda: "approval-refused" in types(engine))
        assert not own.exists()
        refused = [e for e in journal(engine) if e["type"] == "approval-refused"]
        assert "driver's own user" in refused[0]["reason"]
        assert waiting_on(app, "drop", "approval")()
        # another user's approval: verified, journaled, and the step becomes runnable (typed confirmation next)
        _request_as("postgres", rdir, "approve", {"run_id": engine.run_id, "step": "drop", "hash": pending["hash"],
                                                  "nonce": pending["nonce"]})
        await until(pilot, waiting_on(app, "drop", "confirm"))
        approved = [e for e in journal(engine) if e["type"] == "approved"]
        assert approved[0]["approver"] == "postgres" and approved[0]["command_hash"] == pending["hash"]
        assert not (rdir / PENDING).exists()
        await pilot.press("r")
        await until(pilot, lambda: isinstance(app.screen, TypedConfirmModal))
        await pilot.press(*"drop", "enter")
        await until(pilot, lambda: engine.state.steps["drop"].status == StepStatus.succeeded)
        order = [e["type"] for e in journal(engine) if e["type"] in ("approved", "step-confirmed", "step-started")
                 and e.get("step") == "drop"]
        assert order == ["approved", "step-confirmed", "step-started"]


async def test_a_drill_needs_no_approval_by_default(make_app) -> None:
    app, engine = make_app(DANGER, mode="drill")
    async with app.run_test(size=(80, 24)) as pilot:
        await until(pilot, waiting_on(app, "drop", "confirm"))
        assert "approval-awaited" not in types(engine)


async def test_taken_over_cockpit_turns_read_only_with_a_banner(make_app) -> None:
    app, engine = make_app(DANGER, mode="drill")
    async with app.run_test(size=(80, 24)) as pilot:
        await until(pilot, waiting_on(app, "drop", "confirm"))
        write_request(engine.ctx.rdir, "takeover", {"run_id": engine.run_id, "user": "alice", "host": "other-tty",
                                                    "pid": 4242, "driver_pid": os.getpid()})
        await until(pilot, lambda: isinstance(app.screen, TakenOverScreen), timeout=2.0)  # noticed within 2 s
        banner = str(app.screen.query_one("#handover-banner", Static).render())
        assert "TAKEN OVER by alice@other-tty" in banner
        assert engine.ctx.lock is None  # the lock is let go: the new driver takes it
        before = types(engine)
        assert before[-2:] == ["handover-requested", "run-detached"]
        for key in ("r", "s", "a", "c", "n"):  # no key changes the run any more
            await pilot.press(key)
        await pilot.pause(0.3)
        assert types(engine) == before
        await pilot.press("q")
        await until(pilot, lambda: not app.is_running)
    assert app.return_value == 4  # left open: the run goes on in its new driver's hands


DUTIES = """
    version: 1
    name: t
    reminders:
      - {id: update, every: 30m, title: Post the next stakeholder update}
    steps:
      - id: tell
        manual: [Post in the incident channel]
        every: 45m
      - id: wait
        manual: [Wait for the restore]
"""


async def test_timed_duties_show_beside_the_clock_nag_when_overdue_and_are_journaled(make_app) -> None:
    from runbook.tui.modals import ConfirmModal

    app, engine = make_app(DUTIES, frozen=True)
    clock = engine.clock
    async with app.run_test(size=(80, 24)) as pilot:
        await until(pilot, waiting_on(app, "tell", "ack"))
        due = (clock.now() + timedelta(minutes=30)).astimezone()
        assert f"next duty {due:%H:%M}" in header_text(engine)
        clock.advance(31 * 60)  # type: ignore[attr-defined]
        app.screen._tick()  # type: ignore[attr-defined]
        await pilot.pause(0.1)
        assert "DUTY 0:01:00 LATE" in header_text(engine)
        assert any("stakeholder update" in n.message for n in app._notifications)
        await pilot.press("u")
        await until(pilot, lambda: isinstance(app.screen, ConfirmModal))
        await pilot.press("tab", "enter")  # the modal focuses Cancel; Done is the other button
        await until(pilot, lambda: "reminder-done" in types(engine))
        done = [e for e in journal(engine) if e["type"] == "reminder-done"]
        assert done[0]["reminder"] == "update" and done[0]["late_s"] == 60.0
        # the checklist step's own duty is armed once it succeeds: due 45 m after
        await pilot.press("r")
        await until(pilot, waiting_on(app, "wait", "ack"))
        from runbook.duties import duties

        found = {d.id: d for d in duties(engine.ctx.runbook, engine.state)}
        assert set(found) == {"update", "tell"}
        assert (found["update"].due_at - clock.now()).total_seconds() == 30 * 60
        assert (found["tell"].due_at - clock.now()).total_seconds() == 45 * 60


@needs_root
async def test_a_watcher_sees_the_approval_wait_and_its_end(make_app, state_dir) -> None:  # type: ignore[no-untyped-def]
    from runbook.tui.watch_screen import WatchApp
    from runbook.watching import open_local

    app, engine = make_app(DANGER)
    async with app.run_test(size=(80, 24)) as pilot:
        await until(pilot, waiting_on(app, "drop", "approval"))
        watcher = WatchApp(open_local(state_dir, engine.run_id), poll_s=0.05)
        async with watcher.run_test(size=(80, 24)) as wpilot:
            await until(wpilot, waiting_on(watcher, "drop", "approval"))
            assert "Waiting for approval by another operator" in hint(watcher)
            assert f"runbook approve {engine.run_id} drop" in hint(watcher)
            pending = json.loads((engine.ctx.rdir / PENDING).read_text())
            _request_as("postgres", engine.ctx.rdir, "approve", {"run_id": engine.run_id, "step": "drop",
                                                                 "hash": pending["hash"], "nonce": pending["nonce"]})
            await until(pilot, waiting_on(app, "drop", "confirm"))
            await until(wpilot, waiting_on(watcher, "drop", "confirm"))


async def test_what_an_approver_is_shown_has_its_secrets_masked(make_app) -> None:
    from runbook.redact import MASK

    app, engine = make_app("""
        version: 1
        name: t
        params:
          token: {default: "tok-9f8e7d6c5b4a", secret: true}
        steps:
          - id: push
            argv: [curl, -H, "X-Token: {{ token }}", "https://example.invalid/"]
            approve: {by: other}
    """)
    async with app.run_test(size=(80, 24)) as pilot:
        await until(pilot, waiting_on(app, "push", "approval"))
        raw = (engine.ctx.rdir / PENDING).read_text()
        assert "tok-9f8e7d6c5b4a" not in raw and MASK in json.loads(raw)["command"]
        assert "tok-9f8e7d6c5b4a" not in (engine.ctx.rdir / "journal.jsonl").read_text()


async def test_a_take_over_while_a_question_is_open_closes_it(make_app) -> None:
    app, engine = make_app(DANGER, mode="drill")
    async with app.run_test(size=(80, 24)) as pilot:
        await until(pilot, waiting_on(app, "drop", "confirm"))
        await pilot.press("r")
        await until(pilot, lambda: isinstance(app.screen, TypedConfirmModal))
        write_request(engine.ctx.rdir, "takeover", {"run_id": engine.run_id, "user": "alice", "host": "tty2",
                                                    "pid": 4242, "driver_pid": os.getpid()})
        await until(pilot, lambda: isinstance(app.screen, TakenOverScreen), timeout=2.0)
        await pilot.press(*"drop", "enter")  # typed into nothing: the question is gone
        await pilot.pause(0.3)
        assert not [e for e in journal(engine) if e["type"] in ("step-confirmed", "step-started")
                    and e.get("step") == "drop"]


async def test_a_flood_of_bad_requests_cannot_drown_the_journal(make_app) -> None:
    from runbook.engine import REFUSALS_JOURNALED

    app, engine = make_app(DANGER, mode="drill")
    async with app.run_test(size=(80, 24)) as pilot:
        await until(pilot, waiting_on(app, "drop", "confirm"))
        requests = engine.ctx.rdir / "requests"
        for i in range(REFUSALS_JOURNALED + 30):
            (requests / f"junk-{i:03}.json").write_text("not json")
        await until(pilot, lambda: not any(requests.iterdir()), timeout=10)
        await until(pilot, lambda: "requests-refused" in types(engine))
        assert types(engine).count("request-refused") == REFUSALS_JOURNALED
        flood = [e for e in journal(engine) if e["type"] == "requests-refused"]
        assert len(flood) == 1  # said once a minute at most
        assert waiting_on(app, "drop", "confirm")()  # the run goes on


REMOTE = """
    version: 1
    name: remote
    target: "db-host:5432/app"
    repository: "{{ repository }}"
    params:
      repository: {type: path}
    steps:
      - id: ask
        title: Wait at the question
        run: echo asked
      - id: done
        run: echo done
        confirm: none
"""


async def test_a_take_over_from_another_host_turns_the_cockpit_into_a_watcher_through_the_repository(
        make_app, tmp_path) -> None:  # type: ignore[no-untyped-def]
    """Host B (another process, its own HOME, state directory, config and key) takes the run over through the
    repository while the driver's cockpit waits at a question: the cockpit turns into the watch cockpit, following
    the run through the repository (B's events appear in it), under a banner naming B and "another host"."""
    import subprocess
    import sys

    from runbook.repository_watch import RepositoryEventSource
    from runbook.tui.watch_screen import WatchSummaryScreen
    from tests.conftest import ROOT
    from tests.support.signing import make_keys

    repo = tmp_path / "repo"
    keys = {n: make_keys(tmp_path, n) for n in ("a", "b")}
    trusted = ", ".join(str(pub) for _, pub in keys.values())
    cfg = {}
    for n, (private, _) in keys.items():
        cfg[n] = tmp_path / f"{n}.yaml"
        cfg[n].write_text(f"version: 1\nlocal: {{path: {repo}}}\nsigning: {{private_key: {private}, public_keys: "
                          f"[{trusted}]}}\n")
    app, engine = make_app(REMOTE, mode="drill", sets={"repository": str(cfg["a"])})
    home = tmp_path / "b-home"
    home.mkdir()
    env = {**os.environ, "HOME": str(home), "XDG_CONFIG_HOME": str(home / ".config"), "NO_COLOR": "1"}
    async with app.run_test(size=(80, 24)) as pilot:
        await until(pilot, waiting_on(app, "ask", "confirm"))
        await until(pilot, lambda: (repo / "runs" / engine.run_id / "live.json").exists())
        b = subprocess.Popen([sys.executable, "-m", "runbook", "take-over", "-c", str(cfg["b"]), engine.run_id,
                              "--yes", "--headless", "--state-dir", str(tmp_path / "b-state")],
                             stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env, cwd=ROOT)
        try:
            await until(pilot, lambda: isinstance(app.screen, TakenOverScreen)
                        and bool(app.screen.query("#handover-banner")), timeout=30)
            banner = str(app.screen.query_one("#handover-banner", Static).render())
            assert "TAKEN OVER by" in banner and "from another host" in banner, banner
            assert isinstance(app.screen.view.source, RepositoryEventSource)
            # B's own events reach this cockpit through the repository
            await until(pilot, lambda: any(e.get("type") == "handover" for e in app.screen.view.state.events),
                        timeout=30)
            assert types(engine)[-2:] == ["handed-over", "run-detached"]
            out = b.communicate(timeout=60)[0]
            assert b.returncode == 0, out
            # B completed the run: this cockpit, following it through the repository, shows its summary
            await until(pilot, lambda: isinstance(app.screen, WatchSummaryScreen), timeout=30)
            await pilot.press("q")
            await until(pilot, lambda: not app.is_running)
        finally:
            if b.poll() is None:
                b.kill()
                b.communicate()
    assert app.return_value == 0  # the run completed (in B's hands)
