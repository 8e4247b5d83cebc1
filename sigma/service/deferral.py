"""How long a fleet shard task has been deferred, kept in Redis so every worker (and the run's status) sees it.

A task refused because another process holds its run folder (`run_locked`: a local `sigma batch run`) is deferred:
handed back without spending a delivery, so a long local run never gets it dead-lettered. Nothing bounded that:
a holder that was stopped (Ctrl-Z, SIGSTOP), hung, or whose host went away with the lock still held on shared
storage (NFSv3 keeps a vanished client's locks) had the task deferred every lease for ever, the run "pending" with
idle workers and no sign of why. Each deferral now updates one record per task (`Keys.batch_task_deferred`): when it
was first deferred, how often, and when a shard was last written in the run folder (its `shards/` changed). A holder
that writes shards is a live run doing the work, however long it takes; one that writes none for
`worker.max_defer_s` has the task dead-lettered (`run_locked_too_long`).

A task refused for this worker's own limit (`run_too_large`: its $SIGMA_MAX_RUN_BYTES below the run.json's size) is
deferred the same way, its record also naming the workers that refused it (`refused_by`): a worker with a higher
limit takes it after the lease. Before, the first worker with a lower limit dead-lettered it at once, and in a mixed
fleet most of a run's tasks were gone before the workers that could run them got any.
"""
from __future__ import annotations

import json
import math
import os
import re
from collections.abc import Iterable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from sigma.service.keys import Keys
from sigma.text import shown

# `worker.max_defer_s`'s default: a day with no shard written in a run folder another process holds
MAX_DEFER_S = 86_400.0
# a record outlives the cap by this much: a task waits behind other work between two deferrals (every worker busy
# on hour-long shards), and a record expired meanwhile would start its count again
KEPT_PAST_CAP_S = 86_400
# a deferral's reason as its record keeps it
REASON_LIMIT = 500
# the workers a record names (`refused_by`), and each name's length: a record stays small whatever the fleet
REFUSERS_KEPT = 64
REFUSER_LIMIT = 200
# `refused_by_text`'s names, for a text that may not name them (`without_worker_names`)
_REFUSED_BY = re.compile(r"(refused by \d+ worker\(s\)) \(.*?\)( over \d+ s\b)")


def refused_by_text(names: list[str], seconds: float) -> str:
    """`refused by N worker(s) (NAME, ...) over S s`: the workers a task given up on `run_too_large` was offered to,
    by their consumer names, for the operator who reads a dead letter on the server (`sigma batch status`)."""
    return f"refused by {len(names)} worker(s) ({', '.join(shown(n, 80) for n in names)}) over {seconds:.0f} s"


def without_worker_names(text: str) -> str:
    """`text` with the names of `refused_by_text` left out (`refused by N worker(s) over S s`), for an API answer
    (`sigma.api.errors.scrubbed`): a worker's consumer name is by default `HOST-PID` (`default_consumer`), and a run's
    status (GET /v1/batches/status, a shard dead-lettered `run_too_large`) told any caller the workers' host names
    and pids."""
    return _REFUSED_BY.sub(r"\1\2", text)


@dataclass
class Deferral:
    since: float            # Redis time of the first deferral
    count: int              # deferrals so far
    mark: int               # the run folder's shards/ mtime (ns) last seen
    progress_at: float      # Redis time the mark last changed (or `since`)
    last: float             # Redis time of the latest deferral
    reason: str = ""        # the latest refusal (who holds the folder)
    refused_by: list[str] = field(default_factory=list)    # the workers that deferred it, each once, first first

    @property
    def idle_s(self) -> float:
        """Deferred with no shard written in the run folder for this long, as of the latest deferral."""
        return self.last - self.progress_at

    @classmethod
    def parse(cls, raw: Any) -> Deferral | None:
        try:
            data = json.loads(raw)
            refused_by = data.get("refused_by", [])
            return cls(_time(data["since"]), _whole(data["count"]), _whole(data["mark"]), _time(data["progress_at"]),
                       _time(data["last"]), str(data.get("reason", "")),
                       [str(name) for name in refused_by] if isinstance(refused_by, list) else [])
        except (TypeError, ValueError, KeyError, AttributeError):      # none, or not ours: counted afresh
            return None


