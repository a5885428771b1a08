"""Traffic shares of the routing policies, in simulated time (no network, no sleeping).

Each scenario runs sequential requests (concurrency 1, so nothing is in flight when the next
endpoint is chosen): the chosen endpoint answers in its latency, time advances by that much and
the endpoint observes it, as the multiplexer does on a first byte.
"""

from __future__ import annotations

import math
import random
from collections import Counter
from collections.abc import Callable, Sequence

import pytest

from gonka_mux.endpoint import Endpoint
from gonka_mux.routing import AdaptiveTimeout, LatencyWindow, PeakEwma, PowerOfTwoChoices

FAST = 0.02  # 20 ms


def make(name: str, weight: float = 1.0, decay_tau: float | None = None) -> Endpoint:
    e = Endpoint(object(), models=["m"], name=name, weight=weight)
    if decay_tau is not None:
        e.ewma = PeakEwma(decay_tau=decay_tau)
    return e


def run(
    strategy: PowerOfTwoChoices,
    eps: Sequence[Endpoint],
    n: int,
    now: float,
    latency: Callable[[Endpoint], float] = lambda e: FAST,
) -> tuple[Counter[str], float, dict[str, float]]:
    """``n`` sequential requests; returns the picks, the new time and each first pick's time."""
    picks: Counter[str] = Counter()
    first_pick: dict[str, float] = {}
    for _ in range(n):
        e = strategy.select(eps, now, (), 0.1)
        assert e is not None
        picks[e.name] += 1
        first_pick.setdefault(e.name, now)
        now += latency(e)
        e.ewma.observe(latency(e), now)
    return picks, now, first_pick


def warm_up(eps: Sequence[Endpoint], latencies: Sequence[float]) -> float:
    """Each endpoint answers one request (in turn, as new endpoints are explored)."""
    now = 0.0
    for e, lat in zip(eps, latencies, strict=True):
        now += lat
        e.ewma.observe(lat, now)
    return now


# -- (a) a slow first answer (a cold connection) does not starve an endpoint ----------------


@pytest.mark.parametrize("seed", range(5))
def test_cold_start_outlier_is_re_explored(seed):
    # The scenario's time scale is one 20 ms request, so the decay runs on the same scale
    # (0.5 s = 25 requests); the default (10 s, for LLM latencies) is the next test.
    eps = tuple(make(n, decay_tau=0.5) for n in "abc")
    now = warm_up(eps, [0.5, FAST, FAST])
    picks, _, _ = run(PowerOfTwoChoices(rng=random.Random(seed)), eps, 300, now)
    assert all(picks[n] >= 60 for n in "abc"), picks  # each >= 20%


def test_cold_start_outlier_is_re_explored_with_default_decay():
    eps = tuple(make(n) for n in "abc")
    assert eps[0].ewma.decay_tau == 10.0
    now = warm_up(eps, [0.5, FAST, FAST])
    s = PowerOfTwoChoices(rng=random.Random(7))
    _, now2, first = run(s, eps, 3000, now)  # 60 s of 20 ms requests
    # a 0.5 s estimate stays fresh for min(decay_tau, 10 x 0.5 s) = 5 s, then it is stale:
    # no longer held against the endpoint, which competes as an equal and is measured again
    assert first["a"] - now == pytest.approx(5.0, abs=0.5)
    later, _, _ = run(s, eps, 900, now2)
    assert all(later[n] >= 240 for n in "abc"), later


def test_a_real_cold_connection_is_forgotten_within_seconds():
    # the usual case: a first answer 3x the others (a new connection), 300 requests of 20 ms
    eps = tuple(make(n) for n in "abc")
    now = warm_up(eps, [3 * FAST, FAST, FAST])
    picks, _, _ = run(PowerOfTwoChoices(rng=random.Random(3)), eps, 300, now)
    assert all(picks[n] >= 60 for n in "abc"), picks


# -- (b) weights are shares at light load ---------------------------------------------------


@pytest.mark.parametrize("seed", range(3))
def test_small_pool_shares_follow_weights(seed):
    eps = (make("light", 1.0), make("heavy", 3.0))
    now = warm_up(eps, [FAST, FAST])
    picks, _, _ = run(PowerOfTwoChoices(rng=random.Random(seed)), eps, 2000, now)
    assert picks["heavy"] / 2000 == pytest.approx(0.75, abs=0.03), picks


