"""The faults of scenario 1 (`restore-latest`, the newest daily logical backup into a new database).

- `corrupt-newest-backup`: a second daily backup is taken (the application wrote in between), then one object of
  it is damaged in the repository, after its checks passed (bit rot, a bad copy). fetch-latest-backup names the
  object whose sha256 does not match and offers the previous verified backup (`backup_id`), with how much more
  data it loses.
- `target-database-exists`: on the replacement server, the database to restore into exists already, with some
  tables in it (a restore started and given up). check-target fails naming it and the two ways on (`restore_db`,
  or drop it deliberately); restore-logical refuses to write over it.
- `s3-unreachable`: the repository config gains an off-site S3 copy whose endpoint does not answer (a closed port
  on 127.0.0.1). The recovery reads the local copy and says the S3 copy could not be read.
"""

from __future__ import annotations

import json
import os
import socket
import time
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from steps.sandbox.faults import Fault, GameContext, register
from steps.sandbox.faults.guard import FaultRefused, check_sandbox, sandbox_path

if TYPE_CHECKING:
    from steps.sandbox.build import Sandbox


def _ts(e: dict[str, Any]) -> float | None:
    try:
        return datetime.fromisoformat(str(e["ts"])).timestamp()
    except (KeyError, ValueError):
        return None


def _first(events: list[dict[str, Any]], match: Any) -> float | None:
    for e in events:
        if match(e):
            return _ts(e)
    return None


def _succeeded_after(events: list[dict[str, Any]], step: str, after: float | None) -> bool:
    """Step `step` finished succeeded after the moment `after` (epoch seconds)."""
    if after is None:
        return False
    return any(e.get("type") == "step-finished" and e.get("step") == step and e.get("status") == "succeeded"
               and (_ts(e) or 0) >= after for e in events)


# ---- corrupt-newest-backup ------------------------------------------------------------------------------------


def _next_second() -> None:
    """Backup ids have a one-second resolution: the next backup starts in a later second than the last one."""
    time.sleep(1.05 - (time.time() % 1.0))


def _inject_corrupt_newest(sb: Sandbox, ctx: GameContext) -> dict[str, Any]:
    before = sb.logical_backups()
    if not before:
        raise FaultRefused("corrupt-newest-backup needs the daily backup taken first")
    rows = sb.keep_writing(10 + ctx.rng.randrange(20), say=ctx.say)
    _next_second()
    sb.backup(say=ctx.say)  # the next daily backup: the newest, then damaged
    newest = sb.logical_backups()[-1]
    if newest == before[-1]:
        raise FaultRefused("the second backup was not published (same backup id)")
    manifest = json.loads(sandbox_path(sb, newest / "manifest.json").read_text())
    data = sorted(o["path"] for o in manifest["objects"] if str(o["path"]).startswith("dump/")
                  and str(o["path"]).endswith((".dat", ".dat.gz", ".dat.zst", ".gz", ".zst")) and int(o["size"]) > 0)
    if not data:
        data = sorted(o["path"] for o in manifest["objects"] if int(o["size"]) > 0)
    rel = ctx.rng.choice(data)
    stored = newest / rel
    if not stored.exists() and (newest / (rel + ".age")).exists():
        stored = newest / (rel + ".age")
    path = sandbox_path(sb, stored)
    size = path.stat().st_size
    offset = ctx.rng.randrange(size)
    fd = os.open(path, os.O_RDWR | os.O_NOFOLLOW)
    try:
        old = os.pread(fd, 1, offset)
        os.pwrite(fd, bytes([old[0] ^ 0xFF]), offset)
        os.fsync(fd)
    finally:
        os.close(fd)
    return {"backup_id": newest.name, "previous_backup_id": before[-1].name, "object": rel,
            "stored": str(stored.relative_to(sb.repo)), "offset": offset, "size": size,
            "rows_written_between": rows}


def _corrupt_evidence(events: list[dict[str, Any]]) -> float | None:
    return _first(events, lambda e: e.get("type") == "step-check" and e.get("step") == "fetch"
                  and e.get("status") == "failed" and str(e.get("name", "")).startswith("sha256 of"))


def _corrupt_handled(events: list[dict[str, Any]]) -> bool:
    """The operator fetched the previous backup (a fetch succeeded after the damage showed) and restored it."""
    seen = _corrupt_evidence(events)
    return _succeeded_after(events, "fetch", seen) and _succeeded_after(events, "restore", seen)


register(Fault(
    name="corrupt-newest-backup",
    title="the newest logical backup has one damaged object",
    scenarios=("restore-latest",),
    story="A second daily backup was taken after the application wrote more rows; then one data file of that "
          "newest backup was damaged in the sandbox's repository (one byte flipped), after its checks passed at "
          "backup time, as bit rot or a bad copy would do.",
    evidence="Step fetch (fetch-latest-backup) fails: the check `sha256 of <object>` names the damaged object and "
             "its expected and actual sha256, and the check `previous verified backup` names the previous backup, "
             "how much older it is, and how to take it (backup_id).",
    handling="Do not retry the same backup. Quit, resume with `--set backup_id=<previous id>`, retry the fetch; "
             "accept and report the larger data loss (the report's RPO and rows lost show it); raise the damaged "
             "backup for investigation.",
    phase="after-backup",
    inject=_inject_corrupt_newest,
    evidence_event=_corrupt_evidence,
    handled=_corrupt_handled,
))


# ---- target-database-exists -----------------------------------------------------------------------------------


