"""The Multiplexer against real loopback fake backends: routing, failover, streams, errors."""

from __future__ import annotations

import asyncio
import json
import threading
import time

import openai
import pytest

from gonka_mux import (
    AllEndpointsFailed,
    AllEndpointsRateLimited,
    AsyncMultiplexer,
    DeadlineExceeded,
    HealthPolicy,
    HedgePolicy,
    ModelNotFound,
    Multiplexer,
    NoEndpointAvailable,
    StreamInterrupted,
)
from gonka_mux.testing import (
    FakeBackend,
    FakeBackendSpec,
    FakeFleet,
    Faults,
    Reply,
    StatusError,
    ToolCall,
)

MSG = [{"role": "user", "content": "hello"}]


def served_by(fb: FakeBackend) -> int:
    return sum(1 for r in fb.requests if r.path.endswith("/chat/completions"))


@pytest.fixture
def fleet():
    with FakeFleet(
        [
            FakeBackendSpec(name="a"),
            FakeBackendSpec(name="b"),
            FakeBackendSpec(name="c"),
        ]
    ) as f:
        yield f


def mux_over(*backends: FakeBackend, model: str = "m", **settings) -> AsyncMultiplexer:
    mux = AsyncMultiplexer(**settings)
    for fb in backends:
        mux.add_endpoint(fb.url, models=[model], name=fb.name)
    return mux


async def test_returns_openai_chat_completion_and_sends_the_model(fleet):
    mux = mux_over(fleet["a"])
    mux.add_endpoint(fleet["b"].url, models={"alias-model": "upstream-name"}, name="b")
    r = await mux.chat.completions.create(model="m", messages=MSG)
    assert isinstance(r, openai.types.chat.ChatCompletion)
    assert r.choices[0].message.content.startswith("ok from")
    r2 = await mux.chat.completions.create(model="alias-model", messages=MSG)
    assert r2.choices[0].message.content == "ok from b"
    assert fleet["b"].requests[-1].json["model"] == "upstream-name"
    await mux.aclose()


async def test_unknown_params_and_extra_body_pass_through(fleet):
    mux = mux_over(fleet["a"])
    await mux.chat.completions.create(
        model="m",
        messages=MSG,
        temperature=0.2,
        chat_template_kwargs={"thinking": False},
        extra_body={"top_k": 5},
        extra_headers={"X-Trace": "t1"},
        session_id=None,
    )
    req = fleet["a"].requests[-1]
    assert req.json["chat_template_kwargs"] == {"thinking": False}
    assert req.json["top_k"] == 5 and req.json["temperature"] == 0.2
    assert req.headers["x-trace"] == "t1"
    assert "session_id" not in req.json and "deadline" not in req.json
    await mux.aclose()


async def test_spreads_load_over_healthy_endpoints(fleet):
    mux = mux_over(fleet["a"], fleet["b"], fleet["c"], hedging=None)
    await asyncio.gather(*(mux.chat.completions.create(model="m", messages=MSG) for _ in range(60)))
    counts = [served_by(fleet[n]) for n in "abc"]
    assert sum(counts) == 60 and min(counts) >= 5
    await mux.aclose()


async def test_model_not_found_and_aliases(fleet):
    mux = mux_over(fleet["a"])
    with pytest.raises(ModelNotFound) as ei:
        await mux.chat.completions.create(model="nope", messages=MSG)
    assert isinstance(ei.value, openai.NotFoundError) and "add_endpoint" in str(ei.value)
    mux.add_alias("smart", "m")
    r = await mux.chat.completions.create(model="smart", messages=MSG)
    assert fleet["a"].requests[-1].json["model"] == "m" and r.choices
    page = await mux.models.list()
    assert {m.id for m in page.data} == {"m", "smart"}
    await mux.aclose()


async def test_failover_on_500_and_cooldown(fleet):
    fleet["a"].set_faults(Faults(rate_500=1.0))
    mux = mux_over(fleet["a"], fleet["b"], strategy="round_robin")
    for _ in range(4):
        r = await mux.chat.completions.create(model="m", messages=MSG)
        assert r.choices[0].message.content == "ok from b"
    stats = mux.stats()["endpoints"]
    assert stats["a"]["failures"] == {"server_error": 1}  # cooled down after the first 500
    assert stats["a"]["state"] == "cooling"
    await mux.aclose()


