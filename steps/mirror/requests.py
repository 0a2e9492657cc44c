"""A hand-over across hosts through the repository: signed take-over requests, and the new driver's claim.

The driver's session on host A mirrors its journal into `runs/<run id>/` (steps.mirror.writing). A session on
host B that wants to drive the run (`runbook take-over -c REPO_CONFIG RUN_ID`) drops a request there:

```
runs/<run id>/requests/takeover-<nonce>.json (+ .sig)   who asks (user, host, pid), the driver it is addressed
                                                       to (host, pid, from live.json), how it was confirmed
runs/<run id>/requests/approve-<nonce>.json (+ .sig)    an approval (the two-person rule) from another host: the
                                                       step, the wait it answers, the sha256 of the command as
                                                       the approver saw it, who approves (user, host)
runs/<run id>/drivers/<seq>.json (+ .sig)              the claim of whoever drives the run on from event <seq>:
                                                       written once; the second claimant is told the first
```

The driver's mirror thread lists `requests/` once a round and hands every new object to the engine, verified
here first: its name, its size, its signature (a key of signing.public_keys: unsigned requests are refused
whatever `allow_unsigned` says), JSON naming the nonce its name carries. What the engine then checks (this
run, this driver) and decides is journaled by the engine. A request read is deleted (the journal keeps what was
decided).

The claim closes every race: two hosts taking over a run nobody drives, or two forced take-overs of a silent
driver, both want the same `drivers/<seq>.json`; it is created once (O_EXCL in a local directory, PutObject with
IfNoneMatch in S3, read back), and the one that finds another's claim is told whose.
"""

from __future__ import annotations

import contextlib
import json
import re
import secrets
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from runbook.errors import LockHeld, RunbookError
from steps.mirror.layout import run_prefix

if TYPE_CHECKING:
    from steps.repository.signing import Signer, Trust
    from steps.repository.store import Store

REQUEST_RE = re.compile(r"^(takeover|approve)-([0-9a-f]{16})\.json$")
KINDS = ("takeover", "approve")
MAX_REQUEST_BYTES = 16 * 1024
MAX_PER_ROUND = 32


def requests_prefix(run_id: str) -> str:
    return f"{run_prefix(run_id)}requests/"


def request_key(run_id: str, nonce: str, kind: str = "takeover") -> str:
    return f"{requests_prefix(run_id)}{kind}-{nonce}.json"


def claim_key(run_id: str, seq: int) -> str:
    return f"{run_prefix(run_id)}drivers/{seq:06d}.json"


def new_nonce() -> str:
    return secrets.token_hex(8)


@dataclass(frozen=True)
class RemoteRequest:
    """A take-over or approval request whose signature and form hold (the engine decides whether it is for it)."""

    key: str
    where: str  # the store, for messages
    body: dict[str, Any]
    key_id: str | None  # the signing key that signed it

    @property
    def nonce(self) -> str:
        return str(self.body.get("nonce", ""))

    @property
    def kind(self) -> str:
        return str(self.body.get("kind", ""))


@dataclass(frozen=True)
class RemoteRejected:
    """An object in `requests/` that is no genuine request: named, with why."""

    key: str
    where: str
    reason: str
    key_id: str | None = None

    @property
    def kind(self) -> str:
        """What its name says it is (an approval, or a take-over request: how its refusal is journaled)."""
        return "approve" if self.key.rsplit("/", 1)[-1].startswith("approve-") else "takeover"


def _strict(trust: Trust) -> Trust:
    """The same keys, unsigned never accepted: a request moves the run, an unsigned one is nobody's."""
    from steps.repository.signing import Trust as TrustClass

    return TrustClass(dict(trust.keys), allow_unsigned=False)


def read_requests(store: Store, run_id: str, trust: Trust, seen: set[str]) -> list[RemoteRequest | RemoteRejected]:
    """The requests in `store` not in `seen` (their keys added to it), each verified, then deleted."""
    from steps.repository.signing import SIG_SUFFIX

    prefix = requests_prefix(run_id)
    listed = dict(store.list_keys(prefix))
    strict = _strict(trust)
    out: list[RemoteRequest | RemoteRejected] = []
    for key in sorted(listed):
        if key.endswith(SIG_SUFFIX):  # a signature is read with its object (alone: its object is being written)
            continue
        if key in seen:  # read already (from another store of the config, which held the same request): removed
            with contextlib.suppress(Exception):
                store.delete([key, key + SIG_SUFFIX])
            continue
        if len(out) >= MAX_PER_ROUND:
            break
        seen.add(key)
        out.append(_verify(store, key, listed[key], key + SIG_SUFFIX in listed, run_id, strict))
        with contextlib.suppress(Exception):
            store.delete([key, key + SIG_SUFFIX])
    return out


def _verify(store: Store, key: str, size: int, signed: bool, run_id: str, trust: Trust) -> RemoteRequest | RemoteRejected:
    where = store.describe()
    name = key.rsplit("/", 1)[-1]
    m = REQUEST_RE.match(name)
    if m is None:
        return RemoteRejected(key, where, "its name is not takeover-<nonce>.json nor approve-<nonce>.json: not a "
                                          "request runbook writes")
    if size > MAX_REQUEST_BYTES:
        return RemoteRejected(key, where, f"{size} bytes, more than a request ever holds: refused unread")
    data = store.get_bytes(key)
    verdict = trust.read(store, key, data, signed)
    if not verdict.accepted:
        return RemoteRejected(key, where, verdict.reason, verdict.key_id)
    try:
        body = json.loads(data)
    except ValueError:
        return RemoteRejected(key, where, "not JSON", verdict.key_id)
    if not isinstance(body, dict) or body.get("kind") != m.group(1):
        return RemoteRejected(key, where, f"not the {m.group(1)} request its name says", verdict.key_id)
    if body.get("nonce") != m.group(2):
        return RemoteRejected(key, where, "its nonce is not the one its name carries (copied)", verdict.key_id)
    if body.get("run_id") != run_id:
        return RemoteRejected(key, where, f"it names run {body.get('run_id')!r}, not this run (copied)",
                              verdict.key_id)
    return RemoteRequest(key, where, body, verdict.key_id)


