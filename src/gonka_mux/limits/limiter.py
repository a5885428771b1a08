"""The rate limiter: admits callers by tier, endpoints by their own limits, settles tokens after.

A request is charged before it is sent: one request plus an *estimate* of its tokens (prompt size
plus ``max_tokens``, see :func:`estimate_tokens`). The returned :class:`Reservation` corrects the
token charge once the real usage is known (``settle``), or refunds everything when the request is
never sent (``cancel``)::

    limiter = RateLimiter(SqliteLimitBackend(), LimitsConfig.from_dict(config["limits"]))
    reservation = await limiter.acquire("agent-7", tokens=estimate_tokens(params))
    try:
        response = await send(params)
    except BaseException:
        await reservation.acancel()
        raise
    await reservation.asettle(response.usage.total_tokens)

Caller keys wait up to ``max_wait`` seconds for capacity and then get a
:class:`gonka_mux.errors.RateLimitError` (HTTP 429 with ``Retry-After``). Endpoints never wait:
:meth:`RateLimiter.try_acquire` answers a falsy :class:`Rejected` so the router can skip them.

Keys are stored hashed, so a caller key that is a secret never lands in a database or in Redis;
no key ever appears in an error message.
"""

from __future__ import annotations

import asyncio
import hashlib
import time
from collections.abc import Mapping
from dataclasses import dataclass
from functools import lru_cache
from typing import Any

from .backend import LimitBackend
from .config import LimitsConfig, RateLimit
from .memory import MemoryLimitBackend

__all__ = ["RateLimiter", "Rejected", "Reservation", "estimate_tokens"]

_UNLIMITED = RateLimit(None, None)


class Reservation:
    """Capacity taken by one admitted request; correct it once with ``settle`` or ``cancel``.

    ``tokens`` is what was charged up front. Settling or cancelling twice is a no-op, and so is
    cancelling after a settle: the first call decides.
    """

    __slots__ = ("_backend", "_key", "_limit", "_open", "tokens")

    def __init__(
        self, backend: LimitBackend | None, key: str, limit: RateLimit, tokens: float
    ) -> None:
        self._backend = backend
        self._key = key
        self._limit = limit
        self.tokens = tokens
        self._open = backend is not None

    def __repr__(self) -> str:
        state = "open" if self._open else "settled"
        return f"<Reservation tokens={self.tokens:g} {state}>"

    def __bool__(self) -> bool:
        return True

    @property
    def settled(self) -> bool:
        """True once ``settle`` or ``cancel`` has run (or for a reservation under no limit)."""
        return not self._open

    def settle(self, actual_tokens: float | None) -> None:
        """Charge the real token count instead of the estimate (refund or extra charge).

        ``None`` (usage unknown, e.g. a stream closed early without a usage chunk) keeps the
        estimate.
        """
        delta = self._close(actual_tokens)
        if delta:
            try:
                self._backend.adjust(self._key, self._limit, 0, delta)  # type: ignore[union-attr]
            except BaseException:
                self._open = True  # nothing was recorded: the caller may try again
                raise

    async def asettle(self, actual_tokens: float | None) -> None:
        delta = self._close(actual_tokens)
        if delta:
            try:
                await self._backend.aadjust(self._key, self._limit, 0, delta)  # type: ignore[union-attr]
            except BaseException:
                self._open = True
                raise

    def cancel(self) -> None:
        """Refund the request and its tokens: it was never sent."""
        if self._open:
            self._open = False
            try:
                self._backend.adjust(self._key, self._limit, -1, -self.tokens)  # type: ignore[union-attr]
            except BaseException:
                self._open = True
                raise

    async def acancel(self) -> None:
        if self._open:
            self._open = False
            try:
                await self._backend.aadjust(self._key, self._limit, -1, -self.tokens)  # type: ignore[union-attr]
            except BaseException:
                self._open = True
                raise

    def _close(self, actual_tokens: float | None) -> float:
        """Mark settled and return the token correction (0 when already settled)."""
        if not self._open:
            return 0.0
        if actual_tokens is not None:
            _check_tokens(actual_tokens, "actual_tokens")
        # Close before the backend call so two concurrent settles cannot both charge.
        self._open = False
        return 0.0 if actual_tokens is None else actual_tokens - self.tokens


