"""gonka-serve's command line: in-process for the quick commands, a real process for `run`."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import sys
from pathlib import Path

import httpx
import pytest
from _serving_support import FAKE_VLLM, free_port

from gonka_mux.serving.cli import main
from gonka_mux.serving.registry import Registry

GONKA_SERVE = str(Path(sys.executable).with_name("gonka-serve"))


def test_profiles_table_and_json(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["profiles"]) == 0
    out = capsys.readouterr().out
    for name in (
        "kimi-k2.5",
        "kimi-k2.5-nvfp4",
        "kimi-linear-48b",
        "kimi-k2-instruct-2node",
        "qwen3-32b",
    ):
        assert name in out
    assert main(["profiles", "--json"]) == 0
    rows = json.loads(capsys.readouterr().out)
    assert len(rows) == len(Registry.load(environ={}))
    full = next(r for r in rows if r["name"] == "kimi-k2.5")
    assert full["gpus"] == 8 and full["parallel"] == "TP8" and full["parsers"] == "kimi_k2/kimi_k2"
    two_node = next(r for r in rows if r["name"] == "kimi-k2-instruct-2node")
    assert two_node["gpus"] == 16 and two_node["parallel"] == "DP16+EP+ray"


def test_dry_run_prints_fit_and_command(capsys: pytest.CaptureFixture[str]) -> None:
    argv = ["run", "tiny-cpu", "--dry-run", "--model", "/m", "--python", "/py", "--port", "8011"]
    code = main([*argv, "--cpu-affinity", "0", "--", "--enforce-eager"])
    out = capsys.readouterr().out
    assert code == 0
    assert "fit: fits" in out
    assert "taskset -c 0 /py -m vllm.entrypoints.openai.api_server --model /m" in out
    assert "--port 8011" in out and out.rstrip().endswith("--enforce-eager")
    assert "health sidecar: port 8012" in out


def test_dry_run_of_a_profile_too_big_for_this_host(capsys: pytest.CaptureFixture[str]) -> None:
    code = main(["run", "kimi-k2.5", "--dry-run", "--gpus", "0,1,2,3,4,5,6,7"])
    out = capsys.readouterr().out
    assert code == 2 and "does not fit" in out and "vllm serve moonshotai/Kimi-K2.5" in out


def test_run_refuses_when_the_gpus_cannot_fit(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["run", "kimi-k2.5", "--port", str(free_port())]) == 2
    err = capsys.readouterr().err
    assert "refusing to start kimi-k2.5" in err and "8x H200" in err


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["run", "kimi-k9", "--dry-run"], "no serving profile named 'kimi-k9'"),
        (["run", "qwen3-8b", "--dry-run", "--gpus", "a,b"], "is not a list of GPU indexes"),
        (["run", "qwen3-8b", "--dry-run", "--", "--port", "1"], "gonka-serve sets it"),
        (["run", "kimi-k2-instruct-2node", "--dry-run"], "--head-address"),
        (["--profiles", "/nonexistent.toml", "profiles"], "does not exist"),
    ],
)
def test_bad_input_exits_2_with_a_message(
    argv: list[str], message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(argv) == 2
    assert message in capsys.readouterr().err


def test_multinode_dry_run_prints_head_and_worker(capsys: pytest.CaptureFixture[str]) -> None:
    main(["run", "kimi-k2-instruct-2node", "--dry-run", "--head-address", "10.1.2.3"])
    head = capsys.readouterr().out
    assert "ray start --head --port=6379" in head and "--data-parallel-backend ray" in head
    main(
        [
            "run",
            "kimi-k2-instruct-2node",
            "--dry-run",
            "--role",
            "worker",
            "--head-address",
            "10.1.2.3",
        ]
    )
    worker = capsys.readouterr().out
    assert "ray start --address=10.1.2.3:6379 --block" in worker and "HTTP API: none" in worker


def test_ray_dry_run_prints_the_steps_head_first(capsys: pytest.CaptureFixture[str]) -> None:
    """Head first, workers join, the head waits for Ray's GPUs, then vLLM: in that order, and
    each role's own commands in that order too."""
    argv = ["run", "kimi-k2-instruct-2node", "--dry-run", "--head-address", "10.1.2.3"]
    main([*argv, "--ray-wait-timeout", "600"])
    head = capsys.readouterr().out
    steps = head[head.index("in this order:") : head.index("command (head):")]
    order = [
        "1. head: ray start --head --port=6379 --node-ip-address=10.1.2.3",
        "2. each worker: gonka-serve run kimi-k2-instruct-2node --role worker",
        "ray start --address=10.1.2.3:6379 --block",
        "3. head: waits (up to 600 s",
        "reports 16 GPUs",
        "4. head: vllm serve",
    ]
    positions = [steps.index(text) for text in order]
    assert positions == sorted(positions)
    commands = head[head.index("command (head):") :]
    positions = [
        commands.index(text)
        for text in (
            "ray start --head",
            "gonka_mux.serving.raywait gpus --address 10.1.2.3:6379 --gpus 16 --timeout 600",
            "vllm serve moonshotai/Kimi-K2-Instruct",
        )
    ]
    assert positions == sorted(positions)
    main([*argv, "--role", "worker"])
    worker = capsys.readouterr().out
    commands = worker[worker.index("command (worker):") :]
    assert commands.index("raywait head --address 10.1.2.3:6379") < commands.index(
        "ray start --address=10.1.2.3:6379 --block"
    )


