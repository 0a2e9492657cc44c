"""Encrypted WAL with real PostgreSQL 15 (1 MB segments) and moto's S3: archive_command and restore_command run by
the server as `postgres`, synchronous and asynchronous, into a local repository and S3 both marked
`encrypt: true`; what lands there is age only, read back byte for byte (directly and through the read-ahead);
a segment decrypted by hand with `age` and `zstd -d` (docs/encryption.md) is the file PostgreSQL wrote.
"""

from __future__ import annotations

import json
import os
import subprocess
from collections.abc import Callable
from pathlib import Path

from steps.repository.layout import ENCRYPTED_SUFFIX, wal_key
from tests.conftest import ROOT
from tests.support.pgcluster import chown_server_user
from tests.support.s3server import S3Endpoint, s3_bucket, s3_server  # noqa: F401
from tests.support.wal_helpers import (
    WalCluster,
    credentials_file,
    pgbench,
    s3_keys,
    s3_section,
    server_dir,
    wal_cluster,  # noqa: F401
    wal_template,  # noqa: F401
    write_config,
)

Factory = Callable[..., WalCluster]


def age_identity(d: Path, name: str) -> tuple[Path, str]:
    """An identity made with `age-keygen`, owned by the server's user (who runs restore_command), 0600; and its
    public key."""
    path = d / f"{name}.agekey"
    subprocess.run(["age-keygen", "-o", str(path)], check=True, capture_output=True)
    public = subprocess.run(["age-keygen", "-y", str(path)], check=True, capture_output=True, text=True).stdout.strip()
    os.chmod(path, 0o600)
    chown_server_user(d)
    return path, public


def encrypted_config(wc: WalCluster, s3: dict[str, object], identity: Path, public: str,
                     wal: dict[str, object] | None = None) -> Path:
    repo = server_dir(wc.base, "repo")
    extra = ("local: " + json.dumps({"path": str(repo), "encrypt": True}) + "\n"
             + "encryption: " + json.dumps({"recipients": [public], "identity_files": [str(identity)]}) + "\n")
    return write_config(wc.base / "repository.yaml", wc.cluster, s3=s3,
                        wal={"spool_dir": str(server_dir(wc.base, "spool")), **(wal or {})}, extra=extra)


def archived(wc: WalCluster) -> list[str]:
    status = wc.datadir / "pg_wal" / "archive_status"
    return sorted(n.removesuffix(".done") for n in os.listdir(status) if n.endswith(".done") and len(n) == 29)


def test_encrypted_wal_synchronous_then_asynchronous_local_and_s3(
        wal_cluster: Factory, s3_server: S3Endpoint, s3_bucket: str) -> None:  # noqa: F811
    wc = wal_cluster()
    identity, public = age_identity(server_dir(wc.base, "keys"), "restore")
    s3 = s3_section(s3_server.url, s3_bucket, credentials_file(wc.base))
    cfg = encrypted_config(wc, s3, identity, public)
    wc.archive_with(cfg)
    wc.cluster.start()
    wc.psql("create table t as select g, md5(g::text) as h from generate_series(1, 20000) g")
    first = wc.switch()
    wc.wait_archived(first)
    sync_names = archived(wc)
    # asynchronous from here on: the uploader encrypts what it reads ahead of archive_status
    cfg = encrypted_config(wc, s3, identity, public, {"async": True})
    pgbench(wc.cluster, "-i", "-s", "2", "-q")
    last = wc.switch()
    wc.wait_archived(last, timeout=60)
    names = archived(wc)
    assert len(names) > len(sync_names) >= 1
    sysid = wc.sysid()
    repo = wc.base / "repo"
    objects = s3_keys(s3_server, s3_bucket, f"wal-tests/clusters/{sysid}/wal/")
    assert objects and all(k.endswith(".zst" + ENCRYPTED_SUFFIX) for k in objects), sorted(objects)
    assert not list(repo.rglob("*.zst")), "an unencrypted WAL object in an encrypted repository"
    epochs = set()
    for name in names:
        key = wal_key(sysid, name) + ENCRYPTED_SUFFIX
        assert (repo / key).read_bytes().startswith(b"age-encryption.org/v1\n")
        head = s3_server.client().head_object(Bucket=s3_bucket, Key=f"wal-tests/{key}")
        epochs.add(head["Metadata"]["epoch"])
    assert len(epochs) == 1  # one writer, one set of recipients: one epoch
    fetched = server_dir(wc.base, "fetched")
    for source in ("local", "s3"):
        for name in names:
            dest = fetched / f"{name}.{source}"
            r = wc.runbook("wal-fetch", "-c", str(cfg), "--from", source, name, str(dest))
            assert r.returncode == 0, r.stderr
            assert dest.read_bytes() == (wc.datadir / "pg_wal" / name).read_bytes(), (source, name)
            dest.unlink()


