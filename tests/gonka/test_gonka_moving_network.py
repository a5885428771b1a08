"""Whose 403 is it, on a network that moves.

A participant that left the epoch refuses with its own 403 text. That is its refusal, not the
network's: fail over at once, keep it out until the next refresh, wake the refresh early. Only
the node's own restriction message, or the same refusal from several distinct participants
within seconds, is chain-wide.

The moving network: epochs of about a second (blocks every 20 ms), one participant leaving and
one joining at each switch, refresh intervals scaled down. Block production waits for the
client where a slow machine could otherwise skip an epoch, so the assertions hold at any speed.
"""

from __future__ import annotations

import asyncio
from collections import Counter

import pytest
from _gonka_mux_support import address_of, chat, endpoint_names, register, wait_until
from _gonka_support import MODEL

from gonka_mux import AsyncMultiplexer
from gonka_mux.gonka.policy import (
    GonkaAccessRestricted,
    GonkaParticipantRefused,
    RefusalTracker,
)
from gonka_mux.testing.fake_gonka import EpochSchedule, FakeGonkaNetwork

DEPARTED = "participant {address} is not active in the current epoch"
BLOCK_TIME = 0.02
# epochs of 40 blocks (~0.8 s of blocks); the set switches 15 blocks after PoC start
SCHEDULE = EpochSchedule(
    epoch_length=40,
    poc_stage_duration=4,
    poc_validation_delay=1,
    poc_validation_duration=6,
    set_new_validators_delay=4,
    inference_validation_cutoff=1,
)


def moving_network(signer, participants: int = 4) -> FakeGonkaNetwork:
    net = FakeGonkaNetwork(
        n_participants=participants,
        models=[MODEL],
        schedule=SCHEDULE,
        weights=[100] * participants,
        departed_refusal=DEPARTED,
    )
    net.start()
    net.add_account(signer)
    for participant in net.all_participants:
        participant.set_faults(latency=0.003)
    return net


def successes_of(mux, address: str) -> int:
    return sum(ep.successes for ep in mux.endpoints if ep.group == "gonka" and address in ep.name)


async def test_three_switches_no_failed_request_every_newcomer_served(signer) -> None:
    net = moving_network(signer)
    newcomers = [net.add_participant(weight=100) for _ in range(3)]
    for newcomer in newcomers:
        newcomer.set_faults(latency=0.003)
    outcomes: Counter[str] = Counter()
    served_in_first_epoch: list[bool] = []
    stop = asyncio.Event()
    try:
        async with AsyncMultiplexer(hedging=None) as mux:
            result = await register(
                mux, net, signer, refresh_options={"interval": 0.3, "prefetch": False}
            )
            manager = result.refresh_manager
            assert manager is not None

            async def worker() -> None:
                while not stop.is_set():
                    try:
                        await chat(mux)
                        outcomes["ok"] += 1
                    except Exception as exc:  # every failure is caller-visible
                        outcomes[type(exc).__name__] += 1
                    await asyncio.sleep(0.002)

            async def move() -> None:
                for newcomer in newcomers:
                    roster = net.participants
                    net.set_next_participants([*roster[1:], newcomer])
                    switch = net.next_switch_height()
                    while net.block_height < switch:
                        net.advance_blocks(1)
                        await asyncio.sleep(BLOCK_TIME)
                    # the leaver now refuses in its own words; the newcomer is effective
                    next_switch = net.next_switch_height()
                    await wait_until(lambda: manager.current_epoch == net.current_epoch, 10)
                    while net.block_height < next_switch - SCHEDULE.epoch_length + 20:
                        net.advance_blocks(1)  # into the epoch, traffic flowing
                        await asyncio.sleep(BLOCK_TIME)
                    # the next switch waits for the newcomer's first answer (a slow machine
                    # must not skip the epoch): it has to come within this epoch
                    address = newcomer.address
                    await wait_until(lambda: successes_of(mux, address) > 0, 10)  # noqa: B023
                    served_in_first_epoch.append(net.block_height < next_switch)

            workers = [asyncio.create_task(worker()) for _ in range(6)]
            try:
                await move()
            finally:
                stop.set()
                await asyncio.gather(*workers)
            live = {address_of(name) for name in endpoint_names(mux)}
    finally:
        net.stop()
    assert outcomes["ok"] > 100
    assert set(outcomes) == {"ok"}, outcomes  # 0 caller-visible failures
    assert served_in_first_epoch == [True, True, True]
    assert live == {p.address for p in net.participants}
    refusals = [r for r in net.inference_requests if r.status == 403]
    # every refusal came from a participant that had left, each at most a few times
    departed = {p.address for p in net.all_participants[:3]}
    assert {r.node for r in refusals} <= departed


