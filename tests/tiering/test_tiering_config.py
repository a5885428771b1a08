"""TieringPolicy.from_config / from_toml: the documented format and its errors."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest

from gonka_mux.errors import ConfigError
from gonka_mux.tiering import TieringPolicy, default_rules

TIERS = {"cheap": "small-model", "strong": "big-model"}


def ask(text: str, **params: Any) -> dict[str, Any]:
    return {"messages": [{"role": "user", "content": text}], **params}


def test_minimal_config_uses_the_default_rules() -> None:
    policy = TieringPolicy.from_config({"tiers": TIERS})
    assert [r.name for r in policy.rules] == [r.name for r in default_rules()]
    assert policy.default_tier == "cheap"
    assert policy.decide(ask("hi", tools=[{}])).model == "big-model"


def test_given_rules_replace_the_defaults_unless_asked_to_keep_them() -> None:
    rule = {"name": "vip", "tier": "strong", "callable": "tiering_user_rules:is_vip"}
    only = TieringPolicy.from_config({"tiers": TIERS, "rules": [rule]})
    assert [r.name for r in only.rules] == ["vip"]
    both = TieringPolicy.from_config(
        {"tiers": TIERS, "rules": [rule], "include_default_rules": True}
    )
    assert [r.name for r in both.rules] == ["vip", *(r.name for r in default_rules())]
    assert both.decide(ask("classify", user="vip")).rule == "vip"
    assert both.decide(ask("classify")).rule == "simple_task"


def test_every_condition_key_and_and_semantics() -> None:
    policy = TieringPolicy.from_config(
        {
            "tiers": {**TIERS, "mid": "mid-model"},
            "default_tier": "mid",
            "rules": [
                {
                    "name": "short_plain",
                    "tier": "cheap",
                    "prompt_shorter_than": 20,
                    "has_tools": False,
                    "has_response_format": False,
                },
                {
                    "name": "long_tools",
                    "tier": "strong",
                    "prompt_longer_than": 30,
                    "has_tools": True,
                },
                {"name": "deep", "tier": "strong", "conversation_depth_at_least": 3},
                {"name": "kw", "tier": "cheap", "keywords_any": ["label"], "keywords_scope": "all"},
                {"name": "meta", "callable": "tiering_user_rules.by_metadata"},
            ],
        }
    )
    assert policy.decide(ask("hi")).rule == "short_plain"
    assert policy.decide(ask("hi", tools=[{}])).rule == "default"  # tools break short_plain
    assert policy.decide(ask("y" * 31, tools=[{}])).rule == "long_tools"
    three = {"messages": [{"role": "user", "content": "z" * 25}] * 3}
    assert policy.decide(three).rule == "deep"
    assert policy.decide(ask("please LABEL all of these rows")).rule == "kw"
    decision = policy.decide(ask("w" * 25, metadata={"tier": "strong"}))
    assert (decision.rule, decision.tier) == ("meta", "strong")
    assert policy.decide(ask("w" * 25)).tier == "mid"


def test_defaults_table_tunes_the_default_rules() -> None:
    policy = TieringPolicy.from_config(
        {
            "tiers": TIERS,
            "defaults": {
                "long_prompt_chars": 10,
                "deep_conversation_messages": 2,
                "reasoning_words": ["ponder"],
                "simple_task_words": ["triage"],
            },
        }
    )
    assert policy.decide(ask("x" * 11)).rule == "long_prompt"
    assert policy.decide(ask("ponder")).rule == "reasoning_words"
    assert policy.decide(ask("explain")).rule == "default"
    assert policy.decide(ask("triage")).rule == "simple_task"


def test_from_toml_reads_the_tiering_table(tmp_path: Path) -> None:
    path = tmp_path / "gonka-mux.toml"
    path.write_text(
        """
        [router]
        strategy = "p2c"

        [tiering]
        default_tier = "strong"

        [tiering.tiers]
        cheap = "Qwen/Qwen3-8B"
        strong = "moonshotai/Kimi-K2.5"

        [[tiering.rules]]
        name = "triage"
        tier = "cheap"
        keywords_any = ["triage", "yes or no"]
        prompt_shorter_than = 500
        """
    )
    policy = TieringPolicy.from_toml(path)
    assert policy.tiers == {"cheap": "Qwen/Qwen3-8B", "strong": "moonshotai/Kimi-K2.5"}
    decision = policy.decide(ask("Triage this bug"))
    assert decision.model == "Qwen/Qwen3-8B"
    assert decision.reason == "last user message mentions 'triage' and prompt is 15 chars (< 500)"
    assert policy.decide(ask("Triage " + "x" * 600)).tier == "strong"


def test_from_toml_accepts_a_file_that_is_only_tiering(tmp_path: Path) -> None:
    path = tmp_path / "tiering.toml"
    path.write_text('[tiers]\ncheap = "a"\nstrong = "b"\n')
    assert TieringPolicy.from_toml(path).tiers == {"cheap": "a", "strong": "b"}


def expect_error(config: Any, key: str, text: str = "") -> ConfigError:
    with pytest.raises(ConfigError) as caught:
        TieringPolicy.from_config(config)
    error = caught.value
    assert error.key == key, str(error)
    assert f"[{key}]" in str(error)
    assert text in str(error), str(error)
    return error


@pytest.mark.parametrize(
    ("config", "key", "text"),
    [
        ({}, "tiering.tiers", "missing or empty"),
        ({"tiers": {"cheap": 3}}, "tiering.tiers.cheap", "non-empty string"),
        ({"tiers": TIERS, "tier": "x"}, "tiering.tier", "unknown key"),
        ({"tiers": TIERS, "default_tier": "gold"}, "tiering.default_tier", "not one of"),
        ({"tiers": {"a": "m"}, "default_tier": "a"}, "tiering.tiers", "need a 'cheap' tier"),
        ({"tiers": TIERS, "rules": {"x": 1}}, "tiering.rules", "a list"),
        ({"tiers": TIERS, "rules": ["x"]}, "tiering.rules[0]", "a table"),
        ({"tiers": TIERS, "rules": [{"tier": "cheap"}]}, "tiering.rules[0]", "has no condition"),
        (
            {"tiers": TIERS, "rules": [{"tier": "cheap", "has_tools": True, "colour": 1}]},
            "tiering.rules[0].colour",
            "unknown key",
        ),
        ({"tiers": TIERS, "rules": [{"has_tools": True}]}, "tiering.rules[0].tier", "missing"),
        (
            {"tiers": TIERS, "rules": [{"tier": "gold", "has_tools": True}]},
            "tiering.rules[0].tier",
            "not one of the tiers",
        ),
        (
            {"tiers": TIERS, "rules": [{"tier": "cheap", "prompt_longer_than": "4k"}]},
            "tiering.rules[0].prompt_longer_than",
            "an integer >= 0",
        ),
        (
            {"tiers": TIERS, "rules": [{"tier": "cheap", "prompt_longer_than": True}]},
            "tiering.rules[0].prompt_longer_than",
            "integer",
        ),
        (
            {"tiers": TIERS, "rules": [{"tier": "cheap", "has_tools": "yes"}]},
            "tiering.rules[0].has_tools",
            "true or false",
        ),
        (
            {"tiers": TIERS, "rules": [{"tier": "cheap", "keywords_any": "classify"}]},
            "tiering.rules[0].keywords_any",
            "list of non-empty strings",
        ),
        (
            {
                "tiers": TIERS,
                "rules": [{"tier": "cheap", "keywords_any": ["a"], "keywords_scope": "system"}],
            },
            "tiering.rules[0].keywords_scope",
            "last_user or all",
        ),
        (
            {
                "tiers": TIERS,
                "rules": [{"tier": "cheap", "has_tools": True, "keywords_scope": "all"}],
            },
            "tiering.rules[0].keywords_scope",
            "only applies with keywords_any",
        ),
        (
            {"tiers": TIERS, "rules": [{"callable": "tiering_user_rules:missing"}]},
            "tiering.rules[0].callable",
            "cannot import 'tiering_user_rules:missing'",
        ),
        (
            {"tiers": TIERS, "rules": [{"callable": "no_such_module_xyz:f"}]},
            "tiering.rules[0].callable",
            "ModuleNotFoundError",
        ),
        (
            {"tiers": TIERS, "rules": [{"callable": "tiering_user_rules:NOT_CALLABLE"}]},
            "tiering.rules[0].callable",
            "is not callable",
        ),
        (
            {"tiers": TIERS, "rules": [{"callable": "justaname"}]},
            "tiering.rules[0].callable",
            "package.module:name",
        ),
        (
            {"tiers": TIERS, "defaults": {"long_prompt": 5}},
            "tiering.defaults.long_prompt",
            "unknown key",
        ),
        (
            {"tiers": TIERS, "defaults": {"long_prompt_chars": 0}},
            "tiering.defaults.long_prompt_chars",
            ">= 1",
        ),
        (
            {"tiers": TIERS, "rules": [], "defaults": {"long_prompt_chars": 10}},
            "tiering.defaults",
            "default rules, which are off",
        ),
        (
            {"tiers": TIERS, "include_default_rules": "yes"},
            "tiering.include_default_rules",
            "true or false",
        ),
    ],
)
def test_config_errors_name_the_key(config: Any, key: str, text: str) -> None:
    expect_error(config, key, text)


def test_toml_errors_name_the_file(tmp_path: Path) -> None:
    broken = tmp_path / "broken.toml"
    broken.write_text("[tiering\n")
    with pytest.raises(ConfigError, match=re.escape(str(broken)) + ".*not valid TOML"):
        TieringPolicy.from_toml(broken)
    with pytest.raises(ConfigError, match="cannot read the file"):
        TieringPolicy.from_toml(tmp_path / "missing.toml")
    other = tmp_path / "other.toml"
    other.write_text('[router]\nstrategy = "p2c"\n')
    with pytest.raises(ConfigError, match=r"no \[tiering\] table"):
        TieringPolicy.from_toml(other)
    bad_key = tmp_path / "bad.toml"
    bad_key.write_text(
        '[tiering.tiers]\ncheap = "a"\nstrong = "b"\n[[tiering.rules]]\ntier = "x"\n'
    )
    with pytest.raises(ConfigError) as caught:
        TieringPolicy.from_toml(bad_key)
    assert caught.value.source == str(bad_key)
    assert caught.value.key == "tiering.rules[0].tier"
