"""The backup side's parts that need no server: the config file, the CLI's import hygiene, the globals
splitter, the attachments' path checks, the local store's never-overwrite and verify-on-read, the lock,
and the action registry as the runbook validator sees it."""

from __future__ import annotations

import io
import os
import subprocess
import sys
import tarfile
from pathlib import Path

import pytest

from runbook.errors import Exit, InvalidFile, LockHeld, UsageError
from steps.backup.attachments import AttachmentsError, capture, extract
from steps.backup.globals_sql import split_statements, unquote_ident
from steps.backup.lock import BackupLock
from steps.repository.config import RepositoryConfig, load_repository_config, resolve_config_path
from steps.repository.manifest import FileEntry
from steps.repository.store import CorruptObject, LocalStore, ObjectExists, sha256_file
from tests.conftest import ROOT, run_cli

GOOD = """\
version: 1
cluster: {host: /var/run/postgresql, databases: [assetflow_prod]}
local: {path: /var/backups/postgresql}
s3: {bucket: assetflow-backups, prefix: assetflow, sse: 'aws:kms'}
retention: {keep_last: 7, keep_days: 7}
"""


def test_config_loads_with_defaults(tmp_path: Path) -> None:
    p = tmp_path / "repository.yaml"
    p.write_text(GOOD)
    cfg, path = load_repository_config(p)
    assert path == p and isinstance(cfg, RepositoryConfig)
    assert cfg.backup.jobs == 2 and cfg.backup.compression == 1 and cfg.backup.max_size_drop == 0.5
    assert cfg.s3 is not None and cfg.s3.key_prefix == "assetflow/" and cfg.s3.credentials_file is None


def test_config_problems_are_reported_at_file_line_col(tmp_path: Path) -> None:
    p = tmp_path / "repository.yaml"
    p.write_text(GOOD.replace("retention: {keep_last: 7", "retention: {keep_lats: 7")
                 + "backup: {compression: 12}\n")
    with pytest.raises(InvalidFile) as e:
        load_repository_config(p)
    text = str(e.value)
    assert f"{p}:5:" in text and "keep_lats" in text and "keep_last" in text  # did you mean
    assert f"{p}:6:" in text and "compression" in text
    p.write_text("version: 1\ncluster: {databases: [x]}\n")
    with pytest.raises(InvalidFile) as e:
        load_repository_config(p)
    assert "at least one repository" in str(e.value) and f"{p}:1:" in str(e.value)


