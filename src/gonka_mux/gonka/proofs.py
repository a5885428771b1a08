"""Optional ICS23 verification of a ``/v1/epochs/{N}/participants`` payload (best effort).

The payload carries ``active_participants_bytes`` (hex of the protobuf ``ActiveParticipants``
stored on chain), two ICS23 proof ops and the CometBFT block whose header holds the app hash:

1. ``ics23:iavl``: an existence proof of ``active_participants_bytes`` under its store key; its
   root is the ``inference`` module store's root hash;
2. ``ics23:simple``: an existence proof of that store root under the key ``inference`` in the
   multistore; its root must equal ``block.header.app_hash``.

Then the participants in the JSON are checked against the proven protobuf bytes (address, URL,
weight, models), so a source cannot prove one list and serve another.

What this does *not* do: authenticate the block header itself (that needs a light client that
checks validator signatures). So the check catches corrupted or inconsistent payloads and a
source that edits the list, but not a source that fabricates a whole consistent chain. The
node's own code calls the proof system buggy and proofs can be absent (``proof_ops: null``), so
verification is opt-in (``GONKA_VERIFY_PROOF=1`` or ``verify_proofs=True``); when it is on, a
missing proof is an error rather than a silent pass.

A small protobuf reader is included so no protobuf runtime is needed.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, NoReturn

from .epochs import as_int, shown
from .errors import GonkaProofVerificationError
from .keys import ripemd160

__all__ = [
    "ExistenceProof",
    "InnerOp",
    "LeafOp",
    "ProvenParticipant",
    "decode_active_participants",
    "decode_existence_proof",
    "existence_root",
    "verify_participants_proof",
]


# --- protobuf wire format ---------------------------------------------------------------------


def _read_varint(data: bytes, pos: int) -> tuple[int, int]:
    result = shift = 0
    while True:
        if pos >= len(data):
            raise ValueError("truncated varint")
        byte = data[pos]
        pos += 1
        result |= (byte & 0x7F) << shift
        if not byte & 0x80:
            return result, pos
        shift += 7
        if shift >= 70:
            raise ValueError("varint too long")


def _fields(data: bytes) -> Iterator[tuple[int, int, int | bytes]]:
    """Yield ``(field_number, wire_type, value)``: ints for varint/fixed, bytes for
    length-delimited fields."""
    pos = 0
    while pos < len(data):
        tag, pos = _read_varint(data, pos)
        number, wire = tag >> 3, tag & 7
        if number == 0:
            raise ValueError("field number 0")
        if wire == 0:
            value, pos = _read_varint(data, pos)
            yield number, wire, value
        elif wire == 1:
            if pos + 8 > len(data):
                raise ValueError("truncated fixed64")
            yield number, wire, int.from_bytes(data[pos : pos + 8], "little")
            pos += 8
        elif wire == 2:
            length, pos = _read_varint(data, pos)
            if pos + length > len(data):
                raise ValueError("truncated length-delimited field")
            yield number, wire, data[pos : pos + length]
            pos += length
        elif wire == 5:
            if pos + 4 > len(data):
                raise ValueError("truncated fixed32")
            yield number, wire, int.from_bytes(data[pos : pos + 4], "little")
            pos += 4
        else:
            raise ValueError(f"unsupported wire type {wire}")


def _encode_varint(value: int) -> bytes:
    out = bytearray()
    while True:
        byte = value & 0x7F
        value >>= 7
        if value:
            out.append(byte | 0x80)
        else:
            out.append(byte)
            return bytes(out)


def _int64(value: int) -> int:
    return value - (1 << 64) if value >= 1 << 63 else value


# --- ICS23 ------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class LeafOp:
    hash: int = 0
    prehash_key: int = 0
    prehash_value: int = 0
    length: int = 0
    prefix: bytes = b""


@dataclass(frozen=True, slots=True)
class InnerOp:
    hash: int = 0
    prefix: bytes = b""
    suffix: bytes = b""


@dataclass(frozen=True, slots=True)
class ExistenceProof:
    key: bytes
    value: bytes
    leaf: LeafOp
    path: tuple[InnerOp, ...]


def _hash(op: int, data: bytes) -> bytes:
    if op == 0:  # NO_HASH
        return data
    if op == 1:  # SHA256
        return hashlib.sha256(data).digest()
    if op == 2:  # SHA512
        return hashlib.sha512(data).digest()
    if op == 4:  # RIPEMD160
        return ripemd160(data)
    if op == 5:  # BITCOIN = RIPEMD160(SHA256)
        return ripemd160(hashlib.sha256(data).digest())
    raise ValueError(f"unsupported ICS23 hash op {op}")


def _length_prefixed(op: int, data: bytes) -> bytes:
    size = len(data)
    if op == 0:  # NO_PREFIX
        return data
    if op == 1:  # VAR_PROTO
        return _encode_varint(size) + data
    if op == 3:  # FIXED32_BIG
        return size.to_bytes(4, "big") + data
    if op == 4:  # FIXED32_LITTLE
        return size.to_bytes(4, "little") + data
    if op == 5:  # FIXED64_BIG
        return size.to_bytes(8, "big") + data
    if op == 6:  # FIXED64_LITTLE
        return size.to_bytes(8, "little") + data
    if op in (7, 8):  # REQUIRE_32_BYTES / REQUIRE_64_BYTES
        if size != (32 if op == 7 else 64):
            raise ValueError(f"length op {op} needs {32 if op == 7 else 64} bytes, got {size}")
        return data
    raise ValueError(f"unsupported ICS23 length op {op}")


def decode_existence_proof(data: bytes) -> ExistenceProof:
    """Decode a ``CommitmentProof`` holding an ``exist`` proof (the only kind used here)."""
    exist: bytes | None = None
    for number, wire, value in _fields(data):
        if number == 1 and wire == 2:
            exist = value  # type: ignore[assignment]
        elif number in (2, 3, 4):
            raise ValueError("only existence proofs are supported (got non-exist/batch)")
    if exist is None:
        raise ValueError("commitment proof holds no existence proof")
    key = value_bytes = b""
    leaf = LeafOp()
    path: list[InnerOp] = []
    for number, wire, value in _fields(exist):
        if wire == 2 and isinstance(value, bytes):
            if number == 1:
                key = value
            elif number == 2:
                value_bytes = value
            elif number == 3:
                leaf = _decode_leaf(value)
            elif number == 4:
                path.append(_decode_inner(value))
    return ExistenceProof(key=key, value=value_bytes, leaf=leaf, path=tuple(path))


def _decode_leaf(data: bytes) -> LeafOp:
    values: dict[str, Any] = {}
    names = {1: "hash", 2: "prehash_key", 3: "prehash_value", 4: "length"}
    for number, wire, value in _fields(data):
        if number in names and wire == 0:
            values[names[number]] = value
        elif number == 5 and wire == 2:
            values["prefix"] = value
    return LeafOp(**values)


def _decode_inner(data: bytes) -> InnerOp:
    values: dict[str, Any] = {}
    for number, wire, value in _fields(data):
        if number == 1 and wire == 0:
            values["hash"] = value
        elif number == 2 and wire == 2:
            values["prefix"] = value
        elif number == 3 and wire == 2:
            values["suffix"] = value
    return InnerOp(**values)


def existence_root(proof: ExistenceProof) -> bytes:
    """The root hash an existence proof commits to."""
    leaf = proof.leaf
    if leaf.hash == 0:
        raise ValueError("leaf op without a hash function")
    key = _hash(leaf.prehash_key, proof.key)
    value = _hash(leaf.prehash_value, proof.value)
    node = _hash(
        leaf.hash,
        leaf.prefix + _length_prefixed(leaf.length, key) + _length_prefixed(leaf.length, value),
    )
    for step in proof.path:
        if step.hash == 0:
            raise ValueError("inner op without a hash function")
        node = _hash(step.hash, step.prefix + node + step.suffix)
    return node


# --- ActiveParticipants protobuf ----------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class ProvenParticipant:
    """The fields of an ``ActiveParticipant`` that the JSON is checked against."""

    address: str
    inference_url: str
    weight: int
    models: tuple[str, ...]


def _decode_participant(data: bytes) -> ProvenParticipant | None:
    address = url = ""
    weight = 0
    models: list[str] = []
    try:
        for number, wire, value in _fields(data):
            if wire == 2 and isinstance(value, bytes) and number in (1, 4, 5):
                text = value.decode("utf-8")
                if number == 1:
                    address = text
                elif number == 4:
                    url = text
                else:
                    models.append(text)
            elif number == 3 and wire == 0 and isinstance(value, int):
                weight = _int64(value)
    except (ValueError, UnicodeDecodeError):
        return None
    if not address or not url:
        return None
    return ProvenParticipant(address, url, weight, tuple(models))


def decode_active_participants(data: bytes) -> list[ProvenParticipant]:
    """Participants inside an ``ActiveParticipants`` message.

    ``ActiveParticipant`` is ``index=1, validator_key=2, weight=3, inference_url=4, models=5``;
    the participants are found as the embedded messages of that shape, which does not depend
    on the wrapper's own field numbers.
    """
    participants = []
    for _number, wire, value in _fields(data):
        if wire == 2 and isinstance(value, bytes):
            participant = _decode_participant(value)
            if participant is not None:
                participants.append(participant)
    return participants


# --- payload verification -----------------------------------------------------------------------


def _fail(message: str, proof_type: str, expected: bytes = b"", computed: bytes = b"") -> NoReturn:
    raise GonkaProofVerificationError(
        message,
        expected_hash=expected.hex(),
        computed_hash=computed.hex(),
        proof_type=proof_type,
    )


def _b64(value: Any, what: str) -> bytes:
    if not isinstance(value, str):
        _fail(f"{what} is missing or not a string", "payload")
    try:
        return base64.b64decode(value, validate=True)
    except (binascii.Error, ValueError):
        _fail(f"{what} is not valid base64", "payload")


def _hash_field(value: Any) -> bytes:
    """CometBFT renders hashes as upper-case hex; SDK-style blocks (v0.2.15) as base64."""
    if not isinstance(value, str) or not value:
        _fail("the block has no header.app_hash", "app_hash")
    text = str(value)
    if len(text) % 2 == 0 and all(c in "0123456789abcdefABCDEF" for c in text):
        return bytes.fromhex(text)
    return _b64(text, "block.header.app_hash")


def _app_hash(payload: Mapping[str, Any]) -> bytes:
    block = payload.get("block")
    if isinstance(block, list):  # old docs render the block as a one-element array
        block = block[0] if block else None
    if isinstance(block, Mapping) and isinstance(block.get("block"), Mapping):
        block = block["block"]  # SDK-style {"block_id":…, "block":{…}}
    header = block.get("header") if isinstance(block, Mapping) else None
    if not isinstance(header, Mapping):
        _fail("the payload has no block header to check the proof against", "app_hash")
    return _hash_field(header.get("app_hash"))


def _participants_bytes(payload: Mapping[str, Any]) -> bytes:
    raw = payload.get("active_participants_bytes")
    if not isinstance(raw, str) or not raw:
        _fail("active_participants_bytes is missing", "payload")
    try:
        return bytes.fromhex(str(raw))
    except ValueError:
        return _b64(raw, "active_participants_bytes")


def _proof_ops(payload: Mapping[str, Any]) -> dict[str, Mapping[str, Any]]:
    proof_ops = payload.get("proof_ops")
    ops = proof_ops.get("ops") if isinstance(proof_ops, Mapping) else None
    if not isinstance(ops, Sequence) or not ops:
        _fail("the source sent no proof (proof_ops is null or empty)", "payload")
    by_type: dict[str, Mapping[str, Any]] = {}
    for op in ops:  # type: ignore[union-attr]
        if isinstance(op, Mapping) and isinstance(op.get("type"), str):
            if op["type"] in by_type:
                _fail(f"duplicate proof op {op['type']}", str(op["type"]))
            by_type[op["type"]] = op
    for needed in ("ics23:iavl", "ics23:simple"):
        if needed not in by_type:
            _fail(f"proof op {needed} is missing (got {sorted(by_type)})", needed)
    return by_type


def _verify_op(op: Mapping[str, Any], proof_type: str, value: bytes) -> bytes:
    key = _b64(op.get("key"), f"{proof_type} key")
    data = _b64(op.get("data"), f"{proof_type} data")
    try:
        proof = decode_existence_proof(data)
    except ValueError as exc:
        _fail(f"cannot decode the proof ({exc})", proof_type)
    if proof.key != key:
        _fail("the proof is for another key than the op's", proof_type)
    if proof.value != value:
        what = "participants bytes" if proof_type == "ics23:iavl" else "store root"
        _fail(
            f"the proven value is not the {what}",
            proof_type,
            hashlib.sha256(value).digest(),
            hashlib.sha256(proof.value).digest(),
        )
    try:
        return existence_root(proof)
    except ValueError as exc:
        _fail(str(exc), proof_type)


def verify_participants_proof(payload: Mapping[str, Any]) -> list[ProvenParticipant]:
    """Verify the payload's proof chain and that its JSON participants match the proven bytes.

    Returns the proven participants; raises :class:`GonkaProofVerificationError` on any failure.
    """
    if not isinstance(payload, Mapping):
        _fail("the participants payload is not a JSON object", "payload")
    value = _participants_bytes(payload)
    ops = _proof_ops(payload)
    store_root = _verify_op(ops["ics23:iavl"], "ics23:iavl", value)
    computed = _verify_op(ops["ics23:simple"], "ics23:simple", store_root)
    expected = _app_hash(payload)
    if computed != expected:
        _fail("the proof does not lead to the block's app hash", "app_hash", expected, computed)
    try:
        proven = decode_active_participants(value)
    except ValueError as exc:
        _fail(f"cannot decode the proven participants ({exc})", "participants")
    _check_json_matches(payload, proven)
    return proven


def _check_json_matches(payload: Mapping[str, Any], proven: list[ProvenParticipant]) -> None:
    active = payload.get("active_participants")
    listed = active.get("participants") if isinstance(active, Mapping) else None
    listed = listed if isinstance(listed, list) else []
    by_address = {p.address: p for p in proven}
    if len(listed) != len(proven):
        _fail(
            f"the JSON lists {len(listed)} participants but the proof holds {len(proven)}",
            "participants",
        )
    for entry in listed:
        address = entry.get("index") if isinstance(entry, Mapping) else None
        match = by_address.get(address) if isinstance(address, str) else None
        if match is None:
            _fail(f"participant {shown(address)} is not in the proven list", "participants")
        models = entry.get("models")
        models = [] if models is None else models
        if (
            entry.get("inference_url") != match.inference_url
            or as_int(entry.get("weight"), what="weight") != match.weight
            or not isinstance(models, list)
            or tuple(models) != match.models
        ):
            _fail(f"participant {address} differs from the proven entry", "participants")
