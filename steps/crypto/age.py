"""The age file format (age-encryption.org/v1, X25519 recipients), written and read incrementally.

What is written is plain binary age: `age -d -i KEY` (Debian's `age` package) and any other age implementation
open it, and what they write is read here. Only X25519 recipients (`age1...`) and identities
(`AGE-SECRET-KEY-1...`) are used; other stanzas in a header (another tool's grease, scrypt, ssh) are skipped.

**Why not pyrage's encrypt/decrypt.** Measured on this machine (bench/encryption_bench.py): pyrage encrypts
16 MB in ~29 ms and decrypts in ~32 ms; the same STREAM construction on `cryptography`'s ChaCha20-Poly1305 takes
~10 ms, and it is incremental without a thread (pyrage's `encrypt_io` pulls 8 KiB reads from Python). So the
format is implemented here on `cryptography` primitives (X25519, ChaCha20-Poly1305) and the standard library
(HKDF-SHA256 with `hmac`, bech32, base64); the tests check it against the `age` command and pyrage both ways.

The format, in short (the specification is at age-encryption.org/v1):
- header: `age-encryption.org/v1\\n`, one stanza per recipient `-> X25519 <ephemeral share>\\n<wrapped file key>\\n`
  (base64 without padding, lines of 64 columns), then `--- <HMAC-SHA256 of the header>\\n`;
- payload: a 16-byte nonce, then the plaintext in 64 KiB chunks, each sealed with ChaCha20-Poly1305 under
  HKDF(file key, nonce, "payload"), its nonce the chunk counter (11 bytes) and a last-chunk flag (1 byte).
Every chunk is authenticated, and so is the end: a flipped byte, a cut at any place, chunks swapped or
dropped all fail, and are named (`AlteredCiphertext`: "altered" or "truncated").

`cryptography` is imported on first use (encryption or decryption), never at this module's import.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import os
import stat
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any, NoReturn

from steps.crypto.errors import AlteredCiphertext, EncryptionError, NoIdentity

Sink = Callable[[bytes], None]

INTRO = b"age-encryption.org/v1\n"
CHUNK = 64 * 1024
TAG = 16
SEALED = CHUNK + TAG
NONCE = 16
MAX_HEADER = 1 << 20  # a hostile object cannot make a reader buffer more than this before the header ends
RECIPIENT_PREFIX = "age1"
IDENTITY_PREFIX = "AGE-SECRET-KEY-1"
HINT_KEYS = "docs/encryption.md says which keys a host needs; `runbook keys list -c CONFIG` shows them"


# --- bech32 (BIP 173), as age encodes its keys -------------------------------------------------------------

_CHARSET = "qpzry9x8gf2tvdw0s3jn54khce6mua7l"
_GEN = (0x3B6A57B2, 0x26508E6D, 0x1EA119FA, 0x3D4233DD, 0x2A1462B3)


def _polymod(values: Iterable[int]) -> int:
    chk = 1
    for v in values:
        top = chk >> 25
        chk = (chk & 0x1FFFFFF) << 5 ^ v
        for i in range(5):
            chk ^= _GEN[i] if (top >> i) & 1 else 0
    return chk


def _hrp_expand(hrp: str) -> list[int]:
    return [ord(c) >> 5 for c in hrp] + [0] + [ord(c) & 31 for c in hrp]


def _convert(data: Iterable[int], frm: int, to: int, pad: bool) -> list[int]:
    acc = bits = 0
    out: list[int] = []
    maxv = (1 << to) - 1
    for v in data:
        acc = (acc << frm) | v
        bits += frm
        while bits >= to:
            bits -= to
            out.append((acc >> bits) & maxv)
    if pad:
        if bits:
            out.append((acc << (to - bits)) & maxv)
    elif bits >= frm or (acc << (to - bits)) & maxv:
        raise ValueError("bad padding")
    return out


def bech32_encode(hrp: str, data: bytes) -> str:
    five = _convert(data, 8, 5, True)
    poly = _polymod(_hrp_expand(hrp) + five + [0] * 6) ^ 1
    check = [(poly >> 5 * (5 - i)) & 31 for i in range(6)]
    return hrp + "1" + "".join(_CHARSET[d] for d in five + check)


def bech32_decode(text: str) -> tuple[str, bytes]:
    """(human-readable part, data) of a bech32 string; ValueError when it does not parse or its checksum fails."""
    if text.lower() != text and text.upper() != text:
        raise ValueError("mixed case")
    s = text.lower()
    pos = s.rfind("1")
    if pos < 1 or pos + 7 > len(s):
        raise ValueError("no separator or too short")
    hrp, rest = s[:pos], s[pos + 1:]
    if any(c not in _CHARSET for c in rest):
        bad = next(c for c in rest if c not in _CHARSET)
        raise ValueError(f"character {bad!r} is not in the bech32 alphabet")
    values = [_CHARSET.index(c) for c in rest]
    if _polymod(_hrp_expand(hrp) + values) != 1:
        raise ValueError("checksum mismatch (a mistyped character?)")
    return hrp, bytes(_convert(values[:-6], 5, 8, False))


# --- keys ------------------------------------------------------------------------------------------------


def parse_recipient(text: str) -> str:
    """The recipient `text` (an age X25519 public key, `age1...`), normalised; ValueError saying what is wrong."""
    t = text.strip()
    if not t.startswith(RECIPIENT_PREFIX):
        shown = t if len(t) <= 80 else t[:77] + "..."
        if t.upper().startswith("AGE-SECRET-KEY-"):
            raise ValueError("that is a private key (AGE-SECRET-KEY-...), not a recipient: give its public key "
                             "(age-keygen -y FILE prints it) and keep the private key out of the config")
        raise ValueError(f"{shown!r} is not an age recipient (an X25519 public key, age1 and 58 characters)")
    try:
        hrp, raw = bech32_decode(t)
    except ValueError as e:
        raise ValueError(f"{t!r} is not a valid age recipient: {e}") from None
    if hrp != "age" or len(raw) != 32:
        raise ValueError(f"{t!r} is not an age X25519 recipient ({len(raw)} bytes of key)")
    return t


def _recipient_raw(recipient: str) -> bytes:
    return bech32_decode(recipient)[1]


class Identity:
    """An age X25519 identity (private key), loaded. Its text never appears in a repr or a message.

    A plain class, not a dataclass: this module is imported on the WAL commands' path, where a dataclass costs
    its generated code at every start."""

    __slots__ = ("_secret", "recipient", "source")

    def __init__(self, recipient: str, source: str, secret: bytes) -> None:
        self.recipient = recipient  # its public key, age1...
        self.source = source  # where it was read from, for messages ("/etc/runbook/keys/x.agekey:3", "epoch E")
        self._secret = secret  # the 32 raw bytes

    def __repr__(self) -> str:
        return f"Identity(recipient={self.recipient!r}, source={self.source!r})"

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Identity) and hmac.compare_digest(self._secret, other._secret)

    def __hash__(self) -> int:
        return hash(self.recipient)

    def __str__(self) -> str:
        return f"identity of {self.recipient} ({self.source})"

    def text(self) -> str:
        """`AGE-SECRET-KEY-1...`: only to be written to a 0600 file or encrypted; never printed."""
        return bech32_encode("age-secret-key-", self._secret).upper()

    def _key(self) -> Any:
        from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey

        return X25519PrivateKey.from_private_bytes(self._secret)


def _public_of(secret: bytes) -> str:
    from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey

    return bech32_encode("age", X25519PrivateKey.from_private_bytes(secret).public_key().public_bytes_raw())


def parse_identity(text: str, source: str) -> Identity:
    """An identity from its text `AGE-SECRET-KEY-1...`; ValueError (without the text) when it does not parse."""
    t = text.strip()
    if not t.startswith(IDENTITY_PREFIX):
        raise ValueError(f"{source}: not an age identity (AGE-SECRET-KEY-1...)")
    try:
        hrp, raw = bech32_decode(t)
    except ValueError as e:
        raise ValueError(f"{source}: not a valid age identity: {e}") from None
    if hrp != "age-secret-key-" or len(raw) != 32:
        raise ValueError(f"{source}: not an age X25519 identity")
    return Identity(_public_of(raw), source, raw)


def generate_identity() -> tuple[str, str]:
    """A new X25519 identity: (`AGE-SECRET-KEY-1...`, its recipient `age1...`)."""
    ident = new_identity("generated")
    return ident.text(), ident.recipient


def new_identity(source: str) -> Identity:
    raw = os.urandom(32)
    return Identity(_public_of(raw), source, raw)


def _lines(text: str) -> Iterable[tuple[int, str]]:
    for n, line in enumerate(text.splitlines(), 1):
        s = line.strip()
        if s and not s.startswith("#"):
            yield n, s


def load_recipients(items: Sequence[str], what: str = "encryption.recipients") -> list[str]:
    """The recipients `items` name: each an `age1...` key, or an absolute path to a file of them (one a line,
    `#` comments, as `age -R` reads). Deduplicated, in order. EncryptionError naming the item otherwise."""
    out: list[str] = []
    for i, item in enumerate(items):
        where = f"{what}[{i}]"
        if item.strip().startswith(RECIPIENT_PREFIX) or not item.startswith("/"):
            try:
                found = [parse_recipient(item)]
            except ValueError as e:
                raise EncryptionError(f"{where}: {e}", hint="an age1... public key, or the absolute path of a file "
                                      "of them (`runbook keys create --age --out PATH` writes PATH.pub)") from None
        else:
            path = Path(item)
            try:
                text = _read_small(path, 1 << 20)
            except OSError as e:
                raise EncryptionError(f"{where}: cannot read the recipients file {path}: {e.strerror or e}",
                                      hint="fix the path, or give the age1... key itself") from None
            except (UnicodeDecodeError, ValueError) as e:
                raise EncryptionError(f"{where}: the recipients file {path} is not a text file of age1... keys: "
                                      f"{e}") from None
            found = []
            for n, line in _lines(text):
                try:
                    found.append(parse_recipient(line.split()[0]))
                except ValueError as e:
                    raise EncryptionError(f"{where}: {path}:{n}: {e}") from None
            if not found:
                raise EncryptionError(f"{where}: the recipients file {path} names no recipient")
        out.extend(r for r in found if r not in out)
    return out


def _read_small(path: Path, limit: int) -> str:
    fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK)
    with os.fdopen(fd, "rb") as f:
        if not stat.S_ISREG(os.fstat(f.fileno()).st_mode):
            raise ValueError("not a regular file")
        data = f.read(limit + 1)
    if len(data) > limit:
        raise ValueError(f"larger than {limit} bytes")
    return data.decode("utf-8")


def _server_uid() -> int | None:
    """The uid of the PostgreSQL server's user (RUNBOOK_SERVER_USER, default postgres), or None."""
    import pwd

    try:
        return pwd.getpwnam(os.environ.get("RUNBOOK_SERVER_USER", "postgres")).pw_uid
    except KeyError:
        return None


