"""verify-database: is the recovered database what the backup held? Each check: name, status, hint.

Checks, with psycopg: the expected tables exist (repository config `checks.expect_tables`, plus `tables`),
every table's exact row count equals the count the backup's manifest took in the dump's own snapshot
(both counted by steps.pg.rows: each table's own rows, one definition), and the smoke queries (each must
return true). With `disaster_counts` (a JSON of per-table counts taken at the moment of the disaster, as
the sandbox writes), it also counts the rows that were really lost. Rows are counted only when there is
something to compare them with (a backup's counts, the disaster's).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from steps.events import Events
from steps.pg import rows


class Args(BaseModel):
    model_config = ConfigDict(extra="forbid")
    db: str = Field(min_length=1)
    host: str | None = Field(None, description="Default: PGHOST")
    port: int | None = Field(None, description="Default: PGPORT")
    user: str | None = Field(None, description="Default: PGUSER")
    backup_dir: str | None = Field(None, description="A fetched backup: its manifest.json gives the row counts")
    config: str | None = Field(None, description="Repository config: its `checks:` are run")
    tables: list[str] = Field(default_factory=list, description="More tables that must exist")
    smoke: list[str] = Field(default_factory=list, description="More queries that must return true")
    disaster_counts: str = Field("", description="JSON {schema.table: rows} at the disaster (drills): rows lost")
    recovery_point: str = Field("", description="After a point-in-time recovery: its recovery point, named when "
                                "an expected table is missing (the target may be after the table was lost)")


def _checks_from_config(path: str | None) -> tuple[list[str], list[str]]:
    if not path:
        return [], []
    from steps.repository.config import load_repository_config

    cfg, _ = load_repository_config(path)
    return list(cfg.checks.expect_tables), list(cfg.checks.smoke)


def _qualified(name: str) -> str:
    return name if "." in name else f"public.{name}"


def _missing_hint(table: str, args: Args) -> str:
    if not args.recovery_point:
        return "missing after the restore: was it in the backup? see the restore step's output"
    import os

    run_id = os.environ.get("RUNBOOK_RUN_ID")
    how = (f"`runbook resume {run_id} --redo-from pitr --set target_time=TIME` (a time with its zone)" if run_id
           else "the pitr step again with an earlier target_time")
    return (f"missing at the recovery point {args.recovery_point}: the recovery target is after {table} was lost "
            "(dropped or emptied before that moment), so replaying up to it dropped the table again. Find when it "
            "was lost (the old server's log, the application's, the incident notes), then recover again to a moment "
            f"just before it: {how}; the recovered data directory of this attempt is moved aside, not deleted")


def main(args: Args, events: Events) -> int:
    import psycopg

    tables, smoke = _checks_from_config(args.config)
    tables += args.tables
    smoke += args.smoke
    failed = 0
    expected: dict[str, int] = {}
    if args.backup_dir:
        manifest = json.loads((Path(args.backup_dir) / "manifest.json").read_text())
        try:
            expected = rows.expected_counts(manifest)
        except rows.UnknownDefinition as e:
            failed += 1
            events.check("row counts", "failed", str(e))
            print(f"FAIL row counts: {e}")
    conninfo: dict[str, Any] = {"dbname": args.db}
    conninfo.update({k: v for k, v in (("host", args.host), ("port", args.port), ("user", args.user)) if v})
    try:
        conn = psycopg.connect(**conninfo, autocommit=True, connect_timeout=10)
    except psycopg.OperationalError as e:
        events.check("connect", "failed", f"cannot connect to {args.db}: {str(e).strip().splitlines()[0]}")
        print(f"verify-database: cannot connect to {args.db}: {e}")
        return 1
    with conn:
        present = {f"{s}.{t}" for s, t in conn.execute(
            "select schemaname, tablename from pg_tables where schemaname not in ('pg_catalog', 'information_schema')")}
        for t in tables:
            ok = _qualified(t) in present
            failed += not ok
            events.check(f"table {t} exists", "ok" if ok else "failed", "" if ok else _missing_hint(t, args))
            if not ok:
                print(f"FAIL table {t}: {_missing_hint(t, args)}")
        found = rows.RowCounts()
        try:
            if expected or args.disaster_counts:
                found = rows.count_rows(conn)
        except psycopg.Error as e:
            failed += 1
            expected = {}
            events.check("row counts", "failed", f"counting rows failed: {str(e).strip().splitlines()[0]}")
            print(f"FAIL row counts: {e}")
        counts = found.counts
        for c in rows.compare(expected, found):
            failed += not c.ok
            events.check(f"rows in {c.name}", "ok" if c.ok else "failed", c.detail)
            print(f"{'ok  ' if c.ok else 'FAIL'} {c.name}: {c.got} rows (backup: {c.want})")
        for q in smoke:
            try:
                row = conn.execute(q).fetchone()  # type: ignore[arg-type]
                ok = bool(row and row[0] is True)
                hint = "" if ok else f"returned {row[0] if row else 'no row'!r}, expected true"
            except psycopg.Error as e:
                ok, hint = False, str(e).strip().splitlines()[0]
            failed += not ok
            events.check(f"smoke: {q}", "ok" if ok else "failed", hint)
            print(f"{'ok  ' if ok else 'FAIL'} smoke: {q} {hint}")
    # What was checked, not only what was counted: after a PITR there is no manifest, yet every expected table
    # was looked for (the reproduced case reported 0 tables checked after checking 6).
    checked = {_qualified(t) for t in tables} | set(expected)
    events.output("tables_checked", len(checked))
    events.output("row_counts_compared", len(expected))
    if args.disaster_counts:
        at_disaster = json.loads(Path(args.disaster_counts).read_text())
        # a relation the definition does not count (a partitioned parent: its partitions are) is not a loss
        lost = {t: n - counts.get(t, 0) for t, n in at_disaster.items()
                if t not in found.skipped and n > counts.get(t, 0)}
        total = sum(lost.values())
        events.output("rows_lost", total)
        detail = ", ".join(f"{t}: {n}" for t, n in sorted(lost.items())) or "none"
        print(f"rows written after the backup and lost in the disaster: {total} ({detail})")
        events.check("rows lost since the backup", "warning" if total else "ok",
                     f"{total} rows ({detail}); only WAL archiving (scenario pitr) recovers them" if total else "none")
    print(f"{failed} failed check(s)" if failed else "all checks passed")
    return 1 if failed else 0
