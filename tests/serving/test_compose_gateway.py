"""The compose gateway, run as written: its image's entrypoint, its command, its environment and
the config the image ships. It serves /health while the model node is down (instead of exiting
2 and crash-looping, as `gonka-mux gateway` without --config did) and routes once the node is up.

The only changes from the compose file: the `vllm` host name becomes 127.0.0.1 with this test's
ports, the port the gateway binds is a free one, the state directory is a temporary one, and the
admin key is set (compose passes the user's GONKA_ADMIN_API_KEY).
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import secrets
import sys
import time
from pathlib import Path
from typing import Any

import httpx
import starlette  # noqa: F401  (the gateway extra is in the test extra: missing is a failure)
import uvicorn  # noqa: F401
import yaml
from _serving_support import fake_vllm_cmd, free_port

from gonka_mux.serving.command import build_launch
from gonka_mux.serving.health import HealthReporter, HealthServer
from gonka_mux.serving.registry import Profile
from gonka_mux.serving.supervisor import State, Supervisor, SupervisorConfig

DOCKER = Path(__file__).resolve().parents[2] / "docker"
GONKA_MUX = str(Path(sys.executable).with_name("gonka-mux"))
ADMIN = secrets.token_urlsafe(32)  # what a user exports as GONKA_ADMIN_API_KEY


def compose_gateway() -> tuple[list[str], dict[str, str]]:
    """(argv, environment) of a single-node gateway service, as compose would run it."""
    compose = yaml.safe_load((DOCKER / "compose.yaml").read_text())
    service = compose["services"]["gateway-qwen3-8b"]
    dockerfile = (DOCKER / "Dockerfile").read_text()
    entrypoint = json.loads(re.findall(r"^ENTRYPOINT (\[.*\])$", dockerfile, re.M)[-1])
    shipped = re.search(r"^COPY (\S+) (/etc/gonka-mux/gateway.toml)$", dockerfile, re.M)
    assert shipped is not None
    repo_file = str(DOCKER.parent / shipped.group(1))
    argv = [repo_file if arg == shipped.group(2) else arg for arg in service["command"]]
    # a null value passes the user's variable through when it is set (absent otherwise)
    env = {k: str(v) for k, v in service["environment"].items() if v is not None}
    return [GONKA_MUX, *entrypoint[1:], *argv], env


async def chat(client: httpx.AsyncClient, url: str, key: str) -> tuple[int, str]:
    body = {"model": "fake", "messages": [{"role": "user", "content": "hi"}], "stream": True}
    resp = await client.post(url, json=body, headers={"Authorization": f"Bearer {key}"})
    text = resp.text
    if resp.status_code != 200:
        return resp.status_code, text
    content = []
    for line in text.splitlines():
        if line.startswith("data: {"):
            for choice in json.loads(line[6:]).get("choices", []):
                content.append(choice.get("delta", {}).get("content") or "")
    return 200, "".join(content)


async def test_compose_gateway_serves_health_while_the_node_is_down_and_routes_once_up(
    tmp_path: Path,
) -> None:
    argv, env = compose_gateway()
    vllm_port, sidecar_port, gateway_port = free_port(), free_port(), free_port()
    env["GONKA_VLLM_BASE_URL"] = env["GONKA_VLLM_BASE_URL"].replace(
        "vllm:8000", f"127.0.0.1:{vllm_port}"
    )
    env["GONKA_VLLM_HEALTH_URL"] = env["GONKA_VLLM_HEALTH_URL"].replace(
        "vllm:8001", f"127.0.0.1:{sidecar_port}"
    )
    env.update(GONKA_MUX_STATE_DIR=str(tmp_path / "state"), GONKA_ADMIN_API_KEY=ADMIN)
    parent = {k: v for k, v in os.environ.items() if k != "GONKA_ADMIN_API_KEY"}
    argv[argv.index("--port") + 1] = str(gateway_port)
    log = (tmp_path / "gateway.log").open("wb")
    gateway = await asyncio.create_subprocess_exec(
        *argv, env={**parent, **env}, stdout=log, stderr=log
    )
    base = f"http://127.0.0.1:{gateway_port}"
    sup: Supervisor | None = None
    sidecar: HealthServer | None = None
    task: asyncio.Task[Any] | None = None
    try:
        async with httpx.AsyncClient(timeout=10) as client:
            # 1. The node is down: the gateway is up anyway and says so on /health.
            deadline = time.monotonic() + 30
            while True:
                assert gateway.returncode is None, (tmp_path / "gateway.log").read_text()
                try:
                    health = await client.get(base + "/health")
                    break
                except httpx.HTTPError:
                    assert time.monotonic() < deadline, "the gateway never answered"
                    await asyncio.sleep(0.05)
            assert health.status_code == 503 and health.json()["status"] == "unavailable"
            created = await client.post(
                base + "/admin/keys",
                json={"name": "compose-test"},
                headers={"Authorization": f"Bearer {ADMIN}"},
            )
            assert created.status_code == 201, created.text
            key = created.json()["key"]
            code, _ = await chat(client, base + "/v1/chat/completions", key)
            assert code >= 400  # nothing serves "fake" yet (and this starts the node source)

            # 2. The node comes up: gonka-serve's supervisor and sidecar on the compose ports.
            profile = Profile(
                name="fake",
                model="fake-model",
                served_model_name="fake",
                device="cpu",
                gpus=0,
                vllm_cmd=fake_vllm_cmd(),
                drain_timeout_s=2,
            )
            plan = build_launch(profile, port=vllm_port, extra_args=["--token-delay", "0.001"])
            sup = Supervisor(plan, config=SupervisorConfig(poll_interval_s=0.05, kill_grace_s=1))
            sidecar = HealthServer(
                HealthReporter(supervisor=sup, gpu_reader=None), port=sidecar_port
            )
            await sidecar.start()
            task = asyncio.create_task(sup.run())
            await sup.wait_for_state(State.READY, timeout=15)
            ready_at = time.monotonic()
            while True:
                code, text = await chat(client, base + "/v1/chat/completions", key)
                if code == 200:
                    break
                assert time.monotonic() - ready_at < 10, (code, text)
                await asyncio.sleep(0.05)
            assert text.startswith("t0 ")
            health = await client.get(base + "/health")
            assert health.status_code == 200 and health.json()["models"] == ["fake"]
    finally:
        gateway.terminate()
        try:
            await asyncio.wait_for(gateway.wait(), 15)
        except asyncio.TimeoutError:
            gateway.kill()
            await gateway.wait()
        log.close()
        if sup is not None and task is not None:
            sup.request_stop()
            await asyncio.wait_for(task, 15)
        if sidecar is not None:
            await sidecar.aclose()
            await sidecar.reporter.aclose()
