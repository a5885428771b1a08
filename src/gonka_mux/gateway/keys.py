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
"""

from __future__ import annotations

import hashlib
import hmac
import os
import re
import secrets
import sqlite3
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from gonka_mux._exceptions import GonkaMuxError  # not .errors: that imports openai (~0.4 s)

__all__ = [
    "ApiKey",
    "KeyNotFoundError",
    "KeyStore",
    "KeyStoreError",
    "hash_key",
]

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

    def verify(self, plaintext: str) -> ApiKey | None:
        """The active key matching ``plaintext``, or None (unknown, malformed or revoked)."""
        match = _KEY_RE.match(plaintext) if isinstance(plaintext, str) else None
        if match is None:
            return None
        key_id = match.group(1)
        now = time.monotonic()
        cached = self._cache.get(key_id)
        if cached is not None and now - cached[0] < self.cache_ttl:
            stored, record = cached[1], cached[2]
        else:
            row = self._row(key_id)
            if row is None:
                hmac.compare_digest(hash_key(plaintext), _DUMMY_HASH)
                return None
            stored, record = row
            if len(self._cache) > 10_000:
                self._cache.clear()
            self._cache[key_id] = (now, stored, record)
        if not hmac.compare_digest(hash_key(plaintext), stored):
            return None
        return record if record.active else None

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
