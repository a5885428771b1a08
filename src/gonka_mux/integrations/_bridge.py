"""Calling a Multiplexer (either face) or any OpenAI-shaped client from sync and async code.

The framework adapters are handed one object and must serve both sync and async callers:

* a sync :class:`~gonka_mux.Multiplexer` serves sync calls directly and async calls by running the
  request on the Multiplexer's own loop thread and awaiting the result there (the caller's loop is
  never blocked, and the HTTP clients stay on the loop they were created on);
* an :class:`~gonka_mux.AsyncMultiplexer` (or ``openai.AsyncOpenAI``) serves async calls only:
  its connections belong to one event loop, so a sync call raises a ``TypeError`` that says to
  pass a ``Multiplexer`` instead;
* any other object with ``chat.completions.create`` (``openai.OpenAI``) serves sync calls
  directly and async calls in a worker thread.

gonka_mux's own keyword arguments (``session_id``, ``mux_metadata``, ...) are only sent to a
Multiplexer; a plain OpenAI client would reject them.
"""

from __future__ import annotations

import asyncio
import inspect
from collections.abc import AsyncIterator, Iterator
from typing import Any

from gonka_mux.multiplexer import AsyncMultiplexer, Multiplexer

__all__ = ["ChatBridge"]

_DONE = object()


class ChatBridge:
    """``create`` / ``acreate`` over whatever chat-completions client the adapter was given."""

    def __init__(self, target: Any) -> None:
        chat = getattr(getattr(target, "chat", None), "completions", None)
        if chat is None or not callable(getattr(chat, "create", None)):
            raise TypeError(
                "expected a gonka_mux Multiplexer / AsyncMultiplexer (or an OpenAI-shaped client "
                f"with chat.completions.create), got {type(target).__name__}"
            )
        self.target = target
        self.is_mux = isinstance(target, (Multiplexer, AsyncMultiplexer))
        self._sync_mux = target if isinstance(target, Multiplexer) else None
        self.is_async = isinstance(target, AsyncMultiplexer) or (
            not self.is_mux and inspect.iscoroutinefunction(chat.create)
        )

    def params(self, params: dict[str, Any], mux_kwargs: dict[str, Any]) -> dict[str, Any]:
        """The keyword arguments for ``create``: mux-only ones are dropped for plain clients."""
        if self.is_mux:
            return {**params, **{k: v for k, v in mux_kwargs.items() if v is not None}}
        return params

    # -- sync -------------------------------------------------------------------------------
    def create(self, params: dict[str, Any]) -> Any:
        """A ChatCompletion, or an iterator of chunks (a context manager too) when streaming."""
        if self.is_async:
            raise TypeError(
                f"{type(self.target).__name__} only serves async calls (ainvoke, astream, acall): "
                "its connections belong to one event loop. Pass a gonka_mux.Multiplexer (the "
                "sync face, which also serves async calls) to use the adapter from sync code."
            )
        return self.target.chat.completions.create(**params)

    # -- async ------------------------------------------------------------------------------
    async def acreate(self, params: dict[str, Any]) -> Any:
        """A ChatCompletion, or an async iterator of chunks when streaming."""
        if self.is_async:
            return await self.target.chat.completions.create(**params)
        mux = self._sync_mux
        if mux is None:  # a plain sync client: a worker thread keeps our loop free
            result = await asyncio.to_thread(self.target.chat.completions.create, **params)
            return _ThreadStream(result) if params.get("stream") else result
        result = await mux.acreate_chat(**params)  # runs on the mux's loop thread
        return _MuxLoopStream(mux, result) if params.get("stream") else result


class _MuxLoopStream:
    """An async stream living on the Multiplexer's loop thread, read from another loop."""

    def __init__(self, mux: Any, inner: Any) -> None:
        self._mux = mux
        self._inner = inner
        self.partial = inner.partial
        self.response = getattr(inner, "response", None)

    def __aiter__(self) -> AsyncIterator[Any]:
        return self

    async def __anext__(self) -> Any:
        item = await self._run(_next_or_done(self._inner))
        if item is _DONE:
            raise StopAsyncIteration
        return item

    async def _run(self, coro: Any) -> Any:
        return await self._mux.arun(coro)

    async def close(self) -> None:
        await self._run(self._inner.close())

    aclose = close

    async def __aenter__(self) -> _MuxLoopStream:
        return self

    async def __aexit__(self, *exc_info: Any) -> None:
        await self.close()


async def _next_or_done(stream: Any) -> Any:
    # StopAsyncIteration must not cross a future boundary: hand back a sentinel instead.
    try:
        return await stream.__anext__()
    except StopAsyncIteration:
        return _DONE


class _ThreadStream:
    """A sync stream of a plain client, read from async code one chunk per worker-thread hop."""

    def __init__(self, inner: Any) -> None:
        self._inner = inner
        self._it: Iterator[Any] = iter(inner)

    def __aiter__(self) -> AsyncIterator[Any]:
        return self

    async def __anext__(self) -> Any:
        item = await asyncio.to_thread(next, self._it, _DONE)
        if item is _DONE:
            raise StopAsyncIteration
        return item

    async def close(self) -> None:
        close = getattr(self._inner, "close", None)
        if close is not None:
            await asyncio.to_thread(close)

    aclose = close

    async def __aenter__(self) -> _ThreadStream:
        return self

    async def __aexit__(self, *exc_info: Any) -> None:
        await self.close()
