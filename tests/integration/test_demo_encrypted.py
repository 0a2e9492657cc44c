"""`runbook demo --headless --yes --encrypt`: both scenarios with the sandbox's repository encrypted (age), end to
end, as CI runs them: the drill, verify-backup, PITR through an encrypted WAL archive and re-protection.

One sandbox directory serves both scenarios, one after the other (scenario 1's tests come first in this file): the
second build is a rebuild, which must keep the operator's key."""

from __future__ import annotations

import json
import os
import pwd
import shutil
import stat
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import yaml

from runbook.journal import read_journal
from steps.sandbox.assetflow import dir_tree_digest
from steps.sandbox.build import DB, Sandbox
from tests.conftest import ROOT, run_cli
from tests.support.pgcluster import make_base_dir
from tests.support.pitr_cluster import server_runbook_fixture  # noqa: F401 - the server venv (archive/restore_command)

AGE_MAGIC = b"age-encryption.org/v1\n"


@dataclass
class Drill:
    sb: Sandbox
    state: Path
    stdout: str
    stderr: str
    returncode: int
    recipient: str  # the operator's public key, as the config names it
    secret: str = field(repr=False)  # the operator's private key line: never in any output (a failing test's either)


@pytest.fixture(scope="module")
def base() -> Iterator[Path]:
    b = make_base_dir("runbook-demo-enc-")
    shutil.copyfile(ROOT / "runbook.yaml", b / "runbook.yaml")  # the demo writes its profile beside the runbook
    try:
        yield b
    finally:
        run_cli("demo", "--down", "--dir", str(b / "sandbox"), timeout=120)
        shutil.rmtree(b, ignore_errors=True)


def _demo(base: Path, server_runbook: str, scenario: str) -> Drill:
    sb = Sandbox(base / "sandbox")
    state = base / f"state-{scenario}"
    r = run_cli("demo", "--headless", "--yes", "--encrypt", "--scenario", scenario, "--runbook",
                str(base / "runbook.yaml"), "--dir", str(sb.base), "--state-dir", str(state), "--files", "5",
                timeout=400, env={"RUNBOOK_SERVER_RUNBOOK": server_runbook})
    key = sb.operator_key
    secret = [ln for ln in key.read_text().splitlines() if ln.startswith("AGE-SECRET-KEY-")][0] if key.exists() else ""
    cfg = yaml.safe_load(sb.config.read_text()) if sb.config.exists() else {}
    recipients = (cfg.get("encryption") or {}).get("recipients") or [""]
    return Drill(sb, state, r.stdout, r.stderr, r.returncode, recipients[0], secret)


@pytest.fixture(scope="module")
def latest(base: Path, server_runbook: str) -> Drill:  # noqa: F811
    return _demo(base, server_runbook, "restore-latest")


@pytest.fixture(scope="module")
def pitr(base: Path, server_runbook: str, latest: Drill) -> Drill:  # noqa: F811
    return _demo(base, server_runbook, "pitr")  # after scenario 1, on the same sandbox: a rebuild


def _ok(d: Drill) -> None:
    assert d.returncode == 0, d.stdout[-5000:] + d.stderr


def _outputs(state: Path) -> dict[tuple[str, str], object]:
    (run_dir,) = (state / "runs").iterdir()
    return {(e["step"], e["name"]): e["value"] for e in read_journal(run_dir / "journal.jsonl").events
            if e["type"] == "step-output"}


def _assert_ciphertext_only(repo: Path) -> int:
    """Every data object of the repository is an age file named .age; no object is stored in clear. Returns how
    many encrypted objects there are."""
    encrypted = 0
    for p in repo.rglob("*"):
        if not p.is_file():
            continue
        rel = p.relative_to(repo)
        if rel.parts[0] == "clusters" and rel.parts[2] in ("logical", "base", "wal") or rel.parts[0] == "files":
            if p.name in ("manifest.json", "manifest.json.sig") or "verifications" in rel.parts:
                continue  # readable by design: names, sizes, sha256s, the epoch (docs/encryption.md)
            assert p.name.endswith(".age"), f"{rel} is stored in clear"
            assert p.read_bytes()[:len(AGE_MAGIC)] == AGE_MAGIC, f"{rel} is not an age file"
            encrypted += 1
    return encrypted


