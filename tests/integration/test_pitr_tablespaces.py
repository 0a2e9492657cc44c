"""PITR and verify-backup of a cluster with a tablespace, against real PostgreSQL 15 clusters.

The primary keeps a table and its indexes in a tablespace outside its data directory and archives its WAL
with `runbook wal-push`; `runbook basebackup` writes `base.tar.zst` plus `<oid>.tar.zst`. The `pitr` action
restores into a new data directory **while the primary still runs**: the tablespace must land in a new
directory (the default, or the `tablespaces` mapping), never in the primary's, which must stay untouched.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.conftest import run_cli
from tests.support.pgcluster import chown_server_user
from tests.support.pitr_cluster import (  # noqa: F401 - fixtures
    Primary,
    basebackup,
    make_primary,
    next_dir,
    outputs,
    pitr,
    pitr_template_fixture,
    restored_psql,
    server_runbook_fixture,
)


@dataclass
class TsPrimary:
    p: Primary
    ts_dir: Path  # the primary's tablespace directory (in use during every recovery below)
    oid: str
    base: dict[str, object]  # the base backup's manifest.json
    before: list[str]  # rows written before the base backup


def hot_rows(p: Primary, n: int, note: str) -> list[str]:
    notes = []
    for i in range(n):
        p.psql(f"INSERT INTO hot (note) VALUES ('{note}-{i}')")
        notes.append(f"{note}-{i}")
    return notes


def snapshot(d: Path) -> dict[str, tuple[int, int]]:
    """Every file and directory under d: (size, mtime in ns)."""
    out = {".": (0, d.stat().st_mtime_ns)}
    for root, dirs, files in os.walk(d):
        for name in dirs + files:
            path = Path(root) / name
            st = path.lstat()
            out[str(path.relative_to(d))] = (st.st_size, st.st_mtime_ns)
    return out


def restored_notes(pgdata: Path) -> list[str]:
    out = restored_psql(pgdata, "select coalesce(string_agg(note, ',' order by id), '') from hot")
    return out.split(",") if out else []


@pytest.fixture
def ts_primary(pg_base: Path, pitr_template: Path, server_runbook: str) -> Iterator[TsPrimary]:  # noqa: F811
    dest = next_dir(pg_base)
    p = make_primary(pitr_template, dest, venv_runbook=server_runbook)
    try:
        ts_dir = dest / "prod_tablespace"
        ts_dir.mkdir(mode=0o700)
        chown_server_user(ts_dir)
        p.psql(f"CREATE TABLESPACE fast LOCATION '{ts_dir}'")
        # autovacuum off for the table: nothing but our writes (and their checkpoint) touches its files
        p.psql("CREATE TABLE hot (id serial, note text NOT NULL, CONSTRAINT hot_pk PRIMARY KEY (id) "
               "USING INDEX TABLESPACE fast) WITH (autovacuum_enabled = off) TABLESPACE fast")
        p.psql("CREATE INDEX hot_note ON hot (note) TABLESPACE fast")
        oid = p.psql("select oid from pg_tablespace where spcname = 'fast'")
        before = hot_rows(p, 5, "pre")
        m = basebackup(p)
        yield TsPrimary(p, ts_dir, oid, m, before)
    finally:
        p.stop_restored()
        p.crash()


def new_pgdata(base: Path, name: str) -> Path:
    """`base/name/data`: the restored server's socket goes in `base/name` (the primary's is `base`)."""
    d = base / name
    d.mkdir()
    chown_server_user(d)
    return d / "data"


def _settle(t: TsPrimary) -> dict[str, tuple[int, int]]:
    """Archive what was written, flush it to the primary's files, and note its tablespace's files."""
    t.p.switch_wal()
    t.p.psql("CHECKPOINT")
    return snapshot(t.ts_dir)


def test_pitr_to_a_time_puts_the_tablespace_in_a_new_directory_while_the_primary_runs(ts_primary: TsPrimary) -> None:
    t = ts_primary
    objects = {o["path"] for o in t.base["objects"]}  # type: ignore[attr-defined]
    assert objects == {"base.tar.zst", f"{t.oid}.tar.zst", "backup_manifest"}
    assert t.base["backup"]["tablespaces"] == 1  # type: ignore[index]
    kept = hot_rows(t.p, 4, "kept")
    target = t.p.psql("select now()")
    lost = hot_rows(t.p, 4, "lost")
    files = _settle(t)

    pgdata = new_pgdata(t.p.cluster.datadir.parent, "r1")
    r = pitr(t.p.pitr_args(pgdata, target=target, target_kind="time"))
    assert r.returncode == 0, r.stdout + r.stderr
    new_dir = Path(f"{pgdata}_tablespaces") / t.oid
    assert restored_notes(pgdata) == t.before + kept
    out = outputs(r)
    assert out["timeline"] == 2 and restored_psql(pgdata, "select pg_is_in_recovery()") == "f"
    assert out["tablespaces"] == [{"oid": t.oid, "name": "fast", "location": str(new_dir),
                                   "original": str(t.ts_dir)}]
    assert f"tablespace fast (OID {t.oid}) is at {new_dir} (it was at {t.ts_dir})" in r.stdout
    # the restored server's tablespace is the new directory, its symlink too, and the data is in it
    assert restored_psql(pgdata, f"select pg_tablespace_location({t.oid})") == str(new_dir)
    assert os.readlink(pgdata / "pg_tblspc" / t.oid) == str(new_dir)
    assert oct(new_dir.stat().st_mode & 0o777) == "0o700" and new_dir.stat().st_uid == pgdata.stat().st_uid
    assert [d.name for d in new_dir.iterdir()] == [next(t.ts_dir.iterdir()).name]  # PG_15_<catversion>
    in_ts = restored_psql(pgdata, "select string_agg(c.relname, ',' order by c.relname) from pg_class c "
                                  "join pg_tablespace s on s.oid = c.reltablespace where s.spcname = 'fast' "
                                  "and c.relnamespace <> 'pg_toast'::regnamespace")
    assert in_ts == "hot,hot_note,hot_pk"
    path = restored_psql(pgdata, "select pg_relation_filepath('hot_note')")
    assert (pgdata / path).resolve().is_relative_to(new_dir)
    # the index (in the tablespace) answers, and agrees with the table
    idx = restored_psql(pgdata, "set enable_seqscan = off; set enable_bitmapscan = off; "
                                f"select count(*) from hot where note = '{kept[-1]}'")
    assert idx == "1" and not set(lost) & set(restored_notes(pgdata))
    # the primary's tablespace directory was not touched, and the primary still has everything
    assert snapshot(t.ts_dir) == files
    assert t.p.psql("select count(*) from hot") == str(len(t.before + kept + lost))
    assert not (pgdata / "tablespace_map").exists()  # read (and renamed .old) by the server at recovery


def test_pitr_with_a_mapping_and_refused_mappings(ts_primary: TsPrimary) -> None:
    t = ts_primary
    rows = hot_rows(t.p, 6, "row")
    files = _settle(t)
    base = t.p.cluster.datadir.parent

    def refused(name: str, mapping: object, code: int, text: str, **more: object) -> None:
        pgdata = new_pgdata(base, name)
        r = pitr(t.p.pitr_args(pgdata, target_kind="latest", tablespaces=mapping, **more))
        assert r.returncode == code and text in r.stderr, r.stdout + r.stderr
        assert "Traceback" not in r.stderr
        # nothing created, nothing started
        assert not pgdata.exists() and not Path(f"{pgdata}_tablespaces").exists()
        assert not (base / name / "data.recovery.log").exists()

    # a relative directory: bad arguments (exit 2), before anything
    refused("bad1", {"fast": "restored/ts"}, 2, "must be an absolute path")
    refused("bad2", "fast=relative/dir", 2, "must be an absolute path")
    # a directory that is not empty
    full = base / "full"
    full.mkdir()
    (full / "something").write_text("keep me\n")
    refused("bad3", {"fast": str(full)}, 1, f"tablespace fast: {full} is not empty")
    assert (full / "something").read_text() == "keep me\n"
    # the production tablespace's own directory (in use: not empty), or a new one inside it
    refused("bad4", {t.oid: str(t.ts_dir)}, 1, f"tablespace {t.oid}: {t.ts_dir} is not empty")
    refused("bad5", {str(t.ts_dir): str(t.ts_dir / "sub")}, 1, "original tablespace directory")
    # keys that name no tablespace of the backup
    refused("bad6", {"nosuch": str(base / "x")}, 1, "has no tablespace named 'nosuch'")
    refused("bad7", {"99999": str(base / "x")}, 1, "has no tablespace with OID 99999")
    # a default directory that is not empty: <pgdata>_tablespaces/<oid>
    pgdata = new_pgdata(base, "bad8")
    taken = Path(f"{pgdata}_tablespaces") / t.oid
    taken.mkdir(parents=True)
    (taken / "f").write_text("x")
    r = pitr(t.p.pitr_args(pgdata, target_kind="latest"))
    assert r.returncode == 1 and f"{taken} is not empty" in r.stderr, r.stderr
    assert not pgdata.exists()
    assert snapshot(t.ts_dir) == files

    # by name, as a runbook passes it (text); the directory's parents are made
    chosen = base / "elsewhere" / "fast_restored"
    pgdata = new_pgdata(base, "r2")
    r = pitr(t.p.pitr_args(pgdata, target_kind="latest", tablespaces=f"fast={chosen}"))
    assert r.returncode == 0, r.stdout + r.stderr
    assert restored_notes(pgdata) == t.before + rows
    assert restored_psql(pgdata, f"select pg_tablespace_location({t.oid})") == str(chosen)
    assert outputs(r)["tablespaces"] == [{"oid": t.oid, "name": "fast", "location": str(chosen),
                                          "original": str(t.ts_dir)}]
    assert outputs(r)["timeline"] == 2 and not Path(f"{pgdata}_tablespaces").exists()
    assert oct(chosen.stat().st_mode & 0o777) == "0o700" and any(chosen.iterdir())
    assert snapshot(t.ts_dir) == files


def test_verify_backup_restores_the_tablespace_in_the_scratch_directory(ts_primary: TsPrimary) -> None:
    t = ts_primary
    files = _settle(t)
    scratch = t.p.cluster.datadir.parent / "scratch"
    r = run_cli("verify-backup", "-c", str(t.p.config), "--kind", "base", "--db", "postgres", "--scratch-dir",
                str(scratch), "--json", timeout=180)
    assert r.returncode == 0, r.stdout + r.stderr
    doc = json.loads(r.stdout)
    checks = {c["name"]: c for c in doc["checks"]}
    assert doc["status"] == "verified" and doc["backup_id"] == t.base["backup_id"]
    assert checks["tablespaces"]["status"] == "ok"
    assert checks["tablespaces"]["detail"] == (f"fast (OID {t.oid}, {t.ts_dir} in production) restored in "
                                               "the scratch directory")
    assert "1 tablespace(s) among them" in checks["backup_manifest"]["detail"]
    assert list(scratch.iterdir()) == [] and snapshot(t.ts_dir) == files


def test_a_tablespace_created_after_the_base_backup_is_refused_or_reported_and_the_server_stopped(
        ts_primary: TsPrimary) -> None:
    """Replay of CREATE TABLESPACE points the restored copy at that tablespace's production directory, which
    the action cannot redirect. While the production cluster answers, it is asked first and the recovery is
    refused before anything is made; when it does not (the disaster), the restored server is stopped after
    promotion with the tablespace named."""
    t = ts_primary
    late = t.p.cluster.datadir.parent / "late_tablespace"
    late.mkdir(mode=0o700)
    chown_server_user(late)
    t.p.psql(f"CREATE TABLESPACE late LOCATION '{late}'")
    t.p.psql("CREATE TABLE later (id int) TABLESPACE late")
    t.p.psql("INSERT INTO later SELECT generate_series(1, 100)")
    late_oid = t.p.psql("select oid from pg_tablespace where spcname = 'late'")
    _settle(t)
    live = snapshot(late)

    pgdata = new_pgdata(t.p.cluster.datadir.parent, "r3")
    r = pitr(t.p.pitr_args(pgdata, target_kind="latest"))
    assert r.returncode == 1, r.stdout + r.stderr
    assert (f"tablespace(s) created after base backup {t.base['backup_id']}: late (OID {late_oid}) at {late}"
            in r.stderr and "nothing was restored" in r.stderr and "another host" in r.stderr), r.stderr
    assert "Traceback" not in r.stderr and not pgdata.exists() and not Path(f"{pgdata}_tablespaces").exists()
    assert snapshot(late) == live

    t.p.crash()  # the production cluster no longer answers: the action cannot ask it
    pgdata = new_pgdata(t.p.cluster.datadir.parent, "r4")
    r = pitr(t.p.pitr_args(pgdata, target_kind="latest"))
    assert r.returncode == 1, r.stdout + r.stderr
    assert "could not ask the cluster" in r.stdout, r.stdout
    assert (f"tablespace late (OID {late_oid}) at {late} is not in the base backup" in r.stderr
            and "the restored server was stopped" in r.stderr and "take a base backup after CREATE TABLESPACE"
            in r.stderr), r.stderr
    assert "Traceback" not in r.stderr and not (pgdata / "postmaster.pid").exists()
    # the tablespace of the backup was put in its new directory all the same
    assert os.readlink(pgdata / "pg_tblspc" / t.oid) == str(Path(f"{pgdata}_tablespaces") / t.oid)


def test_check_warns_of_a_tablespace_the_newest_base_backup_lacks(ts_primary: TsPrimary) -> None:
    def tablespaces_check() -> dict[str, str]:
        r = run_cli("check", "-c", str(ts_primary.p.config), "--json", timeout=120)
        assert r.stdout.strip(), r.stderr
        return {c["name"]: c for c in json.loads(r.stdout)["checks"]}["tablespaces"]

    ok = tablespaces_check()
    assert ok["status"] == "ok" and "1 tablespace(s), all in base backup" in ok["detail"], ok
    later = ts_primary.ts_dir.parent / "later_tablespace"
    later.mkdir(mode=0o700)
    chown_server_user(later)
    ts_primary.p.psql(f"CREATE TABLESPACE later LOCATION '{later}'")
    warned = tablespaces_check()
    assert warned["status"] == "warning", warned
    assert "later" in warned["detail"] and str(later) in warned["detail"] and "fast" not in warned["detail"]
    assert "runbook basebackup" in warned["hint"]
