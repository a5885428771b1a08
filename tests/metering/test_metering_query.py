"""Query correctness on the hand-checked data set (tests/_usage_data.py), on both stores."""

from __future__ import annotations

from datetime import datetime, timezone

import pytest
from tests._usage_data import T0, usage_records

from gonka_mux.metering import ModelPrice, UsageQuery, UsageRecord, parse_duration, parse_time
from gonka_mux.metering.query import percentile

approx = pytest.approx


@pytest.fixture
def query(make_store) -> UsageQuery:
    make_store().write(usage_records())
    return UsageQuery(make_store())  # SQLite: a second connection reads what the first wrote


def test_totals(query: UsageQuery) -> None:
    t = query.totals()
    assert (t.requests, t.errors, t.attempts, t.hedged, t.failed_over) == (8, 1, 12, 1, 2)
    assert (t.prompt_tokens, t.completion_tokens, t.reasoning_tokens) == (4550, 2025, 600)
    assert t.total_tokens == 6575
    assert t.cost == approx(0.00995)
    assert t.priced_requests == 8
    # latencies sorted: 0.5 0.6 0.7 0.9 1.0 1.5 2.0 4.0
    assert (t.latency_p50, t.latency_p95, t.latency_p99) == (
        approx(0.95),
        approx(3.3),
        approx(3.86),
    )
    # ttfts sorted: 0.1 0.15 0.2 0.4 0.8
    assert (t.ttft_p50, t.ttft_p95, t.ttft_p99) == (approx(0.2), approx(0.72), approx(0.784))


def test_breakdown_by_model_uses_the_served_model(query: UsageQuery) -> None:
    rows = query.breakdown(by="model")
    assert [r.group for r in rows] == ["strong-k2", "cheap-8b"]  # most tokens first
    strong, cheap = rows
    assert (strong.requests, strong.prompt_tokens, strong.completion_tokens) == (4, 3550, 1525)
    assert strong.cost == approx(0.00965)
    assert (strong.latency_p50, strong.latency_p95) == (approx(1.75), approx(3.7))
    assert (cheap.requests, cheap.total_tokens, cheap.cost) == (4, 1500, approx(0.0003))
    assert cheap.latency_p50 == approx(0.65)
    requested = {r.group: r.requests for r in query.breakdown(by="requested_model")}
    assert requested == {"auto": 6, "strong-k2": 2}


@pytest.mark.parametrize(
    ("by", "expected"),
    [
        ("session", [("s2", 3300), ("s1", 2250), ("s3", 950), (None, 75)]),
        ("key", [("bob", 3800), ("alice", 2700), (None, 75)]),
        ("endpoint", [("node-b", 5600), ("node-a", 975)]),
        ("tier", [("strong", 5000), ("cheap", 1500), (None, 75)]),
        ("status", [("ok", 6075), ("error", 500)]),
    ],
)
def test_breakdowns(query: UsageQuery, by: str, expected: list) -> None:
    assert [(r.group, r.total_tokens) for r in query.breakdown(by=by)] == expected


def test_two_level_breakdown(query: UsageQuery) -> None:
    rows = {r.group: r.total_tokens for r in query.breakdown(by=("session", "model"))}
    assert rows == {
        ("s1", "cheap-8b"): 750,
        ("s1", "strong-k2"): 1500,
        ("s2", "cheap-8b"): 300,
        ("s2", "strong-k2"): 3000,
        ("s3", "cheap-8b"): 450,
        ("s3", "strong-k2"): 500,
        (None, "strong-k2"): 75,
    }
    assert query.breakdown(by=("session", "model"))[0].to_dict()["group"] == ["s2", "strong-k2"]
    with pytest.raises(ValueError, match="cannot break usage down by 'colour'"):
        query.breakdown(by="colour")


