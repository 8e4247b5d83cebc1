"""`sigma batch run --procs N`: N inference processes on this machine, each with its own annotator and few
torch threads, fed whole shards by the driver.

On a CPU, N processes x 1 thread beat one process x N threads (OpenMP threads stall on each other at
every op, worst on a shared machine: bench/bench_scaleout.py), so this is the default without CUDA.
Each child runs the ordinary pipeline on one shard at a time, so outputs are the single-process files,
byte for byte. A child that dies (OOM killer, a crash in native code) loses only its shard, which
another child runs again; every child dies with the driver (`sigma.lifeline`). Ctrl-C (the terminal's
whole process group) is the driver's alone: children start with SIGINT/SIGTERM blocked and then ignore them, and
the driver, interrupted, kills them (a published shard stays done; `--resume` runs those in progress).

    driver ── shard ──▶ child k: ShardRunner(pipeline, annotator)  ── ticks / outcome ──▶ driver
"""
from __future__ import annotations

import os
import sys
import time
from dataclasses import dataclass
from multiprocessing.connection import Connection, wait
from pathlib import Path
from typing import Any

from sigma.batch.config import BatchConfig
from sigma.batch.dispatch import ShardLedger
from sigma.batch.layout import RunDir
from sigma.batch.shard_runner import available_cores
from sigma.errors import SigmaError, error_record, raise_error_record
from sigma.io.corpora.base import Shard, planned_pairs
from sigma.lifeline import ShieldedSpawnContext, interrupts_ignored, stop_signals_deferred

TICK_INTERVAL_S = 0.25
# A replacement inference process that cannot be started (fork or spawn refused: a pids or nproc limit, no file
# descriptor left, no memory), or that dies or fails before it is ready once the run has had a ready child, is tried
# again after `start_retry.first_s`, doubled after each such failure in a row up to `start_retry.max_s`; the other
# children go on meanwhile. With no child left, the run waits for those tries, and fails the shards left only after
# `start_retry.tries` failures in a row (about a minute by default). A child that says "ready" resets the count.


def has_gpu() -> bool:
    """Without importing torch (seconds on a busy machine, and a pixel-diff run never needs it)."""
    torch = sys.modules.get("torch")
    if torch is not None:
        return bool(torch.cuda.is_available())
    return Path("/proc/driver/nvidia/version").exists() or Path("/dev/kfd").exists()


def loads_weights(annotator: str | None) -> bool:
    """A network (an annotator with weights to load) costs tens of ms a pair on a CPU, enough that a process
    per core pays for its start-up; pixel-diff's ~1 ms does not (measured: bench/bench_scaleout.py)."""
    from sigma.registry import list_annotators

    entry = next((e for e in list_annotators() if e.name == annotator), None)
    if entry is None:
        return False
    try:
        return entry.weights_status() != "none needed"
    except Exception:  # noqa: BLE001 - a status probe must not decide a run's fate
        return False


def idle_cores() -> int:
    """Cores minus the 1-minute load average, at least 1: what a run can have without queueing behind other
    jobs. On a busy machine a second inference process only adds start-up and contention (measured on 2
    shared cores at load ~15: 1 process x 1 thread 5.8x torch's default, 2 processes 3.5x)."""
    cores = available_cores()
    try:
        load = os.getloadavg()[0]
    except (AttributeError, OSError):  # pragma: no cover - no load average here
        return cores
    return max(1, min(cores, int(cores - load + 0.5)))


def _cpu_network(cfg: BatchConfig) -> bool:
    return not has_gpu() and loads_weights(cfg.annotator)


def inference_procs(cfg: BatchConfig, pending_shards: int) -> int:
    """`--procs`, else for a network on a machine without a GPU one process per idle core, else 1; never
    more than the shards to run."""
    if cfg.procs is not None:
        wanted = cfg.procs
    elif pending_shards > 1 and _cpu_network(cfg):
        wanted = idle_cores()
    else:
        wanted = 1
    return max(1, min(wanted, pending_shards))


