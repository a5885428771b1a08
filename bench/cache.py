"""Response cache (issue 18): what a hit costs, and a cached agent rerun that never goes upstream.

1. Latency, side by side in one process, rounds alternating so every variant sees the same
   machine noise (figures: medians over rounds of per-request p50s):
   - ``in-process call``: ``await client.post(...)`` on an in-process OpenAI-shaped client that
     returns a ready ``ChatCompletion`` (no network, no serialisation: the floor);
   - ``mux, in-process endpoint``: the same client behind an ``AsyncMultiplexer`` (routing,
     validation, hooks) without a cache;
   - ``mux, diskcache hit`` / ``mux, memory hit``: the same request answered from the cache
     (lookup, decode into a fresh ``ChatCompletion``, metering-free pipeline).
   Target: a diskcache hit adds <= 0.2 ms over the in-process call.
2. The LangGraph agent of ``examples/langgraph_example.py`` (two turns, tool calls, streamed),
   run twice on fresh agent state with a diskcache response cache and ``temperature=0``: the
   second run must make 0 upstream requests (counted at the fake backends).

Run: python bench/cache.py [--requests 2000] [--rounds 5] [--skip-agent]
"""

from __future__ import annotations

import argparse
import asyncio
import importlib.util
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from openai.types.chat import ChatCompletion

from gonka_mux import AsyncMultiplexer, Multiplexer
from gonka_mux.cache import cache_status

MESSAGES = [{"role": "user", "content": "Plan the next tool call for the weather question."}]
REPLY = ChatCompletion.model_validate(
    {
        "id": "chatcmpl-bench",
        "object": "chat.completion",
        "created": 1,
        "model": "m",
        "choices": [
            {
                "index": 0,
                "message": {"role": "assistant", "content": "Call get_weather(city='Oslo')."},
                "finish_reason": "stop",
            }
        ],
        "usage": {"prompt_tokens": 14, "completion_tokens": 9, "total_tokens": 23},
    }
)


class InProcessClient:
    """An OpenAI-shaped client answering in-process (what the mux calls on an endpoint)."""

    base_url = "inproc://bench/v1"

    async def post(self, path: str, *, cast_to: Any, options: Any = None, **kwargs: Any) -> Any:
        return REPLY

    async def close(self) -> None:
        return None


async def timed(call: Any, n: int) -> float:
    """p50 seconds of ``await call()`` over ``n`` calls."""
    samples = []
    for _ in range(n):
        t0 = time.perf_counter()
        await call()
        samples.append(time.perf_counter() - t0)
    return statistics.median(samples)


async def latency(args: argparse.Namespace) -> bool:
    tmp = Path(tempfile.mkdtemp(prefix="gonka-mux-bench-cache-"))
    client = InProcessClient()
    plain = AsyncMultiplexer(hedging=None)
    plain.add_endpoint(client, models=["m"], name="inproc")
    disk = AsyncMultiplexer(hedging=None)
    disk.add_endpoint(client, models=["m"], name="inproc")
    disk.enable_cache(path=tmp / "cache")
    memory = AsyncMultiplexer(hedging=None)
    memory.add_endpoint(client, models=["m"], name="inproc")
    memory.enable_cache("memory")
    kw = {"model": "m", "messages": MESSAGES, "temperature": 0}
    for mux in (disk, memory):  # store the entry, then check it is served as a hit
        await mux.chat.completions.create(**kw)
        assert cache_status(await mux.chat.completions.create(**kw)) == "hit"

    variants = {
        "in-process call": lambda: client.post("/chat/completions", cast_to=ChatCompletion),
        "mux, in-process endpoint": lambda: plain.chat.completions.create(**kw),
        "mux, diskcache hit": lambda: disk.chat.completions.create(**kw),
        "mux, memory hit": lambda: memory.chat.completions.create(**kw),
    }
    results: dict[str, list[float]] = {name: [] for name in variants}
    for call in variants.values():  # warm-up
        await timed(call, 200)
    for _ in range(args.rounds):
        for name, call in variants.items():
            results[name].append(await timed(call, args.requests))
    base = statistics.median(results["in-process call"])
    print(f"p50 latency, median of {args.rounds} rounds x {args.requests} requests:")
    for name, values in results.items():
        p50 = statistics.median(values)
        print(f"  {name:<26} {p50 * 1e6:8.1f} us   added vs in-process call "
              f"{(p50 - base) * 1e3:+.3f} ms")  # fmt: skip
    added = statistics.median(results["mux, diskcache hit"]) - base
    ok = added <= 0.0002
    print(f"diskcache hit adds {added * 1e3:.3f} ms (target <= 0.2 ms): {'OK' if ok else 'MISSED'}")
    print(f"cache stats (diskcache): {disk.cache.stats() if disk.cache else {}}")
    for mux in (plain, disk, memory):
        await mux.aclose()
    return ok


def load_example() -> Any:
    path = Path(__file__).resolve().parents[1] / "examples" / "langgraph_example.py"
    spec = importlib.util.spec_from_file_location("langgraph_example", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


def agent_rerun() -> bool:
    """Run the example's agent twice (fresh agent state each time) through one cache."""
    example = load_example()
    from gonka_mux.integrations.langchain import ChatMultiplexer
    from gonka_mux.testing import FakeBackendSpec, FakeFleet

    # the example's model, asked for repeatable answers (what makes a request cacheable)
    original = ChatMultiplexer

    def deterministic(**kwargs: Any) -> Any:
        return original(**kwargs, temperature=0)

    example.ChatMultiplexer = deterministic
    cache_dir = Path(tempfile.mkdtemp(prefix="gonka-mux-bench-agent-cache-"))
    specs = [
        FakeBackendSpec(name="node-a", replies=example.scripted_model, seed=1),
        FakeBackendSpec(name="node-b", replies=example.scripted_model, seed=2),
    ]
    counts = []
    with FakeFleet(specs) as fleet:
        for run in (1, 2):
            state_dir = Path(tempfile.mkdtemp(prefix=f"gonka-mux-bench-agent-{run}-"))
            before = sum(b.request_count for b in fleet.backends)
            with Multiplexer() as mux:
                for backend in fleet.backends:
                    mux.add_endpoint(backend.url, models=[example.MODEL], name=backend.name)
                mux.enable_cache(path=cache_dir)  # the same cache directory for both runs
                graph, saver, store = example.build_graph(mux, state_dir)
                example.turn(graph, "Remember the wifi password is tea-for-two", "kitchen")
                example.turn(graph, "What is the wifi password?", "kitchen")
                saver.close()
                store.close()
                stats = mux.cache.stats() if mux.cache else {}
            made = sum(b.request_count for b in fleet.backends) - before
            counts.append(made)
            print(f"run {run}: {made} upstream request(s); cache {stats}")
    ok = counts[0] > 0 and counts[1] == 0
    print(f"agent rerun: {counts[0]} -> {counts[1]} upstream requests: {'OK' if ok else 'MISSED'}")
    return ok


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--requests", type=int, default=2000)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--skip-agent", action="store_true")
    args = parser.parse_args()
    ok = asyncio.run(latency(args))
    if not args.skip_agent:
        ok = agent_rerun() and ok
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
