"""Gonka error semantics: what each Transfer Agent answer does to routing, and the errors raised.

End-to-end through an AsyncMultiplexer against the fake Gonka network, whose nodes answer with
the real node's statuses and ``{"error": "..."}`` bodies; plus the error classes on their own.
"""

from __future__ import annotations

import json

import openai
import pytest
from _gonka_mux_support import address_of, assert_verified, chat, endpoint_names, register
from _gonka_support import MODEL, REQUESTER_KEY

from gonka_mux import AsyncMultiplexer
from gonka_mux.errors import AllEndpointsFailed, ModelNotFound, _http
from gonka_mux.gonka.errors import GonkaConfigError
from gonka_mux.gonka.policy import (
    ClassicApiRetired,
    GonkaAccessRestricted,
    GonkaAccountError,
    GonkaAuthenticationError,
    GonkaClockSkew,
    GonkaErrorPolicy,
    GonkaModelNotServed,
    GonkaParticipantRefused,
    InsufficientBalance,
    TransferAgentNotAllowed,
)
from gonka_mux.gonka.registration import aadd_gonka_broker, aregister_gonka_models
from gonka_mux.gonka.signing import RequestSigner
from gonka_mux.testing.fake_gonka import FakeGonkaNetwork

OTHER_KEY = "42" * 32


def upstream_error(status: int, message: str) -> openai.APIStatusError:
    """An openai status error as the SDK builds it from a node's ``{"error": ...}`` answer."""
    request = _http.Request("POST", "http://ta.example:8000/v1/chat/completions")
    response = _http.Response(status, request=request, json={"error": message})
    client = openai.OpenAI(api_key="x", base_url="http://ta.example:8000/v1")
    try:
        return client._make_status_error_from_response(response)
    finally:
        client.close()


CASES = [
    # status, node message, kind, retryable, removes the endpoint, error class (None: upstream's)
    (429, "Transfer Agent capacity reached. Try another TA", "rate_limited", True, False, None),
    (402, "Insufficient balance", "payment", False, False, InsufficientBalance),
    (
        401,
        "Unable to validate request against PubKey:invalid signature",
        "auth",
        False,
        False,
        GonkaAuthenticationError,
    ),
    (403, "Transfer Agent not allowed", "auth", True, True, TransferAgentNotAllowed),
    (
        403,
        "inference requests are restricted until block height 2294222",
        "auth",
        False,
        False,
        GonkaAccessRestricted,
    ),
    (403, "node is leaving the network", "gone", True, True, GonkaParticipantRefused),
    (404, "model not found", "client_error", False, False, GonkaModelNotServed),
    (410, "classic inference API is retired", "gone", True, True, ClassicApiRetired),
    (400, "signature is in the future", "client_error", True, False, GonkaClockSkew),
    (
        400,
        "AuthKey has already been used for a transfer request",
        "client_error",
        True,
        False,
        None,
    ),
    (400, "messages is required", "client_error", False, False, None),
    (
        500,
        "rpc error: code = NotFound desc = account has no public key",
        "auth",
        False,
        False,
        GonkaAccountError,
    ),
    (503, "no inference nodes available", "server_error", True, False, None),
]


@pytest.mark.parametrize(("status", "message", "kind", "retryable", "removes", "cls"), CASES)
def test_policy_table(status, message, kind, retryable, removes, cls) -> None:
    policy = GonkaErrorPolicy(transfer_address="gonka1ta", requester_address="gonka1me")
    assert policy.stop_on_repeated_5xx_body
    upstream = upstream_error(status, message)
    failure = policy.classify(upstream)
    assert (failure.kind, failure.status, failure.retryable) == (kind, status, retryable)
    assert failure.remove_endpoint is removes
    if cls is None:
        assert failure.error is upstream
    else:
        assert isinstance(failure.error, cls)
        assert failure.error.status_code == status
        assert failure.error.node_message == message
        assert failure.error.__cause__ is upstream


def test_dropping_a_ta_is_retryable_only_when_there_is_somewhere_else_to_go() -> None:
    alone = GonkaErrorPolicy(has_alternative=lambda: False)
    for status, message in ((403, "Transfer Agent not allowed"), (410, "Gone")):
        failure = alone.classify(upstream_error(status, message))
        assert failure.remove_endpoint and not failure.retryable


