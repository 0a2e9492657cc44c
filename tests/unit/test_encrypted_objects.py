"""Objects of encrypted repositories, without a server: the manifest's stored fields (and a plaintext manifest
written exactly as before), the store streaming an object through its decoder with the stored sha256 deciding
first (truncated, altered, replaced named apart), the upload stream that encrypts as it goes into a local
repository, and the lines `backups`/`status` print (80 columns)."""

from __future__ import annotations

import hashlib
import json
import os
from datetime import UTC, datetime
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

from runbook.cli.backup import encryption_lines
from steps.crypto.age import CHUNK, decrypt_bytes, encrypt_bytes, generate_identity, parse_identity
from steps.crypto.errors import AlteredCiphertext
from steps.encrypted.reading import ObjectDecoding, describe_recipients
from steps.encrypted.writing import Sealing, with_stored
from steps.repository.manifest import Encryption, FilesManifest, ObjectEntry, Tool, parse_files, to_json
from steps.repository.store import LocalStore, decode_chunks

EPOCH = "20261207T031500Z-0123abcd"
RECIPIENT = "age1" + "q" * 58


def _sha(b: bytes) -> str:
    return hashlib.sha256(b).hexdigest()


def _manifest(objects: list[ObjectEntry], encryption: Encryption | None = None) -> FilesManifest:
    return FilesManifest(backup_id="20261207T031500Z", source="/srv/uploads", created_at=datetime(2026, 12, 7, tzinfo=UTC),
                         files=[], objects=objects, tool=Tool(version="1"), encryption=encryption)


def test_a_plaintext_manifest_is_written_exactly_as_before_encryption_existed() -> None:
    m = _manifest([ObjectEntry(path="attachments.tar", size=3, sha256=_sha(b"abc"))])
    data = json.loads(to_json(m))
    assert "encryption" not in data and set(data["objects"][0]) == {"path", "size", "sha256"}
    assert parse_files(to_json(m)).encryption is None


def test_an_encrypted_manifest_records_both_sha256_and_the_epoch_last() -> None:
    o = ObjectEntry(path="attachments.tar", size=3, sha256=_sha(b"abc"))
    (enc_o,) = with_stored([o], {"attachments.tar": (200, _sha(b"ct"))})
    m = _manifest([enc_o], Encryption(epoch=EPOCH, recipients=[RECIPIENT]))
    text = to_json(m)
    data = json.loads(text)
    assert list(data)[-1] == "encryption" and data["encryption"] == {"format": "age", "epoch": EPOCH,
                                                                     "recipients": [RECIPIENT]}
    back = parse_files(text)
    assert back.objects[0].stored_sha256 == _sha(b"ct") and back.stored_key(back.objects[0]) == "attachments.tar.age"
    assert back.stored_bytes == 200 and back.size_bytes == 3


@pytest.mark.parametrize("case", ["stored without encryption", "encryption without stored", "half stored",
                                  "a recipient that is not a key"])
def test_a_manifest_that_mixes_stored_fields_and_encryption_does_not_parse(case: str) -> None:
    o: dict[str, Any] = {"path": "attachments.tar", "size": 3, "sha256": _sha(b"abc")}
    enc = None
    if case == "stored without encryption":
        o |= {"stored_size": 5, "stored_sha256": _sha(b"x")}
    elif case == "encryption without stored":
        enc = {"epoch": EPOCH}
    elif case == "half stored":
        o |= {"stored_size": 5}
        enc = {"epoch": EPOCH}
    else:
        o |= {"stored_size": 5, "stored_sha256": _sha(b"x")}
        enc = {"epoch": EPOCH, "recipients": ["age1\x1b[31mred"]}
    data = json.loads(to_json(_manifest([])))
    data["objects"] = [o]
    if enc:
        data["encryption"] = enc
    with pytest.raises(ValueError):
        parse_files(json.dumps(data).encode())


def _decoding(ct: bytes, identity: Any) -> ObjectDecoding:
    return ObjectDecoding(len(ct), _sha(ct), identity, "dump/1.dat.gz of backup B", "S3 repository s3://b/")


def _decode(stored: bytes, decoding: ObjectDecoding, piece: int = 50_000) -> bytes:
    out: list[bytes] = []
    decode_chunks(iter([stored[i:i + piece] for i in range(0, len(stored), piece)]), "k/dump/1.dat.gz.age",
                  decoding, out.append, None)
    return b"".join(out)


