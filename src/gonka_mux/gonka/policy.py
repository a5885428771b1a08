"""What a Gonka Transfer Agent's error means for routing, and the errors raised for it.

:class:`GonkaErrorPolicy` is the :class:`~gonka_mux.routing.outcome.ErrorPolicy` of every signed
endpoint. It reads the node's ``{"error": "<message>"}`` body (``gonka-protocol.md`` §1.6)::

    429 Transfer Agent capacity reached  -> cool this TA down, try another TA
    402 Insufficient balance             -> InsufficientBalance, no retry
    401 Unable to validate ...           -> GonkaAuthenticationError (check address, pubkey,
                                            TA address), no retry
    403 Transfer Agent not allowed       -> TransferAgentNotAllowed: drop this TA, try another
    403 restricted until block height N  -> GonkaAccessRestricted, no retry (chain-wide)
    403 anything else                    -> GonkaParticipantRefused: that participant's own
                                            refusal; out until the next refresh (woken now),
                                            try another. The same words from several distinct
                                            participants within seconds: GonkaAccessRestricted
    404 model not found                  -> GonkaModelNotServed, no retry (the refresh manager
                                            re-reads the participants when this spreads)
    410 deprecated (v0.2.14 marker)      -> ClassicApiRetired(network_wide=True): the whole
                                            signed group is retired at once (one warning), the
                                            request moves on to brokers/providers
    410 without the marker               -> ClassicApiRetired: drop this TA, try another; raised
                                            when no other endpoint serves the model
    400 signature too old / in future    -> GonkaClockSkew (the auth flow already resynced the
                                            clock once and resent): try another TA
    500 account not found / no pubkey    -> GonkaAccountError, no retry
    5xx                                  -> try another TA; the same body twice in one request
                                            is a deterministic failure and stops the retries

Every error class subclasses openai's own (``except openai.APIStatusError`` keeps working),
renders the OpenAI error JSON with ``to_dict()``, says what to do, carries the node's message in
``node_message`` and the addresses involved (never a key or a signature).
"""

from __future__ import annotations

import json
import logging
import math
import re
import time
from collections.abc import Callable
from typing import Any

import openai

from gonka_mux.errors import MuxErrorMixin, _init_status_error
from gonka_mux.routing.outcome import ErrorPolicy, Failure

logger = logging.getLogger("gonka_mux.gonka")

__all__ = [
    "ClassicApiRetired",
    "GonkaAccessRestricted",
    "GonkaAccountError",
    "GonkaAuthenticationError",
    "GonkaClockSkew",
    "GonkaErrorPolicy",
    "GonkaModelNotServed",
    "GonkaParticipantRefused",
    "GonkaStatusError",
    "InsufficientBalance",
    "RefusalTracker",
    "TransferAgentNotAllowed",
    "is_network_retirement",
    "node_message",
]

BROKER_HINT = (
    "Use a broker (gonka_mux.gonka.add_gonka_broker(mux, base_url, api_key)) or a devshard "
    "gateway instead: mainnet retired the classic signed API in July 2026 (v0.2.14)."
)


def _response_json(exc: BaseException) -> Any:
    """The JSON body of the response behind ``exc`` (openai keeps only ``body["error"]`` in
    ``exc.body``, which loses Gonka's ``{"error": "deprecated", "message": ...}``)."""
    response = getattr(exc, "response", None)
    try:
        text = response.text if response is not None else ""
    except Exception:  # a streamed response that was not read
        return None
    if not text or text[:1] not in "{[":
        return None
    try:
        return json.loads(text[:100_000])
    except (ValueError, RecursionError):
        return None


def _response_header(exc: BaseException, name: str) -> str | None:
    headers = getattr(getattr(exc, "response", None), "headers", None)
    try:
        value = headers.get(name) if headers is not None else None
    except Exception:
        return None
    return str(value) if value is not None else None


