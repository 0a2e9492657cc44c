"""manifest.json, version 1, and the verification records beside it.

A backup without a complete manifest does not exist: the manifest is written last and never changed.
Each check of a backup is a verification record (`verifications/<UTC timestamp>.json`); a backup's level in
one repository is the highest level among its passed records (newer than its latest failed one: a failed
check demotes the backup until a later check passes again): `checksummed` (every object re-read from the
repository matches its sha256) < `readable` (checksummed, and `pg_restore -f /dev/null` read every table's
data) < `restored` (restored into a scratch cluster and checked). The drill and PITR issues read these too,
so fields are only ever added.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
from datetime import datetime
from enum import IntEnum
from typing import TYPE_CHECKING, Any, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    SerializerFunctionWrapHandler,
    field_validator,
    model_serializer,
    model_validator,
)

from steps.fs import UnsafePath, check_relative

FORMAT_VERSION = 1


class Level(IntEnum):
    none = 0
    checksummed = 1
    readable = 2
    restored = 3

    @classmethod
    def parse(cls, text: str) -> Level:
        try:
            return cls[text]
        except KeyError:
            return cls.none


class _Record(BaseModel):
    # Reading is lenient about fields added by later versions; writing emits exactly the model.
    model_config = ConfigDict(extra="ignore")


def backup_path(value: str, what: str = "object path") -> str:
    """A path from a manifest: data naming a file inside its backup, never a place. Plain relative (no `..`,
    nothing absolute, no NUL: steps.fs.check_relative), no part starting with a dot (the tool's own names:
    temporary files, the fetch stamp) and not the manifest itself. ValueError otherwise, so that the manifest
    does not parse and the backup is unusable by name, before anything is opened."""
    try:
        check_relative(value, what)
    except UnsafePath as e:
        raise ValueError(e.message) from None
    if any(part.startswith(".") for part in value.split("/")):
        raise ValueError(f"{what} {value!r} has a part starting with '.' (names the tool keeps for itself)")
    if value == "manifest.json":
        raise ValueError(f"{what} {value!r} would replace the manifest")
    return value


def _drop_none(data: dict[str, Any], keys: tuple[str, ...]) -> dict[str, Any]:
    return {k: v for k, v in data.items() if not (k in keys and v is None)}


class ObjectEntry(_Record):
    path: str = Field(description="Relative to the backup's directory, with / (checked: steps.repository.manifest."
                                  "backup_path)")
    size: int = Field(ge=0, description="Of the plaintext (what the backup holds)")
    sha256: str = Field(pattern=r"^[0-9a-f]{64}$", description="Of the plaintext")
    stored_size: int | None = Field(None, ge=0, description="Encrypted repositories: the size of the stored "
                                    "object (`<path>.age`); absent in a repository that stores the plaintext")
    stored_sha256: str | None = Field(None, pattern=r"^[0-9a-f]{64}$", description="Encrypted repositories: the "
                                      "sha256 of the stored bytes, checked before anything is decrypted")

    @field_validator("path")
    @classmethod
    def _path_is_data(cls, v: str) -> str:
        return backup_path(v)

    @model_validator(mode="after")
    def _stored_together(self) -> ObjectEntry:
        if (self.stored_size is None) != (self.stored_sha256 is None):
            raise ValueError(f"object {self.path!r} has only one of stored_size and stored_sha256")
        return self

    @model_serializer(mode="wrap")
    def _plain_stays_as_before(self, handler: SerializerFunctionWrapHandler) -> dict[str, Any]:
        # A repository that stores the plaintext writes the manifest exactly as before encryption existed.
        return _drop_none(handler(self), ("stored_size", "stored_sha256"))


class Encryption(_Record):
    """How a repository stores a backup's objects: each one age-encrypted (steps.repository.encrypted) to the
    data recipient of `epoch` (steps.crypto.epochs), under its path + `.age`."""

    format: Literal["age"] = "age"
    epoch: str = Field(pattern=r"^[0-9]{8}T[0-9]{6}Z-[0-9a-f]{8}$", description="The key epoch of the repository "
                       "(encryption/epochs/<epoch>/): its wrapped data key opens every object")
    recipients: list[str] = Field(default_factory=list, description="Whom the epoch's data key was wrapped for when "
                                  "the backup was written (a rotation adds wraps later: `runbook keys list`)")

    @field_validator("recipients")
    @classmethod
    def _age_recipients(cls, v: list[str]) -> list[str]:
        # Only shown (backups, status, error messages), never encrypted to: still, nothing but the shape of a key.
        for r in v:
            if not re.fullmatch(r"age1[qpzry9x8gf2tvdw0s3jn54khce6mua7l]{58}", r):
                raise ValueError(f"encryption.recipients holds {r[:70]!r}, not an age public key")
        return v


class Tool(_Record):
    name: str = "runbook"
    version: str


class _Backup(_Record):
    """A backup's manifest: its stored objects (each manifest declares the field itself, where its JSON has it)."""

    if TYPE_CHECKING:
        objects: list[ObjectEntry]

    encryption: Encryption | None = Field(None, description="Absent: the objects are stored as they are; else how "
                                          "this repository encrypted them (each repository's manifest says its own)")

    @model_validator(mode="after")
    def _stored_sizes_iff_encrypted(self) -> _Backup:
        for o in self.objects:
            if (o.stored_sha256 is None) != (self.encryption is None):
                raise ValueError(f"object {o.path!r} " + ("has no stored_sha256 in an encrypted backup"
                                 if self.encryption is not None else "has a stored_sha256 but the backup says no "
                                 "encryption"))
        return self

    @model_serializer(mode="wrap")
    def _plain_stays_as_before(self, handler: SerializerFunctionWrapHandler) -> dict[str, Any]:
        data = handler(self)
        enc = data.pop("encryption", None)  # declared here, written last: after the fields every manifest had
        return data if enc is None else {**data, "encryption": enc}

    @property
    def encrypted(self) -> bool:
        return self.encryption is not None

    def stored_key(self, o: ObjectEntry) -> str:
        """The key of `o` under the backup's prefix: its path, + `.age` when encrypted."""
        from steps.repository.layout import ENCRYPTED_SUFFIX

        return o.path + ENCRYPTED_SUFFIX if self.encryption is not None else o.path

    @property
    def stored_bytes(self) -> int:
        return sum(o.stored_size if o.stored_size is not None else o.size for o in self.objects)

    @model_validator(mode="after")
    def _objects_distinct(self) -> _Backup:
        # One file per path, and no object inside another (a path that is both a file and a directory).
        seen: set[str] = set()
        for o in self.objects:
            if o.path in seen:
                raise ValueError(f"object path {o.path!r} is listed twice")
            seen.add(o.path)
        for o in self.objects:
            parts = o.path.split("/")
            for i in range(1, len(parts)):
                if "/".join(parts[:i]) in seen:
                    raise ValueError(f"object path {o.path!r} lies inside the object {'/'.join(parts[:i])!r}")
        return self

    @property
    def size_bytes(self) -> int:
        return sum(o.size for o in self.objects)


