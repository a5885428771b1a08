"""The numpy postings arrays (``MemoryStore(use_numpy=True)``): kept in step with every writer of
the file, through the change log and without it, and ranking exactly as the FTS5 path does."""

from __future__ import annotations

import random
import sqlite3
from pathlib import Path

import pytest

from gonka_mux.memory import MemoryStore
from gonka_mux.memory import store as store_module

pytest.importorskip("numpy")  # a dependency of the test extra: this never skips in CI


def _corpus(count: int, seed: int) -> list[str]:
    rng = random.Random(seed)
    vocab = [f"w{i}" for i in range(120)]
    weights = [1 / (r + 1) for r in range(len(vocab))]
    return [" ".join(rng.choices(vocab, weights, k=rng.randint(3, 20))) for _ in range(count)]


QUERIES = ["w0 w5", "w17 w3 w90", "w1 w2 w3 w4 w5 w6 w7 w8 w9 w10 w11", "w44", "fresh words"]


def _same_as_fts5(arrays: MemoryStore, path: Path, k: int = 8) -> None:
    """``arrays`` answers every query exactly as a fresh FTS5 store on the same file."""
    with MemoryStore(path, use_numpy=False, use_fts5=True) as fts:
        for query in QUERIES:
            got = [(h.key, h.score) for h in arrays.search("ns", query, k=k)]
            assert got == [(h.key, h.score) for h in fts.search("ns", query, k=k)], query


@pytest.fixture
def pair(tmp_path: Path) -> tuple[MemoryStore, MemoryStore, Path]:
    """A numpy reader and another connection writing to the same file."""
    path = tmp_path / "m.sqlite3"
    writer = MemoryStore(path, use_numpy=False)
    reader = MemoryStore(path, use_numpy=True)
    writer.put_many("ns", [{"key": f"k{i}", "text": t} for i, t in enumerate(_corpus(200, 1))])
    assert "numpy" in repr(reader)
    assert reader.search("ns", "w0", k=1)  # the namespace is loaded now
    yield reader, writer, path
    reader.close()
    writer.close()


def test_follows_inserts_updates_and_deletes_of_another_connection(pair) -> None:
    reader, writer, path = pair
    writer.put("ns", "fresh words here", key="new")
    writer.put("ns", "w44 w44 w44 rewritten", key="k7")
    writer.delete("ns", "k8")
    writer.put_many("ns", [{"key": "k9", "text": "w17 again"}, {"key": "k9", "text": "w90 w3"}])
    assert [h.key for h in reader.search("ns", "fresh", k=3)] == ["new"]
    assert reader.search("ns", "w44", k=1)[0].key == "k7"
    assert "k8" not in [h.key for h in reader.search("ns", "w0 w1 w2 w3", k=500)]
    _same_as_fts5(reader, path)
    # Its own writes too.
    reader.put("ns", "fresh fresh words", key="own")
    reader.delete("ns", "new")
    assert [h.key for h in reader.search("ns", "fresh", k=3)] == ["own"]
    _same_as_fts5(reader, path)


def test_a_writer_without_the_change_log_is_noticed(pair) -> None:
    """An older gonka_mux writes no change log: the counts differ, so the namespace reloads."""
    reader, writer, path = pair
    writer.put("ns", "fresh words", key="old-version")
    writer.delete("ns", "k3")
    with sqlite3.connect(path) as conn:
        conn.execute("DELETE FROM memory_changes")
    assert [h.key for h in reader.search("ns", "fresh", k=3)] == ["old-version"]
    _same_as_fts5(reader, path)


def test_a_log_pruned_past_the_reader_reloads(pair, monkeypatch: pytest.MonkeyPatch) -> None:
    reader, writer, path = pair
    monkeypatch.setattr(store_module, "_CHANGES_KEPT", 5)
    monkeypatch.setattr(store_module, "_PRUNE_EVERY", 5)
    for i in range(40):
        writer.put("ns", f"fresh words number{i}", key=f"p{i}")
    with sqlite3.connect(path) as conn:
        assert conn.execute("SELECT count(*) FROM memory_changes").fetchone()[0] < 10
    assert reader.search("ns", "number39", k=1)[0].key == "p39"
    assert len(reader.search("ns", "fresh", k=100)) == 40
    _same_as_fts5(reader, path)


