"""A fake Gonka broker / devshard gateway on loopback: OpenAI-compatible, Bearer key, and the
behaviours the real ones have that a client must handle.

The working path to Gonka on mainnet since July 2026 is a community broker or a devshard gateway
(``devshardctl``): OpenAI-compatible, ``Authorization: Bearer <key>``. Beyond the OpenAI surface
they have behaviours of their own (gonka-docs FAQ and the devshard gateway's docs, Aug 2026;
``gonka-protocol.md`` "Update"), all reproduced here::

    from gonka_mux.testing.fake_broker import FakeBroker

    model = "MiniMaxAI/MiniMax-M2.7"
    with FakeBroker("sk-test", models=[model], caps={model: 2048}) as broker:
        client = openai.OpenAI(base_url=broker.url, api_key="sk-test")
        ...
        broker.move_to(other.url)                 # 308 {"new_url": ...}
        broker.set_devshard_available(False)      # 409 "devshard unavailable"

* ``GET /v1/models`` lists the *catalog* (it may be stale: :meth:`set_catalog`), each model with
  its ``max_completion_tokens`` cap (``caps``, else ``default_cap``, 4096);
* ``POST /v1/chat/completions`` and ``/v1/completions``, checked in this order:

  1. the gateway moved (:meth:`move_to`): **308** with JSON ``{"error": ..., "new_url": "<new
     base URL>"}`` (no ``Location`` header: clients must read the body);
  2. body not JSON -> 400; a top-level field outside the strict allowlist (``allowed_fields``;
     ``None`` accepts anything) -> **400** ``unknown field "<name>"`` (``param`` names it);
  3. a model the broker does not serve (:meth:`set_served`; a stale catalog still lists it)
     -> **404** ``model_not_found``;
  4. ``max_tokens``/``max_completion_tokens`` above the model's cap -> **400**
     ``max_tokens_exceeded``;
  5. devshard unavailable (:meth:`set_devshard_available`) -> **409** ``devshard unavailable``;
  6. model unavailable (:meth:`set_model_unavailable`) -> **503** or **504**;
  7. the limiter (:meth:`set_rate_limit`: ``limit`` requests per ``window`` seconds) -> **429**
     with ``Retry-After`` (seconds to the window's end);
  8. otherwise the completion, produced by an inner :class:`~gonka_mux.testing.FakeBackend`
     (``"ok from <name>"``; its replies and faults are the broker's: :meth:`set_replies`,
     :meth:`set_faults`), with an ``x-request-id`` header equal to the reply's ``id``;

* ``GET /v1/status``: ``{"status", "phase", "capacity": {"max_concurrent", "in_flight",
  "queued"}, "limiter": {"limit", "remaining", "reset_s"}}`` (``in_flight`` counts this
  broker's requests in progress plus :meth:`set_background_load`, other users' requests);
* ``GET /v1/requests/{id}``: the accounting of one served request (model, tokens, cost).

Field names of ``/v1/status`` and ``/v1/requests/{id}`` are this fake's (the gateways' own
documents do not fix them); gonka_mux reads them leniently. Everything runs on one background
thread with its own event loop. ``requests`` records what arrived (:class:`BrokerRequestRecord`).
"""

from __future__ import annotations

import asyncio
import hmac
import json
import math
import threading
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from gonka_mux.testing._server import (
    Abort,
    HTTPException,
    HTTPServer,
    Request,
    Response,
    StreamingResponse,
    error_body,
)
from gonka_mux.testing.fake_backend import FakeBackend, Faults, _LoopThread

__all__ = ["DEFAULT_ACCEPTED_FIELDS", "BrokerRequestRecord", "FakeBroker"]

DEFAULT_CAP = 4096
# The OpenAI request fields the fake accepts by default (a strict gateway allowlist).
DEFAULT_ACCEPTED_FIELDS = frozenset(
    {
        "model",
        "messages",
        "prompt",
        "max_tokens",
        "max_completion_tokens",
        "temperature",
        "top_p",
        "n",
        "stream",
        "stream_options",
        "stop",
        "presence_penalty",
        "frequency_penalty",
        "seed",
        "tools",
        "tool_choice",
        "parallel_tool_calls",
        "response_format",
        "logprobs",
        "top_logprobs",
        "logit_bias",
        "user",
    }
)
CHAT_PATHS = ("/v1/chat/completions", "/v1/completions")


