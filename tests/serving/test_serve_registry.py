from __future__ import annotations

import importlib.resources
from dataclasses import fields
from pathlib import Path

import pytest

from gonka_mux.errors import ConfigError
from gonka_mux.serving.command import FOREIGN_ENV
from gonka_mux.serving.registry import (
    _FIELD_TYPES,
    PROFILES_ENV,
    Profile,
    Registry,
    UnknownProfile,
    per_gpu_gib,
)


@pytest.fixture(scope="module")
def registry() -> Registry:
    return Registry.load(environ={})


def test_every_profile_field_is_loadable_from_toml() -> None:
    assert set(_FIELD_TYPES) == {f.name for f in fields(Profile)} - {"name", "source"}


def test_the_registry_ships_as_package_data() -> None:
    text = importlib.resources.files("gonka_mux.serving").joinpath("profiles.toml").read_text()
    assert '[profiles."kimi-k2.5"]' in text


def test_kimi_k25_full_profile_matches_the_vllm_recipe(registry: Registry) -> None:
    p = registry.get("kimi-k2.5")
    assert p.model == "moonshotai/Kimi-K2.5"
    assert (p.gpus, p.tensor_parallel_size, p.nodes) == (8, 8, 1)
    assert p.tool_call_parser == p.reasoning_parser == "kimi_k2"
    assert p.enable_auto_tool_choice and p.trust_remote_code
    assert p.max_model_len == 131072 and p.gpu_memory_utilization == pytest.approx(0.90)
    # 714 GB total (the recipe's minimum) over 8 GPUs: an 80 GB H100 (79.6 GiB) is below it.
    assert 79.6 < p.min_gpu_memory_gib <= 95.6
    assert "--mm-encoder-tp-mode" in p.extra_args
    assert p.tier == "full"


def test_cheaper_tiers_map_to_servable_checkpoints(registry: Registry) -> None:
    q4 = registry.get("kimi-q4")
    assert q4.name == "kimi-k2.5-nvfp4" and q4.tier == "q4"
    assert q4.gpus == q4.tensor_parallel_size == 4
    assert q4.min_compute_capability == 10.0  # NVFP4 needs Blackwell
    assert "VLLM_USE_FLASHINFER_MOE_FP4" not in q4.env  # unknown to vLLM 0.32: ignored, so unset
    q2 = registry.get("kimi-q2")
    assert q2.tier == "q2" and q2.gpus == q2.tensor_parallel_size == 2
    assert "Kimi-Linear" in q2.model
    assert "GGUF" in q2.notes  # the registry says plainly why Q2 is a different model
    hopper = registry.get("kimi-q4-hopper")
    assert hopper.experimental and hopper.gpus == 4
    assert "unverified" in hopper.description and "diagnostic" in hopper.notes


def test_other_families_and_k2_thinking_are_present(registry: Registry) -> None:
    families = {p.family for p in registry}
    assert {"kimi", "deepseek", "llama", "qwen"} <= families
    thinking = registry.get("kimi-k2-thinking")
    assert (
        thinking.model == "moonshotai/Kimi-K2-Thinking" and thinking.reasoning_parser == "kimi_k2"
    )


def test_the_two_node_profile_spans_16_gpus_with_ray(registry: Registry) -> None:
    p = registry.get("kimi-k2-instruct-2node")
    assert p.model == "moonshotai/Kimi-K2-Instruct"
    assert (p.nodes, p.gpus, p.total_gpus, p.multinode_mode) == (2, 8, 16, "ray")
    assert p.world_size == 16 and p.enable_expert_parallel
    assert p.reasoning_parser is None  # K2-Instruct does not think
    mp = registry.get("kimi-k2-instruct-2node-mp")
    assert mp.multinode_mode == "mp" and mp.model == p.model and mp.aliases == ()


def test_every_shipped_profile_is_complete(registry: Registry) -> None:
    assert len(registry) >= 12
    for p in registry:
        p.validate()
        assert p.description and p.served_model_name
        if p.device == "cuda":
            assert p.min_gpu_memory_gib > 0, p.name
            assert p.recommended_gpus, p.name


