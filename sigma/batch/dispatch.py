"""The driver's ledger for multi-process backends (`--procs`, Ray): which shards are left, which were lost
with their process and retried, and the run summary at the end.

Retrying is always safe: a shard's output is a pure function of (input, shard, run hash), published by
temp file + atomic rename, so a second attempt writes the same bytes over nothing or over itself.
"""
from __future__ import annotations

import time
from collections import deque
from typing import Any

from sigma.batch.layout import RunDir
from sigma.batch.shard_runner import ShardOutcome
from sigma.io.corpora.base import Shard


class ShardLedger:
    def __init__(self, rundir: RunDir, run_hash: str, pending: list[Shard], max_attempts: int, progress=None):
        self.rundir, self.run_hash, self.max_attempts = rundir, run_hash, max_attempts
        self.queue: deque[Shard] = deque(pending)
        self.order = {s.key: n for n, s in enumerate(pending)}    # run order, for the summary's failed shards
        self.total = len(pending)
        self.attempts: dict[str, int] = {}
        self.outcomes: dict[str, ShardOutcome] = {}
        self.retried: list[dict[str, Any]] = []
        self.progress = progress
        self.start = time.perf_counter()
        self.pairs = 0
        self.errors = 0
        self.sent: dict[str, float] = {}      # shard → when it was handed out
        self.first_sent = 0.0                 # the first shard: a worker was ready (start-up is over)
        self.overhead: list[float] = []       # per finished shard: driver round trip - the worker's own time

    # --- handing out work -------------------------------------------------------------------------
    def next(self) -> Shard | None:
        if not self.queue:
            return None
        shard = self.queue.popleft()
        self.attempts[shard.key] = self.attempts.get(shard.key, 0) + 1
        self.sent[shard.key] = time.perf_counter()
        self.first_sent = self.first_sent or self.sent[shard.key]
        return shard

    @property
    def finished(self) -> bool:
        return len(self.outcomes) == self.total

    # --- results ----------------------------------------------------------------------------------
    def tick(self, pairs: int, errors: int) -> None:
        """Live progress from a worker (deltas), before its shard is finished."""
        if self.progress is not None and pairs:
            self.progress.update(pairs)
        if errors:
            self.errors += errors
            if self.progress is not None:
                self.progress.set_postfix(errors=self.errors, refresh=False)
        self.pairs += pairs

    def done(self, outcome: ShardOutcome, ticked: tuple[int, int] = (0, 0)) -> None:
        """A shard came back (done or failed by the pipeline); `ticked` is what `tick` already counted of it."""
        self.tick(outcome.pairs - ticked[0], outcome.errors - ticked[1])
        self.outcomes[outcome.shard] = outcome
        if outcome.shard in self.sent:
            self.overhead.append(time.perf_counter() - self.sent.pop(outcome.shard) - outcome.seconds)

    def lost(self, shard: Shard, reason: str, worker: str = "", ticked: tuple[int, int] = (0, 0)) -> None:
        """The process running `shard` died: run it again elsewhere, or fail it after `max_attempts` tries."""
        # the lost attempt's pairs will be counted again by the next one
        self.pairs -= ticked[0]
        self.errors -= ticked[1]
        if self.progress is not None and ticked[0]:
            self.progress.update(-ticked[0])
        attempt = self.attempts.get(shard.key, 1)
        record = {"shard": shard.key, "attempt": attempt, "worker": worker, "reason": reason}
        published = self._published(shard, worker)
        if published is not None:
            # the worker died after publishing (status written, reply lost): the shard is done, not lost
            record["action"] = "already_done"
            self.sent.pop(shard.key, None)      # no round trip to time
            self.done(published)
        elif attempt < self.max_attempts:
            record["action"] = "retried"
            self.queue.appendleft(shard)
        else:
            record["action"] = "failed"
            error = f"lost {attempt} time(s) with its worker; last: {reason}"
            self._fail(shard, error, worker)
        self.retried.append(record)

    def _published(self, shard: Shard, worker: str) -> ShardOutcome | None:
        """The shard's outcome when its output is on disk for this run (see `RunDir.is_done`)."""
        if not self.rundir.is_done(shard, self.run_hash):
            return None
        st = self.rundir.status(shard) or {}
        return ShardOutcome(shard.key, "done", pairs=int(st.get("pairs", 0)), errors=int(st.get("errors", 0)),
                            worker=worker)

    def _fail(self, shard: Shard, error: str, worker: str = "") -> None:
        """A failed outcome; the status file only when no worker finished the shard meanwhile (then it is
        done: `mark_failed` refused to overwrite it)."""
        written = self.rundir.mark_failed(shard, self.run_hash, error)
        published = None if written else self._published(shard, worker)
        self.outcomes[shard.key] = published or ShardOutcome(shard.key, "failed", error=error, worker=worker)

    def fail_remaining(self, reason: str) -> None:
        while self.queue:
            self._fail(self.queue.popleft(), reason)

    # --- the end ----------------------------------------------------------------------------------
    def summary(self, shards: int, extra: dict[str, Any] | None = None):
        """What this run did; `run_batch` adds the run's status, bounds the failed shards and writes it."""
        from sigma.batch.runner import RunSummary

        seconds = time.perf_counter() - self.start
        outcomes = list(self.outcomes.values())
        failed = [{"shard": o.shard, "error": o.error or ""}
                  for o in sorted(outcomes, key=lambda o: self.order.get(o.shard, len(self.order)))
                  if o.status != "done"]
        pairs = sum(o.pairs for o in outcomes)
        errors = sum(o.errors for o in outcomes)
        by_worker: dict[str, int] = {}
        for o in outcomes:
            if o.worker:
                by_worker[o.worker] = by_worker.get(o.worker, 0) + 1
        summary = RunSummary(out=str(self.rundir.root), run_hash=self.run_hash, shards=shards,
                             skipped=shards - self.total, done_now=len(outcomes) - len(failed),
                             failed_now=len(failed), pairs=pairs, errors=errors, seconds=round(seconds, 3),
                             pairs_per_s=round(pairs / seconds, 3) if seconds > 0 and pairs else 0.0,
                             failed=failed, retried=self.retried,
                             backend={**(extra or {}), "shards_by_worker": dict(sorted(by_worker.items())),
                                      "overhead_ms_per_shard": round(1000 * sum(self.overhead) / len(self.overhead), 2)
                                      if self.overhead else None,
                                      "worker_seconds": round(sum(o.seconds for o in outcomes), 3),
                                      "seconds_from_first_shard": round(time.perf_counter() - self.first_sent, 3)
                                      if self.first_sent else None})
        return summary
