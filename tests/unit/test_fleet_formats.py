"""`runbook status --all`'s three forms over lines built here (no cluster): the OpenMetrics text read back by
prometheus_client's own OpenMetrics parser, the JSON document's schema, and the table within 80 columns."""

from __future__ import annotations

import math
from datetime import UTC, datetime
from pathlib import Path

import pytest
from prometheus_client.openmetrics.parser import text_string_to_metric_families

from runbook.cli.fleet import table_lines
from steps.proof.fleet import METRICS, Fleet, Line, configs_of, openmetrics

NOW = datetime(2026, 12, 7, 3, 0, tzinfo=UTC)
HOSTILE = '/etc/runbook/we"ird\\name\nx.yaml'


def _fleet() -> Fleet:
    ok = Line(name="assetflow", config="/etc/runbook/fleet/assetflow.yaml", verdict="ok", cluster_dir="7301",
              reachable=True, rpo_exposure_s=12.5, rpo_target_s=300.0, rto_target_s=7200.0,
              verified_restore={"kind": "logical", "backup_id": "20261207T020000Z", "time": "", "age_s": 3600},
              last_drill={"scenario": "pitr", "run_id": "r1", "ended_at": "", "age_s": 86400, "rto_s": 900.0,
                          "stale": False},
              projected_rto_s=1500.0, projected={"pitr": 1500.0})
    red = Line(name="billing-with-a-very-long-name", config=HOSTILE, verdict="red", reachable=False,
               rpo_target_s=300.0, rto_target_s=7200.0, projected={"pitr": None},
               reasons=["red: a disaster now loses up to 3.1 h of data; the target is 5 min " + "x" * 200,
                        "warning: scenario pitr was never drilled"])
    broken = Line(name="broken", config="/etc/runbook/fleet/broken.yaml", verdict="could not run",
                  error="/etc/runbook/fleet/broken.yaml:2:1: unknown key \"clustr\" (did you mean \"cluster\"?)")
    return Fleet(now=NOW, source="/etc/runbook/fleet", lines=[ok, red, broken])


def test_openmetrics_is_read_back_by_prometheus_client() -> None:
    fleet = _fleet()
    text = openmetrics(fleet)
    assert text.endswith("# EOF\n")
    by_name = {f.name: f for f in text_string_to_metric_families(text)}
    for name, _, _ in METRICS:
        assert name in by_name, (name, sorted(by_name))
        f = by_name[name]
        assert f.type == "gauge" and f.unit == "seconds" and f.documentation
        assert [s.labels["cluster"] for s in f.samples] == ["assetflow", "billing-with-a-very-long-name", "broken"]
    exposure = {s.labels["cluster"]: s.value for s in by_name["runbook_rpo_exposure_seconds"].samples}
    assert exposure["assetflow"] == 12.5 and math.isnan(exposure["billing-with-a-very-long-name"])
    samples = {s.labels["cluster"]: s for s in by_name["runbook_verdict"].samples}
    assert {c: s.value for c, s in samples.items()} == {"assetflow": 0, "billing-with-a-very-long-name": 2,
                                                        "broken": 3}
    assert samples["billing-with-a-very-long-name"].labels["config"] == HOSTILE  # escaped, and read back whole
    assert by_name["runbook_newest_verified_restore_age_seconds"].samples[0].value == 3600
    assert by_name["runbook_last_drill_age_seconds"].samples[0].value == 86400
    assert by_name["runbook_projected_rto_seconds"].samples[0].value == 1500
    assert by_name["runbook_fleet_verdict"].samples[0].value == 3
    assert by_name["runbook_status_generated_timestamp_seconds"].samples[0].value == NOW.timestamp()


def test_json_document_schema() -> None:
    doc = _fleet().as_json()
    assert doc["schema"] == 1 and doc["verdict"] == "could not run" and doc["exit_code"] == 3
    assert doc["counts"] == {"ok": 1, "warning": 0, "red": 1, "could not run": 1}
    assert set(doc["clusters"][0]) == {"name", "config", "cluster_dir", "reachable", "verdict", "exit_code",
                                       "rpo_exposure_s", "rpo_target_s", "newest_verified_restore", "last_drill",
                                       "projected_rto_s", "projected_rto_by_scenario", "rto_target_s", "reasons",
                                       "error"}
    assert doc["clusters"][2]["error"].endswith('(did you mean "cluster"?)')