def test_small_pool_equal_weights_give_equal_shares():
    eps = tuple(make(n) for n in "abc")
    now = warm_up(eps, [FAST] * 3)
    picks, _, _ = run(PowerOfTwoChoices(rng=random.Random(11)), eps, 3000, now)
    assert all(picks[n] / 3000 == pytest.approx(1 / 3, abs=0.03) for n in "abc"), picks


@pytest.mark.parametrize("seed", range(3))
def test_large_pool_shares_follow_weights(seed):
    eps = tuple(make(f"e{i}", weight=1 + i % 4) for i in range(40))  # weights 1..4, total 100
    s = PowerOfTwoChoices(rng=random.Random(seed))
    assert len(eps) > s.full_scan_below  # the weighted power-of-two-choices path
    now = warm_up(eps, [FAST] * len(eps))
    n = 20_000
    picks, _, _ = run(s, eps, n, now)
    by_weight = Counter()
    for e in eps:
        by_weight[e.weight] += picks[e.name]
    for w in (1.0, 2.0, 3.0, 4.0):
        share = by_weight[w] / n
        assert share == pytest.approx(10 * w / 100, abs=0.02), (w, share)


def test_large_pool_weight_sums_are_cached_per_pool():
    # one strategy serves every model's pool: alternating between two pools keeps both sums,
    # and a replaced pool (a new tuple, e.g. after a weight change) gets fresh ones
    light_first = tuple(make(f"a{i}", weight=1.0 if i < 20 else 3.0) for i in range(40))
    heavy_first = tuple(make(f"b{i}", weight=3.0 if i < 20 else 1.0) for i in range(40))
    warm_up(light_first + heavy_first, [FAST] * 80)
    s = PowerOfTwoChoices(rng=random.Random(8))
    low = Counter()
    for _ in range(4000):
        for pool in (light_first, heavy_first):
            low[pool[0].name[0]] += int(s.select(pool, 1.0, (), 0.1).name[1:]) < 20
    assert len(s._prefixes) == 2
    assert low["a"] / 4000 == pytest.approx(0.25, abs=0.03)
    assert low["b"] / 4000 == pytest.approx(0.75, abs=0.03)
    for e in light_first[:20]:
        e.weight = 3.0
    replaced = light_first[:20] + light_first[20:]  # a new tuple, as replace_endpoints makes
    assert replaced is not light_first
    n_low = sum(int(s.select(replaced, 1.0, (), 0.1).name[1:]) < 20 for _ in range(4000))
    assert n_low / 4000 == pytest.approx(0.5, abs=0.03)


def test_large_pool_weighted_draw_skips_unavailable():
    eps = tuple(make(f"e{i}", weight=1 + i % 4) for i in range(40))
    for e in eps[:30]:
        e.health.until = 1e9  # cooling
    now = warm_up(eps, [FAST] * len(eps))
    picks, _, _ = run(PowerOfTwoChoices(rng=random.Random(3)), eps, 500, now)
    assert picks and all(int(name[1:]) >= 30 for name in picks)


# -- (c) a penalised or much slower endpoint gets almost nothing, but is re-explored ---------


def test_penalised_endpoint_is_avoided_then_re_explored():
    eps = tuple(make(n) for n in "abc")
    now = warm_up(eps, [FAST] * 3)
    eps[0].ewma.observe_failure(0.001, now, penalty=1.0)  # the default failure_penalty
    s = PowerOfTwoChoices(rng=random.Random(5))
    picks, now, _ = run(s, eps, 300, now)  # 6 s
    assert picks["a"] == 0
    picks, now, _ = run(s, eps, 3000, now)  # one more minute
    assert picks["a"] > 0  # its estimate and penalty decayed: it is tried again
    later, _, _ = run(s, eps, 900, now)
    assert later["a"] >= 240, later  # and it answered fine, so it is an equal again


