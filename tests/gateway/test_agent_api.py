"""Agent extensions over HTTP: memory (per-key namespaces) and background jobs whose signed
webhooks reach a real receiver on loopback."""

from __future__ import annotations

import asyncio
import json
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import httpx
import pytest

from gonka_mux.testing import Reply
from gonka_mux.webhooks import verify_signature

from ._serve import serve
from .conftest import MSG, make_gateway
from .test_openai_surface import assert_openai_error


async def test_session_history_over_http_is_per_key(gateway):
    seen = []
    for backend in gateway.backends:
        backend.set_replies(lambda request: seen.append(request.messages) or Reply("noted"))
    client = gateway.openai()
    first = [{"role": "user", "content": "My name is Ada."}]
    second = [{"role": "user", "content": "What is my name?"}]
    await client.chat.completions.create(
        model="m", messages=first, extra_headers={"X-Session-Id": "conv-1"}
    )
    await client.chat.completions.create(
        model="m", messages=second, extra_body={"session_id": "conv-1"}
    )
    # The second request reached the endpoint with the stored turn prepended.
    assert [m["content"] for m in seen[1]] == ["My name is Ada.", "noted", "What is my name?"]

    stored = await gateway.http.get("/v1/sessions/conv-1", headers=gateway.auth())
    assert stored.status_code == 200
    assert [m["role"] for m in stored.json()["messages"]] == ["user", "assistant"] * 2
    listed = await gateway.http.get("/v1/sessions", headers=gateway.auth())
    assert listed.json()["data"] == ["conv-1"]

    # Another key neither sees nor continues it: the same name is a different session.
    _, other = gateway.new_key()
    assert_openai_error(
        await gateway.http.get("/v1/sessions/conv-1", headers=gateway.auth(other)), 404
    )
    assert (await gateway.http.get("/v1/sessions", headers=gateway.auth(other))).json()[
        "data"
    ] == []
    await gateway.openai(other).chat.completions.create(
        model="m", messages=second, extra_headers={"X-Session-Id": "conv-1"}
    )
    assert [m["content"] for m in seen[2]] == ["What is my name?"]

    # prompt_cache_key sessions (OpenClaw) are affinity-only: nothing stored or prepended.
    await client.chat.completions.create(
        model="m", messages=first, extra_body={"prompt_cache_key": "oc-session:0"}
    )
    assert [m["content"] for m in seen[3]] == ["My name is Ada."]
    assert_openai_error(
        await gateway.http.get("/v1/sessions/oc-session:0", headers=gateway.auth()), 404
    )

    deleted = await gateway.http.delete("/v1/sessions/conv-1", headers=gateway.auth())
    assert deleted.json()["deleted"] is True
    assert_openai_error(await gateway.http.get("/v1/sessions/conv-1", headers=gateway.auth()), 404)
    assert_openai_error(
        await gateway.http.delete("/v1/sessions/conv-1", headers=gateway.auth()), 404
    )


async def test_memory_put_get_list_search_delete(gateway):
    http, auth = gateway.http, gateway.auth()
    put = await http.put(
        "/v1/memory/notes/paris",
        json={"text": "Paris is the capital of France", "metadata": {"kind": "fact"}},
        headers=auth,
    )
    assert put.status_code == 200 and put.json()["key"] == "paris"
    added = await http.post(
        "/v1/memory/notes", json={"text": "The Loire has many castles"}, headers=auth
    )
    assert added.status_code == 201
    generated = added.json()["key"]

    item = (await http.get("/v1/memory/notes/paris", headers=auth)).json()
    assert item["text"] == "Paris is the capital of France"
    assert item["metadata"] == {"kind": "fact"} and item["namespace"] == "notes"
    listed = (await http.get("/v1/memory/notes", headers=auth)).json()["data"]
    assert [i["key"] for i in listed] == ["paris", generated]
    page = (await http.get("/v1/memory/notes?limit=1&offset=1", headers=auth)).json()["data"]
    assert [i["key"] for i in page] == [generated]

    hits = await http.post(
        "/v1/memory/notes/search", json={"query": "capital France", "k": 3}, headers=auth
    )
    assert hits.status_code == 200
    assert hits.json()["data"][0]["key"] == "paris"
    filtered = await http.post(
        "/v1/memory/notes/search",
        json={"query": "castles capital", "filter": {"kind": "fact"}},
        headers=auth,
    )
    assert [h["key"] for h in filtered.json()["data"]] == ["paris"]

    deleted = await http.delete("/v1/memory/notes/paris", headers=auth)
    assert deleted.json()["deleted"] is True
    assert_openai_error(await http.get("/v1/memory/notes/paris", headers=auth), 404)
    assert_openai_error(await http.delete("/v1/memory/notes/paris", headers=auth), 404)


