"""Prometheus metrics of the service, all on the API's `/metrics`.

The API's own series (requests and latency per route and status) live in a per-app registry. The
queue's and the workers' series are read from Redis at scrape time: queue depth, pending entries
and dead letters per annotator stream, live workers, and the workers' batch-size and inference
latency histograms (which workers HINCRBY into `P:metrics:<annotator>`), plus GPU memory per
worker when the worker has a GPU. One scrape target therefore covers the whole service.
"""
from __future__ import annotations

from typing import Any

from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.core import GaugeMetricFamily, HistogramMetricFamily

from sigma.service.jobs import BATCH_BUCKETS, LATENCY_BUCKETS

REQUEST_BUCKETS = (0.005, 0.01, 0.015, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)


class ApiMetrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.requests = Counter("sigma_http_requests_total", "HTTP requests by route and status",
                                ["method", "route", "status"], registry=self.registry)
        self.latency = Histogram("sigma_http_request_duration_seconds", "HTTP request latency by route and status",
                                 ["method", "route", "status"], buckets=REQUEST_BUCKETS, registry=self.registry)
        self.enqueued = Counter("sigma_jobs_enqueued_total", "jobs accepted onto the queue", ["annotator"],
                                registry=self.registry)
        self.rejected = Counter("sigma_jobs_rejected_total", "requests refused before enqueueing",
                                ["reason"], registry=self.registry)
        self.withdrawn = Counter("sigma_jobs_withdrawn_total", "submissions answered 503 after their MULTI was "
                                 "sent, then taken back (api/withdrawals.py)", registry=self.registry)

    def observe(self, method: str, route: str, status: int, seconds: float) -> None:
        labels = (method, route, str(status))
        self.requests.labels(*labels).inc()
        self.latency.labels(*labels).observe(seconds)


def _histogram(name: str, doc: str, data: dict[str, str], prefix: str, buckets: tuple, annotator: str
               ) -> HistogramMetricFamily:
    fam = HistogramMetricFamily(name, doc, labels=["annotator"])
    count = float(data.get(f"{prefix}_count", 0) or 0)
    rows = [(str(float(le)), float(data.get(f"{prefix}_le_{le}", 0) or 0)) for le in buckets]
    rows.append(("+Inf", count))
    fam.add_metric([annotator], rows, sum_value=float(data.get(f"{prefix}_sum", 0) or 0))
    return fam


class SnapshotCollector:
    """Yields families from a snapshot the /metrics route fetched (asynchronously) from Redis."""

    def __init__(self, snapshot: dict[str, Any]):
        self.s = snapshot

    def collect(self):
        up = GaugeMetricFamily("sigma_redis_up", "1 when the API reached Redis during this scrape")
        up.add_metric([], 1.0 if self.s.get("redis_up") else 0.0)
        yield up
        if not self.s.get("redis_up"):
            return
        depth = GaugeMetricFamily("sigma_queue_depth", "stream entries waiting or in flight", labels=["annotator"])
        pending = GaugeMetricFamily("sigma_queue_pending", "entries delivered but not yet acknowledged",
                                    labels=["annotator"])
        dead = GaugeMetricFamily("sigma_dead_letters", "entries in the dead-letter stream", labels=["annotator"])
        for name, q in self.s["queues"].items():
            depth.add_metric([name], q["depth"])
            pending.add_metric([name], q["pending"])
            dead.add_metric([name], q["dead"])
        yield depth
        yield pending
        yield dead
        workers = GaugeMetricFamily("sigma_workers_alive", "workers with a fresh heartbeat", labels=["annotator"])
        gpu = GaugeMetricFamily("sigma_worker_gpu_memory_bytes", "torch.cuda.memory_allocated per worker",
                                labels=["worker"])
        alive: dict[str, int] = {}
        for w in self.s["workers"]:
            alive[w.get("annotator", "?")] = alive.get(w.get("annotator", "?"), 0) + 1
            if "gpu_memory_bytes" in w:
                gpu.add_metric([w.get("consumer", "?")], float(w["gpu_memory_bytes"]))
        for name, n in alive.items():
            workers.add_metric([name], n)
        yield workers
        yield gpu
        for name, data in self.s["worker_metrics"].items():
            if not data:
                continue
            yield _histogram("sigma_worker_batch_size", "pairs per predictor call", data, "batch",
                             BATCH_BUCKETS, name)
            yield _histogram("sigma_inference_seconds", "predictor call latency (decode + model + encode)",
                             data, "infer", LATENCY_BUCKETS, name)


def render(metrics: ApiMetrics, snapshot: dict[str, Any]) -> bytes:
    extra = CollectorRegistry()
    extra.register(SnapshotCollector(snapshot))
    return generate_latest(metrics.registry) + generate_latest(extra)
