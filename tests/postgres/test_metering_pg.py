"""Usage records on a real PostgreSQL: the SQLite store's suite run on both, schema evolution,
journal replay after SIGKILL, the usage CLI, passwords kept out of text, and a database outage
under live traffic through a real AsyncMultiplexer (served == recorded)."""

from __future__ import annotations

import asyncio
import json
import logging
import os
import signal
import subprocess
import sys
import textwrap
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import psycopg
import pytest
from tests._postgres import PostgresServer, free_port
from tests._usage_data import usage_records

# The store-agnostic cases of the SQLite suite, run here on PostgreSQL too (through this
# module's make_store); the imported `query` fixture builds on it.
from tests.metering.test_metering_meter import (  # noqa: F401
    test_costs_are_filled_from_prices,
    test_no_loss_from_many_threads,
)
from tests.metering.test_metering_query import (  # noqa: F401
    query,
    test_breakdown_by_model_uses_the_served_model,
    test_breakdowns,
    test_filters_and_time_bounds,
    test_same_request_id_is_never_counted_twice,
    test_sqlite_round_trip_keeps_every_field,
    test_tiering_report,
    test_tiering_with_exact_strong_prices,
    test_timeseries_fills_empty_buckets,
    test_totals,
    test_two_level_breakdown,
)

from gonka_mux import AsyncMultiplexer
from gonka_mux._postgres import close_pools, sync_pool
from gonka_mux.dashboard.cli import build_parser, run_usage
from gonka_mux.errors import StoreUnavailableError
from gonka_mux.metering import Meter, SqliteUsageStore, UsageRecord, UsageStore
from gonka_mux.metering.postgres import TABLE, PostgresUsageStore
from gonka_mux.metering.records import RECORD_FIELDS
from gonka_mux.metering.stores import open_usage_store
from gonka_mux.testing import FakeBackendSpec, FakeFleet

PASSWORD = "s3cret-pg-pass-do-not-leak"


@pytest.fixture(autouse=True)
def _own_state_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    # The PostgreSQL store journals under the state dir: keep each test's journal its own.
    monkeypatch.setenv("GONKA_MUX_STATE_DIR", str(tmp_path / "state"))
    yield
    close_pools()  # each test has its own database: do not keep its pool reconnecting


@pytest.fixture(params=["sqlite", "postgres"])
def make_store(
    request: pytest.FixtureRequest, tmp_path: Path, postgres_server: PostgresServer
) -> Iterator[Callable[[], UsageStore]]:
    """Like tests/metering's make_store, over SQLite and PostgreSQL: a second call reopens what
    the first wrote (a new store object on the same file / database)."""
    made: list[UsageStore] = []
    url = postgres_server.fresh_database() if request.param == "postgres" else None

    def make() -> UsageStore:
        store = open_usage_store(url if url else tmp_path / "usage.sqlite3")
        made.append(store)
        return store

    make.kind = request.param  # type: ignore[attr-defined]
    yield make
    for store in made:
        store.close()


def test_open_usage_store_picks_the_backend(tmp_path: Path, postgres_url: str) -> None:
    assert isinstance(open_usage_store(postgres_url), PostgresUsageStore)
    assert isinstance(open_usage_store(tmp_path / "u.sqlite3"), SqliteUsageStore)
    assert open_usage_store(postgres_url, readonly=True).journal_dir is None
    with pytest.raises(ValueError, match="postgresql://"):
        PostgresUsageStore("/not/a/url")


def test_columns_cover_every_record_field(postgres_url: str) -> None:
    store = PostgresUsageStore(postgres_url)
    store.write(usage_records()[:1])
    with psycopg.connect(postgres_url) as conn:
        columns = {
            row[0]
            for row in conn.execute(
                "SELECT column_name FROM information_schema.columns WHERE table_name = %s",
                (TABLE,),
            )
        }
    assert set(RECORD_FIELDS) <= columns


