"""`runbook wal-push` (PostgreSQL's archive_command) and `runbook wal-fetch` (its restore_command).

    archive_command = '/opt/runbook/venv/bin/runbook wal-push -c /etc/runbook/repository.yaml %p'
    restore_command = '/opt/runbook/venv/bin/runbook wal-fetch -c /etc/runbook/repository.yaml %f %p'

**They never lie to PostgreSQL** (DESIGN.md):
- `wal-push` exits 0 only when every configured repository (off-site included) holds the file durably:
  locally fsync, link(2) and fsync of the directory; on S3 a completed PutObject, read back and checked. A file
  already archived with the same content is a success (PostgreSQL re-runs the command after a crash);
  different content fails loudly (exit 1) and the archived copy is never replaced.
  A segment whose system identifier (its page header) is not the one of the cluster it is pushed from is
  refused. Failures exit 1 (PostgreSQL retries): never above 125, which would restart the archiver.
- `wal-fetch` exits 0 with DEST written atomically (a temporary name, then rename) when the file is found and
  checked; 1, silently, **only** when every repository answers that it does not exist (PostgreSQL asks for
  `.history` files that never existed, and for the segment after the last one); anything else, after
  bounded retries (a repository that cannot be reached, a damaged copy with no good copy elsewhere, a bad
  config, bad arguments) exits 126, so that recovery stops instead of ending early with data missing.

**Which cluster.** The repository directory is `clusters/<system identifier>/wal/`. The identity of a segment
is in its own header; the identity of the cluster running the command is in `global/pg_control` of its data
directory, which PostgreSQL makes the working directory of both commands (else the parent of the file's
`pg_wal`, else `cluster.data_directory` of the config). A `.history` or `.backup` file has no header: it goes
to the running cluster's directory. Reading pg_control needs no connection and no password, works during
recovery, and is what the segments themselves are checked against.

**Starting fast.** PostgreSQL starts these once per segment, so this module imports only the standard library,
PyYAML-free cached config (steps.wal.settings) and `zstandard`; boto3 only when S3 is configured; never pydantic,
psycopg, rich or textual once the config is cached. The command line (runbook.cli.wal_fast for the plain forms,
runbook.cli.wal for the rest) parses the arguments and calls `push_file`/`fetch_file`; it turns their errors into
the exit codes above.

The asynchronous mode (`wal: {async: true}`) and fetch read-ahead live in steps.wal.spool, which builds on this
module (its uploader pushes through `push_data`); this module uses only steps.wal.fast's side of them.
"""

from __future__ import annotations

import contextlib
import os
import sys
import threading
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from runbook.errors import RunbookError, UsageError
from steps.repository.layout import (
    ENCRYPTED_SUFFIX,
    WalName,
    parse_wal_name,
    wal_claims_prefix,
    wal_key,
    wal_prefix,
)
from steps.repository.store import MARKER, ObjectExists, RepositoryError
from steps.wal import fast as walfast
from steps.wal.segment import (
    Buffer,
    CorruptWal,
    WalFileError,
    check_segment,
    pack,
    read_file,
    read_header,
    segment_header,
    unpack,
)
from steps.wal.settings import WalSettings
from steps.wal.store import WalStore, keys_to_try, open_wal_stores, proves_absence

TYPE_CHECKING = False
if TYPE_CHECKING:
    from steps.wal.crypt import WalKeys

EXIT_MISSING = 1
EXIT_FAILED = 1
EXIT_USAGE = 2
EXIT_ABORT_RECOVERY = 126  # restore_command: > 125 makes PostgreSQL stop recovery (FATAL), never end it early


class WalConflict(RepositoryError):
    """The archive already holds this name with other content, or a damaged copy: never overwritten."""


class WrongCluster(RunbookError):
    """A file whose system identifier is not the one of the cluster it is pushed from."""


# --- who runs us --------------------------------------------------------------------------------------


