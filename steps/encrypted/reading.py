"""The reading host's side of an encrypted repository: fetch-latest-backup, restore-attachments and verify-backup
open each encrypted copy with this host's identities (`encryption.identity_files`).

`Keys` loads the identities on first need (a host reading only plaintext copies never opens them) into a
steps.crypto.epochs.KeyRing, which opens an epoch's wrapped data key once per process (its epoch.json signed
like a manifest). `Keys.opener(store, manifest)` is asked once per copy, **before** any object is fetched: a host
that holds no identity for the copy's epoch is told so by name (the epoch, whom it is wrapped for, and the config
key `encryption.identity_files`) and nothing is downloaded. Each object then streams through an `ObjectDecoding`
(steps.repository.store.Decoding): its stored bytes hashed as they arrive and compared with the signed manifest's
`stored_sha256` before anything decrypted is used, then age's own authentication of the end, then the plaintext
sha256. Stored bytes that differ from the manifest are named by how far they decrypt: "truncated ciphertext"
(every byte authentic, the end missing), "altered ciphertext" (age refuses some), or altered as "another complete
age object ... replaced" (valid ciphertext to the same epoch, e.g. another backup's object put in its place).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from runbook.errors import RunbookError
from steps.repository.manifest import Encryption, ObjectEntry
from steps.repository.store import ChunkFilter, Decoded, RepositoryError, Store

if TYPE_CHECKING:
    from steps.repository.config import RepositoryConfig
    from steps.repository.signing import Trust

IDENTITY_KEY = "encryption.identity_files"


def short(recipient: str) -> str:
    """A recipient as people tell them apart: `age1` and the next 6 characters."""
    return recipient[:10]


def describe_recipients(recipients: list[str], width: int = 60) -> str:
    """`N recipients: age1abcdef, age1ghijkl, +2`, cut to fit `width` characters."""
    head = f"{len(recipients)} recipient{'s' if len(recipients) != 1 else ''}"
    shown: list[str] = []
    for i, r in enumerate(recipients):
        rest = len(recipients) - i - 1
        more = f", +{rest}" if rest else ""
        candidate = f"{head}: {', '.join([*shown, short(r)])}{more}"
        if len(candidate) > width and shown:
            return f"{head}: {', '.join(shown)}, +{len(recipients) - len(shown)}"
        shown.append(short(r))
    return f"{head}: {', '.join(shown)}" if shown else head


@dataclass
class ObjectDecoding:
    """One object of an encrypted copy, for steps.repository.store.Store.fetch_beneath."""

    stored_size: int
    stored_sha256: str
    identity: Any
    what: str  # "backup B in <repository>": said in every error
    where: str

    def decoder(self, sink: Callable[[bytes], None]) -> ChunkFilter:
        from steps.crypto.age import Decryptor

        return Decryptor(self.identity, sink, self.what)  # type: ignore[no-any-return]

    def mismatch(self, key: str, got_size: int, got_sha256: str, decoded: Decoded) -> RepositoryError:
        from steps.crypto.errors import AlteredCiphertext

        if decoded == "cut":
            return AlteredCiphertext(
                f"truncated ciphertext: {key} in {self.where} has {got_size} bytes, the manifest says "
                f"{self.stored_size}; every byte there is authentic but the end is missing ({self.what}); nothing of "
                "it was used",
                hint="the object was cut short (an interrupted copy, a full disk): use another copy "
                     "(from: s3 / from: local) or another backup")
        how = ("another complete age object (valid ciphertext, but not this backup's: replaced)"
               if decoded == "whole" else "age refuses them (altered)")
        return AlteredCiphertext(
            f"altered ciphertext: the stored bytes of {key} in {self.where} do not match the manifest (sha256 "
            f"{got_sha256}, {got_size} bytes; the manifest says {self.stored_sha256}, {self.stored_size} bytes): "
            f"{how} ({self.what}); nothing of it was used",
            hint="the object was changed or replaced after the backup: this copy cannot be trusted; use another "
                 "copy (from: s3 / from: local) or another backup, and find out who could write the repository")


class Keys:
    """This host's identities, opened on first need; the epochs they opened, once per process."""

    def __init__(self, cfg: RepositoryConfig, trust: Trust, *, allow_unsigned: bool = False,
                 config_path: Path | None = None) -> None:
        self.cfg = cfg
        self.trust = trust
        self.allow_unsigned = allow_unsigned
        self.config_path = config_path
        self._ring: Any = None

    def identity_files(self) -> list[Path]:
        enc = getattr(self.cfg, "encryption", None)
        return [Path(p) for p in (enc.identity_files if enc is not None else [])]

    def ring(self) -> Any:
        if self._ring is None:
            from steps.crypto.age import load_identities
            from steps.crypto.epochs import KeyRing

            files = self.identity_files()
            self._ring = KeyRing(load_identities(files) if files else [], self.trust, self.allow_unsigned)
        return self._ring

    def identity(self, store: Store, enc: Encryption, what: str) -> Any:
        """The data identity of `enc.epoch` in `store`. Raises steps.crypto.errors.NoIdentity naming the epoch,
        its recipients and the config key; EpochRefused for a forged or mismatching epoch."""
        from steps.crypto.errors import NoIdentity

        where = f" in {self.config_path}" if self.config_path else ""
        if not self.identity_files():
            raise NoIdentity(
                f"{what} is encrypted (age, epoch {enc.epoch}, written for {describe_recipients(enc.recipients)}) and "
                f"this host has no identity to open it: {IDENTITY_KEY} is not set{where}",
                hint=f"set {IDENTITY_KEY} to the age identity file (0600, outside the repository) of one of those "
                     f"recipients: {', '.join(enc.recipients) or 'see runbook keys list'}")
        try:
            return self.ring().identity_for(store, enc.epoch)
        except NoIdentity as e:
            if IDENTITY_KEY in str(e) or IDENTITY_KEY in (e.hint or ""):
                raise
            raise NoIdentity(f"{what}: {e.message}",
                             hint=f"{IDENTITY_KEY} must name the identity file of one of the epoch's recipients "
                                  f"({', '.join(enc.recipients)}); `runbook keys rotate` run where such a key is "
                                  "adds this host's") from None

    def opener(self, store: Store, manifest: Any, what: str) -> Opener | None:
        """How the objects of the copy `manifest` (in `store`) are opened: None for a plaintext copy. Raises the
        key errors of `identity` before any object is fetched."""
        enc: Encryption | None = manifest.encryption
        if enc is None:
            return None
        return Opener(self.identity(store, enc, what), what, store.describe())


