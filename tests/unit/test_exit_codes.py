"""One exit code for each kind of failure, across every subcommand (runbook.errors.Exit, docs/commands.md).

Each subcommand is run as an operator runs it (the venv's `runbook` script, in a child process) with a file that
does not exist and with a file of the other kind (a runbook where a repository config is expected, and the
reverse): every one exits `Exit.CANNOT_RUN`, says what is wrong on one line of stderr (plus, at most, one `hint:`
line), and prints no traceback. The WAL commands keep PostgreSQL's contracts instead, and are held to them here.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from runbook.errors import Exit
from tests.conftest import ROOT

RUNBOOK = Path(sys.executable).parent / "runbook"
RUNBOOK_FILE = ROOT / "runbook.yaml"

# Every subcommand that reads a repository config (-c): what the command line is, before `-c FILE`.
WITH_CONFIG: dict[str, tuple[str, ...]] = {
    "backup": ("backup",),
    "backups": ("backups",),
    "prune": ("prune",),
    "basebackup": ("basebackup",),
    "check": ("check",),
    "verify-backup": ("verify-backup",),
    "status": ("status", str(RUNBOOK_FILE), "--no-cluster"),
    "keys": ("keys", "list"),
}
# Every subcommand that reads a runbook file: its command line with FILE in it.
WITH_RUNBOOK: dict[str, tuple[str, ...]] = {
    "validate": ("validate", "FILE"),
    "run": ("run", "FILE", "--headless"),
    "runs": ("runs", "FILE"),
    "demo": ("demo", "--headless", "--runbook", "FILE"),
}
# The others: what each is asked that cannot be done.
OTHERS: dict[str, tuple[str, ...]] = {
    "resume": ("resume", "no-such-run", "--headless"),
    "report": ("report", "no-such-run"),
    "watch": ("watch", "no-such-run", "--headless"),
    "serve": ("serve", "no-such-run"),
}
WAL = {"wal-push", "wal-fetch"}  # PostgreSQL's contracts, below
NOTHING_TO_GET_WRONG = {"schema"}  # no file, no argument


def cli(*args: str, tmp_path: Path) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k not in ("RUNBOOK_CONFIG", "RUNBOOK_SANDBOX_DIR")}
    env |= {"NO_COLOR": "1", "COLUMNS": "120", "XDG_STATE_HOME": str(tmp_path / "state"),
            "RUNBOOK_SANDBOX_DIR": str(tmp_path / "sandbox")}
    return subprocess.run([str(RUNBOOK), *args], capture_output=True, text=True, timeout=60, env=env, cwd=tmp_path)


def assert_one_message(r: subprocess.CompletedProcess[str], code: int, says: str, what: str) -> None:
    assert r.returncode == code, f"{what}: exit {r.returncode}, not {code}\n{r.stdout}{r.stderr}"
    assert "Traceback" not in r.stderr + r.stdout, f"{what}: a traceback\n{r.stderr}"
    lines = r.stderr.strip().splitlines()
    assert lines and lines[0].startswith("runbook") and says in lines[0], f"{what}: first line of stderr\n{r.stderr}"
    assert len(lines) == 1 or (len(lines) == 2 and lines[1].startswith("  hint: ")), f"{what}: more than a message " \
                                                                                   f"and its hint\n{r.stderr}"


def repository_config(tmp_path: Path) -> Path:
    cfg = tmp_path / "repository.yaml"
    cfg.write_text("version: 1\ncluster: {host: /run/postgresql, port: 5432, user: backup}\n"
                   f"local: {{path: {tmp_path / 'repo'}}}\n")
    return cfg


def test_every_subcommand_is_held_to_the_table() -> None:
    """A new subcommand is added here, or this fails: none escapes the table by being forgotten."""
    from runbook.cli.main import build_parser

    parser = build_parser()
    names = {n for g in parser._subparsers._group_actions for n in g.choices}  # type: ignore[union-attr]
    covered = set(WITH_CONFIG) | set(WITH_RUNBOOK) | set(OTHERS) | WAL | NOTHING_TO_GET_WRONG
    assert names == covered


@pytest.mark.parametrize("name", sorted(WITH_CONFIG))
def test_a_missing_repository_config_cannot_run(name: str, tmp_path: Path) -> None:
    missing = tmp_path / "missing.yaml"
    r = cli(*WITH_CONFIG[name], "-c", str(missing), tmp_path=tmp_path)
    assert_one_message(r, Exit.CANNOT_RUN, f"{missing} (given with -c) does not exist", name)


@pytest.mark.parametrize("name", sorted(WITH_CONFIG))
def test_a_runbook_given_as_the_repository_config_is_named_and_cannot_run(name: str, tmp_path: Path) -> None:
    r = cli(*WITH_CONFIG[name], "-c", str(RUNBOOK_FILE), tmp_path=tmp_path)
    assert_one_message(r, Exit.CANNOT_RUN, "is a runbook file (it has steps:), not a repository config", name)


@pytest.mark.parametrize("name", sorted(WITH_RUNBOOK))
def test_a_missing_runbook_cannot_run(name: str, tmp_path: Path) -> None:
    missing = tmp_path / "missing.yaml"
    r = cli(*(str(missing) if a == "FILE" else a for a in WITH_RUNBOOK[name]), tmp_path=tmp_path)
    assert_one_message(r, Exit.CANNOT_RUN, str(missing), name)
    assert not (tmp_path / "sandbox").exists()  # demo refused before building anything


@pytest.mark.parametrize("name", sorted(WITH_RUNBOOK))
def test_a_repository_config_given_as_the_runbook_is_named_and_cannot_run(name: str, tmp_path: Path) -> None:
    cfg = repository_config(tmp_path)
    r = cli(*(str(cfg) if a == "FILE" else a for a in WITH_RUNBOOK[name]), tmp_path=tmp_path)
    assert_one_message(r, Exit.CANNOT_RUN, "is a repository config (it has cluster:), not a runbook file", name)


@pytest.mark.parametrize("name", sorted(OTHERS))
def test_what_cannot_be_done_cannot_run(name: str, tmp_path: Path) -> None:
    r = cli(*OTHERS[name], tmp_path=tmp_path)
    assert_one_message(r, Exit.CANNOT_RUN, "no run no-such-run", name)


@pytest.mark.parametrize("args", [("--no-such-flag",), (), ("backups", "--no-such-flag"), ("run", "--mode", "wild"),
                                  ("keys",)])
def test_a_usage_error_is_the_same_code_as_a_bad_file(args: tuple[str, ...], tmp_path: Path) -> None:
    """argparse's own exit 2 would read as "failed" (a red check, a backup published nowhere)."""
    r = cli(*args, tmp_path=tmp_path)
    assert r.returncode == Exit.CANNOT_RUN, r.stderr
    assert "error:" in r.stderr and "Traceback" not in r.stderr


