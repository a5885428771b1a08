"""The response cache on both faces, over a real fake backend: what is served from the cache,
what goes upstream (counted at the backend), and what is never stored."""

from __future__ import annotations

import asyncio
import stat

import openai
import pytest
from tests.cache._helpers import MSG, upstream

from gonka_mux import AsyncMultiplexer, InvalidRequestError, Multiplexer
from gonka_mux.cache import DiskCacheStore, ResponseCache, cache_status
from gonka_mux.errors import DeadlineExceeded, StreamInterrupted
from gonka_mux.testing import Faults, Reply, ToolCall


def amux(fb, **cache) -> AsyncMultiplexer:
    mux = AsyncMultiplexer()
    mux.add_endpoint(fb.url, models=["m"], name="up")
    mux.enable_cache(**cache)
    return mux


async def ask(mux, **kwargs):
    params = {"model": "m", "messages": MSG, "temperature": 0, **kwargs}
    return await mux.chat.completions.create(**params)


async def test_repeat_is_served_from_each_store_with_its_usage(backend, store_spec):
    mux = amux(backend, **store_spec)
    first = await ask(mux)
    second = await ask(mux)
    third = await ask(mux, deadline=30, caller="someone-else")  # mux kwargs: same key
    assert upstream(backend) == 1
    assert cache_status(first) == "miss"
    assert cache_status(second) == cache_status(third) == "hit"
    assert second.id == first.id and second.choices[0].message == first.choices[0].message
    assert second.usage == first.usage and second.usage.total_tokens > 0
    assert "_gonka_mux_cache" not in second.model_dump_json()  # the marker is not data
    await ask(mux, max_tokens=7)  # another parameter: another request
    assert upstream(backend) == 2
    assert mux.cache.stats()["hits"] == 2
    await mux.aclose()


async def test_embeddings_and_completions_are_cached(backend, tmp_path):
    mux = amux(backend, path=tmp_path / "c")
    e1 = await mux.embeddings.create(model="m", input=["a", "b"])
    e2 = await mux.embeddings.create(model="m", input=["a", "b"])
    assert cache_status(e2) == "hit" and upstream(backend, "/embeddings") == 1
    assert [d.embedding for d in e2.data] == [d.embedding for d in e1.data]
    assert isinstance(e2.data[0].embedding[0], float)  # decoded like a fresh reply
    c1 = await mux.completions.create(model="m", prompt="once upon", temperature=0)
    c2 = await mux.completions.create(model="m", prompt="once upon", temperature=0)
    assert cache_status(c2) == "hit" and upstream(backend, "/v1/completions") == 1
    assert c2.choices[0].text == c1.choices[0].text
    await mux.aclose()


def test_sync_face_plain_and_streamed(backend, tmp_path):
    backend.set_replies([Reply("sync answer", tool_calls=[ToolCall("lookup", {"q": "x"})])] * 2)
    with Multiplexer() as mux:
        mux.add_endpoint(backend.url, models=["m"])
        cache = mux.enable_cache(path=tmp_path / "c")
        assert isinstance(cache, ResponseCache) and mux.cache is cache
        kw = {"model": "m", "messages": MSG, "seed": 7}
        a = mux.chat.completions.create(**kw)
        b = mux.chat.completions.create(**kw)
        assert cache_status(b) == "hit" and b.choices[0].message == a.choices[0].message
        first = list(mux.chat.completions.create(**kw, stream=True))
        with mux.chat.completions.create(**kw, stream=True) as replay:
            again = list(replay)
            assert cache_status(replay) == "hit"
        assert [c.model_dump(exclude_unset=True) for c in again] == [
            c.model_dump(exclude_unset=True) for c in first
        ]
        assert upstream(backend) == 2  # one plain, one stream
        assert replay.partial.as_dict()["tool_calls"][0]["function"]["name"] == "lookup"


