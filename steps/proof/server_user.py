"""`runbook check`: can the server's user run the server's archive and restore commands?

PostgreSQL runs `archive_command` and `restore_command` as its own user (the owner of the data directory), from
the data directory, with its own PATH. A command that works for root can fail there with exit 126 (its
interpreter lies under root's 0700 home: a pyenv) or fail to read its repository config (0600 root). Each
command is looked at as that user: every file `exec` goes through (the command, the links it is, a script's
`#!` interpreter and the links that is) and every directory above them must be enterable, the repository config
it names readable; a `runbook` command is then run with `--version` (nothing else: read-only, bounded in time).
The first file that user cannot reach is named.

Root (or the server's user itself) can look; anyone else is told to run `check` as root. A server whose data
directory is not on this host is not looked at.
"""

from __future__ import annotations

import os
import pwd
import shlex
import shutil
import subprocess
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

Status = Literal["ok", "warning", "failed", "info"]
TIMEOUT_S = 10.0
MAX_LINKS = 16  # symlinks and #! interpreters followed, at most


@dataclass(frozen=True)
class Finding:
    status: Status
    detail: str
    hint: str | None = None


def server_user(data_directory: str | None) -> str | None:
    """The server's OS user: the owner of its data directory, when that is on this host."""
    if not data_directory:
        return None
    try:
        return pwd.getpwuid(os.stat(data_directory).st_uid).pw_name
    except (OSError, KeyError):
        return None


def exec_chain(path: Path) -> list[Path]:
    """The files exec goes through to run `path`: the path, each link's target, a script's `#!` interpreter
    (and its links, and so on), in order, each once; read as we can (root reads all)."""
    out: list[Path] = []
    todo = [path]
    while todo and len(out) < MAX_LINKS:
        p = todo.pop(0)
        if p in out:
            continue
        out.append(p)
        try:
            if p.is_symlink():
                target = Path(os.readlink(p))
                todo.insert(0, target if target.is_absolute() else p.parent / target)
                continue
            with open(p, "rb") as f:
                head = f.read(256)
        except OSError:
            continue
        if head.startswith(b"#!"):
            words = head[2:].split(b"\n", 1)[0].decode(errors="replace").split()
            if words and words[0].startswith("/"):
                todo.insert(0, Path(words[0]))
    return out


def _config_of(words: list[str]) -> str | None:
    for i, w in enumerate(words):
        if w in ("-c", "--config") and i + 1 < len(words):
            return words[i + 1]
        if w.startswith("--config="):
            return w.split("=", 1)[1]
    return None


# As the server's user: for each "MODE PATH" argument, every directory above PATH must be enterable, and PATH
# itself executable (x) or readable (r); a link (l) is only walked to (its target comes next). Prints the first
# that is not as three lines, MODE, PATH and the file or directory in the way, and stops.
_WALK = r'''
for arg; do
  mode=${arg%% *}; path=${arg#* }; rest=${path#/}; d=
  while case $rest in */*) true;; *) false;; esac; do
    d=$d/${rest%%/*}; rest=${rest#*/}
    [ -x "$d" ] || { printf '%s\n%s\n%s\n' "$mode" "$path" "$d"; exit 0; }
  done
  case $mode in
    x) [ -x "$path" ] || { printf '%s\n%s\n%s\n' "$mode" "$path" "$path"; exit 0; } ;;
    r) [ -r "$path" ] || { printf '%s\n%s\n%s\n' "$mode" "$path" "$path"; exit 0; } ;;
  esac
done
'''


class AsUser:
    """Runs argv as `user`: through runuser when we are root, directly when we are that user."""

    def __init__(self, user: str) -> None:
        self.user = user
        self.runuser = shutil.which("runuser") or shutil.which("runuser", path="/usr/sbin:/sbin")

    def can(self) -> str | None:
        """None when we can run as the user, else why not."""
        try:
            uid = pwd.getpwnam(self.user).pw_uid
        except KeyError:
            return f"there is no user {self.user} on this host"
        if os.geteuid() == uid:
            return None
        if os.geteuid() != 0:
            return f"check runs as {pwd.getpwuid(os.geteuid()).pw_name}, neither root nor {self.user}"
        if self.runuser is None:
            return "runuser (util-linux) is not installed"
        return None

    def run(self, argv: list[str], timeout: float = TIMEOUT_S) -> subprocess.CompletedProcess[str]:
        full = argv if os.geteuid() != 0 else [str(self.runuser), "-u", self.user, "--", *argv]
        return subprocess.run(full, cwd="/", capture_output=True, text=True, timeout=timeout,
                              stdin=subprocess.DEVNULL)


