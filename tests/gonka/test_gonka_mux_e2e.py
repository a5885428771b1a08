"""Signed Gonka requests through the Multiplexer, checked server-side by the fake network.

The fake TAs verify every signature with the ``cryptography`` package (not gonka_mux's signer),
reject reused signatures and judge timestamps against their chain time, as the real nodes do.
"""

from __future__ import annotations

import asyncio
import email.utils
import io
import time

import openai
import pytest
from _gonka_mux_support import (
    MESSAGES,
    assert_increasing_timestamps,
    assert_verified,
    chat,
    register,
)
from _gonka_support import MODEL

from gonka_mux import AsyncMultiplexer
from gonka_mux.gonka.signing import (
    ChainClockSync,
    GonkaAuth,
    NanoClock,
    gonka_auth_flow,
    http_date_ns,
    http_library_of,
    is_clock_skew_error,
    make_signed_client,
)
from gonka_mux.testing.fake_backend import Reply

FAST_RETRY = {"retry-after-ms": "5"}


async def test_concurrent_signed_requests_are_all_valid(net, signer) -> None:
    # hedging off: on a busy machine a slow answer would be hedged, and this test counts
    async with AsyncMultiplexer(hedging=None) as mux:
        await register(mux, net, signer)
        replies = await asyncio.gather(*(chat(mux) for _ in range(30)))
    records = net.inference_requests
    assert len(records) == 30 and {r.status for r in records} == {200}
    assert len({r.node for r in records}) == 3
    assert_verified(records, signer)
    # The node replaces the completion id with the inference id, i.e. the signature.
    assert {r.id for r in replies} == {r.authorization for r in records}


async def test_streaming_through_the_mux(net, signer) -> None:
    async with AsyncMultiplexer() as mux:
        await register(mux, net, signer)
        stream = await mux.chat.completions.create(model=MODEL, messages=MESSAGES, stream=True)
        chunks = [chunk async for chunk in stream]
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text.startswith("ok from p")
    record = net.inference_requests[-1]
    assert {c.id for c in chunks} == {record.authorization}
    assert_verified([record], signer)


async def test_router_failover_signs_each_attempt_afresh(net, signer) -> None:
    p0, p1, p2 = net.participants
    p0.set_error_rate(1.0, 503, "no inference nodes available on p0")
    p1.set_error_rate(1.0, 500, "Inference node response with an error. code = 500 (p1)")
    async with AsyncMultiplexer() as mux:
        await register(mux, net, signer)
        for _ in range(4):
            assert (await chat(mux)).choices[0].message.content == "ok from p2"
    records = net.inference_requests
    assert {r.status for r in records if r.node != p2.address} <= {500, 503}
    assert len(records) > 4  # some requests failed over
    assert_verified(records, signer)  # every attempt: its own valid signature
    assert_increasing_timestamps(records)


async def test_sdk_retries_go_through_the_auth_flow_and_are_resigned(net, signer) -> None:
    participant = net.participants[0]
    participant.backend.set_replies(
        [
            Reply(status=500, error="executor failed", headers=FAST_RETRY),
            Reply(status=500, error="executor failed", headers=FAST_RETRY),
            Reply("third time lucky"),
        ]
    )
    client = make_signed_client(participant, None, signer, max_retries=2, resync_clock=True)
    flow = client._client._auth
    assert type(flow).__name__ == "GonkaAuthFlow"
    assert type(flow).__mro__[2].__module__.startswith(http_library_of(type(client._client)))
    async with client:
        reply = await client.chat.completions.create(model=MODEL, messages=MESSAGES, max_tokens=8)
    assert reply.choices[0].message.content == "third time lucky"
    records = net.inference_requests
    assert [r.status for r in records] == [500, 500, 200]
    assert_verified(records, signer)
    assert_increasing_timestamps(records)


@pytest.mark.parametrize(
    ("chain_offset", "rejection"),
    [(-120, "signature is in the future"), (+150, "signature is too old")],
)
async def test_clock_skew_is_resynced_to_the_hosts_date(
    net, signer, chain_offset, rejection
) -> None:
    clock = NanoClock()
    async with AsyncMultiplexer() as mux:
        await register(mux, net, signer, clock=clock, refresh_enabled=False)
        net.set_chain_time_offset(chain_offset)
        reply = await chat(mux)
        assert reply.choices[0].message.content.startswith("ok from p")
        # once synced, later requests are accepted at once, on any TA
        for _ in range(3):
            await chat(mux)
    assert chain_offset - 2 < clock.offset_seconds < chain_offset + 2
    records = net.inference_requests
    first, second = records[0], records[1]
    assert (first.status, first.error) == (400, rejection)
    assert second.status == 200 and second.node == first.node  # resent to the same TA
    assert [r.status for r in records[2:]] == [200, 200, 200]
    # chain routes are closed on v0.2.14 hosts: the 400's own Date header was enough
    assert [r for r in net.requests if r.path == "/chain-rpc/status"] == []
    assert_verified(records, signer)


async def test_hosts_90_s_ahead_with_chain_routes_closed_20_of_20(net, signer) -> None:
    net.set_chain_time_offset(90)
    assert not net.chain_routes
    clock = NanoClock()
    async with AsyncMultiplexer() as mux:
        await register(mux, net, signer, clock=clock, refresh_enabled=False)
        replies = await asyncio.gather(*(chat(mux) for _ in range(20)))
    assert len(replies) == 20
    assert all(r.choices[0].message.content.startswith("ok from p") for r in replies)
    assert 88 < clock.offset_seconds < 92
    statuses = [r.status for r in net.inference_requests]
    assert statuses.count(200) == 20 and set(statuses) <= {200, 400}


