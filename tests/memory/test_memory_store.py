"""MemoryStore against real SQLite files: CRUD, namespaces, persistence, BM25 ranking, filters,
hostile queries, threads, processes, and the pure-Python fallback ranking like FTS5."""

from __future__ import annotations

import importlib.util
import math
import random
import sqlite3
import subprocess
import sys
import threading
from collections import Counter
from pathlib import Path

import pytest

from gonka_mux.memory import (
    InvalidMemoryInput,
    MemoryHit,
    MemoryStore,
    MemoryStoreError,
    fts5_available,
)

# tests/_postgres.py (the real-server fixtures) lives at the repository root.
_ROOT = str(Path(__file__).resolve().parents[2])
if _ROOT not in sys.path:
    sys.path.insert(0, _ROOT)

from tests._postgres import postgres_server, postgres_url  # noqa: E402, F401

NUMPY = importlib.util.find_spec("numpy") is not None  # in the test extra: CI always has it
_NEEDS_NUMPY = pytest.mark.skipif(
    not NUMPY, reason="numpy is not installed: pip install 'gonka-mux[memory]'"
)
INDEXES = [pytest.param("numpy", marks=_NEEDS_NUMPY), "fts5", "fallback"]
RUNNABLE = ["numpy"] * NUMPY + ["fts5", "fallback"]  # the indexes this Python can run
# How each index is asked for: numpy arrays (the default where numpy is installed), FTS5
# doclists with MaxScore, the pure-Python postings (SQLite without FTS5).
INDEX_OPTIONS = {
    "numpy": {"use_numpy": True},
    "fts5": {"use_numpy": False, "use_fts5": True},
    "fallback": {"use_numpy": False, "use_fts5": False},
}
# The tests taking ``store`` also run on PostgreSQL (a real server, a fresh database each).
BACKENDS = [*INDEXES, pytest.param("postgres", marks=pytest.mark.postgres)]


@pytest.fixture(params=BACKENDS)
def store(request: pytest.FixtureRequest, tmp_path: Path) -> MemoryStore:
    if request.param == "postgres":
        s = MemoryStore(request.getfixturevalue("postgres_url"))
    else:
        s = MemoryStore(tmp_path / "memory.sqlite3", **INDEX_OPTIONS[request.param])
    yield s
    s.close()


def test_this_python_has_fts5() -> None:
    # The FTS5 path is the one the benchmark targets; CI's Python must have it.
    assert fts5_available()


def test_put_get_update_delete(store: MemoryStore) -> None:
    key = store.put("user:1", "Alice likes green tea", metadata={"kind": "preference"})
    assert len(key) == 32  # a generated uuid4 hex
    item = store.get("user:1", key)
    assert item is not None
    assert (item.text, item.metadata) == ("Alice likes green tea", {"kind": "preference"})

    assert store.put("user:1", "Alice now prefers coffee", key=key) == key
    updated = store.get("user:1", key)
    assert updated is not None and updated.text == "Alice now prefers coffee"
    assert updated.metadata == {}
    assert updated.created_at == item.created_at
    assert store.count("user:1") == 1
    # The index follows the update: old words no longer match, new ones do.
    assert store.search("user:1", "green tea") == []
    assert [h.key for h in store.search("user:1", "coffee")] == [key]

    assert store.delete("user:1", key) is True
    assert store.delete("user:1", key) is False
    assert store.get("user:1", key) is None
    assert store.search("user:1", "coffee") == []
    assert store.count("user:1") == 0
    assert store.namespaces() == []


def test_list_keeps_insertion_order_and_pages(store: MemoryStore) -> None:
    for i in range(5):
        store.put("ns", f"note number {i}", key=f"k{i}", metadata={"even": i % 2 == 0})
    store.put("ns", "note number 1, edited", key="k1")
    assert [i.key for i in store.list("ns")] == ["k0", "k1", "k2", "k3", "k4"]
    assert [i.key for i in store.list("ns", limit=2, offset=1)] == ["k1", "k2"]
    assert [i.key for i in store.list("ns", filter={"even": True})] == ["k0", "k2", "k4"]
    assert store.list("missing") == []


