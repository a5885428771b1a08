"""SessionManager: history prepending, system prompt kept once, trimming to the context window,
tool calls, concurrency, TTL, export/import. Flows run on every backend."""

from __future__ import annotations

import asyncio
import json

import pytest
from _session_support import FakeClock, StoreFactory, assistant, user

from gonka_mux.errors import ConfigError
from gonka_mux.sessions import (
    DiskSessionStore,
    InvalidSessionData,
    MemorySessionStore,
    SessionError,
    SessionExists,
    SessionManager,
    SessionNotFound,
    estimate_tokens,
    session_ttl_from_env,
)

SYSTEM = {"role": "system", "content": "You are terse."}


def tool_call(call_id: str, name: str = "lookup", arguments: str = '{"q": 1}') -> dict:
    return {"id": call_id, "type": "function", "function": {"name": name, "arguments": arguments}}


async def turn(
    manager: SessionManager, sid: str, messages: list[dict], reply: dict, model: str = "m"
) -> list[dict]:
    """One request/response round; returns what would have been sent."""
    prepared = await manager.prepare(sid, messages, model)
    await manager.commit(prepared, reply)
    return prepared.messages


async def test_history_is_prepended_and_system_kept_once(make_store: StoreFactory) -> None:
    manager = SessionManager(make_store())
    sent = await turn(manager, "s1", [SYSTEM, user("hi")], assistant("hello"))
    assert sent == [SYSTEM, user("hi")]
    sent = await turn(manager, "s1", [user("how are you?")], assistant("fine"))
    assert sent == [SYSTEM, user("hi"), assistant("hello"), user("how are you?")]
    # The same system prompt sent again is not duplicated.
    sent = await turn(manager, "s1", [SYSTEM, user("bye")], assistant("ciao"))
    assert [m["role"] for m in sent].count("system") == 1
    assert sent[0] == SYSTEM and sent[-1] == user("bye")
    assert await manager.get("s1") == [
        SYSTEM,
        user("hi"),
        assistant("hello"),
        user("how are you?"),
        assistant("fine"),
        user("bye"),
        assistant("ciao"),
    ]


async def test_newest_system_prompt_wins() -> None:
    manager = SessionManager(MemorySessionStore())
    await turn(manager, "s", [SYSTEM, user("a")], assistant("b"))
    pirate = {"role": "system", "content": "Talk like a pirate."}
    sent = await turn(manager, "s", [pirate, user("c")], assistant("arr"))
    assert sent[0] == pirate and [m["role"] for m in sent].count("system") == 1
    sent = await turn(manager, "s", [user("d")], assistant("e"))
    assert sent[0] == pirate  # the stored prompt is now the pirate one
    history = await manager.get("s")
    assert history is not None and history[0] == pirate
    assert [m for m in history if m["role"] == "system"] == [pirate]


async def test_resent_conversation_is_not_stored_twice() -> None:
    manager = SessionManager(MemorySessionStore())
    await turn(manager, "s", [SYSTEM, user("one")], assistant("1"))
    # A client that keeps its own copy sends everything again (with extra reply fields).
    echoed = {"role": "assistant", "content": "1", "refusal": None, "annotations": []}
    sent = await turn(manager, "s", [SYSTEM, user("one"), echoed, user("two")], assistant("2"))
    assert sent == [SYSTEM, user("one"), assistant("1"), user("two")]
    # ...or a sliding window of it.
    sent = await turn(manager, "s", [assistant("2"), user("three")], assistant("3"))
    assert sent[-2:] == [assistant("2"), user("three")]
    assert await manager.get("s") == [
        SYSTEM, user("one"), assistant("1"), user("two"), assistant("2"),
        user("three"), assistant("3"),
    ]  # fmt: skip
    # Repeating the same question is a new turn, not a duplicate.
    await turn(manager, "s", [user("three")], assistant("3 again"))
    history = await manager.get("s")
    assert history is not None and len(history) == 9


