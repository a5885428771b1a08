"""The caller's deadline bounds the wait for rate-limit capacity (limits run before routing, so
the routing deadline alone would not stop them)."""

from __future__ import annotations

import time

import pytest

from gonka_mux import AsyncMultiplexer
from gonka_mux import RateLimitError as LocalRateLimitError
from gonka_mux.testing import FakeBackendSpec, FakeFleet

MSG = [{"role": "user", "content": "hello there"}]


async def test_a_request_does_not_wait_for_capacity_past_its_deadline() -> None:
    with FakeFleet([FakeBackendSpec(name="a")]) as fleet:
        mux = AsyncMultiplexer()
        mux.add_endpoint(fleet["a"].url, models=["m"], name="a")
        # One request per 2 s after a burst of 1, and callers may wait 10 s for capacity.
        mux.enable_limits(
            {"tiers": {"t": {"rpm": 30, "burst_requests": 1}}, "default_tier": "t", "max_wait": 10}
        )
        await mux.chat.completions.create(model="m", messages=MSG)
        t0 = time.monotonic()
        with pytest.raises(LocalRateLimitError) as ei:
            await mux.chat.completions.create(model="m", messages=MSG, deadline=0.5)
        assert time.monotonic() - t0 < 0.5  # refused at once: the ~2 s wait cannot fit
        assert ei.value.retry_after > 0.5
        # Without a deadline it waits for the slot, as before.
        await mux.chat.completions.create(model="m", messages=MSG)
        assert time.monotonic() - t0 > 1.0
        limits = mux.stats()["limits"]  # an in-process backend has nothing to fall back from
        assert limits["backend"] == "memory" and limits["fallbacks"] == 0
        await mux.aclose()
