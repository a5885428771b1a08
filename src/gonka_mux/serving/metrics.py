"""Read vLLM's Prometheus ``/metrics`` text: queue depth, KV-cache use, token counters, latency.

vLLM renamed several metrics over time, so each quantity is looked up under every name it has had
(newest first), and the name actually found is reported in ``metric_names``:

- KV-cache use: ``vllm:kv_cache_usage_perc`` (V1) / ``vllm:gpu_cache_usage_perc`` (V0, removed).
- Inter-token latency: ``vllm:inter_token_latency_seconds`` /
  ``vllm:time_per_output_token_seconds``.
- V0 also had ``vllm:num_requests_swapped`` (preempted to CPU), counted as queued work here.

Data-parallel servers expose one series per ``engine`` label: gauges and counters are summed over
engines (KV-cache use is averaged, it is a fraction), histogram buckets are summed by bound.

The parser is a small one of our own rather than ``prometheus_client``: the client side of
gonka_mux reads ``/metrics`` too, and must not need the serving extra.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

__all__ = [
    "Histogram",
    "Sample",
    "VllmMetrics",
    "parse_prometheus_text",
]


@dataclass(frozen=True)
class Sample:
    name: str
    labels: Mapping[str, str]
    value: float


_ESCAPES = {"\\": "\\", '"': '"', "n": "\n"}


def _parse_labels(text: str, start: int) -> tuple[dict[str, str], int]:
    """Parse ``{a="x",b="y"}`` beginning at ``text[start] == '{'``; return labels and end index."""
    labels: dict[str, str] = {}
    i = start + 1
    n = len(text)
    while i < n:
        while i < n and text[i] in " ,":
            i += 1
        if i < n and text[i] == "}":
            return labels, i + 1
        eq = text.index("=", i)
        key = text[i:eq].strip()
        i = eq + 1
        while text[i] == " ":
            i += 1
        if text[i] != '"':
            raise ValueError("label value is not quoted")
        i += 1
        chars: list[str] = []
        while text[i] != '"':
            if text[i] == "\\":
                chars.append(_ESCAPES.get(text[i + 1], "\\" + text[i + 1]))
                i += 2
            else:
                chars.append(text[i])
                i += 1
        labels[key] = "".join(chars)
        i += 1
    raise ValueError("unterminated label set")


def parse_prometheus_text(text: str) -> list[Sample]:
    """Samples from Prometheus text exposition format 0.0.4. Malformed lines are skipped."""
    samples: list[Sample] = []
    for raw in text.splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        try:
            brace = line.find("{")
            space = line.find(" ")
            if brace != -1 and (space == -1 or brace < space):
                name = line[:brace]
                labels, end = _parse_labels(line, brace)
                rest = line[end:].split()
            else:
                name, *rest = line.split()
                labels = {}
            samples.append(Sample(name, labels, float(rest[0])))
        except (ValueError, IndexError):
            continue
    return samples


@dataclass(frozen=True)
class Histogram:
    """A cumulative histogram merged over label sets: ``buckets`` maps upper bound -> count."""

    buckets: tuple[tuple[float, float], ...]
    count: float
    sum: float

    @classmethod
    def from_samples(cls, samples: Iterable[Sample], base: str) -> Histogram | None:
        by_bound: dict[float, float] = {}
        count = total = 0.0
        seen = False
        for s in samples:
            if s.name == base + "_bucket" and "le" in s.labels:
                bound = float(s.labels["le"])
                by_bound[bound] = by_bound.get(bound, 0.0) + s.value
                seen = True
            elif s.name == base + "_count":
                count += s.value
                seen = True
            elif s.name == base + "_sum":
                total += s.value
                seen = True
        if not seen:
            return None
        if not count and math.inf in by_bound:
            count = by_bound[math.inf]
        return cls(tuple(sorted(by_bound.items())), count, total)

    def minus(self, older: Histogram) -> Histogram:
        """The observations made since ``older`` (counters only grow, unless vLLM restarted)."""
        old = dict(older.buckets)
        if self.count < older.count:  # the server restarted: everything is new
            return self
        return Histogram(
            tuple((b, c - old.get(b, 0.0)) for b, c in self.buckets),
            self.count - older.count,
            self.sum - older.sum,
        )

    def quantile(self, q: float) -> float | None:
        """Estimate a quantile as Prometheus' histogram_quantile does (linear inside a bucket),
        except where that would invent precision; :meth:`quantile_bound` says which."""
        return self.quantile_bound(q)[0]

    def quantile_bound(self, q: float) -> tuple[float | None, str | None]:
        """``(value, bound)``: ``bound`` is None for an estimate, ``"upper"`` when the value is
        only an upper bound, ``"lower"`` when only a lower bound.

        - In the first bucket (lower edge 0) nothing says where the observations lie: linear
          interpolation there made a 24 us mean queue time read as a 0.15 s median. The
          quantile is reported as an upper bound: the bucket's bound, or Markov's bound
          ``mean / (1 - q)`` (any non-negative quantity) when that is smaller.
        - Beyond the last finite bound it is at least that bound: a lower bound.
        """
        if self.count <= 0 or not self.buckets:
            return None, None
        rank = q * self.count
        prev_bound, prev_count = 0.0, 0.0
        for bound, cumulative in self.buckets:
            if cumulative >= rank:
                if math.isinf(bound):
                    return prev_bound, "lower"
                if prev_bound == 0.0 and bound > 0.0:
                    markov = self.sum / self.count / (1.0 - q) if q < 1.0 else math.inf
                    return min(bound, markov), "upper"
                if cumulative == prev_count:
                    return bound, None
                value = prev_bound + (bound - prev_bound) * (rank - prev_count) / (
                    cumulative - prev_count
                )
                return value, None
            prev_bound, prev_count = bound, cumulative
        return prev_bound, "lower"

    def summary(self) -> dict[str, Any]:
        """``count``, ``mean`` and ``p50``/``p90``/``p99`` (seconds); ``bounds`` names the
        percentiles that are only bounds (``{"p50": "upper"}``: the true value is at most that)."""

        def r(x: float | None) -> float | None:  # 6 significant digits: queue times are in us
            return None if x is None else float(f"{x:.6g}")

        out: dict[str, Any] = {
            "count": self.count,
            "mean": r(self.sum / self.count) if self.count else None,
        }
        bounds: dict[str, str] = {}
        for name, q in (("p50", 0.50), ("p90", 0.90), ("p99", 0.99)):
            value, bound = self.quantile_bound(q)
            out[name] = r(value)
            if bound is not None:
                bounds[name] = bound
        out["bounds"] = bounds
        return out


# quantity -> names it has had, newest first
_NAMES: dict[str, tuple[str, ...]] = {
    "running": ("vllm:num_requests_running",),
    "waiting": ("vllm:num_requests_waiting",),
    "swapped": ("vllm:num_requests_swapped",),
    "kv_cache_usage": ("vllm:kv_cache_usage_perc", "vllm:gpu_cache_usage_perc"),
    "prompt_tokens": ("vllm:prompt_tokens_total", "vllm:prompt_tokens"),
    "generation_tokens": ("vllm:generation_tokens_total", "vllm:generation_tokens"),
    "preemptions": ("vllm:num_preemptions_total", "vllm:num_preemptions"),
    "requests_finished": ("vllm:request_success_total", "vllm:request_success"),
}
_HISTOGRAMS: dict[str, tuple[str, ...]] = {
    "time_to_first_token": ("vllm:time_to_first_token_seconds",),
    "inter_token_latency": (
        "vllm:inter_token_latency_seconds",
        "vllm:time_per_output_token_seconds",
    ),
    "e2e_request_latency": ("vllm:e2e_request_latency_seconds",),
    "queue_time": ("vllm:request_queue_time_seconds",),
}


@dataclass(frozen=True)
class VllmMetrics:
    """What gonka-serve needs from one ``/metrics`` scrape. ``None`` means "not exposed"."""

    running: float | None = None
    waiting: float | None = None
    swapped: float | None = None
    waiting_by_reason: Mapping[str, float] = field(default_factory=dict)
    kv_cache_usage: float | None = None
    prompt_tokens: float | None = None
    generation_tokens: float | None = None
    preemptions: float | None = None
    finished_by_reason: Mapping[str, float] = field(default_factory=dict)
    histograms: Mapping[str, Histogram] = field(default_factory=dict)
    metric_names: Mapping[str, str] = field(default_factory=dict)
    model_names: tuple[str, ...] = ()

    @property
    def queue_depth(self) -> float | None:
        """Requests the server holds: running + waiting (+ V0's swapped)."""
        if self.running is None and self.waiting is None:
            return None
        return (self.running or 0.0) + (self.waiting or 0.0) + (self.swapped or 0.0)

    @classmethod
    def from_text(cls, text: str) -> VllmMetrics:
        return cls.from_samples(parse_prometheus_text(text))

    @classmethod
    def from_samples(cls, samples: list[Sample]) -> VllmMetrics:
        by_name: dict[str, list[Sample]] = {}
        for s in samples:
            by_name.setdefault(s.name, []).append(s)
        values: dict[str, Any] = {}
        used: dict[str, str] = {}
        for quantity, names in _NAMES.items():
            for name in names:
                found = by_name.get(name)
                if found:
                    used[quantity] = name
                    if quantity == "kv_cache_usage":
                        values[quantity] = sum(s.value for s in found) / len(found)
                    elif quantity == "requests_finished":
                        reasons: dict[str, float] = {}
                        for s in found:
                            reason = s.labels.get("finished_reason", "unknown")
                            reasons[reason] = reasons.get(reason, 0.0) + s.value
                        values["finished_by_reason"] = reasons
                    else:
                        values[quantity] = sum(s.value for s in found)
                    break
        by_reason: dict[str, float] = {}
        for s in by_name.get("vllm:num_requests_waiting_by_reason", []):
            reason = s.labels.get("reason", "unknown")
            by_reason[reason] = by_reason.get(reason, 0.0) + s.value
        histograms: dict[str, Histogram] = {}
        for quantity, names in _HISTOGRAMS.items():
            for name in names:
                hist = Histogram.from_samples(
                    [s for s in samples if s.name.startswith(name + "_")], name
                )
                if hist is not None:
                    histograms[quantity] = hist
                    used[quantity] = name
                    break
        models = sorted({s.labels["model_name"] for s in samples if "model_name" in s.labels})
        return cls(
            waiting_by_reason=by_reason,
            histograms=histograms,
            metric_names=used,
            model_names=tuple(models),
            **values,
        )

    def latency_summary(self, since: VllmMetrics | None = None) -> dict[str, dict[str, Any]]:
        """Summaries (count, mean, p50/p90/p99 seconds) per latency histogram.

        With ``since``, only the observations made after that earlier scrape are summarised.
        """
        out: dict[str, dict[str, Any]] = {}
        for quantity, hist in self.histograms.items():
            if since is not None and quantity in since.histograms:
                hist = hist.minus(since.histograms[quantity])
            out[quantity] = hist.summary()
        return out

    def queue_dict(self) -> dict[str, Any]:
        return {
            "running": self.running,
            "waiting": self.waiting,
            "swapped": self.swapped,
            "depth": self.queue_depth,
            "waiting_by_reason": dict(self.waiting_by_reason),
            "kv_cache_usage": self.kv_cache_usage,
        }
