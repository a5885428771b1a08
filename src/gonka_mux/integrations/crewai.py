"""CrewAI LLM over a gonka_mux Multiplexer: ``MultiplexerLLM(crewai.BaseLLM)``.

::

    from crewai import Agent
    from gonka_mux import Multiplexer
    from gonka_mux.integrations.crewai import MultiplexerLLM

    mux = Multiplexer()
    mux.add_endpoint("http://127.0.0.1:8000/v1", models=["kimi-k2.5"])
    agent = Agent(role=..., goal=..., backstory=..., llm=MultiplexerLLM(mux=mux, model="kimi-k2.5"))

A thin adapter. CrewAI drives agents through the sync ``call`` (from worker threads, even under
``kickoff_async``), so pass the sync :class:`~gonka_mux.Multiplexer`; its ``acall`` runs the
request on the Multiplexer's loop thread without blocking the caller's loop. Native tool calling
is on: tool calls are returned to CrewAI, which runs the tools and calls again with the results.
Stop words are applied locally (as CrewAI's own OpenAI provider does), so backends that reject
``stop`` together with tools still work. ``response_model`` is sent as a JSON-schema
``response_format`` and the reply is validated into the model.

``Task(output_json=...)``/``Task(output_pydantic=...)``: CrewAI's default converter builds its own
OpenAI client from the LLM's ``provider``/``base_url``/``api_key`` (a Multiplexer has none of
them), fails, and the crew reported success with ``json_dict=None``. So the first call made for
such a task sets the task's ``converter_cls`` to :class:`MultiplexerConverter` (unless the task
names its own): the conversion then goes through the Multiplexer, and a reply that still does not
fit the model raises ``ConverterError`` instead of passing silently.

Needs the ``crewai`` extra (CrewAI pins ``openai<3``: use it with openai 2.x).
"""

from __future__ import annotations

import json
import logging
from collections.abc import Generator, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Literal

try:
    from crewai.events.types.llm_events import LLMCallType
except ImportError as exc:  # the extra is not installed
    raise ModuleNotFoundError(
        "gonka_mux.integrations.crewai needs CrewAI: pip install 'gonka-mux[crewai]' "
        f"(missing: {exc.name})",
        name=exc.name,
    ) from exc
from crewai.hooks.dispatch import HookAborted
from crewai.llms.base_llm import BaseLLM, LLMCallBlockedError, llm_call_context
from crewai.llms.providers.utils.common import safe_tool_conversion
from crewai.utilities.converter import Converter
from crewai.utilities.exceptions.context_window_exceeding_exception import (
    LLMContextLengthExceededError,
)
from crewai.utilities.pydantic_schema_utils import generate_model_description
from pydantic import BaseModel, Field, PrivateAttr, ValidationError

from ._bridge import ChatBridge

if TYPE_CHECKING:
    from crewai.agents.agent_builder.base_agent import BaseAgent
    from crewai.task import Task
    from crewai.tools.base_tool import BaseTool
    from crewai.utilities.types import LLMMessage

log = logging.getLogger("gonka_mux.integrations.crewai")

__all__ = ["MultiplexerConverter", "MultiplexerLLM"]

_CONTEXT_WINDOW_USABLE = 0.85  # CrewAI's own providers keep 15% of the window in reserve


@dataclass(frozen=True)
class _Send:
    """What :meth:`MultiplexerLLM._plan` asks its driver to send: the Multiplexer's parameters,
    and whether the reply streams (chunks are reported to CrewAI as they come)."""

    params: dict[str, Any]
    stream: bool


@dataclass
class _Reply:
    """One assistant turn, whether it came as a ChatCompletion or a stream."""

    content: str = ""
    tool_calls: list[Any] = field(default_factory=list)
    usage: dict[str, Any] = field(default_factory=dict)
    finish_reason: str | None = None
    response_id: str | None = None


# Keyword arguments that configure an OpenAI *client*, not a request: CrewAI's base class would
# keep them in additional_params and this adapter would send them upstream in the body.
_CLIENT_KWARGS = frozenset(
    {
        "api_key",
        "base_url",
        "api_base",
        "organization",
        "project",
        "default_headers",
        "http_client",
        "api_version",
    }
)


