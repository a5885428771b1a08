"""mux.memory: BM25 search persistent on disk, and hybrid ranking embedded through the mux."""

from __future__ import annotations

from gonka_mux import AsyncMultiplexer, Multiplexer
from gonka_mux.testing import FakeBackend


async def test_memory_put_search_persist(tmp_path):
    mux = AsyncMultiplexer()
    mem = mux.enable_memory(tmp_path / "memory.db")
    mem.put("agent-1", "The user's favourite city is Lisbon.", key="city")
    mem.put("agent-1", "The user is allergic to peanuts.", key="allergy")
    mem.put("agent-2", "Lisbon trip booked for May.", key="trip")
    hits = mem.search("agent-1", "which city does the user like", k=1)
    assert [h.key for h in hits] == ["city"]
    await mux.aclose()
    mux2 = AsyncMultiplexer.from_config({"memory": {"path": str(tmp_path / "memory.db")}})
    assert mux2.memory.get("agent-1", "allergy").text == "The user is allergic to peanuts."
    assert [h.key for h in mux2.memory.search("agent-2", "Lisbon")] == ["trip"]
    await mux2.aclose()


def test_hybrid_memory_embeds_through_the_multiplexer(tmp_path):
    with FakeBackend(models=["embed"]) as fb, Multiplexer() as mux:
        mux.add_endpoint(fb.url, models=["embed"], name="fb")
        mem = mux.enable_memory(tmp_path / "m.db", embedder="mux", embedding_model="embed")
        mem.put("ns", "alpha beta gamma", key="a")
        mem.put("ns", "delta epsilon", key="b")
        assert {h.key for h in mem.search("ns", "alpha", k=2)} >= {"a"}
        assert any(r.path.endswith("/embeddings") for r in fb.requests)