async def test_stream_replays_the_same_chunks_with_tool_calls(backend, store_spec):
    calls = [ToolCall("search", {"query": "gonka"}), ToolCall("fetch", '{"url": "u"}')]
    backend.set_replies([Reply("thinking", tool_calls=calls)])
    mux = amux(backend, **store_spec)

    async def collect(**kwargs):
        stream = await ask(mux, stream=True, **kwargs)
        async with stream:
            chunks = [c async for c in stream]
        return stream, chunks

    s1, live = await collect()
    s2, replayed = await collect()
    assert upstream(backend) == 1
    assert cache_status(s2) == "hit" and cache_status(s1) is None
    assert type(replayed[0]).__name__ == "ChatCompletionChunk"
    assert [c.model_dump(exclude_unset=True) for c in replayed] == [
        c.model_dump(exclude_unset=True) for c in live
    ]
    assert not any(c.usage for c in replayed)  # the caller did not ask for the usage chunk
    tools = s2.partial.as_dict()["tool_calls"]
    assert [t["function"]["name"] for t in tools] == ["search", "fetch"]
    assert tools[1]["function"]["arguments"] == '{"url": "u"}'
    # asking for the usage chunk is another request; its replay keeps the usage chunk
    _, with_usage = await collect(stream_options={"include_usage": True})
    _, with_usage_again = await collect(stream_options={"include_usage": True})
    assert upstream(backend) == 2
    assert with_usage_again[-1].usage == with_usage[-1].usage is not None
    await mux.aclose()


async def test_sampled_requests_are_not_cached_unless_asked(backend):
    mux = amux(backend, store="memory")
    await mux.chat.completions.create(model="m", messages=MSG)
    await mux.chat.completions.create(model="m", messages=MSG, temperature=0.8)
    await mux.chat.completions.create(model="m", messages=MSG, temperature=0.8)
    assert upstream(backend) == 3
    opted = await mux.chat.completions.create(model="m", messages=MSG, cache=True)
    again = await mux.chat.completions.create(model="m", messages=MSG, cache=True)
    assert cache_status(opted) == "miss" and cache_status(again) == "hit"
    assert upstream(backend) == 4
    await mux.aclose()
    everything = amux(backend, store="memory", only_deterministic=False)
    await everything.chat.completions.create(model="m", messages=MSG, temperature=1.2)
    await everything.chat.completions.create(model="m", messages=MSG, temperature=1.2)
    assert upstream(backend) == 5
    await everything.aclose()


async def test_per_call_false_and_refresh(backend):
    backend.set_replies([Reply("first"), Reply("second"), Reply("third")])
    mux = amux(backend, store="memory")
    assert (await ask(mux)).choices[0].message.content == "first"
    bypass = await ask(mux, cache=False)
    assert bypass.choices[0].message.content == "second" and cache_status(bypass) is None
    assert (await ask(mux)).choices[0].message.content == "first"  # bypass stored nothing
    fresh = await ask(mux, cache="refresh")
    assert fresh.choices[0].message.content == "third"
    hit = await ask(mux)
    assert hit.choices[0].message.content == "third" and cache_status(hit) == "hit"
    assert upstream(backend) == 3
    with pytest.raises(InvalidRequestError) as ei:
        await ask(mux, cache="sometimes")
    assert ei.value.param == "cache"
    await mux.aclose()


async def test_errors_are_never_cached(backend):
    backend.set_replies([Reply(status=400, error="bad request"), Reply("fine")])
    mux = amux(backend, store="memory")
    with pytest.raises(openai.BadRequestError):
        await ask(mux)
    ok = await ask(mux)
    assert ok.choices[0].message.content == "fine" and cache_status(ok) == "miss"
    assert cache_status(await ask(mux)) == "hit"
    assert upstream(backend) == 2
    await mux.aclose()


async def test_truncated_stream_is_never_cached(backend):
    backend.set_replies([Reply("a long answer " * 20)] * 3)
    backend.set_faults(rate_truncate=1.0)
    mux = amux(backend, store="memory")
    stream = await ask(mux, stream=True)
    with pytest.raises(StreamInterrupted):
        async for _ in stream:
            pass
    backend.set_faults(Faults())
    # a stream closed by the caller before its end is not complete either
    stream = await ask(mux, stream=True)
    await stream.__anext__()
    await stream.close()
    stream = await ask(mux, stream=True)
    full = [c async for c in stream]
    assert upstream(backend) == 3 and full[-1].choices[0].finish_reason == "stop"
    replay = await ask(mux, stream=True)
    assert [c async for c in replay] and cache_status(replay) == "hit"
    assert upstream(backend) == 3
    await mux.aclose()


