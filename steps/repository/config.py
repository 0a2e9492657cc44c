"""The repository config: what to back up, where the backups live, how long they are kept.

One YAML file shared by `backup`, `backups`, `prune` and the recovery actions (`fetch-latest-backup`,
`restore-attachments`). It is loaded with `runbook.loader.load_model`, so every problem is reported
as `FILE:LINE:COL: message`; unknown keys are errors. Which file: `-c FILE`, else `$RUNBOOK_CONFIG`,
else `/etc/runbook/repository.yaml`; never the current directory (cron and systemd run elsewhere).

The reference for every key is docs/repository-config.md.
"""

from __future__ import annotations

import os
import re
import stat
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from runbook.errors import RunbookError, UsageError
from runbook.paths import CONFIG_ENV, DEFAULT_CONFIG, chosen_config_path


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class ClusterConfig(_Strict):
    """The PostgreSQL cluster being protected, reached by libpq conventions."""

    host: str | None = Field(None, description="Host name or socket directory (default: PGHOST)")
    port: int | None = Field(None, ge=1, le=65535, description="Port (default: PGPORT)")
    user: str | None = Field(None, description="Role the backup runs as (default: PGUSER); password from .pgpass")
    databases: list[str] = Field(default_factory=list, description="What `backup` dumps (`--db` overrides)")
    data_directory: str | None = Field(None, description="The cluster's data directory (base backups, PITR)")


class LocalConfig(_Strict):
    path: Path = Field(description="Directory of the local repository (absolute)")
    encrypt: bool = Field(False, description="Encrypt what is written here with age (encryption.recipients)")

    @model_validator(mode="after")
    def _absolute(self) -> LocalConfig:
        if not self.path.is_absolute():
            raise ValueError(f"local.path must be an absolute path, not {str(self.path)!r}")
        return self


class S3Config(_Strict):
    bucket: str = Field(min_length=3, max_length=63)
    prefix: str = Field("", description="Key prefix inside the bucket, e.g. assetflow")
    region: str | None = None
    endpoint_url: str | None = Field(None, description="MinIO, Ceph, any S3-compatible store")
    sse: Literal["AES256", "aws:kms"] | None = Field(None, description="Server-side encryption")
    sse_kms_key_id: str | None = Field(None, description="KMS key for sse: aws:kms (default: the bucket's)")
    encrypt: bool | None = Field(None, description="Encrypt what is written here with age on this host "
                                 "(default: true once encryption.recipients is set)")
    credentials_file: Path | None = Field(
        None, description="An AWS shared credentials file (else boto3's own chain); mode 0600 or 0640"
    )
    profile: str | None = Field(None, description="Profile in that file (default: default)")
    prune_credentials_file: Path | None = Field(
        None, description="Credentials `runbook prune` uses (may delete); the backup's need no delete right"
    )
    multipart_threshold_mb: int = Field(64, ge=5, description="Objects from this size are uploaded in parts")
    multipart_chunk_mb: int = Field(64, ge=5)
    max_concurrency: int = Field(4, ge=1, le=64, description="Parallel object transfers")
    range_get_mb: int = Field(0, ge=0, description="Objects of at least twice this size are fetched in parallel "
                              "ranged GETs of this size (max_concurrency at once); 0: one GET per object")
    max_attempts: int = Field(5, ge=1, le=20, description="Attempts per request on transient errors")
    connect_timeout_s: float = Field(10, gt=0)
    read_timeout_s: float = Field(60, gt=0)

    @model_validator(mode="after")
    def _kms(self) -> S3Config:
        if self.sse_kms_key_id and self.sse != "aws:kms":
            raise ValueError("sse_kms_key_id needs sse: aws:kms")
        return self

    @property
    def key_prefix(self) -> str:
        p = self.prefix.strip("/")
        return f"{p}/" if p else ""


class RetentionConfig(_Strict):
    keep_last: int = Field(7, ge=1, description="Keep the newest N backups of each database")
    keep_days: float = Field(7, ge=0, description="Keep every backup younger than this many days")


