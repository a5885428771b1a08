"""Gonka brokers and devshard gateways, as they behave (the working path on mainnet since 2026-07).

A broker or a devshard gateway is OpenAI-compatible with a Bearer key, plus behaviours of its own
(gonka-docs FAQ; devshard gateway docs ``devshard/cmd/devshardctl``, read 2026-08; ``gonka-
protocol.md`` "Update"). :func:`~gonka_mux.gonka.registration.add_gonka_broker` registers one
endpoint per broker whose client (:class:`BrokerClient`) and error policy
(:class:`BrokerErrorPolicy`) handle them, and a :class:`GonkaBroker` that keeps it current:

* **per-model caps**: ``/v1/models`` gives each model's ``max_completion_tokens`` (4096 when a
  model lists none). A request above the cap is clamped (``on_token_cap="clamp"``, the default)
  or refused before it is sent (``"raise"``: :class:`BrokerRequestRefused`, the request moves on
  to another endpoint, or is raised when there is none). ``max_tokens`` is sent when a request
  has none (``default_max_tokens``, clamped to the cap);
* **strict field allowlist**: fields outside ``allowed_fields`` (:data:`DEFAULT_BROKER_FIELDS`;
  None sends everything) are dropped (``unknown_fields="drop"``, logged once per field) or
  refused (``"refuse"``). A broker's own 400 ``unknown field "x"`` (or ``max_tokens ... cap of
  N``) teaches the client, which resends the request adapted, once;
* **a gateway that moved** answers 308 with ``{"new_url": ...}``: the request follows it, and
  the endpoint keeps the new URL;
* **409** ``devshard unavailable``, **503/504** (model unavailable) are the endpoint's transient
  state (cooldown, fail over); **429** from the broker's limiter honours ``Retry-After``;
* **/v1/status** (polled every ``status_interval`` seconds where the broker offers it): capacity
  in use becomes the endpoint's ``external_load`` (utilisation plus queued requests, +10 while
  the limiter is exhausted), and ``phase: not_found`` marks it down until it serves again;
* **stale catalogs**: a model the broker answers 404 for is withdrawn from that endpoint (the
  core does it) until the next catalog refresh (every ``catalog_interval`` seconds), which also
  adds models the broker starts listing and drops those it stops listing;
* **/v1/requests/{id}**: :meth:`GonkaBroker.arequest_record` reads a reply's accounting.

Only the Multiplexer's public surface is used (``register_endpoint``, ``replace_endpoints``,
``mark_ready``/``mark_down``, ``on_start``/``on_close``, ``endpoint.external_load``).
"""

from __future__ import annotations

import asyncio
import json
import logging
import re
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Literal
from urllib.parse import quote

import httpx
import openai

from gonka_mux.routing.outcome import ErrorPolicy, Failure, Fault

from .config import DEFAULT_BROKER_FIELDS
from .epochs import as_int
from .errors import GonkaConfigError, GonkaError, GonkaPayloadError
from .policy import GonkaStatusError

if TYPE_CHECKING:
    from gonka_mux.endpoint import Endpoint

__all__ = [
    "DEFAULT_BROKER_FIELDS",
    "DEFAULT_TOKEN_CAP",
    "BrokerClient",
    "BrokerErrorPolicy",
    "BrokerRequestRecord",
    "BrokerRequestRefused",
    "BrokerState",
    "BrokerStatus",
    "GonkaBroker",
    "broker_of",
    "parse_broker_models",
    "parse_broker_status",
    "parse_request_record",
]

logger = logging.getLogger("gonka_mux.gonka")

DEFAULT_TOKEN_CAP = 4096  # what brokers and gateways cap max_tokens at when a model lists none
_ESSENTIAL = frozenset({"model", "messages", "prompt", "stream"})
_INFERENCE_PATHS = ("/chat/completions", "/completions")
_MAX_HOPS = 3  # 308 moves followed within one request
_UNKNOWN_FIELD = re.compile(
    r"""(?:unknown|unsupported|unrecognized|not allowed|not supported)[^"'`]{0,20}"""
    r"""(?:field|parameter|param|argument|key)s?[^"'`]{0,5}["'`]([A-Za-z0-9_.-]+)["'`]""",
    re.IGNORECASE,
)
_CAP = re.compile(r"cap(?:ped)?\s+(?:of|at|is)\s+(\d+)", re.IGNORECASE)
LIMITER_EXHAUSTED_LOAD = 10.0


