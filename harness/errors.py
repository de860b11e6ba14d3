"""Domain exceptions; the CLI maps each to an exit code in one place."""

from __future__ import annotations

import re

ECHO_LIMIT = 200  # a word of a message longer than this is a value echoed back, shown cut
_LONG_WORD = re.compile(r"\S{%d,}" % (ECHO_LIMIT + 1))


def one_line(text: str) -> str:
    """A message as one readable line: line breaks shown as \\n, and any word longer than
    ECHO_LIMIT (a 20 MB value echoed back) cut to its start and its length."""
    text = str(text).replace("\r", "\\r").replace("\n", "\\n")
    return _LONG_WORD.sub(lambda m: f"{m.group()[:80]}... ({len(m.group())} characters)", text)


class HarnessError(Exception):
    exit_code = 1


class UsageError(HarnessError):
    """Bad command line, config or pair module: exit 2, one clear line."""

    exit_code = 2

    def __init__(self, message: str, detail: str | None = None):
        super().__init__(message)
        self.detail = detail  # e.g. the traceback of the user's make_batch


class ConfigError(UsageError):
    def __init__(self, file, key: str | None, message: str):
        key, message = (one_line(key) if key else key), one_line(message)  # values echoed back stay readable
        super().__init__(f"{file}: {key}: {message}" if key else f"{file}: {message}")
        self.file, self.key = file, key


class WorkerError(HarnessError):
    """A worker raised, died or timed out: exit 3, its traceback shown, nothing left running."""

    exit_code = 3

    def __init__(self, worker: str, message: str, remote_traceback: str | None = None, *,
                 exc_type: str | None = None, exc_message: str = ""):
        super().__init__(f"{worker} worker: {message}")
        self.worker = worker
        self.remote_traceback = remote_traceback
        self.exc_type, self.exc_message = exc_type, exc_message  # what the worker raised, if it raised


class RemoteTraceback(Exception):
    """Carries a worker's formatted traceback as the __cause__ of a WorkerError."""

    def __init__(self, tb: str):
        super().__init__(tb)
        self.tb = tb

    def __str__(self) -> str:
        return self.tb


class OutputError(UsageError):
    """An artifact could not be written (full disk, read-only or vanished folder): exit 2, one line."""

    def __init__(self, path, exc: OSError):
        super().__init__(f"{path}: cannot write it: {exc.strerror or exc} (the run's files were discarded; "
                         "the folder keeps the previous run's complete set, if any)")
        self.path = path
