"""Opening a run: a new one from a runbook file and flags, or a resumed one from its journal.

Everything that can be wrong (the file, a parameter, the secrets file, the lock, the journal) is checked
here, before the engine exists, so nothing runs on bad input. Live and drill runs take the local lock
(runbook.lock) and, when the runbook (or the profile) names a repository, the recovery lock in it
(steps.repository.recovery_lock: `locks/<target>.json`, seen by every host); both are released when the run closes.
"""

from __future__ import annotations

import contextlib
import difflib
import getpass
import hashlib
import json
import os
import secrets as pysecrets
import shutil
import socket
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any, Literal

from pydantic import Field

from runbook import __version__
from runbook.clock import Clock, iso, parse_iso
from runbook.engine import Engine, RunContext
from runbook.errors import RunbookError, UsageError
from runbook.history import expected_durations, past_runs
from runbook.journal import Journal
from runbook.loader import load_model, load_runbook
from runbook.lock import Holder, RunLock
from runbook.model import Runbook, Secrets, Strict
from runbook.params import coerce, resolve, to_text
from runbook.redact import MASK, Redactor
from runbook.requests import ensure_requests_dir
from runbook.secrets import LoadedSecrets, load_secrets
from runbook.state import CLOSED, load_state, run_dir
from runbook.templating import render

MODES = ("live", "drill", "rehearsal")


class Profile(Strict):
    """One environment's values for a runbook (e.g. the sandbox's): `runbook run --profile FILE`."""

    version: Literal[1] = 1
    description: str = ""
    mode: Literal["live", "drill", "rehearsal"] | None = None
    scenario: str | None = None
    params: dict[str, Any] = Field(default_factory=dict)
    env: dict[str, str] = Field(default_factory=dict, description="Non-secret environment, e.g. PGHOST")
    secrets_env_file: str | None = Field(
        None, description="This environment's secrets file (mode 0600), instead of the runbook's secrets.env_file")
    repository: str | None = None


@dataclass
class RunOptions:
    runbook_path: Path = Path("runbook.yaml")
    scenario: str | None = None
    mode: str | None = None
    sets: dict[str, str] = field(default_factory=dict)
    profile: Path | None = None
    incident_start: str | None = None
    data_lost_at: str | None = None
    state_dir: Path | None = None
    break_lock: bool = False
    approver_policy: str | None = None  # None: the runbook's rules; "none" | "other" (runbook.engine.needs_approval)
    # A game day (runbook demo --fault): its id and seed, journaled as a `game-day` event after run-started; never
    # the faults (the operator is not told before the debrief).
    game_day: dict[str, Any] | None = None


def operator() -> dict[str, Any]:
    try:
        user = getpass.getuser()
    except (KeyError, OSError):
        user = str(os.getuid())
    return {"user": user, "host": socket.gethostname(), "pid": os.getpid()}


def new_run_id(clock: Clock, scenario: str) -> str:
    return f"{clock.now():%Y%m%dT%H%M%SZ}-{scenario}-{pysecrets.token_hex(2)}"


def parse_when(text: str | None, flag: str, default: datetime) -> datetime:
    if not text:
        return default
    try:
        return parse_iso(text.replace("Z", "+00:00") if text.endswith("Z") else text)
    except ValueError as e:
        raise UsageError(f"{flag} {text!r}: {e}", hint="give ISO 8601 with a zone, e.g. 2026-11-25T03:10:00+07:00") from None


def pick_scenario(rb: Runbook, wanted: str | None) -> str:
    names = list(rb.scenarios)
    if not names:
        return wanted or "default"
    if wanted is None:
        if len(names) == 1:
            return names[0]
        raise UsageError(f"choose a scenario with --scenario: {', '.join(names)}")
    if wanted not in names:
        close = difflib.get_close_matches(wanted, names, n=1)
        hint = f' (did you mean "{close[0]}"?)' if close else ""
        raise UsageError(f'unknown scenario "{wanted}"{hint}; this runbook has: {", ".join(names)}')
    return wanted


def _secret_params(rb: Runbook, params: dict[str, Any]) -> list[str]:
    return [to_text(v) for k, v in params.items() if k in rb.params and rb.params[k].secret and to_text(v)]


def _shown_params(rb: Runbook, params: dict[str, Any]) -> dict[str, str]:
    """The params as the journal shows them (display only: a secret param is `MASK`, and the journal's
    redactor masks a secret's text inside the others). Never read back as values."""
    return {k: (MASK if rb.params[k].secret else to_text(v)) for k, v in params.items() if k in rb.params}