async def test_large_replies_and_uncacheable_tools_are_not_stored(backend):
    clock = Reply(tool_calls=[ToolCall("get_time", {})])
    backend.set_replies(
        [Reply("x" * 5000)] * 2 + [clock] * 4 + [Reply(tool_calls=[ToolCall("search", {"q": 1})])]
    )
    mux = amux(backend, store="memory", max_entry_bytes=2000, uncacheable_tools=["get_time"])
    await ask(mux)
    await ask(mux)
    assert upstream(backend) == 2  # over max_entry_bytes: fetched each time
    tools = [{"type": "function", "function": {"name": "get_time", "parameters": {}}}]
    for _ in range(2):
        reply = await ask(mux, tools=tools)
        assert reply.choices[0].message.tool_calls[0].function.name == "get_time"
    for _ in range(2):
        stream = await ask(mux, tools=tools, stream=True)
        assert [c async for c in stream]
    assert upstream(backend) == 6  # a reply calling an uncacheable tool is never stored
    first = await ask(mux, tools=tools, seed=1)
    again = await ask(mux, tools=tools, seed=1)
    assert again.choices[0].message.tool_calls[0].function.name == "search"
    assert cache_status(first) == "miss" and cache_status(again) == "hit"
    assert upstream(backend) == 7
    assert mux.cache.stats()["skipped"] == 6
    await mux.aclose()


async def test_single_flight_sends_one_request_upstream(backend):
    backend.set_faults(latency=0.3)
    mux = amux(backend, store="memory")
    replies = await asyncio.gather(*(ask(mux) for _ in range(8)))
    assert upstream(backend) == 1
    assert len({r.id for r in replies}) == 1
    assert sorted(cache_status(r) for r in replies) == ["hit"] * 7 + ["miss"]
    assert mux.cache.stats()["waited"] == 7
    # streams too: each caller reads its own stream (the waiters get the leader's recording)

    async def read() -> str:
        stream = await ask(mux, stream=True)
        return "".join([c.choices[0].delta.content or "" async for c in stream if c.choices])

    texts = await asyncio.gather(*(read() for _ in range(4)))
    assert upstream(backend) == 2 and len(set(texts)) == 1 and texts[0]
    await mux.aclose()


async def test_single_flight_wait_is_bounded_by_the_deadline(backend):
    backend.set_faults(latency=1.5)
    mux = amux(backend, store="memory")
    leader = asyncio.ensure_future(ask(mux))
    await asyncio.sleep(0.2)
    with pytest.raises(DeadlineExceeded):
        await ask(mux, deadline=0.3)
    assert cache_status(await leader) == "miss"
    assert upstream(backend) == 1  # the follower gave up waiting; it never went upstream
    await mux.aclose()


async def test_failed_leader_releases_its_followers(backend):
    backend.set_replies([Reply(status=400, error="no", delay=0.3), Reply("ok"), Reply("ok")])
    mux = amux(backend, store="memory")
    results = await asyncio.gather(ask(mux), ask(mux), return_exceptions=True)
    assert isinstance(results[0], openai.BadRequestError)
    assert results[1].choices[0].message.content == "ok"
    await mux.aclose()


async def test_disk_directory_is_private(tmp_path):
    store = DiskCacheStore(tmp_path / "fresh" / "cache")
    await store.set("k", b"v", None)
    assert stat.S_IMODE((tmp_path / "fresh" / "cache").stat().st_mode) == 0o700
    assert await store.get("k") == b"v"
    await store.aclose()
    loose = tmp_path / "loose"
    loose.mkdir(mode=0o755)
    loose.chmod(0o755)
    store = DiskCacheStore(loose)
    await store.set("k", b"v", 60)
    assert stat.S_IMODE(loose.stat().st_mode) == 0o700
    await store.aclose()


async def test_sessions_see_a_hit_as_a_turn(backend, tmp_path):
    mux = amux(backend, store="memory")
    sessions = mux.enable_sessions("memory")
    first = await ask(mux, session_id="s1")
    hit = await ask(mux, session_id="s2")  # same body after history (both empty)
    assert cache_status(hit) == "hit" and upstream(backend) == 1
    history = await sessions.get("s2")
    assert [m["role"] for m in history] == ["user", "assistant"]
    assert history[-1]["content"] == first.choices[0].message.content
    await ask(mux, session_id="s2")  # the history makes it another request
    assert upstream(backend) == 2
    await mux.aclose()


