from __future__ import annotations

import pytest

from gonka_mux.errors import ConfigError
from gonka_mux.serving.command import API_SERVER_MODULE, build_launch, multinode_steps
from gonka_mux.serving.registry import Registry


@pytest.fixture(scope="module")
def registry() -> Registry:
    return Registry.load(environ={})


def test_kimi_k25_command_line(registry: Registry) -> None:
    plan = build_launch(registry.get("kimi-k2.5"), host="0.0.0.0", port=9000)
    assert list(plan.argv) == [
        "vllm",
        "serve",
        "moonshotai/Kimi-K2.5",
        "--served-model-name",
        "kimi-k2.5",
        "--host",
        "0.0.0.0",
        "--port",
        "9000",
        "--tensor-parallel-size",
        "8",
        "--max-model-len",
        "131072",
        "--gpu-memory-utilization",
        "0.9",
        "--trust-remote-code",
        "--enable-auto-tool-choice",
        "--tool-call-parser",
        "kimi_k2",
        "--reasoning-parser",
        "kimi_k2",
        "--enable-server-load-tracking",
        "--shutdown-timeout",
        "120",
        "--mm-encoder-tp-mode",
        "data",
    ]
    assert plan.env["VLLM_NO_USAGE_STATS"] == "1"
    assert plan.base_url == "http://127.0.0.1:9000"  # 0.0.0.0 is probed on loopback
    assert plan.serves_http and plan.setup == ()


def test_nvfp4_tier_sets_its_kv_dtype_and_no_env_vllm_does_not_know(registry: Registry) -> None:
    plan = build_launch(registry.get("kimi-q4"))
    # The recipe's VLLM_USE_FLASHINFER_MOE_FP4 is not in vLLM 0.32's envs.py (warned, ignored).
    assert "VLLM_USE_FLASHINFER_MOE_FP4" not in plan.env
    argv = list(plan.argv)
    assert argv[argv.index("--tensor-parallel-size") + 1] == "4"
    assert argv[argv.index("--kv-cache-dtype") + 1] == "fp8"


@pytest.mark.parametrize(
    "name",
    [
        n
        for n in Registry.load(environ={}).names()
        if not Registry.load(environ={}).get(n).is_multinode
    ],
)
def test_every_single_node_profile_builds_a_supervisable_command(
    registry: Registry, name: str
) -> None:
    profile = registry.get(name)
    plan = build_launch(profile, port=8123)
    argv = list(plan.argv)
    assert "--enable-server-load-tracking" in argv
    assert argv[argv.index("--shutdown-timeout") + 1] == f"{profile.drain_timeout_s:g}"
    assert argv[argv.index("--served-model-name") + 1] == profile.served_model_name
    assert argv[argv.index("--port") + 1] == "8123"
    assert "--disable-log-stats" not in argv
    if profile.tensor_parallel_size > 1:
        assert argv[argv.index("--tensor-parallel-size") + 1] == str(profile.tensor_parallel_size)
    for flag, value in (
        ("--tool-call-parser", profile.tool_call_parser),
        ("--reasoning-parser", profile.reasoning_parser),
    ):
        assert (flag in argv) == (value is not None)
    if profile.device == "cpu":
        assert "--gpu-memory-utilization" not in argv


def test_module_launcher_for_vllm_cpu(registry: Registry) -> None:
    plan = build_launch(registry.get("tiny-cpu"), model="/tmp/tiny", python="/venv/bin/python")
    assert list(plan.argv[:5]) == [
        "/venv/bin/python",
        "-m",
        API_SERVER_MODULE,
        "--model",
        "/tmp/tiny",
    ]
    assert plan.env["VLLM_CPU_KVCACHE_SPACE"] == "1"


def test_launcher_and_vllm_cmd_can_be_overridden(registry: Registry) -> None:
    p = registry.get("qwen3-8b")
    assert build_launch(p, vllm_cmd=["uv", "run", "vllm"]).argv[:4] == (
        "uv",
        "run",
        "vllm",
        "serve",
    )
    assert build_launch(p, launcher="module", python="py").argv[:3] == (
        "py",
        "-m",
        API_SERVER_MODULE,
    )
    with pytest.raises(ConfigError, match="unknown launcher"):
        build_launch(p, launcher="docker")