def refuse_root(command: str) -> None:
    if os.geteuid() == 0:
        raise UsageError(
            f"{command} refuses to run as root: PostgreSQL runs it as the server's user, and files written "
            "by root would be unreadable to that user later",
            hint=f"run it as the server's user, e.g. runuser -u postgres -- runbook {command} ...")


def cluster_identity(wal_path: str, settings: WalSettings, given: str | None) -> tuple[int | None, Path | None]:
    """(system identifier, data directory) of the cluster running us, when it can be told (steps.wal.fast)."""
    if given:
        if not given.isdigit():
            raise UsageError(f"--sysid {given!r}: a system identifier is a number")
        return int(given), None
    sysid, datadir = walfast.cluster_identity(wal_path, settings.data_directory)
    return sysid, Path(datadir) if datadir else None


# --- push -------------------------------------------------------------------------------------------


def prepare(path: Path, w: WalName, cluster_sysid: int | None) -> tuple[Buffer, int]:
    """The file's bytes and the system identifier it is archived under, after the identity checks."""
    try:
        data = read_file(path)
    except FileNotFoundError:
        raise UsageError(f"{path} does not exist") from None
    except OSError as e:
        raise RunbookError(f"cannot read {path}: {e.strerror}", hint="run as the server's user") from None
    if not w.has_header:
        if cluster_sysid is None:
            raise RunbookError(
                f"cannot tell which cluster {w.name} belongs to: no global/pg_control in the working directory, "
                "beside the file's pg_wal, or at cluster.data_directory",
                hint="PostgreSQL runs archive_command in the data directory; run by hand, cd there first, or set "
                     "cluster.data_directory in the repository config")
        return data, cluster_sysid
    try:
        hdr = segment_header(data)
        check_segment(w.name, data, w.segno(hdr.segment_size))
    except WalFileError as e:
        raise WrongCluster(f"refusing {path}: {e}") from None
    if cluster_sysid is not None and hdr.system_identifier != cluster_sysid:
        raise WrongCluster(
            f"refusing {w.name}: its system identifier is {hdr.system_identifier}, but the cluster pushing it is "
            f"{cluster_sysid}", hint="a segment from another cluster is in this pg_wal, or archive_command points "
                                     "at the wrong data directory; it is not archived")
    return data, hdr.system_identifier


def _check_existing(store: WalStore, key: str, name: str, existing: bytes, meta: dict[str, Any]) -> None:
    """An object is already there: succeed only if it holds exactly these bytes, intact."""
    where = store.describe()
    try:
        old, _ = read_header(existing)
    except CorruptWal as e:
        raise WalConflict(f"{key} already exists in {where} and is not an archived WAL file ({e}); "
                          "it is not overwritten",
                          hint="look at it, move it aside by hand, and the next attempt archives this one") from None
    if old.get("sha256") != meta["sha256"] or old.get("size") != meta["size"]:
        raise WalConflict(
            f"{name} is already archived in {where} with DIFFERENT content (sha256 {old.get('sha256')}, "
            f"{old.get('size')} bytes; this file: {meta['sha256']}, {meta['size']} bytes); the archived copy is "
            "kept and nothing is overwritten",
            hint="two clusters with one system identifier archive into one repository, or pg_wal was altered; "
                 "find out which copy is right before anything else")
    try:
        unpack(existing, name)
    except CorruptWal as e:
        raise WalConflict(f"{name} is archived in {where}, but that copy is damaged ({e}); it is not overwritten",
                          hint="move the damaged object aside by hand; the next attempt archives this file") from None


