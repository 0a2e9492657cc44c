"""Every binding of the run screen, with Textual's pilot: each test asserts what the key did."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from textual.widgets import Input, Log

from runbook.events import StepStatus
from runbook.tui.help_screen import HelpScreen
from runbook.tui.journal_screen import JournalScreen
from runbook.tui.modals import ConfirmModal, TextModal, TypedConfirmModal
from runbook.tui.run_screen import RunScreen
from runbook.tui.summary_screen import SummaryScreen
from tests.tui.conftest import journal, types, until, waiting_on

TWO_STEPS = """
    version: 1
    name: t
    params:
      db_name: {default: app_db}
    steps:
      - id: hello
        run: for i in $(seq 1 50); do echo line-$i; done
      - id: drop
        argv: [echo, dropping, "{{ db_name }}"]
        confirm: {typed: "{{ db_name }}"}
"""


def log_text(app) -> str:  # type: ignore[no-untyped-def]
    return "\n".join(app.screen.query_one("#output", Log).lines)


async def test_r_runs_the_shown_step_and_streams_output(make_app) -> None:
    app, engine = make_app(TWO_STEPS)
    async with app.run_test(size=(80, 24)) as pilot:
        await until(pilot, waiting_on(app, "hello", "confirm"))
        assert "step-started" not in types(engine)  # shown, not run
        await pilot.press("r")
        await until(pilot, lambda: engine.state.steps["hello"].status == StepStatus.succeeded)
        await until(pilot, lambda: "line-50" in log_text(app))
        confirmed = [e for e in journal(engine) if e["type"] == "step-confirmed"]
        assert confirmed[0]["step"] == "hello" and "TUI" in confirmed[0]["how"]


async def test_typed_confirmation_refuses_wrong_text(make_app) -> None:
    app, engine = make_app(TWO_STEPS)
    async with app.run_test(size=(80, 24)) as pilot:
        await until(pilot, waiting_on(app, "hello"))
        await pilot.press("r")
        await until(pilot, waiting_on(app, "drop", "confirm"))
        await pilot.press("r")
        await until(pilot, lambda: isinstance(app.screen, TypedConfirmModal))
        await pilot.press(*"prod_db", "enter")
        await until(pilot, lambda: "confirm-refused" in types(engine))
        assert [e["step"] for e in journal(engine) if e["type"] == "step-started"] == ["hello"]
        assert isinstance(app.screen, RunScreen)
        await pilot.press("r")
        await until(pilot, lambda: isinstance(app.screen, TypedConfirmModal))
        await pilot.press(*"app_db", "enter")
        await until(pilot, lambda: isinstance(app.screen, SummaryScreen))
        assert engine.state.steps["drop"].status == StepStatus.succeeded


async def test_escape_in_typed_modal_runs_nothing(make_app) -> None:
    app, engine = make_app(TWO_STEPS)
    async with app.run_test(size=(80, 24)) as pilot:
        await until(pilot, waiting_on(app, "hello"))
        await pilot.press("r")
        await until(pilot, waiting_on(app, "drop"))
        await pilot.press("r")
        await until(pilot, lambda: isinstance(app.screen, TypedConfirmModal))
        await pilot.press("escape")
        await pilot.pause(0.3)
        assert isinstance(app.screen, RunScreen)
        assert engine.state.steps["drop"].status == StepStatus.awaiting


async def test_enter_and_space_never_run_a_step(make_app) -> None:
    app, engine = make_app(TWO_STEPS)
    async with app.run_test(size=(80, 24)) as pilot:
        await until(pilot, waiting_on(app, "hello"))
        await pilot.press("enter", "space", "enter")
        await pilot.pause(0.5)
        assert "step-confirmed" not in types(engine)
        assert engine.state.steps["hello"].status == StepStatus.awaiting


@pytest.mark.real_guard
async def test_keys_typed_ahead_of_a_new_step_are_dropped(make_app, monkeypatch: pytest.MonkeyPatch) -> None:
    from runbook.tui import run_screen

    # The real guard is 750 ms; a longer one here keeps the test exact on a loaded machine.
    monkeypatch.setattr(run_screen, "ARM_DELAY_S", 3.0)
    app, engine = make_app("""
        version: 1
        name: t
        steps:
          - {id: one, run: "echo one"}
          - {id: two, run: "echo two"}
    """)
    async with app.run_test(size=(80, 24)) as pilot:
        await until(pilot, waiting_on(app, "one"))
        await pilot.press("r")  # within the guard of the step appearing: dropped
        await pilot.pause(0.3)
        assert "step-confirmed" not in types(engine)
        await pilot.pause(3.0)
        await pilot.press("r")
        await until(pilot, waiting_on(app, "two"))
        await pilot.press("r", "r", "r")  # a burst right after the step changed: all dropped
        await pilot.pause(0.3)
        assert [e["step"] for e in journal(engine) if e["type"] == "step-confirmed"] == ["one"]


async def test_skip_needs_a_reason(make_app) -> None:
    app, engine = make_app(TWO_STEPS)
    async with app.run_test(size=(80, 24)) as pilot:
        await until(pilot, waiting_on(app, "hello"))
        await pilot.press("s")
        await until(pilot, lambda: isinstance(app.screen, TextModal))
        await pilot.press("enter")  # empty: refused, the modal stays
        await pilot.pause(0.2)
        assert isinstance(app.screen, TextModal)
        await pilot.press(*"done by hand", "enter")
        await until(pilot, lambda: engine.state.steps["hello"].status == StepStatus.skipped)
        assert engine.state.steps["hello"].detail == "done by hand"


async def test_note_goes_to_the_journal(make_app) -> None:
    app, engine = make_app(TWO_STEPS)
    async with app.run_test(size=(80, 24)) as pilot:
        await until(pilot, waiting_on(app, "hello"))
        await pilot.press("n")
        await until(pilot, lambda: isinstance(app.screen, TextModal))
        await pilot.press(*"DBA paged at 03:12", "enter")
        await until(pilot, lambda: "note" in types(engine))
        (note,) = [e for e in journal(engine) if e["type"] == "note"]
        assert note["text"] == "DBA paged at 03:12" and note["step"] == "hello"


async def test_cancel_asks_first_then_stops_the_step_and_retry_runs_it_again(make_app, tmp_path: Path) -> None:
    flag = tmp_path / "fast"
    app, engine = make_app(f"""
        version: 1
        name: t
        steps:
          - id: slow
            run: "echo started; if [ -f {flag} ]; then echo quick; else sleep 300; fi"
            confirm: none
    """)
    async with app.run_test(size=(80, 24)) as pilot:
        await until(pilot, lambda: engine.state.steps["slow"].status == StepStatus.running)
        await until(pilot, lambda: "started" in log_text(app))
        await pilot.press("c")
        await until(pilot, lambda: isinstance(app.screen, ConfirmModal))
        assert app.focused is not None and app.focused.id == "cancel"  # the safe choice has the focus
        await pilot.press("enter")  # Cancel: nothing happens
        await pilot.pause(0.3)
        assert engine.state.steps["slow"].status == StepStatus.running
        await pilot.press("c")
        await until(pilot, lambda: isinstance(app.screen, ConfirmModal))
        await pilot.click("#yes")
        await until(pilot, waiting_on(app, "slow", "failed"))
        fin = [e for e in journal(engine) if e["type"] == "step-finished"][0]
        assert fin["cancelled"] is True
        flag.write_text("")
        await pilot.press("t")
        await until(pilot, lambda: isinstance(app.screen, SummaryScreen))
        assert engine.state.steps["slow"].status == StepStatus.succeeded
        assert engine.state.steps["slow"].attempt == 2


async def test_abort_asks_for_a_reason_and_closes_the_run(make_app) -> None:
    app, engine = make_app(TWO_STEPS)
    async with app.run_test(size=(80, 24)) as pilot:
        await until(pilot, waiting_on(app, "hello"))
        await pilot.press("a")
        await until(pilot, lambda: isinstance(app.screen, TextModal))
        await pilot.press("escape")  # changed their mind
        await pilot.pause(0.2)
        assert engine.state.status == "open"
        await pilot.press("a")
        await until(pilot, lambda: isinstance(app.screen, TextModal))
        await pilot.press(*"wrong server", "enter")
        await until(pilot, lambda: isinstance(app.screen, SummaryScreen))
        assert engine.state.status == "aborted" and engine.state.detail == "wrong server"


async def test_output_toggle_journal_and_help(make_app) -> None:
    app, engine = make_app(TWO_STEPS)
    async with app.run_test(size=(80, 24)) as pilot:
        await until(pilot, waiting_on(app, "hello"))
        await pilot.press("o")
        assert app.screen.has_class("output-full")
        assert not app.screen.query_one("#steps").display
        await pilot.press("o")
        assert not app.screen.has_class("output-full")
        await pilot.press("j")
        await until(pilot, lambda: isinstance(app.screen, JournalScreen))
        table = app.screen.query_one("DataTable")
        assert table.row_count == len(journal(engine))  # type: ignore[attr-defined]
        await pilot.press("escape")
        await until(pilot, lambda: isinstance(app.screen, RunScreen))
        await pilot.press("question_mark")
        await until(pilot, lambda: isinstance(app.screen, HelpScreen))
        await pilot.press("escape")
        await until(pilot, lambda: isinstance(app.screen, RunScreen))


async def test_manual_checklist_item_by_item(make_app) -> None:
    app, engine = make_app("""
        version: 1
        name: t
        steps:
          - id: tell
            manual: [Post in the channel, Page the owner]
    """)
    async with app.run_test(size=(80, 24)) as pilot:
        await until(pilot, waiting_on(app, "tell", "ack"))
        assert "Post in the channel" in str(app.screen.query_one("#checklist").render())
        await pilot.press("r")
        await until(pilot, lambda: engine.state.steps["tell"].acked == [0])
        await pilot.press("r")
        await until(pilot, lambda: isinstance(app.screen, SummaryScreen))
        assert [e["item"] for e in journal(engine) if e["type"] == "item-acked"] == ["Post in the channel", "Page the owner"]


async def test_rehearsal_marks_outcomes_and_runs_nothing(make_app, tmp_path: Path) -> None:
    marker = tmp_path / "ran"
    app, engine = make_app(f"""
        version: 1
        name: t
        steps:
          - {{id: a, run: "touch {marker}"}}
          - {{id: b, run: "touch {marker}", on_failure: continue}}
    """, mode="rehearsal")
    async with app.run_test(size=(80, 24)) as pilot:
        await until(pilot, waiting_on(app, "a", "mark"))
        await pilot.press("r")
        await until(pilot, waiting_on(app, "b", "mark"))
        await pilot.press("f")
        await until(pilot, lambda: isinstance(app.screen, TextModal))
        await pilot.press(*"restore took too long", "enter")
        await until(pilot, lambda: isinstance(app.screen, SummaryScreen))
    assert not marker.exists()
    st = engine.state.steps
    assert st["a"].status == StepStatus.succeeded and st["a"].rehearsed
    assert st["b"].status == StepStatus.failed and "restore took too long" in st["b"].notes


async def test_summary_writes_the_report(make_app) -> None:
    app, engine = make_app("""
        version: 1
        name: t
        steps:
          - {id: a, run: "echo a", confirm: none}
    """)
    async with app.run_test(size=(80, 24)) as pilot:
        await until(pilot, lambda: isinstance(app.screen, SummaryScreen))
        await until(pilot, lambda: "COMPLETED" in app.export_screenshot())
        await pilot.press("w")
        await until(pilot, lambda: (engine.ctx.rdir / "report.md").exists())
        assert "## RTO" in (engine.ctx.rdir / "report.md").read_text()
        assert "<html" in (engine.ctx.rdir / "report.html").read_text()
        await pilot.press("q")
    assert app.return_value == 0


async def test_quit_while_running_asks_and_the_step_goes_on(make_app, tmp_path: Path) -> None:
    done = tmp_path / "done"
    app, engine = make_app(f"""
        version: 1
        name: t
        steps:
          - {{id: slow, run: "sleep 1.5; touch {done}", confirm: none}}
    """)
    async with app.run_test(size=(80, 24)) as pilot:
        await until(pilot, lambda: engine.state.steps["slow"].status == StepStatus.running)
        await pilot.press("q")
        await until(pilot, lambda: isinstance(app.screen, ConfirmModal))
        await pilot.click("#yes")
        await until(pilot, lambda: app.return_value is not None)
    assert app.return_value == 4
    assert "run-detached" in types(engine)
    for _ in range(60):
        if done.exists():
            break
        await __import__("asyncio").sleep(0.1)
    assert done.exists(), "the step did not outlive the TUI"


async def test_secret_params_are_masked_in_the_form(make_app, tmp_path: Path) -> None:
    env = tmp_path / "db.env"
    env.write_text("DB_PASSWORD=Pa55-w0rd-X\n")
    os.chmod(env, 0o600)
    app, engine = make_app(f"""
        version: 1
        name: t
        secrets: {{env_file: {env}}}
        steps:
          - {{id: a, run: "echo pw=$PGPASSWORD", confirm: none}}
          - {{id: b, run: "echo b"}}
    """)
    async with app.run_test(size=(80, 24)) as pilot:
        await until(pilot, waiting_on(app, "b"))
        assert "pw=••••••" in log_text(app) and "Pa55-w0rd-X" not in log_text(app)
        assert all(not isinstance(w, Input) or "Pa55" not in w.value for w in app.screen.query("*"))


async def test_rehearsal_practises_the_typed_confirmation(make_app) -> None:
    app, engine = make_app("""
        version: 1
        name: t
        params:
          db_name: {default: app_db}
        steps:
          - {id: drop, run: "echo {{ db_name }}", confirm: {typed: "{{ db_name }}"}}
    """, mode="rehearsal")
    async with app.run_test(size=(80, 24)) as pilot:
        await until(pilot, waiting_on(app, "drop", "mark"))
        await pilot.press("r")
        await until(pilot, lambda: isinstance(app.screen, TypedConfirmModal))
        await pilot.press(*"prod", "enter")
        await until(pilot, lambda: "note" in types(engine))
        assert engine.state.steps["drop"].status == StepStatus.awaiting
        await pilot.press("r")
        await until(pilot, lambda: isinstance(app.screen, TypedConfirmModal))
        await pilot.press(*"app_db", "enter")
        await until(pilot, lambda: isinstance(app.screen, SummaryScreen))
    assert engine.state.steps["drop"].notes == [
        "rehearsal: typed confirmation of drop did not match", "typed confirmation practised"]


LONG_FACT = """
    version: 1
    name: t
    steps:
      - id: point
        run: "echo 'AssetFlow PITR (run 20261206T184716Z-pitr-abcd): recovered to 2026-12-06T18:47:16.123456+00:00 on timeline 2; anything written after that moment must be entered again. END-OF-FACT'"
      - id: after
        manual: [Tell the team the recovery point]
