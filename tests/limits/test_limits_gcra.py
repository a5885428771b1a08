"""Properties of the GCRA arithmetic, checked on random request sequences (memory backend)."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st
from tests.limits._fake_clock import FakeClock

from gonka_mux.limits import MemoryLimitBackend, RateLimit

steps = st.lists(st.tuples(st.floats(0, 3), st.integers(0, 400)), min_size=1, max_size=150)


@settings(max_examples=200, deadline=None)
@given(steps=steps, burst=st.integers(1, 8), burst_tokens=st.integers(50, 500))
def test_admissions_stay_within_rate_plus_burst(
    steps: list[tuple[float, int]], burst: int, burst_tokens: int
) -> None:
    # 60 requests/min = 1 per second; 600 tokens/min = 10 per second.
    limit = RateLimit(rpm=60, tpm=600, burst_requests=burst, burst_tokens=burst_tokens)
    clock = FakeClock()
    backend = MemoryLimitBackend(clock=clock)
    admitted: list[tuple[float, int]] = []
    for dt, tokens in steps:
        clock.advance(dt)
        wait, blocked = backend.admit("k", limit, tokens)
        if wait:
            assert blocked in ("requests", "tokens")
            # The wait it reports is exact: after it, the same request fits.
            clock.advance(wait)
            wait, _ = backend.admit("k", limit, tokens)
            assert wait == 0
        admitted.append((clock.now, tokens))
    span = admitted[-1][0] - admitted[0][0]
    assert len(admitted) <= burst + span / 1.0 + 1e-6
    largest = max(tokens for _, tokens in admitted)
    assert sum(tokens for _, tokens in admitted) <= max(burst_tokens, largest) + span * 10 + 1e-6


@settings(max_examples=100, deadline=None)
@given(charges=st.lists(st.integers(-300, 300), max_size=30), idle=st.floats(0, 100))
def test_corrections_never_lift_capacity_above_the_burst(charges: list[int], idle: float) -> None:
    limit = RateLimit(rpm=None, tpm=600, burst_tokens=100)
    clock = FakeClock()
    backend = MemoryLimitBackend(clock=clock)
    for delta in charges:
        backend.adjust("k", limit, 0, delta)
    clock.advance(idle)
    # Whatever was charged or refunded, at most the burst (100 tokens) fits at once.
    free = 0
    while backend.admit("k", limit, 1)[0] == 0:
        free += 1
        assert free <= 100
