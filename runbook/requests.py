"""Requests to a run's driver from other sessions: approvals (the two-person rule) and take-overs.

The driver's process is the only writer of the journal (DESIGN "One journal, one driver, many watchers"). Other
sessions only drop a small JSON file into `<run dir>/requests/`; the driver's process reads it, checks it, journals
what it decided and deletes the file.

- `requests/` is made by the driver with mode 1733 (like /tmp, without the right to list): any local user may
  create a file in it, none but the driver may list it, read another's request by a name it does not know, or
  remove or rename another's file (the sticky bit). The journal and the rest of the run directory stay the
  driver's own (0600 files).
- A request is trusted for nothing it says about its author: the author is the file's owner (`fstat().st_uid`
  of the descriptor read), never a name in its content. Files are opened with `O_NOFOLLOW | O_NONBLOCK` and must be
  regular, small and singly linked: a symbolic link, a FIFO, a hard link to someone else's file or a huge file
  is refused and removed, never followed or read to the end.
- An approval names the step, the nonce of the pending approval it answers (a fresh one each time the driver
  waits, so an old request cannot be replayed) and the hash of the command as the approver saw it. The command
  hashed is the rendered command with secrets masked: what the approver was shown, and no secret in any form.
- The pending approval (`approval-pending.json`, 0644) tells an approver what waits: run, step, masked command,
  hash, nonce and the driver's user. It is written by the driver only, and removed when the wait ends.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import pwd
import secrets
import stat
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from runbook.errors import RunbookError

REQUESTS = "requests"
PENDING = "approval-pending.json"
MAX_REQUEST_BYTES = 16 * 1024
MAX_PER_SCAN = 32
REQUESTS_MODE = 0o1733


def command_hash(run_id: str, step_id: str, shown: str | None, items: list[str] | None = None) -> str:
    """The hash an approval names: the run, the step and the command exactly as rendered for display."""
    body = json.dumps({"run": run_id, "step": step_id, "command": shown, "items": items}, sort_keys=True,
                      ensure_ascii=False)
    return hashlib.sha256(body.encode("utf-8")).hexdigest()


def user_name(uid: int) -> str:
    try:
        return pwd.getpwuid(uid).pw_name
    except KeyError:
        return str(uid)


def ensure_requests_dir(rdir: Path) -> Path:
    """Make (or check) `<run dir>/requests` as the driver: a real directory, ours, mode 1733."""
    path = rdir / REQUESTS
    with contextlib.suppress(FileExistsError):
        os.mkdir(path, 0o700)
    st = os.lstat(path)
    if not stat.S_ISDIR(st.st_mode) or st.st_uid != os.geteuid():
        raise RunbookError(f"{path} is not a directory of this user (someone put it there)",
                           hint="remove it; runbook makes it itself")
    os.chmod(path, REQUESTS_MODE)
    return path


@dataclass(frozen=True)
class Request:
    name: str  # the file's name in requests/
    uid: int  # the file's owner: the author
    body: dict[str, Any]

    @property
    def kind(self) -> str:
        return str(self.body.get("kind", ""))

    @property
    def user(self) -> str:
        return user_name(self.uid)


@dataclass(frozen=True)
class Rejected:
    name: str
    uid: int | None
    reason: str


def read_requests(rdir: Path) -> list[Request | Rejected]:
    """Every request waiting in `requests/` (oldest name first), each removed once read; unusable files as
    `Rejected` (removed too). Never follows a link, never blocks on a FIFO, never reads more than a little."""
    try:
        dfd = os.open(rdir / REQUESTS, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW)
    except OSError:
        return []
    out: list[Request | Rejected] = []
    try:
        for name in sorted(os.listdir(dfd))[:MAX_PER_SCAN]:
            out.append(_read_one(dfd, name))
            with contextlib.suppress(OSError):
                os.unlink(name, dir_fd=dfd)
    finally:
        os.close(dfd)
    return out


def _read_one(dfd: int, name: str) -> Request | Rejected:
    try:
        fd = os.open(name, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK, dir_fd=dfd)
    except OSError as e:
        return Rejected(name, None, f"cannot be opened as a plain file ({e.strerror})")
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            return Rejected(name, st.st_uid, "is not a regular file")
        if st.st_nlink != 1:
            return Rejected(name, st.st_uid, "has other names (a hard link to another file)")
        if st.st_size > MAX_REQUEST_BYTES:
            return Rejected(name, st.st_uid, f"is larger than {MAX_REQUEST_BYTES} bytes")
        raw = os.read(fd, MAX_REQUEST_BYTES + 1)
    finally:
        os.close(fd)
    try:
        body = json.loads(raw.decode("utf-8"))
    except (ValueError, UnicodeDecodeError):
        return Rejected(name, st.st_uid, "is not JSON")
    if not isinstance(body, dict):
        return Rejected(name, st.st_uid, "is not a JSON object")
    return Request(name, st.st_uid, body)


def write_request(rdir: Path, kind: str, body: dict[str, Any]) -> Path:
    """As another session: drop one request into the run's `requests/` (a new file, never an existing name)."""
    path = rdir / REQUESTS
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        raise RunbookError(f"run directory {rdir} has no requests/ (the run was started by a version without "
                           "approvals, or is not open)", hint="resume the run with this version first") from None
    if not stat.S_ISDIR(st.st_mode):
        raise RunbookError(f"{path} is not a directory", hint="this run directory was tampered with")
    name = f"{kind}-{secrets.token_hex(8)}.json"
    data = json.dumps({"kind": kind, **body}, ensure_ascii=False).encode("utf-8")
    try:
        fd = os.open(path / name, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o644)
    except PermissionError:
        raise RunbookError(f"cannot write into {path}: permission denied",
                           hint="the run's state directory must be reachable by this user (give its "
                                "--state-dir; its parents must be searchable)") from None
    try:
        os.write(fd, data)
        os.fsync(fd)
    finally:
        os.close(fd)
    return path / name


