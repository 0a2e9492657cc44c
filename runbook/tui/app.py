"""The Textual application: start (resume offer, parameter form), the run screen, the summary.

Entry points for the CLI: `run_new` (runbook run without --headless) and `run_engine` (runbook resume).
Exit codes match the headless runner: 0 completed, 1 failed or aborted, 4 left open (detached).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from rich.markup import escape
from textual.app import App
from textual.binding import Binding
from textual.worker import Worker, WorkerState

from runbook.clock import Clock
from runbook.engine import Engine
from runbook.errors import RunbookError
from runbook.model import Runbook
from runbook.session import RunOptions, open_new_run, open_resume
from runbook.state import RunState, list_runs
from runbook.tui.modals import ErrorModal
from runbook.tui.run_screen import RunEnded, RunScreen
from runbook.tui.start_screens import FleetScreen, ParamsScreen, ResumeOfferScreen
from runbook.tui.summary_screen import SummaryScreen

EXIT_CODES = {"completed": 0, "failed": 1, "aborted": 1, "detached": 4}
STATUS_TIMEOUT_S = 8.0  # the start screen's verdict line (runbook status) gives up after this
FLEET_STATUS_TIMEOUT_S = 20.0  # the fleet screen's verdicts (runbook status --all)


class RunbookApp(App[int]):
    CSS_PATH = "app.tcss"
    TITLE = "runbook"
    ENABLE_COMMAND_PALETTE = False
    BINDINGS = [Binding("ctrl+c", "noop", show=False, priority=True, id="app.noop", tooltip="")]

    def __init__(
        self,
        *,
        clock: Clock,
        state_dir: Path,
        engine: Engine | None = None,
        runbook: Runbook | None = None,
        opts: RunOptions | None = None,
        given: dict[str, Any] | None = None,
    ) -> None:
        super().__init__()
        self.clock = clock
        self.state_dir = state_dir
        self.engine = engine
        self.runbook = runbook
        self.opts = opts or RunOptions()
        self.given = given or {}
        self.finished_status: str | None = None

    def on_mount(self) -> None:
        if self.engine is not None:
            self.push_screen(RunScreen(self.engine))
            return
        assert self.runbook is not None
        fleet = self._fleet()
        if fleet is not None:
            self.push_screen(fleet)
            self.run_worker(self._fleet_verdicts(fleet), group="status", exclusive=True, exit_on_error=False)
            return
        self._offer_or_params()

    def _offer_or_params(self) -> None:
        assert self.runbook is not None
        open_runs = [
            r for r in list_runs(self.state_dir)
            if isinstance(r, RunState) and r.runbook_name == self.runbook.name and not r.closed
        ]
        if open_runs:
            self.push_screen(ResumeOfferScreen(self.runbook, open_runs))
        else:
            self.show_params()

    def _fleet(self) -> FleetScreen | None:
        """The cluster chooser, when the runbook names a `fleet:` directory holding configs and its `repository:`
        is one parameter not given yet (`--set`, the profile): choosing sets that parameter."""
        from runbook.templating import parse_refs

        rb = self.runbook
        if rb is None or not rb.fleet or not rb.repository:
            return None
        try:
            refs = parse_refs(rb.repository)
        except Exception:  # noqa: BLE001 - the validator reports a bad template; no chooser
            return None
        if len(refs) != 1 or refs[0].kind != "param" or rb.repository.strip() != "{{ " + refs[0].name + " }}" \
                or refs[0].name in self.given:
            return None
        from steps.proof.fleet import configs_of

        source = Path(rb.fleet).expanduser()
        if not source.is_absolute():
            source = self.opts.runbook_path.resolve().parent / source
        try:
            configs = configs_of(source)
        except OSError as e:
            self.notify(f"The runbook's fleet cannot be read: {e}", title="No cluster list", severity="warning",
                        timeout=12)
            return None
        if not configs:
            return None
        return FleetScreen(rb, str(source), configs, refs[0].name)

    def choose_cluster(self, config: Path) -> None:
        """The fleet screen's choice: its config is the `repository:` parameter of the form and of the run."""
        assert isinstance(self.screen, FleetScreen)
        self.given = {**self.given, self.screen.param: str(config.absolute())}
        self._offer_or_params()

    async def _fleet_verdicts(self, screen: FleetScreen) -> None:
        """`runbook status --all --json` over the fleet in a child process, bounded: the UI never waits on it."""
        import json

        # cancelled when a cluster is chosen, or the app quits
        answer = await _status_child([str(self.opts.runbook_path), "--all", "-c", screen.source, "--state-dir",
                                      str(self.state_dir), "--json", "--connect-timeout", "3"], FLEET_STATUS_TIMEOUT_S)
        if answer is None:
            screen.set_fleet(None, f"no answer within {FLEET_STATUS_TIMEOUT_S:g} s (runbook status --all -c "
                             f"{screen.source})", 3)
            return
        code, out, _ = answer
        try:
            doc = json.loads(out)
        except ValueError:
            screen.set_fleet(None, "runbook status --all gave no answer", 3)
            return
        counts = ", ".join(f"{n} {v}" for v, n in doc.get("counts", {}).items() if n)
        screen.set_fleet(doc, f"fleet: {str(doc.get('verdict', '?')).upper()} ({counts})", code)

    def action_noop(self) -> None:
        """Ctrl+C does not kill the cockpit mid-step; q quits (asking first while a step runs)."""
        self.notify("Press q to quit (the run stays resumable).", severity="warning")

    def on_worker_state_changed(self, event: Worker.StateChanged) -> None:
        """The one place a worker's error lands (the run screen relays its own workers' here): the operator
        sees it, the journal records it, and the run stays open and resumable."""
        error = event.worker.error
        if event.state != WorkerState.ERROR or not isinstance(error, Exception):
            return
        self.worker_failed(error, event.worker.name or event.worker.description)

    def worker_failed(self, error: Exception, where: str) -> None:
        engine = self.engine
        redact = engine.ctx.redactor.redact if engine is not None else str
        if isinstance(error, RunbookError):
            title = f"Error: {error.title}"
            lines = [redact(error.message)] + ([f"hint: {redact(error.hint)}"] if error.hint else [])
        else:
            title = "Unexpected error"
            lines = [redact(f"{type(error).__name__}: {error}" if str(error) else type(error).__name__)]
        if engine is not None:
            lines.append("")
            try:
                log = engine.record_frontend_error(error, source="tui", where=where)
            except Exception as e:  # noqa: BLE001 - the journal itself may be what failed; say so, go on
                lines.append(f"It could not be journaled ({type(e).__name__}: {redact(str(e))}).")
            else:
                lines.append("It is in the journal" + (f"; details in {log.name} in the run directory." if log else "."))
            if engine.finished is None or engine.finished.status == "detached":
                lines.append(f"The run is kept: it stays open, running steps go on under their supervisors; "
                             f"resume it with `runbook resume {engine.run_id}`.")
        self.push_screen(ErrorModal(title, escape("\n".join(lines))))

    def show_params(self) -> None:
        assert self.runbook is not None
        from runbook.staleness import last_good_drills

        rb = self.runbook
        drills = last_good_drills(list_runs(self.state_dir), self.clock.now(), scenarios={rb.name: list(rb.scenarios)})
        mine = {scenario: d for (name, scenario), d in drills.items() if name == rb.name}
        stale = [s for s, d in mine.items() if d.stale]
        if stale:
            self.notify(f"Not drilled in 30 days: {', '.join(stale)}. Rehearse it (runbook demo) before you need it.",
                        title="Stale scenario", severity="warning", timeout=12)
        repository = self._repository()
        screen = ParamsScreen(rb, self.opts, self.given, self.clock.now(), mine, status_pending=repository is not None)
        if len(self.screen_stack) > 1:
            self.switch_screen(screen)
        else:
            self.push_screen(screen)
        if repository is not None:
            self.run_worker(self._verdict(screen, repository), group="status", exclusive=True, exit_on_error=False)

    def _repository(self) -> str | None:
        """The repository config the runbook names (`repository:`, rendered with the form's starting values),
        when it exists; None: no verdict line."""
        assert self.runbook is not None
        from runbook.session import repository_path

        rb = self.runbook
        params = {name: p.default for name, p in rb.params.items() if p.default is not None}
        params.update(self.given)
        try:
            path = repository_path(rb, None, params)
        except Exception:  # noqa: BLE001 - a template that cannot render yet: no verdict, the form says why
            return None
        return path if path and Path(path).expanduser().is_file() else None

    async def _verdict(self, screen: ParamsScreen, repository: str) -> None:
        """`runbook status --one-line` in a child process, bounded: the UI never waits on the network."""
        # cancelled when the run starts, or the app quits
        answer = await _status_child([str(self.opts.runbook_path), "-c", repository, "--state-dir",
                                      str(self.state_dir), "--one-line", "--connect-timeout", "3"], STATUS_TIMEOUT_S)
        if answer is None:
            screen.set_verdict(f"would we make it now? no answer within {STATUS_TIMEOUT_S:g} s "
                               f"(runbook status -c {repository})", 3)
            return
        code, out, err = answer
        lines = (out or err).decode(errors="replace").strip().splitlines()
        screen.set_verdict(lines[-1] if lines else "would we make it now? unknown", code)

    def _start(self, engine: Engine) -> None:
        self.engine = engine
        if len(self.screen_stack) > 1:
            self.switch_screen(RunScreen(engine))
        else:
            self.push_screen(RunScreen(engine))

    def open_new(self, opts: RunOptions) -> str | None:
        """Open the run; returns an error message for the form instead of raising."""
        try:
            engine = open_new_run(opts, self.clock, state_dir=self.state_dir)
        except RunbookError as e:
            return str(e)
        self._start(engine)
        return None

    def resume(self, run_id: str) -> None:
        try:
            engine = open_resume(run_id, self.clock, state_dir=self.state_dir)
        except RunbookError as e:
            self.notify(str(e), title="Cannot resume", severity="error", timeout=10)
            return
        self._start(engine)

    def _watch_after_handover(self, who: dict[str, Any]) -> None:
        from runbook.tui.handover_screen import TakenOverScreen
        from runbook.watching import open_local

        assert self.engine is not None
        while len(self.screen_stack) > 1 and not isinstance(self.screen, RunScreen):
            self.pop_screen()  # a question the driver was answering (a modal) is moot now: the run is not theirs
        self.finished_status = f"taken over by {who.get('user')}@{who.get('host')}"
        view = None
        if who.get("remote") and who.get("repository"):  # driven from another host: followed through the repository
            from runbook.errors import RunbookError
            from runbook.repository_watch import open_repository

            try:
                view = open_repository(str(who["repository"]), self.engine.run_id)
            except RunbookError:
                view = None  # this host cannot read it: its own journal, up to the hand-over
        if view is None:
            view = open_local(self.engine.ctx.state_dir, self.engine.run_id, clock=self.engine.clock)
        self.switch_screen(TakenOverScreen(view, who))

    def on_run_ended(self, message: RunEnded) -> None:
        self.finished_status = message.finished.status
        from runbook.tui.watch_screen import WatchScreen, WatchSummaryScreen

        if isinstance(self.screen, WatchScreen):  # the run, followed since a hand-over, has ended
            self.finished_status = message.finished.status
            self.switch_screen(WatchSummaryScreen(self.screen.view, message.finished))
            return
        taken = message.finished.summary.get("taken_over_by")
        if taken and self.engine is not None:  # handed over: this cockpit turns into a watcher, until q
            self._watch_after_handover(taken)
            return
        if message.finished.status == "detached":
            self.exit(EXIT_CODES["detached"])
            return
        assert self.engine is not None
        self.switch_screen(SummaryScreen(self.engine, message.finished))


