"""mux.submit(): background jobs through the real Multiplexer, signed webhooks, restart."""

from __future__ import annotations

import asyncio
import json

from webhook_receiver import SECRET, Receiver

from gonka_mux import AsyncMultiplexer, Multiplexer
from gonka_mux.testing import FakeBackend, Faults, Reply
from gonka_mux.webhooks import DeliveryPolicy, JobStatus, SQLiteJobStore

MSG = [{"role": "user", "content": "summarise the report"}]
FAST = DeliveryPolicy(max_attempts=5, initial=0.01, max_delay=0.05, jitter=0.0, timeout=2.0)


async def test_submit_runs_in_background_and_delivers_a_signed_webhook(tmp_path, receiver):
    receiver.fail_before_processing = 2  # the first two POSTs of each delivery fail
    with FakeBackend(models=["m"], replies=[Reply(content="the summary")]) as fb:
        mux = AsyncMultiplexer()
        mux.add_endpoint(fb.url, models=["m"], name="fb")
        mux.configure_jobs(path=tmp_path / "jobs.db", delivery_policy=FAST)
        done: list[str] = []
        job = await mux.submit(
            model="m",
            messages=MSG,
            max_tokens=32,
            webhook_url=receiver.url,
            webhook_secret=SECRET,
            on_complete=lambda j: done.append(j.id),
        )
        assert job.id and job.status in (JobStatus.QUEUED, JobStatus.RUNNING)
        finished = await mux.jobs.wait(job.id, timeout=10)
        assert finished.status == JobStatus.SUCCEEDED
        assert finished.result["choices"][0]["message"]["content"] == "the summary"
        await mux.jobs.wait_deliveries(job.id, timeout=10)
        assert done == [job.id]
        assert receiver.job_process_count[job.id] == 1  # exactly once, despite 3 POSTs
        payload = next(iter(receiver.processed.values()))
        assert payload["job"]["id"] == job.id
        assert all(r.verified for r in receiver.received)
        assert len(receiver.received) == 3
        assert mux.jobs.get(job.id).status == JobStatus.SUCCEEDED
        # the request went through the router like any other
        assert fb.requests[-1].json["model"] == "m"
        await mux.aclose()


async def test_pending_job_resumes_after_restart(tmp_path, receiver):
    with FakeBackend(models=["m"], faults=Faults(latency=30)) as slow:
        mux = AsyncMultiplexer()
        mux.add_endpoint(slow.url, models=["m"], name="slow")
        mux.configure_jobs(path=tmp_path / "jobs.db", delivery_policy=FAST)
        job = await mux.submit(
            model="m", messages=MSG, webhook_url=receiver.url, webhook_secret=SECRET
        )
        await asyncio.sleep(0.2)
        await mux.aclose()  # the process stops with the job still running
    probe = SQLiteJobStore(tmp_path / "jobs.db")
    stored = probe.get_job(job.id)
    probe.close()
    assert stored.status in (JobStatus.QUEUED, JobStatus.RUNNING)
    with FakeBackend(models=["m"], replies=[Reply(content="after restart")]) as fb:
        mux2 = AsyncMultiplexer()
        mux2.add_endpoint(fb.url, models=["m"], name="fb")
        mux2.configure_jobs(path=tmp_path / "jobs.db", delivery_policy=FAST)
        runner = await mux2.start_jobs()
        finished = await runner.wait(job.id, timeout=10)
        assert finished.result["choices"][0]["message"]["content"] == "after restart"
        await runner.wait_deliveries(job.id, timeout=10)
        assert receiver.job_process_count[job.id] == 1
        await mux2.aclose()


def test_sync_submit_and_stream_rejected(tmp_path, receiver: Receiver):
    with FakeBackend(models=["m"]) as fb, Multiplexer() as mux:
        mux.add_endpoint(fb.url, models=["m"], name="fb")
        mux.configure_jobs(path=tmp_path / "jobs.db", delivery_policy=FAST)
        job = mux.submit(model="m", messages=MSG, webhook_url=receiver.url, webhook_secret=SECRET)
        finished = mux.wait_job(job.id, timeout=10)
        assert finished.status == JobStatus.SUCCEEDED
        try:
            mux.submit(model="m", messages=MSG, stream=True)
        except ValueError as exc:
            assert "stream" in str(exc)
        else:
            raise AssertionError("stream=True must be refused")
        assert json.dumps(finished.result)
