"""Gonka request signing, exactly as the chain verifies it.

For each attempt of a request to a Transfer Agent (TA) the client sends::

    Authorization:       base64(r || s)          64 bytes, low-S, no "Bearer " prefix
    X-Requester-Address: gonka1...               the developer account
    X-Timestamp:         <unix nanoseconds>      strictly increasing per process

where ``(r, s)`` is a deterministic (RFC 6979) ECDSA secp256k1 signature over
``sha256(message)`` and ``message`` is the UTF-8 of
``hex_lower(sha256(body_bytes)) + decimal(timestamp) + transfer_address``. ``body_bytes`` are
the exact bytes sent; the TA address is the participant's account address.

Signatures are deterministic, and the TA rejects an ``Authorization`` value it has seen before,
so every attempt (retries included) must be signed afresh with a new timestamp. :class:`GonkaAuth`
does this: it is an auth callable ``(request) -> request`` that httpx and httpx2 (openai 2.x and
3.x) call once per attempt, from inside the SDK's own retry loop.

TAs judge ``X-Timestamp`` against their chain's latest block time (60 s back, 30 s ahead on
mainnet), not wall time. :func:`gonka_auth_flow` wraps a :class:`GonkaAuth` into an httpx/httpx2
``Auth`` *flow* that, when a TA answers 400 "signature is too old / in the future", resyncs the
clock once (:class:`ChainClockSync`: to the HTTP ``Date`` of that very answer, or to
``/chain-rpc/status`` where a host exposes it) and resends the request re-signed with a new
timestamp, inside the same SDK attempt.

Two backends produce identical bytes: coincurve (libsecp256k1, ``pip install gonka-mux[fast]``,
about 30x faster) and python-ecdsa. ``backend="auto"`` picks coincurve when it is importable.
"""

from __future__ import annotations

import base64
import hashlib
import importlib
import logging
import threading
import time
from collections.abc import AsyncGenerator, Callable, Generator, Mapping, Sequence
from typing import TYPE_CHECKING, Any, Literal, Protocol

from .errors import GonkaConfigError, GonkaDiscoveryError, GonkaError, GonkaSigningError
from .keys import PrivateKey, load_private_key, requester_address, validate_address

if TYPE_CHECKING:
    from openai import AsyncOpenAI, OpenAI

__all__ = [
    "INTERNAL_HEADERS",
    "BackendName",
    "ChainClockSync",
    "GonkaAuth",
    "NanoClock",
    "RequestSigner",
    "SigningBackend",
    "available_backends",
    "default_clock",
    "gonka_auth_flow",
    "http_date_ns",
    "http_library_of",
    "is_clock_skew_error",
    "make_signed_client",
    "signing_message",
    "ssl_context_for",
]

logger = logging.getLogger("gonka_mux.gonka")

BackendName = Literal["auto", "coincurve", "ecdsa"]

# TA -> executor headers. A client that sends them switches the node into its executor path
# (or overrides the transfer address), which fails; GonkaAuth strips them from every request.
INTERNAL_HEADERS = (
    "X-Inference-Id",
    "X-Seed",
    "X-Transfer-Address",
    "X-TA-Signature",
    "X-Prompt-Hash",
    "X-Validator-Address",
    "X-Epoch-Id",
)


def signing_message(body: bytes, timestamp_ns: int, transfer_address: str) -> bytes:
    """The bytes the chain verifies: ``hex(sha256(body)) + str(timestamp) + transfer_address``."""
    return f"{hashlib.sha256(body).hexdigest()}{timestamp_ns}{transfer_address}".encode()


class SigningBackend(Protocol):
    """Signs a 32-byte digest; returns the 64-byte low-S ``r || s`` (RFC 6979 nonce)."""

    name: str

    def sign_digest(self, digest: bytes) -> bytes: ...


