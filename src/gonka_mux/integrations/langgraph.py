"""LangGraph persistence on gonka_mux's stores.

* :class:`SessionStoreSaver`: a checkpointer (``BaseCheckpointSaver``, sync and async) over any
  gonka_mux session store (memory, SQLite file, Redis). Each LangGraph thread is one session
  (``"langgraph:<thread_id>"`` by default, so it never mixes with the Multiplexer's own session
  history); checkpoints and pending writes are ordered keys inside it.
* :class:`BM25Store`: a LangGraph ``BaseStore`` over gonka_mux's memory store
  (:class:`~gonka_mux.memory.MemoryStore`, one SQLite file): ``search(query=...)`` ranks by BM25
  over the item's indexed fields.

::

    saver = SessionStoreSaver(DiskSessionStore("state/sessions.sqlite3"), close_store=True)
    store = BM25Store("state/memory.sqlite3")
    graph = builder.compile(checkpointer=saver, store=store)

Needs the ``langchain`` extra (``langgraph``).
"""

from __future__ import annotations

import asyncio
import builtins
import logging
import os
import random
from collections.abc import AsyncIterator, Coroutine, Iterable, Iterator, Mapping, Sequence
from datetime import datetime, timezone
from typing import Any, TypeVar

try:
    import langgraph.checkpoint.base  # noqa: F401
    from langchain_core.runnables import RunnableConfig
except ImportError as exc:  # the extra is not installed
    raise ModuleNotFoundError(
        "gonka_mux.integrations.langgraph needs LangGraph: pip install 'gonka-mux[langchain]' "
        f"(missing: {exc.name})",
        name=exc.name,
    ) from exc
from langgraph.checkpoint.base import (
    WRITES_IDX_MAP,
    BaseCheckpointSaver,
    ChannelVersions,
    Checkpoint,
    CheckpointMetadata,
    CheckpointTuple,
    get_checkpoint_id,
    get_checkpoint_metadata,
    writes_sort_key,
)
from langgraph.checkpoint.serde.base import SerializerProtocol
from langgraph.store.base import (
    BaseStore,
    GetOp,
    Item,
    ListNamespacesOp,
    MatchCondition,
    Op,
    PutOp,
    Result,
    SearchItem,
    SearchOp,
)
from langgraph.store.base.embed import get_text_at_path

from gonka_mux._loop_thread import Portal
from gonka_mux._postgres import is_postgres_url
from gonka_mux.memory import MemoryItem, MemoryStore
from gonka_mux.sessions import DiskSessionStore, MemorySessionStore, RedisSessionStore

log = logging.getLogger("gonka_mux.integrations.langgraph")

__all__ = ["BM25Store", "SessionStoreSaver"]

T = TypeVar("T")

_SEP = "\x1f"  # never in a LangGraph namespace label, checkpoint id or task id


# =========================================================================== the checkpointer


