"""The endpoint registry: which endpoints exist, which pools they serve, and their lifecycle.

A *pool* is the set of endpoints serving one public model name, split into a primary and a
fallback tier. Pools are immutable tuples, replaced (never mutated in place) when endpoints
come and go, so a request that is selecting from a pool never sees it change under it; adding
or removing an endpoint touches only the pools of its own models (adding 1,000 endpoints does
not rebuild every pool 1,000 times).

Lifecycle, as endpoint sources report it (a vLLM node's health, a Gonka group, a broker):

- ``mark_ready``: back in rotation now; clears cooldown, ejection, quarantine and withdrawn
  models (a restarted node gets traffic within one health poll of being ready);
- ``mark_draining``: no new requests from this moment; requests in flight finish;
- ``mark_down``: not serving (starting, unreachable): no new requests until marked ready;
- ``mark_gone``: removed;
- ``retire_group``: every endpoint of a group removed at once (a retired network).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Iterable
from typing import TYPE_CHECKING, Any

from .endpoint import Endpoint
from .routing.health import HealthPolicy
from .routing.hedging import LatencyWindow
from .routing.outcome import ErrorPolicy

if TYPE_CHECKING:
    from .routing.strategies import Strategy

log = logging.getLogger("gonka_mux.registry")

__all__ = ["DEFAULT_POOL", "EndpointRegistry", "Pool"]

DEFAULT_POOL = "*"
_default_error_policy = ErrorPolicy()


class Pool:
    """The endpoints serving one public model name, split by tier."""

    __slots__ = ("fallback", "latency", "latency_stream", "model", "primary", "waiters")

    def __init__(self, model: str) -> None:
        self.model = model
        self.primary: tuple[Endpoint, ...] = ()
        self.fallback: tuple[Endpoint, ...] = ()
        # first-byte times of non-streamed replies (the whole generation) and of streams (the
        # first token) differ by orders of magnitude: they get separate windows
        self.latency = LatencyWindow()
        self.latency_stream = LatencyWindow()
        self.waiters: list[asyncio.Future[None]] = []

    def all(self) -> tuple[Endpoint, ...]:
        return self.primary + self.fallback

    def window(self, stream: bool) -> LatencyWindow:
        return self.latency_stream if stream else self.latency

    def wake_all(self) -> None:
        waiters, self.waiters = self.waiters, []
        for fut in waiters:
            if not fut.done():
                fut.set_result(None)


class EndpointRegistry:
    """Endpoints by name, aliases, and the per-model pools built from them."""

    def __init__(
        self, health_policy: HealthPolicy | None = None, *, latency_decay: float = 10.0
    ) -> None:
        self.health_policy = health_policy or HealthPolicy()
        self.latency_decay = latency_decay
        self.endpoints: dict[str, Endpoint] = {}
        self.aliases: dict[str, str] = {}
        self.pools: dict[str, Pool] = {}

    # -- membership -----------------------------------------------------------------------
    def _adopt(self, endpoint: Endpoint) -> None:
        if endpoint.error_policy is None:
            endpoint.error_policy = _default_error_policy
        if endpoint.health.policy is not self.health_policy and endpoint.health.policy == (
            HealthPolicy()
        ):
            endpoint.health.policy = self.health_policy
        endpoint.removed = False
        endpoint.ewma.decay_tau = self.latency_decay
        endpoint.on_release = self.wake_one
        self.endpoints[endpoint.name] = endpoint

    def add(self, endpoint: Endpoint, *, default_pool: bool = False) -> Endpoint:
        if endpoint.name in self.endpoints and self.endpoints[endpoint.name] is not endpoint:
            raise ValueError(
                f"an endpoint named {endpoint.name!r} already exists; pass a different name= "
                "or remove the old one first"
            )
        if default_pool:
            endpoint.models.setdefault(DEFAULT_POOL, next(iter(endpoint.models.values())))
        if endpoint.name in self.endpoints:
            return endpoint
        self._adopt(endpoint)
        self._index(endpoint, add=True)
        return endpoint

    def get(self, name_or_endpoint: str | Endpoint) -> Endpoint:
        name = name_or_endpoint if isinstance(name_or_endpoint, str) else name_or_endpoint.name
        try:
            return self.endpoints[name]
        except KeyError:
            raise KeyError(
                f"no endpoint named {name!r}; mux.endpoints lists the registered ones"
            ) from None

    def remove(self, name_or_endpoint: str | Endpoint) -> Endpoint:
        ep = self.get(name_or_endpoint)
        del self.endpoints[ep.name]
        ep.removed = True  # requests in flight on it finish; no new ones are sent
        self._index(ep, add=False)
        return ep

    def replace_group(self, group: str, endpoints: Iterable[Endpoint]) -> list[Endpoint]:
        """Atomically swap every endpoint of ``group`` for ``endpoints``.

        Requests in flight finish on the old endpoints; new requests see only the new set.
        Returns the removed endpoints.
        """
        new = list(endpoints)
        names = {ep.name for ep in new}
        if len(names) != len(new):
            raise ValueError("replace_group: endpoint names must be unique")
        for ep in new:
            clash = self.endpoints.get(ep.name)
            if clash is not None and clash.group != group:
                raise ValueError(f"an endpoint named {ep.name!r} already exists outside {group!r}")
        removed = [ep for ep in self.endpoints.values() if ep.group == group]
        for ep in removed:
            del self.endpoints[ep.name]
        for ep in new:
            ep.group = group
            self._adopt(ep)
        kept = {id(ep) for ep in new}
        gone = [ep for ep in removed if id(ep) not in kept]
        for ep in gone:
            ep.removed = True
        self.rebuild()
        return gone

    def retire_group(self, group: str) -> list[Endpoint]:
        """Remove every endpoint of ``group`` at once; returns them."""
        return self.replace_group(group, [])

    # -- lifecycle ------------------------------------------------------------------------
    def mark_ready(self, name_or_endpoint: str | Endpoint) -> Endpoint:
        ep = self.get(name_or_endpoint)
        ep.lifecycle = "active"
        ep.health.reset()
        ep.ewma.clear_penalty()  # its failures were before it said it is ready
        if ep.withdrawn:
            ep.models.update(ep.withdrawn)
            ep.withdrawn.clear()
            self._index(ep, add=False)
            self._index(ep, add=True)
        for public in ep.models:
            pool = self.pools.get(public)
            if pool is not None:
                pool.wake_all()
        return ep

    def mark_draining(self, name_or_endpoint: str | Endpoint) -> Endpoint:
        ep = self.get(name_or_endpoint)
        ep.lifecycle = "draining"
        return ep

    def mark_down(self, name_or_endpoint: str | Endpoint) -> Endpoint:
        ep = self.get(name_or_endpoint)
        ep.lifecycle = "down"
        return ep

    def mark_gone(self, name_or_endpoint: str | Endpoint) -> Endpoint:
        return self.remove(name_or_endpoint)

    def withdraw(self, ep: Endpoint, public: str) -> None:
        """``ep`` answered 404 for ``public``: out of that pool until it is marked ready."""
        upstream = ep.models.get(public)
        if upstream is None or ep.removed:
            return
        self._index(ep, add=False)
        ep.withdrawn[public] = ep.models.pop(public)
        if not ep.models:
            ep.lifecycle = "gone"
        self._index(ep, add=True)

    def set_gone(self, ep: Endpoint) -> None:
        """``ep`` answered 410: out of rotation until its source marks it ready."""
        ep.lifecycle = "gone"

    # -- pools ----------------------------------------------------------------------------
    def _index(self, ep: Endpoint, *, add: bool) -> None:
        """Add or remove ``ep`` in the pools of its models (copy-on-write tuples)."""
        pools = self.pools
        changed = False
        for public in ep.models:
            pool = pools.get(public)
            if pool is None:
                if not add:
                    continue
                pool = Pool(public)
                pools = dict(pools) if not changed else pools
                changed = True
                pools[public] = pool
            if ep.tier == "primary":
                pool.primary = _with(pool.primary, ep) if add else _without(pool.primary, ep)
            else:
                pool.fallback = _with(pool.fallback, ep) if add else _without(pool.fallback, ep)
            if not add and not pool.primary and not pool.fallback:
                pools = dict(pools) if not changed else pools
                changed = True
                pools.pop(public, None)
        if changed:
            self.pools = pools  # one assignment: readers see the old or the new mapping

    def rebuild(self) -> None:
        primary: dict[str, list[Endpoint]] = {}
        fallback: dict[str, list[Endpoint]] = {}
        for ep in self.endpoints.values():
            target = primary if ep.tier == "primary" else fallback
            for public in ep.models:
                target.setdefault(public, []).append(ep)
        pools: dict[str, Pool] = {}
        for model in primary.keys() | fallback.keys():
            pool = self.pools.get(model) or Pool(model)
            pool.primary = tuple(primary.get(model, ()))
            pool.fallback = tuple(fallback.get(model, ()))
            pools[model] = pool
        self.pools = pools

    def resolve(self, model: str | None) -> Pool:
        if model is not None:
            pool = self.pools.get(model)
            if pool is not None:
                return pool
            target = self.aliases.get(model)
            if target is not None and target in self.pools:
                return self.pools[target]
        pool = self.pools.get(DEFAULT_POOL)
        if pool is not None:
            return pool
        from .errors import InvalidRequestError, ModelNotFound

        known = [m for m in self.pools if m != DEFAULT_POOL] + list(self.aliases)
        if model is None:
            raise InvalidRequestError(
                "create() needs a model= argument (or register add_model endpoints)",
                param="model",
            )
        raise ModelNotFound(model, known)

    def models(self) -> list[str]:
        return sorted(m for m in self.pools if m != DEFAULT_POOL)

    # -- selection ------------------------------------------------------------------------
    @staticmethod
    def select(
        strategy: Strategy, pool: Pool, tried: set[Endpoint], now: float, default_cost: float
    ) -> Endpoint | None:
        if pool.primary:
            ep = strategy.select(pool.primary, now, tried, default_cost)
            if ep is not None:
                return ep
        if pool.fallback:
            return strategy.select(pool.fallback, now, tried, default_cost)
        return None

    def wake_one(self, ep: Endpoint) -> None:
        """Wake one request waiting for a slot in a pool this endpoint serves."""
        for public in ep.models:
            pool = self.pools.get(public)
            if pool is None:
                continue
            while pool.waiters:
                fut = pool.waiters.pop(0)
                if not fut.done():
                    fut.set_result(None)
                    return

    @staticmethod
    def next_available(pool: Pool, tried: set[Endpoint], now: float) -> float | None:
        """When some untried endpoint of the pool becomes selectable (None: none will)."""
        best: float | None = None
        for ep in pool.all():
            if ep.removed or ep in tried or ep.lifecycle != "active":
                continue
            at = ep.health.available_at(now)
            if best is None or at < best:
                best = at
        return best

    def stats(self, now: float) -> dict[str, Any]:
        return {
            "endpoints": {name: ep.snapshot(now) for name, ep in self.endpoints.items()},
            "models": {
                m: {
                    "primary": [e.name for e in p.primary],
                    "fallback": [e.name for e in p.fallback],
                    "ttfb_p95_s": p.latency.percentile(0.95),
                    "stream_ttfb_p95_s": p.latency_stream.percentile(0.95),
                }
                for m, p in self.pools.items()
            },
            "aliases": dict(self.aliases),
        }


def _with(members: tuple[Endpoint, ...], ep: Endpoint) -> tuple[Endpoint, ...]:
    return members if ep in members else (*members, ep)


def _without(members: tuple[Endpoint, ...], ep: Endpoint) -> tuple[Endpoint, ...]:
    return tuple(m for m in members if m is not ep) if ep in members else members
