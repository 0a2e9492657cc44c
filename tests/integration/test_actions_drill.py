"""The drill's built-in actions against real parts: notify (a local HTTP server), check-target and
verify-database (a real PostgreSQL 15 cluster), each through the real engine and its child processes."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, HTTPServer
from pathlib import Path
from typing import Any

import pytest

from runbook import events as ev
from runbook.events import StepStatus, Wait
from tests.support.engine import drive, open_run, yes


class _Hook(BaseHTTPRequestHandler):
    received: list[dict[str, Any]] = []
    status = 200

    def do_POST(self) -> None:  # noqa: N802 (http.server's naming)
        body = self.rfile.read(int(self.headers["Content-Length"]))
        type(self).received.append({"path": self.path, "json": json.loads(body),
                                    "type": self.headers["Content-Type"]})
        self.send_response(type(self).status)
        self.end_headers()
        self.wfile.write(b"ok" if type(self).status == 200 else b"invalid token")

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture
def webhook() -> Iterator[tuple[str, type[_Hook]]]:
    handler = type("Hook", (_Hook,), {"received": [], "status": 200})
    server = HTTPServer(("127.0.0.1", 0), handler)
    t = threading.Thread(target=server.serve_forever, daemon=True)
    t.start()
    try:
        yield f"http://127.0.0.1:{server.server_port}/hooks/T0K3N-secret", handler
    finally:
        server.shutdown()
        server.server_close()


NOTIFY = """
    version: 1
    name: t
    params:
      db_name: {default: assetflow_prod}
    steps:
      - id: tell
        action: notify
        with: {text: "outage of {{ db_name }}", extra: {channel: "#incident"}}
        confirm: none
"""


async def test_notify_posts_json_with_the_url_from_the_secrets_file(write_runbook, state_dir: Path,
                                                                    tmp_path: Path, webhook) -> None:
    url, hook = webhook
    env = tmp_path / "db.env"
    env.write_text(f"NOTIFY_WEBHOOK_URL={url}\n")
    env.chmod(0o600)
    path = write_runbook(NOTIFY.replace("    steps:", f"    secrets: {{env_file: {env}}}\n    steps:"))
    engine = open_run(path, state_dir)
    finished, seen = await drive(engine, yes)
    assert finished.status == "completed", finished.detail
    assert hook.received == [{"path": "/hooks/T0K3N-secret", "type": "application/json",
                              "json": {"channel": "#incident", "text": "outage of assetflow_prod"}}]
    assert engine.state.steps["tell"].outputs["sent"] is True
    for p in state_dir.rglob("*"):  # the webhook URL came from the secrets file: masked everywhere
        if p.is_file():
            assert b"T0K3N-secret" not in p.read_bytes(), p


async def test_notify_failure_is_clear_and_the_step_can_be_retried(write_runbook, state_dir: Path, webhook) -> None:
    url, hook = webhook
    hook.status = 403
    path = write_runbook(NOTIFY.replace('with: {text:', f'with: {{url: "{url}", text:'))
    engine = open_run(path, state_dir)
    attempts: list[str] = []

    async def script(e: Any, w: ev.Waiting) -> None:
        if w.wait == Wait.failed:
            attempts.append(w.detail or "")
            hook.status = 200  # the on-call fixed the webhook
            await e.retry(w.step_id)
        else:
            await yes(e, w)

    finished, seen = await drive(engine, script)
    assert finished.status == "completed"
    text = "\n".join(ln.text for e in seen if isinstance(e, ev.OutputLines) for ln in e.lines)
    assert "answered 403: invalid token" in text
    assert len(hook.received) == 2 and engine.state.steps["tell"].attempt == 2


async def test_notify_endpoint_down_fails_then_can_be_skipped(write_runbook, state_dir: Path) -> None:
    path = write_runbook(NOTIFY.replace('with: {text:', 'with: {url: "http://127.0.0.1:9/x", timeout_s: 2, text:'))
    engine = open_run(path, state_dir)

    async def script(e: Any, w: ev.Waiting) -> None:
        assert w.wait == Wait.failed
        await e.skip(w.step_id, "webhook down; posted by hand")

    finished, seen = await drive(engine, script)
    assert finished.status == "completed"
    checks = [e for e in seen if isinstance(e, ev.CheckReported)]
    assert checks[0].status == "failed" and "unreachable" in checks[0].hint
    assert engine.state.steps["tell"].status == StepStatus.skipped


async def test_notify_without_a_webhook_succeeds_with_a_warning_not_a_plain_success(write_runbook, state_dir: Path,
                                                                                   monkeypatch: Any) -> None:
    monkeypatch.delenv("NOTIFY_WEBHOOK_URL", raising=False)
    engine = open_run(write_runbook(NOTIFY), state_dir)
    finished, seen = await drive(engine, yes)
    assert finished.status == "completed"
    (check,) = [e for e in seen if isinstance(e, ev.CheckReported)]
    assert check.name == "message posted" and check.status == "warning" and "nothing was sent" in (check.hint or "")
    assert engine.state.steps["tell"].outputs["sent"] is False


def _db(cluster: Any) -> None:
    cluster.psql("create database app")
    cluster.psql("create table items (id int primary key, name text); insert into items select g, 'x' || g "
                 "from generate_series(1, 100) g", db="app")


def _backup_of_100_items(tmp_path: Path) -> Path:
    """A backup directory whose manifest says public.items held 100 rows (what _db makes)."""
    backup = tmp_path / "backup"
    backup.mkdir()
    (backup / "manifest.json").write_text(json.dumps({"row_counts": {"public.items": 100}}))
    return backup


async def _one_step(write_runbook, state_dir: Path, step: str, action: str, with_: str,  # type: ignore[no-untyped-def]
                    name: str = "runbook.yaml") -> tuple[Any, Any, list[ev.CheckReported]]:
    """A runbook (file `name`) of one step `step` running `action` with `with_` inside its `with:` mapping,
    driven with yes: the engine, the step's end, its checks in order."""
    path = write_runbook(f"""
        version: 1
        name: t
        steps:
          - id: {step}
            action: {action}
            with: {{{with_}}}
            confirm: none
    """, name=name)
    engine = open_run(path, state_dir)
    finished, seen = await drive(engine, yes)
    return engine, finished, [e for e in seen if isinstance(e, ev.CheckReported)]


