"""BM25Store: LangGraph's BaseStore over gonka_mux's MemoryStore (a real SQLite file)."""

from __future__ import annotations

from typing import Any

import pytest
from langchain_core.messages import HumanMessage
from langchain_core.tools import tool
from langgraph.config import get_store
from langgraph.graph import START, MessagesState, StateGraph
from langgraph.prebuilt import ToolNode, tools_condition
from langgraph.store.base import GetOp, PutOp, SearchOp

from gonka_mux import Multiplexer
from gonka_mux.integrations.langchain import ChatMultiplexer
from gonka_mux.integrations.langgraph import BM25Store
from gonka_mux.memory import MemoryStore
from gonka_mux.testing import FakeBackend, Reply, ToolCall

NS = ("users", "u1", "memories")


@pytest.fixture
def store(tmp_path):
    s = BM25Store(tmp_path / "memory.sqlite3")
    yield s
    s.close()


def fill(store: BM25Store) -> None:
    store.put(NS, "tea", {"text": "likes green tea and long hikes", "score": 5, "kind": "pref"})
    store.put(NS, "nuts", {"text": "allergic to peanuts", "score": 2, "kind": "health"})
    store.put(("users", "u2", "memories"), "black", {"text": "drinks black tea", "score": 9})


def test_put_get_update_delete(store):
    store.put(NS, "k", {"text": "first", "n": 1})
    item = store.get(NS, "k")
    assert item is not None and item.value == {"text": "first", "n": 1}
    assert item.namespace == NS and item.key == "k"
    created = item.created_at
    store.put(NS, "k", {"text": "second", "n": 2})
    again = store.get(NS, "k")
    assert again.value == {"text": "second", "n": 2} and again.created_at == created
    assert again.updated_at >= created
    store.delete(NS, "k")
    assert store.get(NS, "k") is None
    assert store.get(("nope",), "k") is None


def test_query_ranks_by_bm25_over_the_namespace_prefix(store):
    fill(store)
    hits = store.search(("users",), query="green tea")
    assert [h.key for h in hits] == ["tea", "black"]
    assert hits[0].score > hits[1].score > 0
    assert [h.key for h in store.search(NS, query="tea")] == ["tea"]
    assert store.search(NS, query="zebra") == []


def test_filters_equality_and_operators(store):
    fill(store)
    assert [h.key for h in store.search(NS, filter={"kind": "pref"})] == ["tea"]
    assert {h.key for h in store.search(("users",), filter={"score": {"$gt": 3}})} == {
        "tea",
        "black",
    }
    assert [
        h.key for h in store.search(("users",), query="tea", filter={"score": {"$lte": 5}})
    ] == ["tea"]
    assert [h.key for h in store.search(NS, filter={"score": 2})] == ["nuts"]


def test_listing_without_query_pages_in_insertion_order(store):
    fill(store)
    assert [h.key for h in store.search(NS)] == ["tea", "nuts"]
    assert [h.key for h in store.search(("users",), limit=1, offset=1)] == ["nuts"]
    assert all(h.score is None for h in store.search(NS))


def test_index_fields_and_unindexed_items(tmp_path):
    store = BM25Store(tmp_path / "m.sqlite3", index_fields=["title"])
    try:
        store.put(NS, "a", {"title": "violin lessons", "body": "piano"})
        store.put(NS, "b", {"title": "piano tuning", "body": "violin"}, index=["body"])
        store.put(NS, "c", {"title": "violin piano"}, index=False)
        assert {h.key for h in store.search(NS, query="violin")} == {"a", "b"}
        assert [h.key for h in store.search(NS, query="piano")] == []
        assert store.get(NS, "c").value == {"title": "violin piano"}
    finally:
        store.close()


def test_list_namespaces(store):
    fill(store)
    store.put(("docs", "x"), "d", {"text": "doc"})
    assert store.list_namespaces() == [("docs", "x"), NS, ("users", "u2", "memories")]
    assert store.list_namespaces(prefix=("users",), max_depth=2) == [
        ("users", "u1"),
        ("users", "u2"),
    ]
    assert store.list_namespaces(suffix=("memories",), prefix=("users", "*")) == [
        NS,
        ("users", "u2", "memories"),
    ]
    assert store.list_namespaces(limit=1, offset=1) == [NS]


def test_batch_reads_see_the_state_before_its_writes(store):
    store.put(NS, "k", {"text": "old"})
    results = store.batch(
        [
            PutOp(NS, "k", {"text": "new"}),
            GetOp(NS, "k"),
            PutOp(NS, "k", {"text": "newest"}),
            SearchOp(NS, query="old"),
        ]
    )
    assert results[1].value == {"text": "old"} and [h.key for h in results[3]] == ["k"]
    assert store.get(NS, "k").value == {"text": "newest"}


async def test_async_api(store):
    await store.aput(NS, "a", {"text": "async memory about sailing"})
    assert (await store.aget(NS, "a")).value["text"].startswith("async")
    assert [h.key for h in await store.asearch(NS, query="sailing")] == ["a"]
    assert await store.alist_namespaces() == [NS]
    await store.adelete(NS, "a")
    assert await store.aget(NS, "a") is None


def test_persists_across_reopen_and_shares_a_memory_store(tmp_path):
    path = tmp_path / "shared.sqlite3"
    first = BM25Store(path)
    first.put(NS, "k", {"text": "kept on disk"})
    first.close()
    memory = MemoryStore(path)
    try:
        reopened = BM25Store(memory)
        assert [h.key for h in reopened.search(NS, query="disk")] == ["k"]
        memory.put("plain-namespace", "not a langgraph item")
        assert reopened.list_namespaces() == [NS]  # other users of the file stay invisible
        reopened.close()  # does not close a MemoryStore it was given
        assert memory.count("plain-namespace") == 1
    finally:
        memory.close()


def test_bad_values_are_rejected(store):
    with pytest.raises(Exception, match="JSON"):
        store.put(NS, "k", {"when": object()})
    with pytest.raises(NotImplementedError):
        store.put(NS, "k", {"text": "x"}, ttl=5)
    with pytest.raises(ValueError):
        BM25Store(store.memory, prefix="")


def test_a_tool_uses_the_store_through_get_store(store):
    """The store passed to compile() reaches tools through langgraph.config.get_store()."""
    fill(store)

    @tool
    def recall(query: str) -> str:
        """Search the user's memories."""
        hits = get_store().search(NS, query=query, limit=1)
        return hits[0].value["text"] if hits else "nothing"

    def script(request) -> Reply:
        results = [m for m in request.messages if m["role"] == "tool"]
        if not results:
            return Reply(tool_calls=[ToolCall("recall", {"query": "what tea"})])
        return Reply(f"You told me you are someone who {results[-1]['content']}.")

    with FakeBackend(replies=script) as fb:
        mux = Multiplexer()
        mux.add_endpoint(fb.url, models=["m"])
        try:
            model = ChatMultiplexer(mux=mux, model="m").bind_tools([recall])
            builder = StateGraph(MessagesState)
            builder.add_node("agent", lambda s: {"messages": [model.invoke(s["messages"])]})
            builder.add_node("tools", ToolNode([recall]))
            builder.add_edge(START, "agent")
            builder.add_conditional_edges("agent", tools_condition)
            builder.add_edge("tools", "agent")
            app = builder.compile(store=store)
            out: dict[str, Any] = app.invoke({"messages": [HumanMessage("what do I drink?")]})
        finally:
            mux.close()
    assert out["messages"][-1].content == (
        "You told me you are someone who likes green tea and long hikes."
    )
