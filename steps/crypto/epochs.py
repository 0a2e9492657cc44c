"""The envelope: data objects are encrypted to an epoch's data key, the data key is wrapped to the recipients.

```
encryption/epochs/<epoch>/epoch.json           {"format_version": 1, "epoch", "data_recipient", "recipients",
                                                "created_at", "host"}: write-once, signed (.sig) when signing is set
encryption/epochs/<epoch>/wrap-<stamp>.age     the epoch's data identity (AGE-SECRET-KEY-1...), age-encrypted to
                                                the recipients of that wrap
encryption/epochs/<epoch>/wrap-<stamp>.json    whom that wrap opens for, and the sha256 of its bytes (signed)
encryption/journal/<stamp>-<create|rotate|revoke>.json   who, when, which epochs, recipients added or removed
```
An epoch id is `YYYYmmddTHHMMSSZ-` and the first 8 hex digits of the sha256 of its data recipient.

**Writers** (`writer_key`) need only the public data recipient. A writer remembers, in its state directory, the
epoch it created for a repository and the recipients it wrapped it to; when the configured recipients differ (or
the epoch is gone from the repository) it makes a new epoch: a fresh identity wrapped to the recipients, then
forgotten. Writers never take a data recipient from the repository: a planted epoch cannot redirect them.

**Readers** (`KeyRing`) open an epoch named by an object: epoch.json's signature is checked (a forged or unsigned
epoch is refused like a forged manifest, unless unsigned objects are allowed), then each wrap, newest first, whose
signed sidecar vouches for its bytes, is opened with the host's identities; the identity inside must be the one
whose public key is the epoch's data recipient, else that wrap is refused. Opened epochs are kept for the process.

**Rotation** writes, per epoch, a new wrap to the recipients of the wrap it opened plus the added ones; data is
never rewritten. **Revocation** writes a new wrap without the removed recipient and deletes every other wrap. Its
honest limit: whoever held the revoked key and already unwrapped an epoch's data key can still read that epoch's
data; only epochs created after the writers dropped the key from their config are out of its reach.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
import re
import socket
import stat
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from steps.crypto.age import (
    Identity,
    decrypt_bytes,
    encrypt_bytes,
    load_recipients,
    new_identity,
    parse_identity,
    parse_recipient,
)
from steps.crypto.errors import AlteredCiphertext, EncryptionError, EpochRefused, NoIdentity
from steps.repository.store import LocalStore, NotFound, RepositoryError, Store

if TYPE_CHECKING:
    from steps.repository.config import RepositoryConfig
    from steps.repository.signing import Signer, Trust

ROOT = "encryption/"
EPOCHS = "encryption/epochs/"
JOURNAL = "encryption/journal/"
EPOCH_FILE = "epoch.json"
FORMAT_VERSION = 1
EPOCH_RE = re.compile(r"^\d{8}T\d{6}Z-[0-9a-f]{8}$")
WRAP_RE = re.compile(r"^wrap-(\d{8}T\d{6}\.\d{6}Z)\.age$")
MAX_SMALL = 64 * 1024  # epoch.json, a wrap, a sidecar, a journal record: anything larger is refused unread
HINT_ROTATE = ("a host holding an identity that opens it can add this host's recipient: `runbook keys rotate -c "
               "CONFIG --add age1...` (docs/encryption.md)")


def _now() -> datetime:
    return datetime.now(UTC)


def _stamp(when: datetime) -> str:
    return when.strftime("%Y%m%dT%H%M%S.%fZ")


def _who() -> str:
    import pwd

    try:
        user = pwd.getpwuid(os.geteuid()).pw_name
    except KeyError:
        user = str(os.geteuid())
    return f"{user}@{socket.gethostname()}"


def _json(obj: dict[str, Any]) -> bytes:
    return (json.dumps(obj, sort_keys=True, indent=1) + "\n").encode()


def _put(store: Store, key: str, data: bytes, signer: Signer | None) -> None:
    if signer is not None:
        signer.put(store, key, data)
    else:
        store.put_bytes(key, data)


def epoch_prefix(epoch: str) -> str:
    if not EPOCH_RE.match(epoch):
        raise EpochRefused(f"{epoch[:60]!r} is not an epoch id (YYYYmmddTHHMMSSZ-xxxxxxxx): the object naming it was "
                           "not written by this tool", hint="do not use that backup")
    return f"{EPOCHS}{epoch}/"


def _read_small(store: Store, key: str, size: int | None = None) -> bytes:
    """A small object (at most MAX_SMALL bytes), never through a link in a local repository. NotFound when it
    does not exist, EpochRefused when it is not a plain small file."""
    if size is not None and size > MAX_SMALL:
        raise EpochRefused(f"{key} in {store.describe()} is {size} bytes, larger than any key object: refused")
    if isinstance(store, LocalStore):
        from steps.fs import UnsafePath, open_read_beneath

        try:
            root = os.open(store.root, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        except FileNotFoundError:
            raise NotFound(f"{key} does not exist in {store.describe()}") from None
        except OSError as e:
            raise RepositoryError(f"cannot open {store.describe()}: {e.strerror}") from None
        try:
            try:
                st = os.stat(key, dir_fd=root, follow_symlinks=False)
            except FileNotFoundError:
                raise NotFound(f"{key} does not exist in {store.describe()}") from None
            except NotADirectoryError:
                raise EpochRefused(f"{key} in {store.describe()}: a directory on its way is not one") from None
            if stat.S_ISLNK(st.st_mode):
                raise EpochRefused(f"{key} in {store.describe()} is a symbolic link, never followed: refused")
            if not stat.S_ISREG(st.st_mode):
                raise EpochRefused(f"{key} in {store.describe()} is not a regular file: refused")
            try:
                fd = open_read_beneath(root, key, what="key object")
            except UnsafePath as e:
                raise EpochRefused(f"{store.describe()}: {e.message}") from None
            with os.fdopen(fd, "rb") as f:
                data = f.read(MAX_SMALL + 1)
        except OSError as e:
            raise RepositoryError(f"cannot read {key} in {store.describe()}: {e.strerror}") from None
        finally:
            os.close(root)
    else:
        data = store.get_bytes(key)
    if len(data) > MAX_SMALL:
        raise EpochRefused(f"{key} in {store.describe()} is larger than {MAX_SMALL} bytes: not a key object; refused")
    return data


def _parse_json(data: bytes, what: str) -> dict[str, Any]:
    try:
        obj = json.loads(data)
    except (ValueError, UnicodeDecodeError) as e:
        raise EpochRefused(f"{what} is not JSON ({e.__class__.__name__}): refused") from None
    if not isinstance(obj, dict) or obj.get("format_version") != FORMAT_VERSION:
        raise EpochRefused(f"{what} is not a format_version {FORMAT_VERSION} object of this tool: refused")
    return obj


def _recipient_list(obj: dict[str, Any], what: str) -> list[str]:
    rs = obj.get("recipients")
    if not isinstance(rs, list) or not rs or not all(isinstance(r, str) for r in rs):
        raise EpochRefused(f"{what}: its recipients are not a list of age1... keys: refused")
    try:
        return [parse_recipient(r) for r in rs]
    except ValueError as e:
        raise EpochRefused(f"{what}: {e}: refused") from None


# --- epochs, as read from a repository --------------------------------------------------------------------------


@dataclass(frozen=True)
class Wrap:
    name: str  # wrap-<stamp>.age
    size: int
    recipients: list[str] | None = None  # from its sidecar (None: no readable sidecar)
    sha256: str | None = None  # from its sidecar
    problem: str | None = None  # why its sidecar cannot be used
    genuine: bool = False  # its sidecar is signed by a trusted key (not merely accepted unsigned)


@dataclass(frozen=True)
class EpochInfo:
    """One epoch as `keys list`, `check` and `status` show it."""

    epoch: str
    data_recipient: str | None = None
    created_at: str | None = None
    host: str | None = None
    created_for: list[str] = field(default_factory=list)  # epoch.json's recipients (at creation)
    wraps: list[Wrap] = field(default_factory=list)  # newest first
    problem: str | None = None  # epoch.json missing, unreadable, refused

    @property
    def recipients(self) -> list[str]:
        """Whom the epoch's wraps open for now: the union of every wrap's recipients (as their sidecars say)."""
        out: list[str] = []
        for w in self.wraps:
            for r in w.recipients or []:
                if r not in out:
                    out.append(r)
        return out or list(self.created_for)


def _check_signed(store: Store, key: str, data: bytes, trusted: Trust | None, what: str) -> bool:
    """Refuse (EpochRefused) what the trusted keys refuse; True when it is genuine (signed by one of them)."""
    if trusted is None:
        return False
    verdict = trusted.read(store, key, data)
    if not verdict.accepted:
        raise EpochRefused(f"{what} is refused: {verdict.reason}",
                           hint="a forged or unsigned key object; `runbook keys list -c CONFIG` shows the keys this "
                                "host trusts")
    return verdict.genuine


def _epoch_json(store: Store, epoch: str, trusted: Trust | None, keys: dict[str, int]) -> dict[str, Any]:
    """epoch.json, checked; `keys` is the listing of the epoch's directory (sizes: nothing large is read)."""
    prefix = epoch_prefix(epoch)
    what = f"epoch {epoch} ({store.describe()})"
    try:
        if prefix + EPOCH_FILE not in keys:
            raise NotFound(prefix + EPOCH_FILE)
        data = _read_small(store, prefix + EPOCH_FILE, keys[prefix + EPOCH_FILE])
    except NotFound:
        raise EncryptionError(f"epoch {epoch} is not in {store.describe()} ({prefix}{EPOCH_FILE} is missing): the "
                              "objects encrypted in it cannot be opened from this copy",
                              hint="use another copy of the backup (from: local / from: s3)") from None
    _check_signed(store, prefix + EPOCH_FILE, data, trusted, what)
    obj = _parse_json(data, what)
    if obj.get("epoch") != epoch:
        raise EpochRefused(f"{what}: its epoch.json names epoch {str(obj.get('epoch'))[:40]!r} (copied from elsewhere):"
                           " refused")
    dr = obj.get("data_recipient")
    try:
        data_recipient = parse_recipient(dr if isinstance(dr, str) else "")
    except ValueError as e:
        raise EpochRefused(f"{what}: its data recipient: {e}: refused") from None
    if hashlib.sha256(data_recipient.encode()).hexdigest()[:8] != epoch[-8:]:
        raise EpochRefused(f"{what}: its data recipient does not match the epoch id: refused")
    obj["data_recipient"] = data_recipient
    obj["recipients"] = _recipient_list(obj, what)
    return obj


