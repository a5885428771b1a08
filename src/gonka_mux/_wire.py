"""A minimal asyncio HTTP/1.1 client for the relay hop (:class:`~gonka_mux._hop.DirectHop`).

Why: on a 0-latency endpoint, sending a relayed request through httpx2/httpcore2 (auth and
redirect layers, the pool's bookkeeping, anyio streams and cancel scopes, h11's event machine)
and reading its stream back was ~40% of the gateway's CPU per SSE request (py-spy, bench/
gateway.py). Here a request is one ``transport.write`` of bytes whose head was built once per
endpoint, the response is parsed by ``httptools`` (llhttp, in C; the gateway extra installs it)
in an ``asyncio.Protocol``, and body chunks are handed to the reader as the parser gives them.

It serves only what httpx2 would have sent exactly the same way: the Multiplexer's own shared
HTTP client (:class:`~gonka_mux._clients._PoolRouter` as transport, no cap on connections, not
per-endpoint pools), for a URL no proxy is mounted for, with no ``auth``, event hooks or cookies
on the client (:func:`target_for` decides once per endpoint, :meth:`WireTarget.usable` per
call); anything else (tests' custom transports, Gonka's signing ``auth=``, proxies) keeps the
httpx2 path. Its errors are httpx2's exception classes (``ConnectTimeout``, ``ReadTimeout``,
``WriteTimeout``, ``ConnectError``, ``RemoteProtocolError``...), so callers convert them to
openai's errors exactly as they convert httpx2's.

Connections: one keep-alive pool per router, idle connections kept per (scheme, host, port), at
most ``max_keepalive_connections`` each, for ``keepalive_expiry`` seconds (the router's limits).
A connection goes back to the pool only when its response was read to the end and the server
allows keep-alive; a response closed early (a cancelled or abandoned stream) closes its
connection. A pooled connection the server closed is noticed when the loop sees its EOF
(``connection_lost`` drops it) and, for the race with a FIN not seen yet, by polling its socket
before reuse (as httpcore does). Timeouts as httpx2 applies them: ``connect`` for the TCP/TLS
connect, ``read`` for each wait for response bytes, ``write`` for a request the socket does not
take. A connection serves only the event loop that opened it.

What httpx2 would do after a response, the hop (``_hop``) hands back to it: a redirect is sent
again through httpx2 (which follows it, or not, by its rules), a ``Set-Cookie`` goes into the
client's jar (and with cookies in the jar, later calls take httpx2's path, which sends them).
Bodies with a ``Content-Encoding`` are decoded by httpx2's own decoders. On the gateway's
benchmark (2 cores, c=16) this took its CPU per relayed stream from ~1.8 ms to ~0.6 ms.
"""

from __future__ import annotations

import asyncio
import logging
import select
import ssl as _ssl
import time
from collections.abc import AsyncIterator
from typing import Any

import httptools
import httpx2

log = logging.getLogger("gonka_mux.core")

__all__ = ["WirePool", "WireResponse", "WireTarget", "target_for"]

#: Body bytes buffered from one upstream response before its socket stops being read.
_HIGH_WATER = 1 << 20
#: How long :meth:`WireResponse.drain` reads the rest of a finished stream (openai's value).
_DRAIN_TIMEOUT = 0.1

Key = tuple[bytes, str, int]  # (scheme, host, port)


