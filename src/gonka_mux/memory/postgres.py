"""Long-term memory on PostgreSQL: the :class:`~gonka_mux.memory.MemoryStore` interface, with the
same BM25 ranking as the SQLite store, shared by processes on many hosts.

``MemoryStore("postgresql://...")`` (and so ``[memory] path`` and ``enable_memory(url)``) makes one.

Tables (prefixed ``gonka_mux_memory_``):

- ``entries``: the source of truth, as in SQLite (the packed token list included);
- ``namespaces`` and ``terms``: the same per-namespace BM25 statistics (documents, total and
  shortest length; per term its document frequency and highest term frequency);
- ``postings``: ``(ns, term, doc)``, the index that says which documents hold a term (FTS5's
  doclists in the SQLite store). The term frequency is not kept there: a candidate is scored from
  its packed tokens with the very function the SQLite store uses.

Search runs the SQLite store's MaxScore (:func:`~gonka_mux.memory.maxscore.top_k`) unchanged: it
asks for documents matching FTS5-style expressions (``"a" AND ("b" OR "c") NOT ("d")``), which are
answered here in SQL: candidates come from the postings of a few "cover" terms (the cheapest set
of terms every match must hold one of), and the rest of the expression is checked with index
probes. Same tokenizer, same statistics, same scoring function, same pruning: the same top-k, with
bit-identical scores, as the SQLite store holding the same entries.

Writes to one namespace are serialized on its ``namespaces`` row (statistics stay exact).
Connections: a small pool of our own (see :mod:`gonka_mux.sessions.postgres` for why not
``psycopg_pool``): a stopped server fails a call at once with
:class:`~gonka_mux.errors.StoreUnavailableError`, and the next call after it is back reconnects.
A frozen server (SIGSTOPped, hung host) accepts nothing and answers nothing while its kernel keeps
the TCP connections open, so neither keepalives nor ``statement_timeout`` end the wait: each
operation has a deadline (``operation_timeout``), past which a watchdog thread shuts the
connection's socket down and the call fails with ``StoreUnavailableError``. ``statement_timeout``
is set to the same bound for a live but slow server.
"""

from __future__ import annotations

import asyncio
import builtins
import contextlib
import json
import logging
import os
import re
import socket
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from typing import Any

from gonka_mux._postgres import redact_url, require_psycopg
from gonka_mux.memory._bm25 import pack_tokens, tokenize
from gonka_mux.memory.hybrid import (
    Embedder,
    encode_vector,
    reciprocal_rank_fusion,
    similarities,
)
from gonka_mux.memory.maxscore import NamespaceStats, top_k
from gonka_mux.memory.store import (
    InvalidMemoryInput,
    MemoryHit,
    MemoryItem,
    MemoryStore,
    MemoryStoreError,
    _check_key,
    _check_namespace,
    _check_query,
    _filter_items,
)
from gonka_mux.sessions.postgres import pg_unavailable

__all__ = ["PostgresMemoryStore"]

log = logging.getLogger("gonka_mux.memory")

_P = "gonka_mux_memory_"
_SCHEMA = [
    f"CREATE TABLE IF NOT EXISTS {_P}namespaces ("
    ' id BIGSERIAL PRIMARY KEY, name TEXT COLLATE "C" NOT NULL UNIQUE,'
    " docs BIGINT NOT NULL DEFAULT 0, tokens BIGINT NOT NULL DEFAULT 0, min_length BIGINT)",
    f"CREATE TABLE IF NOT EXISTS {_P}entries ("
    ' id BIGSERIAL PRIMARY KEY, ns BIGINT NOT NULL, key TEXT COLLATE "C" NOT NULL,'
    " text TEXT NOT NULL, metadata JSONB NOT NULL, tokens TEXT NOT NULL,"
    " length INTEGER NOT NULL, vector BYTEA, created_at DOUBLE PRECISION NOT NULL,"
    " updated_at DOUBLE PRECISION NOT NULL, UNIQUE (ns, key))",
    f"CREATE INDEX IF NOT EXISTS {_P}entries_ns_id ON {_P}entries (ns, id)",
    f"CREATE TABLE IF NOT EXISTS {_P}terms ("
    ' ns BIGINT NOT NULL, term TEXT COLLATE "C" NOT NULL, df BIGINT NOT NULL,'
    " max_tf INTEGER NOT NULL, PRIMARY KEY (ns, term))",
    f"CREATE TABLE IF NOT EXISTS {_P}postings ("
    ' ns BIGINT NOT NULL, term TEXT COLLATE "C" NOT NULL, doc BIGINT NOT NULL,'
    " PRIMARY KEY (ns, term, doc))",
]
_SCHEMA_LOCK = 0x676F6E6B61_02

