"""Before the run: the parameter form's live validation, and resuming an interrupted run from the TUI."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import textwrap
from pathlib import Path

from textual.widgets import Button, Input, OptionList, Select, Static

from runbook.clock import Clock
from runbook.events import StepStatus
from runbook.journal import read_journal
from runbook.loader import load_runbook
from runbook.session import RunOptions, open_new_run
from runbook.state import load_state
from runbook.tui.app import RunbookApp
from runbook.tui.modals import ConfirmModal, TextModal
from runbook.tui.run_screen import RunScreen
from runbook.tui.start_screens import ParamsScreen, ResumeOfferScreen
from tests.tui.conftest import until

FORM_RUNBOOK = """
    version: 1
    name: form
    params:
      db_name: {default: app_db, pattern: '^[a-z_]+$', help: Database to recover}
      jobs: {type: int, default: 2}
      target_time: {type: datetime, scenarios: [pitr], help: With a zone}
    scenarios:
      restore-latest: {help: newest backup}
      pitr: {help: to a time}
    steps:
      - {id: a, run: "echo {{ db_name }} {{ jobs }}"}
"""


def _kill_step_session(engine) -> None:  # type: ignore[no-untyped-def]
    """The machine rebooted: the step's supervisor and its whole process group die."""
    started = [x for x in read_journal(engine.ctx.rdir / "journal.jsonl").events if x["type"] == "step-started"][-1]
    for kill in (lambda: os.kill(started["supervisor_pid"], signal.SIGKILL),
                 lambda: os.killpg(started["pgid"], signal.SIGKILL)):
        with contextlib.suppress(ProcessLookupError):
            kill()


async def _die_during(engine, step: str) -> None:  # type: ignore[no-untyped-def]
    killed = False
    async for e in engine.events():
        if not killed and engine.state.steps[step].status == StepStatus.running:
            killed = True
            _kill_step_session(engine)
            await engine.detach("front end died")
        if type(e).__name__ == "RunFinished":
            return


def _write(tmp_path: Path, text: str) -> Path:
    p = tmp_path / "rb.yaml"
    p.write_text(textwrap.dedent(text).lstrip())
    return p


async def test_param_form_validates_live_and_starts_the_run(tmp_path: Path, state_dir: Path) -> None:
    path = _write(tmp_path, FORM_RUNBOOK)
    rb = load_runbook(path)
    app = RunbookApp(clock=Clock(), state_dir=state_dir, runbook=rb,
                     opts=RunOptions(runbook_path=path, scenario="pitr", mode="rehearsal"), given={})
    async with app.run_test(size=(80, 40)) as pilot:
        await until(pilot, lambda: isinstance(app.screen, ParamsScreen))
        screen = app.screen
        start = screen.query_one("#start", Button)
        # pitr needs target_time, which has no default: Start is disabled and says why
        assert start.disabled
        assert "required" in str(screen.query_one("#err-target_time", Static).render())
        screen.query_one("#p-db_name", Input).value = "App-DB; rm -rf /"
        await pilot.pause(0.1)
        assert "db_name" in str(screen.query_one("#err-db_name", Static).render())
        screen.query_one("#p-db_name", Input).value = "app_db"
        screen.query_one("#p-jobs", Input).value = "two"
        screen.query_one("#p-target_time", Input).value = "2026-11-25T03:10:00"  # no zone: refused
        await pilot.pause(0.1)
        assert "jobs" in str(screen.query_one("#err-jobs", Static).render())
        assert "zone" in str(screen.query_one("#err-target_time", Static).render()).lower()
        assert start.disabled
        screen.query_one("#p-jobs", Input).value = "4"
        screen.query_one("#p-target_time", Input).value = "2026-11-25T03:10:00+07:00"
        await pilot.pause(0.1)
        assert not start.disabled
        await pilot.press("ctrl+s")
        await until(pilot, lambda: isinstance(app.screen, RunScreen))
        engine = app.screen.engine  # type: ignore[attr-defined]
        assert engine.state.scenario == "pitr" and engine.state.mode == "rehearsal"
        assert engine.state.params["jobs"] == "4"
        assert engine.state.params["target_time"].startswith("2026-11-25T03:10:00+07:00")