def _origin(rb: Runbook, name: str, value: Any, profile: Profile, sets: dict[str, str]) -> str:
    """Where a value comes from, for a resume that must find it again: `default`, `profile` or `--set`."""
    p = rb.params[name]
    try:
        if p.default is not None and coerce(name, p, p.default) == value:
            return "default"
    except ValueError:
        pass
    return "profile" if name in profile.params and name not in sets else "--set"


def saved_params(rb: Runbook, params: dict[str, Any], redactor: Redactor, profile: Profile,
                 sets: dict[str, str]) -> dict[str, Any]:
    """What `params.json` holds: the real text of every param that is no secret and holds no secret's text
    (`values`), and for the others only where to find them again (`not_saved`). No secret, and no masked copy
    standing in for a real value, is ever written."""
    values: dict[str, str] = {}
    not_saved: dict[str, dict[str, str]] = {}
    for name, value in params.items():
        if name not in rb.params:
            continue
        text = to_text(value)
        if rb.params[name].secret or redactor.redact(text) != text:
            why = "secret" if rb.params[name].secret else "contains a secret"
            not_saved[name] = {"why": why, "from": _origin(rb, name, value, profile, sets)}
        else:
            values[name] = text
    return {"values": values, "not_saved": not_saved}


def _save_sets(rdir: Path, rb: Runbook, params: dict[str, Any], redactor: Redactor, names: list[str]) -> None:
    """`params.json` updated with the values `resume --set` gave (the rules of `saved_params`: no secret, nor a
    value holding one, is written), so that a later resume goes on with them."""
    path = rdir / "params.json"
    try:
        saved = json.loads(path.read_text())
    except (OSError, ValueError):
        return
    if not isinstance(saved, dict) or not isinstance(saved.get("values"), dict):
        return
    values, not_saved = saved["values"], dict(saved.get("not_saved") or {})
    for name in names:
        text = to_text(params.get(name))
        if rb.params[name].secret or redactor.redact(text) != text:
            values.pop(name, None)
            not_saved[name] = {"why": "secret" if rb.params[name].secret else "contains a secret", "from": "--set"}
        else:
            values[name] = text
            not_saved.pop(name, None)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps({**saved, "values": values, "not_saved": not_saved}, indent=2) + "\n")
    os.replace(tmp, path)


def _reloaded_params(rb: Runbook, rdir: Path, st: Any, sets: dict[str, str]) -> dict[str, Any]:
    """The given values of a resumed run: the real values `params.json` saved, the ones it could not save found
    again (a default from the run's copy of the runbook, the profile file re-read, or `--set` now), then `sets`.
    Raises UsageError naming every value that must be given again."""
    try:
        saved = json.loads((rdir / "params.json").read_text())
    except (OSError, ValueError):
        saved = None
    if isinstance(saved, dict) and isinstance(saved.get("values"), dict):
        given: dict[str, Any] = dict(saved["values"])
        not_saved: dict[str, Any] = dict(saved.get("not_saved") or {})
    else:  # a run started before params.json held real values: its masked copies are no values
        old = saved if isinstance(saved, dict) else st.params
        given = {k: v for k, v in old.items() if not (isinstance(v, str) and MASK in v)}
        not_saved = {k: {"why": "masked when the run started", "from": "--set"} for k in old if k not in given}
    profile_path = st.events[0].get("profile") if st.events else None
    profile: Profile | None = None
    problems = []
    for name, info in not_saved.items():
        origin = info.get("from") if isinstance(info, dict) else None
        if name in sets or name not in rb.params or origin == "default":
            continue
        if origin == "profile" and profile_path:
            if profile is None:
                with contextlib.suppress(RunbookError, OSError):
                    profile = load_model(Path(profile_path), Profile, filename=profile_path)
            if profile is not None and name in profile.params:
                given[name] = profile.params[name]
                continue
        why = info.get("why", "secret") if isinstance(info, dict) else "secret"
        problems.append(f'param "{name}" was not saved with the run ({why}): give it again with --set {name}=VALUE')
    if problems:
        raise UsageError("\n".join(problems))
    given.update(sets)
    return given


