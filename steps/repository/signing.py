"""Signatures: what the backup side writes into a repository is signed (Ed25519), every read that a recovery,
a verify or `status` relies on checks it.

**Keys.** A host that writes into a repository (`backup`, `basebackup`, `verify-backup`'s records, a run's
summary) holds a private key file: PEM (PKCS #8, as openssl writes it), mode 0600 (no group or other bit at all), owned by the user
that runs the writer (or root), outside the repository. Every host that reads holds public keys: lines
`runbook-ed25519 <base64 of the 32 raw bytes> [comment]` in files, or `*.pub` files in a directory, none of
them writable by group or others (whoever can add a line there can make a forgery pass). A key's id is the
first 16 hex digits of the sha256 of its raw public key; several public keys are trusted at once (rotation:
a new key signs from now on, the old one keeps vouching for the backups it signed until it is removed).

**Signatures.** Detached: beside every signed object `KEY` lies `KEY.sig`, a compact JSON object (sorted keys)
naming the key id, the object's key in the repository and the sha256 of its exact bytes, and the Ed25519
signature over `runbook-signature-v1\\n<key>\\n<sha256 hex>`. The signature is bound to the place: a genuine
manifest copied under another backup's name does not verify. The signed object itself is unchanged (manifest
v1 stays what it is): a reader that predates signatures reads the same manifest as before, and nothing in it
can be misparsed. The signature is written before the object, so a manifest never exists unsigned.

**Verdicts.** `Trust.verify` answers for one object: genuine (signed by a trusted key, bytes unchanged),
unsigned (accepted only with `allow_unsigned`, and then said), or refused with the reason: unsigned, signed
by an unknown key, a bad signature, bytes changed after signing, an unreadable signature object.

`cryptography` is imported here only: the WAL hot path never imports this module.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
import os
import socket
import stat
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any

from runbook.errors import Exit, RunbookError

if TYPE_CHECKING:
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

    from steps.repository.config import RepositoryConfig
    from steps.repository.store import Store

SIG_SUFFIX = ".sig"
PUBLIC_TAG = "runbook-ed25519"
SIGNATURE_FORMAT = "runbook-signature"
SIGNATURE_VERSION = 1
# A backup whose snapshot (or stop) time is later than now by more than this is refused: a forged future time
# would otherwise make a forgery "the newest" for good. Five minutes covers clocks kept by NTP.
CLOCK_SKEW = timedelta(minutes=5)
KEYS_HINT = "`runbook keys list -c CONFIG` shows the keys this host trusts (signing.public_keys)"


class SigningError(RunbookError):
    """A key file cannot be used (missing, unreadable, too open, malformed) or no key is configured."""

    exit_code = Exit.CANNOT_RUN
    title = "signing"


# --- keys ---------------------------------------------------------------------------------------------------


def key_id(raw_public: bytes) -> str:
    """The id of a public key: the first 16 hex digits of the sha256 of its 32 raw bytes."""
    return hashlib.sha256(raw_public).hexdigest()[:16]


def _raw(public: Ed25519PublicKey) -> bytes:
    return public.public_bytes_raw()


# A private key file is PEM of PKCS #8 (RFC 8410), as `openssl genpkey -algorithm ed25519` writes it and
# `openssl pkey` reads it. For Ed25519 its DER is always this 16-byte prefix and the 32-byte seed, so it is
# written and read here with the standard library: `cryptography`'s serialization modules cost ~17 ms to import,
# more than everything else signing does in a backup.
_PKCS8_ED25519 = bytes.fromhex("302e020100300506032b657004220420")
_PEM_LABEL = "PRIVATE KEY"


def _pem(seed: bytes) -> bytes:
    body = base64.b64encode(_PKCS8_ED25519 + seed).decode()
    return f"-----BEGIN {_PEM_LABEL}-----\n{body}\n-----END {_PEM_LABEL}-----\n".encode()


def _seed(pem: bytes) -> bytes:
    """The 32-byte seed of an unencrypted Ed25519 PKCS #8 PEM; ValueError for anything else."""
    lines = pem.decode("ascii").strip().splitlines()
    if len(lines) < 3 or lines[0] != f"-----BEGIN {_PEM_LABEL}-----" or lines[-1] != f"-----END {_PEM_LABEL}-----":
        raise ValueError(f"not a PEM \"{_PEM_LABEL}\" (unencrypted PKCS #8)")
    der = base64.b64decode("".join(lines[1:-1]), validate=True)
    if len(der) != 48 or not der.startswith(_PKCS8_ED25519):
        raise ValueError("not an Ed25519 key")
    return der[16:]


