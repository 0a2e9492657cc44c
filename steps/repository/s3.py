"""The S3 backend of the repository, through boto3 (imported here only, so only when S3 is configured).

Works with AWS and with S3-compatible stores (MinIO, Ceph) through `endpoint_url`. It codes only to
behaviour AWS documents, and trusts no optional feature for safety: some stores accept but ignore
conditional writes (`IfNoneMatch`) and checksum headers, so
- never-overwrite is a look before each write (`HeadObject`), plus `IfNoneMatch: *` on manifests and
  records (dropped if the store answers 501 NotImplemented);
- integrity is our own sha256: callers re-read every object after writing it, and downloads hash as they
  stream. botocore's own checksums are asked for only when an operation requires them.
Requests are retried by botocore (standard mode: exponential backoff with jitter on 5xx, throttling and
connection errors); a download whose body breaks half-way is read again (steps.repository.retry). Large files go up
in parts (TransferConfig); with `range_get_mb`, big objects come down in parallel ranged GETs (`iter_chunks` with
their size). Every botocore error becomes a RepositoryError saying what to do.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from steps.repository.config import S3Config
from steps.repository.s3common import NOT_FOUND, ConditionalWrites, error_code, http_status, new_client
from steps.repository.store import (
    CorruptObject,
    NotFound,
    ObjectExists,
    ObjectStream,
    Progress,
    RepositoryError,
    Store,
    StoreName,
)

_CREDENTIAL_CODES = {"InvalidAccessKeyId", "SignatureDoesNotMatch", "ExpiredToken", "InvalidToken",
                     "TokenRefreshRequired", "InvalidClientTokenId", "AuthorizationHeaderMalformed"}


class ObjectChanged(CorruptObject):
    """An object read in ranged GETs was replaced between two of them (If-Match on the first part's ETag failed)."""

    def __init__(self, where: str, key: str, etag: str) -> None:
        RepositoryError.__init__(
            self, f"the object {key} in {where} changed while it was read in parts: S3 refused a part with If-Match "
                  f"on the ETag {etag} of the first one (412 Precondition Failed)",
            hint="a backup's objects are written once: find out what rewrites the bucket; fetch again, or use "
                 "another copy (from: local) or another backup")
        self.key = key


class S3Store(Store):
    name: StoreName = "s3"

    def __init__(self, cfg: S3Config, *, credentials_file: Path | None = None) -> None:
        """`credentials_file` overrides the config's (prune's own credentials); else boto3's chain."""
        from boto3.s3.transfer import TransferConfig

        self.cfg = cfg
        self.bucket = cfg.bucket
        self.prefix = cfg.key_prefix
        self.client: Any = new_client(
            credentials_file=credentials_file or cfg.credentials_file, who="the user that runs backups",
            profile=cfg.profile, region=cfg.region, endpoint_url=cfg.endpoint_url, max_attempts=cfg.max_attempts,
            connect_timeout=cfg.connect_timeout_s, read_timeout=cfg.read_timeout_s,
            max_pool=max(10, cfg.max_concurrency * 4))
        self.transfer = TransferConfig(
            multipart_threshold=cfg.multipart_threshold_mb * 1024 * 1024,
            multipart_chunksize=cfg.multipart_chunk_mb * 1024 * 1024,
            max_concurrency=cfg.max_concurrency,
        )
        self.conditional = ConditionalWrites()

    # --- helpers ---------------------------------------------------------------------------------

    def describe(self) -> str:
        where = f"s3://{self.bucket}/{self.prefix}"
        return f"S3 repository {where}" + (f" at {self.cfg.endpoint_url}" if self.cfg.endpoint_url else "")

    def _key(self, key: str) -> str:
        return self.prefix + key

    def _sse(self) -> dict[str, str]:
        if not self.cfg.sse:
            return {}
        extra: dict[str, str] = {"ServerSideEncryption": str(self.cfg.sse)}
        if self.cfg.sse_kms_key_id:
            extra["SSEKMSKeyId"] = self.cfg.sse_kms_key_id
        return extra

    def error(self, e: BaseException, what: str) -> RepositoryError:
        return s3_error(e, what, self)

    def read_retries(self) -> int:
        return 3

    def transient(self, e: BaseException) -> bool:
        from botocore.exceptions import (
            ConnectionClosedError,
            EndpointConnectionError,
            ReadTimeoutError,
            ResponseStreamingError,
        )
        from urllib3.exceptions import ProtocolError

        return isinstance(e, ConnectionClosedError | EndpointConnectionError | ReadTimeoutError
                          | ResponseStreamingError | ProtocolError)

    # --- the Store interface ---------------------------------------------------------------------

    def check_access(self) -> None:
        try:
            self.client.list_objects_v2(Bucket=self.bucket, Prefix=self.prefix, MaxKeys=1)
        except Exception as e:
            raise self.error(e, "listing the bucket") from None

    def exists(self, key: str) -> bool:
        from botocore.exceptions import ClientError

        try:
            self.client.head_object(Bucket=self.bucket, Key=self._key(key))
            return True
        except ClientError as e:
            if error_code(e) in NOT_FOUND:
                return False
            raise self.error(e, f"looking for {key}") from None
        except Exception as e:
            raise self.error(e, f"looking for {key}") from None

    def put_file(self, key: str, src: Path, progress: Progress | None = None) -> None:
        if self.exists(key):
            raise ObjectExists(f"{key} already exists in {self.describe()}; backups are never overwritten")
        try:
            self.client.upload_file(str(src), self.bucket, self._key(key), ExtraArgs=self._sse() or None,
                                    Config=self.transfer, Callback=progress)
        except Exception as e:
            raise self.error(e, f"uploading {key}") from None

    def open_stream(self, key: str, src: Path) -> ObjectStream:
        return _S3Stream(self, key, src)

    def put_bytes(self, key: str, data: bytes) -> None:
        exists = ObjectExists(f"{key} already exists in {self.describe()}; backups are never overwritten")
        if self.exists(key):
            raise exists
        args: dict[str, Any] = {"Bucket": self.bucket, "Key": self._key(key), "Body": data, **self._sse()}
        try:
            written = self.conditional.put_if_absent(self.client, args)
        except Exception as e:
            raise self.error(e, f"writing {key}") from None
        if not written:
            raise exists

    def get_bytes(self, key: str) -> bytes:
        try:
            resp = self.client.get_object(Bucket=self.bucket, Key=self._key(key))
            return bytes(resp["Body"].read())
        except Exception as e:
            raise self.error(e, f"reading {key}") from None

    def iter_chunks(self, key: str, size: int | None = None) -> Iterator[bytes]:
        """The object's bytes in order. With `range_get_mb` set, of an object of known `size` at least two such
        parts, the parts are read by ranged GETs (`_ranged`), up to `max_concurrency` at once, and given in order
        as each is complete (at most that many parts are held). A read that breaks half-way raises the transient
        error itself (the caller reads the object again).

        Off by default (docs/performance.md): the only store measured, moto, reads the whole object for every
        ranged GET, so against it ranges were slower; no store that serves ranges in proportion to their size
        (AWS) was measured, so no default rests on that either."""
        part = self.cfg.range_get_mb * 1024 * 1024
        if part and size is not None and size >= 2 * part and self.cfg.max_concurrency > 1:
            yield from self._ranged(key, size, part)
            return
        try:
            resp = self.client.get_object(Bucket=self.bucket, Key=self._key(key))
        except Exception as e:
            raise self.error(e, f"reading {key}") from None
        body = resp["Body"]
        try:
            yield from body.iter_chunks(1024 * 1024)
        finally:
            body.close()

    def _ranged(self, key: str, size: int, part_size: int) -> Iterator[bytes]:
        """The parts of `key` by ranged GETs. The first answer's ETag pins the object: every other part is asked
        for with If-Match on it, so an object replaced between two parts is refused (S3 answers 412), never
        stitched together. Each answer must be the range asked for, of an object of `size` bytes, and hold all of
        its bytes; the caller hashes the parts in order, so every byte is still checked against the manifest's
        sha256."""
        from collections import deque
        from concurrent.futures import Future, ThreadPoolExecutor

        ranges = iter([(lo, min(lo + part_size, size) - 1) for lo in range(0, size, part_size)])
        etag = ""

        def request(lo: int, hi: int) -> Any:
            kw = {"IfMatch": etag} if etag else {}
            try:
                resp = self.client.get_object(Bucket=self.bucket, Key=self._key(key), Range=f"bytes={lo}-{hi}", **kw)
            except Exception as e:
                if etag and http_status(e) == 412:
                    raise ObjectChanged(self.describe(), key, etag) from None
                if self.transient(e):
                    raise
                raise self.error(e, f"reading {key} (bytes {lo}-{hi})") from None
            got = str(resp.get("ContentRange", ""))
            if got != f"bytes {lo}-{hi}/{size}":
                resp["Body"].close()
                raise CorruptObject(self.describe(), key, f"bytes {lo}-{hi} of an object of {size} bytes",
                                    f"{'bytes ' + got.removeprefix('bytes ') if got else 'no Content-Range'}")
            return resp

        def body(lo: int, hi: int, resp: Any) -> bytes:
            try:
                data = bytes(resp["Body"].read())
            except Exception as e:
                if self.transient(e):
                    raise
                raise self.error(e, f"reading {key} (bytes {lo}-{hi})") from None
            if len(data) != hi - lo + 1:
                raise CorruptObject(self.describe(), key, f"{hi - lo + 1} bytes at {lo}", f"{len(data)} bytes")
            return data

        def part(lo: int, hi: int) -> bytes:
            return body(lo, hi, request(lo, hi))

        lo0, hi0 = next(ranges)
        first = request(lo0, hi0)  # its headers: the ETag every other part must match
        etag = str(first.get("ETag", ""))
        if not etag:
            first["Body"].close()
            raise RepositoryError(f"{self.describe()}: S3 gave no ETag for {key}, so its parts cannot be pinned to "
                                  "one version of it", hint="set s3.range_get_mb to 0 for this store")
        pool = ThreadPoolExecutor(max_workers=self.cfg.max_concurrency, thread_name_prefix="s3-range")
        try:
            window: deque[Future[bytes]] = deque(
                pool.submit(part, lo, hi)
                for lo, hi in (r for _, r in zip(range(self.cfg.max_concurrency - 1), ranges, strict=False)))
            yield body(lo0, hi0, first)
            nxt0 = next(ranges, None)
            if nxt0 is not None:
                window.append(pool.submit(part, *nxt0))
            while window:
                data = window.popleft().result()
                nxt = next(ranges, None)
                if nxt is not None:
                    window.append(pool.submit(part, *nxt))
                yield data
        finally:
            pool.shutdown(wait=True, cancel_futures=True)

    def list_dirs(self, prefix: str) -> list[str]:
        full = self._key(prefix)
        names: list[str] = []
        try:
            for page in self.client.get_paginator("list_objects_v2").paginate(
                Bucket=self.bucket, Prefix=full, Delimiter="/"
            ):
                for cp in page.get("CommonPrefixes", []):
                    names.append(cp["Prefix"][len(full):].rstrip("/"))
        except Exception as e:
            raise self.error(e, f"listing {prefix or '/'}") from None
        return sorted(n for n in names if n and not n.startswith("."))

    def list_keys(self, prefix: str) -> list[tuple[str, int]]:
        full = self._key(prefix)
        out: list[tuple[str, int]] = []
        try:
            for page in self.client.get_paginator("list_objects_v2").paginate(Bucket=self.bucket, Prefix=full):
                for obj in page.get("Contents", []):
                    out.append((obj["Key"][len(self.prefix):], int(obj["Size"])))
        except Exception as e:
            raise self.error(e, f"listing {prefix or '/'}") from None
        return sorted(out)

    def delete(self, keys: list[str]) -> None:
        # One request per key keeps the order (the manifest goes first, so a half-deleted backup is never
        # listed) and needs no Content-MD5, which some S3-compatible stores insist on for DeleteObjects.
        for key in keys:
            try:
                self.client.delete_object(Bucket=self.bucket, Key=self._key(key))
            except Exception as e:
                raise self.error(e, f"deleting {key}") from None


STREAM_PART = 8 * 1024 * 1024  # the first 1000 parts; then 16 MB, 24 MB... (10,000 parts hold 440 GB)


def stream_part_size(part_number: int) -> int:
    """Size of part `part_number` (1-based) of a streamed upload: S3 wants at least 5 MB for all parts but the
    last, and at most 10,000 parts."""
    return STREAM_PART * (1 + (part_number - 1) // 1000)


class _S3Stream(ObjectStream):
    """A multipart upload whose parts go up as the file grows: the part buffer fills with what `write` gets,
    and each full part is sent at once. A file that ends before its first part is full goes up in one
    PutObject. Never-overwrite: a look before the upload starts and again before it completes."""

    sends_early = True

    def __init__(self, store: S3Store, key: str, src: Path) -> None:
        super().__init__(store, key, src)
        self.s3 = store
        self.buf = bytearray()
        self.upload_id: str | None = None
        self.parts: list[dict[str, Any]] = []

    def _refuse_existing(self) -> None:
        if self.s3.exists(self.key):
            raise ObjectExists(f"{self.key} already exists in {self.s3.describe()}; backups are never overwritten")

    def write(self, chunk: bytes) -> None:
        self.buf += chunk
        while len(self.buf) >= stream_part_size(len(self.parts) + 1):
            size = stream_part_size(len(self.parts) + 1)
            part, self.buf = bytes(self.buf[:size]), self.buf[size:]
            self._send(part)

    def _send(self, part: bytes) -> None:
        client, bucket, key = self.s3.client, self.s3.bucket, self.s3._key(self.key)
        try:
            if self.upload_id is None:
                self._refuse_existing()
                self.upload_id = client.create_multipart_upload(Bucket=bucket, Key=key, **self.s3._sse())["UploadId"]
            n = len(self.parts) + 1
            resp = client.upload_part(Bucket=bucket, Key=key, UploadId=self.upload_id, PartNumber=n, Body=part)
            self.parts.append({"PartNumber": n, "ETag": resp["ETag"]})
        except RepositoryError:
            raise
        except Exception as e:
            raise self.s3.error(e, f"uploading {self.key}") from None

    def finish(self) -> None:
        client, bucket, key = self.s3.client, self.s3.bucket, self.s3._key(self.key)
        try:
            if self.upload_id is None:
                self._refuse_existing()
                client.put_object(Bucket=bucket, Key=key, Body=bytes(self.buf), **self.s3._sse())
                self.buf = bytearray()
                return
            if self.buf or not self.parts:
                self._send(bytes(self.buf))
                self.buf = bytearray()
            self._refuse_existing()
            client.complete_multipart_upload(Bucket=bucket, Key=key, UploadId=self.upload_id,
                                             MultipartUpload={"Parts": self.parts})
            self.upload_id = None
        except RepositoryError:
            self.abort()
            raise
        except Exception as e:
            self.abort()
            raise self.s3.error(e, f"uploading {self.key}") from None

    def abort(self) -> None:
        if self.upload_id is None:
            return
        upload_id, self.upload_id = self.upload_id, None
        # Best effort: an upload left behind (a killed backup, no AbortMultipartUpload right) is only ended by
        # S3's AbortIncompleteMultipartUpload lifecycle rule, as with boto3's own multipart uploads.
        with contextlib.suppress(Exception):
            self.s3.client.abort_multipart_upload(Bucket=self.s3.bucket, Key=self.s3._key(self.key),
                                                  UploadId=upload_id)


def s3_error(e: BaseException, what: str, store: S3Store) -> RepositoryError:
    """Translate a boto3/botocore error into a RepositoryError with what to do."""
    from boto3.exceptions import S3UploadFailedError
    from botocore.exceptions import (
        ClientError,
        ConnectTimeoutError,
        EndpointConnectionError,
        NoCredentialsError,
        PartialCredentialsError,
        ProfileNotFound,
        ReadTimeoutError,
    )

    if isinstance(e, RepositoryError):
        return e
    if isinstance(e, S3UploadFailedError) and isinstance(e.__context__, ClientError):
        e = e.__context__
    where = store.describe()
    attempts = store.cfg.max_attempts
    if isinstance(e, NoCredentialsError | PartialCredentialsError):
        return RepositoryError(f"{where}: no usable AWS credentials while {what}",
                               hint="set s3.credentials_file in the repository config, or give the user that "
                                    "runs this AWS credentials (AWS_PROFILE, ~/.aws/credentials, an instance role)")
    if isinstance(e, ProfileNotFound):
        return RepositoryError(f"{where}: {e}", hint="fix s3.profile or the credentials file")
    if isinstance(e, EndpointConnectionError | ConnectTimeoutError):
        return RepositoryError(f"{where}: cannot reach the S3 endpoint while {what} (after {attempts} attempts): {e}",
                               hint="check s3.endpoint_url / s3.region and the network")
    if isinstance(e, ReadTimeoutError):
        return RepositoryError(f"{where}: the S3 endpoint stopped answering while {what}: {e}",
                               hint="retry later; raise s3.read_timeout_s for a slow store")
    if isinstance(e, ClientError):
        code, status = error_code(e), http_status(e)
        msg = e.response.get("Error", {}).get("Message", "") or str(e)
        if code == "NoSuchBucket" or (code == "404" and "bucket" in what):
            return RepositoryError(f"{where}: the bucket {store.bucket} does not exist",
                                   hint="create it (with versioning or Object Lock, see docs/backup-scheduling.md) or fix s3.bucket")
        if code in ("NoSuchKey", "404", "NotFound"):
            return NotFound(f"{what}: no such object in {where}")
        if code in _CREDENTIAL_CODES:
            return RepositoryError(f"{where}: S3 refused the credentials ({code}) while {what}",
                                   hint="check the access key and secret in s3.credentials_file or the boto3 chain")
        if code in ("AccessDenied", "403", "AllAccessDisabled") or status == 403:
            return RepositoryError(f"{where}: access denied while {what} ({code})",
                                   hint="the credentials need s3:ListBucket, s3:GetObject and s3:PutObject on the "
                                        "bucket and prefix (prune also s3:DeleteObject)")
        if status >= 500:
            return RepositoryError(f"{where}: S3 answered {status} {code} while {what}, after {attempts} attempts",
                                   hint="the store is failing; retry later, the local copy (if configured) is kept")
        return RepositoryError(f"{where}: {code or status} while {what}: {msg}")
    if isinstance(e, OSError):
        from steps.repository.store import local_error

        return local_error(e, what)
    return RepositoryError(f"{where}: {type(e).__name__} while {what}: {e}")
