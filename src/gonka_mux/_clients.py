"""Shared HTTP machinery for the endpoints a Multiplexer builds from URLs.

Why: ``openai.AsyncOpenAI(base_url=...)`` without ``http_client`` builds its own HTTP client, and
with it its own SSL context (loading the CA bundle costs ~20 ms of CPU) and its own connection
pool. A Gonka pool has hundreds of participants, so adding 1,000 endpoints took 20-36 s. Here
each Multiplexer has one :class:`ClientFactory`; the first endpoint added by URL makes it build
ONE HTTP client (the SDK's own ``openai.DefaultAsyncHttpxClient``, so the HTTP library always
matches the SDK major: httpx2 under openai 3.x, httpx under 2.x -- handing openai 3.x an httpx
client triples its CPU per request), ONE SSL context, and a transport that routes each request
to a connection pool of its own origin. Each endpoint still gets its own ``openai.AsyncOpenAI``
(base_url, api_key, organization, project and default headers are per client and go into each
request), built with ``http_client=`` the shared client: ~40 us per endpoint instead of ~20 ms.
``AsyncOpenAI(..., http_client=shared)`` is used rather than ``template.with_options(...)``:
both give the same kind of object, so the same cost per request (measured equal within noise),
construction is a little cheaper (37 vs 41 us under openai 3.x, 32 vs 33 under 2.x), and
nothing is inherited from a template client.

Why a pool per origin rather than one pool: an httpcore pool scans ALL its connections on every
request, so one pool holding 1,000 origins' connections made each request cost 2.9x the CPU
(bench/scale.py ``--clients one-pool``). The router keeps a dict ``(origin) -> transport`` (the
library's own ``AsyncHTTPTransport``, all on the one SSL context): one lookup per request.
Under openai 2.x the pools are per endpoint instead (keyed by origin and a tag each endpoint's
client puts on its requests): httpcore 1.x's pool costs grow with its connections (a quadratic
pass per request), so endpoints sharing an origin must not pool their connections together:
10 endpoints on one origin at c=32 cost 2.5-2.8 ms of CPU per request in one pool, 1.6 ms in
ten. httpcore2 (openai 3.x) shows no such cost (one pool or ten: equal within noise), and there
endpoints on one origin (several API keys of one provider) share its connections.

Limits, per pool: no cap on connections (``max_connections=None``: the Multiplexer enforces
per-endpoint concurrency with ``max_concurrent``; a cap here would queue requests out of its
sight, with the SDK's 600 s pool timeout), at most 100 idle keep-alive connections (the SDK's
default per client, which each endpoint had before). Idle connections are reused for 30 s, not
the SDK's 5 s: spread over hundreds of origins, each origin sees a request only every few
seconds, and with 5 s one request in 8 of a 1,000-origin pool at ~900 req/s opened a new
connection (1 in 100 with 30 s) -- a TLS handshake, for a remote participant. A server that
closes sooner (uvicorn/vLLM: 5 s) is seen closing before the connection is reused (httpcore
checks the socket first), so the longer expiry costs nothing there; it stays under NAT and
load-balancer idle timeouts (60 s and more). There is no global cap, as there was none before
(one client per endpoint). Pools no longer used (all their connections idle and expired or
closed, nothing in flight) are closed and dropped in a sweep that runs when the number of pools
doubles, so a long-lived Multiplexer whose endpoints come and go (epoch swaps) does not keep
their sockets.

Ownership: the factory owns the shared client and closes it exactly once (:meth:`aclose` is
idempotent and registered as a closer of the MuxCore on first use). The per-endpoint clients
are ``SharedHttpAsyncOpenAI``, whose ``close()`` leaves the shared client open: closing or
removing one endpoint never breaks the others. Clients passed in by the user are not made here.
Nothing here logs or shows an API key (the reprs name no base URL or key).
"""

from __future__ import annotations

import itertools
import sys
import threading
from collections.abc import Awaitable, Callable, Mapping
from typing import Any

__all__ = ["ClientFactory"]

#: Per-pool limits: (max_connections, max_keepalive_connections, keepalive_expiry seconds).
DEFAULT_POOL_LIMITS = (None, 100, 30.0)
#: The sweep of unused pools runs when the number of pools reaches this, then twice the number
#: left after each sweep.
_SWEEP_MIN = 256

#: The request extension that names an endpoint's own pool (``pools="endpoint"``).
POOL_TAG = "gonka_mux.pool"

_classes: dict[str, Any] = {}


def _httpx() -> Any:
    """The HTTP library of the installed openai SDK (httpx2 for 3.x, httpx for 2.x)."""
    import openai

    return sys.modules[type(openai.DEFAULT_CONNECTION_LIMITS).__module__.partition(".")[0]]