def load_identities(paths: Sequence[Path], what: str = "encryption.identity_files") -> list[Identity]:
    """The identities in these files (one `AGE-SECRET-KEY-1...` a line, `#` comments: what `age-keygen -o` and
    `runbook keys create --age` write). Each file must be a regular file of this user (or root) without any group
    or other permission, like the signing keys. EncryptionError naming the file otherwise.
    Root also accepts a file of the PostgreSQL server's user (`_server_uid`): on a host that recovers, that user
    reads the identity in restore_command (wal-fetch), and root's pitr and verify-backup read the same file."""
    out: list[Identity] = []
    for path in paths:
        try:
            fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK)
        except OSError as e:
            extra = " (a symlink: name the file itself)" if os.path.islink(path) else ""
            raise EncryptionError(f"{what}: cannot read the identity file {path}: {e.strerror}{extra}",
                                  hint="`runbook keys create --age --out PATH` (or `age-keygen -o PATH`) makes one"
                                  ) from None
        with os.fdopen(fd, "rb") as f:
            st = os.fstat(f.fileno())
            if not stat.S_ISREG(st.st_mode):
                raise EncryptionError(f"{what}: the identity file {path} is not a regular file")
            if st.st_mode & 0o077:
                raise EncryptionError(f"{what}: the identity file {path} has mode {stat.S_IMODE(st.st_mode):04o}: "
                                      "group or others may read it; it is not used", hint=f"chmod 600 {path}")
            if st.st_uid not in (os.geteuid(), 0) and not (os.geteuid() == 0 and st.st_uid == _server_uid()):
                raise EncryptionError(f"{what}: the identity file {path} belongs to uid {st.st_uid}, not to this "
                                      f"user ({os.geteuid()}) nor root; it is not used",
                                      hint="chown it to the user that restores")
            data = f.read(1 << 20)
        try:
            text = data.decode("ascii")
        except UnicodeDecodeError:
            raise EncryptionError(f"{what}: {path} is not an age identity file (not text)") from None
        found = []
        for n, line in _lines(text):
            try:
                found.append(parse_identity(line, f"{path}:{n}"))
            except ValueError as e:
                raise EncryptionError(f"{what}: {e}", hint="an age identity file holds AGE-SECRET-KEY-1... "
                                      "lines (passphrase-protected or plugin identities are not supported)"
                                      ) from None
        if not found:
            raise EncryptionError(f"{what}: {path} holds no identity (AGE-SECRET-KEY-1... line)")
        out.extend(found)
    return out