class _Conn(asyncio.Protocol):
    """One HTTP/1.1 connection: the transport, its response parser and the response's state."""

    def __init__(self, pool: WirePool, key: Key, loop: asyncio.AbstractEventLoop) -> None:
        self.pool = pool
        self.key = key
        self.loop = loop  # a connection serves the loop that opened it only
        self.transport: Any = None
        self.fd = -1
        self.parser = httptools.HttpResponseParser(self)
        # chunked and a Content-Length both present: the chunked body is read, as h11 (httpx2)
        # reads it (the transfer coding wins); that connection is not reused (framed_twice)
        self.parser.set_dangerous_leniencies(lenient_chunked_length=True)
        self.lost = False  # the connection is gone (EOF, reset, closed by us)
        self.error: BaseException | None = None  # a parse error, raised to the reader
        self.waiter: asyncio.Future[bool] | None = None
        self.write_paused = False
        self.read_paused = False
        self.active = False  # a request is in flight (bytes while idle are a broken server)
        self.idle_since = 0.0
        self.status = 0
        self.headers: list[tuple[bytes, bytes]] = []
        self.headers_done = False
        self.chunks: list[bytes] = []
        self.buffered = 0
        self.complete = False
        self.keep_alive = False
        self.until_close = True  # no content-length, not chunked: the body ends at EOF
        self.framed_twice = False  # content-length and transfer-encoding: never reused
        self.informational = False

    def reset(self) -> None:
        """Ready for the next request on this connection."""
        self.status = 0
        self.headers = []
        self.headers_done = False
        self.chunks = []
        self.buffered = 0
        self.complete = False
        self.keep_alive = False
        self.until_close = True
        self.framed_twice = False
        self.informational = False

    # -- asyncio.Protocol ---------------------------------------------------------------------
    def connection_made(self, transport: Any) -> None:
        self.transport = transport
        sock = transport.get_extra_info("socket")
        if sock is not None:
            try:
                self.fd = sock.fileno()
            except (OSError, AttributeError, ValueError):  # no descriptor: no poll before reuse
                self.fd = -1

    def data_received(self, data: bytes) -> None:
        if not self.active:  # nothing was asked: a server that talks out of turn is not reused
            self.error = httpx2.RemoteProtocolError("unexpected bytes on an idle connection")
            self.abort()
            return
        try:
            self.parser.feed_data(data)
        except (httptools.HttpParserError, httptools.HttpParserUpgrade) as exc:
            # (an upgrade, 101, is nothing a POST for a completion should get)
            self.error = httpx2.RemoteProtocolError(f"invalid HTTP response: {exc!r}")
            self.abort()
        self._wake()

    def eof_received(self) -> bool | None:
        return None  # close the transport: connection_lost follows

    def connection_lost(self, exc: Exception | None) -> None:
        self.lost = True
        if self.headers_done and not self.complete and self.until_close and exc is None:
            self.complete = True  # a body delimited by the end of the connection
        self.pool.forget(self)
        self._wake()
        if self.write_paused:
            self.resume_writing()

    def pause_writing(self) -> None:
        self.write_paused = True

    def resume_writing(self) -> None:
        self.write_paused = False
        self._wake()

    # -- httptools callbacks ------------------------------------------------------------------
    def on_message_begin(self) -> None:
        if self.complete:  # a second response to one request: not ours to read, nor reuse
            self.error = httpx2.RemoteProtocolError("unexpected bytes after the response")
            self.keep_alive = False

    def on_header(self, name: bytes, value: bytes) -> None:
        if self.complete or self.headers_done:  # trailers of a chunked body are not headers
            return
        self.headers.append((name, value))
        lower = name.lower()
        if lower == b"content-length" or lower == b"transfer-encoding":
            self.framed_twice = not self.until_close
            self.until_close = False

    def on_headers_complete(self) -> None:
        if self.complete:
            return
        status = self.parser.get_status_code()
        if 100 <= status < 200:  # an interim response: the real one follows on this connection
            self.informational = True
            return
        self.status = status
        self.headers_done = True

    def on_body(self, body: bytes) -> None:
        if self.complete:
            return
        self.chunks.append(body)
        self.buffered += len(body)
        if self.buffered > _HIGH_WATER and not self.read_paused:
            self.read_paused = True
            self.transport.pause_reading()

    def on_message_complete(self) -> None:
        if self.complete:
            return
        if self.informational:
            self.headers = []
            self.until_close = True
            self.informational = False
            return
        self.keep_alive = bool(self.parser.should_keep_alive()) and not self.framed_twice
        self.complete = True

    # -- the reader's side --------------------------------------------------------------------
    def _wake(self) -> None:
        waiter = self.waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(True)

    async def _wait(self, timeout: float | None) -> bool:
        """Wait for the next event on this connection; False when ``timeout`` passed first."""
        loop = asyncio.get_running_loop()
        waiter = self.waiter = loop.create_future()
        handle = None if timeout is None else loop.call_later(timeout, _expire, waiter)
        try:
            return await waiter
        finally:
            self.waiter = None
            if handle is not None:
                handle.cancel()

    def _raise_if_broken(self) -> None:
        if self.error is not None:
            raise self.error
        if self.lost:
            if not self.headers_done:
                raise httpx2.RemoteProtocolError("Server disconnected without sending a response.")
            raise httpx2.RemoteProtocolError(
                "peer closed connection without sending complete message body"
            )

    async def send(
        self, data: bytes, write_timeout: float | None, read_timeout: float | None
    ) -> None:
        """Write one request and wait for its response's status line and headers."""
        self.active = True
        self.transport.write(data)
        while self.write_paused and not self.lost:
            if not await self._wait(write_timeout):
                raise httpx2.WriteTimeout("timed out writing the request")
        while not self.headers_done:
            self._raise_if_broken()
            if not await self._wait(read_timeout):
                raise httpx2.ReadTimeout("timed out waiting for the response")

    async def read(self, timeout: float | None) -> bytes | None:
        """The body bytes received since the last call (None at the end of the body)."""
        while True:
            chunks = self.chunks
            if chunks:
                data = chunks[0] if len(chunks) == 1 else b"".join(chunks)
                self.chunks = []
                self.buffered = 0
                if self.read_paused and not self.lost:
                    self.read_paused = False
                    self.transport.resume_reading()
                return data
            if self.complete:
                return None
            self._raise_if_broken()
            if not await self._wait(timeout):
                raise httpx2.ReadTimeout("timed out reading the response")

    def reusable(self, now: float, expiry: float | None, loop: asyncio.AbstractEventLoop) -> bool:
        if self.lost or self.error is not None or self.transport.is_closing():
            return False
        if self.loop is not loop:  # opened on another event loop (one that may be gone)
            return False
        if expiry is not None and now - self.idle_since > expiry:
            return False
        if self.fd >= 0:  # EOF (or anything) waiting on an idle socket: the server closed it
            try:
                return not _readable(self.fd)
            except (OSError, ValueError):
                return False
        return True

    def abort(self) -> None:
        self.lost = True
        if self.transport is not None:
            self.transport.abort()


