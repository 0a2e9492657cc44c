"""The WAL side of the command line: `runbook wal-push`, `runbook wal-fetch`.

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


def _wal(command: str, args: argparse.Namespace) -> int:
    from steps.wal.archive import run

    return run(command, args)
