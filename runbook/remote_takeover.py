"""Taking a run over from another host, through the repository: `runbook take-over -c REPO_CONFIG RUN_ID`.

The driver's session on host A mirrors its journal into the repository (steps.mirror). On host B:

1. **Read and check** (`RemoteTakeover.prepare`): the mirror, every chunk verified (signature, hash chain), the
   run's runbook copy (signature, and its sha256 against run-started's), live.json. The run must be open and
   not a rehearsal. The parameters the journal does not hold (secrets, and values that hold a secret's text)
   and the secrets file must be given on B (`--set`, `--profile`): checked now, and the take-over refused
   without them, before anything is asked of A.
2. **Ask** (`take`): while A's heartbeat is alive, a signed take-over request goes into `runs/<id>/requests/`
   (steps.mirror.requests), addressed to A's process. A's session verifies it, journals `handover-requested`
   and, at the next step boundary (a step running on A cannot be supervised from B, so it ends there first),
   `handed-over` naming both users and hosts; it mirrors that and lets go. B follows the mirror until then.
   A driver silent for longer than `silent_limit_s` cannot answer: B takes over only with `force` (a typed
   confirmation; the `handover` event says forced, and for how long A had been silent). A run nobody drives
   (its driver detached, or handed it over and nobody took it) is taken without asking.
3. **Claim and drive**: the claim `runs/<id>/drivers/<seq>.json` is written once (two hosts at once: one wins,
   the other is told who), the run directory rebuilt on B from the verified mirror (the journal byte for byte,
   the runbook copy, the parameters the journal shows), then resumed like any run (runbook.session.open_resume):
   B's local lock, the repository's recovery lock, and the mirror goes on from B.

Anything that fails before the claim leaves everything as it was: A drives on (a request that was written is
withdrawn).
"""

from __future__ import annotations

import hashlib
import json
import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

from runbook.clock import Clock, iso
from runbook.errors import LockHeld, RunbookError, UsageError
from runbook.lockfile import current_user, hostname
from runbook.redact import MASK

SILENT_LIMIT_S = 60.0  # a heartbeat older than this: the driver is taken for dead (only --force goes on)
WAIT_S = 600.0  # how long B waits for A's hand-over (A may be finishing a long step)
POLL_S = 0.5


