"""Endpoint selection strategies: small values with one method, ``select``.

Every strategy picks among the endpoints of one tier of one model pool, skipping endpoints that
are not selectable now (cooling, ejected, full, removed) or already tried for this request.
Selection is O(log n) in the pool size on the common path (weighted random sampling with
rejection), with a linear scan only when most of the pool is unavailable, so a pool of 1,000
Gonka participants costs about the same as a pool of 3. Weights are shares: at light load and
equal latency, an endpoint of weight 3 gets three times the requests of one of weight 1.
"""

from __future__ import annotations

import math
import random
from bisect import bisect_right
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
# Absolute slack (seconds) added to the tolerance band, so scores of 0 (endpoints not yet
# measured) and float noise around them compare as equal.
_SLACK = 1e-6
# Pools (model x tier) whose weight prefix sums a strategy keeps.
_PREFIX_CACHE_SIZE = 64


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


class _WeightPrefix:
    """Prefix sums of weights, cached per pool.

    Pools are immutable tuples that the multiplexer replaces whenever an endpoint or a weight
    changes, so a tuple's identity is the cache key (each entry holds its tuple, so the id
    cannot be reused by another one while cached). A weighted draw is then one ``random()``
    and a bisect. One strategy serves every pool (each model's primary and fallback tier), so
    the cache keeps one entry per pool, not just the last one: requests alternating between
    two models would otherwise rebuild the sums of a 1,000-endpoint pool on every selection.
    Each entry is one tuple, assigned at once, so a concurrent caller never sees the sums of
    one pool paired with another.
    """

    _last: tuple[object, list[float]]
    _prefixes: dict[int, tuple[object, list[float]]]

    def _prefix(self, endpoints: Sequence[Endpoint]) -> list[float]:
        last = self._last
        if last[0] is endpoints:
            return last[1]
        entry = self._prefixes.get(id(endpoints))
        if entry is None or entry[0] is not endpoints:
            total = 0.0
            cum = []
            for ep in endpoints:
                total += ep.weight
                cum.append(total)
            if len(self._prefixes) >= _PREFIX_CACHE_SIZE:
                self._prefixes = {}  # replaced pools pile up here; drop them all at once
            entry = (endpoints, cum)
            self._prefixes[id(endpoints)] = entry
        self._last = entry
        return entry[1]


