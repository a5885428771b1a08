"""The real-vLLM CI leg: gonka-serve runs real vLLM (CPU build) on a tiny offline model.

Called by .ci/vllm_leg.sh with the main environment's Python; vLLM lives in its own environment
(``--vllm-python``). Steps, each asserted:

1. every shipped profile against the installed vLLM: its argument parser accepts the command
   line, every environment variable is one vLLM's envs.py defines (or a named other package's),
   every tool/reasoning parser name is registered and loads; the Ray profiles' launch order
   (head: ``ray start --head``, wait for all GPUs, vLLM; worker: wait for the head, join), and,
   where Ray is installed, its CLI accepts those flags and the GPU wait works against a real
   Ray head;
2. ``gonka-serve run tiny-cpu`` starts real vLLM, supervised, with the health sidecar;
3. a Multiplexer reaches it with the node's health signal and streams a reply;
3b. the vLLM child is killed (SIGKILL): gonka-serve restarts it, and the Multiplexer (this node
   only, no fallback) serves again within one health poll of the sidecar saying ready; the
   "still loading" lines quote only the new process;
4. under concurrent load the sidecar and the node monitor report real queue depth
   (running = max-num-seqs, waiting > 0) and the endpoint's external load rises;
5. SIGTERM to gonka-serve with requests running *and* queued: the sidecar says "draining",
   every request completes with all its tokens, gonka-serve exits 0 with state "stopped", and
   vLLM's teardown traceback shows up as one summary line, not as a traceback.

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

from gonka_mux.serving.command import FOREIGN_ENV, RAY_WAIT_MODULE, build_launch
from gonka_mux.serving.registry import Registry

HERE = Path(__file__).resolve().parent
GONKA_SERVE = str(Path(sys.executable).with_name("gonka-serve"))
MODEL = "tiny"
NODE_POLL_S = 1.0  # the Multiplexer's health poll of the node
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


def check_profiles(vllm_python: str) -> None:
    commands = []
    for p in Registry.load(environ={}):
        for role in ("head", "worker") if p.is_multinode else ("head",):
            plan = build_launch(p, role=role, head_address="10.0.0.1", launcher="vllm")
            if plan.argv[0] == "ray":
                continue  # the Ray worker runs `ray start`, not vLLM (checked in check_ray_order)
            argv = list(plan.argv)
            commands.append(
                {
                    "name": f"{p.name}/{plan.role}",
                    "argv": argv[argv.index("serve") + 1 :],
                    "env": dict(plan.env),
                    "tool_call_parser": p.tool_call_parser,
                    "reasoning_parser": p.reasoning_parser,
                    "chat_template": p.chat_template,
                }
            )
    result = subprocess.run(
        [vllm_python, str(HERE / "check_vllm_flags.py")],
        input=json.dumps({"commands": commands, "foreign_env": FOREIGN_ENV}),
        capture_output=True,
        text=True,
        check=False,
    )
    print(result.stdout, end="")
    assert result.returncode == 0, (
        f"a profile does not match the installed vLLM:\n{result.stdout}{result.stderr[-3000:]}"
    )
    say(
        f"step 1 ok: {len(commands)} profile command lines accepted by vLLM's own parser; their "
        "env vars defined by vLLM (or a named package) and parser names registered"
    )


QUIET = ("--include-dashboard=false", "--disable-usage-stats")


def check_ray_order(vllm_python: str, ray_cli: str | None) -> None:
    """The Ray launch order, from the plans gonka-serve runs, and against real Ray if present."""
    ray_profiles = [
        p for p in Registry.load(environ={}) if p.is_multinode and p.multinode_mode == "ray"
    ]
    assert ray_profiles, "no Ray profile to check"
    for p in ray_profiles:
        head = build_launch(p, role="head", head_address="10.0.0.1", launcher="vllm")
        worker = build_launch(p, role="worker", head_address="10.0.0.1", launcher="vllm")
        assert head.setup[0][:3] == ("ray", "start", "--head"), head.setup
        wait = head.setup[1]
        assert RAY_WAIT_MODULE in wait and wait[wait.index(RAY_WAIT_MODULE) + 1] == "gpus"
        assert wait[wait.index("--gpus") + 1] == str(p.total_gpus), wait
        assert head.argv[1] == "serve" and head.teardown == (("ray", "stop"),)
        assert RAY_WAIT_MODULE in worker.setup[0] and "head" in worker.setup[0], worker.setup
        assert worker.argv == ("ray", "start", "--address=10.0.0.1:6379", "--block")
    ray = Path(ray_cli) if ray_cli else Path(vllm_python).with_name("ray")
    if not ray.exists():
        say(f"step 1b ok: Ray order in {len(ray_profiles)} plan(s); no Ray CLI to run ({ray})")
        return
    helps = {
        sub: subprocess.run(
            [str(ray), sub, "--help"], capture_output=True, text=True, check=False, timeout=120
        ).stdout
        for sub in ("start", "status")
    }
    for flag in ("--head", "--port", "--node-ip-address", "--address", "--block", "--num-gpus"):
        assert flag in helps["start"], f"ray start has no {flag}"
    assert "--address" in helps["status"], "ray status has no --address"
    # A real one-node Ray head that declares 2 (logical) GPUs: the head's wait passes for 2 and
    # times out, with its message, for 4, the case of a worker that never joined.
    port = free_port()
    env = {**os.environ, "RAY_USAGE_STATS_ENABLED": "0"}
    started = subprocess.run(
        [str(ray), "start", "--head", f"--port={port}", "--num-gpus=2", "--num-cpus=1", *QUIET],
        capture_output=True,
        text=True,
        env=env,
        check=False,
        timeout=180,
    )
    assert started.returncode == 0, started.stdout + started.stderr
    try:
        address = f"127.0.0.1:{port}"
        wait = [sys.executable, "-m", RAY_WAIT_MODULE, "gpus", "--address", address]
        ok = subprocess.run(
            [*wait, "--gpus", "2", "--timeout", "120", "--ray", str(ray)],
            capture_output=True,
            text=True,
            env=env,
            check=False,
            timeout=180,
        )
        assert ok.returncode == 0 and "reports 2 GPUs" in ok.stdout, ok.stdout + ok.stderr
        short = subprocess.run(
            [*wait, "--gpus", "4", "--timeout", "10", "--interval", "2", "--ray", str(ray)],
            capture_output=True,
            text=True,
            env=env,
            check=False,
            timeout=180,
        )
        assert short.returncode == 1 and "2 of 4" in short.stdout, short.stdout + short.stderr
    finally:
        subprocess.run([str(ray), "stop", "--force"], capture_output=True, env=env, timeout=120)
    say(
        f"step 1b ok: Ray order in {len(ray_profiles)} plan(s); Ray's CLI takes the flags; the "
        "head's GPU wait passed on a real Ray head with 2 GPUs and timed out waiting for 4"
    )


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
    """Register the node with ``mux.add_vllm_node`` (a VllmNodeSource behind it). Returns
    ``(endpoint, None)``: the multiplexer owns the node's monitor."""
    node = await mux.add_vllm_node(base_url + "/v1", health_url=health_url, interval=NODE_POLL_S)
    say(f"node registered with mux.add_vllm_node (health poll every {NODE_POLL_S:g} s)")
    return node, None


