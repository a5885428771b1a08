"""Gonka epochs: parse ``GET /v1/epochs/latest`` and do the switch-height arithmetic (pure).

An epoch's participant set becomes effective at its ``set_new_validators`` height, not when
``latest_epoch.index`` increments (that happens at PoC start). The cheap way to notice a switch
is therefore to poll the small ``/v1/epochs/latest`` document and re-fetch the (large)
participants list only once ``block_height`` reaches :attr:`EpochInfo.switch_height`::

    switch = epoch_stages.set_new_validators   if it is >= block_height
             next_epoch_stages.set_new_validators otherwise

Epoch ``N+1``'s participants are readable at ``/v1/epochs/N+1/participants`` from
``poc_validation_end`` on, so they can be prefetched before the switch
(:attr:`EpochInfo.next_participants_available`).

Both wire shapes are accepted: plain numbers, and the transitional v0.2.15 shape (ints as
strings, ``epoch_params`` nested one level deeper, ``active_confirmation_poc_event`` null or
absent). Nothing here does I/O.
"""

from __future__ import annotations

import calendar
import re
import reprlib
from collections.abc import Mapping
from dataclasses import dataclass, field
from enum import IntEnum
from typing import Any

from .errors import GonkaPayloadError

__all__ = [
    "POC_PHASES",
    "ChainStatus",
    "ConfirmationPocEvent",
    "ConfirmationPocPhase",
    "EpochInfo",
    "EpochStages",
    "as_int",
    "derive_phase",
    "parse_chain_status",
    "parse_epoch_info",
    "parse_rfc3339_ns",
    "shown",
    "switch_height",
]

PHASE_INFERENCE = "Inference"
# Phases during which capacity drops (ML nodes run Proof of Compute); the official gateway holds
# traffic back in them.
POC_PHASES = frozenset({"PoCGenerate", "PoCGenerateWindDown", "PoCValidate", "PoCValidateWindDown"})
# testermint's EpochResponse.safeForInference margin before the next PoC starts.
SAFE_MARGIN_BLOCKS = 3


class ConfirmationPocPhase(IntEnum):
    """Phase of a confirmation-PoC event (Go renders the proto enum as an int)."""

    INACTIVE = 0
    GRACE_PERIOD = 1
    GENERATION = 2
    VALIDATION = 3
    COMPLETED = 4


_BLOCKING_CONFIRMATION_PHASES = frozenset(
    {
        ConfirmationPocPhase.GRACE_PERIOD,
        ConfirmationPocPhase.GENERATION,
        ConfirmationPocPhase.VALIDATION,
    }
)


_REPR = reprlib.Repr()
_REPR.maxlevel = 2
_REPR.maxstring = 60
_REPR.maxother = 60
_REPR.maxlist = _REPR.maxdict = 4


def shown(value: Any) -> str:
    """A short repr of a payload value for an error message: bounded in length and depth (a
    plain ``repr`` of a deeply nested JSON value would exhaust the stack)."""
    try:
        return _REPR.repr(value)
    except Exception:  # pragma: no cover - reprlib is defensive already
        return f"<{type(value).__name__}>"


def as_int(value: Any, default: int = 0, *, what: str = "value") -> int:
    """An int from a JSON number or a decimal string (Cosmos renders int64 as strings).

    ``None`` and a missing value give ``default`` (Go omits zero values). Anything else that is
    not an integer raises :class:`GonkaPayloadError`.
    """
    if value is None:
        return default
    if isinstance(value, bool):
        raise GonkaPayloadError(what, f"expected an integer, got {shown(value)}")
    if isinstance(value, int):
        return value
    if isinstance(value, str):
        text = value.strip()
        if not text:
            return default
        try:
            return int(text)
        except ValueError:
            pass
    if isinstance(value, float) and value.is_integer():
        return int(value)
    raise GonkaPayloadError(what, f"expected an integer, got {shown(value)}")


@dataclass(frozen=True, slots=True)
class EpochStages:
    """Block heights of one epoch's stages (``types/epoch_stages.go``)."""

    epoch_index: int = 0
    poc_start: int = 0
    poc_generation_wind_down: int = 0
    poc_generation_end: int = 0
    poc_validation_start: int = 0
    poc_validation_wind_down: int = 0
    poc_validation_end: int = 0
    set_new_validators: int = 0
    claim_money: int = 0
    inference_validation_cutoff: int = 0
    next_poc_start: int = 0

    @classmethod
    def from_payload(cls, payload: Any, what: str = "epoch_stages") -> EpochStages:
        if payload is None:
            return cls()
        if not isinstance(payload, Mapping):
            raise GonkaPayloadError(what, "expected an object")
        values = {
            name: as_int(payload.get(name), what=f"{what}.{name}")
            for name in cls.__dataclass_fields__
        }
        return cls(**values)


