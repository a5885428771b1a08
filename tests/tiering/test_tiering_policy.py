"""TieringPolicy.decide with the default rules, custom rules, hints and bad input."""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from gonka_mux.errors import ConfigError
from gonka_mux.tiering import (
    AUTO_MODEL,
    CallableRule,
    HasTools,
    KeywordsAny,
    PromptLongerThan,
    TieringDecision,
    TieringError,
    TieringPolicy,
    When,
    default_rules,
)

TIERS = {"cheap": "small-model", "strong": "big-model"}
TOOL = {"type": "function", "function": {"name": "lookup", "parameters": {}}}


def ask(text: str, **params: Any) -> dict[str, Any]:
    return {"model": AUTO_MODEL, "messages": [{"role": "user", "content": text}], **params}


@pytest.fixture
def policy() -> TieringPolicy:
    return TieringPolicy(TIERS)


@pytest.mark.parametrize(
    ("params", "tier", "rule", "reason"),
    [
        (ask("hi", tools=[TOOL]), "strong", "tools", "request has 1 tool"),
        (
            ask("Classify this", response_format={"type": "json_object"}),
            "strong",
            "response_format",
            "response_format is 'json_object'",
        ),
        (
            ask("Explain why the sky is blue"),
            "strong",
            "reasoning_words",
            "last user message mentions 'explain'",
        ),
        (ask("x" * 6001), "strong", "long_prompt", "prompt is 6001 chars (> 6000)"),
        (
            {"messages": [{"role": "user", "content": "ok"}] * 10},
            "strong",
            "deep_conversation",
            "conversation has 10 messages (>= 10)",
        ),
        (
            ask("Classify the sentiment: 'great product'"),
            "cheap",
            "simple_task",
            "last user message mentions 'classify'",
        ),
        (ask("Is this spam? Answer yes or no."), "cheap", "simple_task", None),
        (ask("Extract the invoice number"), "cheap", "simple_task", None),
        (ask("hello there"), "cheap", "default", "no rule matched; default tier 'cheap'"),
    ],
)
def test_default_rules(
    policy: TieringPolicy, params: dict[str, Any], tier: str, rule: str, reason: str | None
) -> None:
    decision = policy.decide(params)
    assert (decision.tier, decision.model, decision.rule) == (tier, TIERS[tier], rule)
    if reason is not None:
        assert decision.reason == reason


def test_reasoning_wins_over_a_simple_task_word(policy: TieringPolicy) -> None:
    decision = policy.decide(ask("Classify these tickets and explain your reasoning"))
    assert (decision.tier, decision.rule) == ("strong", "reasoning_words")


def test_a_tier_hint_skips_the_rules(policy: TieringPolicy) -> None:
    decision = policy.decide(ask("hi", tools=[TOOL]), tier_hint="cheap")
    assert decision == TieringDecision(
        "cheap", "small-model", "tier_hint", "caller asked for tier 'cheap'"
    )
    with pytest.raises(TieringError, match="unknown tier 'medium'"):
        policy.decide(ask("hi"), tier_hint="medium")


def test_decision_is_ready_for_metering(policy: TieringPolicy) -> None:
    assert policy.decide(ask("hello")).to_dict() == {
        "tier": "cheap",
        "model": "small-model",
        "rule": "default",
        "reason": "no rule matched; default tier 'cheap'",
    }


def test_custom_rules_first_match_wins_and_default_tier() -> None:
    policy = TieringPolicy(
        {"cheap": "a", "mid": "b", "strong": "c"},
        rules=[
            (HasTools() | PromptLongerThan(1000)).then("strong", name="agentic"),
            KeywordsAny(["summarize"], tier="mid"),
            When(lambda p: p.get("user") == "batch", tier="cheap", name="batch_user"),
        ],
        default_tier="strong",
    )
    assert policy.decide(ask("summarize this", tools=[TOOL])).rule == "agentic"
    assert policy.decide(ask("summarize this")).model == "b"
    assert policy.decide(ask("hi", user="batch")).rule == "batch_user"
    assert policy.decide(ask("hi")).tier == "strong"
    assert [r.name for r in policy.rules] == ["agentic", "keywords_any", "batch_user"]
    assert "agentic" in repr(policy)


