"""The encryption keys of a host, for `runbook keys`: age identity files made, what a config's `encryption:`
section names, and which epochs of each repository this host opens. The command line prints these (runbook.cli.keys);
nothing here prints."""

from __future__ import annotations

import os
import socket
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING

from steps.crypto.age import Identity, load_identities, load_recipients, new_identity
from steps.crypto.errors import EncryptionError
from steps.repository.signing import user_name, write_new_file

if TYPE_CHECKING:
    from steps.crypto.epochs import EpochInfo
    from steps.repository.config import RepositoryConfig


def create_identity_file(out: Path, comment: str | None = None) -> tuple[Identity, Path]:
    """A new age identity at `out` (mode 0600, never over an existing file; the layout `age-keygen -o` writes,
    so `age -d -i out` reads it) and its recipient at `out`.pub (a recipients file: `age -R out.pub`)."""
    pub = out.with_name(out.name + ".pub")
    for p in (out, pub):
        if os.path.lexists(p):
            raise EncryptionError(f"{p} already exists: a key is never overwritten", hint="choose another --out")
    ident = new_identity(str(out))
    when = datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    note = comment or f"{user_name()}@{socket.gethostname()}"
    secret = f"# created: {when} by runbook keys create --age ({note})\n# public key: {ident.recipient}\n" \
             f"{ident.text()}\n"
    try:
        out.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        write_new_file(out, secret.encode(), 0o600)
        write_new_file(pub, f"# {note} {when}\n{ident.recipient}\n".encode(), 0o644)
    except OSError as e:
        raise EncryptionError(f"cannot write the key to {out}: {e.strerror}") from None
    return load_identities([out], what="--out")[0], pub


@dataclass
class StoreEpochs:
    """The epochs of one repository, and for each whether this host opens it (None) or why not."""

    store: str
    epochs: list[EpochInfo] = field(default_factory=list)
    opens: dict[str, str | None] = field(default_factory=dict)
    revoked: set[str] = field(default_factory=set)
    error: str | None = None


@dataclass
class EncryptionReport:
    recipients: list[str] = field(default_factory=list)
    recipients_error: str | None = None
    identities: list[Identity] = field(default_factory=list)
    identities_error: str | None = None
    stores: list[StoreEpochs] = field(default_factory=list)
    encrypts: dict[str, bool] = field(default_factory=dict)  # local / s3: is what this host writes encrypted


def encryption_report(cfg: RepositoryConfig, *, allow_unsigned: bool = False, epochs: bool = True
                      ) -> EncryptionReport:
    """What `keys list` shows of encryption: the configured recipients, this host's identities, and (with
    `epochs`) every epoch of every configured repository with whether this host opens it."""
    from steps.crypto.epochs import KeyRing, list_epochs, revoked
    from steps.repository.configured import open_stores
    from steps.repository.signing import SigningError, trust_from_config
    from steps.repository.store import RepositoryError

    rep = EncryptionReport()
    enc = cfg.encryption
    rep.encrypts = {name: cfg.encrypts(name) for name in ("local", "s3") if getattr(cfg, name) is not None}
    try:
        rep.recipients = load_recipients(enc.recipients if enc else [])
    except EncryptionError as e:
        rep.recipients_error = str(e)
    try:
        rep.identities = load_identities(enc.identity_files if enc else [])
    except EncryptionError as e:
        rep.identities_error = str(e)
    if not epochs:
        return rep
    try:
        trust = trust_from_config(cfg, allow_unsigned=allow_unsigned)
    except SigningError as e:
        rep.stores.append(StoreEpochs("(signing keys)", error=str(e)))
        return rep
    ring = KeyRing(rep.identities, trust)
    try:
        stores = open_stores(cfg)
    except RepositoryError as e:
        rep.stores.append(StoreEpochs("(repositories)", error=str(e)))
        return rep
    for store in stores:
        se = StoreEpochs(store.describe())
        try:
            se.epochs = list_epochs(store, trust)
            se.revoked = revoked(store, trust)
            for info in se.epochs:
                se.opens[info.epoch] = info.problem if info.problem else ring.can_open(store, info.epoch)
        except RepositoryError as e:
            se.error = str(e)
        rep.stores.append(se)
    return rep
