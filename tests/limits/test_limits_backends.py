"""One behaviour suite, run against the memory, SQLite and Redis backends (a real redis-server)."""

from __future__ import annotations

import asyncio
import sqlite3
import time

import openai
import pytest

from gonka_mux.errors import RateLimitError
from gonka_mux.limits import LimitsConfig, RateLimit, RateLimiter, Rejected, Reservation, Tier


def limiter_with(backend, **tiers: RateLimit) -> RateLimiter:
    config = LimitsConfig(
        tiers={name: Tier(name, limit) for name, limit in tiers.items()},
        default_tier=next(iter(tiers)),
        max_wait=0.0,
    )
    return RateLimiter(backend, config)


async def admitted(limiter: RateLimiter, key: str = "k", tokens: float = 0) -> bool:
    try:
        await limiter.acquire(key, tokens=tokens, max_wait=0)
    except RateLimitError:
        return False
    return True


async def test_burst_then_one_per_interval(make_backend, clock) -> None:
    limiter = limiter_with(make_backend(clock), t=RateLimit(rpm=60, tpm=None, burst_requests=3))
    assert [await admitted(limiter) for _ in range(4)] == [True, True, True, False]
    clock.advance(0.5)
    assert not await admitted(limiter)
    clock.advance(0.5)
    assert await admitted(limiter)
    assert not await admitted(limiter)
    clock.advance(3.0)  # three intervals bring back three requests, never more than the burst
    assert [await admitted(limiter) for _ in range(4)] == [True, True, True, False]


async def test_rejection_reports_wait_and_dimension(make_backend, clock) -> None:
    limiter = limiter_with(make_backend(clock), t=RateLimit(rpm=30, tpm=None, burst_requests=1))
    await limiter.acquire("k", max_wait=0)
    with pytest.raises(RateLimitError) as info:
        await limiter.acquire("k", max_wait=0)
    assert info.value.retry_after == pytest.approx(2.0, abs=1e-3)
    assert "requests per minute" in info.value.message


async def test_tokens_are_weighted(make_backend, clock) -> None:
    # 600 tokens/min = 10 tokens/s, burst 100 tokens.
    limiter = limiter_with(make_backend(clock), t=RateLimit(rpm=None, tpm=600, burst_tokens=100))
    assert await admitted(limiter, tokens=60)
    assert await admitted(limiter, tokens=40)
    with pytest.raises(RateLimitError) as info:
        await limiter.acquire("k", tokens=5, max_wait=0)
    assert info.value.retry_after == pytest.approx(0.5, abs=1e-3)
    assert "tokens per minute" in info.value.message
    clock.advance(0.5)
    assert await admitted(limiter, tokens=5)


async def test_a_rejected_request_charges_nothing(make_backend, clock) -> None:
    limiter = limiter_with(
        make_backend(clock), t=RateLimit(rpm=60, tpm=600, burst_requests=2, burst_tokens=100)
    )
    assert await admitted(limiter, tokens=100)
    # Blocked on tokens: the request dimension must not be charged either.
    assert not await admitted(limiter, tokens=50)
    assert not await admitted(limiter, tokens=50)
    clock.advance(5.0)  # 50 tokens back; requests were full again long ago
    assert await admitted(limiter, tokens=50)
    assert await admitted(limiter, tokens=0)  # the second request of the burst is still there
    assert not await admitted(limiter, tokens=0)


async def test_settle_refunds_an_overestimate(make_backend, clock) -> None:
    limiter = limiter_with(make_backend(clock), t=RateLimit(rpm=None, tpm=600, burst_tokens=100))
    reservation = await limiter.acquire("k", tokens=100, max_wait=0)
    assert not await admitted(limiter, tokens=1)
    await reservation.asettle(20)  # 80 tokens come back at once
    assert reservation.settled
    assert await admitted(limiter, tokens=80)
    assert not await admitted(limiter, tokens=1)


async def test_settle_charges_an_underestimate(make_backend, clock) -> None:
    limiter = limiter_with(make_backend(clock), t=RateLimit(rpm=None, tpm=600, burst_tokens=100))
    reservation = await limiter.acquire("k", tokens=10, max_wait=0)
    reservation.settle(150)  # sync face: 50 tokens of debt beyond the burst
    with pytest.raises(RateLimitError) as info:
        await limiter.acquire("k", tokens=1, max_wait=0)
    assert info.value.retry_after == pytest.approx(5.1, abs=1e-3)
    clock.advance(5.1)
    assert await admitted(limiter, tokens=1)