def _assert_secret_nowhere(d: Drill) -> None:
    assert d.secret.startswith("AGE-SECRET-KEY-1")
    assert d.secret not in d.stdout and d.secret not in d.stderr
    assert "AGE-SECRET-KEY" not in d.stdout + d.stderr
    for p in [*d.state.rglob("*"), *d.sb.repo.rglob("*"), d.sb.config]:
        if p.is_file():
            assert d.secret.encode() not in p.read_bytes(), p


def _verified(repo: Path, kind: str) -> list[dict[str, object]]:
    records = [json.loads(p.read_text()) for p in repo.glob(f"clusters/*/{kind}/**/verifications/*.json")]
    return [r for r in records if r.get("level") == "restored" and r.get("passed")]


# ---- scenario 1: restore-latest -----------------------------------------------------------------------------


def test_encrypted_drill_completes_and_says_where_the_key_is(latest: Drill) -> None:
    _ok(latest)
    out = latest.stdout
    assert "demo: measured RTO" in out and "met" in out
    key = latest.sb.operator_key
    assert latest.recipient.startswith("age1")
    assert f"encrypted with age (local.encrypt: true) to the operator's key {latest.recipient}" in out
    assert f"its identity (private key, 0600) is {key}" in out
    assert f"stored encrypted (age) to {latest.recipient}; the operator's key: {key}" in out
    _assert_secret_nowhere(latest)


def test_encrypted_drill_sandbox_config_and_key(latest: Drill) -> None:
    _ok(latest)
    key = latest.sb.operator_key
    st = key.stat()
    assert stat.S_IMODE(st.st_mode) == 0o600 and st.st_uid == os.geteuid()
    assert key.parent == latest.sb.signing_key.parent  # beside the signing keys, outside the sandbox directory
    cfg = yaml.safe_load(latest.sb.config.read_text())
    assert cfg["local"]["encrypt"] is True
    # scenario 1 has no restore_command: the operator's own copy is the identity of the restoring host
    assert cfg["encryption"] == {"recipients": [latest.recipient], "identity_files": [str(key)]}


def test_encrypted_drill_stores_only_ciphertext(latest: Drill) -> None:
    _ok(latest)
    repo = latest.sb.repo
    assert not list(repo.rglob("globals.sql")) and list(repo.rglob("globals.sql.age"))
    dumps = list(repo.glob(f"clusters/*/logical/{DB}/*/dump/*"))
    assert dumps and all(p.name.endswith(".age") and p.read_bytes().startswith(AGE_MAGIC) for p in dumps)
    assert list(repo.glob("files/*/attachments.tar.age"))
    assert _assert_ciphertext_only(repo) > 0


def test_encrypted_drill_restores_verifies_and_reprotects(latest: Drill) -> None:
    _ok(latest)
    sb, repo = latest.sb, latest.sb.repo
    assert sb.table_facts(DB) == json.loads((sb.base / "at-backup.json").read_text())
    assert dir_tree_digest(sb.uploads) == json.loads((sb.base / "attachments-at-backup.json").read_text())
    assert "check decryption: ok" in latest.stdout  # fetch-latest-backup decrypted as it fetched
    # verify-backup before the disaster: the operator's key opened the backup, restored in a throwaway cluster
    outs = _outputs(latest.state)
    old, new = outs[("fetch", "cluster")], outs[("reprotect", "system_identifier")]
    assert [r["backup_id"] for r in _verified(repo, "logical")] == [outs[("fetch", "backup_id")]]
    # re-protection of the new cluster: its WAL, base and logical backups encrypted too
    assert old != new
    assert list((repo / "clusters" / str(new) / "wal").glob("*.zst.age"))
    for kind, out in (("base", "base_backup_id"), (f"logical/{DB}", "logical_backup_id")):
        m = json.loads((repo / "clusters" / str(new) / kind / str(outs[("reprotect", out)]) / "manifest.json")
                       .read_text())
        assert m["encryption"]["epoch"] and all(o["stored_sha256"] for o in m["objects"])
        assert m["encryption"]["recipients"] == [latest.recipient]  # whom it was written for, base and logical