def test_a_missing_column_is_added_when_the_store_opens(postgres_url: str) -> None:
    """A table made by an older version (fewer fields) gets the new fields' columns."""
    with psycopg.connect(postgres_url, autocommit=True) as conn:
        conn.execute(
            f"CREATE TABLE {TABLE} (request_id TEXT PRIMARY KEY, model TEXT, "
            "time DOUBLE PRECISION NOT NULL, prompt_tokens BIGINT)"
        )
        conn.execute(f"INSERT INTO {TABLE} VALUES ('old', 'm', 1.0, 7)")
    store = PostgresUsageStore(postgres_url)
    records = usage_records()
    store.write(records)
    stored = {r.request_id: r for r in store.select()}
    assert [stored[r.request_id] for r in records] == records  # nothing dropped
    old = stored["old"]
    # Fields it never had read as the record's defaults (a record made then said the same).
    assert (old.model, old.prompt_tokens, old.hedged, old.attempts) == ("m", 7, False, 1)
    assert old.cost is None and old.session_id is None


def test_text_postgres_cannot_hold_is_stored_marked_not_lost(postgres_url: str) -> None:
    store = PostgresUsageStore(postgres_url)
    with Meter(store) as meter:
        meter.record(UsageRecord(model="a\x00b", request_id="nul", session_id="x\ud800y"))
        meter.record(UsageRecord(model="ok", request_id="fine"))
    stored = {r.request_id: r for r in store.select()}
    assert stored["nul"].model == "a\ufffdb" and stored["nul"].session_id == "x\ufffdy"
    assert stored["fine"].model == "ok" and meter.quarantined == 0


CHILD = textwrap.dedent(
    """
    import sys, time
    from gonka_mux.metering import Meter, UsageRecord
    from gonka_mux.metering.stores import open_usage_store
    meter = Meter(open_usage_store(sys.argv[1]), flush_interval=3600, batch_size=10**6)
    for i in range(int(sys.argv[2])):
        meter.record(UsageRecord(model="m", request_id=f"k{i}", prompt_tokens=i))
    meter.flush()  # some reach the database before the kill: the replay must not count them twice
    for i in range(int(sys.argv[2]), 2 * int(sys.argv[2])):
        meter.record(UsageRecord(model="m", request_id=f"k{i}", prompt_tokens=i))
    print("recorded", flush=True)
    time.sleep(60)
    """
)


def test_records_survive_sigkill_and_are_replayed_once(postgres_url: str) -> None:
    env = {**os.environ}
    child = subprocess.Popen(
        [sys.executable, "-c", CHILD, postgres_url, "50"],
        stdout=subprocess.PIPE,
        text=True,
        env=env,
    )
    try:
        assert child.stdout is not None and child.stdout.readline().strip() == "recorded"
    finally:
        child.send_signal(signal.SIGKILL)
        child.wait()
    store = PostgresUsageStore(postgres_url)
    # the flushed half, and whatever of the rest the writer thread had sent before the kill
    assert 50 <= len(store.select()) <= 100
    with Meter(store) as meter:  # opening a meter on the store replays the dead one's journal
        assert meter.journal_dir is not None
    stored = store.select()
    # every record once: none lost, none counted twice by the replay
    assert sorted(r.request_id for r in stored) == sorted(f"k{i}" for i in range(100))
    assert not list(meter.journal_dir.glob("*.jsonl"))


def test_usage_cli_reads_postgres(postgres_url: str, capsys: pytest.CaptureFixture[str]) -> None:
    PostgresUsageStore(postgres_url).write(usage_records())
    args = build_parser().parse_args(["usage", "--db", postgres_url, "--since", "all", "--json"])
    assert run_usage(args) == 0
    payload = json.loads(capsys.readouterr().out)
    assert payload["totals"]["requests"] == 8
    html = Path(os.environ["GONKA_MUX_STATE_DIR"]) / "r.html"
    args = build_parser().parse_args(["usage", "--db", postgres_url, "--html", str(html)])
    assert run_usage(args) == 0
    assert "(8 requests)" in capsys.readouterr().out and html.exists()


def test_usage_cli_on_an_empty_database_shows_nothing(postgres_url: str, capsys) -> None:
    args = build_parser().parse_args(["usage", "--db", postgres_url, "--json"])
    assert run_usage(args) == 0
    assert json.loads(capsys.readouterr().out)["totals"]["requests"] == 0
    with psycopg.connect(postgres_url) as conn:  # read-only: nothing created
        assert conn.execute("SELECT to_regclass(%s)", (TABLE,)).fetchone() == (None,)


