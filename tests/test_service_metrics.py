"""/metrics and /readyz against a hostile client and a damaged Redis, over real HTTP (uvicorn) and real Redis.

A scrape must stay bounded whatever clients send (label values are never taken from a request), and a value
someone else wrote into Redis costs at most the series it damages: never a 500 scrape, never `sigma_redis_up 0`
or a not-ready API while Redis answers.
"""
from __future__ import annotations

import re
import socket
import time

import pytest
from servicekit import KEYS, running_service, wait_until

from sigma.service.jobs import JobStore
from sigma.service.keys import Keys

pytestmark = [pytest.mark.redis, pytest.mark.timeout(600)]  # a hang guard, not a race (60-240 s failed on load)


@pytest.fixture(scope="module")
def svc(redis_server, tmp_path_factory):
    with running_service(redis_server, tmp_path_factory.mktemp("svc-metrics"), workers=[("pixel-diff", None)]) as s:
        yield s


def register(r, prefix: str, *keys) -> None:
    """Enter hand-written heartbeat hashes in the registry, as a worker of this release does with each beat: the
    module's real worker has made the registry, so readers no longer SCAN for keys outside it."""
    r.zadd(Keys(prefix).worker_registry(), {**{k: (time.time() + 60) * 1000 for k in keys}, b"": float("inf")})


def scrape(svc) -> str:
    resp = svc.http.get("/metrics", headers=svc.headers("metrics"))
    assert resp.status_code == 200, resp.text
    return resp.text


def samples(text: str, name: str) -> list[str]:
    return [line for line in text.splitlines() if line.startswith(name + "{") or line.startswith(name + " ")]


def test_unknown_http_methods_share_one_label(svc):
    """uvicorn passes any token as the method: each one was a new series (20 lines each), so a client sending
    FOO0, FOO1, ... grew the API's memory and every scrape without bound (500 methods: 1 MB of /metrics)."""
    for i in range(60):
        assert svc.http.request(f"FOO{i}", "/healthz").status_code == 405
    text = scrape(svc)
    methods = set(re.findall(r'sigma_http_requests_total\{method="([^"]*)"', text))
    assert methods <= {"GET", "HEAD", "POST", "PUT", "DELETE", "PATCH", "OPTIONS", "other"}, methods
    [other] = [line for line in samples(text, "sigma_http_requests_total") if 'method="other"' in line]
    assert 'route="/healthz",status="405"' in other and float(other.rsplit(" ", 1)[1]) == 60


def test_a_client_that_hangs_up_is_not_counted_as_a_server_error(svc):
    """A client that sends half a body and closes got no answer at all, yet was counted as status 500: any client
    could make the service's 5xx rate (and its alerts) say the server fails. Counted as 499 (client closed)."""
    def posts(status: str) -> float:
        lines = [line for line in samples(scrape(svc), "sigma_http_requests_total")
                 if 'route="/v1/jobs"' in line and 'method="POST"' in line and f'status="{status}"' in line]
        return sum(float(line.rsplit(" ", 1)[1]) for line in lines)

    before_500, before_499 = posts("500"), posts("499")
    with socket.create_connection(("127.0.0.1", svc.port)) as sock:
        sock.sendall(f"POST /v1/jobs HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {KEYS['user']}\r\n"
                     "Content-Type: application/json\r\nContent-Length: 1000\r\n\r\n{\"original\": \"".encode())
        # the route is reading the body (the bytes it received so far are charged to the budget) before the hang-up:
        # it was a 0.3 s sleep, and on a loaded machine the client could close before the API read the request,
        # which counted nothing
        wait_until(lambda: sum(float(line.rsplit(" ", 1)[1]) for line in samples(scrape(svc),
                                                                              "sigma_api_bytes_in_flight")) > 0,
                   60, "the half-sent body's bytes in the budget")
    wait_until(lambda: posts("499") == before_499 + 1, 30, "the hang-up counted")
    assert posts("500") == before_500


