"""The physical side of the command line: `runbook basebackup`.

`register(subparsers)` adds it to `runbook`'s parser (one call in runbook/cli.py). Importing this module
stays cheap: psycopg, boto3 and the backup machinery are imported inside the handler.
"""

from __future__ import annotations

import argparse
import sys
from typing import Any

from runbook.errors import RunbookError


def register(sub: Any) -> None:
    b = sub.add_parser("basebackup", help="physical base backup for PITR: pg_basebackup, verified against its "
                       "manifest and the WAL archive, published with manifest.json last")
    b.add_argument("-c", "--config", metavar="REPO_CONFIG",
                   help="the repository config (default: $RUNBOOK_CONFIG, then /etc/runbook/repository.yaml)")
    b.add_argument("--compress", metavar="METHOD", help="override basebackup.compression "
                   "(pg_basebackup -Z: server-zstd:level=1, server-lz4, client-zstd, none, ...)")
    b.add_argument("--quiet", action="store_true", help="only the result line and errors on the console")
    b.set_defaults(func=cmd_basebackup)


def cmd_basebackup(args: argparse.Namespace) -> int:
    from steps.backup.base import BaseBackupRun
    from steps.backup.logical import EXIT_CANNOT_RUN
    from steps.repository.config import load_repository_config

    try:
        cfg, path = load_repository_config(args.config)
        if args.compress:
            bb = cfg.basebackup.model_validate({**cfg.basebackup.model_dump(), "compression": args.compress})
            cfg = cfg.model_copy(update={"basebackup": bb})
    except (RunbookError, ValueError) as e:
        print(f"runbook: basebackup could not run: {e}", file=sys.stderr)
        return EXIT_CANNOT_RUN
    return BaseBackupRun(cfg, path, console=not args.quiet).run()
