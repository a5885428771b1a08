"""Questions about usage: totals, breakdowns, time series and tiering savings.

Every answer is a :class:`UsageSummary` (or a list of them): request and error counts, token sums,
estimated cost, and latency / time-to-first-token percentiles (linear interpolation between the
closest ranks, as ``numpy.percentile`` does by default)::

    query = UsageQuery(SqliteUsageStore())
    query.totals(since="24h")
    query.breakdown(by="session", since="7d")          # or ("session", "model")
    query.timeseries(bucket="1h", since="24h", model="Qwen/Qwen3-8B")
    query.tiering(since="30d")

Filters (``key``, ``session_id``, ``model``, ``endpoint``, ``tier``, ``status``) match exactly;
``model`` is the model that served the request. ``since`` / ``until`` take epoch seconds, a
``datetime``, an ISO date, or a duration back from now (``"30m"``, ``"24h"``, ``"7d"``).
"""

from __future__ import annotations

import math
import re
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import asdict, dataclass
from datetime import datetime
from typing import Any

from .prices import ModelPrice
from .records import UsageRecord
from .stores import MemoryUsageStore, UsageStore

__all__ = [
    "BREAKDOWNS",
    "TierRow",
    "TieringReport",
    "UsageQuery",
    "UsageSummary",
    "parse_duration",
    "parse_time",
    "percentile",
]

#: ``by=`` names and how each reads a record.
BREAKDOWNS: dict[str, Callable[[UsageRecord], Any]] = {
    "model": lambda r: r.effective_model,
    "requested_model": lambda r: r.model,
    "session": lambda r: r.session_id,
    "key": lambda r: r.key,
    "endpoint": lambda r: r.endpoint,
    "tier": lambda r: r.tier,
    "status": lambda r: r.status,
}

_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 7 * 86400}
_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([smhdw])\s*$", re.IGNORECASE)


@dataclass
class UsageSummary:
    """Aggregates over a set of records; ``group`` says which (``None`` for totals, a value or a
    tuple of values for a breakdown, the bucket's start in epoch seconds for a time series)."""

    group: Any
    requests: int
    errors: int
    prompt_tokens: int
    completion_tokens: int
    reasoning_tokens: int
    total_tokens: int
    cost: float
    priced_requests: int
    attempts: int
    hedged: int
    failed_over: int
    latency_p50: float | None
    latency_p95: float | None
    latency_p99: float | None
    ttft_p50: float | None
    ttft_p95: float | None
    ttft_p99: float | None
    # the response cache: lookups that hit and missed, and what the hits did not spend
    cache_hits: int = 0
    cache_misses: int = 0
    saved_tokens: int = 0
    saved_cost: float = 0.0

    @property
    def cache_hit_rate(self) -> float | None:
        """Hits over cache lookups (None when the cache was never asked)."""
        looked = self.cache_hits + self.cache_misses
        return self.cache_hits / looked if looked else None

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        if isinstance(self.group, tuple):
            data["group"] = list(self.group)
        return data


def summarize(group: Any, records: Sequence[UsageRecord]) -> UsageSummary:
    latencies = sorted(r.latency for r in records if r.latency is not None)
    ttfts = sorted(r.ttft for r in records if r.ttft is not None)
    prompt = sum(r.prompt_tokens for r in records)
    completion = sum(r.completion_tokens for r in records)
    costs = [r.cost for r in records if r.cost is not None]
    return UsageSummary(
        group=group,
        requests=len(records),
        errors=sum(1 for r in records if r.status != "ok"),
        prompt_tokens=prompt,
        completion_tokens=completion,
        reasoning_tokens=sum(r.reasoning_tokens for r in records),
        total_tokens=prompt + completion,
        cost=math.fsum(costs),
        priced_requests=len(costs),
        attempts=sum(r.attempts for r in records),
        hedged=sum(1 for r in records if r.hedged),
        failed_over=sum(1 for r in records if r.failed_over),
        latency_p50=percentile(latencies, 50),
        latency_p95=percentile(latencies, 95),
        latency_p99=percentile(latencies, 99),
        ttft_p50=percentile(ttfts, 50),
        ttft_p95=percentile(ttfts, 95),
        ttft_p99=percentile(ttfts, 99),
        cache_hits=sum(1 for r in records if r.cache == "hit"),
        cache_misses=sum(1 for r in records if r.cache == "miss"),
        saved_tokens=sum(r.saved_tokens for r in records),
        saved_cost=math.fsum(r.saved_cost for r in records if r.saved_cost is not None),
    )


