"""Gonka signing and discovery-parsing throughput.

    python bench/signing.py [--seconds 2]

Prints signatures per second for each backend (one core, a ~300-byte chat body signed end to
end: sha256 of the body, message, ECDSA, base64), the cost of the auth hook on an httpx
request, and the time to parse a 1,000-participant ``/v1/epochs/current/participants``
payload (JSON decode + lenient parse + filtering/indexing).

Targets: >= 25,000 signatures/s with coincurve; < 50 ms per 1,000-participant parse.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from collections.abc import Callable
from typing import Any

from gonka_mux.gonka.discovery import build_result, parse_participants
from gonka_mux.gonka.signing import GonkaAuth, NanoClock, RequestSigner, available_backends

KEY = "866159b0421fd9ca1435236a1b80b4c13e738439518395b9f9aecda850d4ab9d"
TA = "gonka1gazevntcqk95rqusjhvwn92y4599y8t3tjqc04"
BODY = json.dumps(
    {
        "model": "MiniMaxAI/MiniMax-M2.7",
        "messages": [
            {"role": "system", "content": "You are a helpful assistant."},
            {"role": "user", "content": "Summarise the Gonka epoch schedule in one sentence."},
        ],
        "max_tokens": 256,
        "temperature": 0.2,
        "stream": True,
    }
).encode()


def rate(function: Callable[[], Any], seconds: float) -> float:
    """Calls per second over about ``seconds`` (after a short warm-up)."""
    for _ in range(200):
        function()
    calls = 0
    batch = 500
    start = time.perf_counter()
    deadline = start + seconds
    while True:
        for _ in range(batch):
            function()
        calls += batch
        now = time.perf_counter()
        if now >= deadline:
            return calls / (now - start)


def participants_payload(count: int) -> bytes:
    participants = []
    for i in range(count):
        models = ["MiniMaxAI/MiniMax-M2.7"] + (["moonshotai/Kimi-K2.6"] if i % 3 == 0 else [])
        participants.append(
            {
                "index": f"gonka1participant{i:06d}qqqqqqqqqqqqqqqqqqqqqq",
                "validator_key": "ljvRT9VScsxQKKX4S91yJRNppbz691ceD4sBYBRrAys=",
                "weight": 1000 + i,
                "inference_url": f"https://host{i}.example.net:8000",
                "models": models,
                "seed": {"participant": f"p{i}", "epoch_index": 300, "signature": "ab" * 32},
                "ml_nodes": [
                    {"ml_nodes": [{"node_id": f"n{i}-{m}", "poc_weight": 1000 + i}]}
                    for m in range(len(models))
                ],
                "voting_powers": [{"model_id": m, "voting_power": 1000 + i} for m in models],
            }
        )
    payload = {
        "active_participants": {
            "participants": participants,
            "epoch_group_id": 300,
            "poc_start_block_height": 5167020,
            "effective_block_height": 5167302,
            "created_at_block_height": 5167300,
            "epoch_id": 300,
        },
        "excluded_participants": [
            {"address": f"gonka1participant{i:06d}qqqqqqqqqqqqqqqqqqqqqq", "reason": "downtime"}
            for i in range(0, count, 50)
        ],
    }
    return json.dumps(payload).encode()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=2.0, help="measuring time per case")
    args = parser.parse_args()

    print(f"signing a {len(BODY)}-byte body, one thread")
    coincurve_rate = floor_rate = 0.0
    if "coincurve" in available_backends():
        import coincurve

        key = coincurve.PrivateKey(bytes.fromhex(KEY))
        digest = bytes(32)
        floor_rate = rate(lambda: key.sign(digest, hasher=None), args.seconds)
        print(f"  libsecp256k1 alone (the floor): {floor_rate:,.0f} signatures/s")
    for backend in available_backends():
        signer = RequestSigner(KEY, backend=backend)  # type: ignore[arg-type]
        clock = NanoClock()
        per_second = rate(lambda s=signer, c=clock: s.sign(BODY, c.now_ns(), TA), args.seconds)
        if backend == "coincurve":
            coincurve_rate = per_second
        print(
            f"  {backend:<10} {per_second:>10,.0f} signatures/s  ({1e6 / per_second:.1f} us each)"
        )

    import httpx

    auth = GonkaAuth(RequestSigner(KEY), TA, NanoClock())
    request = httpx.Request("POST", "http://ta.example/v1/chat/completions", content=BODY)
    per_second = rate(lambda: auth(request), args.seconds)
    print(f"  auth hook on an httpx request: {per_second:,.0f}/s ({1e6 / per_second:.1f} us each)")

    raw = participants_payload(1000)
    timings = []
    for _ in range(30):
        start = time.perf_counter()
        parsed = parse_participants(json.loads(raw))
        result = build_result(parsed, source_url="bench")
        timings.append(time.perf_counter() - start)
    assert len(result.participants) == 980
    median_ms = statistics.median(timings) * 1000
    print(
        f"parse 1,000 participants ({len(raw) / 1e6:.2f} MB): median {median_ms:.2f} ms, "
        f"best {min(timings) * 1000:.2f} ms"
    )

    print("targets:")
    verdict = "met" if coincurve_rate >= 25_000 else "NOT met"
    share = f", {coincurve_rate / floor_rate:.0%} of the floor" if floor_rate else ""
    print(f"  coincurve >= 25,000 signatures/s: {verdict} ({coincurve_rate:,.0f}{share})")
    verdict = "met" if median_ms < 50 else "NOT met"
    print(f"  1,000-participant parse < 50 ms: {verdict} ({median_ms:.2f} ms)")


if __name__ == "__main__":
    main()
