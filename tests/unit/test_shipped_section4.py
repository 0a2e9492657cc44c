"""The shipped runbook covers the whole of the plan's section 4: isolation and provisioning are checklists the
operator ticks item by item, Debian's `pg_createcluster` is a step with its command (a no-op where the server
exists), and both scenarios restore the attachments, chosen by the recovery point."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

from runbook.loader import load_runbook

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def rb():  # type: ignore[no-untyped-def]
    return load_runbook(ROOT / "runbook.yaml")


def _ids(rb, scenario: str) -> list[str]:  # type: ignore[no-untyped-def]
    return [s.id for s in rb.steps_for(scenario)]


def test_isolation_and_provisioning_are_checklists_in_both_scenarios(rb) -> None:  # type: ignore[no-untyped-def]
    for scenario in ("restore-latest", "pitr"):
        ids = _ids(rb, scenario)
        assert ids.index("isolate") + 1 == ids.index("isolate-check") < ids.index("provision-server")
    iso = " ".join(rb.step("isolate-check").manual).lower()
    for words in ("maintenance page", "nothing writes", "refuses their connections", "who was told"):
        assert words in iso
    prov = " ".join(rb.step("provision-server").manual)
    for words in ("PostgreSQL 15", "pg_hba.conf", "listen_addresses", "DNS", "database host setting"):
        assert words in prov


def test_scenario_1_creates_the_debian_cluster_before_checking_the_target(rb) -> None:  # type: ignore[no-untyped-def]
    ids = _ids(rb, "restore-latest")
    assert ids.index("provision-server") < ids.index("create-cluster") < ids.index("provision") < ids.index("fetch")
    assert "create-cluster" not in _ids(rb, "pitr")  # the pitr action makes its own Debian cluster


def test_the_attachments_follow_the_recovery_point_in_both_scenarios(rb) -> None:  # type: ignore[no-untyped-def]
    s1 = rb.step("attachments").with_
    assert s1["backup_id"] == "{{ steps.fetch.backup_id }}" and s1["at"] == "{{ steps.fetch.snapshot_time }}"
    s2 = rb.step("pitr-attachments")
    assert s2.action == "restore-attachments" and s2.with_["at"] == "{{ steps.pitr.recovery_point }}"
    ids = _ids(rb, "pitr")
    assert ids.index("pitr") < ids.index("pitr-attachments") < ids.index("recovery-point")
    assert "{{ steps.pitr-attachments.distance }}" in rb.step("recovery-point").with_["text"]


def _run_create_cluster(rb, tmp_path: Path, cluster: str, tools: dict[str, str]) -> subprocess.CompletedProcess:  # type: ignore[no-untyped-def]
    """The step's own script, as the engine runs it (bash -eo pipefail -c), its env rendered; fake Debian tools."""
    step = rb.step("create-cluster")
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir(exist_ok=True)
    for name, body in tools.items():
        (bin_dir / name).write_text("#!/bin/sh\n" + body + "\n")
        (bin_dir / name).chmod(0o755)
    env = {"PATH": str(bin_dir), "CLUSTER": cluster, "PORT": "5433", "CALLS": str(tmp_path / "calls")}
    assert set(step.env) == {"CLUSTER", "PORT"}
    return subprocess.run(["/bin/bash", "-eo", "pipefail", "-c", step.run], env=env, capture_output=True, text=True)


def test_create_cluster_is_a_no_op_without_a_cluster_name(rb, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    r = _run_create_cluster(rb, tmp_path, "", {"pg_createcluster": 'echo "$@" >> "$CALLS"'})
    assert r.returncode == 0 and "nothing to create" in r.stdout
    assert not (tmp_path / "calls").exists()


@pytest.mark.skipif(os.path.isdir("/etc/postgresql/15/runbook-test-new"), reason="such a cluster exists here")
def test_create_cluster_runs_pg_createcluster_with_the_port_and_starts_it(rb, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    r = _run_create_cluster(rb, tmp_path, "runbook-test-new", {
        "pg_createcluster": 'echo "pg_createcluster $@" >> "$CALLS"', "pg_lsclusters": 'echo "15 runbook-test-new online"'})
    assert r.returncode == 0, r.stderr
    assert (tmp_path / "calls").read_text() == "pg_createcluster 15 runbook-test-new --port 5433 --start\n"
    assert "runbook-test-new online" in r.stdout


def test_create_cluster_without_the_debian_tools_says_what_to_install(rb, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    r = _run_create_cluster(rb, tmp_path, "runbook-test-new", {})
    assert r.returncode == 1 and "apt install postgresql-15" in r.stderr