def probe_command(setting: str, command: str, user: str, default_config: Path,
                  timeout: float = TIMEOUT_S, identities: Callable[[str], list[str]] | None = None) -> Finding:
    """Can `user` run `command` (the value of `setting`)? Names the first file it cannot reach.
    `identities(config)`: the age identity files (encryption.identity_files) a `wal-fetch` with that config
    reads: each must be readable by `user`, and private to it (0600, its own) as wal-fetch requires."""
    who = AsUser(user)
    why_not = who.can()
    if why_not is not None:
        return Finding("info", f"{setting} not run as {user}: {why_not}",
                       f"run `runbook check` as root to run it as {user}, as PostgreSQL does")
    try:
        words = shlex.split(command)
    except ValueError as e:
        return Finding("warning", f"{setting} cannot be read as shell words ({e}): not run as {user}")
    if not words:
        return Finding("info", f"{setting} is empty")
    exe = words[0]
    is_runbook = any(w in ("wal-push", "wal-fetch") for w in words[1:])
    if not exe.startswith("/"):
        return Finding("warning" if is_runbook else "info", f"{setting} starts with {exe!r}, not an absolute path: PostgreSQL looks it up "
                       f"in the server's PATH, not yours", f"write the absolute path, e.g. "
                       f"/opt/runbook/venv/bin/runbook, in {setting}")
    wanted = [f"{'l' if p.is_symlink() else 'x'} {p}" for p in exec_chain(Path(exe))]
    config = _config_of(words) if is_runbook else None
    keys: list[str] = []
    if is_runbook:
        wanted.append(f"r {config or default_config}")
        if identities is not None and "wal-fetch" in words[1:]:
            keys = identities(config or str(default_config))
            wanted += [f"r {k}" for k in keys]
    try:
        walk = who.run(["/bin/sh", "-c", _WALK, "sh", *wanted], timeout=timeout)
    except subprocess.TimeoutExpired:
        return Finding("warning", f"looking at {setting}'s files as {user} took over {timeout:g} s")
    if walk.returncode != 0:
        return Finding("warning", f"cannot look at {setting}'s files as {user}: {walk.stderr.strip()[-300:]}")
    denied = walk.stdout.split("\n")
    if len(denied) >= 3 and denied[0] in ("x", "l", "r"):
        mode, path, blocker = denied[0], denied[1], denied[2]
        what = "read" if mode == "r" else "execute"
        role = ("its age identity (encryption.identity_files)" if mode == "r" and path in keys else
                "its repository config" if mode == "r" else ("its interpreter" if path != exe else "it"))
        if not os.path.lexists(blocker):  # as we see it (root sees everything): missing, not closed
            why = f"{blocker} does not exist"
        else:
            why = "permission denied" + ("" if blocker == path else f" ({blocker} is closed to {user})")
        return Finding("failed", f"{user} cannot {what} {path}: {why}; {setting} = {command!r} fails for the "
                       f"server ({role})", _hint(mode, path, user, setting))
    if not is_runbook:
        return Finding("ok", f"{user} can execute {exe} ({setting} is not runbook's: not run)")
    refused = _private_to(keys, user)
    if refused:
        return Finding("failed", f"{refused}: wal-fetch refuses it, so {setting} = {command!r} cannot decrypt "
                       "the archived WAL", f"chown {user} and chmod 0600 each file of encryption.identity_files "
                                           "(docs/wal.md, \"Encrypted WAL\")")
    try:
        ran = who.run([exe, "--version"], timeout=timeout)
    except subprocess.TimeoutExpired:
        return Finding("failed", f"`{exe} --version` as {user} did not answer within {timeout:g} s")
    if ran.returncode != 0:
        last = (ran.stderr.strip() or ran.stdout.strip()).splitlines()[-1:] or ["no output"]
        return Finding("failed", f"`{exe} --version` as {user} exits {ran.returncode}: {last[0][:300]}",
                       f"run it as the server does: runuser -u {user} -- {exe} --version")
    return Finding("ok", f"{user} runs {exe} ({ran.stdout.strip()}) and reads {config or default_config}"
                   + (f" and its identity file(s) {', '.join(keys)}" if keys else ""))


def _private_to(paths: list[str], user: str) -> str | None:
    """Why one of these identity files would be refused by `user`'s wal-fetch (steps.crypto.age.load_identities:
    a regular file of that user or root, no group or other permission), or None."""
    import stat

    uid = pwd.getpwnam(user).pw_uid
    for p in paths:
        try:
            st = os.stat(p, follow_symlinks=False)
        except OSError as e:
            return f"the identity file {p} cannot be looked at: {e.strerror}"
        if not stat.S_ISREG(st.st_mode):
            return f"the identity file {p} is not a regular file"
        if st.st_mode & 0o077:
            return f"the identity file {p} has mode {stat.S_IMODE(st.st_mode):04o}: group or others may read it"
        if st.st_uid not in (uid, 0):
            return f"the identity file {p} belongs to uid {st.st_uid}, neither {user} nor root"
    return None


def _hint(mode: str, path: str, user: str, setting: str) -> str:
    if mode == "r":
        return (f"the repository config must be readable by {user}: chown root:{user} and chmod 0640 it, in a "
                f"directory {user} can enter")
    return (f"install runbook where {user} can run it, with an interpreter it can execute: python3 -m venv "
            f"/opt/runbook/venv (with /usr/bin/python3, not one under /root) && /opt/runbook/venv/bin/pip install "
            f"SOURCE_DIR, then point {setting} at /opt/runbook/venv/bin/runbook")
