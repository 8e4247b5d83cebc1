"""Faults with real processes: kill -9 a worker mid-batch, a poison job, Redis restarted under load."""
from __future__ import annotations

import json
import re
import signal
import socket
import time
import uuid

import pytest
from modelsavers import end_saver, stopped_saver
from redisproxy import GarblingProxy, ReplyLosingProxy
from servicekit import ServiceUnderTest, make_pair, running_service, wait_until

from sigma.service.jobs import (
    ENQUEUE,
    FINISH,
    WITHDRAW,
    enqueue_args,
    finish_args,
    job_fields,
    new_job_id,
    withdraw_args,
)
from sigma.service.keys import Keys

pytestmark = [pytest.mark.redis, pytest.mark.timeout(600)]  # a hang guard, not a race (60-240 s failed on load)


@pytest.fixture
def svc(redis_server, tmp_path):
    with running_service(redis_server, tmp_path) as s:
        yield s


def submit_many(svc, n: int, annotator: str, instruction: str | None = None) -> list[str]:
    ids = []
    for i in range(n):
        original, edited = make_pair(seed=100 + i)
        data = {"annotator": annotator}
        if instruction:
            data["instruction"] = instruction
        resp = svc.submit(original, edited, data)
        assert resp.status_code == 202, resp.text
        ids.append(resp.json()["id"])
    return ids


def assert_exactly_once(svc, ids: list[str], annotator: str) -> None:
    for job_id in ids:
        raw = svc.raw_job(job_id)
        assert raw["status"] == "done", (job_id, raw.get("error"), raw.get("last_error"))
        assert raw["completions"] == "1", (job_id, raw["completions"])
    r = svc.redis_server.client()
    stream = f"{svc.prefix}:stream:{annotator}"
    assert r.xlen(stream) == 0                                    # every entry acked and deleted
    assert r.xpending(stream, "sigma-workers")["pending"] == 0


def test_kill9_worker_mid_batch_loses_and_duplicates_nothing(svc):
    slow = ["worker.options={delay_ms: 600}", "worker.max_batch_size=4", "worker.max_wait_ms=50"]
    ids = submit_many(svc, 10, "slow-diff")
    victim = svc.start_worker("slow-diff", slow)
    running = wait_until(lambda: [j for j in ids if svc.raw_job(j).get("status") == "running"], 15,
                         "the first worker to hold a batch")
    victim.kill9()                                                # in the middle of predict (600 ms sleep)
    assert not victim.alive()
    r = svc.redis_server.client()
    held = r.xpending_range(f"{svc.prefix}:stream:slow-diff", "sigma-workers", "-", "+", 100,
                            consumername=victim.consumer)
    assert held, "the killed worker held no pending entries: the test did not kill it mid-batch"
    svc.start_worker("slow-diff", slow)
    svc.wait_jobs(ids, 60)
    assert_exactly_once(svc, ids, "slow-diff")
    attempts = {j: int(svc.raw_job(j)["attempts"]) for j in ids}
    redelivered = {j for j in ids if attempts[j] >= 2}
    assert set(running) <= redelivered, attempts                 # what it held was delivered again
    assert all(json.loads(svc.raw_job(j)["result"])["area"] > 0 for j in ids)


def test_poison_job_goes_to_dead_letter_after_max_deliveries(svc):
    worker = svc.start_worker("poison-diff", ["worker.max_batch_size=4", "worker.max_wait_ms=100"])
    original, edited = make_pair(seed=7)
    poison = svc.submit(original, edited, {"annotator": "poison-diff", "instruction": "poison the well"}).json()["id"]
    good = svc.submit(original, edited, {"annotator": "poison-diff", "instruction": "invert a box"}).json()["id"]
    views = svc.wait_jobs([poison, good], 30)
    assert views[good]["status"] == "done" and views[good]["attempts"] == 1   # not held back by its neighbour
    bad = views[poison]
    assert bad["status"] == "failed" and bad["attempts"] == 3
    assert bad["error"]["code"] == "dead_letter" and bad["error"]["deliveries"] == 3
    assert "model crashed on" in bad["error"]["message"]
    assert bad["error"]["last_error"]["code"] == "model_error"
    r = svc.redis_server.client()
    dead = r.xrange(f"{svc.prefix}:dead:poison-diff")
    assert len(dead) == 1
    fields = {k.decode(): v.decode() for k, v in dead[0][1].items()}
    assert fields["job"] == poison and fields["deliveries"] == "3" and "RuntimeError" in fields["error"]
    assert r.xlen(f"{svc.prefix}:stream:poison-diff") == 0
    sync = svc.submit(original, edited, {"annotator": "poison-diff", "instruction": "poison again"},
                      path="/v1/annotate")
    assert sync.status_code == 500 and sync.json()["error"]["code"] == "annotation_failed"
    # the job is marked failed before its entry moves to the dead-letter stream (a crash between the two
    # redelivers the entry, never loses the job's status), so the second dead letter may trail the answer
    wait_until(lambda: 'sigma_dead_letters{annotator="poison-diff"} 2.0'
               in svc.http.get("/metrics", headers=svc.headers()).text, 10, "the second dead letter")
    assert worker.alive()


def test_extras_no_json_can_hold_fail_the_job_once_and_answer_500_over_http(redis_server, tmp_path):
    """A plugin's extras that contain themselves: the worker retried the job as a model_error (RecursionError) and
    dead-lettered it after 3 deliveries. Now the job fails on its first delivery with `annotator_failed` naming the
    annotator and the place, and `/v1/annotate` answers it as the annotator's failure (500 `annotation_failed`, as
    a dead letter), not as the caller's input (a 422)."""
    with running_service(redis_server, tmp_path, ["api.annotators=[odd-keys]"]) as svc:
        worker = svc.start_worker("odd-keys", ["worker.max_batch_size=4", "worker.max_wait_ms=100"])
        original, edited = make_pair(seed=7)
        sync = svc.submit(original, edited, {"annotator": "odd-keys", "instruction": "a loop"}, path="/v1/annotate")
        assert sync.status_code == 500, sync.text
        error = sync.json()["error"]
        assert error["code"] == "annotation_failed", error
        assert "a value that contains itself (at loop.self)" in error["message"], error
        view = svc.wait_jobs([error["job_id"]], 10)[error["job_id"]]
        assert view["status"] == "failed" and view["attempts"] == 1, view
        assert view["error"]["code"] == "annotator_failed", view
        assert "annotator 'odd-keys'" in view["error"]["message"], view
        good = svc.submit(original, edited, {"annotator": "odd-keys", "instruction": "an odd one"},
                          path="/v1/annotate")
        assert good.status_code == 200 and good.json()["result"]["ints"] == [1, 9, 10], good.text
        assert worker.alive()