class AttachmentsConfig(_Strict):
    path: Path = Field(description="Directory of user-uploaded files captured by every backup")


class ChecksConfig(_Strict):
    expect_tables: list[str] = Field(default_factory=list)
    smoke: list[str] = Field(default_factory=list)


class BackupConfig(_Strict):
    jobs: int = Field(2, ge=1, le=64, description="pg_dump --jobs (directory format)")
    compression: int = Field(1, ge=0, le=9, description="pg_dump gzip level; 1 is ~4x faster than 6")
    max_size_drop: float = Field(
        0.5, ge=0, le=1, description="A dump smaller than the previous one by more than this share is a warning"
    )
    state_dir: Path | None = Field(None, description="Status JSON, log and lock (default: $XDG_STATE_HOME/runbook)")
    log_file: Path | None = Field(None, description="Default: <state_dir>/backup.log")
    status_file: Path | None = Field(None, description="Default: <state_dir>/backup-status.json")
    lock_dir: Path | None = Field(None, description="Default: <local.path>/locks, else <state_dir>/locks")
    staging_dir: Path | None = Field(None, description="Default: <local.path>/.staging, else a temp dir")


class BaseBackupSettings(_Strict):
    """`runbook basebackup`: pg_basebackup in tar format, compressed, its WAL from the archive."""

    compression: str = Field(
        "server-zstd:level=1", pattern=r"^(none|((server|client)-)?(gzip|lz4|zstd)(:[a-z0-9=,]+)?)$",
        description="pg_basebackup --compress; server-side zstd level 1 was the fastest and smallest measured "
                    "(docs/basebackup.md)")
    checkpoint: Literal["fast", "spread"] = Field("fast", description="pg_basebackup --checkpoint")
    wal_wait_s: float = Field(
        300, gt=0, description="How long to wait for the backup's WAL to reach the archive before failing")
    timeout_s: float = Field(6 * 3600, gt=0, description="The whole pg_basebackup run, at most")
    staging_dir: Path | None = Field(None, description="Default: <local.path>/.staging, else a temp dir")


class WalConfig(_Strict):
    """WAL archiving (`wal-push`, `wal-fetch`): compression, the asynchronous mode, fetch read-ahead."""

    compression: Literal["zstd"] = Field("zstd", description="How WAL is stored: zstd, chosen by measurement "
                                         "(bench/wal_bench.py: smaller and faster than gzip -1, smaller than lz4)")
    compression_level: int = Field(1, ge=1, le=19, description="zstd level; 1 is the fast one")
    async_: bool = Field(False, alias="async", description="Spool and upload in parallel by a background worker "
                         "(wal-push still confirms a segment only once every repository holds it)")
    spool_dir: Path | None = Field(None, description="Spool of the asynchronous mode and of fetch read-ahead, "
                                   "writable by the server's user (default: $XDG_STATE_HOME/runbook/wal-spool)")
    max_parallel: int = Field(4, ge=1, le=32, description="Segments the read-ahead of wal-fetch moves at once")
    push_ahead: int = Field(16, ge=1, le=64, description="Ready files the asynchronous uploader pushes at once, "
                            "ahead of PostgreSQL's calls for them (measured: bench/wal_bench.py)")
    push_timeout_s: float = Field(60, gt=0, le=3600, description="How long wal-push waits for its segment's upload")
    worker_idle_s: float = Field(120, gt=0, le=3600, description="A worker with nothing to do exits after this "
                                 "(longer than archive_timeout: a quiet server keeps its uploader warm)")
    prefetch: int = Field(8, ge=0, le=128, description="Segments wal-fetch reads ahead into the spool (0: off)")
    fetch_attempts: int = Field(3, ge=1, le=20, description="Attempts per repository before wal-fetch gives up "
                                "(exit 126: recovery stops rather than ending early)")

    @model_validator(mode="after")
    def _absolute(self) -> WalConfig:
        if self.spool_dir is not None and not self.spool_dir.is_absolute():
            raise ValueError(f"wal.spool_dir must be an absolute path, not {str(self.spool_dir)!r}")
        return self


