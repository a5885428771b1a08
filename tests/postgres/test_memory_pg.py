"""Long-term memory on PostgreSQL: selected by URL like a file path, ranked exactly as the SQLite
store ranks (the same corpus loaded into both gives the same top-k and the same scores), hybrid
ranking, persistence, and outages (typed, prompt, and recovered without a new store).

The interface tests of tests/memory/test_memory_store.py also run on PostgreSQL (their ``store``
fixture has a ``postgres`` case)."""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import os
import random
import signal
import socket
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from tests._postgres import PostgresServer

from gonka_mux import AsyncMultiplexer, StoreUnavailableError
from gonka_mux.memory import InvalidMemoryInput, MemoryStore
from gonka_mux.memory.postgres import PostgresMemoryStore

PROMPT = 5.0  # connection refused is immediate; this only catches a call waiting on a timeout


def with_password(url: str, password: str = "s3cret-pw") -> str:
    # The test server trusts local connections: the password is carried, never checked.
    return url.replace("postgresql://postgres@", f"postgresql://postgres:{password}@", 1)


def zipf_corpus(entries: int, seed: int) -> list[str]:
    """Texts over a Zipf-distributed vocabulary (common words in most texts, as in real text)."""
    rng = random.Random(seed)
    words = [f"w{i}" for i in range(600)]
    weights = list(itertools.accumulate(1.0 / rank for rank in range(1, len(words) + 1)))
    return [
        " ".join(rng.choices(words, cum_weights=weights, k=rng.randint(4, 30)))
        for _ in range(entries)
    ]


def queries(corpus: list[str], seed: int) -> list[str]:
    rng = random.Random(seed)
    out = []
    for words in (1, 2, 3, 4, 5, 6, 8, 10, 12):
        for _ in range(12):
            distinct = list(dict.fromkeys(rng.choice(corpus).split()))
            picked = rng.sample(distinct, min(words, len(distinct)))
            picked.append(f"unknown{rng.randint(0, 9)}")  # a word no entry holds
            out.append(" ".join(picked))
    return out


def load(store: MemoryStore, corpus: list[str]) -> None:
    """The same writes, in the same order: bulk, single puts, rewrites, deletes, a 2nd namespace."""
    half = len(corpus) // 2
    store.put_many("ns", [{"key": f"k{i}", "text": t} for i, t in enumerate(corpus[:half])])
    for i, text in enumerate(corpus[half:], start=half):
        store.put("ns", text, key=f"k{i}", metadata={"team": "ops" if i % 3 else "web"})
    for i in range(0, len(corpus), 7):  # rewritten entries keep their place
        store.put("ns", corpus[(i * 13) % len(corpus)] + " rewritten", key=f"k{i}")
    for i in range(3, len(corpus), 11):
        assert store.delete("ns", f"k{i}")
    # the same key twice in one batch: the second wins, as two puts would
    store.put_many("ns", [{"key": "dup", "text": "w1 w2 first"}, {"key": "dup", "text": "w3 w4"}])
    store.put_many("other", corpus[:50])  # another namespace: never changes the first's ranking


@pytest.fixture
def server_restored(postgres_server: PostgresServer) -> Iterator[PostgresServer]:
    try:
        yield postgres_server
    finally:
        try:
            socket.create_connection(("127.0.0.1", postgres_server.port), timeout=1).close()
        except OSError:
            postgres_server.start()


