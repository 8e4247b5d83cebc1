"""The serving predictor: `setup()` once, then `__call__(batch) -> list`, one result per item.

This is the shape Ray Serve deployments and Ray Data actors expect (a class built once per replica,
called on batches), so the same class can be wrapped there later; the Redis worker is one caller.

Items are plain dicts (what a queue or a dataset row carries):
    {"id": str, "original": bytes, "edited": bytes, "instruction": str | None,
     "threshold": float | None, "mask_mode": "auto" | "semantic" | "footprint" | None,
     "outputs": ["rle", "png", "prob"]}
Results are JSON-ready dicts: `{"ok": True, "result": {...}}` with the annotation record (always the COCO RLE
with SA-1B names, bbox, area, parser output, timings; "png"/"prob" add base64 PNGs), or
`{"ok": False, "error": {"code", "message"}}` when the item's input is bad, or when the annotator's output for it
cannot be written as JSON (`annotator_failed`: extras that contain themselves or nest past `limits.max_json_depth`):
permanent failures, retrying cannot help.
An exception raised by the model propagates: the caller decides whether that is the batch's fault or one item's.
"""
from __future__ import annotations

import base64
import logging
import os
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import numpy as np

from sigma.config.schema import IOConfig
from sigma.errors import OutOfMemoryError, SigmaError, threads_refused
from sigma.text import NotWritable, json_ready, unwritable_output
from sigma.types import Pair

log = logging.getLogger("sigma.worker")

# A decode pool the machine would not start (`threads_refused`) is tried again this long after it was given up
# (`worker.decode_pool_retry_s`), the wait doubled after each refusal in a row up to DECODE_POOL_RETRY_MAX_FACTOR
# times it: a pids limit or a memory shortage that passes gives the worker its threads back without a restart.
DECODE_POOL_RETRY_S = 60.0
DECODE_POOL_RETRY_MAX_FACTOR = 16


