"""Redis rate-limit backend: processes on many hosts share limits through one Redis.

Each operation is one Lua script run atomically by Redis (EVALSHA; redis-py falls back to EVAL
and reloads the script after a ``SCRIPT FLUSH`` or a failover). The script does the same GCRA
arithmetic as :mod:`gonka_mux.limits.gcra` on a hash of two fields per key, reads the time from
the Redis server (so hosts with skewed clocks agree) and lets the key expire once its buckets are
full again.

Needs the ``redis`` extra (``pip install gonka-mux[redis]``), imported on first use. The time
prologue and the client handling are shared with the Redis session store (:mod:`gonka_mux._redis`).

No call waits long on a Redis that is away: clients this backend makes get ``timeout`` (0.5 s) as
their connect and read timeouts and at most one immediate reconnect (redis-py's default is three
retries with backoff of up to seconds), every async call is also bounded by ``timeout``, and a
failure to reach Redis is raised as :class:`gonka_mux.errors.StoreUnavailableError`
(``backend="redis"``), which :class:`~gonka_mux.limits.RateLimiter` answers by enforcing the same
limits in-process until Redis is back.
"""

from __future__ import annotations

import asyncio
import math
import weakref
from collections.abc import Awaitable, Callable
from typing import Any, NoReturn, TypeVar
from urllib.parse import urlsplit

from gonka_mux._exceptions import StoreUnavailableError
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

#: Seconds a Redis call may take (connect, then the reply) before Redis counts as away.
DEFAULT_TIMEOUT = 0.5

T = TypeVar("T")


class RedisLimitBackend:
    """GCRA state in Redis, shared by every process that uses the same server and ``prefix``.

    Give a ``url`` (``redis://host:6379/0``) or ready clients: ``client`` (``redis.Redis``) for the
    blocking methods and ``async_client`` (``redis.asyncio.Redis``) for the async ones. Without an
    ``async_client``, one is made from ``url`` per event loop (an asyncio connection belongs to the
    loop that opened it). ``clock`` overrides the server time (tests use a fake one).

    ``timeout`` (seconds, default 0.5) bounds every async call, and is the connect and read
    timeout of the clients made from ``url`` (a ``?socket_timeout=`` in the url wins). A blocking
    ``client`` passed in keeps its own settings: give it a ``socket_timeout``.
    """

    def __init__(
        self,
        url: str | None = None,
        *,
        client: Any | None = None,
        async_client: Any | None = None,
        prefix: str = "gonka_mux:limits:",
        clock: Callable[[], float] | None = None,
        timeout: float = DEFAULT_TIMEOUT,
    ) -> None:
        if url is None and client is None and async_client is None:
            raise ValueError("RedisLimitBackend needs a url, a client or an async_client")
        if isinstance(timeout, bool) or not isinstance(timeout, (int, float)):
            raise TypeError(f"timeout must be a number of seconds, got {timeout!r}")
        if not math.isfinite(timeout) or timeout <= 0:
            raise ValueError(f"timeout must be a positive number of seconds, got {timeout!r}")
        self.timeout = float(timeout)
        self._where = _location(url)
        self._url = url
        self._client = client
        self._owns_client = client is None
        self._prefix = prefix
        self._clock = clock
        self._script: Any = None
        # The per-loop async clients made from the url, already given short timeouts.
        self._tuned: weakref.WeakSet[Any] = weakref.WeakSet()
        self._async: LoopClients | None = None
        if url is not None or async_client is not None:
            self._async = LoopClients(
                "RedisLimitBackend", {"limit": _LUA}, url=url, client=async_client
            )

    def __repr__(self) -> str:
        # The url may carry a password: show only the prefix.
        return f"RedisLimitBackend(prefix={self._prefix!r})"

    kind = "redis"

    def admit(self, key: str, limit: RateLimit, tokens: float) -> tuple[float, str]:
        script = self._sync_script()
        try:
            reply = script(keys=[self._prefix + key], args=self._args("admit", limit, 1, tokens))
        except Exception as exc:
            self._raise_unavailable(exc)
        return _admit_result(reply)

    async def aadmit(self, key: str, limit: RateLimit, tokens: float) -> tuple[float, str]:
        script = self._async_script()
        args = self._args("admit", limit, 1, tokens)
        reply = await self._bounded(script(keys=[self._prefix + key], args=args))
        return _admit_result(reply)

    def adjust(self, key: str, limit: RateLimit, requests: float, tokens: float) -> None:
        script = self._sync_script()
        try:
            script(keys=[self._prefix + key], args=self._args("adjust", limit, requests, tokens))
        except Exception as exc:
            self._raise_unavailable(exc)

    async def aadjust(self, key: str, limit: RateLimit, requests: float, tokens: float) -> None:
        script = self._async_script()
        args = self._args("adjust", limit, requests, tokens)
        await self._bounded(script(keys=[self._prefix + key], args=args))

    async def aping(self) -> None:
        """Raise :class:`~gonka_mux.errors.StoreUnavailableError` unless Redis answers now."""
        client = self._async_client()
        await self._bounded(client.ping())

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
                _fail_fast(self._client, self.timeout)
            self._script = self._client.register_script(_LUA)
        return self._script

    def _async_entry(self) -> tuple[Any, dict[str, Any]]:
        if self._async is None:
            raise RuntimeError(
                "this RedisLimitBackend has only a blocking client; pass url= or "
                "async_client= to use the async methods"
            )
        entry = self._async.get()
        client = entry[0]
        if self._url is not None and client not in self._tuned:
            # Made from our url (a client passed in is left as its owner configured it; the
            # asyncio timeout in _bounded still applies to it).
            _fail_fast(client, self.timeout)
            self._tuned.add(client)
        return entry

    def _async_script(self) -> Any:
        return self._async_entry()[1]["limit"]

    def _async_client(self) -> Any:
        return self._async_entry()[0]

    async def _bounded(self, call: Awaitable[T]) -> T:
        """Await a Redis call for at most ``timeout`` seconds; unreachable -> StoreUnavailable."""
        try:
            return await asyncio.wait_for(call, self.timeout)
        except Exception as exc:
            self._raise_unavailable(exc)

    def _raise_unavailable(self, exc: Exception) -> NoReturn:
        """Re-raise ``exc`` as StoreUnavailableError when it says Redis cannot be reached."""
        if not _is_unavailable(exc):
            raise exc
        if isinstance(exc, asyncio.TimeoutError):
            reason = f"no reply within {self.timeout:g}s"
        else:
            # redis-py's messages name the host and port and the OS error, never the password;
            # the url's password is removed anyway in case a driver ever echoes it.
            reason = f"{type(exc).__name__}: {exc}"
            password = _password(self._url)
            if password:
                reason = reason.replace(password, "***")
        raise StoreUnavailableError(
            f"Redis for rate limits ({self._where}) is unavailable: {reason}",
            backend="redis",
            retry_after=1.0,
        ) from exc