@dataclass(frozen=True, repr=False)
class BrokerRequestRecord:
    """One request the fake broker received and its answer."""

    method: str
    path: str
    headers: Mapping[str, str]
    body: bytes
    time: float
    status: int | None

    @property
    def json(self) -> Any:
        try:
            return json.loads(self.body) if self.body else None
        except ValueError:
            return None

    def __repr__(self) -> str:
        return f"BrokerRequestRecord({self.method} {self.path} status={self.status})"


class FakeBroker:
    """See the module docstring. ``models`` are served and listed; ``caps`` maps a model to its
    ``max_completion_tokens`` cap (``default_cap`` for the others); ``allowed_fields`` is the
    strict field allowlist; ``capacity`` what ``/v1/status`` reports as ``max_concurrent``;
    ``price`` (per 1M prompt and completion tokens) what the accounting charges."""

    def __init__(
        self,
        api_key: str,
        *,
        models: Sequence[str] | str = ("Qwen/Fake-7B",),
        caps: Mapping[str, int] | None = None,
        default_cap: int = DEFAULT_CAP,
        allowed_fields: Iterable[str] | None = DEFAULT_ACCEPTED_FIELDS,
        capacity: int = 16,
        name: str = "broker",
        faults: Faults | Mapping[str, Any] | None = None,
        seed: int | None = None,
        price: tuple[float, float] = (0.1, 0.4),
    ) -> None:
        if not api_key:
            raise ValueError("a fake broker needs an API key")
        models = (models,) if isinstance(models, str) else tuple(models)
        if not models:
            raise ValueError("a fake broker serves at least one model")
        self._api_key = api_key
        self.name = name
        self.backend = FakeBackend(models=models, name=name, faults=faults, seed=seed)
        self.catalog: tuple[str, ...] = models
        self.served: frozenset[str] = frozenset(models)
        self.caps = dict(caps or {})
        self.default_cap = default_cap
        self.allowed_fields = frozenset(allowed_fields) if allowed_fields is not None else None
        self.capacity = capacity
        self.price = price
        self.moved_to: str | None = None
        self.devshard_available = True
        self.unavailable: dict[str, int] = {}
        self.background_load = 0
        self.phase = "active"
        self._limit: tuple[int, float] | None = None
        self._window_start = 0.0
        self._window_count = 0
        self._in_flight = 0
        self._lock = threading.Lock()
        self._records: list[BrokerRequestRecord] = []
        self.accounting: dict[str, dict[str, Any]] = {}
        self._thread: _LoopThread | None = None
        self._server: HTTPServer | None = None

    # ------------------------------------------------------------------ lifecycle

    def start(self) -> FakeBroker:
        if self._thread is not None:
            raise RuntimeError("the fake broker is already started")
        thread = _LoopThread(f"fake-broker-{self.name}")
        thread.start()
        self._thread = thread
        try:
            thread.run(self._astart())
        except BaseException:
            self.stop()
            raise
        return self

    async def _astart(self) -> None:
        server = HTTPServer(self.handle, default_headers={"server": "fake-gonka-broker"})
        await server.start("127.0.0.1", 0)
        self._server = server

    def stop(self) -> None:
        thread, self._thread = self._thread, None
        if thread is None:
            return
        server, self._server = self._server, None
        try:
            if server is not None:
                thread.run(server.stop())
        finally:
            thread.stop()

    def __enter__(self) -> FakeBroker:
        return self.start()

    def __exit__(self, *exc_info: Any) -> None:
        self.stop()

    async def __aenter__(self) -> FakeBroker:
        await asyncio.to_thread(self.start)
        return self

    async def __aexit__(self, *exc_info: Any) -> None:
        await asyncio.to_thread(self.stop)

    # ------------------------------------------------------------------ addresses

    @property
    def base_url(self) -> str:
        """``http://127.0.0.1:<port>`` (no ``/v1``)."""
        if self._server is None:
            raise RuntimeError("the fake broker is not started")
        return f"http://127.0.0.1:{self._server.port}"

    @property
    def url(self) -> str:
        """The OpenAI base URL, ``http://127.0.0.1:<port>/v1``."""
        return f"{self.base_url}/v1"

    # ------------------------------------------------------------------ behaviours

    def move_to(self, new_url: str | FakeBroker | None) -> None:
        """Answer inference with 308 ``{"new_url": ...}`` (a gateway that moved); None: stop."""
        self.moved_to = new_url.url if isinstance(new_url, FakeBroker) else new_url

    def set_devshard_available(self, available: bool) -> None:
        """False: inference answers 409 ``devshard unavailable``."""
        self.devshard_available = available

    def set_model_unavailable(self, model: str, status: int | None = 503) -> None:
        """Answer ``model`` with ``status`` (503 or 504); None: available again."""
        if status is None:
            self.unavailable.pop(model, None)
        elif status not in (503, 504):
            raise ValueError("a model is unavailable with 503 or 504")
        else:
            self.unavailable[model] = status

    def set_rate_limit(self, limit: int | None, window: float = 60.0) -> None:
        """At most ``limit`` inference requests per ``window`` seconds (None: no limiter)."""
        with self._lock:
            self._limit = None if limit is None else (int(limit), float(window))
            self._window_start = time.monotonic()
            self._window_count = 0

    def set_catalog(self, models: Sequence[str]) -> None:
        """What ``/v1/models`` lists (a stale catalog lists models no longer served)."""
        self.catalog = tuple(models)

    def set_served(self, models: Sequence[str]) -> None:
        """What inference serves (a model not served answers 404)."""
        self.served = frozenset(models)
        self.backend.models = tuple(models) or self.backend.models

    def set_cap(self, model: str, cap: int) -> None:
        self.caps[model] = cap

    def set_background_load(self, in_flight: int) -> None:
        """Other users' requests in progress, reported by ``/v1/status``."""
        self.background_load = max(0, int(in_flight))

    def set_phase(self, phase: str) -> None:
        """The ``phase`` ``/v1/status`` reports (``not_found``: no devshard runtime)."""
        self.phase = phase

    def set_replies(self, replies: Any) -> None:
        self.backend.set_replies(replies)

    def set_faults(
        self, faults: Faults | Mapping[str, Any] | None = None, **changes: Any
    ) -> Faults:
        return self.backend.set_faults(faults, **changes)

    def cap(self, model: str) -> int:
        return int(self.caps.get(model, self.default_cap))

    # ------------------------------------------------------------------ request log

    @property
    def requests(self) -> list[BrokerRequestRecord]:
        with self._lock:
            return list(self._records)

    @property
    def request_count(self) -> int:
        """Inference requests received (any answer)."""
        return len(self.inference_requests)

    @property
    def inference_requests(self) -> list[BrokerRequestRecord]:
        return [r for r in self.requests if r.method == "POST" and r.path in CHAT_PATHS]

    def clear(self) -> None:
        with self._lock:
            self._records.clear()

    def _record(self, request: Request, status: int | None) -> None:
        record = BrokerRequestRecord(
            request.method, request.path, request.headers, request.body, time.time(), status
        )
        with self._lock:
            self._records.append(record)

    # ------------------------------------------------------------------ serving

    async def handle(self, request: Request) -> Response | StreamingResponse:
        try:
            response = await self._answer(request)
        except HTTPException as exc:
            self._record(request, exc.status)
            raise
        except Abort:
            self._record(request, None)
            raise
        self._record(request, response.status)
        return response

    def _authorized(self, request: Request) -> bool:
        scheme, _, token = request.headers.get("authorization", "").partition(" ")
        return scheme.lower() == "bearer" and hmac.compare_digest(
            token.strip().encode(), self._api_key.encode()
        )

    async def _answer(self, request: Request) -> Response | StreamingResponse:
        path = request.path
        if not path.startswith("/v1/"):
            raise HTTPException(404, f"unknown route {path}")
        if not self._authorized(request):
            raise HTTPException(401, "invalid API key", code="invalid_api_key")
        if request.method == "GET":
            if path == "/v1/models":
                return Response.json(self._models())
            if path == "/v1/status":
                return Response.json(self._status())
            if path.startswith("/v1/requests/"):
                record = self.accounting.get(path.removeprefix("/v1/requests/"))
                if record is None:
                    raise HTTPException(404, "unknown request id", code="request_not_found")
                return Response.json(record)
            raise HTTPException(404, f"unknown route {path}")
        if request.method != "POST" or path not in CHAT_PATHS:
            raise HTTPException(404, f"unknown route {request.method} {path}")
        return await self._inference(request)

    async def _inference(self, request: Request) -> Response | StreamingResponse:
        if self.moved_to is not None:
            body = error_body("this gateway moved; use new_url", "gateway_moved")
            body["new_url"] = self.moved_to
            return Response.json(body, 308)
        try:
            body = json.loads(request.body)
        except (ValueError, RecursionError):
            raise HTTPException(400, "request body is not valid JSON") from None
        if not isinstance(body, dict):
            raise HTTPException(400, "request body must be a JSON object")
        if self.allowed_fields is not None:
            for field in body:
                if field not in self.allowed_fields:
                    raise HTTPException(
                        400, f'unknown field "{field}"', param=field, code="unknown_field"
                    )
        model = body.get("model")
        if not isinstance(model, str) or model not in self.served:
            raise HTTPException(404, f"model {model!s:.80} not found", code="model_not_found")
        cap = self.cap(model)
        for field in ("max_tokens", "max_completion_tokens"):
            value = body.get(field)
            if isinstance(value, int) and not isinstance(value, bool) and value > cap:
                raise HTTPException(
                    400,
                    f"{field} {value} exceeds this model's cap of {cap}",
                    param=field,
                    code="max_tokens_exceeded",
                )
        if not self.devshard_available:
            raise HTTPException(409, "devshard unavailable", code="devshard_unavailable")
        status = self.unavailable.get(model)
        if status is not None:
            raise HTTPException(status, f"model {model} is unavailable", code="model_unavailable")
        retry_after = self._limited()
        if retry_after is not None:
            raise HTTPException(
                429,
                "rate limit exceeded",
                code="rate_limit_exceeded",
                headers={"retry-after": f"{retry_after:.3f}"},
            )
        self._in_flight += 1
        try:
            response = await self.backend.handle(request)
        finally:
            self._in_flight -= 1
        return self._account(model, body, response)

    def _limited(self) -> float | None:
        with self._lock:
            if self._limit is None:
                return None
            limit, window = self._limit
            now = time.monotonic()
            if now - self._window_start >= window:
                self._window_start, self._window_count = now, 0
            if self._window_count >= limit:
                return max(0.001, self._window_start + window - now)
            self._window_count += 1
            return None

    def _account(
        self, model: str, body: Mapping[str, Any], response: Response | StreamingResponse
    ) -> Response | StreamingResponse:
        if not isinstance(response, Response) or response.status != 200:
            return response
        try:
            document = json.loads(response.body)
        except ValueError:
            return response
        request_id = document.get("id")
        if not isinstance(request_id, str):
            return response
        usage = document.get("usage") or {}
        prompt = int(usage.get("prompt_tokens") or 0)
        completion = int(usage.get("completion_tokens") or 0)
        self.accounting[request_id] = {
            "id": request_id,
            "model": model,
            "status": "completed",
            "prompt_tokens": prompt,
            "completion_tokens": completion,
            "max_tokens": body.get("max_tokens") or body.get("max_completion_tokens"),
            "cost_usd": round((prompt * self.price[0] + completion * self.price[1]) / 1e6, 9),
            "created": int(time.time()),
        }
        response.headers.append(("x-request-id", request_id))
        return response

    def _models(self) -> dict[str, Any]:
        return {
            "object": "list",
            "data": [
                {
                    "id": model,
                    "object": "model",
                    "owned_by": "gonka",
                    "max_completion_tokens": self.cap(model),
                }
                for model in self.catalog
            ],
        }

    def _status(self) -> dict[str, Any]:
        with self._lock:
            limit = self._limit
            remaining = None
            reset = None
            if limit is not None:
                now = time.monotonic()
                elapsed = now - self._window_start
                if elapsed >= limit[1]:
                    remaining, reset = limit[0], limit[1]
                else:
                    remaining, reset = max(0, limit[0] - self._window_count), limit[1] - elapsed
        return {
            "status": "ok" if self.phase == "active" else self.phase,
            "phase": self.phase,
            "capacity": {
                "max_concurrent": self.capacity,
                "in_flight": self._in_flight + self.background_load,
                "queued": max(0, self._in_flight + self.background_load - self.capacity),
            },
            "limiter": {
                "limit": limit[0] if limit is not None else None,
                "remaining": remaining,
                "reset_s": None if reset is None else math.ceil(reset * 1000) / 1000,
            },
        }

    def __repr__(self) -> str:
        state = "running" if self._server is not None else "stopped"
        return f"<FakeBroker {self.name} {state}>"
