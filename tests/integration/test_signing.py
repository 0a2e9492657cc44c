"""Authenticated backups, against a real PostgreSQL 15 cluster and moto's S3 server over HTTP.

Every backup `runbook backup` writes is signed (Ed25519, `manifest.json.sig` beside each manifest and record).
Forgeries planted in both repositories, as an attacker with write access to them would: an unsigned manifest,
one signed by a key nobody trusts, a genuine manifest whose bytes were changed under its old signature, a
snapshot from the future. Each is refused by name with its reason, the newest genuine backup is what
fetch-latest-backup, verify-backup, `backups`, `status` and `check` see, and retention neither counts nor
deletes the future one; a point-in-time recovery starts from the newest genuine base backup. A repository written
before signing is read only with `--allow-unsigned`, which says so;
key rotation: two trusted keys, backups of both accepted; one key removed, its backups refused.
"""

from __future__ import annotations

import json
import shutil
import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from steps.repository import layout
from steps.repository.config import load_repository_config
from steps.repository.configured import open_stores
from steps.repository.manifest import Check, Level, Tool, VerificationRecord, sha256_bytes, to_json
from steps.repository.signing import SIG_SUFFIX, load_private_key
from steps.repository.store import LocalStore, Store
from tests.conftest import run_cli
from tests.support.backup_helpers import (  # noqa: F401 - fixtures
    BACKUP_ROLE,
    backup,
    backups_json,
    cli_env,
    run_action,
    source_cluster,
    status,
    write_config,
)
from tests.support.pgcluster import Cluster, make_base_dir
from tests.support.pitr_cluster import (  # noqa: F401 - fixtures
    Primary,
    basebackup,
    notes,
    outputs,
    pitr,
    pitr_template_fixture,
    primary_fixture,
    server_runbook_fixture,
    write_rows,
)
from tests.support.s3server import S3Endpoint, s3_bucket, s3_server  # noqa: F401
from tests.support.signing import key_id, make_keys, signing_yaml


@pytest.fixture(scope="module")
def shop(source_cluster: Cluster) -> Cluster:  # noqa: F811
    c = source_cluster
    c.psql("create database shop")
    c.psql("create table items(id int primary key, name text not null);"
           "insert into items select g, 'item ' || g from generate_series(1, 500) g;", "shop")
    c.psql(f"grant pg_monitor to {BACKUP_ROLE}")  # what `runbook check` needs
    return c


@pytest.fixture
def cfg(shop: Cluster, tmp_path: Path, s3_server: S3Endpoint, s3_bucket: str) -> Path:  # noqa: F811
    return write_config(tmp_path / "repo.yaml", shop, dbs=["shop"], local=tmp_path / "repo",
                        s3={"bucket": s3_bucket, "prefix": "signed", "endpoint_url": s3_server.url})


def take(config: Path) -> str:
    proc = backup(config)
    assert proc.returncode == 0, proc.stderr
    return str(status(config.parent)["backup_id"])


def stores_of(config: Path) -> list[Store]:
    cfg, _ = load_repository_config(config)
    return open_stores(cfg)


def prefix_of(store: Store, bid: str, db: str = "shop") -> str:
    (sysid,) = store.list_dirs("clusters/")
    return layout.logical_prefix(sysid, db, bid)


def forge(config: Path, genuine: str, *, at: datetime, change: Callable[[dict[str, Any]], None] = lambda m: None,
          sign_with: Path | None = None) -> str:
    """A new logical backup in every repository of `config`: the genuine one's objects under a new id, its
    manifest's times moved to `at` (and `change`d), with a passing `readable` record; signed by `sign_with`, or
    not."""
    bid = layout.backup_id(at)
    for store in stores_of(config):
        plant(store, prefix_of(store, genuine), prefix_of(store, bid), sign_with, backup_id=bid,
              snapshot_time=at.isoformat(), started_at=at.isoformat(), stopped_at=at.isoformat(), change=change)
    return bid


def plant(store: Store, src: str, dst: str, sign_with: Path | None, *,
          change: Callable[[dict[str, Any]], None] = lambda m: None, **fields: Any) -> None:
    """The backup under `src` copied to `dst` as an attacker with write access would: its objects, its manifest
    with `fields` set, a passing `readable` record; signed with `sign_with` (any key), or not at all."""
    signer = load_private_key(sign_with) if sign_with else None
    for key, _ in store.list_keys(src):
        rel = key[len(src):]
        if rel != layout.MANIFEST and not rel.startswith((layout.VERIFICATIONS, layout.MANIFEST + SIG_SUFFIX)):
            store.put_bytes(dst + rel, store.get_bytes(key))
    m = json.loads(store.get_bytes(src + layout.MANIFEST))
    m.update(fields)
    change(m)
    data = (json.dumps(m, indent=2) + "\n").encode()
    record = to_json(VerificationRecord(
        backup_id=m["backup_id"], level=Level.readable.name, passed=True, checked_at=datetime.now(UTC),
        repository=store.name, manifest_sha256=sha256_bytes(data),
        checks=[Check(name="sha256 re-read", status="ok")], tool=Tool(version="0")))
    for key, body in ((dst + layout.MANIFEST, data), (layout.verification_key(dst, datetime.now(UTC)), record)):
        if signer is not None:
            signer.put(store, key, body)
        else:
            store.put_bytes(key, body)


