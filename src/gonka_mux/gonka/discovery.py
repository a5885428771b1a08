"""Discover the Gonka participants (Transfer Agents) that can take signed requests.

``discover(sources)`` (sync) and ``adiscover(sources)`` (async) read, from the first source that
answers:

* ``GET {source}/v1/epochs/{current|N}/participants``: the epoch's active participants,
  with ``excluded_participants`` (dropped here) and optionally an ICS23 proof;
* ``GET {source}/chain-api/productscience/inference/inference/params``: the Transfer Agent
  allowlist (``transfer_agent_access_params.allowed_transfer_addresses``); when non-empty only
  listed participants are kept, because the others answer 403;
* ``GET {source}/v1/epochs/latest``: the phase and switch heights (best effort).

A source is a node base URL (``http://host:8000``) or ``file:///path/participants.json``
(offline tests; no allowlist or epoch info then). Several sources fail over in order.

Parsing is lenient (numbers as strings, the v0.2.15 shapes, ``excluded_participants`` absent,
``block`` object or array) and pure: :func:`parse_participants` needs no network.

Both faces share one core: :func:`_discovery_plan` is a generator that yields the URLs it
needs and receives the responses, so failover and parsing are written once, and only the
two small drivers (:func:`discover` with ``httpx.Client``, :func:`adiscover` with
``httpx.AsyncClient``) do I/O.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
from collections.abc import Callable, Generator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import unquote, urlparse

from .epochs import ChainStatus, EpochInfo, as_int, parse_chain_status, parse_epoch_info
from .errors import (
    GonkaConfigError,
    GonkaDiscoveryError,
    GonkaNoParticipantsError,
    GonkaPayloadError,
    GonkaProofVerificationError,
)
from .keys import describe_shape
from .proofs import verify_participants_proof

if TYPE_CHECKING:
    import httpx

__all__ = [
    "AccountInfo",
    "ClassicApiProbe",
    "DiscoveryResult",
    "GonkaParticipant",
    "NodeIdentity",
    "adiscover",
    "afetch_chain_status",
    "afetch_epoch_info",
    "aprobe_classic_api",
    "build_result",
    "classic_retirement",
    "discover",
    "fetch_chain_status",
    "fetch_epoch_info",
    "normalize_sources",
    "parse_account",
    "parse_allowlist",
    "parse_identity",
    "parse_models",
    "parse_participants",
    "parse_pricing",
    "probe_classic_api",
]

logger = logging.getLogger("gonka_mux.gonka")

PARAMS_PATH = "/chain-api/productscience/inference/inference/params"
EPOCH_INFO_PATH = "/v1/epochs/latest"
CHAIN_STATUS_PATH = "/chain-rpc/status"
DEFAULT_TIMEOUT = 10.0
ENV_VERIFY_PROOF = "GONKA_VERIFY_PROOF"
_USER_AGENT = "gonka-mux"


@dataclass(frozen=True, slots=True)
class GonkaParticipant:
    """One active participant of an epoch; it can act as Transfer Agent (TA) for requests.

    ``address`` is its account address, which is also the transfer address to sign for.
    ``inference_url`` is its base URL without ``/v1``; ``base_url`` adds it for OpenAI clients.
    ``weight`` is its PoC weight (a proxy for capacity, not a load signal).
    """

    address: str
    inference_url: str
    weight: int
    models: tuple[str, ...]
    validator_key: str = ""
    epoch_id: int = 0

    @property
    def base_url(self) -> str:
        url = self.inference_url.rstrip("/")
        return url if url.endswith("/v1") else f"{url}/v1"


@dataclass(frozen=True)
class DiscoveryResult:
    """What discovery found: the usable participants of ``epoch_id`` indexed by model.

    ``allowlist`` is the TA allowlist (empty: every participant may act as TA, or unknown when
    ``allowlist_known`` is false), ``excluded`` maps excluded addresses to the reason given,
    ``phase``/``epoch_info`` come from ``/v1/epochs/latest`` when it could be read.
    """

    epoch_id: int
    participants: tuple[GonkaParticipant, ...]
    by_model: Mapping[str, tuple[GonkaParticipant, ...]]
    allowlist: frozenset[str]
    source_url: str
    phase: str | None = None
    epoch_info: EpochInfo | None = None
    excluded: Mapping[str, str] = field(default_factory=dict)
    not_allowlisted: tuple[str, ...] = ()
    allowlist_known: bool = True
    proof_verified: bool = False
    classic_api: ClassicApiProbe | None = None

    @property
    def classic_api_retired(self) -> bool:
        """True when the source host answered the classic inference route with v0.2.14's
        410 deprecation (the whole network retired the signed path)."""
        return self.classic_api is not None and self.classic_api.retired

    @property
    def models(self) -> tuple[str, ...]:
        """Models served by at least one usable participant, sorted."""
        return tuple(sorted(self.by_model))

    def for_model(self, model: str) -> tuple[GonkaParticipant, ...]:
        """Participants serving ``model`` (exact, case-sensitive id); empty when none."""
        return self.by_model.get(model, ())

    def participant(self, address: str) -> GonkaParticipant | None:
        for participant in self.participants:
            if participant.address == address:
                return participant
        return None


@dataclass(frozen=True, slots=True)
class ClassicApiProbe:
    """What a host answered ``GET /v1/chat/completions`` (harmless: no body, no signature).

    A v0.2.14 host routes GET and POST of that path to its deprecation handler: 410 with
    ``Deprecation``/``Link`` headers and ``{"error": "deprecated", "message": "classic
    inference is deprecated; use devshard"}``. Anything else (400, 404, 405...) means the host
    still has the classic path. ``retired`` is True only for that marked 410.
    """

    url: str
    status: int | None
    retired: bool
    message: str = ""


def classic_retirement(status: int | None, payload: Any, headers: Mapping[str, str]) -> str | None:
    """The deprecation message when ``status``/``payload``/``headers`` are v0.2.14's marked 410,
    else None."""
    if status != 410:
        return None
    message = ""
    if isinstance(payload, Mapping):
        error, text = payload.get("error"), payload.get("message")
        message = ": ".join(str(x) for x in (error, text) if isinstance(x, str))
        marked = error == "deprecated" or (
            isinstance(text, str) and "classic inference is deprecated" in text.lower()
        )
        if marked:
            return message or "deprecated"
    if str(headers.get("deprecation") or "").strip():
        return message or "deprecated (Deprecation header)"
    return None


# --- pure parsing -------------------------------------------------------------------------------


def parse_allowlist(payload: Any) -> frozenset[str]:
    """The TA allowlist from the chain params document (empty when absent or disabled)."""
    if not isinstance(payload, Mapping):
        raise GonkaPayloadError("inference params", "expected a JSON object")
    params = payload.get("params", payload)
    access = params.get("transfer_agent_access_params") if isinstance(params, Mapping) else None
    if not isinstance(access, Mapping):
        return frozenset()
    addresses = access.get("allowed_transfer_addresses")
    if addresses is None:
        return frozenset()
    if not isinstance(addresses, list):
        raise GonkaPayloadError("allowed_transfer_addresses", "expected a list")
    return frozenset(a.strip() for a in addresses if isinstance(a, str) and a.strip())


@dataclass(frozen=True, slots=True)
class ParsedParticipants:
    epoch_id: int
    participants: tuple[GonkaParticipant, ...]
    excluded: Mapping[str, str]
    skipped: int


def parse_participants(payload: Any) -> ParsedParticipants:
    """Parse a ``/v1/epochs/{N}/participants`` document (every known shape).

    Entries without an address or an http(s) URL are skipped (counted in ``skipped``);
    excluded participants are reported, not dropped (see :func:`build_result`).
    """
    if not isinstance(payload, Mapping):
        raise GonkaPayloadError("participants", "expected a JSON object")
    active = payload.get("active_participants")
    if active is None and "participants" in payload:
        active = payload  # bare ActiveParticipants
    if not isinstance(active, Mapping):
        raise GonkaPayloadError(
            "active_participants", "missing (is this /v1/epochs/{N}/participants?)"
        )
    entries = active.get("participants")
    if entries is None:
        entries = []
    if not isinstance(entries, list):
        raise GonkaPayloadError("active_participants.participants", "expected a list")
    epoch_id = as_int(active.get("epoch_id"), what="epoch_id") or as_int(
        active.get("epoch_group_id"), what="epoch_group_id"
    )
    participants: list[GonkaParticipant] = []
    seen: set[str] = set()
    skipped = 0
    for entry in entries:
        participant = _participant(entry, epoch_id)
        if participant is None or participant.address in seen:
            skipped += 1
            continue
        seen.add(participant.address)
        participants.append(participant)
    if not epoch_id and entries:  # very old shape: take it from a seed
        seed = entries[0].get("seed") if isinstance(entries[0], Mapping) else None
        if isinstance(seed, Mapping):
            epoch_id = as_int(seed.get("epoch_index") or seed.get("block_height"))
    listed = payload.get("excluded_participants")
    if listed is None:
        listed = []  # absent on nodes older than the field (Aug 2025)
    if not isinstance(listed, list):
        # a list we cannot read may hide participants that must not be used: next source
        raise GonkaPayloadError("excluded_participants", "expected a list")
    excluded: dict[str, str] = {}
    for item in listed:
        if isinstance(item, Mapping) and isinstance(item.get("address"), str):
            reason = item.get("reason")
            excluded[item["address"]] = reason if isinstance(reason, str) and reason else "excluded"
    return ParsedParticipants(epoch_id, tuple(participants), excluded, skipped)


def _participant(entry: Any, epoch_id: int) -> GonkaParticipant | None:
    if not isinstance(entry, Mapping):
        return None
    address = entry.get("index") or entry.get("address")
    url = entry.get("inference_url")
    if not isinstance(address, str) or not isinstance(url, str):
        return None
    url = url.strip().rstrip("/")
    if not url.startswith(("http://", "https://")) or not address.strip():
        return None
    models = entry.get("models")
    if models is None:
        models = []
    # a list of model ids, nothing else (a string is not read as its characters)
    if not isinstance(models, list) or not all(isinstance(m, str) and m for m in models):
        return None
    try:
        weight = as_int(entry.get("weight"), what="weight")
    except GonkaPayloadError:
        return None
    validator_key = entry.get("validator_key")
    return GonkaParticipant(
        address=address.strip(),
        inference_url=url,
        weight=max(0, weight),
        models=tuple(dict.fromkeys(models)),
        validator_key=validator_key if isinstance(validator_key, str) else "",
        epoch_id=epoch_id,
    )


def build_result(
    parsed: ParsedParticipants,
    *,
    source_url: str,
    allowlist: frozenset[str] = frozenset(),
    allowlist_known: bool = True,
    epoch_info: EpochInfo | None = None,
    proof_verified: bool = False,
    epoch: int | str = "current",
) -> DiscoveryResult:
    """Drop excluded and non-allowlisted participants and index the rest by model.

    Raises :class:`GonkaNoParticipantsError` when none is left.
    """
    usable: list[GonkaParticipant] = []
    not_allowlisted: list[str] = []
    for participant in parsed.participants:
        if participant.address in parsed.excluded:
            continue
        if allowlist and participant.address not in allowlist:
            not_allowlisted.append(participant.address)
            continue
        usable.append(participant)
    if not usable:
        reason = (
            f"{len(parsed.participants)} listed, {len(parsed.excluded)} excluded, "
            f"{len(not_allowlisted)} not on the TA allowlist, {parsed.skipped} malformed"
        )
        raise GonkaNoParticipantsError(parsed.epoch_id or epoch, source_url, reason)
    by_model: dict[str, list[GonkaParticipant]] = {}
    for participant in usable:
        for model in participant.models:
            by_model.setdefault(model, []).append(participant)
    return DiscoveryResult(
        epoch_id=parsed.epoch_id,
        participants=tuple(usable),
        by_model={model: tuple(group) for model, group in by_model.items()},
        allowlist=allowlist,
        source_url=source_url,
        phase=epoch_info.phase if epoch_info is not None else None,
        epoch_info=epoch_info,
        excluded=dict(parsed.excluded),
        not_allowlisted=tuple(not_allowlisted),
        allowlist_known=allowlist_known,
        proof_verified=proof_verified,
    )


@dataclass(frozen=True, slots=True)
class NodeIdentity:
    """``/v1/identity``: the node's account (transfer) address; ``delegate_ta`` maps URLs to
    addresses when a node advertises delegate TAs (a client-side expectation, unverified)."""

    address: str
    block: int = 0
    timestamp: str = ""
    delegate_ta: Mapping[str, str] = field(default_factory=dict)


def parse_identity(payload: Any) -> NodeIdentity:
    """Parse ``/v1/identity`` (``{"data": {"address", "block", "timestamp"}, "signature"}``)."""
    data = payload.get("data") if isinstance(payload, Mapping) else None
    if not isinstance(data, Mapping) or not isinstance(data.get("address"), str):
        raise GonkaPayloadError("identity", "missing data.address")
    delegates = data.get("delegate_ta")
    timestamp = data.get("timestamp")
    return NodeIdentity(
        address=data["address"],
        block=as_int(data.get("block"), what="identity.block"),
        timestamp=timestamp if isinstance(timestamp, str) else "",
        delegate_ta=(
            {str(k): v for k, v in delegates.items() if isinstance(v, str)}
            if isinstance(delegates, Mapping)
            else {}
        ),
    )


def parse_models(payload: Any) -> tuple[str, ...]:
    """Model ids from ``/v1/models``: the OpenAI-style list or the legacy ``{"models": [...]}``."""
    if not isinstance(payload, Mapping):
        raise GonkaPayloadError("models", "expected a JSON object")
    items = payload.get("data")
    if items is None:
        items = payload.get("models")
    if not isinstance(items, list):
        raise GonkaPayloadError("models", "expected a 'data' or 'models' list")
    ids = (item.get("id") for item in items if isinstance(item, Mapping))
    return tuple(dict.fromkeys(i for i in ids if isinstance(i, str) and i))


def parse_pricing(payload: Any) -> dict[str, int]:
    """``/v1/pricing``: price per token (ngonka) by model id."""
    models = payload.get("models") if isinstance(payload, Mapping) else None
    if not isinstance(models, list):
        raise GonkaPayloadError("pricing", "expected a 'models' list")
    return {
        item["id"]: as_int(item.get("price_per_token"), what="price_per_token")
        for item in models
        if isinstance(item, Mapping) and isinstance(item.get("id"), str)
    }


@dataclass(frozen=True, slots=True)
class AccountInfo:
    """``/v2/accounts/{address}``: a requester pre-flight (signatures need an on-chain pubkey,
    inference needs balance)."""

    public_key: str
    balance: int
    denom: str = "ngonka"

    @property
    def has_public_key(self) -> bool:
        return bool(self.public_key)


def parse_account(payload: Any) -> AccountInfo:
    if not isinstance(payload, Mapping):
        raise GonkaPayloadError("account", "expected a JSON object")
    pubkey, denom = payload.get("pubkey"), payload.get("denom")
    return AccountInfo(
        public_key=pubkey if isinstance(pubkey, str) else "",
        balance=as_int(payload.get("balance"), what="balance"),
        denom=denom if isinstance(denom, str) and denom else "ngonka",
    )


# --- the shared discovery procedure (sans I/O) --------------------------------------------------


@dataclass(frozen=True, slots=True)
class _Fetch:
    url: str


@dataclass(frozen=True, slots=True)
class _Fetched:
    """A fetch outcome: ``payload`` when HTTP 200 with JSON, else ``status``/``error`` (with
    the JSON ``payload`` of the error body when it has one). ``headers``: lower-case names."""

    payload: Any = None
    status: int | None = None
    error: str | None = None
    headers: Mapping[str, str] = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        return self.error is None


_Plan = Generator[_Fetch, _Fetched, Any]


def normalize_sources(sources: str | Sequence[str]) -> tuple[str, ...]:
    """Source URLs without trailing ``/`` or ``/v1``; each string may hold several,
    comma-separated."""
    items = [sources] if isinstance(sources, str) else list(sources)
    for item in items:
        if not isinstance(item, str):
            raise GonkaConfigError(
                "source_url", f"expected a URL string, got a {type(item).__name__}"
            )
    cleaned: list[str] = []
    for item in (part for text in items for part in text.split(",")):
        url = item.strip().rstrip("/")
        if not url:
            continue
        if url.endswith("/v1"):
            url = url[: -len("/v1")]
        if not url.startswith(("http://", "https://", "file://")):
            shown = repr(url) if "://" in url else describe_shape(url)  # never echo a key
            raise GonkaConfigError(
                "source_url",
                f"{shown} is not an http(s):// node URL or a file:// participants file",
            )
        if url not in cleaned:
            cleaned.append(url)
    if not cleaned:
        raise GonkaConfigError(
            "source_url", "no discovery source given: pass source_url or set GONKA_SOURCE_URL"
        )
    return tuple(cleaned)


def _participants_url(source: str, epoch: int | str) -> str:
    if source.startswith("file://"):
        return source
    return f"{source}/v1/epochs/{epoch}/participants"


def _check_epoch(epoch: int | str) -> int | str:
    if isinstance(epoch, bool):
        raise GonkaConfigError("epoch", "expected 'current' or an epoch number >= 1")
    if isinstance(epoch, int) or (isinstance(epoch, str) and epoch.isdigit()):
        number = int(epoch)
        if number < 1:
            raise GonkaConfigError("epoch", "epoch numbers start at 1")
        return number
    if epoch != "current":
        raise GonkaConfigError("epoch", f"expected 'current' or an epoch number, got {epoch!r}")
    return epoch


def _verify_default(verify_proofs: bool | None) -> bool:
    if verify_proofs is not None:
        return verify_proofs
    return os.environ.get(ENV_VERIFY_PROOF, "").strip().lower() in ("1", "true", "yes", "on")


def _first_ok(
    sources: Sequence[str], path: str | Callable[[str], str], parse: Callable[[Any], Any], what: str
) -> Generator[_Fetch, _Fetched, tuple[str, Any]]:
    """Try ``source + path`` on each source in order; return (source, parsed) of the first
    that answers 200 with a parsable payload, else raise :class:`GonkaDiscoveryError`."""
    attempts: list[tuple[str, str]] = []
    last: _Fetched = _Fetched(error="no source")
    proof_error: GonkaProofVerificationError | None = None
    for source in sources:
        url = path(source) if callable(path) else source + path
        fetched = yield _Fetch(url)
        if fetched.ok:
            try:
                return source, parse(fetched.payload)
            except GonkaPayloadError as exc:
                fetched = _Fetched(status=fetched.status, error=str(exc))
            except GonkaProofVerificationError as exc:
                proof_error = exc
                fetched = _Fetched(status=fetched.status, error=f"proof verification: {exc}")
            except (RecursionError, TypeError, ValueError, KeyError, AttributeError) as exc:
                # the parsers accept any JSON value; this net keeps one bad source from
                # stopping discovery should a shape still slip through
                logger.warning("%s from %s: unexpected shape (%s)", what, url, type(exc).__name__)
                fetched = _Fetched(status=fetched.status, error=f"unexpected shape: {exc!s:.100}")
        logger.info("%s from %s failed: %s", what, url, fetched.error)
        attempts.append((url, fetched.error or "failed"))
        last = fetched
    if proof_error is not None:
        # A source that serves an unverifiable list matters more than one that is down.
        raise proof_error
    raise GonkaDiscoveryError(
        attempts[-1][0] if attempts else "",
        last.status,
        last.error,
        attempts=tuple(attempts),
    )


CLASSIC_PATH = "/v1/chat/completions"


def _probe_plan(sources: Sequence[str]) -> Generator[_Fetch, _Fetched, ClassicApiProbe | None]:
    """Ask the first network source how it answers the classic inference route."""
    for source in sources:
        if source.startswith("file://"):
            continue
        url = source + CLASSIC_PATH
        fetched = yield _Fetch(url)
        if fetched.status is None:  # no answer: try the next host
            continue
        message = classic_retirement(fetched.status, fetched.payload, fetched.headers)
        return ClassicApiProbe(url, fetched.status, message is not None, message or "")
    return None


def _attempts_text(exc: GonkaDiscoveryError) -> str:
    if exc.attempts:
        return "; ".join(f"{url}: {reason}" for url, reason in exc.attempts)
    return str(exc.cause or exc.status_code or "no answer")


def _discovery_plan(
    sources: tuple[str, ...],
    epoch: int | str,
    verify_proofs: bool,
    fetch_allowlist: bool,
    fetch_epoch_info: bool,
    probe_classic: bool = True,
) -> Generator[_Fetch, _Fetched, DiscoveryResult]:
    def parse(payload: Any) -> tuple[ParsedParticipants, bool]:
        if verify_proofs:
            verify_participants_proof(payload)
        parsed = parse_participants(payload)
        if not parsed.participants and parsed.skipped:
            # entries, none readable: a broken source, not an empty epoch; try the next one
            raise GonkaPayloadError(
                "active_participants.participants",
                f"all {parsed.skipped} entries are malformed",
            )
        return parsed, verify_proofs

    source, (parsed, verified) = yield from _first_ok(
        sources,
        lambda s: _participants_url(s, epoch),
        parse,
        "participants",
    )
    # The allowlist and epoch info come from the node that answered first, then the others.
    network_sources = [s for s in (source, *sources) if not s.startswith("file://")]
    network_sources = list(dict.fromkeys(network_sources))
    probe = (yield from _probe_plan(network_sources)) if probe_classic else None
    allowlist: frozenset[str] = frozenset()
    allowlist_known = not network_sources  # a file source has no chain params to consult
    if fetch_allowlist and network_sources:
        try:
            _, allowlist = yield from _first_ok(
                network_sources, PARAMS_PATH, parse_allowlist, "chain params"
            )
            allowlist_known = True
        except GonkaDiscoveryError as exc:
            closed = exc.attempts and all(" 404" in reason for _, reason in exc.attempts)
            logger.log(
                logging.INFO if closed else logging.WARNING,
                "Transfer Agent allowlist unknown: %s. Every participant is kept; one that is not "
                "allowlisted answers 403 'Transfer Agent not allowed' and is then dropped (the "
                "request moves on to another TA). Pre-filtering needs a source whose operator "
                "exposes the chain REST API.",
                "no source exposes /chain-api/ (hosts close it by default since v0.2.8)"
                if closed
                else f"the chain params could not be read ({_attempts_text(exc)})",
            )
    epoch_info = None
    if fetch_epoch_info and network_sources:
        try:
            _, epoch_info = yield from _first_ok(
                network_sources, EPOCH_INFO_PATH, parse_epoch_info, "epoch info"
            )
        except GonkaDiscoveryError as exc:
            logger.info("epoch info unavailable: %s", exc)
    result = build_result(
        parsed,
        source_url=source,
        allowlist=allowlist,
        allowlist_known=allowlist_known,
        epoch_info=epoch_info,
        proof_verified=verified,
        epoch=epoch,
    )
    if probe is not None:
        result = dataclasses.replace(result, classic_api=probe)
    return result


# --- drivers ------------------------------------------------------------------------------------


def _read_file(url: str) -> _Fetched:
    parsed = urlparse(url)
    path = unquote(parsed.path)
    if parsed.netloc and parsed.netloc != "localhost":  # file://relative/path.json
        path = parsed.netloc + path
    try:
        return _Fetched(payload=json.loads(Path(path).read_text(encoding="utf-8")), status=200)
    except FileNotFoundError:
        return _Fetched(error=f"file {path} does not exist")
    except RecursionError:
        return _Fetched(error=f"cannot read {path}: JSON nested too deeply")
    except (OSError, ValueError) as exc:
        return _Fetched(error=f"cannot read {path}: {type(exc).__name__}: {exc!s:.200}")


_KEPT_HEADERS = ("date", "deprecation", "link", "content-type")


def _outcome(status: int, body: bytes, headers: Mapping[str, str] | None = None) -> _Fetched:
    kept = {}
    for name in _KEPT_HEADERS:
        value = headers.get(name) if headers is not None else None
        if value is not None:
            kept[name] = str(value)
    if status != 200:
        payload = _loads(body) if body[:1] in (b"{", b"[") else None
        return _Fetched(
            payload=payload, status=status, error=f"HTTP {status}: {_snippet(body)}", headers=kept
        )
    try:
        return _Fetched(payload=json.loads(body), status=status, headers=kept)
    except (ValueError, RecursionError):
        # RecursionError: JSON nested deeper than the interpreter's stack allows
        return _Fetched(status=status, error=f"not JSON: {_snippet(body)}", headers=kept)


def _loads(body: bytes) -> Any:
    try:
        return json.loads(body)
    except (ValueError, RecursionError):
        return None


def _snippet(body: bytes) -> str:
    text = body[:200].decode("utf-8", "replace").strip()
    return text or "(empty body)"


def _fetch_sync(client: httpx.Client, request: _Fetch) -> _Fetched:
    if request.url.startswith("file://"):
        return _read_file(request.url)
    # Lazy: httpx adds ~100 ms to `import gonka_mux.config` (via gonka.config), which parses only.
    import httpx

    try:
        response = client.get(request.url)
    except (httpx.HTTPError, httpx.InvalidURL) as exc:
        return _Fetched(error=f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__)
    return _outcome(response.status_code, response.content, response.headers)


async def _fetch_async(client: httpx.AsyncClient, request: _Fetch) -> _Fetched:
    if request.url.startswith("file://"):
        return _read_file(request.url)
    # Lazy: httpx adds ~100 ms to `import gonka_mux.config` (via gonka.config), which parses only.
    import httpx

    try:
        response = await client.get(request.url)
    except (httpx.HTTPError, httpx.InvalidURL) as exc:
        return _Fetched(error=f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__)
    return _outcome(response.status_code, response.content, response.headers)


def _client_options(timeout: float) -> dict[str, Any]:
    return {
        "timeout": timeout,
        "follow_redirects": True,
        "headers": {"Accept": "application/json", "User-Agent": _USER_AGENT},
    }


def _run_sync(plan: _Plan, client: httpx.Client | None, timeout: float) -> Any:
    # Lazy: httpx adds ~100 ms to `import gonka_mux.config` (via gonka.config), which parses only.
    import httpx

    own = client is None
    http = httpx.Client(**_client_options(timeout)) if client is None else client
    try:
        request = next(plan)
        while True:
            request = plan.send(_fetch_sync(http, request))
    except StopIteration as done:
        return done.value
    finally:
        if own:
            http.close()


async def _run_async(plan: _Plan, client: httpx.AsyncClient | None, timeout: float) -> Any:
    # Lazy: httpx adds ~100 ms to `import gonka_mux.config` (via gonka.config), which parses only.
    import httpx

    own = client is None
    http = httpx.AsyncClient(**_client_options(timeout)) if client is None else client
    try:
        request = next(plan)
        while True:
            request = plan.send(await _fetch_async(http, request))
    except StopIteration as done:
        return done.value
    finally:
        if own:
            await http.aclose()


def discover(
    source_urls: str | Sequence[str],
    *,
    epoch: int | str = "current",
    verify_proofs: bool | None = None,
    timeout: float = DEFAULT_TIMEOUT,
    fetch_allowlist: bool = True,
    fetch_epoch_info: bool = True,
    probe_classic: bool = True,
    client: httpx.Client | None = None,
) -> DiscoveryResult:
    """Discover the usable participants of ``epoch`` (``"current"`` or a number).

    ``verify_proofs`` defaults to ``GONKA_VERIFY_PROOF``. ``probe_classic`` asks the source
    host how it answers the classic inference route (``result.classic_api_retired``).
    Raises :class:`GonkaDiscoveryError` when no source answers,
    :class:`GonkaProofVerificationError` when verification is on and fails (on every source),
    :class:`GonkaNoParticipantsError` when nothing usable is left.
    """
    plan = _discovery_plan(
        normalize_sources(source_urls),
        _check_epoch(epoch),
        _verify_default(verify_proofs),
        fetch_allowlist,
        fetch_epoch_info,
        probe_classic,
    )
    result: DiscoveryResult = _run_sync(plan, client, timeout)
    return result


async def adiscover(
    source_urls: str | Sequence[str],
    *,
    epoch: int | str = "current",
    verify_proofs: bool | None = None,
    timeout: float = DEFAULT_TIMEOUT,
    fetch_allowlist: bool = True,
    fetch_epoch_info: bool = True,
    probe_classic: bool = True,
    client: httpx.AsyncClient | None = None,
) -> DiscoveryResult:
    """Async twin of :func:`discover`."""
    plan = _discovery_plan(
        normalize_sources(source_urls),
        _check_epoch(epoch),
        _verify_default(verify_proofs),
        fetch_allowlist,
        fetch_epoch_info,
        probe_classic,
    )
    result: DiscoveryResult = await _run_async(plan, client, timeout)
    return result


def _network_only(source_urls: str | Sequence[str]) -> tuple[str, ...]:
    sources = tuple(s for s in normalize_sources(source_urls) if not s.startswith("file://"))
    if not sources:
        raise GonkaConfigError("source_url", "this needs an http(s) node URL, not a file")
    return sources


def _single(
    path: str, parse: Callable[[Any], Any], what: str, source_urls: str | Sequence[str]
) -> _Plan:
    _, value = yield from _first_ok(_network_only(source_urls), path, parse, what)
    return value


def fetch_epoch_info(
    source_urls: str | Sequence[str],
    *,
    timeout: float = DEFAULT_TIMEOUT,
    client: httpx.Client | None = None,
) -> EpochInfo:
    """``/v1/epochs/latest`` from the first source that answers (for an epoch watcher)."""
    plan = _single(EPOCH_INFO_PATH, parse_epoch_info, "epoch info", source_urls)
    info: EpochInfo = _run_sync(plan, client, timeout)
    return info


async def afetch_epoch_info(
    source_urls: str | Sequence[str],
    *,
    timeout: float = DEFAULT_TIMEOUT,
    client: httpx.AsyncClient | None = None,
) -> EpochInfo:
    """Async twin of :func:`fetch_epoch_info`."""
    plan = _single(EPOCH_INFO_PATH, parse_epoch_info, "epoch info", source_urls)
    info: EpochInfo = await _run_async(plan, client, timeout)
    return info


def fetch_chain_status(
    source_urls: str | Sequence[str],
    *,
    timeout: float = DEFAULT_TIMEOUT,
    client: httpx.Client | None = None,
) -> ChainStatus:
    """``/chain-rpc/status`` (latest block height and time) from the first source that answers.

    Use ``NanoClock.sync_to(status.latest_block_time_ns)`` when TAs reject timestamps.
    """
    plan = _single(CHAIN_STATUS_PATH, parse_chain_status, "chain status", source_urls)
    status: ChainStatus = _run_sync(plan, client, timeout)
    return status


async def afetch_chain_status(
    source_urls: str | Sequence[str],
    *,
    timeout: float = DEFAULT_TIMEOUT,
    client: httpx.AsyncClient | None = None,
) -> ChainStatus:
    """Async twin of :func:`fetch_chain_status`."""
    plan = _single(CHAIN_STATUS_PATH, parse_chain_status, "chain status", source_urls)
    status: ChainStatus = await _run_async(plan, client, timeout)
    return status


def probe_classic_api(
    source_urls: str | Sequence[str],
    *,
    timeout: float = DEFAULT_TIMEOUT,
    client: httpx.Client | None = None,
) -> ClassicApiProbe | None:
    """How the first host that answers serves the classic inference route (``None``: none
    answered). ``probe.retired`` is True on a v0.2.14 host (the network retired it)."""
    probe: ClassicApiProbe | None = _run_sync(
        _probe_plan(_network_only(source_urls)), client, timeout
    )
    return probe


async def aprobe_classic_api(
    source_urls: str | Sequence[str],
    *,
    timeout: float = DEFAULT_TIMEOUT,
    client: httpx.AsyncClient | None = None,
) -> ClassicApiProbe | None:
    """Async twin of :func:`probe_classic_api`."""
    probe: ClassicApiProbe | None = await _run_async(
        _probe_plan(_network_only(source_urls)), client, timeout
    )
    return probe
