"""Gateway API keys: stored hashed in SQLite, checked in constant time, each with a rate-limit tier.

A key reads ``gmx_<id>_<secret>``: ``id`` (12 hex digits) finds the row, and the SHA-256 of the
whole key is compared with the stored hash by :func:`hmac.compare_digest`. Only the hash is
stored, so a copy of the database does not let anyone call the gateway, and the plaintext is shown
exactly once, when :meth:`KeyStore.create` returns it. Keys have 256 bits of randomness, so a fast
hash is enough (no password-style stretching is needed).

The key id is what the rest of gonka_mux sees as the *caller* (limits, metering, sessions): it is
not a secret and may appear in logs and usage reports. The plaintext never does.

The store also keeps the hash of a generated admin key (``admin_key_hash``), so ``gonka-mux
gateway`` can print a generated admin key once and still accept it after a restart.

:class:`KeyStore` keeps all this in a SQLite file (one host); :class:`PostgresKeyStore` keeps it
in PostgreSQL, so several gateway replicas share one set of keys. :func:`open_key_store` picks
one from a path or a ``postgresql://`` URL.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import logging
import os
import re
import secrets
import sqlite3
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

from gonka_mux._exceptions import (  # not .errors: that imports openai (~0.4 s)
    GonkaMuxError,
    StoreUnavailableError,
)
from gonka_mux._postgres import is_postgres_url, redact_url, sync_pool

__all__ = [
    "ApiKey",
    "KeyNotFoundError",
    "KeyStore",
    "KeyStoreError",
    "PostgresKeyStore",
    "hash_key",
    "open_key_store",
]

log = logging.getLogger("gonka_mux.gateway")

T = TypeVar("T")

KEY_PREFIX = "gmx_"
_KEY_RE = re.compile(r"^gmx_([0-9a-f]{12})_([A-Za-z0-9_-]{32,128})$")
_TIER_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.:-]{0,63}$")
_MAX_NAME = 200
# compare_digest against this when the key id is unknown, so that path costs the same.
_DUMMY_HASH = hashlib.sha256(b"gonka-mux-no-such-key").hexdigest()

_SCHEMA = """
CREATE TABLE IF NOT EXISTS api_keys (
    id TEXT PRIMARY KEY,
    hash TEXT NOT NULL,
    name TEXT NOT NULL,
    tier TEXT NOT NULL,
    created_at REAL NOT NULL,
    revoked_at REAL
);
CREATE TABLE IF NOT EXISTS gateway_meta (
    name TEXT PRIMARY KEY,
    value TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS memory_usage (
    key_id TEXT NOT NULL,
    namespace TEXT NOT NULL,
    item TEXT NOT NULL,
    bytes INTEGER NOT NULL,
    PRIMARY KEY (key_id, namespace, item)
);
"""


class KeyStoreError(GonkaMuxError, ValueError):
    """A key-store operation got bad input (a malformed tier or name)."""


class KeyNotFoundError(GonkaMuxError, LookupError):
    """No key has that id."""


def hash_key(plaintext: str) -> str:
    """The stored form of a key: hex SHA-256 of its UTF-8 text."""
    return hashlib.sha256(plaintext.encode("utf-8", "surrogatepass")).hexdigest()


def constant_time_equal(a: str, b: str) -> bool:
    """Compare two secrets without leaking where they differ (or their lengths)."""
    return hmac.compare_digest(hash_key(a), hash_key(b))


@dataclass(frozen=True)
class ApiKey:
    """One gateway API key, without its secret. ``id`` is the caller name used everywhere."""

    id: str
    name: str
    tier: str
    created_at: float
    revoked_at: float | None = None

    @property
    def active(self) -> bool:
        return self.revoked_at is None

    @property
    def hint(self) -> str:
        """How the key starts, to recognise it in a list (``gmx_<id>_...``)."""
        return f"{KEY_PREFIX}{self.id}_..."

    def to_dict(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "name": self.name,
            "tier": self.tier,
            "hint": self.hint,
            "active": self.active,
            "created_at": self.created_at,
            "revoked_at": self.revoked_at,
        }


def _key_id(plaintext: Any) -> str | None:
    match = _KEY_RE.match(plaintext) if isinstance(plaintext, str) else None
    return None if match is None else match.group(1)


def _checked(plaintext: str, entry: tuple[str, ApiKey] | None) -> ApiKey | None:
    """The key if ``plaintext`` hashes to its stored hash and it is active (constant time; an
    unknown id is compared against a dummy hash, so that path costs the same)."""
    if entry is None:
        hmac.compare_digest(hash_key(plaintext), _DUMMY_HASH)
        return None
    stored, record = entry
    if not hmac.compare_digest(hash_key(plaintext), stored):
        return None
    return record if record.active else None


def _check_tier(tier: Any) -> str:
    if not isinstance(tier, str) or not _TIER_RE.match(tier):
        raise KeyStoreError(
            f"invalid tier {tier!r}: use 1-64 letters, digits or _ . : - (e.g. 'free', 'pro')"
        )
    return tier


def _check_name(name: Any) -> str:
    if not isinstance(name, str) or len(name) > _MAX_NAME:
        raise KeyStoreError(f"key name must be a string of at most {_MAX_NAME} characters")
    return name


class KeyStore:
    """API keys in a SQLite file (``":memory:"`` for a throwaway store).

    Safe to share between threads, and between processes on one host (SQLite WAL): a key
    revoked or re-tiered by another process is seen here within ``cache_ttl`` seconds (keys are
    cached briefly because a lookup happens on every request); changes made through this object
    are seen at once.
    """

    def __init__(self, path: str | os.PathLike[str] = ":memory:", *, cache_ttl: float = 2.0):
        self.path = str(path)
        if self.path != ":memory:":
            Path(self.path).expanduser().parent.mkdir(parents=True, exist_ok=True)
        self._conn = sqlite3.connect(
            self.path, check_same_thread=False, isolation_level=None, timeout=10.0
        )
        self._lock = threading.Lock()
        with self._lock:
            if self.path != ":memory:":
                self._conn.execute("PRAGMA journal_mode=WAL")
                try:
                    os.chmod(self.path, 0o600)  # hashes only, but nobody else needs to read it
                except OSError:
                    pass
            self._conn.executescript(_SCHEMA)
        self.cache_ttl = cache_ttl
        self._cache: dict[str, tuple[float, str, ApiKey]] = {}
        self._lookups: dict[str, asyncio.Future[Any]] = {}  # see averify

    def __repr__(self) -> str:
        return f"KeyStore(path={self.path!r})"

    @contextmanager
    def _tx(self) -> Iterator[sqlite3.Connection]:
        with self._lock:
            self._conn.execute("BEGIN IMMEDIATE")
            try:
                yield self._conn
            except BaseException:
                self._conn.execute("ROLLBACK")
                raise
            self._conn.execute("COMMIT")

    # -- keys -----------------------------------------------------------------------------
    def create(self, name: str = "", tier: str = "default") -> tuple[ApiKey, str]:
        """Make a key; returns its record and the plaintext, which is never shown again."""
        _check_name(name)
        _check_tier(tier)
        key_id = secrets.token_hex(6)
        plaintext = f"{KEY_PREFIX}{key_id}_{secrets.token_urlsafe(32)}"
        record = ApiKey(key_id, name, tier, time.time())
        with self._tx() as db:
            db.execute(
                "INSERT INTO api_keys (id, hash, name, tier, created_at) VALUES (?, ?, ?, ?, ?)",
                (key_id, hash_key(plaintext), name, tier, record.created_at),
            )
        return record, plaintext

    def get(self, key_id: str) -> ApiKey:
        row = self._row(key_id)
        if row is None:
            raise KeyNotFoundError(f"no API key with id {key_id!r}")
        return row[1]

    def list(self, *, include_revoked: bool = True) -> list[ApiKey]:
        sql = "SELECT id, hash, name, tier, created_at, revoked_at FROM api_keys"
        if not include_revoked:
            sql += " WHERE revoked_at IS NULL"
        with self._lock:
            rows = self._conn.execute(sql + " ORDER BY created_at, id").fetchall()
        return [self._record(row)[1] for row in rows]

    def revoke(self, key_id: str) -> ApiKey:
        """Revoke a key (idempotent); its usage records stay."""
        with self._tx() as db:
            db.execute(
                "UPDATE api_keys SET revoked_at = ? WHERE id = ? AND revoked_at IS NULL",
                (time.time(), key_id),
            )
        self._cache.pop(key_id, None)
        return self.get(key_id)

    def set_tier(self, key_id: str, tier: str) -> ApiKey:
        _check_tier(tier)
        with self._tx() as db:
            changed = db.execute(
                "UPDATE api_keys SET tier = ? WHERE id = ?", (tier, key_id)
            ).rowcount
        self._cache.pop(key_id, None)
        if not changed:
            raise KeyNotFoundError(f"no API key with id {key_id!r}")
        return self.get(key_id)

    #: Whether a lookup may wait on the network (a remote database): the gateway then runs the
    #: store's queries on a worker thread, not on its event loop. SQLite's are local and short.
    blocking_io = False

    def verify(self, plaintext: str) -> ApiKey | None:
        """The active key matching ``plaintext``, or None (unknown, malformed or revoked)."""
        key_id = _key_id(plaintext)
        if key_id is None:
            return None
        now = time.monotonic()
        entry = self._cached(key_id, now)
        if entry is None:
            entry = self._remember(key_id, self._row(key_id), now)
        return _checked(plaintext, entry)

    async def averify(self, plaintext: str) -> ApiKey | None:
        """:meth:`verify` for an event loop: a cached key is checked at once; a lookup of a
        store with :attr:`blocking_io` (PostgreSQL) runs on a worker thread, so the loop keeps
        serving the other requests while the database answers (or times out). Concurrent
        requests with one key share its lookup: a burst of a key's requests when its cache
        entry expires (or against a slow database) costs one query, not one per request."""
        key_id = _key_id(plaintext)
        if key_id is None:
            return None
        now = time.monotonic()
        entry = self._cached(key_id, now)
        if entry is None:
            if self.blocking_io:
                row = await self._shared_lookup(key_id)
            else:
                row = self._row(key_id)
            entry = self._remember(key_id, row, now)
        return _checked(plaintext, entry)

    async def _shared_lookup(self, key_id: str) -> tuple[str, ApiKey] | None:
        loop = asyncio.get_running_loop()
        lookup = self._lookups.get(key_id)
        if lookup is None or lookup.get_loop() is not loop:
            lookup = asyncio.ensure_future(asyncio.to_thread(self._row, key_id))
            self._lookups[key_id] = lookup

            def done(finished: asyncio.Future[Any], key_id: str = key_id) -> None:
                if self._lookups.get(key_id) is finished:
                    del self._lookups[key_id]
                if not finished.cancelled():
                    finished.exception()  # retrieved: every waiter may have gone

            lookup.add_done_callback(done)
        # shield: a request that goes away (its client disconnected) does not cancel the
        # lookup the others wait on
        return await asyncio.shield(lookup)  # type: ignore[no-any-return]

    def _cached(self, key_id: str, now: float) -> tuple[str, ApiKey] | None:
        cached = self._cache.get(key_id)
        if cached is not None and now - cached[0] < self.cache_ttl:
            return cached[1], cached[2]
        return None

    def _remember(
        self, key_id: str, row: tuple[str, ApiKey] | None, now: float
    ) -> tuple[str, ApiKey] | None:
        if row is not None:
            if len(self._cache) > 10_000:
                self._cache.clear()
            self._cache[key_id] = (now, row[0], row[1])
        return row

    def _row(self, key_id: str) -> tuple[str, ApiKey] | None:
        with self._lock:
            row = self._conn.execute(
                "SELECT id, hash, name, tier, created_at, revoked_at FROM api_keys WHERE id = ?",
                (key_id,),
            ).fetchone()
        return None if row is None else self._record(row)

    @staticmethod
    def _record(row: tuple[Any, ...]) -> tuple[str, ApiKey]:
        key_id, stored, name, tier, created_at, revoked_at = row
        return stored, ApiKey(key_id, name, tier, created_at, revoked_at)

    # -- the generated admin key ------------------------------------------------------------
    def admin_key_hash(self) -> str | None:
        with self._lock:
            row = self._conn.execute(
                "SELECT value FROM gateway_meta WHERE name = 'admin_key_hash'"
            ).fetchone()
        return None if row is None else str(row[0])

    # -- per-key memory accounting (the gateway's storage quota) ---------------------------

    def memory_used(self, key_id: str, exclude: tuple[str, str] | None = None) -> int:
        """Bytes of memory entries stored by ``key_id`` (optionally not counting one entry,
        ``(namespace, item)``, that is about to be replaced)."""
        sql = "SELECT COALESCE(SUM(bytes), 0) FROM memory_usage WHERE key_id = ?"
        params: list[Any] = [key_id]
        if exclude is not None:
            sql += " AND NOT (namespace = ? AND item = ?)"
            params.extend(exclude)
        with self._lock:
            return int(self._conn.execute(sql, params).fetchone()[0])

    def memory_set(self, key_id: str, namespace: str, item: str, size: int) -> None:
        with self._lock:
            self._conn.execute(
                "INSERT OR REPLACE INTO memory_usage (key_id, namespace, item, bytes) "
                "VALUES (?, ?, ?, ?)",
                (key_id, namespace, item, size),
            )

    def memory_forget(self, key_id: str, namespace: str, item: str) -> None:
        with self._lock:
            self._conn.execute(
                "DELETE FROM memory_usage WHERE key_id = ? AND namespace = ? AND item = ?",
                (key_id, namespace, item),
            )

    def generate_admin_key(self) -> str:
        """Make a new admin key, store its hash (replacing any old one), return the plaintext."""
        plaintext = f"gmx_admin_{secrets.token_urlsafe(32)}"
        with self._tx() as db:
            db.execute(
                "INSERT OR REPLACE INTO gateway_meta (name, value) VALUES ('admin_key_hash', ?)",
                (hash_key(plaintext),),
            )
        return plaintext

    def close(self) -> None:
        with self._lock:
            self._conn.close()


# Table names carry a gateway_ prefix: the same database also holds usage, jobs, sessions and
# memory when the whole fleet shares one PostgreSQL.
_PG_SCHEMA = (
    """CREATE TABLE IF NOT EXISTS gateway_api_keys (
        id TEXT PRIMARY KEY,
        hash TEXT NOT NULL,
        name TEXT NOT NULL,
        tier TEXT NOT NULL,
        created_at DOUBLE PRECISION NOT NULL,
        revoked_at DOUBLE PRECISION
    )""",
    """CREATE TABLE IF NOT EXISTS gateway_meta (
        name TEXT PRIMARY KEY,
        value TEXT NOT NULL
    )""",
    """CREATE TABLE IF NOT EXISTS gateway_memory_usage (
        key_id TEXT NOT NULL,
        namespace TEXT NOT NULL,
        item TEXT NOT NULL,
        bytes BIGINT NOT NULL,
        PRIMARY KEY (key_id, namespace, item)
    )""",
)
# Replicas starting together would race on CREATE TABLE IF NOT EXISTS (a unique violation in
# pg_type); a transaction-scoped advisory lock makes them take turns.
_PG_SCHEMA_LOCK = 0x676D785F6B657973  # "gmx_keys"
_PG_COLUMNS = "id, hash, name, tier, created_at, revoked_at"
DEFAULT_PG_CACHE_TTL = 0.5


class PostgresKeyStore(KeyStore):
    """API keys in PostgreSQL, shared by every gateway replica that is given the same URL.

    Same API, hashing and constant-time check as :class:`KeyStore`. A key revoked or
    re-tiered through any replica is refused by every other one within ``cache_ttl`` seconds
    (0.5 by default: a verified key is cached that long, so a busy key costs one query per
    ``cache_ttl`` rather than one per request). When the database cannot be reached, operations
    raise :class:`~gonka_mux.StoreUnavailableError` (whose message never holds the password)
    after waiting at most ``timeout`` seconds for a connection. The methods are synchronous; the
    gateway calls them on a worker thread (:meth:`averify`, :attr:`blocking_io`), so a slow
    or unreachable database holds up only the requests that need it, not the event loop. The
    connection pool is the process's shared one for ``url`` (``gonka_mux._postgres``), so
    :meth:`close` leaves it open for the other stores on the same database.
    """

    blocking_io = True

    def __init__(
        self, url: str, *, cache_ttl: float = DEFAULT_PG_CACHE_TTL, timeout: float = 2.0
    ) -> None:
        if not is_postgres_url(url):
            raise KeyStoreError("PostgresKeyStore needs a postgresql:// URL")
        self._url = url
        self.path = redact_url(url)  # what messages show (the CLI prints where keys live)
        self.cache_ttl = cache_ttl
        self._timeout = timeout
        self._cache: dict[str, tuple[float, str, ApiKey]] = {}
        self._lookups: dict[str, asyncio.Future[Any]] = {}  # see averify
        self._pool = sync_pool(url)
        self._closed = False
        self._run(self._create_schema)

    def __repr__(self) -> str:
        return f"PostgresKeyStore(url={self.path!r})"

    @staticmethod
    def _create_schema(conn: Any) -> None:
        with conn.transaction():
            conn.execute("SELECT pg_advisory_xact_lock(%s)", (_PG_SCHEMA_LOCK,))
            for statement in _PG_SCHEMA:
                conn.execute(statement)

    def _run(self, work: Callable[[Any], T]) -> T:
        """``work(conn)`` on a pooled connection. The driver's failures to reach the server
        become StoreUnavailableError (named by type only: a driver message may quote the URL).

        After a server restart or failover every idle pooled connection is dead, so a failed
        attempt has the pool test its idle connections (dropping the dead ones) and tries once
        more: one lost connection costs no request. Every statement here is safe to repeat
        (upserts, updates to fixed values, reads; a repeated insert of a new key fails on its
        unique id rather than making two keys)."""
        import psycopg
        import psycopg_pool

        if self._closed:
            raise KeyStoreError(f"{self!r} is closed")
        for attempt in (1, 2):
            try:
                with self._pool.connection(timeout=self._timeout) as conn:
                    return work(conn)
            except psycopg.OperationalError as exc:
                if attempt == 1:
                    self._pool.check()
                    continue
                failure: Exception = exc
            except psycopg_pool.PoolTimeout as exc:
                failure = exc
            break
        log.warning("gateway key database %s unreachable: %s", self.path, type(failure).__name__)
        raise StoreUnavailableError(
            f"the gateway's key database ({self.path}) cannot be reached right now "
            f"({type(failure).__name__}); retry shortly",
            backend="postgresql",
        ) from None

    def _fetchone(self, sql: str, params: tuple[Any, ...] = ()) -> tuple[Any, ...] | None:
        def work(conn: Any) -> tuple[Any, ...] | None:
            row: tuple[Any, ...] | None = conn.execute(sql, params).fetchone()
            return row

        return self._run(work)

    def _execute(self, sql: str, params: tuple[Any, ...] = ()) -> int:
        """Run one statement (autocommit); returns the affected row count."""
        return self._run(lambda conn: int(conn.execute(sql, params).rowcount))

    # -- keys -----------------------------------------------------------------------------
    def create(self, name: str = "", tier: str = "default") -> tuple[ApiKey, str]:
        _check_name(name)
        _check_tier(tier)
        key_id = secrets.token_hex(6)
        plaintext = f"{KEY_PREFIX}{key_id}_{secrets.token_urlsafe(32)}"
        record = ApiKey(key_id, name, tier, time.time())
        self._execute(
            "INSERT INTO gateway_api_keys (id, hash, name, tier, created_at) "
            "VALUES (%s, %s, %s, %s, %s)",
            (key_id, hash_key(plaintext), name, tier, record.created_at),
        )
        return record, plaintext

    def list(self, *, include_revoked: bool = True) -> list[ApiKey]:
        sql = f"SELECT {_PG_COLUMNS} FROM gateway_api_keys"
        if not include_revoked:
            sql += " WHERE revoked_at IS NULL"
        rows = self._run(lambda conn: conn.execute(sql + " ORDER BY created_at, id").fetchall())
        return [self._record(tuple(row))[1] for row in rows]

    def revoke(self, key_id: str) -> ApiKey:
        self._execute(
            "UPDATE gateway_api_keys SET revoked_at = %s WHERE id = %s AND revoked_at IS NULL",
            (time.time(), key_id),
        )
        self._cache.pop(key_id, None)
        return self.get(key_id)

    def set_tier(self, key_id: str, tier: str) -> ApiKey:
        _check_tier(tier)
        changed = self._execute(
            "UPDATE gateway_api_keys SET tier = %s WHERE id = %s", (tier, key_id)
        )
        self._cache.pop(key_id, None)
        if not changed:
            raise KeyNotFoundError(f"no API key with id {key_id!r}")
        return self.get(key_id)

    def _row(self, key_id: str) -> tuple[str, ApiKey] | None:
        row = self._fetchone(f"SELECT {_PG_COLUMNS} FROM gateway_api_keys WHERE id = %s", (key_id,))
        return None if row is None else self._record(row)

    # -- the generated admin key ------------------------------------------------------------
    def admin_key_hash(self) -> str | None:
        row = self._fetchone("SELECT value FROM gateway_meta WHERE name = 'admin_key_hash'")
        return None if row is None else str(row[0])

    def generate_admin_key(self) -> str:
        plaintext = f"gmx_admin_{secrets.token_urlsafe(32)}"
        self._execute(
            "INSERT INTO gateway_meta (name, value) VALUES ('admin_key_hash', %s) "
            "ON CONFLICT (name) DO UPDATE SET value = EXCLUDED.value",
            (hash_key(plaintext),),
        )
        return plaintext

    # -- per-key memory accounting ----------------------------------------------------------
    def memory_used(self, key_id: str, exclude: tuple[str, str] | None = None) -> int:
        sql = "SELECT COALESCE(SUM(bytes), 0) FROM gateway_memory_usage WHERE key_id = %s"
        params: tuple[Any, ...] = (key_id,)
        if exclude is not None:
            sql += " AND NOT (namespace = %s AND item = %s)"
            params += tuple(exclude)
        row = self._fetchone(sql, params)
        return int(row[0]) if row is not None else 0

    def memory_set(self, key_id: str, namespace: str, item: str, size: int) -> None:
        self._execute(
            "INSERT INTO gateway_memory_usage (key_id, namespace, item, bytes) "
            "VALUES (%s, %s, %s, %s) "
            "ON CONFLICT (key_id, namespace, item) DO UPDATE SET bytes = EXCLUDED.bytes",
            (key_id, namespace, item, size),
        )

    def memory_forget(self, key_id: str, namespace: str, item: str) -> None:
        self._execute(
            "DELETE FROM gateway_memory_usage WHERE key_id = %s AND namespace = %s AND item = %s",
            (key_id, namespace, item),
        )

    def close(self) -> None:
        # The pool is shared with the other stores on this database: leave it to them.
        self._closed = True


def open_key_store(location: str | os.PathLike[str], **options: Any) -> KeyStore:
    """A :class:`PostgresKeyStore` for a ``postgresql://`` URL, else a SQLite :class:`KeyStore`
    at the path (``options``: ``cache_ttl``...)."""
    if is_postgres_url(location):
        return PostgresKeyStore(str(location), **options)
    return KeyStore(location, **options)
