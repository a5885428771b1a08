"""Throughput through the gateway and LiteLLM's proxy vs calling the fake endpoint directly.

The fake endpoint runs in one child process, ``gonka-mux gateway`` (API-key auth, rate limits
with a tier that never binds, SQLite metering: the full path a request takes) in another and,
when its venv is there, LiteLLM's proxy (master key only, no database: its lightest path) in a
third, all in front of the same fake endpoint. This process drives them with the same client
loops (one keep-alive httpx connection per worker, the same number of workers) and alternates
rounds (direct, gateway, LiteLLM) so all see the same machine noise; the figures are medians over
rounds. Printed per mode (JSON, SSE) and concurrency: each target's requests per second, its ratio
to direct, the gateway's ratio to LiteLLM, the p50 latency the gateway adds and its CPU per
request. Every answer is checked (200; a stream ends with ``[DONE]``).

LiteLLM lives in its own venv (it pins its own dependencies)::

    uv venv .ci-work/litellm-venv -p 3.11
    uv pip install --python .ci-work/litellm-venv/bin/python 'litellm[proxy]'

Run: python bench/gateway.py [--seconds 3] [--rounds 3] [--concurrency 16] [--modes json sse]
     [--no-litellm]
     [--profile DIR]   (py-spy samples the gateway; DIR gets its folded stacks)
     [--cprofile FILE] (the gateway runs under cProfile: CPU time per function)
Besides the rates, each target's line of CPU milliseconds per request: this client's, the fake
endpoint's and the proxy's (the processes share the machine's cores).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import secrets
import shutil
import signal
import statistics
import sys
import tempfile
import time
from pathlib import Path

import httpx
from loadtest import Limit, _free_port, _write_config

BODY = {
    "model": "m",
    "messages": [{"role": "user", "content": "Say hello in five words."}],
    "max_tokens": 16,
}
LITELLM_VENV = Path(__file__).resolve().parent.parent / ".ci-work" / "litellm-venv"


def _cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


async def _round(
    url: str, headers: dict[str, str], seconds: float, concurrency: int, stream: bool
) -> tuple[float, list[float]]:
    """(requests per second, latencies) of ``concurrency`` keep-alive loops for ``seconds``."""
    body = {**BODY, "stream": True} if stream else BODY
    latencies: list[float] = []
    deadline = time.perf_counter() + seconds

    async def worker() -> None:
        async with httpx.AsyncClient(base_url=url, headers=headers, timeout=30) as http:
            while time.perf_counter() < deadline:
                t0 = time.perf_counter()
                async with http.stream("POST", "/v1/chat/completions", json=body) as response:
                    data = await response.aread()
                    if response.status_code != 200:
                        raise RuntimeError(f"{url}: HTTP {response.status_code}: {data[:200]!r}")
                    if stream and not data.rstrip().endswith(b"data: [DONE]"):
                        raise RuntimeError(f"{url}: stream without [DONE]: {data[-200:]!r}")
                latencies.append(time.perf_counter() - t0)

    t0 = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(concurrency)))
    return len(latencies) / (time.perf_counter() - t0), latencies


async def _wait_ready(url: str, proc: asyncio.subprocess.Process, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    async with httpx.AsyncClient() as http:
        while time.monotonic() < deadline:
            if proc.returncode is not None:
                raise RuntimeError(f"{url}: the server exited during startup")
            try:
                if (await http.get(url)).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            await asyncio.sleep(0.2)
    raise RuntimeError(f"{url}: not ready after {timeout:g} s")


async def _start_litellm(tmp: str, fake_url: str) -> tuple[asyncio.subprocess.Process, str, str]:
    """LiteLLM's proxy in front of ``fake_url``: one model, a master key, no database."""
    master = "sk-" + secrets.token_urlsafe(24)
    config = Path(tmp) / "litellm.yaml"
    config.write_text(
        "model_list:\n"
        "  - model_name: m\n"
        "    litellm_params:\n"
        "      model: openai/m\n"
        f"      api_base: {fake_url}\n"
        "      api_key: fake\n"
        "litellm_settings:\n"
        "  telemetry: false\n"
        "  drop_params: true\n"
        "general_settings:\n"
        f"  master_key: {master}\n"
    )
    port = _free_port()
    env = {
        k: v
        for k, v in os.environ.items()
        if k not in ("DATABASE_URL", "VIRTUAL_ENV", "PYTHONPATH")
    }
    # offline: the model cost map ships with the package; no telemetry, quiet logs
    env.update(LITELLM_LOCAL_MODEL_COST_MAP="True", LITELLM_LOG="ERROR", LITELLM_TELEMETRY="False")
    command = [str(LITELLM_VENV / "bin" / "litellm"), "--config", str(config)]
    command += ["--host", "127.0.0.1", "--port", str(port), "--num_workers", "1"]
    proc = await asyncio.create_subprocess_exec(
        *command, env=env, stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.DEVNULL
    )
    url = f"http://127.0.0.1:{port}"
    await _wait_ready(f"{url}/health/liveliness", proc, 120)
    return proc, url, master


