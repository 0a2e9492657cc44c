"""A resumed PITR drill runs the real paths: the run stops at the typed confirmation of the `pitr` step (as it
does when the operator quits there), and `runbook resume` finishes it with the real values, never masked ones.

The data directory's name holds the secrets file's password on purpose: it is shown masked everywhere, is
never written to disk with the run (resume asks for it again), and what runs is the real path."""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest

from runbook.errors import Exit
from runbook.journal import read_journal
from runbook.redact import MASK
from steps.pg.server import Server
from steps.sandbox.build import DB, Sandbox
from steps.sandbox.profile import write_profile
from tests.conftest import ROOT, run_cli
from tests.support.pgcluster import make_base_dir
from tests.support.pitr_cluster import server_runbook_fixture  # noqa: F401 - the server venv


@pytest.fixture
def pitr_sandbox(server_runbook: str, monkeypatch: pytest.MonkeyPatch) -> Iterator[tuple[Sandbox, Path, dict]]:  # type: ignore[type-arg]  # noqa: F811
    monkeypatch.setenv("RUNBOOK_SERVER_RUNBOOK", server_runbook)
    base = make_base_dir("runbook-resume-pitr-")
    sb = Sandbox(base / "sandbox")
    runbook = base / "runbook.yaml"
    shutil.copyfile(ROOT / "runbook.yaml", runbook)
    quiet = lambda *_a, **_k: None  # noqa: E731
    try:
        sb.build(1, 5, say=quiet, archive=True)
        sb.basebackup(say=quiet)
        sb.backup(say=quiet)  # as `demo --scenario pitr`: the attachments snapshot the drill restores
        story = sb.pitr_disaster(say=quiet)
        write_profile(sb, runbook, "pitr", pitr=story)
        yield sb, runbook, story
    finally:
        for d in sb.base.glob("recovered-*"):
            if (d / "PG_VERSION").exists():
                Server(d, sb.server.socket_dir).stop("immediate")
        sb.down()
        shutil.rmtree(base, ignore_errors=True)


def test_a_pitr_drill_quit_at_its_typed_step_resumes_with_the_real_paths(pitr_sandbox) -> None:  # type: ignore[no-untyped-def]
    sb, runbook, story = pitr_sandbox
    password = dict(line.split("=", 1) for line in sb.env_file.read_text().split())["DB_PASSWORD"]
    pgdata = sb.base / f"recovered-{password}"
    state = sb.base.parent / "state"
    profile = runbook.parent / "sandbox.profile.yaml"
    common = ["--headless", "--yes", "--state-dir", str(state)]

    first = run_cli("run", str(runbook), "--profile", str(profile), "--data-lost-at", story["disaster_at"],
                    "--set", f"pgdata={pgdata}", *common, timeout=300)
    assert first.returncode == 4, first.stdout[-3000:] + first.stderr  # detached: the run stays open
    assert "step pitr needs typed confirmation" in first.stdout
    assert password not in first.stdout + first.stderr and MASK in first.stdout
    (run_dir,) = (state / "runs").iterdir()
    saved = json.loads((run_dir / "params.json").read_text())
    assert "pgdata" not in saved["values"] and saved["not_saved"]["pgdata"]["why"] == "contains a secret"
    for f in run_dir.rglob("*"):
        if f.is_file():
            assert password not in f.read_text(errors="replace"), f  # never on disk, in any form
    assert not pgdata.exists()

    # Resumed without the value it could not keep: refused, named, nothing run.
    refused = run_cli("resume", run_dir.name, *common, timeout=60)
    assert refused.returncode == Exit.CANNOT_RUN and 'param "pgdata" was not saved with the run' in refused.stderr + refused.stdout

    # With it: the typed confirmation is the real path, and the step restores into the real path.
    done = run_cli("resume", run_dir.name, "--set", f"pgdata={pgdata}", "--confirm", f"pitr={pgdata}", *common,
                   timeout=400)
    assert done.returncode == 0, done.stdout[-5000:] + done.stderr
    assert password not in done.stdout + done.stderr
    assert (pgdata / "PG_VERSION").is_file()
    assert not [p for p in sb.base.iterdir() if MASK in p.name]  # nothing named with bullets
    events = read_journal(run_dir / "journal.jsonl").events
    assert events[-1]["type"] == "run-finished" and events[-1]["status"] == "completed"
    pitr_ok = [e for e in events if e["type"] == "step-finished" and e.get("step") == "pitr"]
    assert pitr_ok and pitr_ok[-1]["status"] == "succeeded"
    # The recovered server answers with the dropped table back, on the data directory with the real name.
    assert Path(sb.server.psql("show data_directory")).resolve() == pgdata.resolve()
    assert int(sb.server.psql("select count(*) from maintenance_records", db=DB)) > 0
    for f in run_dir.rglob("*"):
        if f.is_file():
            assert password not in f.read_text(errors="replace"), f
    assert os.stat(pgdata).st_mode & 0o777 == 0o700
