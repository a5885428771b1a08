"""Gonka epoch swaps under a steady load: requests ok/failed across several swaps, swap time.

A fake Gonka network (loopback) with ``--participants`` TAs answering in ~20 ms; ``--workers``
concurrent workers send signed chat completions through an AsyncMultiplexer without pause while
the roster rotates ``--swaps`` times (two TAs leave, two join, each time). Every other swap
follows the production path (the next epoch's participants are prefetched between
``poc_validation_end`` and the switch); the others jump straight to the switch (no prefetch,
the participants are read at the switch). Target: 0 failed requests.

Prints, per swap: how long building and swapping the endpoint set took, how long after the
switch block the new set was live (the poll interval, here 50 ms, plus one poll round trip;
with the default 32 workers the process is CPU-bound, the fake network included, and a poll
waits its turn: try ``--workers 4`` to see the unloaded figure), and the requests that
completed ok/failed during that swap's window.

Run: python bench/epoch_swap.py [--swaps 6] [--workers 32] [--participants 8]
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import time
from collections import Counter
from collections.abc import Callable

from gonka_mux import AsyncMultiplexer
from gonka_mux.gonka.registration import aregister_gonka_models
from gonka_mux.gonka.signing import RequestSigner
from gonka_mux.testing.fake_gonka import FakeGonkaNetwork

MODEL = "Qwen/Fake-7B"
KEY = "be" * 32


async def until(predicate: Callable[[], bool], timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise TimeoutError("the fake network did not reach the expected state")
        await asyncio.sleep(0.002)


async def main(swaps: int, workers: int, participants: int) -> int:
    signer = RequestSigner(KEY)
    net = FakeGonkaNetwork(n_participants=participants, models=[MODEL])
    await asyncio.to_thread(net.start)
    net.add_account(signer, balance=10**15)
    for p in net.all_participants:
        p.set_faults(latency=0.02, jitter=0.01)
    mux = AsyncMultiplexer(first_byte_timeout=5.0, deadline=30.0)
    result = await aregister_gonka_models(
        mux,
        source_url=net.source_url,
        signer=signer,
        default_max_tokens=64,
        min_poll_interval=0.02,
        refresh_options={"interval": 0.05},
        environ={},
    )
    manager = result.refresh_manager
    assert manager is not None
    ok = 0
    failed: Counter[str] = Counter()
    stop = asyncio.Event()
    latencies: list[float] = []

    async def worker(n: int) -> None:
        nonlocal ok
        i = 0
        while not stop.is_set():
            i += 1
            t0 = time.perf_counter()
            try:
                await mux.chat.completions.create(
                    model=MODEL, messages=[{"role": "user", "content": f"w{n} r{i}"}]
                )
                ok += 1
                latencies.append(time.perf_counter() - t0)
            except Exception as exc:
                failed[type(exc).__name__] += 1

    tasks = [asyncio.create_task(worker(n)) for n in range(workers)]
    await asyncio.sleep(0.5)  # warm up
    print(
        f"{participants} TAs (~20 ms), {workers} concurrent workers, "
        f"poll every 50 ms; {swaps} swaps, 2 TAs leave and 2 join each time\n"
    )
    header = f"{'swap':>4}  {'epoch':>9}  {'prefetch':>8}  {'swap ms':>8}  {'live after':>10}"
    print(header + f"  {'ok':>6}  {'failed':>6}")
    rows = []
    started = time.perf_counter()
    for n in range(1, swaps + 1):
        ok_before, failed_before = ok, sum(failed.values())
        epoch = manager.current_epoch
        roster = net.participants
        joiners = []
        for _ in range(2):
            joiner = net.add_participant(weight=150)
            joiner.set_faults(latency=0.02, jitter=0.01)
            joiners.append(joiner)
        net.set_next_participants(roster[2:] + joiners)
        prefetch = n % 2 == 1
        if prefetch:
            net.advance_to_stage("poc_validation_end")
            await until(lambda e=epoch: manager.prefetched_epoch == e + 1)
        await asyncio.sleep(0.2)
        switch_at = time.perf_counter()
        net.advance_to_next_epoch()
        await until(lambda e=epoch: manager.current_epoch != e)
        live_after = time.perf_counter() - switch_at
        await asyncio.sleep(0.3)  # in-flight requests on the leavers finish
        swap = manager.last_swap
        swap_ms = (swap.swap_seconds or 0) * 1000 if swap is not None else float("nan")
        done, bad = ok - ok_before, sum(failed.values()) - failed_before
        rows.append((swap_ms, live_after))
        print(
            f"{n:>4}  {epoch:>4} -> {manager.current_epoch:<3}  "
            f"{'yes' if swap is not None and swap.prefetched else 'no':>8}  "
            f"{swap_ms:>8.3f}  {live_after * 1000:>7.0f} ms  {done:>6}  {bad:>6}"
        )
    wall = time.perf_counter() - started
    stop.set()
    await asyncio.gather(*tasks)
    await mux.aclose()
    await asyncio.to_thread(net.stop)
    total_failed = sum(failed.values())
    swap_times = [r[0] for r in rows]
    print(
        f"\nrequests: {ok} ok, {total_failed} failed (target 0)"
        + (f" {dict(failed)}" if failed else "")
    )
    print(
        f"swap (build + replace_endpoints): median {statistics.median(swap_times):.3f} ms, "
        f"max {max(swap_times):.3f} ms"
    )
    print(
        f"new set live after the switch block: median "
        f"{statistics.median(r[1] for r in rows) * 1000:.0f} ms (poll interval 50 ms)"
    )
    latencies.sort()
    print(
        f"throughput {ok / (wall + 0.5):.0f} req/s; latency p50 "
        f"{latencies[len(latencies) // 2] * 1000:.0f} ms, "
        f"p99 {latencies[int(len(latencies) * 0.99)] * 1000:.0f} ms"
    )
    return 0 if total_failed == 0 else 1


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--swaps", type=int, default=6)
    parser.add_argument("--workers", type=int, default=32)
    parser.add_argument("--participants", type=int, default=8)
    args = parser.parse_args()
    raise SystemExit(asyncio.run(main(args.swaps, args.workers, args.participants)))