def push_one(store: WalStore, key: str, name: str, blob: bytes, meta: dict[str, Any]) -> str:
    """Store `blob` at `key` in one repository; "stored" or "already archived". Look, write once,
    read back where the store could have let another writer in (S3: `verify_after_write`).

    On such a store a write-once is not enough: a store that accepts and ignores `If-None-Match` lets a
    second pusher whose look came before our write replace what we confirmed. So every pusher there first
    records a **claim**, an empty object named by the sha256 of its content (steps.repository.layout
    .wal_claims_prefix: content-addressed, nothing can replace it), and confirms only when the object reads
    back as its own bytes **and** no claim of other content exists. Of two pushers of one name with different
    bytes at most one is confirmed (each looks for the other's claim after writing its own), and whatever the
    store kept, the two claims stay: `wal-fetch` refuses the name (126) and `check` reports it."""
    existing = store.get(key)
    if existing is not None:
        _check_existing(store, key, name, existing, meta)
        if store.verify_after_write:
            _claim_and_verify(store, key, name, meta)
        return "already archived"
    try:
        store.put_new(key, blob, meta)
    except ObjectExists:
        existing = store.get(key)
        if existing is None:
            raise RepositoryError(f"{key}: {store.describe()} refused the write as existing, yet has no such object",
                                  hint="retry; if it persists the store's conditional writes are broken") from None
        _check_existing(store, key, name, existing, meta)
        if store.verify_after_write:
            _claim_and_verify(store, key, name, meta)
        return "already archived"
    if not store.verify_after_write:
        return "stored"
    prefix = wal_claims_prefix(str(meta["system_identifier"]), name)
    store.put_claim(prefix, str(meta["sha256"]))
    claims = _Ahead(lambda: store.claims(prefix))  # the claims listed while the object is read back
    back = store.get(key)
    _refuse_other_claims(store, name, meta, claims.result())
    if back is None:
        raise RepositoryError(f"{key} was written to {store.describe()} but cannot be read back",
                              hint="an eventually consistent store? retry; the segment is not confirmed")
    if back != blob:
        # Someone else wrote this key at the same time (a store that ignores IfNoneMatch): what is there now
        # must be the same segment, or it is a conflict.
        _check_existing(store, key, name, back, meta)
    return "stored"


class _Ahead:
    """A call to a store run in a thread while the caller makes another (two requests in flight: the claims
    cost no round trip of their own on S3)."""

    def __init__(self, fn: Any) -> None:
        self._fn = fn
        self._result: Any = None
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        try:
            self._result = self._fn()
        except BaseException as e:  # noqa: BLE001 - handed to the caller by result()
            self._error = e

    def result(self) -> Any:
        self._thread.join()
        if self._error is not None:
            raise self._error
        return self._result


def _claim_and_verify(store: WalStore, key: str, name: str, meta: dict[str, Any]) -> None:
    """Record our claim, then refuse when another content was ever claimed under this name."""
    prefix = wal_claims_prefix(str(meta["system_identifier"]), name)
    store.put_claim(prefix, str(meta["sha256"]))
    _refuse_other_claims(store, name, meta, store.claims(prefix))


def _refuse_other_claims(store: WalStore, name: str, meta: dict[str, Any], claimed: set[str]) -> None:
    others = claimed - {str(meta["sha256"])}
    if others:
        raise WalConflict(
            f"two different segments of one name: {name} was also pushed to {store.describe()} with other content "
            f"(sha256 {', '.join(sorted(others))}; this file: {meta['sha256']}); it is not confirmed, and wal-fetch "
            "refuses this name until someone decides",
            hint="two clusters with one system identifier archive into one repository, or pg_wal was altered; "
                 "the store ignores conditional writes, so find out which copy is right before anything else")