def _client_class(tagged: bool) -> Any:
    key = "tagged" if tagged else "client"
    cls = _classes.get(key)
    if cls is None:
        import openai

        class SharedHttpAsyncOpenAI(openai.AsyncOpenAI):
            """An ``AsyncOpenAI`` over a Multiplexer's shared HTTP client.

            ``close()`` leaves the shared client open: the Multiplexer's :class:`ClientFactory`
            closes it, once, when the Multiplexer closes.
            """

            async def close(self) -> None:
                return None

        class PoolTaggedAsyncOpenAI(SharedHttpAsyncOpenAI):
            """Tags its requests so that the router gives this endpoint a pool of its own."""

            _gonka_mux_pool: int | None = None

            async def _prepare_request(self, request: Any) -> None:
                await super()._prepare_request(request)
                request.extensions[POOL_TAG] = self._gonka_mux_pool

        for c in (SharedHttpAsyncOpenAI, PoolTaggedAsyncOpenAI):
            c.__qualname__ = c.__name__
        _classes["client"], _classes["tagged"] = SharedHttpAsyncOpenAI, PoolTaggedAsyncOpenAI
        cls = _classes[key]
    return cls


def _router_class(httpx: Any) -> Any:
    key = f"router:{httpx.__name__}"
    cls = _classes.get(key)
    if cls is None:
        cls = _classes[key] = type("PoolRouter", (_PoolRouter, httpx.AsyncBaseTransport), {})
    return cls


class _PoolRouter:
    """An async transport with one connection pool (``AsyncHTTPTransport``) per origin, or per
    (origin, endpoint) when ``per_endpoint`` (requests tagged by :class:`PoolTaggedAsyncOpenAI`).

    Mixed into the SDK's HTTP library's ``AsyncBaseTransport`` by :func:`_router_class`.
    """

    def __init__(self, httpx: Any, limits: Any, *, per_endpoint: bool) -> None:
        self._httpx = httpx
        self._limits = limits
        self._per_endpoint = per_endpoint
        self._ssl_context = httpx.create_ssl_context()  # verify=True, trust_env=True: the default
        self._transports: dict[tuple[bytes, bytes, int | None, int | None], Any] = {}
        self._sweep_at = _SWEEP_MIN
        self._wire: Any = None
        self.closed = False

    @property
    def pools(self) -> int:
        return len(self._transports)

    def wire_pool(self) -> Any:
        """The keep-alive pool of the relay hop's own HTTP/1.1 client (``_wire``), on this
        router's SSL context and limits; made on first use, closed with the router."""
        if self._wire is None:
            from ._wire import WirePool

            limits = self._limits
            self._wire = WirePool(
                self._ssl_context, limits.max_keepalive_connections, limits.keepalive_expiry
            )
        return self._wire

    async def handle_async_request(self, request: Any) -> Any:
        url = request.url
        tag = request.extensions.get(POOL_TAG) if self._per_endpoint else None
        key = (url.raw_scheme, url.raw_host, url.port, tag)
        transport = self._transports.get(key)
        if transport is None:
            if self.closed:
                raise RuntimeError("the Multiplexer's shared HTTP client is closed")
            if len(self._transports) >= self._sweep_at:
                await self.sweep()
            transport = self._transports[key] = self._httpx.AsyncHTTPTransport(
                verify=self._ssl_context, limits=self._limits
            )
        return await transport.handle_async_request(request)

    async def sweep(self) -> int:
        """Close and forget the pools with nothing in flight and no live connection.

        Returns how many were dropped.
        """
        stale = [key for key, t in self._transports.items() if _unused(t)]
        closing = [self._transports.pop(key) for key in stale]
        self._sweep_at = max(_SWEEP_MIN, 2 * len(self._transports))
        for transport in closing:
            await transport.aclose()
        return len(closing)

    async def aclose(self) -> None:
        self.closed = True
        if self._wire is not None:
            self._wire.close()
        transports, self._transports = self._transports, {}
        for transport in transports.values():
            await transport.aclose()


def _environment_proxies(httpx: Any, router: _PoolRouter) -> dict[str, Any]:
    """The mounts an HTTP client makes for ``HTTP_PROXY``/``HTTPS_PROXY``/``ALL_PROXY`` (a
    transport through the proxy) and ``NO_PROXY`` (None: the router) when it builds its own
    transport, as the SDK's default client does. Given a transport, httpx and httpx2 skip the
    environment, which would send every endpoint built from a URL around a proxy the user set.
    Proxied requests go through httpx's own proxy transport (on the router's SSL context and
    limits); the relay hop's wire client leaves them to it (``_wire.target_for``)."""
    try:
        from importlib import import_module

        proxies = import_module(f"{httpx.__name__}._utils").get_environment_proxies()
    except (ImportError, AttributeError):  # another layout of the library: as before
        return {}
    return {
        pattern: None
        if url is None
        else httpx.AsyncHTTPTransport(proxy=url, verify=router._ssl_context, limits=router._limits)
        for pattern, url in proxies.items()
    }