def _listing(store: Store, epoch: str) -> dict[str, int]:
    return dict(store.list_keys(epoch_prefix(epoch)))


def _wraps(store: Store, epoch: str, trusted: Trust | None, keys: dict[str, int]) -> list[Wrap]:
    """The wraps of an epoch, newest first, each with what its sidecar says (or why it cannot be used); `keys`
    is the listing of the epoch's directory."""
    prefix = epoch_prefix(epoch)
    out: list[Wrap] = []
    for key in sorted(keys, reverse=True):
        name = key[len(prefix):]
        if not WRAP_RE.match(name):
            continue
        side_key = prefix + name[: -len(".age")] + ".json"
        recipients = sha = problem = None
        genuine = False
        try:
            if side_key not in keys:
                raise EpochRefused("it has no sidecar (wrap-*.json) saying whom it opens for")
            data = _read_small(store, side_key, keys[side_key])
            genuine = _check_signed(store, side_key, data, trusted, f"the sidecar of {name}")
            obj = _parse_json(data, f"the sidecar of {name}")
            if obj.get("wrap") != name or obj.get("epoch") != epoch:
                raise EpochRefused(f"its sidecar is for {str(obj.get('wrap'))[:60]!r} of epoch "
                                   f"{str(obj.get('epoch'))[:40]!r}")
            recipients = _recipient_list(obj, f"the sidecar of {name}")
            sha = obj.get("sha256")
            if not isinstance(sha, str) or not re.fullmatch(r"[0-9a-f]{64}", sha):
                raise EpochRefused("its sidecar holds no sha256 of it")
        except (EpochRefused, RepositoryError) as e:
            problem = e.message
        out.append(Wrap(name, keys[key], recipients, sha, problem, genuine))
    return out


