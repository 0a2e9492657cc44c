"""verify-backup of a base backup: its archived WAL fetched from start to stop segment (each file checked),
its tars extracted against the server's backup_manifest (each tablespace into the scratch directory), then
replayed to consistency (`recovery_target = 'immediate'`) with archiving off and promoted, and checked.

What it shares with the `pitr` action is steps.pitr's public interface: steps.pitr.errors,
steps.pitr.tablespaces (the plan, tablespace_map, the placement check) and steps.pitr.recovery
(empty_pg_wal, write_auto_conf, and reading the postmaster and its log).
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import time
from pathlib import Path
from typing import Any

from steps.proof.verification import (
    NO_SPACE,
    BackupBad,
    CannotRun,
    CheckResult,
    ScratchFull,
    Verification,
    last_line,
    no_space,
)


class BaseVerification(Verification):
    """The steps of a base backup's test restore."""

    def _verify_base(self, entry: Any, copy: Any, scratch: Path, server: Any) -> None:
        from steps.backup.basetar import (
            BaseBackupInvalid,
            check_tars,
            parse_server_manifest,
            tablespace_oids,
            tar_files,
        )
        from steps.pg.server import give_to_server
        from steps.pitr.errors import PitrError
        from steps.pitr.tablespaces import (
            TablespacePlan,
            backup_tablespace_oids,
            make_tablespace_dirs,
            plan_tablespaces,
            read_tablespace_facts,
            write_tablespace_map,
        )
        from steps.repository.layout import BACKUP_MANIFEST

        fetched = scratch / "fetch"
        m = self._fetch_base(copy, fetched)
        wal_dir = scratch / "cluster" / "wal"  # read by restore_command, as the server's user
        t0 = time.monotonic()
        self._fetch_wal(entry, copy, wal_dir)
        self.out.timings["fetch_s"] = round(self.out.timings.get("fetch_s", 0) + time.monotonic() - t0, 2)
        pgdata = server.datadir
        pgdata.mkdir(mode=0o700)
        t1 = time.monotonic()
        plan: list[TablespacePlan] = []
        try:
            smanifest = parse_server_manifest((fetched / BACKUP_MANIFEST).read_bytes())
            tars = tar_files(fetched)
            oids = sorted(tablespace_oids(tars), key=int)
            if oids != backup_tablespace_oids(m):
                raise BaseBackupInvalid(f"its tablespace tars ({oids}) are not those of its manifest "
                                        f"({backup_tablespace_oids(m)})")
            if oids:
                # Each tablespace into the scratch directory, never its production location.
                tsmap, _ = read_tablespace_facts(tars)
                try:
                    plan = plan_tablespaces(tsmap, oids, {}, scratch / "cluster" / "tablespaces", pgdata)
                except PitrError as e:
                    raise BackupBad("tablespaces", e.message) from None
                make_tablespace_dirs(plan, probe=False)  # scratch/cluster is given to the server's user below
            checked = check_tars(tars, smanifest, dest=pgdata, skip=lambda p: p.startswith("pg_wal/"),
                                 tablespace_dest={p.oid: p.directory for p in plan})
        except BaseBackupInvalid as e:
            if no_space(e.message):
                raise ScratchFull(f"the scratch disk filled up while extracting the base backup: {e.message}") from None
            raise BackupBad("base backup files", e.message) from None
        shutil.rmtree(fetched, ignore_errors=True)  # extracted: its room goes to the replay
        self.out.checks.append(CheckResult("backup_manifest", "ok", f"{checked.files} files extracted, each "
                                           f"matching the server's backup_manifest ({checked.size / 1e6:.1f} MB)"
                                           + (f", {len(plan)} tablespace(s) among them" if plan else "")))
        self._prepare_recovery(pgdata, wal_dir, server, m.timeline)
        if plan:
            write_tablespace_map(pgdata, plan)
        give_to_server(scratch / "cluster")  # the only part of the scratch directory the server's user gets
        self._replay(server, m)
        if plan:
            self._check_tablespaces(server, plan)
        self.out.timings["restore_s"] = round(time.monotonic() - t1, 2)
        self.out.restored_size_bytes = self._size(server, None)
        dbs = [self.db] if self.db else list(self.cfg.cluster.databases)
        self._checks(server, dbs, None)

    def _check_tablespaces(self, server: Any, plan: list[Any]) -> None:
        """Every tablespace of the backup, after the replay, in its scratch directory."""
        from steps.pg.server import as_server
        from steps.pg.tools import PG_BIN
        from steps.pitr.tablespaces import TABLESPACES_SQL, placed_tablespaces

        q = subprocess.run(as_server([os.path.join(PG_BIN, "psql"), "-h", str(server.socket_dir), "-p",
                                      str(server.port), "-U", self.superuser, "-d", "postgres", "-XAtq", "-c",
                                      TABLESPACES_SQL]), capture_output=True, text=True)
        if q.returncode != 0:
            raise CannotRun(f"the tablespaces of the restored copy cannot be listed: {q.stderr.strip()}")
        placed, problems, _warnings = placed_tablespaces(q.stdout, plan)
        if problems:
            raise BackupBad("tablespaces", "; ".join(problems))
        self.out.checks.append(CheckResult("tablespaces", "ok", "; ".join(
            f"{t['name']} (OID {t['oid']}, {t['original']} in production) restored in the scratch directory"
            for t in placed)))

    def _fetch_base(self, copy: Any, fetched: Path) -> Any:
        """The copy's objects into `fetched`, checked (an encrypted copy decrypted while it streams:
        steps.proof.verification._fetch); the copy's own manifest, returned (the catalogue verified it)."""
        from steps.repository import layout
        from steps.repository.manifest import parse_base, sha256_bytes

        data = copy.store.get_bytes(copy.prefix + layout.MANIFEST)
        if sha256_bytes(data) != copy.manifest_sha256:
            raise BackupBad("manifest", f"{copy.prefix}{layout.MANIFEST} changed while it was read")
        m = parse_base(data)
        self._fetch(copy, m, fetched)
        return m

    def _wal_keys(self) -> Any:
        """The WAL reader's keys (steps.wal.crypt) for an encrypted archive, as root."""
        from steps.wal.crypt import WalKeys
        from steps.wal.settings import WalSettings

        return WalKeys(WalSettings(self.config_path, self.cfg.model_dump(mode="json", by_alias=True)),
                       self.allow_unsigned)

    def _fetch_wal(self, entry: Any, copy: Any, dest: Path) -> None:
        """The archived WAL from the backup's start to its stop segment (and its timeline's history), each
        file checked by steps.wal.archive's reader and against the signed WAL ledgers (steps.wal.ledger); a gap,
        a damaged file or one no genuine ledger lists with these bytes fails the backup, naming the segment
        (unsigned ones pass only with allow_unsigned, said)."""
        from steps.repository.layout import next_segment, wal_key
        from steps.repository.signing import trust_from_config
        from steps.wal.archive import fetch_checked
        from steps.wal.ledger import read_index
        from steps.wal.store import open_wal_stores

        m = entry.manifest
        cfg = self.cfg
        stores = [s for s in open_wal_stores(cfg.local.path if cfg.local else None,
                                             cfg.s3.model_dump(mode="json") if cfg.s3 else None,
                                             encrypt={"local": cfg.encrypts("local"), "s3": cfg.encrypts("s3")})
                  if s.name == copy.store.name or self.source == "any"]
        keys = self._wal_keys()
        for what, name in (("start", m.start_wal), ("stop", m.stop_wal)):
            if not re.fullmatch(r"[0-9A-F]{24}", name):  # from the repository: a name, never a place
                raise BackupBad("manifest", f"its {what} WAL segment {name!r} is not a WAL segment name")
        dest.mkdir(mode=0o700)
        names = [m.start_wal]
        while names[-1] != m.stop_wal and len(names) < 1_000_000:
            names.append(next_segment(names[-1], m.wal_segment_size))
        sysid = int(entry.cluster)
        index = read_index(stores, trust_from_config(cfg), sysid, m.start_wal)
        for refused in index.refused:
            self.out.checks.append(CheckResult("WAL ledger refused", "warning", refused))
        unsigned: list[str] = []

        def signed(name: str, digest: str) -> None:
            listed = index.segments.get(name)
            if listed == digest:
                return
            if listed is not None:
                raise BackupBad(f"WAL {name}", f"the archived file (sha256 {digest}) is not the one the WAL ledgers "
                                f"signed (sha256 {listed}): it was replaced")
            if not self.allow_unsigned:
                raise BackupBad(f"WAL {name}", "in no signed WAL ledger of this cluster: archived unsealed (no "
                                "signing.wal_private_key on the database host, or its sealer did not run) or planted")
            unsigned.append(name)

        for name in names:
            data, digest, problems = fetch_checked(stores, wal_key(entry.cluster, name), name, 2, sysid, keys)
            if data is None:
                if problems:
                    raise BackupBad(f"WAL {name}", f"damaged in the archive: {'; '.join(problems)}")
                raise BackupBad(f"WAL {name}", f"the archive has a gap: {name} (needed from {m.start_wal} to "
                                f"{m.stop_wal}) is missing; the backup cannot become consistent")
            signed(name, digest)
            _write_new(dest, name, data)
        if m.timeline > 1:
            hist = f"{m.timeline:08X}.history"
            data, digest, _ = fetch_checked(stores, wal_key(entry.cluster, hist), hist, 2, sysid, keys)
            if data is not None:
                signed(hist, digest)
                _write_new(dest, hist, data)
        if unsigned:
            self.out.checks.append(CheckResult("unsigned WAL accepted", "warning", f"{len(unsigned)} file(s) in no "
                                               f"signed WAL ledger ({unsigned[0]}...) accepted: allow_unsigned"))
        self.out.checks.append(CheckResult("archived WAL", "ok", f"{len(names)} segments {m.start_wal} .. "
                                           f"{m.stop_wal}, each checked"
                                           + (", each as the signed WAL ledgers list it" if not unsigned else "")))

    def _prepare_recovery(self, pgdata: Path, wal_dir: Path, server: Any, timeline: int) -> None:
        from steps.pitr.recovery import empty_pg_wal, write_auto_conf

        empty_pg_wal(pgdata)
        for name in ("postmaster.pid", "postmaster.opts", "standby.signal"):
            (pgdata / name).unlink(missing_ok=True)
        if not (pgdata / "postgresql.conf").exists():  # a Debian cluster keeps it under /etc
            (pgdata / "postgresql.conf").write_text("")
        # A throwaway copy: only this host's superuser, over its own socket.
        (pgdata / "pg_hba.conf").write_text("local all all trust\n")
        (pgdata / "pg_ident.conf").write_text("")
        server.socket_dir.mkdir(parents=True, exist_ok=True)
        settings = {
            "port": str(server.port), "listen_addresses": "", "unix_socket_directories": str(server.socket_dir),
            "archive_mode": "off", "shared_preload_libraries": "", "ssl": "off", "logging_collector": "off",
            "log_destination": "stderr", "hba_file": str(pgdata / "pg_hba.conf"),
            "ident_file": str(pgdata / "pg_ident.conf"), "external_pid_file": "", "fsync": "off",
            "hot_standby": "on",
        }
        recovery = {"restore_command": f"cp {wal_dir}/%f %p", "recovery_target": "immediate",
                    "recovery_target_action": "promote", "recovery_target_timeline": "current"}
        write_auto_conf(pgdata, recovery, settings)

    def _replay(self, server: Any, m: Any) -> None:
        from steps.fs import read_plain_text
        from steps.pg.server import as_server, give_to_server, server_user
        from steps.pg.tools import PG_BIN
        from steps.pitr.recovery import fatal_lines, log_tail, own_log, postmaster_alive, redo_facts

        log = server.socket_dir / "recovery.log"
        own_log(log, server_user())  # never through a link at its name
        give_to_server(server.socket_dir)
        proc = subprocess.run(as_server([os.path.join(PG_BIN, "pg_ctl"), "-D", str(server.datadir), "-l", str(log),
                                         "-w", "-t", str(int(min(self.timeout_s, 3600))), "start"]),
                              capture_output=True, text=True)
        deadline = time.monotonic() + self.timeout_s
        while True:
            text = read_plain_text(log, missing="")  # never through a link the server's user planted
            if no_space(text):
                raise ScratchFull("the scratch disk filled up during the replay: "
                                  f"{last_line(chr(10).join(ln for ln in text.splitlines() if NO_SPACE in ln))}")
            fatal = [ln for ln in fatal_lines(text) if "the database system is" not in ln]
            if fatal:
                raise BackupBad("replay to consistency", "\n".join(fatal[-4:]))
            if proc.returncode != 0 and not postmaster_alive(server.datadir):
                raise BackupBad("replay to consistency", f"the restored server did not start:\n{log_tail(log, 12)}")
            q = subprocess.run(as_server([os.path.join(PG_BIN, "psql"), "-h", str(server.socket_dir), "-p",
                                          str(server.port), "-U", self.superuser, "-d", "postgres", "-XAtq", "-c",
                                          "select pg_is_in_recovery()"]), capture_output=True, text=True)
            if q.returncode == 0 and q.stdout.strip() == "f":
                break
            if not postmaster_alive(server.datadir):
                raise BackupBad("replay to consistency", f"the restored server stopped:\n{log_tail(log, 12)}")
            if time.monotonic() > deadline:
                raise CannotRun(f"the replay did not end within {self.timeout_s:.0f} s")
            time.sleep(0.2)
        replayed = redo_facts(read_plain_text(log, missing=""))
        if replayed is not None:
            self.out.wal_replayed_bytes, self.out.wal_replay_s = replayed
        self.out.checks.append(CheckResult("replay to consistency", "ok",
                                           f"WAL {m.start_wal} .. {m.stop_wal} replayed, promoted" +
                                           (f" ({replayed[0] / 1e6:.1f} MB of WAL redone in {replayed[1]:.2f} s)"
                                            if replayed else "")))


def _write_new(directory: Path, name: str, data: bytes) -> None:
    """A new file `name` in `directory` (O_EXCL, O_NOFOLLOW, 0600: steps.fs.open_beneath)."""
    from steps.fs import open_beneath, open_dir

    with open_dir(directory) as dir_fd, os.fdopen(open_beneath(dir_fd, name, what="WAL file"), "wb") as f:
        f.write(data)
