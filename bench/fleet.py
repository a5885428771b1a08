"""Routing on a misbehaving fleet: closed loop and open loop (issue 2's targets).

Closed loop: 8 endpoints (4 healthy at 100 ms, 2 slow at 1 s, 1 answering 429 to 60% of
requests, 1 broken: 30% 500, 5% hang, 5% dropped connections), 800 requests at c=16.
Targets: 100% success, p99 <= 1.3x the p99 of a client that only talks to one healthy endpoint,
throughput >= 0.9x of it. The same figures are printed for weighted-random routing.

Open loop: Poisson arrivals at 80 req/s for 45 s over 7 endpoints (2 fast, 1 slow, 1
rate-limited with Retry-After, 1 failing 30%, 1 hanging 20%, 1 down); one fast endpoint is
switched off for the middle 15 s; 5 s deadline per request. The Multiplexer runs at its
DEFAULT settings (no hedging or timeout tuning: what a user gets). Targets in every phase:
>= 99.9% success, p99 <= 0.6 s, <= 1.15 upstream attempts per request.

Every endpoint is a fake backend in its own process, so the client's loop measures the client.
Run: python bench/fleet.py [--closed-only|--open-only] [--duration 45] [--rate 80]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import random
import sys
import time
from typing import Any

import openai

from gonka_mux import AsyncMultiplexer, HedgePolicy
from gonka_mux.testing import Faults, spawn_fake_backend

MESSAGES = [{"role": "user", "content": "hello"}]


def pct(xs: list[float], q: float) -> float:
    if not xs:
        return float("nan")
    s = sorted(xs)
    return s[min(len(s) - 1, int(q * len(s)))]


def upstream_requests(backends: dict[str, Any]) -> int:
    return sum(b.request_count for b in backends.values())


def make_mux(backends: dict[str, Any], strategy: str, **settings: Any) -> AsyncMultiplexer:
    mux = AsyncMultiplexer(
        strategy=strategy,
        first_byte_timeout=settings.pop("first_byte_timeout", 5.0),
        hedging=settings.pop("hedging", HedgePolicy(delay=None, max_delay=0.5, min_delay=0.05)),
        seed=settings.pop("seed", 1),
        **settings,
    )
    for name, b in backends.items():
        mux.add_endpoint(b.url, models=["m"], name=name)
    return mux


async def closed_loop(create: Any, n: int, concurrency: int) -> dict[str, Any]:
    latencies: list[float] = []
    errors: list[str] = []
    it = iter(range(n))

    async def worker() -> None:
        for _ in it:
            t0 = time.perf_counter()
            try:
                await create(model="m", messages=MESSAGES, max_tokens=16)
                latencies.append(time.perf_counter() - t0)
            except Exception as exc:
                errors.append(type(exc).__name__)

    t0 = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(concurrency)))
    wall = time.perf_counter() - t0
    return {
        "ok": len(latencies),
        "n": n,
        "p50": pct(latencies, 0.5),
        "p99": pct(latencies, 0.99),
        "tput": len(latencies) / wall,
        "errors": errors,
    }


@contextlib.contextmanager
def spawn_all(specs: dict[str, Faults]):
    procs: dict[str, Any] = {}
    try:
        for i, (name, faults) in enumerate(specs.items()):
            procs[name] = spawn_fake_backend(models=["m"], name=name, faults=faults, seed=100 + i)
        yield procs
    finally:
        for p in procs.values():
            p.stop()


async def run_closed(args: argparse.Namespace) -> bool:
    specs = {f"healthy-{i}": Faults(latency=0.1, jitter=0.005) for i in range(4)}
    specs |= {f"slow-{i}": Faults(latency=1.0) for i in range(2)}
    specs["limited"] = Faults(latency=0.1, rate_429=0.6, retry_after=1)
    specs["broken"] = Faults(latency=0.1, rate_500=0.3, rate_hang=0.05, rate_drop_before=0.05)
    n, c = args.requests, args.concurrency
    ok_all = True
    with spawn_all(specs) as backends:
        direct = openai.AsyncOpenAI(
            base_url=backends["healthy-0"].url, api_key="x", max_retries=0, timeout=30
        )
        await closed_loop(direct.chat.completions.create, 50, 8)  # warm up
        base = await closed_loop(direct.chat.completions.create, n, c)
        await direct.close()
        print(
            f"\nCLOSED LOOP: {n} requests at c={c} over 8 endpoints "
            "(4 healthy 100 ms, 2 slow 1 s, 1 60% 429, 1 broken 30% 500 / 5% hang / 5% drop)"
        )
        print(
            f"{'client':<28}{'success':>10}{'p50':>9}{'p99':>9}{'req/s':>9}"
            f"{'p99 x':>8}{'tput x':>8}{'attempts/req':>14}"
        )
        print(
            f"{'direct, one healthy endpoint':<28}{base['ok']:>6}/{n:<3}"
            f"{base['p50'] * 1000:>7.0f}ms{base['p99'] * 1000:>7.0f}ms{base['tput']:>9.1f}"
        )
        for strategy in ("p2c", "weighted_random"):
            for b in backends.values():
                b.reset()
            mux = make_mux(backends, strategy)
            r = await closed_loop(mux.chat.completions.create, n, c)
            attempts = upstream_requests(backends) / n
            p99x, tputx = r["p99"] / base["p99"], r["tput"] / base["tput"]
            met = r["ok"] == n and p99x <= 1.3 and tputx >= 0.9
            if strategy == "p2c":
                ok_all &= met
            print(
                f"{'mux ' + strategy:<28}{r['ok']:>6}/{n:<3}{r['p50'] * 1000:>7.0f}ms"
                f"{r['p99'] * 1000:>7.0f}ms{r['tput']:>9.1f}{p99x:>8.2f}{tputx:>8.2f}"
                f"{attempts:>14.2f}  {'targets met' if met else 'MISS'}"
                + (f" errors={set(r['errors'])}" if r["errors"] else "")
            )
            await mux.aclose()
    print(
        "closed-loop targets (P2C): 100% success, p99 <= 1.3x, throughput >= 0.9x -> "
        + ("MET" if ok_all else "MISSED")
    )
    return ok_all


async def run_open(args: argparse.Namespace) -> bool:
    specs = {
        "fast-1": Faults(latency=0.05, jitter=0.02),
        "fast-2": Faults(latency=0.05, jitter=0.02),
        "slow": Faults(latency=1.0, jitter=0.2),
        "limited": Faults(latency=0.05, rate_429=0.5, retry_after=2),
        "failing": Faults(latency=0.05, rate_500=0.3),
        "hanging": Faults(latency=0.05, rate_hang=0.2),
        "down": Faults(down=True),
    }
    duration, rate = args.duration, args.rate
    third = duration / 3
    ok_all = True
    with spawn_all(specs) as backends:
        mux = AsyncMultiplexer(seed=1)  # defaults: what a user gets without tuning
        for name, b in backends.items():
            mux.add_endpoint(b.url, models=["m"], name=name)
        rng = random.Random(42)
        results: list[tuple[float, float | None]] = []  # (start offset, latency or None)
        tasks: list[asyncio.Task[None]] = []

        async def one(offset: float) -> None:
            t0 = time.perf_counter()
            try:
                await mux.chat.completions.create(
                    model="m", messages=MESSAGES, max_tokens=16, deadline=5.0
                )
                results.append((offset, time.perf_counter() - t0))
            except Exception:
                results.append((offset, None))

        switched = {"off": False, "on": False}
        start = time.perf_counter()
        next_at = 0.0
        attempts_at: dict[int, int] = {}
        while next_at < duration:
            now = time.perf_counter() - start
            if not switched["off"] and now >= third:
                backends["fast-1"].set_faults(Faults(down=True))
                switched["off"] = True
                attempts_at[1] = upstream_requests(backends)
            if not switched["on"] and now >= 2 * third:
                backends["fast-1"].set_faults(Faults(latency=0.05, jitter=0.02))
                switched["on"] = True
                attempts_at[2] = upstream_requests(backends)
            if now < next_at:
                await asyncio.sleep(next_at - now)
            tasks.append(asyncio.ensure_future(one(next_at)))
            next_at += rng.expovariate(rate)
        await asyncio.gather(*tasks)
        attempts_at[3] = upstream_requests(backends)
        await mux.aclose()
    print(
        f"\nOPEN LOOP at default settings: Poisson {rate:g} req/s for {duration:g} s over 7 "
        "endpoints (2 fast, 1 slow, 1 rate-limited, 1 failing 30%, 1 hanging 20%, 1 down); "
        "fast-1 off in the middle third"
    )
    print(f"{'phase':<24}{'requests':>9}{'success':>10}{'p50':>9}{'p99':>9}{'attempts/req':>14}")
    bounds = [(0.0, third), (third, 2 * third), (2 * third, duration + 1)]
    labels = ["1: all up", "2: fast-1 off", "3: fast-1 back"]
    prev = 0
    for i, ((lo, hi), label) in enumerate(zip(bounds, labels, strict=True)):
        phase = [r for r in results if lo <= r[0] < hi]
        lat = [r[1] for r in phase if r[1] is not None]
        n = len(phase)
        success = len(lat) / n if n else 0.0
        att = attempts_at.get(i + 1, attempts_at[3]) - prev
        prev = attempts_at.get(i + 1, attempts_at[3])
        per = att / n if n else 0.0
        met = success >= 0.999 and pct(lat, 0.99) <= 0.6 and per <= 1.15
        ok_all &= met
        print(
            f"{label:<24}{n:>9}{success * 100:>9.2f}%{pct(lat, 0.5) * 1000:>7.0f}ms"
            f"{pct(lat, 0.99) * 1000:>7.0f}ms{per:>14.3f}  {'targets met' if met else 'MISS'}"
        )
    print(
        "open-loop targets: >= 99.9% success, p99 <= 0.6 s, <= 1.15 attempts/request "
        "in every phase -> " + ("MET" if ok_all else "MISSED")
    )
    print("(attempts per phase are counted at the fake endpoints, at the phase switch times)")
    return ok_all


async def main(args: argparse.Namespace) -> int:
    print(f"openai {openai.__version__}, python {sys.version.split()[0]}")
    ok = True
    if not args.open_only:
        ok &= await run_closed(args)
    if not args.closed_only:
        ok &= await run_open(args)
    return 0 if ok else 1


if __name__ == "__main__":
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--closed-only", action="store_true")
    p.add_argument("--open-only", action="store_true")
    p.add_argument("--requests", type=int, default=800)
    p.add_argument("--concurrency", type=int, default=16)
    p.add_argument("--duration", type=float, default=45.0)
    p.add_argument("--rate", type=float, default=80.0)
    sys.exit(asyncio.run(main(p.parse_args())))
