"""Manual registration: a fixed list of Transfer Agents, and a signed endpoint built by hand.

``endpoints="url;address,url;address"`` (or GONKA_ENDPOINTS) skips discovery: each TA's
models are read from its ``/v1/models`` (or given with ``models=``). The address is the TA's
account address: requests are signed for it. There is no epoch refresh for a fixed list.

For full control, ``make_signed_client`` builds an ``openai.AsyncOpenAI`` that signs every
attempt for one TA; add it with ``GonkaErrorPolicy`` so the Gonka error codes are understood.

Run: python examples/gonka_manual_registration.py
"""

import asyncio

from gonka_mux import AsyncMultiplexer
from gonka_mux.gonka import (
    GonkaErrorPolicy,
    InsufficientBalance,
    RequestSigner,
    aregister_gonka_models,
    make_signed_client,
)
from gonka_mux.testing.fake_gonka import FakeGonkaNetwork

MODEL = "Qwen/Fake-7B"
KEY = "33" * 32  # a throwaway key for the fake chain


async def main() -> None:
    signer = RequestSigner(KEY)
    async with FakeGonkaNetwork(n_participants=3, models=[MODEL]) as net:
        net.add_account(signer)
        p0, p1, p2 = net.participants

        async with AsyncMultiplexer() as mux:
            result = await aregister_gonka_models(
                mux,
                endpoints=f"{p0.url};{p0.address},{p1.url};{p1.address}",
                private_key=KEY,
            )
            print(f"fixed TAs: {[x.address[:14] for x in result.participants]}")
            print(f"models read from each TA: {result.models_registered}")
            print(f"refresh manager: {result.refresh_manager} (none for a fixed list)")

            # A third TA, by hand, in the fallback tier.
            client = make_signed_client(p2, None, signer, resync_clock=True)
            mux.add_endpoint(
                client,
                models=[MODEL],
                name="hand-made",
                tier="fallback",
                kind="gonka",
                error_policy=GonkaErrorPolicy(
                    transfer_address=p2.address, requester_address=signer.address
                ),
            )
            for _ in range(3):
                reply = await mux.chat.completions.create(
                    model=MODEL, messages=[{"role": "user", "content": "hi"}], max_tokens=32
                )
                print("  ->", reply.choices[0].message.content)

            # Gonka errors are typed, say what to do, and are openai errors.
            net.set_balance(signer.address, 10)
            try:
                await mux.chat.completions.create(
                    model=MODEL, messages=[{"role": "user", "content": "hi"}], max_tokens=32
                )
            except InsufficientBalance as exc:
                print(f"\n{type(exc).__name__} (HTTP {exc.status_code}): {exc.message[:110]}...")


if __name__ == "__main__":
    asyncio.run(main())
