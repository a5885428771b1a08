"""Metering as a Multiplexer feature: the ``[metering]`` and ``[prices]`` sections and one usage
record per request, written off the hot path by the Meter's writer thread."""

from __future__ import annotations

import asyncio
import os
import time
from collections.abc import Mapping
from typing import Any

from .._exceptions import ConfigError
from ..cache.feature import CACHE
from ..features import ORDER_METERING, Feature, register_feature, reject_leftover, section_of
from ..tiering.feature import TIERING_DECISION
from .meter import Meter
from .prices import Prices
from .records import UsageRecord
from .stores import MemoryUsageStore, open_usage_store

__all__ = ["MeteringFeature"]

_STATUS = {"ok": "ok", "closed": "ok", "cancelled": "cancelled", "interrupted": "interrupted"}


def _get(obj: Any, name: str) -> Any:
    if obj is None:
        return None
    if isinstance(obj, dict):
        return obj.get(name)
    return getattr(obj, name, None)


def _endpoint_of(ctx: Any) -> str | None:
    """The endpoint that served the request, or, for a failed one, where its last attempt went
    (so a failure is counted against an endpoint, not against "none")."""
    if ctx.endpoint is not None:
        return str(ctx.endpoint.name)
    for attempt in reversed(ctx.attempts):
        if attempt.endpoint:
            return str(attempt.endpoint)
    return None


@register_feature
class MeteringFeature(Feature):
    name = "metering"
    sections = ("metering", "prices")
    order = ORDER_METERING

    def __init__(
        self,
        store: Any = None,
        *,
        path: str | os.PathLike[str] | None = None,
        prices: Prices | Mapping[str, Any] | None = None,
        **meter_options: Any,
    ) -> None:
        if store is None:
            # ``path`` may be a postgresql:// URL: one usage table for every host.
            store = open_usage_store(path)
        elif isinstance(store, str) and store.lower().startswith(("postgresql://", "postgres://")):
            store = open_usage_store(store)
        elif store == "memory":
            store = MemoryUsageStore()
        if isinstance(prices, Mapping):
            prices = Prices.from_dict(prices)
        self.meter = Meter(store, prices, **meter_options)

    @classmethod
    def from_config(cls, data: Mapping[str, Any], source: str) -> MeteringFeature | None:
        if "metering" not in data and "prices" not in data:
            return None
        section = section_of(data, "metering", source) or {}
        enabled = section.pop("enabled", True)
        if not isinstance(enabled, bool):
            raise ConfigError(
                f"got {enabled!r}", source=source, key="metering.enabled", expected="true or false"
            )
        if not enabled:
            return None
        store = section.pop("store", "sqlite")
        if store not in ("sqlite", "memory"):
            raise ConfigError(
                f"got {store!r}",
                source=source,
                key="metering.store",
                expected="'sqlite' or 'memory'",
            )
        path = section.pop("path", None)
        reject_leftover(section, source, "metering", "enabled, store, path")
        return cls("memory" if store == "memory" else None, path=path, prices=data.get("prices"))

    def install(self, mux: Any) -> Meter:
        mux.add_feature(self)
        mux.want_stream_usage()
        mux.meter = self.meter
        return self.meter

    async def after(self, ctx: Any) -> None:
        usage = ctx.usage
        details = _get(usage, "completion_tokens_details")
        decision = ctx.get(TIERING_DECISION)
        error = None
        if ctx.error is not None:
            status = getattr(ctx.error, "status_code", None)
            error = type(ctx.error).__name__ + (f" {status}" if status else "")
        requested = str(ctx.requested_model or ctx.model)
        served = str(ctx.model) if ctx.model != ctx.requested_model else None
        # An attempt that was cancelled because another won is not a request of its own: the
        # record counts the request once, with the winner's tokens.
        attempts = sum(1 for a in ctx.attempts if a.reason != "cancelled") or len(ctx.attempts)
        cache, saved_tokens, saved_cost = self._cache_fields(ctx, served or requested)
        self.meter.record(
            UsageRecord(
                model=requested,
                time=time.time() - ctx.latency,
                request_id=ctx.request_id,
                key=ctx.caller,
                session_id=ctx.options.session_id,
                served_model=served,
                tier=getattr(decision, "tier", None),
                tiering_reason=getattr(decision, "reason", None),
                endpoint=_endpoint_of(ctx),
                attempts=attempts,
                prompt_tokens=int(_get(usage, "prompt_tokens") or 0),
                completion_tokens=int(_get(usage, "completion_tokens") or 0),
                reasoning_tokens=int(_get(details, "reasoning_tokens") or 0),
                latency=ctx.latency,
                # time to first token: a stream's first chunk; a non-streamed reply has none
                # (its first byte is the whole answer, which `latency` already says)
                ttft=ctx.ttfb if ctx.stream else None,
                status=_STATUS.get(ctx.status, "error"),
                error=error,
                hedged=ctx.hedged,
                failed_over=ctx.failed_over,
                cache=cache,
                saved_tokens=saved_tokens,
                saved_cost=saved_cost,
            )
        )

    def _cache_fields(self, ctx: Any, model: str) -> tuple[str, int, float | None]:
        """The response cache's part of the record: a hit spent no tokens (ctx.usage is None)
        and saved those of the reply it replayed, priced like any other request."""
        lookup = ctx.get(CACHE)
        if lookup is None or lookup.status not in ("hit", "miss"):
            return "", 0, None
        if lookup.status == "miss":
            return "miss", 0, None
        usage = lookup.usage or {}
        prompt = int(usage.get("prompt_tokens") or 0)
        completion = int(usage.get("completion_tokens") or 0)
        prices = self.meter.prices
        saved = prices.cost(model, prompt, completion) if prices is not None else None
        return "hit", prompt + completion, saved

    async def aclose(self) -> None:
        await asyncio.to_thread(self.meter.close)  # flushes the queued records