def test_ten_times_slower_endpoint_gets_almost_nothing_but_is_re_measured():
    lat = {"slow": 10 * FAST}
    eps = (make("slow"), make("b"), make("c"))
    now = warm_up(eps, [10 * FAST, FAST, FAST])
    s = PowerOfTwoChoices(rng=random.Random(9))

    def latency(e: Endpoint) -> float:
        return lat.get(e.name, FAST)

    picks, now2, _ = run(s, eps, 300, now, latency)  # 6 s
    assert picks["slow"] <= 4
    picks, _, _ = run(s, eps, 6000, now2, latency)  # two more minutes
    # re-measured once its 0.2 s estimate is stale (10 x 0.2 s = 2 s), and each time it is
    # still slow: about one request in 2 s
    assert 20 <= picks["slow"] <= 80, picks
    assert picks["slow"] / 6000 < 0.015


# -- (d) load still matters -----------------------------------------------------------------


def test_idle_endpoint_beats_one_with_30_in_flight():
    busy, idle = make("busy", weight=10.0), make("idle")
    warm_up((busy, idle), [FAST, FAST])
    busy.inflight = 30
    s = PowerOfTwoChoices(rng=random.Random(1))
    assert Counter(s.select((busy, idle), 1.0, (), 0.1).name for _ in range(200)) == {"idle": 200}


def test_one_request_in_flight_is_outside_the_band():
    # tolerance < 1: an equal endpoint with one request in flight (score 2x) loses to an idle
    # one, so concurrency 2 over two equal endpoints never stacks both on one
    a, b = make("a", weight=5.0), make("b")
    warm_up((a, b), [FAST, FAST])
    a.inflight = 1
    s = PowerOfTwoChoices(rng=random.Random(2))
    assert Counter(s.select((a, b), 1.0, (), 0.1).name for _ in range(200)) == {"b": 200}


def test_large_pool_prefers_idle_endpoints():
    eps = tuple(make(f"e{i}") for i in range(40))
    warm_up(eps, [FAST] * len(eps))
    for e in eps[:20]:
        e.inflight = 30
    s = PowerOfTwoChoices(rng=random.Random(4))
    n = 4000
    busy = sum(int(s.select(eps, 1.0, (), 0.1).name[1:]) < 20 for _ in range(n))
    # a busy one is chosen only when both candidates are busy (~1/4), not half the time
    assert busy / n < 0.3


def test_unmeasured_endpoint_is_explored_first():
    old, new = make("old", weight=10.0), make("new")
    warm_up((old,), [FAST])
    s = PowerOfTwoChoices(rng=random.Random(6))
    assert s.select((old, new), 1.0, (), 0.1) is new
    new.inflight = 1  # once busy it scores with the default cost, not 0
    assert new.score(0.1, 1.0) == pytest.approx(0.2)


def test_p2c_tolerance_validation():
    with pytest.raises(ValueError, match="tolerance"):
        PowerOfTwoChoices(tolerance=-0.1)
    with pytest.raises(ValueError, match="tolerance"):
        PowerOfTwoChoices(tolerance=float("nan"))
    with pytest.raises(ValueError, match="full_scan_below"):
        PowerOfTwoChoices(full_scan_below=-1)
    # tolerance 0: plain "lowest score wins", the weight only breaks exact ties
    a, b = make("a", weight=3.0), make("b")
    warm_up((a, b), [FAST, 1.01 * FAST])
    s = PowerOfTwoChoices(rng=random.Random(1), tolerance=0.0)
    assert {s.select((a, b), 1.0, (), 0.1).name for _ in range(50)} == {"a"}


# -- (e) AdaptiveTimeout --------------------------------------------------------------------


def test_adaptive_timeout_uses_the_cap_until_enough_samples():
    w = LatencyWindow(size=100)
    t = AdaptiveTimeout()
    assert (t.percentile, t.factor, t.floor, t.min_samples) == (0.99, 4.0, 10.0, 20)
    for _ in range(19):
        w.add(1.0)
    assert t.for_window(w, 60.0) == 60.0
    w.add(1.0)
    assert t.for_window(w, 60.0) == 10.0  # 1 s x 4 is below the floor