def test_namespaces_are_isolated(store: MemoryStore) -> None:
    store.put("alice", "the launch code is mango", key="secret")
    store.put("bob", "my favourite fruit is mango", key="secret")
    store.put("bob", "bananas are fine too")
    assert [h.text for h in store.search("alice", "mango")] == ["the launch code is mango"]
    assert [h.text for h in store.search("bob", "mango")] == ["my favourite fruit is mango"]
    assert store.search("carol", "mango") == []
    assert store.namespaces() == ["alice", "bob"]
    assert (store.count("alice"), store.count("bob")) == (1, 2)
    store.delete("alice", "secret")
    bob = store.get("bob", "secret")
    assert bob is not None and bob.text == "my favourite fruit is mango"


def test_persists_across_reopen(tmp_path: Path) -> None:
    path = tmp_path / "state" / "memory.sqlite3"  # parent directories are created
    with MemoryStore(path) as first:
        first.put("ns", "the deploy runs on Fridays", key="deploy", metadata={"team": "ops"})
        first.put("ns", "lunch is at noon", key="lunch")
    with MemoryStore(path) as again:
        hits = again.search("ns", "when does the deploy run?")
        assert [h.key for h in hits] == ["deploy"]
        assert hits[0].metadata == {"team": "ops"}
        assert again.count("ns") == 2
    # A directory path means memory.sqlite3 inside it.
    with MemoryStore(path.parent) as by_dir:
        assert by_dir.path == path
        assert by_dir.get("ns", "lunch") is not None


def test_default_path_is_in_the_state_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("GONKA_MUX_STATE_DIR", str(tmp_path / "state"))
    with MemoryStore() as store:
        store.put("ns", "hello")
        assert store.path == tmp_path / "state" / "memory.sqlite3"
    assert (tmp_path / "state" / "memory.sqlite3").exists()


def test_ranking_follows_bm25_on_a_known_corpus(store: MemoryStore) -> None:
    store.put_many(
        "kb",
        [
            {"key": "rare", "text": "the zeppelin landed near the old harbour"},
            {"key": "twice", "text": "harbour harbour cranes and ships"},
            {"key": "once-long", "text": "ships sail from the harbour every morning at dawn"},
            {"key": "none", "text": "a quiet afternoon in the garden"},
            {"key": "common", "text": "the the the the"},
        ],
    )
    # A rare word outweighs a common one; more occurrences in a shorter text rank higher.
    assert [h.key for h in store.search("kb", "zeppelin the")][:1] == ["rare"]
    assert [h.key for h in store.search("kb", "harbour")] == ["twice", "rare", "once-long"]
    hits = store.search("kb", "harbour")
    assert hits[0].score > hits[1].score > hits[2].score > 0
    assert all(isinstance(h, MemoryHit) for h in hits)
    assert [h.key for h in store.search("kb", "harbour", k=1)] == ["twice"]
    assert store.search("kb", "harbour", k=0) == []


def _reference_bm25(docs: dict[str, str], query: str, k: int) -> list[tuple[str, float]]:
    """Textbook BM25 (Lucene idf, k1=1.2, b=0.75) over whitespace tokens: the oracle."""
    tokens = {key: text.split() for key, text in docs.items()}
    avg = sum(len(t) for t in tokens.values()) / len(tokens)
    df = Counter(term for t in tokens.values() for term in set(t))
    scores = {}
    for key, toks in tokens.items():
        tf = Counter(toks)
        score = 0.0
        for term in dict.fromkeys(query.split()):
            if tf[term]:
                weight = math.log(1 + (len(tokens) - df[term] + 0.5) / (df[term] + 0.5))
                norm = 1.2 * (1 - 0.75 + 0.75 * len(toks) / avg)
                score += weight * tf[term] * 2.2 / (tf[term] + norm)
        if score:
            scores[key] = score
    return sorted(scores.items(), key=lambda kv: -kv[1])[:k]


