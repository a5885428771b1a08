"""Usage records on PostgreSQL, shared by every process on every host that meters into it.

:class:`PostgresUsageStore` answers the :class:`~gonka_mux.metering.stores.UsageStore` protocol
exactly like :class:`~gonka_mux.metering.stores.SqliteUsageStore` (same filters, same order, a
record stored again under its ``request_id`` replaces the earlier one), so
:class:`~gonka_mux.metering.UsageQuery`, ``gonka-mux usage --db postgresql://...`` and the HTML
report work unchanged. Open it through :func:`~gonka_mux.metering.stores.open_usage_store` (or
``[metering] path = "postgresql://..."``).

The table's columns are derived from :class:`UsageRecord`'s fields: a field added to the record
later gets its column (``ALTER TABLE ... ADD COLUMN IF NOT EXISTS``) when a store opens, so it is
never silently dropped. While the database is away, writes raise
:class:`~gonka_mux.errors.StoreUnavailableError`; the :class:`~gonka_mux.metering.Meter` keeps
the records in its local journal (``<state dir>/usage-journal/<database>``) and queue and writes
them once the database is back (idempotently: the ``request_id`` is the primary key).
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import MISSING, fields
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from .._exceptions import StoreUnavailableError
from .._paths import state_dir
from .._postgres import is_postgres_url, redact_url, require_psycopg, sync_pool
from .records import RECORD_FIELDS, UsageRecord
from .stores import FILTER_FIELDS, _check_filters, _clean_text

__all__ = ["TABLE", "PostgresUsageStore"]

log = logging.getLogger("gonka_mux.metering")

#: The table every gonka_mux process writes its usage records to.
TABLE = "gonka_mux_usage"


def _column_type(name: str, annotation: Any) -> str:
    """The PostgreSQL type of a record field, from its (string) annotation."""
    if name == "request_id":
        return "TEXT PRIMARY KEY"
    if name == "time":
        return "DOUBLE PRECISION NOT NULL"
    text = annotation if isinstance(annotation, str) else getattr(annotation, "__name__", "")
    kinds = {part.strip() for part in text.split("|")} - {"None"}
    if kinds == {"bool"}:
        return "BOOLEAN"
    if kinds == {"int"}:
        return "BIGINT"
    if kinds <= {"float", "int"} and kinds:
        return "DOUBLE PRECISION"
    return "TEXT"


def _columns() -> dict[str, str]:
    # Computed at use, not import: a field added to UsageRecord is always covered.
    return {f.name: _column_type(f.name, f.type) for f in fields(UsageRecord)}


def _bool_fields() -> frozenset[str]:
    return frozenset(name for name, kind in _columns().items() if kind == "BOOLEAN")


def _defaults_for_null() -> dict[str, Any]:
    """Defaults of the fields that cannot be None: a row stored before its column existed has
    NULL there and reads back as the field's default (what the record would have said)."""
    found: dict[str, Any] = {}
    for f in fields(UsageRecord):
        text = f.type if isinstance(f.type, str) else getattr(f.type, "__name__", "")
        if "None" in text:
            continue
        if f.default is not MISSING:
            found[f.name] = f.default
        elif f.default_factory is not MISSING:
            found[f.name] = f.default_factory()
    return found


def _clean(value: Any) -> Any:
    # PostgreSQL text cannot hold NUL; SQLite can. Keep the record, mark the character.
    value = _clean_text(value)
    if isinstance(value, str) and "\x00" in value:
        return value.replace("\x00", "\ufffd")
    return value