def test_adaptive_timeout_percentile_times_factor_clamped():
    w = LatencyWindow(size=100)
    for i in range(100):
        w.add(i / 10)  # 0.0 .. 9.9 s
    t = AdaptiveTimeout(percentile=0.5, factor=2.0, floor=1.0, min_samples=10)
    assert t.for_window(w, 60.0) == pytest.approx(10.0)  # p50 = 5.0 s, x 2
    assert t.for_window(w, 8.0) == 8.0  # never above the cap
    assert AdaptiveTimeout(floor=1.0).for_window(w, 60.0) == pytest.approx(39.6)  # 9.9 x 4
    assert AdaptiveTimeout(floor=50.0).for_window(w, 60.0) == 50.0
    assert AdaptiveTimeout(floor=50.0).for_window(w, 30.0) == 30.0  # the cap wins over the floor


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"percentile": 0.0}, "percentile"),
        ({"percentile": 1.5}, "percentile"),
        ({"percentile": float("nan")}, "percentile"),
        ({"factor": 0.5}, "factor"),
        ({"factor": float("nan")}, "factor"),
        ({"floor": 0.0}, "floor"),
        ({"floor": -1.0}, "floor"),
        ({"floor": float("inf")}, "floor"),
        ({"min_samples": 0}, "min_samples"),
        ({"min_samples": 2.5}, "min_samples"),
    ],
)
def test_adaptive_timeout_validation(kwargs, match):
    with pytest.raises(ValueError, match=match):
        AdaptiveTimeout(**kwargs)


def test_adaptive_timeout_rejects_a_bad_cap_and_is_frozen():
    t = AdaptiveTimeout()
    with pytest.raises(ValueError, match="cap"):
        t.for_window(LatencyWindow(), 0.0)
    with pytest.raises(AttributeError):
        t.factor = 2.0  # type: ignore[misc]


# -- (f) PeakEwma decay math ----------------------------------------------------------------


def test_peak_ewma_goes_stale_on_its_own_time_scale():
    e = PeakEwma(tau=2.0, decay_tau=10.0)
    assert not e.stale(100.0)  # nothing measured: nothing to forget
    e.observe(1.0, 0.0)
    assert e.fresh_for() == 10.0  # 10 x 1 s, at most decay_tau
    assert not e.stale(9.9) and e.stale(10.1)
    assert e.current(50.0) == 1.0  # the estimate itself does not drift
    fast = PeakEwma(decay_tau=10.0)
    fast.observe(0.06, 0.0)  # a 60 ms cold connection
    assert fast.fresh_for() == pytest.approx(0.6)
    tiny = PeakEwma(decay_tau=10.0)
    tiny.observe(0.001, 0.0)
    assert tiny.fresh_for() == 0.1  # the floor


def test_peak_ewma_peak_and_blend():
    e = PeakEwma(tau=2.0, decay_tau=10.0)
    e.observe(1.0, 0.0)
    e.observe(0.5, 1.0)  # lower and fresh: blended
    w = math.exp(-1.0 / 2.0)
    assert e.cost == pytest.approx(1.0 * w + 0.5 * (1 - w))
    e.observe(2.0, 2.0)  # higher: the peak replaces it
    assert e.cost == 2.0
    e.observe(0.1, 30.0)  # on a stale estimate: the new sample replaces it
    assert e.cost == 0.1
    assert e.samples == 4


def test_peak_ewma_lower_bound_only_counts_above_the_estimate():
    e = PeakEwma(decay_tau=10.0)
    e.observe(1.0, 0.0)
    e.observe_at_least(0.5, 1.0)  # below 1.0: says nothing
    assert e.cost == 1.0 and e.samples == 1
    e.observe_at_least(1.5, 2.0)  # above: at least that slow
    assert e.cost == 1.5 and e.samples == 2


def test_peak_ewma_penalty_adds_to_the_estimate():
    e = PeakEwma(decay_tau=10.0, penalty_tau=5.0)
    assert not e.known
    e.observe_failure(0.001, 0.0, penalty=1.0)
    assert e.known and e.samples == 0
    e.observe(0.2, 1.0)
    assert e.current(11.0) == pytest.approx(0.2 + math.exp(-11.0 / 5.0))


def test_peak_ewma_decay_can_be_turned_off_and_is_validated():
    e = PeakEwma(decay_tau=math.inf)
    e.observe(0.3, 0.0)
    assert e.fresh_for() == 3.0  # 10 x 0.3 s: the cap does not bind
    e = PeakEwma(decay_tau=math.inf)
    e.observe(1e6, 0.0)
    assert not e.stale(1e7)  # fresh for 20 x 1e6 s
    for bad in ({"decay_tau": 0.0}, {"tau": -1.0}, {"penalty_tau": math.nan}):
        with pytest.raises(ValueError, match=next(iter(bad))):
            PeakEwma(**bad)
