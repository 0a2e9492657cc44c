"""The product's own engine behind steps.engines.PhysicalEngine, against a real archiving primary (`runbook
wal-push`) and `runbook basebackup`: the same facts its repository's signed manifests hold."""

from __future__ import annotations

import json
import time

import pytest

from runbook.errors import RunbookError
from steps.engines import engine_for
from steps.engines.own import OwnEngine
from steps.repository.config import load_repository_config
from tests.support.pitr_cluster import (  # noqa: F401 - fixtures
    Primary,
    pitr_template_fixture,
    primary_fixture,
    server_runbook_fixture,
)


def test_own_engine_takes_and_lists_base_backups_and_reads_its_archive(primary: Primary) -> None:
    p = primary
    engine = engine_for(load_repository_config(p.config)[0], p.config)
    assert isinstance(engine, OwnEngine) and engine.name == "own"
    assert engine.backups() == [] and engine.archive_range() is None and engine.check() == []
    with pytest.raises(RunbookError, match="full base backups only"):
        engine.basebackup("incr")
    done = engine.basebackup()
    b = done.backup
    bdir = p.repo / "clusters" / p.sysid / "base" / b.label
    m = json.loads((bdir / "manifest.json").read_text())
    assert (b.kind, b.start_wal, b.stop_wal, b.start_lsn, b.stop_lsn, b.system_identifier) == (
        "full", m["start_wal"], m["stop_wal"], m["start_lsn"], m["stop_lsn"], p.sysid)
    assert b.size_bytes == m["cluster"]["size_bytes"] > 0 and b.where == ("local",) and done.duration_s > 0
    p.psql("INSERT INTO events (note) VALUES ('after')")
    before = time.time()
    p.switch_wal()
    name = p.psql("select last_archived_wal from pg_stat_archiver")
    rng = engine.archive_range()
    assert rng is not None and rng.max_wal == name and rng.min_wal is not None and rng.min_wal <= b.start_wal
    assert rng.newest_archived_at is not None and before - 2 <= rng.newest_archived_at.timestamp() <= time.time() + 1
    assert [x.label for x in engine.backups()] == [b.label]