@pytest.mark.parametrize(
    "faults,kind",
    [
        (Faults(rate_429=1.0, retry_after=30), "rate_limited"),
        (Faults(rate_drop_before=1.0), "connection"),
        (Faults(rate_malformed=1.0), "malformed"),
        (Faults(rate_hang=1.0), "timeout"),
    ],
)
async def test_every_retryable_failure_fails_over(fleet, faults, kind):
    fleet["a"].set_faults(faults)
    mux = mux_over(fleet["a"], fleet["b"], strategy="round_robin", first_byte_timeout=0.3)
    r = await mux.chat.completions.create(model="m", messages=MSG)
    assert r.choices[0].message.content == "ok from b"
    assert mux.stats()["endpoints"]["a"]["failures"] == {kind: 1}
    await mux.aclose()


async def test_429_retry_after_cools_for_that_long(fleet):
    fleet["a"].set_faults(Faults(rate_429=1.0, retry_after=2))
    mux = mux_over(fleet["a"], fleet["b"], strategy="round_robin")
    await mux.chat.completions.create(model="m", messages=MSG)
    snap = mux.stats()["endpoints"]["a"]
    assert snap["state"] == "cooling" and 1.5 < snap["cooldown_remaining_s"] <= 2.0
    await mux.aclose()


async def test_all_rate_limited_raises_openai_rate_limit_error(fleet):
    for n in "ab":
        fleet[n].set_faults(Faults(rate_429=1.0, retry_after=60))
    mux = mux_over(fleet["a"], fleet["b"])
    with pytest.raises(AllEndpointsRateLimited) as ei:
        await mux.chat.completions.create(model="m", messages=MSG)
    err = ei.value
    assert isinstance(err, openai.RateLimitError)
    assert [a.status for a in err.attempts] == [429, 429]
    body = err.to_dict()["error"]
    assert body["code"] == "all_endpoints_failed" and "a: HTTP 429" in body["message"]
    # now everything is cooling for 60 s: fail fast with a Retry-After, no upstream call
    before = served_by(fleet["a"]) + served_by(fleet["b"])
    with pytest.raises(NoEndpointAvailable) as ei2:
        await mux.chat.completions.create(model="m", messages=MSG)
    assert served_by(fleet["a"]) + served_by(fleet["b"]) == before
    assert int(ei2.value.response.headers["retry-after"]) >= 50
    await mux.aclose()


async def test_the_callers_bad_request_is_raised_at_once(fleet):
    """400/422 are the request's fault: one attempt, no failover, nobody's health changes.
    The endpoint's own exception is raised (as the plain client would), naming the endpoint."""
    for status, cls in [(400, openai.BadRequestError), (422, openai.UnprocessableEntityError)]:
        fleet["a"].clear()
        fleet["b"].clear()
        fleet["a"].set_faults(Faults(status_errors={status: 1.0}))
        fleet["b"].set_faults(Faults(status_errors={status: 1.0}))
        mux = mux_over(fleet["a"], fleet["b"])
        with pytest.raises(cls) as info:
            await mux.chat.completions.create(model="m", messages=MSG)
        assert type(info.value) is cls
        assert info.value.endpoint in ("a", "b")
        assert served_by(fleet["a"]) + served_by(fleet["b"]) == 1
        assert all(e["state"] == "healthy" for e in mux.stats()["endpoints"].values())
        await mux.aclose()


async def test_endpoint_faults_fail_over_to_every_endpoint(fleet):
    """401/403 (credentials) and 404 (model not served) are that endpoint's: all are tried."""
    from gonka_mux import AllEndpointsUnauthorized

    for status, cls in [
        (401, AllEndpointsUnauthorized),
        (403, AllEndpointsUnauthorized),
        (404, ModelNotFound),
    ]:
        fleet["a"].clear()
        fleet["b"].clear()
        fleet["a"].set_faults(Faults(status_errors={status: 1.0}))
        fleet["b"].set_faults(Faults(status_errors={status: 1.0}))
        mux = mux_over(fleet["a"], fleet["b"])
        with pytest.raises(cls):
            await mux.chat.completions.create(model="m", messages=MSG)
        assert served_by(fleet["a"]) + served_by(fleet["b"]) == 2
        await mux.aclose()


async def test_context_length_goes_to_configured_larger_fallback(fleet):
    fleet["a"].set_faults(
        Faults(
            status_errors=[
                StatusError(400, message="This model's maximum context length is 8192 tokens")
            ]
        )
    )
    mux = AsyncMultiplexer(context_fallbacks={"small": "large"})
    mux.add_endpoint(fleet["a"].url, models=["small"], name="a")
    mux.add_endpoint(fleet["b"].url, models=["large"], name="b")
    r = await mux.chat.completions.create(model="small", messages=MSG)
    assert r.choices[0].message.content == "ok from b"
    assert fleet["b"].requests[-1].json["model"] == "large"
    await mux.aclose()


