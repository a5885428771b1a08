"""A fake Gonka network on loopback: participants that check signed requests like the chain.

Use it to test code that discovers Gonka participants and sends them signed requests, with no
network, chain or GPU::

    from gonka_mux.gonka import RequestSigner, discover, make_signed_client
    from gonka_mux.testing.fake_gonka import FakeGonkaNetwork

    signer = RequestSigner("11" * 32)
    with FakeGonkaNetwork(n_participants=3, models=["Qwen/Fake-7B"]) as net:
        net.add_account(signer, balance=10**12)           # the requester, known to the "chain"
        found = discover(net.source_url)                  # participants, allowlist, epoch
        client = make_signed_client(found.participants[0], None, signer, async_=False)
        client.chat.completions.create(model="Qwen/Fake-7B", messages=[...], max_tokens=16)
        net.advance_to_next_epoch()                       # block height jumps to the switch
        net.set_chain_time_offset(-45)                    # chain lags: "in the future" (400)
        net.retire_classic_api()                          # 410 deprecated, as mainnet today

What runs: one *seed node* (``net.source_url``; discovery routes only, never faulted) and one
HTTP server per participant (``net.participants[i].url``), all on ONE background thread with
its own event loop, built on :mod:`gonka_mux.testing._server`.

**Hosts as they run today** (``host_profile="v0.2.14"``, the default; checked against the node's
``decentralized-api`` ``internal/server/public/server.go`` and ``proxy/entrypoint.sh``):

* ``/chain-rpc/`` and ``/chain-api/`` are closed, as nginx closes them on every host since
  v0.2.8 unless the operator opens them: 404 ``Chain RPC Disabled`` / ``Chain API Disabled``
  (:meth:`FakeGonkaNetwork.set_chain_routes` or ``chain_routes=True`` opens them);
* every answer carries the host's clock in an HTTP ``Date`` header: the test's clock plus the
  chain-time offset (hosts keep time with the validators; a frozen, stalled chain does not
  stop it);
* a retired classic path (:meth:`FakeGonkaNetwork.retire_classic_api`; every mainnet host since
  v0.2.14) answers POST ``/v1/chat/completions``, POST ``/v1/completions`` and GET
  ``/v1/chat/completions`` with 410
  ``{"error": "deprecated", "message": "classic inference is deprecated; use devshard"}`` and
  the ``Deprecation: true`` / ``Link: </devshard/{version}>; rel="successor-version"`` headers;
  ``/v1/devshard/*`` answers 410 likewise;
* the prompt size counts UTF-8 bytes plus one ``\n`` per message, and the escrow takes
  ``max_tokens`` only (5000 when absent; ``max_completion_tokens`` is not read);
* only ``/api/v1/...`` is mapped to ``/v1/...`` (nginx), not ``/api/chain-rpc/``.

The classic path itself is still *served* by default (mainnet retired it, private networks and
forks did not), so that the signed path can be tested. ``host_profile="legacy"`` keeps the old
fake: chain routes open, character counting, ``max_completion_tokens`` escrowed, a plain 410
without the deprecation marker, ``/api`` stripped everywhere.

Every node serves the discovery routes of a real ``decentralized-api`` host; participants also
serve inference:

* ``GET /v1/epochs/latest``; ``GET /v1/epochs/{current|N}/participants`` (epoch ``N+1`` is
  readable from its ``poc_validation_end``, 404 before; with a valid ICS23 proof and block);
* ``GET /v1/identity``, ``/v1/models``, ``/v1/status``, ``/v1/pricing``, ``/v2/accounts/{a}``;
* ``GET /chain-api/productscience/inference/inference/params`` (TA allowlist, timestamp window)
  and ``GET /chain-rpc/status`` (``latest_block_time`` = the controllable chain time), where
  open;
* ``GET /v1/chat/completions`` (400 without ``?id=``; 410 when retired);
* ``POST /v1/chat/completions`` and ``/v1/completions`` (participants only).

An inference request goes through the Transfer Agent checks in the node's order, each answering
``{"error": "<message>"}`` with the documented status (``fixtures/gonka/...errors.json``):

1. classic API retired -> 410 (above);
2. body not JSON -> 400 ``invalid chat completion request: ...``; no messages -> 400
   ``messages is required``;
3. TA allowlist non-empty and this participant not on it -> 403 ``Transfer Agent not allowed``;
   a host that left the effective epoch, with :meth:`FakeGonkaNetwork.set_departed_refusal`
   -> 403 in its own words;
4. no ``Authorization`` -> 401 ``Authorization is required``; ``X-Inference-Id`` and ``X-Seed``
   both sent (the node's executor path) -> 401 ``Unable to validate request against
   TransferSignature:invalid signature``; no model -> 400 ``No model specified``; the developer
   gate (:meth:`FakeGonkaNetwork.set_developer_gate`) -> 403 ``inference requests are restricted
   until block height N``;
5. requester account: unknown address -> **500** ``rpc error: code = NotFound desc = account not
   found``; known but without a public key -> 500 ``... account has no public key`` (what the
   node returns for its failed gRPC account lookup);
6. signature (verified with the ``cryptography`` package, independently of gonka_mux's signer;
   64-byte ``r||s``, high-S rejected, message ``hex(sha256(body)) + ts + TA address``) -> 401
   ``Unable to validate request against PubKey:invalid signature``;
7. model not served in the effective epoch -> 404 ``model not found``;
8. balance < (prompt size + max_tokens, default 5000) x ``price_per_token`` -> 402
   ``Insufficient balance`` (nothing is charged);
9. ``X-Timestamp`` vs chain time: older than ``timestamp_expiration`` (60 s) -> 400
   ``signature is too old``; newer than ``timestamp_advance`` (30 s) -> 400
   ``signature is in the future``;
10. the same ``Authorization`` seen before at this TA -> 400 ``AuthKey has already been used for
    a transfer request`` (entries pruned after 30 blocks);
11. TA capacity (``participant.set_capacity_rate``) -> 429 ``Transfer Agent capacity reached...``.

Then the participant answers as an executor would, through its own
:class:`~gonka_mux.testing.fake_backend.FakeBackend` (reply scripts and faults: latency, hangs,
drops, injected statuses, ``down``), with ``id`` replaced by the inference id (the request's
``Authorization``) in the JSON and in every SSE chunk, and ``stream_options.include_usage`` forced
on as the node does. The TA serves the request itself (no executor hop).

Chain state (thread-safe, changed from the test thread): ``block_height`` (moved only by
:meth:`~FakeGonkaNetwork.advance_blocks`, :meth:`~FakeGonkaNetwork.set_block_height`,
:meth:`~FakeGonkaNetwork.advance_to_next_epoch`, :meth:`~FakeGonkaNetwork.advance_to_stage`),
chain time (wall clock + :meth:`~FakeGonkaNetwork.set_chain_time_offset`, or frozen with
:meth:`~FakeGonkaNetwork.freeze_chain_time`), epoch rosters
(:meth:`~FakeGonkaNetwork.set_participants` for the effective epoch,
:meth:`~FakeGonkaNetwork.set_next_participants` for the next; rosters carry forward),
exclusions, the TA allowlist, requester accounts and balances, confirmation PoC, proof mode
(``"valid"``, ``"missing"``, ``"bad_app_hash"``, ``"tampered_list"``) and wire shape
(``"current"`` numbers, or ``"v0_2_15"`` with ints as strings).

Epoch ``N`` starts its PoC at block ``N * epoch_length``; stage heights follow the chain's
arithmetic with small, fake-sized durations (see :class:`EpochSchedule`).

``net.requests`` records every request each node received (:class:`GonkaRequestRecord`: node,
path, headers, body, the status answered and the error message). A broker / devshard gateway
(:class:`~gonka_mux.testing.fake_broker.FakeBroker`: Bearer key, per-model caps, strict fields,
308 moves, 409/429/503/504, ``/v1/status``, accounting) is started by
:meth:`~FakeGonkaNetwork.start_broker`.

Signatures are verified with the ``cryptography`` package (in the ``test`` extra), independently
of gonka_mux's signers. Without it (a plain ``pip install gonka-mux`` running ``gonka-mux demo``)
the fake falls back to python-ecdsa, which is then only independent of the coincurve signer.
"""

