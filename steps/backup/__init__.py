"""The backup writers: what `runbook backup` and `runbook basebackup` do.

- `logical`: the daily logical backup of each database (dump, checks, publish, local retention);
  `dump` runs pg_dump in the dump's own snapshot and counts its rows; `globals_sql` reads and applies the
  roles of `pg_dumpall --globals-only`; `archive_check` reads every table's data back with pg_restore;
  `attachments` copies the application's uploaded files with their sha256.
- `base`: the physical base backup for PITR; `basetar` checks its tar files against the server's
  backup_manifest while streaming them.
- `lock`: one backup at a time per repository config.
"""
