"""The shard pipeline: a reading thread, decode processes, batched inference here, a writing thread.

    feeder thread ── chunks of SourceItems ──▶ decode processes ──▶ futures (bounded queue, in order)
    main thread: wait on futures in order, batch pairs (never across shards), annotator.predict
    writer thread: rows → one parquet per shard (temp, fsync, rename, fsync folder), PNG masks (each fsynced, their
                   folders synced) → status file (fsynced, renamed, status/ synced)

Bounded queues keep memory flat however long the run; the annotator never waits on disk while the
decode window is full.
"""
from __future__ import annotations

import fcntl
import multiprocessing
import multiprocessing.connection
import os
import queue
import signal
import sys
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import BrokenExecutor, CancelledError, ProcessPoolExecutor
from concurrent.futures import TimeoutError as FuturesTimeout
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Self

from sigma.batch.config import BatchConfig
from sigma.batch.decode import Decoded, decode_items
from sigma.batch.layout import RunDir
from sigma.batch.rows import error_row, ok_row, rows_to_table
from sigma.digest import sha256_file
from sigma.errors import SigmaError, memory_refused, no_memory
from sigma.io.corpora.base import Corpus, Shard, SourceItem, safe_name
from sigma.io.images import write_png
from sigma.lifeline import ShieldedSpawnProcess, die_with_parent, leave_stop_signals_to_parent
from sigma.tempfiles import rename_durably, sync_folder, temp_name
from sigma.text import MAX_JSON_DEPTH, NotWritable, unwritable_output

_END = object()


@dataclass
class ShardResult:
    shard: Shard
    status: str                     # "done" | "failed"
    pairs: int = 0
    ok: int = 0
    errors: int = 0
    error: str | None = None


@dataclass
class PipelineStats:
    pairs: int = 0
    errors: int = 0
    shards: list[ShardResult] = field(default_factory=list)


class _Immediate:
    """A finished future, for decoding in the reading thread (workers=0)."""

    def __init__(self, value):
        self._value = value

    def result(self, timeout: float | None = None):
        return self._value


class _Refused:
    """The future of a chunk the pool refused: it broke, or the main thread shut it down replacing it, since the
    last chunk. Either way it is a pool gone (`BrokenExecutor`), for `Pipeline._decoded` to hand the chunk on."""

    def __init__(self, exc: Exception):
        self._exc = exc

    def result(self, timeout: float | None = None):
        raise BrokenExecutor(f"the decode pool refused the chunk: {self._exc}") from self._exc


@dataclass
class _Decoding:
    """A chunk handed to the decode pool: its items (to hand them to a new pool when that one breaks), the
    future of their decoding, and the pool it went to (None: decoded in the reading thread)."""

    items: list[SourceItem]
    future: Any
    pool: ProcessPoolExecutor | None


def _chunks(items: Iterable[SourceItem], size: int) -> Iterator[list[SourceItem]]:
    chunk: list[SourceItem] = []
    for item in items:
        chunk.append(item)
        if len(chunk) == size:
            yield chunk
            chunk = []
    if chunk:
        yield chunk


def read_failure(exc: BaseException) -> str:
    """A shard's failure to be read, in words: `sys.exit(n)` from a reader said as such, else the exception's type
    and message (a message that itself fails to print gives the type alone)."""
    if isinstance(exc, SystemExit):
        return f"the corpus reader called sys.exit({exc.code!r})"
    if memory_refused(exc):     # decoding a pair (sigma.batch.decode): no fault of the pair's
        return memory_failure(exc, "decoding this shard")
    try:
        return f"{type(exc).__name__}: {getattr(exc, 'message', exc)}"
    except Exception:  # noqa: BLE001 - a hostile __str__ must not stop the run
        return type(exc).__name__