async def _stop(proc: asyncio.subprocess.Process) -> None:
    if proc.returncode is None:
        proc.terminate()
        try:
            await asyncio.wait_for(proc.wait(), 30)
        except TimeoutError:
            proc.kill()
            await proc.wait()


async def main(args: argparse.Namespace) -> int:
    from gonka_mux.testing import spawn_fake_backend

    admin_key = "gmx_admin_" + secrets.token_urlsafe(24)
    procs: list[asyncio.subprocess.Process] = []
    with tempfile.TemporaryDirectory() as tmp, spawn_fake_backend(models=["m"], seed=1) as fake:
        config = Path(tmp) / "gonka-mux.toml"
        _write_config(config, [fake.url], {"bench": Limit(rpm=10**9, tpm=10**12)})
        port = _free_port()
        url = f"http://127.0.0.1:{port}"
        env = {**os.environ, "GONKA_ADMIN_API_KEY": admin_key, "GONKA_MUX_STATE_DIR": tmp}
        command = [sys.executable, "-m", "gonka_mux", "gateway", "--config", str(config)]
        if args.cprofile:  # CPU time per function (py-spy's samples count wall time)
            command[1:1] = ["-m", "cProfile", "-o", args.cprofile]
        command += ["--host", "127.0.0.1", "--port", str(port), "--log-level", "warning"]
        command += ["--http", args.http, "--loop", args.loop]
        spy: asyncio.subprocess.Process | None = None
        try:
            proc = await asyncio.create_subprocess_exec(*command, env=env)
            procs.append(proc)
            await _wait_ready(f"{url}/health", proc, 60)
            if args.profile:
                spy = await _start_profiler(args.profile, proc.pid)
            async with httpx.AsyncClient(base_url=url) as http:
                made = await http.post(
                    "/admin/keys",
                    json={"tier": "bench"},
                    headers={"Authorization": f"Bearer {admin_key}"},
                )
            # (name, url, headers); the gateway's CPU is read from its own process
            targets = [
                ("direct", fake.url.removesuffix("/v1"), {}),
                ("gateway", url, {"Authorization": f"Bearer {made.json()['key']}"}),
            ]
            if args.litellm:
                if not (LITELLM_VENV / "bin" / "litellm").exists():
                    print(f"no LiteLLM venv at {LITELLM_VENV} (see the docstring); skipped")
                else:
                    lproc, lurl, master = await _start_litellm(tmp, fake.url)
                    procs.append(lproc)
                    targets.append(("litellm", lurl, {"Authorization": f"Bearer {master}"}))
            gw_pid = proc.pid
            names = [name for name, _, _ in targets]
            idle_cpu: dict[int, float] = {}  # pid -> CPU seconds while another was measured
            idle_wall: dict[int, float] = {}
            print(
                f"fake endpoint pid {fake.pid}, gateway pid {gw_pid}; {args.rounds} rounds of "
                f"{args.seconds:g} s per target and setting, alternating; medians"
            )
            head = f"{'mode':<6} {'conc':>4} " + " ".join(f"{n + ' rps':>12}" for n in names)
            head += f" {'gw/direct':>9}"
            if "litellm" in names:
                head += f" {'litellm/dir':>11} {'gw/litellm':>10}"
            head += f" {'added p50 ms':>12} {'gw CPU ms/req':>13}"
            print(head)
            for stream in (mode == "sse" for mode in args.modes):
                for concurrency in args.concurrency:
                    for _, turl, headers in targets:  # warm up connections and caches
                        await _round(turl, headers, 0.5, concurrency, stream)
                    rps: dict[str, list[float]] = {n: [] for n in names}
                    p50: dict[str, list[float]] = {n: [] for n in names}
                    cpu: list[float] = []
                    # CPU ms per request of this client, the fake endpoint, the proxy in between
                    split: dict[str, list[tuple[float, float, float]]] = {n: [] for n in names}
                    for _ in range(args.rounds):
                        for name, turl, headers in targets:
                            # the proxies not measured now: their CPU meanwhile is noted (and
                            # with --pause they are stopped, so that it costs no one else)
                            others = [
                                q for n, q in zip(names[1:], procs, strict=False) if n != name
                            ]
                            for q in others:
                                idle_cpu[q.pid] = idle_cpu.get(q.pid, 0.0) - _cpu_seconds(q.pid)
                                if args.pause:
                                    q.send_signal(signal.SIGSTOP)
                            t_round = time.monotonic()
                            pids = (
                                fake.pid,
                                procs[names.index(name) - 1].pid if name != "direct" else 0,
                            )
                            before = (
                                time.process_time(),
                                *(_cpu_seconds(p) if p else 0.0 for p in pids),
                            )
                            cpu0 = _cpu_seconds(gw_pid)
                            rate, lat = await _round(
                                turl, headers, args.seconds, concurrency, stream
                            )
                            after = (
                                time.process_time(),
                                *(_cpu_seconds(p) if p else 0.0 for p in pids),
                            )
                            for q in others:
                                if args.pause:
                                    q.send_signal(signal.SIGCONT)
                                idle_cpu[q.pid] += _cpu_seconds(q.pid)
                                idle_wall[q.pid] = idle_wall.get(q.pid, 0.0) + (
                                    time.monotonic() - t_round
                                )
                            split[name].append(
                                tuple(
                                    (b - a) / len(lat) * 1000
                                    for a, b in zip(before, after, strict=True)
                                )  # type: ignore[misc]
                            )
                            if name == "gateway":
                                cpu.append((_cpu_seconds(gw_pid) - cpu0) / len(lat) * 1000)
                            rps[name].append(rate)
                            p50[name].append(statistics.median(lat))
                    med = {n: statistics.median(v) for n, v in rps.items()}
                    line = f"{'sse' if stream else 'json':<6} {concurrency:>4} "
                    line += " ".join(f"{med[n]:>12.0f}" for n in names)
                    line += f" {med['gateway'] / med['direct']:>9.2f}"
                    if "litellm" in med:
                        line += f" {med['litellm'] / med['direct']:>11.2f}"
                        line += f" {med['gateway'] / med['litellm']:>10.1f}"
                    added = statistics.median(p50["gateway"]) - statistics.median(p50["direct"])
                    line += f" {added * 1000:>12.2f} {statistics.median(cpu):>13.2f}"
                    print(line, flush=True)
                    for n in names:
                        c, f, p = (statistics.median(v[i] for v in split[n]) for i in range(3))
                        proxy = f", {n} {p:.2f}" if n != "direct" else ""
                        print(f"{'':>9}CPU ms/req via {n}: client {c:.2f}, fake {f:.2f}{proxy}")
            for n, q in zip(names[1:], procs, strict=False):
                if idle_wall.get(q.pid):
                    share = idle_cpu[q.pid] / idle_wall[q.pid] * 100
                    state = "stopped" if args.pause else "running"
                    print(f"{n} ({state}) while others were measured: {share:.1f}% of a core")
        finally:
            if spy is not None:  # py-spy writes its file on SIGINT
                spy.send_signal(signal.SIGINT)
                await asyncio.wait_for(spy.wait(), 60)
            if args.cprofile and procs:  # uvicorn re-raises SIGTERM (no profile written)
                procs[0].send_signal(signal.SIGINT)
                await asyncio.wait_for(procs[0].wait(), 60)
            for p in reversed(procs):
                await _stop(p)
    if args.profile:
        print(f"py-spy stacks: {Path(args.profile) / 'gateway.folded'}")
    return 0


