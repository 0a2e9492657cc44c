"""`runbook status --all`: one verdict per cluster of a fleet, from the same per-cluster facts as `status`.

A **fleet** is a set of repository configs: every `*.yaml`/`*.yml` file of a directory (`-c DIR`, or the
runbook's `fleet:`), or a single config. Each config is one line, named after its file (`billing.yaml` is
`billing`), judged by `steps.proof.status.gather` exactly as `runbook status -c FILE` judges it. One repository
may hold several cluster directories (`clusters/<system identifier>/`, steps.repository.layout): a directory that
no config's cluster claims (the cluster that answers has another identifier, or no config names it) is a line
of its own, named `<config>/<system identifier>`, judged from the repository alone (a name there that is not a
system identifier, 1 to 20 digits, is not read).

- A config that cannot be read is a line with the verdict `could not run` and the reason; the others still show.
- A cluster that does not answer is `red` here (a fleet view that cannot see a cluster cannot vouch for it; the
  single-cluster `status` calls it a warning because it shows the repository facts beside it).
- The fleet's verdict, and the exit code, is the worst line's (0 ok, 1 warning, 2 red, 3 could not run); an empty
  fleet (no config found) could not run.

The lines are gathered in parallel threads (each one mostly waits on a connection or a repository). Two
machine-readable forms are documented in docs/commands.md and kept stable: `as_json` (schema version 1) and
`openmetrics` (the OpenMetrics text format, which node_exporter's textfile collector and a Prometheus scrape read).
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from steps.proof.status import EXIT, Report, gather, worst

SCHEMA_VERSION = 1
CONFIG_SUFFIXES = (".yaml", ".yml")
MAX_THREADS = 8
SYSID = re.compile(r"[0-9]{1,20}")  # a system identifier: what a cluster directory is named


@dataclass
class Line:
    """One cluster of the fleet, as the table, the JSON and the metrics show it."""

    name: str
    config: str
    verdict: str
    cluster_dir: str | None = None  # the system identifier judged, when known
    reachable: bool | None = None  # None: not asked (a directory judged from the repository alone)
    rpo_exposure_s: float | None = None
    rpo_target_s: float | None = None
    verified_restore: dict[str, Any] | None = None  # the newest backup a test restore proved: kind, id, age
    last_drill: dict[str, Any] | None = None  # the newest good live or drill run: scenario, run id, age, RTO
    projected_rto_s: float | None = None  # the slowest scenario's projection (None: not known)
    projected: dict[str, float | None] = field(default_factory=dict)  # per scenario
    rto_target_s: float | None = None
    reasons: list[str] = field(default_factory=list)  # why not ok, most serious first
    error: str | None = None  # why it could not be judged at all

    @property
    def exit_code(self) -> int:
        return EXIT[self.verdict]

    @property
    def why(self) -> str:
        """The first reason it is not ok ('' when it is)."""
        if self.error:
            return self.error
        return self.reasons[0] if self.reasons else ""

    def as_json(self) -> dict[str, Any]:
        return {"name": self.name, "config": self.config, "cluster_dir": self.cluster_dir,
                "reachable": self.reachable, "verdict": self.verdict, "exit_code": self.exit_code,
                "rpo_exposure_s": self.rpo_exposure_s, "rpo_target_s": self.rpo_target_s,
                "newest_verified_restore": self.verified_restore, "last_drill": self.last_drill,
                "projected_rto_s": self.projected_rto_s, "projected_rto_by_scenario": self.projected,
                "rto_target_s": self.rto_target_s, "reasons": self.reasons, "error": self.error}


@dataclass
class Fleet:
    now: datetime
    source: str  # the directory (or the config) the fleet was read from
    lines: list[Line] = field(default_factory=list)
    error: str | None = None  # the fleet itself could not be read (no such directory, no config in it)

    @property
    def verdict(self) -> str:
        if self.error:
            return "could not run"
        return worst(*(ln.verdict for ln in self.lines))

    @property
    def exit_code(self) -> int:
        return EXIT[self.verdict]

    def as_json(self) -> dict[str, Any]:
        counts = {v: sum(1 for ln in self.lines if ln.verdict == v) for v in EXIT}
        return {"schema": SCHEMA_VERSION, "generated_at": self.now.isoformat(), "source": self.source,
                "verdict": self.verdict, "exit_code": self.exit_code, "error": self.error, "counts": counts,
                "clusters": [ln.as_json() for ln in self.lines]}


# --- the configs of a fleet -----------------------------------------------------------------------------------


def configs_of(source: Path) -> list[Path]:
    """The repository configs of a fleet: every `*.yaml`/`*.yml` file directly in `source` (hidden files and
    sub-directories are not read), sorted by name; or `source` itself when it is a file. Raises FileNotFoundError
    (naming it) when there is nothing there."""
    if source.is_dir():
        return sorted(p for p in source.iterdir() if p.suffix in CONFIG_SUFFIXES and not p.name.startswith(".")
                      and p.is_file())
    if source.is_file():
        return [source]
    raise FileNotFoundError(f"{source} is neither a directory of repository configs nor a config file")


# --- one line from one report -------------------------------------------------------------------------------


def _reasons(rep: Report) -> list[str]:
    """Every reason of the report, the most serious first ('red: ...' before 'warning: ...')."""
    found = [*rep.rpo.get("reasons", []), *rep.rto.get("reasons", []), *rep.integrity.get("reasons", [])]
    order = {"could not run": 0, "red": 1, "warning": 2}
    return sorted(found, key=lambda r: order.get(r.split(":", 1)[0], 3))


def line_from(name: str, config: str, rep: Report, *, asked_cluster: bool) -> Line:
    targets = rep.runbook.get("targets", {})
    ln = Line(name=name, config=config, verdict=rep.verdict, cluster_dir=rep.cluster_dir,
              rpo_target_s=targets.get("rpo_s"), rto_target_s=targets.get("rto_s"), error=rep.error)
    if rep.verdict == "could not run" and not rep.repositories:
        return ln  # nothing was looked at (the config, or the runbook, could not be read)
    ln.reachable = bool(rep.cluster.get("reachable")) if asked_cluster else None
    ln.rpo_exposure_s = rep.rpo.get("exposure_s")
    restored = [(kind, levels["restored"]) for kind, levels in rep.backups.items() if levels.get("restored")]
    if restored:
        kind, b = min(restored, key=lambda kb: kb[1]["age_s"])
        ln.verified_restore = {"kind": kind, "backup_id": b["backup_id"], "time": b["time"], "age_s": b["age_s"]}
    drilled = [d for d in rep.drills if d.get("run_id") and d.get("ended_at")]
    if drilled:
        d = max(drilled, key=lambda d: d["ended_at"])
        ended = datetime.fromisoformat(d["ended_at"])
        ln.last_drill = {"scenario": d["scenario"], "run_id": d["run_id"], "ended_at": d["ended_at"],
                         "age_s": round((rep.now - ended).total_seconds()), "rto_s": d["rto_s"], "stale": d["stale"]}
    ln.projected = {sc: p.get("total_s") for sc, p in rep.projected.items()}
    known = [t for t in ln.projected.values() if t is not None]
    ln.projected_rto_s = max(known) if known and len(known) == len(ln.projected) else None
    ln.reasons = _reasons(rep)
    if asked_cluster and not ln.reachable and ln.verdict != "could not run":
        error = " ".join(str(rep.cluster.get("error") or "unknown why").split())
        ln.verdict = worst(ln.verdict, "red")
        reds = sum(1 for r in ln.reasons if r.startswith("red:"))
        ln.reasons.insert(reds, f"red: the cluster does not answer: {error}")
    return ln


# --- the fleet ----------------------------------------------------------------------------------------------------


def _safe(job: Callable[[], Report], now: datetime) -> Report:
    """A line never takes the fleet down: anything unexpected becomes its `could not run` with the reason."""
    from runbook.errors import RunbookError

    try:
        return job()
    except RunbookError as e:
        return Report(now=now, verdict="could not run", error=str(e))
    except Exception as e:  # noqa: BLE001 - one cluster's surprise is that line's error, not a traceback
        text = str(e).strip().splitlines()[0] if str(e).strip() else ""
        return Report(now=now, verdict="could not run", error=f"{type(e).__name__}: {text}".rstrip(": "))


def gather_fleet(source: Path, file: Path | None, *, explicit_file: bool, state_dir: Path,
                 now: datetime | None = None, cluster: bool = True, allow_unsigned: bool = False,
                 threads: int = MAX_THREADS) -> Fleet:
    now = now or datetime.now(UTC)
    fleet = Fleet(now=now, source=str(source))
    try:
        configs = configs_of(source)
    except OSError as e:
        fleet.error = str(e)
        return fleet
    if not configs:
        fleet.error = f"no repository config (*.yaml, *.yml) in {source}"
        return fleet

    # What every line imports, imported once before the threads start (not eight threads in the import lock).
    import steps.engines.pgbackrest.records  # noqa: F401
    import steps.proof.check  # noqa: F401
    import steps.repository.catalogue  # noqa: F401
    import steps.repository.config  # noqa: F401
    import steps.wal.store  # noqa: F401

    def one(cfg: Path, cluster_dir: str | None = None) -> Callable[[], Report]:
        return lambda: gather(str(cfg), file, explicit_file=explicit_file, state_dir=state_dir, now=now,
                              cluster=cluster, allow_unsigned=allow_unsigned, cluster_dir=cluster_dir)

    with ThreadPoolExecutor(max_workers=max(1, min(threads, len(configs)))) as pool:
        reports = list(pool.map(lambda c: _safe(one(c), now), configs))
        # Cluster directories of each repository that no line has judged: a line each, from the repository alone.
        covered: set[tuple[str, str]] = set()
        for rep in reports:
            for r in rep.repositories.values():
                if not r.get("ok"):
                    continue
                if rep.cluster_dir:
                    covered.add((r["where"], rep.cluster_dir))
                elif len(r.get("clusters", [])) == 1:  # nothing to tell it by: the config's line is its only one
                    covered.add((r["where"], r["clusters"][0]))
        extra: dict[tuple[str, str], Path] = {}
        for cfg, rep in zip(configs, reports, strict=True):
            for r in rep.repositories.values():
                for sysid in r.get("clusters", []) if r.get("ok") else []:
                    if not SYSID.fullmatch(sysid):  # the repository is hostile input: only identifiers are read
                        continue
                    key = (r["where"], sysid)
                    # one line per directory: a config's local and s3 copies of one directory are one cluster
                    if key not in covered and key not in extra and (cfg, sysid) not in {
                            (c, k[1]) for k, c in extra.items()}:
                        extra[key] = cfg
        extra_reports = list(pool.map(lambda kv: _safe(one(kv[1], kv[0][1]), now), extra.items()))
    for cfg, rep in zip(configs, reports, strict=True):
        fleet.lines.append(line_from(cfg.stem, str(cfg.absolute()), rep, asked_cluster=cluster))
    for ((_, sysid), cfg), rep in zip(extra.items(), extra_reports, strict=True):
        fleet.lines.append(line_from(f"{cfg.stem}/{sysid}", str(cfg.absolute()), rep, asked_cluster=False))
    return fleet


# --- OpenMetrics -----------------------------------------------------------------------------------------------

# name, help, what of a line; every one a gauge in seconds but the verdict.
METRICS: list[tuple[str, str, Callable[[Line], float | None]]] = [
    ("runbook_rpo_exposure_seconds", "Committed data a disaster now would lose (NaN: unknown, no backup)",
     lambda ln: ln.rpo_exposure_s),
    ("runbook_rpo_target_seconds", "The runbook's RPO target", lambda ln: ln.rpo_target_s),
    ("runbook_newest_verified_restore_age_seconds",
     "Age of the newest backup a test restore (verify-backup) proved (NaN: none)",
     lambda ln: None if ln.verified_restore is None else ln.verified_restore["age_s"]),
    ("runbook_last_drill_age_seconds", "Time since the last good live or drill run ended (NaN: never)",
     lambda ln: None if ln.last_drill is None else ln.last_drill["age_s"]),
    ("runbook_projected_rto_seconds", "Projected RTO of a recovery started now, slowest scenario (NaN: unknown)",
     lambda ln: ln.projected_rto_s),
    ("runbook_rto_target_seconds", "The runbook's RTO target", lambda ln: ln.rto_target_s),
]
VERDICT_METRIC = "runbook_verdict"


def _label(value: str) -> str:
    return value.replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')


def _number(value: float | None) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "NaN"
    return repr(float(value))


def openmetrics(fleet: Fleet) -> str:
    """The fleet in the OpenMetrics text format: gauges labelled `cluster` (the line's name) and `config` (its
    repository config), `runbook_verdict` as the exit code's number, and the time it was gathered."""
    out: list[str] = []
    labels = [f'cluster="{_label(ln.name)}",config="{_label(ln.config)}"' for ln in fleet.lines]
    for name, text, value in METRICS:
        out += [f"# TYPE {name} gauge", f"# UNIT {name} seconds", f"# HELP {name} {text}."]
        out += [f"{name}{{{lab}}} {_number(value(ln))}" for ln, lab in zip(fleet.lines, labels, strict=True)]
    out += [f"# TYPE {VERDICT_METRIC} gauge",
            f"# HELP {VERDICT_METRIC} The cluster's verdict: 0 ok, 1 warning, 2 red, 3 could not run."]
    out += [f"{VERDICT_METRIC}{{{lab}}} {ln.exit_code}" for ln, lab in zip(fleet.lines, labels, strict=True)]
    out += ["# TYPE runbook_fleet_verdict gauge",
            "# HELP runbook_fleet_verdict The worst verdict of the fleet (the exit code of status --all).",
            f"runbook_fleet_verdict {fleet.exit_code}",
            "# TYPE runbook_status_generated_timestamp_seconds gauge",
            "# UNIT runbook_status_generated_timestamp_seconds seconds",
            "# HELP runbook_status_generated_timestamp_seconds When these facts were gathered.",
            f"runbook_status_generated_timestamp_seconds {fleet.now.timestamp():.3f}", "# EOF"]
    return "\n".join(out) + "\n"
