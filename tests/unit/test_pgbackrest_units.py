"""engine: pgbackrest, without a server: the config block (every mistake names its key, secrets never shown), the
command line and environment pgBackRest is run with, and its info JSON read, hostile or garbled JSON refused
with a clear error (a fake executable prints it)."""

from __future__ import annotations

import copy
import json
import os
import shutil
import stat
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from runbook.errors import InvalidFile, UsageError
from steps.engines import engine_for
from steps.engines.own import OwnEngine
from steps.engines.pgbackrest.engine import PgBackRestEngine
from steps.engines.pgbackrest.info import newest_archived_at, parse_info
from steps.engines.pgbackrest.runner import PgBackRestError, argv, env, error_line, info, run, stanza_object
from steps.engines.pgbackrest.settings import PgBackRestSettings, settings_from
from steps.repository.config import load_repository_config
from tests.support.pgbackrest import pgbackrest_exe

SECRET = "s3cr3t-value-never-shown"


def _load(tmp_path: Path, body: str):  # type: ignore[no-untyped-def]
    cfg = tmp_path / "repo.yaml"
    cfg.write_text(f"version: 1\nlocal: {{path: {tmp_path / 'repo'}}}\n{body}")
    cfg.chmod(0o600)
    return load_repository_config(cfg)[0]


def test_the_default_engine_is_the_products_own_and_pgbackrest_takes_its_block(tmp_path: Path) -> None:
    cfg = _load(tmp_path, "")
    assert cfg.engine == "own" and cfg.pgbackrest is None
    assert isinstance(engine_for(cfg), OwnEngine)
    cfg = _load(tmp_path, "engine: pgbackrest\npgbackrest:\n  stanza: main\n  config: /etc/pgbackrest/pgbackrest.conf\n"
                          f"  options: {{repo1-path: /var/lib/pgbackrest, pg1-port: 5433, archive-async: true, "
                          f"repo1-s3-key-secret: {SECRET}}}\n  user: postgres\n  timeout_s: 60\n")
    s = settings_from(cfg)
    assert (s.stanza, s.config, s.executable, s.user, s.timeout_s) == (
        "main", Path("/etc/pgbackrest/pgbackrest.conf"), "pgbackrest", "postgres" if os.geteuid() == 0 else None, 60)
    assert s.options == {"repo1-path": "/var/lib/pgbackrest", "pg1-port": "5433", "archive-async": "y",
                         "repo1-s3-key-secret": SECRET}
    assert SECRET not in repr(s) and SECRET not in str(s.shown()) and "********" in repr(s)
    engine = engine_for(cfg)
    assert isinstance(engine, PgBackRestEngine) and engine.name == "pgbackrest"


@pytest.mark.parametrize(("body", "message"), [
    ("engine: pgbackrest\n", "engine: pgbackrest needs a pgbackrest: block"),
    ("pgbackrest: {stanza: main}\n", "pgbackrest: is set but engine is own"),
    ("engine: pgbackrest\npgbackrest: {}\n", "missing required key \"stanza\" in pgbackrest"),
    ("engine: pgbackrest\npgbackrest: {stanza: '../etc'}\n", "pgbackrest.stanza"),
    ("engine: pgbackrest\npgbackrest: {stanza: main, config: pgbackrest.conf}\n", "pgbackrest.config must be an absolute"),
    ("engine: pgbackrest\npgbackrest: {stanza: main, options: {Repo1_Path: /x}}\n", "'Repo1_Path' is not a pgBackRest option"),
    ("engine: pgbackrest\npgbackrest: {stanza: main, options: {'--repo1-path': /x}}\n", "is not a pgBackRest option"),
    ("engine: pgbackrest\npgbackrest: {stanza: main, options: {stanza: other}}\n", "options.stanza is set by pgbackrest.stanza"),
    ("engine: pgbackrest\npgbackrest: {stanza: main, options: {repo1-s3-key-secret: [" + SECRET + "]}}\n",
     "options.repo1-s3-key-secret: expected text"),
    ("engine: pgbackrest\npgbackrest: {stanza: main, options: {repo1-cipher-pass: \"a\\nb" + SECRET + "\"}}\n",
     r"repo1-cipher-pass: the value \(not shown\) holds a line break"),
    ("engine: pgbackrest\npgbackrest: {stanza: main, executable: bin/pgbackrest}\n", "pgbackrest.executable must be"),
    ("engine: pgbackrest\npgbackrest: {stanza: main, timeout_s: 0}\n", "pgbackrest.timeout_s"),
    ("engine: pgbackrest\npgbackrest: {stanza: main, user: 'root; rm'}\n", "pgbackrest.user"),
    ("engine: pgbackrest\npgbackrest: {stanza: main, stanzas: x}\n", "stanzas"),
    ("engine: barman\n", "engine"),
])
def test_a_mistake_is_refused_naming_its_key(tmp_path: Path, body: str, message: str) -> None:
    with pytest.raises(InvalidFile, match=message) as e:
        _load(tmp_path, body)
    assert SECRET not in str(e.value)