def test_each_metric_family_is_written_once(svc, redis_server):
    """Two annotators with worker histograms wrote `# HELP`/`# TYPE sigma_worker_batch_size` twice, each block
    with one annotator's samples: the text format allows one TYPE line per name, in one group (OpenMetrics
    parsers refuse the scrape)."""
    store = JobStore(redis_server.client(), Keys(svc.prefix), 60)
    for annotator in ("slow-diff", "poison-diff"):
        store.record_batch(annotator, 2, 0.05)
    text = scrape(svc)
    types = re.findall(r"^# TYPE (\S+) ", text, re.M)
    assert len(types) == len(set(types)), sorted(t for t in types if types.count(t) > 1)
    for annotator in ("slow-diff", "poison-diff"):
        assert f'sigma_worker_batch_size_count{{annotator="{annotator}"}} 1.0' in text


@pytest.mark.parametrize("field, value", [("batch_count", "abc"), ("infer_sum", "nan"), ("infer_le_0.1", "")])
def test_garbage_in_a_worker_metrics_hash_costs_only_that_histogram(svc, redis_server, field, value):
    """A non-numeric value in `P:metrics:<annotator>` (workers HINCRBY there; anyone who reaches Redis can HSET)
    raised ValueError while the scrape was written: /metrics answered 500 and the whole service went unseen."""
    r = redis_server.client()
    store = JobStore(r, Keys(svc.prefix), 60)
    store.record_batch("slow-diff", 3, 0.05)
    key = Keys(svc.prefix).metrics("slow-diff")
    try:
        r.hset(key, field, value)
        text = scrape(svc)
        assert "sigma_redis_up 1.0" in text and samples(text, "sigma_queue_depth")
        damaged = "batch" if field.startswith("batch") else "infer"
        intact = {"batch": "sigma_inference_seconds_count", "infer": "sigma_worker_batch_size_count"}[damaged]
        gone = {"batch": "sigma_worker_batch_size_count", "infer": "sigma_inference_seconds_count"}[damaged]
        assert f'{intact}{{annotator="slow-diff"}}' in text
        assert f'{gone}{{annotator="slow-diff"}}' not in text
    finally:
        r.delete(key)


def test_a_heartbeat_with_a_non_numeric_gpu_figure_is_left_out(svc, redis_server):
    """`gpu_memory_bytes` read from a worker's heartbeat hash went through float(): `lots` made /metrics a 500."""
    r = redis_server.client()
    key = Keys(svc.prefix).worker("intruder")
    r.hset(key, mapping={"annotator": "pixel-diff", "consumer": "intruder", "gpu_memory_bytes": "lots"})
    r.expire(key, 60)
    register(r, svc.prefix, key)
    try:
        text = scrape(svc)
        assert 'consumer="intruder"' not in text and 'worker="intruder"' not in text
        assert 'sigma_workers_alive{annotator="pixel-diff"} 2.0' in text   # the heartbeat itself still counts
    finally:
        r.delete(key)


def test_keys_of_the_wrong_type_do_not_make_redis_look_down(svc, redis_server):
    """A string where a metrics hash or a heartbeat hash belongs (WRONGTYPE) failed the whole snapshot: /metrics
    said `sigma_redis_up 0` and /readyz said not_ready 'unknown while Redis is unreachable', which takes every API
    replica out of a load balancer, while Redis answered and the worker was alive."""
    r = redis_server.client()
    keys = Keys(svc.prefix)
    r.set(keys.metrics("slow-diff"), "not a hash")
    r.set(keys.worker("zz-not-a-heartbeat"), "not a hash", ex=60)
    register(r, svc.prefix, keys.worker("zz-not-a-heartbeat"))
    try:
        text = scrape(svc)
        assert "sigma_redis_up 1.0" in text
        assert 'sigma_workers_alive{annotator="pixel-diff"} 1.0' in text
        ready = svc.http.get("/readyz")
        assert ready.status_code == 200, ready.text
        assert ready.json()["checks"]["workers"]["alive"] == 1
    finally:
        r.delete(keys.metrics("slow-diff"), keys.worker("zz-not-a-heartbeat"))


