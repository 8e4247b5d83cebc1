"""Helpers for the service tests: real API and worker processes against the session's redis-server.

Each test module gets its own key prefix, so modules never see each other's streams or jobs.
Timeouts are shortened through `--set` (lease, block, heartbeat) so fault tests finish in seconds.
"""
from __future__ import annotations

import io
import os
import signal
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx
import numpy as np
from PIL import Image
from ports import free_port

TESTS = Path(__file__).resolve().parent
KEYS = {"user": "test-user-key", "other": "test-other-key", "metrics": "test-metrics-key", "admin": "test-admin-key"}
API_KEYS_ENV = f"{KEYS['user']},{KEYS['other']},{KEYS['metrics']}:metrics,{KEYS['admin']}:admin"
FAST = ["queue.lease_ms=800", "queue.block_ms=200", "queue.reclaim_interval_ms=150",
        "queue.heartbeat_interval_ms=150", "queue.heartbeat_ttl_ms=1500", "queue.max_deliveries=3",
        "limits.max_pixels=1000000", "limits.max_bytes=2000000", "limits.max_request_bytes=4500000",
        "api.wait_timeout_s=10", "api.annotators=[pixel-diff,slow-diff,poison-diff]"]


def layered(*layers: list[str]) -> list[str]:
    """`--set` items of several layers (FAST, then a test's own), a later layer's key replacing an earlier one's at,
    under or over it: one command line sets each place once (`sigma.config.loader.OverrideKeys`)."""
    out: list[str] = []
    for layer in layers:
        keys = [item.split("=", 1)[0].strip() for item in layer]
        out = [item for item in out
               if not any(k == (o := item.split("=", 1)[0].strip()) or k.startswith(o + ".") or o.startswith(k + ".")
                          for k in keys)]
        out += layer
    return out


def png_bytes(arr: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, format="PNG")
    return buf.getvalue()


def make_pair(h: int = 48, w: int = 64, seed: int = 0, box: tuple[int, int, int, int] = (8, 10, 20, 30)
              ) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    original = rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
    edited = original.copy()
    y0, x0, y1, x1 = box
    edited[y0:y1, x0:x1] = 255 - edited[y0:y1, x0:x1]
    edited[0, 0] = np.clip(edited[0, 0].astype(int) + 6, 0, 255)    # a sub-threshold change for thresholds
    return original, edited


def read_until_closed(sock: socket.socket, *quiet: type[OSError]) -> bytes:
    """All a raw socket receives until the server closes it; an error of `quiet` (a reset after a refusal, a
    timeout once the server goes quiet) ends the read with what came before it, any other is raised."""
    got = b""
    try:
        while chunk := sock.recv(65536):
            got += chunk
    except quiet:
        pass
    return got


# How long a started `sigma` process (an API, a worker: imports, a model) may take to come up. Each wait ends on its
# condition, and on the process' exit (`GaveUp`), so this costs a passing run nothing; it was 20 s, and on a loaded
# machine (2 cores, a CI run and others' tests beside, `nice`) an API's imports alone took longer: whole modules of
# service tests failed "timed out after 20 s waiting for API /healthz" with nothing wrong.
STARTUP_S = 300


# How long the kit's HTTP client waits on one answer. 30 s was missed under load: a batch submit's first options check
# (annotator sigma-lite, torch imported in the API on that request) raised httpx.ReadTimeout under three busy loops.
HTTP_TIMEOUT_S = 120.0


class GaveUp(AssertionError):
    """Raised by a `wait_until` predicate when waiting longer cannot help (the process waited on has exited)."""


# The least any `wait_until` waits before it gives up. Each wait ends on its condition, so a passing run pays nothing
# for it; the 10-20 s deadlines tests gave events that take well under a second on an idle machine (a heartbeat's
# expiry, a log line, a worker's next entry) were what the loaded CI machine (2 cores, a CI run and others' tests
# beside) missed.
WAIT_FLOOR_S = 60.0