def test_timeseries_fills_empty_buckets(query: UsageQuery) -> None:
    series = query.timeseries(bucket="1h")
    assert [(s.group - T0, s.requests, s.total_tokens) for s in series] == [
        (0, 3, 1950),
        (3600, 2, 3450),
        (7200, 0, 0),
        (10800, 3, 1175),
    ]
    assert series[2].latency_p50 is None
    half_hours = query.timeseries(bucket=1800, since=T0 + 3600, until=T0 + 7200)
    assert [(s.group - T0, s.requests) for s in half_hours] == [(3600, 2)]
    assert query.timeseries(bucket="1h", key="nobody") == []


def test_filters_and_time_bounds(query: UsageQuery) -> None:
    assert query.totals(key="alice").total_tokens == 2700
    assert query.totals(model="cheap-8b").requests == 4
    assert query.totals(session_id="s3", status="ok").requests == 1
    assert query.totals(since=T0 + 3600).requests == 5
    assert query.totals(until=T0 + 3600).requests == 3
    day = datetime(2026, 1, 1, 1, 0, tzinfo=timezone.utc)
    assert query.totals(since=day, until=T0 + 10900).requests == 2
    assert query.totals(since="2026-01-01T03:00:00+00:00").requests == 3
    with pytest.raises(TypeError, match="unknown usage filter"):
        query.totals(colour="red")


def test_tiering_report(query: UsageQuery) -> None:
    report = query.tiering()
    assert report.strong_tier == "strong"
    # The strong tier's records (1000+500, 2000+1000, 500+0 tokens; cost 0.003, 0.006, 0.0005)
    # give back the strong model's own prices: 1.0 per 1M prompt, 4.0 per 1M completion.
    assert report.strong_pricing == "fitted"
    assert report.strong_prices == ModelPrice(prompt=1.0, completion=4.0)  # not 0.9999999999
    rows = {r.tier: r for r in report.rows}
    assert set(rows) == {"cheap", "strong", "(none)"}
    assert (rows["cheap"].requests, rows["cheap"].total_tokens) == (4, 1500)
    # cheap: 1000 prompt x 1.0 + 500 completion x 4.0 = 3000 per 1M; it cost 0.0003
    assert rows["cheap"].strong_cost == approx(0.003)
    assert rows["cheap"].saved == approx(0.0027)
    assert rows["strong"].saved == approx(0.0, abs=1e-12)
    # (none) ran on strong-k2: 50 x 1.0 + 25 x 4.0 = 150 per 1M, what it cost: nothing saved
    assert rows["(none)"].saved == approx(0.0, abs=1e-12)
    assert report.cost == approx(0.00995)
    assert report.strong_cost == approx(0.01265)
    assert report.saved == approx(0.0027)
    assert report.saved_fraction == approx(0.0027 / 0.01265)
    # 0.01265 over the 6575 priced tokens
    assert report.strong_rate_per_1m == approx(12650 / 6575)
    assert report.unpriced_requests == 0


def _priced(tier: str, prompt: int, completion: int, price: ModelPrice) -> UsageRecord:
    return UsageRecord(
        model="auto",
        tier=tier,
        prompt_tokens=prompt,
        completion_tokens=completion,
        cost=price.cost(prompt, completion),
    )


