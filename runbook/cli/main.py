"""`runbook`'s parser and dispatch: every subcommand registers itself from its module in this package.

User errors (`RunbookError`) are printed on stderr without a traceback, with their exit code. Each module
imports its machinery inside its handlers, so `runbook --help` loads neither the TUI, psycopg nor boto3,
and the core and the headless runner never load Textual.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence
from typing import NoReturn

from runbook import __version__
from runbook.errors import Exit, RunbookError


class Parser(argparse.ArgumentParser):
    """argparse's parser, with a usage error exiting `Exit.CANNOT_RUN` like every other error of what was given
    (argparse's own 2 means "failed" in the table). Subcommands' parsers are of this class too."""

    def error(self, message: str) -> NoReturn:
        self.print_usage(sys.stderr)
        self.exit(Exit.CANNOT_RUN, f"{self.prog}: error: {message}\n")


def build_parser() -> argparse.ArgumentParser:
    from runbook.cli import backup, demo, keys, proof, runs, wal, watch

    p = Parser(prog="runbook", description="The PostgreSQL disaster-recovery runbook.")
    p.add_argument("--version", action="version", version=f"runbook {__version__}")
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")
    runs.register(sub)  # validate, schema, run, resume, runs, report
    backup.register(sub)  # backup, backups, prune
    demo.register(sub)  # demo: the sandbox drill
    backup.register_basebackup(sub)  # basebackup
    wal.register(sub)  # wal-push, wal-fetch
    proof.register(sub)  # check, verify-backup, status
    keys.register(sub)  # keys create, list, rotate, revoke
    watch.register(sub)  # watch, serve: a run followed read-only
    return p


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and argv[0] in ("wal-push", "wal-fetch"):  # PostgreSQL runs these per segment: no full parser
        from runbook.cli.wal_fast import main as wal_main

        return wal_main(argv)
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return int(args.func(args))
    except RunbookError as e:
        print(f"runbook: {e}", file=sys.stderr)
        return e.exit_code
    except KeyboardInterrupt:
        print("runbook: interrupted", file=sys.stderr)
        return Exit.INTERRUPTED
    except BrokenPipeError:
        # The reader went away (`runbook runs | head`): nothing more to say, and nowhere to say it. Point stdout
        # at /dev/null so that the interpreter's own flush at exit does not fail again.
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        return Exit.BROKEN_PIPE  # 128 + SIGPIPE, as a process killed by the signal would report
