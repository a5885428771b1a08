"""A fake OpenAI-compatible backend: a real HTTP server on loopback with scriptable faults.

Use it to test code that talks to OpenAI-compatible endpoints without a network or a GPU::

    from gonka_mux.testing import FakeBackend, Faults, Reply, ToolCall

    with FakeBackend(replies=[Reply("hello"), Reply(tool_calls=[ToolCall("f", {"x": 1})])]) as fb:
        client = openai.OpenAI(base_url=fb.url, api_key="x")
        client.chat.completions.create(model="fake-model", messages=[...])
        fb.set_faults(rate_429=0.5, retry_after=1)
        assert fb.requests[0].json["model"] == "fake-model"

Threads and loops: :meth:`FakeBackend.start` (and ``with``/``async with``) always run the server
on a background thread with its own event loop, so the server keeps answering while the caller's
thread or loop is busy, and timings seen by a client are not distorted by the test's own work.
:class:`FakeFleet` runs many backends on ONE such thread. :meth:`FakeBackend.serve` runs a backend
on the caller's running loop instead (the CLI does that). :func:`spawn_fake_backend` runs one in a
child process, driven over HTTP (``/_fake/...``), for benchmarks that must not share a GIL.

Routes: ``POST /v1/chat/completions`` (JSON and SSE), ``POST /v1/completions`` (JSON and SSE),
``POST /v1/embeddings``, ``GET /v1/models``, ``GET /v1/models/{id}``, ``GET /health``, and the
control routes ``GET|POST /_fake/faults``, ``GET /_fake/requests``, ``POST /_fake/replies``,
``POST /_fake/reset``. Every response carries ``x-fake-backend: <name>``.
"""

from __future__ import annotations

import asyncio
import base64
import contextvars
import dataclasses
import functools
import hashlib
import hmac
import http.client
import inspect
import json
import math
import os
import random
import re
import struct
import subprocess
import sys
import tempfile
import threading
import time
from collections import deque
from collections.abc import Awaitable, Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

from gonka_mux.testing._server import (
    Abort,
    Headers,
    HTTPException,
    HTTPServer,
    Request,
    Response,
    Router,
    StreamingResponse,
    hang,
)

__all__ = [
    "FakeBackend",
    "FakeBackendProcess",
    "FakeBackendSpec",
    "FakeFleet",
    "Faults",
    "RecordedRequest",
    "Reply",
    "StatusError",
    "ToolCall",
    "spawn_fake_backend",
]


API_KEY_ENV = "GONKA_MUX_FAKE_API_KEY"
_SECRET_HEADERS = frozenset({"authorization", "x-api-key", "api-key", "proxy-authorization"})


# =========================================================================== value objects


@dataclass(frozen=True)
class ToolCall:
    """A tool call the fake model makes. ``arguments`` may be a JSON string or a dict."""

    name: str
    arguments: str | Mapping[str, Any] = "{}"
    id: str | None = None

    def __post_init__(self) -> None:
        if not isinstance(self.name, str) or not self.name:
            raise ValueError(f"ToolCall.name must be a non-empty string, got {self.name!r}")
        if not isinstance(self.arguments, (str, Mapping)):
            raise TypeError(
                "ToolCall.arguments must be a JSON string or a dict, "
                f"got {type(self.arguments).__name__}"
            )

    @property
    def arguments_json(self) -> str:
        if isinstance(self.arguments, str):
            return self.arguments
        return json.dumps(dict(self.arguments), separators=(",", ":"))

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "arguments": self.arguments_json, "id": self.id}


@dataclass(frozen=True)
class Reply:
    """What the fake model answers to one chat (or text) completion request.

    ``content=None`` with no ``tool_calls`` means the default text (``"ok from <name>"``).
    ``finish_reason`` defaults to ``"tool_calls"`` when there are tool calls, else ``"stop"``.
    ``usage`` entries override the computed usage. A ``status`` >= 400 or an ``error`` makes
    an OpenAI-shaped error response: ``error`` is the message (str), an error object (dict), or
    a whole body (a dict with an ``"error"`` key). ``delay`` waits that many seconds first;
    ``headers`` are added to the response (e.g. ``{"retry-after": "2"}`` on a 429).
    """

    content: str | None = None
    tool_calls: Sequence[ToolCall] | None = None
    reasoning: str | None = None
    finish_reason: str | None = None
    usage: Mapping[str, Any] | None = None
    status: int = 200
    error: str | Mapping[str, Any] | None = None
    delay: float = 0.0
    headers: Mapping[str, str] | None = None

    def __post_init__(self) -> None:
        if self.tool_calls is not None:
            calls = tuple(
                ToolCall(**call) if isinstance(call, Mapping) else call for call in self.tool_calls
            )
            for call in calls:
                if not isinstance(call, ToolCall):
                    raise TypeError(f"Reply.tool_calls items must be ToolCall, got {call!r}")
            object.__setattr__(self, "tool_calls", calls)
        if not isinstance(self.status, int) or not 100 <= self.status <= 599:
            raise ValueError(f"Reply.status must be an HTTP status (100-599), got {self.status!r}")
        _check_delay("Reply.delay", self.delay)

    @property
    def is_error(self) -> bool:
        return self.status >= 400 or self.error is not None

    def to_dict(self) -> dict[str, Any]:
        data = dataclasses.asdict(self)
        data["tool_calls"] = (
            [call.to_dict() for call in self.tool_calls] if self.tool_calls is not None else None
        )
        return {k: v for k, v in data.items() if v != _REPLY_DEFAULTS[k]}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any] | str) -> Reply:
        if isinstance(data, str):
            return cls(content=data)
        _check_keys("Reply", data, _REPLY_DEFAULTS)
        return cls(**data)


_REPLY_DEFAULTS = {f.name: f.default for f in dataclasses.fields(Reply)}


@dataclass(frozen=True)
class StatusError:
    """An HTTP error status injected at ``rate`` (a fraction of requests, 0..1).

    The body is OpenAI-shaped from ``message``/``type``/``code`` unless ``body`` is given
    (a dict or list is sent as JSON, a str as is), so provider-specific error bodies can be
    scripted, e.g. ``StatusError(503, 0.1, body={"error": "no capacity"})``.
    """

    status: int
    rate: float = 1.0
    message: str | None = None
    type: str | None = None
    code: str | int | None = None
    body: Any = None
    headers: Mapping[str, str] | None = None

    def __post_init__(self) -> None:
        if not isinstance(self.status, int) or not 400 <= self.status <= 599:
            raise ValueError(f"StatusError.status must be 400-599, got {self.status!r}")
        _check_rate(f"StatusError({self.status}).rate", self.rate)

    def response(self, backend: str) -> Response:
        if self.body is not None:
            if isinstance(self.body, (bytes, str)):
                return Response(self.body, self.status, self.headers, "application/json")
            return Response.json(self.body, self.status, self.headers)
        message = self.message or f"Injected HTTP {self.status} from fake backend {backend}."
        return HTTPException(
            self.status, message, type=self.type, code=self.code, headers=self.headers
        ).to_response()

    def to_dict(self) -> dict[str, Any]:
        return {k: v for k, v in dataclasses.asdict(self).items() if v is not None}


