"""A small, fast HTTP/1.1 server core on raw asyncio, for the fake backends in this package.

Why not a framework: the fake servers sit on the other side of every test and benchmark, so they
must cost little CPU (the numbers must measure the client) and they must be able to misbehave in
ways a framework hides: hang forever, drop the socket before the response or half way through it.

The pieces, smallest first:

* :class:`Request` -- what a handler receives: ``method``, ``path``, ``query`` (dict),
  ``headers`` (case-insensitive :class:`Headers`), ``body`` (bytes) and ``.json()``.
* :class:`Response` -- a complete reply sent with ``Content-Length``
  (``Response.json(data)`` for JSON).
* :class:`StreamingResponse` -- an async iterator of ``bytes`` chunks sent with
  ``Transfer-Encoding: chunked``; give it a ``content-length`` header to send the raw bytes instead
  (that is how a handler sends *part* of a fixed-length body).
* :class:`Abort` -- raise it from a handler, or from a streaming iterator, to close the connection
  with no (further) response: a dropped request or a stream cut mid-way.
* :class:`HTTPException` -- raise it to answer with an OpenAI-shaped JSON error.
* :func:`hang` -- await it to never answer. The wait ends (the handler task is cancelled) when the
  client disconnects or the server stops, so a hang never blocks the server or other connections.
* :class:`Router` -- a route table ``(method, exact path or path prefix) -> async handler``; it is
  itself an *app*: ``async (Request) -> Response | StreamingResponse``. Middleware is just an app
  that wraps another.
* :class:`HTTPServer` -- serves one app on a TCP port with keep-alive and pipelining, one request at
  a time per connection, with back-pressure on streamed writes.

Example::

    router = Router()

    @router.route("GET", "/health")
    async def health(request: Request) -> Response:
        return Response.json({"status": "ok"})

    server = HTTPServer(router, default_headers={"x-served-by": "me"})
    await server.start("127.0.0.1", 0)
    ...  # server.port
    await server.stop()
"""

from __future__ import annotations

import asyncio
import contextvars
import json
import logging
from collections.abc import AsyncIterable, Awaitable, Callable, Iterable, Iterator, Mapping
from http import HTTPStatus
from typing import Any, NoReturn
from urllib.parse import parse_qsl, unquote

__all__ = [
    "Abort",
    "App",
    "HTTPException",
    "HTTPServer",
    "Handler",
    "Headers",
    "Request",
    "Response",
    "Router",
    "StreamingResponse",
    "error_body",
    "hang",
    "sse_event",
]

logger = logging.getLogger("gonka_mux.testing")

MAX_HEAD_BYTES = 64 * 1024
DEFAULT_MAX_BODY_BYTES = 64 * 1024 * 1024
_STREAM_HIGH_WATER = 256 * 1024

HeadersLike = Mapping[str, str] | Iterable[tuple[str, str]]


# --------------------------------------------------------------------------- request side


class Headers(Mapping[str, str]):
    """Case-insensitive, read-only view of HTTP headers.

    Repeated headers are joined with ``", "`` as RFC 9110 allows; ``raw`` keeps every line.
    """

    __slots__ = ("_map", "raw")

    def __init__(self, items: HeadersLike | None = None) -> None:
        pairs = list(items.items() if isinstance(items, Mapping) else (items or ()))
        self.raw: list[tuple[str, str]] = [(k.lower(), v) for k, v in pairs]
        self._map: dict[str, str] = {}
        for key, value in self.raw:
            self._map[key] = f"{self._map[key]}, {value}" if key in self._map else value

    @classmethod
    def _from_parsed(cls, mapping: dict[str, str], raw: list[tuple[str, str]]) -> Headers:
        headers = cls.__new__(cls)
        headers._map = mapping
        headers.raw = raw
        return headers

    def __getitem__(self, key: str) -> str:
        return self._map[key.lower()]

    def get(self, key: str, default: Any = None) -> Any:
        return self._map.get(key.lower(), default)

    def __contains__(self, key: object) -> bool:
        return isinstance(key, str) and key.lower() in self._map

    def __iter__(self) -> Iterator[str]:
        return iter(self._map)

    def __len__(self) -> int:
        return len(self._map)

    def __repr__(self) -> str:
        return f"Headers({sorted(self._map)!r})"  # names only: values may hold credentials


