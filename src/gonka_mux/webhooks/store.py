"""Where background jobs and their webhook deliveries live, so nothing is lost on a restart.

Two backends share one interface (:class:`JobStore`) and one test suite:

- :class:`SQLiteJobStore`: a SQLite file, default ``<state dir>/jobs.sqlite3`` where the state dir
  is ``$GONKA_MUX_STATE_DIR``, else ``$XDG_STATE_HOME/gonka_mux``, else
  ``~/.local/state/gonka_mux``. WAL journal; ``durable=True`` (the default) also syncs every
  commit to disk, so a queued job or delivery survives a power cut, not only a crash.
- :class:`MemoryJobStore`: a dict, for tests and throwaway processes.

**Secrets at rest.** A job's webhook secret is stored with the job so that deliveries can resume
(and be signed) after a restart. Signing needs the secret itself, so it cannot be hashed: the
SQLite store keeps it encrypted (``enc1:``: an HMAC-SHA256 keystream with an encrypt-then-MAC
tag, standard library only) under a random 32-byte key in ``<db>.key`` beside the database
(created 0600; keep it with the database, a store without it cannot sign its pending
deliveries). A copy of the database alone reveals no secret. Both files are created readable by
their owner only (0600, in a 0700 directory when the store creates it). Secrets written by an
older version in plain text are still read. The secret is never logged and never shown in a
``repr``. Finished jobs can be removed with :meth:`JobStore.purge`.

One process should run jobs from a given SQLite file at a time: a second runner on the same file
would resume the same unfinished jobs. For several processes or hosts, use
:class:`~gonka_mux.webhooks.postgres.PostgresJobStore` (``open_job_store("postgresql://...")``):
it is ``shared``, runners claim each job and delivery under a lease, so exactly one runs it.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import os
import secrets
import sqlite3
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from enum import Enum
from pathlib import Path
from typing import Any, Protocol

from gonka_mux._exceptions import GonkaMuxError
from gonka_mux._paths import state_dir
from gonka_mux.webhooks.signing import Secret

__all__ = [
    "Delivery",
    "DeliveryStatus",
    "Job",
    "JobAlreadyFinishedError",
    "JobNotFoundError",
    "JobStatus",
    "JobStore",
    "JobStoreError",
    "MemoryJobStore",
    "SQLiteJobStore",
    "default_jobs_path",
    "default_state_dir",
    "open_job_store",
]


class JobStoreError(GonkaMuxError, RuntimeError):
    """The job store cannot be opened or written (path, permissions, schema version)."""


class JobNotFoundError(GonkaMuxError, KeyError):
    """No job with this id in the store (it was never submitted here, or it was purged)."""

    def __str__(self) -> str:  # KeyError would quote the whole message
        return str(self.args[0]) if self.args else "job not found"


class JobAlreadyFinishedError(JobStoreError):
    """A shared store's job was finished by another runner first (its lease had expired): this
    runner's outcome is dropped, so the job is announced once."""


class JobStatus(str, Enum):
    QUEUED = "queued"
    RUNNING = "running"
    SUCCEEDED = "succeeded"
    FAILED = "failed"

    def __str__(self) -> str:
        return self.value


class DeliveryStatus(str, Enum):
    PENDING = "pending"
    DELIVERED = "delivered"
    FAILED = "failed"

    def __str__(self) -> str:
        return self.value


TERMINAL_JOB_STATUSES = frozenset({JobStatus.SUCCEEDED, JobStatus.FAILED})


