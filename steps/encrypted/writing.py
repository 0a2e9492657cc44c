"""The backup host's side of an encrypted repository: which repositories encrypt, the key each writes to, and
the encryption of each object as it streams.

**Which repositories.** `local.encrypt` and `s3.encrypt` of the repository config (S3 defaults to encrypting once
`encryption.recipients` is set; the local repository to not). Each encrypting repository has its own epoch
(steps.crypto.epochs.writer_key): the public data recipient this host writes to, created and wrapped for the
configured recipients when they change. No private key is ever on this host.

**Each object** is age-encrypted to the epoch's data recipient while it is read (`SealedStream`: the plaintext
chunks of steps.backup.pipeline go in, the ciphertext goes to the repository's upload as it comes, and is
hashed on the way), stored under its path + `.age`. The repository's manifest records both: the plaintext's
size and sha256 (what pg_restore will read) and the stored bytes' (what the repository holds), and the epoch.
A logical backup's database settings (their values can be secrets) leave the manifest for an object of their own,
`settings.json`, sealed and listed the same way (`Sealing.seal_settings`).

**What the read-back proves here.** The backup host re-reads each stored object and compares its sha256 with
the ciphertext it produced: the repository holds exactly what was encrypted. It cannot decrypt (it holds no
identity), so that the ciphertext opens to the plaintext sha256 is proven where an identity is:
`runbook verify-backup` (a test restore) and `runbook check` on a reading host (docs/encryption.md).
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any

from steps.repository.layout import ENCRYPTED_SUFFIX
from steps.repository.manifest import SETTINGS_OBJECT, DatabaseFacts, Encryption, ObjectEntry
from steps.repository.store import ObjectStream, RepositoryError, Store, StoreName

if TYPE_CHECKING:
    from steps.repository.config import RepositoryConfig
    from steps.repository.signing import Signer

log = logging.getLogger("runbook.backup")

SPOOL = ".encrypted"  # inside a staging directory: ciphertext of a repository that stores files (the local one)


def encrypts(cfg: RepositoryConfig, which: StoreName) -> bool:
    """Does the config say the repository `which` (local, s3) stores its objects encrypted?"""
    return cfg.encrypts(which)


@dataclass(frozen=True)
class Sealing:
    """How one repository's objects are written: to `recipient`, the data recipient of `epoch`, whose key is
    wrapped for `recipients`."""

    epoch: str
    recipient: str
    recipients: tuple[str, ...]

    def encryption(self) -> Encryption:
        return Encryption(epoch=self.epoch, recipients=list(self.recipients))

    def stream(self, store: Store, key: str, spool: Path) -> SealedStream:
        """The upload of `key` + `.age`, fed with plaintext (steps.backup.pipeline); `spool` holds the ciphertext
        where the repository stores files rather than streams (the local one)."""
        return SealedStream(store, key + ENCRYPTED_SUFFIX, spool, self.recipient)

    def encrypt_file(self, src: Path, dst: Path) -> tuple[int, str]:
        """`src` encrypted into the new file `dst`: its (size, sha256) (steps.repository.publish.store_objects)."""
        from steps.crypto.age import encrypt_file

        return encrypt_file(src, dst, self.recipient)

    def seal_settings(self, store: Store, prefix: str, facts: DatabaseFacts,
                      plain: bytes) -> tuple[DatabaseFacts, ObjectEntry]:
        """The database's settings (`name=value`: values can be secrets), `plain` = settings_json(facts) made once
        per backup (its random salt then the same in every repository), as the object SETTINGS_OBJECT, stored
        encrypted under `prefix` and re-read; returns the facts the manifest gets (`settings` emptied,
        `settings_path` naming the object) and the object's entry. Written even when there are none, so that the
        manifest does not tell whether there are. Raises RepositoryError (stored, or re-read, wrongly)."""
        from steps.crypto.age import Encryptor

        parts: list[bytes] = []
        enc = Encryptor(self.recipient, parts.append)
        enc.write(plain)
        enc.close()
        sealed = b"".join(parts)
        key = prefix + SETTINGS_OBJECT + ENCRYPTED_SUFFIX
        store.put_bytes(key, sealed)
        want = (len(sealed), hashlib.sha256(sealed).hexdigest())
        got = store.hash_object(key)
        if got != want:
            raise RepositoryError(f"{key} in {store.describe()} reads back as {got[0]} bytes, sha256 {got[1]}; "
                                  f"{want[0]} bytes, sha256 {want[1]} were written")
        entry = ObjectEntry(path=SETTINGS_OBJECT, size=len(plain), sha256=hashlib.sha256(plain).hexdigest(),
                            stored_size=want[0], stored_sha256=want[1])
        return facts.model_copy(update={"settings": [], "settings_path": SETTINGS_OBJECT}), entry


def sealing_for(cfg: RepositoryConfig, store: Store, signer: Signer | None) -> Sealing | None:
    """The key `store` is written with, or None when it stores plaintext. Writes a new epoch into the repository
    when the configured recipients changed (steps.crypto.epochs.writer_key). Raises RunbookError (a recipient that
    does not parse: the config's fault; an epoch that cannot be written: the repository's)."""
    if not encrypts(cfg, store.name):
        return None
    from steps.crypto.age import load_recipients
    from steps.crypto.epochs import writer_key

    assert cfg.encryption is not None  # encrypts() says recipients are set
    recipients = load_recipients([str(r) for r in cfg.encryption.recipients])
    key = writer_key(store, recipients, cfg.state_dir(), signer)
    log.info("%s: objects encrypted with age to epoch %s (%d recipients)", store.describe(), key.epoch,
             len(recipients))
    return Sealing(epoch=key.epoch, recipient=key.data_recipient, recipients=tuple(recipients))


def with_stored(objects: list[ObjectEntry], stored: dict[str, tuple[int, str]]) -> list[ObjectEntry]:
    """The manifest's objects for an encrypted repository: each plaintext entry with its stored size and sha256."""
    return [o.model_copy(update={"stored_size": stored[o.path][0], "stored_sha256": stored[o.path][1]})
            for o in objects]


