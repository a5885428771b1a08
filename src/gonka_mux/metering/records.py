"""One usage record per request."""

from __future__ import annotations

import time as _time
import uuid
from dataclasses import asdict, dataclass, field, fields
from typing import Any

__all__ = ["RECORD_FIELDS", "UsageRecord"]


@dataclass(slots=True)
class UsageRecord:
    """What one request cost and how it went.

    Record a request once, when it finishes: the tokens are those of the answer the caller got.
    ``attempts`` counts the upstream tries; ``hedged`` marks a request that raced a hedge attempt
    and ``failed_over`` one that moved to another endpoint after a failure, so their extra attempts
    are visible without ever being counted as requests. Recording the same ``request_id`` again
    replaces the earlier record instead of adding one.

    ``reasoning_tokens`` is the part of ``completion_tokens`` spent reasoning, as OpenAI reports it
    (``completion_tokens_details.reasoning_tokens``): it is not added to the totals a second time.

    ``model`` is the model the caller asked for; ``served_model`` the one that answered when
    tiering or an alias changed it (``None``: the same). ``cost`` is filled in from the meter's
    prices when left ``None``. ``status`` is ``"ok"``, ``"error"``, ``"cancelled"`` or
    ``"interrupted"`` (a stream that broke or ended early after output began); ``error``
    holds a short description (an exception class and HTTP status, never a key).

    ``cache`` is ``"hit"`` for a reply served by the response cache (its tokens are 0: nothing
    went upstream; ``saved_tokens`` and ``saved_cost`` are what the original reply cost),
    ``"miss"`` for a cacheable request that went upstream, ``""`` when the cache was not asked.
    """

    model: str
    time: float = field(default_factory=_time.time)
    request_id: str = field(default_factory=lambda: uuid.uuid4().hex)
    # A caller key may be a gateway API key: keep it out of reprs and tracebacks.
    key: str | None = field(default=None, repr=False)
    session_id: str | None = None
    served_model: str | None = None
    tier: str | None = None
    tiering_reason: str | None = None
    endpoint: str | None = None
    attempts: int = 1
    prompt_tokens: int = 0
    completion_tokens: int = 0
    reasoning_tokens: int = 0
    latency: float | None = None
    ttft: float | None = None
    status: str = "ok"
    error: str | None = None
    cost: float | None = None
    hedged: bool = False
    failed_over: bool = False
    cache: str = ""
    saved_tokens: int = 0
    saved_cost: float | None = None

    @property
    def total_tokens(self) -> int:
        return self.prompt_tokens + self.completion_tokens

    @property
    def effective_model(self) -> str:
        """The model that served the request (``served_model``, else ``model``)."""
        return self.served_model or self.model

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> UsageRecord:
        return cls(**{name: data[name] for name in RECORD_FIELDS if name in data})


#: Field names in declaration order (the SQLite columns and the CSV header use this order).
RECORD_FIELDS: tuple[str, ...] = tuple(f.name for f in fields(UsageRecord))
