"""Memory store benchmark: insert and search latency at 100k entries of ~30 words, SQLite and
PostgreSQL side by side.

Targets (issues 5 and 17): at 100k entries, SQLite search p50 <= 2 ms (3 and 10 words) and insert
<= 1 ms; PostgreSQL 3-word search p50 <= 5 ms and insert <= 2 ms.

The corpus is generated deterministically (seeded): a 20k-word synthetic vocabulary drawn with a
Zipf distribution (s=1), as word frequencies in real text are, so queries contain common words
that match most entries; texts are 25-35 words. Queries are 3, 5 or 10 distinct words sampled
from a random entry. SQLite: a real file in a temp dir, WAL journal. PostgreSQL: ``--pg URL``
(an empty database: the store's tables are created there), else a throwaway server started like
the tests do (``tests/_postgres.py``: needs PostgreSQL installed; run from the repository root).

    .venv/bin/python bench/memory.py [--entries 100000] [--queries 500]
        [--backends sqlite,postgresql] [--indexes numpy,fts5] [--pg URL] [--fallback]
        [--baseline] [--rank-bm25 [N]]

``--indexes`` picks the SQLite store's search paths, run one after the other on the same data:
``numpy`` (in-memory postings arrays, the default where numpy is installed) and ``fts5`` (FTS5
doclists with MaxScore, the path without numpy). ``--fallback`` runs the pure-Python BM25
index instead of FTS5; ``--baseline`` also times FTS5's
own ``ORDER BY bm25()`` over the same data for comparison. ``--rank-bm25`` (default 10k entries)
compares the store's pure-Python fallback index with the ``rank-bm25`` package (a dev/benchmark
dependency only; the store does not use it): insert cost, query latency, and how far the scores
and top 5 agree, both with rank-bm25's defaults and with its idf replaced by ours. Both stores
get the same entries in the same order, and the benchmark checks they return the same top 5 for
every query.
"""

from __future__ import annotations

import argparse
import contextlib
import itertools
import random
import shutil
import statistics
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

from gonka_mux.memory import MemoryStore

SYLLABLES = ["ka", "lo", "mi", "ran", "te", "so", "vu", "pel", "dor", "ni"]
SYLLABLES += ["sha", "gu", "ber", "ta", "lin", "qua", "zo", "fe", "mar", "os"]
WORDS = (3, 5, 10)


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


def at(samples: list[float], q: float) -> float:
    """The ``q`` quantile, in milliseconds."""
    ordered = sorted(samples)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))] * 1000


def percentiles(samples: list[float]) -> str:
    return (
        f"p50 {at(samples, 0.5):.3f} ms  p90 {at(samples, 0.9):.3f} ms  "
        f"p99 {at(samples, 0.99):.3f} ms"
    )


@contextlib.contextmanager
def postgres(url: str | None) -> Iterator[str]:
    """``url``, or a fresh database on a throwaway server (as the tests start one)."""
    if url:
        yield url
        return
    root = Path(__file__).resolve().parents[1]
    if str(root) not in sys.path:
        sys.path.insert(0, str(root))
    from tests._postgres import running_postgres

    directory = Path(tempfile.mkdtemp(prefix="gonka-mux-bench-pg-"))
    try:
        with running_postgres(directory) as server:
            yield server.fresh_database()
    finally:
        shutil.rmtree(directory, ignore_errors=True)


