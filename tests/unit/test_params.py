"""Param values: coercion of each type, messages that never echo a secret, resolving for a scenario."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone
from typing import Any

import pytest

from runbook.errors import Exit, UsageError
from runbook.model import Param, Runbook
from runbook.params import coerce, parse_set, resolve, to_text


def _p(**kw: Any) -> Param:
    return Param.model_validate(kw)


# --- coerce -------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("param", "raw", "value"),
    [
        ({}, "assetflow", "assetflow"),
        ({}, 5432, "5432"),
        ({"type": "int"}, "42", 42),
        ({"type": "int"}, " -7 ", -7),
        ({"type": "int"}, 5432, 5432),
        ({"type": "bool"}, "yes", True),
        ({"type": "bool"}, "No", False),
        ({"type": "bool"}, "1", True),
        ({"type": "bool"}, "0", False),
        ({"type": "bool"}, "TRUE", True),
        ({"type": "bool"}, False, False),
        ({"type": "choice", "choices": ["fast", "safe"]}, "safe", "safe"),
        ({"type": "duration"}, "5m", timedelta(minutes=5)),
        ({"type": "duration"}, "1h30m", timedelta(minutes=90)),
        ({"type": "duration"}, 90, timedelta(seconds=90)),
        ({"type": "path"}, "/var//tmp/restore/", "/var/tmp/restore"),
        ({"type": "path"}, "scratch/../restore", "restore"),
    ],
)
def test_each_type(param: dict[str, Any], raw: Any, value: Any) -> None:
    assert coerce("x", _p(**param), raw) == value


def test_datetime_with_a_zone() -> None:
    p = _p(type="datetime")
    assert coerce("t", p, "2024-05-01T14:30:00+07:00") == datetime(
        2024, 5, 1, 14, 30, tzinfo=timezone(timedelta(hours=7))
    )
    assert coerce("t", p, "2024-05-01T07:30:00Z") == datetime(2024, 5, 1, 7, 30, tzinfo=UTC)


@pytest.mark.parametrize("raw", ["2024-05-01T14:30:00", "2024-05-01", datetime(2024, 5, 1, 14, 30)])
def test_datetime_without_a_zone_is_refused(raw: Any) -> None:
    with pytest.raises(ValueError) as info:
        coerce("target_time", _p(type="datetime"), raw)
    message = str(info.value)
    assert message.startswith('param "target_time": ')
    assert "no time zone" in message and "+07:00" in message and "Z" in message


@pytest.mark.parametrize(
    ("param", "raw", "fragment"),
    [
        ({"type": "int"}, "five", "'five' is not a whole number"),
        ({"type": "int"}, True, "True is not a whole number"),
        ({"type": "int"}, 1.5, "is not a whole number"),
        ({"type": "bool"}, "maybe", "'maybe' is not a yes/no value (use true/false, yes/no or 1/0)"),
        ({"type": "choice", "choices": ["fast", "safe"]}, "saf", 'is not one of: fast, safe (did you mean "safe"?)'),
        ({"type": "datetime"}, "yesterday", "is not an ISO 8601 date and time"),
        ({"type": "duration"}, "5x", "'5x' is not a duration (use e.g. 90s, 5m, 2h, 1h30m)"),
        ({"type": "path"}, "/tmp/a\0b", "contains a NUL byte"),
        ({"type": "path"}, "", "is empty"),
        ({}, ["a", "b"], "is not a single value"),
        ({}, None, "is empty (null)"),
        ({"pattern": "^[a-z_]+$"}, "Asset-Flow", "'Asset-Flow' does not match the pattern ^[a-z_]+$"),
        ({"type": "int", "pattern": "^[0-9]{4}$"}, 80, "80 does not match the pattern ^[0-9]{4}$"),
    ],
)
def test_bad_values_say_what_is_accepted(param: dict[str, Any], raw: Any, fragment: str) -> None:
    with pytest.raises(ValueError) as info:
        coerce("x", _p(**param), raw)
    assert str(info.value).startswith('param "x": ')
    assert fragment in str(info.value)


def test_long_values_are_truncated_in_messages() -> None:
    with pytest.raises(ValueError) as info:
        coerce("x", _p(type="int"), "x" * 500)
    assert len(str(info.value)) < 120 and "..." in str(info.value)


@pytest.mark.parametrize(
    "param",
    [
        {"pattern": "^[a-z]+$"},
        {"type": "int"},
        {"type": "datetime"},
        {"type": "duration"},
        {"type": "bool"},
    ],
)
def test_a_secret_value_is_never_in_the_message(param: dict[str, Any]) -> None:
    with pytest.raises(ValueError) as info:
        coerce("password", _p(secret=True, **param), "Hunter2!")
    message = str(info.value)
    assert "Hunter2" not in message and "hunter2" not in message
    assert 'param "password"' in message and "secret, not shown" in message


def test_to_text() -> None:
    assert to_text(datetime(2024, 5, 1, 7, 30, tzinfo=UTC)) == "2024-05-01T07:30:00+00:00"
    assert to_text(timedelta(minutes=5)) == "300"
    assert to_text(timedelta(seconds=1.5)) == "1.5"
    assert to_text(True) == "true" and to_text(False) == "false"
    assert to_text(5432) == "5432" and to_text("x") == "x"


def test_a_secret_choice_gets_no_did_you_mean() -> None:
    with pytest.raises(ValueError) as info:
        coerce("token", _p(secret=True, type="choice", choices=["alpha", "beta"]), "alphx")
    assert "alphx" not in str(info.value) and "did you mean" not in str(info.value)


# --- resolve ------------------------------------------------------------------------------------


def _runbook() -> Runbook:
    return Runbook.model_validate(
        {
            "version": 1,
            "name": "t",
            "params": {
                "db_name": {"default": "assetflow", "pattern": "^[a-z_]+$"},
                "db_port": {"type": "int", "default": 5432},
                "target_time": {"type": "datetime", "scenarios": ["pitr"], "help": "Recover up to here"},
                "operator": {"required": True},
                "note": {},
            },
            "scenarios": {"restore-latest": {}, "pitr": {}},
            "steps": [{"id": "a", "run": "true"}],
        }
    )


def test_defaults_then_given_values() -> None:
    values = resolve(_runbook(), "restore-latest", {"db_port": "6543", "operator": "ana"})
    assert values == {"db_name": "assetflow", "db_port": 6543, "operator": "ana"}
    assert "target_time" not in values and "note" not in values


def test_scenario_requires_its_params() -> None:
    with pytest.raises(UsageError) as info:
        resolve(_runbook(), "pitr", {"operator": "ana"})
    assert str(info.value) == (
        'missing value for param "target_time" (required in scenario "pitr": Recover up to here); '
        "give it with --set target_time=VALUE"
    )
    values = resolve(_runbook(), "pitr", {"operator": "ana", "target_time": "2024-05-01T10:00:00Z"})
    assert values["target_time"] == datetime(2024, 5, 1, 10, tzinfo=UTC)


def test_unknown_names_get_did_you_mean() -> None:
    with pytest.raises(UsageError) as info:
        resolve(_runbook(), "restore-latest", {"db_nmae": "x", "operator": "ana"}, {"db_nmae": "--set"})
    assert str(info.value) == 'unknown param "db_nmae" (from --set) (did you mean "db_name"?)'
    assert info.value.exit_code == Exit.CANNOT_RUN


def test_every_problem_is_reported_one_per_line() -> None:
    given = {"db_nmae": "x", "db_name": "Bad-Name", "db_port": "http", "target_time": "2024-05-01 10:00"}
    sources = dict.fromkeys(given, "profile sandbox.yaml")
    with pytest.raises(UsageError) as info:
        resolve(_runbook(), "pitr", given, sources)
    lines = str(info.value).splitlines()
    assert len(lines) == 5
    assert lines[0].startswith('unknown param "db_nmae" (from profile sandbox.yaml)')
    assert any(line.startswith('param "db_name": \'Bad-Name\' does not match') for line in lines)
    assert any(line.startswith('param "db_port": \'http\' is not a whole number') for line in lines)
    assert any('param "target_time"' in line and "no time zone" in line for line in lines)
    assert any(line.startswith('missing value for param "operator" (required') for line in lines)


def test_unknown_scenario() -> None:
    with pytest.raises(UsageError, match='unknown scenario "pitrr" \\(did you mean "pitr"\\?\\)'):
        resolve(_runbook(), "pitrr", {"operator": "ana"})


# --- --set ----------------------------------------------------------------------------------------


def test_parse_set() -> None:
    assert parse_set(["db_name=x", "note=a=b", "empty=", " db_port =1", "db_name=y"]) == {
        "db_name": "y",
        "note": "a=b",
        "empty": "",
        "db_port": "1",
    }


def test_parse_set_errors_are_all_reported() -> None:
    with pytest.raises(UsageError) as info:
        parse_set(["db_name", "=x", "ok=1"])
    lines = str(info.value).splitlines()
    assert lines == [
        '--set "db_name": expected KEY=VALUE (e.g. --set db_name=assetflow_prod)',
        "--set with an empty key: expected KEY=VALUE (e.g. --set db_name=assetflow_prod)",
    ]