class SessionStoreSaver(BaseCheckpointSaver[str]):
    """A LangGraph checkpointer kept in a gonka_mux session store (memory, disk or Redis).

    ``store``: a :class:`~gonka_mux.sessions.SessionStore` (an ordered key-value space per
    session). Thread ``t`` lives in session ``f"{session_prefix}{t}"``; inside it a checkpoint is
    the key ``c<ns><checkpoint id>`` and a pending write ``w<ns><checkpoint id><task id><idx>``
    (fields separated by ``\\x1f``). Checkpoint ids are uuid6, so key order is time order and the
    newest checkpoint is the last key. Values are LangGraph's own serializer output (``serde``).

    The store's methods are coroutines; the saver runs them on one private event-loop thread,
    for its sync methods (``graph.invoke``) and its async ones (``graph.ainvoke``) alike, so a
    store whose connections belong to one loop (Redis) works from both. Give the saver a store
    instance of its own. :meth:`close` stops that thread (and closes the store if asked to).
    """

    def __init__(
        self,
        store: Any,
        *,
        serde: SerializerProtocol | None = None,
        session_prefix: str = "langgraph:",
        close_store: bool = False,
    ) -> None:
        super().__init__(serde=serde)
        for method in ("put_many", "get", "scan", "delete", "delete_session", "sessions"):
            if not callable(getattr(store, method, None)):
                raise TypeError(
                    f"SessionStoreSaver needs a gonka_mux session store; {type(store).__name__} "
                    f"has no {method}() method"
                )
        self.store = store
        self.session_prefix = session_prefix
        self._close_store = close_store
        self._thread = Portal("gonka-mux-checkpointer")

    def __repr__(self) -> str:
        return f"SessionStoreSaver({self.store!r})"

    def close(self) -> None:
        """Stop the saver's loop thread (and close the store when ``close_store=True``)."""
        if self._close_store and self._thread._loop is not None:
            self._thread.call(self.store.aclose())
        self._thread.close()

    # -- as LangGraph's own savers are used -------------------------------------------------
    @classmethod
    def from_conn_string(cls, conn_string: str, **kwargs: Any) -> SessionStoreSaver:
        """A saver over its own store, closed with it: ``"memory"``, ``"disk"`` (the state
        directory), a directory path, a ``redis://`` or a ``postgresql://`` URL. Use it as
        LangGraph's savers are used: ``with SessionStoreSaver.from_conn_string(url) as saver:``
        (or ``async with``)."""
        if not isinstance(conn_string, str) or not conn_string:
            raise ValueError(
                "from_conn_string needs 'memory', 'disk', a directory path, a redis:// or a "
                "postgresql:// URL"
            )
        if conn_string.startswith(("redis://", "rediss://", "unix://")):
            store: Any = RedisSessionStore(conn_string)
        elif is_postgres_url(conn_string):
            from gonka_mux.sessions.postgres import PostgresSessionStore

            store = PostgresSessionStore(conn_string)
        elif conn_string == "memory":
            store = MemorySessionStore()
        elif conn_string == "disk":
            store = DiskSessionStore()
        else:
            store = DiskSessionStore(conn_string)
        return cls(store, close_store=True, **kwargs)

    def __enter__(self) -> SessionStoreSaver:
        return self

    def __exit__(self, *exc_info: Any) -> None:
        self.close()

    async def __aenter__(self) -> SessionStoreSaver:
        return self

    async def __aexit__(self, *exc_info: Any) -> None:
        await asyncio.to_thread(self.close)  # close() waits for the saver's own loop thread

    # -- running on the saver's loop --------------------------------------------------------
    def _run(self, coro: Coroutine[Any, Any, T]) -> T:
        return self._thread.call(coro)

    async def _arun(self, coro: Coroutine[Any, Any, T]) -> T:
        future = asyncio.run_coroutine_threadsafe(coro, self._thread.loop)
        return await asyncio.wrap_future(future)

    # -- keys and records -------------------------------------------------------------------
    def _sid(self, thread_id: Any) -> str:
        return f"{self.session_prefix}{thread_id}"

    @staticmethod
    def _checkpoint_key(ns: str, checkpoint_id: str) -> str:
        return f"c{_SEP}{ns}{_SEP}{checkpoint_id}"

    @staticmethod
    def _writes_prefix(ns: str, checkpoint_id: str) -> str:
        return f"w{_SEP}{ns}{_SEP}{checkpoint_id}{_SEP}"

    def _dump(self, obj: Any) -> bytes:
        kind, data = self.serde.dumps_typed(obj)
        header = kind.encode()
        return bytes([len(header)]) + header + data

    def _load(self, raw: bytes) -> Any:
        n = raw[0]
        return self.serde.loads_typed((raw[1 : 1 + n].decode(), raw[1 + n :]))

    async def _tuple(
        self, thread_id: str, ns: str, checkpoint_id: str, raw: bytes
    ) -> CheckpointTuple:
        record = self._load(raw)
        rows = await self.store.scan(self._sid(thread_id), self._writes_prefix(ns, checkpoint_id))
        writes = []
        for _key, value in rows:
            task_id, channel, data, task_path, idx = self._load(value)
            writes.append((writes_sort_key(task_path, task_id, idx), (task_id, channel, data)))
        writes.sort(key=lambda w: w[0])
        parent = record["parent"]
        return CheckpointTuple(
            config=_config(thread_id, ns, checkpoint_id),
            checkpoint=record["checkpoint"],
            metadata=record["metadata"],
            parent_config=_config(thread_id, ns, parent) if parent else None,
            pending_writes=[w for _, w in writes],
        )

    # -- the work, as coroutines on the saver's loop ----------------------------------------
    async def _get_tuple(self, config: RunnableConfig) -> CheckpointTuple | None:
        configurable = config["configurable"]
        thread_id = str(configurable["thread_id"])
        ns = configurable.get("checkpoint_ns", "")
        checkpoint_id = get_checkpoint_id(config)
        sid = self._sid(thread_id)
        if checkpoint_id:
            raw = await self.store.get(sid, self._checkpoint_key(ns, checkpoint_id))
            if raw is None:
                return None
        else:
            rows = await self.store.scan(sid, f"c{_SEP}{ns}{_SEP}")
            if not rows:
                return None
            key, raw = rows[-1]  # ids sort in time order: the last is the newest
            checkpoint_id = key.rsplit(_SEP, 1)[1]
        return await self._tuple(thread_id, ns, checkpoint_id, raw)

    async def _list(
        self,
        config: RunnableConfig | None,
        filter: dict[str, Any] | None,
        before: RunnableConfig | None,
        limit: int | None,
    ) -> builtins.list[CheckpointTuple]:
        """Newest first within each thread and namespace."""
        if config is not None:
            configurable = config["configurable"]
            threads = [str(configurable["thread_id"])]
            wanted_ns = configurable.get("checkpoint_ns")
            wanted_id = get_checkpoint_id(config)
        else:
            n = len(self.session_prefix)
            sessions = await self.store.sessions()
            threads = [s[n:] for s in sessions if s.startswith(self.session_prefix)]
            wanted_ns = wanted_id = None
        before_id = get_checkpoint_id(before) if before else None
        found: builtins.list[CheckpointTuple] = []
        for thread_id in threads:
            by_ns: dict[str, builtins.list[tuple[str, bytes]]] = {}
            for key, raw in await self.store.scan(self._sid(thread_id), f"c{_SEP}"):
                _, ns, checkpoint_id = key.split(_SEP, 2)
                by_ns.setdefault(ns, []).append((checkpoint_id, raw))
            for ns in sorted(by_ns):
                if wanted_ns is not None and ns != wanted_ns:
                    continue
                for checkpoint_id, raw in reversed(by_ns[ns]):
                    if wanted_id and checkpoint_id != wanted_id:
                        continue
                    if before_id and checkpoint_id >= before_id:
                        continue
                    item = await self._tuple(thread_id, ns, checkpoint_id, raw)
                    if filter and not all(item.metadata.get(k) == v for k, v in filter.items()):
                        continue
                    if limit is not None and len(found) >= limit:
                        return found
                    found.append(item)
        return found

    async def _put(
        self, config: RunnableConfig, checkpoint: Checkpoint, metadata: CheckpointMetadata
    ) -> RunnableConfig:
        configurable = config["configurable"]
        thread_id = str(configurable["thread_id"])
        ns = configurable.get("checkpoint_ns", "")
        record = {
            "checkpoint": checkpoint,
            "metadata": get_checkpoint_metadata(config, metadata),
            "parent": configurable.get("checkpoint_id"),
        }
        key = self._checkpoint_key(ns, checkpoint["id"])
        await self.store.put_many(self._sid(thread_id), [(key, self._dump(record))])
        return _config(thread_id, ns, checkpoint["id"])

    async def _put_writes(
        self,
        config: RunnableConfig,
        writes: Sequence[tuple[str, Any]],
        task_id: str,
        task_path: str,
    ) -> None:
        configurable = config["configurable"]
        sid = self._sid(configurable["thread_id"])
        ns = configurable.get("checkpoint_ns", "")
        prefix = f"{self._writes_prefix(ns, configurable['checkpoint_id'])}{task_id}{_SEP}"
        existing = {key for key, _ in await self.store.scan(sid, prefix)}
        items = []
        for position, (channel, value) in enumerate(writes):
            idx = WRITES_IDX_MAP.get(channel, position)
            key = f"{prefix}{idx}"
            # Regular writes are write-once (a retried task must not change them); the special
            # channels (errors, interrupts, resumes: negative idx) are overwritten.
            if idx >= 0 and key in existing:
                continue
            items.append((key, self._dump((task_id, channel, value, task_path, idx))))
        if items:
            await self.store.put_many(sid, items)  # atomic: all of a task's writes or none

    async def _delete_thread(self, thread_id: str) -> None:
        await self.store.delete_session(self._sid(thread_id))

    async def _delete_checkpoints(self, sid: str, keys: Iterable[str]) -> None:
        """Delete checkpoint keys and the pending writes stored under each."""
        for key in keys:
            _, ns, checkpoint_id = key.split(_SEP, 2)
            for write_key, _ in await self.store.scan(sid, self._writes_prefix(ns, checkpoint_id)):
                await self.store.delete(sid, write_key)
            await self.store.delete(sid, key)

    async def _delete_for_runs(self, run_ids: Sequence[str]) -> None:
        wanted = set(run_ids)
        if not wanted:
            return
        for sid in await self.store.sessions():
            if not sid.startswith(self.session_prefix):
                continue
            doomed = [
                key
                for key, raw in await self.store.scan(sid, f"c{_SEP}")
                if self._load(raw)["metadata"].get("run_id") in wanted
            ]
            await self._delete_checkpoints(sid, doomed)

    async def _copy_thread(self, source_thread_id: str, target_thread_id: str) -> None:
        rows = await self.store.scan(self._sid(source_thread_id))
        if rows:
            await self.store.put_many(self._sid(target_thread_id), rows)  # atomic

    async def _prune(self, thread_ids: Sequence[str], strategy: str) -> None:
        if strategy not in ("keep_latest", "delete"):
            raise ValueError(f"prune strategy must be 'keep_latest' or 'delete', got {strategy!r}")
        for thread_id in thread_ids:
            sid = self._sid(thread_id)
            if strategy == "delete":
                await self.store.delete_session(sid)
                continue
            newest: dict[str, str] = {}
            doomed = []
            for key, _ in await self.store.scan(sid, f"c{_SEP}"):
                ns = key.split(_SEP, 2)[1]
                if ns in newest:
                    doomed.append(newest[ns])
                newest[ns] = key  # keys come in time order: the last one per namespace stays
            await self._delete_checkpoints(sid, doomed)

    # -- BaseCheckpointSaver: sync ----------------------------------------------------------
    def get_tuple(self, config: RunnableConfig) -> CheckpointTuple | None:
        return self._run(self._get_tuple(config))

    def list(
        self,
        config: RunnableConfig | None,
        *,
        filter: dict[str, Any] | None = None,
        before: RunnableConfig | None = None,
        limit: int | None = None,
    ) -> Iterator[CheckpointTuple]:
        yield from self._run(self._list(config, filter, before, limit))

    def put(
        self,
        config: RunnableConfig,
        checkpoint: Checkpoint,
        metadata: CheckpointMetadata,
        new_versions: ChannelVersions,
    ) -> RunnableConfig:
        return self._run(self._put(config, checkpoint, metadata))

    def put_writes(
        self,
        config: RunnableConfig,
        writes: Sequence[tuple[str, Any]],
        task_id: str,
        task_path: str = "",
    ) -> None:
        self._run(self._put_writes(config, writes, task_id, task_path))

    def delete_thread(self, thread_id: str) -> None:
        self._run(self._delete_thread(thread_id))

    def delete_for_runs(self, run_ids: Sequence[str]) -> None:
        """Delete the checkpoints (and their writes) whose metadata ``run_id`` is listed."""
        self._run(self._delete_for_runs(run_ids))

    def copy_thread(self, source_thread_id: str, target_thread_id: str) -> None:
        """Copy every checkpoint and write of a thread (the whole parent chain) to another."""
        self._run(self._copy_thread(source_thread_id, target_thread_id))

    def prune(self, thread_ids: Sequence[str], *, strategy: str = "keep_latest") -> None:
        """``"keep_latest"``: keep each namespace's newest checkpoint (and its writes) only;
        ``"delete"``: remove the threads. Not for graphs with ``DeltaChannel`` state, which
        needs the older checkpoints to rebuild its values."""
        self._run(self._prune(thread_ids, strategy))

    # -- BaseCheckpointSaver: async ---------------------------------------------------------
    async def aget_tuple(self, config: RunnableConfig) -> CheckpointTuple | None:
        return await self._arun(self._get_tuple(config))

    async def alist(
        self,
        config: RunnableConfig | None,
        *,
        filter: dict[str, Any] | None = None,
        before: RunnableConfig | None = None,
        limit: int | None = None,
    ) -> AsyncIterator[CheckpointTuple]:
        for item in await self._arun(self._list(config, filter, before, limit)):
            yield item

    async def aput(
        self,
        config: RunnableConfig,
        checkpoint: Checkpoint,
        metadata: CheckpointMetadata,
        new_versions: ChannelVersions,
    ) -> RunnableConfig:
        return await self._arun(self._put(config, checkpoint, metadata))

    async def aput_writes(
        self,
        config: RunnableConfig,
        writes: Sequence[tuple[str, Any]],
        task_id: str,
        task_path: str = "",
    ) -> None:
        await self._arun(self._put_writes(config, writes, task_id, task_path))

    async def adelete_thread(self, thread_id: str) -> None:
        await self._arun(self._delete_thread(thread_id))

    async def adelete_for_runs(self, run_ids: Sequence[str]) -> None:
        await self._arun(self._delete_for_runs(run_ids))

    async def acopy_thread(self, source_thread_id: str, target_thread_id: str) -> None:
        await self._arun(self._copy_thread(source_thread_id, target_thread_id))

    async def aprune(self, thread_ids: Sequence[str], *, strategy: str = "keep_latest") -> None:
        await self._arun(self._prune(thread_ids, strategy))

    def get_next_version(self, current: str | None, channel: None = None) -> str:
        """Monotonic string versions (``<counter>.<random>``), as LangGraph's own savers."""
        if current is None:
            number = 0
        elif isinstance(current, int):
            number = current
        else:
            number = int(str(current).split(".")[0])
        return f"{number + 1:032}.{random.random():016}"


