"""Metering never stops and never loses a completed request: a record the store cannot take is
sanitised or quarantined alone, and records survive the process being killed (SIGKILL)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

from gonka_mux.metering import MemoryUsageStore, Meter, SqliteUsageStore, UsageRecord


def rec(i: int, **fields) -> UsageRecord:
    return UsageRecord(
        **{"model": "cheap-8b", "request_id": f"r{i}", "prompt_tokens": 10, **fields}
    )


def test_a_lone_surrogate_is_stored_sanitised_and_does_not_block_the_batch(tmp_path: Path):
    store = SqliteUsageStore(tmp_path / "usage.sqlite3")
    meter = Meter(store, batch_size=10, flush_interval=0.01)
    meter.record(rec(1, model="bad\ud800model", session_id="s\udfff"))
    for i in range(2, 12):
        meter.record(rec(i))
    started = time.monotonic()
    assert meter.flush(timeout=5)
    assert time.monotonic() - started < 2
    meter.close()
    records = {r.request_id: r for r in SqliteUsageStore(tmp_path / "usage.sqlite3").select()}
    assert len(records) == 11
    assert records["r1"].model == "bad\ufffdmodel" and records["r1"].session_id == "s\ufffd"


class PickyStore(MemoryUsageStore):
    """Refuses any batch holding a record with model 'poison' (as a store refusing a value)."""

    def write(self, records):
        if any(r.model == "poison" for r in records):
            raise ValueError("cannot store this value")
        super().write(records)


def test_an_unstorable_record_is_quarantined_alone(tmp_path: Path, caplog):
    store = PickyStore()
    meter = Meter(store, batch_size=50, flush_interval=0.01, journal=tmp_path / "journal")
    for i in range(5):
        meter.record(rec(i))
    meter.record(rec(99, model="poison"))
    for i in range(5, 10):
        meter.record(rec(i))
    assert meter.flush(timeout=5)
    assert len(store) == 10 and meter.quarantined == 1
    meter.record(rec(10))  # metering goes on
    meter.close()
    assert len(store) == 11
    (line,) = (tmp_path / "journal" / "quarantine.jsonl").read_text().splitlines()
    assert "r99" in line and "quarantined" in caplog.text
    assert [p.name for p in (tmp_path / "journal").iterdir()] == ["quarantine.jsonl"]


CHILD = textwrap.dedent(
    """
    import os, sys, time
    from gonka_mux.metering import Meter, SqliteUsageStore, UsageRecord
    meter = Meter(SqliteUsageStore(sys.argv[1]), flush_interval=3600, batch_size=10**6)
    for i in range(int(sys.argv[2])):
        meter.record(UsageRecord(model="m", request_id=f"k{i}", prompt_tokens=i))
    print("recorded", flush=True)
    time.sleep(60)
    """
)


def test_records_survive_sigkill(tmp_path: Path):
    db = tmp_path / "usage.sqlite3"
    child = subprocess.Popen(
        [sys.executable, "-c", CHILD, str(db), "500"], stdout=subprocess.PIPE, text=True
    )
    try:
        assert child.stdout is not None and child.stdout.readline().strip() == "recorded"
    finally:
        child.send_signal(signal.SIGKILL)
        child.wait(10)
    assert child.returncode == -signal.SIGKILL
    # Nothing reached SQLite (the writer waits an hour): everything is in the journal.
    meter = Meter(SqliteUsageStore(db))  # opening a meter on the store replays orphans
    meter.close()
    stored = SqliteUsageStore(db).select()
    assert sorted(r.prompt_tokens for r in stored) == list(range(500))
    assert not list((tmp_path / "usage.sqlite3.journal").glob("*.jsonl"))


def test_a_live_process_journal_is_not_replayed_by_another(tmp_path: Path):
    db = tmp_path / "usage.sqlite3"
    first = Meter(SqliteUsageStore(db), flush_interval=3600, batch_size=10**6)
    first.record(rec(1))
    second = Meter(SqliteUsageStore(db))
    assert second.recover() == 0  # first holds its journal's lock
    second.close()
    first.close()
    assert len(SqliteUsageStore(db).select()) == 1


def test_journal_files_are_private_and_rotated(tmp_path: Path):
    db = tmp_path / "usage.sqlite3"
    meter = Meter(SqliteUsageStore(db), flush_interval=0.01)
    for i in range(20):
        meter.record(rec(i))
    assert meter.flush(timeout=5)
    journal = tmp_path / "usage.sqlite3.journal"
    assert oct(journal.stat().st_mode & 0o777) == oct(0o700)
    for path in journal.iterdir():
        assert path.stat().st_mode & 0o077 == 0
        assert path.read_bytes() == b""  # rotated: the stored records' file is gone
    assert db.stat().st_mode & 0o077 == 0
    meter.close()
    assert list(journal.iterdir()) == []
    assert json  # (imported for the quarantine test's readers)
    assert os.path.exists(db)
