"""The gateway's OpenAPI 3.1 document (served at ``/openapi.json``).

Written by hand, not generated: it documents exactly what the handlers check, and the fuzz tests
(schemathesis) drive the gateway from it, so a route or a check that drifts from it fails there.
OpenAI's request bodies allow fields beyond the ones listed (``additionalProperties``): they are
relayed to the endpoint as they are.
"""

from __future__ import annotations

from typing import Any

from gonka_mux import __version__

__all__ = ["openapi_document"]


def _ref(name: str) -> dict[str, str]:
    return {"$ref": f"#/components/schemas/{name}"}


def _json(schema: dict[str, Any]) -> dict[str, Any]:
    return {"application/json": {"schema": schema}}


def _error(description: str) -> dict[str, Any]:
    return {"description": description, "content": _json(_ref("Error"))}


_ERRORS = {
    "400": _error("Bad input"),
    "401": _error("Missing or invalid API key"),
    "413": _error("Request body too large"),
}
_RATE = {
    "429": {
        "description": "Rate limit of the key's tier (or of every endpoint) reached",
        "headers": {"Retry-After": {"schema": {"type": "string"}}},
        "content": _json(_ref("Error")),
    }
}
_UPSTREAM = {
    "404": _error("Unknown model"),
    "422": _error("Rejected by the endpoint"),
    "502": _error("An endpoint failed"),
    "503": _error("No endpoint available"),
    "504": _error("Deadline exceeded"),
}
_ADMIN_ERRORS = {
    "400": _error("Bad input"),
    "401": _error("Missing or invalid admin key"),
    "403": _error("Admin API disabled"),
    "404": _error("Not found"),
    "413": _error("Request body too large"),
}

_SESSION_HEADER = {
    "name": "X-Session-Id",
    "in": "header",
    "required": False,
    "description": "Server-side session id (also accepted as the body field `session_id`).",
    "schema": {"type": "string", "pattern": "^[!-~]{1,256}$"},
}


def _path_param(name: str, description: str) -> dict[str, Any]:
    return {
        "name": name,
        "in": "path",
        "required": True,
        "description": description,
        "schema": {"type": "string", "minLength": 1},
    }


_TOKEN = {"type": "integer", "minimum": 0}

