"""Paths from a repository are data: a manifest naming a place outside its backup does not parse, and a
download never writes through a link nor leaves a file that did not verify."""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any

import pytest
from pydantic import ValidationError

from steps.fs import UnsafePath, open_dir
from steps.repository.manifest import invalid_reason, parse_logical
from steps.repository.store import BadKey, CorruptObject, LocalStore, RepositoryError

SHA = "a" * 64


def logical(objects: list[dict[str, Any]], **more: Any) -> bytes:
    m: dict[str, Any] = {
        "backup_id": "20261201T020000Z",
        "database": {"name": "app", "system_identifier": "1", "server_version": "15", "server_version_num": 150000,
                     "encoding": "UTF8", "collation": "C", "ctype": "C", "owner": "postgres", "size_bytes": 1},
        "snapshot_time": "2026-12-01T02:00:00Z", "started_at": "2026-12-01T02:00:00Z",
        "stopped_at": "2026-12-01T02:00:05Z", "dump": {}, "globals": {}, "row_counts": {},
        "objects": objects, "tool": {"version": "t"}, **more}
    return json.dumps(m).encode()


GOOD = [{"path": "dump/toc.dat", "size": 1, "sha256": SHA}, {"path": "globals.sql", "size": 1, "sha256": SHA}]


def test_a_well_formed_manifest_parses() -> None:
    m = parse_logical(logical([*GOOD, {"path": "user_mappings.sql", "size": 1, "sha256": SHA}],
                              user_mappings="user_mappings.sql"))
    assert [o.path for o in m.objects] == ["dump/toc.dat", "globals.sql", "user_mappings.sql"]


@pytest.mark.parametrize("bad", ["../../x", "/etc/passwd", "dump/../../x", "dump//toc", "./globals.sql", "a\x00b",
                                 "dump\\..\\x", "", ".verified.json", "dump/.tmp-toc.dat-1", "manifest.json"])
def test_an_object_path_that_is_not_data_makes_the_manifest_unusable(bad: str) -> None:
    with pytest.raises(ValidationError) as err:
        parse_logical(logical([*GOOD, {"path": bad, "size": 1, "sha256": SHA}]))
    reason = invalid_reason(err.value)
    assert reason.startswith("objects.2.path: ") and "\n" not in reason and "pydantic" not in reason


@pytest.mark.parametrize("more", [
    {"user_mappings": "/root/secret.sql"},                  # a SQL file elsewhere on the restoring host
    {"user_mappings": "other.sql"},                         # not an object: its sha256 is never checked
    {"globals": {"path": "../globals.sql"}},
    {"globals": {"path": "elsewhere.sql"}},
    {"dump": {"path": "/var/lib/postgresql"}},
    {"dump": {"path": "nothing"}},
])
def test_files_a_restore_reads_are_objects_of_the_backup(more: dict[str, Any]) -> None:
    with pytest.raises(ValidationError):
        parse_logical(logical(GOOD, **more))


def test_an_object_listed_twice_or_inside_another_is_refused() -> None:
    with pytest.raises(ValidationError, match="listed twice"):
        parse_logical(logical([*GOOD, GOOD[1]]))
    with pytest.raises(ValidationError, match="inside the object"):
        parse_logical(logical([*GOOD, {"path": "globals.sql/x", "size": 1, "sha256": SHA}]))


def _store(tmp_path: Path, data: bytes) -> tuple[LocalStore, str, str]:
    store = LocalStore(tmp_path / "repo")
    store.check_access()
    src = tmp_path / "src"
    src.write_bytes(data)
    store.put_file("b/dump/toc.dat", src)
    return store, "b/dump/toc.dat", hashlib.sha256(data).hexdigest()


def test_fetch_beneath_writes_private_files_and_never_follows_a_link(tmp_path: Path) -> None:
    store, key, digest = _store(tmp_path, b"backup bytes")
    work = tmp_path / "work"
    work.mkdir(mode=0o700)
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    with open_dir(work) as fd:
        store.fetch_beneath(key, fd, "dump/toc.dat", size=12, sha256=digest)
        assert (work / "dump" / "toc.dat").read_bytes() == b"backup bytes"
        assert (work / "dump" / "toc.dat").stat().st_mode & 0o777 == 0o600
        assert (work / "dump").stat().st_mode & 0o777 == 0o700
        with pytest.raises(UnsafePath, match="exists already"):  # never replaces, unless told
            store.fetch_beneath(key, fd, "dump/toc.dat", size=12, sha256=digest)
        os.symlink(elsewhere, work / "linked")  # a directory on the way is a link
        with pytest.raises(UnsafePath):
            store.fetch_beneath(key, fd, "linked/toc.dat", size=12, sha256=digest)
        os.symlink(elsewhere / "victim", work / "leaf")  # the name itself is a link: replaced, not followed
        store.fetch_beneath(key, fd, "leaf", size=12, sha256=digest, replace=True)
        assert not (work / "leaf").is_symlink()
        # A mismatch leaves nothing, not even the temporary file.
        with pytest.raises(CorruptObject):
            store.fetch_beneath(key, fd, "bad", size=12, sha256="0" * 64)
        assert sorted(os.listdir(work)) == ["dump", "leaf", "linked"] and os.listdir(work / "dump") == ["toc.dat"]
        # A key that leaves the repository is refused before anything is opened or made.
        with pytest.raises(BadKey):
            store.fetch_beneath("b/../../x", fd, "new/x", size=1, sha256=SHA)
        assert not (work / "new").exists()
    assert os.listdir(elsewhere) == []


