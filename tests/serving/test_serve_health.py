"""Health JSON from recorded vLLM /metrics and a fake NVML; the sidecar over real HTTP."""

from __future__ import annotations

import asyncio
import json
import sys
from pathlib import Path

import httpx
import pynvml
import pytest
from _serving_support import H100, FakeGpu, FakeNvml, RecordedVllm, fake_nvml, recorded
from test_serve_supervisor import FAST, make_supervisor

from gonka_mux.serving.gpu import read_gpus
from gonka_mux.serving.health import HealthReporter, HealthServer, build_report
from gonka_mux.serving.metrics import VllmMetrics
from gonka_mux.serving.supervisor import State, SupervisorConfig

GONKA_SERVE = str(Path(sys.executable).with_name("gonka-serve"))


def test_report_from_recorded_current_metrics_and_fake_gpus() -> None:
    metrics = VllmMetrics.from_text(recorded("vllm-0.32.0-cpu-under-load.metrics.txt"))
    gpu = read_gpus(FakeNvml([FakeGpu(**H100, used_gib=70.0, util=93, temp=67), FakeGpu(**H100)]))
    report = build_report(
        status={
            "state": "ready",
            "profile": "p",
            "served_model_name": "tiny",
            "models": ["tiny"],
            "restarts": 2,
        },
        metrics=metrics,
        gpu=gpu,
        vllm={"url": "http://x", "health_http": 200},
    )
    assert report["ready"] is True and report["state"] == "ready" and report["restarts"] == 2
    q = report["queue"]
    assert (q["running"], q["waiting"], q["depth"]) == (2.0, 4.0, 6.0)
    assert q["waiting_by_reason"]["capacity"] == 4.0 and q["kv_cache_usage"] > 0
    assert set(report["latency"]) >= {
        "time_to_first_token",
        "inter_token_latency",
        "e2e_request_latency",
    }
    assert report["latency"]["inter_token_latency"]["count"] == 1042.0
    assert report["tokens"]["generation_total"] == 1046.0
    g0 = report["gpu"]["gpus"][0]
    assert report["gpu"]["available"] is True and report["gpu"]["count"] == 2
    assert (g0["utilization_gpu_pct"], g0["temperature_c"], g0["memory_used_gib"]) == (
        93.0,
        67.0,
        70.0,
    )
    json.dumps(report)  # serialisable as is


def test_report_from_recorded_old_metrics_without_gpu() -> None:
    metrics = VllmMetrics.from_text(recorded("vllm-v0-legacy.metrics.txt"))
    gpu = read_gpus(FakeNvml([], init_error=pynvml.NVMLError_LibraryNotFound))
    report = build_report(status={"state": "draining"}, metrics=metrics, gpu=gpu, vllm={})
    assert report["ready"] is False and report["state"] == "draining"
    assert report["queue"]["depth"] == 5.0 and report["queue"]["swapped"] == 0.0
    assert report["metric_names"]["kv_cache_usage"] == "vllm:gpu_cache_usage_perc"
    assert report["latency"]["inter_token_latency"]["p50"] is not None
    assert report["gpu"]["available"] is False and "NVML" in report["gpu"]["error"]


def test_report_without_metrics_has_empty_queue() -> None:
    report = build_report(status={"state": "starting"}, metrics=None, gpu=None, vllm={})
    assert report["queue"]["depth"] is None and report["latency"] == {}
    assert report["metrics_age_s"] is None
    assert report["gpu"]["available"] is False


async def test_sidecar_follows_the_supervisor(port: int) -> None:
    config = SupervisorConfig(**{**FAST.__dict__, "drain_notice_s": 1.0})
    sup, _ = make_supervisor(port, config=config)
    nvml = fake_nvml(2, H100)
    reporter = HealthReporter(supervisor=sup, nvml=nvml)
    server = HealthServer(reporter, port=0)
    await server.start()
    try:
        async with httpx.AsyncClient(timeout=10) as client:
            resp = await client.get(server.url)
            assert resp.status_code == 503 and resp.json()["state"] == "stopped"
            task = asyncio.create_task(sup.run())
            await sup.wait_for_state(State.READY, timeout=15)
            resp = await client.get(server.url)
            body = resp.json()
            assert resp.status_code == 200 and body["ready"] is True
            assert body["models"] == ["fake"] and body["served_model_name"] == "fake"
            assert body["vllm"]["health_http"] == 200 and body["vllm"]["pid"] == sup.pid
            assert body["queue"]["running"] == 0.0 and body["gpu"]["count"] == 2
            assert body["metric_names"]["generation_tokens"] == "vllm:generation_tokens_total"
            assert 0 <= body["metrics_age_s"] < 5
            sup.request_stop()
            await sup.wait_for_state(State.DRAINING, timeout=5)
            resp = await client.get(server.url)  # during the drain notice: routers see it
            assert resp.status_code == 503 and resp.json()["state"] == "draining"
            status = await client.get(server.url.replace("/health", "/status"))
            assert status.status_code == 200 and status.json()["state"] == "draining"
            assert (await client.get(server.url.replace("/health", "/nope"))).status_code == 404
            assert (await client.post(server.url)).status_code == 405
            assert await asyncio.wait_for(task, 15) == 0
            resp = await client.get(server.url)
            assert resp.status_code == 503 and resp.json()["state"] == "stopped"
    finally:
        await server.aclose()
        await reporter.aclose()


