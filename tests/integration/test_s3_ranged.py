"""Big objects come down from S3 in parallel ranged GETs (moto's server over HTTP on 127.0.0.1), and are still
checked whole: the bytes in order, the sha256 of the manifest, the object's full size."""

from __future__ import annotations

import hashlib
import os
import threading
from pathlib import Path
from typing import Any

import pytest

from steps.repository.config import S3Config
from steps.repository.s3 import ObjectChanged, S3Store
from steps.repository.store import CorruptObject
from tests.support.s3server import S3Endpoint, s3_bucket, s3_server  # noqa: F401

RANGE_PART = 5 * 1024 * 1024  # range_get_mb: 5


def _store(s3_server: S3Endpoint, bucket: str, range_get_mb: int = 5,  # noqa: F811
           ) -> tuple[S3Store, list[tuple[str, str]]]:
    store = S3Store(S3Config(bucket=bucket, prefix="r", endpoint_url=s3_server.url, max_concurrency=4,
                             range_get_mb=range_get_mb))
    calls: list[tuple[str, str]] = []
    real = store.client.get_object
    lock = threading.Lock()

    def get_object(**kw: Any) -> Any:
        with lock:
            calls.append((kw["Key"], kw.get("Range", "")))
        return real(**kw)

    store.client.get_object = get_object
    return store, calls


def _fetch(store: Any, into: Path, name: str, data: bytes) -> None:
    """Object `name` (holding `data`: its size and sha256) fetched from the store into directory `into`."""
    fd = os.open(into, os.O_RDONLY | os.O_DIRECTORY)
    try:
        store.fetch_beneath(name, fd, name, size=len(data), sha256=hashlib.sha256(data).hexdigest())
    finally:
        os.close(fd)


def test_a_big_object_is_fetched_by_ranges_in_order_and_checked(s3_server: S3Endpoint, s3_bucket: str,  # noqa: F811
                                                                 tmp_path: Path) -> None:
    store, calls = _store(s3_server, s3_bucket)
    data = os.urandom(3 * RANGE_PART + 12345)  # four parts, the last one short
    s3_server.client().put_object(Bucket=s3_bucket, Key="r/big.dat", Body=data)
    s3_server.client().put_object(Bucket=s3_bucket, Key="r/small.dat", Body=data[:1000])
    _fetch(store, tmp_path, "big.dat", data)
    _fetch(store, tmp_path, "small.dat", data[:1000])
    assert (tmp_path / "big.dat").read_bytes() == data
    assert (tmp_path / "small.dat").read_bytes() == data[:1000]
    big = sorted(r for k, r in calls if k == "r/big.dat")
    assert big == sorted(f"bytes={lo}-{min(lo + RANGE_PART, len(data)) - 1}" for lo in range(0, len(data), RANGE_PART))
    assert [r for k, r in calls if k == "r/small.dat"] == [""]  # a small object: one plain GET


@pytest.mark.parametrize("case", ["flipped", "longer", "shorter"])
def test_a_big_object_that_is_not_what_the_manifest_says_is_refused(s3_server: S3Endpoint, s3_bucket: str,  # noqa: F811
                                                                    tmp_path: Path, case: str) -> None:
    store, _ = _store(s3_server, s3_bucket)
    data = os.urandom(2 * RANGE_PART + 5)
    stored = bytearray(data)
    if case == "flipped":
        stored[RANGE_PART + 7] ^= 1  # in the second part
    elif case == "longer":
        stored += b"x"  # the manifest's bytes are all there, plus one
    else:
        del stored[-1]
    s3_server.client().put_object(Bucket=s3_bucket, Key="r/big.dat", Body=bytes(stored))
    with pytest.raises(CorruptObject):
        _fetch(store, tmp_path, "big.dat", data)
    assert os.listdir(tmp_path) == []  # nothing left, not even the temporary file


def test_without_range_get_mb_a_big_object_is_one_get(s3_server: S3Endpoint, s3_bucket: str,  # noqa: F811
                                                       tmp_path: Path) -> None:
    store, calls = _store(s3_server, s3_bucket, range_get_mb=0)
    data = os.urandom(3 * RANGE_PART)
    s3_server.client().put_object(Bucket=s3_bucket, Key="r/big.dat", Body=data)
    _fetch(store, tmp_path, "big.dat", data)
    assert (tmp_path / "big.dat").read_bytes() == data
    assert calls == [("r/big.dat", "")]


def test_an_object_replaced_between_two_parts_is_refused_naming_it(s3_server: S3Endpoint, s3_bucket: str,  # noqa: F811
                                                                   tmp_path: Path) -> None:
    store, calls = _store(s3_server, s3_bucket)
    data = os.urandom(3 * RANGE_PART)
    other = os.urandom(len(data))  # same size: only the ETag tells them apart
    s3_server.client().put_object(Bucket=s3_bucket, Key="r/big.dat", Body=data)
    counted = store.client.get_object

    def replaced_after_the_first_part(**kw: Any) -> Any:
        resp = counted(**kw)
        if kw.get("Range", "").startswith("bytes=0-"):
            s3_server.client().put_object(Bucket=s3_bucket, Key="r/big.dat", Body=other)
        return resp

    store.client.get_object = replaced_after_the_first_part
    with pytest.raises(ObjectChanged) as e:
        _fetch(store, tmp_path, "big.dat", data)
    assert "big.dat" in str(e.value) and "changed while it was read in parts" in str(e.value)
    assert all(r for _, r in calls)  # only ranged GETs: no part was taken from the new object unnoticed
    assert os.listdir(tmp_path) == []


def test_a_part_read_short_is_refused_naming_the_object(s3_server: S3Endpoint, s3_bucket: str,  # noqa: F811
                                                        tmp_path: Path) -> None:
    store, _ = _store(s3_server, s3_bucket)
    data = os.urandom(2 * RANGE_PART + 5)
    s3_server.client().put_object(Bucket=s3_bucket, Key="r/big.dat", Body=data)
    counted = store.client.get_object

    class Short:  # a body that ends one byte early, as a broken proxy would give it
        def __init__(self, body: Any) -> None:
            self.body = body

        def read(self) -> bytes:
            return bytes(self.body.read())[:-1]

        def close(self) -> None:
            self.body.close()

    def short_second_part(**kw: Any) -> Any:
        resp = counted(**kw)
        if kw.get("Range", "").startswith(f"bytes={RANGE_PART}-"):
            resp["Body"] = Short(resp["Body"])
        return resp

    store.client.get_object = short_second_part
    with pytest.raises(CorruptObject) as e:
        _fetch(store, tmp_path, "big.dat", data)
    assert "big.dat" in str(e.value) and f"{RANGE_PART} bytes at {RANGE_PART}" in str(e.value)
    assert os.listdir(tmp_path) == []
