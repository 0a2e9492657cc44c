"""`runbook status`: would we make it now? RPO and RTO against the runbook's targets, from facts.

- **RPO exposure now**: how much committed data a disaster right now would lose. With a readable base backup
  of the cluster, the WAL archive decides: the newest archived WAL file (by name: timeline and segment) and
  when it was archived; when the cluster answers, `runbook check`'s own findings (steps.proof.check: archive_mode,
  archive_command, `archive_timeout`, pg_stat_archiver's errors, whether WAL was written since the last
  archived segment) sharpen it. Without a base backup (PITR impossible) it is the age of the newest readable
  logical backup; with no backup at all it is unbounded.
- **Backups**: the newest logical and base backup at each verification level (checksummed, readable,
  restored) and its age; a copy whose latest verification failed counts as `none` (steps.repository.catalogue).
- **Drills**: the last successful live or drill run per scenario (runbook.staleness: stale after 30 days),
  with its measured RTO, from this host's runs and the repository's `runs/` summaries (every host's).
- **Projected RTO** per scenario, for a recovery started now: the newest verified test restore's time
  (verify-backup's record), scaled to today's database size, plus the expected durations of the scenario's
  other steps up to the service being back (runbook.history: medians of earlier runs, else `expect_duration`;
  a manual checklist counts at least its `expect_duration`, since an unattended drill acknowledges it at once).
  A PITR also replays the WAL archived since the base backup: its segments (from the base backup's first to the
  newest archived) at the replay rate the newest base verify-backup measured (the server's own redo timing);
  a replay too short to tell a rate leaves the replay uncounted, said, and the verdict a warning.

- **Integrity**: only genuine backups, records and run summaries count (steps.repository.signing); each one
  refused (unsigned, badly signed, an unknown key, from the future) is a warning naming it, and so is every
  unsigned one accepted with `--allow-unsigned`.

Verdicts: `ok`, `warning` (not proven: stale or never drilled, no verified restore, archiving settings that allow
more loss than the target), `red` (a target is not met now). Exit codes for monitoring: 0 all ok, 1 a warning,
2 red, 3 could not run (the config, or a repository that cannot be read: never "all good" without the facts).
The clock is injectable (`now`), so tests (and a what-if) evaluate it at any moment.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from runbook.durations import rough_duration
from runbook.errors import RunbookError

EXIT = {"ok": 0, "warning": 1, "red": 2, "could not run": 3}
RESTORE_ACTIONS = {"restore-logical": "logical", "pitr": "base"}
DEFAULT_RTO_S = 2 * 3600.0
DEFAULT_RPO_S = 300.0


def worst(*verdicts: str) -> str:
    order = ["ok", "warning", "red", "could not run"]
    return max(verdicts, key=order.index) if verdicts else "ok"


def human(seconds: float | None) -> str:
    return "unknown" if seconds is None else rough_duration(seconds)


@dataclass
class Verdict:
    verdict: str = "ok"
    reasons: list[str] = field(default_factory=list)

    def raise_to(self, verdict: str, reason: str) -> None:
        self.verdict = worst(self.verdict, verdict)
        if f"{verdict}: {reason}" not in self.reasons:  # one reason once, however many projections found it
            self.reasons.append(f"{verdict}: {reason}")


@dataclass
class Report:
    now: datetime
    runbook: dict[str, Any] = field(default_factory=dict)
    repositories: dict[str, dict[str, Any]] = field(default_factory=dict)
    cluster: dict[str, Any] = field(default_factory=dict)
    rpo: dict[str, Any] = field(default_factory=dict)
    backups: dict[str, dict[str, Any]] = field(default_factory=dict)
    drills: list[dict[str, Any]] = field(default_factory=list)
    projected: dict[str, dict[str, Any]] = field(default_factory=dict)
    rto: dict[str, Any] = field(default_factory=dict)
    integrity: dict[str, Any] = field(default_factory=dict)  # backups and summaries refused, unsigned accepted
    cluster_dir: str | None = None  # the repository's cluster directory (system identifier) judged
    verdict: str = "ok"
    error: str | None = None

    @property
    def exit_code(self) -> int:
        return EXIT[self.verdict]

    def as_json(self) -> dict[str, Any]:
        return {"generated_at": self.now.isoformat(), "verdict": self.verdict, "exit_code": self.exit_code,
                "error": self.error, "runbook": self.runbook, "repositories": self.repositories,
                "cluster": self.cluster, "cluster_dir": self.cluster_dir, "rpo": self.rpo, "rto": self.rto, "backups": self.backups,
                "drills": self.drills, "projected_rto": self.projected, "integrity": self.integrity}

    def one_line(self) -> str:
        """The verdict in one line, as the TUI's start screen shows it."""
        if self.verdict == "could not run":
            return f"status: could not run: {self.error or 'see runbook status'}"
        rpo = self.rpo.get("verdict", "?")
        rto = self.rto.get("verdict", "?")
        exp = self.rpo.get("exposure_s")
        proj = [p["total_s"] for p in self.projected.values() if p.get("total_s") is not None]
        target_rto = self.runbook.get("targets", {}).get("rto_s")
        target_rpo = self.runbook.get("targets", {}).get("rpo_s")
        return (f"would we make it now? {self.verdict.upper()} · RPO {rpo}: exposure {human(exp)} of "
                f"{human(target_rpo)} · RTO {rto}: projected {human(max(proj) if proj else None)} of "
                f"{human(target_rto)}")