def _names_no_server_internals(text: str, folder, pid: int) -> None:
    """`text` (an answer) names neither the folder, nor any absolute path under the test's tmp, nor the holder's pid
    or host name."""
    assert str(folder) not in text and str(folder.parent) not in text, text
    assert re.search(rf"\b{pid}\b", text) is None and socket.gethostname() not in text, text
    assert re.search(r"pid \d", text) is None, text


def _waiting_job_failed_with(svc, redis_server, exc: Exception | dict):
    """(the answer, the job id) of a `/v1/annotate` call waiting on its job, which no worker runs: the job is failed
    with `exc` as a worker's load would record it (`error_record`; a dict: the record itself, as a worker wrote it),
    the way a real failure reaches the answer."""
    from concurrent.futures import ThreadPoolExecutor

    from sigma.service.annotation import error_record
    from sigma.service.jobs import JobStore

    record = exc if isinstance(exc, dict) else error_record(exc)

    with ThreadPoolExecutor(1) as pool:
        original, edited = make_pair(seed=7)
        waiting = pool.submit(svc.submit, original, edited, {"annotator": "pixel-diff", "wait": "30"},
                              path="/v1/annotate")
        r = redis_server.client()
        [(_, fields)] = wait_until(lambda: r.xrange(f"{svc.prefix}:stream:pixel-diff"), 30, "the job queued")
        job_id = fields[b"job"].decode()
        assert JobStore(r, Keys(svc.prefix), 600).finish(job_id, "failed", "a-worker", error=record) == 1
        return waiting.result(timeout=60), job_id


def test_a_jobs_error_naming_a_held_model_folder_is_answered_without_its_pid_host_or_path(redis_server, tmp_path,
                                                                                         monkeypatch):
    """A model a plugin loads inside the worker, its folder held by a real saver stopped mid-commit: the load fails
    `weights_busy` after `$SIGMA_MODEL_LOCK_WAIT_S`, naming the folder and the saver's pid (`kill -CONT N`), and the
    job is dead-lettered with it. `GET /v1/jobs/{id}` and `/v1/annotate` passed that message on whole (in `message`,
    `trace` and `last_error`): any caller learnt the server's folders and processes, and the synchronous 500 had no
    `Retry-After` for a hold that ends by itself. Now every job error an answer carries is scrubbed as a library
    error's (`another process`, `<server path>`, the remedy for a shell on the server — `fg`, `kill -CONT PID` —
    said `try again later`), its codes unchanged, and the 500 has `Retry-After: 5`."""
    monkeypatch.setenv("SIGMA_MODEL_LOCK_WAIT_S", "1")             # the worker's wait, inherited by its process
    folder = tmp_path / "held" / "model"
    saver = stopped_saver(folder)
    try:
        with running_service(redis_server, tmp_path, ["api.annotators=[weights-diff]"]) as svc:
            svc.start_worker("weights-diff", [f"worker.options={{weights: {folder}}}", "worker.max_batch_size=1",
                                              "worker.max_wait_ms=50"])
            original, edited = make_pair(seed=7)
            sync = svc.submit(original, edited, {"annotator": "weights-diff", "instruction": "weights held",
                                                 "wait": "60"}, path="/v1/annotate")
            assert sync.status_code == 500, sync.text
            error = sync.json()["error"]
            assert error["code"] == "annotation_failed" and sync.headers.get("Retry-After") == "5", sync.headers
            assert "[weights_busy] WeightsBusyError: <server path>: cannot load the model" in error["message"], error
            assert "another process (saving)" in error["message"] and "; try again later" in error["message"], error
            assert "kill -CONT" not in sync.text and "`fg`" not in sync.text, error
            _names_no_server_internals(sync.text, folder, saver.pid)
            resp = svc.http.get(f"/v1/jobs/{error['job_id']}", headers=svc.headers())
            assert resp.status_code == 200 and "Retry-After" not in resp.headers, resp.headers
            view = resp.json()
            assert view["status"] == "failed" and view["error"]["code"] == "dead_letter", view
            assert view["error"]["last_error"]["code"] == "weights_busy", view
            assert "; try again later" in view["error"]["last_error"]["trace"], view
            assert "kill -CONT" not in resp.text and "`fg`" not in resp.text and "LOCK_WAIT_S" not in resp.text, view
            assert view["last_error"]["code"] == "weights_busy", view
            _names_no_server_internals(json.dumps([view["error"], view["last_error"]]), folder, saver.pid)
            assert str(folder) not in resp.text and socket.gethostname() not in resp.text, resp.text
    finally:
        end_saver(saver)


def test_a_job_failed_weights_busy_is_answered_409_with_retry_after_and_no_holder(redis_server, tmp_path,
                                                                                  monkeypatch):
    """A job whose recorded error is `weights_busy` itself (the record a worker writes, `error_record`, of a real
    load of a folder a stopped saver holds): `/v1/annotate` answered it 409 as the code's status says, but with the
    message whole (the folder, `kill -CONT <pid>`) and without `Retry-After`. Now the message is scrubbed, the code
    kept, and the 409 carries `Retry-After: 5`, as every other answer of a folder another process holds."""
    from sigma.errors import WeightsBusyError
    from sigma.models import load_model

    monkeypatch.setenv("SIGMA_MODEL_LOCK_WAIT_S", "1")
    folder = tmp_path / "held" / "model"
    saver = stopped_saver(folder)
    try:
        with pytest.raises(WeightsBusyError) as held:
            load_model(folder)
        assert str(folder) in str(held.value) and f"kill -CONT {saver.pid}" in str(held.value), held.value
        with running_service(redis_server, tmp_path) as svc:
            resp, job_id = _waiting_job_failed_with(svc, redis_server, held.value)
            assert resp.status_code == 409 and resp.headers.get("Retry-After") == "5", (resp.headers, resp.text)
            error = resp.json()["error"]
            assert error["code"] == "weights_busy" and error["job_id"] == job_id, error
            assert error["message"].startswith("WeightsBusyError: <server path>: cannot load the model"), error
            assert "another process (saving)" in error["message"] and "; try again later" in error["message"], error
            assert "kill -CONT" not in resp.text and "`fg`" not in resp.text, error
            _names_no_server_internals(resp.text, folder, saver.pid)
            view = svc.job(job_id)
            assert view["error"]["code"] == "weights_busy" and view["error"]["message"] == error["message"], view
            _names_no_server_internals(json.dumps(view["error"]), folder, saver.pid)
    finally:
        end_saver(saver)


