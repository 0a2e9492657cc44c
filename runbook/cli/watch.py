"""Watching a run from outside it: `watch` (the read-only cockpit, or `--headless` text lines) and `serve` (the
same cockpit in a browser).

`source_for(args)` builds the run a watcher follows (runbook.watching.WatchedRun over an EventSource); the
cockpit and the console see only that, so another source (the repository's mirror of the journal) plugs in here.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from typing import TYPE_CHECKING, Any

from runbook.cli.options import add_state_dir, state_dir
from runbook.errors import Exit, UsageError

if TYPE_CHECKING:
    from runbook.watching import WatchedRun

POLL_S = 0.25  # the headless watcher's poll (the cockpit's is runbook.tui.watch_screen.POLL_S)


def register(sub: Any) -> None:
    w = sub.add_parser("watch", help="follow a run read-only: its cockpit, or text lines with --headless",
                       description="Follow a run from another terminal, read-only: the driver's step list, output, "
                                   "RTO clock and projection, within a second. Takes no lock and writes nothing; "
                                   "any number of watchers at once. Ends with the run's summary.")
    w.add_argument("run_id", metavar="RUN_ID", help="the run, or a unique prefix of its id (`runbook runs` lists them)")
    w.add_argument("--headless", action="store_true",
                   help="print the run's events as text lines instead of the cockpit (a plain SSH session, a log); "
                        "ends when the run ends")
    w.add_argument("-c", "--config", metavar="REPO_CONFIG",
                   help="follow the run from another host, through the repository this config names: the journal's "
                        "mirror the driver writes there (signed; RUN_ID in full)")
    w.add_argument("--allow-unsigned", action="store_true",
                   help="with -c: accept a mirror written unsigned (a driver host without signing.private_key)")
    add_state_dir(w)
    w.set_defaults(func=cmd_watch)

    s = sub.add_parser("serve", help="serve a run's watch cockpit to browsers (read-only, token in the URL)",
                       description="Serve `runbook watch RUN_ID` to web browsers (a tabletop rehearsal on one screen). "
                                   "Each browser gets its own read-only cockpit. The URL printed carries a random "
                                   "token; a request without it is refused (403). Stop with Ctrl+C.")
    s.add_argument("run_id", metavar="RUN_ID", help="the run, or a unique prefix of its id")
    s.add_argument("--host", default="127.0.0.1",
                   help="the address to listen on (default: 127.0.0.1, this host only; 0.0.0.0: every interface)")
    s.add_argument("--port", type=int, default=0, help="the port (default: a free one, printed)")
    add_state_dir(s)
    s.set_defaults(func=cmd_serve)


def source_for(args: argparse.Namespace) -> WatchedRun:
    """The run to watch, as the arguments name it: a run directory under the state directory, or with -c the
    repository's mirror of its journal (runbook.repository_watch)."""
    if getattr(args, "config", None):
        from runbook.repository_watch import open_repository

        return open_repository(args.config, args.run_id, allow_unsigned=args.allow_unsigned)
    if getattr(args, "allow_unsigned", False):
        raise UsageError("--allow-unsigned is for a watch through the repository (-c REPO_CONFIG)")
    from runbook.watching import open_local

    return open_local(state_dir(args), args.run_id)


def cmd_watch(args: argparse.Namespace) -> int:
    view = source_for(args)
    if args.headless:
        return follow_headless(view)
    served = bool(os.environ.get("TEXTUAL_DRIVER"))  # started by `runbook serve` for a browser: no terminal here
    if not served:
        missing = [name for name, stream in (("standard input", sys.stdin), ("standard output", sys.stdout))
                   if stream is None or not stream.isatty()]
        if missing:
            raise UsageError(f"`runbook watch` opens the cockpit, which needs a terminal, and {' and '.join(missing)} "
                             f"{'is' if len(missing) == 1 else 'are'} not one", hint="add --headless for text lines")
    from runbook.tui.watch_screen import watch

    return watch(view)


# ---- --headless ---------------------------------------------------------------------------------------------


