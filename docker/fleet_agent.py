"""An example agent process of the compose `fleet` profile (mounted at /etc/gonka-mux/agent.py).

It builds a Multiplexer from the fleet's shared config (docker/fleet.toml): its sessions,
memory, usage and job queue are on the fleet's PostgreSQL and its rate limits on the fleet's
Redis, so running several copies of it (``docker compose up --scale fleet-agent=3``) gives one
fleet, not several islands:

- it runs the fleet's background jobs (``start_jobs``): a job another process accepted and then
  died with is run here once its lease runs out;
- it writes what it did into the shared memory, where every other agent (and the gateway's
  ``/v1/memory`` API) finds it;
- its requests are metered into the one usage table (``gonka-mux usage --db URL``) and count
  against the same per-caller limits as the gateway's.
"""

from __future__ import annotations

import logging
import os
import socket
import time

from gonka_mux import Multiplexer

log = logging.getLogger("gonka_mux.examples.fleet_agent")

CONFIG = os.environ.get("GONKA_MUX_CONFIG", "/etc/gonka-mux/gateway.toml")
CALLER = os.environ.get("GONKA_AGENT_CALLER", "fleet-agent")
INTERVAL = float(os.environ.get("GONKA_AGENT_INTERVAL", "30"))


def main() -> None:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    name = f"agent-{socket.gethostname()}"
    with Multiplexer.from_config(CONFIG) as mux:
        mux.start_jobs()  # this process is one of the fleet's job workers from now on
        mux.memory.put("fleet", f"{name} joined the fleet", key=f"joined/{name}")
        while True:
            hits = mux.memory.search("fleet", "joined the fleet", k=20)
            log.info("%s sees %d fleet members in shared memory", name, len(hits))
            models = sorted({m for ep in mux.endpoints for m in ep.models})
            if models:  # the model node is up: one small request, metered and rate-limited
                try:
                    reply = mux.chat.completions.create(
                        model=models[0],
                        messages=[{"role": "user", "content": "Say hello to the fleet."}],
                        max_tokens=16,
                        caller=CALLER,
                        session_id=name,
                    )
                    log.info("%s: %s", name, reply.choices[0].message.content)
                except Exception as exc:  # an example: keep going, say why
                    log.warning("%s: request failed: %s", name, exc)
            time.sleep(INTERVAL)


if __name__ == "__main__":
    main()
