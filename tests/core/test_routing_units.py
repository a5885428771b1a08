"""Pure routing logic: strategies, health transitions, retry budget, peak EWMA, Retry-After."""

from __future__ import annotations

import random
from collections import Counter
from datetime import datetime, timedelta, timezone
from email.utils import format_datetime

import pytest

from gonka_mux.endpoint import Endpoint
from gonka_mux.routing import (
    HealthPolicy,
    HedgePolicy,
    LatencyWindow,
    PeakEwma,
    PowerOfTwoChoices,
    RetryBudget,
    RoundRobin,
    WeightedRandom,
    parse_retry_after,
    strategy_from_name,
)


def ep(name: str, *, weight: float = 1.0, cost: float | None = None, inflight: int = 0, **kw):
    e = Endpoint(object(), models=["m"], name=name, weight=weight, **kw)
    if cost is not None:
        e.ewma.observe(cost, 1.0)  # measured "now" (selections below run at 1.0)
    e.inflight = inflight
    return e


def test_p2c_prefers_lower_latency_times_load():
    fast, slow = ep("fast", cost=0.05), ep("slow", cost=1.0)
    s = PowerOfTwoChoices(rng=random.Random(1))
    picks = Counter(s.select((fast, slow), 1.0, (), 0.1).name for _ in range(200))
    assert picks == {"fast": 200}
    # load counts: 30 in flight on the fast one makes it worse than the idle slow one
    fast.inflight = 30
    picks = Counter(s.select((fast, slow), 1.0, (), 0.1).name for _ in range(50))
    assert picks["slow"] == 50


def test_p2c_weight_is_a_share_not_a_score_divisor():
    # weight does not scale the score: a 3x slower endpoint loses whatever its weight
    a, b = ep("a", cost=0.1, weight=1), ep("b", cost=0.3, weight=10)
    assert b.score(0.1, 1.0) == pytest.approx(3 * a.score(0.1, 1.0))
    s = PowerOfTwoChoices(rng=random.Random(2))
    assert Counter(s.select((a, b), 1.0, (), 0.1).name for _ in range(100)) == {"a": 100}
    # with equal latency the weights are shares: 1:3 gives about 25/75, not 0/100
    a, b = ep("a", cost=0.1, weight=1), ep("b", cost=0.1, weight=3)
    picks = Counter(s.select((a, b), 1.0, (), 0.1).name for _ in range(4000))
    assert 0.72 < picks["b"] / 4000 < 0.78


def test_p2c_external_load_is_a_load_signal():
    a, b = ep("a", cost=0.1), ep("b", cost=0.1)
    a.external_load = 20  # e.g. a vLLM node with 20 requests queued
    s = PowerOfTwoChoices(rng=random.Random(3))
    assert Counter(s.select((a, b), 1.0, (), 0.1).name for _ in range(100)) == {"b": 100}


def test_strategies_skip_unavailable_excluded_and_full():
    a, b, c = ep("a", cost=0.01), ep("b", cost=0.5), ep("c", cost=0.5, max_concurrent=1)
    a.health.until = 100.0  # cooling
    c.inflight = 1  # full
    for s in (
        PowerOfTwoChoices(rng=random.Random(4)),
        WeightedRandom(rng=random.Random(4)),
        RoundRobin(),
    ):
        for _ in range(50):
            assert s.select((a, b, c), 1.0, (), 0.1) is b
        assert s.select((a, b, c), 1.0, {b}, 0.1) is None


def test_weighted_random_follows_weights():
    a, b = ep("a", weight=1), ep("b", weight=3)
    s = WeightedRandom(rng=random.Random(5))
    picks = Counter(s.select((a, b), 0.0, (), 0.1).name for _ in range(4000))
    assert 0.70 < picks["b"] / 4000 < 0.80


def test_round_robin_cycles():
    eps = tuple(ep(n) for n in "abc")
    s = RoundRobin()
    assert [s.select(eps, 0.0, (), 0.1).name for _ in range(6)] == list("abcabc")


def test_large_pool_selection_is_uniform_enough_and_skips_dead():
    eps = tuple(ep(f"e{i}", cost=0.1) for i in range(1000))
    for e in eps[:900]:
        e.health.until = 1e9
    s = PowerOfTwoChoices(rng=random.Random(6))
    chosen = {s.select(eps, 1.0, (), 0.1).name for _ in range(500)}
    assert chosen and all(int(n[1:]) >= 900 for n in chosen)


def test_strategy_from_name():
    assert strategy_from_name("p2c").name == "p2c"
    assert strategy_from_name("weighted-random").name == "weighted_random"
    assert strategy_from_name("round_robin").name == "round_robin"
    with pytest.raises(ValueError, match="unknown routing strategy"):
        strategy_from_name("fastest")


