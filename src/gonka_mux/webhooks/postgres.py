"""Jobs and webhook deliveries on PostgreSQL, shared by runners on many hosts.

:class:`PostgresJobStore` answers the :class:`~gonka_mux.webhooks.store.JobStore` protocol like
:class:`~gonka_mux.webhooks.store.SQLiteJobStore` and is ``shared``: a
:class:`~gonka_mux.webhooks.JobRunner` on it claims each job (``SELECT ... FOR UPDATE SKIP
LOCKED``, then ``claimed_by`` / ``lease_until``) before running it, renews the lease while it
runs, and polls for jobs nobody holds (new ones, and those whose runner died: its lease expired).
A job's outcome is recorded once (a runner that lost its lease and finishes late gets
:class:`~gonka_mux.webhooks.store.JobAlreadyFinishedError`), so its webhook delivery is created
once; deliveries are claimed the same way before each POST, so one runner sends each attempt.

**Webhook secrets** are sealed exactly as in SQLite (``enc1:``, see ``_SecretBox``). The key must
be the same on every host that runs jobs from the database, so it does not live beside a file:

1. ``secret_key=`` (32 bytes, or 64 hex characters, or base64 of 32 bytes), else
2. ``$GONKA_MUX_WEBHOOK_SECRET_KEY`` (hex or base64, as above), else
3. the file ``key_path`` (default ``<state dir>/jobs-postgres.key``, created 0600 with a random
   key when missing: copy it to every host, or set the variable).

The database keeps a fingerprint of the key (an HMAC of a constant, revealing nothing), so a
host with a different key is refused (:class:`~gonka_mux.webhooks.store.JobStoreError`) on its
first use of the store instead of failing to sign deliveries later.
While the database is away, every method raises :class:`~gonka_mux.errors.StoreUnavailableError`
(retryable); the URL's password never appears in a repr, a log line or an error.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import logging
import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from gonka_mux._exceptions import StoreUnavailableError
from gonka_mux._paths import state_dir
from gonka_mux._postgres import is_postgres_url, redact_url, require_psycopg, sync_pool
from gonka_mux.webhooks.store import (
    _DELIVERY_COLUMNS,
    _JOB_COLUMNS,
    Delivery,
    DeliveryStatus,
    Job,
    JobAlreadyFinishedError,
    JobNotFoundError,
    JobStatus,
    JobStoreError,
    _delivery_from_row,
    _dumps,
    _job_from_row,
    _SecretBox,
    _SqlJobReads,
)

__all__ = ["KEY_ENV", "PostgresJobStore"]

logger = logging.getLogger("gonka_mux.webhooks")

#: The environment variable holding the webhook secret key shared by every host.
KEY_ENV = "GONKA_MUX_WEBHOOK_SECRET_KEY"

_JOBS = "gonka_mux_jobs"
_DELIVERIES = "gonka_mux_job_deliveries"
_META = "gonka_mux_job_meta"

_SCHEMA = f"""
CREATE TABLE IF NOT EXISTS {_JOBS} (
    id TEXT PRIMARY KEY,
    params TEXT NOT NULL,
    status TEXT NOT NULL,
    result TEXT,
    error TEXT,
    attempts INTEGER NOT NULL DEFAULT 0,
    webhook_url TEXT,
    webhook_secret TEXT,
    created_at DOUBLE PRECISION NOT NULL,
    updated_at DOUBLE PRECISION NOT NULL,
    started_at DOUBLE PRECISION,
    finished_at DOUBLE PRECISION,
    claimed_by TEXT,
    lease_until DOUBLE PRECISION
);
CREATE INDEX IF NOT EXISTS {_JOBS}_by_status ON {_JOBS} (status, created_at);
CREATE TABLE IF NOT EXISTS {_DELIVERIES} (
    id TEXT PRIMARY KEY,
    job_id TEXT NOT NULL REFERENCES {_JOBS} (id) ON DELETE CASCADE,
    event TEXT NOT NULL,
    body TEXT NOT NULL,
    status TEXT NOT NULL,
    attempts INTEGER NOT NULL DEFAULT 0,
    next_attempt_at DOUBLE PRECISION NOT NULL,
    last_error TEXT,
    created_at DOUBLE PRECISION NOT NULL,
    updated_at DOUBLE PRECISION NOT NULL,
    delivered_at DOUBLE PRECISION,
    claimed_by TEXT,
    lease_until DOUBLE PRECISION
);
CREATE INDEX IF NOT EXISTS {_DELIVERIES}_by_status ON {_DELIVERIES} (status, next_attempt_at);
CREATE INDEX IF NOT EXISTS {_DELIVERIES}_by_job ON {_DELIVERIES} (job_id);
CREATE TABLE IF NOT EXISTS {_META} (name TEXT PRIMARY KEY, value TEXT NOT NULL);
"""

_UNFINISHED = (JobStatus.QUEUED.value, JobStatus.RUNNING.value)
_PENDING = DeliveryStatus.PENDING.value


def _parse_key(value: str | bytes, where: str) -> bytes:
    """32 key bytes from raw bytes, 64 hex characters or base64; the value is never echoed."""
    if isinstance(value, bytes) and len(value) == 32:
        return value
    text = value.decode("ascii", "replace") if isinstance(value, bytes) else value
    text = text.strip()
    try:
        if len(text) == 64:
            return bytes.fromhex(text)
        key = base64.b64decode(text + "=" * (-len(text) % 4), altchars=b"-_", validate=False)
        if len(key) == 32:
            return key
    except (ValueError, binascii.Error):
        pass
    raise ValueError(
        f"the webhook secret key from {where} must be 32 bytes given as 64 hex characters or "
        'base64 (make one with: python -c "import secrets; print(secrets.token_hex(32))")'
    )


def _key_from_file(path: Path) -> bytes:
    try:
        fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o600)
    except FileExistsError:
        key = path.read_bytes()
        if len(key) != 32:
            raise JobStoreError(
                f"the webhook secret key file {path} is damaged (not 32 bytes)"
            ) from None
        return key
    key = os.urandom(32)
    try:
        os.write(fd, key)
        os.fsync(fd)
    finally:
        os.close(fd)
    logger.warning(
        "created a new webhook secret key at %s: every host running jobs from the same database "
        "needs this key (copy the file, or set %s on all of them)",
        path,
        KEY_ENV,
    )
    return key


class PostgresJobStore(_SqlJobReads):
    """Jobs and deliveries in PostgreSQL (tables ``gonka_mux_jobs``, ``gonka_mux_job_deliveries``),
    through the process's connection pool for ``url``. See the module docstring for the key."""

    shared = True
    _JOBS_TABLE = _JOBS
    _DELIVERIES_TABLE = _DELIVERIES
    _MARK = "%s"

    def __init__(
        self,
        url: str,
        *,
        secret_key: str | bytes | None = None,
        key_path: str | os.PathLike[str] | None = None,
    ) -> None:
        if not is_postgres_url(url):
            raise ValueError(
                f"PostgresJobStore needs a postgresql:// URL, got {redact_url(str(url))!r}"
            )
        require_psycopg()
        self._url = url
        self.url = redact_url(url)
        if secret_key is not None:
            key = _parse_key(secret_key, "secret_key")
        elif os.environ.get(KEY_ENV):
            key = _parse_key(os.environ[KEY_ENV], f"${KEY_ENV}")
        else:
            path = Path(key_path) if key_path is not None else state_dir() / "jobs-postgres.key"
            try:
                path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
                key = _key_from_file(path)
            except OSError as exc:
                raise JobStoreError(
                    f"cannot use the webhook secret key file {path}: {exc}"
                ) from exc
        self._box = _SecretBox(None, key=key)
        self._fingerprint = hmac.new(
            self._box._mac, b"gonka-mux webhook key check", hashlib.sha256
        ).hexdigest()[:32]
        self._ready = False

    def __repr__(self) -> str:
        return f"PostgresJobStore({self.url!r})"

    # ------------------------------------------------------------------ connections

    @contextmanager
    def _connection(self) -> Iterator[Any]:
        psycopg = require_psycopg()
        try:
            with sync_pool(self._url).connection() as conn:
                if not self._ready:
                    self._setup(conn)
                yield conn
        except psycopg.OperationalError as exc:  # includes the pool's PoolTimeout
            raise StoreUnavailableError(
                f"the job database {self.url} is unavailable ({type(exc).__name__}); "
                "retry when it is back",
                backend="postgresql",
            ) from None

    @contextmanager
    def _transaction(self) -> Iterator[Any]:
        with self._connection() as conn, conn.transaction():
            yield conn

    def _setup(self, conn: Any) -> None:
        with conn.transaction():
            # Runners starting together would race on CREATE TABLE's catalogue rows.
            conn.execute("SELECT pg_advisory_xact_lock(hashtext(%s))", (_JOBS,))
            conn.execute(_SCHEMA)
            conn.execute(
                f"INSERT INTO {_META} (name, value) VALUES ('key_check', %s) "
                "ON CONFLICT (name) DO NOTHING",
                (self._fingerprint,),
            )
            stored = conn.execute(f"SELECT value FROM {_META} WHERE name = 'key_check'").fetchone()
        if not hmac.compare_digest(stored[0], self._fingerprint):
            raise JobStoreError(
                f"this host's webhook secret key is not the one the secrets in {self.url} were "
                f"sealed with: give every host the same key (${KEY_ENV} or the key file)"
            )
        self._ready = True

    def _job(self, row: tuple[Any, ...]) -> Job:
        if row[7] is not None:
            row = (*row[:7], self._box.open(row[7]), *row[8:])
        return _job_from_row(row)

    def _query(self, sql: str, args: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
        with self._connection() as conn:
            return list(conn.execute(sql, args).fetchall())

    # ------------------------------------------------------------------ JobStore

    def add_job(self, job: Job) -> None:
        psycopg = require_psycopg()
        row = (
            job.id,
            _dumps(job.params, "job params"),
            JobStatus(job.status).value,
            None if job.result is None else _dumps(job.result, "job result"),
            job.error,
            job.attempts,
            job.webhook_url,
            None if job.webhook_secret is None else self._box.seal(job.webhook_secret.reveal()),
            job.created_at,
            job.updated_at,
            job.started_at,
            job.finished_at,
        )
        placeholders = ", ".join(["%s"] * len(row))
        try:
            with self._transaction() as conn:
                conn.execute(f"INSERT INTO {_JOBS} ({_JOB_COLUMNS}) VALUES ({placeholders})", row)
        except psycopg.errors.UniqueViolation:
            raise JobStoreError(f"job {job.id!r} already exists") from None

    def mark_running(self, job_id: str, now: float) -> Job:
        with self._transaction() as conn:
            row = conn.execute(
                f"UPDATE {_JOBS} SET status = %s, attempts = attempts + 1, started_at = %s, "
                f"updated_at = %s WHERE id = %s RETURNING {_JOB_COLUMNS}",
                (JobStatus.RUNNING.value, now, now, job_id),
            ).fetchone()
        if row is None:
            raise JobNotFoundError(f"no job {job_id!r} in the store")
        return self._job(row)

    def finish_job(
        self,
        job_id: str,
        *,
        status: JobStatus,
        result: dict[str, Any] | None,
        error: str | None,
        now: float,
        delivery: Delivery | None = None,
    ) -> Job:
        result_json = None if result is None else _dumps(result, "job result")
        with self._transaction() as conn:
            # Only an unfinished job takes an outcome: two runners that both ran it (the first
            # lost its lease) record it, and announce it, once.
            row = conn.execute(
                f"UPDATE {_JOBS} SET status = %s, result = %s, error = %s, finished_at = %s, "
                "updated_at = %s, claimed_by = NULL, lease_until = NULL "
                f"WHERE id = %s AND status IN (%s, %s) RETURNING {_JOB_COLUMNS}",
                (JobStatus(status).value, result_json, error, now, now, job_id, *_UNFINISHED),
            ).fetchone()
            if row is None:
                exists = conn.execute(f"SELECT 1 FROM {_JOBS} WHERE id = %s", (job_id,))
                if exists.fetchone() is None:
                    raise JobNotFoundError(f"no job {job_id!r} in the store")
                raise JobAlreadyFinishedError(
                    f"job {job_id!r} was already finished by another runner"
                )
            if delivery is not None:
                conn.execute(
                    f"INSERT INTO {_DELIVERIES} ({_DELIVERY_COLUMNS}) "
                    "VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s)",
                    (
                        delivery.id,
                        delivery.job_id,
                        delivery.event,
                        delivery.body,
                        DeliveryStatus(delivery.status).value,
                        delivery.attempts,
                        delivery.next_attempt_at,
                        delivery.last_error,
                        delivery.created_at,
                        delivery.updated_at,
                        delivery.delivered_at,
                    ),
                )
        return self._job(row)

    def update_delivery(self, delivery: Delivery) -> None:
        with self._transaction() as conn:
            changed = conn.execute(
                f"UPDATE {_DELIVERIES} SET status = %s, attempts = %s, next_attempt_at = %s, "
                "last_error = %s, updated_at = %s, delivered_at = %s WHERE id = %s",
                (
                    DeliveryStatus(delivery.status).value,
                    delivery.attempts,
                    delivery.next_attempt_at,
                    delivery.last_error,
                    delivery.updated_at,
                    delivery.delivered_at,
                    delivery.id,
                ),
            ).rowcount
        if not changed:
            raise JobStoreError(f"no delivery {delivery.id!r} in the store")

    def purge(self, finished_before: float) -> int:
        with self._transaction() as conn:
            return int(
                conn.execute(
                    f"DELETE FROM {_JOBS} WHERE status IN (%s, %s) AND finished_at < %s AND NOT "
                    f"EXISTS (SELECT 1 FROM {_DELIVERIES} d WHERE d.job_id = {_JOBS}.id "
                    "AND d.status = %s)",
                    (JobStatus.SUCCEEDED.value, JobStatus.FAILED.value, finished_before, _PENDING),
                ).rowcount
            )

    # ------------------------------------------------------------------ claims (shared)

    def claim_job(self, job_id: str, owner: str, now: float, lease: float) -> Job | None:
        with self._transaction() as conn:
            # SKIP LOCKED: a runner claiming the same row right now wins; this one moves on.
            row = conn.execute(
                f"SELECT id FROM {_JOBS} WHERE id = %s AND status IN (%s, %s) AND "
                "(claimed_by IS NULL OR claimed_by = %s OR lease_until < %s) "
                "FOR UPDATE SKIP LOCKED",
                (job_id, *_UNFINISHED, owner, now),
            ).fetchone()
            if row is None:
                return None
            row = conn.execute(
                f"UPDATE {_JOBS} SET claimed_by = %s, lease_until = %s WHERE id = %s "
                f"RETURNING {_JOB_COLUMNS}",
                (owner, now + lease, job_id),
            ).fetchone()
        return self._job(row)

    def renew_job_lease(self, job_id: str, owner: str, until: float) -> bool:
        with self._transaction() as conn:
            changed = conn.execute(
                f"UPDATE {_JOBS} SET lease_until = %s WHERE id = %s AND claimed_by = %s "
                "AND status IN (%s, %s)",
                (until, job_id, owner, *_UNFINISHED),
            ).rowcount
        return bool(changed)

    def claim_delivery(
        self, delivery_id: str, owner: str, now: float, lease: float
    ) -> Delivery | None:
        with self._transaction() as conn:
            row = conn.execute(
                f"SELECT id FROM {_DELIVERIES} WHERE id = %s AND status = %s AND "
                "(claimed_by IS NULL OR claimed_by = %s OR lease_until < %s) "
                "FOR UPDATE SKIP LOCKED",
                (delivery_id, _PENDING, owner, now),
            ).fetchone()
            if row is None:
                return None
            row = conn.execute(
                f"UPDATE {_DELIVERIES} SET claimed_by = %s, lease_until = %s WHERE id = %s "
                f"RETURNING {_DELIVERY_COLUMNS}",
                (owner, now + lease, delivery_id),
            ).fetchone()
        return _delivery_from_row(row)

    def claimable_jobs(self, now: float, limit: int) -> list[str]:
        rows = self._query(
            f"SELECT id FROM {_JOBS} WHERE status IN (%s, %s) AND "
            "(claimed_by IS NULL OR lease_until < %s) ORDER BY created_at LIMIT %s",
            (*_UNFINISHED, now, int(limit)),
        )
        return [r[0] for r in rows]

    def claimable_deliveries(self, now: float, limit: int) -> list[str]:
        rows = self._query(
            f"SELECT id FROM {_DELIVERIES} WHERE status = %s AND next_attempt_at <= %s AND "
            "(claimed_by IS NULL OR lease_until < %s) ORDER BY next_attempt_at LIMIT %s",
            (_PENDING, now, now, int(limit)),
        )
        return [r[0] for r in rows]

    def release_claims(self, owner: str) -> None:
        with self._transaction() as conn:
            conn.execute(
                f"UPDATE {_JOBS} SET lease_until = 0 WHERE claimed_by = %s AND status IN (%s, %s)",
                (owner, *_UNFINISHED),
            )
            conn.execute(
                f"UPDATE {_DELIVERIES} SET lease_until = 0 WHERE claimed_by = %s AND status = %s",
                (owner, _PENDING),
            )

    def close(self) -> None:
        # The pool is the process's, shared with every store on this database: leave it open.
        pass
