"""The WAL side of the command line: `runbook wal-push` (archive_command), `runbook wal-fetch` (restore_command).

- `register(subparsers)` adds them to `runbook`'s parser (for `--help` and for callers of `build_parser`);
- `main(argv)`: their argparse parser, for the forms runbook.cli.wal_fast (the per-segment entry, which parses
  the plain forms by hand) leaves to it, and their hidden worker flags;
- `push`/`fetch`: the job behind each command (steps.wal.archive.push_file/fetch_file, or a worker of
  steps.wal.spool), its errors written to stderr for PostgreSQL's log and turned into the exit codes
  PostgreSQL reads (steps.wal.archive: wal-fetch stops recovery with 126 on anything but "missing").

Importing this module loads neither argparse nor steps: runbook.cli.wal_fast calls `push`/`fetch` here for
the plain forms, and each function imports what it needs.
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, NoReturn

if TYPE_CHECKING:
    import argparse

    from steps.wal.settings import WalSettings


def register(sub: Any) -> None:
    p = sub.add_parser("wal-push", help="archive_command: archive one WAL file into every repository",
                       description="exit 0 only when every configured repository holds the file, durably")
    add_push_arguments(p)
    p.set_defaults(func=lambda a: run("wal-push", a))

    f = sub.add_parser("wal-fetch", help="restore_command: restore one archived WAL file",
                       description="exit 0: DEST written; 1: no repository has it; 126: recovery must stop")
    add_fetch_arguments(f)
    f.set_defaults(func=lambda a: run("wal-fetch", a))


# --- the parser -------------------------------------------------------------------------------------


def _fetch_parser() -> argparse.ArgumentParser:
    """restore_command's argument errors must stop recovery too: exit 126, never 2 (2 would mean "missing")."""
    import argparse

    class FetchParser(argparse.ArgumentParser):
        def error(self, message: str) -> NoReturn:
            from steps.wal.archive import EXIT_ABORT_RECOVERY

            self.print_usage(sys.stderr)
            print(f"{self.prog}: error: {message}", file=sys.stderr)
            raise SystemExit(EXIT_ABORT_RECOVERY)

    return FetchParser(prog="runbook wal-fetch", description="restore_command: fetch one archived WAL file")


