"""Brokers and devshard gateways as they behave, against the fake broker (one test per behaviour).

Per-model caps in /v1/models, the strict field allowlist, 308 moves, 409 devshard unavailable,
503/504 model unavailable, 429 with Retry-After, /v1/status load, /v1/requests/{id} accounting
and stale catalogs.
"""

from __future__ import annotations

import asyncio

import openai
import pytest
from _gonka_mux_support import MESSAGES, chat, wait_until
from _gonka_support import MODEL

from gonka_mux import AsyncMultiplexer, ModelNotFound, Multiplexer
from gonka_mux.errors import AllEndpointsRateLimited
from gonka_mux.gonka.broker import (
    BrokerRequestRefused,
    broker_of,
    parse_broker_models,
    parse_broker_status,
)
from gonka_mux.gonka.errors import GonkaConfigError, GonkaError, GonkaPayloadError
from gonka_mux.gonka.registration import aadd_gonka_broker, add_gonka_broker
from gonka_mux.testing import FakeBackend
from gonka_mux.testing.fake_broker import FakeBroker

KEY = "sk-broker-behaviour"
OTHER = "Other/Model-1B"
QUIET = {"status_interval": None, "catalog_interval": None}  # polls driven by the tests


@pytest.fixture
def broker():
    with FakeBroker(KEY, models=[MODEL, OTHER], caps={MODEL: 2048}) as fake:
        yield fake


@pytest.fixture
def spare():
    with FakeBroker(KEY, models=[MODEL, OTHER], name="spare") as fake:
        yield fake


async def add(mux, fake: FakeBroker, **kwargs):
    options = {**QUIET, "name": fake.name, **kwargs}
    return await aadd_gonka_broker(mux, fake.url, KEY, **options)


def sent(fake: FakeBroker):
    return [r.json for r in fake.inference_requests]


# --------------------------------------------------------------------------- token caps


async def test_caps_from_the_catalog_clamp_before_sending(broker) -> None:
    async with AsyncMultiplexer() as mux:
        endpoint = await add(mux, broker)
        state = broker_of(endpoint).state
        assert state.caps == {MODEL: 2048, OTHER: 4096}  # the default cap where none is listed
        await chat(mux, max_tokens=10_000)
        await chat(mux, max_completion_tokens=3000)
        await chat(mux)  # none asked: default_max_tokens (4096), clamped to the cap
        await chat(mux, OTHER, max_tokens=4000)
    bodies = sent(broker)
    assert [b.get("max_tokens") for b in bodies] == [2048, None, 2048, 4000]
    assert bodies[1]["max_completion_tokens"] == 2048
    assert {r.status for r in broker.inference_requests} == {200}
    assert state.clamped == 2


async def test_raise_refuses_before_sending_and_fails_over(broker, spare) -> None:
    async with AsyncMultiplexer() as mux:
        await add(mux, broker, on_token_cap="raise")
        with pytest.raises(BrokerRequestRefused) as info:
            await chat(mux, max_tokens=3000)
        assert isinstance(info.value, openai.BadRequestError)
        assert "2048" in info.value.message and info.value.code == "max_tokens_above_cap"
        assert broker.inference_requests == []  # never sent
        await add(mux, spare)  # a broker with a larger cap: the request moves on
        reply = await chat(mux, max_tokens=3000)
        assert reply.choices[0].message.content == "ok from spare"
    assert broker.inference_requests == []


async def test_a_cap_learnt_from_the_brokers_own_400_is_resent_once(broker) -> None:
    async with AsyncMultiplexer() as mux:
        # explicit models: no catalog read, so the cap is unknown (no default cap either)
        endpoint = await add(mux, broker, models=[MODEL], default_token_cap=None)
        assert (await chat(mux, max_tokens=3000)).choices[0].message.content == "ok from broker"
        assert broker_of(endpoint).state.caps[MODEL] == 2048
    assert [r.status for r in broker.inference_requests] == [400, 200]
    assert sent(broker)[1]["max_tokens"] == 2048


# --------------------------------------------------------------------------- fields


async def test_fields_outside_the_allowlist_are_dropped(broker) -> None:
    async with AsyncMultiplexer() as mux:
        endpoint = await add(mux, broker)
        await chat(mux, extra_body={"tags": ["a"], "guided_json": {}}, temperature=0.5)
        assert broker_of(endpoint).state.dropped == {"tags": 1, "guided_json": 1}
    body = sent(broker)[0]
    assert "tags" not in body and "guided_json" not in body and body["temperature"] == 0.5


async def test_fields_can_be_refused_instead(broker) -> None:
    async with AsyncMultiplexer() as mux:
        await add(mux, broker, unknown_fields="refuse")
        with pytest.raises(BrokerRequestRefused) as info:
            await chat(mux, extra_body={"tags": ["a"]})
        assert "tags" in info.value.message and info.value.code == "field_not_accepted"
    assert broker.inference_requests == []