def test_ranking_matches_the_sqlite_store(postgres_url: str, tmp_path: Path) -> None:
    corpus = zipf_corpus(1500, seed=11)
    lite = MemoryStore(tmp_path / "memory.sqlite3")
    pg = MemoryStore(postgres_url)
    assert isinstance(pg, PostgresMemoryStore)
    for store in (lite, pg):
        load(store, corpus)
    assert pg.count("ns") == lite.count("ns") and pg.namespaces() == lite.namespaces()
    assert pg.get("ns", "dup").text == lite.get("ns", "dup").text == "w3 w4"
    compared = 0
    for query in queries(corpus, seed=5):
        for k, filter in ((10, None), (3, None), (5, {"team": "ops"})):
            expected = [(h.key, h.score) for h in lite.search("ns", query, k=k, filter=filter)]
            got = [(h.key, h.score) for h in pg.search("ns", query, k=k, filter=filter)]
            assert [key for key, _ in got] == [key for key, _ in expected], query
            # the same arithmetic on the same statistics: the same floats
            assert [s for _, s in got] == [s for _, s in expected], query
            compared += bool(expected)
    assert compared > 250  # the queries found something: the comparison was not vacuous
    assert [i.key for i in pg.list("ns", limit=40)] == [i.key for i in lite.list("ns", limit=40)]
    lite.close()
    pg.close()


def test_hybrid_ranking_matches_the_sqlite_store(postgres_url: str, tmp_path: Path) -> None:
    def embed(texts: list[str]) -> list[list[float]]:
        return [[float(len(t) % 7), float(t.count("w1")), float(t.count("w2")), 1.0] for t in texts]

    corpus = zipf_corpus(300, seed=2)
    lite = MemoryStore(tmp_path / "m.sqlite3", embedder=embed, vector_scan_limit=40)
    pg = MemoryStore(postgres_url, embedder=embed, vector_scan_limit=40)
    for store in (lite, pg):
        store.put_many("ns", [{"key": str(i), "text": t} for i, t in enumerate(corpus)])
    for query in queries(corpus, seed=8)[:40]:
        expected = [(h.key, h.score) for h in lite.search("ns", query, k=5)]
        assert [(h.key, h.score) for h in pg.search("ns", query, k=5)] == expected
    lite.close()
    pg.close()


async def test_selected_by_url_everywhere_a_path_is_accepted(
    postgres_url: str, tmp_path: Path
) -> None:
    url = with_password(postgres_url)
    store = MemoryStore(url)
    assert isinstance(store, PostgresMemoryStore)
    assert "s3cret-pw" not in repr(store) and "***" in repr(store)
    store.put("ns", "the deploy runs on Fridays", key="deploy", metadata={"team": "ops"})
    store.close()
    # The SQLite store's search-path options fit the PostgreSQL store too.
    with MemoryStore(url, use_numpy=False, use_fts5=True, numpy_max_entries=10) as store:
        assert [h.key for h in store.search("ns", "deploy")] == ["deploy"]

    mux = AsyncMultiplexer()
    memory = mux.enable_memory(url)
    assert isinstance(memory, PostgresMemoryStore)
    assert [h.key for h in await memory.asearch("ns", "when is the deploy?")] == ["deploy"]
    await mux.aclose()

    config = tmp_path / "mux.toml"
    config.write_text(f'[memory]\npath = "{postgres_url}"\n')
    mux = AsyncMultiplexer.from_config(config)
    assert isinstance(mux.memory, PostgresMemoryStore)
    assert mux.memory.get("ns", "deploy").metadata == {"team": "ops"}  # persisted
    await mux.aclose()


def test_text_postgresql_cannot_hold_is_refused(postgres_url: str) -> None:
    store = MemoryStore(postgres_url)
    for call in (
        lambda: store.put("ns", "nul \x00 inside"),
        lambda: store.put("ns", "text", key="k\x00"),
        lambda: store.put("n\x00s", "text"),
        lambda: store.put("ns", "text", metadata={"x": "nul \x00"}),
    ):
        with pytest.raises(InvalidMemoryInput, match="NUL"):
            call()
    assert store.count("ns") == 0
    assert store.get("ns", "k\x00") is None
    store.close()


