"""GCRA (generic cell rate algorithm) with weighted costs, for two dimensions at once.

State per key is two *theoretical arrival times* (TAT), in seconds on the backend's clock: one
for requests, one for tokens. A TAT at or before ``now`` means a full bucket. Admitting ``n`` units
moves the TAT to ``max(TAT, now) + n * interval``; the admission is allowed when that new TAT is
no more than ``capacity`` (``burst * interval``) ahead of ``now``. So an idle key spends ``burst``
units at once and then one unit per ``interval``, and in any window of ``W`` seconds at most
``burst + W / interval`` units are admitted.

A request costing more tokens than the burst is admitted only into a full bucket and leaves the key
in debt (its TAT further ahead than the capacity), so huge requests are possible but still pay.

Corrections after the fact move the TAT by ``delta * interval`` (a refund when negative); a refund
cannot create capacity beyond a full bucket because a TAT in the past reads as ``now``.

The Redis backend runs the same arithmetic in Lua (:mod:`gonka_mux.limits.redis`).
"""

from __future__ import annotations

from .config import RateLimit

__all__ = ["ADMITTED", "REQUESTS", "TOKENS", "gcra_adjust", "gcra_admit"]

#: ``blocked`` values of an admission result.
REQUESTS = "requests"
TOKENS = "tokens"

# Floating-point slack: a wait shorter than this is treated as none (sums of intervals drift).
EPSILON = 1e-9

#: The result of an admitted request: no wait, nothing blocked.
ADMITTED: tuple[float, str] = (0.0, "")


def gcra_admit(
    tat_requests: float, tat_tokens: float, now: float, limit: RateLimit, tokens: float
) -> tuple[float, str, float, float]:
    """Try to admit one request costing ``tokens``.

    Returns ``(wait, blocked, new_tat_requests, new_tat_tokens)``: ``wait == 0`` means admitted and
    the new TATs are to be stored; otherwise nothing changes and ``blocked`` names the dimension
    that needs the longest ``wait`` (seconds) before this request would fit.
    """
    wait = 0.0
    blocked = ""
    new_r = tat_requests
    new_t = tat_tokens
    interval = limit.request_interval
    if interval:
        new_r = (tat_requests if tat_requests > now else now) + interval
        over = new_r - limit.request_capacity - now
        if over > EPSILON:
            wait, blocked = over, REQUESTS
    interval = limit.token_interval
    if interval and tokens > 0:
        cost = tokens * interval
        new_t = (tat_tokens if tat_tokens > now else now) + cost
        capacity = limit.token_capacity
        over = new_t - (cost if cost > capacity else capacity) - now
        if over > EPSILON and over > wait:
            wait, blocked = over, TOKENS
    return wait, blocked, new_r, new_t


def gcra_adjust(
    tat_requests: float,
    tat_tokens: float,
    now: float,
    limit: RateLimit,
    requests: float,
    tokens: float,
) -> tuple[float, float]:
    """Charge (positive) or refund (negative) units after the fact; returns the new TATs."""
    if limit.request_interval and requests:
        base = tat_requests if tat_requests > now else now
        tat_requests = base + requests * limit.request_interval
    if limit.token_interval and tokens:
        base = tat_tokens if tat_tokens > now else now
        tat_tokens = base + tokens * limit.token_interval
    return tat_requests, tat_tokens