async def _start_profiler(directory: str, pid: int) -> asyncio.subprocess.Process:
    """py-spy sampling the gateway (``uv pip install py-spy``), folded stacks into directory."""
    spy = shutil.which("py-spy") or str(Path(sys.executable).parent / "py-spy")
    Path(directory).mkdir(parents=True, exist_ok=True)  # noqa: ASYNC240 - once, at start
    out = Path(directory) / "gateway.folded"
    command = [spy, "record", "-f", "raw", "-r", "250", "-o", str(out), "--pid", str(pid)]
    return await asyncio.create_subprocess_exec(*command, stdout=asyncio.subprocess.DEVNULL)


def _args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=float, default=3.0)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--concurrency", type=int, nargs="+", default=[16])
    parser.add_argument("--modes", nargs="+", choices=["json", "sse"], default=["json", "sse"])
    parser.add_argument(
        "--no-litellm", dest="litellm", action="store_false", help="skip LiteLLM's proxy"
    )
    parser.add_argument(
        "--pause",
        action="store_true",
        help="SIGSTOP the proxies not measured in a round (their idle CPU is printed: ~0.2%%)",
    )
    parser.add_argument("--profile", metavar="DIR", help="sample the gateway with py-spy")
    parser.add_argument("--http", default="auto", help="the gateway's --http (h11, httptools)")
    parser.add_argument("--loop", default="auto", help="the gateway's --loop (asyncio, uvloop)")
    parser.add_argument("--cprofile", metavar="FILE", help="run the gateway under cProfile")
    return parser.parse_args(argv)


if __name__ == "__main__":
    sys.exit(asyncio.run(main(_args())))
