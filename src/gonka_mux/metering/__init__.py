"""Usage metering: one record per request, stored off the hot path, queried for reports.

``Meter`` queues :class:`UsageRecord` s and writes them in batches to a store
(:class:`SqliteUsageStore` by default, in the user's state directory); :class:`UsageQuery`
answers totals, breakdowns and time series. The Prometheus exporter lives in
:mod:`gonka_mux.metering.prometheus` (an optional extra) and is not imported here.
"""

from __future__ import annotations

from .meter import Meter, MeterClosedError, UsageSink
from .prices import ModelPrice, Prices
from .query import TieringReport, TierRow, UsageQuery, UsageSummary, parse_duration, parse_time
from .records import UsageRecord
from .stores import MemoryUsageStore, SqliteUsageStore, UsageStore, default_usage_db

__all__ = [
    "MemoryUsageStore",
    "Meter",
    "MeterClosedError",
    "ModelPrice",
    "Prices",
    "SqliteUsageStore",
    "TierRow",
    "TieringReport",
    "UsageQuery",
    "UsageRecord",
    "UsageSink",
    "UsageStore",
    "UsageSummary",
    "default_usage_db",
    "parse_duration",
    "parse_time",
]