def test_fetch_file_refuses_a_bad_key_as_a_repository_error_before_opening_the_destination(tmp_path: Path) -> None:
    store, key, digest = _store(tmp_path, b"x")
    victim = tmp_path / "victim"
    victim.write_text("precious")
    for bad in ("b/../../../victim", "/etc/passwd", "b/\x00"):
        with pytest.raises(RepositoryError, match="bad repository key"):
            store.fetch_file(bad, victim, size=1, sha256=digest)
    assert victim.read_text() == "precious"
    # A link planted at the destination is replaced by the verified file, its target untouched.
    os.symlink(victim, tmp_path / "out")
    store.fetch_file(key, tmp_path / "out", size=1, sha256=digest)
    assert victim.read_text() == "precious" and (tmp_path / "out").read_bytes() == b"x"


ENC = {"epoch": "20261201T020000Z-1a2b3c4d", "recipients": []}
SEALED = [{**o, "stored_size": 2, "stored_sha256": SHA} for o in
          [*GOOD, {"path": "settings.json", "size": 1, "sha256": SHA}]]


def with_settings_path(path: str, settings: list[dict[str, Any]] | None = None) -> dict[str, Any]:
    d = json.loads(logical([]))["database"]
    return {**d, "settings_path": path, "settings": settings or []}


def test_sealed_settings_are_an_object_of_an_encrypted_backup() -> None:
    m = parse_logical(logical(SEALED, database=with_settings_path("settings.json"), encryption=ENC))
    assert m.database.settings_path == "settings.json" and m.database.settings == []


@pytest.mark.parametrize(("objects", "database", "encryption"), [
    (SEALED, with_settings_path("elsewhere.json"), ENC),             # not an object: its sha256 is never checked
    (SEALED, with_settings_path("../settings.json"), ENC),
    (SEALED, with_settings_path("settings.json", [{"role": None, "setting": "a=b"}]), ENC),  # both places
    ([*GOOD, {"path": "settings.json", "size": 1, "sha256": SHA}], with_settings_path("settings.json"), None),
])
def test_a_settings_path_that_is_not_a_sealed_object_of_the_backup_is_refused(
        objects: list[dict[str, Any]], database: dict[str, Any], encryption: dict[str, Any] | None) -> None:
    more: dict[str, Any] = {"database": database}
    if encryption is not None:
        more["encryption"] = encryption
    with pytest.raises(ValidationError):
        parse_logical(logical(objects, **more))


def test_a_plaintext_manifest_with_settings_is_written_as_before() -> None:
    from steps.repository.manifest import to_json

    d = json.loads(logical([]))["database"]
    d["settings"] = [{"role": None, "setting": "app.api_key=x"}, {"role": "r", "setting": "work_mem=8MB"}]
    m = parse_logical(logical(GOOD, database=d))
    out = to_json(m)
    assert b"settings_path" not in out and b"encryption" not in out
    assert json.loads(out)["database"]["settings"] == d["settings"]
    assert to_json(parse_logical(out)) == out


def test_the_sealed_settings_carry_a_salt_so_their_clear_sha256_confirms_no_guess() -> None:
    from steps.repository.manifest import DatabaseFacts, DatabaseSetting, parse_settings, settings_json

    facts = DatabaseFacts.model_construct(settings=[DatabaseSetting(role=None, setting="app.api_key=guessable")])
    empty = DatabaseFacts.model_construct(settings=[])
    a, b = settings_json(facts), settings_json(facts)
    assert a != b and hashlib.sha256(a).digest() != hashlib.sha256(b).digest()
    assert settings_json(empty) != settings_json(empty)
    assert parse_settings(a) == parse_settings(b) == facts.settings
    with pytest.raises(ValueError, match="settings"):
        parse_settings(b'[{"role": null, "setting": "a=b"}]')
