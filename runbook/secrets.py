"""The secrets env file: permission check, parsing, mapping to libpq's variables.

Values reach step commands only through the environment; every non-public value is also handed to
the redactor so that it is masked wherever the tool writes.
"""

from __future__ import annotations

import os
import re
import stat
from dataclasses import dataclass, field
from pathlib import Path

from runbook.errors import SecretsError
from runbook.model import Secrets

_KEY = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")


@dataclass
class LoadedSecrets:
    env: dict[str, str] = field(default_factory=dict)  # what steps get in their environment
    redact: list[str] = field(default_factory=list)  # values to mask everywhere
    source: str | None = None
    keys: list[str] = field(default_factory=list)  # names only: safe to show and journal


def check_file_mode(path: Path) -> None:
    """Refuse a secrets file that is missing, not a regular file, or readable by group/others."""
    try:
        st = path.stat()
    except FileNotFoundError:
        raise SecretsError(
            f"secrets file {path} does not exist",
            hint=f"create it with KEY=VALUE lines (DB_HOST, DB_PORT, DB_USER, DB_PASSWORD), then: chmod 600 {path}",
        ) from None
    except PermissionError:
        raise SecretsError(f"secrets file {path} cannot be read by this user") from None
    if not stat.S_ISREG(st.st_mode):
        raise SecretsError(f"secrets file {path} is not a regular file")
    if st.st_mode & 0o077:
        raise SecretsError(
            f"secrets file {path} is readable by group or others (mode {stat.S_IMODE(st.st_mode):04o})",
            hint=f"chmod 600 {path}",
        )


def parse_env_text(text: str, source: str) -> dict[str, str]:
    """KEY=VALUE lines; `#` comments, blank lines, `export ` prefix and matching quotes allowed.

    A bad line is reported by its number, never by its content (it may hold a secret).
    """
    out: dict[str, str] = {}
    for n, raw in enumerate(text.splitlines(), start=1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        if line.startswith("export "):
            line = line[len("export ") :].lstrip()
        key, sep, value = line.partition("=")
        key = key.strip()
        if not sep or not _KEY.match(key):
            raise SecretsError(
                f"{source}:{n}: not a KEY=VALUE line (the line's content is not shown: it may be secret)"
            )
        value = value.strip()
        if len(value) >= 2 and value[0] == value[-1] and value[0] in "'\"":
            value = value[1:-1]
        out[key] = value
    return out


def load_secrets(spec: Secrets | None, base_dir: Path) -> LoadedSecrets:
    if spec is None:
        return LoadedSecrets()
    path = Path(os.path.expanduser(spec.env_file))
    if not path.is_absolute():
        path = base_dir / path
    if spec.optional and not path.exists():
        return LoadedSecrets(source=str(path))
    check_file_mode(path)
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as e:
        raise SecretsError(f"secrets file {path} cannot be read: {e.__class__.__name__}") from None
    values = parse_env_text(text, str(path))
    missing = [k for k in spec.required if k not in values]
    if missing:
        raise SecretsError(f"secrets file {path} lacks {', '.join(missing)}", hint="add KEY=VALUE lines for them")
    env: dict[str, str] = {}
    for key, value in values.items():
        env[key] = value
        if key in spec.map:
            env[spec.map[key]] = value
    redact = sorted({v for k, v in values.items() if v and k not in spec.public}, key=len, reverse=True)
    return LoadedSecrets(env=env, redact=redact, source=str(path), keys=sorted(values))
