"""Model tiering: pick a cheap or a strong model for ``model="auto"`` by small, composable rules.

A :class:`TieringPolicy` maps tier names to models and holds an ordered list of rules. For each
request, :meth:`TieringPolicy.decide` looks at the chat-completion parameters and returns a
:class:`TieringDecision` (tier, model, rule name, human-readable reason). The first rule that
matches wins; when none does, the policy's ``default_tier`` is used. A caller's tier hint
(``tier="strong"``) skips the rules.

Rules are values, in the style of tenacity's ``stop``/``wait`` objects: build them, combine them
with ``&`` (all), ``|`` (any) and ``~`` (not), and bind a tier with ``.then(tier)`` or the
``tier=`` keyword::

    from gonka_mux.tiering import HasTools, KeywordsAny, PromptLongerThan, TieringPolicy

    policy = TieringPolicy(
        tiers={"cheap": "Qwen/Qwen3-8B", "strong": "moonshotai/Kimi-K2.5"},
        rules=[
            (HasTools() | PromptLongerThan(8_000)).then("strong", name="agentic"),
            KeywordsAny(["classify", "extract"], tier="cheap"),
        ],
        default_tier="strong",
    )
    decision = policy.decide({"messages": [{"role": "user", "content": "Classify: ..."}]})
    # TieringDecision(tier='cheap', model='Qwen/Qwen3-8B', rule='keywords_any',
    #                 reason="last user message mentions 'classify'")

Conditions
----------
``PromptLongerThan(chars)`` / ``PromptShorterThan(chars)``
    Total characters of text content over all messages (system included).
``HasTools()``
    The request carries a non-empty ``tools`` (or legacy ``functions``) list.
``HasResponseFormat()``
    ``response_format`` is set to anything other than ``{"type": "text"}``.
``KeywordsAny(words, scope="last_user")``
    Any of the words or phrases occurs as a whole word, case-insensitively, in the last user
    message (``scope="all"``: in any message). Phrases match across any whitespace.
``ConversationDepthAtLeast(n)``
    The conversation holds at least ``n`` messages that are not ``system``/``developer``.
``When(predicate)``
    ``predicate(params) -> bool``, your own condition.
``CallableRule(fn)``
    A whole rule in one callable: ``fn(params)`` returns a tier name, ``(tier, reason)`` or
    ``None`` (no opinion).

Default rules (used when ``rules`` is not given; every threshold and word list is overridable
through :func:`default_rules`), in order:

=====================  ===========================================================  ========
rule                   matches                                                      tier
=====================  ===========================================================  ========
``tools``              the request has tools                                        strong
``response_format``    structured output was requested                              strong
``long_prompt``        more than 6,000 characters of prompt                         strong
``deep_conversation``  10 or more non-system messages                               strong
``reasoning_words``    the last user message asks to explain, prove, plan, debug...  strong
``simple_task``        the last user message asks to classify, extract, yes/no...   cheap
=====================  ===========================================================  ========

The default tier is ``cheap``.

Configuration (dict or TOML)
----------------------------
:meth:`TieringPolicy.from_config` takes the mapping below and :meth:`TieringPolicy.from_toml`
reads it from the ``[tiering]`` table of a TOML file (or from the file's root when it has a
``tiers`` key). Unknown keys are errors, so typos do not pass silently::

    [tiering]
    default_tier = "cheap"            # optional, default "cheap"; must name a tier
    include_default_rules = true      # optional; default: true when `rules` is absent,
                                      # false when it is given (true = your rules, then defaults)

    [tiering.tiers]                   # required: tier name -> model name
    cheap = "Qwen/Qwen3-8B"
    strong = "moonshotai/Kimi-K2.5"

    [tiering.defaults]                # optional: tune the default rules
    long_prompt_chars = 6000
    deep_conversation_messages = 10
    reasoning_words = ["explain", "why", "prove"]
    simple_task_words = ["classify", "extract", "yes or no"]

    [[tiering.rules]]                 # rules, in order; first match wins
    name = "agentic"                  # optional; shown in decisions and metering
    tier = "strong"                   # required unless only `callable` is given
    has_tools = true                  # every condition key in one rule must hold (AND):
    # has_response_format = true      #   a `false` boolean negates the condition
    # prompt_longer_than = 8000
    # prompt_shorter_than = 200
    # keywords_any = ["classify", "label"]
    # keywords_scope = "last_user"    #   or "all"
    # conversation_depth_at_least = 12
    # callable = "my_pkg.rules:is_hard"
    #     with `tier`: a predicate, fn(params) -> bool;
    #     alone: a whole rule, fn(params) -> tier | (tier, reason) | None

Errors in configuration raise :class:`gonka_mux.errors.ConfigError` naming the key
(``tiering.rules[1].prompt_longer_than``); an unknown tier at decision time (a caller's hint, or a
callable rule's answer) raises :class:`TieringError`.

Decisions are pure and fast: keyword patterns are compiled once when a rule is built, and the
features of a request (text length, last user message, depth) are computed at most once per
decision and only when a rule asks for them.
"""

