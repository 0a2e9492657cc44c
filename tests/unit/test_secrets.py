"""The secrets env file: refused when missing or readable by others; values mapped to libpq; names only shown."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from runbook.errors import SecretsError
from runbook.model import Secrets
from runbook.secrets import load_secrets


def _env(tmp_path: Path, text: str, mode: int = 0o600) -> Path:
    p = tmp_path / "db.env"
    p.write_text(text)
    os.chmod(p, mode)
    return p


def test_maps_the_plans_names_to_libpq(tmp_path: Path) -> None:
    p = _env(tmp_path, "# comment\nDB_HOST=db1\nexport DB_PORT=5433\nDB_USER='backup'\nDB_PASSWORD=\"p@ss w0rd\"\n")
    s = load_secrets(Secrets(env_file=str(p)), tmp_path)
    assert s.env["PGHOST"] == "db1" and s.env["PGPORT"] == "5433"
    assert s.env["PGUSER"] == "backup" and s.env["PGPASSWORD"] == "p@ss w0rd"
    assert s.redact == ["p@ss w0rd"]  # a user name, a host and a port are no secrets
    assert s.keys == ["DB_HOST", "DB_PASSWORD", "DB_PORT", "DB_USER"]


def test_world_readable_file_is_refused_with_chmod_hint(tmp_path: Path) -> None:
    p = _env(tmp_path, "DB_PASSWORD=x\n", 0o644)
    with pytest.raises(SecretsError) as err:
        load_secrets(Secrets(env_file=str(p)), tmp_path)
    assert str(p) in str(err.value) and "chmod 600" in str(err.value)


def test_group_readable_file_is_refused(tmp_path: Path) -> None:
    p = _env(tmp_path, "DB_PASSWORD=x\n", 0o640)
    with pytest.raises(SecretsError):
        load_secrets(Secrets(env_file=str(p)), tmp_path)


def test_missing_file_is_refused_with_what_to_do(tmp_path: Path) -> None:
    with pytest.raises(SecretsError) as err:
        load_secrets(Secrets(env_file=str(tmp_path / "nope.env")), tmp_path)
    assert "does not exist" in str(err.value) and "chmod 600" in str(err.value)


def test_bad_line_is_reported_by_number_never_by_content(tmp_path: Path) -> None:
    p = _env(tmp_path, "DB_HOST=x\nthis-is-the-password-oops\n")
    with pytest.raises(SecretsError) as err:
        load_secrets(Secrets(env_file=str(p)), tmp_path)
    assert ":2:" in str(err.value)
    assert "oops" not in str(err.value)


def test_required_keys(tmp_path: Path) -> None:
    p = _env(tmp_path, "DB_HOST=x\n")
    with pytest.raises(SecretsError) as err:
        load_secrets(Secrets(env_file=str(p), required=["DB_PASSWORD"]), tmp_path)
    assert "DB_PASSWORD" in str(err.value)