def test_table_fits_80_columns_and_names_why() -> None:
    lines = table_lines(_fleet(), 80)
    assert all(len(text) <= 80 for text, _ in lines), [t for t, _ in lines if len(t) > 80]
    rows = {verdict: text for text, verdict in lines[3:-1]}
    assert rows["ok"].startswith("assetflow") and "12 s" in rows["ok"] and "25 m" in rows["ok"]
    assert "RED" in rows["red"] and "a disaster now loses up to 3" in rows["red"]
    assert rows["red"].startswith("billin…ng-name")
    # the broken config's line names why, without repeating its path
    assert "ERROR" in rows["could not run"] and 'unknown key "clustr"' in rows["could not run"]
    assert "/etc/runbook/fleet/broken.yaml" not in rows["could not run"]
    assert lines[0][0].startswith("Fleet /etc/runbook/fleet: COULD NOT RUN")


def test_configs_of_a_directory(tmp_path: Path) -> None:
    for name in ("b.yaml", "a.yml", ".hidden.yaml", "notes.txt"):
        (tmp_path / name).write_text("version: 1\n")
    (tmp_path / "sub.yaml").mkdir()
    assert [p.name for p in configs_of(tmp_path)] == ["a.yml", "b.yaml"]
    assert configs_of(tmp_path / "b.yaml") == [tmp_path / "b.yaml"]
    with pytest.raises(FileNotFoundError, match="neither a directory"):
        configs_of(tmp_path / "missing")


def test_cluster_directories_of_a_repository_are_lines_and_only_identifiers_count(tmp_path: Path) -> None:
    """A repository holding several cluster directories: each one no config claims is a line of its own, judged
    from the repository alone; a directory whose name is not a system identifier (written by whoever could write
    the repository: an escape sequence, a dot name) is not read, nor shown."""
    from steps.proof.fleet import gather_fleet

    repo = tmp_path / "repo"
    for name in ("123", "456", "bad\x1b[31mname", "..."):
        (repo / "clusters" / name / "wal").mkdir(parents=True)
    (tmp_path / "fleet").mkdir()
    (tmp_path / "fleet" / "alpha.yaml").write_text(
        f"version: 1\ncluster: {{host: {tmp_path / 'nowhere'}, port: 5432}}\nlocal: {{path: {repo}}}\n")
    (tmp_path / "fleet" / "broken.yaml").write_text("version: 1\nlocal: [\n")
    fleet = gather_fleet(tmp_path / "fleet", None, explicit_file=False, state_dir=tmp_path / "state", now=NOW,
                         cluster=False)
    assert [ln.name for ln in fleet.lines] == ["alpha", "broken", "alpha/123", "alpha/456"]
    by = {ln.name: ln for ln in fleet.lines}
    assert by["alpha/456"].cluster_dir == "456" and by["alpha/456"].verdict == "red"
    assert any("no readable backup" in r for r in by["alpha/456"].reasons)
    assert by["broken"].verdict == "could not run" and "broken.yaml" in str(by["broken"].error)
    assert fleet.exit_code == 3


def test_a_cluster_that_does_not_answer_is_red_naming_why(tmp_path: Path) -> None:
    """Its socket directory has no server (no connection is made: nothing listens): the line is red, its reasons
    say the cluster does not answer and why, and the repository's facts are still there."""
    from steps.proof.fleet import gather_fleet

    (tmp_path / "repo" / "clusters").mkdir(parents=True)
    (tmp_path / "fleet").mkdir()
    (tmp_path / "fleet" / "alpha.yaml").write_text(
        f"version: 1\ncluster: {{host: {tmp_path / 'nowhere'}, port: 5432}}\nlocal: {{path: {tmp_path / 'repo'}}}\n")
    (line,) = gather_fleet(tmp_path / "fleet", None, explicit_file=False, state_dir=tmp_path / "state", now=NOW).lines
    assert line.verdict == "red" and line.reachable is False and line.error is None
    answer = [r for r in line.reasons if r.startswith("red: the cluster does not answer: ")]
    assert answer and str(tmp_path / "nowhere") in answer[0] and "\n" not in answer[0]
