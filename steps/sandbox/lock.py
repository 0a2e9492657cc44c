"""The sandbox is one operator's: `runbook demo` (a build, and `--down`) holds its lock for the whole drill.

`SandboxLock` is a runbook.lockfile.LockFile on `<sandbox dir>.lock`, beside the directory (the file is never
removed, as every lock file; `--down` removes the directory, not the lock). Its record names the holder: user,
host, pid, since, the sandbox, and the drill's run id once the run is open. It refuses at once (no wait).
A holder that crashed or was killed holds nothing: the kernel releases an flock when its process ends.

`take` takes it and then asks, holding it, before anything is touched: a run of the runbook against the sandbox's
target whose run lock (runbook.lock) is held in this state directory, or whose recovery lock object in the
sandbox's repository (steps.repository.recovery_lock) names a live process, is refused as well (such a run
may have been started without `demo`, e.g. `runbook run --profile sandbox.profile.yaml`). `unfinished` finds
a run left open on this sandbox (its runner gone): rebuilding under it would have that run, once resumed,
restore another backup; the operator resumes it, or starts over with `--break-lock`.
"""

from __future__ import annotations

import socket
from pathlib import Path
from typing import Any

from runbook.errors import LockHeld
from runbook.lockfile import LockFile


def lock_path(base: Path) -> Path:
    """`<sandbox dir>.lock`, beside the sandbox directory (its real path: one lock however it is named)."""
    real = base.resolve()
    return real.parent / f"{real.name}.lock"


class SandboxLock(LockFile):
    """The lock of one sandbox directory, held by the `runbook demo` that builds, drills or removes it."""

    dir_mode = 0o755  # the sandbox's parent: the server's user traverses it when we are root

    def __init__(self, base: Path, *, action: str = "demo") -> None:
        super().__init__(lock_path(base))
        self.base = base
        self.action = action
        self.run_id: str | None = None

    def holder_record(self) -> dict[str, Any]:
        return {**super().holder_record(), "sandbox": str(self.base), "action": self.action, "run_id": self.run_id}

    def set_run(self, run_id: str) -> None:
        """The drill's run is open: name it in the record (the refusals of others show it)."""
        self.run_id = run_id
        if self.held:
            self.write(self.holder_record())

    def refusal(self, holder: dict[str, Any] | None, wait: float) -> LockHeld:
        who = describe(holder) if holder else "another process on this host (its record is being written)"
        run_id = holder.get("run_id") if holder else None
        return LockHeld(f"the sandbox {self.base} is in use: {who}", hint=what_to_do(run_id))

    def cannot_open(self, error: OSError) -> BaseException:
        from runbook.errors import RunbookError

        return RunbookError(f"cannot open the sandbox's lock {self.path}: {error.strerror}",
                            hint="choose a sandbox directory whose parent you can write: --dir DIR")


def describe(holder: dict[str, Any]) -> str:
    action = holder.get("action") or "demo"
    run = f", run {holder['run_id']}" if holder.get("run_id") else ""
    return (f"`runbook {action}` by {holder.get('user')}@{holder.get('host')} (pid {holder.get('pid')}{run}) "
            f"since {holder.get('since')}")


def what_to_do(run_id: str | None) -> str:
    resume = f"; if its runner is gone, `runbook resume {run_id}` finishes that run" if run_id else ""
    return ("wait until that drill ends" + resume + "; `runbook demo --down` removes the sandbox once it has "
            "ended. A holder that crashed lets go by itself (the kernel releases its lock); or use another "
            "sandbox: --dir DIR")


def sandbox_target(rb: Any, sb: Any) -> str:
    """The runbook's target as the sandbox's profile renders it (the run lock's and recovery lock's key)."""
    from runbook.session import render_target
    from steps.sandbox.build import DB

    params = {k: p.default for k, p in rb.params.items() if p.default is not None}
    params.update({"db_name": DB, "db_host": str(sb.server.socket_dir), "db_port": sb.server.port})
    return str(render_target(rb, params))


def take(lock: SandboxLock, sb: Any, rb: Any | None, state_dir: Path) -> None:
    """Take the sandbox's lock and check no run uses the sandbox (see `in_use`), or refuse, naming the holder:
    the lock's (with its drill's run from the run lock when its record does not name one yet, as a TUI
    drill's does not) or the run's."""
    if not lock.try_acquire():
        run = None if (lock.seen or {}).get("run_id") else running(sb, rb, state_dir)
        if run is None:
            raise lock.refusal(lock.seen, 0)
        if not lock.seen:  # its holder is writing its record: the run names it
            raise in_use(sb, *run)
        raise lock.refusal({**lock.seen, "run_id": run[0].get("run_id")}, 0)
    try:
        if (run := running(sb, rb, state_dir)) is not None:
            raise in_use(sb, *run)
    except BaseException:
        lock.release()
        raise


def running(sb: Any, rb: Any | None, state_dir: Path) -> tuple[dict[str, Any], str] | None:
    """A run using the sandbox right now, and how we know: its run lock held in this state directory, or its
    recovery lock object in the sandbox's repository naming a live process of this host. `rb` None (no
    runbook at hand): none is looked for."""
    from runbook.lock import RunLock, lock_name, pid_alive

    if rb is None:
        return None
    target = sandbox_target(rb, sb)
    path = state_dir / "locks" / lock_name(rb.name, target)
    if RunLock.is_held(path):
        return RunLock.read_holder(path) or {}, "its run lock is held"
    other = _repository_holder(sb, target)
    if other and other.get("host") == socket.gethostname() and isinstance(other.get("pid"), int) \
            and pid_alive(other["pid"]):
        return other, "its recovery lock in the sandbox's repository names a live process"
    return None


def in_use(sb: Any, holder: dict[str, Any], why: str) -> LockHeld:
    run_id = holder.get("run_id")
    return LockHeld(
        f"the sandbox {sb.base} is in use: run {run_id} by {holder.get('user')}@{holder.get('host')} "
        f"(pid {holder.get('pid')}) since {holder.get('since')} ({why})",
        hint=what_to_do(run_id if isinstance(run_id, str) else None))


def unfinished(sb: Any, rb: Any, state_dir: Path) -> LockHeld | None:
    """A run of this sandbox left open (not held: its runner is gone), as the refusal to give; None if none."""
    from runbook.errors import RunbookError
    from runbook.lock import RunLock, lock_name
    from runbook.state import CLOSED, load_state

    def closed(run_id: str) -> bool:
        try:
            return load_state(state_dir, run_id).status in CLOSED
        except RunbookError:
            return False

    target = sandbox_target(rb, sb)
    for holder in (RunLock.read_holder(state_dir / "locks" / lock_name(rb.name, target)),
                   _repository_holder(sb, target)):
        run_id = (holder or {}).get("run_id")
        if holder is not None and isinstance(run_id, str) and run_id and not closed(run_id):
            return LockHeld(
                f"the sandbox {sb.base} belongs to an unfinished run: run {run_id} by {holder.get('user')}@"
                f"{holder.get('host')} (pid {holder.get('pid')}, gone) since {holder.get('since')}; rebuilding "
                "now would have that run restore another backup",
                hint=f"finish it with `runbook resume {run_id}`, or start a new drill over it with "
                     "`runbook demo --break-lock` (journaled)")
    return None


def _repository_holder(sb: Any, target: str) -> dict[str, Any] | None:
    import json

    from steps.repository.recovery_lock import lock_key, normalised_address

    try:
        value = json.loads((sb.repo / lock_key(normalised_address(target))).read_text())
    except (OSError, ValueError):
        return None
    return value if isinstance(value, dict) else None

