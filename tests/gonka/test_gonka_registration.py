"""register_gonka_models / add_gonka_broker against the fake Gonka network (real loopback HTTP)."""

from __future__ import annotations

import asyncio
import logging

import pytest
from _gonka_mux_support import (
    MESSAGES,
    address_of,
    assert_verified,
    chat,
    endpoint_names,
    register,
)
from _gonka_support import MODEL, REQUESTER_KEY

from gonka_mux import AsyncMultiplexer, Multiplexer
from gonka_mux.gonka.config import GonkaConfig
from gonka_mux.gonka.errors import (
    GonkaConfigError,
    GonkaDiscoveryError,
    GonkaNoParticipantsError,
    GonkaProofVerificationError,
)
from gonka_mux.gonka.registration import (
    aadd_gonka_broker,
    add_gonka_broker,
    aregister_gonka_models,
    register_gonka_models,
)
from gonka_mux.gonka.signing import RequestSigner
from gonka_mux.testing import FakeBackend
from gonka_mux.testing.fake_gonka import FakeGonkaNetwork

OTHER_KEY = "77" * 32
BROKER_KEY = "sk-broker-" + "9f" * 12


async def test_one_signed_endpoint_per_participant_per_model(signer) -> None:
    with FakeGonkaNetwork(
        n_participants=3,
        participant_models=[[MODEL, "Other/Model-1B"], [MODEL], ["Other/Model-1B"]],
        weights=[100, 250, 400],
    ) as net:
        net.add_account(signer)
        async with AsyncMultiplexer() as mux:
            result = await register(mux, net, signer)
            p0, p1, p2 = net.participants
            assert result.models_registered == ["Other/Model-1B", MODEL]
            assert result.epoch_id == net.current_epoch
            assert result.requester_address == signer.address
            assert {p.address for p in result.participants} == {p0.address, p1.address, p2.address}
            assert result.refresh_manager is not None and result.refresh_manager.is_running
            pools = mux.stats()["models"]
            assert {address_of(n) for n in pools[MODEL]["primary"]} == {p0.address, p1.address}
            assert {address_of(n) for n in pools["Other/Model-1B"]["primary"]} == {
                p0.address,
                p2.address,
            }
            by_address = {address_of(ep.name): ep for ep in result.endpoints if MODEL in ep.models}
            assert by_address[p0.address].weight == 100
            assert by_address[p1.address].weight == 250
            assert {ep.kind for ep in result.endpoints} == {"gonka"}
            # Both endpoints of p0 share one client (one per participant).
            p0_clients = {id(ep.client) for ep in result.endpoints if p0.address in ep.name}
            assert len(p0_clients) == 1
            reply = await chat(mux, "Other/Model-1B")
            assert reply.choices[0].message.content in ("ok from p0", "ok from p2")
        assert_verified(net.inference_requests, signer)


async def test_every_request_carries_max_tokens(net, signer) -> None:
    async with AsyncMultiplexer() as mux:
        await register(mux, net, signer, default_max_tokens=77)
        await mux.chat.completions.create(model=MODEL, messages=MESSAGES)
        await mux.chat.completions.create(model=MODEL, messages=MESSAGES, max_tokens=5)
    bodies = [r.json for r in net.inference_requests]
    assert [b["max_tokens"] for b in bodies] == [77, 5]


async def test_default_max_tokens_comes_from_the_config(net, signer) -> None:
    async with AsyncMultiplexer() as mux:
        await register(mux, net, signer)
        await chat(mux)
    assert net.inference_requests[0].json["max_tokens"] == GonkaConfig().default_max_tokens