def memory_failure(exc: BaseException, doing: str) -> str:
    """A shard's failure for memory the system refused while `doing` its pairs (`memory_refused`: a MemoryError,
    ENOMEM, OpenCV's `cv2.error` StsNoMem): no fault of a pair, so nothing of the shard is published and the shard
    run again with more memory redoes it. The words fit every place the reason is shown: how to run it again is the
    caller's to say (`sigma batch run` adds "rerun with --resume"; a fleet worker's shard is delivered again, and a
    dead-lettered one is submitted again), not "rerun with --resume", which a fleet worker's log, its dead letter and
    `GET /v1/batches/status` said too."""
    said = f"{type(exc).__name__}: {' '.join(str(exc).split())[:300]}" if str(exc) else type(exc).__name__
    return (f"{no_memory(said, doing)}; nothing of it was published, and it is annotated in full when it runs again "
            f"with more memory (`ulimit -v`, the container's) or fewer decode processes (--workers)")


class ShardFailed(Exception):
    """A shard none of whose results can be kept (`reason` goes to its status file); the run goes on."""

    def __init__(self, reason: str):
        super().__init__(reason)
        self.reason = reason


class ShardWriter:
    """Background thread: collects rows per shard and publishes the shard's parquet + status atomically."""

    def __init__(self, rundir: RunDir, run_hash: str, on_shard: Callable[[ShardResult], None],
                 max_json_depth: int = MAX_JSON_DEPTH):
        self.rundir, self.run_hash, self.on_shard = rundir, run_hash, on_shard
        self.max_json_depth = max_json_depth            # io.limits.max_json_depth, for the extras columns
        self.q: queue.Queue = queue.Queue(maxsize=64)
        self.rows: dict[str, list[dict[str, Any]]] = {}
        self.failure: BaseException | None = None
        self.demoted = 0        # pairs annotated whose row could not be made: counted as errors, not as ok
        self.masked: set[str] = set()   # keys of the shards this writer has written PNG masks for, not yet published
        self.thread = threading.Thread(target=self._loop, name="sigma-batch-writer", daemon=True)
        self.thread.start()

    def _raise_failure(self) -> None:
        """The writer thread's failure, in the main thread. The machine refusing a write (a full disk, a
        permission) stays an OSError, and refusing memory (pyarrow's `malloc of size 256 failed`, an
        ArrowMemoryError, under `ulimit -v`) a MemoryError: the CLI says either in one line (`os_error`,
        `out_of_memory`; the MemoryError was a RuntimeError traceback) and `--resume` redoes the shards that were not
        published, once there is room; anything else is a bug, said as one."""
        if isinstance(self.failure, OSError | MemoryError):
            raise self.failure
        if self.failure is not None:
            raise RuntimeError(f"the shard writer failed: {self.failure}") from self.failure

    def put(self, message: tuple) -> None:
        self._raise_failure()
        self.q.put(message)

    def _loop(self) -> None:
        """After a failure the thread goes on taking messages, dropping them, until close(): it used to stop
        there, and a producer blocked on the full queue at that moment (the writer behind the model: PNG masks,
        ground-truth scores), or close()'s end marker behind 64 messages, waited for ever. A run whose writer
        met a file where a folder must be hung instead of ending with the reason."""
        while True:
            message = self.q.get()
            if message is _END:
                return
            if self.failure is not None:
                continue
            try:
                self._handle(*message)
            except BaseException as exc:  # noqa: BLE001 - surfaced to the main thread on its next put()
                self.failure = exc

    def _handle(self, kind: str, shard: Shard, payload: Any = None) -> None:
        if kind == "row":
            self.rows.setdefault(shard.key, []).append(payload)
        elif kind == "ok":
            # RLE, ground-truth scores and PNGs are built here, off the inference thread
            decoded, ann, mask_rel = payload
            try:
                row = ok_row(decoded, ann, shard.key, self.run_hash, mask_rel, self.max_json_depth)
            except Exception as exc:  # noqa: BLE001 - what the manifest cannot hold is that pair's error
                # an annotation no row can hold (extras that contain themselves) stopped the writer: the whole run
                # ended with a traceback (or, behind a full queue, hung)
                self.demoted += 1
                message = (unwritable_output(ann.annotator, exc) if isinstance(exc, NotWritable)  # as service results
                           else f"annotator {ann.annotator!r}: its output for this pair cannot be written to the "
                                f"manifest: {read_failure(exc)}")
                self.rows.setdefault(shard.key, []).append(error_row(
                    decoded, shard.key, self.run_hash, "annotator_failed", message))
                return
            if mask_rel is not None:
                self.rundir.subdir("masks", shard.key)       # never the run folder itself (RunDir.subdir)
                # fsynced before its rename: the shard's status will vouch for it (`_sync_masks`)
                write_png(ann.mask.astype("uint8") * 255, self.rundir.root / mask_rel, durable=True)
                self.masked.add(shard.key)
            self.rows.setdefault(shard.key, []).append(row)
        elif kind == "finish":
            rows = self.rows.pop(shard.key, [])
            self._publish(shard, rows)
        elif kind == "abort":
            self.rows.pop(shard.key, None)
            self.masked.discard(shard.key)
            self.rundir.write_status(shard, {"status": "failed", "run_hash": self.run_hash, "error": str(payload)})
            self.on_shard(ShardResult(shard, "failed", error=str(payload)))

    def _publish(self, shard: Shard, rows: list[dict[str, Any]]) -> None:
        import pyarrow.parquet as pq

        target = self.rundir.shard_path(shard, self.run_hash)
        self.rundir.subdir("shards")
        tmp = temp_name(target)
        try:
            with open(tmp, "xb") as handle:
                # held until the rename: a worker that takes the shard after this one died removes the file only
                # when nobody holds it (RunDir.sweep_temps); the kernel drops the lock with the writer
                fcntl.flock(handle, fcntl.LOCK_EX)
                pq.write_table(rows_to_table(rows), handle, compression="zstd", row_group_size=max(len(rows), 1))
                # on disk (bytes, then name) before the status below says "done" about it: only flushed before,
                # a power cut could keep the durable status and lose the shard it vouches for
                rename_durably(handle, tmp, target)
        except BaseException:
            tmp.unlink(missing_ok=True)
            raise
        self._sync_masks(shard)
        errors = [r for r in rows if r["status"] != "ok"]
        codes: dict[str, int] = {}
        for r in errors:
            codes[r["error_code"]] = codes.get(r["error_code"], 0) + 1
        self.rundir.write_status(shard, {
            "status": "done", "run_hash": self.run_hash, "output": str(target.relative_to(self.rundir.root)),
            "bytes": target.stat().st_size, "sha256": sha256_file(target), "pairs": len(rows),
            "ok": len(rows) - len(errors), "errors": len(errors), "error_codes": codes})
        self.on_shard(ShardResult(shard, "done", len(rows), len(rows) - len(errors), len(errors)))

    def _sync_masks(self, shard: Shard) -> None:
        """The names of the shard's PNG masks on disk before its status says "done": `masks/<key>/` fsynced (each
        PNG's bytes already were, `write_png(durable=True)`), then `masks/` and the run folder, whose entries hold
        the way to it. Before, the PNGs were only renamed into the page cache while the status that followed was
        fsynced: a power cut could leave a "done" shard whose masks were empty, cut short or missing, and `--resume`
        never wrote them again."""
        if shard.key not in self.masked:
            return
        self.masked.discard(shard.key)
        folder = self.rundir.subdir("masks", shard.key)
        for path in (folder, folder.parent, self.rundir.root):
            sync_folder(path)

    def close(self) -> None:
        self.q.put(_END)
        self.thread.join()
        self._raise_failure()


