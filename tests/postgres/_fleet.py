"""Helpers for the multi-process tests: a `gonka-mux gateway` subprocess, the admin API, usage.

Each gateway is a real ``python -m gonka_mux gateway`` process on its own free loopback port,
so replicas share nothing but what the config points them at (PostgreSQL, Redis).
"""

from __future__ import annotations

import json
import os
import secrets
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import httpx
from tests._postgres import free_port

CLI = [sys.executable, "-m", "gonka_mux"]
DOCKER = Path(__file__).resolve().parents[2] / "docker"
SHIPPED_PG = "postgresql://gonka@postgres:5432/gonka"
SHIPPED_REDIS = "redis://redis:6379/0"
# What the tests add to a shipped table: 429 at once, webhooks to the loopback receiver, and a
# short job lease so a dead process's job is taken over within seconds.
TEST_SETTINGS = {
    "[gateway]\n": "allow_private_webhooks = true\n",
    "[limits]\n": "max_wait = 0\n",
    "[webhooks]\n": "lease = 3\npoll_interval = 0.5\n"
    "max_attempts = 5\ninitial = 0.2\nmax_delay = 1\njitter = 0\n",
}
ADMIN_KEY = "adm_" + secrets.token_urlsafe(32)
# Every process that runs jobs from one database seals webhook secrets with the same key.
WEBHOOK_SECRET_KEY = secrets.token_hex(32)


def base_env(state_dir: Path) -> dict[str, str]:
    env = {
        **os.environ,
        "GONKA_MUX_STATE_DIR": str(state_dir),
        "GONKA_ADMIN_API_KEY": ADMIN_KEY,
        "GONKA_MUX_WEBHOOK_SECRET_KEY": WEBHOOK_SECRET_KEY,
        "PYTHONUNBUFFERED": "1",
    }
    for name in ("GONKA_GATEWAY_PORT", "GONKA_GATEWAY_HOST", "GONKA_GATEWAY_DATABASE_URL"):
        env.pop(name, None)
    return env


def shipped_config(
    name: str, database_url: str, redis_url: str, fast_url: str, slow_url: str, tiny_rpm: int
) -> str:
    """``docker/<name>`` as the test runs it: its PostgreSQL and Redis URLs pointed at the
    test's servers, its vLLM node replaced by two fake backends (``m`` answers at once,
    ``slow`` after 2 s), the test settings above, and rate-limit tiers ``tiny`` and ``pro``."""
    text = (DOCKER / name).read_text()
    for shipped, ours in ((SHIPPED_PG, database_url), (SHIPPED_REDIS, redis_url)):
        assert shipped in text, (name, shipped)
        text = text.replace(shipped, ours)
    vllm = "[vllm]\ninterval = 2.0\n"
    assert text.count(vllm) == 1, name
    text = text.replace(
        vllm,
        f'[[endpoints]]\nname = "fast"\nbase_url = "{fast_url}"\nmodels = ["m"]\n\n'
        f'[[endpoints]]\nname = "slow"\nbase_url = "{slow_url}"\nmodels = ["slow"]\n',
    )
    if "[webhooks]\n" not in text:
        text += "\n[webhooks]\n"  # its path comes from [gateway] database_url
    for table, extra in TEST_SETTINGS.items():
        assert text.count(table) == 1, (name, table)
        text = text.replace(table, table + extra)
    return text + f"\n[limits.tiers.tiny]\nrpm = {tiny_rpm}\n\n[limits.tiers.pro]\nrpm = 10000\n"


class GatewayProcess:
    """One replica: ``gonka-mux gateway --config CONFIG`` in a subprocess on a free port."""

    def __init__(self, config: Path, directory: Path, name: str) -> None:
        directory.mkdir(parents=True, exist_ok=True)
        self.name = name
        self.log = directory / f"{name}.log"
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        args = ["gateway", "--config", str(config), "--host", "127.0.0.1"]
        args += ["--port", str(self.port), "--log-level", "info"]
        with self.log.open("w") as out:
            self.proc = subprocess.Popen(
                CLI + args, env=base_env(directory / "state"), stdout=out, stderr=out
            )
        self.client = httpx.Client(base_url=self.url, timeout=30)
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            assert self.proc.poll() is None, f"{name} exited:\n{self.log.read_text()}"
            try:
                if self.client.get("/health", timeout=2).status_code == 200:
                    return
            except httpx.HTTPError:
                time.sleep(0.1)
        self.stop()
        raise AssertionError(f"{name} did not start:\n{self.log.read_text()}")

    def admin(self, method: str, path: str, **kwargs: Any) -> httpx.Response:
        headers = {"Authorization": f"Bearer {ADMIN_KEY}"}
        return self.client.request(method, path, headers=headers, **kwargs)

    def chat(self, key: str, model: str = "m", **extra: Any) -> httpx.Response:
        body = {"model": model, "messages": [{"role": "user", "content": "hi"}], **extra}
        return self.client.post(
            "/v1/chat/completions", json=body, headers={"Authorization": f"Bearer {key}"}
        )

    def kill(self) -> None:
        """SIGKILL: no shutdown, no flush, no lease given back (a crashed host)."""
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(30)

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGINT)  # a clean stop flushes the meter
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)
        self.client.close()


def create_key(gateway: GatewayProcess, tier: str = "default", name: str = "") -> tuple[str, str]:
    """(key id, plaintext) of a new key made through ``gateway``'s admin API."""
    response = gateway.admin("POST", "/admin/keys", json={"name": name, "tier": tier})
    assert response.status_code in (200, 201), response.text
    body = response.json()
    return body["id"], body["key"]


def usage_requests(database_url: str, key_id: str, state_dir: Path) -> int:
    """Requests recorded for ``key_id``, as ``gonka-mux usage --db URL --json`` reports them."""
    result = subprocess.run(
        [*CLI, "usage", "--db", database_url, "--json", "--key", key_id, "--by", "key"],
        env=base_env(state_dir),
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr
    return int(json.loads(result.stdout)["totals"]["requests"])


def wait_for_usage(database_url: str, key_id: str, expected: int, state_dir: Path) -> None:
    """Poll until ``expected`` requests are recorded (meters flush every 0.5 s); more than
    ``expected`` at any point is a double count and fails at once."""
    deadline = time.monotonic() + 60
    seen = -1
    while time.monotonic() < deadline:
        seen = usage_requests(database_url, key_id, state_dir)
        assert seen <= expected, f"usage counts {seen} requests for {key_id}, {expected} were made"
        if seen == expected:
            return
        time.sleep(0.5)
    raise AssertionError(f"usage shows {seen} of {expected} requests for {key_id} after 60 s")
