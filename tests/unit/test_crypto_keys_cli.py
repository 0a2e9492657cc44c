"""`runbook keys` for encryption, through the real command line: `create --age` (and files `age-keygen` wrote),
`list` with recipients, identities and the epochs this host opens, `rotate --add`, `revoke` with its typed
confirmation and what it says of its limit. Exit codes are runbook.errors.Exit's."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

from runbook.errors import Exit
from steps.crypto.age import decrypt_bytes, encrypt_bytes, load_identities
from steps.crypto.epochs import EPOCHS, KeyRing, journal, writer_key
from steps.repository.signing import Trust, load_private_key, load_public_keys
from steps.repository.store import LocalStore
from tests.conftest import run_cli
from tests.support.signing import make_keys


def _recipient(pub: Path) -> str:
    return next(ln for ln in pub.read_text().splitlines() if ln and not ln.startswith("#"))


def test_create_age_writes_an_identity_0600_and_its_recipient_and_age_reads_them(tmp_path: Path) -> None:
    out = tmp_path / "keys" / "restore.agekey"
    r = run_cli("keys", "create", "--age", "--out", str(out))
    assert r.returncode == Exit.OK, r.stderr
    assert out.stat().st_mode & 0o777 == 0o600
    recipient = _recipient(out.with_name("restore.agekey.pub"))
    (ident,) = load_identities([out])
    assert ident.recipient == recipient and f"recipient:    {recipient}" in r.stdout
    assert ident.text() not in r.stdout + r.stderr
    assert f"identity_files: [{out}]" in r.stdout and f"recipients: [{recipient}]" in r.stdout
    again = run_cli("keys", "create", "--age", "--out", str(out))
    assert again.returncode == Exit.CANNOT_RUN and "never overwritten" in again.stderr
    age = shutil.which("age")
    assert age, "the age command is missing: scripts/setup.sh installs it"
    ct = subprocess.run([age, "-R", str(out.with_name("restore.agekey.pub"))], input=b"x", capture_output=True,
                        check=True).stdout
    assert decrypt_bytes(ct, ident, "x") == b"x"
    assert subprocess.run([age, "-d", "-i", str(out)], input=encrypt_bytes(b"y", recipient), capture_output=True,
                          check=True).stdout == b"y"


@pytest.fixture
def setup(tmp_path: Path):  # type: ignore[no-untyped-def]
    """A repository with one epoch a writer made, a restoring host's config (its identity made by age-keygen)."""
    priv, pub = make_keys(tmp_path / "sign")
    key = tmp_path / "keys" / "ops.agekey"
    key.parent.mkdir()
    subprocess.run(["age-keygen", "-o", str(key)], check=True, capture_output=True)
    ops = subprocess.run(["age-keygen", "-y", str(key)], check=True, capture_output=True, text=True).stdout.strip()
    repo = LocalStore(tmp_path / "repo")
    repo.check_access()
    wk = writer_key(repo, [ops], tmp_path / "state", load_private_key(priv))
    cfg = tmp_path / "repo.yaml"
    cfg.write_text(f"version: 1\nlocal: {{path: {repo.root}, encrypt: true}}\n"
                   f"signing: {{private_key: {priv}, public_keys: [{pub}]}}\n"
                   f"encryption: {{recipients: [{ops}], identity_files: [{key}]}}\n")
    cfg.chmod(0o600)
    return cfg, repo, wk, ops, key, Trust.of(load_public_keys([pub]))