@dataclass
class Job:
    """One background request: its parameters, state, outcome and webhook target.

    ``attempts`` counts how many times execution started (a job interrupted by a crash is run
    again). ``webhook_secret`` never appears in ``repr``.
    """

    id: str
    params: dict[str, Any]
    status: JobStatus = JobStatus.QUEUED
    result: dict[str, Any] | None = None
    error: str | None = None
    attempts: int = 0
    webhook_url: str | None = None
    webhook_secret: Secret | None = field(default=None, repr=False)
    created_at: float = 0.0
    updated_at: float = 0.0
    started_at: float | None = None
    finished_at: float | None = None

    @property
    def done(self) -> bool:
        return self.status in TERMINAL_JOB_STATUSES

    def __repr__(self) -> str:  # short: params and results can be large, URLs can hold tokens
        return (
            f"Job(id={self.id!r}, status={self.status.value!r}, attempts={self.attempts}, "
            f"error={self.error!r}, webhook={self.webhook_url is not None})"
        )

    def to_public_dict(self) -> dict[str, Any]:
        """What a webhook payload or an API response shows: no params, no webhook target."""
        return {
            "id": self.id,
            "status": self.status.value,
            "result": self.result,
            "error": self.error,
            "attempts": self.attempts,
            "created_at": self.created_at,
            "started_at": self.started_at,
            "finished_at": self.finished_at,
        }


@dataclass
class Delivery:
    """One webhook notification. ``body`` is frozen at creation: every retry sends the same bytes
    under the same ``id`` (receivers dedupe on it). ``attempts`` counts POSTs started."""

    id: str
    job_id: str
    event: str
    body: str = field(repr=False)
    status: DeliveryStatus = DeliveryStatus.PENDING
    attempts: int = 0
    next_attempt_at: float = 0.0
    last_error: str | None = None
    created_at: float = 0.0
    updated_at: float = 0.0
    delivered_at: float | None = None


class JobStore(Protocol):
    """Persistence for jobs and deliveries. Methods are synchronous and quick.

    A store whose ``shared`` is True (PostgreSQL) is used by several runners at once: the runner
    then claims each job and delivery (``claim_job`` / ``claim_delivery``, under a lease it
    renews) and polls ``claimable_jobs`` / ``claimable_deliveries``. Single-process stores
    (memory, SQLite) implement the claim methods trivially and are never polled.
    """

    shared: bool

    def add_job(self, job: Job) -> None: ...

    def get_job(self, job_id: str) -> Job | None: ...

    def mark_running(self, job_id: str, now: float) -> Job:
        """Set ``running``, count the attempt, stamp ``started_at``; return the updated job."""
        ...

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
        """Record the outcome and (atomically, in one transaction) the delivery announcing it."""
        ...

    def unfinished_jobs(self) -> list[Job]:
        """Queued and running jobs, oldest first."""
        ...

    def list_jobs(self, status: JobStatus | None = None, limit: int | None = None) -> list[Job]: ...

    def get_delivery(self, delivery_id: str) -> Delivery | None: ...

    def deliveries_for(self, job_id: str) -> list[Delivery]: ...

    def pending_deliveries(self) -> list[Delivery]:
        """Deliveries still to attempt, soonest first."""
        ...

    def update_delivery(self, delivery: Delivery) -> None:
        """Persist status, attempts, next attempt time, last error and delivered time."""
        ...

    def purge(self, finished_before: float) -> int:
        """Delete jobs finished before this time whose deliveries are all settled; return count."""
        ...

    def claim_job(self, job_id: str, owner: str, now: float, lease: float) -> Job | None:
        """Take the unfinished job for ``owner`` until ``now + lease`` unless another owner's
        lease is still running; the job, or None when it is finished or held elsewhere."""
        ...

    def renew_job_lease(self, job_id: str, owner: str, until: float) -> bool:
        """Extend ``owner``'s lease on a running job; False when ``owner`` no longer holds it."""
        ...

    def claim_delivery(
        self, delivery_id: str, owner: str, now: float, lease: float
    ) -> Delivery | None:
        """Like :meth:`claim_job` for a pending delivery (one POST at a time, fleet-wide)."""
        ...

    def claimable_jobs(self, now: float, limit: int) -> list[str]:
        """Ids of unfinished jobs nobody holds a live lease on, oldest first (a hint: claim)."""
        ...

    def claimable_deliveries(self, now: float, limit: int) -> list[str]:
        """Ids of pending deliveries due by ``now`` that nobody holds a live lease on."""
        ...

    def release_claims(self, owner: str) -> None:
        """Drop ``owner``'s leases (a runner closing), so another runner resumes at once."""
        ...

    def close(self) -> None: ...