async def test_memory_is_private_to_each_key(gateway):
    _other_id, other = gateway.new_key()
    await gateway.http.put(
        "/v1/memory/shared/k", json={"text": "mine only"}, headers=gateway.auth()
    )
    response = await gateway.http.get("/v1/memory/shared/k", headers=gateway.auth(other))
    assert_openai_error(response, 404)
    hits = await gateway.http.post(
        "/v1/memory/shared/search", json={"query": "mine"}, headers=gateway.auth(other)
    )
    assert hits.json()["data"] == []
    assert gateway.memory.namespaces() == [f"{gateway.key_id}/shared"]


@pytest.mark.parametrize(
    ("method", "path", "body"),
    [
        ("PUT", "/v1/memory/n/k", {"text": 5}),
        ("PUT", "/v1/memory/n/k", {"text": "x", "metadata": "not an object"}),
        ("PUT", "/v1/memory/n/k", {"text": "x", "colour": "red"}),
        ("POST", "/v1/memory/n/search", {"query": "x", "k": 0}),
        ("POST", "/v1/memory/n/search", {"query": 7}),
        ("GET", "/v1/memory/n?limit=abc", None),
        ("GET", "/v1/memory/n?limit=0", None),
    ],
)
async def test_memory_bad_input_is_400(gateway, method, path, body):
    response = await gateway.http.request(method, path, json=body, headers=gateway.auth())
    assert_openai_error(response, 400)


class _Receiver:
    def __init__(self) -> None:
        self.deliveries: list[tuple[dict, bytes]] = []
        self.got = threading.Event()


@contextmanager
def webhook_receiver() -> Iterator[tuple[str, _Receiver]]:
    state = _Receiver()

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            body = self.rfile.read(int(self.headers["Content-Length"]))
            state.deliveries.append((dict(self.headers.items()), body))
            self.send_response(200)
            self.end_headers()
            state.got.set()

        def log_message(self, *args: object) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/hook", state
    finally:
        server.shutdown()
        server.server_close()


async def test_job_runs_in_background_and_delivers_a_signed_webhook(fleet, tmp_path):
    for backend in fleet:
        backend.set_replies([Reply("background answer")])
    app, state = await make_gateway(list(fleet), tmp_path, allow_private_webhooks=True)
    _, key = state["keys"].create()
    _other_id, other = state["keys"].create()
    auth = {"Authorization": f"Bearer {key}"}
    with webhook_receiver() as (hook_url, receiver):
        async with serve(app) as url, httpx.AsyncClient(base_url=url) as http:
            response = await http.post(
                "/v1/jobs",
                json={"request": {"model": "m", "messages": MSG}, "webhook_url": hook_url},
                headers={**auth, "X-Session-Id": "job-session"},
            )
            assert response.status_code == 202
            job = response.json()
            assert job["status"] in ("queued", "running")
            secret = job["webhook_secret"]  # generated for us, shown once
            await asyncio.to_thread(receiver.got.wait, 10)
            done = (await http.get(f"/v1/jobs/{job['id']}", headers=auth)).json()
            # Another key cannot see the job.
            hidden = await http.get(
                f"/v1/jobs/{job['id']}", headers={"Authorization": f"Bearer {other}"}
            )
            missing = await http.get("/v1/jobs/no-such-job", headers=auth)
    await state["mux"].aclose()

    assert done["status"] == "succeeded"
    assert done["result"]["choices"][0]["message"]["content"] == "background answer"
    assert "webhook_secret" not in done
    assert_openai_error(hidden, 404, "job_not_found")
    assert_openai_error(missing, 404, "job_not_found")
    ((headers, body),) = receiver.deliveries
    verify_signature(secret, headers, body)
    payload = json.loads(body)
    assert payload["type"] == "job.completed"
    assert payload["job"]["id"] == job["id"] and payload["job"]["status"] == "succeeded"
    (record,) = state["usage"].select()
    assert record.session_id.endswith("/job-session") and record.status == "ok"


async def test_jobs_refuse_private_webhooks_by_default_and_bad_requests(gateway):
    http, auth = gateway.http, gateway.auth()
    request = {"model": "m", "messages": MSG}
    for url in ("http://127.0.0.1:9/hook", "http://localhost/x", "http://10.1.2.3/x"):
        response = await http.post(
            "/v1/jobs", json={"request": request, "webhook_url": url}, headers=auth
        )
        assert assert_openai_error(response, 400)["param"] == "webhook_url"
    for body in (
        {"request": {**request, "stream": True}},
        {"request": {**request, "caller": "someone-else"}},
        {"request": "hello"},
        {"request": request, "priority": "high"},
        {"request": request, "webhook_url": "ftp://example.com/x"},
    ):
        assert_openai_error(await http.post("/v1/jobs", json=body, headers=auth), 400)
    assert gateway.served() == 0