# Locks (creating) the namespace row, which serializes the namespace's writers, and finds the
# entries the batch replaces.
_LOCK_NAMESPACE = (
    f"WITH n AS (INSERT INTO {_P}namespaces (name) VALUES (%(name)s)"
    " ON CONFLICT (name) DO UPDATE SET name = excluded.name RETURNING id)"
    f" SELECT n.id, e.key, e.id, e.tokens FROM n LEFT JOIN {_P}entries e"
    " ON e.ns = n.id AND e.key = ANY(%(keys)s::text[])"
)
# Index one document (new or rewritten): postings, term statistics, namespace statistics.
# Terms are upserted in sorted order, so two transactions never lock them in opposite orders.
_INDEX_TAIL = (
    f" p AS (INSERT INTO {_P}postings (ns, term, doc)"
    " SELECT %(ns)s, t, d.id FROM d, unnest(%(terms)s::text[]) AS t),"
    f" s AS (UPDATE {_P}namespaces SET docs = docs + 1, tokens = tokens + %(length)s,"
    " min_length = least(coalesce(min_length, %(length)s), %(length)s) WHERE id = %(ns)s)"
    f" INSERT INTO {_P}terms AS old (ns, term, df, max_tf)"
    " SELECT %(ns)s, u.t, 1, u.tf FROM unnest(%(terms)s::text[], %(tfs)s::int[]) AS u(t, tf)"
    " ORDER BY u.t ON CONFLICT (ns, term) DO UPDATE SET df = old.df + 1,"
    " max_tf = greatest(old.max_tf, excluded.max_tf)"
)
_INSERT = (
    f"WITH d AS (INSERT INTO {_P}entries"
    " (ns, key, text, metadata, tokens, length, vector, created_at, updated_at)"
    " VALUES (%(ns)s, %(key)s, %(text)s, %(metadata)s::jsonb, %(packed)s, %(length)s,"
    " %(vector)s, %(now)s, %(now)s) RETURNING id)," + _INDEX_TAIL
)
_REWRITE = (
    f"WITH d AS (UPDATE {_P}entries SET text = %(text)s, metadata = %(metadata)s::jsonb,"
    " tokens = %(packed)s, length = %(length)s, vector = %(vector)s, updated_at = %(now)s"
    " WHERE id = %(doc)s RETURNING id)," + _INDEX_TAIL
)
# Remove one document's contribution (before a rewrite or a delete).
_UNINDEX = (
    f"WITH p AS (DELETE FROM {_P}postings WHERE ns = %(ns)s AND term = ANY(%(terms)s::text[])"
    " AND doc = %(doc)s),"
    f" s AS (UPDATE {_P}namespaces SET docs = docs - 1, tokens = tokens - %(length)s"
    " WHERE id = %(ns)s)"
    f" UPDATE {_P}terms SET df = df - 1 WHERE ns = %(ns)s AND term = ANY(%(terms)s::text[])"
)
_DROP_TERMS = (
    f"DELETE FROM {_P}terms WHERE ns = %(ns)s AND term = ANY(%(terms)s::text[]) AND df <= 0"
)

_PROBE_AFTER = 1.0
_MAX_IDLE = 8


