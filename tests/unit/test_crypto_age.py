"""The age format (steps.crypto.age): round trips through bytes, files and incremental streams written in odd
pieces, interoperation with pyrage both ways, keys and identity files, and every damaged or foreign ciphertext
named as such. The `age` command's side is tests/integration/test_crypto_age_cli.py."""

from __future__ import annotations

import os
import random
from pathlib import Path

import pyrage
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from steps.crypto.age import (
    CHUNK,
    SEALED,
    Decryptor,
    Encryptor,
    bech32_decode,
    bech32_encode,
    decrypt_bytes,
    decrypt_file,
    encrypt_bytes,
    encrypt_file,
    generate_identity,
    load_identities,
    load_recipients,
    parse_identity,
    parse_recipient,
)
from steps.crypto.errors import AlteredCiphertext, EncryptionError, NoIdentity

SECRET, RECIPIENT = generate_identity()
IDENT = parse_identity(SECRET, "test")
# Lengths around every boundary the format has: empty, one byte, a chunk less one, a chunk, a chunk and one, ...
SIZES = [0, 1, 15, 16, 17, CHUNK - 1, CHUNK, CHUNK + 1, 2 * CHUNK, 2 * CHUNK + 7, 5 * CHUNK - 3]


def _pieces(data: bytes, rng: random.Random, most: int) -> list[bytes]:
    out, i = [], 0
    while i < len(data):
        n = rng.randint(1, most)
        out.append(data[i:i + n])
        i += n
    return out


def _stream_encrypt(data: bytes, pieces: list[bytes]) -> bytes:
    out: list[bytes] = []
    enc = Encryptor(RECIPIENT, out.append)
    for p in pieces:
        enc.write(p)
    enc.close()
    return b"".join(out)


def _stream_decrypt(ct: bytes, pieces: list[bytes], what: str = "obj") -> bytes:
    out: list[bytes] = []
    dec = Decryptor(IDENT, out.append, what)
    for p in pieces:
        dec.write(p)
    dec.close()
    return b"".join(out)


def test_a_generated_identity_and_its_recipient_belong_together_and_parse_back() -> None:
    assert SECRET.startswith("AGE-SECRET-KEY-1") and RECIPIENT.startswith("age1") and len(RECIPIENT) == 62
    assert IDENT.recipient == RECIPIENT
    assert IDENT.text() == SECRET
    assert str(pyrage.x25519.Identity.from_str(SECRET).to_public()) == RECIPIENT
    assert SECRET not in repr(IDENT) and SECRET not in str(IDENT)


@given(st.binary(min_size=0, max_size=80))
def test_bech32_round_trips(data: bytes) -> None:
    assert bech32_decode(bech32_encode("age", data)) == ("age", data)


@pytest.mark.parametrize("size", SIZES)
def test_bytes_round_trip_and_pyrage_opens_what_is_written_and_vice_versa(size: int) -> None:
    data = os.urandom(size)
    ct = encrypt_bytes(data, RECIPIENT)
    assert decrypt_bytes(ct, IDENT, "obj") == data
    assert pyrage.decrypt(ct, [pyrage.x25519.Identity.from_str(SECRET)]) == data
    theirs = pyrage.encrypt(data, [pyrage.x25519.Recipient.from_str(RECIPIENT)])
    assert decrypt_bytes(theirs, IDENT, "obj") == data
    # the same payload framing to the byte (pyrage adds a random "grease" stanza to its header: skipped here)
    assert _payload_len(ct) == _payload_len(theirs)


def _payload_len(ct: bytes) -> int:
    return len(ct) - ct.index(b"\n", ct.index(b"\n--- ") + 1) - 1


@pytest.mark.parametrize("most", [1, 7, 4096, CHUNK - 1, CHUNK + 1, 3 * CHUNK])
def test_many_small_and_odd_sized_writes_make_the_same_plaintext_both_ways(most: int) -> None:
    rng = random.Random(most)
    data = os.urandom(3 * CHUNK + 12345 if most > 1 else 2 * CHUNK + 3)
    ct = _stream_encrypt(data, _pieces(data, rng, most))
    assert len(ct) == len(encrypt_bytes(data, RECIPIENT))
    assert pyrage.decrypt(ct, [pyrage.x25519.Identity.from_str(SECRET)]) == data
    assert _stream_decrypt(ct, _pieces(ct, rng, most)) == data


