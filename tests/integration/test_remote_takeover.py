"""A hand-over across hosts through the repository (issue 18): `runbook take-over -c REPO_CONFIG RUN_ID`.

"Another host" is another process with its own HOME and XDG directories, its own state directory, its own
repository config and its own signing key (each host trusts both keys), sharing only the repository: a local
directory, or moto's S3 over HTTP. The driver is `runbook run --headless` with real commands.

What is shown: a request while a step runs on A is answered at that step's end (the step runs once, on A), A's
journal ends with `handed-over` naming both, B rebuilds the run from the verified mirror and drives it to the
end, mirroring from there (a watcher verifies the whole mirror, A's chunks and B's); a secret parameter is given
again on B, and refused without it before anything is asked; two hosts at once (one wins, the other is told
who); requests planted in the repository (unsigned, another key, addressed to an earlier driver) refused and
named; the repository unreachable (a clear error, nothing changes); A killed (B refuses without --force, then
forces, journaled with how long A had been silent, the interrupted step named).
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import textwrap
import time
from pathlib import Path
from typing import Any

import pytest

from runbook.errors import Exit
from runbook.journal import read_journal
from runbook.repository_watch import repository_source
from steps.mirror.requests import request_key
from steps.repository.signing import load_private_key
from tests.conftest import ROOT
from tests.support.s3server import FaultProxy, S3Endpoint, credentials_env, s3_bucket, s3_server  # noqa: F401
from tests.support.signing import make_keys

RUNBOOK = """
version: 1
name: Hand-over test
targets: {rto: 2h, rpo: 5m}
target: "db-host:5432/app"
repository: "{{ repository }}"
params:
  repository: {type: path}
  token: {secret: true}
  pause: {default: "1"}
steps:
  - id: first
    run: "echo first"
    confirm: none
  - id: middle
    title: A step that takes a while
    run: "sleep {{ pause }}; echo middle done"
    confirm: none
  - id: last
    run: "echo last with {{ token }}"
    confirm: none