def test_config_path_falls_back_to_env_then_etc_never_cwd(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    here = tmp_path / "cwd"
    here.mkdir()
    (here / "repository.yaml").write_text(GOOD)
    monkeypatch.chdir(here)
    env_file = tmp_path / "from-env.yaml"
    env_file.write_text(GOOD)
    monkeypatch.setenv("RUNBOOK_CONFIG", str(env_file))
    assert resolve_config_path(None) == env_file
    assert resolve_config_path(str(here / "repository.yaml")) == here / "repository.yaml"
    monkeypatch.delenv("RUNBOOK_CONFIG")
    monkeypatch.setattr("steps.repository.config.DEFAULT_CONFIG", tmp_path / "etc" / "repository.yaml")
    with pytest.raises(UsageError) as e:
        resolve_config_path(None)
    assert str(tmp_path / "etc" / "repository.yaml") in str(e.value) and "RUNBOOK_CONFIG" in str(e.value)


def test_backup_with_a_bad_config_could_not_run(tmp_path: Path) -> None:
    p = tmp_path / "repository.yaml"
    p.write_text(GOOD + "colour: blue\n")
    proc = run_cli("backup", "-c", str(p))
    assert proc.returncode == Exit.CANNOT_RUN
    assert f"{p}:6:1: unknown key" in proc.stderr and "Traceback" not in proc.stderr
    proc = run_cli("backups", "-c", str(tmp_path / "missing.yaml"))
    assert proc.returncode == Exit.CANNOT_RUN and "does not exist" in proc.stderr and "Traceback" not in proc.stderr


def test_the_cli_imports_neither_boto3_psycopg_nor_cryptography() -> None:
    code = ("import sys, runbook.cli.main, runbook.cli.backup, steps.registry; runbook.cli.main.build_parser(); "
            "print(sorted(m for m in sys.modules if m.split('.')[0] in ('boto3', 'botocore', 'psycopg', "
            "'cryptography')))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, check=True)
    assert out.stdout.strip() == "[]"
    help_ = run_cli("--help")
    assert all(cmd in help_.stdout for cmd in ("backup", "backups", "prune"))


def test_globals_are_split_into_statements() -> None:
    sql = r"""--
-- PostgreSQL database cluster dump
--

\restrict AbC123

SET default_transaction_read_only = off;
CREATE ROLE "Odd ""Name";
ALTER ROLE "Odd ""Name" WITH LOGIN PASSWORD 'SCRAM-SHA-256$4096:abc;def$x';
COMMENT ON ROLE app IS 'it''s; fine -- really';
CREATE FUNCTION f() RETURNS int AS $fn$ select 1; $fn$ LANGUAGE sql;
/* block; comment */ GRANT a TO b GRANTED BY postgres;

\unrestrict AbC123
"""
    stmts = split_statements(sql)
    assert stmts == [
        "SET default_transaction_read_only = off;",
        'CREATE ROLE "Odd ""Name";',
        "ALTER ROLE \"Odd \"\"Name\" WITH LOGIN PASSWORD 'SCRAM-SHA-256$4096:abc;def$x';",
        "COMMENT ON ROLE app IS 'it''s; fine -- really';",
        "CREATE FUNCTION f() RETURNS int AS $fn$ select 1; $fn$ LANGUAGE sql;",
        "GRANT a TO b GRANTED BY postgres;",
    ]
    assert unquote_ident('"Odd ""Name"') == 'Odd "Name' and unquote_ident("App") == "app"


def _tar_with(tmp_path: Path, members: list[tarfile.TarInfo], data: bytes = b"x") -> Path:
    p = tmp_path / "evil.tar"
    with tarfile.open(p, "w") as tar:
        for m in members:
            tar.addfile(m, io.BytesIO(data) if m.isfile() else None)
    return p


@pytest.mark.parametrize("name", ["../escape.txt", "/etc/evil", "a/../../b"])
def test_attachments_refuse_path_traversal(tmp_path: Path, name: str) -> None:
    info = tarfile.TarInfo(name)
    info.size = 1
    tar = _tar_with(tmp_path, [info])
    dest = tmp_path / "dest"
    entry = FileEntry(path=name, size=1, sha256="0" * 64, mode=0o644, mtime=0)
    with pytest.raises(AttachmentsError, match="unsafe path"):
        extract(tar, [entry], dest)
    assert not (tmp_path / "escape.txt").exists() and not dest.exists()


def test_attachments_refuse_links_and_unlisted_files(tmp_path: Path) -> None:
    link = tarfile.TarInfo("uploads/link")
    link.type = tarfile.SYMTYPE
    link.linkname = "/etc/passwd"
    with pytest.raises(AttachmentsError, match="not a plain file"):
        extract(_tar_with(tmp_path, [link]), [], tmp_path / "d1")
    extra = tarfile.TarInfo("extra.txt")
    extra.size = 1
    with pytest.raises(AttachmentsError, match="not in its manifest"):
        extract(_tar_with(tmp_path, [extra]), [], tmp_path / "d2")
    assert not (tmp_path / "d1").exists() and not (tmp_path / "d2").exists()


def test_attachments_capture_skips_symlinks_and_detects_a_changed_file(tmp_path: Path) -> None:
    src = tmp_path / "src"
    src.mkdir()
    (src / "a.txt").write_text("a")
    (src / "link").symlink_to("/etc/passwd")
    cap = capture(src, tmp_path / "a.tar")
    assert [f.path for f in cap.files] == ["a.txt"] and cap.skipped == ["link"]
    dest = tmp_path / "dest"
    wrong = [cap.files[0].model_copy(update={"sha256": "0" * 64})]
    with pytest.raises(AttachmentsError, match="does not match its sha256"):
        extract(tmp_path / "a.tar", wrong, dest)
    with pytest.raises(AttachmentsError, match="does not exist"):
        capture(tmp_path / "nope", tmp_path / "b.tar")


def test_local_store_never_overwrites_and_verifies_on_read(tmp_path: Path) -> None:
    store = LocalStore(tmp_path / "repo")
    store.check_access()
    src = tmp_path / "obj"
    src.write_bytes(b"backup bytes")
    store.put_file("clusters/1/logical/db/x/dump/toc.dat", src)
    store.put_bytes("clusters/1/logical/db/x/manifest.json", b"{}")
    with pytest.raises(ObjectExists):
        store.put_bytes("clusters/1/logical/db/x/manifest.json", b"{ }")
    other = tmp_path / "other"
    other.write_bytes(b"different")
    with pytest.raises(ObjectExists):
        store.put_file("clusters/1/logical/db/x/dump/toc.dat", other)
    assert store.get_bytes("clusters/1/logical/db/x/manifest.json") == b"{}"
    assert (tmp_path / "repo/clusters/1/logical/db/x/dump/toc.dat").read_bytes() == b"backup bytes"
    size, digest = sha256_file(src)
    out = tmp_path / "out" / "toc.dat"
    store.fetch_file("clusters/1/logical/db/x/dump/toc.dat", out, size=size, sha256=digest)
    assert out.read_bytes() == b"backup bytes"
    with pytest.raises(CorruptObject, match="clusters/1/logical/db/x/dump/toc.dat"):
        store.fetch_file("clusters/1/logical/db/x/dump/toc.dat", tmp_path / "bad", size=size, sha256="1" * 64)
    assert not (tmp_path / "bad").exists()
    (tmp_path / "repo" / ".staging").mkdir()
    assert store.list_dirs("") == ["clusters"]
    with pytest.raises(ValueError):
        store.get_bytes("../outside")


def test_backup_lock_is_exclusive(tmp_path: Path) -> None:
    first = BackupLock.take(tmp_path, "host:5432/app")
    first.record("20261125T020000Z")
    try:
        with pytest.raises(LockHeld, match="already running: pid"):
            BackupLock.take(tmp_path, "host:5432/app")
        other = BackupLock.take(tmp_path, "host:5432/other")
        other.release()
    finally:
        first.release()
    again = BackupLock.take(tmp_path, "host:5432/app")
    assert again.last_id == "20261125T020000Z"
    again.release()
    assert os.listdir(tmp_path)


def test_actions_are_registered_and_validated_in_a_runbook() -> None:
    from runbook.loader import load_runbook_text
    from steps.registry import ACTIONS

    assert set(ACTIONS["fetch-latest-backup"].outputs) >= {"backup_dir", "backup_id", "snapshot_time", "db",
                                                          "cluster", "size_bytes"}
    assert set(ACTIONS["restore-logical"].outputs) >= {"restored_db", "duration_s"}
    assert "files" in ACTIONS["restore-attachments"].outputs
    text = """
version: 1
name: t
steps:
  - id: fetch
    action: fetch-latest-backup
    with: {db: app, dest: /var/tmp/r, from: s3}
  - id: restore
    action: restore-logical
    with: {backup_dir: "{{ steps.fetch.backup_dir }}", db: app_new, jobs: 4}
  - id: files
    action: restore-attachments
    with: {dest: /srv/uploads, backup_id: "{{ steps.fetch.backup_id }}"}
"""
    rb = load_runbook_text(text)
    assert [s.id for s in rb.steps] == ["fetch", "restore", "files"]
    with pytest.raises(InvalidFile) as e:
        load_runbook_text(text.replace("from: s3", "from: tape").replace("jobs: 4", "jbos: 4"))
    assert "<string>:7:" in str(e.value) and "<string>:10:" in str(e.value)