# --- gathering --------------------------------------------------------------------------------------------


_RUNBOOKS: dict[tuple[str, int, int], Any] = {}


def _runbook_facts(file: Path | None, explicit: bool) -> tuple[Any, dict[str, Any]]:
    from runbook.loader import load_runbook

    if file is None or (not explicit and not file.exists()):
        return None, {"file": None, "name": None, "targets": {"rto_s": DEFAULT_RTO_S, "rpo_s": DEFAULT_RPO_S},
                      "note": "no runbook file: the plan's default targets (RTO 2 h, RPO 5 min)"}
    st = file.stat() if file.exists() else None
    key = (str(file.resolve()), st.st_mtime_ns if st else 0, st.st_size if st else 0)
    rb = _RUNBOOKS.get(key)
    if rb is None:  # a fleet's lines read one runbook: parsed and validated once (the models are not changed)
        rb = load_runbook(file)
        _RUNBOOKS.clear()
        _RUNBOOKS[key] = rb
    return rb, {"file": str(file), "name": rb.name, "scenarios": list(rb.scenarios),
                "targets": {"rto_s": rb.targets.rto.total_seconds(), "rpo_s": rb.targets.rpo.total_seconds()}}


def _open(cfg: Any, rep: Report) -> list[Any]:
    from steps.repository.configured import open_stores

    stores = []
    for which in ("local", "s3"):
        if getattr(cfg, which) is None:
            continue
        try:
            store = open_stores(cfg, which)[0]  # type: ignore[arg-type]
            dirs = store.list_dirs("clusters/")  # can it be read at all?
            if which == "local" and not store.root.is_dir():  # type: ignore[attr-defined]
                raise RunbookError(f"{store.describe()} does not exist")
        except RunbookError as e:
            rep.repositories[which] = {"where": None, "ok": False, "error": e.message}
            continue
        except Exception as e:  # noqa: BLE001 - an unreachable store fails in many ways; say it, exit 3
            rep.repositories[which] = {"where": None, "ok": False, "error": f"{type(e).__name__}: {e}"}
            continue
        rep.repositories[which] = {"where": store.describe(), "ok": True, "error": None, "clusters": sorted(dirs)}
        stores.append(store)
    return stores


