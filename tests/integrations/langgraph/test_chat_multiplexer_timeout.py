"""ChatMultiplexer passes LangChain's ``timeout=`` through to the Multiplexer, per attempt.

``timeout`` travels like any call-time keyword argument (``invoke(..., timeout=...)``,
``bind(timeout=...)``) into ``mux.chat.completions.create``, where it must mean what it means in
openai: a timeout for each attempt, so a slow endpoint is abandoned and the request fails over.
"""

from __future__ import annotations

import pytest

from gonka_mux import AsyncMultiplexer, Multiplexer
from gonka_mux.integrations.langchain import ChatMultiplexer
from gonka_mux.testing import FakeBackendSpec, FakeFleet, Faults

MODEL = "lc-model"


@pytest.fixture
def fleet():
    specs = [FakeBackendSpec(name="slow", faults=Faults(latency=1.0)), FakeBackendSpec(name="fast")]
    with FakeFleet(specs) as f:
        yield f


def over(mux, fleet):
    for name in ("slow", "fast"):
        mux.add_endpoint(fleet[name].url, models=[MODEL], name=name)
    return mux


def test_invoke_timeout_is_accepted_and_bounds_each_attempt(fleet):
    """invoke/bind/stream with timeout= work through a sync Multiplexer, and timeout=0.3 makes a
    1 s endpoint fail over to the fast one."""
    mux = over(Multiplexer(strategy="round_robin"), fleet)
    try:
        model = ChatMultiplexer(mux=mux, model=MODEL)
        for _ in range(2):  # round robin: one of the two starts on the slow endpoint
            assert model.invoke("hi", timeout=0.3).content == "ok from fast"
        assert fleet["slow"].request_count >= 1
        assert "timeout" not in fleet["fast"].requests[-1].json  # an option, not a body field
        assert model.bind(timeout=5).invoke("hi").content.startswith("ok from")
        text = "".join(chunk.content for chunk in model.stream("hi", timeout=5))
        assert text.startswith("ok from")
    finally:
        mux.close()


@pytest.mark.parametrize("face", [Multiplexer, AsyncMultiplexer])
async def test_ainvoke_timeout_bounds_each_attempt_on_both_faces(fleet, face):
    """ainvoke(timeout=0.3) fails over from a 1 s endpoint, over either Multiplexer face."""
    mux = over(face(strategy="round_robin"), fleet)
    try:
        model = ChatMultiplexer(mux=mux, model=MODEL)
        for _ in range(2):
            assert (await model.ainvoke("hi", timeout=0.3)).content == "ok from fast"
        assert fleet["slow"].request_count >= 1
    finally:
        if isinstance(mux, AsyncMultiplexer):
            await mux.aclose()
        else:
            mux.close()
