"""Shared HTTP machinery for the endpoints a Multiplexer builds from URLs.

Why: ``openai.AsyncOpenAI(base_url=...)`` without ``http_client`` builds its own HTTP client, and
with it its own SSL context (loading the CA bundle costs ~20 ms of CPU) and its own connection
pool. A Gonka pool has hundreds of participants, so adding 1,000 endpoints took ~20-35 s. Here
each Multiplexer has one :class:`ClientFactory`; the first endpoint added by URL makes it build
ONE HTTP client (the SDK's own ``openai.DefaultAsyncHttpxClient``, so the HTTP library always
matches the SDK major: httpx2 under openai 3.x, httpx under 2.x -- handing openai 3.x an httpx
client triples its CPU per request), ONE SSL context, and a transport that keeps one connection
pool per origin. Each endpoint still gets its own ``openai.AsyncOpenAI`` (its base_url, api_key,
organization, project and default headers are per client and go into each request), built with
``http_client=`` that shared client: ~35 us per endpoint instead of ~20 ms.
``AsyncOpenAI(..., http_client=shared)`` is used rather than ``base.with_options(...)``: both
give the same object (so the same cost per request), construction is a little cheaper (37 vs
41 us under openai 3.x), and nothing is inherited from a template client.

Why per-origin pools: an httpcore pool scans ALL its connections on every request (twice), so
one pool holding 1,000 origins' idle connections costs O(origins) per request. The router below
keeps a dict ``origin -> transport`` (the library's own ``AsyncHTTPTransport``, all sharing the
one SSL context), so a request costs one dict lookup whatever the number of origins.

Limits, per origin: no cap on connections (``max_connections=None``: the Multiplexer enforces
per-endpoint concurrency with ``max_concurrent``; a cap here would queue requests out of its
sight, with the SDK's 600 s pool timeout), at most 100 idle keep-alive connections (the SDK's
default per client, which each endpoint had before), idle ones expire after 5 s. There is no
global cap, as there was none before (one client per endpoint). Pools of origins no longer used
(whose connections are all idle and expired or closed, with nothing in flight) are closed and
dropped in a sweep that runs when the number of origins doubles, so a long-lived Multiplexer
whose endpoints come and go (epoch swaps) does not keep their sockets.

Ownership: the factory owns the shared client and closes it exactly once (:meth:`aclose` is
idempotent and registered as a closer of the MuxCore on first use). The per-endpoint clients
are :class:`SharedHttpAsyncOpenAI`, whose ``close()`` leaves the shared client open: closing or
removing one endpoint never breaks the others. Clients passed in by the user are not made here.
Nothing here logs or shows an API key (the reprs name no base URL or key).
"""

from __future__ import annotations

import sys
import threading
from collections.abc import Awaitable, Callable, Mapping
from typing import Any

__all__ = ["ClientFactory"]

#: Per-origin limits: (max_connections, max_keepalive_connections, keepalive_expiry seconds).
DEFAULT_ORIGIN_LIMITS = (None, 100, 5.0)
#: The sweep of unused origin pools runs when the number of origins reaches this, then twice
#: the number left after each sweep.
_SWEEP_MIN = 256

_classes: dict[str, Any] = {}


def _httpx() -> Any:
    """The HTTP library of the installed openai SDK (httpx2 for 3.x, httpx for 2.x)."""
    import openai

    return sys.modules[type(openai.DEFAULT_CONNECTION_LIMITS).__module__.partition(".")[0]]


def _shared_client_class() -> Any:
    cls = _classes.get("client")
    if cls is None:
        import openai

        class SharedHttpAsyncOpenAI(openai.AsyncOpenAI):
            """An ``AsyncOpenAI`` over a Multiplexer's shared HTTP client.

            ``close()`` leaves the shared client open: the Multiplexer's :class:`ClientFactory`
            closes it, once, when the Multiplexer closes.
            """

            async def close(self) -> None:
                return None

        SharedHttpAsyncOpenAI.__qualname__ = SharedHttpAsyncOpenAI.__name__
        cls = _classes["client"] = SharedHttpAsyncOpenAI
    return cls


