"""steps.mirror.requests on a real local repository: a take-over request is accepted only when signed by a trusted
key, named as runbook names it, for this run; each is read once and removed; the claim of a journal position is
won once, the second claimant told whose it is, a planted claim named as planted, and a session's own claim
(a retry) is its own."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from runbook.errors import LockHeld
from steps.mirror.requests import (
    RemoteRejected,
    RemoteRequest,
    claim,
    claim_key,
    read_requests,
    request_key,
    withdraw,
    write_request,
)
from steps.repository.signing import Trust, load_private_key, load_public_keys
from steps.repository.store import LocalStore
from tests.support.signing import make_keys

RUN = "20261207T120000Z-default-abcd"


@pytest.fixture
def keys(tmp_path: Path) -> dict[str, tuple[Path, Path]]:
    return {n: make_keys(tmp_path, n) for n in ("a", "b", "stranger")}


def _trust(keys: dict[str, tuple[Path, Path]]) -> Trust:
    return Trust.of(load_public_keys([keys["a"][1], keys["b"][1]]), allow_unsigned=True)  # unsigned still refused


def test_a_signed_request_is_read_once_and_removed(tmp_path: Path, keys: dict[str, tuple[Path, Path]]) -> None:
    store = LocalStore(tmp_path / "repo")
    nonce = write_request([store], load_private_key(keys["b"][0]), RUN, {"user": "bob", "host": "h2", "pid": 7})
    seen: set[str] = set()
    got = read_requests(store, RUN, _trust(keys), seen)
    assert len(got) == 1 and isinstance(got[0], RemoteRequest)
    assert got[0].nonce == nonce and got[0].body["user"] == "bob"
    assert got[0].key_id == load_private_key(keys["b"][0]).key_id
    assert read_requests(store, RUN, _trust(keys), seen) == []
    assert not store.list_keys(f"runs/{RUN}/requests/")


def test_forged_copied_and_misnamed_requests_are_refused_by_name(tmp_path: Path,
                                                                 keys: dict[str, tuple[Path, Path]]) -> None:
    store = LocalStore(tmp_path / "repo")

    def plant(nonce: str, body: dict[str, object], key: Path | None, name: str | None = None) -> str:
        k = name or request_key(RUN, nonce)
        data = json.dumps({"kind": "takeover", "run_id": RUN, "nonce": nonce, **body}).encode()
        if key is not None:
            store.put_bytes(k + ".sig", load_private_key(key).signature(k, data))
        store.put_bytes(k, data)
        return k

    unsigned = plant("0" * 16, {}, None)
    stranger = plant("1" * 16, {}, keys["stranger"][0])
    other_run = plant("2" * 16, {"run_id": "another-run"}, keys["b"][0])
    copied = plant("3" * 16, {"nonce": "4" * 16}, keys["b"][0])
    misnamed = plant("5" * 16, {}, keys["b"][0], name=f"runs/{RUN}/requests/please.json")
    got = {r.key: r for r in read_requests(store, RUN, _trust(keys), set())}
    assert all(isinstance(r, RemoteRejected) for r in got.values()), got
    reasons = {k: r.reason for k, r in got.items() if isinstance(r, RemoteRejected)}
    assert "unsigned" in reasons[unsigned]
    assert "does not trust" in reasons[stranger]
    assert "names run 'another-run'" in reasons[other_run]
    assert "nonce is not the one its name carries" in reasons[copied]
    assert "not takeover-<nonce>.json" in reasons[misnamed]


def test_a_withdrawn_request_is_gone(tmp_path: Path, keys: dict[str, tuple[Path, Path]]) -> None:
    store = LocalStore(tmp_path / "repo")
    nonce = write_request([store], load_private_key(keys["b"][0]), RUN, {"user": "bob"})
    withdraw([store], RUN, nonce)
    assert read_requests(store, RUN, _trust(keys), set()) == []


def test_a_journal_position_is_claimed_once(tmp_path: Path, keys: dict[str, tuple[Path, Path]]) -> None:
    store = LocalStore(tmp_path / "repo")
    bob = {"user": "bob", "host": "h2", "pid": 7, "state_dir": "/b"}
    carol = {"user": "carol", "host": "h3", "pid": 8, "state_dir": "/c"}
    claim([store], load_private_key(keys["b"][0]), _trust(keys), RUN, 12, bob)
    with pytest.raises(LockHeld, match=r"taken over by bob@h2 \(pid 7\) first"):
        claim([store], load_private_key(keys["a"][0]), _trust(keys), RUN, 12, carol)
    claim([store], load_private_key(keys["b"][0]), _trust(keys), RUN, 12, {**bob, "pid": 9})  # bob's retry
    claim([store], load_private_key(keys["a"][0]), _trust(keys), RUN, 13, carol)  # a later position is free


def test_a_planted_claim_is_named_as_planted(tmp_path: Path, keys: dict[str, tuple[Path, Path]]) -> None:
    store = LocalStore(tmp_path / "repo")
    store.put_bytes(claim_key(RUN, 5), json.dumps({"user": "mallory", "host": "x", "pid": 1}).encode())
    with pytest.raises(LockHeld, match="not written by a trusted host") as e:
        claim([store], load_private_key(keys["b"][0]), _trust(keys), RUN, 5, {"user": "bob", "host": "h2"})
    assert "remove that object" in (e.value.hint or "")
