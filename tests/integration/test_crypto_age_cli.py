"""The age format against the `age` command (Debian's package, installed by scripts/setup.sh): what
steps.crypto.age writes, `age -d` opens, and what `age` writes (to one or several recipients, from a file of
recipients, with an identity file made by `age-keygen`) is read here, streamed in odd pieces. Damage is named the
same way whoever wrote the object."""

from __future__ import annotations

import os
import random
import shutil
import subprocess
from pathlib import Path

import pytest

from steps.crypto.age import CHUNK, Decryptor, Encryptor, generate_identity, load_identities, parse_identity
from steps.crypto.errors import AlteredCiphertext, NoIdentity

SIZES = [0, 1, CHUNK - 1, CHUNK, CHUNK + 1, 4 * CHUNK, 4 * CHUNK + 333]


def _age() -> str:
    found = shutil.which("age")
    assert found, "the age command is missing: scripts/setup.sh installs it (apt-get install age)"
    return found


def _keyfile(tmp_path: Path) -> tuple[Path, str]:
    secret, recipient = generate_identity()
    key = tmp_path / "ops.agekey"
    key.write_text(secret + "\n")
    key.chmod(0o600)
    return key, recipient


def _encrypt_in_pieces(data: bytes, recipient: str, seed: int) -> bytes:
    rng = random.Random(seed)
    out: list[bytes] = []
    enc = Encryptor(recipient, out.append)
    i = 0
    while i < len(data):
        n = rng.choice([1, 3, 100, 8192, CHUNK - 5, CHUNK + 9, 200_000])
        enc.write(data[i:i + n])
        i += n
    enc.close()
    return b"".join(out)


def _decrypt_in_pieces(ct: bytes, identity: object, seed: int) -> bytes:
    rng = random.Random(seed)
    out: list[bytes] = []
    dec = Decryptor(identity, out.append, "object")  # type: ignore[arg-type]
    i = 0
    while i < len(ct):
        n = rng.choice([1, 7, 4096, CHUNK + 16, 150_000])
        dec.write(ct[i:i + n])
        i += n
    dec.close()
    return b"".join(out)


@pytest.mark.parametrize("size", SIZES)
def test_age_opens_what_is_written_here(tmp_path: Path, size: int) -> None:
    key, recipient = _keyfile(tmp_path)
    data = os.urandom(size)
    ct = _encrypt_in_pieces(data, recipient, size)
    got = subprocess.run([_age(), "-d", "-i", str(key)], input=ct, capture_output=True, timeout=60)
    assert got.returncode == 0, got.stderr.decode()
    assert got.stdout == data


@pytest.mark.parametrize("size", SIZES)
def test_what_age_writes_is_opened_here(tmp_path: Path, size: int) -> None:
    key, recipient = _keyfile(tmp_path)
    _, other = generate_identity()
    data = os.urandom(size)
    ct = subprocess.run([_age(), "-r", other, "-r", recipient], input=data, capture_output=True, check=True,
                        timeout=60).stdout
    assert _decrypt_in_pieces(ct, load_identities([key]), size) == data


def test_age_keygen_identity_files_and_recipient_files_work_both_ways(tmp_path: Path) -> None:
    key = tmp_path / "restore.agekey"
    subprocess.run(["age-keygen", "-o", str(key)], check=True, capture_output=True, timeout=30)
    (ident,) = load_identities([key])  # age-keygen writes 0600 with its comments
    pub = subprocess.run(["age-keygen", "-y", str(key)], check=True, capture_output=True, text=True).stdout.strip()
    assert ident.recipient == pub
    rfile = tmp_path / "ops.recipients"
    rfile.write_text(f"# ops\n{pub}\n")
    data = os.urandom(3 * CHUNK)
    ct = subprocess.run([_age(), "-R", str(rfile)], input=data, capture_output=True, check=True).stdout
    assert _decrypt_in_pieces(ct, ident, 1) == data
    mine = _encrypt_in_pieces(data, pub, 2)
    assert subprocess.run([_age(), "-d", "-i", str(key)], input=mine, capture_output=True, check=True).stdout == data


def test_damage_to_what_age_wrote_is_named_as_it_is_for_our_own(tmp_path: Path) -> None:
    key, recipient = _keyfile(tmp_path)
    ident = parse_identity(key.read_text(), str(key))
    ct = subprocess.run([_age(), "-r", recipient], input=os.urandom(3 * CHUNK + 5), capture_output=True,
                        check=True).stdout
    flipped = bytearray(ct)
    flipped[-1000] ^= 1
    with pytest.raises(AlteredCiphertext, match="altered"):
        _decrypt_in_pieces(bytes(flipped), ident, 3)
    payload = ct.index(b"\n", ct.index(b"\n--- ") + 1) + 1 + 16  # after the header and the nonce
    with pytest.raises(AlteredCiphertext, match="truncated"):  # cut after two whole chunks
        _decrypt_in_pieces(ct[: payload + 2 * (CHUNK + 16)], ident, 4)
    with pytest.raises(NoIdentity):
        _decrypt_in_pieces(ct, parse_identity(generate_identity()[0], "other"), 5)
    # and age itself refuses ours when damaged the same way: the format's authentication, not ours alone
    mine = bytearray(_encrypt_in_pieces(os.urandom(3 * CHUNK + 5), recipient, 6))
    mine[-1000] ^= 1
    assert subprocess.run([_age(), "-d", "-i", str(key)], input=bytes(mine), capture_output=True).returncode != 0