def test_an_annotator_whose_last_worker_died_reads_zero_workers(svc):
    """The one worker of a served annotator killed (SIGKILL; its heartbeat expires by its TTL): its
    `sigma_workers_alive` series vanished from the scrape instead of reading 0, so an alert on `== 0` never fired
    (Prometheus marks a missing series stale, it has no value to compare), while /readyz said 0 for it."""
    def alive(text: str, annotator: str) -> list[str]:
        return [line.rsplit(" ", 1)[1] for line in samples(text, "sigma_workers_alive")
                if f'annotator="{annotator}"' in line]

    worker = svc.start_worker("slow-diff")
    assert alive(scrape(svc), "slow-diff") == ["1.0"]
    worker.kill9()
    wait_until(lambda: svc.http.get("/readyz").json()["checks"]["workers"]["by_annotator"]["slow-diff"] == 0,
               10, "the killed worker's heartbeat to expire")
    text = scrape(svc)
    assert alive(text, "slow-diff") == ["0.0"], samples(text, "sigma_workers_alive")
    assert alive(text, "poison-diff") == ["0.0"]         # served, never had a worker
    assert alive(text, "pixel-diff") == ["1.0"]


def test_health_routes_answer_while_redis_is_frozen(redis_server, tmp_path):
    """Redis stopped (SIGSTOP) with a dozen heartbeats to scan: /healthz answers at once (it needs no Redis),
    /metrics within one socket timeout with `sigma_redis_up 0`, /readyz a 503 that says why."""
    with running_service(redis_server, tmp_path, ["redis.socket_timeout_s=1.5"]) as s:
        r = redis_server.client()
        for i in range(12):
            r.hset(Keys(s.prefix).worker(f"w{i}"), mapping={"annotator": "pixel-diff", "consumer": f"w{i}"})
            r.expire(Keys(s.prefix).worker(f"w{i}"), 60)
        assert "sigma_redis_up 1.0" in scrape(s)
        redis_server.freeze()
        try:
            t0 = time.monotonic()
            health = s.http.get("/healthz")
            t_health = time.monotonic() - t0
            t0 = time.monotonic()
            metrics = s.http.get("/metrics", headers=s.headers("metrics"))
            t_metrics = time.monotonic() - t0
            t0 = time.monotonic()
            ready = s.http.get("/readyz")
            t_ready = time.monotonic() - t0
        finally:
            redis_server.thaw()
        assert health.status_code == 200 and t_health < 0.5
        assert metrics.status_code == 200 and "sigma_redis_up 0.0" in metrics.text and t_metrics < 2.7
        assert ready.status_code == 503 and "not answering (timeout)" in ready.text and t_ready < 2.7


class SlowRedis:
    """A TCP proxy in front of the real redis-server that holds every reply `delay` seconds (a Redis far away or
    overloaded: each round trip costs `delay`, a pipeline of many commands costs it once). `delay` may change at
    any time; `url` is what the API is pointed at."""

    def __init__(self, port: int, delay: float = 0.0):
        import asyncio
        import threading

        self.upstream, self.delay = port, delay
        self.loop = asyncio.new_event_loop()
        ready = threading.Event()

        async def serve() -> None:
            self.server = await asyncio.start_server(self._client, "127.0.0.1", 0)
            self.port = self.server.sockets[0].getsockname()[1]
            ready.set()

        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()
        asyncio.run_coroutine_threadsafe(serve(), self.loop)
        assert ready.wait(5)
        self.url = f"redis://127.0.0.1:{self.port}/0"

    async def _client(self, reader, writer) -> None:
        import asyncio

        up_reader, up_writer = await asyncio.open_connection("127.0.0.1", self.upstream)
        held: asyncio.Queue = asyncio.Queue()

        async def to_server() -> None:
            while data := await reader.read(65536):
                up_writer.write(data)
                await up_writer.drain()
            up_writer.close()

        async def from_server() -> None:
            while data := await up_reader.read(65536):
                held.put_nowait((self.loop.time() + self.delay, data))
            held.put_nowait((0.0, b""))

        async def to_client() -> None:
            while True:
                due, data = await held.get()
                if not data:
                    break
                await asyncio.sleep(max(0.0, due - self.loop.time()))
                writer.write(data)
                await writer.drain()
            writer.close()

        tasks = [asyncio.ensure_future(t()) for t in (to_server, from_server, to_client)]
        await asyncio.wait(tasks, return_when=asyncio.FIRST_EXCEPTION)
        for t in tasks:
            t.cancel()
        writer.close()
        up_writer.close()

    def close(self) -> None:
        self.loop.call_soon_threadsafe(self.server.close)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(5)


def plant_heartbeats(r, prefix: str, n: int, **fields) -> None:
    pipe = r.pipeline(transaction=False)
    for i in range(n):
        key = Keys(prefix).worker(f"planted-{i}")
        pipe.hset(key, mapping={"annotator": "pixel-diff", "consumer": f"planted-{i}", "model_loaded": "1",
                                "last_beat": f"{time.time():.3f}", **fields})
        pipe.expire(key, 60)
    pipe.execute()


