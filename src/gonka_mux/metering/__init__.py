"""Usage metering: one record per request, stored off the hot path, queried for reports.

``Meter`` queues :class:`UsageRecord` s and writes them in batches to a store
(:class:`SqliteUsageStore` by default, in the user's state directory;
:class:`PostgresUsageStore` for a ``postgresql://`` URL shared by a fleet); :class:`UsageQuery`
answers totals, breakdowns and time series. The Prometheus exporter lives in
:mod:`gonka_mux.metering.prometheus` (an optional extra) and is not imported here.
"""

from __future__ import annotations

from .._exports import lazy_exports
from .meter import Meter, MeterClosedError, UsageSink
from .prices import ModelPrice, Prices
from .query import TieringReport, TierRow, UsageQuery, UsageSummary, parse_duration, parse_time
from .records import UsageRecord
from .stores import (
    MemoryUsageStore,
    SqliteUsageStore,
    UsageStore,
    default_usage_db,
    open_usage_store,
)

TYPE_CHECKING = False
if TYPE_CHECKING:
    from .postgres import PostgresUsageStore

__all__ = [
    "MemoryUsageStore",
    "Meter",
    "MeterClosedError",
    "ModelPrice",
    "PostgresUsageStore",
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
    "open_usage_store",
    "parse_duration",
    "parse_time",
]

__getattr__, __dir__ = lazy_exports(globals(), {"PostgresUsageStore": ".postgres"})
