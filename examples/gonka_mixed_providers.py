"""Signed Gonka participants, a Gonka broker (Bearer key) and an ordinary provider, one pool.

All three serve the same model id, so one ``model=`` reaches all of them: the router spreads the
load and fails over between them. ``normalize_weights=True`` scales the participants' PoC
weights to a mean of 1, comparable with the weight-1 broker and provider.

Since July 2026 (v0.2.14) every mainnet host answers classic signed requests with 410
``deprecated``: the example retires the classic API on the fake network halfway. The first such
answer retires the whole signed group (one warning saying to configure a broker or a devshard
gateway), and the traffic moves to the broker and the provider without a failed request.

Run: python examples/gonka_mixed_providers.py
"""

import asyncio
from collections import Counter

from gonka_mux import AsyncMultiplexer
from gonka_mux.gonka import RequestSigner, aadd_gonka_broker, aregister_gonka_models
from gonka_mux.testing import FakeBackend
from gonka_mux.testing.fake_gonka import FakeGonkaNetwork

MODEL = "Qwen/Fake-7B"
KEY = "44" * 32  # a throwaway key for the fake chain
BROKER_KEY = "sk-demo-broker"


async def burst(mux: AsyncMultiplexer, n: int) -> Counter[str]:
    replies = await asyncio.gather(
        *(
            mux.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": "x"}])
            for _ in range(n)
        )
    )
    return Counter(r.choices[0].message.content or "" for r in replies)


async def main() -> None:
    async with FakeGonkaNetwork(n_participants=3, models=[MODEL]) as net:
        net.add_account(RequestSigner(KEY))
        broker = net.start_broker(BROKER_KEY)  # an OpenAI-compatible broker, Bearer auth
        async with (
            FakeBackend(models=[MODEL], name="provider") as provider,
            AsyncMultiplexer(strategy="weighted_random", seed=1) as mux,
        ):
            await aregister_gonka_models(
                mux, source_url=net.source_url, private_key=KEY, normalize_weights=True
            )
            await aadd_gonka_broker(mux, broker.url, BROKER_KEY, name="broker")
            mux.add_endpoint(provider.url, models=[MODEL], name="provider")
            print("pool:", mux.stats()["models"][MODEL]["primary"])
            print("served:", dict(await burst(mux, 40)))

            net.retire_classic_api()  # every host now answers 410 deprecated (v0.2.14)
            served = await burst(mux, 40)
            print("after the classic API retirement:", dict(served))
            assert set(served) <= {"ok from broker", "ok from provider"}
            signed = [e.name for e in mux.endpoints if e.kind == "gonka"]
            print("signed endpoints left:", signed)
            retired = [r for r in net.inference_requests if r.status == 410]
            print("signed requests that met the retirement:", len(retired))


if __name__ == "__main__":
    asyncio.run(main())