def _time(value: Any) -> float:
    """A record's time: a finite JSON number. `true` is an int to Python (`float(True)` is 1.0: a task first
    deferred at 1970-01-01, its idle time decades, dead-lettered at its next deferral), a text `"1e9"` no number
    we wrote, and `NaN` (which Python's JSON reads) an idle time no cap is ever below: each is no record of ours."""
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise ValueError(f"not a time: {value!r}")
    return float(value)


def _whole(value: Any) -> int:
    """A record's count or mark: a JSON integer (`true`, `1.5` and `"3"` are none)."""
    if isinstance(value, bool) or not isinstance(value, int):
        raise ValueError(f"not a whole number: {value!r}")
    return value


def progress_mark(root: Path) -> int:
    """What changes whenever a shard of the run is written: the mtime of its `shards/` folder (each parquet is made
    there under a temporary name and renamed in). Not `status/`: the fleet writes a dead letter's failed status
    there itself, which would make every other deferred task of the run look as if its holder moved on."""
    try:
        return os.stat(root / "shards").st_mtime_ns
    except OSError:
        return 0


def redis_now(client: Any) -> float:
    """The Redis server's clock: every worker's host measures a deferral's age against one clock."""
    seconds, micros = client.time()
    return seconds + micros / 1e6


def note_deferral(client: Any, keys: Keys, entry_id: str, root: Path, reason: str, cap_s: float,
                  worker: str | None = None) -> Deferral:
    """One more deferral of the task: its record, updated and stored (a task is held by one worker at a time, so
    read-then-write is not raced). The returned record's `idle_s` is what the cap is checked against; `worker` (the
    deferring consumer) is added to its `refused_by`, which a refusal for a worker's own limit is checked against."""
    key = keys.batch_task_deferred(entry_id)
    now, mark = redis_now(client), progress_mark(root)
    record = Deferral.parse(client.get(key)) or Deferral(since=now, count=0, mark=mark, progress_at=now, last=now)
    if mark != record.mark:
        record.mark, record.progress_at = mark, now
    record.count += 1
    record.last = now
    record.reason = reason[:REASON_LIMIT]
    name = (worker or "")[:REFUSER_LIMIT]
    if name and name not in record.refused_by and len(record.refused_by) < REFUSERS_KEPT:
        record.refused_by.append(name)
    client.set(key, json.dumps(asdict(record)), ex=int(cap_s) + KEPT_PAST_CAP_S)
    return record


def forget_deferral(client: Any, keys: Keys, entry_id: str) -> None:
    """The task ran (or was given up on): its deferrals are over."""
    client.delete(keys.batch_task_deferred(entry_id))


def deferred_summary(client: Any, keys: Keys, entry_ids: Iterable[str], chunk: int = 1000) -> dict[str, Any]:
    """For a run's tasks on the stream: how many are deferred now, for how long at most (since the first deferral),
    the longest with no shard written in the run folder, and the latest reason (who holds the folder)."""
    ids = list(entry_ids)
    records: list[Deferral] = []
    for start in range(0, len(ids), chunk):
        values = client.mget([keys.batch_task_deferred(i) for i in ids[start:start + chunk]])
        records += [r for r in (Deferral.parse(v) for v in values if v is not None) if r is not None]
    if not records:
        return {"deferred": 0}
    now = redis_now(client)
    latest = max(records, key=lambda r: r.last)
    return {"deferred": len(records), "deferred_s": round(max(now - r.since for r in records), 1),
            "deferred_idle_s": round(max(now - r.progress_at for r in records), 1), "deferred_reason": latest.reason}
