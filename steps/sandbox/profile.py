"""The sandbox's values for the runbook (`sandbox.profile.yaml`), written beside it by `runbook demo`.

Nothing in `runbook.yaml` is sandbox-specific: the profile supplies the sandbox's database, socket, repository,
directories and harmless stand-ins for the maintenance page and the switch-over, so that `runbook run --profile
sandbox.profile.yaml` replays the drill.
"""

from __future__ import annotations

import json
import shlex
from pathlib import Path
from typing import Any

from runbook.errors import RunbookError


def write_profile(sb: Any, runbook_path: Path, scenario: str, pitr: dict[str, Any] | None = None) -> Path:
    """The sandbox's values for the runbook, beside it (or in the sandbox when that place is read-only)."""
    import yaml

    from steps.pg.server import as_server
    from steps.pg.tools import PG_BIN
    from steps.sandbox.build import DB

    profile = {
        "version": 1,
        "description": "the local sandbox made by runbook demo",
        "mode": "drill",
        "scenario": scenario,
        "params": {
            "db_name": DB,
            "db_host": str(sb.server.socket_dir),
            "db_port": sb.server.port,
            "repository": str(sb.config),
            "restore_dir": str(sb.restore_dir),
            "attachments_dir": str(sb.uploads),
            "disaster_counts": str(sb.base / "at-disaster-counts.json"),
            # The drill restores this sandbox's backups and nobody else's: a sandbox rebuilt under a running
            # drill is a new cluster, and its backups are refused instead of being reported as recovered.
            "source_cluster": sb.source_cluster,
            "maintenance_on": "echo 'sandbox: maintenance page ON (nothing to switch here)'",
            "maintenance_off": "echo 'sandbox: maintenance page OFF'",
            "switch_over": "echo 'sandbox: the application would now point at the recovered database'",
        },
        "secrets_env_file": str(sb.env_file),
    }
    if getattr(sb, "engine", "own") == "pgbackrest":  # archive_command is pgbackrest's: no server venv needed
        import sys

        profile["params"]["runbook_exe"] = str(Path(sys.executable).parent / "runbook")  # type: ignore[index]
    else:
        profile["params"]["runbook_exe"] = sb.server_runbook()  # type: ignore[index]  # reprotect's archive_command
    profile["params"]["drill_reprotect"] = True  # type: ignore[index]  # the sandbox's own repository
    if pitr is not None:
        stop = as_server([f"{PG_BIN}/pg_ctl", "-D", str(sb.server.datadir), "-m", "fast", "-w", "stop"])
        profile["params"].update({  # type: ignore[attr-defined]
            "target_time": pitr["target_time"],
            "target_kind": "time",
            "pgdata": str(sb.pitr_datadir),
            "stop_server": shlex.join(stop),
            "pg_bindir": PG_BIN,
        })
    text = (
        "# Written by `runbook demo`: the sandbox's values for the runbook. Replay the drill with\n"
        f"#   runbook run {runbook_path.name} --profile sandbox.profile.yaml\n"
        + yaml.safe_dump(profile, sort_keys=False, allow_unicode=True)
    )
    for place in (runbook_path.resolve().parent, sb.base):
        path = place / "sandbox.profile.yaml"
        try:
            path.write_text(text)
        except OSError:
            continue
        info = sb.info()
        info["profile"] = str(path)
        sb.info_file.write_text(json.dumps(info, indent=2))
        return path
    raise RunbookError("cannot write the sandbox profile beside the runbook nor in the sandbox")


def set_params(sb: Any, **params: Any) -> dict[str, Any]:
    """Change params of the profile `write_profile` wrote for this sandbox (a game-day fault: what the operator is
    given); returns the values they had. Refused when the file there is not this sandbox's profile."""
    import yaml

    path = Path(str(sb.info().get("profile", "")))
    try:
        text = path.read_text() if path.is_file() and not path.is_symlink() else ""
        header, _, _ = text.partition("version:")
        data = yaml.safe_load(text) if text else None
    except (OSError, yaml.YAMLError):
        data = None
    if not isinstance(data, dict) or not isinstance(data.get("params"), dict) or \
            data["params"].get("repository") != str(sb.config):
        raise RunbookError(f"no profile of the sandbox {sb.base} to change ({path})",
                           hint="the sandbox's profile is written by `runbook demo`")
    before = {k: data["params"].get(k) for k in params}
    data["params"].update(params)
    path.write_text(header + yaml.safe_dump(data, sort_keys=False, allow_unicode=True))
    return before
