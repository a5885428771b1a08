"""Redis session store: sessions shared by processes on many hosts.

Per session, under ``prefix``: ``s:<id>:log`` (a list of JSON messages), ``s:<id>:kv`` (a hash of
values) and ``s:<id>:keys`` (a sorted set of the keys, all at score 0, so ``ZRANGEBYLEX`` gives
ordered prefix scans). ``index`` is a sorted set of session ids scored by last activity.

Every write is one Lua script, so it is atomic with the activity update: two hosts appending to
one session both land, each contiguous. Activity times come from the Redis server's clock unless
a ``clock`` is given (tests), so hosts with skewed clocks agree on expiry. Redis Cluster is not
supported (a script touches the index and the session's keys, which hash to different slots).

Needs the ``redis`` extra (``pip install gonka-mux[redis]``), imported on first use. The time
prologue and the client handling are shared with the Redis rate-limit backend
(:mod:`gonka_mux._redis`).
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Callable, Coroutine, Mapping, Sequence
from typing import Any, TypeVar, cast
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

from gonka_mux._exceptions import StoreUnavailableError
from gonka_mux._redis import LUA_NOW, LoopClients, now_arg
from gonka_mux.sessions.base import (
    Message,
    check_key,
    check_session_id,
    decode_message,
    encode_message,
)

__all__ = ["RedisSessionStore"]

log = logging.getLogger("gonka_mux.sessions")

F = TypeVar("F", bound=Callable[..., Coroutine[Any, Any, Any]])

# Without socket timeouts a hung server (or a dropped network) blocks a call forever.
_SOCKET_TIMEOUT = 5.0
_CONNECT_TIMEOUT = 2.0


def _with_timeouts(url: str) -> str:
    """``url`` with socket timeouts (kept where the URL sets its own) and no retries: a stopped
    server is reported at once, typed, and the caller decides when to retry."""
    parts = urlsplit(url)
    query = dict(parse_qsl(parts.query))
    query.setdefault("socket_timeout", repr(_SOCKET_TIMEOUT))
    query.setdefault("socket_connect_timeout", repr(_CONNECT_TIMEOUT))
    return urlunsplit(parts._replace(query=urlencode(query)))


def _typed(method: F) -> F:
    """Report a Redis that cannot be reached as StoreUnavailableError(backend="redis")."""

    @functools.wraps(method)
    async def wrapper(self: RedisSessionStore, *args: Any, **kwargs: Any) -> Any:
        try:
            return await method(self, *args, **kwargs)
        except Exception as exc:
            if not _is_outage(exc):
                raise
            log.warning("session store on Redis unavailable: %s", type(exc).__name__)
            raise StoreUnavailableError(
                f"Redis session store unavailable ({type(exc).__name__}); retry later.",
                backend="redis",
            ) from None

    return cast(F, wrapper)


def _is_outage(exc: BaseException) -> bool:
    try:
        from redis.exceptions import BusyLoadingError, ConnectionError, TimeoutError
    except ImportError:  # pragma: no cover - the store cannot have run without redis
        return False
    return isinstance(exc, (ConnectionError, TimeoutError, BusyLoadingError, OSError))


# Every write script starts with LUA_NOW: ARGV[1] is the time to record ("" = the server's TIME).
# KEYS: index, log. ARGV: now, session id, message...
_APPEND = (
    LUA_NOW
    + """
for i = 3, #ARGV do redis.call('RPUSH', KEYS[2], ARGV[i]) end
redis.call('ZADD', KEYS[1], now, ARGV[2])
return redis.call('LLEN', KEYS[2])
"""
)

# KEYS: index, kv, keys. ARGV: now, session id, key1, value1, key2, value2...
_PUT = (
    LUA_NOW
    + """
for i = 3, #ARGV, 2 do
  redis.call('HSET', KEYS[2], ARGV[i], ARGV[i + 1])
  redis.call('ZADD', KEYS[3], 0, ARGV[i])
end
redis.call('ZADD', KEYS[1], now, ARGV[2])
return 1
"""
)

# KEYS: index, kv, keys. ARGV: now, session id, key.
_DELETE_KEY = (
    LUA_NOW
    + """
if redis.call('HDEL', KEYS[2], ARGV[3]) == 0 then return 0 end
redis.call('ZREM', KEYS[3], ARGV[3])
redis.call('ZADD', KEYS[1], now, ARGV[2])
return 1
"""
)

# KEYS: index. ARGV: now, session id.
_TOUCH = LUA_NOW + "return redis.call('ZADD', KEYS[1], 'XX', now, ARGV[2])"

# KEYS: index, log, kv, keys. ARGV: now, session id, ttl. Re-checks the idle time atomically,
# so a session written since it was listed as a candidate is kept.
_EXPIRE_ONE = (
    LUA_NOW
    + """