def fetch(config: Path, dest: Path, **more: Any) -> Any:
    return run_action("fetch-latest-backup", {"config": str(config), "db": "shop", "dest": str(dest), **more})


def warnings(result: Any) -> dict[str, str]:
    return {c["name"]: c["hint"] for c in result.checks("warning")}


def test_backups_are_signed_and_an_unsigned_forgery_is_refused_by_name(cfg: Path, tmp_path: Path,
                                                                        s3_server: S3Endpoint, s3_bucket: str  # noqa: F811
                                                                        ) -> None:
    genuine = take(cfg)
    # What `backup` wrote: every manifest and record has its signature beside it, in both repositories.
    for store in stores_of(cfg):
        keys = [k for k, _ in store.list_keys(prefix_of(store, genuine))]
        signed = [k for k in keys if k.endswith(("/manifest.json", ".json")) and "/dump/" not in k]
        assert signed and all(k + SIG_SUFFIX in keys for k in signed), keys
        sig = json.loads(store.get_bytes(prefix_of(store, genuine) + "manifest.json.sig"))
        assert sig["key_id"] == key_id(make_keys()[0]) and sig["object"].endswith(f"{genuine}/manifest.json")
    time.sleep(1)
    forged = forge(cfg, genuine, at=datetime.now(UTC), change=lambda m: m["row_counts"].update({"public.items": 1}))

    r = fetch(cfg, tmp_path / "restore")
    assert r.code == 0, r.stdout + r.stderr
    assert r.outputs["backup_id"] == genuine
    hint = warnings(r)[f"not genuine: logical backup {forged}"]
    assert "unsigned (no signature beside it)" in hint and "local" in hint
    assert f"logical backup {forged} of shop in s3" in r.stdout  # each copy named
    # From S3 alone too.
    r = fetch(cfg, tmp_path / "restore-s3", **{"from": "s3"})
    assert r.code == 0 and r.outputs["backup_id"] == genuine and r.outputs["source"] == "s3"

    cat = backups_json(cfg)
    assert [b["backup_id"] for b in cat["backups"]] == [genuine] and cat["picks"] == {"shop": genuine}
    assert {(x["repository"], x["backup_id"]) for x in cat["refused"]} == {("local", forged), ("s3", forged)}
    # Asking for it by name does not get it either.
    r = fetch(cfg, tmp_path / "restore-named", backup_id=forged)
    assert r.code == 1 and f"no backup {forged} of shop" in r.stdout

    st = run_cli("status", "-c", str(cfg), "--no-cluster", "--json", "--state-dir", str(tmp_path / "st"),
                 env=cli_env())
    rep = json.loads(st.stdout)
    assert {x["backup"].split(" (")[0] for x in rep["integrity"]["refused"]} == {
        f"logical backup {forged} of shop in local", f"logical backup {forged} of shop in s3"}
    assert rep["backups"]["logical"]["readable"]["backup_id"] == genuine
    assert any(forged in reason for reason in rep["integrity"]["reasons"])

    chk = run_cli("check", "-c", str(cfg), "--json", env=cli_env())
    checks = {c["name"]: c for c in json.loads(chk.stdout)["checks"]}
    assert checks["signatures"]["status"] == "warning" and forged in checks["signatures"]["detail"]
    assert genuine in checks["logical_backup"]["detail"]