@pytest.fixture(scope="module")
def keys() -> tuple[Any, str]:
    secret, recipient = generate_identity()
    return parse_identity(secret, "test"), recipient


def test_the_stored_sha256_decides_first_truncated_altered_and_replaced_are_named_apart(keys: tuple[Any, str]) -> None:
    identity, recipient = keys
    plain = os.urandom(5 * CHUNK + 1234)
    ct = encrypt_bytes(plain, recipient)
    dec = _decoding(ct, identity)
    assert _decode(ct, dec) == plain
    with pytest.raises(AlteredCiphertext, match=r"^truncated ciphertext: k/dump/1.dat.gz.age in S3 repository"):
        _decode(ct[:-1000], dec)
    flipped = bytearray(ct)
    flipped[len(ct) // 2] ^= 1
    with pytest.raises(AlteredCiphertext, match=r"altered ciphertext: .*age refuses them \(altered\)"):
        _decode(bytes(flipped), dec)
    other = encrypt_bytes(os.urandom(100), recipient)  # valid ciphertext to the same key: another backup's object
    with pytest.raises(AlteredCiphertext, match=r"another complete age object .*replaced\)") as e:
        _decode(other, dec)
    assert dec.stored_sha256 in str(e.value)


def test_a_local_repository_gets_ciphertext_streamed_into_its_spool_and_linked(tmp_path: Path,
                                                                                keys: tuple[Any, str]) -> None:
    identity, recipient = keys
    store = LocalStore(tmp_path / "repo")
    store.check_access()
    sealing = Sealing(epoch=EPOCH, recipient=recipient, recipients=("age1x",))
    stream = sealing.stream(store, "b/dump/toc.dat", tmp_path / "staging" / ".encrypted" / "toc.dat.age")
    plain = os.urandom(3 * CHUNK + 7)
    for i in range(0, len(plain), 10_000):
        stream.write(plain[i:i + 10_000])
    stream.finish()
    assert stream.key == "b/dump/toc.dat.age" and not store.exists("b/dump/toc.dat")
    stored = (tmp_path / "repo" / "b" / "dump" / "toc.dat.age").read_bytes()
    assert stream.stored == (len(stored), _sha(stored)) == store.hash_object("b/dump/toc.dat.age")
    assert decrypt_bytes(stored, identity, "toc") == plain


def test_an_aborted_stream_leaves_nothing_in_the_repository(tmp_path: Path, keys: tuple[Any, str]) -> None:
    _identity, recipient = keys
    store = LocalStore(tmp_path / "repo")
    store.check_access()
    stream = Sealing(EPOCH, recipient, ()).stream(store, "b/globals.sql", tmp_path / "spool" / "g.age")
    stream.write(b"create role x;")
    stream.abort()
    assert not store.exists("b/globals.sql.age")


def test_recipients_are_shown_by_count_and_short_id_within_the_width() -> None:
    rs = [f"age1{c * 58}" for c in "qpzry9x8gf"]
    assert describe_recipients(rs[:1]) == "1 recipient: age1qqqqqq"
    assert describe_recipients(rs[:2]) == "2 recipients: age1qqqqqq, age1pppppp"
    assert describe_recipients(rs, 40) == "10 recipients: age1qqqqqq, +9"
    assert describe_recipients(rs, 41) == "10 recipients: age1qqqqqq, age1pppppp, +8"
    for width in range(30, 120):
        assert len(describe_recipients(rs, width)) <= width


def test_the_backups_line_says_which_copies_are_encrypted_and_fits_80_columns() -> None:
    rs = [f"age1{c * 58}" for c in "qpzry9x8gf"]

    def copy(enc: Encryption | None) -> Any:
        return SimpleNamespace(encryption=enc)

    e1 = SimpleNamespace(copies={"local": copy(None), "s3": copy(Encryption(epoch=EPOCH, recipients=rs))},
                         locations=lambda: ["local", "s3"])
    e1.encrypted = lambda: {"s3": e1.copies["s3"].encryption}
    (line,) = encryption_lines(e1)
    assert line.startswith("    encrypted in s3 (local in clear): 10 recipients: age1qqqqqq") and len(line) <= 80
    e2 = SimpleNamespace(locations=lambda: ["local"], encrypted=lambda: {})
    assert encryption_lines(e2) == []
