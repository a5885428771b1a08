"""JobRunner against a real loopback webhook receiver (see webhook_receiver.Receiver)."""

from __future__ import annotations

import asyncio
import json
import logging
import signal
import socket
import sys
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import replace
from pathlib import Path
from typing import Any

import pydantic
import pytest
import tenacity
from webhook_receiver import SECRET, Receiver

from gonka_mux.webhooks import (
    DeliveryPolicy,
    DeliveryStatus,
    Job,
    JobNotFoundError,
    JobRunner,
    JobRunnerClosedError,
    JobStatus,
    JobStore,
    MemoryJobStore,
    SQLiteJobStore,
)

FAST = DeliveryPolicy(max_attempts=5, wait=tenacity.wait_fixed(0.01), timeout=5)


async def echo(params: dict[str, Any]) -> dict[str, Any]:
    await asyncio.sleep(0)
    return {"object": "chat.completion", "echo": params}


RunnerFactory = Callable[..., JobRunner]


@pytest.fixture
async def make_runner() -> AsyncIterator[RunnerFactory]:
    runners: list[JobRunner] = []

    def factory(store: JobStore | None = None, execute: Any = echo, **kwargs: Any) -> JobRunner:
        kwargs.setdefault("delivery_policy", FAST)
        runner = JobRunner(MemoryJobStore() if store is None else store, execute, **kwargs)
        runners.append(runner)
        return runner

    yield factory
    for runner in runners:
        await runner.aclose()


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