def _zipf_corpus(count: int, seed: int) -> tuple[list[str], list[str]]:
    rng = random.Random(seed)
    vocab = [f"w{i}" for i in range(150)]
    weights = [1 / (r + 1) for r in range(len(vocab))]
    docs = [" ".join(rng.choices(vocab, weights, k=rng.randint(3, 25))) for _ in range(count)]
    queries = [" ".join(rng.sample(vocab[:60], rng.randint(1, 6))) for _ in range(60)]
    return docs, queries


def test_every_index_matches_a_reference_bm25(tmp_path: Path) -> None:
    """Exact top-k: MaxScore pruning over FTS5 doclists must not change the result, and the
    numpy arrays and the pure-Python fallback must return the same top results, same floats."""
    docs, queries = _zipf_corpus(400, seed=11)
    keyed = {f"d{i:03d}": text for i, text in enumerate(docs)}
    stores = [MemoryStore(tmp_path / f"{i}.sqlite3", **INDEX_OPTIONS[i]) for i in RUNNABLE]
    kinds = [repr(s).split("index=")[1][:5] for s in stores]
    assert kinds == ["numpy"] * NUMPY + ["fts5)", "pytho"]
    for s in stores:
        s.put_many("ns", [{"key": key, "text": text} for key, text in keyed.items()])
        s.put("other", " ".join(docs[:50]))  # another namespace must not shift the statistics
    for query in queries:
        for k in (1, 5, 12):
            expected = _reference_bm25(keyed, query, k)
            for s in stores:
                got = [(h.key, h.score) for h in s.search("ns", query, k=k)]
                # Same scores; keys may differ only within exact ties.
                assert [round(score, 9) for _, score in got] == [
                    round(score, 9) for _, score in expected
                ], (query, k)
                for (key, score), (ref_key, ref_score) in zip(got, expected, strict=True):
                    assert key == ref_key or math.isclose(score, ref_score), (query, key)
            tops = [[(h.key, h.score) for h in s.search("ns", query, k=k)] for s in stores]
            assert all(top == tops[0] for top in tops), (query, k)
    for s in stores:
        s.close()


@pytest.mark.parametrize(
    "query",
    [
        '"unbalanced quote',
        "tea AND (coffee OR",
        "NEAR(tea coffee, 2)",
        "te* -coffee ^tea col:tea",
        "'; DROP TABLE memory_entries; --",
        "tea\x00coffee",
        "{tea} [coffee] + * : ~",
        "AND OR NOT",
    ],
)
def test_fts5_syntax_in_queries_is_just_text(store: MemoryStore, query: str) -> None:
    store.put("ns", "green tea and black coffee", key="drinks")
    store.put("ns", "and or not are small words", key="words")
    hits = store.search("ns", query)
    assert all(isinstance(h, MemoryHit) for h in hits)
    if "tea" in query or "coffee" in query:
        assert hits[0].key == "drinks"
    assert store.count("ns") == 2  # nothing was dropped


def test_queries_without_words_return_nothing(store: MemoryStore) -> None:
    store.put("ns", "something")
    assert store.search("ns", "") == []
    assert store.search("ns", "   ") == []
    assert store.search("ns", "?!... ---") == []
    assert store.search("ns", "absent words only") == []


def test_unicode_is_folded(store: MemoryStore) -> None:
    store.put("ns", "Rendez-vous au Café Crème à Zürich", key="fr")
    store.put("ns", "Встреча в кафе", key="ru")
    assert [h.key for h in store.search("ns", "cafe creme zurich")] == ["fr"]
    assert [h.key for h in store.search("ns", "КАФЕ")] == ["ru"]


