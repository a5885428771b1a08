"""Following epochs: atomic swaps at the switch height, prefetch, PoC phases, early refreshes on
403/404/410, backoff on failed refreshes, and the lifecycle on both Multiplexer faces."""

from __future__ import annotations

import asyncio
import threading
import time
from collections import Counter

import pytest
from _gonka_mux_support import (
    MESSAGES,
    address_of,
    assert_verified,
    chat,
    endpoint_names,
    register,
    wait_until,
)
from _gonka_support import MODEL

from gonka_mux import AsyncMultiplexer, ModelNotFound, Multiplexer
from gonka_mux.gonka.policy import GonkaModelNotServed
from gonka_mux.gonka.refresh import GonkaRefreshManager
from gonka_mux.gonka.registration import aadd_gonka_broker, register_gonka_models
from gonka_mux.testing.fake_gonka import FakeGonkaNetwork

EPOCH_POLLS = "/v1/epochs/latest"


def polls(net, node: str = "seed") -> list:
    return [r for r in net.requests if r.path == EPOCH_POLLS and r.node == node]


async def test_switch_with_requests_in_flight_fails_none(net, signer) -> None:
    p0, p1, p2 = net.participants
    release = threading.Event()  # the old set's answers wait for the swap (no timing race)

    async def held(request):
        # runs on the fake network's own loop thread: a threading.Event, polled
        while not release.is_set():  # noqa: ASYNC110
            await asyncio.sleep(0.005)
        return None  # the default reply

    for participant in net.participants:
        participant.backend.set_replies(held)
    newcomer = net.add_participant(weight=500)
    async with AsyncMultiplexer(hedging=None) as mux:
        result = await register(mux, net, signer, refresh_options={"prefetch": False})
        manager = result.refresh_manager
        old = {address_of(ep.name): ep for ep in result.endpoints}
        in_flight = [asyncio.ensure_future(chat(mux)) for _ in range(12)]
        await wait_until(lambda: sum(ep.inflight for ep in old.values()) == 12)
        net.set_next_participants([p1, p2, newcomer])
        net.advance_to_next_epoch()
        await wait_until(lambda: manager.current_epoch == 11)
        assert sum(ep.inflight for ep in old.values()) == 12  # the swap did not wait for them
        assert {address_of(n) for n in endpoint_names(mux)} == {
            p1.address,
            p2.address,
            newcomer.address,
        }
        release.set()
        replies = await asyncio.gather(*in_flight)  # every in-flight request completes
        assert len(replies) == 12
        # stayers keep their endpoint (history); the leaver's endpoint is out of rotation
        assert mux._core.endpoints[old[p1.address].name] is old[p1.address]
        assert old[p0.address].removed
        sent_to_p0 = old[p0.address].requests
        served = Counter()
        for _ in range(12):
            served[(await chat(mux)).choices[0].message.content] += 1
        assert old[p0.address].requests == sent_to_p0  # nothing new went to the leaver
        assert served["ok from p3"] > 0
        # the leaver's client is closed once its requests have drained
        await wait_until(lambda: old[p0.address].client.is_closed())
        assert manager.last_swap is not None and manager.last_swap.participants_removed == (
            p0.address,
        )
    assert {r.status for r in net.inference_requests} == {200}
    assert_verified(net.inference_requests, signer)