def decode_process_init(parent_pid: int) -> None:
    """A decode process dies with its parent and leaves SIGINT/SIGTERM to it. Ctrl-C (the terminal signals the
    whole process group) and a service manager's stop (systemd signals the whole cgroup) reached the decode
    processes too: each died with a KeyboardInterrupt traceback, the pool broke, and the shard a stopping
    `sigma worker --batch` was to finish failed instead (BrokenProcessPool). The parent decides: it finishes or
    drops its work and shuts the pool down (and a parent killed outright takes them with it).

    This initializer runs only once the interpreter has started and imported this module (a second or more on a
    busy machine); a signal in that window killed the process all the same. So the process starts with the
    signals blocked (`ShieldedSpawnProcess`), and here they are ignored first, then unblocked
    (`leave_stop_signals_to_parent`)."""
    leave_stop_signals_to_parent()
    die_with_parent(parent_pid)


def say_above_progress(line: str) -> None:
    """A line on stderr above the progress bar (tqdm's write keeps the bar whole); a stderr nobody reads any more (a
    closed pipe) must not end the run: the summary keeps the record."""
    from tqdm import tqdm

    try:
        tqdm.write(line, file=sys.stderr)
    except (OSError, ValueError):
        pass


def _exit_code_of_ended(process: Any, settle_s: float = 1.0) -> int | None:
    """`process.exitcode`, waiting up to `settle_s` for it when the process has ended (its sentinel ready) but the
    code is not known yet: the executor's manager thread joins a broken pool's processes as the futures learn of the
    break, and of two threads reaping one child only one gets its status (the other's `waitpid` fails, `exitcode`
    None until the first has set it), so a death read at that moment was said "how is unknown"."""
    code = process.exitcode
    try:
        ended = code is None and bool(multiprocessing.connection.wait([process.sentinel], 0))
    except (ValueError, OSError):        # closed, or never started
        return code
    deadline = time.monotonic() + settle_s
    while ended and code is None and time.monotonic() < deadline:
        time.sleep(0.01)
        code = process.exitcode
    return code