def test_a_key_nobody_trusts_and_changed_bytes_under_an_old_signature_are_refused(
        cfg: Path, tmp_path: Path, request: pytest.FixtureRequest) -> None:
    first = take(cfg)
    second = take(cfg)
    # An attacker's own key: a well-formed signature, of a key this host does not trust.
    rogue, _ = make_keys(tmp_path, "rogue")
    time.sleep(1)
    forged = forge(cfg, second, at=datetime.now(UTC), sign_with=rogue)
    # The newest genuine backup's manifest edited in place (row counts), its signature kept.
    for store in stores_of(cfg):
        key = prefix_of(store, second) + layout.MANIFEST
        m = json.loads(store.get_bytes(key))
        m["row_counts"]["public.items"] = 7
        store.delete([key])
        store.put_bytes(key, (json.dumps(m, indent=2) + "\n").encode())

    r = fetch(cfg, tmp_path / "restore")
    assert r.code == 0, r.stdout + r.stderr
    assert r.outputs["backup_id"] == first
    w = warnings(r)
    assert f"signed by key {key_id(rogue)}, which this host does not trust" in w[f"not genuine: logical backup {forged}"]
    assert "its bytes changed after key" in w[f"not genuine: logical backup {second}"]

    scratch = make_base_dir("runbook-signing-verify-")  # the server's user traverses it
    request.addfinalizer(lambda: shutil.rmtree(scratch, ignore_errors=True))
    v = run_cli("verify-backup", "-c", str(cfg), "--scratch-dir", str(scratch), "--json", env=cli_env(), timeout=180)
    out = json.loads(v.stdout)
    assert v.returncode == 0, v.stdout + v.stderr
    assert out["backup_id"] == first and any(forged in w and "does not trust" in w for w in out["warnings"])
    # Its record is signed too: the catalogue counts it.
    assert next(b for b in backups_json(cfg)["backups"] if b["backup_id"] == first)["level"] == "restored"
    named = run_cli("verify-backup", "-c", str(cfg), "--scratch-dir", str(scratch), "--backup", forged, "--json",
                    env=cli_env(), timeout=60)
    assert named.returncode == 2, named.stdout + named.stderr
    assert "is not genuine" in json.loads(named.stdout)["error"] and "no record" in json.loads(named.stdout)["error"]


def test_a_snapshot_from_the_future_is_refused_and_not_newest_for_retention(cfg: Path, tmp_path: Path) -> None:
    older = take(cfg)
    newer = take(cfg)
    # Signed with the trusted key itself (a host whose clock is wrong, or a stolen key): the time alone refuses it.
    future = forge(cfg, newer, at=datetime.now(UTC) + timedelta(days=3), sign_with=make_keys()[0])
    r = fetch(cfg, tmp_path / "restore")
    assert r.code == 0 and r.outputs["backup_id"] == newer, r.stdout
    assert "is in the future" in warnings(r)[f"not genuine: logical backup {future}"]
    # Retention keeping only the newest: that is `newer`, never the future one; `older` goes, the future one stays.
    with open(cfg, "a") as f:
        f.write("retention: {keep_last: 1, keep_days: 0}\n")
    p = run_cli("prune", "-c", str(cfg), env=cli_env())
    assert p.returncode == 0, p.stdout + p.stderr
    assert f"deleted shop {older}" in p.stdout and f"kept shop {newer}" in p.stdout
    assert f"kept {prefix_of(stores_of(cfg)[0], future)}: not genuine (its time" in p.stdout
    for store in stores_of(cfg):
        assert store.exists(prefix_of(store, future) + layout.MANIFEST)
        assert not store.exists(prefix_of(store, older) + layout.MANIFEST)
    assert [b["backup_id"] for b in backups_json(cfg)["backups"]] == [newer]


def test_an_unsigned_repository_is_read_only_with_allow_unsigned_and_says_so(cfg: Path, tmp_path: Path) -> None:
    bid = take(cfg)
    for store in stores_of(cfg):  # a repository written before signing: no signature anywhere
        store.delete([k for k, _ in store.list_keys("clusters/") if k.endswith(SIG_SUFFIX)])

    r = fetch(cfg, tmp_path / "refused")
    assert r.code == 1 and "unsigned" in warnings(r)[f"not genuine: logical backup {bid}"]
    r = fetch(cfg, tmp_path / "restore", allow_unsigned=True)
    assert r.code == 0 and r.outputs["backup_id"] == bid, r.stdout
    said = warnings(r)[f"unsigned backup {bid}"]
    assert f"unsigned logical backup {bid} of shop accepted because --allow-unsigned" in said
    assert "manifest.json" in said and "accepted because --allow-unsigned" in r.stdout

    plain = run_cli("backups", "-c", str(cfg), env=cli_env())
    assert "refused, not genuine" in plain.stdout and "no backups" in plain.stdout
    allowed = run_cli("backups", "-c", str(cfg), "--allow-unsigned", env=cli_env())
    assert bid in allowed.stdout and "accepted because --allow-unsigned" in allowed.stderr
    st = run_cli("status", "-c", str(cfg), "--no-cluster", "--json", "--allow-unsigned",
                 "--state-dir", str(tmp_path / "st"), env=cli_env())
    rep = json.loads(st.stdout)
    assert rep["backups"]["logical"]["readable"]["backup_id"] == bid
    assert any("accepted because --allow-unsigned" in x for x in rep["integrity"]["reasons"])
    chk = json.loads(run_cli("check", "-c", str(cfg), "--json", "--allow-unsigned", env=cli_env()).stdout)
    assert {c["name"]: c["status"] for c in chk["checks"]}["unsigned"] == "warning"

    # Signing starts (the upgraded backup host): from then on --allow-unsigned is no way in for a forgery.
    signed = take(cfg)
    time.sleep(1)
    forged = forge(cfg, signed, at=datetime.now(UTC))
    r = fetch(cfg, tmp_path / "after", allow_unsigned=True)
    assert r.code == 0 and r.outputs["backup_id"] == signed, r.stdout
    assert "accepts only backups from before signing" in warnings(r)[f"not genuine: logical backup {forged}"]
    r = fetch(cfg, tmp_path / "legacy", allow_unsigned=True, backup_id=bid)  # the old one is still there to use
    assert r.code == 0 and r.outputs["backup_id"] == bid and f"unsigned backup {bid}" in warnings(r)