@dataclass(frozen=True)
class Faults:
    """What can go wrong on one backend, drawn per request from the backend's seeded RNG.

    Delays (seconds): ``latency`` (+ a uniform extra in ``[0, jitter]``) before a successful
    response's headers -- injected errors answer at once, as real rate limiters do; ``ttft``
    between a stream's headers and its first chunk; ``inter_chunk`` between stream chunks.

    Rates (fractions of requests, 0..1; the outcomes are exclusive so they may sum to at most 1):
    ``rate_429`` (with ``Retry-After: retry_after`` when set), ``rate_500``, ``rate_hang`` (never
    answer; ends when the client disconnects or the server stops), ``rate_drop_before`` (close
    the socket before any response), ``rate_drop_mid_stream`` (a stream sends about half its
    chunks then the socket closes; a JSON reply sends its headers and half its body),
    ``rate_malformed`` (200 with an invalid JSON body, or an invalid SSE event),
    ``rate_truncate`` (a stream sends about half of its content chunks and then ends CLEANLY --
    the chunked body is properly terminated and the connection stays usable -- with no
    ``finish_reason`` chunk, no usage chunk and no ``data: [DONE]``: what a client sees when an
    upstream proxy or server gives up quietly; it affects streams only, a JSON reply is sent
    whole, though the request is still recorded with ``fault="truncate"``), and each
    :class:`StatusError` in ``status_errors`` (``{503: 0.1}`` is short for
    ``[StatusError(503, 0.1)]``). ``down=True`` drops every request (control routes excepted) and
    closes the connections open when it is set.

    ``body_drip`` (seconds, default 0): a non-streamed 2xx reply to a ``POST /v1/...`` request
    (chat, text completion, embeddings) sends its headers at once (after ``latency``) and then
    its body in about 10 pieces, waiting ``body_drip`` seconds before each piece: every read
    gets bytes well within a per-read timeout, but the whole body takes ``10 * body_drip``.
    Streams are paced by ``ttft``/``inter_chunk`` instead; errors and ``GET`` routes are not
    dripped.

    New fields are added at the end, so positional construction keeps its meaning.
    """

    latency: float = 0.0
    jitter: float = 0.0
    ttft: float = 0.0
    inter_chunk: float = 0.0
    rate_429: float = 0.0
    retry_after: float | None = None
    rate_500: float = 0.0
    rate_hang: float = 0.0
    rate_drop_before: float = 0.0
    rate_drop_mid_stream: float = 0.0
    rate_malformed: float = 0.0
    down: bool = False
    status_errors: Sequence[StatusError] | Mapping[int, float] | None = None
    rate_truncate: float = 0.0
    body_drip: float = 0.0

    def __post_init__(self) -> None:
        for name in ("latency", "jitter", "ttft", "inter_chunk", "body_drip"):
            _check_delay(f"Faults.{name}", getattr(self, name))
        if self.retry_after is not None:
            _check_delay("Faults.retry_after", self.retry_after)
        for name in _RATE_FIELDS:
            _check_rate(f"Faults.{name}", getattr(self, name))
        if self.status_errors is not None:
            object.__setattr__(self, "status_errors", _status_errors(self.status_errors))
        total = sum(rate for _, rate, _ in self._outcomes)
        if total > 1.0 + 1e-9:
            raise ValueError(
                f"Faults rates add up to {total:g}, more than 1: the outcomes are exclusive "
                "(one is drawn per request), so lower some of them"
            )
        if not isinstance(self.down, bool):
            raise TypeError(f"Faults.down must be a bool, got {self.down!r}")

    @functools.cached_property
    def _outcomes(self) -> tuple[tuple[str, float, StatusError | None], ...]:
        table: list[tuple[str, float, StatusError | None]] = [
            (name.removeprefix("rate_"), getattr(self, name), None) for name in _RATE_FIELDS
        ]
        for error in self.status_errors or ():
            assert isinstance(error, StatusError)
            table.append((f"status_{error.status}", error.rate, error))
        return tuple(item for item in table if item[1] > 0)

    def replace(self, **changes: Any) -> Faults:
        """A copy with ``changes`` applied (unknown names raise ``ValueError``)."""
        _check_keys("Faults", changes, _FAULT_DEFAULTS)
        return dataclasses.replace(self, **changes)

    def to_dict(self) -> dict[str, Any]:
        data = {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}
        if self.status_errors is not None:
            data["status_errors"] = [e.to_dict() for e in self.status_errors]  # type: ignore[union-attr]
        return data

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Faults:
        _check_keys("Faults", data, _FAULT_DEFAULTS)
        return cls(**data)


_RATE_FIELDS = (
    "rate_429",
    "rate_500",
    "rate_hang",
    "rate_drop_before",
    "rate_drop_mid_stream",
    "rate_malformed",
    "rate_truncate",  # last: a seeded draw over the older rates is unchanged
)
_FAULT_DEFAULTS = {f.name: f.default for f in dataclasses.fields(Faults)}


def _status_errors(value: Any) -> tuple[StatusError, ...]:
    if isinstance(value, Mapping):
        return tuple(StatusError(int(status), rate) for status, rate in value.items())
    errors = []
    for item in value:
        if isinstance(item, Mapping):
            item = StatusError(**item)
        if not isinstance(item, StatusError):
            raise TypeError(f"Faults.status_errors items must be StatusError, got {item!r}")
        errors.append(item)
    return tuple(errors)


def _check_rate(name: str, value: Any) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 <= value <= 1:
        raise ValueError(f"{name} must be a fraction between 0 and 1, got {value!r}")


def _check_delay(name: str, value: Any) -> None:
    if (
        isinstance(value, bool)
        or not isinstance(value, (int, float))
        or not math.isfinite(value)
        or value < 0
    ):
        raise ValueError(f"{name} must be a number of seconds >= 0, got {value!r}")


def _check_keys(kind: str, data: Mapping[str, Any], allowed: Mapping[str, Any]) -> None:
    unknown = sorted(set(data) - set(allowed))
    if unknown:
        raise ValueError(f"unknown {kind} field(s) {unknown}; valid fields: {sorted(allowed)}")