def test_error_classes_are_openai_errors_that_render_openai_json() -> None:
    kwargs = {"node_message": "x", "transfer_address": "gonka1ta", "requester_address": "gonka1me"}
    expected = [
        (InsufficientBalance, 402, openai.APIStatusError, "max_tokens"),
        (GonkaAuthenticationError, 401, openai.AuthenticationError, "public key"),
        (TransferAgentNotAllowed, 403, openai.PermissionDeniedError, "allowlist"),
        (GonkaAccessRestricted, 403, openai.PermissionDeniedError, "broker"),
        (GonkaModelNotServed, 404, openai.NotFoundError, "mux.models.list()"),
        (ClassicApiRetired, 410, openai.APIStatusError, "devshard"),
        (GonkaClockSkew, 400, openai.BadRequestError, "NTP"),
        (GonkaAccountError, 500, openai.InternalServerError, "public key on chain"),
    ]
    for cls, status, base, advice in expected:
        error = cls(**kwargs)
        assert isinstance(error, base)
        assert error.status_code == status
        body = json.loads(error.to_json())["error"]
        assert body["message"] == error.message
        assert advice in error.message
        assert body["code"]
        assert error.response.status_code == status
        assert error.transfer_address == "gonka1ta"


# --------------------------------------------------------------------------- end to end


async def test_ta_capacity_429_moves_to_another_ta(net, signer) -> None:
    p0, p1, p2 = net.participants
    p0.set_capacity_rate(1.0)
    p1.set_capacity_rate(1.0)
    async with AsyncMultiplexer() as mux:
        await register(mux, net, signer)
        for _ in range(5):
            assert (await chat(mux)).choices[0].message.content == "ok from p2"
        failures = mux.stats()["endpoints"]
    statuses = {(r.node, r.status) for r in net.inference_requests}
    assert {s for n, s in statuses if n in (p0.address, p1.address)} <= {429}
    assert (p2.address, 200) in statuses
    assert all(
        s["failures"].keys() <= {"rate_limited"} for n, s in failures.items() if "gonka:" in n
    )
    assert_verified(net.inference_requests, signer)


async def test_insufficient_balance_is_raised_at_once(net, signer) -> None:
    net.set_balance(signer.address, 100)
    async with AsyncMultiplexer() as mux:
        await register(mux, net, signer, default_max_tokens=512)
        with pytest.raises(InsufficientBalance) as info:
            await chat(mux)
    assert len(net.inference_requests) == 1  # no retry on another TA
    error = info.value
    assert error.status_code == 402 and error.node_message == "Insufficient balance"
    assert signer.address in error.message and REQUESTER_KEY not in error.message
    assert error.to_dict()["error"]["code"] == "insufficient_balance"


async def test_bad_signature_explains_address_pubkey_and_ta(net, signer) -> None:
    other = RequestSigner(OTHER_KEY)
    net.add_account(other)  # on chain with its own public key
    async with AsyncMultiplexer() as mux:
        # GONKA_ADDRESS set to someone else's account: the TA checks our signature against it.
        with pytest.raises(GonkaConfigError):  # a signer has its own address already
            await register(mux, net, signer, address=other.address)
        await aregister_gonka_models(
            mux,
            source_url=net.source_url,
            environ={"GONKA_PRIVATE_KEY": REQUESTER_KEY, "GONKA_ADDRESS": other.address},
            refresh_enabled=False,
        )
        with pytest.raises(GonkaAuthenticationError) as info:
            await chat(mux)
    assert len(net.inference_requests) == 1
    message = info.value.message
    assert other.address in message and "GONKA_ADDRESS" in message
    assert "public key" in message and "Transfer Agent" in message
    assert REQUESTER_KEY not in message and OTHER_KEY not in message


async def test_requester_without_a_public_key_on_chain(signer) -> None:
    with FakeGonkaNetwork(n_participants=2, models=[MODEL]) as net:
        net.add_account(signer.address)  # exists, never signed a transaction
        async with AsyncMultiplexer() as mux:
            await register(mux, net, signer)
            with pytest.raises(GonkaAccountError) as info:
                await chat(mux)
        assert len(net.inference_requests) == 1
        assert "inferenced create-client" in info.value.message


async def test_ta_not_on_the_allowlist_is_dropped_and_another_serves(net, signer) -> None:
    p0, p1, p2 = net.participants
    async with AsyncMultiplexer() as mux:
        await register(mux, net, signer, refresh_enabled=False)
        net.set_allowlist([p2.address])
        for _ in range(6):
            assert (await chat(mux)).choices[0].message.content == "ok from p2"
        assert {address_of(n) for n in endpoint_names(mux)} == {p2.address}
    forbidden = [r for r in net.inference_requests if r.status == 403]
    assert len(forbidden) <= 2 and {r.node for r in forbidden} <= {p0.address, p1.address}