class SigningConfig(_Strict):
    """Ed25519 signatures of what the backup side writes (steps.repository.signing; docs/repository-config.md)."""

    private_key: Path | None = Field(
        None, description="The private key this host signs with (backup, basebackup, verify-backup records, run "
                          "summaries): mode 0600, outside the repository; `runbook keys create --out PATH` makes one")
    public_keys: list[Path] = Field(
        default_factory=list, description="The public keys every reading host trusts: files (one `runbook-ed25519 "
                                          "...` line each) or directories of `*.pub` files; several for rotation")
    wal_private_key: Path | None = Field(
        None, description="The key the database host seals its archived WAL with (signed WAL ledgers, "
                          "docs/wal.md): owned by the server's user, mode 0600; its .pub among public_keys")

    @model_validator(mode="after")
    def _absolute(self) -> SigningConfig:
        for p in [k for k in (self.private_key, self.wal_private_key) if k] + list(self.public_keys):
            if not p.is_absolute():
                raise ValueError(f"signing paths must be absolute, not {str(p)!r}")
        return self


# An age X25519 recipient: "age1" and 58 bech32 characters (its checksum is checked by steps.crypto.age when the
# keys are loaded: this package does not import steps.crypto, which builds on it).
_AGE_RECIPIENT = re.compile(r"^age1[qpzry9x8gf2tvdw0s3jn54khce6mua7l]{58}$")


class EncryptionConfig(_Strict):
    """Client-side encryption with age (steps.crypto; docs/encryption.md)."""

    recipients: list[str] = Field(
        default_factory=list, description="Whom new data is encrypted for: age public keys (age1...) or absolute "
                                          "paths of files of them (one a line, # comments)")
    identity_files: list[Path] = Field(
        default_factory=list, description="age identities (private keys) of this host, only where it restores or "
                                          "verifies: mode 0600, outside the repository")

    @model_validator(mode="after")
    def _shapes(self) -> EncryptionConfig:
        for i, r in enumerate(self.recipients):
            t = r.strip()
            if t.upper().startswith("AGE-SECRET-KEY-"):
                raise ValueError(f"encryption.recipients[{i}] is a private key (AGE-SECRET-KEY-...): give its public "
                                 "key (age1..., `age-keygen -y FILE` prints it) and keep the private key out of the "
                                 "config")
            if t.startswith("/"):
                continue
            if not _AGE_RECIPIENT.match(t):
                raise ValueError(f"encryption.recipients[{i}] {t[:70]!r} is neither an age public key (age1 and 58 "
                                 "characters of a-z0-9 without b, i, o, 1) nor an absolute path of a file of them")
        for i, p in enumerate(self.identity_files):
            if not p.is_absolute():
                raise ValueError(f"encryption.identity_files[{i}] must be an absolute path, not {str(p)!r}")
        return self


# pgBackRest's stanza names: letters, digits and `_.-`, not starting with a punctuation mark.
STANZA_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$"
# A pgBackRest option name as its config file spells it (`repo1-path`, `pg1-socket-path`, `compress-type`).
OPTION_PATTERN = re.compile(r"^[a-z][a-z0-9]*(-[a-z0-9]+)*$")
# Options with a key of their own in `pgbackrest:`, or that the product sets itself on each command.
_OWN_OPTIONS = {"stanza": "pgbackrest.stanza", "config": "pgbackrest.config", "output": "(set per command)",
                "type": "(basebackup --type)"}
_SECRET_PARTS = ("key", "pass", "secret", "token")


def is_secret_option(name: str) -> bool:
    """Is a pgBackRest option's value a secret (never shown, never on a command line)? By its name."""
    return any(part in name for part in _SECRET_PARTS)


