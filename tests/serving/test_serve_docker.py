"""The Docker packaging agrees with the registry (no Docker engine here: the files are checked)."""

from __future__ import annotations

import re
import shlex
from pathlib import Path
from typing import Any

import pytest
import yaml

from gonka_mux.serving.cli import _parser
from gonka_mux.serving.registry import Registry

DOCKER = Path(__file__).resolve().parents[2] / "docker"


def seconds(value: str) -> float:
    match = re.fullmatch(r"(\d+)(s|m|h)", value)
    assert match, value
    return int(match.group(1)) * {"s": 1, "m": 60, "h": 3600}[match.group(2)]


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    return yaml.safe_load((DOCKER / "compose.yaml").read_text())


@pytest.fixture(scope="module")
def registry() -> Registry:
    return Registry.load(environ={})


def model_services(compose: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {name: s for name, s in compose["services"].items() if name != "gateway"}


def test_every_gpu_profile_has_a_compose_profile(
    compose: dict[str, Any], registry: Registry
) -> None:
    services = model_services(compose)
    gpu_profiles = {p.name for p in registry if p.device == "cuda"}
    profile_names = {s["profiles"][0] for s in services.values()}
    assert gpu_profiles <= profile_names


def test_each_service_matches_its_profile(compose: dict[str, Any], registry: Registry) -> None:
    for name, service in model_services(compose).items():
        command = service["command"]
        profile = registry.get(command[0])
        args = _parser().parse_args(["run", *command])  # the command is valid gonka-serve input
        devices = service["deploy"]["resources"]["reservations"]["devices"]
        assert devices == [{"driver": "nvidia", "count": profile.gpus, "capabilities": ["gpu"]}], (
            name
        )
        assert service["ipc"] == "host", name
        grace = seconds(service["stop_grace_period"])
        assert grace >= profile.drain_timeout_s + 30, name  # drain, then vLLM's teardown
        check = service["healthcheck"]
        assert seconds(check["start_period"]) >= profile.startup_timeout_s, name
        assert check["test"][:2] == ["CMD", "gonka-serve"] and "8001" in check["test"][-1]
        if profile.is_multinode:
            assert service["network_mode"] == "host" and args.head_address
        else:
            assert args.host == "0.0.0.0" and args.port == 8000 and args.health_port == 8001
            assert service["networks"]["default"]["aliases"] == ["vllm"]
            assert "8000:8000" in service["ports"]


def test_gateway_service_finds_the_node(compose: dict[str, Any]) -> None:
    gateway = compose["services"]["gateway"]
    assert gateway["build"]["target"] == "gateway"
    assert gateway["environment"]["GONKA_VLLM_BASE_URL"] == "http://vllm:8000"
    assert gateway["environment"]["GONKA_VLLM_HEALTH_URL"] == "http://vllm:8001/health"


def test_dockerfile_builds_on_the_official_vllm_image() -> None:
    text = (DOCKER / "Dockerfile").read_text()
    assert re.search(r"^ARG VLLM_IMAGE=vllm/vllm-openai:v[\d.]+$", text, re.M)
    assert "FROM ${VLLM_IMAGE} AS serve" in text
    assert '"/opt/gonka-mux[serve]"' in text
    assert 'ENTRYPOINT ["gonka-serve", "run"]' in text
    assert "HEALTHCHECK" in text and "--start-period=3600s" in text
    cmd = re.search(r"^CMD (\[.*\])$", text, re.M)
    assert cmd is not None
    default = yaml.safe_load(cmd.group(1))
    args = _parser().parse_args(["run", *default])
    assert args.profile == "kimi-k2.5" and args.host == "0.0.0.0"
    assert "FROM ${PYTHON_IMAGE} AS gateway" in text
    assert shlex.split('ENTRYPOINT ["gonka-mux", "gateway"]')
