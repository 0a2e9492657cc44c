"""Approving a step from another host, through the repository: `runbook approve -c REPO_CONFIG RUN_ID STEP` and the
watch cockpit's approve key under `watch -c` (the two-person rule, issue 18).

The driver's session on host A mirrors its journal into `runs/<run id>/` (steps.mirror.writing). When a step waits
for another operator, A journals `approval-awaited` (the step, the sha256 of its command as shown, the wait's
nonce) after `step-awaiting` (the command, rendered with secrets masked). On host B:

1. **Read** (`RemoteApproval.prepare`): the mirror, every chunk verified (signature by a trusted key, hash chain);
   the step that waits now, its command and the hash recomputed from what B shows (a mirror whose hash does not
   match its command is refused).
2. **Approve** (`send`): a signed request `runs/<id>/requests/approve-<nonce>.json` (steps.mirror.requests) naming
   the step, the wait it answers, the sha256 of the command as B showed it, B's user and host; signed with B's
   key. A's mirror thread verifies the signature (unsigned or unknown keys refused, whatever `allow_unsigned`
   says), A's engine checks the rest (the step still waits, the command unchanged, another operator) and
   journals `approved` (approver, host, key, time) or `approval-refused` (why).
3. **Hear** (`await_verdict`): B follows the mirror until A's verdict on this request is there.

"Another operator" across hosts: another user name, or another host's key. The driver's own user name on the
driver's host, or signing with the driver host's own key, is the driver (refused). The user name in a request is
what the signing host says; the key vouches for the host: trusting a key in `signing.public_keys` is trusting
that host's operators to say who they are.

Anything that fails leaves the run as it was: the driver keeps waiting.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from runbook.clock import Clock, iso
from runbook.errors import RunbookError, UsageError
from runbook.lockfile import current_user, hostname

VERDICT_WAIT_S = 60.0  # the driver reads requests every mirror round: a few seconds
POLL_S = 0.5
ENDS_WAIT = ("approved", "step-skipped", "step-confirmed", "step-started", "step-finished")
ENDS_RUN = ("run-detached", "handed-over", "run-finished")


@dataclass
class Pending:
    """What waits for approval in the mirrored run."""

    step: str
    title: str
    command: str | None
    items: list[str] | None
    command_hash: str
    wait: str
    mode: str
    driver: dict[str, Any]


@dataclass
class RemoteApproval:
    config_path: Path
    run_id: str
    clock: Clock
    source: Any = None
    stores: list[Any] = field(default_factory=list)
    signer: Any = None
    events: list[dict[str, Any]] = field(default_factory=list)
    nonce: str = ""

    def prepare(self) -> None:
        """Open the repository and read the mirror; RunbookError when it cannot be read."""
        from runbook.repository_watch import RepositoryEventSource
        from steps.repository.config import load_repository_config
        from steps.repository.configured import open_stores
        from steps.repository.signing import signer_from_config, trust_from_config

        cfg, _ = load_repository_config(self.config_path)
        trust = trust_from_config(cfg)
        if not trust.keys:
            raise UsageError(f"{self.config_path} trusts no signing key (signing.public_keys): the run's mirror "
                             "cannot be verified", hint="add the driver host's public key to signing.public_keys")
        self.signer = signer_from_config(cfg, required=True)  # the approval is signed: it is this host's word
        self.stores = open_stores(cfg)
        self.source = RepositoryEventSource(cfg, self.run_id, trust, config_path=str(self.config_path))
        self.refresh()
        if self.source.reader is None:
            raise RunbookError(f"no mirror of run {self.run_id} in {self.source.describe().split(' via ', 1)[-1]}",
                               hint="is the run driven with this repository (its runbook's repository:)? "
                                    "`runbook watch -c` shows what the repository holds")

    @classmethod
    def watching(cls, source: Any, events: list[dict[str, Any]], clock: Clock) -> RemoteApproval:
        """For the watch cockpit under `watch -c`: its source (already following the mirror) and the events it
        holds; this host's key and the config's stores loaded to write the approval."""
        from steps.repository.config import load_repository_config
        from steps.repository.configured import open_stores
        from steps.repository.signing import signer_from_config

        if not getattr(source, "config_path", ""):
            raise UsageError("this cockpit follows no repository config: an approval is sent through one",
                             hint="watch with -c REPO_CONFIG, or approve on the driver's host")
        job = cls(Path(source.config_path), source.run_id, clock, source=source, events=list(events))
        cfg, _ = load_repository_config(job.config_path)
        job.signer = signer_from_config(cfg, required=True)
        job.stores = open_stores(cfg)
        return job

    def refresh(self) -> list[dict[str, Any]]:
        got: list[dict[str, Any]] = self.source.poll()
        if self.source.unreachable_since is not None:
            raise RunbookError(f"the repository cannot be read: {self.source.error}",
                               hint="nothing was approved: the driver keeps waiting. Check the repository (and "
                                    "this host's access to it), then approve again")
        self.events += got
        return got

    def pending(self) -> Pending | None:
        """The step that waits for approval now, from the verified mirror (None: none does)."""
        p = pending_of(self.run_id, self.events, self.source.live)
        rb = self.source.runbook() if p is not None else None
        if p is not None and rb is not None:
            with contextlib.suppress(Exception):  # a step the copy lacks: its id is its title
                p.title = rb.step(p.step).display_title
        return p

    def check(self, step: str) -> Pending:
        """The pending approval of `step`, checked on this side too (UsageError saying why not)."""
        from runbook.state import fold

        if fold(self.run_id, self.events).closed:
            raise UsageError(f"run {self.run_id} has ended: nothing waits for approval")
        p = self.pending()
        if p is None:
            raise UsageError(f"no step of run {self.run_id} waits for approval now (as the mirror shows it)")
        if p.step != step:
            raise UsageError(f"step {step} does not wait for approval; step {p.step} does")
        why = refusal_here(p)
        if why is not None:
            raise UsageError(why, hint="another operator approves: another user, or on another host with its key")
        return p

    def send(self, p: Pending) -> str:
        """Write the signed approval of what `p` shows into the repository; returns its nonce."""
        from steps.mirror.requests import write_request

        self.nonce = write_request(self.stores, self.signer, self.run_id, {
            "step": p.step, "wait": p.wait, "command_hash": shown_hash(self.run_id, p),
            "user": current_user(), "host": hostname(), "ts": iso(self.clock.now())}, kind="approve")
        return self.nonce

    def await_verdict(self, wait_s: float = VERDICT_WAIT_S,
                      tick: Callable[[], None] = lambda: None) -> tuple[bool, str]:
        """Follow the mirror until the driver journals its verdict on this request: (accepted, text). A verdict
        not heard within `wait_s` raises RunbookError (the request is withdrawn: nothing was approved)."""
        from steps.mirror.requests import withdraw

        deadline = time.monotonic() + wait_s
        mine = f"approve-{self.nonce}.json"
        while True:
            try:
                got = self.refresh()
            except RunbookError:
                got = []  # a blip: the deadline decides
            for e in got:
                if str(e.get("request", "")).endswith(mine):
                    if e.get("type") == "approved":
                        return True, f"step {e.get('step')} approved by {e.get('approver')}@{e.get('approver_host')}"
                    if e.get("type") == "approval-refused":
                        return False, str(e.get("reason"))
            if time.monotonic() > deadline:
                withdraw(self.stores, self.run_id, self.nonce, kind="approve")
                raise RunbookError(f"the driver did not answer the approval within {wait_s:g} s (its host may be "
                                   "down, or it does not read this repository)",
                                   hint="the approval is withdrawn: nothing was approved; `runbook watch -c` shows "
                                        "the run")
            tick()
            time.sleep(POLL_S)


def pending_of(run_id: str, events: list[dict[str, Any]], live: Any = None) -> Pending | None:
    """The approval the mirrored journal waits for: the last `approval-awaited` not followed by its end (an
    approval, the step skipped or started, the driver leaving)."""
    from runbook.state import fold

    found: dict[str, Any] | None = None
    command: dict[str, str | None] = {}
    for e in events:
        t = e.get("type")
        if t == "step-awaiting":
            command[str(e.get("step"))] = e.get("command")
        elif t == "approval-awaited" and isinstance(e.get("wait"), str):
            found = e
        elif found is not None and (t in ENDS_RUN or t in ENDS_WAIT and e.get("step") == found.get("step")):
            found = None
    if found is None:
        return None
    st = fold(run_id, events)
    sid = str(found.get("step"))
    driver = dict(live.driver) if live is not None and isinstance(getattr(live, "driver", None), dict) \
        else dict(st.operator)
    items = found.get("items")
    p = Pending(step=sid, title=str(sid), command=command.get(sid), items=items if isinstance(items, list) else None,
                command_hash=str(found.get("command_hash", "")), wait=str(found["wait"]), mode=st.mode,
                driver={k: driver.get(k) for k in ("user", "host", "pid")})
    if shown_hash(run_id, p) != p.command_hash:
        raise RunbookError(f"the mirror of run {run_id} shows step {sid}'s command with a hash that does not match "
                           "it: it cannot be approved from here", hint="do not approve; tell the driver")
    return p


def shown_hash(run_id: str, p: Pending) -> str:
    """The sha256 of the command as shown here (the same function the driver hashes with)."""
    from runbook.requests import command_hash

    return command_hash(run_id, p.step, p.command, p.items)


def refusal_here(p: Pending) -> str | None:
    """Why this session cannot approve (the driver's own user on the driver's host), or None."""
    if p.driver.get("user") == current_user() and p.driver.get("host") == hostname():
        return (f"you ({current_user()}@{hostname()}) are the driver's own user on the driver's host: the driver "
                "cannot approve their own step")
    return None
