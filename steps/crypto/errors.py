"""The errors of client-side encryption: each says what is wrong with which object or epoch, and what to do.

All are `RepositoryError`s (a reader may try another copy), printed without a traceback, exit code CANNOT_RUN.
Messages never hold a secret: no identity, no data key, only public recipients, file names and epoch ids.
"""

from __future__ import annotations

from steps.repository.store import RepositoryError


class EncryptionError(RepositoryError):
    """Something about encryption cannot be done: a recipient or identity that does not parse, a file refused."""

    title = "encryption"


class NoIdentity(EncryptionError):
    """No identity of this host opens the object (or the epoch's wrapped data key)."""


class AlteredCiphertext(EncryptionError):
    """The stored bytes are not what was written: altered (authentication failed), truncated, or not age at all."""


class EpochRefused(EncryptionError):
    """An epoch this host does not trust: unsigned, forged, or whose wrapped key does not match its data recipient."""
