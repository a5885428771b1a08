"""Where cached replies live: in memory (one process), diskcache (one host, the embedded
default) or Redis (a fleet).

A store maps a key (a SHA-256 digest, see :mod:`gonka_mux.cache.keys`) to opaque bytes with a
time to live. Stores raise on faults; the cache feature catches them, warns once and serves
the request without the cache (a broken cache must never fail a request).
"""

from __future__ import annotations

import asyncio
import logging
import os
import stat
import threading
import time
import weakref
from collections import OrderedDict
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

from .._paths import state_dir
from ..endpoint import shown_url

__all__ = [
    "CacheStore",
    "DiskCacheStore",
    "MemoryCacheStore",
    "RedisCacheStore",
    "cache_store",
    "default_cache_dir",
]

log = logging.getLogger("gonka_mux.cache")

DEFAULT_MAX_SIZE = 512 * 1024 * 1024


@runtime_checkable
class CacheStore(Protocol):
    """What the cache needs of a store (all async; faults raise)."""

    async def get(self, key: str) -> bytes | None: ...

    async def set(self, key: str, value: bytes, ttl: float | None) -> None: ...

    async def delete(self, key: str) -> None: ...

    async def clear(self) -> None: ...

    async def aclose(self) -> None: ...


def default_cache_dir() -> Path:
    """``cache/`` in the state directory (:func:`gonka_mux._paths.state_dir`)."""
    return state_dir() / "cache"


class MemoryCacheStore:
    """An LRU dict in this process, bounded by ``max_entries`` and ``max_bytes``."""

    def __init__(self, *, max_entries: int = 10_000, max_bytes: int = 256 * 1024 * 1024) -> None:
        if max_entries < 1 or max_bytes < 1:
            raise ValueError("max_entries and max_bytes must be >= 1")
        self.max_entries = max_entries
        self.max_bytes = max_bytes
        self._data: OrderedDict[str, tuple[float, bytes]] = OrderedDict()
        self._bytes = 0

    def __repr__(self) -> str:
        return f"MemoryCacheStore({len(self._data)} entries)"

    def __len__(self) -> int:
        return len(self._data)

    async def get(self, key: str) -> bytes | None:
        item = self._data.get(key)
        if item is None:
            return None
        expires, value = item
        if expires and expires <= time.monotonic():
            self._drop(key)
            return None
        self._data.move_to_end(key)
        return value

    async def set(self, key: str, value: bytes, ttl: float | None) -> None:
        if len(value) > self.max_bytes:
            return
        self._drop(key)
        self._data[key] = (time.monotonic() + ttl if ttl else 0.0, value)
        self._bytes += len(value)
        while len(self._data) > self.max_entries or self._bytes > self.max_bytes:
            oldest = next(iter(self._data))
            self._drop(oldest)

    def _drop(self, key: str) -> None:
        item = self._data.pop(key, None)
        if item is not None:
            self._bytes -= len(item[1])

    async def delete(self, key: str) -> None:
        self._drop(key)

    async def clear(self) -> None:
        self._data.clear()
        self._bytes = 0

    async def aclose(self) -> None:
        return None


class DiskCacheStore:
    """A ``diskcache.Cache`` in ``directory`` (default :func:`default_cache_dir`), shared by
    the processes of one host, bounded to ``max_size`` bytes.

    Eviction is diskcache's ``least-recently-stored`` (LRU-ish): the ``least-recently-used``
    policy writes an access time on every read, which would turn each hit into a write
    transaction. Reads run on the event loop (a WAL read of one row takes microseconds; a hit
    is meant to cost well under a millisecond), writes in a worker thread. The directory is
    made, and kept, ``0700``: it holds replies to the users' prompts.
    """

    def __init__(
        self,
        directory: str | os.PathLike[str] | None = None,
        *,
        max_size: int = DEFAULT_MAX_SIZE,
        timeout: float = 0.25,
    ) -> None:
        if max_size < 1:
            raise ValueError("max_size must be >= 1 byte")
        self.directory = (
            Path(directory).expanduser() if directory is not None else default_cache_dir()
        )
        self.max_size = max_size
        self.timeout = timeout
        self._cache: Any = None
        self._lock = threading.Lock()

    def __repr__(self) -> str:
        return f"DiskCacheStore({str(self.directory)!r})"

    def _open(self) -> Any:
        cache = self._cache
        if cache is not None:
            return cache
        with self._lock:
            if self._cache is None:
                import diskcache  # type: ignore[import-untyped]

                secure_directory(self.directory)
                self._cache = diskcache.Cache(
                    str(self.directory),
                    size_limit=self.max_size,
                    eviction_policy="least-recently-stored",
                    timeout=self.timeout,
                )
            return self._cache

    async def get(self, key: str) -> bytes | None:
        value = self._open().get(key)
        if value is None:
            return None
        if not isinstance(value, bytes):
            raise ValueError(f"a cache entry of type {type(value).__name__}, not bytes")
        return value

    async def set(self, key: str, value: bytes, ttl: float | None) -> None:
        cache = self._open()
        await asyncio.to_thread(cache.set, key, value, expire=ttl, retry=True)

    async def delete(self, key: str) -> None:
        cache = self._open()
        await asyncio.to_thread(cache.delete, key, retry=True)

    async def clear(self) -> None:
        cache = self._open()
        await asyncio.to_thread(cache.clear, retry=True)

    def reset(self) -> None:
        """Forget the open handle (the files may have been replaced); reopened on next use."""
        with self._lock:
            cache, self._cache = self._cache, None
        if cache is not None:
            try:
                cache.close()
            except Exception:
                log.debug("closing %r failed", self, exc_info=True)

    async def aclose(self) -> None:
        self.reset()


