"""The S3 store against moto's server over HTTP, and against stores that misbehave.

Multipart uploads verified by our own sha256 re-read; never-overwrite that holds even when the store
ignores `If-None-Match`; corruption found on read and the object named; and each fault a user can meet
(wrong credentials, a missing bucket, an endpoint that is down or answers 500) as a message saying what
to do, without a traceback.
"""

from __future__ import annotations

import os
import socket
import time
from pathlib import Path

import pytest

from runbook.errors import UsageError
from steps.repository.config import S3Config
from steps.repository.s3 import S3Store
from steps.repository.store import CorruptObject, ObjectExists, RepositoryError, sha256_file
from tests.support.s3server import ACCESS_KEY, SECRET_KEY, FaultProxy, S3Endpoint, s3_bucket, s3_server  # noqa: F401


def store_for(url: str, bucket: str, **kw: object) -> S3Store:
    return S3Store(S3Config.model_validate({"bucket": bucket, "prefix": "pfx", "endpoint_url": url, "max_attempts": 2,
                                            **kw}))


def test_multipart_upload_is_verified_by_our_own_sha256(s3_server: S3Endpoint, s3_bucket: str, tmp_path: Path) -> None:  # noqa: F811
    big = tmp_path / "big"
    big.write_bytes(os.urandom(11 * 1024 * 1024 + 17))
    store = store_for(s3_server.url, s3_bucket, multipart_threshold_mb=5, multipart_chunk_mb=5, sse="AES256")
    seen: list[int] = []
    store.put_file("a/big", big, progress=seen.append)
    head = s3_server.client().head_object(Bucket=s3_bucket, Key="pfx/a/big")
    assert "-3" in head["ETag"]  # three parts
    assert head["ServerSideEncryption"] == "AES256"
    assert sum(seen) == big.stat().st_size
    assert store.hash_object("a/big") == sha256_file(big)
    out = tmp_path / "out"
    size, digest = sha256_file(big)
    store.fetch_file("a/big", out, size=size, sha256=digest)
    assert out.read_bytes() == big.read_bytes()
    assert store.list_keys("a/") == [("a/big", size)] and store.list_dirs("") == ["a"]


def test_a_flipped_byte_is_found_on_read_and_the_object_named(s3_server: S3Endpoint, s3_bucket: str,  # noqa: F811
                                                              tmp_path: Path) -> None:
    store = store_for(s3_server.url, s3_bucket)
    data = os.urandom(4096)
    src = tmp_path / "obj"
    src.write_bytes(data)
    store.put_file("b/obj", src)
    size, digest = sha256_file(src)
    flipped = bytearray(data)
    flipped[1000] ^= 0x01
    s3_server.client().put_object(Bucket=s3_bucket, Key="pfx/b/obj", Body=bytes(flipped))
    with pytest.raises(CorruptObject) as e:
        store.fetch_file("b/obj", tmp_path / "out", size=size, sha256=digest)
    assert e.value.key == "b/obj" and "b/obj" in str(e.value)
    assert not (tmp_path / "out").exists()


def test_never_overwrite_does_not_rest_on_if_none_match(s3_server: S3Endpoint, s3_bucket: str) -> None:  # noqa: F811
    with FaultProxy(("127.0.0.1", s3_server.port), fail=lambda m, p: False, drop_headers=("If-None-Match",)) as proxy:
        store = store_for(proxy.url, s3_bucket)
        store.put_bytes("c/manifest.json", b"first")
        with pytest.raises(ObjectExists):
            store.put_bytes("c/manifest.json", b"second")
        assert store.get_bytes("c/manifest.json") == b"first"
        assert ("HEAD", f"/{s3_bucket}/pfx/c/manifest.json", 200) in proxy.seen


def test_a_missing_bucket_says_so(s3_server: S3Endpoint, s3_bucket: str) -> None:  # noqa: F811
    with pytest.raises(RepositoryError, match="the bucket no-such-bucket does not exist") as e:
        store_for(s3_server.url, "no-such-bucket").check_access()
    assert e.value.hint and "create it" in e.value.hint


