"""TEST-01: the real OpenClaw agent completes a multi-step tool task through the gateway.

Real: the ``openclaw`` CLI (npm, Node 24) running ``agent exec`` headlessly, its agent loop and
its ``read``/``write`` tools on a temporary workspace; the gateway (uvicorn on loopback) with API
keys, rate limits and metering; the Multiplexer; a fake OpenAI-compatible endpoint (a real HTTP
server) whose replies are scripted from what OpenClaw sends.

Node 24 and openclaw are prepared by ``.ci/legs/openclaw.sh``, which passes their directory in
``GONKA_OPENCLAW_DIR`` and selects this test with ``-m openclaw``. The test downloads nothing: it is
deselected by default (marker ``openclaw``), and selected without that directory it fails.
"""

from __future__ import annotations

import asyncio
import json
import os
from pathlib import Path

import pytest

from gonka_mux import AsyncMultiplexer
from gonka_mux.gateway import KeyStore, create_app
from gonka_mux.testing import FakeBackend, RecordedRequest, Reply, ToolCall

from .._serve import serve

pytestmark = [pytest.mark.slow, pytest.mark.openclaw]

SECRET = "GATEWAY-7f3a"


@pytest.fixture(scope="module")
def openclaw() -> tuple[Path, Path]:
    """(node binary, openclaw.mjs) from ``GONKA_OPENCLAW_DIR``; never downloads anything."""
    where = os.environ.get("GONKA_OPENCLAW_DIR")
    if not where:
        pytest.fail(
            "GONKA_OPENCLAW_DIR is not set: run `bash .ci/legs/openclaw.sh`, which installs "
            "Node 24 and openclaw and runs this test"
        )
    base = Path(where)
    node = base / "node" / "bin" / "node"
    entry = base / "app" / "node_modules" / "openclaw" / "openclaw.mjs"
    if not (node.exists() and entry.exists()):
        pytest.fail(f"Node 24 and openclaw are not under {base}: run .ci/legs/openclaw.sh")
    return node, entry


def _tool_results(request: RecordedRequest) -> list[str]:
    # OpenClaw appends an internal-context user message after tool results, so look at every
    # tool message, not the last message.
    return [str(m.get("content")) for m in request.messages if m.get("role") == "tool"]


def script(request: RecordedRequest) -> Reply:
    """read note.txt -> write answer.txt with the secret reversed -> final answer."""
    results = _tool_results(request)
    if not results:
        return Reply(tool_calls=[ToolCall("read", {"path": "note.txt"})])
    if len(results) == 1:
        assert SECRET in results[0], results
        return Reply(
            reasoning="The note holds the secret; store it reversed as asked.",
            tool_calls=[ToolCall("write", {"path": "answer.txt", "content": SECRET[::-1]})],
        )
    return Reply(f"Done: the secret was {SECRET} and answer.txt holds it reversed.")


class SeenOptions:
    """A Multiplexer extension recording what the gateway asked of it per request."""

    def __init__(self) -> None:
        self.seen: list[tuple[str | None, str | None, dict]] = []

    async def before(self, ctx) -> None:
        self.seen.append((ctx.caller, ctx.options.session_id, dict(ctx.options.metadata or {})))

    async def after(self, ctx) -> None:
        pass


