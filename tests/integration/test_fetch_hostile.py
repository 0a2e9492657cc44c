"""fetch-latest-backup and restore-logical when the repository is hostile (issue 14): paths from a manifest are
data, writes never follow links, the fetch directory is private, and the stamp cannot be dodged or planted.

The backups here are forged the way someone with write access to the bucket (or the local repository) would:
well-formed JSON, correct sha256s where that helps the attack, a passed `readable` verification record so that
the recovery picks them. No PostgreSQL is needed to fetch; real S3 (moto over HTTP) and real files.
"""

from __future__ import annotations

import hashlib
import json
import os
import stat
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from steps.repository import layout
from steps.repository.manifest import (
    Check,
    DatabaseFacts,
    DumpInfo,
    GlobalsInfo,
    LogicalManifest,
    ObjectEntry,
    Tool,
    VerificationRecord,
    to_json,
)
from tests.support.backup_helpers import run_action
from tests.support.pgcluster import Cluster
from tests.support.s3server import S3Endpoint, s3_bucket, s3_server  # noqa: F401
from tests.support.signing import signature, signing_yaml

SYSID = "7300000000000000001"
DB = "app"
T0 = datetime(2026, 12, 1, 2, 0, tzinfo=UTC)


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


class Repo:
    """Puts raw objects into a local directory or an S3 bucket, as an attacker with write access would."""

    def __init__(self, *, local: Path | None = None, s3: tuple[Any, str] | None = None) -> None:
        self.local, self.s3 = local, s3

    def put(self, key: str, data: bytes) -> None:
        if self.local is not None:
            path = Path(os.path.normpath(self.local / key))
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(data)
        else:
            assert self.s3 is not None
            client, bucket = self.s3
            client.put_object(Bucket=bucket, Key=key, Body=data)

    @property
    def name(self) -> str:
        return "local" if self.local is not None else "s3"


def manifest(bid: str, objects: dict[str, bytes]) -> dict[str, Any]:
    when = layout.parse_id(bid)
    m = LogicalManifest(
        backup_id=bid,
        database=DatabaseFacts(name=DB, system_identifier=SYSID, server_version="15.0", server_version_num=150000,
                               encoding="UTF8", collation="C.UTF-8", ctype="C.UTF-8", owner="postgres",
                               size_bytes=1),
        snapshot_time=when, started_at=when, stopped_at=when + timedelta(seconds=5),
        dump=DumpInfo(), globals=GlobalsInfo(), row_counts={},
        objects=[ObjectEntry(path=p, size=len(d), sha256=sha(d)) for p, d in sorted(objects.items())],
        tool=Tool(version="test"))
    return m.model_dump(mode="json")


def publish(repo: Repo, bid: str, m: dict[str, Any], objects: dict[str, bytes]) -> str:
    """Objects (keys relative to the backup, taken literally), the manifest and a passed readable record, both
    signed with the trusted key: what these forgeries attack lies behind the signature (a stolen key, a backup
    host that is itself compromised; tests/integration/test_signing.py shows that without it they are refused)."""
    prefix = layout.logical_prefix(SYSID, DB, bid)
    for path, data in objects.items():
        repo.put(prefix + path, data)
    raw = (json.dumps(m, indent=2) + "\n").encode()
    rec = VerificationRecord(backup_id=bid, level="readable", passed=True, checked_at=layout.parse_id(bid),
                             repository=repo.name, manifest_sha256=sha(raw), checks=[Check(name="x", status="ok")],
                             tool=Tool(version="test"))
    for key, data in ((prefix + layout.MANIFEST, raw), (layout.verification_key(prefix, layout.parse_id(bid)),
                                                        to_json(rec))):
        repo.put(key + ".sig", signature(key, data))
        repo.put(key, data)
    return prefix


GLOBALS = b"-- roles: none\n" + b"-" * 40 + b"\n"
EVIL = b"CREATE ROLE evil SUPERUSER;\n"
EVIL += b"-" * (len(GLOBALS) - len(EVIL) - 1) + b"\n"  # same size: only the ctime tells
GENUINE = {"dump/toc.dat": b"toc bytes " * 100, "globals.sql": GLOBALS}


def genuine(repo: Repo, bid: str = "20261201T020000Z") -> None:
    publish(repo, bid, manifest(bid, GENUINE), GENUINE)


