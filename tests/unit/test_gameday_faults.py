"""Game-day machinery: the fault registry and its choice, the game day's record and ledger, and the guard that
keeps faults inside the sandbox the demo built."""

from __future__ import annotations

import json
import os
import stat
from pathlib import Path
from typing import Any

import pytest

from runbook.errors import RunbookError, UsageError
from steps.sandbox import faults as fx
from steps.sandbox.build import DB, Sandbox
from steps.sandbox.faults import Fault, GameContext, choose, listing
from steps.sandbox.faults.guard import FaultRefused, check_sandbox, sandbox_path
from steps.sandbox.faults.record import (
    GameDay,
    all_game_days,
    append_ledger,
    for_run,
    ledger,
    ledger_for_run,
    load,
    new_game_day,
    save,
)
from tests.conftest import run_cli


def _noop(sb: Sandbox, ctx: GameContext) -> dict[str, Any]:
    return {}


def _fault(name: str, scenarios: tuple[str, ...]) -> Fault:
    return Fault(name=name, title=f"{name} title", scenarios=scenarios, story="s", evidence="e", handling="h",
                 phase="after-backup", inject=_noop)


@pytest.fixture
def only_test_faults(monkeypatch: pytest.MonkeyPatch) -> None:
    fx.registry()  # the package's own modules are loaded once; the test's faults replace them for the test
    monkeypatch.setattr(fx, "FAULTS", {})
    for f in (_fault("alpha", ("restore-latest",)), _fault("beta", ("restore-latest", "pitr")),
              _fault("gamma", ("pitr",)), _fault("delta", ("restore-latest",))):
        fx.register(f)


def test_a_fault_is_checked_when_declared() -> None:
    with pytest.raises(ValueError, match="phase"):
        Fault(name="x", title="t", scenarios=("pitr",), story="", evidence="", handling="", phase="later",
              inject=_noop)
    with pytest.raises(ValueError, match="scenarios"):
        _fault("x", ("restore-everything",))
    with pytest.raises(ValueError, match="kebab-case"):
        _fault("random", ("pitr",))


def test_choose_names_and_random_with_a_seed_replays(only_test_faults: None) -> None:
    picked, seed = choose(["alpha"], "restore-latest", 7)
    assert [f.name for f in picked] == ["alpha"] and seed == 7
    days = {tuple(f.name for f in choose(["random"], "restore-latest", s)[0]) for s in range(40)}
    assert days <= {("alpha",), ("beta",), ("delta",)} and len(days) == 3  # only faults of the scenario
    for s in (1, 2, 3, 99):
        assert choose(["random", "random"], "restore-latest", s)[0] == choose(["random", "random"], "restore-latest", s)[0]
    two, _ = choose(["alpha", "random"], "restore-latest", 5)
    assert two[0].name == "alpha" and two[1].name in ("beta", "delta")  # random never repeats a named one
    drawn, seed = choose(["random"], "pitr", None)
    assert isinstance(seed, int) and choose(["random"], "pitr", seed)[0] == drawn


def test_choose_refuses_unknown_and_inapplicable_faults_clearly(only_test_faults: None) -> None:
    with pytest.raises(UsageError) as e:
        choose(["no-such"], "restore-latest", 1)
    assert "no-such" in str(e.value) and "alpha, beta, delta, gamma" in str(e.value)
    with pytest.raises(UsageError) as e:
        choose(["gamma"], "restore-latest", 1)
    assert "does not apply to scenario 'restore-latest'" in str(e.value) and "pitr" in str(e.value)
    with pytest.raises(UsageError, match="no fault left"):
        choose(["random", "random", "random"], "pitr", 1)
    assert [f.name for f in listing("pitr")] == ["beta", "gamma"]


def test_the_record_is_saved_0600_and_read_back(tmp_path: Path) -> None:
    gd = new_game_day(42, "restore-latest", ["alpha"], "alice")
    path = save(tmp_path, gd)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert stat.S_IMODE(path.parent.stat().st_mode) == 0o700
    gd.run_id = "20260101T000000Z-restore-latest-abcd"
    gd.injected.append({"name": "alpha", "at": "now", "facts": {"object": "dump/1.dat"}})
    save(tmp_path, gd)
    back = load(tmp_path, gd.game_id)
    assert back == gd
    assert for_run(tmp_path, gd.run_id) == gd and for_run(tmp_path, "other") is None
    assert all_game_days(tmp_path) == [gd]
    assert not [p for p in path.parent.iterdir() if p.name.endswith(".tmp")]


