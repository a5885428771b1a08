"""Endpoints added by URL share one HTTP client (``gonka_mux._clients``), against real loopback
fake backends: each endpoint keeps its own key and headers, removal and closing are safe."""

from __future__ import annotations

import asyncio
import gc
import logging
import sys
import warnings

import openai
import pytest

from gonka_mux import AsyncMultiplexer, Multiplexer
from gonka_mux._clients import ClientFactory
from gonka_mux.testing import FakeBackendSpec, FakeFleet, Faults

MSG = [{"role": "user", "content": "hello"}]


async def ask(mux: AsyncMultiplexer, name: str) -> str:
    result = await mux.chat.completions.create(model="m", messages=MSG, route_to=name)
    return result.choices[0].message.content


def shared_http(mux: AsyncMultiplexer | Multiplexer) -> object:
    http = mux._clients.http_client
    assert http is not None
    return http


@pytest.fixture
def fleet():
    with FakeFleet(
        [
            FakeBackendSpec(name="a", api_key="key-a"),
            FakeBackendSpec(name="b", api_key="key-b"),
            FakeBackendSpec(name="open"),
        ]
    ) as f:
        yield f


async def test_endpoints_share_one_http_client_of_the_sdk_http_library():
    mux = AsyncMultiplexer()
    eps = [
        mux.add_endpoint(f"http://127.0.0.{1 + i}:9/v1", models=["m"], api_key=f"k{i}")
        for i in range(50)
    ]
    http = shared_http(mux)
    assert all(ep.client._client is http for ep in eps)
    assert all(isinstance(ep.client, openai.AsyncOpenAI) for ep in eps)
    assert {str(ep.client.base_url) for ep in eps} == {
        f"http://127.0.0.{1 + i}:9/v1/" for i in range(50)
    }
    assert all(ep.client.max_retries == 0 for ep in eps)
    # the SDK's own default client class, on the SDK's own HTTP library (httpx2 for openai
    # 3.x, httpx for 2.x): a client of the other library makes every request cost more CPU
    assert isinstance(http, openai.DefaultAsyncHttpxClient)
    library = type(openai.DEFAULT_CONNECTION_LIMITS).__module__.partition(".")[0]
    assert isinstance(http, sys.modules[library].AsyncClient)
    await mux.aclose()


async def test_each_endpoint_sends_its_own_key_and_default_headers(fleet):
    mux = AsyncMultiplexer()
    mux.add_endpoint(
        fleet["a"].url, models=["m"], api_key="key-a", headers={"x-tenant": "A"}, name="a"
    )
    mux.add_endpoint(
        fleet["b"].url, models=["m"], api_key="key-b", headers={"x-tenant": "B"}, name="b"
    )
    mux.add_endpoint(fleet["open"].url, models=["m"], api_key="key-c", name="c")
    for _ in range(3):
        for name in ("a", "b", "c"):
            assert await ask(mux, name)  # a crossed key would be answered 401
    assert [r.headers.get("x-tenant") for r in fleet["a"].requests] == ["A"] * 3
    assert [r.headers.get("x-tenant") for r in fleet["b"].requests] == ["B"] * 3
    assert [r.headers.get("x-tenant") for r in fleet["open"].requests] == [None] * 3
    assert not [r for fb in fleet.backends for r in fb.requests if r.fault == "unauthorized"]
    clients = [ep.client for ep in mux.endpoints]
    assert len({id(c) for c in clients}) == 3
    assert len({id(c._client) for c in clients}) == 1
    await mux.aclose()


async def test_a_wrong_key_does_not_leak_to_another_endpoint_on_the_same_origin(fleet):
    mux = AsyncMultiplexer()
    good = mux.add_endpoint(fleet["a"].url, models=["m"], api_key="key-a", name="good")
    mux.add_endpoint(fleet["a"].url, models=["m"], api_key="wrong", name="bad")
    assert good.client._client is mux.endpoints[1].client._client  # one client, one origin
    assert await ask(mux, "good")
    with pytest.raises(Exception):  # noqa: B017 -- whatever the mux makes of the 401
        await ask(mux, "bad")
    assert await ask(mux, "good")
    faults = [r.fault for r in fleet["a"].requests]
    assert faults == [None, "unauthorized", None]
    await mux.aclose()


