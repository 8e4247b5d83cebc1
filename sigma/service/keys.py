"""Every Redis key and stream name the service and the batch fleet use, in one place.

All names start with `redis.key_prefix` (`P` below), so two deployments (or a test) can share one Redis
by choosing different prefixes, and the API, the annotation workers, `sigma batch submit` and
`sigma worker --batch` meet on the same names because they all ask this class:

    P:stream:<annotator>          the annotation work queue (consumer group `queue.group`); entries {"job": id}
    P:dead:<annotator>            its dead letters: the entry's fields + last error + delivery count
    P:job:<id>                    hash: status, annotator, owner, options, timestamps, attempts, last_error,
                                  result (JSON), error (JSON), completions
    P:blob:<id>:original|edited   the uploaded bytes, deleted when the job finishes
    P:done:<id>                   a list a waiting API request BLPOPs; one element per completion
    P:worker:<consumer>           a worker's heartbeat hash, with a TTL
    P:workers                     sorted set: the heartbeat keys, scored by when each expires (Redis' clock, ms),
                                  so readers find them without a SCAN of every key (`sigma.service.heartbeats`)
    P:idem:<owner>:<key>          idempotency key → job id (+ the request's digest)
    P:metrics:<annotator>         worker histograms (batch size, inference latency)
    P:readyz                      /readyz's write probe (10 s TTL): Redis answers PING when it refuses writes
    P:epoch                       a random value, no TTL: gone or changed, Redis lost its data (/readyz,
                                  `sigma.api.readiness`)
    P:batch:tasks                 the fleet's shard tasks {run_dir, shard, run_hash}
    P:batch:tasks:dead            their dead letters
    P:batch:tasks:worker:<c>      a batch worker's heartbeat
    P:batch:tasks:workers         sorted set: the batch heartbeat keys, as P:workers
    P:batch:tasks:submit:<token>  a submitted chunk of shard tasks (an hour: a retried call adds it once)
    P:batch:tasks:error:<id>      a shard task's last error (a day), for its dead letter
    P:batch:tasks:deferred:<id>   a shard task's deferrals (its run folder held by another process, or its run.json
                                  over a worker's run size limit): since when, how often, when a shard was last
                                  written there, the workers that deferred it (worker.max_defer_s + a day)
"""
from __future__ import annotations

from dataclasses import dataclass

DEFAULT_PREFIX = "sigma"


@dataclass(frozen=True)
class Keys:
    prefix: str = DEFAULT_PREFIX

    @property
    def p(self) -> str:
        return self.prefix

    # -- annotation jobs ------------------------------------------------------------------------
    def stream(self, annotator: str) -> str:
        return f"{self.p}:stream:{annotator}"

    def dead(self, annotator: str) -> str:
        return f"{self.p}:dead:{annotator}"

    def job(self, job_id: str) -> str:
        return f"{self.p}:job:{job_id}"

    def blob(self, job_id: str, part: str) -> str:
        return f"{self.p}:blob:{job_id}:{part}"

    def done(self, job_id: str) -> str:
        return f"{self.p}:done:{job_id}"

    def worker(self, consumer: str) -> str:
        return f"{self.p}:worker:{consumer}"

    def worker_pattern(self) -> str:
        return f"{self.p}:worker:*"

    def worker_registry(self) -> str:
        return f"{self.p}:workers"

    def idem(self, owner: str, key: str) -> str:
        # the owner's length first: `owner:key` alone made owner "a" with key "b:c" and owner "a:b" with key "c"
        # one record (one client saw the other's pending or committed request)
        return f"{self.p}:idem:{len(owner)}:{owner}:{key}"

    def metrics(self, annotator: str) -> str:
        return f"{self.p}:metrics:{annotator}"

    def readiness_probe(self) -> str:
        return f"{self.p}:readyz"

    def epoch(self) -> str:
        return f"{self.p}:epoch"

    # -- the batch fleet ------------------------------------------------------------------------
    def batch_tasks(self) -> str:
        return f"{self.p}:batch:tasks"

    def batch_dead(self) -> str:
        return f"{self.batch_tasks()}:dead"

    def batch_worker(self, consumer: str) -> str:
        return f"{self.batch_tasks()}:worker:{consumer}"

    def batch_submit_token(self, token: str) -> str:
        return f"{self.batch_tasks()}:submit:{token}"

    def batch_task_error(self, entry_id: str) -> str:
        return f"{self.batch_tasks()}:error:{entry_id}"

    def batch_task_deferred(self, entry_id: str) -> str:
        return f"{self.batch_tasks()}:deferred:{entry_id}"

    def batch_worker_pattern(self) -> str:
        return f"{self.batch_tasks()}:worker:*"

    def batch_worker_registry(self) -> str:
        return f"{self.batch_tasks()}:workers"