_SCHEMAS: dict[str, Any] = {
    "TextOrTokens": {
        "anyOf": [
            {"type": "string"},
            {"type": "array", "minItems": 1, "items": {"type": "string"}},
            {"type": "array", "minItems": 1, "items": _TOKEN},
            {
                "type": "array",
                "minItems": 1,
                "items": {"type": "array", "minItems": 1, "items": _TOKEN},
            },
        ]
    },
    "Error": {
        "type": "object",
        "required": ["error"],
        "properties": {
            "error": {
                "type": "object",
                "required": ["message", "type"],
                "properties": {
                    "message": {"type": "string"},
                    "type": {"type": "string"},
                    "param": {"type": ["string", "null"]},
                    "code": {"type": ["string", "null"]},
                },
            }
        },
    },
    "Message": {
        "type": "object",
        "required": ["role"],
        "properties": {
            "role": {
                "type": "string",
                "enum": ["system", "developer", "user", "assistant", "tool"],
            },
            "content": {
                "anyOf": [
                    {"type": "string"},
                    {"type": "array", "items": {"type": "object"}},
                    {"type": "null"},
                ]
            },
            "name": {"type": "string"},
            "tool_calls": {"type": "array", "items": {"type": "object"}},
            "tool_call_id": {"type": "string"},
        },
    },
    "ChatCompletionRequest": {
        "type": "object",
        "required": ["model", "messages"],
        "properties": {
            "model": {"type": "string", "minLength": 1},
            "messages": {"type": "array", "minItems": 1, "items": _ref("Message")},
            "stream": {"type": "boolean"},
            "stream_options": {
                "type": "object",
                "properties": {"include_usage": {"type": "boolean"}},
            },
            "tools": {"type": "array", "items": {"type": "object"}},
            "tool_choice": {"anyOf": [{"type": "string"}, {"type": "object"}]},
            "temperature": {"type": "number", "minimum": 0, "maximum": 2},
            "top_p": {"type": "number", "minimum": 0, "maximum": 1},
            "max_tokens": {"type": "integer", "minimum": 1},
            "max_completion_tokens": {"type": "integer", "minimum": 1},
            "n": {"type": "integer", "minimum": 1, "maximum": 8},
            "stop": {"anyOf": [{"type": "string"}, {"type": "array", "items": {"type": "string"}}]},
            "reasoning_effort": {"type": "string"},
            "prompt_cache_key": {
                "type": "string",
                "description": "Used as the session id when none is given (OpenClaw sends its "
                "session this way); such a session routes and meters, with no stored history "
                "prepended.",
            },
            "session_id": {"type": "string", "pattern": "^[!-~]{1,256}$"},
            "tier": {
                "type": "string",
                "description": "Model-tiering hint (e.g. 'cheap', 'strong') for model 'auto'.",
            },
        },
        "additionalProperties": True,
    },
    "CompletionRequest": {
        "type": "object",
        "required": ["model", "prompt"],
        "properties": {
            "model": {"type": "string", "minLength": 1},
            "prompt": _ref("TextOrTokens"),
            "stream": {"type": "boolean"},
            "stream_options": {"type": "object"},
            "max_tokens": {"type": "integer", "minimum": 1},
            "session_id": {"type": "string", "pattern": "^[!-~]{1,256}$"},
        },
        "additionalProperties": True,
    },
    "EmbeddingRequest": {
        "type": "object",
        "required": ["model", "input"],
        "properties": {
            "model": {"type": "string", "minLength": 1},
            "input": _ref("TextOrTokens"),
            "dimensions": {"type": "integer", "minimum": 1},
            "encoding_format": {"type": "string", "enum": ["float", "base64"]},
        },
        "additionalProperties": True,
    },
    "ChatCompletion": {
        "type": "object",
        "required": ["id", "object", "choices", "model"],
        "properties": {
            "id": {"type": "string"},
            "object": {"const": "chat.completion"},
            "model": {"type": "string"},
            "choices": {"type": "array", "items": {"type": "object"}},
            "usage": {"type": ["object", "null"]},
        },
    },
    "Completion": {"type": "object", "required": ["id", "choices"]},
    "EmbeddingList": {"type": "object", "required": ["data"]},
    "Model": {
        "type": "object",
        "required": ["id", "object"],
        "properties": {
            "id": {"type": "string"},
            "object": {"const": "model"},
            "owned_by": {"type": "string"},
        },
    },
    "ModelList": {
        "type": "object",
        "required": ["object", "data"],
        "properties": {
            "object": {"const": "list"},
            "data": {"type": "array", "items": _ref("Model")},
        },
    },
    "Health": {
        "type": "object",
        "required": ["status", "endpoints"],
        "properties": {
            "status": {"type": "string", "enum": ["ok", "degraded", "unavailable"]},
            "endpoints": {"type": "object"},
            "models": {"type": "array", "items": {"type": "string"}},
            "limits": {
                "type": "object",
                "description": "Which rate-limit backend counts; backend 'local-fallback' "
                "(status 'degraded') while a shared one such as Redis is away.",
            },
        },
    },
    "Session": {
        "type": "object",
        "required": ["id", "messages"],
        "properties": {"id": {"type": "string"}, "messages": {"type": "array"}},
    },
    "MemoryWrite": {
        "type": "object",
        "required": ["text"],
        "properties": {
            "text": {"type": "string"},
            "metadata": {
                "type": "object",
                "description": "Scalar values; search can filter on them.",
            },
        },
        "additionalProperties": False,
    },
    "MemoryItem": {
        "type": "object",
        "required": ["namespace", "key", "text"],
        "properties": {
            "namespace": {"type": "string"},
            "key": {"type": "string"},
            "text": {"type": "string"},
            "metadata": {"type": "object"},
            "created_at": {"type": "number"},
            "updated_at": {"type": "number"},
        },
    },
    "MemorySearch": {
        "type": "object",
        "required": ["query"],
        "properties": {
            "query": {"type": "string"},
            "k": {"type": "integer", "minimum": 1, "maximum": 100},
            "filter": {"type": "object"},
        },
        "additionalProperties": False,
    },
    "JobRequest": {
        "type": "object",
        "required": ["request"],
        "properties": {
            "request": _ref("ChatCompletionRequest"),
            "webhook_url": {"type": "string", "format": "uri"},
            "webhook_secret": {"type": "string", "minLength": 1},
        },
        "additionalProperties": False,
    },
    "Job": {
        "type": "object",
        "required": ["id", "status"],
        "properties": {
            "id": {"type": "string"},
            "status": {"type": "string", "enum": ["queued", "running", "succeeded", "failed"]},
            "result": {"type": ["object", "null"]},
            "error": {"type": ["string", "null"]},
            "webhook_secret": {"type": "string"},
        },
    },
    "ApiKey": {
        "type": "object",
        "required": ["id", "name", "tier", "active"],
        "properties": {
            "id": {"type": "string"},
            "name": {"type": "string"},
            "tier": {"type": "string"},
            "hint": {"type": "string"},
            "active": {"type": "boolean"},
            "created_at": {"type": "number"},
            "revoked_at": {"type": ["number", "null"]},
            "key": {"type": "string", "description": "The key itself; returned once, on create."},
        },
    },
    "KeyCreate": {
        "type": "object",
        "properties": {"name": {"type": "string", "maxLength": 200}, "tier": {"type": "string"}},
    },
    "KeyUpdate": {
        "type": "object",
        "required": ["tier"],
        "properties": {"tier": {"type": "string"}},
        "additionalProperties": False,
    },
    "UsageReport": {
        "type": "object",
        "required": ["group_by", "totals", "data"],
        "properties": {
            "group_by": {"type": "string"},
            "totals": {"type": "object"},
            "data": {"type": "array", "items": {"type": "object"}},
        },
    },
}


