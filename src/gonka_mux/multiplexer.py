"""AsyncMultiplexer and Multiplexer: one OpenAI-shaped client over many endpoints.

Both faces share one async core (``_core.MuxCore``); the sync one drives it on a private event
loop thread, as httpx's Client and AsyncClient share their model.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator, Mapping, Sequence
from typing import TYPE_CHECKING, Any, Literal, TypeVar, overload

from ._clients import ClientFactory
from ._core import (
    CHAT,
    COMPLETIONS,
    EMBEDDINGS,
    MUX_KWARGS,
    OPTION_KWARGS,
    CallOptions,
    Extension,
    MuxCore,
    RequestContext,
    RequestKind,
    RoutingSettings,
)
from ._loop_thread import Portal
from ._urls import check_base_url
from .cache.feature import ResponseCache
from .endpoint import Endpoint, EndpointTier, shown_url
from .features import Feature
from .limits.feature import LimitsFeature
from .memory.feature import MemoryFeature
from .metering.feature import MeteringFeature
from .sessions.feature import SessionsFeature
from .tiering.feature import TieringFeature
from .webhooks.feature import JobsFeature

if TYPE_CHECKING:
    from openai.types import Completion, CreateEmbeddingResponse, Model
    from openai.types.chat import ChatCompletion

    from ._stream import AsyncChunkStream, ChunkStream
    from .limits import RateLimiter
    from .memory import MemoryStore
    from .metering import Meter
    from .routing.outcome import ErrorPolicy, Failure
    from .sessions import SessionManager
    from .sources import EndpointSource
    from .tiering import TieringPolicy
    from .webhooks import JobRunner

T = TypeVar("T")

log = logging.getLogger("gonka_mux")

__all__ = ["AsyncMultiplexer", "Multiplexer"]


def _split(params: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any], CallOptions]:
    """Separate the OpenAI body from request options and gonka_mux's own keyword arguments."""
    body = params
    request_options: dict[str, Any] = {}
    options = CallOptions()
    for key in [k for k in params if k in MUX_KWARGS or k in OPTION_KWARGS]:
        if body is params:
            body = dict(params)
        value = body.pop(key)
        if key in OPTION_KWARGS:
            if value is not None:
                request_options[key] = value
        elif key == "mux_metadata":
            options.metadata = value
        else:
            setattr(options, key, value)
    return body, request_options, options


def _make_async_client(
    client_or_base_url: Any,
    api_key: str | None,
    default_headers: Mapping[str, str] | None,
    factory: Any,
) -> Any:
    """The ``AsyncOpenAI`` an endpoint uses. Clients this builds (from a URL, or wrapping a
    sync ``openai.OpenAI``) share the HTTP client of ``factory`` (the mux's
    ``_clients.ClientFactory``); a client passed in is used as given (a copy without SDK
    retries) and stays on its own HTTP client."""
    if isinstance(client_or_base_url, str):
        return factory.client(
            base_url=check_base_url(client_or_base_url),
            api_key=api_key or os.environ.get("OPENAI_API_KEY") or "not-needed",
            default_headers=default_headers,
        )
    import openai

    client = client_or_base_url
    if isinstance(client, openai.AsyncOpenAI):
        # The SDK's own retries are off: the Multiplexer owns retries and failover.
        return client.with_options(max_retries=0) if client.max_retries else client
    if isinstance(client, openai.OpenAI):
        log.debug("wrapping a sync OpenAI client as AsyncOpenAI for %s", client.base_url)
        return factory.client(
            base_url=str(client.base_url),
            api_key=client.api_key,
            default_headers=default_headers,
            organization=client.organization,
            project=client.project,
            timeout=client.timeout,
        )
    if hasattr(client, "post") and hasattr(client, "base_url"):
        return client  # an openai-compatible client object (duck-typed)
    raise TypeError(
        "add_endpoint() takes a base URL string, an openai.AsyncOpenAI or an openai.OpenAI "
        f"client, not {type(client).__name__}"
    )


class _Resource:
    def __init__(self, mux: Any) -> None:
        self._mux = mux


class _AsyncCreate(_Resource):
    _kind: RequestKind

    async def _create(self, stream: bool | None, params: dict[str, Any]) -> Any:
        if stream is not None:
            params["stream"] = stream
        body, request_options, options = _split(params)
        return await self._mux._core.execute(
            self._kind, body, request_options, options, stream=bool(body.get("stream"))
        )

    async def relay(self, **params: Any) -> Any:
        """``create(**params)`` for a caller that relays the result over HTTP (the gateway).

        The request goes out the same way, with the same routing, failover, limits, metering
        and sessions, but on a path made for relaying: where the endpoint's client is a plain
        one, the request is sent on a hop built once per endpoint (the SDK's headers and URL;
        for the Multiplexer's own HTTP client a lean HTTP/1.1 connection pool). A reply is the
        same object as ``create``'s. A stream yields ``bytes`` of SSE events as the endpoint
        sent them (one or more ``data: ...\n\n`` events per item, to write unchanged; the
        item with the endpoint's ``[DONE]`` ends with it, and the stream's ``sent_done`` is
        then true) instead of chunk objects, except where a feature needs the objects (the
        response cache recording a stream) or the reply is served locally (a cache hit): those
        streams yield chunk objects, as ``create`` does. Usage, sessions and limits still see
        every event. ``gonka_mux.gateway.sse.sse_response`` relays either kind.
        """
        body, request_options, options = _split(params)
        return await self._mux._core.execute(
            self._kind,
            body,
            request_options,
            options,
            stream=bool(body.get("stream")),
            relay=True,
        )


