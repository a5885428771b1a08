"""Webhook signatures: HMAC-SHA256 over ``"{timestamp}.{body}"``, in the style of Stripe's.

Every delivery carries three headers::

    X-Gonka-Mux-Signature: t=1767225600,v1=5257a869e7ecebeda32affa62cdca3fa51cad7e77a0e56ff...
    X-Gonka-Mux-Delivery:  4f1c1d0e-0a3c-4c8e-9a4e-2b8f7f0b8e7e  (same on every retry)
    X-Gonka-Mux-Event:     job.completed | job.failed

``v1`` is ``hex(hmac_sha256(secret, f"{t}.".encode() + body))`` over the exact body bytes (64 hex
digits). A receiver checks it with :func:`verify_signature`, which also rejects timestamps more
than ``tolerance`` seconds away from its clock (replay protection). The timestamp is fresh on
every attempt; the body and the delivery id are not, so receivers dedupe on the delivery id.

Receivers that do not use Python verify the same way: split the header on ``,``, take ``t`` and
every ``v1``, compute the HMAC of ``t + "." + raw_body`` with the shared secret and compare in
constant time.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets as _secrets
import time
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from gonka_mux._exceptions import GonkaMuxError

__all__ = [
    "DEFAULT_TOLERANCE",
    "DELIVERY_HEADER",
    "EVENT_HEADER",
    "SIGNATURE_HEADER",
    "Secret",
    "SignatureVerificationError",
    "generate_secret",
    "sign_payload",
    "signature_header",
    "verify_signature",
    "webhook_headers",
]

SIGNATURE_HEADER = "X-Gonka-Mux-Signature"
DELIVERY_HEADER = "X-Gonka-Mux-Delivery"
EVENT_HEADER = "X-Gonka-Mux-Event"
#: Seconds a signature's timestamp may differ from the receiver's clock.
DEFAULT_TOLERANCE = 300
_SCHEME = "v1"


class SignatureVerificationError(GonkaMuxError, ValueError):
    """A webhook's signature is missing, malformed, stale or does not match (reject it: 400)."""


class Secret:
    """A webhook secret that never shows itself in ``repr``/``str``/logs. ``reveal()`` to use it."""

    __slots__ = ("_value",)

    def __init__(self, value: str | bytes | Secret) -> None:
        if isinstance(value, Secret):
            value = value.reveal()
        if isinstance(value, bytes):
            try:
                value = value.decode("utf-8")
            except UnicodeDecodeError:
                raise ValueError("a webhook secret must be UTF-8 text") from None
        if not isinstance(value, str) or not value:
            raise ValueError("a webhook secret must be a non-empty string")
        self._value = value

    def reveal(self) -> str:
        return self._value

    def __repr__(self) -> str:
        return "Secret('**********')"

    __str__ = __repr__

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Secret):
            return NotImplemented
        return hmac.compare_digest(self._value.encode(), other._value.encode())

    def __hash__(self) -> int:
        return hash(self._value)


SecretLike = str | bytes | Secret


def generate_secret() -> str:
    """A fresh random secret suitable for ``webhook_secret`` (``whsec_`` + 43 url-safe chars)."""
    return "whsec_" + _secrets.token_urlsafe(32)


def _key(secret: SecretLike) -> bytes:
    return Secret(secret).reveal().encode("utf-8")


def _body_bytes(body: bytes | str) -> bytes:
    return body.encode("utf-8") if isinstance(body, str) else bytes(body)


def sign_payload(secret: SecretLike, timestamp: int, body: bytes | str) -> str:
    """``hex(hmac_sha256(secret, f"{timestamp}." + body))``."""
    message = str(int(timestamp)).encode("ascii") + b"." + _body_bytes(body)
    return hmac.new(_key(secret), message, hashlib.sha256).hexdigest()


def signature_header(secret: SecretLike, timestamp: int, body: bytes | str) -> str:
    """The ``X-Gonka-Mux-Signature`` value: ``t=<timestamp>,v1=<hex>``."""
    return f"t={int(timestamp)},{_SCHEME}={sign_payload(secret, timestamp, body)}"


def webhook_headers(
    secret: SecretLike,
    body: bytes | str,
    *,
    delivery_id: str,
    event: str,
    timestamp: int | None = None,
) -> dict[str, str]:
    """All headers of one delivery attempt (signature, delivery id, event, content type)."""
    ts = int(time.time()) if timestamp is None else int(timestamp)
    return {
        "Content-Type": "application/json",
        SIGNATURE_HEADER: signature_header(secret, ts, body),
        DELIVERY_HEADER: delivery_id,
        EVENT_HEADER: event,
    }


def _get_header(headers: Any, name: str) -> str | None:
    """Case-insensitive lookup over a dict, httpx/Starlette headers or http.server's Message."""
    value = headers.get(name) if hasattr(headers, "get") else None
    if value is not None:
        return str(value)
    items: Iterable[Any] = headers.items() if hasattr(headers, "items") else headers
    wanted = name.lower()
    for key, item in items:
        if isinstance(key, bytes):
            key = key.decode("latin-1")
        if str(key).lower() == wanted:
            return item.decode("latin-1") if isinstance(item, bytes) else str(item)
    return None


def _parse(header: str) -> tuple[int, list[str]]:
    timestamp: int | None = None
    signatures: list[str] = []
    for part in header.split(","):
        key, sep, value = part.strip().partition("=")
        if not sep:
            continue
        if key == "t":
            try:
                timestamp = int(value)
            except ValueError:
                raise SignatureVerificationError(
                    f"{SIGNATURE_HEADER} has a non-numeric timestamp"
                ) from None
        elif key == _SCHEME:
            signatures.append(value.strip())
    if timestamp is None:
        raise SignatureVerificationError(f"{SIGNATURE_HEADER} has no t=<timestamp>")
    if not signatures:
        raise SignatureVerificationError(f"{SIGNATURE_HEADER} has no {_SCHEME}=<signature>")
    return timestamp, signatures


def verify_signature(
    secret: SecretLike | Sequence[SecretLike],
    headers: Mapping[str, Any] | Iterable[tuple[Any, Any]],
    body: bytes | str,
    tolerance: float | None = DEFAULT_TOLERANCE,
    *,
    now: float | None = None,
) -> int:
    """Check one delivery; return its signed timestamp or raise :class:`SignatureVerificationError`.

    ``secret`` may be a list (accept any, for rotating secrets). ``body`` must be the raw request
    bytes, before any JSON parsing. ``tolerance=None`` skips the timestamp check (not advised).
    """
    header = _get_header(headers, SIGNATURE_HEADER)
    if header is None:
        raise SignatureVerificationError(f"missing {SIGNATURE_HEADER} header")
    timestamp, signatures = _parse(header)
    if tolerance is not None:
        current = time.time() if now is None else now
        if abs(current - timestamp) > tolerance:
            raise SignatureVerificationError(
                f"signature timestamp {timestamp} is {abs(current - timestamp):.0f}s away from now "
                f"(tolerance {tolerance:g}s): a replay, or a clock out of sync"
            )
    keys = [secret] if isinstance(secret, (str, bytes, Secret)) else list(secret)
    if not keys:
        raise ValueError("verify_signature needs at least one secret")
    for key in keys:
        expected = sign_payload(key, timestamp, body).encode("ascii")
        if any(hmac.compare_digest(expected, c.encode("utf-8", "replace")) for c in signatures):
            return timestamp
    raise SignatureVerificationError(
        "no signature matches: wrong secret, or the body was changed (verify the raw bytes)"
    )