class _SingleRunnerClaims:
    """The claim methods of a store one runner uses at a time: claiming always succeeds."""

    shared = False

    def claim_job(self, job_id: str, owner: str, now: float, lease: float) -> Job | None:
        job = self.get_job(job_id)  # type: ignore[attr-defined]
        return None if job is None or job.done else job

    def renew_job_lease(self, job_id: str, owner: str, until: float) -> bool:
        return True

    def claim_delivery(
        self, delivery_id: str, owner: str, now: float, lease: float
    ) -> Delivery | None:
        delivery = self.get_delivery(delivery_id)  # type: ignore[attr-defined]
        return delivery if delivery is not None and delivery.status == "pending" else None

    def claimable_jobs(self, now: float, limit: int) -> list[str]:
        return [job.id for job in self.unfinished_jobs()[:limit]]  # type: ignore[attr-defined]

    def claimable_deliveries(self, now: float, limit: int) -> list[str]:
        due = [d for d in self.pending_deliveries() if d.next_attempt_at <= now]  # type: ignore[attr-defined]
        return [d.id for d in due[:limit]]

    def release_claims(self, owner: str) -> None:
        pass


def open_job_store(path_or_url: str | os.PathLike[str] | None = None, **options: Any) -> JobStore:
    """The job store a user-supplied location names: a ``postgresql://`` URL opens a shared
    :class:`~gonka_mux.webhooks.postgres.PostgresJobStore` (``options``: ``secret_key``,
    ``key_path``), anything else a :class:`SQLiteJobStore` file (None: the default path)."""
    from gonka_mux._postgres import is_postgres_url

    if is_postgres_url(path_or_url):
        from gonka_mux.webhooks.postgres import PostgresJobStore  # psycopg only when asked for

        return PostgresJobStore(str(path_or_url), **options)
    return SQLiteJobStore(path_or_url, **options)


# --------------------------------------------------------------------------- paths


def default_state_dir() -> Path:
    """``$GONKA_MUX_STATE_DIR``, else ``$XDG_STATE_HOME/gonka_mux``, else
    ``~/.local/state/gonka_mux``."""
    return state_dir()


def default_jobs_path() -> Path:
    return default_state_dir() / "jobs.sqlite3"


# --------------------------------------------------------------------------- serialization


def _dumps(value: Any, what: str) -> str:
    try:
        return json.dumps(value, separators=(",", ":"), ensure_ascii=False, allow_nan=False)
    except (TypeError, ValueError) as exc:
        raise TypeError(f"{what} must be JSON-serializable to be stored: {exc}") from None


def _copy_json(value: Any, what: str) -> Any:
    """A deep copy through JSON, so the memory store behaves exactly like the SQLite one."""
    return None if value is None else json.loads(_dumps(value, what))


# --------------------------------------------------------------------------- memory