def forged(repo: Repo, path: str, data: bytes, *, digest: str | None = None, bid: str = "20261202T020000Z") -> None:
    """A newer backup whose manifest also lists `path` (stored under prefix + path, literally)."""
    m = manifest(bid, GENUINE)
    m["objects"].append({"path": path, "size": len(data), "sha256": digest or sha(data)})
    publish(repo, bid, m, {**GENUINE, path: data})


def config(tmp_path: Path, *, local: Path | None = None, s3: dict[str, Any] | None = None) -> Path:
    lines = ["version: 1", "cluster: {databases: [app]}"]
    if local is not None:
        lines.append(f"local: {{path: {local}}}")
    if s3 is not None:
        lines.append("s3: " + json.dumps(s3))
    path = tmp_path / "repository.yaml"
    path.write_text("\n".join(lines) + "\n" + signing_yaml(private=False))
    os.chmod(path, 0o600)
    return path


@pytest.fixture
def s3_repo(s3_server: S3Endpoint, s3_bucket: str, tmp_path: Path) -> tuple[Repo, Path]:  # noqa: F811
    cfg = config(tmp_path, s3={"bucket": s3_bucket, "prefix": "", "endpoint_url": s3_server.url})
    return Repo(s3=(s3_server.client(), s3_bucket)), cfg


def fetch(cfg: Path, dest: Path, **more: Any) -> Any:
    return run_action("fetch-latest-backup", {"config": str(cfg), "db": DB, "dest": str(dest), **more})


def fetched_genuine(s3_repo: tuple[Repo, Path], dest: Path) -> Path:
    """The genuine backup published to the bucket and fetched into `dest`: the directory it was fetched into."""
    repo, cfg = s3_repo
    genuine(repo)
    res = fetch(cfg, dest)
    assert res.code == 0, res.stdout + res.stderr
    return Path(res.outputs["backup_dir"])


def test_a_traversing_object_path_from_s3_is_refused_by_name_and_the_genuine_backup_is_fetched(
    s3_repo: tuple[Repo, Path], tmp_path: Path
) -> None:
    repo, cfg = s3_repo
    genuine(repo)
    forged(repo, "../../../../planted", b"written by whoever owns the bucket\n")
    outside = tmp_path / "work"
    dest = outside / "a" / "restore"
    dest.mkdir(parents=True)
    res = fetch(cfg, dest)
    assert res.code == 0, res.stdout + res.stderr
    assert "Traceback" not in res.stderr
    assert "20261202T020000Z" in res.stdout and "unusable" in res.stdout and "../../../../planted" in res.stdout
    assert res.outputs["backup_id"] == "20261201T020000Z"  # the genuine one, said out loud
    assert any(c["status"] == "warning" and "20261202T020000Z" in c["name"] for c in res.checks())
    assert not list(tmp_path.rglob("planted"))
    assert sorted(os.listdir(dest)) == [f"{DB}-20261201T020000Z"]

    # Named explicitly, it is refused with the reason, nothing is fetched.
    named = fetch(cfg, tmp_path / "named", backup_id="20261202T020000Z")
    assert named.code == 1 and "Traceback" not in named.stderr
    assert "unusable" in named.stdout and "../../../../planted" in named.stdout
    assert not list(tmp_path.rglob("planted"))


@pytest.mark.parametrize("right_sha", [True, False])
def test_an_absolute_object_path_never_reaches_the_file_it_names(
    s3_repo: tuple[Repo, Path], tmp_path: Path, right_sha: bool
) -> None:
    repo, cfg = s3_repo
    victim = tmp_path / "victim" / "passwd"
    victim.parent.mkdir()
    victim.write_text("root:x:0:0\n")
    forged(repo, str(victim), b"evil:x:0:0\n", digest=None if right_sha else "0" * 64)
    res = fetch(cfg, tmp_path / "restore")
    assert victim.read_text() == "root:x:0:0\n"
    assert res.code == 1 and "Traceback" not in res.stderr
    assert "20261202T020000Z" in res.stdout and "absolute" in res.stdout
    assert not (tmp_path / "restore").exists()  # no backup to fetch: nothing made