@pytest.fixture
def slow_redis(redis_server):
    proxy = SlowRedis(redis_server.port)
    yield proxy
    proxy.close()


def test_a_scrape_over_a_slow_redis_takes_a_few_round_trips(redis_server, slow_redis, tmp_path):
    """Each Redis round trip costing 40 ms (a loaded or distant Redis): /metrics made two round trips per annotator
    and one HGETALL per heartbeat, in sequence, so 150 heartbeats made a scrape last ~6 s (past a Prometheus scrape
    timeout, and each timed-out scrape was still loading Redis), and /readyz as long. Now the annotators' reads are
    one pipeline and the heartbeats one HGETALL pipeline per SCAN page."""
    with running_service(redis_server, tmp_path, [f"redis.url={slow_redis.url}"]) as s:
        plant_heartbeats(redis_server.client(), s.prefix, 150)
        assert "sigma_redis_up 1.0" in scrape(s)        # the API's pooled connection is made before the delay
        slow_redis.delay = 0.04
        t0 = time.monotonic()
        text = scrape(s)
        t_metrics = time.monotonic() - t0
        t0 = time.monotonic()
        ready = s.http.get("/readyz")
        t_ready = time.monotonic() - t0
        assert max(t_metrics, t_ready) < 1.5, (t_metrics, t_ready)
        assert 'sigma_workers_alive{annotator="pixel-diff"} 150.0' in text
        assert "sigma_metrics_snapshot_complete 1.0" in text
        assert ready.status_code == 200 and ready.json()["checks"]["workers"]["alive"] == 150, ready.text


def test_a_scrape_answers_by_its_deadline_whatever_redis_does(redis_server, slow_redis, tmp_path):
    """`api.metrics_timeout_s` bounds the Redis part of a scrape: past it /metrics answers at once with what it read
    (`sigma_metrics_snapshot_complete 0`; `sigma_workers_alive` left out rather than a partial count), and
    `sigma_redis_up 0` when nothing came back at all. Before, a scrape lasted as long as Redis took (a minute here)."""
    with running_service(redis_server, tmp_path, [f"redis.url={slow_redis.url}", "api.metrics_timeout_s=0.8"]) as s:
        plant_heartbeats(redis_server.client(), s.prefix, 150)
        assert "sigma_metrics_snapshot_complete 1.0" in scrape(s)
        slow_redis.delay = 0.5          # the queue reads come back at 0.5 s; the heartbeat SCAN would at 1.0 s
        t0 = time.monotonic()
        resp = s.http.get("/metrics", headers=s.headers("metrics"), timeout=4)
        elapsed = time.monotonic() - t0
        assert resp.status_code == 200 and elapsed < 1.6, elapsed
        text = resp.text
        assert "sigma_metrics_snapshot_complete 0.0" in text and "sigma_redis_up 1.0" in text
        assert 'sigma_queue_depth{annotator="pixel-diff"}' in text
        assert not samples(text, "sigma_workers_alive")
        slow_redis.delay = 3.0          # nothing comes back before the deadline (the socket timeout is 5 s)
        t0 = time.monotonic()
        resp = s.http.get("/metrics", headers=s.headers("metrics"), timeout=4)
        elapsed = time.monotonic() - t0
        assert resp.status_code == 200 and elapsed < 1.6, elapsed
        assert "sigma_redis_up 0.0" in resp.text and "sigma_metrics_snapshot_complete 0.0" in resp.text
        slow_redis.delay = 0.0          # the connections the cut scrapes left are not reused half-read
        text = scrape(s)
        assert "sigma_metrics_snapshot_complete 1.0" in text
        assert 'sigma_workers_alive{annotator="pixel-diff"} 150.0' in text