def test_a_job_error_naming_a_server_folder_with_a_space_is_answered_without_any_of_it(redis_server, tmp_path):
    """A job failed on a real load of a model folder whose names hold spaces (`/srv/operator models/my model`, an
    operator's choice): the worker records `no SigmaNet config at /srv/operator models/my model/config.json (...)`,
    and `/v1/annotate` and `GET /v1/jobs/{id}` answered `<server path> models/my model/config.json`: the path was
    hidden only to its first space. Now the whole path is `<server path>`, over real HTTP, code and status kept."""
    from sigma.errors import WeightsNotFoundError
    from sigma.models import load_model

    folder = tmp_path / "operator models" / "my model"
    folder.mkdir(parents=True)
    with pytest.raises(WeightsNotFoundError) as missing:
        load_model(folder)
    assert f"{folder}/config.json" in str(missing.value), missing.value
    with running_service(redis_server, tmp_path) as svc:
        resp, job_id = _waiting_job_failed_with(svc, redis_server, missing.value)
        error = resp.json()["error"]
        assert resp.status_code == 422 and error["code"] == "weights_not_found", resp.text
        assert error["message"].startswith("WeightsNotFoundError: no SigmaNet config at <server path> ("), error
        view = svc.job(job_id)
        assert view["error"]["message"] == error["message"], view
        for text in (resp.text, json.dumps(view)):
            for leak in (str(tmp_path), "operator", "models/", "my model", "model/config.json"):
                assert leak not in text, (leak, text)


def test_extras_keys_that_become_one_json_key_fail_the_job_not_merge_over_http(redis_server, tmp_path):
    """A plugin's extras `{1: "a", "1": "b"}` were stored as `{"1": "b"}`: both keys are the JSON key "1", the later
    replaced the other, and the caller got a 200 with data silently lost. Now the job fails on its first delivery as
    `annotator_failed` naming both keys, and `/v1/annotate` answers 500 `annotation_failed`, the path every extras
    no JSON holds takes (the annotator's output, not the caller's request, is at fault: never a 4xx)."""
    with running_service(redis_server, tmp_path, ["api.annotators=[odd-keys]"]) as svc:
        worker = svc.start_worker("odd-keys", ["worker.max_wait_ms=100"])
        original, edited = make_pair(seed=7)
        sync = svc.submit(original, edited, {"annotator": "odd-keys", "instruction": "a clash"}, path="/v1/annotate")
        assert sync.status_code == 500, sync.text
        error = sync.json()["error"]
        assert error["code"] == "annotation_failed", error
        assert """keys 1 and '1' are both the JSON key "1" (at clash)""" in error["message"], error
        view = svc.wait_jobs([error["job_id"]], 10)[error["job_id"]]
        assert (view["status"], view["attempts"], view["error"]["code"]) == ("failed", 1, "annotator_failed"), view
        good = svc.submit(original, edited, {"annotator": "odd-keys", "instruction": "remove it"}, path="/v1/annotate")
        assert good.status_code == 200 and "clash" not in good.json()["result"], good.text
        assert worker.alive()


def test_the_extras_nesting_limit_is_the_workers_limits_max_json_depth(redis_server, tmp_path):
    """The depth past which a plugin's extras cannot be written was the constant 32 in every worker. It is now the
    service setting limits.max_json_depth: the same extras (dicts 12 levels deep) are a result under the default and
    the job's `annotator_failed` (500 `annotation_failed`, first delivery) from a worker started with 8."""
    with running_service(redis_server, tmp_path, ["api.annotators=[odd-keys]"]) as svc:
        original, edited = make_pair(seed=7)
        body = {"annotator": "odd-keys", "instruction": "a nested one"}
        default = svc.start_worker("odd-keys", ["worker.max_wait_ms=100"])
        done = svc.submit(original, edited, body, path="/v1/annotate")
        assert done.status_code == 200 and "nested_12" in done.json()["result"], done.text
        assert default.stop() == 0
        svc.start_worker("odd-keys", ["worker.max_wait_ms=100", "limits.max_json_depth=8"])
        low = svc.submit(original, edited, body, path="/v1/annotate")
        assert low.status_code == 500, low.text
        error = low.json()["error"]
        assert error["code"] == "annotation_failed", error
        assert "a value nested deeper than 8 levels (at nested_12.n.n.n.n.n.n.n; max_json_depth)" in error["message"]
        view = svc.wait_jobs([error["job_id"]], 10)[error["job_id"]]
        assert (view["status"], view["attempts"], view["error"]["code"]) == ("failed", 1, "annotator_failed"), view


def test_redis_restart_with_queued_jobs_and_readyz(svc):
    worker = svc.start_worker("pixel-diff")
    wait_until(lambda: svc.http.get("/readyz").status_code == 200, 30, "ready")
    worker.signal(signal.SIGSTOP)                                 # jobs pile up while it is frozen
    ids = submit_many(svc, 5, "pixel-diff")
    svc.redis_server.stop()                                       # SIGTERM: AOF is fsynced ("always")
    t0 = time.monotonic()
    down = svc.http.get("/readyz")
    assert down.status_code == 503 and time.monotonic() - t0 < 5
    assert down.json()["checks"]["redis"]["ok"] is False
    original, edited = make_pair()
    refused = svc.submit(original, edited)
    assert refused.status_code == 503 and refused.json()["error"]["code"] == "queue_unavailable"
    svc.redis_server.start()
    worker.signal(signal.SIGCONT)
    wait_until(lambda: svc.http.get("/readyz").status_code == 200, 20, "/readyz to recover by itself")
    svc.wait_jobs(ids, 30)
    assert_exactly_once(svc, ids, "pixel-diff")
    after = svc.submit(original, edited, path="/v1/annotate")
    assert after.status_code == 200 and after.json()["status"] == "done"
    assert worker.alive()


def test_sigterm_finishes_the_batch_acks_and_exits_0(svc):
    worker = svc.start_worker("slow-diff", ["worker.options={delay_ms: 700}", "worker.max_batch_size=4"])
    ids = submit_many(svc, 3, "slow-diff")
    wait_until(lambda: any(svc.raw_job(j).get("status") == "running" for j in ids), 15, "a batch in progress")
    t0 = time.monotonic()
    assert worker.stop(timeout=15) == 0
    assert time.monotonic() - t0 < 10
    finished = [j for j in ids if svc.raw_job(j)["status"] == "done"]
    assert finished, "the batch in progress was not finished before exit"
    r = svc.redis_server.client()
    assert r.xpending(f"{svc.prefix}:stream:slow-diff", "sigma-workers")["pending"] == 0   # nothing held
    assert not r.exists(f"{svc.prefix}:worker:{worker.consumer}")                         # heartbeat removed
    svc.start_worker("slow-diff", ["worker.options={delay_ms: 0}"])
    svc.wait_jobs(ids, 30)
    assert_exactly_once(svc, ids, "slow-diff")


