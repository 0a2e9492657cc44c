"""Where the tool looks for things on this host: its state directory and the repository config.

Defined once, standard library only: the WAL commands PostgreSQL starts once per segment import this too.
- `state_home()`: `$XDG_STATE_HOME/runbook`, else `~/.local/state/runbook` (runs, backup status and logs,
  the WAL spool, a non-root sandbox).
- `chosen_config_path(given)`: `-c FILE`, else `$RUNBOOK_CONFIG`, else /etc/runbook/repository.yaml; never the
  current directory (cron and `archive_command` run elsewhere).
"""

from __future__ import annotations

import os
from pathlib import Path

CONFIG_ENV = "RUNBOOK_CONFIG"
DEFAULT_CONFIG = Path("/etc/runbook/repository.yaml")


def state_home() -> Path:
    """The XDG state directory of this user, with `runbook` appended."""
    base = os.environ.get("XDG_STATE_HOME") or os.path.join(os.path.expanduser("~"), ".local", "state")
    return Path(base) / "runbook"


def chosen_config_path(given: str | os.PathLike[str] | None, default: Path = DEFAULT_CONFIG) -> Path:
    """`-c FILE`, else `$RUNBOOK_CONFIG`, else `default`; never the current directory. Not checked to exist."""
    if given:
        return Path(given)
    if os.environ.get(CONFIG_ENV):
        return Path(os.environ[CONFIG_ENV])
    return default
