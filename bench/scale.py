"""Scale: a pool of 1,000 endpoints (the Gonka network has hundreds of participants per model).

Targets (issue 2): choosing an endpoint costs <= 20 us; adding or removing the whole set takes
<= 10 ms without failing a request in flight. Also prints the import time of gonka_mux
(target <= 0.5 s).

Run: python bench/scale.py
"""

from __future__ import annotations

import asyncio
import statistics
import subprocess
import sys
import time

import openai

from gonka_mux import AsyncMultiplexer, Endpoint
from gonka_mux.testing import FakeBackendSpec, FakeFleet, Faults

N = 1000


def import_time() -> float:
    code = "import time; t=time.perf_counter(); import gonka_mux; print(time.perf_counter()-t)"
    runs = [
        float(
            subprocess.run(
                [sys.executable, "-c", code], capture_output=True, text=True, check=True
            ).stdout
        )
        for _ in range(5)
    ]
    return statistics.median(runs)


async def main() -> int:
    ok = True
    t_import = import_time()
    ok &= t_import <= 0.5
    print(
        f"import gonka_mux: {t_import * 1000:.1f} ms (target <= 500 ms) "
        f"{'OK' if t_import <= 0.5 else 'MISS'}"
    )

    with FakeFleet(
        [FakeBackendSpec(name=f"b{i}", faults=Faults(latency=0.05)) for i in range(4)]
    ) as fleet:
        clients = [
            openai.AsyncOpenAI(base_url=fleet[f"b{i}"].url, api_key="x", max_retries=0)
            for i in range(4)
        ]

        def make_set(tag: str) -> list[Endpoint]:
            return [
                Endpoint(clients[i % 4], models=["m"], name=f"{tag}-{i}", weight=1 + i % 7)
                for i in range(N)
            ]

        for strategy in ("p2c", "weighted_random", "round_robin"):
            mux = AsyncMultiplexer(strategy=strategy)
            mux.replace_endpoints("gonka", make_set("e"))
            core = mux._core
            pool = core.pools["m"]
            # mark 10% of the pool as cooling so selection has to skip some
            now = time.monotonic()
            for ep in pool.primary[::10]:
                ep.health.until = now + 3600
            tried: set[Endpoint] = set()
            for _ in range(2000):
                core.select(pool, tried, time.monotonic())
            k = 50_000
            t0 = time.perf_counter()
            for _ in range(k):
                core.select(pool, tried, time.monotonic())
            per = (time.perf_counter() - t0) / k
            ok &= per <= 20e-6
            print(
                f"select over {N} endpoints ({strategy}): {per * 1e6:.2f} us "
                f"(target <= 20 us) {'OK' if per <= 20e-6 else 'MISS'}"
            )

        mux = AsyncMultiplexer(first_byte_timeout=5)
        mux.replace_endpoints("gonka", make_set("old"))
        failures = 0
        done = 0
        stop = asyncio.Event()

        async def load() -> None:
            nonlocal failures, done
            while not stop.is_set():
                try:
                    await mux.chat.completions.create(
                        model="m", messages=[{"role": "user", "content": "x"}], max_tokens=4
                    )
                    done += 1
                except Exception:
                    failures += 1

        workers = [asyncio.ensure_future(load()) for _ in range(32)]
        await asyncio.sleep(0.3)
        swap_times, remove_times, add_times = [], [], []
        for round_no in range(10):
            new = make_set(f"r{round_no}")
            t0 = time.perf_counter()
            mux.replace_endpoints("gonka", new)
            swap_times.append(time.perf_counter() - t0)
            await asyncio.sleep(0.1)
        # remove the whole set, then add it back
        names = [ep.name for ep in mux.endpoints]
        backup = make_set("again")
        t0 = time.perf_counter()
        mux.replace_endpoints("gonka", [])
        remove_times.append(time.perf_counter() - t0)
        t0 = time.perf_counter()
        mux.replace_endpoints("gonka", backup)
        add_times.append(time.perf_counter() - t0)
        await asyncio.sleep(0.3)
        stop.set()
        await asyncio.gather(*workers)
        worst = max(swap_times + remove_times + add_times)
        ok &= worst <= 0.010 and failures == 0
        print(
            f"swap {N} endpoints for {N} new ones: median {statistics.median(swap_times) * 1e3:.2f}"
            f" ms, worst {max(swap_times) * 1e3:.2f} ms; remove all {remove_times[0] * 1e3:.2f} ms;"
            f" add all {add_times[0] * 1e3:.2f} ms (target <= 10 ms) "
            f"{'OK' if worst <= 0.010 else 'MISS'}"
        )
        print(
            f"requests during the swaps: {done} ok, {failures} failed (target 0) "
            f"{'OK' if failures == 0 else 'MISS'}; {len(names)} endpoints before removal"
        )
        for c in clients:
            await c.close()
    print("ALL TARGETS MET" if ok else "SOME TARGETS MISSED")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(asyncio.run(main()))
