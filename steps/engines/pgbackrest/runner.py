"""Running pgBackRest: the command line, the environment, its errors made the operator's, its info JSON.

- **Options**: the `pgbackrest.options` of the repository config go on the command line as `--name=value`, only
  those valid for the command (pgBackRest refuses an option its command does not take: `pg1-path` for `info`);
  which ones are valid is read once per command from `pgbackrest help COMMAND`. Secret values (an option name with
  key, pass, secret or token) never go on a command line (any user's `ps` shows it) nor to disk: they go in the
  child's environment as `PGBACKREST_NAME`, which pgBackRest reads and ignores where the command does not take it.
- **User**: as root, pgbackrest runs as `settings.user` through `runuser` (the server's user: pgBackRest's
  repository and lock files are that user's); the working directory is `/`.
- **Errors**: a command that fails raises PgBackRestError with pgBackRest's own `ERROR: [NNN]: ...` line and a
  hint; a missing executable says how to install it.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
from typing import Any

from runbook.errors import RunbookError
from steps.engines.pgbackrest.settings import PgBackRestSettings
from steps.repository.config import is_secret_option

INSTALL_HINT = "install it: apt-get install pgbackrest (Debian's package; scripts/setup.sh does it)"
HELP_TIMEOUT_S = 30.0
MAX_INFO_BYTES = 64 << 20  # an info JSON larger than this is not pgBackRest's (thousands of backups are ~10 MB)
_ERROR_LINE = re.compile(r"\bERROR: \[(\d{3})\]: (.*)$")
_HELP_OPTION = re.compile(r"^\s{2}--([a-z0-9-]+)\s")
_INDEXED = re.compile(r"^(pg|repo)\d+-")


class PgBackRestError(RunbookError):
    """A pgBackRest command failed, or said something that is not what pgBackRest says. `code`: its error code
    (`ERROR: [055]` gives 55), when it gave one."""

    def __init__(self, message: str, *, hint: str | None = None, code: int | None = None) -> None:
        super().__init__(message, hint=hint)
        self.code = code


def _runuser() -> str:
    return shutil.which("runuser", path=os.environ.get("PATH", "") + ":/usr/sbin:/sbin") or "runuser"


def _prefix(s: PgBackRestSettings) -> list[str]:
    return [_runuser(), "-u", s.user, "--"] if s.user is not None and os.geteuid() == 0 else []


_valid: dict[tuple[str, str | None, str], frozenset[str] | None] = {}


def valid_options(s: PgBackRestSettings, command: str) -> frozenset[str] | None:
    """The option names (indexes dropped: `pg-path` for `pg1-path`) pgBackRest takes for `command`, from its own
    `help COMMAND`; None when that cannot be read (then every option is passed)."""
    key = (s.executable, s.user, command)
    if key not in _valid:
        found: frozenset[str] | None = None
        try:
            out = subprocess.run([*_prefix(s), s.executable, "help", command], capture_output=True, text=True,
                                 timeout=HELP_TIMEOUT_S, cwd="/", stdin=subprocess.DEVNULL)
            names = {m.group(1) for line in out.stdout.splitlines() if (m := _HELP_OPTION.match(line))}
            found = frozenset(names) if out.returncode == 0 and names else None
        except (OSError, subprocess.SubprocessError):
            found = None
        _valid[key] = found
    return _valid[key]


def _takes(valid: frozenset[str] | None, name: str) -> bool:
    return valid is None or _INDEXED.sub(r"\1-", name) in valid


def argv(s: PgBackRestSettings, command: str, *extra: str) -> list[str]:
    """The command line of `pgbackrest COMMAND EXTRA...` with these settings (secret options are not in it: they
    go in `env`). An option given in `extra` (`--pg1-path=/new/data`) replaces the configured one: pgBackRest
    refuses an option given twice."""
    valid = valid_options(s, command)
    given = {e[2:].split("=", 1)[0] for e in extra if e.startswith("--")}
    cmd = [*_prefix(s), s.executable, f"--stanza={s.stanza}"]
    if s.config is not None:
        cmd.append(f"--config={s.config}")
    cmd += [f"--{k}={v}" for k, v in s.options.items()
            if not is_secret_option(k) and _takes(valid, k) and k not in given]
    return [*cmd, command, *extra]


def env(s: PgBackRestSettings) -> dict[str, str]:
    """The environment a pgbackrest child runs with: this process's, plus the secret options as pgBackRest's
    environment variables (`repo1-s3-key-secret` is PGBACKREST_REPO1_S3_KEY_SECRET)."""
    out = dict(os.environ)
    for k, v in s.options.items():
        if is_secret_option(k):
            out["PGBACKREST_" + k.upper().replace("-", "_")] = v
    return out


def masked(s: PgBackRestSettings, text: str) -> str:
    """`text` with every secret option's value replaced (pgBackRest's output is shown and journaled)."""
    for k, v in s.options.items():
        if is_secret_option(k) and v:
            text = text.replace(v, "********")
    return text


def error_line(output: str) -> tuple[int | None, str | None]:
    """pgBackRest's first `ERROR: [NNN]: message` line in its output: (code, message), else (None, None)."""
    for line in output.splitlines():
        if m := _ERROR_LINE.search(line.strip()):
            return int(m.group(1)), m.group(2).strip()
    return None, None


