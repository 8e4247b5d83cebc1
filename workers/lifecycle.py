"""What every `sigma worker` process does around its consumer loop: stop cleanly on a signal, and say where it
looks for Redis when Redis is not there.

Signals (SIGTERM, SIGINT/Ctrl-C), however many and however close together, always end the process with status 0
and no traceback:
- while waiting for Redis, and between batches: the consumer loop sees `stop` and returns at once;
- while loading the model (or probing Redis at start-up) there is nothing to finish: the process says so and
  exits at once rather than after a load that may take minutes;
- during a batch: the batch is finished, stored and acknowledged first; a second signal leaves it at once (its
  entries stay pending and are redelivered after the lease: at-least-once delivery makes that safe).

Signals are acted on in a thread of their own, woken by `signal.set_wakeup_fd` (`StopSignals.install`), so the
answer does not wait for the main thread to return from a long native call. Every abrupt end (a signal while
loading, a second signal) is a hard exit from that thread (`os._exit(0)` after saying why and deleting the
worker's heartbeat key), never an exception raised into the main thread. The main
thread is then most often inside the model, and often inside C++ that called back into Python (torch's import
and ops, an unpickler, a model library's loader): an exception raised there crosses pybind11 and aborts the
process (SIGABRT, status -6, seen in CI at load time), and a plugin or loader with a bare `except` swallows it and
goes on. Raising on the second signal had a further hazard: a third signal landed in the unwinding and raised again
(a traceback from `except`/`finally` blocks or threading's shutdown), or came after the interpreter had put the
default handlers back during finalization and killed the process (status -15). A hard exit loses nothing the
unwinding would have kept: results already stored stay stored, the batch in hand was to be redelivered anyway,
decode processes die with their parent, and the heartbeat key is deleted on a connection of its own (or, when
Redis does not answer within a second or a last beat races the delete, expires after `queue.heartbeat_ttl_ms`
as any dead worker's key does). A signal while the hard exit runs ends the process at once (when the main thread
runs Python; else when the cleanup's one-second timeout ends). A worker that stopped
normally also ends with `os._exit` (`StopSignals.end`), so a signal during the interpreter's finalization cannot
kill it with a default handler either.

A batch that runs past `worker.batch_timeout_s` (a model hung in native code, a plugin's endless loop; the
heartbeat would otherwise extend its leases for ever and its jobs would never end) is noticed by the heartbeat
thread: the jobs get `worker_hung` as their last error and the process ends the same way, with status 1, for its
supervisor to restart it; the entries are redelivered after the lease (dead-lettered after `max_deliveries`).

A worker past `worker.max_rss_mb` once a batch (a shard, with `--batch`) is stored and acknowledged (a model or
plugin that leaks) sets `stop` (`recycle_past_max_rss`): it ends as after a signal, nothing in hand, but with
status 75 (`RECYCLE_EXIT_STATUS`), for its supervisor to start a fresh one, rather than growing until the OOM
killer ends it mid-batch. Not 0: status 0 is "stopped on purpose" (a signal), which a supervisor restarting only on
failure (compose or docker `restart: on-failure`, systemd `Restart=on-failure`, a Kubernetes Job's `OnFailure`)
leaves stopped, so each recycle silently cost the fleet a worker. `sigma serve all` restarts a worker that exits
with it at once, and does not count it towards `worker.max_restarts` (it is no death).

Start-up without Redis: one clear line on stderr naming the URL and `SIGMA_REDIS_URL`, then the worker waits
(as it waits out any outage once running) — a worker started before its Redis, as compose or a supervisor
may do, comes up by itself. So does one whose model folder a saver holds (`weights_busy`: a `save_model` stopped or
hung mid-commit, for all of `$SIGMA_MODEL_LOCK_WAIT_S`): one line on stderr per try, and it loads again
(`load_waiting_out_transient_faults`); so does one the machine refused memory or threads to load (for up to
`worker.load_retry_s`).
"""
from __future__ import annotations

import logging
import os
import signal
import sys
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

from sigma.errors import WeightsBusyError
from sigma.service.annotation import rss_mb
from sigma.service.connections import display_url
from sigma.service.settings import RedisSettings

