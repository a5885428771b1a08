"""The meter: takes usage records on the request's hot path and writes them in the background.

``record()`` only appends to a queue. A writer thread wakes when a batch is full or every
``flush_interval`` seconds, fills in costs from the prices and hands the batch to the store (one
transaction for SQLite) and to any sinks (e.g. the Prometheus exporter). ``flush()`` waits until
everything recorded before it is stored; ``close()`` flushes, stops the thread and closes the
store. An ``atexit`` hook flushes a meter that was never closed, so a clean exit loses nothing.

A store that fails (disk full, database locked, a shared PostgreSQL store that is away: any
``OSError``, which :class:`~gonka_mux.errors.StoreUnavailableError` is) does not lose records: the
batch goes back to the head of the queue and is retried with backoff, with one warning when the
store goes away and one info line when it is back; ``close()`` raises if it still cannot write
(the records stay in the journal for the next Meter).
A record the store refuses for what it holds (a value SQLite cannot take) never blocks the
others: the batch is written record by record, and the one that still fails is quarantined
(logged, and kept in ``<journal>/quarantine.jsonl`` when there is a journal) instead of being
retried for ever. (The SQLite store already replaces lone surrogates in text with U+FFFD.)

Durability: with a journal (the default for :class:`SqliteUsageStore`: the directory
``<db>.journal`` beside the database; for a PostgreSQL store a directory per database under
``<state dir>/usage-journal``), ``record()`` also appends the record to a per-process
journal file before returning: one ``os.write`` of a JSON line, no fsync. A process killed at
any point (SIGKILL, OOM, a crash, SIGTERM without a clean shutdown) therefore keeps every
record it accepted: the next Meter opened on the same store (any process) replays orphaned
journal files into the store (writes are idempotent by ``request_id``) and deletes them. The
writer rotates the journal on each flush and deletes a file once all its records are stored.
"""

from __future__ import annotations

import atexit
import collections
import json
import logging
import os
import sqlite3
import threading
import time
import uuid
import weakref
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Protocol

from .prices import Prices
from .records import RECORD_FIELDS, UsageRecord
from .stores import SqliteUsageStore, UsageStore, sanitize_record

try:  # POSIX: a journal file is locked by the live process that writes it
    import fcntl
except ImportError:  # pragma: no cover - Windows
    fcntl = None  # type: ignore[assignment]

__all__ = ["Meter", "MeterClosedError", "UsageSink"]

log = logging.getLogger("gonka_mux.metering")

_RETRY_FIRST = 0.05
_RETRY_MAX = 5.0


class MeterClosedError(RuntimeError):
    """``record()`` was called after ``close()``."""


class UsageSink(Protocol):
    """Something that sees every batch after the store wrote it (metrics exporters)."""

    def write(self, records: Sequence[UsageRecord]) -> None: ...


class _FlushMarker:
    __slots__ = ("done",)

    def __init__(self) -> None:
        self.done = threading.Event()

    def complete(self) -> None:
        self.done.set()


class _JournalMarker:
    """Queued when the journal rotates: once reached, every record in ``path`` is stored."""

    __slots__ = ("fd", "path")

    def __init__(self, fd: int, path: Path) -> None:
        self.fd, self.path = fd, path

    def complete(self) -> None:
        try:
            self.path.unlink(missing_ok=True)
        finally:
            os.close(self.fd)


_Marker = _FlushMarker | _JournalMarker

# Errors that say the store is unavailable (retry the batch later), as opposed to a record the
# store cannot take (isolate it).
_TRANSIENT = (OSError, sqlite3.OperationalError)


def _record_line(record: UsageRecord) -> bytes:
    # ensure_ascii: a lone surrogate becomes an escape, so the line is always valid UTF-8.
    values = [getattr(record, name) for name in RECORD_FIELDS]
    return (json.dumps(values, default=str, separators=(",", ":")) + "\n").encode("ascii")


def _lock(fd: int) -> bool:
    if fcntl is None:
        return True
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        return False
    return True