def list_epochs(store: Store, trusted: Trust | None = None) -> list[EpochInfo]:
    """Every epoch of a repository, oldest first, with what its epoch.json and wraps say (each one's problem said,
    never raised: a hostile entry is shown, not fatal)."""
    out: list[EpochInfo] = []
    for name in store.list_dirs(EPOCHS):
        if not EPOCH_RE.match(name):
            out.append(EpochInfo(name[:60], problem="not an epoch id: ignored"))
            continue
        try:
            keys = _listing(store, name)
            obj = _epoch_json(store, name, trusted, keys)
            wraps = _wraps(store, name, trusted, keys)
        except (EncryptionError, RepositoryError) as e:
            out.append(EpochInfo(name, problem=e.message))
            continue
        out.append(EpochInfo(name, obj["data_recipient"], str(obj.get("created_at", "")), str(obj.get("host", "")),
                             obj["recipients"], wraps))
    return out


# --- readers -----------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Opened:
    """An epoch opened: its data identity, and the wrap that opened (whom it is wrapped for)."""

    epoch: str
    identity: Identity
    wrap: str
    recipients: list[str]
    genuine: bool = False  # the wrap's sidecar (whom it opens for) is signed by a trusted key


class KeyRing:
    """A reading host's identities (encryption.identity_files), and the epochs they opened in this process.

    `trusted`: the public signing keys (steps.repository.signing.Trust) epoch.json and the wrap sidecars are
    checked with; None checks nothing (only for a repository known to be written without signing).
    `allow_unsigned` accepts unsigned key objects (a repository written before signing), not forged ones."""

    def __init__(self, identities: Sequence[Identity], trusted: Trust | None = None,
                 allow_unsigned: bool = False) -> None:
        self.identities = list(identities)
        if trusted is not None and allow_unsigned and not trusted.allow_unsigned:
            from steps.repository.signing import Trust

            trusted = Trust(dict(trusted.keys), True)
        self.trusted = trusted
        self._opened: dict[tuple[str, str], Opened] = {}

    def describe(self) -> str:
        files = sorted({i.source.rsplit(":", 1)[0] for i in self.identities})
        return ", ".join(files) if files else "none configured (encryption.identity_files)"

    def identity_for(self, store: Store, epoch: str) -> Identity:
        """The data identity of `epoch` in `store`: NoIdentity when no identity of this host opens it, EpochRefused
        when its key objects are forged, unsigned or do not match, EncryptionError when it is missing."""
        return self.open(store, epoch).identity

    def can_open(self, store: Store, epoch: str) -> str | None:
        """None when this host opens the epoch, else why not (for `keys list` and `check`)."""
        try:
            self.open(store, epoch)
        except (EncryptionError, RepositoryError) as e:
            return e.message
        return None

    def open(self, store: Store, epoch: str) -> Opened:
        cache = (store.describe(), epoch)
        if cache in self._opened:
            return self._opened[cache]
        keys = _listing(store, epoch)
        obj = _epoch_json(store, epoch, self.trusted, keys)
        data_recipient = obj["data_recipient"]
        prefix = epoch_prefix(epoch)
        refused: list[str] = []
        wrapped_for: list[str] = []
        wraps = _wraps(store, epoch, self.trusted, keys)
        if not wraps:
            raise EpochRefused(f"epoch {epoch} in {store.describe()} has no wrapped key (wrap-*.age) left: its data "
                               "cannot be opened from this copy", hint="use another copy of the backup")
        for w in wraps:
            if w.problem is not None or w.recipients is None:
                refused.append(f"{w.name}: {w.problem}")
                continue
            wrapped_for.extend(r for r in w.recipients if r not in wrapped_for)
            try:
                data = _read_small(store, prefix + w.name, w.size)
            except (EpochRefused, RepositoryError) as e:
                refused.append(f"{w.name}: {e.message}")
                continue
            if hashlib.sha256(data).hexdigest() != w.sha256:
                refused.append(f"{w.name}: its bytes are not those its sidecar vouches for (altered or replaced)")
                continue
            try:
                text = decrypt_bytes(data, self.identities, f"{prefix}{w.name}")
            except NoIdentity:
                continue
            except AlteredCiphertext as e:
                refused.append(f"{w.name}: {e.message}")
                continue
            try:
                ident = parse_identity(text.decode("ascii"), f"epoch {epoch}")
            except (ValueError, UnicodeDecodeError):
                refused.append(f"{w.name}: it does not hold an age identity")
                continue
            if ident.recipient != data_recipient:
                refused.append(f"the wrapped key of epoch {epoch} ({w.name}) does not match its data recipient")
                continue
            opened = Opened(epoch, ident, w.name, list(w.recipients), w.genuine)
            self._opened[cache] = opened
            return opened
        mine = {i.recipient for i in self.identities}
        if refused and (mine & set(wrapped_for) or not wrapped_for):
            raise EpochRefused(f"epoch {epoch} in {store.describe()} is refused: " + "; ".join(refused),
                               hint="its key objects were altered or planted; use another copy")
        also = f" (and refused: {'; '.join(refused)})" if refused else ""
        raise NoIdentity(f"no identity of this host ({self.describe()}: {', '.join(sorted(mine)) or 'none'}) opens "
                         f"epoch {epoch}, wrapped for {', '.join(wrapped_for) or 'nobody'}{also}", hint=HINT_ROTATE)


