"""LangChain chat model over a gonka_mux Multiplexer: ``ChatMultiplexer(BaseChatModel)``.

Use it wherever LangChain or LangGraph takes a chat model::

    from gonka_mux import Multiplexer
    from gonka_mux.integrations.langchain import ChatMultiplexer

    mux = Multiplexer()
    mux.add_endpoint("http://127.0.0.1:8000/v1", models=["kimi-k2.5"])
    model = ChatMultiplexer(mux=mux, model="kimi-k2.5")
    model.bind_tools([my_tool]).invoke("...")

A thin adapter: messages and tools are converted to the OpenAI wire shape, the Multiplexer does
the rest (routing, failover, limits, metering). Inside a LangGraph run the graph's ``thread_id``
is sent as the Multiplexer's ``session_id`` (sticky routing and metering), together with
``mux_metadata={"session_mode": ...}``: ``"affinity"`` (the default) tells the session extension
not to prepend stored history, because LangGraph already sends the whole conversation on every
call; ``"history"`` lets it keep and prepend server-side history.

Needs the ``langchain`` extra (``langchain-core``).
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Callable, Iterator, Mapping, Sequence
from operator import itemgetter
from typing import Any, Literal

try:
    from langchain_core.callbacks import AsyncCallbackManagerForLLMRun, CallbackManagerForLLMRun
except ImportError as exc:  # the extra is not installed
    raise ModuleNotFoundError(
        "gonka_mux.integrations.langchain needs LangChain: pip install 'gonka-mux[langchain]' "
        f"(missing: {exc.name})",
        name=exc.name,
    ) from exc
from langchain_core.language_models import BaseChatModel, LanguageModelInput
from langchain_core.messages import (
    AIMessage,
    AIMessageChunk,
    BaseMessage,
    convert_to_openai_messages,
)
from langchain_core.messages.ai import UsageMetadata
from langchain_core.output_parsers import JsonOutputParser, PydanticOutputParser
from langchain_core.output_parsers.openai_tools import (
    JsonOutputKeyToolsParser,
    PydanticToolsParser,
    make_invalid_tool_call,
    parse_tool_call,
)
from langchain_core.outputs import ChatGeneration, ChatGenerationChunk, ChatResult
from langchain_core.runnables import Runnable, RunnableMap, RunnablePassthrough
from langchain_core.runnables.config import ensure_config
from langchain_core.tools import BaseTool
from langchain_core.utils.function_calling import convert_to_openai_tool
from langchain_core.utils.pydantic import is_basemodel_subclass
from pydantic import ConfigDict, Field, PrivateAttr, model_validator

from ._bridge import ChatBridge

log = logging.getLogger("gonka_mux.integrations.langchain")

__all__ = ["ChatMultiplexer", "SessionMode"]

SessionMode = Literal["affinity", "history"]

# Call-time keyword arguments that are gonka_mux options, not OpenAI body fields.
_MUX_CALL_KWARGS = ("session_id", "tier", "deadline", "caller", "hedge", "route_to")


class ChatMultiplexer(BaseChatModel):
    """A LangChain ``BaseChatModel`` that sends every call through a gonka_mux Multiplexer.

    ``mux``: a :class:`~gonka_mux.Multiplexer` (serves ``invoke``/``stream`` and their async
    twins; the async ones run on the Multiplexer's loop thread without blocking yours) or an
    :class:`~gonka_mux.AsyncMultiplexer` (async calls only). ``model``: the public model name.
    ``session_mode``: see the module docstring. ``session_id``: a fixed session id used when the
    call carries no LangGraph ``thread_id``. ``tier``/``caller``/``deadline``: passed to every
    call. ``model_kwargs``: extra OpenAI body fields (``top_k``, ``extra_body``, ...).
    ``timeout``: seconds per attempt (the Multiplexer's per-call ``timeout=``; a failed or timed
    out attempt fails over to another endpoint, bounded by ``deadline``). ``max_retries``:
    accepted for compatibility with other LangChain chat models and not applied: the Multiplexer
    owns retries and failover (its retry budget, other endpoints, your ``deadline``), and the
    SDK's own retries are always off. Bound a call's total time with ``deadline=``.

    Unknown constructor arguments (``api_key`` included: keys belong to the Multiplexer's
    endpoints) are refused with a ``TypeError`` instead of being dropped.
    """

    model_config = ConfigDict(arbitrary_types_allowed=True, populate_by_name=True, extra="forbid")

    mux: Any = Field(exclude=True)
    model: str = Field(alias="model_name")
    temperature: float | None = None
    max_tokens: int | None = None
    top_p: float | None = None
    stop: list[str] | None = Field(default=None, alias="stop_sequences")
    n: int | None = None
    seed: int | None = None
    streaming: bool = False
    stream_usage: bool = True
    model_kwargs: dict[str, Any] = Field(default_factory=dict)
    session_mode: SessionMode = "affinity"
    session_id: str | None = None
    forward_thread_id: bool = True
    tier: str | None = None
    caller: str | None = None
    deadline: float | None = None
    timeout: float | None = Field(default=None, alias="request_timeout")
    max_retries: int | None = None

    _bridge: ChatBridge = PrivateAttr()

    @model_validator(mode="before")
    @classmethod
    def _refuse_unknown(cls, values: Any) -> Any:
        if isinstance(values, Mapping):
            known = set(cls.model_fields)
            known |= {f.alias for f in cls.model_fields.values() if f.alias}
            unknown = sorted(str(k) for k in values if k not in known)
            if unknown:
                raise TypeError(
                    f"ChatMultiplexer got unknown argument(s) {', '.join(unknown)}: pass OpenAI "
                    "body fields in model_kwargs={...} or per call, gonka_mux options as "
                    "session_id=/tier=/caller=/deadline="
                )
        return values

    def model_post_init(self, context: Any, /) -> None:
        super().model_post_init(context)
        if self.session_mode not in ("affinity", "history"):
            raise ValueError(
                f"session_mode must be 'affinity' or 'history', got {self.session_mode!r}"
            )
        if not self.model:
            raise ValueError("ChatMultiplexer needs a model= name served by the Multiplexer")
        self._bridge = ChatBridge(self.mux)

    # -- identity ---------------------------------------------------------------------------
    @property
    def _llm_type(self) -> str:
        return "gonka-mux"

    @property
    def _identifying_params(self) -> dict[str, Any]:
        return {"model": self.model, "session_mode": self.session_mode, **self._body_defaults()}

    def _get_ls_params(self, stop: list[str] | None = None, **kwargs: Any) -> Any:
        params = super()._get_ls_params(stop=stop, **kwargs)
        params["ls_provider"] = "gonka-mux"
        params["ls_model_name"] = kwargs.get("model") or self.model
        return params

    # -- request building -------------------------------------------------------------------
    def _body_defaults(self) -> dict[str, Any]:
        body: dict[str, Any] = {}
        for key in ("temperature", "max_tokens", "top_p", "n", "seed"):
            value = getattr(self, key)
            if value is not None:
                body[key] = value
        return body

    def _request(
        self,
        messages: list[BaseMessage],
        stop: list[str] | None,
        run_manager: CallbackManagerForLLMRun | AsyncCallbackManagerForLLMRun | None,
        stream: bool,
        kwargs: dict[str, Any],
    ) -> dict[str, Any]:
        kwargs = dict(kwargs)
        mux_kwargs = {k: kwargs.pop(k, None) for k in _MUX_CALL_KWARGS}
        kwargs.pop("stream", None)
        body: dict[str, Any] = {
            "model": self.model,
            "messages": _openai_messages(messages),
            **self._body_defaults(),
            **self.model_kwargs,
            **kwargs,
        }
        stops = stop if stop is not None else self.stop
        if stops:
            body["stop"] = list(stops)
        if stream:
            body["stream"] = True
            if self.stream_usage and "stream_options" not in body:
                body["stream_options"] = {"include_usage": True}
        mux_kwargs["session_id"] = mux_kwargs["session_id"] or self._session_id(run_manager)
        for key in ("tier", "caller", "deadline"):
            if mux_kwargs[key] is None:
                mux_kwargs[key] = getattr(self, key)
        if self.timeout is not None:
            body.setdefault("timeout", self.timeout)  # per attempt: a request option, not body
        if mux_kwargs["session_id"] is not None:
            mux_kwargs["mux_metadata"] = {"session_mode": self.session_mode}
        return self._bridge.params(body, mux_kwargs)

    def _session_id(self, run_manager: Any) -> str | None:
        """LangGraph's ``thread_id`` for this run, else the fixed ``session_id``."""
        if self.forward_thread_id:
            configurable = ensure_config().get("configurable") or {}
            thread = configurable.get("thread_id")
            if thread is None and run_manager is not None:
                thread = (getattr(run_manager, "metadata", None) or {}).get("thread_id")
            if thread is not None:
                return str(thread)
        return self.session_id

    # -- BaseChatModel ----------------------------------------------------------------------
    def _generate(
        self,
        messages: list[BaseMessage],
        stop: list[str] | None = None,
        run_manager: CallbackManagerForLLMRun | None = None,
        **kwargs: Any,
    ) -> ChatResult:
        params = self._request(messages, stop, run_manager, False, kwargs)
        return _chat_result(self._bridge.create(params))

    async def _agenerate(
        self,
        messages: list[BaseMessage],
        stop: list[str] | None = None,
        run_manager: AsyncCallbackManagerForLLMRun | None = None,
        **kwargs: Any,
    ) -> ChatResult:
        params = self._request(messages, stop, run_manager, False, kwargs)
        return _chat_result(await self._bridge.acreate(params))

    def _stream(
        self,
        messages: list[BaseMessage],
        stop: list[str] | None = None,
        run_manager: CallbackManagerForLLMRun | None = None,
        **kwargs: Any,
    ) -> Iterator[ChatGenerationChunk]:
        params = self._request(messages, stop, run_manager, True, kwargs)
        stream = self._bridge.create(params)
        try:
            for raw in stream:
                chunk = _generation_chunk(raw)
                if chunk is None:
                    continue
                if run_manager is not None:
                    run_manager.on_llm_new_token(chunk.text, chunk=chunk)
                yield chunk
        finally:
            _close_sync(stream)

    async def _astream(
        self,
        messages: list[BaseMessage],
        stop: list[str] | None = None,
        run_manager: AsyncCallbackManagerForLLMRun | None = None,
        **kwargs: Any,
    ) -> AsyncIterator[ChatGenerationChunk]:
        params = self._request(messages, stop, run_manager, True, kwargs)
        stream = await self._bridge.acreate(params)
        try:
            async for raw in stream:
                chunk = _generation_chunk(raw)
                if chunk is None:
                    continue
                if run_manager is not None:
                    await run_manager.on_llm_new_token(chunk.text, chunk=chunk)
                yield chunk
        finally:
            close = getattr(stream, "close", None)
            if close is not None:
                result = close()
                if hasattr(result, "__await__"):
                    await result

    # -- tools and structured output --------------------------------------------------------
    def bind_tools(
        self,
        tools: Sequence[dict[str, Any] | type | Callable[..., Any] | BaseTool],
        *,
        tool_choice: str | dict[str, Any] | bool | None = None,
        strict: bool | None = None,
        parallel_tool_calls: bool | None = None,
        **kwargs: Any,
    ) -> Runnable[LanguageModelInput, AIMessage]:
        """Bind OpenAI tool schemas (LangChain tools, pydantic models, functions or dicts).

        ``tool_choice``: ``"auto"``, ``"none"``, ``"required"``/``"any"``/``True`` (must call a
        tool), a tool name (must call that one), or an OpenAI ``tool_choice`` dict.
        """
        formatted = [convert_to_openai_tool(t, strict=strict) for t in tools]
        if tool_choice is not None and tool_choice is not False:
            kwargs["tool_choice"] = _tool_choice(tool_choice, formatted)
        if parallel_tool_calls is not None:
            kwargs["parallel_tool_calls"] = parallel_tool_calls
        return self.bind(tools=formatted, **kwargs)

    def with_structured_output(
        self,
        schema: dict[str, Any] | type | None = None,
        *,
        method: Literal["function_calling", "json_schema", "json_mode"] = "function_calling",
        include_raw: bool = False,
        strict: bool | None = None,
        **kwargs: Any,
    ) -> Runnable[LanguageModelInput, Any]:
        """Return a runnable whose output is parsed into ``schema``.

        ``method="function_calling"`` (the default, works on any tool-capable backend) forces a
        call of a tool shaped like ``schema``; ``"json_schema"`` sends ``response_format`` with
        the JSON schema (the backend must support it); ``"json_mode"`` sends
        ``response_format={"type": "json_object"}`` and parses the JSON (put the schema in the
        prompt yourself). A pydantic ``schema`` gives pydantic instances, anything else dicts.
        """
        if kwargs:
            raise ValueError(f"with_structured_output got unsupported arguments {sorted(kwargs)}")
        is_model = isinstance(schema, type) and is_basemodel_subclass(schema)
        parser: Runnable[Any, Any]
        if method == "function_calling":
            if schema is None:
                raise ValueError("method='function_calling' needs a schema")
            tool = convert_to_openai_tool(schema, strict=strict)
            name = tool["function"]["name"]
            llm = self.bind_tools(
                [schema],
                tool_choice=name,
                strict=strict,
                parallel_tool_calls=False,
                ls_structured_output_format={
                    "kwargs": {"method": method, "strict": strict},
                    "schema": tool,
                },
            )
            if is_model:
                parser = PydanticToolsParser(tools=[schema], first_tool_only=True)  # type: ignore[list-item]
            else:
                parser = JsonOutputKeyToolsParser(key_name=name, first_tool_only=True)
        elif method == "json_schema":
            if schema is None:
                raise ValueError("method='json_schema' needs a schema")
            function = convert_to_openai_tool(schema, strict=strict)["function"]
            json_schema: dict[str, Any] = {
                "name": function["name"],
                "schema": function.get("parameters") or {"type": "object", "properties": {}},
            }
            if function.get("description"):
                json_schema["description"] = function["description"]
            if strict is not None:
                json_schema["strict"] = strict
            llm = self.bind(
                response_format={"type": "json_schema", "json_schema": json_schema},
                ls_structured_output_format={
                    "kwargs": {"method": method, "strict": strict},
                    "schema": function,
                },
            )
            parser = (
                PydanticOutputParser(pydantic_object=schema)  # type: ignore[arg-type]
                if is_model
                else JsonOutputParser()
            )
        elif method == "json_mode":
            llm = self.bind(
                response_format={"type": "json_object"},
                ls_structured_output_format={"kwargs": {"method": method}, "schema": schema},
            )
            parser = (
                PydanticOutputParser(pydantic_object=schema)  # type: ignore[arg-type]
                if is_model
                else JsonOutputParser()
            )
        else:
            raise ValueError(
                f"method must be 'function_calling', 'json_schema' or 'json_mode', got {method!r}"
            )
        if not include_raw:
            return llm | parser
        parse_raw = RunnablePassthrough.assign(
            parsed=itemgetter("raw") | parser, parsing_error=lambda _: None
        )
        no_parse = RunnablePassthrough.assign(parsed=lambda _: None)
        return RunnableMap(raw=llm) | parse_raw.with_fallbacks(
            [no_parse], exception_key="parsing_error"
        )


# ---------------------------------------------------------------------------- conversion


def _openai_messages(messages: list[BaseMessage]) -> list[dict[str, Any]]:
    converted = convert_to_openai_messages(messages)
    for message in converted:
        # An assistant turn that only calls tools has no text: OpenAI's own shape is null.
        calls_only = message.get("role") == "assistant" and message.get("tool_calls")
        if calls_only and message.get("content") in ("", []):
            message["content"] = None
    return converted


def _tool_choice(choice: Any, tools: list[dict[str, Any]]) -> Any:
    if choice is True or choice in ("any", "required"):
        return "required"
    if choice in ("auto", "none"):
        return choice
    if isinstance(choice, str):
        names = [t["function"]["name"] for t in tools if t.get("type") == "function"]
        if choice not in names:
            raise ValueError(f"tool_choice {choice!r} is not one of the bound tools {names}")
        return {"type": "function", "function": {"name": choice}}
    if isinstance(choice, dict):
        return choice
    raise ValueError(f"unsupported tool_choice {choice!r}")


def _dump(obj: Any) -> dict[str, Any]:
    if isinstance(obj, Mapping):
        return dict(obj)
    return obj.model_dump(exclude_unset=True)


def _usage_metadata(usage: Any) -> UsageMetadata | None:
    if not usage:
        return None
    u = _dump(usage)
    prompt = int(u.get("prompt_tokens") or 0)
    completion = int(u.get("completion_tokens") or 0)
    meta: dict[str, Any] = {
        "input_tokens": prompt,
        "output_tokens": completion,
        "total_tokens": int(u.get("total_tokens") or prompt + completion),
    }
    cached = (u.get("prompt_tokens_details") or {}).get("cached_tokens")
    if cached is not None:
        meta["input_token_details"] = {"cache_read": cached}
    reasoning = (u.get("completion_tokens_details") or {}).get("reasoning_tokens")
    if reasoning is not None:
        meta["output_token_details"] = {"reasoning": reasoning}
    return UsageMetadata(**meta)  # type: ignore[typeddict-item]


def _ai_message(message: dict[str, Any], usage: UsageMetadata | None, meta: dict) -> AIMessage:
    tool_calls = []
    invalid = []
    for raw in message.get("tool_calls") or ():
        try:
            parsed = parse_tool_call(raw, return_id=True)
        except Exception as exc:  # malformed JSON arguments: keep them visible, unparsed
            invalid.append(make_invalid_tool_call(raw, str(exc)))
            continue
        if parsed is not None:
            tool_calls.append(parsed)
    extra: dict[str, Any] = {}
    reasoning = message.get("reasoning") or message.get("reasoning_content")
    if reasoning:
        extra["reasoning_content"] = reasoning
    if message.get("refusal"):
        extra["refusal"] = message["refusal"]
    return AIMessage(
        content=message.get("content") or "",
        tool_calls=tool_calls,
        invalid_tool_calls=invalid,
        additional_kwargs=extra,
        usage_metadata=usage,
        response_metadata=meta,
    )


def _chat_result(response: Any) -> ChatResult:
    data = _dump(response)
    usage = _usage_metadata(data.get("usage"))
    generations = []
    for choice in data.get("choices") or ():
        meta = {
            "finish_reason": choice.get("finish_reason"),
            "model_name": data.get("model"),
            "id": data.get("id"),
            "system_fingerprint": data.get("system_fingerprint"),
            "model_provider": "gonka-mux",
        }
        message = _ai_message(choice.get("message") or {}, usage, meta)
        info = {"finish_reason": choice.get("finish_reason")}
        if choice.get("logprobs"):
            info["logprobs"] = choice["logprobs"]
        generations.append(ChatGeneration(message=message, generation_info=info))
    llm_output = {"model_name": data.get("model"), "id": data.get("id")}
    if data.get("usage"):
        llm_output["token_usage"] = data["usage"]
    return ChatResult(generations=generations, llm_output=llm_output)


def _generation_chunk(raw: Any) -> ChatGenerationChunk | None:
    data = _dump(raw)
    usage = _usage_metadata(data.get("usage"))
    choices = data.get("choices") or []
    if not choices:
        if usage is None:
            return None
        return ChatGenerationChunk(message=AIMessageChunk(content="", usage_metadata=usage))
    choice = choices[0]
    if choice.get("index", 0) != 0:
        return None  # n > 1 streams: LangChain streams one message, the first choice
    delta = choice.get("delta") or {}
    tool_chunks = [
        {
            "name": (call.get("function") or {}).get("name"),
            "args": (call.get("function") or {}).get("arguments"),
            "id": call.get("id"),
            "index": call.get("index"),
            "type": "tool_call_chunk",
        }
        for call in delta.get("tool_calls") or ()
    ]
    extra: dict[str, Any] = {}
    reasoning = delta.get("reasoning") or delta.get("reasoning_content")
    if reasoning:
        extra["reasoning_content"] = reasoning
    meta: dict[str, Any] = {}
    info = None
    if choice.get("finish_reason"):
        meta = {
            "finish_reason": choice["finish_reason"],
            "model_name": data.get("model"),
            "model_provider": "gonka-mux",
        }
        info = {"finish_reason": choice["finish_reason"]}
    message = AIMessageChunk(
        content=delta.get("content") or "",
        tool_call_chunks=tool_chunks,  # type: ignore[arg-type]
        additional_kwargs=extra,
        usage_metadata=usage,
        response_metadata=meta,
    )
    return ChatGenerationChunk(message=message, generation_info=info)


def _close_sync(stream: Any) -> None:
    close = getattr(stream, "close", None)
    if close is not None:
        try:
            close()
        except Exception:
            log.debug("closing a stream failed", exc_info=True)
