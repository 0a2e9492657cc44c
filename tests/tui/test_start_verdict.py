"""The start screen shows `runbook status`'s verdict in one line when the runbook names a repository config
that exists; without one the line is not there. The status runs in a child process: the form is usable at once."""

from __future__ import annotations

import textwrap
from pathlib import Path

import pytest
from textual.widgets import Input, Static

from runbook.clock import Clock
from runbook.loader import load_runbook
from runbook.session import RunOptions
from runbook.tui.app import RunbookApp
from runbook.tui.start_screens import ParamsScreen
from tests.tui.conftest import until

RUNBOOK = """
    version: 1
    name: verdict
    targets: {rto: 2h, rpo: 5m}
    repository: "{{ repository }}"
    params:
      repository: {type: path, default: REPO}
    steps:
      - {id: a, run: "true"}
"""


def _app(tmp_path: Path, state_dir: Path, repo_config: Path) -> RunbookApp:
    path = tmp_path / "rb.yaml"
    path.write_text(textwrap.dedent(RUNBOOK).lstrip().replace("REPO", str(repo_config)))
    return RunbookApp(clock=Clock(), state_dir=state_dir, runbook=load_runbook(path),
                      opts=RunOptions(runbook_path=path, mode="rehearsal"), given={})


def _text(app: RunbookApp) -> str:
    return str(app.screen.query_one("#verdict", Static).render())


async def test_the_verdict_line_comes_from_runbook_status(tmp_path: Path, state_dir: Path) -> None:
    cfg = tmp_path / "repository.yaml"
    (tmp_path / "repo").mkdir()
    cfg.write_text(f"version: 1\ncluster: {{host: {tmp_path / 'nowhere'}, port: 5432}}\n"
                   f"local: {{path: {tmp_path / 'repo'}}}\n")
    app = _app(tmp_path, state_dir, cfg)
    async with app.run_test(size=(100, 30)) as pilot:
        await until(pilot, lambda: isinstance(app.screen, ParamsScreen))
        assert "asking runbook status" in _text(app)
        assert app.screen.query_one("#p-repository", Input).value == str(cfg)  # the form is there meanwhile
        await until(pilot, lambda: "would we make it now? RED" in _text(app), timeout=30)
        assert "RPO red" in _text(app)


async def test_no_repository_no_verdict_line(tmp_path: Path, state_dir: Path) -> None:
    app = _app(tmp_path, state_dir, tmp_path / "missing.yaml")
    async with app.run_test(size=(100, 30)) as pilot:
        await until(pilot, lambda: isinstance(app.screen, ParamsScreen))
        assert not app.screen.query("#verdict")


async def test_a_status_that_does_not_answer_in_time_says_so(tmp_path: Path, state_dir: Path,
                                                             monkeypatch: pytest.MonkeyPatch) -> None:
    """The child is given less time than an interpreter takes to start: the line says it gave no answer (and how
    to ask by hand), with the colour of "could not run"."""
    from runbook.tui import app as app_module

    monkeypatch.setattr(app_module, "STATUS_TIMEOUT_S", 0.001)
    cfg = tmp_path / "repository.yaml"
    cfg.write_text("version: 1\n")
    app = _app(tmp_path, state_dir, cfg)
    async with app.run_test(size=(100, 30)) as pilot:
        await until(pilot, lambda: isinstance(app.screen, ParamsScreen))
        await until(pilot, lambda: "no answer within" in _text(app), timeout=30)
        assert f"would we make it now? no answer within 0.001 s (runbook status -c {cfg})" in _text(app)
