"""A backup must restore to an identical database, whatever is in it.

One source database holds, as far as PostgreSQL 15 allows in a test cluster, every kind of object (types of
every family, awkward values, constraints of every kind, partitioning and inheritance, grants, default
privileges, RLS, views, matviews, routines, operators, casts, triggers, event triggers, rules, sequences,
comments, collations, text search, extensions, a foreign server, statistics, indexes of every access method,
publications, a subscription, large objects), roles with memberships and settings, and database-level
settings, ACL, comment and an ICU locale. `runbook backup` (as the least-privilege backup role, into a local
repository and moto's S3), fetch-latest-backup from S3, restore-logical into a FRESH cluster (initdb only,
not even the backup role) under the SAME database name: then the two are compared by
`pg_dump --create --schema-only`, per-relation row counts and content checksums, sequences, large objects,
the role catalogs and the database's catalog row.
"""

from __future__ import annotations

import difflib
import hashlib
import json
import re
import subprocess
import time
from pathlib import Path

from tests.support.backup_helpers import BACKUP_ROLE, backup, run_action, status, write_config
from tests.support.pgcluster import PG_BIN, Cluster, clone_cluster
from tests.support.s3server import S3Endpoint, s3_bucket, s3_server  # noqa: F401

DB = "eo_db"
LOB_A = bytes(range(256)) * 33
LOB_B = "ünïcødé \U0001F600 large object\n".encode() * 50