def test_plaintext_reaches_the_sink_chunk_by_chunk_not_at_the_end() -> None:
    data = os.urandom(4 * CHUNK)
    ct = encrypt_bytes(data, RECIPIENT)
    got: list[bytes] = []
    dec = Decryptor(IDENT, got.append, "obj")
    dec.write(ct[: len(ct) - SEALED])  # all but the last chunk: every chunk before the held-back one is out
    assert len(b"".join(got)) >= 2 * CHUNK
    dec.write(ct[len(ct) - SEALED:])
    dec.close()
    assert b"".join(got) == data


def test_several_recipients_each_open_it() -> None:
    s2, r2 = generate_identity()
    ct = encrypt_bytes(b"wrapped key", [RECIPIENT, r2])
    assert decrypt_bytes(ct, parse_identity(s2, "two"), "w") == b"wrapped key"
    assert decrypt_bytes(ct, [parse_identity(generate_identity()[0], "x"), IDENT], "w") == b"wrapped key"


def test_files_round_trip_and_report_stored_and_plain_sizes_and_hashes(tmp_path: Path) -> None:
    import hashlib

    data = os.urandom(3 * CHUNK + 99)
    (tmp_path / "plain").write_bytes(data)
    size, sha = encrypt_file(tmp_path / "plain", tmp_path / "ct.age", RECIPIENT)
    stored = (tmp_path / "ct.age").read_bytes()
    assert (size, sha) == (len(stored), hashlib.sha256(stored).hexdigest())
    assert (tmp_path / "ct.age").stat().st_mode & 0o777 == 0o600
    psize, psha = decrypt_file(tmp_path / "ct.age", tmp_path / "back", IDENT, "ct.age")
    assert (psize, psha) == (len(data), hashlib.sha256(data).hexdigest())
    assert (tmp_path / "back").read_bytes() == data


def test_a_failed_decryption_leaves_no_file(tmp_path: Path) -> None:
    ct = bytearray(encrypt_bytes(os.urandom(2 * CHUNK), RECIPIENT))
    ct[-100] ^= 1
    (tmp_path / "ct.age").write_bytes(ct)
    with pytest.raises(AlteredCiphertext):
        decrypt_file(tmp_path / "ct.age", tmp_path / "out", IDENT, "ct.age")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ct.age"]


# --- damaged, foreign, wrong-key ciphertext: each named --------------------------------------------------------

DATA = os.urandom(3 * CHUNK + 500)
CT = encrypt_bytes(DATA, RECIPIENT)
HEADER_END = CT.index(b"\n--- ") + 1


@pytest.mark.parametrize("where", ["header stanza", "header mac", "nonce", "first chunk", "middle chunk",
                                   "last chunk", "last byte"])
def test_one_flipped_byte_anywhere_is_named_altered(where: str) -> None:
    mac_nl = CT.index(b"\n", HEADER_END)
    at = {"header stanza": len(b"age-encryption.org/v1\n-> X25519 ") + 5, "header mac": mac_nl - 3,
          "nonce": mac_nl + 4, "first chunk": mac_nl + 17 + 100, "middle chunk": mac_nl + 17 + SEALED + 5,
          "last chunk": len(CT) - 300, "last byte": len(CT) - 1}[where]
    bad = bytearray(CT)
    bad[at] ^= 0x04
    with pytest.raises((AlteredCiphertext, NoIdentity)) as e:
        _stream_decrypt(bytes(bad), _pieces(bytes(bad), random.Random(1), 5000), "clusters/x/dump.age")
    if where == "header stanza":  # the wrapped file key itself: no identity opens it any more
        assert isinstance(e.value, (NoIdentity, AlteredCiphertext))
    else:
        assert isinstance(e.value, AlteredCiphertext)
        assert "altered" in e.value.message and "clusters/x/dump.age" in e.value.message


@pytest.mark.parametrize("cut", ["inside header", "after nonce", "chunk boundary", "inside a chunk",
                                 "last byte"])
