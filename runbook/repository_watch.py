"""Following a run from another host, through the repository: `RepositoryEventSource` (the event-source protocol
of runbook.watching), reading the journal's mirror the driver writes (steps.mirror).

It reads, never writes, and takes no lock. Every chunk is verified before its events are returned
(steps.mirror.reading): a forged or missing one is named in `status().note` and nothing after it is shown.
The driver's liveness comes from live.json: a heartbeat that has not changed for `silent_after_s` (measured on
this host's clock, so that the two hosts' clocks need not agree) makes the driver silent since its last
heartbeat; a repository that cannot be read makes the view behind, said with since when.

The run's copy of its runbook (written once by the driver's mirror) gives the watcher the steps' titles and
expected durations: it is used only when its signature holds and its sha256 is the one run-started journaled;
any other copy is refused by name in `status().note`, and the steps are shown by their ids.
"""

from __future__ import annotations

import contextlib
import re
import time
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from runbook.errors import RunbookError, UsageError
from runbook.state import CLOSED
from runbook.watching import SourceStatus, WatchedRun

if TYPE_CHECKING:
    from runbook.model import Runbook
    from steps.mirror.reading import Live, MirrorReader

SILENT_AFTER_S = 15.0
LIVE_EVERY_S = 2.0
REFUSED_HINT = ("what the repository holds for this run cannot be trusted past this point; the driver's own "
                "journal (its run directory) is the record: `runbook watch RUN_ID` on its host")
RUN_ID_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,200}$")


def _hm(d: datetime | None) -> str:
    return d.astimezone().strftime("%H:%M:%S") if d else "?"