def test_the_wal_commands_keep_postgresqls_contracts(tmp_path: Path) -> None:
    """wal-push: any failure is 1..125 (PostgreSQL retries; above 125 it would stop the archiver).
    wal-fetch: 1 only for "no such file"; any other failure 126 (PostgreSQL stops the recovery)."""
    missing = str(tmp_path / "missing.yaml")
    (tmp_path / "pg_wal").mkdir()
    segment = tmp_path / "pg_wal" / "000000010000000000000001"
    segment.write_bytes(b"\0" * 16)
    push = cli("wal-push", "-c", missing, str(segment), tmp_path=tmp_path)
    assert 1 <= push.returncode <= 125 and "Traceback" not in push.stderr, push.stderr
    fetch = cli("wal-fetch", "-c", missing, segment.name, str(tmp_path / "dest"), tmp_path=tmp_path)
    assert fetch.returncode == 126 and "Traceback" not in fetch.stderr, fetch.stderr
    bad = cli("wal-fetch", "--no-such-flag", tmp_path=tmp_path)
    assert bad.returncode == 126, bad.stderr


def test_the_codes_are_the_documented_table() -> None:
    """docs/commands.md's table lists every code of runbook.errors.Exit, with the same number."""
    text = (ROOT / "docs" / "commands.md").read_text()
    table = text[text.index("## Exit codes"):]
    table = table[:table.index("\n\n", table.index("| code |"))]
    rows = {int(line.split("|")[1].strip().strip("`")) for line in table.splitlines()
            if line.startswith("| ") and line.split("|")[1].strip().strip("`").isdigit()}
    assert rows == {int(e) for e in Exit}


def test_validate_says_invalid_with_failed_and_run_cannot_run_it(tmp_path: Path) -> None:
    """An invalid runbook is what `validate` finds (2, as a failed check); `run` cannot run it (3)."""
    bad = tmp_path / "bad.yaml"
    bad.write_text("version: 1\nname: x\nsteps:\n  - id: a\n    title: A\n    run: echo {{ params.nope }}\n")
    r = cli("validate", str(bad), tmp_path=tmp_path)
    assert r.returncode == Exit.FAILED and f"{bad}:6:" in r.stderr and "Traceback" not in r.stderr, r.stderr
    r = cli("run", str(bad), "--headless", tmp_path=tmp_path)
    assert r.returncode == Exit.CANNOT_RUN and f"{bad}:6:" in r.stderr, r.stderr