def _load_secrets(rb: Runbook, base: Path, mode: str, warnings: list[str]) -> LoadedSecrets:
    if rb.secrets is None:
        return LoadedSecrets()
    env_file = Path(os.path.expanduser(rb.secrets.env_file))
    if mode == "rehearsal" and not (env_file if env_file.is_absolute() else base / env_file).exists():
        warnings.append(f"rehearsal: secrets file {rb.secrets.env_file} not found; nothing runs, so none is needed")
        return LoadedSecrets()
    return load_secrets(rb.secrets, base)


def _step_param_uses(rb: Runbook, scenario: str | None, mode: str) -> list[tuple[str, str]]:
    """(step id, param name) for every param a step of this scenario (every step, when None) uses."""
    from runbook.templating import parse_refs

    out = []
    for step in rb.steps_for(scenario, mode):
        texts = [step.run or "", *(step.argv or []), step.cwd or "", *step.env.values(), step.typed_template or ""]
        texts += _strings(step.with_ or {}) + [step.title or ""]
        for text in texts:
            out += [(step.id, ref.name) for ref in parse_refs(text) if ref.kind == "param"]
    return out


def params_used(rb: Runbook, scenario: str | None, mode: str) -> set[str]:
    """The params a run of this scenario uses: its steps', and the runbook's target and repository."""
    from runbook.templating import parse_refs

    used = {name for _, name in _step_param_uses(rb, scenario, mode)}
    for text in (rb.target or "", rb.repository or ""):
        used |= {ref.name for ref in parse_refs(text) if ref.kind == "param"}
    return used


def _check_used_params(rb: Runbook, scenario: str, mode: str, params: dict[str, Any]) -> None:
    """Every param a step of this scenario uses must have a value before anything runs."""
    problems = [f'step "{sid}" uses {{{{ {name} }}}}, which has no value: '
                f"give it with --set {name}=VALUE (or a default in the runbook)"
                for sid, name in _step_param_uses(rb, scenario, mode) if name not in params]
    if problems:
        raise UsageError("\n".join(dict.fromkeys(problems)))


def _strings(obj: Any) -> list[str]:
    if isinstance(obj, str):
        return [obj]
    if isinstance(obj, dict):
        return [s for v in obj.values() for s in _strings(v)]
    if isinstance(obj, list):
        return [s for v in obj for s in _strings(v)]
    return []


def render_target(rb: Runbook, params: dict[str, Any]) -> str:
    if not rb.target:
        return "default"
    return render(rb.target, lambda ref: to_text(params[ref.name]) if ref.name in params else f"<{ref.key}>", shell=False)


def _lock(state_dir: Path, rb: Runbook, target: str, run_id: str, clock: Clock, break_lock: bool) -> tuple[RunLock, Holder | None]:
    op = operator()
    holder = Holder(run_id=run_id, user=op["user"], host=op["host"], pid=op["pid"], since=iso(clock.now()), target=target)

    def closed(rid: str) -> bool:
        try:
            return load_state(state_dir, rid).status in CLOSED
        except RunbookError:
            return True  # a run whose journal is gone or unreadable holds nothing

    return RunLock.take(state_dir, rb.name, target, holder, run_closed=closed, break_lock=break_lock)


def _run_closed_here(state_dir: Path) -> Any:
    """For the repository lock: a run is void only when this state directory knows it and it has ended (a run
    of another state directory, another host's, is never presumed dead)."""

    def closed(rid: str) -> bool:
        try:
            return load_state(state_dir, rid).status in CLOSED
        except RunbookError:
            return False

    return closed


def _repository_lock(repository: str | None, rb: Runbook, target: str, run_id: str, state_dir: Path, clock: Clock,
                     break_lock: bool, warnings: list[str]) -> Any:
    """The lock object in the repository the runbook names (`locks/<target>.json`), or None without one.

    A repository that cannot be reached does not stop a recovery (the disaster may have taken it): the run goes
    on under its local lock, with a journaled warning that no other host can see it."""
    if not repository:
        return None
    from runbook.errors import LockHeld
    from steps.repository.recovery_lock import acquire, open_for_runbook

    op = operator()
    holder = {"run_id": run_id, "user": op["user"], "host": op["host"], "pid": op["pid"], "since": iso(clock.now()),
              "runbook": rb.name}
    try:
        cfg = open_for_runbook(repository)
        return acquire(cfg, target, holder, break_lock=break_lock, run_closed=_run_closed_here(state_dir))
    except LockHeld:
        raise
    except RunbookError as e:
        warnings.append(f"no recovery lock in the repository ({repository}): {e.message}; other hosts cannot see "
                        "this run")
    except Exception as e:  # noqa: BLE001 - an unreachable store fails in many ways: said, not fatal
        warnings.append(f"no recovery lock in the repository ({repository}): {type(e).__name__}: {e}; other hosts "
                        "cannot see this run")
    return None