def test_settings_of_a_config_without_pgbackrest_say_how_to_switch(tmp_path: Path) -> None:
    with pytest.raises(UsageError, match="does not use pgBackRest") as e:
        settings_from(_load(tmp_path, ""))
    assert "docs/pgbackrest.md" in str(e.value)


def _settings(**kw: Any) -> PgBackRestSettings:
    base: dict[str, Any] = dict(stanza="main", config=None, options={}, executable=pgbackrest_exe(), user=None,
                                timeout_s=60.0)
    return PgBackRestSettings(**(base | kw))


def test_only_the_options_a_command_takes_go_on_its_command_line_and_secrets_never() -> None:
    s = _settings(config=Path("/etc/pgbackrest/x.conf"),
                  options={"repo1-path": "/r", "pg1-path": "/d", "pg1-socket-path": "/s", "archive-timeout": "20",
                           "repo1-s3-key-secret": SECRET, "repo1-cipher-pass": SECRET + "2"})
    inf = argv(s, "info", "--output=json")
    assert inf[-2:] == ["info", "--output=json"]
    assert "--stanza=main" in inf and "--config=/etc/pgbackrest/x.conf" in inf and "--repo1-path=/r" in inf
    assert not any(a.startswith(("--pg1-", "--archive-timeout")) for a in inf)  # info refuses them (its help)
    bk = argv(s, "backup", "--type=incr")
    assert {"--pg1-path=/d", "--pg1-socket-path=/s", "--archive-timeout=20", "--repo1-path=/r"} <= set(bk)
    for cmd in (inf, bk):
        assert not any(SECRET in a for a in cmd)
    restore = argv(s, "restore", "--pg1-path=/scratch/data", "--type=immediate")
    assert "--pg1-path=/scratch/data" in restore and "--pg1-path=/d" not in restore  # given: it replaces
    e = env(s)
    assert e["PGBACKREST_REPO1_S3_KEY_SECRET"] == SECRET and e["PGBACKREST_REPO1_CIPHER_PASS"] == SECRET + "2"
    if os.geteuid() == 0:
        assert argv(_settings(user="postgres"), "info")[:4][1:] == ["-u", "postgres", "--"]


def _fake(tmp_path: Path, stdout: str, code: int = 0, stderr: str = "") -> str:
    """An executable in place of pgbackrest that prints `stdout` (and `stderr`) to anything but `help`."""
    exe = tmp_path / "fake-pgbackrest"
    (tmp_path / "out.txt").write_text(stdout)
    (tmp_path / "err.txt").write_text(stderr)
    exe.write_text(f"#!/bin/sh\n[ \"$1\" = help ] && exit 0\ncat {tmp_path / 'out.txt'}\ncat {tmp_path / 'err.txt'} >&2\n"
                   f"exit {code}\n")
    exe.chmod(stat.S_IRWXU | stat.S_IRGRP | stat.S_IXGRP | stat.S_IROTH | stat.S_IXOTH)
    os.chmod(tmp_path, 0o755)
    return str(exe)


@pytest.mark.parametrize(("printed", "message"), [
    ("not json at all", "did not print JSON"),
    ('{"name": "main"}', "expected a list of stanza objects, got dict"),
    ('[{"name": "other"}]', "no stanza objects named 'main'"),
    ("[" * 100000 + "]" * 100000, "did not print JSON"),
], ids=["text", "object", "other-stanza", "deep"])
def test_garbled_info_from_a_fake_executable_is_a_clear_error(tmp_path: Path, printed: str, message: str) -> None:
    s = _settings(executable=_fake(tmp_path, printed))
    with pytest.raises(PgBackRestError, match=message) as e:
        info(s)
    assert "hint" in str(e.value) or "stanza" in str(e.value)


