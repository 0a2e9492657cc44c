"""Encrypted WAL in a local repository, without a server (steps.wal.crypt, steps.wal.archive): what wal-push
stores (`<name>.zst.age`, age to the epoch's data recipient, its claim beside it), what wal-fetch makes of it
(the original bytes; a wrong key, a truncated or altered object stop the recovery, each named), a repository
holding both forms, and a retry of a push the pusher cannot read back."""

from __future__ import annotations

import hashlib
import os
import subprocess
from pathlib import Path

import pytest

from steps.repository.layout import ENCRYPTED_SUFFIX, wal_claims_prefix, wal_key, wal_name_from_key
from steps.wal.archive import EXIT_MISSING, FetchFailed, WalConflict, fetch_file, push_data
from steps.wal.crypt import WalKeys
from steps.wal.settings import WalSettings
from steps.wal.store import LocalWal, keys_to_try
from tests.unit.test_wal_units import fake_segment

SYSID = 7123456789012345678


def segment(n: int) -> str:
    return f"00000001000000000000{n:04X}"


def age_identity(where: Path, name: str) -> tuple[Path, str]:
    """An identity file made by `age-keygen` (mode 0600) and its public key."""
    where.mkdir(parents=True, exist_ok=True)
    path = where / f"{name}.agekey"
    subprocess.run(["age-keygen", "-o", str(path)], check=True, capture_output=True)
    os.chmod(path, 0o600)
    public = subprocess.run(["age-keygen", "-y", str(path)], check=True, capture_output=True, text=True).stdout
    return path, public.strip()


def settings(tmp_path: Path, *, recipients: list[str], identities: list[Path], encrypt: bool = True) -> WalSettings:
    data = {"local": {"path": str(tmp_path / "repo"), "encrypt": encrypt},
            "wal": {"spool_dir": str(tmp_path / "spool"), "prefetch": 0},
            "encryption": {"recipients": recipients, "identity_files": [str(p) for p in identities]},
            "cluster": {"data_directory": str(tmp_path / "data")}}
    return WalSettings(tmp_path / "repository.yaml", data)


@pytest.fixture
def datadir(tmp_path: Path) -> Path:
    """A data directory as far as wal-fetch looks: global/pg_control with the system identifier."""
    (tmp_path / "data" / "global").mkdir(parents=True)
    (tmp_path / "data" / "pg_wal").mkdir()
    (tmp_path / "data" / "global" / "pg_control").write_bytes(SYSID.to_bytes(8, "little") + bytes(100))
    return tmp_path / "data"


def push(s: WalSettings, n: int) -> bytes:
    store = LocalWal(s.local_path, s.encrypt["local"])  # type: ignore[arg-type]
    data = fake_segment(SYSID, n)
    push_data([store], segment(n), data, SYSID, 1, WalKeys(s) if store.encrypt else None)
    return data


def test_an_encrypted_push_stores_age_only_and_fetch_gives_the_bytes_back(tmp_path: Path, datadir: Path) -> None:
    ident, public = age_identity(tmp_path / "keys", "ops")
    s = settings(tmp_path, recipients=[public], identities=[ident])
    data = push(s, 1)
    key = s.local_path / wal_key(str(SYSID), segment(1))  # type: ignore[operator]
    assert not key.exists()
    stored = Path(str(key) + ENCRYPTED_SUFFIX).read_bytes()
    assert stored.startswith(b"age-encryption.org/v1\n")
    assert data[4096:4096 + 64] not in stored  # nothing of the segment in clear
    sha = hashlib.sha256(data).hexdigest()
    assert (s.local_path / wal_claims_prefix(str(SYSID), segment(1)) / sha).exists()  # type: ignore[operator]
    assert wal_name_from_key(str(key) + ENCRYPTED_SUFFIX) == segment(1)
    dest = datadir / "pg_wal" / "RECOVERYXLOG"
    assert fetch_file(s, segment(1), str(dest), sysid=str(SYSID)) == 0
    assert dest.read_bytes() == data
    assert fetch_file(s, segment(2), str(dest), sysid=str(SYSID)) == EXIT_MISSING