def node_message(exc: BaseException) -> str:
    """The node's error text: ``{"error": "..."}`` (Gonka), ``{"error": "...", "message":
    "..."}`` (v0.2.14's 410), ``{"error": {"message": ...}}`` (OpenAI-shaped) or the raw body."""
    document = _response_json(exc)
    if isinstance(document, dict):
        error, message = document.get("error"), document.get("message")
        if isinstance(error, str) and isinstance(message, str):
            return f"{error}: {message}"[:500]
        if isinstance(error, str):
            return error[:500]
        if isinstance(error, dict) and isinstance(error.get("message"), str):
            return str(error["message"])[:500]
        if isinstance(message, str):
            return message[:500]
    body = getattr(exc, "body", None)
    if isinstance(body, dict):
        inner = body.get("error", body)
        if isinstance(inner, str):
            return inner
        if isinstance(inner, dict) and isinstance(inner.get("message"), str):
            return str(inner["message"])
        if isinstance(body.get("message"), str):
            return str(body["message"])
        return json.dumps(body)[:500]
    if isinstance(body, str):
        return body[:500]
    response = getattr(exc, "response", None)
    try:
        text = response.text if response is not None else ""
    except Exception:  # a streamed response that was not read
        text = ""
    return text[:500] or str(exc)[:500]


class GonkaStatusError(MuxErrorMixin):
    """Mixin of the Gonka HTTP-shaped errors: the node's message and the accounts involved."""

    node_message: str
    transfer_address: str
    requester_address: str

    def _setup(
        self,
        status: int,
        message: str,
        *,
        code: str,
        type_: str | None = None,
        node_message: str = "",
        transfer_address: str = "",
        requester_address: str = "",
    ) -> None:
        self.node_message = node_message
        self.transfer_address = transfer_address
        self.requester_address = requester_address
        _init_status_error(self, status, message, code=code, type_=type_, headers=None)


def _ta(transfer_address: str) -> str:
    return f"Transfer Agent {transfer_address}" if transfer_address else "the Transfer Agent"


class InsufficientBalance(GonkaStatusError, openai.APIStatusError):
    """402: the requester's balance does not cover the request's escrow. Not retried."""

    def __init__(
        self, *, node_message: str = "", transfer_address: str = "", requester_address: str = ""
    ) -> None:
        who = f"account {requester_address}" if requester_address else "your account"
        self._setup(
            402,
            f"Gonka says {who} has an insufficient balance for this request (the network "
            "escrows (prompt characters + max_tokens) x price per token before running it). "
            "Top up the account, or send a smaller max_tokens (default_max_tokens / "
            "GONKA_MAX_TOKENS).",
            code="insufficient_balance",
            type_="insufficient_quota",
            node_message=node_message,
            transfer_address=transfer_address,
            requester_address=requester_address,
        )


class GonkaAuthenticationError(GonkaStatusError, openai.AuthenticationError):
    """401: the TA could not validate the signed request. Not retried."""

    def __init__(
        self, *, node_message: str = "", transfer_address: str = "", requester_address: str = ""
    ) -> None:
        who = requester_address or "the requester address"
        self._setup(
            401,
            f"{_ta(transfer_address)} rejected the request signature ({node_message or 'HTTP 401'})"
            f". Check that (1) the address {who} (GONKA_ADDRESS) belongs to your private key, "
            "(2) that account has a public key on chain (it must have signed a transaction, "
            "e.g. `inferenced create-client`), and (3) requests are signed for the TA's own "
            "account address (the participant address from discovery or GONKA_ENDPOINTS).",
            code="invalid_signature",
            type_="authentication_error",
            node_message=node_message,
            transfer_address=transfer_address,
            requester_address=requester_address,
        )


