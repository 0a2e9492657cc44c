"""Logical backups in encrypted repositories (issue 17), against a real PostgreSQL 15 cluster, moto's S3 server and
the `age` command.

One backup of a populated database (roles, settings, a large object) and of an attachments directory goes to a
local repository and to S3, both `encrypt: true`: every object is stored as age ciphertext (`<path>.age`), each
repository's manifest records the plaintext and the stored sha256 and its own epoch. It is fetched from each copy
and restored, and restored **by hand** with `age` and the PostgreSQL tools alone, exactly as docs/encryption.md
says; the restored databases equal the source. `backups`, `status` and `check` say what is encrypted and which
key opens it. The faults, each named before anything is restored: a wrong key, no key, a truncated object, one
flipped byte, an object replaced by another backup's valid ciphertext, the manifest's stored sha256 forged (refused
by its signature), and S3 failing in the middle of the backup (nothing published there).
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import ROOT, run_cli
from tests.integration.test_backup_roundtrip import db_facts, inside_facts, populate
from tests.support.backup_helpers import (  # noqa: F401
    backup,
    backups_json,
    cli_env,
    make_cluster,
    run_action,
    source_cluster,
    status,
    table_checksums,
    write_config,
)
from tests.support.pgcluster import PG_BIN, Cluster, make_base_dir
from tests.support.s3server import FaultProxy, S3Endpoint, s3_server  # noqa: F401

PREFIX = "enc"


def age_key(path: Path) -> str:
    """A new age identity file made by `age-keygen` (0600); returns its public key."""
    subprocess.run(["age-keygen", "-o", str(path)], check=True, capture_output=True)
    path.chmod(0o600)
    return subprocess.run(["age-keygen", "-y", str(path)], check=True, capture_output=True,
                          text=True).stdout.strip()


@dataclass
class Enc:
    cluster: Cluster
    cfg: Path
    repo: Path
    s3: S3Endpoint
    bucket: str
    key: Path
    recipient: str
    other_key: Path
    uploads: Path
    backup_id: str
    oid: int
    before: dict[str, tuple[int, str]]
    tmp: Path
    secrets: tuple[str, str]  # values of a database setting and of a role's setting in it

    def config(self, name: str, *, identities: list[Path] | None = None, s3_url: str | None = None,
               encryption: bool = True) -> Path:
        """A config over the same repositories, with other identity files (a reading host), another endpoint, or
        no encryption at all (a host from before it)."""
        return enc_config(self.tmp / name, self.cluster, self.repo, s3_url or self.s3.url, self.bucket,
                          [self.recipient], self.key if identities is None else identities, self.uploads,
                          encryption=encryption)

    def s3_keys(self) -> list[str]:
        resp = self.s3.client().list_objects_v2(Bucket=self.bucket, Prefix=PREFIX + "/")
        return [o["Key"] for o in resp.get("Contents", [])]

    def s3_get(self, key: str) -> bytes:
        return bytes(self.s3.client().get_object(Bucket=self.bucket, Key=key)["Body"].read())

    def s3_put(self, key: str, data: bytes) -> None:
        self.s3.client().put_object(Bucket=self.bucket, Key=key, Body=data)

    def backup_prefix(self) -> str:
        (key,) = [k for k in self.s3_keys() if k.endswith(f"/logical/app/{self.backup_id}/manifest.json")]
        return key[: -len("manifest.json")]


def enc_config(path: Path, cluster: Cluster, repo: Path, s3_url: str, bucket: str, recipients: list[str],
               identities: Path | list[Path], uploads: Path, *, encryption: bool = True) -> Path:
    ids = identities if isinstance(identities, list) else [identities]
    extra = (f"local: {{path: {repo}, encrypt: {'true' if encryption else 'false'}}}\n"
             f"attachments: {{path: {uploads}}}\n")
    if encryption:
        extra += (f"encryption: {{recipients: [{', '.join(recipients)}], "
                  f"identity_files: [{', '.join(map(str, ids))}]}}\n")
    return write_config(path, cluster, dbs=["app"], s3={"bucket": bucket, "prefix": PREFIX, "endpoint_url": s3_url,
                                                          "multipart_threshold_mb": 5, "multipart_chunk_mb": 5},
                        extra=extra)


@pytest.fixture(scope="module")
def enc(source_cluster: Cluster, s3_server: S3Endpoint, tmp_path_factory: pytest.TempPathFactory  # noqa: F811
        ) -> Iterator[Enc]:
    tmp = tmp_path_factory.mktemp("enc")
    keys = tmp / "keys"
    keys.mkdir(mode=0o700)
    recipient = age_key(keys / "ops.agekey")
    age_key(keys / "other.agekey")
    uploads = tmp / "uploads"
    (uploads / "2026").mkdir(parents=True)
    (uploads / "2026" / "contract.pdf").write_bytes(os.urandom(300_000))
    (uploads / "notes.txt").write_text("the attachments are encrypted too\n")
    bucket = "encrypted-backups"
    s3_server.client().create_bucket(Bucket=bucket)
    oid = populate(source_cluster)
    # A table big enough for several age chunks and S3 parts (random bytes: gzip cannot shrink them).
    source_cluster.psql("create table app.blobs(id int primary key, b bytea); insert into app.blobs "
                        "select g, decode(string_agg(md5(g::text || x::text), ''), 'hex') "
                        "from generate_series(1, 400) g, generate_series(1, 2000) x group by g", "app")
    # Settings whose values are secrets (a pattern of real applications): never in clear in the repository.
    secrets = (f"sk-live-{os.urandom(12).hex()}", f"tok-{os.urandom(12).hex()}")
    source_cluster.psql(f"alter database app set app.api_key = '{secrets[0]}'")
    source_cluster.psql(f"alter role app_reader in database app set app.reader_token = '{secrets[1]}'")
    before = table_checksums(source_cluster, "app")
    cfg = enc_config(tmp / "repo.yaml", source_cluster, tmp / "repo", s3_server.url, bucket, [recipient],
                     keys / "ops.agekey", uploads)
    proc = backup(cfg)
    assert proc.returncode == 0, proc.stderr
    st = status(tmp)
    assert st["targets"]["app"]["published"] == ["local", "s3"]
    assert st["targets"]["attachments"]["published"] == ["local", "s3"]
    assert set(st["targets"]["app"]["encrypted"]) == {"local", "s3"}  # repository -> epoch, for monitoring
    assert "(encrypted in local, s3)" in proc.stdout
    yield Enc(source_cluster, cfg, tmp / "repo", s3_server, bucket, keys / "ops.agekey", recipient,
              keys / "other.agekey", uploads, st["backup_id"], oid, before, tmp, secrets)


def local_backup_dir(e: Enc) -> Path:
    (d,) = e.repo.glob(f"clusters/*/logical/app/{e.backup_id}")
    return d


def fetch(e: Enc, cfg: Path, dest: Path, source: str) -> Any:
    """The module's backup (later tests add newer ones), fetched."""
    return run_action("fetch-latest-backup", {"config": str(cfg), "db": "app", "dest": str(dest), "from": source,
                                              "backup_id": e.backup_id})