def test_aliases_resolve_and_unknown_names_list_the_choices(registry: Registry) -> None:
    assert "kimi-full" in registry and registry.get("kimi-full").name == "kimi-k2.5"
    with pytest.raises(UnknownProfile) as exc:
        registry.get("kimi-k9")
    assert "gonka-serve profiles" in str(exc.value)
    assert "kimi-k2.5" in str(exc.value)
    assert isinstance(exc.value, ConfigError)


def test_user_file_adds_extends_and_replaces(tmp_path: Path) -> None:
    user = tmp_path / "mine.toml"
    user.write_text(
        """
[profiles."my-qwen"]
model = "/models/qwen"
served_model_name = "q"
gpus = 1
min_gpu_memory_gib = 20
description = "mine"

[profiles."kimi-k2.5-short"]
extends = "kimi-k2.5"
max_model_len = 32768
env = { EXTRA = "1" }

[profiles."llama-3.1-8b"]
model = "/models/llama"
served_model_name = "llama"
description = "replaced"
"""
    )
    reg = Registry.load([user], environ={})
    mine = reg.get("my-qwen")
    assert mine.source == str(user) and mine.gpus == 1
    short = reg.get("kimi-k2.5-short")
    assert short.max_model_len == 32768
    assert short.tensor_parallel_size == 8 and short.tool_call_parser == "kimi_k2"
    assert short.aliases == ()  # aliases are not inherited (they would clash)
    assert short.env == {"EXTRA": "1"}
    assert reg.get("llama-3.1-8b").description == "replaced"
    assert reg.get("kimi-full").name == "kimi-k2.5"


def test_profiles_env_var_adds_files(tmp_path: Path) -> None:
    user = tmp_path / "env.toml"
    user.write_text('[profiles.envp]\nmodel = "m"\nserved_model_name = "m"\ndescription = "x"\n')
    reg = Registry.load(environ={PROFILES_ENV: str(user)})
    assert reg.get("envp").model == "m"


@pytest.mark.parametrize(
    ("toml", "message"),
    [
        (
            '[profiles.x]\nmodel = "m"\nserved_model_name = "m"\ntensor_paralel_size = 2\n',
            "unknown keys",
        ),
        ('[profiles.x]\nmodel = "m"\nserved_model_name = "m"\ngpus = "8"\n', "wrong type"),
        ('[profiles.x]\nmodel = "m"\nserved_model_name = "m"\ngpus = true\n', "wrong type"),
        ('[profiles.x]\nmodel = "m"\n', "missing served_model_name"),
        ('[profiles.x]\nextends = "nope"\n', "not defined before it"),
        (
            '[profiles.x]\nmodel = "m"\nserved_model_name = "m"\n'
            "gpus = 4\ntensor_parallel_size = 2\n",
            "tensor x pipeline x data parallel = 2",
        ),
        (
            '[profiles.x]\nmodel = "m"\nserved_model_name = "m"\nenable_auto_tool_choice = true\n',
            "needs a tool_call_parser",
        ),
        ('[profiles.x]\nmodel = "m"\nserved_model_name = "m"\ndevice = "tpu"\n', "unknown device"),
        (
            '[profiles.x]\nmodel = "m"\nserved_model_name = "m"\ngpu_memory_utilization = 1.5\n',
            "(0, 1]",
        ),
        (
            '[profiles.x]\nmodel = "m"\nserved_model_name = "m"\nextra_args = ["--a", 1]\n',
            "wrong type",
        ),
        ("[profile.x]\n", "unexpected top-level keys"),
        ("[profiles.x\n", "not valid TOML"),
    ],
)
def test_bad_profiles_are_refused_with_the_key_named(toml: str, message: str) -> None:
    with pytest.raises(ConfigError) as exc:
        Registry.from_toml(toml, source="user.toml", base=Registry.load(environ={}))
    assert message in str(exc.value)
    assert "user.toml" in str(exc.value)


def test_missing_user_file_says_so(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="does not exist"):
        Registry.load([tmp_path / "nope.toml"], environ={})


