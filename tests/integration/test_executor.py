"""The step executor and its supervisor, with real processes: streams, exit codes, timeouts, cancel,
secrets, events, and steps that outlive the front end that started them."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from runbook.executor import Line, StepLaunch, StepProcess, StepResult, read_output
from runbook.redact import MASK
from runbook.supervisor import group_members

ROOT = Path(__file__).resolve().parents[2]
BASE_ENV = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "LANG": "C.UTF-8"}
SECRET = "hunter2pass"

Launcher = Callable[..., StepProcess]


def wait_group_gone(pgid: int, within_s: float = 5.0) -> list[int]:
    deadline = time.monotonic() + within_s
    while (members := group_members(pgid)) and time.monotonic() < deadline:
        time.sleep(0.05)
    return members


def wait_for(cond: Callable[[], bool], within_s: float = 5.0) -> bool:
    deadline = time.monotonic() + within_s
    while not cond():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.02)
    return True


def texts(lines: list[Line], stream: str | None = None) -> list[str]:
    return [ln.text for ln in lines if stream is None or ln.stream == stream]


async def collect(proc: StepProcess) -> tuple[list[list[Line]], list[dict[str, Any]]]:
    batches: list[list[Line]] = []
    events: list[dict[str, Any]] = []
    async for item in proc.follow():
        if isinstance(item, list):
            batches.append(item)
        else:
            events.append(item)
    return batches, events


@pytest.fixture
def launch(tmp_path: Path) -> Iterator[Launcher]:
    """Launch steps under tmp_path; at the end kill whatever is left of them."""
    started: list[StepProcess] = []
    counter = iter(range(1000))

    def _launch(argv: list[str], **kw: Any) -> StepProcess:
        env = {**BASE_ENV, **kw.pop("env", {})}
        proc = StepProcess.launch(tmp_path / f"step{next(counter)}", StepLaunch(argv=argv, env=env, **kw))
        started.append(proc)
        return proc

    yield _launch
    for proc in started:
        if proc.state() == "running":
            proc.kill_session()
        if proc.pids.pgid is not None and group_members(proc.pids.pgid):
            os.killpg(proc.pids.pgid, signal.SIGKILL)


async def test_stdout_and_stderr_arrive_on_their_streams(launch: Launcher) -> None:
    proc = launch(["bash", "-c", "echo out1; echo err1 >&2; echo out2; echo err2 >&2"])
    batches, _ = await collect(proc)
    lines = [ln for b in batches for ln in b]
    assert texts(lines, "out") == ["out1", "out2"]
    assert texts(lines, "err") == ["err1", "err2"]
    assert not any(ln.partial for ln in lines)
    assert lines == read_output(proc.step_dir)
    assert proc.state() == "finished"
    result = await proc.wait()
    assert result is not None and result.ok and result.describe() == "exit 0"


async def test_200000_lines_arrive_complete_in_order_and_batched(launch: Launcher) -> None:
    t0 = time.monotonic()
    proc = launch(["seq", "200000"])
    batches, _ = await collect(proc)
    elapsed = time.monotonic() - t0
    lines = [ln.text for b in batches for ln in b]
    print(f"\n200000 lines: launch to last line followed {elapsed:.3f}s in {len(batches)} batches")
    assert lines == [str(i) for i in range(1, 200001)]
    assert len(batches) < 100
    assert elapsed < 10


@pytest.mark.parametrize("code", [0, 1, 42])
async def test_exit_codes(launch: Launcher, code: int) -> None:
    result = await launch(["bash", "-c", f"exit {code}"]).wait()
    assert result is not None
    assert (result.exit_code, result.signal, result.ok) == (code, None, code == 0)
    assert result.describe() == f"exit {code}"
    assert result.duration_s >= 0 and result.started_at.endswith("Z") and result.ended_at.endswith("Z")


async def test_a_command_that_does_not_exist_fails_with_127(launch: Launcher) -> None:
    proc = launch(["pg_restroe", "--dbname=x"])
    result = await proc.wait()
    assert result is not None
    assert result.exit_code == 127 and not result.ok
    assert result.error == "No such file or directory: pg_restroe"
    assert result.describe() == "could not start: No such file or directory: pg_restroe"
    assert proc.pids.child is None


async def test_timeout_kills_the_whole_process_group(launch: Launcher) -> None:
    proc = launch(["bash", "-c", "sleep 300 & sleep 300 & echo started; wait"], timeout_s=1, kill_grace_s=3)
    assert wait_for(lambda: len(group_members(proc.pids.pgid or 0)) == 3)
    result = await proc.wait()
    assert result is not None
    assert result.timed_out and not result.ok and result.signal == signal.SIGTERM
    assert result.describe() == "timed out after 1s"
    assert 1 <= result.duration_s < 3
    assert wait_group_gone(proc.pids.pgid or 0) == []


async def test_a_child_ignoring_sigterm_gets_sigkill_after_the_grace(launch: Launcher) -> None:
    proc = launch(["bash", "-c", "trap '' TERM; sleep 300 & wait; sleep 300"], timeout_s=0.5, kill_grace_s=1)
    result = await proc.wait()
    assert result is not None
    assert result.timed_out and result.signal == signal.SIGKILL
    assert result.duration_s >= 1.4
    assert wait_group_gone(proc.pids.pgid or 0) == []
    no_timeout = StepResult(None, 9, False, False, result.started_at, result.ended_at, 1.0, None)
    assert no_timeout.describe() == "killed by SIGKILL"


async def test_cancel_terminates_the_group_and_records_cancelled(launch: Launcher) -> None:
    proc = launch(["bash", "-c", "sleep 300 & sleep 300; wait"])
    assert proc.state() == "running"
    assert wait_for(lambda: len(group_members(proc.pids.pgid or 0)) == 3)
    proc.cancel()
    result = await proc.wait()
    assert result is not None
    assert result.cancelled and not result.timed_out and not result.ok
    assert result.describe() == "cancelled"
    assert wait_group_gone(proc.pids.pgid or 0) == []


async def test_sighup_to_the_supervisor_is_ignored(launch: Launcher) -> None:
    proc = launch(["bash", "-c", "sleep 0.5; echo still here"])
    os.kill(proc.pids.supervisor, signal.SIGHUP)
    result = await proc.wait()
    assert result is not None and result.ok
    assert texts(read_output(proc.step_dir)) == ["still here"]


FRONT_END = textwrap.dedent("""
    import os, sys, time
    from pathlib import Path
    from runbook.executor import StepLaunch, StepProcess
    launch = StepLaunch(argv=["bash", "-c", "sleep 2; echo done"], env={"PATH": os.environ["PATH"]})
    StepProcess.launch(Path(sys.argv[1]), launch)
    print("launched", flush=True)
    if sys.argv[2] == "exit":
        os._exit(9)
    time.sleep(60)