@pytest.fixture
def password_url(postgres_server: PostgresServer, postgres_url: str) -> str:
    """``postgres_url`` as a role with a password (the fixture's cluster trusts every login,
    so the password is carried but not checked: what matters is where it shows up)."""
    role = "r_" + uuid.uuid4().hex[:10]
    with psycopg.connect(postgres_url, autocommit=True) as conn:
        conn.execute(f"CREATE ROLE {role} LOGIN PASSWORD '{PASSWORD}'")
        conn.execute(f"GRANT ALL ON SCHEMA public TO {role}")
    database = postgres_url.rsplit("/", 1)[1]
    return f"postgresql://{role}:{PASSWORD}@127.0.0.1:{postgres_server.port}/{database}"


def test_password_never_in_repr_errors_logs_or_cli(
    password_url: str, capsys: pytest.CaptureFixture[str], caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    store = PostgresUsageStore(password_url)
    store.write(usage_records())  # the password URL works
    assert len(store.select()) == 8
    assert PASSWORD not in repr(store) and PASSWORD not in repr(Meter(store, journal=False))
    assert PASSWORD not in str(store.journal_dir)
    # The same credentials pointed at a port nothing listens on: the error is typed and clean.
    parts = urlsplit(password_url)
    dead = urlunsplit(
        parts._replace(netloc=parts.netloc.replace(f":{parts.port}", f":{free_port()}"))
    )
    assert PASSWORD in dead
    sync_pool(dead, timeout=1.0)  # the pool's wait, short for this test
    with pytest.raises(StoreUnavailableError) as info:
        PostgresUsageStore(dead).select()
    error = info.value
    assert error.backend == "postgresql" and error.retryable
    assert PASSWORD not in str(error) and "***" in str(error)
    assert error.__cause__ is None and error.__suppress_context__
    args = build_parser().parse_args(["usage", "--db", dead, "--json"])
    assert run_usage(args) == 2
    captured = capsys.readouterr()
    assert PASSWORD not in captured.err + captured.out and "unavailable" in captured.err
    assert PASSWORD not in caplog.text


# --------------------------------------------------------------------------- outage


async def _traffic(mux: AsyncMultiplexer, served: list[str], stop: asyncio.Event) -> None:
    """Requests one after another until ``stop``; notes every request served."""
    while not stop.is_set():
        reply = await mux.chat.completions.create(
            model="m", messages=[{"role": "user", "content": "hi"}]
        )
        served.append(reply.choices[0].message.content or "")
        await asyncio.sleep(0.01)


@pytest.mark.slow
async def test_an_outage_loses_and_duplicates_nothing_and_blocks_no_request(
    postgres_server: PostgresServer, postgres_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger="gonka_mux.metering")
    with FakeFleet([FakeBackendSpec(name="a")]) as fleet:
        mux = AsyncMultiplexer()
        mux.add_endpoint(fleet["a"].url, models=["m"], name="a")
        meter = mux.enable_metering(path=postgres_url, flush_interval=0.1)
        assert isinstance(meter.store, PostgresUsageStore)
        served: list[str] = []
        stop = asyncio.Event()
        worker = asyncio.create_task(_traffic(mux, served, stop))
        try:
            await asyncio.sleep(1.0)
            before_outage = len(served)
            await asyncio.to_thread(postgres_server.stop)
            try:
                await asyncio.sleep(10.0)
                during = len(served) - before_outage
            finally:
                await asyncio.to_thread(postgres_server.start)
            await asyncio.sleep(1.0)
        finally:
            stop.set()
            await worker
        # Requests went on while the database was down (nothing waited on it).
        assert before_outage > 0 and during > 0
        # The pool reconnects with its own backoff; then the writer stores what it kept.
        assert await asyncio.to_thread(meter.flush, 120)
        await mux.aclose()  # flushes: waits until the database took every queued record
    store = PostgresUsageStore(postgres_url)
    stored = store.select()
    ids = [r.request_id for r in stored]
    assert len(ids) == len(set(ids))  # none duplicated
    assert len(stored) == len(served)  # none lost
    warnings = [
        r
        for r in caplog.records
        if r.levelno >= logging.WARNING and r.name.startswith("gonka_mux.metering")
    ]
    assert len(warnings) == 1, [r.getMessage() for r in warnings]  # one warning, not per batch
    journal = Path(os.environ["GONKA_MUX_STATE_DIR"]) / "usage-journal"
    assert not await asyncio.to_thread(lambda: list(journal.glob("*/*.jsonl")))