class MemoryJobStore(_SingleRunnerClaims):
    """Jobs and deliveries in a dict. Lost when the process ends: for tests and throwaway work."""

    def __init__(self) -> None:
        self._jobs: dict[str, Job] = {}
        self._deliveries: dict[str, Delivery] = {}
        self._lock = threading.Lock()

    def __repr__(self) -> str:
        return f"MemoryJobStore(jobs={len(self._jobs)}, deliveries={len(self._deliveries)})"

    @staticmethod
    def _copy_job(job: Job) -> Job:
        return replace(
            job,
            params=_copy_json(job.params, "job params"),
            result=_copy_json(job.result, "job result"),
        )

    def add_job(self, job: Job) -> None:
        stored = self._copy_job(job)
        with self._lock:
            if job.id in self._jobs:
                raise JobStoreError(f"job {job.id!r} already exists")
            self._jobs[job.id] = stored

    def get_job(self, job_id: str) -> Job | None:
        with self._lock:
            job = self._jobs.get(job_id)
            return None if job is None else self._copy_job(job)

    def _require(self, job_id: str) -> Job:
        job = self._jobs.get(job_id)
        if job is None:
            raise JobNotFoundError(f"no job {job_id!r} in the store")
        return job

    def mark_running(self, job_id: str, now: float) -> Job:
        with self._lock:
            job = self._require(job_id)
            job.status = JobStatus.RUNNING
            job.attempts += 1
            job.started_at = now
            job.updated_at = now
            return self._copy_job(job)

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
        stored_result = _copy_json(result, "job result")
        with self._lock:
            job = self._require(job_id)
            job.status = JobStatus(status)
            job.result = stored_result
            job.error = error
            job.finished_at = now
            job.updated_at = now
            if delivery is not None:
                self._deliveries[delivery.id] = replace(delivery)
            return self._copy_job(job)

    def unfinished_jobs(self) -> list[Job]:
        with self._lock:
            jobs = [j for j in self._jobs.values() if not j.done]
            return [self._copy_job(j) for j in sorted(jobs, key=lambda j: j.created_at)]

    def list_jobs(self, status: JobStatus | None = None, limit: int | None = None) -> list[Job]:
        with self._lock:
            jobs = sorted(self._jobs.values(), key=lambda j: j.created_at, reverse=True)
            if status is not None:
                jobs = [j for j in jobs if j.status == status]
            return [self._copy_job(j) for j in jobs[:limit]]

    def get_delivery(self, delivery_id: str) -> Delivery | None:
        with self._lock:
            delivery = self._deliveries.get(delivery_id)
            return None if delivery is None else replace(delivery)

    def deliveries_for(self, job_id: str) -> list[Delivery]:
        with self._lock:
            found = [d for d in self._deliveries.values() if d.job_id == job_id]
            return [replace(d) for d in sorted(found, key=lambda d: d.created_at)]

    def pending_deliveries(self) -> list[Delivery]:
        with self._lock:
            found = [d for d in self._deliveries.values() if d.status == DeliveryStatus.PENDING]
            return [replace(d) for d in sorted(found, key=lambda d: d.next_attempt_at)]

    def update_delivery(self, delivery: Delivery) -> None:
        with self._lock:
            if delivery.id not in self._deliveries:
                raise JobStoreError(f"no delivery {delivery.id!r} in the store")
            self._deliveries[delivery.id] = replace(delivery)

    def purge(self, finished_before: float) -> int:
        with self._lock:
            doomed = [
                job.id
                for job in self._jobs.values()
                if job.done
                and job.finished_at is not None
                and job.finished_at < finished_before
                and not any(
                    d.job_id == job.id and d.status == DeliveryStatus.PENDING
                    for d in self._deliveries.values()
                )
            ]
            for job_id in doomed:
                del self._jobs[job_id]
            gone = set(doomed)
            self._deliveries = {k: d for k, d in self._deliveries.items() if d.job_id not in gone}
            return len(doomed)

    def close(self) -> None:
        pass


# --------------------------------------------------------------------------- sqlite

_SCHEMA_VERSION = 1
_SCHEMA = """
CREATE TABLE IF NOT EXISTS jobs (
    id TEXT PRIMARY KEY,
    params TEXT NOT NULL,
    status TEXT NOT NULL,
    result TEXT,
    error TEXT,
    attempts INTEGER NOT NULL DEFAULT 0,
    webhook_url TEXT,
    webhook_secret TEXT,
    created_at REAL NOT NULL,
    updated_at REAL NOT NULL,
    started_at REAL,
    finished_at REAL
);
CREATE INDEX IF NOT EXISTS jobs_by_status ON jobs (status, created_at);
CREATE TABLE IF NOT EXISTS deliveries (
    id TEXT PRIMARY KEY,
    job_id TEXT NOT NULL REFERENCES jobs (id) ON DELETE CASCADE,
    event TEXT NOT NULL,
    body TEXT NOT NULL,
    status TEXT NOT NULL,
    attempts INTEGER NOT NULL DEFAULT 0,
    next_attempt_at REAL NOT NULL,
    last_error TEXT,
    created_at REAL NOT NULL,
    updated_at REAL NOT NULL,
    delivered_at REAL
);
CREATE INDEX IF NOT EXISTS deliveries_by_status ON deliveries (status, next_attempt_at);
CREATE INDEX IF NOT EXISTS deliveries_by_job ON deliveries (job_id);
"""