def test_the_record_follows_no_link_and_refuses_a_bad_id(tmp_path: Path) -> None:
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    sb_dir = tmp_path / "sb"
    sb_dir.mkdir()
    (sb_dir / "gameday").symlink_to(elsewhere)
    gd = new_game_day(1, "pitr", [], "bob")
    with pytest.raises(RunbookError, match="symbolic link"):
        save(sb_dir, gd)
    assert list(elsewhere.iterdir()) == []
    with pytest.raises(RunbookError, match="not a game id"):
        load(sb_dir, "../../etc/passwd")
    (sb_dir / "gameday").unlink()
    (sb_dir / "gameday").mkdir()
    target = elsewhere / "x.json"
    target.write_text(json.dumps(gd.to_json()))
    (sb_dir / "gameday" / f"{gd.game_id}.json").symlink_to(target)
    with pytest.raises(RunbookError, match="no game day"):
        load(sb_dir, gd.game_id)


def test_the_ledger_outlives_the_sandbox_and_keeps_the_newest_line(tmp_path: Path) -> None:
    state = tmp_path / "state"
    gd = new_game_day(3, "restore-latest", ["alpha"], "carol")
    append_ledger(state, gd)
    gd.run_id = "r1"
    gd.baseline = {"rpo_s": 12.5}
    path = append_ledger(state, gd)
    other = new_game_day(4, "pitr", ["gamma"], "dan")
    append_ledger(state, other)
    with path.open("a") as f:
        f.write("{not json\n")
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    days = ledger(state)
    assert [d.game_id for d in days] == [gd.game_id, other.game_id] or [d.game_id for d in days] == [
        other.game_id, gd.game_id]
    assert ledger_for_run(state, "r1") == gd
    assert GameDay.from_json(json.loads(path.read_text().splitlines()[0])).run_id is None


def _sandbox_like(tmp_path: Path) -> Sandbox:
    """A directory laid out as the demo leaves it (sandbox.json naming a cluster, a data directory, a config)."""
    sb = Sandbox(tmp_path / "sandbox")
    (sb.server.datadir).mkdir(parents=True)
    (sb.server.datadir / "PG_VERSION").write_text("15\n")
    sb.info_file.write_text(json.dumps({"cluster": "7300000000000000001", "db": DB}))
    sb.config.write_text(
        "version: 1\n"
        f"cluster: {{host: {sb.server.socket_dir}, port: {sb.server.port}, user: backup_user, databases: [{DB}]}}\n"
        f"local: {{path: {sb.repo}}}\n"
        f"attachments: {{path: {sb.uploads}}}\n"
        f"backup: {{state_dir: {sb.base / 'backup-state'}}}\n")
    return sb


def test_the_guard_accepts_the_sandbox_and_refuses_a_production_looking_config(tmp_path: Path) -> None:
    sb = _sandbox_like(tmp_path)
    assert check_sandbox(sb)["local"]["path"] == str(sb.repo)
    good = sb.config.read_text()
    for bad, said in (
        (good.replace(f"path: {sb.repo}", "path: /var/backups/postgresql"), "local.path /var/backups/postgresql"),
        (good.replace(f"host: {sb.server.socket_dir}", "host: db1.prod.example.com"), "cluster.host db1.prod"),
        (good.replace(f"host: {sb.server.socket_dir}", "host: /var/run/postgresql"), "cluster.host /var/run"),
        (good + "s3: {bucket: assetflow-backups, region: eu-west-1}\n", "s3 endpoint (AWS)"),
        (good + "s3: {bucket: b, endpoint_url: 'https://minio.prod.example.com'}\n", "minio.prod.example.com"),
    ):
        sb.config.write_text(bad)
        with pytest.raises(FaultRefused) as e:
            check_sandbox(sb)
        assert said in str(e.value) and "beyond the sandbox" in str(e.value)
    sb.config.write_text(good + "s3: {bucket: b, endpoint_url: 'http://127.0.0.1:9'}\n")
    check_sandbox(sb)  # a loopback S3 endpoint is the sandbox's own


def test_the_guard_refuses_a_directory_the_demo_did_not_build(tmp_path: Path) -> None:
    sb = _sandbox_like(tmp_path)
    sb.info_file.unlink()
    with pytest.raises(FaultRefused, match="not built by `runbook demo`"):
        check_sandbox(sb)
    link = tmp_path / "link"
    link.symlink_to(sb.base)
    with pytest.raises(FaultRefused, match="not a sandbox directory"):
        check_sandbox(Sandbox(link))


