"""``gonka-mux demo``: the Multiplexer on an embedded local fleet, offline.

Starts fake OpenAI-compatible endpoints on loopback (two fast, one slow, one failing, one
rate-limited), routes a multi-turn conversation and a burst of concurrent requests through an
AsyncMultiplexer, and prints which endpoint served what, the failovers and latency percentiles.
It then runs the same against a fake Gonka network: discovery, signed requests, and an epoch
change in the middle of a burst.
"""

from __future__ import annotations

import asyncio
import statistics
import sys
import time
from collections import Counter
from typing import Any

from .gonka.demo import run_gonka_demo
from .multiplexer import AsyncMultiplexer
from .routing import HedgePolicy
from .testing import FakeBackendSpec, FakeFleet, Faults

__all__ = ["run_demo"]


def _say(text: str = "") -> None:
    """The demo's report goes to stdout (it is the main job's output, not a log)."""
    sys.stdout.write(text + "\n")
    sys.stdout.flush()


def _pct(values: list[float], q: float) -> float:
    if not values:
        return 0.0
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def _table(rows: list[list[Any]], header: list[str]) -> str:
    cells = [header] + [[str(c) for c in r] for r in rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(header))]
    lines = ["  ".join(c.ljust(w) for c, w in zip(r, widths, strict=False)) for r in cells]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


# What each fake endpoint is, for the "why" lines: role -> endpoint names.
_ROLES = {"fast-1": "fast", "fast-2": "fast", "slow": "slow", "flaky": "failing",
          "limited": "rate-limited"}  # fmt: skip


def _why(name: str, snapshot: dict[str, Any], total: int) -> str:
    """One line on why ``name`` got the traffic it got, from its role and its own counters
    (no timing is asserted: on a busy machine the numbers move, the reasons do not)."""
    served = snapshot["successes"]
    share = f"{served} served ({100 * served / total:.0f}%)" if total else f"{served} served"
    failures = snapshot["failures"]
    failed = sum(failures.values())
    role = _ROLES.get(name)
    if role == "fast":
        return f"{name}: fast (~25 ms), never fails: the router prefers it; {share}"
    if role == "slow":
        return (
            f"{name}: slow (~400 ms): picked only when the fast ones are busy, and hedged "
            f"after 300 ms; {share}"
        )
    if role == "failing":
        kinds = ", ".join(f"{v} {k}" for k, v in sorted(failures.items())) or "none this time"
        return (
            f"{name}: failing ({kinds}): each failure is retried elsewhere and makes it look "
            f"costly for a while; {share}"
        )
    if role == "rate-limited":
        limited = failures.get("rate_limited", 0)
        return (
            f"{name}: rate-limited ({limited} x HTTP 429): rests 1 s (its Retry-After) after "
            f"each, requests go elsewhere; {share}"
        )
    return f"{name}: {share}, {failed} failed attempt(s)"


