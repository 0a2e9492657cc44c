"""The command line end to end, as an operator runs it: real processes, real files, real signals."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from runbook.errors import Exit
from runbook.journal import read_journal
from tests.conftest import ROOT, run_cli


def _runs(state_dir: Path) -> list[str]:
    return sorted(p.name for p in (state_dir / "runs").iterdir())


def _journal(state_dir: Path, run_id: str) -> list[dict]:
    return read_journal(state_dir / "runs" / run_id / "journal.jsonl").events


def test_shipped_runbook_validates() -> None:
    r = run_cli("validate", "runbook.yaml")
    assert r.returncode == 0, r.stderr
    assert "valid" in r.stdout


def test_rehearsal_of_the_shipped_runbook_and_its_report(state_dir: Path) -> None:
    r = run_cli("run", "runbook.yaml", "--headless", "--mode", "rehearsal", "--yes", "--scenario", "restore-latest",
                "--state-dir", str(state_dir))
    assert r.returncode == 0, r.stdout + r.stderr
    assert "REHEARSAL" in r.stdout
    (run_id,) = _runs(state_dir)
    rep = run_cli("report", run_id, "--state-dir", str(state_dir))
    assert rep.returncode == 0, rep.stderr
    from runbook.loader import load_runbook

    rb = load_runbook(ROOT / "runbook.yaml")
    for step in rb.steps_for("restore-latest"):
        assert step.display_title in rep.stdout
    for step in rb.steps_for("pitr"):
        if step.scenarios == ["pitr"]:
            assert step.display_title not in rep.stdout
    assert "## RTO" in rep.stdout and "Target | 2:00:00" in rep.stdout
    assert "REHEARSAL" in rep.stdout
    runs = run_cli("runs", "--json", "--state-dir", str(state_dir))
    (row,) = json.loads(runs.stdout)
    assert row["status"] == "completed" and row["mode"] == "rehearsal" and row["scenario"] == "restore-latest"


def test_hostile_parameter_value_stays_literal(write_runbook, state_dir: Path, tmp_path: Path) -> None:
    victim = tmp_path / "victim"
    victim.mkdir()
    (victim / "keep").write_text("x")
    path = write_runbook("""
        version: 1
        name: t
        params:
          label: {help: free text}
        steps:
          - {id: echo, run: "echo got: {{ label }}", confirm: none}
    """)
    hostile = f"'; rm -rf {victim}; echo $(touch {tmp_path}/pwned) `touch {tmp_path}/pwned2` \""
    r = run_cli("run", str(path), "--headless", "--yes", "--set", f"label={hostile}", "--state-dir", str(state_dir))
    assert r.returncode == 0, r.stdout + r.stderr
    assert (victim / "keep").exists()
    assert not (tmp_path / "pwned").exists() and not (tmp_path / "pwned2").exists()
    assert f"got: {hostile}" in r.stdout


def test_value_failing_its_pattern_is_refused_before_anything_runs(write_runbook, state_dir: Path, tmp_path: Path) -> None:
    path = write_runbook(f"""
        version: 1
        name: t
        params:
          db_name: {{default: app, pattern: '^[a-z_]+$'}}
        steps:
          - {{id: a, run: "touch {tmp_path}/ran", confirm: none}}
    """)
    r = run_cli("run", str(path), "--headless", "--yes", "--set", "db_name=x; rm -rf /", "--state-dir", str(state_dir))
    assert r.returncode == Exit.CANNOT_RUN
    assert "db_name" in r.stderr and "Traceback" not in r.stderr
    assert not (tmp_path / "ran").exists()
    r = run_cli("run", str(path), "--headless", "--yes", "--set", "db_nmae=x", "--state-dir", str(state_dir))
    assert r.returncode == Exit.CANNOT_RUN and 'did you mean "db_name"' in r.stderr


def test_secret_never_reaches_disk_or_screen(write_runbook, state_dir: Path, tmp_path: Path) -> None:
    secret = "Sup3r-S3cret-Pw"
    env_file = tmp_path / "db.env"
    env_file.write_text(f"DB_HOST=localhost\nDB_PASSWORD={secret}\n")
    os.chmod(env_file, 0o600)
    path = write_runbook(f"""
        version: 1
        name: t
        secrets: {{env_file: {env_file}}}
        steps:
          - id: leak
            run: |
              echo "password is $PGPASSWORD"
              printf '%s' "${{PGPASSWORD:0:6}}" >&2; sleep 0.4; printf '%s\\n' "${{PGPASSWORD:6}}" >&2
              echo "host is $PGHOST"
            confirm: none
    """)
    r = run_cli("run", str(path), "--headless", "--yes", "--state-dir", str(state_dir))
    assert r.returncode == 0, r.stdout + r.stderr
    assert secret not in r.stdout + r.stderr
    assert "password is ••••••" in r.stdout and "host is localhost" in r.stdout
    (run_id,) = _runs(state_dir)
    rep = run_cli("report", run_id, "--state-dir", str(state_dir))
    assert secret not in rep.stdout
    for p in state_dir.rglob("*"):
        if p.is_file():
            assert secret.encode() not in p.read_bytes(), f"secret found in {p}"
    assert any("••••••" in p.read_text() for p in state_dir.rglob("output.log"))


def test_world_readable_secrets_file_is_refused(write_runbook, state_dir: Path, tmp_path: Path) -> None:
    env_file = tmp_path / "db.env"
    env_file.write_text("DB_PASSWORD=x\n")
    os.chmod(env_file, 0o644)
    path = write_runbook(f"""
        version: 1
        name: t
        secrets: {{env_file: {env_file}}}
        steps:
          - {{id: a, run: "true"}}
    """)
    r = run_cli("run", str(path), "--headless", "--yes", "--state-dir", str(state_dir))
    assert r.returncode == Exit.CANNOT_RUN
    assert str(env_file) in r.stderr and "chmod 600" in r.stderr and "Traceback" not in r.stderr
    assert not (state_dir / "runs").exists() or not _runs(state_dir)


def test_typed_step_needs_confirm_flag_under_yes(write_runbook, state_dir: Path, tmp_path: Path) -> None:
    path = write_runbook(f"""
        version: 1
        name: t
        params:
          db_name: {{default: app_db}}
        steps:
          - id: drop
            run: "touch {tmp_path}/dropped"
            confirm: {{typed: "{{{{ db_name }}}}"}}
    """)
    r = run_cli("run", str(path), "--headless", "--yes", "--state-dir", str(state_dir))
    assert r.returncode == 4, r.stdout + r.stderr
    assert "--confirm drop=" in r.stdout
    assert not (tmp_path / "dropped").exists()
    (run_id,) = _runs(state_dir)
    # a wrong value refuses; the run stays open
    r = run_cli("resume", run_id, "--headless", "--yes", "--confirm", "drop=prod_db", "--state-dir", str(state_dir))
    assert r.returncode == 4 and not (tmp_path / "dropped").exists()
    assert "confirm-refused" in [e["type"] for e in _journal(state_dir, run_id)]
    r = run_cli("resume", run_id, "--headless", "--yes", "--confirm", "drop=app_db", "--state-dir", str(state_dir))
    assert r.returncode == 0, r.stdout + r.stderr
    assert (tmp_path / "dropped").exists()


def test_interactive_prompts_on_stdin(write_runbook, state_dir: Path, tmp_path: Path) -> None:
    path = write_runbook(f"""
        version: 1
        name: t
        steps:
          - {{id: a, run: "touch {tmp_path}/a"}}
          - {{id: b, run: "touch {tmp_path}/b", confirm: {{typed: "yes-really"}}}}
          - {{id: c, run: "touch {tmp_path}/c"}}
    """)
    answers = "y\nnope\nyes-really\ns\n\ns\nno time today\n"
    r = run_cli("run", str(path), "--headless", "--state-dir", str(state_dir), input=answers)
    assert r.returncode == 0, r.stdout + r.stderr
    assert (tmp_path / "a").exists() and (tmp_path / "b").exists() and not (tmp_path / "c").exists()
    assert "a skip needs a reason" in r.stdout
    (run_id,) = _runs(state_dir)
    events = _journal(state_dir, run_id)
    assert [e["reason"] for e in events if e["type"] == "step-skipped"] == ["no time today"]


def _start_runner(path: Path, state_dir: Path) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-m", "runbook", "run", str(path), "--headless", "--yes", "--state-dir", str(state_dir)],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, cwd=ROOT,
        env={**os.environ, "NO_COLOR": "1"}, start_new_session=True,
    )


def _wait_for_step_start(state_dir: Path, step: str, timeout: float = 20) -> str:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if (state_dir / "runs").exists():
            for run_id in _runs(state_dir):
                try:
                    events = _journal(state_dir, run_id)
                except Exception:
                    continue
                if any(e["type"] == "step-started" and e["step"] == step for e in events):
                    return run_id
        time.sleep(0.1)
    raise AssertionError(f"step {step} never started")


KILL_RUNBOOK = """
    version: 1
    name: t
    steps:
      - {{id: first, run: "echo first", confirm: none}}
      - {{id: long, run: "echo begin; sleep $(cat {sleep}); echo end; touch {marker}", confirm: none}}
      - {{id: last, run: "echo last", confirm: none}}