class _AsyncChatCompletions(_AsyncCreate):
    """``mux.chat.completions.create(**openai_params)``: ChatCompletion or an async stream.

    Extra keyword arguments understood by gonka_mux (never sent upstream): ``session_id``,
    ``tier``, ``deadline`` (seconds), ``hedge`` (bool or delay), ``caller`` (the tenant key
    for limits and metering), ``mux_metadata``, ``route_to`` (an endpoint name), ``cache``
    (``False``, ``True`` or ``"refresh"``, with ``enable_cache``).
    """

    _kind = CHAT

    @overload
    async def create(
        self, *, stream: Literal[False] | None = None, **params: Any
    ) -> ChatCompletion: ...
    @overload
    async def create(self, *, stream: Literal[True], **params: Any) -> AsyncChunkStream: ...
    @overload
    async def create(self, *, stream: bool, **params: Any) -> ChatCompletion | AsyncChunkStream: ...
    async def create(
        self, *, stream: bool | None = None, **params: Any
    ) -> ChatCompletion | AsyncChunkStream:
        return await self._create(stream, params)  # type: ignore[no-any-return]


class _AsyncLegacyCompletions(_AsyncCreate):
    _kind = COMPLETIONS

    @overload
    async def create(
        self, *, stream: Literal[False] | None = None, **params: Any
    ) -> Completion: ...
    @overload
    async def create(self, *, stream: Literal[True], **params: Any) -> AsyncChunkStream: ...
    @overload
    async def create(self, *, stream: bool, **params: Any) -> Completion | AsyncChunkStream: ...
    async def create(
        self, *, stream: bool | None = None, **params: Any
    ) -> Completion | AsyncChunkStream:
        return await self._create(stream, params)  # type: ignore[no-any-return]


class _AsyncEmbeddings(_Resource):
    async def create(self, **params: Any) -> CreateEmbeddingResponse:
        body, request_options, options = _split(params)
        body, decode = _embedding_request(body)
        result = await self._mux._core.execute(
            EMBEDDINGS, body, request_options, options, stream=False
        )
        return _decode_embeddings(result) if decode else result


def _embedding_request(body: dict[str, Any]) -> tuple[dict[str, Any], bool]:
    """Ask for base64 floats unless the caller chose a format, as the openai SDK does."""
    if "encoding_format" in body:
        return body, False
    return {**body, "encoding_format": "base64"}, True


def _decode_embeddings(result: Any) -> Any:
    import array
    import base64

    for item in getattr(result, "data", ()) or ():
        if isinstance(item.embedding, str):
            floats = array.array("f")
            floats.frombytes(base64.b64decode(item.embedding))
            item.embedding = floats.tolist()
    return result


class _AsyncChat(_Resource):
    def __init__(self, mux: Any) -> None:
        super().__init__(mux)
        self.completions = _AsyncChatCompletions(mux)


class ModelPage:
    """``models.list()`` result: like openai's page, with ``.data`` and iteration."""

    object = "list"

    def __init__(self, data: list[Model]) -> None:
        self.data = data

    def __iter__(self) -> Iterator[Model]:
        return iter(self.data)

    def __aiter__(self) -> AsyncIterator[Model]:
        async def gen() -> AsyncIterator[Model]:
            for m in self.data:
                yield m

        return gen()

    def __len__(self) -> int:
        return len(self.data)

    def __repr__(self) -> str:
        ids = [getattr(m, "id", m) for m in self.data]
        return f"ModelPage({len(ids)} models: {', '.join(map(str, ids))})"

    def model_dump(self) -> dict[str, Any]:
        return {"object": "list", "data": [m.model_dump() for m in self.data]}


def _model_page(core: MuxCore) -> ModelPage:
    from openai.types import Model

    data = []
    for name in core.models():
        owners = sorted({ep.group or ep.kind for ep in core.pools[name].all()})
        data.append(Model(id=name, object="model", created=0, owned_by=",".join(owners)))
    for alias, target in sorted(core.aliases.items()):
        if target in core.pools and alias not in core.pools:
            data.append(Model(id=alias, object="model", created=0, owned_by=f"alias:{target}"))
    return ModelPage(data)


class _AsyncModels(_Resource):
    async def list(self) -> ModelPage:
        """The union of the models every endpoint serves, plus aliases."""
        return _model_page(self._mux._core)