""")


@pytest.mark.parametrize("death", ["exit", "sigkill"])
async def test_the_step_outlives_its_front_end(tmp_path: Path, death: str) -> None:
    script = tmp_path / "front_end.py"
    script.write_text(FRONT_END)
    step_dir = tmp_path / "step"
    front = subprocess.Popen([sys.executable, str(script), str(step_dir), death], cwd=ROOT,
                             stdout=subprocess.PIPE, text=True)
    try:
        assert front.stdout is not None and front.stdout.readline() == "launched\n"
        if death == "sigkill":
            front.kill()
        assert front.wait(timeout=10) == (9 if death == "exit" else -signal.SIGKILL)

        proc = StepProcess.attach(step_dir)
        assert proc.state() == "running"
        batches, _ = await collect(proc)
        assert proc.state() == "finished"
        assert texts([ln for b in batches for ln in b]) == ["done"]
        result = proc.result
        assert result is not None and result.exit_code == 0 and result.ok
    finally:
        if front.poll() is None:
            front.kill()
            front.wait()
        StepProcess.attach(step_dir).kill_session()


async def test_a_killed_session_is_lost(launch: Launcher) -> None:
    proc = launch(["bash", "-c", "sleep 300"])
    attached = StepProcess.attach(proc.step_dir)
    assert attached.state() == "running"
    proc.kill_session()
    assert wait_group_gone(proc.pids.pgid or 0) == []
    assert attached.state() == "lost"
    assert attached.result is None
    assert await attached.wait() is None
    batches, _ = await collect(attached)
    assert batches == []


async def test_cancel_without_a_supervisor_terminates_the_group_directly(launch: Launcher) -> None:
    proc = launch(["bash", "-c", "sleep 300 & sleep 300; wait"])
    pgid = proc.pids.pgid or 0
    assert wait_for(lambda: len(group_members(pgid)) == 3)
    os.kill(proc.pids.supervisor, signal.SIGKILL)
    assert wait_for(lambda: proc.state() == "lost")
    assert len(group_members(pgid)) == 3  # the step itself still runs, unrecorded
    proc.cancel()
    assert wait_group_gone(pgid) == []
    assert proc.result is None


def grep_step_dir(step_dir: Path, needle: str) -> list[str]:
    return [p.name for p in step_dir.iterdir() if p.is_file() and needle.encode() in p.read_bytes()]


@pytest.mark.parametrize("script", [
    "printf 'pw: hunter' >&2; printf '2pass\\n' >&2",
    "printf 'pw: hunter' >&2; sleep 0.5; printf '2pass' >&2",
    "printf 'pw: hunter'; sleep 0.5; printf '2pass and more\\n'",
    "printf 'pw: %s\\n' \"$PGPASSWORD\"",
], ids=["stderr-same-read", "stderr-across-pause", "stdout-across-pause", "from-env"])
async def test_a_secret_split_across_reads_appears_nowhere(launch: Launcher, script: str) -> None:
    proc = launch(["bash", "-c", script], redact=[SECRET], env={"PGPASSWORD": SECRET})
    result = await proc.wait()
    assert result is not None and result.ok
    assert grep_step_dir(proc.step_dir, SECRET) == []
    assert grep_step_dir(proc.step_dir, MASK) == ["output.log"]
    # "pw: " may have been flushed on its own as a partial line while the secret's tail was awaited
    assert f"pw: {MASK}" in "".join(texts(read_output(proc.step_dir)))


async def test_secrets_are_neither_on_the_supervisor_command_line_nor_in_its_environment(
    launch: Launcher,
) -> None:
    proc = launch(["sleep", "1"], redact=[SECRET], env={"PGPASSWORD": SECRET})
    pid = proc.pids.supervisor
    for name in ("cmdline", "environ"):
        assert SECRET.encode() not in Path(f"/proc/{pid}/{name}").read_bytes()
    assert SECRET.encode() in Path(f"/proc/{proc.pids.child}/environ").read_bytes()
    await proc.wait()


ACTION = textwrap.dedent("""
    import json, sys
    from steps.events import Events
    args = json.load(sys.stdin)
    ev = Events()
    ev.progress(1, 2, "B", "half")
    print("plain output", flush=True)
    ev.output("backup_dir", args["dest"])
    ev.check("password", "ok", "hint with hunter2pass")
    ev._out.write("not json\\n")
    ev.close()
