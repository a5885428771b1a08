"""The fake Gonka network itself: the TA checks and error bodies, chain controls, faults."""

from __future__ import annotations

import base64
import json
import time
from collections.abc import Callable
from typing import Any

import httpx
import pytest
from _gonka_support import MODEL, chat_body, load_fixture

from gonka_mux.gonka.discovery import discover, parse_identity, parse_models
from gonka_mux.gonka.keys import PrivateKey
from gonka_mux.gonka.signing import RequestSigner
from gonka_mux.testing.fake_backend import Reply, ToolCall
from gonka_mux.testing.fake_gonka import FakeGonkaNetwork, FakeParticipant

ERROR_CASES = {
    case["when"]: case for case in load_fixture("v1_chat_completions.errors.json")["cases"]
}
N = 0xFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFEBAAEDCE6AF48A03BBFD25E8CD0364141


def send(
    participant: FakeParticipant,
    signer: RequestSigner,
    body: dict[str, Any] | bytes | None = None,
    *,
    timestamp: int | None = None,
    transfer_address: str | None = None,
    headers: dict[str, str] | None = None,
    drop: tuple[str, ...] = (),
) -> httpx.Response:
    """POST a signed chat request the way a client would, with ways to get it wrong."""
    raw = body if isinstance(body, bytes) else json.dumps(body or chat_body()).encode()
    timestamp = timestamp if timestamp is not None else participant.network.chain_time_ns()
    signed = signer.headers(raw, transfer_address or participant.address, timestamp)
    all_headers = {"Content-Type": "application/json", **signed, **(headers or {})}
    for name in drop:
        all_headers.pop(name, None)
    return httpx.post(f"{participant.base_url}/chat/completions", content=raw, headers=all_headers)


def scenario_bad_json(net, signer) -> httpx.Response:
    return send(net.participants[0], signer, b"{not json")


def scenario_no_messages(net, signer) -> httpx.Response:
    return send(net.participants[0], signer, {"model": MODEL, "messages": []})


def scenario_not_allowlisted(net, signer) -> httpx.Response:
    net.set_allowlist([net.participants[1].address])
    return send(net.participants[0], signer)


def scenario_no_authorization(net, signer) -> httpx.Response:
    return send(net.participants[0], signer, drop=("Authorization",))


def scenario_no_model(net, signer) -> httpx.Response:
    return send(net.participants[0], signer, {"messages": [{"role": "user", "content": "x"}]})


def scenario_unknown_account(net, signer) -> httpx.Response:
    return send(net.participants[0], RequestSigner("44" * 32))


def scenario_bad_signature(net, signer) -> httpx.Response:
    # Signed for another TA: valid ECDSA, wrong message at this TA.
    return send(net.participants[0], signer, transfer_address=net.participants[1].address)


def scenario_model_not_served(net, signer) -> httpx.Response:
    return send(net.participants[0], signer, chat_body(model="nobody/serves-this"))


def scenario_insufficient_balance(net, signer) -> httpx.Response:
    body = chat_body(max_tokens=100)  # "hello" = 5 characters
    net.set_balance(signer.address, 104)  # (5 + 100) * 1 > 104
    return send(net.participants[0], signer, body)


def scenario_too_old(net, signer) -> httpx.Response:
    return send(net.participants[0], signer, timestamp=net.chain_time_ns() - 61 * 10**9)


def scenario_in_the_future(net, signer) -> httpx.Response:
    return send(net.participants[0], signer, timestamp=net.chain_time_ns() + 31 * 10**9)


def scenario_replay(net, signer) -> httpx.Response:
    timestamp = net.chain_time_ns()
    first = send(net.participants[0], signer, timestamp=timestamp)
    assert first.status_code == 200
    return send(net.participants[0], signer, timestamp=timestamp)


def scenario_capacity(net, signer) -> httpx.Response:
    net.participants[0].set_capacity_rate(1.0)
    return send(net.participants[0], signer)


