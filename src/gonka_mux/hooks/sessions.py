"""Server-side sessions for ``create(..., session_id=...)``.

Before: the stored history (trimmed to the model's context window) is prepended to the request.
After: the new request messages and the reply are appended, for streams once the stream has
completed. With ``mux_metadata={"session_mode": "affinity"}`` (what the framework adapters and
the gateway send for clients that resend the whole conversation themselves) the session id is
only a metering and affinity key: nothing is prepended or stored.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .._core import RequestContext
    from ..sessions import SessionManager

__all__ = ["SessionsHook"]


class SessionsHook:
    def __init__(self, manager: SessionManager) -> None:
        self.manager = manager
        self._cleanup_started = False

    async def before(self, ctx: RequestContext) -> None:
        sid = ctx.options.session_id
        if not sid or ctx.kind != "chat":
            return
        if not self._cleanup_started:  # the TTL sweeper needs the running loop
            self._cleanup_started = True
            self.manager.start()
        metadata = ctx.options.metadata or {}
        if metadata.get("session_mode", "history") == "affinity":
            return
        params = ctx.params
        turn = await self.manager.prepare(
            sid,
            params.get("messages") or [],
            str(ctx.model),
            max_tokens=params.get("max_completion_tokens") or params.get("max_tokens"),
            tools=params.get("tools"),
        )
        ctx.params = {**params, "messages": turn.messages}
        ctx.extras["session_turn"] = turn

    async def after(self, ctx: RequestContext) -> None:
        turn = ctx.extras.get("session_turn")
        if turn is None or ctx.status != "ok":
            return  # a failed, cancelled or unfinished turn stores nothing
        if ctx.stream:
            reply: Any = ctx.extras.get("stream_message")
        else:
            choices = getattr(ctx.response, "choices", None)
            if not choices:
                return
            reply = choices[0].message.model_dump(exclude_none=True)
        if reply:
            await self.manager.commit(turn, reply)