def _readable(fd: int) -> bool:
    """Whether ``fd`` has something to read (or hung up), without waiting. poll(), where there
    is one: select() refuses descriptors past 1023, which a busy gateway has."""
    if hasattr(select, "poll"):
        poller = select.poll()
        poller.register(fd, select.POLLIN)
        return bool(poller.poll(0))
    readable, _, _ = select.select([fd], [], [], 0)
    return bool(readable)


def _expire(waiter: asyncio.Future[bool]) -> None:
    if not waiter.done():
        waiter.set_result(False)


class WirePool:
    """Keep-alive HTTP/1.1 connections per (scheme, host, port), for one router."""

    def __init__(
        self,
        ssl_context: _ssl.SSLContext | None,
        max_keepalive: int | None,
        keepalive_expiry: float | None,
    ) -> None:
        self._ssl_context = ssl_context
        self._max_keepalive = max_keepalive
        self._expiry = keepalive_expiry
        self._idle: dict[Key, list[_Conn]] = {}
        self._busy: set[_Conn] = set()  # serving a response: closed too when the pool closes
        self._releases = 0
        self.closed = False

    async def acquire(self, key: Key, connect_timeout: float | None) -> _Conn:
        idle = self._idle.get(key)
        if idle:
            now = time.monotonic()
            loop = asyncio.get_running_loop()
            while idle:
                conn = idle.pop()  # the most recently used first: the likeliest to be alive
                if conn.reusable(now, self._expiry, loop):
                    self._busy.add(conn)
                    return conn
                log.debug("not reusing a pooled connection to %s:%d (closed or expired)", *key[1:])
                conn.abort()
        conn = await self._connect(key, connect_timeout)
        self._busy.add(conn)
        return conn

    async def _connect(self, key: Key, timeout: float | None) -> _Conn:
        if self.closed:
            raise RuntimeError("the Multiplexer's shared HTTP client is closed")
        scheme, host, port = key
        context = None
        if scheme == b"https":
            context = self._ssl_context or httpx2.create_ssl_context()
            context.set_alpn_protocols(["http/1.1"])  # as httpcore does (HTTP/2 is off)
        loop = asyncio.get_running_loop()
        connect = loop.create_connection(
            lambda: _Conn(self, key, loop),
            host,
            port,
            ssl=context,
            server_hostname=host if context is not None else None,
        )
        try:
            _, conn = await asyncio.wait_for(connect, timeout)
        except asyncio.TimeoutError as exc:
            raise httpx2.ConnectTimeout(f"timed out connecting to {host}:{port}") from exc
        except OSError as exc:  # ssl.SSLError and socket.gaierror included
            raise httpx2.ConnectError(str(exc) or type(exc).__name__) from exc
        return conn

    def release(self, conn: _Conn) -> None:
        """Back to the pool after a complete response (else closed)."""
        conn.active = False
        self._busy.discard(conn)
        if (
            self.closed
            or conn.lost
            or conn.error is not None
            or not conn.complete
            or not conn.keep_alive
            or conn.chunks
        ):
            conn.abort()
            return
        idle = self._idle.setdefault(conn.key, [])
        if self._max_keepalive is not None and len(idle) >= self._max_keepalive:
            conn.abort()
            return
        conn.reset()
        conn.idle_since = time.monotonic()
        idle.append(conn)
        self._releases += 1
        if self._releases % 4096 == 0:
            self._sweep(conn.idle_since)

    def forget(self, conn: _Conn) -> None:
        """A connection that closed: out of the idle list, if it was there."""
        idle = self._idle.get(conn.key)
        if idle and conn in idle:
            idle.remove(conn)

    def _sweep(self, now: float) -> None:
        """Close the idle connections past their expiry (origins no longer sent to)."""
        if self._expiry is None:
            return
        for key, idle in list(self._idle.items()):
            keep = [c for c in idle if now - c.idle_since <= self._expiry and not c.lost]
            for conn in idle:
                if conn not in keep:
                    conn.abort()
            if keep:
                self._idle[key] = keep
            else:
                del self._idle[key]

    @property
    def idle_connections(self) -> int:
        return sum(len(v) for v in self._idle.values())

    def close(self) -> None:
        self.closed = True
        idle, self._idle = self._idle, {}
        for conns in idle.values():
            for conn in conns:
                conn.abort()
        busy, self._busy = self._busy, set()
        for conn in busy:
            conn.abort()


