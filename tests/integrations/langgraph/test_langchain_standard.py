"""LangChain's own standard unit tests (``langchain-tests``) for ChatMultiplexer."""

from __future__ import annotations

from typing import Any

from langchain_tests.unit_tests import ChatModelUnitTests

from gonka_mux import Multiplexer
from gonka_mux.integrations.langchain import ChatMultiplexer


def _mux() -> Multiplexer:
    mux = Multiplexer()
    # Never contacted: the unit tests build and inspect the model, they do not call it.
    mux.add_endpoint("http://127.0.0.1:9/v1", models=["fake-model"], name="unused")
    return mux


class TestChatMultiplexerStandard(ChatModelUnitTests):
    @property
    def chat_model_class(self) -> type[ChatMultiplexer]:
        return ChatMultiplexer

    @property
    def standard_chat_model_params(self) -> dict[str, Any]:
        # No api_key: keys belong to the Multiplexer's endpoints, and ChatMultiplexer refuses
        # unknown arguments rather than dropping them.
        params = super().standard_chat_model_params
        params.pop("api_key", None)
        return params

    @property
    def chat_model_params(self) -> dict[str, Any]:
        return {"mux": _mux(), "model": "fake-model", "temperature": 0}

    @property
    def has_tool_calling(self) -> bool:
        return True

    @property
    def has_structured_output(self) -> bool:
        return True


def test_unknown_constructor_arguments_are_refused() -> None:
    import pytest

    with pytest.raises(TypeError, match=r"unknown argument.*top_kk.*model_kwargs"):
        ChatMultiplexer(mux=_mux(), model="fake-model", top_kk=3)
    with pytest.raises(TypeError, match="api_key"):
        ChatMultiplexer(mux=_mux(), model="fake-model", api_key="sk-x")


def test_timeout_is_the_per_attempt_timeout_and_model_override_is_traced() -> None:
    from langchain_core.messages import HumanMessage

    model = ChatMultiplexer(mux=_mux(), model="fake-model", timeout=2.5, max_retries=None)
    params = model._request([HumanMessage("hi")], None, None, False, {"model": "other"})
    assert params["timeout"] == 2.5
    assert params["model"] == "other"
    assert model._get_ls_params(model="other")["ls_model_name"] == "other"
    assert model._get_ls_params()["ls_model_name"] == "fake-model"
