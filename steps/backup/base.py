"""`runbook basebackup`: a physical base backup for point-in-time recovery, verified before it exists.

Under a lock: `pg_basebackup` in tar format with `--manifest-checksums=SHA256` and the configured
compression (default `server-zstd:level=1`: measured fastest and smallest, docs/basebackup.md), `-X none`:
the WAL comes from the archive that `wal-push` fills (pg_basebackup waits until the server has archived
the backup's last segment, so a backup that returns is restorable from the archive; a broken
`archive_command` makes it wait, which is cut after `basebackup.wal_wait_s` with a clear message). Then:

1. the server's `backup_manifest` is checked (its own checksum), and every tar is streamed, decompressed,
   and each file compared with it (size and SHA-256); `global/pg_control` in the tar must carry the
   server's system identifier;
2. the WAL from start to stop LSN must be in each repository's archive (`clusters/<sysid>/wal/`);
3. our `manifest.json` (kind `base`: system identifier, version, timeline, start/stop LSN and time, WAL
   segment size, objects with sha256) is published last (steps.repository.publish), with a `readable` record.

A repository whose archive lacks the WAL gets the backup at `checksummed` only (nothing would recover
from it), and the run ends with a warning. After a full success, local retention runs (steps.repository.prune:
base backups and the WAL no kept base backup needs). Exit codes as `runbook backup`: 0 ok, 1 warning,
2 failed (nothing published), 3 could not run; `basebackup-status.json` beside `backup-status.json`.
"""

from __future__ import annotations

import logging
import re
import shutil
import socket
import subprocess
import sys
import threading
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from runbook import __version__
from runbook.errors import LockHeld, RunbookError
from steps.backup.basetar import BaseBackupInvalid, check_tars, parse_server_manifest, tar_files
from steps.backup.lock import BackupLock
from steps.backup.logical import (
    EXIT_CANNOT_RUN,
    EXIT_FAILED,
    EXIT_LOCKED,
    EXIT_OK,
    EXIT_WARNING,
    STATUS,
    Outcome,
    backup_logging,
    load_keys,
    open_usable_stores,
    write_status_file,
)
from steps.pg.tools import Conn, connect, tool, version
from steps.pg.walnames import parse_lsn, segments_between
from steps.repository import layout
from steps.repository.config import RepositoryConfig
from steps.repository.layout import archived_segment, wal_prefix
from steps.repository.manifest import (
    BaseBackupInfo,
    BaseManifest,
    Check,
    ClusterFacts,
    Level,
    ObjectEntry,
    Tool,
    to_json,
)
from steps.repository.signing import Signer, Trust
from steps.repository.store import LocalStore, RepositoryError, Store, sha256_file

log = logging.getLogger("runbook.basebackup")

FACTS_SQL = """
select (select system_identifier::text from pg_control_system()),
       current_setting('server_version'), current_setting('server_version_num')::int,
       (select setting::bigint from pg_settings where name = 'wal_segment_size'), current_setting('data_checksums') = 'on',
       current_setting('archive_mode'), now()
"""
# The server waits at the end of a backup until its last WAL segment is archived: a NOTICE after ~5 s, then
# WARNINGs at 60, 120, 240... s. The wait is cut `wal_wait_s` after the NOTICE (or at a WARNING past it).
WAITING_NOTICE = "waiting for required WAL segments to be archived"
WAITING_RE = re.compile(r"still waiting for all required WAL segments to be archived \((\d+) seconds elapsed\)")


class BaseBackupFailed(RunbookError):
    title = "basebackup"


def _now() -> datetime:
    return datetime.now(UTC)


def _mb(n: int | None) -> str:
    return "?" if n is None else f"{n / 1e6:.1f} MB"


def present_segments(store: Store, sysid: str) -> set[str]:
    """The WAL segment names archived in a repository (whatever suffix wal-push gave them)."""
    prefix = wal_prefix(sysid)
    out: set[str] = set()
    for key, _size in store.list_keys(prefix):
        seg = archived_segment(key)
        if seg is not None:
            out.add(seg)
    return out


