"""What the two S3 clients share: the backup repository's (steps.repository.s3, with the config schema) and the
WAL archive's (steps.wal.store, on the per-segment path: standard library at import, boto3 when used).

- `new_client`: a boto3 client built the same way for both (credentials file checked, standard retries,
  botocore's checksums only where an operation requires them, path-style addressing for S3-compatible
  endpoints);
- `put_if_absent`: a write that never replaces an object: `IfNoneMatch: *` where the store supports it (an
  answer of 412/409 means the key exists), plain where it answers 501 (the caller looks first);
- `check_credentials_file`, `error_code`, `http_status`.
"""

from __future__ import annotations

import os
import stat
from pathlib import Path
from typing import Any

from runbook.errors import UsageError

NOT_FOUND = ("NoSuchKey", "404", "NotFound")


def error_code(e: Any) -> str:
    return str(getattr(e, "response", {}).get("Error", {}).get("Code", ""))


def http_status(e: Any) -> int:
    return int(getattr(e, "response", {}).get("ResponseMetadata", {}).get("HTTPStatusCode", 0) or 0)


def check_credentials_file(path: Path, who: str) -> None:
    """The file exists, this user can read it (botocore would skip it silently, then say "no credentials"),
    and not every user can. `who`: the user that must read it, for the hints."""
    try:
        st = path.stat()
    except FileNotFoundError:
        raise UsageError(f"the S3 credentials file {path} does not exist",
                         hint="fix s3.credentials_file in the repository config") from None
    except OSError as e:
        raise UsageError(f"the S3 credentials file {path} cannot be read: {e.strerror}",
                         hint=f"fix s3.credentials_file in the repository config; it must be readable by {who}") from None
    if not os.access(path, os.R_OK):
        raise UsageError(f"the S3 credentials file {path} is not readable by this user (uid {os.geteuid()})",
                         hint=f"it must be readable by {who}: make the file 0640 with that user's group, or 0600 "
                              "owned by it")
    if st.st_mode & (stat.S_IROTH | stat.S_IWOTH):
        raise UsageError(f"the S3 credentials file {path} is readable by every user (mode {stat.S_IMODE(st.st_mode):04o})",
                         hint=f"chmod 600 {path} (or 640 with the group of {who})")


def new_client(*, credentials_file: Path | None, who: str, profile: str | None, region: str | None,
               endpoint_url: str | None, max_attempts: int, connect_timeout: float, read_timeout: float,
               max_pool: int) -> Any:
    import boto3
    import botocore.session
    from botocore.config import Config

    bs = botocore.session.Session()
    if credentials_file is not None:
        check_credentials_file(credentials_file, who)
        bs.set_config_variable("credentials_file", str(credentials_file))
    if profile:
        bs.set_config_variable("profile", profile)
    session = boto3.Session(botocore_session=bs, region_name=region)
    config = Config(
        retries={"total_max_attempts": max_attempts, "mode": "standard"},
        connect_timeout=connect_timeout,
        read_timeout=read_timeout,
        max_pool_connections=max_pool,
        request_checksum_calculation="when_required",
        response_checksum_validation="when_required",
        s3={"addressing_style": "path"} if endpoint_url else None,
    )
    return session.client("s3", endpoint_url=endpoint_url, config=config)


class ConditionalWrites:
    """Whether a store honours `IfNoneMatch` (learnt from its first 501: then plain writes after a look)."""

    def __init__(self) -> None:
        self.supported = True

    def put_if_absent(self, client: Any, args: dict[str, Any]) -> bool:
        """put_object(**args) unless the key exists: False when the store says it does. A store without
        conditional writes gets a plain put (the caller has looked first and may read it back)."""
        from botocore.exceptions import ClientError

        if self.supported:
            try:
                client.put_object(**args, IfNoneMatch="*")
                return True
            except ClientError as e:
                code, status = error_code(e), http_status(e)
                if code in ("PreconditionFailed", "412", "ConditionalRequestConflict") or status in (409, 412):
                    return False
                if status != 501 and code != "NotImplemented":
                    raise
                self.supported = False
        client.put_object(**args)
        return True