class PgBackRestConfig(_Strict):
    """`engine: pgbackrest`: the physical side (base backups, the WAL archive, PITR) goes through pgBackRest
    (steps.engines.pgbackrest; docs/pgbackrest.md)."""

    stanza: str = Field(pattern=STANZA_PATTERN, description="pgBackRest's stanza of the protected cluster")
    config: Path | None = Field(None, description="An absolute path of a pgbackrest.conf (default: pgBackRest's "
                                "own, /etc/pgbackrest/pgbackrest.conf)")
    options: dict[str, str | int | bool] = Field(
        default_factory=dict, description="pgBackRest options by their config-file names (repo1-path, pg1-path, "
                                          "...): values whose name says key, pass, secret or token are never shown")
    executable: str = Field("pgbackrest", min_length=1, description="The pgbackrest command (a name on PATH or "
                            "an absolute path)")
    user: str | None = Field(None, pattern=r"^[a-z_][a-z0-9_.-]{0,31}$", description="The OS user pgbackrest runs "
                             "as (default: the server's user when root, else the current user)")
    timeout_s: float = Field(21600, gt=0, description="A pgbackrest command, at most")

    @model_validator(mode="after")
    def _shapes(self) -> PgBackRestConfig:
        if self.config is not None and not self.config.is_absolute():
            raise ValueError(f"pgbackrest.config must be an absolute path, not {str(self.config)!r}")
        if "\n" in self.executable or "\0" in self.executable or (
                "/" in self.executable and not self.executable.startswith("/")):
            raise ValueError(f"pgbackrest.executable must be a command name or an absolute path, not "
                             f"{self.executable!r}")
        for name, value in self.options.items():
            shown = "(not shown)" if is_secret_option(name) else repr(value)
            if not OPTION_PATTERN.match(name):
                raise ValueError(f"pgbackrest.options: {name[:60]!r} is not a pgBackRest option name (lower case "
                                 "words joined by '-', as in its config file: repo1-path, pg1-socket-path)")
            if name in _OWN_OPTIONS:
                raise ValueError(f"pgbackrest.options.{name} is set by {_OWN_OPTIONS[name]}, not here")
            if isinstance(value, str) and any(c in value for c in "\n\r\0"):
                raise ValueError(f"pgbackrest.options.{name}: the value {shown} holds a line break or a NUL")
        return self


class RepositoryConfig(_Strict):
    version: Literal[1]
    engine: Literal["own", "pgbackrest"] = Field(
        "own", description="The physical engine: the product's own (pg_basebackup, wal-push) or pgBackRest")
    pgbackrest: PgBackRestConfig | None = None
    cluster: ClusterConfig = Field(default_factory=lambda: ClusterConfig.model_validate({}))
    local: LocalConfig | None = None
    s3: S3Config | None = None
    retention: RetentionConfig = Field(default_factory=lambda: RetentionConfig.model_validate({}))
    attachments: AttachmentsConfig | None = None
    checks: ChecksConfig = Field(default_factory=lambda: ChecksConfig.model_validate({}))
    backup: BackupConfig = Field(default_factory=lambda: BackupConfig.model_validate({}))
    basebackup: BaseBackupSettings = Field(default_factory=lambda: BaseBackupSettings.model_validate({}))
    wal: WalConfig = Field(default_factory=lambda: WalConfig.model_validate({}))
    signing: SigningConfig | None = None
    encryption: EncryptionConfig | None = None

    @model_validator(mode="after")
    def _somewhere(self) -> RepositoryConfig:
        if self.local is None and self.s3 is None:
            raise ValueError("configure at least one repository: local: {path: ...} and/or s3: {bucket: ...}")
        if self.engine == "pgbackrest" and self.pgbackrest is None:
            raise ValueError("engine: pgbackrest needs a pgbackrest: block (at least pgbackrest.stanza; "
                             "docs/pgbackrest.md)")
        if self.engine == "own" and self.pgbackrest is not None:
            raise ValueError("pgbackrest: is set but engine is own: add engine: pgbackrest to use it, or remove "
                             "the pgbackrest: block")
        for what in ("private_key", "wal_private_key"):
            key = getattr(self.signing, what) if self.signing else None
            if key is not None and self.local is not None and key.is_relative_to(self.local.path):
                raise ValueError(f"signing.{what} {key} lies inside the local repository: keep it outside")
        recipients = self.encryption.recipients if self.encryption else []
        for name, repo in (("local", self.local), ("s3", self.s3)):
            if repo is not None and repo.encrypt and not recipients:
                raise ValueError(f"{name}.encrypt is true but encryption.recipients is empty: name the age public "
                                 "keys to encrypt for (docs/encryption.md), or set encrypt: false")
        for i, ident in enumerate(self.encryption.identity_files if self.encryption else []):
            if self.local is not None and ident.is_relative_to(self.local.path):
                raise ValueError(f"encryption.identity_files[{i}] {ident} lies inside the local repository: whoever "
                                 "reads the repository would read the key; keep it outside")
        return self

    def encrypts(self, store: Literal["local", "s3"]) -> bool:
        """Is what this host writes to that repository encrypted? local: `local.encrypt` (default false);
        s3: `s3.encrypt`, by default true once encryption.recipients names someone."""
        recipients = bool(self.encryption and self.encryption.recipients)
        if store == "local":
            return self.local is not None and self.local.encrypt
        if self.s3 is None:
            return False
        return recipients if self.s3.encrypt is None else self.s3.encrypt

    def state_dir(self) -> Path:
        if self.backup.state_dir is not None:
            return self.backup.state_dir
        from runbook.state import default_state_dir

        return default_state_dir()


