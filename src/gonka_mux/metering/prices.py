"""Per-model prices, for the estimated cost of each usage record."""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, NoReturn

from gonka_mux._exceptions import ConfigError

__all__ = ["ModelPrice", "Prices"]


@dataclass(frozen=True)
class ModelPrice:
    """Price per one million prompt and completion tokens (any currency; the reports say USD)."""

    prompt: float
    completion: float

    def cost(self, prompt_tokens: int, completion_tokens: int) -> float:
        return (prompt_tokens * self.prompt + completion_tokens * self.completion) / 1_000_000


@dataclass(frozen=True)
class Prices:
    """Model name -> :class:`ModelPrice`; ``"*"`` prices every model not listed.

    Reasoning tokens are part of the completion tokens (as OpenAI reports them) and are priced
    with them.
    """

    models: Mapping[str, ModelPrice]

    @classmethod
    def from_dict(cls, data: Mapping[str, Any], *, path: str = "prices") -> Prices:
        """``{"model": {"prompt": per_1M, "completion": per_1M}, "*": {...}}``."""
        if not isinstance(data, Mapping):
            _error(f"must be a table of model prices, got {type(data).__name__}", path)
        models = {}
        for model, spec in data.items():
            where = f"{path}.{model}"
            if not isinstance(spec, Mapping):
                _error(f"must be a table, got {spec!r}", where)
            unknown = set(spec) - {"prompt", "completion"}
            if unknown:
                _error(f"unknown field(s) {', '.join(sorted(unknown))}", where)
            models[str(model)] = ModelPrice(
                prompt=_price(spec.get("prompt"), f"{where}.prompt"),
                completion=_price(spec.get("completion"), f"{where}.completion"),
            )
        return cls(models)

    def get(self, model: str) -> ModelPrice | None:
        return self.models.get(model) or self.models.get("*")

    def cost(self, model: str, prompt_tokens: int, completion_tokens: int) -> float | None:
        """The estimated cost, or ``None`` when the model has no price."""
        price = self.get(model)
        return None if price is None else price.cost(prompt_tokens, completion_tokens)


def _price(value: Any, key: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        _error(f"missing or not a number: {value!r}", key)
    if not math.isfinite(value) or value < 0:
        _error(f"must be a non-negative price per 1M tokens, got {value!r}", key)
    return float(value)


def _error(message: str, key: str) -> NoReturn:
    raise ConfigError(message, key=key, source="<dict>", expected="{prompt = N, completion = N}")
