"""The engine: walks a run's steps as a state machine, one decision of the operator at a time.

Front ends iterate `Engine.events()` and answer `Waiting` events with `confirm`, `ack`, `mark`, `skip`,
`retry`, `rerun`, `mark_done`, `provide_value`, `abort` or `detach`; `note` and `cancel` work at any time.
Every step with a command runs as a supervised child process (see `runbook.executor`), so it outlives the
front end; everything that happens is journaled before it is shown.

Why one module of ~660 lines: it is one state machine (`Engine`), whose every transition journals, emits and
waits in the same few private methods; the parts that are not transitions live elsewhere already (the
executor, the journal, the templating, the RTO clock, the state fold).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import shlex
import sys
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from runbook import events as ev
from runbook.clock import Clock, iso
from runbook.errors import RunbookError
from runbook.events import StepStatus, Wait
from runbook.executor import StepLaunch, StepProcess, StepResult
from runbook.journal import Journal
from runbook.lock import RunLock
from runbook.model import ConfirmKind, ParamType, Runbook, Step
from runbook.params import to_text
from runbook.redact import Redactor
from runbook.rto import RtoClock, rto_clock
from runbook.secrets import LoadedSecrets
from runbook.state import RunState, apply_event, step_dir
from runbook.templating import MissingValue, Ref, ShellCode, render, render_obj

KILL_GRACE_S = 10.0
REFUSALS_JOURNALED = 50  # refused requests journaled one by one; more are counted (Engine._refuse)


class ConfirmRefused(RunbookError):
    """The typed confirmation did not match: nothing runs."""


class NotWaiting(RunbookError):
    """A decision that does not fit what the engine waits for right now."""


@dataclass
class RunContext:
    runbook: Runbook
    runbook_path: Path
    state_dir: Path
    rdir: Path
    state: RunState
    params: dict[str, Any]
    secrets: LoadedSecrets
    redactor: Redactor
    journal: Journal
    lock: RunLock | None
    expected: dict[str, float] = field(default_factory=dict)
    python: str = sys.executable
    approver_policy: str = "runbook"  # runbook | none | other (runbook.requests; `--approver-policy`)
    mirror: Any = None  # the journal's mirror into the repository (steps.mirror.writing.JournalMirror), if any

    @property
    def mode(self) -> str:
        return self.state.mode

    @property
    def scenario(self) -> str:
        return self.state.scenario


@dataclass(frozen=True)
class _Decision:
    kind: str  # confirm | ack | mark | skip | retry | rerun | done | value | abort | detach
    text: str = ""
    ok: bool = True
    how: str = ""


class _Abort(Exception):
    def __init__(self, reason: str) -> None:
        self.reason = reason


class _Detach(Exception):
    def __init__(self, reason: str) -> None:
        self.reason = reason


class Engine:
    def __init__(self, ctx: RunContext, clock: Clock, *, resumed: bool = False) -> None:
        self.ctx = ctx
        self.clock = clock
        self.resumed = resumed
        self.steps: list[Step] = [ctx.runbook.step(s) for s in ctx.state.order]
        explicit = [s.id for s in self.steps if s.rto_end]
        self.rto_end_step = explicit[0] if explicit else (self.steps[-1].id if self.steps else None)
        self.waiting: ev.Waiting | None = None
        self.current: str | None = None
        self._queue: asyncio.Queue[ev.Event] = asyncio.Queue()
        self._decision: asyncio.Future[_Decision] | None = None
        self._proc: StepProcess | None = None
        self._task: asyncio.Task[None] | None = None
        self._abort_reason: str | None = None
        self._detach_reason: str | None = None
        self._detached = asyncio.Event()
        self.finished: ev.RunFinished | None = None
        self._approval: tuple[str, str, str] | None = None  # (step id, nonce, hash) while one is awaited
        self.taken_over_by: dict[str, Any] | None = None
        self._handover_to: dict[str, Any] | None = None  # a take-over from another host, accepted, due at a boundary
        self._handed_over = False
        self._requests_task: asyncio.Task[None] | None = None
        self._refusals = 0
        self._refusals_said = float("-inf")

    # ---- reading ---------------------------------------------------------------------------------

    @property
    def state(self) -> RunState:
        return self.ctx.state

    @property
    def run_id(self) -> str:
        return self.ctx.state.run_id

    def clock_status(self) -> RtoClock:
        left = [s.id for s in self.steps if not self.state.steps[s.id].status.done]
        return rto_clock(self.state, self.clock.now(), self.ctx.expected, left)

    def display_command(self, step: Step) -> str | None:
        """The command as it will run, values substituted, secrets masked (placeholders where unknown)."""
        try:
            return self._render_command(step, placeholders=True)[0]
        except RunbookError as e:
            return f"<cannot render: {e.message}>"

    # ---- the event stream ------------------------------------------------------------------------

    async def events(self) -> AsyncIterator[ev.Event]:
        if self._task is None:
            self._task = asyncio.create_task(self._main())
        while True:
            item = await self._queue.get()
            yield item
            if isinstance(item, ev.RunFinished):
                await self._task
                return

    def _emit(self, event: ev.Event) -> None:
        self._queue.put_nowait(event)

    def _mirror_said(self, text: str) -> None:
        """The journal's mirror fell behind or caught up: journaled (the report's timeline) and shown, once."""
        if self.finished is not None:
            return
        self._journal("warning", text=text)
        self._emit(ev.Notice("warning", text))

    def _journal(self, type_: str, **data: Any) -> dict[str, Any]:
        entry = self.ctx.journal.append(type_, **data)
        apply_event(self.ctx.state, entry)
        return entry

    # ---- decisions from the front end ------------------------------------------------------------

    def _answer(self, allowed: tuple[Wait, ...], decision: _Decision, step_id: str | None) -> None:
        w = self.waiting
        if w is None or self._decision is None or self._decision.done():
            raise NotWaiting("nothing is waiting for a decision right now")
        if step_id is not None and step_id != w.step_id:
            raise NotWaiting(f"step {step_id} is not the current step ({w.step_id} is)")
        if w.wait not in allowed:
            raise NotWaiting(f"step {w.step_id} waits for {w.wait.value}, not {decision.kind}")
        self._decision.set_result(decision)

    async def confirm(self, step_id: str | None = None, typed: str | None = None, how: str = "operator") -> None:
        w = self.waiting
        expected = w.typed_expected if w is not None and w.wait == Wait.confirm else None
        if w is not None and expected is not None and (typed is None or typed.strip() != expected):
            message = f"typed value does not match {self.ctx.redactor.redact(expected)!r}: nothing runs"
            self._journal("confirm-refused", step=w.step_id, how=how, reason="typed value did not match")
            self._emit(ev.Notice("error", message, w.step_id))
            raise ConfirmRefused(message)
        self._answer((Wait.confirm,), _Decision("confirm", how=how), step_id)

    async def ack(self, step_id: str | None = None, how: str = "operator") -> None:
        self._answer((Wait.ack,), _Decision("ack", how=how), step_id)

    async def mark(self, step_id: str | None, ok: bool, note: str = "") -> None:
        if not ok and not note.strip():
            raise RunbookError("marking a step failed needs a note saying what went wrong")
        self._answer((Wait.mark,), _Decision("mark", text=note.strip(), ok=ok), step_id)

    async def skip(self, step_id: str | None, reason: str) -> None:
        if not reason.strip():
            raise RunbookError("skipping a step needs a reason")
        allowed = (Wait.confirm, Wait.ack, Wait.mark, Wait.failed, Wait.interrupted, Wait.value, Wait.approval)
        self._answer(allowed, _Decision("skip", text=reason.strip()), step_id)

    async def retry(self, step_id: str | None = None) -> None:
        self._answer((Wait.failed,), _Decision("retry"), step_id)

    async def rerun(self, step_id: str | None = None) -> None:
        self._answer((Wait.interrupted,), _Decision("rerun"), step_id)

    async def mark_done(self, step_id: str | None, note: str) -> None:
        if not note.strip():
            raise RunbookError("marking an interrupted step done needs a note (how do you know it finished?)")
        self._answer((Wait.interrupted,), _Decision("done", text=note.strip()), step_id)

    async def provide_value(self, step_id: str | None, value: str) -> None:
        self._answer((Wait.value,), _Decision("value", text=value), step_id)

    async def note(self, text: str) -> None:
        if not text.strip():
            return
        self._journal("note", text=text.strip(), step=self.current)
        self._emit(ev.Notice("note", self.ctx.redactor.redact(text.strip()), self.current))

    async def duty_done(self, duty_id: str | None = None, note: str = "", how: str = "operator") -> None:
        """A timed duty (runbook.duties) was done: journaled with how late it was; the next one is due `every`
        from now. `duty_id` None: the soonest due."""
        from runbook.duties import duties

        found = duties(self.ctx.runbook, self.state)
        duty = next((d for d in found if duty_id in (None, d.id)), None)
        if duty is None:
            raise RunbookError(f"no timed duty {duty_id!r} in this run" if duty_id else "this run has no timed duty now")
        late = duty.overdue_s(self.clock.now())
        self._journal("reminder-done", reminder=duty.id, title=duty.title, due_at=iso(duty.due_at),
                      late_s=round(max(0.0, late), 1), early=late < 0, note=note.strip(), how=how)
        self._emit(ev.Notice("info", f"timed duty done: {duty.title}"))

    def record_frontend_error(self, exc: BaseException, *, source: str, where: str = "") -> Path | None:
        """A front end's own error, recorded without touching the run: it stays open and resumable (a running
        step goes on under its supervisor). Journaled as `frontend-error`; for an error that is not a
        `RunbookError`, the traceback (redacted) is appended to `<source>-error.log` in the run directory,
        whose path is returned. Raises RunbookError when the run is no longer open here (its journal is closed).
        """
        if self.finished is not None:
            raise RunbookError(f"run {self.run_id} is no longer open here; the error was not journaled")
        log = None
        if isinstance(exc, RunbookError):
            message, hint = exc.message, exc.hint or ""
        else:
            import traceback

            message, hint = str(exc), ""
            log = self.ctx.rdir / f"{source}-error.log"
            text = f"--- {iso(self.clock.now())} {where}\n" + "".join(traceback.format_exception(exc))
            fd = os.open(log, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
            with os.fdopen(fd, "a", encoding="utf-8") as f:
                f.write(self.ctx.redactor.redact(text))
        self._journal("frontend-error", step=self.current, source=source, where=where, error=type(exc).__name__,
                      message=message, hint=hint, log=log.name if log else "")
        return log

    async def cancel(self, step_id: str | None = None) -> bool:
        """Stop the running step (SIGTERM to its process group, SIGKILL after a grace). False if none runs."""
        if self._proc is None or (step_id is not None and step_id != self.current):
            return False
        self._journal("cancel-requested", step=self.current)
        await asyncio.to_thread(self._proc.cancel)
        return True

    async def abort(self, reason: str) -> None:
        """Close the run as aborted; a running step is cancelled first."""
        self._abort_reason = reason.strip() or "aborted by the operator"
        if self._proc is not None:
            await self.cancel()
        elif self._decision is not None and not self._decision.done():
            self._decision.set_result(_Decision("abort", text=self._abort_reason))

    async def detach(self, reason: str = "the operator quit") -> None:
        """Leave without closing the run: it stays resumable; a running step goes on under its supervisor."""
        self._detach_reason = reason
        self._detached.set()
        if self._decision is not None and not self._decision.done():
            self._decision.set_result(_Decision("detach", text=reason))

    async def _wait_for(self, waiting: ev.Waiting) -> _Decision:
        if self._handover_to is not None and self._proc is None and not self._handed_over:
            self._hand_over()  # a take-over from another host waited for this boundary
        self.waiting = waiting
        self._decision = asyncio.get_running_loop().create_future()
        if self._abort_reason:
            self._decision.set_result(_Decision("abort", text=self._abort_reason))
        elif self._detach_reason:
            self._decision.set_result(_Decision("detach", text=self._detach_reason))
        else:
            self._emit(waiting)
        try:
            decision = await self._decision
        finally:
            self.waiting = None
            self._decision = None
        if decision.kind == "abort":
            raise _Abort(decision.text)
        if decision.kind == "detach":
            raise _Detach(decision.text)
        return decision

    # ---- the walk --------------------------------------------------------------------------------

    async def _main(self) -> None:
        st = self.state
        self._emit(ev.RunOpened(self.run_id, self.resumed))
        if self.ctx.lock is not None:  # a driver holding the run's lock answers requests (approvals, take-over)
            self._requests_task = asyncio.create_task(self._watch_requests())
        if self.ctx.mirror is not None:  # what the mirror's thread says is journaled and shown from the loop
            loop = asyncio.get_running_loop()
            self.ctx.mirror.notify = lambda text: loop.call_soon_threadsafe(self._mirror_said, text)
            if self.ctx.lock is not None:  # take-over requests from other hosts, read by the mirror's thread
                self.ctx.mirror.on_request = lambda req: loop.call_soon_threadsafe(self._on_remote_request, req)
        for w in self.ctx.journal.warnings:
            self._emit(ev.Notice("warning", w))
        try:
            for step in self.steps:
                self.current = step.id
                await self._settle(step)
            self.current = None
            failed = [s.id for s in self.steps if st.steps[s.id].status == StepStatus.failed]
            detail = f"failed steps (on_failure: continue): {', '.join(failed)}" if failed else ""
            self._close("completed", detail)
        except _Abort as a:
            self._close("aborted", a.reason)
        except _Detach as d:
            self._journal("run-detached", reason=d.reason, step=self.current)
            self._release(closed=False)
            summary = self._summary()
            if self.taken_over_by is not None:
                summary["taken_over_by"] = self.taken_over_by
            self._finish(ev.RunFinished("detached", d.reason, summary))
        except _StopRun as s:
            self._close("failed", s.reason)
        except Exception as exc:  # never leave a front end waiting forever: record, keep the run open
            import traceback

            (self.ctx.rdir / "engine-error.log").write_text(self.ctx.redactor.redact(traceback.format_exc()))
            detail = exc.message if isinstance(exc, RunbookError) else f"internal error: {exc!r}"
            self._journal("engine-error", step=self.current, detail=detail)
            self._release(closed=False)
            self._finish(ev.RunFinished("detached", f"{detail} (the run stays open; see engine-error.log)",
                                        self._summary()))

    async def _settle(self, step: Step) -> None:
        """Drive one step until it is done (succeeded, skipped, or failed with on_failure: continue)."""
        while True:
            if self._handover_to is not None and self._proc is None:  # the boundary a remote take-over waits for
                if not self._handed_over:
                    self._hand_over()
                raise _Detach(self._detach_reason or "handed over")
            s = self.state.steps[step.id]
            if s.status in (StepStatus.succeeded, StepStatus.skipped):
                return
            if s.status == StepStatus.failed:
                if step.on_failure == "continue":
                    return
                await self._after_failure(step)
            elif s.status == StepStatus.running:
                await self._reconcile(step)
            elif s.status == StepStatus.interrupted:
                if await self._decide_interrupted(step):
                    await self._walk_step(step, retrying=True)
            else:
                await self._walk_step(step)

    async def _after_failure(self, step: Step) -> None:
        """A failed step with on_failure: stop: the operator retries, skips or aborts."""
        s = self.state.steps[step.id]
        d = await self._wait_for(ev.Waiting(step.id, Wait.failed, s.command, detail=s.detail))
        if d.kind == "skip":
            self._skip(step, d.text)
        elif d.kind == "retry":
            self._journal("retry-requested", step=step.id)
            await self._walk_step(step, retrying=True)
        elif d.kind == "stop":
            raise _StopRun(f"step {step.id} failed: {s.detail}")

    async def stop_failed(self, step_id: str | None = None) -> None:
        """Headless, no operator: close the run as failed at a failed step."""
        self._answer((Wait.failed,), _Decision("stop"), step_id)

    async def _decide_interrupted(self, step: Step) -> bool:
        """Returns True when the step should be (re-)walked."""
        s = self.state.steps[step.id]
        d = await self._wait_for(ev.Waiting(step.id, Wait.interrupted, s.command, detail=s.detail))
        if d.kind == "skip":
            self._skip(step, d.text)
            return False
        if d.kind == "done":
            self._journal(
                "step-finished", step=step.id, attempt=s.attempt, status="succeeded", detail="marked done by the operator",
                note=d.text, marked=True, rto_end=step.id == self.rto_end_step,
            )
            self._emit(ev.StepFinished(step.id, StepStatus.succeeded, "marked done: " + d.text))
            return False
        self._journal("rerun-chosen", step=step.id)
        return True

    def _skip(self, step: Step, reason: str) -> None:
        self._journal("step-skipped", step=step.id, reason=reason)
        self._emit(ev.StepFinished(step.id, StepStatus.skipped, reason))

    async def _walk_step(self, step: Step, *, retrying: bool = False) -> None:
        command, launch = await self._prepare(step)
        if self.state.steps[step.id].status == StepStatus.skipped:
            return
        shown = self.clock.monotonic()
        self._journal("step-awaiting", step=step.id, command=command, kind=step.kind)
        approve = not retrying and self.needs_approval(step) and self.state.steps[step.id].approved is None
        if approve and not await self._await_approval(step, command):
            return
        if step.kind == "manual":
            await self._walk_manual(step, shown)
            return
        if self.ctx.mode == "rehearsal":
            await self._walk_rehearsal(step, command, shown)
            return
        if not retrying:
            expected = self.typed_expected(step)
            kind = step.confirm_kind
            if kind != ConfirmKind.none:
                d = await self._wait_for(ev.Waiting(step.id, Wait.confirm, command, typed_expected=expected))
                if d.kind == "skip":
                    self._skip(step, d.text)
                    return
                self._journal("step-confirmed", step=step.id, how=d.how, typed=expected is not None)
        if launch is None:  # skipped while a value was asked for
            return
        await self._execute_with_retries(step, command, launch)

    # ---- the two-person rule and requests from other sessions ------------------------------------

    def needs_approval(self, step: Step) -> bool:
        """Does this step wait for another operator's approval? In live mode: a step with `approve:`, and a
        `danger: true` step unless the runbook says `approvals: {danger_in_live: false}`; in drills only under
        `--approver-policy other`; never in a rehearsal (nothing runs) nor under `--approver-policy none`."""
        policy = self.ctx.approver_policy
        if self.ctx.mode == "rehearsal" or policy == "none":
            return False
        if self.ctx.mode != "live" and policy != "other":
            return False
        return step.approve is not None or (step.danger and self.ctx.runbook.approvals.danger_in_live)

    def approval_hash(self, step: Step, command: str | None) -> str:
        from runbook.requests import command_hash

        return command_hash(self.run_id, step.id, command, step.manual)

    async def _await_approval(self, step: Step, command: str | None) -> bool:
        """Wait until another operator's approval request is verified and journaled (True), or the step is
        skipped (False). Abort and detach end the wait as anywhere else."""
        import secrets as pysecrets

        from runbook.requests import clear_pending, user_name, write_pending

        digest = self.approval_hash(step, command)
        nonce = pysecrets.token_hex(8)
        write_pending(self.ctx.rdir, {
            "run_id": self.run_id, "step": step.id, "title": step.display_title, "command": command,
            "items": step.manual, "hash": digest, "nonce": nonce, "mode": self.ctx.mode,
            "driver": {"user": user_name(os.geteuid()), "uid": os.geteuid(), "host": _hostname()},
            "since": iso(self.clock.now()),
        })
        # the wait's nonce is in the journal too: an approver on another host reads it from the mirror (it only
        # binds an approval to this wait; the approval's signature says who wrote it)
        self._journal("approval-awaited", step=step.id, command_hash=digest, wait=nonce,
                      **({"items": step.manual} if step.manual else {}))
        self._approval = (step.id, nonce, digest)
        try:
            from runbook.report import alone_command, approve_command

            how = approve_command(self.run_id, step.id, self.ctx.state_dir)
            if self.ctx.mirror is not None:  # mirrored into a repository: another host may approve through it
                how += f" (from another host: runbook approve -c REPO_CONFIG {self.run_id} {step.id})"
            alone = alone_command(self.run_id, self.ctx.state_dir)
            d = await self._wait_for(ev.Waiting(step.id, Wait.approval, command,
                                                detail=f"waiting for approval by another operator: {how}; "
                                                       f"nobody else on call: quit, then {alone}"))
        finally:
            self._approval = None
            clear_pending(self.ctx.rdir)
        if d.kind == "skip":
            self._skip(step, d.text)
            return False
        return True

    async def _watch_requests(self) -> None:
        """The driver's ear: every 0.25 s, read `requests/` (runbook.requests) and act on what is there."""
        from runbook.requests import read_requests

        while self.finished is None:
            for req in await asyncio.to_thread(read_requests, self.ctx.rdir):
                try:
                    self._on_request(req)
                except Exception as e:  # noqa: BLE001 - a bad request never stops the run
                    with contextlib.suppress(Exception):
                        self._refuse("request-refused", file=getattr(req, "name", "?"),
                                      reason=f"{type(e).__name__}: {e}")
            await asyncio.sleep(0.25)

    def _refuse(self, type_: str, **data: Any) -> None:
        """Journal a refused request, up to REFUSALS_JOURNALED of them; past that (a flood from a local user),
        they are counted and said once a minute (`requests-refused`), so the journal cannot be drowned."""
        self._refusals += 1
        if self._refusals <= REFUSALS_JOURNALED:
            self._journal(type_, **data)
            return
        now = self.clock.monotonic()
        if now - self._refusals_said >= 60:
            self._refusals_said = now
            self._journal("requests-refused", count=self._refusals - REFUSALS_JOURNALED,
                          detail="further refused requests are counted, not journaled one by one")

    def _on_request(self, req: Any) -> None:
        from runbook.requests import Rejected, check_approval, user_name

        if self.finished is not None:
            return
        if isinstance(req, Rejected):
            who = user_name(req.uid) if req.uid is not None else "unknown"
            self._refuse("request-refused", file=req.name, user=who, reason=f"the file {req.reason}")
            return
        if req.kind == "approve":
            step_id, nonce, digest = self._approval or (None, None, None)
            if step_id is not None:  # the command as it stands now, not as it was when the wait began
                step = self.ctx.runbook.step(step_id)
                current = self._render_command(step, placeholders=True)[0]
                digest = self.approval_hash(step, current)
            why = check_approval(req, run_id=self.run_id, step_id=step_id, nonce=nonce, expected_hash=digest,
                                 driver_uid=os.geteuid())
            if why is not None:
                self._refuse("approval-refused", step=step_id, named_step=str(req.body.get("step", "")),
                              approver=req.user, uid=req.uid, reason=why)
                self._emit(ev.Notice("warning", f"approval from {req.user} refused: {why}", step_id))
                return
            self._journal("approved", step=step_id, approver=req.user, uid=req.uid,
                          approver_host=str(req.body.get("host", "")), command_hash=digest)
            self._emit(ev.Notice("info", f"step {step_id} approved by {req.user}", step_id))
            if self._decision is not None and not self._decision.done():
                self._decision.set_result(_Decision("approved", how=req.user))
        elif req.kind == "takeover":
            self._on_takeover(req)
        else:
            self._refuse("request-refused", file=req.name, user=req.user, reason=f"unknown kind {req.kind!r}")

    def _on_takeover(self, req: Any) -> None:
        """Another session of the driver's own user asks for the run: let go of it (the run stays open, running
        steps go on under their supervisors) for that session to resume it. Another user cannot: the journal and
        the run directory are the driver's user's."""
        if req.uid not in (os.geteuid(), 0):
            self._refuse("takeover-refused", user=req.user, uid=req.uid,
                          reason="only the driver's own OS user can take the run over (the journal is theirs)")
            return
        b = req.body
        to = {"user": str(b.get("user", req.user)), "host": str(b.get("host", "")), "pid": b.get("pid"),
              "uid": req.uid}
        if b.get("run_id") != self.run_id or self.taken_over_by is not None:
            return
        if b.get("driver_pid") != os.getpid():  # e.g. the loser of a race, addressed to the driver before us
            self._refuse("takeover-refused", user=req.user, uid=req.uid,
                          reason=f"addressed to an earlier driver (pid {b.get('driver_pid')})")
            return
        self.taken_over_by = {**to, "at": iso(self.clock.now())}
        self._journal("handover-requested", by=to, step=self.current)
        reason = f"taken over by {to['user']}@{to['host']} (pid {to['pid']}) at {self.taken_over_by['at']}"
        self._detach_reason = reason
        self._detached.set()
        if self._decision is not None and not self._decision.done():
            self._decision.set_result(_Decision("detach", text=reason))

    def _on_remote_request(self, req: Any) -> None:
        """A take-over request from another host, read from the repository by the mirror's thread (its signature
        and form verified there: steps.mirror.requests). A step running here cannot be supervised from there: the
        run is handed over at the next step boundary (now, when none runs)."""
        from steps.mirror.requests import RemoteRejected

        if self.finished is not None:
            return
        if isinstance(req, RemoteRejected) and req.kind == "approve":
            self._refuse("approval-refused", remote=True, request=req.key, where=req.where, key_id=req.key_id,
                          step=self._approval[0] if self._approval else None, reason=req.reason)
            self._emit(ev.Notice("warning", f"an approval in the repository was refused: {req.key}: {req.reason}",
                                 self.current))
            return
        if not isinstance(req, RemoteRejected) and req.kind == "approve":
            self._on_remote_approval(req)
            return
        if isinstance(req, RemoteRejected):
            self._refuse("takeover-refused", remote=True, request=req.key, where=req.where, key_id=req.key_id,
                          reason=req.reason)
            self._emit(ev.Notice("warning", f"a take-over request in the repository was refused: {req.key}: "
                                            f"{req.reason}", self.current))
            return
        b = req.body
        to = {"user": str(b.get("user", "?")), "host": str(b.get("host", "?")), "pid": b.get("pid"),
              "key_id": req.key_id, "request": req.nonce, "remote": True, "confirmed": str(b.get("confirmed", ""))}
        addressed = b.get("driver") if isinstance(b.get("driver"), dict) else {}
        why = None
        first: dict[str, Any] = {}
        if self._handover_to is not None or self.taken_over_by is not None:
            first = self._handover_to or self.taken_over_by or {}
            why = (f"the run is being handed over to {first.get('user')}@{first.get('host')} (pid {first.get('pid')}) "
                   "already")
        elif addressed.get("host") != _hostname() or addressed.get("pid") != os.getpid():
            why = (f"addressed to the driver {addressed.get('host')} pid {addressed.get('pid')}, not to this one "
                   "(an earlier driver, or a replayed request)")
        if why is not None:
            self._refuse("takeover-refused", remote=True, request=req.key, user=to["user"], host=to["host"],
                          key_id=req.key_id, reason=why,
                          **({"winner": {k: first.get(k) for k in ("user", "host", "pid")}} if first else {}))
            self._emit(ev.Notice("warning", f"take-over by {to['user']}@{to['host']} refused: {why}", self.current))
            return
        self._handover_to = to
        running = self._proc is not None
        self._journal("handover-requested", by=to, step=self.current, remote=True, running=running)
        if running:
            self._emit(ev.Notice("warning", f"{to['user']}@{to['host']} takes this run over: step {self.current} "
                                            "runs on this host and cannot be supervised from theirs, so the run is "
                                            "handed over when it ends", self.current))
        if self._decision is not None and not self._decision.done():
            self._hand_over()  # waiting for the operator: a boundary now
        # otherwise the walk is between two points (a step starting, ending, or between its retries): it hands
        # over at the next boundary (`_settle`, `_wait_for`), never while a step it launched still runs here

    def _on_remote_approval(self, req: Any) -> None:
        """An approval from another host, read from the repository (its signature by a trusted key and its form
        verified by the mirror's thread). Accepted when it answers the wait in progress (step and nonce), names the
        command as it stands now (its sha256, secrets masked), and comes from another operator: another user name,
        or another host's key. The driver's own user on the driver's host, or signing with the driver's own key,
        is the driver (refused)."""
        from runbook.lockfile import current_user

        b = req.body
        user, host = str(b.get("user", "?")), str(b.get("host", "?"))
        step_id, nonce, digest = self._approval or (None, None, None)
        if step_id is not None:  # the command as it stands now, not as it was when the wait began
            step = self.ctx.runbook.step(step_id)
            digest = self.approval_hash(step, self._render_command(step, placeholders=True)[0])
        mine = self.ctx.mirror.signer.key_id if self.ctx.mirror is not None and self.ctx.mirror.signer else None
        me = current_user()
        why = None
        if user == me and (host == _hostname() or (mine is not None and req.key_id == mine)):
            why = (f"the approver {user}@{host} is the driver's own user on the driver's host (or with its key): "
                   "another operator must approve (another user, or another host's key)")
        elif step_id is None or nonce is None:
            why = f"no step waits for approval now (it names step {b.get('step')!r})"
        elif b.get("step") != step_id:
            why = f"it names step {b.get('step')!r}; step {step_id} waits for approval"
        elif b.get("wait") != nonce:
            why = "it answers an earlier wait for approval, not this one (approve again)"
        elif b.get("command_hash") != digest:
            why = "the step's command has changed since the approver saw it (approve again)"
        if why is not None:
            self._refuse("approval-refused", remote=True, request=req.key, step=step_id,
                          named_step=str(b.get("step", "")), approver=user, approver_host=host, key_id=req.key_id,
                          reason=why)
            self._emit(ev.Notice("warning", f"approval from {user}@{host} refused: {why}", step_id))
            return
        self._journal("approved", step=step_id, approver=user, approver_host=host, key_id=req.key_id, remote=True,
                      request=req.key, command_hash=digest)
        self._emit(ev.Notice("info", f"step {step_id} approved by {user}@{host} (through the repository)", step_id))
        if self._decision is not None and not self._decision.done():
            self._decision.set_result(_Decision("approved", how=f"{user}@{host}"))

    def _hand_over(self) -> None:
        """Give the run to the host that asked (at a step boundary): journaled with both names and hosts, the
        mirror's last live.json says handed-over, and this session lets go of the run (it becomes a watcher)."""
        import getpass

        to = self._handover_to or {}
        self._handed_over = True
        try:
            me = getpass.getuser()
        except (KeyError, OSError):
            me = str(os.getuid())
        started = self.state.events[0] if self.state.events else {}
        self.taken_over_by = {**to, "at": iso(self.clock.now()), "repository": str(started.get("repository", ""))}
        self._journal("handed-over", **{"from": {"user": me, "host": _hostname(), "pid": os.getpid()}}, to=to,
                      step=self.current)
        if self.ctx.mirror is not None:
            self.ctx.mirror.leaving = "handed-over"
        reason = (f"taken over by {to.get('user')}@{to.get('host')} (pid {to.get('pid')}, another host) at "
                  f"{self.taken_over_by['at']}")
        self._detach_reason = reason
        self._detached.set()
        if self._decision is not None and not self._decision.done():
            self._decision.set_result(_Decision("detach", text=reason))

    def typed_expected(self, step: Step) -> str | None:
        """What the operator must type to run `step` (None: no typed confirmation)."""
        tmpl = step.typed_template
        if tmpl is None:
            return None
        return render(tmpl, self._lookup(placeholders=False), shell=False)

    async def _walk_manual(self, step: Step, shown: float) -> None:
        items = step.manual or []
        s = self.state.steps[step.id]
        for i, item in enumerate(items):
            if i in s.acked:
                continue
            d = await self._wait_for(ev.Waiting(step.id, Wait.ack, item=item, item_index=i))
            if d.kind == "skip":
                self._skip(step, d.text)
                return
            self._journal("item-acked", step=step.id, index=i, item=item, how=d.how)
        self._finish_step(step, StepStatus.succeeded, "checklist done", self.clock.monotonic() - shown)

    async def _walk_rehearsal(self, step: Step, command: str | None, shown: float) -> None:
        expected = self.typed_expected(step)
        d = await self._wait_for(ev.Waiting(step.id, Wait.mark, command, typed_expected=expected))
        if d.kind == "skip":
            self._skip(step, d.text)
            return
        status = StepStatus.succeeded if d.ok else StepStatus.failed
        detail = "rehearsed: marked " + ("succeeded" if d.ok else "failed")
        self._finish_step(step, status, detail, self.clock.monotonic() - shown, rehearsal=True, note=d.text or None)

    def _finish_step(self, step: Step, status: StepStatus, detail: str, duration: float, **extra: Any) -> None:
        self._journal(
            "step-finished", step=step.id, status=status.value, detail=detail, duration_s=round(duration, 3),
            rto_end=step.id == self.rto_end_step and status == StepStatus.succeeded, **extra,
        )
        self._emit(ev.StepFinished(step.id, status, detail, duration))

    async def _execute_with_retries(self, step: Step, command: str | None, launch: StepLaunch) -> None:
        tries = 0
        while True:
            tries += 1
            result = await self._execute(step, command, launch)
            if result is None:  # the process vanished without a result: interrupted
                return
            s = self.state.steps[step.id]
            will_retry = (
                not result.ok and tries <= step.retries and not result.cancelled and not self._abort_reason
            )
            self._record_result(step, s.attempt, result, will_retry=will_retry)
            if not will_retry:
                if self._abort_reason:
                    raise _Abort(self._abort_reason)
                return
            delay = step.retry_delay.total_seconds()
            self._emit(ev.Notice("warning", f"retrying in {delay:.0f}s (attempt {tries + 1} of {step.retries + 1})", step.id))
            await asyncio.sleep(delay)
            if self._abort_reason:
                raise _Abort(self._abort_reason)

    def _record_result(self, step: Step, attempt: int, r: StepResult, *, will_retry: bool) -> None:
        status = StepStatus.succeeded if r.ok else StepStatus.failed
        self._journal(
            "step-finished", step=step.id, attempt=attempt, status=status.value, detail=r.describe(),
            exit_code=r.exit_code, signal=r.signal, timed_out=r.timed_out, cancelled=r.cancelled,
            duration_s=round(r.duration_s, 3), will_retry=will_retry,
            rto_end=step.id == self.rto_end_step and r.ok,
        )
        self._emit(ev.StepFinished(step.id, status, r.describe(), r.duration_s, will_retry))

    async def _execute(self, step: Step, command: str | None, launch: StepLaunch) -> StepResult | None:
        s = self.state.steps[step.id]
        attempt = s.attempt + 1
        sdir = step_dir(self.ctx.rdir, step.id, attempt)
        try:
            proc = await asyncio.to_thread(StepProcess.launch, sdir, launch)
        except (OSError, RuntimeError) as e:
            raise RunbookError(f"could not start the supervisor of step {step.id}: {e}") from e
        self._proc = proc
        pids = proc.pids
        self._journal(
            "step-started", step=step.id, attempt=attempt, command=command, dir=str(sdir.relative_to(self.ctx.rdir)),
            supervisor_pid=pids.supervisor, pgid=pids.pgid,
        )
        self._emit(ev.StepStarted(step.id, attempt, command))
        try:
            return await self._follow(step, proc)
        finally:
            self._proc = None

    async def _follow(self, step: Step, proc: StepProcess, already: frozenset[str] = frozenset()) -> StepResult | None:
        """Stream a step's output and events until it ends; `already` names outputs/checks journaled
        before a runner died (not journaled twice). A detach stops watching, never the step."""
        async for item in self._watch(proc):
            if isinstance(item, list):
                if item:
                    self._emit(ev.OutputLines(step.id, item))
            elif item.get("type") in ("check", "output") and str(item.get("name")) in already:
                continue
            else:
                self._on_action_event(step, item)
        result = proc.result
        if result is None:
            self._journal("step-interrupted", step=step.id, detail="its process ended without recording a result")
            self._emit(ev.StepFinished(step.id, StepStatus.interrupted, "process gone without a result"))
        return result

    async def _watch(self, proc: StepProcess) -> AsyncIterator[list[Any] | dict[str, Any]]:
        """`proc.follow()`, interrupted at once by a detach (the step itself goes on)."""
        agen = proc.follow()
        detached = asyncio.ensure_future(self._detached.wait())
        try:
            while True:
                nxt = asyncio.ensure_future(anext(agen))
                done, _ = await asyncio.wait({nxt, detached}, return_when=asyncio.FIRST_COMPLETED)
                if nxt not in done:
                    nxt.cancel()
                    with contextlib.suppress(asyncio.CancelledError, StopAsyncIteration):
                        await nxt
                    raise _Detach(self._detach_reason or "the operator left")
                try:
                    yield nxt.result()
                except StopAsyncIteration:
                    return
        finally:
            detached.cancel()
            await agen.aclose()  # type: ignore[attr-defined]

    def _on_action_event(self, step: Step, e: dict[str, Any]) -> None:
        kind = e.get("type")
        if kind == "progress":
            self._emit(ev.Progress(step.id, float(e.get("done") or 0), e.get("total"), e.get("unit", ""), e.get("label", "")))
        elif kind == "check":
            self._journal("step-check", step=step.id, name=str(e.get("name")), status=str(e.get("status")), hint=str(e.get("hint", "")))
            self._emit(ev.CheckReported(step.id, str(e.get("name")), str(e.get("status")), str(e.get("hint", ""))))
        elif kind == "output":
            self._journal("step-output", step=step.id, name=str(e.get("name")), value=e.get("value"))
            self._emit(ev.OutputValue(step.id, str(e.get("name")), e.get("value")))

    async def _reconcile(self, step: Step) -> None:
        """On resume: the journal says this step started and never ended. Ask its supervisor."""
        s = self.state.steps[step.id]
        sdir = step_dir(self.ctx.rdir, step.id, s.attempt)
        proc = StepProcess.attach(sdir) if (sdir / "supervisor.json").exists() else None
        state = proc.state() if proc else "lost"
        if proc is None or state == "lost":
            self._journal("step-interrupted", step=step.id, detail="its process is gone and recorded no result")
            self._emit(ev.Notice("warning", f"step {step.id} was interrupted: its process is gone without a result", step.id))
            return
        if state == "running":
            self._journal("step-reattached", step=step.id, attempt=s.attempt)
            self._emit(ev.Notice("info", f"step {step.id} is still running; watching it again", step.id))
            self._emit(ev.StepStarted(step.id, s.attempt, s.command, reattached=True))
        else:
            self._emit(ev.Notice("info", f"step {step.id} ended while nobody watched; its result was recorded", step.id))
        self._proc = proc
        try:
            already = frozenset({c["name"] for c in s.checks} | set(s.outputs))
            result = await self._follow(step, proc, already)
        finally:
            self._proc = None
        if result is not None:
            self._record_result(step, s.attempt, result, will_retry=False)
            if self._abort_reason:
                raise _Abort(self._abort_reason)

    # ---- commands --------------------------------------------------------------------------------

    def _lookup(self, *, placeholders: bool) -> Any:
        ctx = self.ctx
        run_values = {
            "id": self.run_id,
            "dir": str(ctx.rdir),
            "mode": ctx.mode,
            "scenario": ctx.scenario,
            "incident_start": iso(self.state.incident_start) if self.state.incident_start else "",
            "state_dir": str(ctx.state_dir),
        }

        def lookup(ref: Ref) -> str:
            if ref.kind == "param":
                if ref.name in ctx.params:
                    text = to_text(ctx.params[ref.name])
                    p = ctx.runbook.params.get(ref.name)
                    return ShellCode(text) if p is not None and p.type == ParamType.command else text
            elif ref.kind == "run":
                return run_values[ref.name]
            elif ref.kind == "step":
                assert ref.step is not None
                outs = self.state.steps[ref.step].outputs if ref.step in self.state.steps else {}
                if ref.name in outs:
                    v = outs[ref.name]
                    return v if isinstance(v, str) else json.dumps(v) if isinstance(v, dict | list) else str(v)
            if placeholders:
                return f"<{ref.key}>"
            raise MissingValue(ref)

        return lookup

    def _render_command(self, step: Step, *, placeholders: bool) -> tuple[str | None, StepLaunch | None]:
        lookup = self._lookup(placeholders=placeholders)
        red = self.ctx.redactor.redact
        if step.kind == "manual":
            return None, None
        env = dict(os.environ)
        env.update(self.ctx.secrets.env)
        env.update({k: render(v, lookup, shell=False) for k, v in step.env.items()})
        env.update({
            "RUNBOOK_RUN_ID": self.run_id, "RUNBOOK_RUN_DIR": str(self.ctx.rdir),
            "RUNBOOK_MODE": self.ctx.mode, "RUNBOOK_SCENARIO": self.ctx.scenario, "RUNBOOK_STEP": step.id,
        })
        cwd = render(step.cwd, lookup, shell=False) if step.cwd else None
        timeout = step.timeout.total_seconds() if step.timeout else None
        common = dict(env=env, cwd=cwd, timeout_s=timeout, kill_grace_s=KILL_GRACE_S, redact=list(self.ctx.redactor.secrets))
        if step.kind == "run":
            assert step.run is not None
            script = render(step.run, lookup, shell=True)
            return red(script), StepLaunch(argv=["bash", "-eo", "pipefail", "-c", script], **common)  # type: ignore[arg-type]
        if step.kind == "argv":
            assert step.argv is not None
            argv = [render(a, lookup, shell=False) for a in step.argv]
            return red(shlex.join(argv)), StepLaunch(argv=argv, **common)  # type: ignore[arg-type]
        assert step.action is not None
        args = render_obj(step.with_ or {}, lookup)
        shown = f"{step.action} {json.dumps(args, ensure_ascii=False)}" if args else step.action
        launch = StepLaunch(
            argv=[self.ctx.python, "-m", "steps", step.action], stdin_data=json.dumps(args),
            event_fd=True, **common,  # type: ignore[arg-type]
        )
        return red(shown), launch

    async def _prepare(self, step: Step) -> tuple[str | None, StepLaunch | None]:
        """Render the step's command; a value nobody produced is asked of the operator (journaled)."""
        placeholders = self.ctx.mode == "rehearsal"
        while True:
            try:
                return self._render_command(step, placeholders=placeholders)
            except MissingValue as m:
                ref = m.ref
                if ref.kind != "step" or ref.step is None:
                    raise RunbookError(f"step {step.id}: no value for {{{{ {ref.key} }}}}") from None
                why = f"step {ref.step} produced no {ref.name!r} (it was skipped or failed)"
                d = await self._wait_for(ev.Waiting(step.id, Wait.value, value_key=ref.key, detail=why))
                if d.kind == "skip":
                    self._skip(step, d.text)
                    return None, None
                self._journal("value-provided", step=ref.step, name=ref.name, value=d.text, for_step=step.id)

    # ---- closing ---------------------------------------------------------------------------------

    def _summary(self) -> dict[str, Any]:
        c = self.clock_status()
        st = self.state
        return {
            "run_id": self.run_id, "rto_s": c.elapsed_s, "rto_target_s": c.target_s, "rto_verdict": c.verdict,
            "failed": [s for s in st.order if st.steps[s].status == StepStatus.failed],
            "skipped": [s for s in st.order if st.steps[s].status == StepStatus.skipped],
            "run_dir": str(self.ctx.rdir),
        }

    def _close(self, status: str, detail: str) -> None:
        # a completed run with no rto_end step done: folding run-finished sets the RTO end to its time
        self._journal("run-finished", status=status, detail=detail)
        self._release(closed=True)
        self._finish(ev.RunFinished(status, detail, self._summary()))

    def _release(self, *, closed: bool) -> None:
        if self.ctx.lock is not None:
            self.ctx.lock.release(closed=closed)
            self.ctx.lock = None

    def _finish(self, event: ev.RunFinished) -> None:
        self.finished = event
        if self._requests_task is not None:
            self._requests_task.cancel()
        self.ctx.journal.close()
        self._emit(event)


def _hostname() -> str:
    import socket

    return socket.gethostname()


class _StopRun(Exception):
    def __init__(self, reason: str) -> None:
        self.reason = reason
