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
    # the services built from the serve stage (not the gateways, nor postgres, redis and the
    # fleet's agent of the `replicas` and `fleet` profiles)
    return {
        name: s
        for name, s in compose["services"].items()
        if s.get("build", {}).get("target") == "serve"
    }


def gateways(compose: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {name: s for name, s in compose["services"].items() if name.startswith("gateway")}


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


def test_every_model_service_has_a_gateway_that_waits_until_it_is_healthy(
    compose: dict[str, Any],
) -> None:
    models = model_services(compose)
    gws = gateways(compose)
    heads = {n for n, svc in models.items() if "--role" not in svc["command"]} | {
        n for n, svc in models.items() if "head" in svc["command"]
    }
    for name in heads:
        gateway = gws[f"gateway-{name}"]
        assert gateway["profiles"] == models[name]["profiles"], name
        assert gateway["depends_on"] == {name: {"condition": "service_healthy"}}, name
        assert gateway["build"]["target"] == "gateway"
        env = gateway["environment"]
        if models[name].get("network_mode") == "host":
            # the head's network: `vllm` does not resolve there
            assert gateway["network_mode"] == "host" and "ports" not in gateway
            assert env["GONKA_VLLM_BASE_URL"] == "http://127.0.0.1:8000"
            assert env["GONKA_VLLM_HEALTH_URL"] == "http://127.0.0.1:8001/health"
        else:
            assert models[name]["networks"]["default"]["aliases"] == ["vllm"]
            assert env["GONKA_VLLM_BASE_URL"] == "http://vllm:8000"
            assert env["GONKA_VLLM_HEALTH_URL"] == "http://vllm:8001/health"
            assert gateway["ports"] == ["9000:9000"]
    workers = set(models) - heads
    assert workers and all(n.endswith("-worker") for n in workers)
    assert not any(f"gateway-{w}" in gws for w in workers)


def test_no_service_depends_on_one_its_profiles_can_leave_out(compose: dict[str, Any]) -> None:
    """Compose v2 refuses a project ("depends on undefined service") where a dependency is
    disabled by a profile that the dependent's profiles do not all enable."""
    services = compose["services"]
    for name, svc in services.items():
        for dep in svc.get("depends_on", {}):
            assert dep in services, (name, dep)
            needed = set(svc.get("profiles", []))
            theirs = set(services[dep].get("profiles", []))
            assert not theirs or (needed and needed <= theirs), (name, dep)


def gateway_parser() -> Any:
    from gonka_mux.cli import build_parser

    return build_parser()


def test_gateway_commands_parse_with_the_gateway_cli_and_name_the_shipped_config(
    compose: dict[str, Any],
) -> None:
    dockerfile = (DOCKER / "Dockerfile").read_text()
    entrypoint = yaml.safe_load(
        re.findall(r"^ENTRYPOINT (\[.*\])$", dockerfile, re.M)[-1]
    )  # the gateway stage's
    assert entrypoint == ["gonka-mux", "gateway"]
    assert "COPY docker/gateway.toml /etc/gonka-mux/gateway.toml" in dockerfile
    cmd = yaml.safe_load(re.findall(r"^CMD (\[.*\])$", dockerfile, re.M)[-1])
    for command in [cmd] + [g["command"] for g in gateways(compose).values()]:
        args = gateway_parser().parse_args([*entrypoint[1:], *command])
        assert args.config == "/etc/gonka-mux/gateway.toml", command  # required by the CLI
        assert args.port == 9000 and args.host == "0.0.0.0"


def test_the_shipped_gateway_config_builds_a_multiplexer_from_the_compose_env(
    compose: dict[str, Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    from gonka_mux import AsyncMultiplexer

    env = next(iter(gateways(compose).values()))["environment"]
    for key in ("GONKA_VLLM_BASE_URL", "GONKA_VLLM_HEALTH_URL"):
        monkeypatch.setenv(key, env[key])
    mux = AsyncMultiplexer.from_config(DOCKER / "gateway.toml")  # what the gateway CLI does
    assert mux.config == {"vllm": {"interval": 2.0}}
    assert mux.endpoints == []  # nothing contacted yet: the node joins when it is up


INTERPOLATION = re.compile(r"\$\{([A-Z_][A-Z0-9_]*)(?::?([-?])([^}]*))?\}")


def test_every_variable_the_compose_file_reads_is_documented(compose: dict[str, Any]) -> None:
    text = (DOCKER / "compose.yaml").read_text()
    found = {m.group(1): m.group(2) for m in INTERPOLATION.finditer(text)}
    assert set(found) == {"HF_CACHE", "HEAD_ADDRESS", "GONKA_PG_PASSWORD"}
    # None is required with ${VAR:?}: compose would demand it for every profile, even those
    # that do not use it (gonka-serve refuses an empty --head-address itself).
    assert set(found.values()) == {"-"}
    for name, svc in compose["services"].items():
        if "HEAD_ADDRESS" in " ".join(map(str, svc.get("command", []))):
            assert svc.get("network_mode") == "host", name
    # Secrets pass through only when set (a null value): an empty GONKA_ADMIN_API_KEY would be
    # refused by the gateway ("too weak") and crash-loop it; an empty HF_TOKEN is not "none".
    passed = {
        key
        for svc in compose["services"].values()
        for key, value in (svc.get("environment") or {}).items()
        if value is None
    }
    assert passed == {"HF_TOKEN", "GONKA_ADMIN_API_KEY", "GONKA_MUX_WEBHOOK_SECRET_KEY"}
    header = text[: text.index("x-serve-base")]
    for var in set(found) | passed:
        assert f"#   {var} " in header, var  # the header says what each one is for


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
