"""What one request carries through the pipeline: its context, and the hook protocol.

Extensions and features read and annotate :class:`RequestContext` in their ``before`` and
``after`` hooks; a feature keeps its own per-request data in typed slots
(``ctx.get(slot)`` / ``ctx.set(slot, value)``, see :mod:`gonka_mux.features`).
"""

from __future__ import annotations

import math
import time
import uuid
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol, TypeVar

from .features import Slot

if TYPE_CHECKING:
    from .endpoint import Endpoint
    from .settings import CallOptions

__all__ = ["CHAT", "COMPLETIONS", "EMBEDDINGS", "Extension", "RequestContext", "RequestKind"]

T = TypeVar("T")


class RequestContext:
    """Everything known about one request; extensions read and annotate it."""

    __slots__ = (
        "attempts",
        "caller",
        "deadline_at",
        "endpoint",
        "error",
        "extras",
        "failed_over",
        "finish_reason",
        "hedged",
        "hide_usage_chunk",
        "kind",
        "model",
        "options",
        "params",
        "request_id",
        "requested_model",
        "response",
        "slots",
        "status",
        "stream",
        "stream_message",
        "t_first_byte",
        "t_start",
        "upstream_model",
        "usage",
    )

    def __init__(self, kind: str, params: dict[str, Any], options: CallOptions, stream: bool):
        self.request_id = uuid.uuid4().hex
        self.kind = kind
        self.params = params
        self.options = options
        self.stream = stream
        self.requested_model = params.get("model")
        self.model = self.requested_model
        self.caller = options.caller
        self.t_start = time.monotonic()
        self.deadline_at = math.inf
        self.t_first_byte: float | None = None
        self.attempts: list[Any] = []
        self.endpoint: Endpoint | None = None
        self.upstream_model: str | None = None
        self.usage: Any = None
        self.status = "pending"
        self.error: BaseException | None = None
        self.hedged = False
        self.failed_over = False
        self.response: Any = None
        # a stream's assembled reply and finish reason, once it has ended
        self.stream_message: dict[str, Any] | None = None
        self.finish_reason: str | None = None
        # the core asked upstream for a usage chunk the caller did not ask for
        self.hide_usage_chunk = False
        # features' typed per-request data (gonka_mux.features.Slot -> value)
        self.slots: dict[Slot[Any], Any] = {}
        # free-form notes for your own extensions (the package's features use slots)
        self.extras: dict[str, Any] = {}

    def get(self, slot: Slot[T]) -> T | None:
        """A feature's data about this request (None when it has set none)."""
        return self.slots.get(slot)  # type: ignore[no-any-return]

    def set(self, slot: Slot[T], value: T) -> None:
        self.slots[slot] = value

    @property
    def latency(self) -> float:
        return time.monotonic() - self.t_start

    @property
    def ttfb(self) -> float | None:
        return None if self.t_first_byte is None else self.t_first_byte - self.t_start


class Extension(Protocol):
    """A before/after hook around every request (sessions, tiering, limits, metering)."""

    async def before(self, ctx: RequestContext) -> None: ...

    async def after(self, ctx: RequestContext) -> None: ...


@dataclass(frozen=True)
class RequestKind:
    name: str
    path: str


CHAT = RequestKind("chat", "/chat/completions")
COMPLETIONS = RequestKind("completions", "/completions")
EMBEDDINGS = RequestKind("embeddings", "/embeddings")