def _router_class(httpx: Any) -> Any:
    key = f"router:{httpx.__name__}"
    cls = _classes.get(key)
    if cls is None:
        cls = _classes[key] = type("OriginRouter", (_OriginRouter, httpx.AsyncBaseTransport), {})
    return cls


class _OriginRouter:
    """An async transport with one connection pool (``AsyncHTTPTransport``) per origin.

    Mixed into the SDK's HTTP library's ``AsyncBaseTransport`` by :func:`_router_class`.
    """

    def __init__(self, httpx: Any, limits: Any) -> None:
        self._httpx = httpx
        self._limits = limits
        self._ssl_context = httpx.create_ssl_context()  # verify=True, trust_env=True: the default
        self._transports: dict[tuple[bytes, bytes, int | None], Any] = {}
        self._sweep_at = _SWEEP_MIN
        self.closed = False

    @property
    def origins(self) -> int:
        return len(self._transports)

    async def handle_async_request(self, request: Any) -> Any:
        url = request.url
        origin = (url.raw_scheme, url.raw_host, url.port)
        transport = self._transports.get(origin)
        if transport is None:
            if self.closed:
                raise RuntimeError("the Multiplexer's shared HTTP client is closed")
            if len(self._transports) >= self._sweep_at:
                await self.sweep()
            transport = self._transports[origin] = self._httpx.AsyncHTTPTransport(
                verify=self._ssl_context, limits=self._limits
            )
        return await transport.handle_async_request(request)

    async def sweep(self) -> int:
        """Close and forget the pools of origins with nothing in flight and no live connection.

        Returns how many were dropped.
        """
        stale = [origin for origin, t in self._transports.items() if _unused(t)]
        closing = [self._transports.pop(origin) for origin in stale]
        self._sweep_at = max(_SWEEP_MIN, 2 * len(self._transports))
        for transport in closing:
            await transport.aclose()
        return len(closing)

    async def aclose(self) -> None:
        self.closed = True
        transports, self._transports = self._transports, {}
        for transport in transports.values():
            await transport.aclose()


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
    client is closed exactly once when the Multiplexer closes. ``origin_limits`` is
    ``(max_connections, max_keepalive_connections, keepalive_expiry)`` per origin.
    """

    def __init__(
        self,
        closers: list[Callable[[], Awaitable[None]]] | None = None,
        *,
        origin_limits: tuple[int | None, int | None, float | None] = DEFAULT_ORIGIN_LIMITS,
    ) -> None:
        self._closers = closers
        self._origin_limits = origin_limits
        self._http: Any = None
        self._router: Any = None
        self._lock = threading.Lock()  # the sync Multiplexer may add endpoints from any thread
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
            max_connections, max_keepalive, expiry = self._origin_limits
            limits = httpx.Limits(
                max_connections=max_connections,
                max_keepalive_connections=max_keepalive,
                keepalive_expiry=expiry,
            )
            router = _router_class(httpx)(httpx, limits)
            # The SDK's own client class and defaults (timeout, redirects; proxies from the
            # environment are mounted by the client as usual); only the transport is ours.
            http = openai.DefaultAsyncHttpxClient(transport=router)
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
        return _shared_client_class()(
            base_url=base_url,
            api_key=api_key,
            max_retries=0,
            default_headers=dict(default_headers) if default_headers else None,
            http_client=http,
            **options,
        )

    async def aclose(self) -> None:
        """Close the shared HTTP client (and every origin's pool). Idempotent.

        Endpoints built before stop working; a later :meth:`client` call opens a new one.
        """
        http, self._http, self._router = self._http, None, None
        if http is not None:
            await http.aclose()

    def __repr__(self) -> str:
        origins = self._router.origins if self._router is not None else 0
        state = "open" if self._http is not None else "idle"
        return f"ClientFactory({state}, clients={self.clients_built}, origins={origins})"
