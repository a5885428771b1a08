"""Routing at light load and at defaults, on real loopback servers: no healthy endpoint is
starved, weights are shares, and a hanging endpoint does not fail requests at default settings.
"""

from __future__ import annotations

import time
from collections import Counter

import pytest

from gonka_mux import AsyncMultiplexer
from gonka_mux.testing import FakeBackendSpec, FakeFleet, Faults

MSG = [{"role": "user", "content": "hi"}]


async def sequential(mux: AsyncMultiplexer, n: int) -> Counter[str]:
    served: Counter[str] = Counter()
    for _ in range(n):
        reply = await mux.chat.completions.create(model="m", messages=MSG)
        served[reply.choices[0].message.content.removeprefix("ok from ")] += 1
    return served


@pytest.mark.slow
async def test_equal_endpoints_each_get_a_fair_share_after_a_cold_start():
    """Three equal endpoints at c=1; one answered its first request slowly (a cold
    connection). It used to be starved for good (1 of 300); now each gets >= 20%.

    50 ms answers: at 10 ms the scheduling noise of a busy 2-core machine (the fakes share the
    test's process) made equal endpoints look 2x apart now and then (one CI run: 36 of 300)."""
    specs = [FakeBackendSpec(name=n, faults=Faults(latency=0.05)) for n in ("cold", "b", "c")]
    with FakeFleet(specs) as fleet:
        mux = AsyncMultiplexer()
        for fb in fleet:
            mux.add_endpoint(fb.url, models=["m"], name=fb.name)
        await sequential(mux, 3)  # each is measured once (new endpoints are tried first)
        cold = mux.get_endpoint("cold")
        assert cold is not None
        cold.ewma.observe(0.3, time.monotonic())  # its first answer took 6x the others'
        served = await sequential(mux, 300)
        assert sum(served.values()) == 300
        assert all(served[n] >= 60 for n in ("cold", "b", "c")), served
        await mux.aclose()


@pytest.mark.slow
async def test_shares_follow_weights_at_light_load():
    """Equal latencies, weights 1:3 (Gonka weights are the participants' compute)."""
    specs = [
        # 50 ms: the scheduling noise of a busy 2-core machine (the fakes share the test's
        # process) is well inside the routing's latency band, so it is no latency difference
        FakeBackendSpec(name="light", faults=Faults(latency=0.05)),
        FakeBackendSpec(name="heavy", faults=Faults(latency=0.05)),
    ]
    with FakeFleet(specs) as fleet:
        mux = AsyncMultiplexer(seed=3)
        mux.add_endpoint(fleet["light"].url, models=["m"], name="light", weight=1)
        mux.add_endpoint(fleet["heavy"].url, models=["m"], name="heavy", weight=3)
        served = await sequential(mux, 160)
        share = served["heavy"] / 160
        assert 0.62 <= share <= 0.88, served  # 0.75 expected; latency noise moves it a little
        await mux.aclose()


async def test_a_hanging_endpoint_fails_no_request_at_default_settings():
    """No hedging or timeout tuning: the hanging endpoint's requests are hedged to the other
    one, and it is then avoided."""
    specs = [
        FakeBackendSpec(name="hangs", faults=Faults(rate_hang=1.0)),
        FakeBackendSpec(name="fine", faults=Faults(latency=0.01)),
    ]
    with FakeFleet(specs) as fleet:
        mux = AsyncMultiplexer()
        for fb in fleet:
            mux.add_endpoint(fb.url, models=["m"], name=fb.name)
        t0 = time.monotonic()
        served = await sequential(mux, 12)
        assert served == {"fine": 12}
        assert time.monotonic() - t0 < 12  # the first hang is hedged after ~2 s, not 60
        assert fleet["hangs"].request_count <= 2
        await mux.aclose()