from __future__ import annotations

import importlib
import re
import sys
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import KW_ONLY, dataclass, field
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

from gonka_mux._exceptions import ConfigError, GonkaMuxError

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - Python 3.10
    import tomli as tomllib

__all__ = [
    "AUTO_MODEL",
    "DEFAULT_REASONING_WORDS",
    "DEFAULT_SIMPLE_TASK_WORDS",
    "AllOf",
    "AnyOf",
    "CallableRule",
    "Condition",
    "ConversationDepthAtLeast",
    "HasResponseFormat",
    "HasTools",
    "KeywordsAny",
    "Not",
    "PromptLongerThan",
    "PromptShorterThan",
    "RequestFeatures",
    "Rule",
    "TieringDecision",
    "TieringError",
    "TieringPolicy",
    "TieringRule",
    "When",
    "default_rules",
]

#: The model name that asks the multiplexer to pick a model through tiering.
AUTO_MODEL = "auto"

# fmt: off
DEFAULT_REASONING_WORDS: tuple[str, ...] = (
    "why", "explain", "reason", "reasoning", "prove", "proof", "derive", "step by step",
    "think through", "analyze", "analyse", "analysis", "compare", "evaluate", "trade-off",
    "tradeoff", "plan", "design", "architect", "debug", "refactor", "optimize", "optimise",
    "solve", "calculate", "strategy",
)

DEFAULT_SIMPLE_TASK_WORDS: tuple[str, ...] = (
    "classify", "classification", "categorize", "categorise", "categorization", "label", "tag",
    "extract", "extraction", "yes or no", "yes/no", "true or false", "sentiment",
    "detect the language", "spam or not",
)
# fmt: on

_NON_CONVERSATION_ROLES = frozenset({"system", "developer"})


class TieringError(GonkaMuxError, ValueError):
    """A tier asked for at decision time does not exist (a hint, or a callable rule's answer)."""


# --------------------------------------------------------------------------- request features


def _content_text(content: Any) -> str:
    """Text of one message's ``content``: a string, or the text parts of a content-part list."""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        texts = [
            part["text"]
            for part in content
            if isinstance(part, dict) and isinstance(part.get("text"), str)
        ]
        return texts[0] if len(texts) == 1 else "\n".join(texts)
    return ""


class RequestFeatures:
    """What rules look at, computed lazily and at most once per decision.

    ``params`` are the chat-completion keyword arguments (``messages``, ``tools``...).
    """

    __slots__ = (
        "_all_lower",
        "_all_text",
        "_depth",
        "_last_user_lower",
        "_last_user_text",
        "_messages",
        "_prompt_chars",
        "params",
    )

    def __init__(self, params: Mapping[str, Any]) -> None:
        self.params = params
        messages = params.get("messages")
        self._messages: Sequence[Any] = messages if isinstance(messages, (list, tuple)) else ()
        self._prompt_chars: int | None = None
        self._last_user_text: str | None = None
        self._all_text: str | None = None
        self._last_user_lower: str | None = None
        self._all_lower: str | None = None
        self._depth: int | None = None

    @property
    def messages(self) -> Sequence[Any]:
        return self._messages

    @property
    def prompt_chars(self) -> int:
        """Characters of text content over all messages."""
        if self._prompt_chars is None:
            self._prompt_chars = sum(
                len(_content_text(m.get("content"))) for m in self._messages if isinstance(m, dict)
            )
        return self._prompt_chars

    @property
    def last_user_text(self) -> str:
        """Text of the last ``user`` message ("" when there is none)."""
        if self._last_user_text is None:
            text = ""
            for message in reversed(self._messages):
                if isinstance(message, dict) and message.get("role") == "user":
                    text = _content_text(message.get("content"))
                    break
            self._last_user_text = text
        return self._last_user_text

    @property
    def all_text(self) -> str:
        """Text of every message, joined by newlines."""
        if self._all_text is None:
            self._all_text = "\n".join(
                _content_text(m.get("content")) for m in self._messages if isinstance(m, dict)
            )
        return self._all_text

    @property
    def last_user_lower(self) -> str:
        """:attr:`last_user_text` lower-cased (keyword rules share it)."""
        if self._last_user_lower is None:
            self._last_user_lower = self.last_user_text.lower()
        return self._last_user_lower

    @property
    def all_lower(self) -> str:
        """:attr:`all_text` lower-cased (keyword rules share it)."""
        if self._all_lower is None:
            self._all_lower = self.all_text.lower()
        return self._all_lower

    @property
    def depth(self) -> int:
        """Number of messages that are not ``system``/``developer`` (user, assistant, tool)."""
        if self._depth is None:
            self._depth = sum(
                1
                for m in self._messages
                if isinstance(m, dict) and m.get("role") not in _NON_CONVERSATION_ROLES
            )
        return self._depth

    @property
    def tool_count(self) -> int:
        tools = self.params.get("tools") or self.params.get("functions")
        return len(tools) if isinstance(tools, (list, tuple)) else 0

    @property
    def response_format_type(self) -> str | None:
        """``response_format``'s type, or None when absent or plain text."""
        fmt = self.params.get("response_format")
        if fmt is None:
            return None
        kind = fmt.get("type") if isinstance(fmt, Mapping) else getattr(fmt, "__name__", None)
        kind = kind if isinstance(kind, str) else "custom"
        return None if kind == "text" else kind