async def test_form_shows_open_errors_instead_of_crashing(tmp_path: Path, state_dir: Path) -> None:
    env = tmp_path / "db.env"
    env.write_text("DB_PASSWORD=x\n")
    os.chmod(env, 0o644)
    path = _write(tmp_path, f"""
        version: 1
        name: t
        secrets: {{env_file: {env}}}
        steps:
          - {{id: a, run: "true"}}
    """)
    app = RunbookApp(clock=Clock(), state_dir=state_dir, runbook=load_runbook(path),
                     opts=RunOptions(runbook_path=path), given={})
    async with app.run_test(size=(80, 24)) as pilot:
        await until(pilot, lambda: isinstance(app.screen, ParamsScreen))
        await pilot.press("ctrl+s")
        await until(pilot, lambda: isinstance(app.screen, TextModal))  # live: the target is typed first
        await pilot.press(*"live", "enter")
        await pilot.pause(0.2)
        assert isinstance(app.screen, ParamsScreen)
        assert "chmod 600" in str(app.screen.query_one("#start-error", Static).render())


async def test_resume_an_interrupted_run_from_the_tui(tmp_path: Path, state_dir: Path) -> None:
    sleep_file = tmp_path / "sleep"
    sleep_file.write_text("300")
    path = _write(tmp_path, f"""
        version: 1
        name: resumable
        steps:
          - {{id: first, run: "echo first", confirm: none}}
          - {{id: long, run: "sleep $(cat {sleep_file}); echo finished", confirm: none}}
          - {{id: last, run: "echo last", confirm: none}}
    """)
    # A first front end starts the run, then dies with the step's whole session (the machine rebooted).
    engine = open_new_run(RunOptions(runbook_path=path), Clock(), state_dir=state_dir)
    run_id = engine.run_id

    await asyncio.wait_for(_die_during(engine, "long"), 30)
    sleep_file.write_text("0")

    app = RunbookApp(clock=Clock(), state_dir=state_dir, runbook=load_runbook(path),
                     opts=RunOptions(runbook_path=path), given={})
    async with app.run_test(size=(100, 30)) as pilot:
        await until(pilot, lambda: isinstance(app.screen, ResumeOfferScreen))
        options = app.screen.query_one(OptionList)
        assert options.option_count == 2
        assert run_id in str(options.get_option_at_index(1).prompt)
        options.highlighted = 1
        await pilot.press("enter")
        await until(pilot, lambda: isinstance(app.screen, RunScreen))
        screen = app.screen
        await until(pilot, lambda: getattr(screen, "waiting", None) is not None
                    and screen.waiting.wait.value == "interrupted")  # type: ignore[attr-defined]
        await pilot.press("e")
        await until(pilot, lambda: isinstance(app.screen, ConfirmModal))
        await pilot.click("#yes")
        await until(pilot, lambda: load_state(state_dir, run_id).status == "completed", timeout=30)
    events = read_journal(state_dir / "runs" / run_id / "journal.jsonl").events
    kinds = [e["type"] for e in events]
    assert kinds.count("step-interrupted") == 1 and "rerun-chosen" in kinds
    assert sum(1 for e in events if e["type"] == "step-started" and e["step"] == "long") == 2


async def test_interrupted_step_marked_done_needs_a_note(tmp_path: Path, state_dir: Path) -> None:
    path = _write(tmp_path, """
        version: 1
        name: resumable
        steps:
          - {id: long, run: "sleep 300", confirm: none}
          - {id: last, run: "echo last", confirm: none}
    """)
    engine = open_new_run(RunOptions(runbook_path=path), Clock(), state_dir=state_dir)

    await asyncio.wait_for(_die_during(engine, "long"), 30)
    from runbook.session import open_resume

    resumed = open_resume(engine.run_id, Clock(), state_dir=state_dir)
    app = RunbookApp(clock=Clock(), state_dir=state_dir, engine=resumed)
    async with app.run_test(size=(80, 24)) as pilot:
        await until(pilot, lambda: getattr(app.screen, "waiting", None) is not None)
        await pilot.press("d")
        await until(pilot, lambda: isinstance(app.screen, TextModal))
        await pilot.press("enter")  # no note: refused
        await pilot.pause(0.2)
        assert isinstance(app.screen, TextModal)
        await pilot.press(*"checked the table by hand", "enter")
        await until(pilot, lambda: resumed.state.steps["long"].status == StepStatus.succeeded)
    assert "checked the table by hand" in resumed.state.steps["long"].notes