def wait_until(predicate: Callable[[], Any], timeout: float, what: str, interval: float = 0.05) -> Any:
    timeout = max(timeout, WAIT_FLOOR_S)
    deadline = time.monotonic() + timeout
    last = None
    while time.monotonic() < deadline:
        try:
            last = predicate()
            if last:
                return last
        except GaveUp:
            raise
        except Exception as exc:  # noqa: BLE001 - keep polling until the deadline
            last = exc
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout} s waiting for {what} (last: {last!r})")


def _limit_open_files(n: int) -> None:
    import resource

    resource.setrlimit(resource.RLIMIT_NOFILE, (n, n))


def _child_setup(nofile: int | None, preexec_fn: Callable[[], None] | None) -> Callable[[], None] | None:
    """What the child runs before exec: its open-file limit, then the caller's own set-up."""
    if nofile is None:
        return preexec_fn

    def setup() -> None:
        _limit_open_files(nofile)
        if preexec_fn is not None:
            preexec_fn()
    return setup


class Proc:
    """A `sigma ...` child process with its output in a log file (shown when a test fails)."""

    def __init__(self, args: list[str], env: dict[str, str], log: Path, new_session: bool = False,
                 nofile: int | None = None, preexec_fn: Callable[[], None] | None = None):
        self.args, self.log = args, log
        self._fh = open(log, "wb")  # noqa: SIM115 - closed in stop()
        # new_session: its own process group, for a signal to the whole group as a terminal's Ctrl-C sends it.
        # nofile: its RLIMIT_NOFILE, soft and hard (`ulimit -n N` in the shell that started it)
        self.p = subprocess.Popen([sys.executable, "-m", "sigma", *args], env=env, stdout=self._fh,
                                  stderr=subprocess.STDOUT, cwd=str(TESTS.parent), start_new_session=new_session,
                                  preexec_fn=_child_setup(nofile, preexec_fn))

    @property
    def pid(self) -> int:
        return self.p.pid

    def alive(self) -> bool:
        return self.p.poll() is None

    def signal(self, sig: int) -> None:
        if self.alive():
            os.kill(self.p.pid, sig)

    def stop(self, timeout: float = 60.0) -> int | None:
        """SIGTERM, then SIGKILL if it has not exited after `timeout` s, at least 60: the wait ends at the exit, and a
        clean stop (a worker's last batch, an API's shutdown) took over the 15-30 s the tests gave it on a loaded
        machine, which then failed their `stop() == 0`."""
        if self.alive():
            self.p.send_signal(signal.SIGTERM)
            try:
                self.p.wait(timeout=max(timeout, 60.0))
            except subprocess.TimeoutExpired:
                self.p.kill()
                self.p.wait(timeout=5)
        self._fh.close()
        return self.p.returncode

    def kill9(self) -> None:
        self.p.kill()
        self.p.wait(timeout=5)

    def output(self) -> str:
        if not self._fh.closed:
            self._fh.flush()
        return self.log.read_text(errors="replace")[-4000:]


def base_env(redis_url: str) -> dict[str, str]:
    env = dict(os.environ)
    env["SIGMA_REDIS_URL"] = redis_url
    env["SIGMA_API_KEYS"] = API_KEYS_ENV
    env["PYTHONPATH"] = os.pathsep.join([str(TESTS), env.get("PYTHONPATH", "")]).rstrip(os.pathsep)
    env.pop("SIGMA_SERVE_CONFIG", None)
    for name in [k for k in env if k.startswith("SIGMA__")]:
        env.pop(name)
    return env