def test_rewrites_leave_dead_slots_that_never_show(pair) -> None:
    reader, writer, path = pair
    for round_ in range(1200):  # more dead slots than the reload threshold
        writer.put("ns", f"w44 rewrite{round_}", key="hot")
        if round_ % 200 == 0:
            hits = reader.search("ns", "w44", k=500)
            assert [h.key for h in hits].count("hot") == 1
            assert reader.search("ns", f"rewrite{round_ - 1}") == []
    assert reader.search("ns", "rewrite1199", k=3)[0].key == "hot"
    _same_as_fts5(reader, path)


@pytest.mark.parametrize("use_numpy", [True, False])
def test_a_filter_finds_the_few_qualifying_entries_deep_in_the_ranking(
    tmp_path: Path, use_numpy: bool
) -> None:
    store = MemoryStore(tmp_path / "m.sqlite3", use_numpy=use_numpy)
    items = [{"key": f"k{i}", "text": "deploy " * (1 + i % 5) + f"note {i}"} for i in range(600)]
    items[599]["metadata"] = {"team": "rare"}  # one of the weakest matches
    items[17]["metadata"] = {"team": "rare"}
    store.put_many("ns", items)
    hits = store.search("ns", "deploy", k=5, filter={"team": "rare"})
    assert sorted(h.key for h in hits) == ["k17", "k599"]
    store.close()


def test_use_numpy_true_without_numpy_says_what_to_install(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import sys

    monkeypatch.setitem(sys.modules, "gonka_mux.memory.array_index", None)  # import fails
    with pytest.raises(store_module.MemoryStoreError, match=r"gonka-mux\[memory\]"):
        MemoryStore(tmp_path / "m.sqlite3", use_numpy=True)
    # The default quietly takes the FTS5 path.
    with MemoryStore(tmp_path / "m.sqlite3") as store:
        assert "fts5" in repr(store)


def test_memory_is_bounded_by_dropping_the_least_recently_searched(tmp_path: Path) -> None:
    store = MemoryStore(tmp_path / "m.sqlite3", use_numpy=True, numpy_max_entries=250)
    for tenant in ("a", "b", "c"):
        store.put_many(tenant, [f"{tenant} entry number{i}" for i in range(100)])
    for tenant in ("a", "b", "a", "c"):
        assert len(store.search(tenant, "entry", k=500)) == 100
    index = store._arrays
    held = {ns: index.size(ns)[0] for ns in index.loaded_namespaces()}
    assert sum(held.values()) <= 250 and len(held) == 2  # b, searched least recently, went
    assert len(store.search("b", "number7", k=3)) == 1  # reloaded on demand, still right
    store.close()


@pytest.mark.parametrize("bad", [0, -5, "100", 1.5, None])
def test_a_bad_entry_bound_is_a_typed_error(tmp_path: Path, bad: object) -> None:
    with pytest.raises(store_module.InvalidMemoryInput, match="numpy_max_entries"):
        MemoryStore(tmp_path / "m.sqlite3", numpy_max_entries=bad)


def test_a_namespace_of_texts_without_words_searches_quietly(tmp_path: Path) -> None:
    """Every text empty or punctuation (average length 0): no result and no numpy warning
    (an error where warnings are errors), as on the FTS5 path."""
    import warnings

    path = tmp_path / "m.sqlite3"
    with MemoryStore(path, use_numpy=True) as store:
        store.put_many("ns", ["", "!!! ...", "   "])
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            assert store.search("ns", "hello", k=3) == []
        store.put("ns", "hello there", key="words")
        assert [h.key for h in store.search("ns", "hello", k=3)] == ["words"]
        _same_as_fts5(store, path)
