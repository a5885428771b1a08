"""Exact top-k BM25 over FTS5 doclists with MaxScore pruning.

FTS5's own ``bm25()`` counts each term's documents by walking its whole doclist on every query
and scores every matching row: ~75 ms for a three-word query at 100k realistic (Zipf-distributed)
texts. Here FTS5 only answers "which documents hold these terms", statistics come from the
store's own tables, and scoring is :func:`~gonka_mux.memory._bm25.score_document`.

The search visits terms by their best possible contribution (upper bound), largest first. Before
reading a term's documents it knows the current k-th best score (the bar): documents holding only
terms whose bounds sum below the bar are never fetched, and a term's doclist is narrowed with an
FTS5 expression (``term AND (other terms...)``) when that is cheaper than scoring every row.
A small cost model decides: putting a term in an FTS5 expression costs about a walk of its whole
doclist, and fetching and scoring one row costs about as much as walking ``ROW_COST`` entries.

Queries of more than ``MAX_RETRIEVAL_TERMS`` known words look documents up through their most
informative words only (every word still counts in the score): fast, but no longer exact for
documents that share only common words with the query.
"""

from __future__ import annotations

import heapq
import math
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass

from gonka_mux.memory._bm25 import idf, needles, score_document, upper_bound

__all__ = ["MAX_RETRIEVAL_TERMS", "ROW_COST", "NamespaceStats", "top_k"]

ROW_COST = 300  # fetching and scoring one row ~ FTS5 walking 300 doclist entries (measured)
MAX_RETRIEVAL_TERMS = 8
SEED_ROWS = 200
SEED_TERMS = 2  # a seed of more terms finds fewer documents, often fewer than k
MAX_QUALIFYING_SETS = 64  # beyond this, narrowing a doclist costs more than it saves

# fetch(fts5 expression, row limit or None) -> (doc id, packed tokens, length) rows
Fetch = Callable[[str, "int | None"], Iterable[tuple[int, str, int]]]


@dataclass(frozen=True)
class NamespaceStats:
    docs: int
    total_length: int
    min_length: int  # a bound: the shortest length ever stored (deletes never raise it)


def top_k(
    terms: Sequence[str],
    term_stats: Mapping[str, tuple[int, int]],
    ns: NamespaceStats,
    k: int,
    fetch: Fetch,
    quote: Callable[[str], str],
) -> list[tuple[int, float]]:
    """The ``k`` best ``(doc, score)`` pairs, best first, ties broken by the older (lower) id.

    ``term_stats`` maps each query term present in the namespace to ``(df, max_tf)``;
    ``quote`` renders a term as an FTS5 phrase.
    """
    weights = {t: idf(ns.docs, term_stats[t][0]) for t in terms if t in term_stats}
    if not weights or k <= 0:
        return []
    avg_length = ns.total_length / ns.docs
    bounds = {
        t: upper_bound(w, term_stats[t][1], ns.min_length, avg_length) for t, w in weights.items()
    }
    df = {t: term_stats[t][0] for t in weights}
    order = sorted(weights, key=lambda t: (-bounds[t], t))
    remaining = [math.fsum(bounds[t] for t in order[i:]) for i in range(len(order))]
    query_needles = needles(weights)
    best: list[tuple[float, int]] = []  # min-heap of (score, -id): the worst on top
    scored: set[int] = set()

    def score(expr: str, limit: int | None = None) -> None:
        for doc, packed, length in fetch(expr, limit):
            if doc in scored:
                continue
            scored.add(doc)
            entry = (score_document(packed, length, query_needles, avg_length), -doc)
            if len(best) < k:
                heapq.heappush(best, entry)
            elif entry > best[0]:
                heapq.heapreplace(best, entry)

    retrieval = order[:MAX_RETRIEVAL_TERMS]
    seed = _seed(retrieval, df, df[order[0]])
    if len(seed) > 1:
        # Documents holding the rarest terms together usually score near the top: they set a
        # high bar before the first doclist is read.
        score(" AND ".join(quote(t) for t in seed), SEED_ROWS)
    for i, term in enumerate(retrieval):
        bar = best[0][0] - 1e-9 * (1.0 + best[0][0]) if len(best) >= k else None
        if bar is not None and remaining[i] < bar:
            break  # documents holding only the terms left cannot reach the k-th score
        expr = quote(term)
        if bar is not None:
            plan = _filter_plan(order[i + 1 :], bounds, df, ns.docs, df[term], bar - bounds[term])
            if plan == []:
                continue  # this term plus any others left stays below the k-th score
            if plan is not None:
                alternatives = " OR ".join(
                    "(" + " AND ".join(quote(t) for t in s) + ")" for s in plan
                )
                expr = f"{expr} AND ({alternatives})"
        if i and df[term] * ROW_COST > ns.docs:
            # Skip documents holding an earlier term (scored already, or unable to reach the
            # bar); for a short doclist, refetching the few of them is cheaper.
            expr = f"({expr}) NOT ({' OR '.join(quote(t) for t in order[:i])})"
        score(expr)
    return [(-neg_doc, value) for value, neg_doc in sorted(best, reverse=True)]