def test_a_503_whose_multi_ran_is_withdrawn_and_a_retry_is_the_only_job(redis_server, tmp_path):
    """Redis runs the submission but its reply is lost (a proxy drops it: what a frozen Redis does to a client
    with a socket timeout): the client gets 503, and the job that Redis did queue is taken back — cancelled
    with `withdrawn`, never worked on — so the client's retry (with the same Idempotency-Key) is the only job."""
    proxy = ReplyLosingProxy(redis_server.port)
    s = ServiceUnderTest(redis_server, tmp_path, ["redis.socket_timeout_s=1"])
    try:
        s.env["SIGMA_REDIS_URL"] = proxy.url            # the API talks through the proxy, the worker directly
        s.start_api()
        s.env["SIGMA_REDIS_URL"] = redis_server.url
        r = redis_server.client()
        original, edited = make_pair(seed=7)
        proxy.lose_next_exec_replies(2)                 # each submission's MULTI (a timeout is not retried)
        plain = s.submit(original, edited, {"annotator": "pixel-diff"})
        keyed = s.submit(original, edited, {"annotator": "pixel-diff"}, headers={"Idempotency-Key": "k-1"})
        for resp in (plain, keyed):
            assert resp.status_code == 503, resp.text
            assert resp.json()["error"]["code"] == "queue_unavailable"
        assert proxy.lost == 2
        stream = f"{s.prefix}:stream:pixel-diff"
        assert r.xlen(stream) == 2                      # Redis did queue both (once each: the retry is a no-op)

        def jobs() -> dict[str, dict[str, str]]:
            return {k.decode().rsplit(":", 1)[1]: {a.decode(): b.decode() for a, b in r.hgetall(k).items()}
                    for k in r.scan_iter(match=f"{s.prefix}:job:*")}
        withdrawn = wait_until(lambda: (lambda j: j if len(j) == 2 and all(h["status"] == "cancelled"
                                                                             for h in j.values()) else None)(jobs()),
                               15, "both submissions withdrawn")
        for h in withdrawn.values():
            assert json.loads(h["error"])["code"] == "withdrawn" and h["completions"] == "0", h
        assert r.keys(f"{s.prefix}:blob:*") == []        # their images freed at once
        s.start_worker("pixel-diff")                     # acknowledges both entries without working on them
        retry = s.submit(original, edited, {"annotator": "pixel-diff"}, headers={"Idempotency-Key": "k-1"})
        assert retry.status_code == 202, retry.text
        done = s.wait_jobs([retry.json()["id"]], 30)
        assert done[retry.json()["id"]]["status"] == "done"
        wait_until(lambda: r.xlen(stream) == 0, 15, "every entry acknowledged")
        after = jobs()
        assert {j for j, h in after.items() if h["status"] == "done"} == {retry.json()["id"]}
        assert all(after[j]["status"] == "cancelled" and after[j]["completions"] == "0" for j in withdrawn)
        metrics = s.http.get("/metrics", headers=s.headers("metrics")).text
        assert "sigma_jobs_withdrawn_total 2.0" in metrics
    finally:
        s.close()
        proxy.close()


def enqueue_in_multi(r, keys: Keys, job_id: str) -> object:
    """What the API sends for a submission (api/service.py `_enqueue`): the two image SETs and ENQUEUE in one
    MULTI; ENQUEUE's reply."""
    fields = job_fields(job_id, "pixel-diff", "user", None, None, ["rle"])
    ekeys, eargs = enqueue_args(keys, job_id, fields, 100, 60)
    pipe = r.pipeline(transaction=True)
    pipe.set(keys.blob(job_id, "original"), b"o", ex=60)
    pipe.set(keys.blob(job_id, "edited"), b"e", ex=60)
    r.register_script(ENQUEUE)(keys=ekeys, args=eargs, client=pipe)
    return pipe.execute()[-1]


def test_a_withdrawal_that_lands_first_makes_the_late_multi_a_no_op(redis_server):
    """The other order: the WITHDRAW reaches Redis before the submission's MULTI (two connections); the MULTI
    then queues nothing and frees its images, and the cancelled record stays."""
    r = redis_server.client()
    keys, job_id = Keys(f"t{uuid.uuid4().hex[:10]}"), new_job_id()
    wkeys, wargs = withdraw_args(keys, job_id, "user", "pixel-diff", 60)
    assert r.register_script(WITHDRAW)(keys=wkeys, args=wargs) is None            # nothing there yet
    assert enqueue_in_multi(r, keys, job_id) is None                              # not queued
    assert r.xlen(keys.stream("pixel-diff")) == 0
    assert not r.exists(keys.blob(job_id, "original"), keys.blob(job_id, "edited"))
    assert r.hget(keys.job(job_id), "status") == b"cancelled"
    assert r.register_script(WITHDRAW)(keys=wkeys, args=wargs) == b"cancelled"    # again: left alone


def test_the_client_librarys_retry_of_a_multi_queues_the_job_once(redis_server):
    """redis-py sends a transaction again after a lost reply: the second ENQUEUE of one job id adds no second
    stream entry, and one that comes after the job finished keeps no images."""
    r = redis_server.client()
    keys, job_id = Keys(f"t{uuid.uuid4().hex[:10]}"), new_job_id()

    def send() -> object:
        return enqueue_in_multi(r, keys, job_id)
    assert send().count(b"-") == 1                                 # a stream id
    assert send() == b"again" and r.xlen(keys.stream("pixel-diff")) == 1
    assert r.exists(keys.blob(job_id, "original"), keys.blob(job_id, "edited")) == 2   # queued: still needed
    fkeys, fargs = finish_args(keys, job_id, "done", {"ok": True}, None, 60, "w")
    assert r.register_script(FINISH)(keys=fkeys, args=fargs) == 1
    assert send() == b"again" and r.xlen(keys.stream("pixel-diff")) == 1
    assert not r.exists(keys.blob(job_id, "original"), keys.blob(job_id, "edited"))
    assert r.hget(keys.job(job_id), "status") == b"done"


