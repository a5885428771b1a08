"""Background jobs: run a request off the caller's path, persist it, announce the outcome.

:class:`JobRunner` persists a job before running it, runs it through ``execute`` (the
multiplexer's chat-completion function) with bounded concurrency, records the result, and
delivers a signed webhook and/or calls ``on_complete``. Everything it has not finished lives in the
:class:`~gonka_mux.webhooks.store.JobStore`, so after a crash or a clean stop a new runner on the
same store picks it up: queued jobs run, jobs that were running run again (``execute`` must be
safe to repeat: a chat completion is), and pending deliveries continue their retry schedule with
their attempt counts intact.

Delivery is at least once: a receiver may see the same ``X-Gonka-Mux-Delivery`` id more than once
(a retry after a lost acknowledgement, a crash mid-POST) and should process each id once.

``on_complete`` callbacks run in this process only; the one given to ``submit()`` is not
persisted, so after a restart only the runner-wide ``on_complete`` and webhooks fire.

A ``shared`` store (PostgreSQL) is used by runners in many processes and hosts at once: each
runner claims a job before running it (a lease of ``lease`` seconds, renewed while it runs) and a
delivery before each POST, and polls the store every ``poll_interval`` seconds for work nobody
holds: jobs submitted elsewhere, and jobs and deliveries whose runner died (its lease expired).
A job is recorded, and announced, once; ``wait()`` also sees jobs another runner finished.
"""

from __future__ import annotations

import asyncio
import inspect
import json
import logging
import os
import socket
import time
import uuid
from collections.abc import Awaitable, Callable, Mapping
from typing import TYPE_CHECKING, Any

from gonka_mux._exceptions import GonkaMuxError, StoreUnavailableError
from gonka_mux.webhooks.delivery import (
    EVENT_JOB_COMPLETED,
    EVENT_JOB_FAILED,
    DeliveryPolicy,
    WebhookSender,
    build_payload,
    check_webhook_url,
    redact_url,
)
from gonka_mux.webhooks.signing import Secret
from gonka_mux.webhooks.store import (
    Delivery,
    DeliveryStatus,
    Job,
    JobAlreadyFinishedError,
    JobNotFoundError,
    JobStatus,
    JobStore,
    SQLiteJobStore,
)

if TYPE_CHECKING:
    import httpx

__all__ = ["Execute", "JobRunner", "JobRunnerClosedError", "OnComplete"]

logger = logging.getLogger("gonka_mux.webhooks")

Execute = Callable[[dict[str, Any]], Awaitable[Any]]
OnComplete = Callable[[Job], Any]


class JobRunnerClosedError(GonkaMuxError, RuntimeError):
    """The runner was closed; create a new one (on the same store, to pick up its jobs)."""


def _as_result(value: Any) -> dict[str, Any]:
    """``execute``'s answer as a JSON object: a dict, or a pydantic model such as ChatCompletion."""
    if hasattr(value, "model_dump"):
        value = value.model_dump(mode="json")
    if not isinstance(value, dict):
        raise TypeError(f"execute() must return a dict (JSON object), got {type(value).__name__}")
    json.dumps(value, allow_nan=False)  # raises TypeError/ValueError if it cannot be stored
    return value