# --- writers -------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class WriterKey:
    epoch: str
    data_recipient: str


def store_fingerprint(store: Store) -> str:
    """Names a repository in a writer's state directory: the sha256 of where it is (16 hex digits)."""
    return hashlib.sha256(store.describe().encode()).hexdigest()[:16]


def _cache_dir(state_dir: Path) -> Path:
    d = state_dir / "encryption"
    d.mkdir(parents=True, exist_ok=True, mode=0o700)
    return d


def _read_cache(path: Path, store: Store) -> dict[str, Any] | None:
    try:
        obj = json.loads(path.read_bytes())
        if (isinstance(obj, dict) and obj.get("store") == store.describe() and isinstance(obj.get("epoch"), str)
                and EPOCH_RE.match(obj["epoch"]) and isinstance(obj.get("recipients"), list)
                and all(isinstance(r, str) for r in obj["recipients"])
                and isinstance(obj.get("data_recipient"), str)):
            parse_recipient(obj["data_recipient"])
            return obj
    except (OSError, ValueError):
        pass
    return None


def _write_cache(path: Path, obj: dict[str, Any]) -> None:
    tmp = path.with_name(f".tmp-{path.name}-{os.getpid()}")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(_json(obj))
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def writer_key(store: Store, recipients: Sequence[str], state_dir: Path, signer: Signer | None, *,
               recheck_s: float = 0.0) -> WriterKey:
    """The epoch (and its public data recipient) this host encrypts to in `store`: the one it created, while
    the configured `recipients` (age1... keys or files of them) are those it was created for and it is still in
    the repository (looked at unless it was within `recheck_s` seconds); otherwise a new epoch, created now.
    Raises EncryptionError (a bad recipient) or RepositoryError (the repository cannot be written)."""
    wanted = load_recipients(list(recipients))
    if not wanted:
        raise EncryptionError("encryption.recipients is empty: nobody to encrypt for",
                              hint="name the age public keys of the restoring hosts (docs/encryption.md)")
    try:
        cdir = _cache_dir(state_dir)
        path = cdir / f"{store_fingerprint(store)}.json"
        lock_fd = os.open(cdir / f"{store_fingerprint(store)}.lock", os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW, 0o600)
    except OSError as e:
        raise EncryptionError(f"cannot use the state directory {state_dir} for the encryption epochs: {e.strerror}",
                              hint="backup.state_dir names it; it must be writable by this user") from None
    try:
        fcntl.flock(lock_fd, fcntl.LOCK_EX)
        cached = _read_cache(path, store)
        if cached is not None and sorted(cached["recipients"]) == sorted(wanted):
            fresh = time.time() - float(cached.get("checked_at", 0)) < recheck_s
            if fresh or store.exists(epoch_prefix(cached["epoch"]) + EPOCH_FILE):
                if not fresh and recheck_s > 0:
                    _write_cache(path, {**cached, "checked_at": time.time()})
                return WriterKey(cached["epoch"], cached["data_recipient"])
        key = create_epoch(store, wanted, signer)
        _write_cache(path, {"store": store.describe(), "epoch": key.epoch, "data_recipient": key.data_recipient,
                            "recipients": wanted, "checked_at": time.time()})
        return key
    finally:
        os.close(lock_fd)