class Predictor:
    def __init__(self, annotator: str, options: dict[str, Any] | None = None, io_config: IOConfig | None = None,
                 plugins: list[str] | None = None, decode_threads: int | None = None,
                 decode_pool_retry_s: float = DECODE_POOL_RETRY_S):
        self.annotator_name = annotator
        self.options = dict(options or {})
        self.io_config = io_config or IOConfig()
        self.plugins = list(plugins or [])
        self.annotator = None
        self.setup_ms: float | None = None
        self.decode_threads = decode_threads if decode_threads is not None else min(4, os.cpu_count() or 1)
        self._pool: ThreadPoolExecutor | None = None
        self.decode_pool_retry_s = decode_pool_retry_s
        self.decode_pool_refusals = 0          # every time the machine would not start the pool's threads
        self._refused_in_a_row = 0
        self._pool_retry_at: float | None = None   # monotonic time of the next try; None: not given up

    def setup(self) -> None:
        """Import plugins and build the annotator (loads weights once; GPU when the annotator uses one)."""
        from sigma.registry import create_annotator, import_plugins

        start = time.perf_counter()
        import_plugins(self.plugins, "worker.plugins")
        self.annotator = create_annotator(self.annotator_name, **self.options)
        if self.decode_threads > 1:
            self._pool = self._new_pool()
        self.setup_ms = (time.perf_counter() - start) * 1000.0

    @property
    def config_hash(self) -> str:
        return getattr(self.annotator, "config_hash", "")

    def decode(self, item: dict[str, Any]) -> Pair:
        """One item to a Pair, exactly as `sigma.io.pair_from_bytes` builds it."""
        from sigma.io import pair_from_bytes

        return pair_from_bytes(item["original"], item["edited"], item.get("instruction"), self.io_config,
                               pair_id=str(item.get("id", "pair")))

    def _decode_one(self, task: tuple[dict[str, Any], str]) -> tuple[Any, float, dict | None]:
        from sigma.io import decode_image

        item, which = task
        start = time.perf_counter()
        try:
            data = item[which]
            return decode_image(data, which, self.io_config.limits), (time.perf_counter() - start) * 1e3, None
        except SigmaError as exc:
            return None, 0.0, exc.to_dict()
        except KeyError:
            return None, 0.0, {"code": "invalid_input", "message": f"bad item: no {which!r} bytes"}
        except MemoryError as exc:      # the worker's shortage, outside the reader's own: not the input's fault
            return None, 0.0, OutOfMemoryError.decoding(which, exc).to_dict()
        except Exception as exc:  # noqa: BLE001 - a decoder bug on hostile bytes: the input's fault
            return None, 0.0, {"code": "image_unreadable",
                               "message": f"{which}: could not be decoded ({type(exc).__name__}: {exc})"}

    def _new_pool(self) -> ThreadPoolExecutor:
        return ThreadPoolExecutor(self.decode_threads, thread_name_prefix="sigma-decode")

    @property
    def decoding_threads(self) -> int:
        """The threads decoding a batch's images now: the pool's, or 1 while it is given up (heartbeat field
        `decode_threads`)."""
        return self.decode_threads if self._pool is not None else 1

    def _decode_all(self, tasks: list[tuple[dict[str, Any], str]]) -> list[tuple[Any, float, dict | None]]:
        """Every image of a batch, decoded in parallel on the pool (Pillow and OpenCV release the GIL), whose threads
        the first batch starts. A machine that would start none of them (`threads_refused`: a container's pids
        limit, `ulimit -v` with a large `ulimit -s`) failed each job of the batch `out_of_threads` (503), jobs a
        worker could do without the pool: the pool is given up, said on the log, and this batch decodes in the
        worker's own thread, slower. It was given up for the process' life, so a limit that passed left the worker
        on one thread until a person restarted it; now a new pool is tried `decode_pool_retry_s` later (doubled
        after each refusal in a row, up to DECODE_POOL_RETRY_MAX_FACTOR times), and said when it starts. A try that
        fails costs nothing but the try: decoding has no side effect, so the batch is decoded again in the worker's
        thread, each job once. A thread the model cannot start is still the job's `out_of_threads`."""
        if self._pool is None and self._pool_retry_at is not None and time.monotonic() >= self._pool_retry_at:
            self._pool = self._new_pool()
        if self._pool is not None:
            try:
                decoded = list(self._pool.map(self._decode_one, tasks))
            except RuntimeError as exc:
                if not threads_refused(exc):
                    raise
                self._give_up_pool(exc)
            else:
                if self._refused_in_a_row:
                    log.info("the image decode pool's %d threads started again after %d refusal(s); the worker "
                             "decodes images in parallel again", self.decode_threads, self._refused_in_a_row)
                    self._refused_in_a_row, self._pool_retry_at = 0, None
                return decoded
        return list(map(self._decode_one, tasks))

    def _give_up_pool(self, exc: RuntimeError) -> None:
        """The pool's threads were refused: drop it (the threads it did start end with it) and set the next try."""
        assert self._pool is not None
        self._pool.shutdown(wait=False, cancel_futures=True)
        self._pool = None
        self.decode_pool_refusals += 1
        self._refused_in_a_row += 1
        wait = self.decode_pool_retry_s * min(2 ** (self._refused_in_a_row - 1), DECODE_POOL_RETRY_MAX_FACTOR)
        self._pool_retry_at = time.monotonic() + wait
        log.warning("the machine would not start the image decode pool's %d threads (%s: its limit on threads or on "
                    "their stacks' memory; refusal %d in a row); the worker decodes images in its own thread, "
                    "slower, and tries the pool again in %.0f s", self.decode_threads, exc, self._refused_in_a_row,
                    wait)

    def _build(self, item: dict[str, Any], decoded: list[tuple[Any, float, dict | None]]
               ) -> tuple[Pair | None, float, dict | None]:
        """`pair_from_bytes` split in two: the images were decoded (in parallel), now check and sync."""
        from sigma.io.pairs import pair_from_decoded

        for _, _, error in decoded:
            if error is not None:
                return None, 0.0, error
        start = time.perf_counter()
        try:
            pair = pair_from_decoded(decoded[0][0], decoded[1][0], item.get("instruction"), self.io_config,
                                     str(item.get("id", "pair")))
        except SigmaError as exc:
            return None, 0.0, exc.to_dict()
        # wall time: the two images decoded side by side when there is a pool
        images_ms = max(decoded[0][1], decoded[1][1]) if self._pool is not None else decoded[0][1] + decoded[1][1]
        return pair, images_ms + (time.perf_counter() - start) * 1e3, None

    def __call__(self, batch: list[dict[str, Any]]) -> list[dict[str, Any]]:
        if self.annotator is None:
            self.setup()
        results: list[dict[str, Any] | None] = [None] * len(batch)
        pairs: list[Pair] = []
        where: list[int] = []
        decode_ms: list[float] = []
        tasks = [(item, which) for item in batch for which in ("original", "edited")]
        decoded = self._decode_all(tasks)
        for n, item in enumerate(batch):
            pair, ms, error = self._build(item, decoded[2 * n:2 * n + 2])
            if error is not None:
                results[n] = {"ok": False, "error": error}
            else:
                pairs.append(pair)
                where.append(n)
                decode_ms.append(ms)
        thresholds = [batch[n].get("threshold") for n in where]
        modes = [batch[n].get("mask_mode") for n in where]
        annotations = self.annotator.predict(pairs, threshold=thresholds, mask_mode=modes) if pairs else []
        for n, pair, ann, dec_ms in zip(where, pairs, annotations, decode_ms, strict=True):
            try:
                results[n] = {"ok": True, "result": self._record(batch[n], pair, ann, dec_ms)}
            except NotWritable as exc:
                # json_ready recursed until RecursionError: the job was retried as a model_error (its batch run
                # again pair by pair) and dead-lettered; the same model gives the same extras, so it fails now
                results[n] = {"ok": False, "error": {"code": "annotator_failed",
                                                     "message": unwritable_output(ann.annotator, exc)}}
        return results  # type: ignore[return-value]

    def _record(self, item: dict[str, Any], pair: Pair, ann, decode_ms: float) -> dict[str, Any]:
        from sigma.io import encode_png

        start = time.perf_counter()
        outputs = item.get("outputs") or ["rle"]
        record = json_ready(ann.to_dict(), max_depth=self.io_config.limits.max_json_depth)
        record["instruction"] = pair.instruction
        if "png" in outputs:
            record["mask_png_base64"] = base64.b64encode(encode_png(ann.mask.astype(np.uint8) * 255)).decode()
        if "prob" in outputs:
            prob8 = np.round(ann.prob * 255).astype(np.uint8)
            record["prob_png_base64"] = base64.b64encode(encode_png(prob8)).decode()
        timings = record.setdefault("timings_ms", {})
        timings["decode"] = round(decode_ms, 3)
        timings["encode"] = round((time.perf_counter() - start) * 1000.0, 3)
        return record