def test_a_failing_command_names_pgbackrests_own_error_line_and_masks_secrets(tmp_path: Path) -> None:
    err = (f"2026-12-07 12:00:00.000 P00  ERROR: [055]: unable to load info file '/r/archive/main/archive.info' "
           f"or '/r/archive/main/archive.info.copy': FileMissingError: stanza main does not exist {SECRET}\n")
    s = _settings(executable=_fake(tmp_path, "", 55, err), options={"repo1-cipher-pass": SECRET})
    with pytest.raises(PgBackRestError) as e:
        run(s, "check")
    assert e.value.code == 55
    assert "pgbackrest check failed: ERROR [055]: unable to load info file" in str(e.value)
    assert "stanza-create" in str(e.value.hint) and SECRET not in str(e.value)
    assert error_line("P00  ERROR: [031]: option 'pg-path' not valid for command 'info'") == (
        31, "option 'pg-path' not valid for command 'info'")
    with pytest.raises(PgBackRestError, match="'/nonexistent/pgbackrest' was not found") as e:
        run(_settings(executable="/nonexistent/pgbackrest"), "info")
    assert "apt-get install pgbackrest" in str(e.value.hint)


# What pgBackRest 2.45 printed for a stanza with a full and an incremental backup (its shape; values made up).
INFO: dict[str, Any] = {
    "archive": [{"database": {"id": 1, "repo-key": 1}, "id": "15-1", "max": "00000001000000000000000C",
                 "min": "000000010000000000000006"}],
    "backup": [
        {"archive": {"start": "000000010000000000000007", "stop": "000000010000000000000007"},
         "backrest": {"format": 5, "version": "2.45"}, "database": {"id": 1, "repo-key": 1}, "error": False,
         "info": {"delta": 22992506, "repository": {"delta": 3043109, "size": 3043109}, "size": 22992506},
         "label": "20261207-122038F", "lsn": {"start": "0/700028", "stop": "0/700100"}, "prior": None,
         "reference": None, "timestamp": {"start": 1796646038, "stop": 1796646040}, "type": "full"},
        {"archive": {"start": "000000010000000000000008", "stop": "000000010000000000000009"},
         "backrest": {"format": 5, "version": "2.45"}, "database": {"id": 1, "repo-key": 1}, "error": False,
         "info": {"delta": 8456, "repository": {"delta": 429, "size": 3043108}, "size": 22992506},
         "label": "20261207-122038F_20261207-122040I", "lsn": {"start": "0/800028", "stop": "0/900050"},
         "prior": "20261207-122038F", "reference": ["20261207-122038F"],
         "timestamp": {"start": 1796646040, "stop": 1796646042}, "type": "incr"}],
    "cipher": "none", "db": [{"id": 1, "repo-key": 1, "system-id": 7716535969121143082, "version": "15"}],
    "name": "main", "repo": [{"cipher": "none", "key": 1, "status": {"code": 0, "message": "ok"}}],
    "status": {"code": 0, "lock": {"backup": {"held": False}}, "message": "ok"}}


def test_info_json_is_read_into_the_products_facts() -> None:
    st = parse_info(copy.deepcopy(INFO), "main")
    assert (st.status_code, st.system_identifier, st.pg_version, st.archive_id) == (0, "7716535969121143082", "15",
                                                                                    "15-1")
    incr, full = st.backups  # newest first
    assert (incr.label, incr.kind, incr.reference, incr.start_wal, incr.stop_lsn) == (
        "20261207-122038F_20261207-122040I", "incr", ("20261207-122038F",), "000000010000000000000008", "0/900050")
    assert full.kind == "full" and full.started_at == datetime.fromtimestamp(1796646038, UTC)
    assert full.stopped_at.tzinfo is not None and full.stored_bytes == 3043109 and full.size_bytes == 22992506
    assert (st.archive.min_wal, st.archive.max_wal) == ("000000010000000000000006", "00000001000000000000000C")
    doc = {".": {"type": "path"},
           "00000001000000000000000C-ea43170dbc8b535f23035178c7d12344e6d2998b.gz": {"type": "file", "time": 1796646100},
           "00000001000000000000000B-ea43170dbc8b535f23035178c7d12344e6d2998b.gz": {"type": "file", "time": 1796646200}}
    assert newest_archived_at(doc, "00000001000000000000000C") == datetime.fromtimestamp(1796646100, UTC)
    assert newest_archived_at(doc, "00000001000000000000000D") is None


