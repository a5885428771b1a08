"""Exceptions raised by gonka_mux.

HTTP-shaped failures subclass openai's own exception classes, so code written against the OpenAI
client (``except openai.RateLimitError``) keeps working, and every one of them renders the OpenAI
error JSON body through :meth:`MuxErrorMixin.to_dict`. Messages say what to do next.

This module imports openai, which is slow to import: ``gonka_mux/__init__`` loads it lazily.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import openai

from ._exceptions import ConfigError, GonkaMuxError, StoreUnavailableError

try:  # openai 3.x is built on httpx2, openai 2.x on httpx.
    import httpx2 as _http  # type: ignore[import-not-found]

    if not openai.__version__.startswith("3"):
        raise ImportError
except ImportError:  # pragma: no cover - exercised in the openai 2.x CI leg
    import httpx as _http  # type: ignore[no-redef]

__all__ = [
    "AllEndpointsFailed",
    "AllEndpointsForbidden",
    "AllEndpointsRateLimited",
    "AllEndpointsUnauthorized",
    "Attempt",
    "ConfigError",
    "ContextLengthExceeded",
    "DeadlineExceeded",
    "GonkaMuxError",
    "InvalidRequestError",
    "ModelNotFound",
    "MuxErrorMixin",
    "NoEndpointAvailable",
    "RateLimitError",
    "StoreUnavailableError",
    "StreamInterrupted",
    "make_status_error",
]

_LOCAL_URL = "http://gonka-mux.local/v1/chat/completions"

_STATUS_TYPES: dict[int, str] = {
    400: "invalid_request_error",
    401: "authentication_error",
    402: "insufficient_quota",
    403: "permission_error",
    404: "not_found_error",
    408: "timeout_error",
    409: "conflict_error",
    410: "gone_error",
    422: "invalid_request_error",
    429: "rate_limit_exceeded",
    500: "server_error",
    502: "server_error",
    503: "service_unavailable",
    504: "timeout_error",
}


class MuxErrorMixin:
    """Adds the OpenAI error body to gonka_mux's HTTP-shaped errors."""

    message: str
    status_code: int
    code: str | None
    type: str | None
    param: str | None

    def to_dict(self) -> dict[str, Any]:
        """The OpenAI error JSON body: ``{"error": {"message", "type", "param", "code"}}``."""
        return {
            "error": {
                "message": self.message,
                "type": self.type or _STATUS_TYPES.get(self.status_code, "api_error"),
                "param": getattr(self, "param", None),
                "code": self.code,
            }
        }

    def to_json(self) -> str:
        return json.dumps(self.to_dict())


def _synthetic_response(
    status: int, body: Mapping[str, Any], headers: Mapping[str, str] | None = None
) -> Any:
    request = _http.Request("POST", _LOCAL_URL)
    return _http.Response(status, request=request, json=dict(body), headers=dict(headers or {}))


def _init_status_error(
    exc: Any,
    status: int,
    message: str,
    *,
    code: str | None,
    type_: str | None,
    headers: Mapping[str, str] | None,
    param: str | None = None,
) -> None:
    body = {
        "message": message,
        "type": type_ or _STATUS_TYPES.get(status, "api_error"),
        "param": param,
        "code": code,
    }
    response = _synthetic_response(status, {"error": body}, headers)
    openai.APIStatusError.__init__(exc, message, response=response, body=body)


_BASE_BY_STATUS: dict[int, type[openai.APIStatusError]] = {
    400: openai.BadRequestError,
    401: openai.AuthenticationError,
    403: openai.PermissionDeniedError,
    404: openai.NotFoundError,
    409: openai.ConflictError,
    422: openai.UnprocessableEntityError,
    429: openai.RateLimitError,
}


_status_classes: dict[type, type] = {}


def _status_class(base: type[openai.APIStatusError]) -> type:
    cls = _status_classes.get(base)
    if cls is None:
        cls = type(base.__name__, (MuxErrorMixin, base), {"__module__": __name__})
        _status_classes[base] = cls
    return cls


def make_status_error(
    status: int,
    message: str,
    *,
    code: str | None = None,
    type: str | None = None,
    headers: Mapping[str, str] | None = None,
    param: str | None = None,
) -> openai.APIStatusError:
    """Build an openai-compatible status error raised locally (no upstream response)."""
    if status >= 500:
        base: type[openai.APIStatusError] = openai.InternalServerError
    else:
        base = _BASE_BY_STATUS.get(status, openai.APIStatusError)
    exc = _status_class(base).__new__(_status_class(base))
    _init_status_error(exc, status, message, code=code, type_=type, headers=headers, param=param)
    return exc


