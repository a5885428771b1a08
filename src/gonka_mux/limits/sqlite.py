"""SQLite rate-limit backend: several processes on one host share one database file.

One row per key holds the two GCRA timestamps. Each admission is a ``BEGIN IMMEDIATE``
transaction (read, decide, write), so processes serialise on SQLite's write lock. The database
runs in WAL mode with ``synchronous=NORMAL``: a commit does not fsync, which keeps an admission in
the tens of microseconds; a power cut may forget the last few charges, which only errs towards
admitting a little more after a crash.

The lock is taken without SQLite's own busy handler (``busy_timeout = 0``): when another process
holds it, the blocking form sleeps and retries, and the async form awaits ``asyncio.sleep`` so the
event loop keeps running. The clock is wall time (``time.time``) because every process must read
the same one.
"""

from __future__ import annotations

import asyncio
import os
import random
import sqlite3
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

from gonka_mux._paths import state_dir

from .config import RateLimit
from .gcra import ADMITTED, gcra_adjust, gcra_admit

__all__ = ["SqliteLimitBackend"]

_SCHEMA = "CREATE TABLE IF NOT EXISTS gcra (k TEXT PRIMARY KEY, r REAL NOT NULL, t REAL NOT NULL)"
_SELECT = "SELECT r, t FROM gcra WHERE k = ?"
_UPSERT = (
    "INSERT INTO gcra (k, r, t) VALUES (?, ?, ?) ON CONFLICT (k) DO UPDATE SET r = excluded.r, "
    "t = excluded.t"
)
_SWEEP = "DELETE FROM gcra WHERE r < ? AND t < ?"
_SWEEP_EVERY = 5_000  # writes between deletions of rows whose buckets are full again
_BACKOFF_FIRST = 0.0002
_BACKOFF_MAX = 0.01
_GIVE_UP_AFTER = 30.0  # seconds of continuous lock contention before reporting an error


_T = TypeVar("_T")
_Txn = Callable[..., _T]


class _Busy(Exception):
    pass


