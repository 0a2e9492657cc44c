"""What a pgBackRest command needs, taken from the repository config's `pgbackrest:` block (docs/pgbackrest.md).

Frozen and plain (no pydantic): the runner and the actions built on it take this, not the config model. Secret
option values (by name: key, pass, secret, token) are kept for use and masked in `repr` and `shown()`.
"""

from __future__ import annotations

import os
import pwd
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from runbook.errors import UsageError
from steps.repository.config import is_secret_option

SERVER_USER = "postgres"  # when root and no data directory on this host names its owner


def option_value(value: str | int | bool) -> str:
    """A config value as pgBackRest spells it: booleans y/n, numbers in decimal."""
    if isinstance(value, bool):
        return "y" if value else "n"
    return str(value)


@dataclass(frozen=True)
class PgBackRestSettings:
    stanza: str
    config: Path | None
    options: dict[str, str] = field(repr=False)
    executable: str
    user: str | None
    timeout_s: float

    def shown(self) -> dict[str, str]:
        """The options as they may be shown: secret values masked."""
        return {k: ("********" if is_secret_option(k) else v) for k, v in self.options.items()}

    def __repr__(self) -> str:
        return (f"PgBackRestSettings(stanza={self.stanza!r}, config={self.config!r}, options={self.shown()!r}, "
                f"executable={self.executable!r}, user={self.user!r}, timeout_s={self.timeout_s!r})")


def _owner(path: str | None) -> str | None:
    if not path:
        return None
    try:
        return pwd.getpwuid(os.stat(path).st_uid).pw_name
    except (OSError, KeyError):
        return None


def default_user(options: dict[str, str], data_directory: str | None) -> str | None:
    """Whom pgbackrest runs as when `pgbackrest.user` is not set: as root, the server's user (the owner of the
    data directory, when on this host; else postgres); otherwise the current user (None: no switch)."""
    if os.geteuid() != 0:
        return None
    return _owner(options.get("pg1-path")) or _owner(data_directory) or SERVER_USER


def settings_from(cfg: Any) -> PgBackRestSettings:
    """The settings of a repository config with `engine: pgbackrest` (a UsageError for any other)."""
    block = getattr(cfg, "pgbackrest", None)
    if getattr(cfg, "engine", "own") != "pgbackrest" or block is None:
        raise UsageError("the repository config does not use pgBackRest (engine: pgbackrest and a pgbackrest: "
                         "block)", hint="docs/pgbackrest.md shows the three lines that switch it")
    options = {k: option_value(v) for k, v in block.options.items()}
    user = block.user or default_user(options, cfg.cluster.data_directory)
    if user is not None and os.geteuid() != 0 and user != pwd.getpwuid(os.geteuid()).pw_name:
        raise UsageError(f"pgbackrest.user is {user}, but only root can run a command as another user",
                         hint="run as root, or as that user, or remove pgbackrest.user")
    if user is not None and os.geteuid() != 0:
        user = None  # already that user: no switch
    return PgBackRestSettings(stanza=block.stanza, config=block.config, options=options,
                              executable=block.executable, user=user, timeout_s=float(block.timeout_s))
