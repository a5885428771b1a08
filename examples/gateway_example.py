"""The gateway, embedded: a Multiplexer over two local endpoints served as an OpenAI-compatible
HTTP API with API keys, per-key rate limits, metering, sessions and memory, offline.

Any OpenAI client (or a non-Python agent such as OpenClaw) talks to it over HTTP; here the
official openai SDK does.

Run: python examples/gateway_example.py      (needs: pip install 'gonka-mux[gateway]')
"""

import asyncio
import socket
import tempfile

import httpx
import openai
import uvicorn

from gonka_mux import AsyncMultiplexer
from gonka_mux.gateway import KeyStore, create_app
from gonka_mux.testing import FakeFleet, Reply

ADMIN_KEY = "gmx_admin_example-only-use-a-random-one"


async def main() -> None:
    state = tempfile.mkdtemp()
    with FakeFleet([{"name": "gpu-1", "replies": [Reply("Hello from gpu-1!")]}, "gpu-2"]) as fleet:
        mux = AsyncMultiplexer()
        for backend in fleet:
            mux.add_endpoint(backend.url, models=["kimi-k2.5"], name=backend.name)
        mux.enable_limits({"tiers": {"free": {"rpm": 2}, "pro": {"rpm": 600}}, "max_wait": 0})
        mux.enable_metering("memory")
        mux.enable_sessions("memory")
        mux.enable_memory(f"{state}/memory.sqlite3")

        keys = KeyStore(f"{state}/keys.sqlite3")
        _, pro_key = keys.create(name="my-agent", tier="pro")
        _, free_key = keys.create(name="trial", tier="free")
        app = create_app(mux, keys=keys, admin_key=ADMIN_KEY, close_mux=True)

        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM, socket.IPPROTO_TCP)
        sock.bind(("127.0.0.1", 0))
        url = f"http://127.0.0.1:{sock.getsockname()[1]}"
        server = uvicorn.Server(uvicorn.Config(app, log_level="warning"))
        serving = asyncio.create_task(server.serve(sockets=[sock]))
        for _ in range(1000):  # until uvicorn is listening
            if server.started:
                break
            await asyncio.sleep(0.01)

        client = openai.AsyncOpenAI(base_url=f"{url}/v1", api_key=pro_key)
        reply = await client.chat.completions.create(
            model="kimi-k2.5",
            messages=[{"role": "user", "content": "Hi!"}],
            extra_headers={"X-Session-Id": "demo"},  # server-side history for this session
        )
        print("chat   :", reply.choices[0].message.content)

        stream = await client.chat.completions.create(
            model="kimi-k2.5", messages=[{"role": "user", "content": "Stream it"}], stream=True
        )
        text = "".join([c.choices[0].delta.content or "" async for c in stream if c.choices])
        print("stream :", text)

        free = openai.AsyncOpenAI(base_url=f"{url}/v1", api_key=free_key, max_retries=0)
        for _ in range(3):
            try:
                await free.chat.completions.create(
                    model="kimi-k2.5", messages=[{"role": "user", "content": "again"}]
                )
            except openai.RateLimitError as exc:
                retry_after = exc.response.headers["retry-after"]
                print(f"429    : {exc.code}, Retry-After {retry_after} s")

        async with httpx.AsyncClient(base_url=url) as http:
            agent = {"Authorization": f"Bearer {pro_key}"}
            await http.put(
                "/v1/memory/notes/capital", json={"text": "Paris is in France"}, headers=agent
            )
            hits = await http.post(
                "/v1/memory/notes/search", json={"query": "France"}, headers=agent
            )
            print("memory :", [h["key"] for h in hits.json()["data"]])
            session = await http.get("/v1/sessions/demo", headers=agent)
            print("session:", [m["role"] for m in session.json()["messages"]])
            admin = {"Authorization": f"Bearer {ADMIN_KEY}"}
            usage = await http.get("/admin/usage?group_by=key", headers=admin)
            for row in usage.json()["data"]:
                print(
                    f"usage  : key {row['group']}: {row['requests']} requests, "
                    f"{row['errors']} refused, {row['total_tokens']} tokens"
                )

        server.should_exit = True
        await serving
        keys.close()


if __name__ == "__main__":
    asyncio.run(main())
