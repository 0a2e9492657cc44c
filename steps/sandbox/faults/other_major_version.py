"""other-major-version: the replacement server's PostgreSQL binaries are another major version than the backup's.

A simulation: the sandbox gets `replacement-server/bin/` whose `postgres --version` and `pg_ctl --version` say
PostgreSQL 16 (and which refuse to do anything else), and the profile's `pg_bindir` (the binaries the runbook
starts the recovered server with) points there, as a replacement server provisioned with the wrong package would.
Nothing of PostgreSQL 16 is installed or run. The tool must refuse before restoring, naming both versions.
"""

from __future__ import annotations

import os
from typing import TYPE_CHECKING, Any

from steps.sandbox.faults import Fault, GameContext, register
from steps.sandbox.faults._pitr_common import check_passed_after_failing, failed_check
from steps.sandbox.faults.guard import sandbox_path

if TYPE_CHECKING:
    from steps.sandbox.build import Sandbox

VERSION = "16.4"
CHECK = "server major version"

SCRIPT = """#!/bin/sh
# A game-day simulation (runbook demo): this sandbox's "replacement server" reports PostgreSQL {version}.
case "$1" in
  --version|-V) echo "{name} (PostgreSQL) {version}"; exit 0 ;;
esac
echo "{name}: simulated PostgreSQL {version} binary of a runbook game day: it reports its version only" >&2
exit 1
"""


def inject(sb: Sandbox, ctx: GameContext) -> dict[str, Any]:
    from steps.sandbox.profile import set_params

    bindir = sandbox_path(sb, sb.base / "replacement-server" / "bin")
    bindir.mkdir(parents=True, exist_ok=True)
    for d in (bindir.parent, bindir):
        os.chmod(sandbox_path(sb, d), 0o755)
    for name in ("postgres", "pg_ctl"):
        p = sandbox_path(sb, bindir / name)
        p.write_text(SCRIPT.format(name=name, version=VERSION))
        os.chmod(p, 0o755)
    before = set_params(sb, pg_bindir=str(bindir))
    return {"bindir": str(bindir), "reports": f"PostgreSQL {VERSION}", "profile_pg_bindir_was": before["pg_bindir"]}


FAULT = register(Fault(
    name="other-major-version",
    title="the replacement server runs another PostgreSQL major version than the backup's",
    scenarios=("pitr",),
    story=f"A simulation: the profile's pg_bindir (the binaries the recovered server is started with) points at "
          f"replacement-server/bin in the sandbox, whose postgres and pg_ctl report PostgreSQL {VERSION} (and do "
          "nothing else); the base backup is PostgreSQL 15's. Nothing of PostgreSQL 16 is installed.",
    evidence=f"provision-pitr (and pitr itself, if it is skipped) fails the check \"{CHECK}\": \"major version "
             f"mismatch\", naming PostgreSQL {VERSION} in the replacement server's bindir and the backup's 15.x, "
             "before anything is restored.",
    handling="Do not skip the check: point pg_bindir at PostgreSQL 15's binaries (install postgresql-15 on a real "
             "replacement; in the sandbox /usr/lib/postgresql/15/bin): `runbook resume RUN_ID --set "
             "pg_bindir=/usr/lib/postgresql/15/bin`, then retry the step; upgrade only after the recovery.",
    phase="before-run",
    inject=inject,
    evidence_event=failed_check(CHECK),
    handled=check_passed_after_failing(CHECK),  # binaries were corrected, then completed
))
