"""Put Gonka capacity into a Multiplexer: signed participants and Bearer-key brokers.

:func:`register_gonka_models` discovers the participants of the current epoch (or takes an
explicit ``url;address`` list) and registers one signed endpoint per participant per model, all
in the endpoint group ``"gonka"``::

    mux = AsyncMultiplexer()
    result = await aregister_gonka_models(mux, source_url="http://node1.example:8000")
    await mux.chat.completions.create(model="MiniMaxAI/MiniMax-M2.7", messages=[...])

* The public model name is the model id, so every participant serving a model joins one pool
  (``model_name_prefix="gonka:"`` gives ``"gonka:MiniMaxAI/MiniMax-M2.7"`` instead). An
  endpoint's weight is the participant's PoC weight; ``register_as_fallback`` puts them in the
  fallback tier.
* Each participant gets one ``openai.AsyncOpenAI`` (the SDK's own HTTP client, its retries off:
  the Multiplexer fails over) whose auth flow signs every attempt and resyncs the clock to chain
  time on a timestamp rejection. Every request carries ``max_tokens`` (``default_max_tokens``)
  because the network escrows 5000 tokens for a request without one.
* Each endpoint has a :class:`~gonka_mux.gonka.policy.GonkaErrorPolicy`.
* With ``refresh_enabled`` (the default) a :class:`~gonka_mux.gonka.refresh.GonkaRefreshManager`
  follows epoch changes and swaps the group atomically; it stops with the Multiplexer.

:func:`add_gonka_broker` adds an OpenAI-compatible broker or devshard gateway (Bearer key) beside
them, or alone (:mod:`gonka_mux.gonka.broker` handles their caps, strict fields, moves, limiter
and status): since July 2026 (v0.2.14) every mainnet host answers classic signed requests with
410, and the first such answer retires the signed group (one warning).

Settings come from the arguments, then a :class:`~gonka_mux.gonka.config.GonkaConfig`
(``config=``, else the ``[gonka]`` table of the file the Multiplexer was built from), then the
environment (``GONKA_PRIVATE_KEY``, ``GONKA_SOURCE_URL``, ``GONKA_ENDPOINTS`` = ``url;address,...``,
``GONKA_ADDRESS``, ``GONKA_VERIFY_PROOF``...).

Both Multiplexer faces work: with the sync ``Multiplexer`` discovery runs in the calling thread
and the endpoint group and its refresh live on the Multiplexer's own background loop. Only the
Multiplexer's public extension surface is used (``register_endpoint``, ``replace_endpoints``,
failure listeners, ``on_start``, ``on_close``, ``run``/``arun``); each sync/async pair of
functions shares one body, a generator of I/O steps with a blocking and an async driver.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import logging
import time
from collections.abc import Awaitable, Callable, Generator, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, TypeVar

import httpx
import openai

from gonka_mux.config import gonka_settings
from gonka_mux.endpoint import Endpoint
from gonka_mux.multiplexer import Multiplexer

from .broker import BrokerClient, BrokerErrorPolicy, BrokerState, GonkaBroker, parse_broker_models
from .config import DEFAULT_BROKER_FIELDS, GonkaConfig, GonkaEndpoint
from .discovery import (
    ClassicApiProbe,
    DiscoveryResult,
    GonkaParticipant,
    adiscover,
    aprobe_classic_api,
    discover,
    parse_models,
    probe_classic_api,
)
from .epochs import EpochInfo, parse_epoch_info
from .errors import GonkaConfigError, GonkaDiscoveryError, GonkaError, GonkaNoParticipantsError
from .keys import describe_shape
from .policy import (
    GonkaAccessRestricted,
    GonkaErrorPolicy,
    GonkaParticipantRefused,
    RefusalTracker,
)
from .refresh import GonkaRefreshManager
from .signing import ChainClockSync, NanoClock, make_signed_client, ssl_context_for

if TYPE_CHECKING:
    from gonka_mux.endpoint import EndpointTier
    from gonka_mux.routing.outcome import Failure

    from .signing import RequestSigner

__all__ = [
    "DEFAULT_GROUP",
    "GonkaEndpointGroup",
    "GonkaRegistrationResult",
    "aadd_gonka_broker",
    "add_gonka_broker",
    "aregister_gonka_models",
    "register_gonka_models",
]

logger = logging.getLogger("gonka_mux.gonka")

T = TypeVar("T")

DEFAULT_GROUP = "gonka"
BROKER_GROUP = "gonka-broker"

DEFAULT_TIMEOUT = 10.0
DEFAULT_REQUEST_TIMEOUT = 120.0


@dataclass
class GonkaRegistrationResult:
    """What :func:`register_gonka_models` registered.

    ``models_registered``: public model names; ``participants``: the participants behind them;
    ``epoch_id``: the effective epoch (0 when unknown, e.g. explicit endpoints);
    ``refresh_manager``: the epoch follower (None when refresh is off or impossible);
    ``endpoints``: the endpoints added; ``group``: their endpoint group name.
    """

    models_registered: list[str]
    participants: list[GonkaParticipant]
    epoch_id: int
    refresh_manager: GonkaRefreshManager | None
    endpoints: list[Endpoint]
    requester_address: str
    group: str = DEFAULT_GROUP
    phase: str | None = None
    source_url: str | None = None
    excluded: Mapping[str, str] = field(default_factory=dict)
    classic_api_retired: bool = False
    notice: str = ""

    def __repr__(self) -> str:
        retired = ", classic_api_retired=True" if self.classic_api_retired else ""
        return (
            f"GonkaRegistrationResult(models={self.models_registered!r}, "
            f"participants={len(self.participants)}, epoch_id={self.epoch_id}, "
            f"refresh={'on' if self.refresh_manager is not None else 'off'}{retired})"
        )


def retirement_notice(where: str, message: str, removed: int | None = None, group: str = "") -> str:
    """The one warning given when a network retired the classic signed path."""
    what = (
        f"removed all {removed} signed endpoint(s) of group {group!r} and will not register "
        "them again; requests go to the brokers and providers in the same pools"
        if removed is not None
        else "registered no signed endpoint"
    )
    return (
        f"Gonka classic signed inference is retired on this network: {where} answered HTTP 410 "
        f"({message or 'deprecated'}). Every host since v0.2.14 (July 23 2026) answers so and "
        f"the chain rejects classic messages, so gonka_mux {what}. To use Gonka, configure a "
        "broker key or a devshard gateway URL: add_gonka_broker(mux, "
        "'https://<broker or devshard gateway>/v1', api_key)."
    )


# =========================================================================== the endpoint group


class GonkaEndpointGroup:
    """The signed endpoints of one registration: builds them from participants, swaps them into
    the Multiplexer atomically, and remembers TAs that were dropped (403 not allowed, a
    participant's own 403 refusal until the next epoch, a plain 410). A v0.2.14 410 retires the
    whole group (:meth:`retire_network`) and nothing signed is registered again.

    Participants that stay from one epoch to the next keep their Endpoint (latency and health
    history) and client; clients of participants that left are closed once their in-flight
    requests have finished. Every method that touches the Multiplexer runs on its event loop.
    """

    def __init__(
        self,
        mux: Any,
        *,
        signer: RequestSigner,
        clock: NanoClock,
        clock_sync: ChainClockSync | None,
        group: str = DEFAULT_GROUP,
        model_prefix: str = "",
        tier: EndpointTier = "primary",
        max_concurrent: int | None = None,
        max_tokens: int | None = None,
        request_timeout: float = DEFAULT_REQUEST_TIMEOUT,
        models: Iterable[str] | None = None,
        normalize_weights: bool = False,
        refusal_ttl: float = 300.0,
    ) -> None:
        self.mux = mux
        self.signer = signer
        self.clock = clock
        self.clock_sync = clock_sync
        self.group = group
        self.model_prefix = model_prefix
        self.tier: EndpointTier = tier
        self.max_concurrent = max_concurrent
        self.max_tokens = max_tokens
        self.request_timeout = request_timeout
        self.model_filter = frozenset(models) if models is not None else None
        self.normalize_weights = normalize_weights
        self.weight_factor = 1.0
        self.epoch_id = 0
        self.participants: tuple[GonkaParticipant, ...] = ()
        self.endpoints: dict[str, Endpoint] = {}  # the current set, by name
        self.retired: set[str] = set()  # TAs that answered 410 (kept out for good)
        self.not_allowed: set[str] = set()  # TAs that answered 403 "not allowed" (this epoch)
        # TAs that refused with their own 403: (epoch, monotonic time); out until a refresh
        # brings another epoch, or refusal_ttl seconds
        self.refused: dict[str, tuple[int, float]] = {}
        self.refusal_ttl = refusal_ttl
        self.refusals = RefusalTracker(population=lambda: len(self.participants))
        # a v0.2.14 410 retired the classic path network-wide: nothing signed comes back
        self.network_retired = False
        self.retirement_notice = ""
        self._base_weight: dict[str, float] = {}
        self._address_of: dict[str, str] = {}
        self._clients: dict[tuple[str, str], Any] = {}
        self._ssl_context: Any = None  # one for every client (building one costs ~30 ms)
        self._stale: list[tuple[Any, list[Endpoint]]] = []  # (client, its old endpoints)
        self._closed = False
        mux.add_failure_listener(self._on_failure)

    # -- building -------------------------------------------------------------------------
    def public_name(self, model: str) -> str:
        return f"{self.model_prefix}{model}"

    def endpoint_name(self, participant: GonkaParticipant, model: str) -> str:
        return f"{self.group}:{participant.address}/{model}"

    def usable(self, participant: GonkaParticipant) -> bool:
        address = participant.address
        return not (
            self.network_retired
            or address in self.retired
            or address in self.not_allowed
            or address in self.refused
        )

    def _client(self, participant: GonkaParticipant) -> Any:
        key = (participant.address, participant.base_url)
        client = self._clients.get(key)
        if client is None:
            if self._ssl_context is None:
                self._ssl_context = ssl_context_for()
            client = make_signed_client(
                participant,
                None,
                self.signer,
                async_=True,
                timeout=self.request_timeout,
                max_retries=0,  # the Multiplexer retries, on another TA
                clock=self.clock,
                resync_clock=self.clock_sync if self.clock_sync is not None else False,
                ssl_context=self._ssl_context,
            )
            self._clients[key] = client
        return client

    def _weights(self, participants: Sequence[GonkaParticipant]) -> dict[str, float]:
        raw = {p.address: float(max(1, p.weight)) for p in participants}
        if self.normalize_weights and raw:
            mean = sum(raw.values()) / len(raw)
            return {a: w / mean for a, w in raw.items()}
        return raw

    def prepare(self, participants: Sequence[GonkaParticipant]) -> list[Endpoint]:
        """Endpoints for ``participants`` (existing ones reused), not yet in the Multiplexer."""
        usable = [p for p in participants if self.usable(p)]
        weights = self._weights(usable)
        prepared: list[Endpoint] = []
        for participant in usable:
            for model in participant.models:
                if self.model_filter is not None and model not in self.model_filter:
                    continue
                name = self.endpoint_name(participant, model)
                public = self.public_name(model)
                weight = weights[participant.address]
                existing = self.endpoints.get(name)
                client = self._client(participant)
                if existing is not None and existing.client is client and not existing.removed:
                    endpoint = existing
                else:
                    policy = GonkaErrorPolicy(
                        transfer_address=participant.address,
                        requester_address=self.signer.address,
                        model=public,
                        has_alternative=_alternative_check(self.mux, name, public),
                        refusals=self.refusals,
                        on_network_retired=self.retire_network,
                    )
                    endpoint = Endpoint(
                        client,
                        models={public: model},
                        name=name,
                        weight=weight,
                        max_concurrent=self.max_concurrent,
                        tier=self.tier,
                        group=self.group,
                        kind="gonka",
                        error_policy=policy,
                        default_params={"max_tokens": self.max_tokens} if self.max_tokens else None,
                    )
                self._base_weight[name] = weight
                self._address_of[name] = participant.address
                prepared.append(endpoint)
        return prepared

    # -- applying (on the Multiplexer's loop) ---------------------------------------------
    def apply(
        self,
        endpoints: Sequence[Endpoint],
        participants: Sequence[GonkaParticipant],
        epoch_id: int,
    ) -> tuple[list[str], list[str]]:
        """Swap the group to ``endpoints`` atomically; returns (added, removed) addresses."""
        old_addresses = {p.address for p in self.participants}
        for endpoint in endpoints:
            endpoint.weight = self._base_weight.get(endpoint.name, endpoint.weight) * (
                self.weight_factor
            )
        if self.network_retired:
            return [], []
        removed = self.mux.replace_endpoints(self.group, list(endpoints))
        self.endpoints = {ep.name: ep for ep in endpoints}
        self.participants = tuple(p for p in participants if self.usable(p))
        if epoch_id != self.epoch_id:
            self.not_allowed.clear()  # the allowlist may have changed with the epoch
        self._forget_refusals(epoch_id)
        self.refusals.forget_departed({p.address for p in participants})
        self.epoch_id = epoch_id
        self._retire_clients(removed)
        new_addresses = {p.address for p in self.participants}
        return sorted(new_addresses - old_addresses), sorted(old_addresses - new_addresses)

    def _forget_refusals(self, epoch_id: int) -> None:
        """Refusals last until a refresh brings another epoch, or ``refusal_ttl`` seconds."""
        now = time.monotonic()
        for address, (epoch, at) in list(self.refused.items()):
            if epoch != epoch_id or now - at > self.refusal_ttl:
                del self.refused[address]

    def retire_network(self, transfer_address: str = "", message: str = "") -> list[Endpoint]:
        """The network retired the classic signed path (a v0.2.14 410): take every endpoint of
        the group out at once through ``mux.retire_group`` (its log line is the one warning),
        and never register signed endpoints again. Idempotent; on the Multiplexer's loop."""
        if self.network_retired:
            return []
        self.network_retired = True
        where = f"Transfer Agent {transfer_address}" if transfer_address else "a host"
        count = sum(1 for ep in self.endpoints.values() if not ep.removed)
        self.retirement_notice = retirement_notice(where, message, count, self.group)
        removed = self.mux.retire_group(self.group, reason=self.retirement_notice)
        self.endpoints = {}
        self.participants = ()
        self._retire_clients(removed)
        return removed

    def set_weight_factor(self, factor: float) -> None:
        """Scale every endpoint's weight (PoC phases lower Gonka capacity) and rebuild pools."""
        if factor == self.weight_factor or self.network_retired:
            return
        self.weight_factor = factor
        live = [ep for ep in self.endpoints.values() if not ep.removed]
        for endpoint in live:
            endpoint.weight = self._base_weight.get(endpoint.name, 1.0) * factor
        self.mux.replace_endpoints(self.group, live)  # same endpoints: pools see the new weights

    def _retire_clients(self, removed: Sequence[Endpoint]) -> None:
        in_use = {id(ep.client) for ep in self.endpoints.values()}
        by_client: dict[int, tuple[Any, list[Endpoint]]] = {}
        for endpoint in removed:
            if id(endpoint.client) in in_use:
                continue
            entry = by_client.setdefault(id(endpoint.client), (endpoint.client, []))
            entry[1].append(endpoint)
        for client, old in by_client.values():
            self._stale.append((client, old))
            for key, value in list(self._clients.items()):
                if value is client:
                    del self._clients[key]

    async def close_drained(self, *, force: bool = False) -> int:
        """Close the clients of departed participants once nothing is in flight on them."""
        keep: list[tuple[Any, list[Endpoint]]] = []
        closed = 0
        for client, old in self._stale:
            if not force and any(ep.inflight > 0 for ep in old):
                keep.append((client, old))
                continue
            try:
                await client.close()
            except Exception:
                logger.debug("closing a departed Gonka client failed", exc_info=True)
            closed += 1
        self._stale = keep
        return closed

    # -- failures seen by the router ------------------------------------------------------
    def _on_failure(self, endpoint: Endpoint, failure: Failure) -> None:
        if endpoint.group != self.group:
            return
        if isinstance(failure.error, GonkaAccessRestricted) and failure.error.participants:
            # the network refuses, not these participants: let them back at the next refresh
            for address in failure.error.participants:
                self.refused.pop(address, None)
            return
        if not failure.remove_endpoint or self.network_retired:
            return
        address = self._address_of.get(endpoint.name)
        if address is None:
            return
        if failure.status == 410:
            self.retired.add(address)
        elif isinstance(failure.error, GonkaParticipantRefused):
            self.refused[address] = (self.epoch_id, time.monotonic())
        elif failure.status == 403:
            self.not_allowed.add(address)
        # The core removed this endpoint; drop the TA's other models' endpoints too.
        for name, other in list(self.endpoints.items()):
            same_ta = self._address_of.get(name) == address
            if same_ta and not other.removed and self.mux.get_endpoint(other.name) is not None:
                self.mux.remove_endpoint(other)

    async def aclose(self) -> None:
        if self._closed:
            return
        self._closed = True
        self.mux.remove_failure_listener(self._on_failure)
        await self.close_drained(force=True)
        # Clients built for a prefetched set that never went live (the core closes the rest).
        in_use = {id(ep.client) for ep in self.mux.endpoints}
        for client in list(self._clients.values()):
            if id(client) not in in_use:
                try:
                    await client.close()
                except Exception:
                    logger.debug("closing a Gonka client failed", exc_info=True)


def _alternative_check(mux: Any, name: str, public: str) -> Callable[[], bool]:
    def check() -> bool:
        return any(ep.name != name and not ep.removed for ep in mux.endpoints_for(public))

    return check


# =========================================================================== settings


@dataclass
class _Plan:
    """Resolved settings of one registration."""

    config: GonkaConfig
    mode: str  # "discovery" or "endpoints"
    sources: tuple[str, ...]
    endpoints: tuple[GonkaEndpoint, ...]
    model_prefix: str
    signer: RequestSigner


def _resolve(
    *,
    config: GonkaConfig | None,
    environ: Mapping[str, str] | None,
    signer: RequestSigner | None,
    explicit: dict[str, Any],
) -> _Plan:
    given_endpoints = explicit.get("endpoints") is not None
    given_source = explicit.get("source_urls") is not None
    cfg = GonkaConfig.resolve(config, environ=environ, **explicit)
    # The highest-precedence layer that names endpoints or a source decides the mode.
    if given_endpoints:
        mode = "endpoints"
    elif given_source:
        mode = "discovery"
    elif config is not None and "endpoints" in config._explicit and config.endpoints:
        mode = "endpoints"
    elif config is not None and "source_urls" in config._explicit and config.source_urls:
        mode = "discovery"
    elif cfg.endpoints:
        mode = "endpoints"
    elif cfg.source_urls:
        mode = "discovery"
    else:
        raise GonkaConfigError(
            "source_url",
            "no Gonka participants to use: pass source_url='http://node:8000' (discovery) or "
            "endpoints='https://host:8000;gonka1...' (explicit Transfer Agents), or set "
            "GONKA_SOURCE_URL / GONKA_ENDPOINTS",
        )
    if signer is None:
        signer = cfg.signer()
    elif explicit.get("address") not in (None, signer.address):
        raise GonkaConfigError(
            "address",
            "both signer= and address= given: the signer already has an address; build it "
            "with RequestSigner(key, address=...) instead",
        )
    # The prefix applies only when someone set it: by default the public name is the model id.
    prefix = cfg.model_name_prefix if "model_name_prefix" in cfg._explicit else ""
    return _Plan(cfg, mode, cfg.source_urls, cfg.endpoints, prefix, signer)


def _network_sources(sources: Iterable[str]) -> tuple[str, ...]:
    return tuple(s for s in sources if s.startswith(("http://", "https://")))


# =========================================================================== I/O steps
#
# Registration and broker set-up are written once, as generators that yield the I/O they need
# (an :class:`_IO`: one operation with a blocking and an awaitable form) and receive its
# result, or have its exception thrown in; :func:`_run_sync` and :func:`_run_async` drive
# them, as in :mod:`gonka_mux.gonka.discovery`.


@dataclass(frozen=True, slots=True)
class _IO:
    blocking: Callable[[], Any]
    awaitable: Callable[[], Awaitable[Any]]


_Steps = Generator[_IO, Any, T]


def _run_sync(steps: _Steps[T]) -> T:
    reply: Any = None
    error: Exception | None = None
    while True:
        try:
            io = steps.send(reply) if error is None else steps.throw(error)
        except StopIteration as done:
            return done.value  # type: ignore[no-any-return]
        try:
            reply, error = io.blocking(), None
        except Exception as exc:
            reply, error = None, exc


async def _run_async(steps: _Steps[T]) -> T:
    reply: Any = None
    error: Exception | None = None
    while True:
        try:
            io = steps.send(reply) if error is None else steps.throw(error)
        except StopIteration as done:
            return done.value  # type: ignore[no-any-return]
        try:
            reply, error = await io.awaitable(), None
        except Exception as exc:
            reply, error = None, exc


def _get(url: str, timeout: float, headers: Mapping[str, str] | None = None) -> _IO:
    """GET ``url`` as JSON (:class:`GonkaDiscoveryError` when that fails)."""
    return _IO(lambda: _get_json(url, timeout, headers), lambda: _aget_json(url, timeout, headers))


def _discover(sources: tuple[str, ...], verify_proofs: bool, timeout: float) -> _IO:
    options = {"verify_proofs": verify_proofs, "timeout": timeout}
    return _IO(lambda: discover(sources, **options), lambda: adiscover(sources, **options))


def _probe(urls: tuple[str, ...], timeout: float) -> _IO:
    """How the first of ``urls`` that answers serves the classic inference route."""
    network = _network_sources(urls)
    if not network:
        return _IO(lambda: None, _none)
    return _IO(
        lambda: probe_classic_api(network, timeout=timeout),
        lambda: aprobe_classic_api(network, timeout=timeout),
    )


async def _none() -> None:
    return None


def _on_mux_loop(mux: Any, fn: Callable[[], Any]) -> _IO:
    """Call ``fn()`` on the Multiplexer's loop, where its registry lives: the sync face's own
    loop thread (``run``/``arun``); for the async face, the caller's thread or loop."""

    async def call() -> Any:
        return fn()

    def blocking() -> Any:
        return mux.run(call()) if isinstance(mux, Multiplexer) else fn()

    return _IO(blocking, lambda: mux.arun(call()))


def _on_start(mux: Any, starter: Callable[[], Awaitable[Any]]) -> _IO:
    """``mux.on_start(starter)``: on the Multiplexer's loop now if it is live, else before the
    first request."""

    async def awaitable() -> None:
        mux.on_start(starter)
        # From inside the Multiplexer's loop on_start runs the starter as a task: one tick
        # lets it run, so the caller sees (e.g.) the refresh manager running.
        await asyncio.sleep(0)

    return _IO(lambda: mux.on_start(starter), awaitable)


async def _aget_json(url: str, timeout: float, headers: Mapping[str, str] | None = None) -> Any:
    try:
        async with httpx.AsyncClient(timeout=timeout, follow_redirects=True) as http:
            response = await http.get(url, headers=dict(headers or {}))
    except (httpx.HTTPError, httpx.InvalidURL) as exc:
        raise GonkaDiscoveryError(url, None, exc) from None
    return _json_of(url, response.status_code, response.content)


def _get_json(url: str, timeout: float, headers: Mapping[str, str] | None = None) -> Any:
    try:
        with httpx.Client(timeout=timeout, follow_redirects=True) as http:
            response = http.get(url, headers=dict(headers or {}))
    except (httpx.HTTPError, httpx.InvalidURL) as exc:
        raise GonkaDiscoveryError(url, None, exc) from None
    return _json_of(url, response.status_code, response.content)


def _json_of(url: str, status: int, content: bytes) -> Any:
    if status != 200:
        snippet = content[:200].decode("utf-8", "replace").strip()
        raise GonkaDiscoveryError(url, status, snippet or "(empty body)")
    try:
        return json.loads(content)
    except ValueError:
        raise GonkaDiscoveryError(url, status, "not JSON") from None


# =========================================================================== explicit endpoints


def _explicit_participants(
    endpoints: Sequence[GonkaEndpoint],
    models_for: Mapping[str, tuple[str, ...]],
) -> list[GonkaParticipant]:
    participants = []
    for endpoint in endpoints:
        served = models_for.get(endpoint.url, ())
        if served:
            participants.append(endpoint.as_participant(served))
        else:
            logger.warning("Gonka endpoint %s lists no model; skipped", endpoint.url)
    return participants


def _models_of(payload: Any) -> tuple[str, ...]:
    return parse_models(payload)


def _explicit(
    plan: _Plan, models: Sequence[str] | None, timeout: float
) -> _Steps[tuple[list[GonkaParticipant], EpochInfo | None]]:
    models_for: dict[str, tuple[str, ...]] = {}
    info: EpochInfo | None = None
    for endpoint in plan.endpoints:
        if models is not None:
            models_for[endpoint.url] = tuple(models)
            continue
        try:
            payload = yield _get(f"{endpoint.url}/v1/models", timeout)
            models_for[endpoint.url] = _models_of(payload)
        except Exception as exc:
            logger.warning("cannot list the models of %s: %s", endpoint.url, _describe(exc))
    for endpoint in plan.endpoints:
        try:
            info = parse_epoch_info((yield _get(f"{endpoint.url}/v1/epochs/latest", timeout)))
            break
        except Exception:
            continue
    return _explicit_participants(plan.endpoints, models_for), info


def _describe(exc: BaseException) -> str:
    text = str(exc)
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


# =========================================================================== registration


@dataclass
class _Options:
    models: Sequence[str] | None
    group: str
    clock: NanoClock | None
    normalize_weights: bool
    request_timeout: float
    timeout: float
    min_poll_interval: float
    on_epoch_change: Callable[..., Any] | None
    refresh_options: Mapping[str, Any]


def _make_group(mux: Any, plan: _Plan, options: _Options) -> GonkaEndpointGroup:
    if options.group in {ep.group for ep in mux.endpoints}:
        raise GonkaConfigError(
            "group",
            f"the Multiplexer already has endpoints in group {options.group!r}; pass another "
            "group= for a second registration (e.g. a second account)",
        )
    clock = options.clock or NanoClock()
    sources = _network_sources(plan.sources) or tuple(e.url for e in plan.endpoints)
    cfg = plan.config
    return GonkaEndpointGroup(
        mux,
        signer=plan.signer,
        clock=clock,
        clock_sync=ChainClockSync(clock, sources=sources),
        group=options.group,
        model_prefix=plan.model_prefix,
        tier="fallback" if cfg.register_as_fallback else "primary",
        max_concurrent=cfg.default_max_concurrent,
        max_tokens=cfg.default_max_tokens,
        request_timeout=options.request_timeout,
        models=options.models,
        normalize_weights=options.normalize_weights,
    )


def _check_models(
    prepared: Sequence[Endpoint], options: _Options, participants: Sequence[GonkaParticipant]
) -> None:
    if prepared:
        return
    if options.models is not None:
        offered = sorted({m for p in participants for m in p.models})
        raise GonkaNoParticipantsError(
            None,
            "",
            f"no participant serves {sorted(options.models)}; they serve {offered or 'nothing'}",
        )
    raise GonkaNoParticipantsError(None, "", "no participant lists a model")


def _result(
    group: GonkaEndpointGroup,
    prepared: Sequence[Endpoint],
    manager: GonkaRefreshManager | None,
    *,
    phase: str | None,
    source_url: str | None,
    excluded: Mapping[str, str],
) -> GonkaRegistrationResult:
    return GonkaRegistrationResult(
        models_registered=sorted({m for ep in prepared for m in ep.models}),
        participants=list(group.participants),
        epoch_id=group.epoch_id,
        refresh_manager=manager,
        endpoints=list(prepared),
        requester_address=group.signer.address,
        group=group.group,
        phase=phase,
        source_url=source_url,
        excluded=dict(excluded),
    )


def _make_manager(
    plan: _Plan,
    group: GonkaEndpointGroup,
    options: _Options,
    found: DiscoveryResult | None,
) -> GonkaRefreshManager | None:
    cfg = plan.config
    sources = _network_sources(plan.sources)
    if found is not None:
        sources = tuple(dict.fromkeys([*_network_sources([found.source_url]), *sources]))
    if not cfg.refresh_enabled or plan.mode != "discovery":
        return None
    if not sources:
        logger.info("Gonka epoch refresh needs an http(s) source URL; it is off (file source)")
        return None

    settings: dict[str, Any] = {
        "interval": cfg.refresh_interval_seconds,
        "min_interval": options.min_poll_interval,
        "verify_proofs": cfg.verify_proofs,
        "timeout": options.timeout,
        "epoch_info": found.epoch_info if found is not None else None,
    }
    settings.update(options.refresh_options)  # e.g. a sub-second interval in tests
    manager = GonkaRefreshManager(group, sources, **settings)
    if options.on_epoch_change is not None:
        manager.on_epoch_change(options.on_epoch_change)
    return manager


def _options(
    *,
    models: Sequence[str] | None,
    group: str,
    clock: NanoClock | None,
    normalize_weights: bool,
    request_timeout: float,
    timeout: float,
    min_poll_interval: float,
    on_epoch_change: Callable[..., Any] | None,
    refresh_options: Mapping[str, Any] | None,
) -> _Options:
    if isinstance(models, str):
        models = [models]
    if not group or not isinstance(group, str):
        raise GonkaConfigError("group", "expected a non-empty endpoint group name")
    return _Options(
        models=list(models) if models is not None else None,
        group=group,
        clock=clock,
        normalize_weights=normalize_weights,
        request_timeout=request_timeout,
        timeout=timeout,
        min_poll_interval=min_poll_interval,
        on_epoch_change=on_epoch_change,
        refresh_options=refresh_options or {},
    )


def _explicit_settings(**values: Any) -> dict[str, Any]:
    if "source_url" in values:
        values["source_urls"] = values.pop("source_url")
    return {k: v for k, v in values.items() if v is not None}


def _config_section(mux: Any) -> GonkaConfig | None:
    """The ``[gonka]`` table of the config file the Multiplexer was built from, if any."""
    data = getattr(mux, "config", None)
    if not isinstance(data, Mapping) or "gonka" not in data:
        return None

    return gonka_settings(data["gonka"], getattr(mux, "config_source", "<dict>"))


def _registration(mux: Any, args: dict[str, Any]) -> _Steps[GonkaRegistrationResult]:
    """Both faces of :func:`register_gonka_models`; ``args`` are its keyword arguments."""
    options = _options(**{f.name: args.pop(f.name) for f in dataclasses.fields(_Options)})
    config = args.pop("config")
    plan = _resolve(
        config=config if config is not None else _config_section(mux),
        environ=args.pop("environ"),
        signer=args.pop("signer"),
        explicit=_explicit_settings(**args),  # the GonkaConfig fields given as arguments
    )
    found: DiscoveryResult | None = None
    info: EpochInfo | None
    if plan.mode == "discovery":
        found = yield _discover(plan.sources, plan.config.verify_proofs, options.timeout)
        participants, info = list(found.participants), found.epoch_info
        epoch_id = found.epoch_id
        probe = found.classic_api
    else:
        probe = yield _probe(tuple(e.url for e in plan.endpoints), options.timeout)
        participants, info = [], None
        if probe is None or not probe.retired:
            participants, info = yield from _explicit(plan, options.models, options.timeout)
        epoch_id = info.effective_epoch_id if info is not None else 0
    if probe is not None and probe.retired:
        return _retired_result(plan, options, probe, found, participants, epoch_id, info)
    group_ = _make_group(mux, plan, options)
    prepared = group_.prepare(participants)
    _check_models(prepared, options, participants)

    def apply() -> None:
        group_.apply(prepared, participants, epoch_id)
        mux.on_close(group_.aclose)

    yield _on_mux_loop(mux, apply)
    manager = _make_manager(plan, group_, options, found)
    if manager is not None:
        mux.on_close(manager.aclose)
        mux.watch_epochs(manager)
        yield _on_start(mux, _starter(manager))
    return _result(
        group_,
        prepared,
        manager,
        phase=info.phase if info is not None else None,
        source_url=found.source_url if found is not None else None,
        excluded=found.excluded if found is not None else {},
    )


def _retired_result(
    plan: _Plan,
    options: _Options,
    probe: ClassicApiProbe,
    found: DiscoveryResult | None,
    participants: Sequence[GonkaParticipant],
    epoch_id: int,
    info: EpochInfo | None,
) -> GonkaRegistrationResult:
    """Discovery found a network that retired the classic path: register nothing signed, and
    say so once."""
    host = probe.url.removesuffix("/v1/chat/completions")
    notice = retirement_notice(f"host {host}", probe.message)
    logger.warning("%s", notice)
    return GonkaRegistrationResult(
        models_registered=[],
        participants=list(participants),
        epoch_id=epoch_id,
        refresh_manager=None,
        endpoints=[],
        requester_address=plan.signer.address,
        group=options.group,
        phase=info.phase if info is not None else None,
        source_url=found.source_url if found is not None else None,
        excluded=dict(found.excluded) if found is not None else {},
        classic_api_retired=True,
        notice=notice,
    )


def _starter(manager: GonkaRefreshManager) -> Callable[[], Awaitable[None]]:
    async def start() -> None:  # on the Multiplexer's loop
        if not manager.is_running and not manager.closed:
            manager.start()

    return start


def register_gonka_models(
    mux: Any,
    *,
    source_url: str | Sequence[str] | None = None,
    endpoints: str | Sequence[Any] | None = None,
    private_key: Any = None,
    config: GonkaConfig | None = None,
    address: str | None = None,
    verify_proofs: bool | None = None,
    refresh_enabled: bool | None = None,
    refresh_interval_seconds: float | None = None,
    default_max_concurrent: int | None = None,
    register_as_fallback: bool | None = None,
    model_name_prefix: str | None = None,
    default_max_tokens: int | None = None,
    models: Sequence[str] | None = None,
    group: str = DEFAULT_GROUP,
    signer: RequestSigner | None = None,
    clock: NanoClock | None = None,
    normalize_weights: bool = False,
    request_timeout: float = DEFAULT_REQUEST_TIMEOUT,
    timeout: float = DEFAULT_TIMEOUT,
    min_poll_interval: float = 6.0,
    on_epoch_change: Callable[..., Any] | None = None,
    refresh_options: Mapping[str, Any] | None = None,
    environ: Mapping[str, str] | None = None,
) -> GonkaRegistrationResult:
    """Discover Gonka participants and register one signed endpoint per participant per model.

    Works with ``Multiplexer`` and ``AsyncMultiplexer`` (discovery runs here, synchronously; in
    async code prefer :func:`aregister_gonka_models`). Arguments win over ``config`` (default:
    the ``[gonka]`` table of the file the Multiplexer was built from), which wins over the
    environment (``GONKA_*``). ``source_url`` is a node base URL or several (failover),
    ``endpoints`` explicit TAs as ``"url;address,..."`` (no discovery, no epoch refresh).
    ``models`` keeps only those model ids. ``normalize_weights`` scales participant weights to
    a mean of 1 (to mix with brokers/providers of weight 1). ``min_poll_interval`` is the
    shortest time between two polls of one source (nodes rate-limit: keep >= 6 s in production).
    ``refresh_options`` go to :class:`~gonka_mux.gonka.refresh.GonkaRefreshManager`.

    Raises :class:`~gonka_mux.gonka.errors.GonkaConfigError` (bad or missing settings),
    :class:`~gonka_mux.gonka.errors.GonkaDiscoveryError` (no source answered) or
    :class:`~gonka_mux.gonka.errors.GonkaNoParticipantsError` (nothing usable).
    """
    args = dict(locals())  # the keyword arguments, as given
    return _run_sync(_registration(args.pop("mux"), args))


async def aregister_gonka_models(
    mux: Any,
    *,
    source_url: str | Sequence[str] | None = None,
    endpoints: str | Sequence[Any] | None = None,
    private_key: Any = None,
    config: GonkaConfig | None = None,
    address: str | None = None,
    verify_proofs: bool | None = None,
    refresh_enabled: bool | None = None,
    refresh_interval_seconds: float | None = None,
    default_max_concurrent: int | None = None,
    register_as_fallback: bool | None = None,
    model_name_prefix: str | None = None,
    default_max_tokens: int | None = None,
    models: Sequence[str] | None = None,
    group: str = DEFAULT_GROUP,
    signer: RequestSigner | None = None,
    clock: NanoClock | None = None,
    normalize_weights: bool = False,
    request_timeout: float = DEFAULT_REQUEST_TIMEOUT,
    timeout: float = DEFAULT_TIMEOUT,
    min_poll_interval: float = 6.0,
    on_epoch_change: Callable[..., Any] | None = None,
    refresh_options: Mapping[str, Any] | None = None,
    environ: Mapping[str, str] | None = None,
) -> GonkaRegistrationResult:
    """Async twin of :func:`register_gonka_models` (discovery does not block the loop)."""
    args = dict(locals())  # the keyword arguments, as given
    return await _run_async(_registration(args.pop("mux"), args))


# =========================================================================== brokers


def _broker_url(base_url: str) -> str:
    if not isinstance(base_url, str) or not base_url.startswith(("http://", "https://")):
        raise GonkaConfigError(
            "base_url",
            "expected the broker's OpenAI base URL (https://.../v1); got "
            f"{describe_shape(base_url)}",  # never echoed: it may be a key in the wrong place
        )
    return base_url.rstrip("/")


def _broker_models_error(url: str, exc: GonkaDiscoveryError) -> GonkaError:
    if exc.status_code in (401, 403):
        return GonkaConfigError(
            "api_key",
            f"the broker at {url} refused the API key (HTTP {exc.status_code}): check the key, "
            "or pass models=[...] to skip the model listing",
        )
    return exc


@dataclass
class _BrokerOptions:
    name: str | None
    weight: float
    tier: EndpointTier
    max_concurrent: int | None
    default_max_tokens: int | None
    group: str
    request_timeout: float
    on_token_cap: str
    default_token_cap: int | None
    allowed_fields: Any
    unknown_fields: str
    status_interval: float | None
    catalog_interval: float | None


def _broker_endpoint(
    mux: Any,
    url: str,
    api_key: str,
    model_map: Mapping[str, str],
    caps: Mapping[str, int | None],
    options: _BrokerOptions,
) -> tuple[Endpoint, BrokerState]:
    if not api_key or not isinstance(api_key, str):
        raise GonkaConfigError("api_key", "a broker needs its API key (sent as a Bearer token)")
    state = BrokerState(
        url,
        caps=caps,
        default_cap=options.default_token_cap,
        default_max_tokens=options.default_max_tokens,
        on_token_cap=options.on_token_cap,  # type: ignore[arg-type]
        allowed_fields=options.allowed_fields,
        unknown_fields=options.unknown_fields,  # type: ignore[arg-type]
    )
    client = openai.AsyncOpenAI(
        base_url=url, api_key=api_key, max_retries=0, timeout=options.request_timeout
    )
    group = options.group
    base = options.name or f"{group}:{url.split('://', 1)[-1]}"
    final = base
    n = 2
    while options.name is None and mux.get_endpoint(final) is not None:
        final = f"{base}#{n}"
        n += 1
    policy = BrokerErrorPolicy(mux)
    endpoint = Endpoint(
        BrokerClient(client, state),
        models=dict(model_map),
        name=final,
        weight=options.weight,
        max_concurrent=options.max_concurrent,
        tier=options.tier,
        group=group,
        kind="gonka-broker",
        error_policy=policy,
    )
    policy.endpoint = endpoint
    return endpoint, state


def _model_map(models: Sequence[str] | Mapping[str, str], prefix: str) -> dict[str, str]:
    if isinstance(models, str):
        models = [models]
    if isinstance(models, Mapping):
        return {f"{prefix}{k}": str(v) for k, v in models.items()}
    return {f"{prefix}{m}": m for m in models}


def _broker(
    mux: Any,
    base_url: str,
    api_key: str,
    *,
    models: Sequence[str] | Mapping[str, str] | None,
    model_name_prefix: str,
    timeout: float,
    **options: Any,
) -> _Steps[Endpoint]:
    """Both faces of :func:`add_gonka_broker`."""
    url = _broker_url(base_url)
    settings = _BrokerOptions(**options)
    caps: dict[str, int | None] = {}
    catalog_managed = models is None
    if models is None:
        try:
            payload = yield _get(f"{url}/models", timeout, {"Authorization": f"Bearer {api_key}"})
        except GonkaDiscoveryError as exc:
            raise _broker_models_error(url, exc) from None
        try:
            caps = parse_broker_models(payload, settings.default_token_cap)
        except GonkaError as exc:
            raise GonkaConfigError(
                "models",
                f"cannot read the models of the broker at {url} ({exc}); pass models=[...]",
            ) from None
        models = list(caps)
    model_map = _model_map(models, model_name_prefix)
    if not model_map:
        raise GonkaConfigError("models", f"the broker at {url} lists no model; pass models=[...]")
    endpoint, state = _broker_endpoint(mux, url, api_key, model_map, caps, settings)
    broker = GonkaBroker(
        mux,
        endpoint,
        state,
        api_key,
        catalog_managed=catalog_managed,
        model_prefix=model_name_prefix,
        status_interval=settings.status_interval,
        catalog_interval=settings.catalog_interval,
        timeout=timeout,
    )
    endpoint.client.broker = broker
    added: Endpoint = yield _on_mux_loop(mux, lambda: mux.register_endpoint(endpoint))
    mux.on_close(broker.aclose)
    yield _on_start(mux, broker.start)
    return added


def add_gonka_broker(
    mux: Any,
    base_url: str,
    api_key: str,
    *,
    models: Sequence[str] | Mapping[str, str] | None = None,
    name: str | None = None,
    weight: float = 1.0,
    tier: EndpointTier = "primary",
    max_concurrent: int | None = None,
    default_max_tokens: int | None = 4096,
    model_name_prefix: str = "",
    group: str = BROKER_GROUP,
    request_timeout: float = DEFAULT_REQUEST_TIMEOUT,
    timeout: float = DEFAULT_TIMEOUT,
    on_token_cap: str = "clamp",
    default_token_cap: int | None = 4096,
    allowed_fields: Iterable[str] | None = DEFAULT_BROKER_FIELDS,
    unknown_fields: str = "drop",
    status_interval: float | None = 10.0,
    catalog_interval: float | None = 300.0,
) -> Endpoint:
    """Add a Gonka broker or devshard gateway (OpenAI-compatible, ``Authorization: Bearer``).

    ``base_url`` is its OpenAI base URL (``https://broker.example/v1``). ``models=None`` reads
    the broker's ``/models`` (and each model's ``max_completion_tokens`` cap) and follows the
    catalog; a list registers those ids, a mapping ``{public: upstream}`` renames (brokers
    differ in model-id case). Model ids are the public names, so a broker joins the same pools
    as signed participants. ``default_max_tokens`` is sent when a request has none.

    The broker's behaviours (see :mod:`gonka_mux.gonka.broker`): ``on_token_cap`` ``"clamp"``
    or ``"raise"`` for a ``max_tokens`` above a model's cap (``default_token_cap`` when the
    catalog gives none); ``allowed_fields`` (None: send every field) with ``unknown_fields``
    ``"drop"`` or ``"refuse"``; 308 moves are followed and remembered; 409/503/504 and 429
    (``Retry-After``) are transient; ``/v1/status`` is polled every ``status_interval``
    seconds for load; the catalog is re-read every ``catalog_interval`` seconds (None: off).
    ``broker_of(endpoint)`` gives the :class:`~gonka_mux.gonka.broker.GonkaBroker`.
    """
    return _run_sync(_broker(**locals()))


async def aadd_gonka_broker(
    mux: Any,
    base_url: str,
    api_key: str,
    *,
    models: Sequence[str] | Mapping[str, str] | None = None,
    name: str | None = None,
    weight: float = 1.0,
    tier: EndpointTier = "primary",
    max_concurrent: int | None = None,
    default_max_tokens: int | None = 4096,
    model_name_prefix: str = "",
    group: str = BROKER_GROUP,
    request_timeout: float = DEFAULT_REQUEST_TIMEOUT,
    timeout: float = DEFAULT_TIMEOUT,
    on_token_cap: str = "clamp",
    default_token_cap: int | None = 4096,
    allowed_fields: Iterable[str] | None = DEFAULT_BROKER_FIELDS,
    unknown_fields: str = "drop",
    status_interval: float | None = 10.0,
    catalog_interval: float | None = 300.0,
) -> Endpoint:
    """Async twin of :func:`add_gonka_broker`."""
    return await _run_async(_broker(**locals()))
