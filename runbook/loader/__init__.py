"""Loading YAML files into pydantic models, with every problem at its exact `file:line:col`.

`load_model` is generic (runbooks, profiles, the repository config): it parses YAML keeping the
position of every key and value, reports duplicate keys (which YAML would silently drop), validates
with pydantic and turns each pydantic error into a human message at the nearest position ("unknown
key ... (did you mean ...?)", "missing required key ..."). `load_runbook` adds the checks that need
the whole runbook: step ids, scenario names, actions and their `with:`, template references, quoted
templates, `rto_end`, param defaults. Every problem of a file is reported at once, as `InvalidFile`.

This module holds the entry points (and `json_schema`, for editors); the work is in its parts:
`yaml_source` (YAML with positions), `schema_errors` (pydantic errors as messages) and `runbook_checks`.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

from pydantic import BaseModel

from runbook.errors import InvalidFile, Problem, UsageError
from runbook.loader.runbook_checks import runbook_checks
from runbook.loader.schema_errors import Scope, validate
from runbook.loader.yaml_source import NOTHING, SourceMap, parse, read_text
from runbook.model import Runbook

__all__ = ["json_schema", "load_model", "load_runbook", "load_runbook_text"]

M = TypeVar("M", bound=BaseModel)


def _source(path_or_text: str | Path, filename: str | None) -> tuple[str, str]:
    if isinstance(path_or_text, Path):
        name = filename or str(path_or_text)
        return read_text(path_or_text, name), name
    return path_or_text, filename or "<string>"


Checks = Callable[[dict[str, Any], SourceMap, list[Problem]], list[Problem]]
"""Whole-file checks: given the data, positions and the schema's problems, return all problems."""


def load_model(path_or_text: str | Path, model_cls: type[M], *, filename: str | None = None) -> M:
    """Load a YAML file (a `Path`) or YAML text (a `str`) into `model_cls`. Raises InvalidFile.

    `filename` names the file in messages (default: the path, or `<string>` for text). Only the
    schema is checked here; `load_runbook` adds the checks that need the whole runbook.
    """
    text, name = _source(path_or_text, filename)
    return _load(text, name, model_cls, None)


# What each kind of file is called, where it goes, and the keys that only it has: a file of one kind passed where
# another is expected is named as such, instead of a page of "unknown key" lines.
_KINDS: dict[str, tuple[str, str, tuple[str, ...]]] = {
    "Runbook": ("a runbook file", "the FILE of run, validate and status", ("steps", "scenarios")),
    "RepositoryConfig": ("a repository config", "given with -c (docs/repository-config.md)",
                         ("cluster", "local", "s3")),
    "Profile": ("a profile", "given with --profile", ()),
}


def _wrong_kind(data: Any, filename: str, model_cls: type[BaseModel]) -> UsageError | None:
    if not isinstance(data, dict) or model_cls.__name__ not in _KINDS:
        return None
    wanted, goes, _ = _KINDS[model_cls.__name__]
    own = set(model_cls.model_fields)
    for name, (what, its_place, keys) in _KINDS.items():
        found = [k for k in keys if k in data and k not in own]
        if name != model_cls.__name__ and found:
            return UsageError(f"{filename} is {what} (it has {found[0]}:), not {wanted}",
                              hint=f"{wanted} is {goes}; {what} is {its_place}")
    return None


def _load(text: str, filename: str, model_cls: type[M], checks: Checks | None) -> M:
    data, smap, problems = parse(text, filename)
    if data is NOTHING:
        raise InvalidFile(problems)
    wrong = _wrong_kind(data, filename, model_cls)
    if wrong is not None:
        raise wrong
    model, found = validate(Scope(model_cls, data), smap)
    problems += found
    if checks is not None and isinstance(data, dict):
        problems = checks(data, smap, problems)
    if problems or model is None:
        raise InvalidFile(problems)
    return model  # type: ignore[return-value]


def load_runbook(path: str | Path) -> Runbook:
    """Load and fully validate a runbook file. Raises InvalidFile with every problem of the file."""
    text, name = _source(Path(path), str(path))
    return _load(text, name, Runbook, runbook_checks)


def load_runbook_text(text: str, filename: str = "<string>") -> Runbook:
    """`load_runbook` for text already in memory (tests, editors). Raises InvalidFile."""
    return _load(text, filename, Runbook, runbook_checks)


_DURATION_SCHEMA: dict[str, Any] = {
    "anyOf": [
        {"type": "string", "pattern": r"^\s*(\d+(\.\d+)?\s*([mM][sS]|[smhdSMHD])\s*)+$", "examples": ["90s", "5m", "1h30m"]},
        {"type": "number", "minimum": 0, "description": "seconds"},
    ]
}


def _fix_durations(node: Any) -> Any:
    """Pydantic describes timedelta as ISO 8601; the file takes `90s`, `5m`, `1h30m` or seconds."""
    if isinstance(node, dict):
        if node.get("type") == "string" and node.get("format") == "duration":
            extra = {k: v for k, v in node.items() if k not in ("type", "format")}
            return {**extra, **_DURATION_SCHEMA}
        return {k: _fix_durations(v) for k, v in node.items()}
    if isinstance(node, list):
        return [_fix_durations(v) for v in node]
    return node


def json_schema() -> dict[str, Any]:
    """The JSON Schema of the runbook file (version 1), for editors (`runbook schema`)."""
    schema = _fix_durations(Runbook.model_json_schema(by_alias=True, mode="validation"))
    return {
        "$schema": "https://json-schema.org/draft/2020-12/schema",
        **schema,
        "title": "PostgreSQL DR runbook (runbook.yaml, version 1)",
    }