@dataclass(frozen=True, slots=True)
class ConfirmationPocEvent:
    """An active confirmation-PoC event (capacity is reduced while it runs)."""

    epoch_index: int
    event_sequence: int
    trigger_height: int
    generation_start_height: int
    phase: int

    @property
    def blocks_traffic(self) -> bool:
        """True in the grace-period, generation and validation phases."""
        return self.phase in _BLOCKING_CONFIRMATION_PHASES


_CONFIRMATION_PHASE_NAMES = {p.name: int(p) for p in ConfirmationPocPhase}


def _confirmation_phase(value: Any) -> int:
    if isinstance(value, str) and not value.strip().lstrip("-").isdigit():
        name = value.strip().upper()
        for prefix in ("CONFIRMATION_POC_PHASE_", "CONFIRMATION_POC_", "PHASE_"):
            name = name.removeprefix(prefix)
        if name in _CONFIRMATION_PHASE_NAMES:
            return _CONFIRMATION_PHASE_NAMES[name]
        raise GonkaPayloadError(
            "active_confirmation_poc_event.phase", f"unknown phase {shown(value)}"
        )
    return as_int(value, what="active_confirmation_poc_event.phase")


@dataclass(frozen=True, slots=True)
class EpochInfo:
    """Parsed ``/v1/epochs/latest``."""

    block_height: int
    latest_epoch_index: int
    latest_epoch_poc_start: int
    phase: str
    epoch_stages: EpochStages
    next_epoch_stages: EpochStages
    epoch_params: Mapping[str, Any] = field(default_factory=dict)
    is_confirmation_poc_active: bool = False
    confirmation_poc_event: ConfirmationPocEvent | None = None

    @property
    def switch_height(self) -> int:
        """Block height at which the next participant set becomes effective."""
        return switch_height(self)

    @property
    def blocks_until_switch(self) -> int:
        return max(0, self.switch_height - self.block_height)

    @property
    def effective_epoch_id(self) -> int:
        """The epoch whose participants serve inference now (``/epochs/current``)."""
        if self.block_height >= self.epoch_stages.set_new_validators:
            return self.latest_epoch_index
        return self.latest_epoch_index - 1

    @property
    def next_participants_available(self) -> bool:
        """True when ``/v1/epochs/{latest_epoch_index}/participants`` can be prefetched before
        it becomes effective (between ``poc_validation_end`` and ``set_new_validators``)."""
        stages = self.epoch_stages
        return stages.poc_validation_end <= self.block_height < stages.set_new_validators

    @property
    def in_poc(self) -> bool:
        """True during the PoC generation/validation phases."""
        return self.phase in POC_PHASES

    @property
    def confirmation_poc_blocking(self) -> bool:
        """True while a confirmation-PoC event is in a traffic-reducing phase."""
        if not self.is_confirmation_poc_active:
            return False
        event = self.confirmation_poc_event
        # Flagged active without details: assume the conservative answer.
        return event is None or event.blocks_traffic

    @property
    def safe_for_inference(self) -> bool:
        """Inference phase, more than 3 blocks before the next PoC, and no confirmation PoC in a
        traffic-reducing phase (testermint's rule plus the gateway's confirmation-PoC gate)."""
        return (
            self.phase == PHASE_INFERENCE
            and self.next_epoch_stages.poc_start - self.block_height > SAFE_MARGIN_BLOCKS
            and not self.confirmation_poc_blocking
        )


def switch_height(info: EpochInfo) -> int:
    """``epoch_stages.set_new_validators`` if still ahead (>= block height), else the next
    epoch's (the same rule as the official gateway's ``deriveEpochSwitchBlockHeight``)."""
    current = info.epoch_stages.set_new_validators
    if current >= info.block_height:
        return current
    return info.next_epoch_stages.set_new_validators


def derive_phase(stages: EpochStages, block_height: int) -> str:
    """The epoch phase at ``block_height`` from the stage heights (used when ``phase`` is
    missing from a payload)."""
    if stages.poc_start <= block_height < stages.poc_generation_wind_down:
        return "PoCGenerate"
    if stages.poc_generation_wind_down <= block_height < stages.poc_validation_start:
        return "PoCGenerateWindDown"
    if stages.poc_validation_start <= block_height < stages.poc_validation_wind_down:
        return "PoCValidate"
    if stages.poc_validation_wind_down <= block_height < stages.poc_validation_end:
        return "PoCValidateWindDown"
    return PHASE_INFERENCE


def _flat_params(payload: Any) -> dict[str, Any]:
    if not isinstance(payload, Mapping):
        return {}
    inner = payload.get("epoch_params")
    if isinstance(inner, Mapping):  # v0.2.15: {"epoch_params": {"epoch_params": {...}}}
        payload = inner
    params: dict[str, Any] = {}
    for key, value in payload.items():
        if isinstance(value, Mapping):
            params[key] = dict(value)
            continue
        try:
            params[key] = as_int(value, what=f"epoch_params.{key}")
        except GonkaPayloadError:
            params[key] = value
    return params


