"""The storage Protocol every rate-limit backend implements (memory, SQLite, Redis).

A backend keeps two GCRA timestamps per key and applies :mod:`gonka_mux.limits.gcra` atomically:
the read, the decision and the write happen as one step even with many processes or hosts. The
limit is passed on every call (not stored), so a tier change applies to the next request.

Every operation has a blocking and an async form, like httpx's Client and AsyncClient; the memory
and SQLite backends do the same work in both, Redis uses its sync or asyncio client.

A shared backend that cannot be reached raises :class:`gonka_mux.errors.StoreUnavailableError`
(promptly: it must not hold a request), which the :class:`~gonka_mux.limits.RateLimiter` answers
with in-process limits until the backend answers again. An optional ``kind`` attribute names the
backend in ``RateLimiter.status()``.
"""

from __future__ import annotations

from typing import Protocol, runtime_checkable

from .config import RateLimit

__all__ = ["LimitBackend"]


@runtime_checkable
class LimitBackend(Protocol):
    def admit(self, key: str, limit: RateLimit, tokens: float) -> tuple[float, str]:
        """Admit one request costing ``tokens``, or change nothing.

        Returns ``(0.0, "")`` when admitted, else ``(wait_seconds, "requests" | "tokens")``.
        """
        ...

    async def aadmit(self, key: str, limit: RateLimit, tokens: float) -> tuple[float, str]: ...

    def adjust(self, key: str, limit: RateLimit, requests: float, tokens: float) -> None:
        """Charge (positive) or refund (negative) requests and tokens after the fact."""
        ...

    async def aadjust(self, key: str, limit: RateLimit, requests: float, tokens: float) -> None: ...

    def close(self) -> None: ...

    async def aclose(self) -> None: ...
