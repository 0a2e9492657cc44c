"""The `runbook` console script: `wal-push`/`wal-fetch` start without loading the rest of the command line.

PostgreSQL runs those two once per WAL segment (archive_command, restore_command) and waits for each, so they
go straight to steps.wal.fast, which imports only the standard library on its hot paths; every other command
goes to `runbook.cli.main.main` as before. Measured on the server's interpreter: importing `runbook.cli.main` costs
~25 ms, which this saves per segment.
"""

import sys


def main() -> int:
    if len(sys.argv) > 1 and sys.argv[1] in ("wal-push", "wal-fetch"):
        from steps.wal.fast import main as wal_main

        return wal_main(sys.argv[1:])
    from runbook.cli.main import main as cli_main

    return cli_main()