"""


def test_kill_runner_alone_step_goes_on_and_resume_reattaches(write_runbook, state_dir: Path, tmp_path: Path) -> None:
    marker = tmp_path / "long-done"
    (tmp_path / "sleep").write_text("3")
    path = write_runbook(KILL_RUNBOOK.format(sleep=tmp_path / "sleep", marker=marker))
    runner = _start_runner(path, state_dir)
    run_id = _wait_for_step_start(state_dir, "long")
    os.kill(runner.pid, signal.SIGKILL)  # the terminal dies: only the runner, not the step's session
    runner.wait()
    before = _journal(state_dir, run_id)
    r = run_cli("resume", run_id, "--headless", "--yes", "--state-dir", str(state_dir))
    assert r.returncode == 0, r.stdout + r.stderr
    assert marker.exists()
    after = _journal(state_dir, run_id)
    assert after[: len(before)] == before  # every earlier event intact
    types = [e["type"] for e in after]
    assert "step-interrupted" not in types
    long_started = [e for e in after if e["type"] == "step-started" and e["step"] == "long"]
    assert len(long_started) == 1  # never run twice
    fin = [e for e in after if e["type"] == "step-finished" and e["step"] == "long"]
    assert fin[-1]["status"] == "succeeded"
    assert types[-1] == "run-finished" and after[-1]["status"] == "completed"


def test_kill_runner_and_step_session_marks_it_interrupted(write_runbook, state_dir: Path, tmp_path: Path) -> None:
    marker = tmp_path / "long-done"
    (tmp_path / "sleep").write_text("60")
    path = write_runbook(KILL_RUNBOOK.format(sleep=tmp_path / "sleep", marker=marker))
    runner = _start_runner(path, state_dir)
    run_id = _wait_for_step_start(state_dir, "long")
    started = [e for e in _journal(state_dir, run_id) if e["type"] == "step-started" and e["step"] == "long"][0]
    os.kill(runner.pid, signal.SIGKILL)
    os.kill(started["supervisor_pid"], signal.SIGKILL)
    os.killpg(started["pgid"], signal.SIGKILL)
    runner.wait()
    before = _journal(state_dir, run_id)
    # headless without --rerun-interrupted: stops and says why; nothing re-runs by accident
    r = run_cli("resume", run_id, "--headless", "--yes", "--state-dir", str(state_dir))
    assert r.returncode == 4, r.stdout + r.stderr
    assert "interrupted" in r.stdout and "--rerun-interrupted" in r.stdout
    mid = _journal(state_dir, run_id)
    assert mid[: len(before)] == before
    assert sum(1 for e in mid if e["type"] == "step-started" and e["step"] == "long") == 1
    runs = run_cli("runs", "--state-dir", str(state_dir))
    assert run_id in runs.stdout and "open" in runs.stdout
    # a new run of the same runbook and target is refused while this one is open
    other = run_cli("run", str(path), "--headless", "--yes", "--state-dir", str(state_dir))
    assert other.returncode == Exit.LOCKED and f"runbook resume {run_id}" in other.stderr
    # re-run by explicit choice (the step reads its sleep from a file, so the re-run is quick)
    (tmp_path / "sleep").write_text("0")
    r = run_cli("resume", run_id, "--headless", "--yes", "--rerun-interrupted", "--state-dir", str(state_dir),
                timeout=120)
    assert r.returncode == 0, r.stdout + r.stderr
    events = _journal(state_dir, run_id)
    assert [e["type"] for e in events].count("step-interrupted") == 1
    assert sum(1 for e in events if e["type"] == "step-started" and e["step"] == "long") == 2
    assert marker.exists()


def test_second_run_is_refused_while_one_is_active(write_runbook, state_dir: Path) -> None:
    path = write_runbook("""
        version: 1
        name: t
        target: "db1:5432/app"
        steps:
          - {id: long, run: "sleep 30", confirm: none}
    """)
    runner = _start_runner(path, state_dir)
    try:
        _wait_for_step_start(state_dir, "long")
        r = run_cli("run", str(path), "--headless", "--yes", "--state-dir", str(state_dir))
        assert r.returncode == Exit.LOCKED
        assert "db1:5432/app" in r.stderr and f"pid {runner.pid}" in r.stderr and "since" in r.stderr
        assert "@" in r.stderr  # user@host
    finally:
        os.killpg(runner.pid, signal.SIGKILL)
        runner.wait()
        for run_id in _runs(state_dir):
            for e in _journal(state_dir, run_id):
                if e["type"] == "step-started":
                    try:
                        os.killpg(e["pgid"], signal.SIGKILL)
                        os.kill(e["supervisor_pid"], signal.SIGKILL)
                    except ProcessLookupError:
                        pass


def test_user_errors_have_no_traceback(tmp_path: Path, state_dir: Path) -> None:
    r = run_cli("run", str(tmp_path / "missing.yaml"), "--headless", "--state-dir", str(state_dir))
    assert r.returncode == Exit.CANNOT_RUN and "Traceback" not in r.stderr and "missing.yaml" in r.stderr
    r = run_cli("resume", "no-such-run", "--headless", "--state-dir", str(state_dir))
    assert r.returncode != 0 and "Traceback" not in r.stderr and "runbook runs" in r.stderr
    r = run_cli("report", "../etc", "--state-dir", str(state_dir))
    assert r.returncode != 0 and "Traceback" not in r.stderr
    r = run_cli("run", "runbook.yaml", "--headless", "--scenario", "restore-lates", "--state-dir", str(state_dir))
    assert r.returncode == Exit.CANNOT_RUN and 'did you mean "restore-latest"' in r.stderr
    r = run_cli("run", "runbook.yaml", "--headless", "--mode", "rehearsal", "--scenario", "pitr",
                "--set", "target_time=2026-11-25T03:00:00+07:00", "--incident-start", "2026-11-25T03:00",
                "--state-dir", str(state_dir))
    assert r.returncode == Exit.CANNOT_RUN and "zone" in r.stderr


def test_param_without_value_used_by_a_step_is_refused_up_front(write_runbook, state_dir: Path) -> None:
    path = write_runbook("""
        version: 1
        name: t
        params:
          label: {help: "no default and not required"}
        steps:
          - {id: a, run: "echo {{ label }}", confirm: none}
    """)
    r = run_cli("run", str(path), "--headless", "--yes", "--mode", "drill", "--state-dir", str(state_dir), timeout=30)
    assert r.returncode == Exit.CANNOT_RUN, r.stdout + r.stderr
    assert "--set label=" in r.stderr


def test_without_a_terminal_run_resume_and_demo_refuse_instead_of_starting_the_tui(write_runbook, state_dir: Path,
                                                                                  tmp_path: Path) -> None:
    """The reproduced case: `runbook run </dev/null` started the TUI, wrote escape codes into the log and spun."""
    path = write_runbook("""
        version: 1
        name: t
        steps:
          - {id: a, run: "echo a", confirm: none}
    """)
    for args in (("run", str(path)), ("resume", "some-run"), ("demo", "--dir", str(tmp_path / "sandbox"))):
        t0 = time.monotonic()
        r = run_cli(*args, "--state-dir", str(state_dir), input="", timeout=30)
        assert r.returncode == Exit.CANNOT_RUN, (args, r.stdout, r.stderr)
        assert "needs a terminal" in r.stderr and "--headless" in r.stderr and "Traceback" not in r.stderr
        assert "\x1b[" not in r.stdout + r.stderr  # no escape codes: the TUI never started
        assert time.monotonic() - t0 < 20
    assert not (state_dir / "runs").exists() or not any((state_dir / "runs").iterdir())
    assert not (tmp_path / "sandbox").exists()  # demo refused before building anything


# --- secrets: shown masked, used real ---------------------------------------------------------------


def _secrets_file(tmp_path: Path, text: str) -> Path:
    env_file = tmp_path / "db.env"
    env_file.write_text(text)
    os.chmod(env_file, 0o600)
    return env_file


def _files_text(state_dir: Path) -> str:
    return "\n".join(p.read_bytes().decode("utf-8", "replace") for p in state_dir.rglob("*") if p.is_file())


def test_a_secret_of_one_character_is_refused_before_anything_runs(write_runbook, state_dir: Path,
                                                                   tmp_path: Path) -> None:
    env_file = _secrets_file(tmp_path, "DB_USER=postgres\nDB_PASSWORD=Q\n")
    path = write_runbook(f"""
        version: 1
        name: t
        secrets: {{env_file: {env_file}}}
        steps:
          - {{id: a, run: "touch {tmp_path}/ran", confirm: none}}
    """)
    r = run_cli("run", str(path), "--headless", "--yes", "--state-dir", str(state_dir))
    assert r.returncode == Exit.CANNOT_RUN, r.stdout + r.stderr
    assert "DB_PASSWORD" in r.stderr and "8 characters" in r.stderr and "Traceback" not in r.stderr
    assert "=Q" not in r.stderr
    assert not (tmp_path / "ran").exists()
    assert not (state_dir / "runs").exists() or not _runs(state_dir)


def test_a_secret_equal_to_a_journal_key_leaves_the_journal_intact(write_runbook, state_dir: Path,
                                                                   tmp_path: Path) -> None:
    env_file = _secrets_file(tmp_path, "DB_PASSWORD=restore_dir\nAPI_TOKEN=incident_start\n")
    path = write_runbook(f"""
        version: 1
        name: t
        secrets: {{env_file: {env_file}}}
        params:
          restore_dir: {{default: {tmp_path}/restore}}
        steps:
          - id: a
            run: |
              echo "password $PGPASSWORD, token $API_TOKEN"
              mkdir -p {{{{ restore_dir }}}}
            confirm: none
          - {{id: b, run: "echo done", confirm: {{typed: "go"}}}}
    """)
    r = run_cli("run", str(path), "--headless", "--yes", "--incident-start", "2026-11-25T03:00:00Z",
                "--state-dir", str(state_dir))
    assert r.returncode == 4, r.stdout + r.stderr  # stops at the typed step
    assert "password ••••••, token ••••••" in r.stdout
    (run_id,) = _runs(state_dir)
    events = _journal(state_dir, run_id)  # parses and verifies its hash chain
    started = events[0]
    assert started["incident_start"].startswith("2026-11-25T03:00:00")
    assert started["params"] == {"restore_dir": f"{tmp_path}/restore"}
    r = run_cli("resume", run_id, "--headless", "--yes", "--confirm", "b=go", "--state-dir", str(state_dir))
    assert r.returncode == 0, r.stdout + r.stderr
    rep = run_cli("report", run_id, "--state-dir", str(state_dir))
    assert rep.returncode == 0 and "2026-11-25" in rep.stdout, rep.stdout + rep.stderr
    assert "hash chain verified" in rep.stdout
    saved = json.loads((state_dir / "runs" / run_id / "params.json").read_text())
    assert saved["values"] == {"restore_dir": f"{tmp_path}/restore"}


def test_quoted_and_json_forms_of_a_secret_are_masked(write_runbook, state_dir: Path, tmp_path: Path) -> None:
    secret = """Pa'ss"w0rd-X"""
    env_file = _secrets_file(tmp_path, f"DB_PASSWORD={secret}\n")
    path = write_runbook(f"""
        version: 1
        name: t
        secrets: {{env_file: {env_file}}}
        params:
          api_token: {{secret: true}}
        steps:
          - id: show
            run: |
              python3 -c 'import json, os, shlex; p = os.environ["PGPASSWORD"]; print(shlex.quote(p)); print(json.dumps({{"pw": p}}))'
              printf '%s\\n' {{{{ api_token }}}} | python3 -c 'import json, sys; print(json.dumps(sys.stdin.read().strip()))'
            confirm: none
    """)
    token = """t0k'en"quote"""
    r = run_cli("run", str(path), "--headless", "--yes", "--set", f"api_token={token}", "--state-dir", str(state_dir))
    assert r.returncode == 0, r.stdout + r.stderr
    shell_form = "'Pa'\"'\"'ss\"w0rd-X'"
    json_form = 'Pa\'ss\\"w0rd-X'
    token_json = 't0k\'en\\"quote'
    everything = r.stdout + r.stderr + _files_text(state_dir)
    for form in (secret, shell_form, json_form, token, token_json, "w0rd", "t0k"):
        assert form not in everything, form
    (run_id,) = _runs(state_dir)
    _journal(state_dir, run_id)  # intact
    assert "••••••" in r.stdout