class Request:
    """One parsed HTTP request. ``path`` is percent-decoded and has no query string."""

    __slots__ = ("_json", "body", "client", "headers", "http_version", "method", "path", "query")

    def __init__(
        self,
        method: str,
        path: str,
        *,
        query: dict[str, str] | None = None,
        headers: Headers | HeadersLike | None = None,
        body: bytes = b"",
        http_version: str = "HTTP/1.1",
        client: tuple[str, int] | None = None,
    ) -> None:
        self.method = method
        self.path = path
        self.query = query or {}
        self.headers = headers if isinstance(headers, Headers) else Headers(headers)
        self.body = body
        self.http_version = http_version
        self.client = client
        self._json: Any = _UNSET

    def json(self) -> Any:
        """The body decoded as JSON (cached). Raises :class:`HTTPException` (400) when invalid."""
        if self._json is _UNSET:
            try:
                self._json = json.loads(self.body)
            except (ValueError, UnicodeDecodeError) as exc:
                raise HTTPException(
                    400, f"We could not parse the JSON body of your request: {exc}"
                ) from None
        return self._json

    def __repr__(self) -> str:
        return f"<Request {self.method} {self.path} body={len(self.body)}B>"


_UNSET: Any = object()


# --------------------------------------------------------------------------- response side


def _header_list(headers: HeadersLike | None) -> list[tuple[str, str]]:
    if headers is None:
        return []
    if isinstance(headers, Mapping):
        return [(str(k), str(v)) for k, v in headers.items()]
    return [(str(k), str(v)) for k, v in headers]


class Response:
    """A complete response, sent with ``Content-Length``.

    ``body`` may be ``bytes`` (content type defaults to ``application/octet-stream``) or ``str``
    (UTF-8, ``text/plain``). Use :meth:`json` for JSON.
    """

    __slots__ = ("body", "headers", "status")

    def __init__(
        self,
        body: bytes | str = b"",
        status: int = 200,
        headers: HeadersLike | None = None,
        content_type: str | None = None,
    ) -> None:
        if isinstance(body, str):
            body = body.encode()
            content_type = content_type or "text/plain; charset=utf-8"
        self.body: bytes = body
        self.status = status
        self.headers = _header_list(headers)
        if not any(k.lower() == "content-type" for k, _ in self.headers):
            self.headers.append(("content-type", content_type or "application/octet-stream"))

    @classmethod
    def json(cls, data: Any, status: int = 200, headers: HeadersLike | None = None) -> Response:
        """A JSON response (compact encoding)."""
        body = json.dumps(data, separators=(",", ":"), ensure_ascii=False).encode()
        return cls(body, status, headers, "application/json")

    def __repr__(self) -> str:
        return f"<Response {self.status} {len(self.body)}B>"


class StreamingResponse:
    """A response whose body comes from an async iterator of ``bytes`` (or ``str``) chunks.

    Sent with ``Transfer-Encoding: chunked`` unless ``headers`` holds a ``content-length``, in
    which case the chunks are written raw (the handler promises that many bytes; raising
    :class:`Abort` early leaves the client with a truncated body). Raising :class:`Abort` from the
    iterator closes the connection after the chunks already written, without the final chunk.
    """

    __slots__ = ("chunks", "headers", "status")

    def __init__(
        self,
        chunks: AsyncIterable[bytes | str],
        status: int = 200,
        headers: HeadersLike | None = None,
        content_type: str | None = "text/event-stream",
    ) -> None:
        self.chunks = chunks
        self.status = status
        self.headers = _header_list(headers)
        if content_type is not None and not any(
            k.lower() == "content-type" for k, _ in self.headers
        ):
            self.headers.append(("content-type", content_type))
            if content_type.startswith("text/event-stream"):
                self.headers.append(("cache-control", "no-cache"))

    def __repr__(self) -> str:
        return f"<StreamingResponse {self.status}>"


def sse_event(data: Any, *, event: str | None = None) -> bytes:
    """One server-sent event: ``data`` as JSON (``str`` data is sent as is), blank-line ended."""
    payload = data if isinstance(data, str) else json.dumps(data, separators=(",", ":"))
    prefix = f"event: {event}\n" if event else ""
    return f"{prefix}data: {payload}\n\n".encode()


class Abort(Exception):
    """Raise from a handler or a streaming iterator to close the connection at once."""