def scenario_nodes_busy(net, signer) -> httpx.Response:
    net.participants[0].set_error_rate(1.0)
    return send(net.participants[0], signer)


def scenario_retired(net, signer) -> httpx.Response:
    net.retire_classic_api()
    return send(net.participants[0], signer)


SCENARIOS: dict[str, Callable[..., httpx.Response]] = {
    "body not JSON": scenario_bad_json,
    "messages missing/empty (chat)": scenario_no_messages,
    "TA allowlist on and this node not in it (checked before auth)": scenario_not_allowlisted,
    "no Authorization header": scenario_no_authorization,
    "model empty": scenario_no_model,
    "requester account unknown / no pubkey on chain": scenario_unknown_account,
    "bad signature (wrong key, wrong TA address, body bytes differ, high-S, bad base64)": (
        scenario_bad_signature
    ),
    "model not served this epoch": scenario_model_not_served,
    "balance < (len(prompt chars) + max_tokens(default 5000)) * per_token_price": (
        scenario_insufficient_balance
    ),
    "X-Timestamp older than last block time - timestamp_expiration (60s)": scenario_too_old,
    "X-Timestamp newer than last block time + timestamp_advance (30s)": scenario_in_the_future,
    "same Authorization value re-used at same TA within ~30 blocks": scenario_replay,
    "TA bandwidth/inference-count window full": scenario_capacity,
    "executor: all ML nodes busy/unavailable": scenario_nodes_busy,
    "v0.2.14+ mainnet (after 2026-07-23, block 5195700)": scenario_retired,
}


@pytest.mark.parametrize("when", list(SCENARIOS))
def test_documented_errors(when: str, net, signer) -> None:
    case = ERROR_CASES[when]
    response = SCENARIOS[when](net, signer)
    assert response.status_code == case["status"], response.text
    if isinstance(case["body"], dict):
        expected = case["body"]["error"]
        actual = response.json()["error"]
        if "<" in expected:  # a placeholder in the fixture: compare the fixed prefix
            assert actual.startswith(expected.split("<")[0])
        else:
            assert actual == expected
        record = net.inference_requests[-1]
        assert (record.status, record.error) == (case["status"], actual)


def test_every_signature_defect_is_a_401(net, signer) -> None:
    participant = net.participants[0]
    expected = {"error": "Unable to validate request against PubKey:invalid signature"}
    body = json.dumps(chat_body()).encode()
    timestamp = net.chain_time_ns()
    good = signer.sign(body, timestamp, participant.address)
    raw = base64.b64decode(good)
    high_s = base64.b64encode(raw[:32] + (N - int.from_bytes(raw[32:], "big")).to_bytes(32, "big"))
    for authorization in (high_s.decode(), "not base64!", base64.b64encode(raw[:63]).decode()):
        response = send(
            participant, signer, body, timestamp=timestamp, headers={"Authorization": authorization}
        )
        assert (response.status_code, response.json()) == (401, expected)
    # a different body than the one signed
    response = httpx.post(
        f"{participant.base_url}/chat/completions",
        content=body + b" ",
        headers={
            "Authorization": good,
            "X-Requester-Address": signer.address,
            "X-Timestamp": str(timestamp),
        },
    )
    assert (response.status_code, response.json()) == (401, expected)
    # a key that is not the account's
    impostor = RequestSigner("55" * 32, address=signer.address)
    assert send(participant, impostor).status_code == 401
    # the untouched original still works (nothing above consumed its replay slot)
    assert send(participant, signer, body, timestamp=timestamp).status_code == 200


def test_account_without_public_key(net) -> None:
    lurker = RequestSigner("66" * 32)
    net.add_account(lurker.address, public_key=None)
    response = send(net.participants[0], lurker)
    assert response.status_code == 500
    assert response.json() == {
        "error": "rpc error: code = NotFound desc = account has no public key"
    }
    assert httpx.get(f"{net.source_url}/v2/accounts/{lurker.address}").status_code == 404


