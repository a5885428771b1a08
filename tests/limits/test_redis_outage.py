"""Losing Redis for a while: requests keep flowing under the same limits kept in-process, no
request waits on the missing Redis past its deadline, and the limits are shared again once Redis
is back. Against a real redis-server that the tests stop (or freeze) and start again on the same
port.
"""

from __future__ import annotations

import asyncio
import logging
import math
import os
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import pytest
import redis
from tests._redis import RedisServer
from tests.limits.test_limits_multiprocess import check_bound, collect, spawn_hammers

from gonka_mux import AsyncMultiplexer
from gonka_mux import RateLimitError as LocalRateLimitError
from gonka_mux.errors import StoreUnavailableError
from gonka_mux.limits import RateLimit, RateLimiter, RedisLimitBackend
from gonka_mux.testing import FakeBackendSpec, FakeFleet

pytestmark = [pytest.mark.redis, pytest.mark.slow]

MSG = [{"role": "user", "content": "hello there"}]
RPM = 600  # 10 requests/s once the burst is spent
BURST = 5
DEADLINE = 3.0  # each request's own deadline
OUTAGE = 10.0
LIMITS = {
    "tiers": {"t": {"rpm": RPM, "burst_requests": BURST, "tpm": "none"}},
    "default_tier": "t",
    "max_wait": 0,  # over the limit: a 429 at once, so refusals are easy to count
}


@dataclass
class Outcome:
    start: float
    end: float
    kind: str  # "served" | "refused" | "lost"
    error: str = ""


@dataclass
class Traffic:
    """A steady loop of requests from a few workers until ``stop`` is set."""

    mux: AsyncMultiplexer
    outcomes: list[Outcome] = field(default_factory=list)
    stop: asyncio.Event = field(default_factory=asyncio.Event)

    async def worker(self) -> None:
        while not self.stop.is_set():
            start = time.monotonic()
            try:
                await self.mux.chat.completions.create(model="m", messages=MSG, deadline=DEADLINE)
            except LocalRateLimitError:
                self.outcomes.append(Outcome(start, time.monotonic(), "refused"))
            except Exception as exc:  # anything else is a request the outage cost
                self.outcomes.append(Outcome(start, time.monotonic(), "lost", repr(exc)))
            else:
                self.outcomes.append(Outcome(start, time.monotonic(), "served"))
            await asyncio.sleep(0.01)  # steady, not a busy loop on a shared 2-core box

    def count(self, kind: str, after: float = -math.inf, before: float = math.inf) -> int:
        return sum(
            1 for o in self.outcomes if o.kind == kind and o.start >= after and o.end <= before
        )


async def wait_for_backend(mux: AsyncMultiplexer, backend: str, within: float) -> dict:
    """Poll ``mux.stats()["limits"]`` until it names ``backend`` (fails after ``within`` s)."""
    deadline = time.monotonic() + within
    while True:
        limits = mux.stats()["limits"]
        if limits["backend"] == backend:
            return limits
        assert time.monotonic() < deadline, f"limits still {limits} after {within}s"
        await asyncio.sleep(0.05)


