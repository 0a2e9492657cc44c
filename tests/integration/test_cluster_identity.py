"""A recovery restores the cluster it expects, never another one's backup of the same database.

One repository legitimately holds a database under several clusters (the new server of a logical restore has a
new system identifier; two servers may share a repository), and a sandbox rebuilt under a running drill is a new
cluster too. Two real clusters back up a database of the same name into one local repository.
"""

from __future__ import annotations

from pathlib import Path

from tests.support.backup_helpers import (
    BACKUP_ROLE,
    ActionResult,
    backup,
    make_cluster,
    run_action,
    write_config,
)
from tests.support.pgcluster import Cluster, initdb


def _sysid(c: Cluster) -> str:
    return c.psql("select system_identifier from pg_control_system()")


def _app(c: Cluster, rows: int) -> None:
    c.psql("create database app")
    c.psql(f"create table t (id int primary key); insert into t select generate_series(1, {rows})", db="app")


def test_fetch_takes_the_expected_clusters_backup_or_none(pg_base: Path, pg_template: Path, tmp_path: Path) -> None:
    a = make_cluster(pg_base, pg_template, "ident-a")
    b_dir = pg_base / "ident-b"
    initdb(b_dir / "data")  # initdb, not a clone: a cluster of its own, with its own system identifier
    b = Cluster(datadir=b_dir / "data", socket_dir=b_dir)
    try:
        b.start()
        b.psql(f"create role {BACKUP_ROLE} login in role pg_read_all_data")
        assert _sysid(a) != _sysid(b)
        _app(a, 10)
        _app(b, 20)
        repo = tmp_path / "repo"
        for c, name in ((a, "a"), (b, "b")):  # b's backup is the newer one
            cfg = write_config(tmp_path / f"{name}.yaml", c, dbs=["app"], local=repo, state=tmp_path / f"st-{name}")
            proc = backup(cfg)
            assert proc.returncode == 0, proc.stderr

        def fetch(cluster: str, dest: str) -> ActionResult:
            return run_action("fetch-latest-backup", {"config": str(tmp_path / "a.yaml"), "db": "app",
                                                      "dest": str(tmp_path / dest), "cluster": cluster})

        # Expected: a. The newer backup of b is not taken.
        got = fetch(_sysid(a), "ra")
        assert got.code == 0, got.stdout
        assert got.outputs["cluster"] == _sysid(a)
        # Nothing expected: the newest, of b, with a warning naming both clusters.
        got = fetch("", "rany")
        assert got.code == 0 and got.outputs["cluster"] == _sysid(b)
        (warning,) = [c for c in got.checks("warning") if c["name"] == "cluster of the backup"]
        assert _sysid(a) in warning["hint"] and _sysid(b) in warning["hint"]
        # Expected a cluster the repository does not hold (a sandbox rebuilt during the drill): refused, named.
        got = fetch("7000000000000000001", "rnone")
        assert got.code == 1
        assert "no backup of app from cluster 7000000000000000001" in got.stdout
        assert _sysid(a) in got.stdout and _sysid(b) in got.stdout
        assert not (tmp_path / "rnone").exists() or not any((tmp_path / "rnone").iterdir())
    finally:
        a.stop()
        b.stop()
