"""Request reading and validation helpers shared by the gateway's routes.

Only the checks the gateway needs to stay safe and to answer bad input with a clear 400 live here
(the body is a JSON object, the fields it reads have the right types, gonka_mux's own keyword
arguments cannot be smuggled in through the body). Everything else is the endpoint's to judge:
the request is relayed as it came.
"""

from __future__ import annotations

import asyncio
import json
import math
import re
from collections.abc import Mapping
from typing import Any

from starlette.requests import Request
from starlette.responses import Response

from gonka_mux.settings import MUX_KWARGS, OPTION_KWARGS

from .errors import HTTPError

__all__ = [
    "FORBIDDEN_FIELDS",
    "ID_RE",
    "check_messages",
    "check_prompt",
    "check_type",
    "dumps",
    "json_response",
    "optional_str",
    "read_json",
    "reject_forbidden",
    "require_model",
    "session_header",
]

# create() keyword arguments the Multiplexer would take out of the body and obey: over HTTP they
# would let one tenant act as another (caller), pin endpoints (route_to), inject upstream headers
# (extra_headers) or change the gateway's own timeouts, so the body may not carry them. Derived
# from the core's own lists, so a keyword argument added there is refused here by default; the
# two the gateway accepts from the body (session_id, tier) it reads and removes itself.
FORBIDDEN_FIELDS = (MUX_KWARGS | OPTION_KWARGS) - {"session_id", "tier"}

ID_RE = re.compile(r"^[\x21-\x7e]{1,256}$")


def _no_constants(name: str) -> Any:
    raise ValueError(f"{name} is not valid JSON")


# A JSON escape of a UTF-16 surrogate (\\uD800-\\uDFFF): only bodies containing one can
# decode to a string with a lone surrogate, so only those are walked.
_SURROGATE_ESCAPE = re.compile(rb"\\u[dD][89a-fA-F]")


async def _read_body(request: Request, max_bytes: int) -> bytes:
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > max_bytes:
        raise _too_large(max_bytes)
    chunks: list[bytes] = []
    size = 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > max_bytes:
            raise _too_large(max_bytes)
        chunks.append(chunk)
    return b"".join(chunks)


def _has_lone_surrogate(value: Any) -> bool:
    stack = [value]
    while stack:
        item = stack.pop()
        if isinstance(item, str):
            try:
                item.encode("utf-8")
            except UnicodeEncodeError:
                return True
        elif isinstance(item, dict):
            stack.extend(item.keys())
            stack.extend(item.values())
        elif isinstance(item, list):
            stack.extend(item)
    return False


async def read_json(
    request: Request, max_bytes: int, timeout: float | None = None
) -> dict[str, Any]:
    """The request body as a JSON object; 413 past ``max_bytes``, 408 when it takes longer
    than ``timeout`` seconds to arrive, 400 if not a JSON object of valid UTF-8 text (a lone
    surrogate, raw or escaped, anywhere in it is invalid)."""
    if timeout is None:
        raw = await _read_body(request, max_bytes)
    else:
        try:
            async with asyncio.timeout(timeout):
                raw = await _read_body(request, max_bytes)
        except TimeoutError:
            raise HTTPError(
                408,
                f"The request body did not arrive within {timeout:g} seconds.",
                code="request_timeout",
            ) from None
    if not raw.strip():
        raise HTTPError(
            400,
            "The request body is empty; send a JSON object (Content-Type: application/json).",
            code="invalid_json",
        )
    try:
        text = raw.decode("utf-8")  # strict: json.loads(bytes) would let encoded surrogates in
    except UnicodeDecodeError:
        raise HTTPError(
            400, "The request body is not valid UTF-8 text.", code="invalid_encoding"
        ) from None
    try:
        data = json.loads(text, parse_constant=_no_constants)
    except (ValueError, RecursionError):
        raise HTTPError(
            400,
            "We could not parse the JSON body of your request. The body must be a JSON object "
            "(UTF-8, no NaN or Infinity).",
            code="invalid_json",
        ) from None
    if not isinstance(data, dict):
        raise HTTPError(
            400,
            f"The request body must be a JSON object, not a JSON {type(data).__name__}.",
            code="invalid_json",
        )
    if _SURROGATE_ESCAPE.search(raw) and _has_lone_surrogate(data):
        raise HTTPError(
            400,
            "The request body contains a lone UTF-16 surrogate escape (\\ud800-\\udfff "
            "without its pair), which is not valid Unicode text.",
            code="invalid_encoding",
        )
    return data


def _too_large(max_bytes: int) -> HTTPError:
    return HTTPError(
        413,
        f"The request body is larger than the gateway accepts ({max_bytes} bytes).",
        code="request_too_large",
    )


def reject_forbidden(body: Mapping[str, Any]) -> None:
    for name in body:
        if name in FORBIDDEN_FIELDS:
            raise HTTPError(
                400,
                f"Unrecognized request argument supplied: {name}. It is a gonka_mux option "
                "that the gateway sets itself; remove it from the request body.",
                code="unknown_parameter",
                param=name,
            )