def _config(thread_id: str, ns: str, checkpoint_id: str) -> RunnableConfig:
    return {
        "configurable": {
            "thread_id": thread_id,
            "checkpoint_ns": ns,
            "checkpoint_id": checkpoint_id,
        }
    }


# ================================================================================ the store


class BM25Store(BaseStore):
    """A LangGraph ``BaseStore`` kept in a gonka_mux ``MemoryStore`` with BM25 search.

    ``memory``: a :class:`~gonka_mux.memory.MemoryStore`, or a path for one (owned and closed by
    :meth:`close`). ``index_fields``: the value fields indexed when ``put`` gives no ``index``
    (``None``: every string in the value; paths as LangGraph's ``IndexConfig["fields"]``:
    ``"text"``, ``"a.b"``, ``"tags[*]"``). ``put(..., index=False)`` stores without indexing.
    ``prefix`` separates these namespaces from other users of the same memory file.

    Values must be JSON objects (they are kept as the memory entries' metadata, which is also
    what makes ``search(filter=...)`` work: scalar equalities are evaluated in SQLite, operator
    filters such as ``{"score": {"$gt": 3}}`` in Python). ``search`` scores are BM25 values
    (higher is better); TTLs are not supported.
    """

    supports_ttl = False

    def __init__(
        self,
        memory: MemoryStore | str | os.PathLike[str] | None = None,
        *,
        index_fields: Sequence[str] | None = None,
        prefix: str = "langgraph",
    ) -> None:
        if not prefix or _SEP in prefix:
            raise ValueError("prefix must be a non-empty string without \\x1f")
        self._owned = not isinstance(memory, MemoryStore)
        self.memory = memory if isinstance(memory, MemoryStore) else MemoryStore(memory)
        self.index_fields = list(index_fields) if index_fields is not None else None
        self._prefix = prefix + _SEP

    def close(self) -> None:
        if self._owned:
            self.memory.close()

    def __repr__(self) -> str:
        return f"BM25Store({self.memory!r})"

    # -- namespaces <-> memory namespaces ---------------------------------------------------
    def _encode(self, namespace: tuple[str, ...]) -> str:
        return self._prefix + _SEP.join(namespace)

    def _namespaces(self) -> list[tuple[str, ...]]:
        n = len(self._prefix)
        return [
            tuple(name[n:].split(_SEP))
            for name in self.memory.namespaces()
            if name.startswith(self._prefix)
        ]

    # -- BaseStore --------------------------------------------------------------------------
    def batch(self, ops: Iterable[Op]) -> list[Result]:
        """Reads see the state before this batch's writes; the last write to a key wins."""
        results: list[Result] = []
        writes: dict[tuple[tuple[str, ...], str], PutOp] = {}
        for op in ops:
            if isinstance(op, GetOp):
                results.append(self._get(op))
            elif isinstance(op, SearchOp):
                results.append(self._search(op))
            elif isinstance(op, ListNamespacesOp):
                results.append(self._list_namespaces(op))
            elif isinstance(op, PutOp):
                writes[(op.namespace, op.key)] = op
                results.append(None)
            else:
                raise TypeError(f"unknown store operation {type(op).__name__}")
        self._apply(writes.values())
        return results

    async def abatch(self, ops: Iterable[Op]) -> list[Result]:
        return await asyncio.to_thread(self.batch, list(ops))

    # -- operations -------------------------------------------------------------------------
    def _get(self, op: GetOp) -> Item | None:
        found = self.memory.get(self._encode(op.namespace), op.key)
        return None if found is None else _item(op.namespace, found)

    def _apply(self, writes: Iterable[PutOp]) -> None:
        by_namespace: dict[tuple[str, ...], builtins.list[dict[str, Any]]] = {}
        for op in writes:
            if op.value is None:
                self.memory.delete(self._encode(op.namespace), op.key)
                continue
            if not isinstance(op.value, Mapping):
                raise TypeError(f"store values must be dicts, got {type(op.value).__name__}")
            entry = {"key": op.key, "text": self._text(op), "metadata": dict(op.value)}
            by_namespace.setdefault(op.namespace, []).append(entry)
        for namespace, entries in by_namespace.items():
            self.memory.put_many(self._encode(namespace), entries)  # one transaction each

    def _text(self, op: PutOp) -> str:
        if op.index is False:
            return ""
        fields = op.index if op.index is not None else self.index_fields
        if fields is None:
            return "\n".join(_strings(op.value))
        texts: list[str] = []
        for path in fields:
            texts += _strings(op.value) if path == "$" else get_text_at_path(op.value, path)
        return "\n".join(texts)

    def _search(self, op: SearchOp) -> list[SearchItem]:
        prefix = tuple(op.namespace_prefix)
        namespaces = [ns for ns in self._namespaces() if ns[: len(prefix)] == prefix]
        sql_filter, py_filter = _split_filter(op.filter)
        wanted = max(0, op.offset) + max(0, op.limit)
        found: list[tuple[float | None, tuple[str, ...], MemoryItem]] = []
        for ns in sorted(namespaces):
            name = self._encode(ns)
            depth = self.memory.count(name) if py_filter else wanted
            if op.query:
                for hit in self.memory.search(name, op.query, k=depth, filter=sql_filter):
                    item = self.memory.get(name, hit.key)
                    if item is not None:
                        found.append((hit.score, ns, item))
            else:
                for item in self.memory.list(name, filter=sql_filter, limit=depth):
                    found.append((None, ns, item))
        if py_filter:
            found = [f for f in found if _matches(f[2].metadata, py_filter)]
        if op.query:
            found.sort(key=lambda f: -(f[0] or 0.0))  # stable: ties keep namespace order
        page = found[op.offset : op.offset + op.limit]
        return [_search_item(ns, item, score) for score, ns, item in page]

    def _list_namespaces(self, op: ListNamespacesOp) -> list[tuple[str, ...]]:
        namespaces = [
            ns
            for ns in self._namespaces()
            if all(_condition_matches(c, ns) for c in op.match_conditions or ())
        ]
        if op.max_depth is not None:
            namespaces = list({ns[: op.max_depth] for ns in namespaces})
        namespaces.sort()
        return namespaces[op.offset : op.offset + op.limit]


