"""The recovery lock across hosts: `locks/<key>.json` in the backup repository, keyed on the server.

The key is the target (`host:port/database`) with its host spelt one way (`normalised_address`: a socket
directory, localhost and 127.0.0.1 are this host), and, when the server answers, also its identity (the
system identifier from `pg_control_system()`): two spellings of one server's address are one lock. The address
key is always taken (the same at start and on resume, whether the server answers or not).

The local run lock (runbook.lock, an flock in the state directory) stops two runs on one host. Two operators
on two hosts share only the repository, so a live or drill run also takes a lock object there, naming its
holder (user, host, run id, pid, since, target, runbook). In every configured repository:
- **local**: the object is created with `O_CREAT | O_EXCL` (exactly one creator wins), then written and
  fsynced; a reader that finds it empty retries for a moment (a creator between create and write);
- **S3**: look first (GET), then `PutObject` with `IfNoneMatch='*'` (412: someone else won), then **read
  back** after a pause and compare the nonce: some S3-compatible stores accept and ignore conditional
  writes, and then the last writer wins; the reader that finds another's nonce backs off.

A lock object naming the same run id is ours (a resume keeps it). Another holder is refused with its facts;
`--break-lock` (typed confirmation, journaled) replaces it. The object is removed when the run closes, only
if it is still ours. boto3 is imported only when S3 is configured (steps.repository.s3).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import re
import secrets
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from runbook.errors import LockHeld, RunbookError
from steps.repository.store import make_dirs

READ_BACK_DELAY_S = 0.3


def lock_key(target: str) -> str:
    """`locks/<slug of the target>-<digest>.json`: readable, and distinct for targets the slug folds together."""
    slug = re.sub(r"[^a-zA-Z0-9]+", "-", target).strip("-")[:60] or "default"
    digest = hashlib.sha256(target.encode()).hexdigest()[:12]
    return f"locks/{slug}-{digest}.json"


_LOCAL_NAMES = frozenset({"", "localhost", "localhost.localdomain", "ip6-localhost", "::1", "[::1]"})


def split_target(target: str) -> tuple[str, int, str] | None:
    """`HOST:PORT/DB` (HOST a host name, an address, `[v6]`, or a socket directory) as (host, port, db);
    None for a target of another shape (then it is its own key)."""
    left, slash, db = target.rpartition("/")
    host, colon, port = left.rpartition(":")
    if not (slash and colon and db and port.isdigit() and 0 < int(port) < 65536):
        return None
    if host.startswith("/") and not host.rstrip("/"):
        return None
    return host, int(port), db


def normalised_address(target: str) -> str:
    """The target with its host spelt one way: every spelling of this host (a socket directory, localhost,
    127.x, ::1, this host's name) is `local`, so that `/var/run/postgresql:5432/app` and `127.0.0.1:5432/app`
    are one lock even when the server does not answer. Two servers on this host with one port in different
    socket directories share that key: a refusal too many, never one too few."""
    parts = split_target(target)
    if parts is None:
        return target
    host, port, db = parts
    h = host.lower()
    import socket

    names = {socket.gethostname().lower()}
    with contextlib.suppress(OSError):
        names.add(socket.getfqdn().lower())
    if h.startswith("/") or h in _LOCAL_NAMES or h.startswith("127.") or h in names:
        h = "local"
    return f"{h}:{port}/{db}"


def server_identity(target: str, timeout: int = 3) -> str | None:
    """The system identifier of the server the target names, when it answers (libpq's defaults for the user
    and password, as the run's steps use); None when it does not, or will not say."""
    parts = split_target(target)
    if parts is None:
        return None
    host, port, _db = parts
    try:
        import psycopg

        with psycopg.connect(host=host.strip("[]"), port=port, dbname="postgres", connect_timeout=timeout,
                             autocommit=True, application_name="runbook recovery lock") as c:
            row = c.execute("select system_identifier::text from pg_control_system()").fetchone()
    except Exception:  # noqa: BLE001 - down, unreachable, refused, not permitted: the address decides then
        return None
    return str(row[0]) if row and row[0] else None


def lock_keys(target: str) -> list[str]:
    """The lock objects a recovery of `target` takes: always the one of its normalised address (the same at
    start and on resume, whether the server answers or not), and, when the server answers, the one of its
    identity (`system <identifier>/<db>`): two spellings of one server's address are one lock."""
    keys = [lock_key(normalised_address(target))]
    sysid = server_identity(target)
    parts = split_target(target)
    if sysid is not None and parts is not None:
        keys.append(lock_key(f"system {sysid}/{parts[2]}"))
    return keys


def describe(holder: dict[str, Any]) -> str:
    return (f"run {holder.get('run_id')} by {holder.get('user')}@{holder.get('host')} (pid {holder.get('pid')}) "
            f"since {holder.get('since')}")


class _Place:
    """The lock object in one repository."""

    name: str

    def where(self) -> str:
        raise NotImplementedError

    def read(self) -> dict[str, Any] | None:
        raise NotImplementedError

    def create(self, data: bytes) -> bool:
        """Create the object; False when it exists already."""
        raise NotImplementedError

    def replace(self, data: bytes) -> None:
        raise NotImplementedError

    def remove(self) -> None:
        raise NotImplementedError


class _LocalPlace(_Place):
    name = "local"

    def __init__(self, root: Path, key: str) -> None:
        self.path = root / key

    def where(self) -> str:
        return str(self.path)

    def read(self) -> dict[str, Any] | None:
        for _ in range(20):
            try:
                raw = self.path.read_bytes()
            except FileNotFoundError:
                return None
            except OSError as e:
                raise RunbookError(f"cannot read the recovery lock {self.path}: {e.strerror}") from None
            if raw.strip():
                try:
                    value = json.loads(raw)
                    return value if isinstance(value, dict) else {"unreadable": raw[:200].decode(errors="replace")}
                except ValueError:
                    pass
            time.sleep(0.05)  # a creator between O_EXCL and its write
        return {"unreadable": "an empty or unreadable lock object"}

    def create(self, data: bytes) -> bool:
        try:
            make_dirs(self.path.parent)
            fd = os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o640)
        except FileExistsError:
            return False
        except OSError as e:
            raise RunbookError(f"cannot create the recovery lock {self.path}: {e.strerror}") from None
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        return True

    def replace(self, data: bytes) -> None:
        tmp = self.path.with_name(f".{self.path.name}.{os.getpid()}")
        make_dirs(self.path.parent)
        tmp.write_bytes(data)
        os.replace(tmp, self.path)

    def remove(self) -> None:
        self.path.unlink(missing_ok=True)


class _S3Place(_Place):
    name = "s3"

    def __init__(self, store: Any, key: str) -> None:
        self.store = store
        self.key = key

    def where(self) -> str:
        return f"{self.store.describe()}/{self.key}"

    def read(self) -> dict[str, Any] | None:
        from steps.repository.store import NotFound

        try:
            raw = self.store.get_bytes(self.key)
        except NotFound:
            return None
        try:
            value = json.loads(raw)
            return value if isinstance(value, dict) else {"unreadable": str(value)[:200]}
        except ValueError:
            return {"unreadable": raw[:200].decode(errors="replace")}

    def create(self, data: bytes) -> bool:
        from steps.repository.store import ObjectExists

        try:
            self.store.put_bytes(self.key, data)  # a look first, then PutObject with IfNoneMatch='*'
        except ObjectExists:
            return False
        return True

    def replace(self, data: bytes) -> None:
        self.store.delete([self.key])
        self.store.put_bytes(self.key, data)

    def remove(self) -> None:
        self.store.delete([self.key])


def _places(cfg: Any, key: str) -> list[_Place]:
    from steps.repository.configured import open_stores

    places: list[_Place] = []
    if cfg.local is not None:
        places.append(_LocalPlace(cfg.local.path, key))
    if cfg.s3 is not None:
        places.append(_S3Place(open_stores(cfg, "s3")[0], key))
    return places


@dataclass
class RecoveryLock:
    """The lock objects this run holds (one per configured repository)."""

    places: list[_Place]
    holder: dict[str, Any]
    replaced: list[dict[str, Any]] = field(default_factory=list)

    def where(self) -> str:
        return ", ".join(p.where() for p in self.places)

    def release(self) -> list[str]:
        """Remove the objects that still name this run; returns problems (a run is closed whatever they are)."""
        problems = []
        for p in self.places:
            try:
                now = p.read()
                if now is not None and now.get("nonce") == self.holder["nonce"]:
                    p.remove()
            except Exception as e:  # noqa: BLE001 - closing a run never fails on its lock; said instead
                problems.append(f"{p.where()}: {e}")
        return problems


def acquire(cfg: Any, target: str, holder: dict[str, Any], *, break_lock: bool = False,
            run_closed: Any = None) -> RecoveryLock:
    """Take the lock for `holder` (run_id, user, host, pid, since, runbook) in every configured repository.

    Raises LockHeld naming the other holder; with `break_lock` the other holder is replaced (listed in
    `replaced`, for the journal). `run_closed(run_id)` says whether a run known on this host has ended (then
    its claim is void)."""
    mine = {**holder, "target": target, "nonce": secrets.token_hex(8)}
    data = (json.dumps(mine, indent=2) + "\n").encode()
    lock = RecoveryLock([], mine)
    try:
        for key in lock_keys(target):
            for place in _places(cfg, key):
                _take(place, mine, data, lock, break_lock, run_closed)
                lock.places.append(place)
    except BaseException:
        lock.release()
        raise
    return lock


def _take(place: _Place, mine: dict[str, Any], data: bytes, lock: RecoveryLock, break_lock: bool,
          run_closed: Any) -> None:
    for _attempt in range(3):
        other = place.read()
        if other is None:
            if not place.create(data):
                continue  # someone created it between our look and our write: look again
            time.sleep(READ_BACK_DELAY_S if place.name == "s3" else 0)
            back = place.read()
            if back is not None and back.get("nonce") == mine["nonce"]:
                return
            other = back or {}
            if not break_lock:
                raise _held(place, other, mine)
        if other.get("run_id") == mine["run_id"]:  # our own run (resume): it is ours again
            place.replace(data)
            return
        void = (run_closed is not None and other.get("host") == mine.get("host")
                and isinstance(other.get("run_id"), str) and run_closed(other["run_id"]))
        if not (break_lock or void):
            raise _held(place, other, mine)
        if not void:
            lock.replaced.append({**other, "where": place.where()})
        place.replace(data)
        return
    raise RunbookError(f"the recovery lock {place.where()} keeps changing under us; try again")


def _held(place: _Place, other: dict[str, Any], mine: dict[str, Any]) -> LockHeld:
    who = describe(other) if "run_id" in other else f"an unreadable lock object ({other.get('unreadable', '')})"
    return LockHeld(
        f"{mine.get('runbook', 'the runbook')} on {mine['target']} is being recovered from another place: {who} "
        f"(lock {place.where()})",
        hint="talk to that operator: two recoveries of one target must not run at once. If that run is dead, "
             "take over with --break-lock (typed confirmation, journaled)")


def open_for_runbook(config_path: str | os.PathLike[str]) -> Any:
    """The repository config a runbook names, for the lock; RunbookError when it cannot be loaded."""
    from steps.repository.config import load_repository_config

    cfg, _ = load_repository_config(config_path)
    return cfg