# ---- scenario 2: pitr, on the same sandbox ------------------------------------------------------------------


def test_encrypted_pitr_drill_completes_with_the_same_operator_key(latest: Drill, pitr: Drill) -> None:
    _ok(pitr)
    assert "DROP TABLE maintenance_records" in pitr.stdout and "demo: measured RTO" in pitr.stdout
    assert pitr.recipient == latest.recipient  # the rebuild kept the operator's key
    _assert_secret_nowhere(pitr)


def test_encrypted_pitr_drill_names_the_server_users_copy_of_the_key(pitr: Drill) -> None:
    _ok(pitr)
    cfg = yaml.safe_load(pitr.sb.config.read_text())
    (identity,) = cfg["encryption"]["identity_files"]
    st = Path(identity).stat()
    assert stat.S_IMODE(st.st_mode) == 0o600
    if os.geteuid() == 0:  # the server runs as postgres: restore_command reads a copy of its own
        assert Path(identity) == pitr.sb.server_operator_key
        assert st.st_uid == pwd.getpwnam("postgres").pw_uid
        assert Path(identity).read_bytes() == pitr.sb.operator_key.read_bytes()
        assert f"with the server user's copy for restore_command at {identity}" in pitr.stdout
    else:
        assert Path(identity) == pitr.sb.operator_key


def test_encrypted_pitr_drill_recovers_through_the_encrypted_archive(pitr: Drill) -> None:
    _ok(pitr)
    sb, repo = pitr.sb, pitr.sb.repo
    at_target = json.loads((sb.base / "at-target.json").read_text())
    restored = sb.table_facts(DB)
    assert restored["public.maintenance_records"] == at_target["public.maintenance_records"]
    assert dir_tree_digest(sb.uploads) == json.loads((sb.base / "attachments-at-backup.json").read_text())
    outs = _outputs(pitr.state)
    assert outs[("pitr", "timeline")] == 2
    assert "decrypted (epoch" in pitr.stdout  # the base backup, decrypted as it was fetched
    # every WAL file the recovery read was encrypted: nothing in clear in the archive, old timeline and new
    wal = repo / "clusters" / str(outs[("pitr", "cluster")]) / "wal"
    names = [p.name for p in wal.iterdir()]
    assert any(n.startswith("00000001") for n in names) and "00000002.history.zst.age" in names
    assert all(n.endswith(".age") for n in names)
    assert [r["backup_id"] for r in _verified(repo, "base")] == [outs[("pitr", "backup_id")]]
    assert outs[("reprotect", "protected_at")]
    assert _assert_ciphertext_only(repo) > 0


def test_backups_says_each_base_backup_is_encrypted_and_for_whom(pitr: Drill) -> None:
    _ok(pitr)
    r = run_cli("backups", "-c", str(pitr.sb.config), env={"COLUMNS": "80"}, timeout=120)
    assert r.returncode == 0, r.stdout + r.stderr
    lines = r.stdout.splitlines()
    head = next(i for i, ln in enumerate(lines) if ln.lstrip().startswith("BASE BACKUP"))
    rows = [i for i in range(head + 1, len(lines)) if lines[i].startswith("  20")]
    assert len(rows) == 2  # the one PITR started from, and re-protection's on timeline 2
    for i in rows:
        assert lines[i + 1].strip().startswith("encrypted in local: 1 recipient: " + pitr.recipient[:10]), lines[i + 1]


def test_down_removes_the_operator_key(base: Path, pitr: Drill) -> None:
    keys = pitr.sb.operator_key.parent
    assert keys.exists()
    r = run_cli("demo", "--down", "--dir", str(pitr.sb.base), timeout=120)
    assert r.returncode == 0, r.stderr
    assert not pitr.sb.base.exists() and not keys.exists()