# --- primitives ----------------------------------------------------------------------------------------------


def _hkdf(ikm: bytes, salt: bytes, info: bytes) -> bytes:
    """HKDF-SHA256 (RFC 5869) with a 32-byte output."""
    prk = hmac.new(salt or bytes(32), ikm, hashlib.sha256).digest()
    return hmac.new(prk, info + b"\x01", hashlib.sha256).digest()


def _b64(data: bytes) -> bytes:
    return base64.b64encode(data).rstrip(b"=")


def _unb64(text: bytes) -> bytes:
    if b"=" in text or b"\r" in text or b"\n" in text:
        raise ValueError("padded or broken base64")
    return base64.b64decode(text + b"=" * (-len(text) % 4), validate=True)


def _aead(key: bytes) -> Any:
    from cryptography.hazmat.primitives.ciphers.aead import ChaCha20Poly1305

    return ChaCha20Poly1305(key)


def _chunk_nonce(counter: int, last: bool) -> bytes:
    return counter.to_bytes(11, "big") + (b"\x01" if last else b"\x00")


_X25519_INFO = b"age-encryption.org/v1/X25519"


def _wrap(file_key: bytes, recipient: str) -> bytes:
    from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey, X25519PublicKey

    pub = _recipient_raw(recipient)
    eph = X25519PrivateKey.generate()
    share = eph.public_key().public_bytes_raw()
    shared = eph.exchange(X25519PublicKey.from_public_bytes(pub))
    body = _aead(_hkdf(shared, share + pub, _X25519_INFO)).encrypt(bytes(12), file_key, None)
    return b"-> X25519 " + _b64(share) + b"\n" + _b64(body) + b"\n"


