"""The proof side of the command line: `runbook verify-backup` (a test restore) and `runbook status`
("would we make it now?").

`register(subparsers)` adds them to `runbook`'s parser (one call in runbook/cli.py). Importing this module
stays cheap: the handlers import their machinery.
"""

from __future__ import annotations

from typing import Any


def register(sub: Any) -> None:
    from steps.proof.verify import register as register_verify

    register_verify(sub)
    from steps.proof.status import register as register_status

    register_status(sub)