def inference_threads(cfg: BatchConfig, procs: int) -> int | None:
    """`--threads`, else 1 per process with `--procs`, else for a network on a CPU the idle cores shared out
    (1 per process when there are as many processes as idle cores); None = torch's own default (a GPU, or
    pixel-diff)."""
    if cfg.threads:
        return cfg.threads
    if cfg.procs is not None and cfg.procs > 1:
        return 1
    if _cpu_network(cfg):
        return max(1, idle_cores() // max(procs, 1))
    return None if procs <= 1 else 1


# --- the child ------------------------------------------------------------------------------------
class _Ticker:
    """The pipeline's progress sink in a child: forwards (pairs, errors) deltas a few times a second."""

    def __init__(self, conn: Connection):
        self.conn = conn
        self.pairs = self.errors = 0          # this shard so far
        self.sent = (0, 0)
        self.last = time.monotonic()

    def reset(self) -> None:
        self.pairs = self.errors = 0
        self.sent = (0, 0)

    def update(self, n: int = 1) -> None:
        self.pairs += n
        if time.monotonic() - self.last >= TICK_INTERVAL_S:
            self.flush()

    def set_postfix(self, errors: int = 0, **_: Any) -> None:
        self.errors = errors

    def flush(self) -> None:
        delta = (self.pairs - self.sent[0], self.errors - self.sent[1])
        if delta != (0, 0):
            self.conn.send(("tick", delta))
            self.sent = (self.pairs, self.errors)
        self.last = time.monotonic()


def _child_main(conn: Connection, config: dict[str, Any], run_dir: str, run_hash: str, threads: int,
                parent_pid: int, name: str) -> None:
    from sigma.lifeline import die_with_parent, leave_stop_signals_to_parent

    # Ctrl-C reached every child too: each died with a KeyboardInterrupt traceback (during start-up in spawn's
    # imports, or mid-shard), while the driver was itself stopping; the driver decides and kills us
    leave_stop_signals_to_parent()
    die_with_parent(parent_pid)
    try:
        from sigma.batch.shard_runner import ShardRunner

        runner = ShardRunner(config, run_dir, run_hash, threads=threads, workers=0,
                             worker_name=f"{name} (pid {os.getpid()})")
    except BaseException as exc:  # noqa: BLE001 - reported to the driver, which raises it
        conn.send(("init_error", error_record(exc)))
        return
    conn.send(("ready", os.getpid()))
    ticker = _Ticker(conn)
    try:
        while True:
            try:
                message = conn.recv()
            except EOFError:
                return
            if message is None:
                return
            ticker.reset()
            try:
                outcome = runner.run(message, progress=ticker)
            except Exception as exc:  # noqa: BLE001 - e.g. the writer failed (disk full): the driver decides
                ticker.flush()
                conn.send(("shard_error", error_record(exc)["message"]))
                continue
            ticker.flush()
            conn.send(("done", outcome.to_dict()))
    finally:
        runner.close()


# --- the driver -----------------------------------------------------------------------------------
@dataclass
class _Child:
    name: str
    process: Any
    conn: Connection
    ready: bool = False
    shard: Shard | None = None
    ticked: tuple[int, int] = (0, 0)
    alive: bool = True
    heard: float = 0.0                 # monotonic time of its last message (or of its start, or of its shard)


class ProcPool:
    def __init__(self, cfg: BatchConfig, rundir: RunDir, run_hash: str, threads: int):
        from sigma.batch.shard_runner import absolute_config

        # spawn: never fork a process that may hold torch/CUDA state; shielded: children leave Ctrl-C to us
        self.ctx = ShieldedSpawnContext()
        self.config = absolute_config(cfg)
        self.run_dir = str(rundir.root.resolve())
        self.run_hash = run_hash          # the children's, as the config: run.json is not read again in each
        self.threads = threads
        self.children: list[_Child] = []
        self.spawned = 0
        self.died = 0                     # children that died (any way: killed, crashed, taken as hung)
        self.idle_deaths: list[dict[str, Any]] = []   # those that held no shard: in no `retried` record
        self.ever_ready = False           # a child of this run said "ready": a start can work here
        self.start_failures = 0           # starts failed in a row (`start_failed`), reset by a "ready"
        self.retry_at: float | None = None    # when a failed start is tried again (None: none is due)
        self.last_start_error = ""
        self.start_retry = cfg.start_retry

    def spawn(self) -> _Child:
        """A new child, in `children` before it starts: a Ctrl-C during the start is taken once it has started
        (`stop_signals_deferred`), and `close` then finds it."""
        self.spawned += 1
        name = f"inference process {self.spawned}"
        ours, theirs = self.ctx.Pipe(duplex=True)
        process = self.ctx.Process(target=_child_main, name=f"sigma-{self.spawned}", daemon=True,
                                   args=(theirs, self.config, self.run_dir, self.run_hash, self.threads,
                                         os.getpid(), name))
        child = _Child(name, process, ours, heard=time.monotonic())
        self.children.append(child)
        try:
            with stop_signals_deferred():   # a Ctrl-C mid-start left the child with no work ("Ran out of input")
                process.start()
        except BaseException:
            self.children.remove(child)     # never started: nothing to wait for or bury
            self.spawned -= 1
            ours.close()
            raise
        finally:
            theirs.close()
        return child

    def try_spawn(self) -> _Child | None:
        """A replacement child, unless a failed start is not due to be tried again yet, or this start fails (fork or
        spawn refused: `start_failed`): None then, and the run goes on with the children it has."""
        if self.retry_at is not None and time.monotonic() < self.retry_at:
            return None
        try:
            return self.spawn()
        except OSError as exc:
            self.start_failed(f"could not start an inference process ({type(exc).__name__}: {exc})")
            return None

    def start_failed(self, reason: str) -> None:
        """A start failed (refused, or the child died or failed before it was ready): tried again after a backoff."""
        from sigma.batch.pipeline import say_above_progress  # not at import: the driver needs no pipeline else

        self.start_failures += 1
        retry = self.start_retry
        delay = min(retry.max_s, retry.first_s * 2 ** min(self.start_failures - 1, 64))
        self.retry_at = time.monotonic() + delay
        self.last_start_error = reason
        left = len(self.live())
        say_above_progress(f"sigma batch: {reason}; trying again in {delay:.1f} s"
                           + (f" ({left} process(es) go on meanwhile)" if left else
                              f" (try {self.start_failures} of {self.start_retry.tries} with no process left)"))

    def started(self) -> None:
        """A child said "ready": starts work here; the failures in a row are over."""
        self.ever_ready = True
        self.start_failures, self.retry_at = 0, None

    def top_up(self, wanted: int, ledger: ShardLedger) -> None:
        """Children that could not be started are tried again once due, while shards wait for them."""
        while self.retry_at is not None and len(self.live()) < wanted and len(ledger.queue) > self._idle() \
                and time.monotonic() >= self.retry_at:
            if self.try_spawn() is None:
                return

    def _idle(self) -> int:
        """Children that hold no shard (ready or still starting): the shards waiting they will take."""
        return sum(1 for c in self.live() if c.shard is None)

    def may_retry_start(self) -> bool:
        """With no child left: whether a failed start is still to be tried again (else the run gives up)."""
        return self.retry_at is not None and self.start_failures < self.start_retry.tries

    def live(self) -> list[_Child]:
        return [c for c in self.children if c.alive]

    def bury(self, child: _Child) -> str:
        """Mark a child dead (its pipe closed or its process gone) and say how it ended."""
        child.alive = False
        child.conn.close()
        child.process.join(timeout=5)
        code = child.process.exitcode
        if code is None:
            child.process.kill()
            child.process.join(timeout=5)
            code = child.process.exitcode
        return f"{child.name} exited with {'signal ' + str(-code) if code and code < 0 else 'code ' + str(code)}"

    def close(self, graceful: bool = True) -> None:
        for child in self.live():
            try:
                child.conn.send(None)
            except OSError:
                pass
        deadline = time.monotonic() + (10 if graceful else 0)
        for child in self.children:
            if child.process.pid is None:    # never started (interrupted first)
                child.alive = False
                child.conn.close()
                continue
            child.process.join(timeout=max(0.1, deadline - time.monotonic()))
            if child.process.is_alive():
                child.process.kill()
                child.process.join(timeout=5)
            if child.alive:
                child.alive = False
                child.conn.close()


def run_with_procs(cfg: BatchConfig, rundir: RunDir, run_hash: str, pending: list[Shard], total_shards: int,
                   progress: bool = True):
    from sigma.batch.runner import make_progress

    n = inference_procs(cfg, len(pending))
    threads = inference_threads(cfg, n) or 1
    total = planned_pairs(pending)
    with make_progress(total, progress) as bar:
        ledger = ShardLedger(rundir, run_hash, pending, cfg.attempts, bar)
        pool = ProcPool(cfg, rundir, run_hash, threads)
        try:
            pool.spawn()                # the first: a start refused before any child ran is the run's error
            for _ in range(n - 1):
                pool.try_spawn()        # the others: refused, tried again (`top_up`) while the first works
            while not ledger.finished:
                pool.top_up(n, ledger)
                for child in pool.live():
                    if child.ready and child.shard is None and ledger.queue:
                        child.shard, child.ticked, child.heard = ledger.next(), (0, 0), time.monotonic()
                        try:
                            child.conn.send(child.shard.to_dict())
                        except OSError:      # it died since the last look
                            _died(child, ledger, pool, pool.bury(child))
                live = pool.live()
                if not live and pool.may_retry_start():
                    time.sleep(max(0.0, min(1.0, (pool.retry_at or 0.0) - time.monotonic())))
                    continue
                if not live:
                    why = f"; the last start: {pool.last_start_error}" if pool.last_start_error else ""
                    ledger.fail_remaining(f"no inference process left (each one died; see the log above){why}")
                    break
                ready = set(wait([c.conn for c in live] + [c.process.sentinel for c in live], timeout=1.0))
                for child in live:
                    if child.conn in ready or child.process.sentinel in ready:
                        _drain(child, ledger, pool)
                    if child.alive and child.process.sentinel in ready and not child.process.is_alive():
                        _died(child, ledger, pool, pool.bury(child))
                    elif child.alive and (child.shard is not None or not child.ready) \
                            and time.monotonic() - child.heard > cfg.stall_s:
                        # alive but silent (a deadlock in native code, SIGSTOP): the run must not wait for ever. Also
                        # while starting: children stopped or hung before "ready" kept a run waiting for ever
                        child.process.kill()
                        _died(child, ledger, pool, f"{pool.bury(child)} after no progress for {cfg.stall_s:.15g} s "
                                                   "(taken as hung)")
        except BaseException:
            # an error or Ctrl-C: do not wait for shards in progress (published ones stay done, --resume runs the
            # rest); a second Ctrl-C cut this short and left children running
            with interrupts_ignored():
                pool.close(graceful=False)
            raise
        pool.close()
    return ledger.summary(total_shards, {"backend": "local", "procs": n, "threads": threads,
                                         "processes_started": pool.spawned, "processes_died": pool.died,
                                         "idle_deaths": pool.idle_deaths})


def _drain(child: _Child, ledger: ShardLedger, pool: ProcPool) -> None:
    """Read everything the child has sent so far. Only the pipe's own errors mean the child died: the
    ledger's (a status file it cannot write on a full disk) go up to the caller, never taken for a death
    (which dropped the shard in hand — the run then waited for it for ever)."""
    while child.alive:
        try:
            if not child.conn.poll():
                return
            kind, payload = child.conn.recv()
        except (EOFError, OSError):
            _died(child, ledger, pool, pool.bury(child))
            return
        child.heard = time.monotonic()
        if kind == "ready":
            child.ready = True
            pool.started()
        elif kind == "init_error":
            if not pool.ever_ready:     # no child of this run could start: a configuration to fix, said at once
                raise_error_record(payload, f"{child.name} could not start")
            # a replacement failed where others started (an import that ran out of memory): tried again later
            _died(child, ledger, pool, f"{pool.bury(child)} ({payload.get('code')}: {payload.get('message')})")
            return
        elif kind == "tick":
            ledger.tick(*payload)
            child.ticked = (child.ticked[0] + payload[0], child.ticked[1] + payload[1])
        elif kind == "done":
            from sigma.batch.shard_runner import ShardOutcome

            ledger.done(ShardOutcome(**payload), child.ticked)
            child.shard, child.ticked = None, (0, 0)
        elif kind == "shard_error":
            shard, ticked = child.shard, child.ticked
            child.shard, child.ticked = None, (0, 0)
            if shard is not None:
                ledger.lost(shard, payload, child.name, ticked)


# deaths of children holding no shard that the summary lists (`backend.idle_deaths`); `processes_died` counts all
IDLE_DEATHS_SHOWN = 100


def _died(child: _Child, ledger: ShardLedger, pool: ProcPool, how: str) -> None:
    """A child is gone. Its shard, if any, is the ledger's (`retried`). One that held none (killed between shards,
    idle at the end of a run, or still starting while others work) was recorded nowhere but `processes_started`,
    and one killed while starting ended the whole run `worker_failed` though other children were working: now each
    is said on stderr and listed in the summary's `backend.idle_deaths`, replaced while shards wait. One killed while
    every child was still starting (the OOM killer during the imports of `--procs 4`) ended the whole run
    `worker_failed` though the others were about to work: now it is such an idle death too, not replaced while no child
    is ready (a start that fails for every child must end, not respawn for ever). The run raises when no child is
    left and none was ready (a start that fails for every child: an import, no memory)."""
    pool.died += 1
    starting_only = not child.ready and not any(c.ready for c in pool.live())
    if starting_only and not pool.live() and not pool.ever_ready:
        raise SigmaError(f"{how} before it was ready (its traceback, if any, is above; out of memory? try fewer "
                         "--procs; a script that calls run_batch needs `if __name__ == '__main__':`)",
                         code="worker_failed")
    held = child.shard
    if held is not None:
        ledger.lost(held, how, child.name, child.ticked)
        child.shard, child.ticked = None, (0, 0)
    if not child.ready and pool.ever_ready:    # a replacement that died starting: tried again after a backoff
        pool.start_failed(f"{how} while starting")
    replacement = pool.try_spawn() if ledger.queue and not starting_only else None
    if held is None:
        from sigma.batch.pipeline import say_above_progress  # not at import: the driver needs no pipeline else

        record = {"worker": child.name, "reason": how if child.ready else f"{how} while starting",
                  "replaced_by": replacement.name if replacement is not None else None}
        if len(pool.idle_deaths) < IDLE_DEATHS_SHOWN:
            pool.idle_deaths.append(record)
        say_above_progress(f"sigma batch: {record['reason']} holding no shard (none lost); "
             + (f"{replacement.name} takes its place" if replacement is not None else
                f"{len(pool.live())} process(es) finish the run"))


