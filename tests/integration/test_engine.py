"""The engine against real child processes: confirmations, failures, retries, timeouts, cancel, checklists."""

from __future__ import annotations

import asyncio
import os
import time
from pathlib import Path

import pytest

from runbook import events as ev
from runbook.engine import ConfirmRefused, Engine
from runbook.events import StepStatus, Wait
from runbook.journal import read_journal
from tests.support.engine import drive, journal_types, open_run, output_text, yes


async def test_live_run_with_output_and_typed_confirmation(write_runbook, state_dir: Path) -> None:
    path = write_runbook("""
        version: 1
        name: t
        params:
          db_name: {default: app_db, pattern: '^[a-z_]+$'}
        steps:
          - id: hello
            run: echo hello {{ db_name }}; echo to-stderr >&2
          - id: drop
            argv: [echo, "dropping", "{{ db_name }}"]
            confirm: {typed: "{{ db_name }}"}
    """)
    engine = open_run(path, state_dir)
    refused: list[str] = []

    async def script(e: Engine, w: ev.Waiting) -> None:
        if w.step_id == "drop" and not refused:
            assert w.typed_expected == "app_db"
            with pytest.raises(ConfirmRefused):
                await e.confirm(w.step_id, typed="prod_db")
            refused.append("x")
        await yes(e, w)

    finished, seen = await drive(engine, script)
    assert finished.status == "completed"
    text = output_text(seen)
    assert "hello app_db" in text and "to-stderr" in text and "dropping app_db" in text
    errs = [ln for e in seen if isinstance(e, ev.OutputLines) for ln in e.lines if ln.stream == "err"]
    assert [ln.text for ln in errs] == ["to-stderr"]
    types = journal_types(engine)
    assert types.count("confirm-refused") == 1
    # the refusal came before anything of that step ran
    assert types.index("confirm-refused") < [i for i, t in enumerate(types) if t == "step-started"][1]
    assert types[-1] == "run-finished"


async def test_failing_step_stops_the_run_with_its_exit_code(write_runbook, state_dir: Path) -> None:
    path = write_runbook("""
        version: 1
        name: t
        steps:
          - {id: ok, run: "true"}
          - {id: bad, run: "echo failing; exit 3"}
          - {id: never, run: "touch never-ran"}
    """)
    engine = open_run(path, state_dir)
    finished, _ = await drive(engine, yes)
    assert finished.status == "failed"
    st = engine.state
    assert st.steps["bad"].status == StepStatus.failed and st.steps["bad"].exit_code == 3
    assert st.steps["never"].status == StepStatus.pending
    assert not (path.parent / "never-ran").exists()


async def test_on_failure_continue_and_retries(write_runbook, state_dir: Path, tmp_path: Path) -> None:
    counter = tmp_path / "count"
    path = write_runbook(f"""
        version: 1
        name: t
        steps:
          - id: flaky
            run: "n=$(cat {counter} 2>/dev/null || echo 0); echo $((n+1)) > {counter}; [ $n -ge 2 ]"
            retries: 2
            retry_delay: 0s
          - {{id: optional, run: "exit 1", on_failure: continue, confirm: none}}
          - {{id: last, run: "echo last", confirm: none}}
    """)
    engine = open_run(path, state_dir)
    finished, seen = await drive(engine, yes)
    assert finished.status == "completed"
    assert counter.read_text().strip() == "3"
    flaky = [e for e in seen if isinstance(e, ev.StepFinished) and e.step_id == "flaky"]
    assert [f.will_retry for f in flaky] == [True, True, False] and flaky[-1].status == StepStatus.succeeded
    assert engine.state.steps["flaky"].attempt == 3
    assert engine.state.steps["optional"].status == StepStatus.failed
    assert "optional" in finished.detail


def _group_alive(pgid: int) -> bool:
    for d in os.listdir("/proc"):
        if d.isdigit():
            try:
                stat = Path(f"/proc/{d}/stat").read_text()
            except OSError:
                continue
            fields = stat.rsplit(")", 1)[1].split()
            if int(fields[2]) == pgid and fields[0] != "Z":
                return True
    return False


