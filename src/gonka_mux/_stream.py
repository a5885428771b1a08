"""Streams returned by ``create(stream=True)``, shaped like openai's Stream / AsyncStream.

The first chunk was already received inside the routing attempt (so failover could happen before
the caller saw output). After it, a broken stream raises ``StreamInterrupted`` carrying the partial
output, and is never retried. A stream that ends without its final chunk (no ``finish_reason``
for a choice it started) is broken too: it raises instead of passing for a complete answer. The
caller's deadline bounds the whole stream. Both stream classes are iterators and context
managers and close the upstream connection when closed or exhausted.
"""

from __future__ import annotations

import asyncio
import logging
import math
from collections.abc import AsyncIterator, Iterator
from typing import TYPE_CHECKING, Any

from ._core import STREAM_TAP, _timeout_at
from .errors import StreamInterrupted

if TYPE_CHECKING:
    from ._core import MuxCore, RequestContext, _Success
    from ._loop_thread import Portal

log = logging.getLogger("gonka_mux.stream")

__all__ = ["AsyncChunkStream", "ChunkStream"]


class _Partial:
    """Assembles the streamed output (for sessions, metering and StreamInterrupted)."""

    __slots__ = (
        "content",
        "finish_reason",
        "finished",
        "reasoning",
        "role",
        "started",
        "tool_calls",
    )

    def __init__(self) -> None:
        self.content: list[str] = []
        self.reasoning: list[str] = []
        self.tool_calls: dict[int, dict[str, Any]] = {}
        self.finish_reason: str | None = None
        self.role = "assistant"
        self.started: set[int] = set()  # choice indexes seen
        self.finished: set[int] = set()  # choice indexes that sent their finish_reason

    @property
    def complete(self) -> bool:
        """Every choice the stream started has ended with a finish_reason."""
        return bool(self.started) and self.started <= self.finished

    def add(self, chunk: Any) -> None:
        choices = getattr(chunk, "choices", None)
        if not choices:
            return
        for c in choices:
            self.started.add(c.index)
            if c.finish_reason:
                self.finished.add(c.index)
        choice = choices[0]
        if choice.index != 0:  # n > 1: the session keeps the first choice
            return
        delta = getattr(choice, "delta", None)
        if delta is None:  # a legacy completions chunk (CompletionChoice) carries .text
            text = getattr(choice, "text", None)
            if text:
                self.content.append(text)
            if choice.finish_reason:
                self.finish_reason = choice.finish_reason
            return
        text = getattr(delta, "content", None)
        if text:
            self.content.append(text)
        extra = delta.model_extra
        if extra:
            r = extra.get("reasoning") or extra.get("reasoning_content")
            if r:
                self.reasoning.append(r)
        calls = delta.tool_calls
        if calls:
            for call in calls:
                slot = self.tool_calls.setdefault(
                    call.index,
                    {"id": None, "type": "function", "function": {"name": "", "arguments": ""}},
                )
                if call.id:
                    slot["id"] = call.id
                fn = call.function
                if fn is not None:
                    if fn.name:
                        slot["function"]["name"] += fn.name
                    if fn.arguments:
                        slot["function"]["arguments"] += fn.arguments
        if choice.finish_reason:
            self.finish_reason = choice.finish_reason

    def add_event(self, event: dict[str, Any]) -> None:
        """:meth:`add` for a chunk as parsed JSON (raw SSE relay)."""
        choices = event.get("choices")
        if not choices:
            return
        for c in choices:
            self.started.add(c.get("index", 0))
            if c.get("finish_reason"):
                self.finished.add(c.get("index", 0))
        choice = choices[0]
        if choice.get("index", 0) != 0:  # n > 1: the session keeps the first choice
            return
        finish = choice.get("finish_reason")
        if finish:
            self.finish_reason = finish
        delta = choice.get("delta")
        if delta is None:  # a legacy completions chunk carries .text
            text = choice.get("text")
            if text and isinstance(text, str):
                self.content.append(text)
            return
        text = delta.get("content")
        if text and isinstance(text, str):
            self.content.append(text)
        r = delta.get("reasoning") or delta.get("reasoning_content")
        if r and isinstance(r, str):
            self.reasoning.append(r)
        calls = delta.get("tool_calls")
        if calls:
            for call in calls:
                slot = self.tool_calls.setdefault(
                    call.get("index", 0),
                    {"id": None, "type": "function", "function": {"name": "", "arguments": ""}},
                )
                if call.get("id"):
                    slot["id"] = call["id"]
                fn = call.get("function")
                if fn:
                    if isinstance(fn.get("name"), str):
                        slot["function"]["name"] += fn["name"]
                    if isinstance(fn.get("arguments"), str):
                        slot["function"]["arguments"] += fn["arguments"]

    def as_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "content": "".join(self.content),
            "reasoning": "".join(self.reasoning) or None,
            "tool_calls": [self.tool_calls[i] for i in sorted(self.tool_calls)] or None,
            "finish_reason": self.finish_reason,
        }
        return out

    def message(self) -> dict[str, Any]:
        """The assistant message the stream produced, in OpenAI request form."""
        d = self.as_dict()
        msg: dict[str, Any] = {"role": "assistant", "content": d["content"] or None}
        if d["tool_calls"]:
            msg["tool_calls"] = d["tool_calls"]
        if d["reasoning"]:
            msg["reasoning"] = d["reasoning"]
        return msg


