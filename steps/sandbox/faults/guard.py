"""Faults for training are the sandbox's alone: what every injector checks before it touches anything.

`check_sandbox`: the directory is one `runbook demo` built (its `sandbox.json` names the cluster it backed up,
the cluster's data directory is under it), and its repository config reaches nothing outside it: the local
repository, the attachments and the state directories under the sandbox, the cluster on the sandbox's own
socket, an S3 endpoint (if any) on the loopback address. A config pointing anywhere else (a production
repository, a real server) is refused by name.
`sandbox_path`: a path to damage is inside the sandbox, reached without following a symbolic link.
"""

from __future__ import annotations

import ipaddress
import json
import os
import stat
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

from runbook.errors import RunbookError

if TYPE_CHECKING:
    from steps.sandbox.build import Sandbox


class FaultRefused(RunbookError):
    """A fault's target is not the sandbox's: nothing was done."""


def _inside(path: Path, base: Path) -> bool:
    try:
        path.relative_to(base)
        return True
    except ValueError:
        return False


def sandbox_path(sb: Sandbox, path: Path | str) -> Path:
    """`path`, made absolute, when it lies inside the sandbox directory and no component below the sandbox is a
    symbolic link (a planted link could lead a fault out of the sandbox); else FaultRefused."""
    base = Path(os.path.realpath(sb.base))
    p = Path(os.path.abspath(path))
    if not _inside(p, Path(os.path.abspath(sb.base))) and not _inside(p, base):
        raise FaultRefused(f"fault target {p} is outside the sandbox {sb.base}: game-day faults touch the sandbox "
                           "alone")
    rel = p.relative_to(base if _inside(p, base) else Path(os.path.abspath(sb.base)))
    cur = base
    for part in rel.parts:
        cur = cur / part
        try:
            st = os.lstat(cur)
        except FileNotFoundError:
            break
        if stat.S_ISLNK(st.st_mode):
            raise FaultRefused(f"fault target {p}: {cur} is a symbolic link; game-day faults follow none")
    return base / rel


def _loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def check_sandbox(sb: Sandbox) -> dict[str, Any]:
    """The sandbox's repository config (parsed) when the directory is a sandbox the demo built and the config
    reaches only the sandbox; else FaultRefused naming what is not the sandbox's."""
    import yaml

    base = Path(os.path.realpath(sb.base))
    if os.path.islink(sb.base) or not base.is_dir():
        raise FaultRefused(f"{sb.base} is not a sandbox directory: game-day faults are injected only into the "
                           "sandbox `runbook demo` built")
    try:
        info = json.loads(sandbox_path(sb, sb.info_file).read_text())
    except (OSError, ValueError):
        info = None
    if not isinstance(info, dict) or not info.get("cluster") or not (sb.server.datadir / "PG_VERSION").exists():
        raise FaultRefused(f"{sb.base} was not built by `runbook demo` (no sandbox.json naming its cluster, or "
                           "no cluster in it): game-day faults are injected only into the demo's sandbox")
    cfg_path = sandbox_path(sb, sb.config)
    try:
        cfg = yaml.safe_load(cfg_path.read_text())
    except (OSError, yaml.YAMLError) as e:
        raise FaultRefused(f"the sandbox's repository config {cfg_path} cannot be read: {e}") from None
    if not isinstance(cfg, dict):
        raise FaultRefused(f"the sandbox's repository config {cfg_path} is not a mapping")
    problems: list[str] = []

    def under(what: str, value: Any) -> None:
        if value is None:
            return
        p = Path(os.path.abspath(str(value)))
        if not (_inside(p, base) or _inside(p, Path(os.path.abspath(sb.base)))):
            problems.append(f"{what} {value} is outside the sandbox")

    local = cfg.get("local") or {}
    under("local.path", local.get("path") if isinstance(local, dict) else local)
    att = cfg.get("attachments") or {}
    under("attachments.path", att.get("path") if isinstance(att, dict) else att)
    for section, key in (("backup", "state_dir"), ("wal", "spool_dir")):
        sec = cfg.get(section) or {}
        if isinstance(sec, dict):
            under(f"{section}.{key}", sec.get(key))
    cluster = cfg.get("cluster") or {}
    host = str(cluster.get("host", "")) if isinstance(cluster, dict) else ""
    port = cluster.get("port") if isinstance(cluster, dict) else None
    if host != str(sb.server.socket_dir):
        problems.append(f"cluster.host {host or '(none)'} is not the sandbox's server socket {sb.server.socket_dir}")
    elif port is not None and int(port) != sb.server.port:
        problems.append(f"cluster.port {port} is not the sandbox's server port {sb.server.port}")
    s3 = cfg.get("s3")
    if s3 is not None:
        endpoint = str(s3.get("endpoint_url") or "") if isinstance(s3, dict) else ""
        h = urlsplit(endpoint).hostname or ""
        if not endpoint or not _loopback(h):
            problems.append(f"s3 endpoint {endpoint or '(AWS)'} is not on this machine's loopback address")
    if problems:
        raise FaultRefused(f"the repository config {cfg_path} reaches beyond the sandbox: {'; '.join(problems)}; "
                           "game-day faults are injected only into the sandbox `runbook demo` built")
    return cfg