""")


async def test_action_events_reach_events_jsonl_and_follow(launch: Launcher) -> None:
    proc = launch([sys.executable, "-c", ACTION], env={"PYTHONPATH": str(ROOT)}, event_fd=True,
                  stdin_data=json.dumps({"dest": "/var/tmp/restore"}), redact=[SECRET])
    batches, events = await collect(proc)
    result = proc.result
    assert result is not None and result.ok, (result, read_output(proc.step_dir))
    assert events == [
        {"type": "progress", "done": 1, "total": 2, "unit": "B", "label": "half"},
        {"type": "output", "name": "backup_dir", "value": "/var/tmp/restore"},
        {"type": "check", "name": "password", "status": "ok", "hint": f"hint with {MASK}"},
    ]
    recorded = [json.loads(line) for line in (proc.step_dir / "events.jsonl").read_text().splitlines()]
    assert recorded == events
    lines = [ln for b in batches for ln in b]
    assert ("out", "plain output") in [(ln.stream, ln.text) for ln in lines]
    assert ("err", "not json") in [(ln.stream, ln.text) for ln in lines]
    assert grep_step_dir(proc.step_dir, SECRET) == []


async def test_a_daemon_holding_stdout_does_not_hang_the_step(launch: Launcher) -> None:
    t0 = time.monotonic()
    proc = launch(["bash", "-c", "sleep 30 & echo started"])
    result = await proc.wait()
    elapsed = time.monotonic() - t0
    assert result is not None and result.ok
    assert elapsed < 2.5
    assert texts(read_output(proc.step_dir)) == ["started"]
    assert group_members(proc.pids.pgid or 0) != []  # the daemon is left alone (the fixture kills it)


async def test_a_partial_line_is_flushed_before_its_newline(launch: Launcher) -> None:
    proc = launch(["bash", "-c", "printf 'progress 50%%'; sleep 0.6; printf '\\rprogress 100%%\\n'"])
    seen: list[Line] = []
    async for item in proc.follow():
        if isinstance(item, list):
            seen.extend(item)
            if seen and proc.state() == "running":
                assert seen[0] == Line(seen[0].ts, "out", "progress 50%", True)
    assert [(ln.text, ln.partial) for ln in seen] == [("progress 50%", True), ("progress 100%", False)]


async def test_stdin_is_dev_null_without_stdin_data(launch: Launcher) -> None:
    result = await launch(["cat"], timeout_s=5).wait()
    assert result is not None and result.ok


def proc_finished(proc: StepProcess) -> Callable[[], bool]:
    return lambda: proc.state() == "finished"


def test_launch_latency(tmp_path: Path) -> None:
    """Time from launch() to the child running (supervisor start-up included); printed, not asserted tightly."""
    times = []
    for i in range(5):
        t0 = time.monotonic()
        proc = StepProcess.launch(tmp_path / f"s{i}", StepLaunch(argv=["true"], env=BASE_ENV))
        times.append(time.monotonic() - t0)
        assert wait_for(proc_finished(proc))
    print(f"\nlaunch latency: min {min(times) * 1000:.1f} ms, max {max(times) * 1000:.1f} ms")
    assert min(times) < 1.0