def _new_wrap(store: Store, epoch: str, ident: Identity, recipients: list[str], signer: Signer | None,
              when: datetime) -> str:
    prefix = epoch_prefix(epoch)
    stamp = _stamp(when)
    name = f"wrap-{stamp}.age"
    data = encrypt_bytes((ident.text() + "\n").encode(), recipients)
    _put(store, prefix + name, data, None)
    _put(store, f"{prefix}wrap-{stamp}.json",
         _json({"format_version": FORMAT_VERSION, "epoch": epoch, "wrap": name, "recipients": recipients,
                "sha256": hashlib.sha256(data).hexdigest(), "created_at": when.isoformat(timespec="seconds"),
                "by": _who()}), signer)
    return name


def create_epoch(store: Store, recipients: Sequence[str], signer: Signer | None) -> WriterKey:
    """A new epoch: a fresh data identity, wrapped to `recipients` (age1... keys), then forgotten."""
    rs = [parse_recipient(r) for r in recipients]
    ident = new_identity("new epoch")
    when = _now()
    epoch = f"{when.strftime('%Y%m%dT%H%M%SZ')}-{hashlib.sha256(ident.recipient.encode()).hexdigest()[:8]}"
    _new_wrap(store, epoch, ident, rs, signer, when)
    _put(store, epoch_prefix(epoch) + EPOCH_FILE,
         _json({"format_version": FORMAT_VERSION, "epoch": epoch, "data_recipient": ident.recipient,
                "recipients": rs, "created_at": when.isoformat(timespec="seconds"), "host": socket.gethostname()}),
         signer)
    _journal(store, "create", signer, epochs=[epoch], added=rs)
    return WriterKey(epoch, ident.recipient)


