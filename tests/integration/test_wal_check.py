"""`runbook check` against real clusters, as a non-superuser (pg_monitor, EXECUTE on pg_switch_wal).

A cluster whose archive_command is broken is reported failed (exit 2) with the archiver's last failure; a
healthy one archiving through wal-push into a local repository and S3 passes `--force-switch` (the switched
segment reaches both), with its newest logical backup found and the missing base backup said; a config
that cannot connect exits 3.
"""

from __future__ import annotations

import json
import os
import pwd
import subprocess
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import run_cli
from tests.support.s3server import S3Endpoint, credentials_env, s3_bucket, s3_server  # noqa: F401
from tests.support.signing import server_signing_yaml
from tests.support.wal_helpers import (
    WalCluster,
    credentials_file,
    s3_section,
    server_dir,
    wal_cluster,  # noqa: F401
    wal_template,  # noqa: F401
    write_config,
)

Factory = Callable[..., WalCluster]
ROLE = "monitor"


def _monitor_role(wc: WalCluster) -> None:
    wc.psql(f"create role {ROLE} login in role pg_monitor, pg_read_all_data")
    wc.psql(f"grant execute on function pg_switch_wal() to {ROLE}")


def _check(cfg: Path, *args: str) -> tuple[int, dict[str, Any]]:
    r = run_cli("check", "-c", str(cfg), "--json", *args, env=credentials_env(), timeout=120)
    assert r.stdout.strip(), r.stderr
    doc = json.loads(r.stdout)
    assert doc["exit_code"] == r.returncode
    return r.returncode, {c["name"]: c for c in doc["checks"]}


def test_a_broken_archive_command_is_reported_failed(wal_cluster: Factory) -> None:  # noqa: F811
    wc = wal_cluster()
    wc.configure(archive_mode="on", archive_command="/bin/false", archive_timeout="60")
    wc.cluster.start()
    _monitor_role(wc)
    cfg = write_config(wc.base / "repository.yaml", wc.cluster, local=server_dir(wc.base, "repo"), user=ROLE)
    wc.switch()
    deadline = time.monotonic() + 30
    while wc.psql("select failed_count from pg_stat_archiver") == "0":
        assert time.monotonic() < deadline
        time.sleep(0.1)
    code, checks = _check(cfg, "--force-switch", "--timeout", "3")
    assert code == 2
    assert checks["pg_stat_archiver"]["status"] == "failed" and "archiving is failing" in checks["pg_stat_archiver"]["detail"]
    assert checks["archive_command"]["status"] == "warning" and "/bin/false" in checks["archive_command"]["detail"]
    assert checks["wal_switch"]["status"] == "failed"
    assert checks["connection"]["status"] == "ok" and ROLE in checks["connection"]["detail"]
    human = run_cli("check", "-c", str(cfg))
    assert human.returncode == 2 and "FAILED   pg_stat_archiver" in human.stdout and "hint:" in human.stdout