def _cluster(cfg: Any, config_path: Path, rpo_s: float, rep: Report,
             checkers: list[Any] | None = None) -> dict[str, Any] | None:
    """`runbook check`'s findings on the protected cluster, when it answers (None when it does not); the checker
    goes into `checkers`: the physical engine it asked has read pgBackRest already (not read again)."""
    from steps.proof.check import Checker, CheckOptions

    checker = Checker(CheckOptions(config=str(config_path), timeout=10.0, rpo=rpo_s, engine_check=False))
    if checkers is not None:
        checkers.append(checker)
    try:
        checker.run()
    except Exception as e:  # noqa: BLE001 - a query failing: the cluster's facts are unknown, said so
        checker.add("check", "failed", f"{type(e).__name__}: {str(e).strip()}")
    checks = {c.name: c for c in checker.checks}
    conn = checks.get("connection")
    if conn is None or conn.status == "failed":
        rep.cluster = {"reachable": False, "error": conn.detail if conn else "not checked"}
        return None
    found: dict[str, Any] = {"reachable": True, "checks": {n: {"status": c.status, "detail": c.detail}
                                                          for n, c in checks.items()}}
    try:
        from steps.pg.tools import Conn, connect

        c = cfg.cluster
        with connect(Conn(c.host, c.port, c.user), c.databases[0] if c.databases else "postgres",
                     autocommit=True, application_name="runbook status") as pg:
            row = pg.execute("select (select system_identifier::text from pg_control_system()), "
                             "(select setting::int from pg_settings where name = 'archive_timeout'), "
                             "(select setting::bigint from pg_settings where name = 'wal_segment_size')").fetchone()
            found["system_identifier"], found["archive_timeout_s"], found["wal_segment_size"] = row
            sizes = {}
            for db in c.databases:
                r = pg.execute("select pg_database_size(oid) from pg_database where datname = %s", (db,)).fetchone()
                if r:
                    sizes[db] = int(r[0])
            found["database_size_bytes"] = sizes
            found["cluster_size_bytes"] = int(pg.execute(
                "select sum(pg_database_size(oid))::bigint from pg_database").fetchone()[0])
    except Exception as e:  # noqa: BLE001 - the sizes are for the projection only
        found["error"] = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
    rep.cluster = found
    return found


def _newest_wal(cfg: Any, stores: list[Any], sysid: str) -> dict[str, Any] | None:
    from steps.repository.layout import parse_wal_name, wal_name_from_key, wal_prefix
    from steps.wal.store import open_wal_stores

    best: tuple[tuple[int, int], str, float, str] | None = None
    names = {s.name for s in stores}
    for ws in open_wal_stores(cfg.local.path if cfg.local else None,
                              cfg.s3.model_dump(mode="json") if cfg.s3 else None):
        if ws.name not in names:
            continue
        for item in ws.list(wal_prefix(sysid)):
            name = wal_name_from_key(item.key)
            if name is None:
                continue
            w = parse_wal_name(name)
            if w.kind not in ("segment", "partial"):
                continue
            key = (w.timeline, w.log * 0x100000000 + w.seg)
            if best is None or key > best[0] or (key == best[0] and item.mtime > best[2]):
                best = (key, name, item.mtime, ws.name)
    if best is None:
        return None
    return {"name": best[1], "archived_at": datetime.fromtimestamp(best[2], UTC).isoformat(), "where": best[3],
            "_mtime": best[2]}