async def test_next_epoch_is_prefetched_and_swapped_in_at_the_switch(net, signer) -> None:
    p0, _, p2 = net.participants
    newcomer = net.add_participant(weight=50)
    seen = []
    async with AsyncMultiplexer() as mux:
        result = await register(mux, net, signer, on_epoch_change=lambda *a: seen.append(a))
        manager = result.refresh_manager
        net.set_next_participants([p0, p2, newcomer])
        net.advance_to_stage("poc_validation_end")  # epoch 11's set is on chain, not effective
        await wait_until(lambda: manager.prefetched_epoch == 11)
        assert [r.path for r in net.requests if "/epochs/11/" in r.path]
        assert manager.current_epoch == 10
        assert newcomer.address not in {address_of(n) for n in endpoint_names(mux)}
        net.clear_requests()
        net.advance_to_next_epoch()
        await wait_until(lambda: manager.current_epoch == 11)
        swap = manager.last_swap
        assert swap.prefetched and swap.epoch_changed and swap.reason == "switch"
        assert swap.participants_added == (newcomer.address,)
        assert swap.swap_seconds is not None
        # the switch used the prefetched list: no participants fetch after it
        assert not [r for r in net.requests if r.path.endswith("/participants")]
        assert {address_of(n) for n in endpoint_names(mux)} == {
            p0.address,
            p2.address,
            newcomer.address,
        }
        await chat(mux, route_to=f"gonka:{newcomer.address}/{MODEL}")
    (old_epoch, new_epoch, participants), *_ = seen
    assert (old_epoch, new_epoch) == (10, 11)
    assert {p.address for p in participants} == {p0.address, p2.address, newcomer.address}


async def test_callbacks_and_refresh_now(net, signer) -> None:
    events = []

    async def async_callback(old: int, new: int, participants: list) -> None:
        events.append(("async", old, new))

    async with AsyncMultiplexer() as mux:
        result = await register(mux, net, signer, refresh_options={"interval": 60})
        manager = result.refresh_manager
        manager.on_epoch_change(async_callback)
        manager.on_epoch_change(lambda old, new, participants: events.append(("sync", old, new)))
        manager.on_epoch_change(lambda *a: 1 / 0)  # a failing callback is logged, not fatal
        outcome = await manager.arefresh_now()
        assert outcome.success and not outcome.epoch_changed and outcome.reason == "manual"
        net.advance_to_next_epoch()
        outcome = await manager.arefresh_now()
        assert outcome.epoch_changed and (outcome.old_epoch, outcome.new_epoch) == (10, 11)
        # the sync face refreshes from another thread onto the manager's loop
        net.advance_to_next_epoch()
        outcome = await asyncio.to_thread(manager.refresh_now)
        assert (outcome.old_epoch, outcome.new_epoch) == (11, 12)
        with pytest.raises(RuntimeError):
            manager.refresh_now()  # from its own loop it would deadlock
    assert events == [("async", 10, 11), ("sync", 10, 11), ("async", 11, 12), ("sync", 11, 12)]


async def test_poc_phases_are_reported_and_lower_gonka_weights(net, signer) -> None:
    phases = []
    broker = net.start_broker("sk-b")
    async with AsyncMultiplexer(strategy="weighted_random") as mux:
        result = await register(
            mux, net, signer, refresh_options={"poc_weight_factor": 0.1}, normalize_weights=True
        )
        manager = result.refresh_manager
        manager.on_phase_change(lambda old, new, info: phases.append((old, new)))
        broker_ep = await aadd_gonka_broker(mux, broker.url, "sk-b", name="broker")
        weights = {ep.name: ep.weight for ep in result.endpoints}

        def broker_share() -> float:
            core = mux._core
            pool = core.pools[MODEL]
            picks = Counter(
                core.strategy.select(pool.primary, time.monotonic(), (), 0.1).name
                for _ in range(2000)
            )
            return picks["broker"] / 2000

        normal_share = broker_share()
        net.advance_to_stage("poc_start")
        await wait_until(lambda: manager.poc_active)
        assert manager.phase == "PoCGenerate"
        for ep in result.endpoints:
            assert ep.weight == pytest.approx(weights[ep.name] * 0.1)
        assert broker_ep.weight == 1
        assert broker_share() > normal_share + 0.3  # traffic moves to the broker
        assert (await chat(mux)).choices  # still serving
        net.advance_to_stage("poc_validation_end", epoch=11)  # back to Inference
        await wait_until(lambda: not manager.poc_active)
        for ep in result.endpoints:
            assert ep.weight == pytest.approx(weights[ep.name])
        net.set_confirmation_poc(2)  # a confirmation PoC in its generation phase
        await wait_until(lambda: manager.poc_active)
        assert manager.phase == "ConfirmationPoC"
        net.set_confirmation_poc(None)
        await wait_until(lambda: not manager.poc_active)
    assert ("Inference", "PoCGenerate") in phases
    assert ("Inference", "ConfirmationPoC") in phases


