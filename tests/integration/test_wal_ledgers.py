"""Signed WAL ledgers against a real PostgreSQL 15 primary that archives through `runbook wal-push`.

The primary's WAL is sealed by the sealer wal-push starts (steps.wal.ledger); the `pitr` action replays only what
the ledgers sign: a segment replaced in the repository after it was archived stops the recovery, naming it; an
archived tail that was never sealed ends the recovery before it (said before the replay) unless `allow_unsigned`
takes it; `verify-backup --kind base` refuses a base backup whose WAL was replaced.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

import pytest

from steps.repository.layout import wal_key
from steps.wal.segment import pack, unpack
from tests.conftest import run_cli
from tests.support.pitr_cluster import (  # noqa: F401 - fixtures
    Primary,
    basebackup,
    make_primary,
    next_dir,
    notes,
    outputs,
    pitr,
    pitr_template_fixture,
    server_runbook_fixture,
    write_rows,
)


@pytest.fixture
def sealed(pg_base: Path, pitr_template: Path, server_runbook: str) -> Primary:
    """A primary whose wal-push seals its WAL, with its spool where the test can see it and a sealer that
    stops a second after its last note."""
    d = next_dir(pg_base)
    p = make_primary(pitr_template, d, venv_runbook=server_runbook,
                     config_lines=(f"wal: {{spool_dir: {d / 'spool'}, worker_idle_s: 1}}",))
    yield p
    p.stop_restored()
    p.crash()


def ledger_entries(p: Primary) -> dict[str, str]:
    out: dict[str, str] = {}
    for f in sorted((p.repo / "clusters" / p.sysid / "wal-ledger").glob("*.json")):
        assert f.with_name(f.name + ".sig").exists(), f"{f.name} has no signature"
        out.update({n: sha for n, sha, _ in json.loads(f.read_text())["files"]})
    return out


def wait_sealed(p: Primary, name: str, timeout: float = 20) -> dict[str, str]:
    deadline = time.monotonic() + timeout
    while True:
        entries = ledger_entries(p) if (p.repo / "clusters" / p.sysid / "wal-ledger").exists() else {}
        if name in entries:
            return entries
        assert time.monotonic() < deadline, f"{name} was not sealed; see {p.repo.parent / 'spool'}"
        time.sleep(0.2)


def forge(p: Primary, name: str) -> None:
    key = p.repo / wal_key(p.sysid, name)
    data, _ = unpack(key.read_bytes(), name)
    forged = bytearray(data)
    forged[8192 * 3: 8192 * 3 + 64] = os.urandom(64)
    blob, _ = pack(name, bytes(forged), system_identifier=int(p.sysid), level=1)
    key.write_bytes(blob)


def last_archived(p: Primary) -> str:
    return p.psql("select last_archived_wal from pg_stat_archiver")


def test_a_replaced_segment_stops_the_recovery_and_fails_the_test_restore(sealed: Primary) -> None:
    p = sealed
    m = basebackup(p)  # waits until the WAL it needs is sealed
    kept = write_rows(p, 3, "kept")
    p.switch_wal()
    entries = wait_sealed(p, last_archived(p))
    # every archived file is in a signed ledger with the sha256 of its original bytes
    for f in (p.repo / "clusters" / p.sysid / "wal").iterdir():
        name = f.name.removesuffix(".zst")
        _, meta = unpack(f.read_bytes(), name)
        assert entries[name] == meta["sha256"], name
    v = run_cli("verify-backup", "-c", str(p.config), "--kind", "base", timeout=180)
    assert v.returncode == 0, v.stdout + v.stderr

    # someone with write access to the repository replaces the segment that holds the rows written after the
    # backup: a valid frame around other bytes (as a forger would write it)
    victim = last_archived(p)
    forge(p, victim)
    p.crash()
    pgdata = p.cluster.datadir.parent / "restored"
    r = pitr(p.pitr_args(pgdata, target_kind="latest"))
    assert r.returncode != 0, r.stdout + r.stderr
    log = (pgdata.parent / f"{pgdata.name}.recovery.log").read_text()
    assert f"refusing {victim}" in log and "not the file the WAL ledgers signed" in log, log[-3000:]
    assert victim in r.stdout + r.stderr  # the failure names it, from the log

    # and the base backup's own WAL: its test restore fails, naming the segment
    forge(p, str(m["start_wal"]))
    v = run_cli("verify-backup", "-c", str(p.config), "--kind", "base", timeout=180)
    assert v.returncode != 0 and "not the one the WAL ledgers signed" in v.stdout + v.stderr, v.stdout + v.stderr
    assert str(m["start_wal"]) in v.stdout + v.stderr
    assert kept  # the rows were written; none of them was replayed from forged WAL


def test_an_unsealed_tail_ends_the_recovery_unless_allow_unsigned(sealed: Primary) -> None:
    p = sealed
    basebackup(p)
    kept = write_rows(p, 3, "kept")
    p.switch_wal()
    wait_sealed(p, last_archived(p))
    spool = p.repo.parent / "spool"
    lock = next(spool.glob("*/seal-*/seal-worker.lock"))
    deadline = time.monotonic() + 20
    while _held(lock):  # the sealer stops after 1 s idle
        assert time.monotonic() < deadline, "the sealer did not stop"
        time.sleep(0.2)
    # the WAL key becomes unreadable: what is archived from now on is never sealed
    wal_key_path = Path(next(line for line in p.config.read_text().split(", ") if "wal_private_key" in line)
                        .split(": ", 1)[1])
    mode = wal_key_path.stat().st_mode & 0o777
    os.chmod(wal_key_path, 0)  # until the end: a sealer started by the tail's push must fail too
    try:
        tail = write_rows(p, 3, "tail")
        p.switch_wal()
        p.crash()

        base = p.cluster.datadir.parent
        r = pitr(p.pitr_args(base / "strict", target_kind="latest"))
        assert r.returncode == 0, r.stdout + r.stderr
        assert notes(base / "strict") == kept  # the replay ended at the newest signed file
        assert "archived WAL file(s) in no signed ledger" in r.stdout, r.stdout
        p.stop_restored()

        r = pitr(p.pitr_args(base / "lenient", target_kind="latest", allow_unsigned=True), timeout=180)
        assert r.returncode == 0, r.stdout + r.stderr
        assert notes(base / "lenient") == kept + tail
        assert "unsigned WAL accepted" in r.stderr and outputs(r)["timeline"] == 2
    finally:
        os.chmod(wal_key_path, mode)


def _held(lock: Path) -> bool:
    import fcntl

    fd = os.open(lock, os.O_RDONLY)
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
    except OSError:
        return True
    finally:
        os.close(fd)
    return False
