"""Multiplexer overhead vs a plain AsyncOpenAI client (one fake endpoint in a separate process).

Targets (issue 2): throughput >= 0.95x the direct client at c=1 and c=32; added p50 latency at
c=1 <= 0.2 ms; client CPU per request <= 1.1x the direct client's; a streamed request adds
<= 0.5 ms. Rounds alternate direct / mux so both see the same machine noise; the figures are the
medians over rounds. ``--metering`` adds the metering extension (issue 4's target: throughput
stays >= 0.95x with metering on).

Run: python bench/overhead.py [--requests 2000] [--rounds 5] [--metering [--no-journal]]
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import openai

from gonka_mux import AsyncMultiplexer
from gonka_mux.testing import spawn_fake_backend

MESSAGES = [{"role": "user", "content": "Say hello in five words."}]


async def run_round(
    create: Any, n: int, concurrency: int, stream: bool = False
) -> tuple[float, float, list[float]]:
    """Returns (wall seconds, client CPU seconds, per-request latencies)."""
    latencies: list[float] = []
    queue = iter(range(n))

    async def worker() -> None:
        for _ in queue:
            t0 = time.perf_counter()
            if stream:
                s = await create(model="m", messages=MESSAGES, max_tokens=16, stream=True)
                async for _chunk in s:
                    pass
            else:
                await create(model="m", messages=MESSAGES, max_tokens=16)
            latencies.append(time.perf_counter() - t0)

    cpu0, t0 = time.process_time(), time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(concurrency)))
    return time.perf_counter() - t0, time.process_time() - cpu0, latencies


def p50(xs: list[float]) -> float:
    return statistics.median(xs)


async def main(args: argparse.Namespace) -> int:
    ok = True
    with spawn_fake_backend(models=["m"], seed=1) as backend:
        direct = openai.AsyncOpenAI(base_url=backend.url, api_key="x", max_retries=0)
        mux = AsyncMultiplexer()
        mux.add_endpoint(backend.url, models=["m"], name="fake")
        meter = None
        if args.metering:
            Path(args.metering_db).unlink(missing_ok=True)  # noqa: ASYNC240 - setup, not timed
            # The crash journal (records survive SIGKILL) is on by default; --no-journal
            # measures metering without it, to see what durability costs.
            meter = mux.enable_metering(
                path=Path(args.metering_db), journal=None if args.journal else False
            )
        # warm up both (connections, imports, pydantic caches)
        await run_round(direct.chat.completions.create, 200, 8)
        await run_round(mux.chat.completions.create, 200, 8)

        print(
            f"openai {openai.__version__}, python {sys.version.split()[0]}, "
            f"{args.requests} requests x {args.rounds} rounds per cell"
            + (f", SQLite metering ON (journal {'on' if args.journal else 'off'})" if meter else "")
        )
        header = f"{'case':<22}{'direct':>12}{'mux':>12}{'ratio':>9}  target"
        print(header)
        print("-" * len(header))
        for concurrency in (1, 32):
            # Many short alternating blocks: both clients see the same machine noise.
            n_total = args.requests if concurrency > 1 else max(300, args.requests // 4)
            block = max(concurrency * 4, 50)
            acc = {"direct": [0.0, 0.0, 0, []], "mux": [0.0, 0.0, 0, []]}
            for _ in range(args.rounds):
                for _b in range(max(1, n_total // block)):
                    for side, create in (
                        ("direct", direct.chat.completions.create),
                        ("mux", mux.chat.completions.create),
                    ):
                        wall, cpu, lat = await run_round(create, block, concurrency)
                        a = acc[side]
                        a[0] += wall
                        a[1] += cpu
                        a[2] += block
                        a[3].extend(lat)
            dt, mt = acc["direct"][2] / acc["direct"][0], acc["mux"][2] / acc["mux"][0]
            dc, mc = acc["direct"][1] / acc["direct"][2], acc["mux"][1] / acc["mux"][2]
            ratio_t, ratio_c = mt / dt, mc / dc
            ok &= ratio_t >= 0.95 and ratio_c <= 1.1
            print(
                f"{'throughput c=' + str(concurrency):<22}{dt:>10.0f}/s{mt:>10.0f}/s"
                f"{ratio_t:>9.3f}  >= 0.95 {'OK' if ratio_t >= 0.95 else 'MISS'}"
            )
            print(
                f"{'cpu/request c=' + str(concurrency):<22}{dc * 1e6:>10.0f}us{mc * 1e6:>10.0f}us"
                f"{ratio_c:>9.3f}  <= 1.10 {'OK' if ratio_c <= 1.1 else 'MISS'}"
            )
            if concurrency == 1:
                d50, m50 = p50(acc["direct"][3]), p50(acc["mux"][3])
                added = (m50 - d50) * 1000
                ok &= added <= 0.2
                print(
                    f"{'added p50 c=1':<22}{d50 * 1000:>10.3f}ms"
                    f"{m50 * 1000:>10.3f}ms{added:>+8.3f}ms  <= 0.2 ms "
                    f"{'OK' if added <= 0.2 else 'MISS'}"
                )
        # streamed request latency at c=1, alternating blocks
        d_s: list[float] = []
        m_s: list[float] = []
        for _ in range(args.rounds * 4):
            _, _, lat = await run_round(direct.chat.completions.create, 50, 1, stream=True)
            d_s.extend(lat)
            _, _, lat = await run_round(mux.chat.completions.create, 50, 1, stream=True)
            m_s.extend(lat)
        added = (p50(m_s) - p50(d_s)) * 1000
        ok &= added <= 0.5
        print(
            f"{'stream added p50':<22}{p50(d_s) * 1000:>10.3f}ms"
            f"{p50(m_s) * 1000:>10.3f}ms{added:>+8.3f}ms  <= 0.5 ms "
            f"{'OK' if added <= 0.5 else 'MISS'}"
        )
        await mux.aclose()  # flushes the meter
        if meter is not None:
            from gonka_mux.metering import SqliteUsageStore, UsageQuery

            n = UsageQuery(SqliteUsageStore(args.metering_db, readonly=True)).totals().requests
            print(f"metering recorded {n} requests in {args.metering_db}")
        await direct.close()
    print("ALL TARGETS MET" if ok else "SOME TARGETS MISSED")
    return 0 if ok else 1


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--requests", type=int, default=2000)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--metering", action="store_true")
    parser.add_argument("--metering-db", default="/tmp/gonka-mux-bench-usage.db")
    parser.add_argument(
        "--no-journal",
        dest="journal",
        action="store_false",
        help="with --metering: turn the metering crash journal off (to measure its cost)",
    )
    sys.exit(asyncio.run(main(parser.parse_args())))