class _CoincurveBackend:
    """libsecp256k1 through coincurve: RFC 6979 nonces, and always the low-S form.

    The hot path calls libsecp256k1's ``ecdsa_sign`` + compact serialization directly through
    coincurve's cffi binding (no recovery id, two fewer allocations). Measured against the
    public ``sign_recoverable`` (coincurve 21, seven interleaved 1 s runs with
    ``bench/signing.py``'s ``rate``, shared 2-core machine): a median 5% more signatures per
    second (runs ranged from 0% to 20%), about 1 us of a signature's ~26 us; end to end
    (hashing, base64, the auth hook) the difference is smaller still. It is used only if it
    reproduces the public API's output at construction; otherwise the public API is used.
    """

    name = "coincurve"
    __slots__ = ("_ctx", "_ffi", "_key", "_lib", "_null", "_secret")

    def __init__(self, secret: bytes) -> None:
        # optional extra: coincurve ('fast'); this backend is built only when it is installed.
        import coincurve

        self._key = coincurve.PrivateKey(secret)
        self._secret = secret
        self._lib: Any = None
        try:  # optional extra: coincurve's private cffi layout, which may differ by version
            from coincurve._libsecp256k1 import ffi, lib
            from coincurve.context import GLOBAL_CONTEXT

            self._ffi, self._lib, self._ctx, self._null = ffi, lib, GLOBAL_CONTEXT.ctx, ffi.NULL
            probe = hashlib.sha256(b"gonka-mux self-check").digest()
            if self._sign_direct(probe) != self._sign_public(probe):
                self._lib = None
        except Exception:  # another coincurve layout: the public API is enough
            self._lib = None

    def _sign_public(self, digest: bytes) -> bytes:
        # compact recoverable encoding is r || s || recovery_id
        return bytes(self._key.sign_recoverable(digest, hasher=None)[:64])

    def _sign_direct(self, digest: bytes) -> bytes:
        # Buffers are allocated per call: cffi releases the GIL, so sharing them between
        # threads would mix signatures.
        ffi, lib, ctx = self._ffi, self._lib, self._ctx
        signature = ffi.new("secp256k1_ecdsa_signature *")
        if not lib.secp256k1_ecdsa_sign(
            ctx, signature, digest, self._secret, self._null, self._null
        ):
            raise GonkaSigningError("libsecp256k1 failed to sign")
        out = ffi.new("unsigned char[64]")
        lib.secp256k1_ecdsa_signature_serialize_compact(ctx, out, signature)
        return ffi.buffer(out, 64)[:]

    def sign_digest(self, digest: bytes) -> bytes:
        if self._lib is None:
            return self._sign_public(digest)
        return self._sign_direct(digest)

    def __repr__(self) -> str:
        return "<coincurve signing backend>"


class _EcdsaBackend:
    name = "ecdsa"
    __slots__ = ("_encode", "_key")

    def __init__(self, secret: bytes) -> None:
        # Lazy: python-ecdsa costs ~45 ms to import and is the fallback only when the optional
        # 'fast' extra (coincurve) is missing.
        import ecdsa
        from ecdsa.util import sigencode_string_canonize

        self._key = ecdsa.SigningKey.from_string(secret, curve=ecdsa.SECP256k1)
        self._encode = sigencode_string_canonize  # r || s with s folded to the low half

    def sign_digest(self, digest: bytes) -> bytes:
        return bytes(
            self._key.sign_digest_deterministic(
                digest, hashfunc=hashlib.sha256, sigencode=self._encode
            )
        )

    def __repr__(self) -> str:
        return "<python-ecdsa signing backend>"


def available_backends() -> tuple[str, ...]:
    """Names of the signing backends importable here, fastest first."""
    names = []
    for name in ("coincurve", "ecdsa"):
        try:
            __import__(name)
        except ImportError:
            continue
        names.append(name)
    return tuple(names)


