"""The step supervisor: runs ONE step command so that the step outlives the front end.

Started by `runbook.executor` as `<python> -m runbook.supervisor STEP_DIR` in a session of its own.
It reads its launch config as one JSON document on stdin, then closes stdin, so that secret values
are never on disk nor in its environment:

    {"argv": [...], "env": {...}, "cwd": str|null, "timeout_s": float|null, "kill_grace_s": float,
     "redact": [secret, ...], "stdin_data": str|null, "event_fd": bool}

The child runs in its own process group. The supervisor alone writes STEP_DIR (everything redacted):

- `supervisor.json`: pids, process group, start time and /proc start ticks (written once, atomically)
- `output.log`: `<ISO-8601 UTC ms> <S> <text>` per line; S is O/E (stdout/stderr, complete line) or
  o/e (a partial line flushed after 200 ms without newline, or a `\\r`-separated progress update)
- `events.jsonl`: the action's JSON events from `$RUNBOOK_EVENT_FD`, one per line
- `result.json`: exit code or signal, timed_out, cancelled, times, error (atomically, fsynced, last)

Timeouts and cancel (SIGTERM/SIGINT to the supervisor) terminate the child's whole process group:
SIGTERM, then SIGKILL after the grace period. SIGHUP is ignored: the terminal died, the step goes on.
Start-up must stay light: stdlib and `runbook.redact` only.

Why one module of ~540 lines: it is started once per step with `python -S -P`, and everything it needs is
here on purpose (one file read, no package machinery, nothing a later refactor could make it import).
"""

from __future__ import annotations

import codecs
import contextlib
import json
import os
import selectors
import signal
import subprocess
import sys
import time
import traceback
from datetime import UTC, datetime
from typing import Any

from runbook.redact import Redactor, StreamRedactor

PARTIAL_AFTER_S = 0.2
DRAIN_AFTER_EXIT_S = 1.0
TICK_S = 0.05
READ_SIZE = 1 << 16

SUPERVISOR_FILE = "supervisor.json"
OUTPUT_FILE = "output.log"
EVENTS_FILE = "events.jsonl"
RESULT_FILE = "result.json"


