"""A hit is metered as a hit (no upstream tokens, the cost it saved), reported by the usage
CLI and counted by Prometheus; the SQLite usage file gains the columns in place."""

from __future__ import annotations

import io
import sqlite3

import pytest
from prometheus_client import CollectorRegistry
from tests.cache._helpers import MSG

from gonka_mux import AsyncMultiplexer
from gonka_mux.dashboard import cli
from gonka_mux.metering import SqliteUsageStore, UsageQuery, UsageRecord
from gonka_mux.metering.prometheus import PrometheusExporter

PRICES = {"m": {"prompt": 1.0, "completion": 2.0}}  # per 1M tokens


async def test_hit_is_metered_with_zero_tokens_and_the_cost_saved(backend, tmp_path):
    exporter = PrometheusExporter(CollectorRegistry())
    mux = AsyncMultiplexer()
    mux.add_endpoint(backend.url, models=["m"])
    mux.enable_cache("memory")
    meter = mux.enable_metering(
        path=tmp_path / "usage.sqlite3", prices=PRICES, sinks=[exporter], flush_interval=0.05
    )
    miss = await mux.chat.completions.create(model="m", messages=MSG, temperature=0)
    await mux.chat.completions.create(model="m", messages=MSG, temperature=0)
    stream = await mux.chat.completions.create(model="m", messages=MSG, temperature=0, stream=True)
    assert [c async for c in stream]
    stream = await mux.chat.completions.create(model="m", messages=MSG, temperature=0, stream=True)
    assert [c async for c in stream]
    await mux.chat.completions.create(model="m", messages=MSG)  # sampled: not looked up
    await mux.aclose()

    records = SqliteUsageStore(tmp_path / "usage.sqlite3").select()
    assert [r.cache for r in records] == ["miss", "hit", "miss", "hit", ""]
    hit = records[1]
    assert hit.prompt_tokens == hit.completion_tokens == 0 and hit.endpoint is None
    assert hit.attempts == 0 and hit.cost == 0
    assert hit.saved_tokens == miss.usage.total_tokens > 0
    expected = (miss.usage.prompt_tokens * 1.0 + miss.usage.completion_tokens * 2.0) / 1e6
    assert hit.saved_cost == pytest.approx(expected)
    assert records[3].saved_tokens > 0  # a replayed stream saved its recorded usage

    totals = UsageQuery(records).totals()
    assert (totals.cache_hits, totals.cache_misses) == (2, 2)
    assert totals.cache_hit_rate == 0.5
    assert totals.saved_cost == pytest.approx(hit.saved_cost + records[3].saved_cost)

    text = exporter.exposition()
    assert 'gonka_mux_cache_requests_total{model="m",result="hit"} 2.0' in text
    assert 'gonka_mux_cache_requests_total{model="m",result="miss"} 2.0' in text
    assert "gonka_mux_cache_saved_cost_total" in text

    out = io.StringIO()
    args = cli.build_parser().parse_args(["usage", "--db", str(tmp_path / "usage.sqlite3")])
    assert cli.run_usage(args, out=out) == 0
    assert "Response cache: 2 hit(s) of 4 lookup(s) (50.0% hit rate)" in out.getvalue()
    out = io.StringIO()
    args = cli.build_parser().parse_args(
        ["usage", "--db", str(tmp_path / "usage.sqlite3"), "--json"]
    )
    assert cli.run_usage(args, out=out) == 0
    assert '"hit_rate": 0.5' in out.getvalue()
    assert meter.store is not None


OLD_COLUMNS = (
    "model TEXT, time REAL NOT NULL, request_id TEXT PRIMARY KEY, key TEXT, session_id TEXT, "
    "served_model TEXT, tier TEXT, tiering_reason TEXT, endpoint TEXT, attempts INTEGER, "
    "prompt_tokens INTEGER, completion_tokens INTEGER, reasoning_tokens INTEGER, latency REAL, "
    "ttft REAL, status TEXT, error TEXT, cost REAL, hedged INTEGER, failed_over INTEGER"
)


def old_usage_file(path) -> None:
    conn = sqlite3.connect(path)
    with conn:
        conn.execute(f"CREATE TABLE usage ({OLD_COLUMNS})")
        conn.execute(
            "INSERT INTO usage (model, time, request_id, attempts, prompt_tokens, "
            "completion_tokens, reasoning_tokens, status, hedged, failed_over) "
            "VALUES ('m', 1.0, 'old', 1, 10, 5, 0, 'ok', 0, 0)"
        )
        conn.execute("PRAGMA user_version = 1")
    conn.close()


def test_version_1_usage_file_is_migrated_in_place(tmp_path):
    path = tmp_path / "usage.sqlite3"
    old_usage_file(path)
    readonly = SqliteUsageStore(path, readonly=True)  # a report reads it without the columns
    (old,) = readonly.select()
    assert old.request_id == "old" and old.cache == "" and old.saved_tokens == 0
    readonly.close()
    store = SqliteUsageStore(path)
    store.write([UsageRecord(model="m", time=2.0, request_id="new", cache="hit", saved_tokens=9)])
    records = {r.request_id: r for r in store.select()}
    assert records["old"].cache == "" and records["old"].total_tokens == 15
    assert records["new"].cache == "hit" and records["new"].saved_tokens == 9
    store.close()
    conn = sqlite3.connect(path)
    assert conn.execute("PRAGMA user_version").fetchone()[0] == 2
    conn.close()