def public_line(public: Ed25519PublicKey, comment: str = "") -> str:
    """The public key as one line of a public key file."""
    text = f"{PUBLIC_TAG} {base64.b64encode(_raw(public)).decode()}"
    return f"{text} {comment}".rstrip()


@dataclass(frozen=True)
class PublicKey:
    key_id: str
    key: Ed25519PublicKey
    source: str  # file:line, for messages
    comment: str = ""


@dataclass(frozen=True)
class Signer:
    """A private key, loaded: signs objects written into a repository."""

    key_id: str
    key: Ed25519PrivateKey
    path: Path

    def signature(self, key: str, data: bytes) -> bytes:
        """The detached signature object of `data` stored under `key`."""
        digest = hashlib.sha256(data).hexdigest()
        sig = self.key.sign(_message(key, digest))
        return _canonical({"format": SIGNATURE_FORMAT, "version": SIGNATURE_VERSION, "algorithm": "ed25519",
                           "key_id": self.key_id, "object": key, "sha256": digest,
                           "signature": base64.b64encode(sig).decode()})

    def put(self, store: Store, key: str, data: bytes) -> None:
        """Store `data` under `key`, signed: the signature first, so the object never exists unsigned."""
        store.put_bytes(key + SIG_SUFFIX, self.signature(key, data))
        store.put_bytes(key, data)


def _message(key: str, sha256_hex: str) -> bytes:
    return f"runbook-signature-v1\n{key}\n{sha256_hex}".encode()


def _canonical(obj: dict[str, Any]) -> bytes:
    return json.dumps(obj, sort_keys=True, separators=(",", ":")).encode()


def create_key_files(out: Path, comment: str | None = None) -> tuple[Signer, Path, str]:
    """A new key pair: the private key at `out` (0600, never over an existing file) and its public line at
    `out` + `.pub`. Returns the signer, the public file and its line."""
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    pub_path = out.with_name(out.name + ".pub")
    for p in (out, pub_path):
        if os.path.lexists(p):
            raise SigningError(f"{p} already exists: a key is never overwritten", hint="choose another --out")
    key = Ed25519PrivateKey.generate()
    kid = key_id(_raw(key.public_key()))
    when = datetime.now(UTC).strftime("%Y-%m-%d")
    line = public_line(key.public_key(), comment or f"{user_name()}@{socket.gethostname()} {when} id {kid}")
    pem = _pem(key.private_bytes_raw())
    try:
        out.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        write_new_file(out, pem, 0o600)
        write_new_file(pub_path, (line + "\n").encode(), 0o644)
    except OSError as e:
        raise SigningError(f"cannot write the key to {out}: {e.strerror}") from None
    return Signer(kid, key, out), pub_path, line


def write_new_file(path: Path, data: bytes, mode: int) -> None:
    """A new file (never over an existing one, never through a link) with `mode` whatever the umask, synced."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, mode)
    with os.fdopen(fd, "wb") as f:
        os.fchmod(f.fileno(), mode)  # whatever the umask
        f.write(data)
        f.flush()
        os.fsync(f.fileno())


def user_name() -> str:
    """This process's user name (its uid when it has none), for key comments and records."""
    import pwd

    try:
        return pwd.getpwuid(os.geteuid()).pw_name
    except KeyError:
        return str(os.geteuid())


def load_private_key(path: Path) -> Signer:
    """The private key at `path`, refused unless it is a regular file of this user (or root) with no group or
    other permission."""
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError as e:
        raise SigningError(f"cannot read the private key {path}: {e.strerror}",
                           hint="signing.private_key names it; `runbook keys create --out PATH` makes one") from None
    with os.fdopen(fd, "rb") as f:
        st = os.fstat(f.fileno())
        if not stat.S_ISREG(st.st_mode):
            raise SigningError(f"the private key {path} is not a regular file")
        if st.st_mode & 0o077:
            raise SigningError(f"the private key {path} has mode {stat.S_IMODE(st.st_mode):04o}: group or others "
                               "may read it", hint=f"chmod 600 {path}")
        if st.st_uid not in (os.geteuid(), 0):
            raise SigningError(f"the private key {path} belongs to uid {st.st_uid}, not to this user "
                               f"({os.geteuid()}) nor root", hint="chown it to the user that runs the backup")
        data = f.read()
    try:
        key = Ed25519PrivateKey.from_private_bytes(_seed(data))
    except (ValueError, UnicodeDecodeError, binascii.Error) as e:
        raise SigningError(f"{path} is not an unencrypted Ed25519 private key in PEM: {e}",
                           hint="`runbook keys create --out PATH` makes one (or `openssl genpkey -algorithm ed25519`)"
                           ) from None
    return Signer(key_id(_raw(key.public_key())), key, path)