def restore_and_compare(e: Enc, pg_base: Path, pg_template: Path, backup_dir: str, name: str) -> None:
    target = make_cluster(pg_base, pg_template, name)
    try:
        env = {"PGHOST": str(target.socket_dir), "PGPORT": str(target.port), "PGUSER": "postgres"}
        restored = run_action("restore-logical", {"backup_dir": backup_dir, "db": "app", "jobs": 2}, env=env)
        assert restored.code == 0, restored.stdout + restored.stderr
        assert table_checksums(target, "app") == e.before
        assert db_facts(target, "app") == db_facts(e.cluster, "app")
        assert inside_facts(target, "app", e.oid) == inside_facts(e.cluster, "app", e.oid)
    finally:
        target.stop()


# --- what is stored ----------------------------------------------------------------------------------------------


def test_every_object_is_stored_as_ciphertext_with_both_sha256_in_each_signed_manifest(enc: Enc) -> None:
    e = enc
    bdir = local_backup_dir(e)
    local = json.loads((bdir / "manifest.json").read_text())
    prefix = e.backup_prefix()
    remote = json.loads(e.s3_get(prefix + "manifest.json"))
    assert (bdir / "manifest.json.sig").exists() and prefix + "manifest.json.sig" in e.s3_keys()
    # Each repository has its own epoch (its own data key), so the manifests differ in what they store ...
    assert local["encryption"]["epoch"] != remote["encryption"]["epoch"]
    assert local["encryption"]["recipients"] == remote["encryption"]["recipients"] == [e.recipient]
    # ... and agree on the plaintext.
    plain = lambda m: [(o["path"], o["size"], o["sha256"]) for o in m["objects"]]  # noqa: E731
    assert plain(local) == plain(remote)
    assert {"globals.sql", "dump/toc.dat"} <= {o["path"] for o in local["objects"]}
    for m, read in ((local, lambda p: (bdir / p).read_bytes()), (remote, lambda p: e.s3_get(prefix + p))):
        for o in m["objects"]:
            stored = read(o["path"] + ".age")
            assert stored.startswith(b"age-encryption.org/v1\n")
            assert len(stored) == o["stored_size"] and o["stored_size"] > o["size"]
            import hashlib

            assert hashlib.sha256(stored).hexdigest() == o["stored_sha256"] != o["sha256"]
    # No plaintext object anywhere: not the dump, not the roles' password hashes.
    clear = [p.relative_to(bdir).as_posix() for p in bdir.rglob("*") if p.is_file() and p.suffix != ".age"]
    assert sorted(c for c in clear if not c.startswith("verifications/")) == ["manifest.json", "manifest.json.sig"]
    assert not [k for k in e.s3_keys() if "/logical/" in k and k.endswith((".sql", ".dat", ".gz"))]
    for k in e.s3_keys():
        if k.endswith(".age") and "/logical/" in k:
            assert b"CREATE ROLE" not in e.s3_get(k) and b"app_owner" not in e.s3_get(k)
    # The read-back record says what this host could prove (it holds no key of its own to decrypt with).
    rec = json.loads(next((bdir / "verifications").glob("*.json")).read_text())
    reread = next(c for c in rec["checks"] if c["name"] == "sha256 re-read")
    assert "each stored sha256 is what was encrypted" in reread["detail"] and rec["level"] == "readable"
    # The attachments too, and the epochs (epoch.json, a wrap) beside the backups.
    (files_manifest,) = e.repo.glob("files/*/manifest.json")
    fm = json.loads(files_manifest.read_text())
    assert fm["encryption"]["epoch"] == local["encryption"]["epoch"]
    assert (files_manifest.parent / "attachments.tar.age").exists()
    assert not (files_manifest.parent / "attachments.tar").exists()
    epoch_dir = e.repo / "encryption" / "epochs" / local["encryption"]["epoch"]
    assert (epoch_dir / "epoch.json").exists() and list(epoch_dir.glob("wrap-*.age"))
    # No private key on the backup host: nothing in its state directory but the public epoch cache.
    for p in (e.tmp / "state").rglob("*"):
        if p.is_file():
            assert b"AGE-SECRET-KEY" not in p.read_bytes(), p


