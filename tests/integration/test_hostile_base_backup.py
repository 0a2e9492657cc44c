"""A base backup in the repository is hostile input: forged tars (a `pg_wal` link, a link then a regular
member of its name, a link then a directory member of its name), a data directory that is a link, a link
planted at the server log's name, a fetch directory or scratch root another user owns. Each is refused by
`pitr` and `verify-backup --kind base`, run as the engine and an operator run them, and no file outside the
directory restored into is created, changed, chmodded or deleted: a victim's content, mode, owner and mtime
are compared before and after.

One real base backup is taken per module (a primary with 1 MB segments, archiving through `runbook
wal-push`); each test forges a copy of its repository. The forged tar is recompressed and the manifest's
sha256 and size rewritten to match (and the `readable` record moved to the new manifest), so that the
forgery passes the fetch's checks and reaches the extraction: the tar itself is what is under test.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import pwd
import shutil
import subprocess
import tarfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.conftest import run_cli
from tests.support.pgcluster import chown_server_user
from tests.support.pitr_cluster import (  # noqa: F401 - fixtures
    Primary,
    basebackup,
    make_primary,
    next_dir,
    pitr,
    pitr_template_fixture,
    server_runbook_fixture,
    write_rows,
)
from tests.support.signing import sign_file
from tests.support.victims import snapshot

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="the attacks are on what root does as root")

Member = tuple[tarfile.TarInfo, bytes | None]


@dataclass
class Source:
    primary: Primary
    base: Path  # a directory of this module, owned by root, 0755


@pytest.fixture(scope="module")
def source(pg_base: Path, pitr_template: Path, server_runbook: str) -> Iterator[Source]:  # noqa: F811
    dest = next_dir(pg_base)
    p = make_primary(pitr_template, dest, venv_runbook=server_runbook)
    try:
        write_rows(p, 5, "row")
        basebackup(p)
        p.switch_wal()
        base = pg_base / f"{dest.name}-hostile"
        base.mkdir(mode=0o755)
        yield Source(p, base)
    finally:
        p.stop_restored()
        p.crash()


_count = [0]


@dataclass
class Forged:
    config: Path
    repo: Path
    work: Path  # root's, 0755: victims, fetch and scratch roots go here
    restore: Path  # the server user's: restored data directories go here (their sockets too)


def forge(src: Source, change: Callable[[list[Member]], list[Member]] | None = None,
          manifest_change: Callable[[dict[str, object]], None] | None = None) -> Forged:
    """A copy of the module's repository whose base.tar.zst holds `change(members)`, with manifest.json's size
    and sha256 of it rewritten (and `manifest_change` applied to it; its `readable` record is moved to the new
    manifest)."""
    _count[0] += 1
    work = src.base / f"case{_count[0]}"
    work.mkdir(mode=0o755)
    repo = work / "repo"
    shutil.copytree(src.primary.repo, repo, symlinks=True)
    chown_server_user(repo)  # as the primary's: the restored server's wal-fetch reads it
    restore = work / "restore"
    restore.mkdir()
    chown_server_user(restore)
    config = work / "repository.yaml"
    config.write_text(src.primary.config.read_text().replace(str(src.primary.repo), str(repo))
                      .replace(str(src.primary.config.parent / "state"), str(work / "state")))
    os.chmod(config, 0o644)
    (bdir,) = (repo / "clusters" / src.primary.sysid / "base").iterdir()
    old = (bdir / "manifest.json").read_bytes()
    manifest = json.loads(old)
    if change is not None:
        tar_path = bdir / "base.tar.zst"
        raw = subprocess.run(["zstd", "-dc", str(tar_path)], capture_output=True, check=True).stdout
        members: list[Member] = []
        with tarfile.open(fileobj=io.BytesIO(raw), mode="r:") as tf:
            for m in tf:
                f = tf.extractfile(m) if m.isfile() else None
                members.append((m, f.read() if f else None))
        buf = io.BytesIO()
        with tarfile.open(fileobj=buf, mode="w", format=tarfile.GNU_FORMAT) as tf:
            for m, data in change(members):
                tf.addfile(m, io.BytesIO(data) if data is not None else None)
        packed = subprocess.run(["zstd", "-q", "-c"], input=buf.getvalue(), capture_output=True, check=True).stdout
        tar_path.write_bytes(packed)
        for o in manifest["objects"]:
            if o["path"] == "base.tar.zst":
                o["size"], o["sha256"] = len(packed), hashlib.sha256(packed).hexdigest()
    if manifest_change is not None:
        manifest_change(manifest)
    if change is not None or manifest_change is not None:
        new = json.dumps(manifest, indent=2).encode()
        (bdir / "manifest.json").write_bytes(new)
        for rec in (bdir / "verifications").glob("*.json"):
            rec.write_text(rec.read_text().replace(hashlib.sha256(old).hexdigest(), hashlib.sha256(new).hexdigest()))
        # Signed again with the trusted key, as a compromised backup host would: what these forgeries attack lies
        # behind the signature (tests/integration/test_signing.py shows that without it they are refused).
        for path in [bdir / "manifest.json", *(bdir / "verifications").glob("*.json")]:
            sign_file(repo, path.relative_to(repo).as_posix())
    return Forged(config, repo, work, restore)


def link(name: str, target: str) -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.type = tarfile.SYMTYPE
    info.linkname = target
    return info


def directory(name: str) -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.type = tarfile.DIRTYPE
    info.mode = 0o700
    return info


def victim_dir(f: Forged) -> Path:
    """A directory that looks like WAL, owned by root, 0755, which no restore may touch."""
    v = f.work / "victim"
    v.mkdir(mode=0o755)
    os.chmod(v, 0o755)
    (v / "000000010000000000000001").write_bytes(b"\x01" * 4096)
    (v / "archive_status").mkdir()
    (v / "notes").write_text("precious\n")
    os.chmod(v / "notes", 0o640)
    return v


def run_pitr(src: Source, f: Forged, pgdata: Path, **kw: object) -> subprocess.CompletedProcess[str]:
    args: dict[str, object] = {"config": str(f.config), "pgdata": str(pgdata), "socket_dir": str(pgdata.parent),
                               "port": 5432, "target_kind": "latest", "fetch_dir": str(f.work),
                               "runbook_exe": src.primary.runbook_exe, **kw}
    src.primary.restored.append(pgdata)
    return pitr(args)


def forged_against_a_victim(src: Source, plant: Callable[[Path, list[Member]], list[Member]]) -> tuple[Forged, Path]:
    """A forged copy of the repository whose base tar's members are `plant(victim, members)`, and the victim: a
    directory (victim_dir) the planted members aim at."""
    victim = victim_dir(forge(src))
    return forge(src, lambda members: plant(victim, members)), victim


def pg_wal_linked_to(victim: Path, members: list[Member]) -> list[Member]:
    """The base tar's pg_wal replaced by a symbolic link to `victim`."""
    kept = [(m, d) for m, d in members if not m.name.rstrip("/").startswith("pg_wal")]
    return [(link("pg_wal", str(victim)), None), *kept]


