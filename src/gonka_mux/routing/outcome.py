"""What an upstream failure means for routing: whose fault it is, and what the router does.

Every failed attempt is put in exactly one :class:`Fault` class, decided here and nowhere else:

=============  ==========================================  =====================================
fault          examples                                    what the Multiplexer does
=============  ==========================================  =====================================
caller         a 400/413/422 any endpoint would give       raise at once; no endpoint's health
                                                           changes
credentials    401, 403, 402 (this endpoint's key or       quarantine the endpoint (long
               account)                                    cooldown), log once, fail over
transient      429, 408/409, 5xx, connect errors,          cooldown/ejection (429 honours
               timeouts, truncated or malformed replies    Retry-After), fail over
gone           404 for the model, 410                      out of rotation until its source
                                                           marks it ready again; fail over
=============  ==========================================  =====================================

The caller's own malformed parameters never reach this module: they are refused before the
first attempt (``gonka_mux._validate``). The caller's deadline is decided by the pipeline.
"""

from __future__ import annotations

import email.utils
import enum
import time
from dataclasses import dataclass
from typing import Any

__all__ = ["ErrorPolicy", "Failure", "Fault", "parse_retry_after"]


class Fault(str, enum.Enum):
    """Whose fault a failed attempt is (see the module docstring for what follows from each)."""

    CALLER = "caller"
    CREDENTIALS = "credentials"
    TRANSIENT = "transient"
    GONE = "gone"
    DEADLINE = "deadline"


_TRANSIENT_KINDS = frozenset({"rate_limited", "server_error", "timeout", "connection", "malformed"})

_CONTEXT_MARKERS = (
    "context_length_exceeded",
    "maximum context length",
    "context length",
    "context window",
    "too many tokens",
    "prompt is too long",
)


def parse_retry_after(value: str | None, now_wall: float | None = None) -> float | None:
    """Seconds to wait from a ``Retry-After`` header: delta-seconds or an HTTP date."""
    if not value:
        return None
    value = value.strip()
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError, IndexError):
        return None
    if when is None:
        return None
    return max(0.0, when.timestamp() - (time.time() if now_wall is None else now_wall))


@dataclass
class Failure:
    """A classified failed attempt.

    ``kind`` is one of: rate_limited, server_error, timeout, connection, malformed,
    client_error, context_length, auth, payment, gone. ``fault`` says whose fault it is; when
    a policy does not say, it follows from ``kind`` (auth/payment: credentials; gone or
    ``remove_endpoint``: gone; client_error/context_length: caller unless retryable).
    """

    kind: str
    status: int | None
    retryable: bool
    error: BaseException
    retry_after: float | None = None
    penalize: bool = True  # counts against the endpoint's health
    remove_endpoint: bool = False
    body: str | None = None  # the upstream body, for the deterministic-failure check
    message: str = ""
    fault: Fault | None = None

    def __post_init__(self) -> None:
        if self.fault is None:
            self.fault = _fault_of(self)


def _fault_of(failure: Failure) -> Fault:
    kind = failure.kind
    if kind in _TRANSIENT_KINDS:
        return Fault.TRANSIENT
    if failure.remove_endpoint or kind == "gone":
        return Fault.GONE
    if kind in ("auth", "payment"):
        return Fault.CREDENTIALS
    if kind in ("client_error", "context_length"):
        # a retryable client error (a stale signature timestamp) is the endpoint's business
        return Fault.TRANSIENT if failure.retryable else Fault.CALLER
    return Fault.TRANSIENT


def _body_text(exc: Any) -> str | None:
    body = getattr(exc, "body", None)
    if body is None:
        response = getattr(exc, "response", None)
        try:
            return response.text if response is not None else None
        except Exception:
            return None
    return str(body)


class ErrorPolicy:
    """Default mapping of openai exceptions to routing decisions (the table above).

    Retryable (another endpoint is tried): 429, 408, 409, 5xx, connection errors, timeouts,
    malformed responses, 401/402/403 (that endpoint's credentials), 404/410 (that endpoint
    does not serve the model any more) and any other 4xx we do not know (assume it is that
    endpoint's, not the world's). Not retryable: 400, 413, 422 -- the request itself is wrong.
    A context-length 400 is its own kind so the router can send it to a larger-context
    fallback model.
    Subclass it for networks with their own error semantics (see ``gonka_mux.gonka``).
    """

    # identical 5xx bodies twice within one request mean a deterministic failure
    stop_on_repeated_5xx_body = False

    def classify(self, exc: BaseException) -> Failure:
        # Lazy: gonka_mux.routing (pure logic, loaded by gonka_mux.settings and .endpoint) does
        # not import openai; at the top it would add ~0.35 s to importing it.
        import openai

        if isinstance(exc, openai.APITimeoutError):
            return Failure("timeout", None, True, exc, message="timed out")
        if isinstance(exc, openai.APIConnectionError):
            return Failure("connection", None, True, exc, message=_short(exc) or "connection error")
        if isinstance(exc, openai.APIStatusError):
            return self.classify_status(exc, exc.status_code, _body_text(exc))
        if isinstance(exc, openai.APIResponseValidationError):
            return Failure("malformed", None, True, exc, message="malformed response")
        if isinstance(exc, (ValueError, KeyError, TypeError)):  # JSON decode errors and friends
            return Failure("malformed", None, True, exc, message=f"malformed response: {exc}")
        return Failure("connection", None, True, exc, message=_short(exc) or type(exc).__name__)

    def classify_status(self, exc: Any, status: int, body: str | None) -> Failure:
        text = (body or "").lower()
        if status == 429:
            headers = getattr(getattr(exc, "response", None), "headers", None) or {}
            retry_after = parse_retry_after(headers.get("retry-after"))
            return Failure(
                "rate_limited",
                429,
                True,
                exc,
                retry_after=retry_after,
                body=body,
                message="rate limited",
            )
        if status in (408, 409) or status >= 500:
            kind = "timeout" if status in (408, 504) else "server_error"
            return Failure(kind, status, True, exc, body=body, message=f"HTTP {status}")
        if status in (400, 413, 422) and any(m in text for m in _CONTEXT_MARKERS):
            return Failure(
                "context_length",
                status,
                False,
                exc,
                penalize=False,
                body=body,
                message="context length exceeded",
            )
        if status in (401, 403):
            return Failure(
                "auth",
                status,
                True,
                exc,
                penalize=False,
                body=body,
                message=f"HTTP {status}: credentials refused",
                fault=Fault.CREDENTIALS,
            )
        if status == 402:
            return Failure(
                "payment",
                status,
                True,
                exc,
                penalize=False,
                body=body,
                message="HTTP 402: payment required",
                fault=Fault.CREDENTIALS,
            )
        if status in (404, 410):
            what = "model not served (404)" if status == 404 else "endpoint gone (410)"
            return Failure(
                "gone", status, True, exc, penalize=False, body=body, message=what, fault=Fault.GONE
            )
        if status in (400, 413, 422):
            return Failure(
                "client_error",
                status,
                False,
                exc,
                penalize=False,
                body=body,
                message=f"HTTP {status}",
                fault=Fault.CALLER,
            )
        # An unknown 4xx: assume it is that endpoint's problem, not the request's.
        return Failure("server_error", status, True, exc, body=body, message=f"HTTP {status}")


def _short(exc: BaseException) -> str:
    text = str(exc)
    return text if len(text) <= 200 else text[:197] + "..."