class BrokerRequestRefused(GonkaStatusError, openai.BadRequestError):
    """A request refused before it was sent to a broker: a ``max_tokens`` above the broker's
    cap (``on_token_cap="raise"``) or a field it does not accept (``unknown_fields="refuse"``).
    Another endpoint is tried; raised when no other endpoint serves the model."""

    def __init__(self, message: str, *, code: str, param: str | None = None) -> None:
        self._setup(400, message, code=code, type_="invalid_request_error")
        self.param = param


# --------------------------------------------------------------------------- documents


def parse_broker_models(payload: Any, default_cap: int | None = DEFAULT_TOKEN_CAP) -> dict:
    """``{model id: max_completion_tokens cap}`` from a broker's ``/v1/models`` (OpenAI list or
    ``{"models": [...]}``); a model without a readable cap gets ``default_cap``."""
    if not isinstance(payload, Mapping):
        raise GonkaPayloadError("models", "expected a JSON object")
    items = payload.get("data")
    if items is None:
        items = payload.get("models")
    if not isinstance(items, list):
        raise GonkaPayloadError("models", "expected a 'data' or 'models' list")
    caps: dict[str, int | None] = {}
    for item in items:
        if not isinstance(item, Mapping):
            continue
        model = item.get("id")
        if not isinstance(model, str) or not model:
            continue
        cap: int | None = default_cap
        for key in ("max_completion_tokens", "max_output_tokens", "max_tokens"):
            try:
                value = as_int(item.get(key), 0, what=key)
            except GonkaPayloadError:
                continue
            if value > 0:
                cap = value
                break
        caps[model] = cap
    return caps


@dataclass(frozen=True)
class BrokerStatus:
    """A broker's ``/v1/status``: capacity in use, the limiter, the phase."""

    phase: str = "active"
    max_concurrent: int | None = None
    in_flight: int | None = None
    queued: int = 0
    limit_remaining: int | None = None
    limit_reset_s: float | None = None

    @property
    def serving(self) -> bool:
        return self.phase not in ("not_found", "disabled", "inactive", "down")

    def load(self, own_in_flight: int = 0) -> float:
        """Load to add to our own in-flight count: the others' share of the broker's capacity
        (0..1), plus requests queued beyond it, plus 10 while the limiter is exhausted."""
        load = float(self.queued)
        if self.in_flight is not None and self.max_concurrent:
            others = max(0, self.in_flight - own_in_flight)
            load += min(1.0, others / self.max_concurrent)
        if self.limit_remaining is not None and self.limit_remaining <= 0:
            load += LIMITER_EXHAUSTED_LOAD
        return load


def _number(value: Any) -> float | None:
    if isinstance(value, bool):
        return None
    if isinstance(value, (int, float)) and value == value and abs(value) != float("inf"):
        return float(value)
    if isinstance(value, str):
        try:
            return _number(float(value))
        except ValueError:
            return None
    return None


def parse_broker_status(payload: Any) -> BrokerStatus:
    """Read ``/v1/status`` leniently (unknown or missing fields are left unknown)."""
    if not isinstance(payload, Mapping):
        raise GonkaPayloadError("status", "expected a JSON object")
    capacity = payload.get("capacity")
    capacity = capacity if isinstance(capacity, Mapping) else {}
    limiter = payload.get("limiter")
    limiter = limiter if isinstance(limiter, Mapping) else {}
    phase = payload.get("phase")
    if not isinstance(phase, str) or not phase:
        status = payload.get("status")
        phase = "active" if status in (None, "ok", "active") else str(status)[:40]

    def integer(source: Mapping[str, Any], *keys: str) -> int | None:
        for key in keys:
            value = _number(source.get(key))
            if value is not None:
                return max(0, int(value))
        return None

    return BrokerStatus(
        phase=phase,
        max_concurrent=integer(capacity, "max_concurrent", "capacity", "slots"),
        in_flight=integer(capacity, "in_flight", "inflight", "active"),
        queued=integer(capacity, "queued", "queue_depth", "waiting") or 0,
        limit_remaining=integer(limiter, "remaining"),
        limit_reset_s=_number(limiter.get("reset_s")),
    )


