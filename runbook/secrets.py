"""The secrets env file: permission check, parsing, mapping to libpq's variables, what is a secret.

Values reach step commands only through the environment; every secret value is also handed to the
redactor so that it is masked wherever the tool writes (masking is for display only: steps get the real
value). What is *not* a secret: user names, hosts, ports and database names (`is_public_key`), and the
keys the runbook lists in `secrets.public`; a value that is a URL with credentials is a secret whatever
its key. A secret shorter than `MIN_SECRET_LEN` characters is refused: masking it would mangle ordinary
words in the output, and it is too short to be one.
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

MIN_SECRET_LEN = 8
PUBLIC_NAMES = frozenset({"USER", "USERNAME", "HOST", "PORT", "NAME", "DB", "DATABASE",
                          "PGUSER", "PGHOST", "PGPORT", "PGDATABASE"})
PUBLIC_SUFFIXES = ("_USER", "_USERNAME", "_HOST", "_PORT", "_NAME", "_DB", "_DATABASE")
_URL_WITH_CREDENTIALS = re.compile(r"[A-Za-z][A-Za-z0-9+.-]*://[^/@\s]*:[^/@\s]*@")


@dataclass
class LoadedSecrets:
    env: dict[str, str] = field(default_factory=dict)  # what steps get in their environment
    redact: list[str] = field(default_factory=list)  # values to mask everywhere
    source: str | None = None
    keys: list[str] = field(default_factory=list)  # names only: safe to show and journal


def is_public_key(key: str, spec: Secrets) -> bool:
    """Whether the value of `key` is shown as it is: a user, host, port or database name by its name, or a key
    listed in `public`; a key listed in `secret` never is."""
    if key in spec.secret:
        return False
    if key in spec.public:
        return True
    name = key.upper()
    return name in PUBLIC_NAMES or name.endswith(PUBLIC_SUFFIXES)


def is_secret(key: str, value: str, spec: Secrets) -> bool:
    """Whether a value of the secrets file is masked: not public, or a URL that carries credentials (unless the
    runbook lists its key in `public`). An empty value hides nothing."""
    if not value or (key in spec.public and key not in spec.secret):
        return False
    return not is_public_key(key, spec) or bool(_URL_WITH_CREDENTIALS.search(value))


def short_secret_hint(not_secret: str) -> str:
    """What to do about a secret that is too short; `not_secret` says how to declare it no secret."""
    return (f"a secret needs at least {MIN_SECRET_LEN} characters (a shorter one would be masked inside ordinary "
            f"words, and protects nothing): use a longer one; if it is no secret (a user, host, port or database "
            f"name), {not_secret}")


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
    secret = {k: v for k, v in values.items() if is_secret(k, v, spec)}
    short = sorted(k for k, v in secret.items() if len(v) < MIN_SECRET_LEN)
    if short:
        raise SecretsError(
            f"secrets file {path}: the value of {', '.join(short)} is shorter than {MIN_SECRET_LEN} characters "
            "(the value is not shown)",
            hint=short_secret_hint(f"list {'it' if len(short) == 1 else 'them'} in the runbook's secrets.public"),
        )
    redact = sorted(set(secret.values()), key=len, reverse=True)
    return LoadedSecrets(env=env, redact=redact, source=str(path), keys=sorted(values))
