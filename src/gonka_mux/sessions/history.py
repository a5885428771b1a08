"""Pure functions over chat histories: normalizing messages, telling new request messages from
ones already stored, estimating tokens, and trimming a history to a context window."""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any

from gonka_mux.sessions.base import InvalidSessionData, Message

__all__ = [
    "INSTRUCTION_ROLES",
    "as_message",
    "estimate_tokens",
    "estimate_tools_tokens",
    "for_sending",
    "new_messages",
    "same_messages",
    "split_instructions",
    "trim_history",
]

INSTRUCTION_ROLES = frozenset({"system", "developer"})
# Fields a chat completions request accepts in a message. Stored replies may carry more
# (reasoning_content, annotations, audio...); OpenAI rejects unknown fields, so they stay stored
# but are not sent back.
_SENDABLE = frozenset({"role", "content", "name", "tool_calls", "tool_call_id", "function_call"})
_MESSAGE_OVERHEAD = 4  # role and separators in the chat template
_MEDIA_TOKENS = 1024  # an image or audio part: no way to know without the model's processor
TokenEstimator = Callable[[Mapping[str, Any]], int]


def as_message(obj: Any) -> Message:
    """A plain dict from a message dict or an openai message object (``ChatCompletionMessage``)."""
    if isinstance(obj, Mapping):
        message = dict(obj)
    elif hasattr(obj, "model_dump"):
        message = obj.model_dump(exclude_none=True)
        if message.get("role") == "assistant":
            message.setdefault("content", None)
    else:
        raise InvalidSessionData(
            "A message must be a dict like {'role': 'user', 'content': '...'} or an openai "
            f"message object, not {type(obj).__name__}."
        )
    if not isinstance(message.get("role"), str):
        raise InvalidSessionData(f"A message needs a 'role' string; got keys {sorted(message)}.")
    return message


def split_instructions(messages: Sequence[Message]) -> tuple[list[Message], list[Message]]:
    """The leading system/developer messages (the system prompt) and the rest."""
    cut = 0
    while cut < len(messages) and messages[cut].get("role") in INSTRUCTION_ROLES:
        cut += 1
    return list(messages[:cut]), list(messages[cut:])


def _signature(message: Mapping[str, Any]) -> str:
    """What makes two messages the same turn, ignoring fields clients drop or add
    (``refusal: None``, ``annotations``, reasoning...)."""
    calls = [
        (
            call.get("id"),
            (call.get("function") or {}).get("name"),
            (call.get("function") or {}).get("arguments"),
        )
        for call in message.get("tool_calls") or ()
        if isinstance(call, Mapping)
    ]
    key = [
        message.get("role"),
        message.get("content"),
        message.get("name"),
        message.get("tool_call_id"),
        calls,
    ]
    return json.dumps(key, sort_keys=True, default=str)


def same_messages(a: Sequence[Mapping[str, Any]], b: Sequence[Mapping[str, Any]]) -> bool:
    return len(a) == len(b) and all(
        _signature(x) == _signature(y) for x, y in zip(a, b, strict=False)
    )


def new_messages(history: Sequence[Message], request: Sequence[Message]) -> list[Message]:
    """The request messages that are not already the tail of the stored history.

    Clients either send only the new turn (nothing overlaps) or resend the conversation they
    hold, possibly a shortened window of it: then the longest run of request messages that
    repeats the end of the history is dropped. The stored log always ends with a model reply,
    so a request starting with anything else never overlaps.
    """
    if not history or not request:
        return list(request)
    past = [_signature(m) for m in history]
    asked = [_signature(m) for m in request]
    for overlap in range(min(len(past), len(asked)), 0, -1):
        if asked[overlap - 1] == past[-1] and asked[:overlap] == past[-overlap:]:
            return list(request[overlap:])
    return list(request)


def for_sending(message: Mapping[str, Any]) -> Message:
    """A stored message reduced to the fields a request may carry."""
    out = {k: v for k, v in message.items() if k in _SENDABLE and (v is not None or k == "content")}
    if "content" not in out:
        out["content"] = None if out.get("tool_calls") or out.get("function_call") else ""
    return out


def estimate_tokens(message: Mapping[str, Any]) -> int:
    """About 4 characters per token, plus a per-message overhead; images and audio count as a
    fixed 1024. Deliberately simple: no tokenizer matches every model served behind the mux."""
    chars = 0
    media = 0
    content = message.get("content")
    if isinstance(content, str):
        chars += len(content)
    elif isinstance(content, list):
        for part in content:
            kind = part.get("type") if isinstance(part, Mapping) else None
            if kind == "text":
                chars += len(str(part.get("text", "")))
            elif kind in ("image_url", "image", "input_audio", "file", "video_url"):
                media += _MEDIA_TOKENS
            else:
                chars += len(json.dumps(part, default=str))
    for field in ("tool_calls", "function_call"):
        if message.get(field):
            chars += len(json.dumps(message[field], default=str))
    for field in ("name", "tool_call_id"):
        if message.get(field):
            chars += len(str(message[field]))
    return _MESSAGE_OVERHEAD + math.ceil(chars / 4) + media


def estimate_tools_tokens(tools: Iterable[Any] | None) -> int:
    if not tools:
        return 0
    return math.ceil(len(json.dumps(list(tools), default=str)) / 4)


def _units(history: Sequence[Message]) -> list[list[Message]]:
    """Group an assistant message that calls tools with the tool results that follow it: a
    model rejects a tool result whose call is missing, so they are kept or dropped together."""
    units: list[list[Message]] = []
    for message in history:
        if message.get("role") == "tool" and units and _calls_tools(units[-1][0]):
            units[-1].append(message)
        else:
            units.append([message])
    return units


def _calls_tools(message: Mapping[str, Any]) -> bool:
    return message.get("role") == "assistant" and bool(message.get("tool_calls"))


def trim_history(
    history: Sequence[Message], budget: int, estimate: TokenEstimator = estimate_tokens
) -> tuple[list[Message], int]:
    """The newest part of ``history`` that fits ``budget`` tokens, and how many messages were
    left out. Whole tool-call groups only; once something is cut, the kept part starts at a user
    message (chat templates that require user-first after the system prompt accept it)."""
    units = _units(history)
    kept: list[list[Message]] = []
    used = 0
    for unit in reversed(units):
        cost = sum(estimate(m) for m in unit)
        if used + cost > budget:
            break
        kept.append(unit)
        used += cost
    kept.reverse()
    if len(kept) < len(units):
        first_user = next((i for i, u in enumerate(kept) if u[0].get("role") == "user"), None)
        kept = kept[first_user:] if first_user is not None else []
    flat = [m for unit in kept for m in unit]
    return flat, len(history) - len(flat)