class RecordingContext:
    """The 'spawn' multiprocessing context, with two differences: every process it starts is remembered, and each
    starts with SIGINT/SIGTERM blocked (`ShieldedSpawnProcess`, for `decode_process_init` to ignore them). A
    ProcessPoolExecutor starts its workers through its `mp_context`, so a pool made with one of these has its
    workers here, to be killed with the public `Process.kill` when it hangs (the executor has no public way).
    Only 'spawn': a 'fork' child would inherit the blocked mask as well, but a 'forkserver' child is forked by the
    server, not by this process, and would not."""

    def __init__(self) -> None:
        self._context = multiprocessing.get_context("spawn")
        self.processes: list[multiprocessing.process.BaseProcess] = []
        self._lock = threading.Lock()

    def Process(self, *args: Any, **kwargs: Any) -> multiprocessing.process.BaseProcess:   # a context's name for it
        process = ShieldedSpawnProcess(*args, **kwargs)
        with self._lock:
            self.processes.append(process)
        return process

    def deaths(self) -> list[str]:
        """"pid N killed by SIGKILL" (or "exited with status N") for each process started that ended in failure."""
        with self._lock:
            processes = list(self.processes)
        said = []
        for process in processes:
            code = _exit_code_of_ended(process)
            if code is None or code == 0:
                continue
            try:
                how = f"killed by {signal.Signals(-code).name}" if code < 0 else f"exited with status {code}"
            except ValueError:
                how = f"killed by signal {-code}"
            said.append(f"pid {process.pid} {how}")
        return said

    def kill_all(self) -> None:
        """SIGKILL every process started that is still running (one not yet started is left alone)."""
        with self._lock:
            processes = list(self.processes)
        for process in processes:
            if process.pid is not None and process.exitcode is None:
                process.kill()

    def __getattr__(self, name: str) -> Any:      # SimpleQueue, Queue, get_start_method, ...: the real context's
        return getattr(self._context, name)


