"""Encrypted WAL: what `wal-push` stores in a repository marked `encrypt: true`, and how `wal-fetch` opens it.

- **Object.** The archived form of steps.wal.segment (zstd: compression first, age output does not compress),
  encrypted with age to the data recipient of the writer's epoch (steps.crypto.epochs), stored at
  `<name>.zst.age` beside where `<name>.zst` would be: `age -d -i DATA_KEY X.zst.age | zstd -d` gives the
  file back (docs/encryption.md). The signed WAL ledgers keep the sha256 of the file as read from pg_wal, so
  what a recovery checks after decryption is unchanged. A repository may hold both forms (encryption turned on
  mid-life): steps.wal.store.keys_to_try says which a reader looks for first.
- **Epoch.** On S3 the object's metadata names its epoch (`x-amz-meta-epoch`, carried by the GET itself:
  no request of its own). A local directory has no metadata: a reader opens every epoch listed under
  `encryption/epochs/` that its identities open (a directory scan, once per process) and gives age all their
  data identities at once; age tells which one opens the file (a wrong one never does), and a damaged file
  from a wrong key (the first fails authentication, the second finds no identity).
- **Writer.** The pushing host needs only the public data recipient of its epoch: `writer_key` keeps it in
  the server user's state (`<wal.spool_dir>/encryption/`), and creates an epoch (a data identity wrapped to
  `encryption.recipients`, then forgotten) when there is none, the recipients changed, or the epoch is gone
  from the repository (looked at once a minute at most). An uploader keeps one per repository for its life;
  a synchronous `wal-push` reads the cache file. Epochs are signed with `signing.wal_private_key`.
- **Reader.** `encryption.identity_files` (0600, readable by the server's user, who runs restore_command):
  the epoch's data identity is unwrapped once per process (the read-ahead's prefetcher: once per replay).
  A wrong key, a truncated or an altered ciphertext raises an error naming it: wal-fetch exits 126, the
  recovery stops; it never answers "missing" for them.

steps.crypto (and `cryptography` beneath it) is loaded only when an encrypted object is written or read: a
config without `encrypt: true` costs wal-push nothing.
"""

from __future__ import annotations

import os
import threading
from pathlib import Path
from typing import Any

from runbook.errors import RunbookError
from steps.wal.settings import WalSettings
from steps.wal.store import WalStore

EPOCHS_PREFIX = "encryption/epochs/"


WRITER_RECHECK_S = 60.0  # a writer looks whether its epoch is still in the repository at most this often