def header_bytes(file_key: bytes, recipients: Sequence[str]) -> bytes:
    """The whole age header (up to and including the MAC line) for these recipients."""
    head = INTRO + b"".join(_wrap(file_key, r) for r in recipients) + b"---"
    mac = hmac.new(_hkdf(file_key, b"", b"header"), head, hashlib.sha256).digest()
    return head + b" " + _b64(mac) + b"\n"


class _Stanza:
    __slots__ = ("args", "body", "kind")

    def __init__(self, kind: bytes, args: list[bytes], body: bytes) -> None:
        self.kind, self.args, self.body = kind, args, body


def _parse_header(head: bytes, what: str) -> tuple[list[_Stanza], bytes, bytes]:
    """(stanzas, the bytes the MAC covers, the MAC) of a complete header (ending with the MAC line's newline)."""
    lines = head.split(b"\n")
    if lines[0] + b"\n" != INTRO:
        raise AlteredCiphertext(f"{what} is not an age file (its first line is not age-encryption.org/v1)",
                                hint="it was not written by an age tool, or its beginning was altered")
    assert lines[-1] == b""
    stanzas: list[_Stanza] = []
    i = 1
    try:
        while i < len(lines) - 2:
            line = lines[i]
            if not line.startswith(b"-> "):
                raise ValueError("a stanza does not start with ->")
            parts = line[3:].split(b" ")
            if not parts or any(not p for p in parts):
                raise ValueError("an empty stanza argument")
            i += 1
            body: list[bytes] = []
            while True:
                if i >= len(lines) - 2:
                    raise ValueError("a stanza body runs into the end")
                bl = lines[i]
                i += 1
                if len(bl) > 64:
                    raise ValueError("a stanza body line longer than 64 columns")
                body.append(bl)
                if len(bl) < 64:
                    break
            stanzas.append(_Stanza(parts[0], parts[1:], _unb64(b"".join(body))))
        mac_line = lines[-2]
        if i != len(lines) - 2 or not mac_line.startswith(b"--- "):
            raise ValueError("no MAC line")
        mac = _unb64(mac_line[4:])
    except (ValueError, binascii.Error) as e:
        raise AlteredCiphertext(f"{what}: its age header is malformed ({e}): altered or not written by age",
                                hint="use another copy of it") from None
    covered = head[: len(head) - len(mac_line) - 1 + 3]  # up to and including "---"
    return stanzas, covered, mac