class WireTarget:
    """One endpoint URL's requests on a :class:`WirePool`: the request head, built once."""

    __slots__ = ("http", "key", "pool", "prefix", "router")

    def __init__(self, http: Any, router: Any, pool: WirePool, key: Key, prefix: bytes) -> None:
        self.http = http
        self.router = router
        self.pool = pool
        self.key = key
        self.prefix = prefix

    def usable(self) -> bool:
        """Still the plain client it was (checked per call: hooks and cookies may be added)."""
        http = self.http
        try:
            hooks = http._event_hooks
            return not (
                http.is_closed
                or self.pool.closed
                or http._transport is not self.router
                or http._auth is not None
                or hooks["request"]
                or hooks["response"]
                or http.cookies
            )
        except (AttributeError, KeyError, TypeError):  # an httpx2 laid out differently
            return False

    async def send(self, content: bytes, extra: bytes, timeout: Any) -> tuple[_Conn, float | None]:
        """Send one POST; the connection, its response headers read, and the read timeout."""
        read = timeout.read
        conn = await self.pool.acquire(self.key, timeout.connect)
        # the headers in httpx2's order: the per-call ones, then the length
        data = b"%s%scontent-length: %d\r\n\r\n%s" % (self.prefix, extra, len(content), content)
        try:
            await conn.send(data, timeout.write, read)
        except BaseException:
            self.pool.release(conn)  # not complete: closed
            raise
        return conn, read


def target_for(http: Any, url: str, headers: list[tuple[str, str]]) -> WireTarget | None:
    """The wire target for POSTs to ``url`` with ``headers`` on ``http`` (the openai client's
    HTTP client), or None when httpx2 must send them (see the module docstring)."""
    from ._clients import _PoolRouter

    router = getattr(http, "_transport", None)
    if not isinstance(http, httpx2.AsyncClient) or not isinstance(router, _PoolRouter):
        return None
    limits = router._limits
    if router._per_endpoint or limits.max_connections is not None:
        return None
    template = http.build_request("POST", url, headers=headers, content=b"")
    request_url = template.url
    if (
        http._transport_for_url(request_url) is not router  # a proxy is mounted for it
        or request_url.raw_scheme not in (b"http", b"https")
        or request_url.userinfo  # httpx2 would add basic auth from the URL
        or http._auth is not None
        or http.cookies
    ):
        return None
    lines = [b"POST %s HTTP/1.1\r\n" % request_url.raw_path]
    for name, value in template.headers.raw:
        if name.lower() not in (b"content-length", b"transfer-encoding"):
            lines.append(b"%s: %s\r\n" % (name, value))
    pool = router.wire_pool()
    scheme = request_url.raw_scheme
    port = request_url.port or (443 if scheme == b"https" else 80)
    key = (scheme, request_url.raw_host.decode("ascii"), port)
    return WireTarget(http, router, pool, key, b"".join(lines))


