"""The WAL side of the command line: `runbook wal-push`, `runbook wal-fetch`, `runbook check`.

`register(subparsers)` adds them to `runbook`'s parser (for `--help` and for callers of `build_parser`);
`runbook.cli.main.main` sends `wal-push`/`wal-fetch` straight to steps.wal.archive before the full parser is built, since
PostgreSQL starts them once per segment. Importing this module stays cheap: handlers import their modules.
"""

from __future__ import annotations

import argparse
from typing import Any


def register(sub: Any) -> None:
    from steps.wal.archive import add_fetch_arguments, add_push_arguments

    p = sub.add_parser("wal-push", help="archive_command: archive one WAL file into every repository",
                       description="exit 0 only when every configured repository holds the file, durably")
    add_push_arguments(p)
    p.set_defaults(func=lambda a: _wal("wal-push", a))

    f = sub.add_parser("wal-fetch", help="restore_command: restore one archived WAL file",
                       description="exit 0: DEST written; 1: no repository has it; 126: recovery must stop")
    add_fetch_arguments(f)
    f.set_defaults(func=lambda a: _wal("wal-fetch", a))

    c = sub.add_parser("check", help="is archiving working, are backups fresh, the RPO exposure now "
                       "(exit 0 ok, 1 warning, 2 failed, 3 could not run)")
    c.add_argument("-c", "--config", metavar="REPO_CONFIG",
                   help="the repository config (default: $RUNBOOK_CONFIG, then /etc/runbook/repository.yaml)")
    c.add_argument("--json", action="store_true", help="one JSON document for monitoring")
    c.add_argument("--force-switch", action="store_true",
                   help="switch to a new WAL segment and wait until every repository holds the finished one")
    c.add_argument("--timeout", type=float, default=60.0, metavar="S", help="how long --force-switch waits (60)")
    c.add_argument("--rpo", type=float, default=300.0, metavar="S",
                   help="the RPO target in seconds: archive_timeout and the archive's age are held to it (300)")
    c.add_argument("--max-logical-age", type=float, default=26 * 3600.0, metavar="S",
                   help="a newer logical backup is expected within this many seconds (26 h: a daily job)")
    c.add_argument("--max-base-age", type=float, default=8 * 86400.0, metavar="S",
                   help="a newer base backup is expected within this many seconds (8 days: a weekly job)")
    c.set_defaults(func=cmd_check)


def _wal(command: str, args: argparse.Namespace) -> int:
    from steps.wal.archive import run

    return run(command, args)


def cmd_check(args: argparse.Namespace) -> int:
    from steps.proof.check import run_check

    return run_check(args)
