"""Taking back submissions the API answered 503 for after their MULTI had been sent.

A socket timeout loses the reply, not the request: a Redis frozen (SIGSTOP, a long fork, a stalled disk)
runs the buffered MULTI when it wakes, and the job would be worked on although its client was told "not
queued" and never learnt its id — a phantom, and a duplicate once the client retries (even with an
Idempotency-Key: the claim is released with the 503). So the API sends WITHDRAW (`sigma/service/jobs.py`)
for that job id in the background, retrying until Redis answers: it cancels the job if the MULTI ran
first, or leaves a cancelled record that makes the late MULTI a no-op. A worker that already holds the job
finds it cancelled when it stores the result (FINISH keeps the first final status), so nothing reaches a
client twice; at worst the compute of one job is spent.
"""
from __future__ import annotations

import asyncio
import logging
import random
import time
from collections.abc import Callable
from typing import Any

import redis

from sigma.service.jobs import WITHDRAW, withdraw_args
from sigma.service.keys import Keys

log = logging.getLogger("sigma.api")
FIRST_DELAY_S = 0.1
MAX_DELAY_S = 2.0
MAX_PENDING = 1000      # an outage long enough to pile up more is logged per job instead of retried


class Withdrawals:
    """Background WITHDRAWs, one task each, retried with capped jittered backoff for up to `give_up_s`."""

    def __init__(self, r: Any, keys: Keys, record_ttl_s: int, give_up_s: float,
                 on_done: Callable[[], None] | None = None):
        self.r = r
        self.keys = keys
        self.record_ttl_s = record_ttl_s
        self.give_up_s = give_up_s
        self.on_done = on_done          # called once a WITHDRAW ran (the API counts them)
        self.script = r.register_script(WITHDRAW)
        self.tasks: dict[str, asyncio.Task] = {}

    def start(self, job_id: str, owner: str, annotator: str) -> None:
        if len(self.tasks) >= MAX_PENDING:
            log.error("not withdrawing job %s: %d withdrawals already wait for Redis; if Redis ran its submission, "
                      "it will be worked on although the client was answered 503", job_id, len(self.tasks))
            return
        task = asyncio.get_running_loop().create_task(self._run(job_id, owner, annotator),
                                                      name=f"withdraw-{job_id}")
        self.tasks[job_id] = task
        task.add_done_callback(lambda _: self.tasks.pop(job_id, None))

    async def _run(self, job_id: str, owner: str, annotator: str) -> None:
        keys, args = withdraw_args(self.keys, job_id, owner, annotator, self.record_ttl_s)
        deadline = time.monotonic() + self.give_up_s
        delay = FIRST_DELAY_S
        while True:
            try:
                before = await self.script(keys=keys, args=args)
                break
            except redis.RedisError as exc:
                if time.monotonic() + delay > deadline:
                    log.error("could not withdraw job %s within %.0f s (%s): if Redis ran its submission, "
                              "it will be worked on although the client was answered 503", job_id,
                              self.give_up_s, type(exc).__name__)
                    return
                await asyncio.sleep(delay * random.uniform(0.5, 1.0))
                delay = min(delay * 2, MAX_DELAY_S)
        status = before.decode() if isinstance(before, bytes) else (before or None)
        log.warning("withdrew job %s after a 503 (its status was %s)", job_id, status or "not queued")
        if self.on_done is not None:
            self.on_done()

    async def close(self) -> None:
        """At shutdown: the ones still waiting for Redis are named in the log, then cancelled."""
        pending = list(self.tasks.items())
        if pending:
            log.warning("shutting down with %d withdrawal(s) not yet done: %s", len(pending),
                        ", ".join(job_id for job_id, _ in pending))
        for _, task in pending:
            task.cancel()
        await asyncio.gather(*(task for _, task in pending), return_exceptions=True)
