"""A base backup's tar files checked against the server's `backup_manifest`, as a stream.

PostgreSQL 15's `pg_verifybackup` cannot read tar format, so this does its job: the manifest's own
checksum is checked, then every tar is decompressed as a stream (gzip in-process; zstd and lz4 through
their command-line tools, no Python package needed) and every regular file's size and SHA-256 are compared
with the manifest. Every file the manifest lists must be found exactly once, and the tars may hold no
file the manifest does not list. The same pass can extract the files (PITR): nothing is at its name that
was not checked (each file goes into a temporary name first), and a mismatch stops the extraction with the
file named. The tars are hostile input: link members are refused, and extraction never follows a link
(`check_tars`).

`base.tar*` holds the main data directory; `<oid>.tar*` holds the tablespace with that OID, whose files
the manifest lists under `pg_tblspc/<oid>/`. base.tar has no `pg_tblspc/<oid>` symlinks: its
`tablespace_map` ("OID PATH" per line) names each tablespace's directory, and the server makes the symlinks
from it at the start of recovery. A restore extracts each `<oid>.tar*` into a directory of its own
(`tablespace_dest`) and rewrites `tablespace_map` to point at it (`format_tablespace_map`).
"""

from __future__ import annotations

import gzip
import hashlib
import json
import os
import secrets
import shutil
import subprocess
import tarfile
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager, suppress
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

from runbook.errors import RunbookError

CHUNK = 1024 * 1024
TABLESPACE_MAP = "tablespace_map"
MAXPGPATH = 1024  # the server reads tablespace_map lines into a buffer of this size
SUFFIXES = {".tar": None, ".tar.gz": "gzip", ".tar.zst": "zstd", ".tar.lz4": "lz4"}


class BaseBackupInvalid(RunbookError):
    """The tar files do not match the server's backup_manifest: the backup cannot be trusted."""

    title = "base backup"


@dataclass(frozen=True)
class FileSpec:
    path: str
    size: int
    algorithm: str
    checksum: str


@dataclass
class ServerManifest:
    """The parts of PostgreSQL's backup_manifest (version 1) that we check and record."""

    files: dict[str, FileSpec]
    wal_ranges: list[tuple[int, str, str]]  # (timeline, start LSN, end LSN)
    raw: dict[str, Any] = field(repr=False, default_factory=dict)

    @property
    def size_bytes(self) -> int:
        return sum(f.size for f in self.files.values())


def parse_server_manifest(data: bytes) -> ServerManifest:
    """Parse and check a backup_manifest: its own SHA-256 covers everything up to its last line."""
    try:
        doc = json.loads(data)
    except ValueError as e:
        raise BaseBackupInvalid(f"backup_manifest is not JSON: {e}") from None
    if doc.get("PostgreSQL-Backup-Manifest-Version") != 1:
        raise BaseBackupInvalid(f"unsupported backup_manifest version {doc.get('PostgreSQL-Backup-Manifest-Version')!r}")
    last = data.rstrip(b"\n").rfind(b"\n")
    if last < 0 or hashlib.sha256(data[: last + 1]).hexdigest() != doc.get("Manifest-Checksum"):
        raise BaseBackupInvalid("backup_manifest's own checksum does not match: the manifest was changed or cut")
    files: dict[str, FileSpec] = {}
    for f in doc.get("Files", []):
        algo = str(f.get("Checksum-Algorithm", "NONE"))
        files[f["Path"]] = FileSpec(f["Path"], int(f["Size"]), algo, str(f.get("Checksum", "")))
    ranges = [(int(r["Timeline"]), str(r["Start-LSN"]), str(r["End-LSN"])) for r in doc.get("WAL-Ranges", [])]
    if not ranges:
        raise BaseBackupInvalid("backup_manifest names no WAL range")
    return ServerManifest(files=files, wal_ranges=ranges, raw=doc)


def tar_files(directory: Path) -> list[tuple[Path, str]]:
    """The tars pg_basebackup wrote in `directory`, each with the path prefix of its files in the manifest."""
    out: list[tuple[Path, str]] = []
    for p in sorted(directory.iterdir()):
        for suffix in SUFFIXES:
            if p.name.endswith(suffix):
                stem = p.name[: -len(suffix)]
                if stem == "base":
                    out.append((p, ""))
                elif stem.isdigit():
                    out.append((p, f"pg_tblspc/{stem}/"))
                break
    if not any(prefix == "" for _, prefix in out):
        raise BaseBackupInvalid(f"no base.tar* in {directory}")
    return out


def tablespace_oids(tars: list[tuple[Path, str]]) -> list[str]:
    """The OIDs of the tablespaces whose tars are in `tars` (from their `pg_tblspc/<oid>/` prefixes)."""
    return [prefix.split("/")[1] for _, prefix in tars if prefix]