def repository_path(rb: Runbook, profile_repository: str | None, params: dict[str, Any]) -> str | None:
    text = profile_repository or rb.repository
    if not text:
        return None
    return render(text, lambda ref: to_text(params[ref.name]) if ref.name in params else "", shell=False) or None


def _refuse_if_taken_elsewhere(repository: str, run_id: str, last_seq: int, state_dir: Path) -> None:
    """A run whose journal here ends where another host claimed it (`take-over -c`, steps.mirror.requests) is
    driven there: resuming it here would make two drivers. Best effort: a repository that cannot be read does not
    stop a resume (the recovery lock says so)."""
    from steps.mirror.requests import claims_from
    from steps.repository.configured import open_stores
    from steps.repository.recovery_lock import open_for_runbook

    try:
        stores = open_stores(open_for_runbook(repository))
        found = [c for store in stores for c in claims_from(store, run_id, last_seq)]
    except Exception:  # noqa: BLE001 - unreachable, unreadable: not this check's to refuse
        return
    me = {"host": socket.gethostname(), "state_dir": str(state_dir.resolve())}
    others = [c for c in found if any(c.get(k) != v for k, v in me.items())]
    if others:
        c = max(others, key=lambda c: int(c.get("seq") or 0))
        raise RunbookError(f"run {run_id} was taken over from event {c.get('seq')} by {c.get('user')}@{c.get('host')} "
                           f"(pid {c.get('pid')}, since {c.get('since')}) through the repository: it is driven there",
                           hint=f"watch it with `runbook watch -c REPO_CONFIG {run_id}`; to drive it again, "
                                f"`runbook take-over -c REPO_CONFIG {run_id}`")


def _journal_broken_locks(journal: Journal, replaced: Holder | None, rlock: Any) -> None:
    """The claims this run took over: the local lock's previous holder, the repository lock's."""
    if replaced is not None:
        journal.append("lock-broken", previous=replaced.__dict__)
    for other in (rlock.replaced if rlock is not None else []):
        journal.append("lock-broken", previous={**other, "where": f"repository {other['where']}"})


def _tie(lock: RunLock | None, rlock: Any, repository: str | None = None, state_dir: Path | None = None,
         run_id: str | None = None, warnings: list[str] | None = None) -> Any:
    """The repository lock goes with the local one: released (removed) when the run closes, kept otherwise.
    While the run is driven, its journal is mirrored into the repository's `runs/<run id>/` for watchers on
    other hosts (steps.mirror; the mirror is returned, None without one); when the run closes, its summary goes
    to the repository's `runs/` too (steps.repository.run_summaries)."""
    if lock is None:
        return None
    if rlock is not None:
        lock.on_release.append(lambda closed: rlock.release() if closed else None)
    mirror = None
    if repository and state_dir is not None and run_id:
        mirror = _start_mirror(repository, state_dir, run_id, warnings if warnings is not None else [])
        if mirror is not None:
            lock.on_release.append(lambda closed: mirror.stop("ended" if closed else mirror.leaving) and None)
        lock.on_release.append(lambda closed: _write_summary(repository, state_dir, run_id) if closed else None)
    return mirror


def _start_mirror(repository: str, state_dir: Path, run_id: str, warnings: list[str]) -> Any:
    """The journal's mirror into every repository of the config that does not encrypt (steps.mirror.writing),
    started; None when there is none (each reason in `warnings`: the run goes on, unseen from other hosts)."""
    from steps.mirror.writing import JournalMirror, plan
    from steps.repository.recovery_lock import open_for_runbook
    from steps.repository.signing import SigningError, signer_from_config, trust_from_config

    why = "this host has no signing.private_key"
    trust = None
    try:
        cfg = open_for_runbook(repository)
        try:
            trust = trust_from_config(cfg)
        except SigningError:  # no key to trust: every take-over request from another host is refused, named
            from steps.repository.signing import Trust

            trust = Trust()
        try:
            signer = signer_from_config(cfg, required=False)
        except SigningError as e:
            signer, why = None, e.message
        where = plan(cfg, signer)
    except Exception as e:  # noqa: BLE001 - a config or store that cannot be opened: said, not fatal
        text = e.message if isinstance(e, RunbookError) else f"{type(e).__name__}: {e}"
        warnings.append(f"the journal is not mirrored into the repository ({repository}): {text}; nobody can "
                        "watch this run from another host")
        return None
    if signer is None:
        warnings.append(f"the journal's mirror is written unsigned ({why}): watchers refuse it unless "
                        "--allow-unsigned")
    rdir = run_dir(state_dir, run_id)
    return JournalMirror(run_id, rdir / "journal.jsonl", where.stores, signer, driver=operator(),
                         sealers=where.sealers, runbook=rdir / "runbook.yaml", trust=trust).start()


