"""MultiplexerLLM passes ``timeout=`` through to the Multiplexer as a per-attempt timeout.

CrewAI's ``BaseLLM`` puts unknown constructor keywords in ``additional_params``, which
MultiplexerLLM sends with every call, so ``MultiplexerLLM(..., timeout=0.3)`` reaches
``mux.chat.completions.create(timeout=0.3)``: a timeout for each attempt, as in openai.
"""

from __future__ import annotations

import pytest

from gonka_mux import Multiplexer
from gonka_mux.integrations.crewai import MultiplexerLLM
from gonka_mux.testing import FakeBackendSpec, FakeFleet, Faults

MODEL = "m"
pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")


@pytest.fixture
def fleet():
    specs = [FakeBackendSpec(name="slow", faults=Faults(latency=1.0)), FakeBackendSpec(name="fast")]
    with FakeFleet(specs) as f:
        yield f


@pytest.fixture
def mux(fleet):
    m = Multiplexer(strategy="round_robin")
    for name in ("slow", "fast"):
        m.add_endpoint(fleet[name].url, models=[MODEL], name=name)
    yield m
    m.close()


def test_call_with_timeout_fails_over_from_a_slow_endpoint(fleet, mux):
    """call() with timeout=0.3 works, and a 1 s endpoint is abandoned for the fast one."""
    llm = MultiplexerLLM(mux=mux, model=MODEL, timeout=0.3)
    for _ in range(2):  # round robin: one of the two starts on the slow endpoint
        assert llm.call("hello") == "ok from fast"
    assert fleet["slow"].request_count >= 1
    assert "timeout" not in fleet["fast"].requests[-1].json  # an option, not a body field


async def test_acall_with_timeout(fleet, mux):
    """acall() with timeout= works too (it used to fail: the timeout clashed with the mux's)."""
    llm = MultiplexerLLM(mux=mux, model=MODEL, timeout=5)
    assert (await llm.acall("hello")).startswith("ok from")
    slow = MultiplexerLLM(mux=mux, model=MODEL, timeout=0.3)
    for _ in range(2):
        assert await slow.acall("hello") == "ok from fast"
