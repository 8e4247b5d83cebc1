"""Shared fixtures. Add yours below; keep each one small and documented."""
from __future__ import annotations

import shutil
import signal
import subprocess
import time
from pathlib import Path

import pytest
from ports import dead_port, free_port

# The session's reaper (tests/reaper.py): every process this session starts carries `REAPER_ENV=<token>` in its
# environment, and the reaper kills each one left once this pytest has exited, however it exited (SIGTERM and SIGKILL
# run no teardown: `sigma serve`, workers and redis-servers lived on as orphans, holding ports and CPU).
REAPER_ENV = "SIGMA_TESTS_REAPER"


def start_reaper() -> subprocess.Popen | None:
    """Starts this process' reaper and puts its token in `os.environ`, inherited from here on by every child. A pytest
    run by a test has its own reaper and token for its own children (the outer one kills that pytest, its reaper the
    rest). None where the platform has no pidfd (not Linux >= 5.3)."""
    import os
    import sys
    import uuid

    if not hasattr(os, "pidfd_open"):
        return None
    entry = f"{REAPER_ENV}={os.getpid()}-{uuid.uuid4().hex}"
    env = {k: v for k, v in os.environ.items() if k != REAPER_ENV}
    me = os.pidfd_open(os.getpid())
    try:
        reaper = subprocess.Popen([sys.executable, "-S", str(Path(__file__).with_name("reaper.py")), entry, str(me)],
                                  env=env, pass_fds=(me,), stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                  start_new_session=True)   # not in pytest's group: a group's SIGTERM spares it
    finally:
        os.close(me)
    assert reaper.stdout is not None
    if reaper.stdout.readline() != b"ready\n":
        raise RuntimeError("the test session's reaper (tests/reaper.py) did not start")
    reaper.stdout.close()
    os.environ[REAPER_ENV] = entry.split("=", 1)[1]
    return reaper


_REAPER: list[subprocess.Popen | None] = []


def pytest_configure(config) -> None:
    if not _REAPER:
        _REAPER.append(start_reaper())




class RedisServer:
    """A real redis-server on loopback in a temp dir, with AOF (appendfsync always) so a restart keeps data.

    `stop()` / `start()` / `restart()` let fault tests take it down and bring it back on the same port;
    every test should use its own key prefix rather than flushing, since the server is session-wide.
    """

    def __init__(self, binary: str, directory: Path, port: int | None = None):
        """`port` None: one of `free_port`'s, and another if that one is taken by the time redis-server binds it."""
        self._port_chosen_here = port is None
        self.binary, self.dir, self.port = binary, directory, port or free_port()
        self.proc: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def client(self):
        import redis

        return redis.Redis(host="127.0.0.1", port=self.port, socket_connect_timeout=1, socket_timeout=5)

    def start(self, timeout: float = 60.0) -> None:
        """Ends at the first PING answered (10 s was tight on load). A port of `free_port`'s taken between its check and
        the bind (another process on the machine) is not a failed test: the first start moves to a new one."""
        for attempt in range(5):
            log = self.dir / "redis.log"
            seen = log.stat().st_size if log.exists() else 0
            try:
                self._start(timeout)
                self._port_chosen_here = False      # from now on its clients know the port: a restart keeps it
                return
            except RuntimeError:
                said = log.read_bytes()[seen:].decode(errors="replace") if log.exists() else ""
                if attempt == 4 or not self._port_chosen_here or "Address already in use" not in said:
                    raise
                self.port = free_port()

    def _start(self, timeout: float) -> None:
        self.proc = subprocess.Popen(
            [self.binary, "--port", str(self.port), "--bind", "127.0.0.1", "--dir", str(self.dir),
             "--appendonly", "yes", "--appendfsync", "always", "--save", "", "--daemonize", "no",
             "--logfile", str(self.dir / "redis.log"), "--loglevel", "warning",
             # its process title is written over its environment, the mark the session's reaper finds it by
             "--set-proc-title", "no"],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        import redis
        from redis.backoff import NoBackoff
        from redis.retry import Retry

        # one try per probe (redis-py's default retries made a probe of a port someone else holds and never answers on
        # last 25 s), and its own answer, not another server's on the port it then failed to bind
        probe = redis.Redis(host="127.0.0.1", port=self.port, socket_connect_timeout=1, socket_timeout=5,
                            retry=Retry(NoBackoff(), 0))
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"redis-server exited with {self.proc.returncode}; see {self.dir}/redis.log")
            try:
                if probe.info("server").get("process_id") == self.proc.pid:
                    return
            except Exception:  # noqa: BLE001 - not up yet
                time.sleep(0.02)
        raise RuntimeError(f"redis-server did not answer PING within {timeout} s")

    def stop(self, kill: bool = False, timeout: float = 60.0) -> None:
        if self.proc is None or self.proc.poll() is not None:
            return
        if kill:
            self.proc.kill()
        else:
            self.proc.terminate()   # SIGTERM: Redis fsyncs the AOF and exits
        self.proc.wait(timeout=timeout)

    def restart(self) -> None:
        self.stop()
        self.start()

    def freeze(self) -> None:
        """SIGSTOP: the server holds every connection open and answers nothing (a stalled host)."""
        assert self.proc is not None and self.proc.poll() is None
        self.proc.send_signal(signal.SIGSTOP)

    def thaw(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGCONT)