async def test_max_attempts_bounds_failover():
    specs = [FakeBackendSpec(name=f"x{i}", faults=Faults(rate_500=1.0)) for i in range(5)]
    with FakeFleet(specs) as f:
        mux = mux_over(*(f[s.name] for s in specs), max_attempts=3)
        with pytest.raises(AllEndpointsFailed) as ei:
            await mux.chat.completions.create(model="m", messages=MSG)
        assert len(ei.value.attempts) == 3
        assert "max_attempts" in str(ei.value)
        assert sum(served_by(f[s.name]) for s in specs) == 3
        await mux.aclose()


async def test_retry_budget_bounds_retries_across_requests():
    specs = [FakeBackendSpec(name=f"y{i}", faults=Faults(rate_500=1.0)) for i in range(2)]
    with FakeFleet(specs) as f:
        mux = mux_over(
            f["y0"],
            f["y1"],
            retry_budget_ratio=0.0,
            retry_budget_min_per_second=0.2,
            retry_budget_ttl=10.0,
            health=HealthPolicy(failure_cooldown=0.0, eject_after=1000),
        )
        for _ in range(6):
            with pytest.raises(AllEndpointsFailed):
                await mux.chat.completions.create(model="m", messages=MSG)
        total = served_by(f["y0"]) + served_by(f["y1"])
        assert total == 6 + 2  # one attempt each, plus the budget's 2 retries
        await mux.aclose()


async def test_deadline_bounds_the_whole_request(fleet):
    fleet["a"].set_faults(Faults(rate_hang=1.0))
    fleet["b"].set_faults(Faults(rate_hang=1.0))
    mux = mux_over(fleet["a"], fleet["b"], first_byte_timeout=30)
    t0 = time.monotonic()
    with pytest.raises(DeadlineExceeded) as ei:
        await mux.chat.completions.create(model="m", messages=MSG, deadline=0.5)
    assert time.monotonic() - t0 < 2.0
    assert isinstance(ei.value, openai.APITimeoutError)
    assert ei.value.to_dict()["error"]["code"] == "deadline_exceeded"
    await mux.aclose()


async def test_ejection_and_half_open_probe(fleet):
    fleet["a"].set_faults(Faults(rate_500=1.0))
    policy = HealthPolicy(failure_cooldown=0.0, eject_after=2, ejection_time=0.3)
    mux = mux_over(fleet["a"], fleet["b"], strategy="round_robin", health=policy)
    for _ in range(6):
        await mux.chat.completions.create(model="m", messages=MSG)
    assert mux.stats()["endpoints"]["a"]["state"] == "ejected"
    assert served_by(fleet["a"]) == 2
    fleet["a"].set_faults(Faults())
    await asyncio.sleep(0.35)
    assert mux.stats()["endpoints"]["a"]["state"] == "probing"
    for _ in range(4):
        await mux.chat.completions.create(model="m", messages=MSG)
    assert mux.stats()["endpoints"]["a"]["state"] == "healthy"
    assert served_by(fleet["a"]) >= 3
    await mux.aclose()


async def test_fast_failing_endpoint_does_not_attract_traffic(fleet):
    fleet["a"].set_faults(Faults(rate_500=0.5))
    fleet["b"].set_faults(Faults(latency=0.02))
    mux = mux_over(
        fleet["a"], fleet["b"], health=HealthPolicy(failure_cooldown=0.0, eject_after=1000)
    )
    for _ in range(60):
        await mux.chat.completions.create(model="m", messages=MSG)
    # a fails fast half the time; plain EWMA would route most traffic there
    assert served_by(fleet["b"]) > served_by(fleet["a"])
    await mux.aclose()


async def test_fallback_tier_only_when_primary_unavailable(fleet):
    mux = AsyncMultiplexer()
    mux.add_endpoint(fleet["a"].url, models=["m"], name="a")
    mux.add_endpoint(fleet["b"].url, models=["m"], name="b", tier="fallback")
    for _ in range(10):
        await mux.chat.completions.create(model="m", messages=MSG)
    assert served_by(fleet["b"]) == 0
    fleet["a"].set_faults(Faults(down=True))
    r = await mux.chat.completions.create(model="m", messages=MSG)
    assert r.choices[0].message.content == "ok from b"
    await mux.aclose()