def _make_backend(key: PrivateKey, backend: BackendName) -> SigningBackend:
    if backend == "auto":
        try:
            return _CoincurveBackend(key.secret_bytes())
        except ImportError:
            backend = "ecdsa"
    if backend == "coincurve":
        try:
            return _CoincurveBackend(key.secret_bytes())
        except ImportError:
            raise GonkaConfigError(
                "backend", "coincurve is not installed: pip install 'gonka-mux[fast]'"
            ) from None
    if backend == "ecdsa":
        try:
            return _EcdsaBackend(key.secret_bytes())
        except ImportError:
            raise GonkaConfigError("backend", "python-ecdsa is not installed") from None
    raise GonkaConfigError("backend", f"unknown backend {backend!r}; use auto, coincurve or ecdsa")


class RequestSigner:
    """Signs request bodies for one requester account.

    ``key`` is a :class:`PrivateKey`, a hex string, or ``None`` to read ``GONKA_PRIVATE_KEY`` /
    ``GONKA_PRIVATE_KEY_FILE``. ``address`` overrides the requester address (else
    ``GONKA_ADDRESS``, else the key's own address).
    """

    __slots__ = ("_backend", "_key", "address")

    def __init__(
        self,
        key: PrivateKey | str | None = None,
        *,
        backend: BackendName = "auto",
        address: str | None = None,
        environ: Mapping[str, str] | None = None,
    ) -> None:
        self._key = load_private_key(key, environ=environ)
        self._backend = _make_backend(self._key, backend)
        self.address = requester_address(self._key, address, environ=environ)

    @property
    def backend(self) -> str:
        """Name of the signing backend in use (``coincurve`` or ``ecdsa``)."""
        return self._backend.name

    @property
    def public_key(self) -> bytes:
        """The 33-byte compressed public key."""
        return self._key.public_key

    def sign_message(self, message: bytes) -> bytes:
        """64-byte low-S ``r || s`` over ``sha256(message)``."""
        return self._backend.sign_digest(hashlib.sha256(message).digest())

    def sign(self, body: bytes, timestamp_ns: int, transfer_address: str) -> str:
        """The ``Authorization`` value for ``body`` sent at ``timestamp_ns`` to that TA."""
        signature = self.sign_message(signing_message(body, timestamp_ns, transfer_address))
        return base64.b64encode(signature).decode("ascii")

    def headers(self, body: bytes, transfer_address: str, timestamp_ns: int) -> dict[str, str]:
        """The three signing headers for one attempt."""
        return {
            "Authorization": self.sign(body, timestamp_ns, transfer_address),
            "X-Requester-Address": self.address,
            "X-Timestamp": str(timestamp_ns),
        }

    def __repr__(self) -> str:
        return f"RequestSigner(address={self.address!r}, backend={self.backend!r})"

    __str__ = __repr__

    def __reduce__(self) -> tuple[object, ...]:
        raise TypeError("RequestSigner cannot be pickled (it holds a private key)")


class NanoClock:
    """Strictly increasing Unix-nanosecond timestamps, safe to share between threads.

    ``offset_ns`` is added to the local clock; set it from the chain's latest block time (see
    :meth:`sync_to`) when a TA answers "signature is in the future"/"too old", because the TA
    judges timestamps against chain time, not wall time.

    Between offset changes each value is at least the previous one plus 1 ns, whatever the
    local clock does. Moving the offset *back* deliberately lets the sequence step back with it:
    holding it up would keep every timestamp "in the future" at the TA until real time caught
    up. (Uniqueness still holds in practice: a replay needs the same body, TA and nanosecond.)
    """

    __slots__ = ("_last", "_lock", "_offset_ns", "_time_ns")

    def __init__(
        self, offset_seconds: float = 0.0, *, time_ns: Callable[[], int] = time.time_ns
    ) -> None:
        self._lock = threading.Lock()
        self._last = 0
        self._offset_ns = round(offset_seconds * 1e9)
        self._time_ns = time_ns

    def now_ns(self) -> int:
        """The next timestamp: local time plus offset, and strictly above the previous one."""
        with self._lock:
            value = self._time_ns() + self._offset_ns
            if value <= self._last:
                value = self._last + 1
            self._last = value
            return value

    __call__ = now_ns

    @property
    def offset_ns(self) -> int:
        return self._offset_ns

    @property
    def offset_seconds(self) -> float:
        return self._offset_ns / 1e9

    def set_offset(self, seconds: float) -> None:
        """Set the offset added to the local clock (positive: the chain is ahead of us)."""
        with self._lock:
            self._set_offset_locked(round(seconds * 1e9))

    def sync_to(self, reference_ns: int, *, local_ns: int | None = None) -> float:
        """Align to a reference clock (e.g. the chain's latest block time, in Unix ns) observed
        at local time ``local_ns`` (default: now). Returns the new offset in seconds."""
        observed_at = self._time_ns() if local_ns is None else local_ns
        with self._lock:
            self._set_offset_locked(reference_ns - observed_at)
            return self._offset_ns / 1e9

    def _set_offset_locked(self, offset_ns: int) -> None:
        if offset_ns < self._offset_ns:
            # Step back with the offset (see the class docstring) but no further.
            self._last = min(self._last, self._last + offset_ns - self._offset_ns)
        self._offset_ns = offset_ns

    def __repr__(self) -> str:
        return f"NanoClock(offset_seconds={self.offset_seconds:g})"


