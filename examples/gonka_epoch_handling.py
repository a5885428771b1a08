"""Epochs: prefetch, the atomic swap at the switch height, PoC phases, callbacks, refresh_now.

The refresh manager polls ``/v1/epochs/latest`` (30 s by default, never more often than every
6 s per node; this example polls every 50 ms because the fake chain moves on command). It
prefetches the next epoch's participants once they are on chain, swaps the endpoint set at the
switch (in-flight requests finish on the old set), and lowers the Gonka endpoints' weights
during PoC phases. It runs on the sync Multiplexer's background thread and stops with it.

Run: python examples/gonka_epoch_handling.py
"""

import time
from collections.abc import Callable

from gonka_mux import Multiplexer
from gonka_mux.gonka import RequestSigner, register_gonka_models
from gonka_mux.testing.fake_gonka import FakeGonkaNetwork

MODEL = "Qwen/Fake-7B"
KEY = "55" * 32  # a throwaway key for the fake chain


def wait_for(predicate: Callable[[], object], timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise TimeoutError("the refresh manager did not react")
        time.sleep(0.01)


def main() -> None:
    with FakeGonkaNetwork(n_participants=3, models=[MODEL]) as net:
        net.add_account(RequestSigner(KEY))
        with Multiplexer() as mux:
            swaps: list[str] = []
            result = register_gonka_models(
                mux,
                source_url=net.source_url,
                private_key=KEY,
                min_poll_interval=0.01,  # production: keep the default 6 s
                refresh_options={"interval": 0.05},
                on_epoch_change=lambda old, new, participants: swaps.append(
                    f"epoch {old} -> {new}: {len(participants)} participants"
                ),
            )
            manager = result.refresh_manager
            assert manager is not None  # discovery over http(s): the epoch refresh runs
            manager.on_phase_change(lambda old, new, info: print(f"  phase {old} -> {new}"))
            print(f"epoch {manager.current_epoch}, phase {manager.phase}")

            # The next epoch: one participant leaves, a new one joins.
            newcomer = net.add_participant(weight=500)
            net.set_next_participants([*net.participants[1:], newcomer])
            net.advance_to_stage("poc_start")  # PoC: Gonka capacity drops
            wait_for(lambda: manager.poc_active)
            print("  weights during PoC:", sorted(e.weight for e in mux.endpoints))
            next_epoch = result.epoch_id + 1
            net.advance_to_stage("poc_validation_end", epoch=next_epoch)  # next set on chain
            wait_for(lambda: manager.prefetched_epoch is not None)
            print(
                f"  prefetched epoch {manager.prefetched_epoch}; weights restored:",
                sorted(e.weight for e in mux.endpoints),
            )
            net.advance_to_next_epoch()  # the switch height
            wait_for(lambda: swaps)  # the on_epoch_change callback ran
            print(" ", swaps[0])
            swap = manager.last_swap
            assert swap is not None and swap.swap_seconds is not None
            print(f"  swapped in {swap.swap_seconds * 1000:.2f} ms (prefetched: {swap.prefetched})")
            reply = mux.chat.completions.create(
                model=MODEL, messages=[{"role": "user", "content": "hi"}]
            )
            print("reply:", reply.choices[0].message.content)

            print("refresh_now():", manager.refresh_now().reason)
        print("closed with the Multiplexer:", manager.closed)


if __name__ == "__main__":
    main()
