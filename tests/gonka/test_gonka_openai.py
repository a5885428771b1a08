"""The real openai SDK, its own HTTP client and GonkaAuth, against the fake network."""

from __future__ import annotations

import itertools

import httpx
import openai
import pytest
from _gonka_support import MODEL

from gonka_mux.gonka.discovery import discover
from gonka_mux.gonka.errors import GonkaConfigError
from gonka_mux.gonka.signing import GonkaAuth, NanoClock, make_signed_client, signing_message
from gonka_mux.testing.fake_backend import Reply
from gonka_mux.testing.fake_gonka import verify_signature

MESSAGES = [{"role": "user", "content": "hello"}]
# openai honours retry-after-ms, so the SDK's retries happen at once.
FAST_RETRY = {"retry-after-ms": "5"}


def gonka_error(exc: openai.APIStatusError) -> str:
    """The node's ``{"error": "<message>"}`` body (openai 3 does not put it in str(exc))."""
    return exc.response.json()["error"]


def assert_signed_server_side(net, records, signer) -> None:
    """Each attempt carried a valid, distinct signature with a strictly newer timestamp."""
    timestamps = []
    for record in records:
        timestamp = record.timestamp_ns
        assert timestamp is not None
        message = signing_message(record.body, timestamp, record.node)
        assert verify_signature(signer.public_key, record.authorization, message)
        assert record.requester == signer.address
        timestamps.append(timestamp)
    assert all(a < b for a, b in itertools.pairwise(timestamps))
    assert len({r.authorization for r in records}) == len(records)


async def test_sdk_retries_are_each_signed_afresh(net, signer) -> None:
    participant = net.participants[0]
    participant.backend.set_replies(
        [
            Reply(status=500, error="executor failed", headers=FAST_RETRY),
            Reply(status=500, error="executor failed", headers=FAST_RETRY),
            Reply("third time lucky"),
        ]
    )
    http_client = openai.DefaultAsyncHttpxClient(auth=GonkaAuth(signer, participant.address))
    client = openai.AsyncOpenAI(
        api_key="unused", base_url=participant.base_url, http_client=http_client, max_retries=2
    )
    async with client:
        completion = await client.chat.completions.create(
            model=MODEL, messages=MESSAGES, max_tokens=16
        )
    assert completion.choices[0].message.content == "third time lucky"
    records = net.inference_requests
    assert [r.status for r in records] == [500, 500, 200]
    assert completion.id == records[-1].authorization  # the inference id is the signature
    assert_signed_server_side(net, records, signer)


async def test_without_fresh_signatures_a_retry_would_be_a_replay(net, signer) -> None:
    """The control: resending the exact signed bytes is refused, so the test above matters."""
    participant = net.participants[0]
    participant.backend.set_replies([Reply(status=500, error="boom"), Reply("ok")])
    client = make_signed_client(participant, None, signer, max_retries=0)
    async with client:
        with pytest.raises(openai.InternalServerError):
            await client.chat.completions.create(model=MODEL, messages=MESSAGES, max_tokens=16)
    first = net.inference_requests[0]
    async with httpx.AsyncClient() as http:
        replay = await http.post(
            f"{participant.base_url}/chat/completions",
            content=first.body,
            headers={
                "Content-Type": "application/json",
                "Authorization": first.authorization,
                "X-Requester-Address": first.requester,
                "X-Timestamp": str(first.timestamp_ns),
            },
        )
    assert replay.status_code == 400
    assert replay.json() == {"error": "AuthKey has already been used for a transfer request"}


def test_sync_factory_client_signs_json_and_streams(net, signer) -> None:
    found = discover(net.source_url)
    participant = found.for_model(MODEL)[1]
    client = make_signed_client(participant, None, signer, async_=False)
    assert isinstance(client, openai.OpenAI)
    assert str(client.base_url).rstrip("/") == participant.base_url
    with client:
        completion = client.chat.completions.create(model=MODEL, messages=MESSAGES, max_tokens=8)
        chunks = list(
            client.chat.completions.create(
                model=MODEL, messages=MESSAGES, max_tokens=8, stream=True
            )
        )
    assert completion.choices[0].message.content == "ok from p1"
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == "ok from p1"
    stream_id = net.inference_requests[-1].authorization
    assert {c.id for c in chunks} == {stream_id}
    assert chunks[-1].usage is not None  # the node forces include_usage
    assert_signed_server_side(net, net.inference_requests, signer)


