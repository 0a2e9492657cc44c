"""`python -m runbook` is the same as the `runbook` command (runbook.launch: the WAL commands, and the workers
they start this way, skip the rest of the command line's imports)."""

from runbook.launch import main

raise SystemExit(main())
