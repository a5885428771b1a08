"""Long-term agent memory: per-namespace texts with BM25 search, persisted in one SQLite file.

Layout (tables prefixed ``memory_``):

- ``entries``: the source of truth (namespace, key, text, JSON metadata, the token list, the
  optional embedding).
- ``terms`` and ``namespaces``: per-namespace BM25 statistics (document frequency, highest term
  frequency, document count, total and shortest length), kept up to date on every write.
- ``fts``: an FTS5 index (contentless, ``detail=none``) used only for its doclists: which
  documents contain a term. Tokens are indexed as ``<namespace id>x<token>``, so every doclist is
  already restricted to one namespace.
- ``changes``: a log of written entry ids, so an in-memory index (below) in any process can
  follow other writers without reloading.

Where numpy is installed, search is exact BM25 over in-memory postings arrays loaded from
``entries`` and kept in step from ``changes`` (:mod:`gonka_mux.memory.array_index`: the fastest
path, ~1 ms for 10 words at 100k entries). Without numpy it is exact BM25 with MaxScore pruning
over the FTS5 doclists (:mod:`gonka_mux.memory.maxscore`, which says why FTS5's own ``bm25()``
is not used).

Where SQLite lacks FTS5, :class:`~gonka_mux.memory.bm25_fallback.FallbackIndex`
keeps the postings in memory and ranks identically (for queries of up to 8 known words).

Statistics are per namespace, so one namespace's texts never change another's ranking.
"""

from __future__ import annotations

import asyncio
import builtins
import functools
import json
import logging
import os
import sqlite3
import threading
import time
import uuid
from collections import Counter
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from gonka_mux._exceptions import GonkaMuxError
from gonka_mux._paths import state_dir
from gonka_mux._postgres import is_postgres_url
from gonka_mux.memory._bm25 import idf, pack_tokens, tokenize
from gonka_mux.memory.bm25_fallback import FallbackIndex
from gonka_mux.memory.hybrid import (
    Embedder,
    encode_vector,
    reciprocal_rank_fusion,
    similarities,
)
from gonka_mux.memory.maxscore import NamespaceStats, top_k

__all__ = [
    "InvalidMemoryInput",
    "MemoryHit",
    "MemoryItem",
    "MemoryStore",
    "MemoryStoreError",
    "fts5_available",
]

log = logging.getLogger("gonka_mux.memory")

_SCHEMA_VERSION = "1"
_SCHEMA = """
CREATE TABLE IF NOT EXISTS memory_meta (key TEXT PRIMARY KEY, value TEXT NOT NULL) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS memory_namespaces (
    id INTEGER PRIMARY KEY,
    name TEXT NOT NULL UNIQUE,
    docs INTEGER NOT NULL DEFAULT 0,
    tokens INTEGER NOT NULL DEFAULT 0,
    min_length INTEGER
);
CREATE TABLE IF NOT EXISTS memory_entries (
    id INTEGER PRIMARY KEY,
    ns INTEGER NOT NULL,
    key TEXT NOT NULL,
    text TEXT NOT NULL,
    metadata TEXT NOT NULL,
    tokens TEXT NOT NULL,
    length INTEGER NOT NULL,
    vector BLOB,
    created_at REAL NOT NULL,
    updated_at REAL NOT NULL,
    UNIQUE (ns, key)
);
CREATE INDEX IF NOT EXISTS memory_entries_ns_id ON memory_entries (ns, id);
CREATE TABLE IF NOT EXISTS memory_changes (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    ns INTEGER NOT NULL,
    doc INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS memory_terms (
    ns INTEGER NOT NULL,
    term TEXT NOT NULL,
    df INTEGER NOT NULL,
    max_tf INTEGER NOT NULL,
    PRIMARY KEY (ns, term)
) WITHOUT ROWID;
"""
_FTS_TABLE = (
    "CREATE VIRTUAL TABLE IF NOT EXISTS memory_fts USING fts5("
    "body, content='', tokenize='ascii', detail='none', columnsize=0)"
)
_MMAP_BYTES = 256 * 1024 * 1024
# The change log keeps the last _CHANGES_KEPT writes (pruned every _PRUNE_EVERY); an index
# further behind, or with more than _MAX_REPLAY changes to apply, reloads instead.
_CHANGES_KEPT = 100_000
_PRUNE_EVERY = 1000
_MAX_REPLAY = 20_000
_ID_CHUNK = 500  # ids per "IN (...)" list
_SCALAR = (str, int, float, bool, type(None))


class MemoryStoreError(GonkaMuxError):
    """Base class of the memory store's errors."""


class InvalidMemoryInput(MemoryStoreError, ValueError):
    """A namespace, key, text, metadata or filter has the wrong type or shape."""


@dataclass(frozen=True)
class MemoryItem:
    key: str
    text: str
    metadata: dict[str, Any] = field(default_factory=dict)
    created_at: float = 0.0
    updated_at: float = 0.0


