"""Point-in-time recovery: a base backup restored into a new data directory, WAL replayed to a target.

- `action`: the `pitr` built-in action (`Args`, `main`), a short run of the steps below.
- `args`: its arguments (`Args`) and their checks.
- `backup`: the base backup: chosen, fetched (sha256 checked), extracted against its backup_manifest.
- `datadir`: the new data directory (new or empty only; bare or a Debian cluster).
- `tablespaces`: where each tablespace goes (never its production directory), tablespace_map rewritten,
  and the checks after promotion that each one is there.
- `recovery`: the recovery settings, the server started, the replay watched to promotion, its log read.
- `precheck`: what is refused before anything is restored: the binaries' major version, free space, a gap in
  the archived WAL (and the best reachable point); a run's own earlier attempt moved aside for a retry.
- `errors`: `PitrError`.
- `pgbackrest`: the whole action with `engine: pgbackrest` (pgBackRest's restore, then `recovery`).

Imports run one way (no cycles): action imports the others; backup imports tablespaces and datadir;
tablespaces imports recovery and datadir; precheck imports recovery; every module may import args and errors,
which import neither.

The public interface that `runbook verify-backup` (steps.proof) reuses for a base backup's test restore:
`errors.PitrError`; `tablespaces.TablespacePlan`, `backup_tablespace_oids`, `read_tablespace_facts`,
`plan_tablespaces`, `make_tablespace_dirs`, `write_tablespace_map`, `TABLESPACES_SQL`, `placed_tablespaces`;
`recovery.empty_pg_wal`, `write_auto_conf`, `postmaster_alive`, `fatal_lines`, `log_tail`. Everything with a
leading underscore is private to its module.
"""
