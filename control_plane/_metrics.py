"""Prometheus metrics of a control-plane replica (served on --metrics-listen)."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from longline._store import RedisError, Store

log = logging.getLogger("longline.control_plane.metrics")

_LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5)


class ControlPlaneMetrics:
    """The replica's metrics; cluster-wide gauges come from Redis, refreshed every second."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self.registry = registry
        self.queue_depth = Gauge(
            "longline_queue_depth",
            "Runs waiting for a worker, by workflow (cluster-wide)",
            ["workflow"],
            registry=registry,
        )
        self.runs = Gauge(
            "longline_runs", "Runs by status (cluster-wide)", ["status"], registry=registry
        )
        self.lease_expiries = Counter(
            "longline_lease_expiries",
            "Attempts this replica found lost (lease expired): requeued or failed",
            registry=registry,
        )
        self.watchers = Gauge(
            "longline_stream_watchers",
            "StreamRun and RunWorkflow calls served here",
            registry=registry,
        )
        self.workers = Gauge(
            "longline_connected_workers", "Workers connected to this replica", registry=registry
        )
        self.unserved = Gauge(
            "longline_runs_unserved",
            "Queued runs no live worker will take: their build has no worker left, or the "
            "current build has none (cluster-wide; see `longline builds list`)",
            ["workflow"],
            registry=registry,
        )
        self.delivery = Histogram(
            "longline_event_delivery_seconds",
            "From an event's write in Redis to its fan-out to this replica's watchers",
            buckets=_LATENCY_BUCKETS,
            registry=registry,
        )

    def watch(self, watchers: Callable[[], int], workers: Callable[[], int]) -> None:
        """Read the live counts from the replica's own objects at scrape time."""
        self.watchers.set_function(watchers)
        self.workers.set_function(workers)

    async def refresh(self, store: Store, interval: float = 1.0) -> None:
        """Keep the cluster-wide gauges current; runs until cancelled."""
        seen: set[str] = set()
        while True:
            try:
                stats = await store.runs.stats()
                by_status, queued = stats.by_status, stats.queued
                builds = await store.builds.list_all()
            except RedisError as exc:
                log.warning("metrics could not read Redis: %s", exc)
            except ValueError as exc:  # a field it cannot parse: reported, never fatal
                log.error("metrics could not parse what Redis holds: %s", exc)
            else:
                for status, n in by_status.items():
                    self.runs.labels(status).set(n)
                for workflow in seen - set(queued):
                    self.queue_depth.labels(workflow).set(0)
                for workflow, n in queued.items():
                    self.queue_depth.labels(workflow).set(n)
                seen |= set(queued)
                for w in builds:
                    self.unserved.labels(w.workflow).set(w.unserved)
            await asyncio.sleep(interval)