def _bad(path: list[Any], value: Any) -> dict[str, Any]:
    doc = copy.deepcopy(INFO)
    obj: Any = doc
    for p in path[:-1]:
        obj = obj[p]
    if value is KeyError:
        del obj[path[-1]]
    else:
        obj[path[-1]] = value
    return doc


@pytest.mark.parametrize(("path", "value", "message"), [
    (["backup", 0, "label"], "../../etc/passwd", r"backup\[0\].label: '../../etc/passwd' is not"),
    (["backup", 0, "archive", "start"], "0000000100000000000000XX", r"backup\[0\].archive.start"),
    (["backup", 0, "lsn", "stop"], "0/7; drop", r"backup\[0\].lsn.stop"),
    (["backup", 0, "timestamp", "start"], "yesterday", r"backup\[0\].timestamp.start: expected int, got str"),
    (["backup", 0, "timestamp", "stop"], 10**15, r"backup\[0\].timestamp.stop: .* is not a time"),
    (["backup", 0, "timestamp", "stop"], 1796646000, r"backup\[0\].timestamp: stops before it starts"),
    (["backup", 0, "type"], "snapshot", r"backup\[0\].type: 'snapshot' is not one of full, diff, incr"),
    (["backup", 0, "info", "size"], -5, r"backup\[0\].info.size: -5 is negative"),
    (["backup", 0, "info", "size"], True, r"backup\[0\].info.size: expected int, got bool"),
    (["backup", 1, "reference"], ["/etc"], r"backup\[1\].reference\[0\]: not a backup label"),
    (["backup"], {"a": 1}, "stanza.backup: expected list, got dict"),
    (["backup", 0], "x", r"backup\[0\]: expected an object, got str"),
    (["db", 0, "system-id"], -1, "db.system-id: -1 is not a system identifier"),
    (["db", 0, "version"], "15; rm", "db.version"),
    (["archive", 0, "max"], "../x", r"archive\[0\].max"),
    (["archive", 0, "id"], "15-1/../..", r"archive\[0\].id"),
    (["status"], KeyError, "stanza.status: missing"),
])
def test_hostile_info_json_is_refused_naming_the_field(path: list[Any], value: Any, message: str) -> None:
    with pytest.raises(PgBackRestError, match=message) as e:
        parse_info(_bad(path, value), "main")
    assert "not used" in str(e.value) and "pgbackrest verify" in str(e.value.hint)


def test_a_backup_pgbackrest_marks_in_error_or_of_an_earlier_database_is_not_listed() -> None:
    st = parse_info(_bad(["backup", 1, "error"], True), "main")
    assert [b.label for b in st.backups] == ["20261207-122038F"]
    doc = copy.deepcopy(INFO)
    doc["db"].append({"id": 2, "repo-key": 1, "system-id": 7716535969121143999, "version": "15"})
    st = parse_info(doc, "main")
    assert st.backups == [] and st.system_identifier == "7716535969121143999" and st.archive.max_wal is None
    assert stanza_object(json.dumps([INFO]), "main")["name"] == "main"


def test_pgbackrest_is_installed_for_the_tests() -> None:
    assert shutil.which("pgbackrest") == pgbackrest_exe()


def _record(label: str, digest: str, passed: bool, level: str, at: datetime) -> Any:
    from steps.repository.manifest import Check, Tool, VerificationRecord

    return VerificationRecord(backup_id=label, level=level, passed=passed, checked_at=at, repository="local",
                              manifest_sha256=digest, checks=[Check(name="restore", status="ok" if passed else "failed")],
                              tool=Tool(version="test"), kind="base", timings={"restore_s": 2.5})