@dataclass(frozen=True)
class BrokerRequestRecord:
    """A broker's accounting of one request (``/v1/requests/{id}``); ``raw`` is the document."""

    id: str
    model: str = ""
    status: str = ""
    prompt_tokens: int = 0
    completion_tokens: int = 0
    cost: float | None = None
    raw: Mapping[str, Any] = field(default_factory=dict, repr=False)


def parse_request_record(payload: Any, request_id: str = "") -> BrokerRequestRecord:
    if not isinstance(payload, Mapping):
        raise GonkaPayloadError("request record", "expected a JSON object")
    usage = payload.get("usage")
    usage = usage if isinstance(usage, Mapping) else payload
    cost = None
    for key in ("cost_usd", "cost", "charged", "amount"):
        cost = _number(payload.get(key))
        if cost is not None:
            break

    def text(key: str) -> str:
        value = payload.get(key)
        return value if isinstance(value, str) else ""

    return BrokerRequestRecord(
        id=text("id") or request_id,
        model=text("model"),
        status=text("status"),
        prompt_tokens=int(_number(usage.get("prompt_tokens")) or 0),
        completion_tokens=int(_number(usage.get("completion_tokens")) or 0),
        cost=cost,
        raw=dict(payload),
    )


# --------------------------------------------------------------------------- the client side