def error_body(
    message: str, type: str = "invalid_request_error", *, param: str | None = None, code: Any = None
) -> dict[str, Any]:
    """OpenAI's error envelope: ``{"error": {"message", "type", "param", "code"}}``."""
    return {"error": {"message": message, "type": type, "param": param, "code": code}}


_ERROR_TYPES = {
    400: "invalid_request_error",
    401: "invalid_request_error",
    403: "permission_error",
    404: "not_found_error",
    405: "invalid_request_error",
    409: "conflict_error",
    413: "invalid_request_error",
    422: "invalid_request_error",
    429: "rate_limit_error",
}


class HTTPException(Exception):
    """Raise from a handler to answer ``status`` with an OpenAI-shaped JSON error body."""

    def __init__(
        self,
        status: int,
        message: str,
        *,
        type: str | None = None,
        code: Any = None,
        param: str | None = None,
        headers: HeadersLike | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.type = type or _ERROR_TYPES.get(status, "server_error" if status >= 500 else "error")
        self.code = code
        self.param = param
        self.headers = headers

    def to_response(self) -> Response:
        body = error_body(self.message, self.type, param=self.param, code=self.code)
        return Response.json(body, self.status, self.headers)


async def hang() -> NoReturn:
    """Never return. The awaiting handler is cancelled when its client goes or the server stops."""
    await asyncio.get_running_loop().create_future()
    raise AssertionError("unreachable")  # pragma: no cover


Handler = Callable[[Request], Awaitable[Response | StreamingResponse]]
App = Handler


# --------------------------------------------------------------------------- routing


class Router:
    """Route table: ``(method, path)`` exact matches first, then the longest matching prefix.

    A path that exists under another method answers 405; no match answers 404 (both as
    OpenAI-shaped JSON errors), unless ``not_found`` is given.
    """

    def __init__(self, *, not_found: Handler | None = None) -> None:
        self._exact: dict[tuple[str, str], Handler] = {}
        self._prefixes: list[tuple[str, str, Handler]] = []
        self._not_found = not_found

    def add(
        self, methods: str | Iterable[str], path: str, handler: Handler, *, prefix: bool = False
    ) -> None:
        """Register ``handler`` for ``methods`` (``"GET"`` or ``["GET", "POST"]``) on ``path``.

        With ``prefix=True`` every path starting with ``path`` matches.
        """
        if not path.startswith("/"):
            raise ValueError(f"route path must start with '/', got {path!r}")
        for method in [methods] if isinstance(methods, str) else methods:
            if prefix:
                self._prefixes.append((method.upper(), path, handler))
                self._prefixes.sort(key=lambda item: len(item[1]), reverse=True)
            else:
                self._exact[(method.upper(), path)] = handler

    def route(
        self, methods: str | Iterable[str], path: str, *, prefix: bool = False
    ) -> Callable[[Handler], Handler]:
        """Decorator form of :meth:`add`."""

        def decorate(handler: Handler) -> Handler:
            self.add(methods, path, handler, prefix=prefix)
            return handler

        return decorate

    def match(self, method: str, path: str) -> Handler | None:
        handler = self._exact.get((method, path))
        if handler is not None:
            return handler
        for route_method, route_path, route_handler in self._prefixes:
            if route_method == method and path.startswith(route_path):
                return route_handler
        return None

    def _path_known(self, path: str) -> bool:
        return any(p == path for _, p in self._exact) or any(
            path.startswith(p) for _, p, _ in self._prefixes
        )

    async def __call__(self, request: Request) -> Response | StreamingResponse:
        handler = self.match(request.method, request.path)
        if handler is not None:
            return await handler(request)
        if self._not_found is not None:
            return await self._not_found(request)
        if self._path_known(request.path):
            raise HTTPException(405, f"Method {request.method} not allowed on {request.path}")
        raise HTTPException(404, f"Unknown request URL: {request.method} {request.path}")


# --------------------------------------------------------------------------- the server

_current_connection: contextvars.ContextVar[_Connection | None] = contextvars.ContextVar(
    "gonka_mux_testing_connection", default=None
)
_REASONS: dict[int, bytes] = {}


def _reason(status: int) -> bytes:
    reason = _REASONS.get(status)
    if reason is None:
        try:
            reason = HTTPStatus(status).phrase.encode()
        except ValueError:
            reason = b"Unknown"
        _REASONS[status] = reason
    return reason


class _ProtocolError(Exception):
    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


class _Connection(asyncio.Protocol):
    """One client connection: parses requests, runs the app, writes responses (one at a time)."""

    def __init__(self, server: HTTPServer) -> None:
        self._server = server
        self._loop = server.loop
        self._transport: asyncio.Transport | None = None
        self._buffer = bytearray()
        self._head: tuple[str, str, str, Headers, int] | None = None
        self._task: asyncio.Task[None] | None = None
        self._closed = False
        self._paused = False
        self._drain_waiters: list[asyncio.Future[None]] = []
        self._peer: tuple[str, int] | None = None

    # asyncio callbacks ------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self._transport = transport
        peer = transport.get_extra_info("peername")
        self._peer = (peer[0], peer[1]) if isinstance(peer, tuple) else None
        self._server._connections.add(self)
        if self._server.refusing:
            self.close()

    def data_received(self, data: bytes) -> None:
        self._buffer += data
        if self._task is None and not self._closed:
            self._next_request()

    def eof_received(self) -> bool:
        return False  # let the transport close; connection_lost then cancels any handler

    def connection_lost(self, exc: Exception | None) -> None:
        self._closed = True
        self._server._connections.discard(self)
        if self._task is not None and not self._task.done():
            self._task.cancel()
        self._wake_writers()

    def pause_writing(self) -> None:
        self._paused = True

    def resume_writing(self) -> None:
        self._paused = False
        self._wake_writers()

    # helpers ----------------------------------------------------------------------------

    def _wake_writers(self) -> None:
        for waiter in self._drain_waiters:
            if not waiter.done():
                waiter.set_result(None)
        self._drain_waiters.clear()

    async def _drain(self) -> None:
        if self._closed:
            raise ConnectionResetError("client disconnected")
        if self._paused:
            waiter = self._loop.create_future()
            self._drain_waiters.append(waiter)
            await waiter
            if self._closed:
                raise ConnectionResetError("client disconnected")

    def close(self) -> None:
        """Close after flushing what was already written (FIN, not RST)."""
        if not self._closed and self._transport is not None:
            self._closed = True
            self._transport.close()

    # parsing ----------------------------------------------------------------------------

    def _next_request(self) -> None:
        try:
            parsed = self._parse()
        except _ProtocolError as exc:
            self._write_response(HTTPException(exc.status, str(exc)).to_response(), False)
            self.close()
            return
        if parsed is None:
            return
        request, keep_alive = parsed
        self._task = self._loop.create_task(self._serve(request, keep_alive))

    def _parse(self) -> tuple[Request, bool] | None:
        buf = self._buffer
        if self._head is None:
            while buf[:2] == b"\r\n":  # RFC 9112 2.2: ignore blank lines before a request
                del buf[:2]
            end = buf.find(b"\r\n\r\n")
            if end < 0:
                if len(buf) > MAX_HEAD_BYTES:
                    raise _ProtocolError(431, "request head too large")
                return None
            lines = buf[:end].decode("latin-1").split("\r\n")
            parts = lines[0].split(" ")
            if len(parts) != 3:
                raise _ProtocolError(400, "malformed request line")
            method, target, version = parts
            if version != "HTTP/1.1" and version != "HTTP/1.0":
                raise _ProtocolError(505, f"unsupported HTTP version {version}")
            mapping: dict[str, str] = {}
            raw: list[tuple[str, str]] = []
            for line in lines[1:]:
                name, sep, value = line.partition(":")
                if not sep:
                    raise _ProtocolError(400, "malformed header line")
                name = name.strip().lower()
                value = value.strip()
                raw.append((name, value))
                mapping[name] = f"{mapping[name]}, {value}" if name in mapping else value
            self._head = (method, target, version, Headers._from_parsed(mapping, raw), end + 4)
            head_is_new = True
        else:
            head_is_new = False

        method, target, version, headers, body_start = self._head
        body_and_end = self._read_body(headers, body_start)
        if body_and_end is None:
            if head_is_new and headers.get("expect", "").lower() == "100-continue":
                assert self._transport is not None
                self._transport.write(b"HTTP/1.1 100 Continue\r\n\r\n")  # curl waits for it
            return None
        body, consumed = body_and_end
        del buf[:consumed]
        self._head = None

        path, _, query_string = target.partition("?")
        if "%" in path:
            path = unquote(path)
        query = dict(parse_qsl(query_string, keep_blank_values=True)) if query_string else {}
        connection = headers.get("connection", "").lower()
        if version == "HTTP/1.1":
            keep_alive = "close" not in connection
        else:
            keep_alive = "keep-alive" in connection
        request = Request(
            method,
            path,
            query=query,
            headers=headers,
            body=body,
            http_version=version,
            client=self._peer,
        )
        return request, keep_alive

    def _read_body(self, headers: Headers, start: int) -> tuple[bytes, int] | None:
        buf = self._buffer
        limit = self._server.max_body_size
        transfer_encoding = headers.get("transfer-encoding")
        if transfer_encoding is not None:
            if transfer_encoding.lower() != "chunked":
                raise _ProtocolError(501, f"unsupported transfer-encoding {transfer_encoding}")
            return self._read_chunked(start, limit)
        length_text = headers.get("content-length")
        if not length_text:
            return b"", start
        try:
            length = int(length_text)
        except ValueError:
            raise _ProtocolError(400, "invalid content-length") from None
        if length < 0:
            raise _ProtocolError(400, "invalid content-length")
        if length > limit:
            raise _ProtocolError(413, f"request body larger than {limit} bytes")
        end = start + length
        if len(buf) < end:
            return None
        return bytes(buf[start:end]), end

    def _read_chunked(self, pos: int, limit: int) -> tuple[bytes, int] | None:
        buf = self._buffer
        parts: list[bytes] = []
        total = 0
        while True:
            line_end = buf.find(b"\r\n", pos)
            if line_end < 0:
                return None
            size_text = bytes(buf[pos:line_end]).split(b";", 1)[0].strip()
            try:
                size = int(size_text, 16)
            except ValueError:
                raise _ProtocolError(400, "invalid chunk size") from None
            pos = line_end + 2
            if size == 0:
                # skip optional trailers up to the blank line that ends the message
                while True:
                    line_end = buf.find(b"\r\n", pos)
                    if line_end < 0:
                        return None
                    blank = line_end == pos
                    pos = line_end + 2
                    if blank:
                        return b"".join(parts), pos
            total += size
            if total > limit:
                raise _ProtocolError(413, f"request body larger than {limit} bytes")
            if len(buf) < pos + size + 2:
                return None
            parts.append(bytes(buf[pos : pos + size]))
            pos += size + 2

    # responding -------------------------------------------------------------------------

    def _head_bytes(
        self, status: int, headers: list[tuple[str, str]], keep_alive: bool, framing: str
    ) -> bytes:
        lines = [f"{k}: {v}\r\n" for k, v in headers]
        if framing:
            lines.append(framing)
        if not keep_alive:
            lines.append("connection: close\r\n")
        return (
            b"HTTP/1.1 %d %s\r\n" % (status, _reason(status))
            + self._server._default_header_bytes
            + "".join(lines).encode("latin-1")
            + b"\r\n"
        )

    def _write_response(self, response: Response, keep_alive: bool) -> None:
        if self._closed or self._transport is None:
            return
        status = response.status
        no_body = status < 200 or status in (204, 304)
        framing = "" if no_body else f"content-length: {len(response.body)}\r\n"
        head = self._head_bytes(status, response.headers, keep_alive, framing)
        self._transport.write(head if no_body else head + response.body)

    async def _write_stream(self, response: StreamingResponse, keep_alive: bool) -> None:
        assert self._transport is not None
        raw = any(k.lower() == "content-length" for k, _ in response.headers)
        framing = "" if raw else "transfer-encoding: chunked\r\n"
        transport = self._transport
        transport.write(self._head_bytes(response.status, response.headers, keep_alive, framing))
        iterator = response.chunks.__aiter__()
        try:
            async for chunk in iterator:
                if isinstance(chunk, str):
                    chunk = chunk.encode()
                if not chunk:
                    continue  # an empty chunk would end a chunked body early
                if self._closed:
                    raise ConnectionResetError("client disconnected")
                if raw:
                    transport.write(chunk)
                else:
                    transport.write(b"%x\r\n%s\r\n" % (len(chunk), chunk))
                if transport.get_write_buffer_size() > _STREAM_HIGH_WATER or self._paused:
                    await self._drain()
        finally:
            aclose = getattr(iterator, "aclose", None)
            if aclose is not None:
                await aclose()
        if not raw and not self._closed:
            transport.write(b"0\r\n\r\n")

    async def _serve(self, request: Request, keep_alive: bool) -> None:
        _current_connection.set(self)
        server = self._server
        server._requests_served += 1
        try:
            try:
                response = await server.app(request)
                if not isinstance(response, (Response, StreamingResponse)):
                    raise TypeError(
                        f"handler for {request.method} {request.path} returned "
                        f"{type(response).__name__}, expected Response or StreamingResponse"
                    )
            except HTTPException as exc:
                response = exc.to_response()
            except (Abort, ConnectionError):
                self.close()
                return
            except Exception as exc:
                logger.exception("handler for %s %s failed", request.method, request.path)
                response = HTTPException(
                    500, f"fake server handler failed: {type(exc).__name__}: {exc}"
                ).to_response()
            if isinstance(response, Response):
                self._write_response(response, keep_alive)
            else:
                try:
                    await self._write_stream(response, keep_alive)
                except (Abort, ConnectionError):
                    self.close()
                    return
                except Exception:
                    # headers are out: the only honest signal left is a cut connection
                    logger.exception("stream for %s %s failed", request.method, request.path)
                    self.close()
                    return
        finally:
            self._task = None
        if not keep_alive or server.refusing:
            self.close()
        elif self._buffer and not self._closed:
            self._next_request()


class HTTPServer:
    """Serves one app (``async (Request) -> Response | StreamingResponse``) over HTTP/1.1.

    ``default_headers`` are added to every response (for example a server name).
    ``refusing = True`` makes the server close every new connection at once and every connection
    when its current request ends; :meth:`close_connections` closes the ones open now.
    """

    def __init__(
        self,
        app: App,
        *,
        default_headers: HeadersLike | None = None,
        max_body_size: int = DEFAULT_MAX_BODY_BYTES,
    ) -> None:
        self.app = app
        self.max_body_size = max_body_size
        self.refusing = False
        self._default_header_bytes = b""
        self.default_headers = default_headers
        self._server: asyncio.base_events.Server | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._connections: set[_Connection] = set()
        self._requests_served = 0
        self.host = ""
        self.port = 0

    @property
    def default_headers(self) -> list[tuple[str, str]]:
        """Headers added to every response (settable at any time)."""
        return list(self._default_headers)

    @default_headers.setter
    def default_headers(self, headers: HeadersLike | None) -> None:
        self._default_headers = _header_list(headers)
        self._default_header_bytes = b"".join(
            f"{k}: {v}\r\n".encode("latin-1") for k, v in self._default_headers
        )

    @property
    def loop(self) -> asyncio.AbstractEventLoop:
        """The loop the server runs on (set by :meth:`start`)."""
        if self._loop is None:
            raise RuntimeError("HTTPServer is not started")
        return self._loop

    @property
    def started(self) -> bool:
        return self._server is not None

    @property
    def connection_count(self) -> int:
        """Client connections open now."""
        return len(self._connections)

    @property
    def requests_served(self) -> int:
        """How many requests reached the app since start (a cheap counter for benchmarks)."""
        return self._requests_served

    async def start(self, host: str = "127.0.0.1", port: int = 0) -> None:
        """Bind and listen on the running loop. ``port=0`` picks a free port (see ``.port``)."""
        if self._server is not None:
            raise RuntimeError("HTTPServer is already started")
        self._loop = asyncio.get_running_loop()
        self._server = await self._loop.create_server(
            lambda: _Connection(self), host, port, reuse_address=True, backlog=1024
        )
        sockname = self._server.sockets[0].getsockname()
        self.host, self.port = sockname[0], sockname[1]

    def close_connections(self) -> int:
        """Close every open connection except the one serving the caller (if any).

        Handlers running on the closed connections are cancelled. Returns how many were closed.
        """
        current = _current_connection.get()
        closed = 0
        for connection in list(self._connections):
            if connection is not current:
                connection.close()
                closed += 1
        return closed

    async def stop(self) -> None:
        """Stop listening, close every connection and wait for their handlers to finish."""
        server, self._server = self._server, None
        if server is None:
            return
        server.close()
        tasks = [c._task for c in self._connections if c._task is not None]
        for connection in list(self._connections):
            connection.close()
        for task in tasks:
            task.cancel()
        if tasks:
            await asyncio.gather(*tasks, return_exceptions=True)
        await server.wait_closed()