def test_one_segment_decrypted_by_hand_with_age_and_zstd(
        wal_cluster: Factory, s3_server: S3Endpoint, s3_bucket: str) -> None:  # noqa: F811
    """docs/encryption.md, "One WAL segment by hand": the operator's identity opens the epoch's wrapped data key,
    the data key opens the segment, `zstd -d` gives the file PostgreSQL wrote; no runbook involved."""
    wc = wal_cluster()
    keys = server_dir(wc.base, "keys")
    identity, public = age_identity(keys, "ops")
    cfg = encrypted_config(wc, s3_section(s3_server.url, s3_bucket, credentials_file(wc.base)), identity, public)
    wc.archive_with(cfg)
    wc.cluster.start()
    name = wc.switch()
    wc.wait_archived(name)
    repo = wc.base / "repo"
    obj = repo / (wal_key(wc.sysid(), name) + ENCRYPTED_SUFFIX)
    work = wc.base / "by-hand"
    work.mkdir(mode=0o700)

    def sh(script: str) -> None:
        r = subprocess.run(["sh", "-ec", script], cwd=work, capture_output=True, text=True, timeout=60)
        assert r.returncode == 0, r.stderr

    def data_key(wraps: list[Path], out: str) -> None:
        """Each repository has its own epoch: its wrapped data key opened with the operator's identity."""
        for wrap in wraps:
            sh(f"age -d -i {identity} -o {out} {wrap} 2>/dev/null || true")
            if (work / out).exists():
                break
        assert (work / out).read_text().startswith("AGE-SECRET-KEY-1")

    # the local directory: the loop of docs/encryption.md ("One WAL segment by hand"), as written there
    doc = (ROOT / "docs" / "encryption.md").read_text()
    loop = doc[doc.index("for e in $(ls -r encryption/epochs); do"):]
    loop = loop[:loop.index("\ndone\n") + len("\ndone\n")]  # to the outer loop's end (the only unindented one)
    r = subprocess.run(["sh", "-ec", f"umask 077; cd {repo}\n{loop}"], capture_output=True, text=True, timeout=60,
                       env={**os.environ, "NAME": name, "SYSID": wc.sysid(), "KEY": str(identity), "WORK": str(work)})
    assert r.returncode == 0, r.stderr
    assert (work / name).read_bytes() == (wc.datadir / "pg_wal" / name).read_bytes()
    assert obj.exists()
    # the S3 copy: its epoch is named in its metadata (x-amz-meta-epoch), its wrapped key beside the epoch
    client = s3_server.client()
    key = f"wal-tests/{wal_key(wc.sysid(), name)}{ENCRYPTED_SUFFIX}"
    epoch = client.head_object(Bucket=s3_bucket, Key=key)["Metadata"]["epoch"]
    wraps = []
    listed = client.list_objects_v2(Bucket=s3_bucket, Prefix=f"wal-tests/encryption/epochs/{epoch}/wrap-")
    for i, o in enumerate(c for c in listed["Contents"] if c["Key"].endswith(".age")):
        client.download_file(s3_bucket, o["Key"], str(work / f"s3-wrap-{i}.age"))
        wraps.append(work / f"s3-wrap-{i}.age")
    data_key(wraps, "s3-data.key")
    client.download_file(s3_bucket, key, str(work / "from-s3.age"))
    sh("age -d -i s3-data.key from-s3.age | zstd -d -q -o from-s3")
    assert (work / "from-s3").read_bytes() == (wc.datadir / "pg_wal" / name).read_bytes()


def test_check_proves_restore_command_reads_its_identity_as_the_server_user(wal_cluster: Factory) -> None:  # noqa: F811
    """`runbook check` runs restore_command's proof as the server's user: the age identity files its config names
    must be readable by that user and private to it (what wal-fetch requires), else the check fails naming the
    file; a root-owned identity (readable by root alone) is named too."""
    import pwd

    from tests.integration.test_wal_check import ROLE, _check, _monitor_role

    wc = wal_cluster()
    keys = server_dir(wc.base, "keys")
    identity, public = age_identity(keys, "restore")
    repo = server_dir(wc.base, "repo")
    extra = ("encryption: " + json.dumps({"recipients": [public], "identity_files": [str(identity)]}) + "\n")
    cfg = write_config(wc.base / "repository.yaml", wc.cluster, local=repo, user=ROLE, extra=extra)
    wc.configure(archive_mode="on", archive_command=f"{wc.venv.runbook} wal-push -c {cfg} %p",
                 restore_command=f"{wc.venv.runbook} wal-fetch -c {cfg} %f %p")
    wc.cluster.start()
    _monitor_role(wc)
    user = pwd.getpwuid(wc.datadir.stat().st_uid).pw_name
    name = f"restore_command:{user}"
    _, checks = _check(cfg)
    assert checks[name]["status"] == "ok" and str(identity) in checks[name]["detail"], checks[name]
    os.chmod(identity, 0o640)
    _, checks = _check(cfg)
    assert checks[name]["status"] == "failed" and "mode 0640" in checks[name]["detail"], checks[name]
    assert "chmod 0600" in checks[name]["hint"]
    os.chmod(identity, 0o600)
    os.chown(identity, 0, 0)  # root's: the server's user cannot read it at all
    _, checks = _check(cfg)
    assert checks[name]["status"] == "failed", checks[name]
    assert checks[name]["detail"].startswith(f"{user} cannot read {identity}: permission denied"), checks[name]
    assert "age identity" in checks[name]["detail"]