async def test_timeout_kills_the_whole_group(write_runbook, state_dir: Path) -> None:
    path = write_runbook("""
        version: 1
        name: t
        steps:
          - id: slow
            run: "sleep 300 & sleep 300 & wait"
            timeout: 1s
    """)
    engine = open_run(path, state_dir)
    t0 = time.monotonic()
    finished, _ = await drive(engine, yes)
    assert time.monotonic() - t0 < 20
    assert finished.status == "failed"
    s = engine.state.steps["slow"]
    assert "timed out" in s.detail
    pgid = [e for e in read_journal(engine.ctx.rdir / "journal.jsonl").events if e["type"] == "step-started"][0]["pgid"]
    for _ in range(50):
        if not _group_alive(pgid):
            break
        await asyncio.sleep(0.1)
    assert not _group_alive(pgid), "processes of the step's group survived the timeout"


async def test_cancel_kills_the_group_then_operator_skips(write_runbook, state_dir: Path) -> None:
    path = write_runbook("""
        version: 1
        name: t
        steps:
          - {id: long, run: "echo started; sleep 300 & sleep 300; wait", confirm: none}
          - {id: after, run: "echo after", confirm: none}
    """)
    engine = open_run(path, state_dir)

    async def on_event(e: ev.Event) -> None:
        if isinstance(e, ev.OutputLines) and any("started" in ln.text for ln in e.lines):
            assert await engine.cancel("long")

    async def script(e: Engine, w: ev.Waiting) -> None:
        assert w.wait == Wait.failed and w.step_id == "long"
        with pytest.raises(Exception, match="reason"):
            await e.skip(w.step_id, "  ")
        await e.skip(w.step_id, "cancelled on purpose in the test")

    finished, _ = await drive(engine, script, on_event=on_event)
    assert finished.status == "completed"
    long = engine.state.steps["long"]
    assert long.status == StepStatus.skipped and long.detail == "cancelled on purpose in the test"
    started = [e for e in read_journal(engine.ctx.rdir / "journal.jsonl").events if e["type"] == "step-started"][0]
    fin = [e for e in read_journal(engine.ctx.rdir / "journal.jsonl").events if e["type"] == "step-finished"][0]
    assert fin["cancelled"] is True
    await asyncio.sleep(0.5)
    assert not _group_alive(started["pgid"])


async def test_manual_checklist_is_acknowledged_item_by_item(write_runbook, state_dir: Path) -> None:
    path = write_runbook("""
        version: 1
        name: t
        steps:
          - id: tell
            manual: [Post in the channel, Page the owner, Name a commander]
    """)
    engine = open_run(path, state_dir)
    items: list[str] = []

    async def script(e: Engine, w: ev.Waiting) -> None:
        assert w.wait == Wait.ack
        items.append(w.item or "")
        await e.note(f"did {w.item_index}")
        await e.ack(w.step_id)

    finished, _ = await drive(engine, script)
    assert finished.status == "completed"
    assert items == ["Post in the channel", "Page the owner", "Name a commander"]
    events = read_journal(engine.ctx.rdir / "journal.jsonl").events
    assert [e["index"] for e in events if e["type"] == "item-acked"] == [0, 1, 2]
    assert [e["text"] for e in events if e["type"] == "note"] == ["did 0", "did 1", "did 2"]


