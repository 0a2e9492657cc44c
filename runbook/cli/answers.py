"""`--answers FILE`: scripted answers for the headless front end (rehearsals, unattended game days).

The file is YAML: a mapping of step id to the list of answers given, in order, each time that step waits for
the operator (a step that fails and is retried waits again: the next answer is used). A step with no answer
left falls back to `--yes` when given, else to the prompt. Answers:

    confirm             run the step (a typed confirmation is typed as the step asks)
    {type: TEXT}        type TEXT as the typed confirmation (a wrong one is refused, as at the prompt)
    ack                 tick a manual step's item
    retry               retry a failed step
    rerun               re-run an interrupted step
    {done: NOTE}        an interrupted step finished (how you know it)
    {value: TEXT}       the value a step asks for
    {skip: REASON}      skip the step (skip alone: "skipped by the answers file")
    {note: TEXT}        journal a note, then the next answer
    {wait: SECONDS}     wait (reading the screen, thinking), then the next answer
    stop                leave the run open (resume it later)
    {set: {K: V}}       leave the run open to change parameters: resume it with `--set K=V` (printed)
    {abort: REASON}     abort the run

A step id the runbook does not have, or an answer not in this list, is refused before the run opens.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from runbook.errors import UsageError

BARE = frozenset({"confirm", "ack", "retry", "rerun", "skip", "stop"})
KEYED = frozenset({"type", "done", "value", "skip", "note", "wait", "set", "abort"})


@dataclass(frozen=True)
class Answer:
    kind: str
    text: str = ""
    seconds: float = 0.0
    sets: dict[str, str] = field(default_factory=dict)

    def describe(self) -> str:
        if self.kind == "set":
            return "set " + ", ".join(f"{k}={v}" for k, v in self.sets.items())
        if self.kind == "wait":
            return f"wait {self.seconds:g}s"
        return self.kind


def _answer(raw: Any, where: str) -> Answer:
    if isinstance(raw, str):
        if raw not in BARE:
            raise UsageError(f"{where}: {raw!r} is not an answer; use one of {', '.join(sorted(BARE))}, or "
                             f"{{KEY: VALUE}} with KEY one of {', '.join(sorted(KEYED))}")
        return Answer(raw, text="skipped by the answers file" if raw == "skip" else "")
    if isinstance(raw, dict) and len(raw) == 1:
        ((key, value),) = raw.items()
        if key not in KEYED:
            raise UsageError(f"{where}: {key!r} is not an answer; use one of {', '.join(sorted(KEYED))}")
        if key == "wait":
            if isinstance(value, bool) or not isinstance(value, (int, float)) or value < 0:
                raise UsageError(f"{where}: wait takes a number of seconds, not {value!r}")
            return Answer("wait", seconds=float(value))
        if key == "set":
            if not isinstance(value, dict) or not value:
                raise UsageError(f"{where}: set takes a mapping of parameter to value, e.g. {{set: {{db_name: x}}}}")
            return Answer("set", sets={str(k): str(v) for k, v in value.items()})
        if value is None or isinstance(value, (dict, list)):
            raise UsageError(f"{where}: {key} takes a text, not {value!r}")
        text = str(value)
        if key in ("skip", "done", "abort") and not text.strip():
            raise UsageError(f"{where}: {key} needs a reason")
        return Answer(key, text=text)
    raise UsageError(f"{where}: an answer is a word (confirm, retry, ...) or a one-key mapping ({{skip: REASON}}), "
                     f"not {raw!r}")


def parse_answers(data: Any, steps: list[str] | None = None, source: str = "--answers") -> dict[str, list[Answer]]:
    """The answers by step id; `steps`: the runbook's step ids (an unknown one is refused)."""
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise UsageError(f"{source}: a mapping of step id to a list of answers, e.g. `fetch: [confirm, retry]`")
    out: dict[str, list[Answer]] = {}
    for sid, items in data.items():
        sid = str(sid)
        if steps is not None and sid not in steps:
            raise UsageError(f"{source}: no step {sid!r} in the runbook; its steps: {', '.join(steps)}")
        seq = items if isinstance(items, list) else [items]
        out[sid] = [_answer(a, f"{source}: step {sid}, answer {i}") for i, a in enumerate(seq, start=1)]
    return out


def load_answers(path: Path, steps: list[str] | None = None) -> dict[str, list[Answer]]:
    import yaml

    try:
        text = path.read_text()
    except OSError as e:
        raise UsageError(f"--answers {path}: cannot read it ({e.strerror})") from None
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as e:
        raise UsageError(f"--answers {path}: not YAML ({e})") from None
    return parse_answers(data, steps, source=f"--answers {path}")
