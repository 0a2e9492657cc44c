"""Signing keys for the tests, in one place: every repository config a test writes carries `signing_yaml()`, so
that what the backup side writes is signed and every reader trusts it, as in production.

One key pair serves the whole session (a backup host's key): made on first use in a directory of its own
(0755, root's when the suite runs as root: a private key owned by the server's user would be refused, as it
should), removed at exit. A second one is the database host's WAL key (`signing.wal_private_key`, the
sealer's: steps.wal.ledger), owned by the server's user, who alone runs wal-push; its public key is trusted
beside the backup key's wherever the default trust is written. Tests of rotation and forgery make more keys with `make_keys(dir, name)` and write
their own `signing:` lines with `signing_yaml(dir, ...)`.
"""

from __future__ import annotations

import atexit
import os
import shutil
import tempfile
from functools import cache
from pathlib import Path

from steps.repository.signing import create_key_files, load_private_key


@cache
def _session_dir() -> Path:
    d = Path(tempfile.mkdtemp(prefix="runbook-test-keys-"))
    os.chmod(d, 0o755)
    atexit.register(shutil.rmtree, d, True)
    return d


def make_keys(where: Path | None = None, name: str = "backup") -> tuple[Path, Path]:
    """(private key, public key file) under `where/keys/` (default: the session's), made the first time."""
    private = (where or _session_dir()) / "keys" / f"{name}.key"
    public = private.with_name(private.name + ".pub")
    if not private.exists():
        create_key_files(private, f"test key {name}")
        os.chmod(private.parent, 0o755)  # readers (the server's user too) read the public keys
    return private, public


@cache
def wal_keys() -> tuple[Path, Path]:
    """(the WAL key, its public key file): the session's, made once and given to the server's user."""
    from tests.support.pgcluster import chown_server_user

    d = _session_dir() / "wal"
    private = d / "wal.key"
    create_key_files(private, "test WAL key")
    chown_server_user(d)
    os.chmod(d, 0o755)
    return private, private.with_name(private.name + ".pub")


def server_signing_yaml(where: Path) -> str:
    """`signing_yaml` for backups that run as the server's user (as root: the key made under `where` and given
    to that user, who alone may read it)."""
    from tests.support.pgcluster import chown_server_user

    line = signing_yaml(where)
    chown_server_user(where / "keys")
    return line


def signature(key: str, data: bytes, private: Path | None = None) -> bytes:
    """The signature object of `data` stored under `key`, by the session's key (or `private`): what a holder of a
    trusted key writes beside it. Tests of hostile content that a signature cannot stop (a stolen key, a backup
    host that is itself compromised) sign their forgeries with it, so that the checks behind the signature are
    what they reach."""
    return load_private_key(private or make_keys()[0]).signature(key, data)


def sign_file(repo: Path, key: str, private: Path | None = None) -> None:
    """(Re)sign the object `key` of the local repository `repo` in place, as a holder of the key would."""
    sig = repo / (key + ".sig")
    sig.unlink(missing_ok=True)
    sig.write_bytes(signature(key, (repo / key).read_bytes(), private))


def key_id(private: Path) -> str:
    return load_private_key(private).key_id


def signing_yaml(where: Path | None = None, *, private: bool = True, trusted: list[Path] | None = None,
                 name: str = "backup") -> str:
    """The config's `signing:` line: the key `name` of `where` (default: the session's) signs (unless not
    `private`), and its public key with the session's WAL key (or only `trusted`) is what the reader trusts;
    the WAL is sealed with the session's WAL key unless `trusted` is given."""
    if trusted is None or private:
        key, pub = make_keys(where, name)
    parts = [f"private_key: {key}"] if private else []
    if trusted is None:
        wal_key, wal_pub = wal_keys()
        parts.append(f"wal_private_key: {wal_key}")
        trusted = [pub, wal_pub]
    parts.append(f"public_keys: [{', '.join(str(p) for p in trusted)}]")
    return "signing: {" + ", ".join(parts) + "}\n"
