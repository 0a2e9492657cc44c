"""The repositories a config names, opened: `open_stores` (local first; boto3 only when S3 is configured)
and `checked_stores` (each one opened and its access checked).

Apart from steps.repository.store (the `Store` base, its errors, the local backend) so that the S3 backend
(steps.repository.s3, which builds on that base) is imported from here only, and only when configured.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import TYPE_CHECKING, Literal, TypeVar

from runbook.errors import RunbookError
from steps.repository.store import LocalStore, RepositoryError, Store, StoreName

if TYPE_CHECKING:
    from steps.repository.config import RepositoryConfig

E = TypeVar("E", bound=RunbookError)


def open_stores(
    cfg: RepositoryConfig, which: Literal["local", "s3", "any", "all"] = "all", *, for_prune: bool = False
) -> list[Store]:
    """The configured repositories (local first). `which`: only one of them, or all (`any` = `all`)."""
    stores: list[Store] = []
    if cfg.local is not None and which in ("local", "any", "all"):
        stores.append(LocalStore(cfg.local.path))
    if cfg.s3 is not None and which in ("s3", "any", "all"):
        from steps.repository.s3 import S3Store

        creds = cfg.s3.prune_credentials_file if for_prune and cfg.s3.prune_credentials_file else cfg.s3.credentials_file
        stores.append(S3Store(cfg.s3, credentials_file=creds))
    if not stores:
        raise RepositoryError(f"no {which} repository is configured",
                              hint="add local: {path: ...} or s3: {bucket: ...} to the repository config")
    return stores


def checked_stores(cfg: RepositoryConfig, catch: type[E]) -> Iterator[tuple[StoreName, Store | E]]:
    """Each configured repository (local first), opened and its access checked: the store, or the `catch`
    error saying why it cannot be used (any other error propagates)."""
    names: tuple[StoreName, ...] = ("local", "s3")
    for which in names:
        if getattr(cfg, which) is None:
            continue
        got: Store | E
        try:
            got = open_stores(cfg, which)[0]
            got.check_access()
        except catch as e:
            got = e
        yield which, got