def _write_summary(repository: str, state_dir: Path, run_id: str) -> None:
    from steps.repository.configured import open_stores
    from steps.repository.recovery_lock import open_for_runbook
    from steps.repository.run_summaries import write
    from steps.repository.signing import SigningError, signer_from_config

    cfg = open_for_runbook(repository)
    try:
        signer = signer_from_config(cfg, required=False)
    except SigningError:
        signer = None  # a key this host cannot use: the summary goes unsigned (readers ignore it, or warn)
    write(open_stores(cfg), load_state(state_dir, run_id), signer)


def open_new_run(opts: RunOptions, clock: Clock, *, state_dir: Path) -> Engine:
    path = opts.runbook_path
    rb = load_runbook(path)
    profile = load_model(opts.profile, Profile, filename=str(opts.profile)) if opts.profile else Profile()
    scenario = pick_scenario(rb, opts.scenario or profile.scenario)
    mode = opts.mode or profile.mode or "live"
    if mode not in MODES:
        raise UsageError(f"unknown mode {mode!r}; use one of {', '.join(MODES)}")
    given: dict[str, Any] = {**profile.params, **opts.sets}
    params = resolve(rb, scenario, given)
    _check_used_params(rb, scenario, mode, params)
    warnings: list[str] = []
    base = path.resolve().parent
    if profile.secrets_env_file:
        spec = (rb.secrets.model_copy(update={"env_file": profile.secrets_env_file}) if rb.secrets
                else Secrets(env_file=profile.secrets_env_file))
        rb = rb.model_copy(update={"secrets": spec})
    loaded = _load_secrets(rb, base, mode, warnings)
    loaded.env.update(profile.env)
    now = clock.now()
    incident = parse_when(opts.incident_start, "--incident-start", now)
    lost = parse_when(opts.data_lost_at, "--data-lost-at", incident)
    redactor = Redactor(loaded.redact + _secret_params(rb, params))
    run_id = new_run_id(clock, scenario)
    rdir = run_dir(state_dir, run_id)
    target = render_target(rb, params)
    lock, replaced = (None, None) if mode == "rehearsal" else _lock(state_dir, rb, target, run_id, clock, opts.break_lock)
    repository = repository_path(rb, profile.repository, params)
    rlock = None
    mirror = None
    try:
        if lock is not None:
            rlock = _repository_lock(repository, rb, target, run_id, state_dir, clock, opts.break_lock, warnings)
            mirror = _tie(lock, rlock, repository, state_dir, run_id, warnings)
    except BaseException:
        if lock is not None:
            lock.release(closed=True)
        raise
    try:
        rdir.mkdir(parents=True, exist_ok=False)
        shutil.copyfile(path, rdir / "runbook.yaml")
        copy_sha256 = hashlib.sha256((rdir / "runbook.yaml").read_bytes()).hexdigest()
        shown_params = _shown_params(rb, params)
        (rdir / "params.json").write_text(json.dumps(saved_params(rb, params, redactor, profile, opts.sets), indent=2) + "\n")
        journal = Journal(rdir / "journal.jsonl", clock, redactor)
        steps = [s.id for s in rb.steps_for(scenario, mode)]
        journal.append(
            "run-started", run_id=run_id,
            runbook={"name": rb.name, "path": str(path.resolve()), "version": rb.version, "sha256": copy_sha256},
            scenario=scenario, mode=mode, target=target, incident_start=iso(incident), data_lost_at=iso(lost),
            operator=operator(), params=shown_params, secrets_keys=loaded.keys, secrets_file=loaded.source or "",
            profile=str(opts.profile or ""),
            targets={"rto_s": rb.targets.rto.total_seconds(), "rpo_s": rb.targets.rpo.total_seconds()},
            steps=steps, tool_version=__version__, repository=repository or "",
            approver_policy=opts.approver_policy or "runbook",
        )
        if lock is not None:
            ensure_requests_dir(rdir)
        if opts.game_day is not None:
            journal.append("game-day", game_id=str(opts.game_day["game_id"]), seed=int(opts.game_day["seed"]))
        _journal_broken_locks(journal, replaced, rlock)
        for w in warnings:
            journal.append("warning", text=w)
    except BaseException:
        if lock is not None:
            lock.release(closed=True)
        raise
    return _engine(rb, path, state_dir, rdir, run_id, params, loaded, redactor, journal, warnings, lock, clock, mirror,
                   resumed=False)


