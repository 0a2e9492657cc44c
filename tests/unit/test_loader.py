"""The loader: real runbook files in, a model or every problem at its exact `file:line:col` out.

Each file of `tests/unit/corpus/bad/` says what it must produce in `# expect: LINE:COL: TEXT` lines at
its top; the file must produce exactly those problems (each TEXT a substring of the message), no
more and no fewer.
"""

from __future__ import annotations

import json
import re
import time
from datetime import timedelta
from pathlib import Path

import pytest
from pydantic import BaseModel, ConfigDict

from runbook.errors import Exit, InvalidFile, Problem
from runbook.loader import json_schema, load_model, load_runbook, load_runbook_text
from runbook.model import ConfirmKind, Runbook, TypedConfirm

CORPUS = Path(__file__).parent / "corpus"
BAD = sorted((CORPUS / "bad").glob("*.yaml"))
_EXPECT = re.compile(r"^# expect: (\d+):(\d+): (.+)$", re.MULTILINE)


def _problems(path: Path | str) -> list[Problem]:
    with pytest.raises(InvalidFile) as info:
        load_runbook(path)
    return info.value.problems


def _problems_of_text(text: str) -> list[Problem]:
    with pytest.raises(InvalidFile) as info:
        load_runbook_text(text, "rb.yaml")
    return info.value.problems


# --- the corpus ---------------------------------------------------------------------------------


@pytest.mark.parametrize("path", BAD, ids=[p.stem for p in BAD])
def test_bad_file_reports_exactly_its_problems(path: Path) -> None:
    expected = [(int(line), int(col), text) for line, col, text in _EXPECT.findall(path.read_text())]
    assert expected, f"{path.name} has no `# expect:` lines"
    problems = _problems(path)
    shown = "\n".join(str(p) for p in problems)
    for line, col, text in expected:
        assert any(
            (p.line, p.col) == (line, col) and text in p.message for p in problems
        ), f"missing {line}:{col}: {text}\n got:\n{shown}"
    assert len(problems) == len(expected), f"unexpected extra problems:\n{shown}"
    assert all(p.file == str(path) for p in problems)


def test_problems_print_as_file_line_col_message() -> None:
    path = CORPUS / "bad" / "unknown_key_step.yaml"
    with pytest.raises(InvalidFile) as info:
        load_runbook(path)
    assert str(info.value) == (
        f'{path}:8:5: unknown key "timout" in step "restore" (did you mean "timeout"?)'
    )
    assert info.value.exit_code == Exit.CANNOT_RUN


def test_the_full_runbook_loads() -> None:
    rb = load_runbook(CORPUS / "good" / "full.yaml")
    assert isinstance(rb, Runbook)
    assert [s.id for s in rb.steps] == ["notify", "wait", "restore", "replay", "switch-over"]
    assert rb.targets.rto == timedelta(hours=2)
    assert set(rb.scenarios) == {"restore-latest", "pitr"}
    restore = rb.step("restore")
    assert restore.timeout == timedelta(minutes=90) and restore.retries == 1  # from the `<<` merge key
    assert restore.confirm == TypedConfirm(typed="{{ db_name }}")
    assert "{{ '{{' }}" in (restore.run or "")
    assert rb.step("wait").with_ == {"host": "{{ db_host }}", "port": "{{ db_port }}", "deadline_s": 120}
    assert rb.step("switch-over").confirm == ConfirmKind.none and rb.step("switch-over").rto_end
    assert rb.params["dry"].default == "no"  # YAML 1.2: `no` is text; the param's type makes it a bool
    assert rb.step("replay").confirm_kind == ConfirmKind.typed


def test_the_project_runbook_is_valid() -> None:
    path = Path(__file__).parent.parent.parent / "runbook.yaml"
    if not path.exists():
        pytest.skip("no runbook.yaml at the top of the project yet")
    load_runbook(path)


# --- files that cannot be read ------------------------------------------------------------------


def test_missing_file_is_one_problem_at_1_1(tmp_path: Path) -> None:
    path = tmp_path / "nope.yaml"
    [p] = _problems(path)
    assert (p.file, p.line, p.col) == (str(path), 1, 1)
    assert "cannot read the file: No such file or directory" in p.message


def test_directory_is_one_problem(tmp_path: Path) -> None:
    [p] = _problems(tmp_path)
    assert (p.line, p.col) == (1, 1) and "cannot read the file" in p.message


def test_non_utf8_points_at_the_bad_byte(tmp_path: Path) -> None:
    path = tmp_path / "latin1.yaml"
    path.write_bytes(b"version: 1\nname: caf\xe9\n")
    [p] = _problems(path)
    assert (p.line, p.col, p.message) == (2, 10, "the file is not UTF-8 text")