def test_a_param_containing_a_user_name_is_shown_and_used_real(write_runbook, state_dir: Path,
                                                               tmp_path: Path) -> None:
    env_file = _secrets_file(tmp_path, "DB_USER=postgres\nDB_PASSWORD=Sup3r-S3cret-Pw\n")
    pgdata = tmp_path / "postgresql" / "15" / "recovered"
    path = write_runbook(f"""
        version: 1
        name: t
        secrets: {{env_file: {env_file}}}
        params:
          pgdata: {{type: path, default: {pgdata}}}
        steps:
          - id: a
            run: |
              mkdir -p {{{{ pgdata }}}} && echo as "$PGUSER" in {{{{ pgdata }}}}
            confirm: none
    """)
    r = run_cli("run", str(path), "--headless", "--yes", "--state-dir", str(state_dir))
    assert r.returncode == 0, r.stdout + r.stderr
    assert pgdata.is_dir()
    assert f"as postgres in {pgdata}" in r.stdout
    assert "••••••" not in r.stdout
    (run_id,) = _runs(state_dir)
    events = _journal(state_dir, run_id)
    assert events[0]["params"] == {"pgdata": str(pgdata)}
    (command,) = [e["command"] for e in events if e["type"] == "step-awaiting"]
    assert command.startswith(f"mkdir -p {pgdata} && echo as")  # the command as shown


