"""Hybrid ranking: BM25 fused with cosine similarity from a user's embedder (sync callable, async
callable, or an OpenAI-shaped client talking to a real loopback server)."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest

from gonka_mux.memory import Embedder, EmbedderError, MemoryStore
from gonka_mux.memory.hybrid import reciprocal_rank_fusion
from gonka_mux.testing import FakeBackend

# A toy "meaning" space: words of one concept share a dimension, so "car" and "automobile"
# are close although they share no token.
CONCEPTS = {
    "car": 0, "automobile": 0, "vehicle": 0, "parked": 0,
    "tea": 1, "coffee": 1, "beverage": 1, "drink": 1,
    "rain": 2, "weather": 2, "umbrella": 2, "forecast": 2,
}  # fmt: skip


def concept_vectors(texts: list[str]) -> list[list[float]]:
    vectors = []
    for text in texts:
        vector = [0.0, 0.0, 0.0, 0.1]  # a small shared component keeps every norm non-zero
        for word in text.lower().split():
            if word.strip(".,?!") in CONCEPTS:
                vector[CONCEPTS[word.strip(".,?!")]] += 1.0
        vectors.append(vector)
    return vectors


async def async_concept_vectors(texts: list[str]) -> list[list[float]]:
    return concept_vectors(texts)


DOCS = [
    {"key": "auto", "text": "I parked the automobile outside the office"},
    {"key": "tea", "text": "She drinks green tea every morning"},
    {"key": "rain", "text": "Bring an umbrella, the forecast says showers"},
    {"key": "office", "text": "The office opens at nine"},
]


def test_meaning_finds_what_words_miss(tmp_path: Path) -> None:
    plain = MemoryStore(tmp_path / "plain.sqlite3")
    plain.put_many("ns", DOCS)
    assert plain.search("ns", "where is my car?") == []  # no shared word: BM25 alone is blind

    hybrid = MemoryStore(tmp_path / "hybrid.sqlite3", embedder=concept_vectors)
    hybrid.put_many("ns", DOCS)
    hits = hybrid.search("ns", "where is my car?", k=2)
    assert hits[0].key == "auto"
    # A document matching both by words and by meaning beats one matching by words only.
    ranked = [h.key for h in hybrid.search("ns", "office vehicle", k=4)]
    assert ranked.index("auto") < ranked.index("office")
    assert hits[0].score == pytest.approx(1 / 61)  # first by meaning, absent from the BM25 list
    plain.close()
    hybrid.close()


def test_vectors_are_stored_as_float32_blobs(tmp_path: Path) -> None:
    with MemoryStore(tmp_path / "m.sqlite3", embedder=concept_vectors) as store:
        store.put("ns", "tea", key="k")
    conn = sqlite3.connect(tmp_path / "m.sqlite3")
    (blob,) = conn.execute("SELECT vector FROM memory_entries").fetchone()
    conn.close()
    assert isinstance(blob, bytes) and len(blob) == 4 * 4  # 4 float32, normalized


async def test_async_embedder(tmp_path: Path) -> None:
    store = MemoryStore(tmp_path / "m.sqlite3", embedder=async_concept_vectors)
    await store.aput_many("ns", DOCS)
    hits = await store.asearch("ns", "any beverage?", k=1)
    assert [h.key for h in hits] == ["tea"]
    # The sync face cannot drive an async embedder from inside a running loop: it says what to do.
    with pytest.raises(EmbedderError, match="aput, asearch"):
        store.search("ns", "beverage")
    await store.aclose()


def test_async_embedder_from_sync_code(tmp_path: Path) -> None:
    with MemoryStore(tmp_path / "m.sqlite3", embedder=async_concept_vectors) as store:
        store.put_many("ns", DOCS)
        assert [h.key for h in store.search("ns", "weather", k=1)] == ["rain"]


def test_openai_shaped_client_over_http(tmp_path: Path) -> None:
    import openai

    with FakeBackend(models=["embed-small"], embedding_dim=16) as backend:
        client = openai.OpenAI(base_url=backend.url, api_key="test-key", max_retries=0)
        with MemoryStore(
            tmp_path / "m.sqlite3", embedder=client, embedding_model="embed-small"
        ) as store:
            store.put_many("ns", [d["text"] for d in DOCS])
            # The fake backend's vectors are hashes of the text: identical text, identical vector.
            hits = store.search("ns", DOCS[2]["text"], k=1)
            assert hits[0].text == DOCS[2]["text"]
        bodies = [r.json for r in backend.requests if r.path == "/v1/embeddings"]
        client.close()
    assert bodies[0]["model"] == "embed-small"
    assert bodies[0]["input"] == [d["text"] for d in DOCS]  # one batched call for put_many
    assert bodies[1]["input"] == [DOCS[2]["text"]]


async def test_async_openai_client(tmp_path: Path) -> None:
    import openai

    async with FakeBackend(models=["embed-small"], embedding_dim=8) as backend:
        client = openai.AsyncOpenAI(base_url=backend.url, api_key="test-key", max_retries=0)
        store = MemoryStore(tmp_path / "m.sqlite3", embedder=client, embedding_model="embed-small")
        await store.aput("ns", "hello vectors", key="k")
        assert [h.key for h in await store.asearch("ns", "hello vectors")] == ["k"]
        await store.aclose()
        await client.close()
        assert len([r for r in backend.requests if r.path == "/v1/embeddings"]) == 2


def test_bounded_vector_scan_trades_recall_for_cost(tmp_path: Path) -> None:
    """Vectors are compared for the BM25 candidates plus the most recent entries only."""
    with MemoryStore(
        tmp_path / "m.sqlite3", embedder=concept_vectors, vector_scan_limit=2
    ) as store:
        store.put("ns", "the automobile is parked", key="old")
        store.put_many("ns", [f"unrelated note {i}" for i in range(5)])
        # "old" matches by meaning only and is no longer among the 2 most recent entries.
        assert "old" not in [h.key for h in store.search("ns", "car", k=3)]
        # It is still found when it also matches a word of the query.
        assert store.search("ns", "car parked", k=1)[0].key == "old"


def test_embedder_errors_are_typed(tmp_path: Path) -> None:
    with pytest.raises(EmbedderError, match="embedding_model"):
        Embedder(FakeBackendLike())
    with pytest.raises(EmbedderError, match="callable"):
        Embedder(42)
    with MemoryStore(tmp_path / "m.sqlite3", embedder=lambda texts: [[1.0]]) as store:
        with pytest.raises(EmbedderError, match="one vector per input"):
            store.put_many("ns", ["a", "b"])
        assert store.count("ns") == 0  # nothing half-written


def test_a_changed_embedding_size_does_not_break_search(tmp_path: Path) -> None:
    path = tmp_path / "m.sqlite3"
    with MemoryStore(path, embedder=lambda texts: [[1.0, 0.0]] * len(texts)) as store:
        store.put("ns", "stored with two dimensions", key="old")
    with MemoryStore(path, embedder=lambda texts: [[0.0, 1.0, 0.0]] * len(texts)) as store:
        store.put("ns", "stored with three dimensions", key="new")
        hits = store.search("ns", "dimensions", k=2)
        # Tied by BM25; by meaning "old" (another size) sorts last, which cancels out in the
        # fusion, and the tie goes to the older entry. Above all: no error.
        assert [h.key for h in hits] == ["old", "new"]
        assert hits[0].score == pytest.approx(hits[1].score)


def test_reciprocal_rank_fusion() -> None:
    fused = reciprocal_rank_fusion([[1, 2, 3], [3, 1]])
    assert fused[1] == pytest.approx(1 / 61 + 1 / 62)
    assert fused[3] == pytest.approx(1 / 63 + 1 / 61)
    assert fused[2] == pytest.approx(1 / 62)


class FakeBackendLike:
    """An object with ``embeddings.create`` but no model given."""

    class embeddings:
        @staticmethod
        def create(**kwargs: object) -> None:
            raise AssertionError("not called")