async def test_tool_calls_and_results_are_kept(make_store: StoreFactory) -> None:
    manager = SessionManager(make_store())
    calling = {"role": "assistant", "content": None, "tool_calls": [tool_call("c1")]}
    await turn(manager, "s", [user("weather?")], calling)
    result = {"role": "tool", "tool_call_id": "c1", "content": "sunny"}
    sent = await turn(manager, "s", [result], assistant("It is sunny."))
    assert sent == [user("weather?"), calling, result]
    assert await manager.get("s") == [user("weather?"), calling, result, assistant("It is sunny.")]


async def test_openai_message_objects_are_accepted() -> None:
    from openai.types.chat import ChatCompletionMessage

    manager = SessionManager(MemorySessionStore())
    prepared = await manager.prepare("s", [user("2+2?")], "m")
    reply = ChatCompletionMessage.model_validate(
        {
            "role": "assistant",
            "content": None,
            "tool_calls": [tool_call("c9", "calc", '{"x": "2+2"}')],
            "reasoning_content": "need a calculator",
        }
    )
    await manager.commit(prepared, reply)
    stored = (await manager.get("s"))[-1]  # type: ignore[index]
    assert stored["tool_calls"][0]["function"]["arguments"] == '{"x": "2+2"}'
    assert stored["reasoning_content"] == "need a calculator"  # stored faithfully...
    assert "refusal" not in stored
    prepared = await manager.prepare(
        "s", [{"role": "tool", "tool_call_id": "c9", "content": "4"}], "m"
    )
    sent = prepared.messages[1]
    assert "reasoning_content" not in sent  # ...but not sent back (OpenAI rejects the field)
    assert sent["content"] is None and sent["tool_calls"][0]["id"] == "c9"


async def test_history_is_trimmed_to_the_window_but_never_in_the_store() -> None:
    manager = SessionManager(MemorySessionStore(), context_windows={"small": 200, "big": 100_000})
    await turn(manager, "s", [SYSTEM, user("first " * 40)], assistant("x" * 160))
    for i in range(10):
        await turn(manager, "s", [user(f"question {i} " + "pad " * 20)], assistant(f"answer {i}"))
    big = await manager.prepare("s", [user("now?")], "big")
    assert big.dropped == 0 and len(big.messages) == 1 + 22 + 1
    small = await manager.prepare("s", [user("now?")], "small", max_tokens=50)
    assert small.dropped > 0
    assert small.messages[0] == SYSTEM  # the system prompt is always kept
    assert small.messages[-1] == user("now?")  # and the new turn
    assert small.messages[1]["role"] == "user"  # the kept history starts at a user message
    assert small.messages[-2] == assistant("answer 9")  # the newest turns are the ones kept
    assert sum(estimate_tokens(m) for m in small.messages) <= 200 - 50
    assert small.estimated_tokens == sum(estimate_tokens(m) for m in small.messages)
    history = await manager.get("s")
    assert history is not None and len(history) == 23  # nothing stored was truncated


async def test_trimming_never_splits_a_tool_call_from_its_results() -> None:
    manager = SessionManager(MemorySessionStore(), context_windows={"m": 150})
    calls = {"role": "assistant", "content": None, "tool_calls": [tool_call("a"), tool_call("b")]}
    results = [
        {"role": "tool", "tool_call_id": "a", "content": "r" * 120},
        {"role": "tool", "tool_call_id": "b", "content": "s" * 120},
    ]
    await turn(manager, "s", [user("go")], calls)
    prepared = await manager.prepare("s", results, "m", max_tokens=10)
    await manager.commit(prepared, assistant("done"))
    for max_tokens in (10, 60, 90):
        sent = (await manager.prepare("s", [user("next")], "m", max_tokens=max_tokens)).messages
        ids = {m.get("tool_call_id") for m in sent if m["role"] == "tool"}
        calling = [m for m in sent if m.get("tool_calls")]
        assert ids in (set(), {"a", "b"})
        assert bool(calling) == bool(ids)


async def test_tools_and_max_tokens_count_against_the_window() -> None:
    manager = SessionManager(MemorySessionStore(), context_windows={"m": 400})
    for i in range(6):
        await turn(manager, "s", [user(f"q{i} " + "w " * 100)], assistant(f"a{i}"))
    roomy = await manager.prepare("s", [user("q")], "m", max_tokens=10)
    tools = [{"type": "function", "function": {"name": "t", "parameters": {"d": "x" * 400}}}]
    with_tools = await manager.prepare("s", [user("q")], "m", max_tokens=10, tools=tools)
    tight = await manager.prepare("s", [user("q")], "m", max_tokens=300)
    assert roomy.dropped < with_tools.dropped < tight.dropped


