"""Follow Gonka epochs: poll the chain's epoch state and swap the signed endpoints at the switch.

A participant set becomes effective at its epoch's ``set_new_validators`` height. The manager
polls the small ``GET /v1/epochs/latest`` (every ``interval`` seconds, 30 by default, never more
often than ``min_interval`` per source: nodes rate-limit ``/v1`` to 10 requests a minute), and:

* between ``poc_validation_end`` and the switch, *prefetches* the next epoch's participants
  (``/v1/epochs/N+1/participants``) and builds their clients, so the swap itself is a pointer
  change;
* once ``block_height`` reaches the switch height, swaps the group with
  ``mux.replace_endpoints``: requests in flight finish on the old endpoints, new requests go to
  the new set, nothing fails because of the swap; participants that stay keep their endpoint
  (latency and health history);
* in a PoC phase (or a confirmation PoC) reports the phase and scales the Gonka endpoints'
  weights by ``poc_weight_factor``, so traffic shifts toward brokers and other providers in the
  same pools, and restores them afterwards;
* when a participant refuses with its own 403 (it likely left the epoch), refreshes at once;
  when requests fail with 403/404/410 on ``failure_threshold`` different endpoints within
  ``failure_window`` seconds, likewise (the set is likely stale);
* when the network retired the classic signed path (a v0.2.14 410 at traffic time, or the
  probe of a refresh), retires the group and stops;
* when a refresh fails, keeps the last good set and backs off (``interval`` doubling up to
  ``max_backoff``).

It runs as a task on the Multiplexer's event loop (the sync ``Multiplexer``'s private loop) and
stops with it (``mux.aclose()``/``mux.close()``), or with :meth:`GonkaRefreshManager.aclose`.
"""

from __future__ import annotations

import asyncio
import inspect
import logging
import random
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import httpx

from .discovery import DiscoveryResult, adiscover, afetch_epoch_info
from .epochs import EpochInfo
from .errors import GonkaConfigError, GonkaError
from .policy import GonkaParticipantRefused

if TYPE_CHECKING:
    from gonka_mux.endpoint import Endpoint
    from gonka_mux.routing.outcome import Failure

    from .registration import GonkaEndpointGroup

__all__ = ["GonkaRefreshManager", "RefreshResult"]

logger = logging.getLogger("gonka_mux.gonka")

# Statuses that suggest the endpoint set is stale (not allowed, model gone, API retired).
_STALE_STATUSES = frozenset({403, 404, 410})


@dataclass(frozen=True)
class RefreshResult:
    """The outcome of one poll or refresh.

    ``reason``: ``poll``, ``switch`` (the epoch changed), ``prefetch``, ``manual``
    (:meth:`GonkaRefreshManager.refresh_now`) or ``failures`` (403/404/410 spreading).
    ``swap_seconds``: how long building and swapping the endpoint set took.
    """

    success: bool
    reason: str
    epoch_changed: bool = False
    old_epoch: int | None = None
    new_epoch: int | None = None
    participants_added: tuple[str, ...] = ()
    participants_removed: tuple[str, ...] = ()
    error: str | None = None
    swap_seconds: float | None = None
    prefetched: bool = False
    phase: str | None = None


@dataclass
class _Prefetched:
    epoch_id: int
    found: DiscoveryResult


