"""Background jobs with signed webhook callbacks (AGNT-04).

- :mod:`~gonka_mux.webhooks.signing`: ``sign_payload`` / ``verify_signature`` (receivers use these).
- :mod:`~gonka_mux.webhooks.store`: ``JobStore`` (SQLite file or in memory) for jobs and deliveries.
- :mod:`~gonka_mux.webhooks.delivery`: ``DeliveryPolicy`` (tenacity backoff) and the POST itself.
- :mod:`~gonka_mux.webhooks.jobs`: ``JobRunner``, which runs, persists, resumes and announces jobs.

A receiver, in a few lines::

    from gonka_mux.webhooks import SignatureVerificationError, verify_signature

    def handle(headers, raw_body: bytes) -> int:
        try:
            verify_signature(SECRET, headers, raw_body)
        except SignatureVerificationError:
            return 400
        delivery_id = headers["X-Gonka-Mux-Delivery"]   # process each id once
        ...
        return 200

The runner and delivery modules (tenacity, httpx) load on first use, so a receiver that only
verifies signatures does not pay for them.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from gonka_mux._exports import lazy_exports
from gonka_mux.webhooks.signing import (
    DEFAULT_TOLERANCE,
    DELIVERY_HEADER,
    EVENT_HEADER,
    SIGNATURE_HEADER,
    Secret,
    SignatureVerificationError,
    generate_secret,
    sign_payload,
    signature_header,
    verify_signature,
    webhook_headers,
)
from gonka_mux.webhooks.store import (
    Delivery,
    DeliveryStatus,
    Job,
    JobAlreadyFinishedError,
    JobNotFoundError,
    JobStatus,
    JobStore,
    JobStoreError,
    MemoryJobStore,
    SQLiteJobStore,
    default_jobs_path,
    default_state_dir,
    open_job_store,
)

if TYPE_CHECKING:
    from gonka_mux.webhooks.delivery import (
        EVENT_JOB_COMPLETED,
        EVENT_JOB_FAILED,
        DeliveryPolicy,
    )
    from gonka_mux.webhooks.jobs import JobRunner, JobRunnerClosedError
    from gonka_mux.webhooks.postgres import PostgresJobStore

_LAZY = {
    "DeliveryPolicy": ".delivery",
    "EVENT_JOB_COMPLETED": ".delivery",
    "EVENT_JOB_FAILED": ".delivery",
    "JobRunner": ".jobs",
    "JobRunnerClosedError": ".jobs",
    "PostgresJobStore": ".postgres",
}

__all__ = [
    "DEFAULT_TOLERANCE",
    "DELIVERY_HEADER",
    "EVENT_HEADER",
    "EVENT_JOB_COMPLETED",
    "EVENT_JOB_FAILED",
    "SIGNATURE_HEADER",
    "Delivery",
    "DeliveryPolicy",
    "DeliveryStatus",
    "Job",
    "JobAlreadyFinishedError",
    "JobNotFoundError",
    "JobRunner",
    "JobRunnerClosedError",
    "JobStatus",
    "JobStore",
    "JobStoreError",
    "MemoryJobStore",
    "PostgresJobStore",
    "SQLiteJobStore",
    "Secret",
    "SignatureVerificationError",
    "default_jobs_path",
    "default_state_dir",
    "generate_secret",
    "open_job_store",
    "sign_payload",
    "signature_header",
    "verify_signature",
    "webhook_headers",
]


__getattr__, __dir__ = lazy_exports(globals(), _LAZY)