def write_pending(rdir: Path, body: dict[str, Any]) -> None:
    """The driver: say what waits for approval (0644: approvers of other users read it)."""
    tmp = rdir / f".{PENDING}.{secrets.token_hex(4)}"
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o644)
    try:
        os.write(fd, json.dumps(body, ensure_ascii=False, indent=2).encode("utf-8"))
        os.fchmod(fd, 0o644)
    finally:
        os.close(fd)
    os.replace(tmp, rdir / PENDING)


def clear_pending(rdir: Path) -> None:
    with contextlib.suppress(FileNotFoundError):
        os.unlink(rdir / PENDING)


def read_pending(rdir: Path) -> dict[str, Any] | None:
    """As an approver: what waits for approval in this run, if anything. Only a file of the run directory's
    owner counts (nobody else can write there; a planted link is not followed)."""
    try:
        fd = os.open(rdir / PENDING, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK)
    except FileNotFoundError:
        return None
    except OSError as e:
        raise RunbookError(f"cannot read {rdir / PENDING}: {e.strerror}") from None
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode) or st.st_uid != os.stat(rdir).st_uid:
            raise RunbookError(f"{rdir / PENDING} was not written by the run's driver", hint="do not approve; "
                               "tell the driver")
        raw = os.read(fd, MAX_REQUEST_BYTES * 4)
    finally:
        os.close(fd)
    try:
        body = json.loads(raw)
    except ValueError:
        return None  # being replaced right now
    return body if isinstance(body, dict) else None


def approver_refusal(pending: dict[str, Any], uid: int) -> str | None:
    """Why this user cannot approve what `pending` waits for (None: they may): the driver's own user cannot."""
    driver = pending.get("driver") or {}
    if isinstance(driver, dict) and driver.get("uid") == uid:
        return f"you ({user_name(uid)}) are the driver's own user: the driver cannot approve their own step"
    return None


def send_approval(rdir: Path, run_id: str, pending: dict[str, Any]) -> Path:
    """As an approver (`runbook approve`, or the watch cockpit's approve key): the approval of what `pending`
    shows, naming its step, nonce and the hash of the command as shown. The driver's process verifies it."""
    import socket
    from datetime import datetime

    return write_request(rdir, "approve", {"run_id": run_id, "step": pending.get("step"), "hash": pending.get("hash"),
                                           "nonce": pending.get("nonce"), "host": socket.gethostname(),
                                           "ts": datetime.now().astimezone().isoformat(timespec="seconds")})


def check_approval(req: Request, *, run_id: str, step_id: str | None, nonce: str | None, expected_hash: str | None,
                   driver_uid: int) -> str | None:
    """Why this approval is refused, or None when it is good."""
    b = req.body
    if req.uid == driver_uid:
        return f"the approver {req.user} is the driver's own user: another operator must approve"
    if b.get("run_id") != run_id:
        return f"it names run {b.get('run_id')!r}, not this run"
    if step_id is None or nonce is None:
        return f"no step waits for approval now (it names step {b.get('step')!r})"
    if b.get("step") != step_id:
        return f"it names step {b.get('step')!r}; step {step_id} waits for approval"
    if b.get("nonce") != nonce:
        return "it answers an earlier wait for approval, not this one (approve again)"
    if b.get("hash") != expected_hash:
        return "the step's command has changed since the approver saw it (approve again)"
    return None
