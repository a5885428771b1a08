"""One webhook POST at a time: the retry policy, the payload, and how a response is judged.

The schedule of retries is persisted (attempt count and next attempt time live in the job store),
so a restart continues a delivery's backoff where it stopped instead of starting over. The delays
come from a tenacity wait strategy: by default ``wait_exponential(initial, max_delay) +
wait_random(0, jitter)``, or any ``tenacity.wait_*`` value you pass as ``wait=``.

Judging a response:

- 2xx: delivered.
- 408, 429 and 5xx, connection errors and timeouts: retried (``Retry-After`` is honoured, up to
  ``max_delay``), until ``max_attempts`` POSTs were made; then the delivery is marked failed.
- any other status (3xx: redirects are not followed; 4xx): a permanent failure, marked failed at
  once. Fix the receiver, then submit again.
"""

from __future__ import annotations

import email.utils
import json
import logging
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal
from urllib.parse import urlsplit, urlunsplit

import tenacity

from gonka_mux.webhooks.signing import Secret, webhook_headers

if TYPE_CHECKING:
    import httpx

    from gonka_mux.webhooks.store import Delivery, Job

__all__ = [
    "EVENT_JOB_COMPLETED",
    "EVENT_JOB_FAILED",
    "AttemptResult",
    "DeliveryPolicy",
    "WebhookSender",
    "build_payload",
    "classify_status",
    "redact_url",
]

logger = logging.getLogger("gonka_mux.webhooks")

EVENT_JOB_COMPLETED = "job.completed"
EVENT_JOB_FAILED = "job.failed"

Outcome = Literal["delivered", "retry", "failed"]

_RETRYABLE_4XX = frozenset({408, 429})
_ERROR_SNIPPET = 200


@dataclass(frozen=True)
class DeliveryPolicy:
    """How hard to try: ``max_attempts`` POSTs in all, exponential backoff between them.

    The delay after attempt ``n`` is ``min(initial * 2**(n-1), max_delay) + uniform(0, jitter)``
    seconds, unless ``wait`` (any tenacity wait strategy, e.g. ``tenacity.wait_fixed(0.1)``) is
    given. ``timeout`` bounds each POST (connect, write and read).
    """

    max_attempts: int = 12
    initial: float = 1.0
    max_delay: float = 1800.0
    jitter: float = 1.0
    timeout: float = 10.0
    wait: Any = None

    def __post_init__(self) -> None:
        if isinstance(self.max_attempts, bool) or not isinstance(self.max_attempts, int):
            raise ValueError(f"max_attempts must be an integer >= 1, got {self.max_attempts!r}")
        if self.max_attempts < 1:
            raise ValueError(f"max_attempts must be an integer >= 1, got {self.max_attempts!r}")
        for name in ("initial", "max_delay", "jitter", "timeout"):
            value = getattr(self, name)
            if not isinstance(value, (int, float)) or value < 0:
                raise ValueError(f"{name} must be a number >= 0, got {value!r}")
        if self.timeout <= 0:
            raise ValueError(f"timeout must be > 0 seconds, got {self.timeout!r}")
        if self.wait is not None and not callable(self.wait):
            raise ValueError("wait must be a tenacity wait strategy (a callable)")
        if self.wait is None:
            strategy = tenacity.wait_exponential(multiplier=self.initial, max=self.max_delay)
            if self.jitter:
                strategy = strategy + tenacity.wait_random(0, self.jitter)
            object.__setattr__(self, "wait", strategy)

    def delay_for(self, attempt_number: int, retry_after: float | None = None) -> float:
        """Seconds to wait after attempt ``attempt_number`` (1-based) failed."""
        state = tenacity.RetryCallState(retry_object=None, fn=None, args=(), kwargs={})  # type: ignore[arg-type]
        state.attempt_number = attempt_number
        delay = float(self.wait(state))
        if retry_after is not None:
            delay = max(delay, min(retry_after, self.max_delay))
        return max(0.0, delay)