class ServiceUnderTest:
    def __init__(self, redis_server, tmp: Path, overrides: list[str] | None = None, port: int | None = None):
        self.redis_server = redis_server
        self.tmp = tmp
        self.prefix = f"t{uuid.uuid4().hex[:10]}"
        self.overrides = layered([*FAST, f"redis.key_prefix={self.prefix}"], overrides or [])
        self._port_was_chosen_here = port is None
        self.port = port or free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.env = base_env(redis_server.url)
        self.api: Proc | None = None
        self.workers: list[Proc] = []
        self.http = httpx.Client(base_url=self.url, timeout=HTTP_TIMEOUT_S)

    def sets(self, extra: list[str] | None = None) -> list[str]:
        out = []
        for item in layered(self.overrides, extra or []):
            out += ["--set", item]
        return out

    def worker_sets(self, extra: list[str] | None = None, batch: bool = False) -> list[str]:
        """`sets` less what a worker (`batch`: `sigma worker --batch`) refuses on its command line, as it never reads
        it: the API's own settings (api.*, auth.*, but the api.align `sigma worker` reads; the limits.* only the API
        reads), and for a batch worker api.align and every limits.* (`sigma.cli.serve.unused_settings`)."""
        from sigma.cli.serve import unused_settings

        unused = unused_settings("sigma worker --batch" if batch else "sigma worker")
        out = []
        for item in layered(self.overrides, extra or []):
            key = item.split("=", 1)[0].strip()
            if ".".join(key.split(".")[:2]) not in unused:
                out += ["--set", item]
        return out

    def start_api(self, nofile: int | None = None, extra: tuple[str, ...] = ()) -> None:
        for attempt in range(3):
            self.api = Proc(["serve", "api", "--port", str(self.port), "--log-level", "warning", *extra,
                             *self.sets()], self.env, self.tmp / f"api-{self.port}.log", nofile=nofile)
            api = self.api
            try:
                wait_until(lambda: self._healthy(), STARTUP_S, "API /healthz")
                return
            except GaveUp:
                # `free_port`'s port, free when asked, taken since by another process (other tests run beside on
                # a shared machine): a new port, not a failed test. A chosen port (`port=`) is the test's own.
                if attempt == 2 or not self._port_was_chosen_here or "address already in use" not in api.output():
                    raise
            except AssertionError as exc:
                raise AssertionError(f"{exc}\n{api.output()}") from None
            api.stop()
            self.port = free_port()
            self.url = f"http://127.0.0.1:{self.port}"
            self.http.close()
            self.http = httpx.Client(base_url=self.url, timeout=HTTP_TIMEOUT_S)

    def _healthy(self) -> bool:
        if self.api is not None and not self.api.alive():
            raise GaveUp(f"API exited: {self.api.output()}")
        return self.http.get("/healthz").status_code == 200

    def start_worker(self, annotator: str = "pixel-diff", extra: list[str] | None = None, wait: bool = True,
                     preexec_fn: Callable[[], None] | None = None, env: dict[str, str] | None = None) -> Proc:
        consumer = f"w{len(self.workers)}-{uuid.uuid4().hex[:6]}"
        proc = Proc(["worker", "--annotator", annotator, "--consumer", consumer, "--plugin", "service_plugins",
                     *self.worker_sets(extra)], {**self.env, **(env or {})}, self.tmp / f"worker-{consumer}.log",
                    preexec_fn=preexec_fn)
        proc.consumer = consumer  # type: ignore[attr-defined]
        self.workers.append(proc)
        if wait:
            r = self.redis_server.client()
            key = f"{self.prefix}:worker:{consumer}"

            def up() -> bool:
                if not proc.alive():
                    raise GaveUp(f"worker exited: {proc.output()}")
                return bool(r.hget(key, "model_loaded") == b"1")
            try:
                wait_until(up, STARTUP_S, f"worker {consumer} heartbeat")
            except GaveUp:
                raise
            except AssertionError as exc:
                raise AssertionError(f"{exc}\n{proc.output()}") from None
        return proc

    def headers(self, who: str = "user") -> dict[str, str]:
        return {"Authorization": f"Bearer {KEYS[who]}"}

    def files(self, original: np.ndarray | bytes, edited: np.ndarray | bytes) -> dict[str, Any]:
        o = original if isinstance(original, bytes) else png_bytes(original)
        e = edited if isinstance(edited, bytes) else png_bytes(edited)
        return {"original": ("o.png", o, "image/png"), "edited": ("e.png", e, "image/png")}

    def submit(self, original, edited, data: dict | None = None, who: str = "user", path: str = "/v1/jobs",
               headers: dict | None = None) -> httpx.Response:
        return self.http.post(path, files=self.files(original, edited), data=data or {},
                              headers={**self.headers(who), **(headers or {})})

    def job(self, job_id: str, who: str = "user") -> dict:
        resp = self.http.get(f"/v1/jobs/{job_id}", headers=self.headers(who))
        assert resp.status_code == 200, resp.text
        return resp.json()

    def wait_jobs(self, ids: list[str], timeout: float, statuses: tuple[str, ...] = ("done", "failed")
                  ) -> dict[str, dict]:
        out: dict[str, dict] = {}

        def all_finished() -> bool:
            for job_id in ids:
                if job_id not in out:
                    view = self.job(job_id, "admin")
                    if view["status"] in statuses:
                        out[job_id] = view
            return len(out) == len(ids)
        wait_until(all_finished, timeout, f"{len(ids)} jobs to finish ({len(out)} finished)", interval=0.1)
        return out

    def raw_job(self, job_id: str) -> dict[str, str]:
        h = self.redis_server.client().hgetall(f"{self.prefix}:job:{job_id}")
        return {k.decode(): v.decode() for k, v in h.items()}

    def close(self) -> None:
        for w in self.workers:
            w.signal(signal.SIGCONT)
            w.stop()
        if self.api is not None:
            self.api.stop()
        self.http.close()