def test_wrong_credentials_are_named(s3_server: S3Endpoint, s3_bucket: str, tmp_path: Path) -> None:  # noqa: F811
    creds = tmp_path / "credentials"
    creds.write_text("[default]\naws_access_key_id = AKIAWRONGWRONGWRONG\naws_secret_access_key = nope\n")
    creds.chmod(0o644)
    with pytest.raises(UsageError, match="readable by every user"):
        store_for(s3_server.url, s3_bucket, credentials_file=str(creds))
    creds.chmod(0o600)
    store = store_for(s3_server.url, s3_bucket, credentials_file=str(creds))
    s3_server.set_auth(True)
    try:
        with pytest.raises(RepositoryError, match=r"refused the credentials \(InvalidAccessKeyId\)"):
            store.check_access()
    finally:
        s3_server.set_auth(False)
    store.check_access()  # moto without auth: the same store works


def test_an_endpoint_answering_500_fails_after_retries(s3_bucket: str) -> None:  # noqa: F811
    with FaultProxy(None) as proxy:
        store = store_for(proxy.url, s3_bucket, max_attempts=3)
        with pytest.raises(RepositoryError, match="answered 500 InternalError") as e:
            store.check_access()
        assert "after 3 attempts" in str(e.value)
        assert len(proxy.seen) == 3  # botocore's standard retries, with backoff


def test_an_unreachable_endpoint_fails_fast_with_a_hint(s3_bucket: str) -> None:  # noqa: F811
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    t0 = time.monotonic()
    with pytest.raises(RepositoryError, match="cannot reach the S3 endpoint"):
        store_for(f"http://127.0.0.1:{port}", s3_bucket).check_access()
    assert time.monotonic() - t0 < 15


def test_a_streamed_upload_sends_its_parts_while_the_file_grows(s3_server: S3Endpoint, s3_bucket: str,  # noqa: F811
                                                                 tmp_path: Path) -> None:
    """steps.backup.pipeline feeds an upload while pg_dump still writes the file: full parts go up at once
    (the upload is there, its parts listed, before the file ends); a file that ends early is one PutObject;
    never-overwrite holds; an aborted stream leaves no upload behind."""
    from steps.repository.s3 import STREAM_PART

    store = store_for(s3_server.url, s3_bucket, sse="AES256")
    client = s3_server.client()
    data = os.urandom(2 * STREAM_PART + 12345)
    src = tmp_path / "growing"
    src.write_bytes(b"")
    stream = store.open_stream("dump/1.dat.gz", src)
    for i in range(0, STREAM_PART + 1024 * 1024, 1024 * 1024):
        stream.write(data[i:i + 1024 * 1024])
    (upload,) = client.list_multipart_uploads(Bucket=s3_bucket).get("Uploads", [])
    assert upload["Key"] == "pfx/dump/1.dat.gz"
    parts = client.list_parts(Bucket=s3_bucket, Key=upload["Key"], UploadId=upload["UploadId"])["Parts"]
    assert [p["Size"] for p in parts] == [STREAM_PART]
    assert not store.exists("dump/1.dat.gz")  # no object before it is finished
    stream.write(data[STREAM_PART + 1024 * 1024:])
    stream.finish()
    assert client.list_multipart_uploads(Bucket=s3_bucket).get("Uploads", []) == []
    src.write_bytes(data)
    assert store.hash_object("dump/1.dat.gz") == sha256_file(src)
    head = client.head_object(Bucket=s3_bucket, Key="pfx/dump/1.dat.gz")
    assert "-3" in head["ETag"] and head["ServerSideEncryption"] == "AES256"

    small = store.open_stream("dump/2.dat.gz", src)
    small.write(b"tiny")
    small.finish()
    assert store.get_bytes("dump/2.dat.gz") == b"tiny"

    again = store.open_stream("dump/2.dat.gz", src)
    again.write(b"other bytes")
    with pytest.raises(ObjectExists):
        again.finish()
    assert store.get_bytes("dump/2.dat.gz") == b"tiny"
    again = store.open_stream("dump/1.dat.gz", src)
    with pytest.raises(ObjectExists):
        again.write(data[:STREAM_PART])  # refused before its first part goes up
    assert store.hash_object("dump/1.dat.gz") == sha256_file(src)

    dropped = store.open_stream("dump/3.dat.gz", src)
    dropped.write(data[:STREAM_PART])
    assert len(client.list_multipart_uploads(Bucket=s3_bucket).get("Uploads", [])) == 1
    dropped.abort()
    assert client.list_multipart_uploads(Bucket=s3_bucket).get("Uploads", []) == []
    assert not store.exists("dump/3.dat.gz")