class WatchPrinter:
    """The console watcher: one line per journal event (`HH:MM:SS  N/T step  what: detail`), a step's output
    lines under it when the run directory is on this host, the driver going silent or coming back, the end."""

    def __init__(self, view: WatchedRun, out: Any) -> None:
        self.view = view
        self.out = out
        self._silent = False
        self._note = ""
        self._tail: tuple[str, int, int] | None = None

    def say(self, text: str) -> None:
        print(text, file=self.out, flush=True)

    def header(self) -> None:
        self.say(f"watching {self.view.source.describe()} · read-only (Ctrl+C stops watching; the run goes on)")

    def events(self, new: list[dict[str, Any]]) -> None:
        from runbook.report import event_detail, event_text

        st = self.view.state
        for e in new:
            t = e.get("type")
            if t == "run-started":
                d = self.view.driver
                self.say(f"{_t(e.get('ts'))}  run {st.run_id}: {st.mode.upper()} · {st.runbook_name} · scenario "
                         f"{st.scenario} · {len(st.order)} steps · driven by {d.describe() if d else '?'}")
                continue
            self._output()
            sid = e.get("step")
            where = f"{st.order.index(sid) + 1}/{len(st.order)} {sid}  " if sid in st.order else ""
            detail = event_detail(e)
            about = self._about(sid) if t == "step-started" else ""
            self.say(f"{_t(e.get('ts'))}  {where}{event_text(e)}" + (f": {detail}" if detail else "") + about)
            if t in ("step-started", "step-reattached") and isinstance(sid, str):
                self._tail = (sid, st.steps[sid].attempt, 0)
            elif t in ("step-finished", "step-skipped", "step-interrupted"):
                self._tail = None
        self._output()

    def _about(self, sid: object) -> str:
        """The step's title and expected duration, from the run's runbook copy (nothing when the watcher has no
        copy: steps by their ids)."""
        from runbook.durations import format_duration

        if not isinstance(sid, str):
            return ""
        try:
            title = self.view.ctx.runbook.step(sid).title
        except KeyError:
            title = None
        parts = [title] if title else []
        expected = self.view.ctx.expected.get(sid)
        if expected is not None:
            parts.append(f"expected {format_duration(expected)}")
        return f"  [{' · '.join(parts)}]" if parts else ""

    def _output(self) -> None:
        from runbook.watching import read_output

        lines, self._tail = read_output(self.view.source, self._tail)
        for ln in lines:
            self.say(f"          | {'! ' if ln.stream == 'err' else ''}{ln.text}")

    def liveness(self) -> None:
        from runbook.durations import format_duration

        status = self.view.last_status
        if status.silent_s is not None and not self._silent:
            d = self.view.driver
            heard = _t(status.last_heard.isoformat()) if status.last_heard else "its start"
            self.say(f"-- the driver {d.describe() if d else ''} is SILENT: nothing heard since {heard} "
                     f"({format_duration(status.silent_s)} ago)" + (f"; {status.note}" if status.note else ""))
        elif status.silent_s is None and self._silent:
            self.say("-- the driver is back")
        elif status.silent_s is None and status.note and status.note != self._note:
            self.say(f"-- {status.note}")  # through the repository: unreachable, a refused or missing chunk
        self._silent = status.silent_s is not None
        self._note = status.note

    def summary(self) -> None:
        from runbook.durations import format_duration
        from runbook.report import end_story, report_command

        st = self.view.state
        c = self.view.clock_status()
        self.say(f"-- the run has ended: {st.status}" + (f" ({st.detail})" if st.detail else ""))
        restored = "service restored" if st.rto_end_at else "service not restored"
        self.say(f"   RTO {format_duration(c.elapsed_s)} of {format_duration(c.target_s)} ({restored}, {c.verdict})")
        for line in end_story(st, self.view.clock.now()):
            self.say(f"   {line.text}")
        sdir = self.view.ctx.state_dir
        self.say(f"   report: {report_command(st.run_id, sdir) if sdir else 'runbook report ' + st.run_id}")


def _t(ts: object) -> str:
    """A journal time as this host's HH:MM:SS."""
    from runbook.clock import parse_iso

    try:
        return parse_iso(str(ts)).astimezone().strftime("%H:%M:%S")
    except ValueError:
        return str(ts)


def follow_headless(view: WatchedRun, *, poll_s: float = POLL_S, out: Any = None) -> int:
    """Print the run's events as they are journaled (the journal so far first), and the driver going silent or
    coming back, until the run ends. Exit 0 when it completed, 1 when it failed or was aborted."""
    printer = WatchPrinter(view, out or sys.stdout)
    printer.header()
    while True:
        printer.events(view.update())
        printer.liveness()
        if view.last_status.ended:
            printer.summary()
            return Exit.OK if view.state.status == "completed" else Exit.RUN_FAILED
        time.sleep(poll_s)


# ---- serve --------------------------------------------------------------------------------------------------


def cmd_serve(args: argparse.Namespace) -> int:
    import shlex

    from runbook.tui.serve import serve
    from runbook.watching import resolve_run_id

    directory = state_dir(args)
    run_id = resolve_run_id(directory, args.run_id)  # an unknown run is refused before anything listens
    if not 0 <= args.port <= 65535:
        raise UsageError(f"--port {args.port}: not a port number (1-65535, or 0 for a free one)")
    command = shlex.join([sys.executable, "-m", "runbook", "watch", run_id, "--state-dir", str(directory.resolve())])
    return serve(command, run_id, host=args.host, port=args.port)