def percentile(sorted_values: Sequence[float], pct: float) -> float | None:
    """The ``pct`` percentile of already sorted values (linear interpolation); None when empty."""
    if not sorted_values:
        return None
    rank = (len(sorted_values) - 1) * pct / 100
    low = math.floor(rank)
    high = min(low + 1, len(sorted_values) - 1)
    return sorted_values[low] + (sorted_values[high] - sorted_values[low]) * (rank - low)


@dataclass
class TierRow:
    """One tier in the tiering report; ``strong_cost`` is what its tokens would have cost on the
    strong tier, ``saved`` the difference."""

    tier: str
    requests: int
    prompt_tokens: int
    completion_tokens: int
    total_tokens: int
    cost: float
    strong_cost: float | None
    saved: float | None


@dataclass
class TieringReport:
    """Requests, tokens and cost per tier, and the estimated saving against sending everything
    to the strong tier.

    How the saving is computed: the *strong* tier is the one named ``strong_tier``, else the tier
    called ``"strong"``, else the tier with the highest observed cost per token. Each tier's
    requests are priced at the strong model's own prompt and completion prices
    (``strong_cost``: what they would have cost there) and compared with what they did cost
    (``saved``). Those prices are ``strong_price`` when given; else they are recovered from the
    strong tier's own records, which were priced per prompt and per completion token (a least
    squares fit of ``cost = prompt x p + completion x c``, exact when one price table priced
    them): ``strong_pricing="fitted"``. Only when those records cannot tell the two prices apart
    (every one has the same prompt/completion mix, or the fit is not a price) is one blended rate
    used, the strong tier's cost divided by its tokens (``strong_pricing="blended"``): a cheap
    tier answering with a different mix is then priced too low or too high, which is why the
    blended rate is the last resort. ``strong_rate_per_1m`` is the strong cost per 1M of all the
    priced tokens. Only records with a known cost take part in the costs;
    ``unpriced_requests`` counts the others.
    """

    rows: list[TierRow]
    strong_tier: str | None
    strong_rate_per_1m: float | None
    cost: float
    strong_cost: float | None
    saved: float | None
    saved_fraction: float | None
    unpriced_requests: int
    strong_prices: ModelPrice | None = None  # per 1M prompt / completion tokens
    strong_pricing: str | None = None  # "given", "fitted" or "blended"

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


