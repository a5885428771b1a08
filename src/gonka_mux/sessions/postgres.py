"""PostgreSQL session store: sessions shared by processes on many hosts, on a database you run.

Three tables (``gonka_mux_sessions``, ``gonka_mux_session_messages``, ``gonka_mux_session_kv``).
The ``sessions`` row is each session's lock: every write first upserts (or locks) it, then
touches the log or the keys, in one transaction. So two hosts appending to one session are
serialized on that row and both land, each contiguous (the row also holds the log's length,
which hands out the sequence numbers); a deleted or expired session cannot lose a write that
races with it, and the one lock order (session row, then its data) cannot deadlock.

Keys are ``COLLATE "C"``: byte order of UTF-8, which is code-point order, as the protocol asks.
Activity times come from the database server's clock unless a ``clock`` is given (tests), so
hosts with skewed clocks agree on expiry.

Connections: a small pool per event loop (an asyncio connection belongs to its loop). It is not
``psycopg_pool``'s: that pool, with the server away, makes every caller wait its full timeout
for a connection that cannot come. Here a caller connects itself when no idle connection is at
hand, so a stopped server is reported at once (connection refused) as
:class:`~gonka_mux.errors.StoreUnavailableError`, and the first call after the server is back
simply connects again. Needs the ``postgres`` extra (psycopg 3).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
import weakref
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping, Sequence
from typing import Any, TypeVar

from gonka_mux._exceptions import StoreUnavailableError
from gonka_mux._postgres import is_postgres_url, redact_url, require_psycopg
from gonka_mux.sessions.base import (
    InvalidSessionData,
    Message,
    check_key,
    check_session_id,
    decode_message,
    encode_message,
    prefix_end,
)

__all__ = ["PostgresSessionStore", "pg_unavailable"]

log = logging.getLogger("gonka_mux.sessions")

T = TypeVar("T")

_SCHEMA = [
    "CREATE TABLE IF NOT EXISTS gonka_mux_sessions ("
    ' id TEXT COLLATE "C" PRIMARY KEY, last_active DOUBLE PRECISION NOT NULL,'
    " length BIGINT NOT NULL DEFAULT 0)",
    "CREATE INDEX IF NOT EXISTS gonka_mux_sessions_last_active ON gonka_mux_sessions (last_active)",
    "CREATE TABLE IF NOT EXISTS gonka_mux_session_messages ("
    ' session TEXT COLLATE "C" NOT NULL, seq BIGINT NOT NULL, body TEXT NOT NULL,'
    " PRIMARY KEY (session, seq))",
    "CREATE TABLE IF NOT EXISTS gonka_mux_session_kv ("
    ' session TEXT COLLATE "C" NOT NULL, key TEXT COLLATE "C" NOT NULL,'
    " value BYTEA NOT NULL, PRIMARY KEY (session, key))",
]
# Serializes schema creation between processes (CREATE ... IF NOT EXISTS can still race).
_SCHEMA_LOCK = 0x676F6E6B61_01

# ``now``: the given clock's value, or the server's clock when NULL.
_NOW = "coalesce(%(now)s::float8, extract(epoch FROM clock_timestamp())::float8)"

# An idle connection older than this is probed before use: the server may have restarted since.
_PROBE_AFTER = 1.0
_MAX_IDLE = 4


def pg_unavailable(exc: BaseException, url: str) -> StoreUnavailableError:
    """The typed error for a PostgreSQL connection failure, without the URL's password."""
    message = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    try:
        from urllib.parse import urlsplit

        password = urlsplit(url).password
    except ValueError:
        password = None
    if password:
        message = message.replace(password, "***")
    return StoreUnavailableError(
        f"PostgreSQL at {redact_url(url)} is unavailable ({type(exc).__name__}: {message}); "
        "retry later.",
        backend="postgresql",
    )


def _connection_errors() -> tuple[type[BaseException], ...]:
    psycopg = require_psycopg()
    # asyncio.TimeoutError is not the builtin one before Python 3.11.
    return (
        psycopg.OperationalError,
        psycopg.InterfaceError,
        OSError,
        TimeoutError,
        asyncio.TimeoutError,
    )


