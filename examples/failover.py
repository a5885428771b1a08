"""Routing and failover: a failing and a rate-limited endpoint beside a healthy one.

Run: python examples/failover.py
"""

import asyncio

import openai

from gonka_mux import AllEndpointsFailed, AsyncMultiplexer, HealthPolicy
from gonka_mux.testing import FakeBackendSpec, FakeFleet, Faults

MESSAGES = [{"role": "user", "content": "ping"}]


async def main() -> None:
    specs = [
        FakeBackendSpec(name="healthy"),
        FakeBackendSpec(name="broken", faults=Faults(rate_500=1.0)),
        FakeBackendSpec(name="busy", faults=Faults(rate_429=1.0, retry_after=5)),
    ]
    with FakeFleet(specs) as fleet:
        mux = AsyncMultiplexer(health=HealthPolicy(eject_after=2), first_byte_timeout=5)
        for fb in fleet:
            mux.add_endpoint(fb.url, models=["m"], name=fb.name)
        for _ in range(20):
            await mux.chat.completions.create(model="m", messages=MESSAGES)
        for name, s in mux.stats()["endpoints"].items():
            print(f"{name:8} served={s['successes']:2} failures={s['failures']} state={s['state']}")

        # When every endpoint fails, the error lists each attempt and subclasses openai's.
        fleet["healthy"].set_faults(Faults(rate_500=1.0))
        try:
            await mux.chat.completions.create(model="m", messages=MESSAGES, deadline=3)
        except AllEndpointsFailed as exc:
            assert isinstance(exc, openai.APIStatusError)
            print("\nAllEndpointsFailed:", exc.to_dict()["error"]["message"][:160], "...")
        await mux.aclose()


if __name__ == "__main__":
    asyncio.run(main())
