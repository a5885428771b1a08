"""The response cache as a Multiplexer feature: ``mux.enable_cache(...)`` or ``[cache]``.

Where it runs: ``before`` at order 25, after tiering (10) picked the model and sessions (20)
prepended the stored history, so the key is computed on the body as it will be sent (the same
last message in two different conversations is two different requests), and before limits
(30), so a hit spends none of the caller's rate limit: it costs nothing upstream. A hit is
answered through the core's served slot: routing is skipped, the ``after`` hooks still run
(metering records the hit, sessions store the turn).

What is cached (see docs/agents.md, "Response cache"): chat, text completions and embeddings
whose parameters ask for a repeatable answer (``temperature=0`` or a ``seed``; embeddings
always), unless ``only_deterministic=False`` or the call says ``cache=True``. Never an error,
a stream that did not complete, a reply larger than ``max_entry_bytes``, or a reply calling a
tool listed in ``uncacheable_tools``. ``cache=False`` on a call bypasses the cache;
``cache="refresh"`` skips the lookup and stores the fresh reply.

Single flight: while a cacheable request is upstream, identical requests in this process wait
for it (bounded by their deadline and ``single_flight_wait``) and are then served its reply.

Faults: a store that fails (a corrupt diskcache file, Redis down) is skipped, with one warning
per outage, and retried after ``retry_interval`` seconds; requests are served without it.
"""

from __future__ import annotations

import asyncio
import json
import logging
import math
import os
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from .._core import SERVED, STREAM_TAP
from .._exceptions import ConfigError
from ..features import ORDER_SESSIONS, Feature, Slot, register_feature, reject_leftover, section_of
from .keys import cache_key, is_deterministic
from .replay import ReplayStream, build, mark
from .stores import DEFAULT_MAX_SIZE, DiskCacheStore, cache_store

__all__ = ["CACHE", "ORDER_CACHE", "CacheLookup", "ResponseCache"]

log = logging.getLogger("gonka_mux.cache")

#: between sessions (20) and limits (30); see the module docstring
ORDER_CACHE = ORDER_SESSIONS + 5

_KINDS = frozenset({"chat", "completions", "embeddings"})
_FORMAT = 1  # the entry format; an entry of another format is a miss


@dataclass
class CacheLookup:
    """What the cache did for one request (``ctx.get(CACHE)``; metering reads it)."""

    key: str
    status: str = "miss"  # "hit", "miss" or "refresh"
    #: a hit's original usage (a dict): the tokens the hit did not spend
    usage: dict[str, Any] | None = None
    chunks: _Recorder | None = None
    flight: asyncio.Future[bytes | None] | None = None


#: the cache's record of one request
CACHE: Slot[CacheLookup] = Slot("cache.lookup")


class _Recorder:
    """The chunks of a stream being recorded (the core's stream tap); gives up past a limit."""

    __slots__ = ("chunks", "limit", "overflow")

    def __init__(self, limit: int) -> None:
        self.chunks: list[Any] = []
        self.limit = limit
        self.overflow = False

    def append(self, chunk: Any) -> None:
        if self.overflow:
            return
        if len(self.chunks) >= self.limit:
            self.overflow = True
            self.chunks.clear()
            return
        self.chunks.append(chunk)


@dataclass
class _Counters:
    hits: int = 0
    misses: int = 0
    stored: int = 0
    skipped: int = 0  # fresh replies not stored (too large, uncacheable tool, failed)
    faults: int = 0
    waited: int = 0  # requests served by another request's flight