async def test_removing_an_endpoint_leaves_the_others_working(fleet):
    mux = AsyncMultiplexer()
    mux.add_endpoint(fleet["open"].url, models=["m"], name="x")
    mux.add_endpoint(fleet["b"].url, models=["m"], api_key="key-b", name="y")
    assert await ask(mux, "x") and await ask(mux, "y")
    http = shared_http(mux)
    removed = mux.remove_endpoint("x")
    # what one did before the HTTP client was shared: close the removed endpoint's client
    await removed.client.close()
    assert not http.is_closed
    assert await ask(mux, "y")
    result = await mux.chat.completions.create(model="m", messages=MSG)
    assert result.choices[0].message.content
    assert fleet["b"].request_count == 3
    assert fleet["open"].request_count == 1
    await mux.aclose()


async def test_aclose_closes_the_shared_client_once_without_resource_warnings(fleet):
    gc.collect()  # other tests' garbage is not this test's business
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        mux = AsyncMultiplexer()
        for i in range(5):  # several endpoints per origin, and several origins
            mux.add_endpoint(fleet["open"].url, models=["m"], name=f"o{i}")
            mux.add_endpoint(fleet["a"].url, models=["m"], api_key="key-a", name=f"a{i}")
        await asyncio.gather(*(ask(mux, ep.name) for ep in mux.endpoints))
        http = shared_http(mux)
        closes: list[int] = []
        original_aclose = http.aclose

        async def counting_aclose() -> None:
            closes.append(1)
            await original_aclose()

        http.aclose = counting_aclose  # type: ignore[method-assign]
        assert len(mux._core.closers) == 1
        await mux.aclose()
        await mux.aclose()
        assert closes == [1]
        assert http.is_closed
        assert mux._clients.http_client is None
        del mux, http, counting_aclose
        gc.collect()
    leaks = [w for w in caught if issubclass(w.category, ResourceWarning)]
    assert not leaks, [str(w.message) for w in leaks]


def test_sync_multiplexer_closes_the_shared_client(fleet):
    gc.collect()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        mux = Multiplexer()
        mux.add_endpoint(fleet["open"].url, models=["m"], name="o")
        mux.add_endpoint(fleet["b"].url, models=["m"], api_key="key-b", name="b")
        for name in ("o", "b"):
            assert mux.chat.completions.create(model="m", messages=MSG, route_to=name)
        http = shared_http(mux)
        mux.close()
        assert http.is_closed
        del mux, http
        gc.collect()
    assert not [w for w in caught if issubclass(w.category, ResourceWarning)]
    unused = Multiplexer()  # never sent a request: closing it opens nothing
    unused.add_endpoint(fleet["open"].url, models=["m"])
    unused.close()


async def test_a_user_supplied_client_is_used_as_given(fleet):
    mux = AsyncMultiplexer()
    mine = openai.AsyncOpenAI(base_url=fleet["a"].url, api_key="key-a", max_retries=0)
    ep = mux.add_endpoint(mine, models=["m"], name="mine")
    assert ep.client is mine
    assert mux._clients.http_client is None  # no URL endpoint yet: nothing shared was built
    mux.add_endpoint(fleet["open"].url, models=["m"], name="url")
    assert mine._client is not shared_http(mux)
    retrying = openai.AsyncOpenAI(base_url=fleet["b"].url, api_key="key-b")
    copy = mux.add_endpoint(retrying, models=["m"], name="retrying").client
    assert copy.max_retries == 0 and copy._client is retrying._client  # still the user's
    for name in ("mine", "url", "retrying"):
        assert await ask(mux, name)
    await mux.aclose()
    await retrying.close()


async def test_a_sync_openai_client_is_wrapped_over_the_shared_client(fleet):
    mux = AsyncMultiplexer()
    sync_client = openai.OpenAI(base_url=fleet["b"].url, api_key="key-b")
    ep = mux.add_model(sync_client, 1, "m")
    assert ep.client._client is shared_http(mux)
    assert await ask(mux, ep.name)
    await mux.aclose()
    sync_client.close()


