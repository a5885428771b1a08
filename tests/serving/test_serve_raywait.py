"""The bounded waits that order a multi-node Ray launch (head first, workers join, then vLLM)."""

from __future__ import annotations

import socket
import stat
import subprocess
import sys
from pathlib import Path

from gonka_mux.serving.raywait import (
    RayResources,
    parse_ray_status,
    ray_status,
    wait_for_gpus,
    wait_for_head,
)

# `ray status` as Ray 2.x prints it: one head and one worker with 8 GPUs each.
STATUS_TWO_NODES = """======== Autoscaler status: 2026-08-21 10:00:00.000000 ========
Node status
---------------------------------------------------------------
Active:
 1 node_5a3f9c2e1b7d4e0f8a6c
 1 node_0b1c2d3e4f5a6b7c8d9e
Pending:
 (no pending nodes)
Recent failures:
 (no failures)

Resources
---------------------------------------------------------------
Total Usage:
 0.0/224.0 CPU
 0.0/16.0 GPU
 0B/1.86TiB memory
 0B/372.53GiB object_store_memory

Total Demands:
 (no resource demands)
"""


MODULE = (sys.executable, "-m", "gonka_mux.serving.raywait")


class FakeClock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.now += seconds


def test_parse_ray_status() -> None:
    assert parse_ray_status(STATUS_TWO_NODES) == RayResources(gpus=16.0, nodes=2)
    head_only = STATUS_TWO_NODES.replace(" 1 node_0b1c2d3e4f5a6b7c8d9e\n", "").replace(
        "0.0/16.0 GPU", "0.0/8.0 GPU"
    )
    assert parse_ray_status(head_only) == RayResources(gpus=8.0, nodes=1)
    assert parse_ray_status("") is None
    assert parse_ray_status("Active:\n 1 node_ab\nResources\n 0.0/8.0 CPU\n") is None


def test_the_head_waits_until_every_gpu_has_joined() -> None:
    clock = FakeClock()
    answers = iter(["", "", STATUS_TWO_NODES.replace("0.0/16.0 GPU", "0.0/8.0 GPU")] * 3)
    lines: list[str] = []

    def probe(address: str) -> str:
        assert address == "10.0.0.1:6379"
        return next(answers, STATUS_TWO_NODES)

    ok = wait_for_gpus(
        "10.0.0.1:6379",
        16,
        timeout_s=600,
        interval_s=5,
        progress_every_s=15,
        probe=probe,
        say=lines.append,
        clock=clock,
        sleep=clock.sleep,
    )
    assert ok
    assert lines[0].startswith("waiting for Ray at 10.0.0.1:6379 to answer")
    assert any(line.startswith("Ray has 8/16 GPUs") for line in lines)  # progress, not silence
    assert lines[-1].startswith("Ray at 10.0.0.1:6379 reports 16 GPUs on 2 node(s)")
    assert len(lines) < 10  # a line every 15 s, not every poll


def test_the_head_gives_up_when_the_workers_never_come() -> None:
    clock = FakeClock()
    lines: list[str] = []
    ok = wait_for_gpus(
        "h:6379",
        16,
        timeout_s=60,
        interval_s=5,
        probe=lambda _: STATUS_TWO_NODES.replace("0.0/16.0 GPU", "0.0/8.0 GPU"),
        say=lines.append,
        clock=clock,
        sleep=clock.sleep,
    )
    assert not ok and clock.now == 60
    assert "gave up after 60 s" in lines[-1] and "8 of 16" in lines[-1]
    assert "--role worker" in lines[-1]


def test_a_worker_waits_for_the_heads_ray_port() -> None:
    with socket.socket() as server:
        server.bind(("127.0.0.1", 0))
        server.listen()
        address = f"127.0.0.1:{server.getsockname()[1]}"
        lines: list[str] = []
        assert wait_for_head(address, timeout_s=5, interval_s=0.01, say=lines.append)
        assert "answers" in lines[-1]
    clock = FakeClock()
    lines = []
    assert not wait_for_head(
        "10.0.0.1:6379",
        timeout_s=30,
        interval_s=2,
        probe=lambda _: False,
        say=lines.append,
        clock=clock,
        sleep=clock.sleep,
    )
    assert "start the head node first" in lines[-1]


def test_ray_status_runs_the_ray_cli(tmp_path: Path) -> None:
    fake = tmp_path / "ray"
    fake.write_text(
        f"#!{sys.executable}\n"
        "import sys\n"
        "assert sys.argv[1:] == ['status', '--address=h:6379'], sys.argv\n"
        f"sys.stdout.write({STATUS_TWO_NODES!r})\n"
    )
    fake.chmod(fake.stat().st_mode | stat.S_IEXEC)
    assert parse_ray_status(ray_status("h:6379", ray_cmd=(str(fake),))) == RayResources(16.0, 2)
    assert ray_status("h:6379", ray_cmd=(str(tmp_path / "missing"),)) == ""


def test_the_module_runs_as_the_launch_plan_calls_it(tmp_path: Path) -> None:
    fake = tmp_path / "ray"
    fake.write_text(f"#!{sys.executable}\nimport sys\nsys.stdout.write({STATUS_TWO_NODES!r})\n")
    fake.chmod(fake.stat().st_mode | stat.S_IEXEC)
    done = subprocess.run(
        [
            *MODULE,
            "gpus",
            "--address",
            "h:6379",
            "--gpus",
            "16",
            "--timeout",
            "5",
            "--ray",
            str(fake),
        ],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    assert "reports 16 GPUs on 2 node(s)" in done.stdout
