"""The start screen of a runbook with `fleet:`: the clusters of the fleet (one repository config each) with their
verdicts from `runbook status --all`, and the run started for the one chosen uses that cluster's config."""

from __future__ import annotations

import textwrap
from pathlib import Path

from textual.widgets import Input, OptionList

from runbook.clock import Clock
from runbook.journal import read_journal
from runbook.loader import load_runbook
from runbook.session import RunOptions
from runbook.tui.app import RunbookApp
from runbook.tui.run_screen import RunScreen
from runbook.tui.start_screens import FleetScreen, ParamsScreen
from tests.tui.conftest import until

RUNBOOK = """
    version: 1
    name: fleet drill
    repository: "{{ repository }}"
    fleet: fleet
    params:
      repository: {type: path, default: /etc/runbook/repository.yaml, help: The cluster's repository config}
    steps:
      - {id: a, run: "echo {{ repository }}"}
"""


def _fleet(tmp_path: Path) -> list[Path]:
    (tmp_path / "fleet").mkdir()
    configs = []
    for name in ("alpha", "beta", "gamma"):
        repo = tmp_path / f"repo-{name}"
        repo.mkdir()
        cfg = tmp_path / "fleet" / f"{name}.yaml"
        cfg.write_text(f"version: 1\ncluster: {{host: {tmp_path / 'nowhere'}, port: 5432}}\nlocal: {{path: {repo}}}\n")
        configs.append(cfg)
    return configs


def _app(tmp_path: Path, state_dir: Path, given: dict[str, str] | None = None) -> RunbookApp:
    path = tmp_path / "rb.yaml"
    path.write_text(textwrap.dedent(RUNBOOK).lstrip())
    return RunbookApp(clock=Clock(), state_dir=state_dir, runbook=load_runbook(path),
                      opts=RunOptions(runbook_path=path, mode="rehearsal"), given=given or {})


def _prompts(app: RunbookApp) -> list[str]:
    options = app.screen.query_one(OptionList)
    return [str(options.get_option_at_index(i).prompt) for i in range(options.option_count)]


async def test_the_run_uses_the_chosen_clusters_config(tmp_path: Path, state_dir: Path) -> None:
    configs = _fleet(tmp_path)
    app = _app(tmp_path, state_dir)
    async with app.run_test(size=(100, 30)) as pilot:
        await until(pilot, lambda: isinstance(app.screen, FleetScreen))
        assert [p.split()[0] for p in _prompts(app)] == ["alpha", "beta", "gamma"]
        # each line gets its verdict from runbook status --all (no backup anywhere: red)
        await until(pilot, lambda: all(" RED " in p for p in _prompts(app)), timeout=40)
        await pilot.press("down", "enter")  # beta
        await until(pilot, lambda: isinstance(app.screen, ParamsScreen))
        assert app.screen.query_one("#p-repository", Input).value == str(configs[1])
        await pilot.press("ctrl+s")
        await until(pilot, lambda: isinstance(app.screen, RunScreen))
        assert app.engine is not None
        started = read_journal(app.engine.ctx.rdir / "journal.jsonl").events[0]
        assert started["type"] == "run-started" and started["repository"] == str(configs[1])
        assert started["params"]["repository"] == str(configs[1])
        await pilot.press("q")


async def test_q_on_the_fleet_screen_leaves_without_a_run(tmp_path: Path, state_dir: Path) -> None:
    _fleet(tmp_path)
    app = _app(tmp_path, state_dir)
    async with app.run_test(size=(100, 30)) as pilot:
        await until(pilot, lambda: isinstance(app.screen, FleetScreen))
        await pilot.press("q")
        await until(pilot, lambda: not app.is_running)
    assert app.engine is None and not any(state_dir.iterdir())


async def test_a_repository_given_skips_the_chooser(tmp_path: Path, state_dir: Path) -> None:
    configs = _fleet(tmp_path)
    app = _app(tmp_path, state_dir, given={"repository": str(configs[2])})
    async with app.run_test(size=(100, 30)) as pilot:
        await until(pilot, lambda: isinstance(app.screen, ParamsScreen))
        assert app.screen.query_one("#p-repository", Input).value == str(configs[2])