def push_encrypted(store: WalStore, key: str, name: str, blob: bytes, meta: dict[str, Any], keys: WalKeys) -> str:
    """`push_one` for a repository marked `encrypt: true`: `blob` (compressed first: age output does not
    compress) encrypted to the data recipient of this writer's epoch, stored at `<key>.age`; "stored" or
    "already archived".

    The pusher holds no key that reads an encrypted copy, so what a copy already there holds is told by its
    **claim** (`wal-acks/<name>/<sha256 of the original>`), written **before** the object, in a local
    repository too: a retry finds it beside the object. Already there with our claim alone: archived;
    another claim: "two different segments of one name" (never overwritten); no claim at all: refused too
    (nothing says what it holds). A copy archived unencrypted before encryption was turned on is checked as
    before, and kept: the name is archived, once. On S3 the object is read back (the bytes we sent) while
    the claims are listed, as for an unencrypted push."""
    ekey = key + ENCRYPTED_SUFFIX
    prefix = wal_claims_prefix(str(meta["system_identifier"]), name)
    looks = None
    if store.verify_after_write:  # both looks in flight while the blob is encrypted
        looks = (_Ahead(lambda: store.stat(ekey)), _Ahead(lambda: store.stat(key)))
    cipher, epoch = keys.encrypt(store, blob)
    enc_there, plain_there = (looks[0].result(), looks[1].result()) if looks else (store.stat(ekey), store.stat(key))
    if plain_there is not None:
        existing = store.get(key)
        if existing is not None:
            _check_existing(store, key, name, existing, meta)
            if store.verify_after_write:
                _claim_and_verify(store, key, name, meta)
            return "already archived (unencrypted)"
    if enc_there is not None:
        _encrypted_already(store, ekey, name, meta, prefix)
        return "already archived"
    store.put_claim(prefix, str(meta["sha256"]))
    try:
        store.put_new(ekey, cipher, {**meta, "epoch": epoch})
    except ObjectExists:
        _encrypted_already(store, ekey, name, meta, prefix)
        return "already archived"
    if not store.verify_after_write:
        return "stored"
    claims = _Ahead(lambda: store.claims(prefix))
    back = store.get(ekey)
    _refuse_other_claims(store, name, meta, claims.result())
    if back is None:
        raise RepositoryError(f"{ekey} was written to {store.describe()} but cannot be read back",
                              hint="an eventually consistent store? retry; the segment is not confirmed")
    # Other bytes than ours with our claim alone: another pusher of this very segment wrote at the same time
    # (age encrypts each time afresh); a pusher of other content would have left its own claim (refused above).
    return "stored"


def _encrypted_already(store: WalStore, ekey: str, name: str, meta: dict[str, Any], prefix: str) -> None:
    """An encrypted copy is there: succeed only when its claims say it holds exactly this content."""
    claimed = store.claims(prefix)
    _refuse_other_claims(store, name, meta, claimed)
    if str(meta["sha256"]) not in claimed:
        raise WalConflict(
            f"{ekey} already exists in {store.describe()}, and no claim says what it holds (this host has no key "
            "that reads it); it is not overwritten",
            hint="on a host with an identity, `runbook wal-fetch --from ... NAME /tmp/x` and compare it with the "
                 "file in pg_wal; if they are the same, write the claim by hand or move the object aside")


def push_data(stores: Sequence[WalStore], name: str, data: Buffer, sysid: int, level: int,
              keys: WalKeys | None = None) -> dict[str, Any]:
    """Archive checked bytes into every repository; the header written (name, sha256, size, sysid), plus
    `stored` (per repository: "stored" or "already archived") and `compressed_size`. `keys`: the writer's
    encryption keys, needed when a repository is marked `encrypt: true`."""
    encrypted = [s for s in stores if s.encrypt]
    if encrypted and keys is None:
        raise RunbookError(f"{encrypted[0].describe()} is marked encrypt: true, but no encryption keys were given")
    ready = _Ahead(lambda: keys.prepare(encrypted)) if encrypted and keys is not None else None  # beside zstd
    blob, meta = pack(name, data, system_identifier=sysid, level=level)
    if ready is not None:
        ready.result()
    key = wal_key(str(sysid), name)
    for store in stores:
        store.ensure_marker()  # the first push into a repository marks it as one (wal-fetch believes "missing" there)
    stored: dict[str, str] = {}
    for s in stores:
        if s.encrypt:
            assert keys is not None
            stored[s.name] = push_encrypted(s, key, name, blob, meta, keys)
        else:
            stored[s.name] = push_one(s, key, name, blob, meta)
    meta["stored"] = stored
    meta["compressed_size"] = len(blob)
    return meta


