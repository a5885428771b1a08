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

When a shared backend cannot be reached (it raises
:class:`gonka_mux.errors.StoreUnavailableError`, as :class:`RedisLimitBackend` does when Redis is
away), the limiter keeps admitting requests against the same limits kept in this process (a
:class:`MemoryLimitBackend`), logs one warning, and asks the shared backend again at most once per
``probe_interval`` (1 s); the first answer switches back, with one more warning.
:meth:`RateLimiter.status` (``mux.stats()["limits"]``) says which backend is counting. While
local, each process enforces the limits on its own, so N processes admit up to N times the limit.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import math
import threading
import time
from collections.abc import Awaitable, Mapping
from dataclasses import dataclass
from functools import lru_cache
from typing import Any, TypeVar

from .._exceptions import StoreUnavailableError
from .backend import LimitBackend
from .config import LimitsConfig, RateLimit
from .memory import MemoryLimitBackend

__all__ = ["LOCAL_FALLBACK", "RateLimiter", "Rejected", "Reservation", "estimate_tokens"]

log = logging.getLogger("gonka_mux.limits")

_UNLIMITED = RateLimit(None, None)

#: ``status()["backend"]`` while the limits are kept in this process because the shared
#: backend is away.
LOCAL_FALLBACK = "local-fallback"
#: Seconds between two attempts to reach a shared backend that is away.
DEFAULT_PROBE_INTERVAL = 1.0

T = TypeVar("T")

# What _shared_turn answers: go local, ask the shared backend, or ask it as the probe whose
# success ends the fallback.
_LOCAL, _SHARED, _PROBE = 0, 1, 2