class _LoopPool:
    """Idle connections of one event loop, at most ``max_size`` in use at once."""

    def __init__(self, url: str, max_size: int, connect_timeout: float) -> None:
        self.url = url
        self.connect_timeout = connect_timeout
        self.idle: list[tuple[Any, float]] = []  # (connection, when it was returned)
        self.slots = asyncio.Semaphore(max_size)
        self.closing: set[asyncio.Future[None]] = set()

    async def connect(self) -> Any:
        psycopg = require_psycopg()
        return await psycopg.AsyncConnection.connect(
            self.url,
            autocommit=True,
            # libpq's minimum is 2 s; a refused connection fails at once anyway.
            connect_timeout=max(2, int(self.connect_timeout)),
            keepalives=1,
            keepalives_idle=10,
            keepalives_interval=5,
            keepalives_count=3,
        )

    async def checkout(self) -> Any:
        while self.idle:
            conn, since = self.idle.pop()
            if conn.closed:
                continue
            if time.monotonic() - since > _PROBE_AFTER:
                try:
                    await conn.execute("SELECT 1")
                except Exception:
                    await _close_quietly(conn)
                    self.drop_idle()  # they share the dead server's fate
                    break
            return conn
        return await self.connect()

    def checkin(self, conn: Any) -> None:
        psycopg = require_psycopg()
        healthy = (
            not conn.closed
            and conn.info.transaction_status == psycopg.pq.TransactionStatus.IDLE
            and len(self.idle) < _MAX_IDLE
        )
        if healthy:
            self.idle.append((conn, time.monotonic()))
        else:
            self._closing(conn)

    def drop_idle(self) -> None:
        idle, self.idle = self.idle, []
        for conn, _ in idle:
            self._closing(conn)

    def _closing(self, conn: Any) -> None:
        # Closing waits on the network: not inline; the task is kept so it is not collected.
        task = asyncio.ensure_future(_close_quietly(conn))
        self.closing.add(task)
        task.add_done_callback(self.closing.discard)

    async def aclose(self) -> None:
        idle, self.idle = self.idle, []
        for conn, _ in idle:
            await _close_quietly(conn)


async def _close_quietly(conn: Any) -> None:
    with contextlib.suppress(Exception):
        await conn.close()


