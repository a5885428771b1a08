"""model="auto" and tier= hints through the Multiplexer pick the tier's model."""

from __future__ import annotations

from gonka_mux import AsyncMultiplexer
from gonka_mux.testing import FakeBackendSpec, FakeFleet

TIERING = {
    "tiers": {"cheap": "small-model", "strong": "big-model"},
    "default_tier": "cheap",
}


async def test_auto_model_routes_by_rules_and_hint():
    with FakeFleet([FakeBackendSpec(name="small"), FakeBackendSpec(name="big")]) as fleet:
        mux = AsyncMultiplexer()
        mux.add_endpoint(fleet["small"].url, models=["small-model"], name="small")
        mux.add_endpoint(fleet["big"].url, models=["big-model"], name="big")
        mux.enable_tiering(TIERING)
        r = await mux.chat.completions.create(
            model="auto", messages=[{"role": "user", "content": "Is this spam? yes or no"}]
        )
        assert r.choices[0].message.content == "ok from small"
        tools = [{"type": "function", "function": {"name": "f", "parameters": {}}}]
        r = await mux.chat.completions.create(
            model="auto", messages=[{"role": "user", "content": "hi"}], tools=tools
        )
        assert r.choices[0].message.content == "ok from big"
        assert fleet["big"].requests[-1].json["model"] == "big-model"
        r = await mux.chat.completions.create(
            model="auto", messages=[{"role": "user", "content": "hi"}], tier="strong"
        )
        assert r.choices[0].message.content == "ok from big"
        # an explicit model without a hint is left alone
        r = await mux.chat.completions.create(
            model="small-model", messages=[{"role": "user", "content": "prove it step by step"}]
        )
        assert r.choices[0].message.content == "ok from small"
        await mux.aclose()