async def test_settle_and_cancel_are_idempotent(make_backend, clock) -> None:
    limiter = limiter_with(
        make_backend(clock), t=RateLimit(rpm=60, tpm=600, burst_requests=5, burst_tokens=100)
    )
    reservation = await limiter.acquire("k", tokens=50, max_wait=0)
    await reservation.asettle(10)
    await reservation.asettle(0)  # no-op
    reservation.settle(0)  # no-op
    await reservation.acancel()  # no-op after a settle
    reservation.cancel()
    assert await admitted(limiter, tokens=90)
    assert not await admitted(limiter, tokens=1)


async def test_cancel_refunds_request_and_tokens(make_backend, clock) -> None:
    limiter = limiter_with(
        make_backend(clock), t=RateLimit(rpm=60, tpm=600, burst_requests=1, burst_tokens=100)
    )
    reservation = await limiter.acquire("k", tokens=100, max_wait=0)
    assert not await admitted(limiter, tokens=0)
    await reservation.acancel()
    await reservation.acancel()  # a second cancel must not refund twice
    assert await admitted(limiter, tokens=100)
    assert not await admitted(limiter, tokens=0)


async def test_settle_none_keeps_the_estimate(make_backend, clock) -> None:
    limiter = limiter_with(make_backend(clock), t=RateLimit(rpm=None, tpm=600, burst_tokens=100))
    reservation = await limiter.acquire("k", tokens=70, max_wait=0)
    await reservation.asettle(None)
    assert reservation.settled
    assert await admitted(limiter, tokens=30)
    assert not await admitted(limiter, tokens=1)


async def test_refund_never_exceeds_a_full_bucket(make_backend, clock) -> None:
    limiter = limiter_with(make_backend(clock), t=RateLimit(rpm=None, tpm=600, burst_tokens=100))
    reservation = await limiter.acquire("k", tokens=100, max_wait=0)
    clock.advance(60)  # the bucket refilled on its own
    await reservation.asettle(0)  # a late refund of 100 must not lift capacity above 100
    assert await admitted(limiter, tokens=100)
    assert not await admitted(limiter, tokens=1)


async def test_oversized_request_needs_a_full_bucket_and_leaves_debt(make_backend, clock) -> None:
    limiter = limiter_with(make_backend(clock), t=RateLimit(rpm=None, tpm=600, burst_tokens=100))
    assert await admitted(limiter, tokens=10)
    assert not await admitted(limiter, tokens=300)  # not into a partly used bucket
    clock.advance(1.0)
    assert await admitted(limiter, tokens=300)  # full again: admitted, 200 tokens in debt
    # TAT is now 30 s ahead; a token fits once it is within the 10 s burst window plus 0.1 s.
    clock.advance(20.0)
    assert not await admitted(limiter, tokens=1)
    clock.advance(0.2)
    assert await admitted(limiter, tokens=1)


async def test_keys_tiers_and_overrides(make_backend, clock) -> None:
    config = LimitsConfig.from_dict(
        {
            "default_tier": "free",
            "tiers": {
                "free": {"rpm": 60, "tpm": "none", "burst_requests": 1},
                "pro": {"rpm": 600, "tpm": "none", "burst_requests": 3},
            },
            "keys": {"alice": "pro"},
            "max_wait": 0,
        }
    )
    limiter = RateLimiter(make_backend(clock), config)
    assert [await admitted(limiter, "alice") for _ in range(4)] == [True, True, True, False]
    assert [await admitted(limiter, "bob") for _ in range(2)] == [True, False]
    # Each key has its own bucket; a tier override applies that tier's limit to the key.
    assert [await admitted(limiter, "carol") for _ in range(2)] == [True, False]
    other = [await _admitted_with_tier(limiter, "dave", "pro") for _ in range(4)]
    assert other == [True, True, True, False]


async def _admitted_with_tier(limiter: RateLimiter, key: str, tier: str) -> bool:
    try:
        await limiter.acquire(key, tier=tier, max_wait=0)
    except RateLimitError:
        return False
    return True


async def test_env_defaults_give_the_default_tier(make_backend, clock, monkeypatch) -> None:
    monkeypatch.setenv("GONKA_DEFAULT_RPM", "2")
    monkeypatch.setenv("GONKA_DEFAULT_TPM", "none")
    limiter = RateLimiter(make_backend(clock), LimitsConfig(max_wait=0))
    assert limiter.config.tiers["default"].limit == RateLimit(2.0, None)
    assert [await admitted(limiter, "anyone") for _ in range(3)] == [True, True, False]
    assert await admitted(limiter, "anyone-else")