class UsageQuery:
    """Answers questions over a store (or any iterable of records)."""

    def __init__(self, source: UsageStore | Iterable[UsageRecord]) -> None:
        self.store: UsageStore = (
            source if isinstance(source, UsageStore) else MemoryUsageStore(source)
        )

    def records(
        self, *, since: Any = None, until: Any = None, **filters: str | None
    ) -> list[UsageRecord]:
        return self.store.select(since=parse_time(since), until=parse_time(until), **filters)

    def totals(
        self, *, since: Any = None, until: Any = None, **filters: str | None
    ) -> UsageSummary:
        return summarize(None, self.records(since=since, until=until, **filters))

    def breakdown(
        self,
        by: str | Sequence[str] = "model",
        *,
        since: Any = None,
        until: Any = None,
        **filters: str | None,
    ) -> list[UsageSummary]:
        """One summary per group, largest token use first. ``by`` is one of :data:`BREAKDOWNS`
        or a tuple of them (``("session", "model")``: one row per session and model)."""
        names = (by,) if isinstance(by, str) else tuple(by)
        readers = []
        for name in names:
            reader = BREAKDOWNS.get(name)
            if reader is None:
                raise ValueError(
                    f"cannot break usage down by {name!r}; use one of {', '.join(BREAKDOWNS)}"
                )
            readers.append(reader)
        groups: dict[Any, list[UsageRecord]] = {}
        for record in self.records(since=since, until=until, **filters):
            values = tuple(reader(record) for reader in readers)
            groups.setdefault(values if len(values) > 1 else values[0], []).append(record)
        summaries = [summarize(group, records) for group, records in groups.items()]
        summaries.sort(key=lambda s: (-s.total_tokens, -s.requests, str(s.group)))
        return summaries

    def timeseries(
        self,
        bucket: str | float = "1h",
        *,
        since: Any = None,
        until: Any = None,
        **filters: str | None,
    ) -> list[UsageSummary]:
        """One summary per time bucket (aligned to the epoch, UTC), oldest first, with empty
        buckets filled in between the first and the last record."""
        width = parse_duration(bucket)
        records = self.records(since=since, until=until, **filters)
        if not records:
            return []
        groups: dict[float, list[UsageRecord]] = {}
        for record in records:
            groups.setdefault(math.floor(record.time / width) * width, []).append(record)
        first, last = min(groups), max(groups)
        count = round((last - first) / width) + 1
        return [
            summarize(start, groups.get(start, []))
            for start in (first + i * width for i in range(count))
        ]

    def tiering(
        self,
        *,
        since: Any = None,
        until: Any = None,
        strong_tier: str | None = None,
        strong_price: ModelPrice | None = None,
        **filters: str | None,
    ) -> TieringReport:
        """Requests, tokens and cost per tier and the saving against all-strong (see
        :class:`TieringReport` for the computation)."""
        groups: dict[str, list[UsageRecord]] = {}
        for record in self.records(since=since, until=until, **filters):
            groups.setdefault(record.tier or "(none)", []).append(record)
        priced = {t: [r for r in rs if r.cost is not None] for t, rs in groups.items()}
        strong = _pick_strong_tier(priced, strong_tier)
        pricing: str | None = "given" if strong_price is not None else None
        rate: float | None = None
        if strong_price is None and strong is not None and priced.get(strong):
            strong_price = _fit_prices(priced[strong])
            if strong_price is not None:
                pricing = "fitted"
            else:
                tokens = sum(r.total_tokens for r in priced[strong])
                if tokens:
                    rate = math.fsum(r.cost for r in priced[strong]) / tokens  # type: ignore[misc]
                    pricing = "blended"

        def strong_cost_of(records: list[UsageRecord]) -> float | None:
            if strong_price is not None:
                return math.fsum(
                    strong_price.cost(r.prompt_tokens, r.completion_tokens) for r in records
                )
            if rate is None:
                return None
            return rate * sum(r.total_tokens for r in records)

        rows = []
        for tier, records in sorted(groups.items()):
            cost = math.fsum(r.cost for r in priced[tier])  # type: ignore[misc]
            equivalent = strong_cost_of(priced[tier])
            prompt = sum(r.prompt_tokens for r in records)
            completion = sum(r.completion_tokens for r in records)
            rows.append(
                TierRow(
                    tier=tier,
                    requests=len(records),
                    prompt_tokens=prompt,
                    completion_tokens=completion,
                    total_tokens=prompt + completion,
                    cost=cost,
                    strong_cost=equivalent,
                    saved=None if equivalent is None else _difference(equivalent, cost),
                )
            )
        total_cost = math.fsum(row.cost for row in rows)
        known = [row.strong_cost for row in rows]
        total_strong = None if not rows or None in known else math.fsum(known)  # type: ignore[arg-type]
        saved = None if total_strong is None else _difference(total_strong, total_cost)
        if strong_price is not None and total_strong is not None:
            priced_tokens = sum(r.total_tokens for rs in priced.values() for r in rs)
            rate = total_strong / priced_tokens if priced_tokens else None
        return TieringReport(
            rows=rows,
            strong_tier=strong,
            strong_rate_per_1m=None if rate is None else rate * 1_000_000,
            cost=total_cost,
            strong_cost=total_strong,
            saved=saved,
            saved_fraction=saved / total_strong if saved is not None and total_strong else None,
            unpriced_requests=sum(len(groups[t]) - len(priced[t]) for t in groups),
            strong_prices=strong_price,
            strong_pricing=pricing,
        )