async def test_max_concurrent_queues_instead_of_failing(fleet):
    fleet["a"].set_faults(Faults(latency=0.05))
    mux = AsyncMultiplexer()
    mux.add_endpoint(fleet["a"].url, models=["m"], name="a", max_concurrent=2)
    peak = 0

    async def one():
        nonlocal peak
        task = asyncio.ensure_future(mux.chat.completions.create(model="m", messages=MSG))
        while not task.done():
            peak = max(peak, mux.endpoints[0].inflight)
            await asyncio.sleep(0.005)
        return task.result()

    results = await asyncio.gather(*(one() for _ in range(8)))
    assert len(results) == 8 and peak == 2
    await mux.aclose()


async def test_hedging_wins_over_a_hung_endpoint(fleet):
    fleet["a"].set_faults(Faults(rate_hang=1.0))
    mux = mux_over(fleet["a"], fleet["b"], strategy="round_robin", hedging=HedgePolicy(delay=0.05))
    t0 = time.monotonic()
    r = await mux.chat.completions.create(model="m", messages=MSG)
    assert r.choices[0].message.content == "ok from b"
    assert time.monotonic() - t0 < 1.0
    await asyncio.sleep(0.05)
    snap = mux.stats()["endpoints"]["a"]
    assert snap["inflight"] == 0  # the loser was cancelled and released
    await mux.aclose()


async def test_hedging_not_used_when_first_answers_fast(fleet):
    mux = mux_over(fleet["a"], fleet["b"], hedging=HedgePolicy(delay=1.0))
    for _ in range(5):
        await mux.chat.completions.create(model="m", messages=MSG)
    assert served_by(fleet["a"]) + served_by(fleet["b"]) == 5
    await mux.aclose()


async def test_streaming_chunks_usage_and_context_manager(fleet):
    mux = mux_over(fleet["a"])
    stream = await mux.chat.completions.create(
        model="m", messages=MSG, stream=True, stream_options={"include_usage": True}
    )
    chunks = []
    async with stream:
        async for chunk in stream:
            chunks.append(chunk)
    assert all(isinstance(c, openai.types.chat.ChatCompletionChunk) for c in chunks)
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == "ok from a"
    assert chunks[-1].choices == [] and chunks[-1].usage.total_tokens > 0
    assert mux.endpoints[0].inflight == 0
    await mux.aclose()


async def test_tool_call_streaming_keeps_index(fleet):
    fleet["a"].set_replies(
        [
            Reply(
                content=None,
                tool_calls=[
                    ToolCall("get_weather", {"city": "Tokyo"}),
                    ToolCall("get_time", {"tz": "JST"}),
                ],
            )
        ]
    )
    mux = mux_over(fleet["a"])
    stream = await mux.chat.completions.create(model="m", messages=MSG, stream=True)
    calls: dict[int, dict] = {}
    async for chunk in stream:
        for tc in (chunk.choices[0].delta.tool_calls or []) if chunk.choices else []:
            slot = calls.setdefault(tc.index, {"name": "", "args": ""})
            slot["name"] += tc.function.name or ""
            slot["args"] += tc.function.arguments or ""
    assert calls[0]["name"] == "get_weather" and json.loads(calls[0]["args"]) == {"city": "Tokyo"}
    assert calls[1]["name"] == "get_time" and json.loads(calls[1]["args"]) == {"tz": "JST"}
    assert stream.partial.as_dict()["tool_calls"][1]["function"]["name"] == "get_time"
    await mux.aclose()


async def test_stream_fails_over_before_first_chunk(fleet):
    fleet["a"].set_faults(Faults(rate_drop_before=1.0))
    mux = mux_over(fleet["a"], fleet["b"], strategy="round_robin")
    stream = await mux.chat.completions.create(model="m", messages=MSG, stream=True)
    text = "".join([c.choices[0].delta.content or "" async for c in stream if c.choices])
    assert text == "ok from b"
    await mux.aclose()


async def test_stream_never_retried_after_first_chunk(fleet):
    fleet["a"].set_faults(Faults(rate_drop_mid_stream=1.0))
    fleet["a"].set_replies([Reply(content="one two three four five six seven eight")])
    mux = mux_over(fleet["a"], fleet["b"], strategy="round_robin")
    stream = await mux.chat.completions.create(model="m", messages=MSG, stream=True)
    got = []
    with pytest.raises(StreamInterrupted) as ei:
        async for chunk in stream:
            if chunk.choices:
                got.append(chunk.choices[0].delta.content or "")
    assert ei.value.partial["content"] == "".join(got)
    assert isinstance(ei.value, openai.APIConnectionError)
    assert served_by(fleet["b"]) == 0  # never sent twice once output was seen
    assert mux.endpoints[0].inflight == 0
    await mux.aclose()


