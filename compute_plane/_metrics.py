"""Prometheus metrics of a worker (served on --metrics-listen)."""

from __future__ import annotations

import json
from collections.abc import Callable

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

_LATENCY_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1)


class WorkerMetrics:
    """What a worker is doing, and what its runs cost."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self.registry = registry
        self.running = Gauge("longline_worker_running_runs", "Runs held now", registry=registry)
        self.free = Gauge("longline_worker_free_slots", "Slots free now", registry=registry)
        self.event_write = Histogram(
            "longline_event_write_seconds",
            "One fenced event write to Redis",
            buckets=_LATENCY_BUCKETS,
            registry=registry,
        )
        self.finished = Counter(
            "longline_worker_attempts",
            "Attempts that ended here, by outcome",
            ["outcome"],
            registry=registry,
        )
        self.retries = Counter(
            "longline_component_retries",
            "Component tries beyond the first",
            ["component"],
            registry=registry,
        )
        self.tokens = Counter(
            "longline_llm_tokens",
            "LLM tokens used, by model and kind (input, output)",
            ["model", "kind"],
            registry=registry,
        )

    def watch(self, running: Callable[[], int], slots: int) -> None:
        """Read the slot counts from the worker at scrape time."""
        self.running.set_function(running)
        self.free.set_function(lambda: max(0, slots - running()))

    def step_finished(self, component: str, data_json: str) -> None:
        """Count a finished step's retries and tokens."""
        try:
            data = json.loads(data_json) if data_json else {}
        except ValueError:
            return
        retries = int(data.get("tries", 1) or 1) - 1
        if retries > 0:
            self.retries.labels(component).inc(retries)
        llm = data.get("llm")
        if isinstance(llm, dict):
            usage = llm.get("usage") or {}
            model = str(llm.get("model", ""))
            self.tokens.labels(model, "input").inc(int(usage.get("input_tokens", 0)))
            self.tokens.labels(model, "output").inc(int(usage.get("output_tokens", 0)))
