"""Local rate limits around each request: the caller's key before, settlement after.

Endpoint limits are applied by the router through ``MuxCore.endpoint_gate`` (an endpoint at
its limit is skipped, not failed); this hook settles those reservations too.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .._core import RequestContext
    from ..endpoint import Endpoint
    from ..limits import RateLimiter

__all__ = ["LimitsHook"]

DEFAULT_CALLER = "default"


class LimitsHook:
    """Charges ``caller`` (default key ``"default"``) an estimate, then the real usage.

    The caller's tier comes from the limits config (key -> tier), or from
    ``mux_metadata={"limit_tier": ...}`` (the gateway passes its API key's tier that way).
    """

    def __init__(self, limiter: RateLimiter, *, default_max_tokens: int = 1024) -> None:
        self.limiter = limiter
        self.default_max_tokens = default_max_tokens

    def _estimate(self, ctx: RequestContext) -> int:
        estimate = ctx.extras.get("token_estimate")
        if estimate is None:
            from ..limits import estimate_tokens

            estimate = estimate_tokens(ctx.params, default_max_tokens=self.default_max_tokens)
            ctx.extras["token_estimate"] = estimate
        return int(estimate)

    async def before(self, ctx: RequestContext) -> None:
        metadata = ctx.options.metadata or {}
        reservation = await self.limiter.acquire(
            ctx.caller or DEFAULT_CALLER,
            tokens=self._estimate(ctx),
            tier=metadata.get("limit_tier"),
        )
        ctx.extras["limit_reservation"] = reservation

    async def endpoint_gate(self, ep: Endpoint, ctx: RequestContext) -> Any:
        """Reserve room on the endpoint; a falsy ``Rejected`` makes the router skip it."""
        if ep.name not in self.limiter.config.endpoints:
            return True
        ticket = await self.limiter.try_acquire(ep.name, tokens=self._estimate(ctx))
        if ticket:
            ctx.extras.setdefault("endpoint_reservations", []).append(ticket)
        return ticket

    async def after(self, ctx: RequestContext) -> None:
        actual = _total_tokens(ctx.usage)
        if actual is None and ctx.status != "ok":
            actual = 0  # nothing was generated: give the tokens back, the request still counts
        reservation = ctx.extras.get("limit_reservation")
        if reservation is not None:
            await reservation.asettle(actual)
        for ticket in ctx.extras.get("endpoint_reservations", ()):
            await ticket.asettle(actual)


def _total_tokens(usage: Any) -> int | None:
    if usage is None:
        return None
    total = getattr(usage, "total_tokens", None)
    if total is None and isinstance(usage, dict):
        total = usage.get("total_tokens")
    return int(total) if total is not None else None
