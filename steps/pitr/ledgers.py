"""The WAL a recovery may replay: the verified index from the signed WAL ledgers (steps.wal.ledger).

Before the restored server starts, the ledgers covering the base backup's WAL onward are read from the
repositories the recovery reads, their signatures checked, and the index written into the data directory
(`runbook.wal-index`, read by `wal-fetch --verified`, removed once recovery ends). What the recovery is told:
- the genuine ledgers and the newest file they list; each ledger refused, by name and why;
- archived files after the base backup that no genuine ledger lists (an unsealed tail, or something planted):
  after the newest signed file the archive ends for this recovery; one between signed files stops the replay
  with an error; `allow_unsigned` accepts them (said, and journaled);
- none at all: a repository archived before WAL signing; refused unless `allow_unsigned`.

A recovery whose `restore_command` is given explicitly reads WAL its own way: no index, and it says so.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from steps.events import Events
from steps.pitr.args import Args
from steps.pitr.errors import PitrError

INDEX_FILE = "runbook.wal-index"


def verified_wal(args: Args, cfg: Any, entry: Any, events: Events) -> Any | None:
    """The verified index for recovering `entry` (None when `restore_command` is given). Raises PitrError
    when no WAL at all is signed and unsigned WAL is not allowed."""
    from steps.repository.layout import wal_name_from_key, wal_prefix
    from steps.repository.signing import SigningError, trust_from_config
    from steps.wal.ledger import read_index, wal_order
    from steps.wal.store import open_wal_stores

    if args.restore_command:
        events.check("WAL ledgers", "warning", "restore_command is given: the WAL it reads is not checked against "
                     "the signed WAL ledgers")
        return None
    sysid = int(entry.cluster)
    start = entry.manifest.start_wal
    stores = open_wal_stores(cfg.local.path if cfg.local else None,
                             cfg.s3.model_dump(mode="json") if cfg.s3 else None, args.source)
    try:
        trust = trust_from_config(cfg)
    except SigningError as e:
        raise PitrError(e.message, hint=e.hint) from None
    index = read_index(stores, trust, sysid, start)
    for problem in index.errors:
        events.check("WAL ledgers", "warning", f"cannot read the ledgers of {problem}")
    for refused in index.refused:
        events.check("WAL ledger refused", "warning", refused)
        print(f"pitr: WAL ledger refused: {refused}", flush=True)
    if index.conflicts:
        events.check("WAL ledgers", "warning", f"genuine ledgers disagree on {', '.join(sorted(set(index.conflicts)))}: "
                     "these names are not replayed")
    floor = wal_order(start)
    unsealed: list[str] = []
    try:
        archived = [n for k in stores[0].list(wal_prefix(str(sysid))) if (n := wal_name_from_key(k.key)) is not None]
        unsealed = sorted((n for n in archived if wal_order(n) >= floor and n not in index.segments), key=wal_order)
    except Exception as e:  # noqa: BLE001 - the listing only explains; the replay checks every file itself
        events.check("WAL ledgers", "warning", f"cannot list the archive to compare with the ledgers: {e}")
    if not index.segments and not args.allow_unsigned:
        raise PitrError(f"no signed WAL ledger lists the WAL of cluster {sysid} from {start} on"
                        + (f" ({len(index.refused)} ledger(s) refused)" if index.refused else "")
                        + ": the archived WAL cannot be told from WAL planted in the repository",
                        hint="a repository archived before WAL signing (signing.wal_private_key on the database "
                             "host): recover with allow_unsigned (journaled); `runbook check` on the database host "
                             "says whether its WAL is sealed")
    if index.segments:
        events.check("WAL ledgers", "ok", f"{index.ledgers} signed ledger(s) list {len(index.segments)} archived "
                     f"file(s), the newest {index.newest}; wal-fetch replays only those bytes")
    if unsealed:
        listing = ", ".join(unsealed[:3]) + (f" and {len(unsealed) - 3} more" if len(unsealed) > 3 else "")
        if args.allow_unsigned:
            events.check("unsigned WAL accepted", "warning", f"{len(unsealed)} archived file(s) in no signed ledger "
                         f"({listing}) are replayed because allow_unsigned is set")
        else:
            newest = wal_order(index.newest) if index.newest else ""
            inside = [n for n in unsealed if wal_order(n) < newest]
            events.check("unsigned WAL", "warning", f"{len(unsealed)} archived file(s) are in no signed ledger "
                         f"({listing}): not sealed yet, or planted. "
                         + (f"{len(inside)} of them lie between signed files: the replay stops with an error if it "
                            "reaches one. " if inside else "")
                         + "After the newest signed file the archive ends for this recovery (the recovery point "
                           "says where); allow_unsigned accepts them, journaled")
        print(f"pitr: {len(unsealed)} archived WAL file(s) in no signed ledger, from {unsealed[0]}", flush=True)
    return index


def write_verified(pgdata: Path, index: Any, args: Args) -> Path:
    """The index in the data directory, for `wal-fetch --verified`."""
    from steps.wal.ledger import write_index

    path = pgdata / INDEX_FILE
    write_index(path, index, accept_unsealed=args.allow_unsigned)
    return path


def remove_verified(pgdata: Path) -> None:
    """Once recovery has ended (the recovery settings reset): the index is read by nobody any more. Removed
    beneath the data directory's descriptor (steps.fs), never through a link."""
    from steps.fs import UnsafePath, open_real_dir

    try:
        fd = open_real_dir(pgdata, "data directory")
    except UnsafePath:
        return
    try:
        os.unlink(INDEX_FILE, dir_fd=fd)
    except FileNotFoundError:
        pass
    finally:
        os.close(fd)