def test_empty_rules_means_always_the_default_tier() -> None:
    policy = TieringPolicy(TIERS, rules=[], default_tier="strong")
    assert policy.decide(ask("classify", tools=[TOOL])).rule == "default"


def test_default_rules_are_tunable() -> None:
    rules = default_rules(long_prompt_chars=10, simple_task_words=["triage"], cheap="s", strong="l")
    policy = TieringPolicy({"s": "small", "l": "large"}, rules, default_tier="l")
    assert policy.decide(ask("x" * 11)).rule == "long_prompt"
    assert policy.decide(ask("triage")).tier == "s"
    assert policy.decide(ask("classify")).tier == "l"  # no longer a simple-task word


def test_callable_rule_unknown_tier_and_exceptions_are_named() -> None:
    def picks_unknown(params: Any) -> str:
        return "gold"

    def explodes(params: Any) -> str:
        raise KeyError("user")

    with pytest.raises(TieringError, match="unknown tier 'gold'"):
        TieringPolicy(TIERS, [CallableRule(picks_unknown)]).decide(ask("hi"))
    with pytest.raises(TieringError, match="rule 'explodes' raised KeyError") as caught:
        TieringPolicy(TIERS, [CallableRule(explodes)]).decide(ask("hi"))
    assert isinstance(caught.value.__cause__, KeyError)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"tiers": {}}, "tiers"),
        ({"tiers": {"cheap": ""}}, "tiers.cheap"),
        ({"tiers": TIERS, "default_tier": "gold"}, "default tier 'gold'"),
        ({"tiers": TIERS, "rules": [HasTools()]}, "has no tier"),
        ({"tiers": TIERS, "rules": ["not a rule"]}, "is not a tiering rule"),
        ({"tiers": TIERS, "rules": [HasTools(tier="gold")]}, "chooses tier 'gold'"),
        ({"tiers": {"small": "a", "large": "b"}, "default_tier": "small"}, "default rules use"),
    ],
)
def test_construction_errors_say_what_is_wrong(kwargs: dict[str, Any], message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        TieringPolicy(**kwargs)


def test_rules_may_be_any_object_with_name_and_evaluate() -> None:
    class Weekend:
        name = "weekend"

        def evaluate(self, features: Any) -> tuple[str, str] | None:
            return ("cheap", "it is the weekend")

    decision = TieringPolicy(TIERS, [Weekend()], default_tier="strong").decide(ask("hi"))
    assert (decision.rule, decision.reason) == ("weekend", "it is the weekend")


message_strategy = st.fixed_dictionaries(
    {
        "role": st.sampled_from(["system", "developer", "user", "assistant", "tool"]),
        "content": st.one_of(
            st.none(),
            st.text(max_size=200),
            st.lists(
                st.one_of(
                    st.fixed_dictionaries({"type": st.just("text"), "text": st.text(max_size=50)}),
                    st.fixed_dictionaries({"type": st.just("image_url")}),
                ),
                max_size=3,
            ),
        ),
    }
)


@settings(deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    messages=st.lists(message_strategy, max_size=12),
    tools=st.one_of(st.none(), st.just([TOOL])),
    response_format=st.sampled_from([None, {"type": "text"}, {"type": "json_object"}]),
)
def test_any_well_formed_request_gets_a_known_tier(
    messages: list[dict[str, Any]], tools: Any, response_format: Any
) -> None:
    params: dict[str, Any] = {"model": "auto", "messages": messages}
    if tools is not None:
        params["tools"] = tools
    if response_format is not None:
        params["response_format"] = response_format
    decision = TieringPolicy(TIERS).decide(params)
    assert decision.model == TIERS[decision.tier]
    assert decision.reason
    if tools or response_format == {"type": "json_object"}:
        assert decision.tier == "strong"