def test_cli_overrides_and_extra_args(registry: Registry) -> None:
    plan = build_launch(
        registry.get("qwen3-8b"),
        model="/models/q",
        served_model_name="qq",
        drain_timeout_s=7,
        extra_args=["--enforce-eager"],
        gpu_env={"CUDA_VISIBLE_DEVICES": "3", "CUDA_DEVICE_ORDER": "PCI_BUS_ID"},
    )
    argv = list(plan.argv)
    assert argv[2] == "/models/q" and argv[argv.index("--served-model-name") + 1] == "qq"
    assert argv[argv.index("--shutdown-timeout") + 1] == "7"
    assert argv[-1] == "--enforce-eager"
    assert plan.env["CUDA_VISIBLE_DEVICES"] == "3"


def test_chat_template_from_the_profile_or_the_option(registry: Registry) -> None:
    p = registry.get("deepseek-v3.1")
    argv = list(build_launch(p).argv)
    assert argv[argv.index("--chat-template") + 1] == p.chat_template
    assert "--enable-expert-parallel" in argv
    argv = list(build_launch(p, chat_template="/t/mine.jinja").argv)
    assert argv[argv.index("--chat-template") + 1] == "/t/mine.jinja"
    assert "--chat-template" not in build_launch(registry.get("qwen3-8b")).argv
    with pytest.raises(ConfigError, match="gonka-serve sets it"):
        build_launch(p, extra_args=["--chat-template", "x"])


def test_multinode_steps_are_in_launch_order(registry: Registry) -> None:
    steps = multinode_steps(registry.get("kimi-k2-instruct-2node"), head_address="10.0.0.9")
    assert [node for node, _ in steps] == ["head", "each worker", "head", "head"]
    assert steps[0][1].startswith("ray start --head")
    assert "ray start --address=10.0.0.9:6379 --block" in steps[1][1]
    assert "16 GPUs" in steps[2][1] and steps[3][1].startswith("vllm serve")
    assert multinode_steps(registry.get("qwen3-8b")) == []
    mp = multinode_steps(registry.get("kimi-k2-instruct-2node-mp"))
    assert "--headless" in mp[1][1]


@pytest.mark.parametrize("flag", ["--port", "--served-model-name=x", "-tp", "--shutdown-timeout"])
def test_extra_args_cannot_fight_managed_flags(registry: Registry, flag: str) -> None:
    with pytest.raises(ConfigError, match="gonka-serve sets it"):
        build_launch(registry.get("qwen3-8b"), extra_args=[flag, "1"])


def test_disable_log_stats_is_refused(registry: Registry) -> None:
    with pytest.raises(ConfigError, match="/metrics"):
        build_launch(registry.get("qwen3-8b"), extra_args=["--disable-log-stats"])


WAIT = ("py", "-m", "gonka_mux.serving.raywait")


def test_ray_two_node_head_and_worker(registry: Registry) -> None:
    p = registry.get("kimi-k2-instruct-2node")
    with pytest.raises(ConfigError, match="--head-address"):
        build_launch(p)
    head = build_launch(p, head_address="10.0.0.1", host="0.0.0.0", helper_python="py")
    # Head first: Ray up, then wait (bounded) until every node's GPUs are in, then vLLM.
    assert head.setup == (
        ("ray", "start", "--head", "--port=6379", "--node-ip-address=10.0.0.1"),
        (*WAIT, "gpus", "--address", "10.0.0.1:6379", "--gpus", "16", "--timeout", "900"),
    )
    assert head.teardown == (("ray", "stop"),)
    assert "# on stop: ray stop" in head.shell()
    argv = list(head.argv)
    assert argv[argv.index("--data-parallel-size") + 1] == "16"
    assert argv[argv.index("--data-parallel-size-local") + 1] == "8"
    assert argv[argv.index("--data-parallel-backend") + 1] == "ray"
    assert argv[argv.index("--data-parallel-address") + 1] == "10.0.0.1"
    assert "--enable-expert-parallel" in argv and head.serves_http and head.role == "head"
    worker = build_launch(
        p, role="worker", head_address="10.0.0.1", helper_python="py", ray_wait_s=60
    )
    # The worker waits for the head's Ray, then joins it.
    assert worker.setup == ((*WAIT, "head", "--address", "10.0.0.1:6379", "--timeout", "60"),)
    assert worker.argv == ("ray", "start", "--address=10.0.0.1:6379", "--block")
    assert worker.teardown == (("ray", "stop"),)
    assert not worker.serves_http and worker.role == "worker"
    with pytest.raises(ConfigError, match="Ray wait"):
        build_launch(p, head_address="10.0.0.1", ray_wait_s=0)


