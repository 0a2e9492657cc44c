"""Point-in-time recovery from an encrypted S3 repository, end to end, with real PostgreSQL 15 (1 MB segments) and
moto's S3: the base backup (tars and backup_manifest) and the WAL are stored as age only; `pitr` decrypts the base
backup while it fetches it and replays the WAL through `wal-fetch`, which decrypts each segment with the server
user's identity; `verify-backup --kind base` does the same in a scratch cluster. A WAL segment encrypted to a key
the recovering host lacks, and one altered in the bucket, each stop the recovery with the reason in its message
(exit 126 of restore_command: never a recovery that ends early).
"""

from __future__ import annotations

import json
import os
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import run_cli
from tests.support.pitr_cluster import (  # noqa: F401 - fixtures
    Primary,
    make_primary,
    next_dir,
    notes,
    pitr,
    pitr_template_fixture,
    server_runbook_fixture,
    write_rows,
)
from tests.support.s3server import S3Endpoint, s3_bucket, s3_server  # noqa: F401

PREFIX = "assetflow"


def age_identity(d: Path, name: str) -> tuple[Path, str]:
    """An identity made with `age-keygen` (0600; make_primary gives the tree to the server's user, who runs
    restore_command; root's pitr and verify-backup accept that owner), and its public key."""
    d.mkdir(exist_ok=True)
    path = d / f"{name}.agekey"
    subprocess.run(["age-keygen", "-o", str(path)], check=True, capture_output=True)
    os.chmod(path, 0o600)
    public = subprocess.run(["age-keygen", "-y", str(path)], check=True, capture_output=True, text=True).stdout
    return path, public.strip()


def encrypted_primary(pg_base: Path, template: Path, s3: S3Endpoint, bucket: str, runbook: str) -> Primary:
    dest = next_dir(pg_base)
    identity, public = age_identity(dest / "keys", "restore")
    section = {"bucket": bucket, "prefix": PREFIX, "endpoint_url": s3.url, "region": "us-east-1"}
    encryption = "encryption: " + json.dumps({"recipients": [public], "identity_files": [str(identity)]})
    return make_primary(template, dest, s3=section, local=False, venv_runbook=runbook, config_lines=(encryption,))


@pytest.fixture
def encrypted(pg_base: Path, pitr_template: Path, s3_server: S3Endpoint, s3_bucket: str,  # noqa: F811
              server_runbook: str) -> Iterator[Primary]:  # noqa: F811
    """An archiving primary whose repository is an encrypting S3 bucket (encrypted_primary); its restored servers
    and itself stopped after the test."""
    p = encrypted_primary(pg_base, pitr_template, s3_server, s3_bucket, server_runbook)
    try:
        yield p
    finally:
        p.stop_restored()
        p.crash()


def s3_objects(s3: S3Endpoint, bucket: str) -> list[str]:
    out: list[str] = []
    for page in s3.client().get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=PREFIX + "/"):
        out += [o["Key"] for o in page.get("Contents", [])]
    return out


def segment_now(p: Primary) -> str:
    return p.psql("select pg_walfile_name(pg_current_wal_lsn())")