def parse_epoch_info(payload: Any) -> EpochInfo:
    """Parse a ``/v1/epochs/latest`` document (either wire shape)."""
    if not isinstance(payload, Mapping):
        raise GonkaPayloadError("epochs/latest", "expected a JSON object")
    if "block_height" not in payload or "epoch_stages" not in payload:
        raise GonkaPayloadError(
            "epochs/latest", "missing block_height or epoch_stages (is this /v1/epochs/latest?)"
        )
    block_height = as_int(payload.get("block_height"), what="block_height")
    latest = payload.get("latest_epoch") or {}
    if not isinstance(latest, Mapping):
        raise GonkaPayloadError("latest_epoch", "expected an object")
    stages = EpochStages.from_payload(payload.get("epoch_stages"), "epoch_stages")
    next_stages = EpochStages.from_payload(payload.get("next_epoch_stages"), "next_epoch_stages")
    phase = payload.get("phase")
    if not isinstance(phase, str) or not phase:
        phase = derive_phase(stages, block_height)
    event_payload = payload.get("active_confirmation_poc_event")
    event = None
    if isinstance(event_payload, Mapping):
        event = ConfirmationPocEvent(
            epoch_index=as_int(event_payload.get("epoch_index")),
            event_sequence=as_int(event_payload.get("event_sequence")),
            trigger_height=as_int(event_payload.get("trigger_height")),
            generation_start_height=as_int(event_payload.get("generation_start_height")),
            phase=_confirmation_phase(event_payload.get("phase")),
        )
    active = payload.get("is_confirmation_poc_active")
    if isinstance(active, str):
        active = active.strip().lower() == "true"
    return EpochInfo(
        block_height=block_height,
        latest_epoch_index=as_int(latest.get("index"), stages.epoch_index, what="latest_epoch"),
        latest_epoch_poc_start=as_int(latest.get("poc_start_block_height"), stages.poc_start),
        phase=phase,
        epoch_stages=stages,
        next_epoch_stages=next_stages,
        epoch_params=_flat_params(payload.get("epoch_params")),
        is_confirmation_poc_active=bool(active),
        confirmation_poc_event=event,
    )


@dataclass(frozen=True, slots=True)
class ChainStatus:
    """The parts of CometBFT ``/status`` (``/chain-rpc/status``) a client needs."""

    latest_block_height: int
    latest_block_time_ns: int
    chain_id: str = ""
    catching_up: bool = False


def parse_chain_status(payload: Any) -> ChainStatus:
    """Parse CometBFT ``/status`` (JSON-RPC envelope ``result`` optional)."""
    if not isinstance(payload, Mapping):
        raise GonkaPayloadError("chain-rpc/status", "expected a JSON object")
    result = payload.get("result", payload)
    sync = result.get("sync_info") if isinstance(result, Mapping) else None
    if not isinstance(sync, Mapping) or "latest_block_time" not in sync:
        raise GonkaPayloadError("chain-rpc/status", "missing result.sync_info.latest_block_time")
    node_info = result.get("node_info") or {}
    catching_up = sync.get("catching_up", False)
    network = node_info.get("network") if isinstance(node_info, Mapping) else None
    return ChainStatus(
        latest_block_height=as_int(sync.get("latest_block_height"), what="latest_block_height"),
        latest_block_time_ns=parse_rfc3339_ns(sync["latest_block_time"]),
        chain_id=network if isinstance(network, str) else "",
        catching_up=catching_up is True or catching_up == "true",
    )


_RFC3339 = re.compile(
    r"^(\d{4})-(\d{2})-(\d{2})[Tt ](\d{2}):(\d{2}):(\d{2})(?:\.(\d{1,9}))?"
    r"(?:([Zz])|([+-])(\d{2}):(\d{2}))$"
)


def parse_rfc3339_ns(text: str) -> int:
    """Unix nanoseconds of an RFC 3339 timestamp with up to 9 fractional digits (Go's format,
    which ``datetime.fromisoformat`` rejects on Python 3.10)."""
    match = _RFC3339.match(text.strip()) if isinstance(text, str) else None
    if match is None:
        raise GonkaPayloadError("timestamp", f"not an RFC 3339 time: {shown(text)}")
    year, month, day, hour, minute, second = (int(g) for g in match.groups()[:6])
    fraction = match.group(7) or ""
    seconds = calendar.timegm((year, month, day, hour, minute, second, 0, 0, 0))
    if match.group(9):  # explicit offset: local = UTC + offset
        offset = int(match.group(10)) * 3600 + int(match.group(11)) * 60
        seconds -= offset if match.group(9) == "+" else -offset
    return seconds * 1_000_000_000 + int(fraction.ljust(9, "0") or 0)
