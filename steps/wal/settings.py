"""The repository config on the WAL commands' fast path: validated once, then read from a cache.

PostgreSQL starts `wal-push` once per segment and `wal-fetch` once per segment replayed, so their start
time is paid thousands of times. Validating the YAML with the schema (pydantic, `steps.repository.config`) costs
~140 ms; this module validates it **with that same schema** the first time (every problem reported as
`FILE:LINE:COL`, as everywhere), then keeps the validated form as JSON in the running user's cache
(`$XDG_CACHE_HOME/runbook/`, else `~/.cache/runbook/`, mode 0600), keyed by the file's device, inode,
size, mtime and ctime and by the schema module's own mtime. A changed file, or a changed tool, is
validated again. When the cache cannot be written the file is simply validated every time.
Each load also writes the hot cache (steps.wal.hot): the few values the quick answers of steps.wal.fast read,
in a form they read without json or pathlib.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

from runbook import __version__
from runbook.paths import chosen_config_path, state_home
from steps.wal import hot
from steps.wal.fast import format_record, short_hash

TYPE_CHECKING = False  # not typing.TYPE_CHECKING: importing typing costs ~3 ms on a path run per segment
if TYPE_CHECKING:
    from typing import Any
# The config's schema: a cached config is validated again when it changes.
SCHEMA = Path(__file__).parents[1] / "repository" / "config.py"


def _cache_dir() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "runbook"


def _stamp(path: Path) -> list[Any]:
    st = path.stat()
    try:
        schema_mtime = SCHEMA.stat().st_mtime_ns
    except OSError:
        schema_mtime = 0
    return [st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns, __version__, schema_mtime]


def _validate(path: Path) -> dict[str, Any]:
    from steps.repository.config import load_repository_config

    cfg, _ = load_repository_config(path)
    return cfg.model_dump(mode="json", by_alias=True)


def load_config_dict(given: str | None) -> tuple[dict[str, Any], Path]:
    """The validated config as plain data (keys as in the file, defaults filled in), and its path."""
    path = chosen_config_path(given).absolute()
    try:
        stamp = _stamp(path)
    except OSError:
        return _validate(path), path  # raises the usual "does not exist" UsageError
    cache = _cache_dir() / f"repository-{hashlib.sha256(str(path).encode()).hexdigest()[:20]}.json"
    try:
        cached = json.loads(cache.read_text())
        if cached.get("path") == str(path) and cached.get("stamp") == stamp:
            return dict(cached["config"]), path
    except (OSError, ValueError, KeyError, AttributeError):
        pass
    data = _validate(path)
    try:
        cache.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        tmp = cache.with_name(f".{cache.name}.{os.getpid()}")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as f:
            json.dump({"path": str(path), "stamp": stamp, "config": data}, f)
        os.replace(tmp, cache)
    except OSError:
        pass  # no cache for this user: validated every time, still correct
    return data, path


class WalSettings:
    """What the WAL commands read from the config (plain values, no schema objects, no dataclass import)."""

    def __init__(self, path: Path, data: dict[str, Any]) -> None:
        wal = data.get("wal") or {}
        self.raw_wal: dict[str, Any] = wal
        spool = wal.get("spool_dir")
        if not spool:
            spool = str(state_home() / "wal-spool")
        local = data.get("local")
        self.path = path
        self.local_path: Path | None = Path(local["path"]) if local else None
        self.s3: dict[str, Any] | None = data.get("s3")
        self.data_directory: str | None = (data.get("cluster") or {}).get("data_directory")
        self.level = int(wal.get("compression_level", 1))
        self.async_mode = bool(wal.get("async", False))
        self.spool_dir = Path(spool)
        self.max_parallel = int(wal.get("max_parallel", 4))
        self.push_ahead = int(wal.get("push_ahead", 16))
        self.push_timeout_s = float(wal.get("push_timeout_s", 60))
        self.worker_idle_s = float(wal.get("worker_idle_s", 120))
        self.prefetch = int(wal.get("prefetch", 8))
        self.fetch_attempts = int(wal.get("fetch_attempts", 3))
        signing = data.get("signing") or {}
        self.wal_key: str | None = signing.get("wal_private_key")
        self.public_keys: list[str] = [str(k) for k in signing.get("public_keys") or []]
        encryption = data.get("encryption") or {}
        self.recipients: list[str] = [str(r) for r in encryption.get("recipients") or []]
        self.identity_files: list[str] = [str(i) for i in encryption.get("identity_files") or []]
        # Which repositories hold encrypted WAL (steps.wal.crypt): `encrypt:` of each, the S3 one by default once
        # recipients are configured, the local one only when asked.
        self.encrypt: dict[str, bool] = {}
        if local:
            self.encrypt["local"] = bool(local.get("encrypt") or False)
        if self.s3 is not None:
            flag = self.s3.get("encrypt")
            self.encrypt["s3"] = bool(self.recipients) if flag is None else bool(flag)
        self._destinations: str | None = None

    @property
    def destinations(self) -> str:
        """Where a push must land, as one stable string: every configured repository (the local directory,
        symbolic links resolved; the S3 endpoint, region, bucket and prefix, as the store addresses them), and,
        when a repository encrypts, which ones and to whom (`encryption.recipients` as configured). Credentials
        and tuning are left out: they change how, not where or what. The asynchronous mode's
        records name it, and its spool is kept per destination (steps.wal.fast.push_root): a confirmation
        for one destination never answers for another."""
        if self._destinations is None:
            dest: dict[str, Any] = {}
            if self.local_path is not None:
                dest["local"] = os.path.realpath(self.local_path)
            if self.s3 is not None:
                dest["s3"] = {"endpoint_url": self.s3.get("endpoint_url"), "region": self.s3.get("region"),
                              "bucket": self.s3.get("bucket"), "prefix": str(self.s3.get("prefix") or "").strip("/")}
            if any(self.encrypt.values()):
                # What lands there changes with it: an uploader started before encryption was turned on (or its
                # recipients changed) must not confirm for the new config what it stored the old way.
                dest["encrypt"] = {"repositories": sorted(k for k, v in self.encrypt.items() if v),
                                   "recipients": sorted(self.recipients)}
            self._destinations = json.dumps(dest, sort_keys=True, separators=(",", ":"))
        return self._destinations

    @property
    def dest_hash(self) -> str:
        """The short hash of `destinations` that names the spool directories (steps.wal.fast.push_root)."""
        return short_hash(self.destinations)

    @classmethod
    def load(cls, given: str | None) -> WalSettings:
        """The config validated (or from the JSON cache), and the hot cache written when it is not current."""
        try:
            at: str | None = hot.stamp(hot.config_key(given))
        except OSError:
            at = None
        data, path = load_config_dict(given)
        settings = cls(path, data)
        if at is not None and hot.load_hot(given) is None:
            write_hot(given, settings, at)
        return settings


def write_hot(given: str | None, settings: WalSettings, at: str) -> None:
    """Write the hot cache (steps.wal.hot) of the config just loaded (`at`: its stamp taken before it was read; a
    change while it was read leaves a stale stamp, read again next time). Nothing when it cannot be written."""
    key = hot.config_key(given)
    local = os.fspath(settings.local_path) if settings.local_path is not None else None
    rec: dict[str, object] = {
        "key": key, "stamp": at, "config": str(settings.path),
        "destinations": settings.destinations, "dest_hash": settings.dest_hash,
        "local": local, "local_real": os.path.realpath(local) if local is not None else None,
        "spool_dir": os.fspath(settings.spool_dir) if settings.raw_wal.get("spool_dir") else None,
        "async": "1" if settings.async_mode else "0", "push_timeout_s": repr(settings.push_timeout_s),
        "prefetch": settings.prefetch, "wal_key": settings.wal_key or None,
        "data_directory": settings.data_directory or None,
    }
    path = hot.hot_file(key)
    tmp = f"{path}.{os.getpid()}"
    try:
        os.makedirs(os.path.dirname(path), mode=0o700, exist_ok=True)
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as f:
            f.write(format_record(rec))
        os.replace(tmp, path)
    except OSError:
        pass  # no cache for this user: the full load every time, still correct