def _strings(value: Any) -> list[str]:
    """Every string in a JSON value (the default indexed text)."""
    if isinstance(value, str):
        return [value]
    if isinstance(value, Mapping):
        return [s for v in value.values() for s in _strings(v)]
    if isinstance(value, (list, tuple)):
        return [s for v in value for s in _strings(v)]
    return []


def _timestamp(seconds: float) -> datetime:
    return datetime.fromtimestamp(seconds, tz=timezone.utc)


def _item(namespace: tuple[str, ...], found: MemoryItem) -> Item:
    return Item(
        value=found.metadata,
        key=found.key,
        namespace=namespace,
        created_at=_timestamp(found.created_at),
        updated_at=_timestamp(found.updated_at),
    )


def _search_item(namespace: tuple[str, ...], found: MemoryItem, score: float | None) -> SearchItem:
    return SearchItem(
        namespace=namespace,
        key=found.key,
        value=found.metadata,
        created_at=_timestamp(found.created_at),
        updated_at=_timestamp(found.updated_at),
        score=score,
    )


_SCALARS = (str, int, float, bool, type(None))


def _split_filter(
    filter: Mapping[str, Any] | None,
) -> tuple[dict[str, Any], dict[str, Any]]:
    """Scalar equalities run in SQLite; nested values and ``$`` operators in Python."""
    sql: dict[str, Any] = {}
    python: dict[str, Any] = {}
    for key, value in (filter or {}).items():
        simple = isinstance(value, _SCALARS) and '"' not in key and "\\" not in key
        (sql if simple else python)[key] = value
    return sql, python