async def test_unsupervised_report_reads_vllm_directly(recorded_vllm: RecordedVllm) -> None:
    reporter = HealthReporter(vllm_url=recorded_vllm.url, gpu_reader=None, served_model_name="tiny")
    try:
        report = await reporter.report()
        assert report["state"] == "ready" and report["models"] == ["tiny"]
        assert report["vllm"]["version"] == "0.32.0" and report["vllm"]["max_model_len"] == 2048
        assert report["queue"]["depth"] == 6.0 and report["latency_recent"] is None
        assert report["metrics_age_s"] == 0.0
        # A second scrape later: the recent window covers only what happened in between.
        recorded_vllm.metrics_text = recorded("vllm-0.32.0-cpu-after-load.metrics.txt")
        report = await reporter.report()
        assert report["queue"]["depth"] == 0.0
        assert report["latency_recent"]["e2e_request_latency"]["count"] == 6.0
        recorded_vllm.health_status = 503
        assert (await reporter.report())["state"] == "unhealthy"
    finally:
        await reporter.aclose()


async def test_unsupervised_states(recorded_vllm: RecordedVllm) -> None:
    wrong = HealthReporter(vllm_url=recorded_vllm.url, gpu_reader=None, served_model_name="other")
    assert (await wrong.report())["state"] == "starting"
    await wrong.aclose()
    recorded_vllm.auth_required = True
    keyed = HealthReporter(vllm_url=recorded_vllm.url, gpu_reader=None, api_key="k-123")
    assert (await keyed.report())["models"] == ["tiny"]
    await keyed.aclose()
    recorded_vllm.close()
    gone = HealthReporter(vllm_url=recorded_vllm.url, gpu_reader=None)
    report = await gone.report()
    assert report["state"] == "down" and report["vllm"]["health_http"] is None
    await gone.aclose()


async def _cli(*args: str) -> tuple[int, str]:
    proc = await asyncio.create_subprocess_exec(
        GONKA_SERVE, *args, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE
    )
    out, _ = await proc.communicate()
    assert proc.returncode is not None
    return proc.returncode, out.decode()


async def test_health_command_reads_a_sidecar_and_vllm(recorded_vllm: RecordedVllm) -> None:
    reporter = HealthReporter(vllm_url=recorded_vllm.url, gpu_reader=None)
    server = HealthServer(reporter, port=0)
    await server.start()
    try:
        code, out = await _cli("health", "--url", server.url)
        assert code == 0 and json.loads(out)["queue"]["depth"] == 6.0
        code, out = await _cli("health", "--vllm-url", recorded_vllm.url)
        report = json.loads(out)
        assert code == 0 and report["state"] == "ready" and "available" in report["gpu"]
    finally:
        await server.aclose()
        await reporter.aclose()
    code, out = await _cli("health", "--url", server.url, "--timeout", "2")
    assert code == 1 and json.loads(out)["state"] == "down"


@pytest.mark.parametrize("path", ["/health", "/status"])
async def test_sidecar_survives_a_broken_report(path: str) -> None:
    class Broken(HealthReporter):
        async def report(self) -> dict:  # type: ignore[override]
            raise RuntimeError("boom")

    server = HealthServer(Broken(vllm_url="http://127.0.0.1:9", gpu_reader=None), port=0)
    await server.start()
    try:
        async with httpx.AsyncClient() as client:
            assert (await client.get(server.url.replace("/health", path))).status_code == 500
            assert (await client.get(server.url.replace("/health", path))).status_code == 500
    finally:
        await server.aclose()


def test_stopping_with_a_health_request_in_flight_logs_no_traceback():
    """The vLLM leg's clean stop printed asyncio's "Exception in callback ... CancelledError"
    when a health request was in flight as the sidecar's loop ended (Python 3.11)."""

    class Stuck:
        async def report(self) -> dict:
            await asyncio.Event().wait()  # a report that never finishes
            return {}

    errors: list[tuple[str, object]] = []

    async def main() -> None:
        loop = asyncio.get_running_loop()
        loop.set_exception_handler(lambda _loop, context: errors.append(("loop", context)))
        server = HealthServer(Stuck(), host="127.0.0.1", port=0)  # type: ignore[arg-type]
        await server.start()
        _reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
        writer.write(b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n")
        await writer.drain()
        await asyncio.sleep(0.2)  # the handler is now waiting for the report
        writer.close()
        # asyncio.run() cancels the handler task on the way out, with the server still open

    asyncio.run(main())
    assert errors == []