class BrokerState:
    """What one broker endpoint knows and does to each request (shared by its client, its
    error policy and its :class:`GonkaBroker`)."""

    def __init__(
        self,
        base_url: str,
        *,
        caps: Mapping[str, int | None] | None = None,
        default_cap: int | None = DEFAULT_TOKEN_CAP,
        default_max_tokens: int | None = DEFAULT_TOKEN_CAP,
        on_token_cap: Literal["clamp", "raise"] = "clamp",
        allowed_fields: Iterable[str] | None = DEFAULT_BROKER_FIELDS,
        unknown_fields: Literal["drop", "refuse"] = "drop",
    ) -> None:
        if on_token_cap not in ("clamp", "raise"):
            raise GonkaConfigError("on_token_cap", "expected 'clamp' or 'raise'")
        if unknown_fields not in ("drop", "refuse"):
            raise GonkaConfigError("unknown_fields", "expected 'drop' or 'refuse'")
        self.base_url = base_url
        self.caps: dict[str, int | None] = dict(caps or {})
        self.default_cap = default_cap
        self.default_max_tokens = default_max_tokens
        self.on_token_cap = on_token_cap
        self.allowed_fields = frozenset(allowed_fields) if allowed_fields is not None else None
        self.unknown_fields = unknown_fields
        self.denied: set[str] = set()  # fields the broker refused with its own 400
        self.clamped = 0
        self.dropped: dict[str, int] = {}
        self.moves: list[str] = []

    def cap(self, model: Any) -> int | None:
        if isinstance(model, str) and model in self.caps:
            return self.caps[model]
        return self.default_cap

    def prepare(self, path: str, params: dict[str, Any]) -> bool:
        """Fit ``params`` (changed in place) to this broker; True when something changed.
        Raises :class:`BrokerRequestRefused` where the settings say refuse."""
        if not path.endswith(_INFERENCE_PATHS):
            return False
        changed = self._fields(params)
        return self._tokens(params) or changed

    def _fields(self, params: dict[str, Any]) -> bool:
        allowed = self.allowed_fields
        unknown = [
            k
            for k in params
            if k not in _ESSENTIAL
            and ((allowed is not None and k not in allowed) or k in self.denied)
        ]
        if not unknown:
            return False
        if self.unknown_fields == "refuse":
            raise BrokerRequestRefused(
                f"the broker at {self.base_url} does not accept the field(s) "
                f"{', '.join(sorted(unknown))} (brokers and devshard gateways refuse fields "
                "outside their allowlist with a 400): remove them, or add the broker with "
                "unknown_fields='drop'.",
                code="field_not_accepted",
                param=unknown[0],
            )
        for key in unknown:
            params.pop(key, None)
            if key not in self.dropped:
                logger.info(
                    "not sending field %r to the broker at %s: it does not accept it",
                    key,
                    self.base_url,
                )
            self.dropped[key] = self.dropped.get(key, 0) + 1
        return True

    def _tokens(self, params: dict[str, Any]) -> bool:
        model = params.get("model")
        cap = self.cap(model)
        changed = False
        asked = [
            k
            for k in ("max_tokens", "max_completion_tokens")
            if isinstance(params.get(k), int) and not isinstance(params.get(k), bool)
        ]
        if not asked and self.default_max_tokens:
            value = self.default_max_tokens if cap is None else min(self.default_max_tokens, cap)
            params["max_tokens"] = value
            return True
        if cap is None:
            return False
        for key in asked:
            if params[key] <= cap:
                continue
            if self.on_token_cap == "raise":
                raise BrokerRequestRefused(
                    f"{key}={params[key]} is above the cap of {cap} tokens the broker at "
                    f"{self.base_url} sets for {model} (its /v1/models): ask for at most {cap}, "
                    "or add the broker with on_token_cap='clamp'.",
                    code="max_tokens_above_cap",
                    param=key,
                )
            params[key] = cap
            self.clamped += 1
            changed = True
        return changed

    def learn(self, exc: BaseException, model: Any) -> bool:
        """Learn from a broker's 400 (a field it refuses, a cap it enforces); True when the
        request may be resent adapted."""
        if getattr(exc, "status_code", None) != 400:
            return False
        body = _error_document(exc)
        message = str(body.get("message") or "") if isinstance(body, Mapping) else ""
        code = str(body.get("code") or "") if isinstance(body, Mapping) else ""
        param = body.get("param") if isinstance(body, Mapping) else None
        cap_match = _CAP.search(message)
        if cap_match and isinstance(model, str) and ("max_tokens" in message or "cap" in code):
            self.caps[model] = int(cap_match.group(1))
            return self.on_token_cap == "clamp"
        field_match = _UNKNOWN_FIELD.search(message)
        name = field_match.group(1) if field_match else None
        if name is None and "unknown_field" in code and isinstance(param, str):
            name = param
        if name and name not in _ESSENTIAL and name not in self.denied:
            self.denied.add(name)
            logger.info(
                "the broker at %s refuses the field %r: not sent again", self.base_url, name
            )
            return self.unknown_fields == "drop"
        return False


def _error_document(exc: BaseException) -> Any:
    response = getattr(exc, "response", None)
    try:
        document = response.json() if response is not None else None
    except Exception:
        document = None
    if isinstance(document, Mapping):
        inner = document.get("error")
        return inner if isinstance(inner, Mapping) else document
    body = getattr(exc, "body", None)
    return body if isinstance(body, Mapping) else {}


def moved_to(exc: BaseException) -> str | None:
    """The ``new_url`` of a 308 JSON answer (a gateway that moved), or its ``Location``."""
    if getattr(exc, "status_code", None) not in (301, 307, 308):
        return None
    response = getattr(exc, "response", None)
    try:
        document = response.json() if response is not None else None
    except Exception:
        document = None
    candidates: list[Any] = []
    if isinstance(document, Mapping):
        candidates += [document.get("new_url"), document.get("url")]
        inner = document.get("error")
        if isinstance(inner, Mapping):
            candidates.append(inner.get("new_url"))
    headers = getattr(response, "headers", None)
    if headers is not None:
        candidates.append(headers.get("location"))
    for candidate in candidates:
        if isinstance(candidate, str) and candidate.startswith(("http://", "https://")):
            return candidate.strip()
    return None


