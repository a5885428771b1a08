"""The supervisor's state machine against a real stand-in server process (fake_vllm.py)."""

from __future__ import annotations

import asyncio
import dataclasses
import json
import os
import socket
from pathlib import Path

import httpx
import pytest
from _serving_support import fake_vllm_cmd

from gonka_mux.serving.command import build_launch
from gonka_mux.serving.registry import Profile
from gonka_mux.serving.supervisor import (
    Backoff,
    State,
    Supervisor,
    SupervisorConfig,
    SupervisorEvent,
)

FAST = SupervisorConfig(
    startup_timeout_s=15,
    drain_timeout_s=5,
    stall_timeout_s=0.6,
    poll_interval_s=0.05,
    liveness_interval_s=0.1,
    health_failures=3,
    probe_timeout_s=2,
    kill_grace_s=2,
    restart_term_grace_s=1,
)


def make_supervisor(
    port: int,
    *fake_args: str,
    config: SupervisorConfig = FAST,
    backoff: Backoff | None = None,
    vllm_cmd: tuple[str, ...] | None = None,
) -> tuple[Supervisor, list[SupervisorEvent]]:
    profile = Profile(
        name="fake",
        model="fake-model",
        served_model_name="fake",
        description="stand-in",
        device="cpu",
        gpus=0,
        vllm_cmd=vllm_cmd or fake_vllm_cmd(),
        drain_timeout_s=config.drain_timeout_s,
    )
    plan = build_launch(profile, port=port, extra_args=list(fake_args))
    events: list[SupervisorEvent] = []
    sup = Supervisor(
        plan,
        config=config,
        backoff=backoff or Backoff(initial_s=0.05, factor=2, max_s=0.2, max_restarts=3),
        profile_name="fake",
        model="fake-model",
        on_event=events.append,
    )
    return sup, events


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # A zombie still "exists"; read its state to be sure it is really running.
    try:
        with open(f"/proc/{pid}/stat") as fh:
            return fh.read().split()[2] != "Z"
    except FileNotFoundError:
        return False


async def wait_until(predicate, timeout: float = 10.0) -> None:  # type: ignore[no-untyped-def]
    deadline = asyncio.get_running_loop().time() + timeout
    while not predicate():
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError("condition not met in time")
        await asyncio.sleep(0.02)


def test_backoff_is_exponential_with_a_cap() -> None:
    b = Backoff(initial_s=10, factor=2, max_s=300)
    assert [b.delay(n) for n in range(1, 8)] == [10, 20, 40, 80, 160, 300, 300]


async def test_ready_needs_health_and_the_served_model(port: int, tmp_path: Path) -> None:
    child_file = tmp_path / "child.pid"
    sup, events = make_supervisor(
        port, "--startup-delay", "0.3", "--child-pidfile", str(child_file)
    )
    task = asyncio.create_task(sup.run())
    assert await sup.wait_for_state(State.READY, timeout=15) is State.READY
    assert sup.models == ["fake"] and sup.max_model_len == 2048 and sup.version == "0.0.0-fake"
    status = sup.status()
    assert status["state"] == "ready" and status["pid"] == sup.pid and status["restarts"] == 0
    child = int(child_file.read_text())
    assert alive(child)
    sup.request_stop()
    assert await asyncio.wait_for(task, 15) == 0
    assert sup.state is State.STOPPED
    await wait_until(lambda: not alive(child), timeout=5)  # nothing of the group is left
    states = [e.message.split(":")[0] for e in events if e.kind == "state"]
    assert states == ["starting", "ready", "draining", "stopped"]


@pytest.mark.slow
async def test_crash_restarts_with_backoff_then_recovers(port: int, tmp_path: Path) -> None:
    marker = tmp_path / "crashed-once"
    child_file = tmp_path / "child.pid"
    sup, events = make_supervisor(
        port, "--crash-once", str(marker), "--child-pidfile", str(child_file)
    )
    task = asyncio.create_task(sup.run())
    await wait_until(lambda: sup.restarts == 1 and sup.state is State.READY, timeout=20)
    assert sup.last_exit is not None and sup.last_exit.code == 3
    assert "exited with code 3" in sup.last_exit.reason
    assert any("fatal error" in line for line in sup.last_exit.tail)
    restarts = [e for e in events if e.kind == "restart"]
    assert [e.data["delay_s"] for e in restarts] == [0.05]
    states = [e.message.split(":")[0] for e in events if e.kind == "state"]
    assert states[:5] == ["starting", "ready", "crashed", "starting", "ready"]
    sup.request_stop()
    assert await asyncio.wait_for(task, 15) == 0