def test_a_truncated_object_is_named_truncated(cut: str) -> None:
    mac_nl = CT.index(b"\n", HEADER_END)
    at = {"inside header": 40, "after nonce": mac_nl + 17, "chunk boundary": mac_nl + 17 + 2 * SEALED,
          "inside a chunk": mac_nl + 17 + SEALED + 1000, "last byte": len(CT) - 1}[cut]
    with pytest.raises(AlteredCiphertext) as e:
        _stream_decrypt(CT[:at], [CT[:at]], "wal/0001.age")
    msg = e.value.message
    assert "wal/0001.age" in msg
    assert ("truncated" in msg) if cut in ("inside header", "after nonce", "chunk boundary") else \
        ("cut short" in msg or "truncated" in msg)


def test_chunks_swapped_are_refused() -> None:
    mac_nl = CT.index(b"\n", HEADER_END)
    body = mac_nl + 17
    c0, c1 = CT[body:body + SEALED], CT[body + SEALED:body + 2 * SEALED]
    swapped = CT[:body] + c1 + c0 + CT[body + 2 * SEALED:]
    with pytest.raises(AlteredCiphertext, match="chunk 0 .* fails authentication"):
        decrypt_bytes(swapped, IDENT, "obj")


def test_the_wrong_key_is_named_no_identity() -> None:
    other = parse_identity(generate_identity()[0], "/etc/keys/other.agekey:1")
    with pytest.raises(NoIdentity) as e:
        decrypt_bytes(CT, other, "backup X")
    assert "backup X" in e.value.message and other.recipient in e.value.message
    assert other.text() not in str(e.value)


def test_plain_data_is_named_not_age() -> None:
    with pytest.raises(AlteredCiphertext, match="not an age file"):
        decrypt_bytes(b"PGDMP" + os.urandom(5000), IDENT, "dump")
    with pytest.raises(AlteredCiphertext, match="not an age file"):
        decrypt_bytes(b"", IDENT, "dump")


def test_a_header_without_end_is_refused_without_reading_for_ever() -> None:
    dec = Decryptor(IDENT, lambda b: None, "obj")
    with pytest.raises(AlteredCiphertext, match="no age header end"):
        dec.write(b"age-encryption.org/v1\n" + b"-> x " + b"a" * (2 << 20))


def test_an_object_to_a_scrypt_passphrase_or_an_unknown_stanza_only_is_no_identity() -> None:
    ct = pyrage.passphrase.encrypt(b"secret", "pass phrase")
    with pytest.raises(NoIdentity, match="scrypt"):
        decrypt_bytes(ct, IDENT, "obj")


# --- keys -------------------------------------------------------------------------------------------------------


def test_recipients_parse_with_clear_errors() -> None:
    assert parse_recipient(f"  {RECIPIENT}\n") == RECIPIENT
    typo = RECIPIENT[:10] + ("q" if RECIPIENT[10] != "q" else "p") + RECIPIENT[11:]
    with pytest.raises(ValueError, match="checksum"):
        parse_recipient(typo)
    with pytest.raises(ValueError, match="not an age recipient"):
        parse_recipient("ssh-ed25519 AAAA")
    with pytest.raises(ValueError, match="private key") as e:
        parse_recipient(SECRET)
    assert SECRET not in str(e.value)


def test_recipients_from_strings_and_files(tmp_path: Path) -> None:
    _, r2 = generate_identity()
    f = tmp_path / "ops.recipients"
    f.write_text(f"# the ops team\n{r2}  # alice\n\n{RECIPIENT}\n")
    assert load_recipients([RECIPIENT, str(f)]) == [RECIPIENT, r2]
    (tmp_path / "bad").write_text(f"{r2}\nage1nope\n")
    with pytest.raises(EncryptionError, match=r"encryption.recipients\[1\]: .*bad:2"):
        load_recipients([RECIPIENT, str(tmp_path / "bad")])
    with pytest.raises(EncryptionError, match=r"encryption.recipients\[0\]: cannot read the recipients file"):
        load_recipients([str(tmp_path / "missing")])
    (tmp_path / "empty").write_text("# nobody\n")
    with pytest.raises(EncryptionError, match="names no recipient"):
        load_recipients([str(tmp_path / "empty")])