def _read_journal(fd: int) -> list[UsageRecord]:
    with os.fdopen(os.dup(fd), "rb") as handle:
        handle.seek(0)
        data = handle.read()
    records = []
    for line in data.split(b"\n"):
        if not line.strip():
            continue
        try:
            values = json.loads(line)
            records.append(UsageRecord(**dict(zip(RECORD_FIELDS, values, strict=True))))
        except (ValueError, TypeError):  # a line cut short by a crash mid-write
            log.warning("skipping an unreadable usage journal line")
    return records


class Meter:
    """Records usage off the hot path.

    ``store`` defaults to :class:`SqliteUsageStore` at the default path. ``prices`` fills in
    ``cost`` for records that have none. ``sinks`` see every stored batch.
    """

    def __init__(
        self,
        store: UsageStore | None = None,
        prices: Prices | None = None,
        *,
        sinks: Sequence[UsageSink] = (),
        batch_size: int = 256,
        flush_interval: float = 0.5,
        journal: str | os.PathLike[str] | bool | None = None,
    ) -> None:
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size!r}")
        if flush_interval <= 0:
            raise ValueError(f"flush_interval must be > 0 seconds, got {flush_interval!r}")
        self.store: UsageStore = store if store is not None else SqliteUsageStore()
        self.prices = prices
        self.sinks = list(sinks)
        self.batch_size = batch_size
        self.flush_interval = flush_interval
        # deque.append is atomic, so the hot path takes no lock.
        self._queue: collections.deque[UsageRecord | _FlushMarker] = collections.deque()
        self._wake = threading.Event()
        self._start_lock = threading.Lock()
        self._thread: threading.Thread | None = None
        self._stopping = False
        self._closed = False
        self._atexit: Any = None
        self.quarantined = 0
        self._failing = False  # the store failed and has not taken a batch since (log once)
        # The journal: None (no journal) or a directory of per-process JSON-lines files.
        if journal is None or journal is True:
            journal_dir = getattr(self.store, "journal_dir", None)
            if journal is True and journal_dir is None:
                raise ValueError(f"{self.store!r} has no default journal directory: pass a path")
        elif journal is False:
            journal_dir = None
        else:
            journal_dir = Path(journal)
        self.journal_dir: Path | None = Path(journal_dir) if journal_dir is not None else None
        self._journal_lock = threading.Lock()
        self._journal_fd: int | None = None
        self._journal_path: Path | None = None
        self._journal_dirty = False
        if self.journal_dir is not None:
            self.recover()

    def __repr__(self) -> str:
        return f"Meter(store={self.store!r}, pending={len(self._queue)})"

    def __enter__(self) -> Meter:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    async def __aenter__(self) -> Meter:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        # Flushing may wait on disk; keep the event loop free while it does. asyncio is imported
        # here: at the top it would add ~20 ms to every `gonka-mux` command (the CLI loads metering
        # for `gonka-mux usage`), and a running loop has imported it already.
        import asyncio

        await asyncio.to_thread(self.close)

    def record(self, record: UsageRecord) -> None:
        """Queue one record; never blocks on the store (with a journal: one append to a local
        file, so the record survives the process being killed from here on)."""
        if self._closed:
            raise MeterClosedError("this Meter is closed; records can no longer be added")
        if self.journal_dir is None:
            self._queue.append(record)
        else:
            line = _record_line(record)
            with self._journal_lock:
                if self._journal_fd is None:
                    self._open_journal()
                os.write(self._journal_fd, line)  # type: ignore[arg-type]
                self._journal_dirty = True
                self._queue.append(record)
        if self._thread is None:
            self._start()
        elif len(self._queue) >= self.batch_size:
            self._wake.set()

    # -- the journal

    def _open_journal(self) -> None:
        """A fresh journal file of this process (the caller holds the journal lock)."""
        assert self.journal_dir is not None
        self.journal_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        path = self.journal_dir / f"{os.getpid()}-{uuid.uuid4().hex}.jsonl"
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND | os.O_EXCL, 0o600)
        _lock(fd)
        self._journal_fd, self._journal_path = fd, path
        self._journal_dirty = False

    def _rotate_journal(self) -> None:
        """Start a new journal file; the old one is deleted once the records queued before
        now are stored (a marker in the queue says when)."""
        with self._journal_lock:
            if self._journal_fd is None or not self._journal_dirty:
                return
            old = _JournalMarker(self._journal_fd, self._journal_path)  # type: ignore[arg-type]
            self._journal_fd = self._journal_path = None
            self._queue.append(old)
            self._open_journal()

    def recover(self) -> int:
        """Store the records of journal files that no live process holds (left by a process
        that was killed); returns how many were replayed. Called when the Meter is made."""
        directory = self.journal_dir
        if directory is None or not directory.is_dir():
            return 0
        replayed = 0
        for path in sorted(directory.glob("*.jsonl")):
            if path.name == "quarantine.jsonl" or path == self._journal_path:
                continue
            try:
                fd = os.open(path, os.O_RDWR)
            except FileNotFoundError:
                continue
            try:
                if not _lock(fd):
                    continue  # a live process owns it
                records = _read_journal(fd)
                if records:
                    try:
                        self._write(records)
                    except _TRANSIENT as exc:
                        # The store is away (a shared database restarting): do not fail the
                        # application's start. Queue the records with the file's marker; the
                        # file stays locked by us and is deleted once the writer stored them.
                        log.warning(
                            "usage store unavailable (%s); %d journalled record(s) from %s are "
                            "queued until it is back",
                            type(exc).__name__,
                            len(records),
                            path.name,
                        )
                        self._failing = True
                        self._queue.extend(records)
                        self._queue.append(_JournalMarker(fd, path))  # type: ignore[arg-type]
                        fd = -1
                        continue
                path.unlink(missing_ok=True)
                replayed += len(records)
            finally:
                if fd >= 0:
                    os.close(fd)
        if replayed:
            log.info("recovered %d usage record(s) from %s", replayed, directory)
        if self._queue and self._thread is None:
            self._start()  # journalled records waiting for the store: the writer retries them
        return replayed

    def _quarantine(self, record: UsageRecord, exc: BaseException) -> None:
        self.quarantined += 1
        log.error(
            "usage record %s cannot be stored (%s); quarantined, the other records go on",
            record.request_id,
            type(exc).__name__,
        )
        if self.journal_dir is None:
            return
        try:
            self.journal_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
            fd = os.open(
                self.journal_dir / "quarantine.jsonl",
                os.O_WRONLY | os.O_CREAT | os.O_APPEND,
                0o600,
            )
            try:
                os.write(fd, _record_line(record))
            finally:
                os.close(fd)
        except Exception:
            log.warning("could not keep the quarantined usage record", exc_info=True)

    @property
    def pending(self) -> int:
        """Records queued and not yet stored."""
        # list() of a deque is one C call, safe while the writer thread pops from it.
        return sum(1 for item in list(self._queue) if isinstance(item, UsageRecord))

    def flush(self, timeout: float | None = None) -> bool:
        """Wait until every record queued before this call is stored; False on timeout."""
        if self._thread is None or not self._thread.is_alive():
            self._drain_inline()
            return True
        marker = _FlushMarker()
        self._queue.append(marker)
        self._wake.set()
        return marker.done.wait(timeout)

    def close(self) -> None:
        """Flush, stop the writer thread and close the store. Idempotent."""
        if self._closed:
            return
        self._closed = True
        thread = self._thread
        if thread is not None:
            self._stopping = True
            self._wake.set()
            thread.join()
        if self._atexit is not None:
            atexit.unregister(self._atexit)
            self._atexit = None
        # The thread exits only after its last batch; anything left means the store is failing.
        self._rotate_journal()
        self._drain_inline()
        with self._journal_lock:
            if self._journal_fd is not None:
                _JournalMarker(self._journal_fd, self._journal_path).complete()  # type: ignore[arg-type]
                self._journal_fd = self._journal_path = None
        self.store.close()

    # -- writer side

    def _start(self) -> None:
        with self._start_lock:
            if self._thread is not None:
                return
            thread = threading.Thread(target=self._run, name="gonka-mux-meter", daemon=True)
            self._thread = thread
            # Daemon threads die silently at exit: flush from an atexit hook instead. A weak
            # reference, so the hook does not keep an abandoned meter alive.
            ref = weakref.ref(self)

            def flush_at_exit() -> None:
                meter = ref()
                if meter is not None:
                    meter.close()

            self._atexit = flush_at_exit
            atexit.register(flush_at_exit)
            thread.start()

    def _run(self) -> None:
        delay = _RETRY_FIRST
        while True:
            self._wake.wait(self.flush_interval)
            self._wake.clear()
            if self.journal_dir is not None:
                self._rotate_journal()
            while self._queue:
                batch, markers = self._take_batch()
                try:
                    if batch:
                        self._write(batch)
                except Exception as exc:
                    self._requeue(batch, markers)
                    # One warning when the store goes away, not one per retried batch: an
                    # outage of a shared database would otherwise flood the log.
                    if not self._failing:
                        self._failing = True
                        log.warning(
                            "could not store usage records (%s); they are kept and retried "
                            "until %r takes them",
                            type(exc).__name__,
                            self.store,
                            exc_info=True,
                        )
                    else:
                        log.debug("usage store still failing; retrying in %.2f s", delay)
                    if self._stopping:
                        return  # close() makes the final attempt and reports the failure
                    time.sleep(delay)
                    delay = min(delay * 2, _RETRY_MAX)
                    break
                delay = _RETRY_FIRST
                if self._failing:
                    self._failing = False
                    log.info("usage store %r is writable again; queued records stored", self.store)
                self._complete(markers)
            if self._stopping and not self._queue:
                return

    @staticmethod
    def _complete(markers: list[Any]) -> None:
        for marker in markers:
            try:
                marker.complete()
            except OSError:
                log.warning("could not remove a usage journal file", exc_info=True)

    def _take_batch(self) -> tuple[list[UsageRecord], list[Any]]:
        batch: list[UsageRecord] = []
        markers: list[Any] = []
        queue = self._queue
        while queue and len(batch) < self.batch_size:
            item = queue.popleft()
            if not isinstance(item, UsageRecord):
                markers.append(item)
                break  # the marker's records are all in this batch: answer it after the write
            batch.append(item)
        return batch, markers

    def _requeue(self, batch: list[UsageRecord], markers: list[Any]) -> None:
        self._queue.extendleft(reversed([*batch, *markers]))

    def _write(self, batch: list[UsageRecord]) -> None:
        prices = self.prices
        if prices is not None:
            for record in batch:
                if record.cost is None:
                    record.cost = prices.cost(
                        record.effective_model, record.prompt_tokens, record.completion_tokens
                    )
        try:
            self.store.write(batch)
        except _TRANSIENT:
            raise
        except Exception:
            batch = self._write_each(batch)
        for sink in self.sinks:
            try:
                sink.write(batch)
            except Exception:  # a metrics exporter must never lose the stored records
                log.warning("usage sink %r failed", sink, exc_info=True)

    def _write_each(self, batch: list[UsageRecord]) -> list[UsageRecord]:
        """A batch the store refused for its content: store what it takes one record at a time
        (sanitised), quarantine what it still refuses; returns the records stored."""
        stored = []
        for record in batch:
            try:
                self.store.write([record])
            except _TRANSIENT:
                raise
            except Exception:
                try:
                    clean = sanitize_record(record)
                    self.store.write([clean])
                except _TRANSIENT:
                    raise
                except Exception as exc:
                    self._quarantine(record, exc)
                    continue
                record = clean
            stored.append(record)
        return stored

    def _drain_inline(self) -> None:
        """Write what is queued from the calling thread (no writer thread, or it has stopped)."""
        while self._queue:
            batch, markers = self._take_batch()
            try:
                if batch:
                    self._write(batch)
            except Exception:
                self._requeue(batch, markers)
                raise
            self._complete(markers)