def test_key_rotation_two_trusted_keys_then_one_removed(shop: Cluster, tmp_path: Path) -> None:
    repo = tmp_path / "repo"
    for d in ("a", "b", "reader", "reader-b"):
        (tmp_path / d).mkdir()
    a, a_pub = make_keys(tmp_path, "a")
    b, b_pub = make_keys(tmp_path, "b")
    trusted = tmp_path / "keys"  # a directory of *.pub: both keys
    writer_a = write_config(tmp_path / "a" / "repo.yaml", shop, dbs=["shop"], local=repo,
                            extra=f"signing: {{private_key: {a}, public_keys: [{trusted}]}}")
    writer_b = write_config(tmp_path / "b" / "repo.yaml", shop, dbs=["shop"], local=repo,
                            extra=f"signing: {{private_key: {b}, public_keys: [{trusted}]}}")
    by_a = take(writer_a)
    by_b = take(writer_b)  # the new key signs from now on

    both = write_config(tmp_path / "reader" / "repo.yaml", shop, dbs=["shop"], local=repo,
                        extra=signing_yaml(tmp_path, private=False, trusted=[trusted]))
    assert [b["backup_id"] for b in backups_json(both)["backups"]] == [by_b, by_a]
    for bid in (by_a, by_b):
        r = fetch(both, tmp_path / f"r-{bid}", backup_id=bid)
        assert r.code == 0 and r.outputs["backup_id"] == bid and not r.checks("warning"), r.stdout
    listed = run_cli("keys", "list", "-c", str(both))
    assert key_id(a) in listed.stdout and key_id(b) in listed.stdout and "signs with   nothing" in listed.stdout

    only_b = write_config(tmp_path / "reader-b" / "repo.yaml", shop, dbs=["shop"], local=repo,
                          extra=signing_yaml(tmp_path, private=False, trusted=[b_pub]))
    assert [b["backup_id"] for b in backups_json(only_b)["backups"]] == [by_b]
    r = fetch(only_b, tmp_path / "only-b", backup_id=by_a)
    assert r.code == 1
    assert f"signed by key {key_id(a)}, which this host does not trust" in warnings(r)[f"not genuine: logical backup {by_a}"]
    assert a_pub.exists()


def test_pitr_starts_from_the_newest_genuine_base_backup(primary: Primary, tmp_path: Path) -> None:
    write_rows(primary, 3, "before")
    genuine = basebackup(primary)
    # A newer base backup, as an attacker would plant it: the genuine files, a later stop time, the attacker's key.
    rogue, _ = make_keys(tmp_path, "rogue")
    store = LocalStore(primary.repo)
    at = datetime.now(UTC) + timedelta(seconds=2)
    forged = layout.backup_id(at)
    plant(store, layout.base_prefix(primary.sysid, str(genuine["backup_id"])), layout.base_prefix(primary.sysid, forged),
          rogue, backup_id=forged, started_at=at.isoformat(), stopped_at=at.isoformat())
    cat = json.loads(run_cli("backups", "-c", str(primary.config), "--json").stdout)
    assert [b["backup_id"] for b in cat["base_backups"]] == [genuine["backup_id"]]
    assert [(r["kind"], r["backup_id"]) for r in cat["refused"]] == [("base", forged)]
    rows = write_rows(primary, 2, "after")
    primary.switch_wal()
    primary.crash()
    pgdata = primary.cluster.datadir.parent / "restored"
    r = pitr(primary.pitr_args(pgdata, target_kind="latest"))
    assert r.returncode == 0, r.stdout + r.stderr
    assert outputs(r)["backup_id"] == genuine["backup_id"]
    assert f"base backup {forged} in local" in r.stdout and "which this host does not trust" in r.stdout
    assert notes(pgdata)[-2:] == rows