def _check_client_kwargs(params: dict[str, Any]) -> None:
    """Refuse client options (the Multiplexer's endpoints own keys and URLs); drop
    ``max_retries`` (the Multiplexer owns retries); ``timeout`` is a per-attempt option."""
    wrong = sorted(set(params) & _CLIENT_KWARGS)
    if wrong:
        raise TypeError(
            f"MultiplexerLLM does not take {', '.join(wrong)}: keys and URLs belong to the "
            "Multiplexer's endpoints (mux.add_endpoint(url, api_key=...))"
        )
    if params.get("max_retries") is not None:
        log.debug("MultiplexerLLM: max_retries ignored, the Multiplexer owns retries")


class MultiplexerConverter(Converter):
    """CrewAI's output converter, through the LLM's own ``call`` (so through the Multiplexer).

    CrewAI's :class:`~crewai.utilities.converter.Converter` turns text into JSON with an
    ``instructor`` client it builds from the LLM's attributes; for a :class:`MultiplexerLLM`
    that client cannot exist and the conversion failed silently. Here the text is used as is
    when it already fits the model; otherwise the LLM is asked again with the model as its
    ``response_format``. After ``max_attempts`` it raises ``ConverterError`` (CrewAI's own
    converter returns the error, and the task then reports success without its output).
    Set automatically on tasks run by a :class:`MultiplexerLLM`; or pass
    ``Task(converter_cls=MultiplexerConverter)``.
    """

    def _as_given(self) -> BaseModel | None:
        """The text itself, when it is (or contains) a JSON object that fits the model."""
        text = self.text.strip()
        start, end = text.find("{"), text.rfind("}")
        for candidate in (text, text[start : end + 1] if 0 <= start < end else None):
            if candidate:
                try:
                    return self.model.model_validate_json(candidate)
                except ValidationError:
                    continue
        return None

    def to_pydantic(self, current_attempt: int = 1) -> BaseModel:
        return self._as_given() or super().to_pydantic(current_attempt)

    async def ato_pydantic(self, current_attempt: int = 1) -> BaseModel:
        return self._as_given() or await super().ato_pydantic(current_attempt)

    def to_json(self, current_attempt: int = 1) -> str:  # type: ignore[override]
        return self.to_pydantic(current_attempt).model_dump_json()

    async def ato_json(self, current_attempt: int = 1) -> str:
        return (await self.ato_pydantic(current_attempt)).model_dump_json()


def _route_conversion(task: Any) -> None:
    """Give a task with structured output a converter that calls through the Multiplexer."""
    wants = getattr(task, "output_json", None) or getattr(task, "output_pydantic", None)
    if wants is None or getattr(task, "converter_cls", None) is not None:
        return
    task.converter_cls = MultiplexerConverter
    log.debug("task %r: structured output converted through the Multiplexer", task.name)