"""
TOKEN = "s3cr3t-token-value"


class Host:
    """One host: its HOME, state directory, repository config and key."""

    def __init__(self, base: Path, name: str, repo: str, trusted: list[Path]) -> None:
        self.name = name
        self.dir = base / name
        self.home = self.dir / "home"
        self.home.mkdir(parents=True)
        self.state = self.dir / "state"
        self.key, self.pub = make_keys(base, name)
        self.cfg = self.dir / "repository.yaml"
        self.cfg.write_text("version: 1\n" + repo + f"signing: {{private_key: {self.key}, public_keys: "
                            f"[{', '.join(str(p) for p in trusted)}]}}\n")

    def env(self) -> dict[str, str]:
        return {**os.environ, **credentials_env(), "NO_COLOR": "1", "COLUMNS": "160", "HOME": str(self.home),
                "XDG_CONFIG_HOME": str(self.home / ".config"), "XDG_STATE_HOME": str(self.home / ".state"),
                "XDG_CACHE_HOME": str(self.home / ".cache"), "PYTHONUNBUFFERED": "1"}

    def runbook(self, *args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, "-m", "runbook", *args, "--state-dir", str(self.state)],
                              capture_output=True, text=True, timeout=timeout, env=self.env(), cwd=ROOT)

    def start(self, *args: str) -> subprocess.Popen[str]:
        return subprocess.Popen([sys.executable, "-m", "runbook", *args, "--state-dir", str(self.state)],
                                stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=self.env(),
                                cwd=ROOT, start_new_session=True)

    def journal(self, run_id: str) -> list[dict[str, Any]]:
        return read_journal(self.state / "runs" / run_id / "journal.jsonl").events


def _repo_yaml(where: str, tmp_path: Path, s3: S3Endpoint | None, bucket: str | None) -> str:
    if where == "local":
        return f"local: {{path: {tmp_path / 'repo'}}}\n"
    assert s3 is not None
    return (f"s3: {{bucket: {bucket}, endpoint_url: '{s3.url}', region: us-east-1, max_attempts: 1, "
            "connect_timeout_s: 2, read_timeout_s: 5}\n")


def _take_over_while_a_drives(a: Host, b: Host, tmp_path: Path,
                              pause: float) -> tuple[str, subprocess.CompletedProcess[str], subprocess.Popen[str], str]:
    """A drives a run (its steps `pause` seconds long); once its mirror says the middle step runs, B takes it over
    with the token; A is waited for. Returns the run id, B's take-over, A's process (ended) and its output."""
    drv = _start_driver(a, tmp_path, pause=pause)
    try:
        run_id = _run_id(a)
        _mirrored(a.cfg, run_id, _running("middle"))
        took = b.runbook("take-over", "-c", str(b.cfg), run_id, "--yes", "--headless", "--set", f"token={TOKEN}")
        out = drv.communicate(timeout=60)[0]
    finally:
        _stop(drv)
    return run_id, took, drv, out


def _hosts_b_unreachable(tmp_path: Path) -> list[Host]:
    """Hosts a and b of a local repository, b's config pointing instead at an S3 endpoint where nothing answers
    (a free port, one attempt, timeouts of a second)."""
    a, b = _hosts(tmp_path, f"local: {{path: {tmp_path / 'repo'}}}\n")
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    b.cfg.write_text(b.cfg.read_text().replace(
        f"local: {{path: {tmp_path / 'repo'}}}",
        f"s3: {{bucket: gone, endpoint_url: 'http://127.0.0.1:{port}', region: us-east-1, max_attempts: 1, "
        "connect_timeout_s: 1, read_timeout_s: 1}"))
    return [a, b]


def _hosts(tmp_path: Path, repo: str, names: tuple[str, ...] = ("a", "b")) -> list[Host]:
    pubs = [make_keys(tmp_path, n)[1] for n in names]
    return [Host(tmp_path, n, repo, pubs) for n in names]


def _start_driver(a: Host, tmp_path: Path, pause: float) -> subprocess.Popen[str]:
    rb = tmp_path / "runbook.yaml"
    rb.write_text(textwrap.dedent(RUNBOOK).lstrip())
    return a.start("run", str(rb), "--headless", "--yes", "--mode", "drill", "--set", f"repository={a.cfg}",
                   "--set", f"token={TOKEN}", "--set", f"pause={pause}")


def _run_id(a: Host, timeout: float = 30) -> str:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        runs = list((a.state / "runs").glob("*")) if (a.state / "runs").is_dir() else []
        if runs and (runs[0] / "journal.jsonl").exists():
            return runs[0].name
        time.sleep(0.1)
    raise AssertionError("the driver opened no run")


def _mirrored(cfg: Path, run_id: str, pred: Any, timeout: float = 60) -> list[dict[str, Any]]:
    """Follow the mirror (as a watcher does) until `pred(events)`."""
    src = repository_source(cfg, run_id)
    got: list[dict[str, Any]] = []
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        got += src.poll()
        if pred(got):
            return got
        time.sleep(0.2)
    raise AssertionError(f"not mirrored in time: {[e['type'] for e in got]}; {src.status()}")


def _running(step: str) -> Any:
    return lambda evs: any(e["type"] == "step-started" and e.get("step") == step for e in evs)


def _stop(proc: subprocess.Popen[str]) -> str:
    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGKILL)
    out, _ = proc.communicate(timeout=30)
    return out


@pytest.mark.parametrize("where", ["local", "s3"])
def test_another_host_takes_over_at_the_step_boundary_and_drives_to_the_end(
        where: str, tmp_path: Path, s3_server: S3Endpoint, s3_bucket: str) -> None:  # noqa: F811
    a, b = _hosts(tmp_path, _repo_yaml(where, tmp_path, s3_server, s3_bucket))
    drv = _start_driver(a, tmp_path, pause=12)  # long enough for B's two commands on 2 loaded cores
    try:
        run_id = _run_id(a)
        _mirrored(b.cfg, run_id, _running("middle"))
        # the secret the journal does not hold must be given on B: refused before anything is asked of A
        no_token = b.runbook("take-over", "-c", str(b.cfg), run_id, "--yes", "--headless")
        assert no_token.returncode == Exit.CANNOT_RUN, no_token.stdout + no_token.stderr
        assert 'param "token" is not in the journal' in no_token.stderr and "--set token=" in no_token.stderr
        assert not (b.state / "runs" / run_id).exists()
        if where == "local":  # A holds the recovery lock in the repository
            held = [json.loads(p.read_text()) for p in (tmp_path / "repo" / "locks").glob("*.json")]
            assert held and all(h["run_id"] == run_id and h["pid"] == drv.pid for h in held), held
        started = time.monotonic()
        took = b.runbook("take-over", "-c", str(b.cfg), run_id, "--yes", "--headless", "--set", f"token={TOKEN}")
        took_s = time.monotonic() - started
        out = drv.communicate(timeout=60)[0]
    finally:
        _stop(drv)
    assert took.returncode == 0, took.stdout + took.stderr
    assert "cannot be supervised from here" in took.stderr and "is driven from this host now" in took.stderr
    assert took_s > 2, "B drove before A's running step had ended"
    assert drv.returncode == Exit.LEFT_OPEN, out
    assert "taken over by" in out and "another host" in out and f"runbook watch -c {a.cfg} {run_id}" in out
    ea, eb = a.journal(run_id), b.journal(run_id)
    assert eb[: len(ea)] == ea  # B's journal goes on from A's, byte for byte verified
    ta = [e["type"] for e in ea]
    assert ta[-2:] == ["handed-over", "run-detached"]
    req = next(e for e in ea if e["type"] == "handover-requested")
    assert req["remote"] is True and req["running"] is True and req["step"] == "middle"
    handed = ea[-2]
    assert handed["from"]["pid"] == drv.pid and handed["to"]["pid"] != drv.pid
    assert handed["to"]["request"] == req["by"]["request"] and handed["to"]["key_id"] == load_private_key(b.key).key_id
    # the middle step ran once, on A, to its end, before the hand-over
    assert ta.index("handed-over") > max(i for i, e in enumerate(ea) if e["type"] == "step-finished")
    new = eb[len(ea):]
    hov = next(e for e in new if e["type"] == "handover")
    assert hov["remote"] is True and hov["forced"] is False and hov["from"]["pid"] == drv.pid
    assert [e["step"] for e in eb if e["type"] == "step-started"] == ["first", "middle", "last"]
    assert eb[-1]["type"] == "run-finished" and eb[-1]["status"] == "completed"
    assert TOKEN not in (b.state / "runs" / run_id / "journal.jsonl").read_text()
    if where == "local":  # B held the recovery lock (A's object replaced by B's) and let it go when the run closed
        assert not list((tmp_path / "repo" / "locks").glob("*.json"))
    # the whole mirror verifies from either host (A's chunks by A's key, B's by B's), and says it ended
    watched = _mirrored(a.cfg, run_id, lambda evs: bool(evs) and evs[-1]["type"] == "run-finished")
    assert watched == eb
    # the report (from B's journal alone) shows who drove when, and the hand-over through the repository
    report = b.runbook("report", run_id)
    assert report.returncode == 0, report.stderr
    assert "took over from" in report.stdout and "through the repository" in report.stdout, report.stdout
    # A's own journal stops at the hand-over: resuming it there is refused, named
    again = a.runbook("resume", run_id, "--headless", "--yes")
    assert again.returncode != 0 and "was handed over to" in again.stderr


def test_two_hosts_at_once_one_wins_the_other_is_told_who(tmp_path: Path) -> None:
    a, b, c = _hosts(tmp_path, f"local: {{path: {tmp_path / 'repo'}}}\n", ("a", "b", "c"))
    drv = _start_driver(a, tmp_path, pause=10)  # both hosts ask while A still runs, even on 2 loaded cores
    try:
        run_id = _run_id(a)
        _mirrored(b.cfg, run_id, _running("middle"))
        args = ("take-over", "-c", "CFG", run_id, "--yes", "--headless", "--set", f"token={TOKEN}")
        pb = b.start(*[str(b.cfg) if x == "CFG" else x for x in args])
        pc = c.start(*[str(c.cfg) if x == "CFG" else x for x in args])
        ob, oc = pb.communicate(timeout=120)[0], pc.communicate(timeout=120)[0]
        drv.communicate(timeout=60)
    finally:
        for p in (drv,):
            _stop(p)
    codes = sorted([pb.returncode, pc.returncode])
    assert codes == [0, Exit.LOCKED], (ob, oc)
    winner, loser_out = (b, oc) if pb.returncode == 0 else (c, ob)
    evs = winner.journal(run_id)
    assert evs[-1]["type"] == "run-finished"
    hov = next(e for e in evs if e["type"] == "handed-over")
    who = f"{hov['to']['user']}@{hov['to']['host']} (pid {hov['to']['pid']})"
    assert who in loser_out and ("being handed over to" in loser_out or "first" in loser_out), loser_out
    assert len([e for e in evs if e["type"] == "handover"]) == 1


def test_planted_requests_are_refused_named_and_the_run_goes_on(tmp_path: Path) -> None:
    repo = tmp_path / "repo"
    a, b = _hosts(tmp_path, f"local: {{path: {repo}}}\n")
    stranger, _ = make_keys(tmp_path, "stranger")  # a key neither host trusts
    drv = _start_driver(a, tmp_path, pause=6)
    try:
        run_id = _run_id(a)
        _mirrored(b.cfg, run_id, _running("middle"))
        live = json.loads((repo / "runs" / run_id / "live.json").read_text())
        me = {"user": "mallory", "host": "elsewhere", "pid": 1, "confirmed": "typed"}
        plants = {
            "0" * 16: (dict(me, driver={"host": live["host"], "pid": live["driver"]["pid"]}), None),  # unsigned
            "1" * 16: (dict(me, driver={"host": live["host"], "pid": live["driver"]["pid"]}), stranger),
            "2" * 16: (dict(me, driver={"host": live["host"], "pid": 424242}), b.key),  # an earlier driver's
        }
        for nonce, (body, key) in plants.items():
            k = request_key(run_id, nonce)
            data = json.dumps({"kind": "takeover", "run_id": run_id, "nonce": nonce, **body}).encode()
            (repo / k).parent.mkdir(parents=True, exist_ok=True)
            if key is not None:
                (repo / (k + ".sig")).write_bytes(load_private_key(key).signature(k, data))
            (repo / k).write_bytes(data)
        out = drv.communicate(timeout=60)[0]
    finally:
        _stop(drv)
    assert drv.returncode == 0, out
    evs = a.journal(run_id)
    refused = {e["request"].rsplit("/", 1)[-1]: e["reason"] for e in evs if e["type"] == "takeover-refused"}
    assert "unsigned" in refused[f"takeover-{'0' * 16}.json"]
    assert "does not trust" in refused[f"takeover-{'1' * 16}.json"]
    assert "addressed to the driver" in refused[f"takeover-{'2' * 16}.json"]
    assert not any(e["type"] in ("handover-requested", "handed-over") for e in evs)
    assert evs[-1]["type"] == "run-finished" and evs[-1]["status"] == "completed"
    assert "take-over request in the repository was refused" in out or "refused" in out
    assert not list((repo / "runs" / run_id).rglob("takeover-*"))  # read once, removed


def test_an_unreachable_repository_is_a_clear_error_and_nothing_changes(tmp_path: Path) -> None:
    a, b = _hosts_b_unreachable(tmp_path)
    run_id, took, drv, out = _take_over_while_a_drives(a, b, tmp_path, pause=3)
    assert took.returncode == Exit.CANNOT_RUN, took.stderr
    assert "the repository cannot be read" in took.stderr and "nothing was changed" in took.stderr
    assert "Traceback" not in took.stderr
    assert not (b.state / "runs").exists()
    assert drv.returncode == 0, out
    evs = a.journal(run_id)
    assert not any(e["type"].startswith("handover") or e["type"] == "handed-over" for e in evs)
    assert evs[-1]["status"] == "completed"


def test_the_repository_failing_as_the_request_is_written_changes_nothing(
        tmp_path: Path, s3_server: S3Endpoint, s3_bucket: str) -> None:  # noqa: F811
    """B reads the mirror, then its request cannot be written (S3 answers 500 to it, through a proxy in front
    of moto): a clear error, nothing in the repository, A drives on to the end."""
    with FaultProxy(("127.0.0.1", s3_server.port), fail=lambda m, p: m == "PUT" and "/requests/" in p) as proxy:
        a, b = _hosts(tmp_path, _repo_yaml("s3", tmp_path, s3_server, s3_bucket))
        b.cfg.write_text(b.cfg.read_text().replace(s3_server.url, proxy.url))
        # B asks while A still runs, even on 2 loaded cores
        run_id, took, drv, out = _take_over_while_a_drives(a, b, tmp_path, pause=10)
        assert any(m == "PUT" and "/requests/" in p for m, p, _ in proxy.seen)  # it was tried, and failed
    assert took.returncode == Exit.CANNOT_RUN, took.stderr
    assert "the take-over request could not be written into the repository" in took.stderr
    assert "nothing was changed" in took.stderr and "Traceback" not in took.stderr
    assert not (b.state / "runs").exists()
    assert drv.returncode == 0, out
    evs = a.journal(run_id)
    assert not any(e["type"] in ("handover-requested", "handed-over", "takeover-refused") for e in evs)
    assert evs[-1]["status"] == "completed"
    keys = [o["Key"] for o in s3_server.client().list_objects_v2(Bucket=s3_bucket).get("Contents", [])]
    assert not [k for k in keys if "/requests/" in k or "/drivers/" in k], keys


def test_a_dead_driver_is_taken_over_by_force_naming_how_long_it_was_silent(tmp_path: Path) -> None:
    a, b = _hosts(tmp_path, f"local: {{path: {tmp_path / 'repo'}}}\n")
    drv = _start_driver(a, tmp_path, pause=60)
    try:
        run_id = _run_id(a)
        _mirrored(b.cfg, run_id, _running("middle"))
        time.sleep(1.5)
        os.killpg(drv.pid, signal.SIGKILL)  # the host dies: the driver, its step, its supervisor
        drv.communicate(timeout=30)
        # alive, as far as B can tell: --force is refused
        early = b.runbook("take-over", "-c", str(b.cfg), run_id, "--yes", "--headless", "--force",
                          "--set", f"token={TOKEN}")
        assert early.returncode != 0 and "--force is refused" in early.stderr, early.stderr
        time.sleep(4)
        args = ("take-over", "-c", str(b.cfg), run_id, "--yes", "--headless", "--silent-limit", "3",
                "--set", f"token={TOKEN}", "--set", "pause=0")
        plain = b.runbook(*args)
        assert plain.returncode != 0 and "silent for" in plain.stderr and "--force" in plain.stderr
        forced = b.runbook(*args, "--force", "--rerun-interrupted")
    finally:
        _stop(drv)
    assert forced.returncode == 0, forced.stdout + forced.stderr
    evs = b.journal(run_id)
    hov = next(e for e in evs if e["type"] == "handover")
    assert hov["forced"] is True and hov["silent_s"] >= 3 and hov["from"]["pid"] == drv.pid
    report = b.runbook("report", run_id)
    assert "forced took over from" in report.stdout and "FORCED: the driver silent for" in report.stdout
    gone = next(e for e in evs if e["type"] == "step-interrupted")
    assert gone["step"] == "middle" and "was running on" in gone["detail"]
    assert evs[-1]["type"] == "run-finished" and evs[-1]["status"] == "completed"


def test_a_run_nobody_drives_is_taken_without_asking_and_its_old_host_cannot_resume_it(tmp_path: Path) -> None:
    """A's operator quits at a question (q: the run stays open, live.json says detached): B takes the run at once
    (no request, nobody to ask), and A's `runbook resume` is refused, naming B, instead of making two drivers."""
    a, b = _hosts(tmp_path, f"local: {{path: {tmp_path / 'repo'}}}\n")
    rb = tmp_path / "runbook.yaml"  # the middle step asks before it runs
    rb.write_text(textwrap.dedent(RUNBOOK).lstrip().replace(
        'run: "sleep {{ pause }}; echo middle done"\n    confirm: none\n', 'run: "sleep {{ pause }}; echo middle done"\n'))
    drv = subprocess.Popen([sys.executable, "-m", "runbook", "run", str(rb), "--headless", "--mode", "drill",
                            "--set", f"repository={a.cfg}", "--set", f"token={TOKEN}", "--set", "pause=0",
                            "--state-dir", str(a.state)], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                           stderr=subprocess.STDOUT, text=True, env=a.env(), cwd=ROOT)
    try:
        run_id = _run_id(a)
        _mirrored(b.cfg, run_id, lambda evs: any(e["type"] == "step-awaiting" and e.get("step") == "middle"
                                                 for e in evs))
        out = drv.communicate("q\n", timeout=60)[0]
        assert drv.returncode == Exit.LEFT_OPEN, out
        live = tmp_path / "repo" / "runs" / run_id / "live.json"
        assert json.loads(live.read_text())["state"] == "detached"
        took = b.runbook("take-over", "-c", str(b.cfg), run_id, "--yes", "--headless", "--set", f"token={TOKEN}")
    finally:
        if drv.poll() is None:
            drv.kill()
            drv.communicate()
    assert took.returncode == 0, took.stdout + took.stderr
    assert "asked" not in took.stderr  # nobody drives: nobody is asked
    evs = b.journal(run_id)
    hov = next(e for e in evs if e["type"] == "handover")
    assert hov["driver_was"] == "free" and hov["request"] == ""
    assert evs[-1]["type"] == "run-finished" and evs[-1]["status"] == "completed"
    again = a.runbook("resume", run_id, "--headless", "--yes", "--set", f"token={TOKEN}")
    assert again.returncode != 0, again.stdout
    assert "was taken over from event" in again.stderr and "it is driven there" in again.stderr, again.stderr