"""


async def test_a_long_output_line_is_read_whole_at_80_columns_and_w_shows_it_raw(make_app) -> None:
    """The recovery point line of a PITR was cut at the pane's edge (`AssetFlow PITR (run 2026...-pitr-`); it now
    folds to the pane's width, every piece inside it, and `w` toggles the raw line (scroll sideways) and back."""
    from runbook.tui.run_screen import fold

    app, engine = make_app(LONG_FACT)
    async with app.run_test(size=(80, 24)) as pilot:
        await until(pilot, waiting_on(app, "point", "confirm"))
        await pilot.press("r")
        await until(pilot, lambda: "END-OF-FACT" in log_text(app))
        log = app.screen.query_one("#output", Log)
        width = log.scrollable_content_region.width
        lines = list(log.lines)
        assert all(len(line) <= width for line in lines), (width, lines)
        joined = " ".join(line.strip() for line in lines)
        assert "recovered to 2026-12-06T18:47:16.123456+00:00 on timeline 2" in joined
        await pilot.press("w")
        await until(pilot, lambda: any(len(line) > width for line in log.lines))
        await pilot.press("w")
        await until(pilot, lambda: all(len(line) <= width for line in log.lines))
    assert fold("short", 20) == ["short"]
    assert fold("aaaa bbbb cccc dddd", 10) == ["aaaa bbbb", "  cccc", "  dddd"]
    assert fold("x" * 25, 10) == ["x" * 10, "  " + "x" * 8, "  " + "x" * 7]
