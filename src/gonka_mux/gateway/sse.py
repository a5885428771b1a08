"""Server-sent events for streamed completions, framed as OpenAI frames them.

Each chunk goes out as ``data: <json>\\n\\n`` and the stream ends with ``data: [DONE]\\n\\n``. The
Multiplexer has already received the first chunk before the response starts (so failover could
still happen then); a failure after that cannot change the status code any more, so it is sent as
one ``data: {"error": {...}}`` event before the stream ends, as OpenAI does. The upstream stream is
closed whatever happens, including when the client disconnects.
"""

from __future__ import annotations

import json
import logging
from collections.abc import AsyncIterator
from typing import Any

import anyio
from starlette.responses import StreamingResponse

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
            if hide_usage and not chunk.choices and getattr(chunk, "usage", None) is not None:
                continue  # a usage chunk the gateway asked for (metering), not the client
            yield encode_chunk(chunk)
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


def sse_response(
    stream: Any, *, hide_usage: bool = False, headers: dict[str, str] | None = None
) -> StreamingResponse:
    """A streaming response relaying ``stream`` (an async iterator of openai chunks)."""
    return StreamingResponse(
        _events(stream, hide_usage),
        media_type="text/event-stream",
        headers={**_HEADERS, **(headers or {})},
    )
