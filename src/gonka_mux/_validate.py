"""The caller's parameters, checked before the first attempt.

A request that no endpoint could serve (a NaN in a message, a lone surrogate, a ``set``, a
``deadline`` of ``"5"``) is the caller's fault: it is refused here with
:class:`~gonka_mux.errors.InvalidRequestError`, before any endpoint is touched, so it can never
count against an endpoint's health (five such requests used to eject every healthy endpoint).

The body is serialised here exactly as openai serialises it (compact UTF-8 JSON, no NaN), and
the bytes are handed to the attempt, so checking it costs nothing extra on the common path.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from datetime import datetime
from typing import Any

from .errors import InvalidRequestError

__all__ = ["check_call", "dumps_body"]

_MAX_DEPTH = 500  # json's C encoder gives up near the recursion limit; say so in plain words


class _Encoder(json.JSONEncoder):
    """openai's own encoder: datetimes and pydantic models are serialisable too."""

    def default(self, o: Any) -> Any:
        if isinstance(o, datetime):
            return o.isoformat()
        dump = getattr(o, "model_dump", None)
        if dump is not None and callable(dump):
            return dump(exclude_unset=True, mode="json", by_alias=True)
        return super().default(o)


_encode = _Encoder(ensure_ascii=False, separators=(",", ":"), allow_nan=False).encode


def dumps_body(body: Mapping[str, Any]) -> bytes:
    """The bytes openai would send for ``body`` (raises on anything it could not send)."""
    return _encode(body).encode("utf-8")


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _positive_seconds(name: str, value: Any, *, allow_zero: bool = False) -> None:
    if not _is_number(value) or math.isnan(value) or math.isinf(value):
        raise InvalidRequestError(
            f"{name} must be a finite number of seconds, not {_shown(value)}",
            param=name,
        )
    if value < 0 or (value == 0 and not allow_zero):
        raise InvalidRequestError(
            f"{name} must be > 0 seconds (got {value!r}); leave it out for the default",
            param=name,
        )


def _shown(value: Any) -> str:
    """A short, type-first description (a wrong value may be a secret pasted in the wrong
    place, so long strings are not echoed)."""
    if isinstance(value, str):
        return f"the string {value!r}" if len(value) <= 16 else f"a string of {len(value)} chars"
    return f"{type(value).__name__} {value!r}"[:60]


def _check_options(request_options: Mapping[str, Any], options: Any) -> None:
    timeout = request_options.get("timeout")
    if timeout is not None and not _is_timeout_object(timeout):
        _positive_seconds("timeout", timeout)
    for name in ("extra_headers", "extra_query", "extra_body"):
        value = request_options.get(name)
        if value is not None and not isinstance(value, Mapping):
            raise InvalidRequestError(
                f"{name} must be a dict, not {type(value).__name__}", param=name
            )
    if options.deadline is not None:
        _positive_seconds("deadline", options.deadline)
    hedge = options.hedge
    if hedge is not None and not isinstance(hedge, bool):
        _positive_seconds("hedge", hedge, allow_zero=True)
    for name in ("session_id", "tier", "caller", "route_to"):
        value = getattr(options, name)
        if value is not None and not isinstance(value, str):
            raise InvalidRequestError(
                f"{name} must be a string, not {type(value).__name__}", param=name
            )
    cache = options.cache
    if cache is not None and not isinstance(cache, bool) and cache != "refresh":
        raise InvalidRequestError(
            f"cache must be True, False or 'refresh', not {_shown(cache)}", param="cache"
        )
    if options.metadata is not None and not isinstance(options.metadata, Mapping):
        raise InvalidRequestError(
            f"mux_metadata must be a dict, not {type(options.metadata).__name__}",
            param="mux_metadata",
        )


def _is_timeout_object(value: Any) -> bool:
    # an httpx / httpx2 Timeout, or openai's NOT_GIVEN sentinel
    return type(value).__name__ in ("Timeout", "NotGiven", "Omit")


def check_call(kind: str, body: dict[str, Any], request_options: Any, options: Any) -> bytes:
    """Refuse what no endpoint could serve; return the serialised body."""
    _check_options(request_options, options)
    model = body.get("model")
    if model is not None and (not isinstance(model, str) or not model):
        raise InvalidRequestError(
            f"model must be a non-empty string, not {_shown(model)}", param="model"
        )
    stream = body.get("stream")
    if stream is not None and not isinstance(stream, bool):
        raise InvalidRequestError(
            f"stream must be True or False, not {_shown(stream)}", param="stream"
        )
    if kind == "chat":
        messages = body.get("messages")
        if not isinstance(messages, (list, tuple)) or not messages:
            raise InvalidRequestError(
                "messages must be a non-empty list of {'role': ..., 'content': ...} dicts, "
                f"not {_shown(messages)}",
                param="messages",
            )
        for i, message in enumerate(messages):
            if not isinstance(message, Mapping) and not hasattr(message, "model_dump"):
                raise InvalidRequestError(
                    f"messages[{i}] must be a dict with 'role' and 'content', "
                    f"not {type(message).__name__}",
                    param=f"messages[{i}]",
                )
    try:
        return dumps_body(body)
    except (ValueError, TypeError, RecursionError) as exc:
        path, problem = _locate(body)
        raise InvalidRequestError(
            f"the request cannot be sent as JSON: {problem or exc} at {path or 'the body'}. "
            "Send finite numbers, valid Unicode text and only JSON types (dict, list, str, "
            "int, float, bool, None).",
            param=path,
        ) from None


def _locate(body: Any) -> tuple[str | None, str | None]:
    """Where in ``body`` the first unsendable value is (slow path: errors only)."""
    stack: list[tuple[str, Any, int]] = [("", body, 0)]
    while stack:
        path, value, depth = stack.pop()
        if depth > _MAX_DEPTH:
            return path, f"nesting deeper than {_MAX_DEPTH} levels"
        if isinstance(value, str):
            try:
                value.encode("utf-8")
            except UnicodeEncodeError:
                return path, "text that is not valid Unicode (a lone surrogate)"
        elif isinstance(value, float):
            if math.isnan(value) or math.isinf(value):
                return path, f"the number {value!r} (JSON has no NaN or infinity)"
        elif isinstance(value, Mapping):
            items = list(value.items())
            for key, item in reversed(items):
                if not isinstance(key, (str, int, float, bool)) and key is not None:
                    return path, f"a key of type {type(key).__name__}"
                child = f"{path}.{key}" if path else str(key)
                stack.append((child, item, depth + 1))
        elif isinstance(value, (list, tuple)):
            for i in range(len(value) - 1, -1, -1):
                stack.append((f"{path}[{i}]", value[i], depth + 1))
        elif (
            value is None
            or isinstance(value, (bool, int, datetime))
            or hasattr(value, "model_dump")
        ):
            continue
        else:
            return path, f"a value of type {type(value).__name__}"
    return None, None