async def test_outage_is_typed_prompt_and_recovers(
    postgres_url: str, server_restored: PostgresServer
) -> None:
    store = MemoryStore(with_password(postgres_url))
    store.put("ns", "written before the outage", key="before")
    server_restored.stop()
    calls = {
        "put": lambda: store.put("ns", "lost"),
        "search": lambda: store.search("ns", "outage"),
        "get": lambda: store.get("ns", "before"),
        "list": lambda: store.list("ns"),
        "count": lambda: store.count("ns"),
        "namespaces": lambda: store.namespaces(),
        "delete": lambda: store.delete("ns", "before"),
    }
    for name, call in calls.items():
        started = time.monotonic()
        with pytest.raises(StoreUnavailableError) as caught:
            call()
        assert time.monotonic() - started < PROMPT, name
        assert caught.value.backend == "postgresql" and caught.value.retryable
        assert "s3cret-pw" not in str(caught.value)
    with pytest.raises(StoreUnavailableError):  # the async twins too
        await store.asearch("ns", "outage")
    server_restored.start()
    assert [h.key for h in store.search("ns", "outage")] == ["before"]
    store.put("ns", "written after the outage", key="after")
    assert store.count("ns") == 2
    store.close()


@contextlib.contextmanager
def frozen(server: PostgresServer) -> Iterator[None]:
    """SIGSTOP the postmaster and its backends (a hung host: TCP stays up, nothing answers)."""
    postmaster = int((server.data / "postmaster.pid").read_text().split()[0])
    pids = [postmaster]
    for stat in Path("/proc").glob("[0-9]*/stat"):
        with contextlib.suppress(OSError, ValueError, IndexError):
            if int(stat.read_text().rsplit(")", 1)[1].split()[1]) == postmaster:
                pids.append(int(stat.parent.name))
    assert len(pids) > 1  # backends (the store's connection among them) are frozen too
    stopped = []
    try:
        for pid in pids:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGSTOP)
                stopped.append(pid)
        yield
    finally:
        for pid in stopped:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGCONT)


def test_a_frozen_server_fails_each_operation_promptly_and_recovers(
    postgres_url: str, postgres_server: PostgresServer
) -> None:
    store = PostgresMemoryStore(with_password(postgres_url), operation_timeout=1.0)
    store.put("ns", "written before the freeze", key="before")
    calls = {
        "search": lambda: store.search("ns", "freeze"),  # on the pooled, open connection
        "put": lambda: store.put("ns", "lost"),  # on a new one: connect_timeout
        "get": lambda: store.get("ns", "before"),
        "count": lambda: store.count("ns"),
    }
    with frozen(postgres_server):
        for name, call in calls.items():
            started = time.monotonic()
            with pytest.raises(StoreUnavailableError) as caught:
                call()
            assert time.monotonic() - started < PROMPT, name
            assert caught.value.retryable and "s3cret-pw" not in str(caught.value)
    # Thawed: the same store serves again, and nothing half-written remains.
    assert [h.key for h in store.search("ns", "freeze")] == ["before"]
    assert store.count("ns") == 1
    store.close()


def test_operation_timeout_must_be_positive(postgres_url: str) -> None:
    with pytest.raises(InvalidMemoryInput, match="operation_timeout"):
        PostgresMemoryStore(postgres_url, operation_timeout=0)


async def test_writers_in_threads_keep_statistics_exact(postgres_url: str) -> None:
    store = MemoryStore(postgres_url)
    corpus = zipf_corpus(240, seed=4)

    def writer(w: int) -> None:
        for i in range(w, len(corpus), 4):
            store.put("ns", corpus[i], key=str(i))

    await asyncio.gather(*(asyncio.to_thread(writer, w) for w in range(4)))
    # Statistics written concurrently equal those of a sequential load: same scores.
    again = MemoryStore(postgres_url)
    again.put_many("seq", [{"key": str(i), "text": t} for i, t in enumerate(corpus)])
    for query in queries(corpus, seed=3)[:30]:
        # Keys of equal scores may come in another order (ids follow commit order): compare
        # the scores, which only exact statistics reproduce.
        got = [h.score for h in store.search("ns", query)]
        assert got == [h.score for h in again.search("seq", query)], query
    assert store.count("ns") == len(corpus)
    store.close()
    again.close()
