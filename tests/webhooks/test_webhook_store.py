"""One suite for every JobStore backend, plus what only the SQLite file does."""

from __future__ import annotations

import os
import sqlite3
import stat
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

import pytest

from gonka_mux.webhooks import (
    Delivery,
    DeliveryStatus,
    Job,
    JobNotFoundError,
    JobStatus,
    JobStore,
    JobStoreError,
    MemoryJobStore,
    Secret,
    SQLiteJobStore,
    default_jobs_path,
    default_state_dir,
)

SECRET = "whsec_store_secret_do_not_leak"


@pytest.fixture(params=["memory", "sqlite"])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[JobStore]:
    backend: JobStore = (
        MemoryJobStore() if request.param == "memory" else SQLiteJobStore(tmp_path / "jobs.db")
    )
    yield backend
    backend.close()


def make_job(job_id: str = "j1", created: float = 1.0, **kwargs: object) -> Job:
    fields: dict[str, object] = {
        "id": job_id,
        "params": {"model": "auto", "messages": [{"role": "user", "content": "héllo"}]},
        "webhook_url": "https://example.test/hook?token=abc",
        "webhook_secret": Secret(SECRET),
        "created_at": created,
        "updated_at": created,
    }
    fields.update(kwargs)
    return Job(**fields)  # type: ignore[arg-type]


def make_delivery(delivery_id: str, job_id: str = "j1", next_at: float = 10.0) -> Delivery:
    return Delivery(
        id=delivery_id,
        job_id=job_id,
        event="job.completed",
        body=f'{{"id":"{delivery_id}"}}',
        next_attempt_at=next_at,
        created_at=next_at,
        updated_at=next_at,
    )


def test_job_round_trip_keeps_everything_including_the_secret(store: JobStore) -> None:
    store.add_job(make_job())
    job = store.get_job("j1")
    assert job is not None
    assert job.params == make_job().params
    assert job.status is JobStatus.QUEUED
    assert job.webhook_url == "https://example.test/hook?token=abc"
    assert isinstance(job.webhook_secret, Secret)
    assert job.webhook_secret.reveal() == SECRET
    assert store.get_job("missing") is None


def test_returned_jobs_are_copies(store: JobStore) -> None:
    store.add_job(make_job())
    job = store.get_job("j1")
    assert job is not None
    job.params["messages"].append({"role": "user", "content": "mutated"})
    job.status = JobStatus.FAILED
    again = store.get_job("j1")
    assert again is not None and len(again.params["messages"]) == 1
    assert again.status is JobStatus.QUEUED


def test_duplicate_job_id_is_refused(store: JobStore) -> None:
    store.add_job(make_job())
    with pytest.raises(JobStoreError, match="already exists"):
        store.add_job(make_job())


def test_unserializable_params_are_refused_and_nothing_is_stored(store: JobStore) -> None:
    with pytest.raises(TypeError, match="JSON-serializable"):
        store.add_job(make_job(params={"messages": [object()]}))
    assert store.get_job("j1") is None


def test_running_counts_attempts(store: JobStore) -> None:
    store.add_job(make_job())
    first = store.mark_running("j1", 5.0)
    second = store.mark_running("j1", 6.0)
    assert (first.attempts, second.attempts) == (1, 2)
    assert second.status is JobStatus.RUNNING and second.started_at == 6.0
    with pytest.raises(JobNotFoundError):
        store.mark_running("nope", 1.0)


def test_finish_stores_outcome_and_delivery_together(store: JobStore) -> None:
    store.add_job(make_job())
    store.mark_running("j1", 2.0)
    done = store.finish_job(
        "j1",
        status=JobStatus.SUCCEEDED,
        result={"choices": [{"message": {"content": "hi"}}]},
        error=None,
        now=3.0,
        delivery=make_delivery("d1"),
    )
    assert done.done and done.finished_at == 3.0
    assert done.result == {"choices": [{"message": {"content": "hi"}}]}
    assert [d.id for d in store.deliveries_for("j1")] == ["d1"]
    assert store.get_delivery("d1") == make_delivery("d1")
    assert store.unfinished_jobs() == []


