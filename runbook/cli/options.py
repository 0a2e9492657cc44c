"""The flags several subcommands share, each defined once: `-c/--config` and `--state-dir`."""

from __future__ import annotations

import argparse
from pathlib import Path

from runbook.paths import CONFIG_ENV, DEFAULT_CONFIG


def add_config(p: argparse.ArgumentParser) -> None:
    """`-c REPO_CONFIG`; its fallback chain is `runbook.paths.chosen_config_path`."""
    p.add_argument("-c", "--config", metavar="REPO_CONFIG",
                   help=f"the repository config (default: ${CONFIG_ENV}, then {DEFAULT_CONFIG})")


def add_state_dir(p: argparse.ArgumentParser) -> None:
    p.add_argument("--state-dir", help="where runs are kept (default: $XDG_STATE_HOME/runbook)")


def state_dir(args: argparse.Namespace) -> Path:
    """`--state-dir`, else the XDG state directory (runbook.paths.state_home)."""
    from runbook.paths import state_home

    given = getattr(args, "state_dir", None)
    return Path(given).expanduser() if given else state_home()
