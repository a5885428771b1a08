"""Jobs and webhook deliveries on a real PostgreSQL: the store suite on SQLite and PostgreSQL,
the runner suite on PostgreSQL, claims and leases, two runners in one process and one in a
process killed with SIGKILL mid-job (the job completes, its webhook reaches a real loopback
receiver exactly once), the shared secret key, and passwords kept out of text."""

from __future__ import annotations

import asyncio
import json
import logging
import os
import secrets
import signal
import sys
import textwrap
import threading
import time
import uuid
from collections import Counter
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import psycopg
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "webhooks"))  # webhook_receiver

from tests._postgres import PostgresServer, free_port

# The runner suite's backend-independent cases, on a PostgreSQL store (this module's
# make_runner), and the store suite's, on SQLite and PostgreSQL (this module's store fixture).
from tests.webhooks.test_webhook_jobs import (  # noqa: F401
    FAST,
    RunnerFactory,
    echo,
    test_a_delivery_that_keeps_failing_is_marked_failed_after_the_limit,
    test_execute_error_fails_the_job_and_sends_job_failed,
    test_max_concurrency_bounds_parallel_executions,
    test_on_complete_sync_async_and_runner_wide,
    test_permanent_failures_are_not_retried,
    test_results_must_be_json_objects,
    test_retries_until_delivered_and_the_receiver_processes_each_job_once,
    test_secret_and_url_token_never_reach_logs_reprs_or_errors,
    test_submit_returns_at_once_and_the_job_runs_in_the_background,
    test_submit_validates_before_storing_anything,
    test_transient_statuses_are_retried,
    test_unknown_job_and_wait_timeout,
)
from tests.webhooks.test_webhook_store import (  # noqa: F401
    make_delivery,
    make_job,
    test_duplicate_job_id_is_refused,
    test_finish_stores_outcome_and_delivery_together,
    test_job_round_trip_keeps_everything_including_the_secret,
    test_pending_deliveries_soonest_first_and_updates_persist,
    test_purge_removes_settled_old_jobs_only,
    test_reprs_never_show_the_secret_or_url_token,
    test_returned_jobs_are_copies,
    test_running_counts_attempts,
    test_unfinished_jobs_oldest_first,
    test_unserializable_params_are_refused_and_nothing_is_stored,
)
from webhook_receiver import SECRET, Receiver, running_receiver

from gonka_mux._postgres import close_pools, sync_pool
from gonka_mux.errors import StoreUnavailableError
from gonka_mux.webhooks import (
    DeliveryStatus,
    JobRunner,
    JobStatus,
    JobStore,
    JobStoreError,
    SQLiteJobStore,
)
from gonka_mux.webhooks.feature import JobsFeature
from gonka_mux.webhooks.postgres import KEY_ENV, PostgresJobStore
from gonka_mux.webhooks.store import JobAlreadyFinishedError, open_job_store

PASSWORD = "s3cret-jobs-pass-do-not-leak"


@pytest.fixture(autouse=True)
def _own_state_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    # The default key file lives in the state dir; one key per test, shared by its processes.
    monkeypatch.setenv("GONKA_MUX_STATE_DIR", str(tmp_path / "state"))
    monkeypatch.setenv(KEY_ENV, secrets.token_hex(32))
    yield
    close_pools()


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    with running_receiver() as state:
        yield state


@pytest.fixture(params=["sqlite", "postgres"])
def store(
    request: pytest.FixtureRequest, tmp_path: Path, postgres_server: PostgresServer
) -> Iterator[JobStore]:
    backend: JobStore = (
        SQLiteJobStore(tmp_path / "jobs.db")
        if request.param == "sqlite"
        else PostgresJobStore(postgres_server.fresh_database())
    )
    yield backend
    backend.close()


@pytest.fixture
async def make_runner(postgres_server: PostgresServer) -> AsyncIterator[RunnerFactory]:
    """Runners whose default store is a PostgreSQL store on a fresh database."""
    runners: list[JobRunner] = []

    def factory(store: JobStore | None = None, execute: Any = echo, **kwargs: Any) -> JobRunner:
        kwargs.setdefault("delivery_policy", FAST)
        kwargs.setdefault("poll_interval", 0.05)
        if store is None:
            store = PostgresJobStore(postgres_server.fresh_database())
        runner = JobRunner(store, execute, **kwargs)
        runners.append(runner)
        return runner

    yield factory
    for runner in runners:
        await runner.aclose()