_default_clock: NanoClock | None = None
_default_clock_lock = threading.Lock()


def default_clock() -> NanoClock:
    """The process-wide clock shared by every :class:`GonkaAuth` built without one."""
    global _default_clock
    if _default_clock is None:
        with _default_clock_lock:
            if _default_clock is None:
                _default_clock = NanoClock()
    return _default_clock


class GonkaAuth:
    """An httpx/httpx2 auth callable that signs every attempt for one Transfer Agent.

    Pass it as ``auth=`` to ``openai.DefaultAsyncHttpxClient``/``DefaultHttpxClient`` (or any
    httpx/httpx2 client). The client calls it once per send, so each retry gets a fresh
    timestamp and signature. It signs the request's exact body bytes, replaces any
    ``Authorization`` (the SDK's ``Bearer`` placeholder) and removes Gonka's internal headers.
    """

    __slots__ = ("clock", "signer", "transfer_address")

    def __init__(
        self,
        signer: RequestSigner,
        transfer_address: str,
        clock: NanoClock | None = None,
    ) -> None:
        self.signer = signer
        self.transfer_address = validate_address(transfer_address, field="transfer_address")
        self.clock = clock if clock is not None else default_clock()

    def __call__(self, request: Any) -> Any:
        body = _request_body(request)
        timestamp = self.clock.now_ns()
        headers = request.headers
        for name in INTERNAL_HEADERS:
            if name in headers:
                del headers[name]
        headers["Authorization"] = self.signer.sign(body, timestamp, self.transfer_address)
        headers["X-Requester-Address"] = self.signer.address
        headers["X-Timestamp"] = str(timestamp)
        return request

    def __repr__(self) -> str:
        return f"GonkaAuth(signer={self.signer!r}, transfer_address={self.transfer_address!r})"


def _request_body(request: Any) -> bytes:
    """The exact body bytes of an httpx or httpx2 request, reading a sync stream if needed."""
    try:
        return bytes(request.content)
    except Exception as exc:  # httpx.RequestNotRead / httpx2.RequestNotRead
        if type(exc).__name__ != "RequestNotRead":
            raise
    try:
        return bytes(request.read())
    except Exception as exc:
        raise GonkaSigningError(
            "cannot sign this request: its body is an asynchronous stream that must be sent "
            "before it can be hashed. Send the body as bytes (JSON requests always are)."
        ) from exc


# --- clock resync: an auth flow that retries once after a timestamp rejection ----------------

# What TAs (and executors) answer when X-Timestamp is outside the window around chain time.
_SKEW_MARKERS = (b"signature is too old", b"signature is in the future", b"timestamp is too old")


