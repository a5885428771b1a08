"""Request signing: the test vector, both backends, low-S, the clock and the auth callable."""

from __future__ import annotations

import base64
import hashlib
import importlib
import sys
import threading
from typing import Any

import httpx
import pytest
from _gonka_support import REQUESTER_KEY
from hypothesis import given, settings
from hypothesis import strategies as st

from gonka_mux.gonka.errors import GonkaConfigError, GonkaSigningError
from gonka_mux.gonka.keys import PrivateKey
from gonka_mux.gonka.signing import (
    INTERNAL_HEADERS,
    GonkaAuth,
    NanoClock,
    RequestSigner,
    available_backends,
    default_clock,
    signing_message,
)
from gonka_mux.testing.fake_gonka import verify_signature

N = 0xFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFEBAAEDCE6AF48A03BBFD25E8CD0364141
BACKENDS = ("coincurve", "ecdsa")
# Request classes of every HTTP library the installed openai may use (httpx2 is openai 3's).
HTTP_LIBS = [name for name in ("httpx", "httpx2") if importlib.util.find_spec(name)]


def test_both_backends_are_installed_for_the_tests() -> None:
    assert available_backends() == BACKENDS


# --- the known-good vector ------------------------------------------------------------------------


def test_signing_message_matches_the_vector(vector: dict[str, Any]) -> None:
    body = vector["request_body_utf8"].encode()
    assert hashlib.sha256(body).hexdigest() == vector["sha256_body_hex"]
    message = signing_message(body, int(vector["x_timestamp_ns"]), vector["transfer_agent_address"])
    assert message == vector["signed_message_utf8"].encode()


@pytest.mark.parametrize("backend", BACKENDS)
def test_each_backend_reproduces_the_vector(vector: dict[str, Any], backend: str) -> None:
    signer = RequestSigner(vector["developer_private_key_hex"], backend=backend)  # type: ignore[arg-type]
    assert signer.backend == backend
    assert signer.address == vector["developer_address"]
    body = vector["request_body_utf8"].encode()
    timestamp = int(vector["x_timestamp_ns"])
    auth = signer.sign(body, timestamp, vector["transfer_agent_address"])
    assert auth == vector["authorization_base64_r_s_lowS"]
    headers = signer.headers(body, vector["transfer_agent_address"], timestamp)
    expected = {k: v for k, v in vector["http_headers"].items() if k != "Content-Type"}
    assert headers == expected


def test_auth_callable_produces_the_vector_headers(vector: dict[str, Any]) -> None:
    signer = RequestSigner(vector["developer_private_key_hex"])
    timestamp = int(vector["x_timestamp_ns"])
    clock = NanoClock(time_ns=lambda: timestamp)
    auth = GonkaAuth(signer, vector["transfer_agent_address"], clock)
    request = httpx.Request(
        "POST",
        "http://ta.example/v1/chat/completions",
        content=vector["request_body_utf8"].encode(),
        headers={"Content-Type": "application/json", "Authorization": "Bearer gonka"},
    )
    auth(request)
    for name, value in vector["http_headers"].items():
        assert request.headers[name] == value


# --- backends agree, signatures are canonical -----------------------------------------------------


@settings(max_examples=60, deadline=None)
@given(
    secret=st.integers(min_value=1, max_value=N - 1),
    body=st.binary(max_size=512),
    timestamp=st.integers(min_value=1, max_value=2**63 - 1),
)
def test_backends_agree_and_verify_independently(secret: int, body: bytes, timestamp: int) -> None:
    key = PrivateKey(secret.to_bytes(32, "big"))
    fast = RequestSigner(key, backend="coincurve")
    slow = RequestSigner(key, backend="ecdsa")
    ta = "gonka1gazevntcqk95rqusjhvwn92y4599y8t3tjqc04"
    signature = fast.sign(body, timestamp, ta)
    assert slow.sign(body, timestamp, ta) == signature
    raw = base64.b64decode(signature)
    assert len(raw) == 64
    assert int.from_bytes(raw[32:], "big") <= N // 2  # low-S
    # The fake network's verifier uses `cryptography`, not our code.
    assert verify_signature(key.public_key, signature, signing_message(body, timestamp, ta))
    assert not verify_signature(key.public_key, signature, signing_message(body, timestamp + 1, ta))