async def test_a_refusal_fails_over_at_once_and_wakes_the_refresh(signer) -> None:
    net = moving_network(signer, participants=3)
    try:
        async with AsyncMultiplexer(hedging=None) as mux:
            result = await register(mux, net, signer, refresh_options={"interval": 60})
            manager = result.refresh_manager
            assert manager is not None
            leaving = net.participants[0]
            newcomer = net.add_participant(weight=100)
            net.set_participants([*net.participants[1:], newcomer])  # effective at once
            for _ in range(60):  # until the router happens to pick the leaver
                reply = await chat(mux)
                assert reply.choices[0].message.content.startswith("ok from p")
                if any(r.status == 403 for r in net.inference_requests):
                    break
            refused = [r for r in net.inference_requests if r.status == 403]
            assert [r.node for r in refused] == [leaving.address]
            # out of rotation at once, and the refresh was woken (interval is 60 s)
            assert leaving.address not in {address_of(n) for n in endpoint_names(mux)}
            await wait_until(
                lambda: newcomer.address in {address_of(n) for n in endpoint_names(mux)}
            )
            assert manager.last_result is not None and manager.last_result.reason == "failures"
            for _ in range(10):
                await chat(mux)
            assert len([r for r in net.inference_requests if r.status == 403]) == 1
    finally:
        net.stop()


async def test_a_lone_refusal_with_no_alternative_is_that_participants_error(signer) -> None:
    net = moving_network(signer, participants=1)
    try:
        async with AsyncMultiplexer() as mux:
            await register(mux, net, signer, refresh_options={"interval": 60})
            only = net.participants[0]
            net.set_participants([net.add_participant()])
            with pytest.raises(GonkaParticipantRefused) as info:
                await chat(mux)
            assert info.value.status_code == 403
            assert info.value.transfer_address == only.address
            assert only.address in info.value.node_message
    finally:
        net.stop()


async def test_the_nodes_own_restriction_is_chain_wide_at_once(net, signer) -> None:
    async with AsyncMultiplexer() as mux:
        await register(mux, net, signer, refresh_enabled=False)
        net.set_developer_gate(net.block_height + 100)
        with pytest.raises(GonkaAccessRestricted) as info:
            await chat(mux)
        assert "restricted until block height" in info.value.node_message
        assert len(net.inference_requests) == 1  # not retried: the chain said so
        assert len(endpoint_names(mux)) == 3  # nobody dropped


async def test_the_same_refusal_from_several_participants_is_chain_wide(net, signer) -> None:
    for participant in net.participants:
        participant.set_error_rate(1.0, 403, f"requester blocked by host {participant.address}")
    async with AsyncMultiplexer(max_attempts=5) as mux:
        await register(mux, net, signer, refresh_enabled=False)
        with pytest.raises(GonkaAccessRestricted) as info:
            await chat(mux)
        # three hosts refused alike within seconds: the network, not one participant
        assert len(info.value.participants) == 3
        assert len(net.inference_requests) == 3


def test_refusal_tracker_counts_distinct_participants_alike_in_a_window() -> None:
    now = [0.0]
    size = [40]
    tracker = RefusalTracker(window=10, population=lambda: size[0], clock=lambda: now[0])
    assert tracker.needed() == 20  # half of 40
    for i in range(19):
        assert not tracker.record(f"gonka1host{i}", f"denied by gonka1host{i} at height {i}")
    assert tracker.record("gonka1host19", "denied by gonka1host19 at height 99")
    size[0] = 4
    assert tracker.needed() == 3
    now[0] = 100.0  # the window passed
    assert not tracker.record("gonka1a", "go away")
    assert not tracker.record("gonka1a", "go away")  # the same participant twice
    assert not tracker.record("gonka1b", "something else")
    tracker.forget_departed({"gonka1c"})  # a and b left: their refusals were their own
    assert not tracker.record("gonka1c", "go away")
    size[0] = 2
    assert tracker.record("gonka1d", "go away")
    with pytest.raises(ValueError):
        RefusalTracker(threshold=1)
