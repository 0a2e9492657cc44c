"""The repository config on the quick answers of `wal-push`/`wal-fetch`: a hot cache of the few flat values they use.

steps.wal.settings validates the config with its schema once and keeps it as JSON; reading that back costs
`json` (with `re`, `enum` behind it) and `pathlib`, ~7 ms a call on a command PostgreSQL starts once per segment.
Beside it, each full load (`WalSettings.load`, `write_hot` there) writes `hot-<hash>.rec` in the same cache directory: the values the
quick answers need, already computed (the `destinations` string and its short hash, spool_dir, async, push
timeout, prefetch, the WAL key, the data directory), as `key=value` lines (steps.wal.fast.format_record), keyed
like the JSON cache: the config file's device, inode, size, mtime and ctime, the tool's version and the schema
module's mtime; and the local repository's path with its symbolic links resolved (`destinations` names the
resolved directory). `load_hot` reads it with str methods alone; missing, stale or unparsable: None, and the
caller does the full load, which writes it again.
"""

from __future__ import annotations

import os

from runbook import __version__
from runbook.paths import chosen_config_str, state_home_str
from steps.wal.fast import read_record, short_hash

# The config's schema (steps.wal.settings.SCHEMA): a cached config is validated again when it changes.
SCHEMA = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "repository", "config.py")


def cache_dir() -> str:
    """`$XDG_CACHE_HOME/runbook`, else `~/.cache/runbook` (steps.wal.settings keeps its JSON cache there too)."""
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return os.path.join(base, "runbook")


def config_key(given: str | None) -> str:
    """The config file as the hot cache is keyed by: `-c`, else $RUNBOOK_CONFIG, else the default, made absolute."""
    return os.path.abspath(chosen_config_str(given))


def hot_file(key: str) -> str:
    return os.path.join(cache_dir(), f"hot-{short_hash(key)}.rec")


def stamp(key: str) -> str:
    """What makes a cached config stale: the file's identity and times, the tool's version, the schema's mtime.
    OSError when the config cannot be looked at (the full load reports it)."""
    st = os.stat(key)
    try:
        schema_mtime = os.stat(SCHEMA).st_mtime_ns
    except OSError:
        schema_mtime = 0
    return f"{st.st_dev} {st.st_ino} {st.st_size} {st.st_mtime_ns} {st.st_ctime_ns} {__version__} {schema_mtime}"


class HotSettings:
    """The values of steps.wal.settings.WalSettings the quick answers read, under the same names."""

    def __init__(self, rec: dict[str, str]) -> None:
        self.path = rec["config"]
        self.destinations = rec["destinations"]
        self.dest_hash = rec["dest_hash"]
        self.spool_dir = rec.get("spool_dir") or os.path.join(state_home_str(), "wal-spool")
        self.async_mode = rec["async"] == "1"
        self.push_timeout_s = float(rec["push_timeout_s"])
        self.prefetch = int(rec["prefetch"])
        self.wal_key = rec.get("wal_key") or None
        self.data_directory = rec.get("data_directory") or None


def load_hot(given: str | None) -> HotSettings | None:
    """The hot cache of this config when it is current; None otherwise (or when it cannot be read)."""
    key = config_key(given)
    try:
        rec = read_record(hot_file(key))
        if rec is None or rec.get("key") != key or rec.get("stamp") != stamp(key):
            return None
        local = rec.get("local")
        if local is not None and os.path.realpath(local) != rec.get("local_real"):
            return None  # a symbolic link on the way to the repository changed: another destination
        return HotSettings(rec)
    except (OSError, KeyError, ValueError):
        return None