def secure_directory(directory: Path) -> None:
    """Create ``directory`` ``0700`` (parents too), or narrow an existing one of ours to it."""
    directory.mkdir(parents=True, exist_ok=True, mode=0o700)
    info = directory.stat()
    if stat.S_IMODE(info.st_mode) != 0o700 and info.st_uid == os.getuid():
        os.chmod(directory, 0o700)


class RedisCacheStore:
    """Entries in Redis under ``prefix`` (shared by every process of a fleet), with the TTL as
    the key's expiry and Redis's own ``maxmemory`` policy for size.

    Short socket timeouts: a cache that answers slowly is worse than none. The URL may hold a
    password; only its host part is ever shown."""

    def __init__(
        self,
        url: str,
        *,
        prefix: str = "gonka_mux:cache:",
        connect_timeout: float = 0.5,
        timeout: float = 1.0,
    ) -> None:
        if not isinstance(url, str) or not url.startswith(("redis://", "rediss://", "unix://")):
            raise ValueError("the Redis cache store needs a redis://, rediss:// or unix:// URL")
        self._url = url
        self.prefix = prefix
        self._options: dict[str, Any] = {
            "socket_connect_timeout": connect_timeout,
            "socket_timeout": timeout,
        }
        self._clients: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, Any] = (
            weakref.WeakKeyDictionary()
        )

    def __repr__(self) -> str:
        return f"RedisCacheStore({shown_url(self._url)!r})"

    def _client(self) -> Any:
        loop = asyncio.get_running_loop()
        client = self._clients.get(loop)
        if client is None:
            try:
                import redis.asyncio as aioredis
            except ImportError as exc:
                raise ModuleNotFoundError(
                    "the Redis cache store needs the redis package: pip install 'gonka-mux[redis]'",
                    name="redis",
                ) from exc
            client = aioredis.Redis.from_url(self._url, **self._options)
            self._clients[loop] = client
        return client

    async def get(self, key: str) -> bytes | None:
        value = await self._client().get(self.prefix + key)
        return None if value is None else bytes(value)

    async def set(self, key: str, value: bytes, ttl: float | None) -> None:
        px = max(1, int(ttl * 1000)) if ttl else None
        await self._client().set(self.prefix + key, value, px=px)

    async def delete(self, key: str) -> None:
        await self._client().delete(self.prefix + key)

    async def clear(self) -> None:
        client = self._client()
        batch: list[Any] = []
        async for name in client.scan_iter(match=self.prefix + "*", count=500):
            batch.append(name)
            if len(batch) >= 500:
                await client.delete(*batch)
                batch.clear()
        if batch:
            await client.delete(*batch)

    async def aclose(self) -> None:
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:  # pragma: no cover - awaited, so a loop runs
            return
        client = self._clients.pop(loop, None)
        self._clients.clear()
        if client is not None:
            try:
                await client.aclose()
            except Exception:
                log.debug("closing %r failed", self, exc_info=True)


def cache_store(spec: Any = None, *, path: Any = None, max_size: int | None = None) -> Any:
    """A store from a name or URL: ``"disk"`` (default, diskcache at ``path``), ``"memory"``,
    a ``redis://`` URL, or a store object (returned as is)."""
    if spec is None or spec == "disk":
        return DiskCacheStore(path, max_size=max_size or DEFAULT_MAX_SIZE)
    if spec == "memory":
        return MemoryCacheStore(max_bytes=max_size or 256 * 1024 * 1024)
    if isinstance(spec, str):
        if spec.startswith(("redis://", "rediss://", "unix://")):
            return RedisCacheStore(spec)
        raise ValueError(
            f"unknown cache store {shown_url(spec) if '://' in spec else spec!r}: use 'disk', "
            "'memory' or a redis:// URL"
        )
    if all(callable(getattr(spec, name, None)) for name in ("get", "set", "aclose")):
        return spec
    raise TypeError(
        f"a cache store is 'disk', 'memory', a redis:// URL or a store object, not "
        f"{type(spec).__name__}"
    )