def add_push_arguments(p: argparse.ArgumentParser) -> None:
    import argparse

    from runbook.cli.options import add_config

    add_config(p)
    p.add_argument("path", nargs="?", metavar="PATH", help="the file to archive (%%p)")
    p.add_argument("--sysid", help=argparse.SUPPRESS)
    p.add_argument("--async-worker", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--pg-wal", help=argparse.SUPPRESS)
    p.add_argument("--seal-worker", action="store_true", help=argparse.SUPPRESS)


def add_fetch_arguments(p: argparse.ArgumentParser) -> None:
    import argparse

    from runbook.cli.options import add_config

    add_config(p)
    p.add_argument("name", nargs="?", default="", metavar="NAME", help="the WAL file PostgreSQL asks for (%%f)")
    p.add_argument("dest", nargs="?", default="", metavar="DEST", help="where to write it (%%p)")
    p.add_argument("--from", dest="source", choices=["local", "s3", "any"], default="any",
                   help="read only this repository (default: local first, then s3)")
    p.add_argument("--sysid", help="the cluster's system identifier (default: from global/pg_control)")
    p.add_argument("--verified", metavar="INDEX",
                   help="the verified WAL index a recovery wrote from the signed WAL ledgers: only a file it lists "
                        "with these very bytes is handed to PostgreSQL (default: none, no such check)")
    p.add_argument("--prefetch-worker", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--spool", help=argparse.SUPPRESS)
    p.add_argument("--datadir", help=argparse.SUPPRESS)


def main(argv: Sequence[str]) -> int:
    """`runbook wal-push ...` / `runbook wal-fetch ...` through argparse (argv starts with the command)."""
    command, rest = argv[0], list(argv[1:])
    fetch = command == "wal-fetch"
    parser: argparse.ArgumentParser
    if fetch:
        parser = _fetch_parser()
        add_fetch_arguments(parser)
    else:
        import argparse

        parser = argparse.ArgumentParser(prog="runbook wal-push", description="archive_command: archive one WAL file")
        add_push_arguments(parser)
    args = parser.parse_args(rest)
    if fetch and not args.prefetch_worker and not (args.name and args.dest):
        parser.error("the arguments NAME and DEST (%f %p) are required")
    return run(command, args)


def run(command: str, args: argparse.Namespace) -> int:
    """The parsed command's job (the workers' hidden flags included), as `push`/`fetch`."""
    if command == "wal-fetch":
        if args.prefetch_worker:
            return _guarded(command, lambda: _prefetch_worker(args.config, args.spool, args.sysid, args.datadir))
        return fetch(args.config, args.name, args.dest, source=args.source, sysid=args.sysid, verified=args.verified)
    if args.seal_worker:
        return _guarded(command, lambda: _seal_worker(args.config, args.sysid))
    if args.async_worker:
        return _guarded(command, lambda: _push_worker(args.config, args.pg_wal, args.sysid))
    return push(args.config, args.path, sysid=args.sysid)


# --- the jobs ---------------------------------------------------------------------------------------


def push(config: str | None, path: str | None, *, sysid: str | None = None) -> int:
    """`wal-push [-c CONFIG] PATH`: archive PATH into every repository; the exit code for PostgreSQL."""

    def job() -> int:
        from runbook.errors import UsageError
        from steps.wal.archive import push_file

        settings = _settings("wal-push", config)
        if not path:
            raise UsageError("wal-push needs the path of the file to archive (%p)")
        return push_file(settings, path, sysid)

    return _guarded("wal-push", job)


def fetch(config: str | None, name: str, dest: str, *, source: str = "any", sysid: str | None = None,
          verified: str | None = None) -> int:
    """`wal-fetch [-c CONFIG] [--from SOURCE] NAME DEST`: restore NAME to DEST; the exit code for PostgreSQL."""

    def job() -> int:
        from steps.wal.archive import fetch_file

        return fetch_file(_settings("wal-fetch", config), name, dest, source, sysid, verified)

    return _guarded("wal-fetch", job)


def _push_worker(config: str | None, pg_wal: str, sysid: str) -> int:
    """`wal-push --async-worker --pg-wal DIR --sysid N`: the asynchronous uploader of one cluster."""
    from steps.wal.spool import run_push_worker

    return run_push_worker(_settings("wal-push", config), Path(pg_wal), int(sysid))


def _seal_worker(config: str | None, sysid: str) -> int:
    """`wal-push --seal-worker --sysid N`: the sealer of one cluster's archived WAL (steps.wal.ledger)."""
    from steps.wal.ledger import run_seal_worker

    return run_seal_worker(_settings("wal-push", config), int(sysid))


def _prefetch_worker(config: str | None, spool: str, sysid: str, datadir: str | None) -> int:
    """`wal-fetch --prefetch-worker --spool DIR --sysid N [--datadir D]`: the read-ahead of one recovering
    cluster (in D: it stops once D's recovery has ended)."""
    from steps.wal.spool import run_prefetch_worker

    return run_prefetch_worker(_settings("wal-fetch", config), Path(spool), int(sysid), datadir)


def _settings(command: str, config: str | None) -> WalSettings:
    """The config the WAL commands read (steps.wal.settings), after refusing root."""
    from steps.wal.archive import refuse_root
    from steps.wal.settings import WalSettings

    refuse_root(command)
    return WalSettings.load(config)


def _guarded(command: str, job: Callable[[], int]) -> int:
    """Run a WAL command's job: its errors printed for PostgreSQL's log, as the exit codes it reads."""
    from runbook.errors import RunbookError, UsageError
    from steps.wal.archive import EXIT_ABORT_RECOVERY, EXIT_FAILED, EXIT_USAGE

    fetch = command == "wal-fetch"
    try:
        return job()
    except RunbookError as e:
        print(f"runbook {command}: {e}", file=sys.stderr)
        if fetch:
            return EXIT_ABORT_RECOVERY
        return EXIT_USAGE if isinstance(e, UsageError) else EXIT_FAILED
    except KeyboardInterrupt:
        print(f"runbook {command}: interrupted", file=sys.stderr)
        return EXIT_ABORT_RECOVERY if fetch else EXIT_FAILED
    except Exception as e:  # noqa: BLE001 - an unexpected failure must still keep the contract's exit codes
        import traceback

        traceback.print_exc()
        print(f"runbook {command}: unexpected {type(e).__name__}: {e}", file=sys.stderr)
        return EXIT_ABORT_RECOVERY if fetch else EXIT_FAILED