async def test_concurrent_turns_on_one_session_lose_nothing(make_store: StoreFactory) -> None:
    manager = SessionManager(make_store())
    await turn(manager, "s", [user("start")], assistant("ok"))
    a = await manager.prepare("s", [user("A?")], "m")
    b = await manager.prepare("s", [user("B?")], "m")
    assert user("A?") not in b.messages  # prepared concurrently: B does not see A
    await manager.commit(b, assistant("B!"))
    await manager.commit(a, assistant("A!"))
    assert await manager.get("s") == [
        user("start"), assistant("ok"), user("B?"), assistant("B!"), user("A?"), assistant("A!"),
    ]  # fmt: skip

    async def one(i: int) -> None:
        await turn(manager, "s", [user(f"q{i}")], assistant(f"r{i}"))

    await asyncio.gather(*(one(i) for i in range(25)))
    history = await manager.get("s")
    assert history is not None and len(history) == 6 + 50
    tail = history[6:]
    pairs = {(tail[j]["content"], tail[j + 1]["content"]) for j in range(0, 50, 2)}
    assert pairs == {(f"q{i}", f"r{i}") for i in range(25)}


async def test_serialized_turns_see_each_other() -> None:
    manager = SessionManager(MemorySessionStore())
    order: list[str] = []

    async def one(name: str) -> list[dict]:
        async with manager.serialized("s"):
            prepared = await manager.prepare("s", [user(f"{name}?")], "m")
            order.append(f"{name} prepared")
            await asyncio.sleep(0.01)  # the model answering: the other turn must wait
            await manager.commit(prepared, assistant(f"{name}!"))
            order.append(f"{name} committed")
            return prepared.messages

    first, second = await asyncio.gather(one("A"), one("B"))
    assert order == ["A prepared", "A committed", "B prepared", "B committed"]
    assert first == [user("A?")]
    assert second == [user("A?"), assistant("A!"), user("B?")]  # B saw A's reply
    async with manager.serialized("other"):  # other sessions do not wait
        assert await manager.get("other") is None


async def test_a_turn_commits_once() -> None:
    manager = SessionManager(MemorySessionStore())
    prepared = await manager.prepare("s", [user("x")], "m")
    await manager.commit(prepared, assistant("y"))
    with pytest.raises(SessionError, match="already committed"):
        await manager.commit(prepared, assistant("y"))


async def test_sessions_expire_after_inactivity(make_store: StoreFactory, clock: FakeClock) -> None:
    manager = SessionManager(make_store(clock), ttl=100, clock=clock)
    await turn(manager, "old", [SYSTEM, user("a")], assistant("b"))
    await turn(manager, "live", [user("c")], assistant("d"))
    clock.advance(60)
    await turn(manager, "live", [user("e")], assistant("f"))
    assert await manager.list() == ["live", "old"]
    clock.advance(60)
    # Enforced on read, before any cleanup pass: the expired session starts over.
    assert await manager.get("old") is None
    prepared = await manager.prepare("old", [user("again")], "m")
    assert prepared.messages == [user("again")] and prepared.history_length == 0
    assert await manager.list() == ["live"]
    with pytest.raises(SessionNotFound):
        await manager.export("old")


async def test_background_cleanup_deletes_idle_sessions(clock: FakeClock) -> None:
    store = MemorySessionStore(clock=clock)
    async with SessionManager(store, ttl=10, cleanup_interval=0.01, clock=clock) as manager:
        await turn(manager, "s", [user("x")], assistant("y"))
        clock.advance(11)
        for _ in range(500):
            if await store.sessions() == []:
                break
            await asyncio.sleep(0.01)
        assert await store.sessions() == []


async def test_ttl_zero_keeps_sessions(clock: FakeClock) -> None:
    manager = SessionManager(MemorySessionStore(clock=clock), ttl=0, clock=clock)
    await turn(manager, "s", [user("x")], assistant("y"))
    clock.advance(10**9)
    assert await manager.get("s") == [user("x"), assistant("y")]
    assert await manager.cleanup() == []