@dataclass(frozen=True, repr=False)
class RecordedRequest:
    """One request a backend received (control routes excepted).

    ``headers`` is case-insensitive; ``json`` is the parsed body (``None`` if not JSON);
    ``time`` is ``time.time()`` on arrival; ``fault`` names the injected outcome, if any
    (``"429"``, ``"500"``, ``"hang"``, ``"drop_before"``, ``"drop_mid_stream"``, ``"malformed"``,
    ``"truncate"``, ``"status_503"``, ``"down"``, ``"unauthorized"``).
    """

    method: str
    path: str
    headers: Mapping[str, str]
    json: Any
    time: float
    query: Mapping[str, str] = dataclasses.field(default_factory=dict)
    body: bytes = b""
    fault: str | None = None
    backend: str = ""

    @property
    def model(self) -> str | None:
        return self.json.get("model") if isinstance(self.json, dict) else None

    @property
    def messages(self) -> list[Any]:
        messages = self.json.get("messages") if isinstance(self.json, dict) else None
        return messages if isinstance(messages, list) else []

    @property
    def stream(self) -> bool:
        return bool(self.json.get("stream")) if isinstance(self.json, dict) else False

    def __repr__(self) -> str:
        return (
            f"RecordedRequest({self.method} {self.path} backend={self.backend!r} "
            f"model={self.model!r} fault={self.fault!r} headers={_redacted(self.headers)!r})"
        )

    def to_dict(self) -> dict[str, Any]:
        return {
            "method": self.method,
            "path": self.path,
            "headers": dict(self.headers),
            "json": self.json,
            "time": self.time,
            "query": dict(self.query),
            "fault": self.fault,
            "backend": self.backend,
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> RecordedRequest:
        return cls(
            method=data["method"],
            path=data["path"],
            headers=Headers(data.get("headers") or {}),
            json=data.get("json"),
            time=data.get("time", 0.0),
            query=data.get("query") or {},
            fault=data.get("fault"),
            backend=data.get("backend", ""),
        )


def _redacted(headers: Mapping[str, str]) -> dict[str, str]:
    return {k: ("<redacted>" if k.lower() in _SECRET_HEADERS else v) for k, v in headers.items()}


ReplyLike = Reply | str | None
ReplyScript = Sequence[Reply | str] | Callable[[RecordedRequest], ReplyLike | Awaitable[ReplyLike]]


# =========================================================================== OpenAI shapes

_WORDS = re.compile(r"\s*\S+|\s+")


def _split_text(text: str, max_pieces: int = 24) -> list[str]:
    """Split text into a few stream pieces along word boundaries (a single word: in two)."""
    if not text:
        return []
    words = _WORDS.findall(text)
    if len(words) == 1:
        if len(text) < 2:
            return [text]
        middle = len(text) // 2
        return [text[:middle], text[middle:]]
    per_piece = math.ceil(len(words) / max_pieces)
    return ["".join(words[i : i + per_piece]) for i in range(0, len(words), per_piece)]


def _split_arguments(arguments: str) -> list[str]:
    """Tool-call argument fragments: at least two when there are two characters to split."""
    if len(arguments) < 2:
        return [arguments]
    size = max(1, math.ceil(len(arguments) / 3))
    return [arguments[i : i + size] for i in range(0, len(arguments), size)]


def _tokens(chars: int) -> int:
    return math.ceil(chars / 4)


def _text_of(content: Any) -> int:
    """Characters of text in a message ``content`` (a string or a list of parts)."""
    if isinstance(content, str):
        return len(content)
    if isinstance(content, list):
        return sum(_text_of(part.get("text")) for part in content if isinstance(part, dict))
    return 0


def _prompt_tokens(messages: list[Any]) -> int:
    chars = 0
    for message in messages:
        if isinstance(message, dict):
            chars += _text_of(message.get("content"))
            for call in message.get("tool_calls") or ():
                if isinstance(call, dict):
                    chars += len(json.dumps(call.get("function", {})))
    return max(1, _tokens(chars))


@dataclass(frozen=True)
class _Answer:
    """A successful reply with the defaults resolved."""

    content: str | None
    reasoning: str | None
    tool_calls: tuple[tuple[str, str, str], ...]  # (id, name, arguments json)
    finish_reason: str

    def completion_tokens(self) -> int:
        chars = len(self.content or "") + len(self.reasoning or "")
        chars += sum(len(name) + len(args) for _, name, args in self.tool_calls)
        return max(1, _tokens(chars))

    def message(self) -> dict[str, Any]:
        message: dict[str, Any] = {"role": "assistant", "content": self.content}
        if self.tool_calls:
            message["tool_calls"] = [
                {"id": id_, "type": "function", "function": {"name": name, "arguments": args}}
                for id_, name, args in self.tool_calls
            ]
        if self.reasoning is not None:
            message["reasoning"] = self.reasoning
        return message

    def deltas(self) -> list[dict[str, Any]]:
        deltas: list[dict[str, Any]] = [{"role": "assistant", "content": ""}]
        deltas += [{"reasoning": piece} for piece in _split_text(self.reasoning or "")]
        deltas += [{"content": piece} for piece in _split_text(self.content or "")]
        for index, (id_, name, args) in enumerate(self.tool_calls):
            head = {"index": index, "id": id_, "type": "function"}
            deltas.append({"tool_calls": [{**head, "function": {"name": name, "arguments": ""}}]})
            deltas += [
                {"tool_calls": [{"index": index, "function": {"arguments": piece}}]}
                for piece in _split_arguments(args)
            ]
        return deltas


def _usage(prompt_tokens: int, completion_tokens: int, reasoning_tokens: int | None) -> dict:
    usage: dict[str, Any] = {
        "prompt_tokens": prompt_tokens,
        "completion_tokens": completion_tokens,
        "total_tokens": prompt_tokens + completion_tokens,
    }
    if reasoning_tokens is not None:
        usage["completion_tokens_details"] = {"reasoning_tokens": reasoning_tokens}
    return usage


def _choice(index: int, key: str, value: Any, finish_reason: str | None) -> dict[str, Any]:
    """A chat choice: ``key`` is ``"message"`` (JSON) or ``"delta"`` (a stream chunk)."""
    return {"index": index, key: value, "logprobs": None, "finish_reason": finish_reason}


def _text_choice(index: int, text: str, finish_reason: str | None) -> dict[str, Any]:
    return {"text": text, "index": index, "logprobs": None, "finish_reason": finish_reason}


def _sse(data: Any) -> bytes:
    return b"data: " + json.dumps(data, separators=(",", ":")).encode() + b"\n\n"


_SSE_DONE = b"data: [DONE]\n\n"
_MALFORMED_EVENT = b'data: {"id": "chatcmpl-malformed", "choices": [{"delta": {"content\n\n'


def _interleave(per_choice: list[list[dict[str, Any]]]) -> Iterator[tuple[int, dict[str, Any]]]:
    longest = max(len(items) for items in per_choice)
    for step in range(longest):
        for index, items in enumerate(per_choice):
            if step < len(items):
                yield index, items[step]


class _EventStream:
    """SSE events paced by ``ttft``/``inter_chunk``, optionally cut or corrupted (faults).

    ``body_events``: how many events carry deltas (the rest -- finish_reason chunks, the usage
    chunk, ``[DONE]`` -- are the stream's terminal events). ``cut_after`` closes the socket after
    that many events; ``truncate_after`` ends the body cleanly after that many.
    """

    def __init__(
        self,
        events: list[bytes],
        ttft: float,
        inter_chunk: float,
        body_events: int | None = None,
    ) -> None:
        self.events = events
        self.ttft = ttft
        self.inter_chunk = inter_chunk
        self.body_events = len(events) if body_events is None else body_events
        self.cut_after: int | None = None
        self.malformed_at: int | None = None
        self.truncate_after: int | None = None

    def truncate(self) -> None:
        """End cleanly after about half of the delta events (at least one content event)."""
        self.truncate_after = min(self.body_events, max(2, self.body_events // 2))

    async def __aiter__(self) -> Any:
        events = self.events
        if self.malformed_at is not None:
            events = [*events[: self.malformed_at], _MALFORMED_EVENT]
        if self.truncate_after is not None:
            events = events[: self.truncate_after]  # then a clean end of the body
        if not self.ttft and not self.inter_chunk:
            # no pacing: one write; the client still sees every SSE event
            if self.cut_after is None:
                yield b"".join(events)
                return
            yield b"".join(events[: self.cut_after])
            raise Abort
        for index, event in enumerate(events):
            if index == self.cut_after:
                raise Abort
            delay = self.ttft if index == 0 else self.inter_chunk
            if delay:
                await asyncio.sleep(delay)
            yield event


async def _truncated(body: bytes) -> Any:
    yield body[: max(1, len(body) // 2)]
    raise Abort


_DRIP_PIECES = 10


async def _dripped(body: bytes, drip: float) -> Any:
    """``body`` in about ``_DRIP_PIECES`` pieces, waiting ``drip`` seconds before each."""
    size = max(1, math.ceil(len(body) / _DRIP_PIECES))
    for start in range(0, len(body), size):
        await asyncio.sleep(drip)
        yield body[start : start + size]


def _embedding(text: str, model: str, dimensions: int) -> list[float]:
    """A deterministic unit vector from a hash of (model, text)."""
    raw = b""
    counter = 0
    while len(raw) < dimensions * 4:
        raw += hashlib.sha256(f"{model}\0{counter}\0{text}".encode()).digest()
        counter += 1
    values = [(v / 2**31) - 1.0 for v in struct.unpack(f"<{dimensions}I", raw[: dimensions * 4])]
    norm = math.sqrt(sum(v * v for v in values)) or 1.0
    return [v / norm for v in values]


# =========================================================================== the backend

_RECORDED: contextvars.ContextVar[RecordedRequest | None] = contextvars.ContextVar(
    "gonka_mux_fake_recorded", default=None
)


class FakeBackend:
    """One fake OpenAI-compatible server. See the module docstring for threads and routes.

    ``models``: the ids listed by ``/v1/models``; any requested model is served and echoed
    unless ``strict_models=True``, which answers unknown models 404 ``model_not_found`` (as
    vLLM and OpenAI do). ``replies`` (for chat and text completions): a list consumed in
    order (then the default reply), or a callable ``(RecordedRequest) -> Reply | str | None``
    (``None`` = default; may be async; may raise -- the client gets a 500 and the exception is
    re-raised by ``__exit__``/:meth:`check`).
    ``faults``: a :class:`Faults` (or a dict of its fields), changeable at runtime.
    ``name`` defaults to ``fake-<port>``. ``seed`` makes fault draws repeatable.
    ``api_key``: when set, ``/v1`` requests need ``Authorization: Bearer <api_key>``.
    ``max_recorded`` bounds the request log (:attr:`request_count` keeps counting).
    """

    def __init__(
        self,
        *,
        host: str = "127.0.0.1",
        port: int = 0,
        models: Sequence[str] | str = ("fake-model",),
        replies: ReplyScript | None = None,
        faults: Faults | Mapping[str, Any] | None = None,
        name: str | None = None,
        seed: int | None = None,
        api_key: str | None = None,
        strict_models: bool = False,
        embedding_dim: int = 8,
        max_recorded: int = 10_000,
    ) -> None:
        models = (models,) if isinstance(models, str) else tuple(models)
        if not models or not all(isinstance(m, str) and m for m in models):
            raise ValueError(f"models must be a non-empty list of model ids, got {models!r}")
        if not isinstance(port, int) or not 0 <= port <= 65535:
            raise ValueError(f"port must be 0..65535 (0 picks a free port), got {port!r}")
        if not isinstance(embedding_dim, int) or not 1 <= embedding_dim <= 4096:
            raise ValueError(f"embedding_dim must be 1..4096, got {embedding_dim!r}")
        if not isinstance(max_recorded, int) or max_recorded < 0:
            raise ValueError(f"max_recorded must be an integer >= 0, got {max_recorded!r}")
        if api_key is not None and not api_key:
            raise ValueError("api_key must be a non-empty string, or None for no auth")
        self.host = host
        self.models = models
        self.strict_models = strict_models
        self.embedding_dim = embedding_dim
        self._port = port
        self._name = name
        self._api_key = api_key
        self._initial_faults = _as_faults(faults)
        self._faults = self._initial_faults
        self._rng = random.Random(seed)
        self._lock = threading.Lock()
        self._recorded_changed = threading.Condition(self._lock)
        self._requests: deque[RecordedRequest] = deque(maxlen=max_recorded)
        self._request_count = 0
        self._errors: list[BaseException] = []
        self._replies: ReplyScript | None = None
        self._reply_index = 0
        self.set_replies(replies)
        self._sequence = 0
        self._id_prefix = os.urandom(4).hex()
        self._created = int(time.time())
        self._server: HTTPServer | None = None
        self._thread: _LoopThread | None = None
        self._owns_thread = False
        self._router = self._build_router()

    # ------------------------------------------------------------------ lifecycle

    def start(self) -> FakeBackend:
        """Start on a background thread with its own loop; returns once the port is bound."""
        if self._thread is not None:
            raise RuntimeError(f"{self!r} is already started")
        thread = _LoopThread(f"fake-backend-{self._name or self._port or 'new'}")
        thread.start()
        try:
            self._start_on(thread)
        except BaseException:
            thread.stop()
            raise
        self._owns_thread = True
        return self

    def stop(self) -> None:
        """Stop serving (hung requests end, connections close). Idempotent. Can start again."""
        thread = self._thread
        if thread is None:
            return
        thread.ensure_not_current("FakeBackend.stop()")
        try:
            thread.run(self._astop())
        finally:
            self._thread = None
            if self._owns_thread:
                thread.stop()
            self._owns_thread = False

    async def serve(self, ready: Callable[[FakeBackend], None] | None = None) -> None:
        """Serve on the *running* loop until cancelled (foreground mode, used by the CLI).

        ``ready(backend)`` is called once the port is bound.
        """
        await self._astart()
        try:
            if ready is not None:
                ready(self)
            await asyncio.get_running_loop().create_future()
        finally:
            await asyncio.shield(self._astop())

    def __enter__(self) -> FakeBackend:
        return self.start()

    def __exit__(self, exc_type: Any, exc: Any, tb: Any) -> None:
        self.stop()
        if exc_type is None:
            self.check()

    async def __aenter__(self) -> FakeBackend:
        """Starts the server on its own background thread (not on the caller's loop)."""
        await asyncio.to_thread(self.start)
        return self

    async def __aexit__(self, exc_type: Any, exc: Any, tb: Any) -> None:
        await asyncio.to_thread(self.stop)
        if exc_type is None:
            self.check()

    def _start_on(self, thread: _LoopThread) -> None:
        thread.run(self._astart())
        self._thread = thread

    async def _astart(self) -> None:
        if self._server is not None:
            raise RuntimeError(f"{self!r} is already started")
        server = HTTPServer(self.handle)
        await server.start(self.host, self._port)
        self._port = server.port  # a restart binds the same port, so the URL stays valid
        if self._name is None:
            self._name = f"fake-{server.port}"
        server.default_headers = {"x-fake-backend": self._name, "server": "gonka-mux-fake"}
        self._server = server

    async def _astop(self) -> None:
        server, self._server = self._server, None
        if server is not None:
            await server.stop()

    # ------------------------------------------------------------------ properties

    @property
    def running(self) -> bool:
        return self._server is not None

    @property
    def open_connections(self) -> int:
        """Client connections open now (0 when stopped): shows leaks and dropped hangs."""
        server = self._server
        return server.connection_count if server is not None else 0

    @property
    def port(self) -> int:
        if not self._port:
            raise RuntimeError("the backend has no port yet: start() it first")
        return self._port

    @property
    def name(self) -> str:
        if self._name is None:
            raise RuntimeError("the backend is named after its port: start() it first")
        return self._name

    @property
    def base_url(self) -> str:
        """``http://host:port`` (no ``/v1``)."""
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port}"

    @property
    def url(self) -> str:
        """The OpenAI base URL, ``http://host:port/v1``."""
        return f"{self.base_url}/v1"

    @property
    def faults(self) -> Faults:
        return self._faults

    @faults.setter
    def faults(self, faults: Faults | Mapping[str, Any]) -> None:
        self.set_faults(faults)

    def set_faults(
        self, faults: Faults | Mapping[str, Any] | None = None, **changes: Any
    ) -> Faults:
        """Replace the faults (``set_faults(Faults(...))``) or change some fields
        (``set_faults(rate_429=0.5)``). Takes effect for the next request. Returns the new faults.
        """
        base = self._faults if faults is None else _as_faults(faults)
        new = base.replace(**changes) if changes else base
        self._faults = new
        server = self._server
        if new.down and server is not None:
            _run_on(server.loop, server.close_connections)
        return new

    def set_replies(self, replies: ReplyScript | None) -> None:
        """Replace the reply script (a list restarts from its first item)."""
        if replies is not None and not callable(replies):
            if isinstance(replies, (str, Reply)):
                raise TypeError("replies must be a list of Reply (or str), or a callable")
            replies = [r if isinstance(r, Reply) else Reply.from_dict(r) for r in replies]
        with self._lock:
            self._replies = replies
            self._reply_index = 0

    @property
    def requests(self) -> list[RecordedRequest]:
        """A snapshot of the recorded requests, oldest first (thread-safe)."""
        with self._lock:
            return list(self._requests)

    @property
    def request_count(self) -> int:
        """Requests received since the last :meth:`clear` (not bounded by ``max_recorded``)."""
        return self._request_count

    def wait_for_requests(self, count: int, timeout: float = 5.0) -> list[RecordedRequest]:
        """Block until at least ``count`` requests were recorded; raise ``TimeoutError``."""
        with self._recorded_changed:
            if not self._recorded_changed.wait_for(lambda: self._request_count >= count, timeout):
                raise TimeoutError(
                    f"{self.name}: {self._request_count} request(s) after {timeout}s, "
                    f"expected {count}"
                )
            return list(self._requests)

    def clear(self) -> None:
        """Forget the recorded requests."""
        with self._lock:
            self._requests.clear()
            self._request_count = 0

    def reset(self) -> None:
        """Forget requests and errors, restore the initial faults, restart a reply list."""
        self.clear()
        with self._lock:
            self._errors.clear()
            self._reply_index = 0
        self.set_faults(self._initial_faults)

    @property
    def errors(self) -> list[BaseException]:
        """Exceptions raised by a ``replies`` callable (each was answered with a 500)."""
        with self._lock:
            return list(self._errors)

    def check(self) -> None:
        """Re-raise the first exception a ``replies`` callable raised, if any."""
        with self._lock:
            error = self._errors[0] if self._errors else None
        if error is not None:
            raise error

    def __repr__(self) -> str:
        where = f"{self.host}:{self._port}" if self._port else "unstarted"
        auth = " auth" if self._api_key else ""
        state = "running" if self.running else "stopped"
        return f"<FakeBackend {self._name or '?'} {where}{auth} {state}>"

    # ------------------------------------------------------------------ request handling

    async def handle(self, request: Request) -> Response | StreamingResponse:
        """The backend as an app: answer one request (faults included).

        Other servers built on :mod:`gonka_mux.testing._server` may delegate to it, e.g. a fake
        Gonka node that checks signatures and then lets a FakeBackend produce the completion.
        """
        path = request.path
        if path.startswith("/_fake/"):
            return await self._router(request)
        faults = self._faults
        if faults.down:
            self._record(request, "down")
            raise Abort
        if not path.startswith("/v1/"):
            self._record(request, None)
            return await self._router(request)
        if self._api_key is not None and not self._authorized(request):
            self._record(request, "unauthorized")
            raise HTTPException(
                401,
                "Incorrect API key provided. Send it as 'Authorization: Bearer <key>'.",
                code="invalid_api_key",
            )
        fault, status_error = self._draw(faults)
        recorded = self._record(request, fault)
        if fault is None or fault in ("drop_mid_stream", "malformed", "truncate"):
            delay = faults.latency + (faults.jitter * self._rng.random() if faults.jitter else 0)
            if delay:
                await asyncio.sleep(delay)
        elif fault == "drop_before":
            raise Abort
        elif fault == "hang":
            await hang()
        elif fault == "429":
            headers = {}
            if faults.retry_after is not None:
                headers = {
                    "retry-after": f"{faults.retry_after:g}",
                    "retry-after-ms": str(round(faults.retry_after * 1000)),
                }
            raise HTTPException(
                429,
                f"Rate limit reached for requests on fake backend {self.name}. "
                "Please try again later.",
                type="requests",
                code="rate_limit_exceeded",
                headers=headers,
            )
        elif fault == "500":
            raise HTTPException(
                500,
                f"The server had an error while processing your request (fake backend "
                f"{self.name}).",
                type="server_error",
            )
        else:
            assert status_error is not None
            return status_error.response(self.name)

        _RECORDED.set(recorded)
        response = await self._router(request)
        if fault is not None and 200 <= response.status < 300:
            response = self._corrupt(response, fault)
        if (
            faults.body_drip
            and isinstance(response, Response)
            and request.method == "POST"
            and 200 <= response.status < 300
        ):
            response = self._drip(response, faults.body_drip)
        return response

    @staticmethod
    def _drip(response: Response, drip: float) -> StreamingResponse:
        headers = [
            *[(k, v) for k, v in response.headers if k.lower() != "content-length"],
            ("content-length", str(len(response.body))),  # a plain body, just slow
        ]
        return StreamingResponse(_dripped(response.body, drip), response.status, headers, None)

    def _authorized(self, request: Request) -> bool:
        scheme, _, token = request.headers.get("authorization", "").partition(" ")
        assert self._api_key is not None
        return scheme.lower() == "bearer" and hmac.compare_digest(
            token.strip().encode(), self._api_key.encode()
        )

    def _draw(self, faults: Faults) -> tuple[str | None, StatusError | None]:
        outcomes = faults._outcomes
        if not outcomes:
            return None, None
        draw = self._rng.random()
        for name, rate, status_error in outcomes:
            if draw < rate:
                return name, status_error
            draw -= rate
        return None, None

    def _record(self, request: Request, fault: str | None) -> RecordedRequest:
        try:
            parsed = request.json() if request.body else None
        except HTTPException:
            parsed = None
        recorded = RecordedRequest(
            method=request.method,
            path=request.path,
            headers=request.headers,
            json=parsed,
            time=time.time(),
            query=request.query,
            body=request.body,
            fault=fault,
            backend=self._name or "",
        )
        with self._lock:
            self._requests.append(recorded)
            self._request_count += 1
            self._recorded_changed.notify_all()
        return recorded

    @staticmethod
    def _corrupt(
        response: Response | StreamingResponse, fault: str
    ) -> Response | StreamingResponse:
        if isinstance(response, StreamingResponse):
            stream = response.chunks
            if isinstance(stream, _EventStream):
                if fault == "malformed":
                    stream.malformed_at = 1
                elif fault == "truncate":
                    stream.truncate()
                else:
                    stream.cut_after = max(2, len(stream.events) // 2)
            return response
        if fault == "truncate":
            return response  # streams only: a JSON reply is sent whole
        if fault == "malformed":
            return Response(response.body[: len(response.body) // 2], 200, None, "application/json")
        headers = [
            *[(k, v) for k, v in response.headers if k.lower() != "content-length"],
            ("content-length", str(len(response.body))),
        ]
        return StreamingResponse(_truncated(response.body), response.status, headers, None)

    def _next_id(self, prefix: str) -> str:
        self._sequence += 1
        return f"{prefix}-{self._id_prefix}{self._sequence:08x}"

    async def _next_reply(self) -> Reply:
        recorded = _RECORDED.get()
        with self._lock:
            script = self._replies
            reply: Any = None
            if isinstance(script, list) and self._reply_index < len(script):
                reply = script[self._reply_index]
                self._reply_index += 1
        if callable(script):
            assert recorded is not None
            try:
                reply = script(recorded)
                if inspect.isawaitable(reply):
                    reply = await reply
                if reply is not None and not isinstance(reply, (Reply, str)):
                    raise TypeError(
                        f"replies callable must return Reply, str or None, got {reply!r}"
                    )
            except Exception as exc:
                with self._lock:
                    self._errors.append(exc)
                raise HTTPException(
                    500,
                    f"fake backend {self.name}: replies callable raised {type(exc).__name__}: "
                    f"{exc}",
                    type="server_error",
                ) from None
        if reply is None:
            return Reply()
        return Reply(content=reply) if isinstance(reply, str) else reply

    def _answer(self, reply: Reply) -> _Answer:
        calls = tuple(
            (
                call.id or f"call_{self._id_prefix}{self._sequence:08x}_{index}",
                call.name,
                call.arguments_json,
            )
            for index, call in enumerate(reply.tool_calls or ())
        )
        content = reply.content
        if content is None and not calls:
            content = f"ok from {self.name}"
        finish = reply.finish_reason or ("tool_calls" if calls else "stop")
        return _Answer(content, reply.reasoning, calls, finish)

    def _error_reply(self, reply: Reply) -> Response:
        status = reply.status if reply.status >= 400 else 500
        error = reply.error
        if isinstance(error, Mapping):  # a whole body, or just the error object
            body = dict(error) if "error" in error else {"error": dict(error)}
            return Response.json(body, status, reply.headers)
        message = error or f"Scripted HTTP {status} from fake backend {self.name}."
        return HTTPException(status, message, headers=reply.headers).to_response()

    # ------------------------------------------------------------------ routes

    def _build_router(self) -> Router:
        router = Router()
        router.add("GET", "/health", self._health)
        router.add("POST", "/v1/chat/completions", self._chat)
        router.add("POST", "/v1/completions", self._completions)
        router.add("POST", "/v1/embeddings", self._embeddings)
        router.add("GET", "/v1/models", self._list_models)
        router.add("GET", "/v1/models/", self._get_model, prefix=True)
        router.add("GET", "/_fake/faults", self._control_get_faults)
        router.add("POST", "/_fake/faults", self._control_set_faults)
        router.add("GET", "/_fake/requests", self._control_requests)
        router.add("POST", "/_fake/replies", self._control_replies)
        router.add("POST", "/_fake/reset", self._control_reset)
        return router

    async def _health(self, request: Request) -> Response:
        return Response.json({"status": "ok"})

    def _body(self, request: Request) -> dict[str, Any]:
        body = request.json()
        if not isinstance(body, dict):
            raise HTTPException(400, "The request body must be a JSON object.")
        return body

    def _model(self, body: Mapping[str, Any]) -> str:
        model = body.get("model")
        if not isinstance(model, str) or not model:
            raise HTTPException(400, "you must provide a model parameter", param="model")
        if self.strict_models and model not in self.models:
            raise HTTPException(
                404,
                f"The model `{model}` does not exist or you do not have access to it.",
                param="model",
                code="model_not_found",
            )
        return model

    @staticmethod
    def _n(body: Mapping[str, Any]) -> int:
        n = body.get("n")
        if n is None:
            return 1
        if isinstance(n, bool) or not isinstance(n, int) or not 1 <= n <= 128:
            raise HTTPException(
                400, f"Invalid 'n': expected an integer 1..128, got {n!r}", param="n"
            )
        return n

    @staticmethod
    def _include_usage(body: Mapping[str, Any]) -> bool:
        options = body.get("stream_options")
        return isinstance(options, dict) and bool(options.get("include_usage"))

    def _stream(
        self, events: list[bytes], headers: Mapping[str, str] | None, body_events: int
    ) -> StreamingResponse:
        faults = self._faults
        return StreamingResponse(
            _EventStream(events, faults.ttft, faults.inter_chunk, body_events), 200, headers
        )

    async def _chat(self, request: Request) -> Response | StreamingResponse:
        body = self._body(request)
        model = self._model(body)
        messages = body.get("messages")
        if not isinstance(messages, list) or not messages:
            raise HTTPException(
                400, "Invalid 'messages': expected a non-empty array.", param="messages"
            )
        n = self._n(body)
        reply = await self._next_reply()
        if reply.delay:
            await asyncio.sleep(reply.delay)
        if reply.is_error:
            return self._error_reply(reply)
        identity = {"id": self._next_id("chatcmpl"), "created": int(time.time()), "model": model}
        answer = self._answer(reply)
        usage = _usage(
            _prompt_tokens(messages),
            answer.completion_tokens() * n,
            _tokens(len(answer.reasoning or "")) * n,
        )
        usage.update(reply.usage or {})
        finish = answer.finish_reason
        if not body.get("stream"):
            message = answer.message()
            choices = [_choice(i, "message", message, finish) for i in range(n)]
            completion = {**identity, "object": "chat.completion", "choices": choices}
            return Response.json({**completion, "usage": usage}, reply.status, reply.headers)

        base: dict[str, Any] = {**identity, "object": "chat.completion.chunk"}
        include_usage = self._include_usage(body)
        if include_usage:
            base["usage"] = None  # as OpenAI: every chunk has the key, only the last a value
        steps = _interleave([answer.deltas()] * n)
        events = [_sse({**base, "choices": [_choice(i, "delta", d, None)]}) for i, d in steps]
        body_events = len(events)
        events += [_sse({**base, "choices": [_choice(i, "delta", {}, finish)]}) for i in range(n)]
        if include_usage:
            events.append(_sse({**base, "choices": [], "usage": usage}))
        events.append(_SSE_DONE)
        return self._stream(events, reply.headers, body_events)

    async def _completions(self, request: Request) -> Response | StreamingResponse:
        body = self._body(request)
        model = self._model(body)
        prompt = body.get("prompt")
        prompts: list[Any]
        if isinstance(prompt, str) or (
            isinstance(prompt, list) and prompt and all(isinstance(t, int) for t in prompt)
        ):
            prompts = [prompt]
        elif isinstance(prompt, list) and prompt:
            prompts = prompt
        else:
            raise HTTPException(
                400, "Invalid 'prompt': expected a string or a non-empty array.", param="prompt"
            )
        n = self._n(body)
        reply = await self._next_reply()
        if reply.delay:
            await asyncio.sleep(reply.delay)
        if reply.is_error:
            return self._error_reply(reply)
        text = reply.content if reply.content is not None else f"ok from {self.name}"
        finish = reply.finish_reason or "stop"
        count = len(prompts) * n
        prompt_chars = sum(len(p) * (1 if isinstance(p, str) else 4) for p in prompts)
        usage = _usage(max(1, _tokens(prompt_chars)), max(1, _tokens(len(text))) * count, None)
        usage.update(reply.usage or {})
        identity = {
            "id": self._next_id("cmpl"),
            "object": "text_completion",
            "created": int(time.time()),
            "model": model,
        }
        if not body.get("stream"):
            choices = [_text_choice(i, text, finish) for i in range(count)]
            completion = {**identity, "choices": choices, "usage": usage}
            return Response.json(completion, reply.status, reply.headers)
        include_usage = self._include_usage(body)
        base = {**identity, "usage": None} if include_usage else identity
        steps = _interleave([_split_text(text) or [""]] * count)
        events = [_sse({**base, "choices": [_text_choice(i, piece, None)]}) for i, piece in steps]
        body_events = len(events)
        events += [_sse({**base, "choices": [_text_choice(i, "", finish)]}) for i in range(count)]
        if include_usage:
            events.append(_sse({**base, "choices": [], "usage": usage}))
        events.append(_SSE_DONE)
        return self._stream(events, reply.headers, body_events)

    async def _embeddings(self, request: Request) -> Response:
        body = self._body(request)
        model = self._model(body)
        raw = body.get("input")
        if isinstance(raw, str) or (
            isinstance(raw, list) and raw and all(isinstance(t, int) for t in raw)
        ):
            inputs = [raw]
        elif isinstance(raw, list) and raw:
            inputs = raw
        else:
            raise HTTPException(
                400, "Invalid 'input': expected a string or a non-empty array.", param="input"
            )
        dimensions = body.get("dimensions") or self.embedding_dim
        if (
            isinstance(dimensions, bool)
            or not isinstance(dimensions, int)
            or not (1 <= dimensions <= 4096)
        ):
            raise HTTPException(400, "Invalid 'dimensions': expected 1..4096.", param="dimensions")
        as_base64 = body.get("encoding_format") == "base64"
        data = []
        chars = 0
        for index, item in enumerate(inputs):
            text = item if isinstance(item, str) else json.dumps(item)
            chars += len(item) if isinstance(item, str) else 4 * len(item)
            vector: Any = _embedding(text, model, dimensions)
            if as_base64:
                vector = base64.b64encode(struct.pack(f"<{dimensions}f", *vector)).decode()
            data.append({"object": "embedding", "index": index, "embedding": vector})
        tokens = max(1, _tokens(chars))
        return Response.json(
            {
                "object": "list",
                "data": data,
                "model": model,
                "usage": {"prompt_tokens": tokens, "total_tokens": tokens},
            }
        )

    def _model_card(self, model: str) -> dict[str, Any]:
        return {"id": model, "object": "model", "created": self._created, "owned_by": self.name}

    async def _list_models(self, request: Request) -> Response:
        return Response.json({"object": "list", "data": [self._model_card(m) for m in self.models]})

    async def _get_model(self, request: Request) -> Response:
        model = request.path.removeprefix("/v1/models/")
        if model not in self.models:
            raise HTTPException(
                404, f"The model `{model}` does not exist.", param="model", code="model_not_found"
            )
        return Response.json(self._model_card(model))

    # ------------------------------------------------------------------ control routes

    async def _control_get_faults(self, request: Request) -> Response:
        return Response.json(self._faults.to_dict())

    async def _control_set_faults(self, request: Request) -> Response:
        data = request.json()
        if not isinstance(data, dict):
            raise HTTPException(400, "POST /_fake/faults takes a JSON object of Faults fields")
        try:
            if request.query.get("merge", "").lower() in ("1", "true", "yes"):
                faults = self.set_faults(**data)
            else:
                faults = self.set_faults(Faults.from_dict(data))
        except (TypeError, ValueError) as exc:
            raise HTTPException(400, str(exc)) from None
        return Response.json(faults.to_dict())

    async def _control_requests(self, request: Request) -> Response:
        last_text = request.query.get("last")
        try:
            last = int(last_text) if last_text else None
        except ValueError:
            raise HTTPException(400, "'last' must be an integer") from None
        with self._lock:
            count = self._request_count
            items = list(self._requests)
        if last is not None:
            items = items[-last:] if last > 0 else []
        body = {"count": count, "requests": [r.to_dict() for r in items]}
        return Response.json(body)

    async def _control_replies(self, request: Request) -> Response:
        data = request.json()
        if not isinstance(data, list):
            raise HTTPException(400, "POST /_fake/replies takes a JSON array of Reply objects")
        try:
            self.set_replies([Reply.from_dict(item) for item in data])
        except (TypeError, ValueError) as exc:
            raise HTTPException(400, str(exc)) from None
        return Response.json({"replies": len(data)})

    async def _control_reset(self, request: Request) -> Response:
        self.reset()
        return Response.json({"status": "reset"})


def _as_faults(faults: Faults | Mapping[str, Any] | None) -> Faults:
    if faults is None:
        return Faults()
    if isinstance(faults, Faults):
        return faults
    if isinstance(faults, Mapping):
        return Faults.from_dict(faults)
    raise TypeError(f"faults must be a Faults or a dict of its fields, got {type(faults).__name__}")


def _run_on(loop: asyncio.AbstractEventLoop, function: Callable[[], Any]) -> Any:
    """Call ``function`` on ``loop``: directly when already there, else and wait for it."""
    try:
        running = asyncio.get_running_loop()
    except RuntimeError:
        running = None
    if running is loop:
        return function()

    async def call() -> Any:
        return function()

    return asyncio.run_coroutine_threadsafe(call(), loop).result(30)


# =========================================================================== the loop thread


class _LoopThread:
    """An event loop running forever on a daemon thread (so a forgotten stop never blocks exit)."""

    def __init__(self, name: str) -> None:
        self.loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)

    def start(self) -> None:
        self._thread.start()

    def _run(self) -> None:
        asyncio.set_event_loop(self.loop)
        try:
            self.loop.run_forever()
        finally:
            pending = asyncio.all_tasks(self.loop)
            for task in pending:
                task.cancel()
            if pending:
                self.loop.run_until_complete(asyncio.gather(*pending, return_exceptions=True))
            self.loop.run_until_complete(self.loop.shutdown_asyncgens())
            self.loop.close()

    def is_current(self) -> bool:
        return threading.current_thread() is self._thread

    def ensure_not_current(self, what: str) -> None:
        if self.is_current():
            raise RuntimeError(f"{what} cannot be called from the fake backend's own thread")

    def run(self, coroutine: Awaitable[Any], timeout: float = 30.0) -> Any:
        self.ensure_not_current("a blocking call")
        future = asyncio.run_coroutine_threadsafe(coroutine, self.loop)  # type: ignore[arg-type]
        return future.result(timeout)

    def stop(self) -> None:
        if self._thread.is_alive():
            self.loop.call_soon_threadsafe(self.loop.stop)
            self._thread.join(timeout=10)


# =========================================================================== fleets


@dataclass
class FakeBackendSpec:
    """The constructor arguments of one :class:`FakeBackend` in a :class:`FakeFleet`."""

    name: str | None = None
    models: Sequence[str] | str = ("fake-model",)
    replies: ReplyScript | None = None
    faults: Faults | Mapping[str, Any] | None = None
    seed: int | None = None
    api_key: str | None = dataclasses.field(default=None, repr=False)
    host: str = "127.0.0.1"
    port: int = 0
    strict_models: bool = False

    def build(self) -> FakeBackend:
        return FakeBackend(**{f.name: getattr(self, f.name) for f in dataclasses.fields(self)})


class FakeFleet:
    """Several fake backends served by ONE background thread and loop.

    ``specs``: :class:`FakeBackendSpec` items (or dicts of its fields, or plain names), or a
    number of default backends. ``seed`` seeds each backend without its own (``seed + index``).
    Index by name (``fleet["a"]``) or position (``fleet[0]``).
    """

    def __init__(
        self,
        specs: Iterable[FakeBackendSpec | Mapping[str, Any] | str] | int,
        *,
        seed: int | None = None,
    ) -> None:
        if isinstance(specs, int):
            specs = [FakeBackendSpec() for _ in range(specs)]
        self.backends: list[FakeBackend] = []
        for index, item in enumerate(specs):
            if isinstance(item, str):
                spec = FakeBackendSpec(name=item)
            elif isinstance(item, Mapping):
                _check_keys(
                    "FakeBackendSpec",
                    item,
                    {f.name: 0 for f in dataclasses.fields(FakeBackendSpec)},
                )
                spec = FakeBackendSpec(**item)
            else:
                spec = item
            if spec.seed is None and seed is not None:
                spec = dataclasses.replace(spec, seed=seed + index)
            self.backends.append(spec.build())
        names = [b._name for b in self.backends if b._name is not None]
        if len(names) != len(set(names)):
            raise ValueError(f"FakeFleet backend names must be unique, got {names}")
        self._thread: _LoopThread | None = None

    def start(self) -> FakeFleet:
        if self._thread is not None:
            raise RuntimeError("FakeFleet is already started")
        thread = _LoopThread("fake-fleet")
        thread.start()
        self._thread = thread
        try:
            for backend in self.backends:
                backend._start_on(thread)
        except BaseException:
            self.stop()
            raise
        return self

    def stop(self) -> None:
        thread, self._thread = self._thread, None
        if thread is None:
            return
        try:
            for backend in self.backends:
                if backend._thread is thread:
                    backend.stop()
        finally:
            thread.stop()

    def add(self, spec: FakeBackendSpec | None = None, **fields: Any) -> FakeBackend:
        """Add a backend (started at once if the fleet runs)."""
        backend = (spec or FakeBackendSpec(**fields)).build()
        if backend._name is not None and backend._name in self.names:
            raise ValueError(f"a backend named {backend._name!r} is already in the fleet")
        if self._thread is not None:
            backend._start_on(self._thread)
        self.backends.append(backend)
        return backend

    def check(self) -> None:
        for backend in self.backends:
            backend.check()

    def __enter__(self) -> FakeFleet:
        return self.start()

    def __exit__(self, exc_type: Any, exc: Any, tb: Any) -> None:
        self.stop()
        if exc_type is None:
            self.check()

    async def __aenter__(self) -> FakeFleet:
        await asyncio.to_thread(self.start)
        return self

    async def __aexit__(self, exc_type: Any, exc: Any, tb: Any) -> None:
        await asyncio.to_thread(self.stop)
        if exc_type is None:
            self.check()

    @property
    def names(self) -> list[str]:
        return [b._name or "?" for b in self.backends]

    @property
    def urls(self) -> list[str]:
        return [b.url for b in self.backends]

    def __getitem__(self, key: str | int) -> FakeBackend:
        if isinstance(key, int):
            return self.backends[key]
        for backend in self.backends:
            if backend._name == key:
                return backend
        raise KeyError(f"no backend named {key!r} in the fleet (names: {self.names})")

    def __iter__(self) -> Iterator[FakeBackend]:
        return iter(self.backends)

    def __len__(self) -> int:
        return len(self.backends)

    def clear(self) -> None:
        for backend in self.backends:
            backend.clear()

    def request_counts(self) -> dict[str, int]:
        return {b.name: b.request_count for b in self.backends}

    def __repr__(self) -> str:
        return f"<FakeFleet {self.names}>"


# =========================================================================== child process


class FakeBackendProcess:
    """A fake backend running in a child process (see :func:`spawn_fake_backend`).

    Driven over the control routes; its ``faults``, ``requests`` and ``request_count``
    properties each make one HTTP call.
    """

    def __init__(self, process: subprocess.Popen[bytes], url: str, stderr_path: str) -> None:
        self.process = process
        self.url = url
        parts = urlsplit(url)
        self.host = parts.hostname or "127.0.0.1"
        self.port = parts.port or 80
        self.base_url = url.removesuffix("/v1")
        self._stderr_path = stderr_path

    @property
    def pid(self) -> int:
        return self.process.pid

    @property
    def name(self) -> str:
        return str(self._control("GET", "/health", headers=True)["x-fake-backend"])

    def _control(self, method: str, path: str, body: Any = None, *, headers: bool = False) -> Any:
        connection = http.client.HTTPConnection(self.host, self.port, timeout=10)
        try:
            payload = None if body is None else json.dumps(body).encode()
            connection.request(
                method, path, payload, {"content-type": "application/json"} if payload else {}
            )
            response = connection.getresponse()
            data = response.read()
            if response.status >= 400:
                raise RuntimeError(
                    f"fake backend control {method} {path} failed: {response.status} "
                    f"{data.decode(errors='replace')}"
                )
            if headers:
                return {k.lower(): v for k, v in response.getheaders()}
            return json.loads(data)
        finally:
            connection.close()

    @property
    def faults(self) -> Faults:
        return Faults.from_dict(self._control("GET", "/_fake/faults"))

    def set_faults(
        self, faults: Faults | Mapping[str, Any] | None = None, **changes: Any
    ) -> Faults:
        """Like :meth:`FakeBackend.set_faults`, over HTTP."""
        if faults is None:
            Faults().replace(**changes)  # validate names and values here, with a local traceback
            data = self._control("POST", "/_fake/faults?merge=true", _json_ready(changes))
        else:
            new = _as_faults(faults).replace(**changes)
            data = self._control("POST", "/_fake/faults", new.to_dict())
        return Faults.from_dict(data)

    def set_replies(self, replies: Sequence[Reply | str]) -> None:
        items = [r.to_dict() if isinstance(r, Reply) else r for r in replies]
        self._control("POST", "/_fake/replies", items)

    @property
    def requests(self) -> list[RecordedRequest]:
        data = self._control("GET", "/_fake/requests")
        return [RecordedRequest.from_dict(item) for item in data["requests"]]

    def last_requests(self, count: int) -> list[RecordedRequest]:
        data = self._control("GET", f"/_fake/requests?last={int(count)}")
        return [RecordedRequest.from_dict(item) for item in data["requests"]]

    @property
    def request_count(self) -> int:
        return int(self._control("GET", "/_fake/requests?last=0")["count"])

    def reset(self) -> None:
        self._control("POST", "/_fake/reset", {})

    def stop(self, timeout: float = 10.0) -> int:
        """Stop the child (SIGTERM, then SIGKILL after ``timeout``); returns its exit code."""
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        if self.process.stdout is not None:
            self.process.stdout.close()
        if self._stderr_path:
            try:
                os.unlink(self._stderr_path)
            except OSError:
                pass
            self._stderr_path = ""
        return self.process.returncode

    def __enter__(self) -> FakeBackendProcess:
        return self

    def __exit__(self, exc_type: Any, exc: Any, tb: Any) -> None:
        self.stop()

    def __repr__(self) -> str:
        state = "running" if self.process.poll() is None else f"exited {self.process.returncode}"
        return f"<FakeBackendProcess pid={self.pid} {self.url} {state}>"


def _json_ready(value: Any) -> Any:
    if isinstance(value, StatusError):
        return value.to_dict()
    if isinstance(value, Mapping):
        return {str(k): _json_ready(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_json_ready(v) for v in value]
    return value


def spawn_fake_backend(
    *,
    host: str = "127.0.0.1",
    port: int = 0,
    models: Sequence[str] | str = ("fake-model",),
    replies: Sequence[Reply | str] | None = None,
    faults: Faults | Mapping[str, Any] | None = None,
    name: str | None = None,
    seed: int | None = None,
    api_key: str | None = None,
    strict_models: bool = False,
    startup_timeout: float = 20.0,
    python: str | None = None,
) -> FakeBackendProcess:
    """Run ``python -m gonka_mux.testing`` in a child process and wait until it serves.

    Returns a started :class:`FakeBackendProcess` (a context manager that stops it). Replies
    must be a list (a callable cannot cross processes). The API key reaches the child through
    the environment, not its command line.
    """
    faults_obj = _as_faults(faults)
    command = [
        python or sys.executable,
        "-m",
        "gonka_mux.testing",
        "--host",
        host,
        "--port",
        str(port),
        "--faults-json",
        json.dumps(faults_obj.to_dict()),
    ]
    for model in (models,) if isinstance(models, str) else models:
        command += ["--model", model]
    if name is not None:
        command += ["--name", name]
    if seed is not None:
        command += ["--seed", str(seed)]
    if strict_models:
        command.append("--strict-models")
    if replies is not None:
        items = [r.to_dict() if isinstance(r, Reply) else r for r in replies]
        command += ["--replies-json", json.dumps(items)]
    env = dict(os.environ)
    env.pop(API_KEY_ENV, None)
    if api_key is not None:
        env[API_KEY_ENV] = api_key
    stderr_fd, stderr_path = tempfile.mkstemp(prefix="fake-backend-", suffix=".log")
    try:
        process = subprocess.Popen(
            command, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=stderr_fd, env=env
        )
    finally:
        os.close(stderr_fd)
    line = _read_line(process, startup_timeout)
    if not line.startswith("http"):
        process.kill()
        process.wait()
        with open(stderr_path, errors="replace") as file:
            detail = file.read()[-4000:]
        os.unlink(stderr_path)
        raise RuntimeError(
            f"fake backend child did not start (exit code {process.returncode}, "
            f"first line {line!r}):\n{detail}"
        )
    return FakeBackendProcess(process, line.strip(), stderr_path)


def _read_line(process: subprocess.Popen[bytes], timeout: float) -> str:
    """The child's first stdout line, or '' on timeout/exit (a thread: pipes are not selectable
    on every platform)."""
    result: list[bytes] = []
    assert process.stdout is not None
    reader = threading.Thread(
        target=lambda: result.append(process.stdout.readline()),  # type: ignore[union-attr]
        daemon=True,
    )
    reader.start()
    reader.join(timeout)
    return result[0].decode(errors="replace") if result else ""