def push_file(settings: WalSettings, path: str, sysid: str | None = None) -> int:
    """Archive one file (`%p`) into every repository: 0 once each holds it (in the asynchronous mode, once the
    uploader has recorded it); 1 when the uploader does not confirm it (its error, or none in time). Every other
    failure raises.
    `sysid`: the cluster's system identifier as given (`--sysid`), else read from its pg_control."""
    file = Path(path)
    name = file.name
    try:
        parse_wal_name(name)
    except ValueError as e:
        raise UsageError(f"wal-push {path}: {e}") from None
    cluster_sysid, datadir = cluster_identity(path, settings, sysid)
    if settings.async_mode and cluster_sysid is not None:
        rc = walfast.push_via_worker(settings, str(file), name, cluster_sysid, str(datadir) if datadir else None)
        if rc is not None:
            return rc
    data, archived_as = prepare(file, parse_wal_name(name), cluster_sysid)
    stores = open_wal_stores(settings.local_path, settings.s3, encrypt=settings.encrypt)
    meta = push_data(stores, name, data, archived_as, settings.level, _keys(settings, stores))
    unnoted = walfast.note_pushed(settings, archived_as, name, str(meta["sha256"]), int(meta["size"]))
    if unnoted:
        raise RunbookError(unnoted, hint="set wal.spool_dir to a directory the server's user can write, or make "
                                         "the default one ($XDG_STATE_HOME/runbook/wal-spool of that user) writable")
    walfast.record_own_push(name, {"name": name, "sha256": meta["sha256"], "size": meta["size"],
                                   "system_identifier": meta["system_identifier"],
                                   "destinations": settings.destinations, "stored": meta["stored"],
                                   "by": "wal-push itself, while the uploader started"})
    return 0


def _keys(settings: WalSettings, stores: Sequence[WalStore]) -> WalKeys | None:
    """The encryption keys of this process, when a repository is encrypted (pyrage is loaded only then)."""
    if not any(s.encrypt for s in stores):
        return None
    from steps.wal.crypt import WalKeys

    return WalKeys.of(settings)


# --- fetch ------------------------------------------------------------------------------------------


def fetch_blob(stores: Sequence[WalStore], key: str, name: str, attempts: int,
               sysid: int, keys: WalKeys | None = None) -> tuple[bytes | None, list[str]]:
    """The checked original bytes from the first repository with a good copy, or None and why not.

    None with no problems: every repository said the file does not exist."""
    data, _, problems = fetch_checked(stores, key, name, attempts, sysid, keys)
    return data, problems


def _get_either(store: WalStore, key: str) -> tuple[bytes, dict[str, str], str] | None:
    for k in keys_to_try(store, key):
        got = store.get_meta(k)
        if got is not None:
            return got[0], got[1], k
    return None