def parse_public_line(line: str, source: str) -> PublicKey:
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

    parts = line.split(None, 2)
    if len(parts) < 2 or parts[0] != PUBLIC_TAG:
        raise SigningError(f"{source}: not a public key line ({PUBLIC_TAG} BASE64 [comment])")
    try:
        raw = base64.b64decode(parts[1], validate=True)
        key = Ed25519PublicKey.from_public_bytes(raw)
    except (binascii.Error, ValueError):
        raise SigningError(f"{source}: not a valid Ed25519 public key") from None
    return PublicKey(key_id(raw), key, source, parts[2] if len(parts) > 2 else "")


def _check_not_writable(path: Path, st: os.stat_result) -> None:
    if st.st_mode & 0o022:
        raise SigningError(f"{path} is writable by group or others (mode {stat.S_IMODE(st.st_mode):04o}): whoever "
                           "can write it decides which signatures are trusted", hint=f"chmod go-w {path}")


def load_public_keys(paths: Iterable[Path]) -> list[PublicKey]:
    """Every public key in these files and directories (`*.pub` in a directory, sorted)."""
    keys: list[PublicKey] = []
    for given in paths:
        try:
            st = os.stat(given)
        except OSError as e:
            raise SigningError(f"cannot read the public keys {given}: {e.strerror}", hint=KEYS_HINT) from None
        _check_not_writable(given, st)
        files = sorted(p for p in given.glob("*.pub") if p.is_file()) if stat.S_ISDIR(st.st_mode) else [given]
        for file in files:
            try:
                _check_not_writable(file, file.stat())
                text = file.read_text()
            except (OSError, UnicodeDecodeError) as e:
                raise SigningError(f"cannot read the public key file {file}: {e}") from None
            for n, line in enumerate(text.splitlines(), 1):
                if line.strip() and not line.lstrip().startswith("#"):
                    keys.append(parse_public_line(line.strip(), f"{file}:{n}"))
    return keys


# --- verifying ------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Verdict:
    genuine: bool  # signed by a trusted key over these very bytes
    accepted: bool  # genuine, or unsigned and allow_unsigned
    reason: str = ""  # why it is refused (or "unsigned" when accepted unsigned)
    key_id: str | None = None

    @property
    def unsigned_accepted(self) -> bool:
        return self.accepted and not self.genuine