class TransferAgentNotAllowed(GonkaStatusError, openai.PermissionDeniedError):
    """403 "Transfer Agent not allowed": this node is not on the chain's TA allowlist; the
    endpoint is removed and another TA is tried."""

    def __init__(
        self, *, node_message: str = "", transfer_address: str = "", requester_address: str = ""
    ) -> None:
        self._setup(
            403,
            f"{_ta(transfer_address)} is not on the network's Transfer Agent allowlist, so it "
            "refuses inference; it was removed from rotation. Discovery keeps only allowlisted "
            "TAs when it can read the chain params: pass a source_url that serves "
            "/chain-api/, or list allowed TAs in GONKA_ENDPOINTS.",
            code="transfer_agent_not_allowed",
            type_="permission_error",
            node_message=node_message,
            transfer_address=transfer_address,
            requester_address=requester_address,
        )


class GonkaAccessRestricted(GonkaStatusError, openai.PermissionDeniedError):
    """403 for a network-wide restriction: the node's own "inference requests are restricted
    until block height N", or the same refusal from several distinct participants within a
    short window (``participants`` lists them). Not retried."""

    def __init__(
        self,
        *,
        node_message: str = "",
        transfer_address: str = "",
        requester_address: str = "",
        participants: tuple[str, ...] = (),
    ) -> None:
        self.participants = participants
        seen = (
            f" {len(participants)} different participants refused alike within seconds."
            if len(participants) > 1
            else ""
        )
        self._setup(
            403,
            f"The Gonka network refuses inference for now ({node_message or 'HTTP 403'})."
            f"{seen} This is a chain-wide restriction, not a fault of one node: wait until it is "
            "lifted, or use a broker.",
            code="gonka_access_restricted",
            type_="permission_error",
            node_message=node_message,
            transfer_address=transfer_address,
            requester_address=requester_address,
        )


class GonkaParticipantRefused(GonkaStatusError, openai.PermissionDeniedError):
    """403 from one participant, in words that are not a network-wide restriction (a host that
    left the epoch, its own policy): that participant is out of rotation until the next
    refresh, which is woken at once, and another endpoint is tried. Raised only when no other
    endpoint serves the model."""

    def __init__(
        self, *, node_message: str = "", transfer_address: str = "", requester_address: str = ""
    ) -> None:
        self._setup(
            403,
            f"{_ta(transfer_address)} refused the request ({node_message or 'HTTP 403'}). "
            "Only this participant refuses (it may have left the epoch): it is out of rotation "
            "until the participant list is re-read, and no other endpoint serves this model. "
            "Retry shortly, or add a broker.",
            code="gonka_participant_refused",
            type_="permission_error",
            node_message=node_message,
            transfer_address=transfer_address,
            requester_address=requester_address,
        )


class GonkaModelNotServed(GonkaStatusError, openai.NotFoundError):
    """404 "model not found": the model has no active sub-group in the current epoch."""

    def __init__(
        self,
        *,
        model: str | None = None,
        node_message: str = "",
        transfer_address: str = "",
        requester_address: str = "",
    ) -> None:
        self.model = model
        name = f"model {model!r}" if model else "this model"
        self._setup(
            404,
            f"{_ta(transfer_address)} says {name} is not served in the current epoch. Model ids "
            "are case-sensitive; the participant list is re-read when this happens on several "
            "TAs, so retry shortly, or pick a model from mux.models.list().",
            code="model_not_found",
            type_="invalid_request_error",
            node_message=node_message,
            transfer_address=transfer_address,
            requester_address=requester_address,
        )


class ClassicApiRetired(GonkaStatusError, openai.APIStatusError):
    """410 Gone: the classic signed inference API is retired. ``network_wide`` is True when
    the answer carried the v0.2.14 deprecation marker (every host of the network answers so:
    the whole signed group was retired); False for a plain 410 from one host."""

    def __init__(
        self,
        *,
        node_message: str = "",
        transfer_address: str = "",
        requester_address: str = "",
        network_wide: bool = False,
    ) -> None:
        self.network_wide = network_wide
        if network_wide:
            what = (
                f"{_ta(transfer_address)} answered that classic signed inference is retired on "
                "the whole network (HTTP 410 'deprecated', v0.2.14): every signed endpoint of "
                "this registration was removed and no other endpoint serves this model."
            )
        else:
            what = (
                f"{_ta(transfer_address)} no longer serves the classic signed inference API "
                "(HTTP 410); it was removed from rotation."
            )
        self._setup(
            410,
            f"{what} {BROKER_HINT}",
            code="classic_api_retired",
            type_="gone_error",
            node_message=node_message,
            transfer_address=transfer_address,
            requester_address=requester_address,
        )


