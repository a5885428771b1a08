"""The Gonka part of ``gonka-mux demo``: a fake Gonka network on loopback, offline.

It discovers the participants, sends signed requests (checked by the fake nodes the way the
chain checks them), holds a multi-turn conversation, routes beside a Bearer-key broker (the
fake broker / devshard gateway), runs a burst of requests across an epoch change (the next
epoch's participants are prefetched and swapped in at the switch height; no request fails),
and ends as mainnet is today: every host retires classic inference (v0.2.14), the first 410
retires the signed group and the broker serves everything. It prints a short report; the whole
run takes a few seconds.
"""

from __future__ import annotations

import asyncio
import sys
import time
from collections import Counter
from typing import Any, TextIO

from gonka_mux.multiplexer import AsyncMultiplexer
from gonka_mux.testing.fake_gonka import FakeGonkaNetwork, verify_signature

from .registration import aadd_gonka_broker, aregister_gonka_models
from .signing import RequestSigner, signing_message

__all__ = ["run_gonka_demo"]

MODEL = "Qwen/Fake-7B"
# A throwaway key for the fake chain only (never a real account).
DEMO_KEY = "de" * 8 + "70" * 8 + "ab" * 8 + "cd" * 8
BROKER_KEY = "demo-broker-key"


def _short(address: str) -> str:
    return f"{address[:10]}...{address[-4:]}"


def _why(name: str, snapshot: dict[str, Any], departed: set[str], newcomer: str) -> str:
    """Why an endpoint of the Gonka demo got the traffic it got, in a few words."""
    if snapshot["kind"] != "gonka":
        return "(broker: in the same pool, picked by latency and weight like the TAs)"
    if name in departed:
        return "(left at the epoch change: no new requests after the swap)"
    if newcomer in name:
        return "(joined at the epoch change: traffic only after the swap)"
    return "(traffic in proportion to its weight, i.e. its compute)"