def test_the_run_is_handed_back_to_its_first_host(tmp_path: Path) -> None:
    """A -> B -> A: B takes the run while A waits at a question, then A takes it back while B's step runs (B
    hands over when it ends): A's run directory is brought up to the mirror (its own journal is the mirror's
    beginning), and A drives on to the end."""
    a, b = _hosts(tmp_path, f"local: {{path: {tmp_path / 'repo'}}}\n")
    rb = tmp_path / "runbook.yaml"  # the first step asks before it runs
    rb.write_text(textwrap.dedent(RUNBOOK).lstrip().replace('run: "echo first"\n    confirm: none\n',
                                                            'run: "echo first"\n'))
    drv = subprocess.Popen([sys.executable, "-m", "runbook", "run", str(rb), "--headless", "--mode", "drill",
                            "--set", f"repository={a.cfg}", "--set", f"token={TOKEN}", "--set", "pause=6",
                            "--state-dir", str(a.state)], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                           stderr=subprocess.STDOUT, text=True, env=a.env(), cwd=ROOT)
    b_drv = None
    try:
        run_id = _run_id(a)
        _mirrored(b.cfg, run_id, lambda evs: any(e["type"] == "step-awaiting" for e in evs))
        b_drv = b.start("take-over", "-c", str(b.cfg), run_id, "--yes", "--headless", "--set", f"token={TOKEN}")
        drv.wait(timeout=60)  # its stdin stays open: it leaves because it handed over, not at an end of file
        first = drv.communicate()[0]
        assert drv.returncode == Exit.LEFT_OPEN and "another host" in first, first
        _mirrored(a.cfg, run_id, lambda evs: any(e["type"] == "handover" for e in evs) and _running("middle")(evs))
        back = a.runbook("take-over", "-c", str(a.cfg), run_id, "--yes", "--headless", "--set", f"token={TOKEN}")
        b_out = b_drv.communicate(timeout=60)[0]
    finally:
        for p in (drv, b_drv):
            if p is not None and p.poll() is None:
                p.kill()
                p.communicate()
    assert back.returncode == 0, back.stdout + back.stderr
    assert b_drv.returncode == Exit.LEFT_OPEN, b_out
    evs, on_b = a.journal(run_id), b.journal(run_id)
    assert evs[: len(on_b)] == on_b
    kinds = [e["type"] for e in evs]
    assert kinds.count("handed-over") == 2 and kinds.count("handover") == 2
    assert [e["step"] for e in evs if e["type"] == "step-started"] == ["first", "middle", "last"]
    assert [e["step"] for e in on_b if e["type"] == "step-finished"] == ["first", "middle"]  # middle ended on B
    assert evs[-1]["type"] == "run-finished" and evs[-1]["status"] == "completed"
    report = a.runbook("report", run_id)
    assert report.stdout.count("took over from") == 2, report.stdout


