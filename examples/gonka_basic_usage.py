"""Gonka basics: discover the participants, send signed requests through one AsyncMultiplexer.

Runs offline against a fake Gonka network on loopback (its nodes check signatures, balances and
timestamps like the real ones). Against the real network, pass your node URL and key instead
(or set GONKA_SOURCE_URL and GONKA_PRIVATE_KEY).

Run: python examples/gonka_basic_usage.py
"""

import asyncio

from gonka_mux import AsyncMultiplexer
from gonka_mux.gonka import RequestSigner, aregister_gonka_models
from gonka_mux.testing.fake_gonka import FakeGonkaNetwork

MODEL = "Qwen/Fake-7B"
KEY = "11" * 32  # a throwaway key for the fake chain


async def main() -> None:
    async with FakeGonkaNetwork(n_participants=3, models=[MODEL]) as net:
        net.add_account(RequestSigner(KEY))  # the fake chain knows our account and its balance

        async with AsyncMultiplexer() as mux:
            result = await aregister_gonka_models(
                mux,
                source_url=net.source_url,  # any node of the network
                private_key=KEY,
                default_max_tokens=256,  # sent when a request has no max_tokens
            )
            print(f"epoch {result.epoch_id}: {len(result.participants)} participants")
            print(f"models: {result.models_registered}, requester {result.requester_address}")

            reply = await mux.chat.completions.create(
                model=MODEL, messages=[{"role": "user", "content": "Hello, Gonka!"}]
            )
            print("reply:", reply.choices[0].message.content)
            print("inference id (the request's signature):", reply.id[:16] + "...")

            stream = await mux.chat.completions.create(
                model=MODEL, messages=[{"role": "user", "content": "Stream it"}], stream=True
            )
            text = "".join([c.choices[0].delta.content or "" async for c in stream if c.choices])
            print("streamed:", text)

            for name, stats in mux.stats()["endpoints"].items():
                print(f"  {name[:40]}...  weight {stats['weight']:g}  served {stats['successes']}")
        print(f"{len(net.inference_requests)} signed requests, all accepted by the TAs")


if __name__ == "__main__":
    asyncio.run(main())