def parse_tablespace_map(data: bytes) -> dict[str, str]:
    """PostgreSQL's tablespace_map: "OID PATH" per line (the path may start with spaces); in the path a
    backslash escapes the next character (the server escapes backslash, newline and carriage return)."""
    out: dict[str, str] = {}
    line = bytearray()
    escaped = False
    for byte in data if data.endswith(b"\n") else data + b"\n":
        if not escaped and byte in (0x0A, 0x0D):
            if not line:
                continue
            oid, sep, path = bytes(line).partition(b" ")
            if not sep or not oid.isdigit() or not path:
                raise BaseBackupInvalid(f"tablespace_map: bad line {bytes(line)!r}")
            out[oid.decode()] = os.fsdecode(path)
            line.clear()
        elif not escaped and byte == 0x5C:
            escaped = True
        else:
            line.append(byte)
            escaped = False
    return out


def format_tablespace_map(entries: Mapping[str, str]) -> bytes:
    """tablespace_map for these OIDs and directories, escaped as the server writes it."""
    lines = []
    for oid in sorted(entries, key=int):
        path = os.fsencode(entries[oid])
        esc = bytearray()
        for byte in path:
            if byte in (0x0A, 0x0D, 0x5C):
                esc.append(0x5C)
            esc.append(byte)
        line = oid.encode() + b" " + bytes(esc)
        if len(line) >= MAXPGPATH - 1:
            raise RunbookError(f"the tablespace directory {entries[oid]!r} is too long for tablespace_map "
                               f"(at most about {MAXPGPATH - len(oid) - 3} bytes)")
        lines.append(line + b"\n")
    return b"".join(lines)


def tablespace_names(heap: bytes) -> dict[str, set[str]]:
    """Name -> OIDs of the rows of pg_tablespace (`global/1213`, the heap file as it is in the backup) that
    look live: a normal line pointer, an inserting transaction not known to have aborted, no deleting
    transaction (or one known to have aborted, or a lock only). Hint bits may be missing in a backup, so a
    row deleted or renamed lately can still look live: a name that maps to several OIDs is ambiguous and
    the caller asks for the OID instead."""
    import struct

    page_size = 8192
    out: dict[str, set[str]] = {}
    for start in range(0, len(heap) - page_size + 1, page_size):
        page = heap[start:start + page_size]
        lower, upper = struct.unpack_from("<HH", page, 12)
        if lower < 24 or upper > page_size or lower > upper:
            continue  # a new (all-zero) or unreadable page
        for off in range(24, lower, 4):
            (lp,) = struct.unpack_from("<I", page, off)
            lp_off, lp_flags, lp_len = lp & 0x7FFF, (lp >> 15) & 3, lp >> 17
            if lp_flags != 1 or lp_off + lp_len > page_size or lp_len < 23 + 68:
                continue  # unused, redirect or dead
            xmin, xmax = struct.unpack_from("<II", page, lp_off)
            (infomask,) = struct.unpack_from("<H", page, lp_off + 20)
            hoff = page[lp_off + 22]
            if infomask & 0x0300 == 0x0200:  # HEAP_XMIN_INVALID without COMMITTED: inserted by an abort
                continue
            if xmax != 0 and not infomask & 0x0800 and not infomask & 0x0080:  # XMAX_INVALID, XMAX_LOCK_ONLY
                continue
            if hoff + 68 > lp_len:
                continue
            (oid,) = struct.unpack_from("<I", page, lp_off + hoff)
            raw = page[lp_off + hoff + 4: lp_off + hoff + 68]
            name = raw.split(b"\0", 1)[0].decode("utf-8", errors="replace")
            out.setdefault(name, set()).add(str(oid))
    return out


def _method(path: Path) -> str | None:
    for suffix, method in SUFFIXES.items():
        if path.name.endswith(suffix):
            return method
    raise BaseBackupInvalid(f"{path.name}: not a tar file pg_basebackup writes")