def _seed(terms: Sequence[str], df: Mapping[str, int], first_rows: int) -> list[str]:
    """The rarest terms, as long as walking them costs well under reading the first doclist."""
    budget = first_rows * ROW_COST / 4
    seed = []
    for term in sorted(terms, key=df.__getitem__)[:SEED_TERMS]:
        budget -= df[term]
        if budget < 0:
            break
        seed.append(term)
    return seed


def _filter_plan(
    later: Sequence[str],
    bounds: Mapping[str, float],
    df: Mapping[str, int],
    docs: int,
    rows: int,
    need: float,
) -> list[list[str]] | None:
    """How to narrow a doclist of ``rows`` documents to those that can still beat the bar.

    A document of this term must also hold later terms whose bounds sum above ``need``.
    Filtering on a common term costs a walk of its long doclist and removes few documents, so
    the most common later terms may instead be assumed present (their bounds are subtracted
    from ``need``). Returns the cheapest option: ``None`` (no filter pays), ``[]`` (no document
    of this term can beat the bar) or the sets of terms to require (one set must be present).
    """
    by_frequency = sorted(later, key=lambda t: -df[t])
    # Costs per row of the term, in row fetches: not filtering costs 1.
    cheapest: tuple[float, list[list[str]] | None] = (1.0, None)
    for assumed in range(len(by_frequency) + 1):
        left = need - math.fsum(bounds[t] for t in by_frequency[:assumed])
        if left <= 0:
            break  # assuming more terms present cannot narrow anything
        kept = set(by_frequency[assumed:])
        sets = _qualifying_sets([t for t in later if t in kept], bounds, left)
        if sets == []:
            return []
        if sets is None:
            continue
        walked = sum(df[t] for t in {t for s in sets for t in s})
        share = min(1.0, math.fsum(math.prod(df[t] / docs for t in s) for s in sets))
        cost = walked / (rows * ROW_COST) + share
        if cost < cheapest[0]:
            cheapest = (cost, sets)
    return cheapest[1]


def _qualifying_sets(
    terms: Sequence[str], bounds: Mapping[str, float], need: float
) -> list[list[str]] | None:
    """Minimal sets of ``terms`` whose bounds sum above ``need`` (``terms`` sorted by bound,
    largest first). ``[]``: none can; ``None``: too many to be worth an FTS5 expression."""
    suffix = [0.0] * (len(terms) + 1)
    for i in range(len(terms) - 1, -1, -1):
        suffix[i] = suffix[i + 1] + bounds[terms[i]]
    found: list[list[str]] = []

    def walk(start: int, chosen: list[str], total: float) -> bool:
        for j in range(start, len(terms)):
            if total + suffix[j] <= need:
                return True
            reached = total + bounds[terms[j]]
            if reached > need:
                found.append([*chosen, terms[j]])
                if len(found) > MAX_QUALIFYING_SETS:
                    return False
            elif not walk(j + 1, [*chosen, terms[j]], reached):
                return False
        return True

    return found if walk(0, [], 0.0) else None
