"""Prometheus metrics of the service, all on the API's `/metrics`.

The API's own series (requests and latency per route and status) live in a per-app registry. The
queue's and the workers' series are read from Redis at scrape time: queue depth, pending entries
and dead letters per annotator stream, live workers, and the workers' batch-size and inference
latency histograms (which workers HINCRBY into `P:metrics:<annotator>`), plus GPU memory per
worker when the worker has a GPU. One scrape target therefore covers the whole service.

No label value comes from a request as sent: the method is one of `HTTP_METHODS` or `other` (uvicorn passes any
token as a method, and each new one was a new series for good), the route is the matched route's template or
`unmatched`. What is read from Redis may have been written by anyone who reaches it: a value that is not a finite
number leaves out the series it belongs to (with one log line), never the scrape.
"""
from __future__ import annotations

import collections
import logging
import math
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.core import GaugeMetricFamily, HistogramMetricFamily

from sigma.service.heartbeats import loading
from sigma.service.jobs import BATCH_BUCKETS, LATENCY_BUCKETS

log = logging.getLogger("sigma.api")

REQUEST_BUCKETS = (0.005, 0.01, 0.015, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)
HTTP_METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "DELETE", "PATCH", "OPTIONS", "CONNECT", "TRACE"})
CLIENT_CLOSED = 499     # the status label of a request whose client hung up before any answer (nginx's code)
# the scope key under which the server protocol notes the status it answered itself, for a request whose route was
# still reading the body (a chunk declared over the limit: 413; a body of tiny chunks: 400): the route sees only a
# disconnect, and the request counted as 499 although the client read the refusal
ANSWERED_BY_SERVER = "sigma.answered_by_server"
# the scope key of an asyncio.Event the server protocol sets when the client half-closes (shuts down its sending side)
# after a whole request: the answer still goes out; a route that waits on the client (POST /v1/annotate) stops waiting
PEER_EOF = "sigma.peer_eof"
# the scope key of an asyncio.Future the server protocol resolves, for an answer sent after the client's FIN, once it
# knows whether the client took it: True when the client's side reset it (the client had closed, not half-closed:
# counted 499), False when acknowledged or not known within PEER_FATE_S (counted as the status sent)
PEER_GONE = "sigma.peer_gone"
PEER_FATE_S = 1.0


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
        self.bytes_in_flight = Gauge("sigma_api_bytes_in_flight", "request body bytes received and held by "
                                     "submissions (limits.max_bytes_in_flight)", registry=self.registry)
        self.withdrawn = Counter("sigma_jobs_withdrawn_total", "submissions answered 503 after their MULTI was "
                                 "sent, then taken back (api/withdrawals.py)", registry=self.registry)

    def observe(self, method: str, route: str, status: int, seconds: float) -> None:
        labels = (method_label(method), route, str(status))
        self.requests.labels(*labels).inc()
        self.latency.labels(*labels).observe(seconds)


def method_label(method: str) -> str:
    """The method as a label value: the standard ones as sent (they are case-sensitive), anything else `other`."""
    return method if method in HTTP_METHODS else "other"


_noted: set[str] = set()


def note_damage(what: str) -> None:
    """One warning per damaged thing per process (a scrape every 15 s would repeat it for ever), at most 100."""
    if what not in _noted and len(_noted) < 100:
        _noted.add(what)
        log.warning("metrics: %s; its series are left out of /metrics", what)


def number(value: Any) -> float | None:
    """A finite number read from Redis, or None for anything else (text, '', nan, inf)."""
    try:
        out = float(value)
    except (TypeError, ValueError):
        return None
    return out if math.isfinite(out) else None


def _histogram_rows(data: dict[str, str], prefix: str, buckets: tuple) -> tuple[list, float] | None:
    """(bucket rows, sum) of one worker histogram, or None when a field holds something that is not a number."""
    names = [f"{prefix}_le_{le}" for le in buckets] + [f"{prefix}_count", f"{prefix}_sum"]
    values = [number(data.get(name, 0)) for name in names]
    if any(v is None for v in values):
        return None
    rows = [(str(float(le)), v) for le, v in zip(buckets, values)]
    rows.append(("+Inf", values[-2]))
    return rows, values[-1]


