"""Memory store benchmark: insert and search latency at 100k entries of ~30 words.

Target (issue 5, AGNT-02): search p50 <= 2 ms and insert <= 1 ms at 100k entries.

The corpus is generated deterministically (seeded): a 20k-word synthetic vocabulary drawn with a
Zipf distribution (s=1), as word frequencies in real text are, so queries contain common words
that match most entries; texts are 25-35 words. Queries are 3, 5 or 10 distinct words sampled
from a random entry. A real SQLite file in a temp dir, WAL journal.

    .venv/bin/python bench/memory.py [--entries 100000] [--queries 500] [--fallback] [--baseline]

``--fallback`` runs the pure-Python BM25 index instead of FTS5; ``--baseline`` also times FTS5's
own ``ORDER BY bm25()`` over the same data for comparison.
"""

from __future__ import annotations

import argparse
import itertools
import random
import statistics
import tempfile
import time
from pathlib import Path

from gonka_mux.memory import MemoryStore

SYLLABLES = ["ka", "lo", "mi", "ran", "te", "so", "vu", "pel", "dor", "ni"]
SYLLABLES += ["sha", "gu", "ber", "ta", "lin", "qua", "zo", "fe", "mar", "os"]


def make_corpus(entries: int, vocab_size: int = 20_000, seed: int = 7) -> list[str]:
    rng = random.Random(seed)
    vocab: set[str] = set()
    while len(vocab) < vocab_size:
        vocab.add("".join(rng.choice(SYLLABLES) for _ in range(rng.randint(2, 4))))
    words = sorted(vocab)
    rng.shuffle(words)
    cumulative = list(itertools.accumulate(1.0 / rank for rank in range(1, vocab_size + 1)))
    return [
        " ".join(rng.choices(words, cum_weights=cumulative, k=rng.randint(25, 35)))
        for _ in range(entries)
    ]


def make_queries(corpus: list[str], count: int, words: int, seed: int) -> list[str]:
    rng = random.Random(seed)
    queries = []
    while len(queries) < count:
        distinct = list(dict.fromkeys(rng.choice(corpus).split()))
        if len(distinct) >= words:
            queries.append(" ".join(rng.sample(distinct, words)))
    return queries


def percentiles(samples: list[float]) -> str:
    ordered = sorted(samples)

    def at(q: float) -> float:
        return ordered[min(len(ordered) - 1, int(q * len(ordered)))] * 1000

    return f"p50 {at(0.50):.3f} ms  p90 {at(0.90):.3f} ms  p99 {at(0.99):.3f} ms"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--entries", type=int, default=100_000)
    parser.add_argument("--queries", type=int, default=500)
    parser.add_argument("--fallback", action="store_true", help="pure-Python BM25, no FTS5")
    parser.add_argument("--baseline", action="store_true", help="also time FTS5's bm25()")
    args = parser.parse_args()

    corpus = make_corpus(args.entries + 2_000)
    bulk, extra = corpus[: args.entries], corpus[args.entries :]
    with tempfile.TemporaryDirectory() as tmp:
        store = MemoryStore(Path(tmp) / "memory.sqlite3", use_fts5=not args.fallback)
        print(f"{store!r}, {args.entries} entries of 25-35 words (Zipf vocabulary of 20k)")

        started = time.perf_counter()
        for start in range(0, len(bulk), 1000):
            store.put_many("bench", bulk[start : start + 1000])
        elapsed = time.perf_counter() - started
        print(f"bulk load (put_many, 1000 per call): {elapsed:.1f} s")

        inserts, insert_cpu = [], []
        for text in extra:
            t0, c0 = time.perf_counter(), time.thread_time()
            store.put("bench", text)
            inserts.append(time.perf_counter() - t0)
            insert_cpu.append(time.thread_time() - c0)
        print(
            f"insert (put, one transaction each, {len(extra)} at {args.entries}): "
            f"{percentiles(inserts)}  mean {statistics.fmean(inserts) * 1000:.3f} ms  "
            f"cpu p50 {sorted(insert_cpu)[len(insert_cpu) // 2] * 1000:.3f} ms "
            f"mean {statistics.fmean(insert_cpu) * 1000:.3f} ms"
        )

        print("search k=5 (wall time; cpu = this thread's CPU time, unaffected by other load):")
        queries = {
            words: make_queries(bulk, args.queries, words, seed=words) for words in (3, 5, 10)
        }
        time_searches(store, queries, "as loaded")
        started = time.perf_counter()
        store.optimize()
        print(f"store.optimize(): {time.perf_counter() - started:.2f} s")
        time_searches(store, queries, "optimized")

        if args.baseline and not args.fallback:
            baseline(Path(tmp), bulk, make_queries(bulk, min(args.queries, 100), 3, seed=3))
        store.close()


def time_searches(store: MemoryStore, queries: dict[int, list[str]], label: str) -> None:
    for words, batch in queries.items():
        for query in batch[:20]:  # warm the page cache
            store.search("bench", query)
        wall, cpu = [], []
        for query in batch:
            t0, c0 = time.perf_counter(), time.thread_time()
            store.search("bench", query, k=5)
            wall.append(time.perf_counter() - t0)
            cpu.append(time.thread_time() - c0)
        print(
            f"  {label}, {words:2d}-word queries ({len(batch)}): {percentiles(wall)}  "
            f"cpu p50 {sorted(cpu)[len(cpu) // 2] * 1000:.3f} ms"
        )


def baseline(tmp: Path, corpus: list[str], queries: list[str]) -> None:
    """FTS5's own ranking (``ORDER BY bm25()``, OR of the query words) on the same texts."""
    import sqlite3

    conn = sqlite3.connect(tmp / "baseline.sqlite3")
    conn.execute("CREATE VIRTUAL TABLE t USING fts5(body)")
    with conn:
        conn.executemany("INSERT INTO t(body) VALUES (?)", ((text,) for text in corpus))
    times = []
    for query in queries:
        match = " OR ".join(f'"{word}"' for word in query.split())
        t0 = time.perf_counter()
        conn.execute(
            "SELECT rowid FROM t WHERE t MATCH ? ORDER BY bm25(t) LIMIT 5", (match,)
        ).fetchall()
        times.append(time.perf_counter() - t0)
    print(f"baseline FTS5 ORDER BY bm25() ({len(queries)} 3-word queries): {percentiles(times)}")
    conn.close()


if __name__ == "__main__":
    main()