class RateLimitError(MuxErrorMixin, openai.RateLimitError):
    """A local rate limit (a caller key or tier) refused the request.

    ``retry_after`` is the number of seconds after which the same request would be admitted.
    """

    def __init__(self, message: str, *, retry_after: float, code: str = "rate_limit_exceeded"):
        self.retry_after = max(0.0, float(retry_after))
        header = str(max(1, int(-(-self.retry_after // 1))))
        _init_status_error(
            self,
            429,
            message,
            code=code,
            type_="rate_limit_exceeded",
            headers={"Retry-After": header},
        )


@dataclass(frozen=True)
class Attempt:
    """One upstream attempt made while serving a request."""

    endpoint: str
    status: int | None
    reason: str
    elapsed: float
    hedge: bool = False
    fault: str | None = None  # whose fault a failed attempt was (routing.outcome.Fault)

    def describe(self) -> str:
        status = f"HTTP {self.status}" if self.status is not None else "no response"
        hedge = " (hedge)" if self.hedge else ""
        return f"{self.endpoint}{hedge}: {status}, {self.reason} after {self.elapsed * 1000:.0f} ms"


def _attempts_text(attempts: Sequence[Attempt]) -> str:
    return "; ".join(a.describe() for a in attempts) if attempts else "no attempt was made"


class AllEndpointsFailed(MuxErrorMixin, openai.InternalServerError):
    """Every endpoint tried for the request failed; ``attempts`` lists each one."""

    default_status = 503

    def __init__(
        self,
        model: str,
        attempts: Sequence[Attempt],
        *,
        hint: str = "",
        status: int | None = None,
        headers: Mapping[str, str] | None = None,
    ) -> None:
        self.model = model
        self.attempts = list(attempts)
        message = (
            f"All endpoints for model {model!r} failed ({len(self.attempts)} attempt(s): "
            f"{_attempts_text(self.attempts)})."
        )
        message += " " + (
            hint
            or "Check the endpoints with mux.stats(), add more endpoints or a fallback tier, "
            "or raise the deadline/retry budget."
        )
        _init_status_error(
            self,
            status or self.default_status,
            message,
            code="all_endpoints_failed",
            type_="rate_limit_exceeded" if self.default_status == 429 else "service_unavailable",
            headers=headers,
        )


class AllEndpointsRateLimited(AllEndpointsFailed, openai.RateLimitError):  # type: ignore[misc]
    """Every endpoint tried answered 429 or is cooling down after one."""

    default_status = 429


class NoEndpointAvailable(AllEndpointsFailed):
    """The pool for the model exists but every endpoint is ejected, cooling down or full."""


class AllEndpointsUnauthorized(MuxErrorMixin, openai.AuthenticationError):
    """Every endpoint tried refused our credentials (401/402/403); each is now quarantined.

    ``attempts`` lists them. The message names the endpoints, never a key.
    """

    status = 401

    def __init__(
        self,
        model: str,
        attempts: Sequence[Attempt],
        *,
        quarantined: Sequence[str] = (),
        code: str | None = None,
    ) -> None:
        self.model = model
        self.attempts = list(attempts)
        self.endpoints = list(dict.fromkeys([*(a.endpoint for a in self.attempts), *quarantined]))
        names = ", ".join(self.endpoints) or "none"
        if self.attempts:
            what = f"refused the credentials gonka_mux sent ({_attempts_text(self.attempts)})"
        else:
            what = "is quarantined after refusing the credentials gonka_mux sent"
        message = (
            f"Every endpoint for model {model!r} {what}. Check the api_key (or signing key) "
            f"configured for: {names}. They are probed again after their quarantine; "
            "mux.mark_ready(name) puts a fixed endpoint back at once."
        )
        _init_status_error(
            self,
            self.status,
            message,
            code=code or "all_endpoints_unauthorized",
            type_="authentication_error" if self.status == 401 else "permission_error",
            headers=None,
        )

    @classmethod
    def for_status(
        cls, status: int, model: str, attempts: Sequence[Attempt], *, code: str | None = None
    ) -> AllEndpointsUnauthorized:
        """403s from every endpoint give :class:`AllEndpointsForbidden` (also an
        ``openai.PermissionDeniedError``), anything else this class (HTTP 401)."""
        kind = AllEndpointsForbidden if status == 403 else cls
        return kind(model, attempts, code=code if isinstance(code, str) else None)


class AllEndpointsForbidden(AllEndpointsUnauthorized, openai.PermissionDeniedError):  # type: ignore[misc]
    """Every endpoint tried answered 403: the same as :class:`AllEndpointsUnauthorized`, and an
    ``openai.PermissionDeniedError`` like the plain client's."""

    status = 403


class InvalidRequestError(MuxErrorMixin, openai.BadRequestError, ValueError):  # type: ignore[misc]
    """The request itself is wrong: a bad parameter of the caller, or a 400/413/422 that an
    endpoint gave and any other would give too. Raised at once; no endpoint is blamed.

    ``param`` names the offending parameter when known (``"messages[0].content"``);
    ``endpoint`` is the endpoint that refused it (None when refused before sending).
    """

    def __init__(
        self,
        message: str,
        *,
        param: str | None = None,
        endpoint: str | None = None,
        status: int = 400,
        code: str | None = "invalid_request",
    ) -> None:
        self.endpoint = endpoint
        _init_status_error(
            self,
            status,
            message,
            code=code,
            type_="invalid_request_error",
            headers=None,
            param=param,
        )
        self.param = param


class ModelNotFound(MuxErrorMixin, openai.NotFoundError):
    """No endpoint serves the requested model (or alias)."""

    def __init__(
        self,
        model: str,
        known: Sequence[str],
        *,
        attempts: Sequence[Attempt] = (),
        code: str | None = None,
    ) -> None:
        self.model = model
        self.attempts = list(attempts)
        shown = ", ".join(sorted(known)[:20]) or "none"
        if self.attempts:
            message = (
                f"No endpoint serves model {model!r}: every endpoint tried answered 404 "
                f"({_attempts_text(self.attempts)}). Check that each base URL ends with /v1 "
                "and that the endpoint serves this model; they are out of this model's pool "
                f"until mux.mark_ready(name). Known models: {shown}."
            )
        else:
            message = (
                f"No endpoint serves model {model!r}. Known models: {shown}. "
                "Register one with mux.add_endpoint(..., models=[...]) or add an alias."
            )
        _init_status_error(
            self,
            404,
            message,
            code=code if isinstance(code, str) else "model_not_found",
            type_="invalid_request_error",
            headers=None,
        )


class ContextLengthExceeded(MuxErrorMixin, openai.BadRequestError):
    """The prompt does not fit the model's context window and no larger fallback is configured."""

    def __init__(self, message: str) -> None:
        _init_status_error(
            self,
            400,
            message,
            code="context_length_exceeded",
            type_="invalid_request_error",
            headers=None,
        )


class DeadlineExceeded(MuxErrorMixin, openai.APITimeoutError):
    """The caller's overall deadline passed before any endpoint answered."""

    status_code = 504

    def __init__(self, model: str, deadline: float, attempts: Sequence[Attempt]) -> None:
        self.model = model
        self.deadline = deadline
        self.attempts = list(attempts)
        openai.APITimeoutError.__init__(self, request=_http.Request("POST", _LOCAL_URL))
        self.code, self.type, self.param = "deadline_exceeded", "timeout_error", None
        self.message = (
            f"The request for model {model!r} did not complete within its {deadline:g} s deadline "
            f"({_attempts_text(self.attempts)}). Raise `deadline=`, or check slow endpoints with "
            "mux.stats()."
        )
        self.args = (self.message,)

    def __str__(self) -> str:
        return self.message


class StreamInterrupted(MuxErrorMixin, openai.APIConnectionError):
    """A stream broke after the caller had received output, so it was not retried.

    ``partial`` holds what arrived: ``content``, ``reasoning`` and ``tool_calls`` assembled from
    the chunks (the caller may resend the request knowing this).
    """

    status_code = 502

    def __init__(self, endpoint: str, reason: str, partial: Mapping[str, Any]) -> None:
        self.endpoint = endpoint
        self.reason = reason
        self.partial = dict(partial)
        openai.APIConnectionError.__init__(
            self, message="stream interrupted", request=_http.Request("POST", _LOCAL_URL)
        )
        self.code, self.type, self.param = "stream_interrupted", "api_error", None
        chars = len(self.partial.get("content") or "")
        self.message = (
            f"The stream from {endpoint} broke after {chars} characters of output ({reason}); it "
            "was not retried because you had already received part of it. The partial output is "
            "in `.partial`; resend the request if you want a new answer."
        )
        self.args = (self.message,)

    def __str__(self) -> str:
        return self.message