@pytest.mark.slow
async def test_repeated_crashes_back_off_exponentially_and_give_up(
    port: int, tmp_path: Path
) -> None:
    child_file = tmp_path / "child.pid"
    sup, events = make_supervisor(
        port,
        "--crash-after",
        "0.1",
        "--child-pidfile",
        str(child_file),
        backoff=Backoff(initial_s=0.05, factor=2, max_s=0.15, max_restarts=3),
    )
    assert await asyncio.wait_for(sup.run(), 30) == 1
    assert sup.state is State.FAILED and sup.restarts == 3
    assert [e.data["delay_s"] for e in events if e.kind == "restart"] == [0.05, 0.1, 0.15]
    assert any("giving up" in e.message for e in events)
    # The crashed server's engine child was killed with its process group (signal delivery
    # is asynchronous: give the kernel a moment; unkilled, it would live for 600 s).
    child = int(child_file.read_text())
    await wait_until(lambda: not alive(child), timeout=5)


@pytest.mark.slow
async def test_sigterm_drains_in_flight_requests(port: int, tmp_path: Path) -> None:
    child_file = tmp_path / "child.pid"
    sup, _ = make_supervisor(port, "--token-delay", "0.05", "--child-pidfile", str(child_file))
    task = asyncio.create_task(sup.run())
    await sup.wait_for_state(State.READY, timeout=15)
    url = f"http://127.0.0.1:{port}/v1/chat/completions"

    async def stream(client: httpx.AsyncClient) -> list[dict]:
        chunks = []
        body = {"model": "fake", "messages": [], "max_tokens": 30, "stream": True}
        async with client.stream("POST", url, json=body) as resp:
            assert resp.status_code == 200
            async for line in resp.aiter_lines():
                if line.startswith("data: ") and line != "data: [DONE]":
                    chunks.append(json.loads(line[6:]))
        return chunks

    async with httpx.AsyncClient(timeout=30) as client:
        requests = [asyncio.create_task(stream(client)) for _ in range(3)]
        await wait_until(lambda: (m := sup.latest_metrics) is not None and (m.running or 0) >= 3)
        sup.request_stop()
        await sup.wait_for_state(State.DRAINING, timeout=5)
        # SIGTERM went to the API server only: the engine stand-in keeps running during the drain.
        assert alive(int(child_file.read_text()))
        results = await asyncio.gather(*requests)
    for chunks in results:
        assert len(chunks) == 31 and chunks[-1]["choices"][0]["finish_reason"] == "length"
    assert await asyncio.wait_for(task, 15) == 0
    assert sup.state is State.STOPPED
    assert sup.last_exit is not None and sup.last_exit.code == 0
    assert sup.last_exit.reason == "stopped on request"


@pytest.mark.slow
async def test_a_stall_restarts_the_server(port: int) -> None:
    sup, events = make_supervisor(port, "--stall")
    task = asyncio.create_task(sup.run())
    await wait_until(lambda: sup.restarts >= 1, timeout=20)
    assert sup.last_exit is not None and sup.last_exit.reason.startswith("stalled: 1 request(s)")
    assert any(e.kind == "error" and "stalled" in e.message for e in events)
    sup.request_stop()
    assert await asyncio.wait_for(task, 15) == 0


@pytest.mark.slow
async def test_failing_health_restarts_the_server(port: int) -> None:
    sup, _ = make_supervisor(port, "--health-after", "0.5", "--health-status", "503")
    task = asyncio.create_task(sup.run())
    await sup.wait_for_state(State.READY, timeout=15)
    await wait_until(lambda: sup.restarts >= 1, timeout=20)
    assert sup.last_exit is not None
    assert sup.last_exit.reason == "unhealthy: /health failed 3 times in a row"
    sup.request_stop()
    assert await asyncio.wait_for(task, 15) == 0