def test_executor_path_headers_are_refused(net, signer) -> None:
    response = send(net.participants[0], signer, headers={"X-Inference-Id": "x", "X-Seed": "1"})
    assert response.status_code == 401
    assert "TransferSignature" in response.json()["error"]


def test_balance_boundary_and_default_max_tokens(net, signer) -> None:
    # prompt = UTF-8 bytes of the contents + one "\n" per message: "hello" -> 6
    net.set_balance(signer.address, 106)
    assert send(net.participants[0], signer, chat_body(max_tokens=100)).status_code == 200
    net.set_balance(signer.address, 105)
    assert send(net.participants[0], signer, chat_body(max_tokens=100)).status_code == 402
    body = {"model": MODEL, "messages": [{"role": "user", "content": "hello"}]}
    net.set_balance(signer.address, 5005)  # without max_tokens the node reserves 5000
    assert send(net.participants[0], signer, body).status_code == 402
    net.set_balance(signer.address, 5006)
    assert send(net.participants[0], signer, body).status_code == 200
    # max_completion_tokens alone is not escrowed: the node still reserves 5000
    net.set_balance(signer.address, 5005)
    only_completion = {**body, "max_completion_tokens": 10}
    assert send(net.participants[0], signer, only_completion).status_code == 402


def test_prompt_size_counts_utf8_bytes_and_message_separators(net, signer) -> None:
    text = "héllo ✓"  # 7 characters, 10 bytes
    assert len(text.encode()) == 10
    body = chat_body(max_tokens=10, messages=[{"role": "user", "content": text}] * 2)
    net.set_balance(signer.address, 10 + 2 * (10 + 1) - 1)
    assert send(net.participants[0], signer, body).status_code == 402
    net.set_balance(signer.address, 10 + 2 * (10 + 1))
    assert send(net.participants[0], signer, body).status_code == 200


def test_legacy_profile_keeps_the_old_fake_behaviour(signer) -> None:
    with FakeGonkaNetwork(n_participants=1, host_profile="legacy") as legacy:
        legacy.add_account(signer)
        participant = legacy.participants[0]
        # characters, no separators; max_completion_tokens escrowed
        body = {"model": MODEL, "messages": [{"role": "user", "content": "héllo"}]}
        legacy.set_balance(signer.address, 5 + 10)
        assert send(participant, signer, {**body, "max_completion_tokens": 10}).status_code == 200
        status = httpx.get(f"{legacy.source_url}/api/chain-rpc/status")
        assert status.status_code == 200  # chain routes open, /api stripped everywhere
        legacy.retire_classic_api()
        retired = send(participant, signer, chat_body())
        assert retired.status_code == 410 and "deprecation" not in retired.headers
        assert "retired" in retired.json()["error"]
    with pytest.raises(ValueError):
        FakeGonkaNetwork(host_profile="v9")


def test_v0_2_14_hosts_answer_retired_classic_paths_like_the_node(net, signer) -> None:
    net.retire_classic_api()
    for url in (net.participants[0].url, net.source_url):
        for method in ("POST", "GET"):
            response = httpx.request(method, f"{url}/v1/chat/completions", json=chat_body())
            assert response.status_code == 410
            assert response.json() == {
                "error": "deprecated",
                "message": "classic inference is deprecated; use devshard",
            }
            assert response.headers["deprecation"] == "true"
            assert response.headers["link"] == '</devshard/{version}>; rel="successor-version"'
    devshard = httpx.post(f"{net.participants[0].url}/v1/devshard/anything")
    assert devshard.status_code == 410
    assert devshard.json()["message"] == "/v1/devshard is deprecated; use /devshard/{version}"