async def test_a_stalled_chain_is_read_from_chain_rpc_where_it_answers(net, signer) -> None:
    # The chain stalled 45 s ago: the hosts' clocks (Date) agree with ours, so only the
    # chain's own block time can help; an operator exposes /chain-rpc/ on one host.
    clock = NanoClock()
    sync = ChainClockSync(clock)
    participant = net.participants[0]
    client = make_signed_client(participant, None, signer, clock=clock, resync_clock=sync)
    net.freeze_chain_time(time.time_ns() - 45 * 10**9)
    async with client:
        with pytest.raises(openai.BadRequestError):
            await client.chat.completions.create(model=MODEL, messages=MESSAGES, max_tokens=8)
        assert sync.syncs == 0  # the Date agreed, /chain-rpc/ answered 404: no pointless resend
        assert [r.status for r in net.inference_requests] == [400]
        net.set_chain_routes(True)
        sync._closed.clear()  # the operator opened it; a new ChainClockSync would ask anyway
        await client.chat.completions.create(model=MODEL, messages=MESSAGES, max_tokens=8)
    assert sync.last_source == "chain-rpc" and -47 < clock.offset_seconds < -43


async def test_a_resync_that_cannot_help_is_not_repeated(net, signer, caplog) -> None:
    # A node that rejects every timestamp, whatever the clock: resyncing cannot help.
    net.timestamp_expiration = -1
    async with AsyncMultiplexer(max_attempts=2) as mux:
        await register(mux, net, signer, refresh_enabled=False)
        with pytest.raises(openai.APIStatusError) as info:
            await chat(mux)
    # two attempts (two TAs), each rejected; the TAs' clocks agree with ours and chain routes
    # are closed, so nothing is resent
    assert [r.status for r in net.inference_requests] == [400, 400]
    assert "timestamp rejected: signature is too old" in info.value.message
    assert "lagging or stalled" in caplog.text


def test_sync_client_flow_resyncs_too(net, signer) -> None:
    participant = net.participants[1]
    clock = NanoClock()
    client = make_signed_client(
        participant, None, signer, async_=False, clock=clock, resync_clock=True
    )
    net.set_chain_time_offset(-90)
    with client:
        reply = client.chat.completions.create(model=MODEL, messages=MESSAGES, max_tokens=8)
    assert reply.choices[0].message.content == "ok from p1"
    assert [r.status for r in net.inference_requests] == [400, 200]
    assert -92 < clock.offset_seconds < -88
    assert_verified(net.inference_requests, signer)


async def test_a_shared_clock_sync_reads_chain_time_once_for_a_burst(net, signer) -> None:
    clock = NanoClock()
    sync = ChainClockSync(clock, min_interval=30)
    participant = net.participants[0]
    client = make_signed_client(participant, None, signer, clock=clock, resync_clock=sync)
    net.set_chain_time_offset(-60)
    async with client:
        await asyncio.gather(
            *(
                client.chat.completions.create(model=MODEL, messages=MESSAGES, max_tokens=8)
                for _ in range(5)
            )
        )
    assert 1 <= sync.syncs < 5
    assert sync.last_source == "date"
    assert [r for r in net.requests if r.path == "/chain-rpc/status"] == []


def test_skew_detection_and_flow_factory() -> None:
    assert is_clock_skew_error(400, b'{"error":"signature is too old"}')
    assert is_clock_skew_error(400, '{"error": "Request timestamp is too old"}')
    assert not is_clock_skew_error(401, b"signature is too old")
    assert not is_clock_skew_error(400, b'{"error":"messages is required"}')
    signer_free_auth = object.__new__(GonkaAuth)
    with pytest.raises(ValueError):
        gonka_auth_flow(signer_free_auth, "requests")


@pytest.mark.slow
async def test_the_demo_runs_and_succeeds() -> None:
    from gonka_mux.gonka.demo import run_gonka_demo

    out = io.StringIO()
    assert await run_gonka_demo(out, requests=60, concurrency=8)
    report = out.getvalue()
    assert "60/60 ok, 0 failed" in report
    assert "Gonka demo: OK" in report


async def test_resync_reports_failure_when_no_chain_time_can_be_read(net) -> None:
    clock = NanoClock()
    sync = ChainClockSync(clock, sources=["http://127.0.0.1:9"], timeout=2)
    assert not await sync.aresync("http://127.0.0.1:9/v1/chat/completions")
    assert not await asyncio.to_thread(sync.resync, "http://127.0.0.1:9/v1/chat/completions")
    assert clock.offset_seconds == 0 and sync.syncs == 0
    # a fallback source answers when the TA's own node does not (where chain-rpc is open)
    net.set_chain_time_offset(-40)
    closed = ChainClockSync(clock, sources=[net.source_url])
    assert not await closed.aresync("http://127.0.0.1:9/v1/chat/completions")
    assert net.source_url in closed._closed  # a 404 is remembered: not asked again
    net.set_chain_routes(True)
    fallback = ChainClockSync(clock, sources=[net.source_url])
    assert await fallback.aresync("http://127.0.0.1:9/v1/chat/completions")
    assert -42 < clock.offset_seconds < -38


def test_date_headers_parse() -> None:
    assert http_date_ns("Thu, 23 Jul 2026 12:00:00 GMT") == 1784808000 * 10**9
    assert http_date_ns("not a date") is None and http_date_ns(None) is None
    clock = NanoClock()
    sync = ChainClockSync(clock)
    now = time.time_ns()
    assert not sync._apply_date(email.utils.formatdate(now / 1e9, usegmt=True), now)  # agrees
    ahead = email.utils.formatdate(now / 1e9 + 90, usegmt=True)
    assert sync._apply_date(ahead, now) and 89 < clock.offset_seconds < 91