async def test_an_abandoned_stream_does_not_hold_its_followers(backend):
    mux = amux(backend, store="memory", single_flight_wait=0.3)
    abandoned = await ask(mux, stream=True)  # leads the flight, then is never read nor closed
    await abandoned.__anext__()
    assert len(mux.cache._flights) == 1
    # a follower waits for it at most single_flight_wait, then goes upstream itself
    stream = await ask(mux, stream=True)
    assert [c async for c in stream] and upstream(backend) == 2
    # past single_flight_wait the abandoned flight no longer holds anyone: a new request
    # leads (and ends) a flight of its own
    await mux.cache.clear()
    fresh = await ask(mux, stream=True)
    assert [c async for c in fresh] and upstream(backend) == 3
    assert not mux.cache._flights
    await abandoned.close()
    await mux.aclose()


@pytest.mark.parametrize(
    "store_spec", ["disk", pytest.param("redis", marks=pytest.mark.redis)], indirect=True
)
async def test_processes_share_the_disk_and_redis_stores(backend, store_spec):
    """A second Multiplexer on the same store (another process of the host, or of the fleet
    with Redis) is served the first one's entries, streams included."""
    one = amux(backend, **store_spec)
    first = await ask(one)
    stream = await one.completions.create(model="m", prompt="go", temperature=0, stream=True)
    live = [c async for c in stream]
    await one.aclose()
    other = amux(backend, **store_spec)
    again = await ask(other)
    stream = await other.completions.create(model="m", prompt="go", temperature=0, stream=True)
    replayed = [c async for c in stream]
    assert cache_status(again) == "hit" and again.id == first.id
    assert cache_status(stream) == "hit" and type(replayed[0]).__name__ == "Completion"
    assert [c.model_dump(exclude_unset=True) for c in replayed] == [
        c.model_dump(exclude_unset=True) for c in live
    ]
    assert upstream(backend) == 2
    assert other.stats()["cache"]["hits"] == 2
    await other.aclose()


async def test_key_follows_the_model_tiering_picked():
    from gonka_mux.testing import FakeBackendSpec, FakeFleet

    tiering = {"tiers": {"cheap": "small-model", "strong": "big-model"}, "default_tier": "cheap"}
    with FakeFleet([FakeBackendSpec(name="small"), FakeBackendSpec(name="big")]) as fleet:
        mux = AsyncMultiplexer()
        mux.add_endpoint(fleet["small"].url, models=["small-model"], name="small")
        mux.add_endpoint(fleet["big"].url, models=["big-model"], name="big")
        mux.enable_tiering(tiering)
        mux.enable_cache("memory")
        short = [{"role": "user", "content": "Is this spam? yes or no"}]
        kw = {"model": "auto", "messages": short, "temperature": 0}
        cheap = await mux.chat.completions.create(**kw)
        assert cheap.choices[0].message.content == "ok from small"
        strong = await mux.chat.completions.create(**kw, tier="strong")
        assert cache_status(strong) == "miss"  # same body, another model: another entry
        assert strong.choices[0].message.content == "ok from big"
        hit = await mux.chat.completions.create(**kw)
        assert cache_status(hit) == "hit" and hit.id == cheap.id
        direct = await mux.chat.completions.create(**{**kw, "model": "small-model"})
        assert cache_status(direct) == "hit"  # the key is the model that was chosen
        assert upstream(fleet["small"]) == upstream(fleet["big"]) == 1
        await mux.aclose()


async def test_a_hit_spends_none_of_the_callers_rate_limit(backend):
    mux = amux(backend, store="memory")
    mux.enable_limits(
        {"tiers": {"free": {"rpm": 2, "burst_requests": 2}}, "keys": {"a": "free"}, "max_wait": 0}
    )
    for _ in range(6):  # one miss, five hits: the limit of 2 a minute is never reached
        await ask(mux, caller="a")
    with pytest.raises(openai.RateLimitError):  # requests that go upstream are still limited
        for i in range(3):
            await ask(mux, caller="a", max_tokens=10 + i)
    assert upstream(backend) == 2
    await mux.aclose()