def test_chain_routes_are_closed_by_default_and_can_be_opened(net) -> None:
    for path, text in (
        ("/chain-rpc/status", "Chain RPC Disabled"),
        ("/chain-api/productscience/inference/inference/params", "Chain API Disabled"),
    ):
        response = httpx.get(f"{net.source_url}{path}")
        assert (response.status_code, response.text) == (404, text)
    # nginx maps /api/v1/ only: /api/chain-rpc/ is no chain route
    assert httpx.get(f"{net.source_url}/api/chain-rpc/status").status_code == 404
    net.set_chain_routes(True)
    assert httpx.get(f"{net.source_url}/chain-rpc/status").status_code == 200
    assert httpx.get(f"{net.source_url}/api/v1/status").json() == {"status": "ok"}


def test_every_answer_carries_the_hosts_clock(net) -> None:
    import email.utils

    net.set_chain_time_offset(90)
    response = httpx.get(f"{net.participants[0].url}/v1/status")
    host = email.utils.parsedate_to_datetime(response.headers["date"]).timestamp()
    assert 85 < host - time.time() < 95
    net.freeze_chain_time()  # a stalled chain: the hosts' clocks go on
    assert "date" in httpx.get(f"{net.source_url}/v1/status").headers


def test_departed_participants_and_the_developer_gate(net, signer) -> None:
    leaving = net.participants[0]
    net.set_participants(net.participants[1:])
    assert send(leaving, signer).status_code == 200  # by default a departed host still serves
    net.set_departed_refusal("node {address} is not an active participant")
    refused = send(leaving, signer)
    assert refused.status_code == 403
    assert refused.json()["error"] == f"node {leaving.address} is not an active participant"
    net.set_developer_gate(net.block_height + 10)
    gated = send(net.participants[0], signer)
    assert (gated.status_code, gated.json()["error"]) == (
        403,
        f"inference requests are restricted until block height {net.block_height + 10}",
    )


def test_replay_memory_is_per_ta_and_pruned(net, signer) -> None:
    timestamp = net.chain_time_ns()
    body = chat_body()
    assert send(net.participants[0], signer, body, timestamp=timestamp).status_code == 200
    # the same timestamp for another TA is another signature: fine
    assert send(net.participants[1], signer, body, timestamp=timestamp).status_code == 200
    assert send(net.participants[0], signer, body, timestamp=timestamp).status_code == 400
    net.advance_blocks(31)  # the node forgets auth keys after 30 blocks
    assert send(net.participants[0], signer, body, timestamp=timestamp).status_code == 200


def test_inference_ids_replace_response_ids(net, signer) -> None:
    response = send(net.participants[1], signer)
    assert response.json()["id"] == net.inference_requests[-1].authorization
    stream = send(net.participants[1], signer, chat_body(stream=True))
    events = [line[6:] for line in stream.text.splitlines() if line.startswith("data: ")]
    assert events[-1] == "[DONE]"
    chunks = [json.loads(e) for e in events[:-1]]
    assert {c["id"] for c in chunks} == {net.inference_requests[-1].authorization}
    assert chunks[-1]["usage"]["total_tokens"] > 0  # forced include_usage


def test_streamed_tool_calls_keep_their_own_ids(net, signer) -> None:
    net.participants[0].backend.set_replies([Reply(tool_calls=[ToolCall("lookup", {"q": 1})])])
    stream = send(net.participants[0], signer, chat_body(stream=True))
    chunks = [
        json.loads(line[6:]) for line in stream.text.splitlines() if line.startswith("data: {")
    ]
    inference_id = net.inference_requests[-1].authorization
    assert {c["id"] for c in chunks} == {inference_id}
    call_ids = [
        call["id"]
        for c in chunks
        for choice in c["choices"]
        for call in choice["delta"].get("tool_calls") or ()
        if "id" in call
    ]
    assert call_ids and all(i.startswith("call_") for i in call_ids)