class Pipeline:
    """Reusable across calls (fleet workers keep one per process): holds the decode pool and annotator."""

    def __init__(self, cfg: BatchConfig, annotator=None, workers: int | None = None):
        self.io_config = cfg.io.model_dump(mode="json")
        self.max_json_depth = cfg.io.limits.max_json_depth
        self.batch_size = cfg.batch_size
        self.workers = cfg.decode_workers() if workers is None else workers
        self.png_masks = cfg.png_masks
        self.ground_truth = cfg.ground_truth
        self.root = cfg.input.root
        self.stall_s = cfg.stall_s
        self.pool = None
        self._pool_context: RecordingContext | None = None
        warm: list = []
        if self.workers > 0:
            self.pool = self._new_pool()
            try:
                warm = [self.pool.submit(decode_items, [], self.io_config) for _ in range(self.workers)]
            except BaseException:
                # the machine refused the pool's manager thread (`threads_refused`) after its processes were
                # started: they were left behind, each dying on the freed pool's semaphore with a traceback, one
                # more set per try of a fleet worker (`sigma.service.fleet.ThreadsRefused`) until the limit passed
                self._drop_pool()
                raise
        try:
            if annotator is None:
                from sigma.batch.runner import build_annotator_for

                annotator = build_annotator_for(cfg)
            self.annotator = annotator
            for future in warm:
                try:
                    future.result()
                except BrokenExecutor:     # a decoder died starting (killed): the run starts with a new pool
                    self._say_broken_pool()
                    self._replace_pool()
                    break
        except BaseException:
            self.close()
            raise

    def _new_pool(self) -> ProcessPoolExecutor:
        # spawn (not fork): the parent may hold torch/CUDA state. The workers boot while the model loads.
        # die_with_parent: a SIGKILLed run must not leave decoders (and through them multiprocessing's resource
        # tracker) alive, blocked on a pipe nobody reads
        self._pool_context = RecordingContext()
        return ProcessPoolExecutor(self.workers, mp_context=self._pool_context,  # type: ignore[arg-type]
                                   initializer=decode_process_init, initargs=(os.getpid(),))

    def _replace_pool(self) -> None:
        """A new pool in place of one that broke (a decoder killed) or hung (`_replace_hung_pool`); the old one's
        processes are killed (`RecordingContext`, not the executor's private `_processes`) and its work
        cancelled."""
        old, old_context = self.pool, self._pool_context
        self.pool = self._new_pool()
        if old_context is not None:
            old_context.kill_all()
        if old is not None:
            old.shutdown(wait=False, cancel_futures=True)

    def _say_broken_pool(self) -> None:
        """One stderr line when a decode process died (the OOM killer, a SIGKILL) and its pool is replaced: the
        recovery was silent, so a fleet worker's log or a local run's output never showed a decoder killed over and
        over (memory too tight for --workers) though each death redecoded chunks."""
        deaths = self._pool_context.deaths() if self._pool_context is not None else []
        say_above_progress(f"sigma batch: a decode process died ({', '.join(deaths) or 'how is unknown'}); a new "
                           "decode pool decodes its chunks again (no pair lost; one that dies again fails its shard)")

    def _replace_hung_pool(self) -> None:
        """A decode worker that gives no result for stall_s (stopped, deadlocked in a codec) would keep the run
        waiting for ever, and an executor cannot drop one worker: all of them are killed and a new pool takes
        over. The shard whose chunk hung is failed (--resume redoes it); the other chunks handed to the old pool
        are decoded again by the new one (`_decoded`)."""
        self._replace_pool()

    def _drop_pool(self) -> None:
        """The pool given up without waiting on it: its processes killed, its work cancelled."""
        if self._pool_context is not None:
            self._pool_context.kill_all()
        if self.pool is not None:
            self.pool.shutdown(wait=False, cancel_futures=True)
        self.pool = None

    def close(self) -> None:
        if self.pool is not None:
            self.pool.shutdown(wait=True, cancel_futures=True)
            self.pool = None

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    # --- reading ---------------------------------------------------------------------------------
    def _submit(self, chunk: list[SourceItem]) -> _Decoding:
        pool = self.pool
        if pool is None:
            return _Decoding(chunk, _Immediate(decode_items(chunk, self.io_config, self.ground_truth, self.root)), None)
        try:
            future = pool.submit(decode_items, chunk, self.io_config, self.ground_truth, self.root)
        except RuntimeError as exc:   # BrokenExecutor, or "cannot schedule new futures after shutdown"
            # was: the reading thread's exception, which failed the shard as unreadable
            future = _Refused(exc)
        return _Decoding(chunk, future, pool)

    def _decoded(self, decoding: _Decoding) -> list[Decoded]:
        """A chunk's decoded items. A decode process that dies (a signal, the OOM killer) breaks its pool and
        with it every chunk handed to it: each of those shards was failed, for a death no pair caused. Now the
        first chunk to find its pool broken replaces it, and each such chunk is decoded once more by the new
        pool; a chunk whose second pool breaks too fails its shard (a pair that kills its decoder every time)."""
        for attempt in (1, 2):
            try:
                return decoding.future.result(timeout=self.stall_s)
            except (BrokenExecutor, CancelledError):       # the pool went (or was replaced) with the chunk
                if decoding.pool is None:
                    raise
                if decoding.pool is self.pool:
                    self._say_broken_pool()
                    self._replace_pool()
                if attempt == 2:
                    raise
                decoding = self._submit(decoding.items)
        raise AssertionError("unreachable")

    def _feed(self, corpus: Corpus, shards: list[Shard], q: queue.Queue, stop: threading.Event,
              ended: list[BaseException]) -> None:
        """Stream each shard's chunks to the main thread, then ("end") or ("fail", reason); `ended` gets what
        stopped the reading itself, if anything did."""
        chunk_size = max(1, min(self.batch_size, 16))
        try:
            for shard in shards:
                if stop.is_set():
                    break
                try:
                    for chunk in _chunks(corpus.read(shard), chunk_size):
                        q.put(("chunk", shard, self._submit(chunk)))
                        if stop.is_set():
                            break
                    q.put(("end", shard, None))
                except (Exception, SystemExit) as exc:  # noqa: BLE001 - a shard that cannot be read fails alone
                    # a reader (a plugin's) giving up with sys.exit() fails its shard too: in this thread the exit
                    # ended the reading without a word, and that shard and every one after it had no result
                    q.put(("fail", shard, read_failure(exc)))
        except BaseException as exc:  # noqa: BLE001 - said in the status of every shard left unread (run)
            ended.append(exc)
        finally:
            q.put(None)

    # --- running ---------------------------------------------------------------------------------
    def run(self, corpus: Corpus, shards: list[Shard], rundir: RunDir, run_hash: str,
            progress=None) -> PipelineStats:
        stats = PipelineStats()
        writer = ShardWriter(rundir, run_hash, stats.shards.append, self.max_json_depth)
        window = 2 * max(self.workers, 1) + 2
        q: queue.Queue = queue.Queue(maxsize=window)
        stop = threading.Event()
        ended: list[BaseException] = []
        feeder = threading.Thread(target=self._feed, args=(corpus, shards, q, stop, ended),
                                  name="sigma-batch-reader", daemon=True)
        buffer: list[Decoded] = []
        failed: set[str] = set()
        settled: set[str] = set()           # shards published or failed: each gets a status file
        try:
            # inside: a reader the system will not start (`can't start new thread`) still closes the writer
            feeder.start()
            while True:
                message = q.get()
                if message is None:
                    break
                kind, shard, payload = message
                if shard.key in failed:
                    continue
                if kind != "chunk":
                    settled.add(shard.key)
                if kind == "chunk":
                    try:
                        results = self._decoded(payload)
                    except FuturesTimeout:
                        self._replace_hung_pool()
                        buffer.clear()
                        failed.add(shard.key)
                        writer.put(("abort", shard, f"decode worker hung: no result for {self.stall_s:.15g} s"))
                        continue
                    except Exception as exc:  # noqa: BLE001 - a decode worker died (e.g. killed by the OOM killer)
                        buffer.clear()
                        failed.add(shard.key)
                        writer.put(("abort", shard, f"decode worker failed: {read_failure(exc)}"))
                        continue
                    try:
                        for decoded in results:
                            if decoded.error:
                                code, msg = decoded.error
                                writer.put(("row", shard, error_row(decoded, shard.key, run_hash, code, msg)))
                                self._tick(stats, progress, error=True)
                            else:
                                buffer.append(decoded)
                                if len(buffer) >= self.batch_size:
                                    self._infer(buffer, shard, writer, run_hash, stats, progress)
                                    buffer = []
                    except ShardFailed as exc:
                        buffer = []
                        failed.add(shard.key)
                        writer.put(("abort", shard, exc.reason))
                elif kind == "end":
                    try:
                        if buffer:
                            self._infer(buffer, shard, writer, run_hash, stats, progress)
                    except ShardFailed as exc:
                        failed.add(shard.key)
                        writer.put(("abort", shard, exc.reason))
                    else:
                        writer.put(("finish", shard))
                    buffer = []
                elif kind == "fail":
                    buffer = []
                    writer.put(("abort", shard, payload))
            # a reading thread that stopped early left its shards without a result: pending, not failed, no status
            # and no reason anywhere (a local run exited 0 with them undone). Each is failed, saying why
            why = f" ({read_failure(ended[0])})" if ended else ""
            for shard in shards:
                if shard.key not in settled and shard.key not in failed:
                    writer.put(("abort", shard, f"no result from the pipeline: its reading stopped before this "
                                                f"shard was read{why}"))
        finally:
            stop.set()
            while feeder.is_alive():   # unblock a feeder waiting on a full queue
                try:
                    q.get(timeout=0.05)
                except queue.Empty:
                    pass
            writer.close()
        stats.errors += writer.demoted
        return stats

    def _tick(self, stats: PipelineStats, progress, error: bool, n: int = 1) -> None:
        stats.pairs += n
        if error:
            stats.errors += n
        if progress is not None:
            progress.update(n)
            if error:
                progress.set_postfix(errors=stats.errors, refresh=False)

    def _annotations(self, annotations: Any, pairs: int) -> list:
        """predict()'s results, one per pair or `ShardFailed`. The base class checks its own `_predict_batch`, but an
        annotator whose predict() is its own (a plugin's batching or cache, `run_batch(annotator=...)`) was
        zipped with its pairs: one result short lost a pair's row without a word (the shard done, the run exit
        0) and, when it was not the last that was missing, put every later mask beside the wrong pair. Which
        result belongs to which pair cannot be known, so none of them is kept: the shard fails, saying so."""
        try:
            results = list(annotations)
        except Exception as exc:  # noqa: BLE001 - not a sequence of results at all
            results, what = None, f"a {type(annotations).__name__}, not a list of annotations ({read_failure(exc)})"
        else:
            what = f"{len(results)} results for {pairs} pairs"
        if results is None or len(results) != pairs:
            name = getattr(self.annotator, "name", None) or type(self.annotator).__name__
            raise ShardFailed(f"annotator {name!r} broke the output contract: {what}; it must give one per pair, in "
                              f"order, so which result is whose cannot be known and the shard keeps none "
                              f"(docs/ARCHITECTURE.md, 'The annotator output contract')")
        return results

    def _infer(self, batch: list[Decoded], shard: Shard, writer: ShardWriter, run_hash: str,
               stats: PipelineStats, progress) -> None:
        try:
            annotations = self.annotator.predict([d.pair for d in batch])
        except (Exception, SystemExit):  # noqa: BLE001 - isolate the bad pair below
            # isolate the pair that broke the batch; the others are annotated one by one. A model (or a library it
            # calls) giving up with sys.exit() is that pair's failure too: it ended the run with the exit's status
            # and no word
            outcomes = []
            for d in batch:
                try:
                    single = self.annotator.predict([d.pair])
                except Exception as exc:   # sorted here: the machine's shortage, or the pair's fault
                    if memory_refused(exc):      # a good pair's error row for good: `--resume` never redoes it
                        raise ShardFailed(memory_failure(exc, "annotating this shard")) from exc
                    outcomes.append((d, None, _pair_failure(exc)))
                except SystemExit as exc:
                    outcomes.append((d, None, ("annotator_failed", f"the model called sys.exit({exc.code!r})")))
                else:
                    outcomes.append((d, self._annotations(single, 1)[0], None))
        else:
            outcomes = list(zip(batch, self._annotations(annotations, len(batch)), [None] * len(batch)))
        for d, ann, err in outcomes:
            if err is not None:
                writer.put(("row", shard, error_row(d, shard.key, run_hash, *err)))
                self._tick(stats, progress, error=True)
                continue
            mask_rel = None
            if self.png_masks:
                mask_rel = str(Path("masks") / shard.key / f"{d.item.index:06d}_{safe_name(d.item.pair_id, 80)}.png")
            writer.put(("ok", shard, (d, ann, mask_rel)))
            self._tick(stats, progress, error=False)


def _pair_failure(exc: Exception) -> tuple[str, str]:
    """One pair's failure in the model as its error row's (code, message): a SigmaError's own, else
    `annotator_failed`."""
    if isinstance(exc, SigmaError):
        return exc.code, exc.message
    return "annotator_failed", f"{type(exc).__name__}: {exc}"
