"""TEST-05: drive the gateway with many concurrent API keys and check limits, errors and metering.

The gateway runs as ``gonka-mux gateway`` in its own process, in front of fake endpoints in
another process; this process is the load generator (asyncio + httpx, one connection pool).
Every key belongs to a tier whose limit the load exceeds, and afterwards:

* limits held exactly: no key got more requests (or tokens) admitted than its tier's burst plus
  its refill over the key's window, and every key refused for requests got its burst plus the
  refills of the time it was asking (so the limiter does not under-admit either);
* every refusal is a 429 in OpenAI's error format with a ``Retry-After`` header;
* nothing else went wrong: every answer is a 200 or such a 429, every stream ends with [DONE];
* metering matches: per key, the gateway's usage report counts every request, its refusals as
  errors, and the same prompt and completion tokens the clients received; the admitted requests
  equal what the fake endpoints served.

Run: python bench/loadtest.py [--keys 40] [--duration 10] [--concurrency 64] [--rpm 30]
Exit status 1 when a check fails. ``drive()`` and ``check()`` are also used by
tests/gateway/test_load.py (a smaller, in-process version).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import os
import random
import secrets
import socket
import statistics
import sys
import tempfile
import time
from collections import defaultdict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

MESSAGES = [{"role": "user", "content": "Summarise the plot of Hamlet in one line."}]
MAX_TOKENS = 16


@dataclass
class Outcome:
    """One request as the client saw it."""

    key: str
    t0: float
    t1: float
    status: int
    stream: bool
    prompt_tokens: int = 0
    completion_tokens: int = 0
    estimate: int = 0
    problem: str | None = None


@dataclass(frozen=True)
class Limit:
    """A tier's limit as the checks need it (per minute; burst defaults to one minute's)."""

    rpm: float | None
    tpm: float | None
    burst_requests: float | None = None
    burst_tokens: float | None = None

    @property
    def request_burst(self) -> float:
        return self.burst_requests or max(1.0, self.rpm or 0)

    @property
    def token_burst(self) -> float:
        return self.burst_tokens or max(1.0, self.tpm or 0)


@dataclass
class Report:
    outcomes: list[Outcome]
    wall: float
    violations: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)


def _retry_after_ok(response: httpx.Response) -> str | None:
    value = response.headers.get("retry-after")
    if value is None:
        return "429 without Retry-After"
    if not value.isdigit() or int(value) < 1:
        return f"429 with a bad Retry-After {value!r}"
    return None


def _error_shape_problem(text: str) -> str | None:
    try:
        error = json.loads(text)["error"]
    except (ValueError, KeyError, TypeError):
        return f"error body is not OpenAI-shaped: {text[:120]!r}"
    if not isinstance(error, dict) or not isinstance(error.get("message"), str):
        return f"error body is not OpenAI-shaped: {text[:120]!r}"
    if not isinstance(error.get("type"), str) or "code" not in error or "param" not in error:
        return f"error body lacks type/code/param: {text[:120]!r}"
    return None


async def _one(http: httpx.AsyncClient, key_name: str, key: str, stream: bool) -> Outcome:
    from gonka_mux.limits import estimate_tokens

    body: dict[str, Any] = {"model": "m", "messages": MESSAGES, "max_tokens": MAX_TOKENS}
    if stream:
        body.update(stream=True, stream_options={"include_usage": True})
    headers = {"Authorization": f"Bearer {key}"}
    out = Outcome(key_name, time.perf_counter(), 0.0, 0, stream, estimate=estimate_tokens(body))
    try:
        async with http.stream("POST", "/v1/chat/completions", json=body, headers=headers) as r:
            out.status = r.status_code
            if r.status_code == 200 and stream:
                done = False
                async for line in r.aiter_lines():
                    if line == "data: [DONE]":
                        done = True
                    elif line.startswith("data: "):
                        chunk = json.loads(line[6:])
                        if "error" in chunk:
                            out.problem = f"error event in stream: {chunk['error']}"
                        usage = chunk.get("usage")
                        if usage:
                            out.prompt_tokens = usage["prompt_tokens"]
                            out.completion_tokens = usage["completion_tokens"]
                if not done:
                    out.problem = out.problem or "stream ended without [DONE]"
            else:
                text = (await r.aread()).decode()
                if r.status_code == 200:
                    usage = json.loads(text)["usage"]
                    out.prompt_tokens = usage["prompt_tokens"]
                    out.completion_tokens = usage["completion_tokens"]
                elif r.status_code == 429:
                    out.problem = _retry_after_ok(r) or _error_shape_problem(text)
                else:
                    out.problem = f"HTTP {r.status_code}: {text[:200]}"
    except (httpx.HTTPError, ValueError, KeyError) as exc:
        out.problem = f"{type(exc).__name__}: {exc}"
    out.t1 = time.perf_counter()
    return out


async def drive(
    url: str,
    keys: Mapping[str, str],
    *,
    duration: float,
    concurrency: int,
    stream_fraction: float = 0.3,
    seed: int = 1,
    max_requests: int | None = None,
) -> Report:
    """``concurrency`` workers send requests for ``duration`` seconds, each worker going round
    the keys (``{name: plaintext}``) from its own starting point, so every key is in use
    concurrently from several workers."""
    rng = random.Random(seed)
    names = list(keys)
    outcomes: list[Outcome] = []
    deadline = time.perf_counter() + duration
    count = 0

    async def worker(start: int) -> None:
        # One client (one keep-alive connection) per worker: httpx's shared pool costs the
        # generator far more CPU per request at high concurrency than the gateway spends.
        nonlocal count
        i = start
        async with httpx.AsyncClient(base_url=url, timeout=60) as http:
            while time.perf_counter() < deadline:
                if max_requests is not None and count >= max_requests:
                    return
                count += 1
                name = names[i % len(names)]
                i += 1
                stream = rng.random() < stream_fraction
                outcomes.append(await _one(http, name, keys[name], stream))

    t0 = time.perf_counter()
    await asyncio.gather(*(worker(i * 7) for i in range(concurrency)))
    wall = time.perf_counter() - t0
    return Report(outcomes, wall)


def check(
    report: Report,
    limits: Mapping[str, Limit],
    usage_by_key: Mapping[str, Mapping[str, Any]],
    served: int,
) -> Report:
    """Fill ``report.violations`` (empty: every check passed) and ``report.notes``.

    ``limits``: the limit of each key name; ``usage_by_key``: the gateway's usage report rows
    (``requests``, ``errors``, ``prompt_tokens``, ``completion_tokens``) per key name;
    ``served``: the chat requests the fake endpoints answered.
    """
    bad = report.violations
    by_key: dict[str, list[Outcome]] = defaultdict(list)
    for out in report.outcomes:
        by_key[out.key].append(out)
        if out.problem:
            bad.append(f"{out.key}: {out.problem}")
        elif out.status not in (200, 429):
            bad.append(f"{out.key}: unexpected HTTP {out.status}")
    fill: list[float] = []
    for key, outs in sorted(by_key.items()):
        limit = limits[key]
        ok = [o for o in outs if o.status == 200]
        window = max(o.t1 for o in outs) - min(o.t0 for o in outs)
        if limit.rpm is not None:
            bound = limit.request_burst + limit.rpm / 60 * window
            if len(ok) > bound + 1e-9:
                bad.append(f"{key}: {len(ok)} requests admitted, the limit allows {bound:.2f}")
            if any(o.status == 429 for o in outs):
                # The key asked for more than it got: it must have got its burst plus every
                # refill that happened while it was asking (inner window: first answer to last
                # request sent), less one for a refill that landed as the window closed.
                inner = max(o.t0 for o in outs) - min(o.t1 for o in outs)
                floor = limit.request_burst + math.floor(limit.rpm / 60 * max(0.0, inner)) - 1
                if len(ok) < floor:
                    bad.append(f"{key}: only {len(ok)} admitted, the limit allows {floor:.0f}")
            fill.append(len(ok) / bound)
        if limit.tpm is not None:
            used = sum(o.prompt_tokens + o.completion_tokens for o in ok)
            overshoot = sum(max(0, o.prompt_tokens + o.completion_tokens - o.estimate) for o in ok)
            bound = limit.token_burst + limit.tpm / 60 * window + overshoot
            if used > bound + 1e-9:
                bad.append(f"{key}: {used} tokens admitted, the limit allows {bound:.1f}")
            fill.append(used / bound)
        row = usage_by_key.get(key)
        if row is None:
            bad.append(f"{key}: no usage recorded")
            continue
        refused = sum(1 for o in outs if o.status == 429)
        expected = {
            "requests": len(outs),
            "errors": refused,
            "prompt_tokens": sum(o.prompt_tokens for o in ok),
            "completion_tokens": sum(o.completion_tokens for o in ok),
        }
        for name, value in expected.items():
            if row.get(name) != value:
                bad.append(f"{key}: metering {name}={row.get(name)}, clients saw {value}")
    admitted = sum(1 for o in report.outcomes if o.status == 200)
    if admitted != served:
        bad.append(f"{admitted} requests admitted but the endpoints served {served}")
    if fill:
        report.notes.append(
            f"admitted / allowed per key: min {min(fill):.3f}, max {max(fill):.3f} "
            "(max <= 1 means no over-admission)"
        )
    return report


def summary(report: Report) -> str:
    outs = report.outcomes
    ok = [o for o in outs if o.status == 200]
    lat = sorted(o.t1 - o.t0 for o in ok) or [0.0]
    refused = sum(1 for o in outs if o.status == 429)
    keys = len({o.key for o in outs})
    lines = [
        f"requests: {len(outs)} from {keys} keys in {report.wall:.1f} s "
        f"({len(outs) / report.wall:.0f}/s); admitted {len(ok)}, refused 429 {refused}, "
        f"other {len(outs) - len(ok) - refused}",
        f"admitted latency: p50 {statistics.median(lat) * 1000:.1f} ms, "
        f"p99 {lat[min(len(lat) - 1, math.ceil(0.99 * len(lat)) - 1)] * 1000:.1f} ms; "
        f"streams {sum(o.stream for o in ok)}",
        *report.notes,
        f"checks: {'all passed' if not report.violations else f'{len(report.violations)} FAILED'}",
        *[f"  - {v}" for v in report.violations[:20]],
    ]
    return "\n".join(lines)


# ----------------------------------------------------------------------- the standalone run


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _write_config(path: Path, backend_urls: Sequence[str], tiers: Mapping[str, Limit]) -> None:
    lines = []
    for i, url in enumerate(backend_urls):
        lines += ["[[endpoints]]", f'name = "fake-{i}"', f'base_url = "{url}"', 'models = ["m"]']
    lines += ["[limits]", "max_wait = 0"]
    for name, limit in tiers.items():
        lines.append(f"[limits.tiers.{name}]")
        for unit, value in (("rpm", limit.rpm), ("tpm", limit.tpm)):
            lines.append(f"{unit} = {value:g}" if value else f'{unit} = "none"')
        for unit, value in (
            ("burst_requests", limit.burst_requests),
            ("burst_tokens", limit.burst_tokens),
        ):
            if value:
                lines.append(f"{unit} = {value:g}")
    tmp = path.parent
    lines += ["[metering]", f'path = "{tmp / "usage.sqlite3"}"']
    lines += ["[webhooks]", f'path = "{tmp / "jobs.sqlite3"}"']
    lines += ["[memory]", f'path = "{tmp / "memory.sqlite3"}"']
    lines += ["[sessions]", 'store = "memory"']
    lines += ["[gateway]", f'keys_db = "{tmp / "keys.sqlite3"}"']
    path.write_text("\n".join(lines) + "\n")


async def _wait_healthy(url: str, proc: asyncio.subprocess.Process, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    async with httpx.AsyncClient() as http:
        while time.monotonic() < deadline:
            if proc.returncode is not None:
                raise RuntimeError("the gateway exited during startup")
            try:
                if (await http.get(f"{url}/health")).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            await asyncio.sleep(0.1)
    raise RuntimeError("the gateway did not become healthy")


async def main(args: argparse.Namespace) -> int:
    from gonka_mux.testing import spawn_fake_backend

    tiers = {
        "agent": Limit(rpm=args.rpm, tpm=None, burst_requests=args.burst),
        "tokens": Limit(rpm=None, tpm=args.tpm, burst_tokens=args.burst_tokens),
    }
    admin_key = "gmx_admin_" + secrets.token_urlsafe(24)
    with tempfile.TemporaryDirectory() as tmp, spawn_fake_backend(models=["m"], seed=3) as fake:
        config = Path(tmp) / "gonka-mux.toml"
        _write_config(config, [fake.url], tiers)
        port = _free_port()
        url = f"http://127.0.0.1:{port}"
        env = {**os.environ, "GONKA_ADMIN_API_KEY": admin_key, "GONKA_MUX_STATE_DIR": tmp}
        command = [sys.executable, "-m", "gonka_mux", "gateway", "--config", str(config)]
        command += ["--host", "127.0.0.1", "--port", str(port), "--log-level", "warning"]
        proc = await asyncio.create_subprocess_exec(*command, env=env)
        try:
            await _wait_healthy(url, proc)
            admin = {"Authorization": f"Bearer {admin_key}"}
            keys: dict[str, str] = {}
            limits: dict[str, Limit] = {}
            id_of: dict[str, str] = {}
            async with httpx.AsyncClient(base_url=url, headers=admin) as http:
                for i in range(args.keys):
                    tier = "tokens" if i % 4 == 3 else "agent"
                    made = (await http.post("/admin/keys", json={"tier": tier})).json()
                    name = f"key{i:03d}-{tier}"
                    keys[name], limits[name], id_of[made["id"]] = made["key"], tiers[tier], name
            print(
                f"gateway pid {proc.pid} on {url}; {args.keys} keys "
                f"(tier agent: {args.rpm:g} rpm burst {args.burst:g}, tier tokens: "
                f"{args.tpm:g} tpm burst {args.burst_tokens:g}); "
                f"{args.concurrency} concurrent workers for {args.duration:g} s"
            )
            report = await drive(
                url,
                keys,
                duration=args.duration,
                concurrency=args.concurrency,
                stream_fraction=args.stream_fraction,
            )
            async with httpx.AsyncClient(base_url=url, headers=admin) as http:
                rows = (await http.get("/admin/usage?group_by=key")).json()["data"]
            usage = {id_of[row["group"]]: row for row in rows if row["group"] in id_of}
            check(report, limits, usage, fake.request_count)
        finally:
            proc.terminate()
            await asyncio.wait_for(proc.wait(), 30)
    print(summary(report))
    return 1 if report.violations else 0


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--keys", type=int, default=24)
    parser.add_argument("--duration", type=float, default=10.0)
    parser.add_argument("--concurrency", type=int, default=32)
    parser.add_argument("--rpm", type=float, default=12.0, help="tier 'agent' requests/min")
    parser.add_argument("--burst", type=float, default=4.0, help="tier 'agent' request burst")
    parser.add_argument("--tpm", type=float, default=240.0, help="tier 'tokens' tokens/min")
    parser.add_argument("--burst-tokens", type=float, default=80.0, help="tier 'tokens' burst")
    parser.add_argument("--stream-fraction", type=float, default=0.3)
    sys.exit(asyncio.run(main(parser.parse_args())))