def test_resume_after_a_typed_step_uses_the_real_values(write_runbook, state_dir: Path, tmp_path: Path) -> None:
    env_file = _secrets_file(tmp_path, "DB_USER=postgres\nDB_PASSWORD=Sup3r-S3cret-Pw\n")
    pgdata = tmp_path / "postgresql" / "15" / "recovered"
    path = write_runbook(f"""
        version: 1
        name: t
        secrets: {{env_file: {env_file}}}
        params:
          pgdata: {{type: path, default: {pgdata}}}
        steps:
          - {{id: first, run: "echo first", confirm: none}}
          - id: start
            run: |
              mkdir -p {{{{ pgdata }}}} && echo "$PGUSER" > {{{{ pgdata }}}}/user
            confirm: {{typed: "{{{{ pgdata }}}}"}}
    """)
    r = run_cli("run", str(path), "--headless", "--yes", "--state-dir", str(state_dir))
    assert r.returncode == 4, r.stdout + r.stderr  # quit at the typed step
    assert "--confirm start=" in r.stdout
    (run_id,) = _runs(state_dir)
    r = run_cli("resume", run_id, "--headless", "--yes", "--confirm", f"start={pgdata}", "--state-dir", str(state_dir))
    assert r.returncode == 0, r.stdout + r.stderr  # the typed confirmation expects the real path
    assert (pgdata / "user").read_text() == "postgres\n"  # the command ran with the real path
    assert f"mkdir -p {pgdata}" in r.stdout
    saved = json.loads((state_dir / "runs" / run_id / "params.json").read_text())
    assert saved["values"] == {"pgdata": str(pgdata)}


