""" "Tokens over time" bucket sizes, computed from the run's span: about 30-60 bars, never one
bar for a short run (the HTML report draws one bar per computed bucket)."""

from __future__ import annotations

import itertools

import pytest
from tests._usage_data import T0

from gonka_mux.dashboard.report import (
    _BUCKETS,
    MAX_BUCKETS,
    auto_bucket,
    bucket_count,
    report_data,
)
from gonka_mux.metering import UsageRecord


def run(span: float, requests: int = 50, start: float = T0 + 7.3) -> list[UsageRecord]:
    """``requests`` requests spread evenly over ``span`` seconds, 10 prompt tokens each."""
    step = span / max(requests - 1, 1)
    return [
        UsageRecord(model="m", time=start + i * step, prompt_tokens=10, completion_tokens=i)
        for i in range(requests)
    ]


@pytest.mark.parametrize(
    ("span", "width"),
    [
        (10, 1),  # a demo-length run: one bar a second, not one bar
        (59, 1),
        (300, 10),  # five minutes: 31 bars of 10 s
        (3600, 120),
        (4 * 3600, 300),
        (86400, 1800),
        (30 * 86400, 86400),
    ],
)
def test_bucket_width_follows_the_span(span: float, width: int) -> None:
    records = run(span)
    data = report_data(records)
    series = data["timeseries"]
    assert series["bucket"] == width
    points = series["points"]
    assert len(points) == bucket_count(records[0].time, records[-1].time, width)
    assert len(points) <= MAX_BUCKETS
    if span >= 30:
        assert len(points) >= 24, "a span of 30 s or more gets a real chart, not a few bars"
    # Every request is in exactly one bar.
    assert sum(p["requests"] for p in points) == len(records)
    assert sum(p["prompt"] for p in points) == 10 * len(records)
    assert sum(p["completion"] for p in points) == sum(range(len(records)))
    # Consecutive buckets, aligned to the epoch.
    assert all(b["t"] - a["t"] == width for a, b in itertools.pairwise(points))
    assert points[0]["t"] % width == 0


def test_every_span_gets_at_most_sixty_and_mostly_thirty_or_more() -> None:
    counts = []
    for span in range(30, 200_000, 997):
        first = T0 + span % 13
        width = auto_bucket(first, first + span)
        count = bucket_count(first, first + span, width)
        assert count <= MAX_BUCKETS
        # The chosen width is the finest that fits: the next smaller one gives too many bars.
        finer = [w for w in _BUCKETS if w < width]
        if finer:
            assert bucket_count(first, first + span, finer[-1]) > MAX_BUCKETS
        counts.append(count)
    assert min(counts) >= 24
    assert sorted(counts)[len(counts) // 2] >= 30  # the median chart has 30+ bars


def test_a_single_request_is_one_bucket_and_an_explicit_bucket_wins() -> None:
    assert report_data(run(0, requests=1))["timeseries"]["bucket"] == 1
    assert len(report_data(run(0, requests=1))["timeseries"]["points"]) == 1
    data = report_data(run(300), bucket="1m")
    assert data["timeseries"]["bucket"] == 60
    assert len(data["timeseries"]["points"]) in (5, 6)