def test_with_overrides_validates() -> None:
    p = Registry.load(environ={}).get("qwen3-8b")
    assert p.with_overrides(drain_timeout_s=5).drain_timeout_s == 5
    with pytest.raises(ConfigError, match="drain_timeout_s"):
        p.with_overrides(drain_timeout_s=0)


# ------------------------------------------------------------------ facts from vLLM's recipes

# The recipe numbers (vllm-project/recipes, models/<org>/<model>.yaml, vram_minimum_gb of the
# variant served) and what a profile must require per GPU: GB * 10^9 / 2^30 / GPUs, rounded up.
RECIPE_MINIMUMS = {
    "kimi-k2.5": (714, 83.2),
    "kimi-k2.5-nvfp4": (600, 139.7),
    "kimi-linear-48b": (115, 53.6),
    "kimi-k2-thinking": (600, 69.9),
    "kimi-k2-instruct-2node": (1200, 69.9),
    "kimi-k2-instruct-2node-mp": (1200, 69.9),
    "deepseek-v3.1": (805, 93.8),
    "llama-3.3-70b": (170, 39.6),
    "llama-3.1-8b": (20, 18.7),
    "qwen3-32b": (77, 35.9),
    "qwen3-8b": (20, 18.7),
}


@pytest.mark.parametrize("name", sorted(RECIPE_MINIMUMS))
def test_memory_minimum_is_derived_from_the_recipe(registry: Registry, name: str) -> None:
    p = registry.get(name)
    recipe_gb, per_gpu = RECIPE_MINIMUMS[name]
    assert p.recipe_vram_minimum_gb == recipe_gb and p.recipe.startswith("vllm-project/recipes")
    assert p.min_gpu_memory_gib == pytest.approx(per_gpu)
    assert per_gpu_gib(recipe_gb, p.total_gpus) == pytest.approx(per_gpu)


def test_every_gpu_profile_says_where_its_memory_minimum_comes_from(registry: Registry) -> None:
    for p in registry:
        if p.device == "cuda":
            assert p.recipe_vram_minimum_gb is not None or p.memory_source, p.name
            assert not (p.recipe_vram_minimum_gb is None and p.recipe), p.name


def test_the_deepseek_profile_has_the_recipes_flags(registry: Registry) -> None:
    p = registry.get("deepseek-v3.1")
    assert p.enable_expert_parallel and p.tensor_parallel_size == 8  # recipe: TP8 + EP
    assert p.tool_call_parser == "deepseek_v31" and p.enable_auto_tool_choice
    assert p.chat_template is not None
    assert p.chat_template.endswith("examples/tool_chat_template_deepseekv31.jinja")
    # 805 GB over 8: an H20 (95.6 GiB) fits, an 80 GB H100 (79.6) does not
    assert 79.6 < p.min_gpu_memory_gib <= 95.6


def test_no_profile_sets_an_env_var_vllm_does_not_define(registry: Registry) -> None:
    """vLLM's own names are checked against the installed vllm.envs by the CI leg; any other
    variable must name the package that reads it."""
    for p in registry:
        for key in p.env:
            assert key.startswith("VLLM_") or key in FOREIGN_ENV, (p.name, key)
        assert "VLLM_USE_FLASHINFER_MOE_FP4" not in p.env, p.name


def test_a_minimum_below_the_recipe_is_refused() -> None:
    text = """
[profiles.low]
model = "m"
served_model_name = "m"
gpus = 8
tensor_parallel_size = 8
recipe_vram_minimum_gb = 805
min_gpu_memory_gib = 80
"""
    with pytest.raises(ConfigError, match="below the recipe"):
        Registry.from_toml(text)
    higher = Registry.from_toml(text.replace("gib = 80", "gib = 120")).get("low")
    assert higher.min_gpu_memory_gib == 120  # stricter than the recipe is allowed


def test_extends_rederives_the_minimum_for_its_own_gpu_count(registry: Registry) -> None:
    text = """
[profiles.k25-16]
extends = "kimi-k2.5"
gpus = 16
tensor_parallel_size = 16
"""
    p = Registry.from_toml(text, base=registry).get("k25-16")
    assert p.min_gpu_memory_gib == pytest.approx(per_gpu_gib(714, 16)) == pytest.approx(41.6)
