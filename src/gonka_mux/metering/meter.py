"""The meter: takes usage records on the request's hot path and writes them in the background.

``record()`` only appends to a queue. A writer thread wakes when a batch is full or every
``flush_interval`` seconds, fills in costs from the prices and hands the batch to the store (one
transaction for SQLite) and to any sinks (e.g. the Prometheus exporter). ``flush()`` waits until
everything recorded before it is stored; ``close()`` flushes, stops the thread and closes the
store. An ``atexit`` hook flushes a meter that was never closed, so a clean exit loses nothing.

A store that fails (disk full, database locked) does not lose records: the batch goes back to
the head of the queue and is retried with backoff; ``close()`` raises if it still cannot write.
"""

from __future__ import annotations

import atexit
import collections
import logging
import threading
import time
import weakref
from collections.abc import Sequence
from typing import Any, Protocol

from .prices import Prices
from .records import UsageRecord
from .stores import SqliteUsageStore, UsageStore

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
        """Queue one record; never blocks and never does I/O."""
        if self._closed:
            raise MeterClosedError("this Meter is closed; records can no longer be added")
        self._queue.append(record)
        if self._thread is None:
            self._start()
        elif len(self._queue) >= self.batch_size:
            self._wake.set()

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
        self._drain_inline()
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
            while self._queue:
                batch, markers = self._take_batch()
                try:
                    if batch:
                        self._write(batch)
                except Exception:
                    self._requeue(batch, markers)
                    log.warning(
                        "could not store %d usage record(s); retrying in %.2f s",
                        len(batch),
                        delay,
                        exc_info=True,
                    )
                    if self._stopping:
                        return  # close() makes the final attempt and reports the failure
                    time.sleep(delay)
                    delay = min(delay * 2, _RETRY_MAX)
                    break
                delay = _RETRY_FIRST
                for marker in markers:
                    marker.done.set()
            if self._stopping and not self._queue:
                return

    def _take_batch(self) -> tuple[list[UsageRecord], list[_FlushMarker]]:
        batch: list[UsageRecord] = []
        markers: list[_FlushMarker] = []
        queue = self._queue
        while queue and len(batch) < self.batch_size:
            item = queue.popleft()
            if isinstance(item, _FlushMarker):
                markers.append(item)
                break  # the marker's records are all in this batch: answer it after the write
            batch.append(item)
        return batch, markers

    def _requeue(self, batch: list[UsageRecord], markers: list[_FlushMarker]) -> None:
        self._queue.extendleft(reversed([*batch, *markers]))

    def _write(self, batch: list[UsageRecord]) -> None:
        prices = self.prices
        if prices is not None:
            for record in batch:
                if record.cost is None:
                    record.cost = prices.cost(
                        record.effective_model, record.prompt_tokens, record.completion_tokens
                    )
        self.store.write(batch)
        for sink in self.sinks:
            try:
                sink.write(batch)
            except Exception:  # a metrics exporter must never lose the stored records
                log.warning("usage sink %r failed", sink, exc_info=True)

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
            for marker in markers:
                marker.done.set()