@register_feature
class ResponseCache(Feature):
    """An exact-match response cache (see the module docstring)."""

    name = "cache"
    sections = ("cache",)
    order = ORDER_CACHE

    def __init__(
        self,
        store: Any = None,
        *,
        path: str | os.PathLike[str] | None = None,
        ttl: float | None = 86400.0,
        max_size: int = DEFAULT_MAX_SIZE,
        max_entry_bytes: int = 2 * 1024 * 1024,
        only_deterministic: bool = True,
        per_caller: bool = False,
        uncacheable_tools: Iterable[str] = (),
        single_flight: bool = True,
        single_flight_wait: float = 30.0,
        retry_interval: float = 5.0,
        namespace: str = "",
    ) -> None:
        if ttl is not None and (not _number(ttl) or not math.isfinite(ttl) or ttl <= 0):
            raise ValueError(f"ttl must be a number of seconds > 0 or None, not {ttl!r}")
        for label, value in (("max_size", max_size), ("max_entry_bytes", max_entry_bytes)):
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{label} must be a whole number of bytes >= 1, not {value!r}")
        for label, seconds in (
            ("single_flight_wait", single_flight_wait),
            ("retry_interval", retry_interval),
        ):
            if not _number(seconds) or not math.isfinite(seconds) or seconds < 0:
                raise ValueError(f"{label} must be a number of seconds >= 0, not {seconds!r}")
        for label, flag in (
            ("only_deterministic", only_deterministic),
            ("per_caller", per_caller),
            ("single_flight", single_flight),
        ):
            if not isinstance(flag, bool):
                raise ValueError(f"{label} must be true or false, not {flag!r}")
        if isinstance(uncacheable_tools, str):
            uncacheable_tools = [uncacheable_tools]
        tools = frozenset(uncacheable_tools)
        if not all(isinstance(t, str) for t in tools):
            raise ValueError("uncacheable_tools must be a list of tool names ('*': every tool)")
        if not isinstance(namespace, str):
            raise ValueError("namespace must be a string")
        self.store = cache_store(store, path=path, max_size=max_size)
        self.ttl = ttl
        self.max_entry_bytes = max_entry_bytes
        self.only_deterministic = only_deterministic
        self.per_caller = per_caller
        self.uncacheable_tools = tools
        self.single_flight = single_flight
        self.single_flight_wait = float(single_flight_wait)
        self.retry_interval = float(retry_interval)
        self.namespace = namespace
        self.counters = _Counters()
        # key -> (the leader's future, when it started)
        self._flights: dict[str, tuple[asyncio.Future[bytes | None], float]] = {}
        self._down_until = 0.0
        self._warned = False
        self._failed = ""  # the operation ("read"/"write") that failed last

    def __repr__(self) -> str:
        return f"ResponseCache({self.store!r})"

    @classmethod
    def from_config(cls, data: Mapping[str, Any], source: str) -> ResponseCache | None:
        section = section_of(data, "cache", source)
        if section is None:
            return None
        enabled = section.pop("enabled", True)
        if not isinstance(enabled, bool):
            raise ConfigError(
                f"got {enabled!r}", source=source, key="cache.enabled", expected="true or false"
            )
        store = section.pop("store", "disk")
        if not isinstance(store, str):
            raise ConfigError(
                f"got {type(store).__name__}",
                source=source,
                key="cache.store",
                expected="'disk', 'memory' or a redis:// URL",
            )
        kwargs: dict[str, Any] = {}
        for name in (
            "path",
            "ttl",
            "max_size",
            "max_entry_bytes",
            "only_deterministic",
            "per_caller",
            "uncacheable_tools",
            "single_flight",
            "single_flight_wait",
            "retry_interval",
            "namespace",
        ):
            if name in section:
                kwargs[name] = section.pop(name)
        if kwargs.get("ttl") == 0:
            kwargs["ttl"] = None  # 0 in a file: entries never expire
        reject_leftover(
            section,
            source,
            "cache",
            "enabled, store, path, ttl, max_size, max_entry_bytes, only_deterministic, "
            "per_caller, uncacheable_tools, single_flight, single_flight_wait, retry_interval, "
            "namespace",
        )
        if not enabled:
            return None
        try:
            return cls(store, **kwargs)
        except (ValueError, TypeError) as exc:
            raise ConfigError(str(exc), source=source, key="cache") from None

    def install(self, mux: Any) -> ResponseCache:
        mux.add_feature(self)
        mux.want_stream_usage()  # a recorded stream keeps its usage: what a hit saves
        mux.cache = self
        return self

    # -- the hooks ------------------------------------------------------------------------
    async def before(self, ctx: Any) -> None:
        mode = ctx.options.cache
        if mode is False or ctx.kind not in _KINDS:
            return
        params = ctx.params
        if mode is None and self.only_deterministic and not is_deterministic(ctx.kind, params):
            return
        key = cache_key(
            ctx.kind,
            params,
            caller=(ctx.caller or "") if self.per_caller else None,
            namespace=self.namespace,
        )
        lookup = CacheLookup(key)
        ctx.set(CACHE, lookup)
        if mode == "refresh":
            lookup.status = "refresh"
        else:
            raw = await self._get(key)
            if raw is None and self.single_flight:
                raw = await self._flight(ctx, lookup)
            if raw is not None and self._serve(ctx, lookup, raw):
                return
            self.counters.misses += 1
        if ctx.stream:
            recorder = _Recorder(max(16, self.max_entry_bytes // 64))
            lookup.chunks = recorder
            ctx.set(STREAM_TAP, recorder)

    async def after(self, ctx: Any) -> None:
        lookup = ctx.get(CACHE)
        if lookup is None or lookup.status == "hit":
            return
        entry: bytes | None = None
        try:
            if ctx.status == "ok":
                entry = self._entry(ctx, lookup)
                if entry is None:
                    self.counters.skipped += 1
                elif not ctx.stream:
                    mark(ctx.response, "miss")
            else:
                self.counters.skipped += 1
        finally:
            self._land(lookup, entry)  # waiters first: they need no store round trip
        if entry is not None and await self._set(lookup.key, entry):
            self.counters.stored += 1

    # -- serving ----------------------------------------------------------------------------
    def _serve(self, ctx: Any, lookup: CacheLookup, raw: bytes) -> bool:
        try:
            head, _, body = raw.partition(b"\n")
            meta = json.loads(head)
            if (
                meta.get("v") != _FORMAT
                or meta.get("kind") != ctx.kind
                or bool(meta.get("stream")) != bool(ctx.stream)
            ):
                raise ValueError("an entry of another format or kind")
            if ctx.stream:
                chunks = json.loads(body)
                if not isinstance(chunks, list):
                    raise ValueError("a stream entry without its chunks")
                so = ctx.params.get("stream_options")
                hide = not (isinstance(so, Mapping) and so.get("include_usage"))
                kind = ctx.kind

                def make(finish: Any) -> ReplayStream:
                    return ReplayStream(ctx, kind, chunks, finish, hide_usage=hide)

                served: Any = make
            else:
                served = build(ctx.kind, body)
                mark(served, "hit")
        except Exception as exc:  # a corrupt entry is a miss, never an error
            self._corrupt(lookup.key, exc)
            return False
        usage = meta.get("usage")
        lookup.usage = usage if isinstance(usage, dict) else None
        lookup.status = "hit"
        self.counters.hits += 1
        ctx.set(SERVED, served)
        return True

    def _entry(self, ctx: Any, lookup: CacheLookup) -> bytes | None:
        """The bytes to store for a finished request, or None when it must not be cached."""
        try:
            if ctx.stream:
                recorder = lookup.chunks
                if recorder is None or recorder.overflow or not recorder.chunks:
                    return None
                if self._calls_uncacheable(_stream_tools(recorder.chunks)):
                    return None
                body = json.dumps(
                    [_dump(chunk) for chunk in recorder.chunks],
                    ensure_ascii=False,
                    separators=(",", ":"),
                ).encode()
                usage = _usage_dict(ctx.usage)
            else:
                response = ctx.response
                if response is None or not hasattr(response, "model_dump_json"):
                    return None
                if self._calls_uncacheable(_response_tools(response)):
                    return None
                body = response.model_dump_json(
                    exclude_unset=True, by_alias=True, warnings=False
                ).encode()
                usage = _usage_dict(getattr(response, "usage", None))
        except Exception:
            log.debug("a reply could not be serialised for the cache", exc_info=True)
            return None
        meta = {"v": _FORMAT, "kind": ctx.kind, "stream": bool(ctx.stream), "usage": usage}
        meta["t"] = round(time.time(), 3)
        entry = json.dumps(meta, separators=(",", ":")).encode() + b"\n" + body
        if len(entry) > self.max_entry_bytes:
            log.debug("a reply of %d bytes is over max_entry_bytes: not cached", len(entry))
            return None
        return entry

    def _calls_uncacheable(self, names: list[str]) -> bool:
        tools = self.uncacheable_tools
        if not tools or not names:
            return False
        return "*" in tools or any(name in tools for name in names)

    # -- single flight ----------------------------------------------------------------------
    async def _flight(self, ctx: Any, lookup: CacheLookup) -> bytes | None:
        """Lead the request (None: go upstream) or wait for the one in flight and take its
        entry. A leader that fails, or a wait past the deadline, sends this one upstream."""
        key = lookup.key
        loop = asyncio.get_running_loop()
        now = time.monotonic()
        entry = self._flights.get(key)
        # A flight older than single_flight_wait was abandoned (a stream never read to its
        # end nor closed never reports back): this request leads a new one.
        if (
            entry is None
            or entry[0].done()
            or entry[0].get_loop() is not loop
            or now - entry[1] >= self.single_flight_wait
        ):
            future: asyncio.Future[bytes | None] = loop.create_future()
            self._flights[key] = (future, now)
            lookup.flight = future
            return None
        flight, started = entry
        limit = min(ctx.deadline_at, started + self.single_flight_wait)
        try:
            raw = await asyncio.wait_for(asyncio.shield(flight), max(0.0, limit - time.monotonic()))
        except asyncio.TimeoutError:
            return None
        if raw is not None:
            self.counters.waited += 1
        return raw

    def _land(self, lookup: CacheLookup, entry: bytes | None) -> None:
        future = lookup.flight
        if future is None:
            return
        lookup.flight = None
        current = self._flights.get(lookup.key)
        if current is not None and current[0] is future:
            del self._flights[lookup.key]
        if not future.done():
            future.set_result(entry)

    # -- the store, guarded -----------------------------------------------------------------
    async def _get(self, key: str) -> bytes | None:
        if self._down_until and time.monotonic() < self._down_until:
            return None
        try:
            raw: bytes | None = await self.store.get(key)
        except Exception as exc:
            self._fault("read", exc)
            return None
        self._recovered("read")
        return raw

    async def _set(self, key: str, entry: bytes) -> bool:
        if self._down_until and time.monotonic() < self._down_until:
            return False
        try:
            await self.store.set(key, entry, self.ttl)
        except Exception as exc:
            self._fault("write", exc)
            return False
        self._recovered("write")
        return True

    def _fault(self, what: str, exc: BaseException) -> None:
        self.counters.faults += 1
        self._failed = what
        self._down_until = time.monotonic() + self.retry_interval
        reset = getattr(self.store, "reset", None)
        if isinstance(self.store, DiskCacheStore) and reset is not None:
            reset()  # reopen next time: the files may be repaired or replaced
        if not self._warned:
            self._warned = True
            # the exception's type only: a driver's message may quote a URL with a password
            log.warning(
                "response cache %r failed to %s (%s): requests are served without the cache; "
                "retrying every %g s",
                self.store,
                what,
                type(exc).__name__,
                self.retry_interval,
            )
        else:
            log.debug("response cache %r %s failed again: %s", self.store, what, type(exc))

    def _recovered(self, what: str) -> None:
        if what != self._failed:
            return  # a read that works says nothing about writes that failed (or vice versa)
        self._failed = ""
        if self._warned:
            self._warned = False
            log.info("response cache %r works again", self.store)
        self._down_until = 0.0

    def _corrupt(self, key: str, exc: BaseException) -> None:
        self.counters.faults += 1
        if not self._warned:
            log.warning(
                "response cache %r holds an entry it cannot read (%s): treated as a miss and "
                "replaced",
                self.store,
                type(exc).__name__,
            )
        log.debug("unreadable cache entry", exc_info=exc)

    # -- the public surface -----------------------------------------------------------------
    def stats(self) -> dict[str, Any]:
        """Counters since start: hits, misses, stored, skipped, faults, waited, hit_rate."""
        c = self.counters
        looked = c.hits + c.misses
        return {
            "hits": c.hits,
            "misses": c.misses,
            "stored": c.stored,
            "skipped": c.skipped,
            "faults": c.faults,
            "waited": c.waited,
            "hit_rate": c.hits / looked if looked else None,
        }

    async def clear(self) -> None:
        """Drop every entry of this cache's store."""
        await self.store.clear()

    async def aclose(self) -> None:
        for future, _ in self._flights.values():
            if not future.done():
                future.set_result(None)
        self._flights.clear()
        await self.store.aclose()


def _number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _dump(obj: Any) -> Any:
    return obj.model_dump(mode="json", exclude_unset=True, by_alias=True, warnings=False)


def _usage_dict(usage: Any) -> dict[str, Any] | None:
    if usage is None:
        return None
    if isinstance(usage, dict):
        return usage
    try:
        return dict(_dump(usage))
    except Exception:
        return None


def _response_tools(response: Any) -> list[str]:
    names: list[str] = []
    for choice in getattr(response, "choices", None) or ():
        message = getattr(choice, "message", None)
        for call in getattr(message, "tool_calls", None) or ():
            fn = getattr(call, "function", None)
            if fn is not None and getattr(fn, "name", None):
                names.append(fn.name)
    return names


def _stream_tools(chunks: Iterable[Any]) -> list[str]:
    """The tools a recorded stream calls, in every choice (a name comes in the first delta of
    its call)."""
    names: list[str] = []
    for chunk in chunks:
        for choice in getattr(chunk, "choices", None) or ():
            delta = getattr(choice, "delta", None)
            for call in getattr(delta, "tool_calls", None) or ():
                fn = getattr(call, "function", None)
                if fn is not None and getattr(fn, "name", None):
                    names.append(fn.name)
    return names