async def test_stale_scenarios_are_flagged_at_start(tmp_path: Path, state_dir: Path) -> None:
    from datetime import timedelta

    from runbook.clock import FrozenClock
    from tests.support.engine import drive, yes

    path = _write(tmp_path, """
        version: 1
        name: staleness
        scenarios:
          fresh: {help: drilled}
          old: {help: never drilled}
        steps:
          - {id: a, run: "true", confirm: none}
    """)
    engine = open_new_run(RunOptions(runbook_path=path, scenario="fresh", mode="drill"), Clock(), state_dir=state_dir)
    finished, _ = await drive(engine, yes)
    assert finished.status == "completed"
    clock = FrozenClock(Clock().now() + timedelta(days=3))
    app = RunbookApp(clock=clock, state_dir=state_dir, runbook=load_runbook(path),
                     opts=RunOptions(runbook_path=path), given={})
    async with app.run_test(size=(80, 30)) as pilot:
        await until(pilot, lambda: isinstance(app.screen, ParamsScreen))
        text = str(app.screen.query_one("#drills", Static).render())
        assert "STALE old: never drilled" in text
        assert "ok    fresh: drilled 3 days ago" in text


async def test_a_resumed_interrupted_step_shows_what_its_log_kept(tmp_path: Path, state_dir: Path) -> None:
    """The step's process is gone, nothing streams: the pane shows its output from the log (it was empty)."""
    from textual.widgets import Log

    from runbook.session import open_resume

    path = _write(tmp_path, """
        version: 1
        name: resumable
        steps:
          - {id: long, run: "echo before-the-crash; echo 'E: half restored' >&2; sleep 300", confirm: none}
          - {id: last, run: "echo last", confirm: none}
    """)
    engine = open_new_run(RunOptions(runbook_path=path), Clock(), state_dir=state_dir)

    async def die_after_output() -> None:
        killed = False
        async for e in engine.events():
            if not killed and type(e).__name__ == "OutputLines" and any(
                    ln.text == "E: half restored" for ln in e.lines):  # type: ignore[attr-defined]
                killed = True
                _kill_step_session(engine)
                await engine.detach("front end died")
            if type(e).__name__ == "RunFinished":
                return

    await asyncio.wait_for(die_after_output(), 30)
    resumed = open_resume(engine.run_id, Clock(), state_dir=state_dir)
    app = RunbookApp(clock=Clock(), state_dir=state_dir, engine=resumed)
    async with app.run_test(size=(80, 24)) as pilot:
        await until(pilot, lambda: getattr(app.screen, "waiting", None) is not None
                    and app.screen.waiting.wait.value == "interrupted")  # type: ignore[attr-defined]
        shown = "\n".join(app.screen.query_one("#output", Log).lines).replace("\n  ", " ")  # folds joined
        assert "interrupted: 2 line(s) of output from its log" in shown
        assert "before-the-crash" in shown and "! E: half restored" in shown


async def test_a_live_run_starts_only_after_its_target_is_typed(tmp_path: Path, state_dir: Path) -> None:
    path = _write(tmp_path, """
        version: 1
        name: live
        params:
          db_name: {default: app_db}
        target: "db1:5432/{{ db_name }}"
        steps:
          - {id: a, run: "true"}
    """)
    app = RunbookApp(clock=Clock(), state_dir=state_dir, runbook=load_runbook(path),
                     opts=RunOptions(runbook_path=path), given={})
    async with app.run_test(size=(80, 24)) as pilot:
        await until(pilot, lambda: isinstance(app.screen, ParamsScreen))
        assert " LIVE " in str(app.screen.query_one("#start-title", Static).render())
        app.screen.query_one("#p-db_name", Input).value = "prod_db"
        await pilot.pause(0.1)
        await pilot.press("ctrl+s")
        await until(pilot, lambda: isinstance(app.screen, TextModal))
        assert "db1:5432/prod_db" in str(app.screen.query_one(".modal-body", Static).render())
        await pilot.press(*"db1:5432/app_db", "enter")  # the default's target, not this run's: refused
        await until(pilot, lambda: isinstance(app.screen, ParamsScreen))
        assert "nothing was started" in str(app.screen.query_one("#start-error", Static).render())
        assert not (state_dir / "runs").exists() or not any((state_dir / "runs").iterdir())
        await pilot.press("ctrl+s")
        await until(pilot, lambda: isinstance(app.screen, TextModal))
        await pilot.press(*"db1:5432/prod_db", "enter")
        await until(pilot, lambda: isinstance(app.screen, RunScreen))
        assert app.screen.engine.state.mode == "live"  # type: ignore[attr-defined]


