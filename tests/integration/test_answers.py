"""`--answers FILE`: the headless front end scripted step by step (the scripted operator of tests/support/operator.py
drives real `runbook run` and `runbook resume` processes with it)."""

from __future__ import annotations

from pathlib import Path

import pytest

from runbook.cli.answers import parse_answers
from runbook.errors import Exit, UsageError
from tests.conftest import run_cli
from tests.support.operator import ScriptedOperator

RUNBOOK = """
    version: 1
    name: scripted
    params:
      db_name: {default: app_db, pattern: '^[a-z_]+$'}
      greeting: {default: hello}
    steps:
      - id: flaky
        run: "n=$(cat COUNTER 2>/dev/null || echo 0); echo $((n+1)) > COUNTER; echo attempt $((n+1)); [ $n -ge 1 ]"
      - id: drop
        run: echo dropping {{ db_name }}
        confirm: {typed: "{{ db_name }}"}
      - id: optional
        run: touch TOUCHED
      - id: greet
        run: echo greeting={{ greeting }}
"""


@pytest.fixture
def scripted(write_runbook, tmp_path: Path) -> Path:
    return write_runbook(RUNBOOK.replace("COUNTER", str(tmp_path / "counter")).replace("TOUCHED", str(tmp_path / "touched")))


def test_answers_retry_a_refused_typing_skip_and_stop_to_set_then_resume(scripted: Path, state_dir: Path,
                                                                          tmp_path: Path) -> None:
    op = ScriptedOperator(state_dir)
    first = op.run(scripted, yes=False, answers={
        "flaky": ["confirm", {"wait": 0.2}, "retry"],
        "drop": [{"type": "app_dbb"}, {"note": "typo, again"}, "confirm"],
        "optional": [{"skip": "not needed in this drill"}],
        "greet": [{"set": {"greeting": "bonjour"}}],
    })
    assert first.code == Exit.LEFT_OPEN, first.output
    assert "answer (--answers): retry" in first.stdout
    assert "resume it with --set greeting=bonjour" in first.stdout
    assert first.sets_asked() == {"greeting": "bonjour"}
    refused = first.of_type("confirm-refused", "drop")
    assert len(refused) == 1 and refused[0]["how"] == "--answers"
    assert [e["attempt"] for e in first.of_type("step-started", "flaky")] == [1, 2]
    assert [e["status"] for e in first.of_type("step-finished", "flaky")] == ["failed", "succeeded"]
    assert first.of_type("step-skipped", "optional")[0]["reason"] == "not needed in this drill"
    assert not (tmp_path / "touched").exists()
    assert any(e.get("text") == "typo, again" for e in first.of_type("note"))
    assert first.status() == "open"  # left open, resumable

    second = op.resume(first.run_id, sets=first.sets_asked(), answers={"greet": ["confirm"]}, yes=False)
    assert second.code == 0, second.output
    assert second.run_id == first.run_id and second.status() == "completed"
    assert "greeting=bonjour" in second.stdout


def test_a_step_without_answers_falls_back_to_yes_and_a_misfit_answer_stops_clearly(scripted: Path,
                                                                                     state_dir: Path) -> None:
    op = ScriptedOperator(state_dir)
    play = op.run(scripted, answers={"flaky": ["confirm", "confirm"]}, extra=["--confirm", "drop=app_db"])
    assert play.code == Exit.LEFT_OPEN, play.output  # flaky failed: `confirm` does not answer a failed step
    assert "confirm is not an answer to step flaky, which waits for failed" in play.output
    again = op.resume(play.run_id, answers={"flaky": ["retry"]}, confirms={"drop": "app_db"})
    assert again.code == 0, again.output  # the steps without answers: --yes (and --confirm for the typed one)


def test_a_bad_answers_file_is_refused_before_any_run_opens(scripted: Path, state_dir: Path, tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    for text, said in (("nosuch: [confirm]\n", "no step 'nosuch' in the runbook"),
                       ("flaky: [sure]\n", "'sure' is not an answer"),
                       ("flaky: [{skip: ''}]\n", "skip needs a reason"),
                       ("flaky: [{wait: soon}]\n", "wait takes a number of seconds"),
                       ("- confirm\n", "a mapping of step id")):
        bad.write_text(text)
        r = run_cli("run", str(scripted), "--headless", "--answers", str(bad), "--state-dir", str(state_dir))
        assert r.returncode == UsageError.exit_code and said in r.stderr, (text, r.stderr)
        assert "Traceback" not in r.stderr
    r = run_cli("run", str(scripted), "--answers", str(bad), "--state-dir", str(state_dir))
    assert r.returncode == UsageError.exit_code and "add --headless" in r.stderr
    assert not (state_dir / "runs").exists() or not list((state_dir / "runs").iterdir())


def test_parse_answers_shapes() -> None:
    got = parse_answers({"a": "confirm", "b": [{"set": {"x": 1}}, {"type": 42}, "skip"]}, ["a", "b"])
    assert [x.kind for x in got["a"]] == ["confirm"]
    assert got["b"][0].sets == {"x": "1"} and got["b"][1].text == "42"
    assert got["b"][2].text == "skipped by the answers file"
