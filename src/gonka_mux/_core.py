"""The async core shared by AsyncMultiplexer and Multiplexer: pools, selection, failover, hedging.

One request goes through ``MuxCore.execute``:

1. resolve the model (aliases) to a pool; run the ``before`` hooks of the extensions (sessions,
   tiering, limits), which may rewrite the parameters;
2. pick an endpoint with the strategy (primary tier first, fallback tier only when no primary
   endpoint is selectable), send, and on a retryable failure move to another endpoint, bounded by
   ``max_attempts``, the retry budget and the caller's deadline; with hedging on, a second
   endpoint is asked when the first byte is late and the first answer wins;
3. for streams, the first chunk is awaited inside the attempt, so failover happens only before
   the caller has seen any output; later failures raise ``StreamInterrupted`` with the partial
   output;
4. run the ``after`` hooks (metering, session append, limit settlement) once per request.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
import uuid
from collections.abc import Awaitable, Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol

from .endpoint import Endpoint
from .routing.budget import RetryBudget
from .routing.health import HealthPolicy
from .routing.hedging import HedgePolicy, LatencyWindow
from .routing.outcome import ErrorPolicy, Failure
from .routing.strategies import Strategy, strategy_from_name

log = logging.getLogger("gonka_mux.core")

__all__ = ["CallOptions", "Extension", "MuxCore", "RequestContext", "RoutingSettings"]

DEFAULT_POOL = "*"
_default_error_policy = ErrorPolicy()

# Keyword arguments of create() that belong to gonka_mux, not to the OpenAI request body.
MUX_KWARGS = frozenset(
    {"session_id", "tier", "deadline", "hedge", "caller", "mux_metadata", "route_to"}
)
# create() keyword arguments that openai turns into request options, not body fields.
OPTION_KWARGS = frozenset({"extra_headers", "extra_query", "extra_body", "timeout"})


@dataclass
class RoutingSettings:
    """Routing and retry settings (see docs/configuration.md)."""

    strategy: str = "p2c"
    first_byte_timeout: float = 60.0
    connect_timeout: float = 10.0
    deadline: float | None = 600.0
    max_attempts: int = 4
    failure_penalty: float = 1.0
    default_latency: float = 0.1
    wait_for_capacity: float = 10.0
    retry_budget_ratio: float = 0.2
    retry_budget_min_per_second: float = 10.0
    retry_budget_ttl: float = 10.0
    health: HealthPolicy = field(default_factory=HealthPolicy)
    hedging: HedgePolicy | None = None
    context_fallbacks: dict[str, str] = field(default_factory=dict)
    seed: int | None = None

    def __post_init__(self) -> None:
        if self.first_byte_timeout <= 0:
            raise ValueError("first_byte_timeout must be > 0 seconds")
        if self.connect_timeout <= 0:
            raise ValueError("connect_timeout must be > 0 seconds")
        if self.deadline is not None and self.deadline <= 0:
            raise ValueError("deadline must be > 0 seconds or None")
        if self.max_attempts < 1:
            raise ValueError("max_attempts must be >= 1")
        strategy_from_name(self.strategy)  # fail early on an unknown name


@dataclass
class CallOptions:
    """What the caller asked of gonka_mux for one request (the non-OpenAI keyword arguments)."""

    session_id: str | None = None
    tier: str | None = None
    deadline: float | None = None
    hedge: bool | float | None = None
    caller: str | None = None
    metadata: dict[str, Any] | None = None
    route_to: str | None = None  # pin to one endpoint by name (admin probes, tests)


class RequestContext:
    """Everything known about one request; extensions read and annotate it."""

    __slots__ = (
        "attempts",
        "caller",
        "endpoint",
        "error",
        "extras",
        "failed_over",
        "hedged",
        "kind",
        "model",
        "options",
        "params",
        "request_id",
        "requested_model",
        "response",
        "status",
        "stream",
        "t_first_byte",
        "t_start",
        "upstream_model",
        "usage",
    )

    def __init__(self, kind: str, params: dict[str, Any], options: CallOptions, stream: bool):
        self.request_id = uuid.uuid4().hex
        self.kind = kind
        self.params = params
        self.options = options
        self.stream = stream
        self.requested_model = params.get("model")
        self.model = self.requested_model
        self.caller = options.caller
        self.t_start = time.monotonic()
        self.t_first_byte: float | None = None
        self.attempts: list[Any] = []
        self.endpoint: Endpoint | None = None
        self.upstream_model: str | None = None
        self.usage: Any = None
        self.status = "pending"
        self.error: BaseException | None = None
        self.hedged = False
        self.failed_over = False
        self.response: Any = None
        self.extras: dict[str, Any] = {}

    @property
    def latency(self) -> float:
        return time.monotonic() - self.t_start

    @property
    def ttfb(self) -> float | None:
        return None if self.t_first_byte is None else self.t_first_byte - self.t_start


class Extension(Protocol):
    """A before/after hook around every request (sessions, tiering, limits, metering)."""

    async def before(self, ctx: RequestContext) -> None: ...

    async def after(self, ctx: RequestContext) -> None: ...


@dataclass(frozen=True)
class RequestKind:
    name: str
    path: str


CHAT = RequestKind("chat", "/chat/completions")
COMPLETIONS = RequestKind("completions", "/completions")
EMBEDDINGS = RequestKind("embeddings", "/embeddings")


class Pool:
    """The endpoints serving one public model name, split by tier. Replaced, never mutated."""

    __slots__ = ("fallback", "latency", "model", "primary", "waiters")

    def __init__(self, model: str) -> None:
        self.model = model
        self.primary: tuple[Endpoint, ...] = ()
        self.fallback: tuple[Endpoint, ...] = ()
        self.latency = LatencyWindow()
        self.waiters: list[asyncio.Future[None]] = []

    def all(self) -> tuple[Endpoint, ...]:
        return self.primary + self.fallback


class _Success:
    __slots__ = ("endpoint", "first", "result", "ttfb")

    def __init__(self, endpoint: Endpoint, result: Any, first: Any, ttfb: float) -> None:
        self.endpoint = endpoint
        self.result = result
        self.first = first
        self.ttfb = ttfb


class MuxCore:
    """Async routing core; both Multiplexer faces delegate here."""

    def __init__(self, settings: RoutingSettings | None = None) -> None:
        self.settings = settings or RoutingSettings()
        s = self.settings
        self.strategy: Strategy = strategy_from_name(s.strategy, s.seed)
        self.budget = RetryBudget(
            ratio=s.retry_budget_ratio,
            min_per_second=s.retry_budget_min_per_second,
            ttl=s.retry_budget_ttl,
        )
        self.endpoints: dict[str, Endpoint] = {}
        self.aliases: dict[str, str] = {}
        self.pools: dict[str, Pool] = {}
        self.extensions: list[Extension] = []
        self.on_failure_hooks: list[Callable[[Endpoint, Failure], None]] = []
        # async callables run by aclose(), first registered last (refresh managers, monitors)
        self.closers: list[Callable[[], Awaitable[None]]] = []
        # (endpoint, ctx) -> truthy ticket, or falsy to skip the endpoint (endpoint rate limits)
        self.endpoint_gate: Callable[[Endpoint, RequestContext], Awaitable[Any]] | None = None
        # ask streams for their usage chunk (metering, limits) even when the caller did not
        self.wants_stream_usage = False
        # async set-up deferred to the first request, on the loop that serves (e.g. vLLM nodes
        # named in a config file read outside any loop)
        self.startup: list[Callable[[], Awaitable[Any]]] = []
        self._startup_lock: asyncio.Lock | None = None
        self._reapers: set[asyncio.Task[Any]] = set()
        self._types: Any = None
        self._timeouts: dict[tuple[float, float], Any] = {}

    # -- endpoint registry ----------------------------------------------------------------
    def add(self, endpoint: Endpoint, *, default_pool: bool = False) -> Endpoint:
        if endpoint.name in self.endpoints and self.endpoints[endpoint.name] is not endpoint:
            raise ValueError(
                f"an endpoint named {endpoint.name!r} already exists; pass a different name= "
                "or remove the old one first"
            )
        if endpoint.error_policy is None:
            endpoint.error_policy = _default_error_policy
        if endpoint.health.policy is not self.settings.health and endpoint.health.policy == (
            HealthPolicy()
        ):
            endpoint.health.policy = self.settings.health
        endpoint.removed = False
        if default_pool:
            endpoint.models.setdefault(DEFAULT_POOL, next(iter(endpoint.models.values())))
        endpoint.on_release = self._on_release
        self.endpoints[endpoint.name] = endpoint
        self._rebuild()
        return endpoint

    def remove(self, name_or_endpoint: str | Endpoint) -> Endpoint:
        name = name_or_endpoint if isinstance(name_or_endpoint, str) else name_or_endpoint.name
        try:
            ep = self.endpoints.pop(name)
        except KeyError:
            raise KeyError(f"no endpoint named {name!r}") from None
        ep.removed = True  # requests in flight on it finish; no new ones are sent
        self._rebuild()
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
        removed = [ep for ep in self.endpoints.values() if ep.group == group]
        for ep in removed:
            del self.endpoints[ep.name]
        for ep in new:
            clash = self.endpoints.get(ep.name)
            if clash is not None:
                raise ValueError(f"an endpoint named {ep.name!r} already exists outside {group!r}")
            ep.group = group
            if ep.error_policy is None:
                ep.error_policy = _default_error_policy
            ep.on_release = self._on_release
            ep.removed = False
            self.endpoints[ep.name] = ep
        kept = {id(ep) for ep in new}
        for ep in removed:
            if id(ep) not in kept:
                ep.removed = True
        self._rebuild()
        return [ep for ep in removed if id(ep) not in kept]

    def _rebuild(self) -> None:
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
        self.pools = pools  # one assignment: readers see the old or the new mapping

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
        from .errors import ModelNotFound

        known = [m for m in self.pools if m != DEFAULT_POOL] + list(self.aliases)
        if model is None:
            raise TypeError("create() needs a model= argument (or register add_model endpoints)")
        raise ModelNotFound(model, known)

    def models(self) -> list[str]:
        return sorted(m for m in self.pools if m != DEFAULT_POOL)

    # -- selection ------------------------------------------------------------------------
    def select(self, pool: Pool, tried: set[Endpoint], now: float) -> Endpoint | None:
        cost = self.settings.default_latency
        if pool.primary:
            ep = self.strategy.select(pool.primary, now, tried, cost)
            if ep is not None:
                return ep
        if pool.fallback:
            return self.strategy.select(pool.fallback, now, tried, cost)
        return None

    def _on_release(self, ep: Endpoint) -> None:
        # Wake one request waiting for a slot in a pool this endpoint serves.
        for public in ep.models:
            pool = self.pools.get(public)
            if pool is None:
                continue
            while pool.waiters:
                fut = pool.waiters.pop(0)
                if not fut.done():
                    fut.set_result(None)
                    return

    def _next_available(self, pool: Pool, tried: set[Endpoint], now: float) -> float | None:
        """When some untried endpoint of the pool becomes selectable (None: only a free slot)."""
        best: float | None = None
        for ep in pool.all():
            if ep.removed or ep in tried:
                continue
            at = ep.health.available_at(now)
            if best is None or at < best:
                best = at
        return best

    # -- request execution ----------------------------------------------------------------
    def _timeout(self, ttfb: float, connect: float) -> Any:
        key = (round(ttfb, 3), round(connect, 3))
        t = self._timeouts.get(key)
        if t is None:
            from .errors import _http

            t = _http.Timeout(key[0], connect=key[1])
            if len(self._timeouts) > 256:
                self._timeouts.clear()
            self._timeouts[key] = t
        return t

    def types(self) -> Any:
        if self._types is None:
            self._types = _OpenAITypes()
        return self._types

    async def execute(
        self,
        kind: RequestKind,
        params: dict[str, Any],
        request_options: Mapping[str, Any],
        options: CallOptions,
        *,
        stream: bool,
    ) -> Any:
        if self.startup:
            await self.run_startup()
        ctx = RequestContext(kind.name, params, options, stream)
        exts = self.extensions
        try:
            for ext in exts:
                await ext.before(ctx)
            if stream and self.wants_stream_usage:
                so = ctx.params.get("stream_options")
                if not (isinstance(so, Mapping) and so.get("include_usage")):
                    ctx.params = {
                        **ctx.params,
                        "stream_options": {**(so or {}), "include_usage": True},
                    }
                    ctx.extras["hide_usage_chunk"] = True
            result = await self._route(kind, ctx, request_options)
        except BaseException as exc:
            ctx.status = "cancelled" if isinstance(exc, asyncio.CancelledError) else "error"
            ctx.error = exc
            if exts:
                await self._run_after(ctx)
            raise
        if stream:
            from ._stream import AsyncChunkStream

            success: _Success = result
            return AsyncChunkStream(self, ctx, success)
        ctx.status = "ok"
        ctx.response = result
        ctx.usage = getattr(result, "usage", None)
        if exts:
            await self._run_after(ctx)
        return result

    async def run_startup(self) -> None:
        """Run the deferred set-up once; concurrent first requests wait for it."""
        if self._startup_lock is None:
            self._startup_lock = asyncio.Lock()
        async with self._startup_lock:
            while self.startup:
                await self.startup.pop(0)()

    async def _run_after(self, ctx: RequestContext) -> None:
        for ext in reversed(self.extensions):
            try:
                await ext.after(ctx)
            except Exception:  # an after-hook must never turn a served request into an error
                log.exception("extension %r failed after request %s", ext, ctx.request_id)

    async def _route(
        self, kind: RequestKind, ctx: RequestContext, request_options: Mapping[str, Any]
    ) -> Any:
        s = self.settings
        now = time.monotonic()
        deadline = ctx.options.deadline if ctx.options.deadline is not None else s.deadline
        deadline_at = now + deadline if deadline else float("inf")
        self.budget.deposit(now)
        pool = self.resolve(ctx.model)
        if pool.model != DEFAULT_POOL:
            ctx.model = pool.model  # an alias resolves to its target's upstream names
        tried: set[Endpoint] = set()
        user_timeout = request_options.get("timeout")
        hedge = s.hedging
        if ctx.options.hedge is False:
            hedge = None
        elif isinstance(ctx.options.hedge, (int, float)) and ctx.options.hedge is not True:
            hedge = HedgePolicy(delay=float(ctx.options.hedge))
        elif ctx.options.hedge is True and hedge is None:
            hedge = HedgePolicy()
        if ctx.options.route_to is not None:
            ep = self.endpoints.get(ctx.options.route_to)
            if ep is None:
                raise KeyError(f"no endpoint named {ctx.options.route_to!r}")
            pool = Pool(pool.model)
            pool.primary = (ep,)
        last_bodies: list[str] = []
        attempt_no = 0
        gated: dict[Endpoint, float] = {}  # endpoints skipped for their rate limit -> retry at
        while True:
            now = time.monotonic()
            if now >= deadline_at:
                self._raise_deadline(ctx, deadline)
            ep = self.select(pool, tried, now)
            if ep is None:
                if gated:
                    # Every other endpoint was tried or is limited: wait for the first limit
                    # to free up (within the deadline and wait_for_capacity), then retry them.
                    back_at = min(gated.values())
                    limit = min(deadline_at, now + s.wait_for_capacity)
                    if back_at < limit:
                        await asyncio.sleep(max(0.0, back_at - now))
                        tried.difference_update(gated)
                        gated.clear()
                        continue
                waited = await self._wait_for_capacity(pool, tried, now, deadline_at)
                if waited:
                    continue
                self._raise_exhausted(ctx, pool, tried)
            if self.endpoint_gate is not None:
                ticket = await self.endpoint_gate(ep, ctx)
                if not ticket:
                    tried.add(ep)
                    gated[ep] = now + float(getattr(ticket, "retry_after", 1.0) or 0.0)
                    continue
            if attempt_no > 0:
                if attempt_no >= s.max_attempts or not self.budget.try_withdraw(now):
                    self._raise_exhausted(ctx, pool, tried, budget=True)
                ctx.failed_over = True
            attempt_no += 1
            if hedge is not None:
                outcome = await self._hedged(
                    kind, ctx, pool, ep, tried, request_options, user_timeout, deadline_at, hedge
                )
            else:
                tried.add(ep)
                outcome = await self._attempt(
                    kind, ctx, ep, request_options, user_timeout, deadline_at, False
                )
            if isinstance(outcome, _Success):
                return outcome if ctx.stream else outcome.result
            failure: Failure = outcome
            if not failure.retryable:
                if failure.kind == "context_length":
                    target = s.context_fallbacks.get(str(ctx.model))
                    if target and target != ctx.model:
                        log.info("context length exceeded on %s; retrying on %s", ctx.model, target)
                        pool = self.resolve(target)
                        ctx.model = pool.model
                        tried = set()
                        continue
                raise failure.error
            policy = ep.error_policy
            deterministic_check = policy is not None and policy.stop_on_repeated_5xx_body
            if deterministic_check and failure.status and failure.status >= 500 and failure.body:
                if failure.body in last_bodies:
                    log.info("identical %s body twice: deterministic failure", failure.status)
                    raise failure.error
                last_bodies.append(failure.body)

    async def _wait_for_capacity(
        self, pool: Pool, tried: set[Endpoint], now: float, deadline_at: float
    ) -> bool:
        """Wait for a cooling endpoint or a free slot, within the deadline and the limit."""
        limit = min(deadline_at, now + self.settings.wait_for_capacity)
        candidates = [ep for ep in pool.all() if not ep.removed and ep not in tried]
        if not candidates:
            return False
        at = self._next_available(pool, tried, now)
        full = any(ep.is_full() and ep.health.selectable(now) for ep in candidates)
        if full:
            fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
            pool.waiters.append(fut)
            timeout = limit - now
            if at is not None and at > now:
                timeout = min(timeout, at - now)
            if timeout <= 0:
                return False
            try:
                await asyncio.wait_for(fut, timeout)
            except asyncio.TimeoutError:
                pass
            finally:
                if fut in pool.waiters:
                    pool.waiters.remove(fut)
            return time.monotonic() < limit
        if at is None or at >= limit:
            return False
        await asyncio.sleep(max(0.0, at - now))
        return True

    def _raise_deadline(self, ctx: RequestContext, deadline: float | None) -> None:
        from .errors import DeadlineExceeded

        raise DeadlineExceeded(str(ctx.model), float(deadline or 0), ctx.attempts)

    def _raise_exhausted(
        self, ctx: RequestContext, pool: Pool, tried: set[Endpoint], budget: bool = False
    ) -> None:
        from .errors import AllEndpointsFailed, AllEndpointsRateLimited, NoEndpointAvailable

        attempts = ctx.attempts
        model = str(ctx.model)
        if not attempts:
            now = time.monotonic()
            at = self._next_available(pool, tried, now)
            hint = "Every endpoint is cooling down, ejected or at max_concurrent."
            headers = None
            if at is not None and at > now:
                hint += f" The first one is back in {at - now:.1f} s."
                headers = {"Retry-After": str(max(1, int(at - now + 0.999)))}
            if not pool.all():
                hint = "The pool has no endpoints (they were all removed)."
            raise NoEndpointAvailable(model, attempts, hint=hint, headers=headers)
        hint = ""
        if budget:
            hint = (
                "Stopped retrying: the attempt limit (max_attempts) or the retry budget was "
                "reached. Check the failing endpoints with mux.stats()."
            )
        if all(a.status == 429 for a in attempts):
            now = time.monotonic()
            at = self._next_available(pool, set(), now)
            wait = max(1, int((at or now) - now + 0.999))
            raise AllEndpointsRateLimited(
                model, attempts, hint=hint, headers={"Retry-After": str(wait)}
            )
        raise AllEndpointsFailed(model, attempts, hint=hint)

    async def _attempt(
        self,
        kind: RequestKind,
        ctx: RequestContext,
        ep: Endpoint,
        request_options: Mapping[str, Any],
        user_timeout: Any,
        deadline_at: float,
        is_hedge: bool,
    ) -> _Success | Failure:
        s = self.settings
        t0 = time.monotonic()
        remaining = deadline_at - t0
        if user_timeout is not None and not isinstance(user_timeout, (int, float)):
            timeout = user_timeout  # an httpx Timeout object from the caller
        else:
            ttfb = float(user_timeout) if user_timeout is not None else s.first_byte_timeout
            timeout = self._timeout(min(ttfb, remaining), min(s.connect_timeout, remaining))
        upstream_model = ep.models.get(str(ctx.model)) or ep.models.get(DEFAULT_POOL)
        body = ctx.params
        if ep.default_params:
            body = {**ep.default_params, **body}
        if upstream_model is not None and body.get("model") != upstream_model:
            body = {**body, "model": upstream_model}
        ep.inflight += 1
        ep.requests += 1
        ep.health.begin(t0)
        types = self.types()
        released = False
        try:
            opts = types.make_request_options(timeout=timeout, **request_options)
            if ctx.stream:
                upstream = await ep.client.post(
                    kind.path,
                    cast_to=types.cast_to(kind),
                    body=body,
                    options=opts,
                    stream=True,
                    stream_cls=types.stream_cls(kind),
                )
                try:
                    first = await upstream.__anext__()
                except StopAsyncIteration:
                    await upstream.close()
                    raise ValueError("the stream ended before its first chunk") from None
                except BaseException:
                    with contextlib.suppress(Exception):
                        await upstream.close()
                    raise
                result: Any = upstream
            else:
                result = await ep.client.post(
                    kind.path, cast_to=types.cast_to(kind), body=body, options=opts
                )
                first = None
                released = True
                ep.inflight -= 1
        except asyncio.CancelledError:
            if not released:
                ep.inflight -= 1
            ep.health.on_abandoned()
            now = time.monotonic()
            ep.ewma.observe_at_least(now - t0, now)
            self._record_attempt(ctx, ep, None, "cancelled", t0, is_hedge)
            if ep.on_release is not None:
                ep.on_release(ep)
            raise
        except Exception as exc:
            if not released:
                ep.inflight -= 1
            failure = (ep.error_policy or _default_error_policy).classify(exc)
            self._on_failure(ctx, ep, failure, t0, is_hedge)
            if ep.on_release is not None:
                ep.on_release(ep)
            return failure
        now = time.monotonic()
        ttfb = now - t0
        ep.successes += 1
        ep.ewma.observe(ttfb, now)
        ep.health.on_success()
        pool = self.pools.get(str(ctx.model))
        if pool is not None:
            pool.latency.add(ttfb)
        ctx.endpoint = ep
        ctx.upstream_model = upstream_model
        ctx.t_first_byte = now
        self._record_attempt(ctx, ep, 200, "ok", t0, is_hedge)
        if released and ep.on_release is not None and ep.max_concurrent is not None:
            ep.on_release(ep)
        return _Success(ep, result, first, ttfb)

    def _record_attempt(
        self,
        ctx: RequestContext,
        ep: Endpoint,
        status: int | None,
        reason: str,
        t0: float,
        hedge: bool,
    ) -> None:
        from .errors import Attempt

        ctx.attempts.append(Attempt(ep.name, status, reason, time.monotonic() - t0, hedge))

    def _on_failure(
        self, ctx: RequestContext, ep: Endpoint, failure: Failure, t0: float, hedge: bool
    ) -> None:
        now = time.monotonic()
        elapsed = now - t0
        ep.count_failure(failure.kind, failure.message)
        if failure.kind == "rate_limited":
            ep.health.on_rate_limited(now, failure.retry_after)
            ep.ewma.observe_failure(elapsed, now, self.settings.failure_penalty)
        elif failure.penalize:
            ep.health.on_failure(now)
            ep.ewma.observe_failure(elapsed, now, self.settings.failure_penalty)
        else:
            ep.health.on_abandoned()
        if failure.remove_endpoint and ep.name in self.endpoints:
            log.warning("removing endpoint %s: %s", ep.name, failure.message)
            self.remove(ep)
        self._record_attempt(ctx, ep, failure.status, failure.message, t0, hedge)
        log.debug("attempt on %s failed: %s", ep.name, failure.message)
        for hook in self.on_failure_hooks:
            try:
                hook(ep, failure)
            except Exception:
                log.exception("on_failure hook failed")

    async def _hedged(
        self,
        kind: RequestKind,
        ctx: RequestContext,
        pool: Pool,
        ep: Endpoint,
        tried: set[Endpoint],
        request_options: Mapping[str, Any],
        user_timeout: Any,
        deadline_at: float,
        hedge: HedgePolicy,
    ) -> _Success | Failure:
        """One attempt plus up to ``max_hedges`` hedges; the first success wins."""
        loop = asyncio.get_running_loop()
        pending: dict[asyncio.Task[Any], Endpoint] = {}

        def start(target: Endpoint, is_hedge: bool) -> None:
            tried.add(target)
            task = loop.create_task(
                self._attempt(
                    kind, ctx, target, request_options, user_timeout, deadline_at, is_hedge
                )
            )
            pending[task] = target

        start(ep, False)
        hedges = 0
        last_start = time.monotonic()
        failure: Failure | None = None
        try:
            while pending:
                now = time.monotonic()
                timeout = deadline_at - now
                can_hedge = hedges < hedge.max_hedges
                if can_hedge:
                    # Re-read the delay: a cold pool has no samples yet (max_delay), and the
                    # first answers arriving meanwhile should shorten it.
                    delay = hedge.delay_for(pool.latency)
                    timeout = min(timeout, max(0.0, last_start + delay - now))
                    if hedge.delay is None and len(pool.latency) < hedge.min_samples:
                        timeout = min(timeout, 0.05)
                if timeout <= 0 and not can_hedge:
                    break
                done, _ = await asyncio.wait(
                    pending, timeout=max(timeout, 0), return_when=asyncio.FIRST_COMPLETED
                )
                if not done:
                    now = time.monotonic()
                    if now >= deadline_at:
                        break
                    if now < last_start + hedge.delay_for(pool.latency):
                        continue  # woke up early to re-read a cold pool's delay
                    other = self.select(pool, tried, time.monotonic())
                    if other is not None and self.budget.try_withdraw():
                        start(other, True)
                        ctx.hedged = True
                        last_start = time.monotonic()
                    hedges += 1  # no candidate or no budget also ends hedging
                    continue
                for task in done:
                    pending.pop(task)
                    outcome = task.result()
                    if isinstance(outcome, _Success):
                        if outcome.endpoint is not ep:
                            self._lost_hedge(ep, last_start, outcome.ttfb)
                        self._reap(pending)
                        pending = {}
                        return outcome
                    failure = outcome
                    if not failure.retryable:
                        self._reap(pending)
                        pending = {}
                        return failure
            if failure is not None and not pending:
                return failure
            self._reap(pending)
            pending = {}
            self._raise_deadline(ctx, deadline_at - ctx.t_start)
            raise AssertionError("unreachable")
        except asyncio.CancelledError:
            self._reap(pending)
            raise

    def _lost_hedge(self, ep: Endpoint, hedge_started: float, hedge_ttfb: float) -> None:
        """The first attempt was slower than the pool's hedge delay plus a whole hedge.

        That is a soft timeout: it gets the fading failure penalty (not a health failure).
        Without it, an endpoint whose requests are always hedged and cancelled is never
        measured and keeps attracting first attempts.
        """
        if ep.removed:
            return
        now = time.monotonic()
        ep.ewma.observe_failure(
            now - hedge_started + hedge_ttfb, now, self.settings.failure_penalty
        )

    def _reap(self, pending: Mapping[asyncio.Task[Any], Endpoint]) -> None:
        """Cancel losing attempts; close any stream a loser managed to open."""
        for task in pending:
            task.cancel()

            def closed(t: asyncio.Task[Any]) -> None:
                self._reapers.discard(t)
                if t.cancelled() or t.exception() is not None:
                    return
                outcome = t.result()
                if isinstance(outcome, _Success) and outcome.first is not None:
                    closer = asyncio.ensure_future(outcome.result.close())
                    self._reapers.add(closer)
                    closer.add_done_callback(self._reapers.discard)
                    outcome.endpoint.inflight -= 1
                    if outcome.endpoint.on_release is not None:
                        outcome.endpoint.on_release(outcome.endpoint)

            self._reapers.add(task)
            task.add_done_callback(closed)

    # -- streams call back here when they end ---------------------------------------------
    def release_stream(self, ep: Endpoint, failure_exc: BaseException | None) -> None:
        ep.inflight -= 1
        if failure_exc is not None:
            failure = (ep.error_policy or _default_error_policy).classify(failure_exc)
            now = time.monotonic()
            ep.count_failure(failure.kind, "mid-stream: " + failure.message)
            if failure.penalize:
                ep.health.on_failure(now)
                ep.ewma.observe_failure(0.0, now, self.settings.failure_penalty)
        if ep.on_release is not None:
            ep.on_release(ep)

    async def finish_stream(self, ctx: RequestContext) -> None:
        if self.extensions:
            await self._run_after(ctx)

    # -- lifecycle ------------------------------------------------------------------------
    def stats(self) -> dict[str, Any]:
        now = time.monotonic()
        return {
            "endpoints": {name: ep.snapshot(now) for name, ep in self.endpoints.items()},
            "models": {
                m: {
                    "primary": [e.name for e in p.primary],
                    "fallback": [e.name for e in p.fallback],
                    "ttfb_p95_s": p.latency.percentile(0.95),
                }
                for m, p in self.pools.items()
            },
            "aliases": dict(self.aliases),
            "retry_budget": round(self.budget.balance, 2),
            "strategy": self.strategy.name,
        }

    async def aclose(self) -> None:
        for closer in reversed(self.closers):
            try:
                await closer()
            except Exception:
                log.exception("closing %r failed", closer)
        self.closers.clear()
        for task in list(self._reapers):
            task.cancel()
        closed: set[int] = set()
        for ep in list(self.endpoints.values()):
            client = ep.client
            if id(client) in closed or not hasattr(client, "close"):
                continue
            closed.add(id(client))
            with contextlib.suppress(Exception):
                result = client.close()
                if isinstance(result, Awaitable):
                    await result


class _OpenAITypes:
    """openai's response classes and request-option helper, imported once, lazily."""

    def __init__(self) -> None:
        from openai import AsyncStream
        from openai._base_client import make_request_options
        from openai.types import Completion, CreateEmbeddingResponse
        from openai.types.chat import ChatCompletion, ChatCompletionChunk

        self.make_request_options = make_request_options
        self._cast = {
            "chat": ChatCompletion,
            "completions": Completion,
            "embeddings": CreateEmbeddingResponse,
        }
        self._stream = {
            "chat": AsyncStream[ChatCompletionChunk],
            "completions": AsyncStream[Completion],
        }
        self.ChatCompletionChunk = ChatCompletionChunk

    def cast_to(self, kind: RequestKind) -> Any:
        return self._cast[kind.name]

    def stream_cls(self, kind: RequestKind) -> Any:
        return self._stream[kind.name]
