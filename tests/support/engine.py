"""Driving the engine in tests: open a run, answer its waits with a script, read what it journaled."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from pathlib import Path

from runbook import events as ev
from runbook.clock import Clock
from runbook.engine import Engine
from runbook.events import Wait
from runbook.journal import read_journal
from runbook.session import RunOptions, open_new_run

Script = Callable[[Engine, ev.Waiting], Awaitable[None]]


def open_run(path: Path, state_dir: Path, **kw: object) -> Engine:
    opts = RunOptions(runbook_path=path, **kw)  # type: ignore[arg-type]
    return open_new_run(opts, Clock(), state_dir=state_dir)


async def drive(engine: Engine, script: Script, *, on_event: Callable[[ev.Event], Awaitable[None]] | None = None,
                ) -> tuple[ev.RunFinished, list[ev.Event]]:
    seen: list[ev.Event] = []
    async for e in engine.events():
        seen.append(e)
        if on_event is not None:
            await on_event(e)
        if isinstance(e, ev.Waiting):
            await script(engine, e)
        if isinstance(e, ev.RunFinished):
            return e, seen
    raise AssertionError("no RunFinished")


async def yes(engine: Engine, w: ev.Waiting) -> None:
    if w.wait == Wait.confirm:
        await engine.confirm(w.step_id, typed=w.typed_expected)
    elif w.wait == Wait.ack:
        await engine.ack(w.step_id)
    elif w.wait == Wait.mark:
        await engine.mark(w.step_id, True)
    elif w.wait == Wait.failed:
        await engine.stop_failed(w.step_id)
    else:
        raise AssertionError(f"unexpected wait {w}")


def journal_types(engine: Engine) -> list[str]:
    return [e["type"] for e in read_journal(engine.ctx.rdir / "journal.jsonl").events]


def output_text(seen: list[ev.Event]) -> str:
    return "\n".join(ln.text for e in seen if isinstance(e, ev.OutputLines) for ln in e.lines)
