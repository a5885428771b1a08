"""Exact BM25 top-k over in-memory postings arrays, scored by numpy (used when numpy is there).

Why: through FTS5 doclists (:mod:`gonka_mux.memory.maxscore`) a 10-word query at 100k entries
costs ~6 ms: MaxScore issues about nine FTS5 expressions and scores a few hundred rows in
Python, and FTS5's ``detail=none`` doclists cannot carry term frequencies to score in C. Here
each term's postings are two packed arrays (the entry's slot, the term's frequency in it). A
query gathers its terms' arrays, computes every posting's BM25 contribution in one vectorised
expression and sums them per entry with ``bincount``: well under 2 ms for 10 words at 100k
entries (``bench/memory.py``).

Scores are bit-identical to :func:`~gonka_mux.memory._bm25.score_document` (what the FTS5 path,
the pure-Python fallback and the PostgreSQL store compute): each contribution is the same
float64 expression, and ``bincount`` adds an entry's contributions in array order, which is the
query's term order, starting from 0.0, as the scalar loop does. Every query word counts, so
unlike the FTS5 path's ``MAX_RETRIEVAL_TERMS`` shortcut the top k is exact for long queries too.

The index is a cache of the SQLite table (the source of truth): the store loads a namespace on
its first search (vectorised: ~1 s per 100k entries of ~30 words) and keeps it in step from the
``memory_changes`` log every writer appends to. An entry rewritten or deleted leaves a dead
slot behind (masked out of every result); the store reloads a namespace whose dead slots
outnumber its live ones. Memory: ~45 MB held per 100k entries of ~30 words (8 bytes per distinct
word per entry, plus the per-entry and per-word bookkeeping); a load's temporary arrays take
~150 MB more, which the C allocator keeps for the process's later use (resident memory grows by
~180 MB at the first load, not again at the next ones of that size).
"""

from __future__ import annotations

from array import array
from collections import Counter, OrderedDict
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any

import numpy as np

from gonka_mux.memory._bm25 import K1, B

__all__ = ["ArrayIndex"]

# Below this share of postings per slot, summing over the touched slots only (a sort of the
# postings) beats a dense accumulator over every slot of the namespace.
_SPARSE_SHARE = 0.125
_LOAD_CHUNK = 2048  # texts tokenized at a time while loading a namespace


class _Term:
    """One term's postings: a base of numpy arrays plus the appends since the last search."""

    __slots__ = ("slots", "tail_slots", "tail_tfs", "tfs")

    def __init__(self, slots: Any, tfs: Any) -> None:
        self.slots = slots  # int32 ndarray
        self.tfs = tfs  # uint32 ndarray
        self.tail_slots: array[int] | None = None  # made at the first append (most never get one)
        self.tail_tfs: array[int] | None = None

    def append(self, slot: int, tf: int) -> None:
        if self.tail_slots is None or self.tail_tfs is None:
            self.tail_slots, self.tail_tfs = array("i"), array("I")
        self.tail_slots.append(slot)
        self.tail_tfs.append(tf)

    def arrays(self) -> tuple[Any, Any]:
        if self.tail_slots is not None:
            self.slots = np.concatenate((self.slots, np.array(self.tail_slots, dtype=np.int32)))
            self.tfs = np.concatenate((self.tfs, np.array(self.tail_tfs, dtype=np.uint32)))
            self.tail_slots = self.tail_tfs = None
        return self.slots, self.tfs


class _Vocabulary(dict[str, int]):
    """Term -> id, a new term getting the next id on its first lookup (no pass to find them)."""

    def __missing__(self, term: str) -> int:
        number = self[term] = len(self)
        return number


_EMPTY_SLOTS = np.empty(0, dtype=np.int32)
_EMPTY_TFS = np.empty(0, dtype=np.uint32)


class _Namespace:
    __slots__ = (
        "alive",
        "dead",
        "docs",
        "lengths",
        "norm",
        "norm_key",
        "slot_of",
        "terms",
        "total_length",
    )

    def __init__(self) -> None:
        self.terms: dict[str, _Term] = {}
        self.slot_of: dict[int, int] = {}  # entry id -> its live slot
        self.docs = array("q")  # slot -> entry id
        self.lengths = array("d")  # slot -> entry length in tokens
        self.alive = bytearray()  # slot -> 1 while the slot holds the entry's current text
        self.dead = 0
        self.total_length = 0
        self.norm: Any = None
        self.norm_key: tuple[float, int] | None = None


