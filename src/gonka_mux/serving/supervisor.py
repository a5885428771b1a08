"""Run one vLLM server and keep it serving: readiness, liveness, restarts, graceful drain.

States::

    starting -> ready -> draining -> stopped
        ^         |
        |         v (exit, /health failing, or a stall)
      (backoff) crashed --(too many restarts)--> failed

- Readiness: ``/health`` answers 200 *and* ``/v1/models`` lists the served name. vLLM binds its
  port only once the engine is up, so "connection refused" just means "still loading".
- Liveness: ``/health`` (503 once the engine is dead) plus a stall check, because ``/health`` only
  reports a dead engine, not a hung one: requests running while the generated-token counter stays
  flat for ``stall_timeout_s`` means stuck.
- Restart: the process group is killed (vLLM's engine and workers are children of the API server),
  then restarted after an exponential backoff; more than ``max_restarts`` within ``window_s`` gives
  up with state ``failed``.
- Graceful stop: mark ``draining`` first (the health sidecar turns 503 so routers stop sending),
  then SIGTERM to the API-server process *only* — vLLM drains in-flight requests for
  ``--shutdown-timeout`` seconds — and SIGKILL the whole group if it outlives the drain plus a
  grace period. (SIGTERM to the whole group kills the engine workers mid-drain and every in-flight
  request fails with 500.)
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import logging
import os
import re
import signal
import socket
import time
from collections import deque
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import httpx

from gonka_mux.serving.command import redact_text
from gonka_mux.serving.metrics import VllmMetrics

if TYPE_CHECKING:
    from gonka_mux.serving.command import LaunchPlan

__all__ = [
    "Backoff",
    "ExitInfo",
    "State",
    "Supervisor",
    "SupervisorConfig",
    "SupervisorEvent",
]

logger = logging.getLogger("gonka_mux.serving.supervisor")


class State(str, enum.Enum):
    STOPPED = "stopped"
    STARTING = "starting"
    READY = "ready"
    DRAINING = "draining"
    CRASHED = "crashed"
    FAILED = "failed"


@dataclass(frozen=True)
class Backoff:
    """Exponential restart delay with a cap, and a restart budget per time window."""

    initial_s: float = 10.0
    factor: float = 2.0
    max_s: float = 300.0
    max_restarts: int = 5
    window_s: float = 3600.0
    # A server that stayed ready this long counts as recovered: the next crash starts over.
    reset_after_s: float = 600.0

    def delay(self, consecutive_failures: int) -> float:
        """Delay before restart number ``consecutive_failures`` (1-based)."""
        exponent = max(0, consecutive_failures - 1)
        return float(min(self.max_s, self.initial_s * self.factor**exponent))


@dataclass(frozen=True)
class SupervisorConfig:
    startup_timeout_s: float = 1800.0
    drain_timeout_s: float = 60.0
    stall_timeout_s: float = 120.0
    poll_interval_s: float = 2.0
    liveness_interval_s: float = 5.0
    health_failures: int = 3
    probe_timeout_s: float = 5.0
    # Extra wait after the drain budget before the group is killed (vLLM also needs to tear down).
    kill_grace_s: float = 30.0
    # On a restart (crash, stall) there is nothing worth draining: SIGTERM, then SIGKILL after this.
    restart_term_grace_s: float = 10.0
    # Pause between announcing "draining" and signalling vLLM, so pollers see it and stop routing.
    drain_notice_s: float = 0.0
    progress_every_s: float = 15.0
    log_path: Path | None = None
    log_max_bytes: int = 10 * 1024 * 1024
    log_backups: int = 3
    log_tail_lines: int = 50


@dataclass(frozen=True)
class ExitInfo:
    code: int | None
    reason: str
    at: float
    tail: tuple[str, ...] = ()

    def to_dict(self) -> dict[str, Any]:
        return {
            "code": self.code,
            "reason": self.reason,
            "at": self.at,
            "log_tail": list(self.tail),
        }


@dataclass(frozen=True)
class SupervisorEvent:
    """Something the operator may want to see (the CLI prints these)."""

    kind: str  # state | progress | log | restart | error
    message: str
    state: State
    data: Mapping[str, Any] = field(default_factory=dict)


# Log lines worth surfacing while a big model loads (minutes to an hour), and fatal signs.
_PROGRESS_PATTERNS = [
    re.compile(p, re.IGNORECASE)
    for p in (
        r"Loading (model )?weights took",
        r"Model loading took",
        r"init engine .* took",
        r"Starting vLLM (API )?server",
        r"Application startup complete",
        r"Capturing CUDA graphs",
        r"Compil(ing|ation) .*took",
        r"Available KV cache memory",
        r"maximum concurrency",
        r"draining in-flight requests",
    )
]
_ERROR_PATTERNS = [
    re.compile(p, re.IGNORECASE)
    for p in (
        r"EngineCore encountered a fatal error",
        r"CUDA out of memory",
        r"OutOfMemoryError",
        r"EngineDeadError",
        r"^\S*Error: ",
        r"RuntimeError",
    )
]


# Lines of a Python traceback as vLLM's loggers print them (with or without a log prefix).
_TRACEBACK_LINE = re.compile(
    r"Traceback \(most recent call last\)|^\s*(\(\w+ pid=\d+\)\s*)?(ERROR|CRITICAL)\b|"
    r'^\s*File "|^\s+\S|^\s*\^+\s*$'
)
_ERROR_NAME = re.compile(r"\b[A-Z]\w*(Error|Exception)\b")


class _RotatingLog:
    """Append-only log file rotated by size (``.1``, ``.2``, ...), written from the event loop."""

    def __init__(self, path: Path, max_bytes: int, backups: int) -> None:
        self.path = path
        self.max_bytes = max_bytes
        self.backups = backups
        path.parent.mkdir(parents=True, exist_ok=True)
        self._fh = path.open("ab")

    def write(self, line: bytes) -> None:
        self._fh.write(line)
        self._fh.flush()
        if self._fh.tell() >= self.max_bytes:
            self._rotate()

    def _rotate(self) -> None:
        self._fh.close()
        for i in range(self.backups - 1, 0, -1):
            older = self.path.with_name(f"{self.path.name}.{i}")
            if older.exists():
                older.replace(self.path.with_name(f"{self.path.name}.{i + 1}"))
        if self.backups > 0:
            self.path.replace(self.path.with_name(f"{self.path.name}.1"))
        self._fh = self.path.open("wb")

    def close(self) -> None:
        self._fh.close()


def _argv_value(argv: tuple[str, ...], flag: str) -> str | None:
    for i, arg in enumerate(argv):
        if arg == flag and i + 1 < len(argv):
            return argv[i + 1]
        if arg.startswith(flag + "="):
            return arg.split("=", 1)[1]
    return None


async def _wait_exit(proc: asyncio.subprocess.Process, poll_s: float = 0.05) -> int:
    """Wait for the process itself to exit.

    Not ``proc.wait()``: on Python 3.11 that also waits for its stdout pipe to close, and vLLM's
    engine processes (same group, same pipe) can outlive the API server, so it would hang until
    they are killed, and killing them is what we want to do once the server has gone.
    """
    # Polling on purpose: asyncio offers no public "process exited" event apart from wait().
    while proc.returncode is None:  # noqa: ASYNC110
        await asyncio.sleep(poll_s)
    return proc.returncode


def _port_in_use(host: str, port: int) -> bool:
    target = "127.0.0.1" if host in ("0.0.0.0", "", "::") else host
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.settimeout(0.5)
        return sock.connect_ex((target, port)) == 0


class Supervisor:
    """Runs a :class:`LaunchPlan` until stopped, restarting it when it dies or hangs.

    Use ``await supervisor.run()`` (returns 0 after a clean stop, 1 when it gave up) and
    ``supervisor.request_stop()`` from a signal handler or another task.
    """

    def __init__(
        self,
        plan: LaunchPlan,
        *,
        config: SupervisorConfig | None = None,
        backoff: Backoff | None = None,
        profile_name: str = "",
        model: str = "",
        gpu_indexes: tuple[int, ...] = (),
        on_event: Callable[[SupervisorEvent], None] | None = None,
        on_log_line: Callable[[str], None] | None = None,
        api_key: str | None = None,
    ) -> None:
        self.plan = plan
        self.config = config or SupervisorConfig()
        self.backoff = backoff or Backoff()
        self.profile_name = profile_name
        self.model = model
        self.gpu_indexes = gpu_indexes
        self._on_event = on_event
        self._on_log_line = on_log_line
        # vLLM guards /v1 with --api-key or VLLM_API_KEY: the /v1/models probe needs the key.
        self._api_key = (
            api_key
            or _argv_value(plan.argv, "--api-key")
            or plan.env.get("VLLM_API_KEY")
            or os.environ.get("VLLM_API_KEY")
        )

        self.state = State.STOPPED
        self.state_since = time.time()
        self.started_at: float | None = None  # wall clock of the current process start
        self.ready_at: float | None = None
        self.restarts = 0
        self.last_exit: ExitInfo | None = None
        self.models: list[str] = []
        self.max_model_len: int | None = None
        self.version: str | None = None
        self.latest_metrics: VllmMetrics | None = None
        # (monotonic time, scrape) pairs for "recent" latency windows.
        self.metrics_history: deque[tuple[float, VllmMetrics]] = deque(maxlen=64)
        self.log_tail: deque[str] = deque(maxlen=self.config.log_tail_lines)
        # The lines of the process running now (log_tail spans restarts): "still loading" and an
        # exit's tail quote these, never a line of a process that was already killed.
        self.process_tail: deque[str] = deque(maxlen=self.config.log_tail_lines)
        # After we signal vLLM to stop, its error lines (the EngineDeadError traceback every
        # clean shutdown prints) are counted here and reported as one line once it is gone.
        self._quiet: list[str] | None = None

        self._proc: asyncio.subprocess.Process | None = None
        self._stop = asyncio.Event()
        self._state_changed = asyncio.Event()
        self._restart_times: deque[float] = deque()
        self._scraped_at = 0.0
        self._consecutive_failures = 0
        self._log: _RotatingLog | None = None
        self._client: Any = None

    # ------------------------------------------------------------------ public surface

    @property
    def pid(self) -> int | None:
        return self._proc.pid if self._proc is not None and self._proc.returncode is None else None

    @property
    def base_url(self) -> str:
        return self.plan.base_url

    @property
    def scraped_at(self) -> float:
        """``time.monotonic()`` of the last successful ``/metrics`` scrape (0 before any)."""
        return self._scraped_at

    def request_stop(self) -> None:
        """Ask for a graceful stop (drain, then exit). Safe to call more than once."""
        self._stop.set()

    async def kill(self) -> None:
        """Stop now without draining: SIGKILL the whole process group."""
        self._stop.set()
        await self._kill_group()

    @property
    def stop_requested(self) -> bool:
        return self._stop.is_set()

    async def wait_for_state(self, *states: State, timeout: float | None = None) -> State:
        """Wait until the supervisor is in one of ``states``; return it."""

        async def _wait() -> State:
            while self.state not in states:
                self._state_changed.clear()
                await self._state_changed.wait()
            return self.state

        return await asyncio.wait_for(_wait(), timeout)

    def status(self) -> dict[str, Any]:
        now = time.time()
        return {
            "state": self.state.value,
            "profile": self.profile_name,
            "model": self.model,
            "served_model_name": self.plan.served_model_name,
            "models": list(self.models),
            "pid": self.pid,
            "restarts": self.restarts,
            "state_since_s": round(now - self.state_since, 3),
            "uptime_s": round(now - self.ready_at, 3)
            if self.ready_at and self.state in (State.READY, State.DRAINING)
            else None,
            "last_exit": self.last_exit.to_dict() if self.last_exit else None,
            "gpu_indexes": list(self.gpu_indexes),
            "serves_http": self.plan.serves_http,
            "role": self.plan.role,
        }

    async def run(self) -> int:
        """Supervise until a graceful stop (returns 0) or until restarts are exhausted (1)."""
        self._client = httpx.AsyncClient(timeout=self.config.probe_timeout_s)
        if self.config.log_path is not None:
            self._log = _RotatingLog(
                self.config.log_path, self.config.log_max_bytes, self.config.log_backups
            )
        try:
            if self.plan.serves_http and _port_in_use(self.plan.host, self.plan.port):
                self._set_state(
                    State.FAILED,
                    f"port {self.plan.port} on {self.plan.host} is already in use: stop the other "
                    "server or pass another --port",
                )
                return 1
            if self.plan.setup:  # e.g. a Ray head waiting for its workers: not "stopped"
                self._set_state(State.STARTING, f"setup ({len(self.plan.setup)} step(s))")
            if not await self._run_setup():
                if self._stop.is_set():
                    self._set_state(State.STOPPED, "stopped while setting up")
                    return 0
                self._set_state(State.FAILED)
                return 1
            while True:
                outcome = await self._run_once()
                if outcome == "stopped":
                    self._set_state(State.STOPPED, "stopped cleanly")
                    return 0
                if outcome == "spawn-failed":  # a missing binary does not heal by retrying
                    self._set_state(State.FAILED, "could not start the server process")
                    return 1
                # The process is gone (crash, kill after stall/unhealthy/startup timeout).
                if not await self._wait_before_restart():
                    if self._stop.is_set():
                        self._set_state(State.STOPPED, "stopped while waiting to restart")
                        return 0
                    self._set_state(State.FAILED)
                    return 1
        finally:
            await self._kill_group()
            await self._run_teardown()
            await self._client.aclose()
            if self._log is not None:
                self._log.close()

    # ------------------------------------------------------------------ internals

    def _emit(self, kind: str, message: str, **data: Any) -> None:
        log = logger.warning if kind == "error" else logger.info
        log("%s: %s", self.profile_name or self.plan.served_model_name, message)
        if self._on_event is not None:
            try:
                self._on_event(SupervisorEvent(kind, message, self.state, data))
            except Exception:  # an observer must not take the supervisor down
                logger.exception("event callback failed")

    def _set_state(self, state: State, detail: str = "") -> None:
        if state is not self.state:
            self.state = state
            self.state_since = time.time()
            self._state_changed.set()
            self._emit("state", state.value + (f": {detail}" if detail else ""))

    async def _run_setup(self) -> bool:
        """Run the plan's setup commands in order (Ray: start the head, wait for the workers'
        GPUs). Their output is shown line by line as progress; a failure, or a stop request,
        ends the run before vLLM starts."""
        for cmd in self.plan.setup:
            self._emit("progress", "setup: " + " ".join(cmd))
            try:
                proc = await asyncio.create_subprocess_exec(
                    *cmd,
                    env={**os.environ, **self.plan.env},
                    stdin=asyncio.subprocess.DEVNULL,
                    stdout=asyncio.subprocess.PIPE,
                    stderr=asyncio.subprocess.STDOUT,
                    start_new_session=True,  # its own group: a stop ends its children too
                )
            except OSError as exc:
                self._emit("error", f"setup command {cmd[0]!r} could not start: {exc}")
                return False
            tail: deque[str] = deque(maxlen=5)

            async def pump(proc: asyncio.subprocess.Process = proc, tail: deque = tail) -> None:
                assert proc.stdout is not None
                async for raw in proc.stdout:
                    line = redact_text(raw.decode(errors="replace").rstrip())
                    if line:
                        tail.append(line)
                        self._emit("progress", f"setup | {line}", setup=True)

            reader = asyncio.create_task(pump())
            waiter = asyncio.create_task(_wait_exit(proc))
            stop = asyncio.create_task(self._stop.wait())
            try:
                await asyncio.wait({waiter, stop}, return_when=asyncio.FIRST_COMPLETED)
                if not waiter.done():  # asked to stop while setting up
                    for sig, grace in ((signal.SIGTERM, 5.0), (signal.SIGKILL, 5.0)):
                        with contextlib.suppress(ProcessLookupError, PermissionError):
                            os.killpg(proc.pid, sig)
                        await asyncio.wait({waiter}, timeout=grace)
                        if waiter.done():
                            break
                    self._emit("progress", f"setup command {cmd[0]!r} stopped on request")
                    return False
                with contextlib.suppress(asyncio.TimeoutError):
                    await asyncio.wait_for(reader, 5)
            finally:
                stop.cancel()
                reader.cancel()
                if not waiter.done():
                    await asyncio.wait({waiter}, timeout=5)
                    waiter.cancel()
            if proc.returncode != 0:
                self._emit("error", f"setup command failed ({proc.returncode}): {' | '.join(tail)}")
                return False
        return True

    async def _run_teardown(self) -> None:
        """Best effort: a failed teardown is reported, never raised (we are stopping anyway)."""
        for cmd in self.plan.teardown:
            self._emit("progress", "teardown: " + " ".join(cmd))
            try:
                proc = await asyncio.create_subprocess_exec(
                    *cmd,
                    env={**os.environ, **self.plan.env},
                    stdout=asyncio.subprocess.DEVNULL,
                    stderr=asyncio.subprocess.DEVNULL,
                )
                code = await asyncio.wait_for(proc.wait(), 60)
            except (OSError, asyncio.TimeoutError) as exc:
                self._emit("error", f"teardown command {cmd[0]!r} failed: {exc!r}")
                continue
            if code != 0:
                self._emit("error", f"teardown command {cmd[0]!r} exited with {code}")

    async def _spawn(self) -> bool:
        env = {**os.environ, **self.plan.env}
        self._set_state(State.STARTING)
        self.started_at = time.time()
        self.ready_at = None
        self.models = []
        self.process_tail.clear()
        self._quiet = None
        try:
            self._proc = await asyncio.create_subprocess_exec(
                *self.plan.argv,
                env=env,
                stdin=asyncio.subprocess.DEVNULL,
                stdout=asyncio.subprocess.PIPE,
                stderr=asyncio.subprocess.STDOUT,
                start_new_session=True,  # its own process group: we can kill engine + workers
                limit=1024 * 1024,  # vLLM prints long lines (configs, tracebacks)
            )
        except OSError as exc:
            self.last_exit = ExitInfo(
                None, f"could not start {self.plan.argv[0]!r}: {exc}", time.time()
            )
            self._emit("error", self.last_exit.reason)
            return False
        self._emit("progress", f"started pid {self._proc.pid}", pid=self._proc.pid)
        return True

    async def _pump_logs(self, proc: asyncio.subprocess.Process) -> None:
        assert proc.stdout is not None
        while True:
            try:
                line = await proc.stdout.readline()
            except ValueError:
                continue  # an over-long line (already dropped by the reader); keep reading
            if not line:
                return
            # Kept for the health report, printed and logged: scrub anything that looks like a key.
            text = redact_text(line.decode(errors="replace").rstrip())
            if self._log is not None:
                self._log.write(text.encode() + b"\n")
            self.log_tail.append(text)
            self.process_tail.append(text)
            if self._on_log_line is not None:
                self._on_log_line(text)
            if self._quiet is not None and (
                _TRACEBACK_LINE.search(text) or any(p.search(text) for p in _ERROR_PATTERNS)
            ):
                self._quiet.append(text)  # shutdown noise: summarised once the process is gone
            elif any(p.search(text) for p in _ERROR_PATTERNS):
                self._emit("log", text, level="error")
            elif any(p.search(text) for p in _PROGRESS_PATTERNS):
                self._emit("log", text, level="progress")

    async def _run_once(self) -> str:
        """One process lifetime. Returns "stopped" or the reason it ended."""
        if not await self._spawn():
            return "spawn-failed"
        proc = self._proc
        assert proc is not None
        pump = asyncio.create_task(self._pump_logs(proc))
        exited = asyncio.create_task(_wait_exit(proc))
        stop = asyncio.create_task(self._stop.wait())
        try:
            outcome = await self._until_ready(proc, exited, stop)
            if outcome == "ready":
                outcome = await self._while_ready(proc, exited, stop)
            if outcome == "stop":
                await self._drain(proc, exited)
                return "stopped"
            if outcome == "exited":
                await self._kill_group()  # leftover engine processes hold GPUs and the log pipe
                code = proc.returncode
                self._record_exit(code, f"vLLM exited with code {code}")
            else:
                await self._terminate(proc, exited, grace=self.config.restart_term_grace_s)
                self._record_exit(proc.returncode, outcome)
            return outcome
        finally:
            stop.cancel()
            exited.cancel()
            await self._kill_group()
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(pump, 5)
            pump.cancel()
            self._summarise_shutdown_noise()

    def _record_exit(self, code: int | None, reason: str) -> None:
        self.last_exit = ExitInfo(code, reason, time.time(), tuple(self.process_tail)[-20:])
        self._set_state(State.CRASHED)
        self._emit("error", reason, code=code, log_tail=list(self.process_tail)[-10:])

    def _summarise_shutdown_noise(self) -> None:
        """One line for the error lines vLLM printed after we asked it to stop."""
        lines, self._quiet = self._quiet, None
        if not lines:
            return
        kinds = sorted({m.group(0) for line in lines for m in _ERROR_NAME.finditer(line)})
        where = f"; full text in {self.config.log_path}" if self.config.log_path else ""
        clean = self.last_exit is not None and self.last_exit.reason == "stopped on request"
        message = (
            f"vLLM's shutdown printed {len(lines)} error/traceback line(s)"
            + (f" ({', '.join(kinds[:3])})" if kinds else "")
            + (
                " after the drain completed: the usual engine teardown, not a failure"
                if clean
                else ""
            )
            + where
        )
        self._emit("progress" if clean else "error", message, lines=len(lines))

    async def _sleep_or(self, seconds: float, *tasks: asyncio.Task[Any]) -> bool:
        """Sleep ``seconds`` unless one of ``tasks`` finishes first (then return True)."""
        done, _ = await asyncio.wait(tasks, timeout=seconds, return_when=asyncio.FIRST_COMPLETED)
        return bool(done)

    async def _until_ready(
        self, proc: asyncio.subprocess.Process, exited: asyncio.Task[int], stop: asyncio.Task[bool]
    ) -> str:
        started = time.monotonic()
        last_progress = started
        if not self.plan.serves_http:
            # A headless worker or a Ray node has no API: alive after a short grace is "ready".
            if await self._sleep_or(min(2.0, self.config.poll_interval_s), exited, stop):
                return "stop" if stop.done() else "exited"
            self._became_ready()
            return "ready"
        while True:
            if stop.done():
                return "stop"
            if exited.done():
                return "exited"
            elapsed = time.monotonic() - started
            if elapsed > self.config.startup_timeout_s:
                return f"not ready after {self.config.startup_timeout_s:g} s (startup timeout)"
            if await self._probe_ready():
                self._became_ready()
                return "ready"
            if time.monotonic() - last_progress >= self.config.progress_every_s:
                last_progress = time.monotonic()
                last_line = self.process_tail[-1] if self.process_tail else ""
                self._emit(
                    "progress",
                    f"still loading after {elapsed:.0f} s"
                    + (f": {last_line[-160:]}" if last_line else ""),
                    elapsed_s=elapsed,
                )
            if await self._sleep_or(self.config.poll_interval_s, exited, stop):
                continue

    def _became_ready(self) -> None:
        self.ready_at = time.time()
        self._set_state(State.READY)
        took = self.ready_at - (self.started_at or self.ready_at)
        self._emit("progress", f"ready in {took:.1f} s at {self.base_url}", took_s=took)

    def _headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self._api_key}"} if self._api_key else {}

    async def _probe_ready(self) -> bool:
        try:
            health = await self._client.get(self.base_url + "/health")
            if health.status_code != 200:
                return False
            listing = await self._client.get(self.base_url + "/v1/models", headers=self._headers())
            if listing.status_code != 200:
                return False
            data = listing.json().get("data", [])
        except (httpx.HTTPError, ValueError, AttributeError):
            return False
        ids = [m.get("id") for m in data if isinstance(m, dict)]
        if self.plan.served_model_name not in ids:
            return False
        self.models = [i for i in ids if isinstance(i, str)]
        for m in data:
            if isinstance(m, dict) and m.get("id") == self.plan.served_model_name:
                self.max_model_len = m.get("max_model_len")
        with contextlib.suppress(httpx.HTTPError, ValueError, AttributeError):
            self.version = (
                (await self._client.get(self.base_url + "/version")).json().get("version")
            )
        return True

    async def scrape_metrics(self, max_age_s: float = 0.0) -> VllmMetrics | None:
        """Fetch and parse ``/metrics``; keeps the result for stall checks and health.

        A scrape younger than ``max_age_s`` is reused (the sidecar may be polled often).
        """
        now = time.monotonic()
        if self.latest_metrics is not None and now - self._scraped_at < max_age_s:
            return self.latest_metrics
        try:
            resp = await self._client.get(self.base_url + "/metrics")
        except httpx.HTTPError:
            return None
        if resp.status_code != 200:
            return None
        metrics = VllmMetrics.from_text(resp.text)
        self.latest_metrics = metrics
        self._scraped_at = time.monotonic()
        # History for "recent" latency windows: one sample per few seconds is plenty.
        if not self.metrics_history or self._scraped_at - self.metrics_history[-1][0] >= 5.0:
            self.metrics_history.append((self._scraped_at, metrics))
        return metrics

    async def _while_ready(
        self, proc: asyncio.subprocess.Process, exited: asyncio.Task[int], stop: asyncio.Task[bool]
    ) -> str:
        failures = 0
        last_tokens: float | None = None
        last_progress = time.monotonic()
        while True:
            if await self._sleep_or(self.config.liveness_interval_s, exited, stop):
                return "stop" if stop.done() else "exited"
            if self.ready_at and time.time() - self.ready_at >= self.backoff.reset_after_s:
                self._consecutive_failures = 0
            if not self.plan.serves_http:
                continue
            try:
                health = await self._client.get(self.base_url + "/health")
                healthy = health.status_code == 200
            except httpx.HTTPError:
                healthy = False
            if exited.done():
                return "exited"
            failures = 0 if healthy else failures + 1
            if failures >= self.config.health_failures:
                return f"unhealthy: /health failed {failures} times in a row"
            metrics = await self.scrape_metrics()
            now = time.monotonic()
            if metrics is None or metrics.generation_tokens is None:
                continue
            busy = (metrics.running or 0) > 0
            if not busy or metrics.generation_tokens != last_tokens:
                last_progress = now
            last_tokens = metrics.generation_tokens
            if busy and now - last_progress >= self.config.stall_timeout_s:
                return (
                    f"stalled: {metrics.running:g} request(s) running and no token generated "
                    f"for {now - last_progress:.0f} s"
                )

    async def _drain(self, proc: asyncio.subprocess.Process, exited: asyncio.Task[int]) -> None:
        self._set_state(State.DRAINING)
        if proc.returncode is None and self.config.drain_notice_s > 0:
            await self._sleep_or(self.config.drain_notice_s, exited)
        if proc.returncode is None:
            self._emit(
                "progress",
                f"draining: SIGTERM to pid {proc.pid}, up to {self.config.drain_timeout_s:g} s "
                "for in-flight requests",
            )
            self._quiet = []
            with contextlib.suppress(ProcessLookupError):
                proc.send_signal(signal.SIGTERM)  # the API server only, never the group
        budget = self.config.drain_timeout_s + self.config.kill_grace_s
        done, _ = await asyncio.wait({exited}, timeout=budget)
        if not done:
            self._emit("error", f"still running {budget:g} s after SIGTERM: killing the group")
            await self._kill_group()
            await asyncio.wait({exited}, timeout=10)
            self.last_exit = ExitInfo(
                proc.returncode,
                "killed after the drain budget",
                time.time(),
                tuple(self.process_tail)[-20:],
            )
            return
        self.last_exit = ExitInfo(proc.returncode, "stopped on request", time.time())

    async def _terminate(
        self, proc: asyncio.subprocess.Process, exited: asyncio.Task[int], *, grace: float
    ) -> None:
        if proc.returncode is None:
            self._quiet = []
            with contextlib.suppress(ProcessLookupError):
                proc.send_signal(signal.SIGTERM)
            await asyncio.wait({exited}, timeout=grace)
        await self._kill_group()

    async def _kill_group(self) -> None:
        """SIGKILL whatever is left of the process group (engine cores, workers)."""
        proc = self._proc
        if proc is None:
            return
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(proc.pid, signal.SIGKILL)
        if proc.returncode is None:
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(_wait_exit(proc), 10)

    async def _wait_before_restart(self) -> bool:
        """Back off before a restart. False when giving up (budget spent) or asked to stop."""
        if self._stop.is_set():
            return False
        now = time.monotonic()
        while self._restart_times and now - self._restart_times[0] > self.backoff.window_s:
            self._restart_times.popleft()
        if len(self._restart_times) >= self.backoff.max_restarts:
            self._emit(
                "error",
                f"giving up: {len(self._restart_times)} restarts within "
                f"{self.backoff.window_s:g} s; last: "
                f"{self.last_exit.reason if self.last_exit else 'unknown'}",
            )
            return False
        self._consecutive_failures += 1
        delay = self.backoff.delay(self._consecutive_failures)
        self._emit(
            "restart",
            f"restarting in {delay:g} s (restart {self.restarts + 1})",
            delay_s=delay,
        )
        try:
            await asyncio.wait_for(self._stop.wait(), delay)
            return False  # asked to stop while backing off
        except asyncio.TimeoutError:
            pass
        self._restart_times.append(time.monotonic())
        self.restarts += 1
        return True
