"""Backup objects encrypted client-side (age), as base backups store them in a repository marked `encrypt: true`.

- **Stored.** An object `PATH` of the manifest is stored at `PATH.age`: plain binary age to the data recipient
  of the writer's epoch (steps.crypto.epochs), `age -d -i DATA_KEY base.tar.zst.age > base.tar.zst` by hand.
  The manifest of that repository keeps, per object, the size and sha256 of the plaintext (as an unencrypted
  one does) and of the stored bytes (`stored_size`, `stored_sha256`), and names the epoch (`encryption`).
  Each repository has its own manifest: a local copy may be unencrypted while the S3 one is encrypted.
- **Written** (`encrypt_staged`): every staged object encrypted into a directory beside the staging one, the
  stored size and sha256 computed while it is written; `publish` then stores and re-reads those files as it
  does any object (nothing of the publishing code changes). The encrypted copies are removed after each
  repository's publication.
- **Read** (`fetch_object`): the stored bytes streamed from the repository, their sha256 checked as they
  arrive ("altered ciphertext" when they differ), decrypted chunk by chunk (age authenticates each 64 KiB chunk
  and the end: truncation and alteration are named), the plaintext hashed and written beneath the destination
  directory (a new temporary file, renamed only when everything matched; never through a link).
- `copy_manifest` reads the manifest of one copy again and accepts it only when it is the one the catalogue
  verified (same sha256), so the encryption facts of that very copy are used.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from steps.repository.store import CorruptObject, RepositoryError, Store, local_error

if TYPE_CHECKING:
    from steps.repository.manifest import ObjectEntry

SUFFIX = ".age"


def stored_key(path: str) -> str:
    """Where an encrypted object `path` is stored: its plaintext key + `.age`."""
    return path + SUFFIX


def encrypt_staged(staging: Path, objects: list[ObjectEntry], recipient: str, out: Path) -> list[ObjectEntry]:
    """Each object of `staging` encrypted to `recipient` into `out` (made fresh, 0700) as `PATH.age`; the
    manifest entries with their stored size and sha256 added (what `publish` is given: entries named
    `PATH.age`, their size and sha256 those of the stored bytes, are returned second via `published_entries`)."""
    from steps.crypto.age import encrypt_file

    out.mkdir(mode=0o700)
    done: list[ObjectEntry] = []
    for o in objects:
        src = staging / o.path
        dst = out / stored_key(o.path)
        dst.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        size, digest = encrypt_file(src, dst, recipient)
        done.append(o.model_copy(update={"stored_size": size, "stored_sha256": digest}))
    return done


def published_entries(objects: list[ObjectEntry]) -> list[ObjectEntry]:
    """The entries `publish` stores and re-reads for encrypted objects: `PATH.age`, stored size and sha256."""
    from steps.repository.manifest import ObjectEntry

    out = []
    for o in objects:
        if o.stored_size is None or o.stored_sha256 is None:
            raise ValueError(f"{o.path}: no stored size or sha256")
        out.append(ObjectEntry(path=stored_key(o.path), size=o.stored_size, sha256=o.stored_sha256))
    return out


def copy_manifest(copy: Any, parse: Callable[[bytes], Any]) -> Any:
    """The manifest of one copy of a backup, read again from its repository and accepted only when it is the
    one the catalogue verified (its sha256)."""
    from steps.repository import layout

    data = copy.store.get_bytes(copy.prefix + layout.MANIFEST)
    got = hashlib.sha256(data).hexdigest()
    if got != copy.manifest_sha256:
        raise CorruptObject(copy.store.describe(), copy.prefix + layout.MANIFEST,
                            f"sha256 {copy.manifest_sha256} (as verified)", f"sha256 {got}: it changed since")
    return parse(data)


def fetch_object(store: Store, prefix: str, o: ObjectEntry, dest: Path, *, identity: Any | None,
                 progress: Callable[[int], None] | None = None) -> None:
    """Object `o` of the backup under `prefix` into `dest` (its plaintext), checked. Unencrypted (no stored
    sha256 in its entry): `Store.fetch_file`. Encrypted: `PATH.age` decrypted while it streams with
    `identity` (the epoch's data identity, steps.crypto.epochs.KeyRing), stored and plaintext size and sha256
    checked; a mismatch or a failure leaves no file."""
    if o.stored_sha256 is None:
        store.fetch_file(prefix + o.path, dest, size=o.size, sha256=o.sha256, progress=progress)
        return
    if identity is None:
        raise RepositoryError(f"{prefix}{o.path} is encrypted, and no identity was given to open it")
    from steps.fs import open_beneath, open_dir, rename_in

    key = prefix + stored_key(o.path)
    tmp = f".tmp-{dest.name}-{os.getpid()}"
    try:
        dest.parent.mkdir(parents=True, exist_ok=True)
        with open_dir(dest.parent) as dir_fd:
            fd = open_beneath(dir_fd, tmp)
            try:
                _decrypt_into(store, key, o, fd, identity, progress)
                os.fsync(fd)
            except BaseException:
                os.close(fd)
                fd = -1
                os.unlink(tmp, dir_fd=dir_fd)
                raise
            finally:
                if fd >= 0:
                    os.close(fd)
            rename_in(dir_fd, tmp, dest.name)
    except OSError as e:
        raise local_error(e, f"writing {dest}") from None


def _decrypt_into(store: Store, key: str, o: ObjectEntry, fd: int, identity: Any,
                  progress: Callable[[int], None] | None) -> None:
    from steps.crypto.age import Decryptor
    from steps.crypto.errors import AlteredCiphertext
    from steps.repository.retry import retry

    def once() -> None:
        os.ftruncate(fd, 0)
        os.lseek(fd, 0, os.SEEK_SET)
        stored, plain = hashlib.sha256(), hashlib.sha256()
        sizes = [0, 0]

        def sink(chunk: bytes) -> None:
            plain.update(chunk)
            sizes[1] += len(chunk)
            view = memoryview(chunk)
            while view:
                view = view[os.write(fd, view):]

        dec = Decryptor(identity, sink, f"{key} in {store.describe()}")
        for chunk in store.iter_chunks(key):
            stored.update(chunk)
            sizes[0] += len(chunk)
            if sizes[0] > (o.stored_size or 0):
                break  # more than the manifest says: the checks below name it
            dec.write(chunk)
            if progress:
                progress(len(chunk))
        if stored.hexdigest() != o.stored_sha256 or sizes[0] != o.stored_size:
            raise AlteredCiphertext(f"the stored bytes of {key} in {store.describe()} do not match the manifest "
                                    f"(sha256 {o.stored_sha256}, {o.stored_size} bytes): altered ciphertext",
                                    hint="use another copy of the backup")
        dec.close()
        if plain.hexdigest() != o.sha256 or sizes[1] != o.size:
            raise CorruptObject(store.describe(), key, f"plaintext sha256 {o.sha256} ({o.size} bytes)",
                                f"sha256 {plain.hexdigest()} ({sizes[1]} bytes) after decryption")

    retry(once, attempts=store.read_retries(), transient=store.transient)


def reader_ring(cfg: Any, *, allow_unsigned: bool = False, also_owner: int | None = None) -> Any:
    """This host's identities (encryption.identity_files) and the signing keys it trusts, as a KeyRing; as
    steps.crypto.epochs.ring_from_config, with one more owner of an identity file accepted (`also_owner`: the
    server's user, whose identity file root's pitr and verify-backup read too)."""
    from steps.crypto.age import load_identities
    from steps.crypto.epochs import KeyRing
    from steps.repository.signing import trust_from_config

    paths = cfg.encryption.identity_files if cfg.encryption else []
    if not paths:
        raise RepositoryError("the base backup is encrypted, and encryption.identity_files names no identity on "
                              "this host", hint="name this host's age identity file(s) in encryption.identity_files "
                                                "(docs/encryption.md)")
    return KeyRing(load_identities(paths, also_owner=also_owner), trust_from_config(cfg, allow_unsigned=allow_unsigned))
