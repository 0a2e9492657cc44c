"""status: `runbook status` as a runbook step, at the start of a recovery: what the backups allow now.

Would we make it now? The RPO exposure (the newest archived WAL, or the newest readable logical backup), whether
archiving works (the cluster asked when it answers), the newest backups and the projected RTO, judged against
the runbook's targets (steps.proof.status). Each verdict is a check (`rpo`, `rto`; red is `failed`) with its
reasons, so the journal keeps what the operator was shown before choosing how to recover; a repository that
cannot be read is a failed check `status` (could not run), with what could be gathered shown all the same. The
step shows, it does not decide: it succeeds whatever the verdict (exit 0).
"""

from __future__ import annotations

from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field, field_validator

from runbook.errors import RunbookError
from steps.events import Events

STATUS = {"ok": "ok", "warning": "warning", "red": "failed"}


class Args(BaseModel):
    model_config = ConfigDict(extra="forbid")
    config: str = Field(min_length=1, description="The repository config")
    runbook: str | None = Field(None, description="The runbook whose targets are judged (the run's own copy: "
                                "{{ run.dir }}/runbook.yaml)")
    state_dir: str | None = Field(None, description="Where this host's runs are (the drills counted): "
                                  "{{ run.state_dir }}")
    cluster: bool = Field(True, description="Ask the cluster too (archive_command, pg_stat_archiver) when it "
                          "answers")

    @field_validator("runbook", "state_dir", mode="before")
    @classmethod
    def _empty_is_none(cls, v: object) -> object:
        return None if v == "" else v


def main(args: Args, events: Events) -> int:
    from runbook.paths import state_home
    from steps.proof import status

    try:
        rep = status.gather(args.config, Path(args.runbook) if args.runbook else None,
                            explicit_file=args.runbook is not None,
                            state_dir=Path(args.state_dir) if args.state_dir else state_home(), cluster=args.cluster)
    except RunbookError as e:
        events.check("status", "failed", f"could not run: {e.message}")
        events.output("verdict", "could not run")
        print(f"status: could not run: {e}")
        return 0
    if rep.verdict == "could not run":  # a repository could not be read: what was gathered is shown all the same
        events.check("status", "failed", f"could not run: {rep.error or 'see runbook status'}")
        print(f"status: could not run: {rep.error}")
    else:
        print(rep.one_line())
    for name, part in (("rpo", rep.rpo), ("rto", rep.rto)):
        if not part:
            continue
        verdict = str(part.get("verdict", "ok"))
        reasons = [str(r) for r in part.get("reasons", [])]
        basis = part.get("basis")
        if basis:
            print(f"{name.upper()} basis: {basis}")
        for r in reasons:
            print(f"  - {r}")
        events.check(name, STATUS.get(verdict, "warning"), "; ".join(reasons) or verdict)
    newest = rep.rpo.get("newest_wal")
    if isinstance(newest, dict) and newest.get("name"):
        print(f"newest archived WAL: {newest['name']}, {status.human(newest.get('age_s'))} ago ({newest.get('where')})")
        events.output("newest_wal_age_s", newest.get("age_s"))
    events.output("verdict", rep.verdict)
    events.output("rpo_exposure_s", rep.rpo.get("exposure_s"))
    return 0
