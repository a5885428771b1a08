"""Helpers for the gonka-serve tests: a fake NVML, loopback servers, the stand-in vLLM.

Imported by conftest.py (fixtures) and by the test modules (classes and constants).
"""

from __future__ import annotations

import socket
import sys
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pynvml
import pytest

DATA = Path(__file__).parent / "data"
FAKE_VLLM = Path(__file__).parent / "fake_vllm.py"
GIB = 1024**3


def recorded(name: str) -> str:
    return (DATA / name).read_text()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def port() -> int:
    return free_port()


# ------------------------------------------------------------------------------ fake NVML


@dataclass
class FakeGpu:
    name: str = "NVIDIA H100 80GB HBM3"
    total_gib: float = 79.6
    used_gib: float = 0.5
    capability: tuple[int, int] = (9, 0)
    util: int = 7
    mem_util: int = 3
    temp: int = 41
    power_mw: int = 71_000
    pids: list[int] = field(default_factory=list)
    unsupported: set[str] = field(default_factory=set)  # NVML fields that raise NotSupported

    def raise_if(self, what: str) -> None:
        if what in self.unsupported:
            raise pynvml.NVMLError_NotSupported()


H100 = {"name": "NVIDIA H100 80GB HBM3", "total_gib": 79.6, "capability": (9, 0)}
H200 = {"name": "NVIDIA H200", "total_gib": 140.4, "capability": (9, 0)}
B200 = {"name": "NVIDIA B200", "total_gib": 179.1, "capability": (10, 0)}
L4 = {"name": "NVIDIA L4", "total_gib": 22.5, "capability": (8, 9)}


class FakeNvml:
    """The pynvml functions gonka-serve calls, over a list of FakeGpu, with pynvml's errors."""

    NVMLError = pynvml.NVMLError
    NVML_TEMPERATURE_GPU = pynvml.NVML_TEMPERATURE_GPU

    def __init__(
        self,
        gpus: list[FakeGpu],
        *,
        init_error: type[Exception] | None = None,
        bytes_names: bool = False,
    ) -> None:
        self.gpus = gpus
        self.init_error = init_error
        self.bytes_names = bytes_names
        self.inits = 0
        self.shutdowns = 0

    def nvmlInit(self) -> None:
        if self.init_error is not None:
            raise self.init_error()
        self.inits += 1

    def nvmlShutdown(self) -> None:
        self.shutdowns += 1

    def nvmlSystemGetDriverVersion(self) -> Any:
        return b"570.86.15" if self.bytes_names else "570.86.15"

    def nvmlDeviceGetCount(self) -> int:
        return len(self.gpus)

    def nvmlDeviceGetHandleByIndex(self, index: int) -> FakeGpu:
        return self.gpus[index]

    def nvmlDeviceGetName(self, h: FakeGpu) -> Any:
        return h.name.encode() if self.bytes_names else h.name

    def nvmlDeviceGetUUID(self, h: FakeGpu) -> str:
        index = next(i for i, g in enumerate(self.gpus) if g is h)  # FakeGpus compare equal
        return f"GPU-{index:08d}-fake"

    def nvmlDeviceGetMemoryInfo(self, h: FakeGpu) -> Any:
        total = int(h.total_gib * GIB)
        used = int(h.used_gib * GIB)
        return type("Mem", (), {"total": total, "used": used, "free": total - used})()

    def nvmlDeviceGetUtilizationRates(self, h: FakeGpu) -> Any:
        h.raise_if("utilization")
        return type("Util", (), {"gpu": h.util, "memory": h.mem_util})()

    def nvmlDeviceGetTemperature(self, h: FakeGpu, sensor: int) -> int:
        h.raise_if("temperature")
        assert sensor == pynvml.NVML_TEMPERATURE_GPU
        return h.temp

    def nvmlDeviceGetPowerUsage(self, h: FakeGpu) -> int:
        h.raise_if("power")
        return h.power_mw

    def nvmlDeviceGetCudaComputeCapability(self, h: FakeGpu) -> tuple[int, int]:
        h.raise_if("capability")
        return h.capability

    def nvmlDeviceGetComputeRunningProcesses(self, h: FakeGpu) -> list[Any]:
        h.raise_if("processes")
        return [type("Proc", (), {"pid": p, "usedGpuMemory": 1})() for p in h.pids]


def fake_nvml(n: int, kind: dict[str, Any], **kwargs: Any) -> FakeNvml:
    return FakeNvml([FakeGpu(**kind) for _ in range(n)], **kwargs)


# ------------------------------------------------------------------------------ loopback vLLM


class RecordedVllm:
    """A loopback HTTP server answering like vLLM with a recorded /metrics text (changeable)."""

    def __init__(self, metrics_text: str, *, models: list[str], health_status: int = 200) -> None:
        self.metrics_text = metrics_text
        self.models = models
        self.health_status = health_status
        self.requests: list[str] = []
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *a: object) -> None:
                pass

            def do_GET(self) -> None:
                outer.requests.append(self.path)
                if self.path == "/health":
                    self._send(outer.health_status, b"", "text/plain")
                elif self.path == "/metrics":
                    self._send(200, outer.metrics_text.encode(), "text/plain; version=0.0.4")
                elif self.path == "/v1/models":
                    if outer.auth_required and self.headers.get("Authorization") != "Bearer k-123":
                        self._send(401, b'{"error": "unauthorized"}', "application/json")
                        return
                    body = (
                        '{"object": "list", "data": ['
                        + ",".join(f'{{"id": "{m}", "max_model_len": 2048}}' for m in outer.models)
                        + "]}"
                    )
                    self._send(200, body.encode(), "application/json")
                elif self.path == "/version":
                    self._send(200, b'{"version": "0.32.0"}', "application/json")
                else:
                    self._send(404, b"{}", "application/json")

            def _send(self, code: int, body: bytes, ctype: str) -> None:
                self.send_response(code)
                self.send_header("Content-Type", ctype)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

        self.auth_required = False
        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def recorded_vllm() -> Iterator[RecordedVllm]:
    server = RecordedVllm(recorded("vllm-0.32.0-cpu-under-load.metrics.txt"), models=["tiny"])
    yield server
    server.close()


def fake_vllm_cmd() -> tuple[str, ...]:
    """A vllm_cmd that runs the stand-in: ``python fake_vllm.py serve MODEL ...``."""
    return (sys.executable, str(FAKE_VLLM))


# ------------------------------------------------------------------------------ sidecar stand-in


class StateSidecar:
    """Answers like gonka-serve's health sidecar (``{"state", "models", "queue"}``), on a port
    chosen up front: :meth:`start` may come later, so the node is unreachable until then."""

    def __init__(self, models: list[str], *, state: str = "ready", port: int | None = None) -> None:
        self.state = state
        self.models = models
        self.port = port if port is not None else free_port()
        self.url = f"http://127.0.0.1:{self.port}/health"
        self.server: ThreadingHTTPServer | None = None

    def start(self) -> StateSidecar:
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *a: object) -> None:
                pass

            def do_GET(self) -> None:
                import json

                body = json.dumps(
                    {"state": outer.state, "models": outer.models, "queue": {"running": 0}}
                ).encode()
                self.send_response(200 if outer.state == "ready" else 503)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

        self.server = ThreadingHTTPServer(("127.0.0.1", self.port), Handler)
        self.server.daemon_threads = True
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        return self

    def close(self) -> None:
        if self.server is not None:
            self.server.shutdown()
            self.server.server_close()
            self.server = None
