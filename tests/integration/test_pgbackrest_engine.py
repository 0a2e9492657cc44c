"""The pgBackRest engine against real pgBackRest 2.45 and a real PostgreSQL 15 primary archiving through it: a posix
repository and an S3 repository on the local moto over TLS (a self-signed certificate, verified as
repo1-storage-ca-file). The engine's facts are pgBackRest's own (`pgbackrest info` run by the test beside it)."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import pytest

from steps.engines import engine_for
from steps.engines.pgbackrest.engine import PgBackRestEngine
from steps.repository.config import load_repository_config
from tests.support.pgbackrest import (  # noqa: F401 - fixtures
    PgbrPrimary,
    make_pgbr_primary,
    next_pgbr_dir,
    pgbr_primary_fixture,
)
from tests.support.pitr_cluster import pitr_template_fixture  # noqa: F401 - fixtures
from tests.support.s3server import S3Endpoint, TlsEndpoint, s3_bucket, s3_server, s3_tls_server  # noqa: F401 - fixtures


def _engine(p: PgbrPrimary) -> PgBackRestEngine:
    engine = engine_for(load_repository_config(p.config)[0])
    assert isinstance(engine, PgBackRestEngine)
    return engine


def _facts_match_pgbackrest(p: PgbrPrimary, engine: PgBackRestEngine) -> None:
    own = json.loads(p.pgbackrest("info", "--output=json").stdout)[0]
    listed = engine.backups()
    assert [b.label for b in listed] == [b["label"] for b in reversed(own["backup"])]  # newest first
    for b, o in zip(listed, reversed(own["backup"]), strict=True):
        assert (b.kind, b.start_wal, b.stop_wal, b.start_lsn, b.stop_lsn) == (
            o["type"], o["archive"]["start"], o["archive"]["stop"], o["lsn"]["start"], o["lsn"]["stop"])
        assert b.stopped_at == datetime.fromtimestamp(o["timestamp"]["stop"], UTC)
        assert b.size_bytes == o["info"]["size"] and b.system_identifier == p.sysid
    rng = engine.archive_range()
    assert rng is not None
    assert (rng.min_wal, rng.max_wal) == (own["archive"][0]["min"], own["archive"][0]["max"])


def _exercise(p: PgbrPrimary) -> None:
    engine = _engine(p)
    assert engine.backups() == [] and engine.archive_range() is None  # the stanza is made, nothing in it
    full = p.full_backup()
    p.psql("INSERT INTO events (note) SELECT 'row-' || g FROM generate_series(1, 500) g")
    before = time.time()
    done = engine.basebackup("incr")
    assert done.backup.kind == "incr" and done.backup.reference == (full,) and done.duration_s > 0
    assert done.backup.stopped_at.timestamp() >= int(before)
    wal = p.switch_wal()
    archived_by = time.time()
    _facts_match_pgbackrest(p, engine)
    rng = engine.archive_range()
    assert rng is not None and rng.max_wal is not None and rng.max_wal >= wal
    assert rng.newest_archived_at is not None
    assert before - 2 <= rng.newest_archived_at.timestamp() <= archived_by + 2
    checks = {c.name: c for c in engine.check()}
    assert checks["pgbackrest_info"].status == "ok", checks
    assert checks["pgbackrest_check"].status == "ok", checks


def test_posix_repository_backups_archive_range_check_and_an_incremental_backup(pgbr_primary: PgbrPrimary) -> None:
    _exercise(pgbr_primary)
    assert any(pgbr_primary.repo.glob(f"backup/{pgbr_primary.stanza}/*F"))  # type: ignore[union-attr]
    assert not any(pgbr_primary.own_repo.iterdir())  # nothing of the product's inside, nor of pgBackRest's there


@pytest.fixture
def tls_primary(pg_base: Path, pitr_template: Path, s3_tls_server: TlsEndpoint, s3_bucket: str  # noqa: F811
                ) -> Iterator[PgbrPrimary]:
    p = make_pgbr_primary(pitr_template, next_pgbr_dir(pg_base), s3=(s3_tls_server, s3_bucket),
                          options={"repo1-s3-key-secret": "testing-secret-key"})
    try:
        yield p
    finally:
        p.stop()


def test_s3_repository_over_tls(tls_primary: PgbrPrimary, s3_server: S3Endpoint, s3_bucket: str  # noqa: F811
                                ) -> None:
    _exercise(tls_primary)
    keys = [o["Key"] for o in s3_server.client().list_objects_v2(Bucket=s3_bucket)["Contents"]]
    assert any(k.startswith(f"{tls_primary.dest.name}/backup/{tls_primary.stanza}/") for k in keys)
    assert any(k.startswith(f"{tls_primary.dest.name}/archive/{tls_primary.stanza}/15-1/") for k in keys)


def test_broken_archiving_fails_pgbackrest_check_saying_why(pgbr_primary: PgbrPrimary) -> None:
    p = pgbr_primary
    p.full_backup()
    p.break_archiving()
    p.psql("select pg_switch_wal()")
    checks = {c.name: c for c in _engine(p).check()}
    failed = checks["pgbackrest_check"]
    assert failed.status == "failed"
    assert "ERROR [" in failed.detail and failed.hint and "archive_command" in failed.hint
