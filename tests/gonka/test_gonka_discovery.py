"""Discovery: every fixture shape, lenient parsing, failover, filters, and the fake network."""

from __future__ import annotations

import copy
import json
import socket
from pathlib import Path
from typing import Any

import httpx
import pytest
from _gonka_support import FIXTURES, MODEL, load_fixture

from gonka_mux.gonka.discovery import (
    GonkaParticipant,
    adiscover,
    afetch_epoch_info,
    build_result,
    discover,
    fetch_chain_status,
    fetch_epoch_info,
    normalize_sources,
    parse_account,
    parse_allowlist,
    parse_identity,
    parse_models,
    parse_participants,
    parse_pricing,
)
from gonka_mux.gonka.epochs import parse_chain_status, parse_epoch_info
from gonka_mux.gonka.errors import (
    GonkaConfigError,
    GonkaDiscoveryError,
    GonkaNoParticipantsError,
    GonkaPayloadError,
    GonkaProofVerificationError,
)
from gonka_mux.testing.fake_gonka import FakeGonkaNetwork

NODE1 = "gonka1gazevntcqk95rqusjhvwn92y4599y8t3tjqc04"
NODE2 = "gonka1y73jrm906eh5unh7lce2ynhhg2lfl5xvmkxxnw"


def closed_port_url() -> str:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    return f"http://127.0.0.1:{port}"  # nothing listens there any more


# --- every fixture file parses --------------------------------------------------------------------


def _check_participants(payload: Any) -> None:
    parsed = parse_participants(payload)
    assert parsed.epoch_id == 300
    assert [p.address for p in parsed.participants] == [NODE1, NODE2]
    assert parsed.participants[1].weight == 205500
    assert parsed.participants[1].models == ("MiniMaxAI/MiniMax-M2.7", "moonshotai/Kimi-K2.6")
    assert parsed.participants[0].base_url == "http://node1.example.net:8000/v1"


def _check_epoch(payload: Any) -> None:
    info = parse_epoch_info(payload)
    assert info.switch_height == 5184700
    assert info.effective_epoch_id == 300
    assert info.epoch_params["epoch_length"] == 17280


FIXTURE_CHECKS = {
    "chain-api_productscience_inference_inference_params.json": lambda p: (
        len(parse_allowlist(p)) == 7
        and "gonka10fynmy2npvdvew0vj2288gz8ljfvmjs35lat8n" in parse_allowlist(p)
    ),
    "v1_epochs_current_participants.json": _check_participants,
    "v1_epochs_current_participants.v0_2_15_shape.json": _check_participants,
    "v1_epochs_latest.json": _check_epoch,
    "v1_epochs_latest.v0_2_15_shape.json": _check_epoch,
    "v1_epochs_latest.confirmation_poc_active.json": lambda p: (
        parse_epoch_info(p).confirmation_poc_blocking
    ),
    "v1_identity.json": lambda p: parse_identity(p).address == NODE1,
    "v1_identity.delegate_ta.client_expected.json": lambda p: (
        parse_identity(p).delegate_ta == {"https://ta1.example.net": NODE1}
    ),
    "v1_models.json": lambda p: (
        parse_models(p) == ("MiniMaxAI/MiniMax-M2.7", "moonshotai/Kimi-K2.6")
    ),
    "v1_models.legacy.json": lambda p: (
        parse_models(p) == ("Qwen/Qwen3-235B-A22B-Instruct-2507-FP8",)
    ),
    "v1_pricing.json": lambda p: parse_pricing(p) == {"MiniMaxAI/MiniMax-M2.7": 100},
    "v2_accounts_address.json": lambda p: (
        parse_account(p).has_public_key and parse_account(p).balance == 5_000_000_000
    ),
    "v1_status.json": lambda p: p == {"status": "ok"},
    "v1_versions.json": lambda p: p["api_version"]["version"] == "0.2.13",
    "signing_test_vector.json": lambda p: "authorization_base64_r_s_lowS" in p,
    "v1_chat_completions.errors.json": lambda p: all("status" in c for c in p["cases"]),
}


@pytest.mark.parametrize("path", sorted(FIXTURES.iterdir()), ids=lambda p: p.name)
def test_every_fixture_file_parses(path: Path) -> None:
    if path.suffix == ".txt":  # the SSE transcript: every data line is JSON or [DONE]
        import openai.types.chat as chat

        events = [line[6:] for line in path.read_text().splitlines() if line.startswith("data: ")]
        assert events[-1] == "[DONE]"
        chunks = [chat.ChatCompletionChunk.model_validate_json(e) for e in events[:-1]]
        assert chunks[-1].usage is not None
        return
    if path.name == "v1_chat_completions.response.json":
        import openai.types.chat as chat

        completion = chat.ChatCompletion.model_validate(load_fixture(path.name))
        assert completion.choices[0].message.content
        return
    check = FIXTURE_CHECKS[path.name]  # a new fixture needs a check here
    assert check(load_fixture(path.name)) is not False