def verify_base(f: Forged, scratch: Path) -> subprocess.CompletedProcess[str]:
    return run_cli("verify-backup", "-c", str(f.config), "--kind", "base", "--scratch-dir", str(scratch),
                   timeout=180)


def test_a_pg_wal_link_in_the_base_tar_is_refused_and_what_it_points_at_is_never_emptied(source: Source) -> None:
    f, victim = forged_against_a_victim(source, pg_wal_linked_to)
    before = snapshot(victim)
    pgdata = f.restore / "data"
    r = run_pitr(source, f, pgdata)
    assert snapshot(victim) == before, r.stdout + r.stderr
    assert r.returncode == 1, r.stdout + r.stderr
    assert "'pg_wal' is a symlink" in r.stdout + r.stderr and "Traceback" not in r.stderr
    assert not os.path.islink(pgdata / "pg_wal")


def test_a_routine_verify_of_a_base_tar_with_a_pg_wal_link_empties_nothing(source: Source) -> None:
    f, victim = forged_against_a_victim(source, pg_wal_linked_to)
    before = snapshot(victim)
    r = verify_base(f, f.work / "scratch")
    assert snapshot(victim) == before, r.stdout + r.stderr
    assert r.returncode == 2, r.stdout + r.stderr
    assert "'pg_wal' is a symlink" in r.stdout and "Traceback" not in r.stderr
    assert list((f.work / "scratch").iterdir()) == []


def test_a_link_then_a_regular_member_of_its_name_cannot_write_through(source: Source) -> None:
    def plant(victim: Path, members: list[Member]) -> list[Member]:
        return [(link("PG_VERSION", str(victim / "notes")), None), *members]  # PG_VERSION follows, as checked

    f, victim = forged_against_a_victim(source, plant)
    before = snapshot(victim)
    r = run_pitr(source, f, f.restore / "data")
    assert snapshot(victim) == before and (victim / "notes").read_text() == "precious\n"
    assert r.returncode == 1, r.stdout + r.stderr
    assert "'PG_VERSION' is a symlink" in r.stdout + r.stderr and "Traceback" not in r.stderr