@dataclass(frozen=True)
class Rejected:
    """An endpoint is at its limit; ``retry_after`` seconds until this request would fit.

    Falsy, so ``if reservation := await limiter.try_acquire(...)`` reads naturally.
    """

    retry_after: float
    blocked: str

    def __bool__(self) -> bool:
        return False


class RateLimiter:
    """Admits requests against a :class:`LimitsConfig`, keeping state in a :class:`LimitBackend`.

    ``backend`` defaults to :class:`MemoryLimitBackend` (one process); use
    :class:`SqliteLimitBackend` for several processes on one host and :class:`RedisLimitBackend`
    for many hosts. ``config`` defaults to the ``default`` tier from ``GONKA_DEFAULT_RPM`` /
    ``GONKA_DEFAULT_TPM``.
    """

    def __init__(
        self, backend: LimitBackend | None = None, config: LimitsConfig | None = None
    ) -> None:
        self.backend: LimitBackend = backend if backend is not None else MemoryLimitBackend()
        self.config = config if config is not None else LimitsConfig()

    def __repr__(self) -> str:
        return f"RateLimiter(backend={self.backend!r}, tiers={sorted(self.config.tiers)})"

    # -- caller keys: wait up to max_wait, then RateLimitError

    async def acquire(
        self,
        key: str,
        *,
        tokens: float = 0,
        tier: str | None = None,
        max_wait: float | None = None,
    ) -> Reservation:
        """Admit one request of caller ``key`` costing ``tokens`` (an estimate), waiting up to
        ``max_wait`` seconds (default: the config's) for capacity.

        ``tier`` overrides the key's configured tier. Raises
        :class:`gonka_mux.errors.RateLimitError` when capacity does not come back in time.
        """
        tier_name, limit, skey = self._caller(key, tokens, tier)
        if limit.unlimited:
            return Reservation(None, skey, limit, tokens)
        wait, blocked = await self.backend.aadmit(skey, limit, tokens)
        if wait:
            deadline = time.monotonic() + self._max_wait(max_wait)
            while wait:
                if wait > deadline - time.monotonic():
                    raise _rate_limit_error(tier_name, limit, wait, blocked)
                await asyncio.sleep(wait)
                wait, blocked = await self.backend.aadmit(skey, limit, tokens)
        return Reservation(self.backend, skey, limit, tokens)

    def acquire_sync(
        self,
        key: str,
        *,
        tokens: float = 0,
        tier: str | None = None,
        max_wait: float | None = None,
    ) -> Reservation:
        """Blocking form of :meth:`acquire` (sleeps the calling thread while waiting)."""
        tier_name, limit, skey = self._caller(key, tokens, tier)
        if limit.unlimited:
            return Reservation(None, skey, limit, tokens)
        wait, blocked = self.backend.admit(skey, limit, tokens)
        if wait:
            deadline = time.monotonic() + self._max_wait(max_wait)
            while wait:
                if wait > deadline - time.monotonic():
                    raise _rate_limit_error(tier_name, limit, wait, blocked)
                time.sleep(wait)
                wait, blocked = self.backend.admit(skey, limit, tokens)
        return Reservation(self.backend, skey, limit, tokens)

    # -- endpoints: never wait, answer Rejected so the router skips them

    async def try_acquire(
        self, endpoint: str, *, tokens: float = 0, limit: RateLimit | None = None
    ) -> Reservation | Rejected:
        """Admit one request on ``endpoint`` now or answer :class:`Rejected` (no waiting).

        ``limit`` defaults to the config's limit for the endpoint; an endpoint without one is
        never limited.
        """
        limit, skey = self._endpoint(endpoint, tokens, limit)
        if limit.unlimited:
            return Reservation(None, skey, limit, tokens)
        wait, blocked = await self.backend.aadmit(skey, limit, tokens)
        if wait:
            return Rejected(wait, blocked)
        return Reservation(self.backend, skey, limit, tokens)

    def try_acquire_sync(
        self, endpoint: str, *, tokens: float = 0, limit: RateLimit | None = None
    ) -> Reservation | Rejected:
        """Blocking form of :meth:`try_acquire`."""
        limit, skey = self._endpoint(endpoint, tokens, limit)
        if limit.unlimited:
            return Reservation(None, skey, limit, tokens)
        wait, blocked = self.backend.admit(skey, limit, tokens)
        if wait:
            return Rejected(wait, blocked)
        return Reservation(self.backend, skey, limit, tokens)

    def close(self) -> None:
        self.backend.close()

    async def aclose(self) -> None:
        await self.backend.aclose()

    # -- helpers

    def _caller(self, key: str, tokens: float, tier: str | None) -> tuple[str, RateLimit, str]:
        _check_tokens(tokens, "tokens")
        found = self.config.tier_for(key, tier)
        return found.name, found.limit, "c:" + _digest(key)

    def _endpoint(
        self, endpoint: str, tokens: float, limit: RateLimit | None
    ) -> tuple[RateLimit, str]:
        _check_tokens(tokens, "tokens")
        if limit is None:
            limit = self.config.endpoints.get(endpoint, _UNLIMITED)
        return limit, "e:" + _digest(endpoint)

    def _max_wait(self, max_wait: float | None) -> float:
        if max_wait is None:
            return self.config.max_wait
        if max_wait < 0:
            raise ValueError(f"max_wait must be >= 0 seconds, got {max_wait!r}")
        return max_wait