def test_a_failed_finish_changes_nothing(store: JobStore, tmp_path: Path) -> None:
    """The outcome and its delivery are one transaction (SQLite) / one step (memory)."""
    store.add_job(make_job())
    store.add_job(make_job("j2", created=2.0))
    store.finish_job(
        "j1",
        status=JobStatus.SUCCEEDED,
        result={},
        error=None,
        now=3.0,
        delivery=make_delivery("d1"),
    )
    if isinstance(store, SQLiteJobStore):
        # A delivery id that already exists makes the insert fail inside the transaction.
        with pytest.raises(sqlite3.IntegrityError):
            store.finish_job(
                "j2",
                status=JobStatus.FAILED,
                result=None,
                error="x",
                now=4.0,
                delivery=make_delivery("d1", job_id="j2"),
            )
        job = store.get_job("j2")
        assert job is not None and job.status is JobStatus.QUEUED
    with pytest.raises(TypeError, match="JSON-serializable"):
        store.finish_job("j2", status=JobStatus.SUCCEEDED, result={"x": {1, 2}}, error=None, now=5)
    job = store.get_job("j2")
    assert job is not None and job.status is JobStatus.QUEUED
    assert store.deliveries_for("j2") == []


def test_unfinished_jobs_oldest_first(store: JobStore) -> None:
    store.add_job(make_job("late", created=30.0))
    store.add_job(make_job("early", created=10.0))
    store.add_job(make_job("done", created=20.0))
    store.add_job(make_job("running", created=25.0))
    store.finish_job("done", status=JobStatus.FAILED, result=None, error="boom", now=21.0)
    store.mark_running("running", 26.0)
    assert [j.id for j in store.unfinished_jobs()] == ["early", "running", "late"]
    assert [j.id for j in store.list_jobs()] == ["late", "running", "done", "early"]
    assert [j.id for j in store.list_jobs(status=JobStatus.FAILED)] == ["done"]
    assert [j.id for j in store.list_jobs(limit=2)] == ["late", "running"]


def test_pending_deliveries_soonest_first_and_updates_persist(store: JobStore) -> None:
    for job_id, delivery_id, at in (("a", "da", 50.0), ("b", "db", 20.0), ("c", "dc", 30.0)):
        store.add_job(make_job(job_id))
        store.finish_job(
            job_id,
            status=JobStatus.SUCCEEDED,
            result={},
            error=None,
            now=at,
            delivery=make_delivery(delivery_id, job_id, next_at=at),
        )
    assert [d.id for d in store.pending_deliveries()] == ["db", "dc", "da"]
    delivery = store.get_delivery("dc")
    assert delivery is not None
    store.update_delivery(
        replace(delivery, status=DeliveryStatus.DELIVERED, attempts=3, delivered_at=31.0)
    )
    pending = store.get_delivery("db")
    assert pending is not None
    store.update_delivery(replace(pending, attempts=2, next_attempt_at=99.0, last_error="HTTP 500"))
    assert [d.id for d in store.pending_deliveries()] == ["da", "db"]
    stored = store.get_delivery("db")
    assert stored is not None and (stored.attempts, stored.last_error) == (2, "HTTP 500")
    with pytest.raises(JobStoreError):
        store.update_delivery(make_delivery("unknown"))


