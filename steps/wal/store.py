"""The WAL archive in each repository: read, write-once, list, with the repository rules of steps.repository.store.

WAL objects are small (a 16 MB segment is ~1 MB compressed) and written once per segment by a process that
PostgreSQL starts for each one, so this is a lean path of its own rather than the backup's `Store`:
- `get` returns the object's bytes, or None **only** when the repository says it does not exist; every other
  failure is a `RepositoryError` (wal-fetch turns "does not exist" into exit 1 and anything else into 126+);
- `put_new` never replaces an object. Locally: a temporary file, fsync, `link(2)` to the final name (which
  fails if the name exists, where rename would replace it), fsync of the directory. On S3: `PutObject` with
  `IfNoneMatch: *` (answered 412 when the key exists; dropped for a store that answers 501), after a look
  (the caller's `get`) and followed by a re-read (the caller's verification), because some S3-compatible
  stores accept conditional writes and ignore them.
- boto3 is imported only when S3 is configured, and `steps.repository.s3` (pydantic) only to word an error.
"""

from __future__ import annotations

import contextlib
import os
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from steps.repository.layout import ENCRYPTED_SUFFIX
from steps.repository.s3common import NOT_FOUND, ConditionalWrites, error_code, new_client
from steps.repository.store import MARKER, ObjectExists, RepositoryError, local_error, marker_bytes


@dataclass(frozen=True)
class Listed:
    key: str
    size: int
    mtime: float  # when the object was written (seconds since the epoch)


class WalStore(Protocol):
    name: str
    verify_after_write: bool  # read the object back after writing it (a store that may ignore IfNoneMatch)
    encrypt: bool  # the config marks it `encrypt: true`: wal-push stores `<key>.age` (steps.wal.crypt)

    def describe(self) -> str: ...

    def get(self, key: str) -> bytes | None: ...

    def get_meta(self, key: str) -> tuple[bytes, dict[str, str]] | None: ...

    def put_new(self, key: str, blob: bytes, meta: dict[str, Any]) -> None: ...

    def stat(self, key: str) -> Listed | None: ...

    def list(self, prefix: str) -> list[Listed]: ...

    def has_marker(self) -> bool: ...

    def ensure_marker(self) -> None: ...

    def list_some(self, prefix: str) -> bool: ...

    def put_claim(self, prefix: str, sha256: str) -> None: ...

    def claims(self, prefix: str) -> set[str]: ...


def keys_to_try(store: WalStore, key: str) -> list[str]:
    """Where a file may be in one repository, in the order looked: `<name>.zst.age` first where the config marks
    the repository `encrypt: true`, else `<name>.zst` first. A repository may hold both forms (encryption
    turned on, or off, mid-life): a name is found in one GET in the form its repository is configured for, in
    two in the other; "missing" costs both."""
    enc = key + ENCRYPTED_SUFFIX
    return [enc, key] if store.encrypt else [key, enc]


def stat_archived(store: WalStore, key: str) -> Listed | None:
    """The archived file at `key` in either form (`keys_to_try`), or None."""
    for k in keys_to_try(store, key):
        found = store.stat(k)
        if found is not None:
            return found
    return None


def proves_absence(store: WalStore, wal_dir: str) -> bool:
    """May `store`'s "no such object" be believed (`wal-fetch` exit 1)? Only from the repository itself: its
    marker (MARKER) is at the root, or (a repository archived into before markers existed, which `wal-fetch`
    never writes into) the cluster's `wal_dir` holds archived files. A missing root, an empty mount point or a
    wrong path or prefix has neither: its silence is not an answer. One stat (S3: one request) per "missing"
    answer, none when the file is found. RepositoryError when the store cannot be asked."""
    return store.has_marker() or bool(store.list_some(wal_dir))