from __future__ import annotations

import asyncio
import base64
import email.utils
import hashlib
import importlib.util
import json
import random
import re
import threading
import time
from collections.abc import AsyncIterator, Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from gonka_mux.gonka.keys import address_from_public_key
from gonka_mux.testing._server import (
    Abort,
    HTTPException,
    HTTPServer,
    Request,
    Response,
    StreamingResponse,
)
from gonka_mux.testing.fake_backend import FakeBackend, Faults, StatusError, _LoopThread
from gonka_mux.testing.fake_broker import FakeBroker

if TYPE_CHECKING:
    from gonka_mux.testing.fake_broker import FakeBroker

__all__ = [
    "EpochSchedule",
    "FakeAccount",
    "FakeGonkaNetwork",
    "FakeParticipant",
    "GonkaRequestRecord",
]

SECP256K1_ORDER = 0xFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFEBAAEDCE6AF48A03BBFD25E8CD0364141
DEFAULT_MAX_TOKENS = 5000  # what the node reserves when a request has no max_tokens
# What a host answers, as of v0.2.14 (decentralized-api internal/server/public/server.go), for
# the retired classic paths (every host, since block 5195700, July 23 2026).
HOST_PROFILES = ("v0.2.14", "legacy")
CLASSIC_DEPRECATED_BODY = {
    "error": "deprecated",
    "message": "classic inference is deprecated; use devshard",
}
DEVSHARD_V1_DEPRECATED_BODY = {
    "error": "deprecated",
    "message": "/v1/devshard is deprecated; use /devshard/{version}",
}
DEPRECATION_HEADERS = (
    ("Deprecation", "true"),
    ("Link", '</devshard/{version}>; rel="successor-version"'),
)
# The old fake's 410 wording (host_profile="legacy").
LEGACY_RETIRED_MESSAGE = (
    "classic inference API is retired on this host: use a broker or a devshard gateway "
    "(/devshard/v3)"
)
# nginx on a host since v0.2.8 (proxy/entrypoint.sh): chain routes answer this unless the
# operator sets DISABLE_CHAIN_RPC / DISABLE_CHAIN_API to false.
CHAIN_ROUTE_DISABLED = {"/chain-rpc/": "Chain RPC Disabled", "/chain-api/": "Chain API Disabled"}
PROOF_MODES = ("valid", "missing", "bad_app_hash", "tampered_list")
WIRE_SHAPES = ("current", "v0_2_15")
CHAT_PATHS = ("/v1/chat/completions", "/v1/completions")
# The completion id of a chunk (tool-call ids, "call_...", must stay as they are).
_ID_FIELD = re.compile(rb'"id":"(?:chatcmpl|cmpl)-[^"]*"')
_REPLAY_PRUNE_BLOCKS = 30  # max(4, timestamp_expiration * 2 / 4) with mainnet params


# =========================================================================== value objects


@dataclass(frozen=True)
class EpochSchedule:
    """Stage durations in blocks (fake-sized; the chain's are 17280/35/5/240/120)."""

    epoch_length: int = 100
    poc_stage_duration: int = 10
    poc_validation_delay: int = 2
    poc_validation_duration: int = 20
    set_new_validators_delay: int = 10
    inference_validation_cutoff: int = 2

    def stages(self, epoch: int) -> dict[str, Any]:
        """Stage heights of ``epoch`` (the chain's ``EpochStages`` arithmetic)."""
        start = epoch * self.epoch_length
        generation_end = start + self.poc_stage_duration
        validation_start = generation_end + self.poc_validation_delay
        validation_end = validation_start + self.poc_validation_duration
        set_new_validators = validation_end + self.set_new_validators_delay
        next_start = start + self.epoch_length
        return {
            "epoch_index": epoch,
            "poc_start": start,
            "poc_generation_wind_down": start + (self.poc_stage_duration * 4) // 5,
            "poc_generation_end": generation_end,
            "poc_validation_start": validation_start,
            "poc_validation_wind_down": validation_start + (self.poc_validation_duration * 4) // 5,
            "poc_validation_end": validation_end,
            "set_new_validators": set_new_validators,
            "claim_money": set_new_validators + 1,
            "inference_validation_cutoff": next_start - self.inference_validation_cutoff,
            "next_poc_start": next_start,
            "poc_exchange_window": {"start": start + 1, "end": generation_end},
            "poc_validation_exchange_window": {
                "start": validation_start + 1,
                "end": validation_end,
            },
        }

    def latest_epoch(self, height: int) -> int:
        return height // self.epoch_length

    def phase(self, height: int) -> str:
        stages = self.stages(self.latest_epoch(height))
        if height < stages["poc_generation_wind_down"]:
            return "PoCGenerate"
        if height < stages["poc_validation_start"]:
            return "PoCGenerateWindDown"
        if height < stages["poc_validation_wind_down"]:
            return "PoCValidate"
        if height < stages["poc_validation_end"]:
            return "PoCValidateWindDown"
        return "Inference"

    def effective_epoch(self, height: int) -> int:
        latest = self.latest_epoch(height)
        if height >= self.stages(latest)["set_new_validators"]:
            return latest
        return latest - 1


@dataclass
class FakeAccount:
    """A requester account on the fake chain (``public_key`` None: never signed a tx)."""

    address: str
    public_key: bytes | None
    balance: int


@dataclass(frozen=True, repr=False)
class GonkaRequestRecord:
    """One request a fake node received and how it answered (``status`` None: no answer)."""

    node: str  # participant address, or "seed"
    method: str
    path: str
    headers: Mapping[str, str]
    body: bytes
    time: float
    status: int | None
    error: str | None

    @property
    def json(self) -> Any:
        try:
            return json.loads(self.body) if self.body else None
        except ValueError:
            return None

    @property
    def authorization(self) -> str | None:
        return self.headers.get("authorization")

    @property
    def timestamp_ns(self) -> int | None:
        value = self.headers.get("x-timestamp")
        return int(value) if value and value.lstrip("-").isdigit() else None

    @property
    def requester(self) -> str | None:
        return self.headers.get("x-requester-address")

    @property
    def is_inference(self) -> bool:
        return self.method == "POST" and self.path in CHAT_PATHS

    def __repr__(self) -> str:
        return (
            f"GonkaRequestRecord({self.method} {self.path} node={self.node!r} "
            f"status={self.status} error={self.error!r})"
        )


# =========================================================================== helpers


def _gonka_error(status: int, message: str) -> Response:
    return Response.json({"error": message}, status)


def _signed_message(body: bytes, timestamp: int, transfer_address: str) -> bytes:
    # inference-chain getDevBytes: the timestamp is appended only when > 0.
    text = hashlib.sha256(body).hexdigest()
    if timestamp > 0:
        text += str(timestamp)
    return (text + transfer_address).encode()


