"""The template language: references and their offsets, syntax errors, rendering, and shell safety.

Shell safety is proven with a real `bash -c`: a hostile value must arrive as one argument, byte for
byte, and run nothing.
"""

from __future__ import annotations

import subprocess
from collections.abc import Callable
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from runbook.templating import (
    MissingValue,
    Ref,
    TemplateSyntaxError,
    heredoc_template_spans,
    parse_refs,
    quoted_template_spans,
    render,
    render_obj,
    scan_refs,
)

# --- parsing --------------------------------------------------------------------------------------


def test_the_three_kinds_of_reference_with_offsets() -> None:
    text = "a {{ db_name }} b {{steps.fetch-1.backup_dir}} c {{  run.id  }}"
    refs = parse_refs(text)
    assert refs == [
        Ref("param", "db_name", None, 2, 15),
        Ref("step", "backup_dir", "fetch-1", 18, 46),
        Ref("run", "id", None, 49, 63),
    ]
    assert [r.key for r in refs] == ["db_name", "steps.fetch-1.backup_dir", "run.id"]
    assert [text[r.start : r.end] for r in refs] == ["{{ db_name }}", "{{steps.fetch-1.backup_dir}}", "{{  run.id  }}"]


def test_text_without_templates_has_no_refs() -> None:
    assert parse_refs("pg_restore --jobs=4 {x} }} {") == []


@pytest.mark.parametrize(
    ("text", "offset", "fragment"),
    [
        ("echo {{ db_name | upper }}", 5, "no filters or expressions"),
        ("x{{ a + b }}", 1, "no filters or expressions"),
        ("{{ }}", 0, "unsupported template"),
        ("ok {{ a }} then {{ steps.fetch }}", 16, "write {{ steps.STEP_ID.OUTPUT }}"),
        ("ok {{ a }} then {{ run.id.x }}", 16, "write {{ run.NAME }}"),
        ("echo {{ db_name", 5, "unclosed {{"),
        ("echo {{ a }} {{", 13, "unclosed {{"),
    ],
)
def test_syntax_errors_say_where(text: str, offset: int, fragment: str) -> None:
    with pytest.raises(TemplateSyntaxError) as info:
        parse_refs(text)
    assert info.value.offset == offset
    assert fragment in str(info.value)
    assert isinstance(info.value, ValueError)


def test_scan_refs_goes_on_past_errors() -> None:
    refs, errors = scan_refs("{{ a }} {{ b | c }} {{ d }} {{ e")
    assert [r.key for r in refs] == ["a", "d"]
    assert [e.offset for e in errors] == [8, 28]


def test_literal_open_braces() -> None:
    text = "echo {{ '{{' }} x }} {{ a }}"
    assert [r.key for r in parse_refs(text)] == ["a"]
    assert render(text, lambda r: "A", shell=False) == "echo {{ x }} A"
    assert render(text, lambda r: "A B", shell=True) == "echo {{ x }} 'A B'"


# --- rendering ----------------------------------------------------------------------------------


def _lookup(values: dict[str, str]) -> Callable[[Ref], str]:
    return lambda ref: values[ref.key]


def test_render_without_shell_substitutes_verbatim() -> None:
    out = render("{{ a }}:{{ run.id }}", _lookup({"a": "x y", "run.id": "r1"}), shell=False)
    assert out == "x y:r1"


def test_render_with_shell_quotes_each_value() -> None:
    out = render("pg_restore --dbname={{ a }} {{ b }}", _lookup({"a": "my db", "b": "plain"}), shell=True)
    assert out == "pg_restore --dbname='my db' plain"


def test_missing_value_becomes_missing_value_with_its_ref() -> None:
    with pytest.raises(MissingValue) as info:
        render("x {{ steps.fetch.backup_dir }}", _lookup({}), shell=True)
    assert isinstance(info.value, KeyError)
    assert info.value.ref.key == "steps.fetch.backup_dir"
    assert str(info.value) == "no value for {{ steps.fetch.backup_dir }}"


def test_missing_value_from_lookup_propagates_as_is() -> None:
    ref = Ref("param", "other", None, 0, 0)

    def lookup(r: Ref) -> str:
        raise MissingValue(ref)

    with pytest.raises(MissingValue) as info:
        render("{{ a }}", lookup, shell=False)
    assert info.value.ref is ref


