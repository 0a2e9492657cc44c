"""The recovery lock across hosts: a lock object in the repository (local directory and moto's S3 over HTTP).

Two state directories stand in for two hosts (the local flock cannot see across them; only the repository
can). Host A's drill waits at a typed confirmation, its run open; host B is refused with A's user, host and
run id; `--break-lock` needs typed confirmation, takes over and is journaled; the object is gone when the run
closes; a resume keeps its own lock; a rehearsal takes none. A store that ignores `IfNoneMatch` still refuses
the second writer (look before writing, read back after).
"""

from __future__ import annotations

import json
import socket
import textwrap
from pathlib import Path

import pytest

from runbook.errors import Exit, LockHeld
from runbook.journal import read_journal
from tests.conftest import run_cli
from tests.support.s3server import FaultProxy, S3Endpoint, credentials_env, s3_bucket, s3_server  # noqa: F401
from tests.support.signing import signing_yaml

RUNBOOK = """
version: 1
name: Lock test
targets: {rto: 2h, rpo: 5m}
target: "db-host:5432/{{ db }}"
repository: "{{ repository }}"
params:
  db: {default: app}
  repository: {type: path}
steps:
  - id: first
    run: "true"
    confirm: none
  - id: restore
    run: "true"
    confirm: {typed: "{{ db }}"}
"""


@pytest.fixture
def setup(tmp_path: Path, s3_server: S3Endpoint, s3_bucket: str) -> tuple[Path, Path, dict[str, str]]:  # noqa: F811
    repo = tmp_path / "repo"
    cfg = tmp_path / "repository.yaml"
    cfg.write_text(f"version: 1\nlocal: {{path: {repo}}}\n"
                   f"s3: {{bucket: {s3_bucket}, endpoint_url: '{s3_server.url}', region: us-east-1}}\n"
                   + signing_yaml())  # the hosts sign their run summaries
    rb = tmp_path / "runbook.yaml"
    rb.write_text(textwrap.dedent(RUNBOOK).lstrip())
    return rb, cfg, credentials_env()


def run(rb: Path, cfg: Path, state: Path, env: dict[str, str], *more: str) -> object:
    return run_cli("run", str(rb), "--headless", "--yes", "--mode", "drill", "--set", f"repository={cfg}",
                   "--state-dir", str(state), *more, env=env, timeout=60)


def lock_objects(cfg: Path, s3_server: S3Endpoint, bucket: str) -> tuple[list[Path], list[str]]:  # noqa: F811
    local = sorted((cfg.parent / "repo" / "locks").glob("*.json")) if (cfg.parent / "repo" / "locks").exists() else []
    resp = s3_server.client().list_objects_v2(Bucket=bucket, Prefix="locks/")
    return local, [o["Key"] for o in resp.get("Contents", [])]


