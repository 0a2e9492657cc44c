"""The command line's manners: a closed pipe is no traceback, a file of the wrong kind is named as such, and a
status that could look at nothing lists no facts it does not have."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from runbook.errors import Exit
from tests.conftest import ROOT, run_cli


def test_a_reader_that_goes_away_gets_no_traceback() -> None:
    """`runbook schema | head -1`: the reader closes the pipe; before, a BrokenPipeError traceback and exit 1."""
    p = subprocess.Popen([sys.executable, "-m", "runbook", "schema"], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                         cwd=ROOT)
    assert p.stdout is not None and p.stderr is not None
    p.stdout.close()
    err = p.stderr.read().decode()
    assert p.wait(timeout=60) == 141 and err == ""


def test_a_runbook_given_as_the_repository_config_is_named_as_such() -> None:
    r = run_cli("backups", "-c", str(ROOT / "runbook.yaml"))
    assert r.returncode == Exit.CANNOT_RUN
    assert "runbook.yaml is a runbook file (it has steps:), not a repository config" in r.stderr
    assert "unknown key" not in r.stderr and "Traceback" not in r.stderr


def test_a_repository_config_given_as_the_runbook_is_named_as_such(tmp_path: Path) -> None:
    cfg = tmp_path / "repository.yaml"
    cfg.write_text("version: 1\ncluster: {host: /run/postgresql, port: 5432, user: backup}\n"
                   f"local: {{path: {tmp_path / 'repo'}}}\n")
    for args in (("validate", str(cfg)), ("run", str(cfg), "--headless")):
        r = run_cli(*args)
        assert r.returncode == Exit.CANNOT_RUN, r.stderr
        assert "is a repository config (it has cluster:), not a runbook file" in r.stderr
        assert "hint: a runbook file is the FILE of run, validate and status" in r.stderr


def test_status_without_its_config_says_so_and_lists_no_facts(tmp_path: Path) -> None:
    r = run_cli("status", "-c", str(tmp_path / "missing.yaml"), str(ROOT / "runbook.yaml"))
    assert r.returncode == 3
    assert "does not exist" in r.stderr
    assert r.stdout.startswith("Would we make it now? COULD NOT RUN")
    assert "None" not in r.stdout and "does not answer" not in r.stdout and "exposure" not in r.stdout


def test_every_option_of_every_subcommand_has_help_text() -> None:
    import argparse

    from runbook.cli.main import build_parser

    parser = build_parser()
    missing = []
    for group in parser._subparsers._group_actions:  # type: ignore[union-attr]
        for name, sub in group.choices.items():
            for action in sub._actions:
                if not isinstance(action, argparse._HelpAction) and not action.help:
                    missing.append(f"{name} {'/'.join(action.option_strings) or action.dest}")
    assert missing == []


def test_a_command_param_runs_and_shows_as_written_other_values_stay_quoted(tmp_path: Path) -> None:
    """A param of type `command` is shell code by declaration: the step shows and runs the command as given
    (before, `bash -c {{ x }}` displayed as `bash -c 'echo '"'"'…'"'"''`); any other value is still one
    quoted word, so it cannot inject a command."""
    import json

    runbook = tmp_path / "rb.yaml"
    runbook.write_text(
        "version: 1\nname: command params\n"
        "params:\n"
        "  page_on: {type: command, default: 'echo \"page: ON\" && echo second'}\n"
        "  note: {default: 'x; echo INJECTED'}\n"
        "steps:\n"
        "  - id: page\n    run: \"{{ page_on }}\"\n    confirm: none\n"
        "  - id: tell\n    run: echo {{ note }}\n    confirm: none\n")
    state = tmp_path / "state"
    r = run_cli("run", str(runbook), "--mode", "drill", "--headless", "--yes", "--state-dir", str(state))
    assert r.returncode == 0, r.stdout + r.stderr
    assert "page: ON" in r.stdout and "second" in r.stdout
    assert "x; echo INJECTED" in r.stdout and "\nINJECTED" not in r.stdout
    (run_dir,) = (state / "runs").iterdir()
    shown = {e["step"]: e["command"] for e in map(json.loads, (run_dir / "journal.jsonl").read_text().splitlines())
             if e["type"] == "step-started"}
    assert shown == {"page": 'echo "page: ON" && echo second', "tell": "echo 'x; echo INJECTED'"}


def test_step_titles_are_shortened_in_the_middle_never_at_the_end() -> None:
    """At 80 columns the step list had 16 characters: `Restore into a …` lost what the step acts on."""
    from runbook.tui.widgets import abbreviate

    assert abbreviate("Restore into a new database", 16) == "Restore…database"
    assert abbreviate("Fetch the newest verified backup", 16) == "Fetch the…backup"
    assert abbreviate("Short", 16) == "Short"
    for title in ("Point-in-time recovery into a new data directory", "x" * 40, "a b c d e f g h i j k l"):
        short = abbreviate(title, 16)
        assert len(short) <= 16 and "…" in short and title.endswith(short.split("…")[1])
