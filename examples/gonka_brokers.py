"""A Gonka broker / devshard gateway as it behaves: caps, strict fields, a move, its status.

Brokers and devshard gateways are the working path to Gonka on mainnet since July 2026. Beyond
the OpenAI API they cap max_tokens per model (their /v1/models says by how much), refuse fields
outside an allowlist, answer 308 {"new_url": ...} when they move, 409 "devshard unavailable",
429 from their limiter, and report their capacity at /v1/status. ``add_gonka_broker`` handles
all of it; this example shows each against the bundled fake broker (offline).

Run: python examples/gonka_brokers.py
"""

import asyncio

from gonka_mux import AsyncMultiplexer
from gonka_mux.gonka import aadd_gonka_broker, broker_of
from gonka_mux.testing import FakeBroker

MODEL = "MiniMaxAI/MiniMax-M2.7"
KEY = "sk-example-broker"
ASK = [{"role": "user", "content": "Hello"}]


async def main() -> None:
    async with (
        FakeBroker(KEY, models=[MODEL], caps={MODEL: 2048}, name="gateway") as gateway,
        FakeBroker(KEY, models=[MODEL], name="new-gateway") as moved,
        AsyncMultiplexer() as mux,
    ):
        endpoint = await aadd_gonka_broker(mux, gateway.url, KEY, name="gateway")
        broker = broker_of(endpoint)
        assert broker is not None
        print("caps from /v1/models:", broker.state.caps)

        await mux.chat.completions.create(model=MODEL, messages=ASK, max_tokens=10_000)
        print("max_tokens 10000 was sent as", gateway.inference_requests[-1].json["max_tokens"])

        await mux.chat.completions.create(model=MODEL, messages=ASK, extra_body={"tags": ["x"]})
        print("fields dropped (the gateway refuses them):", broker.state.dropped)

        gateway.set_background_load(12)  # other users keep 12 of its 16 slots busy
        status = await broker.apoll_status()
        print("status:", status, "-> load", endpoint.external_load)

        reply = await mux.chat.completions.create(model=MODEL, messages=ASK)
        record = await broker.arequest_record(reply.id)
        print(
            f"accounting of {reply.id}: {record.prompt_tokens}+{record.completion_tokens} "
            f"tokens, ${record.cost}"
        )

        gateway.move_to(moved)  # 308 {"new_url": ...}
        reply = await mux.chat.completions.create(model=MODEL, messages=ASK)
        print(reply.choices[0].message.content, "- the endpoint now uses", endpoint.base_url)


if __name__ == "__main__":
    asyncio.run(main())