def test_a_retry_succeeds_from_its_claim_and_other_content_is_refused(tmp_path: Path) -> None:
    ident, public = age_identity(tmp_path / "keys", "ops")
    s = settings(tmp_path, recipients=[public], identities=[ident])
    push(s, 1)
    stored = Path(str(s.local_path / wal_key(str(SYSID), segment(1))) + ENCRYPTED_SUFFIX)  # type: ignore[operator]
    before = stored.read_bytes()
    store = LocalWal(s.local_path, True)  # type: ignore[arg-type]
    data = fake_segment(SYSID, 1)  # another segment of the same name (other random bytes)
    with pytest.raises(WalConflict, match="DIFFERENT content|two different segments"):
        push_data([store], segment(1), data, SYSID, 1, WalKeys(s))
    assert stored.read_bytes() == before
    # a copy whose claim is gone: nothing says what it holds, so it is not overwritten either
    for c in (s.local_path / wal_claims_prefix(str(SYSID), segment(1))).iterdir():  # type: ignore[operator]
        c.unlink()
    with pytest.raises(WalConflict, match="no claim says what it holds"):
        push_data([store], segment(1), data, SYSID, 1, WalKeys(s))
    assert stored.read_bytes() == before


def test_wrong_key_truncated_and_altered_objects_stop_the_recovery_by_name(tmp_path: Path, datadir: Path) -> None:
    ident, public = age_identity(tmp_path / "keys", "ops")
    other, _ = age_identity(tmp_path / "keys", "someone-else")
    s = settings(tmp_path, recipients=[public], identities=[ident])
    for n in (1, 2, 3):
        push(s, n)
    dest = datadir / "pg_wal" / "RECOVERYXLOG"
    wrong = settings(tmp_path, recipients=[public], identities=[other])
    with pytest.raises(FetchFailed, match="(?i)no identity"):
        fetch_file(wrong, segment(1), str(dest), sysid=str(SYSID))
    assert not dest.exists()
    obj = {n: Path(str(s.local_path / wal_key(str(SYSID), segment(n))) + ENCRYPTED_SUFFIX)  # type: ignore[operator]
           for n in (2, 3)}
    blob = obj[2].read_bytes()
    obj[2].write_bytes(blob[:-100])  # truncated
    with pytest.raises(FetchFailed, match="(?i)truncated|altered"):
        fetch_file(s, segment(2), str(dest), sysid=str(SYSID))
    blob = bytearray(obj[3].read_bytes())
    blob[len(blob) // 2] ^= 0x01  # one flipped byte in the payload
    obj[3].write_bytes(bytes(blob))
    with pytest.raises(FetchFailed, match="(?i)altered"):
        fetch_file(s, segment(3), str(dest), sysid=str(SYSID))
    assert not dest.exists()


def test_a_repository_holding_both_forms_serves_both(tmp_path: Path, datadir: Path) -> None:
    """Encryption turned on mid-life: the old segments stay `<name>.zst`, the new ones are `<name>.zst.age`;
    a reader configured either way finds both, looking first for the form its repository is configured for."""
    ident, public = age_identity(tmp_path / "keys", "ops")
    plain = settings(tmp_path, recipients=[public], identities=[ident], encrypt=False)
    enc = settings(tmp_path, recipients=[public], identities=[ident], encrypt=True)
    old = push(plain, 1)
    new = push(enc, 2)
    # the old segment pushed again after the switch: its unencrypted copy answers, nothing new is written
    store = LocalWal(enc.local_path, True)  # type: ignore[arg-type]
    meta = push_data([store], segment(1), old, SYSID, 1, WalKeys(enc))
    assert meta["stored"] == {"local": "already archived (unencrypted)"}
    assert not Path(str(enc.local_path / wal_key(str(SYSID), segment(1))) + ENCRYPTED_SUFFIX).exists()  # type: ignore[operator]
    assert keys_to_try(store, "k") == ["k.age", "k"] and keys_to_try(LocalWal(Path("/x")), "k") == ["k", "k.age"]
    dest = datadir / "pg_wal" / "RECOVERYXLOG"
    for s in (plain, enc):
        for n, data in ((1, old), (2, new)):
            assert fetch_file(s, segment(n), str(dest), sysid=str(SYSID)) == 0
            assert dest.read_bytes() == data


def test_turning_encryption_on_or_changing_recipients_is_another_destination(tmp_path: Path) -> None:
    """The asynchronous uploader's records name the destination: one started before encryption was turned on
    (or with other recipients) confirms nothing for the new config (steps.wal.fast.confirms)."""
    _, a = age_identity(tmp_path / "keys", "a")
    _, b = age_identity(tmp_path / "keys", "b")
    plain = settings(tmp_path, recipients=[a], identities=[], encrypt=False).destinations
    to_a = settings(tmp_path, recipients=[a], identities=[], encrypt=True).destinations
    to_b = settings(tmp_path, recipients=[b], identities=[], encrypt=True).destinations
    assert len({plain, to_a, to_b}) == 3
    assert '"encrypt":' not in plain  # an unencrypted config's destination is what it always was