@lru_cache(maxsize=65_536)
def _digest(key: str) -> str:
    if not isinstance(key, str):
        raise TypeError(f"rate-limit keys must be strings, got {type(key).__name__}")
    return hashlib.blake2b(key.encode(), digest_size=16).hexdigest()


def _check_tokens(tokens: Any, name: str) -> None:
    if isinstance(tokens, bool) or not isinstance(tokens, (int, float)) or not tokens >= 0:
        raise ValueError(f"{name} must be a number >= 0, got {tokens!r}")


def _rate_limit_error(tier: str, limit: RateLimit, wait: float, blocked: str) -> Exception:
    # Lazy: gonka_mux.errors subclasses openai's errors, and importing openai would make
    # gonka_mux.limits ~0.4 s slower to import (it needs none of openai otherwise).
    from gonka_mux.errors import RateLimitError

    per = "RPM" if blocked == "requests" else "TPM"
    message = (
        f"Rate limit reached for tier {tier!r} on {blocked} per minute ({per}): "
        f"{limit.describe()}. Please try again in {wait:.2f}s, pass a longer max_wait to wait "
        "for capacity, or assign the caller a larger tier."
    )
    return RateLimitError(message, retry_after=wait)


def estimate_tokens(
    params: Mapping[str, Any], *, default_max_tokens: int = 1024, chars_per_token: float = 4.0
) -> int:
    """Estimate a chat completion's token cost before sending it: prompt size plus ``max_tokens``.

    The prompt is counted as characters / ``chars_per_token`` plus 4 tokens of framing per
    message (tool definitions count as text); the completion as ``max_completion_tokens`` or
    ``max_tokens``, else ``default_max_tokens``. The estimate is corrected by
    :meth:`Reservation.settle` with the real usage, so it only needs to be roughly right.
    """
    chars = 0
    messages = params.get("messages") or ()
    for message in messages:
        content = message.get("content") if isinstance(message, Mapping) else None
        if isinstance(content, str):
            chars += len(content)
        elif isinstance(content, (list, tuple)):
            for part in content:
                if isinstance(part, Mapping) and isinstance(part.get("text"), str):
                    chars += len(part["text"])
    tools = params.get("tools")
    if tools:
        chars += len(repr(tools))
    completion = params.get("max_completion_tokens") or params.get("max_tokens")
    if not isinstance(completion, int) or completion <= 0:
        completion = default_max_tokens
    return int(chars / chars_per_token) + 4 * len(messages) + completion