class JobRunner:
    """Runs submitted requests in the background and delivers their outcome.

    ``execute(params) -> dict`` does the work (for the multiplexer: one chat completion, returned
    as a dict). ``max_concurrency`` bounds how many run at once; ``max_deliveries`` how many
    webhook POSTs are in flight. ``max_job_attempts`` stops a job that keeps being interrupted
    (for instance because it crashes the process) from being re-run for ever.
    ``allow_private_webhooks=False`` refuses webhook URLs on loopback/private/reserved
    addresses, at submission and again at delivery (the host is resolved then, and the POST
    connects to the address that was checked): set it whenever the URLs come from untrusted
    callers (the gateway does). The default (True) suits an application posting to its own
    receivers.
    ``store=None`` opens the default SQLite store (see :mod:`gonka_mux.webhooks.store`).
    On a ``shared`` store (PostgreSQL), ``lease`` is how long a claim on a job or delivery lasts
    without renewal (a runner that dies releases its work after this long) and
    ``poll_interval`` how often the store is asked for work nobody holds.

    Use as ``async with JobRunner(store, execute) as runner:`` or call :meth:`start` and
    :meth:`aclose`.
    """

    def __init__(
        self,
        store: JobStore | None,
        execute: Execute,
        *,
        max_concurrency: int = 8,
        delivery_policy: DeliveryPolicy | None = None,
        on_complete: OnComplete | None = None,
        http_client: httpx.AsyncClient | None = None,
        max_deliveries: int = 16,
        max_job_attempts: int = 3,
        allow_private_webhooks: bool = True,
        lease: float = 30.0,
        poll_interval: float = 1.0,
    ) -> None:
        if not callable(execute):
            raise TypeError("execute must be an async callable: execute(params) -> dict")
        for name, value in (
            ("max_concurrency", max_concurrency),
            ("max_deliveries", max_deliveries),
            ("max_job_attempts", max_job_attempts),
        ):
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be an integer >= 1, got {value!r}")
        if not isinstance(allow_private_webhooks, bool):
            raise TypeError(
                f"allow_private_webhooks must be True or False, got {allow_private_webhooks!r}"
            )
        for name, number in (("lease", lease), ("poll_interval", poll_interval)):
            if isinstance(number, bool) or not isinstance(number, (int, float)) or number <= 0:
                raise ValueError(f"{name} must be a number of seconds > 0, got {number!r}")
        self._allow_private = allow_private_webhooks
        self._owns_store = store is None
        self.store: JobStore = SQLiteJobStore() if store is None else store
        self._execute = execute
        self._policy = delivery_policy or DeliveryPolicy()
        self._on_complete = on_complete
        self._client = http_client
        self._owns_client = http_client is None
        self._max_concurrency = max_concurrency
        self._max_deliveries = max_deliveries
        self._max_job_attempts = max_job_attempts
        self._sender: WebhookSender | None = None
        self._run_slots: asyncio.Semaphore | None = None
        self._send_slots: asyncio.Semaphore | None = None
        self._job_tasks: dict[str, asyncio.Task[None]] = {}
        self._delivery_tasks: dict[str, asyncio.Task[None]] = {}
        self._job_done: dict[str, asyncio.Event] = {}
        self._delivery_done: dict[str, asyncio.Event] = {}
        self._callbacks: dict[str, OnComplete] = {}
        self._started = False
        self._closed = False
        # Shared stores: which runner holds a claim (host, process, instance), and the poller.
        self._shared = bool(getattr(self.store, "shared", False))
        self._lease = float(lease)
        self._poll_interval = float(poll_interval)
        self.runner_id = f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"
        self._poll_task: asyncio.Task[None] | None = None
        self._store_down = False

    @property
    def allow_private_webhooks(self) -> bool:
        """Whether webhooks may target loopback/private addresses (see the class docstring)."""
        return self._allow_private

    @allow_private_webhooks.setter
    def allow_private_webhooks(self, value: bool) -> None:
        if not isinstance(value, bool):
            raise TypeError(f"allow_private_webhooks must be True or False, got {value!r}")
        self._allow_private = value
        if self._sender is not None:
            self._sender.allow_private = value

    def __repr__(self) -> str:
        state = "closed" if self._closed else "running" if self._started else "new"
        return (
            f"JobRunner(store={self.store!r}, state={state}, "
            f"jobs_in_flight={len(self._job_tasks)}, "
            f"deliveries_in_flight={len(self._delivery_tasks)})"
        )

    async def __aenter__(self) -> JobRunner:
        await self.start()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.aclose()

    # ------------------------------------------------------------------ lifecycle

    async def start(self) -> None:
        """Resume unfinished jobs and pending deliveries from the store. Idempotent."""
        if self._closed:
            raise JobRunnerClosedError("this JobRunner was closed; create a new one")
        if self._started:
            return
        self._started = True
        self._run_slots = asyncio.Semaphore(self._max_concurrency)
        self._send_slots = asyncio.Semaphore(self._max_deliveries)
        if self._client is None:
            # Lazy: httpx adds ~50 ms to importing the Multiplexer (see delivery.WebhookSender).
            import httpx

            self._client = httpx.AsyncClient(follow_redirects=False)
        self._sender = WebhookSender(self._client, self._policy, allow_private=self._allow_private)
        if self._shared:
            # Other runners may hold some of the unfinished work: the poller claims what is free.
            self._poll_task = asyncio.get_running_loop().create_task(
                self._poll(), name="gonka_mux.jobs.poll"
            )
            return
        jobs = self.store.unfinished_jobs()
        deliveries = self.store.pending_deliveries()
        for job in jobs:
            self._schedule_job(job.id)
        for delivery in deliveries:
            self._schedule_delivery(delivery.id)
        if jobs or deliveries:
            logger.info(
                "resumed %d unfinished job(s) and %d pending delivery(ies)",
                len(jobs),
                len(deliveries),
            )

    async def aclose(self) -> None:
        """Stop running jobs and deliveries. Nothing is lost: unfinished work stays in the store
        (running jobs run again and pending deliveries continue when a runner starts on it)."""
        if self._closed:
            return
        self._closed = True
        if self._poll_task is not None:
            self._poll_task.cancel()
            await asyncio.gather(self._poll_task, return_exceptions=True)
        tasks = [*self._job_tasks.values(), *self._delivery_tasks.values()]
        for task in tasks:
            task.cancel()
        if tasks:
            await asyncio.gather(*tasks, return_exceptions=True)
        self._job_tasks.clear()
        self._delivery_tasks.clear()
        if self._shared:
            try:  # hand our unfinished work to the other runners now, not when leases expire
                await asyncio.to_thread(self.store.release_claims, self.runner_id)
            except StoreUnavailableError:
                logger.info("could not release job claims (store unavailable); leases expire")
        if self._client is not None and self._owns_client:
            await self._client.aclose()
        if self._owns_store:
            self.store.close()

    # ------------------------------------------------------------------ public API

    async def submit(
        self,
        params: Mapping[str, Any],
        *,
        webhook_url: str | None = None,
        webhook_secret: str | bytes | Secret | None = None,
        on_complete: OnComplete | None = None,
    ) -> Job:
        """Persist a job, then run it in the background; return it (status ``queued``).

        ``webhook_url`` gets a signed POST when the job finishes (``webhook_secret`` is required
        with it). ``on_complete(job)`` (sync or async) is called in this process when it finishes.
        """
        if self._closed:
            raise JobRunnerClosedError("this JobRunner was closed; create a new one")
        if not isinstance(params, Mapping):
            raise TypeError(f"params must be a mapping of request parameters, got {type(params)}")
        secret: Secret | None = None
        if webhook_url is not None:
            if not isinstance(webhook_url, str):
                raise TypeError("webhook_url must be a string")
            check_webhook_url(webhook_url, allow_private=self._allow_private)
            if webhook_secret is None:
                raise ValueError(
                    "webhook_secret is required with webhook_url, so the receiver can verify "
                    "deliveries (gonka_mux.webhooks.generate_secret() makes one)"
                )
            secret = Secret(webhook_secret)
        elif webhook_secret is not None:
            raise ValueError("webhook_secret was given without webhook_url")
        if on_complete is not None and not callable(on_complete):
            raise TypeError("on_complete must be callable: on_complete(job)")
        await self.start()
        now = time.time()
        job = Job(
            id=str(uuid.uuid4()),
            params=dict(params),
            webhook_url=webhook_url,
            webhook_secret=secret,
            created_at=now,
            updated_at=now,
        )
        self.store.add_job(job)  # persisted before it runs: a crash from here on loses nothing
        if on_complete is not None:
            self._callbacks[job.id] = on_complete
        self._schedule_job(job.id)
        return self.get(job.id)

    def get(self, job_id: str) -> Job:
        """The job's current state (status, result, error); :class:`JobNotFoundError` if unknown."""
        job = self.store.get_job(job_id)
        if job is None:
            raise JobNotFoundError(f"no job {job_id!r}; it was never submitted to this store")
        return job

    def deliveries(self, job_id: str) -> list[Delivery]:
        """The webhook deliveries of a job (one per finished job that has a webhook_url)."""
        return self.store.deliveries_for(job_id)

    async def wait(self, job_id: str, timeout: float | None = None) -> Job:
        """Wait until the job succeeded or failed and return it; ``TimeoutError`` after
        ``timeout`` seconds (the job keeps running)."""
        job = self.get(job_id)
        if job.done:
            return job
        event = self._job_done.setdefault(job_id, asyncio.Event())
        try:
            await self._wait_for(event, lambda: self.get(job_id).done, timeout)
        except asyncio.TimeoutError:
            raise TimeoutError(f"job {job_id} not finished after {timeout:g}s") from None
        return self.get(job_id)

    async def _wait_for(self, event: asyncio.Event, done: Callable[[], bool], timeout: Any) -> None:
        """Wait for ``event``; on a shared store also re-check ``done()`` every poll interval
        (another runner may finish the work, and no event of ours fires then)."""
        if not self._shared:
            await asyncio.wait_for(event.wait(), timeout)
            return
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            left = None if deadline is None else deadline - time.monotonic()
            if left is not None and left <= 0:
                raise asyncio.TimeoutError
            step = self._poll_interval if left is None else min(self._poll_interval, left)
            try:
                await asyncio.wait_for(event.wait(), step)
                return
            except asyncio.TimeoutError:
                if await asyncio.to_thread(done):
                    return

    async def wait_deliveries(self, job_id: str, timeout: float | None = None) -> list[Delivery]:
        """Wait until the job finished and its webhook delivery is settled (delivered or failed)."""
        deadline = None if timeout is None else time.monotonic() + timeout
        await self.wait(job_id, timeout)
        for delivery in self.store.deliveries_for(job_id):
            if delivery.status != DeliveryStatus.PENDING:
                continue
            event = self._delivery_done.setdefault(delivery.id, asyncio.Event())
            left = None if deadline is None else max(0.0, deadline - time.monotonic())

            def settled(delivery_id: str = delivery.id) -> bool:
                found = self.store.get_delivery(delivery_id)
                return found is None or found.status != DeliveryStatus.PENDING

            try:
                await self._wait_for(event, settled, left)
            except asyncio.TimeoutError:
                raise TimeoutError(
                    f"webhook delivery {delivery.id} of job {job_id} still pending after "
                    f"{timeout:g}s"
                ) from None
        return self.store.deliveries_for(job_id)

    # ------------------------------------------------------------------ jobs

    @staticmethod
    def _task_done(
        tasks: dict[str, asyncio.Task[None]], key: str, task: asyncio.Task[None]
    ) -> None:
        tasks.pop(key, None)
        if not task.cancelled() and task.exception() is not None:
            # A store write failed (disk full, file removed): the work stays unfinished in the
            # store and is resumed by the next runner; say so rather than lose the error.
            logger.error(
                "background task %s stopped: %s (it resumes when a runner restarts)",
                task.get_name(),
                type(task.exception()).__name__,
                exc_info=task.exception(),
            )

    def _schedule_job(self, job_id: str) -> None:
        if job_id in self._job_tasks:
            return
        task = asyncio.get_running_loop().create_task(
            self._run_job(job_id), name=f"gonka_mux.job[{job_id}]"
        )
        self._job_tasks[job_id] = task
        task.add_done_callback(lambda t, key=job_id: self._task_done(self._job_tasks, key, t))

    async def _run_job(self, job_id: str) -> None:
        assert self._run_slots is not None
        async with self._run_slots:
            if self._shared:
                # Claimed only once a slot is free, so work this runner cannot start yet stays
                # free for the others.
                job = self.store.claim_job(job_id, self.runner_id, time.time(), self._lease)
            else:
                job = self.store.get_job(job_id)
            if job is None or job.done:
                return
            if job.attempts >= self._max_job_attempts:
                error = (
                    f"job was interrupted {job.attempts} times before finishing "
                    f"(max_job_attempts={self._max_job_attempts}); not running it again"
                )
                await self._finish(job_id, JobStatus.FAILED, None, error)
                return
            job = self.store.mark_running(job_id, time.time())
            renewer = (
                asyncio.get_running_loop().create_task(
                    self._renew_lease(job_id), name=f"gonka_mux.job-lease[{job_id}]"
                )
                if self._shared
                else None
            )
            try:
                outcome = await self._execute(job.params)
                result = _as_result(outcome)
            except asyncio.CancelledError:
                # Left 'running' in the store on purpose: the next runner runs it again.
                raise
            except Exception as exc:
                logger.warning("job %s failed: %s", job_id, type(exc).__name__)
                await self._finish(job_id, JobStatus.FAILED, None, f"{type(exc).__name__}: {exc}")
                return
            finally:
                if renewer is not None:
                    renewer.cancel()
        await self._finish(job_id, JobStatus.SUCCEEDED, result, None)

    async def _renew_lease(self, job_id: str) -> None:
        """Keep this runner's claim on a running job alive (a third of the lease apart)."""
        while True:
            await asyncio.sleep(self._lease / 3)
            try:
                # In a thread: a database that is away makes the pool wait, not the event loop.
                held = await asyncio.to_thread(
                    self.store.renew_job_lease, job_id, self.runner_id, time.time() + self._lease
                )
            except StoreUnavailableError:
                continue  # the lease may lapse; finish_job still records the outcome only once
            if not held:
                logger.warning(
                    "lost the lease on job %s (another runner took it over); the first runner "
                    "to finish records the outcome",
                    job_id,
                )
                return

    async def _poll(self) -> None:
        """Shared stores: claim work nobody holds (new jobs from other processes, work whose
        runner died), until the runner closes. The store being away is logged once."""
        while True:
            try:
                now = time.time()
                free = self._max_concurrency - len(self._job_tasks)
                # In a thread: a database that is away makes the pool wait (its timeout), and the
                # event loop serves requests meanwhile.
                if free > 0:
                    jobs = await asyncio.to_thread(self.store.claimable_jobs, now, free)
                    for job_id in jobs:
                        self._schedule_job(job_id)
                free = self._max_deliveries - len(self._delivery_tasks)
                if free > 0:
                    due = await asyncio.to_thread(self.store.claimable_deliveries, now, free)
                    for delivery_id in due:
                        self._schedule_delivery(delivery_id)
                if self._store_down:
                    self._store_down = False
                    logger.info("the job store is reachable again")
            except StoreUnavailableError as exc:
                if not self._store_down:
                    self._store_down = True
                    logger.warning("job store unavailable (%s); polling on", exc)
            except Exception:
                logger.exception("polling the job store failed; polling on")
            await asyncio.sleep(self._poll_interval)

    async def _finish(
        self, job_id: str, status: JobStatus, result: dict[str, Any] | None, error: str | None
    ) -> None:
        now = time.time()
        job = self.get(job_id)
        delivery: Delivery | None = None
        if job.webhook_url is not None:
            event = EVENT_JOB_COMPLETED if status == JobStatus.SUCCEEDED else EVENT_JOB_FAILED
            job.status, job.result, job.error, job.finished_at = status, result, error, now
            delivery_id = str(uuid.uuid4())
            delivery = Delivery(
                id=delivery_id,
                job_id=job_id,
                event=event,
                body=build_payload(job, delivery_id=delivery_id, event=event, created=now),
                next_attempt_at=now,
                created_at=now,
                updated_at=now,
            )
        # One transaction: the outcome and the delivery announcing it are stored together.
        try:
            job = self.store.finish_job(
                job_id, status=status, result=result, error=error, now=now, delivery=delivery
            )
        except JobAlreadyFinishedError:
            # A shared store: another runner took the job over and finished it first; its
            # outcome and webhook stand, ours are dropped.
            logger.info("job %s was finished by another runner first", job_id)
            self._callbacks.pop(job_id, None)
            self._job_done.pop(job_id, asyncio.Event()).set()
            return
        self._job_done.pop(job_id, asyncio.Event()).set()
        if delivery is not None:
            self._schedule_delivery(delivery.id)
        for callback in (self._callbacks.pop(job_id, None), self._on_complete):
            if callback is not None:
                await self._call(callback, job)

    async def _call(self, callback: OnComplete, job: Job) -> None:
        try:
            outcome = callback(job)
            if inspect.isawaitable(outcome):
                await outcome
        except asyncio.CancelledError:
            raise
        except Exception:
            logger.exception("on_complete callback for job %s raised", job.id)

    # ------------------------------------------------------------------ deliveries

    def _schedule_delivery(self, delivery_id: str) -> None:
        if delivery_id in self._delivery_tasks or self._closed:
            return
        task = asyncio.get_running_loop().create_task(
            self._deliver(delivery_id), name=f"gonka_mux.webhook[{delivery_id}]"
        )
        self._delivery_tasks[delivery_id] = task
        task.add_done_callback(
            lambda t, key=delivery_id: self._task_done(self._delivery_tasks, key, t)
        )

    async def _deliver(self, delivery_id: str) -> None:
        assert self._sender is not None and self._send_slots is not None
        policy = self._policy
        while True:
            delivery = self.store.get_delivery(delivery_id)
            if delivery is None or delivery.status != DeliveryStatus.PENDING:
                break
            delay = delivery.next_attempt_at - time.time()
            if delay > 0:
                await asyncio.sleep(delay)
            if self._shared:
                # One runner per attempt, fleet-wide: the lease covers the POST and its record.
                lease = self._policy.timeout + self._lease
                claimed = self.store.claim_delivery(delivery_id, self.runner_id, time.time(), lease)
                if claimed is None:
                    break  # settled, or another runner holds it
                delivery = claimed
            job = self.store.get_job(delivery.job_id)
            if job is None or job.webhook_url is None:
                self._settle(delivery, DeliveryStatus.FAILED, "the job or its webhook_url is gone")
                break
            if job.webhook_secret is None:
                self._settle(
                    delivery, DeliveryStatus.FAILED, "no webhook secret: never sent unsigned"
                )
                break
            if delivery.attempts >= policy.max_attempts:
                self._settle(delivery, DeliveryStatus.FAILED, delivery.last_error)
                break
            async with self._send_slots:
                # Count the attempt before making it: a crash mid-POST still uses it up, and the
                # retry time is already set should we never come back from the POST.
                delivery.attempts += 1
                delivery.next_attempt_at = time.time() + policy.delay_for(delivery.attempts)
                delivery.updated_at = time.time()
                self.store.update_delivery(delivery)
                result = await self._sender.send(job.webhook_url, job.webhook_secret, delivery)
            if result.outcome == "delivered":
                delivery.delivered_at = time.time()
                self._settle(delivery, DeliveryStatus.DELIVERED, None)
                logger.debug(
                    "delivered %s for job %s to %s (attempt %d)",
                    delivery.event,
                    delivery.job_id,
                    redact_url(job.webhook_url),
                    delivery.attempts,
                )
                break
            if result.outcome == "failed" or delivery.attempts >= policy.max_attempts:
                self._settle(delivery, DeliveryStatus.FAILED, result.error)
                logger.warning(
                    "webhook delivery %s for job %s to %s failed after %d attempt(s): %s",
                    delivery.id,
                    delivery.job_id,
                    redact_url(job.webhook_url),
                    delivery.attempts,
                    result.error,
                )
                break
            delivery.next_attempt_at = time.time() + policy.delay_for(
                delivery.attempts, result.retry_after
            )
            delivery.last_error = result.error
            delivery.updated_at = time.time()
            self.store.update_delivery(delivery)
            logger.info(
                "webhook delivery %s for job %s to %s: attempt %d of %d failed (%s); retrying",
                delivery.id,
                delivery.job_id,
                redact_url(job.webhook_url),
                delivery.attempts,
                policy.max_attempts,
                result.error,
            )

    def _settle(self, delivery: Delivery, status: DeliveryStatus, error: str | None) -> None:
        delivery.status = status
        delivery.last_error = error
        delivery.updated_at = time.time()
        self.store.update_delivery(delivery)
        self._delivery_done.pop(delivery.id, asyncio.Event()).set()