def test_mp_two_node_head_and_headless_worker(registry: Registry) -> None:
    p = registry.get("kimi-k2-instruct-2node-mp")
    head = list(build_launch(p, head_address="10.0.0.1").argv)
    worker_plan = build_launch(p, role="worker", head_address="10.0.0.1")
    worker = list(worker_plan.argv)
    for argv in (head, worker):
        assert argv[argv.index("--data-parallel-size-local") + 1] == "8"
        assert argv[argv.index("--data-parallel-rpc-port") + 1] == "13345"
    assert "--headless" not in head
    assert "--headless" in worker and worker[worker.index("--data-parallel-start-rank") + 1] == "8"
    assert not worker_plan.serves_http
    with pytest.raises(ConfigError, match="out of range"):
        build_launch(p, role="worker", head_address="10.0.0.1", node_rank=2)


def test_tp_pp_across_nodes_uses_nnodes(registry: Registry) -> None:
    p = registry.get("kimi-k2-instruct-2node-mp").with_overrides(
        data_parallel_size=1,
        tensor_parallel_size=8,
        pipeline_parallel_size=2,
        enable_expert_parallel=False,
    )
    worker = list(build_launch(p, role="worker", head_address="h").argv)
    assert worker[worker.index("--nnodes") + 1] == "2"
    assert worker[worker.index("--node-rank") + 1] == "1"
    assert "--headless" in worker
    ray_head = list(build_launch(p.with_overrides(multinode_mode="ray"), head_address="h").argv)
    assert ray_head[ray_head.index("--distributed-executor-backend") + 1] == "ray"


def test_shell_rendering_redacts_secrets(registry: Registry) -> None:
    p = registry.get("qwen3-8b").with_overrides(
        env={"VLLM_API_KEY": "sk-secret-1", "HF_TOKEN": "hf_x"}
    )
    text = build_launch(p).shell()
    assert "sk-secret-1" not in text and "hf_x" not in text
    assert "VLLM_API_KEY='***'" in text and "vllm serve Qwen/Qwen3-8B" in text


def test_bad_port_and_drain(registry: Registry) -> None:
    with pytest.raises(ConfigError, match="out of range"):
        build_launch(registry.get("qwen3-8b"), port=70000)
    with pytest.raises(ConfigError, match="drain"):
        build_launch(registry.get("qwen3-8b"), drain_timeout_s=0)


def test_log_lines_and_argv_are_scrubbed_of_keys() -> None:
    from gonka_mux.serving.command import redact_argv, redact_text

    assert redact_text("non-default args: {'api_key': ['sk-1'], 'port': 8}") == (
        "non-default args: {'api_key': ['***'], 'port': 8}"
    )
    assert redact_text("HF_TOKEN=hf_x vllm serve m --api-key sk-2") == (
        "HF_TOKEN=*** vllm serve m --api-key ***"
    )
    assert redact_text("generated 5 tokens: ok") == "generated 5 tokens: ok"
    assert redact_argv(["m", "--api-key", "k", "--api-key=j", "--port", "1"]) == [
        "m",
        "--api-key",
        "***",
        "--api-key=***",
        "--port",
        "1",
    ]


def test_nice_prefix_keeps_vllm_as_the_process(registry: Registry) -> None:
    plan = build_launch(registry.get("tiny-cpu"), python="/py", nice=10)
    assert plan.argv[:5] == ("nice", "-n", "10", "/py", "-m")
    with pytest.raises(ConfigError, match="nice"):
        build_launch(registry.get("tiny-cpu"), nice=25)
    pinned = build_launch(registry.get("tiny-cpu"), python="/py", nice=5, cpu_affinity="0-2,5")
    assert pinned.argv[:7] == ("taskset", "-c", "0-2,5", "nice", "-n", "5", "/py")
    with pytest.raises(ConfigError, match="CPU list"):
        build_launch(registry.get("tiny-cpu"), cpu_affinity="all")
