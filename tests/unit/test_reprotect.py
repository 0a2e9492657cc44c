"""reprotect's own rules, without a recovery: a drill against a repository that is not its own writes nothing;
a recovered server elsewhere than the config's `cluster:` gets a copy of the config pointing at it.
(The whole action runs at the end of both sandbox drills: tests/integration/test_demo.py, tests/integration/test_demo_pitr.py.)"""

from __future__ import annotations

from pathlib import Path

import yaml

from steps.repository.config import load_repository_config
from steps.reprotect import Args, config_for
from tests.support.backup_helpers import run_action


def test_a_drill_writes_nothing_unless_the_repository_is_its_own(tmp_path: Path) -> None:
    cfg = tmp_path / "repository.yaml"
    repo = tmp_path / "repo"
    cfg.write_text(f"version: 1\ncluster: {{host: {tmp_path}, port: 5432}}\nlocal: {{path: {repo}}}\n")
    r = run_action("reprotect", {"config": str(cfg), "host": str(tmp_path / "nowhere"), "mode": "drill",
                                 "drill_writes": "false"})
    assert r.code == 0, r.stdout + r.stderr
    (check,) = r.checks("warning")
    assert check["name"] == "drill" and "writes nothing" in check["hint"]
    assert r.outputs == {} and not repo.exists()
    # in live mode (or a sandbox drill) it does the work: here the server does not answer, and it says so
    r = run_action("reprotect", {"config": str(cfg), "host": str(tmp_path / "nowhere"), "mode": "live"})
    assert r.code == 1 and r.checks("failed")[0]["name"] == "connect"


def test_a_recovered_server_elsewhere_gets_its_own_config(tmp_path: Path) -> None:
    cfg = tmp_path / "repository.yaml"
    cfg.write_text(f"version: 1\ncluster: {{host: /var/run/postgresql, port: 5432, user: backup_user, "
                   f"databases: [app]}}\nlocal: {{path: {tmp_path / 'repo'}}}\nretention: {{keep_last: 3}}\n")
    cfg.chmod(0o640)
    loaded, path = load_repository_config(cfg)
    same = config_for(loaded, path, Args(config=str(cfg), host="/var/run/postgresql", port=5432))
    assert same == path
    other = config_for(loaded, path, Args(config=str(cfg), host="/srv/new/run", port=5433))
    assert other == tmp_path / "repository.recovered.yaml" and (other.stat().st_mode & 0o777) == 0o640
    data = yaml.safe_load(other.read_text())
    assert data["cluster"] == {"host": "/srv/new/run", "port": 5433, "user": "backup_user", "databases": ["app"]}
    assert data["retention"] == {"keep_last": 3} and data["local"]["path"] == str(tmp_path / "repo")


def test_with_pgbackrest_a_recovered_data_directory_gets_its_own_config_and_archive_push(tmp_path: Path) -> None:
    from steps.reprotect import _archive_command

    cfg = tmp_path / "repository.yaml"
    cfg.write_text(f"version: 1\ncluster: {{host: /srv/run, port: 5432, data_directory: /srv/data}}\n"
                   f"local: {{path: {tmp_path / 'repo'}}}\nengine: pgbackrest\npgbackrest:\n  stanza: main\n"
                   "  options: {pg1-path: /srv/data, repo1-path: /srv/pgbr, repo1-s3-key-secret: hunter2hunter2}\n")
    cfg.chmod(0o640)
    loaded, path = load_repository_config(cfg)
    # the same server, the same data directory: the config as it is
    assert config_for(loaded, path, Args(config=str(cfg), host="/srv/run", port=5432), "/srv/data") == path
    # the same socket and port, but PITR restored into a new data directory: pg1-path must name it
    other = config_for(loaded, path, Args(config=str(cfg), host="/srv/run", port=5432), "/srv/data-pitr")
    assert other == tmp_path / "repository.recovered.yaml"
    data = yaml.safe_load(other.read_text())
    assert data["cluster"]["data_directory"] == "/srv/data-pitr"
    assert data["pgbackrest"]["options"]["pg1-path"] == "/srv/data-pitr"
    assert data["pgbackrest"]["options"]["pg1-socket-path"] == "/srv/run"
    assert data["pgbackrest"]["stanza"] == "main" and data["pgbackrest"]["options"]["repo1-path"] == "/srv/pgbr"
    command = _archive_command(Args(config=str(other)), loaded, other)
    assert "archive-push" in command and command.endswith(" %p") and "--stanza=main" in command
    assert "--pg1-path=/srv/data-pitr" in command
    assert "hunter2" not in command  # a secret option never goes on a command line


def test_the_own_engine_refuses_delta(tmp_path: Path) -> None:
    cfg = tmp_path / "repository.yaml"
    cfg.write_text(f"version: 1\ncluster: {{host: {tmp_path}, port: 5432}}\nlocal: {{path: {tmp_path / 'repo'}}}\n")
    r = run_action("pitr", {"config": str(cfg), "pgdata": str(tmp_path / "data"), "target_kind": "latest",
                            "delta": True})
    assert r.code == 1 and "delta: true is for engine pgbackrest" in r.stdout + r.stderr
    assert not (tmp_path / "data").exists()