async def test_the_last_ta_not_allowed_raises_its_own_error(signer) -> None:
    with FakeGonkaNetwork(n_participants=1, models=[MODEL]) as net:
        net.add_account(signer)
        async with AsyncMultiplexer() as mux:
            await register(mux, net, signer, refresh_enabled=False)
            net.set_allowlist(["gonka1someoneelse"])
            with pytest.raises(TransferAgentNotAllowed) as info:
                await chat(mux)
            assert info.value.transfer_address == net.participants[0].address
            assert endpoint_names(mux) == set()


async def test_model_missing_from_the_epoch_is_a_404_without_retries(net, signer) -> None:
    async with AsyncMultiplexer() as mux:
        await register(mux, net, signer, refresh_enabled=False)
        newcomer = net.add_participant(models=["Other/Model-1B"])
        net.set_participants([newcomer])  # the epoch no longer serves MODEL
        with pytest.raises(GonkaModelNotServed) as info:
            await chat(mux)
    assert len(net.inference_requests) == 1
    assert info.value.model == MODEL and isinstance(info.value, openai.NotFoundError)


async def test_classic_api_retired_everywhere(net, signer, caplog) -> None:
    async with AsyncMultiplexer() as mux:
        await register(mux, net, signer, refresh_enabled=False)
        net.retire_classic_api()
        with pytest.raises(ClassicApiRetired) as info:
            await chat(mux)
        # the first marked 410 retired the whole group: no other TA was asked
        assert [r.status for r in net.inference_requests] == [410]
        assert endpoint_names(mux) == set()
        assert info.value.network_wide
        message = info.value.message
        assert "broker" in message and "devshard" in message and "410" in message
        with pytest.raises(ModelNotFound):
            await chat(mux)
    warnings = [r for r in caplog.records if r.levelname == "WARNING"]
    assert len(warnings) == 1, [r.getMessage() for r in warnings]
    assert "add_gonka_broker" in warnings[0].getMessage()


async def test_a_plain_410_drops_only_that_ta(signer) -> None:
    # the legacy profile answers 410 without the v0.2.14 marker: per-endpoint handling
    with FakeGonkaNetwork(n_participants=3, models=[MODEL], host_profile="legacy") as legacy:
        legacy.add_account(signer)
        async with AsyncMultiplexer() as mux:
            await register(mux, legacy, signer, refresh_enabled=False)
            legacy.retire_classic_api()
            with pytest.raises(ClassicApiRetired) as info:
                await chat(mux)
            assert [r.status for r in legacy.inference_requests] == [410, 410, 410]
            assert not info.value.network_wide
            assert endpoint_names(mux) == set()


async def test_classic_api_retired_falls_through_to_a_broker(net, signer) -> None:
    broker = net.start_broker("sk-broker-key")
    async with AsyncMultiplexer() as mux:
        await register(mux, net, signer, refresh_enabled=False)
        await aadd_gonka_broker(mux, broker.url, "sk-broker-key", name="broker")
        net.retire_classic_api()
        for _ in range(5):
            assert (await chat(mux)).choices[0].message.content == "ok from broker"
        assert endpoint_names(mux) == set()
    assert len([r for r in net.inference_requests if r.status == 410]) == 1


async def test_identical_5xx_bodies_twice_stop_the_retries(net, signer) -> None:
    for participant in net.participants:
        participant.set_error_rate(1.0, 500, "Inference node response with an error. code = 500.")
    async with AsyncMultiplexer() as mux:
        await register(mux, net, signer, refresh_enabled=False)
        with pytest.raises(openai.InternalServerError) as info:
            await chat(mux)
        assert not isinstance(info.value, AllEndpointsFailed)  # stopped, not exhausted
        assert len(net.inference_requests) == 2


async def test_different_5xx_bodies_keep_failing_over(net, signer) -> None:
    for i, participant in enumerate(net.participants):
        participant.set_error_rate(1.0, 503, f"no inference nodes available on node {i}")
    async with AsyncMultiplexer() as mux:
        await register(mux, net, signer, refresh_enabled=False)
        with pytest.raises(AllEndpointsFailed) as info:
            await chat(mux)
    assert len(net.inference_requests) == 3  # every TA was tried
    assert "no inference nodes available" in info.value.message
    assert_verified(net.inference_requests, signer)