def _unused(transport: Any) -> bool:
    pool = getattr(transport, "_pool", None)
    requests = getattr(pool, "_requests", None)
    connections = getattr(pool, "connections", None)
    if requests is None or connections is None:  # another library layout: keep it
        return False
    if requests:
        return False
    return all(c.is_closed() or (c.is_idle() and c.has_expired()) for c in connections)


class ClientFactory:
    """Builds the ``openai.AsyncOpenAI`` clients of one Multiplexer over one shared HTTP client.

    The HTTP client is created on the first :meth:`client` call; ``closers`` (the MuxCore's
    list of async callables run by its ``aclose``) then gets :meth:`aclose`, so the shared
    client is closed exactly once when the Multiplexer closes. ``pool_limits`` is
    ``(max_connections, max_keepalive_connections, keepalive_expiry)`` per connection pool.
    ``pools``: ``"origin"`` (endpoints on one origin share its pool) or ``"endpoint"`` (a
    pool per endpoint); by default ``"origin"`` under httpx2 (openai 3.x) and ``"endpoint"``
    under httpx (openai 2.x), see the module docstring.
    """

    def __init__(
        self,
        closers: list[Callable[[], Awaitable[None]]] | None = None,
        *,
        pool_limits: tuple[int | None, int | None, float | None] = DEFAULT_POOL_LIMITS,
        pools: str | None = None,
    ) -> None:
        if pools not in (None, "origin", "endpoint"):
            raise ValueError(f"pools must be 'origin' or 'endpoint', not {pools!r}")
        self._closers = closers
        self._pool_limits = pool_limits
        self._pools = pools
        self._per_endpoint = False
        self._http: Any = None
        self._router: Any = None
        self._lock = threading.Lock()  # the sync Multiplexer may add endpoints from any thread
        self._tags = itertools.count(1)
        self.clients_built = 0

    @property
    def http_client(self) -> Any:
        """The shared HTTP client (None before the first endpoint or after :meth:`aclose`)."""
        return self._http

    def _open(self) -> Any:
        import openai

        httpx = _httpx()
        with self._lock:
            if self._http is not None:  # another thread opened it meanwhile
                return self._http
            pools = self._pools or ("origin" if httpx.__name__ == "httpx2" else "endpoint")
            max_connections, max_keepalive, expiry = self._pool_limits
            limits = httpx.Limits(
                max_connections=max_connections,
                max_keepalive_connections=max_keepalive,
                keepalive_expiry=expiry,
            )
            router = _router_class(httpx)(httpx, limits, per_endpoint=pools == "endpoint")
            # The SDK's own client class and defaults (timeout, redirects); only the transport
            # is ours, plus the environment's proxies, which a client given a transport skips.
            http = openai.DefaultAsyncHttpxClient(
                transport=router, mounts=_environment_proxies(httpx, router) or None
            )
            self._per_endpoint = pools == "endpoint"
            self._router, self._http = router, http
            if self._closers is not None:
                # first registered, last run: after monitors and refresh managers that may
                # still use endpoint clients while they stop
                self._closers.insert(0, self.aclose)
            return http

    def client(
        self,
        *,
        base_url: str,
        api_key: Any,
        default_headers: Mapping[str, str] | None = None,
        **options: Any,
    ) -> Any:
        """A new ``AsyncOpenAI`` for one endpoint (SDK retries off), over the shared client.

        ``options``: more ``AsyncOpenAI`` keyword arguments (organization, project, timeout).
        """
        http = self._http or self._open()
        self.clients_built += 1
        client = _client_class(self._per_endpoint)(
            base_url=base_url,
            api_key=api_key,
            max_retries=0,
            default_headers=dict(default_headers) if default_headers else None,
            http_client=http,
            **options,
        )
        if self._per_endpoint:
            client._gonka_mux_pool = next(self._tags)
        return client

    async def aclose(self) -> None:
        """Close the shared HTTP client (and every pool). Idempotent.

        Endpoints built before stop working; a later :meth:`client` call opens a new one.
        """
        http, self._http, self._router = self._http, None, None
        if http is not None:
            await http.aclose()

    def __repr__(self) -> str:
        pools = self._router.pools if self._router is not None else 0
        state = "open" if self._http is not None else "idle"
        return f"ClientFactory({state}, clients={self.clients_built}, pools={pools})"