class ArrayIndex:
    """Per-namespace postings arrays. Not thread-safe: the store calls it under its lock.

    ``max_slots`` bounds the memory: when the loaded namespaces hold more slots (entries,
    counting dead ones) than that, the least recently searched are dropped (and reloaded if
    searched again). One namespace larger than the bound stays loaded alone.
    """

    def __init__(self, max_slots: int = 1_000_000) -> None:
        self.max_slots = max_slots
        self._namespaces: OrderedDict[int, _Namespace] = OrderedDict()

    # -- keeping in step -------------------------------------------------------------------

    def clear(self) -> None:
        self._namespaces.clear()

    def loaded(self, namespace: int) -> bool:
        return namespace in self._namespaces

    def loaded_namespaces(self) -> list[int]:
        return list(self._namespaces)

    def size(self, namespace: int) -> tuple[int, int, int]:
        """``(live entries, their total length, dead slots)`` of a loaded namespace."""
        ns = self._namespaces[namespace]
        return len(ns.slot_of), ns.total_length, ns.dead

    def load(self, namespace: int, rows: Iterable[tuple[int, str, int]]) -> None:
        """(Re)build a namespace from ``(entry id, packed tokens, length)`` rows, vectorised:
        tokens become term ids, and one sort of ``(term, slot)`` keys groups the postings."""
        ns = _Namespace()
        columns = list(zip(*rows, strict=True)) or [(), (), ()]
        ids, packed, lengths = columns[0], list(columns[1]), columns[2]
        del columns
        ns.docs = array("q", ids)
        ns.lengths = array("d", lengths)
        ns.slot_of = dict(zip(ids, range(len(ids)), strict=True))
        ns.total_length = sum(lengths)
        ns.alive = bytearray(b"\x01") * len(ns.docs)
        self._namespaces.pop(namespace, None)  # a failed load leaves nothing half-built behind
        if packed:
            self._build_postings(ns, packed)
        self._namespaces[namespace] = ns
        held = sum(len(n.docs) for n in self._namespaces.values())
        while held > self.max_slots and len(self._namespaces) > 1:
            _, evicted = self._namespaces.popitem(last=False)
            held -= len(evicted.docs)

    @staticmethod
    def _build_postings(ns: _Namespace, packed: list[str]) -> None:
        # Tokens become term ids a chunk of texts at a time: splitting every text at once
        # would hold millions of short strings (~200 MB at 100k entries) for a moment.
        slots = len(packed)
        per_slot = np.frombuffer(ns.lengths, dtype=np.float64).astype(np.int64)
        vocabulary = _Vocabulary()
        id_parts = []
        for start in range(0, slots, _LOAD_CHUNK):
            chunk = packed[start : start + _LOAD_CHUNK]
            tokens = " ".join(chunk).split()  # packed texts are space-separated tokens
            if len(tokens) != int(per_slot[start : start + len(chunk)].sum()):
                # A length column out of step with the tokens: count them.
                per_slot[start : start + len(chunk)] = [len(p.split()) for p in chunk]
            id_parts.append(
                np.fromiter(map(vocabulary.__getitem__, tokens), dtype=np.int64, count=len(tokens))
            )
        ids = np.concatenate(id_parts)
        del id_parts
        keys = ids * slots + np.repeat(np.arange(slots, dtype=np.int64), per_slot)
        del ids
        keys.sort()
        starts = np.flatnonzero(np.diff(keys, prepend=-1))
        tfs = np.diff(np.append(starts, len(keys))).astype(np.uint32)
        keys = keys[starts]
        term_of = keys // slots
        slot = (keys % slots).astype(np.int32)
        bounds = np.searchsorted(term_of, np.arange(len(vocabulary) + 1)).tolist()
        for number, term in enumerate(vocabulary):
            lo, hi = bounds[number], bounds[number + 1]
            ns.terms[term] = _Term(slot[lo:hi], tfs[lo:hi])

    def add(self, namespace: int, doc: int, tokens: Sequence[str]) -> None:
        """Index an entry's current text (replacing its previous slot, if any)."""
        ns = self._namespaces[namespace]
        self.discard(namespace, doc)
        slot = len(ns.docs)
        ns.slot_of[doc] = slot
        ns.docs.append(doc)
        ns.lengths.append(len(tokens))
        ns.alive.append(1)
        ns.total_length += len(tokens)
        for term, tf in Counter(tokens).items():
            postings = ns.terms.get(term)
            if postings is None:
                postings = ns.terms[term] = _Term(_EMPTY_SLOTS, _EMPTY_TFS)
            postings.append(slot, tf)

    def discard(self, namespace: int, doc: int) -> None:
        ns = self._namespaces[namespace]
        slot = ns.slot_of.pop(doc, None)
        if slot is not None:
            ns.alive[slot] = 0
            ns.dead += 1
            ns.total_length -= int(ns.lengths[slot])

    # -- search ----------------------------------------------------------------------------

    def search(
        self,
        namespace: int,
        weights: Mapping[str, float],
        avg_length: float,
        k: int,
        accept: Callable[[list[int]], set[int]] | None = None,
    ) -> list[tuple[int, float]]:
        """The ``k`` best ``(entry id, score)`` pairs, best first, ties broken by the older
        (lower) id. ``weights`` maps the query's terms, in query order, to their idf;
        ``accept`` (a metadata filter) returns which of the given ids qualify."""
        ns = self._namespaces.get(namespace)
        if ns is None or k <= 0:
            return []
        self._namespaces.move_to_end(namespace)
        norm = _norms(ns, avg_length)
        slot_parts: list[Any] = []
        contribution_parts: list[Any] = []
        for term, weight in weights.items():  # query order: the order score_document adds in
            postings = ns.terms.get(term)
            if postings is None:
                continue
            slots, tfs = postings.arrays()
            if len(slots):
                slot_parts.append(slots)
                # The expression of _bm25.score_document, elementwise: the same floats.
                contribution_parts.append(weight * tfs * (K1 + 1.0) / (tfs + norm[slots]))
        if not slot_parts:
            return []
        slots = np.concatenate(slot_parts)
        contributions = np.concatenate(contribution_parts)
        alive = np.frombuffer(ns.alive, dtype=np.uint8) if ns.dead else None
        if len(slots) < _SPARSE_SHARE * len(ns.docs):
            candidates, inverse = np.unique(slots, return_inverse=True)
            scores = np.bincount(inverse.reshape(-1), weights=contributions)
        else:
            dense = np.bincount(slots, weights=contributions, minlength=len(ns.docs))
            bar = 0.0
            if accept is None:
                # Any k live entries' scores bound the k-th best from below; entries holding
                # the query's rarest terms give a high bound, so few entries pass it.
                seen = _rarest_entries(ns, weights, k)
                if alive is not None:
                    seen = seen[alive[seen].astype(bool)]
                if len(seen) >= k:
                    values = dense[seen]
                    bar = float(np.partition(values, len(values) - k)[len(values) - k])
            candidates = np.flatnonzero(dense >= bar) if bar > 0.0 else np.flatnonzero(dense)
            scores = dense[candidates]
        if alive is not None:
            live = alive[candidates].astype(bool)
            candidates, scores = candidates[live], scores[live]
        docs = np.frombuffer(ns.docs, dtype=np.int64)
        if accept is None:
            return _ranked(candidates, scores, docs, k)
        # A filter: walk the ranking in growing prefixes until k entries qualify.
        depth = max(4 * k, 64)
        while True:
            ranked = _ranked(candidates, scores, docs, depth)
            qualifying = accept([doc for doc, _ in ranked])
            found = [pair for pair in ranked if pair[0] in qualifying]
            if len(found) >= k or len(ranked) >= len(candidates):
                return found[:k]
            depth *= 4


