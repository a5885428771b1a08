"""Long-term agent memory: ``put``/``get``/``delete``/``list``/``search`` per namespace, ranked by
BM25 over SQLite FTS5 (pure-Python fallback), optionally fused with embedding similarity."""

from __future__ import annotations

from gonka_mux.memory.hybrid import Embedder, EmbedderError
from gonka_mux.memory.store import (
    InvalidMemoryInput,
    MemoryHit,
    MemoryItem,
    MemoryStore,
    MemoryStoreError,
    fts5_available,
)

__all__ = [
    "Embedder",
    "EmbedderError",
    "InvalidMemoryInput",
    "MemoryHit",
    "MemoryItem",
    "MemoryStore",
    "MemoryStoreError",
    "fts5_available",
]
