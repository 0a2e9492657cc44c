"""The envelope on S3 (moto's server over HTTP): a writer's epoch, a reader opening it, rotation and revocation
deleting the old wraps, an oversized or garbage wrap refused; the local and S3 repositories of one config get
epochs of their own."""

from __future__ import annotations

from pathlib import Path

import pytest

from steps.crypto.age import decrypt_bytes, encrypt_bytes, generate_identity, parse_identity
from steps.crypto.epochs import EPOCHS, KeyRing, list_epochs, revoke, rotate, writer_key
from steps.crypto.errors import EpochRefused, NoIdentity
from steps.repository.config import S3Config
from steps.repository.s3 import S3Store
from steps.repository.signing import Trust, load_private_key, load_public_keys
from steps.repository.store import LocalStore
from tests.support.s3server import S3Endpoint, s3_bucket, s3_server  # noqa: F401
from tests.support.signing import make_keys


def _store(url: str, bucket: str) -> S3Store:
    return S3Store(S3Config.model_validate({"bucket": bucket, "prefix": "enc", "endpoint_url": url,
                                            "max_attempts": 2}))


def test_epochs_on_s3_from_writer_to_reader_through_rotation_and_revocation(
        s3_server: S3Endpoint, s3_bucket: str, tmp_path: Path) -> None:  # noqa: F811
    priv, pub = make_keys(tmp_path / "sign")
    signer, trust = load_private_key(priv), Trust.of(load_public_keys([pub]))
    s3 = _store(s3_server.url, s3_bucket)
    local = LocalStore(tmp_path / "repo")
    secret, r_ops = generate_identity()
    ops = parse_identity(secret, "ops:1")
    s_gone, r_gone = generate_identity()
    gone = parse_identity(s_gone, "gone:1")
    state = tmp_path / "state"

    key = writer_key(s3, [r_ops, r_gone], state, signer)
    assert writer_key(s3, [r_ops, r_gone], state, signer) == key
    assert writer_key(local, [r_ops, r_gone], state, signer).epoch != key.epoch  # one epoch per repository
    s3.put_bytes("data/x.age", encrypt_bytes(b"secret rows", key.data_recipient))
    ring = KeyRing([ops], trust)
    assert decrypt_bytes(s3.get_bytes("data/x.age"), ring.identity_for(s3, key.epoch), "x") == b"secret rows"

    _, r_new = generate_identity()
    assert rotate(s3, KeyRing([ops], trust), [r_new], signer).epochs == [key.epoch]
    rec = revoke(s3, KeyRing([ops], trust), r_gone, signer)
    assert rec.epochs == [key.epoch]
    (info,) = list_epochs(s3, trust)
    assert len(info.wraps) == 1 and set(info.recipients) == {r_ops, r_new}
    keys = [k for k, _ in s3.list_keys(f"{EPOCHS}{key.epoch}/")]
    assert len([k for k in keys if k.endswith(".age")]) == 1  # the older wraps are deleted from the bucket
    with pytest.raises(NoIdentity):
        KeyRing([gone], trust).identity_for(s3, key.epoch)
    assert KeyRing([ops], trust).identity_for(s3, key.epoch).recipient == key.data_recipient

    # an oversized object planted as the newest wrap is refused unread, the genuine one still opens
    s3.put_bytes(f"{EPOCHS}{key.epoch}/wrap-29991231T000000.000000Z.age", b"x" * 100_000)
    assert KeyRing([ops], trust).identity_for(s3, key.epoch).recipient == key.data_recipient
    s3.delete([k for k, _ in s3.list_keys(f"{EPOCHS}{key.epoch}/") if "/wrap-" in k and "/wrap-2999" not in k])
    with pytest.raises(EpochRefused, match="no sidecar|larger than any key object"):
        KeyRing([ops], trust).identity_for(s3, key.epoch)


def test_an_oversized_or_garbage_epoch_json_on_s3_is_refused_unread(s3_server: S3Endpoint, s3_bucket: str,  # noqa: F811
                                                                   tmp_path: Path) -> None:
    _, pub = make_keys(tmp_path / "sign")
    s3 = _store(s3_server.url, s3_bucket)
    secret, _ = generate_identity()
    ring = KeyRing([parse_identity(secret, "ops:1")], Trust.of(load_public_keys([pub])), allow_unsigned=True)
    big, junk = "20261207T000000Z-00000000", "20261207T000001Z-00000001"
    s3.put_bytes(f"{EPOCHS}{big}/epoch.json", b"{" * 5_000_000)
    s3.put_bytes(f"{EPOCHS}{junk}/epoch.json", b"\xff\xfe not json")
    with pytest.raises(EpochRefused, match="5000000 bytes, larger than any key object"):
        ring.identity_for(s3, big)
    with pytest.raises(EpochRefused, match="is not JSON"):
        ring.identity_for(s3, junk)
    assert {e.epoch: bool(e.problem) for e in list_epochs(s3, ring.trusted)} == {big: True, junk: True}