def utc_now() -> str:
    """ISO 8601 UTC with milliseconds, e.g. `2024-05-01T02:03:04.567Z`."""
    return datetime.now(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def _stat_fields(pid: int | str) -> list[bytes] | None:
    """The fields of /proc/PID/stat after `(comm)`: [state, ppid, pgrp, ...]; None if gone."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            stat = f.read()
    except OSError:
        return None
    return stat[stat.rfind(b")") + 2:].split()


def start_ticks(pid: int) -> int | None:
    """Field 22 of /proc/PID/stat (start time in clock ticks); None if gone or a zombie."""
    fields = _stat_fields(pid)
    if not fields or fields[0] in (b"Z", b"X"):
        return None
    return int(fields[19])


def group_members(pgid: int) -> list[int]:
    """Live (non-zombie) processes in process group `pgid`."""
    members: list[int] = []
    want = str(pgid).encode()
    for name in os.listdir("/proc"):
        if name.isdigit():
            fields = _stat_fields(name)
            if fields and fields[2] == want and fields[0] not in (b"Z", b"X"):
                members.append(int(name))
    return members


def write_json_atomic(path: str, data: dict[str, Any], *, durable: bool) -> None:
    """Write JSON to `path` via tmp + rename; with `durable`, fsync the file and its directory."""
    tmp = f"{path}.tmp"
    with open(tmp, "w", encoding="utf-8") as f:
        json.dump(data, f, indent=1)
        f.write("\n")
        if durable:
            f.flush()
            os.fsync(f.fileno())
    os.replace(tmp, path)
    if durable:
        dfd = os.open(os.path.dirname(path) or ".", os.O_RDONLY)
        try:
            os.fsync(dfd)
        finally:
            os.close(dfd)


class OutputStream:
    """One of the child's output pipes: decode, redact, split into log records."""

    def __init__(self, full_tag: str, partial_tag: str, redactor: Redactor) -> None:
        self.full_tag = full_tag
        self.partial_tag = partial_tag
        self._decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
        self._redactor = StreamRedactor(redactor)
        self._pending = ""
        self._pending_since: float | None = None

    def feed(self, data: bytes, now: float) -> list[tuple[str, str]]:
        return self._split(self._redactor.feed(self._decoder.decode(data)), now)

    def partial_deadline(self) -> float | None:
        """When the pending text without newline is due as a partial record (None: nothing pending)."""
        return None if self._pending_since is None else self._pending_since + PARTIAL_AFTER_S

    def due(self, now: float) -> bool:
        deadline = self.partial_deadline()
        return deadline is not None and now >= deadline

    def flush_partial(self) -> list[tuple[str, str]]:
        """The pending text without newline, as partial records."""
        pending, self._pending, self._pending_since = self._pending, "", None
        return [(self.partial_tag, seg) for seg in pending.split("\r") if seg]

    def close(self) -> list[tuple[str, str]]:
        """End of stream: everything held back, the last line as a complete record."""
        text = self._redactor.feed(self._decoder.decode(b"", final=True)) + self._redactor.flush()
        records = self._split(text, 0.0)
        if self._pending:
            records.extend(self._line(self._pending))
        self._pending, self._pending_since = "", None
        return records

    def _split(self, text: str, now: float) -> list[tuple[str, str]]:
        if not text:
            return []
        lines = (self._pending + text).split("\n")
        self._pending = lines.pop()
        records: list[tuple[str, str]] = []
        for line in lines:
            records.extend(self._line(line))
        if not self._pending:
            self._pending_since = None
        elif lines or self._pending_since is None:
            self._pending_since = now
        return records

    def _line(self, line: str) -> list[tuple[str, str]]:
        if "\r" not in line:
            return [(self.full_tag, line)]
        segs = line.rstrip("\r").split("\r")
        out = [(self.partial_tag, seg) for seg in segs[:-1] if seg]
        out.append((self.full_tag, segs[-1]))
        return out


_EVENT_NAMES = frozenset({"type", "name"})  # an action event's kind and its output's or check's name: not masked


class EventStream:
    """The action's event pipe: JSON lines, each redacted; a bad line becomes an 'E' output record."""

    def __init__(self, redactor: Redactor) -> None:
        self._redactor = redactor
        self._decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
        self._pending = ""

    def feed(self, data: bytes, final: bool = False) -> tuple[list[str], list[tuple[str, str]]]:
        lines = (self._pending + self._decoder.decode(data, final=final)).split("\n")
        self._pending = "" if final else lines.pop()
        events: list[str] = []
        bad: list[tuple[str, str]] = []
        for line in lines:
            if not line.strip():
                continue
            try:
                obj = json.loads(line)
            except ValueError:
                bad.append(("E", self._redactor.redact(line)))
                continue
            events.append(json.dumps(self._redactor.redact_obj(obj, keep=_EVENT_NAMES), ensure_ascii=True))
        return events, bad


class Supervisor:
    """Runs the child, pumps its pipes into STEP_DIR, enforces timeout and cancel, records the result."""

    def __init__(self, step_dir: str, config: dict[str, Any]) -> None:
        self.step_dir = step_dir
        self.argv: list[str] = [str(a) for a in config.get("argv") or []]
        self.env: dict[str, str] = {str(k): str(v) for k, v in (config.get("env") or {}).items()}
        self.cwd: str | None = config.get("cwd")
        self.timeout_s: float | None = config.get("timeout_s")
        self.kill_grace_s = float(config.get("kill_grace_s", 10.0))
        self.redactor = Redactor(config.get("redact") or [])
        self.stdin_data: str | None = config.get("stdin_data")
        self.event_fd = bool(config.get("event_fd"))

        self.sel = selectors.DefaultSelector()
        self.proc: subprocess.Popen[bytes] | None = None
        self.cancel_requested = False
        self.cancelled = False
        self.timed_out = False
        self.kill_deadline: float | None = None
        self.kill_done = False
        self.returncode: int | None = None
        self.drain_deadline: float | None = None
        self.error: str | None = None
        self.started_at = utc_now()
        self.t0 = time.monotonic()
        self.streams: dict[int, OutputStream | EventStream] = {}
        self.closers: dict[int, Any] = {}
        self.stdin_buf = b""
        self.log_error: str | None = None
        self.out_fd = os.open(self._path(OUTPUT_FILE), os.O_WRONLY | os.O_CREAT | os.O_APPEND | os.O_CLOEXEC, 0o600)
        self.events_fd = os.open(self._path(EVENTS_FILE), os.O_WRONLY | os.O_CREAT | os.O_APPEND | os.O_CLOEXEC, 0o600)

    def _path(self, name: str) -> str:
        return os.path.join(self.step_dir, name)

    # -- signals -------------------------------------------------------------------------------

    def install_signals(self) -> None:
        rfd, wfd = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
        signal.set_wakeup_fd(wfd, warn_on_full_buffer=False)
        self.sel.register(rfd, selectors.EVENT_READ, "wakeup")
        signal.signal(signal.SIGTERM, self._on_cancel)
        signal.signal(signal.SIGINT, self._on_cancel)
        # A handler, not SIG_IGN: an ignored disposition would be inherited by the child across exec.
        signal.signal(signal.SIGHUP, lambda signum, frame: None)
        signal.signal(signal.SIGCHLD, lambda signum, frame: None)

    def _on_cancel(self, signum: int, frame: object) -> None:
        self.cancel_requested = True

    # -- start ---------------------------------------------------------------------------------

    def start(self) -> bool:
        """Start the child; on failure record the error (exit 127) and return False."""
        if not self.argv:
            self.error = "empty command"
            return False
        env = dict(self.env)
        pass_fds: tuple[int, ...] = ()
        ev_r = ev_w = -1
        if self.event_fd:
            ev_r, ev_w = os.pipe2(os.O_CLOEXEC)
            env["RUNBOOK_EVENT_FD"] = str(ev_w)
            pass_fds = (ev_w,)
        try:
            self.proc = subprocess.Popen(
                self.argv, env=env, cwd=self.cwd,
                stdin=subprocess.PIPE if self.stdin_data is not None else subprocess.DEVNULL,
                stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                pass_fds=pass_fds, process_group=0, close_fds=True,
            )
        except OSError as e:
            self.error = self.redactor.redact(f"{e.strerror or e}: {e.filename or self.argv[0]}")
            for fd in (ev_r, ev_w):
                if fd >= 0:
                    os.close(fd)
            return False
        if ev_w >= 0:
            os.close(ev_w)
        self._register_pipes(ev_r)
        return True

    def _register_pipes(self, ev_r: int) -> None:
        assert self.proc is not None and self.proc.stdout and self.proc.stderr
        pipes: list[tuple[int, OutputStream | EventStream, Any]] = [
            (self.proc.stdout.fileno(), OutputStream("O", "o", self.redactor), self.proc.stdout.close),
            (self.proc.stderr.fileno(), OutputStream("E", "e", self.redactor), self.proc.stderr.close),
        ]
        if ev_r >= 0:
            pipes.append((ev_r, EventStream(self.redactor), lambda: os.close(ev_r)))
        for fd, stream, closer in pipes:
            os.set_blocking(fd, False)
            self.streams[fd] = stream
            self.closers[fd] = closer
            self.sel.register(fd, selectors.EVENT_READ, "pipe")
        if self.proc.stdin is not None:
            self.stdin_buf = (self.stdin_data or "").encode()
            os.set_blocking(self.proc.stdin.fileno(), False)
            self.sel.register(self.proc.stdin.fileno(), selectors.EVENT_WRITE, "stdin")

    def write_supervisor_file(self) -> None:
        pid = self.proc.pid if self.proc else None
        write_json_atomic(self._path(SUPERVISOR_FILE), {
            "supervisor_pid": os.getpid(),
            "child_pid": pid,
            "pgid": pid,
            "started_at": self.started_at,
            "supervisor_start_ticks": start_ticks(os.getpid()),
            "child_start_ticks": start_ticks(pid) if pid else None,
        }, durable=False)

    # -- main loop -----------------------------------------------------------------------------

    def run(self) -> None:
        while True:
            now = time.monotonic()
            self._check_exit()
            self._check_kill(now)
            if self.returncode is not None and self.drain_deadline is None and self._kill_over():
                self.drain_deadline = now + DRAIN_AFTER_EXIT_S
            if self.drain_deadline is not None and now >= self.drain_deadline:
                self._close_all_streams()
            if self.returncode is not None and not self.streams and self._kill_over():
                return
            self._pump(self.sel.select(self._select_timeout(now)))

    def _kill_over(self) -> bool:
        """No termination in progress (none started, or the group is gone or got its SIGKILL)."""
        return self.kill_deadline is None or self.kill_done

    def _select_timeout(self, now: float) -> float:
        deadlines = [now + TICK_S]
        for s in self.streams.values():
            deadline = s.partial_deadline() if isinstance(s, OutputStream) else None
            if deadline is not None:
                deadlines.append(deadline)
        return max(0.0, min(deadlines) - now)

    def _pump(self, ready: list[tuple[selectors.SelectorKey, int]]) -> None:
        now = time.monotonic()
        records: list[tuple[str, str]] = []
        events: list[str] = []
        for key, _mask in ready:
            if key.data == "wakeup":
                self._drain_wakeup(key.fd)
            elif key.data == "stdin":
                self._write_stdin()
            else:
                self._read(key.fd, now, records, events)
        for s in self.streams.values():
            if isinstance(s, OutputStream) and s.due(now):
                records.extend(s.flush_partial())
        self._write(records, events)

    def _drain_wakeup(self, fd: int) -> None:
        try:
            while os.read(fd, 512):
                pass
        except BlockingIOError:
            pass

    def _write_stdin(self) -> None:
        assert self.proc is not None and self.proc.stdin is not None
        fd = self.proc.stdin.fileno()
        try:
            n = os.write(fd, self.stdin_buf[:READ_SIZE]) if self.stdin_buf else 0
            self.stdin_buf = self.stdin_buf[n:]
        except BlockingIOError:
            return
        except OSError:  # the child closed its stdin or exited
            self.stdin_buf = b""
        if not self.stdin_buf:
            self.sel.unregister(fd)
            self.proc.stdin.close()

    def _read(self, fd: int, now: float, records: list[tuple[str, str]], events: list[str]) -> None:
        stream = self.streams[fd]
        try:
            data = os.read(fd, READ_SIZE)
        except BlockingIOError:
            return
        except OSError:
            data = b""
        if isinstance(stream, EventStream):
            ev, bad = stream.feed(data, final=not data)
            events.extend(ev)
            records.extend(bad)
        elif data:
            records.extend(stream.feed(data, now))
        else:
            records.extend(stream.close())
        if not data:
            self._unregister(fd)

    def _unregister(self, fd: int) -> None:
        self.sel.unregister(fd)
        del self.streams[fd]
        self.closers.pop(fd)()

    def _close_all_streams(self) -> None:
        """Stop reading (a daemon started by the step holds a pipe open): flush what is held."""
        records: list[tuple[str, str]] = []
        events: list[str] = []
        for fd, stream in list(self.streams.items()):
            if isinstance(stream, EventStream):
                ev, bad = stream.feed(b"", final=True)
                events.extend(ev)
                records.extend(bad)
            else:
                records.extend(stream.close())
            self._unregister(fd)
        self._write(records, events)

    def _write(self, records: list[tuple[str, str]], events: list[str]) -> None:
        if records:
            ts = utc_now()
            self._append(self.out_fd, "".join(f"{ts} {tag} {text}\n" for tag, text in records))
        if events:
            self._append(self.events_fd, "".join(e + "\n" for e in events))

    def _append(self, fd: int, text: str) -> None:
        """Append to a log; a failing disk loses log lines but never stops the step."""
        data = memoryview(text.encode("utf-8", errors="replace"))
        try:
            while data:
                data = data[os.write(fd, data):]
        except OSError as e:
            if self.log_error is None:
                self.log_error = f"step log incomplete: {e.strerror or e}"
                sys.stderr.write(self.log_error + "\n")
                sys.stderr.flush()

    # -- exit, timeout, cancel -----------------------------------------------------------------

    def _check_exit(self) -> None:
        if self.proc is not None and self.returncode is None:
            self.returncode = self.proc.poll()

    def _check_kill(self, now: float) -> None:
        if self.proc is None:
            return
        if self.kill_deadline is None:
            if self.cancel_requested and self.returncode is None:
                self.cancelled = True
                self._terminate(now)
            elif (self.timeout_s is not None and self.returncode is None
                    and now - self.t0 >= self.timeout_s):
                self.timed_out = True
                self._terminate(now)
            return
        if self.kill_done:
            return
        if self.returncode is not None and not self._group_alive():
            self.kill_done = True  # the whole group ended within the grace period
        elif now >= self.kill_deadline:
            self._killpg(signal.SIGKILL)
            self.kill_done = True

    def _terminate(self, now: float) -> None:
        self._killpg(signal.SIGTERM)
        self.kill_deadline = now + self.kill_grace_s

    def _killpg(self, sig: int) -> None:
        assert self.proc is not None
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.proc.pid, sig)

    def _group_alive(self) -> bool:
        assert self.proc is not None
        return bool(group_members(self.proc.pid))

    # -- result --------------------------------------------------------------------------------

    def write_result(self) -> None:
        rc = self.returncode
        exit_code: int | None
        sig: int | None = None
        if self.proc is None:
            exit_code = 127
        elif rc is None:
            exit_code = None
        elif rc < 0:
            exit_code, sig = None, -rc
        else:
            exit_code = rc
        write_json_atomic(self._path(RESULT_FILE), {
            "exit_code": exit_code,
            "signal": sig,
            "timed_out": self.timed_out,
            "cancelled": self.cancelled,
            "started_at": self.started_at,
            "ended_at": utc_now(),
            "duration_s": round(time.monotonic() - self.t0, 3),
            "error": self.error,
            "timeout_s": self.timeout_s,
            "log_error": self.log_error,
        }, durable=True)

    def close_files(self) -> None:
        for fd in (self.out_fd, self.events_fd):
            with contextlib.suppress(OSError):
                os.close(fd)

    def abort(self, exc: BaseException) -> None:
        """The supervisor itself failed: stop the child (nobody would record it) and record the error."""
        if self.proc is not None and self.returncode is None:
            self._killpg(signal.SIGTERM)
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.returncode = self.proc.wait(timeout=self.kill_grace_s)
            self._killpg(signal.SIGKILL)
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.returncode = self.proc.wait(timeout=5)
        self.error = self.redactor.redact(f"supervisor error: {type(exc).__name__}: {exc}")


def read_config() -> dict[str, Any]:
    """The launch config from stdin; stdin is then replaced by /dev/null."""
    raw = sys.stdin.buffer.read()
    null = os.open(os.devnull, os.O_RDONLY)
    os.dup2(null, 0)
    os.close(null)
    config = json.loads(raw)
    if not isinstance(config, dict):
        raise ValueError("launch config must be a JSON object")
    return config


def main(argv: list[str]) -> int:
    if len(argv) != 2:
        print("usage: python -m runbook.supervisor STEP_DIR  (launch config as JSON on stdin)", file=sys.stderr)
        return 2
    step_dir = argv[1]
    os.makedirs(step_dir, exist_ok=True)
    sup = Supervisor(step_dir, read_config())
    try:
        sup.install_signals()
        sup.start()
        sup.write_supervisor_file()
        if sup.proc is not None:
            sup.run()
    except BaseException as exc:
        sys.stderr.write(sup.redactor.redact(traceback.format_exc()))
        sup.abort(exc)
    sup.close_files()
    sup.write_result()
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv))