log = logging.getLogger("sigma.worker")

# A worker that stopped itself to be started afresh (past worker.max_rss_mb): EX_TEMPFAIL of sysexits.h, "try
# again". Non-zero, so that every restart policy restarts it (on-failure too); distinct from a crash (1) and from a
# usage or config error (2), so that a supervisor can tell a recycle from a death (`sigma serve all` does).
RECYCLE_EXIT_STATUS = 75


class Interrupted(BaseException):
    """A stop that came before a step with nothing to finish (`abrupt_while` entered with `stop` already set). A
    BaseException, as KeyboardInterrupt is, so that no `except Exception` takes it for a failure."""


class StopSignals:
    """SIGTERM/SIGINT set `stop`; inside `abrupt_while(...)`, and on a second signal, they end the process at once
    (status 0) after saying why (`say`) and running the `at_hard_exit` cleanups."""

    def __init__(self, stop: threading.Event, say: Callable[[str], None] | None = None):
        self.stop = stop
        self.received = 0
        self.say = say or (lambda reason: log.info("stopped (%s)", reason))
        self._abrupt: str | None = None
        self._exiting = False
        # Each SIGTERM/SIGINT reaches both the signals thread (through the wakeup fd) and, whenever the main thread
        # next runs bytecode, `_in_main_thread`: counted apart, so that the main thread's late call for the very
        # signal a hard exit is acting on is not taken for a second one (which ends the process at once)
        self._main_thread_signals = 0
        self._signals_at_exit = 0
        self._cleanups: list[Callable[[], None]] = []

    def install(self) -> StopSignals:
        """The signals are acted on in a thread of their own ("sigma-signals"), woken through `set_wakeup_fd`, not
        in a Python-level handler: that one runs only when the main thread next executes Python bytecode, so a
        second signal during a long native call (a forward pass, a codec, a model's import) waited for the call to
        return (tens of seconds), and a third, raised into the unwinding, was a traceback. The Python-level handler
        only ends a process that is already exiting."""
        if threading.current_thread() is not threading.main_thread():
            return self
        read_fd, write_fd = os.pipe()
        os.set_blocking(write_fd, False)
        signal.set_wakeup_fd(write_fd, warn_on_full_buffer=False)
        for signum in (signal.SIGTERM, signal.SIGINT):
            signal.signal(signum, self._in_main_thread)
        threading.Thread(target=self._watch, args=(read_fd,), name="sigma-signals", daemon=True).start()
        return self

    def _in_main_thread(self, _signum: int, _frame) -> None:
        """A signal that comes while the hard exit says why or cleans up ends the process now. Only one that came
        after the exit began: this call for the signal the exit is acting on ran `os._exit` in the middle of its
        cleanups (a worker stopped while loading left its heartbeat key behind, looking alive until its TTL)."""
        self._main_thread_signals += 1
        if self._exiting and self._main_thread_signals > self._signals_at_exit:
            os._exit(0)

    def _watch(self, fd: int) -> None:
        """The signals thread's loop. A failure acting on one signal (a `stop` event or a say that raises, a
        MemoryError under a low RLIMIT_AS) is said once, and the thread goes on: it ended the thread, and from then
        on every SIGTERM was ignored (the Python-level handler only ends a process already exiting), so the worker
        could be stopped by SIGKILL alone. The signal was counted first, so a second one still exits at once."""
        failed: set[str] = set()
        while True:
            try:
                data = os.read(fd, 64)
            except InterruptedError:
                continue
            except OSError:
                return
            for signum in data:
                if signum in (signal.SIGTERM, signal.SIGINT):
                    try:
                        self._on_signal(signum)
                    except BaseException as exc:  # noqa: BLE001 - this thread must outlive any one signal
                        kind = type(exc).__name__
                        if kind not in failed:
                            failed.add(kind)
                            quietly(log.error, "acting on signal %d failed (%s: %s); signals are still handled "
                                    "(send it again to exit at once)", signum, kind, exc)

    def at_hard_exit(self, cleanup: Callable[[], None]) -> None:
        """`cleanup()` runs before a hard exit, in the signal handler: it must be quick, bounded (a timeout on
        any I/O) and share no lock with the main thread (a Redis client of its own, not the worker's)."""
        self._cleanups.append(cleanup)

    def _on_signal(self, signum: int) -> None:
        """In the signals thread: count, set `stop`, and end the process where that is the answer."""
        if self._exiting:
            os._exit(0)
        self.received += 1
        self.stop.set()
        name = signal.Signals(signum).name
        if self._abrupt is not None:
            self.hard_exit(f"{name} while {self._abrupt}")
        if self.received > 1:
            self.hard_exit(f"second {name}: the batch in hand is left to be redelivered")
        quietly(log.info, "%s: stopping; a batch in hand is finished first (send %s again to leave it to another "
                "worker)", name, name)

    def hard_exit(self, reason: str, code: int = 0) -> None:
        """Say why, run the cleanups (each failure ignored), and end the process with `code` without unwinding
        the main thread. Also from another thread (a stuck batch noticed by the heartbeat: status 1)."""
        self._signals_at_exit = self.received
        self._exiting = True
        quietly(self.say, reason)
        for cleanup in self._cleanups:
            quietly(cleanup)
        exit_now(code)

    def end(self, code: int) -> None:
        """The worker is done: end the process now, as a hard exit does, instead of through the interpreter's
        finalization (which puts the default handlers back: a signal then killed the process, status -15)."""
        self._exiting = True
        exit_now(code)

    @contextmanager
    def abrupt_while(self, doing: str) -> Iterator[None]:
        """While `doing` holds nothing worth finishing, a signal says so and exits with status 0."""
        if self.stop.is_set():
            raise Interrupted(f"stopped before {doing}")
        self._abrupt = doing
        try:
            yield
        finally:
            self._abrupt = None