def fetch_checked(stores: Sequence[WalStore], key: str, name: str, attempts: int,
                  sysid: int, keys: WalKeys | None = None) -> tuple[bytes | None, str, list[str]]:
    """`fetch_blob`, with the sha256 of the bytes (checked against the archive's header). An encrypted copy
    (`<key>.age`) is decrypted with `keys` (this host's identities) before any check: a wrong key, a truncated
    or altered ciphertext is a problem named as such, like a damaged copy."""
    problems: list[str] = []
    for store in stores:
        blob: bytes | None = None
        got: tuple[bytes, dict[str, str], str] | None = None
        claims = None
        if store.verify_after_write:  # listed while the object is read: no round trip of its own
            claims = _Ahead(lambda s=store: s.claims(wal_claims_prefix(str(sysid), name)))
        for attempt in range(1, attempts + 1):
            try:
                got = _get_either(store, key)
                blob = got[0] if got is not None else None
                break
            except RepositoryError as e:
                if attempt == attempts:
                    problems.append(f"{store.describe()}: {e.message} (after {attempts} attempts)")
                else:
                    time.sleep(min(0.25 * 2 ** attempt, 4))
        else:
            continue
        if blob is None:
            try:
                believed = proves_absence(store, wal_prefix(str(sysid)))
            except RepositoryError as e:
                problems.append(f"{store.describe()}: {key} is not there, and whether this is the repository "
                                f"cannot be told: {e.message}")
                continue
            if not believed:
                problems.append(
                    f"{store.describe()} has no {key}, but it is not the repository: no {MARKER} marker at its root "
                    f"and no archived WAL of cluster {sysid} (not mounted? a wrong path or prefix?)")
            continue
        assert got is not None
        if got[2].endswith(ENCRYPTED_SUFFIX):
            try:
                if keys is None:
                    raise RunbookError(f"{got[2]} is encrypted, and this command was given no keys to open it")
                blob = keys.decrypt(store, got[2], blob, got[1])
            except RunbookError as e:
                problems.append(f"{store.describe()}: {got[2]}: {e.message}")
                continue
        try:
            data, meta = unpack(blob, name)
            if parse_wal_name(name).has_header:
                hdr = segment_header(data)
                if hdr.system_identifier != sysid:
                    raise CorruptWal(f"the segment belongs to cluster {hdr.system_identifier}, not {sysid}")
        except (CorruptWal, WalFileError) as e:
            problems.append(f"{store.describe()}: {key} is damaged: {e}")
            continue
        if claims is not None:
            disagreement = _claims_disagree(store, key, name, claims, str(meta["sha256"]))
            if disagreement:
                problems.append(disagreement)
                continue
        for p in problems:  # a good copy after a bad one: say so, but go on
            print(f"runbook wal-fetch: warning: {p}", file=sys.stderr)
        return data, str(meta["sha256"]), []
    return None, "", problems


def _claims_disagree(store: WalStore, key: str, name: str, claims: _Ahead, sha256: str) -> str | None:
    """Why the copy read from a store that may ignore conditional writes cannot be handed to PostgreSQL: two
    contents were claimed under its name, or the one claimed is not what is there now. None when it agrees (or
    the name has no claim: archived before claims existed)."""
    try:
        claimed: set[str] = claims.result()
    except RepositoryError as e:
        return f"{store.describe()}: cannot read the claims of {name}: {e.message}"
    if len(claimed) > 1:
        return (f"{store.describe()}: two different segments of one name: {name} was pushed with "
                f"{len(claimed)} different contents (sha256 {', '.join(sorted(claimed))}); the copy there now "
                f"({sha256}) is not handed to PostgreSQL")
    if claimed and sha256 not in claimed:
        return (f"{store.describe()}: {key} holds content (sha256 {sha256}) other than the one confirmed "
                f"({next(iter(claimed))}): it was replaced; not handed to PostgreSQL")
    return None


def write_atomically(dest: Path, data: bytes | memoryview) -> None:
    """DEST appears whole or not at all: a temporary name beside it, then rename."""
    tmp = dest.with_name(f".{dest.name}.runbook-{os.getpid()}")
    try:
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        os.replace(tmp, dest)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