def _pgbackrest_facts(cfg: Any, stores: list[Any], trust: Any, facts: dict[str, Any] | None, rep: Report,
                      unreadable: dict[str, str], integrity: Verdict,
                      engine: Any = None) -> tuple[list[Any], dict[str, Any] | None]:
    """engine: pgbackrest: its backups as catalogue entries (with the product's records about them) and its
    newest archived WAL, as `_newest_wal` tells the product's own. pgBackRest not answering is a repository that
    cannot be read (status could not run)."""
    from steps.engines.pgbackrest.records import WHERE, listed

    try:
        got = listed(cfg, stores, trust, (facts or {}).get("wal_segment_size"), engine)
    except RunbookError as e:
        rep.repositories[WHERE] = {"where": f"pgBackRest stanza {cfg.pgbackrest.stanza}", "ok": False,
                                   "error": e.message}
        unreadable[WHERE] = e.message
        return [], None
    st, rng = got.stanza, got.archive
    rep.repositories[WHERE] = {"where": f"pgBackRest stanza {st.name}", "ok": True, "error": None,
                               "status": st.status_message, "clusters": [st.system_identifier] if
                               st.system_identifier else []}
    if st.status_code != 0:
        integrity.raise_to("warning", f"pgbackrest info: stanza {st.name}: {st.status_message}")
    if got.refused:
        rep.integrity.setdefault("refused_records", []).extend(f"{n}: {k}: {why}" for n, k, why in got.refused)
        integrity.raise_to("warning", f"{len(got.refused)} records about pgBackRest backups not genuine, not "
                           "counted: " + "; ".join(k for _, k, _ in got.refused[:3]))
    wal = None
    if rng is not None and rng.max_wal is not None and rng.newest_archived_at is not None:
        wal = {"name": rng.max_wal, "archived_at": rng.newest_archived_at.isoformat(), "where": WHERE,
               "_mtime": rng.newest_archived_at.timestamp()}
    return got.base, wal


def _level_table(entries: list[Any], now: datetime,
                 wrapped: dict[tuple[str, str], list[str]] | None = None) -> dict[str, Any]:
    """The newest backup at each level; `wrapped`: whom each epoch is wrapped for now (steps.encrypted.reading)."""
    from steps.repository.manifest import Level

    out: dict[str, Any] = {}
    for level in (Level.checksummed, Level.readable, Level.restored):
        e = next((x for x in entries if x.level >= level), None)  # newest first
        out[level.name] = None if e is None else {
            "backup_id": e.backup_id, "db": e.db or None, "cluster": e.cluster, "time": e.time.isoformat(),
            "age_s": round((now - e.time).total_seconds()), "level": e.level.name, "locations": e.locations(),
            "encrypted": {n: enc.model_dump(mode="json") | {"recipients_now": (wrapped or {}).get((n, enc.epoch))}
                          for n, enc in e.encrypted().items()}}
    return out


def _restore_record(entries: list[Any]) -> tuple[Any, Any] | None:
    """The newest passed `restored` record with a restore time among these entries (newest first)."""
    from steps.repository.manifest import Level

    best = None
    for e in entries:
        for copy in e.copies.values():
            r = copy.latest_record(Level.restored)
            if r is None or not r.passed or not r.timings.get("restore_s") or copy.failed is not None:
                continue
            if best is None or r.checked_at > best[1].checked_at:
                best = (e, r)
    return best