def test_health_rate_limit_honours_retry_after():
    e = ep("a")
    h = e.health
    h.on_rate_limited(10.0, 7.0)
    assert h.state(10.0) == "cooling" and not h.selectable(16.9)
    assert h.selectable(17.0) and h.state(17.0) == "healthy"
    assert h.consecutive_failures == 0  # a 429 is "busy", not "broken"


def test_health_failures_back_off_exponentially_then_eject_then_probe():
    policy = HealthPolicy(failure_cooldown=1.0, eject_after=3, ejection_time=10.0)
    e = ep("a", health_policy=policy)
    h = e.health
    h.on_failure(0.0)
    assert h.available_at(0.0) == 1.0
    h.on_failure(1.0)
    assert h.available_at(1.0) == 3.0  # 2 s
    h.on_failure(3.0)  # third consecutive failure: ejected
    assert h.state(3.0) == "ejected" and h.available_at(3.0) == 13.0
    assert h.state(13.0) == "probing" and h.selectable(13.0)
    assert h.begin(13.0) is True  # the half-open probe
    assert not h.selectable(13.5)  # one probe at a time
    h.on_failure(14.0)  # failed probe: ejected for twice as long
    assert h.state(14.0) == "ejected" and h.available_at(14.0) == 34.0
    assert h.begin(34.0) is True
    h.on_success()
    assert h.state(34.0) == "healthy" and h.consecutive_failures == 0 and h.ejections == 0


def test_health_success_resets_backoff():
    h = ep("a", health_policy=HealthPolicy(failure_cooldown=1.0)).health
    h.on_failure(0.0)
    h.on_failure(1.0)
    h.on_success()
    h.on_failure(5.0)
    assert h.available_at(5.0) == 6.0


def test_abandoned_probe_frees_the_probe_slot():
    h = ep("a", health_policy=HealthPolicy(eject_after=1, ejection_time=1.0)).health
    h.on_failure(0.0)
    assert h.begin(2.0)
    h.on_abandoned()
    assert h.selectable(2.0)


def test_health_policy_validation():
    with pytest.raises(ValueError):
        HealthPolicy(eject_after=0)


def test_retry_budget_ratio_and_floor():
    b = RetryBudget(ratio=0.2, min_per_second=0.0, ttl=10.0)
    for _i in range(100):
        b.deposit(now=b._stamp + 0.0)
    allowed = sum(b.try_withdraw(now=b._stamp) for _ in range(100))
    assert allowed == 20
    floor = RetryBudget(ratio=0.0, min_per_second=2.0, ttl=5.0)
    t0 = floor._stamp
    assert sum(floor.try_withdraw(now=t0) for _ in range(50)) == 10  # starts with ttl * floor
    assert sum(floor.try_withdraw(now=t0 + 1.0) for _ in range(50)) == 2
    with pytest.raises(ValueError):
        RetryBudget(ttl=0)


def test_peak_ewma_jumps_up_and_decays_down():
    e = PeakEwma(tau=1.0, penalty_tau=1.0)
    e.observe(0.1, 0.0)
    e.observe(1.0, 0.1)
    assert e.cost == 1.0  # peak
    e.observe(0.1, 5.1)  # long after (the peak is stale): the new sample
    assert e.cost == pytest.approx(0.1)
    e.observe_failure(0.001, 5.2, penalty=2.0)
    assert e.current(5.2) == pytest.approx(e.estimate(5.2) + 2.0)  # a fast failure looks slow
    assert e.current(15.2) < e.cost + 0.001  # and the penalty fades with time
    assert e.cost < 0.11  # failures are not latency samples


def test_parse_retry_after_seconds_and_http_date():
    assert parse_retry_after("3") == 3.0
    assert parse_retry_after("1.5") == 1.5
    assert parse_retry_after(None) is None and parse_retry_after("soon") is None
    when = datetime(2030, 1, 1, tzinfo=timezone.utc)
    header = format_datetime(when, usegmt=True)
    now = (when - timedelta(seconds=42)).timestamp()
    assert parse_retry_after(header, now_wall=now) == pytest.approx(42.0)
    assert parse_retry_after(header, now_wall=when.timestamp() + 10) == 0.0


def test_hedge_delay_from_percentile_window():
    w = LatencyWindow(size=100)
    p = HedgePolicy(percentile=0.95, min_samples=10, min_delay=0.0, max_delay=5.0)
    assert p.delay_for(w) == 5.0  # not enough samples: the cap
    for i in range(100):
        w.add(i / 100)
    assert p.delay_for(w) == pytest.approx(0.95)
    assert HedgePolicy(delay=0.2).delay_for(w) == 0.2