def test_ttl_comes_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    assert session_ttl_from_env({}) == 3600
    assert session_ttl_from_env({"GONKA_SESSION_TTL": "90.5"}) == 90.5
    for bad in ("soon", "-1", "nan"):
        with pytest.raises(ConfigError, match="GONKA_SESSION_TTL"):
            session_ttl_from_env({"GONKA_SESSION_TTL": bad})
    monkeypatch.setenv("GONKA_SESSION_TTL", "42")
    assert SessionManager(MemorySessionStore()).ttl == 42
    with pytest.raises(ConfigError):
        SessionManager(MemorySessionStore(), ttl=-5)
    with pytest.raises(ConfigError, match="context window"):
        SessionManager(MemorySessionStore(), context_windows={"m": 0})


async def test_export_import_round_trip(make_store: StoreFactory) -> None:
    manager = SessionManager(make_store())
    calling = {"role": "assistant", "content": None, "tool_calls": [tool_call("c1")]}
    await turn(manager, "s", [SYSTEM, user("héllo")], calling)
    await turn(
        manager, "s", [{"role": "tool", "tool_call_id": "c1", "content": "1"}], assistant("ok")
    )
    await manager.store.put("s", "checkpoint/1", b"\x00\x01binary")
    document = await manager.export("s")
    assert document["format"] == "gonka_mux.session" and document["version"] == 1
    document = json.loads(json.dumps(document))  # JSON-serializable
    assert await manager.import_(document, session_id="copy") == "copy"
    assert await manager.get("copy") == await manager.get("s")
    assert await manager.store.get("copy", "checkpoint/1") == b"\x00\x01binary"
    with pytest.raises(SessionExists, match="overwrite=True"):
        await manager.import_(document)
    await turn(manager, "s", [user("more")], assistant("stuff"))
    await manager.import_(document, overwrite=True)
    history = await manager.get("s")
    assert history is not None and history[-1] == assistant("ok")  # replaced, not merged
    assert await manager.delete("copy") is True
    assert await manager.get("copy") is None


@pytest.mark.parametrize(
    "document",
    [
        {},
        {"format": "other", "version": 1, "session_id": "s", "messages": []},
        {"format": "gonka_mux.session", "version": 99, "session_id": "s", "messages": []},
        {"format": "gonka_mux.session", "version": 1, "session_id": "", "messages": []},
        {"format": "gonka_mux.session", "version": 1, "session_id": "s", "messages": "x"},
        {"format": "gonka_mux.session", "version": 1, "session_id": "s", "messages": [{}]},
        {
            "format": "gonka_mux.session",
            "version": 1,
            "session_id": "s",
            "messages": [],
            "values": {"k": "not base64!"},
        },
    ],
)
async def test_import_rejects_malformed_documents(document: dict) -> None:
    manager = SessionManager(MemorySessionStore())
    with pytest.raises(InvalidSessionData):
        await manager.import_(document)
    assert await manager.store.sessions() == []


async def test_bad_turn_input() -> None:
    manager = SessionManager(MemorySessionStore())
    with pytest.raises(InvalidSessionData, match="session_id"):
        await manager.prepare("", [user("x")], "m")
    with pytest.raises(InvalidSessionData, match="role"):
        await manager.prepare("s", [{"content": "x"}], "m")
    with pytest.raises(InvalidSessionData, match="not int"):
        await manager.prepare("s", [42], "m")


async def test_default_store_is_a_file_in_the_state_dir(tmp_path, monkeypatch) -> None:
    monkeypatch.setenv("GONKA_MUX_STATE_DIR", str(tmp_path / "state"))
    async with SessionManager() as manager:
        assert isinstance(manager.store, DiskSessionStore)
        await turn(manager, "s", [user("x")], assistant("y"))
    assert (tmp_path / "state" / "sessions.sqlite3").exists()
    reopened = SessionManager()
    assert await reopened.get("s") == [user("x"), assistant("y")]
    await reopened.aclose()
    with pytest.raises(SessionError, match="closed"):
        await reopened.get("s")