def gather(config: str | None, file: Path | None, *, explicit_file: bool, state_dir: Path,
           now: datetime | None = None, cluster: bool = True, allow_unsigned: bool = False,
           cluster_dir: str | None = None) -> Report:
    """The facts and verdicts of one cluster. `cluster_dir`: judge this cluster directory (system identifier) of
    the repository, without asking the cluster (a fleet's line for a directory no config's cluster claims,
    steps.proof.fleet); by default the directory of the cluster that answers, else the newest one."""
    from steps.repository.catalogue import scan
    from steps.repository.config import load_repository_config
    from steps.repository.manifest import Level
    from steps.repository.signing import trust_from_config

    rep = Report(now=now or datetime.now(UTC))
    try:
        rb, rep.runbook = _runbook_facts(file, explicit_file)
        cfg, path = load_repository_config(config)
        trust = trust_from_config(cfg, allow_unsigned=allow_unsigned)
    except RunbookError as e:
        rep.verdict, rep.error = "could not run", str(e)
        return rep
    path = path.absolute()
    rpo_s = float(rep.runbook["targets"]["rpo_s"])
    rto_s = float(rep.runbook["targets"]["rto_s"])
    stores = _open(cfg, rep)
    unreadable = {n: r["error"] for n, r in rep.repositories.items() if not r["ok"]}
    cat = scan(stores, trust=trust, kinds=("logical", "base")) if stores else None
    integrity = Verdict()
    if cat is not None:
        for n, err in cat.errors.items():
            rep.repositories[n] = {**rep.repositories.get(n, {}), "ok": False, "error": err}
            unreadable[n] = err
        rep.integrity = {"refused": [{"backup": r.describe(), "reason": r.reason} for r in cat.refused],
                         "refused_records": [f"{n}: {k}: {why}" for n, k, why in cat.refused_records],
                         "unsigned_accepted": cat.unsigned()}
        unsigned_refused = [r for r in cat.refused if r.reason.startswith("unsigned")]
        for r in cat.refused:
            if r not in unsigned_refused:
                integrity.raise_to("warning", f"{r.describe()} refused, not genuine: {r.reason}")
        if unsigned_refused:  # one line: a repository written before signing holds many
            integrity.raise_to("warning", f"{len(unsigned_refused)} unsigned backup copies refused (the newest: "
                               f"{unsigned_refused[0].describe()}): forged, or written before signing "
                               "(--allow-unsigned reads those)")
        if unsigned := cat.unsigned():
            integrity.raise_to("warning", f"{len(unsigned)} unsigned backups accepted because --allow-unsigned: "
                               + "; ".join(unsigned[:3]) + ("; ..." if len(unsigned) > 3 else ""))
    asked: list[Any] = []
    facts = _cluster(cfg, path, rpo_s, rep, asked) if cluster and cluster_dir is None else None
    if not cluster or cluster_dir is not None:
        rep.cluster = {"reachable": False, "error": "not asked (--no-cluster)" if cluster_dir is None else
                       f"not asked: cluster directory {cluster_dir} is judged from the repository alone"}
    sysid = (facts or {}).get("system_identifier") or cluster_dir
    # A logical recovery picks the newest backup of the database across cluster directories; PITR needs the
    # base backups of the cluster itself (the one that answers, else the newest cluster directory).
    logical = [e for e in (cat.entries if cat else []) if (not cfg.cluster.databases or e.db in cfg.cluster.databases)
               and (cluster_dir is None or e.cluster == cluster_dir)]
    engine_wal: dict[str, Any] | None = None
    if cfg.engine == "pgbackrest":  # the base backups and the WAL archive are pgBackRest's
        base, engine_wal = _pgbackrest_facts(cfg, stores, trust, facts, rep, unreadable, integrity,
                                             getattr(asked[0], "engine", None) if asked else None)
    else:
        base = [e for e in (cat.base if cat else []) if sysid is None or e.cluster == sysid]
    if cluster_dir is not None:
        base = [e for e in base if e.cluster == cluster_dir]
    if sysid is None and base:
        base = [e for e in base if e.cluster == base[0].cluster]  # the newest cluster directory
    wrapped: dict[tuple[str, str], list[str]] = {}
    if any(e.encrypted() for e in logical + base):
        from steps.encrypted.reading import recipients_now

        wrapped = recipients_now(stores, trust)
    rep.backups = {"logical": _level_table(logical, rep.now, wrapped), "base": _level_table(base, rep.now, wrapped)}
    rep.cluster_dir = sysid or (base[0].cluster if base else None)

    # --- RPO ---------------------------------------------------------------------------------------
    rpo = Verdict()
    info: dict[str, Any] = {"target_s": rpo_s}
    readable_base = next((e for e in base if e.level >= Level.readable), None)
    readable_logical = next((e for e in logical if e.level >= Level.readable), None)
    exposure: float | None = None
    wal_since_base: dict[str, Any] | None = None
    if readable_base is not None and (stores or engine_wal is not None):
        wal = engine_wal if cfg.engine == "pgbackrest" else _newest_wal(cfg, stores, readable_base.cluster)
        if wal is not None:
            wal_since_base = _wal_since(readable_base, wal["name"])
            mtime = wal.pop("_mtime")
            wal["age_s"] = round(rep.now.timestamp() - mtime, 1)
            info["newest_wal"] = wal
            exposure = max(rep.now.timestamp() - mtime, 0.0)
            info["basis"] = "archived WAL (point-in-time recovery from base backup " + readable_base.backup_id + ")"
            checks = (facts or {}).get("checks", {})
            archived = checks.get("archived_wal", {})
            if facts and "nothing at risk" in archived.get("detail", "") and rep.now <= datetime.now(UTC) + \
                    timedelta(seconds=60):
                exposure = 0.0  # the cluster has written nothing since the newest archived segment
        else:
            info["basis"] = "no WAL archived for the base backup's cluster"
    if exposure is None and readable_logical is not None:
        exposure = max((rep.now - readable_logical.time).total_seconds(), 0.0)
        info["basis"] = f"the newest readable logical backup ({readable_logical.backup_id}): no PITR possible"
    info["exposure_s"] = None if exposure is None else round(exposure, 1)
    if exposure is None:
        rpo.raise_to("red", "no readable backup and no archived WAL: a disaster now loses everything")
    elif exposure > rpo_s:
        rpo.raise_to("red", f"a disaster now loses up to {human(exposure)} of data; the target is {human(rpo_s)}")
    if readable_base is None:
        rpo.raise_to("warning" if exposure is not None and exposure <= rpo_s else "red",
                     "no readable base backup: point-in-time recovery is impossible")
    if facts:
        at = facts.get("archive_timeout_s")
        info["archive_timeout_s"] = at
        checks = facts.get("checks", {})
        info["archiver"] = checks.get("pg_stat_archiver")
        for name in ("archive_mode", "archive_command", "archive_timeout", "pg_stat_archiver", "archived_wal"):
            c = checks.get(name)
            if c and c["status"] in ("warning", "failed"):
                rpo.raise_to("red" if c["status"] == "failed" else "warning", f"{name}: {c['detail']}")
    else:
        rpo.raise_to("warning", "the cluster does not answer: archive_timeout and archiver errors unknown "
                     f"({rep.cluster.get('error', '')})".rstrip())
    info["verdict"], info["reasons"] = rpo.verdict, rpo.reasons
    rep.rpo = info

    # --- drills and the projected RTO --------------------------------------------------------------
    rto = Verdict()
    scenarios = list(rb.scenarios) if rb is not None and rb.scenarios else (["default"] if rb is not None else [])
    if rb is not None:
        from runbook.state import list_runs
        from steps.repository.run_summaries import merge, read_summaries

        refused_runs: list[str] = []
        runs = merge(list(list_runs(state_dir)), read_summaries(stores, trust, refused_runs))  # every host's
        if refused_runs:
            rep.integrity["refused_run_summaries"] = refused_runs
            integrity.raise_to("warning", f"{len(refused_runs)} run summaries in runs/ not genuine, not counted: "
                               + "; ".join(refused_runs[:3]))
        rep.drills = _drills(rb, scenarios, runs, rep.now, rto)
        for sc in scenarios:
            rep.projected[sc] = _project(rb, sc, runs, logical, base, facts, rto_s, rto, wal_since_base)
    else:
        rto.raise_to("warning", "no runbook file: no drills or projection to judge the RTO by")
    if readable_logical is None and readable_base is None:
        rto.raise_to("red", "no readable backup: there is nothing to recover from")
    rep.rto = {"target_s": rto_s, "verdict": rto.verdict, "reasons": rto.reasons}
    rep.integrity.update(verdict=integrity.verdict, reasons=integrity.reasons)
    rep.verdict = worst(rpo.verdict, rto.verdict, integrity.verdict)
    if unreadable:
        rep.verdict = "could not run"
        rep.error = "; ".join(f"the {n} repository cannot be read: {e}" for n, e in unreadable.items())
    return rep