local last = redis.call('ZSCORE', KEYS[1], ARGV[2])
if not last or tonumber(last) >= now - tonumber(ARGV[3]) then return 0 end
redis.call('DEL', KEYS[2], KEYS[3], KEYS[4])
redis.call('ZREM', KEYS[1], ARGV[2])
return 1
"""
)

# KEYS: kv, keys. ARGV: min, max (ZRANGEBYLEX bounds). Returns key1, value1, key2, value2...
_SCAN = """
local out = {}
for _, k in ipairs(redis.call('ZRANGEBYLEX', KEYS[2], ARGV[1], ARGV[2])) do
  local v = redis.call('HGET', KEYS[1], k)
  if v then
    out[#out + 1] = k
    out[#out + 1] = v
  end
end
return out
"""

_SCRIPTS = {
    "append": _APPEND,
    "put": _PUT,
    "delete_key": _DELETE_KEY,
    "touch": _TOUCH,
    "expire_one": _EXPIRE_ONE,
    "scan": _SCAN,
}


class RedisSessionStore:
    """Sessions in Redis, shared by every process that uses the same server and ``prefix``.

    Give a ``url`` (``redis://host:6379/0``; one asyncio client is made per event loop, since a
    connection belongs to the loop that opened it) or a ready ``client`` (``redis.asyncio.Redis``
    with ``decode_responses=False``, left open for its owner to close).
    """

    def __init__(
        self,
        url: str | None = None,
        *,
        client: Any | None = None,
        prefix: str = "gonka_mux:sessions:",
        clock: Callable[[], float] | None = None,
    ) -> None:
        if url is None and client is None:
            raise ValueError("RedisSessionStore needs url='redis://host:port/db' or client=")
        if url is not None:
            url = _with_timeouts(url)
        self._clients = LoopClients("RedisSessionStore", _SCRIPTS, url=url, client=client)
        self._prefix = prefix
        self._index = prefix + "index"
        self._clock = clock

    def __repr__(self) -> str:
        # The url may carry a password: show only the prefix.
        return f"RedisSessionStore(prefix={self._prefix!r})"

    # -- plumbing

    def _connection(self) -> tuple[Any, dict[str, Any]]:
        return self._clients.get()

    async def _script(self, name: str, keys: list[str], args: list[Any]) -> Any:
        _, scripts = self._connection()
        return await scripts[name](keys=keys, args=args)

    def _now(self) -> str:
        return now_arg(self._clock)

    def _keys(self, session_id: str) -> tuple[str, str, str]:
        base = f"{self._prefix}s:{session_id}:"
        return base + "log", base + "kv", base + "keys"

    # -- ordered key-value

    async def put(self, session_id: str, key: str, value: bytes) -> None:
        await self.put_many(session_id, [(key, value)])

    @_typed
    async def put_many(self, session_id: str, items: Sequence[tuple[str, bytes]]) -> None:
        check_session_id(session_id)
        flat: list[Any] = []
        for key, value in items:
            flat += [check_key(key), bytes(value)]
        if not flat:
            return
        _, kv, keys = self._keys(session_id)
        await self._script("put", [self._index, kv, keys], [self._now(), session_id, *flat])

    @_typed
    async def get(self, session_id: str, key: str) -> bytes | None:
        client, _ = self._connection()
        value = await client.hget(self._keys(session_id)[1], key)
        return bytes(value) if value is not None else None

    @_typed
    async def scan(self, session_id: str, prefix: str = "") -> list[tuple[str, bytes]]:
        _, kv, keys = self._keys(session_id)
        if prefix:
            # Keys are UTF-8, where byte 0xFF never occurs: "(prefix\xff" ends the range.
            low, high = b"[" + prefix.encode(), b"(" + prefix.encode() + b"\xff"
        else:
            low, high = b"-", b"+"
        flat = await self._script("scan", [kv, keys], [low, high])
        return [(flat[i].decode(), bytes(flat[i + 1])) for i in range(0, len(flat), 2)]

    @_typed
    async def delete(self, session_id: str, key: str) -> bool:
        _, kv, keys = self._keys(session_id)
        args = [self._now(), session_id, key]
        return bool(await self._script("delete_key", [self._index, kv, keys], args))

    # -- message log

    @_typed
    async def append_messages(self, session_id: str, messages: Sequence[Mapping[str, Any]]) -> int:
        check_session_id(session_id)
        encoded = [encode_message(m).encode() for m in messages]
        log = self._keys(session_id)[0]
        return int(
            await self._script("append", [self._index, log], [self._now(), session_id, *encoded])
        )

    @_typed
    async def load_messages(self, session_id: str) -> list[Message]:
        client, _ = self._connection()
        return [decode_message(m) for m in await client.lrange(self._keys(session_id)[0], 0, -1)]

    # -- activity and lifetime

    @_typed
    async def touch(self, session_id: str) -> None:
        await self._script("touch", [self._index], [self._now(), session_id])

    @_typed
    async def last_active(self, session_id: str) -> float | None:
        client, _ = self._connection()
        score = await client.zscore(self._index, session_id)
        return float(score) if score is not None else None

    @_typed
    async def sessions(self) -> list[str]:
        client, _ = self._connection()
        return sorted(m.decode() for m in await client.zrange(self._index, 0, -1))

    @_typed
    async def delete_session(self, session_id: str) -> bool:
        client, _ = self._connection()
        async with client.pipeline(transaction=True) as pipe:
            pipe.delete(*self._keys(session_id))
            pipe.zrem(self._index, session_id)
            deleted, removed = await pipe.execute()
        return bool(deleted or removed)

    @_typed
    async def expire(self, ttl: float) -> list[str]:
        client, _ = self._connection()
        if self._clock is None:
            seconds, micros = await client.time()
            now = seconds + micros / 1_000_000
        else:
            now = self._clock()
        candidates = await client.zrangebyscore(self._index, "-inf", f"({now - ttl!r}")
        gone = []
        for raw in candidates:
            session_id = raw.decode()
            keys = [self._index, *self._keys(session_id)]
            if await self._script("expire_one", keys, [self._now(), session_id, repr(ttl)]):
                gone.append(session_id)
        return sorted(gone)

    async def aclose(self) -> None:
        """Close the client this store made for the running loop (a passed-in client stays
        open for its owner)."""
        await self._clients.aclose()