def test_fetched_from_each_copy_decrypted_and_restored_equal_to_the_source(enc: Enc, pg_base: Path,
                                                                           pg_template: Path) -> None:
    e = enc
    for source in ("s3", "local"):
        got = fetch(e, e.cfg, e.tmp / f"restore-{source}", source)
        assert got.code == 0, got.stdout + got.stderr
        assert got.outputs["source"] == source and got.outputs["backup_id"] == e.backup_id
        assert "decrypted (age, epoch" in got.stdout
        assert {c["name"] for c in got.checks("ok")} >= {"decryption", "sha256 of every object"}
        fetched = Path(got.outputs["backup_dir"])
        assert (fetched / "globals.sql").exists() and not list(fetched.rglob("*.age"))
    # S3's ranged GETs (parts of the stored object read in parallel) decrypt the same.
    ranged = e.config("ranged.yaml")
    ranged.write_text(ranged.read_text().replace('"multipart_chunk_mb": 5', '"multipart_chunk_mb": 5, "range_get_mb": 5'))
    got = fetch(e, ranged, e.tmp / "restore-ranged", "s3")
    assert got.code == 0, got.stdout + got.stderr
    for f in (e.tmp / "restore-s3" / f"app-{e.backup_id}").rglob("*"):
        if f.is_file() and not f.name.startswith("."):
            twin = e.tmp / "restore-ranged" / f"app-{e.backup_id}" / f.relative_to(e.tmp / "restore-s3" / f"app-{e.backup_id}")
            assert twin.read_bytes() == f.read_bytes()
    restore_and_compare(e, pg_base, pg_template, str(e.tmp / "restore-s3" / f"app-{e.backup_id}"), "enc-from-s3")
    # The attachments of the same run, from S3, byte-identical.
    dest = e.tmp / "restored-uploads"
    att = run_action("restore-attachments", {"config": str(e.cfg), "dest": str(dest), "backup_id": e.backup_id,
                                             "from": "s3"})
    assert att.code == 0, att.stdout + att.stderr
    for rel in ("2026/contract.pdf", "notes.txt"):
        assert (dest / rel).read_bytes() == (e.uploads / rel).read_bytes()


def db_role_settings(c: Cluster, db: str) -> list[str]:
    """pg_db_role_setting of `db`, one `role: {setting,...}` a line (role `-` for the database's own)."""
    return c.psql("select coalesce(nullif(setrole, 0)::regrole::text, '-') || ': ' || setconfig::text "
                  "from pg_db_role_setting where setdatabase = (select oid from pg_database where datname = "
                  f"'{db}') order by 1").splitlines()


