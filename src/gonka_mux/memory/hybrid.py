"""Hybrid ranking: embeddings from whatever the user passes, cosine similarity, and fusion.

An *embedder* is any of:

- a callable ``f(texts: list[str]) -> list[list[float]]``, sync or async (returning an awaitable);
- an object with ``embeddings.create(model=..., input=[...])`` shaped like the OpenAI client (a
  ``Multiplexer``, ``AsyncMultiplexer``, ``openai.OpenAI``...), with ``model=`` given.

Vectors are stored normalized as float32 bytes (``array('f')``, no numpy needed), so cosine
similarity is a dot product. Ranking fuses the BM25 list and the cosine list by reciprocal rank
(``sum(1 / (60 + rank))``), which needs no score calibration between the two.
"""

from __future__ import annotations

import asyncio
import inspect
import math
import operator
from array import array
from collections.abc import Awaitable, Callable, Iterable, Mapping, Sequence
from typing import Any

from gonka_mux._exceptions import GonkaMuxError

__all__ = [
    "RRF_K",
    "Embedder",
    "EmbedderError",
    "decode_vector",
    "encode_vector",
    "reciprocal_rank_fusion",
    "similarities",
]

RRF_K = 60  # the constant from Cormack et al. (2009); damps the weight of the very top ranks

Vectors = Sequence[Sequence[float]]
EmbedFunction = Callable[[list[str]], "Vectors | Awaitable[Vectors]"]


class EmbedderError(GonkaMuxError, ValueError):
    """The embedder is unusable or returned something that is not one vector per text."""


class Embedder:
    """Adapts a user's embedding function or OpenAI-shaped client to ``embed``/``aembed``."""

    def __init__(self, source: Any, *, model: str | None = None) -> None:
        embeddings = getattr(source, "embeddings", None)
        if embeddings is not None and hasattr(embeddings, "create"):
            if not model:
                raise EmbedderError(
                    "An embeddings client was passed as the embedder without a model: pass "
                    "embedding_model='<an embedding model the client serves>'."
                )
            self._call: Callable[[list[str]], Any] = self._client_call(embeddings.create, model)
        elif callable(source):
            self._call = source
        else:
            raise EmbedderError(
                f"Unusable embedder of type {type(source).__name__}: pass a callable "
                "f(list[str]) -> list[list[float]] (sync or async) or an object with "
                "embeddings.create(model=, input=)."
            )
        self._sync_callable = not inspect.iscoroutinefunction(self._call)

    @staticmethod
    def _client_call(create: Callable[..., Any], model: str) -> Callable[[list[str]], Any]:
        def call(texts: list[str]) -> Any:
            result = create(model=model, input=texts)
            if inspect.isawaitable(result):
                return _await_response(result)
            return _vectors_from_response(result)

        return call

    def embed(self, texts: Sequence[str]) -> list[list[float]]:
        """Embed synchronously; an async embedder is run to completion when no loop is running."""
        batch = list(texts)
        result = self._call(batch)
        if inspect.isawaitable(result):
            try:
                asyncio.get_running_loop()
            except RuntimeError:
                return self._check(asyncio.run(_as_coroutine(result)), batch)
            if inspect.iscoroutine(result):
                result.close()
            raise EmbedderError(
                "This embedder is async and an event loop is running in this thread: use the "
                "async methods (aput, asearch...) instead of put/search."
            )
        return self._check(result, batch)

    async def aembed(self, texts: Sequence[str]) -> list[list[float]]:
        """Embed from async code; a sync embedder runs in a worker thread, off the loop."""
        batch = list(texts)
        if self._sync_callable:
            result = await asyncio.to_thread(self._call, batch)
        else:
            result = self._call(batch)
        if inspect.isawaitable(result):
            result = await result
        return self._check(result, batch)

    @staticmethod
    def _check(result: Any, texts: list[str]) -> list[list[float]]:
        vectors = [list(map(float, v)) for v in result]
        if len(vectors) != len(texts):
            raise EmbedderError(
                f"The embedder returned {len(vectors)} vectors for {len(texts)} texts; it must "
                "return one vector per input text, in order."
            )
        return vectors


async def _as_coroutine(awaitable: Awaitable[Any]) -> Any:
    return await awaitable


async def _await_response(result: Awaitable[Any]) -> list[list[float]]:
    return _vectors_from_response(await result)


def _vectors_from_response(response: Any) -> list[list[float]]:
    """``CreateEmbeddingResponse`` (or its JSON dict) -> vectors in input order."""
    data = response["data"] if isinstance(response, Mapping) else response.data
    items = [(_field(item, "index"), _field(item, "embedding")) for item in data]
    if all(index is not None for index, _ in items):
        items.sort(key=lambda pair: pair[0])
    return [list(vector) for _, vector in items]


def _field(item: Any, name: str) -> Any:
    return item.get(name) if isinstance(item, Mapping) else getattr(item, name, None)


def encode_vector(vector: Sequence[float]) -> bytes:
    """Normalize to unit length and pack as float32 bytes (a zero vector stays zero)."""
    norm = math.sqrt(math.fsum(x * x for x in vector))
    if not math.isfinite(norm):
        raise EmbedderError("The embedder returned a vector with a NaN or infinite component.")
    scale = 1.0 / norm if norm else 0.0
    return array("f", (x * scale for x in vector)).tobytes()


def decode_vector(blob: bytes) -> array[float]:
    vector = array("f")
    vector.frombytes(blob)
    return vector


def similarities(query: bytes, blobs: Sequence[bytes]) -> list[float]:
    """Cosine similarity of the (normalized) query to each stored vector; a vector of another
    dimension (the embedder changed) scores ``-1`` so it sorts last instead of failing the search.
    """
    np = _numpy()
    if np is None:
        q = decode_vector(query)
        out = []
        for blob in blobs:
            if len(blob) != len(query):
                out.append(-1.0)
            else:
                out.append(sum(map(operator.mul, q, decode_vector(blob))))
        return out
    q = np.frombuffer(query, dtype=np.float32)
    same = [i for i, blob in enumerate(blobs) if len(blob) == len(query)]
    result = [-1.0] * len(blobs)
    if same:
        matrix = np.frombuffer(b"".join(blobs[i] for i in same), dtype=np.float32)
        scores = matrix.reshape(len(same), q.shape[0]) @ q
        for i, score in zip(same, scores.tolist(), strict=True):
            result[i] = float(score)
    return result


_NUMPY: Any = None


def _numpy() -> Any:
    """numpy when installed (a matrix product is ~100x faster than the Python loop), else None;
    looked up once, on first use."""
    global _NUMPY
    if _NUMPY is None:
        try:  # optional: numpy is not a dependency, only used when installed
            import numpy
        except ImportError:
            numpy = False
        _NUMPY = numpy
    return _NUMPY or None


def reciprocal_rank_fusion(rankings: Iterable[Sequence[int]], k: int = RRF_K) -> dict[int, float]:
    """``{id: sum over rankings of 1 / (k + rank)}`` with ranks starting at 1."""
    fused: dict[int, float] = {}
    for ranking in rankings:
        for rank, doc in enumerate(ranking, start=1):
            fused[doc] = fused.get(doc, 0.0) + 1.0 / (k + rank)
    return fused
