"""One usage record per request, written off the hot path by the Meter's writer thread."""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .._core import RequestContext
    from ..metering import Meter

__all__ = ["MeteringHook"]

_STATUS = {"ok": "ok", "closed": "ok", "cancelled": "cancelled"}


def _get(obj: Any, name: str) -> Any:
    if obj is None:
        return None
    if isinstance(obj, dict):
        return obj.get(name)
    return getattr(obj, name, None)


class MeteringHook:
    def __init__(self, meter: Meter) -> None:
        from ..metering import UsageRecord

        self.meter = meter
        self._record = UsageRecord

    async def before(self, ctx: RequestContext) -> None:
        return None

    async def after(self, ctx: RequestContext) -> None:
        usage = ctx.usage
        details = _get(usage, "completion_tokens_details")
        decision = ctx.extras.get("tiering")
        error = None
        if ctx.error is not None:
            status = getattr(ctx.error, "status_code", None)
            error = type(ctx.error).__name__ + (f" {status}" if status else "")
        requested = str(ctx.requested_model or ctx.model)
        served = str(ctx.model) if ctx.model != ctx.requested_model else None
        # An attempt that was cancelled because another won is not a request of its own: the
        # record counts the request once, with the winner's tokens.
        attempts = sum(1 for a in ctx.attempts if a.reason != "cancelled") or len(ctx.attempts)
        self.meter.record(
            self._record(
                model=requested,
                time=time.time() - ctx.latency,
                request_id=ctx.request_id,
                key=ctx.caller,
                session_id=ctx.options.session_id,
                served_model=served,
                tier=getattr(decision, "tier", None),
                tiering_reason=getattr(decision, "reason", None),
                endpoint=ctx.endpoint.name if ctx.endpoint is not None else None,
                attempts=attempts,
                prompt_tokens=int(_get(usage, "prompt_tokens") or 0),
                completion_tokens=int(_get(usage, "completion_tokens") or 0),
                reasoning_tokens=int(_get(details, "reasoning_tokens") or 0),
                latency=ctx.latency,
                ttft=ctx.ttfb,
                status=_STATUS.get(ctx.status, "error"),
                error=error,
                hedged=ctx.hedged,
                failed_over=ctx.failed_over,
            )
        )