def _drills(rb: Any, scenarios: list[str], runs: list[Any], now: datetime, rto: Verdict) -> list[dict[str, Any]]:
    from runbook.staleness import last_good_drills

    drills = last_good_drills(runs, now, scenarios={rb.name: scenarios})
    out = []
    for sc in scenarios:
        d = drills.get((rb.name, sc))
        if d is None:
            continue
        row = {"scenario": sc, "run_id": d.run_id, "mode": d.mode, "rto_s": d.rto_s,
               "ended_at": d.ended_at.isoformat() if d.ended_at else None,
               "age_days": None if d.age_days is None else round(d.age_days, 2), "stale": d.stale}
        target = rb.targets.rto.total_seconds()
        if d.run_id is None:
            rto.raise_to("warning", f"scenario {sc} was never drilled: its RTO is not proven")
        elif d.stale:
            rto.raise_to("warning", f"scenario {sc}: the last good drill is {d.age_text} old (stale after 30 days)")
        if d.rto_s is not None and d.rto_s > target:
            rto.raise_to("red", f"scenario {sc}: the last drill took {human(d.rto_s)}, over the target {human(target)}")
        out.append(row)
    return out


def _wal_since(entry: Any, newest: str) -> dict[str, Any] | None:
    """The WAL a PITR from `entry` (a base backup) to the newest archived segment replays: every segment from
    the one the backup starts in to the newest one archived (segment numbers run on across timelines)."""
    from steps.repository.layout import parse_wal_name

    m = entry.manifest
    try:
        first = parse_wal_name(m.start_wal).segno(m.wal_segment_size)
        last = parse_wal_name(newest).segno(m.wal_segment_size)
    except (ValueError, AttributeError):
        return None
    segments = max(last - first + 1, 0)
    return {"base_backup": entry.backup_id, "from": m.start_wal, "to": newest, "segments": segments,
            "bytes": segments * m.wal_segment_size}


