"""Local rate limits and metering wired into the Multiplexer, against real fake backends."""

from __future__ import annotations

import asyncio

import openai
import pytest

from gonka_mux import AsyncMultiplexer, HedgePolicy, Multiplexer
from gonka_mux import RateLimitError as LocalRateLimitError
from gonka_mux.metering import UsageQuery
from gonka_mux.testing import FakeBackendSpec, FakeFleet, Faults

MSG = [{"role": "user", "content": "hello there"}]


@pytest.fixture
def fleet():
    with FakeFleet([FakeBackendSpec(name="a"), FakeBackendSpec(name="b")]) as f:
        yield f


def served(fb) -> int:
    return sum(1 for r in fb.requests if r.path.endswith("/chat/completions"))


def mux_with(fleet, **settings) -> AsyncMultiplexer:
    mux = AsyncMultiplexer(**settings)
    for name in ("a", "b"):
        mux.add_endpoint(fleet[name].url, models=["m"], name=name)
    return mux


async def test_caller_limit_raises_openai_429_with_retry_after(fleet):
    mux = mux_with(fleet)
    mux.enable_limits(
        {
            "tiers": {"free": {"rpm": 2, "burst_requests": 2}, "pro": {"rpm": 1000}},
            "keys": {"agent-1": "free", "agent-2": "pro"},
            "max_wait": 0,
        }
    )
    for _ in range(2):
        await mux.chat.completions.create(model="m", messages=MSG, caller="agent-1")
    before = served(fleet["a"]) + served(fleet["b"])
    with pytest.raises(LocalRateLimitError) as ei:
        await mux.chat.completions.create(model="m", messages=MSG, caller="agent-1")
    err = ei.value
    assert isinstance(err, openai.RateLimitError) and err.status_code == 429
    assert int(err.response.headers["retry-after"]) >= 1 and err.retry_after > 0
    assert err.to_dict()["error"]["type"] == "rate_limit_exceeded"
    assert served(fleet["a"]) + served(fleet["b"]) == before  # refused locally
    # another tenant is not affected
    for _ in range(5):
        await mux.chat.completions.create(model="m", messages=MSG, caller="agent-2")
    await mux.aclose()


async def test_caller_waits_up_to_max_wait(fleet):
    mux = mux_with(fleet)
    mux.enable_limits(
        {"tiers": {"t": {"rpm": 120, "burst_requests": 1}}, "default_tier": "t", "max_wait": 2.0}
    )
    t0 = asyncio.get_running_loop().time()
    for _ in range(3):  # one every 0.5 s after the burst of 1
        await mux.chat.completions.create(model="m", messages=MSG)
    assert asyncio.get_running_loop().time() - t0 >= 0.9
    await mux.aclose()


async def test_endpoint_at_its_limit_is_skipped_not_failed(fleet):
    mux = mux_with(fleet, strategy="round_robin")
    mux.enable_limits({"endpoints": {"a": {"rpm": 1, "burst_requests": 1}}})
    for _ in range(6):
        r = await mux.chat.completions.create(model="m", messages=MSG)
        assert r.choices
    assert served(fleet["a"]) == 1 and served(fleet["b"]) == 5
    await mux.aclose()


async def test_metering_records_each_request_once(fleet):
    fleet["a"].set_faults(Faults(rate_500=1.0))
    mux = mux_with(fleet, strategy="round_robin")
    meter = mux.enable_metering("memory", prices={"m": {"prompt": 1.0, "completion": 2.0}})
    r = await mux.chat.completions.create(
        model="m", messages=MSG, caller="agent-1", session_id="s1"
    )
    # a stream without include_usage: the caller sees no usage chunk, metering still gets usage
    stream = await mux.chat.completions.create(model="m", messages=MSG, stream=True)
    chunks = [c async for c in stream]
    assert all(c.choices for c in chunks)
    assert fleet["b"].requests[-1].json["stream_options"] == {"include_usage": True}
    await mux.aclose()  # flushes the meter
    records = meter.store.select()
    assert len(records) == 2
    first = next(rec for rec in records if rec.session_id == "s1")
    assert first.key == "agent-1" and first.endpoint == "b"
    assert first.failed_over is True and first.attempts == 2 and first.status == "ok"
    assert first.prompt_tokens == r.usage.prompt_tokens
    assert first.completion_tokens == r.usage.completion_tokens
    assert first.cost and first.cost > 0
    streamed = next(rec for rec in records if rec.session_id is None)
    assert streamed.completion_tokens > 0 and streamed.ttft is not None
    assert first.ttft is None  # a non-streamed reply has no first token of its own
    totals = UsageQuery(records).totals()
    assert totals.requests == 2


async def test_a_failed_request_is_metered_against_the_endpoint_it_tried(fleet):
    """Not against "none": Prometheus and `gonka-mux usage` show which endpoint failed."""
    fleet["a"].set_faults(Faults(rate_500=1.0))
    fleet["b"].set_faults(Faults(rate_500=1.0))
    mux = mux_with(fleet, max_attempts=1, hedging=None)
    meter = mux.enable_metering("memory")
    with pytest.raises(openai.APIStatusError):
        await mux.chat.completions.create(model="m", messages=MSG)
    await mux.aclose()
    (record,) = meter.store.select()
    assert record.status == "error" and record.endpoint in ("a", "b")


async def test_metering_marks_hedged_requests_and_does_not_double_count(fleet):
    fleet["a"].set_faults(Faults(rate_hang=1.0))
    mux = mux_with(fleet, strategy="round_robin", hedging=HedgePolicy(delay=0.05))
    meter = mux.enable_metering("memory")
    await mux.chat.completions.create(model="m", messages=MSG)
    await mux.aclose()
    records = meter.store.select()
    assert len(records) == 1
    assert records[0].hedged is True and records[0].endpoint == "b"


def test_limits_and_metering_from_config_sync(fleet, tmp_path):
    cfg = {
        "endpoints": [{"name": "a", "base_url": fleet["a"].url, "models": ["m"]}],
        "limits": {
            "backend": "sqlite",
            "path": str(tmp_path / "limits.db"),
            "tiers": {"free": {"rpm": 1, "burst_requests": 1}},
            "default_tier": "free",
            "max_wait": 0,
        },
        "metering": {"store": "sqlite", "path": str(tmp_path / "usage.db")},
        "prices": {"m": {"prompt": 0.5, "completion": 1.5}},
    }
    mux = Multiplexer.from_config(cfg)
    mux.chat.completions.create(model="m", messages=MSG)
    with pytest.raises(openai.RateLimitError):
        mux.chat.completions.create(model="m", messages=MSG)
    mux.close()
    from gonka_mux.metering import SqliteUsageStore

    store = SqliteUsageStore(tmp_path / "usage.db", readonly=True)
    q = UsageQuery(store).totals()
    assert q.requests == 2  # the refused request is metered as an error


def test_sync_close_flushes_a_meter_that_never_served(tmp_path):
    from gonka_mux.metering import SqliteUsageStore

    mux = Multiplexer()
    meter = mux.enable_metering(path=tmp_path / "u.db")
    from gonka_mux.metering import UsageRecord

    meter.record(UsageRecord(model="m", prompt_tokens=3))
    mux.close()  # no request ever started the loop: closing still runs the closers
    assert len(SqliteUsageStore(tmp_path / "u.db", readonly=True).select()) == 1