async def test_rehearsal_runs_nothing_and_records_marks(write_runbook, state_dir: Path, tmp_path: Path) -> None:
    marker = tmp_path / "ran"
    path = write_runbook(f"""
        version: 1
        name: t
        steps:
          - {{id: a, run: "touch {marker}"}}
          - {{id: b, run: "touch {marker}", confirm: {{typed: "prod"}}}}
          - {{id: c, run: "touch {marker}", on_failure: continue}}
    """)
    engine = open_run(path, state_dir, mode="rehearsal")

    async def script(e: Engine, w: ev.Waiting) -> None:
        assert w.wait == Wait.mark
        assert w.command and "touch" in w.command
        if w.step_id == "c":
            with pytest.raises(Exception, match="note"):
                await e.mark(w.step_id, False, "")
            await e.mark(w.step_id, False, "the disk was full in the rehearsal")
        else:
            await e.mark(w.step_id, True)

    finished, _ = await drive(engine, script)
    assert finished.status == "completed"
    assert not marker.exists()
    st = engine.state.steps
    assert st["a"].status == StepStatus.succeeded and st["a"].rehearsed
    assert st["c"].status == StepStatus.failed and "the disk was full in the rehearsal" in st["c"].notes
    assert "step-started" not in journal_types(engine)


async def test_abort_while_running_closes_the_run(write_runbook, state_dir: Path) -> None:
    path = write_runbook("""
        version: 1
        name: t
        steps:
          - {id: long, run: "echo go; sleep 300", confirm: none}
          - {id: after, run: "echo after", confirm: none}
    """)
    engine = open_run(path, state_dir)

    async def on_event(e: ev.Event) -> None:
        if isinstance(e, ev.OutputLines):
            await engine.abort("wrong server, stopping")

    finished, _ = await drive(engine, yes, on_event=on_event)
    assert finished.status == "aborted" and finished.detail == "wrong server, stopping"
    assert engine.state.steps["after"].status == StepStatus.pending


async def test_action_step_events_reach_the_journal(write_runbook, state_dir: Path, pg_cluster) -> None:
    path = write_runbook(f"""
        version: 1
        name: t
        steps:
          - id: up
            action: wait-postgres
            with: {{host: "{pg_cluster.socket_dir}", port: {pg_cluster.port}, deadline_s: 10}}
            confirm: none
          - id: use
            run: echo waited {{{{ steps.up.waited_s }}}}s
            confirm: none
    """)
    engine = open_run(path, state_dir)
    finished, seen = await drive(engine, yes)
    assert finished.status == "completed", finished.detail
    checks = [e for e in seen if isinstance(e, ev.CheckReported)]
    assert checks and checks[0].status == "ok"
    assert any(isinstance(e, ev.Progress) for e in seen)
    waited = engine.state.steps["up"].outputs["waited_s"]
    assert f"waited {waited}s" in output_text(seen)


async def test_action_failure_reports_a_failed_check(write_runbook, state_dir: Path, tmp_path: Path) -> None:
    path = write_runbook(f"""
        version: 1
        name: t
        steps:
          - id: up
            action: wait-postgres
            with: {{host: "{tmp_path}", port: 1, deadline_s: 0}}
            confirm: none
    """)
    engine = open_run(path, state_dir)
    finished, seen = await drive(engine, yes)
    assert finished.status == "failed"
    checks = [e for e in seen if isinstance(e, ev.CheckReported)]
    assert checks and checks[0].status == "failed" and "is the server started" in checks[0].hint


async def test_missing_output_is_asked_for_and_journaled(write_runbook, state_dir: Path) -> None:
    path = write_runbook("""
        version: 1
        name: t
        steps:
          - id: up
            action: wait-postgres
            with: {host: /nonexistent, deadline_s: 0}
            confirm: none
          - id: use
            run: echo value={{ steps.up.waited_s }}
            confirm: none
    """)
    engine = open_run(path, state_dir)

    async def script(e: Engine, w: ev.Waiting) -> None:
        if w.wait == Wait.failed:
            await e.skip(w.step_id, "server checked by hand")
        elif w.wait == Wait.value:
            assert w.value_key == "steps.up.waited_s"
            await e.provide_value(w.step_id, "42")
        else:
            await yes(e, w)

    finished, seen = await drive(engine, script)
    assert finished.status == "completed"
    assert "value=42" in output_text(seen)
    assert "value-provided" in journal_types(engine)