def _difference(a: float, b: float) -> float:
    """``a - b``, with the float noise of fitted prices (1e-9 relative) rounded to zero: a tier
    that ran on the strong model itself saved nothing, not -0.000000001."""
    diff = a - b
    return 0.0 if abs(diff) <= 1e-9 * max(abs(a), abs(b)) else diff


def _fit_prices(records: list[UsageRecord]) -> ModelPrice | None:
    """The prompt and completion prices (per 1M tokens) that priced ``records``: the least
    squares solution of ``cost = prompt x p + completion x c``, or ``None`` when the records
    cannot separate the two (one prompt/completion mix) or the solution is not a price."""
    # Tokens in millions keep the sums of squares small; fsum keeps them exact enough.
    xs = [(r.prompt_tokens / 1e6, r.completion_tokens / 1e6, float(r.cost)) for r in records]  # type: ignore[arg-type]
    spp = math.fsum(p * p for p, _, _ in xs)
    scc = math.fsum(c * c for _, c, _ in xs)
    spc = math.fsum(p * c for p, c, _ in xs)
    spy = math.fsum(p * y for p, _, y in xs)
    scy = math.fsum(c * y for _, c, y in xs)
    det = spp * scc - spc * spc
    if spp <= 0 or scc <= 0 or det <= 1e-9 * spp * scc:  # collinear: only a blend is known
        return None
    prompt = (spy * scc - scy * spc) / det
    completion = (scy * spp - spy * spc) / det
    scale = max(abs(prompt), abs(completion))
    # Round off the fit's float noise (prices are short decimals: 0.6, not 0.5999999999997),
    # then refuse non-prices.
    prompt, completion = (
        0.0 if abs(v) <= 1e-9 * scale else float(f"{v:.10g}") for v in (prompt, completion)
    )
    if prompt < 0 or completion < 0 or scale == 0:
        return None
    return ModelPrice(prompt=prompt, completion=completion)


def _pick_strong_tier(priced: dict[str, list[UsageRecord]], requested: str | None) -> str | None:
    if requested is not None:
        return requested
    if "strong" in priced:
        return "strong"
    best, best_rate = None, -1.0
    for tier, records in priced.items():
        tokens = sum(r.total_tokens for r in records)
        if tokens:
            tier_rate = math.fsum(r.cost for r in records) / tokens  # type: ignore[misc]
            if tier_rate > best_rate:
                best, best_rate = tier, tier_rate
    return best


def parse_duration(value: str | float) -> float:
    """``"90s"``, ``"15m"``, ``"1h"``, ``"7d"``, ``"2w"`` or a number of seconds."""
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        seconds = float(value)
    else:
        match = _DURATION.match(str(value))
        if match is None:
            raise ValueError(
                f"invalid duration {value!r}; use a number and a unit, e.g. 30m, 24h or 7d"
            )
        seconds = float(match.group(1)) * _UNITS[match.group(2).lower()]
    if not seconds > 0 or not math.isfinite(seconds):
        raise ValueError(f"a duration must be positive, got {value!r}")
    return seconds


def parse_time(value: Any, *, now: float | None = None) -> float | None:
    """Epoch seconds from a number, a ``datetime``, an ISO date/datetime (naive = local time), a
    duration back from now (``"24h"``), or ``None`` / ``"all"`` for no bound."""
    if value is None:
        return None
    if isinstance(value, datetime):
        return value.timestamp()
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return float(value)
    text = str(value).strip()
    if text.lower() in ("", "all"):
        return None
    if _DURATION.match(text):
        return (time.time() if now is None else now) - parse_duration(text)
    try:
        return float(text)
    except ValueError:
        pass
    try:
        return datetime.fromisoformat(text).timestamp()
    except ValueError:
        raise ValueError(
            f"invalid time {value!r}; use a duration back from now (30m, 24h, 7d), an ISO date "
            "(2026-05-01 or 2026-05-01T12:00), epoch seconds, or 'all'"
        ) from None