def test_purge_removes_settled_old_jobs_only(store: JobStore) -> None:
    store.add_job(make_job("old"))
    store.add_job(make_job("old-pending"))
    store.add_job(make_job("new"))
    store.add_job(make_job("queued"))
    store.finish_job(
        "old",
        status=JobStatus.SUCCEEDED,
        result={},
        error=None,
        now=10.0,
        delivery=replace(make_delivery("d-old", "old"), status=DeliveryStatus.DELIVERED),
    )
    store.finish_job(
        "old-pending",
        status=JobStatus.SUCCEEDED,
        result={},
        error=None,
        now=10.0,
        delivery=make_delivery("d-pending", "old-pending"),
    )
    store.finish_job("new", status=JobStatus.FAILED, result=None, error="x", now=100.0)
    assert store.purge(finished_before=50.0) == 1
    assert store.get_job("old") is None and store.get_delivery("d-old") is None
    assert {j.id for j in store.list_jobs()} == {"old-pending", "new", "queued"}


def test_reprs_never_show_the_secret_or_url_token(store: JobStore) -> None:
    store.add_job(make_job())
    job = store.get_job("j1")
    assert job is not None
    for text in (repr(job), str(job), repr(store), repr(job.webhook_secret)):
        assert SECRET not in text
        assert "token=abc" not in text
    assert "webhook_secret" not in job.to_public_dict()
    assert "webhook_url" not in job.to_public_dict()


# --------------------------------------------------------------------------- SQLite only


def test_sqlite_survives_reopening(tmp_path: Path) -> None:
    path = tmp_path / "state" / "jobs.db"
    first = SQLiteJobStore(path)
    first.add_job(make_job())
    first.finish_job(
        "j1",
        status=JobStatus.SUCCEEDED,
        result={"ok": True},
        error=None,
        now=2.0,
        delivery=make_delivery("d1"),
    )
    first.close()
    second = SQLiteJobStore(path)
    try:
        job = second.get_job("j1")
        assert job is not None and job.result == {"ok": True}
        assert job.webhook_secret is not None and job.webhook_secret.reveal() == SECRET
        assert [d.id for d in second.pending_deliveries()] == ["d1"]
    finally:
        second.close()


def test_sqlite_file_is_private(tmp_path: Path) -> None:
    path = tmp_path / "fresh" / "jobs.db"
    SQLiteJobStore(path).close()
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert stat.S_IMODE(path.parent.stat().st_mode) == 0o700


def test_sqlite_default_path_follows_the_environment(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("GONKA_MUX_STATE_DIR", raising=False)
    monkeypatch.delenv("XDG_STATE_HOME", raising=False)
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert default_state_dir() == tmp_path / "home" / ".local" / "state" / "gonka_mux"
    monkeypatch.setenv("XDG_STATE_HOME", str(tmp_path / "xdg"))
    assert default_state_dir() == tmp_path / "xdg" / "gonka_mux"
    monkeypatch.setenv("GONKA_MUX_STATE_DIR", str(tmp_path / "explicit"))
    assert default_jobs_path() == tmp_path / "explicit" / "jobs.sqlite3"
    store = SQLiteJobStore()
    try:
        store.add_job(make_job())
    finally:
        store.close()
    assert (tmp_path / "explicit" / "jobs.sqlite3").exists()


def test_sqlite_unusable_path_says_what_to_do(tmp_path: Path) -> None:
    blocker = tmp_path / "a-file"
    blocker.write_text("not a directory")
    with pytest.raises(JobStoreError, match="GONKA_MUX_STATE_DIR"):
        SQLiteJobStore(blocker / "jobs.db")


def test_sqlite_refuses_a_newer_schema(tmp_path: Path) -> None:
    path = tmp_path / "jobs.db"
    db = sqlite3.connect(path)
    db.execute("PRAGMA user_version=99")
    db.commit()
    db.close()
    with pytest.raises(JobStoreError, match="newer than this"):
        SQLiteJobStore(path)


def test_sqlite_in_memory_variant(tmp_path: Path) -> None:
    store = SQLiteJobStore(":memory:")
    try:
        store.add_job(make_job())
        assert store.get_job("j1") is not None
    finally:
        store.close()
    assert not any(tmp_path.iterdir())
    assert not os.path.exists(":memory:")