def test_a_traversing_key_in_the_local_repository_opens_nothing(tmp_path: Path) -> None:
    repo_dir = tmp_path / "repo"
    repo = Repo(local=repo_dir)
    cfg = config(tmp_path, local=repo_dir)
    forged(repo, "../../x", b"bytes\n")
    dest = tmp_path / "restore"
    victim = tmp_path / "x"  # where <dest>/<work dir>/../../x lands
    victim.write_text("precious\n")
    res = fetch(cfg, dest)
    assert res.code == 1 and "Traceback" not in res.stderr, res.stderr
    assert "unusable" in res.stdout and "'../../x'" in res.stdout
    assert victim.read_text() == "precious\n"


def test_the_fetch_directory_is_private_and_its_parent_must_be_ours(s3_repo: tuple[Repo, Path], tmp_path: Path) -> None:
    _, cfg = s3_repo
    dest = tmp_path / "restore"
    got = fetched_genuine(s3_repo, dest)
    assert got.parent == dest and got.name == f"{DB}-20261201T020000Z"
    assert stat.S_IMODE(dest.stat().st_mode) == 0o750
    assert stat.S_IMODE(got.stat().st_mode) == 0o700
    for p in got.rglob("*"):
        assert not p.is_symlink()
        assert stat.S_IMODE(p.stat().st_mode) == (0o700 if p.is_dir() else 0o600), p
        assert p.stat().st_uid == os.geteuid()
    assert (got / "dump" / "toc.dat").read_bytes() == GENUINE["dump/toc.dat"]
    assert sorted(p.name for p in got.iterdir()) == [".verified.json", "dump", "globals.sql", "manifest.json"]

    # A destination that is a symlink, or that another user made first, is refused: nothing lands in it.
    real = tmp_path / "real"
    real.mkdir()
    os.symlink(real, tmp_path / "link")
    res = fetch(cfg, tmp_path / "link")
    assert res.code == 1 and "symlink" in res.stdout and "Traceback" not in res.stderr
    assert os.listdir(real) == []
    if os.geteuid() == 0:
        theirs = tmp_path / "theirs"
        theirs.mkdir(mode=0o777)
        os.chown(theirs, 4242, 4242)
        res = fetch(cfg, theirs)
        assert res.code == 1 and "uid 4242" in res.stdout and "Traceback" not in res.stderr
        assert os.listdir(theirs) == []


def test_an_interrupted_fetch_is_cleaned_up_without_following_links(s3_repo: tuple[Repo, Path], tmp_path: Path) -> None:
    repo, cfg = s3_repo
    genuine(repo)
    dest = tmp_path / "restore"
    dest.mkdir()
    left = dest / f".partial-{DB}-20261201T020000Z-killed"
    (left / "dump").mkdir(parents=True, mode=0o700)
    (left / "dump" / "toc.dat").write_bytes(b"half")
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    (elsewhere / "keep").write_text("keep")
    os.symlink(elsewhere, left / "link")
    os.symlink(elsewhere, dest / f".partial-{DB}-20261201T020000Z-link")
    res = fetch(cfg, dest)
    assert res.code == 0, res.stdout
    assert not left.exists() and "left by an interrupted fetch" in res.stdout
    assert (elsewhere / "keep").read_text() == "keep"
    assert sorted(os.listdir(dest)) == [f".partial-{DB}-20261201T020000Z-link", f"{DB}-20261201T020000Z"]


def test_an_existing_fetch_is_reused_only_when_private_and_intact(s3_repo: tuple[Repo, Path], tmp_path: Path) -> None:
    repo, cfg = s3_repo
    genuine(repo)
    dest = tmp_path / "restore"
    first = fetch(cfg, dest)
    assert first.code == 0, first.stdout
    again = fetch(cfg, dest)
    assert again.code == 0 and again.outputs["source"] == "existing", again.stdout
    got = Path(first.outputs["backup_dir"])
    os.chmod(got, 0o755)
    refused = fetch(cfg, dest)
    assert refused.code == 1 and "not private" in refused.stdout
    os.chmod(got, 0o700)
    (got / "globals.sql").write_bytes(b"CREATE ROLE evil SUPERUSER;\n")
    refused = fetch(cfg, dest)
    assert refused.code == 1 and "globals.sql does not match" in refused.stdout
    (got / "globals.sql").unlink()
    os.symlink(tmp_path / "elsewhere.sql", got / "globals.sql")
    refused = fetch(cfg, dest)
    assert refused.code == 1 and "globals.sql" in refused.stdout and "cannot be used" in refused.stdout
    assert "Traceback" not in refused.stderr


