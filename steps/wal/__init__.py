"""The WAL archive: `archive_command` (`runbook wal-push`) and `restore_command` (`runbook wal-fetch`).

- `fast`: the per-segment hot path PostgreSQL starts thousands of times; the standard library only at import.
- `archive`: pushing and fetching one file, checked (the full path behind the fast one): `push_file`, `fetch_file`.
- `spool`: the asynchronous push worker and the fetch read-ahead.
- `store`: the archive's two backends (a local directory, S3), light to import.
- `segment`: a WAL file's header, identity and the archive's framing (zstd).
- `settings`: the repository config as the full path reads it (cached as JSON, no pydantic); `hot`: the few
  values the quick answers of `fast` read, from a cache of `key=value` lines each full load writes beside it.

Imports go one way: spool -> archive -> settings -> hot -> fast (and segment, store below them); fast imports
none of them at run time. The command line (arguments, messages, exit codes) is runbook.cli.wal and, on the
per-segment path, runbook.cli.wal_fast. This package's `__init__` stays empty of imports: `steps.wal.fast`
must not pay for the rest.
"""
