"""The request pipeline shared by AsyncMultiplexer and Multiplexer.

One request goes through ``MuxCore.execute``:

1. check the caller's parameters (``_validate``): what no endpoint could serve is the caller's
   fault and is refused before any endpoint is touched;
2. run the ``before`` hooks of the extensions (sessions, tiering, limits), which may rewrite
   the parameters, and resolve the model (aliases) to a pool of the registry (``_registry``);
3. route: pick an endpoint with the strategy (primary tier first, fallback tier only when no
   primary endpoint is selectable), send, and on a failed attempt decide by whose fault it is
   (``routing.outcome.Fault``): the caller's -> raise; the endpoint's credentials -> quarantine
   it and fail over; transient -> health and failover; gone -> out of rotation and failover.
   Failover stops on the ``stop`` condition (attempts, retry budget); the caller's deadline
   bounds everything, the reply body included. With hedging (on by default when the pool has
   spare endpoints), a second endpoint is asked when the first byte is late and the first
   answer wins;
4. for streams, the first chunk is awaited inside the attempt, so failover happens only before
   the caller has seen any output; later failures, and a stream that ends without its final
   chunk, raise ``StreamInterrupted`` with the partial output;
5. run the ``after`` hooks (metering, session append, limit settlement) once per request.

The state of one request's routing is one value, :class:`RouteState` (tenacity's
RetryCallState plays the same part), which stop conditions and strategies read.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import sys
import time
from collections.abc import Awaitable, Callable, Mapping
from typing import Any, TypeVar

from ._registry import DEFAULT_POOL, EndpointRegistry, Pool
from ._validate import check_call, dumps_body
from .context import CHAT, COMPLETIONS, EMBEDDINGS, Extension, RequestContext, RequestKind
from .endpoint import Endpoint
from .features import Slot
from .routing.budget import RetryBudget
from .routing.hedging import HedgePolicy
from .routing.outcome import ErrorPolicy, Failure, Fault
from .routing.stop import StopCondition
from .routing.strategies import Strategy
from .settings import (
    DEFAULT_HEDGING,
    MUX_KWARGS,
    OPTION_KWARGS,
    CallOptions,
    RoutingSettings,
)

log = logging.getLogger("gonka_mux.core")

__all__ = [
    "CHAT",
    "COMPLETIONS",
    "DEFAULT_HEDGING",
    "EMBEDDINGS",
    "MUX_KWARGS",
    "OPTION_KWARGS",
    "CallOptions",
    "Extension",
    "MuxCore",
    "RequestContext",
    "RequestKind",
    "RouteState",
    "RoutingSettings",
]

_default_error_policy = ErrorPolicy()
T = TypeVar("T")

#: Set by a ``before`` hook that answers the request itself (the response cache): for a plain
#: request, the response ``execute`` returns; for a stream, a callable ``make(finish)`` giving
#: an object shaped like AsyncChunkStream that awaits ``finish(ctx)`` (the after hooks) when it
#: ends. The later before hooks and routing are skipped; the after hooks still run, with
#: ``ctx.usage`` None (no upstream tokens were spent).
SERVED: Slot[Any] = Slot("core.served")
#: A list-like ``append(chunk)`` sink a ``before`` hook may set to see every chunk of the
#: stream the request opens (the response cache records streams this way).
STREAM_TAP: Slot[Any] = Slot("core.stream_tap")
#: Set by ``execute(relay=True)`` (the gateway): endpoints with a plain openai client are sent
#: to by ``_hop.DirectHop`` (the SDK's request built once, not per call).
RELAY: Slot[bool] = Slot("core.relay")
#: Set by ``execute(relay=True)`` for a stream no tap needs chunk objects of: the stream reads
#: the upstream's SSE as bytes (``_raw_stream``) and yields SSE bytes to relay.
RAW_SSE: Slot[bool] = Slot("core.raw_sse")


class RouteState:
    """The routing state of one request: what stop conditions and the attempts read."""

    __slots__ = (
        "attempt_number",
        "budget",
        "ctx",
        "deadline",
        "gated",
        "hedge",
        "kind",
        "last_bodies",
        "last_failure",
        "now",
        "payload",
        "payload_params",
        "pool",
        "request_options",
        "tried",
        "user_timeout",
    )

    def __init__(
        self,
        kind: RequestKind,
        ctx: RequestContext,
        pool: Pool,
        request_options: Mapping[str, Any],
        budget: RetryBudget,
        payload: bytes | None,
    ) -> None:
        self.kind = kind
        self.ctx = ctx
        self.pool = pool
        self.user_timeout = request_options.get("timeout")
        # what openai's make_request_options gets (timeout is set per attempt)
        self.request_options = {k: v for k, v in request_options.items() if k != "timeout"}
        self.budget = budget
        self.payload = payload
        self.payload_params = ctx.params  # the payload is valid while params are these
        self.deadline: float | None = None
        self.hedge: HedgePolicy | None = None
        self.tried: set[Endpoint] = set()
        self.attempt_number = 0
        self.gated: dict[Endpoint, float] = {}  # endpoints skipped for their rate limit
        self.last_bodies: list[str] = []
        self.last_failure: Failure | None = None
        self.now = time.monotonic()

    @property
    def deadline_at(self) -> float:
        return self.ctx.deadline_at

    @property
    def elapsed(self) -> float:
        return time.monotonic() - self.ctx.t_start


class _Success:
    __slots__ = ("endpoint", "first", "result", "ttfb")

    def __init__(self, endpoint: Endpoint, result: Any, first: Any, ttfb: float) -> None:
        self.endpoint = endpoint
        self.result = result
        self.first = first
        self.ttfb = ttfb


if sys.version_info >= (3, 11):
    _timeout_at = asyncio.timeout_at
else:  # pragma: no cover - Python 3.10

    @contextlib.asynccontextmanager
    async def _timeout_at(when: float) -> Any:
        loop = asyncio.get_running_loop()
        task = asyncio.current_task()
        assert task is not None
        fired = False

        def fire() -> None:
            nonlocal fired
            fired = True
            task.cancel()

        handle = loop.call_at(when, fire)
        try:
            yield
        except asyncio.CancelledError:
            if fired:
                raise TimeoutError from None
            raise
        finally:
            handle.cancel()


class MuxCore:
    """Async routing core; both Multiplexer faces delegate here."""

    def __init__(self, settings: RoutingSettings | None = None) -> None:
        self.settings = settings or RoutingSettings()
        s = self.settings
        self.strategy: Strategy = s.build_strategy()
        self.budget = s.build_budget()
        self.stop: StopCondition = s.build_stop()
        self.registry = EndpointRegistry(s.health, latency_decay=s.latency_decay)
        # before/after hooks, in the order their ``order`` numbers give (a new list on each
        # change, so a request iterating the old one is unaffected)
        self.extensions: list[Extension] = []
        self._ordered: list[tuple[int, int, Extension]] = []
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

    def add_extension(self, extension: Extension, order: int = 100) -> None:
        """Run ``extension``'s hooks around every request: ``before`` hooks in ascending
        ``order``, ``after`` hooks in descending order (ties: first added, first before)."""
        self._ordered.append((order, len(self._ordered), extension))
        self._ordered.sort(key=lambda item: (item[0], item[1]))
        self.extensions = [ext for _, _, ext in self._ordered]

    def remove_extension(self, extension: Extension) -> None:
        self._ordered = [item for item in self._ordered if item[2] is not extension]
        self.extensions = [ext for _, _, ext in self._ordered]

    # -- the registry, as the rest of the package has always read it ----------------------
    @property
    def endpoints(self) -> dict[str, Endpoint]:
        return self.registry.endpoints

    @property
    def pools(self) -> dict[str, Pool]:
        return self.registry.pools

    @property
    def aliases(self) -> dict[str, str]:
        return self.registry.aliases

    def add(self, endpoint: Endpoint, *, default_pool: bool = False) -> Endpoint:
        return self.registry.add(endpoint, default_pool=default_pool)

    def remove(self, name_or_endpoint: str | Endpoint) -> Endpoint:
        return self.registry.remove(name_or_endpoint)

    def replace_group(self, group: str, endpoints: Any) -> list[Endpoint]:
        return self.registry.replace_group(group, endpoints)

    def resolve(self, model: str | None) -> Pool:
        return self.registry.resolve(model)

    def models(self) -> list[str]:
        return self.registry.models()

    def select(self, pool: Pool, tried: set[Endpoint], now: float) -> Endpoint | None:
        return self.registry.select(self.strategy, pool, tried, now, self.settings.default_latency)

    # -- request execution ----------------------------------------------------------------
    def _timeout(self, read: float, connect: float) -> Any:
        key = (round(read, 3), round(connect, 3))
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
        relay: bool = False,
    ) -> Any:
        """Run one request. ``relay`` (the gateway, which relays the result over HTTP): send
        with a :class:`~gonka_mux._hop.DirectHop` where the endpoint's client allows, and a
        stream yields ``bytes`` of SSE events to relay as they came (one or more
        ``data: ...\\n\\n`` events) instead of chunk objects, unless something needs the
        objects (a stream tap; a locally served stream yields objects too)."""
        extra_body = request_options.get("extra_body")
        if extra_body:
            # merged here, as openai merges it, so the body is checked and sent as one
            params = {**params, **extra_body}
            request_options = {k: v for k, v in request_options.items() if k != "extra_body"}
        payload = check_call(kind.name, params, request_options, options)
        if self.startup:
            await self.run_startup()
        ctx = RequestContext(kind.name, params, options, stream)
        deadline = options.deadline if options.deadline is not None else self.settings.deadline
        if deadline:
            ctx.deadline_at = ctx.t_start + deadline
        exts = self.extensions
        try:
            for ext in exts:
                await ext.before(ctx)
                if SERVED in ctx.slots:  # answered without routing (a cache hit)
                    return await self._serve_local(ctx, ctx.slots[SERVED])
            if relay:
                ctx.slots[RELAY] = True
                if stream and STREAM_TAP not in ctx.slots:
                    ctx.slots[RAW_SSE] = True
            if stream and self.wants_stream_usage:
                so = ctx.params.get("stream_options")
                if not (isinstance(so, Mapping) and so.get("include_usage")):
                    ctx.params = {
                        **ctx.params,
                        "stream_options": {**(so or {}), "include_usage": True},
                    }
                    ctx.hide_usage_chunk = True
            state = RouteState(
                kind, ctx, self.resolve(ctx.model), request_options, self.budget, payload
            )
            state.payload_params = params
            state.deadline = deadline
            if ctx.deadline_at == math.inf:
                result = await self._route(state)
            else:
                try:
                    async with _timeout_at(ctx.deadline_at):
                        result = await self._route(state)
                except TimeoutError:
                    self._raise_deadline(ctx, deadline)
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

    async def _serve_local(self, ctx: RequestContext, result: Any) -> Any:
        if ctx.stream:
            return result(self.finish_stream)  # the stream runs the after hooks when it ends
        ctx.status = "ok"
        ctx.response = result
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

    def _hedge_policy(self, state: RouteState) -> HedgePolicy | None:
        choice = state.ctx.options.hedge
        if choice is False:
            return None
        if choice is True:
            return self.settings.hedging or HedgePolicy()
        if choice is not None:
            return HedgePolicy(delay=float(choice))
        hedge = self.settings.hedging
        if hedge is None:
            return None
        pool = state.pool
        # by default only where a spare endpoint exists: a one-endpoint pool has nobody to ask
        if len(pool.primary) + len(pool.fallback) < 2:
            return None
        return hedge

    async def _route(self, state: RouteState) -> Any:
        s = self.settings
        ctx = state.ctx
        self.budget.deposit(state.now)
        pool = state.pool
        if pool.model != DEFAULT_POOL:
            ctx.model = pool.model  # an alias resolves to its target's upstream names
        if ctx.options.route_to is not None:
            ep = self.endpoints.get(ctx.options.route_to)
            if ep is None:
                from .errors import InvalidRequestError

                raise InvalidRequestError(
                    f"route_to={ctx.options.route_to!r} names no endpoint", param="route_to"
                )
            pool = Pool(pool.model)
            pool.primary = (ep,)
            state.pool = pool
        state.hedge = self._hedge_policy(state)
        tried = state.tried
        gated = state.gated
        while True:
            now = state.now = time.monotonic()
            if now >= ctx.deadline_at:
                self._raise_deadline(ctx, state.deadline)
            ep = self.select(state.pool, tried, now)
            if ep is None:
                if gated:
                    # Every other endpoint was tried or is limited: wait for the first limit
                    # to free up (within the deadline and wait_for_capacity), then retry them.
                    back_at = min(gated.values())
                    limit = min(ctx.deadline_at, now + s.wait_for_capacity)
                    if back_at < limit:
                        await asyncio.sleep(max(0.0, back_at - now))
                        tried.difference_update(gated)
                        gated.clear()
                        continue
                waited = await self._wait_for_capacity(state.pool, tried, now, ctx.deadline_at)
                if waited:
                    continue
                self._raise_exhausted(state)
            if self.endpoint_gate is not None:
                ticket = await self.endpoint_gate(ep, ctx)
                if not ticket:
                    tried.add(ep)
                    gated[ep] = now + float(getattr(ticket, "retry_after", 1.0) or 0.0)
                    continue
            if state.attempt_number > 0:
                reason = self.stop(state)
                if reason:
                    self._raise_exhausted(state, reason)
                ctx.failed_over = True
            state.attempt_number += 1
            if state.hedge is not None:
                outcome = await self._hedged(state, ep)
            else:
                tried.add(ep)
                outcome = await self._attempt(state, ep, False)
            if isinstance(outcome, _Success):
                return outcome if ctx.stream else outcome.result
            failure: Failure = outcome
            state.last_failure = failure
            if failure.fault is Fault.CALLER or not failure.retryable:
                if failure.kind == "context_length":
                    target = s.context_fallbacks.get(str(ctx.model))
                    if target and target != ctx.model:
                        log.info("context length exceeded on %s; retrying on %s", ctx.model, target)
                        state.pool = self.resolve(target)
                        ctx.model = state.pool.model
                        tried.clear()
                        continue
                raise _caller_error(ep, failure)
            policy = ep.error_policy
            deterministic_check = policy is not None and policy.stop_on_repeated_5xx_body
            if deterministic_check and failure.status and failure.status >= 500 and failure.body:
                if failure.body in state.last_bodies:
                    log.info("identical %s body twice: deterministic failure", failure.status)
                    raise failure.error
                state.last_bodies.append(failure.body)

    async def _wait_for_capacity(
        self, pool: Pool, tried: set[Endpoint], now: float, deadline_at: float
    ) -> bool:
        """Wait for a cooling endpoint or a free slot, within the deadline and the limit."""
        limit = min(deadline_at, now + self.settings.wait_for_capacity)
        candidates = [
            ep
            for ep in pool.all()
            if not ep.removed and ep not in tried and ep.lifecycle == "active"
        ]
        if not candidates:
            return False
        at = self.registry.next_available(pool, tried, now)
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
        fut = asyncio.get_running_loop().create_future()
        pool.waiters.append(fut)  # mark_ready wakes us early
        try:
            await asyncio.wait_for(fut, max(0.0, at - now))
        except asyncio.TimeoutError:
            pass
        finally:
            if fut in pool.waiters:
                pool.waiters.remove(fut)
        return True

    def _raise_deadline(self, ctx: RequestContext, deadline: float | None) -> None:
        from .errors import DeadlineExceeded

        raise DeadlineExceeded(str(ctx.model), float(deadline or 0), ctx.attempts)

    def _raise_exhausted(self, state: RouteState, stopped: str | None = None) -> None:
        from .errors import (
            AllEndpointsFailed,
            AllEndpointsRateLimited,
            AllEndpointsUnauthorized,
            ModelNotFound,
            NoEndpointAvailable,
        )

        ctx, pool = state.ctx, state.pool
        attempts = ctx.attempts
        model = str(ctx.model)
        now = time.monotonic()
        failed = [a for a in attempts if a.status != 200]
        statuses = {a.status for a in failed}
        code = getattr(getattr(state.last_failure, "error", None), "code", None)
        if failed and all(a.fault == Fault.CREDENTIALS.value for a in failed):
            status = 403 if statuses == {403} else 401
            raise AllEndpointsUnauthorized.for_status(status, model, attempts, code=code)
        if failed and statuses == {404}:
            raise ModelNotFound(model, self.models(), attempts=attempts, code=code)
        if not attempts:
            members = pool.all()
            quarantined = [ep.name for ep in members if ep.health.state(now) == "quarantined"]
            if members and len(quarantined) == len(members):
                raise AllEndpointsUnauthorized(model, [], quarantined=quarantined)
            at = self.registry.next_available(pool, state.tried, now)
            hint = "Every endpoint is cooling down, ejected, quarantined, draining or full."
            headers = None
            if at is not None and at > now:
                hint += f" The first one is back in {at - now:.1f} s."
                headers = {"Retry-After": str(max(1, int(at - now + 0.999)))}
            if quarantined:
                hint += f" Quarantined (credentials refused): {', '.join(quarantined)}."
            if not members:
                hint = "The pool has no endpoints (they were all removed)."
            raise NoEndpointAvailable(model, attempts, hint=hint, headers=headers)
        hint = ""
        if stopped:
            hint = f"Stopped failing over: {stopped}. Check the failing endpoints with mux.stats()."
        if any(a.status == 404 for a in attempts):
            hint += (
                " An endpoint answered 404: check that its base URL ends with /v1 and that it "
                "serves this model."
            )
        if all(a.status == 429 for a in attempts):
            at = self.registry.next_available(pool, set(), now)
            wait = max(1, int((at or now) - now + 0.999))
            raise AllEndpointsRateLimited(
                model, attempts, hint=hint.strip(), headers={"Retry-After": str(wait)}
            )
        raise AllEndpointsFailed(model, attempts, hint=hint.strip())

    def _attempt_timeout(self, state: RouteState, remaining: float) -> Any:
        s = self.settings
        user = state.user_timeout
        if user is not None and not isinstance(user, (int, float)):
            return user  # a Timeout object from the caller, as openai takes it
        if user is not None:
            read = float(user)  # openai's meaning: this attempt, every phase
            connect = min(read, s.connect_timeout)
        else:
            read = s.first_byte_timeout
            adaptive = s.adaptive_timeout
            if adaptive is not None:
                read = adaptive.for_window(state.pool.window(state.ctx.stream), read)
            connect = s.connect_timeout
        return self._timeout(min(read, remaining), min(connect, remaining))

    async def _attempt(self, state: RouteState, ep: Endpoint, is_hedge: bool) -> _Success | Failure:
        ctx = state.ctx
        kind = state.kind
        types = self.types()  # before the clock starts: the first call imports openai's types
        t0 = time.monotonic()
        timeout = self._attempt_timeout(state, ctx.deadline_at - t0)
        upstream_model = ep.models.get(str(ctx.model)) or ep.models.get(DEFAULT_POOL)
        params = ctx.params
        body: Any
        send: dict[str, Any]
        if (
            state.payload is not None
            and params is state.payload_params
            and not ep.default_params
            and (upstream_model is None or params.get("model") == upstream_model)
            and types.takes_content(ep.client)
        ):
            # serialised once, when the parameters were checked
            send = {"content": state.payload}
        else:
            body = params
            if ep.default_params:
                body = {**ep.default_params, **body}
            if upstream_model is not None and body.get("model") != upstream_model:
                body = {**body, "model": upstream_model}
            send = {"body": body}
        ep.inflight += 1
        ep.requests += 1
        ep.health.begin(t0)
        released = False
        try:
            opts = types.make_request_options(timeout=timeout, **state.request_options)
            hop = None
            if RELAY in ctx.slots and not state.request_options:
                from ._hop import direct_hop  # imports openai: only once a relay runs

                hop = await direct_hop(ep.client, kind.path, lambda: opts)
                if hop is not None and "content" not in send:
                    # the parameters changed after the check (a before hook, the usage chunk
                    # asked for): serialised here, as openai would have
                    send = {"content": dumps_body(send["body"])}
            if ctx.stream:
                raw = RAW_SSE in ctx.slots and types.takes_content(ep.client)
                if hop is not None:
                    upstream = await hop.post(
                        send["content"],
                        timeout,
                        None,
                        stream_cls=types.stream_cls(kind, raw),
                        stream_type=types.chunk_type(kind),
                    )
                else:
                    upstream = await ep.client.post(
                        kind.path,
                        cast_to=types.cast_to(kind),
                        options=opts,
                        **send,
                        stream=True,
                        stream_cls=types.stream_cls(kind, raw),
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
                if hop is not None:
                    result = await hop.post(send["content"], timeout, types.cast_to(kind))
                else:
                    result = await ep.client.post(
                        kind.path, cast_to=types.cast_to(kind), options=opts, **send
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
            self._on_failure(state, ep, failure, t0, is_hedge)
            if ep.on_release is not None:
                ep.on_release(ep)
            return failure
        now = time.monotonic()
        ttfb = now - t0
        ep.successes += 1
        ep.ewma.observe(ttfb, now)
        ep.health.on_success()
        state.pool.window(ctx.stream).add(ttfb)
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
        fault: Fault | None = None,
    ) -> None:
        from .errors import Attempt

        ctx.attempts.append(
            Attempt(
                ep.name,
                status,
                reason,
                time.monotonic() - t0,
                hedge,
                fault.value if fault is not None else None,
            )
        )

    def _on_failure(
        self, state: RouteState, ep: Endpoint, failure: Failure, t0: float, hedge: bool
    ) -> None:
        now = time.monotonic()
        elapsed = now - t0
        fault = failure.fault
        ep.count_failure(failure.kind, failure.message)
        if fault is Fault.CALLER:
            ep.health.on_abandoned()  # the request was wrong, not the endpoint
        elif fault is Fault.CREDENTIALS:
            if ep.health.quarantine(now, failure.message):
                log.warning(
                    "endpoint %s refused the credentials gonka_mux sent (%s): quarantined for "
                    "%.0f s; check its api_key. Other endpoints keep serving.",
                    ep.name,
                    failure.message,
                    ep.health.policy.quarantine_time,
                )
        elif fault is Fault.GONE:
            if failure.remove_endpoint:
                if ep.name in self.endpoints:
                    log.warning("removing endpoint %s: %s", ep.name, failure.message)
                    self.remove(ep)
            elif failure.status == 404 and str(state.ctx.model) in ep.models:
                log.warning(
                    "endpoint %s does not serve model %s (404): out of that pool until it is "
                    "marked ready",
                    ep.name,
                    state.ctx.model,
                )
                self.registry.withdraw(ep, str(state.ctx.model))
            else:
                log.warning(
                    "endpoint %s is gone (%s): out of rotation until it is marked ready",
                    ep.name,
                    failure.message,
                )
                self.registry.set_gone(ep)
            ep.health.on_abandoned()
        elif failure.kind == "rate_limited":
            ep.health.on_rate_limited(now, failure.retry_after)
            ep.ewma.observe_failure(elapsed, now, self.settings.failure_penalty)
        elif failure.penalize:
            ep.health.on_failure(now)
            ep.ewma.observe_failure(elapsed, now, self.settings.failure_penalty)
        else:
            ep.health.on_abandoned()
        self._record_attempt(state.ctx, ep, failure.status, failure.message, t0, hedge, fault)
        log.debug("attempt on %s failed (%s): %s", ep.name, fault, failure.message)
        for hook in self.on_failure_hooks:
            try:
                hook(ep, failure)
            except Exception:
                log.exception("on_failure hook failed")

    async def _hedged(self, state: RouteState, ep: Endpoint) -> _Success | Failure:
        """One attempt plus up to ``max_hedges`` hedges; the first success wins."""
        loop = asyncio.get_running_loop()
        pending: dict[asyncio.Task[Any], Endpoint] = {}
        hedge = state.hedge
        assert hedge is not None
        ctx = state.ctx
        window = state.pool.window(ctx.stream)
        tried = state.tried

        def start(target: Endpoint, is_hedge: bool) -> None:
            tried.add(target)
            task = loop.create_task(self._attempt(state, target, is_hedge))
            pending[task] = target

        start(ep, False)
        hedges = 0
        last_start = time.monotonic()
        failure: Failure | None = None
        try:
            while pending:
                now = time.monotonic()
                timeout = ctx.deadline_at - now
                can_hedge = hedges < hedge.max_hedges
                if can_hedge:
                    # Re-read the delay: a cold pool has no samples yet (max_delay), and the
                    # first answers arriving meanwhile should shorten it.
                    delay = hedge.delay_for(window)
                    timeout = min(timeout, max(0.0, last_start + delay - now))
                    if hedge.delay is None and len(window) < hedge.min_samples:
                        timeout = min(timeout, 0.05)
                if timeout <= 0 and not can_hedge:
                    break
                done, _ = await asyncio.wait(
                    pending, timeout=max(timeout, 0), return_when=asyncio.FIRST_COMPLETED
                )
                if not done:
                    now = time.monotonic()
                    if now >= ctx.deadline_at:
                        break
                    if now < last_start + hedge.delay_for(window):
                        continue  # woke up early to re-read a cold pool's delay
                    other = self.select(state.pool, tried, time.monotonic())
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
                    if failure.fault is Fault.CALLER or not failure.retryable:
                        self._reap(pending)
                        pending = {}
                        return failure
            if failure is not None and not pending:
                return failure
            self._reap(pending)
            pending = {}
            self._raise_deadline(ctx, state.deadline)
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
        out = self.registry.stats(time.monotonic())
        out["retry_budget"] = round(self.budget.balance, 2)
        out["strategy"] = getattr(self.strategy, "name", type(self.strategy).__name__)
        return out

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


def _caller_error(ep: Endpoint, failure: Failure) -> BaseException:
    """The error raised for a request an endpoint refused as the caller's fault.

    It is the endpoint's own exception, unchanged (the same openai class, code, message and
    body as the plain openai client would raise: a drop-in must not change what callers
    catch), with ``endpoint`` set to the endpoint's name and a note saying why it was not
    retried.
    """
    exc = failure.error
    with contextlib.suppress(AttributeError, TypeError):
        exc.endpoint = ep.name  # type: ignore[attr-defined]
    if failure.fault is Fault.CALLER:
        add_note = getattr(exc, "add_note", None)
        if add_note is not None and not getattr(exc, "__notes__", None):
            add_note(
                f"gonka_mux: endpoint {ep.name} refused the request itself "
                f"(HTTP {failure.status}); it was not retried on another endpoint."
            )
    return exc


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
        self._content_ok: dict[type, bool] = {}

    def takes_content(self, client: Any) -> bool:
        """Whether ``client.post`` takes pre-serialised bytes as ``content=`` (openai's own
        clients do; a duck-typed client may not)."""
        cls = type(client)
        ok = self._content_ok.get(cls)
        if ok is None:
            import inspect

            try:
                ok = "content" in inspect.signature(cls.post).parameters
            except (TypeError, ValueError, AttributeError):
                ok = False
            self._content_ok[cls] = ok
        return ok

    def cast_to(self, kind: RequestKind) -> Any:
        return self._cast[kind.name]

    def chunk_type(self, kind: RequestKind) -> Any:
        """The class of a stream's chunks (what ``stream_cls``'s type argument names)."""
        return self.ChatCompletionChunk if kind.name == "chat" else self._cast["completions"]

    def usage(self, value: Any) -> Any:
        """A stream's usage as openai's ``CompletionUsage`` (as its chunk objects carry it)."""
        from openai._models import construct_type
        from openai.types import CompletionUsage
        from pydantic import ValidationError

        try:  # pydantic's validation is ~10x faster than openai's lenient construction
            return CompletionUsage.model_validate(value)
        except ValidationError:
            return construct_type(type_=CompletionUsage, value=value)

    def stream_cls(self, kind: RequestKind, raw: bool = False) -> Any:
        if raw:  # openai's own client: the SSE is read as bytes (see _raw_stream)
            from ._raw_stream import RawSSEStream

            return RawSSEStream
        return self._stream[kind.name]