def _matches(value: Mapping[str, Any], filter: Mapping[str, Any]) -> bool:
    return all(_compare(value.get(k), v) for k, v in filter.items())


def _compare(actual: Any, wanted: Any) -> bool:
    """JSONB-like comparison, the semantics of LangGraph's own stores."""
    if isinstance(wanted, Mapping):
        if any(str(k).startswith("$") for k in wanted):
            return all(_operator(actual, op, v) for op, v in wanted.items())
        return isinstance(actual, Mapping) and all(
            _compare(actual.get(k), v) for k, v in wanted.items()
        )
    if isinstance(wanted, (list, tuple)):
        return (
            isinstance(actual, (list, tuple))
            and len(actual) == len(wanted)
            and all(_compare(a, w) for a, w in zip(actual, wanted, strict=False))
        )
    return bool(actual == wanted)


def _operator(actual: Any, op: str, wanted: Any) -> bool:
    if op == "$eq":
        return bool(actual == wanted)
    if op == "$ne":
        return bool(actual != wanted)
    if actual is None:
        return False
    try:
        a, w = float(actual), float(wanted)
    except (TypeError, ValueError):
        return False
    if op == "$gt":
        return a > w
    if op == "$gte":
        return a >= w
    if op == "$lt":
        return a < w
    if op == "$lte":
        return a <= w
    raise ValueError(f"unsupported filter operator {op!r} (use $eq $ne $gt $gte $lt $lte)")


def _condition_matches(condition: MatchCondition, namespace: tuple[str, ...]) -> bool:
    path = tuple(condition.path)
    if len(namespace) < len(path):
        return False
    if condition.match_type == "prefix":
        pairs = zip(namespace, path, strict=False)
    elif condition.match_type == "suffix":
        pairs = zip(reversed(namespace), reversed(path), strict=False)
    else:
        raise ValueError(f"unsupported namespace match type {condition.match_type!r}")
    return all(p == "*" or n == p for n, p in pairs)