class _Watchdog:
    """One daemon thread that cuts the socket of a connection whose operation outlives its
    deadline: the psycopg call waiting on it then fails at once (OperationalError)."""

    def __init__(self) -> None:
        self._cond = threading.Condition()
        self._deadlines: dict[int, tuple[float, Any]] = {}
        self._tokens = iter(range(1 << 62))
        self._thread: threading.Thread | None = None

    @contextlib.contextmanager
    def watch(self, conn: Any, seconds: float) -> Iterator[None]:
        with self._cond:
            token = next(self._tokens)
            self._deadlines[token] = (time.monotonic() + seconds, conn)
            if self._thread is None:
                self._thread = threading.Thread(
                    target=self._run, name="gonka-mux-memory-pg-watchdog", daemon=True
                )
                self._thread.start()
            elif len(self._deadlines) == 1:
                self._cond.notify()  # the thread sleeps without a deadline
        try:
            yield
        finally:
            with self._cond:
                cut = self._deadlines.pop(token, None) is None
            if cut:  # too late, the socket is gone: never hand this connection out again
                _close_quietly(conn)

    def _run(self) -> None:
        with self._cond:
            while True:
                now = time.monotonic()
                expired = [t for t, (due, _) in self._deadlines.items() if due <= now]
                for token in expired:
                    # Under the lock: the operation cannot finish and close (and its file
                    # descriptor be reused) while its socket is being shut down.
                    _cut(self._deadlines.pop(token)[1])
                upcoming = [due for due, _ in self._deadlines.values()]
                self._cond.wait(min(upcoming) - now if upcoming else None)


def _cut(conn: Any) -> None:
    log.warning("memory store: an operation passed its deadline; dropping its connection")
    with contextlib.suppress(Exception):
        # A duplicate of the descriptor: shutdown() acts on the socket both share.
        sock = socket.socket(fileno=os.dup(conn.pgconn.socket))
        try:
            sock.shutdown(socket.SHUT_RDWR)
        finally:
            sock.close()


_WATCHDOG = _Watchdog()

# The FTS5 expressions maxscore.top_k builds: phrases, AND, OR, NOT, parentheses.
_EXPR_TOKEN = re.compile(r'\s*(?:"([^"]*)"|(AND|OR|NOT)\b|(\()|(\)))')


class _Pool:
    """Idle connections behind a lock, at most ``max_size`` in use at once (any thread)."""

    def __init__(
        self, url: str, max_size: int, connect_timeout: float, operation_timeout: float
    ) -> None:
        self.url = url
        self.connect_timeout = connect_timeout
        self.operation_timeout = operation_timeout
        self.lock = threading.Lock()
        self.idle: list[tuple[Any, float]] = []
        self.slots = threading.BoundedSemaphore(max_size)
        self.closed = False

    def connect(self) -> Any:
        psycopg = require_psycopg()
        conn = psycopg.Connection.connect(
            self.url,
            autocommit=True,
            connect_timeout=max(2, int(self.connect_timeout)),
            keepalives=1,
            keepalives_idle=10,
            keepalives_interval=5,
            keepalives_count=3,
        )
        try:
            with _WATCHDOG.watch(conn, self.operation_timeout):
                # Set here, not in the URL's options (which stay the user's): a live server
                # cancels a statement running past the bound itself.
                conn.execute(
                    "SELECT set_config('statement_timeout', %s, false)",
                    (f"{max(1, int(self.operation_timeout * 1000))}ms",),
                )
        except BaseException:
            _close_quietly(conn)
            raise
        return conn

    @contextlib.contextmanager
    def connection(self, timeout: float) -> Iterator[Any]:
        if not self.slots.acquire(timeout=timeout):
            raise TimeoutError(f"no free PostgreSQL connection within {timeout:g} s")
        try:
            conn = self._checkout()
            try:
                yield conn
            except BaseException:
                self._checkin(conn)
                raise
            self._checkin(conn)
        finally:
            self.slots.release()

    def _checkout(self) -> Any:
        while True:
            with self.lock:
                if not self.idle:
                    break
                conn, since = self.idle.pop()
            if conn.closed:
                continue
            if time.monotonic() - since > _PROBE_AFTER:
                try:  # the server may have restarted since this connection was last used
                    with _WATCHDOG.watch(conn, self.operation_timeout):
                        conn.execute("SELECT 1")
                except Exception:
                    _close_quietly(conn)
                    self.drop_idle()
                    break
            return conn
        return self.connect()

    def _checkin(self, conn: Any) -> None:
        with self.lock:
            reusable = not self.closed and not conn.closed and len(self.idle) < _MAX_IDLE
            if reusable and conn.info.transaction_status == 0:
                self.idle.append((conn, time.monotonic()))
                return
        _close_quietly(conn)

    def drop_idle(self) -> None:
        with self.lock:
            idle, self.idle = self.idle, []
        for conn, _ in idle:
            _close_quietly(conn)