def _unwrap(stanzas: list[_Stanza], identities: Sequence[Identity]) -> bytes | None:
    from cryptography.exceptions import InvalidTag
    from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PublicKey

    for st in stanzas:
        if st.kind != b"X25519":
            continue
        if len(st.args) != 1 or len(st.body) != 32:
            raise ValueError("an X25519 stanza of the wrong shape")
        share = _unb64(st.args[0])
        if len(share) != 32:
            raise ValueError("an X25519 share of the wrong size")
        for ident in identities:
            try:
                shared = ident._key().exchange(X25519PublicKey.from_public_bytes(share))
            except ValueError:  # an all-zero shared secret: a low-order share, never made by age
                continue
            key = _hkdf(shared, share + _recipient_raw(ident.recipient), _X25519_INFO)
            try:
                return bytes(_aead(key).decrypt(bytes(12), st.body, None))
            except InvalidTag:
                continue
    return None


# --- incremental -------------------------------------------------------------------------------------------------


def _as_list(recipients: str | Sequence[str]) -> list[str]:
    rs = [recipients] if isinstance(recipients, str) else list(recipients)
    if not rs:
        raise EncryptionError("no recipient to encrypt to")
    return [parse_recipient(r) for r in rs]


def _as_identities(identity: Identity | Sequence[Identity]) -> list[Identity]:
    return [identity] if isinstance(identity, Identity) else list(identity)


class _Chunker:
    """Cuts a byte stream written in any pieces into units of `size` bytes, each passed to `emit` only once more
    bytes follow it (the last unit, at most `size` bytes, waits for `close`: age marks it). Full units are taken
    from the written piece itself when they can be: a large write is not copied first."""

    def __init__(self, size: int, emit: Callable[[bytes | bytearray | memoryview], None]) -> None:
        self._size = size
        self._emit = emit
        self._buf = bytearray()

    def feed(self, chunk: bytes | bytearray | memoryview) -> None:
        size, buf = self._size, self._buf
        view = memoryview(chunk)
        if buf:
            need = size - len(buf)
            if len(view) <= need:
                buf += view
                return
            buf += view[:need]
            view = view[need:]
            self._emit(buf)  # full, and more follows
            buf.clear()
        n = len(view)
        off = 0
        while n - off > size:
            self._emit(view[off:off + size])
            off += size
        buf += view[off:]

    def rest(self) -> bytes:
        out = bytes(self._buf)
        self._buf.clear()
        return out


class Encryptor:
    """Plaintext pushed in with `write` (any sizes), age ciphertext pushed out to `sink` as it is made: the header
    at once, then one sealed 64 KiB chunk at a time. `close` seals the last chunk; after it the sink holds the
    whole object. `recipient` may be a list (the epoch wraps); data objects go to one data recipient."""

    def __init__(self, recipient: str | Sequence[str], sink: Sink) -> None:
        file_key = os.urandom(16)
        nonce = os.urandom(NONCE)
        self._sink = sink
        self._aead = _aead(_hkdf(file_key, nonce, b"payload"))
        self._counter = 0
        self._closed = False
        self._chunks = _Chunker(CHUNK, self._seal)
        sink(header_bytes(file_key, _as_list(recipient)) + nonce)

    def _seal(self, plain: bytes | bytearray | memoryview) -> None:
        self._sink(self._aead.encrypt(_chunk_nonce(self._counter, False), plain, None))
        self._counter += 1

    def write(self, chunk: bytes | bytearray | memoryview) -> None:
        if self._closed:
            raise ValueError("write after close")
        self._chunks.feed(chunk)

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        self._sink(self._aead.encrypt(_chunk_nonce(self._counter, True), self._chunks.rest(), None))