class LocalWal:
    """The WAL archive in a local repository directory (directories 0750, files 0640)."""

    name = "local"
    verify_after_write = False  # link(2) cannot replace a file: what is there is the fsynced file we wrote

    def __init__(self, root: Path, encrypt: bool = False) -> None:
        self.root = root
        self.encrypt = encrypt

    def describe(self) -> str:
        return f"local repository {self.root}"

    def _path(self, key: str) -> Path:
        return self.root / key

    def get(self, key: str) -> bytes | None:
        path = self._path(key)
        try:
            with open(path, "rb") as f:
                return f.read()
        except (FileNotFoundError, NotADirectoryError):
            return None  # also a repository never written to: it holds nothing (a new host restoring from S3)
        except OSError as e:
            raise local_error(e, f"reading {path}") from None

    def get_meta(self, key: str) -> tuple[bytes, dict[str, str]] | None:
        """`get`, with the object's metadata: none in a local directory."""
        data = self.get(key)
        return None if data is None else (data, {})

    def _mkdirs(self, d: Path) -> None:
        """Create missing directories, each made durable in its parent."""
        missing: list[Path] = []
        p = d
        while not p.exists():
            missing.append(p)
            p = p.parent
        for q in reversed(missing):
            with contextlib.suppress(FileExistsError):
                q.mkdir(mode=0o750)
            _fsync_dir(q.parent)

    def put_new(self, key: str, blob: bytes, meta: dict[str, Any]) -> None:
        path = self._path(key)
        tmp = path.parent / f".tmp-{path.name}-{os.getpid()}-{threading.get_ident()}"
        try:
            self._mkdirs(path.parent)
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o640)
            try:
                view = memoryview(blob)
                while view:
                    n = os.write(fd, view)
                    view = view[n:]
                os.fsync(fd)
            finally:
                os.close(fd)
            try:
                os.link(tmp, path)
            except FileExistsError:
                raise ObjectExists(f"{key} already exists in {self.describe()}") from None
            _fsync_dir(path.parent)
        except OSError as e:
            raise local_error(e, f"writing {path}") from None
        finally:
            with contextlib.suppress(OSError):
                os.unlink(tmp)

    def stat(self, key: str) -> Listed | None:
        try:
            st = self._path(key).stat()
        except FileNotFoundError:
            return None
        except OSError as e:
            raise local_error(e, f"reading {self._path(key)}") from None
        return Listed(key, st.st_size, st.st_mtime)

    def has_marker(self) -> bool:
        try:
            os.stat(self.root / MARKER)
        except (FileNotFoundError, NotADirectoryError):
            return False
        except OSError as e:
            raise local_error(e, f"looking for {self.root / MARKER}") from None
        return True

    def ensure_marker(self) -> None:
        """One stat per push; the first push into a new (or pre-marker) repository writes the marker."""
        if self.has_marker():
            return
        path = self.root / MARKER
        try:
            self._mkdirs(self.root)
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o640)
        except FileExistsError:
            return
        except OSError as e:
            raise local_error(e, f"writing {path}") from None
        try:
            os.write(fd, marker_bytes())
            os.fsync(fd)
        finally:
            os.close(fd)
        _fsync_dir(self.root)

    def put_claim(self, prefix: str, sha256: str) -> None:
        """Nothing for an unencrypted archive: link(2) cannot replace a file, so it never holds two contents of
        one name, and a retry reads what is there. An encrypted one is written first (steps.wal.archive
        .push_encrypted): the pusher, who holds no key to read an encrypted copy, tells from it whether the
        copy already there is of this content."""
        if not self.encrypt:
            return
        path = self._path(prefix + sha256)
        try:
            self._mkdirs(path.parent)
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_NOFOLLOW, 0o640)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
            _fsync_dir(path.parent)
        except OSError as e:
            raise local_error(e, f"writing {path}") from None

    def claims(self, prefix: str) -> set[str]:
        if not self.encrypt:
            return set()
        try:
            return {e.name for e in os.scandir(self._path(prefix)) if not e.name.startswith(".")}
        except (FileNotFoundError, NotADirectoryError):
            return set()
        except OSError as e:
            raise local_error(e, f"listing {self._path(prefix)}") from None

    def list_some(self, prefix: str) -> bool:
        """Does `prefix` (a directory) hold any archived file?"""
        try:
            with os.scandir(self._path(prefix)) as it:
                return any(not e.name.startswith(".") for e in it)
        except (FileNotFoundError, NotADirectoryError):
            return False
        except OSError as e:
            raise local_error(e, f"listing {self._path(prefix)}") from None

    def list(self, prefix: str) -> list[Listed]:
        base = self._path(prefix)
        out: list[Listed] = []
        try:
            with os.scandir(base) as it:
                for e in it:
                    if e.name.startswith(".") or not e.is_file(follow_symlinks=False):
                        continue
                    st = e.stat(follow_symlinks=False)
                    out.append(Listed(prefix + e.name, st.st_size, st.st_mtime))
        except FileNotFoundError:
            return []
        except OSError as e:
            raise local_error(e, f"listing {base}") from None
        return sorted(out, key=lambda x: x.key)


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