async def test_failed_refreshes_keep_the_last_good_set_and_back_off(net, signer) -> None:
    p2 = net.participants[2]
    async with AsyncMultiplexer() as mux:
        # discovery through p2's own node (every participant serves the discovery routes)
        result = await register(
            mux, net, signer, source_url=p2.url, refresh_options={"max_backoff": 0.25}
        )
        manager = result.refresh_manager
        before = {ep.name: ep for ep in mux.endpoints}
        p2.set_faults(down=True)
        await wait_until(lambda: manager.consecutive_failures >= 3)
        assert manager.next_delay >= 0.05 * 4 * 0.9  # 0.05 s doubled twice (jitter aside)
        assert manager.last_error and manager.last_result.success is False
        assert {ep.name: ep for ep in mux.endpoints} == before  # the last good set stays
        for _ in range(4):
            assert (await chat(mux)).choices[0].message.content in ("ok from p0", "ok from p1")
        await wait_until(lambda: manager.consecutive_failures >= 5)
        assert manager.next_delay <= 0.25 * 1.1  # capped by max_backoff
        p2.set_faults(down=False)
        await wait_until(lambda: manager.consecutive_failures == 0, timeout=3)
        assert manager.last_error is None
        net.advance_to_next_epoch()
        await wait_until(lambda: manager.current_epoch == 11)


async def test_404_on_several_tas_refreshes_early(net, signer) -> None:
    async with AsyncMultiplexer() as mux:
        result = await register(mux, net, signer, refresh_options={"interval": 60})
        manager = result.refresh_manager
        newcomer = net.add_participant(models=["Other/Model-1B"])
        net.set_participants([newcomer])  # mid-epoch roster change: MODEL is gone
        failed_on = set()
        while len(failed_on) < 2:  # 404s on two different TAs
            with pytest.raises(GonkaModelNotServed) as info:
                await chat(mux)
            failed_on.add(info.value.transfer_address)
        await wait_until(lambda: "Other/Model-1B" in mux._core.pools)
        assert manager.last_result.reason == "failures"
        with pytest.raises(ModelNotFound):
            await chat(mux)
        reply = await chat(mux, "Other/Model-1B")
        assert reply.choices[0].message.content == f"ok from p{newcomer.index}"


async def test_410_on_several_tas_refreshes_and_keeps_retired_tas_out(signer) -> None:
    # plain 410s (no v0.2.14 marker: the legacy profile) are handled TA by TA
    with FakeGonkaNetwork(n_participants=3, models=[MODEL], host_profile="legacy") as net:
        net.add_account(signer)
        await _plain_410s_refresh(net, signer)


async def _plain_410s_refresh(net, signer) -> None:
    broker = net.start_broker("sk-b")
    async with AsyncMultiplexer() as mux:
        result = await register(mux, net, signer, refresh_options={"interval": 60})
        manager = result.refresh_manager
        await aadd_gonka_broker(mux, broker.url, "sk-b", name="broker")
        net.retire_classic_api()
        for _ in range(2):
            assert (await chat(mux)).choices[0].message.content == "ok from broker"
        await wait_until(
            lambda: manager.last_result is not None and manager.last_result.reason == "failures"
        )
        retired = set(manager.group.retired)
        assert len(retired) >= 2
        assert not {address_of(n) for n in endpoint_names(mux)} & retired  # not put back
        for _ in range(10):  # the remaining TA, if any, is retired at its first request
            assert (await chat(mux)).choices[0].message.content == "ok from broker"
            if not endpoint_names(mux):
                break
        assert endpoint_names(mux) == set()
        outcome = await manager.arefresh_now()  # nothing usable: keep what there is, say why
        assert not outcome.success and "broker" in (outcome.error or "")
        assert endpoint_names(mux) == set()