def _hint(command: str, code: int | None, message: str) -> str:
    low = message.lower()
    if "does not exist" in low and ("stanza" in low or "archive.info" in low or "backup.info" in low):
        return "create the stanza first: pgbackrest --stanza=NAME stanza-create (docs/pgbackrest.md)"
    if "archive" in low and ("timeout" in low or "not found" in low or "was not archived" in low):
        return ("WAL does not reach pgBackRest's repository: archive_command must be `pgbackrest --stanza=NAME "
                "archive-push %p` and work as the server's user; see pg_stat_archiver and the server log")
    if "permission denied" in low or "unable to open" in low and "permission" in low:
        return "pgBackRest runs as pgbackrest.user (as root: the server's user); that user must own its repository"
    if "unable to find primary cluster" in low or "connect" in low:
        return "pgBackRest could not reach the cluster: check pg1-path, pg1-socket-path and pg1-port"
    if code is not None and code == 31:
        return "an option pgBackRest refuses: check pgbackrest.options in the repository config"
    return f"pgBackRest's log says more (log-path, default /var/log/pgbackrest); `pgbackrest help {command}`"


def run(s: PgBackRestSettings, command: str, *extra: str,
        timeout: float | None = None) -> subprocess.CompletedProcess[str]:
    """Run `pgbackrest COMMAND EXTRA...`; its output returned (secret values masked); any failure raised as
    PgBackRestError naming pgBackRest's own ERROR line."""
    cmd = argv(s, command, *extra)
    limit = timeout if timeout is not None else s.timeout_s
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, errors="replace", timeout=limit, env=env(s),
                              cwd="/", stdin=subprocess.DEVNULL)
    except FileNotFoundError:
        raise PgBackRestError(f"cannot run pgbackrest: {s.executable!r} was not found", hint=INSTALL_HINT) from None
    except PermissionError as e:
        raise PgBackRestError(f"cannot run pgbackrest {s.executable!r}: {e.strerror}", hint=INSTALL_HINT) from None
    except subprocess.TimeoutExpired:
        raise PgBackRestError(f"pgbackrest {command} did not finish within {limit:.0f} s (stopped)",
                              hint="raise pgbackrest.timeout_s in the repository config if it needs longer") from None
    proc = subprocess.CompletedProcess(proc.args, proc.returncode, masked(s, proc.stdout), masked(s, proc.stderr))
    if proc.returncode == 0:
        return proc
    code, message = error_line(proc.stderr + "\n" + proc.stdout)
    if message is None and (proc.returncode in (126, 127) or "failed to execute" in proc.stderr):
        raise PgBackRestError(f"cannot run pgbackrest {s.executable!r} as {s.user or 'this user'} (exit "
                              f"{proc.returncode}): {(proc.stderr.strip().splitlines() or [''])[-1][:300]}",
                              hint=INSTALL_HINT)
    if message is None:
        tail = (proc.stderr.strip() or proc.stdout.strip() or "no output").splitlines()[-1][:300]
        raise PgBackRestError(f"pgbackrest {command} failed (exit {proc.returncode}): {tail}",
                              hint=_hint(command, None, tail))
    raise PgBackRestError(f"pgbackrest {command} failed: ERROR [{code:03d}]: {message}",
                          hint=_hint(command, code, message), code=code)


def info(s: PgBackRestSettings) -> dict[str, Any]:
    """`pgbackrest info --output=json` of the stanza: its object, checked to be one (steps.engines.pgbackrest.info
    reads the facts from it). JSON that is not pgBackRest's is a PgBackRestError saying so."""
    proc = run(s, "info", "--output=json")
    return stanza_object(proc.stdout, s.stanza)


def stanza_object(text: str, stanza: str) -> dict[str, Any]:
    """The stanza's object out of info's JSON text (a list of stanza objects), or a clear PgBackRestError."""
    where = f"pgbackrest info --output=json (stanza {stanza})"
    if len(text) > MAX_INFO_BYTES:
        raise PgBackRestError(f"{where} printed {len(text)} bytes, more than pgBackRest's info ever is: not used")
    try:
        doc = json.loads(text)
    except (json.JSONDecodeError, RecursionError) as e:
        raise PgBackRestError(f"{where} did not print JSON: {getattr(e, 'msg', type(e).__name__)} (printed "
                              f"{text[:80]!r})", hint="is pgbackrest.executable pgBackRest (2.x)?") from None
    if not isinstance(doc, list) or not all(isinstance(x, dict) for x in doc):
        raise PgBackRestError(f"{where}: expected a list of stanza objects, got {type(doc).__name__}",
                              hint="is pgbackrest.executable pgBackRest (2.x)?")
    found = [x for x in doc if x.get("name") == stanza]
    if len(found) != 1:
        raise PgBackRestError(f"{where}: {'no' if not found else len(found)} stanza objects named {stanza!r}",
                              hint="is pgbackrest.stanza right? `pgbackrest info` lists the stanzas")
    return found[0]