def is_clock_skew_error(status: int, body: bytes | str) -> bool:
    """True for a TA's 400 "signature is too old" / "signature is in the future" (and the
    executor's "Request timestamp is too old")."""
    if status != 400:
        return False
    data = body.encode() if isinstance(body, str) else body
    lowered = data[:2000].lower()
    return any(marker in lowered for marker in _SKEW_MARKERS)


def node_base_url(url: str) -> str:
    """``http://host:8000`` from ``http://host:8000/v1/chat/completions`` (the node's root,
    where ``/chain-rpc/status`` is served)."""
    head, sep, _ = url.partition("/v1/")
    if sep:
        return head.rstrip("/")
    scheme, _, rest = url.partition("://")
    return f"{scheme}://{rest.split('/', 1)[0]}"


def http_date_ns(value: str | None) -> int | None:
    """Unix nanoseconds of an HTTP ``Date`` header (RFC 7231, whole seconds), or None."""
    if not value:
        return None
    # Lazy: email.utils adds ~7 ms to `import gonka_mux.gonka.signing` (~27 ms), which key-only
    # users (RequestSigner without openai) pay otherwise.
    import email.utils

    try:
        when = email.utils.parsedate_to_datetime(value.strip())
    except (TypeError, ValueError, IndexError):
        return None
    if when is None or when.tzinfo is None:
        return None
    return int(when.timestamp()) * 1_000_000_000