async def test_model_name_prefix_and_fallback_tier(net, signer) -> None:
    with FakeBackend(models=["gonka:" + MODEL], name="primary") as primary:
        async with AsyncMultiplexer() as mux:
            mux.add_endpoint(primary.url, models=["gonka:" + MODEL], name="primary")
            result = await register(
                mux, net, signer, model_name_prefix="gonka:", register_as_fallback=True
            )
            assert result.models_registered == ["gonka:" + MODEL]
            assert {ep.tier for ep in result.endpoints} == {"fallback"}
            assert (await chat(mux, "gonka:" + MODEL)).choices[0].message.content == (
                "ok from primary"
            )
            primary.set_faults(down=True)
            reply = await chat(mux, "gonka:" + MODEL)
            assert reply.choices[0].message.content.startswith("ok from p")
    # The upstream model sent to the TA is the plain model id.
    assert {r.json["model"] for r in net.inference_requests} == {MODEL}


async def test_models_filter_and_nothing_to_register(net, signer) -> None:
    async with AsyncMultiplexer() as mux:
        with pytest.raises(GonkaNoParticipantsError) as info:
            await register(mux, net, signer, models=["Nobody/Serves-This"])
        assert "Nobody/Serves-This" in str(info.value) and MODEL in str(info.value)
        assert mux.endpoints == []
        result = await register(mux, net, signer, models=[MODEL])
        assert result.models_registered == [MODEL]


async def test_explicit_arguments_beat_the_environment(net, signer, monkeypatch) -> None:
    monkeypatch.setenv("GONKA_PRIVATE_KEY", OTHER_KEY)
    monkeypatch.setenv("GONKA_SOURCE_URL", "http://127.0.0.1:9")  # nothing listens there
    monkeypatch.setenv("GONKA_MAX_TOKENS", "33")
    async with AsyncMultiplexer() as mux:
        result = await aregister_gonka_models(
            mux,
            source_url=net.source_url,
            private_key=REQUESTER_KEY,
            default_max_tokens=44,
            refresh_enabled=False,
        )
        assert result.requester_address == signer.address
        await chat(mux)
    assert net.inference_requests[0].json["max_tokens"] == 44
    assert_verified(net.inference_requests, signer)


async def test_environment_alone_is_enough(net, signer, monkeypatch) -> None:
    monkeypatch.setenv("GONKA_PRIVATE_KEY", REQUESTER_KEY)
    monkeypatch.setenv("GONKA_SOURCE_URL", net.source_url)
    monkeypatch.setenv("GONKA_MAX_TOKENS", "33")
    monkeypatch.setenv("GONKA_REFRESH_ENABLED", "0")
    async with AsyncMultiplexer() as mux:
        result = await aregister_gonka_models(mux)
        assert result.refresh_manager is None
        await chat(mux)
    assert net.inference_requests[0].json["max_tokens"] == 33
    assert_verified(net.inference_requests, signer)


async def test_gonka_endpoints_env_gives_explicit_tas_without_discovery(
    net, signer, monkeypatch
) -> None:
    p0, _, p2 = net.participants
    monkeypatch.setenv("GONKA_PRIVATE_KEY", REQUESTER_KEY)
    monkeypatch.setenv("GONKA_ENDPOINTS", f"{p0.url};{p0.address},{p2.url}/v1;{p2.address}")
    async with AsyncMultiplexer() as mux:
        result = await aregister_gonka_models(mux)
        assert result.refresh_manager is None  # a fixed list: nothing to follow
        assert result.models_registered == [MODEL]  # read from each TA's /v1/models
        assert result.epoch_id == net.current_epoch
        assert {address_of(n) for n in endpoint_names(mux)} == {p0.address, p2.address}
        for _ in range(6):
            await chat(mux)
    assert {r.node for r in net.inference_requests} <= {p0.address, p2.address}
    assert not [r for r in net.requests if r.node == "seed"]  # no discovery
    assert_verified(net.inference_requests, signer)


async def test_config_object_sits_between_arguments_and_environment(
    net, signer, monkeypatch
) -> None:
    p0 = net.participants[0]
    monkeypatch.setenv("GONKA_ENDPOINTS", f"{p0.url};{p0.address}")
    monkeypatch.setenv("GONKA_PRIVATE_KEY", OTHER_KEY)
    config = GonkaConfig(
        source_urls=net.source_url, private_key=REQUESTER_KEY, refresh_enabled=False
    )
    async with AsyncMultiplexer() as mux:
        result = await aregister_gonka_models(mux, config=config)
        # the config's source (discovery) wins over the environment's explicit endpoints
        assert len(result.participants) == 3
        assert result.requester_address == signer.address
        # an explicit argument wins over the config
        mux2 = AsyncMultiplexer()
        result2 = await aregister_gonka_models(
            mux2, config=config, endpoints=[(p0.url, p0.address)], models=[MODEL]
        )
        assert [p.address for p in result2.participants] == [p0.address]
        await mux2.aclose()


