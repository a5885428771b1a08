"""Every gateway error as OpenAI's error JSON: ``{"error": {"message", "type", "param", "code"}}``.

:func:`error_response` turns any exception raised while serving a request into that body with the
right status: gonka_mux's own HTTP-shaped errors (``.status_code`` and ``.to_dict()``), openai's
``APIStatusError`` s relayed from an endpoint (``.status_code`` and ``.body``), bad input
(:class:`HTTPError`, ``ValueError``/``TypeError`` raised by the library on the caller's
parameters) and, last, unexpected bugs (500, with no detail leaked).
"""

from __future__ import annotations

import json
import logging
import math
from collections.abc import Mapping
from typing import Any

import openai
from starlette.responses import Response

from gonka_mux.errors import AllEndpointsUnauthorized, GonkaMuxError, StoreUnavailableError

__all__ = ["HTTPError", "error_body", "error_response", "error_status"]

log = logging.getLogger("gonka_mux.gateway")

_TYPES = {
    400: "invalid_request_error",
    401: "authentication_error",
    403: "permission_error",
    404: "not_found_error",
    405: "invalid_request_error",
    409: "conflict_error",
    413: "invalid_request_error",
    415: "invalid_request_error",
    422: "invalid_request_error",
    429: "rate_limit_exceeded",
    501: "not_implemented",
    502: "server_error",
    503: "service_unavailable",
    504: "timeout_error",
}


class HTTPError(Exception):
    """An error the gateway itself answers (bad input, auth, not found), OpenAI-shaped."""

    def __init__(
        self,
        status: int,
        message: str,
        *,
        code: str | None = None,
        param: str | None = None,
        type: str | None = None,
        headers: Mapping[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.status_code = status
        self.message = message
        self.code = code
        self.param = param
        self.type = type or _TYPES.get(status, "invalid_request_error")
        self.headers = dict(headers or {})

    def to_dict(self) -> dict[str, Any]:
        return {
            "error": {
                "message": self.message,
                "type": self.type,
                "param": self.param,
                "code": self.code,
            }
        }


def _upstream_body(exc: Any, status: int) -> dict[str, Any]:
    body = getattr(exc, "body", None)
    if isinstance(body, Mapping) and isinstance(body.get("error"), Mapping):
        body = body["error"]
    message = getattr(exc, "message", None) or str(exc)
    if isinstance(body, Mapping) and isinstance(body.get("message"), str):
        message = body["message"]
    error = {
        "message": message,
        "type": getattr(exc, "type", None) or _TYPES.get(status, "api_error"),
        "param": getattr(exc, "param", None),
        "code": getattr(exc, "code", None),
    }
    return {"error": error}


def _classify(exc: BaseException) -> tuple[int, dict[str, Any], dict[str, str]]:
    headers: dict[str, str] = {}
    if isinstance(exc, HTTPError):
        return exc.status_code, exc.to_dict(), exc.headers
    status = getattr(exc, "status_code", None)
    to_dict = getattr(exc, "to_dict", None)
    response = getattr(exc, "response", None)
    retry_after = None
    if response is not None:
        try:
            retry_after = response.headers.get("retry-after")
        except Exception:
            retry_after = None
    if isinstance(status, int) and 400 <= status <= 599:
        ours = callable(to_dict) and type(exc).__module__.startswith("gonka_mux")
        if ours and not isinstance(exc, AllEndpointsUnauthorized):
            body = to_dict()
        elif status in (401, 403, 407):
            # The endpoint refused the gateway's own upstream credentials: not the caller's
            # fault, and the caller's key is fine, so do not answer 401.
            status = 502
            body = HTTPError(
                502,
                "An upstream endpoint rejected the gateway's credentials; the gateway "
                "operator must fix the endpoint's API key.",
                code="upstream_auth_failed",
            ).to_dict()
        else:
            body = _upstream_body(exc, status)
        if retry_after and status in (429, 503):
            headers["Retry-After"] = str(retry_after)
        elif status == 429:
            # Every 429 tells the client when to come back, even when the library did not say.
            seconds = getattr(exc, "retry_after", None)
            headers["Retry-After"] = str(max(1, math.ceil(seconds))) if seconds else "1"
        return status, body, headers
    if isinstance(exc, StoreUnavailableError):
        # A shared store (the key database, sessions, memory) is away for a moment: the caller
        # may retry, and the operator sees one warning line (the store logged it), no traceback.
        headers["Retry-After"] = str(max(1, math.ceil(exc.retry_after)))
        body = HTTPError(
            503,
            "A store the gateway depends on is unavailable right now; retry shortly.",
            code="store_unavailable",
        ).to_dict()
        return 503, body, headers
    if isinstance(exc, openai.APITimeoutError):
        return 504, _upstream_body(exc, 504), headers
    if isinstance(exc, openai.APIConnectionError):
        return 502, _upstream_body(exc, 502), headers
    if isinstance(exc, GonkaMuxError) and isinstance(exc, (ValueError, LookupError)):
        # ConfigError (an unknown tier), TieringError and similar: the caller's input.
        return 400, HTTPError(400, str(exc), code="invalid_request").to_dict(), headers
    if isinstance(exc, (ValueError, TypeError)):
        return 400, HTTPError(400, str(exc), code="invalid_request").to_dict(), headers
    log.error("unexpected error while serving a request", exc_info=exc)
    body = HTTPError(
        500,
        "The gateway failed while handling your request; the error is in its log.",
        type="server_error",
        code="internal_error",
    ).to_dict()
    return 500, body, headers


def error_status(exc: BaseException) -> int:
    return _classify(exc)[0]


def error_body(exc: BaseException) -> dict[str, Any]:
    """The OpenAI error body for ``exc`` (also sent as an SSE event when a stream breaks)."""
    return _classify(exc)[1]


def error_response(exc: BaseException) -> Response:
    status, body, headers = _classify(exc)
    return Response(
        json.dumps(body, ensure_ascii=False, default=str),
        status_code=status,
        headers=headers,
        media_type="application/json",
    )