def run(
    store: MemoryStore,
    bulk: list[str],
    extra: list[str],
    queries: dict[int, list[str]],
) -> tuple[dict[str, float], dict[int, list[list[str]]]]:
    """Load, time inserts and searches; returns the p50s (ms) and each query's top keys."""
    print(f"\n{store!r}, {len(bulk)} entries of 25-35 words (Zipf vocabulary of 20k)")
    started = time.perf_counter()
    for start in range(0, len(bulk), 1000):
        chunk = bulk[start : start + 1000]
        store.put_many("bench", [{"text": t, "key": f"b{start + i}"} for i, t in enumerate(chunk)])
    print(f"bulk load (put_many, 1000 per call): {time.perf_counter() - started:.1f} s")
    started = time.perf_counter()
    store.optimize()
    print(f"store.optimize(): {time.perf_counter() - started:.2f} s")

    inserts, insert_cpu = [], []
    for i, text in enumerate(extra):
        t0, c0 = time.perf_counter(), time.thread_time()
        store.put("bench", text, key=f"x{i}")
        inserts.append(time.perf_counter() - t0)
        insert_cpu.append(time.thread_time() - c0)
    print(
        f"insert (put, one transaction each, {len(extra)} at {len(bulk)}): "
        f"{percentiles(inserts)}  mean {statistics.fmean(inserts) * 1000:.3f} ms  "
        f"cpu p50 {at(insert_cpu, 0.5):.3f} ms"
    )
    result = {"insert": at(inserts, 0.5)}
    tops: dict[int, list[list[str]]] = {}
    rss = _rss_mb()
    t0 = time.perf_counter()
    store.search("bench", next(iter(queries.values()))[0])
    print(
        f"first search (loads an in-memory index, if the store keeps one): "
        f"{time.perf_counter() - t0:.2f} s, process heap +{_rss_mb() - rss:.0f} MB"
    )
    print("search k=5 (wall time; cpu = this thread's CPU time, unaffected by other load):")
    for words, batch in queries.items():
        for query in batch[:20]:  # warm the caches
            store.search("bench", query)
        wall, cpu, top = [], [], []
        for query in batch:
            t0, c0 = time.perf_counter(), time.thread_time()
            hits = store.search("bench", query, k=5)
            wall.append(time.perf_counter() - t0)
            cpu.append(time.thread_time() - c0)
            top.append([h.key for h in hits])
        print(
            f"  {words:2d}-word queries ({len(batch)}): {percentiles(wall)}  "
            f"cpu p50 {at(cpu, 0.5):.3f} ms"
        )
        result[f"{words}-word"] = at(wall, 0.5)
        tops[words] = top
    return result, tops


def _rss_mb() -> float:
    """This process's anonymous resident memory in MB (Linux; 0 elsewhere): the heap, without
    the SQLite file's pages mapped by ``mmap_size``."""
    try:
        with open("/proc/self/status") as status:
            for line in status:
                if line.startswith("RssAnon:"):
                    return int(line.split()[1]) / 1024
    except OSError:
        pass
    return 0.0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--entries", type=int, default=100_000)
    parser.add_argument("--queries", type=int, default=500)
    parser.add_argument("--backends", default="sqlite,postgresql")
    parser.add_argument("--indexes", default="numpy,fts5", help="SQLite search paths to run")
    parser.add_argument("--pg", metavar="URL", help="an empty PostgreSQL database to use")
    parser.add_argument("--fallback", action="store_true", help="pure-Python BM25, no FTS5")
    parser.add_argument("--baseline", action="store_true", help="also time FTS5's bm25()")
    parser.add_argument(
        "--rank-bm25",
        type=int,
        nargs="?",
        const=10_000,
        metavar="N",
        help="only compare the pure-Python fallback with rank_bm25.BM25Okapi at N entries",
    )
    args = parser.parse_args()
    if args.rank_bm25:
        compare_rank_bm25(args.rank_bm25, min(args.queries, 200))
        return
    backends = [b.strip() for b in args.backends.split(",") if b.strip()]

    corpus = make_corpus(args.entries + 2_000)
    bulk, extra = corpus[: args.entries], corpus[args.entries :]
    queries = {words: make_queries(bulk, args.queries, words, seed=words) for words in WORDS}
    results: dict[str, dict[str, float]] = {}
    tops: dict[str, dict[int, list[list[str]]]] = {}
    with tempfile.TemporaryDirectory() as tmp:
        if "sqlite" in backends:
            indexes = ["python"] if args.fallback else args.indexes.split(",")
            for index in indexes:
                store = MemoryStore(
                    Path(tmp) / f"memory-{index}.sqlite3",
                    use_numpy=index == "numpy",
                    use_fts5=index != "python",
                )
                name = f"sqlite {index}"
                results[name], tops[name] = run(store, bulk, extra, queries)
                store.close()
            if args.baseline and not args.fallback:
                baseline(Path(tmp), bulk, queries[3][:100])
        if "postgresql" in backends:
            with postgres(args.pg) as url:
                store = MemoryStore(url)
                results["postgresql"], tops["postgresql"] = run(store, bulk, extra, queries)
                store.close()

    names = list(tops)
    for other in names[1:]:
        first, second = tops[names[0]], tops[other]
        differ = {w: sum(a != b for a, b in zip(first[w], second[w], strict=True)) for w in WORDS}
        verdict = "yes" if not any(differ.values()) else f"no, queries that differ: {differ}"
        print(f"\nsame top 5 in {names[0]} and {other}: {verdict}")
    columns = ["insert", *(f"{w}-word" for w in WORDS)]
    print(f"\np50 in ms at {args.entries} entries (search k=5)")
    print(f"{'backend':<16}" + "".join(f"{c:>10}" for c in columns))
    for name, row in results.items():
        print(f"{name:<16}" + "".join(f"{row[c]:>10.3f}" for c in columns))


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


