"""The runbook file, version 1, as pydantic models (unknown keys are errors).

The models hold what the file says, already type-checked; semantic checks that need the whole file
(template references, duplicate ids, scenario names) live in `runbook.loader.runbook_checks`.
"""

from __future__ import annotations

import re
from datetime import timedelta
from enum import StrEnum
from typing import Annotated, Any, Literal

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, field_validator, model_validator

from runbook.durations import parse_duration

SCHEMA_VERSION = 1
STEP_ID = r"^[a-z0-9][a-z0-9_-]*$"
PARAM_NAME = r"^[a-z_][a-z0-9_]*$"


def _duration(v: Any) -> Any:
    if isinstance(v, timedelta):
        return v
    return parse_duration(v)


Duration = Annotated[timedelta, BeforeValidator(_duration)]


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class ParamType(StrEnum):
    string = "string"
    int = "int"
    bool = "bool"
    choice = "choice"
    datetime = "datetime"
    duration = "duration"
    path = "path"
    command = "command"  # a shell command: substituted into `run:` as code (not quoted), shown as written


class Param(Strict):
    """An operator-supplied value, validated before anything runs."""

    type: ParamType = ParamType.string
    default: Any = None
    pattern: str | None = Field(None, description="Regular expression the whole value must match")
    choices: list[str] | None = Field(None, description="Allowed values (type: choice)")
    help: str = ""
    required: bool = Field(False, description="Required in every scenario")
    scenarios: list[str] | None = Field(
        None, description="Scenarios that require this param (a value must be given there)"
    )
    secret: bool = Field(False, description="Never shown or journaled (masked like a secret)")

    @field_validator("pattern")
    @classmethod
    def _compiles(cls, v: str | None) -> str | None:
        if v is not None:
            try:
                re.compile(v)
            except re.error as e:
                raise ValueError(f"pattern {v!r} does not compile: {e}") from None
        return v

    @model_validator(mode="after")
    def _choices(self) -> Param:
        if self.type == ParamType.choice and not self.choices:
            raise ValueError("a param of type choice needs `choices: [...]`")
        if self.choices is not None and self.type != ParamType.choice:
            raise ValueError("`choices` is only for params of type choice")
        return self


class Targets(Strict):
    rto: Duration = Field(timedelta(hours=2), description="Recovery Time Objective, e.g. 2h")
    rpo: Duration = Field(timedelta(minutes=5), description="Recovery Point Objective, e.g. 5m")


DEFAULT_ENV_MAP = {
    "DB_HOST": "PGHOST",
    "DB_PORT": "PGPORT",
    "DB_USER": "PGUSER",
    "DB_PASSWORD": "PGPASSWORD",
    "DB_NAME": "PGDATABASE",
}


class Secrets(Strict):
    env_file: str = Field(description="KEY=VALUE file, mode 0600; values reach steps only via the environment")
    map: dict[str, str] = Field(
        default_factory=lambda: dict(DEFAULT_ENV_MAP),
        description="Extra environment names for keys of the file (the plan's DB_* to libpq's PG*)",
    )
    required: list[str] = Field(default_factory=list, description="Keys that must be present in the file")
    public: list[str] = Field(
        default_factory=list,
        description="More keys whose values are not secret (shown as they are). User names, hosts, ports and "
                    "database names are public already: keys named USER, HOST, PORT, NAME, DB, DATABASE or ending "
                    "in _USER, _USERNAME, _HOST, _PORT, _NAME, _DB, _DATABASE, and PGUSER, PGHOST, PGPORT, PGDATABASE",
    )
    secret: list[str] = Field(
        default_factory=list,
        description="Keys masked although their name says public (e.g. a user name you keep secret)",
    )
    optional: bool = Field(False, description="Run without the file when it does not exist")


class Scenario(Strict):
    help: str = ""
    title: str | None = None


class ConfirmKind(StrEnum):
    none = "none"
    yes = "yes"
    typed = "typed"


class TypedConfirm(Strict):
    typed: str = Field(description="Template of the value the operator must type, e.g. '{{ db_name }}'")


class Approve(Strict):
    """The two-person rule for one step: another operator (another OS user) approves before it runs."""

    by: Literal["other"] = Field("other", description="Who approves: `other`, an OS user other than the driver's")


class Approvals(Strict):
    """When the two-person rule applies without a step's own `approve:`."""

    danger_in_live: bool = Field(True, description="`danger: true` steps need another operator's approval in live "
                                 "mode")


class Reminder(Strict):
    """A timed duty during the run: due every `every`, acknowledged (journaled) each time."""

    id: Annotated[str, Field(pattern=STEP_ID)]
    every: Duration = Field(description="How often, e.g. 30m (at least 1m)")

    @field_validator("every")
    @classmethod
    def _at_least_a_minute(cls, v: timedelta) -> timedelta:
        if v.total_seconds() < 60:
            raise ValueError("`every` must be at least 1m")
        return v
    title: str = Field(description="What to do, e.g. 'Post the next stakeholder update'")


