"""GPU inventory through NVML (``nvidia-ml-py``) and the hardware-fit decision for a profile.

NVML is read through an injectable module object so tests can hand in a fake with the same
function names; without a driver (or without ``nvidia-ml-py``) the snapshot says
``available: false`` with the reason instead of raising. NVML indexes GPUs in PCI bus order, so a
launch that picks GPUs by NVML index also sets ``CUDA_DEVICE_ORDER=PCI_BUS_ID`` to make CUDA agree.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from gonka_mux.serving.registry import Profile

__all__ = [
    "FitResult",
    "GpuInfo",
    "GpuSnapshot",
    "check_fit",
    "read_gpus",
]

logger = logging.getLogger("gonka_mux.serving.gpu")

GIB = 1024**3
# vLLM's own default when a profile does not set --gpu-memory-utilization.
_VLLM_DEFAULT_UTILIZATION = 0.9


@dataclass(frozen=True)
class GpuInfo:
    index: int
    name: str
    uuid: str
    memory_total_bytes: int
    memory_used_bytes: int
    memory_free_bytes: int
    utilization_gpu_pct: float | None = None
    utilization_memory_pct: float | None = None
    temperature_c: float | None = None
    power_w: float | None = None
    compute_capability: float | None = None
    processes: tuple[int, ...] | None = None

    @property
    def memory_total_gib(self) -> float:
        return self.memory_total_bytes / GIB

    @property
    def memory_free_gib(self) -> float:
        return self.memory_free_bytes / GIB

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["processes"] = list(self.processes) if self.processes is not None else None
        data["memory_total_gib"] = round(self.memory_total_gib, 2)
        data["memory_used_gib"] = round(self.memory_used_bytes / GIB, 2)
        return data


@dataclass(frozen=True)
class GpuSnapshot:
    available: bool
    gpus: tuple[GpuInfo, ...] = ()
    driver: str | None = None
    error: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return {
            "available": self.available,
            "driver": self.driver,
            "error": self.error,
            "count": len(self.gpus),
            "gpus": [gpu.to_dict() for gpu in self.gpus],
        }


def _text(value: Any) -> str:
    # nvidia-ml-py >= 11.5 returns str; older releases returned bytes.
    return value.decode(errors="replace") if isinstance(value, bytes) else str(value)


def _load_nvml() -> Any:
    import pynvml  # optional extra: nvidia-ml-py ('serve'); no GPUs are reported without it

    return pynvml


def read_gpus(nvml: Any = None) -> GpuSnapshot:
    """Read every GPU NVML sees. Never raises: failures become ``available=False``.

    ``nvml`` is the ``pynvml`` module (from ``nvidia-ml-py``) or a stand-in with the same names.
    NVML calls block; call this from a worker thread in async code.
    """
    if nvml is None:
        try:
            nvml = _load_nvml()
        except ImportError:
            return GpuSnapshot(available=False, error="nvidia-ml-py is not installed")
    nvml_error: type[BaseException] = getattr(nvml, "NVMLError", Exception)
    try:
        nvml.nvmlInit()
    except nvml_error as exc:  # LibraryNotFound, DriverNotLoaded, ...
        return GpuSnapshot(available=False, error=f"NVML unavailable: {exc}")
    try:
        driver: str | None
        try:
            driver = _text(nvml.nvmlSystemGetDriverVersion())
        except nvml_error:
            driver = None
        gpus = []
        for index in range(nvml.nvmlDeviceGetCount()):
            handle = nvml.nvmlDeviceGetHandleByIndex(index)
            gpus.append(_read_one(nvml, nvml_error, index, handle))
        return GpuSnapshot(available=True, gpus=tuple(gpus), driver=driver)
    except nvml_error as exc:
        return GpuSnapshot(available=False, error=f"NVML query failed: {exc}")
    finally:
        try:
            nvml.nvmlShutdown()
        except nvml_error:
            pass


def _read_one(nvml: Any, nvml_error: type[BaseException], index: int, handle: Any) -> GpuInfo:
    def optional(read: Callable[[], Any]) -> Any:
        # Per-field failures (NotSupported on some SKUs and under MIG) must not hide the GPU.
        try:
            return read()
        except nvml_error:
            return None

    memory = nvml.nvmlDeviceGetMemoryInfo(handle)
    rates = optional(lambda: nvml.nvmlDeviceGetUtilizationRates(handle))
    capability = optional(lambda: nvml.nvmlDeviceGetCudaComputeCapability(handle))
    power_mw = optional(lambda: nvml.nvmlDeviceGetPowerUsage(handle))
    temperature = optional(
        lambda: nvml.nvmlDeviceGetTemperature(handle, getattr(nvml, "NVML_TEMPERATURE_GPU", 0))
    )
    processes = optional(lambda: nvml.nvmlDeviceGetComputeRunningProcesses(handle))
    return GpuInfo(
        index=index,
        name=_text(nvml.nvmlDeviceGetName(handle)),
        uuid=_text(optional(lambda: nvml.nvmlDeviceGetUUID(handle)) or ""),
        memory_total_bytes=int(memory.total),
        memory_used_bytes=int(memory.used),
        memory_free_bytes=int(memory.free),
        utilization_gpu_pct=float(rates.gpu) if rates is not None else None,
        utilization_memory_pct=float(rates.memory) if rates is not None else None,
        temperature_c=float(temperature) if temperature is not None else None,
        power_w=power_mw / 1000.0 if power_mw is not None else None,
        compute_capability=(
            float(f"{capability[0]}.{capability[1]}") if capability is not None else None
        ),
        processes=tuple(int(p.pid) for p in processes) if processes is not None else None,
    )


@dataclass(frozen=True)
class FitResult:
    """Whether a profile fits this host, which GPUs it would use, and why not when it does not."""

    ok: bool
    reasons: tuple[str, ...] = ()
    gpu_indexes: tuple[int, ...] = ()
    warnings: tuple[str, ...] = field(default=())

    @property
    def cuda_env(self) -> dict[str, str]:
        """Environment that pins vLLM to the chosen GPUs (NVML and CUDA agree on PCI order)."""
        if not self.gpu_indexes:
            return {}
        return {
            "CUDA_DEVICE_ORDER": "PCI_BUS_ID",
            "CUDA_VISIBLE_DEVICES": ",".join(str(i) for i in self.gpu_indexes),
        }

    def explain(self) -> str:
        if self.ok:
            chosen = ",".join(str(i) for i in self.gpu_indexes) or "none (CPU)"
            return f"fits: GPUs {chosen}"
        return "does not fit: " + "; ".join(self.reasons)


def _visible_indexes(snapshot: GpuSnapshot, environ: Mapping[str, str]) -> list[int] | None:
    """GPUs CUDA_VISIBLE_DEVICES already allows (by index or UUID prefix), None when unset."""
    raw = environ.get("CUDA_VISIBLE_DEVICES")
    if raw is None or raw.strip() == "":
        return None
    chosen: list[int] = []
    for token in (t.strip() for t in raw.split(",")):
        if token.isdigit():
            chosen.append(int(token))
        elif token:
            for gpu in snapshot.gpus:
                if gpu.uuid and gpu.uuid.startswith(token):
                    chosen.append(gpu.index)
                    break
    return chosen


def check_fit(
    profile: Profile,
    snapshot: GpuSnapshot,
    *,
    gpu_ids: Sequence[int] | None = None,
    environ: Mapping[str, str] | None = None,
) -> FitResult:
    """Decide whether ``profile`` can run on this host's GPUs, and on which ones.

    Checks, per node: enough GPUs, each with at least ``min_gpu_memory_gib`` of memory, the
    compute capability the checkpoint's kernels need, and enough free memory now for vLLM's
    ``gpu_memory_utilization`` share (vLLM refuses to start otherwise, after minutes of loading).
    ``gpu_ids`` picks GPUs by NVML index; otherwise the emptiest suitable GPUs are chosen.
    """
    if profile.device == "cpu":
        return FitResult(ok=True)
    env = os.environ if environ is None else environ
    if not snapshot.available:
        return FitResult(
            ok=False,
            reasons=(
                f"profile {profile.name!r} needs {profile.gpus} NVIDIA GPU(s) but none is usable "
                f"here ({snapshot.error or 'NVML unavailable'})",
            ),
        )
    by_index = {gpu.index: gpu for gpu in snapshot.gpus}
    if gpu_ids is not None:
        unknown = [i for i in gpu_ids if i not in by_index]
        if unknown:
            return FitResult(
                ok=False,
                reasons=(
                    f"--gpus names GPU(s) {unknown} but this host has indexes "
                    f"{sorted(by_index) or 'none'}",
                ),
            )
        if len(set(gpu_ids)) != len(gpu_ids):
            return FitResult(ok=False, reasons=("--gpus lists a GPU twice",))
        candidates = [by_index[i] for i in gpu_ids]
    else:
        visible = _visible_indexes(snapshot, env)
        pool = (
            [by_index[i] for i in visible if i in by_index]
            if visible is not None
            else list(snapshot.gpus)
        )
        candidates = pool

    utilization = profile.gpu_memory_utilization or _VLLM_DEFAULT_UTILIZATION
    min_bytes = profile.min_gpu_memory_gib * GIB
    reasons: list[str] = []
    suitable: list[GpuInfo] = []
    for gpu in candidates:
        problems = []
        if gpu.memory_total_bytes < min_bytes:
            problems.append(
                f"{gpu.memory_total_gib:.1f} GiB < {profile.min_gpu_memory_gib:g} GiB needed"
            )
        if profile.min_compute_capability is not None and (
            gpu.compute_capability is None
            or gpu.compute_capability < profile.min_compute_capability
        ):
            have = "unknown" if gpu.compute_capability is None else f"{gpu.compute_capability:g}"
            problems.append(
                f"compute capability {have} < {profile.min_compute_capability:g} needed"
            )
        needed_free = gpu.memory_total_bytes * utilization
        if gpu.memory_free_bytes < needed_free:
            problems.append(
                f"only {gpu.memory_free_gib:.1f} GiB free, vLLM needs {needed_free / GIB:.1f} GiB "
                f"(gpu_memory_utilization {utilization:g}); other processes hold it: "
                f"{list(gpu.processes) if gpu.processes else 'unknown'}"
            )
        if problems:
            reasons.append(f"GPU {gpu.index} ({gpu.name}): " + ", ".join(problems))
        else:
            suitable.append(gpu)

    need = profile.gpus
    if gpu_ids is not None:
        if len(gpu_ids) != need:
            reasons.insert(
                0,
                f"profile {profile.name!r} needs exactly {need} GPU(s) per node, "
                f"--gpus gave {len(gpu_ids)}",
            )
        if reasons:
            return FitResult(ok=False, reasons=tuple(reasons))
        return FitResult(ok=True, gpu_indexes=tuple(gpu_ids))

    if len(suitable) < need:
        summary = (
            f"profile {profile.name!r} needs {need} GPU(s) per node with >= "
            f"{profile.min_gpu_memory_gib:g} GiB each"
            + (
                f" and compute capability >= {profile.min_compute_capability:g}"
                if profile.min_compute_capability is not None
                else ""
            )
            + f"; this host has {len(suitable)} suitable of {len(candidates)}"
        )
        if profile.recommended_gpus:
            summary += f" (recommended: {profile.recommended_gpus})"
        return FitResult(ok=False, reasons=(summary, *reasons))
    # Prefer the emptiest GPUs, then keep the chosen ones in index order for a readable env var.
    chosen = sorted(suitable, key=lambda g: (g.memory_used_bytes, g.index))[:need]
    return FitResult(
        ok=True,
        gpu_indexes=tuple(sorted(g.index for g in chosen)),
        warnings=tuple(reasons),
    )
