"""Child process for the crash test: starts jobs, reports, then waits to be SIGKILLed.

Usage: python webhook_crash_child.py DB_PATH RECEIVER_URL SECRET
"""

from __future__ import annotations

import asyncio
import json
import sys
from typing import Any

import tenacity

from gonka_mux.webhooks import DeliveryPolicy, JobRunner, JobStatus, SQLiteJobStore


async def main(db_path: str, url: str, secret: str) -> None:
    store = SQLiteJobStore(db_path)

    async def execute(params: dict[str, Any]) -> dict[str, Any]:
        if params["block"]:
            await asyncio.Event().wait()  # never finishes: the process dies first
        return {"n": params["n"], "by": "child"}

    policy = DeliveryPolicy(max_attempts=5, wait=tenacity.wait_fixed(1.5))
    runner = JobRunner(store, execute, delivery_policy=policy)
    blocked = await runner.submit({"block": True, "n": 0}, webhook_url=url, webhook_secret=secret)
    quick = await runner.submit({"block": False, "n": 1}, webhook_url=url, webhook_secret=secret)
    while True:  # until one job is mid-run and the other's first delivery attempt was answered
        running = store.get_job(blocked.id).status is JobStatus.RUNNING  # type: ignore[union-attr]
        deliveries = store.deliveries_for(quick.id)
        if running and deliveries and deliveries[0].last_error:
            break
        await asyncio.sleep(0.01)
    print(json.dumps({"blocked": blocked.id, "quick": quick.id}), flush=True)
    await asyncio.Event().wait()


if __name__ == "__main__":
    asyncio.run(main(*sys.argv[1:4]))
