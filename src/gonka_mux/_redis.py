"""Redis plumbing shared by the Redis rate-limit backend and the Redis session store.

- :data:`LUA_NOW`: the Lua prologue that sets ``now`` from ``ARGV[1]`` (``""``: the Redis server's
  ``TIME``, so hosts with skewed clocks agree), with :func:`now_arg` to fill that argument;
- :func:`redis_client`: a blocking client from a URL;
- :class:`LoopClients`: asyncio clients, one per event loop, with the caller's scripts registered.

The ``redis`` package is an optional extra (``pip install 'gonka-mux[redis]'``), imported on first
use with an error that names the extra.
"""

from __future__ import annotations

import asyncio
import weakref
from collections.abc import Callable, Mapping
from types import ModuleType
from typing import Any

__all__ = ["LUA_NOW", "LoopClients", "now_arg", "redis_client"]

# ARGV[1]: the time to use, in seconds, or "" for the Redis server's clock. Sets the local `now`.
LUA_NOW = """
local now
if ARGV[1] == '' then
  local t = redis.call('TIME')
  now = tonumber(t[1]) + tonumber(t[2]) / 1000000
else
  now = tonumber(ARGV[1])
end
"""


def now_arg(clock: Callable[[], float] | None) -> str:
    """``ARGV[1]`` for :data:`LUA_NOW`: the server's clock unless a ``clock`` is given (tests)."""
    return "" if clock is None else repr(clock())


def _redis(owner: str, asyncio_api: bool) -> ModuleType:
    # optional extra: redis (pip install 'gonka-mux[redis]')
    try:
        if asyncio_api:
            import redis.asyncio as module
        else:
            import redis as module
    except ImportError as exc:
        raise ModuleNotFoundError(
            f"{owner} needs the redis package: pip install 'gonka-mux[redis]'", name="redis"
        ) from exc
    return module


def redis_client(url: str, owner: str) -> Any:
    """A blocking ``redis.Redis`` for ``url`` (``owner`` names the caller in the import error)."""
    return _redis(owner, asyncio_api=False).Redis.from_url(url)


class LoopClients:
    """``redis.asyncio`` clients with ``scripts`` (name -> Lua) registered on each.

    With a ``client``, that one serves every loop and stays open for its owner to close. With a
    ``url``, one client is made per event loop (an asyncio connection belongs to the loop that
    opened it) and :meth:`aclose` closes the running loop's. ``owner`` names the caller in errors.
    """

    def __init__(
        self,
        owner: str,
        scripts: Mapping[str, str],
        *,
        url: str | None = None,
        client: Any | None = None,
    ) -> None:
        if url is None and client is None:
            raise ValueError(f"{owner} needs url= or client=")
        self._owner = owner
        self._lua = dict(scripts)
        self._url = url
        self._given: tuple[Any, dict[str, Any]] | None = None
        if client is not None:
            self._given = (client, self._register(client))
        self._per_loop: weakref.WeakKeyDictionary[
            asyncio.AbstractEventLoop, tuple[Any, dict[str, Any]]
        ] = weakref.WeakKeyDictionary()

    def get(self) -> tuple[Any, dict[str, Any]]:
        """The client for the running event loop and its registered scripts (by name)."""
        if self._given is not None:
            return self._given
        loop = asyncio.get_running_loop()
        entry = self._per_loop.get(loop)
        if entry is None:
            client = _redis(self._owner, asyncio_api=True).Redis.from_url(self._url)
            entry = self._per_loop[loop] = (client, self._register(client))
        return entry

    async def aclose(self) -> None:
        """Close the client made for the running loop; forget the other loops' (a client passed
        in stays open for its owner)."""
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:  # pragma: no cover - aclose is awaited, so a loop runs
            return
        entry = self._per_loop.pop(loop, None)
        self._per_loop.clear()
        if entry is not None:
            await entry[0].aclose()

    def _register(self, client: Any) -> dict[str, Any]:
        return {name: client.register_script(lua) for name, lua in self._lua.items()}