# --------------------------------------------------------------------------- conditions


class Condition:
    """A yes/no question about a request. Combine with ``&``, ``|``, ``~``; bind a tier with
    :meth:`then` (or the ``tier=`` keyword every condition accepts) to make it a rule."""

    #: Rule name used when a tier is bound without an explicit name.
    default_name: str = "condition"
    tier: str | None = None
    name: str | None = None

    def matches(self, features: RequestFeatures) -> bool:
        raise NotImplementedError

    def explain(self, features: RequestFeatures) -> str:
        """Why it matched; only called after :meth:`matches` returned True."""
        return self.describe()

    def describe(self) -> str:
        """What it checks, independent of any request."""
        raise NotImplementedError

    def then(self, tier: str, *, name: str | None = None) -> Rule:
        """A rule choosing ``tier`` when this condition holds."""
        return Rule(self, tier, name=name or self.name or self.default_name)

    def __and__(self, other: Condition) -> AllOf:
        return AllOf((self, other))

    def __or__(self, other: Condition) -> AnyOf:
        return AnyOf((self, other))

    def __invert__(self) -> Not:
        return Not(self)


def _check_count(value: Any, what: str, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ValueError(f"{what} must be an integer >= {minimum}, got {value!r}")
    return value


@dataclass(frozen=True)
class PromptLongerThan(Condition):
    """More than ``chars`` characters of text over all messages."""

    chars: int
    _: KW_ONLY
    tier: str | None = None
    name: str | None = None
    default_name = "prompt_longer_than"

    def __post_init__(self) -> None:
        _check_count(self.chars, "PromptLongerThan(chars)", 0)

    def matches(self, features: RequestFeatures) -> bool:
        return features.prompt_chars > self.chars

    def explain(self, features: RequestFeatures) -> str:
        return f"prompt is {features.prompt_chars} chars (> {self.chars})"

    def describe(self) -> str:
        return f"prompt longer than {self.chars} chars"


@dataclass(frozen=True)
class PromptShorterThan(Condition):
    """Fewer than ``chars`` characters of text over all messages."""

    chars: int
    _: KW_ONLY
    tier: str | None = None
    name: str | None = None
    default_name = "prompt_shorter_than"

    def __post_init__(self) -> None:
        _check_count(self.chars, "PromptShorterThan(chars)", 1)

    def matches(self, features: RequestFeatures) -> bool:
        return features.prompt_chars < self.chars

    def explain(self, features: RequestFeatures) -> str:
        return f"prompt is {features.prompt_chars} chars (< {self.chars})"

    def describe(self) -> str:
        return f"prompt shorter than {self.chars} chars"


@dataclass(frozen=True)
class HasTools(Condition):
    """The request carries tools (``tools`` or legacy ``functions``)."""

    _: KW_ONLY
    tier: str | None = None
    name: str | None = None
    default_name = "has_tools"

    def matches(self, features: RequestFeatures) -> bool:
        return features.tool_count > 0

    def explain(self, features: RequestFeatures) -> str:
        count = features.tool_count
        return f"request has {count} tool{'s' if count != 1 else ''}"

    def describe(self) -> str:
        return "request has tools"


@dataclass(frozen=True)
class HasResponseFormat(Condition):
    """Structured output was requested (``response_format`` other than plain text)."""

    _: KW_ONLY
    tier: str | None = None
    name: str | None = None
    default_name = "has_response_format"

    def matches(self, features: RequestFeatures) -> bool:
        return features.response_format_type is not None

    def explain(self, features: RequestFeatures) -> str:
        return f"response_format is {features.response_format_type!r}"

    def describe(self) -> str:
        return "response_format requested"


_SCOPES = ("last_user", "all")
# Below this many characters the regex alone is quicker than the substring prefilter.
_PREFILTER_FROM = 512


@dataclass(frozen=True)
class KeywordsAny(Condition):
    """Any of ``words`` occurs as a whole word (case-insensitive) in the scoped text.

    ``scope="last_user"`` looks at the last user message, ``"all"`` at every message.
    """

    words: tuple[str, ...]
    _: KW_ONLY
    scope: str = "last_user"
    tier: str | None = None
    name: str | None = None
    _pattern: re.Pattern[str] = field(init=False, repr=False, compare=False)
    _needles: tuple[str, ...] = field(init=False, repr=False, compare=False)
    default_name = "keywords_any"

    def __init__(
        self,
        words: Iterable[str],
        *,
        scope: str = "last_user",
        tier: str | None = None,
        name: str | None = None,
    ) -> None:
        if isinstance(words, str):
            raise ValueError("KeywordsAny(words) takes a list of words, not one string")
        given = tuple(words)
        cleaned = tuple(w.strip() for w in given if isinstance(w, str) and w.strip())
        if not cleaned or len(cleaned) != len(given):
            raise ValueError("KeywordsAny(words) needs a non-empty list of non-empty strings")
        if scope not in _SCOPES:
            raise ValueError(f"KeywordsAny(scope) must be one of {_SCOPES}, got {scope!r}")
        object.__setattr__(self, "words", cleaned)
        object.__setattr__(self, "scope", scope)
        object.__setattr__(self, "tier", tier)
        object.__setattr__(self, "name", name)
        # Matching runs on lower-cased text with a case-sensitive pattern, compiled once here:
        # several times faster than re.IGNORECASE. Longest first so "yes or no" wins over "yes";
        # phrases match across any whitespace.
        lowered = [w.lower().split() for w in cleaned]
        alternatives = sorted(
            {r"\s+".join(map(re.escape, w)) for w in lowered}, key=len, reverse=True
        )
        pattern = re.compile(r"(?<!\w)(?:" + "|".join(alternatives) + r")(?!\w)")
        object.__setattr__(self, "_pattern", pattern)
        # Every match contains its first word verbatim: plain substring checks (fast C search)
        # rule most texts out before the regex runs.
        object.__setattr__(self, "_needles", tuple(sorted({w[0] for w in lowered})))

    def _search(self, features: RequestFeatures) -> re.Match[str] | None:
        text = features.last_user_lower if self.scope == "last_user" else features.all_lower
        if len(text) > _PREFILTER_FROM and not any(needle in text for needle in self._needles):
            return None
        return self._pattern.search(text)

    def matches(self, features: RequestFeatures) -> bool:
        return self._search(features) is not None

    def explain(self, features: RequestFeatures) -> str:
        found = self._search(features)
        word = " ".join(found.group(0).split()) if found else "?"
        where = "last user message" if self.scope == "last_user" else "conversation"
        return f"{where} mentions {word!r}"

    def describe(self) -> str:
        shown = ", ".join(repr(w) for w in self.words[:4])
        more = ", ..." if len(self.words) > 4 else ""
        return f"mentions any of {shown}{more}"


@dataclass(frozen=True)
class ConversationDepthAtLeast(Condition):
    """At least ``messages`` user/assistant/tool messages (system and developer not counted)."""

    messages: int
    _: KW_ONLY
    tier: str | None = None
    name: str | None = None
    default_name = "conversation_depth_at_least"

    def __post_init__(self) -> None:
        _check_count(self.messages, "ConversationDepthAtLeast(messages)", 1)

    def matches(self, features: RequestFeatures) -> bool:
        return features.depth >= self.messages

    def explain(self, features: RequestFeatures) -> str:
        return f"conversation has {features.depth} messages (>= {self.messages})"

    def describe(self) -> str:
        return f"conversation of at least {self.messages} messages"


def _callable_name(fn: Callable[..., Any]) -> str:
    return getattr(fn, "__qualname__", None) or getattr(fn, "__name__", None) or repr(fn)


@dataclass(frozen=True)
class When(Condition):
    """Your own condition: ``predicate(params) -> bool`` over the request parameters."""

    predicate: Callable[[Mapping[str, Any]], bool]
    _: KW_ONLY
    tier: str | None = None
    name: str | None = None
    default_name = "when"

    def __post_init__(self) -> None:
        if not callable(self.predicate):
            raise ValueError(f"When(predicate) needs a callable, got {type(self.predicate)}")

    def matches(self, features: RequestFeatures) -> bool:
        return bool(self.predicate(features.params))

    def explain(self, features: RequestFeatures) -> str:
        return f"{_callable_name(self.predicate)}() is true"

    def describe(self) -> str:
        return f"{_callable_name(self.predicate)}() is true"


@dataclass(frozen=True)
class AllOf(Condition):
    """Every condition holds (``a & b``)."""

    conditions: tuple[Condition, ...]
    _: KW_ONLY
    tier: str | None = None
    name: str | None = None
    default_name = "all_of"

    def matches(self, features: RequestFeatures) -> bool:
        return all(c.matches(features) for c in self.conditions)

    def explain(self, features: RequestFeatures) -> str:
        return " and ".join(c.explain(features) for c in self.conditions)

    def describe(self) -> str:
        return " and ".join(c.describe() for c in self.conditions)

    def __and__(self, other: Condition) -> AllOf:
        if self.tier is None and self.name is None:  # flatten a & b & c
            return AllOf((*self.conditions, other))
        return AllOf((self, other))


@dataclass(frozen=True)
class AnyOf(Condition):
    """At least one condition holds (``a | b``)."""

    conditions: tuple[Condition, ...]
    _: KW_ONLY
    tier: str | None = None
    name: str | None = None
    default_name = "any_of"

    def matches(self, features: RequestFeatures) -> bool:
        return any(c.matches(features) for c in self.conditions)

    def explain(self, features: RequestFeatures) -> str:
        for condition in self.conditions:
            if condition.matches(features):
                return condition.explain(features)
        return self.describe()

    def describe(self) -> str:
        return " or ".join(c.describe() for c in self.conditions)

    def __or__(self, other: Condition) -> AnyOf:
        if self.tier is None and self.name is None:  # flatten a | b | c
            return AnyOf((*self.conditions, other))
        return AnyOf((self, other))


@dataclass(frozen=True)
class Not(Condition):
    """The condition does not hold (``~a``)."""

    condition: Condition
    _: KW_ONLY
    tier: str | None = None
    name: str | None = None
    default_name = "not"

    def matches(self, features: RequestFeatures) -> bool:
        return not self.condition.matches(features)

    def explain(self, features: RequestFeatures) -> str:
        return self.describe()

    def describe(self) -> str:
        return f"not ({self.condition.describe()})"


# --------------------------------------------------------------------------- rules


@runtime_checkable
class TieringRule(Protocol):
    """What a policy needs of a rule: a name and ``evaluate(features) -> (tier, reason) | None``."""

    name: str

    def evaluate(self, features: RequestFeatures) -> tuple[str, str] | None: ...


@dataclass(frozen=True)
class Rule:
    """``condition`` holds -> choose ``tier``. Usually built with ``condition.then(tier)``."""

    condition: Condition
    tier: str
    name: str = ""

    def __post_init__(self) -> None:
        if not isinstance(self.condition, Condition):
            raise ValueError(f"Rule(condition) needs a Condition, got {type(self.condition)}")
        if not isinstance(self.tier, str) or not self.tier:
            raise ValueError(f"Rule(tier) must be a non-empty string, got {self.tier!r}")
        if not self.name:
            object.__setattr__(self, "name", self.condition.name or self.condition.default_name)

    def evaluate(self, features: RequestFeatures) -> tuple[str, str] | None:
        if self.condition.matches(features):
            return self.tier, self.condition.explain(features)
        return None

    @property
    def tiers(self) -> frozenset[str]:
        """Tiers this rule can choose (checked against the policy's tiers up front)."""
        return frozenset((self.tier,))


@dataclass(frozen=True)
class CallableRule:
    """A whole rule in one callable: ``fn(params)`` returns a tier, ``(tier, reason)`` or None.

    The tier it returns is checked at decision time (:class:`TieringError` when unknown).
    """

    fn: Callable[[Mapping[str, Any]], str | tuple[str, str] | None]
    name: str = ""

    def __post_init__(self) -> None:
        if not callable(self.fn):
            raise ValueError(f"CallableRule(fn) needs a callable, got {type(self.fn)}")
        if not self.name:
            object.__setattr__(self, "name", getattr(self.fn, "__name__", "callable"))

    def evaluate(self, features: RequestFeatures) -> tuple[str, str] | None:
        answer = self.fn(features.params)
        if answer is None:
            return None
        if isinstance(answer, str):
            return answer, f"{_callable_name(self.fn)}() chose {answer!r}"
        if (
            isinstance(answer, tuple)
            and len(answer) == 2
            and all(isinstance(x, str) for x in answer)
        ):
            return answer[0], answer[1]
        raise TieringError(
            f"tiering rule {self.name!r} returned {answer!r}; "
            "return a tier name, a (tier, reason) tuple, or None"
        )


def default_rules(
    *,
    long_prompt_chars: int = 6_000,
    deep_conversation_messages: int = 10,
    reasoning_words: Iterable[str] = DEFAULT_REASONING_WORDS,
    simple_task_words: Iterable[str] = DEFAULT_SIMPLE_TASK_WORDS,
    cheap: str = "cheap",
    strong: str = "strong",
) -> list[Rule]:
    """The default rule list (see the module docstring), with every knob overridable."""
    # Cheap checks first: a long prompt is sent to the strong tier before any text is scanned.
    return [
        HasTools().then(strong, name="tools"),
        HasResponseFormat().then(strong, name="response_format"),
        PromptLongerThan(long_prompt_chars).then(strong, name="long_prompt"),
        ConversationDepthAtLeast(deep_conversation_messages).then(strong, name="deep_conversation"),
        KeywordsAny(reasoning_words).then(strong, name="reasoning_words"),
        KeywordsAny(simple_task_words).then(cheap, name="simple_task"),
    ]


# --------------------------------------------------------------------------- policy


@dataclass(frozen=True)
class TieringDecision:
    """The outcome of one decision, ready for metering: which tier and model, and why."""

    tier: str
    model: str
    rule: str
    reason: str

    def to_dict(self) -> dict[str, str]:
        return {"tier": self.tier, "model": self.model, "rule": self.rule, "reason": self.reason}


RuleLike = TieringRule | Condition


class TieringPolicy:
    """Tiers (name -> model), ordered rules (first match wins) and a default tier."""

    def __init__(
        self,
        tiers: Mapping[str, str],
        rules: Sequence[RuleLike] | None = None,
        default_tier: str = "cheap",
    ) -> None:
        if not isinstance(tiers, Mapping) or not tiers:
            raise ConfigError(
                "tiers must map at least one tier name to a model",
                key="tiers",
                expected='{"cheap": "<model>", "strong": "<model>"}',
            )
        for tier, model in tiers.items():
            if not isinstance(tier, str) or not tier or not isinstance(model, str) or not model:
                raise ConfigError(
                    f"tier {tier!r} -> {model!r} is not a tier name mapped to a model name",
                    key=f"tiers.{tier}",
                    expected="a non-empty string",
                )
        self._tiers: dict[str, str] = dict(tiers)
        if default_tier not in self._tiers:
            raise ConfigError(
                f"default tier {default_tier!r} is not one of the tiers {sorted(self._tiers)}",
                key="default_tier",
            )
        self._default_tier = default_tier
        using_defaults = rules is None
        self._rules: tuple[TieringRule, ...] = tuple(
            self._normalize(rule, index, using_defaults)
            for index, rule in enumerate(default_rules() if rules is None else rules)
        )

    def _normalize(self, rule: RuleLike, index: int, using_defaults: bool) -> TieringRule:
        key = f"rules[{index}]"
        if isinstance(rule, Condition):
            if rule.tier is None:
                raise ConfigError(
                    f"{rule!r} has no tier; bind one with .then('strong') or tier='strong'",
                    key=key,
                )
            rule = rule.then(rule.tier)
        if not isinstance(rule, TieringRule):
            raise ConfigError(
                f"{rule!r} is not a tiering rule",
                key=key,
                expected="a Condition with a tier, a Rule, a CallableRule, or an object with "
                "name and evaluate(features)",
            )
        for tier in getattr(rule, "tiers", ()):
            if tier not in self._tiers:
                hint = (
                    "; the default rules use tiers 'cheap' and 'strong': name your tiers so, "
                    "or pass rules=default_rules(cheap=..., strong=...)"
                    if using_defaults
                    else ""
                )
                raise ConfigError(
                    f"rule {rule.name!r} chooses tier {tier!r}, which is not one of the tiers "
                    f"{sorted(self._tiers)}{hint}",
                    key=f"{key}.tier",
                )
        return rule

    @property
    def tiers(self) -> dict[str, str]:
        """A copy of the tier -> model mapping."""
        return dict(self._tiers)

    @property
    def rules(self) -> tuple[TieringRule, ...]:
        return self._rules

    @property
    def default_tier(self) -> str:
        return self._default_tier

    def __repr__(self) -> str:
        names = [r.name for r in self._rules]
        return (
            f"TieringPolicy(tiers={self._tiers!r}, rules={names!r}, "
            f"default_tier={self._default_tier!r})"
        )

    def _decision(self, tier: str, rule: str, reason: str) -> TieringDecision:
        model = self._tiers.get(tier)
        if model is None:
            raise TieringError(f"{rule}: unknown tier {tier!r}; use one of {sorted(self._tiers)}")
        return TieringDecision(tier, model, rule, reason)

    def decide(self, params: Mapping[str, Any], tier_hint: str | None = None) -> TieringDecision:
        """Pick the tier and model for one chat-completion request.

        ``tier_hint`` (the caller's ``tier=``) wins over the rules. Raises :class:`TieringError`
        for an unknown tier, or when a user rule raises (the original error is chained).
        """
        if tier_hint is not None:
            return self._decision(tier_hint, "tier_hint", f"caller asked for tier {tier_hint!r}")
        features = RequestFeatures(params)
        for rule in self._rules:
            try:
                outcome = rule.evaluate(features)
            except TieringError:
                raise
            except Exception as exc:
                raise TieringError(
                    f"tiering rule {rule.name!r} raised {type(exc).__name__}: {exc}"
                ) from exc
            if outcome is not None:
                return self._decision(outcome[0], rule.name, outcome[1])
        return self._decision(
            self._default_tier, "default", f"no rule matched; default tier {self._default_tier!r}"
        )

    # ------------------------------------------------------------------ configuration

    @classmethod
    def from_config(
        cls, config: Mapping[str, Any], *, source: str = "<dict>", prefix: str = "tiering"
    ) -> TieringPolicy:
        """Build a policy from the mapping documented in the module docstring."""
        return _PolicyConfig(source, prefix).build(config)

    @classmethod
    def from_toml(cls, path: str | Path, *, table: str = "tiering") -> TieringPolicy:
        """Read ``[tiering]`` (or the root, when it has ``tiers``) of a TOML file."""
        source = str(path)
        try:
            with open(path, "rb") as fh:
                document = tomllib.load(fh)
        except OSError as exc:
            raise ConfigError(
                f"cannot read the file: {exc.strerror or exc}", source=source
            ) from exc
        except tomllib.TOMLDecodeError as exc:
            raise ConfigError(f"not valid TOML: {exc}", source=source) from exc
        if table in document:
            section = document[table]
            if not isinstance(section, Mapping):
                raise ConfigError("must be a table", source=source, key=table)
            return _PolicyConfig(source, table).build(section)
        if "tiers" in document:
            return _PolicyConfig(source, "").build(document)
        raise ConfigError(
            f"no [{table}] table (and no top-level `tiers`)",
            source=source,
            key=table,
            expected=f'[{table}.tiers] cheap = "<model>"',
        )


# --------------------------------------------------------------------------- config parsing

_TOP_KEYS = ("tiers", "default_tier", "rules", "include_default_rules", "defaults")
_DEFAULTS_KEYS = (
    "long_prompt_chars",
    "deep_conversation_messages",
    "reasoning_words",
    "simple_task_words",
)
_CONDITION_KEYS = (
    "has_tools",
    "has_response_format",
    "prompt_longer_than",
    "prompt_shorter_than",
    "keywords_any",
    "conversation_depth_at_least",
    "callable",
)
_RULE_KEYS = ("name", "tier", "keywords_scope", *_CONDITION_KEYS)


class _PolicyConfig:
    """Turns a config mapping into a policy, naming the exact key in every error."""

    def __init__(self, source: str, prefix: str) -> None:
        self.source = source
        self.prefix = prefix

    def key(self, key: str) -> str:
        if not self.prefix or not key:
            return self.prefix or key
        return f"{self.prefix}.{key}"

    def error(self, key: str, message: str, expected: str = "") -> ConfigError:
        return ConfigError(message, source=self.source, key=self.key(key), expected=expected)

    def _unknown(self, table: Mapping[str, Any], allowed: Sequence[str], where: str) -> None:
        for name in table:
            if name not in allowed:
                key = f"{where}.{name}" if where else str(name)
                raise self.error(key, "unknown key", expected="one of " + ", ".join(allowed))

    def _string(self, value: Any, key: str) -> str:
        if not isinstance(value, str) or not value:
            raise self.error(key, f"got {value!r}", expected="a non-empty string")
        return value

    def _int(self, value: Any, key: str, minimum: int) -> int:
        if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
            raise self.error(key, f"got {value!r}", expected=f"an integer >= {minimum}")
        return value

    def _bool(self, value: Any, key: str) -> bool:
        if not isinstance(value, bool):
            raise self.error(key, f"got {value!r}", expected="true or false")
        return value

    def _words(self, value: Any, key: str) -> list[str]:
        if (
            not isinstance(value, (list, tuple))
            or not value
            or not all(isinstance(w, str) and w.strip() for w in value)
        ):
            raise self.error(
                key, f"got {value!r}", expected="a non-empty list of non-empty strings"
            )
        return list(value)

    def _callable(self, value: Any, key: str) -> Callable[..., Any]:
        path = self._string(value, key)
        module_name, sep, attr = path.partition(":")
        if not sep:
            module_name, _, attr = path.rpartition(".")
        if not module_name or not attr:
            raise self.error(key, f"got {path!r}", expected="an import path 'package.module:name'")
        try:
            target: Any = importlib.import_module(module_name)
            for part in attr.split("."):
                target = getattr(target, part)
        except (ImportError, AttributeError) as exc:
            raise self.error(key, f"cannot import {path!r}: {type(exc).__name__}: {exc}") from exc
        if not callable(target):
            raise self.error(key, f"{path!r} is not callable")
        return target  # type: ignore[no-any-return]

    def build(self, config: Mapping[str, Any]) -> TieringPolicy:
        if not isinstance(config, Mapping):
            raise self.error("", f"got {type(config).__name__}", expected="a table/dict")
        self._unknown(config, _TOP_KEYS, "")
        tiers = config.get("tiers")
        if not isinstance(tiers, Mapping) or not tiers:
            raise self.error(
                "tiers", "missing or empty", expected='a table like {cheap = "<model>"}'
            )
        parsed_tiers = {
            self._string(tier, "tiers"): self._string(model, f"tiers.{tier}")
            for tier, model in tiers.items()
        }
        default_tier = self._string(config.get("default_tier", "cheap"), "default_tier")
        if default_tier not in parsed_tiers:
            raise self.error(
                "default_tier",
                f"{default_tier!r} is not one of the tiers",
                expected="one of " + ", ".join(sorted(parsed_tiers)),
            )

        user_rules: list[RuleLike] = []
        raw_rules = config.get("rules")
        if raw_rules is not None:
            if not isinstance(raw_rules, (list, tuple)):
                raise self.error("rules", f"got {type(raw_rules).__name__}", expected="a list")
            user_rules = [self._rule(raw, i, parsed_tiers) for i, raw in enumerate(raw_rules)]
        include_defaults = self._bool(
            config.get("include_default_rules", raw_rules is None), "include_default_rules"
        )
        defaults_table = config.get("defaults", {})
        if not isinstance(defaults_table, Mapping):
            raise self.error("defaults", "must be a table")
        self._unknown(defaults_table, _DEFAULTS_KEYS, "defaults")
        if defaults_table and not include_defaults:
            raise self.error(
                "defaults",
                "tunes the default rules, which are off",
                expected="include_default_rules = true, or no [defaults] table",
            )
        rules = list(user_rules)
        if include_defaults:
            for tier in ("cheap", "strong"):
                if tier not in parsed_tiers:
                    raise self.error(
                        "tiers",
                        f"the default rules need a {tier!r} tier",
                        expected="tiers named cheap and strong, or include_default_rules = false",
                    )
            kwargs: dict[str, Any] = {}
            for name in ("long_prompt_chars", "deep_conversation_messages"):
                if name in defaults_table:
                    kwargs[name] = self._int(defaults_table[name], f"defaults.{name}", 1)
            for name in ("reasoning_words", "simple_task_words"):
                if name in defaults_table:
                    kwargs[name] = self._words(defaults_table[name], f"defaults.{name}")
            rules.extend(default_rules(**kwargs))
        # Every tier was checked above, so the constructor's own checks cannot fail here.
        return TieringPolicy(parsed_tiers, rules, default_tier)

    def _rule(self, raw: Any, index: int, tiers: Mapping[str, str]) -> RuleLike:
        where = f"rules[{index}]"
        if not isinstance(raw, Mapping):
            raise self.error(where, f"got {type(raw).__name__}", expected="a table")
        self._unknown(raw, _RULE_KEYS, where)
        name = self._string(raw["name"], f"{where}.name") if "name" in raw else None
        tier = self._string(raw["tier"], f"{where}.tier") if "tier" in raw else None
        if tier is not None and tier not in tiers:
            raise self.error(
                f"{where}.tier",
                f"{tier!r} is not one of the tiers",
                expected="one of " + ", ".join(sorted(tiers)),
            )
        present = [k for k in raw if k in _CONDITION_KEYS]  # the user's order is the AND order
        if not present:
            raise self.error(
                where, "has no condition", expected="one or more of " + ", ".join(_CONDITION_KEYS)
            )
        if "keywords_scope" in raw and "keywords_any" not in raw:
            raise self.error(f"{where}.keywords_scope", "only applies with keywords_any")
        if present == ["callable"] and tier is None:
            fn = self._callable(raw["callable"], f"{where}.callable")
            return CallableRule(fn, name=name or getattr(fn, "__name__", "callable"))
        if tier is None:
            raise self.error(f"{where}.tier", "missing", expected="a tier name")

        conditions: list[Condition] = []
        for key in present:
            value = raw[key]
            full = f"{where}.{key}"
            if key == "has_tools":
                conditions.append(HasTools() if self._bool(value, full) else ~HasTools())
            elif key == "has_response_format":
                cond: Condition = HasResponseFormat()
                conditions.append(cond if self._bool(value, full) else ~cond)
            elif key == "prompt_longer_than":
                conditions.append(PromptLongerThan(self._int(value, full, 0)))
            elif key == "prompt_shorter_than":
                conditions.append(PromptShorterThan(self._int(value, full, 1)))
            elif key == "conversation_depth_at_least":
                conditions.append(ConversationDepthAtLeast(self._int(value, full, 1)))
            elif key == "keywords_any":
                scope = raw.get("keywords_scope", "last_user")
                if scope not in _SCOPES:
                    raise self.error(
                        f"{where}.keywords_scope", f"got {scope!r}", expected=" or ".join(_SCOPES)
                    )
                conditions.append(KeywordsAny(self._words(value, full), scope=scope))
            elif key == "callable":
                conditions.append(When(self._callable(value, full)))
        condition = conditions[0] if len(conditions) == 1 else AllOf(tuple(conditions))
        return condition.then(tier, name=name or where)