@contextmanager
def running_service(redis_server, tmp: Path, overrides: list[str] | None = None,
                    workers: list[tuple[str, list[str] | None]] = ()) -> Iterator[ServiceUnderTest]:
    """An API (and the named workers, each `(annotator, extra overrides)`) up for the block, always
    closed after it: the shape every service fixture shares."""
    s = ServiceUnderTest(redis_server, tmp, overrides)
    try:
        s.start_api()
        for annotator, extra in workers:
            s.start_worker(annotator, extra)
        yield s
    finally:
        s.close()


def paced(body: bytes, chunk: int = 65536, pause_s: float = 0.002) -> Iterator[bytes]:
    """`body` 64 KiB at a time with a short pause between: a client on a real link, still sending when the server
    answers (on loopback a 3 MiB body fits in the kernel's buffers at once, so the server's early close came after
    the client's last send and its reset was never met)."""
    for start in range(0, len(body), chunk):
        yield body[start:start + chunk]
        time.sleep(pause_s)


def post_whole_body_first(url: str, path: str, body: bytes, headers: dict[str, str], client: str,
                          chunked: bool = False) -> tuple[int, dict, str]:
    """POST `body` (paced) the way a client that writes its whole body before reading does: `http.client` (the
    stdlib, under urllib.request: a failed send is an exception, the answer never read) or `httpx` (it reads the
    answer after a failed send, if the socket still holds it). (status, JSON body, Connection header); a connection
    error propagates (OSError / httpx.TransportError)."""
    import http.client
    import json
    from urllib.parse import urlsplit

    headers = dict(headers) if chunked else {**headers, "Content-Length": str(len(body))}
    if client == "httpx":
        with httpx.Client(base_url=url, timeout=30.0) as http:
            resp = http.post(path, content=paced(body), headers=headers)
            return resp.status_code, resp.json(), resp.headers.get("connection", "")
    where = urlsplit(url)
    conn = http.client.HTTPConnection(where.hostname, where.port, timeout=30.0)
    try:
        conn.request("POST", path, body=paced(body), headers=headers, encode_chunked=chunked)
        resp = conn.getresponse()
        return resp.status, json.loads(resp.read()), resp.getheader("connection", "")
    finally:
        conn.close()