def _policy(st: Any, given: str | None) -> str:
    """The run's approver policy: as given now (journaled when it changes), else as the run started with."""
    if given:
        return given
    policy = st.events[0].get("approver_policy") if st.events else None
    for e in st.events:
        if e.get("type") == "approver-policy":
            policy = e.get("policy")
    return policy if policy in ("runbook", "none", "other") else "runbook"


def _engine(rb: Runbook, path: Path, state_dir: Path, rdir: Path, run_id: str, params: dict[str, Any],
            loaded: LoadedSecrets, redactor: Redactor, journal: Journal, warnings: list[str], lock: RunLock | None,
            clock: Clock, mirror: Any, *, resumed: bool) -> Engine:
    """The engine of a run just started or resumed: its journal says the warnings found opening it, its state is
    read from the journal as it now stands, its mirror (if any) goes with it."""
    journal.warnings = warnings
    st = load_state(state_dir, run_id)
    declared = {s.id: s.expect_duration.total_seconds() for s in rb.steps if s.expect_duration}
    expected = expected_durations(past_runs(state_dir, rb.name, exclude=st.run_id), declared)
    ctx = RunContext(
        runbook=rb, runbook_path=path, state_dir=state_dir, rdir=rdir, state=st, params=params,
        secrets=loaded, redactor=redactor, journal=journal, lock=lock, expected=expected,
        approver_policy=_policy(st, None), mirror=mirror,
    )
    return Engine(ctx, clock, resumed=resumed)


def handed_away(st: Any) -> dict[str, Any] | None:
    """The `handed-over` event when this journal's last driver gave the run to another host (and nobody drove it
    here since): the run is driven there, from the repository's mirror; None otherwise."""
    last = None
    for e in st.events:
        if e.get("type") == "handed-over":
            last = e
        elif e.get("type") in ("run-started", "run-resumed"):
            last = None
    return last


@dataclass
class RemoteResume:
    """What a take-over from another host gives `open_resume` (runbook.remote_takeover): the repository config of
    this host, this host's secrets file and environment, and what the `handover` event says beyond both names."""

    repository: str
    secrets_env_file: str | None = None
    env: dict[str, str] = field(default_factory=dict)
    handover: dict[str, Any] = field(default_factory=dict)
    interrupted_detail: str = ""  # said of a step the journal shows running (it ran on the other host)