def _new_base(new_url: str, path: str) -> str:
    """The new base URL: ``new_url`` itself, or without the request's path when it names it."""
    url = new_url.rstrip("/")
    suffix = "/" + path.strip("/")
    if url.endswith(suffix):
        url = url[: -len(suffix)]
    return url


class BrokerClient:
    """The endpoint's client: an ``openai.AsyncOpenAI`` whose ``post`` fits each request to
    the broker (caps, fields), follows a 308 move and resends once after a 400 it learnt from.
    Everything else is the wrapped client's."""

    def __init__(self, client: Any, state: BrokerState) -> None:
        self._client = client
        self.state = state
        self.broker: GonkaBroker | None = None

    @property
    def base_url(self) -> Any:
        return self._client.base_url

    def __getattr__(self, name: str) -> Any:
        return getattr(self._client, name)

    async def close(self) -> None:
        await self._client.close()

    async def post(
        self,
        path: str,
        *,
        cast_to: Any,
        body: Any = None,
        content: Any = None,
        files: Any = None,
        options: Any = None,
        stream: bool = False,
        stream_cls: Any = None,
    ) -> Any:
        params: Any = body
        if content is not None:
            try:
                params = json.loads(content)
            except (ValueError, TypeError, RecursionError):
                params = None
        if not isinstance(params, dict):  # not a JSON object: send as given
            return await self._send(path, cast_to, body, content, options, stream, stream_cls)
        params = dict(params)
        self.state.prepare(path, params)
        learnt = False
        hops = 0
        while True:
            payload = json.dumps(params, separators=(",", ":"), ensure_ascii=False).encode()
            try:
                return await self._send(path, cast_to, None, payload, options, stream, stream_cls)
            except openai.APIStatusError as exc:
                target = moved_to(exc)
                if target is not None and hops < _MAX_HOPS:
                    hops += 1
                    self._move(_new_base(target, path))
                    continue
                if not learnt and self.state.learn(exc, params.get("model")):
                    learnt = True
                    self.state.prepare(path, params)
                    continue
                raise

    async def _send(
        self,
        path: str,
        cast_to: Any,
        body: Any,
        content: Any,
        options: Any,
        stream: bool,
        stream_cls: Any,
    ) -> Any:
        kwargs: dict[str, Any] = {"cast_to": cast_to, "options": options or {}}
        if content is not None:
            kwargs["content"] = content
        else:
            kwargs["body"] = body
        if stream:
            return await self._client.post(path, **kwargs, stream=True, stream_cls=stream_cls)
        return await self._client.post(path, **kwargs)

    def _move(self, new_base: str) -> None:
        old = str(self._client.base_url).rstrip("/")
        if new_base.rstrip("/") == old:
            return
        self._client.base_url = new_base
        self.state.base_url = new_base.rstrip("/")
        self.state.moves.append(self.state.base_url)
        logger.warning(
            "the broker at %s moved to %s (HTTP 308): using the new URL from now on",
            old,
            self.state.base_url,
        )

    def __repr__(self) -> str:  # never shows the key
        return f"BrokerClient(base_url={self.state.base_url!r})"


class BrokerErrorPolicy(ErrorPolicy):
    """A broker endpoint's error policy: the default table, where 409 (devshard unavailable)
    and 503/504 (model unavailable) are the endpoint's transient state, 429 honours
    ``Retry-After``, 404 withdraws the model from this endpoint until the next catalog refresh;
    plus :class:`BrokerRequestRefused` (refused before sending: another endpoint is tried, or
    it is raised when none serves the model)."""

    def __init__(self, mux: Any = None) -> None:
        self.mux = mux
        self.endpoint: Endpoint | None = None

    def _alternative(self) -> bool:
        ep, mux = self.endpoint, self.mux
        if ep is None or mux is None:
            return False
        try:
            return any(
                other is not ep and not other.removed
                for public in ep.models
                for other in mux.endpoints_for(public)
            )
        except Exception:
            return False

    def classify(self, exc: BaseException) -> Failure:
        if isinstance(exc, BrokerRequestRefused):
            alternative = self._alternative()
            return Failure(
                "client_error",
                400,
                alternative,
                exc,
                penalize=False,
                message=f"refused before sending: {exc.code}",
                fault=Fault.TRANSIENT if alternative else Fault.CALLER,
            )
        return super().classify(exc)

    def classify_status(self, exc: Any, status: int, body: str | None) -> Failure:
        if status in (301, 307, 308):  # moved without a usable new_url
            return Failure("server_error", status, True, exc, body=body, message="moved (308)")
        failure = super().classify_status(exc, status, body)
        if status == 409:
            failure.message = "devshard unavailable (409)"
        elif status in (503, 504):
            failure.message = f"model unavailable ({status})"
        return failure

    def __repr__(self) -> str:
        return "BrokerErrorPolicy()"


