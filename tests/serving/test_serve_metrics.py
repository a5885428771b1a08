"""vLLM /metrics parsing against texts recorded from real servers (current and V0-era names)."""

from __future__ import annotations

import math

import pytest
from _serving_support import recorded
from prometheus_client.parser import text_string_to_metric_families

from gonka_mux.serving.metrics import Histogram, VllmMetrics, parse_prometheus_text

NEW_LOAD = "vllm-0.32.0-cpu-under-load.metrics.txt"
NEW_AFTER = "vllm-0.32.0-cpu-after-load.metrics.txt"
OLD = "vllm-v0-legacy.metrics.txt"


@pytest.mark.parametrize("name", [NEW_LOAD, NEW_AFTER, OLD])
def test_parser_agrees_with_prometheus_client(name: str) -> None:
    text = recorded(name)
    ours = sorted(
        (s.name, tuple(sorted(s.labels.items())), s.value) for s in parse_prometheus_text(text)
    )
    theirs = sorted(
        (s.name, tuple(sorted(s.labels.items())), s.value)
        for family in text_string_to_metric_families(text)
        for s in family.samples
    )
    assert len(ours) == len(theirs) > 50
    for a, b in zip(ours, theirs, strict=True):
        assert a[:2] == b[:2]
        assert a[2] == b[2] or (math.isnan(a[2]) and math.isnan(b[2]))


def test_current_names_under_load() -> None:
    m = VllmMetrics.from_text(recorded(NEW_LOAD))
    assert (m.running, m.waiting, m.queue_depth) == (2.0, 4.0, 6.0)
    assert m.waiting_by_reason == {"capacity": 4.0, "deferred": 0.0}
    assert m.kv_cache_usage == pytest.approx(0.000244, rel=1e-2)
    assert m.generation_tokens == 1046.0
    assert m.metric_names["kv_cache_usage"] == "vllm:kv_cache_usage_perc"
    assert m.metric_names["inter_token_latency"] == "vllm:inter_token_latency_seconds"
    assert m.model_names == ("tiny",)
    assert m.swapped is None


def test_old_names_are_understood() -> None:
    m = VllmMetrics.from_text(recorded(OLD))
    assert (m.running, m.waiting, m.swapped, m.queue_depth) == (3.0, 2.0, 0.0, 5.0)
    assert m.kv_cache_usage == 0.0  # present (not None) under the V0 name
    assert m.metric_names["kv_cache_usage"] == "vllm:gpu_cache_usage_perc"
    assert m.metric_names["inter_token_latency"] == "vllm:time_per_output_token_seconds"
    assert m.finished_by_reason == {"stop": 6193.0, "abort": 28.0, "length": 5.0}
    itl = m.histograms["inter_token_latency"]
    assert itl.count == 147223.0
    # Most tokens fall in the 0.025-0.05 s bucket: the median is inside it.
    assert 0.025 < itl.quantile(0.5) < 0.05


def test_latency_summaries_from_recorded_histograms() -> None:
    m = VllmMetrics.from_text(recorded(NEW_AFTER))
    lat = m.latency_summary()
    assert set(lat) == {
        "time_to_first_token",
        "inter_token_latency",
        "e2e_request_latency",
        "queue_time",
    }
    ttft = lat["time_to_first_token"]
    assert ttft["count"] == 8.0
    # Buckets: 2 in (0.04,0.06], 2 in (0.75,1.0], 4 in (1.0,2.5] -> p50 is at the 1.0 bound.
    assert ttft["p50"] == pytest.approx(1.0)
    assert ttft["p90"] == pytest.approx(1.0 + 1.5 * (7.2 - 4) / 4)
    assert ttft["mean"] == pytest.approx(9.358061790466309 / 8, rel=1e-5)


def test_recent_window_subtracts_an_earlier_scrape() -> None:
    before = VllmMetrics.from_text(recorded(NEW_LOAD))
    after = VllmMetrics.from_text(recorded(NEW_AFTER))
    recent = after.latency_summary(since=before)
    assert recent["e2e_request_latency"]["count"] == 6.0  # 8 finished in all, 2 before
    assert recent["time_to_first_token"]["count"] == 4.0