def missing_wal(store: Store, sysid: str, needed: list[str]) -> list[str]:
    have = present_segments(store, sysid)
    return [s for s in needed if s not in have]


def parse_label_time(label: bytes) -> datetime | None:
    """START TIME from a backup_label: `START TIME: 2026-11-25 14:31:50 UTC`."""
    m = re.search(rb"^START TIME: (.+)$", label, re.M)
    if m is None:
        return None
    text = m.group(1).decode().strip()
    for fmt in ("%Y-%m-%d %H:%M:%S %Z", "%Y-%m-%d %H:%M:%S %z"):
        try:
            dt = datetime.strptime(text, fmt)
            return dt if dt.tzinfo else dt.replace(tzinfo=UTC)
        except ValueError:
            continue
    return None


class BaseBackupRun:
    def __init__(self, cfg: RepositoryConfig, config_path: Path, *, console: bool = True) -> None:
        self.cfg = cfg
        self.config_path = config_path
        self.console = console
        self.conn = Conn(cfg.cluster.host, cfg.cluster.port, cfg.cluster.user)
        self.state_dir = cfg.state_dir()
        self.status_file = self.state_dir / "basebackup-status.json"
        self.log_file = (cfg.backup.log_file.with_name("basebackup.log") if cfg.backup.log_file
                         else self.state_dir / "basebackup.log")
        self.started_at = _now()
        self.repositories: dict[str, str] = {}
        self.stores: list[Store] = []
        self.outcome = Outcome(target="cluster")
        self.signer: Signer | None = None
        self.trust: Trust | None = None

    # --- the run -------------------------------------------------------------------------------------

    def run(self) -> int:
        try:
            logs = backup_logging("basebackup", self.log_file, console=self.console)
        except RunbookError as e:
            return self._cannot_run(str(e))
        with logs:
            return self._logged_run()

    def _logged_run(self) -> int:
        lock: BackupLock | None = None
        try:
            log.info("runbook %s basebackup with %s", __version__, self.config_path)
            try:
                self.signer, self.trust = load_keys(self.cfg, log)
            except RunbookError as e:
                return self._cannot_run(str(e))
            self._open_stores()
            if not self.stores:
                return self._cannot_run("no repository is usable: " +
                                        "; ".join(f"{k}: {v}" for k, v in self.repositories.items()))
            try:
                facts = self._facts()
                lock = BackupLock.take(self._lock_dir(), f"basebackup:{self.conn.describe('cluster')}")
                bid = layout.backup_id(_now())
                while lock.last_id and bid <= lock.last_id:
                    time.sleep(0.2)
                    bid = layout.backup_id(_now())
                lock.record(bid)
                self._remove_stale_staging()
            except LockHeld as e:
                return self._cannot_run(str(e), EXIT_LOCKED)
            except RunbookError as e:
                return self._cannot_run(str(e))
            self.outcome.backup_id = bid
            self.outcome.note_unusable(self.repositories)
            try:
                self._backup(bid, facts)
            except (RunbookError, OSError) as e:
                self.outcome.error = str(e)
                self.outcome.raise_to(EXIT_FAILED)
                log.error("base backup failed, nothing published: %s", e)
            except KeyboardInterrupt:
                self.outcome.error = "interrupted; nothing more was published"
                self.outcome.raise_to(EXIT_FAILED)
            return self._finish()
        finally:
            if lock is not None:
                lock.release()

    def _cannot_run(self, reason: str, code: int = EXIT_CANNOT_RUN) -> int:
        """Nothing was backed up: `code` is EXIT_LOCKED when another base backup holds the lock."""
        self.outcome.exit_code = code
        self.outcome.error = reason
        print(f"runbook: basebackup could not run: {reason}", file=sys.stderr)
        self._write_status()
        return code

    def _finish(self) -> int:
        o = self.outcome
        if o.exit_code == EXIT_OK:
            t = o.timings
            print(f"base {o.backup_id}: ok, {_mb(o.size_bytes)}, {o.level} in {', '.join(o.published)} "
                  f"(pg_basebackup {t.get('pg_basebackup_s', 0):.1f} s, verify {t.get('verify_s', 0):.1f} s, "
                  f"publish {sum(v for k, v in t.items() if k.startswith('publish_') and k.endswith('_s') and k.count('_') == 2):.1f} s)")
        else:
            reasons = ([o.error] if o.error else []) + [f"{k}: {v}" for k, v in o.failed.items()] + o.warnings
            where = ", ".join(o.published) or "nowhere"
            print(f"runbook: basebackup {o.backup_id or ''}: {o.status} (published in {where}): "
                  + "; ".join(r.replace("\n", " ") for r in reasons), file=sys.stderr)
        self._write_status()
        log.info("basebackup finished: %s (exit %d)", o.status, o.exit_code)
        return o.exit_code

    def _write_status(self) -> None:
        data = {
            "format_version": 1, "tool": {"name": "runbook", "version": __version__}, "host": socket.gethostname(),
            "config": str(self.config_path), "kind": "base", "backup_id": self.outcome.backup_id,
            "started_at": self.started_at.isoformat(), "finished_at": _now().isoformat(),
            "exit_code": self.outcome.exit_code, "status": STATUS[self.outcome.exit_code],
            "repositories": self.repositories, "outcome": self.outcome.as_json(),
        }
        write_status_file(self.status_file, data, str(self.status_file))

    # --- set-up --------------------------------------------------------------------------------------

    def _open_stores(self) -> None:
        self.stores += open_usable_stores(self.cfg, self.repositories, log)

    def _lock_dir(self) -> Path:
        if self.cfg.backup.lock_dir is not None:
            return self.cfg.backup.lock_dir
        if self.cfg.local is not None:
            return self.cfg.local.path / "locks"
        return self.state_dir / "locks"

    def _facts(self) -> dict[str, Any]:
        import psycopg

        try:
            with connect(self.conn, "postgres", autocommit=True, application_name="runbook basebackup") as c:
                row = c.execute(FACTS_SQL).fetchone()
        except psycopg.Error as e:
            raise BaseBackupFailed(f"cannot read the cluster's facts: {str(e).strip()}") from None
        sysid, ver, vnum, segsize, checksums, archive_mode, _ = row
        if archive_mode not in ("on", "always"):
            raise BaseBackupFailed(
                f"archive_mode is {archive_mode} on {self.conn.describe('postgres')}: a base backup taken with "
                "-X none needs WAL archiving to be restorable",
                hint="set archive_mode = on and archive_command = '<venv>/bin/runbook wal-push -c CONFIG %p', "
                     "restart the server, then check with `runbook check`")
        return {"sysid": str(sysid), "server_version": str(ver), "server_version_num": int(vnum),
                "segsize": int(segsize), "checksums": bool(checksums)}

    def _remove_stale_staging(self) -> None:
        """What killed backups left in the staging directory (steps.backup.staging), removed under our lock."""
        from steps.backup.staging import fallback_root, remove_stale_logged

        root = self.cfg.basebackup.staging_dir
        if root is None and self.cfg.local is not None:
            root = self.cfg.local.path / ".staging"
        remove_stale_logged(root or fallback_root(self.cfg), self._lock_dir(), log)

    def _staging(self, bid: str) -> Path:
        s = self.cfg.basebackup.staging_dir
        if s is None and self.cfg.local is not None:
            s = self.cfg.local.path / ".staging"
        if s is None:
            from steps.backup.staging import fallback_root

            s = fallback_root(self.cfg)
        s.mkdir(parents=True, exist_ok=True, mode=0o700)
        return s / f"base-{bid}"

    # --- one backup ----------------------------------------------------------------------------------

    def _backup(self, bid: str, facts: dict[str, Any]) -> None:
        out = self.outcome
        staging = self._staging(bid)
        shutil.rmtree(staging, ignore_errors=True)
        try:
            t0 = time.monotonic()
            self._pg_basebackup(staging, bid)
            out.timings["pg_basebackup_s"] = time.monotonic() - t0
            with connect(self.conn, "postgres", autocommit=True) as c:
                stopped_at = c.execute("select now()").fetchone()[0]
            log.info("pg_basebackup done in %.1f s", out.timings["pg_basebackup_s"])

            t1 = time.monotonic()
            smanifest = parse_server_manifest((staging / layout.BACKUP_MANIFEST).read_bytes())
            tars = tar_files(staging)
            checked = check_tars(tars, smanifest)
            out.timings["verify_s"] = time.monotonic() - t1
            log.info("tars match the backup_manifest: %d files, %s in %d tar(s) (%.1f s)", checked.files,
                     _mb(checked.size), checked.tars, out.timings["verify_s"])
            control = checked.captured.get("global/pg_control", b"")
            tar_sysid = str(int.from_bytes(control[:8], "little")) if len(control) >= 8 else "?"
            if tar_sysid != facts["sysid"]:
                raise BaseBackupInvalid(f"global/pg_control in the backup has system identifier {tar_sysid}, "
                                        f"the server says {facts['sysid']}")
            started_at = parse_label_time(checked.captured.get("backup_label", b"")) or self.started_at

            timeline, start, stop = smanifest.wal_ranges[0][0], smanifest.wal_ranges[0][1], smanifest.wal_ranges[-1][2]
            if len({r[0] for r in smanifest.wal_ranges}) != 1:
                raise BaseBackupFailed("the backup spans a timeline switch (taken during a promotion?): take it again")
            needed = segments_between(timeline, parse_lsn(start), parse_lsn(stop), facts["segsize"])

            objects = []
            for path in sorted(staging.iterdir()):
                size, digest = sha256_file(path)
                objects.append(ObjectEntry(path=path.name, size=size, sha256=digest))
            out.size_bytes = sum(o.size for o in objects)
            manifest = BaseManifest(
                backup_id=bid,
                cluster=ClusterFacts(system_identifier=facts["sysid"], server_version=facts["server_version"],
                                     server_version_num=facts["server_version_num"],
                                     data_checksums=facts["checksums"], size_bytes=smanifest.size_bytes),
                timeline=timeline, start_lsn=start, stop_lsn=stop, start_wal=needed[0], stop_wal=needed[-1],
                wal_segment_size=facts["segsize"], started_at=started_at, stopped_at=stopped_at,
                backup=BaseBackupInfo(compression=self.cfg.basebackup.compression,
                                      pg_basebackup_version=version("pg_basebackup"),
                                      tablespaces=len(tars) - 1, files=len(smanifest.files)),
                objects=objects, tool=Tool(version=__version__), host=socket.gethostname(),
            )
            out.snapshot_time = stopped_at.isoformat()
            tar_check = Check(name="tar matches backup_manifest", status="ok",
                              detail=f"{checked.files} files, {checked.size} bytes, SHA-256 each, streamed from "
                                     f"{', '.join(p.name for p, _ in tars)}")
            self._publish(bid, facts["sysid"], staging, objects, manifest, needed, tar_check)
        finally:
            shutil.rmtree(staging, ignore_errors=True)
        if out.published and out.exit_code == EXIT_OK:
            self._local_retention()

    def _pg_basebackup(self, staging: Path, bid: str) -> None:
        bb = self.cfg.basebackup
        argv = [tool("pg_basebackup"), *self.conn.args(), "-D", str(staging), "-Ft", "-X", "none",
                "--manifest-checksums=SHA256", f"--checkpoint={bb.checkpoint}", "-l", f"runbook {bid}",
                "--no-password"]
        if bb.compression != "none":
            argv += ["-Z", bb.compression]
        log.debug("running %s", " ".join(argv))
        proc = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        lines: list[str] = []
        waiting_since: list[float] = []  # when the server said it waits for the archive
        gave_up: list[float] = []  # seconds waited, when we stopped it

        def read() -> None:
            assert proc.stderr is not None
            for line in proc.stderr:
                lines.append(line.rstrip())
                log.debug("pg_basebackup: %s", line.rstrip())
                if WAITING_NOTICE in line and not waiting_since:
                    waiting_since.append(time.monotonic() - 5)
                    log.warning("the server waits for the backup's WAL to be archived")
                m = WAITING_RE.search(line)
                if m and float(m.group(1)) >= bb.wal_wait_s and proc.poll() is None:
                    gave_up.append(float(m.group(1)))
                    proc.kill()

        reader = threading.Thread(target=read, daemon=True)
        reader.start()
        deadline = time.monotonic() + bb.timeout_s
        try:
            while proc.poll() is None:
                now = time.monotonic()
                if waiting_since and now - waiting_since[0] >= bb.wal_wait_s:
                    gave_up.append(now - waiting_since[0])
                    proc.kill()
                elif now > deadline:
                    proc.kill()
                    proc.wait()
                    raise BaseBackupFailed(f"pg_basebackup took longer than {bb.timeout_s:.0f} s; stopped")
                time.sleep(0.2)
        finally:
            if proc.poll() is None:
                proc.kill()
            proc.wait()
            reader.join(timeout=10)
        if gave_up:
            raise BaseBackupFailed(
                f"the server waited {gave_up[0]:.0f} s for the backup's WAL to be archived: archiving is not working; "
                "no base backup was published",
                hint="look at pg_stat_archiver and the server log for archive_command errors; `runbook check`")
        if proc.returncode != 0:
            tail = "\n".join(ln for ln in lines[-8:] if ln.strip())
            raise BaseBackupFailed(f"pg_basebackup failed (exit {proc.returncode}):\n{tail}",
                                   hint="the role needs REPLICATION and a `replication` line in pg_hba.conf")

    def _wait_wal(self, store: Store, sysid: str, needed: list[str]) -> list[str]:
        deadline = time.monotonic() + self.cfg.basebackup.wal_wait_s
        while True:
            missing = missing_wal(store, sysid, needed)
            if not missing or time.monotonic() > deadline:
                return missing
            time.sleep(0.5)

    def _wait_sealed(self, store: Store, sysid: str, needed: list[str]) -> None:
        """Wait (at most `wal_wait_s`) until the signed WAL ledgers list the segments this backup needs, so that
        a test restore or a recovery right after it can replay them (steps.wal.ledger: the database host's
        sealer signs them a moment after they are archived). Not sealed in time: a warning naming the sealer's
        log; a cluster with no ledger at all (WAL signing not set up): said in the log."""
        from steps.repository.signing import trust_from_config
        from steps.wal.ledger import read_index
        from steps.wal.store import open_wal_stores

        cfg = self.cfg
        wal_stores = [w for w in open_wal_stores(cfg.local.path if cfg.local else None,
                                                 cfg.s3.model_dump(mode="json") if cfg.s3 else None)
                      if w.name == store.name]
        trust = trust_from_config(cfg)
        deadline = time.monotonic() + cfg.basebackup.wal_wait_s
        while True:
            index = read_index(wal_stores, trust, int(sysid), needed[0])
            unsealed = [n for n in needed if n not in index.segments]
            if not unsealed:
                return
            if not index.segments and not index.refused:
                log.warning("%s: no signed WAL ledger lists this cluster's WAL: recoveries accept it only with "
                            "allow_unsigned (set signing.wal_private_key on the database host; docs/wal.md)",
                            store.name)
                return
            if time.monotonic() > deadline:
                self.outcome.warnings.append(
                    f"{store.name}: {len(unsealed)} WAL segment(s) this backup needs are in no signed WAL ledger "
                    f"({unsealed[0]}...): a test restore or a recovery refuses them until they are sealed; see the "
                    "sealer's seal-worker.log in the database host's wal.spool_dir")
                self.outcome.raise_to(EXIT_WARNING)
                return
            time.sleep(0.5)

    def _publish(self, bid: str, sysid: str, staging: Path, objects: list[ObjectEntry], manifest: BaseManifest,
                 needed: list[str], tar_check: Check) -> None:
        from steps.repository.publish import publish

        out = self.outcome
        prefix = layout.base_prefix(sysid, bid)
        data = to_json(manifest)
        for store in self.stores:
            t0 = time.monotonic()
            try:
                missing = self._wait_wal(store, sysid, needed)
                out.timings[f"wal_check_{store.name}_s"] = time.monotonic() - t0
                if missing:
                    level = Level.checksummed
                    wal_check = Check(name="WAL in the archive", status="failed",
                                      detail=f"{len(missing)} of {len(needed)} segments missing: {', '.join(missing[:3])}")
                    out.warnings.append(f"{store.name}: the archive lacks {len(missing)} WAL segments this backup "
                                        f"needs ({missing[0]}...): not restorable from there")
                    out.raise_to(EXIT_WARNING)
                else:
                    level = Level.readable
                    wal_check = Check(name="WAL in the archive", status="ok",
                                      detail=f"{len(needed)} segments {needed[0]}..{needed[-1]} in {wal_prefix(sysid)}")
                    self._wait_sealed(store, sysid, needed)
                workers = self.cfg.s3.max_concurrency if store.name == "s3" and self.cfg.s3 else 1
                assert self.signer is not None
                if self.cfg.encrypts(store.name):
                    done = self._publish_encrypted(store, prefix, staging, objects, manifest, level,
                                                   [tar_check, wal_check], workers)
                else:
                    done = publish(store, prefix, staging, objects, data, backup_id=bid, level=level,
                                   checks=[tar_check, wal_check], signer=self.signer, workers=workers)
            except RepositoryError as e:
                out.failed[store.name] = str(e)
                log.error("not published in %s: %s", store.describe(), e)
                continue
            finally:
                out.timings[f"publish_{store.name}_s"] = time.monotonic() - t0
            out.published.append(store.name)
            out.level = level.name if out.level is None else min(out.level, level.name, key=Level.parse)
            log.info("published in %s (%s, %.1f s)", store.describe(), level.name, done.timings.get("total_s", 0))
        out.settle_published()

    def _publish_encrypted(self, store: Store, prefix: str, staging: Path, objects: list[ObjectEntry],
                           manifest: BaseManifest, level: Level, checks: list[Check], workers: int) -> Any:
        """Publish into a repository marked `encrypt: true`, as the logical backup does (steps.encrypted.writing):
        every staged object, the tars and backup_manifest, encrypted with age to the data recipient of this host's
        epoch for that repository (only its public key is here), stored as `PATH.age` and re-read; the manifest
        of that repository names the epoch and keeps plaintext and stored size and sha256 of each object."""
        from steps.encrypted.writing import sealing_for, with_stored
        from steps.repository.publish import Published, commit, store_objects

        assert self.signer is not None
        t0 = time.monotonic()
        sealing = sealing_for(self.cfg, store, self.signer)
        assert sealing is not None  # the caller asked cfg.encrypts(store.name)
        stored: dict[str, tuple[int, str]] = {}
        timings = store_objects(store, prefix, staging, objects, workers=workers, encrypt=sealing.encrypt_file,
                                stored=stored)
        entries = with_stored(objects, stored)
        data = to_json(manifest.model_copy(update={"objects": entries, "encryption": sealing.encryption()}))
        record = commit(store, prefix, entries, data, backup_id=manifest.backup_id, level=level, checks=checks,
                        signer=self.signer)
        timings["total_s"] = time.monotonic() - t0
        log.info("encrypted for %s to epoch %s", store.describe(), sealing.epoch)
        return Published(store=store, record=record, timings=timings)

    def _local_retention(self) -> None:
        from steps.repository.prune import prune_base

        local = next((s for s in self.stores if isinstance(s, LocalStore)), None)
        if local is None:
            return
        try:
            assert self.trust is not None
            report = prune_base(local, self.cfg.retention, trust=self.trust, now=_now())
        except RepositoryError as e:
            self.outcome.warnings.append(f"local retention failed: {e}")
            self.outcome.raise_to(EXIT_WARNING)
            return
        self.outcome.retention = {"kept": len(report.kept), "deleted": [w for w, _ in report.deleted]}
        for what, why in report.deleted:
            log.info("retention: deleted %s (%s)", what, why)
