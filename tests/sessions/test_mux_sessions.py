"""Sessions through the Multiplexer: history prepended, turns stored, trimming, concurrency."""

from __future__ import annotations

import asyncio

import pytest

from gonka_mux import AsyncMultiplexer, Multiplexer
from gonka_mux.testing import FakeBackend, Reply, ToolCall

SYSTEM = {"role": "system", "content": "You are terse."}


def user(text: str) -> dict:
    return {"role": "user", "content": text}


@pytest.fixture
def backend():
    with FakeBackend(models=["m"]) as fb:
        yield fb


def roles(req) -> list[tuple[str, str | None]]:
    return [(m["role"], m.get("content")) for m in req.json["messages"]]


async def test_history_is_prepended_and_turns_stored(backend):
    mux = AsyncMultiplexer()
    mux.add_endpoint(backend.url, models=["m"], name="fb")
    sessions = mux.enable_sessions("memory")
    backend.set_replies([Reply("first answer"), Reply("second answer")])
    await mux.chat.completions.create(model="m", messages=[SYSTEM, user("one")], session_id="s1")
    await mux.chat.completions.create(model="m", messages=[user("two")], session_id="s1")
    assert roles(backend.requests[-1]) == [
        ("system", "You are terse."),
        ("user", "one"),
        ("assistant", "first answer"),
        ("user", "two"),
    ]
    stored = await sessions.get("s1")
    assert [(m["role"], m.get("content")) for m in stored][-2:] == [
        ("user", "two"),
        ("assistant", "second answer"),
    ]
    assert "s1" in await sessions.list()
    exported = await sessions.export("s1")
    assert await sessions.delete("s1")
    await sessions.import_(exported)
    assert len(await sessions.get("s1")) == len(stored)
    await mux.aclose()


async def test_tool_calls_and_results_are_stored_and_streams_append_on_completion(backend):
    mux = AsyncMultiplexer()
    mux.add_endpoint(backend.url, models=["m"], name="fb")
    sessions = mux.enable_sessions("memory")
    backend.set_replies(
        [
            Reply(tool_calls=[ToolCall("get_weather", {"city": "Oslo"}, id="call_1")]),
            Reply("It is sunny in Oslo."),
        ]
    )
    first = await mux.chat.completions.create(
        model="m", messages=[user("weather in Oslo?")], session_id="t", stream=True
    )
    async for _ in first:
        pass
    stored = await sessions.get("t")
    assert stored[-1]["tool_calls"][0]["function"]["name"] == "get_weather"
    tool_result = {"role": "tool", "tool_call_id": "call_1", "content": "sunny"}
    r = await mux.chat.completions.create(model="m", messages=[tool_result], session_id="t")
    assert r.choices[0].message.content == "It is sunny in Oslo."
    sent = backend.requests[-1].json["messages"]
    assert [m["role"] for m in sent] == ["user", "assistant", "tool"]
    stored = await sessions.get("t")
    assert [m["role"] for m in stored] == ["user", "assistant", "tool", "assistant"]
    await mux.aclose()


async def test_history_trimmed_to_context_window_but_store_keeps_everything(backend):
    mux = AsyncMultiplexer()
    mux.add_endpoint(backend.url, models=["m"], name="fb", context_window=300)
    sessions = mux.enable_sessions("memory")
    for i in range(12):
        await mux.chat.completions.create(
            model="m",
            messages=[SYSTEM, user(f"turn {i} " + "x" * 120)],
            session_id="long",
            max_tokens=50,
        )
    sent = backend.requests[-1].json["messages"]
    assert sent[0] == SYSTEM
    assert sent[-1]["content"].startswith("turn 11")
    assert len(sent) < 1 + 2 * 12
    stored = await sessions.get("long")
    assert len([m for m in stored if m["role"] == "user"]) == 12
    await mux.aclose()


async def test_concurrent_turns_on_one_session_lose_nothing(backend):
    mux = AsyncMultiplexer()
    mux.add_endpoint(backend.url, models=["m"], name="fb")
    sessions = mux.enable_sessions("memory")
    await asyncio.gather(
        *(
            mux.chat.completions.create(model="m", messages=[user(f"q{i}")], session_id="c")
            for i in range(10)
        )
    )
    stored = await sessions.get("c")
    assert sorted(m["content"] for m in stored if m["role"] == "user") == sorted(
        f"q{i}" for i in range(10)
    )
    assert len([m for m in stored if m["role"] == "assistant"]) == 10
    await mux.aclose()


async def test_affinity_mode_prepends_nothing(backend):
    mux = AsyncMultiplexer()
    mux.add_endpoint(backend.url, models=["m"], name="fb")
    sessions = mux.enable_sessions("memory")
    for text in ("a", "b"):
        await mux.chat.completions.create(
            model="m",
            messages=[user(text)],
            session_id="aff",
            mux_metadata={"session_mode": "affinity"},
        )
    assert roles(backend.requests[-1]) == [("user", "b")]
    assert await sessions.get("aff") is None
    await mux.aclose()


def test_sync_face_and_disk_store_from_config(backend, tmp_path):
    cfg = {
        "endpoints": [{"base_url": backend.url, "models": ["m"]}],
        "sessions": {"store": "disk", "path": str(tmp_path / "sessions"), "ttl": 600},
    }
    with Multiplexer.from_config(cfg) as mux:
        mux.chat.completions.create(model="m", messages=[user("hello")], session_id="d1")
        mux.chat.completions.create(model="m", messages=[user("again")], session_id="d1")
        assert roles(backend.requests[-1])[0] == ("user", "hello")
    # a new process (a new Multiplexer) sees the committed history on disk
    with Multiplexer.from_config(cfg) as mux2:
        history = mux2.run(mux2.sessions.get("d1"))
        assert [m["content"] for m in history if m["role"] == "user"] == ["hello", "again"]