def test_the_settings_values_are_sealed_in_an_object_and_restored_exactly_under_another_name(
        enc: Enc, pg_base: Path, pg_template: Path) -> None:
    e = enc
    source = db_role_settings(e.cluster, "app")
    assert any(e.secrets[0] in line for line in source) and any(
        line.startswith("app_reader: ") and e.secrets[1] in line for line in source)
    prefix = e.backup_prefix()
    for m in (json.loads((local_backup_dir(e) / "manifest.json").read_text()),
              json.loads(e.s3_get(prefix + "manifest.json"))):
        assert m["database"]["settings"] == [] and m["database"]["settings_path"] == "settings.json"
        assert "settings.json" in {o["path"] for o in m["objects"]}
    # Every byte the repositories hold, and what the backup host keeps (state, logs): only ciphertext of them.
    held = [p.read_bytes() for root in (e.repo, e.tmp / "state") for p in root.rglob("*") if p.is_file()]
    held += [e.s3_get(k) for k in e.s3_keys()]
    assert len(held) > 20
    for secret in (*e.secrets, "app.api_key", "app.reader_token"):
        assert not [b for b in held if secret.encode() in b], secret
    # Fetched (settings.json decrypted and checked like every object), then restored under another name: the
    # database is created from template0 and the settings are applied from that object, not from the dump.
    got = fetch(e, e.cfg, e.tmp / "restore-settings", "s3")
    assert got.code == 0, got.stdout + got.stderr
    fetched = Path(got.outputs["backup_dir"])
    assert e.secrets[0] in (fetched / "settings.json").read_text()
    target = make_cluster(pg_base, pg_template, "enc-settings")
    try:
        env = {"PGHOST": str(target.socket_dir), "PGPORT": str(target.port), "PGUSER": "postgres"}
        restored = run_action("restore-logical", {"backup_dir": str(fetched), "db": "app_copy", "jobs": 2}, env=env)
        assert restored.code == 0, restored.stdout + restored.stderr
        n = e.cluster.psql("select count(*) from pg_db_role_setting, unnest(setconfig) where setdatabase = "
                           "(select oid from pg_database where datname = 'app')")
        assert f"with {n} settings and its ACL" in restored.stdout
        assert db_role_settings(target, "app_copy") == source
        assert table_checksums(target, "app_copy") == e.before
        for secret in e.secrets:
            assert secret not in restored.stdout + restored.stderr
        # settings.json changed after the fetch: refused by name, nothing restored.
        (fetched / "settings.json").write_text('[{"role": null, "setting": "app.api_key=planted"}]\n')
        again = run_action("restore-logical", {"backup_dir": str(fetched), "db": "app_other", "jobs": 2}, env=env)
        assert again.code == 1 and "settings.json" in again.stdout
        assert target.psql("select count(*) from pg_database where datname = 'app_other'") == "0"
    finally:
        target.stop()


# --- by hand -------------------------------------------------------------------------------------------------------


def by_hand_script() -> str:
    """The shell block of docs/encryption.md's logical walk-through (after its marker), as written there."""
    doc = (ROOT / "docs" / "encryption.md").read_text()
    m = re.search(r"<!-- by-hand: logical backup -->\s*```sh\n(.*?)```", doc, re.S)
    assert m, "docs/encryption.md has no by-hand walk-through of a logical backup"
    return m.group(1)


def test_restored_by_hand_with_age_and_the_postgresql_tools_alone(enc: Enc, pg_base: Path, pg_template: Path) -> None:
    """docs/encryption.md's walk-through, run as written, with nothing of runbook: the copy from S3 mirrored into
    a directory as `aws s3 cp --recursive` would, the epoch's data key opened with the operator's identity file,
    every object decrypted and checked against the manifest with sha256sum, then psql and pg_restore."""
    e = enc
    mirror = e.tmp / "mirror"
    prefix = e.backup_prefix()
    epoch = json.loads(e.s3_get(prefix + "manifest.json"))["encryption"]["epoch"]
    for key in e.s3_keys():
        rel = key[len(PREFIX) + 1:]
        if key.startswith(prefix) or rel.startswith(f"encryption/epochs/{epoch}/"):
            (mirror / rel).parent.mkdir(parents=True, exist_ok=True)
            (mirror / rel).write_bytes(e.s3_get(key))
    target = make_cluster(pg_base, pg_template, "enc-by-hand")
    work = e.tmp / "by-hand"
    work.mkdir()
    try:
        env = {"PATH": f"{PG_BIN}:/usr/bin:/bin", "HOME": str(work), "LC_ALL": "C",
               "REPO": str(mirror), "BACKUP": str(mirror / prefix[len(PREFIX) + 1:]), "KEY": str(e.key),
               "PGHOST": str(target.socket_dir), "PGPORT": str(target.port), "PGUSER": "postgres"}
        proc = subprocess.run(["bash", "-euo", "pipefail", "-c", by_hand_script()], cwd=work, env=env,
                              capture_output=True, text=True, timeout=180)
        assert proc.returncode == 0, proc.stdout + proc.stderr
        assert table_checksums(target, "app") == e.before
        assert db_facts(target, "app") == db_facts(e.cluster, "app")
        assert inside_facts(target, "app", e.oid) == inside_facts(e.cluster, "app", e.oid)
        # The walk-through removes the data key and the plaintext it made.
        assert not (work / "data.key").exists() and not (work / "plain").exists()
    finally:
        target.stop()