def open_resume(run_id: str, clock: Clock, *, state_dir: Path, sets: dict[str, str] | None = None,
                break_lock: bool = False, approver_policy: str | None = None,
                handover_from: dict[str, Any] | None = None, remote: RemoteResume | None = None,
                redo_from: str | None = None) -> Engine:
    """Rebuild a run from its journal and go on where it stopped. Closed runs (completed, aborted) refuse, and so
    does a run this journal's driver handed over to another host (unless this is that take-over: `remote`).

    `redo_from`: walk that step and every later one again (journaled `steps-reopened`, with the operator): a
    recovery that went to the wrong target is done again in the same run, each step confirmed again."""
    from runbook.state import redo_steps

    st = load_state(state_dir, run_id)
    rdir = run_dir(state_dir, run_id)
    if st.status in ("completed", "aborted"):
        raise RunbookError(f"run {run_id} is {st.status}; there is nothing to resume",
                           hint="start a new run with `runbook run`; `runbook report` shows this one")
    away = handed_away(st) if remote is None else None
    if away is not None:
        to = away.get("to") or {}
        raise RunbookError(f"run {run_id} was handed over to {to.get('user')}@{to.get('host')} at {away.get('ts')}: "
                           "it is driven from there now (this journal stops at the hand-over)",
                           hint=f"watch it with `runbook watch -c REPO_CONFIG {run_id}`; to drive it again, "
                                f"`runbook take-over -c REPO_CONFIG {run_id}`")
    reopened = redo_steps(st, redo_from) if redo_from else []
    # The runbook as it was when the run started (the file may have changed since).
    rb = load_runbook(rdir / "runbook.yaml")
    original = Path(st.runbook_path) if st.runbook_path else rdir / "runbook.yaml"
    params = resolve(rb, st.scenario, _reloaded_params(rb, rdir, st, sets or {}))
    warnings: list[str] = list(st.warnings)
    secrets_file = st.events[0].get("secrets_file") if st.events else None
    if remote is not None and remote.secrets_env_file:
        secrets_file = remote.secrets_env_file  # this host's file (the journal names the other host's)
    if secrets_file and rb.secrets is not None:  # the file this run started with (a profile may have named it)
        rb = rb.model_copy(update={"secrets": rb.secrets.model_copy(update={"env_file": secrets_file})})
    loaded = _load_secrets(rb, original.parent, st.mode, warnings)
    if remote is not None:
        loaded.env.update(remote.env)
    redactor = Redactor(loaded.redact + _secret_params(rb, params))
    lock = None
    replaced = None
    rlock = None
    mirror = None
    if st.mode != "rehearsal":
        lock, replaced = _lock(state_dir, rb, st.target or "default", run_id, clock, break_lock)
        try:
            started = st.events[0] if st.events else {}
            repository = started.get("repository") if "repository" in started else repository_path(rb, None, params)
            if remote is not None:
                repository = remote.repository
            elif repository:
                _refuse_if_taken_elsewhere(repository, run_id, len(st.events), state_dir)
            rlock = _repository_lock(repository, rb, st.target or "default", run_id, state_dir, clock, break_lock,
                                     warnings)
            if remote is not None and rlock is None:
                raise RunbookError(f"the recovery lock in the repository ({repository}) could not be taken: "
                                   f"{warnings[-1] if warnings else 'no repository'}",
                                   hint="nothing drives the run from this host; check the repository, then take "
                                        "over again")
            mirror = _tie(lock, rlock, repository, state_dir, run_id, warnings)
        except BaseException:
            lock.release(closed=False)
            raise
    try:
        journal = Journal(rdir / "journal.jsonl", clock, redactor)
        warnings = journal.warnings + [w for w in warnings if w not in journal.warnings]
        if st.status == "failed":
            journal.append("run-reopened", operator=operator())
        journal.append("run-resumed", operator=operator(), warnings=warnings)
        changed = [k for k in (sets or {}) if k in rb.params]
        if changed:  # what the operator changed, shown as the journal shows params; kept for the next resume
            journal.append("params-set", params={k: v for k, v in _shown_params(rb, params).items() if k in changed},
                           operator=operator())
            _save_sets(rdir, rb, params, redactor, changed)
        if reopened:
            journal.append("steps-reopened", from_step=redo_from, steps=reopened, operator=operator())
        if handover_from is not None:
            journal.append("handover", **{"from": handover_from}, to=operator(),
                           **(remote.handover if remote is not None else {}))
        if remote is not None and remote.interrupted_detail:
            for sid in st.order:
                if st.steps[sid].status.value == "running":
                    journal.append("step-interrupted", step=sid, detail=remote.interrupted_detail)
        if approver_policy and approver_policy != _policy(st, None):
            journal.append("approver-policy", policy=approver_policy, previous=_policy(st, None), operator=operator())
        _journal_broken_locks(journal, replaced, rlock)
        if lock is not None:
            ensure_requests_dir(rdir)
    except BaseException:
        if lock is not None:
            lock.release(closed=False)
        raise
    return _engine(rb, original, state_dir, rdir, run_id, params, loaded, redactor, journal, warnings, lock, clock,
                   mirror, resumed=True)


TAKEOVER_WAIT_S = 15.0


def run_lock_path(state_dir: Path, st: Any) -> Path:
    from runbook.lock import lock_name

    return state_dir / "locks" / lock_name(st.runbook_name, st.target or "default")