def _close_quietly(conn: Any) -> None:
    with contextlib.suppress(Exception):
        conn.close()


def _check_text(value: str, what: str) -> None:
    if "\x00" in value:
        raise InvalidMemoryInput(f"{what} must not contain NUL characters (PostgreSQL).")


class PostgresMemoryStore(MemoryStore):
    """:class:`~gonka_mux.memory.MemoryStore` on a PostgreSQL database (see the module docs).

    Made by ``MemoryStore(url)`` or directly. ``timeout``: seconds to wait for a free connection
    (``max_connections`` per store); a refused or dropped connection fails at once with
    :class:`~gonka_mux.errors.StoreUnavailableError`, and so does an operation still unanswered
    after ``operation_timeout`` seconds (a frozen server; also the server-side
    ``statement_timeout``). ``use_fts5``, ``use_numpy`` and ``numpy_max_entries`` (the SQLite
    store's search paths) are accepted and ignored, so one set of options fits both stores.
    """

    def __new__(cls, *args: Any, **kwargs: Any) -> PostgresMemoryStore:
        return object.__new__(cls)

    def __init__(
        self,
        path: str,
        *,
        embedder: Any = None,
        embedding_model: str | None = None,
        use_fts5: bool | None = None,
        use_numpy: bool | None = None,
        numpy_max_entries: int = 1_000_000,
        vector_candidates: int = 50,
        vector_scan_limit: int = 1000,
        timeout: float = 10.0,
        connect_timeout: float = 3.0,
        operation_timeout: float = 10.0,
        max_connections: int = 10,
        clock: Callable[[], float] = time.time,
    ) -> None:
        require_psycopg()
        self.path = path
        self._url = str(path)
        self._embedder = Embedder(embedder, model=embedding_model) if embedder is not None else None
        self._vector_candidates = max(1, int(vector_candidates))
        self._vector_scan_limit = max(0, int(vector_scan_limit))
        self._clock = clock
        self._timeout = float(timeout)
        if not operation_timeout > 0:
            raise InvalidMemoryInput(
                "operation_timeout must be a positive number of seconds, "
                f"not {operation_timeout!r}."
            )
        self._pool = _Pool(
            self._url,
            max(1, int(max_connections)),
            float(connect_timeout),
            float(operation_timeout),
        )
        self._schema_ready = False
        self._closed = False

    def __repr__(self) -> str:
        hybrid = ", hybrid" if self._embedder else ""
        return f"PostgresMemoryStore(url={redact_url(self._url)!r}, index=postings{hybrid})"

    # -- plumbing --------------------------------------------------------------------------

    @contextlib.contextmanager
    def _connection(self) -> Iterator[Any]:
        """A connection, with connection failures typed as StoreUnavailableError."""
        if self._closed:
            raise MemoryStoreError("This MemoryStore is closed; open a new one.")
        psycopg = require_psycopg()
        try:
            with (
                self._pool.connection(self._timeout) as conn,
                _WATCHDOG.watch(conn, self._pool.operation_timeout),
            ):
                if not self._schema_ready:
                    self._create_schema(conn)
                yield conn
        except (psycopg.OperationalError, psycopg.InterfaceError, OSError, TimeoutError) as exc:
            if isinstance(exc, psycopg.errors.DeadlockDetected):
                raise  # not an outage (cannot happen with the namespace lock; kept visible)
            self._pool.drop_idle()
            log.warning(
                "memory store %s unavailable: %s", redact_url(self._url), type(exc).__name__
            )
            raise pg_unavailable(exc, self._url) from None

    def _create_schema(self, conn: Any) -> None:
        with conn.transaction():
            conn.execute("SELECT pg_advisory_xact_lock(%s)", (_SCHEMA_LOCK,))
            for statement in _SCHEMA:
                conn.execute(statement)
        self._schema_ready = True

    # -- lifecycle -------------------------------------------------------------------------

    def close(self) -> None:
        self._closed = True
        self._pool.closed = True  # connections still in use are closed when handed back
        self._pool.drop_idle()

    async def aclose(self) -> None:
        await asyncio.to_thread(self.close)

    # -- writes ----------------------------------------------------------------------------

    def _store(
        self,
        namespace: str,
        entries: builtins.list[tuple[str, str, str]],
        vectors: Sequence[Sequence[float]] | None,
    ) -> builtins.list[str]:
        _check_namespace(namespace)
        _check_text(namespace, "namespace")
        for key, text, metadata in entries:
            _check_text(key, "key")
            _check_text(text, "text")
            if "\\u0000" in metadata:
                raise InvalidMemoryInput("metadata must not contain NUL characters (PostgreSQL).")
        blobs = [encode_vector(v) for v in vectors] if vectors is not None else None
        if not entries:
            return []
        now = self._clock()
        keys = [key for key, _, _ in entries]
        with self._connection() as conn, conn.transaction(), conn.pipeline() as pipeline:
            rows = conn.execute(
                _LOCK_NAMESPACE, {"name": namespace, "keys": list(dict.fromkeys(keys))}
            ).fetchall()
            ns = int(rows[0][0])
            # key -> (doc id or None when written in this batch, its packed tokens)
            existing: dict[str, tuple[int | None, str]] = {
                key: (doc, packed) for _, key, doc, packed in rows if key is not None
            }
            for i, (key, text, metadata) in enumerate(entries):
                tokens = tokenize(text)
                counts = Counter(tokens)
                terms = sorted(counts)
                packed = pack_tokens(tokens)
                params = {
                    "ns": ns,
                    "key": key,
                    "text": text,
                    "metadata": metadata,
                    "packed": packed,
                    "length": len(tokens),
                    "vector": blobs[i] if blobs is not None else None,
                    "now": now,
                    "terms": terms,
                    "tfs": [counts[t] for t in terms],
                }
                old = existing.get(key)
                doc = None
                if old is None:
                    conn.execute(_INSERT, params)
                else:
                    doc, old_packed = old
                    if doc is None:  # the same key twice in one batch: find the first's id
                        pipeline.sync()
                        doc = conn.execute(
                            f"SELECT id FROM {_P}entries WHERE ns = %s AND key = %s", (ns, key)
                        ).fetchone()[0]
                    old_tokens = old_packed.split()
                    old_terms = list(dict.fromkeys(old_tokens))
                    unindex = {"ns": ns, "doc": doc, "terms": old_terms, "length": len(old_tokens)}
                    conn.execute(_UNINDEX, unindex)
                    conn.execute(_DROP_TERMS, unindex)
                    conn.execute(_REWRITE, {**params, "doc": doc})
                existing[key] = (None if old is None else doc, packed)
        return keys

    def delete(self, namespace: str, key: str) -> bool:
        """Remove the entry; ``False`` when there was none."""
        _check_namespace(namespace)
        _check_key(key)
        if "\x00" in namespace or "\x00" in key:
            return False
        with self._connection() as conn, conn.transaction():
            row = conn.execute(
                f"SELECT n.id, e.id, e.tokens FROM {_P}namespaces n JOIN {_P}entries e"
                " ON e.ns = n.id WHERE n.name = %s AND e.key = %s FOR UPDATE OF n",
                (namespace, key),
            ).fetchone()
            if row is None:
                return False
            ns, doc, packed = row
            tokens = packed.split()
            params = {"ns": ns, "doc": doc, "terms": list(dict.fromkeys(tokens))}
            conn.execute(_UNINDEX, {**params, "length": len(tokens)})
            conn.execute(_DROP_TERMS, params)
            conn.execute(f"DELETE FROM {_P}entries WHERE id = %s", (doc,))
            return True

    def optimize(self) -> None:
        """Refresh the planner's statistics and the visibility map after a bulk load (index-only
        scans of the postings need it). Optional maintenance, never required."""
        with self._connection() as conn:
            for table in ("namespaces", "entries", "terms", "postings"):
                conn.execute(f"VACUUM ANALYZE {_P}{table}")

    # -- reads -----------------------------------------------------------------------------

    def get(self, namespace: str, key: str) -> MemoryItem | None:
        _check_namespace(namespace)
        _check_key(key)
        if "\x00" in namespace or "\x00" in key:
            return None
        with self._connection() as conn:
            row = conn.execute(
                "SELECT e.key, e.text, e.metadata::text, e.created_at, e.updated_at"
                f" FROM {_P}entries e JOIN {_P}namespaces n ON n.id = e.ns"
                " WHERE n.name = %s AND e.key = %s",
                (namespace, key),
            ).fetchone()
        return _item(row) if row else None

    def namespaces(self) -> builtins.list[str]:
        """Namespaces holding at least one entry, sorted."""
        with self._connection() as conn:
            rows = conn.execute(
                f"SELECT name FROM {_P}namespaces WHERE docs > 0 ORDER BY name"
            ).fetchall()
        return [r[0] for r in rows]

    def count(self, namespace: str) -> int:
        _check_namespace(namespace)
        if "\x00" in namespace:
            return 0
        with self._connection() as conn:
            row = conn.execute(
                f"SELECT docs FROM {_P}namespaces WHERE name = %s", (namespace,)
            ).fetchone()
        return int(row[0]) if row else 0

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
        if "\x00" in namespace:
            return []
        with self._connection() as conn:
            rows = conn.execute(
                "SELECT e.key, e.text, e.metadata::text, e.created_at, e.updated_at"
                f" FROM {_P}namespaces n JOIN {_P}entries e ON e.ns = n.id"
                f" WHERE n.name = %s{where} ORDER BY e.id LIMIT %s OFFSET %s",
                (namespace, *params, None if limit is None else max(0, limit), max(0, offset)),
            ).fetchall()
        return [_item(r) for r in rows]

    def _search(
        self,
        namespace: str,
        query: str,
        k: int,
        filter: Mapping[str, Any] | None,
        query_vector: bytes | None,
    ) -> builtins.list[MemoryHit]:
        _check_namespace(namespace)
        if not _check_query(query, k) or "\x00" in namespace:
            return []
        where, params = _filter_sql(filter)
        terms = list(dict.fromkeys(tokenize(query)))
        with self._connection() as conn:
            rows = conn.execute(
                "SELECT n.id, n.docs, n.tokens, n.min_length, t.term, t.df, t.max_tf"
                f" FROM {_P}namespaces n LEFT JOIN {_P}terms t"
                " ON t.ns = n.id AND t.term = ANY(%s::text[]) WHERE n.name = %s",
                (terms, namespace),
            ).fetchall()
            if not rows or rows[0][1] == 0:
                return []
            ns, docs, total, min_length = rows[0][:4]
            stats = {r[4]: (int(r[5]), int(r[6])) for r in rows if r[4] is not None}
            depth = max(k, self._vector_candidates) if query_vector is not None else k
            ranked = self._bm25(
                conn, ns, terms, stats, docs, total, min_length, depth, where, params
            )
            scores = dict(ranked)
            if query_vector is not None:
                order = [doc for doc, _ in ranked]
                by_meaning = self._vector_ranking(conn, ns, order, query_vector, where, params)
                fused = reciprocal_rank_fusion([order, by_meaning])
                top = sorted(fused, key=lambda doc: (-fused[doc], doc))[:k]
                scores = {doc: fused[doc] for doc in top}
            return self._pg_hits(conn, scores)

    def _bm25(  # type: ignore[override]
        self,
        conn: Any,
        ns: int,
        terms: builtins.list[str],
        stats: Mapping[str, tuple[int, int]],
        docs: int,
        total: int,
        min_length: int | None,
        k: int,
        where: str,
        params: builtins.list[Any],
    ) -> builtins.list[tuple[int, float]]:
        if not terms or not stats:
            return []
        df = {term: value[0] for term, value in stats.items()}

        def fetch(expr: str, limit: int | None) -> Iterable[tuple[int, str, int]]:
            node = _parse(expr)
            cover = _cover(node, df)
            probes: dict[str, str] = {}
            predicate = _predicate(node, cover if len(cover) == 1 else (), probes)
            # The documents first, from the postings alone (index-only probes), then the rows
            # of those that match: reading an entry costs more than probing a posting.
            if len(cover) == 1:
                source = f"{_P}postings c"
                where_c = "c.ns = %s AND c.term = %s"
                cover_args: builtins.list[Any] = [ns, cover[0]]
            else:
                source = (
                    f"(SELECT DISTINCT doc FROM {_P}postings"
                    " WHERE ns = %s AND term = ANY(%s::text[])) c"
                )
                where_c = "true"
                cover_args = [ns, cover]
            head: builtins.list[Any] = list(cover_args)
            mentions = sum(predicate.count(column) for column in probes.values())
            lateral = []
            for i, (term, column) in enumerate(probes.items()):
                # A per-row index probe (OFFSET 0: never a hash of a common term's whole
                # posting list, which the planner may build once per mention).
                probe = (
                    f"EXISTS (SELECT 1 FROM {_P}postings q WHERE q.ns = {int(ns)}"
                    f" AND q.term = {_quote_term(term)} AND q.doc = c.doc OFFSET 0)"
                )
                if mentions > 2 * len(probes):
                    # MaxScore's filters can name a term in dozens of alternatives: probe each
                    # term once per document, then combine the answers.
                    lateral.append(f"{probe} AS t{i}")
                    predicate = predicate.replace(column, f"m.t{i}")
                else:  # inline, so AND / OR stop probing once the answer is known
                    predicate = predicate.replace(column, probe)
            if lateral:
                source += f" CROSS JOIN LATERAL (SELECT {', '.join(lateral)} OFFSET 0) m"
            doc_sql = f"SELECT c.doc FROM {source} WHERE {where_c}"
            if predicate:
                doc_sql += f" AND ({predicate})"
            tail = ""
            if limit is not None:
                if where:  # the limit counts the rows that pass the filter
                    tail = f" ORDER BY e.id LIMIT {int(limit)}"
                else:
                    doc_sql += f" ORDER BY c.doc LIMIT {int(limit)}"
            sql = (
                f"SELECT e.id, e.tokens, e.length FROM ({doc_sql} OFFSET 0) d"
                f" JOIN {_P}entries e ON e.id = d.doc WHERE true{where}{tail}"
            )
            return conn.execute(sql, (*head, *params)).fetchall()  # type: ignore[no-any-return]

        namespace = NamespaceStats(docs=docs, total_length=total, min_length=min_length or 0)
        return top_k(terms, stats, namespace, k, fetch, lambda t: f'"{t}"')

    def _vector_ranking(
        self,
        conn: Any,
        ns: int,
        lexical: builtins.list[int],
        query_vector: bytes,
        where: str,
        params: builtins.list[Any],
    ) -> builtins.list[int]:
        rows = conn.execute(
            f"SELECT e.id, e.vector FROM {_P}entries e WHERE e.ns = %s AND e.vector IS NOT NULL"
            f"{where} ORDER BY e.id DESC LIMIT %s",
            (ns, *params, self._vector_scan_limit),
        ).fetchall()
        seen = {doc for doc, _ in rows}
        missing = [doc for doc in lexical if doc not in seen]
        if missing:
            rows += conn.execute(
                f"SELECT id, vector FROM {_P}entries"
                " WHERE vector IS NOT NULL AND id = ANY(%s::bigint[])",
                (missing,),
            ).fetchall()
        sims = similarities(query_vector, [bytes(blob) for _, blob in rows])
        ranked = sorted(
            zip(sims, (doc for doc, _ in rows), strict=True), key=lambda p: (-p[0], p[1])
        )
        return [doc for _, doc in ranked]

    @staticmethod
    def _pg_hits(conn: Any, scores: Mapping[int, float]) -> builtins.list[MemoryHit]:
        if not scores:
            return []
        rows = {
            r[0]: r[1:]
            for r in conn.execute(
                f"SELECT id, key, text, metadata::text FROM {_P}entries"
                " WHERE id = ANY(%s::bigint[])",
                (list(scores),),
            ).fetchall()
        }
        return [
            MemoryHit(key=rows[d][0], text=rows[d][1], metadata=json.loads(rows[d][2]), score=s)
            for d, s in scores.items()
            if d in rows
        ]