def test_dry_run_names_the_memory_source_and_a_missing_chat_template(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    main(["run", "deepseek-v3.1", "--dry-run"])
    out = capsys.readouterr().out
    assert "models/deepseek-ai/DeepSeek-V3.1.yaml" in out and "805 GB over 8 GPU(s)" in out
    assert ">= 93.8 GiB each" in out
    assert "--enable-expert-parallel" in out
    assert "--chat-template /vllm-workspace/examples/tool_chat_template_deepseekv31.jinja" in out
    assert "is not on this host" in out  # no official image here
    template = tmp_path / "t.jinja"
    template.write_text("{{ messages }}")
    main(["run", "deepseek-v3.1", "--dry-run", "--chat-template", str(template)])
    out = capsys.readouterr().out
    assert f"--chat-template {template}" in out and "is not on this host" not in out
    main(["run", "kimi-k2.5-reap-int4", "--dry-run"])
    assert "estimate, no vLLM recipe" in capsys.readouterr().out


def test_ray_wait_subcommand(capsys: pytest.CaptureFixture[str]) -> None:
    port = free_port()  # nothing listens: the wait times out, quickly, with a message
    address = f"127.0.0.1:{port}"
    code = main(
        ["ray-wait", "head", "--address", address, "--timeout", "0.2", "--interval", "0.05"]
    )
    out = capsys.readouterr().out
    assert code == 1 and "start the head node first" in out


def test_gpus_command_prints_a_snapshot(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["gpus"]) == 0
    snap = json.loads(capsys.readouterr().out)
    assert set(snap) == {"available", "driver", "error", "count", "gpus"}
    assert snap["available"] == (snap["count"] > 0)


def test_tiny_model_runs_the_builder_with_the_given_python(tmp_path: Path) -> None:
    record = tmp_path / "argv.txt"
    fake_python = tmp_path / "python"
    fake_python.write_text(f'#!/bin/sh\necho "$@" > {record}\n')
    fake_python.chmod(0o755)
    assert (
        main(["tiny-model", str(tmp_path / "out"), "--python", str(fake_python), "--kimi-tokens"])
        == 0
    )
    args = record.read_text().split()
    assert args[0].endswith("gonka_mux/serving/tiny_model.py")
    assert args[1:] == [str(tmp_path / "out"), "--kimi-tokens"]


@pytest.mark.slow
async def test_run_supervises_and_drains_on_sigterm(tmp_path: Path) -> None:
    profiles = tmp_path / "fake.toml"
    profiles.write_text(
        f"""
[profiles.fake]
description = "the stand-in server"
model = "fake-model"
served_model_name = "fake"
device = "cpu"
gpus = 0
vllm_cmd = [{json.dumps(sys.executable)}, {json.dumps(str(FAKE_VLLM))}]
drain_timeout_s = 5
"""
    )
    port, health_port = free_port(), free_port()
    proc = await asyncio.create_subprocess_exec(
        GONKA_SERVE,
        "--profiles",
        str(profiles),
        "run",
        "fake",
        "--port",
        str(port),
        "--health-port",
        str(health_port),
        "--drain-notice",
        "0.2",
        "--log-file",
        str(tmp_path / "fake.log"),
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )
    health = f"http://127.0.0.1:{health_port}/health"
    try:
        async with httpx.AsyncClient(timeout=2) as client:
            for _ in range(600):
                assert proc.returncode is None, (await proc.communicate())[1].decode()
                try:
                    if (await client.get(health)).status_code == 200:
                        break
                except httpx.HTTPError:
                    pass
                await asyncio.sleep(0.05)
            body = (await client.get(health)).json()
            assert body["state"] == "ready" and body["profile"] == "fake"
            assert (await client.get(f"http://127.0.0.1:{port}/v1/models")).status_code == 200
        proc.send_signal(signal.SIGTERM)
        _, err = await asyncio.wait_for(proc.communicate(), 20)
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
    text = err.decode()
    assert proc.returncode == 0, text
    assert "SIGTERM: draining" in text
    assert "final state: stopped" in text
    assert "health sidecar at" in text
    assert (tmp_path / "fake.log").read_text().count("Starting vLLM server") == 1


def test_the_docs_give_the_ray_steps_in_launch_order() -> None:
    docs = (Path(__file__).resolve().parents[2] / "docs" / "serving.md").read_text()
    section = docs[docs.index("### Two nodes") : docs.index("## Health")]
    steps = [
        "ray start --head --port=6379",
        "--role worker --head-address HEAD_IP",
        "ray start --address=HEAD_IP:6379 --block",
        "reports all 16 GPUs",
        "vllm serve ... --data-parallel-size 16",
    ]
    positions = [section.index(step) for step in steps]
    assert positions == sorted(positions)