def test_every_gpu_memory_sample_is_unique(svc, redis_server):
    """Two heartbeats naming one `consumer` (written by hand, or keys whose names decode alike) gave two
    `sigma_worker_gpu_memory_bytes{worker="dup"}` samples: Prometheus refuses the whole scrape for a duplicate
    series. The label is the heartbeat key's name, and of keys whose names read alike the newest beat is kept."""
    r = redis_server.client()
    keys = Keys(svc.prefix)
    odd = keys.worker("").encode()
    planted = {keys.worker("dup-a"): ("dup", 1.0, 100), keys.worker("dup-b"): ("dup", 2.0, 200),
               odd + b"\xff": ("odd", 1.0, 300), odd + b"\xfe": ("odd", 2.0, 400)}
    for key, (consumer, beat, mem) in planted.items():
        r.hset(key, mapping={"annotator": "pixel-diff", "consumer": consumer, "last_beat": str(beat),
                             "gpu_memory_bytes": str(mem)})
        r.expire(key, 60)
    register(r, svc.prefix, *planted)
    try:
        text = scrape(svc)
        series = [line.rsplit(" ", 1)[0] for line in text.splitlines() if line and not line.startswith("#")]
        assert len(series) == len(set(series)), sorted(s for s in series if series.count(s) > 1)
        gpu = samples(text, "sigma_worker_gpu_memory_bytes")
        assert 'sigma_worker_gpu_memory_bytes{worker="dup-a"} 100.0' in gpu
        assert 'sigma_worker_gpu_memory_bytes{worker="dup-b"} 200.0' in gpu
        assert 'sigma_worker_gpu_memory_bytes{worker="\ufffd"} 400.0' in gpu, gpu
    finally:
        r.delete(*planted)


def test_a_field_name_that_is_not_utf8_costs_nothing(svc, redis_server):
    """A heartbeat or worker-metrics hash with a field name that is not UTF-8 (anyone who reaches Redis can HSET
    one) raised UnicodeDecodeError while the hash was read: /metrics and /readyz answered 500."""
    r = redis_server.client()
    keys = Keys(svc.prefix)
    r.hset(keys.worker("odd-fields"), mapping={b"annotator": b"pixel-diff", b"\xff": b"1"})
    r.expire(keys.worker("odd-fields"), 60)
    register(r, svc.prefix, keys.worker("odd-fields"))
    r.hset(keys.metrics("slow-diff"), b"\xfe", b"1")
    try:
        text = scrape(svc)
        assert "sigma_redis_up 1.0" in text and 'sigma_workers_alive{annotator="pixel-diff"} 2.0' in text
        ready = svc.http.get("/readyz")
        assert ready.status_code == 200 and ready.json()["checks"]["workers"]["alive"] == 2, ready.text
    finally:
        r.delete(keys.worker("odd-fields"), keys.metrics("slow-diff"))


def test_readyz_answers_by_its_deadline_whatever_redis_does(redis_server, slow_redis, tmp_path):
    """`api.readyz_timeout_s` bounds /readyz as `api.metrics_timeout_s` bounds /metrics: a Redis answering each
    round trip in 0.5 s made /readyz last 2 s (PING, write probe, heartbeats), past a load balancer's probe
    timeout; now it answers 503 by the deadline, naming what was not read."""
    with running_service(redis_server, tmp_path, [f"redis.url={slow_redis.url}", "api.readyz_timeout_s=0.8"]) as s:
        plant_heartbeats(redis_server.client(), s.prefix, 3)
        assert s.http.get("/readyz").status_code == 200
        slow_redis.delay = 0.5
        t0 = time.monotonic()
        ready = s.http.get("/readyz", timeout=6)
        elapsed = time.monotonic() - t0
        assert ready.status_code == 503 and elapsed < 1.6, (elapsed, ready.text)
        checks = ready.json()["checks"]
        assert checks["workers"] == {"ok": False, "error": "not read within api.readyz_timeout_s=0.8 s"}, checks
        slow_redis.delay = 0.0
        ready = s.http.get("/readyz")
        assert ready.status_code == 200 and ready.json()["checks"]["workers"]["alive"] == 3, ready.text


def test_readyz_timeout_is_validated(tmp_path):
    """A readiness bound of 0 (or NaN, or negative) would make every probe 503 at once: refused at start-up."""
    import subprocess
    import sys

    for bad in ("0", "-1", "nan"):
        done = subprocess.run([sys.executable, "-m", "sigma", "serve", "api", "--set", f"api.readyz_timeout_s={bad}"],
                              capture_output=True, text=True, timeout=60)
        assert done.returncode != 0 and "readyz_timeout_s" in done.stderr and "Traceback" not in done.stderr, \
            done.stderr