class GonkaClockSkew(GonkaStatusError, openai.BadRequestError):
    """400 "signature is too old / in the future" even after a resync to the TA's chain time."""

    def __init__(
        self, *, node_message: str = "", transfer_address: str = "", requester_address: str = ""
    ) -> None:
        self._setup(
            400,
            f"{_ta(transfer_address)} rejected the request timestamp ({node_message}): TAs "
            "accept timestamps within 60 s before and 30 s after their latest block time. "
            "gonka_mux resyncs its clock to the TA's own clock (its HTTP Date header, or "
            "/chain-rpc/status where the host exposes it) and resends once; it was still "
            "refused, or the TA's clock agrees with ours, so its chain is probably lagging or "
            "stalled: other TAs are tried. Check the system clock (NTP) if this persists.",
            code="timestamp_out_of_window",
            type_="invalid_request_error",
            node_message=node_message,
            transfer_address=transfer_address,
            requester_address=requester_address,
        )


class GonkaAccountError(GonkaStatusError, openai.InternalServerError):
    """500 from the TA's account lookup: the requester account is unknown or has no public key
    on chain (the node reports its failed gRPC query as a 500)."""

    def __init__(
        self,
        *,
        status: int = 500,
        node_message: str = "",
        transfer_address: str = "",
        requester_address: str = "",
    ) -> None:
        who = f"account {requester_address}" if requester_address else "the requester account"
        self._setup(
            status,
            f"The Gonka chain cannot use {who} ({node_message}). The account must exist and have "
            "a public key on chain: fund it and sign one transaction from it (e.g. "
            "`inferenced create-client <name> --node-address <url>`), and check GONKA_ADDRESS.",
            code="gonka_account_error",
            type_="authentication_error",
            node_message=node_message,
            transfer_address=transfer_address,
            requester_address=requester_address,
        )


_TA_CAPACITY = "transfer agent capacity"
_NOT_ALLOWED = "transfer agent not allowed"
_RESTRICTED = "restricted until block height"
_RETIRED_MARKER = "classic inference is deprecated"
_ADDRESS = re.compile(r"gonka1[02-9ac-hj-np-z]{6,}")
_NUMBER = re.compile(r"\d+")


def is_network_retirement(exc: BaseException) -> bool:
    """True for a v0.2.14 host's 410: a ``Deprecation`` header, or the body
    ``{"error": "deprecated", "message": "classic inference is deprecated; use devshard"}``."""
    if getattr(exc, "status_code", None) != 410:
        return False
    if (_response_header(exc, "deprecation") or "").strip():
        return True
    document = _response_json(exc)
    if isinstance(document, dict):
        message = document.get("message")
        if isinstance(message, str) and _RETIRED_MARKER in message.lower():
            return True
        if document.get("error") == "deprecated":
            return True
    return _RETIRED_MARKER in node_message(exc).lower()


def _refusal_key(message: str) -> str:
    """A refusal's words with addresses and numbers blanked, so that the same refusal from
    different hosts (each naming itself, a height...) compares equal."""
    return _NUMBER.sub("#", _ADDRESS.sub("<address>", message.lower())).strip()


