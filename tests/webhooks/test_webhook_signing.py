from __future__ import annotations

import hashlib
import hmac
import re
import time

import httpx
import pytest

from gonka_mux.webhooks import (
    DELIVERY_HEADER,
    EVENT_HEADER,
    SIGNATURE_HEADER,
    Secret,
    SignatureVerificationError,
    generate_secret,
    sign_payload,
    signature_header,
    verify_signature,
    webhook_headers,
)

SECRET = "whsec_signing_test_secret_value"
BODY = b'{"id":"d1","type":"job.completed","job":{"id":"j1","status":"succeeded"}}'


def test_signature_is_hmac_sha256_over_timestamp_dot_body() -> None:
    expected = hmac.new(SECRET.encode(), b"1700000000." + BODY, hashlib.sha256).hexdigest()
    assert sign_payload(SECRET, 1700000000, BODY) == expected
    assert sign_payload(SECRET, 1700000000, BODY.decode()) == expected  # str body: its UTF-8
    assert sign_payload(Secret(SECRET), 1700000000, BODY) == expected
    assert signature_header(SECRET, 1700000000, BODY) == f"t=1700000000,v1={expected}"


def test_webhook_headers_carry_signature_delivery_id_and_event() -> None:
    headers = webhook_headers(SECRET, BODY, delivery_id="d-1", event="job.failed", timestamp=5)
    assert headers[DELIVERY_HEADER] == "d-1"
    assert headers[EVENT_HEADER] == "job.failed"
    assert headers["Content-Type"] == "application/json"
    assert re.fullmatch(r"t=5,v1=[0-9a-f]{64}", headers[SIGNATURE_HEADER])


@pytest.mark.parametrize(
    "make_headers",
    [
        lambda h: h,  # plain dict, canonical case
        lambda h: {k.lower(): v for k, v in h.items()},  # ASGI-style lower case
        lambda h: list(h.items()),  # list of pairs
        lambda h: [(k.lower().encode(), v.encode()) for k, v in h.items()],  # raw ASGI bytes
        lambda h: httpx.Headers(h),
    ],
    ids=["dict", "lowercase", "pairs", "asgi-bytes", "httpx"],
)
def test_verify_accepts_every_common_header_shape(make_headers) -> None:
    now = int(time.time())
    headers = webhook_headers(SECRET, BODY, delivery_id="d", event="job.completed", timestamp=now)
    assert verify_signature(SECRET, make_headers(headers), BODY) == now


def _headers(ts: int, body: bytes = BODY, secret: str = SECRET) -> dict[str, str]:
    return {SIGNATURE_HEADER: signature_header(secret, ts, body)}


def test_verify_rejects_a_changed_body() -> None:
    now = int(time.time())
    with pytest.raises(SignatureVerificationError, match="no signature matches"):
        verify_signature(SECRET, _headers(now), BODY.replace(b"succeeded", b"failed"))


def test_verify_rejects_the_wrong_secret_without_revealing_either() -> None:
    now = int(time.time())
    with pytest.raises(SignatureVerificationError) as caught:
        verify_signature("whsec_other_secret", _headers(now), BODY)
    assert SECRET not in str(caught.value)
    assert "whsec_other_secret" not in str(caught.value)


@pytest.mark.parametrize("skew", [-301, 301])
def test_verify_rejects_timestamps_outside_tolerance(skew: int) -> None:
    now = 1_800_000_000
    with pytest.raises(SignatureVerificationError, match="tolerance 300s"):
        verify_signature(SECRET, _headers(now + skew), BODY, now=now)
    # Inside the window, and with the check turned off, the same headers pass.
    assert verify_signature(SECRET, _headers(now + skew), BODY, tolerance=400, now=now)
    assert verify_signature(SECRET, _headers(now + skew), BODY, tolerance=None, now=now)


@pytest.mark.parametrize(
    ("header", "message"),
    [
        (None, "missing X-Gonka-Mux-Signature"),
        ("v1=abc", "no t=<timestamp>"),
        ("t=12", "no v1=<signature>"),
        ("t=soon,v1=abc", "non-numeric timestamp"),
        ("garbage", "no t=<timestamp>"),
    ],
)
def test_verify_explains_malformed_headers(header: str | None, message: str) -> None:
    headers = {} if header is None else {SIGNATURE_HEADER: header}
    with pytest.raises(SignatureVerificationError, match=re.escape(message)):
        verify_signature(SECRET, headers, BODY, tolerance=None)


def test_verify_rejects_non_ascii_signatures_cleanly() -> None:
    now = int(time.time())
    with pytest.raises(SignatureVerificationError):
        verify_signature(SECRET, {SIGNATURE_HEADER: f"t={now},v1=ünïcødé"}, BODY)


def test_rotation_any_secret_and_any_v1_may_match() -> None:
    now = int(time.time())
    old, new = "whsec_old", "whsec_new"
    both = f"t={now},v1={sign_payload(old, now, BODY)},v1={sign_payload(new, now, BODY)}"
    assert verify_signature(new, {SIGNATURE_HEADER: both}, BODY) == now
    assert verify_signature([old, "whsec_x"], {SIGNATURE_HEADER: both}, BODY) == now
    with pytest.raises(SignatureVerificationError):
        verify_signature(["whsec_x", "whsec_y"], {SIGNATURE_HEADER: both}, BODY)
    with pytest.raises(ValueError, match="at least one secret"):
        verify_signature([], {SIGNATURE_HEADER: both}, BODY)


def test_secret_hides_itself() -> None:
    secret = Secret(SECRET)
    assert SECRET not in repr(secret)
    assert SECRET not in str(secret)
    assert SECRET not in f"{secret}"
    assert secret.reveal() == SECRET
    assert secret == Secret(SECRET.encode())
    assert secret != Secret("whsec_other")
    with pytest.raises(ValueError, match="non-empty"):
        Secret("")


def test_generate_secret_is_random_and_prefixed() -> None:
    first, second = generate_secret(), generate_secret()
    assert first != second
    assert first.startswith("whsec_")
    assert len(first) >= 40