def test_list_shows_recipients_identities_and_the_epochs_this_host_opens(setup, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    cfg, repo, wk, ops, key, _ = setup
    r = run_cli("keys", "list", "-c", str(cfg))
    assert r.returncode == Exit.OK, r.stdout + r.stderr
    assert "encryption (local encrypted):" in r.stdout and f"encrypts for {ops}" in r.stdout
    assert f"identity     {ops}  {key}:3" in r.stdout
    assert f"epoch {wk.epoch}  opens here" in r.stdout and f"wrapped for {ops};" in r.stdout
    # a host whose identity does not open it is told so, and why
    other = tmp_path / "other.agekey"
    subprocess.run(["age-keygen", "-o", str(other)], check=True, capture_output=True)
    cfg.write_text(cfg.read_text().replace(str(key), str(other)))
    r = run_cli("keys", "list", "-c", str(cfg))
    assert f"epoch {wk.epoch}  cannot open here" in r.stdout and "why: no identity of this host" in r.stdout
    # an identity file others may read: refused by name, exit 3, the key never printed
    other.chmod(0o644)
    r = run_cli("keys", "list", "-c", str(cfg))
    assert r.returncode == Exit.CANNOT_RUN and f"identity file {other} has mode 0644" in r.stdout
    assert "AGE-SECRET-KEY" not in r.stdout + r.stderr


def test_rotate_adds_a_recipient_and_revoke_removes_it_after_typed_confirmation(setup, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    cfg, repo, wk, ops, key, trust = setup
    new = tmp_path / "new.agekey"
    assert run_cli("keys", "create", "--age", "--out", str(new)).returncode == 0
    new_r = _recipient(new.with_name("new.agekey.pub"))
    data = encrypt_bytes(b"rows", wk.data_recipient)
    r = run_cli("keys", "rotate", "-c", str(cfg), "--add", str(new.with_name("new.agekey.pub")))
    assert r.returncode == Exit.OK, r.stdout + r.stderr
    assert "1 epoch(s) re-wrapped" in r.stdout and wk.epoch in r.stdout
    assert decrypt_bytes(data, KeyRing(load_identities([new]), trust).identity_for(repo, wk.epoch), "d") == b"rows"

    refused = run_cli("keys", "revoke", "-c", str(cfg), new_r, input="")  # no terminal: no typed confirmation
    assert refused.returncode == Exit.CANNOT_RUN and "typed confirmation" in refused.stderr
    assert [x.action for x in journal(repo, trust)] == ["create", "rotate"]
    r = run_cli("keys", "revoke", "-c", str(cfg), new_r, "--yes")
    assert r.returncode == Exit.OK, r.stdout + r.stderr
    assert "re-wrapped without it" in r.stdout and "must drop it from encryption.recipients" in r.stdout
    assert "already unwrapped an epoch's data key can still read that epoch's data" in r.stdout
    assert KeyRing(load_identities([new]), trust).can_open(repo, wk.epoch) is not None
    assert len(list((repo.root / EPOCHS / wk.epoch).glob("wrap-*.age"))) == 1

    # revoking the only recipient is refused for that epoch: exit 1, the epoch untouched
    r = run_cli("keys", "revoke", "-c", str(cfg), ops, "--yes")
    assert r.returncode == Exit.WARNING and "is its only recipient" in r.stdout
    assert KeyRing(load_identities([key]), trust).can_open(repo, wk.epoch) is None


def test_rotate_and_revoke_refuse_bad_input_by_name(setup, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    cfg, *_ = setup
    r = run_cli("keys", "rotate", "-c", str(cfg), "--add", "age1nope")
    assert r.returncode == Exit.CANNOT_RUN and "--add[0]" in r.stderr and "Traceback" not in r.stderr
    r = run_cli("keys", "revoke", "-c", str(cfg), "AGE-SECRET-KEY-1QQQQ", "--yes")
    assert r.returncode == Exit.CANNOT_RUN and "private key" in r.stderr and "QQQQ" not in r.stderr
    text = cfg.read_text()  # a writing host: recipients, no identity
    cfg.write_text("\n".join(ln for ln in text.splitlines() if "encryption" not in ln) +
                   f"\nencryption: {{recipients: [{setup[3]}]}}\n")
    r = run_cli("keys", "rotate", "-c", str(cfg), "--add", setup[3])
    assert r.returncode == Exit.CANNOT_RUN and "no age identity" in r.stderr