@pytest.mark.slow
async def test_a_server_ignoring_sigterm_is_killed_after_the_drain_budget(port: int) -> None:
    config = SupervisorConfig(**{**FAST.__dict__, "drain_timeout_s": 0.3, "kill_grace_s": 0.3})
    sup, events = make_supervisor(port, "--ignore-sigterm", config=config)
    task = asyncio.create_task(sup.run())
    await sup.wait_for_state(State.READY, timeout=15)
    sup.request_stop()
    assert await asyncio.wait_for(task, 15) == 0
    assert sup.last_exit is not None and sup.last_exit.code == -9
    assert any("killing the group" in e.message for e in events)


async def test_startup_timeout_counts_as_a_failure(port: int) -> None:
    config = SupervisorConfig(**{**FAST.__dict__, "startup_timeout_s": 0.3})
    sup, _ = make_supervisor(
        port, "--startup-delay", "30", config=config, backoff=Backoff(max_restarts=0)
    )
    assert await asyncio.wait_for(sup.run(), 15) == 1
    assert sup.state is State.FAILED
    assert sup.last_exit is not None and "startup timeout" in sup.last_exit.reason


async def test_stop_while_backing_off(port: int) -> None:
    sup, events = make_supervisor(
        port, "--crash-after", "0.05", backoff=Backoff(initial_s=30, max_restarts=5)
    )
    task = asyncio.create_task(sup.run())
    await wait_until(lambda: any(e.kind == "restart" for e in events), timeout=15)
    sup.request_stop()
    assert await asyncio.wait_for(task, 5) == 0
    assert sup.state is State.STOPPED and sup.restarts == 0


async def test_port_in_use_is_refused(port: int) -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", port))
        s.listen()
        sup, events = make_supervisor(port)
        assert await sup.run() == 1
    assert sup.state is State.FAILED
    assert any("already in use" in e.message for e in events)


async def test_missing_binary_fails_without_retrying(port: int) -> None:
    sup, _ = make_supervisor(port, vllm_cmd=("/nonexistent/vllm",))
    assert await sup.run() == 1
    assert sup.state is State.FAILED and sup.restarts == 0
    assert sup.last_exit is not None and "could not start" in sup.last_exit.reason


async def test_vllm_output_goes_to_a_rotated_log(port: int, tmp_path: Path) -> None:
    log = tmp_path / "logs" / "fake.log"
    config = SupervisorConfig(
        **{**FAST.__dict__, "log_path": log, "log_max_bytes": 120, "log_backups": 2}
    )
    sup, events = make_supervisor(port, config=config)
    task = asyncio.create_task(sup.run())
    await sup.wait_for_state(State.READY, timeout=15)
    sup.request_stop()
    assert await asyncio.wait_for(task, 15) == 0
    rotated = log.with_name("fake.log.1")
    assert rotated.exists()
    text = "".join(p.read_text() for p in log.parent.iterdir())
    assert "fake-vllm: loading weights" in text
    assert any(e.kind == "log" and "Starting vLLM server" in e.message for e in events)


async def test_setup_runs_before_and_teardown_after(port: int, tmp_path: Path) -> None:
    trace = tmp_path / "trace.txt"
    sup, _ = make_supervisor(port)
    sup.plan = dataclasses.replace(
        sup.plan,
        setup=(("sh", "-c", f"echo setup >> {trace}"),),
        teardown=(("sh", "-c", f"echo teardown >> {trace}"), ("/nonexistent/ray", "stop")),
    )
    task = asyncio.create_task(sup.run())
    await sup.wait_for_state(State.READY, timeout=15)
    assert trace.read_text() == "setup\n"
    sup.request_stop()
    assert await asyncio.wait_for(task, 15) == 0
    assert trace.read_text() == "setup\nteardown\n"  # a failing teardown does not stop the rest


