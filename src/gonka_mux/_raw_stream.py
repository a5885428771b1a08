"""An upstream SSE stream read as bytes, for callers that relay it as SSE (the gateway).

openai's ``AsyncStream`` builds one pydantic object per chunk, which the gateway then serialises
back to the same JSON text: most of an SSE relay's CPU. This stream class (given to openai's
``client.post(..., stream_cls=...)``, so the request, its errors and timeouts are openai's as
before) yields, per network read, the complete events that read finished: ``(data, parsed)``
pairs, ``data`` the event's JSON text as it came and ``parsed`` its ``json.loads``. The caller
(``AsyncChunkStream`` in raw mode) still sees every chunk's content, tool calls, finish reasons
and usage (sessions, metering and limits need them), and relays the bytes unchanged; events that
arrived together leave together, in one write. The read that carried ``[DONE]`` ends with
:data:`DONE_EVENT`, so the relay can send ``[DONE]`` in that same write.

As openai's stream does: an event whose JSON carries ``error`` raises ``APIError`` (after the
events before it were handed on), ``[DONE]`` ends the stream (the rest of an HTTP/1.1 body is
drained so the connection is reused), transport timeouts and errors become openai's
``APITimeoutError`` / ``APIConnectionError``, and the response is closed however it ends.
Events that carry no data (comments, keep-alives) are dropped, as the object path drops them.

The relay hop (``_hop``) may hand it a ``_wire.WireResponse`` instead of an httpx2 response (the
same ``aiter_bytes``/``aclose``/``request``, httpx2's exception classes); after ``[DONE]`` its own
``drain`` replaces openai's (no anyio cancel scopes for a body that is usually already read).
"""

from __future__ import annotations

import json
import logging
from collections.abc import AsyncIterator
from typing import Any

from openai import APIConnectionError, APIError, APITimeoutError, AsyncStream

try:  # openai 3.x runs on httpx2 and wraps transport errors itself
    from openai._httpx2 import request_exceptions, timeout_exceptions
except ImportError:  # pragma: no cover - openai 2.x: httpx's own errors pass through as before

    def timeout_exceptions() -> tuple[type[BaseException], ...]:  # type: ignore[misc]
        return ()

    def request_exceptions() -> tuple[type[BaseException], ...]:  # type: ignore[misc]
        return ()


try:
    from openai._streaming_cleanup import drain_response_async
except ImportError:  # pragma: no cover - openai 2.x reads the body to its end itself

    async def drain_response_async(response: Any) -> None:  # type: ignore[misc]
        async for _ in response.aiter_bytes():
            pass


__all__ = ["DONE_EVENT", "RawEvents", "RawSSEStream", "event_data"]

log = logging.getLogger("gonka_mux.stream")

#: What one step of :class:`RawSSEStream` yields: the events one read completed.
RawEvents = list[tuple[bytes, Any]]
#: The last item of the events of the read that carried ``[DONE]`` (the stream ends after).
DONE_EVENT: tuple[bytes, Any] = (b"[DONE]", None)


def event_data(raw: bytes) -> bytes | None:
    """The ``data`` of one SSE event (its lines joined by newlines), or None without any."""
    if raw.startswith(b"data: ") and b"\n" not in raw:
        return raw[6:]  # the usual shape: one data line
    lines: list[bytes] = []
    for line in raw.split(b"\n"):
        if not line or line.startswith(b":"):
            continue  # a comment (keep-alive)
        field, _, value = line.partition(b":")
        if field == b"data":
            lines.append(value[1:] if value.startswith(b" ") else value)
    return b"\n".join(lines) if lines else None


class RawSSEStream(AsyncStream[Any]):
    """openai's AsyncStream, yielding :data:`RawEvents` instead of chunk objects."""

    async def __stream__(self) -> AsyncIterator[Any]:  # type: ignore[override]
        response = self.response
        try:
            async for events in self._events():
                yield events
        finally:
            await response.aclose()

    async def _reads(self) -> AsyncIterator[bytes]:
        try:
            async for data in self.response.aiter_bytes():
                yield data
        except timeout_exceptions() as err:
            raise APITimeoutError(request=self.response.request) from err
        except request_exceptions() as err:
            raise APIConnectionError(request=self.response.request) from err

    async def _events(self) -> AsyncIterator[RawEvents]:
        buffer = b""
        async for data in self._reads():
            buffer = buffer + data if buffer else data
            if b"\r" in buffer:
                buffer = buffer.replace(b"\r\n", b"\n")
            end = buffer.rfind(b"\n\n")
            if end < 0:
                continue  # no event complete yet
            complete, buffer = buffer[:end], buffer[end + 2 :]
            events: RawEvents = []
            for raw in complete.split(b"\n\n"):
                payload = event_data(raw.strip(b"\n"))
                if payload is None:
                    continue
                if payload.startswith(b"[DONE]"):
                    events.append(DONE_EVENT)
                    yield events
                    if self.response.http_version == "HTTP/1.1":
                        drain = getattr(self.response, "drain", None)  # _wire's own, lighter
                        try:  # for the connection's reuse; the stream itself is complete
                            if drain is not None:
                                await drain()
                            else:
                                await drain_response_async(self.response)
                        except Exception:
                            log.debug("draining a finished stream failed", exc_info=True)
                    return
                parsed = json.loads(payload)
                if isinstance(parsed, dict) and parsed.get("error"):
                    if events:
                        yield events
                    raise self._error(parsed["error"])
                events.append((payload, parsed))
            if events:
                yield events
        # the body ended without [DONE]: an event cut short is dropped, as SSE says

    def _error(self, error: Any) -> APIError:
        message = error.get("message") if isinstance(error, dict) else None
        if not message or not isinstance(message, str):
            message = "An error occurred during streaming"
        return APIError(message=message, request=self.response.request, body=error)
