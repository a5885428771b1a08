"""Local rate limiting: requests and tokens per minute per caller key (by tier) and per endpoint.

See :mod:`gonka_mux.limits.limiter` for the flow (acquire, then settle or cancel) and
:mod:`gonka_mux.limits.config` for the configuration mapping.
"""

from __future__ import annotations

from .backend import LimitBackend
from .config import LimitsConfig, RateLimit, Tier
from .limiter import LOCAL_FALLBACK, RateLimiter, Rejected, Reservation, estimate_tokens
from .memory import MemoryLimitBackend
from .redis import RedisLimitBackend
from .sqlite import SqliteLimitBackend

__all__ = [
    "LOCAL_FALLBACK",
    "LimitBackend",
    "LimitsConfig",
    "MemoryLimitBackend",
    "RateLimit",
    "RateLimiter",
    "RedisLimitBackend",
    "Rejected",
    "Reservation",
    "SqliteLimitBackend",
    "Tier",
    "estimate_tokens",
]
