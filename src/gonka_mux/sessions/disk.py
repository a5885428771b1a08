"""Persistent session store in one SQLite file, shared by the processes of one host.

This is the default backend (the issue's "diskcache" slot). It uses the standard library's
sqlite3 directly rather than the diskcache package because a session store needs two things
diskcache's key-value API lacks: ordered prefix scans over one session's keys (diskcache walks
every key of the cache), and one inactivity clock per session (diskcache expires keys one by
one, so touching a session would rewrite each of its keys). Plain tables give both, plus
``BEGIN IMMEDIATE`` transactions that make appends atomic across processes.

WAL journal with ``synchronous=NORMAL``: a committed append survives the process being killed;
only a power loss can drop the last commits (``durable=True`` syncs every commit, for that).
"""

from __future__ import annotations

import asyncio
import os
import sqlite3
import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any, TypeVar

from gonka_mux._paths import state_dir
from gonka_mux.sessions.base import (
    Message,
    SessionError,
    check_key,
    check_session_id,
    decode_message,
    encode_message,
    prefix_end,
)

__all__ = ["DiskSessionStore"]

T = TypeVar("T")

_SCHEMA = [
    "CREATE TABLE IF NOT EXISTS sessions ("
    " id TEXT PRIMARY KEY, last_active REAL NOT NULL) WITHOUT ROWID",
    "CREATE INDEX IF NOT EXISTS sessions_last_active ON sessions (last_active)",
    "CREATE TABLE IF NOT EXISTS messages ("
    " session TEXT NOT NULL, seq INTEGER NOT NULL, body TEXT NOT NULL,"
    " PRIMARY KEY (session, seq)) WITHOUT ROWID",
    "CREATE TABLE IF NOT EXISTS kv ("
    " session TEXT NOT NULL, key TEXT NOT NULL, value BLOB NOT NULL,"
    " PRIMARY KEY (session, key)) WITHOUT ROWID",
]


def _default_path() -> Path:
    return state_dir() / "sessions.sqlite3"