def optional_str(body: Mapping[str, Any], name: str, *, id_like: bool = False) -> str | None:
    value = body.get(name)
    if value is None:
        return None
    if not isinstance(value, str) or not value:
        raise HTTPError(
            400, f"'{name}' must be a non-empty string.", code="invalid_type", param=name
        )
    if id_like and not ID_RE.match(value):
        raise HTTPError(
            400,
            f"'{name}' must be 1-256 printable ASCII characters without spaces.",
            code="invalid_value",
            param=name,
        )
    return value


def session_header(request: Request) -> str | None:
    value = request.headers.get("x-session-id")
    if value is None:
        return None
    if not ID_RE.match(value):
        raise HTTPError(
            400,
            "The X-Session-Id header must be 1-256 printable ASCII characters without spaces.",
            code="invalid_value",
            param="X-Session-Id",
        )
    return value


def check_type(body: Mapping[str, Any], name: str, kinds: tuple[type, ...], what: str) -> None:
    """400 unless ``body[name]`` is absent, None or of one of ``kinds`` (bool is not an int)."""
    value = body.get(name)
    if value is None:
        return
    ok = isinstance(value, kinds) and not (isinstance(value, bool) and bool not in kinds)
    if ok and isinstance(value, float) and not math.isfinite(value):
        ok = False
    if not ok:
        raise HTTPError(400, f"'{name}' must be {what}.", code="invalid_type", param=name)


def require_model(body: Mapping[str, Any]) -> str:
    model = body.get("model")
    if not isinstance(model, str) or not model:
        raise HTTPError(
            400,
            "You must provide a model parameter (a non-empty string; GET /v1/models lists them).",
            code="missing_required_parameter" if model is None else "invalid_type",
            param="model",
        )
    return model


def check_messages(body: Mapping[str, Any]) -> None:
    messages = body.get("messages")
    if not isinstance(messages, list) or not messages:
        raise HTTPError(
            400,
            "'messages' must be a non-empty array of message objects.",
            code="missing_required_parameter" if messages is None else "invalid_type",
            param="messages",
        )
    for i, message in enumerate(messages):
        if not isinstance(message, dict) or not isinstance(message.get("role"), str):
            raise HTTPError(
                400,
                f"messages[{i}] must be an object with a string 'role'.",
                code="invalid_type",
                param=f"messages[{i}]",
            )
        content = message.get("content")
        if not (
            content is None
            or isinstance(content, str)
            or (isinstance(content, list) and all(isinstance(p, dict) for p in content))
        ):
            raise HTTPError(
                400,
                f"messages[{i}].content must be a string, an array of content parts, or null.",
                code="invalid_type",
                param=f"messages[{i}].content",
            )
        for field, kind, what in _MESSAGE_FIELDS:
            value = message.get(field)
            if value is not None and not kind(value):
                raise HTTPError(
                    400,
                    f"messages[{i}].{field} must be {what}.",
                    code="invalid_type",
                    param=f"messages[{i}].{field}",
                )


_MESSAGE_FIELDS = (
    ("name", lambda v: isinstance(v, str), "a string"),
    ("tool_call_id", lambda v: isinstance(v, str), "a string"),
    (
        "tool_calls",
        lambda v: isinstance(v, list) and all(isinstance(c, dict) for c in v),
        "an array of tool call objects",
    ),
)


def check_prompt(body: Mapping[str, Any], name: str) -> None:
    """OpenAI's token-or-text input (``prompt``, ``input``): a string, or a non-empty array of
    strings, of token ids, or of arrays of token ids. Anything else would reach the endpoint
    and could make it fail for every tenant, so it stops here."""
    value = body.get(name)
    if isinstance(value, str):
        return
    if isinstance(value, list) and value:
        if all(isinstance(v, str) for v in value) or all(_is_token(v) for v in value):
            return
        if all(isinstance(v, list) and v and all(_is_token(t) for t in v) for v in value):
            return
    raise HTTPError(
        400,
        f"'{name}' must be a string, or a non-empty array of strings, of token ids, or of "
        "arrays of token ids.",
        code="missing_required_parameter" if value is None else "invalid_type",
        param=name,
    )


def _is_token(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0


def _finite(value: Any) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_finite(v) for v in value]
    return value


def dumps(payload: Any) -> str:
    """Strict JSON text: a non-finite float (NaN, Infinity) becomes null, never a bare token
    that JSON parsers refuse."""
    try:
        return json.dumps(payload, ensure_ascii=False, default=str, allow_nan=False)
    except ValueError:
        return json.dumps(_finite(payload), ensure_ascii=False, default=str, allow_nan=False)


def json_response(
    payload: Any, status: int = 200, headers: Mapping[str, str] | None = None
) -> Response:
    """A JSON response from an openai model object (only the fields set) or plain data."""
    if hasattr(payload, "model_dump_json"):
        # warnings=False: an endpoint's base64 embeddings are a str where openai's type says
        # list[float]; they are relayed as they came.
        content = payload.model_dump_json(exclude_unset=True, warnings=False)
    else:
        content = dumps(payload)
    return Response(content, status_code=status, headers=headers, media_type="application/json")
