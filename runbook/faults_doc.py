"""The faults' section of docs/game-days.md (the trainers' page), made from the fault registry.

    python -m runbook.faults_doc            # print the section
    python -m runbook.faults_doc --write    # replace it in docs/game-days.md (between the markers)

A test keeps the page and the registry in step: a fault added, renamed or reworded in `steps/sandbox/faults/`
fails it until the section is made again.
"""

from __future__ import annotations

import sys
from pathlib import Path

from runbook.actions_doc import replace_section, section_main

BEGIN = "<!-- faults: made by `python -m runbook.faults_doc --write` from steps/sandbox/faults/; do not edit by hand -->"
END = "<!-- end of the faults -->"
DOC = Path(__file__).resolve().parent.parent / "docs" / "game-days.md"

PHASE_TEXT = {
    "build": "when the sandbox is built, before any backup",
    "after-backup": "after the backups are taken, before the disaster",
    "before-run": "after the disaster, before the run opens",
    "during-run": "while the run is open",
}


def render() -> str:
    from steps.sandbox.faults import listing

    out = [BEGIN, ""]
    faults = listing(None)
    if not faults:
        out += ["No fault is registered in this installation.", ""]
    for f in faults:
        scenarios = ", ".join(f"`{s}`" for s in f.scenarios)
        out += [
            f"#### `{f.name}`: {f.title}",
            "",
            f"Scenarios: {scenarios}; injected {PHASE_TEXT.get(f.phase, f.phase)}"
            f"{'' if f.evidence_event else '; its evidence is not timed'}"
            f"{'' if f.handled else '; its handling is not judged'}.",
            "",
            f"- **What was done**: {f.story}",
            f"- **What the tool shows**: {f.evidence}",
            f"- **A good operator**: {f.handling}",
            "",
        ]
    return "\n".join([*out, END])


def replace_in(text: str) -> str:
    return replace_section(text, BEGIN, END, render())


def main(argv: list[str]) -> int:
    return section_main(argv, DOC, render, BEGIN, END)


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
