"""Row counts on every kind of table: the backup's counts and every check that compares with them agree.

A database built for the purpose (not the AssetFlow sample): table inheritance (a parent with rows of its own,
two children, a grandchild), a partitioned table (a range partition, a sub-partitioned one, a default
partition), an unlogged table, a foreign table (postgres_fdw to the same cluster), a materialized view, and
names that need quoting (capitals, spaces, quotes, a dot in a schema's name). Through the real programs:
`runbook backup` (the counts in manifest.json are each table's own rows), `runbook verify-backup` (VERIFIED,
the backup raised to `restored`), restore-logical into another cluster and the `verify-database` action as
the engine runs it (passes); then one row deleted in a child makes it fail naming that child, and only it.
A manifest of before the definition was written down (no `row_counts_definition`) still verifies.
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import run_cli
from tests.support.backup_helpers import backup, backups_json, cli_env, make_cluster, run_action, write_config
from tests.support.pgcluster import Cluster, make_base_dir

DB = "rows_db"
INH = 'Inherit "Q"'       # schema of the inheritance tree
PART = 'sales.v2 "EU"'    # schema of the partitioned table: a dot, a space, quotes

SCHEMA_SQL = r'''
create schema "Inherit ""Q""";
create schema "sales.v2 ""EU""";
create table "Inherit ""Q"""."Parent Table" (id int, note text);
create table "Inherit ""Q"""."Child A" (extra int) inherits ("Inherit ""Q"""."Parent Table");
create table "Inherit ""Q""".child_b () inherits ("Inherit ""Q"""."Parent Table");
create table "Inherit ""Q"""."Grand ""Child"".x" () inherits ("Inherit ""Q"""."Child A");
insert into "Inherit ""Q"""."Parent Table" select g, 'parent' from generate_series(1, 3) g;
insert into "Inherit ""Q"""."Child A" select g, 'child a', g from generate_series(11, 15) g;
insert into "Inherit ""Q""".child_b select g, 'child b' from generate_series(21, 24) g;
insert into "Inherit ""Q"""."Grand ""Child"".x" select g, 'grandchild', g from generate_series(31, 32) g;

create table "sales.v2 ""EU"""."Events" (id int, yr int not null, region text not null) partition by range (yr);
create table "sales.v2 ""EU"""."events 2024" partition of "sales.v2 ""EU"""."Events" for values from (2024) to (2025);
create table "sales.v2 ""EU""".events_2025 partition of "sales.v2 ""EU"""."Events" for values from (2025) to (2026)
    partition by list (region);
create table "sales.v2 ""EU"""."events_2025 North" partition of "sales.v2 ""EU""".events_2025 for values in ('north');
create table "sales.v2 ""EU""".events_2025_rest partition of "sales.v2 ""EU""".events_2025 default;
create table "sales.v2 ""EU"""."events default" partition of "sales.v2 ""EU"""."Events" default;
insert into "sales.v2 ""EU"""."Events" select g, 2024, 'south' from generate_series(1, 6) g;
insert into "sales.v2 ""EU"""."Events" select g, 2025, 'north' from generate_series(1, 7) g;
insert into "sales.v2 ""EU"""."Events" select g, 2025, 'west' from generate_series(1, 8) g;
insert into "sales.v2 ""EU"""."Events" select g, 1999, 'east' from generate_series(1, 9) g;

create unlogged table public."Scratch Pad" (id int);
insert into public."Scratch Pad" select generate_series(1, 10);
create table public.plain (id int primary key);
insert into public.plain select generate_series(1, 11);
create materialized view public."Parent Totals" as select count(*) as n from "Inherit ""Q"""."Parent Table";
'''

# Own rows, as the manifest must record them: a parent's own (not its children's), each partition (leaf)
# under its own name, no partitioned parent, the unlogged table.
OWN = {
    f"{INH}.Parent Table": 3, f"{INH}.Child A": 5, f"{INH}.child_b": 4, f'{INH}.Grand "Child".x': 2,
    f"{PART}.events 2024": 6, f"{PART}.events_2025 North": 7, f"{PART}.events_2025_rest": 8,
    f"{PART}.events default": 9,
    "public.Scratch Pad": 10, "public.plain": 11,
}


def fdw_sql(c: Cluster) -> str:
    return f'''
create extension postgres_fdw;
create server loopback foreign data wrapper postgres_fdw
    options (host '{c.socket_dir}', port '{c.port}', dbname '{DB}');
create user mapping for postgres server loopback options (user 'postgres');
create foreign table public."Remote ""Things""" (id int, note text)
    server loopback options (schema_name 'Inherit "Q"', table_name 'Parent Table');