def test_render_obj_renders_strings_in_nested_dicts_and_lists() -> None:
    obj = {"dest": "{{ d }}/x", "n": 4, "list": ["{{ d }}", {"deep": "{{ run.id }}"}], "flag": None}
    out = render_obj(obj, _lookup({"d": "/tmp/a b", "run.id": "r9"}))
    assert out == {"dest": "/tmp/a b/x", "n": 4, "list": ["/tmp/a b", {"deep": "r9"}], "flag": None}


# --- no value can inject a command --------------------------------------------------------------

HOSTILE = [
    "'; rm -rf /",
    "$(touch pwned)",
    "`touch pwned`",
    "a\nb\ntouch pwned",
    "it's \"quoted\"",
    "*",
    "/*",
    "",
    "-n",
    "--help",
    "$HOME ${PATH} $((1+1))",
    "a;b|c&d>e<f",
    "\\",
    "~",
    "!!",
    "tab\there",
    "ünïcødé ✓",
    " leading and trailing ",
]


def _bash(script: str, cwd: Path) -> bytes:
    subprocess.run(["bash", "-c", script], cwd=cwd, check=True, timeout=10)
    return (cwd / "out").read_bytes()


@pytest.mark.parametrize("value", HOSTILE, ids=range(len(HOSTILE)))
def test_hostile_value_arrives_as_one_literal_argument(value: str, tmp_path: Path) -> None:
    script = render("printf '%s\\0' {{ v }} --opt={{ v }} > out", _lookup({"v": value}), shell=True)
    assert _bash(script, tmp_path) == (value + "\0--opt=" + value + "\0").encode()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]


@settings(max_examples=40, deadline=None)
@given(st.text(alphabet=st.characters(exclude_categories=["Cs"], exclude_characters="\0"), max_size=30))
def test_any_text_arrives_byte_identical(tmp_path_factory: pytest.TempPathFactory, value: str) -> None:
    cwd = tmp_path_factory.mktemp("bash")
    script = render("printf '%s\\0' {{ v }} > out", _lookup({"v": value}), shell=True)
    assert _bash(script, cwd) == (value + "\0").encode()
    assert [p.name for p in cwd.iterdir()] == ["out"]


# --- templates inside quotes and here-documents -------------------------------------------------


@pytest.mark.parametrize(
    ("run", "quoted"),
    [
        ("pg_restore --dbname={{ a }} {{ b }}", []),
        ("echo '{{ a }}' {{ b }}", ["a"]),
        ('echo "x {{ a }}" {{ b }}', ["a"]),
        ("echo $'{{ a }}'", ["a"]),
        ('echo "$(cat {{ a }})" "{{ b }}"', ["b"]),
        ("echo \\'{{ a }} \\\"{{ b }}", []),
        ('echo "it\\"s {{ a }}"', ["a"]),
        ("echo `ls '{{ a }}'` {{ b }}", ["a"]),
        ("# don't worry\necho {{ a }}", []),
        ("echo x#y '{{ a }}'", ["a"]),
        ("echo '{{ a }}\n{{ b }}' {{ c }}", ["a", "b"]),
        ("psql -c 'select 1' {{ a }}", []),
    ],
)
def test_quoted_template_spans(run: str, quoted: list[str]) -> None:
    assert [r.key for r in quoted_template_spans(run)] == quoted


def test_quoted_span_offsets_point_at_the_template() -> None:
    run = "echo '{{ a }}'"
    [ref] = quoted_template_spans(run)
    assert run[ref.start : ref.end] == "{{ a }}"


def test_heredoc_bodies() -> None:
    run = (
        "cat > f <<EOF\nrestore_command = 'cp {{ a }}/%f %p'\nEOF\necho {{ b }}\n"
        "cat <<-'END' > g\n\t{{ c }}\n\tEND\n"
        "cat <<< {{ d }}\n"
    )
    assert [r.key for r in heredoc_template_spans(run)] == ["a", "c"]
    assert [r.key for r in quoted_template_spans(run)] == []
