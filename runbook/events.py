"""Typed events from the engine to the front ends (the TUI and the headless console).

The journal records the durable subset; these carry what a screen needs to draw, including output
lines in batches (never one event per line).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any


class StepStatus(StrEnum):
    pending = "pending"
    awaiting = "awaiting"  # shown to the operator, waiting for a decision
    running = "running"
    succeeded = "succeeded"
    failed = "failed"
    skipped = "skipped"
    interrupted = "interrupted"  # started, then its process vanished without a result

    @property
    def done(self) -> bool:
        return self in (StepStatus.succeeded, StepStatus.skipped)

    @property
    def icon(self) -> str:
        return {
            "pending": "·",
            "awaiting": "?",
            "running": "▶",
            "succeeded": "✓",
            "failed": "✗",
            "skipped": "↷",
            "interrupted": "!",
        }[self.value]


class Wait(StrEnum):
    """What the engine waits for from the operator."""

    confirm = "confirm"  # run this step? (yes or typed)
    ack = "ack"  # acknowledge the next checklist item of a manual step
    mark = "mark"  # rehearsal: mark the outcome of a step that was shown, not run
    failed = "failed"  # the step failed: retry, skip or abort
    interrupted = "interrupted"  # re-run, mark done, skip or abort
    value = "value"  # a template needs a value nobody produced
    approval = "approval"  # two-person rule: waiting for another operator's `runbook approve` (skip/abort only)


@dataclass(frozen=True)
class Event:
    pass


@dataclass(frozen=True)
class RunOpened(Event):
    run_id: str
    resumed: bool


@dataclass(frozen=True)
class Waiting(Event):
    step_id: str
    wait: Wait
    command: str | None = None  # what will run, values substituted, secrets masked
    typed_expected: str | None = None  # what the operator must type (confirm: typed)
    item: str | None = None  # checklist item to acknowledge (wait=ack)
    item_index: int | None = None
    value_key: str | None = None  # template key needing a value (wait=value)
    detail: str | None = None


@dataclass(frozen=True)
class StepStarted(Event):
    step_id: str
    attempt: int
    command: str | None
    reattached: bool = False


@dataclass(frozen=True)
class OutputLines(Event):
    step_id: str
    lines: list[Any]  # runbook.executor.Line


@dataclass(frozen=True)
class Progress(Event):
    step_id: str
    done: float
    total: float | None
    unit: str = ""
    label: str = ""


@dataclass(frozen=True)
class CheckReported(Event):
    step_id: str
    name: str
    status: str
    hint: str = ""


@dataclass(frozen=True)
class OutputValue(Event):
    step_id: str
    name: str
    value: Any


@dataclass(frozen=True)
class StepFinished(Event):
    step_id: str
    status: StepStatus
    detail: str = ""
    duration_s: float | None = None
    will_retry: bool = False


@dataclass(frozen=True)
class Notice(Event):
    """A note, a warning, a refusal: something the operator should read."""

    level: str  # info | warning | error | note
    text: str
    step_id: str | None = None


@dataclass(frozen=True)
class RunFinished(Event):
    status: str  # completed | failed | aborted | detached
    detail: str = ""
    summary: dict[str, Any] = field(default_factory=dict)