class ChainClockSync:
    """Aligns a :class:`NanoClock` to a TA's time after a timestamp rejection.

    TAs judge ``X-Timestamp`` against their chain's latest block time. Hosts do not expose chain
    time by default (``/chain-rpc/`` is closed on hosts since v0.2.8), but every answer carries
    the host's clock in its HTTP ``Date`` header, and a host's clock follows the chain's block
    times within a block or two. So :meth:`resync` / :meth:`aresync`:

    1. read the ``Date`` of the very 400 that complained: when it differs from our clock by
       more than ``date_tolerance`` seconds, *we* are off, and the clock moves to it;
    2. otherwise (our clock agrees with the host's: the chain itself lags, e.g. it stalled), or
       with no ``Date``, read ``/chain-rpc/status`` (``latest_block_time``) from the node that
       answered, then from ``sources``, where it answers; a host that answers 404 there is
       remembered and not asked again.

    Concurrent rejections share one resync: one done less than ``min_interval`` seconds ago
    counts as done (the caller just re-signs with the current offset). ``last_source`` says what
    the last successful resync used (``"date"`` or ``"chain-rpc"``).
    """

    __slots__ = (
        "_closed",
        "_last_sync",
        "_lock",
        "_pending",
        "clock",
        "date_tolerance",
        "last_source",
        "min_interval",
        "sources",
        "syncs",
        "timeout",
    )

    def __init__(
        self,
        clock: NanoClock,
        *,
        sources: Sequence[str] = (),
        min_interval: float = 1.0,
        timeout: float = 5.0,
        date_tolerance: float = 3.0,
    ) -> None:
        self.clock = clock
        self.sources = tuple(s.rstrip("/") for s in sources)
        self.min_interval = min_interval
        self.timeout = timeout
        self.date_tolerance = date_tolerance
        self.syncs = 0  # successful resyncs (for stats and tests)
        self.last_source: str | None = None
        self._closed: set[str] = set()  # nodes whose /chain-rpc/ answered 404 (closed)
        self._last_sync = float("-inf")
        self._lock = threading.Lock()  # one sync read at a time (sync clients)
        self._pending: Any = None  # the async read in progress, awaited by concurrent callers

    def _targets(self, request_url: str) -> list[str]:
        targets = dict.fromkeys([node_base_url(request_url), *self.sources])
        return [t for t in targets if t not in self._closed]

    def _recent(self) -> bool:
        return time.monotonic() - self._last_sync < self.min_interval

    def _record(self, source: str, before: float, after: float) -> bool:
        self._last_sync = time.monotonic()
        self.syncs += 1
        self.last_source = source
        logger.info(
            "Gonka clock resynced to the TA's time (%s): offset %+.3f s (was %+.3f s)",
            "its HTTP Date" if source == "date" else "/chain-rpc/status",
            after,
            before,
        )
        return True

    def _apply_chain(self, status: Any, observed_at: int) -> bool:
        before = self.clock.offset_seconds
        after = self.clock.sync_to(status.latest_block_time_ns, local_ns=observed_at)
        return self._record("chain-rpc", before, after)

    def _apply_date(self, date: str | None, observed_at: int | None) -> bool:
        """Move to the host's clock when we disagree with it by more than the tolerance."""
        host_ns = http_date_ns(date)
        if host_ns is None:
            return False
        local = time.time_ns() if observed_at is None else observed_at
        # Date has whole seconds: the host's clock was somewhere in [Date, Date + 1 s)
        offset_ns = host_ns + 500_000_000 - local
        before = self.clock.offset_seconds
        if abs(offset_ns / 1e9 - before) <= self.date_tolerance:
            return False  # we agree with the host: the chain lags, Date cannot help
        after = self.clock.sync_to(host_ns + 500_000_000, local_ns=local)
        return self._record("date", before, after)

    def resync(
        self, request_url: str, date: str | None = None, observed_at: int | None = None
    ) -> bool:
        """Resync after a rejection from ``request_url`` whose ``Date`` header was ``date``
        (received at local time ``observed_at`` ns); False when nothing could help."""
        if self._recent():
            return True
        with self._lock:
            if self._recent():  # another thread just did it
                return True
            return self._apply_date(date, observed_at) or self._resync_chain(request_url)

    def _chain_steps(self, request_url: str) -> Generator[str, Any, bool]:
        """One body for both faces: yields each node to read the chain time from, gets its
        status sent back (or the read's ``GonkaError`` thrown in), returns whether it synced."""
        for target in self._targets(request_url):
            started = time.time_ns()
            try:
                status = yield target
            except GonkaError as exc:
                self._chain_unreadable(target, exc, GonkaDiscoveryError)
                continue
            return self._apply_chain(status, (started + time.time_ns()) // 2)
        self._give_up(request_url)
        return False

    def _resync_chain(self, request_url: str) -> bool:
        # Lazy: discovery (with proofs, epochs) adds ~23 ms to `import gonka_mux.gonka.signing`.
        from .discovery import fetch_chain_status

        steps = self._chain_steps(request_url)
        try:
            target = next(steps)
            while True:
                try:
                    status = fetch_chain_status(target, timeout=self.timeout)
                except GonkaError as exc:
                    target = steps.throw(exc)
                else:
                    target = steps.send(status)
        except StopIteration as done:
            return bool(done.value)

    async def aresync(
        self, request_url: str, date: str | None = None, observed_at: int | None = None
    ) -> bool:
        """Async twin of :meth:`resync`; concurrent callers on one loop share one read."""
        if self._recent():
            return True
        if self._apply_date(date, observed_at):
            return True
        # Lazy: asyncio adds ~28 ms to `import gonka_mux.gonka.signing`; only async resync uses it.
        import asyncio

        loop = asyncio.get_running_loop()
        pending = self._pending
        if pending is not None and not pending.done() and pending.get_loop() is loop:
            return bool(await asyncio.shield(pending))
        future = loop.create_future()
        self._pending = future
        try:
            ok = await self._aresync_chain(request_url)
        except BaseException:
            future.set_result(False)
            raise
        finally:
            if self._pending is future:
                self._pending = None
        future.set_result(ok)
        return ok

    async def _aresync_chain(self, request_url: str) -> bool:
        # Lazy: discovery adds ~23 ms to `import gonka_mux.gonka.signing` (see _resync_chain).
        from .discovery import afetch_chain_status

        steps = self._chain_steps(request_url)
        try:
            target = next(steps)
            while True:
                try:
                    status = await afetch_chain_status(target, timeout=self.timeout)
                except GonkaError as exc:
                    target = steps.throw(exc)
                else:
                    target = steps.send(status)
        except StopIteration as done:
            return bool(done.value)

    def _chain_unreadable(self, target: str, exc: Exception, discovery_error: type) -> None:
        status = getattr(exc, "status_code", None) if isinstance(exc, discovery_error) else None
        if status == 404:
            self._closed.add(target)  # closed, as on every host since v0.2.8: do not ask again
            logger.debug("%s does not expose /chain-rpc/ (404)", target)
        else:
            logger.debug("chain time unreadable from %s: %s", target, exc)

    def _give_up(self, request_url: str) -> None:
        logger.warning(
            "%s rejected the request timestamp, and resyncing could not help: the host's own "
            "clock (HTTP Date) agrees with ours within %g s, and no host exposes its chain time "
            "(/chain-rpc/ is closed by default). The chain is probably lagging or stalled; "
            "other TAs are tried.",
            node_base_url(request_url),
            self.date_tolerance,
        )

    def __repr__(self) -> str:
        return f"ChainClockSync(clock={self.clock!r}, syncs={self.syncs})"


_flow_classes: dict[str, type] = {}
_flow_lock = threading.Lock()


def _flow_class(library: str) -> type:
    """The ``Auth`` subclass for ``httpx`` or ``httpx2`` (each has its own ``Auth`` base that
    its clients check with ``isinstance``), built once, on first use."""
    cls = _flow_classes.get(library)
    if cls is not None:
        return cls
    with _flow_lock:
        cls = _flow_classes.get(library)
        if cls is None:
            module = importlib.import_module(library)
            cls = type(
                "GonkaAuthFlow",
                (_GonkaAuthFlowMixin, module.Auth),
                {"__module__": __name__, "__qualname__": f"GonkaAuthFlow[{library}]"},
            )
            _flow_classes[library] = cls
    return cls


class _GonkaAuthFlowMixin:
    """Signs each request; on a timestamp rejection resyncs the clock once and resends it
    re-signed. Other responses are handed back unread, so streams stay streams."""

    requires_request_body = True
    requires_response_body = False

    def __init__(self, auth: GonkaAuth, clock_sync: ChainClockSync | None = None) -> None:
        self.auth = auth
        self.clock_sync = clock_sync

    def sync_auth_flow(self, request: Any) -> Generator[Any, Any, None]:
        request.read()
        response = yield self.auth(request)
        sync = self.clock_sync
        if sync is None or response.status_code != 400:
            return
        observed_at = time.time_ns()
        response.read()
        date = response.headers.get("date")
        if is_clock_skew_error(400, response.content) and sync.resync(
            str(request.url), date, observed_at
        ):
            yield self.auth(request)  # a new timestamp, so a new signature

    async def async_auth_flow(self, request: Any) -> AsyncGenerator[Any, Any]:
        await request.aread()
        response = yield self.auth(request)
        sync = self.clock_sync
        if sync is None or response.status_code != 400:
            return
        observed_at = time.time_ns()
        await response.aread()
        date = response.headers.get("date")
        if is_clock_skew_error(400, response.content) and await sync.aresync(
            str(request.url), date, observed_at
        ):
            yield self.auth(request)

    def __repr__(self) -> str:
        return f"GonkaAuthFlow({self.auth!r}, clock_sync={self.clock_sync is not None})"


def gonka_auth_flow(
    auth: GonkaAuth, library: str = "httpx", clock_sync: ChainClockSync | bool | None = True
) -> Any:
    """Wrap ``auth`` as an ``Auth`` flow of ``library`` (``"httpx"`` or ``"httpx2"``: the one
    the HTTP client belongs to). ``clock_sync=True`` resyncs ``auth.clock`` from the answering
    node on a timestamp rejection; pass a :class:`ChainClockSync` to share one between clients
    or to add fallback sources; ``None``/``False`` only signs."""
    if library not in ("httpx", "httpx2"):
        raise GonkaConfigError("library", f"expected 'httpx' or 'httpx2', got {library!r}")
    if clock_sync is True:
        clock_sync = ChainClockSync(auth.clock)
    return _flow_class(library)(auth, clock_sync or None)


def ssl_context_for(async_: bool = True) -> Any:
    """A TLS context made the way the openai SDK's default HTTP client makes its own (CA
    bundle, ``SSL_CERT_FILE``...), to share between many signed clients."""
    # Lazy: openai costs ~390 ms to import; signing and keys are used without it.
    import openai

    client_class = openai.DefaultAsyncHttpxClient if async_ else openai.DefaultHttpxClient
    module = importlib.import_module(http_library_of(client_class))
    return module.create_ssl_context()


def http_library_of(client_class: type) -> str:
    """``"httpx2"`` or ``"httpx"``: the package an HTTP client class comes from."""
    for base in client_class.__mro__:
        root = base.__module__.partition(".")[0]
        if root in ("httpx", "httpx2"):
            return root
    return "httpx"


def _base_url(target: Any) -> tuple[str, str | None]:
    if isinstance(target, str):
        url = target.rstrip("/")
        return (url if url.endswith("/v1") else f"{url}/v1"), None
    return str(target.base_url), getattr(target, "address", None)


def make_signed_client(
    participant_or_base_url: Any,
    transfer_address: str | None = None,
    signer: RequestSigner | PrivateKey | None = None,
    *,
    async_: bool = True,
    timeout: float = 60.0,
    max_retries: int = 0,
    clock: NanoClock | None = None,
    default_headers: Mapping[str, str] | None = None,
    resync_clock: bool | ChainClockSync = False,
    ssl_context: Any = None,
) -> AsyncOpenAI | OpenAI:
    """An ``openai.AsyncOpenAI`` (or ``OpenAI`` with ``async_=False``) that signs for one TA.

    ``participant_or_base_url`` is a :class:`~gonka_mux.gonka.discovery.GonkaParticipant` (its
    ``base_url`` and, unless ``transfer_address`` is given, its address are used) or a URL
    (``/v1`` is appended when missing). ``signer`` defaults to one built from the environment.
    The SDK's own default HTTP client is kept and signing is hooked into it as ``auth=``.

    ``resync_clock=True`` (or a shared :class:`ChainClockSync`) makes the hook an auth flow that
    answers a 400 "signature is too old / in the future" by syncing the clock to the node's
    chain time once and resending the request re-signed (see :func:`gonka_auth_flow`).

    ``ssl_context`` (from :func:`ssl_context_for`) is shared instead of building one per
    client: building an HTTP client costs 20-50 ms, nearly all of it loading CA certificates.
    """
    # Lazy: openai costs ~390 ms to import; signing and keys are used without it.
    import openai

    base_url, participant_address = _base_url(participant_or_base_url)
    address = transfer_address or participant_address
    if not address:
        raise GonkaConfigError(
            "transfer_address",
            "give the TA's account address (the participant's address) when passing a URL",
        )
    if signer is None or isinstance(signer, PrivateKey):
        signer = RequestSigner(signer)
    signing = GonkaAuth(signer, address, clock)
    client_class = openai.DefaultAsyncHttpxClient if async_ else openai.DefaultHttpxClient
    auth: Any = signing
    if resync_clock:
        sync = resync_clock if isinstance(resync_clock, ChainClockSync) else None
        auth = gonka_auth_flow(signing, http_library_of(client_class), sync or True)
    common: dict[str, Any] = {
        "api_key": "gonka",  # unused: GonkaAuth replaces the Authorization header
        "base_url": base_url,
        "timeout": timeout,
        "max_retries": max_retries,
        "default_headers": dict(default_headers or {}),
    }
    options: dict[str, Any] = {"auth": auth, "timeout": timeout}
    if ssl_context is not None:
        options["verify"] = ssl_context
    http_client = client_class(**options)
    if async_:
        return openai.AsyncOpenAI(http_client=http_client, **common)
    return openai.OpenAI(http_client=http_client, **common)