@dataclass
class RemoteTakeover:
    config_path: Path
    run_id: str
    state_dir: Path
    clock: Clock
    sets: dict[str, str] = field(default_factory=dict)
    profile: Path | None = None
    force: bool = False
    silent_limit_s: float = SILENT_LIMIT_S
    wait_s: float = WAIT_S
    # filled by prepare()
    source: Any = None
    stores: list[Any] = field(default_factory=list)
    signer: Any = None
    trust: Any = None
    events: list[dict[str, Any]] = field(default_factory=list)
    runbook_bytes: bytes = b""
    driving: str = ""  # driven | silent | free
    silent_s: float = 0.0
    previous: dict[str, Any] = field(default_factory=dict)
    given: dict[str, str] = field(default_factory=dict)
    secrets_env_file: str | None = None
    env: dict[str, str] = field(default_factory=dict)
    nonce: str = ""

    # ---- 1. read and check ------------------------------------------------------------------------------

    def prepare(self) -> None:
        from runbook.repository_watch import RepositoryEventSource
        from runbook.state import fold
        from steps.repository.config import load_repository_config
        from steps.repository.configured import open_stores
        from steps.repository.signing import signer_from_config, trust_from_config

        cfg, _ = load_repository_config(self.config_path)
        self.trust = trust_from_config(cfg)
        if not self.trust.keys:
            raise UsageError(f"{self.config_path} trusts no signing key (signing.public_keys): the run's mirror "
                             "cannot be verified", hint="add the driver host's public key to signing.public_keys")
        self.signer = signer_from_config(cfg, required=True)  # the request, the claim and B's mirror are signed
        self.stores = open_stores(cfg)
        self.source = RepositoryEventSource(cfg, self.run_id, self.trust, config_path=str(self.config_path),
                                            silent_after_s=self.silent_limit_s)
        self.events = self._poll()
        if self.source.reader is None:
            raise RunbookError(f"no mirror of run {self.run_id} in {self.source.describe().split(' via ', 1)[1]}",
                               hint="is the run driven with this repository (its runbook's repository:), and not a "
                                    "rehearsal? `runbook watch -c` shows what the repository holds")
        if not self.events or self.events[0].get("type") != "run-started":
            raise RunbookError(f"the mirror of run {self.run_id} holds no journal yet", hint="try again in a moment")
        st = fold(self.run_id, self.events)
        if st.closed:
            raise RunbookError(f"run {self.run_id} is {st.status}; there is nothing to take over",
                               hint=f"`runbook watch -c {self.config_path} {self.run_id}` shows its summary")
        if st.mode == "rehearsal":
            raise UsageError(f"run {self.run_id} is a rehearsal: nothing to hand over")
        started = self.events[0]
        rb_info = _dict(started.get("runbook"))
        sha = rb_info.get("sha256") if isinstance(rb_info, dict) else None
        if not isinstance(sha, str):
            raise RunbookError(f"the journal of run {self.run_id} records no hash of its runbook (a driver of an "
                               "older version): its copy cannot be checked, so the run cannot be taken over here")
        copy = self.source.reader.runbook(sha)
        if copy is None:
            raise RunbookError(f"{self.source.reader.store.describe()} holds no copy of the runbook of run "
                               f"{self.run_id} (yet)", hint="try again in a moment")
        self.runbook_bytes = copy
        self._check_params(started)
        self._judge_driver()

    def _poll(self) -> list[dict[str, Any]]:
        """Every event the mirror holds now, verified; RunbookError when the repository cannot be read."""
        got = self.source.poll()
        if self.source.unreachable_since is not None:
            raise RunbookError(f"the repository cannot be read: {self.source.error}",
                               hint="nothing was changed: the run goes on with its driver. Check the repository "
                                    "(and this host's access to it), then try again")
        return got

    def _check_params(self, started: dict[str, Any]) -> None:
        """The values the journal does not hold, and the secrets, must be given here: checked before A is asked."""
        from runbook.loader import load_model, load_runbook_text
        from runbook.params import resolve
        from runbook.secrets import load_secrets
        from runbook.session import Profile

        rb = load_runbook_text(self.runbook_bytes.decode("utf-8"), f"the runbook copy of run {self.run_id}")
        profile = load_model(self.profile, Profile, filename=str(self.profile)) if self.profile else Profile()
        from runbook.params import to_text

        given = {k: to_text(v) for k, v in profile.params.items()}
        given.update(self.sets)
        shown = _dict(started.get("params"))
        missing = [k for k, v in shown.items() if (not isinstance(v, str) or MASK in v) and k not in given]
        if missing:
            raise UsageError("\n".join(f'param "{k}" is not in the journal (a secret, or it holds a secret\'s '
                                       f"text): give it on this host with --set {k}=VALUE (or in --profile)"
                                       for k in missing),
                             hint="nothing was changed: the run goes on with its driver")
        self.given = {**{k: v for k, v in shown.items() if isinstance(v, str) and MASK not in v}, **given}
        resolve(rb, started.get("scenario"), self.given)
        self.env = dict(profile.env)
        if rb.secrets is None:
            return
        base = self.profile.resolve().parent if self.profile else Path.cwd()
        wanted = profile.secrets_env_file or str(started.get("secrets_file") or "") or rb.secrets.env_file
        path = Path(os.path.expanduser(wanted))
        path = path if path.is_absolute() else base / path
        if not path.exists():
            raise UsageError(f"run {self.run_id} needs its secrets, and {path} is not on this host",
                             hint="give this host's secrets file: --profile FILE with secrets_env_file: (mode 0600); "
                                  "nothing was changed")
        loaded = load_secrets(rb.secrets.model_copy(update={"env_file": str(path)}), base)
        keys = _list(started.get("secrets_keys"))
        lacking = [k for k in keys if k not in loaded.keys]
        if lacking:
            raise UsageError(f"the secrets file {path} lacks {', '.join(lacking)}, which the run started with",
                             hint="add them (KEY=VALUE), then take over again; nothing was changed")
        self.secrets_env_file = str(path)

    def _judge_driver(self) -> None:
        live = self.source.live
        from runbook.session import handed_away
        from runbook.state import fold

        st = fold(self.run_id, self.events)
        heard = live.heartbeat if live is not None and live.heartbeat is not None else None
        if heard is None:
            ts = self.events[-1].get("ts")
            heard = datetime.fromisoformat(ts) if isinstance(ts, str) else None
        self.silent_s = (datetime.now().astimezone() - heard).total_seconds() if heard else float("inf")
        driver = dict(live.driver) if live is not None else dict(st.operator)
        self.previous = {k: driver.get(k) for k in ("user", "host", "pid")}
        away = handed_away(st)
        if live is not None and live.state in ("detached", "handed-over") or (away and live is None):
            self.driving = "free"
        elif self.silent_s > self.silent_limit_s:
            self.driving = "silent"
        else:
            self.driving = "driven"
        to = _dict(away.get("to")) if away is not None else {}
        mine = to.get("user") == current_user() and to.get("host") == hostname()  # this host's own retry
        if self.driving == "free" and away is not None and self.silent_s <= self.silent_limit_s and not mine:
            # handed over a moment ago: its new driver is taking it now
            raise LockHeld(f"run {self.run_id} was handed over to {_who(to)} {self.silent_s:.0f} s ago: they are "
                           "taking it", hint=f"watch it; if they never take it, try again after "
                                             f"{self.silent_limit_s:g} s")
        if self.driving == "silent" and not self.force:
            raise UsageError(f"the driver of run {self.run_id} ({_who(self.previous)}) has been silent for "
                             f"{self.silent_s:.0f} s (its host or its process may be down): it cannot hand over",
                             hint="if it is dead, take over with --force (typed confirmation, journaled as forced)")
        if self.driving == "driven" and self.force:
            raise UsageError(f"the driver of run {self.run_id} ({_who(self.previous)}) is alive (heartbeat "
                             f"{self.silent_s:.0f} s ago, limit {self.silent_limit_s:g} s): --force is refused",
                             hint="take over without --force: the driver hands over at the next step boundary")

    def question(self) -> str:
        """What the typed confirmation asks."""
        tail = self.run_id[-4:]
        if self.driving == "silent":
            return (f"The driver {_who(self.previous)} has been silent for {self.silent_s:.0f} s. FORCE the take-over "
                    f"of run {self.run_id}? A step it was running is marked interrupted. Type the run id's last 4 "
                    f"characters ({tail}) to go on: ")
        if self.driving == "free":
            return (f"Run {self.run_id} has no driver (last: {_who(self.previous)}). Drive it from this host? "
                    f"Type the run id's last 4 characters ({tail}) to go on: ")
        return (f"Take run {self.run_id} over from {_who(self.previous)}? Type the run id's last 4 characters "
                f"({tail}) to go on: ")

    # ---- 2. ask, 3. claim and drive ------------------------------------------------------------------------

    def take(self, *, confirmed: str, say: Callable[[str], None] = lambda _t: None) -> Any:
        """Ask (when driven), claim, rebuild the run directory, resume: returns the engine to drive."""
        from runbook.session import RemoteResume, open_resume, operator
        from steps.mirror.requests import claim, withdraw, write_request

        me = operator()
        if self.driving == "driven":
            live = self.source.live
            self.nonce = write_request(self.stores, self.signer, self.run_id, {
                "user": me["user"], "host": me["host"], "pid": me["pid"], "ts": iso(self.clock.now()),
                "driver": {"host": live.host if live else self.previous.get("host"), "pid": self.previous.get("pid")},
                "seen_seq": self.source.reader.seq, "confirmed": confirmed})
            say(f"asked {_who(self.previous)} to hand run {self.run_id} over (request {self.nonce}, through "
                f"{self.source.reader.store.describe()})...")
            try:
                self._await_handover(say)
            except BaseException:
                withdraw(self.stores, self.run_id, self.nonce)
                raise
        seq = self.source.reader.seq
        claim(self.stores, self.signer, self.trust, self.run_id, seq,
              {"user": me["user"], "host": me["host"], "pid": me["pid"], "since": iso(self.clock.now()),
               "state_dir": str(self.state_dir.resolve())})
        self._write_run_dir()
        handover = {"remote": True, "forced": self.driving == "silent", "request": self.nonce,
                    "repository": str(self.config_path), "at_seq": seq, "confirmed": confirmed,
                    "driver_was": self.driving}
        if self.driving == "silent":
            handover["silent_s"] = round(self.silent_s, 1)
        host = self.previous.get("host")
        detail = (f"it was running on {host} when the run was taken over from there; whether it finished there is "
                  "not known on this host: check, then rerun it or mark it done")
        return open_resume(self.run_id, self.clock, state_dir=self.state_dir, sets=self.given,
                           handover_from=self.previous,
                           remote=RemoteResume(repository=str(self.config_path),
                                               secrets_env_file=self.secrets_env_file, env=self.env,
                                               handover=handover, interrupted_detail=detail))

    def _await_handover(self, say: Callable[[str], None]) -> None:
        """Follow the mirror until A journals `handed-over` to this request, then until its last state is there."""
        deadline = time.monotonic() + self.wait_s
        said_step = False
        handed = False
        while True:
            for e in self._poll_soft():
                t = e.get("type")
                by = _dict(e.get("by"))
                to = _dict(e.get("to"))
                if t == "takeover-refused" and str(e.get("request", "")).endswith(f"takeover-{self.nonce}.json"):
                    if isinstance(e.get("winner"), dict):  # two hosts at once: the other one was first
                        raise LockHeld(f"run {self.run_id} is being handed over to {_who(e['winner'])}, who asked "
                                       "first: the driver refused this take-over",
                                       hint="watch it, or ask them to hand it over")
                    raise RunbookError(f"the driver refused the take-over: {e.get('reason')}",
                                       hint="nothing was changed: the run goes on with its driver")
                if t == "handover-requested" and by.get("request") == self.nonce and e.get("running") \
                        and not said_step:
                    said_step = True
                    say(f"step {e.get('step')} is running on {self.previous.get('host')} and cannot be supervised "
                        "from here: the run is handed over when it ends...")
                if t == "handed-over":
                    if to.get("request") != self.nonce:
                        raise LockHeld(f"run {self.run_id} was handed over to {to.get('user')}@{to.get('host')} "
                                       f"(pid {to.get('pid')}) first", hint="watch it, or ask them to hand it over")
                    handed = True
                if t == "run-finished":
                    raise RunbookError(f"run {self.run_id} ended ({e.get('status')}) before it was handed over",
                                       hint="nothing to take over; `runbook watch -c` shows its summary")
            live = self.source.live
            if handed and live is not None and live.state in ("handed-over", "detached") \
                    and self.source.reader.seq >= live.last_seq:
                return
            if not handed and self.source.status().silent_s is not None and live is not None \
                    and live.state == "running":
                raise RunbookError(f"the driver ({_who(self.previous)}) went silent before it handed over",
                                   hint="the request is withdrawn; if its host is dead, take over with --force")
            if time.monotonic() > deadline:
                raise RunbookError(f"the driver ({_who(self.previous)}) did not hand over within {self.wait_s:g} s",
                                   hint="the request is withdrawn; ask them (their cockpit says what it waits for), "
                                        "or wait longer with --wait")
            time.sleep(POLL_S)

    def _poll_soft(self) -> list[dict[str, Any]]:
        """New events; an unreachable repository is waited out (until the deadline), a refused chunk raises."""
        got: list[dict[str, Any]] = self.source.poll()
        self.events += got
        return got

    def _write_run_dir(self) -> None:
        """The run directory on this host, from the verified mirror: the journal byte for byte (a journal this
        host kept from an earlier turn must be its beginning), the runbook copy, the parameters shown."""
        from runbook.state import run_dir

        rdir = run_dir(self.state_dir, self.run_id)
        data = b"".join(self.source.reader.raw)
        journal = rdir / "journal.jsonl"
        if rdir.exists():
            if not journal.is_file() or not data.startswith(journal.read_bytes()):
                raise RunbookError(f"{rdir} holds a journal that is not the beginning of the mirror's",
                                   hint="move that run directory away (keep it for the post-mortem), then take over "
                                        "again")
            copy = rdir / "runbook.yaml"
            if hashlib.sha256(copy.read_bytes()).hexdigest() != hashlib.sha256(self.runbook_bytes).hexdigest():
                raise RunbookError(f"{copy} is not the run's runbook copy", hint="move that run directory away")
        else:
            rdir.mkdir(parents=True)
            (rdir / "runbook.yaml").write_bytes(self.runbook_bytes)
        tmp = rdir / ".journal.jsonl.takeover"
        tmp.write_bytes(data)
        os.chmod(tmp, 0o600)
        os.replace(tmp, journal)
        shown = _dict(self.events[0].get("params"))
        values = {k: v for k, v in shown.items() if isinstance(v, str) and MASK not in v}
        not_saved = {k: {"why": "not in the journal", "from": "--set"} for k in shown if k not in values}
        (rdir / "params.json").write_text(json.dumps({"values": values, "not_saved": not_saved}, indent=2) + "\n")


def _dict(v: Any) -> dict[str, Any]:
    return v if isinstance(v, dict) else {}


def _list(v: Any) -> list[Any]:
    return v if isinstance(v, list) else []


def _who(h: dict[str, Any]) -> str:
    return f"{h.get('user')}@{h.get('host')} (pid {h.get('pid')})"