class _MuxBase:
    """Endpoint management shared by both faces (synchronous: it only touches the registry)."""

    _core: MuxCore
    config: dict[str, Any]

    def _init_features(self) -> None:
        self._clients = ClientFactory(self._core.closers)  # shared HTTP client of URL endpoints
        self.config = {}
        self.limiter: RateLimiter | None = None
        self.meter: Meter | None = None
        self.sessions: SessionManager | None = None
        self.memory: MemoryStore | None = None
        self.cache: ResponseCache | None = None
        self.features: dict[str, Feature] = {}
        self._epoch_watchers: list[Any] = []
        self.vllm_monitors: dict[str, Any] = {}
        self._background: set[asyncio.Task[Any]] = set()

    @property
    def jobs(self) -> JobRunner | None:
        """The ``JobRunner`` behind ``submit()`` (None before the first submit/start_jobs):
        ``mux.jobs.get(job_id)`` gives a job's status and result."""
        feature = self.features.get("jobs")
        return getattr(feature, "runner", None)

    def add_endpoint(
        self,
        client_or_base_url: Any,
        *,
        models: str | Sequence[str] | Mapping[str, str],
        weight: float = 1,
        max_concurrent: int | None = None,
        tier: EndpointTier = "primary",
        name: str | None = None,
        api_key: str | None = None,
        headers: Mapping[str, str] | None = None,
        context_window: int | None = None,
        group: str | None = None,
        kind: str = "openai",
        error_policy: ErrorPolicy | None = None,
    ) -> Endpoint:
        """Register an endpoint for one or more models.

        ``models`` is a list of names or a mapping ``{public name: name sent upstream}``; any
        number of endpoints may serve the same model and the request's ``model`` selects the
        pool. ``tier="fallback"`` endpoints are used only when no primary one is available.
        """
        client = _make_async_client(client_or_base_url, api_key, headers, self._clients)
        if name is None and isinstance(client_or_base_url, str):
            name = _unique_name(self._core, shown_url(client_or_base_url))
        ep = Endpoint(
            client,
            models=models,
            name=name,
            weight=weight,
            max_concurrent=max_concurrent,
            tier=tier,
            group=group,
            kind=kind,
            context_window=context_window,
            error_policy=error_policy,
        )
        return self._core.add(ep)

    def add_model(self, client: Any, weight: float, model_name: str) -> Endpoint:
        """multiplexer-llm compatible: ``model_name`` is what this endpoint is sent.

        Such endpoints also join a default pool that serves requests for models no other
        endpoint claims (multiplexer-llm routes every request over all registered models).
        Adding the same ``model_name`` twice keeps both endpoints.
        """
        return self._add_compat(client, weight, model_name, "primary")

    def add_fallback_model(self, client: Any, weight: float, model_name: str) -> Endpoint:
        """Like :meth:`add_model`, in the fallback tier."""
        return self._add_compat(client, weight, model_name, "fallback")

    def _add_compat(self, client: Any, weight: float, model_name: str, tier: EndpointTier) -> Any:
        ep = Endpoint(
            _make_async_client(client, None, None, self._clients),
            models={model_name: model_name},
            name=_unique_name(self._core, model_name),
            weight=weight,
            tier=tier,
        )
        return self._core.add(ep, default_pool=True)

    def remove_endpoint(self, endpoint: str | Endpoint) -> Endpoint:
        """Take an endpoint out of rotation; requests in flight on it finish normally."""
        return self._core.remove(endpoint)

    def replace_endpoints(self, group: str, endpoints: Sequence[Endpoint]) -> list[Endpoint]:
        """Atomically swap the endpoints of ``group`` (used for Gonka epoch changes)."""
        return self._core.replace_group(group, endpoints)

    def add_alias(self, alias: str, model: str) -> None:
        """Let requests for ``alias`` use the pool of ``model``."""
        if not alias or not model:
            raise ValueError("add_alias needs a non-empty alias and model")
        self._core.aliases[alias] = model

    def add_extension(self, extension: Extension, *, order: int = 100) -> None:
        """Run ``extension.before(ctx)`` / ``after(ctx)`` around every request. ``order``:
        ``before`` hooks run in ascending order, ``after`` hooks in descending order (the
        built-in features use 10-40, so the default 100 runs after them)."""
        self._core.add_extension(extension, order)

    def remove_extension(self, extension: Extension) -> None:
        self._core.remove_extension(extension)

    def add_feature(self, feature: Feature) -> Feature:
        """Install a :class:`~gonka_mux.features.Feature`: its hooks at its ``order`` and its
        ``aclose`` when the Multiplexer closes. One feature per name."""
        if feature.name in self.features:
            raise ValueError(f"the {feature.name!r} feature is already enabled on this Multiplexer")
        self.features[feature.name] = feature
        if feature.hooks:
            self._core.add_extension(feature, feature.order)
        self.on_close(feature.aclose)
        return feature

    def set_endpoint_gate(
        self, gate: Callable[[Endpoint, RequestContext], Awaitable[Any]] | None
    ) -> None:
        """``await gate(endpoint, ctx)`` before each attempt: a falsy answer skips that endpoint
        for this request (a ``retry_after`` attribute says when it would fit), as endpoint rate
        limits do."""
        self._core.endpoint_gate = gate

    def want_stream_usage(self) -> None:
        """Ask streams for their usage chunk even when the caller did not (metering, limits);
        the caller does not see a chunk it did not ask for."""
        self._core.wants_stream_usage = True

    # -- the extension surface: what Gonka, brokers, vLLM nodes, the gateway and adapters use -
    def register_endpoint(self, endpoint: Endpoint) -> Endpoint:
        """Add an :class:`Endpoint` built by an extension (its own client, error policy...)."""
        return self._core.add(endpoint)

    def get_endpoint(self, name: str) -> Endpoint | None:
        """The endpoint named ``name``, or None."""
        return self._core.endpoints.get(name)

    def endpoints_for(self, model: str) -> list[Endpoint]:
        """The endpoints serving ``model`` (an alias resolves to its target), both tiers."""
        pool = self._core.pools.get(model)
        if pool is None and model in self._core.aliases:
            pool = self._core.pools.get(self._core.aliases[model])
        return list(pool.all()) if pool is not None else []

    def add_failure_listener(self, listener: Callable[[Endpoint, Failure], None]) -> None:
        """Call ``listener(endpoint, failure)`` after every failed attempt (on the mux's loop;
        it must not block). ``failure.fault`` says whose fault it was."""
        self._core.on_failure_hooks.append(listener)

    def remove_failure_listener(self, listener: Callable[[Endpoint, Failure], None]) -> None:
        with contextlib.suppress(ValueError):
            self._core.on_failure_hooks.remove(listener)

    def on_close(self, closer: Callable[[], Awaitable[Any]]) -> None:
        """Run ``await closer()`` when the Multiplexer closes (last registered, first run)."""
        self._core.closers.append(closer)

    def on_start(self, starter: Callable[[], Awaitable[Any]]) -> None:
        """Run ``await starter()`` once on the Multiplexer's event loop: now if that loop is
        running (the sync face's own loop; the async face's, when called from inside it),
        otherwise before the first request."""
        loop = self._live_loop()
        if loop is None:
            self._core.startup.append(starter)
        elif self._in_loop(loop):
            # started now; the first request still waits for it (and sees its error)
            task = loop.create_task(starter())
            self._background.add(task)
            task.add_done_callback(self._background.discard)

            async def wait_started() -> None:
                await task

            self._core.startup.append(wait_started)
        else:
            asyncio.run_coroutine_threadsafe(starter(), loop).result()

    async def arun(self, coro: Awaitable[T]) -> T:
        """Await ``coro`` on the Multiplexer's event loop from any loop (the async face runs
        it right here; the sync face on its private loop, without blocking the caller's)."""
        loop = self._live_loop()
        if loop is None or self._in_loop(loop):
            return await coro
        future = asyncio.run_coroutine_threadsafe(coro, loop)  # type: ignore[arg-type]
        return await asyncio.wrap_future(future)

    async def acreate_chat(self, **params: Any) -> Any:
        """``chat.completions.create(**params)`` awaited from any event loop, on either face:
        the request runs on the Multiplexer's loop (the sync face's private one) without
        blocking the caller's. Returns a ChatCompletion, or with ``stream=True`` the async
        stream, which lives on the Multiplexer's loop: from another loop, read it (and close
        it) through :meth:`arun`, e.g. ``await mux.arun(stream.__anext__())``."""
        body, request_options, options = _split(params)
        stream = bool(body.get("stream"))
        return await self.arun(
            self._core.execute(CHAT, body, request_options, options, stream=stream)
        )

    def _live_loop(self) -> asyncio.AbstractEventLoop | None:
        try:
            return asyncio.get_running_loop()
        except RuntimeError:
            return None

    @staticmethod
    def _in_loop(loop: asyncio.AbstractEventLoop) -> bool:
        try:
            return asyncio.get_running_loop() is loop
        except RuntimeError:
            return False

    def add_source(self, source: EndpointSource) -> EndpointSource:
        """Attach an :class:`~gonka_mux.sources.EndpointSource`: ``await source.start(self)``
        runs on this Multiplexer's loop (now if it is running, else before the first request)
        and ``await source.aclose()`` when it closes. Returns the source."""
        if not callable(getattr(source, "start", None)) or not callable(
            getattr(source, "aclose", None)
        ):
            raise TypeError("an endpoint source needs async start(mux) and aclose() methods")
        self.on_close(source.aclose)

        async def start() -> None:
            await source.start(self)

        self.on_start(start)
        return source

    def watch_epochs(self, watcher: Any) -> None:
        """Report ``watcher`` (a Gonka refresh manager) in :meth:`epoch_status`."""
        self._epoch_watchers.append(watcher)

    # -- endpoint lifecycle: what endpoint sources (vLLM health, Gonka groups) report -------
    def mark_ready(self, endpoint: str | Endpoint) -> Endpoint:
        """The endpoint serves again: back in rotation at once (clears cooldown, ejection,
        quarantine, draining and models it had answered 404 for)."""
        return self._core.registry.mark_ready(endpoint)

    def mark_draining(self, endpoint: str | Endpoint) -> Endpoint:
        """No new requests to this endpoint from now on; requests in flight on it finish."""
        return self._core.registry.mark_draining(endpoint)

    def mark_down(self, endpoint: str | Endpoint) -> Endpoint:
        """The endpoint is not serving (starting, unreachable): no new requests until
        :meth:`mark_ready`."""
        return self._core.registry.mark_down(endpoint)

    def mark_gone(self, endpoint: str | Endpoint) -> Endpoint:
        """The endpoint left for good: removed (requests in flight on it finish)."""
        return self._core.registry.mark_gone(endpoint)

    def retire_group(self, group: str, *, reason: str | None = None) -> list[Endpoint]:
        """Remove every endpoint of ``group`` at once (a retired network, a dropped broker).
        Returns the removed endpoints; ``reason`` is logged once."""
        removed = self._core.registry.retire_group(group)
        if removed:
            log.warning(
                "retired %d endpoint(s) of group %s%s",
                len(removed),
                group,
                f": {reason}" if reason else "",
            )
        return removed

    @property
    def endpoints(self) -> list[Endpoint]:
        return list(self._core.endpoints.values())

    # -- agent features: thin doors over gonka_mux.features ----------------------------------
    def enable_tiering(self, policy: Any) -> TieringPolicy:
        """Route ``model="auto"`` (or a ``tier=`` hint) by rules: a ``TieringPolicy``, a dict
        in the ``[tiering]`` config shape, or a TOML path. Returns the policy."""
        return TieringFeature(policy).install(self)

    def enable_limits(
        self,
        config: Any = None,
        *,
        backend: Any = "memory",
        path: str | os.PathLike[str] | None = None,
        redis_url: str | None = None,
        default_max_tokens: int = 1024,
    ) -> RateLimiter:
        """Local rate limits per caller key (``caller=``) and per endpoint.

        ``config``: a ``LimitsConfig`` or a dict in the ``[limits]`` shape (tiers with rpm/tpm,
        keys -> tier, endpoints, default_tier, max_wait); default tier from
        ``GONKA_DEFAULT_RPM``/``GONKA_DEFAULT_TPM``. ``backend``: ``"memory"`` (one process),
        ``"sqlite"`` (several processes on one host, file at ``path``), ``"redis"`` (many hosts,
        ``redis_url``) or a backend object. Returns the ``RateLimiter`` (also ``mux.limiter``).
        """
        feature = LimitsFeature(
            config,
            backend=backend,
            path=path,
            redis_url=redis_url,
            default_max_tokens=default_max_tokens,
        )
        return feature.install(self)

    def enable_metering(
        self,
        store: Any = None,
        *,
        path: str | os.PathLike[str] | None = None,
        prices: Any = None,
        **meter_options: Any,
    ) -> Meter:
        """Record one ``UsageRecord`` per request (tokens, latency, endpoint, attempts, cost).

        ``store``: a usage store, ``"memory"``, or None for SQLite at ``path`` (default: the
        state directory), or a ``postgresql://`` URL as ``path`` or ``store`` (one usage table for a
        fleet). ``prices``: ``Prices`` or ``{model: {prompt, completion}}`` per 1M
        tokens. Writes happen on a background thread; ``aclose()`` flushes them. Returns the
        ``Meter`` (also ``mux.meter``); query it with ``gonka_mux.metering.UsageQuery``.
        """
        return MeteringFeature(store, path=path, prices=prices, **meter_options).install(self)

    def enable_sessions(
        self,
        store: Any = None,
        *,
        ttl: float | None = None,
        context_windows: Mapping[str, int] | None = None,
        **manager_options: Any,
    ) -> SessionManager:
        """Keep conversations server-side: ``create(..., session_id="s1")`` prepends the stored
        history (trimmed to the model's context window) and stores the new turn and the reply.

        ``store``: a session store, or ``"memory"``, ``"disk"`` (the default: diskcache in the
        state directory, several processes on one host), a ``redis://`` or a ``postgresql://``
        URL (a fleet on many hosts). ``ttl``: idle
        seconds before a session expires (default ``GONKA_SESSION_TTL`` or 3600).
        ``context_windows``: tokens per model (endpoints' ``context_window`` fill it in).
        Returns the ``SessionManager`` (also ``mux.sessions``: get, list, delete, export,
        import_).
        """
        feature = SessionsFeature(
            store, ttl=ttl, context_windows=context_windows, **manager_options
        )
        return feature.install(self)

    def enable_cache(
        self,
        store: Any = None,
        *,
        path: str | os.PathLike[str] | None = None,
        ttl: float | None = 86400.0,
        **options: Any,
    ) -> ResponseCache:
        """An exact-match response cache for chat, completions and embeddings: a repeated
        deterministic request (``temperature=0`` or a ``seed``; embeddings always) is answered
        from the cache without going upstream, with its original usage and
        ``gonka_mux.cache.cache_status(reply) == "hit"``.

        ``store``: ``"disk"`` (the default: diskcache at ``path``, default the state
        directory's ``cache/``), ``"memory"``, a ``redis://`` URL (shared by a fleet) or a
        store object. ``ttl``: seconds an entry lives (None: until evicted). ``options``:
        ``max_size``, ``max_entry_bytes``, ``only_deterministic``, ``per_caller``,
        ``uncacheable_tools``, ``single_flight``, ``single_flight_wait``, ``namespace``
        (docs/configuration.md, ``[cache]``). Per call: ``cache=False`` bypasses it,
        ``cache="refresh"`` stores a fresh reply, ``cache=True`` caches a sampled request.
        Returns the ``ResponseCache`` (also ``mux.cache``).
        """
        return ResponseCache(store, path=path, ttl=ttl, **options).install(self)

    def enable_memory(
        self,
        path: str | os.PathLike[str] | None = None,
        *,
        embedder: Any = None,
        embedding_model: str | None = None,
        **store_options: Any,
    ) -> MemoryStore:
        """Long-term memory (``mux.memory``): ``put``/``get``/``delete``/``list``/``search``
        per namespace, BM25-ranked over SQLite FTS5, persistent at ``path`` (default: the state
        directory; a ``postgresql://`` URL shares one memory across a fleet, same ranking).
        ``embedder``: any callable, or ``"mux"`` to embed through this Multiplexer
        with ``embedding_model``, for hybrid ranking."""
        feature = MemoryFeature(
            path, embedder=embedder, embedding_model=embedding_model, **store_options
        )
        return feature.install(self)

    async def _add_vllm_node(
        self,
        url: str | None,
        health_url: str | None,
        name: str | None,
        api_key: str | None,
        interval: float,
        endpoint_options: dict[str, Any],
    ) -> Endpoint:
        # A thin door over VllmNodeSource, the endpoint source that owns the node's monitor and
        # maps its health to the lifecycle (mark_ready / mark_draining / mark_down).
        from .vllm_node import VllmNodeSource

        models = endpoint_options.pop("models", None)
        source = VllmNodeSource(
            url,
            health_url=health_url,
            name=name,
            api_key=api_key,
            interval=interval,
            models=models,
            **endpoint_options,
        )
        await source.start(self)
        if source.endpoint is None:
            snapshot = source.monitor.snapshot
            await source.aclose()
            raise ValueError(
                f"the vLLM node at {source.url} reported no models ({snapshot.state}"
                + (f": {snapshot.error}" if snapshot.error else "")
                + "); check that it is running, pass models=[...] to register it now (it "
                "joins the rotation when it is ready), or use "
                "mux.add_source(VllmNodeSource(url)) to add it whenever it comes up"
            )
        self.on_close(source.aclose)
        self.vllm_monitors[source.endpoint.name] = source.monitor
        return source.endpoint

    def configure_jobs(
        self, store: Any = None, *, path: str | os.PathLike[str] | None = None, **runner_kwargs: Any
    ) -> None:
        """Choose the job store (default: SQLite in the state directory) and JobRunner options
        (``delivery_policy=``, ``max_concurrency=``...) before the first ``submit``."""
        feature = self.features.get("jobs")
        if feature is not None:
            if feature.started:  # type: ignore[attr-defined]
                raise RuntimeError("configure_jobs() must be called before the first submit()")
            self.features.pop("jobs")
            self.remove_extension(feature)
        JobsFeature(store, path=path, **runner_kwargs).install(self)

    async def execute_job(self, params: dict[str, Any]) -> dict[str, Any]:
        """Run one background job's chat completion (what the job runner calls)."""
        body, request_options, options = _split(dict(params))
        result = await self._core.execute(CHAT, body, request_options, options, stream=False)
        return result.model_dump(mode="json", exclude_unset=True)  # type: ignore[no-any-return]

    async def _job_runner(self) -> Any:
        feature = self.features.get("jobs")
        if feature is None:
            feature = JobsFeature().install(self)
        return await feature.start()  # type: ignore[attr-defined]

    async def _submit(
        self,
        webhook_url: str | None,
        webhook_secret: str | None,
        on_complete: Any,
        params: dict[str, Any],
    ) -> Any:
        if params.get("stream"):
            raise ValueError("submit() runs the request in the background: drop stream=True")
        runner = await self._job_runner()
        return await runner.submit(
            params, webhook_url=webhook_url, webhook_secret=webhook_secret, on_complete=on_complete
        )

    @property
    def settings(self) -> RoutingSettings:
        return self._core.settings

    def stats(self) -> dict[str, Any]:
        """Per endpoint: requests, successes, failures by kind, EWMA latency, in-flight, state;
        with rate limits enabled, ``"limits"``: which backend counts (``"local-fallback"``
        while a shared one such as Redis is away, see ``RateLimiter.status``)."""
        out = self._core.stats()
        if self.limiter is not None:
            out["limits"] = self.limiter.status()
        if self.cache is not None:
            out["cache"] = self.cache.stats()  # hits, misses, stored, faults, hit_rate
        return out

    def epoch_status(self) -> list[dict[str, Any]] | None:
        """What each Gonka epoch watcher knows (epoch, phase, switch height, last refresh);
        None when no Gonka participants were registered with a refresh manager."""
        if not self._epoch_watchers:
            return None
        return [
            {
                "group": getattr(w.group, "group", None),
                "epoch": w.current_epoch,
                "phase": w.phase,
                "poc_active": w.poc_active,
                "block_height": w.block_height,
                "switch_height": w.switch_height,
                "prefetched_epoch": w.prefetched_epoch,
                "last_refresh": w.last_refresh,
                "last_error": w.last_error,
                "swaps": w.swaps,
                "running": w.is_running,
            }
            for w in self._epoch_watchers
        ]