def _inject_target_exists(sb: Sandbox, ctx: GameContext) -> dict[str, Any]:
    from steps.sandbox.build import DB

    check_sandbox(sb)
    srv = sb.server  # the replacement server, on the sandbox's own socket
    sandbox_path(sb, srv.socket_dir)
    tables = ctx.rng.sample(["assets", "locations", "users", "loans"], k=2)
    srv.psql(f"CREATE DATABASE {DB}")
    srv.psql("".join(f"CREATE TABLE {t} (id bigint primary key, note text); "
                     f"INSERT INTO {t} SELECT i, 'restore given up' FROM generate_series(1, {10 + ctx.rng.randrange(90)}) i; "
                     for t in tables), db=DB)
    return {"db": DB, "tables": sorted(tables)}


def _target_evidence(events: list[dict[str, Any]]) -> float | None:
    return _first(events, lambda e: e.get("type") == "step-check" and e.get("status") == "failed" and (
        (e.get("step") == "provision" and str(e.get("name", "")).startswith("database ")
         and str(e.get("name", "")).endswith(" absent"))
        or (e.get("step") == "restore" and e.get("name") == "target database is new or empty")))


def _target_handled(events: list[dict[str, Any]]) -> bool:
    """The restore succeeded after the tool showed the database existed (restored under a new name, or into the
    server after the operator dropped the leftover deliberately)."""
    return _succeeded_after(events, "restore", _target_evidence(events))


register(Fault(
    name="target-database-exists",
    title="the database to restore into already exists on the target server",
    scenarios=("restore-latest",),
    story="On the replacement server, the database to restore into was created before the drill began, with two "
          "tables and some rows: a restore someone started and gave up.",
    evidence="Step provision (check-target) fails its check `database <db> absent`, saying what the database "
             "holds and the two ways on; step restore (restore-logical), if reached, refuses to write over it "
             "(`target database is new or empty`).",
    handling="Look at what the database holds before anything else. Keep it and restore under a new name (quit, "
             "resume with `--set restore_db=NEW_NAME`, retry the check; point the application at NEW_NAME at the "
             "switch-over), or, once sure it is nobody's, drop it deliberately and retry. Never skip the check.",
    phase="before-run",
    inject=_inject_target_exists,
    evidence_event=_target_evidence,
    handled=_target_handled,
))


# ---- s3-unreachable -------------------------------------------------------------------------------------------


def _closed_port() -> int:
    """A TCP port on 127.0.0.1 nobody listens on (bound, then closed)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _inject_s3_unreachable(sb: Sandbox, ctx: GameContext) -> dict[str, Any]:
    cfg = check_sandbox(sb)
    if cfg.get("s3") is not None:
        raise FaultRefused("the sandbox's config names an S3 copy already")
    port = _closed_port()
    creds = sandbox_path(sb, sb.base / "s3.credentials")
    fd = os.open(creds, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW, 0o600)
    with os.fdopen(fd, "w") as f:  # the off-site copy's keys: made up, the endpoint answers nobody
        f.write("[default]\naws_access_key_id = AKIASANDBOXOFFSITE\n"
                f"aws_secret_access_key = sandbox-{ctx.rng.getrandbits(64):016x}\n")
    bucket = "assetflow-offsite"
    text = (f"s3: {{bucket: {bucket}, prefix: assetflow, region: us-east-1, "
            f"endpoint_url: 'http://127.0.0.1:{port}', credentials_file: {creds}}}\n")
    fd = os.open(sandbox_path(sb, sb.config), os.O_WRONLY | os.O_APPEND | os.O_NOFOLLOW)
    with os.fdopen(fd, "a") as f:
        f.write(text)
    check_sandbox(sb)
    return {"endpoint": f"http://127.0.0.1:{port}", "bucket": bucket, "at": datetime.now(UTC).isoformat()}


def _s3_evidence(events: list[dict[str, Any]]) -> float | None:
    """The run's opening warning (no recovery lock in the S3 copy) or a step's check `s3 repository`."""
    return _first(events, lambda e: (
        e.get("type") == "step-check" and e.get("status") in ("warning", "failed")
        and str(e.get("name", "")).startswith("s3 repository"))
        or (e.get("type") == "warning" and "S3" in str(e.get("text", "")) and "cannot reach" in str(e.get("text", ""))))


def _s3_handled(events: list[dict[str, Any]]) -> bool:
    """The backup came from the local copy and was restored, and the run was brought to its end: re-protection
    done once S3 answered again, or skipped with the reason (the off-site copy down), never left failed."""
    local = any(e.get("type") == "step-output" and e.get("step") == "fetch" and e.get("name") == "source"
                and e.get("value") == "local" for e in events)
    restored = any(e.get("type") == "step-finished" and e.get("step") == "restore" and e.get("status") == "succeeded"
                   for e in events)
    completed = any(e.get("type") == "run-finished" and e.get("status") == "completed" for e in events)
    return local and restored and completed


register(Fault(
    name="s3-unreachable",
    title="the S3 copy of the repository does not answer",
    scenarios=("restore-latest",),
    story="The sandbox's repository config was given an off-site S3 copy (a bucket on 127.0.0.1) whose endpoint "
          "does not answer: nothing listens on its port.",
    evidence="The run opens with a warning: no recovery lock in the S3 copy (cannot reach the S3 endpoint). Step "
             "fetch (fetch-latest-backup) warns `s3 repository`: the S3 copy could not be read, and fetches the "
             "backup from the local copy (output source = local). Step reprotect fails at once, its check `s3 "
             "repository` saying that archiving cannot be turned on while a configured repository is down.",
    handling="Go on with the local copy (backup_source any or local); do not wait for S3 nor pick s3 as the "
             "source. Once the service is back, re-protection: have the off-site copy looked at and retry, or "
             "skip the step with the reason (the off-site copy is down, protection follows) rather than leave "
             "the run failed.",
    phase="before-run",
    inject=_inject_s3_unreachable,
    evidence_event=_s3_evidence,
    handled=_s3_handled,
))
