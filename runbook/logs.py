"""The logging convention of runbook's commands: one call per command run, with the command's label.

Modules log to their own logger under "runbook" (`runbook.backup`, `runbook.basebackup`, `runbook.prune`,
...) and never add, remove or change a handler. A command that logs sets logging up once for its run, with
its own label, and takes it down when the run ends:

    with command_logging("basebackup", log_file, console=not quiet):
        ...  # everything logged under "runbook" during the run

While it is open, the "runbook" logger (level DEBUG, not propagating to the root logger) has:

- the log file, appended to, every record: `2026-11-25 14:31:50,123 INFO [4242] message`
  (timestamp, level, pid: FILE_FORMAT);
- with `console=True`, stderr (the stream at the time of the call), INFO and up: `LABEL: message`.

Closing (leaving the `with` block, or `close()`) removes and closes exactly these handlers and gives the
logger back its previous level and propagation, so a second run in the same process (tests) starts clean
and says its own label. The label is given here, once: nothing patches another command's handlers.

Standard library only.
"""

from __future__ import annotations

import logging
import sys
from pathlib import Path
from types import TracebackType
from typing import TextIO

ROOT_LOGGER = "runbook"
FILE_FORMAT = "%(asctime)s %(levelname)s [%(process)d] %(message)s"


def console_format(label: str) -> str:
    return f"{label}: %(message)s"


class CommandLogging:
    """The handlers one command run attached to the "runbook" logger; `close()` takes them off again."""

    def __init__(self, label: str, log_file: Path, *, console: bool = True, stream: TextIO | None = None) -> None:
        self.label = label
        self.log_file = log_file
        self.logger = logging.getLogger(ROOT_LOGGER)
        self._previous = (self.logger.level, self.logger.propagate)
        self.handlers: list[logging.Handler] = []
        log_file.parent.mkdir(parents=True, exist_ok=True)
        fh = logging.FileHandler(log_file, encoding="utf-8")  # OSError to the caller, nothing attached yet
        fh.setFormatter(logging.Formatter(FILE_FORMAT))
        fh.setLevel(logging.DEBUG)
        self.handlers.append(fh)
        if console:
            ch = logging.StreamHandler(stream if stream is not None else sys.stderr)
            ch.setFormatter(logging.Formatter(console_format(label)))
            ch.setLevel(logging.INFO)
            self.handlers.append(ch)
        self.logger.setLevel(logging.DEBUG)
        self.logger.propagate = False
        for h in self.handlers:
            self.logger.addHandler(h)

    def close(self) -> None:
        """Remove and close this run's handlers; restore the logger. Idempotent."""
        if not self.handlers:
            return
        for h in self.handlers:
            self.logger.removeHandler(h)
            h.close()
        self.handlers = []
        self.logger.setLevel(self._previous[0])
        self.logger.propagate = self._previous[1]

    def __enter__(self) -> CommandLogging:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.close()


def command_logging(label: str, log_file: Path, *, console: bool = True,
                    stream: TextIO | None = None) -> CommandLogging:
    """Set up logging for one run of the command `label`: the log file, and `LABEL: message` on the console.

    Raises OSError when the log file (or its directory) cannot be created; then nothing is attached.
    """
    return CommandLogging(label, log_file, console=console, stream=stream)