def limit_warnings(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [
        r.getMessage()
        for r in caplog.records
        if r.name == "gonka_mux.limits" and r.levelno == logging.WARNING
    ]


@pytest.fixture
def fleet():
    with FakeFleet([FakeBackendSpec(name="a")]) as f:
        yield f


async def test_requests_keep_flowing_while_redis_is_away(
    tmp_path: Path, fleet: FakeFleet, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger="gonka_mux.limits")
    with RedisServer(tmp_path) as server:
        mux = AsyncMultiplexer()
        mux.add_endpoint(fleet["a"].url, models=["m"], name="a")
        mux.enable_limits(LIMITS, backend="redis", redis_url=server.url)
        traffic = Traffic(mux)
        workers = [asyncio.create_task(traffic.worker()) for _ in range(4)]
        try:
            await asyncio.sleep(1.5)
            assert mux.stats()["limits"] == {
                "backend": "redis",
                "configured": "redis",
                "degraded": False,
                "fallback_since": None,
                "fallbacks": 0,
                "last_error": None,
            }

            wall_before_stop = time.time()
            await asyncio.to_thread(server.stop)
            down_at = time.monotonic()
            during = await wait_for_backend(mux, "local-fallback", within=DEADLINE)
            assert during["configured"] == "redis" and during["degraded"]
            assert wall_before_stop <= during["fallback_since"] <= time.time()
            assert "unavailable" in during["last_error"]
            await asyncio.sleep(OUTAGE)
            assert mux.stats()["limits"]["backend"] == "local-fallback"  # the whole outage

            up_at = time.monotonic()
            await asyncio.to_thread(server.start)
            # Asked again at most once a second: back within a few seconds of Redis answering.
            after = await wait_for_backend(mux, "redis", within=5.0)
            back_at = time.monotonic()
            assert after["fallbacks"] == 1 and after["fallback_since"] is None
            await asyncio.sleep(1.5)
        finally:
            traffic.stop.set()
            await asyncio.gather(*workers)
            await mux.aclose()

        # Counting happens in Redis again: the fresh (empty) server holds limit keys.
        check = redis.Redis.from_url(server.url)
        assert check.keys("gonka_mux:limits:*")
        check.close()

    lost = [o for o in traffic.outcomes if o.kind == "lost"]
    assert lost == [], lost[:5]
    slowest = max(o.end - o.start for o in traffic.outcomes)
    assert slowest < DEADLINE, slowest
    # Requests kept flowing while Redis was away, and the local limit was really enforced:
    # within [down_at, up_at] every admission was local, so GCRA bounds them by the burst plus
    # the rate over that span (a fail-open limiter would serve every request).
    served_down = traffic.count("served", after=down_at, before=up_at)
    refused_down = traffic.count("refused", after=down_at, before=up_at)
    assert served_down >= 1 and refused_down >= 1, (served_down, refused_down)
    assert served_down <= BURST + RPM / 60 * (up_at - down_at) + 1, served_down
    assert traffic.count("served", after=back_at) >= 1
    # One warning when the limits went local, one when they were shared again.
    warnings = limit_warnings(caplog)
    assert len(warnings) == 2, warnings
    assert "in this process" in warnings[0] and "redis answers again" in warnings[1]


async def test_a_frozen_redis_costs_a_request_at_most_the_timeout(
    tmp_path: Path, fleet: FakeFleet, caplog: pytest.LogCaptureFixture
) -> None:
    """SIGSTOP: connections stay open and nothing answers (a hung host, not a refused port).
    The read timeout, not the caller's deadline, must end the wait."""
    caplog.set_level(logging.WARNING, logger="gonka_mux.limits")
    with RedisServer(tmp_path) as server:
        mux = AsyncMultiplexer()
        mux.add_endpoint(fleet["a"].url, models=["m"], name="a")
        mux.enable_limits(LIMITS, backend="redis", redis_url=server.url)
        traffic = Traffic(mux)
        workers = [asyncio.create_task(traffic.worker()) for _ in range(4)]
        try:
            await asyncio.sleep(1.0)
            server.pause()
            frozen_at = time.monotonic()
            await wait_for_backend(mux, "local-fallback", within=DEADLINE)
            await asyncio.sleep(3.0)
            server.resume()
            await wait_for_backend(mux, "redis", within=5.0)
        finally:
            traffic.stop.set()
            await asyncio.gather(*workers)
            await mux.aclose()

    lost = [o for o in traffic.outcomes if o.kind == "lost"]
    assert lost == [], lost[:5]
    # 0.5 s read timeout; the slack is for a busy machine, far below the 3 s deadline.
    slowest = max(o.end - o.start for o in traffic.outcomes if o.start >= frozen_at)
    assert slowest < 0.5 + 1.0, slowest
    assert len(limit_warnings(caplog)) == 2, limit_warnings(caplog)


async def test_a_deadline_shorter_than_the_timeout_is_kept(tmp_path: Path) -> None:
    """The caller's deadline bounds the Redis call too: with Redis frozen and 0.1 s left, the
    request is admitted locally after ~0.1 s, not after the 0.5 s read timeout."""
    with RedisServer(tmp_path) as server:
        limiter = RateLimiter(RedisLimitBackend(server.url, prefix="t:"))
        await limiter.acquire("k")  # connected
        server.pause()
        try:
            t0 = time.monotonic()
            reservation = await limiter.acquire("k", deadline_at=t0 + 0.1)
            took = time.monotonic() - t0
        finally:
            server.resume()
        assert took < 0.45, took
        assert reservation._backend is limiter._local  # counted in-process
        # A deadline, not an outage: the limiter did not switch to local limits.
        assert limiter.status()["backend"] == "redis"
        await limiter.aclose()


async def test_without_fallback_the_typed_error_reaches_the_caller(tmp_path: Path) -> None:
    server = RedisServer(tmp_path)
    url = server.url.replace("redis://", "redis://:hunter2@")  # the password must not leak
    limiter = RateLimiter(RedisLimitBackend(url), local_fallback=False)
    with pytest.raises(StoreUnavailableError) as ei:
        await limiter.acquire("k")  # nothing listens on the port
    assert ei.value.backend == "redis" and ei.value.retry_after > 0
    assert "hunter2" not in str(ei.value) and f"127.0.0.1:{server.port}" in str(ei.value)
    with pytest.raises(StoreUnavailableError):
        limiter.acquire_sync("k")  # the blocking path too
    await limiter.aclose()


def test_blocking_callers_fall_back_and_come_back(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger="gonka_mux.limits")
    limit = RateLimit(rpm=60, tpm=None, burst_requests=2)
    with RedisServer(tmp_path) as server:
        limiter = RateLimiter(RedisLimitBackend(server.url, prefix="t:"), probe_interval=0.2)
        assert limiter.try_acquire_sync("e", limit=limit)
        server.stop()
        t0 = time.monotonic()
        # Redis is away: the local bucket (fresh, burst 2) admits two, then refuses. The
        # refused connection is retried once at once, not redis-py's 10 times with backoff.
        results = [bool(limiter.try_acquire_sync("e", limit=limit))]
        assert time.monotonic() - t0 < 0.5
        results += [bool(limiter.try_acquire_sync("e", limit=limit)) for _ in range(2)]
        assert results == [True, True, False]
        assert limiter.status()["backend"] == "local-fallback"
        server.start()
        deadline = time.monotonic() + 5
        while limiter.status()["backend"] != "redis":
            assert time.monotonic() < deadline, limiter.status()
            limiter.try_acquire_sync("e", limit=limit)
            time.sleep(0.05)
        limiter.close()
    assert len(limit_warnings(caplog)) == 2


def test_a_frozen_redis_does_not_hang_a_blocking_caller(tmp_path: Path) -> None:
    """The blocking client gets a read timeout too (redis-py's default is none: forever)."""
    with RedisServer(tmp_path) as server:
        limiter = RateLimiter(RedisLimitBackend(server.url, prefix="t:"))
        limiter.acquire_sync("k")  # connected
        took: list[float] = []

        def call() -> None:
            t0 = time.monotonic()
            limiter.acquire_sync("k")
            took.append(time.monotonic() - t0)

        server.pause()
        thread = threading.Thread(target=call)
        try:
            thread.start()
            thread.join(5.0)
        finally:
            server.resume()  # lets a hung call finish, so the test ends either way
            thread.join()
        assert took and took[0] < 0.5 + 1.0, took
        assert limiter.status()["backend"] == "local-fallback"
        limiter.close()


def test_two_processes_still_share_limits_after_a_restart(tmp_path: Path) -> None:
    """Long-lived workers connect, Redis restarts under them (their pooled connections die),
    then they hammer one key: they must reconnect to the shared bucket, not fall back to one
    bucket each (which would admit about twice the limit and fail the bound)."""
    handshake = tmp_path / "handshake"
    handshake.mkdir()
    duration = 5.0
    with RedisServer(tmp_path) as server:
        procs = spawn_hammers(
            "redis", server.url, processes=2, duration=duration, handshake=handshake
        )
        try:
            deadline = time.monotonic() + 60
            while len(list(handshake.glob("ready-*"))) < 2:
                assert time.monotonic() < deadline, "the workers did not connect"
                assert all(p.poll() is None for p in procs), [p.communicate() for p in procs]
                time.sleep(0.05)
            server.stop()
            server.start()
            tmp = handshake / "go.tmp"
            tmp.write_text(repr(time.time() + 1.0))
            os.replace(tmp, handshake / "go")
            results = collect(procs)
        finally:
            for proc in procs:
                if proc.poll() is None:
                    proc.kill()
    assert [r["fallbacks"] for r in results] == [0, 0], results
    check_bound(results, duration=duration, spread=False)


async def test_the_gateway_keeps_serving_and_says_its_limits_are_degraded(
    tmp_path: Path, fleet: FakeFleet
) -> None:
    from tests.gateway._serve import serve

    from gonka_mux.gateway import KeyStore, create_app

    admin_key = "gmx_admin_outage-test"
    with RedisServer(tmp_path) as server:
        mux = AsyncMultiplexer()
        mux.add_endpoint(fleet["a"].url, models=["m"], name="a")
        mux.enable_limits(LIMITS, backend="redis", redis_url=server.url)
        keys = KeyStore(tmp_path / "keys.sqlite3")
        _, api_key = keys.create(name="tester", tier="t")
        app = create_app(mux, keys=keys, admin_key=admin_key)
        auth = {"Authorization": f"Bearer {api_key}"}
        body = {"model": "m", "messages": MSG}
        async with serve(app) as url, httpx.AsyncClient(base_url=url, timeout=30) as http:
            first = await http.post("/v1/chat/completions", json=body, headers=auth)
            assert first.status_code == 200
            health = (await http.get("/health")).json()
            assert health["status"] == "ok" and health["limits"]["backend"] == "redis"

            await asyncio.to_thread(server.stop)
            codes = []
            for _ in range(BURST + 3):  # Redis away: served from the local limit, then 429s
                response = await http.post("/v1/chat/completions", json=body, headers=auth)
                codes.append(response.status_code)
            assert codes[0] == 200 and set(codes) <= {200, 429}, codes
            assert 429 in codes, codes  # the local limit is enforced, not skipped
            health_response = await http.get("/health")
            assert health_response.status_code == 200  # degraded, still serving
            health = health_response.json()
            assert health["status"] == "degraded"
            assert health["limits"]["backend"] == "local-fallback"
            admin = {"Authorization": f"Bearer {admin_key}"}
            status = (await http.get("/admin/status", headers=admin)).json()
            assert status["limits_backend"]["backend"] == "local-fallback"
            assert "t" in status["limits"]  # the tier descriptions are still there

            await asyncio.to_thread(server.start)
            deadline = time.monotonic() + 5
            while (await http.get("/health")).json()["status"] != "ok":
                assert time.monotonic() < deadline, "limits did not come back"
                await http.post("/v1/chat/completions", json=body, headers=auth)
                await asyncio.sleep(0.1)
            assert (await http.get("/health")).json()["limits"]["backend"] == "redis"
        await mux.aclose()
        keys.close()