# --- the journal, rotation, revocation ----------------------------------------------------------------------------


@dataclass(frozen=True)
class Record:
    """A journal record: what `rotate` or `revoke` (or a writer creating an epoch) did."""

    key: str
    action: str
    epochs: list[str]
    added: list[str] = field(default_factory=list)
    removed: list[str] = field(default_factory=list)
    skipped: dict[str, str] = field(default_factory=dict)  # epoch -> why it was not re-wrapped
    dropped: dict[str, list[str]] = field(default_factory=dict)  # epoch -> recipients only unsigned sidecars named


def _journal(store: Store, action: str, signer: Signer | None, *, epochs: list[str], added: Sequence[str] = (),
             removed: Sequence[str] = (), skipped: dict[str, str] | None = None,
             dropped: dict[str, list[str]] | None = None) -> Record:
    when = _now()
    key = f"{JOURNAL}{_stamp(when)}-{action}.json"
    _put(store, key, _json({"format_version": FORMAT_VERSION, "action": action, "at": when.isoformat(),
                            "by": _who(), "epochs": epochs, "added": list(added), "removed": list(removed),
                            "skipped": skipped or {}, "dropped": dropped or {}}), signer)
    return Record(key, action, epochs, list(added), list(removed), dict(skipped or {}), dict(dropped or {}))


def journal(store: Store, trusted: Trust | None = None) -> list[Record]:
    """The journal's records, oldest first; a record refused (unsigned, forged, unreadable) is left out."""
    out: list[Record] = []
    for key, size in store.list_keys(JOURNAL):
        try:
            data = _read_small(store, key, size)
            _check_signed(store, key, data, trusted, key)
            obj = _parse_json(data, key)
            out.append(Record(key, str(obj.get("action")), [str(e) for e in obj.get("epochs", [])],
                              [str(r) for r in obj.get("added", [])], [str(r) for r in obj.get("removed", [])],
                              {str(k): str(v) for k, v in dict(obj.get("skipped", {})).items()},
                              {str(k): [str(r) for r in v] for k, v in dict(obj.get("dropped", {})).items()}))
        except (EncryptionError, RepositoryError, TypeError, ValueError, AttributeError):
            continue
    return out


def revoked(store: Store, trusted: Trust | None = None) -> set[str]:
    """The recipients revoked in this repository's journal (by a revocation that re-wrapped something, or had
    nothing to skip) and not added back since."""
    out: set[str] = set()
    for rec in journal(store, trusted):
        if rec.action == "revoke" and (rec.epochs or not rec.skipped):
            out.update(rec.removed)
        elif rec.action == "rotate":
            out.difference_update(rec.added)
    return out


def _vouched(info: EpochInfo, opened: Opened, configured: Sequence[str]) -> tuple[list[str], list[str]]:
    """Whom an epoch is to stay wrapped for, and whom it is not re-wrapped for.

    The recipients a signed sidecar names are kept. Those only an unsigned sidecar names (a repository read with
    allow_unsigned) could have been planted to have the data key re-wrapped to an attacker: they are kept only
    when they are among this host's `configured` recipients, the others are dropped (and said)."""
    keep: list[str] = []
    dropped: list[str] = []
    for recipients, genuine in [(opened.recipients, opened.genuine)] + [
            (w.recipients or [], w.genuine) for w in info.wraps if w.problem is None]:
        for r in recipients:
            if r in keep or r in dropped:
                continue
            (keep if genuine or r in configured else dropped).append(r)
    return keep, [r for r in dropped if r not in keep]


