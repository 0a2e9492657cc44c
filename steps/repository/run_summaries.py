"""Run summaries in the repository: `runs/<run id>.json`, so that every host sees every drill.

Every live or drill run that closes writes its summary (runbook, scenario, mode, status, times, measured RTO
and its target, the RPO facts, operator and host, when protection was restored, and each step's outcome and
duration, which the projected RTO of every host learns from) into each configured
repository; `runbook status` reads them beside the local state directory's runs, so a drill run on another
host counts for staleness and for the RTO verdict. Writing never fails a run: a problem is returned, and the
session journals nothing after the run closed (the summary is a copy of what the journal holds).

A summary is signed like a manifest (`runs/<run id>.json.sig`, steps.repository.signing) with the writing host's
key (signing.private_key); a host without one writes it unsigned and says so. `read_summaries` keeps only
genuine summaries (unsigned ones too with `allow_unsigned`): a forged drill cannot make a stale RTO look proven.
"""

from __future__ import annotations

import json
from datetime import datetime
from typing import TYPE_CHECKING, Any

from runbook.events import StepStatus
from runbook.state import RunState, StepState

if TYPE_CHECKING:
    from steps.repository.signing import Signer, Trust

PREFIX = "runs/"


def summary(st: RunState) -> dict[str, Any]:
    from runbook.report import rpo_facts, rto_facts

    now = st.ended_at or datetime.now().astimezone()
    rto = rto_facts(st, now)
    rpo = rpo_facts(st)

    def t(d: datetime | None) -> str | None:
        return d.isoformat() if d else None

    return {
        "format_version": 1, "run_id": st.run_id, "runbook": st.runbook_name, "scenario": st.scenario,
        "mode": st.mode, "status": st.status, "target": st.target, "incident_start": t(st.incident_start),
        "data_lost_at": t(st.data_lost_at), "started_at": t(st.started_at), "ended_at": t(st.ended_at),
        "rto_end_at": t(st.rto_end_at), "rto_s": rto.achieved_s, "rto_target_s": st.targets.get("rto_s"),
        "rto_verdict": rto.verdict, "rpo_target_s": st.targets.get("rpo_s"),
        "rpo_window_s": rpo.window_s if rpo else None, "recovery_point": t(rpo.recovery_point) if rpo else None,
        "protected_at": t(rto.protected_at), "operator": st.operator,
        "steps": {sid: {"status": s.status.value, "duration_s": s.duration_s, "rehearsed": s.rehearsed}
                  for sid in st.order if (s := st.steps.get(sid)) is not None},
    }


def write(stores: list[Any], st: RunState, signer: Signer | None) -> list[str]:
    """Store the summary in every repository (replacing this run's own earlier one), signed by `signer` (None:
    unsigned, which is returned as a problem); returns problems."""
    from steps.repository.signing import SIG_SUFFIX
    from steps.repository.store import ObjectExists

    data = (json.dumps(summary(st), indent=2) + "\n").encode()
    key = f"{PREFIX}{st.run_id}.json"
    problems = [] if signer is not None else [
        f"{key} written unsigned: this host has no signing.private_key; other hosts ignore it unless --allow-unsigned"]

    def put(store: Any) -> None:
        if signer is not None:
            signer.put(store, key, data)
        else:
            store.put_bytes(key, data)

    for store in stores:
        try:
            try:
                put(store)
            except ObjectExists:  # a failed run reopened and closed again: its own summary, replaced
                store.delete([key, key + SIG_SUFFIX])
                put(store)
        except Exception as e:  # noqa: BLE001 - a summary never fails a run
            problems.append(f"{store.describe()}: {e}")
    return problems


def from_summary(data: dict[str, Any]) -> RunState:
    """A RunState as staleness, status and the projection read it: steps with their outcome and duration only
    (summaries written before they carried steps have none), no events."""

    def t(key: str) -> datetime | None:
        v = data.get(key)
        return datetime.fromisoformat(v) if isinstance(v, str) and v else None

    targets = {k: float(data[f"{k}_target_s"]) for k in ("rto", "rpo") if data.get(f"{k}_target_s") is not None}
    return RunState(run_id=str(data["run_id"]), runbook_name=str(data.get("runbook", "")),
                    scenario=str(data.get("scenario", "")), mode=str(data.get("mode", "")),
                    target=str(data.get("target", "")), incident_start=t("incident_start"),
                    data_lost_at=t("data_lost_at"), started_at=t("started_at"), ended_at=t("ended_at"),
                    rto_end_at=t("rto_end_at"), status=str(data.get("status", "")),
                    operator=dict(data.get("operator") or {}),
                    targets={f"{k}_s": v for k, v in targets.items()}, steps=_steps(data.get("steps")))


def _steps(data: Any) -> dict[str, StepState]:
    out: dict[str, StepState] = {}
    for sid, s in (data or {}).items() if isinstance(data, dict) else ():
        try:
            dur = s.get("duration_s")
            out[str(sid)] = StepState(id=str(sid), status=StepStatus(s.get("status")),
                                      duration_s=float(dur) if dur is not None else None,
                                      rehearsed=bool(s.get("rehearsed")))
        except (AttributeError, TypeError, ValueError):
            continue  # a step this reader cannot make sense of teaches nothing
    return out


def read_summaries(stores: list[Any], trust: Trust, refused: list[str] | None = None) -> list[RunState]:
    """Every genuine run summary in these repositories (each run once); unreadable ones are skipped, those that
    are not genuine too, named in `refused` (with the reason) when it is given."""
    from steps.repository.signing import SIG_SUFFIX

    seen: dict[str, RunState] = {}
    for store in stores:
        try:
            listed = {k for k, _ in store.list_keys(PREFIX)}
        except Exception:  # noqa: BLE001 - the repository's own errors are reported by status
            continue
        # runs/<run id>.json only: runs/<run id>/ holds the journal's mirror (steps.mirror), no summary
        for key in sorted(k for k in listed if k.endswith(".json") and "/" not in k[len(PREFIX):]):
            try:
                data = store.get_bytes(key)
                verdict = trust.read(store, key, data, key + SIG_SUFFIX in listed)
                if not verdict.accepted:
                    if refused is not None:
                        refused.append(f"{store.name}: {key}: {verdict.reason}")
                    continue
                st = from_summary(json.loads(data))
            except Exception:  # noqa: BLE001 - a summary that cannot be read vouches for nothing
                continue
            seen.setdefault(st.run_id, st)
    return list(seen.values())


def merge(local: list[Any], remote: list[RunState]) -> list[Any]:
    """This host's runs (the full state) first; a remote summary only for runs this host does not have."""
    have = {r.run_id for r in local if isinstance(r, RunState)}
    return list(local) + [r for r in remote if r.run_id not in have]