def _identity_file(path: Path, text: str, mode: int = 0o600) -> Path:
    path.write_text(text)
    os.chmod(path, mode)
    return path


def test_identity_files_as_age_keygen_writes_them_load(tmp_path: Path) -> None:
    s2, r2 = generate_identity()
    f = _identity_file(tmp_path / "k", f"# created: 2026-12-07T03:00:00Z\n# public key: {r2}\n{s2}\n{SECRET}\n")
    ids = load_identities([f])
    assert [i.recipient for i in ids] == [r2, RECIPIENT]
    assert ids[0].source == f"{f}:3"


@pytest.mark.parametrize("mode", [0o640, 0o604, 0o644, 0o660])
def test_an_identity_file_others_may_read_is_refused_naming_it(tmp_path: Path, mode: int) -> None:
    f = _identity_file(tmp_path / "k", SECRET + "\n", mode)
    with pytest.raises(EncryptionError, match=f"identity file {f} has mode {mode:04o}"):
        load_identities([f])


def test_an_identity_file_that_is_a_link_garbage_or_missing_is_refused(tmp_path: Path) -> None:
    real = _identity_file(tmp_path / "k", SECRET + "\n")
    (tmp_path / "link").symlink_to(real)
    with pytest.raises(EncryptionError, match="symlink"):
        load_identities([tmp_path / "link"])
    garbage = _identity_file(tmp_path / "g", "AGE-SECRET-KEY-1QQQQ\n")
    with pytest.raises(EncryptionError, match=f"{garbage}:1: not a valid age identity"):
        load_identities([garbage])
    with pytest.raises(EncryptionError, match="cannot read the identity file"):
        load_identities([tmp_path / "none"])
    empty = _identity_file(tmp_path / "e", "# nothing\n")
    with pytest.raises(EncryptionError, match="holds no identity"):
        load_identities([empty])


@pytest.mark.skipif(os.geteuid() != 0, reason="giving a file to another user needs root")
def test_an_identity_file_of_another_user_is_refused(tmp_path: Path) -> None:
    f = _identity_file(tmp_path / "k", SECRET + "\n")
    os.chown(f, 65534, 65534)
    with pytest.raises(EncryptionError, match="belongs to uid 65534"):
        load_identities([f])


def test_a_huge_hostile_header_fed_in_small_pieces_is_refused_quickly() -> None:
    import time

    body = b"A" * 64
    head = b"age-encryption.org/v1\n-> X25519 " + b"B" * 43 + b"\n" + (body + b"\n") * 15000 + b"\n--- " + b"C" * 43
    whole = memoryview(head + b"\n" + bytes(16))
    dec = Decryptor(IDENT, lambda b: None, "obj")
    t0 = time.monotonic()
    with pytest.raises(AlteredCiphertext, match="malformed"):
        for i in range(0, len(whole), 512):
            dec.write(whole[i:i + 512])
        dec.close()
    assert time.monotonic() - t0 < 2  # measured ~0.01 s: bounded work per byte, however the pieces come


@settings(max_examples=30, deadline=None)
@given(st.integers(min_value=0, max_value=2 * CHUNK + 100), st.lists(st.integers(min_value=7, max_value=CHUNK + 50),
                                                                   min_size=1, max_size=8), st.randoms())
def test_any_length_cut_any_way_round_trips_and_pyrage_agrees(size: int, cuts: list[int], rnd: random.Random) -> None:
    data = rnd.randbytes(size)
    pieces, i, k = [], 0, 0
    while i < size:
        pieces.append(data[i:i + cuts[k % len(cuts)]])
        i += cuts[k % len(cuts)]
        k += 1
    ct = _stream_encrypt(data, pieces)
    assert pyrage.decrypt(ct, [pyrage.x25519.Identity.from_str(SECRET)]) == data
    back, i, k = [], 0, 0
    while i < len(ct):
        back.append(ct[i:i + cuts[-1 - k % len(cuts)]])
        i += cuts[-1 - k % len(cuts)]
        k += 1
    assert _stream_decrypt(ct, back) == data