async def wait_until(predicate: Any, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError("condition not reached in time")
        await asyncio.sleep(0.02)


# --------------------------------------------------------------------------- the store


def test_open_job_store_picks_the_backend(tmp_path: Path, postgres_url: str) -> None:
    pg = open_job_store(postgres_url)
    assert isinstance(pg, PostgresJobStore) and pg.shared
    sqlite = open_job_store(tmp_path / "jobs.db")
    assert isinstance(sqlite, SQLiteJobStore) and not sqlite.shared
    sqlite.close()
    with pytest.raises(ValueError, match="postgresql://"):
        PostgresJobStore("jobs.db")


def test_a_failed_finish_changes_nothing_on_postgres(postgres_url: str) -> None:
    store = PostgresJobStore(postgres_url)
    store.add_job(make_job())
    store.add_job(make_job("j2", created=2.0))
    store.finish_job(
        "j1", status=JobStatus.SUCCEEDED, result={}, error=None, now=3.0,
        delivery=make_delivery("d1"),
    )  # fmt: skip
    with pytest.raises(psycopg.errors.UniqueViolation):  # the delivery insert fails: rolled back
        store.finish_job(
            "j2", status=JobStatus.FAILED, result=None, error="x", now=4.0,
            delivery=make_delivery("d1", job_id="j2"),
        )  # fmt: skip
    job = store.get_job("j2")
    assert job is not None and job.status is JobStatus.QUEUED
    assert store.deliveries_for("j2") == []


def test_secrets_are_sealed_at_rest_and_the_key_must_match(postgres_url: str) -> None:
    store = PostgresJobStore(postgres_url)
    store.add_job(make_job())
    with psycopg.connect(postgres_url) as conn:
        (stored,) = conn.execute("SELECT webhook_secret FROM gonka_mux_jobs").fetchone()
    assert stored.startswith("enc1:") and SECRET_OF_MAKE_JOB not in stored
    same_key = PostgresJobStore(postgres_url, secret_key=os.environ[KEY_ENV])
    job = same_key.get_job("j1")
    assert job is not None and job.webhook_secret.reveal() == SECRET_OF_MAKE_JOB  # type: ignore[union-attr]
    other_host = PostgresJobStore(postgres_url, secret_key=secrets.token_bytes(32))
    with pytest.raises(JobStoreError, match="same key") as info:
        other_host.get_job("j1")
    assert os.environ[KEY_ENV] not in str(info.value)
    with pytest.raises(ValueError, match="64 hex"):
        PostgresJobStore(postgres_url, secret_key="too short")


def test_without_a_configured_key_a_key_file_is_made_and_reused(
    postgres_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog
) -> None:
    monkeypatch.delenv(KEY_ENV)
    key_file = tmp_path / "state" / "jobs-postgres.key"
    first = PostgresJobStore(postgres_url)
    first.add_job(make_job())
    assert key_file.stat().st_mode & 0o777 == 0o600 and len(key_file.read_bytes()) == 32
    assert "every host" in caplog.text
    job = PostgresJobStore(postgres_url).get_job("j1")  # the same file: the same key
    assert job is not None and job.webhook_secret.reveal() == SECRET_OF_MAKE_JOB  # type: ignore[union-attr]
    copied = PostgresJobStore(postgres_url, secret_key=key_file.read_bytes().hex())
    assert copied.get_job("j1") is not None  # a host given the file's key as hex reads it


SECRET_OF_MAKE_JOB = "whsec_store_secret_do_not_leak"


def test_claims_and_leases(postgres_url: str) -> None:
    a, b = PostgresJobStore(postgres_url), PostgresJobStore(postgres_url)
    a.add_job(make_job())
    assert a.claimable_jobs(100.0, 10) == ["j1"]
    claimed = a.claim_job("j1", "A", now=100.0, lease=10.0)
    assert claimed is not None and claimed.id == "j1"
    assert b.claim_job("j1", "B", now=105.0, lease=10.0) is None  # A's lease runs to 110
    assert b.claimable_jobs(105.0, 10) == []
    assert a.claim_job("j1", "A", now=105.0, lease=10.0) is not None  # its own claim: renewed
    assert a.renew_job_lease("j1", "A", until=120.0)
    assert b.claim_job("j1", "B", now=119.0, lease=10.0) is None
    taken = b.claim_job("j1", "B", now=121.0, lease=10.0)  # A's lease expired: A is dead
    assert taken is not None
    assert not a.renew_job_lease("j1", "A", until=200.0)  # A learns it lost the job
    a.mark_running("j1", 121.0)
    b.finish_job(
        "j1", status=JobStatus.SUCCEEDED, result={"by": "B"}, error=None, now=122.0,
        delivery=make_delivery("d1"),
    )  # fmt: skip
    with pytest.raises(JobAlreadyFinishedError):  # A finishing late records nothing
        a.finish_job(
            "j1", status=JobStatus.SUCCEEDED, result={"by": "A"}, error=None, now=123.0,
            delivery=make_delivery("d2"),
        )  # fmt: skip
    job = a.get_job("j1")
    assert job is not None and job.result == {"by": "B"}
    assert [d.id for d in a.deliveries_for("j1")] == ["d1"]
    assert a.claim_job("j1", "C", now=500.0, lease=1.0) is None  # finished: nobody claims it
    # Deliveries: due and unheld ones are offered; one claim at a time.
    assert a.claimable_deliveries(5.0, 10) == []  # not due before next_attempt_at (10.0)
    assert a.claimable_deliveries(10.0, 10) == ["d1"]
    assert a.claim_delivery("d1", "A", now=10.0, lease=5.0) is not None
    assert b.claim_delivery("d1", "B", now=12.0, lease=5.0) is None
    assert b.claimable_deliveries(12.0, 10) == []
    a.release_claims("A")  # a runner closing hands its work over at once
    assert b.claim_delivery("d1", "B", now=12.0, lease=5.0) is not None


def test_exactly_one_of_many_concurrent_claims_wins(postgres_url: str) -> None:
    store = PostgresJobStore(postgres_url)
    store.add_job(make_job())
    barrier = threading.Barrier(8)
    winners: list[str] = []

    def claim(owner: str) -> None:
        barrier.wait()
        if store.claim_job("j1", owner, time.time(), 30.0) is not None:
            winners.append(owner)

    threads = [threading.Thread(target=claim, args=(f"r{i}",)) for i in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(winners) == 1


# --------------------------------------------------------------------------- runners


async def test_two_runners_share_the_work_and_each_webhook_goes_out_once(
    postgres_url: str, receiver: Receiver
) -> None:
    ran: Counter[str] = Counter()
    by: Counter[str] = Counter()

    def execute_as(name: str) -> Any:
        async def execute(params: dict[str, Any]) -> dict[str, Any]:
            ran[params["n"]] += 1
            by[name] += 1
            await asyncio.sleep(0.05)
            return {"n": params["n"], "by": name}

        return execute

    options = {"delivery_policy": FAST, "poll_interval": 0.05, "max_concurrency": 2}
    first = JobRunner(PostgresJobStore(postgres_url), execute_as("first"), **options)
    second = JobRunner(PostgresJobStore(postgres_url), execute_as("second"), **options)
    async with first, second:
        jobs = [
            await first.submit({"n": n}, webhook_url=receiver.url, webhook_secret=SECRET)
            for n in range(20)
        ]
        for job in jobs:
            done = await second.wait(job.id, timeout=60)  # finished by either runner
            assert done.status is JobStatus.SUCCEEDED and done.attempts == 1
            [delivery] = await second.wait_deliveries(job.id, timeout=60)
            assert delivery.status is DeliveryStatus.DELIVERED and delivery.attempts == 1
    assert ran == Counter({n: 1 for n in range(20)})  # every job ran once
    assert by["first"] > 0 and by["second"] > 0  # the second runner took work it never saw
    assert receiver.job_process_count == {job.id: 1 for job in jobs}
    assert len(receiver.received) == 20 and all(r.verified for r in receiver.received)


CHILD = textwrap.dedent(
    """
    import asyncio, json, sys
    from gonka_mux.webhooks import JobRunner, JobStatus
    from gonka_mux.webhooks.store import open_job_store

    async def main(url, hook, secret):
        store = open_job_store(url)

        async def execute(params):
            await asyncio.Event().wait()  # never finishes: the process is killed first

        # A 3 s lease, renewed each second: a child stalled by a busy machine keeps its job.
        runner = JobRunner(store, execute, lease=3.0, poll_interval=0.05)
        job = await runner.submit({"n": 7}, webhook_url=hook, webhook_secret=secret)
        while store.get_job(job.id).status is not JobStatus.RUNNING:
            await asyncio.sleep(0.01)
        print(json.dumps({"job": job.id}), flush=True)
        await asyncio.Event().wait()

    asyncio.run(main(*sys.argv[1:4]))
    """
)


@pytest.mark.slow
async def test_a_job_whose_runner_is_killed_is_finished_by_another_and_announced_once(
    postgres_url: str, receiver: Receiver
) -> None:
    ran: list[str] = []

    async def survivor(params: dict[str, Any]) -> dict[str, Any]:
        ran.append("survivor")
        return {"n": params["n"], "by": "survivor"}

    options = {"delivery_policy": FAST, "poll_interval": 0.05, "lease": 3.0}
    # The environment carries the shared secret key (KEY_ENV) to the child, as to another host.
    child = await asyncio.create_subprocess_exec(
        sys.executable, "-c", CHILD, postgres_url, receiver.url, SECRET,
        stdout=asyncio.subprocess.PIPE,
    )  # fmt: skip
    async with (
        JobRunner(PostgresJobStore(postgres_url), survivor, **options) as first,
        JobRunner(PostgresJobStore(postgres_url), survivor, **options) as second,
    ):
        try:
            assert child.stdout is not None
            line = await asyncio.wait_for(child.stdout.readline(), timeout=60)
            job_id = json.loads(line)["job"]
            # The child renews its lease: for longer than a lease nobody else takes the job.
            await asyncio.sleep(4.5)
            assert ran == []
            assert first.get(job_id).status is JobStatus.RUNNING
        finally:
            child.send_signal(signal.SIGKILL)
            await child.wait()
        assert child.returncode == -signal.SIGKILL
        done = await first.wait(job_id, timeout=60)
        assert done.status is JobStatus.SUCCEEDED
        assert done.result == {"n": 7, "by": "survivor"} and done.attempts == 2
        [delivery] = await second.wait_deliveries(job_id, timeout=60)
        assert delivery.status is DeliveryStatus.DELIVERED
    assert ran == ["survivor"]  # one of the two survivors ran it, once
    assert receiver.job_process_count == {job_id: 1}
    assert len(receiver.requests_for(delivery.id)) == len(receiver.received) == 1


async def test_jobs_feature_takes_a_postgres_path(postgres_url: str) -> None:
    feature = JobsFeature.from_config(
        {"webhooks": {"path": postgres_url, "lease": 5, "poll_interval": 0.5}}, "<dict>"
    )
    assert feature is not None
    feature._execute = echo  # what install() wires to the Multiplexer
    runner = await feature.start()
    try:
        assert isinstance(runner.store, PostgresJobStore)
        job = await runner.submit({"x": 1})
        assert (await runner.wait(job.id, timeout=30)).status is JobStatus.SUCCEEDED
    finally:
        await feature.aclose()


# --------------------------------------------------------------------------- secrets


def test_password_never_in_reprs_errors_or_logs(
    postgres_server: PostgresServer, postgres_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    role = "r_" + uuid.uuid4().hex[:10]
    with psycopg.connect(postgres_url, autocommit=True) as conn:
        conn.execute(f"CREATE ROLE {role} LOGIN PASSWORD '{PASSWORD}'")
        conn.execute(f"GRANT ALL ON SCHEMA public TO {role}")
    parts = urlsplit(postgres_url)
    url = urlunsplit(parts._replace(netloc=f"{role}:{PASSWORD}@127.0.0.1:{parts.port}"))
    store = PostgresJobStore(url)
    store.add_job(make_job())  # the URL with a password works
    runner = JobRunner(store, echo)
    assert PASSWORD not in repr(store) + repr(runner) and "***" in repr(store)
    dead = urlunsplit(parts._replace(netloc=f"{role}:{PASSWORD}@127.0.0.1:{free_port()}"))
    sync_pool(dead, timeout=1.0)  # the pool's wait, short for this test
    with pytest.raises(StoreUnavailableError) as info:
        PostgresJobStore(dead).get_job("j1")
    assert info.value.backend == "postgresql"
    assert PASSWORD not in str(info.value) and info.value.__cause__ is None
    assert PASSWORD not in caplog.text


# --------------------------------------------------------------------------- outage


@pytest.mark.slow
async def test_a_runner_rides_out_a_database_outage(
    postgres_server: PostgresServer, postgres_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="gonka_mux.webhooks")
    sync_pool(postgres_url, timeout=2.0)  # the pool's wait while the database is away, short
    async with JobRunner(PostgresJobStore(postgres_url), echo, poll_interval=0.1) as runner:
        before = await runner.submit({"n": 1})
        assert (await runner.wait(before.id, timeout=30)).status is JobStatus.SUCCEEDED
        await asyncio.to_thread(postgres_server.stop)
        try:
            with pytest.raises(StoreUnavailableError):  # typed and retryable, not a driver error
                await runner.submit({"n": 2})
            await wait_until(lambda: "job store unavailable" in caplog.text)
            await asyncio.sleep(1.0)  # several more polls fail meanwhile
        finally:
            await asyncio.to_thread(postgres_server.start)
        await wait_until(lambda: "reachable again" in caplog.text, timeout=120)
        after = await runner.submit({"n": 3})
        assert (await runner.wait(after.id, timeout=30)).status is JobStatus.SUCCEEDED
    warnings = [r for r in caplog.records if "job store unavailable" in r.getMessage()]
    assert len(warnings) == 1  # said once, not once per poll