async def test_no_key_in_reprs_or_logs(fleet, caplog):
    secret = "sk-very-secret-key-123"
    caplog.set_level(logging.DEBUG)
    mux = AsyncMultiplexer()
    ep = mux.add_endpoint(fleet["open"].url, models=["m"], api_key=secret, name="e")
    mux.add_model(openai.OpenAI(base_url=fleet["open"].url, api_key=secret), 1, "m2")
    assert await ask(mux, "e")
    texts = [
        repr(mux),
        repr(ep),
        repr(ep.client),
        repr(mux._clients),
        repr(shared_http(mux)),
        repr(mux.endpoints),
        str(mux.stats()),
        caplog.text,
    ]
    assert not [t for t in texts if secret in t]
    await mux.aclose()


@pytest.mark.parametrize("pools", ["origin", "endpoint"])
async def test_pools_per_origin_or_endpoint_and_unused_pools_are_swept(pools):
    with FakeFleet(
        [FakeBackendSpec(name="fast"), FakeBackendSpec(name="slow", faults=Faults(latency=0.5))]
    ) as fleet:
        closers: list = []
        factory = ClientFactory(closers, pool_limits=(None, 10, 0.05), pools=pools)
        fast = [factory.client(base_url=fleet["fast"].url, api_key=f"k{i}") for i in range(3)]
        slow = factory.client(base_url=fleet["slow"].url, api_key="k")
        assert closers == [factory.aclose]  # registered once, on the first client
        for client in fast:
            await client.chat.completions.create(model="m", messages=MSG)
        router = factory._router
        # three endpoints on one origin: one pool, or one each
        assert router.pools == (1 if pools == "origin" else 3)
        assert fleet["fast"].request_count == 3
        in_flight = asyncio.ensure_future(slow.chat.completions.create(model="m", messages=MSG))
        await asyncio.sleep(0.2)
        assert router.pools == (2 if pools == "origin" else 4)
        # the idle, expired ones go; not the one with a request in flight
        assert await router.sweep() == (1 if pools == "origin" else 3)
        assert router.pools == 1
        assert (await in_flight).choices
        await fast[0].chat.completions.create(model="m", messages=MSG)  # a fresh pool
        assert router.pools == 2
        await factory.aclose()
        await factory.aclose()
        assert factory.http_client is None
        # a factory used again after closing opens (and registers) a new client
        again = factory.client(base_url=fleet["fast"].url, api_key="k")
        assert again._client is factory.http_client and not again._client.is_closed
        assert closers == [factory.aclose, factory.aclose]
        await factory.aclose()


def test_pools_follow_the_http_library_of_the_sdk():
    factory = ClientFactory()
    factory.client(base_url="http://127.0.0.1:9/v1", api_key="k")
    # httpcore2 (openai 3.x) pools by origin; httpcore 1.x (openai 2.x) costs grow with a
    # pool's connections, so each endpoint gets a pool of its own there
    library = type(openai.DEFAULT_CONNECTION_LIMITS).__module__.partition(".")[0]
    assert factory._per_endpoint == (library == "httpx")
    with pytest.raises(ValueError):
        ClientFactory(pools="host")
    asyncio.run(factory.aclose())


async def test_many_endpoints_on_many_origins_work_through_one_client():
    with FakeFleet([FakeBackendSpec(name=f"n{i}") for i in range(3)]) as fleet:
        mux = AsyncMultiplexer()
        for i in range(60):
            mux.add_endpoint(fleet[i % 3].url, models=["m"], api_key=f"k{i}", name=f"e{i}")
        await asyncio.gather(*(ask(mux, f"e{i}") for i in range(60)))
        assert [fb.request_count for fb in fleet.backends] == [20, 20, 20]
        assert mux._clients._router.pools == (60 if mux._clients._per_endpoint else 3)
        assert mux._clients.clients_built == 60
        assert len({id(ep.client._client) for ep in mux.endpoints}) == 1
        await mux.aclose()