'''


@pytest.fixture
def base() -> Iterator[Path]:
    d = make_base_dir("runbook-rows-test-")
    try:
        yield d
    finally:
        shutil.rmtree(d, ignore_errors=True)


@pytest.fixture
def source(pg_base: Path, pg_template: Path) -> Iterator[Cluster]:
    c = make_cluster(pg_base, pg_template, "rows-source")
    try:
        c.psql(f"create database {DB}")
        c.psql(SCHEMA_SQL, DB)
        c.psql(fdw_sql(c), DB)
        yield c
    finally:
        c.stop()


def test_row_counts_of_every_kind_of_table_agree_from_backup_to_verify(
    source: Cluster, base: Path, pg_base: Path, pg_template: Path,
) -> None:
    # The source as the application sees it: a plain count of a parent includes its children, and the
    # foreign table is readable (it is skipped on purpose, not because it cannot be read).
    assert source.psql('select count(*) from "Inherit ""Q"""."Parent Table"', DB) == "14"
    assert source.psql('select count(*) from "sales.v2 ""EU"""."Events"', DB) == "30"
    assert source.psql('select count(*) from public."Remote ""Things"""', DB) == "14"

    repo = base / "repo"
    cfg = write_config(base / "repo.yaml", source, dbs=[DB], local=repo,
                       extra="checks:\n  expect_tables: [plain]\n")
    proc = backup(cfg)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    (bdir,) = (repo / "clusters").glob(f"*/logical/{DB}/*")
    manifest = json.loads((bdir / "manifest.json").read_text())
    assert manifest["row_counts"] == OWN
    assert manifest["row_counts_definition"] == "own"
    skipped = manifest["row_counts_skipped"]
    assert set(skipped) == {'public.Remote "Things"', "public.Parent Totals", f"{PART}.Events",
                            f"{PART}.events_2025"}, skipped
    assert "foreign table" in skipped['public.Remote "Things"']
    assert "materialized view" in skipped["public.Parent Totals"]
    assert "partitioned" in skipped[f"{PART}.Events"] and "partitioned" in skipped[f"{PART}.events_2025"]

    # verify-backup: restored into a scratch cluster, every count compared: VERIFIED, level restored
    r = run_cli("verify-backup", "-c", str(cfg), "--scratch-dir", str(base / "scratch"), "--json",
                env=cli_env(), timeout=180)
    assert r.returncode == 0, r.stdout + r.stderr
    out = json.loads(r.stdout)
    assert out["status"] == "verified", out
    checks = {c["name"]: c for c in out["checks"]}
    for name, n in OWN.items():
        assert checks[f"rows in {name}"]["status"] == "ok", checks.get(f"rows in {name}")
        assert checks[f"rows in {name}"]["detail"].startswith(f"{n} rows")
    cat = backups_json(cfg)
    assert cat["picks"][DB] == bdir.name and cat["backups"][0]["copies"]["local"]["level"] == "restored"
    r = run_cli("verify-backup", "-c", str(cfg), "--scratch-dir", str(base / "scratch"), env=cli_env(), timeout=180)
    assert r.returncode == 0 and "VERIFIED logical backup" in r.stdout, r.stdout + r.stderr

    # a recovery: restore-logical into another cluster, then the verify-database action as the engine runs it
    target = make_cluster(pg_base, pg_template, "rows-target")
    try:
        restored = run_action("restore-logical", {"backup_dir": str(bdir), "db": DB, "jobs": 2}, env=target.env)
        assert restored.code == 0, restored.stdout + restored.stderr
        args = {"db": DB, "backup_dir": str(bdir), "config": str(cfg)}
        v = run_action("verify-database", args, env=target.env)
        assert v.code == 0, v.stdout + v.stderr
        assert v.checks("failed") == [] and v.outputs["tables_checked"] == len(OWN)
        assert {c["name"] for c in v.checks("ok")} >= {f"rows in {name}" for name in OWN} | {"table plain exists"}

        # a manifest written before the definition was named (no row_counts_definition, no skipped list) is
        # read with the same definition: the old backup counted each table's own rows too
        old = base / "old-manifest"
        old.mkdir()
        legacy = {k: v for k, v in manifest.items() if k not in ("row_counts_definition", "row_counts_skipped")}
        (old / "manifest.json").write_text(json.dumps(legacy))
        v = run_action("verify-database", {**args, "backup_dir": str(old)}, env=target.env)
        assert v.code == 0 and v.checks("failed") == [], v.stdout + v.stderr

        # one row less in a child: the comparison fails, naming that child and nothing else (its parent's own
        # rows did not change)
        target.psql('delete from "Inherit ""Q""".child_b where id = 22', DB)
        v = run_action("verify-database", args, env=target.env)
        assert v.code == 1, v.stdout + v.stderr
        (failed,) = v.checks("failed")
        assert failed["name"] == f"rows in {INH}.child_b" and failed["hint"] == "3 rows, the backup holds 4"
        assert f"FAIL {INH}.child_b: 3 rows (backup: 4)" in v.stdout

        # a grandchild's row gone: the grandchild is named, not its parent nor the root
        target.psql('delete from "Inherit ""Q"""."Grand ""Child"".x" where id = 31', DB)
        v = run_action("verify-database", args, env=target.env)
        assert sorted(c["name"] for c in v.checks("failed")) == [f"rows in {INH}.Grand \"Child\".x",
                                                                 f"rows in {INH}.child_b"]

        # counts taken under a definition this version does not know are not compared as if they were its own
        (old / "manifest.json").write_text(json.dumps({**manifest, "row_counts_definition": "someday"}))
        v = run_action("verify-database", {**args, "backup_dir": str(old)}, env=target.env)
        assert v.code == 1, v.stdout + v.stderr
        (failed,) = v.checks("failed")
        assert failed["name"] == "row counts" and "someday" in failed["hint"]
    finally:
        target.stop()