def fetch_file(settings: WalSettings, name: str, dest: str, source: str = "any", sysid: str | None = None,
               verified: str | None = None) -> int:
    """Restore one archived file (`%f`) to `dest` (`%p`), written whole: 0; EXIT_MISSING when every repository
    says it does not exist. Every other failure raises (FetchFailed: no good copy could be read).
    `source`: "local", "s3" or "any" repository; `sysid` as given (`--sysid`), else read from pg_control.
    `verified`: the verified index of a recovery (steps.wal.ledger): only what the signed ledgers list, with
    these bytes, is written (else FetchFailed, naming why); a name they list that no repository has is not
    "missing" but deleted (FetchFailed)."""
    try:
        w = parse_wal_name(name)
    except ValueError as e:
        raise UsageError(f"wal-fetch: {e}") from None
    target = Path(dest)
    cluster_sysid, datadir = cluster_identity(dest, settings, sysid)
    if cluster_sysid is None:
        raise RunbookError(
            f"cannot tell which cluster's archive to read {name} from: no global/pg_control in the working "
            "directory, beside DEST's pg_wal, or at cluster.data_directory",
            hint="PostgreSQL runs restore_command in the data directory; by hand, pass --sysid")
    spool = None
    started = False
    if settings.prefetch > 0 and w.kind == "segment" and datadir is not None:
        spool = walfast.fetch_spool(settings, cluster_sysid, str(datadir))
        if spool is not None and walfast.take(spool, name, str(target), verified):
            walfast.request_after(settings, spool, cluster_sysid, str(datadir), name,
                                  walfast.segment_size_of(str(target)), source)
            return 0
        if spool is not None:  # the read-ahead starts beside this read, not after it (the first call of a replay)
            started = walfast.start_prefetcher(settings, spool, cluster_sysid, str(datadir), name,
                                               walfast.control_segment_size(str(datadir)), source)
    t0 = time.monotonic()
    stores = open_wal_stores(settings.local_path, settings.s3, source, settings.encrypt)
    data, digest, problems = fetch_checked(stores, wal_key(str(cluster_sysid), name), name, settings.fetch_attempts,
                                           cluster_sysid, reader_keys(settings, verified))
    if data is None:
        if not problems and verified is not None and _listed(verified, name):
            raise FetchFailed(f"cannot restore {name}: the signed WAL ledgers list it as archived, but no repository "
                              "has it: it was deleted", hint="recovery stops here rather than end early with it "
                              "missing; look for another copy (--from local|s3), or recover to a point before it")
        if not problems:
            if spool is not None:
                walfast.withdraw_want(spool, name)
            return EXIT_MISSING  # every repository says it does not exist: quietly
        raise FetchFailed(f"cannot restore {name}: " + "; ".join(problems),
                          hint="recovery stops here rather than end early with this WAL missing; fix the repository "
                               "(mount it; or use the other copy: --from local|s3) and start the server again. "
                               f"A repository without its {MARKER} marker gets it from the next backup, basebackup "
                               "or wal-push into it")
    if verified is not None:
        verdict, why = walfast.signed_verdict(verified, name, digest)
        if verdict == "end":
            if spool is not None:
                walfast.withdraw_want(spool, name)
            print(f"runbook wal-fetch: {why}", file=sys.stderr)
            return EXIT_MISSING
        if verdict != "ok":
            raise FetchFailed(f"refusing {name}: {why}",
                              hint="recovery stops here: nothing the backup host did not sign is replayed. Recover "
                                   "to a point before it, or (a repository archived before WAL signing, or a tail "
                                   "never sealed) run the recovery again with allow_unsigned, which is journaled")
    write_atomically(target, data)
    if spool is not None:
        # A prefetcher running without this segment ready: replay outran the read-ahead and waited for the
        # repository (what we spent here), which tells the prefetcher to read ahead deeper.
        missed = not started and walfast.worker_alive(os.path.join(spool, ".lock"))
        walfast.request_after(settings, spool, cluster_sysid, str(datadir), name, segment_header(data).segment_size,
                              source, (time.monotonic() - t0) * 1000 if missed else 0.0, started=started)
    return 0


def reader_keys(settings: WalSettings, verified: str | None = None) -> WalKeys:
    """This process's keys for reading WAL: nothing is loaded until an encrypted copy is met. A recovery whose
    verified index accepts unsigned WAL (`allow_unsigned`) accepts unsigned epochs too."""
    from steps.wal.crypt import WalKeys

    accept = False
    if verified is not None:
        try:
            accept = walfast.index_lookup(verified, "00000001.history")[1]
        except (OSError, ValueError, UnicodeDecodeError):
            accept = False  # the verdict on the file itself says what is wrong with the index
    return WalKeys.of(settings, accept)


def _listed(index: str, name: str) -> bool:
    try:
        return walfast.index_lookup(index, name)[0] is not None
    except (OSError, ValueError, UnicodeDecodeError) as e:
        raise FetchFailed(f"the verified WAL index {index} cannot be read: {e}") from None


class FetchFailed(RunbookError):
    exit_code = EXIT_ABORT_RECOVERY