async def test_async_factory_client_retries_a_503_with_a_new_signature(net, signer) -> None:
    participant = net.participants[2]
    participant.backend.set_replies([Reply(status=503, error="busy", headers=FAST_RETRY)])
    client = make_signed_client(participant, None, signer, max_retries=1)
    assert isinstance(client, openai.AsyncOpenAI)
    async with client:
        completion = await client.chat.completions.create(
            model=MODEL, messages=MESSAGES, max_tokens=8
        )
    assert completion.choices[0].message.content == "ok from p2"
    assert [r.status for r in net.inference_requests] == [503, 200]
    assert_signed_server_side(net, net.inference_requests, signer)


async def test_factory_from_a_url_needs_the_transfer_address(net, signer) -> None:
    participant = net.participants[0]
    with pytest.raises(GonkaConfigError) as info:
        make_signed_client(participant.url, None, signer)
    assert info.value.field == "transfer_address"
    client = make_signed_client(participant.url, participant.address, signer)
    assert str(client.base_url).rstrip("/") == participant.base_url
    async with client:
        await client.chat.completions.create(model=MODEL, messages=MESSAGES, max_tokens=8)
    # Signing for another TA's address is a bad signature at this TA.
    wrong = make_signed_client(participant.url, net.participants[1].address, signer)
    async with wrong:
        with pytest.raises(openai.AuthenticationError) as error:
            await wrong.chat.completions.create(model=MODEL, messages=MESSAGES, max_tokens=8)
    assert gonka_error(error.value) == (
        "Unable to validate request against PubKey:invalid signature"
    )


async def test_internal_headers_from_the_caller_are_never_sent(net, signer) -> None:
    participant = net.participants[0]
    client = make_signed_client(
        participant,
        None,
        signer,
        default_headers={"X-Inference-Id": "forged", "X-Seed": "1", "X-Transfer-Address": "x"},
    )
    async with client:
        await client.chat.completions.create(
            model=MODEL,
            messages=MESSAGES,
            max_tokens=8,
            extra_headers={"X-TA-Signature": "forged", "X-Prompt-Hash": "00"},
        )
    sent = net.inference_requests[-1].headers
    for name in ("x-inference-id", "x-seed", "x-transfer-address", "x-ta-signature"):
        assert name not in sent
    assert "x-prompt-hash" not in sent


async def test_clock_skew_is_fixed_by_syncing_to_chain_time(net, signer) -> None:
    from gonka_mux.gonka.discovery import afetch_chain_status

    net.set_chain_routes(True)  # an operator who exposes /chain-rpc/
    participant = net.participants[0]
    clock = NanoClock()
    client = make_signed_client(participant, None, signer, clock=clock)
    net.set_chain_time_offset(-45)  # the chain lags 45 s: our timestamps are "in the future"
    async with client:
        with pytest.raises(openai.BadRequestError) as error:
            await client.chat.completions.create(model=MODEL, messages=MESSAGES, max_tokens=8)
        assert gonka_error(error.value) == "signature is in the future"
        status = await afetch_chain_status(net.source_url)
        offset = clock.sync_to(status.latest_block_time_ns)
        assert -46 < offset < -44
        await client.chat.completions.create(model=MODEL, messages=MESSAGES, max_tokens=8)
        net.set_chain_time_offset(+90)  # now the chain is ahead: "too old"
        with pytest.raises(openai.BadRequestError) as error:
            await client.chat.completions.create(model=MODEL, messages=MESSAGES, max_tokens=8)
        assert gonka_error(error.value) == "signature is too old"
