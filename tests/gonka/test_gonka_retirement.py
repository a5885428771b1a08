"""The classic signed path, retired network-wide (v0.2.14): recognised once, for the whole group.

Every v0.2.14 host answers classic inference with 410 ``{"error": "deprecated", ...}`` and a
``Deprecation`` header. The first such answer retires the whole signed group through
``mux.retire_group``; the request that saw it moves on to a broker within the same call, and
the user gets one warning saying what to configure. Discovery of a retired network registers
nothing signed.
"""

from __future__ import annotations

import asyncio
import logging

import pytest
from _gonka_mux_support import chat, endpoint_names, register, wait_until
from _gonka_support import MODEL

from gonka_mux import AsyncMultiplexer, ModelNotFound, Multiplexer
from gonka_mux.gonka.discovery import aprobe_classic_api, discover, probe_classic_api
from gonka_mux.gonka.registration import aadd_gonka_broker, add_gonka_broker, register_gonka_models
from gonka_mux.testing.fake_gonka import FakeGonkaNetwork

BROKER_KEY = "sk-retired-test"


def warnings_of(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]


@pytest.fixture
def big_net(signer):
    with FakeGonkaNetwork(n_participants=40, models=[MODEL]) as network:
        network.add_account(signer)
        yield network


async def test_40_retired_participants_and_a_broker_serve_20_of_20(big_net, signer, caplog) -> None:
    net = big_net
    broker = net.start_broker(BROKER_KEY)
    async with AsyncMultiplexer() as mux:
        result = await register(mux, net, signer, refresh_options={"interval": 60})
        assert len(result.endpoints) == 40 and not result.classic_api_retired
        await aadd_gonka_broker(mux, broker.url, BROKER_KEY, name="broker")
        net.retire_classic_api()  # v0.2.14 reaches every host
        replies = [await chat(mux) for _ in range(20)]
        assert [r.choices[0].message.content for r in replies] == ["ok from broker"] * 20
        assert endpoint_names(mux) == set()
        assert result.refresh_manager is not None
        await wait_until(lambda: not result.refresh_manager.is_running)  # nothing to follow
    calls = [r.node for r in net.inference_requests]
    assert len(calls) == len(set(calls)) == 1  # participants: at most once in all (here: once)
    assert broker.request_count >= 20
    warnings = warnings_of(caplog)
    assert len(warnings) == 1, warnings
    assert "add_gonka_broker" in warnings[0] and "devshard" in warnings[0]
    assert "retired" in warnings[0] and "410" in warnings[0]


async def test_concurrent_requests_at_the_moment_of_retirement_all_move_on(
    big_net, signer, caplog
) -> None:
    net = big_net
    broker = net.start_broker(BROKER_KEY)
    async with AsyncMultiplexer() as mux:
        await register(mux, net, signer, refresh_enabled=False)
        await aadd_gonka_broker(mux, broker.url, BROKER_KEY, name="broker")
        net.retire_classic_api()
        replies = await asyncio.gather(*(chat(mux) for _ in range(20)))
        assert all(r.choices[0].message.content == "ok from broker" for r in replies)
        assert endpoint_names(mux) == set()
    # requests already on their way to other hosts got a 410 too, then the broker
    assert len(net.inference_requests) <= 20
    assert len(warnings_of(caplog)) == 1  # still one warning


async def test_discovery_of_a_retired_network_registers_nothing_signed(net, signer, caplog) -> None:
    net.retire_classic_api()
    found = discover(net.source_url)
    assert found.classic_api_retired and found.classic_api is not None
    assert found.classic_api.status == 410
    assert "classic inference is deprecated" in found.classic_api.message
    broker = net.start_broker(BROKER_KEY)
    async with AsyncMultiplexer() as mux:
        result = await register(mux, net, signer)
        assert result.classic_api_retired and result.endpoints == []
        assert result.models_registered == [] and result.refresh_manager is None
        assert "add_gonka_broker" in result.notice
        with pytest.raises(ModelNotFound):
            await chat(mux)
        await aadd_gonka_broker(mux, broker.url, BROKER_KEY)
        assert (await chat(mux)).choices[0].message.content == "ok from broker"
    assert net.inference_requests == []  # no signed request was ever sent
    warnings = warnings_of(caplog)
    assert len(warnings) == 1 and "registered no signed endpoint" in warnings[0]


def test_explicit_endpoints_on_a_retired_network_and_the_sync_face(net, signer) -> None:
    net.retire_classic_api()
    endpoints = ",".join(f"{p.url};{p.address}" for p in net.participants)
    broker = net.start_broker(BROKER_KEY)
    with Multiplexer() as mux:
        result = register_gonka_models(mux, endpoints=endpoints, signer=signer, environ={})
        assert result.classic_api_retired and result.endpoints == []
        add_gonka_broker(mux, broker.url, BROKER_KEY)
        reply = mux.chat.completions.create(
            model=MODEL, messages=[{"role": "user", "content": "hi"}]
        )
        assert reply.choices[0].message.content == "ok from broker"
    assert net.inference_requests == []


async def test_the_refresh_notices_a_retirement_without_traffic(net, signer, caplog) -> None:
    async with AsyncMultiplexer() as mux:
        result = await register(mux, net, signer)
        manager = result.refresh_manager
        assert manager is not None and endpoint_names(mux)
        net.retire_classic_api()
        outcome = await manager.arefresh_now()
        assert not outcome.success and "retired" in (outcome.error or "")
        assert endpoint_names(mux) == set()
        assert manager.group.network_retired
        net.advance_to_next_epoch()  # a new epoch brings nothing signed back
        await manager.apoll()
        assert endpoint_names(mux) == set()
    assert net.inference_requests == []
    assert len(warnings_of(caplog)) == 1


async def test_probe_says_nothing_about_hosts_that_still_serve(net) -> None:
    probe = probe_classic_api(net.participants[0].url)
    assert probe is not None and not probe.retired and probe.status == 400
    assert await aprobe_classic_api(["http://127.0.0.1:9", net.source_url], timeout=2)
    net.retire_classic_api()
    retired = await aprobe_classic_api(net.source_url)
    assert retired is not None and retired.retired
