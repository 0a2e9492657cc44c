"""The PITR and environment faults' own guards, without a server: the profile they change must be the sandbox's
own, what they read from a journal is what the tool journaled, and each names its evidence and handling."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
import yaml

from runbook.errors import RunbookError
from steps.sandbox.build import Sandbox, mounts_under
from steps.sandbox.faults import registry
from steps.sandbox.faults.guard import FaultRefused
from steps.sandbox.profile import set_params

MINE = ("wal-gap", "other-major-version", "disk-too-small", "wrong-target-time", "terminal-dies")


def _sandbox(tmp_path: Path, repository: str | None = None) -> tuple[Sandbox, Path]:
    sb = Sandbox(tmp_path / "sandbox")
    sb.base.mkdir()
    profile = tmp_path / "sandbox.profile.yaml"
    profile.write_text("# Written by `runbook demo`\n" + yaml.safe_dump(
        {"version": 1, "params": {"repository": repository or str(sb.config), "target_time": "T", "pgdata": "/x"}}))
    sb.info_file.write_text(json.dumps({"cluster": "7300000000000000001", "profile": str(profile)}))
    return sb, profile


def test_set_params_changes_the_sandbox_profile_and_says_what_it_was(tmp_path: Path) -> None:
    sb, profile = _sandbox(tmp_path)
    assert set_params(sb, target_time="U") == {"target_time": "T"}
    text = profile.read_text()
    assert text.startswith("# Written by `runbook demo`") and yaml.safe_load(text)["params"]["target_time"] == "U"


def test_set_params_refuses_a_profile_that_is_not_the_sandboxs(tmp_path: Path) -> None:
    sb, profile = _sandbox(tmp_path, repository="/etc/runbook/repository.yaml")
    before = profile.read_text()
    with pytest.raises(RunbookError, match="no profile of the sandbox"):
        set_params(sb, pgdata="/var/lib/postgresql/15/main")
    assert profile.read_text() == before
    link = tmp_path / "link.yaml"
    link.symlink_to(profile)
    sb.info_file.write_text(json.dumps({"cluster": "1", "profile": str(link)}))
    with pytest.raises(RunbookError):
        set_params(sb, pgdata="/x")


def test_wrong_target_time_needs_the_sandboxs_disaster(tmp_path: Path) -> None:
    import random

    from steps.sandbox.faults import GameContext

    sb, _ = _sandbox(tmp_path)
    f = registry()["wrong-target-time"]
    with pytest.raises(FaultRefused, match="no PITR disaster"):
        f.inject(sb, GameContext(scenario="pitr", seed=1, rng=random.Random(1)))


def test_disk_too_small_is_refused_without_root(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import random

    from steps.sandbox.faults import GameContext

    sb, _ = _sandbox(tmp_path)
    monkeypatch.setattr(os, "geteuid", lambda: 1000)
    with pytest.raises(FaultRefused, match="needs root"):
        registry()["disk-too-small"].inject(sb, GameContext(scenario="pitr", seed=1, rng=random.Random(1)))
    assert not mounts_under(sb.base)


def test_terminal_dies_needs_the_demos_state_directory_and_its_refusal_names_no_fault(tmp_path: Path) -> None:
    """Without a state directory it cannot find the run (the cockpit opens it later, found by its game id): refused,
    and the operator reads the refusal, so it names no fault."""
    import random

    from steps.sandbox.faults import GameContext

    sb, _ = _sandbox(tmp_path)
    with pytest.raises(FaultRefused, match="cannot follow the run") as refused:
        registry()["terminal-dies"].inject(sb, GameContext(scenario="pitr", seed=1, rng=random.Random(1)))
    assert "terminal" not in refused.value.message and "dies" not in refused.value.message


def test_each_fault_has_its_texts_and_reads_nothing_from_an_empty_journal() -> None:
    faults = registry()
    for name in MINE:
        f = faults[name]
        assert f.story and f.evidence and f.handling and f.title
        assert f.evidence_event is not None and f.handled is not None
        assert f.evidence_event([]) is None and f.handled([]) is False
    assert faults["terminal-dies"].scenarios == ("restore-latest", "pitr")