class Decryptor:
    """age ciphertext pushed in with `write` (any sizes), plaintext pushed out to `sink` once each chunk is
    authenticated. `what` names the object in errors. Raises NoIdentity when no identity opens the header,
    AlteredCiphertext when a chunk fails authentication, and at `close` when the object was cut short.

    Plaintext reaches the sink before the end is authenticated: a reader must not use it as final until `close`
    returned (the fetch layers write to a temporary file renamed only after `close`)."""

    def __init__(self, identity: Identity | Sequence[Identity], sink: Sink, what: str) -> None:
        self._identities = _as_identities(identity)
        self._sink = sink
        self.what = what
        self._head = bytearray()  # the header, until it is whole
        self._scanned = 0  # how much of it was searched for the MAC line already
        self._aead: Any = None
        self._counter = 0
        self._closed = False
        self._failed = False
        self._chunks = _Chunker(SEALED, self._open)

    def write(self, chunk: bytes | bytearray | memoryview) -> None:
        if self._closed:
            raise ValueError("write after close")
        if self._failed:
            return
        view = memoryview(chunk)
        while self._aead is None:  # the header, looked for 64 KiB at a time: a large write is not copied whole
            if not view:
                return
            self._head += view[:CHUNK]
            view = view[CHUNK:]
            if self._try_header():
                rest, self._head = bytes(self._head), bytearray()
                self._chunks.feed(rest)
        if view:
            self._chunks.feed(view)

    def _try_header(self) -> bool:
        buf = self._head
        end = buf.find(b"\n--- ", max(0, self._scanned - 5))
        if end < 0:
            self._scanned = len(buf)
            if len(buf) > MAX_HEADER:
                self._fail(AlteredCiphertext(f"{self.what}: no age header end within {MAX_HEADER} bytes: not an "
                                             "age file, or altered"))
            if len(buf) >= len(INTRO) and not buf.startswith(INTRO):
                self._fail(AlteredCiphertext(f"{self.what} is not an age file (it does not begin with "
                                             "age-encryption.org/v1)", hint="it was not written encrypted, or its "
                                             "beginning was altered; use another copy"))
            return False
        nl = buf.find(b"\n", end + 5)
        if nl < 0 or len(buf) < nl + 1 + NONCE:
            if end > MAX_HEADER:
                self._fail(AlteredCiphertext(f"{self.what}: an age header longer than {MAX_HEADER} bytes"))
            return False
        head = bytes(buf[: nl + 1])
        try:
            stanzas, covered, mac = _parse_header(head, self.what)
            try:
                file_key = _unwrap(stanzas, self._identities)
            except ValueError as e:
                raise AlteredCiphertext(f"{self.what}: its age header is malformed ({e})") from None
            if file_key is None:
                kinds = sorted({s.kind.decode("ascii", "replace") for s in stanzas})
                raise NoIdentity(
                    f"no identity given opens {self.what} (identities of "
                    f"{', '.join(i.recipient for i in self._identities) or 'none'}; the file is for "
                    f"{len(stanzas)} recipient(s) of type {', '.join(kinds) or 'none'})", hint=HINT_KEYS)
            if not hmac.compare_digest(hmac.new(_hkdf(file_key, b"", b"header"), covered, hashlib.sha256).digest(),
                                       mac):
                raise AlteredCiphertext(f"{self.what}: its age header fails authentication: altered",
                                        hint="use another copy of it")
        except (AlteredCiphertext, NoIdentity) as e:
            self._fail(e)
        nonce = bytes(buf[nl + 1: nl + 1 + NONCE])
        self._aead = _aead(_hkdf(file_key, nonce, b"payload"))
        del buf[: nl + 1 + NONCE]
        return True

    def _fail(self, e: Exception) -> NoReturn:
        self._failed = True
        self._head = bytearray()
        raise e

    def _open(self, sealed: bytes | bytearray | memoryview) -> None:
        from cryptography.exceptions import InvalidTag

        try:
            plain = self._aead.decrypt(_chunk_nonce(self._counter, False), sealed, None)
        except InvalidTag:
            self._fail(AlteredCiphertext(
                f"{self.what}: chunk {self._counter} (at byte {self._counter * SEALED} of the payload) fails "
                "authentication: the ciphertext was altered", hint="use another copy of it"))
        self._counter += 1
        self._sink(plain)

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        if self._failed:
            return
        from cryptography.exceptions import InvalidTag

        if self._aead is None:
            if not self._head:
                raise AlteredCiphertext(f"{self.what} is empty: not an age file", hint="use another copy of it")
            raise AlteredCiphertext(f"{self.what} is truncated: it ends inside its age header "
                                    f"({len(self._head)} bytes)" if self._head.startswith(INTRO[: len(self._head)])
                                    else f"{self.what} is not an age file", hint="use another copy of it")
        rest = self._chunks.rest()
        if len(rest) < TAG or (len(rest) == TAG and self._counter > 0):
            raise AlteredCiphertext(f"{self.what} is truncated: it ends after {self._counter} whole chunk(s) "
                                    "without its last one", hint="use another copy of it")
        try:
            plain = self._aead.decrypt(_chunk_nonce(self._counter, True), rest, None)
        except InvalidTag:
            try:
                self._aead.decrypt(_chunk_nonce(self._counter, False), rest, None)
            except InvalidTag:
                raise AlteredCiphertext(f"{self.what}: its last chunk fails authentication: the ciphertext was "
                                        "altered or cut short", hint="use another copy of it") from None
            raise AlteredCiphertext(f"{self.what} is truncated: it ends after {self._counter + 1} whole chunk(s) "
                                    "without its last one", hint="use another copy of it") from None
        self._sink(plain)


