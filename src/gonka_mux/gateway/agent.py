"""Agent extensions over HTTP: sessions, memory and background jobs with webhooks.

Every name a caller gives (a session id, a memory namespace) is scoped to its API key, and a job
can only be read by the key that submitted it, so tenants never see each other's data.

::

    GET        /v1/sessions                                 the key's session ids
    GET|DELETE /v1/sessions/{session_id}                    stored history / forget it
    GET        /v1/memory/{namespace}?limit=&offset=        list entries
    POST       /v1/memory/{namespace} {"text", "metadata"}  add (a key is generated)
    POST       /v1/memory/{namespace}/search {"query", "k", "filter"}   BM25, best first
    GET|PUT|DELETE /v1/memory/{namespace}/{key}             PUT {"text", "metadata"}
    POST       /v1/jobs {"request": {chat params}, "webhook_url", "webhook_secret"}
    GET        /v1/jobs/{job_id}
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any

from starlette.requests import Request
from starlette.responses import Response

from gonka_mux.webhooks import JobNotFoundError, generate_secret
from gonka_mux.webhooks.delivery import PrivateAddressError, check_webhook_url

from . import _http
from .errors import HTTPError

if TYPE_CHECKING:
    from .app import Gateway

__all__ = ["agent_routes"]

Handler = Callable[[Request], Awaitable[Response]]


def _not_configured(what: str) -> HTTPError:
    return HTTPError(501, f"{what} is not configured on this gateway.", code="not_configured")


def _check_webhook_host(url: str, allow_private: bool) -> None:
    """Refuse webhook targets on loopback/private addresses unless the operator allows them:
    otherwise any tenant could make the gateway POST into its own network. Literal addresses
    (in every form the OS resolver accepts) are refused here; DNS names are resolved and
    checked again at delivery, which connects to the address it checked."""
    try:
        check_webhook_url(url, allow_private=allow_private)
    except PrivateAddressError:
        raise HTTPError(
            400,
            "webhook_url points at a private or loopback address, which this gateway does not "
            "call (its operator can allow it with allow_private_webhooks = true).",
            code="invalid_value",
            param="webhook_url",
        ) from None
    except ValueError as exc:
        raise HTTPError(400, str(exc), code="invalid_value", param="webhook_url") from None


def _int_param(request: Request, name: str, default: int, low: int, high: int) -> int:
    raw = request.query_params.get(name)
    if raw is None or raw == "":
        return default
    try:
        value = int(raw)
    except ValueError:
        value = low - 1
    if not low <= value <= high:
        raise HTTPError(
            400,
            f"'{name}' must be an integer from {low} to {high}.",
            code="invalid_value",
            param=name,
        )
    return value


def _item(namespace: str, item: Any) -> dict[str, Any]:
    return {
        "namespace": namespace,
        "key": item.key,
        "text": item.text,
        "metadata": item.metadata,
        "created_at": item.created_at,
        "updated_at": item.updated_at,
    }


def agent_routes(g: Gateway) -> list[tuple[str, Handler, list[str]]]:
    def memory_store() -> Any:
        if g.services.memory is None:
            raise _not_configured("Memory")
        return g.services.memory

    async def memory_body(request: Request, allowed: set[str]) -> dict[str, Any]:
        body = await g.read_json(request)
        unknown = set(body) - allowed
        if unknown:
            name = sorted(unknown)[0]
            raise HTTPError(
                400,
                f"Unrecognized argument {name!r}; expected {', '.join(sorted(allowed))}.",
                param=name,
            )
        return body

    # -- sessions -------------------------------------------------------------------------
    def session_manager() -> Any:
        if g.services.sessions is None:
            raise _not_configured("Sessions")
        return g.services.sessions

    def session_id(request: Request) -> str:
        name = request.path_params["session_id"]
        if not _http.ID_RE.match(name):
            raise HTTPError(
                400,
                "A session id is 1-256 printable ASCII characters without spaces.",
                code="invalid_value",
                param="session_id",
            )
        return name

    async def session_list(request: Request) -> Response:
        key = await g.authenticate(request)
        prefix = g.scoped(key, "")
        ids = [s[len(prefix) :] for s in await session_manager().list() if s.startswith(prefix)]
        return _http.json_response({"object": "list", "data": sorted(ids)})

    async def session_get(request: Request) -> Response:
        key = await g.authenticate(request)
        name = session_id(request)
        messages = await session_manager().get(g.scoped(key, name))
        if messages is None:
            raise HTTPError(404, f"No session {name!r} for this API key.", code="not_found")
        return _http.json_response({"id": name, "object": "session", "messages": messages})

    async def session_delete(request: Request) -> Response:
        key = await g.authenticate(request)
        name = session_id(request)
        if not await session_manager().delete(g.scoped(key, name)):
            raise HTTPError(404, f"No session {name!r} for this API key.", code="not_found")
        return _http.json_response({"id": name, "object": "session", "deleted": True})

    # -- memory ---------------------------------------------------------------------------
    async def memory_list(request: Request) -> Response:
        key = await g.authenticate(request)
        store = memory_store()
        namespace = request.path_params["namespace"]
        limit = _int_param(request, "limit", 100, 1, 1000)
        offset = _int_param(request, "offset", 0, 0, 10**9)
        items = await store.alist(g.scoped(key, namespace), limit=limit, offset=offset)
        data = [_item(namespace, item) for item in items]
        return _http.json_response({"object": "list", "data": data})

    async def admit_write(key: Any) -> None:
        """A memory write is a request of the key: it counts against the key's rate limit."""
        limiter = g.services.limiter
        if limiter is None:
            return
        reservation = await limiter.acquire(key.id, tokens=0, tier=key.tier, max_wait=0)
        await reservation.asettle(0)

    def entry_size(body: dict[str, Any]) -> int:
        text = body.get("text")
        size = len(text.encode("utf-8")) if isinstance(text, str) else 0
        metadata = body.get("metadata")
        if metadata is not None:
            size += len(_http.dumps(metadata).encode("utf-8"))
        return size

    async def check_quota(key: Any, namespace: str, item: str | None, size: int) -> None:
        if size > g.max_memory_entry_bytes:
            raise HTTPError(
                413,
                f"A memory entry may hold at most {g.max_memory_entry_bytes} bytes of text and "
                f"metadata; this one has {size}. Split it into smaller entries.",
                code="memory_entry_too_large",
            )
        exclude = None if item is None else (namespace, item)
        used = await g.keys_io(g.keys.memory_used, key.id, exclude)
        if used + size > g.memory_quota_bytes:
            raise HTTPError(
                413,
                f"This API key's memory quota is full ({used} of {g.memory_quota_bytes} bytes "
                "used); delete entries (DELETE /v1/memory/{namespace}/{key}) or ask the "
                "operator for a larger memory_quota_bytes.",
                code="memory_quota_exceeded",
            )

    async def memory_add(request: Request) -> Response:
        key = await g.authenticate(request)
        store = memory_store()
        namespace = request.path_params["namespace"]
        body = await memory_body(request, {"text", "metadata"})
        size = entry_size(body)
        await check_quota(key, namespace, None, size)
        await admit_write(key)
        new_key = await store.aput(
            g.scoped(key, namespace), body.get("text"), None, body.get("metadata")
        )
        await g.keys_io(g.keys.memory_set, key.id, namespace, new_key, size)
        return _http.json_response({"namespace": namespace, "key": new_key}, 201)

    async def memory_put(request: Request) -> Response:
        key = await g.authenticate(request)
        store = memory_store()
        namespace, item_key = request.path_params["namespace"], request.path_params["key"]
        body = await memory_body(request, {"text", "metadata"})
        size = entry_size(body)
        await check_quota(key, namespace, item_key, size)
        await admit_write(key)
        await store.aput(g.scoped(key, namespace), body.get("text"), item_key, body.get("metadata"))
        await g.keys_io(g.keys.memory_set, key.id, namespace, item_key, size)
        return _http.json_response({"namespace": namespace, "key": item_key})

    async def memory_get(request: Request) -> Response:
        key = await g.authenticate(request)
        store = memory_store()
        namespace, item_key = request.path_params["namespace"], request.path_params["key"]
        item = await store.aget(g.scoped(key, namespace), item_key)
        if item is None:
            raise HTTPError(
                404, f"No memory entry {item_key!r} in {namespace!r}.", code="not_found"
            )
        return _http.json_response(_item(namespace, item))

    async def memory_delete(request: Request) -> Response:
        key = await g.authenticate(request)
        store = memory_store()
        namespace, item_key = request.path_params["namespace"], request.path_params["key"]
        if not await store.adelete(g.scoped(key, namespace), item_key):
            raise HTTPError(
                404, f"No memory entry {item_key!r} in {namespace!r}.", code="not_found"
            )
        await g.keys_io(g.keys.memory_forget, key.id, namespace, item_key)
        return _http.json_response({"namespace": namespace, "key": item_key, "deleted": True})

    async def memory_search(request: Request) -> Response:
        key = await g.authenticate(request)
        store = memory_store()
        namespace = request.path_params["namespace"]
        body = await memory_body(request, {"query", "k", "filter"})
        k = body.get("k", 5)
        if isinstance(k, bool) or not isinstance(k, int) or not 1 <= k <= 100:
            raise HTTPError(400, "'k' must be an integer from 1 to 100.", param="k")
        hits = await store.asearch(
            g.scoped(key, namespace), body.get("query"), k, body.get("filter")
        )
        data = [
            {"key": h.key, "text": h.text, "metadata": h.metadata, "score": h.score} for h in hits
        ]
        return _http.json_response({"object": "list", "data": data})

    # -- jobs -----------------------------------------------------------------------------
    async def submit_job(request: Request) -> Response:
        key = await g.authenticate(request)
        if not g.services.has_jobs:
            raise _not_configured("Background jobs (webhooks)")
        body = await g.read_json(request)
        unknown = set(body) - {"request", "webhook_url", "webhook_secret"}
        if unknown:
            name = sorted(unknown)[0]
            raise HTTPError(
                400,
                f"Unrecognized argument {name!r}: a job takes 'request' (chat completion "
                "parameters), 'webhook_url' and 'webhook_secret'.",
                param=name,
            )
        params = body.get("request")
        if not isinstance(params, dict):
            raise HTTPError(
                400,
                "'request' must be an object with the chat completion parameters.",
                code="missing_required_parameter",
                param="request",
            )
        _http.reject_forbidden(params)
        _http.require_model(params)
        _http.check_messages(params)
        if params.get("stream"):
            raise HTTPError(400, "A job cannot stream; drop 'stream'.", param="request.stream")
        webhook_url = _http.optional_str(body, "webhook_url")
        secret = _http.optional_str(body, "webhook_secret")
        generated = None
        if webhook_url is not None:
            _check_webhook_host(webhook_url, g.allow_private_webhooks)
            if secret is None:
                secret = generated = generate_secret()
        kwargs = g._mux_kwargs(request, key, params)
        job = await g.mux.submit(webhook_url=webhook_url, webhook_secret=secret, **params, **kwargs)
        payload = job.to_public_dict()
        if generated is not None:
            payload["webhook_secret"] = generated  # shown once: verify deliveries with it
        return _http.json_response(payload, 202)

    async def get_job(request: Request) -> Response:
        key = await g.authenticate(request)
        if not g.services.has_jobs:
            raise _not_configured("Background jobs (webhooks)")
        job_id = request.path_params["job_id"]
        runner = await g.services.job_runner()
        try:
            job = runner.get(job_id)
        except JobNotFoundError:
            job = None
        # A job is visible to the key that submitted it only (its params hold the caller).
        if job is None or job.params.get("caller") != key.id:
            raise HTTPError(404, f"No job {job_id!r} for this API key.", code="job_not_found")
        return _http.json_response(job.to_public_dict())

    return [
        ("/v1/sessions", session_list, ["GET"]),
        ("/v1/sessions/{session_id:path}", session_get, ["GET"]),
        ("/v1/sessions/{session_id:path}", session_delete, ["DELETE"]),
        ("/v1/memory/{namespace}", memory_list, ["GET"]),
        ("/v1/memory/{namespace}", memory_add, ["POST"]),
        ("/v1/memory/{namespace}/search", memory_search, ["POST"]),
        ("/v1/memory/{namespace}/{key:path}", memory_get, ["GET"]),
        ("/v1/memory/{namespace}/{key:path}", memory_put, ["PUT"]),
        ("/v1/memory/{namespace}/{key:path}", memory_delete, ["DELETE"]),
        ("/v1/jobs", submit_job, ["POST"]),
        ("/v1/jobs/{job_id}", get_job, ["GET"]),
    ]