def _unique_name(core: MuxCore, base: str) -> str:
    name = base
    i = 2
    while name in core.endpoints:
        name = f"{base}#{i}"
        i += 1
    return name


class AsyncMultiplexer(_MuxBase):
    """An ``openai.AsyncOpenAI``-shaped client that routes over many endpoints.

    >>> mux = AsyncMultiplexer()
    >>> mux.add_endpoint("http://127.0.0.1:8000/v1", models=["kimi-k2.5"])  # doctest: +SKIP
    >>> await mux.chat.completions.create(model="kimi-k2.5", messages=[...])  # doctest: +SKIP
    """

    def __init__(self, settings: RoutingSettings | None = None, **setting_overrides: Any) -> None:
        if setting_overrides:
            from .config import settings_with

            settings = settings_with(settings, setting_overrides)
        self._core = MuxCore(settings)
        self._init_features()
        self.chat = _AsyncChat(self)
        self.completions = _AsyncLegacyCompletions(self)
        self.embeddings = _AsyncEmbeddings(self)
        self.models = _AsyncModels(self)

    @classmethod
    def from_config(cls, source: str | os.PathLike[str] | Mapping[str, Any]) -> AsyncMultiplexer:
        """Build from a TOML file or a dict (see docs/configuration.md)."""
        from .config import build_from_config

        return build_from_config(cls, source)

    async def submit(
        self,
        *,
        webhook_url: str | None = None,
        webhook_secret: str | None = None,
        on_complete: Any = None,
        **params: Any,
    ) -> Any:
        """Run a chat completion in the background; returns the persisted ``Job`` at once.

        When it finishes, ``on_complete(job)`` is called and, with ``webhook_url``, a signed
        POST is delivered (retried with backoff). Jobs and deliveries persist in the job store
        and resume after a restart once ``start_jobs()`` (or the next ``submit``) runs.
        """
        return await self._submit(webhook_url, webhook_secret, on_complete, params)

    async def start_jobs(self) -> Any:
        """Start the job runner now (resuming pending jobs and deliveries); returns it."""
        return await self._job_runner()

    async def add_vllm_node(
        self,
        url: str | None = None,
        *,
        health_url: str | None = None,
        name: str | None = None,
        api_key: str | None = None,
        interval: float = 2.0,
        **endpoint_options: Any,
    ) -> Endpoint:
        """Register a vLLM node: its models are discovered, and its queue depth (from the
        gonka-serve health sidecar at ``health_url``, else vLLM's /metrics) feeds the router as
        a load signal every ``interval`` seconds. Its health drives the lifecycle: out of
        rotation while starting or down, no new requests while draining, back within one poll
        of being ready. ``url`` defaults to ``GONKA_VLLM_BASE_URL`` (``http://localhost:8000``).
        A node that reports no models raises ValueError, unless ``models=[...]`` is given (then
        it is registered now and joins when ready); ``mux.add_source(VllmNodeSource(...))``
        instead keeps polling a node that is down and adds it when it comes up."""
        return await self._add_vllm_node(url, health_url, name, api_key, interval, endpoint_options)

    async def start(self) -> None:
        """Run the deferred start-up now (endpoint sources, vLLM nodes and Gonka refresh named
        in a config file) instead of at the first request. Idempotent."""
        await self._core.run_startup()

    async def aclose(self) -> None:
        """Close clients, stop background work, close every store the features opened."""
        await self._core.aclose()

    close = aclose

    async def __aenter__(self) -> AsyncMultiplexer:
        return self

    async def __aexit__(self, *exc_info: Any) -> None:
        await self.aclose()


