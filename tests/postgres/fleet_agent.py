"""One agent process of the fleet test: a Multiplexer built from the fleet's shared config,
driven by JSON commands on stdin (one per line), answering one JSON line each on stdout.

    python fleet_agent.py CONFIG

Commands: ``{"op": "memory_put", "ns", "key", "text"}``, ``{"op": "memory_search", "ns",
"query"}``, ``{"op": "chat", "model", "caller", "tier"}``, ``{"op": "submit", "model",
"caller", "webhook_url", "webhook_secret"}``, ``{"op": "start_jobs"}``, ``{"op": "job", "id"}``,
``{"op": "exit"}`` (closes the Multiplexer: flushes the meter). Anything that fails answers
``{"error": "<type>: <message>"}`` and the loop goes on.
"""

from __future__ import annotations

import json
import sys
from typing import Any

from gonka_mux import Multiplexer


def handle(mux: Multiplexer, command: dict[str, Any]) -> dict[str, Any]:
    op = command["op"]
    if op == "memory_put":
        return {"key": mux.memory.put(command["ns"], command["text"], key=command["key"])}
    if op == "memory_search":
        hits = mux.memory.search(command["ns"], command["query"], k=10)
        return {"keys": [hit.key for hit in hits]}
    if op == "chat":
        try:
            mux.chat.completions.create(
                model=command["model"],
                messages=[{"role": "user", "content": "hi"}],
                caller=command["caller"],
                mux_metadata={"limit_tier": command["tier"]},
            )
        except Exception as exc:
            status = getattr(exc, "status_code", None)
            return {"status": status, "exception": type(exc).__name__}
        return {"status": 200}
    if op == "submit":
        job = mux.submit(
            model=command["model"],
            messages=[{"role": "user", "content": "background"}],
            caller=command["caller"],
            webhook_url=command["webhook_url"],
            webhook_secret=command["webhook_secret"],
        )
        return {"id": job.id}
    if op == "start_jobs":
        mux.start_jobs()
        return {"ok": True}
    if op == "job":
        return {"status": str(mux.jobs.get(command["id"]).status)}
    raise ValueError(f"unknown op {op!r}")


def main() -> None:
    mux = Multiplexer.from_config(sys.argv[1])
    print(json.dumps({"ready": True}), flush=True)
    for line in sys.stdin:
        command = json.loads(line)
        if command["op"] == "exit":
            break
        try:
            answer = handle(mux, command)
        except Exception as exc:
            answer = {"error": f"{type(exc).__name__}: {exc}"}
        print(json.dumps(answer), flush=True)
    mux.close()
    print(json.dumps({"closed": True}), flush=True)


if __name__ == "__main__":
    main()
