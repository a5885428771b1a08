"""Throughput through the gateway vs calling the fake endpoint directly; prints the ratio.

The fake endpoint runs in one child process and ``gonka-mux gateway`` (API-key auth, rate limits
with a tier that never binds, SQLite metering: the full path a request takes) in another. This
process drives both with the same client loops (one keep-alive httpx connection per worker) and
alternates rounds, direct then gateway, so both see the same machine noise; the figures are
medians over rounds. Also printed: the p50 latency the gateway adds and its CPU per request.

Run: python bench/gateway.py [--seconds 4] [--rounds 3] [--concurrency 1 16]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import secrets
import statistics
import sys
import tempfile
import time
from pathlib import Path

import httpx
from loadtest import Limit, _free_port, _wait_healthy, _write_config

BODY = {
    "model": "m",
    "messages": [{"role": "user", "content": "Say hello in five words."}],
    "max_tokens": 16,
}


def _cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


async def _round(
    url: str, path: str, headers: dict[str, str], seconds: float, concurrency: int, stream: bool
) -> tuple[float, list[float]]:
    """(requests per second, latencies) of ``concurrency`` keep-alive loops for ``seconds``."""
    body = {**BODY, "stream": True} if stream else BODY
    latencies: list[float] = []
    deadline = time.perf_counter() + seconds

    async def worker() -> None:
        async with httpx.AsyncClient(base_url=url, headers=headers, timeout=30) as http:
            while time.perf_counter() < deadline:
                t0 = time.perf_counter()
                async with http.stream("POST", path, json=body) as response:
                    await response.aread()
                    if response.status_code != 200:
                        raise RuntimeError(f"HTTP {response.status_code}: {response.text[:200]}")
                latencies.append(time.perf_counter() - t0)

    t0 = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(concurrency)))
    return len(latencies) / (time.perf_counter() - t0), latencies


async def main(args: argparse.Namespace) -> int:
    from gonka_mux.testing import spawn_fake_backend

    admin_key = "gmx_admin_" + secrets.token_urlsafe(24)
    with tempfile.TemporaryDirectory() as tmp, spawn_fake_backend(models=["m"], seed=1) as fake:
        config = Path(tmp) / "gonka-mux.toml"
        _write_config(config, [fake.url], {"bench": Limit(rpm=10**9, tpm=10**12)})
        port = _free_port()
        url = f"http://127.0.0.1:{port}"
        env = {**os.environ, "GONKA_ADMIN_API_KEY": admin_key, "GONKA_MUX_STATE_DIR": tmp}
        command = [sys.executable, "-m", "gonka_mux", "gateway", "--config", str(config)]
        command += ["--host", "127.0.0.1", "--port", str(port), "--log-level", "warning"]
        proc = await asyncio.create_subprocess_exec(*command, env=env)
        try:
            await _wait_healthy(url, proc)
            async with httpx.AsyncClient(base_url=url) as http:
                made = await http.post(
                    "/admin/keys",
                    json={"tier": "bench"},
                    headers={"Authorization": f"Bearer {admin_key}"},
                )
            auth = {"Authorization": f"Bearer {made.json()['key']}"}
            direct_url = fake.url.removesuffix("/v1")
            print(
                f"fake endpoint pid {fake.pid}, gateway pid {proc.pid}; {args.rounds} rounds of "
                f"{args.seconds:g} s per setting; medians"
            )
            print(
                f"{'mode':<8} {'conc':>4} {'direct rps':>11} {'gateway rps':>12} {'ratio':>6} "
                f"{'added p50 ms':>13} {'gw CPU ms/req':>14}"
            )
            for stream in (False, True):
                for concurrency in args.concurrency:
                    direct_rps, gateway_rps, added, cpu = [], [], [], []
                    await _round(url, "/v1/chat/completions", auth, 0.5, concurrency, stream)
                    for _ in range(args.rounds):
                        rps, lat_d = await _round(
                            direct_url,
                            "/v1/chat/completions",
                            {},
                            args.seconds,
                            concurrency,
                            stream,
                        )
                        direct_rps.append(rps)
                        cpu0 = _cpu_seconds(proc.pid)
                        rps, lat_g = await _round(
                            url, "/v1/chat/completions", auth, args.seconds, concurrency, stream
                        )
                        cpu.append((_cpu_seconds(proc.pid) - cpu0) / len(lat_g) * 1000)
                        gateway_rps.append(rps)
                        added.append((statistics.median(lat_g) - statistics.median(lat_d)) * 1000)
                    d, g = statistics.median(direct_rps), statistics.median(gateway_rps)
                    print(
                        f"{'stream' if stream else 'json':<8} {concurrency:>4} {d:>11.0f} "
                        f"{g:>12.0f} {g / d:>6.2f} {statistics.median(added):>13.2f} "
                        f"{statistics.median(cpu):>14.2f}"
                    )
        finally:
            proc.terminate()
            await asyncio.wait_for(proc.wait(), 30)
    return 0


def _args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=float, default=4.0)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--concurrency", type=int, nargs="+", default=[1, 16])
    return parser.parse_args(argv)


if __name__ == "__main__":
    sys.exit(asyncio.run(main(_args())))