class PostgresUsageStore:
    """Usage records in a PostgreSQL table (``gonka_mux_usage``), through the process's pool.

    ``url``: ``postgresql://user:password@host:port/database``; its password never appears in a
    repr, a log line or an error. ``readonly=True`` (reports) never creates or changes anything.
    The table is created (or given the columns it lacks) on first use, so a store can be opened
    while the database is briefly away.
    """

    def __init__(self, url: str, *, readonly: bool = False) -> None:
        if not is_postgres_url(url):
            raise ValueError(
                f"PostgresUsageStore needs a postgresql:// URL, got {redact_url(str(url))!r}"
            )
        require_psycopg()
        self._url = url
        self.url = redact_url(url)  # what reprs, logs and errors show
        self.readonly = readonly
        self._ready = False
        self._closed = False

    def __repr__(self) -> str:
        return f"PostgresUsageStore(url={self.url!r}, readonly={self.readonly})"

    @property
    def journal_dir(self) -> Path | None:
        """Where a :class:`~gonka_mux.metering.Meter` on this host journals its records until
        the database took them: ``<state dir>/usage-journal/<database id>`` (no password in it)."""
        if self.readonly:
            return None
        parts = urlsplit(self._url)
        ident = f"{parts.username or ''}@{parts.hostname or ''}:{parts.port or ''}{parts.path}"
        digest = hashlib.sha256(ident.encode("utf-8")).hexdigest()[:16]
        return state_dir() / "usage-journal" / f"postgres-{digest}"

    # -- connections

    @contextmanager
    def _connection(self) -> Iterator[Any]:
        psycopg = require_psycopg()
        try:
            with sync_pool(self._url).connection() as conn:
                yield conn
        except psycopg.OperationalError as exc:  # includes the pool's PoolTimeout
            # The driver's text names host and port, never the password; it is kept out of
            # the chain anyway so a traceback carries only the redacted URL.
            raise StoreUnavailableError(
                f"the usage database {self.url} is unavailable ({type(exc).__name__}); "
                "records stay in the meter's journal and are written when it is back",
                backend="postgresql",
            ) from None

    def _ensure_table(self, conn: Any) -> bool:
        """Create the table or add missing columns; False for a read-only store without one."""
        if self._ready:
            return True
        if self.readonly:
            found = conn.execute("SELECT to_regclass(%s)", (TABLE,)).fetchone()[0]
            self._ready = found is not None
            return self._ready
        columns = _columns()
        ddl = ", ".join(f"{name} {kind}" for name, kind in columns.items())
        with conn.transaction():
            # Processes starting together would race on CREATE TABLE's catalogue rows.
            conn.execute("SELECT pg_advisory_xact_lock(hashtext(%s))", (TABLE,))
            conn.execute(f"CREATE TABLE IF NOT EXISTS {TABLE} ({ddl})")
            present = {
                row[0]
                for row in conn.execute(
                    "SELECT column_name FROM information_schema.columns "
                    "WHERE table_schema = current_schema() AND table_name = %s",
                    (TABLE,),
                )
            }
            for name, kind in columns.items():
                if name not in present:
                    kind = kind.replace(" PRIMARY KEY", "").replace(" NOT NULL", "")
                    conn.execute(f"ALTER TABLE {TABLE} ADD COLUMN IF NOT EXISTS {name} {kind}")
                    log.info("added column %s to %s in %s", name, TABLE, self.url)
            conn.execute(f"CREATE INDEX IF NOT EXISTS {TABLE}_time ON {TABLE} (time)")
            conn.execute(
                f"CREATE INDEX IF NOT EXISTS {TABLE}_session ON {TABLE} (session_id, time)"
            )
            conn.execute(f"CREATE INDEX IF NOT EXISTS {TABLE}_key ON {TABLE} (key, time)")
        self._ready = True
        return True

    # -- the UsageStore protocol

    def write(self, records: Sequence[UsageRecord]) -> None:
        """Store a batch in one transaction; a stored ``request_id`` is replaced (a journal
        replay after a crash therefore never counts a request twice)."""
        if self.readonly:
            raise PermissionError(f"{self!r} was opened read-only")
        if not records:
            return
        names = RECORD_FIELDS
        flags = _bool_fields()
        rows = [
            tuple(
                bool(value) if name in flags and value is not None else _clean(value)
                for name, value in ((name, getattr(r, name)) for name in names)
            )
            for r in records
        ]
        updates = ", ".join(f"{name} = EXCLUDED.{name}" for name in names if name != "request_id")
        sql = (
            f"INSERT INTO {TABLE} ({', '.join(names)}) VALUES ({', '.join(['%s'] * len(names))}) "
            f"ON CONFLICT (request_id) DO UPDATE SET {updates}"
        )
        with self._connection() as conn:
            self._ensure_table(conn)
            with conn.transaction(), conn.cursor() as cur:
                cur.executemany(sql, rows)

    def select(
        self, *, since: float | None = None, until: float | None = None, **equals: str | None
    ) -> list[UsageRecord]:
        _check_filters(equals)
        clauses: list[str] = []
        params: list[Any] = []
        if since is not None:
            clauses.append("time >= %s")
            params.append(since)
        if until is not None:
            clauses.append("time < %s")
            params.append(until)
        for name in FILTER_FIELDS:
            value = equals.get(name)
            if value is None:
                continue
            column = "COALESCE(served_model, model)" if name == "model" else name
            clauses.append(f"{column} = %s")
            params.append(value)
        where = f" WHERE {' AND '.join(clauses)}" if clauses else ""
        sql = f"SELECT {', '.join(RECORD_FIELDS)} FROM {TABLE}{where} ORDER BY time, request_id"
        with self._connection() as conn:
            if not self._ensure_table(conn):
                return []  # a read-only report on a database nothing was metered into yet
            rows = conn.execute(sql, params).fetchall()
        defaults = _defaults_for_null()
        records = []
        for row in rows:
            data = dict(zip(RECORD_FIELDS, row, strict=True))
            for name, default in defaults.items():
                if data.get(name) is None:
                    data[name] = default
            records.append(UsageRecord(**data))
        return records

    def close(self) -> None:
        # The pool is the process's, shared with every store on this database: leave it open.
        self._closed = True
