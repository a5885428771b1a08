"""Each tiering condition and rule on its own, and their combinations."""

from __future__ import annotations

from typing import Any

import pytest

from gonka_mux.tiering import (
    AllOf,
    AnyOf,
    CallableRule,
    ConversationDepthAtLeast,
    HasResponseFormat,
    HasTools,
    KeywordsAny,
    Not,
    PromptLongerThan,
    PromptShorterThan,
    RequestFeatures,
    Rule,
    TieringError,
    When,
)


def features(*contents: Any, roles: list[str] | None = None, **params: Any) -> RequestFeatures:
    roles = roles or ["user"] * len(contents)
    messages = [{"role": r, "content": c} for r, c in zip(roles, contents, strict=True)]
    return RequestFeatures({"model": "auto", "messages": messages, **params})


def test_features_count_text_depth_and_last_user_message() -> None:
    f = features(
        "be terse",
        "first question",
        "an answer",
        [{"type": "text", "text": "look at"}, {"type": "image_url", "image_url": {}}],
        roles=["system", "user", "assistant", "user"],
    )
    assert f.prompt_chars == len("be terse") + len("first question") + len("an answer") + 7
    assert f.depth == 3  # system messages are not conversation turns
    assert f.last_user_text == "look at"
    assert "first question" in f.all_text and "be terse" in f.all_text


def test_features_tolerate_odd_requests() -> None:
    f = RequestFeatures({"messages": "not a list", "tools": "nope"})
    assert (f.prompt_chars, f.depth, f.last_user_text, f.tool_count) == (0, 0, "", 0)
    f = RequestFeatures({"messages": [None, {"role": "user", "content": None}, 3]})
    assert (f.prompt_chars, f.depth, f.last_user_text) == (0, 1, "")


def test_prompt_length_bounds() -> None:
    f = features("x" * 100)
    assert PromptLongerThan(99).matches(f) and not PromptLongerThan(100).matches(f)
    assert PromptShorterThan(101).matches(f) and not PromptShorterThan(100).matches(f)
    assert PromptLongerThan(99).explain(f) == "prompt is 100 chars (> 99)"
    with pytest.raises(ValueError, match="integer >= 0"):
        PromptLongerThan(-1)
    with pytest.raises(ValueError, match="integer >= 1"):
        PromptShorterThan(0)


def test_tools_and_legacy_functions() -> None:
    tool = {"type": "function", "function": {"name": "f"}}
    assert HasTools().matches(features("hi", tools=[tool, tool]))
    assert HasTools().explain(features("hi", tools=[tool, tool])) == "request has 2 tools"
    assert HasTools().matches(features("hi", functions=[{"name": "f"}]))
    assert not HasTools().matches(features("hi", tools=[]))
    assert not HasTools().matches(features("hi"))


@pytest.mark.parametrize(
    ("response_format", "matches"),
    [
        (None, False),
        ({"type": "text"}, False),
        ({"type": "json_object"}, True),
        ({"type": "json_schema", "json_schema": {"name": "x", "schema": {}}}, True),
    ],
)
def test_response_format(response_format: Any, matches: bool) -> None:
    params = {} if response_format is None else {"response_format": response_format}
    assert HasResponseFormat().matches(features("hi", **params)) is matches


def test_response_format_given_as_a_model_class() -> None:
    class Answer:  # what openai's .parse(response_format=Model) passes through
        pass

    f = features("hi", response_format=Answer)
    assert HasResponseFormat().matches(f)
    assert HasResponseFormat().explain(f) == "response_format is 'Answer'"


def test_keywords_match_whole_words_case_insensitively_and_phrases_across_spaces() -> None:
    rule = KeywordsAny(["classify", "yes or no", "yes/no"])
    assert rule.matches(features("Please CLASSIFY this ticket"))
    assert not rule.matches(features("reclassifying is different"))  # whole words only
    assert rule.matches(features("Answer yes   or\nno: is it spam?"))
    assert rule.explain(features("Answer yes   or\nno")) == "last user message mentions 'yes or no'"
    assert rule.matches(features("yes/no only"))


def test_keywords_scope() -> None:
    convo = ["classify these", "done", "thanks"]
    roles = ["user", "assistant", "user"]
    assert not KeywordsAny(["classify"]).matches(features(*convo, roles=roles))
    everywhere = KeywordsAny(["classify"], scope="all")
    assert everywhere.matches(features(*convo, roles=roles))
    assert everywhere.explain(features(*convo, roles=roles)) == "conversation mentions 'classify'"
    with pytest.raises(ValueError, match="scope"):
        KeywordsAny(["x"], scope="system")