def test_an_idempotency_claim_sent_again_is_still_the_requests_own(redis_server):
    """A lost reply to CLAIM makes redis-py send it again: the request that holds the claim must not be told
    409 `idempotency_key_in_use` about itself (for the claim's 30 s), while another request still is."""
    import asyncio

    import redis.asyncio as aredis

    from sigma.api.idempotency import Idempotency

    async def run() -> list[tuple[str, str]]:
        client = aredis.Redis(host="127.0.0.1", port=redis_server.port)
        try:
            idem = Idempotency(client, "t:job:", 60)
            key = f"t{uuid.uuid4().hex[:10]}:idem:user:k"
            return [await idem.claim(key, "digest-a", "job-1"), await idem.claim(key, "digest-a", "job-1"),
                    await idem.claim(key, "digest-a", "job-2"), await idem.claim(key, "digest-b", "job-3")]
        finally:
            await client.aclose()
    assert asyncio.run(run()) == [("new", "job-1"), ("new", "job-1"), ("pending", "job-1"),
                                  ("mismatch", "job-1")]


def test_annotate_whose_wait_meets_a_redis_failure_answers_202_with_the_queued_job(redis_server, tmp_path):
    """/v1/annotate queues the job, then waits for it. Redis frozen or killed during that wait must not become
    503 `queue_unavailable` (documented as "not queued": the client submits again while the first job runs
    unseen), nor hold the client past the wait plus the socket timeout: the answer is 202 with the job's id."""
    import threading

    with running_service(redis_server, tmp_path, ["redis.socket_timeout_s=1"]) as s:
        r, stream = redis_server.client(), f"{s.prefix}:stream:pixel-diff"
        answers: list[tuple[float, object]] = []

        def annotate_while(fault, recover, wait_s: str, queued: int) -> tuple[float, object]:
            original, edited = make_pair(seed=queued)

            def call() -> None:
                t0 = time.monotonic()
                resp = s.submit(original, edited, {"wait": wait_s}, path="/v1/annotate")
                answers.append((time.monotonic() - t0, resp))
            thread = threading.Thread(target=call)
            thread.start()
            wait_until(lambda: r.xlen(stream) == queued, 30, "the job queued")   # no worker: it stays there
            try:
                fault()
                thread.join(40)
            finally:
                recover()
            thread.join(30)
            return answers[-1]

        # frozen until answered, 40 s at most: answered once the 2 s wait and the 1 s socket timeout are over, not
        # after the thaw (it was frozen 9 s against 6 allowed: a loaded machine's upload and queueing came close)
        elapsed, frozen = annotate_while(redis_server.freeze, redis_server.thaw, "2", 1)
        assert frozen.status_code == 202, frozen.text
        assert elapsed < 30, elapsed
        # killed (SIGTERM: the AOF keeps the job): the job is queued, so not a 503
        _, killed = annotate_while(lambda: (time.sleep(0.3), redis_server.stop()), redis_server.start, "5", 2)
        assert killed.status_code == 202, killed.text
        ids = [resp.json()["id"] for _, resp in answers]
        assert {resp.headers["Location"] for _, resp in answers} == {f"/v1/jobs/{j}" for j in ids}
        s.start_worker("pixel-diff")
        s.wait_jobs(ids, 30)
        assert_exactly_once(s, ids, "pixel-diff")          # the two jobs the client holds ids of: no others
        assert len(list(r.scan_iter(match=f"{s.prefix}:job:*"))) == 2


def test_a_503_after_the_multi_but_before_the_idempotency_commit_is_withdrawn_too(redis_server, tmp_path):
    """The MULTI queued the job and answered, then Redis failed on the idempotency commit (its reply lost): the
    client gets 503, so that job is taken back (`withdrawn`, never worked on),
    and a retry with the same key is the only job."""
    import hashlib

    from sigma.api.idempotency import COMMIT

    proxy = ReplyLosingProxy(redis_server.port, marker=hashlib.sha1(COMMIT.encode()).hexdigest().encode())
    s = ServiceUnderTest(redis_server, tmp_path, ["redis.socket_timeout_s=1"])
    try:
        s.env["SIGMA_REDIS_URL"] = proxy.url            # the API talks through the proxy, the worker directly
        s.start_api()
        s.env["SIGMA_REDIS_URL"] = redis_server.url
        r, stream = redis_server.client(), f"{s.prefix}:stream:pixel-diff"
        original, edited = make_pair(seed=11)
        warm = s.submit(original, edited, headers={"Idempotency-Key": "warm"})     # COMMIT's script is loaded
        assert warm.status_code == 202, warm.text
        proxy.lose_next_exec_replies(1)
        lost = s.submit(original, edited, headers={"Idempotency-Key": "k-2"})
        assert lost.status_code == 503 and lost.json()["error"]["code"] == "queue_unavailable", lost.text
        assert proxy.lost == 1 and r.xlen(stream) == 2                          # Redis did queue it

        def withdrawn() -> list[str]:
            jobs = {k.decode().rsplit(":", 1)[1]: r.hgetall(k) for k in r.scan_iter(match=f"{s.prefix}:job:*")}
            return [j for j, h in jobs.items() if h.get(b"status") == b"cancelled"
                    and json.loads(h[b"error"])["code"] == "withdrawn"]
        [phantom] = wait_until(withdrawn, 15, "the queued job withdrawn")
        retry = s.submit(original, edited, headers={"Idempotency-Key": "k-2"})
        assert retry.status_code == 202, retry.text
        s.start_worker("pixel-diff")
        done = s.wait_jobs([warm.json()["id"], retry.json()["id"]], 30)
        assert all(view["status"] == "done" for view in done.values())
        wait_until(lambda: r.xlen(stream) == 0, 15, "every entry acknowledged")
        assert r.hget(f"{s.prefix}:job:{phantom}", "status") == b"cancelled"
        assert r.hget(f"{s.prefix}:job:{phantom}", "completions") == b"0"
    finally:
        s.close()
        proxy.close()