def _have_cryptography() -> bool:
    return importlib.util.find_spec("cryptography") is not None


def verify_signature(public_key: bytes, authorization: str, message: bytes) -> bool:
    """Cosmos secp256k1 ``VerifySignature``: 64-byte r||s, low-S only, ECDSA over sha256(msg).

    Uses the ``cryptography`` package, not gonka_mux's signer, so the two check each other
    (python-ecdsa when cryptography is not installed).
    """
    try:
        raw = base64.b64decode(authorization, validate=True)
    except ValueError:
        return False
    if len(raw) != 64:
        return False
    r, s = int.from_bytes(raw[:32], "big"), int.from_bytes(raw[32:], "big")
    if not (0 < r < SECP256K1_ORDER and 0 < s <= SECP256K1_ORDER // 2):
        return False
    if not _have_cryptography():
        # optional extra: cryptography ('test'); python-ecdsa (~45 ms to import) stands in
        import ecdsa
        from ecdsa.util import sigdecode_string

        try:
            vk = ecdsa.VerifyingKey.from_string(public_key, curve=ecdsa.SECP256k1)
            return bool(
                vk.verify(raw, message, hashfunc=hashlib.sha256, sigdecode=sigdecode_string)
            )
        except (ecdsa.BadSignatureError, ValueError, ecdsa.MalformedPointError):
            return False
    # optional extra: cryptography ('test')
    from cryptography.exceptions import InvalidSignature
    from cryptography.hazmat.primitives import hashes
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.hazmat.primitives.asymmetric.utils import encode_dss_signature

    try:
        key = ec.EllipticCurvePublicKey.from_encoded_point(ec.SECP256K1(), public_key)
        key.verify(encode_dss_signature(r, s), message, ec.ECDSA(hashes.SHA256()))
    except (InvalidSignature, ValueError):
        return False
    return True


def _fake_key(label: str) -> tuple[Callable[[bytes], bytes], bytes, str]:
    """A deterministic secp256k1 key: a DER signer over sha256, the compressed public key and
    the address."""
    secret = int.from_bytes(hashlib.sha256(label.encode()).digest(), "big") % SECP256K1_ORDER
    secret = secret or 1
    if not _have_cryptography():
        # optional extra: cryptography ('test'); python-ecdsa (~45 ms to import) stands in
        import ecdsa
        from ecdsa.util import sigencode_der

        sk = ecdsa.SigningKey.from_secret_exponent(secret, curve=ecdsa.SECP256k1)
        public = sk.get_verifying_key().to_string("compressed")

        def sign_ecdsa(data: bytes) -> bytes:
            return sk.sign_deterministic(data, hashfunc=hashlib.sha256, sigencode=sigencode_der)

        return sign_ecdsa, public, address_from_public_key(public)
    # optional extra: cryptography ('test')
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec

    key = ec.derive_private_key(secret, ec.SECP256K1())
    public = key.public_key().public_bytes(
        serialization.Encoding.X962, serialization.PublicFormat.CompressedPoint
    )

    def sign(data: bytes) -> bytes:
        return key.sign(data, ec.ECDSA(hashes.SHA256()))

    return sign, public, address_from_public_key(public)


def _rfc3339(ns: int) -> str:
    seconds, fraction = divmod(ns, 1_000_000_000)
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(seconds)) + f".{fraction:09d}Z"


def _prompt_size(body: Mapping[str, Any], *, utf8: bool = True) -> int:
    """The node's prompt-size estimate: the UTF-8 bytes of the message contents plus one
    ``\n`` per message (``utf8=False``: the legacy fake's character count, no separators)."""

    def size(text: str) -> int:
        return len(text.encode("utf-8", "surrogatepass")) if utf8 else len(text)

    total = 0
    for message in body.get("messages") or ():
        content = message.get("content") if isinstance(message, Mapping) else None
        if isinstance(content, str):
            total += size(content)
        elif isinstance(content, list):
            total += sum(
                size(str(part.get("text") or "")) for part in content if isinstance(part, Mapping)
            )
        if utf8:
            total += 1  # the "\n" joining the messages
    prompt = body.get("prompt")
    if isinstance(prompt, str):
        total += size(prompt)
    return total


def _escrow_tokens(body: Mapping[str, Any], *, legacy: bool = False) -> int:
    """``max_tokens`` the node escrows for: the request's ``max_tokens`` only (5000 when
    absent); the legacy fake also took ``max_completion_tokens``."""
    value = body.get("max_tokens")
    if legacy and not value:
        value = body.get("max_completion_tokens")
    if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
        return DEFAULT_MAX_TOKENS
    return value


def _http_date(ns: int) -> str:
    return email.utils.formatdate(ns / 1e9, usegmt=True)