_JOB_COLUMNS = (
    "id, params, status, result, error, attempts, webhook_url, webhook_secret, "
    "created_at, updated_at, started_at, finished_at"
)
_DELIVERY_COLUMNS = (
    "id, job_id, event, body, status, attempts, next_attempt_at, last_error, "
    "created_at, updated_at, delivered_at"
)


def _job_from_row(row: tuple[Any, ...]) -> Job:
    (id_, params, status, result, error, attempts, url, secret, created, updated, started, done) = (
        row
    )
    return Job(
        id=id_,
        params=json.loads(params),
        status=JobStatus(status),
        result=None if result is None else json.loads(result),
        error=error,
        attempts=attempts,
        webhook_url=url,
        webhook_secret=None if secret is None else Secret(secret),
        created_at=created,
        updated_at=updated,
        started_at=started,
        finished_at=done,
    )


def _delivery_from_row(row: tuple[Any, ...]) -> Delivery:
    (id_, job_id, event, body, status, attempts, next_at, last_error, created, updated, sent) = row
    return Delivery(
        id=id_,
        job_id=job_id,
        event=event,
        body=body,
        status=DeliveryStatus(status),
        attempts=attempts,
        next_attempt_at=next_at,
        last_error=last_error,
        created_at=created,
        updated_at=updated,
        delivered_at=sent,
    )


class _SecretBox:
    """Encrypts webhook secrets at rest with a key kept in a 0600 file (or in memory, or given:
    ``key``, 32 bytes, e.g. from the environment so every host of a shared store has it)."""

    PREFIX = "enc1:"

    def __init__(self, key_path: Path | None, *, key: bytes | None = None) -> None:
        if key is not None:
            if len(key) != 32:
                raise JobStoreError("a webhook secret key must be 32 bytes")
        elif key_path is None:
            key = secrets.token_bytes(32)
        else:
            try:
                fd = os.open(key_path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o600)
            except FileExistsError:
                key = key_path.read_bytes()
                if len(key) != 32:
                    raise JobStoreError(
                        f"the webhook secret key file {key_path} is damaged (not 32 bytes)"
                    ) from None
            else:
                key = secrets.token_bytes(32)
                try:
                    os.write(fd, key)
                    os.fsync(fd)
                finally:
                    os.close(fd)
        self._enc = hmac.new(key, b"gonka-mux webhook secret enc", hashlib.sha256).digest()
        self._mac = hmac.new(key, b"gonka-mux webhook secret mac", hashlib.sha256).digest()

    def _stream(self, nonce: bytes, size: int) -> bytes:
        out = bytearray()
        counter = 0
        while len(out) < size:
            block = counter.to_bytes(8, "big")
            out += hmac.new(self._enc, nonce + block, hashlib.sha256).digest()
            counter += 1
        return bytes(out[:size])

    def seal(self, plaintext: str) -> str:
        data = plaintext.encode("utf-8")
        nonce = secrets.token_bytes(16)
        cipher = bytes(a ^ b for a, b in zip(data, self._stream(nonce, len(data)), strict=True))
        tag = hmac.new(self._mac, nonce + cipher, hashlib.sha256).digest()[:16]
        return self.PREFIX + base64.b64encode(nonce + cipher + tag).decode("ascii")

    def open(self, stored: str) -> str:
        if not stored.startswith(self.PREFIX):
            return stored  # written in plain text by an older version
        blob = base64.b64decode(stored[len(self.PREFIX) :])
        nonce, cipher, tag = blob[:16], blob[16:-16], blob[-16:]
        expected = hmac.new(self._mac, nonce + cipher, hashlib.sha256).digest()[:16]
        if not hmac.compare_digest(tag, expected):
            raise JobStoreError(
                "a stored webhook secret does not match the key file (was <db>.key replaced?)"
            )
        data = bytes(a ^ b for a, b in zip(cipher, self._stream(nonce, len(cipher)), strict=True))
        return data.decode("utf-8")


def _create_private_file(path: Path) -> None:
    """Create the database file readable by its owner only (it holds webhook secrets)."""
    if not path.parent.exists():
        path.parent.mkdir(parents=True, mode=0o700, exist_ok=True)
    try:
        fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o600)
    except FileExistsError:
        return
    os.close(fd)


