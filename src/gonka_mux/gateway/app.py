"""The gateway: a small Starlette app that exposes an AsyncMultiplexer over OpenAI's HTTP API.

It authenticates callers (Bearer API keys from :class:`~gonka_mux.gateway.keys.KeyStore`), turns
HTTP into ``mux.chat.completions.create(...)`` calls with the caller's key id as ``caller=`` and
its session id as ``session_id=``, and turns results and errors back into OpenAI's JSON and SSE.
Routing, failover, limits, metering, sessions and memory are the library's; the gateway only
scopes them per tenant (a key sees only its own sessions, memory and jobs).

Routes (the full document is served at ``/openapi.json``)::

    GET  /health                          liveness and endpoint availability (no auth)
    GET  /v1/models, /v1/models/{model}
    POST /v1/chat/completions             JSON or SSE; tools, reasoning passed through
    POST /v1/completions, /v1/embeddings
    GET|DELETE /v1/sessions/{session_id}
    GET  /v1/memory/{namespace}           list; POST .../search; GET|PUT|DELETE .../{key}
    POST /v1/jobs, GET /v1/jobs/{job_id}  background requests with signed webhooks
    /admin/...                            usage, keys, status (the admin key)
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import hmac
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from typing import Any, TypeVar

from starlette.applications import Starlette
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from gonka_mux.context import CHAT, COMPLETIONS
from gonka_mux.multiplexer import AsyncMultiplexer, Multiplexer

from . import _http
from .admin import admin_routes
from .agent import agent_routes
from .errors import HTTPError, error_response
from .keys import ApiKey, KeyStore, hash_key
from .openapi import openapi_document
from .services import Services
from .sse import sse_response

__all__ = ["Gateway", "create_app"]

log = logging.getLogger("gonka_mux.gateway")

Handler = Callable[[Request], Awaitable[Response]]
T = TypeVar("T")
DEFAULT_MAX_BODY = 16 * 1024 * 1024
DEFAULT_BODY_TIMEOUT = 30.0
DEFAULT_MEMORY_QUOTA = 64 * 1024 * 1024
DEFAULT_MEMORY_ENTRY = 1024 * 1024


try:  # the path the routes match (without root_path); private, hence the fallback
    from starlette._utils import get_route_path
except ImportError:  # pragma: no cover - an older or newer Starlette

    def get_route_path(scope: Any) -> str:  # type: ignore[misc]
        return str(scope["path"])


def _guarded(handler: Handler) -> Handler:
    """Every error becomes an OpenAI-shaped response (never a bare 500 page)."""

    @functools.wraps(handler)
    async def run(request: Request) -> Response:
        try:
            return await handler(request)
        except Exception as exc:
            return error_response(exc)

    return run


class Gateway:
    """The state behind one gateway app: the Multiplexer, the key store and the agent services
    (see :class:`~gonka_mux.gateway.services.Services`); a route whose service is missing
    answers 501."""

    def __init__(
        self,
        mux: Any,
        *,
        keys: KeyStore,
        admin_key: str | None,
        max_body_bytes: int = DEFAULT_MAX_BODY,
        close_mux: bool = False,
        allow_private_webhooks: bool = False,
        body_timeout: float | None = DEFAULT_BODY_TIMEOUT,
        memory_quota_bytes: int = DEFAULT_MEMORY_QUOTA,
        max_memory_entry_bytes: int = DEFAULT_MEMORY_ENTRY,
    ) -> None:
        if isinstance(mux, Multiplexer):
            raise TypeError(
                "create_app() needs an AsyncMultiplexer (the gateway runs on an event loop); "
                "build one with AsyncMultiplexer.from_config(...) instead of Multiplexer"
            )
        if not isinstance(mux, AsyncMultiplexer):
            raise TypeError(f"create_app() needs an AsyncMultiplexer, not {type(mux).__name__}")
        self.mux = mux
        self.keys = keys
        self._admin_hash = hash_key(admin_key) if admin_key else keys.admin_key_hash()
        self.max_body_bytes = max_body_bytes
        self.close_mux = close_mux
        if not isinstance(allow_private_webhooks, bool):
            raise TypeError(
                f"allow_private_webhooks must be True or False, got {allow_private_webhooks!r}"
            )
        for name, value in (
            ("max_body_bytes", max_body_bytes),
            ("memory_quota_bytes", memory_quota_bytes),
            ("max_memory_entry_bytes", max_memory_entry_bytes),
        ):
            if isinstance(value, bool) or not isinstance(value, int):
                raise TypeError(f"{name} must be an integer number of bytes, got {value!r}")
            if value < 1:
                raise ValueError(f"{name} must be >= 1, got {value!r}")
        if body_timeout is not None and (
            isinstance(body_timeout, bool)
            or not isinstance(body_timeout, (int, float))
            or not body_timeout > 0
        ):
            raise ValueError(f"body_timeout must be a number of seconds > 0, got {body_timeout!r}")
        self.body_timeout = body_timeout
        self.memory_quota_bytes = memory_quota_bytes
        self.max_memory_entry_bytes = max_memory_entry_bytes
        self.allow_private_webhooks = allow_private_webhooks
        _guard_webhooks(mux, allow_private_webhooks)
        self.services = Services(mux)
        self.started_at = time.time()

    async def read_json(self, request: Request) -> dict[str, Any]:
        """The body as a JSON object within the size and time limits (see ``_http.read_json``)."""
        return await _http.read_json(request, self.max_body_bytes, self.body_timeout)

    async def keys_io(self, method: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        """``method(*args, **kwargs)`` of the key store: on a worker thread for a store whose
        queries may wait on the network (:attr:`KeyStore.blocking_io`, PostgreSQL), so the event
        loop keeps serving; inline for SQLite (local, microseconds)."""
        if self.keys.blocking_io:
            return await asyncio.to_thread(method, *args, **kwargs)
        return method(*args, **kwargs)

    # -- auth ------------------------------------------------------------------------------
    async def authenticate(self, request: Request) -> ApiKey:
        token = _bearer(request)
        if token is None:
            raise HTTPError(
                401,
                "You didn't provide an API key. Send it in the Authorization header as "
                "'Authorization: Bearer YOUR_KEY'.",
                code="missing_api_key",
                headers={"WWW-Authenticate": "Bearer"},
            )
        key = await self.keys.averify(token)  # off the loop where the lookup may block
        if key is None:
            raise HTTPError(
                401,
                "Incorrect API key provided, or the key was revoked. Ask the gateway's "
                "operator for a valid key.",
                code="invalid_api_key",
                headers={"WWW-Authenticate": "Bearer"},
            )
        return key

    def authenticate_admin(self, request: Request) -> None:
        if self._admin_hash is None:
            raise HTTPError(
                403,
                "The admin API is disabled: start the gateway with GONKA_ADMIN_API_KEY set "
                "(or pass admin_key= to create_app).",
                code="admin_disabled",
            )
        token = _bearer(request)
        if token is None or not hmac.compare_digest(hash_key(token), self._admin_hash):
            raise HTTPError(
                401,
                "The admin API needs the admin key: 'Authorization: Bearer ADMIN_KEY'.",
                code="invalid_admin_key",
                headers={"WWW-Authenticate": "Bearer"},
            )

    # -- OpenAI surface ---------------------------------------------------------------------
    async def chat_completions(self, request: Request) -> Response:
        key = await self.authenticate(request)
        body = await self.read_json(request)
        _http.reject_forbidden(body)
        _http.require_model(body)
        _http.check_messages(body)
        _http.check_type(body, "stream", (bool,), "a boolean")
        _http.check_type(body, "stream_options", (dict,), "an object")
        _http.check_type(body, "tools", (list,), "an array")
        _http.optional_str(body, "tier")
        kwargs = self._mux_kwargs(request, key, body)
        result = await self._create(CHAT, body, kwargs)
        return self._relay(result, body, kwargs)

    async def completions(self, request: Request) -> Response:
        key = await self.authenticate(request)
        body = await self.read_json(request)
        _http.reject_forbidden(body)
        _http.require_model(body)
        _http.check_prompt(body, "prompt")
        _http.check_type(body, "stream", (bool,), "a boolean")
        _http.check_type(body, "stream_options", (dict,), "an object")
        kwargs = self._mux_kwargs(request, key, body)
        result = await self._create(COMPLETIONS, body, kwargs)
        return self._relay(result, body, kwargs)

    async def embeddings(self, request: Request) -> Response:
        key = await self.authenticate(request)
        body = await self.read_json(request)
        _http.reject_forbidden(body)
        _http.require_model(body)
        _http.check_prompt(body, "input")
        for name in ("stream", "session_id", "tier", "prompt_cache_key"):
            if name in body:
                raise HTTPError(400, f"Unrecognized request argument supplied: {name}", param=name)
        kwargs = _cache_kwarg(request, self._caller_kwargs(key))
        result = await self.mux.embeddings.create(**body, **kwargs)
        return _http.json_response(result, headers=_cache_headers(result, {}))

    async def _create(self, kind: Any, body: dict[str, Any], kwargs: dict[str, Any]) -> Any:
        """What ``mux.<kind>.create(**body, **kwargs)`` returns, asked for as a relay
        (``mux.<kind>.relay``): the request goes out on a hop built once per endpoint, and a
        stream comes back as SSE bytes to relay unchanged (no chunk objects built and
        serialised again: most of a relayed stream's cost). Usage, sessions and limits still
        see every chunk."""
        resource = self.mux.chat.completions if kind is CHAT else self.mux.completions
        return await resource.relay(**{**body, **kwargs})

    def _caller_kwargs(self, key: ApiKey) -> dict[str, Any]:
        kwargs: dict[str, Any] = {"caller": key.id}
        metadata = self.services.request_metadata(key)
        if metadata:
            kwargs["mux_metadata"] = metadata
        return kwargs

    def _mux_kwargs(self, request: Request, key: ApiKey, body: dict[str, Any]) -> dict[str, Any]:
        """gonka_mux's keyword arguments for this request (the body keeps OpenAI's fields).

        The session id comes from ``X-Session-Id``, else the body's ``session_id``, else
        ``prompt_cache_key`` (how OpenClaw sends its session id). A client that names its
        session by ``prompt_cache_key`` re-sends the whole conversation itself, so that session
        is used for affinity and metering only: no stored history is prepended.
        """
        kwargs = _cache_kwarg(request, self._caller_kwargs(key))
        header = _http.session_header(request)
        in_body = _http.optional_str(body, "session_id", id_like=True)
        body.pop("session_id", None)
        session = header or in_body
        mode = None
        if session is None:
            cache_key = body.get("prompt_cache_key")
            if isinstance(cache_key, str) and cache_key:
                session = cache_key[:256]
                mode = "affinity"
        if session is not None:
            kwargs["session_id"] = self.scoped(key, session)
            if mode is not None:
                kwargs.setdefault("mux_metadata", {})["session_mode"] = mode
        tier = body.pop("tier", None)
        if tier is not None:
            kwargs["tier"] = tier
        return kwargs

    @staticmethod
    def scoped(key: ApiKey, name: str) -> str:
        """A tenant's name for a shared store: keys never see each other's sessions or memory."""
        return f"{key.id}/{name}"

    def _relay(self, result: Any, body: Mapping[str, Any], kwargs: Mapping[str, Any]) -> Response:
        headers = _cache_headers(result, {})
        session = kwargs.get("session_id")
        if session is not None:
            headers["X-Session-Id"] = session.split("/", 1)[1]
        if body.get("stream"):
            return sse_response(result, headers=headers)
        return _http.json_response(result, headers=headers)

    async def list_models(self, request: Request) -> Response:
        await self.authenticate(request)
        page = await self.mux.models.list()
        return _http.json_response(page.model_dump())

    async def get_model(self, request: Request) -> Response:
        await self.authenticate(request)
        wanted = request.path_params["model"]
        page = await self.mux.models.list()
        for model in page.data:
            if model.id == wanted:
                return _http.json_response(model)
        raise HTTPError(
            404,
            f"The model '{wanted}' does not exist on this gateway (GET /v1/models lists them).",
            code="model_not_found",
            param="model",
        )

    async def health(self, request: Request) -> Response:
        """200 while some endpoint can take requests (``ok``: all of them), else 503."""
        now = time.monotonic()
        endpoints = self.mux.endpoints
        available = sum(1 for ep in endpoints if ep.health.selectable(now))
        if endpoints and available == len(endpoints):
            status = "ok"
        elif available:
            status = "degraded"
        else:
            status = "unavailable"
        page = await self.mux.models.list()
        payload = {
            "status": status,
            "endpoints": {"total": len(endpoints), "available": available},
            "models": [m.id for m in page.data],
            "uptime_s": round(time.time() - self.started_at, 3),
        }
        limiter = getattr(self.mux, "limiter", None)
        if limiter is not None:
            # Shared limits (Redis) away: still serving, under per-process limits: degraded.
            payload["limits"] = limits = limiter.status()
            if limits["degraded"] and status == "ok":
                payload["status"] = "degraded"
        return _http.json_response(payload, 200 if available else 503)

    async def openapi(self, request: Request) -> Response:
        return _http.json_response(openapi_document())


def _guard_webhooks(mux: Any, allow_private: bool) -> None:
    """Make the Multiplexer's job runner refuse private webhook targets at delivery too (the
    route refuses literal ones at submission; DNS names are checked when resolved)."""
    feature = mux.features.get("jobs")
    if feature is None:
        mux.configure_jobs(allow_private_webhooks=allow_private)
        return
    runner = getattr(feature, "runner", None)
    if runner is not None:
        runner.allow_private_webhooks = allow_private
    else:
        feature.runner_options["allow_private_webhooks"] = allow_private


def _bearer(request: Request) -> str | None:
    header = request.headers.get("authorization")
    if not header:
        return None
    scheme, _, token = header.partition(" ")
    token = token.strip()
    if scheme.lower() != "bearer" or not token:
        return None
    return token


async def _not_found(request: Request, exc: Exception) -> Response:
    status = getattr(exc, "status_code", 404)
    headers: dict[str, str] = {}
    if status == 405:
        message = f"Method {request.method} is not allowed on {request.url.path}."
        allowed = _allowed_methods(request)
        if allowed:
            headers["Allow"] = ", ".join(allowed)
    else:
        message = f"Unknown path {request.url.path}; see /openapi.json for the API."
        status = 404
    return error_response(
        HTTPError(status, message, code="not_found" if status == 404 else None, headers=headers)
    )


def _allowed_methods(request: Request) -> list[str]:
    """The methods the routes matching this path accept (for a 405's ``Allow`` header)."""
    from starlette.routing import Match

    methods: set[str] = set()
    for route in request.app.routes:
        match, _ = route.matches(request.scope)
        if match != Match.NONE:
            methods.update(getattr(route, "methods", None) or ())
    return sorted(methods)


def create_app(
    mux: Any,
    *,
    keys: KeyStore | str | None = None,
    admin_key: str | None = None,
    max_body_bytes: int = DEFAULT_MAX_BODY,
    close_mux: bool = False,
    allow_private_webhooks: bool = False,
    body_timeout: float | None = DEFAULT_BODY_TIMEOUT,
    memory_quota_bytes: int = DEFAULT_MEMORY_QUOTA,
    max_memory_entry_bytes: int = DEFAULT_MEMORY_ENTRY,
) -> Starlette:
    """An ASGI app serving ``mux`` (an :class:`~gonka_mux.AsyncMultiplexer`) over HTTP.

    ``keys``: a :class:`KeyStore`, or the path of its SQLite file (default: an in-memory store,
    create keys with ``app.state.gateway.keys.create(...)``). ``admin_key``: the admin API's key
    (default: the one generated into the key store, else the admin API is off).
    Limits, metering, sessions, memory and jobs are the Multiplexer's (``mux.enable_limits``,
    ``enable_metering``, ``enable_sessions``, ``enable_memory``, ``submit``, or the matching
    config sections); a route whose feature is off answers 501. ``close_mux``: close the
    Multiplexer when the app shuts down. ``allow_private_webhooks``: let jobs post webhooks to
    loopback and private addresses (off by default, so tenants cannot reach the gateway's own
    network; checked at submission and, after resolving the host, at delivery).
    ``body_timeout``: seconds a request body may take to arrive (408 after). Memory writes
    count against the key's rate limit; ``memory_quota_bytes`` bounds what one key stores in
    memory and ``max_memory_entry_bytes`` one entry (413 past either).
    """
    store = keys if isinstance(keys, KeyStore) else KeyStore(keys or ":memory:")
    gateway = Gateway(
        mux,
        keys=store,
        admin_key=admin_key,
        max_body_bytes=max_body_bytes,
        close_mux=close_mux,
        allow_private_webhooks=allow_private_webhooks,
        body_timeout=body_timeout,
        memory_quota_bytes=memory_quota_bytes,
        max_memory_entry_bytes=max_memory_entry_bytes,
    )
    g = gateway
    routes = [
        Route("/health", _guarded(g.health), methods=["GET"]),
        Route("/openapi.json", _guarded(g.openapi), methods=["GET"]),
        Route("/v1/models", _guarded(g.list_models), methods=["GET"]),
        Route("/v1/models/{model:path}", _guarded(g.get_model), methods=["GET"]),
        Route("/v1/chat/completions", _guarded(g.chat_completions), methods=["POST"]),
        Route("/v1/completions", _guarded(g.completions), methods=["POST"]),
        Route("/v1/embeddings", _guarded(g.embeddings), methods=["POST"]),
        *[Route(path, _guarded(fn), methods=m) for path, fn, m in agent_routes(g)],
        *[Route(path, _guarded(fn), methods=m) for path, fn, m in admin_routes(g)],
    ]

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        # endpoint sources (vLLM nodes from the environment) start with the server, so /health
        # is right before the first request
        start = getattr(mux, "start", None)
        if start is not None:
            await start()
        try:
            yield
        finally:
            if gateway.close_mux:
                await mux.aclose()

    app = _GatewayApp(
        routes=routes,
        exception_handlers={StarletteHTTPException: _not_found},
        lifespan=lifespan,
    )
    app.state.gateway = gateway
    app.hot_routes = {
        "/v1/chat/completions": _guarded(g.chat_completions),
        "/v1/completions": _guarded(g.completions),
    }
    return app


class _GatewayApp(Starlette):
    """Starlette, with the completion routes' POSTs sent straight to their handlers.

    Their handlers answer every error themselves (``_guarded``), so Starlette's error and
    exception middleware and the route table have nothing to add there: skipping them saves
    some of the per-request cost of a relay. Added middleware (``app.add_middleware``) turns
    this off, so it sees every request.
    """

    hot_routes: dict[str, Handler] = {}

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] == "http" and scope["method"] == "POST" and not self.user_middleware:
            handler = self.hot_routes.get(get_route_path(scope))
            if handler is not None:
                scope["app"] = self
                response = await handler(Request(scope, receive, send))
                await response(scope, receive, send)
                return
        await super().__call__(scope, receive, send)


def _cache_kwarg(request: Request, kwargs: dict[str, Any]) -> dict[str, Any]:
    """The response cache per request, as HTTP says it: ``Cache-Control: no-store`` neither
    reads nor stores (``cache=False``), ``no-cache`` fetches a fresh reply and stores it
    (``cache="refresh"``). Without the header (or without a cache) nothing changes."""
    control = request.headers.get("cache-control")
    if control:
        directives = {d.strip().lower() for d in control.split(",")}
        if "no-store" in directives:
            kwargs["cache"] = False
        elif "no-cache" in directives:
            kwargs["cache"] = "refresh"
    return kwargs


def _cache_headers(result: Any, headers: dict[str, str]) -> dict[str, str]:
    """``x-gonka-mux-cache: hit`` (or ``miss``) on a reply the response cache served (or
    fetched and stored), so a client can tell without a library attribute."""
    status = getattr(result, "_gonka_mux_cache", None)  # gonka_mux.cache.replay.MARKER
    if status is not None:
        headers["x-gonka-mux-cache"] = status
    return headers