async def test_a_field_the_broker_refuses_is_learnt_and_dropped(broker) -> None:
    async with AsyncMultiplexer() as mux:
        endpoint = await add(mux, broker, allowed_fields=None)  # send everything
        await chat(mux, extra_body={"tags": ["a"]})
        await chat(mux, extra_body={"tags": ["b"]})
        assert broker_of(endpoint).state.denied == {"tags"}
    assert [r.status for r in broker.inference_requests] == [400, 200, 200]
    assert "tags" not in sent(broker)[2]


# --------------------------------------------------------------------------- moves


async def test_a_308_move_is_followed_and_remembered(broker, spare) -> None:
    async with AsyncMultiplexer() as mux:
        endpoint = await add(mux, broker)
        broker.move_to(spare)
        assert (await chat(mux)).choices[0].message.content == "ok from spare"
        assert endpoint.base_url.rstrip("/") == spare.url
        assert broker_of(endpoint).state.moves == [spare.url]
        for _ in range(3):
            assert (await chat(mux)).choices[0].message.content == "ok from spare"
    assert [r.status for r in broker.inference_requests] == [308]  # asked once, never again
    assert len(spare.inference_requests) == 4


# --------------------------------------------------------------------------- transient states


@pytest.mark.parametrize(
    ("make_it_fail", "status"),
    [
        (lambda b: b.set_devshard_available(False), 409),
        (lambda b: b.set_model_unavailable(MODEL, 503), 503),
        (lambda b: b.set_model_unavailable(MODEL, 504), 504),
    ],
)
async def test_409_503_504_are_the_endpoints_transient_state(
    broker, spare, make_it_fail, status
) -> None:
    async with AsyncMultiplexer(hedging=None) as mux:
        first = await add(mux, broker)
        await add(mux, spare)
        make_it_fail(broker)
        replies = [await chat(mux) for _ in range(6)]
        assert {r.choices[0].message.content for r in replies} == {"ok from spare"}
        snapshot = mux.stats()["endpoints"][first.name]
        assert sum(snapshot["failures"].values()) >= 1
        assert snapshot["state"] != "quarantined" and not snapshot["removed"]
        assert not first.withdrawn  # not taken for a missing model
    assert {r.status for r in broker.inference_requests} == {status}


async def test_429_from_the_limiter_honours_retry_after(broker, spare) -> None:
    broker.set_rate_limit(0, window=30)
    async with AsyncMultiplexer(hedging=None) as mux:
        limited = await add(mux, broker)
        await add(mux, spare)
        for _ in range(30):  # until the router tries the limited broker once
            assert (await chat(mux)).choices[0].message.content == "ok from spare"
            if broker.inference_requests:
                break
        cooldown = mux.stats()["endpoints"][limited.name]["cooldown_remaining_s"]
        assert 20 < cooldown <= 30  # the broker's Retry-After, not a guess
        for _ in range(5):
            assert (await chat(mux)).choices[0].message.content == "ok from spare"
    assert [r.status for r in broker.inference_requests] == [429]  # not asked again meanwhile


async def test_only_a_limited_broker_left_says_when_to_retry(broker) -> None:
    broker.set_rate_limit(0, window=30)
    async with AsyncMultiplexer() as mux:
        await add(mux, broker)
        with pytest.raises(AllEndpointsRateLimited) as info:
            await chat(mux)
        retry_after = info.value.response.headers["retry-after"]
        assert 20 <= int(retry_after) <= 30


# --------------------------------------------------------------------------- status


async def test_status_capacity_becomes_load_and_not_found_marks_down(broker, spare) -> None:
    async with AsyncMultiplexer(hedging=None) as mux:
        endpoint = await add(mux, broker)
        await add(mux, spare)
        gonka_broker = broker_of(endpoint)
        broker.set_background_load(8)  # half of its 16 slots busy with other users
        status = await gonka_broker.apoll_status()
        assert status is not None and status.max_concurrent == 16
        assert endpoint.external_load == pytest.approx(0.5)
        broker.set_rate_limit(0, window=30)
        await gonka_broker.apoll_status()
        assert endpoint.external_load == pytest.approx(10.5)  # the limiter is exhausted
        broker.set_rate_limit(None)
        broker.set_phase("not_found")  # the gateway has no devshard runtime
        await gonka_broker.apoll_status()
        assert endpoint.lifecycle == "down"
        for _ in range(3):
            assert (await chat(mux)).choices[0].message.content == "ok from spare"
        broker.set_phase("active")
        await gonka_broker.apoll_status()
        assert endpoint.lifecycle == "active"
        assert (await chat(mux, route_to=broker.name)).choices[0].message.content


async def test_status_is_polled_in_the_background_where_offered(broker) -> None:
    async with AsyncMultiplexer() as mux:
        broker.set_background_load(4)
        endpoint = await add(mux, broker, status_interval=0.02)
        await chat(mux)  # the polls start with the Multiplexer
        gonka_broker = broker_of(endpoint)
        await wait_until(lambda: gonka_broker.status_polls >= 2)
        assert endpoint.external_load == pytest.approx(0.25)
    with FakeBackend(models=[MODEL], api_key=KEY, name="plain") as plain:
        async with AsyncMultiplexer() as mux:  # an OpenAI server without /v1/status
            endpoint = await aadd_gonka_broker(mux, plain.url, KEY, status_interval=0.02)
            await chat(mux)
            gonka_broker = broker_of(endpoint)
            await wait_until(lambda: not gonka_broker.status_offered)
            polls = gonka_broker.status_polls
            await asyncio.sleep(0.05)
            assert gonka_broker.status_polls == polls  # asked once, not again


