"""A game day as `runbook demo` plays it: the faults chosen, injected phase by phase, and the record kept.

`Game.phase(name)` injects the faults of that phase (each after `guard.check_sandbox`: the sandbox's alone) and
saves the record; `Game.opened(run_id)` ties the record to the run and appends it to the ledger beside the state
directory's runs. What the operator reads from the demo never names a fault: an injector's `say` is for what a
sandbox would show anyway (a backup taken), and the facts go to the record only.
"""

from __future__ import annotations

import json
import random
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from steps.sandbox.faults import Fault, GameContext, by_phase
from steps.sandbox.faults.guard import check_sandbox
from steps.sandbox.faults.record import GameDay, append_ledger, new_game_day, save

if TYPE_CHECKING:
    from steps.sandbox.build import Sandbox


class Game:
    def __init__(self, sb: Sandbox, faults: list[Fault], seed: int, scenario: str, operator: str,
                 state_dir: Path, say: Callable[[str], None] = print) -> None:
        self.sb = sb
        self.faults = faults
        self.state_dir = state_dir
        self.gd: GameDay = new_game_day(seed, scenario, [f.name for f in faults], operator)
        self.ctx = GameContext(scenario=scenario, seed=seed, rng=random.Random(seed), say=say, state_dir=state_dir,
                               game_id=self.gd.game_id)

    def phase(self, name: str) -> None:
        for f in by_phase(self.faults, name):
            check_sandbox(self.sb)
            facts = f.inject(self.sb, self.ctx)
            self.gd.injected.append({"name": f.name, "at": datetime.now(UTC).isoformat(), "facts": facts})
            save(self.sb.base, self.gd)

    def set_baseline(self, **values: Any) -> None:
        self.gd.baseline.update({k: v for k, v in values.items() if v is not None})
        save(self.sb.base, self.gd)

    def opened(self, run_id: str) -> None:
        self.gd.run_id = run_id
        self.ctx.run_id = run_id
        save(self.sb.base, self.gd)
        append_ledger(self.state_dir, self.gd)

    def journal_event(self) -> dict[str, Any]:
        """What the run's journal gets (a `game-day` event): the id and the seed, never the faults."""
        return {"game_id": self.gd.game_id, "seed": self.gd.seed}


def clean_baseline(sb: Sandbox, lost_at: datetime) -> dict[str, Any]:
    """What a clean recovery of scenario 1 would lose: from the newest logical backup's snapshot (as the backups
    were before any fault touched them: `backups.json`, written by the sandbox after each backup) to the
    disaster, in seconds, and the rows written after it (at-disaster minus at-backup of that backup)."""
    out: dict[str, Any] = {}
    try:
        taken = json.loads((sb.base / "backups.json").read_text())
    except (OSError, ValueError):
        taken = []
    if taken:
        newest = taken[-1]
        snap = datetime.fromisoformat(str(newest["snapshot_time"]))
        out["rpo_s"] = max(0.0, (lost_at - snap).total_seconds())
        out["backup_id"] = newest["backup_id"]
        try:
            at_disaster = json.loads((sb.base / "at-disaster-counts.json").read_text())
            at_backup = newest["counts"]
            out["rows_lost"] = sum(int(at_disaster[t]) - int(at_backup.get(t, 0)) for t in at_disaster)
        except (OSError, ValueError, KeyError, TypeError):
            pass
    return out