async def _fleet_demo(requests: int, concurrency: int, seed: int) -> bool:
    specs = [
        FakeBackendSpec(name="fast-1", faults=Faults(latency=0.02, jitter=0.01)),
        FakeBackendSpec(name="fast-2", faults=Faults(latency=0.03, jitter=0.01)),
        FakeBackendSpec(name="slow", faults=Faults(latency=0.4, jitter=0.1)),
        FakeBackendSpec(
            name="flaky",
            faults=Faults(latency=0.02, rate_500=0.3, rate_hang=0.05, rate_drop_before=0.05),
        ),
        FakeBackendSpec(name="limited", faults=Faults(latency=0.02, rate_429=0.6, retry_after=1)),
    ]
    _say("Embedded fleet (fake OpenAI-compatible endpoints on 127.0.0.1):")
    _say("  fast-1, fast-2: ~25 ms | slow: ~400 ms | flaky: 30% HTTP 500, 5% hang, 5% drop")
    _say("  limited: 60% HTTP 429 with Retry-After: 1\n")
    with FakeFleet(specs, seed=seed) as fleet:
        mux = AsyncMultiplexer(
            first_byte_timeout=2.0,
            deadline=10.0,
            hedging=HedgePolicy(delay=None, max_delay=0.3),
            seed=seed,
        )
        for spec in specs:
            mux.add_endpoint(fleet[spec.name].url, models=["demo-model"], name=spec.name)

        _say("1) A multi-turn conversation")
        messages: list[dict[str, Any]] = [
            {"role": "system", "content": "You are a terse assistant."}
        ]
        for turn in ("Hi! Who are you?", "What can you do?", "Thanks, bye."):
            messages.append({"role": "user", "content": turn})
            t0 = time.perf_counter()
            reply = await mux.chat.completions.create(
                model="demo-model", messages=messages, max_tokens=64
            )
            ms = (time.perf_counter() - t0) * 1000
            text = reply.choices[0].message.content or ""
            messages.append({"role": "assistant", "content": text})
            _say(f"   user: {turn:<20} -> {text!r} ({ms:.0f} ms)")

        _say(f"\n2) A burst of {requests} requests, {concurrency} at a time")
        sem = asyncio.Semaphore(concurrency)
        latencies: list[float] = []
        errors: Counter[str] = Counter()

        async def one(i: int) -> None:
            async with sem:
                t0 = time.perf_counter()
                try:
                    await mux.chat.completions.create(
                        model="demo-model",
                        messages=[{"role": "user", "content": f"request {i}"}],
                        max_tokens=16,
                    )
                    latencies.append(time.perf_counter() - t0)
                except Exception as exc:
                    errors[type(exc).__name__] += 1

        t_burst = time.perf_counter()
        await asyncio.gather(*(one(i) for i in range(requests)))
        wall = time.perf_counter() - t_burst
        stats = mux.stats()["endpoints"]
        rows = []
        for name, s in stats.items():
            fails = ", ".join(f"{k}={v}" for k, v in sorted(s["failures"].items())) or "-"
            ewma = f"{s['ewma_latency_s'] * 1000:.0f} ms" if s["ewma_latency_s"] else "-"
            rows.append([name, s["successes"], fails, ewma, s["state"]])
        _say(_table(rows, ["endpoint", "served", "failures", "ewma latency", "state"]))
        _say("   (ewma latency: the router's running estimate; cooling: resting after failures)")
        total_served = sum(s["successes"] for s in stats.values())
        _say("\n   Why each endpoint got what it got:")
        for name, s in stats.items():
            _say(f"   - {_why(name, s, total_served)}")
        ok = len(latencies)
        attempts = sum(s["requests"] for s in stats.values())
        _say(
            f"\n   success {ok}/{requests} ({100 * ok / requests:.1f}%), "
            f"{requests / wall:.0f} req/s, upstream attempts per request "
            f"{attempts / (requests + 3):.2f}"
        )
        if latencies:
            _say(
                f"   latency p50 {_pct(latencies, 0.5) * 1000:.0f} ms, "
                f"p95 {_pct(latencies, 0.95) * 1000:.0f} ms, "
                f"p99 {_pct(latencies, 0.99) * 1000:.0f} ms, "
                f"mean {statistics.mean(latencies) * 1000:.0f} ms"
            )
        if errors:
            _say(f"   errors: {dict(errors)}")
        await mux.aclose()
        return ok == requests


def run_demo(requests: int = 200, concurrency: int = 16, seed: int = 7) -> int:
    """Run the demo; returns a process exit code (0 when every request succeeded)."""
    ok = asyncio.run(_fleet_demo(requests, concurrency, seed))
    _say("\n3) The Gonka network (a fake one on loopback)")
    ok = asyncio.run(run_gonka_demo()) and ok
    _say("\nNext: docs/quickstart.md (your own endpoints, in five minutes).")
    return 0 if ok else 1
