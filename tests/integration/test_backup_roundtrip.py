"""Round trips against the real parts: PostgreSQL 15 clusters and moto's S3 server over HTTP.

backup (as a non-superuser with pg_read_all_data) -> catalogue -> fetch-latest-backup -> restore-logical,
then the same rows (per-table counts and a content checksum), the large object, the sequence, the view,
the roles, the database-level settings, `ALTER ROLE ... IN DATABASE` and the database ACL. Through S3 into
a new database on a fresh cluster (roles created from the globals), and through the local repository under
the same name after the original was dropped (the `pg_restore --create` path); the attachments too.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from tests.support.backup_helpers import (  # noqa: F401
    BACKUP_ROLE,
    backup,
    backups_json,
    make_cluster,
    run_action,
    source_cluster,
    status,
    table_checksums,
    write_config,
)
from tests.support.pgcluster import Cluster
from tests.support.s3server import S3Endpoint, s3_bucket, s3_server  # noqa: F401

LOB_BYTES = bytes(range(256)) * 40  # 10 KiB, every byte value


def populate(c: Cluster, db: str = "app") -> int:
    """A database with roles, settings, an ACL, varied types, a sequence, a view and a large object.

    Returns the large object's oid.
    """
    c.psql("create role app_owner login")
    c.psql("create role app_reader nologin")
    c.psql(f"create database {db} owner app_owner")
    c.psql(f"alter database {db} set work_mem = '7MB'")
    c.psql(f"alter database {db} set search_path = app, public")
    c.psql(f"alter role app_reader in database {db} set statement_timeout = '5s'")
    c.psql(f"revoke connect on database {db} from public")
    c.psql(f"grant connect on database {db} to app_reader, {BACKUP_ROLE}")
    c.psql("""
        set role app_owner;
        create schema app;
        create table app.locations(id serial primary key, name text unique not null, parent int references app.locations);
        create table app.assets(
            id bigint primary key, name text not null, price numeric(12,2), bought date, tags text[], meta jsonb,
            active boolean, photo bytea, seen timestamptz, ip inet, uid uuid, span interval, ratio double precision,
            location int references app.locations, doc oid);
        create sequence app.invoice_no start 1000;
        create view app.active_assets as select id, name from app.assets where active;
        insert into app.locations(name) select 'room ' || g from generate_series(1, 50) g;
        insert into app.assets
        select g, 'asset ' || g || E' \\u00e9\\t"q"', g * 1.25, date '2020-01-01' + g, array['a' || g, null, 'b'],
               jsonb_build_object('k', g, 'nested', jsonb_build_array(g, 'x')), g % 3 = 0,
               decode(md5(g::text), 'hex'), timestamptz '2026-01-01 00:00+07' + g * interval '1 minute',
               ('10.0.' || (g / 256) || '.' || (g % 256))::inet, md5(g::text)::uuid, g * interval '1 second',
               g / 7.0, 1 + g % 50, null
        from generate_series(1, 3000) g;
        select setval('app.invoice_no', 1234);
        grant usage on schema app to app_reader;
        grant select on app.active_assets to app_reader;
    """, db)
    hexdata = LOB_BYTES.hex()
    oid = int(c.psql(f"select lo_from_bytea(0, '\\x{hexdata}'::bytea)", db))
    c.psql(f"alter large object {oid} owner to app_owner", db)
    # pg_read_all_data does not cover large objects in PostgreSQL 15: the backup role needs this grant.
    c.psql(f"grant select on large object {oid} to {BACKUP_ROLE}", db)
    c.psql(f"update app.assets set doc = {oid} where id = 1", db)
    return oid


def db_facts(c: Cluster, db: str) -> dict[str, str]:
    q = {
        "db_settings": f"select setconfig::text from pg_db_role_setting where setrole = 0 "
                       f"and setdatabase = (select oid from pg_database where datname = '{db}')",
        "role_settings": f"select setconfig::text from pg_db_role_setting where setrole = 'app_reader'::regrole "
                         f"and setdatabase = (select oid from pg_database where datname = '{db}')",
        "acl": f"select array(select (a).grantee::regrole::text || ':' || (a).privilege_type from "
               f"(select aclexplode(datacl) a from pg_database where datname = '{db}') s "
               f"where (a).grantee <> 0 order by 1)::text",
        "public_connect": f"select has_database_privilege('public', '{db}', 'CONNECT')",
        "owner": f"select pg_get_userbyid(datdba) from pg_database where datname = '{db}'",
        "encoding": f"select pg_encoding_to_char(encoding) || ' ' || datcollate from pg_database where datname = '{db}'",
    }
    return {k: c.psql(v) for k, v in q.items()}


def inside_facts(c: Cluster, db: str, oid: int) -> dict[str, str]:
    return {
        "sequence": c.psql("select last_value from app.invoice_no", db),
        "view": c.psql("select count(*) from app.active_assets", db),
        "lob": c.psql(f"select md5(lo_get({oid}))", db),
        "table_owner": c.psql("select tableowner from pg_tables where tablename = 'assets'", db),
        "reader_grant": c.psql("select has_table_privilege('app_reader', 'app.active_assets', 'SELECT')", db),
    }


def test_roundtrip_through_s3_into_a_new_database_on_a_fresh_cluster(
    source_cluster: Cluster, s3_server: S3Endpoint, s3_bucket: str, tmp_path: Path,  # noqa: F811
    pg_base: Path, pg_template: Path,
) -> None:
    src = source_cluster
    oid = populate(src)
    before = table_checksums(src, "app")
    assert before["app.assets"][0] == 3000
    cfg = write_config(tmp_path / "repo.yaml", src, dbs=["app"], local=tmp_path / "repo",
                       s3={"bucket": s3_bucket, "prefix": "assetflow", "endpoint_url": s3_server.url, "sse": "AES256",
                           "multipart_threshold_mb": 5, "multipart_chunk_mb": 5})
    proc = backup(cfg)
    assert proc.returncode == 0, proc.stderr
    st = status(tmp_path)
    assert st["status"] == "ok" and st["targets"]["app"]["published"] == ["local", "s3"]

    # The manifest, as stored in S3.
    client = s3_server.client()
    keys = [o["Key"] for o in client.list_objects_v2(Bucket=s3_bucket, Prefix="assetflow/")["Contents"]]
    manifest_key = next(k for k in keys if k.endswith("/manifest.json"))
    manifest = json.loads(client.get_object(Bucket=s3_bucket, Key=manifest_key)["Body"].read())
    assert manifest["format_version"] == 1 and manifest["kind"] == "logical"
    assert manifest["database"]["name"] == "app" and manifest["database"]["owner"] == "app_owner"
    assert manifest["database"]["system_identifier"] in manifest_key
    assert manifest["row_counts"] == {t: n for t, (n, _) in before.items()}
    assert manifest["globals"]["role_passwords"] is True  # pg_read_all_data may read pg_authid
    assert {o["path"] for o in manifest["objects"]} >= {"globals.sql", "dump/toc.dat"}
    assert manifest["snapshot_time"] >= manifest["started_at"] and manifest["stopped_at"] >= manifest["snapshot_time"]
    record_key = next(k for k in keys if "/verifications/" in k)
    record = json.loads(client.get_object(Bucket=s3_bucket, Key=record_key)["Body"].read())
    assert record["level"] == "readable" and record["passed"] and record["repository"] == "s3"
    assert {c["name"] for c in record["checks"]} == {"sha256 re-read", "pg_restore --list", "pg_restore --file=/dev/null"}

    cat = backups_json(cfg)
    assert len(cat["backups"]) == 1
    entry = cat["backups"][0]
    assert entry["picked"] and entry["level"] == "readable" and entry["locations"] == ["local", "s3"]
    assert cat["picks"] == {"app": entry["backup_id"]}

    # Writes after the backup are not in it.
    src.psql("insert into app.locations(name) values ('after the backup')", "app")

    fetched = run_action("fetch-latest-backup", {"config": str(cfg), "db": "app", "dest": str(tmp_path / "restore"),
                                                 "from": "s3"})
    assert fetched.code == 0, fetched.stdout + fetched.stderr
    out = fetched.outputs
    assert out["backup_id"] == entry["backup_id"] and out["source"] == "s3" and out["db"] == "app"
    assert out["cluster"] == manifest["database"]["system_identifier"]
    assert out["snapshot_time"].startswith(manifest["snapshot_time"][:19])
    assert out["size_bytes"] == sum(o["size"] for o in manifest["objects"])
    assert f"picked app backup {entry['backup_id']}" in fetched.stdout and "old" in fetched.stdout
    assert any(e["type"] == "progress" for e in fetched.events)
    assert sorted(os.listdir(tmp_path / "restore")) == [f"app-{entry['backup_id']}"]

    target = make_cluster(pg_base, pg_template, "rt-s3-target")
    try:
        env = {"PGHOST": str(target.socket_dir), "PGPORT": str(target.port), "PGUSER": "postgres"}
        restored = run_action("restore-logical", {"backup_dir": out["backup_dir"], "db": "app_restored", "jobs": 2},
                              env=env)
        assert restored.code == 0, restored.stdout + restored.stderr
        assert restored.outputs["restored_db"] == "app_restored" and restored.outputs["duration_s"] >= 0
        assert "roles created: " in restored.stdout and "app_owner" in restored.stdout
        assert "checked against their sha256 by fetch-latest-backup" in restored.stdout  # not hashed twice
        after = table_checksums(target, "app_restored")
        assert after == before
        assert inside_facts(target, "app_restored", oid) == inside_facts(src, "app", oid)
        want = db_facts(src, "app")
        got = db_facts(target, "app_restored")
        assert got == want, (got, want)
        assert got["db_settings"] == '{work_mem=7MB,"search_path=app, public"}'
        assert got["role_settings"] == "{statement_timeout=5s}"
        assert got["public_connect"] == "f"
        # A second restore into the now non-empty database is refused.
        again = run_action("restore-logical", {"backup_dir": out["backup_dir"], "db": "app_restored"}, env=env)
        assert again.code == 1 and "is not empty" in again.stdout
        assert table_checksums(target, "app_restored") == before
    finally:
        target.stop()


def test_roundtrip_through_local_under_the_same_name_after_dropping_the_original(
    pg_base: Path, pg_template: Path, tmp_path: Path
) -> None:
    c = make_cluster(pg_base, pg_template, "rt-local")
    try:
        oid = populate(c)
        before = table_checksums(c, "app")
        facts = db_facts(c, "app")
        inside = inside_facts(c, "app", oid)
        files = tmp_path / "uploads"
        (files / "2026" / "11").mkdir(parents=True)
        (files / "2026" / "11" / "invoice.pdf").write_bytes(os.urandom(50_000))
        (files / "readme.txt").write_text("hello\n")
        (files / "empty").mkdir()
        cfg = write_config(tmp_path / "repo.yaml", c, dbs=["app"], local=tmp_path / "repo",
                           extra=f"attachments: {{path: {files}}}")
        proc = backup(cfg)
        assert proc.returncode == 0, proc.stderr
        bid = status(tmp_path)["backup_id"]

        c.psql("drop database app")
        fetched = run_action("fetch-latest-backup", {"config": str(cfg), "db": "app", "dest": str(tmp_path / "r"),
                                                     "from": "local"})
        assert fetched.code == 0, fetched.stdout
        assert fetched.outputs["source"] == "local" and fetched.outputs["backup_id"] == bid
        env = {"PGHOST": str(c.socket_dir), "PGPORT": str(c.port), "PGUSER": "postgres"}
        restored = run_action("restore-logical", {"backup_dir": fetched.outputs["backup_dir"], "db": "app", "jobs": 2},
                              env=env)
        assert restored.code == 0, restored.stdout + restored.stderr
        assert "--create" in restored.stdout
        assert "roles that exist already, kept as they are:" in restored.stdout
        assert table_checksums(c, "app") == before
        assert db_facts(c, "app") == facts
        assert inside_facts(c, "app", oid) == inside

        # The attachments of the same run, byte-identical.
        dest = tmp_path / "restored-uploads"
        # a link planted where the old code staged its download (a predictable name) is never written through
        planted = tmp_path / "planted"
        planted.mkdir()
        (tmp_path / f".restored-uploads.attachments-{bid}").symlink_to(planted)
        att = run_action("restore-attachments", {"config": str(cfg), "dest": str(dest), "backup_id": bid,
                                                 "at": fetched.outputs["snapshot_time"]})
        assert att.code == 0, att.stdout
        assert list(planted.iterdir()) == []
        outs = dict(att.outputs)
        when = outs.pop("attachments_time")
        distance = outs.pop("distance_s")
        assert "of backup run " + bid in outs.pop("distance")
        assert outs == {"dest": str(dest), "attachments_id": bid, "files": 2}
        # the same run's snapshot is taken just after the dump's snapshot: the pair, not an older run's
        assert -60 < distance <= 0 and when.startswith(bid[:4])
        for rel in ("2026/11/invoice.pdf", "readme.txt"):
            assert (dest / rel).read_bytes() == (files / rel).read_bytes()
            assert (dest / rel).stat().st_mtime == (files / rel).stat().st_mtime
        assert (dest / "empty").is_dir()
        # A non-empty destination is refused unless told.
        refused = run_action("restore-attachments", {"config": str(cfg), "dest": str(dest)})
        assert refused.code == 1 and "not empty" in refused.stdout
        (dest / "readme.txt").write_text("changed")
        forced = run_action("restore-attachments", {"config": str(cfg), "dest": str(dest), "overwrite": True})
        assert forced.code == 0 and (dest / "readme.txt").read_text() == "hello\n"
    finally:
        c.stop()
