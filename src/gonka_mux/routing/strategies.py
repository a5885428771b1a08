"""Endpoint selection strategies: small values with one method, ``select``.

Every strategy picks among the endpoints of one tier of one model pool, skipping endpoints that
are not selectable now (cooling, ejected, full, removed) or already tried for this request.
Selection is O(1) in the pool size on the common path (random sampling with rejection), with a
linear scan only when most of the pool is unavailable, so a pool of 1,000 Gonka participants
costs the same as a pool of 3.
"""

from __future__ import annotations

import bisect
import random
from collections.abc import Collection, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Protocol

if TYPE_CHECKING:
    from ..endpoint import Endpoint

__all__ = [
    "PowerOfTwoChoices",
    "RoundRobin",
    "Strategy",
    "WeightedRandom",
    "strategy_from_name",
]

_SAMPLE_TRIES = 6


class Strategy(Protocol):
    name: str

    def select(
        self,
        endpoints: Sequence[Endpoint],
        now: float,
        exclude: Collection[Endpoint],
        default_cost: float,
    ) -> Endpoint | None: ...


def _ok(ep: Endpoint, now: float, exclude: Collection[Endpoint]) -> bool:
    return ep.selectable(now) and ep not in exclude


def _scan(endpoints: Sequence[Endpoint], now: float, exclude: Collection[Endpoint]) -> list:
    return [ep for ep in endpoints if _ok(ep, now, exclude)]


@dataclass
class PowerOfTwoChoices:
    """Pick two endpoints at random, send to the one with the lower load score.

    Score = peak-EWMA latency x (in-flight + external load + 1) / weight (see
    ``Endpoint.score``). Failures add a fading penalty to the latency estimate, so a
    fast-failing endpoint looks slow.

    Pools of at most ``full_scan_below`` endpoints are scanned whole and the best score wins
    (ties broken at random): with few endpoints two random picks are often both bad (4 bad
    endpoints out of 8 give a bad pair 21% of the time), and scanning a handful of endpoints costs
    less than the retry a bad pick leads to. Large pools (the Gonka network's hundreds of
    participants) keep O(1) random sampling.
    """

    rng: random.Random = field(default_factory=random.Random, repr=False)
    full_scan_below: int = 16
    name: str = "p2c"

    def select(self, endpoints, now, exclude, default_cost):
        n = len(endpoints)
        if n == 0:
            return None
        rand = self.rng.random
        if n <= self.full_scan_below:
            best = None
            best_score = 0.0
            start = int(rand() * n)
            for k in range(n):
                ep = endpoints[(start + k) % n]
                if not _ok(ep, now, exclude):
                    continue
                score = ep.score(default_cost, now)
                if best is None or score < best_score:
                    best, best_score = ep, score
            return best
        first = None
        for _ in range(_SAMPLE_TRIES):
            ep = endpoints[int(rand() * n)]
            if ep is first or not _ok(ep, now, exclude):
                continue
            if first is None:
                first = ep
                continue
            return first if first.score(default_cost, now) <= ep.score(default_cost, now) else ep
        if first is not None:
            return first
        live = _scan(endpoints, now, exclude)
        if not live:
            return None
        if len(live) == 1:
            return live[0]
        a = live[int(rand() * len(live))]
        b = live[int(rand() * len(live))]
        return a if a.score(default_cost, now) <= b.score(default_cost, now) else b


@dataclass
class WeightedRandom:
    """Pick an endpoint with probability proportional to its weight (multiplexer-llm's rule)."""

    rng: random.Random = field(default_factory=random.Random, repr=False)
    name: str = "weighted_random"
    _cache_key: int = field(default=0, init=False, repr=False)
    _cache_for: object = field(default=None, init=False, repr=False)
    _cumulative: list[float] = field(default_factory=list, init=False, repr=False)

    def _prefix(self, endpoints: Sequence[Endpoint]) -> list[float]:
        if self._cache_for is not endpoints:
            total = 0.0
            cum = []
            for ep in endpoints:
                total += ep.weight
                cum.append(total)
            self._cumulative = cum
            self._cache_for = endpoints
        return self._cumulative

    def select(self, endpoints, now, exclude, default_cost):
        n = len(endpoints)
        if n == 0:
            return None
        cum = self._prefix(endpoints)
        total = cum[-1]
        for _ in range(_SAMPLE_TRIES):
            i = bisect.bisect_right(cum, self.rng.random() * total)
            ep = endpoints[min(i, n - 1)]
            if _ok(ep, now, exclude):
                return ep
        live = _scan(endpoints, now, exclude)
        if not live:
            return None
        return self.rng.choices(live, weights=[e.weight for e in live], k=1)[0]


@dataclass
class RoundRobin:
    """Take endpoints in turn, skipping unavailable ones (weights are ignored)."""

    name: str = "round_robin"
    _next: int = field(default=0, init=False, repr=False)

    def select(self, endpoints, now, exclude, default_cost):
        n = len(endpoints)
        for _ in range(n):
            ep = endpoints[self._next % n]
            self._next += 1
            if _ok(ep, now, exclude):
                return ep
        return None


def strategy_from_name(name: str, seed: int | None = None) -> Strategy:
    rng = random.Random(seed)
    key = name.strip().lower().replace("-", "_")
    if key in ("p2c", "power_of_two", "power_of_two_choices", "peak_ewma"):
        return PowerOfTwoChoices(rng=rng)
    if key in ("weighted_random", "weighted", "random"):
        return WeightedRandom(rng=rng)
    if key in ("round_robin", "rr"):
        return RoundRobin()
    raise ValueError(
        f"unknown routing strategy {name!r}: use 'p2c', 'weighted_random' or 'round_robin'"
    )