def broker_of(endpoint: Any) -> GonkaBroker | None:
    """The :class:`GonkaBroker` behind an endpoint added by ``add_gonka_broker`` (else None)."""
    client = getattr(endpoint, "client", None)
    return client.broker if isinstance(client, BrokerClient) else None


# --------------------------------------------------------------------------- the source


class GonkaBroker:
    """Keeps one broker endpoint current: its catalog (caps, models, withdrawn models back) and
    its ``/v1/status`` (load, down/ready). Runs on the Multiplexer's loop, stops with it."""

    def __init__(
        self,
        mux: Any,
        endpoint: Endpoint,
        state: BrokerState,
        api_key: str,
        *,
        catalog_managed: bool,
        model_prefix: str = "",
        status_interval: float | None = 10.0,
        catalog_interval: float | None = 300.0,
        timeout: float = 10.0,
    ) -> None:
        for name, value in (
            ("status_interval", status_interval),
            ("catalog_interval", catalog_interval),
        ):
            if value is not None and not value > 0:
                raise GonkaConfigError(name, "expected seconds > 0, or None to turn it off")
        self.mux = mux
        self.endpoint = endpoint
        self.state = state
        self._api_key = api_key
        self.catalog_managed = catalog_managed
        self.model_prefix = model_prefix
        self.status_interval = status_interval
        self.catalog_interval = catalog_interval
        self.timeout = timeout
        self.last_status: BrokerStatus | None = None
        self.status_offered = True
        self.catalog_refreshes = 0
        self.status_polls = 0
        self._downed = False
        self._task: asyncio.Task[None] | None = None
        self._http: Any = None
        self._closed = False

    @property
    def base_url(self) -> str:
        return self.state.base_url

    @property
    def is_running(self) -> bool:
        return self._task is not None and not self._task.done()

    # -- lifecycle ----------------------------------------------------------------------
    async def start(self) -> None:
        """Start the polls on the running loop (the Multiplexer's); idempotent."""
        if self._closed or self.is_running:
            return
        if self.status_interval is None and self.catalog_interval is None:
            return
        self._task = asyncio.get_running_loop().create_task(
            self._run(), name=f"gonka-broker-{self.endpoint.name}"
        )

    async def aclose(self) -> None:
        self._closed = True
        task, self._task = self._task, None
        if task is not None and not task.done():
            task.cancel()
            try:
                await task
            except asyncio.CancelledError:
                pass
        http, self._http = self._http, None
        if http is not None:
            await http.aclose()

    async def _run(self) -> None:
        now = time.monotonic()
        next_status = now if self.status_interval is not None else float("inf")
        next_catalog = (
            now + self.catalog_interval if self.catalog_interval is not None else float("inf")
        )
        while not self._closed:
            wake = min(next_status, next_catalog)
            if wake == float("inf"):
                return
            await asyncio.sleep(max(0.0, wake - time.monotonic()))
            try:
                if time.monotonic() >= next_status and self.status_interval is not None:
                    await self.apoll_status()
                    next_status = time.monotonic() + self.status_interval
                    if not self.status_offered:
                        next_status = float("inf")
                if time.monotonic() >= next_catalog and self.catalog_interval is not None:
                    await self.arefresh_catalog()
                    next_catalog = time.monotonic() + self.catalog_interval
            except asyncio.CancelledError:
                raise
            except Exception:  # a bug must not stop the polls
                logger.exception("polling the broker at %s failed", self.base_url)

    # -- HTTP -----------------------------------------------------------------------------
    def _client(self) -> Any:
        if self._http is None:
            self._http = httpx.AsyncClient(
                timeout=self.timeout,
                follow_redirects=True,
                headers={"Accept": "application/json", "User-Agent": "gonka-mux"},
            )
        return self._http

    async def _get(self, path: str) -> tuple[int | None, Any]:
        url = f"{self.state.base_url}{path}"
        try:
            response = await self._client().get(
                url, headers={"Authorization": f"Bearer {self._api_key}"}
            )
        except (httpx.HTTPError, httpx.InvalidURL) as exc:
            logger.debug("GET %s failed: %s", url, type(exc).__name__)
            return None, None
        try:
            return response.status_code, json.loads(response.content)
        except (ValueError, RecursionError):
            return response.status_code, None

    # -- status -----------------------------------------------------------------------------
    async def apoll_status(self) -> BrokerStatus | None:
        """Read ``/v1/status`` now and feed it to routing (load; down while not serving)."""
        status_code, payload = await self._get("/status")
        self.status_polls += 1
        if status_code == 404:
            self.status_offered = False  # this broker does not offer it
            return None
        if status_code != 200:
            return None
        try:
            status = parse_broker_status(payload)
        except GonkaError:
            return None
        self.last_status = status
        self._apply_status(status)
        return status

    def _apply_status(self, status: BrokerStatus) -> None:
        ep = self.endpoint
        if ep.removed:
            return
        ep.external_load = status.load(ep.inflight)
        if not status.serving and ep.lifecycle == "active":
            self._downed = True
            logger.info("the broker at %s reports %r: not serving", self.base_url, status.phase)
            self.mux.mark_down(ep)
        elif status.serving and self._downed:
            self._downed = False
            self.mux.mark_ready(ep)

    # -- catalog ----------------------------------------------------------------------------
    async def arefresh_catalog(self) -> bool:
        """Re-read ``/v1/models``: caps, models listed now, and models withdrawn after a 404
        back in rotation. False when it could not be read."""
        status_code, payload = await self._get("/models")
        if status_code != 200:
            return False
        try:
            caps = parse_broker_models(payload, self.state.default_cap)
        except GonkaError:
            return False
        self.catalog_refreshes += 1
        self.state.caps.update(caps)
        self._reconcile(caps)
        return True

    def _reconcile(self, caps: Mapping[str, int | None]) -> None:
        ep = self.endpoint
        if ep.removed:
            return
        if self.catalog_managed and caps:
            wanted = {f"{self.model_prefix}{m}": m for m in caps}
            current = {**ep.models, **ep.withdrawn}
            if wanted != current:
                added = sorted(set(wanted) - set(current))
                dropped = sorted(set(current) - set(wanted))
                logger.info(
                    "the broker at %s now lists %d model(s): +%s -%s",
                    self.base_url,
                    len(wanted),
                    added,
                    dropped,
                )
                ep.models.clear()
                ep.models.update(wanted)
                ep.withdrawn.clear()
                members = [e for e in self.mux.endpoints if e.group == ep.group]
                self.mux.replace_endpoints(ep.group, members)  # pools see the new models
                return
        if ep.withdrawn:
            logger.info(
                "catalog refresh of the broker at %s: %s back in rotation",
                self.base_url,
                sorted(ep.withdrawn),
            )
            self.mux.mark_ready(ep)

    # -- accounting -------------------------------------------------------------------------
    async def arequest_record(self, request_id: str) -> BrokerRequestRecord:
        """The broker's accounting of one reply (its ``id``) from ``/v1/requests/{id}``."""
        status_code, payload = await self._get(f"/requests/{quote(request_id, safe='')}")
        if status_code != 200:
            raise GonkaError(
                f"the broker at {self.base_url} has no accounting for request {request_id!r} "
                f"(HTTP {status_code})"
            )
        return parse_request_record(payload, request_id)

    def __repr__(self) -> str:
        return f"GonkaBroker({self.base_url!r}, endpoint={self.endpoint.name!r})"