def test_empty_file(tmp_path: Path) -> None:
    path = tmp_path / "empty.yaml"
    path.write_text("# only a comment\n")
    [p] = _problems(path)
    assert (p.line, p.col, p.message) == (1, 1, "the file is empty")


def test_top_level_must_be_a_mapping() -> None:
    [p] = _problems_of_text("- id: a\n  run: x\n")
    assert (p.line, p.col) == (1, 1)
    assert p.message == "expected a mapping (key: value), got a list"


def test_second_document_is_a_syntax_error() -> None:
    [p] = _problems_of_text("version: 1\n---\nname: x\n")
    assert (p.line, p.col) == (2, 1)
    assert "expected a single document" in p.message


def test_control_character_is_a_syntax_error() -> None:
    [p] = _problems_of_text("version: 1\nname: a\x07b\n")
    assert (p.line, p.col) == (2, 8) and "control characters are not allowed" in p.message


# --- YAML details -------------------------------------------------------------------------------

_MINIMAL = "version: 1\nname: x\nsteps:\n  - id: a\n    run: 'true'\n"


def test_yaml_12_numbers_stay_numbers_where_numbers_are_wanted() -> None:
    rb = load_runbook_text(_MINIMAL + "    retries: 0x0A\n    timeout: 90\n")
    assert rb.steps[0].retries == 10
    assert rb.steps[0].timeout == timedelta(seconds=90)


def test_bare_words_that_yaml_11_reads_as_booleans_are_text() -> None:
    text = _MINIMAL.replace("run: 'true'", "manual: [no, on, yes, off]")
    assert load_runbook_text(text).steps[0].manual == ["no", "on", "yes", "off"]


def test_explicit_true_false_are_booleans_but_not_text() -> None:
    [p] = _problems_of_text(_MINIMAL + "    title: true\n")
    assert (p.line, p.col) == (6, 12)
    assert p.message == 'title of step "a": expected text, got true'


def test_unknown_tag_is_a_problem() -> None:
    [p] = _problems_of_text(_MINIMAL + "    title: !vault abc\n")
    assert (p.line, p.col) == (6, 12) and "unsupported YAML tag !vault" in p.message


def test_recursive_alias_is_a_problem_not_a_crash() -> None:
    problems = _problems_of_text(_MINIMAL + "    env: &e {X: *e}\n")
    assert any("recursive anchor" in p.message for p in problems)


def test_duplicate_keys_are_found_at_every_depth() -> None:
    text = "version: 1\nname: x\nname: y\nsteps:\n  - id: a\n    run: x\n    env: {A: 1, A: 2}\n"
    problems = _problems_of_text(text)
    dup = [(p.line, p.col) for p in problems if p.message.startswith("duplicate key")]
    assert dup == [(3, 1), (7, 17)]


def test_merge_keys_do_not_count_as_duplicates() -> None:
    text = _MINIMAL + "    env: &base {A: '1', B: '2'}\n  - id: b\n    run: x\n    env: {<<: *base, A: '3'}\n"
    assert load_runbook_text(text).steps[1].env == {"A": "3", "B": "2"}


def test_template_column_inside_a_block_scalar() -> None:
    text = _MINIMAL.replace("run: 'true'", "run: |\n      echo one\n      echo  {{ nope }}")
    [p] = _problems_of_text(text)
    assert (p.line, p.col) == (7, 13) and 'unknown param "nope"' in p.message


def test_template_column_in_a_double_quoted_string_with_escapes() -> None:
    text = _MINIMAL.replace("run: 'true'", 'run: "echo \\"x\\" {{ nope }}"')
    [p] = _problems_of_text(text)
    assert (p.line, p.col) == (5, 22)


def test_template_column_with_non_ascii_text_before_it() -> None:
    [p] = _problems_of_text(_MINIMAL + "    title: Café {{ nope }}\n")
    assert (p.line, p.col) == (6, 17)


# --- actions and their `with:` ------------------------------------------------------------------


def test_with_args_are_checked_against_the_action_model() -> None:
    text = _MINIMAL.replace("run: 'true'", "action: wait-postgres\n    with: {port: lots}")
    [p] = _problems_of_text(text)
    assert (p.line, p.col) == (6, 18)
    assert p.message == 'with.port of step "a": expected a whole number, got "lots"'


def test_a_templated_value_skips_the_type_check_of_its_field() -> None:
    text = (
        "version: 1\nname: x\nparams:\n  port: {type: int, default: 5432}\nsteps:\n"
        "  - id: a\n    action: wait-postgres\n    with: {port: '{{ port }}', interval_s: 0.5}\n"
    )
    assert load_runbook_text(text).steps[0].with_ == {"port": "{{ port }}", "interval_s": 0.5}


def test_with_is_only_for_actions() -> None:
    problems = _problems_of_text(_MINIMAL + "    with: {x: 1}\n")
    assert [p.message for p in problems] == ['step "a": `with` is only for steps with `action`']