class AsyncChunkStream:
    """Async iterator of ``ChatCompletionChunk`` (or ``Completion`` for legacy completions)."""

    def __init__(self, core: MuxCore, ctx: RequestContext, success: _Success) -> None:
        self._core = core
        self._ctx = ctx
        self._endpoint = success.endpoint
        self._upstream = success.result
        self._first: Any = success.first
        self._done = False
        self._hide_usage = ctx.hide_usage_chunk
        self._deadline_at = ctx.deadline_at
        self.partial = _Partial()
        self._tap = ctx.slots.get(STREAM_TAP) if ctx.slots else None  # the response cache
        # raw SSE relay: ``data: [DONE]`` was relayed with the last events (the stream is
        # complete; its next step ends it)
        self.sent_done = False
        self.response = getattr(self._upstream, "response", None)
        self.endpoint_name = success.endpoint.name

    def __aiter__(self) -> AsyncIterator[Any]:
        return self

    async def __anext__(self) -> Any:
        while True:
            first = self._first
            if first is not None:
                self._first = None
                chunk = first
            else:
                if self._done:
                    raise StopAsyncIteration
                try:
                    if self._deadline_at == math.inf:
                        chunk = await self._upstream.__anext__()
                    else:
                        async with _timeout_at(self._deadline_at):
                            chunk = await self._upstream.__anext__()
                except StopAsyncIteration:
                    if not self.partial.complete:
                        # ended cleanly but early: a truncated answer, not a complete one
                        exc = _Truncated("the stream ended without its final chunk")
                        await self._finish(exc)
                        raise StreamInterrupted(
                            self._endpoint.name, str(exc), self.partial.as_dict()
                        ) from None
                    await self._finish(None)
                    raise
                except asyncio.CancelledError:
                    await self._finish(None, status="cancelled")
                    raise
                except TimeoutError:
                    deadline = self._deadline_at - self._ctx.t_start
                    reason = f"the request's deadline of {deadline:g} s passed"
                    await self._finish(None, status="interrupted", reason=reason)
                    raise StreamInterrupted(
                        self._endpoint.name, reason, self.partial.as_dict()
                    ) from None
                except Exception as exc:
                    await self._finish(exc)
                    raise StreamInterrupted(
                        self._endpoint.name, _reason(exc), self.partial.as_dict()
                    ) from exc
            if type(chunk) is list:  # raw mode: the events of one read (see _raw_stream)
                try:
                    relayed = self._relay(chunk)
                except Exception as exc:  # not a JSON object: a broken stream
                    await self._finish(exc)
                    raise StreamInterrupted(
                        self._endpoint.name, _reason(exc), self.partial.as_dict()
                    ) from exc
                if relayed:
                    return relayed
                continue  # only a hidden usage chunk
            self.partial.add(chunk)
            if self._tap is not None:
                self._tap.append(chunk)
            usage = getattr(chunk, "usage", None)
            if usage is not None:
                self._ctx.usage = usage
                if self._hide_usage and not chunk.choices:
                    continue  # a usage chunk the caller did not ask for (metering asked)
            return chunk

    def _relay(self, events: list[tuple[bytes, Any]]) -> bytes:
        """The SSE bytes to relay for raw events, noting what the objects path notes."""
        out: list[bytes] = []
        for data, event in events:
            if event is None and data == b"[DONE]":  # the endpoint's end of stream
                if self.partial.complete:  # else the next step raises: truncated
                    out.append(b"data: [DONE]\n\n")
                    self.sent_done = True
                continue
            if not isinstance(event, dict):
                raise ValueError(f"a stream event is not a JSON object: {data[:80]!r}")
            self.partial.add_event(event)
            usage = event.get("usage")
            if usage is not None:
                self._ctx.usage = self._core.types().usage(usage)
                if self._hide_usage and not event.get("choices"):
                    continue  # a usage chunk the caller did not ask for (metering asked)
            out.append(b"data: " + data + b"\n\n")
        return b"".join(out)

    async def _finish(
        self, exc: BaseException | None, status: str | None = None, reason: str | None = None
    ) -> None:
        if self._done:
            return
        self._done = True
        ctx = self._ctx
        ctx.stream_message = self.partial.message()
        ctx.finish_reason = self.partial.finish_reason
        if exc is not None or reason is not None:
            ctx.status = "interrupted"
            why = reason if reason is not None else _reason(exc)  # type: ignore[arg-type]
            ctx.error = StreamInterrupted(self._endpoint.name, why, self.partial.as_dict())
        else:
            ctx.status = status or ("ok" if self.partial.complete else "closed")
        self._core.release_stream(self._endpoint, exc)
        try:
            await self._core.finish_stream(ctx)
        finally:
            if exc is not None or status is not None or not self.partial.complete:
                try:
                    await self._upstream.close()
                except Exception:
                    log.debug("closing upstream stream failed", exc_info=True)

    async def close(self) -> None:
        """Stop reading and close the upstream connection."""
        if not self._done:
            await self._finish(None, status="closed")
        try:
            await self._upstream.close()
        except Exception:
            log.debug("closing upstream stream failed", exc_info=True)

    aclose = close

    async def __aenter__(self) -> AsyncChunkStream:
        return self

    async def __aexit__(self, *exc_info: Any) -> None:
        await self.close()

    def __del__(self) -> None:
        if not getattr(self, "_done", True):
            # Never read to the end nor closed: give the slot back so the endpoint is not
            # counted busy forever. The connection itself is closed by the SDK's finalizer.
            self._done = True
            try:
                self._core.release_stream(self._endpoint, None)
            except Exception:
                pass


class ChunkStream:
    """Sync face of :class:`AsyncChunkStream`, driven through the Multiplexer's portal loop."""

    def __init__(self, portal: Portal, inner: AsyncChunkStream) -> None:
        self._portal = portal
        self._inner = inner
        self.response = inner.response
        self.endpoint_name = inner.endpoint_name

    @property
    def partial(self) -> _Partial:
        return self._inner.partial

    def __iter__(self) -> Iterator[Any]:
        return self

    def __next__(self) -> Any:
        try:
            return self._portal.call(self._inner.__anext__())
        except StopAsyncIteration:
            raise StopIteration from None

    def close(self) -> None:
        self._portal.call(self._inner.close())

    def __enter__(self) -> ChunkStream:
        return self

    def __exit__(self, *exc_info: Any) -> None:
        self.close()


class _Truncated(ValueError):
    """The upstream stream ended cleanly before its final chunk (a malformed reply)."""


def _reason(exc: BaseException) -> str:
    text = str(exc) or type(exc).__name__
    return text if len(text) <= 160 else text[:157] + "..."