# --------------------------------------------------------------------------- accounting


async def test_per_request_accounting(broker) -> None:
    async with AsyncMultiplexer() as mux:
        endpoint = await add(mux, broker)
        reply = await chat(mux)
        record = await broker_of(endpoint).arequest_record(reply.id)
        assert record.id == reply.id and record.model == MODEL
        assert record.prompt_tokens == reply.usage.prompt_tokens
        assert record.completion_tokens == reply.usage.completion_tokens
        assert record.cost is not None and record.cost > 0
        with pytest.raises(GonkaError):
            await broker_of(endpoint).arequest_record("no-such-request")


# --------------------------------------------------------------------------- stale catalogs


async def test_a_model_the_broker_404s_is_dropped_until_the_next_catalog_refresh(
    broker, spare
) -> None:
    broker.set_served([MODEL])  # the catalog still lists OTHER: stale
    async with AsyncMultiplexer() as mux:
        endpoint = await add(mux, broker)
        await add(mux, spare)
        for _ in range(4):
            assert (await chat(mux, OTHER)).choices[0].message.content == "ok from spare"
        assert OTHER in endpoint.withdrawn and OTHER not in endpoint.models
        assert [r.status for r in broker.inference_requests] == [404]  # asked once
        gonka_broker = broker_of(endpoint)
        broker.set_served([MODEL, OTHER])
        assert await gonka_broker.arefresh_catalog()
        assert OTHER in endpoint.models and not endpoint.withdrawn
        await chat(mux, OTHER, route_to=broker.name)
        # the catalog drops a model and lists a new one: the endpoint follows it
        broker.set_catalog([MODEL, "New/Model-3B"])
        broker.set_served([MODEL, "New/Model-3B"])
        assert await gonka_broker.arefresh_catalog()
        assert set(endpoint.models) == {MODEL, "New/Model-3B"}
        assert (await chat(mux, "New/Model-3B")).choices[0].message.content == "ok from broker"


async def test_explicit_models_stay_and_come_back_after_a_refresh(broker) -> None:
    broker.set_served([MODEL])
    async with AsyncMultiplexer() as mux:
        endpoint = await add(mux, broker, models=[MODEL, OTHER])
        with pytest.raises(ModelNotFound):
            await chat(mux, OTHER)
        broker.set_served([MODEL, OTHER])
        assert await broker_of(endpoint).arefresh_catalog()
        assert set(endpoint.models) == {MODEL, OTHER}  # not catalog-managed: the list stays
        assert (await chat(mux, OTHER)).choices[0].message.content == "ok from broker"


# --------------------------------------------------------------------------- faces and parsing


def test_the_sync_face_and_streams(broker) -> None:
    with Multiplexer() as mux:
        endpoint = add_gonka_broker(mux, broker.url, KEY, status_interval=0.02)
        reply = mux.chat.completions.create(model=MODEL, messages=MESSAGES, max_tokens=9999)
        assert reply.choices[0].message.content == "ok from broker"
        chunks = list(
            mux.chat.completions.create(
                model=MODEL, messages=MESSAGES, stream=True, extra_body={"tags": [1]}
            )
        )
        assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
        record = mux.run(broker_of(endpoint).arequest_record(reply.id))
        assert record.model == MODEL
    assert [b.get("max_tokens") for b in sent(broker)] == [2048, 2048]
    assert "tags" not in sent(broker)[1]


async def test_settings_are_validated(broker) -> None:
    async with AsyncMultiplexer() as mux:
        for bad in ({"on_token_cap": "ignore"}, {"unknown_fields": "keep"}):
            with pytest.raises(GonkaConfigError):
                await add(mux, broker, **bad)
        with pytest.raises(GonkaConfigError) as info:
            await aadd_gonka_broker(mux, "ab" * 32, KEY)
        assert "ab" * 32 not in str(info.value) and "PRIVATE KEY" in str(info.value)
        with pytest.raises(GonkaConfigError):
            await add(mux, broker, status_interval=0)


def test_parsing_is_lenient_and_typed() -> None:
    caps = parse_broker_models(
        {"data": [{"id": "a", "max_completion_tokens": "1024"}, {"id": "b"}, {"x": 1}, 5]}
    )
    assert caps == {"a": 1024, "b": 4096}
    assert parse_broker_models({"models": [{"id": "c", "max_tokens": 7}]}, None) == {"c": 7}
    with pytest.raises(GonkaPayloadError):
        parse_broker_models([])
    status = parse_broker_status(
        {"status": "ok", "capacity": {"in_flight": "3", "max_concurrent": 6}}
    )
    assert status.serving and status.load() == pytest.approx(0.5)
    assert parse_broker_status({"phase": "not_found"}).serving is False
    assert parse_broker_status({"capacity": [], "limiter": "x"}).load() == 0
    with pytest.raises(GonkaPayloadError):
        parse_broker_status(None)