class _SqlJobReads:
    """The read queries the SQL job stores share. Each store names its tables and its
    parameter marker (``?`` for sqlite3, ``%s`` for psycopg) and provides ``_query`` (rows of a
    SELECT) and ``_job`` (a job from a row)."""

    _JOBS_TABLE: str
    _DELIVERIES_TABLE: str
    _MARK: str

    def _query(self, sql: str, args: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
        raise NotImplementedError

    def _job(self, row: tuple[Any, ...]) -> Job:
        raise NotImplementedError

    def get_job(self, job_id: str) -> Job | None:
        rows = self._query(
            f"SELECT {_JOB_COLUMNS} FROM {self._JOBS_TABLE} WHERE id = {self._MARK}", (job_id,)
        )
        return self._job(rows[0]) if rows else None

    def _require(self, job_id: str) -> Job:
        job = self.get_job(job_id)
        if job is None:
            raise JobNotFoundError(f"no job {job_id!r} in the store")
        return job

    def unfinished_jobs(self) -> list[Job]:
        rows = self._query(
            f"SELECT {_JOB_COLUMNS} FROM {self._JOBS_TABLE} "
            f"WHERE status IN ({self._MARK}, {self._MARK}) ORDER BY created_at",
            (JobStatus.QUEUED.value, JobStatus.RUNNING.value),
        )
        return [self._job(r) for r in rows]

    def list_jobs(self, status: JobStatus | None = None, limit: int | None = None) -> list[Job]:
        sql = f"SELECT {_JOB_COLUMNS} FROM {self._JOBS_TABLE}"
        args: tuple[Any, ...] = ()
        if status is not None:
            sql += f" WHERE status = {self._MARK}"
            args = (JobStatus(status).value,)
        sql += " ORDER BY created_at DESC"
        if limit is not None:
            sql += f" LIMIT {self._MARK}"
            args = (*args, int(limit))
        return [self._job(r) for r in self._query(sql, args)]

    def get_delivery(self, delivery_id: str) -> Delivery | None:
        rows = self._query(
            f"SELECT {_DELIVERY_COLUMNS} FROM {self._DELIVERIES_TABLE} WHERE id = {self._MARK}",
            (delivery_id,),
        )
        return _delivery_from_row(rows[0]) if rows else None

    def deliveries_for(self, job_id: str) -> list[Delivery]:
        rows = self._query(
            f"SELECT {_DELIVERY_COLUMNS} FROM {self._DELIVERIES_TABLE} "
            f"WHERE job_id = {self._MARK} ORDER BY created_at",
            (job_id,),
        )
        return [_delivery_from_row(r) for r in rows]

    def pending_deliveries(self) -> list[Delivery]:
        rows = self._query(
            f"SELECT {_DELIVERY_COLUMNS} FROM {self._DELIVERIES_TABLE} "
            f"WHERE status = {self._MARK} ORDER BY next_attempt_at",
            (DeliveryStatus.PENDING.value,),
        )
        return [_delivery_from_row(r) for r in rows]


class SQLiteJobStore(_SqlJobReads, _SingleRunnerClaims):
    """Jobs and deliveries in a SQLite file (standard library ``sqlite3``), safe across threads.

    ``path=None`` uses :func:`default_jobs_path`; ``":memory:"`` keeps everything in memory.
    """

    _JOBS_TABLE = "jobs"
    _DELIVERIES_TABLE = "deliveries"
    _MARK = "?"

    def __init__(self, path: str | os.PathLike[str] | None = None, *, durable: bool = True) -> None:
        self.path = Path(default_jobs_path() if path is None else path)
        in_memory = str(path) == ":memory:"
        try:
            if not in_memory:
                _create_private_file(self.path)
            self._db = sqlite3.connect(
                ":memory:" if in_memory else str(self.path),
                check_same_thread=False,
                isolation_level=None,  # autocommit; multi-statement writes use explicit BEGIN
                timeout=10.0,
            )
        except (OSError, sqlite3.Error) as exc:
            raise JobStoreError(
                f"cannot open the job store at {self.path}: {exc}; pass another path or set "
                "GONKA_MUX_STATE_DIR to a writable directory"
            ) from exc
        self._lock = threading.RLock()
        try:
            self._box = _SecretBox(
                None if in_memory else self.path.with_name(self.path.name + ".key")
            )
        except OSError as exc:
            self._db.close()
            raise JobStoreError(f"cannot use the webhook secret key of {self.path}: {exc}") from exc
        try:
            self._setup(durable)
        except sqlite3.Error as exc:
            self._db.close()
            raise JobStoreError(f"cannot use the job store at {self.path}: {exc}") from exc

    def _setup(self, durable: bool) -> None:
        db = self._db
        db.execute("PRAGMA journal_mode=WAL")
        db.execute(f"PRAGMA synchronous={'FULL' if durable else 'NORMAL'}")
        db.execute("PRAGMA foreign_keys=ON")
        version = db.execute("PRAGMA user_version").fetchone()[0]
        if version > _SCHEMA_VERSION:
            db.close()
            raise JobStoreError(
                f"the job store at {self.path} has schema version {version}, newer than this "
                f"gonka_mux understands ({_SCHEMA_VERSION}); upgrade gonka_mux or use another path"
            )
        db.executescript(_SCHEMA)
        db.execute(f"PRAGMA user_version={_SCHEMA_VERSION}")

    def __repr__(self) -> str:
        return f"SQLiteJobStore({str(self.path)!r})"

    @contextmanager
    def _transaction(self) -> Iterator[sqlite3.Connection]:
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                yield self._db
            except BaseException:
                self._db.execute("ROLLBACK")
                raise
            self._db.execute("COMMIT")

    def _job(self, row: tuple[Any, ...]) -> Job:
        if row[7] is not None:
            row = (*row[:7], self._box.open(row[7]), *row[8:])
        return _job_from_row(row)

    def _query(self, sql: str, args: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
        with self._lock:
            return self._db.execute(sql, args).fetchall()

    def add_job(self, job: Job) -> None:
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
        try:
            with self._transaction() as db:
                db.execute(
                    f"INSERT INTO jobs ({_JOB_COLUMNS}) VALUES (?,?,?,?,?,?,?,?,?,?,?,?)", row
                )
        except sqlite3.IntegrityError:
            raise JobStoreError(f"job {job.id!r} already exists") from None

    def mark_running(self, job_id: str, now: float) -> Job:
        with self._transaction() as db:
            changed = db.execute(
                "UPDATE jobs SET status = ?, attempts = attempts + 1, started_at = ?, "
                "updated_at = ? WHERE id = ?",
                (JobStatus.RUNNING.value, now, now, job_id),
            ).rowcount
        if not changed:
            raise JobNotFoundError(f"no job {job_id!r} in the store")
        return self._require(job_id)

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
        with self._transaction() as db:
            changed = db.execute(
                "UPDATE jobs SET status = ?, result = ?, error = ?, finished_at = ?, "
                "updated_at = ? WHERE id = ?",
                (JobStatus(status).value, result_json, error, now, now, job_id),
            ).rowcount
            if not changed:
                raise JobNotFoundError(f"no job {job_id!r} in the store")
            if delivery is not None:
                db.execute(
                    f"INSERT INTO deliveries ({_DELIVERY_COLUMNS}) VALUES (?,?,?,?,?,?,?,?,?,?,?)",
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
        return self._require(job_id)

    def update_delivery(self, delivery: Delivery) -> None:
        with self._transaction() as db:
            changed = db.execute(
                "UPDATE deliveries SET status = ?, attempts = ?, next_attempt_at = ?, "
                "last_error = ?, updated_at = ?, delivered_at = ? WHERE id = ?",
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
        with self._transaction() as db:
            return db.execute(
                "DELETE FROM jobs WHERE status IN (?, ?) AND finished_at < ? AND NOT EXISTS "
                "(SELECT 1 FROM deliveries d WHERE d.job_id = jobs.id AND d.status = ?)",
                (
                    JobStatus.SUCCEEDED.value,
                    JobStatus.FAILED.value,
                    finished_before,
                    DeliveryStatus.PENDING.value,
                ),
            ).rowcount

    def close(self) -> None:
        with self._lock:
            self._db.close()