def test_the_by_hand_walk_through_refuses_an_object_that_does_not_match_its_manifest(enc: Enc, tmp_path: Path) -> None:
    """age authenticates chunks against the data key, which anyone holding the public data recipient can encrypt
    to: the sha256 check against the manifest is what refuses a replaced object, by hand too."""
    e = enc
    mirror = tmp_path / "mirror"
    shutil.copytree(e.repo, mirror)
    bdir = next(mirror.glob(f"clusters/*/logical/app/{e.backup_id}"))
    epoch = json.loads((bdir / "manifest.json").read_text())["encryption"]["epoch"]
    data_recipient = json.loads((mirror / "encryption" / "epochs" / epoch / "epoch.json").read_text())[
        "data_recipient"]
    forged = tmp_path / "forged.sql"
    forged.write_text("CREATE ROLE intruder SUPERUSER LOGIN;\n")
    subprocess.run(["age", "-r", data_recipient, "-o", str(bdir / "globals.sql.age.new"), str(forged)], check=True)
    os.replace(bdir / "globals.sql.age.new", bdir / "globals.sql.age")
    work = tmp_path / "work"
    work.mkdir()
    env = {"PATH": f"{PG_BIN}:/usr/bin:/bin", "HOME": str(work), "LC_ALL": "C", "REPO": str(mirror),
           "BACKUP": str(bdir), "KEY": str(e.key), "PGHOST": "/nonexistent", "PGPORT": "1"}
    proc = subprocess.run(["bash", "-euo", "pipefail", "-c", by_hand_script()], cwd=work, env=env,
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode != 0
    assert "globals.sql: FAILED" in proc.stdout + proc.stderr
    assert "intruder" not in proc.stdout + proc.stderr


# --- what the commands say -------------------------------------------------------------------------------------------


def test_backups_and_status_say_what_is_encrypted_and_for_whom_in_80_columns(enc: Enc) -> None:
    e = enc
    proc = run_cli("backups", "-c", str(e.cfg), env=cli_env())
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.splitlines()
    row = next(i for i, ln in enumerate(lines) if e.backup_id in ln and "app" in ln)
    enc_line = lines[row + 1]
    assert enc_line.startswith("    encrypted in local,s3: 1 recipient: " + e.recipient[:10])
    assert len(enc_line) <= 80
    cat = backups_json(e.cfg)
    (b,) = [b for b in cat["backups"] if b["backup_id"] == e.backup_id]
    assert b["encrypted"] == ["local", "s3"]
    assert b["copies"]["s3"]["encryption"]["recipients"] == [e.recipient]
    assert b["copies"]["local"]["encryption"]["epoch"] != b["copies"]["s3"]["encryption"]["epoch"]
    st = run_cli("status", "-c", str(e.cfg), "--no-cluster", "--json", env=cli_env())
    rep = json.loads(st.stdout)
    newest = rep["backups"]["logical"]["readable"]
    assert newest["backup_id"] == e.backup_id and set(newest["encrypted"]) == {"local", "s3"}
    human = run_cli("status", "-c", str(e.cfg), "--no-cluster", env=cli_env())
    said = [ln for ln in human.stdout.splitlines() if "encrypted in local,s3" in ln]
    assert said and all(len(ln) <= 80 for ln in said), human.stdout


def test_a_half_encrypted_repository_lists_both_and_restores_both(enc: Enc, tmp_path: Path) -> None:
    """A backup in clear beside the encrypted ones (written by a host without encryption, as before it existed):
    both listed as what they are, both fetched by the reading host."""
    e = enc
    clear_cfg = e.config("clear.yaml", encryption=False)
    e.cluster.psql("create database plainone")
    e.cluster.psql("create table t(id int); insert into t values (1), (2)", "plainone")
    proc = run_cli("backup", "-c", str(clear_cfg), "--db", "plainone", env=cli_env(), timeout=180)
    assert proc.returncode == 0, proc.stderr
    cat = backups_json(e.cfg)
    kinds = {b["db"]: b["encrypted"] for b in cat["backups"]}
    assert kinds["app"] == ["local", "s3"] and kinds["plainone"] == []
    lines = run_cli("backups", "-c", str(e.cfg), env=cli_env()).stdout.splitlines()
    row = next(i for i, ln in enumerate(lines) if "plainone" in ln)
    assert not lines[row + 1].strip().startswith("encrypted")
    assert any("stored in clear" in ln for ln in lines)
    for source in ("local", "s3"):
        got = run_action("fetch-latest-backup", {"config": str(e.cfg), "db": "plainone", "from": source,
                                                 "dest": str(tmp_path / source)})
        assert got.code == 0, got.stdout
        assert "decrypted" not in got.stdout and "every sha256 verified" in got.stdout


def test_check_reports_which_identity_files_open_the_newest_backup(enc: Enc) -> None:
    e = enc
    both = e.config("check.yaml", identities=[e.other_key, e.key])
    r = run_cli("check", "-c", str(both), "--json", env=cli_env(), timeout=120)
    checks = {c["name"]: c for c in json.loads(r.stdout)["checks"]}
    assert "keys:s3" in checks, r.stdout
    for name in ("keys:local", "keys:s3"):
        c = checks[name]
        assert c["status"] == "ok", c
        assert f"{e.key}: opens epoch" in c["detail"] and "decrypted, its sha256 as the manifest says" in c["detail"]
        assert f"not {e.other_key}" in c["detail"]
    wrong = e.config("check-wrong.yaml", identities=[e.other_key])
    r = run_cli("check", "-c", str(wrong), "--json", env=cli_env(), timeout=120)
    checks = {c["name"]: c for c in json.loads(r.stdout)["checks"]}
    assert checks["keys:s3"]["status"] == "failed" and r.returncode >= 2
    assert "no identity file of this host opens" in checks["keys:s3"]["detail"]
    writer = e.config("check-writer.yaml", identities=[])
    r = run_cli("check", "-c", str(writer), "--json", env=cli_env(), timeout=120)
    checks = {c["name"]: c for c in json.loads(r.stdout)["checks"]}
    assert checks["keys:s3"]["status"] == "info" and "holds no identity" in checks["keys:s3"]["detail"]


# --- faults: each named, nothing restored ------------------------------------------------------------------------


@pytest.fixture
def s3_object(enc: Enc) -> Iterator[Any]:
    """Alter one S3 object of the backup for a test, and put it back after."""
    saved: dict[str, bytes] = {}

    def alter(key: str, data: bytes) -> bytes:
        if key not in saved:
            saved[key] = enc.s3_get(key)
        enc.s3_put(key, data)
        return saved[key]

    yield alter
    for key, data in saved.items():
        enc.s3_put(key, data)


def _biggest(e: Enc) -> tuple[str, dict[str, Any]]:
    prefix = e.backup_prefix()
    m = json.loads(e.s3_get(prefix + "manifest.json"))
    o = max(m["objects"], key=lambda o: o["stored_size"])
    assert o["stored_size"] > 3 * 65536  # several age chunks: a flipped byte in the middle is in a middle chunk
    return prefix + o["path"] + ".age", o


def assert_nothing_fetched(got: Any, dest: Path) -> None:
    assert got.code == 1
    assert "Traceback" not in got.stdout + got.stderr
    assert not dest.exists() or not [p for p in dest.iterdir() if not p.name.startswith(".")], \
        "something reached the destination"


def test_a_wrong_key_is_named_with_the_epoch_and_its_recipients(enc: Enc) -> None:
    e = enc
    wrong = e.config("wrong.yaml", identities=[e.other_key])
    dest = e.tmp / "wrong"
    got = fetch(e, wrong, dest, "s3")
    assert_nothing_fetched(got, dest)
    assert "no identity of this host" in got.stdout and "opens epoch" in got.stdout and e.recipient in got.stdout
    assert f"no copy of backup {e.backup_id} opens with this host's keys" in got.stdout
    assert any(c["name"] == "decryption key of the s3 copy" for c in got.checks("failed"))


def test_no_identity_names_the_epoch_its_recipients_and_the_config_key(enc: Enc) -> None:
    e = enc
    none = e.config("none.yaml", identities=[])
    dest = e.tmp / "none"
    got = fetch(e, none, dest, "s3")
    assert_nothing_fetched(got, dest)
    assert "this host has no identity to open it: encryption.identity_files is not set" in got.stdout
    assert "epoch 20" in got.stdout and e.recipient[:10] in got.stdout


def test_a_truncated_object_is_named_truncated(enc: Enc, s3_object: Any) -> None:
    e = enc
    key, o = _biggest(e)
    original = s3_object(key, b"")
    s3_object(key, original[: len(original) - 70_000])
    dest = e.tmp / "truncated"
    got = fetch(e, e.config("t.yaml"), dest, "s3")
    assert_nothing_fetched(got, dest)
    assert f"truncated ciphertext: {key[len(PREFIX) + 1:]}" in got.stdout


def test_one_flipped_byte_is_named_altered_ciphertext(enc: Enc, s3_object: Any) -> None:
    e = enc
    key, o = _biggest(e)
    original = s3_object(key, b"")
    flipped = bytearray(original)
    flipped[len(flipped) // 2] ^= 0x01
    s3_object(key, bytes(flipped))
    dest = e.tmp / "flipped"
    got = fetch(e, e.config("f.yaml"), dest, "s3")
    assert_nothing_fetched(got, dest)
    assert f"altered ciphertext: the stored bytes of {key[len(PREFIX) + 1:]}" in got.stdout
    assert "age refuses them (altered)" in got.stdout
    assert o["stored_sha256"] in got.stdout  # the manifest's, unchanged: the stored bytes disagree with it


def test_an_object_replaced_by_another_backups_valid_ciphertext_is_refused(enc: Enc, s3_object: Any) -> None:
    """Valid age, from the same repository and epoch (a newer backup's globals.sql), yet not this backup's."""
    e = enc
    e.cluster.psql("create role latecomer nologin")
    cfg2 = e.config("second.yaml")
    proc = run_cli("backup", "-c", str(cfg2), env=cli_env(), timeout=180)
    assert proc.returncode == 0, proc.stderr
    keys = e.s3_keys()
    prefix = e.backup_prefix()
    other = sorted(k for k in keys if k.endswith("/globals.sql.age") and not k.startswith(prefix))[-1]
    s3_object(prefix + "globals.sql.age", e.s3_get(other))
    dest = e.tmp / "replaced"
    got = run_action("fetch-latest-backup", {"config": str(cfg2), "db": "app", "dest": str(dest), "from": "s3",
                                             "backup_id": e.backup_id})
    assert_nothing_fetched(got, dest)
    assert f"altered ciphertext: the stored bytes of {prefix[len(PREFIX) + 1:]}globals.sql.age" in got.stdout
    assert "another complete age object (valid ciphertext, but not this backup's: replaced)" in got.stdout


def test_a_forged_stored_sha256_is_refused_by_the_manifests_signature(enc: Enc, s3_object: Any) -> None:
    e = enc
    key, o = _biggest(e)
    original = s3_object(key, b"")
    flipped = bytearray(original)
    flipped[100_000] ^= 0x01
    s3_object(key, bytes(flipped))
    prefix = e.backup_prefix()
    m = e.s3_get(prefix + "manifest.json")
    s3_object(prefix + "manifest.json", m.replace(o["stored_sha256"].encode(),
                                                  hashlib.sha256(bytes(flipped)).hexdigest().encode()))
    dest = e.tmp / "forged"
    got = run_action("fetch-latest-backup", {"config": str(e.config("g.yaml")), "db": "app", "dest": str(dest),
                                             "from": "s3", "backup_id": e.backup_id})
    assert_nothing_fetched(got, dest)
    assert f"logical backup {e.backup_id} of app in s3" in got.stdout
    assert "refused: its bytes changed after key" in got.stdout


def test_s3_failing_in_the_middle_of_an_encrypted_backup_publishes_nothing_there(enc: Enc) -> None:
    e = enc
    seen = {"parts": 0}

    def fail(method: str, path: str) -> bool:
        if method == "PUT" and ".age" in path and "/logical/" in path:
            seen["parts"] += 1
            return seen["parts"] > 2  # the first objects go up, then the endpoint fails
        return False

    with FaultProxy(("127.0.0.1", e.s3.port), fail=fail) as proxy:
        cfg = e.config("midway.yaml", s3_url=proxy.url)
        text = cfg.read_text().replace("multipart_chunk_mb: 5", "multipart_chunk_mb: 5, max_attempts: 1")
        cfg.write_text(text.replace('"multipart_chunk_mb": 5', '"multipart_chunk_mb": 5, "max_attempts": 1'))
        before = set(e.s3_keys())
        proc = run_cli("backup", "-c", str(cfg), "--db", "app", env=cli_env(), timeout=180)
    assert proc.returncode == 1, proc.stderr
    assert "published in local" in proc.stderr and "answered 500" in proc.stderr
    new = {k for k in set(e.s3_keys()) - before if "/logical/" in k}
    assert any(k.endswith(".age") for k in new)  # it was cut off in the middle ...
    assert not any(k.endswith("manifest.json") for k in new)  # ... and no backup exists there
    bid = status(e.tmp)["backup_id"]
    assert list(e.repo.glob(f"clusters/*/logical/app/{bid}/manifest.json"))


def test_verify_backup_decrypts_each_copy_and_a_host_without_key_cannot_judge(enc: Enc) -> None:
    """The decryption proof the backup host cannot give: a test restore of each encrypted copy on a host with an
    identity (recorded `restored`); without one, verify-backup says why and writes no record."""
    e = enc
    scratch = make_base_dir("runbook-enc-verify-")
    try:
        for source in ("local", "s3"):
            r = run_cli("verify-backup", "-c", str(e.cfg), "--scratch-dir", str(scratch), "--backup", e.backup_id,
                        "--from", source, "--json", env=cli_env(), timeout=300)
            assert r.returncode == 0, r.stdout + r.stderr
            out = json.loads(r.stdout)
            checks = {c["name"]: c for c in out["checks"]}
            assert out["status"] == "verified" and out["repository"] == source
            assert checks["decryption"]["status"] == "ok" and "epoch" in checks["decryption"]["detail"]
            assert checks["rows in app.assets"]["status"] == "ok"
        cat = backups_json(e.cfg)
        (b,) = [b for b in cat["backups"] if b["backup_id"] == e.backup_id]
        assert b["copies"]["local"]["level"] == b["copies"]["s3"]["level"] == "restored"
        r = run_cli("verify-backup", "-c", str(e.config("verify-none.yaml", identities=[])), "--scratch-dir",
                    str(scratch), "--backup", e.backup_id, "--from", "s3", "--json", env=cli_env(), timeout=300)
        out = json.loads(r.stdout)
        assert r.returncode == 3 and out["status"] == "could not run" and out["record"] is None
        assert "encryption.identity_files is not set" in out["error"]
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


def test_after_a_rotation_backups_and_status_name_whom_the_epoch_opens_for_now(enc: Enc) -> None:
    """`runbook keys rotate` adds a recipient by a new wrap (no data rewritten): the listings show whom each
    encrypted copy opens for now (the wraps' signed sidecars), not only whom it was written for."""
    e = enc
    newcomer = age_key(e.tmp / "keys" / "newcomer.agekey")
    r = run_cli("keys", "rotate", "-c", str(e.cfg), "--add", newcomer, env=cli_env(), timeout=120)
    assert r.returncode == 0, r.stdout + r.stderr
    lines = run_cli("backups", "-c", str(e.cfg), env=cli_env()).stdout.splitlines()
    row = next(i for i, ln in enumerate(lines) if e.backup_id in ln and " app " in ln)
    assert lines[row + 1].startswith("    encrypted in local,s3: 2 recipients: ") and newcomer[:10] in lines[row + 1]
    (b,) = [b for b in backups_json(e.cfg)["backups"] if b["backup_id"] == e.backup_id]
    s3 = b["copies"]["s3"]["encryption"]
    assert s3["recipients"] == [e.recipient] and sorted(s3["recipients_now"]) == sorted([e.recipient, newcomer])
    rep = json.loads(run_cli("status", "-c", str(e.cfg), "--no-cluster", "--json", env=cli_env()).stdout)
    newest = rep["backups"]["logical"]["readable"]  # the newest backup (a later test's, local only): rotated too
    assert newest["encrypted"] and all(newcomer in c["recipients_now"] for c in newest["encrypted"].values())
    # The newcomer's key opens the backup now, without anything rewritten.
    got = fetch(e, e.config("newcomer.yaml", identities=[e.tmp / "keys" / "newcomer.agekey"]),
                e.tmp / "newcomer", "s3")
    assert got.code == 0, got.stdout + got.stderr


def test_an_identity_file_others_can_read_is_refused_by_name_and_nothing_is_fetched(enc: Enc, tmp_path: Path) -> None:
    e = enc
    loose = tmp_path / "loose.agekey"
    shutil.copy(e.key, loose)
    loose.chmod(0o644)
    dest = tmp_path / "loose"
    got = fetch(e, e.config("loose.yaml", identities=[loose]), dest, "s3")
    assert_nothing_fetched(got, dest)
    assert str(loose) in got.stdout and "0644" in got.stdout
