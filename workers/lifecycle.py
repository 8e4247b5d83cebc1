"""What every `sigma worker` process does around its consumer loop: stop cleanly on a signal, and say where it
looks for Redis when Redis is not there.

Signals (SIGTERM, SIGINT/Ctrl-C) always end the process with status 0 and no traceback:
- while waiting for Redis, and between batches: the consumer loop sees `stop` and returns at once;
- while loading the model (or probing Redis at start-up) there is nothing to finish: the process says so and
  exits at once rather than after a load that may take minutes. It exits from the handler (`os._exit`) instead
  of raising, because the main thread is then often inside C++ that called back into Python (torch's import,
  an unpickler, a model library's loader): an exception raised there crosses pybind11 and aborts the process
  (SIGABRT, status -6, seen in CI), and a loader with a bare `except` would swallow it and load on;
- during a batch: the batch is finished, stored and acknowledged first; a second signal leaves it (its
  entries stay pending and are redelivered after the lease: at-least-once delivery makes that safe).

Start-up without Redis: one clear line on stderr naming the URL and `SIGMA_REDIS_URL`, then the worker waits
(as it waits out any outage once running) — a worker started before its Redis, as compose or a supervisor
may do, comes up by itself.
"""
from __future__ import annotations

import logging
import os
import signal
import sys
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager

from sigma.service.connections import display_url
from sigma.service.settings import RedisSettings

log = logging.getLogger("sigma.worker")


class Interrupted(BaseException):
    """A stop signal where there is nothing to finish, or a second one. A BaseException, as KeyboardInterrupt is:
    it is raised wherever the main thread happens to be — most often inside the model — and the `except Exception`
    that isolates a bad pair or a failed shard must not take it for the model's failure (it did: the signal was
    swallowed, the batch retried pair by pair, and a later signal published a shard as done with a pair recorded as
    `annotator_failed: Interrupted`)."""


class StopSignals:
    """SIGTERM/SIGINT set `stop`; inside `abrupt_while(...)` they end the process (status 0); on a second signal
    they raise `Interrupted`."""

    def __init__(self, stop: threading.Event):
        self.stop = stop
        self.received = 0
        self._abrupt: tuple[str, Callable[[str], None]] | None = None

    def install(self) -> StopSignals:
        if threading.current_thread() is threading.main_thread():
            signal.signal(signal.SIGTERM, self._on_signal)
            signal.signal(signal.SIGINT, self._on_signal)
        return self

    def _on_signal(self, signum: int, _frame) -> None:
        self.received += 1
        self.stop.set()
        name = signal.Signals(signum).name
        if self._abrupt is not None:
            doing, say = self._abrupt
            try:
                say(f"{name} while {doing}")       # may fail (a reentrant write to a stream the thread was in)
            finally:
                exit_now(0)
        if self.received > 1:
            raise Interrupted(f"second {name}: the batch in hand is left to be redelivered")
        log.info("%s: stopping; a batch in hand is finished first (send %s again to leave it to another worker)",
                 name, name)

    @contextmanager
    def abrupt_while(self, doing: str, say: Callable[[str], None]) -> Iterator[None]:
        """While `doing` holds nothing worth finishing, a signal calls `say(reason)` and exits with status 0."""
        if self.stop.is_set():
            raise Interrupted(f"stopped before {doing}")
        self._abrupt = (doing, say)
        try:
            yield
        finally:
            self._abrupt = None


def exit_now(code: int) -> None:
    """End the process without unwinding the main thread (which may be inside C++): flush what was said first."""
    logging.shutdown()
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (OSError, ValueError):
            pass
    os._exit(code)


def report_unreachable_redis(settings: RedisSettings, command: str) -> bool:
    """One PING at start-up; when it fails, one line on stderr that says where the worker looks and how to
    point it elsewhere. True when Redis answered. Never raises on Redis trouble: the worker then waits."""
    import redis

    from sigma.service.connections import probe_client

    client = probe_client(settings)
    try:
        client.ping()
        return True
    except redis.RedisError as exc:
        print(f"{command}: cannot reach Redis at {display_url(settings.url)} ({type(exc).__name__}: {exc}). "
              f"Set SIGMA_REDIS_URL (or --set redis.url=...) if it runs elsewhere; waiting for it "
              f"(Ctrl-C to stop).", file=sys.stderr, flush=True)
        return False
    finally:
        client.close()
