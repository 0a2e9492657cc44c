"""Parameter values: typing what the operator gave (`--set`, a profile, defaults) against the runbook.

`coerce` turns one raw value into its typed value or says, in one line, what is wrong and what is
accepted (never echoing a secret); `resolve` merges defaults and given values for one scenario and
reports every problem at once; `to_text` is the one text form a typed value takes in templates.
"""

from __future__ import annotations

import difflib
import os
import re
from collections.abc import Callable, Iterable
from datetime import datetime, timedelta
from typing import Any

from runbook.durations import parse_duration
from runbook.errors import UsageError
from runbook.model import Param, ParamType, Runbook
from runbook.secrets import MIN_SECRET_LEN, short_secret_hint

_TRUE = frozenset({"true", "yes", "1"})
_FALSE = frozenset({"false", "no", "0"})
_INT = re.compile(r"[-+]?[0-9]+")
_SHOWN_MAX = 60


def _shown(raw: Any, secret: bool) -> str:
    """How a bad value appears in a message: its repr, truncated; a secret is never echoed."""
    if secret:
        return "the given value (secret, not shown)"
    text = repr(raw)
    return text if len(text) <= _SHOWN_MAX else text[: _SHOWN_MAX - 3] + "..."


def _scalar_text(raw: Any) -> str:
    """The text form of a scalar from YAML or the command line; lists and mappings are refused."""
    if isinstance(raw, str):
        return raw
    if isinstance(raw, bool | int | float | datetime | timedelta):
        return to_text(raw)
    raise ValueError("is not a single value")


def _as_int(raw: Any) -> int:
    if isinstance(raw, int) and not isinstance(raw, bool):
        return raw
    if isinstance(raw, str) and _INT.fullmatch(raw.strip()):
        return int(raw.strip())
    raise ValueError("is not a whole number (e.g. 5432)")


def _as_bool(raw: Any) -> bool:
    if isinstance(raw, bool):
        return raw
    text = str(raw).strip().lower() if isinstance(raw, str | int) else None
    if text in _TRUE:
        return True
    if text in _FALSE:
        return False
    raise ValueError("is not a yes/no value (use true/false, yes/no or 1/0)")


def _as_datetime(raw: Any) -> datetime:
    example = "add a time zone, e.g. 2024-05-01T14:30:00+07:00 or 2024-05-01T07:30:00Z"
    if isinstance(raw, datetime):
        value = raw
    elif isinstance(raw, str):
        try:
            value = datetime.fromisoformat(raw.strip())
        except ValueError:
            raise ValueError(
                "is not an ISO 8601 date and time (e.g. 2024-05-01T14:30:00+07:00)"
            ) from None
    else:
        raise ValueError("is not an ISO 8601 date and time (e.g. 2024-05-01T14:30:00+07:00)")
    if value.tzinfo is None or value.utcoffset() is None:
        raise ValueError(f"has no time zone; {example}")
    return value


def _as_duration(raw: Any) -> timedelta:
    if isinstance(raw, timedelta):
        return raw
    if not isinstance(raw, str | int | float):
        raise ValueError("is not a duration (use e.g. 90s, 5m, 2h, 1h30m)")
    try:
        return parse_duration(raw)
    except ValueError:
        raise ValueError("is not a duration (use e.g. 90s, 5m, 2h, 1h30m)") from None


def _as_path(raw: Any) -> str:
    if not isinstance(raw, str):
        raise ValueError("is not a path")
    if "\0" in raw:
        raise ValueError("contains a NUL byte; a path cannot")
    if not raw.strip():
        raise ValueError("is empty; give a path")
    return os.path.normpath(raw)


_CONVERTERS: dict[ParamType, Callable[[Any], Any]] = {
    ParamType.string: _scalar_text,
    ParamType.int: _as_int,
    ParamType.bool: _as_bool,
    ParamType.datetime: _as_datetime,
    ParamType.duration: _as_duration,
    ParamType.path: _as_path,
    ParamType.command: _scalar_text,
}


def _as_choice(p: Param, raw: Any) -> str:
    text = _scalar_text(raw)
    choices = p.choices or []
    if text in choices:
        return text
    options = ", ".join(choices)
    close = [] if p.secret else difflib.get_close_matches(text, choices, n=1)
    hint = f' (did you mean "{close[0]}"?)' if close else ""
    raise ValueError(f"is not one of: {options}{hint}")