def _rarest_entries(ns: _Namespace, weights: Mapping[str, float], k: int) -> Any:
    """Some slots (at least ``2 * k`` where the terms have them) of the entries holding the
    query's rarest (highest-idf) terms, which likely score near the top."""
    sample: list[int] = []
    for term in sorted(weights, key=lambda term: -weights[term]):
        postings = ns.terms.get(term)
        if postings is not None:
            sample.extend(postings.arrays()[0][: 4 * k].tolist())
            if len(sample) >= 2 * k:
                break
    return np.unique(np.array(sample, dtype=np.int64))


def _norms(ns: _Namespace, avg_length: float) -> Any:
    """Every slot's BM25 length norm (``score_document``'s ``norm``), kept while neither the
    average length nor the slots change (searches between writes share it)."""
    key = (avg_length, len(ns.docs))
    if ns.norm_key != key:
        lengths = np.frombuffer(ns.lengths, dtype=np.float64)
        ns.norm = K1 * (1.0 - B + B * lengths / avg_length)
        ns.norm_key = key
    return ns.norm


def _ranked(candidates: Any, scores: Any, docs: Any, k: int) -> list[tuple[int, float]]:
    """The best ``k`` of ``candidates`` by ``(-score, entry id)``."""
    if len(scores) > k:
        # Everything tied with the k-th score stays in, so the id breaks the tie, not chance.
        kth = np.partition(scores, len(scores) - k)[len(scores) - k]
        keep = scores >= kth
        candidates, scores = candidates[keep], scores[keep]
    ids = docs[candidates]
    order = np.lexsort((ids, -scores))[:k]
    return list(zip(ids[order].tolist(), scores[order].tolist(), strict=True))
