from __future__ import annotations

import sys

import pynvml
import pytest
from _serving_support import B200, GIB, H100, H200, L4, FakeGpu, FakeNvml, fake_nvml

from gonka_mux.serving import gpu as gpu_module
from gonka_mux.serving.gpu import check_fit, read_gpus
from gonka_mux.serving.registry import Registry


@pytest.fixture(scope="module")
def registry() -> Registry:
    return Registry.load(environ={})


def test_snapshot_reads_every_field() -> None:
    nvml = FakeNvml([FakeGpu(**H100, pids=[4242]), FakeGpu(**H100)])
    snap = read_gpus(nvml)
    assert snap.available and snap.driver == "570.86.15" and len(snap.gpus) == 2
    g = snap.gpus[0]
    assert (g.index, g.name, g.uuid) == (0, "NVIDIA H100 80GB HBM3", "GPU-00000000-fake")
    assert g.memory_total_bytes == int(79.6 * GIB)
    assert g.utilization_gpu_pct == 7 and g.temperature_c == 41 and g.power_w == 71.0
    assert g.compute_capability == 9.0 and g.processes == (4242,)
    data = snap.to_dict()
    assert data["count"] == 2 and data["gpus"][0]["memory_total_gib"] == 79.6
    assert nvml.inits == 1 and nvml.shutdowns == 1  # NVML is always shut down again


def test_unsupported_fields_become_none_without_hiding_the_gpu() -> None:
    nvml = FakeNvml([FakeGpu(**H100, unsupported={"power", "utilization", "processes"})])
    g = read_gpus(nvml).gpus[0]
    assert g.power_w is None and g.utilization_gpu_pct is None and g.processes is None
    assert g.temperature_c == 41


def test_old_bindings_returning_bytes_are_decoded() -> None:
    snap = read_gpus(FakeNvml([FakeGpu(**L4)], bytes_names=True))
    assert snap.gpus[0].name == "NVIDIA L4" and snap.driver == "570.86.15"


def test_no_driver_degrades_to_unavailable() -> None:
    snap = read_gpus(FakeNvml([], init_error=pynvml.NVMLError_DriverNotLoaded))
    assert not snap.available and "NVML unavailable" in (snap.error or "")
    assert snap.to_dict() == {
        "available": False,
        "driver": None,
        "error": snap.error,
        "count": 0,
        "gpus": [],
    }


def test_real_nvml_on_this_machine_never_raises() -> None:
    snap = (
        read_gpus()
    )  # the real nvidia-ml-py: no GPU here -> LibraryNotFound, on a GPU host real data
    if snap.available:
        assert snap.gpus and all(g.memory_total_bytes > 0 for g in snap.gpus)
    else:
        assert snap.error and "NVML" in snap.error


def test_missing_nvidia_ml_py_degrades(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "pynvml", None)  # import pynvml -> ImportError
    snap = gpu_module.read_gpus()
    assert not snap.available and snap.error == "nvidia-ml-py is not installed"


def test_kimi_full_fits_8x_h200_and_not_8x_h100(registry: Registry) -> None:
    p = registry.get("kimi-k2.5")
    fit = check_fit(p, read_gpus(fake_nvml(8, H200)), environ={})
    assert fit.ok and fit.gpu_indexes == tuple(range(8))
    assert fit.cuda_env == {
        "CUDA_DEVICE_ORDER": "PCI_BUS_ID",
        "CUDA_VISIBLE_DEVICES": "0,1,2,3,4,5,6,7",
    }
    refused = check_fit(p, read_gpus(fake_nvml(8, H100)), environ={})
    assert not refused.ok
    assert "needs 8 GPU(s) per node with >= 83.2 GiB" in refused.explain()  # 714 GB / 8
    assert "79.6 GiB < 83.2 GiB needed" in refused.explain()
    assert "8x H200" in refused.explain()  # tells the operator what would fit


def test_too_few_gpus(registry: Registry) -> None:
    fit = check_fit(registry.get("kimi-k2.5"), read_gpus(fake_nvml(4, H200)), environ={})
    assert not fit.ok and "this host has 4 suitable of 4" in fit.explain()


def test_nvfp4_needs_blackwell(registry: Registry) -> None:
    p = registry.get("kimi-q4")
    assert check_fit(p, read_gpus(fake_nvml(4, B200)), environ={}).ok
    fit = check_fit(p, read_gpus(fake_nvml(4, H200)), environ={})
    assert not fit.ok and "compute capability 9 < 10 needed" in fit.explain()


def test_busy_gpus_are_skipped_and_the_emptiest_chosen(registry: Registry) -> None:
    nvml = FakeNvml(
        [FakeGpu(**H100, used_gib=40, pids=[777]), FakeGpu(**H100, used_gib=2), FakeGpu(**H100)]
    )
    p = registry.get("qwen3-32b")  # 2 GPUs, 0.9 utilisation
    fit = check_fit(p, read_gpus(nvml), environ={})
    assert fit.ok and fit.gpu_indexes == (1, 2)
    assert any("GPU 0" in w and "[777]" in w for w in fit.warnings)
    # Asking for the busy one explicitly is refused with the reason.
    forced = check_fit(p, read_gpus(nvml), gpu_ids=[0, 1], environ={})
    assert not forced.ok and "only 39.6 GiB free" in forced.explain()


def test_explicit_gpu_selection(registry: Registry) -> None:
    snap = read_gpus(fake_nvml(4, H100))
    p = registry.get("qwen3-32b")
    assert check_fit(p, snap, gpu_ids=[3, 1], environ={}).gpu_indexes == (3, 1)
    assert "needs exactly 2" in check_fit(p, snap, gpu_ids=[0], environ={}).explain()
    assert "indexes [0, 1, 2, 3]" in check_fit(p, snap, gpu_ids=[0, 9], environ={}).explain()
    assert "twice" in check_fit(p, snap, gpu_ids=[1, 1], environ={}).explain()


def test_cuda_visible_devices_limits_the_choice(registry: Registry) -> None:
    snap = read_gpus(fake_nvml(4, H100))
    p = registry.get("llama-3.1-8b")
    assert check_fit(p, snap, environ={"CUDA_VISIBLE_DEVICES": "2"}).gpu_indexes == (2,)
    by_uuid = check_fit(p, snap, environ={"CUDA_VISIBLE_DEVICES": "GPU-00000003"})
    assert by_uuid.gpu_indexes == (3,)


def test_cpu_profile_needs_no_gpu(registry: Registry) -> None:
    fit = check_fit(
        registry.get("tiny-cpu"),
        read_gpus(FakeNvml([], init_error=pynvml.NVMLError_LibraryNotFound)),
    )
    assert fit.ok and fit.cuda_env == {}


def test_no_gpu_refusal_names_the_cause(registry: Registry) -> None:
    snap = read_gpus(FakeNvml([], init_error=pynvml.NVMLError_LibraryNotFound))
    fit = check_fit(registry.get("llama-3.1-8b"), snap, environ={})
    assert not fit.ok and "none is usable here" in fit.explain() and "NVML" in fit.explain()


def test_one_gpu_profiles_fit_a_single_h100(registry: Registry) -> None:
    snap = read_gpus(fake_nvml(1, H100))
    ok = [p.name for p in registry if p.device == "cuda" and check_fit(p, snap, environ={}).ok]
    assert ok == ["llama-3.1-8b", "qwen3-8b"]
