"""How long one tiering decision takes, for typical and for large requests.

Run: python bench/bench_tiering.py
Target: a few microseconds per decision for typical prompts (the issue's AGNT-03 budget).
"""

from __future__ import annotations

import os
import timeit
from typing import Any

from gonka_mux.tiering import TieringPolicy

TIERS = {"cheap": "Qwen/Qwen3-8B", "strong": "moonshotai/Kimi-K2.5"}
TOOL = {"type": "function", "function": {"name": "search", "parameters": {"type": "object"}}}


def chat(*turns: str, **params: Any) -> dict[str, Any]:
    roles = ["user", "assistant"]
    messages = [{"role": "system", "content": "You are a helpful assistant."}]
    messages += [{"role": roles[i % 2], "content": text} for i, text in enumerate(turns)]
    return {"model": "auto", "messages": messages, **params}


CASES: dict[str, dict[str, Any]] = {
    "short classify (cheap, simple_task)": chat("Classify the sentiment: 'arrived late, works'"),
    "short chat, no rule (default)": chat("Hello! What's the capital of France?"),
    "tools (strong, first rule)": chat("What's the weather in Paris?", tools=[TOOL]),
    "reasoning word (strong)": chat("Explain why the build fails on ARM but not x86."),
    "8-turn chat, 1.5k chars": chat(*(["tell me more about the previous point " * 5] * 8)),
    "long prompt 20k chars (strong)": chat("Summarize: " + "lorem ipsum dolor " * 1100),
}


def main() -> None:
    policy = TieringPolicy(TIERS)
    print(f"load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} CPUs (timings scale with it)")
    print(f"{'case':40} {'decision':32} {'us/decision':>12}")
    for name, params in CASES.items():
        decision = policy.decide(params)
        number = 20_000
        best = min(timeit.repeat(lambda p=params: policy.decide(p), number=number, repeat=5))
        label = f"{decision.tier}/{decision.rule}"
        print(f"{name:40} {label:32} {best / number * 1e6:12.2f}")


if __name__ == "__main__":
    main()