def write_request(stores: list[Store], signer: Signer, run_id: str, body: dict[str, Any],
                  kind: str = "takeover") -> str:
    """As the would-be driver (or an approver): drop a signed request into every store (each one the driver may
    read). Returns its nonce. Raises RunbookError when no store took it."""
    nonce = new_nonce()
    key = request_key(run_id, nonce, kind)
    data = (json.dumps({"kind": kind, "run_id": run_id, "nonce": nonce, **body}, indent=1) + "\n").encode()
    problems = []
    written = 0
    for store in stores:
        try:
            signer.put(store, key, data)
            written += 1
        except Exception as e:  # noqa: BLE001 - an unreachable store fails in many ways: said below
            problems.append(f"{store.describe()}: {e.message if isinstance(e, RunbookError) else e}")
    if not written:
        what = "approval" if kind == "approve" else "take-over request"
        raise RunbookError(f"the {what} could not be written into the repository ({'; '.join(problems)})",
                           hint="nothing was changed: the driver goes on (and keeps waiting). Check the "
                                "repository, then try again")
    return nonce


def withdraw(stores: list[Store], run_id: str, nonce: str, kind: str = "takeover") -> None:
    """Remove a request that was not answered (best effort: the driver refuses one addressed to it twice)."""
    from steps.repository.signing import SIG_SUFFIX

    key = request_key(run_id, nonce, kind)
    for store in stores:
        with contextlib.suppress(Exception):
            store.delete([key, key + SIG_SUFFIX])


def claim(stores: list[Store], signer: Signer, trust: Trust, run_id: str, seq: int, holder: dict[str, Any]) -> None:
    """Claim the run from event `seq` on, in every store, once. Raises LockHeld naming who claimed it first
    (or RunbookError when a store cannot be written: then nobody drives from here)."""
    from steps.repository.store import ObjectExists

    key = claim_key(run_id, seq)
    mine = {**holder, "run_id": run_id, "seq": seq, "nonce": new_nonce()}
    data = (json.dumps(mine, indent=1) + "\n").encode()
    from steps.repository.signing import SIG_SUFFIX

    for store in stores:
        try:
            store.put_bytes(key, data)
        except ObjectExists:
            if _ours(store, key, holder):
                continue  # this session's own claim, from an attempt that failed after it (a retry)
            raise _claimed(store, key, trust, run_id, seq) from None
        except Exception as e:  # noqa: BLE001
            text = e.message if isinstance(e, RunbookError) else f"{type(e).__name__}: {e}"
            raise RunbookError(f"cannot write the claim {key} into {store.describe()}: {text}",
                               hint="nothing drives the run from here; check the repository and take over "
                                    "again") from None
        if store.name == "s3":  # a store that ignores conditional writes: the last writer wins; read back
            time.sleep(0.3)
            if store.get_bytes(key) != data:
                raise _claimed(store, key, trust, run_id, seq)
        with contextlib.suppress(ObjectExists):
            store.put_bytes(key + SIG_SUFFIX, signer.signature(key, data))


def _ours(store: Store, key: str, holder: dict[str, Any]) -> bool:
    try:
        other = json.loads(store.get_bytes(key))
    except Exception:  # noqa: BLE001
        return False
    return isinstance(other, dict) and all(other.get(k) == holder.get(k) for k in ("user", "host", "state_dir"))


def _claimed(store: Store, key: str, trust: Trust, run_id: str, seq: int) -> LockHeld:
    from steps.repository.signing import SIG_SUFFIX

    try:
        data = store.get_bytes(key)
        other = json.loads(data)
        time.sleep(0.2)  # its signature comes just after it
        verdict = trust.read(store, key, data, store.exists(key + SIG_SUFFIX))
    except Exception as e:  # noqa: BLE001
        return LockHeld(f"run {run_id} was claimed from event {seq} by another session first ({key} in "
                        f"{store.describe()}; unreadable: {e})")
    who = f"{other.get('user')}@{other.get('host')} (pid {other.get('pid')})" if isinstance(other, dict) else "?"
    if not verdict.genuine:
        return LockHeld(f"{store.describe()}: {key} claims run {run_id} for {who}, but it is {verdict.reason}: "
                        "not written by a trusted host", hint="remove that object (someone planted it), then take "
                                                             "over again")
    return LockHeld(f"run {run_id} was taken over by {who} first (at event {seq})",
                    hint="watch it (`runbook watch -c REPO_CONFIG RUN_ID`), or ask them to hand it over")


def claims_from(store: Store, run_id: str, seq: int) -> list[dict[str, Any]]:
    """The claims in `store` of run `run_id` at event `seq` or later (each a dict with its `seq`): whoever holds
    one drives the run on from there. Unreadable ones count as claims too (of an unknown holder)."""
    prefix = f"{run_prefix(run_id)}drivers/"
    out = []
    for key, _size in store.list_keys(prefix):
        m = re.match(r"^(\d{6,})\.json$", key[len(prefix):])
        if m is None or int(m.group(1)) < seq:
            continue
        try:
            body = json.loads(store.get_bytes(key))
        except Exception:  # noqa: BLE001 - being written, or not ours: a claim all the same
            body = None
        out.append({**(body if isinstance(body, dict) else {"user": "?", "host": "?"}), "seq": int(m.group(1))})
    return out
