"""Redis rate-limit backend: processes on many hosts share limits through one Redis.

Each operation is one Lua script run atomically by Redis (EVALSHA; redis-py falls back to EVAL
and reloads the script after a ``SCRIPT FLUSH`` or a failover). The script does the same GCRA
arithmetic as :mod:`gonka_mux.limits.gcra` on a hash of two fields per key, reads the time from
the Redis server (so hosts with skewed clocks agree) and lets the key expire once its buckets are
full again.

Needs the ``redis`` extra (``pip install gonka-mux[redis]``), imported on first use. The time
prologue and the client handling are shared with the Redis session store (:mod:`gonka_mux._redis`).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from gonka_mux._redis import LUA_NOW, LoopClients, now_arg, redis_client

from .config import RateLimit
from .gcra import ADMITTED, REQUESTS, TOKENS

__all__ = ["RedisLimitBackend"]

# ARGV: now ("" = use the server's TIME), op ("admit" | "adjust"), request interval, request
# capacity, token interval, token capacity, requests, tokens. Numbers travel as strings and come
# back as strings because Redis truncates Lua numbers to integers in replies.
_LUA = (
    LUA_NOW
    + """
local ri, rc = tonumber(ARGV[3]), tonumber(ARGV[4])
local ti, tc = tonumber(ARGV[5]), tonumber(ARGV[6])
local nreq, ntok = tonumber(ARGV[7]), tonumber(ARGV[8])
local state = redis.call('HMGET', KEYS[1], 'r', 't')
local tr = tonumber(state[1]) or 0
local tt = tonumber(state[2]) or 0
if tr < now then tr = now end
if tt < now then tt = now end
if ARGV[2] == 'admit' then
  local wait, blocked = 0, 0
  if ri > 0 then
    tr = tr + ri
    local over = tr - rc - now
    if over > 1e-9 then wait, blocked = over, 1 end
  end
  if ti > 0 and ntok > 0 then
    local cost = ntok * ti
    tt = tt + cost
    local cap = tc
    if cost > cap then cap = cost end
    local over = tt - cap - now
    if over > 1e-9 and over > wait then wait, blocked = over, 2 end
  end
  if blocked > 0 then
    return {blocked, string.format('%.6f', wait)}
  end
else
  if ri > 0 then tr = tr + nreq * ri end
  if ti > 0 then tt = tt + ntok * ti end
end
local ahead = math.max(tr, tt) - now
if ahead > 0 then
  redis.call('HSET', KEYS[1], 'r', string.format('%.6f', tr), 't', string.format('%.6f', tt))
  redis.call('PEXPIRE', KEYS[1], math.ceil(ahead * 1000) + 1000)
else
  redis.call('DEL', KEYS[1])
end
return {0, '0'}
"""
)

_BLOCKED = {1: REQUESTS, 2: TOKENS}


class RedisLimitBackend:
    """GCRA state in Redis, shared by every process that uses the same server and ``prefix``.

    Give a ``url`` (``redis://host:6379/0``) or ready clients: ``client`` (``redis.Redis``) for the
    blocking methods and ``async_client`` (``redis.asyncio.Redis``) for the async ones. Without an
    ``async_client``, one is made from ``url`` per event loop (an asyncio connection belongs to the
    loop that opened it). ``clock`` overrides the server time (tests use a fake one).
    """

    def __init__(
        self,
        url: str | None = None,
        *,
        client: Any | None = None,
        async_client: Any | None = None,
        prefix: str = "gonka_mux:limits:",
        clock: Callable[[], float] | None = None,
    ) -> None:
        if url is None and client is None and async_client is None:
            raise ValueError("RedisLimitBackend needs a url, a client or an async_client")
        self._url = url
        self._client = client
        self._owns_client = client is None
        self._prefix = prefix
        self._clock = clock
        self._script: Any = None
        self._async: LoopClients | None = None
        if url is not None or async_client is not None:
            self._async = LoopClients(
                "RedisLimitBackend", {"limit": _LUA}, url=url, client=async_client
            )

    def __repr__(self) -> str:
        # The url may carry a password: show only the prefix.
        return f"RedisLimitBackend(prefix={self._prefix!r})"

    def admit(self, key: str, limit: RateLimit, tokens: float) -> tuple[float, str]:
        reply = self._sync_script()(
            keys=[self._prefix + key], args=self._args("admit", limit, 1, tokens)
        )
        return _admit_result(reply)

    async def aadmit(self, key: str, limit: RateLimit, tokens: float) -> tuple[float, str]:
        script = self._async_script()
        reply = await script(keys=[self._prefix + key], args=self._args("admit", limit, 1, tokens))
        return _admit_result(reply)

    def adjust(self, key: str, limit: RateLimit, requests: float, tokens: float) -> None:
        self._sync_script()(
            keys=[self._prefix + key], args=self._args("adjust", limit, requests, tokens)
        )

    async def aadjust(self, key: str, limit: RateLimit, requests: float, tokens: float) -> None:
        script = self._async_script()
        await script(keys=[self._prefix + key], args=self._args("adjust", limit, requests, tokens))

    def close(self) -> None:
        if self._owns_client and self._client is not None:
            self._client.close()
            self._client = None
        self._script = None

    async def aclose(self) -> None:
        """Close the blocking client and this event loop's async client (clients this backend
        made; ones passed in stay open for their owner to close)."""
        self.close()
        if self._async is not None:
            await self._async.aclose()

    # -- plumbing

    def _args(self, op: str, limit: RateLimit, requests: float, tokens: float) -> list[str]:
        return [
            now_arg(self._clock),
            op,
            repr(limit.request_interval),
            repr(limit.request_capacity),
            repr(limit.token_interval),
            repr(limit.token_capacity),
            repr(float(requests)),
            repr(float(tokens)),
        ]

    def _sync_script(self) -> Any:
        if self._script is None:
            if self._client is None:
                if self._url is None:
                    raise RuntimeError(
                        "this RedisLimitBackend has only an async client; pass url= or client= "
                        "to use the blocking methods"
                    )
                self._client = redis_client(self._url, "RedisLimitBackend")
            self._script = self._client.register_script(_LUA)
        return self._script

    def _async_script(self) -> Any:
        if self._async is None:
            raise RuntimeError(
                "this RedisLimitBackend has only a blocking client; pass url= or "
                "async_client= to use the async methods"
            )
        return self._async.get()[1]["limit"]


def _admit_result(reply: list[Any]) -> tuple[float, str]:
    blocked = int(reply[0])
    if not blocked:
        return ADMITTED
    return float(reply[1]), _BLOCKED[blocked]
