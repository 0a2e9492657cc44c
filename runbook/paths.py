"""Where the tool looks for things on this host: its state directory and the repository config.

Defined once, on `os` alone at import: the WAL commands PostgreSQL starts once per segment import this too, and
`pathlib` (with `re`, `fnmatch`, `urllib.parse` behind it) costs ~2.5 ms there. The `*_str` forms are theirs;
the Path forms load pathlib when first called.
- `state_home()`: `$XDG_STATE_HOME/runbook`, else `~/.local/state/runbook` (runs, backup status and logs,
  the WAL spool, a non-root sandbox).
- `chosen_config_path(given)`: `-c FILE`, else `$RUNBOOK_CONFIG`, else /etc/runbook/repository.yaml; never the
  current directory (cron and `archive_command` run elsewhere).
"""

from __future__ import annotations

import os

TYPE_CHECKING = False  # not typing.TYPE_CHECKING: typing costs an import on the per-segment path
if TYPE_CHECKING:
    from pathlib import Path

CONFIG_ENV = "RUNBOOK_CONFIG"
DEFAULT_CONFIG_FILE = "/etc/runbook/repository.yaml"


def __getattr__(name: str) -> Path:
    """`DEFAULT_CONFIG`, the default config as a Path, made when first asked for (not at import)."""
    if name == "DEFAULT_CONFIG":
        from pathlib import Path

        return Path(DEFAULT_CONFIG_FILE)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def state_home_str() -> str:
    """The XDG state directory of this user, with `runbook` appended."""
    base = os.environ.get("XDG_STATE_HOME") or os.path.join(os.path.expanduser("~"), ".local", "state")
    return os.path.join(base, "runbook")


def state_home() -> Path:
    from pathlib import Path

    return Path(state_home_str())


def chosen_config_str(given: str | os.PathLike[str] | None, default: str = DEFAULT_CONFIG_FILE) -> str:
    """`-c FILE`, else `$RUNBOOK_CONFIG`, else `default`; never the current directory. Not checked to exist."""
    if given:
        return os.fspath(given)
    return os.environ.get(CONFIG_ENV) or default


def chosen_config_path(given: str | os.PathLike[str] | None, default: Path | None = None) -> Path:
    from pathlib import Path

    return Path(chosen_config_str(given, os.fspath(default) if default is not None else DEFAULT_CONFIG_FILE))
