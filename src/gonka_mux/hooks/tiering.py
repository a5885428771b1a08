"""Run the tiering policy for ``model="auto"`` or a ``tier=`` hint."""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from .._core import RequestContext
    from ..tiering import TieringPolicy

__all__ = ["TieringHook"]


class TieringHook:
    def __init__(self, policy: TieringPolicy) -> None:
        from ..tiering import AUTO_MODEL

        self.policy = policy
        self._auto = AUTO_MODEL

    async def before(self, ctx: RequestContext) -> None:
        hint = ctx.options.tier
        if ctx.model != self._auto and hint is None:
            return
        decision = self.policy.decide(ctx.params, hint)
        ctx.model = decision.model
        ctx.params = {**ctx.params, "model": decision.model}
        ctx.extras["tiering"] = decision

    async def after(self, ctx: RequestContext) -> None:
        return None