class SnapshotCollector:
    """Yields families from a snapshot the /metrics route fetched (asynchronously) from Redis."""

    def __init__(self, snapshot: dict[str, Any]):
        self.s = snapshot

    def collect(self):
        up = GaugeMetricFamily("sigma_redis_up", "1 when the API reached Redis during this scrape")
        up.add_metric([], 1.0 if self.s.get("redis_up") else 0.0)
        yield up
        complete = GaugeMetricFamily("sigma_metrics_snapshot_complete", "1 when this scrape read everything it shows "
                                     "from Redis; 0 when api.metrics_timeout_s cut the reads (what was read is shown, "
                                     "sigma_workers_alive is left out) or Redis failed")
        complete.add_metric([], 1.0 if self.s.get("complete") else 0.0)
        yield complete
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
        workers = GaugeMetricFamily("sigma_workers_alive", "workers with a fresh heartbeat and their model loaded",
                                    labels=["annotator"])
        loading_now = GaugeMetricFamily("sigma_workers_loading", "workers with a fresh heartbeat still loading their "
                                        "model (or waiting out memory, threads or a busy model folder to)",
                                        labels=["annotator"])
        gpu = GaugeMetricFamily("sigma_worker_gpu_memory_bytes", "torch.cuda.memory_allocated per worker",
                                labels=["worker"])
        decode = GaugeMetricFamily("sigma_worker_decode_threads", "threads decoding a worker's images: its decode "
                                   "pool's, 1 while the machine refuses the pool's threads", labels=["worker"])
        # the worker label is the heartbeat key's name, unique per key (its `consumer` field is not: two samples of
        # one series make Prometheus refuse the whole scrape)
        for name, (_, w) in sorted(self.s.get("heartbeats", {}).items()):
            for family, field in ((gpu, "gpu_memory_bytes"), (decode, "decode_threads")):
                if field in w:
                    value = number(w[field])
                    if value is None:
                        note_damage(f"worker {name[:80]!r} has a non-numeric {field}")
                    else:
                        family.add_metric([name], value)
        if self.s.get("complete"):       # a partial count (reads cut by the deadline) is left out
            beats = [w for _, w in self.s["heartbeats"].values()]
            # a worker loading its model takes no job: counted apart (it beats from before its load; it was absent)
            alive = collections.Counter(w.get("annotator", "?") for w in beats if not loading(w))
            starting = collections.Counter(w.get("annotator", "?") for w in beats if loading(w))
            # Every served annotator has a sample, 0 when none of its workers is alive: the series of one whose last
            # worker died (killed, stopped, its heartbeat expired) vanished instead of reading 0, so an alert on
            # `sigma_workers_alive == 0` never fired, while /readyz said 0 for it.
            for name in self.s.get("annotators", ()):
                alive[name] += 0
                starting[name] += 0
            for name, n in sorted(alive.items()):
                workers.add_metric([name], n)
            for name, n in sorted(starting.items()):
                loading_now.add_metric([name], n)
        yield workers
        yield loading_now
        yield gpu
        yield decode
        # one family per name, a sample per annotator: the text format allows one TYPE line per name
        histograms = [("sigma_worker_batch_size", "pairs per predictor call", "batch", BATCH_BUCKETS),
                      ("sigma_inference_seconds", "predictor call latency (decode + model + encode)", "infer",
                       LATENCY_BUCKETS)]
        for family_name, doc, prefix, buckets in histograms:
            fam = HistogramMetricFamily(family_name, doc, labels=["annotator"])
            for name, data in self.s["worker_metrics"].items():
                if not data:
                    continue
                found = _histogram_rows(data, prefix, buckets)
                if found is None:
                    note_damage(f"the {prefix}_* fields of the {name} metrics hash are not all numbers")
                    continue
                fam.add_metric([name], found[0], sum_value=found[1])
            yield fam


def render(metrics: ApiMetrics, snapshot: dict[str, Any]) -> bytes:
    extra = CollectorRegistry()
    extra.register(SnapshotCollector(snapshot))
    return generate_latest(metrics.registry) + generate_latest(extra)