@dataclass(frozen=True)
class MemoryHit:
    """One search result; ``score`` is BM25, or the fused reciprocal-rank score when hybrid."""

    key: str
    text: str
    metadata: dict[str, Any]
    score: float


@functools.cache
def fts5_available() -> bool:
    """Whether this Python's SQLite was compiled with FTS5."""
    conn = sqlite3.connect(":memory:")
    try:
        conn.execute("CREATE VIRTUAL TABLE temp.probe USING fts5(x)")
        return True
    except sqlite3.OperationalError:
        return False
    finally:
        conn.close()


def _default_path() -> Path:
    return state_dir() / "memory.sqlite3"


class MemoryStore:
    """Persistent per-namespace memory with BM25 (optionally hybrid) search.

    ``path``: a SQLite file (created with its parent directories), a directory (``memory.sqlite3``
    inside it), a ``postgresql://`` URL (then a
    :class:`~gonka_mux.memory.postgres.PostgresMemoryStore`, same ranking) or ``None`` for
    ``memory.sqlite3`` in the state directory (``$GONKA_MUX_STATE_DIR``, else
    ``$XDG_STATE_HOME/gonka_mux``, else ``~/.local/state/gonka_mux``).

    ``embedder`` turns on hybrid ranking (see :mod:`gonka_mux.memory.hybrid`); ``embedding_model``
    names the model when the embedder is an OpenAI-shaped client. Vectors are compared with the
    query's for the BM25 top ``vector_candidates`` plus the namespace's ``vector_scan_limit`` most
    recently inserted entries: cost stays bounded at 100k entries, at the price that an entry with
    no word in common with the query is found by meaning only while it is among the recent ones.
    Comparing 1000 vectors of 768 floats takes ~25 ms in pure Python, ~1 ms with numpy installed
    (used when present); raise ``vector_scan_limit`` with numpy, or for small namespaces.

    Thread-safe (one connection behind a lock; each call is a short transaction). Several
    processes may share the file (WAL journal, writers wait up to ``timeout`` seconds).
    ``use_numpy``: ``None`` (default) searches in-memory postings arrays with numpy when it is
    installed (``pip install 'gonka-mux[memory]'``; the first search of a namespace loads it,
    ~1 s and ~45 MB per 100k entries; the least recently searched namespaces are dropped
    beyond ``numpy_max_entries`` entries in all), ``False`` never does. Without them,
    ``use_fts5=False`` forces the pure-Python index, ``None`` picks FTS5 when SQLite has it.
    All paths rank alike (the same BM25 floats).
    The async twins (``aput``, ``asearch``...) run the same code in a worker thread.
    """

    def __new__(cls, path: str | os.PathLike[str] | None = None, **options: Any) -> MemoryStore:
        # A postgresql:// URL where a file path is accepted puts the store on PostgreSQL.
        if cls is MemoryStore and is_postgres_url(path):
            from gonka_mux.memory.postgres import PostgresMemoryStore

            return PostgresMemoryStore.__new__(PostgresMemoryStore)
        return super().__new__(cls)

    def __init__(
        self,
        path: str | os.PathLike[str] | None = None,
        *,
        embedder: Any = None,
        embedding_model: str | None = None,
        use_fts5: bool | None = None,
        use_numpy: bool | None = None,
        numpy_max_entries: int = 1_000_000,
        vector_candidates: int = 50,
        vector_scan_limit: int = 1000,
        timeout: float = 30.0,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.path = self._resolve_path(path)
        self._embedder = Embedder(embedder, model=embedding_model) if embedder is not None else None
        self._vector_candidates = max(1, int(vector_candidates))
        self._vector_scan_limit = max(0, int(vector_scan_limit))
        self._clock = clock
        self._lock = threading.RLock()
        self._fts = fts5_available() if use_fts5 is None else bool(use_fts5)
        if self._fts and not fts5_available():
            raise MemoryStoreError(
                "use_fts5=True but this Python's SQLite has no FTS5; pass use_fts5=None."
            )
        if not isinstance(numpy_max_entries, int) or numpy_max_entries < 1:
            raise InvalidMemoryInput(
                f"numpy_max_entries must be a positive int, not {numpy_max_entries!r}."
            )
        self._arrays = _array_index(use_numpy, numpy_max_entries)
        self._arrays_seq = 0  # the last change applied to self._arrays
        self._fallback: FallbackIndex | None = (
            None if self._fts or self._arrays is not None else FallbackIndex()
        )
        self._fallback_version: int | None = None
        self._conn = self._connect(timeout)
        self._closed = False

    def __repr__(self) -> str:
        mode = "numpy" if self._arrays is not None else "fts5" if self._fts else "python-bm25"
        hybrid = ", hybrid" if self._embedder else ""
        return f"MemoryStore(path={str(self.path)!r}, index={mode}{hybrid})"

    @staticmethod
    def _resolve_path(path: str | os.PathLike[str] | None) -> Path | str:
        if path is None:
            return _default_path()
        if str(path) == ":memory:":
            return ":memory:"
        resolved = Path(path).expanduser()
        return resolved / "memory.sqlite3" if resolved.is_dir() else resolved

    def _connect(self, timeout: float) -> sqlite3.Connection:
        if isinstance(self.path, Path):
            self.path.parent.mkdir(parents=True, exist_ok=True)
        conn = sqlite3.connect(
            str(self.path), timeout=timeout, isolation_level=None, check_same_thread=False
        )
        try:
            conn.execute("PRAGMA journal_mode=WAL")
            # WAL + NORMAL: a committed write survives a process crash; only a power loss may
            # drop the last transactions.
            conn.execute("PRAGMA synchronous=NORMAL")
            # Search reads scattered rows; mapping the file avoids a pread() per page (3x faster
            # candidate fetches at 100k entries than the default 2 MB page cache).
            conn.execute(f"PRAGMA mmap_size={_MMAP_BYTES}")
            conn.execute("BEGIN IMMEDIATE")
            for statement in _SCHEMA.split(";"):
                if statement.strip():
                    conn.execute(statement)
            if self._fts:
                conn.execute(_FTS_TABLE)
            conn.execute(
                "INSERT OR IGNORE INTO memory_meta VALUES ('schema_version', ?)", (_SCHEMA_VERSION,)
            )
            if self._fts and self._meta(conn, "fts_synced") != "1":
                self._rebuild_fts(conn)
            conn.execute("COMMIT")
        except BaseException:
            if conn.in_transaction:
                conn.execute("ROLLBACK")
            conn.close()
            raise
        return conn

    @staticmethod
    def _meta(conn: sqlite3.Connection, key: str) -> str | None:
        row = conn.execute("SELECT value FROM memory_meta WHERE key = ?", (key,)).fetchone()
        return row[0] if row else None

    @staticmethod
    def _rebuild_fts(conn: sqlite3.Connection) -> None:
        """(Re)index every entry: a fresh file, or one written by a process without FTS5."""
        log.debug("memory: building the FTS5 index from the stored entries")
        conn.execute("INSERT INTO memory_fts(memory_fts) VALUES ('delete-all')")
        rows = conn.execute("SELECT id, ns, tokens FROM memory_entries")
        conn.executemany(
            "INSERT INTO memory_fts(rowid, body) VALUES (?, ?)",
            ((doc, _fts_body(ns, packed.split())) for doc, ns, packed in rows),
        )
        conn.execute("INSERT OR REPLACE INTO memory_meta VALUES ('fts_synced', '1')")

    # -- lifecycle -------------------------------------------------------------------------

    def close(self) -> None:
        with self._lock:
            if not self._closed:
                self._closed = True
                self._conn.close()

    def __enter__(self) -> MemoryStore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    async def aclose(self) -> None:
        await asyncio.to_thread(self.close)

    async def __aenter__(self) -> MemoryStore:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    @contextmanager
    def _read(self) -> Iterator[sqlite3.Connection]:
        """One read transaction: a search sees one snapshot of the file from start to end."""
        with self._lock:
            self._check_open()
            conn = self._conn
            conn.execute("BEGIN")
            try:
                yield conn
            finally:
                conn.execute("COMMIT")

    @contextmanager
    def _write(self) -> Iterator[sqlite3.Connection]:
        with self._lock:
            self._check_open()
            conn = self._conn
            conn.execute("BEGIN IMMEDIATE")
            try:
                yield conn
            except BaseException:
                conn.execute("ROLLBACK")
                if self._fallback is not None:
                    self._fallback_version = None  # in-memory postings may be ahead: reload
                raise
            conn.execute("COMMIT")

    def _check_open(self) -> None:
        if self._closed:
            raise MemoryStoreError("This MemoryStore is closed; open a new one.")

    # -- writes ----------------------------------------------------------------------------

    def put(
        self,
        namespace: str,
        text: str,
        key: str | None = None,
        metadata: Mapping[str, Any] | None = None,
    ) -> str:
        """Store ``text`` under ``key`` (a new uuid when ``None``), replacing any entry with that
        key in the namespace. Returns the key."""
        return self.put_many(namespace, [{"text": text, "key": key, "metadata": metadata}])[0]

    def put_many(self, namespace: str, items: Iterable[str | Mapping[str, Any]]) -> list[str]:
        """Store several texts in one transaction (and one embedder call). Each item is a text or
        a mapping with ``text`` and optional ``key`` and ``metadata``. Returns the keys."""
        entries = _entries(items)
        vectors = self._embedder.embed([e[1] for e in entries]) if self._embedder else None
        return self._store(namespace, entries, vectors)

    async def aput(
        self,
        namespace: str,
        text: str,
        key: str | None = None,
        metadata: Mapping[str, Any] | None = None,
    ) -> str:
        items = [{"text": text, "key": key, "metadata": metadata}]
        return (await self.aput_many(namespace, items))[0]

    async def aput_many(
        self, namespace: str, items: Iterable[str | Mapping[str, Any]]
    ) -> list[str]:
        entries = _entries(items)
        vectors = await self._embedder.aembed([e[1] for e in entries]) if self._embedder else None
        return await asyncio.to_thread(self._store, namespace, entries, vectors)

    def _store(
        self,
        namespace: str,
        entries: list[tuple[str, str, str]],
        vectors: Sequence[Sequence[float]] | None,
    ) -> list[str]:
        _check_namespace(namespace)
        blobs = [encode_vector(v) for v in vectors] if vectors is not None else None
        now = self._clock()
        keys = []
        with self._write() as conn:
            ns = self._namespace_id(conn, namespace, create=True)
            assert ns is not None
            for i, (key, text, metadata) in enumerate(entries):
                blob = blobs[i] if blobs is not None else None
                self._put_one(conn, ns, key, text, metadata, blob, now)
                keys.append(key)
        return keys

    def _put_one(
        self,
        conn: sqlite3.Connection,
        ns: int,
        key: str,
        text: str,
        metadata: str,
        vector: bytes | None,
        now: float,
    ) -> None:
        tokens = tokenize(text)
        packed = pack_tokens(tokens)
        old = conn.execute(
            "SELECT id, tokens FROM memory_entries WHERE ns = ? AND key = ?", (ns, key)
        ).fetchone()
        if old is not None:
            doc = old[0]
            self._unindex(conn, ns, doc, old[1].split())
            conn.execute(
                "UPDATE memory_entries SET text = ?, metadata = ?, tokens = ?, length = ?, "
                "vector = ?, updated_at = ? WHERE id = ?",
                (text, metadata, packed, len(tokens), vector, now, doc),
            )
        else:
            cursor = conn.execute(
                "INSERT INTO memory_entries "
                "(ns, key, text, metadata, tokens, length, vector, created_at, updated_at) "
                "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (ns, key, text, metadata, packed, len(tokens), vector, now, now),
            )
            doc = cursor.lastrowid
            assert doc is not None
        self._index(conn, ns, doc, tokens)
        _log_change(conn, ns, doc)

    def _index(self, conn: sqlite3.Connection, ns: int, doc: int, tokens: list[str]) -> None:
        counts = Counter(tokens)
        conn.executemany(
            "INSERT INTO memory_terms (ns, term, df, max_tf) VALUES (?, ?, 1, ?) "
            "ON CONFLICT (ns, term) DO UPDATE SET df = df + 1, "
            "max_tf = max(max_tf, excluded.max_tf)",
            [(ns, term, tf) for term, tf in counts.items()],
        )
        conn.execute(
            "UPDATE memory_namespaces SET docs = docs + 1, tokens = tokens + ?, "
            "min_length = min(coalesce(min_length, ?), ?) WHERE id = ?",
            (len(tokens), len(tokens), len(tokens), ns),
        )
        if self._fts:
            conn.execute(
                "INSERT INTO memory_fts (rowid, body) VALUES (?, ?)", (doc, _fts_body(ns, tokens))
            )
        else:
            self._mark_fts_stale(conn)
            if self._fallback is not None:
                self._fallback.add(ns, doc, tokens)

    def _unindex(self, conn: sqlite3.Connection, ns: int, doc: int, tokens: list[str]) -> None:
        terms = [(ns, term) for term in dict.fromkeys(tokens)]
        conn.executemany("UPDATE memory_terms SET df = df - 1 WHERE ns = ? AND term = ?", terms)
        conn.executemany("DELETE FROM memory_terms WHERE ns = ? AND term = ? AND df <= 0", terms)
        # min_length stays: a bound that only loosens remains a valid bound for pruning.
        conn.execute(
            "UPDATE memory_namespaces SET docs = docs - 1, tokens = tokens - ? WHERE id = ?",
            (len(tokens), ns),
        )
        if self._fts:
            conn.execute(
                "INSERT INTO memory_fts (memory_fts, rowid, body) VALUES ('delete', ?, ?)",
                (doc, _fts_body(ns, tokens)),
            )
        else:
            self._mark_fts_stale(conn)
            if self._fallback is not None:
                self._fallback.remove(ns, doc, tokens)

    @staticmethod
    def _mark_fts_stale(conn: sqlite3.Connection) -> None:
        conn.execute("INSERT OR REPLACE INTO memory_meta VALUES ('fts_synced', '0')")

    def _namespace_id(self, conn: sqlite3.Connection, name: str, *, create: bool) -> int | None:
        row = conn.execute("SELECT id FROM memory_namespaces WHERE name = ?", (name,)).fetchone()
        if row is not None:
            return int(row[0])
        if not create:
            return None
        return conn.execute("INSERT INTO memory_namespaces (name) VALUES (?)", (name,)).lastrowid

    def delete(self, namespace: str, key: str) -> bool:
        """Remove the entry; ``False`` when there was none."""
        _check_namespace(namespace)
        _check_key(key)
        with self._write() as conn:
            ns = self._namespace_id(conn, namespace, create=False)
            if ns is None:
                return False
            row = conn.execute(
                "SELECT id, tokens FROM memory_entries WHERE ns = ? AND key = ?", (ns, key)
            ).fetchone()
            if row is None:
                return False
            self._unindex(conn, ns, row[0], row[1].split())
            conn.execute("DELETE FROM memory_entries WHERE id = ?", (row[0],))
            _log_change(conn, ns, row[0])
            return True

    async def adelete(self, namespace: str, key: str) -> bool:
        return await asyncio.to_thread(self.delete, namespace, key)

    def optimize(self) -> None:
        """Merge the search index into one segment, for faster searches after a bulk load.

        FTS5 merges incrementally as entries arrive; this finishes the job (about a second per
        100k entries, during which other writers wait). Optional maintenance, never required.
        """
        with self._write() as conn:
            if self._fts:
                conn.execute("INSERT INTO memory_fts (memory_fts) VALUES ('optimize')")
        with self._lock:
            self._conn.execute("PRAGMA optimize")

    # -- reads -----------------------------------------------------------------------------

    def get(self, namespace: str, key: str) -> MemoryItem | None:
        _check_namespace(namespace)
        _check_key(key)
        with self._lock:
            self._check_open()
            row = self._conn.execute(
                "SELECT e.key, e.text, e.metadata, e.created_at, e.updated_at "
                "FROM memory_entries e JOIN memory_namespaces n ON n.id = e.ns "
                "WHERE n.name = ? AND e.key = ?",
                (namespace, key),
            ).fetchone()
        return _item(row) if row else None

    async def aget(self, namespace: str, key: str) -> MemoryItem | None:
        return await asyncio.to_thread(self.get, namespace, key)

    def namespaces(self) -> builtins.list[str]:
        """Namespaces holding at least one entry, sorted."""
        with self._lock:
            self._check_open()
            rows = self._conn.execute(
                "SELECT name FROM memory_namespaces WHERE docs > 0 ORDER BY name"
            ).fetchall()
        return [r[0] for r in rows]

    def count(self, namespace: str) -> int:
        _check_namespace(namespace)
        with self._lock:
            self._check_open()
            row = self._conn.execute(
                "SELECT docs FROM memory_namespaces WHERE name = ?", (namespace,)
            ).fetchone()
        return int(row[0]) if row else 0

    def search(
        self,
        namespace: str,
        query: str,
        k: int = 5,
        filter: Mapping[str, Any] | None = None,
    ) -> builtins.list[MemoryHit]:
        """The ``k`` entries of ``namespace`` that best match ``query``, best first.

        Ranked by BM25 over the query's words (any characters are accepted: the query is
        tokenized, never parsed as FTS5 syntax), or by BM25 fused with cosine similarity when
        the store has an embedder. ``filter`` keeps entries whose metadata has each given key
        equal to the given scalar value.
        """
        query_vector = None
        if self._embedder is not None and _check_query(query, k):
            query_vector = encode_vector(self._embedder.embed([query])[0])
        return self._search(namespace, query, k, filter, query_vector)

    async def asearch(
        self,
        namespace: str,
        query: str,
        k: int = 5,
        filter: Mapping[str, Any] | None = None,
    ) -> builtins.list[MemoryHit]:
        query_vector = None
        if self._embedder is not None and _check_query(query, k):
            query_vector = encode_vector((await self._embedder.aembed([query]))[0])
        return await asyncio.to_thread(self._search, namespace, query, k, filter, query_vector)

    def _search(
        self,
        namespace: str,
        query: str,
        k: int,
        filter: Mapping[str, Any] | None,
        query_vector: bytes | None,
    ) -> builtins.list[MemoryHit]:
        _check_namespace(namespace)
        if not _check_query(query, k):
            return []
        where, params = _filter_sql(filter)
        terms = list(dict.fromkeys(tokenize(query)))
        with self._read() as conn:
            row = conn.execute(
                "SELECT id, docs, tokens, min_length FROM memory_namespaces WHERE name = ?",
                (namespace,),
            ).fetchone()
            if row is None or row[1] == 0:
                return []
            ns, docs, total, min_length = row
            depth = max(k, self._vector_candidates) if query_vector is not None else k
            ranked = self._bm25(conn, ns, terms, docs, total, min_length, depth, where, params)
            scores = dict(ranked)
            if query_vector is not None:
                order = [doc for doc, _ in ranked]
                by_meaning = self._vector_ranking(conn, ns, order, query_vector, where, params)
                fused = reciprocal_rank_fusion([order, by_meaning])
                top = sorted(fused, key=lambda doc: (-fused[doc], doc))[:k]
                scores = {doc: fused[doc] for doc in top}
            return self._hits(conn, scores)

    def _bm25(
        self,
        conn: sqlite3.Connection,
        ns: int,
        terms: builtins.list[str],
        docs: int,
        total: int,
        min_length: int | None,
        k: int,
        where: str,
        params: builtins.list[Any],
    ) -> builtins.list[tuple[int, float]]:
        if not terms:
            return []
        if self._fallback is not None:
            return self._fallback_search(conn, ns, terms, k, where, params)
        marks = ",".join("?" * len(terms))
        stats = {
            term: (df, max_tf)
            for term, df, max_tf in conn.execute(
                f"SELECT term, df, max_tf FROM memory_terms WHERE ns = ? AND term IN ({marks})",
                (ns, *terms),
            )
        }
        if self._arrays is not None:
            self._sync_arrays(conn, ns, docs, total)
            weights = {t: idf(docs, stats[t][0]) for t in terms if t in stats}
            if not weights:  # no query word in the namespace (its texts may have none: total 0)
                return []
            accept = None
            if where:

                def accept(ids: builtins.list[int]) -> set[int]:
                    return _matching(conn, ids, where, params)

            return self._arrays.search(ns, weights, total / docs, k, accept)
        candidates = (
            "SELECT e.id, e.tokens, e.length FROM memory_fts "
            "CROSS JOIN memory_entries AS e ON e.id = memory_fts.rowid "
            f"WHERE memory_fts MATCH ?{where}"
        )

        def fetch(expr: str, limit: int | None) -> Iterable[tuple[int, str, int]]:
            sql = candidates if limit is None else f"{candidates} LIMIT {int(limit)}"
            return conn.execute(sql, (expr, *params))

        namespace = NamespaceStats(docs=docs, total_length=total, min_length=min_length or 0)
        # Tokens are letters and digits only, so quoting cannot be broken out of.
        return top_k(terms, stats, namespace, k, fetch, lambda t: f'"{ns}x{t}"')

    def _sync_arrays(self, conn: sqlite3.Connection, ns: int, docs: int, total: int) -> None:
        """Bring the in-memory index of ``ns`` to this read transaction's snapshot."""
        index = self._arrays
        assert index is not None
        if index.loaded_namespaces():
            changes = conn.execute(
                "SELECT seq, ns, doc FROM memory_changes WHERE seq > ? ORDER BY seq LIMIT ?",
                (self._arrays_seq, _MAX_REPLAY + 1),
            ).fetchall()
            if changes and (changes[0][0] != self._arrays_seq + 1 or len(changes) > _MAX_REPLAY):
                index.clear()  # the log was pruned past us, or reloading is cheaper
            elif changes:
                self._replay(conn, index, changes)
                self._arrays_seq = changes[-1][0]
        if index.loaded(ns):
            live, length, dead = index.size(ns)
            if live == docs and length == total and dead <= max(1024, live):
                return
            # A writer that keeps no change log (an older gonka_mux), or mostly dead slots.
        if not index.loaded_namespaces():
            self._arrays_seq = conn.execute(
                "SELECT coalesce(max(seq), 0) FROM memory_changes"
            ).fetchone()[0]
        log.debug("memory: loading namespace %d into the in-memory index", ns)
        index.load(
            ns,
            conn.execute(
                "SELECT id, tokens, length FROM memory_entries WHERE ns = ? ORDER BY id", (ns,)
            ),
        )

    @staticmethod
    def _replay(conn: sqlite3.Connection, index: Any, changes: builtins.list[Any]) -> None:
        loaded = set(index.loaded_namespaces())
        touched = dict.fromkeys((ns, doc) for _, ns, doc in changes if ns in loaded)
        current: dict[int, tuple[int, str]] = {}
        for chunk, marks in _id_chunks(sorted({doc for _, doc in touched})):
            for doc, ns, packed in conn.execute(
                f"SELECT id, ns, tokens FROM memory_entries WHERE id IN ({marks})", chunk
            ):
                current[doc] = (ns, packed)
        for ns, doc in touched:
            row = current.get(doc)
            if row is not None and row[0] == ns:
                index.add(ns, doc, row[1].split())
            else:
                index.discard(ns, doc)

    def _fallback_search(
        self,
        conn: sqlite3.Connection,
        ns: int,
        terms: builtins.list[str],
        k: int,
        where: str,
        params: builtins.list[Any],
    ) -> builtins.list[tuple[int, float]]:
        assert self._fallback is not None
        version = conn.execute("PRAGMA data_version").fetchone()[0]
        if version != self._fallback_version:  # first search, or another connection wrote
            self._fallback.clear()
            for doc, doc_ns, packed in conn.execute("SELECT id, ns, tokens FROM memory_entries"):
                self._fallback.add(doc_ns, doc, packed.split())
            self._fallback_version = version
        allowed = None
        if where:
            rows = conn.execute(
                f"SELECT e.id FROM memory_entries e WHERE e.ns = ?{where}", (ns, *params)
            )
            allowed = {r[0] for r in rows}
        return self._fallback.search(ns, terms, k, allowed)

    def _vector_ranking(
        self,
        conn: sqlite3.Connection,
        ns: int,
        lexical: builtins.list[int],
        query_vector: bytes,
        where: str,
        params: builtins.list[Any],
    ) -> builtins.list[int]:
        rows = conn.execute(
            f"SELECT e.id, e.vector FROM memory_entries e WHERE e.ns = ? AND e.vector IS NOT NULL"
            f"{where} ORDER BY e.id DESC LIMIT ?",
            (ns, *params, self._vector_scan_limit),
        ).fetchall()
        seen = {doc for doc, _ in rows}
        missing = [doc for doc in lexical if doc not in seen]
        if missing:
            marks = ",".join("?" * len(missing))
            rows += conn.execute(
                "SELECT id, vector FROM memory_entries "
                f"WHERE vector IS NOT NULL AND id IN ({marks})",
                missing,
            ).fetchall()
        sims = similarities(query_vector, [blob for _, blob in rows])
        ranked = sorted(
            zip(sims, (doc for doc, _ in rows), strict=True), key=lambda p: (-p[0], p[1])
        )
        return [doc for _, doc in ranked]

    @staticmethod
    def _hits(conn: sqlite3.Connection, scores: Mapping[int, float]) -> builtins.list[MemoryHit]:
        if not scores:
            return []
        marks = ",".join("?" * len(scores))
        rows = {
            r[0]: r[1:]
            for r in conn.execute(
                f"SELECT id, key, text, metadata FROM memory_entries WHERE id IN ({marks})",
                list(scores),
            )
        }
        return [
            MemoryHit(key=rows[d][0], text=rows[d][1], metadata=json.loads(rows[d][2]), score=s)
            for d, s in scores.items()
            if d in rows
        ]

    def list(
        self,
        namespace: str,
        *,
        filter: Mapping[str, Any] | None = None,
        limit: int | None = None,
        offset: int = 0,
    ) -> builtins.list[MemoryItem]:
        """Entries of the namespace in insertion order (an update keeps the entry's place)."""
        _check_namespace(namespace)
        where, params = _filter_sql(filter)
        with self._lock:
            self._check_open()
            rows = self._conn.execute(
                "SELECT e.key, e.text, e.metadata, e.created_at, e.updated_at "
                "FROM memory_namespaces n JOIN memory_entries e ON e.ns = n.id "
                f"WHERE n.name = ?{where} ORDER BY e.id LIMIT ? OFFSET ?",
                (namespace, *params, -1 if limit is None else max(0, limit), max(0, offset)),
            ).fetchall()
        return [_item(r) for r in rows]

    async def alist(
        self,
        namespace: str,
        *,
        filter: Mapping[str, Any] | None = None,
        limit: int | None = None,
        offset: int = 0,
    ) -> builtins.list[MemoryItem]:
        return await asyncio.to_thread(
            self.list, namespace, filter=filter, limit=limit, offset=offset
        )


# -- helpers -------------------------------------------------------------------------------


def _array_index(use_numpy: bool | None, max_entries: int) -> Any:
    """An :class:`~gonka_mux.memory.array_index.ArrayIndex` when numpy is wanted and there."""
    if use_numpy is False:
        return None
    try:
        from gonka_mux.memory.array_index import ArrayIndex
    except ImportError:
        if use_numpy:
            raise MemoryStoreError(
                "use_numpy=True but numpy is not installed: pip install 'gonka-mux[memory]'."
            ) from None
        return None
    return ArrayIndex(max_slots=max_entries)


def _log_change(conn: sqlite3.Connection, ns: int, doc: int) -> None:
    """Note a written entry for the in-memory indexes of every process sharing the file."""
    seq = conn.execute("INSERT INTO memory_changes (ns, doc) VALUES (?, ?)", (ns, doc)).lastrowid
    if seq is not None and seq % _PRUNE_EVERY == 0:
        conn.execute("DELETE FROM memory_changes WHERE seq <= ?", (seq - _CHANGES_KEPT,))


def _id_chunks(ids: builtins.list[int]) -> Iterator[tuple[builtins.list[int], str]]:
    """``ids`` in slices of at most ``_ID_CHUNK``, each with its ``?,?,...`` placeholders."""
    for start in range(0, len(ids), _ID_CHUNK):
        chunk = ids[start : start + _ID_CHUNK]
        yield chunk, ",".join("?" * len(chunk))


def _matching(
    conn: sqlite3.Connection, ids: builtins.list[int], where: str, params: builtins.list[Any]
) -> set[int]:
    """Which of the entry ``ids`` pass a metadata filter (``where``, from :func:`_filter_sql`)."""
    found: set[int] = set()
    for chunk, marks in _id_chunks(ids):
        rows = conn.execute(
            f"SELECT e.id FROM memory_entries e WHERE e.id IN ({marks}){where}", (*chunk, *params)
        )
        found.update(r[0] for r in rows)
    return found


def _fts_body(ns: int, tokens: Iterable[str]) -> str:
    """Distinct tokens (first-occurrence order, so a later delete rebuilds the same string)."""
    return " ".join(f"{ns}x{t}" for t in dict.fromkeys(tokens))


def _filter_items(filter: Mapping[str, Any] | None) -> builtins.list[tuple[str, Any]]:
    """A metadata filter's ``(key, scalar value)`` pairs, validated (both stores' SQL quotes
    neither keys with quotes or backslashes nor non-scalar values)."""
    if not filter:
        return []
    if not isinstance(filter, Mapping):
        raise InvalidMemoryInput(
            f"filter must be a mapping of metadata key to value, not {type(filter).__name__}."
        )
    for key, value in filter.items():
        if not isinstance(key, str) or '"' in key or "\\" in key:
            raise InvalidMemoryInput(
                f"filter key {key!r} must be a string without quotes or backslashes."
            )
        if not isinstance(value, _SCALAR):
            raise InvalidMemoryInput(
                f"filter value for {key!r} must be a str, int, float, bool or None "
                f"(equality match), not {type(value).__name__}."
            )
    return list(filter.items())


def _filter_sql(filter: Mapping[str, Any] | None) -> tuple[str, builtins.list[Any]]:
    clauses: builtins.list[str] = []
    params: builtins.list[Any] = []
    for key, value in _filter_items(filter):
        path = f'$."{key}"'
        # JSON types are compared too, as PostgreSQL's jsonb does: json_extract() turns true
        # into 1, which must not match a filter value of 1 (nor True a stored 1), and a stored
        # object comes back as its JSON text, which must not match that text as a str.
        if isinstance(value, bool):
            clauses.append(" AND json_type(e.metadata, ?) = ?")
            params += [path, "true" if value else "false"]
        elif value is None:  # a missing key and a JSON null both match
            clauses.append(" AND json_extract(e.metadata, ?) IS NULL")
            params.append(path)
        else:
            kinds = "'text'" if isinstance(value, str) else "'integer', 'real'"
            clauses.append(
                f" AND json_extract(e.metadata, ?) = ? AND json_type(e.metadata, ?) IN ({kinds})"
            )
            params += [path, value, path]
    return "".join(clauses), params


def _entries(items: Iterable[str | Mapping[str, Any]]) -> builtins.list[tuple[str, str, str]]:
    """Validate and normalize to ``(key, text, metadata JSON)``."""
    if isinstance(items, (str, Mapping)):
        raise InvalidMemoryInput("put_many takes an iterable of items, not a single item.")
    entries = []
    for item in items:
        if isinstance(item, str):
            text, key, metadata = item, None, None
        elif isinstance(item, Mapping):
            text, key, metadata = item.get("text"), item.get("key"), item.get("metadata")
        else:
            raise InvalidMemoryInput(
                f"Each item must be a text or a mapping with 'text', not {type(item).__name__}."
            )
        if not isinstance(text, str):
            raise InvalidMemoryInput(f"text must be a str, not {type(text).__name__}.")
        if key is None:
            key = uuid.uuid4().hex
        _check_key(key)
        entries.append((key, text, _metadata_json(metadata)))
    return entries


def _metadata_json(metadata: Mapping[str, Any] | None) -> str:
    if metadata is None:
        return "{}"
    if not isinstance(metadata, Mapping) or not all(isinstance(k, str) for k in metadata):
        raise InvalidMemoryInput("metadata must be a mapping with str keys (or None).")
    try:
        return json.dumps(dict(metadata), ensure_ascii=False, allow_nan=False)
    except (TypeError, ValueError) as exc:
        raise InvalidMemoryInput(f"metadata must be JSON-serializable: {exc}") from None


def _check_namespace(namespace: object) -> None:
    if not isinstance(namespace, str) or not namespace:
        raise InvalidMemoryInput(f"namespace must be a non-empty str, not {namespace!r}.")


def _check_key(key: object) -> None:
    if not isinstance(key, str) or not key:
        raise InvalidMemoryInput(
            f"key must be a non-empty str (or None to generate one), not {key!r}."
        )


def _check_query(query: object, k: object) -> bool:
    """Validate; ``False`` when the search trivially has no result."""
    if not isinstance(query, str):
        raise InvalidMemoryInput(f"query must be a str, not {type(query).__name__}.")
    if not isinstance(k, int) or isinstance(k, bool) or k < 0:
        raise InvalidMemoryInput(f"k must be a non-negative int, not {k!r}.")
    return k > 0 and bool(query.strip())


def _item(row: Sequence[Any]) -> MemoryItem:
    return MemoryItem(
        key=row[0],
        text=row[1],
        metadata=json.loads(row[2]),
        created_at=row[3],
        updated_at=row[4],
    )