class MultiplexerLLM(BaseLLM):
    """A CrewAI ``BaseLLM`` that sends every call through a gonka_mux Multiplexer.

    ``mux``: a :class:`~gonka_mux.Multiplexer` (sync and async calls) or an
    :class:`~gonka_mux.AsyncMultiplexer` (``acall`` only). ``model``: the public model name.
    ``session_id``/``session_mode``/``tier``/``caller``/``deadline``: gonka_mux options sent
    with every call (``session_mode="affinity"``, the default, asks the session extension not to
    prepend stored history: CrewAI sends the whole conversation itself). ``context_window``: the
    model's window in tokens. ``native_tools=False`` makes CrewAI fall back to its ReAct text
    format. ``send_stop=True`` also sends the stop words upstream. ``response_format``: a
    pydantic model or an OpenAI ``response_format`` dict used on every call. ``timeout`` is the
    per-attempt timeout; ``max_retries`` is ignored (the Multiplexer owns retries); client
    options (``api_key``, ``base_url``...) are refused. Other keyword arguments (``top_k=...``)
    land in ``additional_params`` and are sent in the request body.
    """

    llm_type: str = "gonka-mux"
    provider: str = "gonka-mux"
    mux: Any = Field(exclude=True)
    session_id: str | None = None
    session_mode: Literal["affinity", "history"] = "affinity"
    tier: str | None = None
    caller: str | None = None
    deadline: float | None = None
    context_window: int = 128_000
    native_tools: bool = True
    send_stop: bool = False
    multimodal: bool = False
    response_format: Any = None

    _bridge: ChatBridge = PrivateAttr()

    def model_post_init(self, context: Any, /) -> None:
        super().model_post_init(context)
        if self.context_window <= 0:
            raise ValueError(f"context_window must be > 0 tokens, got {self.context_window}")
        given = {k: True for k in ("api_key", "base_url") if getattr(self, k, None)}
        _check_client_kwargs({**given, **self.additional_params})
        for key in ("max_retries",):
            self.additional_params.pop(key, None)
        self._bridge = ChatBridge(self.mux)

    # -- capabilities CrewAI asks about -----------------------------------------------------
    def supports_function_calling(self) -> bool:
        return self.native_tools

    def supports_stop_words(self) -> bool:
        return True  # applied locally to every reply

    def supports_multimodal(self) -> bool:
        return self.multimodal

    def get_context_window_size(self) -> int:
        return int(self.context_window * _CONTEXT_WINDOW_USABLE)

    def get_input_tokens_count(
        self,
        messages: str | list[LLMMessage],
        tools: list[dict[str, BaseTool]] | None = None,
        response_model: type[BaseModel] | None = None,
    ) -> int:
        """About four characters a token (the base class logs a warning on every call)."""
        text = messages if isinstance(messages, str) else json.dumps(messages, default=str)
        if tools:
            text += json.dumps(tools, default=str)
        return (len(text) + 3) // 4

    # -- request building -------------------------------------------------------------------
    def _params(
        self,
        messages: list[LLMMessage],
        tools: list[dict[str, BaseTool]] | None,
        response_model: type[BaseModel] | None,
        stream: bool,
    ) -> dict[str, Any]:
        body: dict[str, Any] = {"model": self.model, "messages": messages}
        for key in (
            "temperature",
            "top_p",
            "max_tokens",
            "seed",
            "frequency_penalty",
            "presence_penalty",
            "n",
        ):
            value = getattr(self, key)
            if value is not None:
                body[key] = value
        body.update(self.additional_params)
        if self.send_stop and self.stop_sequences:
            body["stop"] = list(self.stop_sequences)
        if tools:
            body["tools"] = [_openai_tool(t) for t in tools]
            body.setdefault("tool_choice", "auto")
        response_format = response_model or self.response_format
        if isinstance(response_format, type) and issubclass(response_format, BaseModel):
            body["response_format"] = generate_model_description(response_format)
        elif isinstance(response_format, Mapping):
            body["response_format"] = dict(response_format)
        if stream:
            body["stream"] = True
            body["stream_options"] = {"include_usage": True}
        mux_kwargs: dict[str, Any] = {
            "session_id": self.session_id,
            "tier": self.tier,
            "caller": self.caller,
            "deadline": self.deadline,
        }
        if self.session_id is not None:
            mux_kwargs["mux_metadata"] = {"session_mode": self.session_mode}
        return self._bridge.params(body, mux_kwargs)

    # -- BaseLLM ----------------------------------------------------------------------------
    # call and acall share one body, _plan: it yields the request to send and gets the reply
    # back (or the error, thrown in). The two faces only send it, blocking or awaited.
    def call(
        self,
        messages: str | list[LLMMessage],
        tools: list[dict[str, BaseTool]] | None = None,
        callbacks: list[Any] | None = None,
        available_functions: dict[str, Any] | None = None,
        from_task: Task | None = None,
        from_agent: BaseAgent | None = None,
        response_model: type[BaseModel] | None = None,
    ) -> str | Any:
        """One chat completion through the Multiplexer (tool calls are returned, not run)."""
        plan = self._plan(
            messages, tools, callbacks, available_functions, from_task, from_agent, response_model
        )
        send = next(plan)
        try:
            reply = self._send(send, from_task, from_agent)
        except BaseException as exc:
            return _conclude(plan, exc)
        return _conclude(plan, reply)

    async def acall(
        self,
        messages: str | list[LLMMessage],
        tools: list[dict[str, BaseTool]] | None = None,
        callbacks: list[Any] | None = None,
        available_functions: dict[str, Any] | None = None,
        from_task: Task | None = None,
        from_agent: BaseAgent | None = None,
        response_model: type[BaseModel] | None = None,
    ) -> str | Any:
        """The async twin of :meth:`call`."""
        plan = self._plan(
            messages, tools, callbacks, available_functions, from_task, from_agent, response_model
        )
        send = next(plan)
        try:
            reply = await self._asend(send, from_task, from_agent)
        except BaseException as exc:
            return _conclude(plan, exc)
        return _conclude(plan, reply)

    # -- shared steps -----------------------------------------------------------------------
    def _plan(
        self,
        messages: str | list[LLMMessage],
        tools: list[dict[str, BaseTool]] | None,
        callbacks: list[Any] | None,
        available_functions: dict[str, Any] | None,
        from_task: Any,
        from_agent: Any,
        response_model: type[BaseModel] | None,
    ) -> Generator[_Send, _Reply, Any]:
        """Everything but the request itself: events, hooks, the body, the reply's handling."""
        if from_task is not None:
            _route_conversion(from_task)
        with llm_call_context():
            self._emit_call_started_event(
                messages=messages,
                tools=tools,
                callbacks=callbacks,
                available_functions=available_functions,
                from_task=from_task,
                from_agent=from_agent,
            )
            try:
                formatted = self._format_messages(messages)
                self._invoke_before_llm_call_hooks(formatted, from_agent)
                stream = bool(self._effective_stream())
                params = self._params(formatted, tools, response_model, stream)
                reply = yield _Send(params, stream)
                return self._finish(
                    reply, formatted, available_functions, from_task, from_agent, response_model
                )
            except Exception as exc:
                error = self._failed(exc, from_task, from_agent)
                if error is exc:
                    raise
                raise error from exc

    def _send(self, send: _Send, from_task: Any, from_agent: Any) -> _Reply:
        result = self._bridge.create(send.params)
        if not send.stream:
            return _reply_of(result)
        assembler = _StreamAssembler()
        with result:
            for chunk in result:
                self._on_chunk(assembler, chunk, from_task, from_agent)
        return assembler.reply()

    async def _asend(self, send: _Send, from_task: Any, from_agent: Any) -> _Reply:
        result = await self._bridge.acreate(send.params)
        if not send.stream:
            return _reply_of(result)
        assembler = _StreamAssembler()
        try:
            async for chunk in result:
                self._on_chunk(assembler, chunk, from_task, from_agent)
        finally:
            await result.close()
        return assembler.reply()

    def _on_chunk(self, assembler: _StreamAssembler, chunk: Any, task: Any, agent: Any) -> None:
        text, calls = assembler.add(chunk)
        if text:
            self._emit_stream_chunk_event(
                chunk=text,
                from_task=task,
                from_agent=agent,
                call_type=LLMCallType.LLM_CALL,
                response_id=assembler.response_id,
            )
        for call in calls:
            self._emit_stream_chunk_event(
                chunk=(call.get("function") or {}).get("arguments") or "",
                from_task=task,
                from_agent=agent,
                tool_call=call,
                call_type=LLMCallType.TOOL_CALL,
                response_id=assembler.response_id,
            )

    def _finish(
        self,
        reply: _Reply,
        messages: list[LLMMessage],
        available_functions: dict[str, Any] | None,
        from_task: Any,
        from_agent: Any,
        response_model: type[BaseModel] | None,
    ) -> Any:
        if reply.usage:
            self._track_token_usage_internal(reply.usage)
        done = {
            "from_task": from_task,
            "from_agent": from_agent,
            "messages": messages,
            "usage": reply.usage or None,
            "finish_reason": reply.finish_reason,
            "response_id": reply.response_id,
        }
        if reply.tool_calls and not available_functions:
            # Native tool calling: CrewAI runs the tools and calls again with their results.
            self._emit_call_completed_event(
                response=reply.tool_calls, call_type=LLMCallType.TOOL_CALL, **done
            )
            return reply.tool_calls
        if reply.tool_calls and available_functions:
            name, args = _call_name_args(reply.tool_calls[0])
            result = self._handle_tool_execution(
                function_name=name,
                function_args=args,
                available_functions=available_functions,
                from_task=from_task,
                from_agent=from_agent,
            )
            if result is not None:
                return result
        content = reply.content
        if response_model is not None:
            parsed = self._validate_structured_output(content, response_model)
            self._emit_call_completed_event(response=parsed, call_type=LLMCallType.LLM_CALL, **done)
            return parsed
        if isinstance(self.response_format, type) and issubclass(self.response_format, BaseModel):
            try:
                parsed = self._validate_structured_output(content, self.response_format)
            except ValueError:
                log.warning("reply did not validate as %s", self.response_format.__name__)
            else:
                self._emit_call_completed_event(
                    response=parsed, call_type=LLMCallType.LLM_CALL, **done
                )
                return parsed
        content = self._apply_stop_words(content)
        self._emit_call_completed_event(response=content, call_type=LLMCallType.LLM_CALL, **done)
        return self._invoke_after_llm_call_hooks(messages, content, from_agent)

    def _failed(self, exc: Exception, from_task: Any, from_agent: Any) -> Exception:
        """Report a failed call to CrewAI's event bus; return what to raise."""
        if isinstance(exc, (HookAborted, LLMCallBlockedError)):
            self._emit_call_denied_event(exc, from_task, from_agent)
            return exc
        self._emit_call_failed_event(
            error=f"gonka_mux call failed: {exc}", from_task=from_task, from_agent=from_agent
        )
        if getattr(exc, "code", None) == "context_length_exceeded":
            # CrewAI summarizes the conversation and retries on this exception type.
            return LLMContextLengthExceededError(str(exc))
        return exc


