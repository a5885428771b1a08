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

Private addresses (SSRF guard): with ``allow_private=False`` (what the gateway uses), the host is
resolved at delivery time and the POST is refused when **any** address it resolves to is
loopback, private, link-local, multicast, reserved or unspecified (IPv4, IPv6, IPv4-mapped,
6to4, Teredo and NAT64 ``64:ff9b::/96`` forms are unwrapped first). The connection then goes to
the address that was checked (the URL is rewritten to the IP; ``Host`` and the TLS SNI and
certificate name stay the original host), so a second DNS answer cannot redirect it. Numeric
hosts are parsed the way the OS resolver does (``socket.inet_aton``: ``2130706433``,
``0x7f000001``, ``127.1``, ``0``).
"""

from __future__ import annotations

import asyncio
import email.utils
import ipaddress
import json
import logging
import socket
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
    "PrivateAddressError",
    "WebhookSender",
    "build_payload",
    "check_webhook_url",
    "classify_status",
    "is_public_address",
    "parse_ip_host",
    "redact_url",
    "resolve_public",
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


class PrivateAddressError(ValueError):
    """A webhook URL whose host is (or resolves to) a loopback/private/reserved address."""


_NAT64 = ipaddress.ip_network("64:ff9b::/96")
_NAT64_LOCAL = ipaddress.ip_network("64:ff9b:1::/48")
IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address


def parse_ip_host(host: str) -> IPAddress | None:
    """``host`` as an IP address when it is one, parsed as the OS resolver parses it.

    Besides dotted quads and IPv6 this accepts what ``inet_aton`` does (``2130706433``,
    ``0x7f000001``, ``0177.1``, ``127.1``, ``0``): those all reach an address without DNS.
    None for a DNS name."""
    host = host.strip()
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    host = host.split("%", 1)[0]  # an IPv6 zone id
    try:
        return ipaddress.ip_address(host)
    except ValueError:
        pass
    if not host or any(c.isspace() for c in host):
        return None
    try:
        return ipaddress.IPv4Address(socket.inet_aton(host.rstrip(".")))
    except (OSError, ValueError):
        return None


def is_public_address(address: IPAddress) -> bool:
    """True for a globally routable unicast address; False for loopback, private, link-local,
    multicast, reserved, unspecified, and for IPv6 forms that embed such an IPv4 address."""
    if isinstance(address, ipaddress.IPv6Address):
        if address in _NAT64:  # well-known NAT64 prefix: what counts is the IPv4 address inside
            return is_public_address(ipaddress.IPv4Address(int(address) & 0xFFFFFFFF))
        embedded: ipaddress.IPv4Address | None = address.ipv4_mapped
        if embedded is None and address.sixtofour is not None:
            embedded = address.sixtofour
        if embedded is None and address.teredo is not None:
            embedded = address.teredo[1]
        if embedded is not None and not is_public_address(embedded):
            return False
        if address in _NAT64_LOCAL:
            return False
    return not (
        not address.is_global
        or address.is_loopback
        or address.is_private
        or address.is_link_local
        or address.is_multicast
        or address.is_reserved
        or address.is_unspecified
    )


def _host_port(url: str) -> tuple[str, int]:
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ValueError(f"webhook_url must be an absolute http(s) URL, got {redact_url(url)!r}")
    port = parts.port or (443 if parts.scheme == "https" else 80)
    return parts.hostname, port


def check_webhook_url(url: str, *, allow_private: bool = False) -> None:
    """The check at submission: a valid absolute http(s) URL, and unless ``allow_private``, not
    a literal private address nor ``localhost``. DNS names are checked again when delivered
    (:func:`resolve_public`). Raises :class:`ValueError` (:class:`PrivateAddressError`)."""
    try:
        host, _port = _host_port(url)
    except ValueError as exc:
        if "webhook_url" in str(exc):
            raise
        raise ValueError(f"webhook_url is not a valid URL: {exc}") from None
    if allow_private:
        return
    name = host.lower().rstrip(".")
    if name == "localhost" or name.endswith(".localhost") or name == "":
        raise PrivateAddressError("webhook_url points at localhost")
    address = parse_ip_host(host)
    if address is not None and not is_public_address(address):
        raise PrivateAddressError("webhook_url points at a private or loopback address")


async def resolve_public(host: str, port: int) -> list[IPAddress]:
    """Every address ``host`` resolves to; :class:`PrivateAddressError` if any is not public
    (one private answer is enough: a client may pick any of them). ``OSError`` when it does
    not resolve."""
    literal = parse_ip_host(host)
    if literal is not None:
        addresses: list[IPAddress] = [literal]
    else:
        infos = await asyncio.get_running_loop().getaddrinfo(
            host, port, type=socket.SOCK_STREAM, proto=socket.IPPROTO_TCP
        )
        addresses = []
        for _family, _type, _proto, _canon, sockaddr in infos:
            address = ipaddress.ip_address(str(sockaddr[0]).split("%", 1)[0])
            if address not in addresses:
                addresses.append(address)
        if not addresses:
            raise OSError(f"{host!r} did not resolve to any address")
    for address in addresses:
        if not is_public_address(address):
            raise PrivateAddressError(
                "the webhook host resolves to a private, loopback or reserved address, which "
                "this runner does not call (allow_private_webhooks is off)"
            )
    return addresses


def _pinned(url: str, address: IPAddress) -> tuple[str, dict[str, str], dict[str, Any]]:
    """``url`` rewritten to connect to ``address``; the Host header and TLS name stay the
    original host (so virtual hosts and certificate checks work)."""
    parts = urlsplit(url)
    host = parts.hostname or ""
    literal = f"[{address}]" if address.version == 6 else str(address)
    netloc = literal if parts.port is None else f"{literal}:{parts.port}"
    host_header = f"[{host}]" if ":" in host else host
    if parts.port is not None:
        host_header = f"{host_header}:{parts.port}"
    extensions: dict[str, Any] = {}
    if parts.scheme == "https" and parse_ip_host(host) is None:
        extensions["sni_hostname"] = host
    rewritten = urlunsplit((parts.scheme, netloc, parts.path or "/", parts.query, ""))
    return rewritten, {"Host": host_header}, extensions


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

    def __init__(
        self, client: httpx.AsyncClient, policy: DeliveryPolicy, *, allow_private: bool = True
    ) -> None:
        self._client = client
        self._policy = policy
        self.allow_private = allow_private

    async def send(self, url: str, secret: Secret, delivery: Delivery) -> AttemptResult:
        # Lazy: httpx adds ~50 ms to importing the Multiplexer (openai 3 uses httpx2), which
        # imports this module through the jobs feature; only a sent webhook needs it.
        import httpx

        body = delivery.body.encode("utf-8")
        headers = webhook_headers(
            secret, body, delivery_id=delivery.id, event=delivery.event, timestamp=int(time.time())
        )
        extensions: dict[str, Any] = {}
        if not self.allow_private:
            try:
                host, port = _host_port(url)
                addresses = await asyncio.wait_for(resolve_public(host, port), self._policy.timeout)
            except PrivateAddressError as exc:
                return AttemptResult("failed", None, str(exc))
            except ValueError as exc:
                return AttemptResult("failed", None, _scrub(f"unsupported URL: {exc}", secret))
            except (OSError, asyncio.TimeoutError) as exc:
                return AttemptResult(
                    "retry", None, f"could not resolve the webhook host: {type(exc).__name__}"
                )
            url, pinned_headers, extensions = _pinned(url, addresses[0])
            headers = {**headers, **pinned_headers}
        try:
            async with self._client.stream(
                "POST",
                url,
                content=body,
                headers=headers,
                timeout=self._policy.timeout,
                extensions=extensions or None,
                follow_redirects=False,
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