async def test_failing_setup_fails_before_starting(port: int) -> None:
    sup, events = make_supervisor(port)
    sup.plan = dataclasses.replace(sup.plan, setup=(("sh", "-c", "echo no cluster; exit 3"),))
    assert await sup.run() == 1
    assert sup.state is State.FAILED and sup.pid is None
    assert any("setup command failed (3): no cluster" in e.message for e in events)


async def test_api_key_is_used_for_readiness_and_kept_out_of_logs(
    port: int, tmp_path: Path
) -> None:
    log = tmp_path / "vllm.log"
    config = SupervisorConfig(**{**FAST.__dict__, "log_path": log})
    sup, events = make_supervisor(port, "--api-key", "sk-secret-999", config=config)
    task = asyncio.create_task(sup.run())
    assert await sup.wait_for_state(State.READY, timeout=15) is State.READY  # probe sent the key
    sup.request_stop()
    assert await asyncio.wait_for(task, 15) == 0
    assert any("non-default args" in line for line in sup.log_tail)
    assert not any("sk-secret-999" in line for line in sup.log_tail)
    assert not any("sk-secret-999" in e.message for e in events)
    assert "sk-secret-999" not in sup.plan.shell() and "--api-key '***'" in sup.plan.shell()
    assert "sk-secret-999" not in repr(sup.plan)
    text = log.read_text()
    assert "non-default args: {'api_key': ['***']}" in text and "sk-secret-999" not in text


async def test_a_clean_stop_summarises_vllms_teardown_traceback_in_one_line(
    port: int, tmp_path: Path
) -> None:
    config = dataclasses.replace(FAST, log_path=tmp_path / "vllm.log")
    sup, events = make_supervisor(port, "--teardown-traceback", config=config)
    task = asyncio.create_task(sup.run())
    await sup.wait_for_state(State.READY, timeout=15)
    sup.request_stop()
    assert await asyncio.wait_for(task, 15) == 0
    assert not [e for e in events if e.kind == "log" and e.data.get("level") == "error"]
    assert not [e for e in events if e.kind == "error"]
    summary = [e for e in events if "shutdown printed" in e.message]
    assert len(summary) == 1 and summary[0].kind == "progress"
    assert (
        "EngineDeadError" in summary[0].message
        and "after the drain completed" in summary[0].message
    )
    assert str(tmp_path / "vllm.log") in summary[0].message
    assert "Traceback (most recent call last)" in (tmp_path / "vllm.log").read_text()  # kept


async def test_loading_lines_quote_the_current_process_only(port: int, tmp_path: Path) -> None:
    """After a crash, "still loading" used to quote the killed process's last line."""
    config = dataclasses.replace(FAST, progress_every_s=0.05)
    marker = tmp_path / "crashed-once"
    sup, events = make_supervisor(
        port, "--crash-once", str(marker), "--loading-lines", "4", config=config
    )
    task = asyncio.create_task(sup.run())
    await wait_until(lambda: sup.restarts == 1 and sup.state is State.READY, timeout=20)
    sup.request_stop()
    assert await asyncio.wait_for(task, 15) == 0
    pids = [e.data["pid"] for e in events if "pid" in e.data]
    assert len(pids) == 2
    starts = [i for i, e in enumerate(events) if e.message.startswith("started pid")]
    second = events[starts[1] :]
    loading = [e.message for e in second if e.message.startswith("still loading")]
    assert loading, "no progress line while the restarted server loaded"
    assert all("fatal error" not in m and f"pid {pids[0]} " not in m for m in loading), loading
    assert sup.last_exit is not None and sup.last_exit.reason == "stopped on request"


async def test_setup_output_is_progress_and_a_stop_ends_a_long_setup(port: int) -> None:
    sup, events = make_supervisor(port)
    sup.plan = dataclasses.replace(
        sup.plan,
        setup=(("sh", "-c", "echo waiting for 16 GPUs; sleep 30"),),
    )
    task = asyncio.create_task(sup.run())
    await wait_until(lambda: any(e.message == "setup | waiting for 16 GPUs" for e in events), 5)
    sup.request_stop()
    assert await asyncio.wait_for(task, 10) == 0  # the setup was stopped, vLLM never started
    assert sup.state is State.STOPPED and sup.pid is None
