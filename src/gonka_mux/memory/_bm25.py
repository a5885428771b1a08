"""Tokenizer and BM25 arithmetic shared by the FTS5 store and the pure-Python fallback.

Both search paths tokenize with :func:`tokenize` and score with :func:`score_document` over the
same per-namespace statistics, so they rank identically; only the way candidates are found
differs (FTS5 doclists vs. in-memory postings).
"""

from __future__ import annotations

import math
import re
import unicodedata
from collections.abc import Iterable, Mapping, Sequence

__all__ = [
    "K1",
    "B",
    "idf",
    "needles",
    "pack_tokens",
    "score_document",
    "score_postings",
    "tokenize",
    "upper_bound",
]

# Lucene's and FTS5's defaults.
K1 = 1.2
B = 0.75

# A token is a run of letters and digits (underscore and punctuation separate tokens).
_TOKEN = re.compile(r"[^\W_]+")


def tokenize(text: str) -> list[str]:
    """Case-folded, diacritic-free word tokens.

    ``tokenize("Café, au-lait!") == ["cafe", "au", "lait"]``
    """
    if not text.isascii():
        decomposed = unicodedata.normalize("NFKD", text)
        text = "".join(ch for ch in decomposed if not unicodedata.combining(ch))
    return _TOKEN.findall(text.casefold())


def pack_tokens(tokens: Iterable[str]) -> str:
    """Store a token list so that a term's frequency is one C-level ``str.count``.

    Tokens are joined by two spaces inside a leading and trailing space (``" a  b  a "``), so the
    needle ``" a "`` never overlaps itself and counts repeated tokens exactly.
    """
    return " " + "  ".join(tokens) + " "


def idf(docs: int, df: int) -> float:
    """Lucene's BM25 idf: always positive, so common terms still add a little."""
    return math.log(1.0 + (docs - df + 0.5) / (df + 0.5))


def needles(weights: Mapping[str, float]) -> list[tuple[str, float]]:
    """``(needle, idf)`` pairs for :func:`score_document`, in the query's order."""
    return [(f" {term} ", weight) for term, weight in weights.items()]


def score_document(
    packed: str, length: int, needles: Sequence[tuple[str, float]], avg_length: float
) -> float:
    """BM25 of one packed document for the query ``needles`` (see :func:`needles`).

    Same expression and term order as :func:`score_postings`, so both give bit-identical scores.
    """
    norm = K1 * (1.0 - B + B * length / avg_length)
    score = 0.0
    for needle, weight in needles:
        tf = packed.count(needle)
        if tf:
            score += weight * tf * (K1 + 1.0) / (tf + norm)
    return score


def upper_bound(weight: float, max_tf: int, min_length: int, avg_length: float) -> float:
    """The most one term can add to any document's score.

    BM25 grows with tf and shrinks with document length, so the bound uses the largest tf ever
    seen for the term and the shortest document in the namespace (both kept as monotone bounds:
    deleting a document never tightens them, which keeps them valid).
    """
    tf = max(1, max_tf)
    norm = K1 * (1.0 - B + B * max(1, min_length) / avg_length)
    return weight * tf * (K1 + 1.0) / (tf + norm)


def score_postings(
    postings: Mapping[str, Mapping[int, int]],
    doc: int,
    length: int,
    weights: Mapping[str, float],
    avg_length: float,
) -> float:
    """BM25 of one document from in-memory postings (``term -> {doc: tf}``), for the fallback.

    Same expression and term order as :func:`score_document`: bit-identical scores.
    """
    norm = K1 * (1.0 - B + B * length / avg_length)
    score = 0.0
    for term, weight in weights.items():
        tf = postings[term].get(doc)
        if tf:
            score += weight * tf * (K1 + 1.0) / (tf + norm)
    return score