# -- FTS5-style expressions as SQL ----------------------------------------------------------

# A parsed expression: ("term", t) | ("and", [nodes]) | ("or", [nodes]) | ("not", left, right)
Node = tuple[Any, ...]


def _parse(expr: str) -> Node:
    """Parse the expressions :func:`~gonka_mux.memory.maxscore.top_k` builds (FTS5 precedence:
    NOT, then AND, then OR)."""
    tokens: builtins.list[tuple[str, str]] = []
    pos = 0
    while pos < len(expr):
        match = _EXPR_TOKEN.match(expr, pos)
        if match is None or match.end() == pos:
            if expr[pos:].strip():
                raise ValueError(f"unexpected search expression {expr!r}")
            break
        phrase, op, opening, closing = match.groups()
        if phrase is not None:
            tokens.append(("term", phrase))
        elif op is not None:
            tokens.append(("op", op))
        else:
            tokens.append(("paren", opening or closing))
        pos = match.end()
    at = 0

    def peek() -> tuple[str, str] | None:
        return tokens[at] if at < len(tokens) else None

    def take() -> tuple[str, str]:
        nonlocal at
        at += 1
        return tokens[at - 1]

    def primary() -> Node:
        kind, value = take()
        if kind == "term":
            return ("term", value)
        if value != "(":
            raise ValueError(f"unexpected {value!r} in {expr!r}")
        node = alternatives()
        take()  # ")"
        return node

    def negations() -> Node:
        node = primary()
        while peek() == ("op", "NOT"):
            take()
            node = ("not", node, primary())
        return node

    def conjunctions() -> Node:
        parts = [negations()]
        while peek() == ("op", "AND"):
            take()
            parts.append(negations())
        return parts[0] if len(parts) == 1 else ("and", parts)

    def alternatives() -> Node:
        parts = [conjunctions()]
        while peek() == ("op", "OR"):
            take()
            parts.append(conjunctions())
        return parts[0] if len(parts) == 1 else ("or", parts)

    return alternatives()


