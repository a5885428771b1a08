"""A LangGraph agent on a gonka_mux Multiplexer, with a persistent checkpointer and memory.

Runs offline: it starts two fake OpenAI-compatible endpoints (``gonka_mux.testing``) playing a
scripted model (one of them drops a third of its connections) and routes over both. The graph is
a plain ``StateGraph`` with a ``ToolNode``; its checkpoints go to a gonka_mux session store on
disk and its long-term memory to a BM25 store. The second turn is run by a freshly built graph
on the same files, as a restarted process would, and resumes the thread.

    pip install "gonka-mux[langchain]"
    python examples/langgraph_example.py
"""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Any

from langchain_core.messages import HumanMessage
from langchain_core.tools import tool
from langgraph.config import get_store
from langgraph.graph import START, MessagesState, StateGraph
from langgraph.prebuilt import ToolNode, tools_condition

from gonka_mux import Multiplexer
from gonka_mux.integrations.langchain import ChatMultiplexer
from gonka_mux.integrations.langgraph import BM25Store, SessionStoreSaver
from gonka_mux.sessions.disk import DiskSessionStore
from gonka_mux.testing import FakeBackendSpec, FakeFleet, Faults, RecordedRequest, Reply, ToolCall

MODEL = "kimi-k2.5"
NOTES = ("user", "notes")


@tool
def save_note(text: str) -> str:
    """Save a note for later."""
    get_store().put(NOTES, f"note-{len(get_store().search(NOTES, limit=100))}", {"text": text})
    return "saved"


@tool
def find_note(query: str) -> str:
    """Find the saved note that best matches the query."""
    hits = get_store().search(NOTES, query=query, limit=1)
    return hits[0].value["text"] if hits else "no note"


def scripted_model(request: RecordedRequest) -> Reply:
    """Plays the LLM: decides from the current turn (the last user message and what follows)."""
    messages = request.messages
    last_user = max(i for i, m in enumerate(messages) if m["role"] == "user")
    turn = messages[last_user:]
    results = [m["content"] for m in turn if m["role"] == "tool"]
    question = turn[0]["content"]
    if question.startswith("Remember"):
        if not results:
            return Reply(tool_calls=[ToolCall("save_note", {"text": question[len("Remember") :]})])
        return Reply("Noted.")
    if not results:
        return Reply(tool_calls=[ToolCall("find_note", {"query": question})])
    earlier = len([m for m in messages[:last_user] if m["role"] == "user"])
    return Reply(
        f"From my notes: {results[-1].strip()} ({earlier} earlier message(s) in this thread)"
    )


def build_graph(mux: Multiplexer, state_dir: Path) -> tuple[Any, Any, Any]:
    model = ChatMultiplexer(mux=mux, model=MODEL).bind_tools(  # type: ignore[call-arg]
        [save_note, find_note]
    )
    builder = StateGraph(MessagesState)
    builder.add_node("agent", lambda state: {"messages": [model.invoke(state["messages"])]})
    builder.add_node("tools", ToolNode([save_note, find_note]))
    builder.add_edge(START, "agent")
    builder.add_conditional_edges("agent", tools_condition)
    builder.add_edge("tools", "agent")
    saver = SessionStoreSaver(DiskSessionStore(state_dir / "sessions.sqlite3"), close_store=True)
    store = BM25Store(state_dir / "memory.sqlite3")
    return builder.compile(checkpointer=saver, store=store), saver, store


def turn(graph: Any, text: str, thread: str) -> None:
    config = {"configurable": {"thread_id": thread}}
    print(f"> {text}")
    print("< ", end="")
    for chunk, meta in graph.stream(
        {"messages": [HumanMessage(text)]}, config, stream_mode="messages"
    ):
        if meta["langgraph_node"] == "agent" and chunk.content:
            print(chunk.content, end="", flush=True)  # tokens as they stream
    print()


def main() -> None:
    state_dir = Path(tempfile.mkdtemp(prefix="langgraph-example-"))
    specs = [
        FakeBackendSpec(name="node-a", replies=scripted_model, seed=1),
        FakeBackendSpec(
            name="node-b", replies=scripted_model, faults=Faults(rate_drop_before=0.33), seed=2
        ),
    ]
    with FakeFleet(specs) as fleet, Multiplexer() as mux:
        for backend in fleet.backends:
            mux.add_endpoint(backend.url, models=[MODEL], name=backend.name)
        graph, saver, store = build_graph(mux, state_dir)
        turn(graph, "Remember the wifi password is tea-for-two", "kitchen")
        saver.close()
        store.close()
        # A new graph, saver and store on the same files: what a restarted process does.
        graph, saver, store = build_graph(mux, state_dir)
        turn(graph, "What is the wifi password?", "kitchen")
        saver.close()
        store.close()
        for name, ep in mux.stats()["endpoints"].items():
            print(f"{name}: {ep['successes']} ok, failures {ep['failures'] or '{}'}")


if __name__ == "__main__":
    main()
