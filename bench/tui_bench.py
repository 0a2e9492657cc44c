"""TUI benchmark (run by hand, not a test): output throughput, key latency, first frame, memory.

    .venv/bin/python bench/tui_bench.py [--lines 200000] [--repeat 3]

Measured side by side in one run:
- the step alone (supervisor, no front end) vs the same step shown live in the headless Textual app:
  the difference is the time the TUI adds before the last line is in the output pane;
- the latency of a key (n: the note dialog) pressed while a step streams at full speed;
- the time from starting `runbook run` in a real terminal (tmux, 80x24) to its first frame;
- the process's peak RSS after 200k and after 5x as many lines (the pane keeps the last 5,000 lines).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import textwrap
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from runbook.clock import Clock  # noqa: E402
from runbook.executor import StepLaunch, StepProcess  # noqa: E402
from runbook.session import RunOptions, open_new_run  # noqa: E402
from runbook.tui import run_screen  # noqa: E402
from runbook.tui.app import RunbookApp  # noqa: E402
from runbook.tui.modals import TextModal  # noqa: E402


def _runbook(tmp: Path, lines: int) -> Path:
    p = tmp / "rb.yaml"
    p.write_text(textwrap.dedent(f"""
        version: 1
        name: bench
        steps:
          - {{id: stream, run: "seq {lines}", confirm: none}}
          - {{id: after, run: "true"}}
    """).lstrip())
    return p


def _started(step_dir: Path) -> float:
    """When the supervisor started the step (wall clock), from its own record."""
    import json
    from datetime import datetime

    info = json.loads((step_dir / "supervisor.json").read_text())
    return datetime.fromisoformat(info["started_at"].replace("Z", "+00:00")).timestamp()


async def step_alone(tmp: Path, lines: int) -> float:
    sdir = tmp / f"alone-{time.monotonic_ns()}"
    proc = StepProcess.launch(sdir, StepLaunch(argv=["seq", str(lines)], env=dict(os.environ)))
    n = 0
    async for item in proc.follow():
        if isinstance(item, list):
            n += len(item)
    assert n == lines, n
    return time.time() - _started(sdir)


async def step_in_tui(tmp: Path, lines: int) -> tuple[float, float]:
    run_screen.ARM_DELAY_S = 0.0
    state = tmp / f"state-{time.monotonic_ns()}"
    engine = open_new_run(RunOptions(runbook_path=_runbook(tmp, lines)), Clock(), state_dir=state)
    app = RunbookApp(clock=Clock(), state_dir=state, engine=engine)
    last = str(lines)
    async with app.run_test(size=(80, 24)) as pilot:
        while True:
            screen = app.screen
            if isinstance(screen, run_screen.RunScreen):
                log = screen.query_one("#output")
                if log.lines and log.lines[-1] == last:  # type: ignore[attr-defined]
                    break
            await pilot.pause(0.005)
        elapsed = time.time() - _started(engine.ctx.rdir / "steps" / "stream" / "1")
        rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
        await engine.abort("benchmark done")
        await pilot.pause(0.2)
    return elapsed, rss


async def key_latency(tmp: Path, lines: int) -> float:
    run_screen.ARM_DELAY_S = 0.0
    state = tmp / f"state-{time.monotonic_ns()}"
    engine = open_new_run(RunOptions(runbook_path=_runbook(tmp, lines)), Clock(), state_dir=state)
    app = RunbookApp(clock=Clock(), state_dir=state, engine=engine)
    async with app.run_test(size=(80, 24)) as pilot:
        while True:
            screen = app.screen
            if isinstance(screen, run_screen.RunScreen) and len(screen.query_one("#output").lines) > 1000:  # type: ignore[attr-defined]
                break
            await pilot.pause(0.005)
        t0 = time.monotonic()
        app.simulate_key("n")  # as the terminal would deliver it (pilot.press waits for an idle app)
        while not isinstance(app.screen, TextModal):
            await asyncio.sleep(0.001)
        latency = time.monotonic() - t0
        streaming = engine.state.steps["stream"].status.value == "running"
        assert streaming, "the stream ended before the key was handled: use more lines"
        await pilot.press("escape")
        await engine.abort("benchmark done")
        await pilot.pause(0.2)
    return latency


def first_frame(tmp: Path) -> float:
    if shutil.which("tmux") is None:
        return float("nan")
    sock = tmp / f"tmux-{time.monotonic_ns()}.sock"
    rb = _runbook(tmp, 10)
    t0 = time.monotonic()
    subprocess.run(["tmux", "-S", str(sock), "new-session", "-d", "-x", "80", "-y", "24",
                    f"{sys.executable} -m runbook run {rb} --state-dir {tmp}/tmux-state"], check=True, cwd=ROOT)
    try:
        while True:
            out = subprocess.run(["tmux", "-S", str(sock), "capture-pane", "-p"], capture_output=True, text=True).stdout
            if "Start the run" in out:
                return time.monotonic() - t0
            if time.monotonic() - t0 > 20:
                return float("inf")
            time.sleep(0.01)
    finally:
        subprocess.run(["tmux", "-S", str(sock), "kill-server"], capture_output=True)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--lines", type=int, default=200_000)
    ap.add_argument("--repeat", type=int, default=3)
    args = ap.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="runbook-tui-bench-"))
    alone, tui, keys, frames, rss = [], [], [], [], []
    for _ in range(args.repeat):
        alone.append(asyncio.run(step_alone(tmp, args.lines)))
        t, r = asyncio.run(step_in_tui(tmp, args.lines))
        tui.append(t)
        rss.append(r)
        keys.append(asyncio.run(key_latency(tmp, args.lines * 5)))
        frames.append(first_frame(tmp))
    _, rss_big = asyncio.run(step_in_tui(tmp, args.lines * 5))
    added = [t - a for t, a in zip(tui, alone, strict=True)]

    def row(name: str, xs: list[float], unit: str = "s") -> str:
        return f"| {name} | {min(xs):.3f} {unit} | {statistics.median(xs):.3f} {unit} |"

    print(f"\n{args.lines:,} lines, {args.repeat} repeats, 80x24\n")
    print("| measure | min | median |")
    print("|---|---|---|")
    print(row("step alone: launch to last line followed (no front end)", alone))
    print(row("same step in the headless TUI: start to last line in the pane", tui))
    print(row("added by the TUI", added))
    print(row(f"key latency (n) during a {args.lines * 5:,}-line stream", [k * 1000 for k in keys], "ms"))
    print(row("first frame of `runbook run` in tmux (process start included)", frames))
    print(f"\npeak RSS after {args.lines:,} lines: {max(rss):.0f} MiB; after {args.lines * 5:,} more: {rss_big:.0f} MiB")
    print(f"ratio TUI/alone (median): {statistics.median(tui) / statistics.median(alone):.2f}x")
    shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