def _op(
    summary: str,
    ok: dict[str, Any],
    errors: dict[str, Any],
    *,
    body: str | None = None,
    params: list[dict[str, Any]] | None = None,
    public: bool = False,
    admin: bool = False,
    ok_status: str = "200",
) -> dict[str, Any]:
    op: dict[str, Any] = {"summary": summary, "responses": {ok_status: ok, **errors}}
    if body is not None:
        op["requestBody"] = {"required": True, "content": _json(_ref(body))}
    if params:
        op["parameters"] = params
    if public:
        op["security"] = []
    elif admin:
        op["security"] = [{"adminKey": []}]
    return op


def _ok(description: str, schema: str | dict[str, Any]) -> dict[str, Any]:
    s = _ref(schema) if isinstance(schema, str) else schema
    return {"description": description, "content": _json(s)}


def _streamable(description: str, schema: str) -> dict[str, Any]:
    return {
        "description": description + " (text/event-stream when `stream` is true)",
        "content": {
            "application/json": {"schema": _ref(schema)},
            # Each event: `data: <chunk JSON>`, and `data: [DONE]` last (an error object
            # instead when the stream breaks after it started).
            "text/event-stream": {
                "itemSchema": {
                    "type": "object",
                    "required": ["data"],
                    "properties": {"data": {"type": "string"}},
                }
            },
        },
    }


def _not_configured() -> dict[str, Any]:
    return {"501": _error("The service is not configured on this gateway")}


