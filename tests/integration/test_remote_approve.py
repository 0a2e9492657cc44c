"""Approving a step from another host through the repository (issue 18, the two-person rule):
`runbook approve -c REPO_CONFIG RUN_ID STEP`.

Each "host" is its own process with its own HOME and XDG directories, state directory, repository config and
signing key (both hosts trust both keys), sharing only the repository (a local directory, or moto's S3 over HTTP).
The driver is `runbook run --headless` in a drill under `--approver-policy other`, its `drop` step (danger) waiting.
"Another operator" across hosts is another user name or another host's key: host B approves as `carol` (its
USER), while a session of the driver's own user name on the same host is refused, on B's side before anything is
written and by the driver when the request is written anyway.

Faults: an unsigned request and one signed by a key nobody trusts (refused, named); a genuine request naming the
hash of a command other than the one that waits (refused: changed since); the driver's own user and host
(refused); an earlier wait's (refused); the repository unreachable from B, or failing as the approval is written
(a clear error, nothing written, the driver keeps waiting). The secret in the command is masked wherever B shows
it, and the report names the approver's host. The watch cockpit under `watch -c` approves with its a key.
"""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
import time
from pathlib import Path
from typing import Any

import pytest

from runbook.errors import Exit
from runbook.lockfile import current_user, hostname
from runbook.redact import MASK
from runbook.requests import command_hash
from steps.mirror.requests import request_key
from steps.repository.signing import load_private_key
from tests.conftest import ROOT
from tests.integration.test_remote_takeover import (
    Host,
    _hosts,
    _hosts_b_unreachable,
    _mirrored,
    _repo_yaml,
    _run_id,
    _stop,
)
from tests.support.s3server import S3Endpoint, s3_bucket, s3_server  # noqa: F401
from tests.support.signing import make_keys

RUNBOOK = """
version: 1
name: Approval test
targets: {rto: 2h, rpo: 5m}
target: "db-host:5432/app"
repository: "{{ repository }}"
params:
  repository: {type: path}
  token: {secret: true}
  db: {default: old_db}
steps:
  - id: first
    run: "echo first"
    confirm: none
  - id: drop
    title: Drop the old database
    run: "echo dropping {{ db }} with {{ token }}"
    danger: true
"""
TOKEN = "s3cr3t-token-value"
SHOWN = f"echo dropping old_db with {MASK}"


def _start_driver(a: Host, tmp_path: Path) -> subprocess.Popen[str]:
    rb = tmp_path / "runbook.yaml"
    rb.write_text(textwrap.dedent(RUNBOOK).lstrip())
    return a.start("run", str(rb), "--headless", "--yes", "--mode", "drill", "--approver-policy", "other",
                   "--confirm", "drop=drop", "--set", f"repository={a.cfg}", "--set", f"token={TOKEN}")


