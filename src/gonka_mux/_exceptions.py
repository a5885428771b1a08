"""Exception bases that need no openai import (errors.py re-exports them).

Modules that can be used without the openai SDK (webhook signature checks in a receiver,
config parsing) import from here so they stay cheap to import.
"""

from __future__ import annotations

__all__ = ["ConfigError", "GonkaMuxError", "StoreUnavailableError"]


class GonkaMuxError(Exception):
    """Base class of every error raised by gonka_mux that is not an HTTP-shaped openai error."""


class ConfigError(GonkaMuxError, ValueError):
    """A configuration value is missing or invalid.

    ``source`` names the file (or ``"<dict>"``/``"<env>"``), ``key`` the dotted key and
    ``expected`` what would have been accepted.
    """

    def __init__(
        self, message: str, *, source: str | None = None, key: str | None = None, expected: str = ""
    ) -> None:
        self.source = source
        self.key = key
        self.expected = expected
        where = ""
        if source:
            where += f"{source}: "
        if key:
            where += f"[{key}] "
        full = f"{where}{message}"
        if expected:
            full += f" (expected {expected})"
        super().__init__(full)


class StoreUnavailableError(GonkaMuxError, ConnectionError):
    """A shared store (Redis, PostgreSQL) cannot be reached right now; retry later.

    Raised by sessions and memory when their engine is away, instead of the driver's own
    exception, so callers can catch one type. ``backend`` names the engine ("redis",
    "postgresql"), ``retry_after`` suggests a wait in seconds. The message never holds the
    store's password.
    """

    retryable = True

    def __init__(self, message: str, *, backend: str, retry_after: float = 1.0) -> None:
        self.backend = backend
        self.retry_after = retry_after
        super().__init__(message)