class SqliteLimitBackend:
    """GCRA state in a SQLite file shared by the processes of one host.

    ``path`` defaults to ``limits.sqlite3`` in the state directory (``$GONKA_MUX_STATE_DIR``, else
    ``$XDG_STATE_HOME/gonka_mux``, else ``~/.local/state/gonka_mux``). The file is opened on first
    use and reopened after ``fork``.
    """

    #: the name ``mux.stats()["limits"]["backend"]`` shows
    kind = "sqlite"

    def __init__(
        self, path: str | os.PathLike[str] | None = None, *, clock: Callable[[], float] = time.time
    ) -> None:
        if path is None:
            path = state_dir() / "limits.sqlite3"
        self.path = Path(path)
        self._clock = clock
        self._lock = threading.Lock()
        self._conn: sqlite3.Connection | None = None
        self._pid = 0
        self._writes = 0

    def __repr__(self) -> str:
        return f"SqliteLimitBackend(path={str(self.path)!r})"

    # -- the public operations: one transaction each, retried while another process holds the lock

    def admit(self, key: str, limit: RateLimit, tokens: float) -> tuple[float, str]:
        return self._retry(self._admit_txn, key, limit, tokens)

    async def aadmit(self, key: str, limit: RateLimit, tokens: float) -> tuple[float, str]:
        return await self._aretry(self._admit_txn, key, limit, tokens)

    def adjust(self, key: str, limit: RateLimit, requests: float, tokens: float) -> None:
        self._retry(self._adjust_txn, key, limit, requests, tokens)

    async def aadjust(self, key: str, limit: RateLimit, requests: float, tokens: float) -> None:
        await self._aretry(self._adjust_txn, key, limit, requests, tokens)

    def close(self) -> None:
        with self._lock:
            if self._conn is not None and self._pid == os.getpid():
                self._conn.close()
            self._conn = None

    async def aclose(self) -> None:
        self.close()

    # -- transactions

    def _admit_txn(
        self, conn: sqlite3.Connection, key: str, limit: RateLimit, tokens: float
    ) -> tuple[float, str]:
        row = conn.execute(_SELECT, (key,)).fetchone()
        now = self._clock()
        tat_r, tat_t = row if row is not None else (0.0, 0.0)
        wait, blocked, new_r, new_t = gcra_admit(tat_r, tat_t, now, limit, tokens)
        if wait:
            return wait, blocked
        self._write(conn, key, new_r, new_t, now)
        return ADMITTED

    def _adjust_txn(
        self, conn: sqlite3.Connection, key: str, limit: RateLimit, requests: float, tokens: float
    ) -> None:
        row = conn.execute(_SELECT, (key,)).fetchone()
        now = self._clock()
        tat_r, tat_t = row if row is not None else (0.0, 0.0)
        new_r, new_t = gcra_adjust(tat_r, tat_t, now, limit, requests, tokens)
        self._write(conn, key, new_r, new_t, now)

    def _write(
        self, conn: sqlite3.Connection, key: str, tat_r: float, tat_t: float, now: float
    ) -> None:
        conn.execute(_UPSERT, (key, tat_r, tat_t))
        self._writes += 1
        if self._writes % _SWEEP_EVERY == 0:
            conn.execute(_SWEEP, (now, now))

    # -- plumbing

    def _attempt(self, txn: _Txn[_T], *args: Any) -> _T:
        with self._lock:
            conn = self._connection()
            try:
                conn.execute("BEGIN IMMEDIATE")
            except sqlite3.OperationalError as exc:
                if _is_busy(exc):
                    raise _Busy from exc
                raise
            try:
                result = txn(conn, *args)
                conn.execute("COMMIT")
            except BaseException:
                conn.execute("ROLLBACK")
                raise
            return result

    def _retry(self, txn: _Txn[_T], *args: Any) -> _T:
        delay, deadline = _BACKOFF_FIRST, None
        while True:
            try:
                return self._attempt(txn, *args)
            except _Busy:
                deadline = _check_deadline(deadline, self.path)
                time.sleep(delay * random.uniform(0.5, 1.5))
                delay = min(delay * 2, _BACKOFF_MAX)

    async def _aretry(self, txn: _Txn[_T], *args: Any) -> _T:
        delay, deadline = _BACKOFF_FIRST, None
        while True:
            try:
                return self._attempt(txn, *args)
            except _Busy:
                deadline = _check_deadline(deadline, self.path)
                await asyncio.sleep(delay * random.uniform(0.5, 1.5))
                delay = min(delay * 2, _BACKOFF_MAX)

    def _connection(self) -> sqlite3.Connection:
        pid = os.getpid()
        if self._conn is not None and self._pid == pid:
            return self._conn
        # A connection inherited through fork must not be used (or closed) by the child.
        self.path.parent.mkdir(parents=True, exist_ok=True)
        # Opening and switching to WAL may wait for other processes doing the same: allow that,
        # then turn SQLite's blocking busy handler off for the admissions themselves.
        conn = sqlite3.connect(
            self.path, timeout=_GIVE_UP_AFTER, isolation_level=None, check_same_thread=False
        )
        conn.execute("PRAGMA journal_mode=WAL")
        conn.execute("PRAGMA synchronous=NORMAL")
        conn.execute(_SCHEMA)
        conn.execute("PRAGMA busy_timeout=0")
        self._conn, self._pid = conn, pid
        return conn


def _is_busy(exc: sqlite3.OperationalError) -> bool:
    code = getattr(exc, "sqlite_errorcode", None)
    if code is not None:
        return code & 0xFF in (sqlite3.SQLITE_BUSY, sqlite3.SQLITE_LOCKED)
    return "locked" in str(exc) or "busy" in str(exc)


def _check_deadline(deadline: float | None, path: Path) -> float:
    now = time.monotonic()
    if deadline is None:
        return now + _GIVE_UP_AFTER
    if now > deadline:
        raise TimeoutError(
            f"the rate-limit database {str(path)!r} stayed locked for {_GIVE_UP_AFTER:g} s; "
            "another process may be stuck holding it"
        )
    return deadline
