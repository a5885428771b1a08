"""Worker process for the multi-process proof: hammer one key until a deadline, report admissions.

Run as ``python _hammer.py '<json>'`` with keys backend ("sqlite" | "redis"), target (a path or
URL), prefix, mode ("sync" | "async"), start_at and duration (wall-clock seconds). Prints one JSON
line: the number admitted, the wall time just before the first admitted call and just after the
last one, and how often the limiter fell back to local limits.

With ``ready_file`` and ``go_file`` instead of ``start_at``, the worker connects, creates
``ready_file``, then waits for ``go_file`` to appear and reads the start time from it (the
Redis-restart test restarts Redis in between, so the worker's connections are stale).
"""

from __future__ import annotations

import asyncio
import json
import sys
import time
from pathlib import Path

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
        result = asyncio.run(hammer_async(limiter, spec))
    else:
        result = hammer_sync(limiter, spec)
    result["fallbacks"] = limiter.status()["fallbacks"]
    print(json.dumps(result))


def start_time(spec: dict) -> float:
    """The agreed start: given, or read from ``go_file`` once it appears."""
    if "go_file" not in spec:
        return spec["start_at"]
    Path(spec["ready_file"]).touch()
    go = Path(spec["go_file"])
    deadline = time.monotonic() + 60
    while not go.exists() or not go.read_text().strip():
        if time.monotonic() > deadline:
            raise SystemExit("no go_file within 60 s")
        time.sleep(0.02)
    return float(go.read_text())


def hammer_sync(limiter: RateLimiter, spec: dict) -> dict:
    admitted, first, last, calls = 0, None, None, 0
    duration = spec["duration"]
    limiter.try_acquire_sync("warm-up", limit=LIMIT)  # connect (and import redis) before the start
    start_at = start_time(spec)
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


async def hammer_async(limiter: RateLimiter, spec: dict) -> dict:
    admitted, first, last, calls = 0, None, None, 0
    duration = spec["duration"]
    await limiter.try_acquire("warm-up", limit=LIMIT)
    start_at = await asyncio.to_thread(start_time, spec)
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