async def test_sync_multiplexer_refreshes_in_its_background_thread_and_close_stops_it(
    net, signer
) -> None:
    mux = Multiplexer()

    def setup() -> GonkaRefreshManager:
        result = register_gonka_models(
            mux,
            source_url=net.source_url,
            signer=signer,
            min_poll_interval=0.01,
            refresh_options={"interval": 0.05},
            environ={},
        )
        assert result.refresh_manager is not None
        return result.refresh_manager

    manager = await asyncio.to_thread(setup)
    assert manager._loop is mux._portal.loop
    await wait_until(lambda: manager.is_running)
    assert manager._task.get_loop() is mux._portal.loop
    # the main thread makes no call into the mux: the swap happens on the mux's own thread
    net.advance_to_next_epoch()
    await wait_until(lambda: manager.current_epoch == 11)
    reply = await asyncio.to_thread(
        mux.chat.completions.create, model=MODEL, messages=MESSAGES, max_tokens=8
    )
    assert reply.choices[0].message.content.startswith("ok from p")
    threads = {t.name for t in threading.enumerate()}
    assert "gonka-mux" in threads
    await asyncio.to_thread(mux.close)
    assert manager.closed and not manager.is_running
    count = len(polls(net))
    await asyncio.sleep(0.3)
    assert len(polls(net)) == count  # no poll after close


async def test_async_multiplexer_close_stops_refresh(net, signer) -> None:
    async with AsyncMultiplexer() as mux:
        result = await register(mux, net, signer)
        manager = result.refresh_manager
        await wait_until(lambda: manager.polls >= 2)
    assert manager.closed and not manager.is_running
    count = len(polls(net))
    await asyncio.sleep(0.2)
    assert len(polls(net)) == count


async def test_registered_outside_a_loop_starts_with_the_first_request(net, signer) -> None:
    mux = AsyncMultiplexer()

    def setup():  # a thread with no running event loop
        return register_gonka_models(
            mux,
            source_url=net.source_url,
            signer=signer,
            min_poll_interval=0.01,
            refresh_options={"interval": 0.05},
            environ={},
        )

    result = await asyncio.to_thread(setup)
    manager = result.refresh_manager
    assert not manager.is_running
    await chat(mux)
    assert manager.is_running
    assert len(mux._core.extensions) == 0  # the starter took itself out
    await mux.aclose()
    assert manager.closed


async def test_polls_never_exceed_the_per_source_rate(net, signer) -> None:
    async with AsyncMultiplexer() as mux:
        # asked to poll every 10 ms, but one source may be polled at most every 200 ms
        result = await register(
            mux, net, signer, min_poll_interval=0.2, refresh_options={"interval": 0.01}
        )
        manager = result.refresh_manager
        started = time.monotonic()
        net.clear_requests()
        await asyncio.sleep(0.5)
        await manager.arefresh_now()
        await manager.arefresh_now()  # waits for the source's next slot
        elapsed = time.monotonic() - started
    count = len(polls(net))
    assert count >= 3
    # at most one poll per 200 ms window (+1 for one already in flight at the start);
    # without the floor there would be about 50
    assert count <= elapsed / 0.2 + 2, (count, elapsed)


async def test_manager_arguments_are_validated(net, signer) -> None:
    from gonka_mux.gonka.errors import GonkaConfigError

    async with AsyncMultiplexer() as mux:
        result = await register(mux, net, signer, refresh_enabled=False)
        assert result.refresh_manager is None
        group = mux._core.closers[0].__self__  # the registration's endpoint group
        for bad in (
            {"interval": 0},
            {"poc_weight_factor": 0},
            {"poc_weight_factor": 1.5},
            {"failure_threshold": 0},
        ):
            with pytest.raises(GonkaConfigError):
                GonkaRefreshManager(group, [net.source_url], **bad)
        with pytest.raises(GonkaConfigError):
            GonkaRefreshManager(group, [])
        manager = GonkaRefreshManager(group, [net.source_url])
        with pytest.raises(RuntimeError):
            manager.refresh_now()  # not started
        await manager.aclose()
        with pytest.raises(RuntimeError):
            manager.start()
