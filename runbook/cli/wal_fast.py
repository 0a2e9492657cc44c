"""The command line of `runbook wal-push`/`wal-fetch` on the per-segment path: standard library only at import.

PostgreSQL starts these once per segment and waits for each (runbook.launch sends them here before loading
anything else). The plain forms, all PostgreSQL ever uses, are parsed here by hand, so that argparse is not
even loaded for them:

    wal-push  [-c CONFIG | --config=CONFIG] PATH
    wal-fetch [-c CONFIG | --config=CONFIG] [--from local|s3|any | --from=...] [--verified INDEX] NAME DEST

For those, the quick answers of steps.wal.fast come first (a segment the read-ahead holds, a push the
asynchronous uploader confirms; a name it does not hold asked of the running prefetcher: steps.wal.ask); then the
whole job (runbook.cli.wal's `push`/`fetch`). Any other form, and
every doubt, goes to runbook.cli.wal's argparse parser, which says what is wrong.
"""

from __future__ import annotations

import os

TYPE_CHECKING = False  # not typing.TYPE_CHECKING: typing costs an import on the per-segment path
if TYPE_CHECKING:
    from steps.wal.fast import Settings


def plain_args(argv: list[str], positionals: int,
               source: bool = False) -> tuple[str | None, list[str], str, str | None] | None:
    """`-c CONFIG ARG...` (or `--config=CONFIG`, or no -c; with `source`, also `--from local|s3|any` and
    `--verified INDEX`) and nothing else: (config, arguments, source, index); None for any other form."""
    config: str | None = None
    verified: str | None = None
    rest: list[str] = []
    origin = "any"
    i = 0
    while i < len(argv):
        a = argv[i]
        if a in ("-c", "--config") and i + 1 < len(argv):
            config, i = argv[i + 1], i + 2
            continue
        if source and a == "--verified" and i + 1 < len(argv):
            verified, i = argv[i + 1], i + 2
            continue
        if source and a.startswith("--verified="):
            verified = a.split("=", 1)[1]
            i += 1
            continue
        if source and a == "--from" and i + 1 < len(argv) and argv[i + 1] in ("local", "s3", "any"):
            origin, i = argv[i + 1], i + 2
            continue
        if a.startswith("--config="):
            config = a.split("=", 1)[1]
        elif source and a in ("--from=local", "--from=s3", "--from=any"):
            origin = a.split("=", 1)[1]
        elif a.startswith("-"):
            return None
        else:
            rest.append(a)
        i += 1
    return (config, rest, origin, verified) if len(rest) == positionals else None


def _quick(fetch: bool, config: str | None, args: list[str], source: str, verified: str | None) -> int | None:
    """The answer of steps.wal.fast, or None when it has none (and always as root: the full path refuses)."""
    if os.geteuid() == 0:
        return None
    from steps.wal import fast
    from steps.wal.hot import load_hot

    settings: Settings | None = load_hot(config)
    if settings is None:  # no hot cache yet, or a changed config: the full load (which writes it)
        from steps.wal.settings import WalSettings

        settings = WalSettings.load(config)
    if fetch:
        name, dest = args
        if fast.fetch_prefetched(settings, name, dest, source, verified):
            return 0
        from steps.wal.ask import fetch_asked  # not in the read-ahead: the running prefetcher reads it for us

        return fetch_asked(settings, name, dest, source, verified)
    return fast.push_async(settings, args[0])


def main(argv: list[str]) -> int:
    """`runbook wal-push ...` / `runbook wal-fetch ...` (argv starts with the command): the exit code."""
    command = argv[0]
    fetch = command == "wal-fetch"
    parsed = plain_args(argv[1:], 2 if fetch else 1, source=fetch)
    if parsed is None:
        from runbook.cli.wal import main as full_main

        return full_main(argv)
    config, args, source, verified = parsed
    try:
        rc = _quick(fetch, config, args, source, verified)
    except Exception:  # noqa: BLE001 - any doubt: the full path below does the whole job and reports
        rc = None
    if rc is not None:
        return rc
    from runbook.cli import wal

    if fetch:
        return wal.fetch(config, args[0], args[1], source=source, verified=verified)
    return wal.push(config, args[0])
