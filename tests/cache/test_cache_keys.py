"""Cache keys: canonical (order-free), complete (every answer-changing field), secret-free."""

from __future__ import annotations

import pytest

from gonka_mux.cache import cache_key, canonical_body, is_deterministic

BODY = {
    "model": "m",
    "messages": [{"role": "user", "content": "my password is hunter2"}],
    "temperature": 0,
}


def test_key_ignores_field_order_and_answer_neutral_fields():
    reordered = {"temperature": 0, "messages": BODY["messages"], "model": "m"}
    assert cache_key("chat", BODY) == cache_key("chat", reordered)
    tagged = {**BODY, "user": "alice", "metadata": {"run": "7"}, "prompt_cache_key": "s1"}
    assert cache_key("chat", tagged) == cache_key("chat", BODY)


@pytest.mark.parametrize(
    "change",
    [
        {"model": "other"},
        {"temperature": 0.0001},
        {"max_tokens": 5},
        {"seed": 1},
        {"tools": [{"type": "function", "function": {"name": "f"}}]},
        {"stream": True},
        {"response_format": {"type": "json_object"}},
        {"messages": [{"role": "user", "content": "my password is hunter3"}]},
    ],
)
def test_every_answer_changing_field_changes_the_key(change):
    assert cache_key("chat", {**BODY, **change}) != cache_key("chat", BODY)


def test_kind_caller_and_namespace_split_keys():
    assert cache_key("chat", BODY) != cache_key("completions", BODY)
    assert cache_key("chat", BODY, caller="a") != cache_key("chat", BODY, caller="b")
    assert cache_key("chat", BODY, namespace="x") != cache_key("chat", BODY)


def test_key_holds_no_request_text_nor_caller_key():
    key = cache_key("chat", BODY, caller="gmx_live_secret-key")
    assert key.startswith("gmx:v1:chat:") and len(key.rsplit(":", 1)[1]) == 64
    for secret in ("hunter2", "secret-key", "user", "password"):
        assert secret not in key


def test_canonical_body_is_sorted_compact_json():
    text = canonical_body("chat", {"b": 1, "a": {"d": 2, "c": 3}})
    assert text == 'chat\n{"a":{"c":3,"d":2},"b":1}'


@pytest.mark.parametrize(
    "kind,body,expected",
    [
        ("chat", {"temperature": 0}, True),
        ("chat", {"temperature": 0.0}, True),
        ("chat", {"seed": 42}, True),
        ("chat", {"seed": 0, "temperature": 1}, True),
        ("chat", {}, False),
        ("chat", {"temperature": 0.7}, False),
        ("chat", {"temperature": False}, False),
        ("completions", {"temperature": 0}, True),
        ("embeddings", {}, True),
    ],
)
def test_deterministic_by_parameters(kind, body, expected):
    assert is_deterministic(kind, body) is expected