def _is_unavailable(exc: BaseException) -> bool:
    if isinstance(exc, (asyncio.TimeoutError, TimeoutError, ConnectionError, OSError)):
        return True
    import redis.exceptions as rexc  # installed: a client made the call that failed

    # ConnectionError covers refused, reset, closed, LOADING and authentication failures;
    # READONLY is what a replica answers during a failover.
    return isinstance(exc, (rexc.ConnectionError, rexc.TimeoutError, rexc.ReadOnlyError))


def _fail_fast(client: Any, timeout: float) -> None:
    """Short connect/read timeouts (unless the url set its own) and one immediate reconnect.

    One retry, not none: after a Redis restart every pooled connection is dead, and the first
    command on each should reconnect rather than count as an outage. Only on a connection
    error: a timeout retried would double the time a frozen Redis costs a caller.
    """
    from redis.backoff import NoBackoff
    from redis.exceptions import ConnectionError as RedisConnectionError

    if isinstance(client, _async_redis_type()):
        from redis.asyncio.retry import Retry
    else:
        from redis.retry import Retry
    kwargs = client.connection_pool.connection_kwargs
    for name in ("socket_timeout", "socket_connect_timeout"):
        if kwargs.get(name) is None:
            kwargs[name] = timeout
    client.set_retry(Retry(NoBackoff(), 1, supported_errors=(RedisConnectionError,)))


def _async_redis_type() -> type:
    import redis.asyncio

    return redis.asyncio.Redis


def _location(url: str | None) -> str:
    """``host:port/db`` of a Redis url, for messages (never the password)."""
    if url is None:
        return "client passed in"
    try:
        parts = urlsplit(url)
        host = parts.hostname or "localhost"
        port = parts.port or 6379
    except ValueError:
        return "url not shown"
    return f"{host}:{port}{parts.path or ''}"


def _password(url: str | None) -> str | None:
    if url is None:
        return None
    try:
        return urlsplit(url).password
    except ValueError:
        return None


def _admit_result(reply: list[Any]) -> tuple[float, str]:
    blocked = int(reply[0])
    if not blocked:
        return ADMITTED
    return float(reply[1]), _BLOCKED[blocked]
