"""SessionStoreSaver: LangGraph's conformance suite and a real graph, on every session store.

The backends are gonka_mux's own session stores: in memory, on disk (a SQLite file in
tmp_path) and Redis (a real redis-server started on a free port by tests/_redis.py).
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from langchain_core.messages import AIMessage, HumanMessage
from langgraph.checkpoint.conformance import checkpointer_test, validate
from langgraph.graph import START, MessagesState, StateGraph
from langgraph.types import Command, interrupt

from gonka_mux.integrations.langgraph import SessionStoreSaver
from gonka_mux.sessions.disk import DiskSessionStore
from gonka_mux.sessions.memory import MemorySessionStore
from gonka_mux.sessions.redis import RedisSessionStore

BACKENDS = ["memory", "disk", pytest.param("redis", marks=pytest.mark.redis)]
# Test counts of langgraph-checkpoint-conformance 0.0.2: the base suite, then the extended one.
BASE_CAPABILITIES = {"put": 17, "put_writes": 10, "get_tuple": 10, "list": 16, "delete_thread": 5}
EXTENDED_CAPABILITIES = {"delete_for_runs": 7, "copy_thread": 8, "prune": 8}


@pytest.fixture(params=BACKENDS)
def make_store(request, tmp_path: Path) -> Iterator[Any]:
    """``make_store()``: a fresh, empty session store of the parametrized kind."""
    kind = request.param
    made: list[Any] = []

    def make() -> Any:
        if kind == "memory":
            store: Any = MemorySessionStore()
        elif kind == "disk":
            store = DiskSessionStore(tmp_path / f"sessions-{len(made)}.sqlite3")
        else:
            url = request.getfixturevalue("redis_url")
            store = RedisSessionStore(url, prefix=f"test:{uuid.uuid4().hex}:")
        made.append(store)
        return store

    make.kind = kind  # type: ignore[attr-defined]
    yield make
    for store in made:
        asyncio.run(store.aclose())


@pytest.fixture
def saver_for() -> Iterator[Any]:
    """``saver_for(store)``: a SessionStoreSaver, closed (its loop thread stopped) afterwards."""
    made: list[SessionStoreSaver] = []

    def make(store: Any) -> SessionStoreSaver:
        made.append(SessionStoreSaver(store))
        return made[-1]

    yield make
    for saver in made:
        saver.close()


async def test_conformance_suite(make_store):
    """The base suite (required) and the extended one, each capability on a fresh saver."""

    @checkpointer_test(name=f"SessionStoreSaver[{make_store.kind}]")
    async def factory():
        saver = SessionStoreSaver(make_store())
        yield saver
        saver.close()

    report = await validate(factory)
    failures = {name: result.failures for name, result in report.results.items() if result.failures}
    assert not failures, failures
    expected = {**BASE_CAPABILITIES, **EXTENDED_CAPABILITIES}
    assert {name: r.tests_passed for name, r in report.results.items()} == expected
    assert all(r.passed and r.detected for r in report.results.values())


def _graph(saver: SessionStoreSaver):
    def reply(state: MessagesState) -> dict[str, Any]:
        said = [m.content for m in state["messages"] if isinstance(m, HumanMessage)]
        return {"messages": [AIMessage(f"turn {len(said)}: you said {said[-1]!r}")]}

    def confirm(state: MessagesState) -> dict[str, Any]:
        answer = interrupt("confirm?")  # an interrupt is a special (negative idx) write
        return {"messages": [AIMessage(f"confirmed: {answer}")]}

    builder = StateGraph(MessagesState)
    builder.add_node("reply", reply)
    builder.add_node("confirm", confirm)
    builder.add_edge(START, "reply")
    builder.add_edge("reply", "confirm")
    return builder.compile(checkpointer=saver)


def test_graph_state_survives_a_new_saver_on_the_same_store(make_store, saver_for):
    store = make_store()
    config = {"configurable": {"thread_id": "t1"}}
    graph = _graph(saver_for(store))
    graph.invoke({"messages": [HumanMessage("hello")]}, config)
    assert graph.get_state(config).next == ("confirm",)  # paused at the interrupt

    resumed = _graph(saver_for(store))  # a fresh saver: nothing cached in memory
    out = resumed.invoke(Command(resume="yes"), config)
    assert [m.content for m in out["messages"]] == [
        "hello",
        "turn 1: you said 'hello'",
        "confirmed: yes",
    ]
    history = list(resumed.get_state_history(config))
    assert len(history) >= 4
    assert history[0].values["messages"][-1].content == "confirmed: yes"

    saver = saver_for(store)
    newest = saver.get_tuple(config)
    assert (
        newest is not None
        and newest.checkpoint["id"] == history[0].config["configurable"]["checkpoint_id"]
    )
    assert [t.checkpoint["id"] for t in saver.list(config, limit=2)] == [
        h.config["configurable"]["checkpoint_id"] for h in history[:2]
    ]
    saver.delete_thread("t1")
    assert saver.get_tuple(config) is None


async def test_async_graph_and_threads_are_isolated(make_store, saver_for):
    store = make_store()
    saver = saver_for(store)
    graph = _graph(saver)
    a = {"configurable": {"thread_id": "a"}}
    b = {"configurable": {"thread_id": "b"}}
    await graph.ainvoke({"messages": [HumanMessage("from a")]}, a)
    await graph.ainvoke({"messages": [HumanMessage("from b")]}, b)
    state_a = await graph.aget_state(a)
    assert state_a.values["messages"][0].content == "from a"
    threads = {t.config["configurable"]["thread_id"] async for t in saver.alist(None)}
    assert threads == {"a", "b"}
    await saver.adelete_thread("a")
    assert await saver.aget_tuple(a) is None and await saver.aget_tuple(b) is not None


async def test_sessions_are_namespaced_away_from_mux_sessions(make_store, saver_for):
    store = make_store()
    saver = saver_for(store)
    graph = _graph(saver)
    await graph.ainvoke({"messages": [HumanMessage("x")]}, {"configurable": {"thread_id": "t-9"}})
    await store.append_messages("t-9", [{"role": "user", "content": "mux history"}])
    assert await store.sessions() == ["langgraph:t-9", "t-9"]
    await saver.adelete_thread("t-9")  # the Multiplexer's own session with that id survives
    assert await store.sessions() == ["t-9"]
    assert await store.load_messages("t-9") == [{"role": "user", "content": "mux history"}]


def test_rejects_objects_that_are_not_session_stores():
    with pytest.raises(TypeError, match="session store"):
        SessionStoreSaver(object())


def test_from_conn_string_and_context_managers(tmp_path):
    """As LangGraph's own savers: ``with Saver.from_conn_string(...) as saver`` (and async)."""
    from langgraph.checkpoint.base import empty_checkpoint

    config = {"configurable": {"thread_id": "t1", "checkpoint_ns": ""}}
    with SessionStoreSaver.from_conn_string(str(tmp_path / "cp")) as saver:
        saver.put(config, empty_checkpoint(), {"source": "input", "step": 0}, {})
        assert saver.get_tuple(config) is not None
    with SessionStoreSaver.from_conn_string(str(tmp_path / "cp")) as again:  # persisted
        assert again.get_tuple(config) is not None
    with pytest.raises(ValueError, match="from_conn_string"):
        SessionStoreSaver.from_conn_string("")


async def test_async_context_manager():
    async with SessionStoreSaver.from_conn_string("memory") as saver:
        config = {"configurable": {"thread_id": "t", "checkpoint_ns": ""}}
        assert await saver.aget_tuple(config) is None