def rotate(store: Store, ring: KeyRing, add: Sequence[str], signer: Signer | None, *,
           configured: Sequence[str] = ()) -> Record:
    """Add recipients to every epoch this host opens: per epoch one new wrap, to the recipients its wraps are
    for (see `_vouched`: `configured` are this host's own) and `add`. Data objects are never rewritten. Epochs
    it cannot open are listed in `skipped`, recipients not carried over in `dropped`."""
    added = load_recipients(list(add), what="--add")
    dropped: dict[str, list[str]] = {}
    done: list[str] = []
    skipped: dict[str, str] = {}
    for info in list_epochs(store, ring.trusted):
        if info.problem is not None:
            skipped[info.epoch] = info.problem
            continue
        try:
            opened = ring.open(store, info.epoch)
        except (EncryptionError, RepositoryError) as e:
            skipped[info.epoch] = e.message
            continue
        current, lost = _vouched(info, opened, [*configured, *added])
        target = current + [r for r in added if r not in current]
        if target == current and not lost:
            continue
        if lost:
            dropped[info.epoch] = lost
        _new_wrap(store, info.epoch, opened.identity, target, signer, _now())
        done.append(info.epoch)
    return _journal(store, "rotate", signer, epochs=done, added=added, skipped=skipped, dropped=dropped)


def revoke(store: Store, ring: KeyRing, remove: str, signer: Signer | None, *,
           configured: Sequence[str] = ()) -> Record:
    """Remove a recipient from every epoch that is wrapped for it: a new wrap to the other recipients of the
    wrap this host opened, then every other wrap of that epoch deleted. An epoch this host cannot open, or whose
    only recipient is `remove`, is listed in `skipped` and left as it is."""
    try:
        gone = parse_recipient(remove)
    except ValueError as e:
        raise EncryptionError(f"revoke: {e}") from None
    done: list[str] = []
    skipped: dict[str, str] = {}
    dropped: dict[str, list[str]] = {}
    for info in list_epochs(store, ring.trusted):
        if info.problem is not None:
            skipped[info.epoch] = info.problem
            continue
        concerned = gone in info.recipients or any(w.recipients is None for w in info.wraps)
        if not concerned:
            continue
        try:
            opened = ring.open(store, info.epoch)
        except (EncryptionError, RepositoryError) as e:
            skipped[info.epoch] = e.message
            continue
        current, lost = _vouched(info, opened, configured)
        target = [r for r in current if r != gone]
        if not target:
            skipped[info.epoch] = (f"{gone} is its only recipient: revoking it would make the epoch's data "
                                   "unreadable; add another recipient first (keys rotate --add)")
            continue
        prefix = epoch_prefix(info.epoch)
        new = _new_wrap(store, info.epoch, opened.identity, target, signer, _now())
        old = [w.name for w in info.wraps if w.name != new]
        store.delete([prefix + k for n in old for k in (n, n[:-4] + ".json", n[:-4] + ".json.sig")])
        ring._opened.pop((store.describe(), info.epoch), None)
        done.append(info.epoch)
        if [r for r in lost if r != gone]:
            dropped[info.epoch] = [r for r in lost if r != gone]
    return _journal(store, "revoke", signer, epochs=done, removed=[gone], skipped=skipped, dropped=dropped)


# --- from the repository config -------------------------------------------------------------------------------


def ring_from_config(cfg: RepositoryConfig, *, allow_unsigned: bool = False) -> KeyRing:
    """This host's identities (encryption.identity_files) and the signing keys it trusts, as a KeyRing. Raises
    EncryptionError for an identity file refused, SigningError for a public key file refused."""
    from steps.crypto.age import load_identities
    from steps.repository.signing import trust_from_config

    paths = cfg.encryption.identity_files if cfg.encryption else []
    return KeyRing(load_identities(paths), trust_from_config(cfg, allow_unsigned=allow_unsigned))


def recipients_from_config(cfg: RepositoryConfig) -> list[str]:
    """The configured recipients (encryption.recipients), files read; EncryptionError naming a bad one."""
    return load_recipients(cfg.encryption.recipients if cfg.encryption else [])