async def test_closing_a_stream_early_releases_the_endpoint(fleet):
    fleet["a"].set_replies([Reply(content="x " * 200)])
    mux = mux_over(fleet["a"])
    stream = await mux.chat.completions.create(model="m", messages=MSG, stream=True)
    await stream.__anext__()
    await stream.close()
    assert mux.endpoints[0].inflight == 0
    await mux.aclose()


async def test_reasoning_passes_through(fleet):
    fleet["a"].set_replies([Reply(content="42", reasoning="think think")] * 2)
    mux = mux_over(fleet["a"])
    r = await mux.chat.completions.create(model="m", messages=MSG)
    assert r.choices[0].message.model_extra["reasoning"] == "think think"
    stream = await mux.chat.completions.create(model="m", messages=MSG, stream=True)
    async for _ in stream:
        pass
    assert stream.partial.as_dict()["reasoning"] == "think think"
    await mux.aclose()


async def test_legacy_completions_and_embeddings(fleet):
    mux = mux_over(fleet["a"])
    c = await mux.completions.create(model="m", prompt="Say hi", max_tokens=5)
    assert isinstance(c, openai.types.Completion) and c.choices[0].text
    e = await mux.embeddings.create(model="m", input=["a", "b"])
    assert len(e.data) == 2 and e.data[0].embedding
    await mux.aclose()


async def test_endpoints_added_and_removed_while_requests_in_flight(fleet):
    fleet["a"].set_faults(Faults(latency=0.2))
    mux = mux_over(fleet["a"])
    inflight = [
        asyncio.ensure_future(mux.chat.completions.create(model="m", messages=MSG))
        for _ in range(5)
    ]
    await asyncio.sleep(0.05)
    mux.add_endpoint(fleet["b"].url, models=["m"], name="b")
    mux.remove_endpoint("a")
    results = await asyncio.gather(*inflight)
    assert all(r.choices[0].message.content == "ok from a" for r in results)
    r = await mux.chat.completions.create(model="m", messages=MSG)
    assert r.choices[0].message.content == "ok from b"
    await mux.aclose()


async def test_add_model_compat_keeps_repeated_names(fleet):
    mux = AsyncMultiplexer()
    mux.add_model(openai.AsyncOpenAI(base_url=fleet["a"].url, api_key="x"), 1, "same")
    mux.add_model(openai.AsyncOpenAI(base_url=fleet["b"].url, api_key="x"), 1, "same")
    mux.add_fallback_model(openai.OpenAI(base_url=fleet["c"].url, api_key="x"), 1, "other")
    assert len(mux.endpoints) == 3
    for _ in range(20):
        await mux.chat.completions.create(model="anything", messages=MSG)
    assert served_by(fleet["a"]) > 0 and served_by(fleet["b"]) > 0
    assert served_by(fleet["c"]) == 0
    assert fleet["a"].requests[-1].json["model"] == "same"
    await mux.aclose()


def test_sync_multiplexer_json_stream_and_threads(fleet):
    with Multiplexer() as mux:
        mux.add_endpoint(fleet["a"].url, models=["m"], name="a")
        r = mux.chat.completions.create(model="m", messages=MSG)
        assert r.choices[0].message.content == "ok from a"
        with mux.chat.completions.create(model="m", messages=MSG, stream=True) as s:
            text = "".join(c.choices[0].delta.content or "" for c in s if c.choices)
        assert text == "ok from a"
        out: list[str] = []

        def worker():
            out.append(mux.chat.completions.create(model="m", messages=MSG).id)

        threads = [threading.Thread(target=worker) for _ in range(8)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert len(out) == 8
        assert [m.id for m in mux.models.list()] == ["m"]


async def test_sync_multiplexer_inside_a_running_loop_thread(fleet):
    # CrewAI calls the sync face from worker threads of a running event loop.
    mux = Multiplexer()
    mux.add_endpoint(fleet["a"].url, models=["m"], name="a")
    r = await asyncio.to_thread(mux.chat.completions.create, model="m", messages=MSG)
    assert r.choices
    await asyncio.to_thread(mux.close)


def test_errors_render_openai_json(fleet):
    fleet["a"].set_faults(Faults(rate_500=1.0))
    with Multiplexer(max_attempts=1) as mux:
        mux.add_endpoint(fleet["a"].url, models=["m"], name="a")
        with pytest.raises(AllEndpointsFailed) as ei:
            mux.chat.completions.create(model="m", messages=MSG)
    body = json.loads(ei.value.to_json())
    assert set(body["error"]) == {"message", "type", "param", "code"}
    assert isinstance(ei.value, openai.InternalServerError)