class Reservation:
    """Capacity taken by one admitted request; correct it once with ``settle`` or ``cancel``.

    ``tokens`` is what was charged up front. Settling or cancelling twice is a no-op, and so is
    cancelling after a settle: the first call decides.
    """

    __slots__ = ("_backend", "_key", "_limit", "_limiter", "_open", "tokens")

    def __init__(
        self,
        backend: LimitBackend | None,
        key: str,
        limit: RateLimit,
        tokens: float,
        limiter: RateLimiter | None = None,
    ) -> None:
        self._backend = backend
        self._key = key
        self._limit = limit
        # The limiter that admitted it, so a correction for a shared backend that has gone away
        # is dropped instead of failing (or hanging) the request that is being settled.
        self._limiter = limiter
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
                self._adjust(0, delta)
            except BaseException:
                self._open = True  # nothing was recorded: the caller may try again
                raise

    async def asettle(self, actual_tokens: float | None) -> None:
        delta = self._close(actual_tokens)
        if delta:
            try:
                await self._aadjust(0, delta)
            except BaseException:
                self._open = True
                raise

    def cancel(self) -> None:
        """Refund the request and its tokens: it was never sent."""
        if self._open:
            self._open = False
            try:
                self._adjust(-1, -self.tokens)
            except BaseException:
                self._open = True
                raise

    async def acancel(self) -> None:
        if self._open:
            self._open = False
            try:
                await self._aadjust(-1, -self.tokens)
            except BaseException:
                self._open = True
                raise

    def _adjust(self, requests: float, tokens: float) -> None:
        backend: Any = self._backend
        if self._limiter is not None:
            self._limiter._adjust(backend, self._key, self._limit, requests, tokens)
        else:
            backend.adjust(self._key, self._limit, requests, tokens)

    async def _aadjust(self, requests: float, tokens: float) -> None:
        backend: Any = self._backend
        if self._limiter is not None:
            await self._limiter._aadjust(backend, self._key, self._limit, requests, tokens)
        else:
            await backend.aadjust(self._key, self._limit, requests, tokens)

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

    ``local_fallback`` (default True): when the backend raises
    :class:`~gonka_mux.errors.StoreUnavailableError`, enforce the same limits in this process
    and ask the backend again every ``probe_interval`` seconds (see the module docstring); with
    False the error reaches the caller.
    """

    def __init__(
        self,
        backend: LimitBackend | None = None,
        config: LimitsConfig | None = None,
        *,
        local_fallback: bool = True,
        probe_interval: float = DEFAULT_PROBE_INTERVAL,
    ) -> None:
        self.backend: LimitBackend = backend if backend is not None else MemoryLimitBackend()
        self.config = config if config is not None else LimitsConfig()
        if not math.isfinite(probe_interval) or probe_interval <= 0:
            raise ValueError(f"probe_interval must be a positive number, got {probe_interval!r}")
        self.probe_interval = float(probe_interval)
        self._local: MemoryLimitBackend | None = None
        if local_fallback and not isinstance(self.backend, MemoryLimitBackend):
            self._local = MemoryLimitBackend()
        self._state_lock = threading.Lock()
        self._fallback_since: float | None = None  # wall clock, for status()
        self._fallback_t0 = 0.0  # monotonic, for the "back after" log line
        self._retry_at = 0.0  # monotonic: when the shared backend may be asked again
        self._fallbacks = 0
        self._last_error: str | None = None

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
        deadline_at: float | None = None,
    ) -> Reservation:
        """Admit one request of caller ``key`` costing ``tokens`` (an estimate), waiting up to
        ``max_wait`` seconds (default: the config's) for capacity.

        ``tier`` overrides the key's configured tier. ``deadline_at`` (a ``time.monotonic()``
        instant: the caller's deadline) bounds the wait and the time spent asking the backend.
        Raises :class:`gonka_mux.errors.RateLimitError` when capacity does not come back in time.
        """
        tier_name, limit, skey = self._caller(key, tokens, tier)
        if limit.unlimited:
            return Reservation(None, skey, limit, tokens)
        end = math.inf if deadline_at is None else deadline_at
        wait, blocked, used = await self._aadmit(skey, limit, tokens, end)
        if wait:
            deadline = min(time.monotonic() + self._max_wait(max_wait), end)
            while wait:
                if wait > deadline - time.monotonic():
                    raise _rate_limit_error(tier_name, limit, wait, blocked)
                await asyncio.sleep(wait)
                wait, blocked, used = await self._aadmit(skey, limit, tokens, end)
        return Reservation(used, skey, limit, tokens, self)

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
        wait, blocked, used = self._admit(skey, limit, tokens)
        if wait:
            deadline = time.monotonic() + self._max_wait(max_wait)
            while wait:
                if wait > deadline - time.monotonic():
                    raise _rate_limit_error(tier_name, limit, wait, blocked)
                time.sleep(wait)
                wait, blocked, used = self._admit(skey, limit, tokens)
        return Reservation(used, skey, limit, tokens, self)

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
        wait, blocked, used = await self._aadmit(skey, limit, tokens, math.inf)
        if wait:
            return Rejected(wait, blocked)
        return Reservation(used, skey, limit, tokens, self)

    def try_acquire_sync(
        self, endpoint: str, *, tokens: float = 0, limit: RateLimit | None = None
    ) -> Reservation | Rejected:
        """Blocking form of :meth:`try_acquire`."""
        limit, skey = self._endpoint(endpoint, tokens, limit)
        if limit.unlimited:
            return Reservation(None, skey, limit, tokens)
        wait, blocked, used = self._admit(skey, limit, tokens)
        if wait:
            return Rejected(wait, blocked)
        return Reservation(used, skey, limit, tokens, self)

    def status(self) -> dict[str, Any]:
        """Which backend counts right now (``mux.stats()["limits"]``)::

            {"backend": "local-fallback", "configured": "redis", "degraded": True,
             "fallback_since": 1765000000.0, "fallbacks": 1, "last_error": "Redis ... refused"}

        ``backend`` is the configured backend's kind (``"redis"``, ``"sqlite"``, ``"memory"``)
        or ``"local-fallback"`` while it is away; ``fallback_since`` is a Unix time (None when
        not degraded); ``fallbacks`` counts the switches to local limits since start.
        """
        configured = str(getattr(self.backend, "kind", type(self.backend).__name__))
        since = self._fallback_since
        return {
            "backend": LOCAL_FALLBACK if since is not None else configured,
            "configured": configured,
            "degraded": since is not None,
            "fallback_since": since,
            "fallbacks": self._fallbacks,
            "last_error": self._last_error,
        }

    def close(self) -> None:
        self.backend.close()
        if self._local is not None:
            self._local.close()

    async def aclose(self) -> None:
        await self.backend.aclose()
        if self._local is not None:
            self._local.close()

    # -- the shared backend, or the local limits while it is away

    def _shared_turn(self) -> int:
        """Whether this call asks the shared backend (_SHARED), asks it as the one probe of
        this interval (_PROBE), or stays local (_LOCAL)."""
        if self._fallback_since is None:
            return _SHARED
        with self._state_lock:
            if self._fallback_since is None:
                return _SHARED
            now = time.monotonic()
            if now < self._retry_at:
                return _LOCAL
            # Book the next probe before asking, so concurrent callers stay local meanwhile.
            self._retry_at = now + self.probe_interval
            return _PROBE

    def _enter_fallback(self, exc: StoreUnavailableError) -> None:
        with self._state_lock:
            self._last_error = str(exc)
            self._retry_at = time.monotonic() + self.probe_interval
            if self._fallback_since is not None:
                return
            self._fallback_since = time.time()
            self._fallback_t0 = time.monotonic()
            self._fallbacks += 1
        log.warning(
            "rate limits: %s; enforcing the same limits in this process (not shared with "
            "others) and asking again every %gs",
            str(exc).rstrip("."),
            self.probe_interval,
        )

    def _leave_fallback(self) -> None:
        with self._state_lock:
            if self._fallback_since is None:
                return
            self._fallback_since = None
            away = time.monotonic() - self._fallback_t0
            if self._local is not None:
                # The next outage starts from full local buckets rather than stale ones.
                self._local.close()
        kind = getattr(self.backend, "kind", type(self.backend).__name__)
        log.warning(
            "rate limits: %s answers again after %.1fs; limits are shared again", kind, away
        )

    def _admit(self, skey: str, limit: RateLimit, tokens: float) -> tuple[float, str, Any]:
        local = self._local
        if local is None:
            return (*self.backend.admit(skey, limit, tokens), self.backend)
        turn = self._shared_turn()
        if turn != _LOCAL:
            try:
                wait, blocked = self.backend.admit(skey, limit, tokens)
            except StoreUnavailableError as exc:
                self._enter_fallback(exc)
            else:
                if turn == _PROBE:
                    self._leave_fallback()
                return wait, blocked, self.backend
        return (*local.admit(skey, limit, tokens), local)

    async def _aadmit(
        self, skey: str, limit: RateLimit, tokens: float, deadline_at: float
    ) -> tuple[float, str, Any]:
        local = self._local
        if local is None:
            return (*await self.backend.aadmit(skey, limit, tokens), self.backend)
        turn = self._shared_turn()
        if turn != _LOCAL:
            try:
                wait, blocked = await _within(
                    self.backend.aadmit(skey, limit, tokens),
                    deadline_at,
                    getattr(self.backend, "timeout", None),
                )
            except StoreUnavailableError as exc:
                self._enter_fallback(exc)
            except asyncio.TimeoutError:
                # The caller's deadline, not the store's: count this one locally, change nothing.
                pass
            else:
                if turn == _PROBE:
                    self._leave_fallback()
                return wait, blocked, self.backend
        return (*local.admit(skey, limit, tokens), local)

    def _adjust(
        self, backend: Any, skey: str, limit: RateLimit, requests: float, tokens: float
    ) -> None:
        if backend is not self.backend or self._local is None:
            backend.adjust(skey, limit, requests, tokens)
        elif self._fallback_since is None:
            try:
                backend.adjust(skey, limit, requests, tokens)
            except StoreUnavailableError as exc:
                self._enter_fallback(exc)
        # else: the shared backend is away; its entry for this key expires on its own, so
        # the correction is dropped rather than the request failed.

    async def _aadjust(
        self, backend: Any, skey: str, limit: RateLimit, requests: float, tokens: float
    ) -> None:
        if backend is not self.backend or self._local is None:
            await backend.aadjust(skey, limit, requests, tokens)
        elif self._fallback_since is None:
            try:
                await backend.aadjust(skey, limit, requests, tokens)
            except StoreUnavailableError as exc:
                self._enter_fallback(exc)

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


async def _within(call: Awaitable[T], deadline_at: float, own_timeout: float | None) -> T:
    """Await ``call``, giving up (asyncio.TimeoutError) at the monotonic ``deadline_at``.

    A backend with its own ``timeout`` shorter than the time left needs no second timer
    (wait_for costs a task per call on Python < 3.12).
    """
    if deadline_at == math.inf:
        return await call
    remaining = deadline_at - time.monotonic()
    if remaining <= 0:
        if asyncio.iscoroutine(call):
            call.close()  # never awaited: close it so no "never awaited" warning
        raise asyncio.TimeoutError
    if own_timeout is not None and own_timeout < remaining:
        return await call
    return await asyncio.wait_for(call, remaining)


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