def run_sql(c: Cluster, sql: str, db: str = "postgres") -> str:
    """A script through psql, statement by statement in autocommit (CREATE DATABASE, ALTER TYPE ADD VALUE)."""
    out = subprocess.run([str(PG_BIN / "psql"), "-h", str(c.socket_dir), "-p", str(c.port), "-U", "postgres",
                          "-d", db, "-XAtq", "-v", "ON_ERROR_STOP=1", "-f", "-"],
                         input=sql, capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    return out.stdout.strip()


def fresh_cluster(pg_base: Path, pg_template: Path, name: str) -> Cluster:
    """A cluster as initdb leaves it: no role but postgres (the disaster case: a new server)."""
    dest = pg_base / name
    dest.mkdir()
    c = clone_cluster(pg_template, dest)
    c.start()
    return c


GLOBALS_SQL = f'''
create role {BACKUP_ROLE} login bypassrls in role pg_read_all_data;
create role eo_owner login createdb connection limit 20 valid until '2099-01-01 00:00:00+00' password 'owner-secret';
create role eo_reader nologin;
create role eo_writer login noinherit password 'writer-secret';
create role "eo Weird ""Role""" nologin createrole;
create role eo_admin login replication bypassrls;
grant eo_reader to eo_writer with admin option;
grant eo_writer to eo_owner granted by eo_admin;
grant eo_reader to "eo Weird ""Role""";
alter role eo_reader set search_path = eo, public;
alter role eo_writer set work_mem = '3MB';
alter role eo_writer set lock_timeout = '2s';
comment on role eo_owner is 'owns the application''s objects';
create database {DB} owner eo_owner template template0 encoding 'UTF8' locale_provider icu icu_locale 'de-DE'
    lc_collate 'C.UTF-8' lc_ctype 'C.UTF-8' connection limit 50;
alter database {DB} set work_mem = '7MB';
alter database {DB} set search_path = eo, "$user", public;
alter database {DB} set default_text_search_config = 'eo.my_ts';
alter role eo_reader in database {DB} set statement_timeout = '5s';
alter role all in database {DB} set lock_timeout = '9s';
revoke connect, temporary on database {DB} from public;
grant connect on database {DB} to eo_reader, eo_writer, {BACKUP_ROLE};
grant create on database {DB} to eo_writer with grant option;
comment on database {DB} is 'every kind of object';
'''

# As postgres in the database: what needs a superuser, then the rest as the owner.
SUPERUSER_SQL = r"""
create extension pgcrypto;
create extension hstore;
create extension citext;
create extension pg_trgm;
create extension btree_gist;
create extension postgres_fdw;
create schema ext authorization eo_owner;
create extension ltree schema ext;
comment on extension hstore is 'key/value pairs';
create access method eo_heap type table handler heap_tableam_handler;
comment on access method eo_heap is 'heap under another name';
grant usage on foreign data wrapper postgres_fdw to eo_owner;
create function public.evt_log() returns event_trigger language plpgsql as $$ begin raise notice 'ddl: %', tg_tag; end $$;
create event trigger eo_evt on ddl_command_end when tag in ('CREATE TABLE') execute function public.evt_log();
create event trigger eo_evt_off on sql_drop execute function public.evt_log();
alter event trigger eo_evt_off disable;
comment on event trigger eo_evt is 'logs table creation';
create conversion public.eo_conv for 'LATIN1' to 'UTF8' from iso8859_1_to_utf8;
"""

OWNER_SQL = r'''
set role eo_owner;
create schema eo;
create schema "Weird ""Schema""";
comment on schema eo is 'the main schema';
grant usage on schema eo to eo_reader;
alter default privileges in schema eo grant select on tables to eo_reader;
alter default privileges revoke execute on functions from public;
alter default privileges in schema eo grant usage on sequences to eo_writer;

create type eo.mood as enum ('sad', 'ok', 'happy');
alter type eo.mood add value 'meh' before 'ok';
create type eo.pair as (a int, b text);
create domain eo.posint as int not null constraint posint_positive check (value > 0);
create domain eo.email as citext constraint has_at check (value ~ '@') default 'nobody@example.org';
create type eo.floatrange as range (subtype = float8, subtype_diff = float8mi);
comment on type eo.mood is 'how it feels';
comment on domain eo.posint is 'strictly positive';
revoke usage on type eo.pair from public;
grant usage on type eo.pair to eo_reader;
create collation eo.german_icu (provider = icu, locale = 'de-DE');
create collation eo.numeric_icu (provider = icu, locale = 'en-u-kn-true', deterministic = false);
create collation eo.c_libc (provider = libc, locale = 'C.UTF-8');
comment on collation eo.german_icu is 'ICU German';
create text search dictionary eo.my_simple (template = pg_catalog.simple, stopwords = english);
create text search configuration eo.my_ts (copy = pg_catalog.english);
alter text search configuration eo.my_ts alter mapping for asciiword with eo.my_simple;
comment on text search configuration eo.my_ts is 'english with simple words';

create table eo.kinds (
    id int generated always as identity (start with 10 increment by 5) primary key,
    i2 smallint, i8 bigint, n numeric, n2 numeric(10,3), r4 real, r8 double precision,
    t text collate eo.german_icu, tn text collate eo.numeric_icu, vc varchar(20), ch char(5), b boolean, by bytea,
    d date, ts timestamp, tstz timestamptz, tm time, tmtz timetz, iv interval,
    u uuid, j json, jb jsonb, x xml, ip inet, cid cidr, mac macaddr, mac8 macaddr8, bits bit(4), vbits varbit,
    pt point, ln line, ls lseg, bx box, pth path, pg polygon, cir circle, tsv tsvector, tsq tsquery, mon money,
    ia int[], ta text[], ra int4range, nr numrange, tsr tstzrange, dr daterange, imr int4multirange,
    fr eo.floatrange, fmr eo.floatmultirange, comp eo.pair, compa eo.pair[], mood eo.mood, moods eo.mood[],
    pos eo.posint default 1, mail eo.email, h hstore, ci citext, lt ext.ltree, o oid, lsn pg_lsn,
    doubled numeric generated always as (n2 * 2) stored,
    created timestamptz default '2000-01-01 00:00:00+00', label text default 'x' || 'y'
) with (fillfactor = 70, autovacuum_enabled = false, toast.autovacuum_enabled = false);
alter table eo.kinds alter column t set storage external;
alter table eo.kinds alter column jb set compression pglz;
alter table eo.kinds alter column i8 set statistics 500;
alter table eo.kinds alter column i2 set (n_distinct = 100);
comment on table eo.kinds is 'a column of every type';
comment on column eo.kinds.t is 'text, German collation';

insert into eo.kinds (i2, i8, n, n2, r4, r8, t, tn, vc, ch, b, by, d, ts, tstz, tm, tmtz, iv, u, j, jb, x, ip, cid,
    mac, mac8, bits, vbits, pt, ln, ls, bx, pth, pg, cir, tsv, tsq, mon, ia, ta, ra, nr, tsr, dr, imr, fr, fmr,
    comp, compa, mood, moods, pos, mail, h, ci, lt, o, lsn) values
(-32768, 9223372036854775807, 'NaN', 1234567.891, 'NaN', 'Infinity',
 E'tab\there\nnewline\r\ncr back\\slash ''single'' "double" \u00e9 \u4e2d\u6587 \U0001F600 \u200b end', '10 apples',
 E'\\N', 'ab', true, '\x00ff5c0a0d09', 'infinity', '-infinity', 'infinity', '24:00', '23:59:59.999999+14',
 '-178000000 years', 'a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11', '{"a": [1, 2.50, "\u00e9"], "a": 2}',
 '{"nested": {"x": [null, true, 1e400]}, "emoji": "\ud83d\ude00", "q": "\"\\"}', '<a b="1">t&amp;t</a>',
 '::ffff:1.2.3.4/120', '10.0.0.0/8', '08:00:2b:01:02:03', '08:00:2b:01:02:03:04:05', B'1010', B'1',
 '(1.5,-2)', '{1,2,3}', '[(0,0),(1,1)]', '((0,0),(2,3))', '[(0,0),(1,1),(2,0)]', '((0,0),(1,1),(1,0))', '<(0,0),5>',
 'the quick brown fox', 'fox & !dog', '12.34', '{1,NULL,3}', E'{"a\\"b","c,d",NULL,"NULL",""}',
 '[1,10)', '(,5.5]', '[2026-01-01 00:00+00,infinity)', 'empty', '{[1,3),[5,7)}', '[0.5,1.5)', '{[1,2),[3,4]}',
 '(1,"x y")', array['(1,a)','(2,)']::eo.pair[], 'meh', '{sad,meh,happy}', 7, 'A@B.example', 'k=>v, "x y"=>NULL',
 'MiXeD', 'top.middle.leaf', 4294967295, '16/B374D848'),
(0, -9223372036854775808, '-Infinity', -0.001, '-0', '-Infinity', E'\\.\nline after the copy end marker\n\\.', '9 apples',
 '', 'x    ', false, '\x', '4713-01-01 BC', '294276-12-31 23:59:59.999999', '-infinity', '00:00', '00:00-12',
 '1 year -2 mons 3 days -04:05:06.789', '00000000-0000-0000-0000-000000000000', 'null', '[]', '<r/>', '0.0.0.0', '::/0',
 'ff:ff:ff:ff:ff:ff', '00:00:00:00:00:00:00:00', B'0000', B'', '(0,0)', '{1,-1,0}', '[(0,0),(0,0)]', '((0,0),(0,0))',
 '((0,0))', '((0,0))', '<(0,0),0>', '', 'a', '-0.01', '{}', '[0:1]={x,y}', 'empty', '(,)', '(,)', '[2020-01-01,)',
 '{}', 'empty', '{}', '(,)', '{}', 'ok', '{}', 1, 'x@y', '', '', '', 0, '0/0'),
(null, null, 'Infinity', null, 'Infinity', 'NaN', 'NULL', '11 apples', null, null, null, null, null, null, null, null,
 null, null, null, null, '"just a string"', null, null, null, null, null, null, null, null, null, null, null, null,
 null, null, null, null, null, array[[1,2],[3,4]], null, null, null, null, null, null, null, null, null, null, null,
 null, 2, null, null, null, null, null, null);
insert into eo.kinds (i2, t, pos) select g, 'row ' || g, g from generate_series(1, 500) g;

create table eo.parent (
    id bigint generated by default as identity primary key,
    parent_id bigint references eo.parent on delete cascade,
    code text not null,
    rank int constraint rank_range check (rank between 0 and 100),
    room int, during tstzrange,
    constraint parent_code_key unique (code) deferrable initially deferred,
    constraint no_overlap exclude using gist (room with =, during with &&),
    constraint nulls_once unique nulls not distinct (rank, room)
);
alter table eo.parent add constraint code_nonempty check (code <> '') not valid;
comment on constraint rank_range on eo.parent is 'a percentage';
create table eo.child (
    id serial primary key,
    parent_id bigint references eo.parent on delete set null on update cascade,
    other_id bigint,
    note text,
    constraint child_other_fk foreign key (other_id) references eo.parent deferrable initially immediate
);
insert into eo.parent (code, rank, room, during) select 'p' || g, g % 101, g, tstzrange('2026-01-01', '2026-02-01')
    from generate_series(1, 300) g;
update eo.parent set parent_id = id - 1 where id > 1;
insert into eo.child (parent_id, other_id, note) select g, 301 - g, repeat('n', g) from generate_series(1, 300) g;
select setval('eo.parent_id_seq', 1000);

create table eo.events (id bigint not null, at date not null, kind text not null, body jsonb)
    partition by range (at);
create table eo.events_2025 partition of eo.events for values from ('2025-01-01') to ('2026-01-01')
    partition by list (kind);
create table eo.events_2025_a partition of eo.events_2025 for values in ('a', 'b');
create table eo.events_2025_other partition of eo.events_2025 default;
create table eo.events_2026 partition of eo.events for values from ('2026-01-01') to ('2027-01-01');
create table eo.events_default partition of eo.events default;
alter table eo.events add primary key (id, at, kind);
create index events_body on eo.events using gin (body jsonb_path_ops);
insert into eo.events select g, date '2024-12-01' + (g % 800), chr(97 + g % 4), jsonb_build_object('g', g)
    from generate_series(1, 2000) g;
create table eo.tags (tag text, weight int) partition by list (tag);
create table eo.tags_ab partition of eo.tags for values in ('a', 'b');
create table eo.tags_null partition of eo.tags for values in (null);
insert into eo.tags values ('a', 1), ('b', 2), (null, 3);
create table eo.hashed (id int primary key, v text) partition by hash (id);
create table eo.hashed_0 partition of eo.hashed for values with (modulus 3, remainder 0);
create table eo.hashed_1 partition of eo.hashed for values with (modulus 3, remainder 1);
create table eo.hashed_2 partition of eo.hashed for values with (modulus 3, remainder 2);
insert into eo.hashed select g, md5(g::text) from generate_series(1, 600) g;
create table eo.event_refs (id serial, event_id bigint, at date, kind text,
    foreign key (event_id, at, kind) references eo.events on delete cascade);
insert into eo.event_refs (event_id, at, kind) select id, at, kind from eo.events where id % 10 = 0;

create table eo.animal (id int, name text, legs int default 4);
create table eo.dog (good boolean default true) inherits (eo.animal);
create table eo.robot_dog (battery int) inherits (eo.dog);
insert into eo.animal values (1, 'cat', 4), (2, 'bird', 2);
insert into eo.dog values (3, 'rex', 4, true), (4, 'tripod', 3, false);
insert into eo.robot_dog values (5, 'aibo', 4, true, 80);

create unlogged table eo.scratch (k text primary key, v int);
insert into eo.scratch select 'k' || g, g from generate_series(1, 50) g;
create table eo.heapish (id int) using eo_heap;
insert into eo.heapish values (1), (2);
create unlogged sequence eo.unlogged_seq;
select nextval('eo.unlogged_seq');

create table "Weird ""Schema"""."Mixed Case ""Table""" ("select" int, "from" text, "Ünïcode col" text);
insert into "Weird ""Schema"""."Mixed Case ""Table""" values (1, 'a', 'ü'), (2, E'b\tc', null);
comment on table "Weird ""Schema"""."Mixed Case ""Table""" is 'quotes: '' and "';

create table eo.secrets (id int primary key, owner_name text, secret text, level int);
insert into eo.secrets select g, case when g % 2 = 0 then 'eo_reader' else 'eo_writer' end, 's' || g, g % 5
    from generate_series(1, 40) g;
alter table eo.secrets enable row level security;
alter table eo.secrets force row level security;
create policy own_rows on eo.secrets for select to eo_reader, eo_writer using (owner_name = current_user);
create policy writer_insert on eo.secrets for insert to eo_writer with check (level < 3);
create policy not_top on eo.secrets as restrictive for all using (level < 4);
comment on policy own_rows on eo.secrets is 'see your own rows';
grant select, insert on eo.secrets to eo_writer;
grant select (id, owner_name) on eo.secrets to eo_reader;
grant update (secret) on eo.secrets to eo_writer with grant option;
grant select on eo.parent to eo_writer with grant option;
revoke all on eo.child from eo_reader;
grant references, trigger, truncate on eo.child to eo_writer;

create view eo.v_barrier with (security_barrier) as select id, code from eo.parent where rank > 10;
create view eo.v_checked as select id, code, rank from eo.parent where rank < 50 with local check option;
create recursive view eo.v_rec (n) as values (1) union all select n + 1 from v_rec where n < 10;
create view eo.v_rule as select id, note from eo.child;
create rule v_rule_ins as on insert to eo.v_rule do instead
    insert into eo.child (note) values (new.note) returning id, note;
create rule child_notify as on update to eo.child do also notify child_changed;
comment on view eo.v_barrier is 'a barrier';
comment on rule child_notify on eo.child is 'tell listeners';
grant select on eo.v_barrier to eo_reader;
create materialized view eo.mv_counts as select kind, count(*) as n from eo.events group by kind;
create unique index mv_counts_kind on eo.mv_counts (kind);
create materialized view eo.mv_empty as select id, code from eo.parent with no data;
comment on materialized view eo.mv_counts is 'events per kind';

create function eo.add(a int, b int default 1) returns int language sql immutable strict parallel safe
    as $$ select a + b $$;
create function eo.shout(x text) returns text language plpgsql security definer
    set search_path = eo, pg_temp cost 5 as $body$ begin return upper(x) || $q$'$q$; end $body$;
create function eo.doubled(i int) returns int language sql immutable begin atomic select i * 2; end;
create function eo.rows_of(p int) returns table (id bigint, code text) language sql stable rows 10
    as $$ select id, code from eo.parent where rank = p $$;
create procedure eo.bump(inout x int) language plpgsql as $$ begin x := x + 1; end $$;
create aggregate eo.mysum(int) (sfunc = int4pl, stype = int, initcond = '0');
create function eo.pair_eq(eo.pair, eo.pair) returns boolean language sql immutable as $$ select $1.a = $2.a $$;
create operator eo.=== (leftarg = eo.pair, rightarg = eo.pair, function = eo.pair_eq, commutator = operator(eo.===));
create function eo.pair_text(eo.pair) returns text language sql immutable as $$ select $1.a || ':' || $1.b $$;
create cast (eo.pair as text) with function eo.pair_text(eo.pair) as assignment;
comment on function eo.add(int, int) is 'adds';
comment on procedure eo.bump(int) is 'bumps';
comment on aggregate eo.mysum(int) is 'sums';
comment on operator eo.=== (eo.pair, eo.pair) is 'same a';
grant execute on function eo.add(int, int) to eo_reader;

create function eo.touch() returns trigger language plpgsql as $$
begin new.note := coalesce(new.note, '') || ''; return new; end $$;
create function eo.stmt_log() returns trigger language plpgsql as $$ begin return null; end $$;
create trigger child_touch before insert or update of note on eo.child for each row
    when (new.note is distinct from 'skip') execute function eo.touch();
create trigger child_stmt after delete on eo.child for each statement execute function eo.stmt_log();
create constraint trigger child_check after insert on eo.child deferrable initially deferred
    for each row execute function eo.stmt_log();
create trigger child_off after update on eo.child for each row execute function eo.stmt_log();
alter table eo.child disable trigger child_off;
create trigger child_replica after insert on eo.child for each row execute function eo.stmt_log();
alter table eo.child enable replica trigger child_replica;
create trigger child_always after insert on eo.child for each row execute function eo.stmt_log();
alter table eo.child enable always trigger child_always;
create trigger events_row after insert on eo.events for each row execute function eo.stmt_log();
comment on trigger child_touch on eo.child is 'touches notes';

create sequence eo.standalone as int start 100 increment 7 minvalue 1 maxvalue 100000 cycle cache 3;
select setval('eo.standalone', 555, false);
create sequence eo.called start 5;
select nextval('eo.called'), nextval('eo.called');
create sequence eo.owned_by_hand;
alter sequence eo.owned_by_hand owned by eo.child.other_id;
select setval('eo.owned_by_hand', 42);
comment on sequence eo.standalone is 'not owned';
grant usage on sequence eo.standalone to eo_reader;

create statistics eo.parent_stats (dependencies, ndistinct, mcv) on rank, room from eo.parent;
alter statistics eo.parent_stats set statistics 300;
create statistics eo.kinds_expr on (i2 + 1), (lower(t)) from eo.kinds;
comment on statistics eo.parent_stats is 'rank and room';

create index kinds_partial on eo.kinds (i2) where i2 > 100;
create index kinds_expr on eo.kinds (lower(t) collate "C", (i2 * 2) desc nulls last);
create index kinds_covering on eo.kinds (i8) include (n, vc);
create index kinds_jsonb on eo.kinds using gin (jb);
create index kinds_trgm on eo.kinds using gin (t gin_trgm_ops);
create index kinds_range on eo.kinds using gist (ra);
create index kinds_brin on eo.kinds using brin (tstz) with (pages_per_range = 16);
create index kinds_hash on eo.kinds using hash (u);
create index kinds_ltree on eo.kinds using gist (lt);
create unique index child_note_once on eo.child (note) with (fillfactor = 50);
comment on index eo.kinds_trgm is 'trigram search';
alter table eo.kinds cluster on kinds_covering;
alter table eo.secrets replica identity using index secrets_pkey;
alter table eo.scratch replica identity full;
alter table eo.animal replica identity nothing;

create server eo_srv foreign data wrapper postgres_fdw
    options (host '/nonexistent', dbname 'remote', fetch_size '500');
create user mapping for eo_owner server eo_srv options (user 'remote_owner', password 'remote-secret');
create user mapping for public server eo_srv options (user 'remote_public');
create foreign table eo.remote_things (id int options (column_name 'thing_id'), name text not null)
    server eo_srv options (schema_name 'public', table_name 'things');
comment on server eo_srv is 'a remote server';
comment on foreign table eo.remote_things is 'lives elsewhere';
grant select on eo.remote_things to eo_reader;

create publication eo_pub_tables for table eo.parent (id, code, rank) where (rank > 5), eo.child
    with (publish = 'insert, update');
comment on publication eo_pub_tables is 'some tables';
reset role;
alter publication eo_pub_tables owner to eo_writer;
create publication eo_pub_schema for tables in schema "Weird ""Schema""";
create publication eo_pub_all for all tables with (publish_via_partition_root = true);
'''

LOB_SQL = f"""
select lo_from_bytea(0, '\\x{LOB_A.hex()}'::bytea) as a \\gset
select lo_from_bytea(0, '\\x{LOB_B.hex()}'::bytea) as b \\gset
select lo_create(0) as empty \\gset
alter large object :a owner to eo_owner;
alter large object :b owner to eo_writer;
grant select on large object :a to eo_reader;
grant select, update on large object :b to eo_owner with grant option;
comment on large object :a is 'every byte';
-- pg_read_all_data does not cover large objects in PostgreSQL 15 (docs/repository-config.md)
grant select on large object :a, :b, :empty to {BACKUP_ROLE};
update eo.kinds set o = :a where id = 10;
select :a || ' ' || :b || ' ' || :empty;
"""

SUBSCRIPTION_NOTE = ("subscriptions not in the backup: eo_sub (pg_dump dumps subscriptions only as a superuser); "
                     "after a restore re-create them with CREATE SUBSCRIPTION ... WITH (connect = false), "
                     "or run the backup as a superuser")

SUBSCRIPTION_SQL = """
create subscription eo_sub connection 'host=/nonexistent dbname=publisher' publication eo_pub_all
    with (connect = false, slot_name = none, enabled = false);
"""

# --- what is compared --------------------------------------------------------------------------------

_RELATIONS = """
select format('%I.%I', n.nspname, c.relname), c.relkind, c.relispopulated from pg_class c
join pg_namespace n on n.oid = c.relnamespace
where c.relkind in ('r', 'p', 'm') and n.nspname not in ('pg_catalog', 'information_schema')
  and n.nspname not like 'pg\\_toast%'
order by 1
"""


def relation_checksums(c: Cluster) -> dict[str, str]:
    """Every table, partition, partitioned table and matview: row count and md5 of its rows (ONLY itself for
    tables, so each partition and inheritance child is checked on its own; an unpopulated matview says so)."""
    out: dict[str, str] = {}
    for line in c.psql(_RELATIONS, DB).splitlines():
        name, kind, populated = line.split("|")
        if kind == "m" and populated == "f":
            out[name] = "not populated"
            continue
        only = "only " if kind == "r" else ""
        out[name] = c.psql(f"select count(*) || ' ' || md5(coalesce(string_agg(x::text, '|' order by x::text), '')) "
                           f"from {only}{name} x", DB)
    return out


def lines(c: Cluster, expr: str, rest: str, db: str = "postgres") -> str:
    """One text line per row of `select expr rest`, sorted: the comparison does not depend on oids."""
    return c.psql(f"select string_agg(e, E'\\n' order by e) from (select ({expr})::text as e {rest}) s", db)


def sequence_state(c: Cluster) -> str:
    # log_cnt is left out: it is WAL pre-allocation (setval resets it to 0), not the sequence's value.
    rows = [lines(c, "row(schemaname, sequencename, sequenceowner, data_type, start_value, min_value, max_value, "
                     "increment_by, cycle, cache_size, last_value)", "from pg_sequences", DB)]
    for name in c.psql("select format('%I.%I', schemaname, sequencename) from pg_sequences order by 1", DB).splitlines():
        rows.append(name + " " + c.psql(f"select last_value || ' ' || is_called from {name}", DB))
    return "\n".join(rows)


def large_objects(c: Cluster) -> str:
    return lines(c, "row(m.oid, pg_get_userbyid(m.lomowner), m.lomacl, md5(lo_get(m.oid)), "
                    "obj_description(m.oid, 'pg_largeobject'))", "from pg_largeobject_metadata m", DB)


def role_catalog(c: Cluster) -> dict[str, str]:
    return {
        # Every column of pg_authid but its oid (password hashes included: they must survive).
        "roles": lines(c, "row(a.rolname, a.rolsuper, a.rolinherit, a.rolcreaterole, a.rolcreatedb, a.rolcanlogin, "
                          "a.rolreplication, a.rolbypassrls, a.rolconnlimit, a.rolpassword, a.rolvaliduntil)",
                       "from pg_authid a where a.rolname not like 'pg\\_%'"),
        "memberships": lines(c, "row(m.roleid::regrole, m.member::regrole, m.grantor::regrole, m.admin_option)",
                             "from pg_auth_members m"),
        "settings": lines(c, "row(d.datname, r.rolname, s.setconfig)",
                          "from pg_db_role_setting s left join pg_database d on d.oid = s.setdatabase "
                          "left join pg_roles r on r.oid = s.setrole"),
        "comments": lines(c, "row(r.rolname, shobj_description(r.oid, 'pg_authid'))",
                          "from pg_roles r where shobj_description(r.oid, 'pg_authid') is not null"),
    }


def database_catalog(c: Cluster) -> str:
    return lines(c, "row(d.datname, pg_get_userbyid(d.datdba), pg_encoding_to_char(d.encoding), d.datlocprovider, "
                    "d.datistemplate, d.datallowconn, d.datconnlimit, d.datcollate, d.datctype, d.daticulocale, "
                    "d.datacl, shobj_description(d.oid, 'pg_database'))", f"from pg_database d where d.datname = '{DB}'")


def schema_dump(c: Cluster) -> str:
    out = subprocess.run([str(PG_BIN / "pg_dump"), "-h", str(c.socket_dir), "-p", str(c.port), "-U", "postgres",
                          "--schema-only", "--create", "-d", DB], capture_output=True, text=True, check=True)
    # pg_dump 15.14+ fences its script with `\restrict KEY` / `\unrestrict KEY`, a random key per run.
    return re.sub(r"^\\(un)?restrict \S+$", r"\\\1restrict KEY", out.stdout, flags=re.M)


def test_every_kind_of_object_survives_backup_and_restore_into_a_fresh_cluster(
    pg_base: Path, pg_template: Path, tmp_path: Path, s3_server: S3Endpoint, s3_bucket: str,  # noqa: F811
) -> None:
    t_start = time.monotonic()
    src = fresh_cluster(pg_base, pg_template, "eo-source")
    target: Cluster | None = None
    try:
        run_sql(src, GLOBALS_SQL)
        run_sql(src, SUPERUSER_SQL, DB)
        run_sql(src, OWNER_SQL, DB)
        lob_oids = [int(x) for x in run_sql(src, LOB_SQL, DB).split()]
        run_sql(src, SUBSCRIPTION_SQL, DB)
        run_sql(src, "analyze; refresh materialized view eo.mv_counts;", DB)

        cfg = write_config(tmp_path / "repo.yaml", src, dbs=[DB], local=tmp_path / "repo",
                           s3={"bucket": s3_bucket, "prefix": "eo", "endpoint_url": s3_server.url})
        proc = backup(cfg)
        assert proc.returncode == 0, proc.stderr
        st = status(tmp_path)
        assert st["targets"][DB]["published"] == ["local", "s3"]
        # The one thing a non-superuser's dump cannot carry is said at backup time, with what to do.
        assert st["targets"][DB]["notes"] == [SUBSCRIPTION_NOTE]
        assert f"backup: {DB}: {SUBSCRIPTION_NOTE}" in proc.stderr

        fetched = run_action("fetch-latest-backup", {"config": str(cfg), "db": DB, "dest": str(tmp_path / "restore"),
                                                     "from": "s3"})
        assert fetched.code == 0, fetched.stdout + fetched.stderr
        manifest = json.loads((Path(fetched.outputs["backup_dir"]) / "manifest.json").read_text())
        assert manifest["notes"] == [SUBSCRIPTION_NOTE]
        assert manifest["user_mappings"] == "user_mappings.sql"
        (kept,) = (tmp_path / "repo").glob("clusters/*/logical/*/*/user_mappings.sql")
        assert kept.stat().st_mode & 0o007 == 0, oct(kept.stat().st_mode)  # as the dump itself: no other user
        assert manifest["row_counts"]["eo.kinds"] == 503 and manifest["row_counts"]["eo.events_2025_a"] > 0

        target = fresh_cluster(pg_base, pg_template, "eo-target")
        restored = run_action("restore-logical", {"backup_dir": fetched.outputs["backup_dir"], "db": DB, "jobs": 2},
                              env=target.env)
        assert restored.code == 0, restored.stdout + restored.stderr
        assert "--create" in restored.stdout
        assert f"note: the backup says: {SUBSCRIPTION_NOTE}" in restored.stdout
        assert "user mappings' options restored: 2 mappings" in restored.stdout
        assert "remote-secret" not in restored.stdout + restored.stderr

        want_dump, got_dump = schema_dump(src), schema_dump(target)
        # The subscription is the one object a non-superuser's pg_dump leaves out (the notes above say so and
        # what to do): it is taken out of the source's dump, and only it.
        sub_entry = re.compile(r"--\n-- Name: eo_sub; Type: SUBSCRIPTION;.*?ALTER SUBSCRIPTION eo_sub OWNER TO postgres;\n\n",
                               re.S)
        assert len(sub_entry.findall(want_dump)) == 1 and "eo_sub" not in got_dump
        want_dump = sub_entry.sub("", want_dump)
        (tmp_path / "source.sql").write_text(want_dump)
        (tmp_path / "restored.sql").write_text(got_dump)
        assert got_dump == want_dump, "".join(difflib.unified_diff(
            want_dump.splitlines(True), got_dump.splitlines(True), "source", "restored", n=2))[:6000]
        want_rels = relation_checksums(src)
        assert relation_checksums(target) == want_rels
        # Not vacuous: every partition level, inheritance child, the unlogged table and both matviews are there.
        assert len(want_rels) == 26, sorted(want_rels)
        assert want_rels["eo.kinds"].startswith("503 ") and want_rels["eo.mv_empty"] == "not populated"
        assert want_rels["eo.events"].startswith("2000 ") and want_rels["eo.robot_dog"].startswith("1 ")
        assert all(not v.startswith("0 ") for v in want_rels.values()), want_rels
        want_seqs = sequence_state(src)
        assert sequence_state(target) == want_seqs
        assert "eo.standalone 555 false" in want_seqs and "eo.owned_by_hand 42 true" in want_seqs
        want_lobs = large_objects(src)
        assert large_objects(target) == want_lobs
        assert len(lob_oids) == 3 and len(want_lobs.splitlines()) == 3
        assert hashlib.md5(LOB_A).hexdigest() in want_lobs and hashlib.md5(LOB_B).hexdigest() in want_lobs
        want_roles = role_catalog(src)
        assert role_catalog(target) == want_roles
        assert "SCRAM-SHA-256$" in want_roles["roles"] and "eo_admin" in want_roles["memberships"]
        assert "statement_timeout=5s" in want_roles["settings"] and "work_mem=3MB" in want_roles["settings"]
        want_db = database_catalog(src)
        assert database_catalog(target) == want_db
        assert want_db.startswith(f"({DB},eo_owner,UTF8,i,f,t,50,C.UTF-8,C.UTF-8,de-DE,")
    finally:
        src.stop()
        if target is not None:
            target.stop()
    assert time.monotonic() - t_start < 60


def test_a_user_mapping_that_cannot_be_restored_is_reported_without_its_password(pg_cluster: Cluster) -> None:
    from steps.pg.tools import Conn
    from steps.restore_logical import _restore_user_mappings

    sql = "ALTER USER MAPPING FOR PUBLIC SERVER nowhere OPTIONS (SET password 'hunter2-secret' oops);\n"
    conn = Conn(str(pg_cluster.socket_dir), pg_cluster.port, "postgres")
    problem = _restore_user_mappings(conn, "postgres", sql)
    assert problem is not None and "syntax error" in problem and "42601" in problem
    assert "hunter2" not in problem
