"""An exact-match response cache for chat, completions and embeddings (``mux.enable_cache``).

See :mod:`gonka_mux.cache.feature` for what is and is not cached, and docs/agents.md.
"""

from __future__ import annotations

from .feature import CACHE, ORDER_CACHE, CacheLookup, ResponseCache
from .keys import cache_key, canonical_body, is_deterministic
from .replay import cache_status
from .stores import (
    CacheStore,
    DiskCacheStore,
    MemoryCacheStore,
    RedisCacheStore,
    cache_store,
    default_cache_dir,
)

__all__ = [
    "CACHE",
    "ORDER_CACHE",
    "CacheLookup",
    "CacheStore",
    "DiskCacheStore",
    "MemoryCacheStore",
    "RedisCacheStore",
    "ResponseCache",
    "cache_key",
    "cache_status",
    "cache_store",
    "canonical_body",
    "default_cache_dir",
    "is_deterministic",
]