def test_the_products_records_about_pgbackrest_backups_live_under_its_own_prefix_signed(tmp_path: Path) -> None:
    from steps.engines.pgbackrest.records import (
        WHERE,
        entries,
        fingerprint,
        read_records,
        records_prefix,
        write_record,
    )
    from steps.repository.manifest import Level
    from steps.repository.signing import Trust, load_private_key, load_public_keys
    from steps.repository.store import LocalStore
    from tests.support.signing import make_keys

    st = parse_info(copy.deepcopy(INFO), "main")
    incr, full = st.backups
    sysid = st.system_identifier
    assert sysid is not None
    assert records_prefix(sysid, "main", full.label) == f"clusters/{sysid}/pgbackrest/main/{full.label}/"
    for bad in (("12a", "main", full.label), (sysid, "../x", full.label), (sysid, "main", "../../etc")):
        with pytest.raises(ValueError):
            records_prefix(*bad)
    assert fingerprint("main", full) != fingerprint("other", full) != fingerprint("main", incr)
    private, public = make_keys()
    signer, trust = load_private_key(private), Trust.of(load_public_keys([public]))
    store = LocalStore(tmp_path / "own")
    (tmp_path / "own").mkdir()
    t0 = datetime(2026, 12, 7, 12, 0, tzinfo=UTC)
    key = write_record(store, signer, sysid, "main", _record(full.label, fingerprint("main", full), True, "restored", t0))
    assert key.startswith(records_prefix(sysid, "main", full.label) + "verifications/")
    write_record(store, signer, sysid, "main", _record(incr.label, fingerprint("main", incr), False, "restored", t0))
    # a forged record (no signature) is refused, never counted
    forged = records_prefix(sysid, "main", incr.label) + "verifications/20261207T130000.000000Z.json"
    (tmp_path / "own" / forged).write_bytes((tmp_path / "own" / key).read_bytes().replace(full.label.encode(),
                                                                                           incr.label.encode()))
    recs = read_records([store], trust, sysid, "main")
    assert [r[1] for r in recs.refused] == [forged]
    listed = entries(st.backups, "main", [store], recs, 1 << 20)
    by = {e.backup_id: e for e in listed}
    assert by[full.label].level == Level.restored and by[incr.label].level == Level.none  # its test restore failed
    assert by[full.label].locations() == [WHERE]
    assert by[full.label].manifest.start_wal == full.start_wal  # type: ignore[union-attr]
    assert by[full.label].copies[WHERE].latest_record(Level.restored).timings["restore_s"] == 2.5  # type: ignore[union-attr]
    # with no record at all, a backup pgBackRest lists is readable
    assert entries(st.backups, "main", [store], read_records([], trust, sysid, "main"), None)[0].level == Level.readable


def test_the_wal_segment_size_is_told_by_the_backups_start_lsn_and_wal_file() -> None:
    from dataclasses import replace

    from steps.engines.pgbackrest.records import segment_size_of

    st = parse_info(copy.deepcopy(INFO), "main")
    incr, full = st.backups  # 0/800028 in ...08, 0/700028 in ...07: 1 MB segments
    assert segment_size_of(st.backups) == 1 << 20
    big = replace(full, start_lsn="2/3A000028", start_wal="00000001000000020000003A")  # 16 MB: 0x3A000028 // 16 MB
    assert segment_size_of([big]) == 16 << 20
    assert segment_size_of([replace(full, start_lsn="0/28", start_wal="000000010000000000000000")]) is None
    assert segment_size_of([big, full]) is None  # they disagree: not told
    assert segment_size_of([]) is None


def test_as_root_pgbackrest_runs_as_the_owner_of_the_data_directory(tmp_path: Path) -> None:
    from steps.engines.pgbackrest.settings import default_user

    if os.geteuid() != 0:
        assert default_user({"pg1-path": str(tmp_path)}, None) is None  # no switch: the current user
        return
    d = tmp_path / "data"
    d.mkdir()
    os.chown(d, 65534, 65534)
    import pwd

    nobody = pwd.getpwuid(65534).pw_name
    assert default_user({"pg1-path": str(d)}, None) == nobody
    assert default_user({}, str(d)) == nobody
    assert default_user({"pg1-path": "/nonexistent"}, None) == "postgres"