def test_values_not_saved_are_asked_for_again_on_resume(write_runbook, state_dir: Path, tmp_path: Path) -> None:
    password = "Sup3r-S3cret-Pw"
    token = "tok-7f3a9c2e1b"
    env_file = _secrets_file(tmp_path, f"DB_USER=postgres\nDB_PASSWORD={password}\n")
    out = tmp_path / "used"
    path = write_runbook(f"""
        version: 1
        name: t
        secrets: {{env_file: {env_file}}}
        params:
          label: {{default: plain}}
          url: {{help: contains the password}}
          api_token: {{secret: true}}
        steps:
          - {{id: first, run: "echo first", confirm: none}}
          - id: use
            run: |
              printf '%s|%s|%s|%s' {{{{ label }}}} {{{{ api_token }}}} {{{{ url }}}} "$PGPASSWORD" > {out}
            confirm: {{typed: go}}
    """)
    url = f"postgres://app:{password}@db1/app"
    r = run_cli("run", str(path), "--headless", "--yes", "--set", f"api_token={token}", "--set", f"url={url}",
                "--set", "label=given", "--state-dir", str(state_dir))
    assert r.returncode == 4, r.stdout + r.stderr
    (run_id,) = _runs(state_dir)
    text = (state_dir / "runs" / run_id / "params.json").read_text()
    saved = json.loads(text)
    # real values of the params that are no secret; the secret param and the one holding a secret: not saved
    assert saved["values"] == {"label": "given"}
    assert saved["not_saved"] == {"api_token": {"why": "secret", "from": "--set"},
                                  "url": {"why": "contains a secret", "from": "--set"}}
    assert "••••••" not in text
    r = run_cli("resume", run_id, "--headless", "--yes", "--confirm", "use=go", "--state-dir", str(state_dir))
    assert r.returncode == Exit.CANNOT_RUN, r.stdout + r.stderr
    assert "--set api_token=" in r.stderr and "--set url=" in r.stderr and token not in r.stderr
    assert not out.exists()
    r = run_cli("resume", run_id, "--headless", "--yes", "--confirm", "use=go", "--set", f"api_token={token}",
                "--set", f"url={url}", "--state-dir", str(state_dir))
    assert r.returncode == 0, r.stdout + r.stderr
    assert out.read_text() == f"given|{token}|{url}|{password}"
    for secret in (password, token):
        assert secret not in r.stdout + r.stderr + _files_text(state_dir)


