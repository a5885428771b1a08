"""The real-vLLM CI leg: gonka-serve runs real vLLM (CPU build) on a tiny offline model.

Called by .ci/vllm_leg.sh with the main environment's Python; vLLM lives in its own environment
(``--vllm-python``). Steps, each asserted:

1. every shipped profile's command line is accepted by the installed vLLM's argument parser;
2. ``gonka-serve run tiny-cpu`` starts real vLLM, supervised, with the health sidecar;
3. a Multiplexer reaches it with the node's health signal and streams a reply;
4. under concurrent load the sidecar and the node monitor report real queue depth
   (running = max-num-seqs, waiting > 0) and the endpoint's external load rises;
5. SIGTERM to gonka-serve with requests running *and* queued: the sidecar says "draining",
   every request completes with all its tokens, gonka-serve exits 0 with state "stopped".

Not a pytest module on purpose: it needs vLLM, which the unit-test environments do not carry.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import httpx

from gonka_mux.serving.command import build_launch
from gonka_mux.serving.registry import Registry
from gonka_mux.vllm_node import VllmNodeMonitor

HERE = Path(__file__).resolve().parent
GONKA_SERVE = str(Path(sys.executable).with_name("gonka-serve"))
MODEL = "tiny"
SEEN_LOAD = {"peak": 0.0}  # the highest external load set by the node monitor's callback
T0 = time.monotonic()


def say(message: str) -> None:
    print(f"[vllm-leg {time.monotonic() - T0:6.1f}s] {message}", flush=True)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class SidecarPoller:
    """Samples the sidecar from a separate process (sidecar_poller.py) into a JSON-lines file.

    Not a thread of this driver: on 2 cores a loaded vLLM starves this process for seconds at a
    time, and a burst of requests can come and go between two of its samples.
    """

    def __init__(self, health_url: str, path: Path) -> None:
        self.path = path
        path.unlink(missing_ok=True)
        self.proc = subprocess.Popen(
            [sys.executable, str(HERE / "sidecar_poller.py"), health_url, str(path), "0.1"]
        )

    @property
    def samples(self) -> list[dict[str, Any]]:
        if not self.path.exists():
            return []
        lines = self.path.read_text().splitlines()
        return [json.loads(line) for line in lines if line.endswith("}")]

    def peak(self, key: str, since: int = 0) -> float:
        return max((s[key] for s in self.samples[since:]), default=0.0)

    def stop(self) -> None:
        self.proc.terminate()
        self.proc.wait(10)


class LoadSampler:
    """Keeps the highest ``endpoint.external_load`` the router saw (sampled in this loop)."""

    def __init__(self, endpoint: Any) -> None:
        self.endpoint = endpoint
        self.peak = 0.0
        self.task = asyncio.create_task(self._run())

    def note(self) -> None:
        self.peak = max(self.peak, float(getattr(self.endpoint, "external_load", 0.0) or 0.0))

    async def _run(self) -> None:
        while True:
            self.note()
            await asyncio.sleep(0.05)

    async def stop(self) -> None:
        self.task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self.task


def check_flags(vllm_python: str) -> None:
    commands = []
    for p in Registry.load(environ={}):
        for role in ("head", "worker") if p.is_multinode else ("head",):
            plan = build_launch(p, role=role, head_address="10.0.0.1", launcher="vllm")
            if plan.argv[0] == "ray":
                continue  # the Ray worker runs `ray start`, not vLLM
            argv = list(plan.argv)
            commands.append([f"{p.name}/{plan.role}", argv[argv.index("serve") + 1 :]])
    result = subprocess.run(
        [vllm_python, str(HERE / "check_vllm_flags.py")],
        input=json.dumps(commands),
        capture_output=True,
        text=True,
        check=False,
    )
    print(result.stdout, end="")
    assert result.returncode == 0, (
        f"vLLM rejected a profile's flags:\n{result.stdout}{result.stderr}"
    )
    say(f"step 1 ok: {len(commands)} profile command lines accepted by vLLM's own parser")


async def wait_ready(
    health_url: str, proc: asyncio.subprocess.Process, timeout: float
) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    async with httpx.AsyncClient(timeout=5) as client:
        while time.monotonic() < deadline:
            assert proc.returncode is None, "gonka-serve exited before vLLM was ready"
            try:
                resp = await client.get(health_url)
                if resp.status_code == 200:
                    return resp.json()
            except httpx.HTTPError:
                pass
            await asyncio.sleep(0.5)
    raise AssertionError(f"vLLM not ready after {timeout} s")


async def pump_stderr(proc: asyncio.subprocess.Process, lines: list[str]) -> None:
    assert proc.stderr is not None
    async for raw in proc.stderr:
        line = raw.decode(errors="replace").rstrip()
        lines.append(line)
        print(f"    | {line}", flush=True)


async def stream_one(mux: Any, max_tokens: int, tag: str) -> dict[str, Any]:
    stream = await mux.chat.completions.create(
        model=MODEL,
        messages=[{"role": "user", "content": f"hello {tag}"}],
        max_tokens=max_tokens,
        stream=True,
        stream_options={"include_usage": True},
        extra_body={"ignore_eos": True},  # a random model may stop early; we want exact counts
    )
    text, finish, usage, chunks = [], None, None, 0
    async for chunk in stream:
        chunks += 1
        if chunk.usage is not None:
            usage = chunk.usage.completion_tokens
        for choice in chunk.choices:
            if choice.delta.content:
                text.append(choice.delta.content)
            if choice.finish_reason:
                finish = choice.finish_reason
    return {"text": "".join(text), "finish": finish, "tokens": usage, "chunks": chunks}


async def complete_one(mux: Any, max_tokens: int, tag: str) -> dict[str, Any]:
    """A non-streamed request: keeps vLLM's API server idle while the engine works.

    On 2 CPU cores, many token-by-token streams saturate the API-server process (it also serves
    /metrics), and the queue would be over before a scrape could see it.
    """
    reply = await mux.chat.completions.create(
        model=MODEL,
        messages=[{"role": "user", "content": f"hello {tag}"}],
        max_tokens=max_tokens,
        extra_body={"ignore_eos": True},
    )
    choice = reply.choices[0]
    return {
        "text": choice.message.content or "",
        "finish": choice.finish_reason,
        "tokens": reply.usage.completion_tokens if reply.usage else None,
        "chunks": 1,
    }


async def attach_node(mux: Any, base_url: str, health_url: str) -> tuple[Any, Any]:
    """Register the node: the multiplexer's own add_vllm_node when it has one, else by hand.

    Returns ``(endpoint, monitor)``; ``monitor`` is None when the multiplexer owns it.
    """
    if hasattr(mux, "add_vllm_node"):
        node = mux.add_vllm_node(base_url + "/v1", health_url=health_url)
        if asyncio.iscoroutine(node):
            node = await node
        say(f"node registered with mux.add_vllm_node -> {type(node).__name__}")
        return node, None
    holder: dict[str, Any] = {}

    def on_update(snapshot: Any) -> None:
        if "ep" in holder:
            holder["ep"].external_load = snapshot.queue_depth
            SEEN_LOAD["peak"] = max(SEEN_LOAD["peak"], holder["ep"].external_load)

    monitor = VllmNodeMonitor(base_url, health_url=health_url, interval=0.25, on_update=on_update)
    snapshot = await monitor.start()
    assert snapshot.ready and snapshot.models == (MODEL,), snapshot
    holder["ep"] = mux.add_endpoint(
        base_url + "/v1", models=list(snapshot.models), name="tiny-node"
    )
    say(
        "node registered by hand (the mux has no add_vllm_node yet): add_endpoint + VllmNodeMonitor"
    )
    return holder["ep"], monitor


async def run(args: argparse.Namespace) -> None:
    if not args.skip_flag_check:
        check_flags(args.vllm_python)

    port = free_port()
    health_port = free_port()
    base_url = f"http://127.0.0.1:{port}"
    health_url = f"http://127.0.0.1:{health_port}/health"
    log_file = Path(args.work) / "vllm-leg-vllm.log"
    log_file.unlink(missing_ok=True)
    cmd = [
        GONKA_SERVE,
        "run",
        "tiny-cpu",
        "--model",
        args.model,
        "--python",
        args.vllm_python,
        "--port",
        str(port),
        "--health-port",
        str(health_port),
        "--drain-notice",
        "1",
        # vLLM on core 0 only: left on both cores of a 2-core machine it starves every other
        # process (this driver, the sidecar) for seconds, and a burst of requests can come and go
        # before a scrape gets CPU time.
        "--cpu-affinity",
        "0",
        "--log-file",
        str(log_file),
    ]
    say("step 2: " + " ".join(cmd))
    started = time.monotonic()
    proc = await asyncio.create_subprocess_exec(
        *cmd, stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.PIPE
    )
    serve_lines: list[str] = []
    pump = asyncio.create_task(pump_stderr(proc, serve_lines))
    poller: SidecarPoller | None = None
    try:
        report = await wait_ready(health_url, proc, timeout=args.ready_timeout)
        assert report["models"] == [MODEL] and report["vllm"]["version"], report
        say(
            f"step 2 ok: ready in {time.monotonic() - started:.0f} s, "
            f"vLLM {report['vllm']['version']}, gpu available={report['gpu']['available']}"
        )

        from gonka_mux import AsyncMultiplexer

        mux = AsyncMultiplexer(max_attempts=1)
        endpoint, monitor = await attach_node(mux, base_url, health_url)
        await asyncio.sleep(0.5)  # let the first poll land

        # Step 3: one streamed reply through the multiplexer.
        reply = await stream_one(mux, 24, "stream")
        assert reply["finish"] == "length" and reply["tokens"] == 24 and reply["text"], reply
        say(
            f"step 3 ok: streamed {reply['chunks']} chunks, {reply['tokens']} tokens: "
            f"{reply['text'][:40]!r}"
        )

        # Step 4: real queue depth under concurrent load (max-num-seqs 2 -> the rest wait).
        poller = SidecarPoller(health_url, Path(args.work) / "vllm-leg-sidecar.jsonl")
        load_sampler = LoadSampler(endpoint)
        # Long enough (seconds) to be seen: this VM can stall every process for seconds at a time
        # while vLLM burns both cores, and a short burst can end between two scrapes.
        loads = [
            asyncio.create_task(complete_one(mux, args.tokens, f"load{i}"))
            for i in range(args.load_requests)
        ]
        results = await asyncio.gather(*loads)
        await asyncio.sleep(0.5)  # one more monitor poll after the load
        assert all(r["finish"] == "length" and r["tokens"] == args.tokens for r in results), results
        load_sampler.note()
        peak = {k: poller.peak(k) for k in ("running", "waiting")}
        peak["external_load"] = max(load_sampler.peak, SEEN_LOAD["peak"])
        assert peak["running"] == 2 and peak["waiting"] >= 1, peak
        assert peak["external_load"] >= 2, peak  # the router saw the node's queue
        say(
            f"step 4 ok: {args.load_requests} concurrent requests of {args.tokens} tokens each; "
            "sidecar peak "
            f"running={peak['running']:g} waiting={peak['waiting']:g} ({len(poller.samples)} "
            f"samples); endpoint.external_load peak={peak['external_load']:g}"
        )

        # Step 5: graceful stop with requests running and queued.
        mark = len(poller.samples)
        # Two streams (the client sees tokens arrive during the drain) and plain requests.
        inflight = [
            asyncio.create_task(
                (stream_one if i < 2 else complete_one)(mux, args.drain_tokens, f"drain{i}")
            )
            for i in range(args.drain_requests)
        ]
        deadline = time.monotonic() + 60
        while not any(smp["running"] >= 1 for smp in poller.samples[mark:]):
            assert time.monotonic() < deadline, poller.samples[-5:]
            await asyncio.sleep(0.05)
        last = poller.samples[-1]
        say(
            f"step 5: SIGTERM to gonka-serve (sidecar last saw running={last['running']:g} "
            f"waiting={last['waiting']:g})"
        )
        proc.send_signal(signal.SIGTERM)
        drained = await asyncio.gather(*inflight, return_exceptions=True)
        code = await asyncio.wait_for(proc.wait(), 120)
        await pump
        poller.stop()
        await load_sampler.stop()
        states = {smp["state"] for smp in poller.samples[mark:]}
        failures = [r for r in drained if isinstance(r, BaseException)]
        assert not failures, failures
        assert all(r["finish"] == "length" and r["tokens"] == args.drain_tokens for r in drained), (
            drained
        )
        assert "draining" in states, states
        assert code == 0, code
        assert any("final state: stopped" in line for line in serve_lines), serve_lines[-5:]
        # vLLM's own account of the drain: how many requests (running + queued) it finished.
        drain_lines = [
            line for line in log_file.read_text().splitlines() if "draining in-flight" in line
        ]
        assert drain_lines, "vLLM did not log a drain"
        drained_count = int(drain_lines[-1].split("count=")[1].split()[0])
        assert drained_count >= 3, drain_lines[-1]  # more than max-num-seqs: queued ones too
        say(
            f"step 5 ok: vLLM drained {drained_count} in-flight requests (running + queued); "
            f"sidecar states seen {sorted(states)}; all {len(drained)} requests completed with "
            f"{args.drain_tokens} tokens each; gonka-serve exit code {code}"
        )
        if monitor is not None:
            await monitor.aclose()
        await mux.aclose()
    finally:
        if poller is not None and poller.proc.poll() is None:
            poller.stop()
        if proc.returncode is None:
            proc.send_signal(signal.SIGINT)
            proc.send_signal(signal.SIGINT)  # second signal: kill now
            await asyncio.wait_for(proc.wait(), 30)
        pump.cancel()


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--vllm-python", required=True)
    parser.add_argument("--model", required=True)
    parser.add_argument("--work", default=".ci-work")
    parser.add_argument("--ready-timeout", type=float, default=420)
    parser.add_argument("--load-requests", type=int, default=12)
    parser.add_argument("--tokens", type=int, default=1024)
    parser.add_argument("--drain-requests", type=int, default=8)
    parser.add_argument("--drain-tokens", type=int, default=1024)
    parser.add_argument("--skip-flag-check", action="store_true")
    args = parser.parse_args()
    os.makedirs(args.work, exist_ok=True)
    asyncio.run(run(args))
    say("all steps passed")
    return 0


if __name__ == "__main__":
    sys.exit(main())