async def test_openclaw_multistep_tool_task_through_gateway(openclaw, tmp_path):
    node, entry = openclaw
    work = tmp_path / "work"
    work.mkdir()
    (work / "note.txt").write_text(f"The secret is {SECRET}.\n")
    home = tmp_path / "home"
    home.mkdir()

    seen = SeenOptions()
    with FakeBackend(replies=script, name="scripted") as backend:
        mux = AsyncMultiplexer()
        mux.add_endpoint(backend.url, models=["fake-model"], name="scripted")
        mux.enable_sessions("memory")
        mux.enable_limits({"tiers": {"agents": {"rpm": 100, "tpm": 10_000_000}}})
        meter = mux.enable_metering("memory")
        mux.add_extension(seen)
        keys = KeyStore(tmp_path / "keys.sqlite3")
        record, api_key = keys.create("openclaw", tier="agents")
        app = create_app(mux, keys=keys, admin_key="admin-test")
        async with serve(app) as url:
            config = {
                "models": {
                    "mode": "replace",
                    "providers": {
                        "mux": {
                            "baseUrl": f"{url}/v1",
                            "apiKey": api_key,
                            "api": "openai-completions",
                            "models": [
                                {
                                    "id": "fake-model",
                                    "name": "Fake",
                                    "reasoning": False,
                                    "input": ["text"],
                                    "contextWindow": 128000,
                                    "maxTokens": 4096,
                                    "compat": {"supportsPromptCacheKey": True},
                                }
                            ],
                        }
                    },
                },
                "agents": {"defaults": {"model": {"primary": "mux/fake-model"}}},
                "update": {"checkOnStart": False},
            }
            config_path = tmp_path / "openclaw.json"
            config_path.write_text(json.dumps(config))
            env = {
                "PATH": f"{node.parent}:/usr/bin:/bin",
                "HOME": str(home),
                "OPENCLAW_NO_AUTO_UPDATE": "1",
            }
            proc = await asyncio.create_subprocess_exec(
                str(node),
                str(entry),
                "agent",
                "exec",
                "--config",
                str(config_path),
                "--model",
                "mux/fake-model",
                "--cwd",
                str(work),
                "--json",
                "--timeout",
                "180",
                "Read note.txt, write the secret it holds reversed into answer.txt, then tell me "
                "the secret.",
                env=env,
                stdout=asyncio.subprocess.PIPE,
                stderr=asyncio.subprocess.PIPE,
            )
            out, err = await asyncio.wait_for(proc.communicate(), 300)
        await mux.aclose()  # flushes the meter

    assert proc.returncode == 0, err.decode(errors="replace")[-3000:]
    envelope = json.loads(out)
    assert envelope["ok"] is True and envelope["status"] == "ok"
    assert SECRET in envelope["final"]
    assert envelope["toolSummary"]["calls"] == 2
    assert set(envelope["toolSummary"]["tools"]) == {"read", "write"}
    # The write tool really ran with the arguments the scripted model chose.
    assert (work / "answer.txt").read_text() == SECRET[::-1]

    chats = [r for r in backend.requests if r.path.endswith("/chat/completions")]
    assert len(chats) == 3
    session = envelope["sessionId"]
    for request in chats:
        assert request.stream  # OpenClaw always streams; the gateway relays SSE
        assert request.json["prompt_cache_key"].startswith(session)
        # The gateway key stays at the gateway: the endpoint sees the Multiplexer's own.
        assert api_key not in request.headers.get("authorization", "")
    # OpenClaw re-sends the whole conversation: the session is affinity-only, so the endpoint
    # sees exactly what OpenClaw sent (nothing prepended) and nothing is stored.
    assert [len(r.messages) for r in chats] == sorted(len(r.messages) for r in chats)
    assert [m["role"] for m in chats[0].messages][:2] == ["system", "user"]
    assert await mux.sessions.list() == []
    cache_key = chats[0].json["prompt_cache_key"]
    assert (
        seen.seen
        == [
            (
                record.id,
                f"{record.id}/{cache_key}",
                {"limit_tier": "agents", "session_mode": "affinity"},
            )
        ]
        * 3
    )

    usage = meter.store.select(key=record.id)
    assert len(usage) == 3
    assert {u.session_id for u in usage} == {f"{record.id}/{cache_key}"}
    assert all(u.status == "ok" and u.endpoint == "scripted" for u in usage)
    assert all(u.prompt_tokens > 1000 for u in usage)  # OpenClaw's ~37 KB prompt was counted
    assert envelope["usage"]["input"] == sum(u.prompt_tokens for u in usage)
