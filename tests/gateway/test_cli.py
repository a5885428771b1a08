"""`gonka-mux gateway` as a real subprocess: config file, env settings, the admin key printed once,
key management commands, and usage that survives a restart."""

from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from gonka_mux.testing import FakeBackend

CLI = [sys.executable, "-m", "gonka_mux"]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def setup(tmp_path):
    with FakeBackend(name="upstream") as backend:
        config = tmp_path / "gonka-mux.toml"
        config.write_text(
            f"""
[[endpoints]]
name = "upstream"
base_url = "{backend.url}"
models = ["m"]

[limits]
max_wait = 0
[limits.tiers.pro]
rpm = 1000
tpm = 10000000
[limits.tiers.tiny]
rpm = 1

[metering]
path = "{tmp_path / "usage.sqlite3"}"

[webhooks]
path = "{tmp_path / "jobs.sqlite3"}"

[memory]
path = "{tmp_path / "memory.sqlite3"}"

[sessions]
store = "memory"

[gateway]
keys_db = "{tmp_path / "keys.sqlite3"}"
"""
        )
        env = {
            **os.environ,
            "GONKA_MUX_STATE_DIR": str(tmp_path / "state"),
            "PYTHONUNBUFFERED": "1",
        }
        env.pop("GONKA_ADMIN_API_KEY", None)
        env.pop("GONKA_GATEWAY_PORT", None)
        env.pop("GONKA_GATEWAY_HOST", None)
        yield config, env, tmp_path, backend


def run(args, env, **kw):
    return subprocess.run(CLI + args, env=env, capture_output=True, text=True, timeout=60, **kw)


class Gateway:
    def __init__(self, args: list[str], env: dict[str, str], log: Path, port: int) -> None:
        self.log = log
        self.url = f"http://127.0.0.1:{port}"
        with log.open("w") as f:
            self.proc = subprocess.Popen(CLI + args, env=env, stderr=f, stdout=f)
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            assert self.proc.poll() is None, log.read_text()
            try:
                if httpx.get(f"{self.url}/health", timeout=1).status_code == 200:
                    return
            except httpx.HTTPError:
                time.sleep(0.1)
        raise AssertionError("gateway did not start:\n" + log.read_text())

    def stop(self, sig: int = signal.SIGINT) -> int:
        """Stop as Ctrl-C or a service manager would; uvicorn shuts down cleanly (lifespan:
        the meter flushes) and then re-raises the signal, so SIGINT exits 130."""
        self.proc.send_signal(sig)
        code = self.proc.wait(30)
        assert "Application shutdown complete" in self.log.read_text()
        return code


@pytest.mark.slow
def test_gateway_cli_end_to_end(setup):
    config, env, tmp_path, _backend = setup
    created = run(["gateway", "keys", "create", "--config", str(config), "--tier", "pro"], env)
    assert created.returncode == 0, created.stderr
    key = re.search(r"key:\s+(gmx_\S+)", created.stdout).group(1)
    key_id = re.search(r"id:\s+(\S+)", created.stdout).group(1)
    refused = run(["gateway", "keys", "create", "--config", str(config), "--tier", "gold"], env)
    assert refused.returncode == 2 and "gold" in refused.stderr

    port = free_port()
    first = Gateway(
        ["gateway", "--config", str(config), "--host", "127.0.0.1", "--port", str(port)],
        env,
        tmp_path / "first.log",
        port,
    )
    try:
        chat = httpx.post(
            f"{first.url}/v1/chat/completions",
            json={"model": "m", "messages": [{"role": "user", "content": "hi"}]},
            headers={"Authorization": f"Bearer {key}"},
        )
        assert chat.status_code == 200, chat.text
        log = first.log.read_text()
        admin_key = re.search(r"(gmx_admin_\S+)", log).group(1)
        usage = httpx.get(
            f"{first.url}/admin/usage", headers={"Authorization": f"Bearer {admin_key}"}
        )
        assert usage.json()["totals"]["requests"] == 1
    finally:
        assert first.stop() == 130
    assert log.count(admin_key) == 1  # printed once, never logged again

    # Second start: port from the environment; the stored admin key is not printed again.
    port2 = free_port()
    env2 = {**env, "GONKA_GATEWAY_PORT": str(port2), "GONKA_GATEWAY_HOST": "127.0.0.1"}
    second = Gateway(["gateway", "--config", str(config)], env2, tmp_path / "second.log", port2)
    try:
        usage = httpx.get(
            f"{second.url}/admin/usage?group_by=key",
            headers={"Authorization": f"Bearer {admin_key}"},
        )
        # The usage recorded before the restart was flushed to SQLite and is still there.
        assert usage.json()["data"][0]["group"] == key_id
        assert usage.json()["totals"]["requests"] == 1
        listed = run(["gateway", "keys", "list", "--config", str(config)], env)
        assert key_id in listed.stdout and "pro" in listed.stdout and key not in listed.stdout
        revoked = run(["gateway", "keys", "revoke", key_id, "--config", str(config)], env)
        assert revoked.returncode == 0
        time.sleep(2.1)  # the running gateway re-reads keys after its 2 s cache
        gone = httpx.get(f"{second.url}/v1/models", headers={"Authorization": f"Bearer {key}"})
        assert gone.status_code == 401
    finally:
        assert second.stop(signal.SIGTERM) == -signal.SIGTERM
    second_log = (tmp_path / "second.log").read_text()
    assert "gmx_admin_" not in second_log and "earlier start" in second_log

    # GONKA_ADMIN_API_KEY wins over the stored one.
    port3 = free_port()
    env3 = {**env, "GONKA_ADMIN_API_KEY": "gmx_admin_from-env-0123456789abcdefghijklmnopqrstuvwxyz"}
    args = ["gateway", "--config", str(config), "--host", "127.0.0.1", "--port", str(port3)]
    third = Gateway(args, env3, tmp_path / "third.log", port3)
    try:
        ok = httpx.get(
            f"{third.url}/admin/keys",
            headers={
                "Authorization": "Bearer gmx_admin_from-env-0123456789abcdefghijklmnopqrstuvwxyz"
            },
        )
        old = httpx.get(f"{third.url}/admin/keys", headers={"Authorization": f"Bearer {admin_key}"})
        assert ok.status_code == 200 and old.status_code == 401
    finally:
        assert third.stop() == 130


@pytest.mark.slow
def test_gateway_cli_reports_bad_config_and_missing_config(setup):
    config, env, tmp_path, _ = setup
    missing = run(["gateway"], env)
    assert missing.returncode == 2 and "--config" in missing.stderr
    typo = tmp_path / "typo.toml"
    typo.write_text(config.read_text().replace("keys_db", "key_db"))
    result = run(["gateway", "--config", str(typo)], env)
    assert result.returncode == 2 and "key_db" in result.stderr
    port = run(["gateway", "--config", str(config), "--port", "70000"], env)
    assert port.returncode == 2 and "port" in port.stderr
