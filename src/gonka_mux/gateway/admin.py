"""The admin API (its own key): usage statistics, API keys, endpoint and model status.

::

    GET    /admin/usage?group_by=key|session|model|endpoint|tier|status|period
                       &period=hour&since=24h&until=&key=&model=&session_id=&endpoint=
    GET    /admin/keys              POST /admin/keys {"name", "tier"} (the key is shown once)
    GET    /admin/keys/{id}         PATCH {"tier"}         DELETE (revoke)
    GET    /admin/status            endpoints (health, cooldowns), models, limits, epoch
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any

from starlette.requests import Request
from starlette.responses import Response

from . import _http
from .errors import HTTPError
from .keys import KeyNotFoundError, KeyStoreError
from .usage import usage_report

if TYPE_CHECKING:
    from .app import Gateway

__all__ = ["admin_routes"]

_FILTERS = ("key", "model", "session_id", "endpoint", "tier", "status")


def admin_routes(g: Gateway) -> list[tuple[str, Callable[[Request], Awaitable[Response]], list]]:
    def admin(handler: Callable[[Request], Awaitable[Response]]) -> Any:
        async def run(request: Request) -> Response:
            g.authenticate_admin(request)
            return await handler(request)

        return run

    def check_tier(tier: Any) -> str:
        if not isinstance(tier, str) or not tier:
            raise HTTPError(400, "'tier' must be a non-empty string.", param="tier")
        tiers = g.services.tiers()
        if tiers is not None and tier not in tiers:
            raise HTTPError(
                400,
                f"Unknown tier {tier!r}; the limits configuration defines: {', '.join(tiers)}.",
                code="invalid_value",
                param="tier",
            )
        return tier

    async def key_or_404(key_id: str) -> Any:
        try:
            return await g.keys_io(g.keys.get, key_id)
        except KeyNotFoundError:
            raise HTTPError(404, f"No API key with id {key_id!r}.", code="key_not_found") from None

    async def list_keys(request: Request) -> Response:
        revoked = request.query_params.get("revoked", "true") != "false"
        keys = await g.keys_io(g.keys.list, include_revoked=revoked)
        return _http.json_response({"object": "list", "data": [k.to_dict() for k in keys]})

    async def create_key(request: Request) -> Response:
        body = await _http.read_json(request, 64 * 1024)
        name = body.get("name", "")
        tier = check_tier(body.get("tier", g.services.default_tier()))
        try:
            record, plaintext = await g.keys_io(g.keys.create, name=name, tier=tier)
        except KeyStoreError as exc:
            raise HTTPError(400, str(exc), code="invalid_value") from None
        return _http.json_response({**record.to_dict(), "key": plaintext}, 201)

    async def get_key(request: Request) -> Response:
        return _http.json_response((await key_or_404(request.path_params["key_id"])).to_dict())

    async def update_key(request: Request) -> Response:
        key_id = request.path_params["key_id"]
        await key_or_404(key_id)
        body = await _http.read_json(request, 64 * 1024)
        unknown = set(body) - {"tier"}
        if unknown:
            raise HTTPError(
                400,
                f"Only 'tier' can be changed; unexpected: {', '.join(sorted(unknown))}.",
                param=sorted(unknown)[0],
            )
        record = await g.keys_io(g.keys.set_tier, key_id, check_tier(body.get("tier")))
        return _http.json_response(record.to_dict())

    async def revoke_key(request: Request) -> Response:
        key_id = request.path_params["key_id"]
        await key_or_404(key_id)
        return _http.json_response((await g.keys_io(g.keys.revoke, key_id)).to_dict())

    async def usage(request: Request) -> Response:
        meter = g.services.meter
        if meter is None:
            raise HTTPError(
                501, "Usage metering is not configured on this gateway.", code="not_configured"
            )
        params = request.query_params
        report = await usage_report(
            meter,
            group_by=params.get("group_by", "key"),
            period=params.get("period", "hour"),
            since=params.get("since"),
            until=params.get("until"),
            filters={name: params[name] for name in _FILTERS if params.get(name)},
        )
        return _http.json_response(report)

    async def status(request: Request) -> Response:
        stats = g.mux.stats()
        limiter = g.services.limiter
        limits = None
        if limiter is not None:
            limits = {
                name: tier.limit.describe() for name, tier in sorted(limiter.config.tiers.items())
            }
        epoch = None
        epoch_status = getattr(g.mux, "epoch_status", None)
        if callable(epoch_status):
            epoch = epoch_status()
        keys = await g.keys_io(g.keys.list)
        active = sum(k.active for k in keys)
        return _http.json_response(
            {
                **stats,
                "limits": limits,
                # which backend counts (mux.stats()["limits"]; "local-fallback": Redis is away)
                "limits_backend": stats.get("limits"),
                "epoch": epoch,
                "keys": {"active": active, "revoked": len(keys) - active},
            }
        )

    return [
        ("/admin/keys", admin(list_keys), ["GET"]),
        ("/admin/keys", admin(create_key), ["POST"]),
        ("/admin/keys/{key_id}", admin(get_key), ["GET"]),
        ("/admin/keys/{key_id}", admin(update_key), ["PATCH"]),
        ("/admin/keys/{key_id}", admin(revoke_key), ["DELETE"]),
        ("/admin/usage", admin(usage), ["GET"]),
        ("/admin/status", admin(status), ["GET"]),
    ]