class WireResponse:
    """A response read from a :class:`_Conn`: what :class:`~gonka_mux._raw_stream.RawSSEStream`
    and the hop use of an httpx2 ``Response`` (status, headers, ``aiter_bytes``, ``aread``,
    ``aclose``), with httpx2's request and response objects built only when asked for (errors).
    """

    http_version = "HTTP/1.1"

    def __init__(
        self,
        conn: _Conn,
        pool: WirePool,
        read_timeout: float | None,
        hop: Any,
        content: bytes,
        timeout: Any,
    ) -> None:
        self.status_code = conn.status
        self.raw_headers = conn.headers
        self._conn: _Conn | None = conn
        self._pool = pool
        self._read_timeout = read_timeout
        self._hop = hop
        self._content = content
        self._timeout = timeout
        self._request: Any = None
        self._headers: Any = None
        self.is_closed = False
        self.is_stream_consumed = False

    def header(self, name: bytes) -> bytes | None:
        """The first value of the header ``name`` (lower case), without building Headers."""
        for key, value in self.raw_headers:
            if key.lower() == name:
                return value
        return None

    @property
    def headers(self) -> httpx2.Headers:
        if self._headers is None:
            self._headers = httpx2.Headers(self.raw_headers)
        return self._headers

    @property
    def request(self) -> httpx2.Request:
        """The httpx2 request httpx2 would have sent (for openai's errors)."""
        if self._request is None:
            self._request = self._hop.build_request(self._content, self._timeout)
        return self._request

    def as_httpx(self, content: bytes) -> httpx2.Response:
        """An httpx2 ``Response`` with this status, these headers and ``content`` (the body as
        it came: httpx2 decodes it), for openai's error and lenient-parsing paths."""
        return httpx2.Response(
            self.status_code,
            headers=self.raw_headers,
            content=content,
            request=self.request,
            extensions={"http_version": b"HTTP/1.1"},
        )

    async def aiter_raw(self) -> AsyncIterator[bytes]:
        conn = self._conn
        if conn is None or self.is_stream_consumed:
            raise httpx2.StreamConsumed() if self.is_stream_consumed else httpx2.StreamClosed()
        self.is_stream_consumed = True
        try:
            while True:
                data = await conn.read(self._read_timeout)
                if data is None:
                    break
                yield data
        finally:
            await self.aclose()

    async def aiter_bytes(self) -> AsyncIterator[bytes]:
        if not self.header(b"content-encoding"):
            async for data in self.aiter_raw():
                yield data
            return
        decoder = self.as_httpx(b"")._get_content_decoder()  # httpx2's own (gzip, br, zstd...)
        async for data in self.aiter_raw():
            for decoded in decoder.decode(data):  # httpx2's decoders yield bounded pieces
                if decoded:
                    yield decoded
        for decoded in decoder.flush():
            if decoded:
                yield decoded

    async def aread_raw(self) -> bytes:
        """The whole body as it came (not decoded)."""
        parts = [data async for data in self.aiter_raw()]
        return parts[0] if len(parts) == 1 else b"".join(parts)

    async def drain(self) -> None:
        """Read the rest of a finished stream (briefly) so its connection is reused, then close,
        as openai's ``drain_response_async`` does."""
        conn = self._conn
        if conn is None:
            return
        try:
            deadline = time.monotonic() + _DRAIN_TIMEOUT
            while not conn.complete or conn.chunks:
                left = deadline - time.monotonic()
                if left <= 0 or await conn.read(left) is None:
                    break
        except httpx2.TransportError:
            pass  # the stream itself is complete: a cleanup failure is no request error
        finally:
            await self.aclose()

    async def aclose(self) -> None:
        conn, self._conn = self._conn, None
        self.is_closed = True
        if conn is not None:
            self._pool.release(conn)  # back to the pool if complete, else closed
