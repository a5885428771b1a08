"""Admission cost per request of the rate limiter, per backend.

Targets: memory <= 20 us, SQLite <= 300 us per admission (``RateLimiter.acquire`` with a token
estimate, limits high enough that nothing waits). Also prints acquire + settle, the blocking
face, and Redis when a ``redis-server`` binary is available (no target: it is a network round
trip). Run: ``python bench/limits.py [--n 20000]``.
"""

from __future__ import annotations

import argparse
import asyncio
import shutil
import statistics
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

from gonka_mux.limits import (
    LimitBackend,
    LimitsConfig,
    MemoryLimitBackend,
    RateLimit,
    RateLimiter,
    RedisLimitBackend,
    SqliteLimitBackend,
    Tier,
)

REPO_ROOT = str(Path(__file__).resolve().parents[1])
TARGETS_US = {"memory": 20.0, "sqlite": 300.0}
# Far above what a loop can reach, so every call is a real admission that never waits.
HUGE = RateLimit(rpm=1e9, tpm=1e12)


def limiter_for(backend: LimitBackend) -> RateLimiter:
    config = LimitsConfig(tiers={"bench": Tier("bench", HUGE)}, default_tier="bench")
    return RateLimiter(backend, config)


async def per_call_us(fn: Callable[[int], Awaitable[None]], n: int, repeats: int = 5) -> float:
    """Median over ``repeats`` runs of the mean microseconds per call."""
    await fn(min(n, 200))  # warm up: connections, caches
    runs = []
    for _ in range(repeats):
        start = time.perf_counter()
        await fn(n)
        runs.append((time.perf_counter() - start) / n * 1e6)
    return statistics.median(runs)


async def measure(name: str, backend: LimitBackend, n: int) -> dict[str, float]:
    limiter = limiter_for(backend)

    async def acquire(count: int) -> None:
        for i in range(count):
            await limiter.acquire(f"key-{i % 64}", tokens=500)

    async def acquire_settle(count: int) -> None:
        for i in range(count):
            reservation = await limiter.acquire(f"key-{i % 64}", tokens=500)
            await reservation.asettle(320)

    async def acquire_sync(count: int) -> None:
        for i in range(count):
            limiter.acquire_sync(f"key-{i % 64}", tokens=500)

    results = {
        "acquire": await per_call_us(acquire, n),
        "acquire+settle": await per_call_us(acquire_settle, n),
        "acquire_sync": await per_call_us(acquire_sync, n),
    }
    await limiter.aclose()
    return results


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--n", type=int, default=20_000, help="admissions per run (memory)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        rows = {
            "memory": await measure("memory", MemoryLimitBackend(), args.n),
            "sqlite": await measure(
                "sqlite", SqliteLimitBackend(Path(tmp) / "limits.sqlite3"), max(args.n // 10, 500)
            ),
        }
        if shutil.which("redis-server"):
            # The tests' helper starts a throwaway server on a free port.
            sys.path.insert(0, REPO_ROOT)
            from tests._redis import running_redis

            with running_redis(Path(tmp)) as url:
                rows["redis"] = await measure(
                    "redis", RedisLimitBackend(url), max(args.n // 20, 500)
                )
    print(f"{'backend':<8} {'acquire':>12} {'acquire+settle':>16} {'acquire_sync':>14}  target")
    for name, result in rows.items():
        target = TARGETS_US.get(name)
        verdict = (
            ""
            if target is None
            else f"<= {target:g} us " + ("OK" if result["acquire"] <= target else "MISSED")
        )
        print(
            f"{name:<8} {result['acquire']:>9.1f} us {result['acquire+settle']:>13.1f} us "
            f"{result['acquire_sync']:>11.1f} us  {verdict}"
        )


if __name__ == "__main__":
    asyncio.run(main())