# ---------------------------------------------------------------------------- conversion


def _conclude(plan: Generator[_Send, _Reply, Any], outcome: _Reply | BaseException) -> Any:
    """Hand the plan its reply (or throw the send's error into it) and return its result."""
    try:
        if isinstance(outcome, BaseException):
            plan.throw(outcome)
        else:
            plan.send(outcome)
    except StopIteration as done:
        return done.value
    raise RuntimeError("MultiplexerLLM._plan asked to send twice")  # pragma: no cover


def _openai_tool(tool: Mapping[str, Any]) -> dict[str, Any]:
    """CrewAI hands tools as OpenAI schemas or as flat {name, description, parameters}."""
    name, description, parameters = safe_tool_conversion(dict(tool), "gonka-mux")
    function: dict[str, Any] = {"name": name, "description": description}
    if parameters:
        function["parameters"] = dict(parameters)
    return {"type": "function", "function": function}


def _call_name_args(call: Any) -> tuple[str, dict[str, Any]]:
    function = call["function"] if isinstance(call, Mapping) else call.function
    name = function["name"] if isinstance(function, Mapping) else function.name
    raw = function["arguments"] if isinstance(function, Mapping) else function.arguments
    try:
        args = json.loads(raw) if isinstance(raw, str) and raw else dict(raw or {})
    except (json.JSONDecodeError, TypeError, ValueError):
        log.warning("tool call %s has arguments that are not a JSON object", name)
        args = {}
    return name, args