class _SyncCreate(_Resource):
    _kind: RequestKind

    def _create(self, stream_flag: bool | None, params: dict[str, Any]) -> Any:
        if stream_flag is not None:
            params["stream"] = stream_flag
        body, request_options, options = _split(params)
        core = self._mux._core
        stream = bool(body.get("stream"))
        coro = core.execute(self._kind, body, request_options, options, stream=stream)
        result = self._mux._portal.call(coro)
        if stream:
            from ._stream import ChunkStream

            return ChunkStream(self._mux._portal, result)
        return result


class _SyncChatCompletions(_SyncCreate):
    __doc__ = _AsyncChatCompletions.__doc__
    _kind = CHAT

    @overload
    def create(self, *, stream: Literal[False] | None = None, **params: Any) -> ChatCompletion: ...
    @overload
    def create(self, *, stream: Literal[True], **params: Any) -> ChunkStream: ...
    @overload
    def create(self, *, stream: bool, **params: Any) -> ChatCompletion | ChunkStream: ...
    def create(self, *, stream: bool | None = None, **params: Any) -> ChatCompletion | ChunkStream:
        return self._create(stream, params)  # type: ignore[no-any-return]


class _SyncLegacyCompletions(_SyncCreate):
    _kind = COMPLETIONS

    @overload
    def create(self, *, stream: Literal[False] | None = None, **params: Any) -> Completion: ...
    @overload
    def create(self, *, stream: Literal[True], **params: Any) -> ChunkStream: ...
    @overload
    def create(self, *, stream: bool, **params: Any) -> Completion | ChunkStream: ...
    def create(self, *, stream: bool | None = None, **params: Any) -> Completion | ChunkStream:
        return self._create(stream, params)  # type: ignore[no-any-return]