# --- whole objects ---------------------------------------------------------------------------------------------


def encrypt_bytes(data: bytes, recipient: str | Sequence[str]) -> bytes:
    out: list[bytes] = []
    enc = Encryptor(recipient, out.append)
    enc.write(data)
    enc.close()
    return b"".join(out)


def decrypt_bytes(data: bytes, identity: Identity | Sequence[Identity], what: str) -> bytes:
    out: list[bytes] = []
    dec = Decryptor(identity, out.append, what)
    dec.write(data)
    dec.close()
    return b"".join(out)


def _write_via_temp(dst: Path, fill: Callable[[Sink], None]) -> tuple[int, str]:
    """Write what `fill` pushes into a new temporary file beside `dst` (0600, O_EXCL), renamed to `dst` once
    `fill` returned; any failure leaves no file. Returns the size and sha256 of what was written."""
    tmp = dst.with_name(f".tmp-{dst.name}-{os.getpid()}")
    h = hashlib.sha256()
    size = 0
    try:
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
    except OSError as e:
        raise EncryptionError(f"cannot write {dst}: {e.strerror}") from None
    try:
        with os.fdopen(fd, "wb") as f:
            def sink(b: bytes) -> None:
                nonlocal size
                h.update(b)
                size += len(b)
                f.write(b)

            fill(sink)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, dst)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return size, h.hexdigest()


def _pump(src: Path, into: Encryptor | Decryptor) -> None:
    with open(src, "rb") as f:
        while chunk := f.read(1 << 20):
            into.write(chunk)
    into.close()


def encrypt_file(src: Path, dst: Path, recipient: str | Sequence[str]) -> tuple[int, str]:
    """Encrypt `src` to `dst` (replaced only once whole). Returns the stored (encrypted) size and sha256."""
    return _write_via_temp(dst, lambda sink: _pump(src, Encryptor(recipient, sink)))


def decrypt_file(src: Path, dst: Path, identity: Identity | Sequence[Identity], what: str) -> tuple[int, str]:
    """Decrypt `src` to `dst` (written only once the whole object authenticated). Returns the plaintext size and
    sha256."""
    return _write_via_temp(dst, lambda sink: _pump(src, Decryptor(identity, sink, what)))


def is_age(head: bytes) -> bool:
    """Does an object beginning with `head` look like age (the first line)?"""
    return head.startswith(INTRO)