def test_pitr_and_verify_backup_from_an_encrypted_s3_repository(encrypted: Primary, s3_server: S3Endpoint, s3_bucket: str) -> None:  # noqa: F811
    p = encrypted
    write_rows(p, 3, "pre")
    r = run_cli("basebackup", "-c", str(p.config), timeout=120)
    assert r.returncode == 0 and "readable in s3" in r.stdout, r.stdout + r.stderr
    keys = s3_objects(s3_server, s3_bucket)
    base = sorted(k.rsplit("/", 1)[1] for k in keys if "/base/" in k and "/verifications/" not in k)
    assert {"base.tar.zst.age", "backup_manifest.age", "manifest.json"} <= set(base), base
    assert "base.tar.zst" not in base and "backup_manifest" not in base
    mkey = next(k for k in keys if k.endswith("/manifest.json") and "/base/" in k)
    manifest = json.loads(s3_server.client().get_object(Bucket=s3_bucket, Key=mkey)["Body"].read())
    assert manifest["encryption"]["format"] == "age" and manifest["encryption"]["epoch"]
    assert all(o["stored_sha256"] != o["sha256"] for o in manifest["objects"])
    kept = write_rows(p, 4, "kept")
    target = p.psql("select now()")
    write_rows(p, 4, "lost")
    p.switch_wal()
    wal = [k for k in s3_objects(s3_server, s3_bucket) if "/wal/" in k]
    assert wal and all(k.endswith(".zst.age") for k in wal), wal

    r = run_cli("verify-backup", "-c", str(p.config), "--kind", "base", "--scratch-dir",
                str(p.cluster.datadir.parent / "scratch"), "--json", timeout=180)
    assert r.returncode == 0, r.stdout + r.stderr
    checks = {c["name"]: c for c in json.loads(r.stdout)["checks"]}
    assert checks["decryption"]["status"] == "ok" and "decrypted" in checks["decryption"]["detail"]
    assert checks["replay to consistency"]["status"] == "ok"

    p.crash()
    pgdata = p.cluster.datadir.parent / "restored"
    r = pitr(p.pitr_args(pgdata, target=target, source="s3"))
    assert r.returncode == 0, r.stdout + r.stderr
    assert "decrypted (epoch" in r.stderr + r.stdout
    assert notes(pgdata) == [f"pre-{i}" for i in range(3)] + kept


def test_wal_for_a_key_this_host_lacks_and_an_altered_segment_stop_the_recovery(encrypted: Primary, s3_server: S3Endpoint, s3_bucket: str) -> None:  # noqa: F811
    p = encrypted
    write_rows(p, 3, "pre")
    r = run_cli("basebackup", "-c", str(p.config), timeout=120)
    assert r.returncode == 0, r.stdout + r.stderr
    write_rows(p, 2, "mid")
    altered = segment_now(p)  # holds the "mid" rows: replayed by any recovery from that backup
    p.switch_wal()
    # From here the server archives with a config whose recipient is someone else's key: a new epoch that
    # no identity of the recovering host opens.
    _, other = age_identity(p.cluster.datadir.parent / "other-keys", "elsewhere")
    foreign = p.config.with_name("foreign.yaml")
    text = p.config.read_text()
    old_public = json.loads(next(ln for ln in text.splitlines()
                                 if ln.startswith("encryption:"))[len("encryption: "):])["recipients"][0]
    foreign.write_text(text.replace(old_public, other))
    os.chmod(foreign, 0o640)
    os.chown(foreign, 0, os.stat(p.config).st_gid)
    p.psql(f"alter system set archive_command = '{p.archive_command.replace(str(p.config), str(foreign))}'")
    p.psql("select pg_reload_conf()")
    write_rows(p, 2, "late")
    locked = segment_now(p)
    p.switch_wal()
    p.crash()

    # 1. the late segment is encrypted to a key this host lacks: recovery stops there, naming it
    r = pitr(p.pitr_args(p.cluster.datadir.parent / "restored1", target_kind="latest", source="s3"))
    out = r.stdout + r.stderr
    assert r.returncode != 0, out
    assert locked in out and "no identity of this host" in out, out

    # 2. one flipped byte in the ciphertext of a segment the recovery needs: stops there, named altered
    client = s3_server.client()
    key = next(k for k in s3_objects(s3_server, s3_bucket) if k.endswith(f"/wal/{altered}.zst.age"))
    obj = client.get_object(Bucket=s3_bucket, Key=key)
    blob = bytearray(obj["Body"].read())
    blob[len(blob) // 2] ^= 0x40
    client.put_object(Bucket=s3_bucket, Key=key, Body=bytes(blob), Metadata=obj["Metadata"])
    r = pitr(p.pitr_args(p.cluster.datadir.parent / "restored2", target_kind="latest", source="s3"))
    out = r.stdout + r.stderr
    assert r.returncode != 0, out
    assert altered in out and "altered" in out, out