SCENARIO_PARAMS = """
    version: 1
    name: form
    params:
      db_name: {default: app_db}
      restore_dir: {default: /var/tmp/restore}
      target_time: {type: datetime, scenarios: [pitr]}
      pgdata: {default: /var/lib/postgresql/15/recovered}
    scenarios:
      restore-latest: {help: newest backup}
      pitr: {help: to a time}
    steps:
      - {id: fetch, scenarios: [restore-latest], run: "echo {{ db_name }} {{ restore_dir }}"}
      - {id: pitr, scenarios: [pitr], run: "echo {{ db_name }} {{ target_time }} {{ pgdata }}"}
"""


async def test_the_form_asks_only_what_the_chosen_scenario_uses(tmp_path: Path, state_dir: Path) -> None:
    """Scenario 1 showed PITR's parameters too (about 18 Shift-Tabs back to the scenario picker), and Start said
    "Fix the fields in red first" with nothing in red."""
    path = _write(tmp_path, SCENARIO_PARAMS)
    app = RunbookApp(clock=Clock(), state_dir=state_dir, runbook=load_runbook(path),
                     opts=RunOptions(runbook_path=path, mode="rehearsal"), given={})
    async with app.run_test(size=(80, 24)) as pilot:
        await until(pilot, lambda: isinstance(app.screen, ParamsScreen))
        screen = app.screen
        await pilot.press("ctrl+s")  # no scenario chosen yet: it says so, not "fields in red"
        await pilot.pause(0.1)
        assert "Choose a scenario first" in str(screen.query_one("#start-error", Static).render())

        def shown() -> set[str]:
            return {n for n in ("db_name", "restore_dir", "target_time", "pgdata")
                    if screen.query_one(f"#field-{n}").display}

        screen.query_one("#scenario", Select).value = "restore-latest"
        await pilot.pause(0.1)
        assert shown() == {"db_name", "restore_dir"}
        assert not screen.query_one("#start", Button).disabled  # pitr's required target_time is not asked
        screen.query_one("#scenario", Select).value = "pitr"
        await pilot.pause(0.1)
        assert shown() == {"db_name", "target_time", "pgdata"}
        await pilot.press("ctrl+s")
        await pilot.pause(0.1)
        assert "Fix first: target_time" in str(screen.query_one("#start-error", Static).render())
        assert screen.focused is screen.query_one("#p-target_time", Input)
        screen.query_one("#scenario", Select).value = "restore-latest"
        await pilot.pause(0.1)
        await pilot.press("ctrl+s")
        await until(pilot, lambda: isinstance(app.screen, RunScreen))
        engine = app.screen.engine  # type: ignore[attr-defined]
        assert engine.state.scenario == "restore-latest" and engine.state.params["restore_dir"] == "/var/tmp/restore"


async def test_an_empty_field_whose_default_is_empty_is_no_error(tmp_path: Path, state_dir: Path) -> None:
    """A parameter of one scenario with an empty default (`backup_id: {default: '', scenarios: [restore-latest]}`:
    empty means the newest) is resolved as the core resolves it: left empty, the default stands. The form said
    "required here" and refused to start, though `runbook run` accepts it."""
    path = _write(tmp_path, SCENARIO_PARAMS.replace(
        "      pgdata:", "      backup_id: {default: '', pattern: '^([0-9]{8}T[0-9]{6}Z)?$', scenarios: [restore-latest]}\n"
        "      pgdata:").replace('run: "echo {{ db_name }} {{ restore_dir }}"', 'run: "echo {{ db_name }} {{ backup_id }}"'))
    app = RunbookApp(clock=Clock(), state_dir=state_dir, runbook=load_runbook(path),
                     opts=RunOptions(runbook_path=path, mode="rehearsal", scenario="restore-latest"), given={})
    async with app.run_test(size=(80, 24)) as pilot:
        await until(pilot, lambda: isinstance(app.screen, ParamsScreen))
        screen = app.screen
        assert screen.query_one("#field-backup_id").display
        await pilot.press("ctrl+s")
        await until(pilot, lambda: isinstance(app.screen, RunScreen))
        assert app.screen.engine.state.params["backup_id"] == ""  # type: ignore[attr-defined]