def test_headless_resume_retries_the_failed_step_once_when_asked(write_runbook, state_dir: Path, tmp_path: Path) -> None:
    flag = tmp_path / "fixed"
    path = write_runbook(f"""
        version: 1
        name: t
        steps:
          - {{id: one, run: "echo one"}}
          - {{id: two, run: "test -e {flag} || exit 3"}}
          - {{id: three, run: "echo three-ran"}}
    """)
    r = run_cli("run", str(path), "--headless", "--yes", "--mode", "drill", "--state-dir", str(state_dir))
    assert r.returncode == 1, r.stdout + r.stderr
    (run_id,) = _runs(state_dir)
    assert f"runbook resume {run_id} --state-dir {state_dir} --headless --yes --retry-failed" in r.stdout

    def attempts() -> list[int]:
        return [e["attempt"] for e in _journal(state_dir, run_id) if e.get("type") == "step-started"
                and e.get("step") == "two"]

    r = run_cli("resume", run_id, "--headless", "--yes", "--state-dir", str(state_dir))
    assert r.returncode == 1 and attempts() == [1]  # without the flag a failed step is not tried again
    r = run_cli("resume", run_id, "--headless", "--yes", "--retry-failed", "--state-dir", str(state_dir))
    assert r.returncode == 1, r.stdout + r.stderr  # tried once more, failed again: the run stops, no loop
    assert attempts() == [1, 2] and "three-ran" not in r.stdout
    flag.touch()
    r = run_cli("resume", run_id, "--headless", "--yes", "--retry-failed", "--state-dir", str(state_dir))
    assert r.returncode == 0, r.stdout + r.stderr
    assert attempts() == [1, 2, 3] and "three-ran" in r.stdout
    assert sum(e.get("type") == "retry-requested" for e in _journal(state_dir, run_id)) == 2
