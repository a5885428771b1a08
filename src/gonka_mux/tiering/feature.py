"""Tiering as a Multiplexer feature: the ``[tiering]`` section and the hook that picks the model
for ``model="auto"`` (or a ``tier=`` hint) before anything else runs."""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Any

from ..features import ORDER_TIERING, Feature, Slot, register_feature
from .policy import AUTO_MODEL, TieringDecision, TieringPolicy

__all__ = ["TIERING_DECISION", "TieringFeature"]

#: the decision taken for a request (metering records its tier and reason)
TIERING_DECISION: Slot[TieringDecision] = Slot("tiering.decision")


@register_feature
class TieringFeature(Feature):
    name = "tiering"
    sections = ("tiering",)
    order = ORDER_TIERING  # first: it picks the model the others work with

    def __init__(self, policy: TieringPolicy | Mapping[str, Any] | str | os.PathLike[str]):
        if isinstance(policy, Mapping):
            policy = TieringPolicy.from_config(policy)
        elif isinstance(policy, (str, os.PathLike)):
            policy = TieringPolicy.from_toml(policy)
        self.policy = policy

    @classmethod
    def from_config(cls, data: Mapping[str, Any], source: str) -> TieringFeature | None:
        if "tiering" not in data:
            return None
        return cls(TieringPolicy.from_config(data["tiering"], source=source))

    def install(self, mux: Any) -> TieringPolicy:
        mux.add_feature(self)
        return self.policy

    async def before(self, ctx: Any) -> None:
        hint = ctx.options.tier
        if ctx.model != AUTO_MODEL and hint is None:
            return
        decision = self.policy.decide(ctx.params, hint)
        ctx.model = decision.model
        ctx.params = {**ctx.params, "model": decision.model}
        ctx.set(TIERING_DECISION, decision)