class _SyncEmbeddings(_Resource):
    def create(self, **params: Any) -> CreateEmbeddingResponse:
        body, request_options, options = _split(params)
        body, decode = _embedding_request(body)
        coro = self._mux._core.execute(EMBEDDINGS, body, request_options, options, stream=False)
        result = self._mux._portal.call(coro)
        return _decode_embeddings(result) if decode else result


class _SyncChat(_Resource):
    def __init__(self, mux: Any) -> None:
        super().__init__(mux)
        self.completions = _SyncChatCompletions(mux)


class _SyncModels(_Resource):
    def list(self) -> ModelPage:
        return _model_page(self._mux._core)


class Multiplexer(_MuxBase):
    """The synchronous twin of :class:`AsyncMultiplexer` (an ``openai.OpenAI``-shaped client).

    It runs the same async core on a private event-loop thread, started on first use, so it is
    safe to call from any thread, including worker threads of frameworks that already run an
    event loop (CrewAI).
    """

    def __init__(self, settings: RoutingSettings | None = None, **setting_overrides: Any) -> None:
        if setting_overrides:
            from .config import settings_with

            settings = settings_with(settings, setting_overrides)
        self._core = MuxCore(settings)
        self._init_features()
        self._portal = Portal()
        self.chat = _SyncChat(self)
        self.completions = _SyncLegacyCompletions(self)
        self.embeddings = _SyncEmbeddings(self)
        self.models = _SyncModels(self)

    @classmethod
    def from_config(cls, source: str | os.PathLike[str] | Mapping[str, Any]) -> Multiplexer:
        """Build from a TOML file or a dict (see docs/configuration.md)."""
        from .config import build_from_config

        return build_from_config(cls, source)

    def start(self) -> None:
        """Run the deferred start-up now instead of at the first request. Idempotent."""
        self._portal.call(self._core.run_startup())

    def run(self, coro: Any) -> Any:
        """Run a coroutine on this Multiplexer's loop and wait for it (for extensions with
        async APIs; not from inside that loop)."""
        return self._portal.call(coro)

    def _live_loop(self) -> asyncio.AbstractEventLoop | None:
        return self._portal.loop  # started on first use

    def submit(
        self,
        *,
        webhook_url: str | None = None,
        webhook_secret: str | None = None,
        on_complete: Any = None,
        **params: Any,
    ) -> Any:
        """Sync twin of :meth:`AsyncMultiplexer.submit` (the job runs on this mux's loop)."""
        return self._portal.call(self._submit(webhook_url, webhook_secret, on_complete, params))

    def start_jobs(self) -> Any:
        return self._portal.call(self._job_runner())

    def add_vllm_node(
        self,
        url: str | None = None,
        *,
        health_url: str | None = None,
        name: str | None = None,
        api_key: str | None = None,
        interval: float = 2.0,
        **endpoint_options: Any,
    ) -> Endpoint:
        """Sync twin of :meth:`AsyncMultiplexer.add_vllm_node` (polls on this mux's loop)."""
        return self._portal.call(
            self._add_vllm_node(url, health_url, name, api_key, interval, endpoint_options)
        )

    def wait_job(self, job_id: str, timeout: float | None = None) -> Any:
        """Block until the job is finished; returns it."""
        return self._portal.call(self._job_runner_wait(job_id, timeout))

    async def _job_runner_wait(self, job_id: str, timeout: float | None) -> Any:
        runner = await self._job_runner()
        return await runner.wait(job_id, timeout)

    def close(self) -> None:
        """Close clients, flush metering, stop background work (refresh, monitors, jobs)."""
        if self._portal._loop is not None or self._core.closers:
            self._portal.call(self._core.aclose())
        self._portal.close()

    def __enter__(self) -> Multiplexer:
        return self

    def __exit__(self, *exc_info: Any) -> None:
        self.close()