class DiskSessionStore:
    """Sessions in a SQLite file (default ``sessions.sqlite3`` in the state directory:
    ``$GONKA_MUX_STATE_DIR``, else ``$XDG_STATE_HOME/gonka_mux``, else
    ``~/.local/state/gonka_mux``). A directory path means ``sessions.sqlite3`` inside it.

    Each call runs in a worker thread (the event loop never waits on the disk or on another
    process's lock); writers wait up to ``timeout`` seconds for one another.
    """

    def __init__(
        self,
        path: str | os.PathLike[str] | None = None,
        *,
        timeout: float = 30.0,
        durable: bool = False,
        clock: Callable[[], float] = time.time,
    ) -> None:
        resolved = Path(path).expanduser() if path is not None else _default_path()
        self.path = resolved / "sessions.sqlite3" if resolved.is_dir() else resolved
        self._clock = clock
        self._lock = threading.Lock()
        self._closed = False
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._conn = sqlite3.connect(
            str(self.path), timeout=timeout, isolation_level=None, check_same_thread=False
        )
        try:
            self._conn.execute("PRAGMA journal_mode=WAL")
            self._conn.execute(f"PRAGMA synchronous={'FULL' if durable else 'NORMAL'}")
            with self._transaction() as conn:
                for statement in _SCHEMA:
                    conn.execute(statement)
        except BaseException:
            self._conn.close()
            raise

    def __repr__(self) -> str:
        return f"DiskSessionStore(path={str(self.path)!r})"

    @contextmanager
    def _transaction(self) -> Iterator[sqlite3.Connection]:
        # BEGIN IMMEDIATE takes the write lock up front, so read-modify-write sequences (the
        # next sequence number of an append) are serialized across processes.
        self._conn.execute("BEGIN IMMEDIATE")
        try:
            yield self._conn
        except BaseException:
            self._conn.execute("ROLLBACK")
            raise
        self._conn.execute("COMMIT")

    async def _run(self, fn: Callable[..., T], *args: Any) -> T:
        return await asyncio.to_thread(self._locked, fn, *args)

    def _locked(self, fn: Callable[..., T], *args: Any) -> T:
        with self._lock:
            if self._closed:
                raise SessionError(f"{self!r} is closed; open a new store.")
            return fn(*args)

    def _mark_active(self, conn: sqlite3.Connection, session_id: str) -> None:
        conn.execute(
            "INSERT INTO sessions (id, last_active) VALUES (?, ?) "
            "ON CONFLICT (id) DO UPDATE SET last_active = excluded.last_active",
            (session_id, self._clock()),
        )

    # -- ordered key-value -----------------------------------------------------------------

    async def put(self, session_id: str, key: str, value: bytes) -> None:
        await self.put_many(session_id, [(key, value)])

    async def put_many(self, session_id: str, items: Sequence[tuple[str, bytes]]) -> None:
        check_session_id(session_id)
        rows = [(session_id, check_key(k), bytes(v)) for k, v in items]
        await self._run(self._put_many, session_id, rows)

    def _put_many(self, session_id: str, rows: list[tuple[str, str, bytes]]) -> None:
        with self._transaction() as conn:
            conn.executemany(
                "INSERT OR REPLACE INTO kv (session, key, value) VALUES (?, ?, ?)", rows
            )
            self._mark_active(conn, session_id)

    async def get(self, session_id: str, key: str) -> bytes | None:
        return await self._run(self._get, session_id, key)

    def _get(self, session_id: str, key: str) -> bytes | None:
        row = self._conn.execute(
            "SELECT value FROM kv WHERE session = ? AND key = ?", (session_id, key)
        ).fetchone()
        return bytes(row[0]) if row else None

    async def scan(self, session_id: str, prefix: str = "") -> list[tuple[str, bytes]]:
        return await self._run(self._scan, session_id, prefix)

    def _scan(self, session_id: str, prefix: str) -> list[tuple[str, bytes]]:
        end = prefix_end(prefix)
        sql = "SELECT key, value FROM kv WHERE session = ? AND key >= ?"
        params: tuple[Any, ...] = (session_id, prefix)
        if end is not None:
            sql += " AND key < ?"
            params += (end,)
        rows = self._conn.execute(sql + " ORDER BY key", params).fetchall()
        return [(key, bytes(value)) for key, value in rows]

    async def delete(self, session_id: str, key: str) -> bool:
        return await self._run(self._delete, session_id, key)

    def _delete(self, session_id: str, key: str) -> bool:
        with self._transaction() as conn:
            gone = conn.execute(
                "DELETE FROM kv WHERE session = ? AND key = ?", (session_id, key)
            ).rowcount
            if gone:
                self._mark_active(conn, session_id)
            return gone > 0

    # -- message log -----------------------------------------------------------------------

    async def append_messages(self, session_id: str, messages: Sequence[Mapping[str, Any]]) -> int:
        check_session_id(session_id)
        encoded = [encode_message(m) for m in messages]
        return await self._run(self._append, session_id, encoded)

    def _append(self, session_id: str, encoded: list[str]) -> int:
        with self._transaction() as conn:
            (start,) = conn.execute(
                "SELECT coalesce(max(seq) + 1, 0) FROM messages WHERE session = ?", (session_id,)
            ).fetchone()
            conn.executemany(
                "INSERT INTO messages (session, seq, body) VALUES (?, ?, ?)",
                [(session_id, start + i, body) for i, body in enumerate(encoded)],
            )
            self._mark_active(conn, session_id)
            return int(start) + len(encoded)

    async def load_messages(self, session_id: str) -> list[Message]:
        rows = await self._run(self._load, session_id)
        return [decode_message(body) for (body,) in rows]

    def _load(self, session_id: str) -> list[tuple[str]]:
        return self._conn.execute(
            "SELECT body FROM messages WHERE session = ? ORDER BY seq", (session_id,)
        ).fetchall()

    # -- activity and lifetime -------------------------------------------------------------

    async def touch(self, session_id: str) -> None:
        await self._run(self._touch, session_id)

    def _touch(self, session_id: str) -> None:
        self._conn.execute(
            "UPDATE sessions SET last_active = ? WHERE id = ?", (self._clock(), session_id)
        )

    async def last_active(self, session_id: str) -> float | None:
        return await self._run(self._last_active, session_id)

    def _last_active(self, session_id: str) -> float | None:
        row = self._conn.execute(
            "SELECT last_active FROM sessions WHERE id = ?", (session_id,)
        ).fetchone()
        return float(row[0]) if row else None

    async def sessions(self) -> list[str]:
        return await self._run(self._sessions)

    def _sessions(self) -> list[str]:
        return [r[0] for r in self._conn.execute("SELECT id FROM sessions ORDER BY id")]

    async def delete_session(self, session_id: str) -> bool:
        return await self._run(self._delete_session, session_id)

    def _delete_session(self, session_id: str) -> bool:
        with self._transaction() as conn:
            return self._drop(conn, [session_id]) > 0

    @staticmethod
    def _drop(conn: sqlite3.Connection, ids: list[str]) -> int:
        pairs = [(sid,) for sid in ids]
        conn.executemany("DELETE FROM messages WHERE session = ?", pairs)
        conn.executemany("DELETE FROM kv WHERE session = ?", pairs)
        before = conn.total_changes
        conn.executemany("DELETE FROM sessions WHERE id = ?", pairs)
        return conn.total_changes - before

    async def expire(self, ttl: float) -> list[str]:
        return await self._run(self._expire, ttl)

    def _expire(self, ttl: float) -> list[str]:
        # One transaction: a concurrent append either commits first (and refreshes last_active,
        # so the session is kept) or waits and starts a fresh session afterwards.
        with self._transaction() as conn:
            ids = [
                r[0]
                for r in conn.execute(
                    "SELECT id FROM sessions WHERE last_active < ? ORDER BY id",
                    (self._clock() - ttl,),
                )
            ]
            self._drop(conn, ids)
        return ids

    async def aclose(self) -> None:
        await asyncio.to_thread(self.close)

    def close(self) -> None:
        with self._lock:
            if not self._closed:
                self._closed = True
                self._conn.close()