def _as(host: Host, user: str, *args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    """`runbook ARGS` on `host`, as the person whose user name is `user`."""
    env = {**host.env(), "USER": user, "LOGNAME": user}
    return subprocess.run([sys.executable, "-m", "runbook", *args, "--state-dir", str(host.state)],
                          capture_output=True, text=True, timeout=timeout, env=env, cwd=ROOT)


def _awaiting(evs: list[dict[str, Any]]) -> bool:
    return any(e["type"] == "approval-awaited" and e.get("step") == "drop" for e in evs)


def _wait_journal(a: Host, run_id: str, pred: Any, timeout: float = 30) -> list[dict[str, Any]]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        evs = a.journal(run_id)
        if pred(evs):
            return evs
        time.sleep(0.2)
    raise AssertionError(f"not journaled in time: {[e['type'] for e in a.journal(run_id)]}")


@pytest.mark.parametrize("where", ["local", "s3"])
def test_another_host_approves_after_seeing_the_command_and_the_report_names_its_host(
        where: str, tmp_path: Path, s3_server: S3Endpoint, s3_bucket: str) -> None:  # noqa: F811
    a, b = _hosts(tmp_path, _repo_yaml(where, tmp_path, s3_server, s3_bucket))
    drv = _start_driver(a, tmp_path)
    try:
        run_id = _run_id(a)
        _mirrored(b.cfg, run_id, _awaiting)
        # the driver's own user name on the driver's host: refused on B before anything is written
        own = _as(b, current_user(), "approve", "-c", str(b.cfg), run_id, "drop", "--yes")
        assert own.returncode == Exit.CANNOT_RUN, own.stdout + own.stderr
        assert "the driver cannot approve their own step" in own.stderr and "Traceback" not in own.stderr
        # the wrong step: told which one waits
        wrong = _as(b, "carol", "approve", "-c", str(b.cfg), run_id, "first", "--yes")
        assert wrong.returncode == Exit.CANNOT_RUN and "step drop does" in wrong.stderr, wrong.stderr
        # carol on host B, with B's key
        ok = _as(b, "carol", "approve", "-c", str(b.cfg), run_id, "drop", "--yes")
        assert ok.returncode == 0, ok.stdout + ok.stderr
        assert SHOWN in ok.stdout and "Drop the old database" in ok.stdout and "accepted" in ok.stdout, ok.stdout
        assert TOKEN not in ok.stdout + ok.stderr
        out = drv.communicate(timeout=60)[0]
    finally:
        _stop(drv)
    assert drv.returncode == 0, out
    assert f"or from another host runbook approve -c REPO_CONFIG {run_id} drop" in " ".join(out.split()), out
    evs = a.journal(run_id)
    drop = [e for e in evs if e.get("step") == "drop" and e["type"] in ("approval-awaited", "approved",
                                                                         "step-confirmed", "step-started")]
    assert [e["type"] for e in drop] == ["approval-awaited", "approved", "step-confirmed", "step-started"]
    approved = drop[1]
    assert approved["approver"] == "carol" and approved["approver_host"] == hostname() and approved["remote"]
    assert approved["key_id"] == load_private_key(b.key).key_id
    assert approved["command_hash"] == drop[0]["command_hash"] == command_hash(run_id, "drop", SHOWN, None)
    assert not [e for e in evs if e["type"] == "approval-refused"]  # B refused its own user before writing
    report = a.runbook("report", run_id)
    assert report.returncode == 0, report.stderr
    assert f"carol@{hostname()} (another host, key {approved['key_id']}, through the repository)" in report.stdout
    if where == "local":
        assert not list((tmp_path / "repo" / "runs" / run_id).rglob("approve-*"))  # read once, removed


def test_forged_stale_and_own_approvals_are_refused_named_and_the_driver_keeps_waiting(tmp_path: Path) -> None:
    repo = tmp_path / "repo"
    a, b = _hosts(tmp_path, f"local: {{path: {repo}}}\n")
    stranger, _ = make_keys(tmp_path, "stranger")  # a key neither host trusts
    drv = _start_driver(a, tmp_path)
    try:
        run_id = _run_id(a)
        evs = _mirrored(b.cfg, run_id, _awaiting)
        wait = next(e for e in evs if e["type"] == "approval-awaited")["wait"]
        good = command_hash(run_id, "drop", SHOWN, None)
        carol = {"user": "carol", "host": "host-b", "step": "drop", "wait": wait, "ts": "2026-01-01T00:00:00+00:00"}
        plants = {
            "0" * 16: ({**carol, "command_hash": good}, None),  # unsigned
            "1" * 16: ({**carol, "command_hash": good}, stranger),  # forged: a key nobody trusts
            "2" * 16: ({**carol, "command_hash": command_hash(run_id, "drop", "echo dropping new_db", None)},
                       b.key),  # the command B saw is not the one that waits
            "3" * 16: ({**carol, "user": current_user(), "host": hostname(), "command_hash": good},
                       b.key),  # the driver's own user and host (with another host's key)
            "4" * 16: ({**carol, "wait": "f" * 16, "command_hash": good}, b.key),  # an earlier wait's
        }
        for nonce, (body, key) in plants.items():
            k = request_key(run_id, nonce, "approve")
            data = json.dumps({"kind": "approve", "run_id": run_id, "nonce": nonce, **body}).encode()
            (repo / k).parent.mkdir(parents=True, exist_ok=True)
            if key is not None:
                (repo / (k + ".sig")).write_bytes(load_private_key(key).signature(k, data))
            (repo / k).write_bytes(data)
        evs = _wait_journal(a, run_id, lambda e: sum(x["type"] == "approval-refused" for x in e) == len(plants))
        time.sleep(1)
        assert drv.poll() is None  # still waiting for an approval
        # B shows the refusals' effect: the step still waits
        again = _as(b, "carol", "approve", "-c", str(b.cfg), run_id, "drop", "--yes")
        assert again.returncode == 0, again.stdout + again.stderr
        out = drv.communicate(timeout=60)[0]
    finally:
        _stop(drv)
    assert drv.returncode == 0, out
    evs = a.journal(run_id)
    refused = {e["request"].rsplit("/", 1)[-1]: e for e in evs if e["type"] == "approval-refused"}
    assert "unsigned" in refused[f"approve-{'0' * 16}.json"]["reason"]
    assert "does not trust" in refused[f"approve-{'1' * 16}.json"]["reason"]
    stale = refused[f"approve-{'2' * 16}.json"]
    assert "changed since the approver saw it" in stale["reason"] and stale["approver"] == "carol"
    assert "driver's own user" in refused[f"approve-{'3' * 16}.json"]["reason"]
    assert "earlier wait" in refused[f"approve-{'4' * 16}.json"]["reason"]
    assert all(e["step"] == "drop" for e in refused.values())
    approved = [e for e in evs if e["type"] == "approved"]
    assert len(approved) == 1 and approved[0]["approver"] == "carol"
    assert max(i for i, e in enumerate(evs) if e["type"] == "approval-refused") < evs.index(approved[0])
    report = a.runbook("report", run_id)
    assert f"from carol@host-b (approve-{'2' * 16}.json): the step's command has changed" in report.stdout


def test_an_unreachable_repository_is_a_clear_error_on_b_and_the_driver_keeps_waiting(tmp_path: Path) -> None:
    a, b = _hosts_b_unreachable(tmp_path)
    drv = _start_driver(a, tmp_path)
    try:
        run_id = _run_id(a)
        _mirrored(a.cfg, run_id, _awaiting)
        r = _as(b, "carol", "approve", "-c", str(b.cfg), run_id, "drop", "--yes")
        assert r.returncode == Exit.CANNOT_RUN, r.stdout + r.stderr
        assert "the repository cannot be read" in r.stderr and "the driver keeps waiting" in r.stderr
        assert "Traceback" not in r.stderr
        time.sleep(1)
        assert drv.poll() is None
    finally:
        out = _stop(drv)
    evs = a.journal(run_id)
    assert not [e for e in evs if e["type"] in ("approved", "approval-refused") or
                (e["type"] == "step-started" and e.get("step") == "drop")], out


async def test_the_watch_cockpit_through_the_repository_approves_with_the_a_key(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """`watch -c` on host B: the a key shows the command from the verified mirror (the secret masked), refuses
    the driver's own user on its host, approves nothing for a wrong id, and sends a signed approval for the
    right one; the driver's verdict comes back through the mirror and is said."""
    from textual.widgets import Static

    from runbook.repository_watch import open_repository
    from runbook.tui.modals import TextModal
    from runbook.tui.watch_screen import WatchApp, WatchScreen
    from tests.tui.conftest import until

    repo = tmp_path / "repo"
    a, b = _hosts(tmp_path, f"local: {{path: {repo}}}\n")
    drv = _start_driver(a, tmp_path)
    notes: list[str] = []
    try:
        run_id = _run_id(a)
        _mirrored(b.cfg, run_id, _awaiting)
        app = WatchApp(open_repository(b.cfg, run_id), poll_s=0.2)
        async with app.run_test(size=(120, 30)) as pilot:
            await until(pilot, lambda: isinstance(app.screen, WatchScreen) and app.screen.waiting is not None
                        and app.screen.waiting.step_id == "drop", timeout=30)
            screen = app.screen
            assert isinstance(screen, WatchScreen)
            original = screen.notify
            monkeypatch.setattr(screen, "notify", lambda text, **kw: (notes.append(str(text)), original(text, **kw)))
            assert f"runbook approve -c {b.cfg} {run_id} drop" in str(screen.query_one("#hint", Static).content)
            await pilot.press("a")  # as the driver's own user, on the driver's host: refused, no dialog
            await pilot.pause(0.3)
            assert isinstance(app.screen, WatchScreen) and "the driver cannot approve their own step" in notes[-1]
            monkeypatch.setenv("LOGNAME", "carol")
            monkeypatch.setenv("USER", "carol")
            await pilot.press("a")
            await until(pilot, lambda: isinstance(app.screen, TextModal))
            modal = app.screen
            assert isinstance(modal, TextModal) and modal.command == f"$ {SHOWN}"
            for ch in "first":  # the wrong step id
                await pilot.press(ch)
            await pilot.press("enter")
            await until(pilot, lambda: isinstance(app.screen, WatchScreen))
            assert "nothing was approved" in notes[-1]
            assert not list((repo / "runs" / run_id).rglob("approve-*"))
            await pilot.press("a")
            await until(pilot, lambda: isinstance(app.screen, TextModal))
            for ch in "drop":
                await pilot.press(ch)
            await pilot.press("enter")
            await until(pilot, lambda: any("accepted your approval" in n for n in notes), timeout=30)
            assert any("is in the repository (signed with key" in n for n in notes)
            await pilot.press("q")
        out = drv.communicate(timeout=60)[0]
    finally:
        _stop(drv)
    assert drv.returncode == 0, out
    approved = [e for e in a.journal(run_id) if e["type"] == "approved"]
    assert len(approved) == 1 and approved[0]["approver"] == "carol" and approved[0]["remote"] is True
    assert approved[0]["key_id"] == load_private_key(b.key).key_id
    assert TOKEN not in "\n".join(notes)


def test_the_repository_failing_as_the_approval_is_written_approves_nothing(
        tmp_path: Path, s3_server: S3Endpoint, s3_bucket: str) -> None:  # noqa: F811
    """B reads the mirror, then its approval cannot be written (S3 answers 500 to it, through a proxy in front of
    moto): a clear error on B, nothing in the repository, the driver keeps waiting."""
    from tests.support.s3server import FaultProxy

    with FaultProxy(("127.0.0.1", s3_server.port), fail=lambda m, p: m == "PUT" and "/requests/" in p) as proxy:
        a, b = _hosts(tmp_path, _repo_yaml("s3", tmp_path, s3_server, s3_bucket))
        b.cfg.write_text(b.cfg.read_text().replace(s3_server.url, proxy.url))
        drv = _start_driver(a, tmp_path)
        try:
            run_id = _run_id(a)
            _mirrored(a.cfg, run_id, _awaiting)
            r = _as(b, "carol", "approve", "-c", str(b.cfg), run_id, "drop", "--yes")
            time.sleep(1)
            assert drv.poll() is None
        finally:
            out = _stop(drv)
        assert any(m == "PUT" and "/requests/" in p for m, p, _ in proxy.seen)  # it was tried, and failed
    assert r.returncode == Exit.CANNOT_RUN, r.stdout + r.stderr
    assert "the approval could not be written into the repository" in r.stderr
    assert "keeps waiting" in r.stderr and "Traceback" not in r.stderr
    evs = a.journal(run_id)
    assert not [e for e in evs if e["type"] in ("approved", "approval-refused")], out
    keys = [o["Key"] for o in s3_server.client().list_objects_v2(Bucket=s3_bucket).get("Contents", [])]
    assert not [k for k in keys if "/requests/" in k], keys