@dataclass
class Trust:
    """The public keys a reader trusts, and whether unsigned objects are accepted (`allow_unsigned`)."""

    keys: dict[str, PublicKey] = field(default_factory=dict)
    allow_unsigned: bool = False

    @classmethod
    def of(cls, keys: Iterable[PublicKey], allow_unsigned: bool = False) -> Trust:
        return cls({k.key_id: k for k in keys}, allow_unsigned)

    def verify(self, key: str, data: bytes, signature: bytes | None) -> Verdict:
        """The verdict on `data`, stored under `key`, with the bytes of `key`.sig (None when there is none)."""
        if signature is None:
            if self.allow_unsigned:
                return Verdict(False, True, "unsigned")
            return Verdict(False, False, "unsigned (no signature beside it): "
                           + ("no public key is configured (signing.public_keys)" if not self.keys else
                              "pass --allow-unsigned (allow_unsigned: true) only for a repository written before "
                              "signing"))
        try:
            sig = json.loads(signature)
            if not isinstance(sig, dict) or sig.get("format") != SIGNATURE_FORMAT:
                raise ValueError("not a signature object")
            if sig.get("version") != SIGNATURE_VERSION or sig.get("algorithm") != "ed25519":
                raise ValueError(f"version {sig.get('version')!r}, algorithm {sig.get('algorithm')!r}: "
                                 "not one this reader knows")
            kid, obj, digest = str(sig["key_id"]), str(sig["object"]), str(sig["sha256"])
            raw_sig = base64.b64decode(str(sig["signature"]), validate=True)
        except (ValueError, KeyError, TypeError, binascii.Error) as e:
            return Verdict(False, False, f"unreadable signature {key}{SIG_SUFFIX}: {e}")
        trusted = self.keys.get(kid)
        if trusted is None:
            return Verdict(False, False, f"signed by key {kid}, which this host does not trust ({KEYS_HINT})", kid)
        from cryptography.exceptions import InvalidSignature

        try:
            trusted.key.verify(raw_sig, _message(obj, digest))
        except InvalidSignature:
            return Verdict(False, False, f"bad signature: not made by key {kid} (forged or altered)", kid)
        if obj != key:
            return Verdict(False, False, f"the signature is for {obj}, not for {key} (moved or copied)", kid)
        if hashlib.sha256(data).hexdigest() != digest:
            return Verdict(False, False, f"its bytes changed after key {kid} signed them (sha256 differs)", kid)
        return Verdict(True, True, "", kid)

    def read(self, store: Store, key: str, data: bytes, sig_present: bool | None = None) -> Verdict:
        """The verdict on `data` read from `key` in `store`, reading its signature object. `sig_present`: what a
        listing already said (False: no read), None: look."""
        from steps.repository.store import NotFound

        signature = None
        if sig_present is not False:
            try:
                signature = store.get_bytes(key + SIG_SUFFIX)
            except NotFound:
                signature = None
        return self.verify(key, data, signature)


def future(when: datetime, now: datetime | None = None) -> bool:
    """Later than now by more than the clock skew allowed."""
    return when > (now or datetime.now(UTC)) + CLOCK_SKEW


# --- from the repository config -------------------------------------------------------------------------------


def trust_from_config(cfg: RepositoryConfig, *, allow_unsigned: bool = False) -> Trust:
    """The public keys the config names (signing.public_keys), loaded. Raises SigningError."""
    paths = cfg.signing.public_keys if cfg.signing is not None else []
    return Trust.of(load_public_keys(paths), allow_unsigned)


def signer_from_config(cfg: RepositoryConfig, *, required: bool = True) -> Signer | None:
    """The private key the config names (signing.private_key), loaded; refused inside a local repository.
    None when none is configured and not `required`. Raises SigningError."""
    path = cfg.signing.private_key if cfg.signing is not None else None
    if path is None:
        if not required:
            return None
        raise SigningError("no signing key is configured: what this host writes into the repository would be "
                           "refused by every recovery",
                           hint="`runbook keys create --out /etc/runbook/keys/backup.key`, then set "
                                "signing.private_key to it and add its .pub to signing.public_keys "
                                "(docs/repository-config.md)")
    if cfg.local is not None and _inside(path, cfg.local.path):
        raise SigningError(f"the private key {path} lies inside the local repository {cfg.local.path}",
                           hint="keep it outside the repository: whoever reads the repository must not read it")
    return load_private_key(path)


def _inside(path: Path, root: Path) -> bool:
    try:
        return path.resolve().is_relative_to(root.resolve())
    except OSError:
        return path.is_relative_to(root)


def signature_keys(keys: Iterable[str]) -> set[str]:
    """The objects among `keys` that have a signature beside them."""
    return {k[: -len(SIG_SUFFIX)] for k in keys if k.endswith(SIG_SUFFIX)}


@dataclass
class KeysReport:
    """`runbook keys list`: the key this host signs with (if any) and the public keys it trusts."""

    signer: Signer | None = None
    signer_path: Path | None = None
    signer_error: str | None = None
    trusted: list[PublicKey] = field(default_factory=list)
    trusted_error: str | None = None

    @property
    def signer_trusted(self) -> bool | None:
        if self.signer is None:
            return None
        return any(k.key_id == self.signer.key_id for k in self.trusted)


def keys_report(cfg: RepositoryConfig) -> KeysReport:
    rep = KeysReport(signer_path=cfg.signing.private_key if cfg.signing else None)
    try:
        rep.signer = signer_from_config(cfg, required=False)
    except SigningError as e:
        rep.signer_error = str(e)
    try:
        rep.trusted = load_public_keys(cfg.signing.public_keys if cfg.signing else [])
    except SigningError as e:
        rep.trusted_error = str(e)
    return rep