class RefusalTracker:
    """Whose 403 is it: the refusals (403s that are no known chain-wide restriction) seen from
    the participants of one registration, for ``window`` seconds.

    :meth:`record` answers True when enough distinct participants refused in the same words
    (addresses and numbers aside) within the window: then the network, not one participant,
    is refusing. Enough is ``threshold`` (3) or ``fraction`` (half) of the group, whichever is
    more, capped at the group's size and never fewer than two: a few participants leaving at
    one epoch switch do not look like the network. A refusal from a participant that the next
    refresh no longer lists is forgotten (:meth:`forget_departed`): it was its own.
    """

    def __init__(
        self,
        *,
        window: float = 10.0,
        threshold: int = 3,
        fraction: float = 0.5,
        population: Callable[[], int] | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if window <= 0 or threshold < 2 or not 0 < fraction <= 1:
            raise ValueError("RefusalTracker needs window > 0, threshold >= 2, 0 < fraction <= 1")
        self.window = window
        self.threshold = threshold
        self.fraction = fraction
        self.population = population
        self.clock = clock
        self._events: list[tuple[float, str, str]] = []

    def _prune(self, now: float) -> None:
        self._events = [e for e in self._events if now - e[0] <= self.window]

    def record(self, address: str, message: str) -> bool:
        now = self.clock()
        self._prune(now)
        self._events.append((now, address, _refusal_key(message)))
        return len(self.refusing(message)) >= self.needed()

    def refusing(self, message: str) -> tuple[str, ...]:
        """The distinct participants that refused in these words within the window."""
        key = _refusal_key(message)
        return tuple(dict.fromkeys(a for _, a, k in self._events if k == key))

    def forget_departed(self, listed: set[str] | frozenset[str]) -> None:
        """Drop the refusals of participants no longer ``listed`` (they left: it was theirs)."""
        self._events = [e for e in self._events if e[1] in listed]

    def needed(self) -> int:
        """How many distinct participants must refuse alike to call it chain-wide."""
        size = 0
        if self.population is not None:
            try:
                size = int(self.population())
            except Exception:
                size = 0
        if size <= 0:
            return self.threshold
        wanted = max(self.threshold, math.ceil(self.fraction * size))
        return max(2, min(wanted, size))

    def __repr__(self) -> str:
        return (
            f"RefusalTracker(window={self.window:g}s, threshold={self.threshold}, "
            f"fraction={self.fraction:g})"
        )


_ACCOUNT_MARKERS = ("account not found", "account has no public key", "nil pointer dereference")
_SKEW_MARKERS = ("signature is too old", "signature is in the future", "timestamp is too old")


class GonkaErrorPolicy(ErrorPolicy):
    """Routing decisions for one signed Gonka endpoint (see the module docstring).

    ``transfer_address``/``requester_address`` go into the error messages; ``model`` is the
    public model name the endpoint serves. ``has_alternative()`` says whether another endpoint
    could still take the request: a TA that answers 403 "not allowed" or 410 is removed either
    way, and the request moves on only when there is somewhere to go (else its own typed error
    is raised, not a generic "all endpoints failed").
    """

    stop_on_repeated_5xx_body = True

    def __init__(
        self,
        *,
        transfer_address: str = "",
        requester_address: str = "",
        model: str | None = None,
        has_alternative: Callable[[], bool] | None = None,
        refusals: RefusalTracker | None = None,
        on_network_retired: Callable[[str, str], Any] | None = None,
    ) -> None:
        self.transfer_address = transfer_address
        self.requester_address = requester_address
        self.model = model
        self.has_alternative = has_alternative
        self.refusals = refusals
        # called (address, node message) on the first 410 with the v0.2.14 deprecation marker;
        # the registration retires its whole signed group there
        self.on_network_retired = on_network_retired

    def _alternative(self) -> bool:
        if self.has_alternative is None:
            return True
        try:
            return bool(self.has_alternative())
        except Exception:
            return True

    def _who(self) -> dict[str, str]:
        return {
            "transfer_address": self.transfer_address,
            "requester_address": self.requester_address,
        }

    def classify_status(self, exc: Any, status: int, body: str | None) -> Failure:
        message = node_message(exc)
        text = message.lower()
        who = self._who()

        def fail(kind: str, retryable: bool, error: BaseException, note: str, **kw: Any) -> Failure:
            error.__cause__ = exc
            return Failure(kind, status, retryable, error, body=body, message=note, **kw)

        if status == 429:
            failure = super().classify_status(exc, status, body)
            if _TA_CAPACITY in text:
                failure.message = "Transfer Agent capacity reached"
            return failure
        if status == 402:
            return fail(
                "payment",
                False,
                InsufficientBalance(node_message=message, **who),
                "insufficient balance (402)",
                penalize=False,
            )
        if status == 401:
            return fail(
                "auth",
                False,
                GonkaAuthenticationError(node_message=message, **who),
                "signature rejected (401)",
                penalize=False,
            )
        if status == 403:
            return self._forbidden(exc, message, text, fail)
        if status == 404:
            return fail(
                "client_error",
                False,
                GonkaModelNotServed(model=self.model, node_message=message, **who),
                "model not found in this epoch (404)",
                penalize=False,
            )
        if status == 410:
            network_wide = is_network_retirement(exc)
            if network_wide and self.on_network_retired is not None:
                try:
                    # retires the whole group now, so that the alternatives below are the
                    # brokers and providers outside it
                    self.on_network_retired(self.transfer_address, message)
                except Exception:
                    logger.exception("retiring the Gonka group failed")
            note = (
                "classic signed inference retired network-wide (410 deprecated): group retired"
                if network_wide
                else "classic signed API retired on this host (410): removed"
            )
            return fail(
                "gone",
                self._alternative(),
                ClassicApiRetired(node_message=message, network_wide=network_wide, **who),
                note,
                penalize=False,
                remove_endpoint=True,
            )
        if status == 400 and any(marker in text for marker in _SKEW_MARKERS):
            return fail(
                "client_error",
                True,
                GonkaClockSkew(node_message=message, **who),
                f"timestamp rejected: {message[:60]}",
            )
        if status == 400 and "has already been used" in text:
            # A replayed signature: the next attempt is signed afresh.
            return Failure("client_error", 400, True, exc, body=body, message="replayed signature")
        if status >= 500 and any(marker in text for marker in _ACCOUNT_MARKERS):
            return fail(
                "auth",
                False,
                GonkaAccountError(status=status, node_message=message, **who),
                "requester account unusable on chain",
                penalize=False,
            )
        failure = super().classify_status(exc, status, body)
        if status >= 500 and message:
            failure.message = f"HTTP {status}: {message[:80]}"
        return failure

    def _forbidden(
        self, exc: Any, message: str, text: str, fail: Callable[..., Failure]
    ) -> Failure:
        """Whose 403 is it: the allowlist's (drop this TA), the chain's (raise), or this
        participant's own refusal (drop it until the next refresh, fail over)."""
        who = self._who()
        if _NOT_ALLOWED in text:
            return fail(
                "auth",
                self._alternative(),
                TransferAgentNotAllowed(node_message=message, **who),
                "Transfer Agent not allowed (403): removed",
                penalize=False,
                remove_endpoint=True,
            )
        if _RESTRICTED in text:
            return fail(
                "auth",
                False,
                GonkaAccessRestricted(node_message=message, **who),
                f"network restricted (403): {message[:80]}",
                penalize=False,
            )
        tracker = self.refusals
        if tracker is not None and tracker.record(self.transfer_address, message):
            return fail(
                "auth",
                False,
                GonkaAccessRestricted(
                    node_message=message, participants=tracker.refusing(message), **who
                ),
                f"refused alike by several participants (403): {message[:60]}",
                penalize=False,
            )
        return fail(
            "gone",
            self._alternative(),
            GonkaParticipantRefused(node_message=message, **who),
            f"participant refused (403): {message[:60]}",
            penalize=False,
            remove_endpoint=True,
        )

    def __repr__(self) -> str:
        return f"GonkaErrorPolicy(transfer_address={self.transfer_address!r}, model={self.model!r})"