@dataclass(frozen=True)
class AttemptResult:
    """What one POST came to."""

    outcome: Outcome
    status_code: int | None = None
    error: str | None = None
    retry_after: float | None = None


def classify_status(status_code: int) -> Outcome:
    """2xx delivered; 408/429/5xx retried; anything else failed for good."""
    if 200 <= status_code < 300:
        return "delivered"
    if status_code in _RETRYABLE_4XX or status_code >= 500:
        return "retry"
    return "failed"


def redact_url(url: str) -> str:
    """The URL without credentials, query or fragment (they may hold tokens): safe to log."""
    try:
        parts = urlsplit(url)
        host = parts.hostname or ""
        if parts.port is not None:
            host = f"{host}:{parts.port}"
        return urlunsplit((parts.scheme, host, parts.path, "", ""))
    except ValueError:
        return "<unparseable url>"


def _retry_after(value: str | None, now: float) -> float | None:
    if not value:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return max(0.0, when.timestamp() - now)


def build_payload(job: Job, *, delivery_id: str, event: str, created: float) -> str:
    """The JSON body announcing a finished job (frozen once, resent as is on every retry)."""
    return json.dumps(
        {
            "id": delivery_id,
            "type": event,
            "created": int(created),
            "job": job.to_public_dict(),
        },
        separators=(",", ":"),
        ensure_ascii=False,
    )


def _scrub(text: str, secret: Secret) -> str:
    """Belt and braces: no error text we keep or log may carry the secret."""
    value = secret.reveal()
    return text.replace(value, "**********") if value in text else text


class WebhookSender:
    """Makes one signed POST of a delivery with an ``httpx.AsyncClient`` and judges the answer."""

    def __init__(self, client: httpx.AsyncClient, policy: DeliveryPolicy) -> None:
        self._client = client
        self._policy = policy

    async def send(self, url: str, secret: Secret, delivery: Delivery) -> AttemptResult:
        # Lazy: httpx adds ~50 ms to importing the Multiplexer (openai 3 uses httpx2), which
        # imports this module through the jobs feature; only a sent webhook needs it.
        import httpx

        body = delivery.body.encode("utf-8")
        headers = webhook_headers(
            secret, body, delivery_id=delivery.id, event=delivery.event, timestamp=int(time.time())
        )
        try:
            async with self._client.stream(
                "POST", url, content=body, headers=headers, timeout=self._policy.timeout
            ) as response:
                status = response.status_code
                outcome = classify_status(status)
                if outcome == "delivered":
                    return AttemptResult("delivered", status)
                snippet = await _read_snippet(response)
                error = f"HTTP {status} from the receiver" + (f": {snippet}" if snippet else "")
                retry_after = _retry_after(response.headers.get("retry-after"), time.time())
                return AttemptResult(outcome, status, _scrub(error, secret), retry_after)
        except httpx.UnsupportedProtocol as exc:
            return AttemptResult("failed", None, _scrub(f"unsupported URL: {exc}", secret))
        except httpx.TimeoutException as exc:
            text = f"{type(exc).__name__}: no answer within {self._policy.timeout:g}s"
            return AttemptResult("retry", None, _scrub(text, secret))
        except httpx.HTTPError as exc:
            text = f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
            return AttemptResult("retry", None, _scrub(text, secret))


async def _read_snippet(response: httpx.Response) -> str:
    """The start of an error response body, to show in ``last_error`` (never the whole body)."""
    chunks = bytearray()
    try:
        async for chunk in response.aiter_bytes():
            chunks.extend(chunk)
            if len(chunks) >= _ERROR_SNIPPET:
                break
    except Exception:  # the status already tells the story; a broken body is not worse news
        return ""
    text = bytes(chunks[:_ERROR_SNIPPET]).decode("utf-8", "replace")
    return " ".join(text.split())
