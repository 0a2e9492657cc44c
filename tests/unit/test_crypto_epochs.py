"""The envelope (steps.crypto.epochs) on a local repository: writers create and keep an epoch, readers open it
with their identities and the signing keys they trust, rotation and revocation re-wrap without touching data,
and a repository written by an attacker gets nowhere: a planted epoch never redirects a writer, a wrap that holds
another key, a forged or unsigned epoch, a wrap that is a link, oversized or garbage are each refused by name,
without a traceback. The same on S3: tests/integration/test_crypto_epochs_s3.py."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import pytest

from steps.crypto.age import decrypt_bytes, encrypt_bytes, generate_identity, parse_identity
from steps.crypto.epochs import (
    EPOCHS,
    JOURNAL,
    KeyRing,
    create_epoch,
    journal,
    list_epochs,
    revoke,
    revoked,
    rotate,
    writer_key,
)
from steps.crypto.errors import EncryptionError, EpochRefused, NoIdentity
from steps.repository.signing import SIG_SUFFIX, Trust, load_private_key, load_public_keys
from steps.repository.store import LocalStore
from tests.support.signing import make_keys


def _ident() -> tuple[object, str]:
    secret, recipient = generate_identity()
    return parse_identity(secret, f"/keys/{recipient[-6:]}.agekey:1"), recipient


def _one_wrap(store: LocalStore, signer: object) -> tuple[object, str, Any, Path]:
    """An epoch made for one new identity: the identity, its recipient, the epoch and its one wrap file."""
    ops, r_ops = _ident()
    key = create_epoch(store, [r_ops], signer)  # type: ignore[arg-type]
    (wrap,) = (store.root / EPOCHS / key.epoch).glob("wrap-*.age")
    return ops, r_ops, key, wrap


@pytest.fixture
def keys(tmp_path: Path):  # type: ignore[no-untyped-def]
    priv, pub = make_keys(tmp_path / "sign")
    return load_private_key(priv), Trust.of(load_public_keys([pub]))


@pytest.fixture
def store(tmp_path: Path) -> LocalStore:
    s = LocalStore(tmp_path / "repo")
    s.check_access()
    return s


def _epoch_files(store: LocalStore, epoch: str) -> list[str]:
    return sorted(p.name for p in (store.root / EPOCHS / epoch).iterdir())


def test_a_writer_creates_one_epoch_keeps_it_and_a_reader_opens_it(store: LocalStore, tmp_path: Path,
                                                                   keys) -> None:  # type: ignore[no-untyped-def]
    signer, trust = keys
    ops, r_ops = _ident()
    state = tmp_path / "state"
    key = writer_key(store, [r_ops], state, signer)
    assert writer_key(store, [r_ops], state, signer) == key  # kept: no second epoch
    assert [e.epoch for e in list_epochs(store, trust)] == [key.epoch]
    files = _epoch_files(store, key.epoch)
    assert files[:2] == ["epoch.json", "epoch.json.sig"] and len(files) == 5  # + wrap .age, .json, .json.sig
    meta = json.loads((store.root / EPOCHS / key.epoch / "epoch.json").read_bytes())
    assert meta["data_recipient"] == key.data_recipient and meta["recipients"] == [r_ops]
    cache = state / "encryption"
    assert oct(cache.stat().st_mode & 0o777) == "0o700"
    (cached,) = cache.glob("*.json")
    assert oct(cached.stat().st_mode & 0o777) == "0o600"
    assert "AGE-SECRET-KEY" not in cached.read_text()  # the writer keeps no private key
    for p in store.root.rglob("*"):
        if p.is_file() and not p.name.endswith(".age"):
            assert "AGE-SECRET-KEY" not in p.read_text()

    ring = KeyRing([ops], trust)  # type: ignore[list-item]
    data_ident = ring.identity_for(store, key.epoch)
    assert data_ident.recipient == key.data_recipient
    obj = encrypt_bytes(b"rows", key.data_recipient)
    assert decrypt_bytes(obj, data_ident, "dump") == b"rows"
    (rec,) = journal(store, trust)
    assert (rec.action, rec.epochs, rec.added) == ("create", [key.epoch], [r_ops])


def test_a_new_epoch_when_the_recipients_change_or_the_epoch_is_gone(store: LocalStore, tmp_path: Path,
                                                                     keys) -> None:  # type: ignore[no-untyped-def]
    signer, trust = keys
    _, r1 = _ident()
    _, r2 = _ident()
    state = tmp_path / "state"
    k1 = writer_key(store, [r1], state, signer)
    k2 = writer_key(store, [r1, r2], state, signer)
    assert k2.epoch != k1.epoch and k2.data_recipient != k1.data_recipient
    assert writer_key(store, [r2, r1], state, signer) == k2  # the same set, in another order
    store.remove_tree(f"{EPOCHS}{k2.epoch}")
    k3 = writer_key(store, [r1, r2], state, signer)
    assert k3.epoch not in (k1.epoch, k2.epoch)
    # with recheck_s, a writer trusts its cache for that long without looking (the WAL's hot path)
    store.remove_tree(f"{EPOCHS}{k3.epoch}")
    assert writer_key(store, [r1, r2], state, signer, recheck_s=3600) == k3
    assert writer_key(store, [r1, r2], state, signer).epoch != k3.epoch


def test_a_planted_epoch_never_redirects_a_writer(store: LocalStore, tmp_path: Path,
                                                 keys) -> None:  # type: ignore[no-untyped-def]
    signer, _ = keys
    _, r_ops = _ident()
    _, r_attacker = _ident()
    # The attacker writes a whole epoch (with a newer id) to their own key, for our recipients, unsigned
    planted = create_epoch(store, [r_ops], None)
    meta_path = store.root / EPOCHS / planted.epoch / "epoch.json"
    meta = json.loads(meta_path.read_bytes())
    assert meta["recipients"] == [r_ops]
    key = writer_key(store, [r_ops], tmp_path / "state", signer)
    assert key.data_recipient != planted.data_recipient and key.epoch != planted.epoch
    # ... and a state cache the attacker cannot reach is all a writer trusts: a later call keeps its own epoch
    meta["data_recipient"] = r_attacker
    os.chmod(meta_path, 0o644)
    meta_path.write_text(json.dumps(meta))
    assert writer_key(store, [r_ops], tmp_path / "state", signer) == key


def test_forged_unsigned_and_copied_epochs_are_refused_by_name(store: LocalStore, tmp_path: Path,
                                                              keys) -> None:  # type: ignore[no-untyped-def]
    signer, trust = keys
    ops, r_ops = _ident()
    unsigned = create_epoch(store, [r_ops], None)
    with pytest.raises(EpochRefused, match=rf"epoch {unsigned.epoch} .* is refused: unsigned"):
        KeyRing([ops], trust).identity_for(store, unsigned.epoch)  # type: ignore[list-item]
    # accepted unsigned only when asked (a repository written before signing)
    assert KeyRing([ops], trust, allow_unsigned=True).identity_for(  # type: ignore[list-item]
        store, unsigned.epoch).recipient == unsigned.data_recipient

    good = writer_key(store, [r_ops], tmp_path / "state", signer)
    path = store.root / EPOCHS / good.epoch / "epoch.json"
    meta = json.loads(path.read_bytes())
    meta["recipients"] = [r_ops, _ident()[1]]
    os.chmod(path, 0o644)
    path.write_text(json.dumps(meta))
    with pytest.raises(EpochRefused, match="changed after key .* signed them"):
        KeyRing([ops], trust, allow_unsigned=True).identity_for(store, good.epoch)  # type: ignore[list-item]

    other_priv, _ = make_keys(tmp_path / "other", "attacker")
    forged = create_epoch(store, [r_ops], load_private_key(other_priv))
    with pytest.raises(EpochRefused, match="which this host does not trust"):
        KeyRing([ops], trust).identity_for(store, forged.epoch)  # type: ignore[list-item]

    with pytest.raises(EpochRefused, match="not an epoch id"):
        KeyRing([ops], trust).identity_for(store, "../../etc")  # type: ignore[list-item]
    with pytest.raises(EncryptionError, match="is not in local repository"):
        KeyRing([ops], trust).identity_for(store, "20260101T000000Z-0123abcd")  # type: ignore[list-item]


def test_a_wrap_holding_another_key_than_the_data_recipient_is_refused(store: LocalStore,
                                                                      keys) -> None:  # type: ignore[no-untyped-def]
    signer, trust = keys
    ops, r_ops, key, wrap = _one_wrap(store, signer)
    # The attacker replaces the wrap with one of their key (to our recipient), and fixes the sidecar's sha256:
    # the sidecar's signature no longer holds
    evil_secret, _ = generate_identity()
    evil = encrypt_bytes((evil_secret + "\n").encode(), r_ops)
    side = wrap.with_suffix(".json")
    meta = json.loads(side.read_bytes())
    import hashlib

    meta["sha256"] = hashlib.sha256(evil).hexdigest()
    for p, data in ((wrap, evil), (side, json.dumps(meta).encode())):
        os.chmod(p, 0o644)
        p.write_bytes(data)
    with pytest.raises(EpochRefused, match="changed after key"):
        KeyRing([ops], trust).identity_for(store, key.epoch)  # type: ignore[list-item]
    # Unsigned (allowed): the bytes match their sidecar, but the key inside is not the epoch's
    os.unlink(str(side) + SIG_SUFFIX)
    with pytest.raises(EpochRefused, match=rf"the wrapped key of epoch {key.epoch} .* does not match its data "
                                           "recipient"):
        KeyRing([ops], trust, allow_unsigned=True).identity_for(store, key.epoch)  # type: ignore[list-item]


@pytest.mark.parametrize("kind", ["symlink", "oversized", "garbage", "directory", "fifo", "no sidecar"])
def test_a_bad_wrap_file_is_refused_without_a_traceback(store: LocalStore, tmp_path: Path, kind: str,
                                                        keys) -> None:  # type: ignore[no-untyped-def]
    signer, trust = keys
    ops, r_ops, key, wrap = _one_wrap(store, signer)
    os.unlink(wrap)
    if kind == "symlink":
        target = tmp_path / "elsewhere.age"
        target.write_bytes(b"x")
        wrap.symlink_to(target)
        reason = "symbolic link"
    elif kind == "oversized":
        wrap.write_bytes(os.urandom(200_000))
        reason = "larger than any key object"
    elif kind == "garbage":
        wrap.write_bytes(b"\x00garbage" * 100)
        reason = "not those its sidecar vouches for"
    elif kind == "directory":
        wrap.mkdir()
        (wrap / "x").write_bytes(b"x")
        reason = "has no wrapped key"
    elif kind == "fifo":
        os.mkfifo(wrap)
        reason = "not a regular file"
    else:
        os.unlink(wrap.with_suffix(".json"))
        os.unlink(str(wrap.with_suffix(".json")) + SIG_SUFFIX)
        wrap.write_bytes(b"x")
        reason = "no sidecar"
    ring = KeyRing([ops], trust)  # type: ignore[list-item]
    with pytest.raises((EpochRefused, NoIdentity), match=reason) as e:
        ring.identity_for(store, key.epoch)
    assert "Traceback" not in str(e.value)
    assert ring.can_open(store, key.epoch) is not None


def test_a_host_without_an_opening_identity_is_told_whom_the_epoch_is_wrapped_for(
        store: LocalStore, keys) -> None:  # type: ignore[no-untyped-def]
    signer, trust = keys
    _, r_ops = _ident()
    other, _ = _ident()
    key = create_epoch(store, [r_ops], signer)
    with pytest.raises(NoIdentity) as e:
        KeyRing([other], trust).identity_for(store, key.epoch)  # type: ignore[list-item]
    msg = str(e.value)
    assert f"opens epoch {key.epoch}, wrapped for {r_ops}" in msg and "/keys/" in msg and "keys rotate" in msg


def test_rotation_adds_a_recipient_without_rewriting_data_and_revocation_removes_one(
        store: LocalStore, tmp_path: Path, keys) -> None:  # type: ignore[no-untyped-def]
    signer, trust = keys
    ops, r_ops = _ident()
    new, r_new = _ident()
    gone, r_gone = _ident()
    state = tmp_path / "state"
    k1 = writer_key(store, [r_ops, r_gone], state, signer)
    store.put_bytes("data/obj.age", encrypt_bytes(b"one", k1.data_recipient))
    k2 = writer_key(store, [r_ops], state, signer)
    before = {p: p.read_bytes() for p in (store.root / "data").rglob("*")}

    with pytest.raises(NoIdentity):
        KeyRing([new], trust).identity_for(store, k1.epoch)  # type: ignore[list-item]
    rec = rotate(store, KeyRing([ops], trust), [r_new], signer)  # type: ignore[list-item]
    assert sorted(rec.epochs) == sorted([k1.epoch, k2.epoch]) and rec.added == [r_new] and not rec.skipped
    assert KeyRing([new], trust).identity_for(store, k1.epoch).recipient == k1.data_recipient  # type: ignore[list-item]
    assert {p: p.read_bytes() for p in (store.root / "data").rglob("*")} == before  # data untouched
    (e1,) = [e for e in list_epochs(store, trust) if e.epoch == k1.epoch]
    assert len(e1.wraps) == 2 and set(e1.recipients) == {r_ops, r_gone, r_new}
    again = rotate(store, KeyRing([ops], trust), [r_new], signer)  # type: ignore[list-item]
    assert again.epochs == []  # nothing to add

    assert KeyRing([gone], trust).identity_for(store, k1.epoch)  # type: ignore[list-item]
    rec = revoke(store, KeyRing([ops], trust), r_gone, signer)  # type: ignore[list-item]
    assert rec.epochs == [k1.epoch] and rec.removed == [r_gone]  # k2 was never wrapped for it
    with pytest.raises(NoIdentity):
        KeyRing([gone], trust).identity_for(store, k1.epoch)  # type: ignore[list-item]
    (e1,) = [e for e in list_epochs(store, trust) if e.epoch == k1.epoch]
    assert len(e1.wraps) == 1 and set(e1.recipients) == {r_ops, r_new}
    for ident in (ops, new):
        assert KeyRing([ident], trust).identity_for(store, k1.epoch).recipient == k1.data_recipient  # type: ignore[list-item]
    assert r_gone in revoked(store, trust)
    actions = [r.action for r in journal(store, trust)]
    assert actions == ["create", "create", "rotate", "rotate", "revoke"]
    assert all((store.root / r.key).with_name((store.root / r.key).name + SIG_SUFFIX).exists()
               for r in journal(store, trust))
    assert all(k.startswith(JOURNAL) for k in (r.key for r in journal(store, trust)))


def test_revoking_the_only_recipient_and_an_epoch_this_host_cannot_open_are_skipped_and_said(
        store: LocalStore, keys) -> None:  # type: ignore[no-untyped-def]
    signer, trust = keys
    ops, r_ops = _ident()
    _, r_far = _ident()
    only = create_epoch(store, [r_ops], signer)
    far = create_epoch(store, [r_far, r_ops], signer)
    foreign = create_epoch(store, [r_far], signer)
    rec = revoke(store, KeyRing([ops], trust), r_ops, signer)  # type: ignore[list-item]
    assert rec.epochs == [far.epoch]
    assert "its only recipient" in rec.skipped[only.epoch]
    assert foreign.epoch not in rec.skipped  # never wrapped for r_ops: not concerned
    rec = revoke(store, KeyRing([ops], trust), r_far, signer)  # type: ignore[list-item]
    assert "no identity of this host" in rec.skipped[foreign.epoch]


def test_rotation_of_an_unsigned_repository_never_rewraps_to_a_recipient_only_a_planted_sidecar_names(
        store: LocalStore, keys) -> None:  # type: ignore[no-untyped-def]
    import hashlib
    import shutil

    _, trust = keys
    ops, r_ops = _ident()
    attacker, r_attacker = _ident()
    _, r_new = _ident()
    key = create_epoch(store, [r_ops], None)  # written without signing, read with allow_unsigned
    d = store.root / EPOCHS / key.epoch
    (wrap,) = d.glob("wrap-*.age")
    planted = d / "wrap-29991231T000000.000000Z.age"  # the genuine wrap's bytes under a newer name ...
    shutil.copy(wrap, planted)
    (d / "wrap-29991231T000000.000000Z.json").write_text(json.dumps({  # ... said to be for the attacker too
        "format_version": 1, "epoch": key.epoch, "wrap": planted.name, "recipients": [r_ops, r_attacker],
        "sha256": hashlib.sha256(planted.read_bytes()).hexdigest()}))
    ring = KeyRing([ops], trust, allow_unsigned=True)  # type: ignore[list-item]
    assert ring.open(store, key.epoch).wrap == planted.name  # it does open: the bytes are genuine
    rec = rotate(store, ring, [r_new], None, configured=[r_ops])
    assert rec.epochs == [key.epoch] and rec.dropped == {key.epoch: [r_attacker]}
    newest = max(d.glob("wrap-2026*.json"))
    assert json.loads(newest.read_text())["recipients"] == [r_ops, r_new]
    newest_wrap = newest.with_suffix(".age")
    with pytest.raises(NoIdentity):
        decrypt_bytes(newest_wrap.read_bytes(), attacker, "wrap")  # type: ignore[arg-type]
    # revocation deletes the planted wrap with every other one
    revoke(store, KeyRing([ops], trust, allow_unsigned=True), r_new, None,  # type: ignore[list-item]
           configured=[r_ops])
    assert sorted(p.name for p in d.glob("wrap-*.age")) == [max(d.glob("wrap-2026*.age")).name]


def test_a_host_the_epoch_is_not_wrapped_for_hears_no_identity_even_beside_a_planted_wrap(
        store: LocalStore, keys) -> None:  # type: ignore[no-untyped-def]
    signer, trust = keys
    ops, r_ops = _ident()
    stranger, _ = _ident()
    key = create_epoch(store, [r_ops], signer)
    (store.root / EPOCHS / key.epoch / "wrap-29991231T000000.000000Z.age").write_bytes(b"planted")
    with pytest.raises(NoIdentity, match=r"wrapped for .* \(and refused: wrap-2999.*no sidecar"):
        KeyRing([stranger], trust).identity_for(store, key.epoch)  # type: ignore[list-item]
    assert KeyRing([ops], trust).identity_for(store, key.epoch).recipient == key.data_recipient  # type: ignore[list-item]
