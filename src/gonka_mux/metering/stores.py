"""Where usage records live: in memory (tests, short scripts) or in a SQLite file (the default).

A store only writes batches and selects records; aggregation is :mod:`gonka_mux.metering.query`'s
job, so both stores answer every query the same way.
"""

from __future__ import annotations

import dataclasses
import math
import os
import re
import sqlite3
import threading
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

from .._paths import state_dir
from .records import RECORD_FIELDS, UsageRecord

__all__ = [
    "FILTER_FIELDS",
    "MemoryUsageStore",
    "SqliteUsageStore",
    "UsageStore",
    "default_usage_db",
    "open_usage_store",
    "sanitize_record",
]

#: Equality filters every store accepts; ``model`` matches the model that served the request.
FILTER_FIELDS = ("key", "session_id", "model", "endpoint", "tier", "status")

# 2: the response cache's columns (cache, saved_tokens, saved_cost), added to a version-1 file
# in place by ALTER TABLE; a version-1 file opened read-only is read without them.
_SCHEMA_VERSION = 2
_BOOL_FIELDS = ("hedged", "failed_over")
_COLUMN_TYPES = {
    "time": "REAL NOT NULL",
    "request_id": "TEXT PRIMARY KEY",
    "attempts": "INTEGER",
    "prompt_tokens": "INTEGER",
    "completion_tokens": "INTEGER",
    "reasoning_tokens": "INTEGER",
    "latency": "REAL",
    "ttft": "REAL",
    "cost": "REAL",
    "hedged": "INTEGER",
    "failed_over": "INTEGER",
    "saved_tokens": "INTEGER",
    "saved_cost": "REAL",
}
_COLUMNS = ", ".join(RECORD_FIELDS)


_SURROGATE = re.compile("[\ud800-\udfff]")


def _clean_text(value: Any) -> Any:
    if isinstance(value, str):
        try:
            value.encode("utf-8")
        except UnicodeEncodeError:
            return _SURROGATE.sub("\ufffd", value)
    return value


def sanitize_record(record: UsageRecord) -> UsageRecord:
    """A copy SQLite and JSON can always take: lone surrogates in text replaced by U+FFFD,
    non-finite floats and out-of-range integers dropped (None)."""
    changes: dict[str, Any] = {}
    for name in RECORD_FIELDS:
        value = getattr(record, name)
        clean = _clean_text(value)
        if (isinstance(clean, float) and not math.isfinite(clean)) or (
            isinstance(clean, int) and not isinstance(clean, bool) and abs(clean) >= 2**63
        ):
            clean = None
        elif clean is not None and not isinstance(clean, (str, int, float, bool)):
            clean = str(clean)
        if clean is not value:
            changes[name] = clean
    return dataclasses.replace(record, **changes) if changes else record


def default_usage_db() -> Path:
    """``usage.sqlite3`` in the state directory (:func:`gonka_mux._paths.state_dir`)."""
    return state_dir() / "usage.sqlite3"


@runtime_checkable
class UsageStore(Protocol):
    def write(self, records: Sequence[UsageRecord]) -> None:
        """Store a batch; a record whose ``request_id`` is already stored replaces it."""
        ...

    def select(
        self, *, since: float | None = None, until: float | None = None, **equals: str | None
    ) -> list[UsageRecord]:
        """Records with ``since <= time < until`` matching the :data:`FILTER_FIELDS` given."""
        ...

    def close(self) -> None: ...


def _check_filters(equals: dict[str, Any]) -> None:
    unknown = set(equals) - set(FILTER_FIELDS)
    if unknown:
        raise TypeError(
            f"unknown usage filter(s) {', '.join(sorted(unknown))}; use {', '.join(FILTER_FIELDS)}"
        )


class MemoryUsageStore:
    """Records in a dict, in arrival order; gone when the process ends."""

    def __init__(self, records: Iterable[UsageRecord] = ()) -> None:
        self._lock = threading.Lock()
        self._records: dict[str, UsageRecord] = {r.request_id: r for r in records}

    def write(self, records: Sequence[UsageRecord]) -> None:
        with self._lock:
            for record in records:
                self._records[record.request_id] = record

    def select(
        self, *, since: float | None = None, until: float | None = None, **equals: str | None
    ) -> list[UsageRecord]:
        _check_filters(equals)
        wanted = {k: v for k, v in equals.items() if v is not None}
        with self._lock:
            records = list(self._records.values())
        return [
            r
            for r in records
            if (since is None or r.time >= since)
            and (until is None or r.time < until)
            and all(_field(r, name) == value for name, value in wanted.items())
        ]

    def close(self) -> None:
        pass

    def __len__(self) -> int:
        return len(self._records)


def _field(record: UsageRecord, name: str) -> Any:
    return record.effective_model if name == "model" else getattr(record, name)