# A replay shorter than this says more about the server's start than about its replay rate.
MIN_MEASURED_REPLAY_BYTES = 1 << 20
MIN_MEASURED_REPLAY_S = 0.05


def _replay_rate(base: list[Any]) -> tuple[float | None, str]:
    """WAL bytes per second, from the newest passed base verify-backup that measured a replay long enough to
    tell; else (None, why not)."""
    from steps.repository.manifest import Level

    best = None
    for e in base:
        for copy in e.copies.values():
            r = copy.latest_record(Level.restored)
            if r is None or not r.passed or r.wal_replayed_bytes is None or r.wal_replay_s is None:
                continue
            if best is None or r.checked_at > best[1].checked_at:
                best = (e, r)
    if best is None:
        return None, "no base verify-backup has measured a WAL replay yet"
    e, r = best
    if r.wal_replayed_bytes < MIN_MEASURED_REPLAY_BYTES or r.wal_replay_s < MIN_MEASURED_REPLAY_S:
        return None, (f"the last base verify-backup ({e.backup_id}, {r.checked_at:%Y-%m-%d}) replayed only "
                      f"{r.wal_replayed_bytes / 1e3:.0f} kB in {r.wal_replay_s:.2f} s, too little to measure a rate")
    rate = r.wal_replayed_bytes / r.wal_replay_s
    return rate, (f"replay rate {rate / 1e6:.1f} MB/s measured by verify-backup of {e.backup_id} on "
                  f"{r.checked_at:%Y-%m-%d} ({r.host}): {r.wal_replayed_bytes / 1e6:.1f} MB in {r.wal_replay_s:.2f} s")


def _project_replay(scenario: str, base: list[Any], wal: dict[str, Any] | None, out: dict[str, Any],
                    rto: Verdict) -> float:
    """Seconds of WAL replay a PITR started now adds; the basis and any doubt go into `out` and `rto`."""
    if wal is None:
        out["basis"] += "; no WAL archived since the base backup was found: no replay counted"
        return 0.0
    out["wal_since_base"] = wal
    rate, why = _replay_rate(base)
    if rate is None:
        out["basis"] += (f"; the replay of {wal['bytes'] / 1e6:.0f} MB of WAL archived since base backup "
                         f"{wal['base_backup']} is NOT counted: {why}")
        rto.raise_to("warning", f"scenario {scenario}: the WAL replay time is not known ({why}); run "
                     "`runbook verify-backup --kind base` after a day of writes")
        return 0.0
    replay_s = wal["bytes"] / rate
    out["wal_replay_s"] = round(replay_s, 1)
    out["basis"] += (f"; WAL replay {human(replay_s)}: {wal['segments']} segments ({wal['bytes'] / 1e6:.0f} MB) "
                     f"archived since base backup {wal['base_backup']}, {why}")
    return replay_s


