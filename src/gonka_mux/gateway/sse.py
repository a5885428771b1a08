"""Server-sent events for streamed completions, framed as OpenAI frames them.

Each chunk goes out as ``data: <json>\\n\\n`` and the stream ends with ``data: [DONE]\\n\\n``. The
Multiplexer has already received the first chunk before the response starts (so failover could
still happen then); a failure after that cannot change the status code any more, so it is sent as
one ``data: {"error": {...}}`` event before the stream ends, as OpenAI does. The upstream stream is
closed whatever happens, including when the client disconnects.

The gateway asks for streams as a relay (``mux.chat.completions.relay``): their events arrive as the
endpoint's own bytes, one or more events per read, and leave unchanged in one write each; chunk
objects (a locally served stream, or one a per-chunk feature such as the response cache records)
are serialised as above. A relayed stream sends ``[DONE]`` with its last events, and the end of
the body goes out with them.
"""

from __future__ import annotations

import json
import logging
from collections.abc import AsyncIterator
from typing import Any

import anyio
from starlette.responses import StreamingResponse
from starlette.types import Send

from .errors import error_body

__all__ = ["DONE", "encode_chunk", "sse_response"]

log = logging.getLogger("gonka_mux.gateway")

DONE = b"data: [DONE]\n\n"
_HEADERS = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}


def encode_chunk(chunk: Any) -> bytes:
    """One SSE event for an openai chunk object (only the fields the endpoint sent)."""
    return b"data: " + chunk.model_dump_json(exclude_unset=True).encode() + b"\n\n"


async def _events(stream: Any, hide_usage: bool) -> AsyncIterator[bytes]:
    try:
        async for chunk in stream:
            if type(chunk) is bytes:  # SSE events relayed as they came (a relay)
                yield chunk
                continue
            if hide_usage and not chunk.choices and getattr(chunk, "usage", None) is not None:
                continue  # a usage chunk the gateway asked for (metering), not the client
            yield encode_chunk(chunk)
        if not getattr(stream, "sent_done", False):  # a raw relay sent it with its last events
            yield DONE
    except Exception as exc:
        log.info("stream ended with an error after it had started: %s", type(exc).__name__)
        yield b"data: " + json.dumps(error_body(exc), default=str).encode() + b"\n\n"
    finally:
        # anyio cancels level-triggered on client disconnect: shield the close so it runs.
        with anyio.CancelScope(shield=True):
            try:
                await stream.close()
            except Exception:
                log.debug("closing the upstream stream failed", exc_info=True)


class _SSEResponse(StreamingResponse):
    """A StreamingResponse that sends the last events, ``[DONE]`` and the end of the body in
    one write (Starlette sends the end on its own: one more write per stream)."""

    async def stream_response(self, send: Send) -> None:
        await send(
            {"type": "http.response.start", "status": self.status_code, "headers": self.raw_headers}
        )
        events = self.body_iterator.__aiter__()
        while True:
            try:
                chunk: Any = await events.__anext__()  # bytes: _events yields only bytes
            except StopAsyncIteration:
                break
            if chunk.endswith(DONE):
                try:  # [DONE] is last: end the stream (it closes upstream, runs its hooks)
                    extra = await events.__anext__()
                except StopAsyncIteration:
                    await send({"type": "http.response.body", "body": chunk, "more_body": False})
                    return
                chunk += extra  # not expected after [DONE]; relayed all the same
            await send({"type": "http.response.body", "body": chunk, "more_body": True})
        await send({"type": "http.response.body", "body": b"", "more_body": False})


def sse_response(
    stream: Any, *, hide_usage: bool = False, headers: dict[str, str] | None = None
) -> StreamingResponse:
    """A streaming response relaying ``stream`` (an async iterator of openai chunks, or of
    SSE ``bytes`` already framed, from a stream asked for with ``relay(...)``)."""
    return _SSEResponse(
        _events(stream, hide_usage),
        media_type="text/event-stream",
        headers={**_HEADERS, **(headers or {})},
    )