class SealedStream(ObjectStream):
    """An upload that encrypts as it goes: `write` takes plaintext chunks in order, the ciphertext goes on to the
    repository's own stream as it is produced (S3: parts go up while pg_dump still writes), or into a spool file
    that `finish` stores (the local repository: a hard link). The ciphertext is hashed on the way: `stored` is
    what the re-read must find."""

    sends_early = True  # every chunk must pass through the cipher

    def __init__(self, store: Store, key: str, spool: Path, recipient: str) -> None:
        from steps.crypto.age import Encryptor

        super().__init__(store, key, spool)
        self.inner = store.open_stream(key, spool)
        self._file: IO[bytes] | None = None
        if not self.inner.sends_early:
            spool.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
            self._file = open(spool, "xb")  # noqa: SIM115 - closed by finish/abort
        self._hash = hashlib.sha256()
        self._size = 0
        self._error: BaseException | None = None
        self._aborted = False
        self._encryptor: Any = Encryptor(recipient, self._sink)

    def _sink(self, data: bytes) -> None:
        # May run in the cipher's own thread: a failure is kept and raised in the caller's.
        if self._aborted or self._error is not None:
            return
        try:
            self._hash.update(data)
            self._size += len(data)
            if self._file is not None:
                self._file.write(data)
            else:
                self.inner.write(data)
        except BaseException as e:  # noqa: BLE001 - raised again by write/finish
            self._error = e

    def _raise(self) -> None:
        if self._error is not None:
            raise self._error

    def write(self, chunk: bytes) -> None:
        self._raise()
        self._encryptor.write(chunk)
        self._raise()

    def finish(self) -> None:
        self._raise()
        self._encryptor.close()
        self._raise()
        if self._file is not None:
            self._file.flush()
            os.fsync(self._file.fileno())
            self._file.close()
            self._file = None
        self.inner.finish()

    def abort(self) -> None:
        self._aborted = True
        with contextlib.suppress(Exception):  # giving up anyway
            self._encryptor.close()  # ends the cipher (its thread, if any); what it still produces is dropped
        if self._file is not None:
            self._file.close()
            self._file = None
        self.inner.abort()

    @property
    def stored(self) -> tuple[int, str]:
        """(size, sha256) of the ciphertext produced: what the repository must hold."""
        return self._size, self._hash.hexdigest()