def test_a_fault_target_outside_the_sandbox_or_through_a_link_is_refused(tmp_path: Path) -> None:
    sb = _sandbox_like(tmp_path)
    sb.repo.mkdir()
    assert sandbox_path(sb, sb.repo / "clusters" / "x") == Path(os.path.realpath(sb.repo)) / "clusters" / "x"
    with pytest.raises(FaultRefused, match="outside the sandbox"):
        sandbox_path(sb, tmp_path / "other" / "file")
    with pytest.raises(FaultRefused, match="outside the sandbox"):
        sandbox_path(sb, sb.base / ".." / "escape")
    outside = tmp_path / "production-repo"
    outside.mkdir()
    (sb.repo / "clusters").symlink_to(outside)
    with pytest.raises(FaultRefused, match="symbolic link"):
        sandbox_path(sb, sb.repo / "clusters" / "x" / "manifest.json")


def test_demo_faults_lists_and_bad_names_are_clear_errors() -> None:
    r = run_cli("demo", "--faults")
    assert r.returncode == 0, r.stderr
    if not listing(None):
        assert r.stdout.strip() == "no faults are registered"
    else:
        assert r.stdout.splitlines()[0].split() == ["FAULT", "SCENARIOS", "WHAT", "GOES", "WRONG"]
    for f in listing(None):
        assert any(line.startswith(f.name) and f.title in line for line in r.stdout.splitlines())
    r = run_cli("demo", "--headless", "--yes", "--fault", "no-such-fault", "--dir", "/nonexistent/sandbox")
    assert r.returncode == UsageError.exit_code and "no fault named 'no-such-fault'" in r.stderr and "Traceback" not in r.stderr
    r = run_cli("demo", "--headless", "--yes", "--seed", "3", "--dir", "/nonexistent/sandbox")
    assert r.returncode == UsageError.exit_code and "--seed and --operator are for game days" in r.stderr
    r = run_cli("demo", "--reveal", "20260101T000000Z-restore-latest-abcd", "--dir", "/nonexistent/sandbox",
                "--state-dir", "/nonexistent/state")
    assert r.returncode != 0 and "is not a game day" in r.stderr and "Traceback" not in r.stderr


def test_a_game_day_run_journals_its_id_and_seed_and_nothing_of_its_faults(write_runbook, state_dir: Path) -> None:
    from runbook.journal import read_journal
    from steps.sandbox.faults import run_of_game
    from tests.support.engine import open_run

    path = write_runbook("""
        version: 1
        name: t
        steps:
          - {id: hello, run: "echo hello"}
    """)
    gd = new_game_day(1234, "restore-latest", ["corrupt-newest-backup"], "erin")
    engine = open_run(path, state_dir, mode="rehearsal", game_day={"game_id": gd.game_id, "seed": gd.seed})
    engine.ctx.journal.close()
    events = read_journal(state_dir / "runs" / engine.run_id / "journal.jsonl").events
    assert [e["type"] for e in events[:2]] == ["run-started", "game-day"]
    assert events[1]["game_id"] == gd.game_id and events[1]["seed"] == 1234
    assert "corrupt-newest-backup" not in (state_dir / "runs" / engine.run_id / "journal.jsonl").read_text()
    assert run_of_game(state_dir, gd.game_id) == engine.run_id
    assert run_of_game(state_dir, new_game_day(1, "pitr", [], "x").game_id) is None


def test_a_game_refuses_to_inject_into_a_production_looking_sandbox(tmp_path: Path) -> None:
    from steps.sandbox.faults.game import Game

    called: list[str] = []

    def inject(sb: Sandbox, ctx: GameContext) -> dict[str, Any]:
        called.append(sb.base.name)
        return {}

    fault = Fault(name="spy", title="t", scenarios=("restore-latest",), story="", evidence="", handling="",
                  phase="after-backup", inject=inject)
    sb = _sandbox_like(tmp_path)
    good = sb.config.read_text()
    sb.config.write_text(good.replace(f"path: {sb.repo}", "path: /var/backups/postgresql"))
    game = Game(sb, [fault], 1, "restore-latest", "x", tmp_path / "state", say=lambda _t: None)
    with pytest.raises(FaultRefused, match="beyond the sandbox"):
        game.phase("after-backup")
    assert called == [] and not (sb.base / "gameday").exists()
    sb.config.write_text(good)
    game.phase("before-run")  # not this fault's phase: nothing
    game.phase("after-backup")
    assert called == ["sandbox"] and load(sb.base, game.gd.game_id).injected[0]["name"] == "spy"