class SqliteUsageStore:
    """Records in a SQLite file (WAL mode, so a dashboard can read while the application writes).

    ``path`` defaults to :func:`default_usage_db`. ``readonly=True`` opens an existing file for
    reports without ever creating or changing it. The file is opened on first use.
    """

    def __init__(self, path: str | os.PathLike[str] | None = None, *, readonly: bool = False):
        self.path = Path(path) if path is not None else default_usage_db()
        self.readonly = readonly
        self._lock = threading.Lock()
        self._conn: sqlite3.Connection | None = None
        self._columns: tuple[str, ...] = RECORD_FIELDS  # what the file has (older: fewer)

    def __repr__(self) -> str:
        return f"SqliteUsageStore(path={str(self.path)!r}, readonly={self.readonly})"

    @property
    def journal_dir(self) -> Path | None:
        """Where a :class:`~gonka_mux.metering.Meter` keeps its crash journal for this file."""
        if self.readonly or str(self.path) == ":memory:":
            return None
        return self.path.with_name(self.path.name + ".journal")

    def write(self, records: Sequence[UsageRecord]) -> None:
        if self.readonly:
            raise PermissionError(f"{self!r} was opened read-only")
        # sqlite3 stores the bools as 0/1; _record_from_row turns them back. Text with a lone
        # surrogate cannot be encoded: it is stored with U+FFFD in its place.
        rows = [tuple(_clean_text(getattr(r, name)) for name in RECORD_FIELDS) for r in records]
        placeholders = ", ".join("?" * len(RECORD_FIELDS))
        with self._lock:
            conn = self._connection()
            with conn:  # one transaction per batch
                conn.executemany(
                    f"INSERT OR REPLACE INTO usage ({_COLUMNS}) VALUES ({placeholders})", rows
                )

    def select(
        self, *, since: float | None = None, until: float | None = None, **equals: str | None
    ) -> list[UsageRecord]:
        _check_filters(equals)
        clauses, params = [], []
        if since is not None:
            clauses.append("time >= ?")
            params.append(since)
        if until is not None:
            clauses.append("time < ?")
            params.append(until)
        for name, value in equals.items():
            if value is None:
                continue
            column = "COALESCE(served_model, model)" if name == "model" else name
            clauses.append(f"{column} = ?")
            params.append(value)
        where = f" WHERE {' AND '.join(clauses)}" if clauses else ""
        with self._lock:
            conn = self._connection()
            columns = self._columns
            sql = f"SELECT {', '.join(columns)} FROM usage{where} ORDER BY time"
            rows = conn.execute(sql, params).fetchall()
        return [_record_from_row(row, columns) for row in rows]

    def close(self) -> None:
        with self._lock:
            if self._conn is not None:
                self._conn.close()
                self._conn = None

    def _connection(self) -> sqlite3.Connection:
        if self._conn is not None:
            return self._conn
        if self.readonly:
            if not self.path.exists():
                raise FileNotFoundError(
                    f"no usage database at {str(self.path)!r}; pass its path (--db) or set "
                    "GONKA_MUX_STATE_DIR to the directory the application writes to"
                )
            conn = sqlite3.connect(
                f"{self.path.resolve().as_uri()}?mode=ro", uri=True, check_same_thread=False
            )
        else:
            self.path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
            if not self.path.exists():
                os.close(os.open(self.path, os.O_WRONLY | os.O_CREAT, 0o600))
            conn = sqlite3.connect(self.path, timeout=30.0, check_same_thread=False)
            conn.execute("PRAGMA journal_mode=WAL")
            conn.execute("PRAGMA synchronous=NORMAL")
            self._migrate(conn)
        if self.readonly:
            present = {row[1] for row in conn.execute("PRAGMA table_info(usage)")}
            self._columns = tuple(name for name in RECORD_FIELDS if name in present)
        self._conn = conn
        return conn

    @staticmethod
    def _migrate(conn: sqlite3.Connection) -> None:
        version = conn.execute("PRAGMA user_version").fetchone()[0]
        if version > _SCHEMA_VERSION:
            raise RuntimeError(
                f"the usage database was written by a newer gonka_mux (schema {version}); "
                "upgrade gonka_mux to read it"
            )
        columns = ", ".join(f"{name} {_COLUMN_TYPES.get(name, 'TEXT')}" for name in RECORD_FIELDS)
        with conn:
            conn.execute(f"CREATE TABLE IF NOT EXISTS usage ({columns})")
            present = {row[1] for row in conn.execute("PRAGMA table_info(usage)")}
            for name in RECORD_FIELDS:
                if name not in present:  # a file from an older schema: add what it lacks
                    kind = _COLUMN_TYPES.get(name, "TEXT")
                    conn.execute(f"ALTER TABLE usage ADD COLUMN {name} {kind}")
            conn.execute("CREATE INDEX IF NOT EXISTS usage_time ON usage (time)")
            conn.execute("CREATE INDEX IF NOT EXISTS usage_session ON usage (session_id, time)")
            conn.execute("CREATE INDEX IF NOT EXISTS usage_key ON usage (key, time)")
            conn.execute(f"PRAGMA user_version = {_SCHEMA_VERSION}")


def open_usage_store(
    path_or_url: str | os.PathLike[str] | None = None, *, readonly: bool = False
) -> UsageStore:
    """The usage store a user-supplied location names: a ``postgresql://`` URL opens a
    :class:`~gonka_mux.metering.postgres.PostgresUsageStore` (shared by many hosts), anything
    else a :class:`SqliteUsageStore` file (None: :func:`default_usage_db`)."""
    from .._postgres import is_postgres_url

    if is_postgres_url(path_or_url):
        from .postgres import PostgresUsageStore  # psycopg is imported only when asked for

        return PostgresUsageStore(str(path_or_url), readonly=readonly)
    return SqliteUsageStore(path_or_url, readonly=readonly)


def _record_from_row(row: Sequence[Any], columns: Sequence[str] = RECORD_FIELDS) -> UsageRecord:
    data = dict(zip(columns, row, strict=True))
    for name in _BOOL_FIELDS:
        data[name] = bool(data[name])
    # rows written before the cache columns existed hold NULL there: the fields' defaults
    for name in ("cache", "saved_tokens"):
        if data.get(name) is None:
            data.pop(name, None)
    return UsageRecord(**data)