@contextmanager
def open_stream(path: Path) -> Iterator[IO[bytes]]:
    """The decompressed bytes of a (compressed) tar, as a stream."""
    method = _method(path)
    if method is None:
        with open(path, "rb") as f:
            yield f
        return
    if method == "gzip":
        with gzip.open(path, "rb") as g:
            yield g  # type: ignore[misc]
        return
    exe = shutil.which(method)
    if exe is None:
        raise RunbookError(f"{path.name} needs the `{method}` tool to decompress", hint=f"apt-get install {method}")
    proc = subprocess.Popen([exe, "-dc", "--", str(path)], stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    assert proc.stdout is not None
    try:
        yield proc.stdout
    finally:
        proc.stdout.close()  # a reader that stopped early (the tar's end) makes the tool end by SIGPIPE
        if proc.poll() is None:
            proc.kill()
        _, err = proc.communicate()
    if proc.returncode not in (0, -9, -13):
        raise BaseBackupInvalid(f"{path.name}: {method} -d failed: {err.decode(errors='replace').strip()}")


@dataclass
class TarCheck:
    files: int = 0
    size: int = 0
    tars: int = 0
    captured: dict[str, bytes] = field(default_factory=dict)  # small files asked for by name


def _norm(name: str) -> str:
    while name.startswith("./"):
        name = name[2:]
    return name.rstrip("/")


def check_tars(
    tars: list[tuple[Path, str]], manifest: ServerManifest, *, dest: Path | None = None,
    progress: Callable[[int], None] | None = None, skip: Callable[[str], bool] | None = None,
    capture: tuple[str, ...] = ("backup_label", "global/pg_control"),
    tablespace_dest: Mapping[str, Path] | None = None,
) -> TarCheck:
    """Stream every tar, compare each file with the manifest; with `dest`, extract as it goes.

    `skip(path)`: files not to extract (still checked); `capture`: files whose bytes are kept in the
    result; `tablespace_dest`: OID -> the directory its tar is extracted into (else `dest/pg_tblspc/<oid>`).
    Raises BaseBackupInvalid on any mismatch.

    The tars are data, never places: every member name is a plain relative path (steps.fs.check_relative);
    symlink and hardlink members are refused (pg_basebackup writes none: with tablespace_map, pg_tblspc's
    links are left out, and pg_wal is sent as a directory), so are devices and fifos. Extraction goes through
    a descriptor on each destination directory (`dest`, a tablespace's directory: a symlink there is refused),
    every directory on the way opened with O_NOFOLLOW and given its mode by fchmod; a file is written into a
    new temporary name beside it (O_EXCL, O_NOFOLLOW, 0600), and renamed to its name only once its size and
    SHA-256 match the manifest (a name that exists already is refused, it is not replaced).
    """
    seen: set[str] = set()
    result = TarCheck()
    result.captured = {name: b"" for name in capture}
    for path, prefix in tars:
        result.tars += 1
        oid = prefix.split("/")[1] if prefix else ""
        root_fd: int | None = None
        try:
            if dest is not None:
                root_fd = _open_root(dest, prefix, oid, tablespace_dest)
            with open_stream(path) as stream:
                try:
                    with tarfile.open(fileobj=stream, mode="r|") as tf:
                        for member in tf:
                            _member(tf, member, path, prefix, root_fd, manifest, seen, result, progress, skip)
                except (tarfile.TarError, EOFError, OSError) as e:
                    raise BaseBackupInvalid(f"{path.name} is cut short or damaged: {e}") from None
        finally:
            if root_fd is not None:
                os.close(root_fd)
    missing = sorted(set(manifest.files) - seen)
    if missing:
        more = f" and {len(missing) - 5} more" if len(missing) > 5 else ""
        raise BaseBackupInvalid(f"{len(missing)} files of the backup_manifest are not in the tars: "
                                f"{', '.join(missing[:5])}{more}")
    return result


def _open_root(dest: Path, prefix: str, oid: str, tablespace_dest: Mapping[str, Path] | None) -> int:
    """A descriptor on the directory a tar is extracted into (never through a link)."""
    from steps.fs import UnsafePath, open_real_dir, open_subdir

    try:
        if not prefix:
            return open_real_dir(dest, "data directory")
        if tablespace_dest is not None and oid in tablespace_dest:
            return open_real_dir(tablespace_dest[oid], f"directory of tablespace {oid}")
        fd = open_real_dir(dest, "data directory")
        try:
            return open_subdir(fd, prefix.rstrip("/"), create=True)
        finally:
            os.close(fd)
    except UnsafePath as e:
        raise BaseBackupInvalid(e.message) from None


def _member(tf: tarfile.TarFile, m: tarfile.TarInfo, tar: Path, prefix: str, root_fd: int | None,
            manifest: ServerManifest, seen: set[str], result: TarCheck, progress: Callable[[int], None] | None,
            skip: Callable[[str], bool] | None) -> None:
    from steps.fs import UnsafePath, check_relative

    rel = _norm(m.name)
    try:
        check_relative(rel, f"{tar.name}: member name")
    except UnsafePath as e:
        raise BaseBackupInvalid(f"unsafe member name {m.name!r}: {e.message}") from None
    if m.issym() or m.islnk():
        kind = "symlink" if m.issym() else "hardlink"
        raise BaseBackupInvalid(f"{tar.name}: member {rel!r} is a {kind} (to {m.linkname!r}): a base backup "
                                "holds no links (the only ones a restore makes are its tablespaces', from "
                                "tablespace_map); refusing it")
    if m.isdir():
        if root_fd is not None:
            _make_dir(root_fd, rel, tar)
        return
    if not m.isfile():
        raise BaseBackupInvalid(f"{tar.name}: unexpected member type for {m.name!r}")
    key = prefix + rel
    spec = manifest.files.get(key)
    if spec is None:
        raise BaseBackupInvalid(f"{tar.name}: {key} is not in the backup_manifest")
    if key in seen:
        raise BaseBackupInvalid(f"{tar.name}: {key} appears twice")
    seen.add(key)
    src = tf.extractfile(m)
    assert src is not None
    h = hashlib.sha256()
    n = 0
    keep = key in result.captured
    out = None
    if root_fd is not None and not (skip and skip(key)):
        out = _NewFile(root_fd, rel, tar)
    try:
        while chunk := src.read(CHUNK):
            h.update(chunk)
            n += len(chunk)
            if out is not None:
                out.write(chunk)
            if keep:
                result.captured[key] += chunk
            if progress:
                progress(len(chunk))
        if n != spec.size:
            raise BaseBackupInvalid(f"{key}: {n} bytes in {tar.name}, the backup_manifest says {spec.size}")
        if spec.algorithm == "SHA256" and h.hexdigest() != spec.checksum:
            raise BaseBackupInvalid(f"{key}: SHA-256 in {tar.name} differs from the backup_manifest's")
        if spec.algorithm not in ("SHA256", "NONE"):
            raise BaseBackupInvalid(f"{key}: the backup_manifest uses {spec.algorithm}; take it with "
                                    "--manifest-checksums=SHA256")
        if out is not None:
            out.publish()
    finally:
        if out is not None:
            out.discard()
    result.files += 1
    result.size += n


def _make_dir(root_fd: int, rel: str, tar: Path) -> None:
    """The directory `rel` beneath root_fd, made 0700 (its parents too), every component a real directory;
    its mode set on its descriptor, so that a link is never chmodded through."""
    from steps.fs import UnsafePath, open_subdir, set_owner_mode

    try:
        fd = open_subdir(root_fd, rel, create=True, what=f"{tar.name}: directory")
    except UnsafePath as e:
        raise BaseBackupInvalid(f"{tar.name}: {e.message}") from None
    try:
        set_owner_mode(fd, mode=0o700)
    finally:
        os.close(fd)


class _NewFile:
    """A member being extracted: written into a temporary name beside its own (O_EXCL, O_NOFOLLOW, 0600),
    renamed to its name by `publish` once checked; `discard` removes what was not published."""

    def __init__(self, root_fd: int, rel: str, tar: Path) -> None:
        from steps.fs import UnsafePath, exists_beneath, open_beneath, open_subdir

        *dirs, self.leaf = rel.split("/")
        self.rel = rel
        self.tar = tar
        self.tmp = f".{self.leaf}.runbook-{os.getpid()}-{secrets.token_hex(4)}.tmp"
        self.fd: int | None = None
        self.dir_fd = -1
        try:
            self.dir_fd = (open_subdir(root_fd, "/".join(dirs), create=True, what=f"{tar.name}: directory")
                           if dirs else os.dup(root_fd))
            if exists_beneath(self.dir_fd, self.leaf):
                raise UnsafePath(f"{rel} exists already (or is a link): refusing to write over it")
            self.fd = open_beneath(self.dir_fd, self.tmp, mode=0o600, what=f"{tar.name}: member")
        except UnsafePath as e:
            self.discard()
            raise BaseBackupInvalid(f"{tar.name}: {e.message}") from None

    def write(self, data: bytes) -> None:
        assert self.fd is not None
        view = memoryview(data)
        while view:
            view = view[os.write(self.fd, view):]

    def publish(self) -> None:
        from steps.fs import exists_beneath, rename_in

        assert self.fd is not None
        os.close(self.fd)
        self.fd = None
        if exists_beneath(self.dir_fd, self.leaf):  # made meanwhile (the directory is ours: only by a bug)
            raise BaseBackupInvalid(f"{self.tar.name}: {self.rel} appeared while it was extracted")
        rename_in(self.dir_fd, self.tmp, self.leaf)
        self.tmp = ""

    def discard(self) -> None:
        if self.fd is not None:
            os.close(self.fd)
            self.fd = None
        if self.dir_fd >= 0:
            if self.tmp:
                with suppress(FileNotFoundError):
                    os.unlink(self.tmp, dir_fd=self.dir_fd)
            os.close(self.dir_fd)
            self.dir_fd = -1


def read_member(tar: Path, name: str) -> bytes | None:
    """One small file from a tar (e.g. backup_label), or None."""
    with open_stream(tar) as stream, tarfile.open(fileobj=stream, mode="r|") as tf:
        for m in tf:
            if _norm(m.name) == name and m.isfile():
                f = tf.extractfile(m)
                return f.read() if f else None
    return None
