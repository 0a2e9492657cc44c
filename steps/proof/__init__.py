"""Proof of recoverability: is the setup working, does a backup restore, would we make it now?

- `check`: `runbook check` (archiving works, backups fresh, the RPO exposure now).
- `verify`: `runbook verify-backup` (restore into a throwaway cluster, check, record the verdict).
  Its parts: `verification` (outcome, errors, shared steps), `verify_logical`, `verify_base`.
- `status`: `runbook status` (every fact above against the runbook's RTO and RPO).

The jobs return results; `runbook.cli` prints them for a person.
"""