def test_a_frozen_redis_is_answered_within_one_socket_timeout(redis_server, tmp_path):
    """Redis frozen (SIGSTOP): every API call that needs it answers after `redis.socket_timeout_s`, not several
    (the client retried a timeout: health-check PING, command, and again on a new connection: 4x). /metrics says
    `sigma_redis_up 0` before a scraper's timeout, /readyz says why, a submission is a 503."""
    with running_service(redis_server, tmp_path, ["redis.socket_timeout_s=1.5"]) as s:
        original, edited = make_pair(seed=3)
        assert s.submit(original, edited).status_code == 202
        time.sleep(5.5)                             # pooled connections idle past the health-check interval
        calls = {"readyz": lambda: s.http.get("/readyz"),
                 "metrics": lambda: s.http.get("/metrics", headers=s.headers("metrics")),
                 "job": lambda: s.http.get("/v1/jobs/" + "0" * 32, headers=s.headers()),
                 "submit": lambda: s.submit(original, edited)}
        answers = {}
        redis_server.freeze()
        try:
            for name, call in calls.items():
                t0 = time.monotonic()
                resp = call()
                answers[name] = (round(time.monotonic() - t0, 2), resp.status_code, resp.text)
        finally:
            redis_server.thaw()
        assert all(elapsed < 2.7 for elapsed, _, _ in answers.values()), answers
        assert answers["readyz"][1] == 503 and "not answering (timeout)" in answers["readyz"][2]
        assert answers["metrics"][1] == 200 and "sigma_redis_up 0.0" in answers["metrics"][2]
        assert answers["job"][1] == answers["submit"][1] == 503 and "queue_unavailable" in answers["submit"][2]
        wait_until(lambda: s.http.get("/readyz").json()["checks"]["redis"]["ok"], 30, "redis ok again")


def test_a_cancel_that_loses_the_race_with_the_worker_says_the_job_is_done(redis_server, tmp_path):
    """DELETE reads a running job, then sends the cancel (FINISH), which leaves a job the worker finished in
    between alone. The answer said `cancelled` all the same, for a job that is done (its result kept)."""
    import hashlib

    proxy = ReplyLosingProxy(redis_server.port, marker=hashlib.sha1(FINISH.encode()).hexdigest().encode())
    s = ServiceUnderTest(redis_server, tmp_path)
    try:
        s.env["SIGMA_REDIS_URL"] = proxy.url            # the API talks through the proxy, the worker directly
        s.start_api()
        s.env["SIGMA_REDIS_URL"] = redis_server.url
        s.start_worker("slow-diff", ["worker.options={delay_ms: 800}"])
        [job_id] = submit_many(s, 1, "slow-diff")
        wait_until(lambda: s.raw_job(job_id).get("status") == "running", 15, "the job running")
        proxy.hold_next(3.0)                            # the cancel reaches Redis after the worker's result
        resp = s.http.delete(f"/v1/jobs/{job_id}", headers=s.headers())
        assert resp.status_code == 200, resp.text
        assert s.raw_job(job_id)["status"] == "done"
        assert resp.json() == {"id": job_id, "status": "done", "deleted": False}
        assert s.job(job_id)["result"] is not None
    finally:
        s.close()
        proxy.close()


# The worker's own decode (`Predictor._decode_one`, what a worker runs on a job's images) in a child whose RLIMIT_AS
# leaves 60 MB above what its libraries map: the job error record it makes, as JSON on stdout.
DECODE_CHILD = """
import json, resource, sys
import numpy, PIL.Image, cv2
from sigma.service.predictor import Predictor
import sigma.io, sigma.io.images, sigma.io.pairs
data = open(sys.argv[1], "rb").read()
predictor = Predictor("pixel-diff", decode_threads=1)
size = next(int(line.split()[1]) * 1024 for line in open("/proc/self/status") if line.startswith("VmSize:"))
resource.setrlimit(resource.RLIMIT_AS, (size + 60 * 2**20, resource.getrlimit(resource.RLIMIT_AS)[1]))
_, _, error = predictor._decode_one(({"original": data}, "original"))
print(json.dumps(error))
"""


def test_a_job_the_workers_memory_could_not_decode_is_a_503_with_retry_after_not_a_422(redis_server, tmp_path):
    """A good 36 Mpx upload the worker's machine had no memory to decode (RLIMIT_AS, a real decode in a child): the
    job failed `image_unreadable` (`unreadable or truncated image (MemoryError)`) and `/v1/annotate` answered 422,
    telling the client its image was bad. Now the job fails `out_of_memory` and the answer is 503 with
    `Retry-After: 5`. (A whole worker under RLIMIT_AS is not started: its Redis client and threads fail first, at
    random; the real decode's record is written as a worker writes it, and the real API answers it.)"""
    import os
    import subprocess
    import sys

    from test_cli_memory_limit import big_pair

    original, _ = big_pair(tmp_path)
    child = subprocess.run([sys.executable, "-c", DECODE_CHILD, original], capture_output=True, text=True,
                           timeout=300, check=False, env={**os.environ, "MALLOC_ARENA_MAX": "1"})
    assert child.returncode == 0, child.stderr[-3000:]
    error = json.loads(child.stdout)
    assert error["code"] == "out_of_memory", error
    with running_service(redis_server, tmp_path) as svc:
        resp, _ = _waiting_job_failed_with(svc, redis_server, error)
        assert resp.status_code == 503 and resp.headers.get("Retry-After") == "5", (resp.status_code, resp.text)
        assert resp.json()["error"]["code"] == "out_of_memory", resp.text


# A worker's predictor in a child whose threads cannot start: a 2 GB default thread stack (RLIMIT_STACK, what
# `ulimit -s 2000000` sets; glibc sizes a new thread's stack by it) under a 2 GB RLIMIT_AS, as root's `ulimit -u`
# cannot be. Its first batch starts the decode pool's threads (two batches: the second decodes as the first did);
# the model's own thread start is met too (a `threading.Thread` as a model would start one). OpenBLAS is kept to one
# thread: it raises SIGINT when it cannot start its own.
THREADS_CHILD = """
import io, json, logging, threading
import numpy as np
from PIL import Image
from sigma.service.annotation import error_record
from sigma.service.predictor import Predictor

def png(a):
    out = io.BytesIO()
    Image.fromarray(a).save(out, "PNG")
    return out.getvalue()

a = np.zeros((32, 32, 3), np.uint8)
b = a.copy()
b[4:12, 4:12] = 255
logging.basicConfig(level=logging.INFO)
predictor = Predictor("pixel-diff", decode_threads=2)
predictor.setup()
job = {"id": "j", "original": png(a), "edited": png(b), "instruction": None}
decode = [predictor([job, job]), predictor([job])]
try:
    threading.Thread(target=print).start()
    model = None
except RuntimeError as exc:
    model = error_record(exc)
print(json.dumps({"decode": [[r["ok"] and r["result"]["area"] for r in batch] for batch in decode], "model": model}))
"""


def _no_threads() -> None:
    import resource

    resource.setrlimit(resource.RLIMIT_STACK, (2_000_000 * 1024, resource.getrlimit(resource.RLIMIT_STACK)[1]))
    # below one thread's stack: no thread can ever start, whatever else is mapped or whichever thread has ended
    resource.setrlimit(resource.RLIMIT_AS, (2_000_000_000, resource.getrlimit(resource.RLIMIT_AS)[1]))