def test_a_healthy_cluster_passes_force_switch_as_a_non_superuser(
        wal_cluster: Factory, s3_server: S3Endpoint, s3_bucket: str) -> None:  # noqa: F811
    wc = wal_cluster()
    repo = server_dir(wc.base, "repo")
    # The daily backup runs as the server's user too (cron), so the repository stays writable for wal-push: its
    # signing key is that user's.
    cfg = write_config(wc.base / "repository.yaml", wc.cluster, local=repo, user=ROLE,
                       s3=s3_section(s3_server.url, s3_bucket, credentials_file(wc.base)),
                       wal={"spool_dir": str(server_dir(wc.base, "spool"))},
                       extra=server_signing_yaml(wc.base / "signing"))
    wc.archive_with(cfg, archive_timeout="60")
    wc.cluster.start()
    _monitor_role(wc)
    server_dir(wc.base, "state")
    backup = wc.runbook("backup", "-c", str(cfg), timeout=180)
    assert backup.returncode in (0, 1), backup.stderr
    code, checks = _check(cfg, "--force-switch", "--timeout", "30")
    for name in ("connection", "repository:local", "repository:s3", "archive_mode", "archive_command",
                 "archive_timeout", "pg_stat_archiver", "archived_wal", "wal_switch", "logical_backup"):
        assert checks[name]["status"] == "ok", (checks[name], wc.log_tail())
    assert "reached every repository" in checks["wal_switch"]["detail"]
    for name in ("wal_sealed:local", "wal_sealed:s3"):  # the sealer signed what the switch archived
        assert checks[name]["status"] == "ok" and "is in a signed WAL ledger" in checks[name]["detail"], checks[name]
    assert checks["base_backup"]["status"] == "warning" and "no base backup" in checks["base_backup"]["detail"]
    # run as the server's user, as PostgreSQL runs it: it answers --version and reads the config
    as_server = checks[f"archive_command:{_owner(wc.datadir)}"]
    assert as_server["status"] == "ok" and f"runs {wc.venv.runbook} (runbook " in as_server["detail"], as_server
    assert code == 1  # the missing base backup is the only warning


def _owner(path: Path) -> str:
    return pwd.getpwuid(path.stat().st_uid).pw_name


@pytest.mark.skipif(os.geteuid() != 0, reason="a file closed to the server's user needs another user: root")
def test_commands_the_servers_user_cannot_run_are_named(wal_cluster: Factory) -> None:  # noqa: F811
    """As `make test` runs (root, the cluster as postgres): archive_command is a runbook whose interpreter lies
    in a 0700 directory of root's (a pyenv under /root), restore_command names a config only root can read.
    Root could run both; PostgreSQL cannot, and check names the file in the way."""
    wc = wal_cluster()
    cfg = write_config(wc.base / "repository.yaml", wc.cluster, local=server_dir(wc.base, "repo"), user=ROLE)
    closed = wc.base / "root-only"  # in a directory the server's user can enter: this one is what stops it
    closed.mkdir()
    closed.chmod(0o700)
    (closed / "python").symlink_to(os.path.realpath(Path(wc.venv.runbook).parent / "python"))
    script = server_dir(wc.base, "bin") / "runbook"  # a runbook that hands over to the session's
    real = str(wc.venv.runbook)
    script.write_text(f"#!{closed / 'python'}\nimport os, sys\nos.execv({real!r}, [{real!r}, *sys.argv[1:]])\n")
    script.chmod(0o755)
    secret = wc.base / "root-only.yaml"
    secret.write_text(cfg.read_text())
    secret.chmod(0o600)
    wc.configure(archive_mode="on", archive_command=f"{script} wal-push -c {cfg} %p",
                 restore_command=f"{wc.venv.runbook} wal-fetch -c {secret} %f %p")
    wc.cluster.start()
    _monitor_role(wc)
    assert subprocess.run([str(script), "--version"], capture_output=True).returncode == 0  # root can
    code, checks = _check(cfg)
    user = _owner(wc.datadir)
    archive, restore = checks[f"archive_command:{user}"], checks[f"restore_command:{user}"]
    assert archive["status"] == "failed", archive
    assert archive["detail"].startswith(f"{user} cannot execute {closed / 'python'}: permission denied ({closed} "
                                        f"is closed to {user})"), archive
    assert "with /usr/bin/python3, not one under /root" in archive["hint"]
    assert restore["status"] == "failed", restore
    assert restore["detail"].startswith(f"{user} cannot read {secret}: permission denied"), restore
    assert "chmod 0640" in restore["hint"]
    assert code == 2


def test_no_connection_means_could_not_run(wal_cluster: Factory) -> None:  # noqa: F811
    wc = wal_cluster()  # never started
    cfg = write_config(wc.base / "repository.yaml", wc.cluster, local=server_dir(wc.base, "repo"))
    code, checks = _check(cfg)
    assert code == 3 and checks["connection"]["status"] == "failed"