def coerce(name: str, p: Param, raw: Any) -> Any:
    """The typed value of param `name` for `raw`; ValueError names the param and what is accepted.

    `pattern` applies to the text form of `raw` (what the operator wrote). A secret value is never
    part of a message; one shorter than 8 characters is refused.
    """
    try:
        if raw is None:
            raise ValueError("is empty (null); give a value")
        value = _as_choice(p, raw) if p.type == ParamType.choice else _CONVERTERS[p.type](raw)
        _check_pattern(p, raw)
        if p.secret and len(to_text(value)) < MIN_SECRET_LEN:
            raise ValueError(f"is shorter than {MIN_SECRET_LEN} characters; "
                             + short_secret_hint("drop `secret: true` from the param"))
    except ValueError as e:
        raise ValueError(f'param "{name}": {_shown(raw, p.secret)} {e}') from None
    return value


def _check_pattern(p: Param, raw: Any) -> None:
    if p.pattern is not None and not re.fullmatch(p.pattern, _scalar_text(raw)):
        raise ValueError(f"does not match the pattern {p.pattern}")


def to_text(value: Any) -> str:
    """The text a typed value takes in a template or an environment variable.

    datetime -> ISO 8601, timedelta -> whole seconds ('300'), bool -> 'true'/'false'.
    """
    if value is None:
        raise TypeError("None has no text form: the value is missing")
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, datetime):
        return value.isoformat()
    if isinstance(value, timedelta):
        secs = value.total_seconds()
        return str(int(secs)) if secs == int(secs) else f"{secs:g}"
    return str(value)


def did_you_mean(word: str, candidates: Iterable[str]) -> str:
    """` (did you mean "x"?)` for the closest candidate, or the empty string."""
    close = difflib.get_close_matches(word, list(candidates), n=1)
    return f' (did you mean "{close[0]}"?)' if close else ""


def _origin(name: str, sources: dict[str, str] | None) -> str:
    where = (sources or {}).get(name)
    return f" (from {where})" if where else ""


def _needed_here(p: Param, scenario: str | None) -> bool:
    return p.required or (scenario is not None and p.scenarios is not None and scenario in p.scenarios)


def _missing_message(name: str, p: Param, scenario: str | None) -> str:
    why = "required" if p.required else f'required in scenario "{scenario}"'
    help_text = f": {' '.join(p.help.split())}" if p.help else ""
    return f'missing value for param "{name}" ({why}{help_text}); give it with --set {name}=VALUE'


def resolve(
    runbook: Runbook,
    scenario: str | None,
    given: dict[str, Any],
    sources: dict[str, str] | None = None,
) -> dict[str, Any]:
    """Typed values of the params for one run: defaults < given. Raises UsageError, one line per problem.

    `sources` says where each given value came from (`--set`, a profile file) for the messages.
    Params with no value that are not needed in this scenario are absent from the result.
    """
    problems: list[str] = []
    if scenario is not None and runbook.scenarios and scenario not in runbook.scenarios:
        problems.append(f'unknown scenario "{scenario}"{did_you_mean(scenario, runbook.scenarios)}')
    for name in given:
        if name not in runbook.params:
            problems.append(
                f'unknown param "{name}"{_origin(name, sources)}{did_you_mean(name, runbook.params)}'
            )
    values: dict[str, Any] = {}
    for name, p in runbook.params.items():
        raw = given.get(name, p.default)
        if raw is None:
            if _needed_here(p, scenario):
                problems.append(_missing_message(name, p, scenario))
            continue
        try:
            values[name] = coerce(name, p, raw)
        except ValueError as e:
            origin = _origin(name, sources) if name in given else " (its default)"
            problems.append(f"{e}{origin}")
    if problems:
        raise UsageError("\n".join(problems))
    return values


def parse_set(items: list[str]) -> dict[str, str]:
    """`--set KEY=VALUE` items as a dict (the last of a repeated key wins). Raises UsageError."""
    out: dict[str, str] = {}
    problems: list[str] = []
    for item in items:
        key, sep, value = item.partition("=")
        key = key.strip()
        if not sep:
            shown = item if len(item) <= 40 else item[:37] + "..."
            problems.append(f'--set "{shown}": expected KEY=VALUE (e.g. --set db_name=assetflow_prod)')
        elif not key:
            problems.append("--set with an empty key: expected KEY=VALUE (e.g. --set db_name=assetflow_prod)")
        else:
            out[key] = value
    if problems:
        raise UsageError("\n".join(problems))
    return out