def test_a_job_whose_worker_can_start_no_thread_is_decoded_in_its_thread_or_out_of_threads(redis_server, tmp_path):
    """A worker whose decode pool could not start its threads (`can't start new thread`): the RuntimeError left the
    predictor, the job was recorded `model_error` and redelivered, and `/v1/annotate` answered 500 blaming the model.
    Then each job of the batch failed `out_of_threads`, jobs the worker could do without the pool. Now the worker
    decodes in its own thread (said once) and the jobs are done; a thread the model cannot start is `out_of_threads`,
    answered 503 with `Retry-After: 5`, as `out_of_memory`: the machine's shortage, not the model's nor the upload's."""
    import os
    import subprocess
    import sys

    child = subprocess.run([sys.executable, "-c", THREADS_CHILD], capture_output=True, text=True, timeout=300,
                           check=False, preexec_fn=_no_threads,
                           env={**os.environ, "OPENBLAS_NUM_THREADS": "1", "OMP_NUM_THREADS": "1"})
    assert child.returncode == 0, child.stderr[-3000:]
    said = json.loads(child.stdout.strip().splitlines()[-1])
    assert said["decode"] == [[64, 64], [64]], said
    assert child.stderr.count("would not start the image decode pool's 2 threads") == 1, child.stderr[-3000:]
    assert said["model"] is not None and said["model"]["code"] == "out_of_threads", said
    with running_service(redis_server, tmp_path) as svc:
        resp, _ = _waiting_job_failed_with(svc, redis_server, said["model"])
        assert resp.status_code == 503 and resp.headers.get("Retry-After") == "5", (resp.status_code, resp.text)
        assert resp.json()["error"]["code"] == "out_of_threads", resp.text


def _big_thread_stacks() -> None:
    """A worker whose every thread reserves a 2 GB stack (`ulimit -s 2000000`; glibc sizes new threads by the limit
    it read at start): a RLIMIT_AS set on it later (prlimit, from outside) below VmSize + one stack refuses every new
    thread while leaving its heap room, and lifting that limit lets threads start again."""
    import resource

    resource.setrlimit(resource.RLIMIT_STACK, (2_000_000 * 1024, resource.getrlimit(resource.RLIMIT_STACK)[1]))


def _vm_size(pid: int) -> int:
    with open(f"/proc/{pid}/status") as fh:
        return next(int(line.split()[1]) * 1024 for line in fh if line.startswith("VmSize:"))


def test_a_workers_decode_pool_refused_by_a_thread_limit_comes_back_once_the_limit_is_lifted(redis_server, tmp_path):
    """A real worker whose decode pool the machine would not start (a RLIMIT_AS under one thread stack, set on the
    running worker): the pool was given up for the worker's life, so after the limit was lifted it still decoded on
    one thread until a person restarted it. Now it tries the pool again after `worker.decode_pool_retry_s` (a try
    still refused costs nothing: the jobs are done, each once), and once the limit is gone the pool starts again,
    said on the log, in the heartbeat (`decode_threads`, `decode_pool_refusals`) and in /metrics."""
    import resource

    with running_service(redis_server, tmp_path) as svc:
        worker = svc.start_worker(extra=["worker.decode_pool_retry_s=1"], preexec_fn=_big_thread_stacks,
                                  env={"OPENBLAS_NUM_THREADS": "1", "OMP_NUM_THREADS": "1", "MALLOC_ARENA_MAX": "1"})
        r = redis_server.client()
        beat = f"{svc.prefix}:worker:{worker.consumer}"
        hard = resource.prlimit(worker.pid, resource.RLIMIT_AS)[1]
        # heap room, but less than one thread's stack: no thread can start while this holds
        resource.prlimit(worker.pid, resource.RLIMIT_AS, (_vm_size(worker.pid) + 2**30, hard))
        ids = submit_many(svc, 2, "pixel-diff")
        svc.wait_jobs(ids, 60)
        wait_until(lambda: worker.output().count("would not start the image decode pool's 2 threads") == 1, 10,
                   "the refusal on the log")
        wait_until(lambda: r.hget(beat, "decode_threads") == b"1", 30, "decode_threads 1 in the heartbeat")
        time.sleep(1.5)                        # past the retry: tried again, still refused, the jobs still done
        ids += submit_many(svc, 2, "pixel-diff")
        svc.wait_jobs(ids, 60)
        wait_until(lambda: "refusal 2 in a row" in worker.output(), 30, "the second refusal on the log")
        resource.prlimit(worker.pid, resource.RLIMIT_AS, (resource.RLIM_INFINITY, hard))

        def back() -> re.Match | None:         # a job a second until the doubled wait has passed and a batch came
            ids.extend(submit_many(svc, 1, "pixel-diff"))
            return re.search(r"decode pool's 2 threads started again after (\d+) refusal", worker.output())
        refusals = wait_until(back, 60, f"the pool back on the log\n{worker.output()}", interval=1.0).group(1)
        svc.wait_jobs(ids, 60)
        wait_until(lambda: r.hget(beat, "decode_threads") == b"2", 30, "decode_threads 2 in the heartbeat")
        assert r.hget(beat, "decode_pool_refusals") == refusals.encode() and int(refusals) >= 2
        metrics = svc.http.get("/metrics", headers=svc.headers("metrics")).text
        assert re.search(r'sigma_worker_decode_threads\{worker="[^"]*' + worker.consumer + r'"\} 2\.0', metrics), \
            metrics[-3000:]
        assert worker.alive(), worker.output()
        wait_until(lambda: r.xpending(f"{svc.prefix}:stream:pixel-diff", "sigma-workers")["pending"] == 0, 10,
                   "the entries acknowledged")      # a job is done just before its entry is acknowledged
        assert_exactly_once(svc, ids, "pixel-diff")