def _usage_dict(usage: Any) -> dict[str, Any]:
    if not usage:
        return {}
    return dict(usage) if isinstance(usage, Mapping) else usage.model_dump(exclude_none=True)


def _reply_of(completion: Any) -> _Reply:
    choice = completion.choices[0]
    message = choice.message
    return _Reply(
        content=message.content or "",
        tool_calls=list(message.tool_calls or ()),
        usage=_usage_dict(completion.usage),
        finish_reason=choice.finish_reason,
        response_id=completion.id,
    )


class _StreamAssembler:
    """Builds the assistant turn from chunks; tool-call fragments are joined by index."""

    def __init__(self) -> None:
        self.text: list[str] = []
        self.calls: dict[int, dict[str, Any]] = {}
        self.usage: dict[str, Any] = {}
        self.finish_reason: str | None = None
        self.response_id: str | None = None

    def add(self, chunk: Any) -> tuple[str, list[dict[str, Any]]]:
        self.response_id = self.response_id or getattr(chunk, "id", None)
        if getattr(chunk, "usage", None):
            self.usage = _usage_dict(chunk.usage)
        choices = [c for c in chunk.choices or () if c.index == 0]
        if not choices:
            return "", []
        choice = choices[0]
        if choice.finish_reason:
            self.finish_reason = choice.finish_reason
        delta = choice.delta
        text = (delta.content or "") if delta is not None else ""
        if text:
            self.text.append(text)
        touched = []
        for part in (delta.tool_calls if delta is not None else None) or ():
            slot = self.calls.setdefault(
                part.index,
                {"id": None, "type": "function", "function": {"name": "", "arguments": ""}},
            )
            if part.id:
                slot["id"] = part.id
            fragment = ""
            if part.function is not None:
                fragment = part.function.arguments or ""
                slot["function"]["name"] += part.function.name or ""
                slot["function"]["arguments"] += fragment
            # The shape of CrewAI's LLMStreamChunkEvent.tool_call: this delta's fragment.
            touched.append(
                {
                    "id": slot["id"],
                    "type": "function",
                    "function": {"name": slot["function"]["name"], "arguments": fragment},
                    "index": part.index,
                }
            )
        return text, touched

    def reply(self) -> _Reply:
        return _Reply(
            content="".join(self.text),
            tool_calls=[self.calls[i] for i in sorted(self.calls)],
            usage=self.usage,
            finish_reason=self.finish_reason,
            response_id=self.response_id,
        )