def test_restart_between_scrapes_is_not_negative() -> None:
    later = VllmMetrics.from_text(recorded(NEW_LOAD))
    earlier = VllmMetrics.from_text(recorded(NEW_AFTER))  # larger counts: the server restarted
    hist = later.histograms["e2e_request_latency"].minus(earlier.histograms["e2e_request_latency"])
    assert hist.count == 2.0


def test_data_parallel_engines_are_summed() -> None:
    text = recorded(NEW_LOAD)
    second = "\n".join(
        line.replace('engine="0"', 'engine="1"')
        for line in text.splitlines()
        if line.startswith("vllm:")
    )
    m = VllmMetrics.from_text(text + "\n" + second + "\n")
    assert (m.running, m.waiting) == (4.0, 8.0)
    assert m.kv_cache_usage == pytest.approx(0.000244, rel=1e-2)  # a fraction: averaged
    assert m.histograms["e2e_request_latency"].count == 4.0


def test_parser_handles_escapes_timestamps_and_garbage() -> None:
    text = (
        "# HELP x y\n"
        'vllm:num_requests_running{model_name="a \\"quoted\\", b\\\\c",engine="0"} 3 17000\n'
        "vllm:num_requests_waiting 2\n"
        "this line is garbage\n"
        'vllm:kv_cache_usage_perc{model_name="m",} 0.5\n'
        "vllm:generation_tokens_total NaN\n"
        'broken{label="x 1\n'
    )
    samples = parse_prometheus_text(text)
    assert samples[0].labels == {"model_name": 'a "quoted", b\\c', "engine": "0"}
    assert samples[0].value == 3.0
    m = VllmMetrics.from_samples(samples)
    assert (m.running, m.waiting, m.kv_cache_usage) == (3.0, 2.0, 0.5)
    assert math.isnan(m.generation_tokens or 0.0)
    assert len(samples) == 4


def test_empty_text_means_nothing_reported() -> None:
    m = VllmMetrics.from_text("")
    assert m.queue_depth is None and m.kv_cache_usage is None and m.latency_summary() == {}


def test_histogram_quantile_edges() -> None:
    h = Histogram(((0.1, 0.0), (1.0, 10.0), (math.inf, 20.0)), 20.0, 30.0)
    assert h.quantile(0.25) == pytest.approx(0.55)
    assert h.quantile(0.99) == 1.0  # beyond the last finite bound: report that bound
    assert Histogram((), 0.0, 0.0).quantile(0.5) is None
    assert h.summary()["mean"] == 1.5


def test_queue_time_in_the_first_bucket_is_an_honest_upper_bound() -> None:
    """Recorded: 2 requests queued 40 us on average, both in the first bucket (le 0.3 s).
    Interpolating inside that bucket said p50 = 0.15 s; the truth is only "at most"."""
    m = VllmMetrics.from_text(recorded(NEW_LOAD))
    queue = m.latency_summary()["queue_time"]
    assert queue["count"] == 2.0 and queue["mean"] == pytest.approx(4.0e-5, rel=0.01)
    assert queue["bounds"] == {"p50": "upper", "p90": "upper", "p99": "upper"}
    # Markov: a non-negative quantity's q-quantile is at most mean / (1 - q)
    assert queue["p50"] == pytest.approx(2 * queue["mean"], rel=1e-3)
    assert queue["p99"] <= 0.3 and queue["p50"] <= queue["p90"] <= queue["p99"]


def test_quantile_bounds_first_bucket_interior_and_overflow() -> None:
    h = Histogram(((0.5, 8.0), (1.0, 9.0), (2.0, 10.0), (math.inf, 12.0)), 12.0, 30.0)
    assert h.quantile_bound(0.5) == (0.5, "upper")  # Markov (2.5 / 0.5 = 5) is weaker here
    assert h.quantile_bound(0.6) == (0.5, "upper")
    assert h.quantile_bound(0.75) == (1.0, None)  # rank 9: the top of (0.5, 1.0]
    value, bound = h.quantile_bound(0.8)  # rank 9.6: inside (1.0, 2.0]
    assert bound is None and value == pytest.approx(1.6)
    assert h.quantile_bound(0.99) == (2.0, "lower")  # past the last finite bound
    assert h.summary()["bounds"] == {"p50": "upper", "p90": "lower", "p99": "lower"}
