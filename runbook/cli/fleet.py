"""`runbook status --all`: the fleet's table for a person, its JSON and its OpenMetrics text for machines.

The facts and verdicts are `steps.proof.fleet`'s; this module finds the fleet (the flags, the runbook's `fleet:`)
and prints. The table fits the terminal's width, 80 columns at least: one line per cluster, the reason for a
line that is not ok cut to what is left of the line (`runbook status -c CONFIG` shows a cluster in full).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
from datetime import datetime
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.text import Text

from runbook.errors import RunbookError

STYLE = {"ok": "green", "warning": "bold yellow", "red": "bold red", "could not run": "bold red"}
SHOWN = {"ok": "ok", "warning": "WARN", "red": "RED", "could not run": "ERROR"}
NAME_W, COL_W, VERDICT_W = 14, 6, 5


def fleet_source(args: argparse.Namespace, file: Path, explicit: bool) -> Path:
    """-c DIR|FILE; else the runbook's `fleet:` (relative to the runbook's directory); else the one config of
    $RUNBOOK_CONFIG or the default path, as `runbook status` without --all."""
    if args.config:
        return Path(args.config).expanduser()
    if explicit or file.exists():
        from runbook.loader import load_runbook

        rb = load_runbook(file)  # an invalid runbook: InvalidFile, said by the caller
        if rb.fleet:
            fleet = Path(rb.fleet).expanduser()
            return fleet if fleet.is_absolute() else file.resolve().parent / fleet
    from runbook.paths import chosen_config_path

    return chosen_config_path(None)


def short(text: str, width: int) -> str:
    """`text` in `width` characters: cut in the middle, so that both a config's name and a system identifier's
    end stay readable."""
    if len(text) <= width:
        return text
    if width <= 1:
        return text[:width]
    head = (width - 1) // 2
    return text[:head] + "…" + text[len(text) - (width - 1 - head):]


def cut(text: str, width: int) -> str:
    """`text` in `width` characters, its beginning kept (a reason reads from its start)."""
    return text if len(text) <= width else text[: max(width - 1, 0)] + "…"


def compact(seconds: float | None, missing: str) -> str:
    """An age or a span in at most 6 characters: `45 s`, `12 m`, `3.5 h`, `2.1 d`, `412 d`."""
    if seconds is None:
        return missing
    s = int(max(seconds, 0))
    if s < 120:
        return f"{s} s"
    if s < 7200:
        return f"{s // 60} m"
    if s < 172800:
        return f"{s / 3600:.1f} h"
    return f"{s / 86400:.1f} d" if s < 100 * 86400 else f"{s // 86400} d"


def table_lines(fleet: Any, width: int = 80) -> list[tuple[str, str]]:
    """(text, verdict) per printed line; every text at most `width` characters."""
    from steps.proof.status import human

    width = max(width, 80)
    out: list[tuple[str, str]] = []
    counts = ", ".join(f"{n} {SHOWN[v].lower()}" for v, n in fleet.as_json()["counts"].items() if n)
    head = f"Fleet {fleet.source}: {fleet.verdict.upper()}"
    out.append((cut(head, width), fleet.verdict))
    if fleet.error:
        out.append((cut(f"  {fleet.error}", width), "could not run"))
        return out
    targets = next(((ln.rto_target_s, ln.rpo_target_s) for ln in fleet.lines if ln.rto_target_s), None)
    sub = f"{fleet.now:%Y-%m-%d %H:%M} UTC; {len(fleet.lines)} clusters ({counts})"
    if targets:
        sub += f"; targets RTO {human(targets[0])}, RPO {human(targets[1])}"
    out.append((cut(sub, width), "ok"))
    cols = [("CLUSTER", NAME_W), ("RPO", COL_W), ("TESTED", COL_W), ("DRILL", COL_W), ("RTO", COL_W),
            ("", VERDICT_W)]
    out.append((" ".join(f"{t:{w}}" for t, w in cols) + " WHY", "ok"))
    fixed = NAME_W + 1 + VERDICT_W + 1
    for ln in fleet.lines:
        name = short(ln.name, NAME_W)
        verdict = SHOWN[ln.verdict]
        why = ln.why.split(": ", 1)[1] if ln.why.split(": ", 1)[0] in ("red", "warning") else ln.why
        why = why.replace(f"{ln.config}:", "").replace(f"{ln.config} ", "the config ").strip()
        if ln.verdict == "could not run":
            text = f"{name:{NAME_W}} {verdict:{VERDICT_W}} {cut(why, width - fixed)}"
        else:
            values = [compact(ln.rpo_exposure_s, "all"),
                      compact(None if ln.verified_restore is None else ln.verified_restore["age_s"], "none"),
                      compact(None if ln.last_drill is None else ln.last_drill["age_s"], "never"),
                      compact(ln.projected_rto_s, "?")]
            text = f"{name:{NAME_W}} " + " ".join(f"{v:{COL_W}}" for v in values) + f" {verdict:{VERDICT_W}}"
            if ln.verdict != "ok" and why:
                text += " " + cut(why, width - len(text) - 1)
        out.append((text.rstrip(), ln.verdict))
    out.append(("RPO: exposure now; TESTED: newest test-restored backup's age; RTO: projected", "ok"))
    return out


def print_table(fleet: Any) -> None:
    width = shutil.get_terminal_size((80, 24)).columns
    console = Console(highlight=False, soft_wrap=True, no_color="NO_COLOR" in os.environ)
    for text, verdict in table_lines(fleet, width):
        console.print(Text(text, style=STYLE[verdict] if verdict != "ok" else ""))
    if fleet.error:
        print(f"runbook: status --all: {fleet.error}", file=sys.stderr)


def cmd_status_all(args: argparse.Namespace, now: datetime | None, sdir: Path, file: Path, explicit: bool) -> int:
    from steps.proof import fleet as fleet_mod
    from steps.proof.status import EXIT

    try:
        source = fleet_source(args, file, explicit)
    except RunbookError as e:
        print(f"runbook: status --all: {e}", file=sys.stderr)
        return EXIT["could not run"]
    fleet = fleet_mod.gather_fleet(source, file, explicit_file=explicit, state_dir=sdir, now=now,
                                   cluster=not args.no_cluster, allow_unsigned=args.allow_unsigned)
    fmt = "json" if args.json else args.format
    if fmt == "json":
        print(json.dumps(fleet.as_json(), indent=2, default=str))
    elif fmt == "openmetrics":
        sys.stdout.write(fleet_mod.openmetrics(fleet))
    else:
        print_table(fleet)
    sys.stdout.flush()
    return fleet.exit_code
