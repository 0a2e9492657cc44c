"""The record of a game day: which faults were injected into the sandbox, with what facts, for which run.

Stored 0600 at `<sandbox>/gameday/<game_id>.json` (written under a temporary name, then renamed; no symbolic
link followed), and a copy appended to the game-day ledger beside the state directory's runs
(`<state_dir>/gamedays.jsonl`, 0600, one JSON object a line, the newest line of a game id wins), which
outlives the sandbox (`runbook demo --down` removes it) for `runbook runs --game-days`.

The record is the trainer's: the operator's screens, the run's journal and its report say nothing of the faults
before the debrief (the journal holds only a `game-day` event: the game id and the seed).
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import secrets
import stat
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from runbook.errors import RunbookError

LEDGER = "gamedays.jsonl"
GAMEDAY_DIR = "gameday"
_ID = re.compile(r"^gd-[0-9]{8}T[0-9]{6}Z-[0-9a-f]{4,16}$")


@dataclass
class GameDay:
    game_id: str
    seed: int
    scenario: str
    faults: list[str]
    operator: str
    created_at: str  # ISO 8601, aware
    run_id: str | None = None
    injected: list[dict[str, Any]] = field(default_factory=list)  # per fault: name, at, facts
    # What a clean run achieves on this same sandbox: rpo_s (the data loss a clean recovery would have, seconds),
    # rows_lost when known (rows written after the recovery point a clean run reaches), rto_s when known.
    baseline: dict[str, Any] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_json(cls, data: Any) -> GameDay:
        if not isinstance(data, dict):
            raise ValueError("not an object")
        try:
            gd = cls(game_id=str(data["game_id"]), seed=int(data["seed"]), scenario=str(data["scenario"]),
                     faults=[str(f) for f in data["faults"]], operator=str(data["operator"]),
                     created_at=str(data["created_at"]), run_id=(str(data["run_id"]) if data.get("run_id") else None),
                     injected=[dict(i) for i in data.get("injected") or []],
                     baseline=dict(data.get("baseline") or {}))
        except (KeyError, TypeError) as e:
            raise ValueError(f"missing or malformed field {e}") from None
        if not valid_id(gd.game_id):
            raise ValueError(f"game id {gd.game_id!r} is malformed")
        return gd


def valid_id(game_id: str) -> bool:
    return bool(_ID.match(game_id))


def new_game_id(now: datetime | None = None) -> str:
    return f"gd-{(now or datetime.now(UTC)):%Y%m%dT%H%M%SZ}-{secrets.token_hex(2)}"


def new_game_day(seed: int, scenario: str, faults: list[str], operator: str) -> GameDay:
    now = datetime.now(UTC)
    return GameDay(game_id=new_game_id(now), seed=seed, scenario=scenario, faults=list(faults), operator=operator,
                   created_at=now.isoformat())


def _dir_fd(path: Path, create: bool) -> int:
    """A descriptor of `path` (a real directory, not a link), made 0700 when missing and `create`."""
    if create:
        with contextlib.suppress(FileExistsError):
            os.mkdir(path, 0o700)
    try:
        fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW)
    except OSError as e:
        raise RunbookError(f"{path}: not a directory the game day can use ({e.strerror})",
                           hint="it must be a real directory, not a symbolic link") from None
    return fd


def _write_file(dir_path: Path, name: str, text: str) -> None:
    fd = _dir_fd(dir_path, create=True)
    tmp = f".{name}.{secrets.token_hex(4)}.tmp"
    try:
        out = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600, dir_fd=fd)
        try:
            os.write(out, text.encode())
            os.fsync(out)
        finally:
            os.close(out)
        os.rename(tmp, name, src_dir_fd=fd, dst_dir_fd=fd)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp, dir_fd=fd)
        raise
    finally:
        os.close(fd)


def _read_file(dir_path: Path, name: str) -> str | None:
    try:
        fd = _dir_fd(dir_path, create=False)
    except RunbookError:
        return None
    try:
        f = os.open(name, os.O_RDONLY | os.O_NOFOLLOW, dir_fd=fd)
    except OSError:
        return None
    finally:
        os.close(fd)
    with os.fdopen(f, "rb") as fh:
        if not stat.S_ISREG(os.fstat(fh.fileno()).st_mode):
            return None
        return fh.read(4_000_000).decode("utf-8", "replace")


def save(sb_dir: Path, gd: GameDay) -> Path:
    """Write the record into the sandbox (0600, temp name then rename, no link followed)."""
    if not valid_id(gd.game_id):
        raise RunbookError(f"game id {gd.game_id!r} is malformed")
    where = Path(sb_dir) / GAMEDAY_DIR
    _write_file(where, f"{gd.game_id}.json", json.dumps(gd.to_json(), indent=2) + "\n")
    return where / f"{gd.game_id}.json"


def load(sb_dir: Path, game_id: str) -> GameDay:
    if not valid_id(game_id):
        raise RunbookError(f"{game_id!r} is not a game id (gd-YYYYmmddTHHMMSSZ-xxxx)")
    text = _read_file(Path(sb_dir) / GAMEDAY_DIR, f"{game_id}.json")
    if text is None:
        raise RunbookError(f"no game day {game_id} in the sandbox {sb_dir}")
    try:
        return GameDay.from_json(json.loads(text))
    except ValueError as e:
        raise RunbookError(f"the game day record {game_id} is damaged: {e}") from None


def all_game_days(sb_dir: Path) -> list[GameDay]:
    """Every game day recorded in the sandbox, oldest first (damaged records left out)."""
    where = Path(sb_dir) / GAMEDAY_DIR
    try:
        fd = _dir_fd(where, create=False)
    except RunbookError:
        return []
    try:
        names = sorted(n for n in os.listdir(fd) if n.endswith(".json") and valid_id(n[:-5]))
    finally:
        os.close(fd)
    out = []
    for n in names:
        text = _read_file(where, n)
        try:
            out.append(GameDay.from_json(json.loads(text or "")))
        except ValueError:
            continue
    return sorted(out, key=lambda g: g.created_at)


def for_run(sb_dir: Path, run_id: str) -> GameDay | None:
    """The game day whose run is `run_id` (from the sandbox's records), or None."""
    return next((g for g in all_game_days(sb_dir) if g.run_id == run_id), None)


# ---- the ledger beside the runs (outlives the sandbox) ---------------------------------------------------


def append_ledger(state_dir: Path, gd: GameDay) -> Path:
    """Append the record to `<state_dir>/gamedays.jsonl` (0600, no link followed)."""
    state_dir = Path(state_dir)
    state_dir.mkdir(parents=True, exist_ok=True)
    fd = _dir_fd(state_dir, create=False)
    try:
        out = os.open(LEDGER, os.O_WRONLY | os.O_CREAT | os.O_APPEND | os.O_NOFOLLOW, 0o600, dir_fd=fd)
    except OSError as e:
        raise RunbookError(f"{state_dir / LEDGER}: cannot append the game day ({e.strerror})") from None
    finally:
        os.close(fd)
    try:
        st = os.fstat(out)
        if not stat.S_ISREG(st.st_mode):
            raise RunbookError(f"{state_dir / LEDGER} is not a regular file")
        if st.st_mode & 0o077:
            os.fchmod(out, 0o600)
        os.write(out, (json.dumps(gd.to_json(), sort_keys=True) + "\n").encode())
        os.fsync(out)
    finally:
        os.close(out)
    return state_dir / LEDGER


def ledger(state_dir: Path) -> list[GameDay]:
    """The game days of the ledger, oldest first; a game id's newest line wins; damaged lines left out."""
    text = _read_file(Path(state_dir), LEDGER)
    if not text:
        return []
    latest: dict[str, GameDay] = {}
    for line in text.splitlines():
        try:
            gd = GameDay.from_json(json.loads(line))
        except ValueError:
            continue
        latest[gd.game_id] = gd
    return sorted(latest.values(), key=lambda g: g.created_at)


def ledger_for_run(state_dir: Path, run_id: str) -> GameDay | None:
    return next((g for g in ledger(state_dir) if g.run_id == run_id), None)