class DatabaseSetting(_Record):
    role: str | None = Field(None, description="None: ALTER DATABASE SET; else ALTER ROLE role IN DATABASE SET")
    setting: str = Field(description="name=value, as in pg_db_role_setting")


class AclEntry(_Record):
    grantee: str = Field(description='A role name; "" for PUBLIC')
    privilege: str = Field(description="CREATE | CONNECT | TEMPORARY")
    grantable: bool = False


class DatabaseFacts(_Record):
    name: str
    system_identifier: str
    server_version: str
    server_version_num: int
    encoding: str
    collation: str
    ctype: str
    locale_provider: str = "libc"
    icu_locale: str | None = None
    owner: str
    size_bytes: int
    connection_limit: int = -1
    acl: list[AclEntry] | None = Field(None, description="The database's privileges; None: the defaults")
    settings: list[DatabaseSetting] = Field(default_factory=list)
    settings_path: str | None = Field(
        None, description="Encrypted repositories: the object holding `settings` (a JSON list of them, sealed like "
                          "every object: values can be secrets), `settings` then empty; absent where the "
                          "repository stores plaintext and in manifests written before it")

    @field_validator("settings_path")
    @classmethod
    def _settings_path_is_data(cls, v: str | None) -> str | None:
        return v if v is None else backup_path(v, "settings path")

    @model_validator(mode="after")
    def _settings_in_one_place(self) -> DatabaseFacts:
        if self.settings_path is not None and self.settings:
            raise ValueError("database.settings and database.settings_path are both set: the settings are either "
                             "in the manifest or in their object")
        return self

    @model_serializer(mode="wrap")
    def _plain_stays_as_before(self, handler: SerializerFunctionWrapHandler) -> dict[str, Any]:
        return _drop_none(handler(self), ("settings_path",))


SETTINGS_OBJECT = "settings.json"  # encrypted repositories: database.settings, sealed like every object


