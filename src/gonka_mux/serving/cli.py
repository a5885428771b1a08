"""``gonka-serve``: run vLLM from a named profile, supervised, with a health sidecar.

    gonka-serve profiles                         # the registry as a table
    gonka-serve run kimi-k2.5 --dry-run          # hardware fit + the exact vLLM command
    gonka-serve run kimi-k2.5 --port 8000        # start, supervise, drain on SIGTERM/SIGINT
    gonka-serve health --url http://127.0.0.1:8001/health
    gonka-serve gpus                             # what NVML sees, as JSON
    gonka-serve tiny-model ./tiny-model --python .venv-vllm/bin/python
    gonka-serve ray-wait gpus --address HEAD:6379 --gpus 16   # what a Ray head runs first

Exit codes: 0 ok (run: stopped cleanly; health: ready), 1 failure (run: gave up after restarts;
health: not ready), 2 refused (bad profile or options, or the host cannot fit the profile).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shlex
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from gonka_mux._exceptions import ConfigError  # openai-free: `health` and `gpus` stay fast

# Start-up: each command imports only the serving modules it uses. All of them at the top add
# ~37 ms to every `gonka-serve` command (`gonka-serve --help` 73 -> 110 ms, measured); httpx alone
# adds ~100 ms. Imports marked "Lazy: start-up" below are lazy for that reason.

__all__ = ["main"]


def _err(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="gonka-serve",
        description="Launch and supervise vLLM from named model profiles.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument(
        "--profiles",
        action="append",
        default=[],
        metavar="FILE",
        help="extra profiles TOML file (repeatable; also $GONKA_SERVE_PROFILES)",
    )
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("profiles", help="list the serving profiles")
    p.add_argument("--json", action="store_true", help="print JSON instead of a table")

    r = sub.add_parser("run", help="check the GPUs, start vLLM for a profile and supervise it")
    r.add_argument("profile", help="profile name or alias (see `gonka-serve profiles`)")
    r.add_argument("--dry-run", action="store_true", help="print the fit check and command only")
    r.add_argument("--host", default="127.0.0.1", help="vLLM bind address (0.0.0.0 in containers)")
    r.add_argument("--port", type=int, default=8000, help="vLLM port (default 8000)")
    r.add_argument(
        "--health-port",
        type=int,
        default=None,
        help="health sidecar port (default: --port + 1; -1 disables the sidecar)",
    )
    r.add_argument("--health-host", default=None, help="sidecar bind address (default: --host)")
    r.add_argument("--gpus", default=None, help="comma-separated NVML GPU indexes to use, e.g. 0,1")
    r.add_argument("--force", action="store_true", help="start even if the fit check refuses")
    r.add_argument("--model", default=None, help="override the checkpoint (id or local path)")
    r.add_argument("--served-model-name", default=None)
    r.add_argument("--launcher", choices=["vllm", "module"], default=None)
    r.add_argument("--python", default=None, help="interpreter with vLLM (for --launcher module)")
    r.add_argument("--vllm-cmd", default=None, help='command that runs vLLM, e.g. "vllm"')
    r.add_argument("--drain-timeout", type=float, default=None, help="seconds to drain on stop")
    r.add_argument(
        "--drain-notice",
        type=float,
        default=2.0,
        help="seconds between announcing "
        "'draining' and signalling vLLM, so routers stop sending (default 2)",
    )
    r.add_argument("--startup-timeout", type=float, default=None)
    r.add_argument("--stall-timeout", type=float, default=None)
    r.add_argument("--max-restarts", type=int, default=5, help="restarts allowed per hour")
    r.add_argument("--backoff-initial", type=float, default=10.0, help="first restart delay (s)")
    r.add_argument("--backoff-max", type=float, default=300.0, help="restart delay cap (s)")
    r.add_argument("--role", choices=["head", "worker"], default="head", help="multi-node role")
    r.add_argument("--head-address", default=None, help="head node IP (multi-node profiles)")
    r.add_argument("--node-rank", type=int, default=1, help="worker node rank (multi-node, >= 1)")
    r.add_argument(
        "--ray-wait-timeout",
        type=float,
        default=900.0,
        help="Ray profiles: seconds the head waits for every node's GPUs, and a worker for the "
        "head (default 900)",
    )
    r.add_argument(
        "--chat-template",
        default=None,
        metavar="FILE",
        help="chat template for vLLM (replaces the profile's chat_template)",
    )
    r.add_argument(
        "--nice",
        type=int,
        default=0,
        help="run vLLM at a lower CPU priority (0-19; on CPU-only hosts it keeps the sidecar "
        "and the supervisor responsive)",
    )
    r.add_argument(
        "--cpu-affinity",
        default=None,
        metavar="CPUS",
        help='pin vLLM to these cores, e.g. "0" or "0-6" (taskset; on CPU-only hosts leave a '
        "core for the supervisor and the clients)",
    )
    r.add_argument("--log-file", default=None, help="vLLM output log (rotated)")
    r.add_argument("--echo-logs", action="store_true", help="also print every vLLM log line")
    r.epilog = "Arguments after a lone -- are passed to vLLM unchanged."

    h = sub.add_parser("health", help="print a node's health JSON (exit 0 when ready)")
    h.add_argument("--url", default=None, help="sidecar URL (default http://127.0.0.1:8001/health)")
    h.add_argument("--vllm-url", default=None, help="build the report from a vLLM server directly")
    h.add_argument("--timeout", type=float, default=5.0)

    sub.add_parser("gpus", help="print what NVML sees, as JSON")
    sub.add_parser(
        "ray-wait",
        help="wait (bounded) for a Ray head or for all its GPUs (run by Ray launch plans)",
        add_help=False,
    )

    t = sub.add_parser("tiny-model", help="build a tiny random model for CPU smoke tests, offline")
    t.add_argument("out", help="output directory")
    t.add_argument("--python", default=sys.executable, help="interpreter with torch+transformers")
    t.add_argument("--kimi-tokens", action="store_true", help="add Kimi K2 reasoning/tool tokens")
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["ray-wait"]:  # its own argument parser
        # Lazy: start-up (see the note at the top)
        from gonka_mux.serving import raywait

        return raywait.main(argv[1:])
    vllm_args: list[str] = []
    if "--" in argv:  # everything after a lone -- goes to vLLM untouched
        cut = argv.index("--")
        argv, vllm_args = argv[:cut], argv[cut + 1 :]
    args = _parser().parse_args(argv)
    args.vllm_args = vllm_args
    try:
        if args.command == "profiles":
            return _cmd_profiles(args)
        if args.command == "run":
            return _cmd_run(args)
        if args.command == "health":
            return _cmd_health(args)
        if args.command == "gpus":
            return _cmd_gpus()
        if args.command == "tiny-model":
            return _cmd_tiny_model(args)
    except KeyboardInterrupt:
        return 130
    except ConfigError as exc:
        _err(f"gonka-serve: {exc}")
        return 2
    return 2


# ---------------------------------------------------------------------------------- profiles


def _registry(args: argparse.Namespace) -> Any:
    # Lazy: start-up (see the note at the top)
    from gonka_mux.serving.registry import Registry

    return Registry.load(args.profiles)


def _cmd_profiles(args: argparse.Namespace) -> int:
    registry = _registry(args)
    rows = []
    for p in registry:
        rows.append(
            {
                "name": p.name,
                "aliases": list(p.aliases),
                "tier": p.tier,
                "family": p.family,
                "model": p.model,
                "served_model_name": p.served_model_name,
                "gpus": p.total_gpus,
                "nodes": p.nodes,
                "parallel": _parallel(p),
                "min_gpu_memory_gib": p.min_gpu_memory_gib,
                "min_compute_capability": p.min_compute_capability,
                "recipe": p.recipe or None,
                "recipe_vram_minimum_gb": p.recipe_vram_minimum_gb,
                "memory_source": p.memory_source or None,
                "chat_template": p.chat_template,
                "parsers": "/".join(x for x in (p.tool_call_parser, p.reasoning_parser) if x),
                "max_model_len": p.max_model_len,
                "recommended_gpus": p.recommended_gpus,
                "experimental": p.experimental,
                "source": p.source,
            }
        )
    if args.json:
        print(json.dumps(rows, indent=2))
        return 0
    try:
        # optional extra: rich ('serve'/'dashboard'); plain text without it
        from rich.console import Console
        from rich.table import Table
    except ImportError:
        Console = None
    headers = ["profile", "tier", "model", "GPUs", "min GiB/GPU", "parallel", "parsers", "context"]
    table_rows = [
        [
            r["name"]
            + (f" ({', '.join(r['aliases'])})" if r["aliases"] else "")
            + (" [experimental]" if r["experimental"] else ""),
            r["tier"] or "-",
            r["model"],
            "cpu"
            if r["gpus"] == 0
            else (f"{r['gpus']} ({r['nodes']} nodes)" if r["nodes"] > 1 else str(r["gpus"])),
            f"{r['min_gpu_memory_gib']:g}"
            + (f" cc>={r['min_compute_capability']:g}" if r["min_compute_capability"] else "")
            if r["gpus"]
            else "-",
            r["parallel"],
            r["parsers"] or "-",
            str(r["max_model_len"] or "-"),
        ]
        for r in rows
    ]
    if Console is not None:
        table = Table(title="gonka-serve profiles", show_lines=False)
        for h in headers:
            table.add_column(h, overflow="fold")
        for row in table_rows:
            table.add_row(*row)
        Console(width=max(160, _term_width())).print(table)
    else:
        widths = [max(len(h), *(len(row[i]) for row in table_rows)) for i, h in enumerate(headers)]
        print("  ".join(h.ljust(w) for h, w in zip(headers, widths, strict=True)))
        for row in table_rows:
            print("  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)))
    print(
        "\nHardware notes: `gonka-serve run PROFILE --dry-run` shows what a profile needs and "
        "whether this host fits it."
    )
    return 0


def _term_width() -> int:
    try:
        return os.get_terminal_size().columns
    except OSError:
        return 160


def _parallel(p: Any) -> str:
    parts = []
    if p.tensor_parallel_size > 1:
        parts.append(f"TP{p.tensor_parallel_size}")
    if p.pipeline_parallel_size > 1:
        parts.append(f"PP{p.pipeline_parallel_size}")
    if p.data_parallel_size > 1:
        parts.append(f"DP{p.data_parallel_size}")
    if p.enable_expert_parallel:
        parts.append("EP")
    if p.is_multinode:
        parts.append(f"{p.multinode_mode}")
    return "+".join(parts) or "1"


# ---------------------------------------------------------------------------------- run


def _parse_gpus(text: str | None) -> list[int] | None:
    if text is None:
        return None
    try:
        return [int(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise ConfigError(
            f"--gpus {text!r} is not a list of GPU indexes", expected="for example 0,1,2,3"
        ) from None


def _cmd_run(args: argparse.Namespace) -> int:
    # Lazy: start-up (see the note at the top)
    from gonka_mux.serving.command import build_launch, multinode_steps, redact_env
    from gonka_mux.serving.gpu import check_fit, read_gpus

    registry = _registry(args)
    profile = registry.get(args.profile)
    overrides: dict[str, Any] = {}
    if args.startup_timeout is not None:
        overrides["startup_timeout_s"] = args.startup_timeout
    if args.stall_timeout is not None:
        overrides["stall_timeout_s"] = args.stall_timeout
    if args.drain_timeout is not None:
        overrides["drain_timeout_s"] = args.drain_timeout
    if overrides:
        profile = profile.with_overrides(**overrides)

    extra = list(args.vllm_args)

    snapshot = read_gpus()
    worker_of_ray = (
        profile.is_multinode and profile.multinode_mode == "ray" and args.role == "worker"
    )
    fit = check_fit(profile, snapshot, gpu_ids=_parse_gpus(args.gpus))
    plan = build_launch(
        profile,
        host=args.host,
        port=args.port,
        model=args.model,
        served_model_name=args.served_model_name,
        launcher=args.launcher,
        python=args.python,
        vllm_cmd=shlex.split(args.vllm_cmd) if args.vllm_cmd else None,
        extra_args=extra,
        gpu_env=fit.cuda_env if not worker_of_ray else {},
        role=args.role,
        head_address=args.head_address,
        node_rank=args.node_rank,
        nice=args.nice,
        cpu_affinity=args.cpu_affinity,
        chat_template=args.chat_template,
        ray_wait_s=args.ray_wait_timeout,
    )
    health_port = args.port + 1 if args.health_port is None else args.health_port

    header = f"profile {profile.name}: {profile.description or profile.model}"
    if args.dry_run:
        print(header)
        print(f"  model: {args.model or profile.model}  served as: {plan.served_model_name}")
        print(f"  needs: {_needs(profile)}")
        print(f"  memory minimum from: {_memory_source(profile)}")
        if profile.recommended_gpus:
            print(f"  recommended: {profile.recommended_gpus}")
        if profile.experimental:
            print("  EXPERIMENTAL: " + profile.notes)
        elif profile.notes:
            print(f"  notes: {profile.notes}")
        print(f"  GPUs seen: {_gpu_line(snapshot)}")
        print(f"  fit: {fit.explain()}")
        for w in fit.warnings:
            print(f"    skipped {w}")
        print(
            f"  role: {plan.role}; HTTP API: {plan.base_url if plan.serves_http else 'none'}; "
            f"health sidecar: {'off' if health_port < 0 else f'port {health_port}'}"
        )
        print("  env: " + " ".join(f"{k}={v}" for k, v in sorted(redact_env(plan.env).items())))
        template = args.chat_template or profile.chat_template
        if template and plan.serves_http and not Path(template).is_file():
            print(
                f"  chat template: {template} is not on this host (the official vLLM image "
                "ships it); pass --chat-template FILE where it is elsewhere"
            )
        if profile.is_multinode:
            print(
                f"  multi-node launch ({profile.nodes} nodes, {profile.multinode_mode}), "
                "in this order:"
            )
            steps = multinode_steps(
                profile,
                head_address=args.head_address or "HEAD_IP",
                ray_wait_s=args.ray_wait_timeout,
            )
            for i, (node, step) in enumerate(steps, 1):
                print(f"    {i}. {node}: {step}")
        print(f"  command ({plan.role}):" if profile.is_multinode else "  command:")
        for line in plan.shell().splitlines():
            print("    " + line)
        for note in plan.notes:
            print(f"  note: {note}")
        return 0 if fit.ok else 2

    if not fit.ok and not args.force:
        _err(f"gonka-serve: refusing to start {profile.name}: {fit.explain()}")
        if profile.recommended_gpus:
            _err(f"gonka-serve: {profile.name} is meant for: {profile.recommended_gpus}")
        _err(
            "gonka-serve: pick another profile (`gonka-serve profiles`), choose GPUs with --gpus, "
            "or pass --force to try anyway"
        )
        return 2
    return asyncio.run(_serve(args, profile, plan, fit, health_port))


def _needs(profile: Any) -> str:
    if profile.device == "cpu":
        return "no GPU (vLLM CPU backend)"
    text = f"{profile.gpus} GPU(s) per node"
    if profile.is_multinode:
        text += f" x {profile.nodes} nodes ({profile.multinode_mode})"
    text += f", >= {profile.min_gpu_memory_gib:g} GiB each"
    if profile.min_compute_capability:
        text += f", compute capability >= {profile.min_compute_capability:g}"
    return text


def _memory_source(profile: Any) -> str:
    if profile.device == "cpu":
        return "no GPU"
    if profile.recipe_vram_minimum_gb is not None:
        return (
            f"{profile.recipe or 'the vLLM recipe'}: {profile.recipe_vram_minimum_gb:g} GB over "
            f"{profile.total_gpus} GPU(s)"
        )
    return profile.memory_source or "the profile (no source given)"


def _gpu_line(snapshot: Any) -> str:
    if not snapshot.available:
        return f"none ({snapshot.error})"
    return (
        "; ".join(
            f"{g.index}: {g.name} {g.memory_total_gib:.1f} GiB ({g.memory_free_gib:.1f} free)"
            + (f" cc {g.compute_capability:g}" if g.compute_capability else "")
            for g in snapshot.gpus
        )
        or "none"
    )


async def _serve(
    args: argparse.Namespace, profile: Any, plan: Any, fit: Any, health_port: int
) -> int:
    # Lazy: start-up (see the note at the top)
    from gonka_mux.serving.health import HealthReporter, HealthServer
    from gonka_mux.serving.supervisor import Backoff, Supervisor, SupervisorConfig

    log_path = (
        Path(args.log_file)
        if args.log_file
        else (
            Path(os.environ.get("GONKA_SERVE_LOG_DIR", Path.home() / ".cache" / "gonka-serve"))
            / f"{profile.name}-{args.port}.log"
        )
    )
    config = SupervisorConfig(
        startup_timeout_s=profile.startup_timeout_s,
        drain_timeout_s=args.drain_timeout or profile.drain_timeout_s,
        stall_timeout_s=profile.stall_timeout_s,
        drain_notice_s=max(0.0, args.drain_notice),
        log_path=log_path,
    )
    backoff = Backoff(
        initial_s=args.backoff_initial, max_s=args.backoff_max, max_restarts=args.max_restarts
    )
    started = time.monotonic()

    def on_event(event: Any) -> None:
        if event.kind == "log" and not args.echo_logs:
            _err(f"[{time.strftime('%H:%M:%S')}] vllm: {event.message[-300:]}")
        elif event.kind != "log":
            _err(f"[{time.strftime('%H:%M:%S')}] {event.kind}: {event.message}")

    supervisor = Supervisor(
        plan,
        config=config,
        backoff=backoff,
        profile_name=profile.name,
        model=args.model or profile.model,
        gpu_indexes=fit.gpu_indexes,
        on_event=on_event,
        on_log_line=(lambda line: _err(f"vllm| {line}")) if args.echo_logs else None,
    )

    server = None
    if health_port >= 0:
        reporter = HealthReporter(supervisor=supervisor)
        server = HealthServer(reporter, host=args.health_host or args.host, port=health_port)
        await server.start()
        _err(f"gonka-serve: health sidecar at {server.url}")
    _err(
        f"gonka-serve: starting {profile.name} ({plan.served_model_name}) at {plan.base_url}; "
        f"vLLM log: {log_path}"
    )

    loop = asyncio.get_running_loop()
    signals_seen = 0
    kill_tasks: list[asyncio.Task[None]] = []

    def on_signal(signum: int) -> None:
        nonlocal signals_seen
        signals_seen += 1
        if signals_seen == 1:
            _err(f"gonka-serve: {signal.Signals(signum).name}: draining (again to force)")
            supervisor.request_stop()
        else:
            _err("gonka-serve: second signal: killing vLLM now")
            kill_tasks.append(asyncio.ensure_future(supervisor.kill()))

    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, on_signal, sig)
    try:
        code = await supervisor.run()
    finally:
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.remove_signal_handler(sig)
        if server is not None:
            await server.aclose()
            await server.reporter.aclose()
    last = supervisor.last_exit
    _err(
        f"gonka-serve: final state: {supervisor.state.value}; restarts: {supervisor.restarts}; "
        f"ran {time.monotonic() - started:.0f} s"
        + (f"; last exit: {last.reason} (code {last.code})" if last else "")
    )
    return code


# ---------------------------------------------------------------------------------- health


def _cmd_health(args: argparse.Namespace) -> int:
    if args.vllm_url:
        # Lazy: start-up (see the note at the top)
        from gonka_mux.serving.health import HealthReporter

        async def build() -> dict[str, Any]:
            reporter = HealthReporter(vllm_url=args.vllm_url, timeout_s=args.timeout)
            try:
                return await reporter.report()
            finally:
                await reporter.aclose()

        report = asyncio.run(build())
    else:
        # Lazy: start-up (see the note at the top)
        import httpx

        url = args.url or "http://127.0.0.1:8001/health"
        try:
            resp = httpx.get(url, timeout=args.timeout)
            report = resp.json()
        except (httpx.HTTPError, ValueError) as exc:
            print(json.dumps({"state": "down", "ready": False, "url": url, "error": str(exc)}))
            return 1
    print(json.dumps(report, indent=2, default=str))
    return 0 if report.get("ready") else 1


def _cmd_gpus() -> int:
    # Lazy: start-up (see the note at the top)
    from gonka_mux.serving.gpu import read_gpus

    print(json.dumps(read_gpus().to_dict(), indent=2))
    return 0


def _cmd_tiny_model(args: argparse.Namespace) -> int:
    # Lazy: start-up (see the note at the top)
    from gonka_mux.serving import tiny_model

    cmd = [args.python, tiny_model.__file__, args.out]
    if args.kimi_tokens:
        cmd.append("--kimi-tokens")
    return subprocess.call(cmd)