def _project(rb: Any, scenario: str, runs: list[Any], logical: list[Any], base: list[Any],
             facts: dict[str, Any] | None, target: float, rto: Verdict,
             wal_since_base: dict[str, Any] | None = None) -> dict[str, Any]:
    """The RTO of a recovery started now: the restore from the last test restore, scaled to today's size, plus,
    for a PITR, the replay of the WAL archived since the base backup at the replay rate the last base
    verify-backup measured, plus every other step's expected duration learned from earlier runs on every host
    (the repository's runs/)."""
    from runbook.history import expected_durations
    from runbook.state import RunState

    steps = rb.steps_for(scenario, "live")
    end = next((i for i, s in enumerate(steps) if s.rto_end), len(steps) - 1)
    steps = steps[: end + 1]
    declared = {s.id: s.expect_duration.total_seconds() for s in rb.steps if s.expect_duration}
    mine = [r for r in runs if isinstance(r, RunState) and r.runbook_name == rb.name]
    expected = expected_durations(mine, declared)
    restore_steps = [s for s in steps if s.action in RESTORE_ACTIONS]
    others = [s for s in steps if s not in restore_steps]
    # A checklist acknowledged with --yes in an unattended drill took no time; people will need what it declares.
    other_s = sum(max(expected.get(s.id, 0.0), declared.get(s.id, 0.0)) if s.kind == "manual"
                  else expected.get(s.id, 0.0) for s in others)
    unknown = [s.id for s in others if s.id not in expected and s.kind != "manual"]
    out: dict[str, Any] = {"other_steps_s": round(other_s, 1), "unknown_steps": unknown, "restore_s": None,
                           "basis": None, "total_s": None}
    restore_s = 0.0
    for s in restore_steps:
        kind = RESTORE_ACTIONS[str(s.action)]
        found = _restore_record(logical if kind == "logical" else base)
        if found is None:
            rto.raise_to("warning", f"scenario {scenario}: no verified test restore of a {kind} backup "
                         "(`runbook verify-backup`" + (" --kind base" if kind == "base" else "") + "): the "
                         "restore time is not known")
            out["basis"] = f"no verified {kind} restore"
            return out
        entry, record = found
        measured = float(record.timings["restore_s"])
        size_then = record.restored_size_bytes or entry.size_bytes
        size_now = None
        if facts:
            if kind == "logical":
                size_now = (facts.get("database_size_bytes") or {}).get(entry.db)
            else:
                size_now = facts.get("cluster_size_bytes")
        scale = (size_now / size_then) if size_now and size_then else 1.0
        restore_s += measured * scale
        out["basis"] = (f"verify-backup of {entry.kind} backup {entry.backup_id} on {record.checked_at:%Y-%m-%d} "
                        f"({record.host}): restore {measured:.1f} s at {size_then / 1e6:.1f} MB"
                        + (f", scaled x{scale:.2f} to today's {size_now / 1e6:.1f} MB" if size_now else
                           " (today's size unknown: not scaled)"))
        if kind == "base":
            restore_s += _project_replay(scenario, base, wal_since_base, out, rto)
    out["restore_s"] = round(restore_s, 1)
    total = other_s + restore_s
    out["total_s"] = round(total, 1)
    if total > target:
        rto.raise_to("red", f"scenario {scenario}: a recovery started now is projected at {human(total)}, over the "
                     f"target {human(target)}")
    return out
