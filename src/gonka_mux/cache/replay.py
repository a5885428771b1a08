"""Cached replies turned back into openai objects: a response, or a stream of real chunks.

A recorded stream is replayed chunk by chunk as it arrived (the same content and tool-call
deltas, the same ids), as ``ChatCompletionChunk`` (``Completion`` for legacy completions)
objects, through an object shaped like :class:`~gonka_mux._stream.AsyncChunkStream`, so the
sync face, the gateway and the sessions feature treat it like any other stream.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from typing import Any

from .._stream import _Partial

__all__ = ["MARKER", "ReplayStream", "build", "cache_status", "mark"]

log = logging.getLogger("gonka_mux.cache")

#: The attribute a reply carries when the cache saw it (``"hit"``: served from the cache,
#: ``"miss"``: fetched and stored). Private to pydantic, so it never reaches ``model_dump``.
MARKER = "_gonka_mux_cache"


def mark(obj: Any, status: str) -> None:
    try:
        object.__setattr__(obj, MARKER, status)
    except (AttributeError, TypeError):  # a reply type without a __dict__: no marker
        log.debug("cannot mark a %s as a cache %s", type(obj).__name__, status)


def cache_status(reply: Any) -> str | None:
    """``"hit"`` when ``reply`` (a response or a stream, either face) came from the response
    cache, ``"miss"`` when it was fetched upstream and stored, else None."""
    status = getattr(reply, MARKER, None)
    if status is None:
        inner = getattr(reply, "_inner", None)  # the sync ChunkStream around an async one
        if inner is not None:
            status = getattr(inner, MARKER, None)
    return status if isinstance(status, str) else None


_TYPES: dict[str, Any] = {}


def _types() -> dict[str, Any]:
    if not _TYPES:
        from openai.types import Completion, CreateEmbeddingResponse
        from openai.types.chat import ChatCompletion, ChatCompletionChunk

        _TYPES.update(
            {
                "chat": ChatCompletion,
                "completions": Completion,
                "embeddings": CreateEmbeddingResponse,
                "chat.chunk": ChatCompletionChunk,
                "completions.chunk": Completion,
            }
        )
    return _TYPES


def build(kind: str, data: bytes | str | dict[str, Any]) -> Any:
    """The openai object of ``kind`` (``"chat"``, ``"chat.chunk"``, ...) from its JSON.

    Validated (fast, in pydantic's core) when it fits openai's types; what does not (a provider's
    odd field) is built the lenient way openai builds responses, so a reply that was served
    once can always be served again."""
    cls = _types()[kind]
    try:
        if isinstance(data, dict):
            return cls.model_validate(data)
        return cls.model_validate_json(data)
    except ValueError:
        import json

        from openai._models import construct_type

        value = data if isinstance(data, dict) else json.loads(data)
        return construct_type(type_=cls, value=value)


class ReplayStream:
    """A recorded stream, replayed; ``make(finish)`` is what the core's served slot takes."""

    def __init__(
        self,
        ctx: Any,
        kind: str,
        chunks: Sequence[dict[str, Any]],
        finish: Callable[[Any], Awaitable[None]],
        *,
        hide_usage: bool,
    ) -> None:
        self._ctx = ctx
        self._kind = kind + ".chunk"
        self._chunks = chunks
        self._finish_hooks = finish
        self._hide_usage = hide_usage
        self._next = 0
        self._done = False
        self.partial = _Partial()
        self.response = None  # no HTTP response: nothing went upstream
        self.endpoint_name = "cache"
        mark(self, "hit")

    def __aiter__(self) -> AsyncIterator[Any]:
        return self

    async def __anext__(self) -> Any:
        while True:
            if self._next >= len(self._chunks):
                await self._finish("ok")
                raise StopAsyncIteration
            chunk = build(self._kind, self._chunks[self._next])
            self._next += 1
            self.partial.add(chunk)
            usage = getattr(chunk, "usage", None)
            if usage is not None:
                self._ctx.usage = None  # the reply's usage, not tokens spent now
                if self._hide_usage and not chunk.choices:
                    continue  # recorded for metering; this caller did not ask for it
            return chunk

    async def _finish(self, status: str) -> None:
        if self._done:
            return
        self._done = True
        ctx = self._ctx
        ctx.stream_message = self.partial.message()
        ctx.finish_reason = self.partial.finish_reason
        ctx.status = status
        await self._finish_hooks(ctx)

    async def close(self) -> None:
        await self._finish("closed")

    aclose = close

    async def __aenter__(self) -> ReplayStream:
        return self

    async def __aexit__(self, *exc_info: Any) -> None:
        await self.close()