class MemoryRecycler:
    """The consumer's `after_batch` for `worker.max_rss_mb`, called once `done` is stored and acknowledged: past the
    limit it says so in one warning line and sets `stop`, so the worker ends as after a signal (nothing in hand),
    and remembers it (`recycled`): the worker then exits with `RECYCLE_EXIT_STATUS` for its supervisor to start a
    fresh process. `sigma worker` and `sigma worker --batch` share it, and `rss_mb`, the heartbeat's reading."""

    def __init__(self, max_rss_mb: int, stop: threading.Event, describe: str, done: str = "a batch"):
        self.max_rss_mb = max_rss_mb
        self.stop = stop
        self.describe = describe
        self.done = done
        self.recycled = False

    def __call__(self) -> None:
        rss = rss_mb()
        if rss is not None and rss > self.max_rss_mb and not self.stop.is_set():
            log.warning("%s: resident memory %.0f MiB exceeds worker.max_rss_mb=%d after %s; stopping for a fresh "
                        "process (exit status %d)", self.describe, rss, self.max_rss_mb, self.done,
                        RECYCLE_EXIT_STATUS)
            self.recycled = True
            self.stop.set()


def recycle_past_max_rss(max_rss_mb: int, stop: threading.Event, describe: str,
                         done: str = "a batch") -> MemoryRecycler | None:
    """The memory check of `worker.max_rss_mb` (None when it is 0: off)."""
    return MemoryRecycler(max_rss_mb, stop, describe, done) if max_rss_mb else None


def exit_status(recycler: MemoryRecycler | None, signals: StopSignals) -> int:
    """How a worker whose loop returned ends: `RECYCLE_EXIT_STATUS` when it stopped itself past max_rss_mb, 0 when
    it was asked to stop (a signal, also one that came after the recycle: its supervisor is stopping it)."""
    if recycler is not None and recycler.recycled and not signals.received:
        return RECYCLE_EXIT_STATUS
    return 0


def quietly(fn: Callable[..., Any], *args: Any) -> None:
    """`fn(*args)` from a signal handler: a failure (a reentrant write to a stream the main thread was writing
    to) is dropped, and logging's own error report (a traceback on stderr) is kept quiet meanwhile."""
    raise_exceptions = logging.raiseExceptions
    logging.raiseExceptions = False
    try:
        fn(*args)
    except Exception:  # noqa: BLE001 - nothing said is worth a traceback while stopping
        pass
    finally:
        logging.raiseExceptions = raise_exceptions