def _cover(node: Node, df: Mapping[str, int]) -> builtins.list[str]:
    """Terms whose documents include every match of ``node``, as few documents as possible."""
    kind = node[0]
    if kind == "term":
        return [node[1]]
    if kind == "not":
        return _cover(node[1], df)
    covers = [_cover(child, df) for child in node[1]]
    if kind == "and":
        return min(covers, key=lambda c: sum(df.get(t, 0) for t in c))
    return builtins.list(dict.fromkeys(t for c in covers for t in c))


def _quote_term(term: str) -> str:
    """A token as an SQL literal: tokens are letters and digits only (see ``tokenize``)."""
    if not term.isalnum():
        raise ValueError(f"not a token: {term!r}")
    return "'" + term + "'"


def _predicate(node: Node, skip: Sequence[str], probes: dict[str, str]) -> str:
    """A boolean formula true for the documents matching ``node``, over one column per term
    (``probes``: term -> column, filled here); terms in ``skip`` are known present (the
    candidates come from them). Each term is probed once per document however often the
    expression names it (MaxScore's filters repeat terms across many alternatives)."""
    kind = node[0]
    if kind == "term":
        if node[1] in skip:
            return ""
        return probes.setdefault(node[1], f"<{len(probes)}>")
    if kind == "not":
        left = _predicate(node[1], skip, probes)
        right = _predicate(node[2], (), probes)
        return f"({left}) AND NOT ({right})" if left else f"NOT ({right})"
    parts = []
    for child in node[1]:
        sql = _predicate(child, skip if kind == "and" else (), probes)
        if sql:
            parts.append(f"({sql})")
        elif kind == "or":
            return ""  # one alternative always holds
    return f" {kind.upper()} ".join(parts) if parts else ""


# -- helpers --------------------------------------------------------------------------------


def _filter_sql(filter: Mapping[str, Any] | None) -> tuple[str, builtins.list[Any]]:
    """Equality on metadata values (jsonb: true is not 1; the SQLite store compares alike)."""
    clauses: builtins.list[str] = []
    params: builtins.list[Any] = []
    for key, value in _filter_items(filter):
        if value is None:  # as json_extract: a missing key and a JSON null both match
            clauses.append(" AND coalesce(e.metadata -> %s, 'null'::jsonb) = 'null'::jsonb")
            params.append(key)
        else:
            clauses.append(" AND e.metadata -> %s = %s::jsonb")
            params += [key, json.dumps(value)]
    return "".join(clauses), params


def _item(row: Sequence[Any]) -> MemoryItem:
    return MemoryItem(
        key=row[0],
        text=row[1],
        metadata=json.loads(row[2]),
        created_at=row[3],
        updated_at=row[4],
    )