def test_a_directory_member_through_a_link_never_chmods_its_target(source: Source) -> None:
    def plant(victim: Path, members: list[Member]) -> list[Member]:
        return [(link("global", str(victim)), None), (directory("global"), None),
                *[(m, d) for m, d in members if m.name.rstrip("/") != "global"]]

    f, victim = forged_against_a_victim(source, plant)
    before = snapshot(victim)
    r = run_pitr(source, f, f.restore / "data")
    assert snapshot(victim) == before  # still 0755: not chmodded 0700
    assert r.returncode == 1, r.stdout + r.stderr
    assert "symlink" in r.stdout + r.stderr and "Traceback" not in r.stderr


def test_a_data_directory_that_is_a_link_is_refused_and_its_target_never_chowned(source: Source) -> None:
    f = forge(source)
    victim = f.work / "root-owned-empty"
    victim.mkdir(mode=0o755)
    os.chmod(victim, 0o755)
    pgdata = f.restore / "data"
    os.symlink(victim, pgdata)
    before = snapshot(victim)
    r = run_pitr(source, f, pgdata)
    assert snapshot(victim) == before and victim.stat().st_uid == 0
    assert r.returncode == 1, r.stdout + r.stderr
    assert f"{pgdata} is a symlink" in r.stdout + r.stderr and "Traceback" not in r.stderr


def test_a_link_planted_at_the_server_log_is_never_followed(source: Source) -> None:
    f = forge(source)
    victim = f.work / "victim-file"
    victim.write_text("root's\n")
    os.chmod(victim, 0o600)
    pgdata = f.restore / "data"
    os.symlink(victim, f.restore / "data.recovery.log")  # planted by the user who owns the parent
    before = snapshot(f.work / "victim-file")
    r = run_pitr(source, f, pgdata)
    assert snapshot(victim) == before and victim.stat().st_uid == 0
    assert r.returncode == 1, r.stdout + r.stderr
    assert "server log" in r.stdout + r.stderr and "Traceback" not in r.stderr


def test_a_fetch_directory_another_user_owns_is_refused_before_anything_is_made(source: Source) -> None:
    f = forge(source)
    theirs = f.work / "theirs"
    theirs.mkdir()
    chown_server_user(theirs)
    pgdata = f.restore / "data"
    before = (snapshot(f.restore), snapshot(theirs))
    r = run_pitr(source, f, pgdata, fetch_dir=str(theirs))
    assert (snapshot(f.restore), snapshot(theirs)) == before  # no data directory, no fetch directory
    assert r.returncode == 1, r.stdout + r.stderr
    out = r.stdout + r.stderr
    assert f"belongs to uid {pwd.getpwnam('postgres').pw_uid}" in out and "fetch_dir" in out
    assert "Traceback" not in r.stderr


def test_by_default_the_backup_is_never_fetched_into_a_directory_another_user_owns(source: Source) -> None:
    f = forge(source)
    pgdata = f.restore / "data"  # its parent belongs to the server's user, as /var/lib/postgresql/15 does
    r = run_pitr(source, f, pgdata, fetch_dir="")
    assert r.returncode == 0, r.stdout + r.stderr
    assert "another user could swap what is fetched there: the backup is fetched into /var/tmp/.pitr-fetch-" in r.stdout
    fetched = Path(r.stdout.split("fetched into ", 1)[1].split()[0])
    assert not fetched.exists()  # removed after the extraction
    assert sorted(p.name for p in f.restore.iterdir() if not p.name.startswith(".s.PGSQL.")) == [
        "data", "data.recovery.log"]  # nothing fetched into the server user's directory


def test_a_scratch_root_another_user_owns_is_refused(source: Source) -> None:
    f = forge(source)
    scratch = f.work / "theirs"
    scratch.mkdir()
    chown_server_user(scratch)
    before = snapshot(scratch)
    r = verify_base(f, scratch)
    assert snapshot(scratch) == before
    assert r.returncode == 3, r.stdout + r.stderr
    assert "belongs to uid" in r.stderr + r.stdout and "Traceback" not in r.stderr


def test_a_wal_segment_name_in_the_manifest_that_is_a_path_is_refused(source: Source) -> None:
    f0 = forge(source)
    victim = f0.work / "planted"

    def plant(manifest: dict[str, object]) -> None:
        manifest["start_wal"] = manifest["stop_wal"] = "../" * 8 + str(victim).lstrip("/")

    f = forge(source, manifest_change=plant)
    r = verify_base(f, f.work / "scratch")
    assert not os.path.lexists(victim)
    assert r.returncode == 2, r.stdout + r.stderr
    assert "is not a WAL segment name" in r.stdout and "Traceback" not in r.stderr
