"""The command line: every `runbook` subcommand, and everything printed for a person on a terminal.

- `main`: the parser and dispatch (`runbook.launch` sends `wal-push`/`wal-fetch` to `wal_fast` first);
- `options`: the flags several commands share (`-c/--config`, `--state-dir`), defined once;
- `runs`: `validate`, `schema`, `run`, `resume`, `runs`, `report`; `headless` the console front end of a run;
- `backup`: `backup`, `backups`, `prune`, `basebackup`; `wal`: `wal-push`, `wal-fetch` (`wal_fast`: their
  plain forms on the per-segment path, standard library only at import);
- `proof`: `check`, `verify-backup`, `status`; `demo`: the sandbox drill;
- `watch`: `watch`, `serve`: a run followed read-only (a terminal, text lines, browsers).

The jobs behind the commands live where their domain lives (`runbook` core, `steps`) and return results;
this package turns arguments into calls and results into text. Its `__init__` imports nothing.
"""
