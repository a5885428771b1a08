"""Worker process for the multi-process proof: hammer one key until a deadline, report admissions.

Run as ``python _hammer.py '<json>'`` with keys backend ("sqlite" | "redis"), target (a path or
URL), prefix, mode ("sync" | "async"), start_at and duration (wall-clock seconds). Prints one JSON
line: the number admitted, the wall time just before the first admitted call and just after the
last one.
"""

from __future__ import annotations

import asyncio
import json
import sys
import time

from gonka_mux.limits import RateLimit, RateLimiter, RedisLimitBackend, SqliteLimitBackend

LIMIT = RateLimit(rpm=60, tpm=None, burst_requests=5)


def main() -> None:
    spec = json.loads(sys.argv[1])
    if spec["backend"] == "sqlite":
        backend = SqliteLimitBackend(spec["target"])
    else:
        backend = RedisLimitBackend(spec["target"], prefix=spec["prefix"])
    limiter = RateLimiter(backend)
    if spec["mode"] == "async":
        result = asyncio.run(hammer_async(limiter, spec["start_at"], spec["duration"]))
    else:
        result = hammer_sync(limiter, spec["start_at"], spec["duration"])
    print(json.dumps(result))


def hammer_sync(limiter: RateLimiter, start_at: float, duration: float) -> dict:
    admitted, first, last, calls = 0, None, None, 0
    limiter.try_acquire_sync("warm-up", limit=LIMIT)  # connect (and import redis) before the start
    time.sleep(max(0.0, start_at - time.time()))
    end = start_at + duration
    while (before := time.time()) < end:
        calls += 1
        if limiter.try_acquire_sync("shared", limit=LIMIT):
            admitted += 1
            first = before if first is None else first
            last = time.time()
    limiter.close()
    return {"admitted": admitted, "first": first, "last": last, "calls": calls}


async def hammer_async(limiter: RateLimiter, start_at: float, duration: float) -> dict:
    admitted, first, last, calls = 0, None, None, 0
    await limiter.try_acquire("warm-up", limit=LIMIT)
    await asyncio.sleep(max(0.0, start_at - time.time()))
    end = start_at + duration
    while (before := time.time()) < end:
        calls += 1
        if await limiter.try_acquire("shared", limit=LIMIT):
            admitted += 1
            first = before if first is None else first
            last = time.time()
    await limiter.aclose()
    return {"admitted": admitted, "first": first, "last": last, "calls": calls}


if __name__ == "__main__":
    main()