def test_a_job_the_workers_memory_could_not_decode_is_retried_once_and_done_once_memory_is_back(redis_server,
                                                                                                 tmp_path):
    """A real worker with 60 MB of address space to spare (RLIMIT_AS set on it from outside) and a good 36 Mpx pair:
    the job failed `out_of_memory` for good on its first delivery, even when memory was back a moment later. Now it is
    redelivered once (its error noted): a pair that the worker still cannot decode is failed `out_of_memory` on its
    second delivery (no loop, no dead letter), and one whose memory came back in between is done, once."""
    import resource
    from pathlib import Path

    from test_cli_memory_limit import big_pair

    original, edited = (Path(path).read_bytes() for path in big_pair(tmp_path))
    # a lease of 4 s: time to lift the limit between the first try and the redelivery on a loaded machine
    big = ["limits.max_pixels=40000000", "limits.max_bytes=20000000", "limits.max_request_bytes=45000000",
           "queue.lease_ms=4000"]
    with running_service(redis_server, tmp_path, overrides=big) as svc:
        worker = svc.start_worker(env={"MALLOC_ARENA_MAX": "1", "OPENBLAS_NUM_THREADS": "1"})
        svc.wait_jobs(submit_many(svc, 1, "pixel-diff"), 60)       # the decode pool's threads start here
        hard = resource.prlimit(worker.pid, resource.RLIMIT_AS)[1]
        resource.prlimit(worker.pid, resource.RLIMIT_AS, (_vm_size(worker.pid) + 60 * 2**20, hard))

        def submit() -> str:
            resp = svc.submit(original, edited, {"annotator": "pixel-diff"})
            assert resp.status_code == 202, resp.text
            return resp.json()["id"]

        always = submit()                                      # never memory for it: failed on its second try
        view = svc.wait_jobs([always], 60)[always]
        raw = svc.raw_job(always)
        assert view["status"] == "failed" and view["error"]["code"] == "out_of_memory", view
        assert json.loads(raw["last_error"])["code"] == "out_of_memory", raw
        assert raw["attempts"] == "2", raw
        passing = submit()                                     # memory back after its first try: done
        wait_until(lambda: "last_error" in svc.raw_job(passing), 30, "the first try's out_of_memory noted")
        resource.prlimit(worker.pid, resource.RLIMIT_AS, (resource.RLIM_INFINITY, hard))
        view = svc.wait_jobs([passing], 60)[passing]
        assert view["status"] == "done", view
        assert svc.raw_job(passing)["completions"] == "1"
        assert worker.alive(), worker.output()
        r = redis_server.client()
        # a job is done just before its entry is acknowledged
        wait_until(lambda: r.xpending(f"{svc.prefix}:stream:pixel-diff", "sigma-workers")["pending"] == 0, 10,
                   "the entries acknowledged")
        assert r.xlen(f"{svc.prefix}:dead:pixel-diff") == 0


def test_a_job_whose_model_met_no_memory_is_noted_out_of_memory_and_done_once_memory_is_back(redis_server,
                                                                                              tmp_path):
    """A real worker whose model (leak-diff: 200 MB a batch) is refused memory (RLIMIT_AS 60 MB above its size, set
    on it from outside): the job was retried with `last_error` `model_error`, blaming the model for the machine's
    shortage (and its dead letter said so). Now `out_of_memory`; the retry by redelivery does the job once memory
    is back."""
    import resource

    with running_service(redis_server, tmp_path, overrides=["api.annotators=[pixel-diff,leak-diff]",
                                                           "queue.lease_ms=4000"]) as svc:
        worker = svc.start_worker("leak-diff", extra=["worker.options={leak_mb: 200}"],
                                  env={"MALLOC_ARENA_MAX": "1", "OPENBLAS_NUM_THREADS": "1"})
        svc.wait_jobs(submit_many(svc, 1, "leak-diff"), 60)       # the decode pool's threads start here
        hard = resource.prlimit(worker.pid, resource.RLIMIT_AS)[1]
        resource.prlimit(worker.pid, resource.RLIMIT_AS, (_vm_size(worker.pid) + 60 * 2**20, hard))
        [job] = submit_many(svc, 1, "leak-diff")
        raw = wait_until(lambda: "last_error" in svc.raw_job(job) and svc.raw_job(job), 30, "the try's error noted")
        resource.prlimit(worker.pid, resource.RLIMIT_AS, (resource.RLIM_INFINITY, hard))
        error = json.loads(raw["last_error"])
        assert error["code"] == "out_of_memory", error
        assert svc.wait_jobs([job], 60)[job]["status"] == "done"
        assert svc.raw_job(job)["completions"] == "1"
        assert worker.alive(), worker.output()


def _beat_is_fresh(r, key: str) -> bool:
    last = r.hget(key, "last_beat")
    return last is not None and time.time() - float(last) < 1.0


def test_a_heartbeat_whose_reply_redis_py_cannot_parse_beats_on_once_redis_answers_again(redis_server, tmp_path):
    """A real worker whose Redis answers its heartbeat with a reply redis-py's parser fails on with a TypeError (a
    RESP3 map keyed by an array, from a proxy in front of the real server): no RedisError, so the heartbeat thread
    ended without a word and the worker, still taking and doing jobs, looked dead for good (its key expired; /readyz
    no worker; its leases ran out). Now the error is said once, the next beats try again, and once Redis answers
    again the heartbeat is back."""
    proxy = GarblingProxy(redis_server.port)
    try:
        with running_service(redis_server, tmp_path) as svc:
            worker = svc.start_worker(env={"SIGMA_REDIS_URL": proxy.url})
            r = redis_server.client()
            beat = f"{svc.prefix}:worker:{worker.consumer}"
            proxy.garble = beat.encode()
            wait_until(lambda: proxy.garbled >= 3, 30, "three beats answered with garbage")
            proxy.garble = None
            time.sleep(2.0)                    # past queue.heartbeat_ttl_ms (1.5 s): a dead heartbeat's key is gone
            wait_until(lambda: _beat_is_fresh(r, beat), 30, f"the heartbeat back\n{worker.output()}")
            assert worker.output().count("a beat failed (TypeError") == 1, worker.output()
            ids = submit_many(svc, 2, "pixel-diff")
            svc.wait_jobs(ids, 60)
            assert_exactly_once(svc, ids, "pixel-diff")
            assert worker.alive() and _beat_is_fresh(r, beat), worker.output()
    finally:
        proxy.close()


def test_a_heartbeat_that_keeps_failing_past_its_ttl_ends_the_worker_rather_than_leaving_a_zombie(redis_server,
                                                                                                tmp_path):
    """The same garbage for good: the worker looked dead while it worked on (a zombie: its jobs re-leased to others).
    Now, once no beat has gone through for longer than queue.heartbeat_ttl_ms, it says why (heartbeat_failed) and
    exits with status 1, for its supervisor to start a fresh process."""
    proxy = GarblingProxy(redis_server.port)
    try:
        with running_service(redis_server, tmp_path) as svc:
            worker = svc.start_worker(env={"SIGMA_REDIS_URL": proxy.url})
            proxy.garble = f"{svc.prefix}:worker:{worker.consumer}".encode()
            wait_until(lambda: not worker.alive(), 30, f"the worker to exit\n{worker.output()}")
            assert worker.p.returncode == 1, worker.output()
            assert "heartbeat_failed" in worker.output(), worker.output()
            assert "Traceback" not in worker.output(), worker.output()
    finally:
        proxy.close()