@pytest.mark.parametrize("words", [[], [""], ["ok", "  "], "classify"])
def test_keywords_reject_bad_word_lists(words: Any) -> None:
    with pytest.raises(ValueError):
        KeywordsAny(words)


def test_keywords_escape_regex_characters() -> None:
    rule = KeywordsAny(["c++", "a.b"])
    assert rule.matches(features("rewrite in c++ please"))
    assert not rule.matches(features("axb"))


def test_conversation_depth() -> None:
    f = features("s", "u", "a", "u", roles=["system", "user", "assistant", "user"])
    assert ConversationDepthAtLeast(3).matches(f)
    assert not ConversationDepthAtLeast(4).matches(f)
    assert ConversationDepthAtLeast(3).explain(f) == "conversation has 3 messages (>= 3)"


def test_when_gets_the_raw_params() -> None:
    seen: list[Any] = []

    def premium_user(params: Any) -> bool:
        seen.append(params)
        return params.get("user") == "vip"

    assert When(premium_user).matches(features("hi", user="vip"))
    assert not When(premium_user).matches(features("hi", user="x"))
    assert seen[0]["user"] == "vip"
    assert "premium_user" in When(premium_user).explain(features("hi"))
    with pytest.raises(ValueError, match="callable"):
        When("nope")  # type: ignore[arg-type]


def test_combinators_and_their_reasons() -> None:
    short, tools = PromptShorterThan(10), HasTools()
    tool = [{"type": "function", "function": {"name": "f"}}]
    both = short & tools
    assert isinstance(both, AllOf)
    assert both.matches(features("hi", tools=tool))
    assert not both.matches(features("hi"))
    assert (
        both.explain(features("hi", tools=tool))
        == "prompt is 2 chars (< 10) and request has 1 tool"
    )
    either = short | tools
    assert isinstance(either, AnyOf)
    assert (
        either.matches(
            features("a long message here"),
        )
        is False
    )
    assert either.explain(features("a long message here", tools=tool)) == "request has 1 tool"
    negated = ~tools
    assert isinstance(negated, Not)
    assert negated.matches(features("hi"))
    assert negated.explain(features("hi")) == "not (request has tools)"
    # Chains flatten: a & b & c is one AllOf of three.
    assert len((short & tools & HasResponseFormat()).conditions) == 3  # type: ignore[attr-defined]
    assert len((short | tools | HasResponseFormat()).conditions) == 3  # type: ignore[attr-defined]


def test_then_binds_a_tier_and_a_name() -> None:
    rule = HasTools().then("strong")
    assert isinstance(rule, Rule)
    assert (rule.tier, rule.name) == ("strong", "has_tools")
    named = (HasTools() | HasResponseFormat()).then("strong", name="agentic")
    assert named.name == "agentic"
    tool = [{"type": "function", "function": {"name": "f"}}]
    assert named.evaluate(features("hi", tools=tool)) == ("strong", "request has 1 tool")
    assert named.evaluate(features("hi")) is None
    assert KeywordsAny(["x"], tier="cheap", name="xs").then("cheap").name == "xs"


def test_conditions_are_values() -> None:
    assert KeywordsAny(["a", "b"], tier="cheap") == KeywordsAny(["a", "b"], tier="cheap")
    assert PromptLongerThan(5) == PromptLongerThan(5)
    assert PromptLongerThan(5) != PromptLongerThan(6)
    assert "PromptLongerThan(chars=5" in repr(PromptLongerThan(5))


def test_callable_rule_answers() -> None:
    def by_user(params: Any) -> Any:
        return {"a": "strong", "b": ("cheap", "batch user"), "c": None, "d": 42}[params["user"]]

    rule = CallableRule(by_user)
    assert rule.name == "by_user"
    assert rule.evaluate(features("hi", user="a")) == (
        "strong",
        "test_callable_rule_answers.<locals>.by_user() chose 'strong'",
    )
    assert rule.evaluate(features("hi", user="b")) == ("cheap", "batch user")
    assert rule.evaluate(features("hi", user="c")) is None
    with pytest.raises(TieringError, match="return a tier name"):
        rule.evaluate(features("hi", user="d"))