class RepositoryEventSource:
    """The events of run `run_id` as mirrored into the repositories of `cfg`, read with `trust`. `poll` raises
    MirrorRefused (a RunbookError, as LocalEventSource raises JournalError) at a chunk that is not genuine or
    missing, after returning the events before it; `status().note` names it too."""

    def __init__(self, cfg: Any, run_id: str, trust: Any, *, config_path: str = "",
                 silent_after_s: float = SILENT_AFTER_S) -> None:
        from steps.encrypted.reading import Keys
        from steps.mirror.reading import MirrorReader
        from steps.repository.configured import open_stores

        if not RUN_ID_RE.match(run_id):
            raise UsageError(f"{run_id!r} is not a run id", hint="`runbook runs` on the driver's host lists them")
        self.run_id = run_id
        self.config_path = config_path
        self.silent_after_s = silent_after_s
        keys = Keys(cfg, trust, allow_unsigned=trust.allow_unsigned, config_path=Path(config_path) if config_path else None)
        self.readers: list[MirrorReader] = [MirrorReader(store, run_id, trust, keys) for store in open_stores(cfg)]
        self.reader: MirrorReader | None = None  # the store followed, once one holds the run
        self.unreachable_since: datetime | None = None
        self.error = ""
        self.refused = ""
        self.finished = False
        self.live: Live | None = None
        self._live_changed_at: float | None = None  # this host's monotonic time when live.json last changed
        self._live_read_at = 0.0
        self._last_event_ts: datetime | None = None
        self._runbook_sha: str | None = None  # what run-started journaled for the run's runbook copy
        self._runbook: Runbook | None = None
        self._runbook_settled = False  # the copy was read (or refused, or cannot be checked): not read again
        self._runbook_tried_at = 0.0
        self.runbook_note = ""  # why the steps are shown by their ids

    def describe(self) -> str:
        where = self.reader.store.describe() if self.reader else " or ".join(r.store.describe() for r in self.readers)
        return f"run {self.run_id} via {where or 'no readable repository'}"

    def _pick(self) -> MirrorReader | None:
        problems = []
        for r in self.readers:
            try:
                if r.exists():
                    return r
            except RunbookError as e:
                problems.append(e.message)
        if problems and len(problems) == len(self.readers):
            raise RunbookError("; ".join(problems))
        return None

    def poll(self) -> list[dict[str, Any]]:
        from steps.mirror.reading import MirrorRefused

        if self.refused:  # nothing past a refused chunk is ever shown: the watcher stops following, and says why
            raise MirrorRefused(self.refused, hint=REFUSED_HINT)
        events: list[dict[str, Any]] = []
        try:
            if self.reader is None:
                self.reader = self._pick()
                if self.reader is None:
                    return []
            events += self.reader.new_events()
            if time.monotonic() - self._live_read_at >= LIVE_EVERY_S or events:
                self._read_live()
                if self.live is not None and self.live.last_seq > self.reader.seq:
                    # live.json is written after the chunks it counts: listed again, they must be there
                    events += self.reader.new_events()
                    if self.live.last_seq > self.reader.seq:
                        raise MirrorRefused(
                            f"the driver's live.json says events up to {self.live.last_seq} are in "
                            f"{self.reader.store.describe()}, its chunks hold {self.reader.seq}: chunk "
                            f"{self.reader.chunks + 1:06d} of run {self.run_id} is missing (events from "
                            f"{self.reader.seq + 1} on): the events after it are not shown")
        except MirrorRefused as e:
            self.refused = e.message
            if not events:
                raise MirrorRefused(self.refused, hint=REFUSED_HINT) from None
            # the events verified before it are returned; the next poll raises
        except Exception as e:  # noqa: BLE001 - an unreachable store fails in many ways: said, retried next poll
            if self.unreachable_since is None:
                self.unreachable_since = datetime.now().astimezone()
            self.error = e.message if isinstance(e, RunbookError) else f"{type(e).__name__}: {e}"
        else:
            self.unreachable_since, self.error = None, ""
        for ev in events:
            if ev.get("type") == "run-started":
                rb = ev.get("runbook")
                sha = rb.get("sha256") if isinstance(rb, dict) else None
                self._runbook_sha = sha if isinstance(sha, str) else None
                if self._runbook_sha is None:
                    self._runbook_settled = True
                    self.runbook_note = ("the run's journal records no hash of its runbook (a driver of an older "
                                         "version): its copy cannot be checked, steps are shown by their ids")
            if ev.get("type") == "run-finished":
                self.finished = ev.get("status") in CLOSED
            elif ev.get("type") in ("run-reopened", "run-resumed"):
                self.finished = False
            ts = ev.get("ts")
            if isinstance(ts, str):
                with contextlib.suppress(ValueError):
                    self._last_event_ts = datetime.fromisoformat(ts)
        if self.reader is not None and self._runbook_sha is not None and not self._runbook_settled and (
                events or time.monotonic() - self._runbook_tried_at >= LIVE_EVERY_S):
            self._runbook_tried_at = time.monotonic()
            self._read_runbook()
        return events

    def _read_runbook(self) -> None:
        """The run's runbook copy from the followed store, verified (steps.mirror.reading.MirrorReader.runbook)."""
        from runbook.loader import load_runbook_text
        from steps.mirror.reading import MirrorRefused

        assert self.reader is not None and self._runbook_sha is not None
        try:
            data = self.reader.runbook(self._runbook_sha)
            if data is None:
                self.runbook_note = (f"{self.reader.store.describe()} holds no copy of the run's runbook (yet): "
                                     "steps are shown by their ids")
                return  # read again with live.json
            self._runbook = load_runbook_text(data.decode("utf-8"), f"the runbook copy of run {self.run_id}")
            self.runbook_note = ""
        except MirrorRefused as e:
            self.runbook_note = f"{e.message}; steps are shown by their ids"
        except (RunbookError, UnicodeDecodeError) as e:
            what = e.message if isinstance(e, RunbookError) else "not UTF-8 text"
            self.runbook_note = (f"the runbook copy of run {self.run_id} cannot be read ({what}): steps are shown "
                                 "by their ids")
        except Exception as e:  # noqa: BLE001 - the store failed: read again with live.json
            self.runbook_note = f"the run's runbook copy could not be read yet ({type(e).__name__}: {e})"
            return
        self._runbook_settled = True

    def runbook(self) -> Runbook | None:
        """The run's runbook, verified (None while it is not, or when it was refused: `runbook_note` says why)."""
        return self._runbook

    def _read_live(self) -> None:
        assert self.reader is not None
        live = self.reader.live()
        self._live_read_at = time.monotonic()
        if live is None:
            return
        before = self.live
        if before is None:
            if live.heartbeat is not None:  # first sight: its age by the driver's clock
                age = max(0.0, (datetime.now().astimezone() - live.heartbeat).total_seconds())
                self._live_changed_at = time.monotonic() - age
        elif live.raw != before.raw:
            if before.heartbeat is not None and (live.heartbeat is None or live.heartbeat <= before.heartbeat):
                return  # an older live.json put back (a replay) is no heartbeat
            self._live_changed_at = time.monotonic()
        self.live = live

    def status(self) -> SourceStatus:
        live = self.live
        heard = [d for d in (live.heartbeat if live else None, self._last_event_ts) if d is not None]
        last_heard = max(heard) if heard else None
        ended = self.finished or (live is not None and live.state == "ended" and not self.refused)
        notes = []
        silent: float | None = None
        if self.refused:
            notes.append(self.refused)
        if self.runbook_note:
            notes.append(self.runbook_note)
        if self.unreachable_since is not None:
            notes.append(f"the repository is unreachable since {_hm(self.unreachable_since)}: the view is behind "
                         f"({self.error})")
        if self.reader is None and not self.refused and self.unreachable_since is None:
            notes.append(f"no mirror of run {self.run_id} in {self.describe().split(' via ', 1)[1]} (yet): is it "
                         "driven with this repository config, and not a rehearsal?")
        if not ended and live is not None:
            if live.state == "detached":
                notes.append(f"the driver ({_driver(live)}) detached at {_hm(live.heartbeat)}: the run stays open "
                             "until someone resumes it")
                silent = self._age(last_heard)
            elif self._live_changed_at is not None and time.monotonic() - self._live_changed_at > self.silent_after_s:
                silent = self._age(last_heard)
                notes.append(f"the driver ({_driver(live)}) went silent at {_hm(live.heartbeat)}: no heartbeat "
                             f"for {silent:.0f} s (its host or its process may be down)")
            if live.behind_since:
                notes.append(f"the driver could not write to this repository since {live.behind_since}: "
                             "events may come late")
        return SourceStatus(ended=ended, last_heard=last_heard, silent_s=silent, note="; ".join(notes))

    def _age(self, when: datetime | None) -> float:
        if self._live_changed_at is not None:
            return time.monotonic() - self._live_changed_at
        return (datetime.now().astimezone() - when).total_seconds() if when else 0.0