def openapi_document() -> dict[str, Any]:
    """The OpenAPI 3.1 description of every route the gateway serves."""
    api = {**_ERRORS, **_RATE, **_UPSTREAM}
    ns = _path_param("namespace", "Memory namespace (scoped to the API key)")
    mkey = _path_param("key", "Memory key")
    sid = {
        **_path_param("session_id", "Session id (scoped to the API key)"),
        "schema": {"type": "string", "pattern": "^[!-~]{1,256}$"},
    }
    key_id = _path_param("key_id", "API key id")
    usage_params = [
        {
            "name": "group_by",
            "in": "query",
            "schema": {
                "type": "string",
                "enum": ["key", "session", "model", "endpoint", "tier", "status", "period"],
            },
        },
        {
            "name": "period",
            "in": "query",
            "description": "minute, hour, day or a duration such as 15m",
            "schema": {"type": "string"},
        },
        {"name": "since", "in": "query", "schema": {"type": "string"}},
        {"name": "until", "in": "query", "schema": {"type": "string"}},
        {"name": "key", "in": "query", "schema": {"type": "string"}},
        {"name": "model", "in": "query", "schema": {"type": "string"}},
        {"name": "session_id", "in": "query", "schema": {"type": "string"}},
        {"name": "endpoint", "in": "query", "schema": {"type": "string"}},
        {"name": "tier", "in": "query", "schema": {"type": "string"}},
        {"name": "status", "in": "query", "schema": {"type": "string"}},
    ]
    paths: dict[str, Any] = {
        "/health": {
            "get": _op(
                "Liveness and endpoint availability",
                _ok("At least one endpoint is available", "Health"),
                {"503": _ok("No endpoint is available", "Health")},
                public=True,
            )
        },
        "/openapi.json": {
            "get": _op(
                "This document", _ok("OpenAPI document", {"type": "object"}), {}, public=True
            )
        },
        "/v1/models": {
            "get": _op(
                "Models served by any endpoint, and aliases",
                _ok("Model list", "ModelList"),
                {"401": _ERRORS["401"]},
            )
        },
        "/v1/models/{model}": {
            "get": _op(
                "One model",
                _ok("The model", "Model"),
                {"401": _ERRORS["401"], "404": _error("Unknown model")},
                params=[_path_param("model", "Model id")],
            )
        },
        "/v1/chat/completions": {
            "post": _op(
                "Chat completion (JSON or SSE); tools and reasoning are passed through",
                _streamable("The completion", "ChatCompletion"),
                api,
                body="ChatCompletionRequest",
                params=[_SESSION_HEADER],
            )
        },
        "/v1/completions": {
            "post": _op(
                "Legacy text completion (JSON or SSE)",
                _streamable("The completion", "Completion"),
                api,
                body="CompletionRequest",
                params=[_SESSION_HEADER],
            )
        },
        "/v1/embeddings": {
            "post": _op(
                "Embeddings",
                _ok("The embeddings", "EmbeddingList"),
                api,
                body="EmbeddingRequest",
            )
        },
        "/v1/sessions": {
            "get": _op(
                "The ids of this key's live sessions",
                _ok("Session ids", {"type": "object"}),
                {"401": _ERRORS["401"], **_not_configured()},
            )
        },
        "/v1/sessions/{session_id}": {
            "get": _op(
                "A session's stored history",
                _ok("The session", "Session"),
                {**_ERRORS, "404": _error("No such session"), **_not_configured()},
                params=[sid],
            ),
            "delete": _op(
                "Forget a session",
                _ok("Deleted", {"type": "object"}),
                {**_ERRORS, "404": _error("No such session"), **_not_configured()},
                params=[sid],
            ),
        },
        "/v1/memory/{namespace}": {
            "get": _op(
                "List a namespace's entries, oldest first",
                _ok("Entries", {"type": "object"}),
                {**_ERRORS, **_not_configured()},
                params=[
                    ns,
                    {
                        "name": "limit",
                        "in": "query",
                        "schema": {"type": "integer", "minimum": 1, "maximum": 1000},
                    },
                    {"name": "offset", "in": "query", "schema": {"type": "integer", "minimum": 0}},
                ],
            ),
            "post": _op(
                "Add an entry under a generated key",
                _ok("Stored", {"type": "object"}),
                {**_ERRORS, **_not_configured()},
                body="MemoryWrite",
                params=[ns],
                ok_status="201",
            ),
        },
        "/v1/memory/{namespace}/search": {
            "post": _op(
                "Full-text search (BM25) over a namespace, best first",
                _ok("Hits", {"type": "object"}),
                {**_ERRORS, **_not_configured()},
                body="MemorySearch",
                params=[ns],
            )
        },
        "/v1/memory/{namespace}/{key}": {
            "get": _op(
                "Read an entry",
                _ok("The entry", "MemoryItem"),
                {**_ERRORS, "404": _error("No such entry"), **_not_configured()},
                params=[ns, mkey],
            ),
            "put": _op(
                "Write an entry (replacing any with that key)",
                _ok("Stored", {"type": "object"}),
                {**_ERRORS, **_not_configured()},
                body="MemoryWrite",
                params=[ns, mkey],
            ),
            "delete": _op(
                "Delete an entry",
                _ok("Deleted", {"type": "object"}),
                {**_ERRORS, "404": _error("No such entry"), **_not_configured()},
                params=[ns, mkey],
            ),
        },
        "/v1/jobs": {
            "post": _op(
                "Run a chat completion in the background; a signed webhook announces the result",
                _ok("Accepted", "Job"),
                {**_ERRORS, **_not_configured()},
                body="JobRequest",
                ok_status="202",
            )
        },
        "/v1/jobs/{job_id}": {
            "get": _op(
                "A job's state and result",
                _ok("The job", "Job"),
                {**_ERRORS, "404": _error("No such job for this key"), **_not_configured()},
                params=[_path_param("job_id", "Job id")],
            )
        },
        "/admin/keys": {
            "get": _op(
                "List API keys",
                _ok("Keys", {"type": "object"}),
                _ADMIN_ERRORS,
                admin=True,
                params=[{"name": "revoked", "in": "query", "schema": {"enum": ["true", "false"]}}],
            ),
            "post": _op(
                "Create an API key (the key is in the answer, once)",
                _ok("The new key", "ApiKey"),
                _ADMIN_ERRORS,
                body="KeyCreate",
                admin=True,
                ok_status="201",
            ),
        },
        "/admin/keys/{key_id}": {
            "get": _op(
                "One key", _ok("The key", "ApiKey"), _ADMIN_ERRORS, params=[key_id], admin=True
            ),
            "patch": _op(
                "Change a key's tier",
                _ok("The key", "ApiKey"),
                _ADMIN_ERRORS,
                body="KeyUpdate",
                params=[key_id],
                admin=True,
            ),
            "delete": _op(
                "Revoke a key", _ok("The key", "ApiKey"), _ADMIN_ERRORS, params=[key_id], admin=True
            ),
        },
        "/admin/usage": {
            "get": _op(
                "Usage by key, session, model, endpoint or period",
                _ok("The report", "UsageReport"),
                {**_ADMIN_ERRORS, **_not_configured()},
                params=usage_params,
                admin=True,
            )
        },
        "/admin/status": {
            "get": _op(
                "Endpoints (health, cooldowns), models, limits, epoch",
                _ok("Status", {"type": "object"}),
                _ADMIN_ERRORS,
                admin=True,
            )
        },
    }
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "gonka_mux gateway",
            "version": __version__,
            "description": "OpenAI-compatible API over a gonka_mux Multiplexer, with sessions, "
            "memory, background jobs and an admin API. Errors use OpenAI's error format.",
        },
        "paths": paths,
        "components": {
            "schemas": _SCHEMAS,
            "securitySchemes": {
                "apiKey": {"type": "http", "scheme": "bearer"},
                "adminKey": {"type": "http", "scheme": "bearer"},
            },
        },
        "security": [{"apiKey": []}],
    }