@pytest.fixture
def unused_port():
    """A loopback port nothing listens on, held bound for the test so nothing can (`ports.dead_port`): the address of
    a Redis that is down, refused at once."""
    with dead_port() as port:
        yield port


@pytest.fixture(scope="session")
def redis_server(tmp_path_factory):
    """Session-wide redis-server (Debian's 7.0 is the floor: XAUTOCLAIM needs >= 6.2)."""
    binary = shutil.which("redis-server")
    if binary is None:
        pytest.skip("redis-server not installed (apt-get install redis-server)")
    server = RedisServer(binary, tmp_path_factory.mktemp("redis"))
    server.start()
    yield server
    server.stop()


@pytest.fixture(scope="module")
def private_redis(tmp_path_factory):
    """A redis-server of the module's own, for tests that freeze it (SIGSTOP), fill it (maxmemory) or restart
    it: the session-wide server stays untouched for everyone else."""
    binary = shutil.which("redis-server")
    if binary is None:
        pytest.skip("redis-server not installed (apt-get install redis-server)")
    server = RedisServer(binary, tmp_path_factory.mktemp("private-redis"))
    server.start()
    yield server
    server.thaw()
    server.stop(kill=True)


@pytest.fixture(scope="module")
def one_torch_thread():
    """Tiny tensors: one intra-op thread. On a shared 2-core machine two OpenMP threads wait on each
    other at every op (measured: 5 s instead of 23 ms for a tiny-lite step)."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="session", autouse=True)
def sigma_cache_dir(tmp_path_factory):
    """Built artefacts (the ONNX Runtime graphs of model annotators) go to one folder per test session,
    never the user's ~/.cache; subprocesses inherit it, so a graph is exported once per session."""
    import os

    path = tmp_path_factory.mktemp("sigma-cache")
    before = os.environ.get("SIGMA_CACHE_DIR")
    os.environ["SIGMA_CACHE_DIR"] = str(path)
    yield path
    if before is None:
        os.environ.pop("SIGMA_CACHE_DIR", None)
    else:
        os.environ["SIGMA_CACHE_DIR"] = before


@pytest.fixture
def run_json_reads(monkeypatch):
    """Every `RunDir.load` from now on, as the run folder it read (run.json is up to $SIGMA_MAX_RUN_BYTES: the tests
    that say it is parsed once count here)."""
    from sigma.batch.layout import RunDir

    reads: list = []
    load = RunDir.load

    def counted(self):
        reads.append(self.root)
        return load(self)

    monkeypatch.setattr(RunDir, "load", counted)
    return reads