def test_high_s_twin_is_rejected_by_the_verifier(vector: dict[str, Any]) -> None:
    raw = base64.b64decode(vector["authorization_base64_r_s_lowS"])
    r, s = raw[:32], int.from_bytes(raw[32:], "big")
    high = base64.b64encode(r + (N - s).to_bytes(32, "big")).decode()
    key = PrivateKey.from_hex(vector["developer_private_key_hex"])
    message = vector["signed_message_utf8"].encode()
    assert verify_signature(key.public_key, vector["authorization_base64_r_s_lowS"], message)
    assert not verify_signature(key.public_key, high, message)  # malleated: same (r, -s)


def test_auto_backend_falls_back_to_ecdsa(monkeypatch: pytest.MonkeyPatch, vector) -> None:
    monkeypatch.setitem(sys.modules, "coincurve", None)  # as if the `fast` extra were missing
    signer = RequestSigner(vector["developer_private_key_hex"])
    assert signer.backend == "ecdsa"
    assert available_backends() == ("ecdsa",)
    body = vector["request_body_utf8"].encode()
    timestamp = int(vector["x_timestamp_ns"])
    assert (
        signer.sign(body, timestamp, vector["transfer_agent_address"])
        == vector["authorization_base64_r_s_lowS"]
    )
    with pytest.raises(GonkaConfigError, match=r"gonka-mux\[fast\]"):
        RequestSigner(vector["developer_private_key_hex"], backend="coincurve")


def test_coincurve_public_api_path_gives_the_same_bytes(vector: dict[str, Any]) -> None:
    signer = RequestSigner(vector["developer_private_key_hex"], backend="coincurve")
    assert signer._backend._lib is not None  # the direct libsecp256k1 path passed its self-check
    signer._backend._lib = None  # what a coincurve without that binding layout would use
    body = vector["request_body_utf8"].encode()
    timestamp = int(vector["x_timestamp_ns"])
    assert (
        signer.sign(body, timestamp, vector["transfer_agent_address"])
        == vector["authorization_base64_r_s_lowS"]
    )


