"""Watch latency (run by hand, not a test): from the driver's journal write to the watcher's line or screen.

    .venv/bin/python bench/watch_bench.py [--events 40] [--gap 0.3] [--watchers 3]

This process plays the driver of a run: it holds the run lock and appends events through runbook.journal.Journal
(fsync per event, what the engine does), one every --gap seconds (a named output of the running step, so it is
drawn in the output pane). Measured side by side, on the same events:
- `runbook watch --headless` (each of --watchers at once, real processes): the time from the start of the
  append to the event's line arriving on the watcher's standard output;
- `runbook watch` (the cockpit) in a real terminal (tmux, 80x24): the time to the event's value appearing on
  the screen, sampled every 20 ms with `tmux capture-pane` (so the figure carries up to 20 ms of sampling).
Prints median and max over the events, and the watcher's poll interval (the latency the design adds: the
floor of the median is about half of it). The goal (issue 18): under 2 s locally.
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from runbook.cli.watch import POLL_S as HEADLESS_POLL_S  # noqa: E402
from runbook.clock import Clock  # noqa: E402
from runbook.tui.watch_screen import POLL_S as COCKPIT_POLL_S  # noqa: E402
from tests.support.watched import HandDriver  # noqa: E402


class Reader(threading.Thread):
    """Reads a watcher's standard output, noting when each line arrived."""

    def __init__(self, proc: subprocess.Popen[str]) -> None:
        super().__init__(daemon=True)
        self.proc = proc
        self.arrived: dict[str, float] = {}

    def run(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            now = time.monotonic()
            if "= bench-" in line:
                self.arrived.setdefault(line.rsplit("= ", 1)[1].strip(), now)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--events", type=int, default=40)
    ap.add_argument("--gap", type=float, default=0.3, help="seconds between two events")
    ap.add_argument("--watchers", type=int, default=3, help="headless watchers following at once")
    args = ap.parse_args()
    if shutil.which("tmux") is None:
        print("tmux is missing: the cockpit's screen cannot be measured (scripts/setup.sh installs it)")
        return 3
    tmp = Path(tempfile.mkdtemp(prefix="watch-bench-"))
    state = tmp / "state"
    state.mkdir()
    sock = tmp / "tmux.sock"
    watchers: list[subprocess.Popen[str]] = []
    d = HandDriver(state, Clock())  # the real clock: the driver writes now
    try:
        d.manual("tell", acked=2)
        d.finished("tell")
        d.run("fetch", "fetch-latest-backup")
        run_id = d.rdir.name
        env = {**os.environ, "TZ": "UTC"}
        for _ in range(args.watchers):
            watchers.append(subprocess.Popen(
                [sys.executable, "-m", "runbook", "watch", run_id, "--headless", "--state-dir", str(state)],
                cwd=ROOT, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True,
                env=env))
        readers = [Reader(w) for w in watchers]
        for r in readers:
            r.start()
        subprocess.run(["tmux", "-S", str(sock), "new-session", "-d", "-x", "80", "-y", "24",
                        f"{sys.executable} -m runbook watch {run_id} --state-dir {state}"], check=True, cwd=ROOT)
        wait_screen(sock, "fetch", 30)
        time.sleep(1.0)  # every watcher has replayed the journal so far
        written: dict[str, float] = {}
        on_screen: dict[str, float] = {}
        for i in range(args.events):
            mark = f"bench-{i:03d}"
            written[mark] = time.monotonic()
            d.event("step-output", step="fetch", name="mark", value=mark)
            deadline = written[mark] + max(args.gap, 5.0)
            while time.monotonic() < deadline:
                if mark in capture(sock):
                    on_screen[mark] = time.monotonic()
                    break
                time.sleep(0.02)
            left = written[mark] + args.gap - time.monotonic()
            if left > 0:
                time.sleep(left)
        time.sleep(2 * HEADLESS_POLL_S + 0.5)
        print(f"{args.events} events, one every {args.gap:g} s; watchers poll every {HEADLESS_POLL_S:g} s "
              f"(text) and {COCKPIT_POLL_S:g} s (cockpit)")
        print(f"{'watcher':<34} {'seen':>6} {'median ms':>10} {'max ms':>8}")
        for n, r in enumerate(readers, start=1):
            report(f"runbook watch --headless #{n}", written, r.arrived)
        report("runbook watch (tmux 80x24 screen)", written, on_screen)
    finally:
        subprocess.run(["tmux", "-S", str(sock), "kill-server"], capture_output=True)
        for w in watchers:
            w.terminate()
            w.wait()
        d.release()
        shutil.rmtree(tmp, ignore_errors=True)
    return 0


def capture(sock: Path) -> str:
    return subprocess.run(["tmux", "-S", str(sock), "capture-pane", "-p"], capture_output=True, text=True).stdout


def wait_screen(sock: Path, text: str, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if text in capture(sock):
            return
        time.sleep(0.05)
    raise SystemExit(f"the watch cockpit never showed {text!r}:\n{capture(sock)}")


def report(name: str, written: dict[str, float], seen: dict[str, float]) -> None:
    lat = [(seen[m] - t) * 1000 for m, t in written.items() if m in seen]
    if not lat:
        print(f"{name:<34} {0:>6} {'-':>10} {'-':>8}")
        return
    print(f"{name:<34} {len(lat):>6} {statistics.median(lat):>10.0f} {max(lat):>8.0f}"
          + ("" if len(lat) == len(written) else f"   ({len(written) - len(lat)} never seen)"))


if __name__ == "__main__":
    sys.exit(main())