def test_filter_by_metadata(store: MemoryStore) -> None:
    store.put("ns", "deploy notes for the api", key="a", metadata={"team": "ops", "prio": 1})
    store.put("ns", "deploy notes for the web", key="b", metadata={"team": "web", "prio": 1})
    store.put("ns", "deploy checklist", key="c", metadata={"team": "ops", "prio": 2, "ok": True})
    store.put("ns", "deploy retro", key="d", metadata={"team": "ops", "owner": None})
    assert {h.key for h in store.search("ns", "deploy", filter={"team": "ops"})} == {"a", "c", "d"}
    assert [h.key for h in store.search("ns", "deploy", filter={"team": "ops", "prio": 2})] == ["c"]
    assert [h.key for h in store.search("ns", "deploy", filter={"ok": True})] == ["c"]
    assert {h.key for h in store.search("ns", "deploy", filter={"owner": None})} == {
        "a",
        "b",
        "c",
        "d",
    }
    assert store.search("ns", "deploy", filter={"team": "nobody"}) == []
    # The filter applies before the cut to k: the best ops entries, not the best overall.
    assert len(store.search("ns", "deploy notes", k=2, filter={"team": "ops"})) == 2


@pytest.mark.parametrize(
    ("call", "message"),
    [
        (lambda s: s.put("", "text"), "namespace"),
        (lambda s: s.put("ns", 42), "text must be a str"),
        (lambda s: s.put("ns", "text", key=""), "key"),
        (lambda s: s.put("ns", "text", metadata={"x": object()}), "JSON"),
        (lambda s: s.put("ns", "text", metadata={1: "x"}), "str keys"),
        (lambda s: s.put_many("ns", "one text"), "iterable"),
        (lambda s: s.search("ns", "q", filter={"tags": ["a"]}), "equality"),
        (lambda s: s.search("ns", "q", filter={'a"b': 1}), "quotes"),
        (lambda s: s.search("ns", None), "query must be a str"),
        (lambda s: s.search("ns", "q", k=-1), "non-negative"),
    ],
)
def test_bad_input_gets_a_typed_error(store: MemoryStore, call, message: str) -> None:
    with pytest.raises(InvalidMemoryInput, match=message) as info:
        call(store)
    assert isinstance(info.value, ValueError)


def test_closed_store_says_so(tmp_path: Path) -> None:
    store = MemoryStore(tmp_path / "m.sqlite3")
    store.close()
    store.close()  # idempotent
    with pytest.raises(MemoryStoreError, match="closed"):
        store.search("ns", "x")


