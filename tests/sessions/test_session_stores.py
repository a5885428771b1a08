"""The SessionStore contract, run against every backend (memory, disk, Redis)."""

from __future__ import annotations

import asyncio
import time

import pytest
from _session_support import FakeClock, StoreFactory, assistant, user

from gonka_mux.sessions import InvalidSessionData, SessionStore


async def test_satisfies_the_protocol(make_store: StoreFactory) -> None:
    assert isinstance(make_store(), SessionStore)


async def test_append_and_load(make_store: StoreFactory) -> None:
    store = make_store()
    assert await store.load_messages("s1") == []
    assert await store.append_messages("s1", [user("hi"), assistant("hello")]) == 2
    tool_turn = [
        {
            "role": "assistant",
            "content": None,
            "tool_calls": [
                {"id": "c1", "type": "function", "function": {"name": "f", "arguments": "{}"}}
            ],
        },
        {"role": "tool", "tool_call_id": "c1", "content": "42"},
        {"role": "assistant", "content": "ünïcode ✓", "reasoning_content": "thought"},
    ]
    assert await store.append_messages("s1", tool_turn) == 5
    loaded = await store.load_messages("s1")
    assert loaded == [user("hi"), assistant("hello"), *tool_turn]
    loaded[0]["content"] = "mutated"  # callers get copies
    assert (await store.load_messages("s1"))[0]["content"] == "hi"
    assert await store.load_messages("other") == []


async def test_ordered_key_value(make_store: StoreFactory) -> None:
    store = make_store()
    await store.put("s", "b/2", b"two")
    await store.put_many("s", [("a", b"\x00\xffbinary"), ("b/1", b"one"), ("b/10", b"ten")])
    await store.put_many(
        "s", [("c", b"c"), ("bz", b"z"), ("b/é", b"accent"), ("b/\U0001f600", b"e")]
    )
    await store.put("s", "b/2", b"two again")  # replace
    assert await store.get("s", "a") == b"\x00\xffbinary"
    assert await store.get("s", "missing") is None
    assert await store.get("nobody", "a") is None
    everything = await store.scan("s")
    assert [k for k, _ in everything] == sorted(k for k, _ in everything)
    assert await store.scan("s", "b/") == [
        ("b/1", b"one"),
        ("b/10", b"ten"),
        ("b/2", b"two again"),
        ("b/é", b"accent"),
        ("b/\U0001f600", b"e"),
    ]
    assert [k for k, _ in await store.scan("s", "b")] == [
        "b/1", "b/10", "b/2", "b/é", "b/\U0001f600", "bz",
    ]  # fmt: skip
    assert await store.scan("s", "b/1") == [("b/1", b"one"), ("b/10", b"ten")]
    assert await store.scan("s", "zzz") == []
    assert await store.scan("nobody") == []
    assert await store.delete("s", "b/1") is True
    assert await store.delete("s", "b/1") is False
    assert [k for k, _ in await store.scan("s", "b/1")] == ["b/10"]
    # The message log and the keys are separate spaces.
    assert await store.load_messages("s") == []


async def test_sessions_and_deletion(make_store: StoreFactory) -> None:
    store = make_store()
    await store.append_messages("s2", [user("x")])
    await store.put("s1", "k", b"v")
    assert await store.sessions() == ["s1", "s2"]
    assert await store.delete_session("s1") is True
    assert await store.delete_session("s1") is False
    assert await store.get("s1", "k") is None
    assert await store.sessions() == ["s2"]
    assert await store.last_active("s1") is None


async def test_expiry_follows_activity(make_store: StoreFactory, clock: FakeClock) -> None:
    store = make_store(clock)
    await store.append_messages("idle", [user("a")])
    await store.append_messages("busy", [user("b")])
    await store.put("kv-only", "k", b"v")
    assert await store.last_active("idle") == pytest.approx(clock.now)
    clock.advance(50)
    await store.append_messages("busy", [assistant("c")])
    await store.touch("kv-only")
    await store.touch("never-created")  # touching does not create a session
    assert await store.last_active("never-created") is None
    clock.advance(60)
    assert await store.expire(100) == ["idle"]
    assert await store.load_messages("idle") == []
    assert await store.sessions() == ["busy", "kv-only"]
    clock.advance(100)
    assert await store.expire(100) == ["busy", "kv-only"]
    assert await store.sessions() == []


async def test_real_clock_records_activity(make_store: StoreFactory) -> None:
    store = make_store()  # Redis: the server's clock
    before = time.time()
    await store.append_messages("s", [user("x")])
    last = await store.last_active("s")
    assert last is not None and before - 5 <= last <= time.time() + 5
    assert await store.expire(3600) == []


async def test_concurrent_appends_lose_nothing(make_store: StoreFactory) -> None:
    store = make_store()

    async def turn(i: int) -> None:
        await store.append_messages("s", [user(f"q{i}"), assistant(f"a{i}")])

    await asyncio.gather(*(turn(i) for i in range(40)))
    log = await store.load_messages("s")
    assert len(log) == 80
    pairs = [(log[j]["content"], log[j + 1]["content"]) for j in range(0, 80, 2)]
    assert sorted(pairs) == sorted((f"q{i}", f"a{i}") for i in range(40))  # each turn contiguous


async def test_committed_data_survives_reopening(make_persistent_store: StoreFactory) -> None:
    make_store = make_persistent_store
    first = make_store()
    await first.append_messages("s", [user("persisted")])
    await first.put("s", "k", b"v")
    await first.aclose()
    again = make_store()
    assert await again.load_messages("s") == [user("persisted")]
    assert await again.get("s", "k") == b"v"


@pytest.mark.parametrize(
    "call",
    [
        lambda s: s.append_messages("", [user("x")]),
        lambda s: s.append_messages("s", [{"content": "no role"}]),
        lambda s: s.append_messages("s", ["not a dict"]),
        lambda s: s.append_messages("s", [{"role": "user", "content": object()}]),
        lambda s: s.put("s", "", b"v"),
        lambda s: s.put(None, "k", b"v"),
    ],
)
async def test_bad_input_is_rejected_before_writing(make_store: StoreFactory, call) -> None:
    store = make_store()
    with pytest.raises(InvalidSessionData):
        await call(store)
    assert await store.sessions() == []