@pytest.mark.parametrize("backend", BACKENDS)
def test_one_signer_shared_by_threads(backend: str) -> None:
    """Threads sharing a signer get exactly the signatures a lone thread gets (deterministic
    signing makes any mix-up between concurrent calls visible)."""
    signer = RequestSigner(REQUESTER_KEY, backend=backend)  # type: ignore[arg-type]
    ta = "gonka1gazevntcqk95rqusjhvwn92y4599y8t3tjqc04"
    count = 60 if backend == "ecdsa" else 600
    results: dict[int, list[str]] = {}

    def work(worker: int) -> None:
        results[worker] = [signer.sign(f"{worker}-{i}".encode(), i + 1, ta) for i in range(count)]

    threads = [threading.Thread(target=work, args=(n,)) for n in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    alone = RequestSigner(REQUESTER_KEY, backend=backend)  # type: ignore[arg-type]
    for worker in range(4):
        expected = [alone.sign(f"{worker}-{i}".encode(), i + 1, ta) for i in range(count)]
        assert results[worker] == expected


def test_unknown_backend_is_a_config_error() -> None:
    with pytest.raises(GonkaConfigError) as info:
        RequestSigner(REQUESTER_KEY, backend="openssl")  # type: ignore[arg-type]
    assert info.value.field == "backend"


def test_signer_reads_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("GONKA_PRIVATE_KEY", "0x" + REQUESTER_KEY)
    assert RequestSigner().address == PrivateKey.from_hex(REQUESTER_KEY).address


# --- the clock ------------------------------------------------------------------------------------


def test_clock_is_strictly_increasing_even_when_time_stands_still() -> None:
    clock = NanoClock(time_ns=lambda: 1_000)
    assert [clock() for _ in range(3)] == [1_000, 1_001, 1_002]


def test_clock_offset_and_sync() -> None:
    now = [10_000_000_000]
    clock = NanoClock(offset_seconds=1.5, time_ns=lambda: now[0])
    assert clock.now_ns() == 11_500_000_000
    assert clock.offset_seconds == 1.5
    clock.set_offset(-2)  # a resync to a chain that is behind steps the sequence back with it
    now[0] += 1_000_000_000
    assert clock.now_ns() == 9_000_000_000
    now[0] += 10_000_000_000
    assert clock.now_ns() == now[0] - 2_000_000_000
    assert clock.sync_to(50_000_000_000, local_ns=20_000_000_000) == 30.0
    assert clock.offset_ns == 30_000_000_000
    assert "30" in repr(clock)


def test_clock_stays_strictly_increasing_across_a_backward_step() -> None:
    clock = NanoClock(time_ns=lambda: 1_000)
    before = [clock() for _ in range(3)]  # 1000, 1001, 1002
    clock.set_offset(-500e-9)
    after = [clock() for _ in range(3)]
    assert after == [503, 504, 505]  # shifted back by 500 ns, still after the shifted floor
    assert not set(before) & set(after)
    clock.set_offset(0)  # stepping forward again continues above the shifted floor
    assert clock() == 1_000
    assert clock() == 1_001


def test_clock_is_thread_safe() -> None:
    clock = NanoClock(time_ns=lambda: 5)  # worst case: every thread sees the same time
    results: list[list[int]] = [[] for _ in range(4)]

    def work(out: list[int]) -> None:
        for _ in range(3_000):
            out.append(clock.now_ns())

    threads = [threading.Thread(target=work, args=(out,)) for out in results]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    merged = [value for out in results for value in out]
    assert len(set(merged)) == len(merged) == 12_000
    for out in results:
        assert out == sorted(out)


def test_default_clock_is_shared(vector) -> None:
    signer = RequestSigner(REQUESTER_KEY)
    first = GonkaAuth(signer, vector["transfer_agent_address"])
    second = GonkaAuth(signer, vector["developer_address"])
    assert first.clock is second.clock is default_clock()


# --- the auth callable on httpx and httpx2 requests -----------------------------------------------


@pytest.mark.parametrize("lib", HTTP_LIBS)
def test_auth_signs_every_call_afresh_and_strips_internal_headers(lib: str, vector) -> None:
    http = importlib.import_module(lib)
    signer = RequestSigner(REQUESTER_KEY)
    ta = vector["transfer_agent_address"]
    auth = GonkaAuth(signer, ta, NanoClock())
    internal = {name: "x" for name in INTERNAL_HEADERS}
    seen = []
    for _ in range(3):
        request = http.Request(
            "POST",
            "http://ta.example/v1/chat/completions",
            json={"model": "m", "messages": []},
            headers={"Authorization": "Bearer sk-ignored", **internal},
        )
        assert auth(request) is request
        headers = request.headers
        for name in INTERNAL_HEADERS:
            assert name not in headers
        assert not headers["Authorization"].startswith("Bearer")
        assert headers["X-Requester-Address"] == signer.address
        timestamp = int(headers["X-Timestamp"])
        message = signing_message(request.content, timestamp, ta)
        assert verify_signature(signer.public_key, headers["Authorization"], message)
        seen.append((timestamp, headers["Authorization"]))
    timestamps = [t for t, _ in seen]
    assert timestamps == sorted(timestamps) and len(set(timestamps)) == 3
    assert len({a for _, a in seen}) == 3


@pytest.mark.parametrize("lib", HTTP_LIBS)
def test_auth_reads_a_sync_streamed_body(lib: str, vector) -> None:
    http = importlib.import_module(lib)
    signer = RequestSigner(REQUESTER_KEY)
    ta = vector["transfer_agent_address"]
    chunks = [b'{"model":', b'"m"}']
    request = http.Request("POST", "http://ta.example/v1/x", content=iter(chunks))
    GonkaAuth(signer, ta, NanoClock())(request)
    timestamp = int(request.headers["X-Timestamp"])
    message = signing_message(b"".join(chunks), timestamp, ta)
    assert verify_signature(signer.public_key, request.headers["Authorization"], message)


@pytest.mark.parametrize("lib", HTTP_LIBS)
def test_auth_refuses_an_async_stream_clearly(lib: str, vector) -> None:
    http = importlib.import_module(lib)

    async def body() -> Any:
        yield b"{}"

    request = http.Request("POST", "http://ta.example/v1/x", content=body())
    with pytest.raises(GonkaSigningError, match="asynchronous stream"):
        GonkaAuth(RequestSigner(REQUESTER_KEY), vector["transfer_agent_address"])(request)


def test_auth_rejects_a_bad_transfer_address() -> None:
    with pytest.raises(GonkaConfigError) as info:
        GonkaAuth(RequestSigner(REQUESTER_KEY), "gonka1wrong")
    assert info.value.field == "transfer_address"


@pytest.mark.parametrize("lib", HTTP_LIBS)
def test_auth_on_a_real_client_against_the_fake_network(lib: str, net, signer) -> None:
    http = importlib.import_module(lib)
    participant = net.participants[0]
    auth = GonkaAuth(signer, participant.address)
    body = {"model": "Qwen/Fake-7B", "messages": [{"role": "user", "content": "hi"}]}
    with http.Client(auth=auth, timeout=10) as client:
        for _ in range(2):
            response = client.post(f"{participant.base_url}/chat/completions", json=body)
            assert response.status_code == 200, response.text
            assert response.json()["id"] == net.inference_requests[-1].authorization
