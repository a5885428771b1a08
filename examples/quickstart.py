"""Quick start: two local endpoints behind one AsyncMultiplexer, offline.

Run: python examples/quickstart.py
"""

import asyncio

from gonka_mux import AsyncMultiplexer
from gonka_mux.testing import FakeBackendSpec, FakeFleet, Faults, Reply


async def main() -> None:
    specs = [
        FakeBackendSpec(name="gpu-1", replies=[Reply(content="Hello from gpu-1!")] * 10),
        FakeBackendSpec(name="gpu-2", faults=Faults(latency=0.05)),
    ]
    with FakeFleet(specs) as fleet:
        async with AsyncMultiplexer() as mux:
            mux.add_endpoint(fleet["gpu-1"].url, models=["kimi-k2.5"], name="gpu-1")
            mux.add_endpoint(fleet["gpu-2"].url, models=["kimi-k2.5"], name="gpu-2", weight=2)

            reply = await mux.chat.completions.create(
                model="kimi-k2.5", messages=[{"role": "user", "content": "Hi!"}], max_tokens=32
            )
            print("JSON  :", reply.choices[0].message.content)

            stream = await mux.chat.completions.create(
                model="kimi-k2.5",
                messages=[{"role": "user", "content": "Stream please"}],
                stream=True,
                stream_options={"include_usage": True},
            )
            async with stream:
                text = ""
                async for chunk in stream:
                    if chunk.choices:
                        text += chunk.choices[0].delta.content or ""
                    elif chunk.usage:
                        print("usage :", chunk.usage.total_tokens, "tokens")
            print("stream:", text)
            for name, s in mux.stats()["endpoints"].items():
                print(f"{name}: {s['successes']} served, state {s['state']}")


if __name__ == "__main__":
    asyncio.run(main())