def test_fixture_participants_over_file_url() -> None:
    result = discover(f"file://{FIXTURES / 'v1_epochs_current_participants.json'}")
    assert result.epoch_id == 300
    assert result.source_url.startswith("file://")
    assert result.excluded == {
        "gonka1dkd73gqdt73525k7wpgamharrhzadp3vsescp6": "statistical_invalidations"
    }
    assert [p.address for p in result.for_model("moonshotai/Kimi-K2.6")] == [NODE2]
    assert len(result.for_model("MiniMaxAI/MiniMax-M2.7")) == 2
    assert result.for_model("nope") == ()
    assert result.allowlist == frozenset() and result.allowlist_known
    assert result.epoch_info is None and result.phase is None


def test_relative_file_url(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(FIXTURES.parent)
    result = discover("file://fixtures/v1_epochs_current_participants.v0_2_15_shape.json")
    assert result.epoch_id == 300


# --- lenient parsing ------------------------------------------------------------------------------


def base_payload() -> dict[str, Any]:
    return load_fixture("v1_epochs_current_participants.json")


def test_numbers_as_strings_and_missing_optional_parts() -> None:
    payload = base_payload()
    payload["active_participants"] = json.loads(
        json.dumps(payload["active_participants"]).replace("41250", '"41250"')
    )
    payload["active_participants"]["epoch_id"] = "300"
    del payload["excluded_participants"]  # older nodes (gonka-openai crashed on this)
    payload["proof_ops"] = None
    payload["block"] = [payload["block"]]  # the old docs' array form
    parsed = parse_participants(payload)
    assert parsed.epoch_id == 300
    assert parsed.participants[0].weight == 41250
    assert parsed.excluded == {}


def test_malformed_entries_are_skipped_not_fatal() -> None:
    payload = base_payload()
    entries = payload["active_participants"]["participants"]
    entries.append({"index": "gonka1x", "inference_url": "ftp://nope"})
    entries.append({"inference_url": "http://no-address"})
    entries.append("not an object")
    entries.append({**entries[0], "weight": "lots"})
    entries.append(copy.deepcopy(entries[0]))  # duplicate address
    parsed = parse_participants(payload)
    assert [p.address for p in parsed.participants] == [NODE1, NODE2]
    assert parsed.skipped == 5


def test_epoch_id_falls_back_to_group_then_seed() -> None:
    payload = base_payload()
    del payload["active_participants"]["epoch_id"]
    assert parse_participants(payload).epoch_id == 300
    del payload["active_participants"]["epoch_group_id"]
    assert parse_participants(payload).epoch_id == 300  # from seed.epoch_index


@pytest.mark.parametrize(
    "payload",
    [[], {"no": "participants"}, {"active_participants": {"participants": "x"}}],
)
def test_unusable_payloads_raise_payload_errors(payload: Any) -> None:
    with pytest.raises(GonkaPayloadError):
        parse_participants(payload)


def test_filters_exclusions_and_allowlist() -> None:
    parsed = parse_participants(base_payload())
    result = build_result(parsed, source_url="x", allowlist=frozenset({NODE2, "gonka1other"}))
    assert [p.address for p in result.participants] == [NODE2]
    assert result.not_allowlisted == (NODE1,)
    payload = base_payload()
    payload["excluded_participants"] = [{"address": NODE1, "reason": "downtime"}]
    result = build_result(parse_participants(payload), source_url="x")
    assert [p.address for p in result.participants] == [NODE2]
    assert result.participant(NODE1) is None and result.participant(NODE2) is not None


def test_nothing_usable_is_an_error_that_says_why() -> None:
    parsed = parse_participants(base_payload())
    with pytest.raises(GonkaNoParticipantsError) as info:
        build_result(parsed, source_url="http://src", allowlist=frozenset({"gonka1other"}))
    assert info.value.epoch == 300
    assert "2 not on the TA allowlist" in str(info.value)


def test_allowlist_parsing_variants() -> None:
    assert parse_allowlist({"params": {}}) == frozenset()
    assert parse_allowlist({"params": {"transfer_agent_access_params": {}}}) == frozenset()
    empty = {"params": {"transfer_agent_access_params": {"allowed_transfer_addresses": None}}}
    assert parse_allowlist(empty) == frozenset()
    with pytest.raises(GonkaPayloadError):
        parse_allowlist([])


def test_large_payload_parses_correctly() -> None:
    payload = base_payload()
    template = payload["active_participants"]["participants"][0]
    payload["active_participants"]["participants"] = [
        {**template, "index": f"gonka1fake{i}", "inference_url": f"http://h{i}:8000", "weight": i}
        for i in range(1000)
    ]
    parsed = parse_participants(json.loads(json.dumps(payload)))
    assert len(parsed.participants) == 1000
    assert parsed.participants[999].weight == 999


def test_source_normalization() -> None:
    assert normalize_sources("http://a:8000/, https://b/v1 ,http://a:8000") == (
        "http://a:8000",
        "https://b",
    )
    with pytest.raises(GonkaConfigError, match="not an http"):
        normalize_sources("node1:8000")
    with pytest.raises(GonkaConfigError, match="GONKA_SOURCE_URL"):
        normalize_sources([])


@pytest.mark.parametrize("epoch", [0, -1, "next", True])
def test_bad_epoch_arguments(epoch: Any) -> None:
    with pytest.raises(GonkaConfigError) as info:
        discover("http://127.0.0.1:9", epoch=epoch)
    assert info.value.field == "epoch"


# --- against the fake network ---------------------------------------------------------------------


def test_discover_over_http(net) -> None:
    result = discover(net.source_url)
    assert result.epoch_id == net.current_epoch == 10
    assert [p.address for p in result.participants] == [p.address for p in net.participants]
    assert [p.inference_url for p in result.participants] == [p.url for p in net.participants]
    assert [p.weight for p in result.participants] == [100, 200, 300]
    assert result.models == (MODEL,)
    assert result.phase == "Inference"
    assert result.epoch_info is not None and result.epoch_info.safe_for_inference
    assert result.source_url == net.source_url
    # a v0.2.14 host keeps /chain-api/ closed: the allowlist is unknown, everyone is kept
    assert not result.allowlist_known and result.allowlist == frozenset()
    assert all(p.epoch_id == 10 for p in result.participants)
    assert result.classic_api is not None and not result.classic_api_retired


async def test_adiscover_matches_discover(net) -> None:
    sync = discover(net.source_url)
    result = await adiscover(net.source_url)
    assert result == sync


async def test_failover_to_the_next_source(net) -> None:
    dead = closed_port_url()
    net.participants[0].set_faults(down=True)
    sources = [dead, net.participants[0].url, net.participants[1].url]
    result = await adiscover(sources, timeout=5)
    assert result.source_url == net.participants[1].url
    assert len(result.participants) == 3
    # The same with the sync face.
    assert discover(sources, timeout=5).source_url == net.participants[1].url


def test_every_source_failing_lists_each_attempt(net) -> None:
    dead = closed_port_url()
    with pytest.raises(GonkaDiscoveryError) as info:
        discover([dead, f"{net.source_url}/nothing-here"], timeout=5)
    error = info.value
    assert len(error.attempts) == 2
    assert error.status_code == 404
    assert dead in str(error) and "every discovery source failed" in str(error)


def test_allowlist_from_chain_params_filters_participants(net) -> None:
    allowed = [p.address for p in net.participants[:2]]
    net.set_allowlist(allowed)
    net.set_chain_routes(True)  # an operator who exposes the chain REST API
    result = discover(net.source_url)
    assert result.allowlist_known
    assert [p.address for p in result.participants] == allowed
    assert result.allowlist == frozenset(allowed)
    assert result.not_allowlisted == (net.participants[2].address,)


def test_unreadable_allowlist_keeps_everyone_and_says_so(tmp_path, net, caplog) -> None:
    payload = httpx.get(f"{net.source_url}/v1/epochs/current/participants").json()
    path = tmp_path / "participants.json"
    path.write_text(json.dumps(payload))
    dead = closed_port_url()
    # participants from a file, chain params from a dead node: allowlist unknown
    result = discover([f"file://{path}", dead], timeout=5)
    assert len(result.participants) == 3
    assert not result.allowlist_known
    assert "allowlist" in caplog.text


def test_excluded_participants_are_dropped(net) -> None:
    net.exclude(net.participants[1].address, "downtime")
    result = discover(net.source_url)
    assert [p.address for p in result.participants] == [
        net.participants[0].address,
        net.participants[2].address,
    ]
    assert result.excluded == {net.participants[1].address: "downtime"}


def test_v0_2_15_wire_shape_over_http(signer) -> None:
    with FakeGonkaNetwork(n_participants=2, wire_shape="v0_2_15") as net:
        result = discover(net.source_url, verify_proofs=True)
        assert [p.weight for p in result.participants] == [100, 200]
        assert result.epoch_info is not None
        assert result.epoch_info.epoch_params["epoch_length"] == 100
        assert result.proof_verified


def test_models_by_participant(signer) -> None:
    with FakeGonkaNetwork(n_participants=3, participant_models=[["a"], ["a", "b"], ["c"]]) as net:
        result = discover(net.source_url)
        addresses = [p.address for p in net.participants]
        assert {m: [p.address for p in ps] for m, ps in result.by_model.items()} == {
            "a": addresses[:2],
            "b": [addresses[1]],
            "c": [addresses[2]],
        }


def test_no_participants_left(net) -> None:
    for participant in net.participants:
        net.exclude(participant.address)
    with pytest.raises(GonkaNoParticipantsError) as info:
        discover(net.source_url)
    assert "3 excluded" in str(info.value)


def test_next_epoch_prefetch_window(net) -> None:
    newcomer = net.add_participant(weight=999)
    net.set_next_participants([*net.participants[:2], newcomer])
    with pytest.raises(GonkaDiscoveryError) as info:
        discover(net.source_url, epoch=11)
    assert info.value.status_code == 404
    net.advance_to_stage("poc_validation_end")
    info = fetch_epoch_info(net.source_url)
    assert info.next_participants_available
    assert info.effective_epoch_id == 10 == discover(net.source_url).epoch_id
    upcoming = discover(net.source_url, epoch=11)
    assert upcoming.epoch_id == 11
    assert upcoming.participant(newcomer.address) is not None
    assert len(upcoming.participants) == 3
    net.advance_to_next_epoch()
    current = discover(net.source_url)
    assert current.epoch_id == 11
    assert [p.address for p in current.participants] == [p.address for p in upcoming.participants]


def test_proof_verification_against_the_fake(net, monkeypatch: pytest.MonkeyPatch) -> None:
    assert discover(net.source_url, verify_proofs=True).proof_verified
    assert not discover(net.source_url).proof_verified
    monkeypatch.setenv("GONKA_VERIFY_PROOF", "1")
    assert discover(net.source_url).proof_verified
    for mode, step in [
        ("missing", "payload"),
        ("bad_app_hash", "app_hash"),
        ("tampered_list", "participants"),
    ]:
        net.set_proof_mode(mode)
        with pytest.raises(GonkaProofVerificationError) as info:
            discover(net.source_url)
        assert info.value.proof_type == step
        assert "GONKA_VERIFY_PROOF=0" in str(info.value)
    monkeypatch.setenv("GONKA_VERIFY_PROOF", "0")
    assert len(discover(net.source_url).participants) == 3  # trusted without a proof


def test_a_source_with_a_bad_proof_fails_over(tmp_path, net) -> None:
    payload = httpx.get(f"{net.source_url}/v1/epochs/current/participants").json()
    payload["active_participants"]["participants"][0]["weight"] = 10**9
    bad = tmp_path / "tampered.json"
    bad.write_text(json.dumps(payload))
    result = discover([f"file://{bad}", net.source_url], verify_proofs=True)
    assert result.source_url == net.source_url and result.proof_verified
    with pytest.raises(GonkaProofVerificationError):
        discover(f"file://{bad}", verify_proofs=True)


async def test_epoch_info_and_chain_status_helpers(net) -> None:
    info = await afetch_epoch_info([closed_port_url(), net.source_url], timeout=5)
    assert info.block_height == net.block_height
    assert info.switch_height == net.next_switch_height()
    with pytest.raises(GonkaDiscoveryError) as closed:
        fetch_chain_status(net.source_url)  # closed on v0.2.14 hosts
    assert closed.value.status_code == 404 and "Chain RPC Disabled" in str(closed.value)
    net.set_chain_routes(True)
    status = fetch_chain_status(net.source_url)
    assert status.latest_block_height == net.block_height
    assert abs(status.latest_block_time_ns - net.chain_time_ns()) < 5 * 10**9
    assert status.chain_id == "gonka-fake"
    with pytest.raises(GonkaConfigError):
        fetch_epoch_info("file:///tmp/x.json")


def test_parse_chain_status_rejects_garbage() -> None:
    with pytest.raises(GonkaPayloadError):
        parse_chain_status({"result": {}})


def test_participant_base_url() -> None:
    participant = GonkaParticipant("gonka1x", "https://h/v1/", 1, ())
    assert participant.base_url == "https://h/v1"
    assert GonkaParticipant("gonka1x", "https://h", 1, ()).base_url == "https://h/v1"