class Step(Strict):
    id: Annotated[str, Field(pattern=STEP_ID)]
    title: str | None = None
    description: str = Field("", description="Markdown: why this step exists")
    run: str | None = Field(None, description="Shell command (bash -c); template values are shell-quoted")
    argv: list[str] | None = Field(None, description="Command as an argument list; no shell")
    action: str | None = Field(None, description="A built-in action from steps/")
    with_: dict[str, Any] | None = Field(None, alias="with", description="Arguments of the action")
    manual: list[str] | None = Field(None, description="A checklist the operator acknowledges item by item")
    confirm: ConfirmKind | TypedConfirm = ConfirmKind.yes
    timeout: Duration | None = None
    retries: Annotated[int, Field(ge=0, le=100)] = 0
    retry_delay: Duration = timedelta(seconds=2)
    on_failure: Literal["stop", "continue"] = "stop"
    scenarios: list[str] | None = None
    danger: bool = False
    expect_duration: Duration | None = None
    rto_end: bool = Field(False, description="The service is back when this step succeeds: the RTO clock stops")
    env: dict[str, str] = Field(default_factory=dict, description="Extra environment (templates allowed)")
    cwd: str | None = None
    modes: list[Literal["live", "drill", "rehearsal"]] | None = Field(
        None, description="Modes in which this step exists (default: all)"
    )
    every: Duration | None = Field(
        None, description="A timed duty: once this step (a manual checklist or a `notify`) has succeeded, the "
                          "operator is reminded to do it again every so often (e.g. 30m), each time journaled")
    approve: Approve | None = Field(
        None, description="Two-person rule: another operator approves (`runbook approve RUN_ID STEP`) before the "
                          "step runs, in live mode (and wherever `--approver-policy other` says)")

    model_config = ConfigDict(extra="forbid", frozen=True)

    @model_validator(mode="after")
    def _one_kind(self) -> Step:
        kinds = [k for k in ("run", "argv", "action", "manual") if getattr(self, k) is not None]
        if len(kinds) != 1:
            got = ", ".join(kinds) if kinds else "none"
            raise ValueError(f"a step needs exactly one of run, argv, action, manual (got {got})")
        if self.with_ is not None and self.action is None:
            raise ValueError("`with` is only for steps with `action`")
        if self.argv is not None and not self.argv:
            raise ValueError("`argv` must not be empty")
        if self.manual is not None and not self.manual:
            raise ValueError("`manual` needs at least one checklist item")
        if self.every is not None and self.manual is None and self.action != "notify":
            raise ValueError("`every` is for a manual step or a `notify` action (a duty the operator does again)")
        if self.every is not None and self.every.total_seconds() < 60:
            raise ValueError("`every` must be at least 1m")
        return self

    @property
    def kind(self) -> str:
        for k in ("run", "argv", "action", "manual"):
            if getattr(self, k) is not None:
                return k
        raise AssertionError("validated step without a kind")

    @property
    def display_title(self) -> str:
        return self.title or self.id

    @property
    def confirm_kind(self) -> ConfirmKind:
        if isinstance(self.confirm, TypedConfirm) or self.danger:
            return ConfirmKind.typed
        return self.confirm

    @property
    def typed_template(self) -> str | None:
        """What the operator must type; `danger: true` without one means typing the step id."""
        if isinstance(self.confirm, TypedConfirm):
            return self.confirm.typed
        if self.danger or self.confirm == ConfirmKind.typed:
            return self.id
        return None


class Runbook(Strict):
    version: Literal[1] = Field(description="Schema version of this file")
    name: str
    description: str = ""
    targets: Targets = Field(default_factory=lambda: Targets.model_validate({}))
    target: str | None = Field(
        None,
        description="Template naming what this runbook recovers (host:port/database); the lock is per target",
    )
    params: dict[Annotated[str, Field(pattern=PARAM_NAME)], Param] = Field(default_factory=dict)
    secrets: Secrets | None = None
    repository: str | None = Field(None, description="Template: path of the repository config (backups, WAL); "
                                   "live and drill runs take the recovery lock in it (locks/<target>.json)")
    fleet: str | None = Field(None, description="Directory of repository configs, one per cluster (relative: to this "
                              "file's directory): `runbook status --all` reads it, and the start screen lists its "
                              "clusters and sets the parameter `repository:` names to the config of the one chosen")
    scenarios: dict[Annotated[str, Field(pattern=STEP_ID)], Scenario] = Field(default_factory=dict)
    approvals: Approvals = Field(default_factory=lambda: Approvals.model_validate({}))
    reminders: list[Reminder] = Field(default_factory=list, description="Timed duties that re-arm during the run")
    steps: list[Step] = Field(min_length=1)

    def steps_for(self, scenario: str | None, mode: str | None = None) -> list[Step]:
        out = []
        for s in self.steps:
            if scenario is not None and s.scenarios is not None and scenario not in s.scenarios:
                continue
            if mode is not None and s.modes is not None and mode not in s.modes:
                continue
            out.append(s)
        return out

    def step(self, step_id: str) -> Step:
        for s in self.steps:
            if s.id == step_id:
                return s
        raise KeyError(step_id)
