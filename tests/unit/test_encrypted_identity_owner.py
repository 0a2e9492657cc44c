"""Who may own an identity file a root reader of logical backups uses (steps.encrypted.reading.Keys): root, and the
PostgreSQL server's user, whose restore_command (wal-fetch) reads the same file on a host that recovers WAL
(steps.crypto.age.load_identities); nobody else, and never a file others may read. The PITR scenario restores the
attachments as root with the identity file restore_command reads."""

from __future__ import annotations

import os
import pwd
from pathlib import Path
from types import SimpleNamespace

import pytest

from steps.crypto.errors import EncryptionError
from steps.crypto.keys import create_identity_file
from steps.encrypted.reading import Keys
from steps.repository.signing import Trust

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="ownership by another user needs root")


def _keys(path: Path) -> Keys:
    cfg = SimpleNamespace(encryption=SimpleNamespace(identity_files=[path]))
    return Keys(cfg, Trust.of([]))  # type: ignore[arg-type]


def _identity(tmp_path: Path, owner: str, mode: int = 0o600) -> tuple[Path, str]:
    ident, _ = create_identity_file(tmp_path / f"{owner}.agekey")
    path = tmp_path / f"{owner}.agekey"
    pw = pwd.getpwnam(owner)
    os.chown(path, pw.pw_uid, pw.pw_gid)
    os.chmod(path, mode)
    return path, ident.recipient


def test_root_reads_the_server_users_identity_file(tmp_path: Path) -> None:
    path, recipient = _identity(tmp_path, "postgres")
    assert [i.recipient for i in _keys(path).ring().identities] == [recipient]


def test_root_refuses_another_users_identity_file(tmp_path: Path) -> None:
    path, _ = _identity(tmp_path, "nobody")
    with pytest.raises(EncryptionError, match=f"the identity file {path} belongs to uid "):
        _keys(path).ring()


def test_root_refuses_the_server_users_identity_file_when_others_may_read_it(tmp_path: Path) -> None:
    path, _ = _identity(tmp_path, "postgres", 0o640)
    with pytest.raises(EncryptionError, match="has mode 0640: group or others may read it"):
        _keys(path).ring()