@dataclass
class PowerOfTwoChoices(_WeightPrefix):
    """Least loaded by peak-EWMA cost, with weights as shares among equals.

    Score = decayed peak-EWMA latency (plus a fading failure penalty) x (in-flight + external
    load + 1), see ``Endpoint.score``. Weight is not in the score: Gonka weights are the
    participants' compute, so when latencies are equal and load is light the *shares* must
    follow the weights, which no "lowest score wins" rule gives (the lowest score, however
    it is scaled, takes everything at light load). Scores within ``tolerance`` of each other
    (``score <= best * (1 + tolerance)``, plus a microsecond of slack) count as equal, and
    among equals the draw is proportional to weight.

    ``tolerance`` (default 0.5) should stay below 1: then an endpoint with one request in flight
    (score 2x) loses to an equal idle one, and an endpoint 2x slower, or carrying the default
    1 s failure penalty on top of a sub-second latency, stays out; while equal endpoints whose
    estimates differ by measurement noise or a little decay (up to 1.5x) still share by weight.
    The price: at high load in-flight counts may drift up to ~1.5x apart before the score
    corrects them, and a penalty small next to the latency (1 s on a 5 s generation) is within
    the band (health cooldowns still take a failing endpoint out). 0 gives plain "lowest score
    wins", with the weight only breaking exact ties.

    Pools of at most ``full_scan_below`` endpoints are scanned whole: the band is taken over
    all selectable endpoints (with few endpoints two random picks are often both bad, and
    scanning a handful costs less than the retry a bad pick leads to). Large pools (the Gonka
    network's hundreds of participants) use weighted power-of-two-choices: two candidates
    drawn with probability proportional to weight (O(log n) with cached prefix sums); the
    first one wins unless the second is better by more than the tolerance. Since the first
    draw is itself weighted, equal scores give exactly weight-proportional shares.
    """

    rng: random.Random = field(default_factory=random.Random, repr=False)
    full_scan_below: int = 16
    tolerance: float = 0.5
    name: str = "p2c"
    _last: tuple[object, list[float]] = field(default=(None, []), init=False, repr=False)
    _prefixes: dict[int, tuple[object, list[float]]] = field(
        default_factory=dict, init=False, repr=False
    )

    def __post_init__(self) -> None:
        if not 0.0 <= self.tolerance < math.inf:
            raise ValueError(f"PowerOfTwoChoices.tolerance must be >= 0 (got {self.tolerance!r})")
        if self.full_scan_below < 0:
            raise ValueError(
                f"PowerOfTwoChoices.full_scan_below must be >= 0 (got {self.full_scan_below!r})"
            )

    def select(self, endpoints, now, exclude, default_cost):
        n = len(endpoints)
        if n == 0:
            return None
        if n <= self.full_scan_below:
            return self._scan_select(endpoints, now, exclude, default_cost)
        rand = self.rng.random
        cached = self._last  # _prefix's fast path, inlined
        cum = cached[1] if cached[0] is endpoints else self._prefix(endpoints)
        total = cum[-1]
        last = n - 1
        first = None
        for _ in range(_SAMPLE_TRIES):
            i = bisect_right(cum, rand() * total)
            ep = endpoints[i if i < last else last]
            if ep is first or ep in exclude or not ep.selectable(now):
                continue
            if first is None:
                first = ep
                continue
            return self._pick(first, ep, now, default_cost)
        if first is not None:
            return first
        live = _scan(endpoints, now, exclude)
        if not live:
            return None
        if len(live) == 1:
            return live[0]
        a, b = self.rng.choices(live, weights=[e.weight for e in live], k=2)
        return self._pick(a, b, now, default_cost)

    def _pick(self, a: Endpoint, b: Endpoint, now: float, default_cost: float) -> Endpoint:
        """``a`` unless ``b`` scores better by more than the tolerance band. A stale estimate
        (see ``PeakEwma.stale``) is not held against its endpoint: it counts as the other's."""
        ua, la = a.unit_cost(default_cost, now), a.inflight + a.external_load + 1.0
        ub, lb = b.unit_cost(default_cost, now), b.inflight + b.external_load + 1.0
        if ua > ub and b.ewma.known and a.is_stale(now):
            ua = ub
        elif ub > ua and a.ewma.known and b.is_stale(now):
            ub = ua
        return a if ua * la <= ub * lb * (1.0 + self.tolerance) + _SLACK else b

    def _scan_select(self, endpoints, now, exclude, default_cost):
        live = []
        best_unit = math.inf  # the best per-request cost among fresh estimates
        for ep in endpoints:
            if ep in exclude or not ep.selectable(now):
                continue
            unit = ep.unit_cost(default_cost, now)
            stale = ep.is_stale(now)
            live.append((unit, ep.inflight + ep.external_load + 1.0, stale, ep))
            if not stale and unit < best_unit and ep.ewma.known:
                best_unit = unit
        if len(live) <= 1:
            return live[0][3] if live else None
        scored = []
        best = math.inf
        for unit, load, stale, ep in live:
            if stale and unit > best_unit:
                unit = best_unit  # forgotten, not held against it: it competes as an equal
            score = unit * load
            scored.append((score, ep))
            if score < best:
                best = score
        limit = best * (1.0 + self.tolerance) + _SLACK
        band = []
        total = 0.0
        for score, ep in scored:
            if score <= limit:
                band.append(ep)
                total += ep.weight
        if len(band) == 1:
            return band[0]
        r = self.rng.random() * total
        for ep in band:
            r -= ep.weight
            if r < 0:
                return ep
        return band[-1]  # float rounding left r at 0


@dataclass
class WeightedRandom(_WeightPrefix):
    """Pick an endpoint with probability proportional to its weight (multiplexer-llm's rule)."""

    rng: random.Random = field(default_factory=random.Random, repr=False)
    name: str = "weighted_random"
    _last: tuple[object, list[float]] = field(default=(None, []), init=False, repr=False)
    _prefixes: dict[int, tuple[object, list[float]]] = field(
        default_factory=dict, init=False, repr=False
    )

    def select(self, endpoints, now, exclude, default_cost):
        n = len(endpoints)
        if n == 0:
            return None
        cum = self._prefix(endpoints)
        total = cum[-1]
        for _ in range(_SAMPLE_TRIES):
            i = bisect_right(cum, self.rng.random() * total)
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
