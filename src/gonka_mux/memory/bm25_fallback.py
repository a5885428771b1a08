"""A small incremental BM25 index in pure Python, used where SQLite was built without FTS5.

rank-bm25 rebuilds its whole index on every insert; this one keeps postings per namespace
(``term -> {doc id: tf}``) and updates them in O(tokens) per insert or delete. Scores come from
:mod:`gonka_mux.memory._bm25`, the same arithmetic the FTS5 path uses, and both return the exact
top k, so they rank alike.

Why not rank-bm25 (``bench/memory.py --rank-bm25``, 10k entries of ~30 words): one insert is
~0.02 ms here and ~190 ms there (a rebuild); a query scores every document there (3-word p50
~11 ms, 10-word ~34 ms, against ~0.3 and ~2 ms here with MaxScore); and its BM25Okapi differs
(k1=1.5, idf ``log((N-df+0.5)/(df+0.5))`` floored at a fraction of the mean idf, where ours is
Lucene's always-positive ``log(1+(N-df+0.5)/(df+0.5))``), so its top 5 is another one for most
queries. With our k1 and idf plugged in, it returns our top 5 and scores (within 1e-15).

The index lives in memory and is rebuilt from the SQLite table (the source of truth) when the
store opens it or notices that another connection wrote to the file.
"""

from __future__ import annotations

import heapq
import math
from collections import Counter
from collections.abc import Collection, Sequence
from dataclasses import dataclass, field

from gonka_mux.memory._bm25 import K1, idf, score_postings

__all__ = ["FallbackIndex"]


@dataclass
class _Namespace:
    postings: dict[str, dict[int, int]] = field(default_factory=dict)
    lengths: dict[int, int] = field(default_factory=dict)
    total_length: int = 0


class FallbackIndex:
    """In-memory inverted index keyed by namespace id. Not thread-safe: the store locks it."""

    def __init__(self) -> None:
        self._namespaces: dict[int, _Namespace] = {}

    def clear(self) -> None:
        self._namespaces.clear()

    def add(self, namespace: int, doc: int, tokens: Sequence[str]) -> None:
        ns = self._namespaces.setdefault(namespace, _Namespace())
        for term, tf in Counter(tokens).items():
            ns.postings.setdefault(term, {})[doc] = tf
        ns.lengths[doc] = len(tokens)
        ns.total_length += len(tokens)

    def remove(self, namespace: int, doc: int, tokens: Sequence[str]) -> None:
        ns = self._namespaces.get(namespace)
        if ns is None or doc not in ns.lengths:
            return
        for term in set(tokens):
            docs = ns.postings.get(term)
            if docs is not None:
                docs.pop(doc, None)
                if not docs:
                    del ns.postings[term]
        ns.total_length -= ns.lengths.pop(doc)

    def search(
        self,
        namespace: int,
        terms: Sequence[str],
        k: int,
        allowed: Collection[int] | None = None,
    ) -> list[tuple[int, float]]:
        """The ``k`` best ``(doc, score)`` pairs, best first, ties broken by the older doc.

        ``allowed`` restricts the result to those doc ids (a metadata filter's matches). Terms
        are visited by their best possible contribution, largest first, and the visit stops
        once the terms left cannot lift a document to the k-th score (MaxScore): common words
        are rarely read at all.
        """
        ns = self._namespaces.get(namespace)
        if ns is None or not ns.lengths or k <= 0:
            return []
        docs = len(ns.lengths)
        weights = {t: idf(docs, len(ns.postings[t])) for t in terms if t in ns.postings}
        if not weights:
            return []
        avg_length = ns.total_length / docs
        # tf * (k1 + 1) / (tf + norm) < k1 + 1 for any tf and length.
        order = sorted(weights, key=lambda t: (-weights[t], t))
        remaining = [
            (K1 + 1.0) * math.fsum(weights[t] for t in order[i:]) for i in range(len(order))
        ]
        best: list[tuple[float, int]] = []  # min-heap of (score, -doc): the worst on top
        seen: set[int] = set()
        for i, term in enumerate(order):
            if len(best) >= k and remaining[i] < best[0][0] - 1e-9 * (1.0 + best[0][0]):
                break
            for doc in ns.postings[term]:
                if doc in seen or (allowed is not None and doc not in allowed):
                    continue
                seen.add(doc)
                score = score_postings(ns.postings, doc, ns.lengths[doc], weights, avg_length)
                entry = (score, -doc)
                if len(best) < k:
                    heapq.heappush(best, entry)
                elif entry > best[0]:
                    heapq.heapreplace(best, entry)
        return [(-neg_doc, score) for score, neg_doc in sorted(best, reverse=True)]