def _driver(live: Live) -> str:
    d = live.driver
    return f"{d.get('user', '?')}@{d.get('host', live.host or '?')} pid {d.get('pid', '?')}"


def repository_source(config_path: str | Path, run_id: str, *, allow_unsigned: bool = False,
                      silent_after_s: float = SILENT_AFTER_S) -> RepositoryEventSource:
    """The event source of `runbook watch -c REPO_CONFIG RUN_ID`: the config loaded, its trusted keys loaded
    (signing.public_keys; unsigned chunks only with `allow_unsigned`). Raises RunbookError for a bad config."""
    from steps.repository.config import load_repository_config
    from steps.repository.signing import trust_from_config

    cfg, _ = load_repository_config(config_path)
    trust = trust_from_config(cfg, allow_unsigned=allow_unsigned)
    if not trust.keys and not allow_unsigned:
        raise UsageError(f"{config_path} trusts no signing key (signing.public_keys): no chunk of the mirror could "
                         "be verified", hint="add the driver host's public key to signing.public_keys")
    return RepositoryEventSource(cfg, run_id, trust, config_path=str(config_path), silent_after_s=silent_after_s)


def open_repository(config_path: str | Path, run_id: str, *, allow_unsigned: bool = False) -> WatchedRun:
    """`runbook watch -c REPO_CONFIG RUN_ID`: the run rebuilt from the repository's mirror of its journal, with
    the run's runbook copy once it is verified (titles, expected durations); a step's output is not mirrored."""
    source = repository_source(config_path, run_id, allow_unsigned=allow_unsigned)
    return WatchedRun(source, run_id=run_id)