def open_takeover(run_id: str, clock: Clock, *, state_dir: Path, sets: dict[str, str] | None = None,
                  approver_policy: str | None = None, wait_s: float = TAKEOVER_WAIT_S,
                  on_wait: Any = None) -> Engine:
    """Take an open run over from its driver (a hand-over): ask the driver's process to let go (a request in
    `requests/`, runbook.requests), wait for the run's lock, and resume the run with a `handover` event naming
    both. A driver that is gone already hands over at once. Two sessions taking over at once: the first to get
    the lock wins; the other is told who (LockHeld)."""
    import time

    from runbook.errors import LockHeld
    from runbook.lockfile import LockFile
    from runbook.requests import write_request

    st = load_state(state_dir, run_id)
    if st.closed:
        raise RunbookError(f"run {run_id} is {st.status}; there is nothing to take over",
                           hint="`runbook report` shows it")
    if st.mode == "rehearsal":
        raise UsageError(f"run {run_id} is a rehearsal: it holds no lock, so there is nothing to hand over",
                         hint=f"continue it with `runbook resume {run_id}` once its driver has quit")
    path = run_lock_path(state_dir, st)
    holder = LockFile.read_holder(path) or {}
    me = operator()
    if holder.get("run_id") == run_id and _since(holder) > _process_started() and LockFile.is_held(path):
        raise _lost_race(run_id, holder)  # it got the run while this command was starting: at once, and it won
    previous = {k: holder.get(k) for k in ("user", "host", "pid", "since")} if holder.get("run_id") == run_id \
        else dict(st.operator)
    if LockFile.is_held(path):
        if holder.get("host") not in (None, me["host"]):
            raise UsageError(f"run {run_id} is driven from {holder.get('host')}; a take-over without -c works on "
                             "the same host only",
                             hint=f"from another host, through the repository: `runbook take-over -c REPO_CONFIG "
                                  f"{run_id}`")
        write_request(run_dir(state_dir, run_id), "takeover",
                      {"run_id": run_id, "user": me["user"], "host": me["host"], "pid": me["pid"],
                       "ts": iso(clock.now()), "driver_pid": holder.get("pid")})
        if on_wait is not None:
            on_wait(previous)
        deadline = time.monotonic() + wait_s
        while LockFile.is_held(path):
            now_holder = LockFile.read_holder(path) or {}
            if now_holder.get("pid") not in (None, holder.get("pid")):
                raise _lost_race(run_id, now_holder)
            if time.monotonic() > deadline:
                raise LockHeld(f"the driver of run {run_id} ({_who(previous)}) did not let go within {wait_s:g} s",
                               hint="ask them to quit the run (q), or if their process is stuck, stop it; then "
                                    f"`runbook take-over {run_id}` again")
            time.sleep(0.1)
    try:
        return open_resume(run_id, clock, state_dir=state_dir, sets=sets, approver_policy=approver_policy,
                           handover_from=previous)
    except LockHeld:
        winner: dict[str, Any] = {}
        for _ in range(20):  # the winner writes its record just after taking the lock
            winner = LockFile.read_holder(path) or {}
            if winner.get("pid") not in (None, holder.get("pid")):
                break
            time.sleep(0.05)
        raise _lost_race(run_id, winner) from None


def _who(h: dict[str, Any]) -> str:
    return f"{h.get('user')}@{h.get('host')} (pid {h.get('pid')})"


def _process_started() -> float:
    """When this process started (epoch seconds, to ~10 ms): two take-overs started together are "at once" even
    when one of them reaches the run's lock after the other has won it (its interpreter was slower to start)."""
    import time

    try:
        with open("/proc/self/stat") as f:
            ticks = int(f.read().rsplit(")", 1)[1].split()[19])  # field 22, starttime, in clock ticks since boot
        age = time.clock_gettime(time.CLOCK_BOOTTIME) - ticks / os.sysconf("SC_CLK_TCK")
        return time.time() - max(0.0, age)
    except (OSError, ValueError, IndexError, AttributeError):
        return time.time()


def _since(holder: dict[str, Any]) -> float:
    """When the holder took the run's lock (epoch seconds; 0 when its record does not say)."""
    try:
        return parse_iso(str(holder.get("since"))).timestamp()
    except ValueError:
        return 0.0


def _lost_race(run_id: str, winner: dict[str, Any]) -> RunbookError:
    from runbook.errors import LockHeld

    return LockHeld(f"run {run_id} was taken over by {_who(winner)} first",
                    hint=f"watch it, or ask them to hand it back (`runbook take-over {run_id}` once they agree)")