def test_down_participant_drops_everything_including_discovery(net, signer) -> None:
    participant = net.participants[1]
    participant.set_faults(down=True)
    assert participant.down
    with pytest.raises(httpx.TransportError):
        send(participant, signer)
    with pytest.raises(httpx.TransportError):
        httpx.get(f"{participant.url}/v1/epochs/latest")
    participant.set_faults(down=False)
    assert send(participant, signer).status_code == 200


def test_executor_faults_reuse_the_fake_backend(net, signer) -> None:
    participant = net.participants[0]
    participant.set_faults(status_errors={503: 1.0})
    assert send(participant, signer).status_code == 503
    participant.set_faults(status_errors=None, rate_drop_before=1.0)
    with pytest.raises(httpx.TransportError):
        send(participant, signer)


def test_epoch_controls(net) -> None:
    assert (net.current_epoch, net.latest_epoch, net.phase) == (10, 10, "Inference")
    original = list(net.participants)
    newcomer = net.add_participant(models=["other/model"], weight=7)
    net.set_next_participants([original[0], newcomer])
    assert net.participants == original  # the effective epoch is unchanged
    net.advance_to_stage("poc_start")
    assert (net.latest_epoch, net.current_epoch, net.phase) == (11, 10, "PoCGenerate")
    epoch_11 = f"{net.source_url}/v1/epochs/11/participants"
    assert httpx.get(epoch_11).status_code == 404
    net.advance_to_stage("poc_validation_end", epoch=11)
    assert httpx.get(epoch_11).json()["active_participants"]["epoch_id"] == 11
    assert net.advance_to_next_epoch() == 11
    assert net.participants == [original[0], newcomer]
    assert net.epoch_models() == {MODEL, "other/model"}
    net.set_participants([newcomer])  # immediate change of the effective set
    assert net.epoch_models() == {"other/model"}
    assert httpx.get(f"{net.source_url}/v1/epochs/0/participants").status_code == 400
    assert httpx.get(f"{net.source_url}/v1/epochs/current").status_code == 400


def test_model_not_served_after_an_epoch_change(net, signer) -> None:
    other = net.add_participant(models=["other/model"])
    net.set_participants([other])
    response = send(net.participants[0], signer)  # MODEL is no longer in the epoch
    assert (response.status_code, response.json()) == (404, {"error": "model not found"})


def test_node_documents(net, signer) -> None:
    participant = net.participants[0]
    identity = httpx.get(f"{participant.url}/v1/identity").json()
    assert parse_identity(identity).address == participant.address
    from cryptography.hazmat.primitives import hashes
    from cryptography.hazmat.primitives.asymmetric import ec

    key = ec.EllipticCurvePublicKey.from_encoded_point(ec.SECP256K1(), participant.public_key)
    key.verify(
        base64.b64decode(identity["signature"]),
        json.dumps(identity["data"]).encode(),
        ec.ECDSA(hashes.SHA256()),
    )
    assert parse_models(httpx.get(f"{participant.url}/v1/models").json()) == (MODEL,)
    assert httpx.get(f"{participant.url}/api/v1/status").json() == {"status": "ok"}
    account = httpx.get(f"{participant.url}/v2/accounts/{signer.address}").json()
    assert base64.b64decode(account["pubkey"]) == signer.public_key
    net.set_chain_routes(True)
    params = httpx.get(f"{net.source_url}/chain-api/productscience/inference/inference/params")
    assert params.json()["params"]["validation_params"]["timestamp_expiration"] == "60"
    assert httpx.get(f"{net.source_url}/v1/nothing").status_code == 404
    assert httpx.get(f"{net.source_url}/v1/identity").status_code == 404  # seed: no identity


def test_legacy_models_shape_and_allowlist_all() -> None:
    with FakeGonkaNetwork(2, models_shape="legacy", allowlist="all", chain_routes=True) as net:
        document = httpx.get(f"{net.source_url}/v1/models").json()
        assert parse_models(document) == ("Qwen/Fake-7B",)
        assert "models" in document
        assert discover(net.source_url).allowlist == frozenset(p.address for p in net.participants)


