"""The `runbook` command (runbook/script/runbook): `wal-push`/`wal-fetch` start without loading the rest of it.

PostgreSQL runs those two once per WAL segment (archive_command, restore_command) and waits for each, so they
go straight to runbook.cli.wal_fast (their command line on the per-segment path), which imports only the
standard library on its hot paths (steps.wal.fast); every other command goes to `runbook.cli.main.main`.
Measured on the server's interpreter: importing `runbook.cli.main` costs ~25 ms, which this saves per segment.
The command is a plain script, not pip's generated console script, which imports `re` before calling us.
"""

import sys


def main() -> int:
    if len(sys.argv) > 1 and sys.argv[1] in ("wal-push", "wal-fetch"):
        from runbook.cli.wal_fast import main as wal_main

        return wal_main(sys.argv[1:])
    from runbook.cli.main import main as cli_main

    return cli_main()
