"""`runbook prune` (off-site retention with its own credentials), the catalogue's text form, and a run
over two databases: against a real cluster and moto's S3 server."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.conftest import run_cli
from tests.support.backup_helpers import backup, backups_json, source_cluster, status, write_config  # noqa: F401
from tests.support.pgcluster import Cluster
from tests.support.s3server import ACCESS_KEY, SECRET_KEY, S3Endpoint, credentials_env, s3_bucket, s3_server  # noqa: F401


def _iam_key(s3: S3Endpoint) -> tuple[str, str]:
    """An access key moto's IAM knows, allowed everything on S3 (for runs with moto's auth enforced)."""
    import boto3

    client = boto3.client("iam", endpoint_url=s3.url, region_name="us-east-1", aws_access_key_id=ACCESS_KEY,
                          aws_secret_access_key=SECRET_KEY)
    client.create_user(UserName="pruner")
    client.put_user_policy(UserName="pruner", PolicyName="s3", PolicyDocument=json.dumps({
        "Version": "2012-10-17", "Statement": [{"Effect": "Allow", "Action": "s3:*", "Resource": "*"}]}))
    key = client.create_access_key(UserName="pruner")["AccessKey"]
    return key["AccessKeyId"], key["SecretAccessKey"]


def test_prune_keeps_the_newest_readable_backup_and_uses_its_own_credentials(
    source_cluster: Cluster, s3_server: S3Endpoint, s3_bucket: str, tmp_path: Path,  # noqa: F811
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    c = source_cluster
    for db in ("alpha", "beta"):
        c.psql(f"create database {db}")
        c.psql("create table t(id int primary key); insert into t select generate_series(1, 100)", db)
    key_id, secret = _iam_key(s3_server)
    prune_creds = tmp_path / "prune-credentials"
    prune_creds.write_text(f"[default]\naws_access_key_id = {key_id}\naws_secret_access_key = {secret}\n")
    prune_creds.chmod(0o600)
    s3 = {"bucket": s3_bucket, "prefix": "af", "endpoint_url": s3_server.url,
          "prune_credentials_file": str(prune_creds)}
    cfg = write_config(tmp_path / "repo.yaml", c, dbs=["alpha", "beta"], local=tmp_path / "repo", s3=s3)
    for _ in range(3):
        proc = backup(cfg)
        assert proc.returncode == 0, proc.stderr
    assert set(status(tmp_path)["targets"]) == {"alpha", "beta"}
    assert (tmp_path / "state" / "backup.log").read_text().count("backup run finished: ok") == 3
    cat = backups_json(cfg)
    assert [b["db"] for b in cat["backups"]].count("alpha") == 3
    ids = sorted({b["backup_id"] for b in cat["backups"]})
    assert len(ids) == 3

    # The newest alpha backup in S3 loses its verification record: it is no longer "readable" there.
    client = s3_server.client()
    keys = [o["Key"] for o in client.list_objects_v2(Bucket=s3_bucket, Prefix="af/")["Contents"]]
    for k in keys:
        if f"/logical/alpha/{ids[-1]}/verifications/" in k:
            client.delete_object(Bucket=s3_bucket, Key=k)
    text = run_cli("backups", "-c", str(cfg), env=credentials_env())
    assert text.returncode == 0
    lines = [ln for ln in text.stdout.splitlines() if ln[2:].startswith("alpha")]
    assert lines[0].startswith("* alpha") and ids[-1] in lines[0]  # the local copy is still readable
    # An interrupted backup from long ago: prune removes it; one from now it leaves alone.
    old = tmp_path / "repo" / "clusters" / "1" / "logical" / "alpha" / "20200101T000000Z" / "dump"
    old.mkdir(parents=True)
    (old / "toc.dat").write_bytes(b"half")

    strict = write_config(tmp_path / "repo.yaml", c, dbs=["alpha", "beta"], local=tmp_path / "repo", s3=s3,
                          extra="retention: {keep_last: 1, keep_days: 0}")
    dry = run_cli("prune", "-c", str(strict), "--dry-run", env=credentials_env())
    assert dry.returncode == 0, dry.stderr
    assert "would delete" in dry.stdout and "incomplete" in dry.stdout
    assert len(backups_json(cfg)["backups"]) == 6 and old.exists()

    # With moto checking credentials, and none in the environment, only the prune credentials file works.
    monkeypatch.delenv("AWS_ACCESS_KEY_ID")
    monkeypatch.delenv("AWS_SECRET_ACCESS_KEY")
    s3_server.set_auth(True)
    try:
        refused = run_cli("backups", "-c", str(cfg), env={"AWS_SHARED_CREDENTIALS_FILE": "/dev/null"})
        assert refused.returncode == 1 and "could not be read" in refused.stderr
        done = run_cli("prune", "-c", str(strict), env={"AWS_SHARED_CREDENTIALS_FILE": "/dev/null"})
    finally:
        s3_server.set_auth(False)
    assert done.returncode == 0, done.stderr
    assert "incomplete" in done.stdout and not old.exists()
    assert f"S3 repository s3://{s3_bucket}/af/ at {s3_server.url}: kept 3, deleted 3" in done.stdout

    after = backups_json(cfg)
    where = {(b["db"], b["backup_id"]): b["locations"] for b in after["backups"]}
    # Local: newest of each kept. S3: beta's newest; for alpha the newest (unverified there) and the newest
    # readable one before it, whatever keep_last says.
    assert where == {
        ("alpha", ids[2]): ["local", "s3"],
        ("alpha", ids[1]): ["s3"],
        ("beta", ids[2]): ["local", "s3"],
    }
    assert after["picks"] == {"alpha": ids[2], "beta": ids[2]}
    left = [o["Key"] for o in client.list_objects_v2(Bucket=s3_bucket, Prefix="af/")["Contents"]]
    assert not any(f"/{ids[0]}/" in k for k in left)
