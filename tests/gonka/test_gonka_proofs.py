"""ICS23 verification of participant lists (valid proofs come from the fake network)."""

from __future__ import annotations

import base64
import copy
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from _gonka_support import load_fixture

from gonka_mux.gonka.errors import GonkaProofVerificationError
from gonka_mux.gonka.proofs import (
    decode_active_participants,
    decode_existence_proof,
    existence_root,
    verify_participants_proof,
)
from gonka_mux.testing.fake_gonka import FakeGonkaNetwork


@pytest.fixture(scope="module")
def proven() -> Iterator[dict[str, Any]]:
    """A genuine payload (module-scoped: each test deep-copies it before mutating)."""
    with FakeGonkaNetwork(n_participants=3, participant_models=[["a"], ["a", "b"], []]) as net:
        yield httpx.get(f"{net.source_url}/v1/epochs/current/participants").json()


@pytest.fixture
def payload(proven: dict[str, Any]) -> dict[str, Any]:
    return copy.deepcopy(proven)


def fails_at(payload: dict[str, Any], step: str) -> GonkaProofVerificationError:
    with pytest.raises(GonkaProofVerificationError) as info:
        verify_participants_proof(payload)
    assert info.value.proof_type == step, str(info.value)
    return info.value


def test_a_genuine_payload_verifies(payload: dict[str, Any]) -> None:
    proven = verify_participants_proof(payload)
    listed = payload["active_participants"]["participants"]
    assert [p.address for p in proven] == [p["index"] for p in listed]
    assert [p.models for p in proven] == [("a",), ("a", "b"), ()]
    assert [p.weight for p in proven] == [100, 200, 300]


def test_ops_in_either_order_and_sdk_style_block(payload: dict[str, Any]) -> None:
    payload["proof_ops"]["ops"].reverse()
    header = payload["block"]["header"]
    header["app_hash"] = base64.b64encode(bytes.fromhex(header["app_hash"])).decode()
    payload["block"] = [payload["block"]]  # old docs: an array
    assert verify_participants_proof(payload)


def test_changed_participant_bytes_break_the_iavl_proof(payload: dict[str, Any]) -> None:
    raw = bytearray(bytes.fromhex(payload["active_participants_bytes"]))
    raw[10] ^= 1
    payload["active_participants_bytes"] = raw.hex()
    error = fails_at(payload, "ics23:iavl")
    assert error.expected_hash and error.computed_hash
    assert error.expected_hash != error.computed_hash


def test_a_different_app_hash(payload: dict[str, Any]) -> None:
    payload["block"]["header"]["app_hash"] = "00" * 32
    error = fails_at(payload, "app_hash")
    assert error.expected_hash == "00" * 32


@pytest.mark.parametrize(
    ("field", "value"),
    [("inference_url", "http://127.0.0.1:9/evil"), ("weight", 10**9), ("models", ["z"])],
)
def test_json_that_differs_from_the_proven_list(payload, field: str, value: Any) -> None:
    payload["active_participants"]["participants"][1][field] = value
    fails_at(payload, "participants")


def test_an_extra_or_missing_participant(payload: dict[str, Any]) -> None:
    listed = payload["active_participants"]["participants"]
    listed.append({**listed[0], "index": "gonka1smuggled"})
    fails_at(payload, "participants")
    listed.pop()
    listed.pop(0)
    fails_at(payload, "participants")


def test_missing_pieces(payload: dict[str, Any]) -> None:
    for mutate, step in [
        (lambda p: p.update(proof_ops=None), "payload"),
        (lambda p: p["proof_ops"]["ops"].pop(), "ics23:simple"),
        (lambda p: p.pop("active_participants_bytes"), "payload"),
        (lambda p: p.pop("block"), "app_hash"),
        (lambda p: p["proof_ops"]["ops"][0].update(data="%%%"), "payload"),
        (lambda p: p["proof_ops"]["ops"][0].update(key="AAAA"), "ics23:iavl"),
    ]:
        broken = copy.deepcopy(payload)
        mutate(broken)
        fails_at(broken, step)


def test_the_fixture_proof_is_rejected_not_crashed() -> None:
    # The fixture's proof data is truncated illustrative text: verification must say so.
    with pytest.raises(GonkaProofVerificationError):
        verify_participants_proof(load_fixture("v1_epochs_current_participants.json"))


def test_existence_proof_decoding_roundtrip(payload: dict[str, Any]) -> None:
    op = payload["proof_ops"]["ops"][0]
    proof = decode_existence_proof(base64.b64decode(op["data"]))
    assert proof.key == base64.b64decode(op["key"])
    assert proof.value == bytes.fromhex(payload["active_participants_bytes"])
    assert proof.leaf.hash == 1 and proof.leaf.prehash_value == 1 and proof.leaf.length == 1
    assert len(proof.path) == 2
    assert len(existence_root(proof)) == 32


def test_protobuf_reader_rejects_truncation_and_other_proof_kinds() -> None:
    with pytest.raises(ValueError):
        decode_existence_proof(b"\x0a\x05ab")  # length 5, 2 bytes present
    with pytest.raises(ValueError, match="only existence proofs"):
        decode_existence_proof(b"\x12\x00")  # field 2 = non-existence proof
    with pytest.raises(ValueError):
        decode_existence_proof(b"\xff" * 11)  # endless varint


def test_decode_participants_ignores_foreign_fields() -> None:
    def field(number: int, data: bytes) -> bytes:
        return bytes([number << 3 | 2, len(data)]) + data

    participant = field(1, b"gonka1abc") + field(4, b"http://h") + bytes([3 << 3, 7])
    data = field(1, participant) + field(9, b"not a participant") + bytes([2 << 3, 5])
    decoded = decode_active_participants(data)
    assert [(p.address, p.inference_url, p.weight) for p in decoded] == [
        ("gonka1abc", "http://h", 7)
    ]