class GonkaRefreshManager:
    """Keeps one :class:`~gonka_mux.gonka.registration.GonkaEndpointGroup` in step with the
    chain's epochs. Built by ``register_gonka_models``; see the module docstring."""

    def __init__(
        self,
        group: GonkaEndpointGroup,
        sources: Sequence[str],
        *,
        interval: float = 30.0,
        min_interval: float = 6.0,
        max_backoff: float = 300.0,
        verify_proofs: bool = False,
        timeout: float = 10.0,
        prefetch: bool = True,
        poc_weight_factor: float = 0.5,
        failure_threshold: int = 2,
        failure_window: float = 60.0,
        epoch_info: EpochInfo | None = None,
    ) -> None:
        if not sources:
            raise GonkaConfigError("source_url", "the refresh manager needs an http(s) source")
        if interval <= 0 or min_interval < 0 or max_backoff <= 0:
            raise GonkaConfigError(
                "refresh_interval_seconds", "intervals must be > 0 (min_interval >= 0)"
            )
        if not 0 < poc_weight_factor <= 1:
            raise GonkaConfigError("poc_weight_factor", "expected a factor in (0, 1]")
        if failure_threshold < 1:
            raise GonkaConfigError("failure_threshold", "expected an integer >= 1")
        self.group = group
        self.sources = tuple(sources)
        self.interval = float(interval)
        self.min_interval = float(min_interval)
        self.max_backoff = float(max_backoff)
        self.verify_proofs = verify_proofs
        self.timeout = timeout
        self.prefetch = prefetch
        self.poc_weight_factor = poc_weight_factor
        self.failure_threshold = failure_threshold
        self.failure_window = failure_window
        self.current_epoch = group.epoch_id
        self.phase: str | None = epoch_info.phase if epoch_info is not None else None
        self.poc_active = False
        self.switch_height: int | None = epoch_info.switch_height if epoch_info else None
        self.block_height: int | None = epoch_info.block_height if epoch_info else None
        self.last_refresh: float | None = None  # wall time of the last successful refresh
        self.last_poll: float | None = None  # wall time of the last successful poll
        self.last_result: RefreshResult | None = None
        self.last_swap: RefreshResult | None = None  # the last refresh that changed the epoch
        self.last_error: str | None = None
        self.consecutive_failures = 0
        self.next_delay: float | None = None
        self.polls = 0
        self.swaps = 0
        self.prefetches = 0
        self._epoch_callbacks: list[Callable[..., Any]] = []
        self._phase_callbacks: list[Callable[..., Any]] = []
        self._prefetched: _Prefetched | None = None
        self._last_fetch: dict[tuple[str, str], float] = {}
        self._marks: dict[str, float] = {}
        self._block_obs: tuple[int, float] | None = None
        self._block_time: float | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._task: asyncio.Task[None] | None = None
        self._wake: asyncio.Event | None = None
        self._wake_reason = "poll"
        self._lock: asyncio.Lock | None = None
        self._http: Any = None  # one httpx.AsyncClient for every poll (built on the loop)
        self._closed = False
        self._rng = random.Random()
        if epoch_info is not None:
            self._observe_phase(epoch_info, initial=True)
        group.mux.add_failure_listener(self._on_failure)

    # -- public state ---------------------------------------------------------------------
    @property
    def is_running(self) -> bool:
        return self._task is not None and not self._task.done()

    @property
    def closed(self) -> bool:
        return self._closed

    @property
    def prefetched_epoch(self) -> int | None:
        """The epoch whose participants are prefetched and ready to swap in, if any."""
        return self._prefetched.epoch_id if self._prefetched is not None else None

    def on_epoch_change(self, callback: Callable[..., Any]) -> Callable[..., Any]:
        """Call ``callback(old_epoch, new_epoch, participants)`` after each swap to a new epoch
        (sync or async; usable as a decorator)."""
        self._epoch_callbacks.append(callback)
        return callback

    def on_phase_change(self, callback: Callable[..., Any]) -> Callable[..., Any]:
        """Call ``callback(old_phase, new_phase, epoch_info)`` when the epoch phase changes
        (``Inference``, ``PoCGenerate``...; a confirmation PoC reports
        ``"ConfirmationPoC"``)."""
        self._phase_callbacks.append(callback)
        return callback

    # -- lifecycle ------------------------------------------------------------------------
    def start(self, loop: asyncio.AbstractEventLoop | None = None) -> None:
        """Start polling on ``loop`` (default: the running loop); safe from any thread."""
        if self._closed:
            raise RuntimeError("this refresh manager is closed")
        if self.is_running:
            return
        if loop is None:
            try:
                loop = asyncio.get_running_loop()
            except RuntimeError:
                raise RuntimeError(
                    "GonkaRefreshManager.start() needs an event loop: call it from async code "
                    "or pass loop="
                ) from None
        self._loop = loop
        if _running_loop() is loop:
            self._spawn()
            return
        running = _running_loop()

        async def spawn() -> None:
            self._spawn()

        future = asyncio.run_coroutine_threadsafe(spawn(), loop)
        if running is None:
            future.result(10)  # a sync caller sees is_running at once

    def _spawn(self) -> None:
        if self._closed or self.is_running:
            return
        self._wake = asyncio.Event()
        self._lock = asyncio.Lock()
        self._task = asyncio.get_running_loop().create_task(
            self._run(), name=f"gonka-refresh-{self.group.group}"
        )

    async def aclose(self) -> None:
        """Stop polling (idempotent); runs on the manager's loop whatever loop awaits it."""
        loop = self._loop
        other_loop = loop is not None and _running_loop() is not loop
        if other_loop and loop is not None and not loop.is_closed() and loop.is_running():
            future = asyncio.run_coroutine_threadsafe(self._aclose_here(), loop)
            await asyncio.wrap_future(future)
            return
        await self._aclose_here()

    async def _aclose_here(self) -> None:
        self._closed = True
        self.group.mux.remove_failure_listener(self._on_failure)
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

    def close(self, timeout: float = 10.0) -> None:
        """Sync :meth:`aclose` (from a thread that is not the manager's loop)."""
        loop = self._loop
        if loop is None or loop.is_closed() or not loop.is_running():
            self._closed = True
            return
        if _running_loop() is loop:
            self._closed = True
            if self._task is not None:
                self._task.cancel()
            return
        asyncio.run_coroutine_threadsafe(self._aclose_here(), loop).result(timeout)

    async def __aenter__(self) -> GonkaRefreshManager:
        self.start()
        return self

    async def __aexit__(self, *exc_info: Any) -> None:
        await self.aclose()

    # -- on demand ------------------------------------------------------------------------
    async def arefresh_now(self) -> RefreshResult:
        """Re-read the epoch and the participants now and swap if they changed (waits for the
        sources' rate limit)."""
        return await self._on_loop(self._tick("manual"))

    def refresh_now(self, timeout: float | None = 60.0) -> RefreshResult:
        """Sync :meth:`arefresh_now` (from any thread but the manager's loop)."""
        loop = self._require_loop()
        if _running_loop() is loop:
            raise RuntimeError("refresh_now() would block its own event loop: await arefresh_now()")
        return asyncio.run_coroutine_threadsafe(self._tick("manual"), loop).result(timeout)

    async def apoll(self) -> RefreshResult:
        """One poll now, as the background task does (switch, prefetch, phase)."""
        return await self._on_loop(self._tick("poll"))

    async def _on_loop(self, coro: Any) -> RefreshResult:
        loop = self._loop
        if loop is None or _running_loop() is loop:
            self._ensure_primitives()
            result: RefreshResult = await coro
            return result
        future = asyncio.run_coroutine_threadsafe(coro, loop)
        return await asyncio.wrap_future(future)

    def _require_loop(self) -> asyncio.AbstractEventLoop:
        if self._loop is None:
            raise RuntimeError("this refresh manager is not started: call start() first")
        return self._loop

    def _ensure_primitives(self) -> None:
        if self._lock is None:
            self._lock = asyncio.Lock()
        if self._wake is None:
            self._wake = asyncio.Event()

    # -- the loop -------------------------------------------------------------------------
    async def _run(self) -> None:
        while not self._closed:
            delay = self._delay()
            self.next_delay = delay
            reason = await self._sleep(delay)
            try:
                await self._tick(reason)
            except asyncio.CancelledError:
                raise
            except Exception:  # a bug must not stop epoch following
                logger.exception("Gonka refresh tick failed")

    async def _sleep(self, delay: float) -> str:
        wake = self._wake
        assert wake is not None
        try:
            await asyncio.wait_for(wake.wait(), delay)
        except asyncio.TimeoutError:
            return "poll"
        wake.clear()
        return self._wake_reason

    def _delay(self) -> float:
        if self.consecutive_failures:
            base = max(self.interval, self.min_interval)
            backoff = base * 2 ** (self.consecutive_failures - 1)
            return min(self.max_backoff, backoff) * self._rng.uniform(0.9, 1.1)
        delay = self.interval
        if self.switch_height is not None and self.block_height is not None and self._block_time:
            eta = (self.switch_height - self.block_height) * self._block_time
            if eta > 0:
                delay = min(delay, eta)
        return max(delay, self.min_interval)

    def _wake_up(self, reason: str) -> None:
        def wake() -> None:
            if self._wake is not None:
                self._wake_reason = reason
                self._wake.set()

        loop = self._loop
        if loop is None or loop.is_closed():
            return
        if _running_loop() is loop:
            wake()
        else:
            loop.call_soon_threadsafe(wake)

    async def _tick(self, reason: str) -> RefreshResult:
        self._ensure_primitives()
        assert self._lock is not None
        async with self._lock:
            result = await self._tick_locked(reason)
        self.last_result = result
        return result

    async def _tick_locked(self, reason: str) -> RefreshResult:
        self.polls += 1
        await self.group.close_drained()
        if self.group.network_retired:
            return self._stop_retired(reason)
        try:
            info = await self._fetch_epoch_info()
        except Exception as exc:
            return self._failed(reason, exc)
        self.last_poll = time.time()
        change = self._observe_phase(info)
        if change is not None:
            await self._notify(self._phase_callbacks, *change)
        effective = info.effective_epoch_id
        if reason in ("manual", "failures") or effective > self.current_epoch:
            return await self._refresh(info, "switch" if reason == "poll" else reason)
        if (
            self.prefetch
            and info.next_participants_available
            and self.prefetched_epoch != info.latest_epoch_index
        ):
            return await self._prefetch(info)
        self.consecutive_failures = 0
        self.last_error = None
        return RefreshResult(
            True, reason, old_epoch=self.current_epoch, new_epoch=self.current_epoch,
            phase=self.phase,
        )  # fmt: skip

    async def _prefetch(self, info: EpochInfo) -> RefreshResult:
        epoch = info.latest_epoch_index
        try:
            found = await self._discover(epoch)
        except Exception as exc:
            # Not fatal: the switch re-reads /current when the prefetch is missing.
            logger.info("prefetch of epoch %s participants failed: %s", epoch, _describe(exc))
            self.consecutive_failures = 0
            return RefreshResult(True, "prefetch", error=_describe(exc), phase=self.phase)
        self.group.prepare(found.participants)  # builds the new participants' clients now
        self._prefetched = _Prefetched(found.epoch_id or epoch, found)
        self.prefetches += 1
        self.consecutive_failures = 0
        self.last_error = None
        logger.info(
            "prefetched epoch %s: %d participants, switch at block %s",
            epoch,
            len(found.participants),
            info.switch_height,
        )
        return RefreshResult(
            True,
            "prefetch",
            old_epoch=self.current_epoch,
            new_epoch=self.current_epoch,
            prefetched=True,
            phase=self.phase,
        )

    async def _refresh(self, info: EpochInfo, reason: str) -> RefreshResult:
        target = info.effective_epoch_id
        pre = self._prefetched
        used_prefetch = False
        if pre is not None and pre.epoch_id == target and reason == "switch":
            found = pre.found
            used_prefetch = True
        else:
            try:
                found = await self._discover("current")
            except Exception as exc:
                return self._failed(reason, exc)
        if found.classic_api_retired and found.classic_api is not None:
            host = found.classic_api.url.removesuffix("/v1/chat/completions")
            # this task runs on the Multiplexer's loop, where its registry lives
            self.group.retire_network(f"host {host}", found.classic_api.message)
            return self._stop_retired(reason)
        if found.epoch_id and found.epoch_id < self.current_epoch:
            return self._failed(
                reason,
                GonkaError(
                    f"the source still serves epoch {found.epoch_id} (we have "
                    f"{self.current_epoch}); keeping the current set"
                ),
            )
        started = time.perf_counter()
        prepared = self.group.prepare(found.participants)
        if not prepared:
            return self._failed(
                reason,
                GonkaError(
                    "the refreshed participant list has no usable endpoint (every TA excluded, "
                    "retired (410) or not allowed); keeping the current set. If every TA answers "
                    "410, use a broker: add_gonka_broker(mux, base_url, api_key)"
                ),
            )
        old_epoch = self.current_epoch
        added, removed = self.group.apply(prepared, found.participants, found.epoch_id)
        swap = time.perf_counter() - started
        self.current_epoch = found.epoch_id or target
        self._prefetched = None
        self._marks.clear()
        self.consecutive_failures = 0
        self.last_error = None
        self.last_refresh = time.time()
        changed = self.current_epoch != old_epoch
        if changed:
            self.swaps += 1
            logger.info(
                "Gonka epoch %s -> %s: %d participants (+%d -%d), swapped in %.2f ms%s",
                old_epoch,
                self.current_epoch,
                len(self.group.participants),
                len(added),
                len(removed),
                swap * 1000,
                " (prefetched)" if used_prefetch else "",
            )
            await self._notify(
                self._epoch_callbacks, old_epoch, self.current_epoch, list(self.group.participants)
            )
        outcome = RefreshResult(
            True,
            reason,
            epoch_changed=changed,
            old_epoch=old_epoch,
            new_epoch=self.current_epoch,
            participants_added=tuple(added),
            participants_removed=tuple(removed),
            swap_seconds=swap,
            prefetched=used_prefetch,
            phase=self.phase,
        )
        if changed:
            self.last_swap = outcome
        return outcome

    def _stop_retired(self, reason: str) -> RefreshResult:
        """The network retired the classic signed path: nothing to follow any more."""
        if not self._closed:
            logger.info("Gonka refresh of group %s stopped: classic API retired", self.group.group)
        self._closed = True  # the loop ends after this tick
        self.last_error = "classic signed inference retired on this network"
        return RefreshResult(
            False,
            reason,
            old_epoch=self.current_epoch,
            new_epoch=self.current_epoch,
            error=self.last_error,
            phase=self.phase,
        )

    def _failed(self, reason: str, exc: BaseException) -> RefreshResult:
        self.consecutive_failures += 1
        self.last_error = _describe(exc)
        logger.warning(
            "Gonka refresh (%s) failed, keeping the last good set of %d endpoints "
            "(failure %d in a row): %s",
            reason,
            len(self.group.endpoints),
            self.consecutive_failures,
            self.last_error,
        )
        return RefreshResult(
            False,
            reason,
            old_epoch=self.current_epoch,
            new_epoch=self.current_epoch,
            error=self.last_error,
            phase=self.phase,
        )

    # -- fetching, within the nodes' rate limits ------------------------------------------
    async def _ready_sources(self, kind: str) -> list[str]:
        while True:
            now = time.monotonic()
            ready = [
                s
                for s in self.sources
                if now - self._last_fetch.get((kind, s), float("-inf")) >= self.min_interval
            ]
            if ready:
                return ready
            soonest = min(self._last_fetch[(kind, s)] for s in self.sources) + self.min_interval
            await asyncio.sleep(max(0.0, soonest - now))

    def _client(self) -> Any:
        if self._http is None:
            self._http = httpx.AsyncClient(
                timeout=self.timeout,
                follow_redirects=True,
                headers={"Accept": "application/json", "User-Agent": "gonka-mux"},
            )
        return self._http

    async def _fetch_epoch_info(self) -> EpochInfo:
        errors: list[str] = []
        for source in await self._ready_sources("epoch"):
            self._last_fetch[("epoch", source)] = time.monotonic()
            try:
                return await afetch_epoch_info(source, client=self._client())
            except GonkaError as exc:
                errors.append(str(exc))
        raise GonkaError("; ".join(errors) or "no source to poll")

    async def _discover(self, epoch: int | str) -> DiscoveryResult:
        errors: list[str] = []
        for source in await self._ready_sources("participants"):
            self._last_fetch[("participants", source)] = time.monotonic()
            try:
                return await adiscover(
                    source,
                    epoch=epoch,
                    verify_proofs=self.verify_proofs,
                    fetch_epoch_info=False,
                    client=self._client(),
                )
            except GonkaError as exc:
                errors.append(str(exc))
        raise GonkaError("; ".join(errors) or "no source to read participants from")

    # -- phases ---------------------------------------------------------------------------
    def _observe_phase(
        self, info: EpochInfo, *, initial: bool = False
    ) -> tuple[str | None, str, EpochInfo] | None:
        """Record the phase; scale weights on PoC edges; return (old, new, info) on a change."""
        now = time.monotonic()
        if self._block_obs is not None and info.block_height > self._block_obs[0]:
            sample = (now - self._block_obs[1]) / (info.block_height - self._block_obs[0])
            self._block_time = sample if self._block_time is None else (
                0.7 * self._block_time + 0.3 * sample
            )  # fmt: skip
        if self._block_obs is None or info.block_height != self._block_obs[0]:
            self._block_obs = (info.block_height, now)
        self.block_height = info.block_height
        self.switch_height = info.switch_height
        phase = "ConfirmationPoC" if info.confirmation_poc_blocking else info.phase
        poc = info.in_poc or info.confirmation_poc_blocking
        old_phase = self.phase
        self.phase = phase
        if poc != self.poc_active:
            self.poc_active = poc
            self.group.set_weight_factor(self.poc_weight_factor if poc else 1.0)
        if initial or phase == old_phase:
            return None
        if poc:
            logger.info(
                "Gonka phase %s -> %s: capacity is reduced, Gonka endpoint weights x%g",
                old_phase,
                phase,
                self.poc_weight_factor,
            )
        else:
            logger.info("Gonka phase %s -> %s", old_phase, phase)
        return old_phase, phase, info

    async def _notify(self, callbacks: Sequence[Callable[..., Any]], *args: Any) -> None:
        for callback in callbacks:
            try:
                outcome = callback(*args)
                if inspect.isawaitable(outcome):
                    await outcome
            except Exception:
                logger.exception("Gonka refresh callback %r failed", callback)

    # -- failures seen by the router ------------------------------------------------------
    def _on_failure(self, endpoint: Endpoint, failure: Failure) -> None:
        if endpoint.group != self.group.group or failure.status not in _STALE_STATUSES:
            return
        if isinstance(failure.error, GonkaParticipantRefused):
            # one participant refuses in its own words: it likely left the epoch; re-read now
            logger.info(
                "Gonka participant behind %s refused (403): refreshing the participant list now",
                endpoint.name,
            )
            self._marks.clear()
            self._wake_up("failures")
            return
        now = time.monotonic()
        self._marks[endpoint.name] = now
        for name, at in list(self._marks.items()):
            if now - at > self.failure_window:
                del self._marks[name]
        threshold = min(self.failure_threshold, max(1, len(self.group.endpoints)))
        if len(self._marks) >= threshold:
            logger.info(
                "HTTP %s on %d Gonka endpoints: refreshing the participant list early",
                failure.status,
                len(self._marks),
            )
            self._marks.clear()
            self._wake_up("failures")

    def __repr__(self) -> str:
        state = "running" if self.is_running else ("closed" if self._closed else "stopped")
        return (
            f"GonkaRefreshManager(epoch={self.current_epoch}, phase={self.phase!r}, "
            f"interval={self.interval:g}s, {state})"
        )


def _running_loop() -> asyncio.AbstractEventLoop | None:
    try:
        return asyncio.get_running_loop()
    except RuntimeError:
        return None


def _describe(exc: BaseException) -> str:
    text = str(exc)
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__