def _stringify_ints(value: Any) -> Any:
    """The v0.2.15 transitional shape renders integers as strings."""
    if isinstance(value, bool):
        return value
    if isinstance(value, int):
        return str(value)
    if isinstance(value, dict):
        return {k: _stringify_ints(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_stringify_ints(v) for v in value]
    return value


# --- protobuf / ICS23 encoding for the proofs the fake serves --------------------------------


def _varint(value: int) -> bytes:
    value &= (1 << 64) - 1
    out = bytearray()
    while True:
        byte = value & 0x7F
        value >>= 7
        if value:
            out.append(byte | 0x80)
        else:
            out.append(byte)
            return bytes(out)


def _pb_bytes(number: int, data: bytes) -> bytes:
    return _varint(number << 3 | 2) + _varint(len(data)) + data


def _pb_int(number: int, value: int) -> bytes:
    return _varint(number << 3) + _varint(value) if value else b""


def _encode_participant(entry: Mapping[str, Any]) -> bytes:
    out = _pb_bytes(1, entry["index"].encode())
    out += _pb_bytes(2, entry["validator_key"].encode())
    out += _pb_int(3, int(entry["weight"]))
    out += _pb_bytes(4, entry["inference_url"].encode())
    for model in entry["models"]:
        out += _pb_bytes(5, model.encode())
    return out


def _encode_active_participants(active: Mapping[str, Any]) -> bytes:
    out = b"".join(_pb_bytes(1, _encode_participant(p)) for p in active["participants"])
    for number, name in enumerate(
        (
            "epoch_group_id",
            "poc_start_block_height",
            "effective_block_height",
            "created_at_block_height",
            "epoch_id",
        ),
        start=2,
    ):
        out += _pb_int(number, int(active[name]))
    return out


def _sha(data: bytes) -> bytes:
    return hashlib.sha256(data).digest()


def _existence_proof(
    key: bytes, value: bytes, leaf_prefix: bytes, inner_prefix: bytes, seed: str
) -> tuple[bytes, bytes]:
    """(CommitmentProof bytes, root): a leaf op (sha256, prehash value, varint lengths) and two
    inner ops with deterministic sibling hashes, as IAVL/the multistore use."""
    leaf = _pb_int(1, 1) + _pb_int(3, 1) + _pb_int(4, 1) + _pb_bytes(5, leaf_prefix)
    node = _sha(leaf_prefix + _varint(len(key)) + key + _varint(32) + _sha(value))
    path = b""
    for level in range(2):
        sibling = _sha(f"{seed}/{level}".encode())
        if level % 2 == 0:
            prefix, suffix = inner_prefix, b"\x20" + sibling
        else:
            prefix, suffix = inner_prefix + sibling, b""
        node = _sha(prefix + node + suffix)
        path += _pb_bytes(4, _pb_int(1, 1) + _pb_bytes(2, prefix) + _pb_bytes(3, suffix))
    exist = _pb_bytes(1, key) + _pb_bytes(2, value) + _pb_bytes(3, leaf) + path
    return _pb_bytes(1, exist), node


# =========================================================================== participants


class FakeParticipant:
    """One fake Gonka host: an HTTP server acting as Transfer Agent and executor.

    ``backend`` (a :class:`FakeBackend`, not separately started) produces the completions; use
    ``backend.set_replies(...)`` to script them and :meth:`set_faults` to make it misbehave.
    """

    def __init__(
        self,
        network: FakeGonkaNetwork,
        index: int,
        *,
        models: Sequence[str],
        weight: int,
        label: str,
    ) -> None:
        self.network = network
        self.index = index
        self.models = tuple(models)
        self.weight = weight
        self._key, self.public_key, self.address = _fake_key(label)
        self.validator_key = base64.b64encode(_sha(label.encode() + b"/validator")).decode()
        self.backend = FakeBackend(models=self.models or ("fake-model",), name=f"p{index}")
        self.capacity_rate = 0.0
        self._rng = random.Random(f"{label}/rng")
        self._used_auth: dict[str, int] = {}  # Authorization -> block height first seen
        self._server: HTTPServer | None = None

    @property
    def url(self) -> str:
        """Base URL (the participant's ``inference_url``; no ``/v1``)."""
        if self._server is None:
            raise RuntimeError("the network is not started")
        return f"http://127.0.0.1:{self._server.port}"

    @property
    def base_url(self) -> str:
        return f"{self.url}/v1"

    @property
    def down(self) -> bool:
        return self.backend.faults.down

    def set_faults(
        self, faults: Faults | Mapping[str, Any] | None = None, **changes: Any
    ) -> Faults:
        """Faults of this host (:class:`Faults` fields: ``latency``, ``rate_500``, ``down``...).

        ``down=True`` drops every request, discovery included, and closes open connections.
        """
        new = self.backend.set_faults(faults, **changes)
        if new.down and self._server is not None:
            server = self._server
            self.network._call_soon(server.close_connections)
        return new

    def set_error_rate(
        self, rate: float, status: int = 503, message: str = "no inference nodes available"
    ) -> None:
        """Answer ``rate`` of inference requests with ``status`` and a Gonka error body."""
        errors = [StatusError(status, rate, body={"error": message})] if rate else None
        self.set_faults(status_errors=errors)

    def set_capacity_rate(self, rate: float) -> None:
        """Answer ``rate`` of (valid) inference requests 429 "Transfer Agent capacity reached"."""
        if not 0.0 <= rate <= 1.0:
            raise ValueError("rate must be within 0..1")
        self.capacity_rate = rate

    @property
    def requests(self) -> list[GonkaRequestRecord]:
        return [r for r in self.network.requests if r.node == self.address]

    def entry(self, epoch: int) -> dict[str, Any]:
        """This participant as it appears in ``/v1/epochs/{epoch}/participants``."""
        return {
            "index": self.address,
            "validator_key": self.validator_key,
            "weight": self.weight,
            "inference_url": self.url,
            "models": list(self.models),
            "seed": {
                "participant": self.address,
                "epoch_index": epoch,
                "signature": _sha(f"{self.address}/{epoch}".encode()).hex(),
            },
            "ml_nodes": [
                {"ml_nodes": [{"node_id": f"mlnode-{self.index}-{i}", "poc_weight": self.weight}]}
                for i, _ in enumerate(self.models)
            ],
            "voting_powers": [{"model_id": m, "voting_power": self.weight} for m in self.models],
        }

    def prune_replays(self, height: int) -> None:
        cutoff = height - _REPLAY_PRUNE_BLOCKS
        for key in [k for k, h in self._used_auth.items() if h < cutoff]:
            del self._used_auth[key]

    def __repr__(self) -> str:
        return f"<FakeParticipant p{self.index} {self.address} weight={self.weight}>"

    # ------------------------------------------------------------------ serving

    async def handle(self, request: Request) -> Response | StreamingResponse:
        if self.backend.faults.down:
            self.network._record(self.address, request, None, "down")
            raise Abort
        if request.method == "POST" and request.path in CHAT_PATHS:
            return await self.network._recorded(self.address, request, self._inference(request))
        return await self.network._recorded(
            self.address, request, self.network._discovery(request, self)
        )

    async def _inference(self, request: Request) -> Response | StreamingResponse:
        net = self.network
        if net.classic_api_retired:
            return net._retired_answer()
        try:
            body = json.loads(request.body)
        except (ValueError, UnicodeDecodeError) as exc:
            return _gonka_error(400, f"invalid chat completion request: {exc}")
        if not isinstance(body, dict):
            return _gonka_error(400, "invalid chat completion request: expected a JSON object")
        if request.path == "/v1/chat/completions" and not body.get("messages"):
            return _gonka_error(400, "messages is required")
        allowlist = net.allowlist
        if allowlist and self.address not in allowlist:
            return _gonka_error(403, "Transfer Agent not allowed")
        refusal = net.departed_refusal
        if refusal is not None and self.address not in net._roster_addresses(net.current_epoch):
            # A host that left the effective epoch refuses in its own words.
            return _gonka_error(403, refusal.format(address=self.address))
        authorization = request.headers.get("authorization", "")
        if not authorization:
            return _gonka_error(401, "Authorization is required")
        if "x-inference-id" in request.headers and "x-seed" in request.headers:
            # The node takes this for a TA->executor hop, which needs a TA signature.
            return _gonka_error(
                401, "Unable to validate request against TransferSignature:invalid signature"
            )
        model = body.get("model")
        if not isinstance(model, str) or not model:
            return _gonka_error(400, "No model specified")
        gate = net.developer_gate_height
        if gate is not None and net.block_height < gate:
            return _gonka_error(403, f"inference requests are restricted until block height {gate}")
        requester = request.headers.get("x-requester-address", "")
        account = net.accounts.get(requester)
        if account is None:
            return _gonka_error(500, "rpc error: code = NotFound desc = account not found")
        if account.public_key is None:
            return _gonka_error(500, "rpc error: code = NotFound desc = account has no public key")
        try:
            timestamp = int(request.headers.get("x-timestamp", ""))
        except ValueError:
            timestamp = 0  # strconv.ParseInt failure; rejected below as too old
        message = _signed_message(request.body, timestamp, self.address)
        if not verify_signature(account.public_key, authorization, message):
            return _gonka_error(401, "Unable to validate request against PubKey:invalid signature")
        if model not in net.epoch_models():
            return _gonka_error(404, "model not found")
        legacy = net.host_profile == "legacy"
        max_tokens = _escrow_tokens(body, legacy=legacy)
        prompt = _prompt_size(body, utf8=not legacy)
        if (prompt + max_tokens) * net.price_per_token > account.balance:
            return _gonka_error(402, "Insufficient balance")
        chain_ns = net.chain_time_ns()
        if chain_ns - timestamp > net.timestamp_expiration * 1_000_000_000:
            return _gonka_error(400, "signature is too old")
        if timestamp - chain_ns > net.timestamp_advance * 1_000_000_000:
            return _gonka_error(400, "signature is in the future")
        with net._lock:
            if authorization in self._used_auth:
                replayed = True
            else:
                replayed = False
                self._used_auth[authorization] = net.block_height
        if replayed:
            return _gonka_error(400, "AuthKey has already been used for a transfer request")
        if self.capacity_rate and self._rng.random() < self.capacity_rate:
            return _gonka_error(
                429,
                f"Transfer Agent capacity reached. Try another TA from {self.url}"
                "/v1/epochs/current/participants",
            )
        return await self._execute(request, body, authorization)

    async def _execute(
        self, request: Request, body: dict[str, Any], inference_id: str
    ) -> Response | StreamingResponse:
        if body.get("stream"):
            # The node forces usage reporting on streamed requests.
            options = dict(body.get("stream_options") or {})
            options["include_usage"] = True
            body = {**body, "stream_options": options}
        executor_request = Request(
            request.method,
            request.path,
            query=request.query,
            headers=request.headers,
            body=json.dumps(body).encode(),
            client=request.client,
        )
        try:
            response = await self.backend.handle(executor_request)
        except HTTPException as exc:
            # Executor-side failures keep the node's error shape.
            return _gonka_error(exc.status, exc.message)
        replacement = b'"id":"' + inference_id.encode() + b'"'
        if isinstance(response, StreamingResponse):
            response.chunks = _replace_ids(response.chunks, replacement)
            return response
        if response.status == 200 and response.body[:1] == b"{":
            document = json.loads(response.body)
            document["id"] = inference_id
            return Response.json(document, response.status, response.headers)
        return response


async def _replace_ids(chunks: Any, replacement: bytes) -> AsyncIterator[bytes]:
    async for chunk in chunks:
        data = chunk.encode() if isinstance(chunk, str) else chunk
        yield _ID_FIELD.sub(replacement, data)


# =========================================================================== the network


class FakeGonkaNetwork:
    """A seed node plus ``n_participants`` fake hosts; see the module docstring.

    ``models``: what every participant serves (or pass ``participant_models``, one list per
    participant). ``weights``: PoC weights (default 100, 200, 300...). ``allowlist``: the TA
    allowlist (``None``/empty: every node may act as TA; ``"all"``: every initial participant).
    ``start_epoch``: the effective epoch at start; the chain starts 5 blocks after its switch.
    """

    def __init__(
        self,
        n_participants: int = 3,
        *,
        models: Sequence[str] = ("Qwen/Fake-7B",),
        participant_models: Sequence[Sequence[str]] | None = None,
        weights: Sequence[int] | None = None,
        allowlist: Iterable[str] | str | None = None,
        start_epoch: int = 10,
        schedule: EpochSchedule | None = None,
        price_per_token: int = 1,
        timestamp_expiration: int = 60,
        timestamp_advance: int = 30,
        wire_shape: str = "current",
        proof_mode: str = "valid",
        models_shape: str = "openai",
        seed: int = 0,
        host_profile: str = "v0.2.14",
        chain_routes: bool | None = None,
        departed_refusal: str | None = None,
    ) -> None:
        if host_profile not in HOST_PROFILES:
            raise ValueError(f"host_profile must be one of {HOST_PROFILES}")
        if n_participants < 0:
            raise ValueError("n_participants must be >= 0")
        if participant_models is not None and len(participant_models) != n_participants:
            raise ValueError("participant_models needs one list per participant")
        if weights is not None and len(weights) != n_participants:
            raise ValueError("weights needs one value per participant")
        if wire_shape not in WIRE_SHAPES:
            raise ValueError(f"wire_shape must be one of {WIRE_SHAPES}")
        if proof_mode not in PROOF_MODES:
            raise ValueError(f"proof_mode must be one of {PROOF_MODES}")
        if models_shape not in ("openai", "legacy"):
            raise ValueError("models_shape must be 'openai' or 'legacy'")
        self.default_models = tuple(models)
        self.schedule = schedule or EpochSchedule()
        self.price_per_token = price_per_token
        self.timestamp_expiration = timestamp_expiration
        self.timestamp_advance = timestamp_advance
        self.wire_shape = wire_shape
        self.proof_mode = proof_mode
        self.models_shape = models_shape
        self.seed = seed
        self.host_profile = host_profile
        # v0.2.14 hosts keep /chain-rpc/ and /chain-api/ closed (nginx default since v0.2.8)
        self.chain_routes = (host_profile == "legacy") if chain_routes is None else chain_routes
        self.departed_refusal = departed_refusal
        self.developer_gate_height: int | None = None
        self.classic_api_retired = False
        self.accounts: dict[str, FakeAccount] = {}
        self._lock = threading.RLock()
        self._requests: list[GonkaRequestRecord] = []
        self._chain_offset_ns = 0
        self._frozen_chain_ns: int | None = None
        self._confirmation_phase: int | None = None
        self._next_index = 0
        self.all_participants: list[FakeParticipant] = []
        for i in range(n_participants):
            served = participant_models[i] if participant_models is not None else models
            weight = weights[i] if weights is not None else 100 * (i + 1)
            self._new_participant(served, weight)
        self._rosters: dict[int, list[str]] = {
            start_epoch: [p.address for p in self.all_participants]
        }
        self._excluded: dict[int, dict[str, str]] = {}
        self.block_height = self.schedule.stages(start_epoch)["set_new_validators"] + 5
        self.allowlist: frozenset[str] = frozenset()
        if allowlist == "all":
            self.allowlist = frozenset(self._rosters[start_epoch])
        elif allowlist:
            self.allowlist = frozenset(allowlist)
        self._thread: _LoopThread | None = None
        self._seed_server: HTTPServer | None = None
        self._brokers: list[FakeBroker] = []

    # ------------------------------------------------------------------ lifecycle

    def start(self) -> FakeGonkaNetwork:
        """Start every node on one background thread; returns once all ports are bound."""
        if self._thread is not None:
            raise RuntimeError("the fake Gonka network is already started")
        thread = _LoopThread("fake-gonka")
        thread.start()
        self._thread = thread
        try:
            thread.run(self._astart())
        except BaseException:
            self.stop()
            raise
        return self

    async def _astart(self) -> None:
        self._seed_server = HTTPServer(self._seed_handle, default_headers={"server": "fake-gonka"})
        await self._seed_server.start("127.0.0.1", 0)
        for participant in self.all_participants:
            await self._start_participant(participant)

    async def _start_participant(self, participant: FakeParticipant) -> None:
        server = HTTPServer(participant.handle, default_headers={"server": "fake-gonka"})
        await server.start("127.0.0.1", 0)
        participant._server = server

    async def _astop(self) -> None:
        servers = [self._seed_server] + [p._server for p in self.all_participants]
        for server in servers:
            if server is not None:
                await server.stop()

    def stop(self) -> None:
        """Stop every node (idempotent)."""
        for broker in self._brokers:
            broker.stop()
        self._brokers.clear()
        thread, self._thread = self._thread, None
        if thread is None:
            return
        try:
            thread.run(self._astop())
        finally:
            thread.stop()

    def __enter__(self) -> FakeGonkaNetwork:
        return self.start()

    def __exit__(self, *exc_info: Any) -> None:
        self.stop()

    async def __aenter__(self) -> FakeGonkaNetwork:
        await asyncio.to_thread(self.start)
        return self

    async def __aexit__(self, *exc_info: Any) -> None:
        await asyncio.to_thread(self.stop)

    def _call_soon(self, function: Any) -> None:
        if self._thread is not None:
            self._thread.loop.call_soon_threadsafe(function)

    # ------------------------------------------------------------------ nodes

    @property
    def source_url(self) -> str:
        """The seed node's base URL: a discovery source that is never faulted."""
        if self._seed_server is None:
            raise RuntimeError("the fake Gonka network is not started")
        return f"http://127.0.0.1:{self._seed_server.port}"

    @property
    def source_urls(self) -> list[str]:
        """The seed node then every participant (all serve discovery)."""
        return [self.source_url, *(p.url for p in self.participants)]

    @property
    def participants(self) -> list[FakeParticipant]:
        """Participants of the effective epoch (excluded ones included)."""
        return self.epoch_participants(self.current_epoch)

    def participant(self, address: str) -> FakeParticipant:
        for participant in self.all_participants:
            if participant.address == address:
                return participant
        raise KeyError(f"no fake participant {address}")

    def _new_participant(self, models: Sequence[str], weight: int) -> FakeParticipant:
        index = self._next_index
        self._next_index += 1
        participant = FakeParticipant(
            self, index, models=models, weight=weight, label=f"fake-gonka/{self.seed}/{index}"
        )
        self.all_participants.append(participant)
        return participant

    def add_participant(
        self, models: Sequence[str] | None = None, weight: int = 100
    ) -> FakeParticipant:
        """Create (and start) a host that is in no epoch yet: add it with
        :meth:`set_participants` or :meth:`set_next_participants`."""
        served = models if models is not None else self.default_models
        participant = self._new_participant(served, weight)
        if self._thread is not None:
            self._thread.run(self._start_participant(participant))
        return participant

    def start_broker(
        self, api_key: str, *, models: Sequence[str] | None = None, **kwargs: Any
    ) -> FakeBroker:
        """Start a broker / devshard gateway requiring ``Authorization: Bearer <api_key>`` (a
        :class:`~gonka_mux.testing.fake_broker.FakeBroker` serving the epoch's models; stopped
        with the network; ``kwargs`` go to it). Its ``url`` ends with ``/v1``."""
        served = models if models is not None else sorted(self.epoch_models()) or ["fake-model"]
        kwargs.setdefault("name", "broker")
        broker = FakeBroker(api_key, models=served, **kwargs).start()
        self._brokers.append(broker)
        return broker

    # ------------------------------------------------------------------ chain state

    @property
    def latest_epoch(self) -> int:
        return self.schedule.latest_epoch(self.block_height)

    @property
    def current_epoch(self) -> int:
        """The effective epoch (what ``/v1/epochs/current/participants`` serves)."""
        return self.schedule.effective_epoch(self.block_height)

    @property
    def phase(self) -> str:
        return self.schedule.phase(self.block_height)

    def epoch_stages(self, epoch: int | None = None) -> dict[str, Any]:
        return self.schedule.stages(self.latest_epoch if epoch is None else epoch)

    def set_block_height(self, height: int) -> None:
        with self._lock:
            self.block_height = height
            for participant in self.all_participants:
                participant.prune_replays(height)

    def advance_blocks(self, count: int = 1) -> int:
        self.set_block_height(self.block_height + count)
        return self.block_height

    def next_switch_height(self) -> int:
        """The next block at which the effective epoch changes (strictly ahead)."""
        latest = self.latest_epoch
        switch = self.schedule.stages(latest)["set_new_validators"]
        if switch > self.block_height:
            return switch
        return self.schedule.stages(latest + 1)["set_new_validators"]

    def advance_to_next_epoch(self) -> int:
        """Jump to the next ``set_new_validators`` height; returns the new effective epoch."""
        self.set_block_height(self.next_switch_height())
        return self.current_epoch

    def advance_to_stage(self, stage: str, epoch: int | None = None) -> int:
        """Jump to ``stage`` (an ``EpochStages`` field, e.g. ``"poc_validation_end"``) of
        ``epoch`` (default: the next epoch whose PoC has not started)."""
        target_epoch = epoch if epoch is not None else self.latest_epoch + 1
        stages = self.schedule.stages(target_epoch)
        if stage not in stages or isinstance(stages[stage], dict):
            raise ValueError(f"unknown stage {stage!r}")
        self.set_block_height(stages[stage])
        return self.block_height

    def chain_time_ns(self) -> int:
        """The latest block time the nodes judge timestamps against."""
        if self._frozen_chain_ns is not None:
            return self._frozen_chain_ns
        return time.time_ns() + self._chain_offset_ns

    def set_chain_time_offset(self, seconds: float) -> None:
        """Chain time = wall clock + ``seconds`` (negative: the chain lags, e.g. stalled)."""
        self._chain_offset_ns = round(seconds * 1e9)
        self._frozen_chain_ns = None

    def freeze_chain_time(self, at_ns: int | None = None) -> None:
        """Stop chain time (a halted chain) at ``at_ns`` (default now)."""
        self._frozen_chain_ns = self.chain_time_ns() if at_ns is None else at_ns

    def retire_classic_api(self, retired: bool = True) -> None:
        """Make every host answer classic inference with 410 Gone, as mainnet does since
        v0.2.14: ``{"error": "deprecated", "message": "classic inference is deprecated; use
        devshard"}`` with ``Deprecation``/``Link`` headers (the legacy profile: the old fake's
        plain 410)."""
        self.classic_api_retired = retired

    def set_chain_routes(self, open_: bool) -> None:
        """Open (``True``) or close ``/chain-rpc/`` and ``/chain-api/`` on every host. Closed is
        what hosts do by default since v0.2.8: nginx answers 404 ``Chain RPC Disabled``."""
        self.chain_routes = open_

    def set_departed_refusal(self, message: str | None) -> None:
        """Hosts that are not in the effective epoch refuse inference with 403 ``message``
        (``{address}`` is replaced by theirs); ``None``: they keep serving."""
        self.departed_refusal = message

    def set_developer_gate(self, until_height: int | None) -> None:
        """The chain-wide developer gate: every host answers 403 ``inference requests are
        restricted until block height N`` while the block height is below ``until_height``."""
        self.developer_gate_height = until_height

    def host_time_ns(self) -> int:
        """The hosts' wall clock (their HTTP ``Date``): the test's clock plus the chain-time
        offset. A frozen (stalled) chain does not stop it."""
        return time.time_ns() + self._chain_offset_ns

    def _retired_answer(self) -> Response:
        if self.host_profile == "legacy":
            return _gonka_error(410, LEGACY_RETIRED_MESSAGE)
        return Response.json(CLASSIC_DEPRECATED_BODY, 410, DEPRECATION_HEADERS)

    def set_allowlist(self, addresses: Iterable[str] | None) -> None:
        """Set the TA allowlist (empty/None: every node may act as TA)."""
        self.allowlist = frozenset(addresses or ())

    def set_confirmation_poc(self, phase: int | None) -> None:
        """Start a confirmation-PoC event in ``phase`` (1 grace, 2 generation, 3 validation,
        4 completed), or end it with ``None``."""
        self._confirmation_phase = phase

    def set_proof_mode(self, mode: str) -> None:
        if mode not in PROOF_MODES:
            raise ValueError(f"proof mode must be one of {PROOF_MODES}")
        self.proof_mode = mode

    # ------------------------------------------------------------------ rosters

    def _roster(self, epoch: int) -> list[str] | None:
        known = [e for e in self._rosters if e <= epoch]
        return self._rosters[max(known)] if known else None

    def _roster_addresses(self, epoch: int) -> list[str]:
        return self._roster(epoch) or []

    def epoch_participants(self, epoch: int) -> list[FakeParticipant]:
        roster = self._roster(epoch) or []
        return [self.participant(address) for address in roster]

    def _addresses(self, participants: Iterable[FakeParticipant | str]) -> list[str]:
        addresses = []
        for item in participants:
            address = item.address if isinstance(item, FakeParticipant) else item
            self.participant(address)  # must exist
            addresses.append(address)
        return addresses

    def set_participants(
        self, participants: Iterable[FakeParticipant | str], *, epoch: int | None = None
    ) -> None:
        """Set the roster of ``epoch`` (default: the effective epoch) and the epochs after it
        (later rosters set explicitly are dropped)."""
        target = self.current_epoch if epoch is None else epoch
        with self._lock:
            self._rosters = {e: r for e, r in self._rosters.items() if e < target}
            self._rosters[target] = self._addresses(participants)

    def set_next_participants(self, participants: Iterable[FakeParticipant | str]) -> None:
        """Set the roster the next epoch gets at its PoC (the effective one is unchanged)."""
        self.set_participants(participants, epoch=self.current_epoch + 1)

    def exclude(self, address: str, reason: str = "downtime", epoch: int | None = None) -> None:
        """List ``address`` in ``excluded_participants`` of ``epoch`` (default: effective)."""
        target = self.current_epoch if epoch is None else epoch
        with self._lock:
            self._excluded.setdefault(target, {})[address] = reason

    def epoch_models(self, epoch: int | None = None) -> set[str]:
        """Models served by the (non-excluded) participants of ``epoch`` (default: effective)."""
        target = self.current_epoch if epoch is None else epoch
        excluded = self._excluded.get(target, {})
        return {
            model
            for p in self.epoch_participants(target)
            if p.address not in excluded
            for model in p.models
        }

    # ------------------------------------------------------------------ accounts

    def add_account(
        self,
        who: Any,
        *,
        balance: int = 10**15,
        public_key: bytes | None = None,
    ) -> str:
        """Register a requester: a :class:`~gonka_mux.gonka.signing.RequestSigner`, a
        :class:`~gonka_mux.gonka.keys.PrivateKey`, a 33-byte public key, or an address (then
        ``public_key`` may be None: an account that never signed a tx). Returns the address."""
        if isinstance(who, (bytes, bytearray)):
            public_key, address = bytes(who), address_from_public_key(bytes(who))
        elif isinstance(who, str):
            address = who
        else:
            public_key, address = bytes(who.public_key), str(who.address)
        with self._lock:
            self.accounts[address] = FakeAccount(address, public_key, balance)
        return address

    def set_balance(self, address: str, balance: int) -> None:
        with self._lock:
            self.accounts[address].balance = balance

    # ------------------------------------------------------------------ request log

    @property
    def requests(self) -> list[GonkaRequestRecord]:
        """Every request received by every node, oldest first (a snapshot)."""
        with self._lock:
            return list(self._requests)

    @property
    def inference_requests(self) -> list[GonkaRequestRecord]:
        return [r for r in self.requests if r.is_inference]

    def clear_requests(self) -> None:
        with self._lock:
            self._requests.clear()

    def _record(self, node: str, request: Request, status: int | None, error: str | None) -> None:
        record = GonkaRequestRecord(
            node=node,
            method=request.method,
            path=request.path,
            headers=request.headers,
            body=request.body,
            time=time.time(),
            status=status,
            error=error,
        )
        with self._lock:
            self._requests.append(record)

    async def _recorded(self, node: str, request: Request, answer: Any) -> Any:
        try:
            response = await answer
        except HTTPException as exc:
            self._record(node, request, exc.status, exc.message)
            raise
        except BaseException as exc:
            self._record(node, request, None, f"no response ({type(exc).__name__})")
            raise
        if isinstance(response, (Response, StreamingResponse)):
            response.headers.append(("date", _http_date(self.host_time_ns())))
        error = None
        if isinstance(response, Response) and response.status >= 400:
            try:
                error = json.loads(response.body).get("error")
            except (ValueError, AttributeError):
                error = response.body[:200].decode("utf-8", "replace")
            if isinstance(error, dict):
                error = error.get("message")
        self._record(node, request, response.status, error)
        return response

    # ------------------------------------------------------------------ discovery routes

    async def _seed_handle(self, request: Request) -> Response:
        return await self._recorded("seed", request, self._discovery(request, None))

    async def _discovery(self, request: Request, node: FakeParticipant | None) -> Response:
        path = request.path
        if self.host_profile == "legacy":
            path = path.removeprefix("/api")
        elif path.startswith("/api/v1/"):
            path = path.removeprefix("/api")  # nginx maps /api/v1/ to the dapi's /v1/
        if path.startswith(("/chain-rpc/", "/chain-api/")) and not self.chain_routes:
            text = CHAIN_ROUTE_DISABLED[path[: path.index("/", 1) + 1]]
            return Response(text, 404)
        if self.host_profile != "legacy" and (
            path == "/v1/devshard" or path.startswith("/v1/devshard/")
        ):
            return Response.json(DEVSHARD_V1_DEPRECATED_BODY, 410, DEPRECATION_HEADERS)
        classic = path in CHAT_PATHS and (request.method == "POST" or path == CHAT_PATHS[0])
        if classic:  # server.go routes POST of both paths and GET of chat/completions
            if self.classic_api_retired:
                return self._retired_answer()
            if request.method == "GET":
                return _gonka_error(400, "inference id is required (GET ?id=<inference id>)")
            if node is None:
                return _gonka_error(404, "this node is not a participant")
        if request.method != "GET":
            return _gonka_error(405, f"method {request.method} not allowed")
        if path == "/v1/status":
            return Response.json({"status": "ok"})
        if path == "/v1/epochs/latest":
            return Response.json(self._epoch_latest())
        if path.startswith("/v1/epochs/"):
            rest = path.removeprefix("/v1/epochs/")
            if rest.endswith("/participants"):
                return self._participants_response(rest.removesuffix("/participants"))
            return _gonka_error(
                400, "Only getting info for current epoch is supported at the moment"
            )
        if path == "/v1/models":
            return Response.json(self._models_document())
        if path == "/v1/pricing":
            return Response.json(self._pricing_document())
        if path == "/v1/identity":
            if node is None:
                return _gonka_error(404, "this node is not a participant")
            return Response.json(self._identity(node))
        if path.startswith("/v2/accounts/"):
            account = self.accounts.get(path.removeprefix("/v2/accounts/"))
            if account is None:
                return _gonka_error(404, "account not found")
            if account.public_key is None:
                return _gonka_error(404, "account has no public key")
            return Response.json(
                {
                    "pubkey": base64.b64encode(account.public_key).decode(),
                    "balance": account.balance,
                    "denom": "ngonka",
                }
            )
        if path == "/chain-api/productscience/inference/inference/params":
            return Response.json(self._params_document())
        if path == "/chain-rpc/status":
            return Response.json(self._chain_status())
        return _gonka_error(404, f"Unknown route {request.method} {request.path}")

    def _epoch_latest(self) -> dict[str, Any]:
        height = self.block_height
        latest = self.latest_epoch
        stages = self.schedule.stages(latest)
        schedule = self.schedule
        params = {
            "epoch_length": schedule.epoch_length,
            "epoch_multiplier": 1,
            "epoch_shift": 0,
            "default_unit_of_compute_price": 100,
            "poc_stage_duration": schedule.poc_stage_duration,
            "poc_validation_delay": schedule.poc_validation_delay,
            "poc_validation_duration": schedule.poc_validation_duration,
            "set_new_validators_delay": schedule.set_new_validators_delay,
            "inference_validation_cutoff": schedule.inference_validation_cutoff,
        }
        document: dict[str, Any] = {
            "block_height": height,
            "latest_epoch": {"index": latest, "poc_start_block_height": stages["poc_start"]},
            "phase": self.phase,
            "epoch_stages": stages,
            "next_epoch_stages": self.schedule.stages(latest + 1),
            "epoch_params": params,
            "is_confirmation_poc_active": self._confirmation_phase not in (None, 0, 4),
        }
        if self._confirmation_phase is not None:
            document["active_confirmation_poc_event"] = {
                "epoch_index": self.current_epoch,
                "event_sequence": 0,
                "trigger_height": height,
                "generation_start_height": height + 5,
                "phase": self._confirmation_phase,
            }
        if self.wire_shape == "v0_2_15":
            document["epoch_params"] = {"epoch_params": _stringify_ints(params)}
        return document

    def _participants_response(self, which: str) -> Response:
        if which == "current":
            epoch = self.current_epoch
        elif which.isdigit():
            epoch = int(which)
            if epoch == 0:
                return _gonka_error(400, "Epoch enumeration starts with 1")
        else:
            return _gonka_error(400, f"invalid epoch {which!r}")
        latest = self.latest_epoch
        readable = epoch <= self.current_epoch or (
            epoch == latest
            and self.block_height >= self.schedule.stages(latest)["poc_validation_end"]
        )
        roster = self._roster(epoch)
        if not readable or roster is None:
            return _gonka_error(
                404, "No active participants found for the specified epoch. Looks like PoC failed!"
            )
        return Response.json(self._participants_document(epoch))

    def _participants_document(self, epoch: int) -> dict[str, Any]:
        stages = self.schedule.stages(epoch)
        created = stages["poc_validation_end"]
        active = {
            "participants": [p.entry(epoch) for p in self.epoch_participants(epoch)],
            "epoch_group_id": epoch,
            "poc_start_block_height": stages["poc_start"],
            "effective_block_height": created + 2,
            "created_at_block_height": created,
            "epoch_id": epoch,
        }
        value = _encode_active_participants(active)
        key = f"ActiveParticipants/{epoch}/value/".encode()
        iavl, store_root = _existence_proof(
            key, value, b"\x00\x02\x02", b"\x02\x04\x02", f"i{epoch}"
        )
        simple, app_hash = _existence_proof(b"inference", store_root, b"\x00", b"\x01", f"s{epoch}")
        if self.proof_mode == "bad_app_hash":
            app_hash = _sha(app_hash)
        if self.proof_mode == "tampered_list" and active["participants"]:
            active["participants"][0] = {
                **active["participants"][0],
                "inference_url": "http://127.0.0.1:9/evil",
            }
        excluded = self._excluded.get(epoch, {})
        document: dict[str, Any] = {
            "active_participants": active,
            "addresses": [
                _sha(p["index"].encode())[:20].hex().upper() for p in active["participants"]
            ],
            "active_participants_bytes": value.hex(),
            "proof_ops": None,
            "validators": [
                {
                    "address": _sha(p["index"].encode())[:20].hex().upper(),
                    "pub_key": p["validator_key"],
                    "voting_power": p["weight"],
                    "proposer_priority": 0,
                }
                for p in active["participants"]
            ],
            "block": {
                "header": {
                    "chain_id": "gonka-fake",
                    "height": created + 1,
                    "time": _rfc3339(self.chain_time_ns()),
                    "app_hash": app_hash.hex().upper(),
                },
                "data": {"txs": None},
                "last_commit": {"height": created, "round": 0, "signatures": []},
            },
            "excluded_participants": [
                {"address": a, "reason": r, "exclusion_block_height": created + 10}
                for a, r in excluded.items()
            ],
        }
        if self.proof_mode != "missing":
            document["proof_ops"] = {
                "ops": [
                    {
                        "type": "ics23:iavl",
                        "key": base64.b64encode(key).decode(),
                        "data": base64.b64encode(iavl).decode(),
                    },
                    {
                        "type": "ics23:simple",
                        "key": base64.b64encode(b"inference").decode(),
                        "data": base64.b64encode(simple).decode(),
                    },
                ]
            }
        if self.wire_shape == "v0_2_15":
            document["active_participants"] = _stringify_ints(active)
            document["block"]["header"]["height"] = str(created + 1)
            document["block"]["header"]["app_hash"] = base64.b64encode(app_hash).decode()
            for validator in document["validators"]:
                validator["voting_power"] = str(validator["voting_power"])
        return document

    def _models_document(self) -> dict[str, Any]:
        models = sorted(self.epoch_models())
        if self.models_shape == "legacy":
            return {"models": [{"id": m, "units_of_compute_per_token": 1000} for m in models]}
        created = int(time.time())
        return {
            "object": "list",
            "data": [
                {
                    "object": "model",
                    "id": m,
                    "name": m,
                    "created": created,
                    "input_modalities": ["text"],
                    "output_modalities": ["text"],
                    "context_length": 32768,
                    "max_output_length": 32768,
                }
                for m in models
            ],
        }

    def _pricing_document(self) -> dict[str, Any]:
        return {
            "unit_of_compute_price": 100,
            "models": [
                {
                    "id": m,
                    "units_of_compute_per_token": 1000,
                    "price_per_token": self.price_per_token,
                }
                for m in sorted(self.epoch_models())
            ],
            "dynamic_pricing_enabled": True,
        }

    def _identity(self, node: FakeParticipant) -> dict[str, Any]:
        data = {
            "address": node.address,
            "block": self.block_height,
            "timestamp": _rfc3339(time.time_ns()).split(".")[0] + "Z",
        }
        signature = node._key(json.dumps(data).encode())
        return {"data": data, "signature": base64.b64encode(signature).decode()}

    def _params_document(self) -> dict[str, Any]:
        schedule = self.schedule
        return {
            "params": {
                "epoch_params": {
                    "epoch_length": str(schedule.epoch_length),
                    "poc_stage_duration": str(schedule.poc_stage_duration),
                    "poc_validation_delay": str(schedule.poc_validation_delay),
                    "poc_validation_duration": str(schedule.poc_validation_duration),
                    "set_new_validators_delay": str(schedule.set_new_validators_delay),
                },
                "validation_params": {
                    "timestamp_expiration": str(self.timestamp_expiration),
                    "timestamp_advance": str(self.timestamp_advance),
                    "expiration_blocks": "20",
                },
                "transfer_agent_access_params": {
                    "allowed_transfer_addresses": sorted(self.allowlist)
                },
            }
        }

    def _chain_status(self) -> dict[str, Any]:
        return {
            "jsonrpc": "2.0",
            "id": -1,
            "result": {
                "node_info": {"network": "gonka-fake"},
                "sync_info": {
                    "latest_block_height": str(self.block_height),
                    "latest_block_time": _rfc3339(self.chain_time_ns()),
                    "catching_up": False,
                },
            },
        }

    def __repr__(self) -> str:
        state = "running" if self._thread is not None else "stopped"
        return (
            f"<FakeGonkaNetwork {len(self.all_participants)} hosts, epoch {self.current_epoch}, "
            f"block {self.block_height}, {state}>"
        )