def test_threads_share_one_store(store: MemoryStore) -> None:
    errors: list[BaseException] = []

    def writer(worker: int) -> None:
        try:
            for i in range(40):
                store.put("ns", f"entry token{worker}x{i} shared words", key=f"{worker}-{i}")
                if i % 10 == 0:
                    store.search("ns", f"shared token{worker}x{i}")
        except BaseException as exc:  # surfaced below
            errors.append(exc)

    threads = [threading.Thread(target=writer, args=(w,)) for w in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    assert store.count("ns") == 240
    for worker in range(6):
        for i in (0, 39):
            hits = store.search("ns", f"token{worker}x{i}", k=1)
            assert [h.key for h in hits] == [f"{worker}-{i}"]


_WRITER = """
import sys
from gonka_mux.memory import MemoryStore
path, worker, index = sys.argv[1], sys.argv[2], sys.argv[3]
options = {
    "numpy": {"use_numpy": True},
    "fts5": {"use_numpy": False, "use_fts5": True},
    "fallback": {"use_numpy": False, "use_fts5": False},
}[index]
with MemoryStore(path, **options) as store:
    for i in range(60):
        store.put("ns", f"process {worker} wrote item{worker}n{i}", key=f"{worker}-{i}")
"""


@pytest.mark.slow
@pytest.mark.parametrize("index", INDEXES)
def test_processes_share_one_file(tmp_path: Path, index: str) -> None:
    path = tmp_path / "shared.sqlite3"
    reader = MemoryStore(path, **INDEX_OPTIONS[index])
    assert reader.search("ns", "process") == []  # loads (empty) state before the writers run
    procs = [
        subprocess.Popen([sys.executable, "-c", _WRITER, str(path), str(w), index])
        for w in range(3)
    ]
    assert [p.wait(timeout=60) for p in procs] == [0, 0, 0]
    assert reader.count("ns") == 180
    # The reader sees the other processes' writes (the fallback reloads its postings).
    assert [h.key for h in reader.search("ns", "item2n59", k=3)] == ["2-59"]
    assert len(reader.search("ns", "process", k=500)) == 180
    reader.close()


def test_fts_index_is_rebuilt_after_writes_without_fts5(tmp_path: Path) -> None:
    path = tmp_path / "m.sqlite3"
    with MemoryStore(path, use_fts5=True) as s:
        s.put("ns", "written with fts5", key="a")
    with MemoryStore(path, use_fts5=False) as s:  # e.g. another Python without FTS5
        s.put("ns", "written by the fallback", key="b")
        s.delete("ns", "a")
    with MemoryStore(path, use_fts5=True) as s:
        assert [h.key for h in s.search("ns", "written")] == ["b"]
        assert s.search("ns", "fts5") == []


def test_optimize_keeps_results(store: MemoryStore) -> None:
    docs, queries = _zipf_corpus(200, seed=3)
    store.put_many("ns", [{"key": str(i), "text": t} for i, t in enumerate(docs[:100])])
    for i, text in enumerate(docs[100:], start=100):  # many small FTS5 segments
        store.put("ns", text, key=str(i))
    before = [[(h.key, h.score) for h in store.search("ns", q)] for q in queries]
    store.optimize()
    assert [[(h.key, h.score) for h in store.search("ns", q)] for q in queries] == before
    store.put("ns", "still writable after optimize", key="new")
    assert store.search("ns", "writable")[0].key == "new"


def test_stored_schema_is_plain_sqlite(tmp_path: Path) -> None:
    path = tmp_path / "m.sqlite3"
    with MemoryStore(path) as s:
        s.put("ns", "inspectable", key="k", metadata={"a": 1})
    conn = sqlite3.connect(path)
    row = conn.execute("SELECT key, text, metadata FROM memory_entries").fetchone()
    conn.close()
    assert row == ("k", "inspectable", '{"a": 1}')


async def test_async_twins(tmp_path: Path) -> None:
    store = MemoryStore(tmp_path / "m.sqlite3")
    key = await store.aput("ns", "async memories are stored too", metadata={"v": 1})
    keys = await store.aput_many("ns", ["second entry", {"text": "third entry", "key": "t"}])
    assert keys[1] == "t"
    item = await store.aget("ns", key)
    assert item is not None and item.metadata == {"v": 1}
    assert [h.key for h in await store.asearch("ns", "async")] == [key]
    assert [i.key for i in await store.alist("ns")] == [key, keys[0], "t"]
    assert await store.adelete("ns", "t") is True
    await store.aclose()


def test_filter_values_compare_as_json_types(store: MemoryStore) -> None:
    """True is not 1 and "1" is not 1, on every backend (jsonb equality; numbers compare by
    value: 1 matches 1.0)."""
    store.put("ns", "flag entry", key="true", metadata={"flag": True})
    store.put("ns", "flag entry", key="one", metadata={"flag": 1})
    store.put("ns", "flag entry", key="onepointzero", metadata={"flag": 1.0})
    store.put("ns", "flag entry", key="false", metadata={"flag": False})
    store.put("ns", "flag entry", key="zero", metadata={"flag": 0})
    store.put("ns", "flag entry", key="text", metadata={"flag": "1"})
    store.put("ns", "flag entry", key="object", metadata={"flag": {"a": 1}})
    store.put("ns", "flag entry", key="null", metadata={"flag": None})

    def keys(value: object) -> set[str]:
        hits = {h.key for h in store.search("ns", "flag", k=20, filter={"flag": value})}
        listed = {i.key for i in store.list("ns", filter={"flag": value})}
        assert hits == listed
        return hits

    assert keys(True) == {"true"}
    assert keys(False) == {"false"}
    assert keys(1) == {"one", "onepointzero"}
    assert keys(1.0) == {"one", "onepointzero"}
    assert keys(0) == {"zero"}
    assert keys("1") == {"text"}
    assert keys('{"a":1}') == set()
    assert keys(None) == {"null"}
