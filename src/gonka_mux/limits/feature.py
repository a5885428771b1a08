"""Local rate limits as a Multiplexer feature: the ``[limits]`` section, the caller's key before
each request, settlement after it, and the endpoint gate.

Endpoint limits are applied by the router through the endpoint gate (an endpoint at its limit
is skipped, not failed); the ``after`` hook settles those reservations too.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Any

from .._exceptions import ConfigError
from ..features import ORDER_LIMITS, Feature, Slot, register_feature, section_of
from .config import LimitsConfig
from .limiter import RateLimiter, Rejected, Reservation, estimate_tokens
from .memory import MemoryLimitBackend
from .redis import RedisLimitBackend
from .sqlite import SqliteLimitBackend

__all__ = ["DEFAULT_CALLER", "LimitsFeature"]

DEFAULT_CALLER = "default"

TOKEN_ESTIMATE: Slot[int] = Slot("limits.token_estimate")
RESERVATION: Slot[Reservation] = Slot("limits.reservation")
ENDPOINT_TICKETS: Slot[list[Reservation]] = Slot("limits.endpoint_tickets")

_BACKENDS = ("memory", "sqlite", "redis")


def limit_backend(kind: str, path: Any = None, redis_url: str | None = None) -> Any:
    """A limit backend by name: ``"memory"``, ``"sqlite"`` (file at ``path``) or ``"redis"``."""
    if kind == "memory":
        return MemoryLimitBackend()
    if kind == "sqlite":
        return SqliteLimitBackend(path)
    if kind == "redis":
        return RedisLimitBackend(redis_url)
    raise ValueError(f"unknown limits backend {kind!r}: use 'memory', 'sqlite' or 'redis'")


@register_feature
class LimitsFeature(Feature):
    """Charges ``caller`` (default key ``"default"``) an estimate, then the real usage.

    The caller's tier comes from the limits config (key -> tier), or from
    ``mux_metadata={"limit_tier": ...}`` (the gateway passes its API key's tier that way).
    """

    name = "limits"
    sections = ("limits",)
    order = ORDER_LIMITS

    def __init__(
        self,
        config: LimitsConfig | Mapping[str, Any] | None = None,
        *,
        backend: Any = "memory",
        path: str | os.PathLike[str] | None = None,
        redis_url: str | None = None,
        default_max_tokens: int = 1024,
    ) -> None:
        if config is None or isinstance(config, Mapping):
            config = LimitsConfig.from_dict(config)
        if isinstance(backend, str):
            backend = limit_backend(backend, path, redis_url)
        self.limiter = RateLimiter(backend, config)
        self.default_max_tokens = default_max_tokens

    @classmethod
    def from_config(cls, data: Mapping[str, Any], source: str) -> LimitsFeature | None:
        section = section_of(data, "limits", source)
        if section is None:
            return None
        backend = section.pop("backend", "memory")
        if backend not in _BACKENDS:
            raise ConfigError(
                f"got {backend!r}",
                source=source,
                key="limits.backend",
                expected="'memory', 'sqlite' or 'redis'",
            )
        path = section.pop("path", None)
        redis_url = section.pop("redis_url", None)
        return cls(section, backend=backend, path=path, redis_url=redis_url)

    def install(self, mux: Any) -> RateLimiter:
        mux.add_feature(self)
        if self.limiter.config.endpoints:
            mux.set_endpoint_gate(self.endpoint_gate)
        mux.want_stream_usage()
        mux.limiter = self.limiter
        return self.limiter

    def _estimate(self, ctx: Any) -> int:
        estimate = ctx.get(TOKEN_ESTIMATE)
        if estimate is None:
            estimate = estimate_tokens(ctx.params, default_max_tokens=self.default_max_tokens)
            ctx.set(TOKEN_ESTIMATE, estimate)
        return int(estimate)

    async def before(self, ctx: Any) -> None:
        metadata = ctx.options.metadata or {}
        reservation = await self.limiter.acquire(
            ctx.caller or DEFAULT_CALLER,
            tokens=self._estimate(ctx),
            tier=metadata.get("limit_tier"),
            # before-hooks run outside the routing deadline: the limiter must not outlast it
            deadline_at=ctx.deadline_at,
        )
        ctx.set(RESERVATION, reservation)

    async def endpoint_gate(self, ep: Any, ctx: Any) -> Reservation | Rejected | bool:
        """Reserve room on the endpoint; a falsy ``Rejected`` makes the router skip it."""
        if ep.name not in self.limiter.config.endpoints:
            return True
        ticket = await self.limiter.try_acquire(ep.name, tokens=self._estimate(ctx))
        if ticket:
            tickets = ctx.get(ENDPOINT_TICKETS)
            if tickets is None:
                tickets = []
                ctx.set(ENDPOINT_TICKETS, tickets)
            tickets.append(ticket)
        return ticket

    async def after(self, ctx: Any) -> None:
        actual = _total_tokens(ctx.usage)
        if actual is None and ctx.status != "ok":
            actual = 0  # nothing was generated: give the tokens back, the request still counts
        reservation = ctx.get(RESERVATION)
        if reservation is not None:
            await reservation.asettle(actual)
        for ticket in ctx.get(ENDPOINT_TICKETS) or ():
            await ticket.asettle(actual)

    async def aclose(self) -> None:
        await self.limiter.aclose()


def _total_tokens(usage: Any) -> int | None:
    if usage is None:
        return None
    total = getattr(usage, "total_tokens", None)
    if total is None and isinstance(usage, dict):
        total = usage.get("total_tokens")
    return int(total) if total is not None else None