async def _status_child(args: list[str], timeout: float) -> tuple[int | None, bytes, bytes] | None:
    """`runbook status ARGS` in a child process, bounded: its exit code, stdout and stderr; None when it gave no
    answer within `timeout` seconds (it is killed). Cancelled, it kills the child too."""
    import asyncio
    import sys

    proc = await asyncio.create_subprocess_exec(sys.executable, "-m", "runbook", "status", *args,
                                                stdin=asyncio.subprocess.DEVNULL, stdout=asyncio.subprocess.PIPE,
                                                stderr=asyncio.subprocess.PIPE)
    try:
        out, err = await asyncio.wait_for(proc.communicate(), timeout=timeout)
    except asyncio.CancelledError:  # the child goes with whoever waited for it
        proc.kill()
        await asyncio.shield(proc.wait())
        raise
    except TimeoutError:
        proc.kill()
        await proc.wait()
        return None
    return proc.returncode, out, err


def _exit_code(app: RunbookApp, code: int | None) -> int:
    """The exit code, after saying (on the restored terminal) which run this was, how it stands, and the exact
    command that goes on with it or reports it."""
    from runbook.report import leaving_lines

    if app.engine is not None:
        status = app.finished_status or "detached"
        for line in leaving_lines(app.engine.run_id, status, app.engine.ctx.state_dir):
            print(line)
    if code is not None:
        return code
    return EXIT_CODES.get(app.finished_status or "detached", 4)


def run_new(opts: RunOptions, runbook: Runbook, given: dict[str, Any], state_dir: Path) -> int:
    app = RunbookApp(clock=Clock(), state_dir=state_dir, runbook=runbook, opts=opts, given=given)
    return _exit_code(app, app.run())


def run_engine(engine: Engine, state_dir: Path) -> int:
    app = RunbookApp(clock=engine.clock, state_dir=state_dir, engine=engine)
    return _exit_code(app, app.run())