def _on(cluster: Any) -> str:
    """The `with:` entries that connect to _db's database on `cluster`."""
    return f'db: app, host: "{cluster.socket_dir}", port: {cluster.port}, user: postgres'


async def _verify(write_runbook, state_dir: Path, cluster: Any,  # type: ignore[no-untyped-def]
                  more: str) -> tuple[Any, Any, dict[str, ev.CheckReported]]:
    """A runbook of one verify-database step on _db's database, with `more` in its `with:`, driven with yes:
    the engine, the step's end, its checks by name."""
    engine, finished, checks = await _one_step(write_runbook, state_dir, "verify", "verify-database",
                                               f"{_on(cluster)}, {more}")
    return engine, finished, {c.name: c for c in checks}


async def test_verify_database_reports_each_check(write_runbook, state_dir: Path, tmp_path: Path, pg_cluster) -> None:
    _db(pg_cluster)
    backup = _backup_of_100_items(tmp_path)
    engine, finished, checks = await _verify(write_runbook, state_dir, pg_cluster,
                                             f'backup_dir: "{backup}", tables: [items, missing_table], '
                                             'smoke: ["select count(*) = 100 from items"]')
    assert checks["table items exists"].status == "ok"
    assert checks["table missing_table exists"].status == "failed"
    assert checks["rows in public.items"].status == "ok"
    assert checks["smoke: select count(*) = 100 from items"].status == "ok"
    assert finished.status == "failed"  # one check failed: the step fails
    outputs = engine.state.steps["verify"].outputs
    assert outputs["tables_checked"] == 2 and outputs["row_counts_compared"] == 1  # items (both ways), missing_table


async def test_verify_database_after_pitr_counts_the_tables_it_checked(write_runbook, state_dir: Path,
                                                                       pg_cluster) -> None:
    """The reproduced case: with no manifest (after a PITR) it reported 0 tables checked after checking them."""
    _db(pg_cluster)
    pg_cluster.psql("create table loans (id int)", db="app")
    engine, finished, _ = await _verify(write_runbook, state_dir, pg_cluster, "tables: [items, public.loans]")
    assert finished.status == "completed", finished.detail
    outputs = engine.state.steps["verify"].outputs
    assert outputs["tables_checked"] == 2 and outputs["row_counts_compared"] == 0


async def test_verify_database_catches_a_short_table(write_runbook, state_dir: Path, tmp_path: Path, pg_cluster) -> None:
    _db(pg_cluster)
    pg_cluster.psql("delete from items where id > 95", db="app")
    _, finished, checks = await _verify(write_runbook, state_dir, pg_cluster,
                                        f'backup_dir: "{_backup_of_100_items(tmp_path)}"')
    assert checks["rows in public.items"].status == "failed"
    assert checks["rows in public.items"].hint == "95 rows, the backup holds 100"
    assert finished.status == "failed"


async def test_check_target(write_runbook, state_dir: Path, tmp_path: Path, pg_cluster) -> None:
    _db(pg_cluster)
    engine, finished, seen = await _one_step(write_runbook, state_dir, "provision", "check-target",
                                             f'{_on(pg_cluster)}, dest: "{tmp_path}/restore"')
    # The reproduced case: "database exists already" was a warning and the step succeeded, in the scenario
    # whose next step needs it absent. It fails now, saying what to do.
    assert finished.status == "failed", finished.detail
    checks = {c.name: c for c in seen}
    assert checks["server answers"].status == "ok"
    assert checks["database app absent"].status == "failed"
    hint = checks["database app absent"].hint or ""
    assert "restore refuses to write over it" in hint and "--set restore_db=NEW_NAME" in hint  # the two ways on
    assert "DROP DATABASE app" in hint
    assert checks["free space for the fetch"].status == "ok"
    assert engine.state.steps["provision"].outputs["server_version"] // 10000 == 15

    _, finished, seen = await _one_step(write_runbook, state_dir, "provision", "check-target",
                                        f'{_on(pg_cluster)}, absent: false, dest: "{tmp_path}/restore"',
                                        name="r2.yaml")
    assert finished.status == "completed", finished.detail
    checks = {c.name: c for c in seen}
    assert checks["database app absent"].status == "warning"  # absent: false only reports it


async def test_check_target_server_down(write_runbook, state_dir: Path, tmp_path: Path) -> None:
    _, finished, checks = await _one_step(write_runbook, state_dir, "provision", "check-target",
                                          f'db: app, host: "{tmp_path}", port: 5999, dest: "{tmp_path}"')
    assert finished.status == "failed"
    assert checks[0].name == "server answers" and checks[0].status == "failed"
