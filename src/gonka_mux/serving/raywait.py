"""Bounded waits that put a multi-node Ray launch in order (``gonka-serve ray-wait ...``).

Ray's own commands do not wait for each other: ``ray start --address HEAD:PORT`` on a worker
fails when the head's Ray is not up yet, and ``vllm serve`` on the head starts placing ranks at
once, whether the workers have joined or not. gonka-serve's launch plans therefore run:

- on the head: ``ray start --head``, then ``ray-wait gpus`` (until ``ray status`` reports the
  profile's GPUs: every node has joined), then vLLM;
- on a worker: ``ray-wait head`` (until the head's Ray port answers), then
  ``ray start --address HEAD:PORT --block``.

Both waits are bounded (``--timeout``) and print a progress line every ``--progress-every``
seconds, which the supervisor shows as it runs them. Exit codes: 0 ready, 1 timed out.
"""

from __future__ import annotations

import argparse
import re
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

__all__ = ["RayResources", "main", "parse_ray_status", "wait_for_gpus", "wait_for_head"]

_GPU_USAGE = re.compile(r"([\d.]+)\s*/\s*([\d.]+)\s+GPU\b")
_NODE_LINE = re.compile(r"^\s*(\d+)\s+node_[0-9a-fA-F]+")


def _say(message: str) -> None:
    sys.stdout.write(message + "\n")
    sys.stdout.flush()


@dataclass(frozen=True)
class RayResources:
    gpus: float
    nodes: int


def parse_ray_status(text: str) -> RayResources | None:
    """GPUs in the cluster and active nodes, from ``ray status`` output (None if no GPU line).

    ``ray status`` prints ``Active:`` then one `` 1 node_<id>`` line per node type, and under
    ``Usage:`` (``Total Usage:`` in newer Ray) lines such as `` 0.0/16.0 GPU``.
    """
    gpus: float | None = None
    nodes = 0
    in_active = False
    for line in text.splitlines():
        stripped = line.strip()
        if stripped.startswith("Active:"):
            in_active = True
            continue
        if in_active:
            match = _NODE_LINE.match(line)
            if match:
                nodes += int(match.group(1))
                continue
            if stripped and not stripped.startswith("("):
                in_active = False
        if gpus is None:
            usage = _GPU_USAGE.search(line)
            if usage:
                gpus = float(usage.group(2))
    if gpus is None:
        return None
    return RayResources(gpus=gpus, nodes=nodes)


def ray_status(address: str, *, ray_cmd: Sequence[str] = ("ray",), timeout_s: float = 30.0) -> str:
    """The text of ``ray status --address ADDRESS`` ("" when it fails)."""
    try:
        done = subprocess.run(
            [*ray_cmd, "status", f"--address={address}"],
            capture_output=True,
            text=True,
            timeout=timeout_s,
            check=False,
        )
    except (OSError, subprocess.TimeoutExpired):
        return ""
    return done.stdout if done.returncode == 0 else ""


def wait_for_gpus(
    address: str,
    expected_gpus: int,
    *,
    timeout_s: float,
    interval_s: float = 5.0,
    progress_every_s: float = 15.0,
    probe: Callable[[str], str] | None = None,
    say: Callable[[str], None] = _say,
    clock: Callable[[], float] = time.monotonic,
    sleep: Callable[[float], None] = time.sleep,
) -> bool:
    """Poll ``ray status`` until the cluster has ``expected_gpus`` GPUs; False on timeout."""
    status = probe or (lambda addr: ray_status(addr))
    start = clock()
    last_said = -progress_every_s
    seen: RayResources | None = None
    while True:
        seen = parse_ray_status(status(address)) or seen
        elapsed = clock() - start
        if seen is not None and seen.gpus >= expected_gpus:
            say(
                f"Ray at {address} reports {seen.gpus:g} GPUs on {seen.nodes or '?'} node(s) "
                f"after {elapsed:.0f} s: starting vLLM"
            )
            return True
        if elapsed >= timeout_s:
            have = f"{seen.gpus:g} of {expected_gpus}" if seen else "no answer from Ray"
            say(
                f"gave up after {timeout_s:g} s waiting for {expected_gpus} GPUs in the Ray "
                f"cluster at {address} ({have}); start the worker node(s) with --role worker "
                "--head-address pointing here"
            )
            return False
        if elapsed - last_said >= progress_every_s:
            last_said = elapsed
            if seen is None:
                say(f"waiting for Ray at {address} to answer ({elapsed:.0f}/{timeout_s:g} s)")
            else:
                say(
                    f"Ray has {seen.gpus:g}/{expected_gpus} GPUs on {seen.nodes or '?'} node(s): "
                    f"waiting for the workers to join ({elapsed:.0f}/{timeout_s:g} s)"
                )
        sleep(interval_s)


def _port_open(address: str, timeout_s: float = 2.0) -> bool:
    host, _, port = address.rpartition(":")
    try:
        with socket.create_connection((host, int(port)), timeout=timeout_s):
            return True
    except (OSError, ValueError):
        return False


def wait_for_head(
    address: str,
    *,
    timeout_s: float,
    interval_s: float = 2.0,
    progress_every_s: float = 15.0,
    probe: Callable[[str], bool] = _port_open,
    say: Callable[[str], None] = _say,
    clock: Callable[[], float] = time.monotonic,
    sleep: Callable[[float], None] = time.sleep,
) -> bool:
    """Wait until the head's Ray (GCS) port at ``HOST:PORT`` accepts connections."""
    start = clock()
    last_said = -progress_every_s
    while True:
        elapsed = clock() - start
        if probe(address):
            say(f"the head's Ray at {address} answers after {elapsed:.0f} s: joining")
            return True
        if elapsed >= timeout_s:
            say(
                f"gave up after {timeout_s:g} s: nothing answers at {address}; start the head "
                "node first (gonka-serve run PROFILE --role head)"
            )
            return False
        if elapsed - last_said >= progress_every_s:
            last_said = elapsed
            say(f"waiting for the head's Ray at {address} ({elapsed:.0f}/{timeout_s:g} s)")
        sleep(interval_s)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="gonka-serve ray-wait",
        description="Wait (bounded) for a Ray cluster: its head, or all its GPUs.",
    )
    parser.add_argument("what", choices=["head", "gpus"])
    parser.add_argument("--address", required=True, help="the head's Ray address, HOST:PORT")
    parser.add_argument("--gpus", type=int, default=0, help="GPUs to wait for (gpus)")
    parser.add_argument("--timeout", type=float, default=900.0, help="seconds (default 900)")
    parser.add_argument("--interval", type=float, default=None, help="seconds between polls")
    parser.add_argument("--progress-every", type=float, default=15.0)
    parser.add_argument("--ray", default="ray", help="the ray command (default: ray)")
    args = parser.parse_args(argv)

    say = _say
    if args.what == "head":
        return (
            0
            if wait_for_head(
                args.address,
                timeout_s=args.timeout,
                interval_s=args.interval or 2.0,
                progress_every_s=args.progress_every,
                say=say,
            )
            else 1
        )
    if args.gpus < 1:
        parser.error("ray-wait gpus needs --gpus N")
    ray_cmd = (args.ray,)
    return (
        0
        if wait_for_gpus(
            args.address,
            args.gpus,
            timeout_s=args.timeout,
            interval_s=args.interval or 5.0,
            progress_every_s=args.progress_every,
            probe=lambda addr: ray_status(addr, ray_cmd=ray_cmd),
            say=say,
        )
        else 1
    )


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