def test_broker_requires_its_bearer_key(net) -> None:
    broker = net.start_broker("sk-broker-test")
    body = chat_body()
    assert httpx.post(f"{broker.url}/chat/completions", json=body).status_code == 401
    wrong = {"Authorization": "Bearer nope"}
    assert httpx.post(f"{broker.url}/chat/completions", json=body, headers=wrong).status_code == 401
    right = {"Authorization": "Bearer sk-broker-test"}
    response = httpx.post(f"{broker.url}/chat/completions", json=body, headers=right)
    assert response.status_code == 200
    assert response.json()["choices"][0]["message"]["content"] == "ok from broker"


def test_chain_time_controls(net) -> None:
    net.set_chain_routes(True)
    net.freeze_chain_time(at_ns=10**18)
    status = httpx.get(f"{net.source_url}/chain-rpc/status").json()
    assert status["result"]["sync_info"]["latest_block_time"] == "2001-09-09T01:46:40.000000000Z"
    net.set_chain_time_offset(0)  # unfreezes
    assert abs(net.chain_time_ns() - 10**18) > 10**16


def test_constructor_validation() -> None:
    for kwargs in (
        {"n_participants": -1},
        {"n_participants": 2, "weights": [1]},
        {"n_participants": 2, "participant_models": [["a"]]},
        {"wire_shape": "xml"},
        {"proof_mode": "maybe"},
        {"models_shape": "yaml"},
    ):
        with pytest.raises(ValueError):
            FakeGonkaNetwork(**kwargs)


async def test_async_context_manager_and_repr() -> None:
    async with FakeGonkaNetwork(1) as net:
        assert "running" in repr(net)
        key = PrivateKey.from_hex("77" * 32)
        assert net.add_account(key.public_key) == key.address
    assert "stopped" in repr(net)


def test_a_hanging_executor_times_the_client_out(net, signer) -> None:
    participant = net.participants[2]
    participant.set_faults(rate_hang=1.0)
    raw = json.dumps(chat_body()).encode()
    headers = signer.headers(raw, participant.address, net.chain_time_ns())
    with pytest.raises(httpx.ReadTimeout):
        httpx.post(
            f"{participant.base_url}/chat/completions", content=raw, headers=headers, timeout=0.3
        )
    # the hung request is recorded, without a status, once the server sees the client go
    deadline = time.monotonic() + 5
    while not any(r.status is None for r in participant.requests):
        assert time.monotonic() < deadline, participant.requests
        time.sleep(0.01)
    assert "no response" in participant.requests[0].error
    participant.set_faults(rate_hang=0.0)
    assert send(participant, signer).status_code == 200


def test_fallback_verifier_without_cryptography(monkeypatch) -> None:
    """A plain install (no cryptography) runs the demo on python-ecdsa: same verdicts."""
    import hashlib

    from gonka_mux.gonka.signing import RequestSigner, signing_message
    from gonka_mux.testing import fake_gonka

    signer = RequestSigner("0x" + "11" * 32, backend="ecdsa")
    message = signing_message(b'{"model":"m"}', 1_700_000_000_000_000_000, "gonka1ta")
    auth = signer.sign(b'{"model":"m"}', 1_700_000_000_000_000_000, "gonka1ta")
    with_crypto = fake_gonka.verify_signature(signer.public_key, auth, message)
    monkeypatch.setattr(fake_gonka, "_have_cryptography", lambda: False)
    assert with_crypto is True
    assert fake_gonka.verify_signature(signer.public_key, auth, message) is True
    assert fake_gonka.verify_signature(signer.public_key, auth, message + b"x") is False
    sign, public, address = fake_gonka._fake_key("p0")
    assert address.startswith("gonka1") and len(public) == 33
    assert sign(hashlib.sha256(b"x").digest())
