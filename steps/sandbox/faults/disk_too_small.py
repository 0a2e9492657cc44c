"""disk-too-small: the file system the recovery is pointed at is too small for the restored cluster.

As root: a tmpfs a quarter of the base backup's size is mounted at `volume/` inside the sandbox (unmounted by
`runbook demo --down`), and the profile's `pgdata` (the new data directory) is moved onto it, as a replacement
server provisioned with a small data disk would be. Not root: the fault is refused (mounting needs root). The
tool's space check (provision-pitr, and pitr itself) must name it before anything is restored.
"""

from __future__ import annotations

import json
import os
import subprocess
from typing import TYPE_CHECKING, Any

from steps.sandbox.faults import Fault, GameContext, register
from steps.sandbox.faults._pitr_common import check_passed_after_failing, failed_check
from steps.sandbox.faults.guard import FaultRefused, sandbox_path

if TYPE_CHECKING:
    from steps.sandbox.build import Sandbox

CHECK = "free space for the recovery"
MIN_BYTES = 1 << 20


def _cluster_size(sb: Sandbox) -> int:
    """The newest base backup's cluster size (its manifest in the sandbox's repository)."""
    base = sandbox_path(sb, sb.repo / "clusters" / sb.source_cluster / "base")
    sizes = []
    for d in sorted(base.iterdir()) if base.is_dir() else []:
        try:
            m = json.loads(sandbox_path(sb, d / "manifest.json").read_text())
            sizes.append(int(m["cluster"]["size_bytes"]))
        except (OSError, ValueError, KeyError, TypeError):
            continue
    if not sizes:
        raise FaultRefused(f"no base backup in the sandbox's repository {sb.repo}: nothing to size the disk on")
    return sizes[-1]


def inject(sb: Sandbox, ctx: GameContext) -> dict[str, Any]:
    from steps.sandbox.profile import set_params

    if os.geteuid() != 0:
        raise FaultRefused("disk-too-small mounts a small file system (tmpfs) inside the sandbox, which needs root: "
                           "run the game day as root, or choose another fault (`runbook demo --faults`)")
    size = max(MIN_BYTES, (_cluster_size(sb) // 4) & ~0xFFF)
    volume = sandbox_path(sb, sb.base / "volume")
    volume.mkdir(exist_ok=True)
    proc = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size},mode=0755", "tmpfs", str(volume)],
                          capture_output=True, text=True)
    if proc.returncode != 0:
        raise FaultRefused(f"cannot mount a small file system at {volume}: {proc.stderr.strip()}",
                           hint="choose another fault (`runbook demo --faults`)")
    pgdata = volume / sb.pitr_datadir.name
    before = set_params(sb, pgdata=str(pgdata))
    return {"mount": str(volume), "size_bytes": size, "pgdata": str(pgdata), "profile_pgdata_was": before["pgdata"]}


FAULT = register(Fault(
    name="disk-too-small",
    title="the new data directory's file system is too small for the restore",
    scenarios=("pitr",),
    story="As root, a tmpfs a quarter of the base backup's cluster size was mounted at volume/ in the sandbox and "
          "the profile's pgdata (the new data directory) put on it. `runbook demo --down` unmounts it.",
    evidence=f"provision-pitr (and pitr itself, if it is skipped) fails the check \"{CHECK}\": \"not enough space "
             "for the recovery\", with the MB free and the MB needed, before anything is restored.",
    handling="Point the recovery at a file system with room (a new, empty directory): `runbook resume RUN_ID --set "
             "pgdata=DIR`, then retry the step (the pitr step's typed confirmation is the new path).",
    phase="before-run",
    inject=inject,
    evidence_event=failed_check(CHECK),
    handled=check_passed_after_failing(CHECK),  # pointed at a file system with room, then completed
))