async def _wait_for(predicate: Any, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        await asyncio.sleep(0.02)
    return bool(predicate())


async def run_gonka_demo(
    out: TextIO | None = None, *, requests: int = 150, concurrency: int = 12
) -> bool:
    """Run the demo; True when every request succeeded and the epoch swap happened."""
    stream = out or sys.stdout

    def say(line: str = "") -> None:
        stream.write(line + "\n")

    signer = RequestSigner(DEMO_KEY)
    net = FakeGonkaNetwork(n_participants=3, models=[MODEL], weights=[100, 200, 300])
    await asyncio.to_thread(net.start)
    mux = AsyncMultiplexer(first_byte_timeout=5.0, deadline=20.0, seed=7)
    try:
        net.add_account(signer, balance=10**12)
        for participant in net.all_participants:
            participant.set_faults(latency=0.02, jitter=0.01)
        broker = net.start_broker(BROKER_KEY, faults={"latency": 0.03})

        started = time.perf_counter()
        result = await aregister_gonka_models(
            mux,
            source_url=net.source_url,
            signer=signer,
            default_max_tokens=256,
            normalize_weights=True,
            min_poll_interval=0.05,
            refresh_options={"interval": 0.1},
        )
        manager = result.refresh_manager
        assert manager is not None
        say("   In Gonka's words:")
        say("   - epoch: a stretch of the chain with a fixed set of participants, the hosts that")
        say("     serve models; each has a weight, its share of the network's compute.")
        say('   - phase "Inference": the part of an epoch when participants serve requests.')
        say("   - TA (Transfer Agent): the participant host that takes your signed request and")
        say("     passes it on to a model; requester: your account, whose key signs each one.")
        say(
            f"   discovered epoch {result.epoch_id} (phase {result.phase}) from "
            f"{net.source_url} in {(time.perf_counter() - started) * 1000:.0f} ms; "
            f"requester {_short(result.requester_address)}"
        )
        for participant in result.participants:
            say(
                f"     TA {_short(participant.address)}  weight {participant.weight:>3}  "
                f"{', '.join(participant.models)}  {participant.inference_url}"
            )
        await aadd_gonka_broker(mux, broker.url, BROKER_KEY, name="broker")
        say(
            f"   + a broker (a service that takes a Bearer API key and passes requests to Gonka "
            f"for you) serving {MODEL} in the same pool\n"
        )

        say("   a) A multi-turn conversation over signed requests")
        messages: list[dict[str, Any]] = [{"role": "system", "content": "Be brief."}]
        for turn in ("Hello Gonka!", "Which node answered?", "Thanks."):
            messages.append({"role": "user", "content": turn})
            reply = await mux.chat.completions.create(model=MODEL, messages=messages)
            text = reply.choices[0].message.content or ""
            messages.append({"role": "assistant", "content": text})
            say(f"      user: {turn:<22} -> {text!r} (inference id {reply.id[:12]}...)")

        say(f"\n   b) {requests} requests, {concurrency} at a time, across an epoch change")
        say("      (the switch block: the block height at which the next epoch's participants")
        say("      take over; gonka_mux reads them in advance and swaps them in at that block)")
        newcomer = net.add_participant(weight=250)
        newcomer.set_faults(latency=0.02, jitter=0.01)
        stays = net.participants[1:]
        leaves = net.participants[0]
        failures: Counter[str] = Counter()
        served = 0
        done = 0
        semaphore = asyncio.Semaphore(concurrency)

        async def one(i: int) -> None:
            nonlocal served, done
            async with semaphore:
                try:
                    await mux.chat.completions.create(
                        model=MODEL, messages=[{"role": "user", "content": f"request {i}"}]
                    )
                    served += 1
                except Exception as exc:
                    failures[type(exc).__name__] += 1
                finally:
                    done += 1

        departed = [ep for ep in result.endpoints if leaves.address in ep.name]
        sent_to_departed_at_swap = 0

        async def epoch_change() -> tuple[float, float]:
            nonlocal sent_to_departed_at_swap
            await _wait_for(lambda: done >= requests // 4, 10)
            net.set_next_participants([*stays, newcomer])
            net.advance_to_stage("poc_validation_end")  # epoch N+1's set is now readable
            await _wait_for(lambda: manager.prefetched_epoch is not None, 5)
            await _wait_for(lambda: done >= requests // 2, 10)
            switch_at = time.monotonic()
            net.advance_to_next_epoch()  # block height reaches set_new_validators
            await _wait_for(lambda: manager.current_epoch > result.epoch_id, 5)
            sent_to_departed_at_swap = sum(ep.requests for ep in departed)
            return switch_at, time.monotonic()

        burst_started = time.perf_counter()
        change, *_ = await asyncio.gather(epoch_change(), *(one(i) for i in range(requests)))
        wall = time.perf_counter() - burst_started
        switch_at, swapped_at = change
        swap = manager.last_swap
        swap_ms = (swap.swap_seconds or 0.0) * 1000 if swap is not None else 0.0
        say(
            f"      epoch {result.epoch_id} -> {manager.current_epoch}: "
            f"{_short(leaves.address)} left, {_short(newcomer.address)} joined "
            f"(participants prefetched before the switch)"
        )
        say(
            f"      swap seen {1000 * (swapped_at - switch_at):.0f} ms after the switch block; "
            f"the swap itself took {swap_ms:.3f} ms"
        )
        say(
            f"      {served}/{requests} ok, {sum(failures.values())} failed, "
            f"{requests / wall:.0f} req/s" + (f"  errors: {dict(failures)}" if failures else "")
        )

        stats = mux.stats()["endpoints"]
        say("\n   c) Who served what, and why")
        departed_names = {ep.name for ep in departed}
        for name, snapshot in stats.items():
            address = name.split(":", 1)[-1].split("/", 1)[0]
            label = name if snapshot["kind"] != "gonka" else f"TA {_short(address)}"
            served_here, weight = snapshot["successes"], snapshot["weight"]
            say(
                f"      {label:<24} {served_here:>4} served  weight {weight:.2f}  "
                f"{_why(name, snapshot, departed_names, newcomer.address)}"
            )
        records = net.inference_requests
        verified = sum(
            verify_signature(
                signer.public_key,
                record.authorization or "",
                signing_message(record.body, record.timestamp_ns or 0, record.node),
            )
            for record in records
        )
        # Attempts started on the departed TA's endpoint after the swap (in-flight ones finish).
        to_departed = sum(ep.requests for ep in departed) - sent_to_departed_at_swap
        say(
            f"      {verified}/{len(records)} signed requests verified by the fake TAs "
            f"(independent verifier), each with its own timestamp and signature; "
            f"{len({r.authorization for r in records})} distinct signatures"
        )
        say(f"      requests sent to the departed TA after the swap: {to_departed}")

        say("\n   d) Mainnet today: every host retires classic inference (v0.2.14)")
        before = len(net.inference_requests)
        net.retire_classic_api()  # 410 {"error": "deprecated", ...} with Deprecation headers
        by_broker = sent = 0
        # Routing may prefer the broker for a while (it is the faster endpoint), so keep
        # going until a signed request has met the 410 and the group is gone.
        while sent < 10 or (sent < 200 and any(ep.kind == "gonka" for ep in mux.endpoints)):
            reply = await mux.chat.completions.create(
                model=MODEL, messages=[{"role": "user", "content": f"after retirement {sent}"}]
            )
            sent += 1
            by_broker += (reply.choices[0].message.content or "") == "ok from broker"
        met_410 = len(net.inference_requests) - before
        signed_left = [ep.name for ep in mux.endpoints if ep.kind == "gonka"]
        say(
            f"      {by_broker}/{sent} served by the broker; {met_410} signed request(s) met the "
            f"410 and moved on within the same call; signed endpoints left: {len(signed_left)}"
        )
        say(f"      the refresh stopped: {not manager.is_running}")
        ok = (
            not failures
            and served == requests
            and manager.current_epoch > result.epoch_id
            and verified == len(records)
            and to_departed == 0
            and by_broker == sent
            and not signed_left
            and met_410 <= 1
        )
        say(f"\n   Gonka demo: {'OK' if ok else 'FAILED'}")
        return ok
    finally:
        await mux.aclose()
        await asyncio.to_thread(net.stop)


if __name__ == "__main__":  # python -m gonka_mux.gonka.demo
    raise SystemExit(0 if asyncio.run(run_gonka_demo()) else 1)