def settings_json(facts: DatabaseFacts) -> bytes:
    """The bytes of SETTINGS_OBJECT: {"salt", "settings": [{role, setting}, ...]}. The manifest keeps this
    object's plaintext sha256 in clear, so the random salt is what stops anyone from confirming a guessed
    setting value (or an empty list) by hashing candidates."""
    doc = {"salt": os.urandom(16).hex(), "settings": [s.model_dump(mode="json") for s in facts.settings]}
    return (json.dumps(doc, indent=2) + "\n").encode()


def parse_settings(data: bytes) -> list[DatabaseSetting]:
    """SETTINGS_OBJECT read back (its sha256 checked by the caller). ValueError when it is not such an object."""
    doc = _json(data)
    if not isinstance(doc, dict) or not isinstance(doc.get("settings"), list):
        raise ValueError('not a JSON object with a "settings" list')
    return [DatabaseSetting.model_validate(i) for i in doc["settings"]]


class DumpInfo(_Record):
    format: Literal["directory", "custom"] = "directory"
    path: str = "dump"
    compression: int = 1
    jobs: int = 1
    pg_dump_version: str = ""

    @field_validator("path")
    @classmethod
    def _path_is_data(cls, v: str) -> str:
        return backup_path(v, "dump path")


class GlobalsInfo(_Record):
    path: str = Field("globals.sql", description='"" when the backup has no globals')
    role_passwords: bool = True

    @field_validator("path")
    @classmethod
    def _path_is_data(cls, v: str) -> str:
        return v and backup_path(v, "globals path")


class LogicalManifest(_Backup):
    format_version: int = FORMAT_VERSION
    kind: Literal["logical"] = "logical"
    backup_id: str
    database: DatabaseFacts
    snapshot_time: datetime = Field(description="The recovery point: when the dump's snapshot was taken")
    started_at: datetime
    stopped_at: datetime
    dump: DumpInfo
    globals: GlobalsInfo
    row_counts: dict[str, int] = Field(description='Exact rows per table in the dump snapshot, "schema.table": '
                                                   "each table's own rows (steps.pg.rows)")
    row_counts_definition: str | None = Field(
        None, description='How the rows were counted: "own" (steps.pg.rows: count(*) FROM ONLY each table, '
                          "partitions counted, partitioned parents, foreign tables and materialized views not). "
                          'Absent in manifests written before it was named: they counted the same way, "own"')
    row_counts_skipped: dict[str, str] = Field(
        default_factory=dict, description="Relations not counted, with the reason (a foreign table's rows live "
                                          "elsewhere); absent in older manifests")
    objects: list[ObjectEntry]
    tool: Tool
    host: str = ""
    user_mappings: str | None = Field(
        None, description="A SQL file of ALTER USER MAPPING ... OPTIONS (ADD ...) that restore-logical runs after "
                          "pg_restore: the options pg_dump cannot see as a non-superuser (pg_user_mappings hides them)")
    notes: list[str] = Field(default_factory=list,
                             description="What this backup does not carry (e.g. subscriptions), said again at restore")

    @model_validator(mode="after")
    def _files_named_are_objects(self) -> LogicalManifest:
        # The SQL files a restore runs and the dump it reads are objects of the backup (their sha256 is
        # checked), never a file elsewhere on the restoring host.
        paths = {o.path for o in self.objects}
        if self.user_mappings is not None:
            backup_path(self.user_mappings, "user_mappings path")
            if self.user_mappings not in paths:
                raise ValueError(f"user_mappings path {self.user_mappings!r} is not one of the backup's objects")
        if self.database.settings_path is not None and self.database.settings_path not in paths:
            raise ValueError(f"settings path {self.database.settings_path!r} is not one of the backup's objects")
        if self.database.settings_path is not None and self.encryption is None:
            raise ValueError("database.settings_path is set but the backup says no encryption")
        if self.globals.path and self.globals.path not in paths:
            raise ValueError(f"globals path {self.globals.path!r} is not one of the backup's objects")
        if self.dump.format == "directory" and not any(p.startswith(self.dump.path + "/") for p in paths):
            raise ValueError(f"dump path {self.dump.path!r} holds none of the backup's objects")
        if self.dump.format == "custom" and self.dump.path not in paths:
            raise ValueError(f"dump path {self.dump.path!r} is not one of the backup's objects")
        return self


class FileEntry(_Record):
    path: str
    size: int
    sha256: str
    mode: int
    mtime: float


class FilesManifest(_Backup):
    format_version: int = FORMAT_VERSION
    kind: Literal["files"] = "files"
    backup_id: str
    source: str
    created_at: datetime
    files: list[FileEntry]
    objects: list[ObjectEntry]
    tool: Tool