class WalKeys:
    """One process's encryption keys for the WAL archive of one config: writer keys per repository, the reading
    host's key ring. Nothing is loaded before it is needed."""

    _of: dict[tuple[str, bool], WalKeys] = {}
    _of_lock = threading.Lock()

    def __init__(self, settings: WalSettings, allow_unsigned: bool = False) -> None:
        self.settings = settings
        self.allow_unsigned = allow_unsigned
        self._lock = threading.Lock()
        self._writers: dict[str, Any] = {}
        self._ring: Any = None

    @classmethod
    def of(cls, settings: WalSettings, allow_unsigned: bool = False) -> WalKeys:
        """The keys of this config in this process (the uploader's and prefetcher's threads share them).
        `allow_unsigned`: accept epochs written without a signature (a recovery that allows unsigned WAL)."""
        with cls._of_lock:
            k = (str(settings.path), allow_unsigned)
            keys = cls._of.get(k)
            if keys is None or keys.settings is not settings:
                keys = cls._of[k] = cls(settings, allow_unsigned)
            return keys

    # --- writing ------------------------------------------------------------------------------------

    def state_dir(self) -> Path:
        """Where this writer keeps the public key of each repository's epoch: the server user's WAL spool
        (`<wal.spool_dir>/encryption/`), which that user owns."""
        return self.settings.spool_dir

    def writer(self, store: WalStore) -> Any:
        with self._lock:
            wk = self._writers.get(store.name)
            if wk is None:
                wk = self._writers[store.name] = self._writer_key(store)
            return wk

    def _writer_key(self, store: WalStore) -> Any:
        from steps.crypto.epochs import writer_key

        return writer_key(objects_for(store), self.settings.recipients, self.state_dir(), self._signer(),
                          recheck_s=WRITER_RECHECK_S)

    def _signer(self) -> Any:
        """The epochs this host creates are signed with its WAL key (its public key is among every reader's:
        signing.public_keys), as its WAL ledgers are. Without one they are unsigned, and a reader that trusts
        signing keys refuses them (docs/wal.md, "Encrypted WAL"). Loaded only when an epoch is written (the key
        and `cryptography`'s Ed25519 cost a segment's push nothing while the cached epoch serves)."""
        if not self.settings.wal_key:
            return None
        return _LazySigner(Path(self.settings.wal_key))

    def prepare(self, stores: list[WalStore]) -> None:
        """Ready to encrypt for these repositories: their writer keys found (or epochs created) and the age
        code and `cryptography` loaded, by encrypting nothing. Run beside the compression of a segment
        (steps.wal.archive.push_data: zstd releases the GIL), so that a synchronous push does not pay it after."""
        from steps.crypto.age import encrypt_bytes

        for s in stores:
            encrypt_bytes(b"", self.writer(s).data_recipient)

    def encrypt(self, store: WalStore, blob: bytes) -> tuple[bytes, str]:
        """(ciphertext, epoch) of `blob` for `store`."""
        from steps.crypto.age import encrypt_bytes

        wk = self.writer(store)
        return encrypt_bytes(blob, wk.data_recipient), wk.epoch

    # --- reading ------------------------------------------------------------------------------------

    def ring(self) -> Any:
        with self._lock:
            if self._ring is None:
                self._ring = self._make_ring()
            return self._ring

    def _make_ring(self) -> Any:
        from steps.crypto.age import load_identities
        from steps.crypto.epochs import KeyRing
        from steps.repository.signing import Trust, load_public_keys

        if not self.settings.identity_files:
            raise RunbookError("the archived WAL is encrypted, and encryption.identity_files names no identity on "
                               "this host",
                               hint="name the age identity file(s) of this host in encryption.identity_files "
                                    "(mode 0600, owned by the server's user, who runs restore_command)")
        identities = load_identities([Path(p) for p in self.settings.identity_files])
        trust = (Trust.of(load_public_keys([Path(p) for p in self.settings.public_keys]), self.allow_unsigned)
                 if self.settings.public_keys else None)
        return KeyRing(identities, trust, allow_unsigned=self.allow_unsigned)

    def decrypt(self, store: WalStore, key: str, cipher: bytes, meta: dict[str, str]) -> bytes:
        """The archived form of an encrypted object; a RunbookError (steps.crypto.errors) naming a wrong key, an
        epoch refused, a truncated or altered ciphertext."""
        from steps.crypto.age import decrypt_bytes
        from steps.crypto.errors import NoIdentity

        ring = self.ring()
        objects = objects_for(store)
        epoch = meta.get("epoch")
        if epoch:
            return decrypt_bytes(cipher, ring.identity_for(objects, epoch), key)
        # No metadata (a local directory): the identities of every epoch this host opens, tried together.
        candidates = self.epochs(store)
        if not candidates:
            raise RunbookError(f"{key} is encrypted, but {store.describe()} holds no encryption epoch to open it "
                               "with", hint="its encryption/epochs/ was removed or never copied: restore it")
        opened, why = [], []
        for ep in candidates:
            try:
                opened.append(ring.identity_for(objects, ep))
            except NoIdentity as e:
                why.append(e.message)
        if not opened:
            raise NoIdentity(f"{key}: no identity of this host opens any epoch of {store.describe()}: "
                             + "; ".join(why), hint="docs/encryption.md: which keys a restoring host needs")
        return decrypt_bytes(cipher, opened, key)

    def epochs(self, store: WalStore) -> list[str]:
        """The epochs of a repository, newest first (ids start with their UTC creation time)."""
        names = {k[len(EPOCHS_PREFIX):].split("/", 1)[0] for k, _ in WalObjects(store).list_keys(EPOCHS_PREFIX)}
        return sorted((n for n in names if n), reverse=True)


class _LazySigner:
    """A signing key (steps.repository.signing.Signer) loaded on its first use."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._signer: Any = None

    def put(self, store: Any, key: str, data: bytes) -> None:
        if self._signer is None:
            from steps.repository.signing import load_private_key

            self._signer = load_private_key(self.path)
        self._signer.put(store, key, data)


def objects_for(store: WalStore) -> Any:
    """The repository as steps.crypto.epochs reads and writes it: a local one as the backup's LocalStore (its
    key objects read beneath the root, never through a link); S3 through the WAL store's own client."""
    from steps.wal.store import LocalWal

    if isinstance(store, LocalWal):
        from steps.repository.store import LocalStore

        return LocalStore(store.root)
    return WalObjects(store)


class WalObjects:
    """A WAL repository seen as the small-object store steps.crypto.epochs reads and writes (epoch.json, wraps,
    their signatures): the WAL commands keep their lean stores (no pydantic, no second S3 client)."""

    def __init__(self, store: WalStore) -> None:
        self.store = store
        self.name = store.name

    def describe(self) -> str:
        return self.store.describe()

    def exists(self, key: str) -> bool:
        return self.store.stat(key) is not None

    def get_bytes(self, key: str) -> bytes:
        from steps.repository.store import NotFound

        data = self.store.get(key)
        if data is None:
            raise NotFound(f"{key} does not exist in {self.store.describe()}")
        return data

    def put_bytes(self, key: str, data: bytes) -> None:
        self.store.put_new(key, data, {})

    def list_dirs(self, prefix: str) -> list[str]:
        return sorted({k[len(prefix):].split("/", 1)[0] for k, _ in self.list_keys(prefix) if "/" in k[len(prefix):]})

    def list_keys(self, prefix: str) -> list[tuple[str, int]]:
        """Every key under `prefix`, recursively (a local WAL store lists one directory: walked here)."""
        from steps.wal.store import LocalWal

        if not isinstance(self.store, LocalWal):
            return [(x.key, x.size) for x in self.store.list(prefix)]
        out: list[tuple[str, int]] = []
        base = self.store.root / prefix
        for root, dirs, files in os.walk(base):
            dirs[:] = [d for d in dirs if not d.startswith(".")]
            rel = Path(root).relative_to(self.store.root).as_posix()
            for f in files:
                if not f.startswith("."):
                    out.append((f"{rel}/{f}", os.lstat(os.path.join(root, f)).st_size))
        return sorted(out)