def test_step_kind_is_checked_even_when_other_keys_are_wrong() -> None:
    text = _MINIMAL + "    argv: [x]\n    timeout: soon\n"
    messages = sorted(p.message for p in _problems_of_text(text))
    assert len(messages) == 2
    assert messages[0].startswith('step "a" has run and argv')
    assert messages[1].startswith('timeout of step "a": "soon" is not a duration')


def test_a_step_without_a_kind() -> None:
    [p] = _problems_of_text("version: 1\nname: x\nsteps:\n  - id: a\n    title: nothing to do\n")
    assert (p.line, p.col, p.message) == (4, 5, 'step "a" needs one of run, argv, action or manual')


def test_confirm_mapping_with_a_typo() -> None:
    problems = _problems_of_text(_MINIMAL + "    confirm: {typd: x}\n")
    assert sorted((p.line, p.col, p.message) for p in problems) == [
        (6, 14, 'missing required key "typed" in confirm of step "a"'),
        (6, 15, 'unknown key "typd" in confirm of step "a" (did you mean "typed"?)'),
    ]


def test_step_outputs_of_steps_in_other_scenarios() -> None:
    text = (
        "version: 1\nname: x\nscenarios: {s1: {}, s2: {}}\nsteps:\n"
        "  - id: wait\n    scenarios: [s1]\n    action: wait-postgres\n"
        "  - id: use\n    scenarios: [s2]\n    run: echo {{ steps.wait.waited_s }}\n"
    )
    [p] = _problems_of_text(text)
    assert (p.line, p.col) == (10, 15) and "never runs in the same scenario" in p.message


# --- generic models and the schema --------------------------------------------------------------


class _Profile(BaseModel):
    model_config = ConfigDict(extra="forbid")
    params: dict[str, str] = {}
    mode: str | None = None


def test_load_model_is_generic_text_and_path(tmp_path: Path) -> None:
    assert load_model("mode: drill\n", _Profile).mode == "drill"
    path = tmp_path / "p.yaml"
    path.write_text("params: {db_name: sandbox}\nmdoe: drill\n")
    with pytest.raises(InvalidFile) as info:
        load_model(path, _Profile)
    assert str(info.value) == f'{path}:2:1: unknown key "mdoe" at the top level (did you mean "mode"?)'


def test_load_model_does_not_run_the_runbook_checks() -> None:
    text = _MINIMAL.replace("'true'", "echo {{ nope }}")
    assert load_model(text, Runbook).steps[0].run == "echo {{ nope }}"
    assert "nope" in _problems_of_text(text)[0].message


def test_json_schema_for_editors() -> None:
    schema = json_schema()
    assert schema["$schema"].startswith("https://json-schema.org/")
    assert "runbook" in schema["title"].lower()
    json.dumps(schema)
    step = schema["$defs"]["Step"]["properties"]
    assert "with" in step and "with_" not in step
    timeout = json.dumps(step["timeout"])
    assert '"pattern"' in timeout and '"format": "duration"' not in timeout
    assert re.fullmatch(schema["$defs"]["Targets"]["properties"]["rto"]["anyOf"][0]["pattern"], "1h30m")


# --- speed ----------------------------------------------------------------------------------------


def _big_runbook(n: int) -> str:
    lines = [
        "version: 1",
        "name: big",
        "params:",
        "  db_name: {default: assetflow, pattern: '^[a-z_]+$'}",
        "  port: {type: int, default: 5432}",
        "scenarios: {a: {help: x}, b: {help: y}}",
        "steps:",
        "  - id: s0",
        "    action: wait-postgres",
        "    with: {port: '{{ port }}', dbname: '{{ db_name }}'}",
    ]
    for i in range(1, n):
        lines += [
            f"  - id: s{i}",
            f"    title: Step {i} of {{{{ db_name }}}}",
            "    description: |",
            "      Why this step exists.",
            f"    run: pg_restore --dbname={{{{ db_name }}}} --port={{{{ port }}}} {{{{ steps.s0.waited_s }}}} # {i}",
            "    timeout: 5m",
            "    scenarios: [a, b]",
            "    env: {X: '{{ db_name }}'}",
        ]
    return "\n".join(lines) + "\n"


def test_a_100_step_runbook_loads_well_under_100_ms(tmp_path: Path) -> None:
    path = tmp_path / "big.yaml"
    path.write_text(_big_runbook(100))
    load_runbook(path)  # imports, caches
    best = min(_timed(path) for _ in range(3))
    assert best < 0.1, f"{best * 1000:.0f} ms"


def _timed(path: Path) -> float:
    start = time.perf_counter()
    assert len(load_runbook(path).steps) == 100
    return time.perf_counter() - start
