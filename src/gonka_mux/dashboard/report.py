"""The data behind every usage view, shared by the CLI tables, JSON/CSV output and the HTML page.

Formatting rules live here too, so the terminal and the page show the same numbers the same way
(the page's JavaScript mirrors :func:`fmt_int`, :func:`fmt_cost` and :func:`fmt_seconds`).
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from datetime import datetime, timezone
from typing import Any

from gonka_mux.metering import (
    UsageQuery,
    UsageRecord,
    UsageStore,
    UsageSummary,
    parse_duration,
    parse_time,
)

__all__ = [
    "SUMMARY_COLUMNS",
    "as_query",
    "auto_bucket",
    "bucket_count",
    "fmt_cost",
    "fmt_int",
    "fmt_seconds",
    "group_label",
    "report_data",
    "summary_columns",
    "summary_rows",
]

#: Columns of a summary in JSON/CSV output, in order.
SUMMARY_COLUMNS = (
    "requests",
    "errors",
    "prompt_tokens",
    "completion_tokens",
    "reasoning_tokens",
    "total_tokens",
    "cost",
    "latency_p50",
    "latency_p95",
    "latency_p99",
    "ttft_p50",
    "ttft_p95",
    "ttft_p99",
    "attempts",
    "hedged",
    "failed_over",
)

# Bucket widths (seconds) for "tokens over time", smallest first. The first that gives at most
# MAX_BUCKETS bars is used; each width is at most 2.5x the one before, so the chart gets at least
# ~24 bars (30 or more for most spans) whenever the run lasts 24 s or more: a 5-minute run is
# not one bar. Widths are whole seconds because the page labels the buckets to the second.
_BUCKETS = (
    1, 2, 3, 5, 10, 15, 30,
    60, 120, 180, 300, 600, 900, 1800,
    3600, 2 * 3600, 3 * 3600, 6 * 3600, 12 * 3600,
    86400, 2 * 86400, 4 * 86400, 7 * 86400, 14 * 86400, 30 * 86400, 60 * 86400, 90 * 86400,
)  # fmt: skip
#: The most bars "tokens over time" gets from :func:`auto_bucket`.
MAX_BUCKETS = 60


def as_query(source: UsageQuery | UsageStore | Iterable[UsageRecord]) -> UsageQuery:
    return source if isinstance(source, UsageQuery) else UsageQuery(source)


def group_label(group: Any) -> str:
    if group is None:
        return "(none)"
    if isinstance(group, tuple):
        return " / ".join(group_label(g) for g in group)
    return str(group)


def fmt_int(value: int) -> str:
    return f"{value:,}"


def fmt_cost(value: float | None) -> str:
    if value is None:
        return "-"
    sign, amount = ("-" if value < 0 else ""), abs(value)
    if amount >= 100:
        return f"{sign}${amount:,.2f}"
    if amount >= 1:
        return f"{sign}${amount:,.4f}"
    return f"{sign}${amount:.6f}"


def fmt_seconds(value: float | None) -> str:
    return "-" if value is None else f"{value:.3f} s"


def bucket_count(first: float, last: float, width: float) -> int:
    """How many buckets of ``width`` seconds, aligned to the epoch as
    :meth:`~gonka_mux.metering.UsageQuery.timeseries` aligns them, span ``first``..``last``."""
    return math.floor(last / width) - math.floor(first / width) + 1


def auto_bucket(first: float, last: float) -> int:
    """The bucket width (seconds) for a run from ``first`` to ``last``: the smallest of the
    standard widths giving at most :data:`MAX_BUCKETS` buckets, so a short run gets seconds and
    a month gets days, each drawn with about 30-60 bars."""
    for width in _BUCKETS:
        if bucket_count(first, last, width) <= MAX_BUCKETS:
            return width
    return _BUCKETS[-1]


def _iso(ts: float | None) -> str | None:
    if ts is None:
        return None
    return datetime.fromtimestamp(ts, tz=timezone.utc).isoformat(timespec="seconds")


def summary_rows(summaries: Sequence[UsageSummary]) -> list[dict[str, Any]]:
    """One JSON-able row per summary: its group label and :data:`SUMMARY_COLUMNS`."""
    return [{"group": group_label(s.group), **summary_columns(s)} for s in summaries]


def summary_columns(summary: UsageSummary) -> dict[str, Any]:
    """The :data:`SUMMARY_COLUMNS` of a summary, in order."""
    return {name: getattr(summary, name) for name in SUMMARY_COLUMNS}


def report_data(
    source: UsageQuery | UsageStore | Iterable[UsageRecord],
    *,
    since: Any = None,
    until: Any = None,
    bucket: str | float | None = None,
    strong_tier: str | None = None,
    top_sessions: int = 30,
    title: str = "gonka_mux usage",
) -> dict[str, Any]:
    """Everything the HTML page shows, as plain JSON-able data."""
    query = as_query(source)
    since_ts, until_ts = parse_time(since), parse_time(until)
    records = query.records(since=since_ts, until=until_ts)
    scoped = UsageQuery(records)
    totals = scoped.totals()
    first = min((r.time for r in records), default=None)
    last = max((r.time for r in records), default=None)
    if bucket is None:
        width = auto_bucket(first or 0.0, last or 0.0)
    else:
        width = math.ceil(parse_duration(bucket))
    sessions = scoped.breakdown(by="session")[:top_sessions]
    shown = {s.group for s in sessions}
    share: dict[str, dict[str, int]] = {}
    models: list[str] = []
    for row in scoped.breakdown(by=("session", "model")):
        session, model = row.group
        if session not in shown:
            continue
        share.setdefault(group_label(session), {})[model] = row.total_tokens
        if model not in models:
            models.append(model)
    return {
        "title": title,
        "generated_at": _iso(datetime.now(tz=timezone.utc).timestamp()),
        "range": {
            "since": _iso(since_ts),
            "until": _iso(until_ts),
            "first": _iso(first),
            "last": _iso(last),
        },
        "totals": summary_columns(totals),
        "by_model": summary_rows(scoped.breakdown(by="model")),
        "by_session": summary_rows(sessions),
        "by_key": summary_rows(scoped.breakdown(by="key")),
        "by_endpoint": summary_rows(scoped.breakdown(by="endpoint")),
        "session_models": {
            "sessions": [group_label(s.group) for s in sessions],
            "models": sorted(models),
            "tokens": share,
        },
        "timeseries": {
            "bucket": width,
            "points": [
                {
                    "t": s.group,
                    "label": _iso(s.group),
                    "requests": s.requests,
                    "prompt": s.prompt_tokens,
                    "completion": s.completion_tokens,
                }
                for s in scoped.timeseries(bucket=width)
            ],
        },
        "tiering": scoped.tiering(strong_tier=strong_tier).to_dict(),
    }