def resolve_config_path(given: str | os.PathLike[str] | None) -> Path:
    """`-c FILE`, else `$RUNBOOK_CONFIG`, else /etc/runbook/repository.yaml; never the current directory."""
    path = chosen_config_path(given, DEFAULT_CONFIG)  # this module's DEFAULT_CONFIG: a test may point it elsewhere
    if not path.exists():
        how = "given with -c" if given else (f"from ${CONFIG_ENV}" if os.environ.get(CONFIG_ENV) else "the default")
        raise UsageError(
            f"repository config {path} ({how}) does not exist",
            hint=f"pass -c FILE, or set {CONFIG_ENV}; docs/repository-config.md describes the file",
        )
    return path


def _user(uid: int) -> str:
    import pwd

    try:
        return pwd.getpwuid(uid).pw_name
    except KeyError:
        return f"uid {uid}"


def check_permissions(path: Path) -> None:
    """Refuse a config others could have changed: it says where root writes and which SQL runs as a superuser.

    Writable by group or others: refused. Owned by a user other than root and the one reading it: refused (that
    user could rewrite it). The documented setup, 0640 root:postgres, passes for root and for postgres."""
    try:
        st = os.stat(path)
    except OSError as e:
        raise UsageError(f"cannot read the repository config {path}: {e.strerror}") from None
    fix = f"chown root:postgres {path}; chmod 0640 {path}"
    if st.st_mode & 0o022:
        who = " and ".join(w for w, bit in (("its group", 0o020), ("every user", 0o002)) if st.st_mode & bit)
        raise UsageError(
            f"the repository config {path} is writable by {who} (mode {stat.S_IMODE(st.st_mode):04o}): it says "
            "where backups are written and which SQL runs, so nobody but its owner may change it; it is not used",
            hint=f"{fix} (readable by the server's group, writable by root only)")
    me = os.geteuid()
    if st.st_uid not in (0, me):
        raise UsageError(
            f"the repository config {path} is owned by {_user(st.st_uid)}, not by "
            f"{'root, who reads it' if me == 0 else f'root or by {_user(me)}, who reads it'}: that user could "
            "change where backups go and what runs; it is not used",
            hint=fix)


def load_repository_config(given: str | os.PathLike[str] | None) -> tuple[RepositoryConfig, Path]:
    """Find and load the repository config. Raises InvalidFile (every problem, FILE:LINE:COL) or UsageError."""
    from runbook.loader import load_model

    path = resolve_config_path(given)
    check_permissions(path)
    try:
        return load_model(path, RepositoryConfig), path
    except RunbookError:
        raise
    except OSError as e:
        raise UsageError(f"cannot read the repository config {path}: {e.strerror}") from None
