"""The backup repository: one layout on two backends (a local directory, an S3 prefix).

- `config`: the repository config file (pydantic schema, `file:line:col` errors).
- `layout`: where every object lives (keys), and WAL file names as the archive keys them.
- `store`: the `Store` interface, its errors, the local backend; `s3` the S3 backend, `s3common` what the
  backup repository and the WAL archive share of S3 (standard library at import); `configured` opens the
  stores a config names.
- `manifest`: manifest.json (version 1) and verification records; `publish` writes them last.
- `signing`: Ed25519 keys, the detached signature beside each manifest, record and run summary, and the
  `Trust` every read checks them with (the only module that imports `cryptography`).
- `catalogue`: every backup in every store and the one a recovery picks; `retention` plans what to keep,
  `prune` applies it.
- `recovery_lock`: who is recovering what, from where; `run_summaries`: finished runs seen by every host.
- `verified`: the stamp a fetch leaves so a restore need not hash the same bytes again; `retry`: bounded
  retries of transient errors.

This package's `__init__` stays empty of imports: the WAL hot path reads `s3common` without the rest.
"""