async def test_verify_proof_env_turns_proof_checking_on(signer, monkeypatch) -> None:
    with FakeGonkaNetwork(n_participants=2, models=[MODEL], proof_mode="bad_app_hash") as net:
        monkeypatch.setenv("GONKA_VERIFY_PROOF", "1")
        async with AsyncMultiplexer() as mux:
            with pytest.raises(GonkaProofVerificationError):
                await aregister_gonka_models(
                    mux, source_url=net.source_url, private_key=REQUESTER_KEY
                )
            monkeypatch.setenv("GONKA_VERIFY_PROOF", "0")
            result = await aregister_gonka_models(
                mux, source_url=net.source_url, private_key=REQUESTER_KEY, refresh_enabled=False
            )
            assert len(result.participants) == 2


async def test_missing_settings_are_clear_errors_without_secrets(net, monkeypatch) -> None:
    for name in ("GONKA_PRIVATE_KEY", "GONKA_PRIVATE_KEY_FILE", "GONKA_SOURCE_URL"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.delenv("GONKA_ENDPOINTS", raising=False)
    async with AsyncMultiplexer() as mux:
        with pytest.raises(GonkaConfigError) as no_key:
            await aregister_gonka_models(mux, source_url=net.source_url)
        assert "GONKA_PRIVATE_KEY" in str(no_key.value)
        with pytest.raises(GonkaConfigError) as no_source:
            await aregister_gonka_models(mux, private_key=REQUESTER_KEY)
        assert "GONKA_SOURCE_URL" in str(no_source.value)
        assert REQUESTER_KEY not in str(no_source.value)
        with pytest.raises(GonkaDiscoveryError):
            await aregister_gonka_models(
                mux, source_url="http://127.0.0.1:9", private_key=REQUESTER_KEY, timeout=2
            )
        assert mux.endpoints == []


async def test_a_second_registration_needs_its_own_group(net, signer) -> None:
    other = RequestSigner(OTHER_KEY)
    net.add_account(other)
    async with AsyncMultiplexer() as mux:
        await register(mux, net, signer)
        with pytest.raises(GonkaConfigError) as info:
            await register(mux, net, other)
        assert info.value.field == "group"
        second = await register(mux, net, other, group="gonka-b")
        assert len(endpoint_names(mux, "gonka-b")) == 3
        assert second.requester_address == other.address
        for _ in range(8):
            await chat(mux)
    requesters = {r.requester for r in net.inference_requests}
    assert requesters <= {signer.address, other.address}


async def test_nothing_secret_in_reprs_or_logs(net, signer, caplog) -> None:
    caplog.set_level(logging.DEBUG, logger="gonka_mux")
    broker = net.start_broker(BROKER_KEY)
    async with AsyncMultiplexer() as mux:
        result = await register(mux, net, signer)
        endpoint = await aadd_gonka_broker(mux, broker.url, BROKER_KEY)
        await chat(mux)
        shown = " ".join(
            [repr(result), repr(result.refresh_manager), repr(endpoint), repr(mux.endpoints)]
            + [repr(ep.error_policy) for ep in mux.endpoints]
            + [str(mux.stats())]
        )
    everything = shown + caplog.text
    assert REQUESTER_KEY not in everything
    assert BROKER_KEY not in everything


# --------------------------------------------------------------------------- brokers


async def test_broker_models_are_read_with_the_bearer_key(net, signer) -> None:
    broker = net.start_broker(BROKER_KEY, models=[MODEL, "broker/only"])
    async with AsyncMultiplexer() as mux:
        endpoint = await aadd_gonka_broker(mux, broker.url, BROKER_KEY, weight=2)
        assert endpoint.kind == "gonka-broker" and endpoint.group == "gonka-broker"
        assert endpoint.models == {MODEL: MODEL, "broker/only": "broker/only"}
        assert endpoint.weight == 2
        reply = await chat(mux, "broker/only")
        assert reply.choices[0].message.content == "ok from broker"
    listed, sent = broker.requests[0], broker.inference_requests[-1]
    assert listed.path == "/v1/models"
    assert listed.headers["authorization"] == f"Bearer {BROKER_KEY}"
    assert sent.headers["authorization"] == f"Bearer {BROKER_KEY}"
    assert sent.json["max_tokens"] == 4096  # brokers get max_tokens too
    assert "x-requester-address" not in sent.headers


async def test_broker_with_a_wrong_key_says_so_without_the_key(net) -> None:
    broker = net.start_broker(BROKER_KEY)
    async with AsyncMultiplexer() as mux:
        with pytest.raises(GonkaConfigError) as info:
            await aadd_gonka_broker(mux, broker.url, "sk-wrong-key-123")
        assert info.value.field == "api_key"
        assert "sk-wrong-key-123" not in str(info.value)
        # Given models, nothing is listed; a renaming map works too.
        endpoint = await aadd_gonka_broker(
            mux, broker.url, BROKER_KEY, models={"qwen-small": MODEL}
        )
        assert endpoint.models == {"qwen-small": MODEL}
        assert (await chat(mux, "qwen-small")).choices[0].message.content == "ok from broker"


async def test_signed_participants_broker_and_a_plain_backend_share_one_pool(net, signer) -> None:
    broker = net.start_broker(BROKER_KEY)
    with FakeBackend(models=[MODEL], name="plain") as plain:
        async with AsyncMultiplexer(strategy="weighted_random", seed=3) as mux:
            await register(mux, net, signer, normalize_weights=True)
            await aadd_gonka_broker(mux, broker.url, BROKER_KEY, name="broker")
            mux.add_endpoint(plain.url, models=[MODEL], name="plain")
            assert len(mux.stats()["models"][MODEL]["primary"]) == 5
            replies = await asyncio.gather(*(chat(mux) for _ in range(60)))
        served = {r.choices[0].message.content for r in replies}
        assert {"ok from broker", "ok from plain"} <= served
        assert any(s.startswith("ok from p") for s in served)
        assert all(
            "x-requester-address" not in r.headers and "x-timestamp" not in r.headers
            for r in plain.requests
        )
    assert all(r.headers["authorization"] == f"Bearer {BROKER_KEY}" for r in broker.requests)
    assert_verified(net.inference_requests, signer)


def test_sync_multiplexer_registration_and_broker(net, signer) -> None:
    broker = net.start_broker(BROKER_KEY)
    with Multiplexer() as mux:
        result = register_gonka_models(
            mux, source_url=net.source_url, signer=signer, refresh_enabled=False, environ={}
        )
        assert result.refresh_manager is None
        endpoint = add_gonka_broker(mux, broker.url, BROKER_KEY, name="broker")
        assert endpoint.models == {MODEL: MODEL}
        replies = [
            mux.chat.completions.create(model=MODEL, messages=MESSAGES, route_to=name)
            for name in [*sorted(endpoint_names(mux)), "broker"]
        ]
        assert [r.choices[0].message.content for r in replies][-1] == "ok from broker"
        chunks = list(
            mux.chat.completions.create(model=MODEL, messages=MESSAGES, stream=True, max_tokens=8)
        )
        assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert_verified(net.inference_requests, signer)


async def test_epoch_status_reports_the_watcher(net, signer) -> None:
    async with AsyncMultiplexer() as mux:
        assert mux.epoch_status() is None
        result = await register(mux, net, signer)
        status = mux.epoch_status()
        assert status is not None and status[0]["epoch"] == result.epoch_id
        assert status[0]["group"] == "gonka" and status[0]["phase"]