async def wait_until(predicate: Callable[[], bool], timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError("condition not reached in time")
        await asyncio.sleep(0.005)


# --------------------------------------------------------------------------- jobs


async def test_submit_returns_at_once_and_the_job_runs_in_the_background(
    make_runner: RunnerFactory,
) -> None:
    release = asyncio.Event()

    async def gated(params: dict[str, Any]) -> dict[str, Any]:
        await release.wait()
        return {"answer": params["messages"][0]["content"].upper()}

    runner = make_runner(execute=gated)
    job = await runner.submit({"model": "m", "messages": [{"role": "user", "content": "hi"}]})
    assert job.status is JobStatus.QUEUED
    await wait_until(lambda: runner.get(job.id).status is JobStatus.RUNNING)
    release.set()
    done = await runner.wait(job.id, timeout=5)
    assert done.status is JobStatus.SUCCEEDED
    assert done.result == {"answer": "HI"}
    assert done.error is None and done.attempts == 1
    assert done.finished_at is not None and done.started_at is not None
    assert runner.get(job.id).result == {"answer": "HI"}


async def test_execute_error_fails_the_job_and_sends_job_failed(
    make_runner: RunnerFactory, receiver: Receiver
) -> None:
    async def broken(params: dict[str, Any]) -> dict[str, Any]:
        raise RuntimeError("all endpoints failed")

    runner = make_runner(execute=broken)
    job = await runner.submit({"x": 1}, webhook_url=receiver.url, webhook_secret=SECRET)
    done = await runner.wait(job.id, timeout=5)
    assert done.status is JobStatus.FAILED
    assert done.error == "RuntimeError: all endpoints failed"
    [delivery] = await runner.wait_deliveries(job.id, timeout=5)
    assert delivery.status is DeliveryStatus.DELIVERED
    [request] = receiver.received
    assert request.event == "job.failed" and request.verified
    payload = json.loads(request.body)
    assert payload["type"] == "job.failed"
    assert payload["id"] == delivery.id
    assert payload["job"]["error"] == "RuntimeError: all endpoints failed"


async def test_results_must_be_json_objects(make_runner: RunnerFactory) -> None:
    class Completion(pydantic.BaseModel):
        id: str
        choices: list[str]

    async def returns(params: dict[str, Any]) -> Any:
        return Completion(id="c1", choices=["a"]) if params["kind"] == "model" else ["not", "a"]

    runner = make_runner(execute=returns)
    model_job = await runner.submit({"kind": "model"})
    list_job = await runner.submit({"kind": "list"})
    assert (await runner.wait(model_job.id, 5)).result == {"id": "c1", "choices": ["a"]}
    failed = await runner.wait(list_job.id, 5)
    assert failed.status is JobStatus.FAILED
    assert failed.error is not None and "must return a dict" in failed.error


async def test_on_complete_sync_async_and_runner_wide(
    make_runner: RunnerFactory, caplog: pytest.LogCaptureFixture
) -> None:
    seen: list[tuple[str, str, JobStatus]] = []

    def sync_cb(job: Job) -> None:
        seen.append(("sync", job.id, job.status))

    async def async_cb(job: Job) -> None:
        await asyncio.sleep(0)
        seen.append(("async", job.id, job.status))

    def runner_wide(job: Job) -> None:
        seen.append(("runner", job.id, job.status))
        raise ValueError("a buggy callback must not break the runner")

    runner = make_runner(on_complete=runner_wide)
    first = await runner.submit({"n": 1}, on_complete=sync_cb)
    second = await runner.submit({"n": 2}, on_complete=async_cb)
    await runner.wait(first.id, 5)
    await runner.wait(second.id, 5)
    await wait_until(lambda: len(seen) == 4)
    assert ("sync", first.id, JobStatus.SUCCEEDED) in seen
    assert ("async", second.id, JobStatus.SUCCEEDED) in seen
    runner_wide_seen = sorted(s[1:] for s in seen if s[0] == "runner")
    assert runner_wide_seen == sorted(
        [(first.id, JobStatus.SUCCEEDED), (second.id, JobStatus.SUCCEEDED)]
    )
    assert "on_complete callback" in caplog.text


async def test_max_concurrency_bounds_parallel_executions(make_runner: RunnerFactory) -> None:
    running = 0
    peak = 0
    release = asyncio.Event()

    async def tracked(params: dict[str, Any]) -> dict[str, Any]:
        nonlocal running, peak
        running += 1
        peak = max(peak, running)
        await release.wait()
        running -= 1
        return {}

    runner = make_runner(execute=tracked, max_concurrency=2)
    jobs = [await runner.submit({"n": n}) for n in range(6)]
    await wait_until(lambda: running == 2)
    await asyncio.sleep(0.05)  # give a third job every chance to (wrongly) start
    assert peak == 2
    assert sum(runner.get(j.id).status is JobStatus.QUEUED for j in jobs) == 4
    release.set()
    for job in jobs:
        assert (await runner.wait(job.id, 5)).status is JobStatus.SUCCEEDED
    assert peak == 2


async def test_submit_validates_before_storing_anything(make_runner: RunnerFactory) -> None:
    store = MemoryJobStore()
    runner = make_runner(store)
    with pytest.raises(ValueError, match="webhook_secret is required"):
        await runner.submit({}, webhook_url="https://example.test/hook")
    with pytest.raises(ValueError, match="without webhook_url"):
        await runner.submit({}, webhook_secret=SECRET)
    with pytest.raises(ValueError, match="absolute http"):
        await runner.submit({}, webhook_url="ftp://example.test/", webhook_secret=SECRET)
    with pytest.raises(ValueError, match="absolute http"):
        await runner.submit({}, webhook_url="/relative", webhook_secret=SECRET)
    with pytest.raises(TypeError, match="JSON-serializable"):
        await runner.submit({"messages": [object()]})
    with pytest.raises(TypeError, match="on_complete"):
        await runner.submit({}, on_complete="not callable")  # type: ignore[arg-type]
    assert store.list_jobs() == []


async def test_unknown_job_and_wait_timeout(make_runner: RunnerFactory) -> None:
    forever = asyncio.Event()

    async def stuck(params: dict[str, Any]) -> dict[str, Any]:
        await forever.wait()
        return {}

    runner = make_runner(execute=stuck)
    with pytest.raises(JobNotFoundError, match="no job 'nope'"):
        runner.get("nope")
    with pytest.raises(JobNotFoundError):
        await runner.wait("nope", 1)
    job = await runner.submit({})
    with pytest.raises(TimeoutError, match=r"not finished after 0\.05s"):
        await runner.wait(job.id, timeout=0.05)
    assert runner.get(job.id).status is JobStatus.RUNNING  # a timeout does not cancel the job


async def test_closed_runner_refuses_work() -> None:
    async with JobRunner(MemoryJobStore(), echo) as runner:
        job = await runner.submit({"a": 1})
        await runner.wait(job.id, 5)
    with pytest.raises(JobRunnerClosedError, match="create a new one"):
        await runner.submit({"a": 2})
    with pytest.raises(JobRunnerClosedError):
        await runner.start()
    assert runner.get(job.id).status is JobStatus.SUCCEEDED  # the store stays readable


# --------------------------------------------------------------------------- delivery


async def test_retries_until_delivered_and_the_receiver_processes_each_job_once(
    make_runner: RunnerFactory, receiver: Receiver
) -> None:
    """Two 500s before processing, then a lost acknowledgement: four POSTs per delivery, one
    processing per job, thanks to the stable delivery id."""
    receiver.fail_before_processing = 2
    receiver.fail_after_processing = 1
    runner = make_runner()
    jobs = [
        await runner.submit({"n": n}, webhook_url=receiver.url, webhook_secret=SECRET)
        for n in range(3)
    ]
    for job in jobs:
        [delivery] = await runner.wait_deliveries(job.id, timeout=10)
        assert delivery.status is DeliveryStatus.DELIVERED
        assert delivery.attempts == 4
        requests = receiver.requests_for(delivery.id)
        assert [r.status for r in requests] == [500, 500, 500, 200]
        assert all(r.verified for r in requests)
        assert len({r.body for r in requests}) == 1  # the same bytes every time
        assert json.loads(requests[0].body)["job"]["result"] == {
            "object": "chat.completion",
            "echo": {"n": jobs.index(job)},
        }
    assert len(receiver.received) == 12
    assert receiver.job_process_count == {job.id: 1 for job in jobs}


@pytest.mark.parametrize("status", [408, 429, 502, 503])
async def test_transient_statuses_are_retried(
    make_runner: RunnerFactory, receiver: Receiver, status: int
) -> None:
    receiver.respond = lambda _id, nth: status if nth == 1 else None
    runner = make_runner()
    job = await runner.submit({}, webhook_url=receiver.url, webhook_secret=SECRET)
    [delivery] = await runner.wait_deliveries(job.id, timeout=10)
    assert (delivery.status, delivery.attempts) == (DeliveryStatus.DELIVERED, 2)


@pytest.mark.parametrize("status", [301, 400, 401, 404, 410, 422])
async def test_permanent_failures_are_not_retried(
    make_runner: RunnerFactory, receiver: Receiver, status: int
) -> None:
    receiver.respond = lambda _id, _nth: status
    runner = make_runner()
    job = await runner.submit({}, webhook_url=receiver.url, webhook_secret=SECRET)
    [delivery] = await runner.wait_deliveries(job.id, timeout=10)
    assert delivery.status is DeliveryStatus.FAILED
    assert delivery.attempts == 1
    assert delivery.last_error == f"HTTP {status} from the receiver: receiver says no"
    assert len(receiver.received) == 1


async def test_a_delivery_that_keeps_failing_is_marked_failed_after_the_limit(
    make_runner: RunnerFactory, receiver: Receiver
) -> None:
    receiver.respond = lambda _id, _nth: 500
    runner = make_runner(delivery_policy=replace(FAST, max_attempts=3))
    job = await runner.submit({}, webhook_url=receiver.url, webhook_secret=SECRET)
    [delivery] = await runner.wait_deliveries(job.id, timeout=10)
    assert (delivery.status, delivery.attempts) == (DeliveryStatus.FAILED, 3)
    assert delivery.last_error is not None and delivery.last_error.startswith("HTTP 500")
    assert len(receiver.received) == 3
    assert runner.get(job.id).status is JobStatus.SUCCEEDED  # the job itself still succeeded


async def test_connection_errors_are_retried_then_failed(make_runner: RunnerFactory) -> None:
    runner = make_runner(delivery_policy=replace(FAST, max_attempts=2))
    url = f"http://127.0.0.1:{free_port()}/nobody-listens"
    job = await runner.submit({}, webhook_url=url, webhook_secret=SECRET)
    [delivery] = await runner.wait_deliveries(job.id, timeout=10)
    assert (delivery.status, delivery.attempts) == (DeliveryStatus.FAILED, 2)
    assert delivery.last_error is not None and "ConnectError" in delivery.last_error


async def test_timeouts_are_retried(make_runner: RunnerFactory) -> None:
    """A receiver that accepts the connection and never answers."""
    hung: list[asyncio.StreamWriter] = []

    async def never_answer(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        hung.append(writer)

    server = await asyncio.start_server(never_answer, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    try:
        runner = make_runner(delivery_policy=replace(FAST, max_attempts=2, timeout=0.1))
        job = await runner.submit(
            {}, webhook_url=f"http://127.0.0.1:{port}/", webhook_secret=SECRET
        )
        [delivery] = await runner.wait_deliveries(job.id, timeout=10)
        assert (delivery.status, delivery.attempts) == (DeliveryStatus.FAILED, 2)
        assert delivery.last_error == "ReadTimeout: no answer within 0.1s"
        assert len(hung) == 2
    finally:
        for writer in hung:
            writer.close()
        server.close()
        await server.wait_closed()


async def test_default_store_lives_in_the_state_dir(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("GONKA_MUX_STATE_DIR", str(tmp_path / "state"))
    async with JobRunner(None, echo) as runner:
        job = await runner.submit({"q": 1})
        await runner.wait(job.id, 5)
    reopened = SQLiteJobStore(tmp_path / "state" / "jobs.sqlite3")
    try:
        stored = reopened.get_job(job.id)
        assert stored is not None and stored.status is JobStatus.SUCCEEDED
    finally:
        reopened.close()


def test_policy_backoff_is_exponential_capped_and_honours_retry_after() -> None:
    policy = DeliveryPolicy(initial=1.0, max_delay=30.0, jitter=0)
    assert [policy.delay_for(n) for n in range(1, 7)] == [1.0, 2.0, 4.0, 8.0, 16.0, 30.0]
    assert policy.delay_for(2, retry_after=10.0) == 10.0
    assert policy.delay_for(2, retry_after=1e9) == 30.0  # Retry-After is capped too
    jittered = DeliveryPolicy(initial=1.0, max_delay=30.0, jitter=0.5)
    assert all(4.0 <= jittered.delay_for(3) <= 4.5 for _ in range(50))
    with pytest.raises(ValueError, match="max_attempts"):
        DeliveryPolicy(max_attempts=0)
    with pytest.raises(ValueError, match="timeout"):
        DeliveryPolicy(timeout=0)


async def test_retry_after_header_sets_the_next_attempt(
    make_runner: RunnerFactory, receiver: Receiver
) -> None:
    receiver.respond = lambda _id, _nth: 429
    receiver.extra_headers = {"Retry-After": "120"}
    runner = make_runner()
    job = await runner.submit({}, webhook_url=receiver.url, webhook_secret=SECRET)
    await runner.wait(job.id, 5)
    await wait_until(lambda: runner.deliveries(job.id)[0].last_error is not None)
    [delivery] = runner.deliveries(job.id)
    assert delivery.status is DeliveryStatus.PENDING and delivery.attempts == 1
    assert delivery.next_attempt_at - delivery.updated_at >= 119.0


# --------------------------------------------------------------------------- restarts


async def test_close_keeps_work_and_a_new_runner_finishes_it(
    tmp_path: Path, make_runner: RunnerFactory, receiver: Receiver
) -> None:
    path = tmp_path / "jobs.db"
    started: list[int] = []

    async def blocks(params: dict[str, Any]) -> dict[str, Any]:
        started.append(params["n"])
        await asyncio.Event().wait()
        return {}

    first_store = SQLiteJobStore(path)
    first = make_runner(first_store, blocks, max_concurrency=2)
    jobs = [
        await first.submit({"n": n}, webhook_url=receiver.url, webhook_secret=SECRET)
        for n in range(3)
    ]
    await wait_until(lambda: len(started) == 2)
    await first.aclose()
    first_store.close()

    second_store = SQLiteJobStore(path)
    statuses = sorted(second_store.get_job(j.id).status.value for j in jobs)  # type: ignore[union-attr]
    assert statuses == ["queued", "running", "running"]
    second = make_runner(second_store, echo)
    await second.start()
    for n, job in enumerate(jobs):
        done = await second.wait(job.id, timeout=10)
        assert done.status is JobStatus.SUCCEEDED
        assert done.result == {"object": "chat.completion", "echo": {"n": n}}
        assert done.attempts == (2 if n < 2 else 1)  # the interrupted ones ran again
        [delivery] = await second.wait_deliveries(job.id, timeout=10)
        assert delivery.status is DeliveryStatus.DELIVERED
    assert receiver.job_process_count == {job.id: 1 for job in jobs}
    assert all(r.verified for r in receiver.received)  # the stored secret still signs
    second_store.close()


async def test_restart_continues_the_attempt_count(
    tmp_path: Path, make_runner: RunnerFactory, receiver: Receiver
) -> None:
    receiver.respond = lambda _id, _nth: 500
    path = tmp_path / "jobs.db"
    # Retry at once after attempt 1, then wait an hour: the runner is stopped during that hour.
    slow_after_two = DeliveryPolicy(
        max_attempts=4, wait=lambda state: 0.0 if state.attempt_number < 2 else 3600.0
    )
    first_store = SQLiteJobStore(path)
    first = make_runner(first_store, delivery_policy=slow_after_two)
    job = await first.submit({}, webhook_url=receiver.url, webhook_secret=SECRET)
    await first.wait(job.id, 5)
    await wait_until(lambda: len(receiver.received) == 2)
    # ...and until the runner has recorded the answer to the second POST.
    await wait_until(lambda: first.deliveries(job.id)[0].updated_at >= receiver.received[1].at)
    await first.aclose()
    first_store.close()
    assert len(receiver.received) == 2

    second_store = SQLiteJobStore(path)
    [delivery] = second_store.deliveries_for(job.id)
    assert (delivery.status, delivery.attempts) == (DeliveryStatus.PENDING, 2)
    # An operator's "retry now": bring the next attempt forward through the store.
    second_store.update_delivery(replace(delivery, next_attempt_at=time.time()))
    second = make_runner(second_store, delivery_policy=replace(FAST, max_attempts=4))
    await second.start()
    [delivery] = await second.wait_deliveries(job.id, timeout=10)
    assert (delivery.status, delivery.attempts) == (DeliveryStatus.FAILED, 4)
    assert len(receiver.received) == 4  # two more, not four more
    assert len({r.delivery_id for r in receiver.received}) == 1
    second_store.close()


async def test_a_job_interrupted_too_often_is_failed_not_rerun(
    make_runner: RunnerFactory, receiver: Receiver
) -> None:
    store = MemoryJobStore()
    now = time.time()
    store.add_job(
        Job(id="crashy", params={}, created_at=now, updated_at=now, webhook_url=receiver.url)
    )
    for _ in range(3):  # three runs, each ended by a (simulated) crash
        store.mark_running("crashy", now)
    calls: list[dict[str, Any]] = []

    async def record(params: dict[str, Any]) -> dict[str, Any]:
        calls.append(params)
        return {}

    runner = make_runner(store, record, max_job_attempts=3)
    await runner.start()
    done = await runner.wait("crashy", timeout=5)
    assert done.status is JobStatus.FAILED
    assert done.error is not None and "interrupted 3 times" in done.error
    assert calls == []
    # Without a secret the delivery cannot be signed: it is failed, not sent unsigned.
    [delivery] = await runner.wait_deliveries("crashy", timeout=5)
    assert delivery.status is DeliveryStatus.FAILED
    assert receiver.received == []


# --------------------------------------------------------------------------- secrets


async def test_secret_and_url_token_never_reach_logs_reprs_or_errors(
    make_runner: RunnerFactory, receiver: Receiver, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG, logger="gonka_mux")
    token = "tok_should_not_be_logged"
    receiver.fail_before_processing = 1

    async def sometimes_broken(params: dict[str, Any]) -> dict[str, Any]:
        if params["broken"]:
            raise RuntimeError("upstream said no")
        return {"ok": True}

    runner = make_runner(execute=sometimes_broken, delivery_policy=replace(FAST, max_attempts=2))
    good = await runner.submit(
        {"broken": False}, webhook_url=f"{receiver.url}?token={token}", webhook_secret=SECRET
    )
    bad = await runner.submit(
        {"broken": True},
        webhook_url=f"http://user:{token}@127.0.0.1:{free_port()}/hook?token={token}",
        webhook_secret=SECRET,
    )
    texts = [repr(runner), repr(runner.store)]
    for job in (good, bad):
        texts.append(repr(await runner.wait(job.id, 5)))
        for delivery in await runner.wait_deliveries(job.id, timeout=10):
            texts += [repr(delivery), delivery.body, delivery.last_error or ""]
    texts.append(caplog.text)
    texts += [str(r.args) for r in caplog.records]
    assert "failed after 2 attempt(s)" in caplog.text  # the logs did speak
    assert "retrying" in caplog.text
    for text in texts:
        assert SECRET not in text
        assert token not in text
    assert receiver.job_process_count == {good.id: 1}


@pytest.mark.slow
async def test_jobs_and_deliveries_survive_sigkill(
    tmp_path: Path, make_runner: RunnerFactory, receiver: Receiver
) -> None:
    """A real process is killed mid-job and mid-retry; a new runner on its file finishes both."""
    receiver.fail_before_processing = 1
    path = tmp_path / "jobs.db"
    child = await asyncio.create_subprocess_exec(
        sys.executable,
        str(Path(__file__).with_name("webhook_crash_child.py")),
        str(path),
        receiver.url,
        SECRET,
        stdout=asyncio.subprocess.PIPE,
    )
    try:
        assert child.stdout is not None
        line = await asyncio.wait_for(child.stdout.readline(), timeout=60)
    finally:
        child.send_signal(signal.SIGKILL)
        await child.wait()
    ids = json.loads(line)
    assert child.returncode == -signal.SIGKILL
    [first_post] = receiver.received
    assert first_post.status == 500

    async def rerun(params: dict[str, Any]) -> dict[str, Any]:
        return {"n": params["n"], "by": "survivor"}

    store = SQLiteJobStore(path)
    runner = make_runner(store, rerun)
    await runner.start()
    blocked = await runner.wait(ids["blocked"], timeout=10)
    assert blocked.status is JobStatus.SUCCEEDED
    assert blocked.result == {"n": 0, "by": "survivor"}
    assert blocked.attempts == 2
    quick = runner.get(ids["quick"])
    assert quick.result == {"n": 1, "by": "child"} and quick.attempts == 1  # not re-run
    [quick_delivery] = await runner.wait_deliveries(quick.id, timeout=10)
    assert quick_delivery.id == first_post.delivery_id  # the same delivery, continued
    assert (quick_delivery.status, quick_delivery.attempts) == (DeliveryStatus.DELIVERED, 2)
    [blocked_delivery] = await runner.wait_deliveries(blocked.id, timeout=10)
    assert blocked_delivery.status is DeliveryStatus.DELIVERED
    assert all(r.verified for r in receiver.received)
    assert receiver.job_process_count == {quick.id: 1, blocked.id: 1}
    store.close()