class ClusterFacts(_Record):
    """The cluster a base backup is of (the whole cluster: every database)."""

    system_identifier: str
    server_version: str
    server_version_num: int
    data_checksums: bool = False
    size_bytes: int = Field(0, description="Sum of the sizes of the files in the server's backup_manifest")


class BaseBackupInfo(_Record):
    format: Literal["tar"] = "tar"
    compression: str = Field(description="pg_basebackup --compress, e.g. server-zstd:level=1, or none")
    wal_method: Literal["none", "stream"] = Field("none", description="none: the WAL comes from the archive")
    manifest_checksums: str = "SHA256"
    pg_basebackup_version: str = ""
    tablespaces: int = 0
    files: int = Field(0, description="Files in the server's backup_manifest")


class BaseManifest(_Backup):
    """A physical base backup (pg_basebackup, tar format) plus the WAL range it needs from the archive."""

    format_version: int = FORMAT_VERSION
    kind: Literal["base"] = "base"
    backup_id: str
    cluster: ClusterFacts
    timeline: int = Field(ge=1)
    start_lsn: str
    stop_lsn: str
    start_wal: str = Field(description="The first WAL segment the backup needs")
    stop_wal: str = Field(description="The last WAL segment the backup needs")
    wal_segment_size: int
    started_at: datetime = Field(description="Server time when the backup started (backup_label START TIME)")
    stopped_at: datetime = Field(description="Server time just after the backup stopped: the earliest target")
    backup: BaseBackupInfo
    objects: list[ObjectEntry]
    tool: Tool
    host: str = ""


class Check(_Record):
    name: str
    status: Literal["ok", "failed"]
    detail: str = ""


class VerificationRecord(_Record):
    format_version: int = FORMAT_VERSION
    backup_id: str
    level: str = Field(description="checksummed | readable | restored")
    passed: bool
    checked_at: datetime
    repository: str = Field(description="Which repository this record speaks for: local or s3")
    manifest_sha256: str = Field(description="The manifest this record vouches for")
    checks: list[Check]
    tool: Tool
    host: str = ""
    # Added by verify-backup (a test restore); absent from older records.
    kind: str | None = Field(None, description="logical | base: what was restored")
    duration_s: float | None = Field(None, description="The whole verification, seconds")
    timings: dict[str, float] = Field(default_factory=dict, description="Seconds per part: fetch_s, restore_s, "
                                      "checks_s (restore_s: how long the restore itself took)")
    restored_size_bytes: int | None = Field(None, description="Size of what the restore produced (the database, "
                                            "or the whole cluster for a base backup): scales the projected RTO")
    wal_replayed_bytes: int | None = Field(None, description="Base backups: WAL bytes the test restore replayed "
                                           "(redo start to redo done, from the server's log)")
    wal_replay_s: float | None = Field(None, description="Base backups: how long that replay took (the server's "
                                       "own redo timing): with the bytes, the replay rate the projected RTO of a "
                                       "PITR uses for the WAL archived since the base backup")

    @property
    def level_value(self) -> Level:
        return Level.parse(self.level) if self.passed else Level.none


def to_json(model: BaseModel) -> bytes:
    return (json.dumps(model.model_dump(mode="json"), indent=2, sort_keys=False) + "\n").encode()


def sha256_bytes(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def parse_logical(data: bytes) -> LogicalManifest:
    return LogicalManifest.model_validate(_json(data))


def parse_files(data: bytes) -> FilesManifest:
    return FilesManifest.model_validate(_json(data))


def parse_base(data: bytes) -> BaseManifest:
    return BaseManifest.model_validate(_json(data))


def parse_verification(data: bytes) -> VerificationRecord:
    return VerificationRecord.model_validate(_json(data))


def invalid_reason(e: Exception) -> str:
    """A manifest that did not parse, in one line: which field, and why (a pydantic error's own text is a
    screenful, with a URL)."""
    from pydantic import ValidationError

    if isinstance(e, ValidationError):
        parts = []
        for err in e.errors()[:3]:
            where = ".".join(str(x) for x in err.get("loc", ()))
            msg = str(err.get("msg", "")).removeprefix("Value error, ")
            parts.append(f"{where}: {msg}" if where else msg)
        return "; ".join(parts) + (f" (and {e.error_count() - 3} more)" if e.error_count() > 3 else "")
    return str(e).splitlines()[0] if str(e) else type(e).__name__


def _json(data: bytes) -> Any:
    return json.loads(data.decode("utf-8"))
