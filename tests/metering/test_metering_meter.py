"""The meter: batching off the hot path, flush, close, no loss under threads, faults and exit."""

from __future__ import annotations

import subprocess
import sys
import textwrap
import threading
import time
from collections.abc import Sequence
from pathlib import Path

import pytest
from tests._usage_data import PRICES

from gonka_mux.metering import (
    MemoryUsageStore,
    Meter,
    MeterClosedError,
    SqliteUsageStore,
    UsageRecord,
)


def rec(i: int, **fields) -> UsageRecord:
    return UsageRecord(model="cheap-8b", request_id=f"r{i}", prompt_tokens=10, **fields)


def wait_until(predicate, timeout: float = 10.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.005)
    return predicate()


class ThreadRecordingStore(MemoryUsageStore):
    """A real memory store that also notes which thread wrote each batch, and the batch sizes."""

    def __init__(self) -> None:
        super().__init__()
        self.writer_threads: set[int] = set()
        self.batches: list[int] = []

    def write(self, records: Sequence[UsageRecord]) -> None:
        self.writer_threads.add(threading.get_ident())
        self.batches.append(len(records))
        super().write(records)


def test_records_are_written_in_batches_off_the_calling_thread() -> None:
    store = ThreadRecordingStore()
    meter = Meter(store, batch_size=10, flush_interval=60.0)
    for i in range(25):
        meter.record(rec(i))
    # Full batches wake the writer long before the 60 s interval (at most 9 records can be left
    # waiting for it); the writer drains what is queued, never more than a batch per write.
    assert wait_until(lambda: len(store) >= 16)
    assert all(size <= 10 for size in store.batches)
    assert meter.flush(timeout=10)
    assert len(store) == 25 and meter.pending == 0
    assert threading.get_ident() not in store.writer_threads
    meter.close()


def test_flush_interval_writes_a_partial_batch() -> None:
    store = MemoryUsageStore()
    with Meter(store, batch_size=1000, flush_interval=0.05) as meter:
        meter.record(rec(1))
        assert wait_until(lambda: len(store) == 1)


def test_close_flushes_everything_to_sqlite(tmp_path: Path) -> None:
    path = tmp_path / "usage.sqlite3"
    with Meter(SqliteUsageStore(path), batch_size=50, flush_interval=60.0) as meter:
        for i in range(123):
            meter.record(rec(i))
    assert len(SqliteUsageStore(path, readonly=True).select()) == 123
    with pytest.raises(MeterClosedError):
        meter.record(rec(999))
    meter.close()  # idempotent


def test_no_loss_from_many_threads(make_store) -> None:
    store = make_store()
    meter = Meter(store, batch_size=64, flush_interval=0.01)
    threads_n, per_thread = 8, 500

    def work(t: int) -> None:
        for i in range(per_thread):
            meter.record(rec(t * per_thread + i))
            if i % 100 == 0:
                meter.flush()  # flushes racing with records and with each other

    threads = [threading.Thread(target=work, args=(t,)) for t in range(threads_n)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    meter.close()
    stored = make_store().select()
    assert len(stored) == threads_n * per_thread
    assert {r.request_id for r in stored} == {f"r{i}" for i in range(threads_n * per_thread)}


def test_costs_are_filled_from_prices(make_store) -> None:
    with Meter(make_store(), PRICES) as meter:
        meter.record(UsageRecord(model="auto", served_model="strong-k2", prompt_tokens=1000,
                                 completion_tokens=500, request_id="a"))  # fmt: skip
        meter.record(UsageRecord(model="cheap-8b", prompt_tokens=10, request_id="b", cost=1.5))
        meter.record(UsageRecord(model="unknown-model", prompt_tokens=10, request_id="c"))
    costs = {r.request_id: r.cost for r in make_store().select()}
    assert costs == {"a": pytest.approx(0.003), "b": 1.5, "c": None}


class FlakyStore(MemoryUsageStore):
    """A real memory store whose disk 'fills up' for the first ``failures`` writes."""

    def __init__(self, failures: int) -> None:
        super().__init__()
        self.failures = failures

    def write(self, records: Sequence[UsageRecord]) -> None:
        if self.failures > 0:
            self.failures -= 1
            raise OSError(28, "No space left on device")
        super().write(records)


def test_a_failing_store_loses_nothing(caplog) -> None:
    store = FlakyStore(failures=3)
    meter = Meter(store, batch_size=5, flush_interval=0.01)
    for i in range(12):
        meter.record(rec(i))
    assert meter.flush(timeout=20)
    assert len(store) == 12
    assert "could not store" in caplog.text
    meter.close()


def test_close_reports_a_store_that_keeps_failing() -> None:
    store = FlakyStore(failures=10**9)
    meter = Meter(store, batch_size=5, flush_interval=0.01)
    for i in range(7):
        meter.record(rec(i))
    with pytest.raises(OSError, match="No space left"):
        meter.close()
    assert meter.pending == 7  # still held, not dropped
    store.failures = 0
    meter._drain_inline()  # the records can still be saved once the fault is gone
    assert len(store) == 7


async def test_async_context_manager(tmp_path: Path) -> None:
    path = tmp_path / "usage.sqlite3"
    async with Meter(SqliteUsageStore(path)) as meter:
        meter.record(rec(1))
    assert len(SqliteUsageStore(path).select()) == 1


def test_flush_without_a_writer_thread_writes_inline() -> None:
    store = MemoryUsageStore()
    meter = Meter(store)
    assert meter.flush() is True
    meter.close()
    assert len(store) == 0


def test_default_store_lives_in_the_state_dir(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setenv("GONKA_MUX_STATE_DIR", str(tmp_path / "state"))
    with Meter() as meter:
        meter.record(rec(1))
    assert (tmp_path / "state" / "usage.sqlite3").exists()
    monkeypatch.delenv("GONKA_MUX_STATE_DIR")
    monkeypatch.setenv("XDG_STATE_HOME", str(tmp_path / "xdg"))
    assert SqliteUsageStore().path == tmp_path / "xdg" / "gonka_mux" / "usage.sqlite3"
    monkeypatch.delenv("XDG_STATE_HOME")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    expected = tmp_path / "home" / ".local" / "state" / "gonka_mux" / "usage.sqlite3"
    assert SqliteUsageStore().path == expected


def test_records_survive_an_exit_without_close(tmp_path: Path) -> None:
    """A process that records and exits without closing its meter loses nothing (atexit)."""
    path = tmp_path / "usage.sqlite3"
    script = textwrap.dedent(
        f"""
        from gonka_mux.metering import Meter, SqliteUsageStore, UsageRecord
        meter = Meter(SqliteUsageStore({str(path)!r}), batch_size=10_000, flush_interval=3600)
        for i in range(1000):
            meter.record(UsageRecord(model="m", request_id=str(i)))
        """
    )
    subprocess.run([sys.executable, "-c", script], check=True, timeout=60)
    assert len(SqliteUsageStore(path, readonly=True).select()) == 1000


def test_readonly_store_refuses_missing_files_and_writes(tmp_path: Path) -> None:
    missing = SqliteUsageStore(tmp_path / "nope.sqlite3", readonly=True)
    with pytest.raises(FileNotFoundError, match="GONKA_MUX_STATE_DIR"):
        missing.select()
    assert not (tmp_path / "nope.sqlite3").exists()
    with pytest.raises(PermissionError):
        missing.write([rec(1)])


def test_repr_hides_the_caller_key() -> None:
    record = UsageRecord(model="m", key="sk-secret-key-123")
    assert "sk-secret-key-123" not in repr(record)