def test_a_second_host_is_refused_break_lock_takes_over_and_closing_removes_it(
        setup: tuple[Path, Path, dict[str, str]], tmp_path: Path, s3_server: S3Endpoint, s3_bucket: str) -> None:  # noqa: F811
    rb, cfg, env = setup
    host_a, host_b = tmp_path / "host-a", tmp_path / "host-b"
    a = run(rb, cfg, host_a, env)
    assert a.returncode == 4, a.stdout + a.stderr  # waiting for the typed confirmation: the run stays open
    (run_a,) = [p.name for p in (host_a / "runs").iterdir()]
    local, s3 = lock_objects(cfg, s3_server, s3_bucket)
    assert len(local) == 1 and s3 == [f"locks/{local[0].name}"]
    holder = json.loads(local[0].read_text())
    assert holder["run_id"] == run_a and holder["host"] == socket.gethostname() and holder["user"]
    assert holder["target"] == "db-host:5432/app" and holder["since"]

    # host B: refused, with the holder's facts
    b = run(rb, cfg, host_b, env)
    assert b.returncode == Exit.LOCKED, b.stdout + b.stderr
    assert f"run {run_a} by {holder['user']}@{holder['host']}" in b.stderr and "--break-lock" in b.stderr
    assert not (host_b / "runs").exists() or not list((host_b / "runs").iterdir())

    # a resume of A's own run keeps its lock
    r = run_cli("resume", run_a, "--headless", "--yes", "--state-dir", str(host_a), env=env, timeout=60)
    assert r.returncode == Exit.LEFT_OPEN, r.stdout + r.stderr
    assert json.loads(local[0].read_text())["run_id"] == run_a

    # --break-lock without typed confirmation: refused; with it: taken over and journaled
    b = run(rb, cfg, host_b, env, "--break-lock")
    assert b.returncode == Exit.CANNOT_RUN and "typed confirmation" in b.stderr
    b = run(rb, cfg, host_b, env, "--break-lock", "--confirm", "break-lock=break-lock", "--confirm", "restore=app")
    assert b.returncode == 0, b.stdout + b.stderr
    (run_b,) = [p.name for p in (host_b / "runs").iterdir()]
    events = read_journal(host_b / "runs" / run_b / "journal.jsonl").events
    broken = [e for e in events if e["type"] == "lock-broken"]
    assert broken and broken[0]["previous"]["run_id"] == run_a and "repository" in broken[0]["previous"]["where"]
    # B's run closed: its lock objects are gone
    assert lock_objects(cfg, s3_server, s3_bucket) == ([], [])

    # A, resumed now, finds nothing in its way (B closed); its run completes and removes its lock again
    r = run_cli("resume", run_a, "--headless", "--yes", "--confirm", "restore=app", "--state-dir", str(host_a),
                env=env, timeout=60)
    assert r.returncode == 0, r.stdout + r.stderr
    assert lock_objects(cfg, s3_server, s3_bucket) == ([], [])

    # both closed runs left their summaries in every repository's runs/, which status reads from any host
    summary = json.loads((cfg.parent / "repo" / "runs" / f"{run_b}.json").read_text())
    assert summary["mode"] == "drill" and summary["status"] == "completed" and summary["rto_s"] is not None
    keys = [o["Key"] for o in s3_server.client().list_objects_v2(Bucket=s3_bucket, Prefix="runs/")["Contents"]]
    summaries = [k for k in keys if "/" not in k[len("runs/"):]]  # runs/<run id>/ is the journal's mirror
    assert sorted(summaries) == sorted(f"runs/{r}.json{sig}" for r in (run_a, run_b) for sig in ("", ".sig"))
    assert {f"runs/{r}/live.json" for r in (run_a, run_b)} <= set(keys)
    st = run_cli("status", str(rb), "-c", str(cfg), "--state-dir", str(tmp_path / "host-c"), "--json",
                 "--no-cluster", env=env, timeout=60)
    (drill,) = json.loads(st.stdout)["drills"]
    assert drill["run_id"] in (run_a, run_b) and drill["stale"] is False


def test_a_rehearsal_takes_no_lock(setup: tuple[Path, Path, dict[str, str]], tmp_path: Path,
                                   s3_server: S3Endpoint, s3_bucket: str) -> None:  # noqa: F811
    rb, cfg, env = setup
    r = run_cli("run", str(rb), "--headless", "--yes", "--mode", "rehearsal", "--set", f"repository={cfg}",
                "--state-dir", str(tmp_path / "st"), env=env, timeout=60)
    assert r.returncode == 0, r.stdout + r.stderr
    assert lock_objects(cfg, s3_server, s3_bucket) == ([], [])


def test_a_store_that_ignores_if_none_match_still_refuses_the_second(tmp_path: Path, s3_server: S3Endpoint,  # noqa: F811
                                                                     s3_bucket: str) -> None:  # noqa: F811
    from steps.repository.config import RepositoryConfig
    from steps.repository.recovery_lock import acquire

    host, port = s3_server.url.rsplit(":", 1)[0].split("//")[1], s3_server.port
    with FaultProxy((host, port), fail=lambda m, p: False, drop_headers=("If-None-Match",)) as proxy:
        cfg = RepositoryConfig.model_validate({"version": 1, "s3": {
            "bucket": s3_bucket, "endpoint_url": proxy.url, "region": "us-east-1", "max_attempts": 1}})
        first = acquire(cfg, "h:5432/app", {"run_id": "run-1", "user": "ann", "host": "a", "pid": 1, "since": "t"})
        with pytest.raises(LockHeld) as e:
            acquire(cfg, "h:5432/app", {"run_id": "run-2", "user": "bob", "host": "b", "pid": 2, "since": "t"})
        assert "run run-1 by ann@a" in str(e.value)
        first.release()
        second = acquire(cfg, "h:5432/app", {"run_id": "run-2", "user": "bob", "host": "b", "pid": 2, "since": "t"})
        second.release()