async def test_endpoint_limits_reject_without_waiting(make_backend, clock) -> None:
    config = LimitsConfig.from_dict({"endpoints": {"node-a": {"rpm": 120, "burst_requests": 2}}})
    limiter = RateLimiter(make_backend(clock), config)
    first = await limiter.try_acquire("node-a", tokens=10)
    second = limiter.try_acquire_sync("node-a", tokens=10)
    third = await limiter.try_acquire("node-a", tokens=10)
    assert isinstance(first, Reservation) and isinstance(second, Reservation)
    assert isinstance(third, Rejected) and not third
    assert third.blocked == "requests"
    assert third.retry_after == pytest.approx(0.5, abs=1e-3)
    # An endpoint without a configured limit is never limited; an explicit limit overrides.
    assert all([await limiter.try_acquire("node-b") for _ in range(100)])
    tight = RateLimit(rpm=60, tpm=None, burst_requests=1)
    assert await limiter.try_acquire("node-c", limit=tight)
    assert not await limiter.try_acquire("node-c", limit=tight)
    # Endpoint buckets and caller buckets with the same name are separate.
    caller = await limiter.acquire("node-a", max_wait=0)
    assert isinstance(caller, Reservation)
    # Cancelling an endpoint reservation gives the slot back (e.g. the caller was refused).
    await first.acancel()
    assert await limiter.try_acquire("node-a")


async def test_concurrent_acquires_admit_exactly_the_burst(make_backend, clock) -> None:
    limiter = limiter_with(make_backend(clock), t=RateLimit(rpm=60, tpm=None, burst_requests=10))
    results = await asyncio.gather(*(admitted(limiter) for _ in range(50)))
    assert sum(results) == 10


async def test_wait_then_rate_limit_error_is_openai_shaped(make_backend) -> None:
    # Real clocks: 60 rpm is one request per second.
    limiter = limiter_with(make_backend(), t=RateLimit(rpm=60, tpm=None, burst_requests=1))
    await limiter.acquire("k")
    with pytest.raises(openai.RateLimitError) as info:
        await limiter.acquire("k", max_wait=0.2)
    err = info.value
    assert isinstance(err, RateLimitError)
    assert err.status_code == 429
    # Raised without sleeping: the next slot was further away than max_wait.
    assert 0.2 < err.retry_after <= 1.0
    assert err.response.headers["retry-after"] == "1"
    body = err.response.json()
    assert body["error"]["code"] == "rate_limit_exceeded"
    assert "try again in" in body["error"]["message"]
    assert err.body["code"] == "rate_limit_exceeded"


async def test_waits_for_capacity_within_max_wait(make_backend) -> None:
    limiter = limiter_with(make_backend(), t=RateLimit(rpm=600, tpm=None, burst_requests=1))
    await limiter.acquire("k")
    started = time.monotonic()
    await limiter.acquire("k", max_wait=2.0)
    assert time.monotonic() - started >= 0.08  # it had to wait for the next slot
    started = time.monotonic()
    limiter.acquire_sync("k", max_wait=2.0)  # the blocking face waits the same way
    assert time.monotonic() - started >= 0.08
    with pytest.raises(RateLimitError):
        limiter.acquire_sync("k", max_wait=0)


async def test_caller_keys_are_never_stored_in_clear(make_backend, clock) -> None:
    secret = "sk-live-do-not-store-0123456789"
    backend = make_backend(clock)
    limiter = limiter_with(backend, t=RateLimit(rpm=60, tpm=1000))
    reservation = await limiter.acquire(secret, tokens=5)
    assert secret not in repr(reservation) and secret not in repr(limiter)
    if make_backend.kind == "memory":
        assert all(secret not in key for key in backend._state)
        assert len(backend) == 1
    elif make_backend.kind == "sqlite":
        await backend.aclose()  # checkpoint the WAL so the main file holds the row
        rows = sqlite3.connect(make_backend.path).execute("SELECT k FROM gcra").fetchall()
        assert len(rows) == 1 and secret not in rows[0][0]
    else:
        import redis

        client = redis.Redis.from_url(make_backend.url)
        keys = [k.decode() for k in client.keys(make_backend.prefix + "*")]
        client.close()
        assert len(keys) == 1 and secret not in keys[0]
