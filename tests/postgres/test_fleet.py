"""A fleet: two agent processes and one gateway on one PostgreSQL and one Redis (issue 17).

All three load the same file: the shipped ``docker/fleet.toml``, with its store URLs pointed at
this test's PostgreSQL and Redis and its vLLM node replaced by fake backends. Each agent is a
real process (``fleet_agent.py``, driven over stdin/stdout) with its own state directory, so
the only things they share are the ones the config puts on the shared stores. Checked: a
memory written by one agent is found by the other; one usage report covers all three; a job
submitted on an agent that is then SIGKILLed is run and delivered once by the other; one key's
rpm limit holds across all three.
"""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from tests._postgres import PostgresServer
from tests.postgres._fleet import (
    GatewayProcess,
    base_env,
    create_key,
    shipped_config,
    wait_for_usage,
)
from tests.webhooks.webhook_receiver import SECRET, running_receiver

from gonka_mux.testing import FakeBackend

HERE = Path(__file__).resolve().parent
TINY_RPM = 3


class Agent:
    """``fleet_agent.py CONFIG`` in a subprocess; :meth:`call` sends one command, waits for
    its answer."""

    def __init__(self, config: Path, directory: Path, name: str) -> None:
        directory.mkdir(parents=True, exist_ok=True)
        self.name = name
        self.log = directory / f"{name}.log"
        self._stderr = self.log.open("w")
        self.proc = subprocess.Popen(
            [sys.executable, str(HERE / "fleet_agent.py"), str(config)],
            env={**base_env(directory / "state"), "PYTHONPATH": os.pathsep.join(sys.path)},
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=self._stderr,
            text=True,
            bufsize=1,
        )
        ready = self._read()
        assert ready == {"ready": True}, ready

    def _read(self) -> dict[str, Any]:
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline()
        assert line, f"{self.name} exited:\n{self.log.read_text()}"
        answer: dict[str, Any] = json.loads(line)
        return answer

    def call(self, op: str, **params: Any) -> dict[str, Any]:
        assert self.proc.stdin is not None
        self.proc.stdin.write(json.dumps({"op": op, **params}) + "\n")
        self.proc.stdin.flush()
        answer = self._read()
        assert "error" not in answer, (self.name, op, answer)
        return answer

    def kill(self) -> None:
        self.proc.kill()  # SIGKILL: no flush, no lease given back
        self.proc.wait(30)

    def stop(self) -> None:
        if self.proc.poll() is None:
            try:
                assert self.proc.stdin is not None
                self.proc.stdin.write('{"op": "exit"}\n')
                self.proc.stdin.flush()
                self.proc.wait(30)
            except (OSError, subprocess.TimeoutExpired):
                self.proc.kill()
                self.proc.wait(10)
        self._stderr.close()


class Fleet:
    def __init__(
        self, gateway: GatewayProcess, agents: list[Agent], database_url: str, tmp: Path
    ) -> None:
        self.gateway, self.agents, self.database_url, self.tmp = gateway, agents, database_url, tmp


@pytest.fixture(scope="module")
def fleet(
    postgres_server: PostgresServer, redis_url: str, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Fleet]:
    tmp = tmp_path_factory.mktemp("fleet")
    database_url = postgres_server.fresh_database()
    with (
        FakeBackend(models=["m"], name="fast") as fast,
        FakeBackend(models=["slow"], name="slow", faults={"latency": 2.0}) as slow,
    ):
        config = tmp / "fleet.toml"
        config.write_text(
            shipped_config("fleet.toml", database_url, redis_url, fast.url, slow.url, TINY_RPM)
        )
        started: list[Any] = []
        try:
            gateway = GatewayProcess(config, tmp / "gateway", "gateway")
            started.append(gateway)
            for name in ("agent-1", "agent-2"):
                started.append(Agent(config, tmp / name, name))
            yield Fleet(gateway, started[1:], database_url, tmp)
        finally:
            for process in reversed(started):
                process.stop()


def test_a_memory_written_by_one_agent_is_found_by_the_other(fleet: Fleet) -> None:
    one, two = fleet.agents
    one.call("memory_put", ns="fleet", key="fact-1", text="the zebra crossed the fleet")
    assert two.call("memory_search", ns="fleet", query="zebra")["keys"] == ["fact-1"]
    two.call("memory_put", ns="fleet", key="fact-1", text="the okapi replaced it")
    assert one.call("memory_search", ns="fleet", query="zebra")["keys"] == []
    assert one.call("memory_search", ns="fleet", query="okapi")["keys"] == ["fact-1"]


def test_one_keys_limit_holds_across_the_gateway_and_both_agents(fleet: Fleet) -> None:
    key_id, key = create_key(fleet.gateway, tier="tiny")
    statuses: list[tuple[str, int | None]] = []
    started = time.monotonic()
    for i in range(4 * TINY_RPM):
        if i % 3 == 0:
            statuses.append(("gateway", fleet.gateway.chat(key).status_code))
        else:
            agent = fleet.agents[i % 3 - 1]
            answer = agent.call("chat", model="m", caller=key_id, tier="tiny")
            statuses.append((agent.name, answer["status"]))
    elapsed = time.monotonic() - started
    assert {status for _, status in statuses} <= {200, 429}, statuses
    allowed = sum(status == 200 for _, status in statuses)
    # GCRA: a burst of rpm, then one more per 60/rpm seconds of the test's own duration.
    assert 1 <= allowed <= TINY_RPM + math.ceil(elapsed * TINY_RPM / 60), (elapsed, statuses)
    refused_by = {name for name, status in statuses if status == 429}
    assert refused_by == {"gateway", "agent-1", "agent-2"}, statuses


def test_one_usage_report_covers_all_three(fleet: Fleet) -> None:
    key_id, key = create_key(fleet.gateway, tier="pro")
    for _ in range(2):
        assert fleet.gateway.chat(key).status_code == 200
        for agent in fleet.agents:
            assert agent.call("chat", model="m", caller=key_id, tier="pro")["status"] == 200
    wait_for_usage(fleet.database_url, key_id, 6, fleet.tmp / "cli-state")


def test_a_job_submitted_on_a_killed_agent_is_delivered_once(fleet: Fleet) -> None:
    one, two = fleet.agents
    caller = "fleet-job-caller"
    two.call("start_jobs")  # the surviving agent is one of the fleet's job workers
    with running_receiver() as receiver:
        job_id = one.call(
            "submit", model="slow", caller=caller, webhook_url=receiver.url, webhook_secret=SECRET
        )["id"]
        one.kill()  # right after accepting it: the slow model answers after 2 s
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and not receiver.job_process_count[job_id]:
            time.sleep(0.25)
        assert receiver.job_process_count[job_id] == 1, receiver.received
        assert two.call("job", id=job_id)["status"] == "succeeded"
        time.sleep(2.0)  # a duplicate delivery would come within the retry delay
        assert receiver.job_process_count[job_id] == 1
        for_job = [r for r in receiver.received if json.loads(r.body)["job"]["id"] == job_id]
        assert all(r.verified for r in for_job)
        assert len({r.delivery_id for r in for_job}) == 1, for_job
    wait_for_usage(fleet.database_url, caller, 1, fleet.tmp / "cli-state")