class PostgresSessionStore:
    """Sessions in a PostgreSQL database, shared by every process that uses it.

    ``url``: ``postgresql://user:password@host:5432/db`` (the password never reaches a log line,
    repr or error). ``timeout``: seconds one operation may take, connecting included, before it
    fails with :class:`~gonka_mux.errors.StoreUnavailableError` (as does a refused or dropped
    connection). ``max_connections``: per event loop.
    """

    def __init__(
        self,
        url: str,
        *,
        timeout: float = 10.0,
        connect_timeout: float = 3.0,
        max_connections: int = 10,
        clock: Callable[[], float] | None = None,
    ) -> None:
        if not is_postgres_url(url):
            raise ValueError("PostgresSessionStore needs a postgresql:// URL")
        require_psycopg()
        self._url = url
        self._timeout = float(timeout)
        self._connect_timeout = float(connect_timeout)
        self._max = max(1, int(max_connections))
        self._clock = clock
        self._pools: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, _LoopPool] = (
            weakref.WeakKeyDictionary()
        )
        self._schema_ready = False

    def __repr__(self) -> str:
        return f"PostgresSessionStore(url={redact_url(self._url)!r})"

    # -- plumbing --------------------------------------------------------------------------

    def _pool(self) -> _LoopPool:
        loop = asyncio.get_running_loop()
        pool = self._pools.get(loop)
        if pool is None:
            pool = self._pools[loop] = _LoopPool(self._url, self._max, self._connect_timeout)
        return pool

    @contextlib.asynccontextmanager
    async def _connection(self) -> AsyncIterator[Any]:
        pool = self._pool()
        async with pool.slots:
            conn = await pool.checkout()
            try:
                yield conn
            except BaseException:
                # A failed or cancelled statement may leave the connection mid-protocol.
                if conn.closed or conn.info.transaction_status != 0:
                    await _close_quietly(conn)
                else:
                    pool.checkin(conn)
                raise
            pool.checkin(conn)

    async def _run(self, fn: Callable[[Any], Awaitable[T]]) -> T:
        """``fn(connection)`` under the operation timeout, with driver errors typed: connection
        failures as StoreUnavailableError; a deadlock or serialization failure is retried."""
        psycopg = require_psycopg()
        errors = _connection_errors()
        for attempt in range(3):
            try:
                return await asyncio.wait_for(self._once(fn), self._timeout)
            except (
                psycopg.errors.DeadlockDetected,
                psycopg.errors.SerializationFailure,
            ):
                if attempt == 2:
                    raise
                await asyncio.sleep(0.01 * (attempt + 1))
            except errors as exc:
                pool = self._pools.get(asyncio.get_running_loop())
                if pool is not None:
                    pool.drop_idle()
                log.warning(
                    "session store %s unavailable: %s", redact_url(self._url), type(exc).__name__
                )
                raise pg_unavailable(exc, self._url) from None
        raise AssertionError("unreachable")  # pragma: no cover

    async def _once(self, fn: Callable[[Any], Awaitable[T]]) -> T:
        async with self._connection() as conn:
            if not self._schema_ready:
                await self._create_schema(conn)
            return await fn(conn)

    async def _create_schema(self, conn: Any) -> None:
        async with conn.transaction():
            await conn.execute("SELECT pg_advisory_xact_lock(%s)", (_SCHEMA_LOCK,))
            for statement in _SCHEMA:
                await conn.execute(statement)
        self._schema_ready = True

    def _now(self) -> float | None:
        return self._clock() if self._clock is not None else None

    @staticmethod
    def _check_text(value: str, what: str) -> str:
        if "\x00" in value:
            raise InvalidSessionData(f"A {what} must not contain NUL characters (PostgreSQL).")
        return value

    async def _lock_session(self, conn: Any, session_id: str, grow: int = 0) -> int:
        """Create or refresh the session's row (locking it); returns the log's new length."""
        cursor = await conn.execute(
            f"INSERT INTO gonka_mux_sessions (id, last_active, length) VALUES (%(id)s, {_NOW}, "
            "%(grow)s) ON CONFLICT (id) DO UPDATE SET last_active = excluded.last_active,"
            " length = gonka_mux_sessions.length + %(grow)s RETURNING length",
            {"id": session_id, "now": self._now(), "grow": grow},
        )
        row = await cursor.fetchone()
        return int(row[0])

    # -- ordered key-value -----------------------------------------------------------------

    async def put(self, session_id: str, key: str, value: bytes) -> None:
        await self.put_many(session_id, [(key, value)])

    async def put_many(self, session_id: str, items: Sequence[tuple[str, bytes]]) -> None:
        self._check_text(check_session_id(session_id), "session_id")
        rows = [(session_id, self._check_text(check_key(k), "key"), bytes(v)) for k, v in items]
        if not rows:
            return

        async def run(conn: Any) -> None:
            async with conn.transaction():
                await self._lock_session(conn, session_id)
                async with conn.cursor() as cursor:
                    await cursor.executemany(
                        "INSERT INTO gonka_mux_session_kv (session, key, value) VALUES (%s, %s, %s)"
                        " ON CONFLICT (session, key) DO UPDATE SET value = excluded.value",
                        rows,
                    )

        await self._run(run)

    async def get(self, session_id: str, key: str) -> bytes | None:
        async def run(conn: Any) -> bytes | None:
            cursor = await conn.execute(
                "SELECT value FROM gonka_mux_session_kv WHERE session = %s AND key = %s",
                (session_id, key),
            )
            row = await cursor.fetchone()
            return bytes(row[0]) if row else None

        if "\x00" in session_id or "\x00" in key:
            return None  # never stored
        return await self._run(run)

    async def scan(self, session_id: str, prefix: str = "") -> list[tuple[str, bytes]]:
        if "\x00" in session_id or "\x00" in prefix:
            return []
        end = prefix_end(prefix)
        sql = "SELECT key, value FROM gonka_mux_session_kv WHERE session = %s AND key >= %s"
        params: tuple[Any, ...] = (session_id, prefix)
        if end is not None:
            sql += " AND key < %s"
            params += (end,)
        sql += " ORDER BY key"

        async def run(conn: Any) -> list[tuple[str, bytes]]:
            cursor = await conn.execute(sql, params)
            return [(key, bytes(value)) for key, value in await cursor.fetchall()]

        return await self._run(run)

    async def delete(self, session_id: str, key: str) -> bool:
        if "\x00" in session_id or "\x00" in key:
            return False

        async def run(conn: Any) -> bool:
            async with conn.transaction():
                # The session row first: the one lock order every write follows.
                cursor = await conn.execute(
                    "SELECT 1 FROM gonka_mux_sessions WHERE id = %s FOR UPDATE", (session_id,)
                )
                if await cursor.fetchone() is None:
                    return False
                cursor = await conn.execute(
                    "DELETE FROM gonka_mux_session_kv WHERE session = %s AND key = %s",
                    (session_id, key),
                )
                if cursor.rowcount == 0:
                    return False
                await self._lock_session(conn, session_id)
                return True

        return await self._run(run)

    # -- message log -----------------------------------------------------------------------

    async def append_messages(self, session_id: str, messages: Sequence[Mapping[str, Any]]) -> int:
        self._check_text(check_session_id(session_id), "session_id")
        encoded = [encode_message(m) for m in messages]

        async def run(conn: Any) -> int:
            async with conn.transaction():
                # The upsert locks the session's row until commit: concurrent appends wait
                # for one another, and each gets its own contiguous range of sequence numbers.
                length = await self._lock_session(conn, session_id, len(encoded))
                start = length - len(encoded)
                if encoded:
                    async with conn.cursor() as cursor:
                        await cursor.executemany(
                            "INSERT INTO gonka_mux_session_messages (session, seq, body)"
                            " VALUES (%s, %s, %s)",
                            [(session_id, start + i, body) for i, body in enumerate(encoded)],
                        )
                return length

        return await self._run(run)

    async def load_messages(self, session_id: str) -> list[Message]:
        if "\x00" in session_id:
            return []

        async def run(conn: Any) -> list[str]:
            cursor = await conn.execute(
                "SELECT body FROM gonka_mux_session_messages WHERE session = %s ORDER BY seq",
                (session_id,),
            )
            return [body for (body,) in await cursor.fetchall()]

        return [decode_message(body) for body in await self._run(run)]

    # -- activity and lifetime -------------------------------------------------------------

    async def touch(self, session_id: str) -> None:
        if "\x00" in session_id:
            return

        async def run(conn: Any) -> None:
            await conn.execute(
                f"UPDATE gonka_mux_sessions SET last_active = {_NOW} WHERE id = %(id)s",
                {"id": session_id, "now": self._now()},
            )

        await self._run(run)

    async def last_active(self, session_id: str) -> float | None:
        if "\x00" in session_id:
            return None

        async def run(conn: Any) -> float | None:
            cursor = await conn.execute(
                "SELECT last_active FROM gonka_mux_sessions WHERE id = %s", (session_id,)
            )
            row = await cursor.fetchone()
            return float(row[0]) if row else None

        return await self._run(run)

    async def sessions(self) -> list[str]:
        async def run(conn: Any) -> list[str]:
            cursor = await conn.execute("SELECT id FROM gonka_mux_sessions")
            return sorted(sid for (sid,) in await cursor.fetchall())

        return await self._run(run)

    async def delete_session(self, session_id: str) -> bool:
        if "\x00" in session_id:
            return False

        async def run(conn: Any) -> bool:
            async with conn.transaction():
                cursor = await conn.execute(
                    "DELETE FROM gonka_mux_sessions WHERE id = %s", (session_id,)
                )
                gone: bool = cursor.rowcount > 0
                await self._drop(conn, [session_id])
                return gone

        return await self._run(run)

    @staticmethod
    async def _drop(conn: Any, ids: list[str]) -> None:
        if not ids:
            return
        await conn.execute("DELETE FROM gonka_mux_session_messages WHERE session = ANY(%s)", (ids,))
        await conn.execute("DELETE FROM gonka_mux_session_kv WHERE session = ANY(%s)", (ids,))

    async def expire(self, ttl: float) -> list[str]:
        async def run(conn: Any) -> list[str]:
            async with conn.transaction():
                # Rows are locked in id order (no deadlock between two sweepers), and a row an
                # append refreshed meanwhile is re-checked against the cutoff, so it is kept.
                cursor = await conn.execute(
                    "DELETE FROM gonka_mux_sessions WHERE id IN ("
                    " SELECT id FROM gonka_mux_sessions"
                    f" WHERE last_active < {_NOW} - %(ttl)s ORDER BY id FOR UPDATE)"
                    f" AND last_active < {_NOW} - %(ttl)s RETURNING id",
                    {"now": self._now(), "ttl": float(ttl)},
                )
                ids = sorted(sid for (sid,) in await cursor.fetchall())
                await self._drop(conn, ids)
                return ids

        return await self._run(run)

    async def aclose(self) -> None:
        """Close the running loop's connections; forget the other loops' (closed when their
        loop is collected). The store may be used again afterwards: it reconnects."""
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:  # pragma: no cover - aclose is awaited, so a loop runs
            return
        pool = self._pools.pop(loop, None)
        self._pools.clear()
        if pool is not None:
            await pool.aclose()