def exit_now(code: int) -> None:
    """End the process without unwinding the main thread (which may be inside C++): flush what was said first."""
    quietly(logging.shutdown)
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except Exception:  # noqa: BLE001 - a closed stream, or one the main thread was writing to (reentrant)
            pass
    os._exit(code)


def forget_worker_key(settings: RedisSettings, key: str) -> Callable[[], None]:
    """A hard-exit cleanup deleting a worker's heartbeat key, on a connection of its own with a 1 s timeout."""

    def cleanup() -> None:
        from sigma.service.connections import probe_client

        client = probe_client(settings, timeout_s=1.0)
        try:
            client.delete(key)
        finally:
            client.close()
    return cleanup


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


# the pause between two tries of a load that found the model's folder busy (each try first waits
# $SIGMA_MODEL_LOCK_WAIT_S for it) or the machine short of memory or threads: full jitter, doubled per try up to the cap
BUSY_RETRY_BASE_S = 1.0
BUSY_RETRY_CAP_S = 30.0
# the codes of a load refused by the machine, not by its input: a shortage that passes
SHORTAGES = frozenset({"out_of_memory", "out_of_threads"})


def load_waiting_out_transient_faults(load: Callable[[], None], command: str, stop: threading.Event,
                                      shortage_for_s: float = 600.0,
                                      refused: Callable[[str], None] | None = None) -> None:
    """`load()` (the worker's annotator), tried again while it fails for a reason that passes by itself:
    - `weights_busy`: its model folder held by a saver stopped (Ctrl-Z, SIGSTOP) or hung mid-commit, until the saver
      goes on or dies (each try waits the lock's bound first, so it never loops hot);
    - `out_of_memory` / `out_of_threads`: the machine refused the load memory or a thread (a low RLIMIT_AS, a
      container near its limit, a pids limit while others start), for up to `shortage_for_s` from the first such
      refusal (`worker.load_retry_s`), then raised: the worker exits 2 for its supervisor, as it did at once before
      (a supervisor that gives up after a few quick deaths, `sigma serve all`'s worker.max_restarts, then stopped
      for good over a shortage of a minute).
    Each try says why on one line of stderr (the code, the message, the next try) and the next follows a jittered
    backoff. Interrupted when `stop` is set between tries (a signal inside `abrupt_while` ends the process before
    that). Other errors (a missing or corrupt weights file, a bad option) are permanent and raised at once; one that
    follows a shortage says so, as a MemoryError inside an import can leave that module half-imported for the next
    try (`module 'sympy' has no attribute 'printing'`), which only a fresh process (the supervisor's) gets past.
    `refused(code)` is told of each try refused and tried again (the worker's heartbeat shows it)."""
    from sigma.errors import SigmaError
    from sigma.service.consumer import Backoff

    backoff = Backoff(base_s=BUSY_RETRY_BASE_S, cap_s=BUSY_RETRY_CAP_S)
    short_since: float | None = None
    while True:
        try:
            load()
            return
        except SigmaError as exc:
            if exc.code in SHORTAGES:
                now = time.monotonic()
                short_since = now if short_since is None else short_since
                if now - short_since >= shortage_for_s:
                    raise
                left = f"; giving up {shortage_for_s - (now - short_since):.0f} s from now (worker.load_retry_s)"
            elif isinstance(exc, WeightsBusyError):
                left = ""
            else:
                if short_since is not None:   # e.g. a module half-imported when memory ran out: a fresh process loads
                    exc.message += ("; after the machine refused this load memory or threads, which can leave a "
                                    "module half-imported: a fresh process may load it")
                raise
            if refused is not None:
                refused(exc.code)
            delay = backoff.next_delay()
            quietly(_say_retry, f"{command}: [{exc.code}] {exc.message}; trying again in {delay:.1f} s{left} "
                    "(Ctrl-C to stop)")
        if stop.wait(delay):
            raise Interrupted("stopped while waiting to load the model")


def _say_retry(line: str) -> None:
    print(line, file=sys.stderr, flush=True)