def test_tiering_saving_is_at_the_strong_models_own_prices() -> None:
    """A cheap tier that answers at length (completion-heavy) behind a strong tier that reads
    a lot (prompt-heavy): a blended strong rate would price the cheap tier's tokens far too low.
    """
    strong, cheap = ModelPrice(1.0, 4.0), ModelPrice(0.1, 0.4)
    records = [
        _priced("strong", 1000, 100, strong),  # 1000 + 400 = 1400 per 1M
        _priced("strong", 2000, 300, strong),  # 2000 + 1200 = 3200 per 1M
        _priced("cheap", 100, 1000, cheap),  # costs 10 + 400 = 410; on strong 100 + 4000 = 4100
        _priced("cheap", 200, 500, cheap),  # costs 20 + 200 = 220; on strong 200 + 2000 = 2200
    ]
    report = UsageQuery(records).tiering()
    rows = {r.tier: r for r in report.rows}
    assert report.strong_pricing == "fitted"
    assert rows["cheap"].cost == approx(630e-6)
    assert rows["cheap"].strong_cost == approx(6300e-6)
    assert rows["cheap"].saved == approx(5670e-6)
    assert report.strong_cost == approx(10900e-6)  # 4600 + 6300
    assert report.saved == approx(5670e-6)
    assert report.saved_fraction == approx(5670 / 10900)  # 52.0%
    # The blended rate (4600 per 1M over 3400 tokens) would have said 1805 saved: 25.7%.
    blended = 4600e-6 / 3400 * 1800 - 630e-6
    assert report.saved > 3 * blended
    # Given prices win over the fit, and say so.
    given = UsageQuery(records).tiering(strong_price=ModelPrice(2.0, 8.0))
    assert given.strong_pricing == "given"
    assert {r.tier: r.strong_cost for r in given.rows}["cheap"] == approx(12600e-6)


def test_tiering_falls_back_to_a_blended_rate_when_the_mix_never_changes() -> None:
    strong = ModelPrice(1.0, 4.0)
    records = [
        _priced("strong", 1000, 500, strong),  # 3000 per 1M over 1500 tokens: 2.0 per 1M
        _priced("strong", 2000, 1000, strong),
        _priced("cheap", 300, 0, ModelPrice(0.1, 0.4)),
    ]
    report = UsageQuery(records).tiering()
    assert report.strong_pricing == "blended"
    assert report.strong_prices is None
    assert {r.tier: r.strong_cost for r in report.rows}["cheap"] == approx(600e-6)


def test_tiering_with_exact_strong_prices(query: UsageQuery) -> None:
    report = query.tiering(strong_price=ModelPrice(prompt=1.0, completion=4.0))
    rows = {r.tier: r for r in report.rows}
    # cheap tokens on strong prices: 1000 prompt * 1 + 500 completion * 4 = 3000 per 1M
    assert rows["cheap"].strong_cost == approx(0.003)
    assert rows["strong"].saved == approx(0.0)
    # Naming a different strong tier changes the rate.
    assert query.tiering(strong_tier="cheap").strong_rate_per_1m == approx(0.2)


def test_tiering_without_costs() -> None:
    report = UsageQuery(usage_records(priced=False)).tiering()
    assert report.unpriced_requests == 8
    assert report.saved is None and report.strong_cost is None
    assert {r.tier: r.requests for r in report.rows} == {"cheap": 4, "strong": 3, "(none)": 1}


def test_sqlite_round_trip_keeps_every_field(make_store) -> None:
    records = usage_records()
    make_store().write(records)
    stored = {r.request_id: r for r in make_store().select()}
    assert [stored[r.request_id] for r in records] == records


def test_same_request_id_is_never_counted_twice(make_store) -> None:
    store = make_store()
    first = usage_records()[0]
    store.write([first])
    first.completion_tokens = 999
    store.write([first])
    assert [r.completion_tokens for r in store.select()] == [999]


def test_percentile_and_parsers() -> None:
    assert percentile([], 50) is None
    assert percentile([3.0], 99) == 3.0
    assert percentile(list(range(1, 101)), 50) == approx(50.5)
    assert percentile(list(range(1, 101)), 99) == approx(99.01)
    assert parse_duration("90s") == 90 and parse_duration("2w") == 14 * 86400
    assert parse_time("24h", now=100_000.0) == 100_000.0 - 86400
    assert parse_time("all") is None and parse_time(None) is None
    assert parse_time("1767225600") == T0
    for bad in ("yesterday", "-3h"):
        with pytest.raises(ValueError, match="invalid"):
            parse_time(bad)
    with pytest.raises(ValueError, match="positive"):
        parse_duration(0)
