"""Game-day faults: named things that go wrong, injected into the sandbox `runbook demo` built, and nowhere else.

A fault (`Fault`) is registered by a module of this package (`register`); every module here but `record` and
`guard` is imported when the registry is first read, so a new module of faults needs no edit of this file.
`runbook demo --fault NAME` (repeatable) or `--fault random [--seed N]` picks them (`choose`), `--faults` lists
them (`listing`). The operator is not told which fault was injected: nothing of it goes into screens, journal,
step output or report before the debrief; the game day's record (`record.GameDay`) holds it for the trainer.

When a fault is injected (`Fault.phase`):
- `build`: the sandbox is built, no backup taken yet;
- `after-backup`: the daily backup (and in scenario `pitr` the base backup) is taken, the application has not
  written more yet;
- `before-run`: the disaster struck and the profile is written; the run is not opened yet;
- `during-run`: the run is opened (`GameContext.run_id`, `GameContext.state_dir`), the operator not yet at its
  first step: the injector starts whatever strikes later (a timer, a watcher) and returns.

Faults for training are the sandbox's alone (DESIGN.md): every injector goes through `guard` (`sandbox_path`,
`sandbox_config`, `check_sandbox`), which refuses any target outside the sandbox's directory and servers, and a
sandbox the demo did not build.
"""

from __future__ import annotations

import importlib
import pkgutil
import random
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from runbook.errors import UsageError

if TYPE_CHECKING:
    from steps.sandbox.build import Sandbox

SCENARIOS = ("restore-latest", "pitr")
PHASES = ("build", "after-backup", "before-run", "during-run")
RANDOM = "random"
_NOT_FAULTS = frozenset({"record", "guard"})


@dataclass
class GameContext:
    """What an injector is given besides the sandbox: the game's scenario and seed, its random source (seeded:
    the same seed makes the same damage), where to say what the demo does (never the fault's name: the
    operator reads it), and once the run is opened its id and state directory. `facts` is shared by the
    faults of one game (one fault may read what another did)."""

    scenario: str
    seed: int
    rng: random.Random
    say: Callable[[str], None] = print
    state_dir: Path | None = None
    run_id: str | None = None  # set when the run is opened (headless); in the TUI the operator opens it later
    game_id: str = ""
    facts: dict[str, Any] = field(default_factory=dict)

    def find_run(self) -> str | None:
        """The run carrying this game's `game-day` journal event, once it is opened (None before): how a
        `during-run` fault finds the run the TUI opens after the injector returned."""
        if self.run_id or self.state_dir is None or not self.game_id:
            return self.run_id
        return run_of_game(self.state_dir, self.game_id)


def run_of_game(state_dir: Path, game_id: str) -> str | None:
    """The id of the run whose journal carries the `game-day` event of `game_id` (read from the first lines)."""
    import json

    from runbook.state import runs_dir

    runs = runs_dir(Path(state_dir))
    try:
        dirs = sorted(runs.iterdir(), reverse=True)
    except OSError:
        return None
    for d in dirs:
        try:
            with open(d / "journal.jsonl", "rb") as f:
                for _, line in zip(range(4), f, strict=False):
                    e = json.loads(line)
                    if e.get("type") == "game-day" and e.get("game_id") == game_id:
                        return str(d.name)
        except (OSError, ValueError, AttributeError):
            continue
    return None


@dataclass(frozen=True)
class Fault:
    name: str  # kebab-case, what --fault takes
    title: str  # the trainer's one line
    scenarios: tuple[str, ...]  # the scenarios it applies to (SCENARIOS)
    story: str  # what was done to the sandbox, for the trainer and the debrief
    evidence: str  # what the tool shows when it bites: which step, which message
    handling: str  # what a good operator does
    phase: str  # PHASES
    inject: Callable[[Sandbox, GameContext], dict[str, Any]]  # returns the facts for the record
    # Given the run's journal events: the time (epoch seconds) the tool first showed the evidence; None: not shown.
    evidence_event: Callable[[list[dict[str, Any]]], float | None] | None = None
    handled: Callable[[list[dict[str, Any]]], bool] | None = None  # did the operator handle it

    def __post_init__(self) -> None:
        if self.phase not in PHASES:
            raise ValueError(f"fault {self.name}: phase {self.phase!r} is not one of {', '.join(PHASES)}")
        if not self.scenarios or any(s not in SCENARIOS for s in self.scenarios):
            raise ValueError(f"fault {self.name}: scenarios {self.scenarios!r} must be among {', '.join(SCENARIOS)}")
        if not self.name or self.name != self.name.lower() or " " in self.name or self.name == RANDOM:
            raise ValueError(f"fault name {self.name!r}: kebab-case, and not {RANDOM!r}")


FAULTS: dict[str, Fault] = {}
_loaded = False


def register(fault: Fault) -> Fault:
    """Add a fault to the registry (from a module of this package, at import)."""
    if fault.name in FAULTS and FAULTS[fault.name] is not fault:
        raise ValueError(f"fault {fault.name!r} is registered twice")
    FAULTS[fault.name] = fault
    return fault


def _load() -> None:
    """Import every module of this package once: each registers its faults."""
    global _loaded
    if _loaded:
        return
    _loaded = True
    for mod in sorted(pkgutil.iter_modules(__path__), key=lambda m: m.name):
        if mod.name not in _NOT_FAULTS and not mod.name.startswith("_"):
            importlib.import_module(f"{__name__}.{mod.name}")


def registry() -> dict[str, Fault]:
    _load()
    return FAULTS


def listing(scenario: str | None = None) -> list[Fault]:
    """The faults (of one scenario, or all), by name."""
    return [f for _, f in sorted(registry().items()) if scenario is None or scenario in f.scenarios]


def choose(names: list[str], scenario: str, seed: int | None) -> tuple[list[Fault], int]:
    """The faults named (`random`: one applicable fault, picked with `random.Random(seed)`), and the seed.

    A seed is drawn when none is given and returned, so the day can be replayed: the same seed and scenario
    give the same faults. An unknown name, a fault that does not apply to the scenario, or `random` with
    nothing left to pick is a UsageError saying what to do."""
    faults = registry()
    if seed is None:
        seed = random.SystemRandom().randrange(1, 1_000_000)
    rng = random.Random(seed)
    chosen: list[Fault] = []
    for name in names:
        if name == RANDOM:
            continue
        f = faults.get(name)
        if f is None:
            known = ", ".join(sorted(faults)) or "none"
            raise UsageError(f"no fault named {name!r}; the faults: {known}, or `random`",
                             hint="`runbook demo --faults` lists them with what each does")
        if scenario not in f.scenarios:
            raise UsageError(f"fault {name!r} does not apply to scenario {scenario!r}: it applies to "
                             f"{', '.join(f.scenarios)}", hint=f"add --scenario {f.scenarios[0]}")
        if f not in chosen:
            chosen.append(f)
    for _ in range(sum(1 for n in names if n == RANDOM)):
        pool = [f for f in listing(scenario) if f not in chosen]
        if not pool:
            raise UsageError(f"no fault left to pick at random for scenario {scenario!r}",
                             hint="`runbook demo --faults` lists them")
        chosen.append(rng.choice(pool))
    return chosen, seed


def by_phase(faults: list[Fault], phase: str) -> list[Fault]:
    return [f for f in faults if f.phase == phase]
