"""``GET /admin/usage``: the meter's :class:`~gonka_mux.metering.UsageQuery` over HTTP."""

from __future__ import annotations

import asyncio
from collections.abc import Mapping
from typing import Any

from gonka_mux.metering import UsageQuery, parse_duration, parse_time

from .errors import HTTPError

__all__ = ["GROUPS", "usage_report"]

GROUPS = ("key", "session", "model", "endpoint", "tier", "status", "period")
_PERIODS = {"minute": "1m", "hour": "1h", "day": "1d"}


async def usage_report(
    meter: Any,
    *,
    group_by: str,
    period: str,
    since: str | None,
    until: str | None,
    filters: Mapping[str, str],
) -> dict[str, Any]:
    """Totals plus one row per group (or per time bucket for ``group_by="period"``).

    ``period`` is ``minute``/``hour``/``day`` or a duration (``15m``); ``since``/``until`` are
    what :func:`~gonka_mux.metering.parse_time` takes (epoch seconds, ISO time, ``24h`` ago).
    Records still queued in the meter are stored first, so a report includes every request that
    finished before it was asked for.
    """
    if group_by not in GROUPS:
        raise HTTPError(400, f"'group_by' must be one of {', '.join(GROUPS)}.", param="group_by")
    bucket = _PERIODS.get(period, period)
    try:
        parse_duration(bucket)
    except ValueError:
        raise HTTPError(
            400,
            "'period' must be minute, hour, day or a duration such as 15m.",
            param="period",
        ) from None
    bounds = {}
    for name, value in (("since", since), ("until", until)):
        try:
            bounds[name] = parse_time(value)
        except ValueError as exc:
            raise HTTPError(400, f"'{name}': {exc}", param=name) from None

    def read() -> dict[str, Any]:
        meter.flush(timeout=10)
        query = UsageQuery(meter.store)
        totals = query.totals(**bounds, **filters)
        if group_by == "period":
            rows = query.timeseries(bucket, **bounds, **filters)
        else:
            rows = query.breakdown(group_by, **bounds, **filters)
        return {
            "object": "usage_report",
            "group_by": group_by,
            "period": bucket if group_by == "period" else None,
            **bounds,
            "totals": totals.to_dict(),
            "data": [row.to_dict() for row in rows],
        }

    return await asyncio.to_thread(read)