def restore(backup_dir: Path | str, cluster: Cluster, db: str = "never") -> Any:
    return run_action("restore-logical", {"backup_dir": str(backup_dir), "db": db},
                      env={"PGHOST": str(cluster.socket_dir), "PGPORT": str(cluster.port), "PGUSER": "postgres"})


def roles(cluster: Cluster) -> str:
    return cluster.psql("select count(*) from pg_roles where rolname = 'evil'")


def test_an_in_place_edit_with_its_mtime_restored_is_hashed_again_and_refused(
    s3_repo: tuple[Repo, Path], tmp_path: Path, pg_cluster: Cluster
) -> None:
    got = fetched_genuine(s3_repo, tmp_path / "restore")
    victim = got / "globals.sql"
    st = victim.stat()
    with open(victim, "r+b") as f:  # in place: same inode, same size
        f.write(EVIL)
    os.utime(victim, ns=(st.st_atime_ns, st.st_mtime_ns))
    after = victim.stat()
    assert (after.st_size, after.st_mtime_ns, after.st_ino) == (st.st_size, st.st_mtime_ns, st.st_ino)
    restored = restore(got, pg_cluster)
    assert restored.code == 1, restored.stdout
    assert "not hashed again" not in restored.stdout
    assert "globals.sql" in restored.stdout and "does not match its sha256" in restored.stdout
    assert roles(pg_cluster) == "0"


def test_a_stamp_is_trusted_only_from_a_directory_nobody_else_may_write(
    s3_repo: tuple[Repo, Path], tmp_path: Path, pg_cluster: Cluster
) -> None:
    """A planted stamp (or a directory another user could have prepared) buys no shortcut: hashed again."""
    got = fetched_genuine(s3_repo, tmp_path / "restore")
    # Control: untouched, the stamp is trusted (the restore then fails on the forged dump, after the globals).
    first = restore(got, pg_cluster, db="first")
    assert "not hashed again" in first.stdout, first.stdout
    # The same directory, writable by others: its stamp proves nothing any more; the files are hashed.
    os.chmod(got, 0o777)
    second = restore(got, pg_cluster, db="second")
    hashed = [c["hint"] for c in second.checks("ok") if c["name"] == "backup files"]
    assert "not hashed again" not in second.stdout and hashed and "match their sha256" in hashed[0], second.stdout
    assert "may be written by another user" in second.stdout
    os.chmod(got, 0o700)
    # A copy made by hand, stamp included, with the SQL swapped and the stamp re-computed: the stamp is the
    # tool's own only while it is private; a group-writable stamp is not trusted, and the edit is caught.
    stamp = got / ".verified.json"
    record = json.loads(stamp.read_text())
    (got / "globals.sql").write_bytes(EVIL)
    vst = (got / "globals.sql").stat()
    record["files"]["globals.sql"] = [vst.st_size, vst.st_mtime_ns, vst.st_ino, vst.st_ctime_ns, vst.st_dev]
    stamp.write_text(json.dumps(record))
    os.chmod(stamp, 0o666)
    third = restore(got, pg_cluster, db="third")
    assert third.code == 1 and "does not match its sha256" in third.stdout, third.stdout
    assert roles(pg_cluster) == "0"


def test_restore_logical_refuses_a_linked_directory_and_a_manifest_naming_places(
    s3_repo: tuple[Repo, Path], tmp_path: Path
) -> None:
    """Both refused before any server is contacted (PGHOST points nowhere)."""
    got = fetched_genuine(s3_repo, tmp_path / "restore")
    env = {"PGHOST": str(tmp_path / "no-server"), "PGPORT": "1"}
    os.symlink(got, tmp_path / "latest")
    linked = run_action("restore-logical", {"backup_dir": str(tmp_path / "latest"), "db": "x"}, env=env)
    assert linked.code == 2 and "links are not followed" in linked.stdout and "Traceback" not in linked.stderr
    m = json.loads((got / "manifest.json").read_text())
    m["user_mappings"] = "/etc/shadow"
    (got / "manifest.json").write_text(json.dumps(m))
    forged_dir = run_action("restore-logical", {"backup_dir": str(got), "db": "x"}, env=env)
    assert forged_dir.code == 2 and "unusable manifest" in forged_dir.stdout and "/etc/shadow" in forged_dir.stdout
    assert "Traceback" not in forged_dir.stderr