def compare_rank_bm25(entries: int, count: int) -> None:
    """The fallback index (:mod:`gonka_mux.memory.bm25_fallback`) against rank-bm25's BM25Okapi
    over the same tokenized texts: the numbers behind keeping our own index (issue 18)."""
    try:
        import numpy as np
        from rank_bm25 import BM25Okapi
    except ImportError:
        sys.exit("--rank-bm25 needs rank-bm25 (and numpy): uv pip install rank-bm25")
    from gonka_mux.memory._bm25 import K1, idf, tokenize
    from gonka_mux.memory.bm25_fallback import FallbackIndex

    class LuceneIdfOkapi(BM25Okapi):  # type: ignore[misc]
        """BM25Okapi with our parameters and our (Lucene's) idf: isolates the arithmetic."""

        def __init__(self, corpus: list[list[str]]) -> None:
            super().__init__(corpus, k1=K1, b=0.75)

        def _calc_idf(self, nd: dict[str, int]) -> None:
            self.idf = {word: idf(self.corpus_size, df) for word, df in nd.items()}

    corpus = make_corpus(entries + 20)
    docs = [tokenize(text) for text in corpus[:entries]]
    extra = [tokenize(text) for text in corpus[entries:]]
    print(f"\nfallback index vs rank-bm25 BM25Okapi, {entries} entries of 25-35 words")

    ours = FallbackIndex()
    started = time.perf_counter()
    for doc, tokens in enumerate(docs):
        ours.add(1, doc, tokens)
    build_ours = time.perf_counter() - started
    started = time.perf_counter()
    theirs = BM25Okapi(docs)
    build_theirs = time.perf_counter() - started
    print(f"build: ours {build_ours * 1000:.1f} ms, rank-bm25 {build_theirs * 1000:.1f} ms")

    # One more entry: ours updates the postings; rank-bm25 has no add, so it is rebuilt.
    adds = []
    for i, tokens in enumerate(extra):
        t0 = time.perf_counter()
        ours.add(1, entries + i, tokens)
        adds.append(time.perf_counter() - t0)
    rebuilds = []
    for i in range(5):
        t0 = time.perf_counter()
        BM25Okapi(docs + extra[: i + 1])
        rebuilds.append(time.perf_counter() - t0)
    for i in range(len(extra)):  # back to the same corpus as rank-bm25's index
        ours.remove(1, entries + i, extra[i])
    print(
        f"insert one entry: ours p50 {at(adds, 0.5):.4f} ms; "
        f"rank-bm25 (rebuild) p50 {at(rebuilds, 0.5):.1f} ms"
    )

    lucene = LuceneIdfOkapi(docs)
    for words in WORDS:
        batch = [tokenize(q) for q in make_queries(corpus[:entries], count, words, seed=words)]
        ours_times, theirs_times = [], []
        same_default = same_lucene = 0
        worst = 0.0
        for terms in batch:
            t0 = time.perf_counter()
            mine = ours.search(1, list(dict.fromkeys(terms)), 5)
            ours_times.append(time.perf_counter() - t0)
            t0 = time.perf_counter()
            scores = theirs.get_scores(terms)
            top = np.argsort(-scores, kind="stable")[:5]
            theirs_times.append(time.perf_counter() - t0)
            same_default += [d for d, _ in mine] == [int(d) for d in top]
            aligned = lucene.get_scores(terms)
            same_lucene += [d for d, _ in mine] == [
                int(d) for d in np.argsort(-aligned, kind="stable")[:5]
            ]
            worst = max([worst, *(abs(s - float(aligned[d])) / s for d, s in mine)])
        print(
            f"  {words:2d}-word queries ({len(batch)}): ours p50 {at(ours_times, 0.5):.3f} ms, "
            f"rank-bm25 p50 {at(theirs_times, 0.5):.3f} ms; same top 5: "
            f"{same_default}/{len(batch)} with rank-bm25's defaults (k1=1.5, idf log((N-df+0.5)/"
            f"(df+0.5)) floored), {same_lucene}/{len(batch)} with k1=1.2 and our idf "
            f"(largest relative score difference {worst:.1e})"
        )


if __name__ == "__main__":
    main()