async def sidecar_state(client: httpx.AsyncClient, health_url: str) -> dict[str, Any]:
    try:
        return (await client.get(health_url)).json()
    except (httpx.HTTPError, ValueError):
        return {"state": "unreachable"}


async def kill_and_recover(
    mux: Any, health_url: str, serve_lines: list[str], timeout: float
) -> None:
    """Step 3b: SIGKILL the vLLM child; gonka-serve restarts it; the Multiplexer (this node only)
    serves again within one poll of the sidecar saying ready."""
    async with httpx.AsyncClient(timeout=5) as client:
        before = await sidecar_state(client, health_url)
        pid, restarts = before["vllm"]["pid"], before["restarts"]
        assert pid and before["state"] == "ready", before
        mark = len(serve_lines)
        os.kill(pid, signal.SIGKILL)
        say(f"step 3b: SIGKILL to the vLLM API server (pid {pid})")
        deadline = time.monotonic() + timeout
        seen_down = False
        while True:  # watch the sidecar closely: the moment it says ready again
            report = await sidecar_state(client, health_url)
            seen_down = seen_down or report.get("state") != "ready"
            if seen_down and report.get("state") == "ready":
                ready_at = time.monotonic()
                break
            assert time.monotonic() < deadline, f"not ready again after {timeout} s: {report}"
            await asyncio.sleep(0.05)
        assert report["restarts"] == restarts + 1 and report["vllm"]["pid"] != pid, report
    attempts = 0
    while True:  # the first request that succeeds after ready
        attempts += 1
        try:
            reply = await complete_one(mux, 4, "after-restart")
            break
        except Exception as exc:
            assert time.monotonic() - ready_at < NODE_POLL_S + 30, exc
            await asyncio.sleep(0.05)
    served_after = time.monotonic() - ready_at
    assert reply["tokens"] == 4, reply
    # One poll, plus slack for a 2-core box that vLLM's engine keeps busy.
    assert served_after <= NODE_POLL_S + 3.0, served_after
    loading = [line for line in serve_lines[mark:] if "still loading" in line]
    stale = [line for line in loading if f"pid={pid})" in line or f"pid {pid}" in line]
    assert not stale, stale  # "still loading" quotes the new process, never the killed one
    say(
        f"step 3b ok: restarted (restart {restarts + 1}, new pid {report['vllm']['pid']}); the "
        f"Multiplexer served {served_after:.2f} s after the sidecar said ready ({attempts} "
        f"attempt(s), poll {NODE_POLL_S:g} s); {len(loading)} loading line(s), none stale"
    )


async def run(args: argparse.Namespace) -> None:
    if not args.skip_flag_check:
        check_profiles(args.vllm_python)
        check_ray_order(args.vllm_python, args.ray)

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
        "--backoff-initial",
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

        # Step 3b: kill the vLLM child under gonka-serve; back within one poll of ready.
        await kill_and_recover(mux, health_url, serve_lines, timeout=args.ready_timeout)

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
        # Clean logs: vLLM's teardown traceback is one summary line, not a traceback.
        tail = serve_lines[serve_lines.index(next(x for x in serve_lines if "draining:" in x)) :]
        assert not any("Traceback (most recent call last)" in line for line in tail), tail
        summaries = [line for line in tail if "shutdown printed" in line]
        assert len(summaries) <= 1, summaries
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
    parser.add_argument("--ray", default=None, help="a Ray CLI for the Ray checks")
    args = parser.parse_args()
    os.makedirs(args.work, exist_ok=True)
    asyncio.run(run(args))
    say("all steps passed")
    return 0


if __name__ == "__main__":
    sys.exit(main())
