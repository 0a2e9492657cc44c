"""Signing (steps.repository.signing): key files and their modes, key ids, every verdict on a signature, the
repository config's `signing:` section, `runbook keys`, and run summaries that are not genuine."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from runbook.errors import Exit, InvalidFile
from steps.repository.config import load_repository_config
from steps.repository.run_summaries import read_summaries, write
from steps.repository.signing import (
    CLOCK_SKEW,
    SIG_SUFFIX,
    SigningError,
    Trust,
    create_key_files,
    future,
    key_id,
    load_private_key,
    load_public_keys,
    signer_from_config,
)
from steps.repository.store import LocalStore
from tests.conftest import run_cli
from tests.support.journals import JournalBuilder
from tests.support.signing import make_keys


def test_a_key_pair_is_made_0600_never_over_an_existing_file_and_its_id_is_the_public_keys_hash(
        tmp_path: Path) -> None:
    signer, pub, line = create_key_files(tmp_path / "k" / "host.key", "a comment")
    assert (tmp_path / "k" / "host.key").stat().st_mode & 0o777 == 0o600
    assert pub == tmp_path / "k" / "host.key.pub" and pub.read_text() == line + "\n"
    assert line.startswith("runbook-ed25519 ") and line.endswith(" a comment")
    (loaded,) = load_public_keys([pub])
    assert loaded.key_id == signer.key_id == load_private_key(tmp_path / "k" / "host.key").key_id
    assert len(signer.key_id) == 16 and key_id(b"\x00" * 32) == "66687aadf862bd77"
    with pytest.raises(SigningError, match="never overwritten"):
        create_key_files(tmp_path / "k" / "host.key")


@pytest.mark.parametrize("mode", [0o640, 0o604, 0o660, 0o644])
def test_a_private_key_others_may_read_is_refused(tmp_path: Path, mode: int) -> None:
    key, _ = make_keys(tmp_path)
    os.chmod(key, mode)
    with pytest.raises(SigningError, match=f"mode {mode:04o}: group or others may read it"):
        load_private_key(key)


@pytest.mark.skipif(os.geteuid() != 0, reason="giving a file to another user needs root")
def test_a_private_key_of_another_user_is_refused(tmp_path: Path) -> None:
    key, _ = make_keys(tmp_path)
    os.chown(key, 65534, 65534)
    with pytest.raises(SigningError, match="belongs to uid 65534"):
        load_private_key(key)


def test_public_keys_others_may_write_are_refused_and_a_bad_line_is_named(tmp_path: Path) -> None:
    _, pub = make_keys(tmp_path, "one")
    make_keys(tmp_path, "two")
    assert len(load_public_keys([pub.parent])) == 2  # a directory: every *.pub
    os.chmod(pub, 0o666)
    with pytest.raises(SigningError, match="writable by group or others"):
        load_public_keys([pub])
    os.chmod(pub, 0o644)
    os.chmod(pub.parent, 0o777)
    with pytest.raises(SigningError, match="writable by group or others"):
        load_public_keys([pub.parent])
    bad = tmp_path / "bad.pub"
    bad.write_text("# a comment\nssh-ed25519 AAAA nope\n")
    with pytest.raises(SigningError, match=r"bad.pub:2: not a public key line"):
        load_public_keys([bad])
    with pytest.raises(SigningError, match="cannot read the public keys"):
        load_public_keys([tmp_path / "missing"])


def test_every_verdict(tmp_path: Path) -> None:
    key, pub = make_keys(tmp_path)
    rogue, _ = make_keys(tmp_path / "elsewhere", "rogue")
    signer, other = load_private_key(key), load_private_key(rogue)
    trust = Trust.of(load_public_keys([pub]))
    name, data = "clusters/1/logical/app/20260101T000000Z/manifest.json", b'{"a": 1}\n'
    sig = signer.signature(name, data)
    assert json.loads(sig)["key_id"] == signer.key_id and sig == json.dumps(json.loads(sig), sort_keys=True,
                                                                             separators=(",", ":")).encode()
    good = trust.verify(name, data, sig)
    assert good.genuine and good.accepted and good.key_id == signer.key_id
    assert not trust.verify(name, data, None).accepted and "unsigned" in trust.verify(name, data, None).reason
    assert "changed after" in trust.verify(name, data + b" ", sig).reason
    assert "is for" in trust.verify(name.replace("20260101", "20270101"), data, sig).reason  # moved elsewhere
    assert "does not trust" in trust.verify(name, data, other.signature(name, data)).reason
    forged = json.loads(sig)
    forged["sha256"] = "0" * 64
    assert "bad signature" in trust.verify(name, data, json.dumps(forged).encode()).reason
    assert "unreadable signature" in trust.verify(name, data, b"not json").reason
    assert "not one this reader knows" in trust.verify(name, data, sig.replace(b'"version":1', b'"version":2')).reason
    lenient = Trust(trust.keys, allow_unsigned=True)
    assert lenient.verify(name, data, None).unsigned_accepted
    assert not lenient.verify(name, data + b" ", sig).accepted  # a bad signature is never let through


def test_the_future_is_beyond_the_clock_skew() -> None:
    from datetime import UTC, datetime, timedelta

    now = datetime(2026, 1, 1, tzinfo=UTC)
    assert not future(now + CLOCK_SKEW, now) and future(now + CLOCK_SKEW + timedelta(seconds=1), now)
    assert timedelta(minutes=5) == CLOCK_SKEW


def test_the_config_names_the_keys_and_refuses_a_private_key_inside_the_repository(tmp_path: Path) -> None:
    key, pub = make_keys(tmp_path)
    cfg = tmp_path / "repo.yaml"
    cfg.write_text(f"version: 1\nlocal: {{path: {tmp_path / 'repo'}}}\nsigning: {{private_key: {key}, public_keys: "
                   f"[{pub}]}}\n")
    loaded, _ = load_repository_config(cfg)
    assert signer_from_config(loaded) is not None
    cfg.write_text(f"version: 1\nlocal: {{path: {tmp_path}}}\nsigning: {{private_key: {key}}}\n")
    with pytest.raises(InvalidFile, match="lies inside the local repository"):
        load_repository_config(cfg)
    cfg.write_text(f"version: 1\nlocal: {{path: {tmp_path / 'repo'}}}\nsigning: {{public_keys: [keys/x.pub]}}\n")
    with pytest.raises(InvalidFile, match="must be absolute"):
        load_repository_config(cfg)
    cfg.write_text(f"version: 1\nlocal: {{path: {tmp_path / 'repo'}}}\n")
    with pytest.raises(SigningError, match="no signing key is configured") as e:
        signer_from_config(load_repository_config(cfg)[0])
    assert e.value.hint and "runbook keys create" in e.value.hint


def test_runbook_keys_create_and_list(tmp_path: Path) -> None:
    out = tmp_path / "keys" / "backup.key"
    r = run_cli("keys", "create", "--out", str(out))
    assert r.returncode == 0, r.stderr
    kid = load_private_key(out).key_id
    assert f"key id {kid}" in r.stdout and "runbook-ed25519 " in r.stdout and f"private_key: {out}" in r.stdout
    again = run_cli("keys", "create", "--out", str(out))
    assert again.returncode == Exit.CANNOT_RUN and "never overwritten" in again.stderr
    cfg = tmp_path / "repo.yaml"
    cfg.write_text(f"version: 1\nlocal: {{path: {tmp_path / 'repo'}}}\nsigning: {{private_key: {out}}}\n")
    listed = run_cli("keys", "list", "-c", str(cfg))
    assert listed.returncode == 1 and "not among the public keys" in listed.stdout and "trusts       nothing" in listed.stdout
    cfg.write_text(f"version: 1\nlocal: {{path: {tmp_path / 'repo'}}}\nsigning: {{private_key: {out}, public_keys: "
                   f"[{out.parent}]}}\n")
    listed = run_cli("keys", "list", "-c", str(cfg))
    assert listed.returncode == 0 and f"trusts       {kid}" in listed.stdout and "(signs here)" in listed.stdout
    # the database host's WAL key, told by its public half; trusted or not
    wal = tmp_path / "wal" / "wal.key"
    assert run_cli("keys", "create", "--out", str(wal)).returncode == 0
    wal_kid = load_private_key(wal).key_id
    base = f"version: 1\nlocal: {{path: {tmp_path / 'repo'}}}\nsigning: {{private_key: {out}, wal_private_key: {wal}, "
    cfg.write_text(base + f"public_keys: [{out.parent}]}}\n")
    listed = run_cli("keys", "list", "-c", str(cfg))
    assert listed.returncode == 1 and f"seals WAL    {wal_kid}" in listed.stdout
    assert "recoveries on this host refuse the WAL it seals" in listed.stdout
    cfg.write_text(base + f"public_keys: [{out.parent}, {wal.parent}]}}\n")
    listed = run_cli("keys", "list", "-c", str(cfg))
    assert listed.returncode == 0 and f"seals WAL    {wal_kid}  {wal}\n" in listed.stdout, listed.stdout


def test_run_summaries_that_are_not_genuine_are_not_read(tmp_path: Path) -> None:
    repo = LocalStore(tmp_path / "repo")
    key, pub = make_keys(tmp_path)
    trust = Trust.of(load_public_keys([pub]))
    b = JournalBuilder(["s"])
    b.shown(0, "s").ran(0, 1, "s")
    st = b.finish(2).state()
    assert write([repo], st, load_private_key(key)) == []
    assert write([repo], st, load_private_key(key)) == []  # a reopened run's own summary, replaced with its signature
    assert [r.run_id for r in read_summaries([repo], trust)] == [st.run_id]
    # A forged drill: unsigned, and a genuine summary's bytes changed under its signature.
    repo.put_bytes("runs/forged.json", json.dumps({"run_id": "forged", "status": "succeeded"}).encode())
    data = repo.get_bytes(f"runs/{st.run_id}.json").replace(b'"succeeded"', b'"failed"')
    repo.delete([f"runs/{st.run_id}.json"])
    repo.put_bytes(f"runs/{st.run_id}.json", data)
    refused: list[str] = []
    assert read_summaries([repo], trust, refused) == []
    assert any("forged.json: unsigned" in r for r in refused) and any("changed after" in r for r in refused)
    assert [r.run_id for r in read_summaries([repo], Trust(trust.keys, allow_unsigned=True))] == ["forged"]
    problems = write([repo], st.__class__(**{**st.__dict__, "run_id": "r2"}), None)
    assert problems and "written unsigned" in problems[0] and not repo.exists("runs/r2.json" + SIG_SUFFIX)


def test_a_key_openssl_made_is_read_and_other_keys_are_refused(tmp_path: Path) -> None:
    import shutil
    import subprocess

    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.hazmat.primitives.serialization import Encoding, NoEncryption, PrivateFormat

    key, _ = make_keys(tmp_path)
    if shutil.which("openssl"):  # the file is what `openssl genpkey -algorithm ed25519` writes, both ways
        out = subprocess.run(["openssl", "pkey", "-in", str(key), "-pubout", "-outform", "DER"], capture_output=True,
                             check=True).stdout
        assert key_id(out[-32:]) == load_private_key(key).key_id
        theirs = tmp_path / "openssl.key"
        subprocess.run(["openssl", "genpkey", "-algorithm", "ed25519", "-out", str(theirs)], check=True)
        os.chmod(theirs, 0o600)
        assert len(load_private_key(theirs).key_id) == 16
    other = tmp_path / "ec.key"
    other.write_bytes(ec.generate_private_key(ec.SECP256R1()).private_bytes(Encoding.PEM, PrivateFormat.PKCS8,
                                                                           NoEncryption()))
    os.chmod(other, 0o600)
    with pytest.raises(SigningError, match="not an unencrypted Ed25519 private key"):
        load_private_key(other)
