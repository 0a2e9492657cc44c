"""The flags several subcommands share, each defined once: `-c/--config`, `--state-dir`, `--allow-unsigned`."""

from __future__ import annotations

import argparse
from pathlib import Path

from runbook.paths import CONFIG_ENV, DEFAULT_CONFIG


def add_config(p: argparse.ArgumentParser) -> None:
    """`-c REPO_CONFIG`; its fallback chain is `runbook.paths.chosen_config_path`."""
    p.add_argument("-c", "--config", metavar="REPO_CONFIG",
                   help=f"the repository config (default: ${CONFIG_ENV}, then {DEFAULT_CONFIG})")


def add_allow_unsigned(p: argparse.ArgumentParser) -> None:
    """`--allow-unsigned`: a repository written before signing is read, and every unsigned backup used is said."""
    p.add_argument("--allow-unsigned", action="store_true",
                   help="accept unsigned backups and records, and archived WAL in no signed WAL ledger (a "
                        "repository written before signing); each one used is reported as a warning. Badly "
                        "signed ones are refused all the same (default: refused)")


def add_state_dir(p: argparse.ArgumentParser) -> None:
    p.add_argument("--state-dir", help="where runs are kept (default: $XDG_STATE_HOME/runbook)")


def state_dir(args: argparse.Namespace) -> Path:
    """`--state-dir`, else the XDG state directory (runbook.paths.state_home)."""
    from runbook.paths import state_home

    given = getattr(args, "state_dir", None)
    return Path(given).expanduser() if given else state_home()


def require_terminal(args: argparse.Namespace, command: str) -> None:
    """The TUI needs a terminal on both ends: without one (cron, a pipe, `</dev/null`) it would write escape
    codes into a log and wait forever for keys. Refuse before anything is opened or built."""
    import sys

    from runbook.errors import UsageError

    if getattr(args, "headless", False):
        return
    missing = [name for name, stream in (("standard input", sys.stdin), ("standard output", sys.stdout))
               if stream is None or not stream.isatty()]
    if missing:
        raise UsageError(f"`runbook {command}` opens the TUI, which needs a terminal, and {' and '.join(missing)} "
                         f"{'is' if len(missing) == 1 else 'are'} not one (cron, a pipe, </dev/null)",
                         hint="add --headless for the console front end (with --yes or --confirm STEP=VALUE "
                              "to run unattended)")
