"""The sandbox on pgBackRest (`runbook demo --scenario pitr --engine pgbackrest`): the same drill, with the
physical side a team running pgBackRest really uses.

Under the sandbox directory: `pgbackrest/repo` (pgBackRest's posix repository, 0700) and `pgbackrest/log`,
`pgbackrest/lock`, all the server's user's (pgBackRest runs as that user). The repository config says
`engine: pgbackrest` with every option in its `pgbackrest.options` (no pgbackrest.conf: the sandbox's options
stay in one file), stanza `assetflow`. The primary archives with `archive_command = pgbackrest ... archive-push
%p` (the same options on its command line), the stanza is made with `stanza-create`, and the full backup is
taken by `runbook basebackup` (which runs `pgbackrest backup`). The product's own repository (`repo/`) still
holds the daily logical backup, the attachments snapshots and the product's records.
"""

from __future__ import annotations

import shlex
from pathlib import Path
from typing import Any

STANZA = "assetflow"


def pgbackrest_dir(base: Path) -> Path:
    return base / "pgbackrest"


def config_text(base: Path, datadir: Path, socket_dir: Path, port: int) -> str:
    """The repository config's lines that switch the sandbox to pgBackRest."""
    d = pgbackrest_dir(base)
    return (
        "engine: pgbackrest\n"
        "pgbackrest:\n"
        f"  stanza: {STANZA}\n"
        "  options:\n"
        f"    repo1-path: {d / 'repo'}\n"
        "    repo1-retention-full: 3\n"
        f"    lock-path: {d / 'lock'}\n"
        f"    log-path: {d / 'log'}\n"
        "    log-level-console: warn\n"
        "    log-level-file: 'off'\n"
        "    start-fast: true\n"
        "    archive-timeout: 30\n"
        f"    pg1-path: {datadir}\n"
        f"    pg1-socket-path: {socket_dir}\n"
        f"    pg1-port: {port}\n"
    )


def make_dirs(base: Path) -> None:
    """pgBackRest's repository, log and lock directories, fresh, the server's user's (the repository 0700)."""
    from steps.pg.server import give_to_server, remove_tree

    d = pgbackrest_dir(base)
    remove_tree(d)
    for sub in ("repo", "log", "lock"):
        (d / sub).mkdir(parents=True, mode=0o700)
    d.chmod(0o755)
    give_to_server(d)


def settings(config: Path) -> Any:
    from steps.engines.pgbackrest.settings import settings_from
    from steps.repository.config import load_repository_config

    cfg, _ = load_repository_config(config)
    return settings_from(cfg)


def archive_command(config: Path) -> str:
    """`pgbackrest --stanza=... --OPTION=... archive-push %p` as the server runs it (as its own user)."""
    from dataclasses import replace

    from steps.engines.pgbackrest.runner import argv

    return shlex.join(argv(replace(settings(config), user=None), "archive-push")) + " %p"


def stanza_create(config: Path, say: Any = print) -> None:
    from steps.engines.pgbackrest.runner import run

    s = settings(config)
    run(s, "stanza-create", timeout=300)
    say(f"pgBackRest stanza {s.stanza} created (posix repository {s.options.get('repo1-path')})")