SECRETS_RUNBOOK = """
version: 1
name: Hand-over with secrets
target: "db-host:5432/app"
repository: "{{ repository }}"
secrets: {env_file: SECRETS, required: [DB_PASSWORD]}
params:
  repository: {type: path}
  out: {type: path}
steps:
  - id: ask
    run: "echo asked"
  - id: use
    run: 'echo "pw=$DB_PASSWORD api=$API_TOKEN" > {{ out }}'
    confirm: none
"""


def test_the_secrets_file_must_be_given_on_the_new_host_with_every_key(tmp_path: Path) -> None:
    """The journal holds only the secrets' names: B needs its own file with all of them (refused, named, before A
    is asked, without it or with a key missing), and B's steps get B's values."""
    a, b = _hosts(tmp_path, f"local: {{path: {tmp_path / 'repo'}}}\n")
    a_secrets = a.dir / "secrets.env"
    a_secrets.write_text("DB_PASSWORD=password-of-host-a\nAPI_TOKEN=api-token-of-host-a\n")
    os.chmod(a_secrets, 0o600)
    rb = tmp_path / "runbook.yaml"
    rb.write_text(textwrap.dedent(SECRETS_RUNBOOK).lstrip().replace("SECRETS", str(a_secrets)))
    out = tmp_path / "used.txt"
    drv = subprocess.Popen([sys.executable, "-m", "runbook", "run", str(rb), "--headless", "--mode", "drill",
                            "--set", f"repository={a.cfg}", "--set", f"out={out}", "--state-dir", str(a.state)],
                           stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                           env=a.env(), cwd=ROOT)
    try:
        run_id = _run_id(a)
        _mirrored(b.cfg, run_id, lambda evs: any(e["type"] == "step-awaiting" for e in evs))
        a_secrets.unlink()  # A's file is A's: not on host B
        args = ("take-over", "-c", str(b.cfg), run_id, "--yes", "--headless")
        none = b.runbook(*args)
        assert none.returncode == Exit.CANNOT_RUN, none.stderr
        assert "needs its secrets" in none.stderr and "secrets_env_file" in none.stderr
        b_secrets = b.dir / "secrets.env"
        b_secrets.write_text("DB_PASSWORD=password-of-host-b\n")
        os.chmod(b_secrets, 0o600)
        profile = b.dir / "profile.yaml"
        profile.write_text(f"version: 1\nsecrets_env_file: {b_secrets}\n")
        lacking = b.runbook(*args, "--profile", str(profile))
        assert lacking.returncode == Exit.CANNOT_RUN and "lacks API_TOKEN" in lacking.stderr, lacking.stderr
        assert drv.poll() is None and not (b.state / "runs").exists()  # nothing was asked, nothing changed
        evs = a.journal(run_id)
        assert not any(e["type"] in ("handover-requested", "takeover-refused") for e in evs)
        b_secrets.write_text("DB_PASSWORD=password-of-host-b\nAPI_TOKEN=api-token-of-host-b\n")
        took = b.runbook(*args, "--profile", str(profile))
        drv.wait(timeout=30)
    finally:
        if drv.poll() is None:
            drv.kill()
        drv.communicate()
    assert took.returncode == 0, took.stdout + took.stderr
    assert out.read_text().strip() == "pw=password-of-host-b api=api-token-of-host-b"  # B's step ran with B's secrets
    journal_text = (b.state / "runs" / run_id / "journal.jsonl").read_text()
    assert "password-of-host-b" not in journal_text and "api-token-of-host-b" not in journal_text


def test_bad_flags_are_clear_errors(tmp_path: Path) -> None:
    from tests.conftest import run_cli

    for args, said in [
        (("--force",), "--force goes with -c REPO_CONFIG"),
        (("-c", "x.yaml", "--silent-limit", "-3"), "--silent-limit -3: give a number of seconds greater than 0"),
        (("-c", "x.yaml", "--wait", "0"), "--wait 0: give a number of seconds greater than 0"),
        (("-c", str(tmp_path / "missing.yaml")), "missing.yaml"),
    ]:
        r = run_cli("take-over", "RUN", "--headless", "--state-dir", str(tmp_path / "s"), *args)
        assert r.returncode == Exit.CANNOT_RUN and said in r.stderr and "Traceback" not in r.stderr, (args, r.stderr)