@dataclass(frozen=True)
class _S3Limits:
    max_attempts: int


class S3Wal:
    """The WAL archive under the S3 repository's prefix."""

    name = "s3"
    verify_after_write = True

    def __init__(self, s3: dict[str, Any], encrypt: bool = False) -> None:
        self.encrypt = encrypt
        self.bucket: str = s3["bucket"]
        p = str(s3.get("prefix") or "").strip("/")
        self.prefix = f"{p}/" if p else ""
        self.endpoint_url: str | None = s3.get("endpoint_url")
        self.cfg = _S3Limits(int(s3.get("max_attempts") or 5))
        self.sse: dict[str, str] = {}
        if s3.get("sse"):
            self.sse["ServerSideEncryption"] = str(s3["sse"])
            if s3.get("sse_kms_key_id"):
                self.sse["SSEKMSKeyId"] = str(s3["sse_kms_key_id"])
        self.client: Any = new_client(
            credentials_file=Path(s3["credentials_file"]) if s3.get("credentials_file") else None,
            who="the server's user (archive_command and restore_command run as that user)",
            profile=s3.get("profile"), region=s3.get("region"), endpoint_url=self.endpoint_url,
            max_attempts=self.cfg.max_attempts, connect_timeout=float(s3.get("connect_timeout_s") or 10),
            read_timeout=float(s3.get("read_timeout_s") or 60), max_pool=32)
        self.conditional = ConditionalWrites()

    def describe(self) -> str:
        where = f"s3://{self.bucket}/{self.prefix}"
        return f"S3 repository {where}" + (f" at {self.endpoint_url}" if self.endpoint_url else "")

    def _error(self, e: BaseException, what: str) -> RepositoryError:
        from steps.repository.s3 import s3_error  # only on the error path: it loads the config schema

        return s3_error(e, what, self)  # type: ignore[arg-type]  # duck-typed: describe, bucket, cfg

    def get(self, key: str) -> bytes | None:
        got = self.get_meta(key)
        return None if got is None else got[0]

    def get_meta(self, key: str) -> tuple[bytes, dict[str, str]] | None:
        """`get`, with the object's user metadata (`x-amz-meta-*`: sha256, size, epoch), which the same response
        carries."""
        from botocore.exceptions import ClientError

        try:
            resp = self.client.get_object(Bucket=self.bucket, Key=self.prefix + key)
            return bytes(resp["Body"].read()), dict(resp.get("Metadata") or {})
        except ClientError as e:
            if error_code(e) in NOT_FOUND:
                return None  # NoSuchBucket is not "no such segment": it is an error
            raise self._error(e, f"reading {key}") from None
        except Exception as e:
            raise self._error(e, f"reading {key}") from None

    def put_new(self, key: str, blob: bytes, meta: dict[str, Any]) -> None:
        args: dict[str, Any] = {"Bucket": self.bucket, "Key": self.prefix + key, "Body": blob, **self.sse}
        if meta:
            args["Metadata"] = {"sha256": str(meta["sha256"]), "size": str(meta["size"]),
                                "system-identifier": str(meta["system_identifier"])}
            if meta.get("epoch"):  # encrypted: the epoch whose data key opens it (steps.wal.crypt)
                args["Metadata"]["epoch"] = str(meta["epoch"])
        try:
            written = self.conditional.put_if_absent(self.client, args)
        except Exception as e:
            raise self._error(e, f"writing {key}") from None
        if not written:
            raise ObjectExists(f"{key} already exists in {self.describe()}")

    def stat(self, key: str) -> Listed | None:
        from botocore.exceptions import ClientError

        try:
            resp = self.client.head_object(Bucket=self.bucket, Key=self.prefix + key)
        except ClientError as e:
            if error_code(e) in NOT_FOUND:
                return None
            raise self._error(e, f"looking for {key}") from None
        except Exception as e:
            raise self._error(e, f"looking for {key}") from None
        return Listed(key, int(resp.get("ContentLength", 0)), resp["LastModified"].timestamp())

    def has_marker(self) -> bool:
        return self.stat(MARKER) is not None

    def ensure_marker(self) -> None:
        """Written once; then remembered in the pushing user's cache (a HEAD per segment would cost a request
        on every push: the marker is only ever created, so knowing it was there is safe to keep)."""
        seen = _marker_seen_path(self.describe())
        if seen is not None and seen.exists():
            return
        if not self.has_marker():
            with contextlib.suppress(ObjectExists):
                self.put_new(MARKER, marker_bytes(), {})
        if seen is not None:
            with contextlib.suppress(OSError):
                seen.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
                seen.touch(mode=0o600)

    def put_claim(self, prefix: str, sha256: str) -> None:
        """Record that a pusher stored this content under this name (an empty object named by its sha256:
        content-addressed, so no other content can replace it, conditional writes or not)."""
        try:
            self.client.put_object(Bucket=self.bucket, Key=self.prefix + prefix + sha256, Body=b"", **self.sse)
        except Exception as e:
            raise self._error(e, f"writing {prefix}{sha256}") from None

    def claims(self, prefix: str) -> set[str]:
        """The sha256 of every content pushed under one name (its claims)."""
        return {x.key.rsplit("/", 1)[-1] for x in self.list(prefix)}

    def list_some(self, prefix: str) -> bool:
        try:
            resp = self.client.list_objects_v2(Bucket=self.bucket, Prefix=self.prefix + prefix, MaxKeys=1)
        except Exception as e:
            raise self._error(e, f"listing {prefix}") from None
        return bool(resp.get("Contents"))

    def list(self, prefix: str) -> list[Listed]:
        out: list[Listed] = []
        try:
            for page in self.client.get_paginator("list_objects_v2").paginate(Bucket=self.bucket,
                                                                               Prefix=self.prefix + prefix):
                for obj in page.get("Contents", []):
                    out.append(Listed(obj["Key"][len(self.prefix):], int(obj["Size"]), obj["LastModified"].timestamp()))
        except Exception as e:
            raise self._error(e, f"listing {prefix}") from None
        return sorted(out, key=lambda x: x.key)


def _marker_seen_path(where: str) -> Path | None:
    import hashlib

    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    if not base:
        return None
    return Path(base) / "runbook" / f"marker-{hashlib.sha256(where.encode()).hexdigest()[:20]}"


def open_wal_stores(local_path: Path | None, s3: dict[str, Any] | None, source: str = "any",
                    encrypt: dict[str, bool] | None = None) -> list[WalStore]:
    """The configured repositories, local first (the fastest to read, the first written); with `source`
    ("local" or "s3") only that one, and boto3 is not even loaded for a local one. `encrypt`: which of them
    the config marks `encrypt: true` (WalSettings.encrypt)."""
    stores: list[WalStore] = []
    enc = encrypt or {}
    if local_path is not None and source in ("any", "local"):
        stores.append(LocalWal(local_path, enc.get("local", False)))
    if s3 is not None and source in ("any", "s3"):
        stores.append(S3Wal(s3, enc.get("s3", False)))
    if not stores:
        if source != "any":
            raise RepositoryError(f"no {source} repository is configured",
                                  hint=f"add {source}: to the repository config, or read from the other one")
        raise RepositoryError("no repository is configured", hint="add local: or s3: to the repository config")
    return stores