@dataclass
class Opener:
    """The objects of one encrypted copy."""

    identity: Any
    what: str
    where: str

    def owns(self, e: BaseException) -> bool:
        """Is `e` about this copy's ciphertext or key (steps.crypto.errors), rather than the repository's reach?"""
        from steps.crypto.errors import EncryptionError

        return isinstance(e, EncryptionError)

    def decoding(self, o: ObjectEntry) -> ObjectDecoding:
        if o.stored_size is None or o.stored_sha256 is None:  # the manifest's validator makes this impossible
            raise RepositoryError(f"{self.what}: object {o.path} of an encrypted backup has no stored sha256")
        return ObjectDecoding(o.stored_size, o.stored_sha256, self.identity, f"{o.path} of {self.what}", self.where)


def key_error_check(e: RunbookError) -> str:
    """The name of the check an encryption error fails, for the events of an action."""
    from steps.crypto.errors import AlteredCiphertext, EpochRefused, NoIdentity

    if isinstance(e, NoIdentity):
        return "decryption key"
    if isinstance(e, EpochRefused):
        return "key epoch"
    if isinstance(e, AlteredCiphertext):
        return "ciphertext"
    return "encryption"



@dataclass
class KeyProof:
    """Whether one identity file of this host opens an encrypted copy (`runbook check`)."""

    file: Path
    opens: bool
    detail: str


def which_keys_open(keys: Keys, store: Store, prefix: str, manifest: Any) -> list[KeyProof]:
    """Each identity file of `keys`, tried alone on the epoch of the encrypted copy under `prefix` (whose own
    manifest is `manifest`): does it unwrap the epoch's data key? For the first one that does, the copy's
    smallest object is decrypted in memory and its plaintext sha256 compared with the manifest's: the proof that
    the stored ciphertext opens, not only the key."""
    from steps.crypto.age import load_identities
    from steps.crypto.epochs import KeyRing
    from steps.crypto.errors import EncryptionError

    enc: Encryption = manifest.encryption
    proofs: list[KeyProof] = []
    proven = False
    for path in keys.identity_files():
        try:
            ring = KeyRing(load_identities([path]), keys.trust, keys.allow_unsigned)
            identity = ring.identity_for(store, enc.epoch)
        except EncryptionError as e:
            proofs.append(KeyProof(path, False, e.message))
            continue
        except RunbookError as e:  # the file itself: mode, owner, contents
            proofs.append(KeyProof(path, False, f"unusable: {e.message}"))
            continue
        if proven:
            proofs.append(KeyProof(path, True, f"opens epoch {enc.epoch}"))
            continue
        o = min(manifest.objects, key=lambda x: x.stored_size or 0)
        what = f"{manifest.kind} backup {manifest.backup_id} in {store.describe()}"
        decoding = ObjectDecoding(o.stored_size or 0, o.stored_sha256 or "", identity, what, store.describe())
        wrong = _decrypts_as_listed(store, prefix + manifest.stored_key(o), decoding, o)
        if wrong is not None:
            proofs.append(KeyProof(path, False, f"opens epoch {enc.epoch}, but {wrong}"))
            continue
        proven = True
        proofs.append(KeyProof(path, True, f"opens epoch {enc.epoch}: {o.path} decrypted, its sha256 as the "
                                           "manifest says"))
    return proofs


def _decrypts_as_listed(store: Store, key: str, decoding: ObjectDecoding, o: ObjectEntry) -> str | None:
    """Decrypt the object in memory: None when its plaintext is what the manifest says, else why not."""
    import hashlib

    from steps.crypto.errors import EncryptionError
    from steps.repository.store import decode_chunks

    h = hashlib.sha256()
    n = 0

    def sink(chunk: bytes) -> None:
        nonlocal n
        h.update(chunk)
        n += len(chunk)

    try:
        decode_chunks(store.iter_chunks(key), key, decoding, sink, None)
    except EncryptionError as e:
        return f"{o.path} does not decrypt: {e.message}"
    if (n, h.hexdigest()) != (o.size, o.sha256):
        return f"{o.path} decrypts to other bytes than the manifest says (sha256 {h.hexdigest()}, {n} bytes)"
    return None


def recipients_now(stores: list[Store], trust: Trust) -> dict[tuple[str, str], list[str]]:
    """Whom each epoch of these repositories is wrapped for now, by (repository, epoch): the recipients of its
    wraps' signed sidecars (a rotation adds some, a revocation removes one; steps.crypto.epochs.list_epochs). A
    repository that cannot be listed, or an epoch with a problem, is left out: the manifest's recipients (at the
    time of the backup) then stand."""
    from steps.crypto.epochs import list_epochs

    out: dict[tuple[str, str], list[str]] = {}
    for store in stores:
        try:
            infos = list_epochs(store, trust)
        except RepositoryError:
            continue
        for info in infos:
            if info.problem is None and info.recipients:
                out[(store.name, info.epoch)] = list(info.recipients)
    return out
